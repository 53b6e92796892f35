/*
 * fetch.h - the network thread: one curl multi handle, every transfer.
 *
 * The parts, one file each, sharing the structures in fetch_int.h:
 *   fetch_loop.c    the loop: inbox, scheduling pass, curl_multi_poll/perform,
 *                   finished requests, stall and slow checks; start and stop
 *   fetch_sched.c   which range request starts next; splits for blocked
 *                   readers and idle connections; stalled and slow requests
 *   fetch_hedge.c   requests silent for longer than the speed seen makes
 *                   plausible: hedged with a second one, or restarted
 *   fetch_range.c   a blob being fetched (source): its range requests, where
 *                   they go, and what a failed one does next
 *   fetch_mem.c     small GETs into memory (manifests, tokens, chunksums)
 *   fetch_job.c     one request: curl callbacks, response checks, staging of
 *                   body bytes into the partial file
 *   fetch_auth.c    the auth cache: challenges, tokens, credentials
 *   fetch_policy.c  what we know of endpoints (mirrors down), retry limits
 *
 * The flow: fetcher_kick() queues a blob; the loop turns it into a source
 * (source_add), schedule() asks the blob for a range (blob_claim) and starts
 * a request (start_range); on_range_data() writes what arrives and tells the
 * blob (blob_written), which answers parked readers; finish_range() ends the
 * request, or range_failed() queues it again, moves to the next endpoint, or
 * gives the range up with an error for its readers (blob_unclaim).
 */
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
	uint64_t hedges;     /* stalled ranges asked for again while the stalled request stays */
	unsigned inflight;   /* range requests now in flight */
};

int fetcher_start(const struct net_opts *o, struct fetcher **out);
/* Stop the thread; later kicks and requests are refused. */
void fetcher_stop(struct fetcher *f);
/*
 * Fail every small request (manifest, token, chunksums) in flight or waiting
 * with -EINTR, and every later one; range requests go on until fetcher_stop.
 * For a command that got a signal. Safe from any thread.
 */
void fetcher_interrupt(struct fetcher *f);
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
