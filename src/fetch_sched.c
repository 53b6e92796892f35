/*
 * fetch_sched.c - which range request the network thread starts next.
 *
 * Sources take turns, one request each per pass, within the connection caps
 * (a reserve of extra slots is for reads only). Requests are split so a
 * blocked reader does not wait behind a long transfer, the last big range
 * is split when connections fall idle, a request that receives nothing for
 * its stall timeout is cancelled, and a range far slower than its peers is
 * restarted on a fresh connection. A request that went silent sooner than
 * that, judged by the speed seen, is hedged or restarted (fetch_hedge.c);
 * the two requests of a hedged pair share one range, so neither is split or
 * restarted here. Network thread only.
 */
#include "config.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>

#include "blob.h"
#include "chunkmap.h"
#include "fetch_int.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define SPLIT_GAP (1u << 20)     /* never split for a reader waiting closer than this */
#define SPLIT_WAIT_MS 150        /* split when the request would take longer to get there */
#define SPLIT_MIN_AGE_MS 50      /* ... as judged from at least this much of its speed */
#define STEAL_MIN (4u << 20)     /* only split idle-time tails bigger than twice this */
#define SLOW_MIN_AGE_MS 3000
#define SLOW_RESTARTS_MAX 3
#define SLOW_MIN_LEFT (1u << 20)  /* not worth restarting for less than this */
#define SLOW_PEERS 4              /* peers needed for a median; else the typical speed */
#define SLOW_MAX_PEERS 64         /* running ranges compared at most */
#define SPLIT_MAX_READERS 16      /* blocked readers looked at per source and pass */
#define RATE_MIN_AGE_MS 20        /* a request younger than this says nothing of its speed */
#define RATE_NEW_TENTHS 3         /* the typical rate moves this many tenths toward a new one */
#define LAGGARD_STALLS 2          /* stall timeouts the request behind in a pair may be silent */
#define WHOLE_MAX (2u << 20)      /* a blob this small is fetched in one request */

/* Split job j at the first chunk boundary at or after `at`; the tail is queued first. */
static struct retry *split_job(struct job *j, uint64_t at)
{
	const struct chunkmap *g = j->geo;
	uint32_t i = chunkmap_index(g, at);

	if (j->twin || j->superseded)
		return NULL;              /* a hedged pair shares its range's end */
	if (chunkmap_start(g, i) < at)
		i++;
	if (i >= g->n)
		return NULL;
	at = chunkmap_start(g, i);
	if (at <= job_at(j) || at >= j->end || j->src->no_ranges)
		return NULL;
	struct retry *r = retry_new(at, at, j->end);
	log_debug("splitting bytes %llu-%llu at %llu (the request is at %llu)",
		  (unsigned long long)j->start, (unsigned long long)j->end - 1,
		  (unsigned long long)at, (unsigned long long)j->pos);
	j->end = at;
	j->cut = true;
	queue_retry(j->src, r, true);
	return r;
}

/* Bytes of j's response that have arrived but that curl has not handed us yet. */
static uint64_t queued_bytes(const struct job *j)
{
	curl_socket_t sock = CURL_SOCKET_BAD;
	int n = 0;

	if (curl_easy_getinfo(j->easy, CURLINFO_ACTIVESOCKET, &sock) != CURLE_OK ||
	    sock == CURL_SOCKET_BAD || ioctl(sock, FIONREAD, &n) < 0 || n < 0)
		return 0;
	return (uint64_t)n;
}

/*
 * Will job j take long to reach offset off? Cutting a request costs what
 * the server has already sent past the cut (on a fast link, all the rest
 * of it), so a request is cut only when the bytes the reader needs have not
 * arrived and the request, measured since its first byte, is too slow to
 * bring them soon.
 */
static bool too_slow_to_reach(const struct job *j, uint64_t off, uint64_t now)
{
	uint64_t gap = off - job_at(j), age;

	/* Not started yet: a new request would start no sooner (stalls are retried anyway). */
	if (!j->first_byte_ms || gap <= SPLIT_GAP)
		return false;
	age = now - j->first_byte_ms;
	if (age < SPLIT_MIN_AGE_MS)
		return false;
	uint64_t queued = queued_bytes(j);
	if (queued >= gap)
		return false;
	uint64_t rate = (job_at(j) + queued - j->start) * 1000 / age;   /* bytes per second */
	return rate == 0 || (gap - queued) * 1000 / rate > SPLIT_WAIT_MS;
}

/* Readers blocked on chunks deep inside a slow request get their own request. */
static void split_for_readers(struct fetcher *f, struct source *s)
{
	uint64_t offs[SPLIT_MAX_READERS], now = now_ms();
	int n = blob_blocked_offsets(s->blob, offs, SPLIT_MAX_READERS);

	for (int k = 0; k < n; k++) {
		for (struct job *j = f->jobs; j; j = j->next) {
			if (j->kind == JOB_RANGE && j->src == s && offs[k] >= job_at(j) &&
			    offs[k] < j->end && too_slow_to_reach(j, offs[k], now)) {
				struct retry *r = split_job(j, offs[k]);
				if (r)
					r->demand = true;
				break;
			}
		}
	}
}

/*
 * Connections are idle and nothing is left to claim: split the biggest tail
 * that is too slow to arrive soon on its own (see too_slow_to_reach).
 */
static bool steal_tail(struct fetcher *f)
{
	struct job *best = NULL;
	uint64_t now = now_ms();

	for (struct job *j = f->jobs; j; j = j->next)
		if (j->kind == JOB_RANGE && !j->src->no_ranges && !j->twin &&
		    j->end - job_at(j) > 2 * STEAL_MIN &&
		    too_slow_to_reach(j, job_at(j) + (j->end - job_at(j)) / 2, now) &&
		    (!best || j->end - job_at(j) > best->end - job_at(best)))
			best = j;
	return best && split_job(best, job_at(best) + (best->end - job_at(best)) / 2) != NULL;
}

static struct retry *take_due_retry(struct source *s, uint64_t now, bool demand_only)
{
	for (struct retry **pp = &s->retries; *pp; pp = &(*pp)->next) {
		if ((*pp)->due_ms <= now && (!demand_only || (*pp)->demand)) {
			struct retry *r = *pp;
			*pp = r->next;
			return r;
		}
	}
	return NULL;
}

/* Can source s start a request now? Waits for chunksums, tokens, backoff, resolution. */
static bool source_ready(struct fetcher *f, struct source *s, uint64_t now)
{
	if (s->dead || s->chunksums_pending)
		return false;
	if (want_chunksums(f, s)) {
		request_chunksums(f, s);
		return false;
	}
	if (now < s->pause_until)
		return false;
	if ((!s->direct || url_same_origin(s->direct, s->remote->ep[s->ep].base))) {
		struct authent *a = auth_get(f, s->remote, s->ep);
		int ready = auth_ready(f, a, now);
		if (ready < 0 && source_next_endpoint(f, s, a->msg))
			return false;
		if (ready < 0) {
			blob_fail(s->blob, ready, a->msg);
			while (s->retries) {
				struct retry *r = s->retries;
				s->retries = r->next;
				blob_unclaim(s->blob, r->start, r->end, ready);
				free(r);
			}
			s->dead = true;
			a->err = 0;     /* a later read may try again */
			return false;
		}
		if (ready == 0)
			return false;
	}
	if (!s->direct && s->resolving)
		return false;
	if (s->no_ranges && s->jobs > 0)
		return false;
	return true;
}

/* Start one request for s if it has work; true if one was started. */
static bool schedule_one(struct fetcher *f, struct source *s, uint64_t now, bool demand_only)
{
	struct retry *r;
	uint64_t start, end, max;
	int prio;

	if (!source_ready(f, s, now) || s->jobs >= s->remote->o.connections + f->o.demand_reserve ||
	    (!demand_only && s->jobs >= s->remote->o.connections))
		return false;
	r = take_due_retry(s, now, demand_only);
	if (r) {
		start_range(f, s, r);
		return true;
	}
	max = s->no_ranges ? blob_size(s->blob) : s->remote->o.request_size;
	/* A small blob comes whole in one request: splitting it buys nothing but round trips. */
	unsigned spread = s->no_ranges || blob_size(s->blob) <= WHOLE_MAX ? 1
			  : MIN(f->o.connections, s->remote->o.connections);
	prio = blob_claim(s->blob, demand_only, max, spread, &start, &end);
	if (prio < 0)
		return false;
	r = retry_new(start, start, end);
	r->demand = prio == PRIO_DEMAND;
	start_range(f, s, r);
	return true;
}

void schedule(struct fetcher *f)
{
	uint64_t now = now_ms();
	unsigned cap = f->o.connections, hard = cap + f->o.demand_reserve;
	bool progress = true;

	for (struct source *s = f->sources; s; s = s->next)
		if (s->jobs)
			split_for_readers(f, s);
	/* Round-robin, one request per source per pass, so small blobs are not starved. */
	while (progress && f->nrange < hard) {
		progress = false;
		for (struct source *s = f->sources; s && f->nrange < hard; s = s->next)
			if (schedule_one(f, s, now, f->nrange >= cap))
				progress = true;
	}
	if (f->nrange < cap && f->nrange > 0 && steal_tail(f)) {
		for (struct source *s = f->sources; s && f->nrange < cap; s = s->next)
			schedule_one(f, s, now, false);
	}
	/* Forget sources with nothing left to do. */
	for (struct source **pp = &f->sources; *pp;) {
		struct source *s = *pp;
		if (!s->jobs && !s->retries && !s->chunksums_pending &&
		    (s->dead || !blob_has_work(s->blob))) {
			*pp = s->next;
			source_free(f, s);
		} else {
			pp = &s->next;
		}
	}
}

/*
 * Cancel requests that received nothing for their stall timeout; they are
 * retried. The request behind in a hedged pair costs a connection and no
 * reader waits on it: it may resume first, and gets longer.
 */
void check_stalls(struct fetcher *f, uint64_t now)
{
	for (struct job *j = f->jobs, *next; j; j = next) {
		next = j->next;
		uint64_t limit = j->twin && !j->lead ? LAGGARD_STALLS * j->stall_ms : j->stall_ms;
		if (!j->stall_ms || now - j->last_io_ms < limit)
			continue;
		j->stalled = true;
		snprintf(j->errbuf, sizeof(j->errbuf), "no data for %llu s",
			 (unsigned long long)(j->stall_ms / 1000));
		job_remove(f, j);
		j->next = f->finished;
		f->finished = j;
	}
}

/* Learn how fast a range request normally goes, from those that finish. */
void note_rate(struct fetcher *f, const struct job *j)
{
	uint64_t now = now_ms(), bytes = j->pos - j->start;

	if (!j->first_byte_ms || bytes < SLOW_MIN_LEFT || now - j->first_byte_ms < RATE_MIN_AGE_MS)
		return;
	uint64_t rate = bytes * 1000 / (now - j->first_byte_ms);
	f->typical_rate = f->typical_rate ? ((10 - RATE_NEW_TENTHS) * f->typical_rate +
					     RATE_NEW_TENTHS * rate) / 10 : rate;
}

/*
 * Restart ranges running at under a tenth of the speed of their peers (the
 * median of those running, or, with too few running, the typical speed of
 * ranges that finished) on a fresh connection: a straggler is often one bad
 * connection or one slow CDN node.
 */
void check_slow(struct fetcher *f, uint64_t now)
{
	uint64_t rates[SLOW_MAX_PEERS], ref = 0;
	int n = 0;

	if (now - f->last_slow_check < SLOW_CHECK_MS)
		return;
	uint64_t span = now - f->last_slow_check;
	f->last_slow_check = now;
	for (struct job *j = f->jobs; j && n < SLOW_MAX_PEERS; j = j->next)
		if (j->kind == JOB_RANGE && !j->twin && now - j->started_ms >= SLOW_MIN_AGE_MS)
			rates[n++] = j->win_bytes * 1000 / span;
	if (n >= SLOW_PEERS) {
		for (int a = 1; a < n; a++)
			for (int b = a; b > 0 && rates[b - 1] > rates[b]; b--) {
				uint64_t t = rates[b]; rates[b] = rates[b - 1]; rates[b - 1] = t;
			}
		ref = rates[n / 2];
	} else if (n > 0) {
		ref = f->typical_rate;
	}
	for (struct job *j = f->jobs, *next; j && ref; j = next) {
		next = j->next;
		if (j->kind != JOB_RANGE || j->twin || now - j->started_ms < SLOW_MIN_AGE_MS ||
		    j->slow_restarts >= SLOW_RESTARTS_MAX || j->end - job_at(j) < SLOW_MIN_LEFT ||
		    j->win_bytes * 1000 / span * 10 >= ref)
			continue;
		j->slow = true;
		job_remove(f, j);
		j->next = f->finished;
		f->finished = j;
	}
	for (struct job *j = f->jobs; j; j = j->next)
		j->win_bytes = 0;
}
