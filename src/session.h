/* session.h - what one blobfs process holds open: store, network thread, blobs. */
#ifndef BLOBFS_SESSION_H
#define BLOBFS_SESSION_H

#include <stdbool.h>

#include "blob.h"
#include "fetch.h"

struct session_opts {
	const char *store;          /* --store, or NULL for the default */
	bool insecure;              /* plain HTTP to hosts without a scheme */
	struct net_opts net;
	struct blob_opts blob;
};

struct session {
	struct store *store;
	struct fetcher *fetcher;
	struct blobcache *cache;
	struct session_opts opts;
};

void session_opts_defaults(struct session_opts *o);
enum {
	SESSION_WRITE = 1,          /* create the store if needed; it must be writable */
	SESSION_NET = 2,            /* start the network thread and the blob cache */
};

int session_open(const struct session_opts *o, unsigned flags, struct session **out);
/* Start the network thread and blob cache later (after a fork, say). */
int session_start_net(struct session *s);
void session_close(struct session *s);

#endif
