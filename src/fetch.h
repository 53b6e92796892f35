/* fetch.h - the network thread: one curl multi handle, every transfer. */
#ifndef BLOBFS_FETCH_H
#define BLOBFS_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>


struct blob;
struct remote;
struct fetcher;

/* Settings of the network thread as a whole; per-host ones are in struct remote. */
struct net_opts {
	unsigned connections;       /* range requests in flight in all (the setting connections) */
	unsigned demand_reserve;    /* extra slots only reads may use */
	const char *user_agent;
};

void net_opts_defaults(struct net_opts *o);

struct fetch_stats {
	uint64_t bytes;      /* body bytes received for blobs */
	uint64_t requests;   /* HTTP requests started */
	uint64_t retries;    /* ranges retried */
	uint64_t errors;     /* failed attempts */
	unsigned inflight;   /* range requests now in flight */
};

int fetcher_start(const struct net_opts *o, struct fetcher **out);
/* Stop the thread; later kicks and requests are refused. */
void fetcher_stop(struct fetcher *f);
void fetcher_free(struct fetcher *f);
void fetcher_stats(struct fetcher *f, struct fetch_stats *st);

/* The result of a small GET (manifest, token, chunksums). */
struct http_result {
	int err;             /* 0, or negative errno */
	long status;
	char *url;           /* the URL that answered (before redirects curl followed) */
	char *body;
	size_t len;
	char *content_type;
	char *docker_digest; /* Docker-Content-Digest */
	char *content_location;
	char msg[1024];      /* why it failed, for the user */
};

void http_result_release(struct http_result *r);

/*
 * GET path (under the repository of remote r: "manifests/latest") into
 * memory, at most max bytes; authentication, redirects, retries and mirrors
 * are handled. Blocks the caller until done. Never call it from the network
 * thread.
 */
int fetcher_get(struct fetcher *f, struct remote *r, const char *path,
		const char *accept, size_t max, struct http_result *res);
/* The same, answering through a callback on the network thread. */
void fetcher_get_async(struct fetcher *f, struct remote *r, const char *path,
		       const char *accept, size_t max,
		       void (*done)(struct http_result *res, void *arg), void *arg);

/*
 * Tell the network thread that blob b has work (a reader waiting, a window to
 * read ahead, or a whole blob to complete). Cheap; safe from any thread.
 */
void fetcher_kick(struct fetcher *f, struct blob *b);

#endif
