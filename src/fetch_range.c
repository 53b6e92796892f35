/*
 * fetch_range.c - a blob being fetched, and its range requests.
 *
 * Per blob, a `source` remembers where its bytes really come from. The first
 * request goes to the registry; a redirect (a CDN) is remembered and reused by
 * every later range, and forgotten when the CDN says the URL expired. Until
 * the URL is resolved only one request is in flight, so a registry sees one
 * blob GET per blob, not sixteen.
 *
 * A range request that fails keeps its chunks claimed and waits in the
 * source's retry list with exponential backoff (Retry-After wins if longer);
 * a request that made progress starts counting again. One judged stalled
 * (fetch_hedge.c) goes again at once and asks up to the blob's end; one of
 * a hedged pair that fails leaves its range to the other. Network thread
 * only.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "chunkmap.h"
#include "digest.h"
#include "fetch_int.h"
#include "http.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define MAX_REDIRECTS 8          /* redirects without a byte in between */
#define MAX_RERESOLVES 8         /* expired CDN URLs in a row */
#define CHUNKSUMS_MAX_BYTES (64u << 20)  /* a chunk checksums answer, read at most */

struct retry *retry_new(uint64_t origin, uint64_t start, uint64_t end)
{
	struct retry *r = xcalloc(1, sizeof(*r));

	r->origin = origin;
	r->start = start;
	r->end = end;
	return r;
}

/* Queue a claimed range for another attempt; demand-split ranges go first. */
void queue_retry(struct source *s, struct retry *r, bool front)
{
	struct retry **pp = &s->retries;

	if (!front)
		while (*pp)
			pp = &(*pp)->next;
	r->next = *pp;
	*pp = r;
}

/* Give a claimed range up for good (or, with err 0, just unclaim it). */
static void drop_range(struct source *s, uint64_t start, uint64_t end, int err)
{
	blob_unclaim(s->blob, start, end, err);
	if (err)
		s->dead = s->dead || !blob_has_work(s->blob);
}

/* A range request's job for the retry entry r: where it starts, stops and writes. */
static struct job *range_job_new(struct fetcher *f, struct source *s, const struct retry *r)
{
	struct job *j = xcalloc(1, sizeof(*j));
	struct blob *b = s->blob;

	j->f = f;
	j->kind = JOB_RANGE;
	j->src = s;
	j->wfd = blob_wfd(b);
	j->geo = blob_geometry(b);
	j->origin = r->origin;
	j->start = j->pos = j->reported = r->start;
	j->end = j->asked_end = r->end;
	if (r->to_end) {
		/*
		 * After a stall: ask for the rest of the blob and stop reading at
		 * the end of the range, so a server that stalls partway through
		 * its responses gives as much as it can before it stalls again.
		 */
		j->asked_end = blob_size(b);
		j->cut = j->end < j->asked_end;
	}
	j->attempt = r->attempt;
	j->slow_restarts = r->slow_restarts;
	j->auth_retried = r->auth_retried;
	j->demand = r->demand;
	j->next_boundary = chunkmap_end(j->geo, chunkmap_index(j->geo, j->pos));
	j->hop = s->hop;
	return j;
}

/* The curl options of a range GET: HTTP/1.1, the body callback, the Range header. */
static void set_range_opts(struct job *j, const struct retry *r, char *range, size_t rangelen)
{
	/*
	 * HTTP/1.1: one request per TCP connection, so --connections requests
	 * are that many connections, each with its own window and its own share
	 * of a per-connection cap, and a fresh connection is a new one. HTTP/2
	 * would multiplex them all over one (blobfs(1), CONNECTIONS).
	 */
	job_setopt(j, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	job_setopt(j, CURLOPT_WRITEFUNCTION, on_range_data);
	job_setopt(j, CURLOPT_WRITEDATA, j);
	snprintf(range, rangelen, "%llu-%llu", (unsigned long long)r->start,
		 (unsigned long long)j->asked_end - 1);
	job_setopt(j, CURLOPT_RANGE, range);
	if (r->fresh)
		job_setopt(j, CURLOPT_FRESH_CONNECT, 1L);
}

struct job *start_range(struct fetcher *f, struct source *s, struct retry *r)
{
	struct job *j = range_job_new(f, s, r);
	const char *url = s->direct ? s->direct : s->start_url;
	char range[64];

	new_easy(f, j, url, &s->remote->o);
	set_range_opts(j, r, range, sizeof(range));
	j->to_registry = url_same_origin(url, s->remote->ep[s->ep].base);
	if (j->to_registry)
		auth_apply(f, j, auth_get(f, s->remote, s->ep));
	if (!s->direct)
		s->resolving = true;
	s->jobs++;
	__atomic_add_fetch(&f->nrange, 1, __ATOMIC_RELAXED);   /* read by status */
	free(r);
	if (log_get_level() >= LOG_LVL_DEBUG) {
		char *u = url_redact(url);
		log_debug("GET %s bytes %s", u, range);
		free(u);
	}
	job_add(f, j);
	return j;
}

static void chunksums_done(struct http_result *res, void *arg);

struct cs_req {
	struct fetcher *f;
	struct source *s;
};

/* Ask the registry for chunk checksums once per large fresh blob and host. */
bool want_chunksums(struct fetcher *f, struct source *s)
{
	struct hostinfo *h;

	if (s->chunksums_checked)
		return false;
	h = hostinfo_get(f, s->remote->ep[s->ep].authority);
	if (!s->remote->o.chunksums || h->no_chunksums || !blob_wants_chunksums(s->blob)) {
		s->chunksums_checked = true;
		blob_chunksums_done(s->blob);
		return false;
	}
	return true;
}

void request_chunksums(struct fetcher *f, struct source *s)
{
	struct memreq *r = memreq_new(&s->remote->o);
	struct cs_req *c = xcalloc(1, sizeof(*c));

	c->f = f;
	c->s = s;
	r->remote = remote_ref(s->remote);
	r->path = remote_chunksums_path(blob_digest(s->blob));
	r->ep = s->ep;
	r->max = CHUNKSUMS_MAX_BYTES;
	r->absent_ok = true;         /* most registries have none: not a reason to leave a mirror */
	r->done = chunksums_done;
	r->arg = c;
	s->chunksums_pending = true;
	s->chunksums_checked = true;
	submit_mem(f, r);
}

static void chunksums_done(struct http_result *res, void *arg)
{
	struct cs_req *c = arg;
	struct source *s = c->s;
	char err[160];

	s->chunksums_pending = false;
	if (res->err == 0 && res->status == 200) {
		struct chunkmap *m = chunkmap_from_chunksums(res->body, res->len,
							      blob_size(s->blob), err, sizeof(err));
		if (m) {
			blob_adopt_chunks(s->blob, m);
			if (res->content_location && res->url) {
				char *u = url_resolve(res->url, res->content_location);
				if (u) {
					free(s->start_url);
					s->start_url = u;
				}
			}
		} else {
			log_warn("ignoring the registry's chunk checksums: %s", err);
		}
	} else if (res->status == 404 || res->status == 405 || res->status == 400) {
		hostinfo_get(c->f, s->remote->ep[s->ep].authority)->no_chunksums = true;
	}
	blob_chunksums_done(s->blob);
	http_result_release(res);
	free(c);
}

static struct source *source_find(struct fetcher *f, struct blob *b)
{
	for (struct source *s = f->sources; s; s = s->next)
		if (s->blob == b)
			return s;
	return NULL;
}

/* The blob URL at the source's endpoint, to be resolved afresh. */
static void source_set_url(struct source *s)
{
	char *path = remote_blob_path(blob_digest(s->blob));

	free(s->start_url);
	s->start_url = remote_url(s->remote, s->ep, path);
	free(path);
	free(s->direct);
	s->direct = NULL;
	s->resolving = false;
	s->redirects = s->reresolves = 0;
	s->no_ranges = false;
}

/* Take a kicked blob on (the kick's reference becomes the source's). */
void source_add(struct fetcher *f, struct blob *b)
{
	struct source *s = source_find(f, b);
	struct remote *r;
	int ret;

	if (s) {
		s->dead = false;
		blob_put(b);
		return;
	}
	r = blob_remote(b, 0);
	ret = blob_activate(b);
	if (ret < 0 && ret != -EBUSY) {
		blob_fail(b, ret, strerror(-ret));
		remote_unref(r);
		blob_put(b);
		return;
	}
	if (!r) {
		blob_fail(b, -ENOENT, "no registry is known for it");
		blob_put(b);
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->blob = b;
	s->remote = r;
	s->ep = healthy_endpoint(f, r, 0);
	/* Start at the first remote that is not known to be down, if another is. */
	while (endpoint_down(f, s->remote, s->ep) && (r = blob_remote(b, s->ri + 1)) != NULL) {
		remote_unref(s->remote);
		s->remote = r;
		s->ri++;
		s->ep = healthy_endpoint(f, r, 0);
	}
	source_set_url(s);
	/* Last in line: sources take turns in the order they came (a pull's manifest order). */
	struct source **pp = &f->sources;
	while (*pp)
		pp = &(*pp)->next;
	*pp = s;
}

void source_free(struct fetcher *f, struct source *s)
{
	while (s->retries) {
		struct retry *r = s->retries;
		s->retries = r->next;
		blob_unclaim(s->blob, r->start, r->end, 0);
		free(r);
	}
	blob_put(s->blob);
	remote_unref(s->remote);
	free(s->start_url);
	free(s->direct);
	free(s);
	(void)f;
}

void drop_abandoned(struct fetcher *f)
{
	for (struct job *j = f->jobs, *next; j; j = next) {
		next = j->next;
		if (j->kind != JOB_RANGE || !blob_abandoned(j->src->blob))
			continue;
		job_remove(f, j);
		job_sync(j);      /* what arrived is written; the rest goes back */
		j->src->jobs--;
		if (j->to_registry || !j->src->direct)
			j->src->resolving = false;
		__atomic_sub_fetch(&f->nrange, 1, __ATOMIC_RELAXED);
		blob_unclaim(j->src->blob, j->pos, j->end, 0);
		job_free(j);
	}
	for (struct source *s = f->sources; s; s = s->next) {
		if (!s->retries || !blob_abandoned(s->blob))
			continue;
		while (s->retries) {
			struct retry *r = s->retries;
			s->retries = r->next;
			blob_unclaim(s->blob, r->start, r->end, 0);
			free(r);
		}
	}
}

/*
 * Move a source to its next endpoint: a mirror's registry, or past a
 * remote's registry to the next remote that names the blob (a tag of
 * another repository or registry). The endpoint left is skipped for a while
 * by later requests, and (unless why is NULL) a warning says why.
 */
bool source_next_endpoint(struct fetcher *f, struct source *s, const char *why)
{
	struct remote *r;

	if (!next_endpoint(f, s->remote, &s->ep, why)) {
		if (!(r = blob_remote(s->blob, s->ri + 1)))
			return false;
		if (why) {
			char *u = url_redact(s->remote->ep[s->ep].base);
			char *next = url_redact(r->ep[healthy_endpoint(f, r, 0)].base);
			endpoint_failed(f, s->remote, s->ep);
			log_warn("'%s' failed (%s); trying '%s', which has the blob too", u, why, next);
			free(u);
			free(next);
		}
		remote_unref(s->remote);
		s->remote = r;
		s->ri++;
		s->ep = healthy_endpoint(f, r, 0);
	}
	s->hop++;
	source_set_url(s);
	return true;
}

/* Attempts at the source's endpoint: fewer while another place has the blob. */
static unsigned source_attempts(struct source *s)
{
	struct remote *next = blob_remote(s->blob, s->ri + 1);

	remote_unref(next);
	return attempts_for(s->remote, s->ep, next != NULL);
}

/* A 3xx with a Location: later ranges go there. */
static int follow_redirect(struct job *j, struct retry *r, const char *where,
			   char *msg, size_t len)
{
	struct source *s = j->src;
	char *u = url_resolve(j->url, j->location);

	if (!u) {
		snprintf(msg, len, "'%s' answered %ld with a Location header that is not a URL",
			 where, j->status);
		return -EIO;
	}
	if (++s->redirects > MAX_REDIRECTS) {
		free(u);
		snprintf(msg, len, "too many redirects for '%s'", where);
		return -EIO;
	}
	free(s->direct);
	s->direct = u;
	queue_retry(s, r, true);
	return 0;
}

/*
 * The CDN URL expired: ask the registry again. Requests still in flight
 * with the old URL fail the same way; they only need the new one, so only
 * a failure of the current URL counts.
 */
static int reresolve(struct job *j, struct retry *r, const char *where, char *msg, size_t len)
{
	struct source *s = j->src;

	if (s->direct && strcmp(j->url, s->direct) == 0) {
		/* The redirect led to an answer: count re-resolutions, not redirects. */
		s->redirects = 0;
		if (++s->reresolves > MAX_RERESOLVES) {
			snprintf(msg, len, "'%s' answered %ld to each of %u URLs the registry "
				 "redirected to", where, j->status, (unsigned)MAX_RERESOLVES);
			return -EIO;
		}
		log_debug("'%s' answered %ld: resolving the blob URL again", where, j->status);
		free(s->direct);
		s->direct = NULL;
	}
	queue_retry(s, r, true);
	return 0;
}

/* A transient failure with attempts left: the range waits out its backoff. */
static void retry_later(struct fetcher *f, struct job *j, CURLcode res, struct retry *r,
			const struct verdict *v, const char *where)
{
	struct source *s = j->src;
	uint64_t now = now_ms();

	r->attempt = v->failed;
	if (v->retry_after_ms)
		s->pause_until = MAX(s->pause_until, now + v->retry_after_ms);
	r->due_ms = now + v->delay_ms;
	r->fresh = res != CURLE_OK;
	stat_add(f, &f->stats.retries, 1);
	log_debug("range %llu-%llu of '%s' failed (%s, HTTP %ld); attempt %u in %llums",
		  (unsigned long long)j->pos, (unsigned long long)j->end - 1, where,
		  res != CURLE_OK ? job_error(j, res) : j->bad ? "bad response" : "status",
		  j->status, r->attempt, (unsigned long long)v->delay_ms);
	queue_retry(s, r, false);
}

/* Why the endpoint failed a range for good: a negative errno, and msg. */
static int range_error(const struct job *j, CURLcode res, const struct verdict *v,
		       const char *where, char *msg, size_t len)
{
	if (v->exhausted && res != CURLE_OK && !j->bad) {
		snprintf(msg, len, "'%s': %s (gave up after %u attempts)", where,
			 job_error(j, res), v->failed);
		return -EIO;
	}
	if (v->exhausted) {
		snprintf(msg, len, "'%s': %s (gave up after %u attempts)", where,
			 j->bad ? "invalid responses" : "server errors", v->failed);
		return -EIO;
	}
	if (res == CURLE_PEER_FAILED_VERIFICATION || res == CURLE_SSL_CACERT_BADFILE) {
		snprintf(msg, len, "cannot verify the TLS certificate of '%s': %s "
			 "(is the CA known? see --cacert)", where, job_error(j, res));
		return -EACCES;
	}
	if (res != CURLE_OK) {
		snprintf(msg, len, "'%s': %s", where, job_error(j, res));
		return -EIO;
	}
	snprintf(msg, len, "'%s' answered HTTP %ld%s", where, j->status,
		 j->status == 416 ? " (the blob is smaller than its manifest says)" : "");
	return -http_status_errno(j->status);
}

/*
 * What the server or the transport said about a range (classify_failure),
 * and what follows: another attempt, now or after a backoff, with a new
 * token, a new URL or a fresh one from the registry. Returns 0, or a
 * negative errno with msg when the endpoint failed the range for good.
 */
static int act_on_failure(struct fetcher *f, struct job *j, CURLcode res, struct retry *r,
			  const char *where, char *msg, size_t len)
{
	struct source *s = j->src;
	struct attempt a = {
		.res = res, .status = j->status, .location = j->location != NULL,
		.invalid = j->bad, .to_registry = j->to_registry, .cdn = !j->to_registry,
		.retry_after = j->retry_after, .failed = r->attempt,
	};
	struct verdict v = classify_failure(&a, &s->remote->o.retry,
					    source_attempts(s), fetch_rnd());
	int err;

	if (v.act == ACT_RETRY || v.exhausted)
		stat_add(f, &f->stats.errors, 1);
	switch (v.act) {
	case ACT_REDIRECT:
		return follow_redirect(j, r, where, msg, len);
	case ACT_RERESOLVE:
		return reresolve(j, r, where, msg, len);
	case ACT_AUTHENTICATE:
		err = auth_challenged(f, auth_get(f, s->remote, s->ep), j, j->auth_retried, msg, len);
		if (err == 0) {
			r->auth_retried = j->token_sent != NULL || j->basic_sent;
			queue_retry(s, r, true);
		}
		return err;
	case ACT_RETRY:
		retry_later(f, j, res, r, &v, where);
		return 0;
	case ACT_FAIL:
		break;
	}
	return range_error(j, res, &v, where, msg, len);
}

/*
 * A range request failed: it goes again (to where the source is now, on a
 * fresh connection when it was slow, or as the failure says), the next
 * endpoint takes it over (at last the registry), or it is given up with an
 * error for the readers waiting on it. A local error (the store cannot be
 * written) stops the whole blob.
 */
static void range_failed(struct fetcher *f, struct job *j, CURLcode res)
{
	struct source *s = j->src;
	struct retry *r;
	uint64_t from = MAX(j->pos, j->skip_to);
	bool progress = from > j->start;
	char *where;
	int err = 0;
	char msg[1024] = "";

	if (!j->werr && pair_handover(j))
		return;   /* the other request of its pair has the range */
	where = url_redact(j->url);
	r = retry_new(j->origin, from, j->end);
	r->attempt = progress ? 0 : j->attempt;
	r->slow_restarts = j->slow_restarts;
	r->auth_retried = progress ? false : j->auth_retried;
	r->demand = j->demand;
	if (j->werr) {
		err = j->werr;
		snprintf(msg, sizeof(msg), "cannot write to the store: %s", strerror(-err));
		blob_fail(s->blob, err, msg);
		free(r);
		drop_range(s, from, j->end, err);
	} else if (j->hop < s->hop) {
		/* It went to an endpoint the source has left since: go where it is now. */
		r->attempt = 0;
		r->auth_retried = false;
		queue_retry(s, r, true);
	} else if (j->slow) {
		r->fresh = true;
		r->slow_restarts++;
		log_info("restarting a slow range of '%s' on a new connection", where);
		queue_retry(s, r, true);
	} else if (j->restart) {
		/* Stalled after delivering (fetch_hedge.c): at once, on a fresh connection. */
		r->fresh = true;
		r->to_end = true;
		log_debug("restarting a stalled range of '%s' at %llu on a new connection", where,
			  (unsigned long long)from);
		queue_retry(s, r, true);
	} else if ((err = act_on_failure(f, j, res, r, where, msg, sizeof(msg))) == 0) {
		/* queued again */
	} else if (source_next_endpoint(f, s, msg)) {
		r->attempt = 0;
		r->auth_retried = false;
		r->fresh = true;
		queue_retry(s, r, true);
	} else {
		free(r);
		log_error("%s", msg);
		drop_range(s, from, j->end, err);
	}
	free(where);
}

void finish_range(struct fetcher *f, struct job *j, CURLcode res)
{
	struct source *s = j->src;

	job_sync(j);
	note_seen_rate(f, j);
	s->jobs--;
	__atomic_sub_fetch(&f->nrange, 1, __ATOMIC_RELAXED);
	if (j->to_registry || !s->direct)
		s->resolving = false;
	if (j->pos > j->start)
		s->redirects = s->reresolves = 0;
	if (j->superseded)
		return;   /* the other request of its pair has its range */
	bool ok = (res == CURLE_OK || (res == CURLE_WRITE_ERROR && j->done_early)) &&
		  !j->bad && !j->werr && !j->slow && (j->status == 206 || j->status == 200);
	if (ok && j->pos == j->end) {
		pair_done(f, j);
		note_rate(f, j);
		if (!s->direct && j->to_registry)
			s->direct = xstrdup(j->url);   /* the registry serves ranges itself */
		return;
	}
	if (ok && j->pos < j->end) {
		/* Short but clean: the server ended early. Fetch the rest. */
		j->bad = true;
	}
	range_failed(f, j, res);
}
