/*
 * blob_int.h - what blob.c (the state of a blob and the cache of blobs) and
 * blob_worker.c (the worker thread that does the slow work) share. Private
 * to them.
 */
#ifndef BLOBFS_BLOB_INT_H
#define BLOBFS_BLOB_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "blob.h"
#include "digest.h"
#include "ranges.h"

enum { CH_MISSING, CH_INFLIGHT, CH_WRITTEN, CH_PRESENT };

/* Ranges that failed recently; a read of them fails at once for a while. */
#define RECENT_FAILS 8
/* The store's pages that readers have had are dropped in steps of at least this. */
#define DROP_MIN (8u << 20)

struct blob {
	/* immutable */
	struct blobcache *cache;
	struct digest digest;
	uint64_t size;
	char name[DIGEST_STR_LEN];

	/* guarded by cache->lock */
	unsigned refs;
	struct blob *hnext;
	struct blob *wnext;
	bool on_work;

	pthread_mutex_t lock;          /* guards everything below */
	enum blob_state state;
	int err;                       /* FAILED: why; otherwise the last fetch error */
	int fd;                        /* readers: O_RDONLY, -1 until known */
	int wfd;                       /* the network thread's writes (PARTIAL) */
	int lockfd;                    /* the store's per-blob lock while we own it */
	struct remote *remote;
	struct chunkmap *map;          /* geometry, and the bits last made durable */
	uint8_t *cs;                   /* chunk states */
	uint32_t npresent, nmissing, ninflight, nwritten;
	uint64_t missing_bytes;         /* bytes of MISSING chunks */
	uint64_t present_bytes;
	struct blob_waiter waiters;    /* circular list head */
	uint64_t ra_start, ra_end;     /* read-ahead window */
	bool want_all;
	uint32_t cursor;               /* where background claims look first */
	bool chunksums_decided;
	bool map_dirty;
	uint64_t last_sync_ms;
	uint64_t hashed;               /* [0, hashed) has gone into hash */
	struct hasher *hash;
	uint64_t fetched;
	bool orphan;                   /* no tag uses it: never commit, delete when done */
	struct {                       /* recent failures (see record_failure) */
		uint64_t start, end, until_ms;
		int err;
	} fails[RECENT_FAILS];
	unsigned nfails;
	uint8_t *bad;                  /* per chunk: checksum failures in a row */
	bool fail_reported;            /* on_fail was called */
	bool sync_failing;             /* the last chunk map save failed */
	struct ranges served;          /* what readers have had from the store file */
	uint64_t drop_upto;            /* served, and durable at the last map save */
	uint64_t dropped;              /* [0, dropped) advised out of the page cache */
};

struct blobcache {
	struct store *store;
	struct blob_opts opts;

	pthread_mutex_t lock;          /* guards the table, refs, the work list */
	pthread_cond_t cond;
	struct blob **table;
	size_t nbuckets;
	struct strmap *failed;         /* digests that failed verification here */
	struct blob *work;             /* blobs the worker must look at */
	bool kicked;                   /* something on the list is urgent */
	bool stop;
	pthread_t worker;
};

/* Ask the network thread for b's bytes (the want_fetch hook). */
static inline void want_fetch(struct blob *b)
{
	const struct blob_opts *o = &b->cache->opts;

	if (o->want_fetch)
		o->want_fetch(o->fetch_arg, b);
}

/* blob.c */
/* Revisit b on the worker's next tick. */
void requeue(struct blob *b);
/* Move an IDLE or BUSY blob on; b->lock held. 0, -EBUSY, or a negative errno. */
int activate_locked(struct blob *b);
void set_chunk_present(struct blob *b, uint32_t i);
void waiter_unlink(struct blob_waiter *w);
/* Move waiters that are ready (err 0) or fail (err) to out; b->lock held. */
void collect_waiters(struct blob *b, struct blob_waiter **out, int err,
		     uint32_t lo, uint32_t hi);
/* Answer collected waiters; called without any lock held. */
void finish_waiters(struct blob_waiter *list);
/* Remember that [start, end) failed with err, for a while. */
void record_failure(struct blob *b, uint64_t start, uint64_t end, int err);
/* Delete the partial file and map of an orphan we hold the lock of. */
void remove_orphan(struct blob *b);

/* blob_worker.c */
void *worker_main(void *arg);
/* Advise the store's pages readers have had out of the page cache; b->lock held. */
void drop_behind(struct blob *b, uint64_t upto, uint64_t min_step);

#endif
