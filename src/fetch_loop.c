/*
 * fetch_loop.c - the network thread: its loop and public API (fetch.h).
 *
 * One thread owns a curl multi handle and every easy handle; other threads
 * only post work to its inbox and wake it with curl_multi_wakeup(). Blobs
 * decide *what* is needed (blob_claim: readers first, then read-ahead, then
 * background completion); the network thread decides *how*: which URL, which
 * credentials, how many requests, and what to do when a response is wrong.
 *
 * The parts of the network thread and the flow between them are in fetch.h.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "blob.h"
#include "fetch_int.h"
#include "log.h"
#include "remote.h"
#include "settings.h"
#include "util.h"

#define DEMAND_RESERVE 4         /* range requests beyond the cap that only reads may use */
#define SPARE_CONNECTIONS 4      /* idle connections kept beyond those (small GETs) */
#define LOOP_WAKE_MS 1000        /* the loop looks around at least this often */

void net_opts_defaults(struct net_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->connections = DEFAULT_CONNECTIONS;
	o->demand_reserve = DEMAND_RESERVE;
	o->user_agent = PACKAGE_NAME "/" PACKAGE_VERSION;
}

void http_result_release(struct http_result *r)
{
	free(r->url);
	free(r->body);
	free(r->content_type);
	free(r->docker_digest);
	free(r->content_location);
	memset(r, 0, sizeof(*r));
}

static void finish_job(struct fetcher *f, struct job *j, CURLcode res)
{
	if (j->kind == JOB_MEM)
		finish_mem(f, j, res);
	else
		finish_range(f, j, res);
	job_free(j);
}

static void drain_inbox(struct fetcher *f)
{
	struct kick *k;
	struct memreq *reqs;

	pthread_mutex_lock(&f->lock);
	k = f->inbox;
	f->inbox = NULL;
	reqs = f->newreqs;
	f->newreqs = NULL;
	pthread_mutex_unlock(&f->lock);
	while (k) {
		struct kick *next = k->next;
		source_add(f, k->blob);
		free(k);
		k = next;
	}
	while (reqs) {
		struct memreq *next = reqs->next;
		submit_mem(f, reqs);
		reqs = next;
	}
}

static void run_pending(struct fetcher *f)
{
	struct memreq *list = f->pending;

	f->pending = NULL;
	while (list) {
		struct memreq *r = list;
		list = r->next;
		submit_mem(f, r);
	}
}

static long next_timeout(struct fetcher *f)
{
	uint64_t now = now_ms(), next = now + LOOP_WAKE_MS;

	for (struct source *s = f->sources; s; s = s->next) {
		for (struct retry *r = s->retries; r; r = r->next)
			next = MIN(next, MAX(r->due_ms, s->pause_until));
		if (s->pause_until > now)
			next = MIN(next, s->pause_until);
	}
	/* Waiting for a retry time, or for a token (which wakes us) until its budget ends. */
	for (struct memreq *r = f->pending; r; r = r->next)
		next = MIN(next, r->due_ms > now ? r->due_ms : r->deadline_ms);
	if (f->nrange)
		next = MIN(next, f->last_slow_check + SLOW_CHECK_MS);
	for (struct job *j = f->jobs; j; j = j->next)
		if (j->stall_ms)
			next = MIN(next, j->last_io_ms + j->stall_ms);
	next = MIN(next, hedge_due(f));
	return next > now ? (long)(next - now) : 0;
}

static void shutdown_all(struct fetcher *f)
{
	while (f->jobs) {
		struct job *j = f->jobs;
		job_remove(f, j);
		if (j->kind == JOB_RANGE) {
			job_sync(j);
			j->src->jobs--;
			blob_unclaim(j->src->blob, j->pos, j->end, 0);
		} else {
			memreq_fail(j->req, -ECANCELED, "cancelled");
		}
		job_free(j);
	}
	while (f->sources) {
		struct source *s = f->sources;
		f->sources = s->next;
		source_free(f, s);
	}
	while (f->pending) {
		struct memreq *r = f->pending;
		f->pending = r->next;
		if (r->token_for)
			memreq_free(r);
		else
			memreq_fail(r, -ECANCELED, "cancelled");
	}
	while (f->auth) {
		struct authent *a = f->auth;
		f->auth = a->next;
		authent_free(a);
	}
	while (f->hosts) {
		struct hostinfo *h = f->hosts;
		f->hosts = h->next;
		free(h->authority);
		free(h);
	}
}

static void *fetcher_main(void *arg)
{
	struct fetcher *f = arg;

	f->last_slow_check = now_ms();
	for (;;) {
		pthread_mutex_lock(&f->lock);
		bool stop = f->stop, interrupted = f->interrupted;
		pthread_mutex_unlock(&f->lock);
		if (stop)
			break;
		if (interrupted && !f->cancelling) {
			f->cancelling = true;
			cancel_mem(f);
		}
		drain_inbox(f);
		run_pending(f);
		drop_abandoned(f);
		schedule(f);
		curl_multi_poll(f->multi, NULL, 0, (int)next_timeout(f), NULL);
		int running;
		curl_multi_perform(f->multi, &running);
		flush_stages(f);
		CURLMsg *m;
		int left;
		while ((m = curl_multi_info_read(f->multi, &left)) != NULL) {
			if (m->msg != CURLMSG_DONE)
				continue;
			struct job *j;
			CURLcode res = m->data.result;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
			job_remove(f, j);
			finish_job(f, j, res);
		}
		check_stalls(f, now_ms());
		check_hedges(f, now_ms());
		check_slow(f, now_ms());
		while (f->finished) {
			struct job *j = f->finished;
			f->finished = j->next;
			finish_job(f, j, j->setopt_rc != CURLE_OK ? j->setopt_rc
					 : j->stalled ? CURLE_OPERATION_TIMEDOUT
					 : CURLE_ABORTED_BY_CALLBACK);
		}
	}
	shutdown_all(f);
	return NULL;
}

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int fetcher_start(const struct net_opts *o, struct fetcher **out)
{
	struct fetcher *f = xcalloc(1, sizeof(*f));
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, curl_init_once);
	f->o = *o;
	f->multi = curl_multi_init();
	if (!f->multi) {
		free(f);
		log_error("cannot initialise libcurl");
		return -ENOMEM;
	}
	/*
	 * Idle connections kept for reuse: one for each range request to the
	 * registry and one to its CDN (each blob's first request is redirected),
	 * so a pull of many small blobs reuses them all. Never two transfers on
	 * one at a time: every request asks for HTTP/1.1 (new_easy), and should a
	 * server speak HTTP/2 anyway, no stream joins a connection in use
	 * (blobfs(1), CONNECTIONS).
	 */
	CURLMcode mrc = curl_multi_setopt(f->multi, CURLMOPT_MAXCONNECTS,
					  (long)(2 * (o->connections + o->demand_reserve) +
						 SPARE_CONNECTIONS));
	if (mrc == CURLM_OK)
		mrc = curl_multi_setopt(f->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
	if (mrc != CURLM_OK) {
		log_error("cannot set up libcurl: %s", curl_multi_strerror(mrc));
		curl_multi_cleanup(f->multi);
		free(f);
		return -EINVAL;
	}
	pthread_mutex_init(&f->lock, NULL);
	if (pthread_create(&f->thread, NULL, fetcher_main, f) != 0) {
		curl_multi_cleanup(f->multi);
		pthread_mutex_destroy(&f->lock);
		free(f);
		log_error("cannot start the network thread");
		return -EAGAIN;
	}
	*out = f;
	return 0;
}

void fetcher_stop(struct fetcher *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	f->stop = true;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
	pthread_join(f->thread, NULL);
	/* Kicks that arrived after the thread stopped still hold references. */
	while (f->inbox) {
		struct kick *k = f->inbox;
		f->inbox = k->next;
		blob_put(k->blob);
		free(k);
	}
	while (f->newreqs) {
		struct memreq *r = f->newreqs;
		f->newreqs = r->next;
		memreq_fail(r, -ECANCELED, "cancelled");
	}
}

void fetcher_interrupt(struct fetcher *f)
{
	pthread_mutex_lock(&f->lock);
	f->interrupted = true;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
}

void fetcher_free(struct fetcher *f)
{
	if (!f)
		return;
	curl_multi_cleanup(f->multi);
	pthread_mutex_destroy(&f->lock);
	while (f->stage_pool) {
		void *buf = f->stage_pool;
		f->stage_pool = *(void **)buf;
		free(buf);
	}
	free(f);
}

void fetcher_stats(struct fetcher *f, struct fetch_stats *st)
{
	st->bytes = __atomic_load_n(&f->stats.bytes, __ATOMIC_RELAXED);
	st->requests = __atomic_load_n(&f->stats.requests, __ATOMIC_RELAXED);
	st->retries = __atomic_load_n(&f->stats.retries, __ATOMIC_RELAXED);
	st->errors = __atomic_load_n(&f->stats.errors, __ATOMIC_RELAXED);
	st->hedges = __atomic_load_n(&f->stats.hedges, __ATOMIC_RELAXED);
	st->inflight = __atomic_load_n(&f->nrange, __ATOMIC_RELAXED);
}

void fetcher_kick(struct fetcher *f, struct blob *b)
{
	struct kick *k;

	pthread_mutex_lock(&f->lock);
	if (f->stop) {
		pthread_mutex_unlock(&f->lock);
		return;
	}
	/* Kicks queue in the order they came: the network thread takes blobs on in that order. */
	struct kick **pp = &f->inbox;
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->blob == b) {
			pthread_mutex_unlock(&f->lock);
			curl_multi_wakeup(f->multi);
			return;
		}
	}
	k = xcalloc(1, sizeof(*k));
	k->blob = b;
	blob_ref(b);
	*pp = k;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
}
