/*
 * blob.h - per-digest blob state, shared by every reader of the same digest.
 *
 * A blob decides what is needed and records what arrived; it does not know
 * the network. The parts, one file each, sharing blob_int.h:
 *   blob_state.c   the state machine: chunk states, parked reads (waiters),
 *                  claims, failures; no files, no threads
 *   blob_io.c      a blob's files: activation (the store's per-blob lock,
 *                  the complete blob or the partial file and its chunk map),
 *                  and the calls that may need them (read, fetch all, served)
 *   blob_cache.c   the blobs of one process: table, references
 *   blob_worker.c  the worker thread: hashing, chunk checksums, map saves,
 *                  commit, read deadlines, dropping pages behind readers
 *
 * The flow: a FUSE thread's blob_read() parks a waiter and asks for its
 * bytes through the want_fetch hook; the network thread claims a range
 * (blob_claim), writes it into the partial file (blob_wfd) and reports it
 * (blob_written), which answers the waiters whose bytes are all there; the
 * worker hashes, saves progress and finally commits the blob to blobs/.
 */
#ifndef BLOBFS_BLOB_H
#define BLOBFS_BLOB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "digest.h"

struct blob;
struct chunkmap;
struct remote;
struct store;

enum blob_state {
	BLOB_IDLE,      /* not complete; nobody has asked for its bytes yet */
	BLOB_BUSY,      /* not ours to fetch: another process holds the blob's lock,
			 * or we let it go; reads what the holder made durable */
	BLOB_PARTIAL,   /* ours to fetch: partial file and chunk map open */
	BLOB_COMPLETE,  /* verified, in blobs/ */
	BLOB_FAILED,    /* verification failed or the fetch gave up; see err */
};

/*
 * A parked read. The caller owns the memory; done() is called exactly once,
 * from another thread and without blob locks held, with 0 (the range is
 * readable now) or a negative errno.
 */
struct blob_waiter {
	struct blob_waiter *prev, *next;   /* guarded by blob->lock */
	uint64_t off, len;
	uint32_t first, last;              /* chunks needed */
	uint64_t deadline_ms;              /* monotonic; EIO when passed */
	void (*done)(struct blob_waiter *w, int err);
	int result;                        /* internal: what done() will get */
	bool told;                         /* internal: the holder was told (blob_io.c) */
};

struct blob_opts {
	uint64_t chunk_size;       /* 0: chosen per blob */
	/* A blob failed verification / was committed (from the worker, no locks held). */
	void (*on_fail)(void *arg, const struct digest *d);
	void (*on_commit)(void *arg, const struct digest *d);
	void *hook_arg;
	/* b has work for the network thread: a read waits, a window to read ahead,
	 * or the whole blob to complete. Called without blob locks held; cheap. */
	void (*want_fetch)(void *arg, struct blob *b);
	void *fetch_arg;
	/* A cache quota: before a blob's missing bytes are fetched, evict others to make
	 * room for them; the blob then reserves its space. Called with the blob's lock
	 * held, where the blob becomes ours to fetch: a reader's thread, the pull, or
	 * the worker when another process lets the blob go. NULL: no quota. */
	void (*make_room)(void *arg, uint64_t bytes);
	void *room_arg;
	uint64_t read_timeout_ms;  /* a parked read fails with EIO after this */
	uint64_t sync_interval_ms; /* how often the chunk map is made durable */
};

struct blob_stats {
	enum blob_state state;
	int err;
	uint64_t size;
	uint64_t present;     /* bytes local (complete or chunk present) */
	uint64_t fetched;     /* bytes received from the network this process */
	unsigned inflight;    /* chunks being fetched */
	bool hashing;         /* complete but for the final check */
	bool waiting;         /* BUSY, and something here waits for it: a read, a pull */
};

struct blobcache;

struct blobcache *blobcache_new(struct store *s, const struct blob_opts *o);
/* Stops the worker thread; every blob must have been put back. */
void blobcache_free(struct blobcache *c);

/* The blob for a digest, with a reference. size comes from the manifest. */
struct blob *blob_get(struct blobcache *c, const struct digest *d, uint64_t size);
/* The blob for a digest if this process has it, with a reference; else NULL. */
struct blob *blob_find(struct blobcache *c, const struct digest *d);
/* Call fn for every blob this process has, outside the cache's lock. */
void blobcache_each(struct blobcache *c, void (*fn)(struct blob *b, void *arg), void *arg);
/* Does this process use the blob (open, being fetched)? For cache eviction. */
bool blob_in_use(void *cache, const struct digest *d);
struct blob *blob_ref(struct blob *b);
void blob_put(struct blob *b);
/*
 * A place to fetch it from, if it must be fetched: every remote that names
 * the digest is one (at most SOURCES_MAX), tried in the order added; one
 * that remote_same_source() as one it has is not added again. r may be NULL.
 */
void blob_add_remote(struct blob *b, struct remote *r);

/*
 * Ask for bytes [off, off + len). Returns 1 when they are readable now from
 * blob_fd(), 0 when w was parked (w->done() follows), or a negative errno.
 * ra is how far past the read the caller expects to go (read-ahead hint).
 */
int blob_read(struct blob *b, uint64_t off, uint64_t len, uint64_t ra,
	      struct blob_waiter *w);
/* Give up on a parked read (the request was interrupted). done() is not called. */
bool blob_cancel(struct blob *b, struct blob_waiter *w);
/* The file to read present bytes from; valid while the blob is referenced. */
int blob_fd(struct blob *b);
/*
 * A reader has had [off, off + len) from blob_fd(): the kernel holds it in
 * the mount's page cache, so the store's copy may leave memory once durable.
 */
void blob_served(struct blob *b, uint64_t off, uint64_t len);
/*
 * Fetch the whole blob in the background; 0 or a negative errno. With
 * reserve_space, its disk space is allocated first (a pull), so a full disk
 * fails now with -ENOSPC rather than half way through.
 */
int blob_fetch_all(struct blob *b, bool reserve_space);
/*
 * No tag uses the blob any more: stop fetching it, never commit it, and
 * delete its partial state once the last reference goes.
 */
void blob_orphan(struct blob *b);
/* A tag uses the blob again (it was removed and came back): commit it when done. */
void blob_unorphan(struct blob *b);
/*
 * An orphan that no reader waits for: the network thread drops its requests,
 * in flight and queued (fetch_range.c).
 */
bool blob_abandoned(struct blob *b);
void blob_stats(struct blob *b, struct blob_stats *st);
const struct digest *blob_digest(const struct blob *b);
uint64_t blob_size(const struct blob *b);

/* ---- used by the network thread (fetch_*.c) ---- */

/* The file the network thread writes into (PARTIAL only). */
int blob_wfd(struct blob *b);
/* Its i-th remote, with a reference; NULL past the last. */
struct remote *blob_remote(struct blob *b, unsigned i);
/*
 * Chunk geometry, set when the blob becomes PARTIAL. Only blob_adopt_chunks
 * replaces it, on the network thread and while no chunk is present or in
 * flight (so no request holds the old one): the network thread may use it
 * without a lock.
 */
const struct chunkmap *blob_geometry(struct blob *b);
/* Is the blob ready for range requests (PARTIAL)? Activates it if needed. */
int blob_activate(struct blob *b);
/* Adopt chunk checksums (Ollama chunksums) if nothing is fetched yet; takes m. */
void blob_adopt_chunks(struct blob *b, struct chunkmap *m);
/* Does the blob want chunk checksums looked up (large, fresh, not decided)? */
bool blob_wants_chunksums(struct blob *b);
/* Chunk checksums were looked up (adopted or not); don't ask again. */
void blob_chunksums_done(struct blob *b);

enum blob_prio { PRIO_DEMAND, PRIO_READAHEAD, PRIO_BACKGROUND };

/*
 * Claim the next range to fetch: marks missing chunks in flight and returns
 * [*start, *end), at most max_bytes, and for background work at most a
 * spread-th of what is missing. demand_only limits it to what readers wait
 * for. Returns the priority of the work, or -1 when there is none.
 */
int blob_claim(struct blob *b, bool demand_only, uint64_t max_bytes, unsigned spread,
	       uint64_t *start, uint64_t *end);
/* Claim the first missing run that starts at or after from; 0, or -1 if none. */
int blob_claim_from(struct blob *b, uint64_t from, uint64_t max_bytes,
		    uint64_t *start, uint64_t *end);
/*
 * Chunks readers are blocked on that are already in flight, as offsets
 * (at most max); the network thread may split a request to reach them sooner.
 */
int blob_blocked_offsets(struct blob *b, uint64_t *offs, int max);
/* Bytes [from, to) of a request that began at job_start have been written. */
void blob_written(struct blob *b, uint64_t job_start, uint64_t from, uint64_t to);
/*
 * A request ended before `end`: chunks in [from, end) go back to missing.
 * With err (final failure), readers waiting on them get err and background
 * fetching stops with err recorded.
 */
void blob_unclaim(struct blob *b, uint64_t from, uint64_t end, int err);
/* A write to the partial file failed (disk full...): the blob fails with err. */
void blob_fail(struct blob *b, int err, const char *why);
/* Does the blob still have work for the network thread? */
bool blob_has_work(struct blob *b);

#endif
