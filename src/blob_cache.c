/*
 * blob_cache.c - the blobs of one process: one struct blob per digest,
 * shared by every reader, every tag and both views of the mount, found in
 * a hash table and counted by references. The last reference closes the
 * blob's files. The cache also remembers which digests failed verification
 * here, so a later read of them keeps failing rather than fetching again.
 *
 * Lock order: blob->lock, then cache->lock. Never the other way round.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blob.h"
#include "blob_int.h"
#include "digest.h"
#include "log.h"
#include "settings.h"
#include "store.h"
#include "strmap.h"
#include "util.h"

#define CACHE_BUCKETS 1024
#define SYNC_INTERVAL_MS 1000     /* when the options leave it 0 */

struct blobcache *blobcache_create(struct store *s, const struct blob_opts *o)
{
	struct blobcache *c = xcalloc(1, sizeof(*c));
	pthread_condattr_t ca;

	c->store = s;
	c->opts = *o;
	if (!c->opts.read_timeout_ms)
		c->opts.read_timeout_ms = DEFAULT_READ_TIMEOUT * 1000;
	if (!c->opts.sync_interval_ms)
		c->opts.sync_interval_ms = SYNC_INTERVAL_MS;
	c->nbuckets = CACHE_BUCKETS;
	c->table = xcalloc(c->nbuckets, sizeof(*c->table));
	c->failed = strmap_new();
	pthread_mutex_init(&c->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	return c;
}

struct blobcache *blobcache_new(struct store *s, const struct blob_opts *o)
{
	struct blobcache *c = blobcache_create(s, o);

	blob_worker_start(c);
	return c;
}

void blobcache_free(struct blobcache *c)
{
	if (!c)
		return;
	if (c->has_worker) {
		blob_worker_stop(c);
	} else {
		/* No worker took the list: give its references back. */
		pthread_mutex_lock(&c->lock);
		struct blob *list = c->work;
		c->work = NULL;
		pthread_mutex_unlock(&c->lock);
		while (list) {
			struct blob *b = list;
			list = b->wnext;
			b->on_work = false;
			blob_put(b);
		}
	}
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	strmap_free(c->failed);
	free(c->table);
	free(c);
}

void blobcache_note_failed(struct blobcache *c, const struct blob *b)
{
	pthread_mutex_lock(&c->lock);
	strmap_put(c->failed, b->name, 1);
	pthread_mutex_unlock(&c->lock);
}

static size_t bucket(const struct blobcache *c, const struct digest *d)
{
	uint64_t h;

	memcpy(&h, d->bytes, sizeof(h));
	return h % c->nbuckets;
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

static void blob_destroy(struct blob *b)
{
	blob_files_close(b);
	blob_state_release(b);
	pthread_mutex_destroy(&b->lock);
	free(b);
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
	int ret = store_open_blob(c->store, d, size, &fd);
	if (ret == 0) {
		b->fd = fd;
		blob_mark_locked(b, BLOB_COMPLETE);
	} else if (ret == -EBADMSG) {
		b->state = BLOB_FAILED;    /* the manifest's size is wrong, not the blob */
		b->err = ret;
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

const struct digest *blob_digest(const struct blob *b)
{
	return &b->digest;
}

uint64_t blob_size(const struct blob *b)
{
	return b->size;
}
