/* session.h - what one blobfs process holds open: settings, store, network, blobs. */
#ifndef BLOBFS_SESSION_H
#define BLOBFS_SESSION_H

#include <stdbool.h>

#include "blob.h"
#include "conffile.h"
#include "fetch.h"
#include "name.h"

struct background;
struct store_freed;

/*
 * Settings come in layers, each overriding the one before: defaults, the
 * configuration files, what the store recorded (the scheme a host was pulled
 * with), the environment, the command line.
 */
struct session_opts {
	struct config files;        /* /etc/blobfs/config, then the user's */
	struct conf env;            /* BLOBFS_STORE */
	struct conf cli;            /* the command line (and mount -o) */
};

void session_opts_init(struct session_opts *o);
/* Read the configuration files and the environment; -EINVAL with a reason in err. */
int session_opts_load(struct session_opts *o, char *err, size_t errlen);
void session_opts_release(struct session_opts *o);

struct session {
	const struct session_opts *opts;
	struct config recorded;     /* per-host facts the store remembers */
	struct store *store;
	struct fetcher *fetcher;
	struct blobcache *cache;
	struct background *background;  /* slow housekeeping: eviction */
	struct blob_opts blob;
	uint64_t max_cache;         /* bytes of complete blobs to keep; 0: no limit */
};

enum {
	SESSION_WRITE = 1,          /* create the store if needed; it must be writable */
	SESSION_NET = 2,            /* start the network thread and the blob cache */
};

int session_open(const struct session_opts *o, unsigned flags, struct session **out);
/* The store's directory the settings name (absolute or not, as given); caller frees. */
char *session_store_root(const struct session_opts *o);
/* Start the network thread and blob cache later (after a fork, say). */
int session_start_net(struct session *s);
void session_close(struct session *s);

/* The effective settings for a registry host (NULL: the global ones). */
void session_conf(const struct session *s, const char *host, struct conf *out);
/* Where and how to reach a model's repository. */
struct remote *session_remote(const struct session *s, const struct model_name *n);
/*
 * Keep the cache within --max-cache, with room for bytes more (a blob about to
 * be fetched), sparing what this process uses; what was evicted in *freed.
 * Nothing without a quota.
 */
void session_make_room(struct session *s, uint64_t bytes, struct store_freed *freed);
/* session_make_room() for nothing more: after a blob arrived, or for gc. */
void session_evict(struct session *s);
/* The same, soon, on the background thread (from threads that must not wait). */
void session_evict_soon(struct session *s);
/* Remember that a host was reached with an explicit scheme (https:// in a name). */
void session_record_scheme(struct session *s, const struct model_name *n);

#endif
