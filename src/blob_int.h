/*
 * blob_int.h - what the parts of the blob module share: blob_state.c (the
 * state machine), blob_io.c (a blob's files), blob_cache.c (the blobs of one
 * process) and blob_worker.c (the worker thread). Private to them and to
 * the unit tests.
 *
 * Every function here that ends in _locked is called with b->lock held and
 * returns with it held.
 */
#ifndef BLOBFS_BLOB_INT_H
#define BLOBFS_BLOB_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "blob.h"
#include "digest.h"
#include "ranges.h"
#include "remote.h"
#include "store.h"

struct chunkmap;
struct hasher;
struct strmap;

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

	/* the state machine: changed by blob_state.c only */
	enum blob_state state;
	int err;                       /* FAILED: why; otherwise the last fetch error */
	struct remote *remotes[SOURCES_MAX];  /* where to fetch it, in order */
	unsigned nremotes;
	struct chunkmap *map;          /* geometry, and the bits last made durable */
	struct chunkmap **retired;     /* geometries replaced (a request may hold one) */
	unsigned nretired;
	uint8_t *cs;                   /* chunk states */
	uint32_t npresent, nmissing, ninflight, nwritten;
	uint64_t missing_bytes;        /* bytes of MISSING chunks */
	uint64_t present_bytes;
	struct blob_waiter waiters;    /* circular list head */
	uint64_t ra_start, ra_end;     /* read-ahead window */
	bool want_all;
	bool let_go;                   /* BUSY because we let it go (blob_io.c) */
	uint32_t cursor;               /* where background claims look first */
	bool chunksums_decided;
	bool map_dirty;                /* chunks became present since the last map save */
	uint64_t fetched;
	bool orphan;                   /* no tag uses it: never commit, delete when done */
	struct {                       /* recent failures (see record_failure) */
		uint64_t start, end, until_ms;
		int err;
	} fails[RECENT_FAILS];
	unsigned nfails;
	uint8_t *bad;                  /* per chunk: checksum failures in a row */

	/* the worker's progress (blob_worker.c) */
	uint64_t last_sync_ms;
	uint64_t busy_ms;              /* PARTIAL: when it last had something to fetch */
	uint64_t hashed;               /* [0, hashed) has gone into hash */
	struct hasher *hash;
	bool fail_reported;            /* on_fail was called */
	bool sync_failing;             /* the last chunk map save failed */

	/* the files (blob_io.c) */
	int fd;                        /* readers: O_RDONLY, -1 until known */
	int wfd;                       /* the network thread's writes (PARTIAL) */
	int lockfd;                    /* the store's per-blob lock while we own it */
	struct store_stamp stamp;      /* BUSY: the holder's map we read last */
	uint64_t wants_pos;            /* PARTIAL: how far the wants file was read */
	uint64_t others_until_ms;      /* PARTIAL: others wait on our map until then */
	struct ranges served;          /* what readers have had from the store file */
	uint64_t drop_upto;            /* served, and durable at the last map save */
	uint64_t dropped;              /* [0, dropped) advised out of the page cache */
};

struct blobcache {
	struct store *store;
	struct blob_opts opts;

	pthread_mutex_t lock;          /* guards the table, refs, failed, the work list, stop */
	pthread_cond_t cond;           /* wakes the worker */
	struct blob **table;
	size_t nbuckets;
	struct strmap *failed;         /* digests that failed verification here */
	struct blob *work;             /* blobs the worker must look at */
	bool kicked;                   /* something on the list is urgent */
	bool stop;
	bool has_worker;               /* immutable after blobcache_new */
	pthread_t worker;
};

/* Ask the network thread for b's bytes (the want_fetch hook). No locks held. */
static inline void want_fetch(struct blob *b)
{
	const struct blob_opts *o = &b->cache->opts;

	if (o->want_fetch)
		o->want_fetch(o->fetch_arg, b);
}

/* ---- blob_state.c: chunk states, waiters, claims, failures ---- */

/*
 * A blob becomes ours to fetch, with geometry m (taken); resumed: m came
 * from disk; same_file: the partial file is the one the blob read before.
 */
void blob_begin_partial_locked(struct blob *b, struct chunkmap *m, bool resumed,
			       bool same_file);
/* BUSY: the holder made the chunks of m (taken) durable; same_file as above. */
void blob_view_locked(struct blob *b, struct chunkmap *m, bool same_file);
/* PARTIAL, and nothing to fetch or check: nobody waits, nothing is in flight. */
bool blob_idle_locked(const struct blob *b);
/*
 * PARTIAL: another process waits for [off, off + len): park a read of ours
 * for it, answered by nobody. True when some of it must be fetched.
 */
bool blob_want_locked(struct blob *b, uint64_t off, uint64_t len);
/* BUSY: up to max ranges of parked reads the holder was not told of; now it is. */
size_t blob_untold_locked(struct blob *b, uint64_t (*out)[2], size_t max);
/*
 * Activation's outcomes: IDLE (it failed), BUSY (another process holds the
 * blob's lock) or COMPLETE (verified in blobs/); PARTIAL is begin_partial.
 */
void blob_mark_locked(struct blob *b, enum blob_state st);
/*
 * The state part of blob_read, after activation: 1 when [off, off + len) is
 * readable, 0 when w was parked, or a negative errno. *kick: ask for a fetch.
 */
int blob_read_locked(struct blob *b, uint64_t off, uint64_t len, uint64_t ra,
		     struct blob_waiter *w, bool *kick);
/* Can [off, off + len) be read from the blob's file now, without a wait? */
bool blob_local_locked(struct blob *b, uint64_t off, uint64_t len);
/* Fetch the whole blob; with reset, forget the last error. True: chunks are missing. */
bool blob_want_all_locked(struct blob *b, bool reset);
/* Move waiters that are ready (err 0) or fail (err) to out. */
void collect_waiters(struct blob *b, struct blob_waiter **out, int err,
		     uint32_t lo, uint32_t hi);
/* Move waiters whose deadline is at or before now to out, with EIO. */
void blob_expire_locked(struct blob *b, uint64_t now, struct blob_waiter **out);
/* Answer collected waiters; called without any lock held. */
void finish_waiters(struct blob_waiter *list);
/* The next chunk at or after *i that awaits its checksum, with its bytes; false if none. */
bool blob_next_written_locked(struct blob *b, uint32_t *i, uint64_t *off, uint64_t *len);
/*
 * Chunk i hashed to got (NULL: it could not be read). Returns true when it
 * must be fetched again; readers of a chunk that failed too often get EIO.
 */
bool blob_chunk_checked_locked(struct blob *b, uint32_t i, const struct digest *got,
			       struct blob_waiter **ready);
/* Present bytes [from, *upto) not yet hashed, from = b->hashed; false if none. */
bool blob_unhashed_locked(const struct blob *b, uint64_t *upto);
/* Set the chunk map's bits from the chunk states, for a save; clears map_dirty. */
void blob_map_bits_locked(struct blob *b);
/* The final check is done: err 0 (committed) or why it failed. */
void blob_finish_locked(struct blob *b, int err, struct blob_waiter **ready);
/* Does the blob still need the worker (waiters, a map to save, chunks to check)? */
bool blob_needs_worker_locked(const struct blob *b);
/* Release the state machine's memory (the blob is being destroyed). */
void blob_state_release(struct blob *b);

/* ---- blob_io.c: a blob's files ---- */

/* Move an IDLE or BUSY blob on: 0, -EBUSY (BUSY), or a negative errno. */
int activate_locked(struct blob *b);
/* Give the store's blob lock back: an idle PARTIAL blob becomes BUSY. */
void let_go_locked(struct blob *b);
/* Advise the store's pages readers have had out of the page cache (drops the lock). */
void drop_behind(struct blob *b, uint64_t upto, uint64_t min_step);
/* Write the encoded chunk map of a partial blob; 0 or a negative errno. */
int save_map(struct blob *b, const uint8_t *buf, size_t len);
/* Delete the partial file and map of an orphan we hold the lock of. */
void remove_orphan(struct blob *b);
/* Close the blob's files and give back its store lock (the blob is being destroyed). */
void blob_files_close(struct blob *b);

/* ---- blob_cache.c ---- */

/* A cache without a worker thread (blobcache_new starts one). */
struct blobcache *blobcache_create(struct store *s, const struct blob_opts *o);
/* Remember that a digest failed verification in this process. */
void blobcache_note_failed(struct blobcache *c, const struct blob *b);

/* ---- blob_worker.c ---- */

/* Wake the worker for b now. Any lock but cache->lock may be held. */
void want_work(struct blob *b);
/* Revisit b on the worker's next tick. */
void requeue(struct blob *b);
void blob_worker_start(struct blobcache *c);
/*
 * One pass of the worker over every blob scheduled, committing the blobs it
 * verifies as one group; final as in the last pass. The thread calls it; a
 * test may call it on a cache without one. No lock held.
 */
void blob_worker_pass(struct blobcache *c, bool final);
/* Stop the worker after a final pass that makes progress durable. */
void blob_worker_stop(struct blobcache *c);

#endif
