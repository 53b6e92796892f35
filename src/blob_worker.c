/*
 * blob_worker.c - the blob cache's worker thread.
 *
 * One worker per cache does everything slow that follows the network
 * thread's writes: hashing the contiguous prefix as it grows, checking chunk
 * checksums, making the chunk map durable (fdatasync, then an atomic map
 * write), dropping the store's copy of what readers have had from the page
 * cache, the final verification and commit, parked-read deadlines,
 * polling blobs another process holds, and letting go of blobs it holds but
 * has had nothing to fetch for (blob_io.c: how processes share a blob).
 *
 * It sleeps until a blob is scheduled (want_work) or a tick passes
 * (WORKER_TICK_MS), then takes every blob scheduled (a pass). It drops
 * blob->lock around all file I/O and records what the I/O found through the
 * state machine (blob_state.c). The blobs a pass verifies are committed as
 * one group (commit_group): their data synced, renamed into blobs/, and one
 * fsync of blobs/ for all of them, so a pull of many small blobs does not
 * wait for two syncs per blob in a row.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"
#include "blob_int.h"
#include "chunkmap.h"
#include "digest.h"
#include "log.h"
#include "ranges.h"
#include "store.h"
#include "util.h"

/* The worker wakes at least this often (deadlines, busy polls). */
#define WORKER_TICK_MS 100
#define HASH_BUF (1u << 20)      /* bytes read back per step of the hash */
/*
 * A partial blob with nothing to fetch for this long is let go, so that
 * another process that needs it can take it over (a pull behind a mount
 * that keeps the blob open). Taking it back costs an open and a map read.
 */
#define LET_GO_MS 1000

/* ---- the work list ---- */

/* Put b on the worker's list with a reference. cache->lock held. */
static void enlist(struct blob *b)
{
	struct blobcache *c = b->cache;

	if (b->on_work)
		return;
	b->on_work = true;
	b->refs++;
	b->wnext = c->work;
	c->work = b;
}

void want_work(struct blob *b)
{
	struct blobcache *c = b->cache;

	pthread_mutex_lock(&c->lock);
	enlist(b);
	if (!c->kicked) {
		c->kicked = true;
		pthread_cond_signal(&c->cond);
	}
	pthread_mutex_unlock(&c->lock);
}

void requeue(struct blob *b)
{
	pthread_mutex_lock(&b->cache->lock);
	enlist(b);
	pthread_mutex_unlock(&b->cache->lock);
}

/* ---- one blob's work ---- */

/*
 * Check chunks that await their checksum; returns true if some must be
 * fetched again. Called and returns with b->lock held.
 */
static bool verify_chunks(struct blob *b, struct blob_waiter **ready)
{
	bool refetch = false;
	uint64_t off, len;

	for (uint32_t i = 0; blob_next_written_locked(b, &i, &off, &len); i++) {
		struct digest got;
		pthread_mutex_unlock(&b->lock);
		int ret = digest_fd(b->fd, off, len, &got, NULL, NULL);
		pthread_mutex_lock(&b->lock);
		if (blob_chunk_checked_locked(b, i, ret == 0 ? &got : NULL, ready))
			refetch = true;
	}
	collect_waiters(b, ready, 0, 0, 0);
	return refetch;
}

/* Feed newly contiguous present bytes to the hash. Lock held on entry and exit. */
static void hash_prefix(struct blob *b)
{
	char *buf = NULL;
	uint64_t upto;

	while (blob_unhashed_locked(b, &upto)) {
		uint64_t from = b->hashed;
		pthread_mutex_unlock(&b->lock);
		if (!buf)
			buf = xmalloc(HASH_BUF);
		int ret = 0;
		while (from < upto && ret == 0) {
			size_t n = MIN(HASH_BUF, upto - from);
			ret = pread_all(b->fd, buf, n, (off_t)from);
			if (ret == 0) {
				hasher_update(b->hash, buf, n);
				from += n;
			}
		}
		pthread_mutex_lock(&b->lock);
		if (ret < 0) {
			log_error("cannot read back '%s' to hash it: %s", b->name, strerror(-ret));
			break;
		}
		b->hashed = upto;
	}
	free(buf);
}

/* Make present chunks durable: fdatasync the data, then write the map. Lock held. */
static void sync_map(struct blob *b)
{
	uint8_t *buf;
	size_t len;
	int ret;

	blob_map_bits_locked(b);
	chunkmap_encode(b->map, &b->digest, &buf, &len);
	b->last_sync_ms = now_ms();
	uint64_t served = ranges_prefix(&b->served);
	pthread_mutex_unlock(&b->lock);
	ret = fdatasync(b->wfd) < 0 ? -errno : 0;
	if (ret == 0)
		ret = save_map(b, buf, len);
	free(buf);
	pthread_mutex_lock(&b->lock);
	if (ret < 0) {
		/* Tried again after the usual interval; said once until it works. */
		if (!b->sync_failing)
			log_error("cannot save the progress of '%s': %s", b->name, strerror(-ret));
		b->sync_failing = true;
		b->map_dirty = true;
	} else {
		b->sync_failing = false;
		b->drop_upto = MAX(b->drop_upto, served);
	}
}

/*
 * All chunks present and hashed: verify. True when the blob passed and joins
 * the pass's commit group (commit_group); otherwise it is settled here: an
 * orphan is deleted, a mismatch quarantined. Lock held.
 */
static bool finish_blob(struct blob *b, struct blob_waiter **ready)
{
	struct blobcache *c = b->cache;
	struct digest got;

	hasher_final(b->hash, &got);
	if (digest_equal(&got, &b->digest) && !b->orphan)
		return true;
	bool ok = digest_equal(&got, &b->digest);
	pthread_mutex_unlock(&b->lock);
	if (ok) {
		remove_orphan(b);  /* removed while it was being fetched: keep nothing */
	} else {
		char hex[DIGEST_STR_LEN];
		digest_format(&got, hex);
		log_error("blob '%s' failed verification (its bytes hash to '%s'); "
			  "moved to quarantine", b->name, hex);
		store_quarantine_blob(c->store, &b->digest);
		blobcache_note_failed(c, b);
	}
	pthread_mutex_lock(&b->lock);
	store_blob_unlock(c->store, &b->digest, b->lockfd, true);
	b->lockfd = -1;
	blob_finish_locked(b, ok ? 0 : -EIO, ready);
	return false;
}

/*
 * BUSY: tell the holder what our parked reads wait for, so that it fetches
 * that first. Lock held; dropped around the write.
 */
static void tell_holder(struct blob *b)
{
	uint64_t ranges[STORE_WANTS_MAX][2];
	size_t n = blob_untold_locked(b, ranges, STORE_WANTS_MAX);

	if (!n)
		return;
	pthread_mutex_unlock(&b->lock);
	int ret = store_partial_want(b->cache->store, &b->digest, ranges, n);
	if (ret < 0)
		log_debug("cannot tell the holder of '%s' what we wait for: %s", b->name,
			  strerror(-ret));
	pthread_mutex_lock(&b->lock);
}

/*
 * PARTIAL: park reads for what other processes wait for (tell_holder);
 * true when some of it must be fetched. Lock held; dropped around the read.
 */
static bool take_wants(struct blob *b)
{
	uint64_t ranges[STORE_WANTS_MAX][2], pos = b->wants_pos;
	bool fetch = false;

	pthread_mutex_unlock(&b->lock);
	int n = store_partial_wants(b->cache->store, &b->digest, &pos,
				    b->cache->opts.read_timeout_ms, ranges, STORE_WANTS_MAX);
	pthread_mutex_lock(&b->lock);
	if (b->state != BLOB_PARTIAL)
		return false;
	b->wants_pos = pos;
	for (int i = 0; i < n; i++)
		if (blob_want_locked(b, ranges[i][0], ranges[i][1]))
			fetch = true;
	/* They see only what the map says: while they wait, save it every tick. */
	if (n > 0)
		b->others_until_ms = now_ms() + b->cache->opts.read_timeout_ms;
	return fetch;
}

/*
 * Let go of a partial blob that has had nothing to fetch for LET_GO_MS,
 * once its map is durable. Lock held.
 */
static void maybe_let_go(struct blob *b, uint64_t now)
{
	if (!blob_idle_locked(b)) {
		b->busy_ms = now;
		return;
	}
	if (now - b->busy_ms < LET_GO_MS)
		return;
	if (b->map_dirty)
		sync_map(b);
	if (!b->map_dirty && blob_idle_locked(b))
		let_go_locked(b);
}

/*
 * The end of a blob's turn: answer what was collected in done, report a
 * failure or a commit. Called with b->lock held, which it drops; returns
 * whether the blob still needs the worker.
 */
static bool after_work(struct blob *b, struct blob_waiter *done, bool was_partial)
{
	struct blobcache *c = b->cache;
	bool more = blob_needs_worker_locked(b);
	bool failed_now = b->state == BLOB_FAILED && !b->fail_reported;
	bool committed_now = b->state == BLOB_COMPLETE && was_partial;

	if (failed_now)
		b->fail_reported = true;
	pthread_mutex_unlock(&b->lock);
	finish_waiters(done);
	if (committed_now) {    /* all of it is durable: what was read can go now */
		pthread_mutex_lock(&b->lock);
		drop_behind(b, ranges_prefix(&b->served), 0);
		pthread_mutex_unlock(&b->lock);
	}
	if (failed_now && c->opts.on_fail)
		c->opts.on_fail(c->opts.hook_arg, &b->digest);
	if (committed_now && c->opts.on_commit)
		c->opts.on_commit(c->opts.hook_arg, &b->digest);
	return more;
}

/*
 * Do what the blob needs; returns true while it still needs the worker
 * (parked reads to time out, a map to sync, another process to wait for).
 * *commit: it is verified and waits for the pass's commit group, which
 * decides that instead. With final, make progress durable now: the cache is
 * shutting down.
 */
static bool blob_work(struct blob *b, uint64_t now, bool final, bool *commit)
{
	struct blobcache *c = b->cache;
	struct blob_waiter *done = NULL;
	bool kick = false;

	pthread_mutex_lock(&b->lock);
	/* Take over from another process only when something here waits for it. */
	bool demand = b->waiters.next != &b->waiters || b->want_all;
	int act = b->state == BLOB_BUSY && !final && demand ? activate_locked(b) : -EBUSY;
	if (act == 0 && b->state == BLOB_PARTIAL)
		kick = true;
	if (act < 0 && act != -EBUSY) {
		/* It cannot be taken up (no room): who waits for it learns why, now. */
		b->err = act;
		b->want_all = false;
		collect_waiters(b, &done, act, 0, UINT32_MAX);
	}
	if (b->state == BLOB_BUSY && !final)
		tell_holder(b);
	if (b->state == BLOB_PARTIAL && !final && take_wants(b))
		kick = true;
	if (b->state == BLOB_FAILED)   /* activation failed it: readers parked meanwhile learn why */
		collect_waiters(b, &done, b->err, 0, UINT32_MAX);
	bool was_partial = b->state == BLOB_PARTIAL;
	collect_waiters(b, &done, 0, 0, 0);
	blob_expire_locked(b, final ? UINT64_MAX : now, &done);
	if (b->state == BLOB_PARTIAL) {
		if (b->nwritten && verify_chunks(b, &done))
			kick = true;
		hash_prefix(b);
		bool all = b->npresent == b->map->n;
		if (b->map_dirty && !all &&
		    (final || now < b->others_until_ms ||
		     now - b->last_sync_ms >= c->opts.sync_interval_ms))
			sync_map(b);
		drop_behind(b, MIN(b->drop_upto, b->hashed), DROP_MIN);  /* hashing reads them */
		if (all && b->hashed == b->size)
			*commit = finish_blob(b, &done);
		else if (!final)
			maybe_let_go(b, now);
	}
	bool more = after_work(b, done, was_partial);
	if (kick && !final)
		want_fetch(b);
	return more;
}

/* ---- the commit group ---- */

/*
 * A commit group's outcome for b: err 0 (in blobs/, durable) or why not.
 * Returns true while b still needs the worker. No lock held.
 */
static bool commit_done(struct blob *b, int err)
{
	struct blob_waiter *done = NULL;

	if (err == -ESTALE)
		err = 0;   /* no manifest names it now: readers have it, the store does not */
	pthread_mutex_lock(&b->lock);
	store_blob_unlock(b->cache->store, &b->digest, b->lockfd, true);
	b->lockfd = -1;
	blob_finish_locked(b, err, &done);
	return after_work(b, done, true);
}

/*
 * Commit the verified blobs of one pass together. Every file's data is made
 * durable before its rename, and the renames share one fsync of blobs/
 * (store_commit_blobs), which comes before any blob is reported complete.
 * Writeback of all the files is started first (sync_file_range), so that the
 * fdatasyncs that follow wait for I/O already under way: on a journalling
 * filesystem the first commits the journal for the group's block
 * allocations and the rest find it committed, instead of one journal commit
 * per blob. Returns through more[i] whether group[i] still needs the worker.
 */
static void commit_group(struct blob **group, size_t n, bool *more)
{
	struct digest *d = xmalloc(n * sizeof(*d));
	int *rets = xmalloc(n * sizeof(*rets)), *synced = xmalloc(n * sizeof(*synced));
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		sync_file_range(group[i]->wfd, 0, 0, SYNC_FILE_RANGE_WRITE);
	for (size_t i = 0; i < n; i++) {
		synced[i] = fdatasync(group[i]->wfd) < 0 ? -errno : 0;
		if (synced[i] == 0)
			d[k++] = group[i]->digest;
	}
	if (k)
		store_commit_blobs(group[0]->cache->store, d, k, rets);
	k = 0;
	for (size_t i = 0; i < n; i++)
		more[i] = commit_done(group[i], synced[i] < 0 ? synced[i] : rets[k++]);
	free(d);
	free(rets);
	free(synced);
}

/* ---- the thread ---- */

static void add_ms(struct timespec *ts, long ms)
{
	ts->tv_nsec += ms * 1000000L;
	while (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

void blob_worker_pass(struct blobcache *c, bool final)
{
	struct blob **batch = NULL, **group;
	size_t n = 0, ngroup = 0, cap = 0;
	bool *more;

	/*
	 * Take the list into an array: once on_work is clear, others may
	 * enlist these blobs again, which rewrites their wnext links.
	 */
	pthread_mutex_lock(&c->lock);
	for (struct blob *b = c->work; b; b = b->wnext) {
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			batch = xrealloc(batch, cap * sizeof(*batch));
		}
		batch[n++] = b;
	}
	for (size_t i = 0; i < n; i++)
		batch[i]->on_work = false;
	c->work = NULL;
	pthread_mutex_unlock(&c->lock);

	uint64_t now = now_ms();
	group = xmalloc((n ? n : 1) * sizeof(*group));
	more = xmalloc((n ? n : 1) * sizeof(*more));
	for (size_t i = 0; i < n; i++) {
		bool commit = false;
		if (blob_work(batch[i], now, final, &commit) && !commit && !final)
			requeue(batch[i]);
		if (commit)
			group[ngroup++] = batch[i];   /* keeps the list's reference */
		else
			blob_put(batch[i]);   /* the reference the list held */
	}
	if (ngroup)
		commit_group(group, ngroup, more);
	for (size_t i = 0; i < ngroup; i++) {
		if (more[i] && !final)
			requeue(group[i]);
		blob_put(group[i]);
	}
	free(more);
	free(group);
	free(batch);
}

/*
 * The worker sleeps until a blob is scheduled (kicked) or a tick passes, then
 * takes the whole list and works through it (blob_worker_pass); blobs with
 * periodic needs are put back without a kick, so they are revisited once a
 * tick. Blobs that become ready while a pass commits wait for the next pass
 * and commit together. On stop it makes one final pass so progress is
 * durable before the process exits.
 */
static void *worker_main(void *arg)
{
	struct blobcache *c = arg;
	bool stopping = false;

	pthread_mutex_lock(&c->lock);
	while (!stopping) {
		if (!c->kicked && !c->stop) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			add_ms(&ts, WORKER_TICK_MS);
			pthread_cond_timedwait(&c->cond, &c->lock, &ts);
		}
		stopping = c->stop;
		c->kicked = false;
		pthread_mutex_unlock(&c->lock);
		blob_worker_pass(c, stopping);
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

void blob_worker_start(struct blobcache *c)
{
	if (pthread_create(&c->worker, NULL, worker_main, c) != 0) {
		log_error("cannot start the blob worker thread");
		abort();
	}
	c->has_worker = true;
}

void blob_worker_stop(struct blobcache *c)
{
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->worker, NULL);
}
