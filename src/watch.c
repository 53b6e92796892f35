/*
 * watch.c - tell the mount when another process pulls or removes a tag.
 *
 * One thread reads inotify events for every directory of the manifests tree
 * (created directories are watched as they appear) and, once events stop
 * arriving for a moment, calls back so the index can rescan. A rescan only
 * re-reads manifests whose mtime changed, so a burst of events costs one
 * cheap pass. A slow periodic callback covers whatever inotify cannot see
 * (watch limits, other machines on a network filesystem).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log.h"
#include "util.h"
#include "watch.h"

#define DEBOUNCE_MS 50
#define DEBOUNCE_MAX_MS 250
#define EVENTS (IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE | \
		IN_DELETE_SELF | IN_ONLYDIR)

struct wdir {
	int wd;
	int depth;
	char *path;
};

struct watch {
	int ifd, efd;
	int depth;
	unsigned fallback_s;
	void (*changed)(void *arg);
	void *arg;
	pthread_t thread;
	char *root;
	struct wdir *dirs;     /* watch thread only */
	size_t ndirs;
	bool warned;
};

static void add_tree(struct watch *w, const char *path, int depth)
{
	/* Directories only, never through a link: the tree is part of a shared store. */
	int wd = inotify_add_watch(w->ifd, path, EVENTS | IN_DONT_FOLLOW);
	DIR *d;
	struct dirent *e;

	if (wd < 0) {
		if (!w->warned && (errno == ENOSPC || errno == ENOMEM)) {
			log_warn("cannot watch '%s' (%s); changes by other processes show up "
				 "within %u s", path, strerror(errno), w->fallback_s);
			w->warned = true;
		}
		return;
	}
	bool known = false;
	for (size_t i = 0; i < w->ndirs; i++)
		if (w->dirs[i].wd == wd)
			known = true;
	if (!known) {
		w->dirs = xrealloc(w->dirs, (w->ndirs + 1) * sizeof(*w->dirs));
		w->dirs[w->ndirs].wd = wd;
		w->dirs[w->ndirs].depth = depth;
		w->dirs[w->ndirs].path = xstrdup(path);
		w->ndirs++;
	}
	if (depth >= w->depth || !(d = opendir(path)))
		return;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN))
			continue;
		char *sub = xasprintf("%s/%s", path, e->d_name);
		add_tree(w, sub, depth + 1);
		free(sub);
	}
	closedir(d);
}

static struct wdir *find_wd(struct watch *w, int wd)
{
	for (size_t i = 0; i < w->ndirs; i++)
		if (w->dirs[i].wd == wd)
			return &w->dirs[i];
	return NULL;
}

static void drop_wd(struct watch *w, int wd)
{
	for (size_t i = 0; i < w->ndirs; i++) {
		if (w->dirs[i].wd == wd) {
			free(w->dirs[i].path);
			w->dirs[i] = w->dirs[--w->ndirs];
			return;
		}
	}
}

/* Read pending events; true if any said something changed. */
static bool read_events(struct watch *w)
{
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool any = false;
	ssize_t n;

	while ((n = read(w->ifd, buf, sizeof(buf))) > 0) {
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			struct wdir *wd = find_wd(w, ev->wd);
			p += sizeof(*ev) + ev->len;
			any = true;
			if (ev->mask & IN_IGNORED) {
				drop_wd(w, ev->wd);
				continue;
			}
			if (wd && (ev->mask & (IN_CREATE | IN_MOVED_TO)) && (ev->mask & IN_ISDIR) &&
			    ev->len && wd->depth < w->depth) {
				char *sub = xasprintf("%s/%s", wd->path, ev->name);
				add_tree(w, sub, wd->depth + 1);
				free(sub);
			}
		}
	}
	return any;
}

static void *watch_main(void *arg)
{
	struct watch *w = arg;
	struct pollfd pfd[2] = { { .fd = w->ifd, .events = POLLIN },
				 { .fd = w->efd, .events = POLLIN } };
	uint64_t dirty_since = 0, last_event = 0, last_call = now_ms();

	for (;;) {
		uint64_t now = now_ms();
		int timeout = (int)MIN((uint64_t)w->fallback_s * 1000, 60000);
		if (dirty_since)
			timeout = DEBOUNCE_MS;
		int r = poll(pfd, 2, timeout);
		if (r < 0 && errno != EINTR)
			break;
		if (pfd[1].revents & POLLIN)
			break;
		now = now_ms();
		if (pfd[0].revents & POLLIN && read_events(w)) {
			if (!dirty_since)
				dirty_since = now;
			last_event = now;
		}
		bool quiet = dirty_since && now - last_event >= DEBOUNCE_MS;
		bool overdue = dirty_since && now - dirty_since >= DEBOUNCE_MAX_MS;
		bool fallback = now - last_call >= (uint64_t)w->fallback_s * 1000;
		if (quiet || overdue || fallback) {
			/* Directories made before their watch was added are caught here too. */
			add_tree(w, w->root, 0);
			w->changed(w->arg);
			dirty_since = 0;
			last_call = now_ms();
		}
	}
	return NULL;
}

struct watch *watch_start(const char *dir, int depth, unsigned fallback_s,
			  void (*changed)(void *arg), void *arg)
{
	struct watch *w = xcalloc(1, sizeof(*w));

	w->ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->ifd < 0 || w->efd < 0) {
		log_warn("cannot use inotify (%s); changes by other processes show up within %u s",
			 strerror(errno), fallback_s);
	}
	w->depth = depth;
	w->fallback_s = fallback_s ? fallback_s : 30;
	w->changed = changed;
	w->arg = arg;
	w->root = xstrdup(dir);
	if (w->ifd >= 0)
		add_tree(w, dir, 0);
	if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
		log_error("cannot start the watch thread");
		abort();
	}
	return w;
}

void watch_stop(struct watch *w)
{
	uint64_t one = 1;

	if (!w)
		return;
	if (write(w->efd, &one, sizeof(one)) < 0)
		log_warn("cannot wake the watch thread: %s", strerror(errno));
	pthread_join(w->thread, NULL);
	for (size_t i = 0; i < w->ndirs; i++)
		free(w->dirs[i].path);
	free(w->dirs);
	free(w->root);
	if (w->ifd >= 0)
		close(w->ifd);
	if (w->efd >= 0)
		close(w->efd);
	free(w);
}
