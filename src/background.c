/*
 * background.c - one thread for slow housekeeping, after redis's bio.c:
 * the thread that asks for a job returns at once, and the background thread
 * runs it, once however often it was asked for while it waited.
 *
 *   job        asked for by                     does
 *   eviction   the blob worker, after a commit  session_evict(): store_evict()
 *              (session_evict_soon)             under the store's flock
 *
 * Eviction scans and deletes blobs; on the blob worker it would hold up
 * what the worker owes readers, parked reads failing at their deadline
 * above all. See THREADS.md for every thread.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>

#include "background.h"
#include "log.h"
#include "util.h"

#define MAX_JOBS 8               /* kinds of job waiting at once */

struct job_slot {
	void (*fn)(void *arg);
	void *arg;
};

struct background {
	pthread_t thread;
	pthread_mutex_t lock;        /* guards everything below */
	pthread_cond_t cond;
	struct job_slot jobs[MAX_JOBS];
	unsigned njobs;
	bool stop;                   /* run what waits, then exit; refuse new jobs */
};

/* Take the waiting jobs, run them without the lock; until asked to stop. */
static void *background_main(void *arg)
{
	struct background *bg = arg;
	struct job_slot batch[MAX_JOBS];

	pthread_mutex_lock(&bg->lock);
	for (;;) {
		while (!bg->njobs && !bg->stop)
			pthread_cond_wait(&bg->cond, &bg->lock);
		unsigned n = bg->njobs;
		if (!n && bg->stop)
			break;
		for (unsigned i = 0; i < n; i++)
			batch[i] = bg->jobs[i];
		bg->njobs = 0;
		pthread_mutex_unlock(&bg->lock);
		for (unsigned i = 0; i < n; i++)
			batch[i].fn(batch[i].arg);
		pthread_mutex_lock(&bg->lock);
	}
	pthread_mutex_unlock(&bg->lock);
	return NULL;
}

struct background *background_start(void)
{
	struct background *bg = xcalloc(1, sizeof(*bg));

	pthread_mutex_init(&bg->lock, NULL);
	pthread_cond_init(&bg->cond, NULL);
	if (pthread_create(&bg->thread, NULL, background_main, bg) != 0) {
		log_error("cannot start the background thread");
		abort();
	}
	return bg;
}

/* Is fn(arg) waiting already? Lock held. */
static bool waiting(const struct background *bg, void (*fn)(void *arg), void *arg)
{
	for (unsigned i = 0; i < bg->njobs; i++)
		if (bg->jobs[i].fn == fn && bg->jobs[i].arg == arg)
			return true;
	return false;
}

bool background_run(struct background *bg, void (*fn)(void *arg), void *arg)
{
	bool open;

	pthread_mutex_lock(&bg->lock);
	open = !bg->stop;
	if (open && !waiting(bg, fn, arg)) {
		if (bg->njobs == MAX_JOBS) {
			log_error("too many kinds of background job");
			abort();
		}
		bg->jobs[bg->njobs++] = (struct job_slot){ fn, arg };
		pthread_cond_signal(&bg->cond);
	}
	pthread_mutex_unlock(&bg->lock);
	return open;
}

void background_stop(struct background *bg)
{
	bool running;

	if (!bg)
		return;
	pthread_mutex_lock(&bg->lock);
	running = !bg->stop;
	bg->stop = true;
	pthread_cond_signal(&bg->cond);
	pthread_mutex_unlock(&bg->lock);
	if (running)
		pthread_join(bg->thread, NULL);
}

void background_free(struct background *bg)
{
	if (!bg)
		return;
	background_stop(bg);
	pthread_mutex_destroy(&bg->lock);
	pthread_cond_destroy(&bg->cond);
	free(bg);
}
