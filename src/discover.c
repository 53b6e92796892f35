/*
 * discover.c - finding tags the store does not have in their registry.
 *
 * A lookup of models/<host>/<ns>/<name>/<tag> (or its manifests/ twin) that
 * the index cannot answer hands a waiter to discover_wait(), and its FUSE
 * worker goes back to the kernel at once. The waiter is answered later, from
 * this file's thread, when the tag's manifest has been fetched, checked,
 * stored and added to the index, or given up on. So a registry that never
 * answers holds no worker thread, and the rest of the mount stays prompt
 * however many discoveries wait on it.
 *
 * - One discovery per tag: lookups of a tag being discovered join it.
 * - At most DISCOVER_PER_HOST discoveries talk to one registry host at a
 *   time; the others queue, so a slow host delays only its own tags.
 * - A lookup waits at most budget_ms (the mount's read_timeout), queueing
 *   included; then it is answered -ETIMEDOUT and the tag counts as missing.
 *   The request itself goes on until the fetcher ends it (its own limits),
 *   and keeps its host's slot until then; if it brings the manifest after
 *   all, the tag is added.
 * - A tag that was not found, timed out, or left the store (removed through
 *   the mount or by another process) is not looked up again for miss_ttl.
 *
 * Threads: a fetch completes on the network thread, which only files the
 * result; the discovery thread does the rest (checks, store, index, answers)
 * and keeps the deadlines, so neither the network thread nor a FUSE worker
 * waits on the disk or the index for a discovery. Waiters are answered with
 * no lock of this file held: done() replies to the kernel, and an interrupt
 * of the same request calls discover_cancel(), which takes the lock.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "discover.h"
#include "fetch.h"
#include "index.h"
#include "log.h"
#include "manifest.h"
#include "registry.h"
#include "remote.h"
#include "session.h"
#include "store.h"
#include "strmap.h"
#include "util.h"

enum disc_state { DISC_QUEUED, DISC_FETCHING, DISC_FETCHED };

struct disc {                    /* one tag being discovered; fields guarded by d->lock */
	struct disc *next;
	struct discoverer *d;
	struct model_name name;
	char *key;                   /* "host/ns/model:tag" */
	enum disc_state state;
	struct disc_waiter waiters;  /* circular */
	struct remote *remote;       /* from DISC_FETCHING on */
	struct http_result res;      /* DISC_FETCHED: what the fetch gave */
};

struct discoverer {
	struct session *sess;
	struct index *ix;
	struct discover_opts o;
	pthread_t thread;
	pthread_mutex_t lock;        /* guards everything below */
	pthread_cond_t cond;         /* work for the thread: a new waiter, a fetch done, stop */
	struct disc *discs;
	struct strmap *misses;       /* key → until when it counts as missing (monotonic ms) */
	bool stop;
};

static char *disc_key(const struct model_name *n)
{
	return xasprintf("%s/%s/%s:%s", n->host, n->ns, n->model, n->tag);
}

static void remember_miss_locked(struct discoverer *d, const char *key)
{
	strmap_put(d->misses, key, now_ms() + d->o.miss_ttl_ms);
}

static void remember_miss(struct discoverer *d, const char *key)
{
	pthread_mutex_lock(&d->lock);
	remember_miss_locked(d, key);
	pthread_mutex_unlock(&d->lock);
}

static void waiter_unlink(struct disc_waiter *w)
{
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->linked = false;
}

/* ---- waiters ---- */

/* Answers to give once the lock is dropped. */
struct answers {
	struct disc_waiter **w;
	int *err;
	size_t n, cap;
};

static void answers_add(struct answers *a, struct disc_waiter *w, int err)
{
	if (a->n == a->cap) {
		a->cap = a->cap ? 2 * a->cap : 16;
		a->w = xrealloc(a->w, a->cap * sizeof(*a->w));
		a->err = xrealloc(a->err, a->cap * sizeof(*a->err));
	}
	a->w[a->n] = w;
	a->err[a->n++] = err;
}

/* Lock not held. */
static void answers_give(struct answers *a)
{
	for (size_t i = 0; i < a->n; i++)
		a->w[i]->done(a->w[i], a->err[i]);
	free(a->w);
	free(a->err);
	memset(a, 0, sizeof(*a));
}

/* Take every waiter of x off it, to be answered err. Lock held. */
static void take_all(struct disc *x, int err, struct answers *a)
{
	while (x->waiters.next != &x->waiters) {
		struct disc_waiter *w = x->waiters.next;
		waiter_unlink(w);
		answers_add(a, w, err);
	}
}

/* ---- the registry side ---- */

static void disc_free(struct disc *x)
{
	remote_unref(x->remote);
	http_result_release(&x->res);
	free(x->key);
	free(x);
}

static void unlink_disc(struct discoverer *d, struct disc *x)
{
	struct disc **pp;

	for (pp = &d->discs; *pp != x; pp = &(*pp)->next)
		;
	*pp = x->next;
}

/* On the network thread: file the result for the discovery thread. */
static void on_fetched(struct http_result *res, void *arg)
{
	struct disc *x = arg;
	struct discoverer *d = x->d;

	pthread_mutex_lock(&d->lock);
	x->res = *res;
	x->state = DISC_FETCHED;
	pthread_cond_signal(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

static void start_fetch(struct discoverer *d, struct disc *x)
{
	char *path = registry_manifest_path(x->name.tag);

	fetcher_get_async(d->sess->fetcher, x->remote, path, MANIFEST_ACCEPT, MANIFEST_MAX_BYTES,
			  on_fetched, x);
	free(path);
}

/* Fetching from host now. Lock held. */
static unsigned host_busy(const struct discoverer *d, const char *host)
{
	unsigned n = 0;

	for (const struct disc *x = d->discs; x; x = x->next)
		n += x->state == DISC_FETCHING && strcmp(x->name.host, host) == 0;
	return n;
}

/*
 * Queued discoveries that still have waiters and whose host has a free
 * slot move to fetching (into *start, at most max of them); those nobody
 * waits for any more are dropped. Lock held.
 */
static size_t pick_starts(struct discoverer *d, struct disc **start, size_t max)
{
	size_t n = 0;

	for (struct disc **pp = &d->discs; *pp;) {
		struct disc *x = *pp;
		if (x->state != DISC_QUEUED) {
			pp = &x->next;
		} else if (x->waiters.next == &x->waiters) {
			*pp = x->next;
			disc_free(x);
		} else {
			if (n < max && host_busy(d, x->name.host) < DISCOVER_PER_HOST) {
				x->state = DISC_FETCHING;
				start[n++] = x;
			}
			pp = &x->next;
		}
	}
	return n;
}

/* ---- finishing ---- */

/* The fetch of x is done: check, store and add the tag. Lock not held. */
static int store_result(struct discoverer *d, struct disc *x)
{
	char err[512], full[NAME_FORMAT_MAX], *buf;
	struct manifest *m;
	size_t len;
	int ret;

	name_format(&x->name, full, sizeof(full));
	if (!x->remote) {
		log_debug("discovery: no registry for '%s'", full);
		return -ENOENT;
	}
	ret = registry_check_manifest(x->remote, x->name.tag, x->res.err, &x->res, &buf, &len,
				      &m, err, sizeof(err));
	if (ret == 0)
		ret = store_write_manifest(d->sess->store, &x->name, buf, len);
	if (ret == 0)
		ret = index_add_tag(d->ix, &x->name);
	if (ret == 0) {
		log_info("discovered '%s'", full);
		d->o.changed(d->o.arg);
	} else if (ret == -ENOENT) {
		log_debug("discovery: '%s' does not exist", full);
	} else {
		log_warn("discovery of '%s' failed: %s", full,
			 err[0] && ret != -ENOSPC ? err : strerror(-ret));
	}
	manifest_free(m);
	free(buf);
	return ret == 0 || ret == -ENOENT ? ret : -EIO;
}

static void finish(struct discoverer *d, struct disc *x)
{
	struct answers a = { 0 };
	int ret = store_result(d, x);

	pthread_mutex_lock(&d->lock);
	if (ret < 0)
		remember_miss_locked(d, x->key);
	unlink_disc(d, x);
	take_all(x, ret, &a);
	pthread_mutex_unlock(&d->lock);
	answers_give(&a);
	disc_free(x);
}

/* Waiters past their deadline, into a; the earliest deadline left. Lock held. */
static uint64_t expire(struct discoverer *d, uint64_t now, struct answers *a)
{
	uint64_t next = UINT64_MAX;

	for (struct disc *x = d->discs; x; x = x->next) {
		for (struct disc_waiter *w = x->waiters.next, *nw; w != &x->waiters; w = nw) {
			nw = w->next;
			if (w->deadline_ms > now) {
				next = MIN(next, w->deadline_ms);
				continue;
			}
			waiter_unlink(w);
			answers_add(a, w, -ETIMEDOUT);
			remember_miss_locked(d, x->key);
		}
	}
	return next;
}

static void wait_until(struct discoverer *d, uint64_t deadline_ms)
{
	struct timespec ts;

	if (deadline_ms == UINT64_MAX) {
		pthread_cond_wait(&d->cond, &d->lock);
		return;
	}
	/* The deadlines are monotonic: the condition variable is too (discover_new). */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t ms = deadline_ms > now_ms() ? deadline_ms - now_ms() : 0;
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&d->cond, &d->lock, &ts);
}

#define STARTS_PER_ROUND 16

/*
 * The thread: finish fetched discoveries, answer waiters whose time is up,
 * start what may start, then sleep until the next deadline or news.
 */
static void *discover_main(void *arg)
{
	struct discoverer *d = arg;

	pthread_mutex_lock(&d->lock);
	while (!d->stop) {
		struct disc *fetched = NULL, *start[STARTS_PER_ROUND];
		struct answers a = { 0 };

		for (struct disc *x = d->discs; x && !fetched; x = x->next)
			if (x->state == DISC_FETCHED)
				fetched = x;
		uint64_t next = expire(d, now_ms(), &a);
		size_t n = pick_starts(d, start, ARRAY_SIZE(start));
		if (!fetched && !a.n && !n) {
			wait_until(d, next);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			start[i]->remote = d->o.remote_for(d->o.arg, &start[i]->name);
			if (!start[i]->remote)
				start[i]->state = DISC_FETCHED;   /* finish() says not found */
		}
		pthread_mutex_unlock(&d->lock);
		answers_give(&a);
		for (size_t i = 0; i < n; i++)
			if (start[i]->remote)
				start_fetch(d, start[i]);
		if (fetched)
			finish(d, fetched);
		pthread_mutex_lock(&d->lock);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/* ---- the interface ---- */

struct discoverer *discover_new(struct session *sess, struct index *ix,
				const struct discover_opts *o)
{
	struct discoverer *d = xcalloc(1, sizeof(*d));
	pthread_condattr_t ca;

	d->sess = sess;
	d->ix = ix;
	d->o = *o;
	d->misses = strmap_new();
	pthread_mutex_init(&d->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&d->thread, NULL, discover_main, d) != 0) {
		log_error("cannot start the discovery thread");
		d->stop = true;
		d->thread = 0;
	}
	return d;
}

void discover_stop(struct discoverer *d)
{
	struct answers a = { 0 };

	pthread_mutex_lock(&d->lock);
	d->stop = true;
	pthread_cond_signal(&d->cond);
	pthread_mutex_unlock(&d->lock);
	if (d->thread)
		pthread_join(d->thread, NULL);
	d->thread = 0;
	pthread_mutex_lock(&d->lock);
	for (struct disc *x = d->discs; x; x = x->next)
		take_all(x, -ECANCELED, &a);
	pthread_mutex_unlock(&d->lock);
	answers_give(&a);
}

void discover_free(struct discoverer *d)
{
	if (!d)
		return;
	while (d->discs) {
		struct disc *x = d->discs;
		d->discs = x->next;
		disc_free(x);
	}
	strmap_free(d->misses);
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static bool missing_locked(struct discoverer *d, const char *key)
{
	uint64_t until = 0;

	return strmap_get(d->misses, key, &until) && until > now_ms();
}

int discover_wait(struct discoverer *d, const struct model_name *n, struct disc_waiter *w)
{
	char *key = disc_key(n);
	struct disc *x;
	bool queued = false;

	pthread_mutex_lock(&d->lock);
	if (d->stop || missing_locked(d, key)) {
		pthread_mutex_unlock(&d->lock);
		free(key);
		return -ENOENT;
	}
	for (x = d->discs; x && strcmp(x->key, key) != 0; x = x->next)
		;
	if (!x) {                    /* last in line: queued discoveries start in order */
		struct disc **pp = &d->discs;
		while (*pp)
			pp = &(*pp)->next;
		x = xcalloc(1, sizeof(*x));
		x->d = d;
		x->name = *n;
		x->key = key;
		key = NULL;
		x->state = DISC_QUEUED;
		x->waiters.next = x->waiters.prev = &x->waiters;
		*pp = x;
		queued = true;
	}
	w->deadline_ms = now_ms() + d->o.budget_ms;
	w->prev = x->waiters.prev;
	w->next = &x->waiters;
	x->waiters.prev->next = w;
	x->waiters.prev = w;
	w->linked = true;
	pthread_cond_signal(&d->cond);
	pthread_mutex_unlock(&d->lock);
	if (queued) {
		char full[NAME_FORMAT_MAX];
		name_format(n, full, sizeof(full));
		log_debug("discovery: '%s' queued", full);
	}
	free(key);
	return 0;
}

bool discover_cancel(struct discoverer *d, struct disc_waiter *w)
{
	bool was;

	pthread_mutex_lock(&d->lock);
	was = w->linked;
	if (was)
		waiter_unlink(w);
	pthread_mutex_unlock(&d->lock);
	return was;
}

void discover_removed(struct discoverer *d, const struct model_name *n)
{
	char *key = disc_key(n);

	remember_miss(d, key);
	free(key);
}
