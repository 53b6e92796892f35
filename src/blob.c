/*
 * blob.c - per-digest blob state, and the cache of blobs of one process.
 *
 * One struct blob per digest per process, shared by every reader, every tag
 * and both views of the mount; it is what makes a range single-flight: a
 * chunk is MISSING, INFLIGHT (claimed by exactly one request), WRITTEN
 * (awaiting its chunk checksum) or PRESENT, and only MISSING chunks can be
 * claimed. Reads of missing bytes park a waiter and return; the thread that
 * makes the bytes present answers it.
 *
 * Threads: FUSE workers (or the pull command) call blob_read/blob_fetch_all;
 * the network thread claims ranges, writes them and marks them; one worker
 * thread per cache (blob_worker.c) does everything slow that follows. A blob
 * that needs bytes fetched says so through the want_fetch hook of its
 * options; it does not know the network thread.
 *
 * Lock order: blob->lock, then cache->lock. Never the other way round.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* Blobs smaller than this are not worth a chunksums request. */
#define CHUNKSUMS_MIN_SIZE (64ULL << 20)
#define FAIL_MEMORY_MS 5000      /* how long a failed range fails reads at once */
/* Background requests shrink toward a blob's end, but not below this. */
#define SHARE_MIN (1u << 20)

static void blob_destroy(struct blob *b);

struct blobcache *blobcache_new(struct store *s, const struct blob_opts *o)
{
	struct blobcache *c = xcalloc(1, sizeof(*c));
	pthread_condattr_t ca;

	c->store = s;
	c->opts = *o;
	if (!c->opts.read_timeout_ms)
		c->opts.read_timeout_ms = DEFAULT_READ_TIMEOUT * 1000;
	if (!c->opts.sync_interval_ms)
		c->opts.sync_interval_ms = 1000;
	c->nbuckets = 1024;
	c->table = xcalloc(c->nbuckets, sizeof(*c->table));
	c->failed = strmap_new();
	pthread_mutex_init(&c->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&c->worker, NULL, worker_main, c) != 0) {
		log_error("cannot start the blob worker thread");
		abort();
	}
	return c;
}

void blobcache_free(struct blobcache *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->worker, NULL);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	strmap_free(c->failed);
	free(c->table);
	free(c);
}

static size_t bucket(const struct blobcache *c, const struct digest *d)
{
	uint64_t h;

	memcpy(&h, d->bytes, sizeof(h));
	return h % c->nbuckets;
}

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

/* Wake the worker for b now. Any lock but cache->lock may be held. */
static void schedule_work(struct blob *b)
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

/* Revisit b on the worker's next tick. */
void requeue(struct blob *b)
{
	pthread_mutex_lock(&b->cache->lock);
	enlist(b);
	pthread_mutex_unlock(&b->cache->lock);
}

static struct blob *lookup(struct blobcache *c, const struct digest *d)
{
	for (struct blob *b = c->table[bucket(c, d)]; b; b = b->hnext) {
		if (digest_equal(&b->digest, d)) {
			b->refs++;
			return b;
		}
	}
	return NULL;
}

struct blob *blob_find(struct blobcache *c, const struct digest *d)
{
	struct blob *b;

	pthread_mutex_lock(&c->lock);
	b = lookup(c, d);
	pthread_mutex_unlock(&c->lock);
	return b;
}

void blobcache_each(struct blobcache *c, void (*fn)(struct blob *b, void *arg), void *arg)
{
	struct blob **all = NULL;
	size_t n = 0, cap = 0;

	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->nbuckets; i++) {
		for (struct blob *b = c->table[i]; b; b = b->hnext) {
			if (n == cap) {
				cap = cap ? 2 * cap : 64;
				all = xrealloc(all, cap * sizeof(*all));
			}
			b->refs++;
			all[n++] = b;
		}
	}
	pthread_mutex_unlock(&c->lock);
	for (size_t i = 0; i < n; i++) {
		fn(all[i], arg);
		blob_put(all[i]);
	}
	free(all);
}

bool blob_in_use(void *cache, const struct digest *d)
{
	struct blob *b = blob_find(cache, d);

	blob_put(b);
	return b != NULL;
}

struct blob *blob_get(struct blobcache *c, const struct digest *d, uint64_t size)
{
	struct blob *b, *other;
	int fd = -1;

	pthread_mutex_lock(&c->lock);
	b = lookup(c, d);
	pthread_mutex_unlock(&c->lock);
	if (b)
		return b;

	/* Open a complete blob outside the lock; a racing caller may win, then ours goes. */
	b = xcalloc(1, sizeof(*b));
	b->cache = c;
	b->digest = *d;
	b->size = size;
	digest_format(d, b->name);
	b->refs = 1;
	b->fd = b->wfd = b->lockfd = -1;
	b->waiters.next = b->waiters.prev = &b->waiters;
	pthread_mutex_init(&b->lock, NULL);
	b->state = BLOB_IDLE;
	if (store_open_blob(c->store, d, size, &fd) == 0) {
		b->fd = fd;
		b->state = BLOB_COMPLETE;
		b->present_bytes = size;
	}
	pthread_mutex_lock(&c->lock);
	if (b->state != BLOB_COMPLETE && strmap_get(c->failed, b->name, NULL)) {
		/* It failed verification in this process: keep saying so. */
		b->state = BLOB_FAILED;
		b->err = -EIO;
	}
	other = lookup(c, d);
	if (!other) {
		size_t h = bucket(c, d);
		b->hnext = c->table[h];
		c->table[h] = b;
	}
	pthread_mutex_unlock(&c->lock);
	if (other) {
		blob_destroy(b);
		return other;
	}
	return b;
}

/* Delete the partial file and map of an orphan we hold the lock of. */
void remove_orphan(struct blob *b)
{
	struct store *s = b->cache->store;
	char *data = store_partial_path(s, &b->digest, "");
	char *map = store_partial_path(s, &b->digest, ".map");

	unlink(data);
	unlink(map);
	free(data);
	free(map);
}

static void blob_destroy(struct blob *b)
{
	struct blobcache *c = b->cache;

	if (b->orphan && b->lockfd >= 0) {
		remove_orphan(b);
		store_blob_unlock(c->store, &b->digest, b->lockfd, true);
		b->lockfd = -1;
	}
	if (b->fd >= 0)
		close(b->fd);
	if (b->wfd >= 0)
		close(b->wfd);
	store_blob_unlock(c->store, &b->digest, b->lockfd, false);
	chunkmap_free(b->map);
	free(b->cs);
	free(b->bad);
	hasher_free(b->hash);
	remote_unref(b->remote);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

struct blob *blob_ref(struct blob *b)
{
	pthread_mutex_lock(&b->cache->lock);
	b->refs++;
	pthread_mutex_unlock(&b->cache->lock);
	return b;
}

void blob_put(struct blob *b)
{
	struct blobcache *c;
	struct blob **pp;

	if (!b)
		return;
	c = b->cache;
	pthread_mutex_lock(&c->lock);
	if (--b->refs > 0) {
		pthread_mutex_unlock(&c->lock);
		return;
	}
	for (pp = &c->table[bucket(c, &b->digest)]; *pp != b; pp = &(*pp)->hnext)
		;
	*pp = b->hnext;
	pthread_mutex_unlock(&c->lock);
	blob_destroy(b);
}

void blob_set_remote(struct blob *b, struct remote *r)
{
	pthread_mutex_lock(&b->lock);
	if (!b->remote && r)
		b->remote = remote_ref(r);
	pthread_mutex_unlock(&b->lock);
}

struct remote *blob_remote(struct blob *b)
{
	struct remote *r;

	pthread_mutex_lock(&b->lock);
	r = b->remote;
	pthread_mutex_unlock(&b->lock);
	return r;
}

const struct digest *blob_digest(const struct blob *b)
{
	return &b->digest;
}

uint64_t blob_size(const struct blob *b)
{
	return b->size;
}

int blob_fd(struct blob *b)
{
	int fd;

	pthread_mutex_lock(&b->lock);
	fd = b->fd;
	pthread_mutex_unlock(&b->lock);
	return fd;
}

const struct chunkmap *blob_geometry(struct blob *b)
{
	return b->map;
}

int blob_wfd(struct blob *b)
{
	return b->wfd;
}

/* ---- failures ---- */

/*
 * Remember that [start, end) failed with err. The kernel answers a failed
 * read-ahead by reading the same page again at once; without this memory
 * that second read would wait a whole read timeout more.
 */
void record_failure(struct blob *b, uint64_t start, uint64_t end, int err)
{
	uint64_t window = MIN(b->cache->opts.read_timeout_ms, (uint64_t)FAIL_MEMORY_MS);
	unsigned i = b->nfails++ % RECENT_FAILS;

	b->fails[i].start = start;
	b->fails[i].end = end;
	b->fails[i].until_ms = now_ms() + window;
	b->fails[i].err = err;
}

static bool chunk_readable(const struct blob *b, uint32_t i);

/* The error of a recent failure of bytes in [off, off + len) not yet readable, or 0. */
static int recent_failure(const struct blob *b, uint64_t off, uint64_t len)
{
	uint64_t now = now_ms();

	for (unsigned k = 0; k < RECENT_FAILS; k++) {
		uint64_t lo = MAX(off, b->fails[k].start), hi = MIN(off + len, b->fails[k].end);
		if (b->fails[k].until_ms <= now || lo >= hi)
			continue;
		for (uint32_t i = chunkmap_index(b->map, lo);
		     i < b->map->n && chunkmap_start(b->map, i) < hi; i++)
			if (!chunk_readable(b, i))
				return b->fails[k].err;
	}
	return 0;
}

/* ---- waiters ---- */

/*
 * May chunk i be handed to readers? Present chunks may, but for the last one:
 * whenever the whole blob is here, or about to be (it is being fetched whole),
 * the last chunk waits for the blob's sha256, so a reader that reads to the
 * end of a corrupt blob gets EIO, never silently wrong bytes. A reader that
 * only jumps about gets its chunks unverified (there is no other way to be
 * lazy), unless the registry gave per-chunk checksums.
 */
static bool chunk_readable(const struct blob *b, uint32_t i)
{
	if (b->cs[i] != CH_PRESENT)
		return false;
	if (i + 1 < b->map->n || b->map->sums)
		return true;
	return !b->want_all && b->npresent < b->map->n;
}

void waiter_unlink(struct blob_waiter *w)
{
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->next = w->prev = w;
}

/* Chunk range of a waiter under the current geometry. */
static void waiter_chunks(const struct blob *b, struct blob_waiter *w)
{
	w->first = chunkmap_index(b->map, w->off);
	w->last = chunkmap_index(b->map, w->off + w->len - 1);
}

/* Advance w->first past present chunks; true when all of w is present. */
static bool waiter_ready(const struct blob *b, struct blob_waiter *w)
{
	while (w->first <= w->last && chunk_readable(b, w->first))
		w->first++;
	return w->first > w->last;
}

/*
 * Move waiters to out: with err, those that need a chunk in [lo, hi] (all of
 * them unless the blob is PARTIAL); without, those whose bytes are all here.
 * The caller answers them with finish_waiters() once its locks are dropped.
 */
void collect_waiters(struct blob *b, struct blob_waiter **out, int err,
			    uint32_t lo, uint32_t hi)
{
	struct blob_waiter *w = b->waiters.next, *next;

	for (; w != &b->waiters; w = next) {
		next = w->next;
		bool take;
		if (err)
			take = b->state != BLOB_PARTIAL || (w->first <= hi && w->last >= lo);
		else
			take = b->state == BLOB_COMPLETE ||
			       (b->state == BLOB_PARTIAL && waiter_ready(b, w));
		if (!take)
			continue;
		waiter_unlink(w);
		w->result = err;
		w->next = *out;
		*out = w;
	}
}

/* Answer collected waiters; called without any lock held. */
void finish_waiters(struct blob_waiter *list)
{
	while (list) {
		struct blob_waiter *next = list->next;
		list->next = list->prev = list;
		list->done(list, list->result);
		list = next;
	}
}

/* ---- activation ---- */

void set_chunk_present(struct blob *b, uint32_t i)
{
	b->cs[i] = CH_PRESENT;
	b->npresent++;
	b->present_bytes += chunkmap_end(b->map, i) - chunkmap_start(b->map, i);
}

/* Set up a fresh or resumed partial blob; we hold the store's blob lock. */
static int open_partial(struct blob *b)
{
	struct blobcache *c = b->cache;
	char *path = store_partial_path(c->store, &b->digest, "");
	char *mpath = store_partial_path(c->store, &b->digest, ".map");
	struct chunkmap *m = NULL;
	int ret = 0;

	b->wfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (b->wfd < 0) {
		ret = -errno;
		log_error("cannot open '%s': %s", path, strerror(errno));
		goto out;
	}
	if (ftruncate(b->wfd, (off_t)b->size) < 0) {
		ret = -errno;
		log_error("cannot size '%s': %s", path, strerror(errno));
		goto out;
	}
	if (b->fd >= 0)
		close(b->fd);
	b->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (b->fd < 0) {
		ret = -errno;
		log_error("cannot open '%s': %s", path, strerror(errno));
		goto out;
	}
	if (chunkmap_load(mpath, &b->digest, b->size, &m) == 0) {
		b->chunksums_decided = true;
	} else {
		uint64_t chunk = b->remote && b->remote->o.chunk_size ? b->remote->o.chunk_size
								       : c->opts.chunk_size;
		m = chunkmap_new_fixed(b->size, chunk);
		unlink(mpath);
	}
	b->map = m;
	b->cs = xcalloc(m->n + 1, 1);
	b->nmissing = m->n;
	b->missing_bytes = b->size;
	for (uint32_t i = 0; i < m->n; i++) {
		if (chunkmap_has(m, i)) {
			set_chunk_present(b, i);
			b->nmissing--;
			b->missing_bytes -= chunkmap_end(m, i) - chunkmap_start(m, i);
		}
	}
	if (b->npresent)
		log_info("resuming '%s': %u of %u chunks already local", b->name,
			 b->npresent, m->n);
	b->hash = hasher_new();
	b->hashed = 0;
	memset(&b->served, 0, sizeof(b->served));
	b->drop_upto = b->dropped = 0;
	b->state = BLOB_PARTIAL;
out:
	if (ret < 0) {
		if (b->wfd >= 0)
			close(b->wfd);
		if (b->fd >= 0)
			close(b->fd);
		b->wfd = b->fd = -1;
	}
	free(path);
	free(mpath);
	return ret;
}

/*
 * Move an IDLE or BUSY blob on: take the store's blob lock, then find it
 * complete (another process finished it) or open it for fetching.
 * Called with b->lock held. 0 or negative errno; -EBUSY leaves it BUSY.
 */
int activate_locked(struct blob *b)
{
	struct blobcache *c = b->cache;
	int fd, ret;

	if (b->state != BLOB_IDLE && b->state != BLOB_BUSY)
		return 0;
	if (!c->store->writable)
		return -EROFS;
	ret = store_blob_trylock(c->store, &b->digest);
	if (ret == -EBUSY) {
		if (b->state != BLOB_BUSY)
			log_info("'%s' is being fetched by another blobfs process; waiting",
				 b->name);
		b->state = BLOB_BUSY;
		schedule_work(b);
		return -EBUSY;
	}
	if (ret < 0) {
		log_error("cannot lock '%s' in the store: %s", b->name, strerror(-ret));
		return ret;
	}
	b->lockfd = ret;
	if (store_open_blob(c->store, &b->digest, b->size, &fd) == 0) {
		if (b->fd >= 0)
			close(b->fd);
		b->fd = fd;
		b->state = BLOB_COMPLETE;
		b->present_bytes = b->size;
		store_blob_unlock(c->store, &b->digest, b->lockfd, true);
		b->lockfd = -1;
		return 0;
	}
	ret = open_partial(b);
	if (ret < 0) {
		store_blob_unlock(c->store, &b->digest, b->lockfd, false);
		b->lockfd = -1;
		b->state = BLOB_IDLE;
		return ret;
	}
	/* Reads parked while another process held the blob know their chunks now. */
	for (struct blob_waiter *w = b->waiters.next; w != &b->waiters; w = w->next)
		waiter_chunks(b, w);
	/* Hash what a previous run left, finish a blob that only lacked its commit,
	 * and answer parked reads whose bytes a previous run already fetched. */
	schedule_work(b);
	return 0;
}

int blob_activate(struct blob *b)
{
	int ret;

	pthread_mutex_lock(&b->lock);
	ret = activate_locked(b);
	if (ret == 0 && b->state == BLOB_FAILED)
		ret = b->err;
	pthread_mutex_unlock(&b->lock);
	return ret;
}

/* ---- the reader side ---- */

static bool window_has_missing(const struct blob *b, uint64_t start, uint64_t end)
{
	if (!b->nmissing || start >= end)
		return false;
	for (uint32_t i = chunkmap_index(b->map, start);
	     i < b->map->n && chunkmap_start(b->map, i) < end; i++)
		if (b->cs[i] == CH_MISSING)
			return true;
	return false;
}

int blob_read(struct blob *b, uint64_t off, uint64_t len, uint64_t ra,
	      struct blob_waiter *w)
{
	struct blobcache *c = b->cache;
	bool kick = false;
	int ret;

	if (off >= b->size || len == 0)
		return 1;
	if (len > b->size - off)
		len = b->size - off;
	pthread_mutex_lock(&b->lock);
	switch (b->state) {
	case BLOB_COMPLETE:
		ret = 1;
		goto out;
	case BLOB_FAILED:
		ret = b->err;
		goto out;
	case BLOB_IDLE:
		ret = activate_locked(b);
		if (ret < 0 && ret != -EBUSY)
			goto out;
		if (b->state == BLOB_COMPLETE) {
			ret = 1;
			goto out;
		}
		break;
	default:
		break;
	}

	w->off = off;
	w->len = len;
	w->deadline_ms = now_ms() + c->opts.read_timeout_ms;
	if (b->state == BLOB_PARTIAL) {
		waiter_chunks(b, w);
		if (ra) {
			uint64_t ra_start = off + len, ra_end = MIN(b->size, ra_start + ra);
			if (ra_end > b->ra_end || ra_start < b->ra_start) {
				b->ra_start = ra_start;
				b->ra_end = ra_end;
				kick = window_has_missing(b, ra_start, ra_end);
			}
		}
		if (waiter_ready(b, w)) {
			ret = 1;
			goto out;
		}
		if ((ret = recent_failure(b, off, len)) < 0)
			goto out;
		kick = true;
	} else {
		w->first = 0;
		w->last = UINT32_MAX;   /* recomputed when the blob becomes ours */
	}
	w->prev = b->waiters.prev;
	w->next = &b->waiters;
	b->waiters.prev->next = w;
	b->waiters.prev = w;
	schedule_work(b);           /* the worker enforces the deadline */
	ret = 0;
out:
	pthread_mutex_unlock(&b->lock);
	if (kick)
		want_fetch(b);
	return ret;
}

bool blob_cancel(struct blob *b, struct blob_waiter *w)
{
	bool found = false;

	pthread_mutex_lock(&b->lock);
	for (struct blob_waiter *x = b->waiters.next; x != &b->waiters; x = x->next) {
		if (x == w) {
			waiter_unlink(w);
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&b->lock);
	return found;
}


void blob_served(struct blob *b, uint64_t off, uint64_t len)
{
	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_PARTIAL || b->state == BLOB_COMPLETE)
		ranges_add(&b->served, off, off + len);
	/* A partial blob's pages go once durable (blob_work); these already are. */
	if (b->state == BLOB_COMPLETE)
		drop_behind(b, ranges_prefix(&b->served), DROP_MIN);
	pthread_mutex_unlock(&b->lock);
}

/* Reserve the blob's disk space now, so a full disk fails before the download. */
static int reserve(struct blob *b)
{
	int ret = posix_fallocate(b->wfd, 0, (off_t)b->size);

	if (ret == EOPNOTSUPP || ret == EINVAL)
		return 0;   /* the filesystem cannot: find out while writing */
	if (ret) {
		char need[16];
		format_size(b->size - b->present_bytes, need, sizeof(need));
		log_error("cannot make room for '%s' (%s more) in the store: %s", b->name, need,
			  strerror(ret));
		/* A failed allocation may keep what it got; give it back if nothing is ours yet. */
		if (b->present_bytes == 0 && (ftruncate(b->wfd, 0) < 0 ||
					      ftruncate(b->wfd, (off_t)b->size) < 0))
			log_warn("cannot release space reserved for '%s': %s", b->name, strerror(errno));
	}
	return -ret;
}

int blob_fetch_all(struct blob *b, bool reserve_space)
{
	int ret = 0;
	bool kick = false;

	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_IDLE || b->state == BLOB_BUSY)
		ret = activate_locked(b);
	if (b->state == BLOB_FAILED) {
		ret = b->err;
	} else if (b->state == BLOB_PARTIAL && reserve_space && (ret = reserve(b)) < 0) {
		/* nothing fetched: a pull stops here with the reason */
	} else if (b->state == BLOB_PARTIAL) {
		b->want_all = true;
		b->err = 0;
		kick = b->nmissing > 0;
		ret = 0;
	} else if (ret == -EBUSY) {
		b->want_all = true;   /* taken up when the other process lets go */
		ret = 0;
	}
	pthread_mutex_unlock(&b->lock);
	if (kick)
		want_fetch(b);
	return ret;
}

void blob_orphan(struct blob *b)
{
	pthread_mutex_lock(&b->lock);
	b->orphan = true;
	b->want_all = false;
	b->ra_start = b->ra_end = 0;
	pthread_mutex_unlock(&b->lock);
}

void blob_stats(struct blob *b, struct blob_stats *st)
{
	pthread_mutex_lock(&b->lock);
	st->state = b->state;
	st->err = b->err;
	st->size = b->size;
	st->present = b->state == BLOB_COMPLETE ? b->size : b->present_bytes;
	st->fetched = b->fetched;
	st->inflight = b->ninflight;
	st->hashing = b->state == BLOB_PARTIAL && b->map && b->npresent == b->map->n;
	pthread_mutex_unlock(&b->lock);
}

/* ---- the network thread's side ---- */

bool blob_wants_chunksums(struct blob *b)
{
	bool want;

	pthread_mutex_lock(&b->lock);
	want = b->state == BLOB_PARTIAL && !b->chunksums_decided && b->npresent == 0 &&
	       b->ninflight == 0 && b->size >= CHUNKSUMS_MIN_SIZE;
	pthread_mutex_unlock(&b->lock);
	return want;
}

void blob_chunksums_done(struct blob *b)
{
	pthread_mutex_lock(&b->lock);
	b->chunksums_decided = true;
	pthread_mutex_unlock(&b->lock);
}

void blob_adopt_chunks(struct blob *b, struct chunkmap *m)
{
	pthread_mutex_lock(&b->lock);
	b->chunksums_decided = true;
	if (b->state != BLOB_PARTIAL || b->npresent || b->ninflight || m->size != b->size) {
		pthread_mutex_unlock(&b->lock);
		chunkmap_free(m);
		return;
	}
	chunkmap_free(b->map);
	b->map = m;
	free(b->cs);
	b->cs = xcalloc(m->n + 1, 1);
	b->nmissing = m->n;
	b->missing_bytes = b->size;
	b->cursor = 0;
	for (struct blob_waiter *w = b->waiters.next; w != &b->waiters; w = w->next)
		waiter_chunks(b, w);
	log_debug("'%s': using %u chunk checksums from the registry", b->name, m->n);
	pthread_mutex_unlock(&b->lock);
}

/* Mark [i, j) in flight and return the byte range. */
static void claim(struct blob *b, uint32_t i, uint32_t j, uint64_t *start, uint64_t *end)
{
	for (uint32_t k = i; k < j; k++)
		b->cs[k] = CH_INFLIGHT;
	b->nmissing -= j - i;
	b->ninflight += j - i;
	*start = chunkmap_start(b->map, i);
	*end = chunkmap_end(b->map, j - 1);
	b->missing_bytes -= *end - *start;
}

/* From missing chunk i, extend over missing chunks that start below limit. */
static uint32_t extend(const struct blob *b, uint32_t i, uint64_t limit, uint64_t max_bytes)
{
	uint64_t start = chunkmap_start(b->map, i);
	uint32_t j = i + 1;

	while (j < b->map->n && b->cs[j] == CH_MISSING && chunkmap_start(b->map, j) < limit &&
	       chunkmap_end(b->map, j) - start <= max_bytes)
		j++;
	return j;
}

int blob_claim(struct blob *b, bool demand_only, uint64_t max_bytes, unsigned spread,
	       uint64_t *start, uint64_t *end)
{
	int prio = -1;

	pthread_mutex_lock(&b->lock);
	if (b->state != BLOB_PARTIAL || !b->nmissing)
		goto out;
	/* Readers first, oldest first; a read's request runs on into the read-ahead window. */
	for (struct blob_waiter *w = b->waiters.next; w != &b->waiters; w = w->next) {
		for (uint32_t i = w->first; i <= w->last; i++) {
			if (b->cs[i] != CH_MISSING)
				continue;
			uint64_t limit = chunkmap_end(b->map, w->last);
			if (b->ra_end > limit && b->ra_start <= limit)
				limit = b->ra_end;
			claim(b, i, extend(b, i, limit, max_bytes), start, end);
			prio = PRIO_DEMAND;
			goto out;
		}
	}
	if (b->ra_end > b->ra_start) {
		uint32_t i = chunkmap_index(b->map, b->ra_start);
		for (; i < b->map->n && chunkmap_start(b->map, i) < b->ra_end; i++) {
			if (b->cs[i] == CH_MISSING) {
				claim(b, i, extend(b, i, b->ra_end, max_bytes), start, end);
				prio = PRIO_READAHEAD;
				goto out;
			}
		}
	}
	if (demand_only || !b->want_all)
		goto out;
	/*
	 * Background requests take their share of what is missing, so that near
	 * the end of a blob every connection gets a piece and they finish
	 * together instead of one long request finishing alone.
	 */
	if (spread > 1)
		max_bytes = MIN(max_bytes, MAX(b->missing_bytes / spread, (uint64_t)SHARE_MIN));
	for (uint32_t k = 0; k < b->map->n; k++) {
		uint32_t i = (b->cursor + k) % b->map->n;
		if (b->cs[i] == CH_MISSING) {
			uint32_t j = extend(b, i, b->size, max_bytes);
			claim(b, i, j, start, end);
			b->cursor = j % b->map->n;
			prio = PRIO_BACKGROUND;
			goto out;
		}
	}
out:
	pthread_mutex_unlock(&b->lock);
	return prio;
}

int blob_claim_from(struct blob *b, uint64_t from, uint64_t max_bytes,
		    uint64_t *start, uint64_t *end)
{
	int ret = -1;

	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_PARTIAL && b->nmissing && from < b->size) {
		uint32_t i = chunkmap_index(b->map, from);
		if (chunkmap_start(b->map, i) < from)
			i++;
		for (; i < b->map->n; i++) {
			if (b->cs[i] == CH_MISSING) {
				claim(b, i, extend(b, i, b->size, max_bytes), start, end);
				ret = 0;
				break;
			}
		}
	}
	pthread_mutex_unlock(&b->lock);
	return ret;
}

int blob_blocked_offsets(struct blob *b, uint64_t *offs, int max)
{
	int n = 0;

	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_PARTIAL) {
		for (struct blob_waiter *w = b->waiters.next; w != &b->waiters && n < max;
		     w = w->next) {
			if (w->first <= w->last && b->cs[w->first] == CH_INFLIGHT)
				offs[n++] = chunkmap_start(b->map, w->first);
		}
	}
	pthread_mutex_unlock(&b->lock);
	return n;
}

void blob_written(struct blob *b, uint64_t job_start, uint64_t from, uint64_t to)
{
	struct blob_waiter *ready = NULL;
	bool work = false, any = false;

	pthread_mutex_lock(&b->lock);
	b->fetched += to - from;
	if (b->state != BLOB_PARTIAL || from >= b->size) {
		pthread_mutex_unlock(&b->lock);
		return;
	}
	for (uint32_t i = chunkmap_index(b->map, from);
	     i < b->map->n && chunkmap_end(b->map, i) <= to; i++) {
		if (chunkmap_start(b->map, i) < job_start || b->cs[i] != CH_INFLIGHT)
			continue;
		b->ninflight--;
		if (b->map->sums) {
			b->cs[i] = CH_WRITTEN;
			b->nwritten++;
			work = true;
			continue;
		}
		set_chunk_present(b, i);
		any = true;
	}
	if (any) {
		/*
		 * The worker hashes and saves on its tick while the map is dirty;
		 * waking it for every chunk would cost more than the hashing.
		 */
		if (!b->map_dirty || b->npresent == b->map->n) {
			b->map_dirty = true;
			work = true;
		}
		collect_waiters(b, &ready, 0, 0, 0);
	}
	if (work)
		schedule_work(b);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(ready);
}

void blob_unclaim(struct blob *b, uint64_t from, uint64_t end, int err)
{
	struct blob_waiter *failed = NULL;
	uint32_t lo, hi;

	pthread_mutex_lock(&b->lock);
	if (b->state != BLOB_PARTIAL || from >= end || from >= b->size) {
		pthread_mutex_unlock(&b->lock);
		return;
	}
	lo = chunkmap_index(b->map, from);
	hi = lo;
	for (uint32_t i = lo; i < b->map->n && chunkmap_start(b->map, i) < end; i++) {
		hi = i;
		if (b->cs[i] != CH_INFLIGHT)
			continue;
		b->cs[i] = CH_MISSING;
		b->ninflight--;
		b->nmissing++;
		b->missing_bytes += chunkmap_end(b->map, i) - chunkmap_start(b->map, i);
	}
	if (lo < b->cursor)
		b->cursor = lo;
	if (err) {
		b->err = err;
		b->want_all = false;
		b->ra_start = b->ra_end = 0;
		collect_waiters(b, &failed, err, lo, hi);
		/*
		 * Remember the range, and each failed read's whole range: the kernel
		 * retries a failed read-ahead as a smaller read, which must fail at
		 * once rather than wait out its own read timeout on bytes the first
		 * read already waited for. A full disk may empty any moment.
		 */
		if (err != -ENOSPC && err != -EDQUOT && err != -EROFS) {
			record_failure(b, from, end, err);
			for (struct blob_waiter *w = failed; w; w = w->next)
				record_failure(b, w->off, w->off + w->len, err);
		}
	}
	pthread_mutex_unlock(&b->lock);
	finish_waiters(failed);
}

void blob_fail(struct blob *b, int err, const char *why)
{
	struct blob_waiter *failed = NULL;

	pthread_mutex_lock(&b->lock);
	if (b->err != err || b->want_all)
		log_error("fetching '%s' stopped: %s", b->name, why);
	b->err = err;
	b->want_all = false;
	b->ra_start = b->ra_end = 0;
	if (b->state == BLOB_PARTIAL)
		collect_waiters(b, &failed, err, 0, UINT32_MAX);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(failed);
}

bool blob_has_work(struct blob *b)
{
	bool work;

	pthread_mutex_lock(&b->lock);
	work = b->state == BLOB_PARTIAL && b->nmissing > 0 &&
	       (b->want_all || b->waiters.next != &b->waiters || b->ra_end > b->ra_start);
	pthread_mutex_unlock(&b->lock);
	return work;
}
