/*
 * status.c - `blobfs status`.
 *
 * A mount publishes its state as a small JSON file, <store>/.blobfs/run/
 * <pid>.json, rewritten (atomically) about once a second by a thread of its
 * own: reads and how they were answered, opens and how many of them the
 * kernel serves by passthrough, what the network thread fetched, retried
 * and failed, and each blob in flight with its progress. The command
 * reads every file, drops those whose process is gone, and prints them. A
 * file, not a socket: it needs no server, survives nothing it should not
 * (the pid check), and can be read by anyone who may read the store.
 * The same documents, with the store's size, are what --json prints, and
 * what --prometheus renders (metrics.c).
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"
#include "fetch.h"
#include "log.h"
#include "metrics.h"
#include "passthrough.h"
#include "session.h"
#include "status.h"
#include "store.h"
#include "util.h"

#define STATUS_INTERVAL_MS 1000
#define RUN_DIR "run"           /* in the store's state directory */

struct status_writer {
	struct session *s;
	char *mountpoint;
	const struct read_stats *rs;
	int runfd;                  /* .blobfs/run, or -1 */
	char name[32];              /* <pid>.json in it */
	uint64_t started;           /* wall clock, seconds */
	pthread_t thread;
	pthread_mutex_t lock;       /* guards stop */
	pthread_cond_t cond;
	bool stop;
};

static void add_blob(struct blob *b, void *arg)
{
	cJSON *list = arg, *o;
	struct blob_stats st;
	char d[DIGEST_STR_LEN];

	blob_stats(b, &st);
	/* In flight: ours to fetch, or another process's that something here waits for. */
	if (st.state != BLOB_PARTIAL && !st.waiting)
		return;
	digest_format(blob_digest(b), d);
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "digest", d);
	cJSON_AddNumberToObject(o, "size", (double)st.size);
	cJSON_AddNumberToObject(o, "local", (double)st.present);
	cJSON_AddNumberToObject(o, "fetched", (double)st.fetched);
	cJSON_AddBoolToObject(o, "waiting_for_another_process", st.waiting);
	cJSON_AddBoolToObject(o, "verifying", st.hashing);
	cJSON_AddItemToArray(list, o);
}

static uint64_t load(const uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

static void write_status(struct status_writer *w)
{
	struct fetch_stats fs;
	cJSON *root = cJSON_CreateObject(), *list = cJSON_CreateArray();
	const char *state;
	char *text;

	fetcher_stats(w->s->fetcher, &fs);
	cJSON_AddNumberToObject(root, "pid", getpid());
	cJSON_AddStringToObject(root, "mountpoint", w->mountpoint);
	cJSON_AddNumberToObject(root, "started", (double)w->started);
	cJSON_AddNumberToObject(root, "updated", (double)(wall_ms() / 1000));
	cJSON_AddNumberToObject(root, "reads", (double)load(&w->rs->reads));
	cJSON_AddNumberToObject(root, "reads_local", (double)load(&w->rs->local));
	cJSON_AddNumberToObject(root, "reads_waited", (double)load(&w->rs->waited));
	cJSON_AddNumberToObject(root, "read_errors", (double)load(&w->rs->errors));
	cJSON_AddNumberToObject(root, "opens", (double)load(&w->rs->opens));
	cJSON_AddNumberToObject(root, "opens_passthrough", (double)load(&w->rs->opens_passthrough));
	state = passthrough_state(w->rs->passthrough);
	if (state)
		cJSON_AddStringToObject(root, "passthrough", state);
	cJSON_AddNumberToObject(root, "fetched_bytes", (double)fs.bytes);
	cJSON_AddNumberToObject(root, "requests", (double)fs.requests);
	cJSON_AddNumberToObject(root, "retries", (double)fs.retries);
	cJSON_AddNumberToObject(root, "failed_attempts", (double)fs.errors);
	cJSON_AddNumberToObject(root, "hedges", (double)fs.hedges);
	cJSON_AddNumberToObject(root, "requests_in_flight", fs.inflight);
	if (w->s->max_cache)
		cJSON_AddNumberToObject(root, "max_cache", (double)w->s->max_cache);
	cJSON_AddItemToObject(root, "read_latency", read_latency_json(w->rs));
	blobcache_each(w->s->cache, add_blob, list);
	cJSON_AddNumberToObject(root, "blobs_in_flight", cJSON_GetArraySize(list));
	cJSON_AddItemToObject(root, "fetching", list);
	text = cJSON_PrintUnformatted(root);
	if (text && w->runfd >= 0 &&
	    write_file_atomic_at(w->s->store->tmpfd, w->runfd, w->name, text, strlen(text), 0644) < 0)
		log_debug("cannot write '%s' in the store's run directory", w->name);
	cJSON_free(text);
	cJSON_Delete(root);
}

static void *status_main(void *arg)
{
	struct status_writer *w = arg;

	pthread_mutex_lock(&w->lock);
	while (!w->stop) {
		pthread_mutex_unlock(&w->lock);
		write_status(w);
		pthread_mutex_lock(&w->lock);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += STATUS_INTERVAL_MS / 1000;
		if (!w->stop)
			pthread_cond_timedwait(&w->cond, &w->lock, &ts);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

struct status_writer *status_start(struct session *s, const char *mountpoint,
				   const struct read_stats *rs)
{
	struct status_writer *w = xcalloc(1, sizeof(*w));

	w->runfd = open_dir_at(s->store->statefd, RUN_DIR, true, 0700);
	if (w->runfd < 0)
		log_warn("cannot create '%s/.blobfs/" RUN_DIR "': 'blobfs status' will not see this mount",
			 s->store->root);
	w->s = s;
	w->mountpoint = realpath(mountpoint, NULL);
	if (!w->mountpoint)
		w->mountpoint = xstrdup(mountpoint);
	w->rs = rs;
	snprintf(w->name, sizeof(w->name), "%d.json", (int)getpid());
	w->started = wall_ms() / 1000;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	if (pthread_create(&w->thread, NULL, status_main, w) != 0) {
		log_error("cannot start the status thread");
		abort();
	}
	return w;
}

void status_stop(struct status_writer *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	if (w->runfd >= 0) {
		unlinkat(w->runfd, w->name, 0);
		close(w->runfd);
	}
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	free(w->mountpoint);
	free(w);
}

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static bool alive(pid_t pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/* One mount's status document; NULL if the file is unreadable or its process gone. */
static cJSON *load_one(int runfd, const char *name)
{
	char *buf;
	size_t len;
	cJSON *root;

	if (read_file_at(runfd, name, 1u << 20, &buf, &len) < 0)
		return NULL;
	root = cJSON_ParseWithLength(buf, len);
	free(buf);
	if (!cJSON_IsObject(root) || !alive((pid_t)num(root, "pid"))) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

static void print_one(const cJSON *root)
{
	char size[16], got[16], up[32];
	const cJSON *mp = cJSON_GetObjectItemCaseSensitive(root, "mountpoint");

	format_duration((uint64_t)(wall_ms() / 1000 - (uint64_t)num(root, "started")), up, sizeof(up));
	printf("mount %s (pid %.0f, up %s)\n", cJSON_IsString(mp) ? mp->valuestring : "?",
	       num(root, "pid"), up);
	printf("  reads: %.0f, %.0f from local data, %.0f waited for the network, %.0f failed\n",
	       num(root, "reads"), num(root, "reads_local"), num(root, "reads_waited"),
	       num(root, "read_errors"));
	const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "passthrough");
	if (cJSON_IsString(pt) && strcmp(pt->valuestring, "on") != 0)
		printf("  opens: %.0f (passthrough %s)\n", num(root, "opens"), pt->valuestring);
	else
		printf("  opens: %.0f, %.0f in passthrough\n", num(root, "opens"),
		       num(root, "opens_passthrough"));
	format_size((uint64_t)num(root, "fetched_bytes"), got, sizeof(got));
	printf("  network: %s fetched in %.0f requests (%.0f in flight), %.0f retries, "
	       "%.0f failed attempts, %.0f hedges\n", got, num(root, "requests"),
	       num(root, "requests_in_flight"), num(root, "retries"), num(root, "failed_attempts"),
	       num(root, "hedges"));
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "fetching"), *b;
	cJSON_ArrayForEach(b, list) {
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(b, "digest");
		double sz = num(b, "size"), local = num(b, "local");
		format_size((uint64_t)sz, size, sizeof(size));
		printf("  fetching %s: %.0f%% of %s%s\n", cJSON_IsString(d) ? d->valuestring : "?",
		       sz > 0 ? local * 100 / sz : 100, size,
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b, "verifying")) ? ", verifying" :
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(b, "waiting_for_another_process"))
		       ? ", another blobfs has it" : "");
	}
}

static int by_mountpoint(const void *a, const void *b)
{
	const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
	const cJSON *mx = cJSON_GetObjectItemCaseSensitive(x, "mountpoint");
	const cJSON *my = cJSON_GetObjectItemCaseSensitive(y, "mountpoint");

	return strcmp(cJSON_IsString(mx) ? mx->valuestring : "",
		      cJSON_IsString(my) ? my->valuestring : "");
}

/* The status documents of the store's live mounts, by mount point; stale files removed. */
static cJSON *live_mounts(struct session *s)
{
	int runfd = s->store->statefd < 0 ? -1 : open_dir_at(s->store->statefd, RUN_DIR, false, 0);
	DIR *d = runfd < 0 ? NULL : opendir_at(runfd);
	struct dirent *e;
	cJSON **v = NULL, *list = cJSON_CreateArray();
	size_t n = 0;

	while (d && (e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);
		if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
			continue;
		cJSON *doc = load_one(runfd, e->d_name);
		if (doc) {
			v = xrealloc(v, (n + 1) * sizeof(*v));
			v[n++] = doc;
		} else {
			unlinkat(runfd, e->d_name, 0);   /* its process is gone; fine if we may not */
		}
	}
	if (d)
		closedir(d);
	if (runfd >= 0)
		close(runfd);
	if (n > 1)
		qsort(v, n, sizeof(*v), by_mountpoint);
	for (size_t i = 0; i < n; i++)
		cJSON_AddItemToArray(list, v[i]);
	free(v);
	return list;
}

int status_print(struct session *s, enum status_format format)
{
	cJSON *mounts = live_mounts(s), *m, *root;
	char *text;

	switch (format) {
	case STATUS_TEXT:
		cJSON_ArrayForEach(m, mounts)
			print_one(m);
		if (cJSON_GetArraySize(mounts) == 0)
			printf("no blobfs mounts of '%s'\n", s->store->root);
		break;
	case STATUS_JSON:
		root = cJSON_CreateObject();
		cJSON_AddStringToObject(root, "store", s->store->root);
		cJSON_AddNumberToObject(root, "store_bytes", (double)store_usage(s->store));
		cJSON_AddItemToObject(root, "mounts", mounts);
		mounts = NULL;
		text = cJSON_Print(root);
		if (text)
			puts(text);
		cJSON_free(text);
		cJSON_Delete(root);
		break;
	case STATUS_PROMETHEUS:
		metrics_prometheus(stdout, s->store->root, store_usage(s->store), mounts);
		break;
	}
	cJSON_Delete(mounts);
	return fflush(stdout) == 0 ? 0 : 1;
}
