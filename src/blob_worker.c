/*
 * blob_worker.c - the blob cache's worker thread.
 *
 * One worker per cache does everything slow that follows the network
 * thread's writes: hashing the contiguous prefix as it grows, checking chunk
 * checksums, making the chunk map durable (fdatasync, then an atomic map
 * write), dropping the store's copy of what readers have had from the page
 * cache, the final verification and commit, parked-read deadlines, and
 * polling blobs another process holds.
 *
 * It sleeps until a blob is scheduled or a tick passes (WORKER_TICK_MS).
 * It drops blob->lock around all file I/O.
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
#include "remote.h"
#include "settings.h"
#include "store.h"
#include "strmap.h"
#include "util.h"

/* The worker wakes at least this often (deadlines, busy polls). */
#define WORKER_TICK_MS 100

/*
 * Advise the kernel out of the store's pages that readers have had, up to
 * upto, once that is min_step more than before. The caller makes sure they
 * are durable, hence clean: the kernel keeps dirty pages whatever it is told.
 * The mount's page cache holds what was read; a second copy doubles the
 * memory a cold read fills, and on a VM memory touched for the first time
 * costs more than the copy into it (bench/RESULTS.md). A later read of those
 * bytes comes from the disk. Lock held; dropped around the advice.
 */
void drop_behind(struct blob *b, uint64_t upto, uint64_t min_step)
{
	if (upto <= b->dropped || upto - b->dropped < min_step)
		return;
	uint64_t from = b->dropped;
	int fd = b->fd;
	b->dropped = upto;
	pthread_mutex_unlock(&b->lock);
	posix_fadvise(fd, (off_t)from, (off_t)(upto - from), POSIX_FADV_DONTNEED);
	pthread_mutex_lock(&b->lock);
}

static void expire_waiters(struct blob *b, uint64_t now, struct blob_waiter **out)
{
	struct blob_waiter *w = b->waiters.next, *next;

	for (; w != &b->waiters; w = next) {
		next = w->next;
		if (w->deadline_ms > now)
			continue;
		waiter_unlink(w);
		if (b->state == BLOB_PARTIAL)
			record_failure(b, w->off, w->off + w->len, -EIO);
		w->result = -EIO;
		w->next = *out;
		*out = w;
	}
}

/*
 * Check chunks that await their checksum; returns true if some must be
 * fetched again. A chunk that fails its checksum as many times in a row as
 * a range may be attempted fails its readers with EIO. Called and returns
 * with b->lock held.
 */
static bool verify_chunks(struct blob *b, struct blob_waiter **ready)
{
	unsigned attempts = b->remote ? b->remote->o.retry.max_attempts : DEFAULT_RETRIES;
	bool refetch = false;

	if (!b->bad)
		b->bad = xcalloc(b->map->n + 1, 1);
	for (uint32_t i = 0; i < b->map->n && b->nwritten; i++) {
		if (b->cs[i] != CH_WRITTEN)
			continue;
		uint64_t s = chunkmap_start(b->map, i), len = chunkmap_end(b->map, i) - s;
		struct digest got;
		pthread_mutex_unlock(&b->lock);
		int ret = digest_fd(b->fd, s, len, &got, NULL, NULL);
		pthread_mutex_lock(&b->lock);
		b->nwritten--;
		if (ret == 0 && digest_equal(&got, &b->map->sums[i])) {
			set_chunk_present(b, i);
			b->bad[i] = 0;
			b->map_dirty = true;
			continue;
		}
		b->cs[i] = CH_MISSING;
		b->nmissing++;
		b->missing_bytes += len;
		if (i < b->cursor)
			b->cursor = i;
		if (++b->bad[i] < attempts) {
			refetch = true;
			log_warn("'%s': chunk %u (bytes %llu-%llu) failed its checksum; fetching it again",
				 b->name, i, (unsigned long long)s, (unsigned long long)(s + len - 1));
			continue;
		}
		log_error("'%s': chunk %u (bytes %llu-%llu) failed its checksum %u times; giving up",
			  b->name, i, (unsigned long long)s, (unsigned long long)(s + len - 1),
			  attempts);
		b->bad[i] = 0;   /* a later read may try again */
		b->err = -EIO;
		b->want_all = false;
		record_failure(b, s, s + len, -EIO);
		collect_waiters(b, ready, -EIO, i, i);
	}
	collect_waiters(b, ready, 0, 0, 0);
	return refetch;
}

/* Feed newly contiguous present bytes to the hash. Lock held on entry and exit. */
static void hash_prefix(struct blob *b)
{
	const size_t bufsize = 1 << 20;
	char *buf = NULL;

	for (;;) {
		uint64_t upto = b->hashed;
		uint32_t i = b->hashed < b->size ? chunkmap_index(b->map, b->hashed) : b->map->n;
		while (i < b->map->n && b->cs[i] == CH_PRESENT)
			upto = chunkmap_end(b->map, i++);
		if (upto <= b->hashed)
			break;
		uint64_t from = b->hashed;
		pthread_mutex_unlock(&b->lock);
		if (!buf)
			buf = xmalloc(bufsize);
		int ret = 0;
		while (from < upto && ret == 0) {
			size_t n = MIN(bufsize, upto - from);
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
	struct blobcache *c = b->cache;
	uint8_t *buf;
	size_t len;
	int ret;

	for (uint32_t i = 0; i < b->map->n; i++) {
		if (b->cs[i] == CH_PRESENT)
			chunkmap_set(b->map, i);
		else
			chunkmap_clear(b->map, i);
	}
	chunkmap_encode(b->map, &b->digest, &buf, &len);
	b->map_dirty = false;
	b->last_sync_ms = now_ms();
	uint64_t served = ranges_prefix(&b->served);
	pthread_mutex_unlock(&b->lock);
	ret = fdatasync(b->wfd) < 0 ? -errno : 0;
	if (ret == 0) {
		char *path = store_partial_path(c->store, &b->digest, ".map");
		ret = write_file_atomic(c->store->tmp, path, buf, len, 0600);
		free(path);
	}
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

/* All chunks present and hashed: verify, then commit or quarantine. Lock held. */
static void finish_blob(struct blob *b, struct blob_waiter **ready)
{
	struct blobcache *c = b->cache;
	struct digest got;
	int ret = 0;

	hasher_final(b->hash, &got);
	bool orphan = b->orphan;
	pthread_mutex_unlock(&b->lock);
	bool ok = digest_equal(&got, &b->digest);
	if (ok && orphan) {
		remove_orphan(b);  /* removed while it was being fetched: keep nothing */
	} else if (ok) {
		if (fdatasync(b->wfd) < 0)
			ret = -errno;
		if (ret == 0)
			ret = store_commit_blob(c->store, &b->digest);
	} else {
		char hex[DIGEST_STR_LEN];
		digest_format(&got, hex);
		log_error("blob '%s' failed verification (its bytes hash to '%s'); "
			  "moved to quarantine", b->name, hex);
		store_quarantine_blob(c->store, &b->digest);
	}
	if (!ok) {
		pthread_mutex_lock(&c->lock);
		strmap_put(c->failed, b->name, 1);
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_lock(&b->lock);
	if (!ok || ret < 0) {
		b->state = BLOB_FAILED;
		b->err = ok ? ret : -EIO;
	} else {
		b->state = BLOB_COMPLETE;
		log_debug("'%s' is complete and verified", b->name);
	}
	b->want_all = false;
	store_blob_unlock(c->store, &b->digest, b->lockfd, true);
	b->lockfd = -1;
	collect_waiters(b, ready, b->state == BLOB_FAILED ? b->err : 0, 0, UINT32_MAX);
}

/*
 * Do what the blob needs; returns true while it still needs the worker
 * (parked reads to time out, a map to sync, another process to wait for).
 * With final, make progress durable now: the cache is shutting down.
 */
static bool blob_work(struct blob *b, uint64_t now, bool final)
{
	struct blobcache *c = b->cache;
	struct blob_waiter *done = NULL;
	bool more, kick = false;

	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_BUSY && !final && activate_locked(b) == 0 &&
	    b->state == BLOB_PARTIAL)
		kick = true;
	bool was_partial = b->state == BLOB_PARTIAL;
	collect_waiters(b, &done, 0, 0, 0);
	expire_waiters(b, final ? UINT64_MAX : now, &done);
	if (b->state == BLOB_PARTIAL) {
		if (b->nwritten && verify_chunks(b, &done))
			kick = true;
		hash_prefix(b);
		bool all = b->npresent == b->map->n;
		if (b->map_dirty && !all &&
		    (final || now - b->last_sync_ms >= c->opts.sync_interval_ms))
			sync_map(b);
		drop_behind(b, MIN(b->drop_upto, b->hashed), DROP_MIN);  /* hashing reads them */
		if (all && b->hashed == b->size)
			finish_blob(b, &done);
	}
	more = b->waiters.next != &b->waiters || b->state == BLOB_BUSY ||
	       (b->state == BLOB_PARTIAL && (b->map_dirty || b->nwritten));
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
	if (kick && !final)
		want_fetch(b);
	return more;
}

static void add_ms(struct timespec *ts, long ms)
{
	ts->tv_nsec += ms * 1000000L;
	while (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/*
 * The worker sleeps until a blob is scheduled (kicked) or a tick passes, then
 * takes the whole list and works through it; blobs with periodic needs are
 * put back without a kick, so they are revisited once a tick. On stop it
 * makes one final pass so progress is durable before the process exits.
 */
void *worker_main(void *arg)
{
	struct blobcache *c = arg;
	struct blob **batch = NULL;
	size_t cap = 0;
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
		/*
		 * Take the list into an array: once on_work is clear, others may
		 * enlist these blobs again, which rewrites their wnext links.
		 */
		size_t n = 0;
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
		for (size_t i = 0; i < n; i++) {
			if (blob_work(batch[i], now, stopping) && !stopping)
				requeue(batch[i]);
			blob_put(batch[i]);   /* the reference the list held */
		}
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	free(batch);
	return NULL;
}
