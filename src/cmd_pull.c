/*
 * cmd_pull.c - `blobfs pull`: fetch a manifest, store it, then fetch every
 * blob it names through the shared blob cache and network thread, showing
 * progress until each blob is verified and committed (or fails).
 *
 * Blobs are asked for in manifest order, PULL_WINDOW at a time: the network
 * thread keeps many of them in flight (a model of a thousand small blobs is
 * not fetched one blob at a time), takes them in the order they were asked
 * for, and never holds more than a window's worth of them. Each blob's
 * space is reserved as it is asked for; a model that cannot fit as a whole
 * is refused before anything is fetched (fits()).
 *
 * SIGINT and SIGTERM end a pull within moments, whatever it waits for: they
 * are blocked in every thread and taken by a thread of their own, which
 * fails the small requests in flight (fetcher_interrupt) and flags the
 * waits below; closing the session then makes what arrived durable. The
 * exit status is 128 plus the signal.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "blob.h"
#include "cli.h"
#include "log.h"
#include "manifest.h"
#include "name.h"
#include "progress.h"
#include "registry.h"
#include "remote.h"
#include "session.h"
#include "store.h"
#include "util.h"

#define PULL_WINDOW 128      /* blobs asked for and not yet complete, at most */
#define PULL_POLL_MS 20      /* how often the window is refilled */
#define DRAW_EVERY 5         /* progress is drawn every this many polls */

static int interrupted;      /* the signal that ended the pull; atomic */

static bool was_interrupted(void)
{
	return __atomic_load_n(&interrupted, __ATOMIC_ACQUIRE) != 0;
}

/* The thread that takes SIGINT and SIGTERM for the whole process. */
struct sigwatch {
	pthread_t thread;
	sigset_t set;
	struct fetcher *fetcher;
	bool done;                  /* atomic */
};

static void *watch_signals(void *arg)
{
	struct sigwatch *w = arg;
	const struct timespec tick = { 0, 100 * 1000 * 1000 };

	while (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) {
		int sig = sigtimedwait(&w->set, NULL, &tick);
		if (sig > 0) {
			__atomic_store_n(&interrupted, sig, __ATOMIC_RELEASE);
			fetcher_interrupt(w->fetcher);
			break;
		}
	}
	return NULL;
}

struct pull_item {
	struct blob *blob;
	const struct layer *layer;
	int bar;
};

struct pull_ctx {
	struct session *s;
	struct remote *remote;
	struct pull_item *items;
	int n;
	int next;                /* the next item to ask for */
	struct progress *prog;
};

static int add_item(const struct layer *l, void *arg)
{
	struct pull_ctx *c = arg;
	struct pull_item *it;

	c->items = xrealloc(c->items, (c->n + 1) * sizeof(*c->items));
	it = &c->items[c->n++];
	it->layer = l;
	it->blob = blob_get(c->s->cache, &l->digest, l->size);
	blob_add_remote(it->blob, c->remote);
	return 0;
}

/*
 * Is there room in the store for what is not local yet? Else say so: -ENOSPC.
 * With a cache limit, each blob makes room for itself as it starts (evicting
 * the least recently used), so what is free now says nothing.
 */
static int fits(struct pull_ctx *c, const char *name)
{
	struct statvfs sv;
	uint64_t need = 0, avail;
	char n[16], a[16];

	if (c->s->max_cache)
		return 0;

	for (int i = 0; i < c->n; i++) {
		const struct layer *l = c->items[i].layer;
		need += l->size - MIN(l->size, store_local_bytes(c->s->store, &l->digest, l->size));
	}
	if (statvfs(c->s->store->root, &sv) < 0)
		return 0;   /* unknown: each blob's reservation finds out */
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (need <= avail)
		return 0;
	format_size(need, n, sizeof(n));
	format_size(avail, a, sizeof(a));
	log_error("cannot pull '%s': it needs %s more in the store, which has %s free: %s",
		  name, n, a, strerror(ENOSPC));
	return -ENOSPC;
}

/* Ask for blobs in manifest order while fewer than PULL_WINDOW are unfinished. */
static int refill(struct pull_ctx *c, int unfinished, const char *name)
{
	int ret = 0;

	for (; c->next < c->n && unfinished < PULL_WINDOW; c->next++, unfinished++) {
		struct pull_item *it = &c->items[c->next];
		ret = blob_fetch_all(it->blob, true);
		if (ret < 0) {
			log_error("cannot pull '%s': %s: %s", name, it->layer->file, strerror(-ret));
			break;
		}
	}
	return ret;
}

/* One item's state for the progress display; *err is set once it failed. */
static enum progress_state item_state(struct pull_ctx *c, int i, const char *name, int *err,
				      uint64_t *present)
{
	struct blob_stats st;

	blob_stats(c->items[i].blob, &st);
	*present = st.present;
	if (st.state == BLOB_COMPLETE)
		return PROG_DONE;
	if (st.state == BLOB_FAILED || st.err) {
		if (!*err) {
			char d[DIGEST_STR_LEN];
			digest_format(&c->items[i].layer->digest, d);
			log_error("cannot pull '%s': %s ('%s'): %s", name,
				  c->items[i].layer->file, d, strerror(-st.err));
			*err = st.err;
		}
		return PROG_FAILED;
	}
	if (st.state == BLOB_BUSY)
		return PROG_WAITING;
	return st.hashing ? PROG_VERIFYING : PROG_ACTIVE;
}

/* Fetch and wait for every blob; 0 when all are complete, else a negative errno. */
static int fetch_blobs(struct pull_ctx *c, const char *name)
{
	int ret = 0;

	for (unsigned poll = 0;; poll++) {
		int unfinished = 0;
		bool draw = poll % DRAW_EVERY == 0;
		for (int i = 0; i < c->next; i++) {
			uint64_t present;
			enum progress_state ps = item_state(c, i, name, &ret, &present);
			if (ps != PROG_DONE && ps != PROG_FAILED)
				unfinished++;
			if (c->prog)
				progress_set(c->prog, c->items[i].bar, present, ps);
		}
		bool all = c->next == c->n && unfinished == 0;
		if (!ret && !all)
			ret = refill(c, unfinished, name);
		if (c->prog && (draw || all || ret || was_interrupted()))
			progress_draw(c->prog, all || ret || was_interrupted());
		if (all || ret)
			return ret;
		if (was_interrupted())
			return -EINTR;
		usleep(PULL_POLL_MS * 1000);
	}
}

/*
 * Fetch the manifest of n into buf and m, and write it to the store, under the
 * spelling the store already has for that tag if it has one.
 */
static int fetch_manifest(struct pull_ctx *c, const struct model_name *n, const char *full,
			  char **buf, struct manifest **m)
{
	struct session *s = c->s;
	struct model_name stored;
	char err[512];
	size_t len;
	int ret;

	ret = registry_fetch_manifest(s->fetcher, c->remote, n->tag, buf, &len, m, err,
				      sizeof(err));
	if (ret < 0) {
		if (!was_interrupted())
			log_error("cannot pull '%s': %s", full, err);
		return ret;
	}
	session_record_scheme(s, n);
	stored = *n;
	if (store_find_tag(s->store, n, &stored) < 0)
		stored = *n;
	ret = store_write_manifest(s->store, &stored, *buf, len);
	if (ret < 0)
		log_error("cannot pull '%s': cannot store its manifest: %s", full, strerror(-ret));
	return ret;
}

static void start_progress(struct pull_ctx *c)
{
	c->prog = progress_new(stderr, isatty(STDERR_FILENO));
	for (int i = 0; i < c->n; i++)
		c->items[i].bar = progress_add(c->prog, c->items[i].layer->file,
					       c->items[i].layer->size);
}

static uint64_t bytes_fetched(const struct pull_ctx *c)
{
	uint64_t fetched = 0;

	for (int i = 0; i < c->n; i++) {
		struct blob_stats st;
		blob_stats(c->items[i].blob, &st);
		fetched += st.fetched;
	}
	return fetched;
}

/* The summary line of a finished pull: sizes, what was fetched, how fast. */
static void print_pulled(const struct pull_ctx *c, const struct manifest *m, const char *full,
			 uint64_t t0, uint64_t fetched)
{
	char size[16], got[16], rate[16], took[16];
	uint64_t ms = MAX(now_ms() - t0, 1);

	format_size(m->total_size, size, sizeof(size));
	format_size(fetched, got, sizeof(got));
	format_size(fetched * 1000 / ms, rate, sizeof(rate));
	snprintf(took, sizeof(took), "%.1fs", ms / 1000.0);
	printf("pulled %s: %d blobs, %s (%s fetched) in %s, %s/s\n", full, c->n, size,
	       got, took, rate);
}

static int pull_one(struct session *s, const struct pull_args *a, const char *arg)
{
	struct pull_ctx c = { .s = s };
	struct model_name n;
	struct manifest *m = NULL;
	char err[512], full[NAME_FORMAT_MAX];
	char *buf = NULL;
	uint64_t t0 = now_ms(), fetched;
	int ret;

	if (name_parse(arg, &n, err, sizeof(err)) < 0) {
		log_error("%s", err);
		return -EINVAL;
	}
	name_format(&n, full, sizeof(full));
	c.remote = session_remote(s, &n);
	if (!c.remote)
		return -EINVAL;
	ret = fetch_manifest(&c, &n, full, &buf, &m);
	if (ret < 0)
		goto out;
	manifest_for_each_blob(m, add_item, &c);
	if (a->lazy) {
		char size[16];
		format_size(m->total_size, size, sizeof(size));
		if (!a->quiet)
			printf("pulled manifest of %s: %d blobs, %s, fetched when first read\n",
			       full, c.n, size);
		goto out;
	}
	if (!a->quiet)
		start_progress(&c);
	ret = fits(&c, full);
	if (ret == 0)
		ret = fetch_blobs(&c, full);
	fetched = bytes_fetched(&c);
	if (ret == 0)
		session_evict(s);   /* the blobs just pulled are in use, so they stay */
	if (ret == 0 && !a->quiet)
		print_pulled(&c, m, full, t0, fetched);
out:
	for (int i = 0; i < c.n; i++)
		blob_put(c.items[i].blob);
	free(c.items);
	progress_free(c.prog);
	manifest_free(m);
	free(buf);
	remote_unref(c.remote);
	return ret;
}

int cmd_pull(const struct session_opts *so, const struct pull_args *a,
	     char *const *names, int n)
{
	struct session *s;
	struct sigwatch w = { 0 };
	sigset_t old;
	int ret = 0;

	/* Blocked before the session starts its threads, so that they inherit it. */
	sigemptyset(&w.set);
	sigaddset(&w.set, SIGINT);
	sigaddset(&w.set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &w.set, &old);
	if (session_open(so, SESSION_WRITE | SESSION_NET, &s) < 0) {
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		return EXIT_FAIL;
	}
	w.fetcher = s->fetcher;
	if (pthread_create(&w.thread, NULL, watch_signals, &w) != 0) {
		log_error("cannot start a thread: %s", strerror(errno));
		session_close(s);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		return EXIT_FAIL;
	}
	for (int i = 0; i < n && !was_interrupted(); i++) {
		int r = pull_one(s, a, names[i]);
		if (r < 0 && !ret)
			ret = r;
	}
	__atomic_store_n(&w.done, true, __ATOMIC_RELEASE);
	pthread_join(w.thread, NULL);
	session_close(s);   /* makes the progress of an interrupted pull durable */
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (was_interrupted()) {
		log_warn("interrupted; 'blobfs pull' again resumes where it stopped");
		return EXIT_SIGNAL + __atomic_load_n(&interrupted, __ATOMIC_ACQUIRE);
	}
	return ret < 0 ? EXIT_FAIL : EXIT_OK;
}
