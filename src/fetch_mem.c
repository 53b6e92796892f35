/*
 * fetch_mem.c - small GETs into memory: manifests, tokens, chunk checksums.
 *
 * Other threads post them (fetcher_get_async, or fetcher_get, which waits);
 * the network thread starts each once its endpoint's auth is ready, retries
 * transient failures with backoff, follows redirects through curl (they carry
 * no credentials of ours: auth goes only to the registry's origin), moves to
 * the next endpoint when a mirror fails, and answers through the callback.
 *
 * Each request has a time budget (the read timeout) from the moment it is
 * made: waiting for a token, every attempt and every backoff come out of it,
 * and a server that accepts and never answers, or trickles, cannot hold it
 * longer. An attempt may use the rest of the budget, shared with the
 * endpoints still to try after it, so a silent mirror leaves the registry
 * time. fetcher_interrupt fails every small request at once.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch_int.h"
#include "http.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

/*
 * Small GETs let curl follow redirects, at most this many in one request
 * (registry, then a CDN or an auth server: two or three are usual). Range
 * requests follow theirs themselves, without credentials, and count
 * MAX_REDIRECTS (fetch_range.c) in a row without a byte in between.
 */
#define MEM_MAX_REDIRS 5L

struct memreq *memreq_new(const struct remote_opts *o)
{
	struct memreq *r = xcalloc(1, sizeof(*r));

	r->budget_s = o->budget_s;
	r->deadline_ms = now_ms() + (uint64_t)o->budget_s * 1000;
	return r;
}

void memreq_free(struct memreq *r)
{
	remote_unref(r->remote);
	free(r->path);
	free(r->url);
	free(r->accept);
	free(r);
}

static void memreq_complete(struct memreq *r, struct http_result *res)
{
	r->done(res, r->arg);
	memreq_free(r);
}

void memreq_fail(struct memreq *r, int err, const char *fmt, ...)
{
	struct http_result res = { .err = err };
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(res.msg, sizeof(res.msg), fmt, ap);
	va_end(ap);
	memreq_complete(r, &res);
}

/* The settings of whoever the request is for: its registry, or the registry a token is for. */
static const struct remote_opts *req_opts(const struct memreq *r)
{
	return r->remote ? &r->remote->o : &r->token_for->origin->o;
}

void start_mem(struct fetcher *f, struct memreq *r)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->f = f;
	j->kind = JOB_MEM;
	j->req = r;
	if (r->remote) {
		free(r->url);
		r->url = remote_url(r->remote, r->ep, r->path);
	}
	new_easy(f, j, r->url, req_opts(r));
	uint64_t now = now_ms(), left = r->deadline_ms > now ? r->deadline_ms - now : 1;
	/* The rest of the budget, shared with the endpoints still to try after this one. */
	r->share_ms = MAX(left / (r->remote ? r->remote->nep - r->ep : 1), 1);
	job_setopt(j, CURLOPT_TIMEOUT_MS, (long)r->share_ms);
	job_setopt(j, CURLOPT_WRITEFUNCTION, on_mem_data);
	job_setopt(j, CURLOPT_WRITEDATA, j);
	job_setopt(j, CURLOPT_FOLLOWLOCATION, 1L);
	job_setopt(j, CURLOPT_MAXREDIRS, MEM_MAX_REDIRS);
	job_setopt(j, CURLOPT_ACCEPT_ENCODING, "");
	if (r->accept) {
		char *h = xasprintf("Accept: %s", r->accept);
		j->hdrs = curl_slist_append(j->hdrs, h);
		free(h);
		job_setopt(j, CURLOPT_HTTPHEADER, j->hdrs);
	}
	if (r->basic) {
		job_setopt(j, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
		job_setopt(j, CURLOPT_USERNAME, r->basic->user);
		job_setopt(j, CURLOPT_PASSWORD, r->basic->password);
		j->basic_sent = true;
	}
	if (r->remote) {
		j->to_registry = true;
		auth_apply(f, j, auth_get(f, r->remote, r->ep));
	}
	if (log_get_level() >= LOG_LVL_DEBUG) {
		char *u = url_redact(r->url);
		log_debug("GET %s", u);
		free(u);
	}
	job_add(f, j);
}

/* The budget is spent: fail, saying what the request was waiting for. */
static void out_of_time(struct fetcher *f, struct memreq *r)
{
	char *where, *realm = NULL;

	if (r->remote) {
		struct authent *a = auth_get(f, r->remote, r->ep);
		if (a->err) {           /* the token it waited for failed: say why */
			memreq_fail(r, a->err, "%s", a->msg);
			a->err = 0;
			return;
		}
		if (a->pending)
			realm = url_redact(a->ch.realm);
	}
	where = url_redact(r->url);
	memreq_fail(r, -ETIMEDOUT, "no complete answer from '%s' within %u s%s%s%s", where,
		    r->budget_s, realm ? " (waiting for a token from '" : "", realm ? realm : "",
		    realm ? "')" : "");
	free(where);
	free(realm);
}

/* Start a request, or park it until its token arrives or its retry is due. */
void submit_mem(struct fetcher *f, struct memreq *r)
{
	uint64_t now = now_ms();

	if (f->cancelling) {
		memreq_fail(r, -EINTR, "interrupted");
		return;
	}
	if (now >= r->deadline_ms) {
		out_of_time(f, r);
		return;
	}
	if (r->due_ms <= now && r->remote) {
		r->ep = healthy_endpoint(f, r->remote, r->ep);
		struct authent *a = auth_get(f, r->remote, r->ep);
		int ready = auth_ready(f, a, now);
		/* That mirror will not let us in (the token request said why): the next one. */
		if (ready < 0 && next_endpoint(f, r->remote, &r->ep, NULL)) {
			submit_mem(f, r);
			return;
		}
		if (ready < 0) {
			memreq_fail(r, ready, "%s", a->msg);
			a->err = 0;        /* reported; a later request may try again */
			return;
		}
		if (ready > 0) {
			start_mem(f, r);
			return;
		}
	} else if (r->due_ms <= now) {
		start_mem(f, r);
		return;
	}
	r->next = f->pending;
	f->pending = r;
}

/*
 * Did the attempt use up its share of the budget (CURLOPT_TIMEOUT_MS, set in
 * start_mem)? Told from what curl saw, not by reading the clock: curl times a
 * transfer from its own start, on its own clock, and its timeout fires up to
 * a couple of milliseconds before now_ms() reaches the end of the share. A
 * small GET has no stall timer (j->stalled stays false), so its timeout is
 * either the share or the connect timeout, and it is the share once the
 * connection stood, or when the share was the shorter of the two.
 */
static bool spent_share(const struct job *j, const struct memreq *r, CURLcode res)
{
	curl_off_t connected_us = 0;

	if (res != CURLE_OPERATION_TIMEDOUT || j->stalled)
		return false;
	curl_easy_getinfo(j->easy, CURLINFO_CONNECT_TIME_T, &connected_us);
	return connected_us > 0 || r->share_ms <= (uint64_t)req_opts(r)->connect_timeout_s * 1000;
}

/* The endpoint failed the request for good: the next one takes it over, if any. */
static bool fail_over(struct fetcher *f, struct memreq *r, const char *why)
{
	if (!next_endpoint(f, r->remote, &r->ep, why))
		return false;
	r->attempt = 0;
	r->auth_retried = false;
	r->due_ms = 0;
	submit_mem(f, r);
	return true;
}

/*
 * What the server or the transport said (classify_failure), for a request
 * that did not get a 2xx: true when the request goes again, to the same
 * endpoint after a backoff or with a new token, or to the next endpoint.
 */
static bool act_on_failure(struct fetcher *f, struct job *j, CURLcode res)
{
	struct memreq *r = j->req;
	const struct retry_policy *rp = &req_opts(r)->retry;
	struct attempt a = {
		.res = res, .status = j->status, .to_registry = j->to_registry, .retry_after = j->retry_after,
		.failed = r->attempt,
	};
	struct verdict v = classify_failure(&a, rp, r->remote ? attempts_for(r->remote, r->ep, false)
							      : rp->max_attempts, fetch_rnd());
	char msg[1400];

	if (spent_share(j, r, res))
		return false;   /* no retry at this endpoint: its share of the budget is gone */
	r->attempt = v.failed;
	if (v.act == ACT_AUTHENTICATE) {
		int ret = auth_challenged(f, auth_get(f, r->remote, r->ep), j, r->auth_retried,
					  msg, sizeof(msg));
		if (ret < 0 && !fail_over(f, r, msg))
			memreq_fail(r, ret, "%s", msg);
		if (ret < 0)
			return true;
		r->auth_retried = j->token_sent != NULL || j->basic_sent;
		submit_mem(f, r);
		return true;
	}
	if (v.act != ACT_RETRY || now_ms() + v.delay_ms >= r->deadline_ms)
		return false;
	if (log_get_level() >= LOG_LVL_DEBUG) {
		char *u = url_redact(r->url);
		log_debug("retrying %s in %llums", u, (unsigned long long)v.delay_ms);
		free(u);
	}
	r->due_ms = now_ms() + v.delay_ms;
	stat_add(f, &f->stats.retries, 1);
	submit_mem(f, r);
	return true;
}

void cancel_mem(struct fetcher *f)
{
	for (struct job *j = f->jobs, *next; j; j = next) {
		next = j->next;
		if (j->kind != JOB_MEM)
			continue;
		job_remove(f, j);
		memreq_fail(j->req, -EINTR, "interrupted");
		j->req = NULL;
		job_free(j);
	}
	/* After the token requests above: their waiters are among these. */
	while (f->pending) {
		struct memreq *r = f->pending;
		f->pending = r->next;
		memreq_fail(r, -EINTR, "interrupted");
	}
}

/* A finished small GET: retry, re-authenticate, try the next endpoint, or answer. */
void finish_mem(struct fetcher *f, struct job *j, CURLcode res)
{
	struct memreq *r = j->req;
	struct http_result out = { 0 };
	bool ok = res == CURLE_OK && j->status >= 200 && j->status <= 299;

	if (!ok && act_on_failure(f, j, res)) {
		j->req = NULL;
		return;
	}
	j->req = NULL;
	char *where = url_redact(r->url);
	if (spent_share(j, r, res)) {
		out.err = -ETIMEDOUT;
		snprintf(out.msg, sizeof(out.msg), "no complete answer from '%s' within %u s", where,
			 r->budget_s);
	} else if (res == CURLE_WRITE_ERROR && j->too_big) {
		out.err = -EMSGSIZE;
		snprintf(out.msg, sizeof(out.msg), "'%s' sent more than %zu bytes", where, r->max);
	} else if (res != CURLE_OK) {
		out.err = res == CURLE_PEER_FAILED_VERIFICATION ? -EACCES : -EIO;
		snprintf(out.msg, sizeof(out.msg), "cannot get '%s': %s%s", where, job_error(j, res),
			 res == CURLE_PEER_FAILED_VERIFICATION
			 ? " (is the CA known? see --cacert)" : "");
	} else {
		out.status = j->status;
		if (!ok) {
			out.err = -http_status_errno(j->status);
			snprintf(out.msg, sizeof(out.msg), "'%s' answered HTTP %ld", where, j->status);
		}
	}
	free(where);
	/* A mirror that says it has no such thing (chunk checksums) has not failed. */
	bool absent = r->absent_ok && (out.status == 400 || out.status == 404 || out.status == 405);
	if (out.err && !absent && fail_over(f, r, out.msg))
		return;
	out.url = xstrdup(r->url);
	out.body = j->body;
	out.len = j->len;
	j->body = NULL;
	out.content_type = j->content_type;
	out.docker_digest = j->docker_digest;
	out.content_location = j->content_location;
	j->content_type = j->docker_digest = j->content_location = NULL;
	memreq_complete(r, &out);
}

void fetcher_get_async(struct fetcher *f, struct remote *r, const char *path,
		       const char *accept, size_t max,
		       void (*done)(struct http_result *res, void *arg), void *arg)
{
	struct memreq *q = memreq_new(&r->o);

	q->remote = remote_ref(r);
	q->path = xstrdup(path);
	q->url = remote_url(r, 0, path);
	q->accept = accept ? xstrdup(accept) : NULL;
	q->max = max;
	q->done = done;
	q->arg = arg;
	pthread_mutex_lock(&f->lock);
	if (f->stop || f->interrupted) {
		bool interrupted = f->interrupted;
		pthread_mutex_unlock(&f->lock);
		memreq_fail(q, interrupted ? -EINTR : -ECANCELED,
			    interrupted ? "interrupted" : "cancelled");
		return;
	}
	q->next = f->newreqs;
	f->newreqs = q;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
}

struct sync_get {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	struct http_result res;
};

static void sync_done(struct http_result *res, void *arg)
{
	struct sync_get *g = arg;

	pthread_mutex_lock(&g->lock);
	g->res = *res;
	g->done = true;
	pthread_cond_signal(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

int fetcher_get(struct fetcher *f, struct remote *r, const char *path,
		const char *accept, size_t max, struct http_result *res)
{
	struct sync_get g = { .lock = PTHREAD_MUTEX_INITIALIZER,
			      .cond = PTHREAD_COND_INITIALIZER };

	fetcher_get_async(f, r, path, accept, max, sync_done, &g);
	pthread_mutex_lock(&g.lock);
	while (!g.done)
		pthread_cond_wait(&g.cond, &g.lock);
	pthread_mutex_unlock(&g.lock);
	pthread_mutex_destroy(&g.lock);
	pthread_cond_destroy(&g.cond);
	*res = g.res;
	return res->err;
}
