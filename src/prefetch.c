/*
 * prefetch.c - fetch the rest of a tag once a loader walks it (the mount).
 *
 * The mount tells us of every open of a blob file with its tag
 * (prefetch_opened). The first open of a tag is remembered; an open of a
 * second, different blob of the same tag is a walk, a loader going through
 * the tag's files, once the two add up to more than WALK_MIN_BYTES: a
 * person who reads a tag's template and params (a few KiB of text) has not
 * started a load, and must not start a download of its weights. Then the
 * tag's blobs are queued as a job, in manifest order, for the prefetch
 * thread.
 *
 * The thread asks for whole blobs (blob_fetch_all: background work, which
 * a blob claims after its readers and its read-ahead), at most WINDOW of
 * them unfinished at a time, and for the next ones as they complete: the
 * network thread then has many blobs in flight, in the order the loader
 * will read them, and never more than a window's worth. A read of a blob
 * the prefetch has not reached is not queued behind it: reads may use
 * connections that background work may not (the demand reserve,
 * fetch_sched.c), so its request starts at once.
 *
 * Locking: p->lock guards the walks, the inbox and stop; it is a leaf (the
 * caller of prefetch_opened may hold the index lock; nothing is called with
 * it held). Jobs taken from the inbox belong to the thread alone.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blob.h"
#include "log.h"
#include "manifest.h"
#include "prefetch.h"
#include "remote.h"
#include "util.h"

#define WINDOW 64            /* a job's blobs asked for and not yet finished, at most */
#define MAX_WALKS 64         /* tags remembered as opened once; the oldest is forgotten */
#define POLL_MS 20           /* how often a running job looks at its blobs */
/*
 * Two blobs opened that are no bigger than this together are text someone
 * reads (templates, params, licenses, model cards are KiB to tens of KiB),
 * not a load; a loader soon opens a tensor or weights file bigger than it.
 */
#define WALK_MIN_BYTES (256u << 10)

struct item {
	struct digest d;
	uint64_t size;
};

struct job {
	struct job *next;
	char *key;
	struct remote *remote;       /* referenced */
	struct item *items;          /* manifest order, config first */
	size_t n, at;                /* at: the next item to ask for */
	struct blob *wanted[WINDOW]; /* asked for and not finished; referenced */
	int nwanted;
};

struct walk {
	char *key;                   /* NULL: a free slot */
	struct digest first;         /* the first blob opened */
	uint64_t biggest;            /* the size of the biggest blob opened */
	bool started;                /* the tag's job was queued */
	uint64_t seen;               /* when last opened, in walk order (p->clock) */
};

struct prefetch {
	struct blobcache *cache;
	pthread_t thread;
	bool has_thread;
	pthread_mutex_t lock;        /* guards everything below */
	pthread_cond_t cond;
	bool stop;
	struct job *inbox;
	struct walk walks[MAX_WALKS];
	uint64_t clock;
};

static void job_free(struct job *j)
{
	for (int i = 0; i < j->nwanted; i++)
		blob_put(j->wanted[i]);
	remote_unref(j->remote);
	free(j->items);
	free(j->key);
	free(j);
}

/* Has b finished, for the job's purposes: complete, failed, or no longer being fetched? */
static bool finished(struct blob *b)
{
	struct blob_stats st;

	blob_stats(b, &st);
	if (st.state == BLOB_COMPLETE || st.state == BLOB_FAILED || st.err)
		return true;
	/* Fetched and being verified; or another process is at it (it completes later). */
	if (st.hashing || st.state == BLOB_BUSY)
		return false;
	/* Orphaned (its tag went away) or given up: nobody fetches it any more. */
	return st.state == BLOB_PARTIAL && !blob_has_work(b);
}

/* Ask for the next blob of j; false when the job cannot go on (read-only store, full disk). */
static bool ask_next(struct prefetch *p, struct job *j)
{
	struct item *it = &j->items[j->at++];
	struct blob *b = blob_get(p->cache, &it->d, it->size);
	int ret;

	blob_add_remote(b, j->remote);
	ret = blob_fetch_all(b, false);
	if (ret < 0) {
		char hex[DIGEST_STR_LEN];
		digest_format(&it->d, hex);
		log_debug("prefetch of '%s' skips '%s': %s", j->key, hex, strerror(-ret));
		blob_put(b);
		return ret != -EROFS && ret != -ENOSPC && ret != -EDQUOT;
	}
	if (finished(b))
		blob_put(b);
	else
		j->wanted[j->nwanted++] = b;
	return true;
}

/* Move job j on: forget finished blobs, ask for more. True when it is done. */
static bool step(struct prefetch *p, struct job *j)
{
	int k = 0;

	for (int i = 0; i < j->nwanted; i++) {
		if (finished(j->wanted[i]))
			blob_put(j->wanted[i]);
		else
			j->wanted[k++] = j->wanted[i];
	}
	j->nwanted = k;
	while (j->nwanted < WINDOW && j->at < j->n)
		if (!ask_next(p, j))
			j->at = j->n;
	if (j->at == j->n && j->nwanted == 0) {
		log_debug("prefetch of '%s' is done", j->key);
		return true;
	}
	return false;
}

static void *prefetch_main(void *arg)
{
	struct prefetch *p = arg;
	struct job *jobs = NULL;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		while (p->inbox) {                 /* oldest first, after the running ones */
			struct job *j = p->inbox, **pp = &jobs;
			p->inbox = j->next;
			while (*pp)
				pp = &(*pp)->next;
			j->next = NULL;
			*pp = j;
		}
		pthread_mutex_unlock(&p->lock);
		for (struct job **pp = &jobs; *pp;) {
			struct job *j = *pp;
			if (step(p, j)) {
				*pp = j->next;
				job_free(j);
			} else {
				pp = &j->next;
			}
		}
		pthread_mutex_lock(&p->lock);
		if (p->stop || p->inbox)
			continue;
		if (!jobs) {
			pthread_cond_wait(&p->cond, &p->lock);
			continue;
		}
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += POLL_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&p->cond, &p->lock, &ts);
	}
	pthread_mutex_unlock(&p->lock);
	while (jobs) {
		struct job *j = jobs;
		jobs = j->next;
		job_free(j);
	}
	return NULL;
}

struct prefetch *prefetch_new(struct blobcache *cache)
{
	struct prefetch *p = xcalloc(1, sizeof(*p));
	pthread_condattr_t ca;

	p->cache = cache;
	pthread_mutex_init(&p->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&p->thread, NULL, prefetch_main, p) == 0)
		p->has_thread = true;
	else
		log_warn("cannot start the prefetch thread: tags are not prefetched");
	return p;
}

void prefetch_free(struct prefetch *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	if (p->has_thread)
		pthread_join(p->thread, NULL);
	while (p->inbox) {
		struct job *j = p->inbox;
		p->inbox = j->next;
		job_free(j);
	}
	for (int i = 0; i < MAX_WALKS; i++)
		free(p->walks[i].key);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

static int add_item(const struct layer *l, void *arg)
{
	struct job *j = arg;

	j->items[j->n].d = l->digest;
	j->items[j->n].size = l->size;
	j->n++;
	return 0;
}

static struct job *job_new(const char *key, const struct manifest *m, struct remote *r)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->key = xstrdup(key);
	j->remote = r ? remote_ref(r) : NULL;
	j->items = xcalloc(m->nlayers + 1, sizeof(*j->items));
	manifest_for_each_blob(m, add_item, j);
	return j;
}

/* The walk of key, or a slot for it (the least recently opened). Lock held. */
static struct walk *walk_slot(struct prefetch *p, const char *key, bool *fresh)
{
	struct walk *old = &p->walks[0];

	for (int i = 0; i < MAX_WALKS; i++) {
		struct walk *w = &p->walks[i];
		if (w->key && strcmp(w->key, key) == 0) {
			*fresh = false;
			return w;
		}
		if (!w->key || (old->key && w->seen < old->seen))
			old = w;
	}
	free(old->key);
	memset(old, 0, sizeof(*old));
	old->key = xstrdup(key);
	*fresh = true;
	return old;
}

void prefetch_opened(struct prefetch *p, const char *key, const struct manifest *m,
		     struct remote *r, const struct digest *d, uint64_t size)
{
	struct job *j = NULL;
	bool fresh;

	if (!p || !p->has_thread || !m)
		return;
	pthread_mutex_lock(&p->lock);
	struct walk *w = walk_slot(p, key, &fresh);
	w->seen = ++p->clock;
	if (fresh)
		w->first = *d;
	bool walk = !w->started && !digest_equal(&w->first, d) &&
		    w->biggest + size > WALK_MIN_BYTES;
	w->biggest = MAX(w->biggest, size);
	if (walk) {
		w->started = true;
		j = job_new(key, m, r);
		j->next = p->inbox;
		p->inbox = j;
		pthread_cond_signal(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
	if (j)
		log_debug("a reader walks '%s': fetching its other blobs in the background", key);
}
