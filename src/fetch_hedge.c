/*
 * fetch_hedge.c - range requests that went silent: judged against the speed
 * seen, hedged with a second request, or restarted.
 *
 * A request that has been delivering and then receives nothing for longer
 * than the speed seen makes plausible (stall_limit: the time 4 MiB take at
 * that speed, at least STALL_MIN_MS, at most the stall timeout) is stalled.
 * Before its first body byte there is no speed to judge it by, and only the
 * stall timeout applies (check_stalls, fetch_sched.c).
 *
 * A stalled request is hedged: a second request asks for the rest of its
 * range on a fresh connection, and the two make a pair over one range,
 * [start of the second, end). A reader blocked on it may use the reserve of
 * connections for that; a request nobody waits for is hedged only while
 * connections are free, and otherwise restarted on a fresh connection.
 *
 * Keep whichever is faster: the member of a pair that is ahead (`lead`) is
 * the only one that writes; the other reads its response and drops the
 * bytes the lead has, and takes over, the lead's bytes written out first,
 * as soon as it gets ahead. The pair ends when one of them reaches the end
 * (the other is dropped, `superseded`) or fails (the other carries on
 * alone, from where the lead had got: `skip_to`). A lead that stalls too is
 * replaced by a new hedge from where it stopped, so a pair never holds more
 * than two connections; the member behind stays, as it may resume first,
 * until twice the stall timeout. Bytes are never written twice, so a chunk
 * once checked is never rewritten. Network thread only.
 */
#include "config.h"

#include <curl/curl.h>
#include <stdlib.h>

#include "blob.h"
#include "chunkmap.h"
#include "fetch_int.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define STALL_MIN_MS 2000         /* never judge a silence shorter than this a stall */
#define STALL_SLACK_BYTES (4u << 20) /* a stall: silent longer than these take at the speed seen */
#define STALL_RATE_MIN_BYTES (64u << 10) /* a request's own speed counts from this many bytes */
#define STALL_RATE_MIN_MS 20      /* ... measured over at least this long */
#define SEEN_NEW_TENTHS 3         /* the speed seen moves this many tenths toward a new one */
#define MAX_BLOCKED 16            /* blocked readers looked at per source */

/* How fast j's bytes came while they came (silences left out); 0 if too few to say. */
static uint64_t flow_rate(const struct job *j)
{
	uint64_t got = job_at(j) - j->start;

	return got >= STALL_RATE_MIN_BYTES ? got * 1000 / MAX(j->flow_ms, (uint64_t)STALL_RATE_MIN_MS)
					   : 0;
}

/* Learn how fast a connection delivers, from a range request that ends. */
void note_seen_rate(struct fetcher *f, const struct job *j)
{
	uint64_t rate = flow_rate(j);

	if (!rate)
		return;
	f->seen_rate = f->seen_rate ? ((10 - SEEN_NEW_TENTHS) * f->seen_rate +
				       SEEN_NEW_TENTHS * rate) / 10 : rate;
}

/*
 * How long a request that has delivered body bytes may go silent: judged
 * against the fastest of its own speed, that of connections lately (both
 * while bytes flowed) and that of requests that finished; 0 when it cannot
 * be judged yet.
 */
static uint64_t stall_limit(const struct fetcher *f, const struct job *j)
{
	uint64_t rate = MAX(MAX(f->seen_rate, f->typical_rate), flow_rate(j));

	if (!j->stall_ms || !j->first_byte_ms || job_at(j) == j->start)
		return 0;
	if (!rate)
		return j->stall_ms;
	return MIN(MAX((uint64_t)STALL_SLACK_BYTES * 1000 / rate, (uint64_t)STALL_MIN_MS),
		   j->stall_ms);
}

/* Is the request one to judge: delivering, alone or the lead of a pair? */
static bool to_judge(const struct job *j)
{
	return j->kind == JOB_RANGE && !j->superseded && !j->judged && !j->src->no_ranges &&
	       (!j->twin || j->lead) && job_at(j) < j->end;
}

/* When check_hedges next has something to judge (UINT64_MAX: nothing). */
uint64_t hedge_due(const struct fetcher *f)
{
	uint64_t due = UINT64_MAX;

	for (const struct job *j = f->jobs; j; j = j->next) {
		uint64_t limit = to_judge(j) ? stall_limit(f, j) : 0;
		if (limit)
			due = MIN(due, j->last_io_ms + limit);
	}
	return due;
}

/* Does a reader wait on bytes at or past where j has got, within its range? */
static bool reader_blocked(const struct job *j, const uint64_t *offs, int n)
{
	uint64_t from = chunkmap_start(j->geo, chunkmap_index(j->geo, job_at(j)));

	for (int k = 0; k < n; k++)
		if (offs[k] >= from && offs[k] < j->end)
			return true;
	return false;
}

/*
 * A second request for the rest of the stalled request's range. A request
 * alone makes a pair with it, and stays the lead until the hedge gets
 * ahead; a pair's lead that stalled is replaced by it, as the new lead.
 */
static void hedge(struct fetcher *f, struct job *stalled, bool demand)
{
	struct job *other = stalled->twin;

	job_sync(stalled);    /* what it has is written: the hedge starts right after */
	struct retry *r = retry_new(stalled->origin, MAX(stalled->pos, stalled->skip_to),
				    stalled->end);
	r->demand = demand || stalled->demand;
	r->fresh = true;
	r->to_end = true;
	struct job *h = start_range(f, stalled->src, r);
	if (log_get_level() >= LOG_LVL_DEBUG) {
		char *u = url_redact(h->url);
		log_debug("bytes %llu-%llu of '%s' stalled for %llu ms%s: hedged with a second request",
			  (unsigned long long)h->start, (unsigned long long)h->end - 1, u,
			  (unsigned long long)(now_ms() - stalled->last_io_ms),
			  demand ? " with a reader waiting" : "");
		free(u);
	}
	stat_add(f, &f->stats.hedges, 1);
	if (!other) {
		stalled->twin = h;
		stalled->lead = true;
		h->twin = stalled;
		return;
	}
	other->twin = h;
	h->twin = other;
	h->lead = true;
	stalled->twin = NULL;
	stalled->superseded = true;
	job_remove(f, stalled);
	stalled->next = f->finished;
	f->finished = stalled;
}

/* Restart j on a fresh connection, at once (range_failed queues it). */
static void restart(struct fetcher *f, struct job *j)
{
	j->restart = true;
	job_remove(f, j);
	j->next = f->finished;
	f->finished = j;
}

/* Judge one request that has been silent for its stall limit. */
static void judge(struct fetcher *f, struct job *j, bool blocked)
{
	struct source *s = j->src;
	unsigned cap = f->o.connections, conns = s->remote->o.connections;
	bool room = blocked ? f->nrange < cap + f->o.demand_reserve &&
			      s->jobs < conns + f->o.demand_reserve
			    : f->nrange < cap && s->jobs < conns;

	j->judged = true;
	if (!s->direct || s->dead)
		return;                   /* the stall timeout decides, as before */
	if (j->twin || room)
		hedge(f, j, blocked);     /* a pair's lead is replaced: no new connection */
	else
		restart(f, j);
}

void check_hedges(struct fetcher *f, uint64_t now)
{
	for (struct source *s = f->sources; s; s = s->next) {
		uint64_t offs[MAX_BLOCKED];
		int n = -1;
		for (struct job *j = f->jobs, *next; j; j = next) {
			next = j->next;
			if (j->src != s || !to_judge(j))
				continue;
			uint64_t limit = stall_limit(f, j);
			if (!limit || now - j->last_io_ms < limit)
				continue;
			if (n < 0)
				n = blob_blocked_offsets(s->blob, offs, MAX_BLOCKED);
			judge(f, j, reader_blocked(j, offs, n));
			next = f->jobs;   /* the list changed: judged requests are skipped */
		}
	}
}

/* ---- the pair: who writes ---- */

/* Body bytes of j below this are the other's, or were written: drop them. */
uint64_t pair_skip_to(const struct job *j)
{
	return MAX(j->skip_to, j->twin && j->twin->lead ? job_at(j->twin) : 0);
}

/* j got ahead of the lead of its pair: the lead's bytes are written, j writes on. */
void pair_take_lead(struct job *j)
{
	if (!j->twin || j->lead)
		return;
	job_sync(j->twin);
	j->twin->lead = false;
	j->lead = true;
}

/* j reached the end of its range: its pair's other request is not needed. */
void pair_done(struct fetcher *f, struct job *j)
{
	struct job *t = j->twin;

	if (!t)
		return;
	j->twin = t->twin = NULL;
	t->superseded = true;
	job_remove(f, t);
	t->next = f->finished;
	f->finished = t;
}

/*
 * j failed: the other request of its pair carries on alone, and drops what
 * j wrote. A lead that fails leaves a request that is silent, or behind,
 * to be judged again; a hedge that fails before it got ahead does not, so
 * a server that refuses new requests is not asked again at every turn.
 * False if j was not in a pair.
 */
bool pair_handover(struct job *j)
{
	struct job *t = j->twin;

	if (!t)
		return false;
	if (j->lead) {
		t->skip_to = MAX(t->skip_to, j->pos);
		t->judged = false;
	}
	j->twin = t->twin = NULL;
	return true;
}
