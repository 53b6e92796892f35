/*
 * blob_state.c - the state machine of a blob: chunk states, waiters, claims
 * and failures. No files and no threads: the other parts of the module
 * (blob_io.c, blob_worker.c) do the I/O and call in here, under b->lock, to
 * record what it changed; that keeps this file testable on its own
 * (tests/unit/test_blob.c).
 *
 * A blob is IDLE until someone needs its bytes, PARTIAL while it is ours to
 * fetch, BUSY while it is not (another process holds it, we let it go when
 * we had nothing to fetch, or there was no room to take it up), then
 * COMPLETE or FAILED. A BUSY blob keeps a view of the chunks the holder has
 * made durable (blob_view_locked), and its reads of those are answered like
 * a partial blob's (see blob_io.c for how processes share a partial blob).
 * While PARTIAL each chunk is MISSING, INFLIGHT (claimed by exactly one
 * request), WRITTEN (awaiting its chunk checksum) or PRESENT, and only
 * MISSING chunks can be claimed: that makes a range single-flight. A read
 * of missing bytes parks a waiter and returns; whoever makes the bytes
 * present (or gives up on them) answers it, after dropping its locks.
 *
 * Who wants what, in order (blob_claim): parked readers, oldest first, then
 * the read-ahead window, then, for a blob to be fetched whole, the rest in
 * shares that shrink toward the end so the last requests finish together.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "blob_int.h"
#include "chunkmap.h"
#include "digest.h"
#include "log.h"
#include "remote.h"
#include "settings.h"
#include "util.h"

/* Blobs smaller than this are not worth a chunksums request. */
#define CHUNKSUMS_MIN_SIZE (64ULL << 20)
#define FAIL_MEMORY_MS 5000      /* how long a failed range fails reads at once */
/* Background requests shrink toward a blob's end, but not below this. */
#define SHARE_MIN (1u << 20)

/* ---- failures ---- */

/*
 * Remember that [start, end) failed with err. The kernel answers a failed
 * read-ahead by reading the same page again at once; without this memory
 * that second read would wait a whole read timeout more.
 */
static void record_failure(struct blob *b, uint64_t start, uint64_t end, int err)
{
	uint64_t window = MIN(b->cache->opts.read_timeout_ms, (uint64_t)FAIL_MEMORY_MS);
	unsigned i = b->nfails++ % RECENT_FAILS;

	b->fails[i].start = start;
	b->fails[i].end = end;
	b->fails[i].until_ms = now_ms() + window;
	b->fails[i].err = err;
}

static bool chunk_readable(const struct blob *b, uint32_t i);
static bool window_has_missing(const struct blob *b, uint64_t start, uint64_t end);

/* The error of a recent failure of bytes in [off, off + len) not yet readable, or 0. */
static int recent_failure(const struct blob *b, uint64_t off, uint64_t len)
{
	uint64_t now = now_ms();

	for (unsigned k = 0; k < RECENT_FAILS; k++) {
		uint64_t lo = MAX(off, b->fails[k].start), hi = MIN(off + len, b->fails[k].end);
		if (b->fails[k].until_ms <= now || lo >= hi)
			continue;
		for (uint32_t i = chunkmap_index(b->map, lo);
		     i < b->map->n && chunkmap_start(b->map, i) < hi; i++)
			if (!chunk_readable(b, i))
				return b->fails[k].err;
	}
	return 0;
}

/*
 * Did chunk i fail within its failure memory? Read-ahead and background
 * work leave such a chunk alone until the memory fades: a chunk given up
 * after its attempts must not start a new round of them at once because a
 * read-ahead window still covers it. (A reader asking for it fails at once,
 * recent_failure.)
 */
static bool failed_recently(const struct blob *b, uint32_t i)
{
	if (!b->nfails)
		return false;
	uint64_t now = now_ms(), start = chunkmap_start(b->map, i), end = chunkmap_end(b->map, i);

	for (unsigned k = 0; k < RECENT_FAILS; k++)
		if (b->fails[k].until_ms > now && b->fails[k].start < end && start < b->fails[k].end)
			return true;
	return false;
}

/* ---- waiters ---- */

/*
 * May chunk i be handed to readers? Present chunks may, but for the last one:
 * whenever the whole blob is here, or about to be (it is being fetched whole),
 * the last chunk waits for the blob's sha256, so a reader that reads to the
 * end of a corrupt blob gets EIO, never silently wrong bytes. A reader that
 * only jumps about gets its chunks unverified (there is no other way to be
 * lazy), unless the registry gave per-chunk checksums.
 */
static bool chunk_readable(const struct blob *b, uint32_t i)
{
	if (b->cs[i] != CH_PRESENT)
		return false;
	if (i + 1 < b->map->n || b->map->sums)
		return true;
	return !b->want_all && b->npresent < b->map->n;
}

static void waiter_unlink(struct blob_waiter *w)
{
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->next = w->prev = w;
}

/* Chunk range of a waiter under the current geometry. */
static void waiter_chunks(const struct blob *b, struct blob_waiter *w)
{
	w->first = chunkmap_index(b->map, w->off);
	w->last = chunkmap_index(b->map, w->off + w->len - 1);
}

/* Does the blob know its chunks: ours to fetch, or a view of another's? */
static bool has_chunks(const struct blob *b)
{
	return b->state == BLOB_PARTIAL || (b->state == BLOB_BUSY && b->map);
}

/* Advance w->first past present chunks; true when all of w is present. */
static bool waiter_ready(const struct blob *b, struct blob_waiter *w)
{
	while (w->first <= w->last && chunk_readable(b, w->first))
		w->first++;
	return w->first > w->last;
}

/*
 * Move waiters to out: with err, those that need a chunk in [lo, hi] (all of
 * them unless the blob is PARTIAL); without, those whose bytes are all here.
 * The caller answers them with finish_waiters() once its locks are dropped.
 */
void collect_waiters(struct blob *b, struct blob_waiter **out, int err,
		     uint32_t lo, uint32_t hi)
{
	struct blob_waiter *w = b->waiters.next, *next;

	for (; w != &b->waiters; w = next) {
		next = w->next;
		bool take;
		if (err)
			take = b->state != BLOB_PARTIAL || (w->first <= hi && w->last >= lo);
		else
			take = b->state == BLOB_COMPLETE || (has_chunks(b) && waiter_ready(b, w));
		if (!take)
			continue;
		waiter_unlink(w);
		w->result = err;
		w->next = *out;
		*out = w;
	}
}

void finish_waiters(struct blob_waiter *list)
{
	while (list) {
		struct blob_waiter *next = list->next;
		list->next = list->prev = list;
		list->done(list, list->result);
		list = next;
	}
}

/* A read parked for another process (blob_want_locked): nobody to answer. */
static void proxy_done(struct blob_waiter *w, int err)
{
	(void)err;
	free(w);
}

void blob_expire_locked(struct blob *b, uint64_t now, struct blob_waiter **out)
{
	struct blob_waiter *w = b->waiters.next, *next;

	for (; w != &b->waiters; w = next) {
		next = w->next;
		if (w->deadline_ms > now)
			continue;
		waiter_unlink(w);
		/* Another process's read failing here says nothing of ours. */
		if (b->state == BLOB_PARTIAL && w->done != proxy_done)
			record_failure(b, w->off, w->off + w->len, -EIO);
		w->result = -EIO;
		w->next = *out;
		*out = w;
	}
}

/* ---- activation ---- */

static void set_chunk_present(struct blob *b, uint32_t i)
{
	b->cs[i] = CH_PRESENT;
	b->npresent++;
	b->present_bytes += chunkmap_end(b->map, i) - chunkmap_start(b->map, i);
}

/* Keep an old geometry until the blob goes: a request begun under it may hold it. */
static void retire_map(struct blob *b, struct chunkmap *m)
{
	b->retired = xrealloc(b->retired, (b->nretired + 1) * sizeof(*b->retired));
	b->retired[b->nretired++] = m;
}

/*
 * Make m (taken) the blob's geometry and its durable chunks; nothing may be
 * in flight. A map of the geometry the blob has is copied into the one it
 * has, which the network thread may read without a lock; another geometry
 * replaces it. With same_file, chunks present now stay present: they are in
 * the same file, where chunks only ever arrive.
 */
static void install_map_locked(struct blob *b, struct chunkmap *m, bool same_file)
{
	uint8_t *old = b->cs;

	if (b->map && chunkmap_same_geometry(b->map, m)) {
		memcpy(b->map->bits, m->bits, (m->n + 7) / 8);
		chunkmap_free(m);
		m = b->map;
	} else {
		if (b->map)
			retire_map(b, b->map);
		b->map = m;
		same_file = false;
		free(b->bad);
		b->bad = NULL;
	}
	b->cs = xcalloc(m->n + 1, 1);
	b->npresent = b->ninflight = b->nwritten = 0;
	b->present_bytes = 0;
	b->nmissing = m->n;
	b->missing_bytes = b->size;
	b->cursor = 0;
	for (uint32_t i = 0; i < m->n; i++) {
		if (chunkmap_has(m, i) || (same_file && old && old[i] == CH_PRESENT)) {
			set_chunk_present(b, i);
			b->nmissing--;
			b->missing_bytes -= chunkmap_end(m, i) - chunkmap_start(m, i);
		}
	}
	free(old);
	/* Parked reads know their chunks now, or know them anew. */
	for (struct blob_waiter *w = b->waiters.next; w != &b->waiters; w = w->next)
		waiter_chunks(b, w);
}

void blob_begin_partial_locked(struct blob *b, struct chunkmap *m, bool resumed,
			       bool same_file)
{
	bool other = b->state == BLOB_BUSY && !b->let_go;

	if (resumed)
		b->chunksums_decided = true;
	install_map_locked(b, m, same_file);
	if (b->let_go)
		log_debug("taking '%s' back: %u of %u chunks local", b->name, b->npresent,
			  b->map->n);
	else if (other)
		log_info("taking over the fetch of '%s': %u of %u chunks already local", b->name,
			 b->npresent, b->map->n);
	else if (b->npresent)
		log_info("resuming '%s': %u of %u chunks already local", b->name,
			 b->npresent, b->map->n);
	b->state = BLOB_PARTIAL;
	b->let_go = false;
	b->wants_pos = 0;    /* what others still wait for, told to the one before us */
}

void blob_view_locked(struct blob *b, struct chunkmap *m, bool same_file)
{
	install_map_locked(b, m, same_file);
}

static void park(struct blob *b, struct blob_waiter *w)
{
	w->prev = b->waiters.prev;
	w->next = &b->waiters;
	b->waiters.prev->next = w;
	b->waiters.prev = w;
}

bool blob_want_locked(struct blob *b, uint64_t off, uint64_t len)
{
	if (b->state != BLOB_PARTIAL || off >= b->size || len == 0)
		return false;
	struct blob_waiter *w = xcalloc(1, sizeof(*w));
	w->off = off;
	w->len = MIN(len, b->size - off);
	w->done = proxy_done;
	w->deadline_ms = now_ms() + b->cache->opts.read_timeout_ms;
	waiter_chunks(b, w);
	if (waiter_ready(b, w)) {
		free(w);
		return false;
	}
	park(b, w);
	return true;
}

size_t blob_untold_locked(struct blob *b, uint64_t (*out)[2], size_t max)
{
	size_t n = 0;

	for (struct blob_waiter *w = b->waiters.next; w != &b->waiters && n < max; w = w->next) {
		if (w->told)
			continue;
		w->told = true;
		out[n][0] = w->off;
		out[n][1] = w->len;
		n++;
	}
	return n;
}

bool blob_idle_locked(const struct blob *b)
{
	return b->state == BLOB_PARTIAL && b->waiters.next == &b->waiters && !b->want_all &&
	       !b->ninflight && !b->nwritten && !b->orphan && b->npresent < b->map->n &&
	       !window_has_missing(b, b->ra_start, b->ra_end);
}

void blob_mark_locked(struct blob *b, enum blob_state st)
{
	if (st == BLOB_BUSY && b->state == BLOB_PARTIAL)
		log_debug("letting go of '%s': nothing to fetch", b->name);
	b->let_go = st == BLOB_BUSY && (b->let_go || b->state == BLOB_PARTIAL);
	if (st == BLOB_COMPLETE)
		b->present_bytes = b->size;
	b->state = st;
}

/* ---- the reader side ---- */

static bool window_has_missing(const struct blob *b, uint64_t start, uint64_t end)
{
	if (!b->nmissing || start >= end)
		return false;
	for (uint32_t i = chunkmap_index(b->map, start);
	     i < b->map->n && chunkmap_start(b->map, i) < end; i++)
		if (b->cs[i] == CH_MISSING)
			return true;
	return false;
}

int blob_read_locked(struct blob *b, uint64_t off, uint64_t len, uint64_t ra,
		     struct blob_waiter *w, bool *kick)
{
	int ret;

	if (b->state == BLOB_COMPLETE)
		return 1;
	if (b->state == BLOB_FAILED)
		return b->err;
	w->off = off;
	w->len = len;
	w->deadline_ms = now_ms() + b->cache->opts.read_timeout_ms;
	if (b->state == BLOB_BUSY && b->map) {
		/* Another process fetches: read what it made durable, wait for the rest. */
		waiter_chunks(b, w);
		if (waiter_ready(b, w))
			return 1;
	} else if (b->state == BLOB_PARTIAL) {
		waiter_chunks(b, w);
		if (ra) {
			uint64_t ra_start = off + len, ra_end = MIN(b->size, ra_start + ra);
			if (ra_end > b->ra_end || ra_start < b->ra_start) {
				b->ra_start = ra_start;
				b->ra_end = ra_end;
				*kick = window_has_missing(b, ra_start, ra_end);
			}
		}
		if (waiter_ready(b, w))
			return 1;
		if ((ret = recent_failure(b, off, len)) < 0)
			return ret;
		*kick = true;
	} else {
		w->first = 0;
		w->last = UINT32_MAX;   /* recomputed when the blob becomes ours */
	}
	w->told = false;
	park(b, w);
	want_work(b);               /* the worker enforces the deadline */
	return 0;
}

bool blob_local_locked(struct blob *b, uint64_t off, uint64_t len)
{
	struct blob_waiter w = { .off = off, .len = len };

	if (b->state == BLOB_COMPLETE)
		return true;
	if (!has_chunks(b) || len == 0 || off >= b->size)
		return false;
	waiter_chunks(b, &w);
	return waiter_ready(b, &w);
}

bool blob_cancel(struct blob *b, struct blob_waiter *w)
{
	bool found = false;

	pthread_mutex_lock(&b->lock);
	for (struct blob_waiter *x = b->waiters.next; x != &b->waiters; x = x->next) {
		if (x == w) {
			waiter_unlink(w);
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&b->lock);
	return found;
}

bool blob_want_all_locked(struct blob *b, bool reset)
{
	b->want_all = true;
	if (reset)
		b->err = 0;
	return b->nmissing > 0;
}

void blob_orphan(struct blob *b)
{
	pthread_mutex_lock(&b->lock);
	b->orphan = true;
	b->want_all = false;
	b->ra_start = b->ra_end = 0;
	pthread_mutex_unlock(&b->lock);
}

void blob_unorphan(struct blob *b)
{
	pthread_mutex_lock(&b->lock);
	b->orphan = false;
	pthread_mutex_unlock(&b->lock);
}

bool blob_abandoned(struct blob *b)
{
	bool yes;

	pthread_mutex_lock(&b->lock);
	yes = b->orphan && b->waiters.next == &b->waiters;
	pthread_mutex_unlock(&b->lock);
	return yes;
}

void blob_stats(struct blob *b, struct blob_stats *st)
{
	pthread_mutex_lock(&b->lock);
	st->state = b->state;
	st->err = b->err;
	st->size = b->size;
	st->present = b->state == BLOB_COMPLETE ? b->size : b->present_bytes;
	st->fetched = b->fetched;
	st->inflight = b->ninflight;
	st->hashing = b->state == BLOB_PARTIAL && b->map && b->npresent == b->map->n;
	/* Not a blob we let go of and nobody here needs: that waits for no one. */
	st->waiting = b->state == BLOB_BUSY && (b->waiters.next != &b->waiters || b->want_all);
	pthread_mutex_unlock(&b->lock);
}

void blob_add_remote(struct blob *b, struct remote *r)
{
	pthread_mutex_lock(&b->lock);
	bool known = !r || b->nremotes == SOURCES_MAX;
	for (unsigned i = 0; i < b->nremotes && !known; i++)
		known = remote_same_source(b->remotes[i], r);
	if (!known)
		b->remotes[b->nremotes++] = remote_ref(r);
	pthread_mutex_unlock(&b->lock);
}

/* ---- the network thread's side ---- */

struct remote *blob_remote(struct blob *b, unsigned i)
{
	struct remote *r = NULL;

	pthread_mutex_lock(&b->lock);
	if (i < b->nremotes)
		r = remote_ref(b->remotes[i]);
	pthread_mutex_unlock(&b->lock);
	return r;
}

const struct chunkmap *blob_geometry(struct blob *b)
{
	return b->map;
}

bool blob_wants_chunksums(struct blob *b)
{
	bool want;

	pthread_mutex_lock(&b->lock);
	want = b->state == BLOB_PARTIAL && !b->chunksums_decided && b->npresent == 0 &&
	       b->ninflight == 0 && b->size >= CHUNKSUMS_MIN_SIZE;
	pthread_mutex_unlock(&b->lock);
	return want;
}

void blob_chunksums_done(struct blob *b)
{
	pthread_mutex_lock(&b->lock);
	b->chunksums_decided = true;
	pthread_mutex_unlock(&b->lock);
}

void blob_adopt_chunks(struct blob *b, struct chunkmap *m)
{
	pthread_mutex_lock(&b->lock);
	b->chunksums_decided = true;
	if (b->state != BLOB_PARTIAL || b->npresent || b->ninflight || m->size != b->size) {
		pthread_mutex_unlock(&b->lock);
		chunkmap_free(m);
		return;
	}
	chunkmap_free(b->map);
	b->map = m;
	free(b->cs);
	b->cs = xcalloc(m->n + 1, 1);
	b->nmissing = m->n;
	b->missing_bytes = b->size;
	b->cursor = 0;
	for (struct blob_waiter *w = b->waiters.next; w != &b->waiters; w = w->next)
		waiter_chunks(b, w);
	log_debug("'%s': using %u chunk checksums from the registry", b->name, m->n);
	pthread_mutex_unlock(&b->lock);
}

/* Mark [i, j) in flight and return the byte range. */
static void claim(struct blob *b, uint32_t i, uint32_t j, uint64_t *start, uint64_t *end)
{
	for (uint32_t k = i; k < j; k++)
		b->cs[k] = CH_INFLIGHT;
	b->nmissing -= j - i;
	b->ninflight += j - i;
	*start = chunkmap_start(b->map, i);
	*end = chunkmap_end(b->map, j - 1);
	b->missing_bytes -= *end - *start;
}

/* From missing chunk i, extend over missing chunks that start below limit. */
static uint32_t extend(const struct blob *b, uint32_t i, uint64_t limit, uint64_t max_bytes)
{
	uint64_t start = chunkmap_start(b->map, i);
	uint32_t j = i + 1;

	while (j < b->map->n && b->cs[j] == CH_MISSING && chunkmap_start(b->map, j) < limit &&
	       chunkmap_end(b->map, j) - start <= max_bytes && !failed_recently(b, j))
		j++;
	return j;
}

/* Readers first, oldest first; a read's request runs on into the read-ahead window. */
static bool claim_for_readers(struct blob *b, uint64_t max_bytes, uint64_t *start, uint64_t *end)
{
	for (struct blob_waiter *w = b->waiters.next; w != &b->waiters; w = w->next) {
		for (uint32_t i = w->first; i <= w->last; i++) {
			if (b->cs[i] != CH_MISSING)
				continue;
			uint64_t limit = chunkmap_end(b->map, w->last);
			if (b->ra_end > limit && b->ra_start <= limit)
				limit = b->ra_end;
			claim(b, i, extend(b, i, limit, max_bytes), start, end);
			return true;
		}
	}
	return false;
}

static bool claim_readahead(struct blob *b, uint64_t max_bytes, uint64_t *start, uint64_t *end)
{
	if (b->ra_end <= b->ra_start)
		return false;
	uint32_t i = chunkmap_index(b->map, b->ra_start);
	for (; i < b->map->n && chunkmap_start(b->map, i) < b->ra_end; i++) {
		if (b->cs[i] == CH_MISSING && !failed_recently(b, i)) {
			claim(b, i, extend(b, i, b->ra_end, max_bytes), start, end);
			return true;
		}
	}
	return false;
}

/*
 * Background requests take their share of what is missing, so that near
 * the end of a blob every connection gets a piece and they finish
 * together instead of one long request finishing alone.
 */
static bool claim_background(struct blob *b, uint64_t max_bytes, unsigned spread,
			     uint64_t *start, uint64_t *end)
{
	if (spread > 1)
		max_bytes = MIN(max_bytes, MAX(b->missing_bytes / spread, (uint64_t)SHARE_MIN));
	for (uint32_t k = 0; k < b->map->n; k++) {
		uint32_t i = (b->cursor + k) % b->map->n;
		if (b->cs[i] == CH_MISSING && !failed_recently(b, i)) {
			uint32_t j = extend(b, i, b->size, max_bytes);
			claim(b, i, j, start, end);
			b->cursor = j % b->map->n;
			return true;
		}
	}
	return false;
}

int blob_claim(struct blob *b, bool demand_only, uint64_t max_bytes, unsigned spread,
	       uint64_t *start, uint64_t *end)
{
	int prio = -1;

	pthread_mutex_lock(&b->lock);
	if (b->state != BLOB_PARTIAL || !b->nmissing)
		prio = -1;
	else if (claim_for_readers(b, max_bytes, start, end))
		prio = PRIO_DEMAND;
	else if (claim_readahead(b, max_bytes, start, end))
		prio = PRIO_READAHEAD;
	else if (!demand_only && b->want_all && claim_background(b, max_bytes, spread, start, end))
		prio = PRIO_BACKGROUND;
	pthread_mutex_unlock(&b->lock);
	return prio;
}

int blob_claim_from(struct blob *b, uint64_t from, uint64_t max_bytes,
		    uint64_t *start, uint64_t *end)
{
	int ret = -1;

	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_PARTIAL && b->nmissing && from < b->size) {
		uint32_t i = chunkmap_index(b->map, from);
		if (chunkmap_start(b->map, i) < from)
			i++;
		for (; i < b->map->n; i++) {
			if (b->cs[i] == CH_MISSING) {
				claim(b, i, extend(b, i, b->size, max_bytes), start, end);
				ret = 0;
				break;
			}
		}
	}
	pthread_mutex_unlock(&b->lock);
	return ret;
}

int blob_blocked_offsets(struct blob *b, uint64_t *offs, int max)
{
	int n = 0;

	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_PARTIAL) {
		for (struct blob_waiter *w = b->waiters.next; w != &b->waiters && n < max;
		     w = w->next) {
			if (w->first <= w->last && b->cs[w->first] == CH_INFLIGHT)
				offs[n++] = chunkmap_start(b->map, w->first);
		}
	}
	pthread_mutex_unlock(&b->lock);
	return n;
}

void blob_written(struct blob *b, uint64_t job_start, uint64_t from, uint64_t to)
{
	struct blob_waiter *ready = NULL;
	bool work = false, any = false;

	pthread_mutex_lock(&b->lock);
	b->fetched += to - from;
	if (b->state != BLOB_PARTIAL || from >= b->size) {
		pthread_mutex_unlock(&b->lock);
		return;
	}
	for (uint32_t i = chunkmap_index(b->map, from);
	     i < b->map->n && chunkmap_end(b->map, i) <= to; i++) {
		if (chunkmap_start(b->map, i) < job_start || b->cs[i] != CH_INFLIGHT)
			continue;
		b->ninflight--;
		if (b->map->sums) {
			b->cs[i] = CH_WRITTEN;
			b->nwritten++;
			work = true;
			continue;
		}
		set_chunk_present(b, i);
		any = true;
	}
	if (any) {
		/*
		 * The worker hashes and saves on its tick while the map is dirty;
		 * waking it for every chunk would cost more than the hashing.
		 */
		if (!b->map_dirty || b->npresent == b->map->n) {
			b->map_dirty = true;
			work = true;
		}
		collect_waiters(b, &ready, 0, 0, 0);
	}
	if (work)
		want_work(b);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(ready);
}

void blob_unclaim(struct blob *b, uint64_t from, uint64_t end, int err)
{
	struct blob_waiter *failed = NULL;
	uint32_t lo, hi;

	pthread_mutex_lock(&b->lock);
	if (b->state != BLOB_PARTIAL || from >= end || from >= b->size) {
		pthread_mutex_unlock(&b->lock);
		return;
	}
	lo = chunkmap_index(b->map, from);
	hi = lo;
	for (uint32_t i = lo; i < b->map->n && chunkmap_start(b->map, i) < end; i++) {
		hi = i;
		if (b->cs[i] != CH_INFLIGHT)
			continue;
		b->cs[i] = CH_MISSING;
		b->ninflight--;
		b->nmissing++;
		b->missing_bytes += chunkmap_end(b->map, i) - chunkmap_start(b->map, i);
	}
	if (lo < b->cursor)
		b->cursor = lo;
	if (err) {
		b->err = err;
		b->want_all = false;
		b->ra_start = b->ra_end = 0;
		collect_waiters(b, &failed, err, lo, hi);
		/*
		 * Remember the range, and each failed read's whole range: the kernel
		 * retries a failed read-ahead as a smaller read, which must fail at
		 * once rather than wait out its own read timeout on bytes the first
		 * read already waited for. A full disk may empty any moment.
		 */
		if (err != -ENOSPC && err != -EDQUOT && err != -EROFS) {
			record_failure(b, from, end, err);
			for (struct blob_waiter *w = failed; w; w = w->next)
				record_failure(b, w->off, w->off + w->len, err);
		}
	}
	pthread_mutex_unlock(&b->lock);
	finish_waiters(failed);
}

void blob_fail(struct blob *b, int err, const char *why)
{
	struct blob_waiter *failed = NULL;

	pthread_mutex_lock(&b->lock);
	if (b->err != err || b->want_all)
		log_error("fetching '%s' stopped: %s", b->name, why);
	b->err = err;
	b->want_all = false;
	b->ra_start = b->ra_end = 0;
	if (b->state == BLOB_PARTIAL)
		collect_waiters(b, &failed, err, 0, UINT32_MAX);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(failed);
}

bool blob_has_work(struct blob *b)
{
	bool work;

	pthread_mutex_lock(&b->lock);
	work = b->state == BLOB_PARTIAL && b->nmissing > 0 &&
	       (b->want_all || b->waiters.next != &b->waiters || b->ra_end > b->ra_start);
	pthread_mutex_unlock(&b->lock);
	return work;
}

/* ---- the worker's side ---- */

bool blob_next_written_locked(struct blob *b, uint32_t *i, uint64_t *off, uint64_t *len)
{
	for (; *i < b->map->n && b->nwritten; (*i)++) {
		if (b->cs[*i] != CH_WRITTEN)
			continue;
		*off = chunkmap_start(b->map, *i);
		*len = chunkmap_end(b->map, *i) - *off;
		return true;
	}
	return false;
}

/*
 * A chunk that fails its checksum as many times in a row as a range may be
 * attempted fails its readers with EIO.
 */
bool blob_chunk_checked_locked(struct blob *b, uint32_t i, const struct digest *got,
			       struct blob_waiter **ready)
{
	unsigned attempts = b->nremotes ? b->remotes[0]->o.retry.max_attempts : DEFAULT_RETRIES;
	uint64_t s = chunkmap_start(b->map, i), len = chunkmap_end(b->map, i) - s;

	if (!b->bad)
		b->bad = xcalloc(b->map->n + 1, 1);
	b->nwritten--;
	if (got && digest_equal(got, &b->map->sums[i])) {
		set_chunk_present(b, i);
		b->bad[i] = 0;
		b->map_dirty = true;
		return false;
	}
	b->cs[i] = CH_MISSING;
	b->nmissing++;
	b->missing_bytes += len;
	if (i < b->cursor)
		b->cursor = i;
	if (++b->bad[i] < attempts) {
		log_warn("'%s': chunk %u (bytes %llu-%llu) failed its checksum; fetching it again",
			 b->name, i, (unsigned long long)s, (unsigned long long)(s + len - 1));
		return true;
	}
	log_error("'%s': chunk %u (bytes %llu-%llu) failed its checksum %u times; giving up",
		  b->name, i, (unsigned long long)s, (unsigned long long)(s + len - 1),
		  attempts);
	b->bad[i] = 0;   /* a later read may try again */
	b->err = -EIO;
	b->want_all = false;
	record_failure(b, s, s + len, -EIO);
	collect_waiters(b, ready, -EIO, i, i);
	return false;
}

bool blob_unhashed_locked(const struct blob *b, uint64_t *upto)
{
	uint32_t i = b->hashed < b->size ? chunkmap_index(b->map, b->hashed) : b->map->n;

	*upto = b->hashed;
	while (i < b->map->n && b->cs[i] == CH_PRESENT)
		*upto = chunkmap_end(b->map, i++);
	return *upto > b->hashed;
}

void blob_map_bits_locked(struct blob *b)
{
	for (uint32_t i = 0; i < b->map->n; i++) {
		if (b->cs[i] == CH_PRESENT)
			chunkmap_set(b->map, i);
		else
			chunkmap_clear(b->map, i);
	}
	b->map_dirty = false;
}

void blob_finish_locked(struct blob *b, int err, struct blob_waiter **ready)
{
	if (err) {
		b->state = BLOB_FAILED;
		b->err = err;
	} else {
		b->state = BLOB_COMPLETE;
		log_debug("'%s' is complete and verified", b->name);
	}
	b->want_all = false;
	collect_waiters(b, ready, b->state == BLOB_FAILED ? b->err : 0, 0, UINT32_MAX);
}

bool blob_needs_worker_locked(const struct blob *b)
{
	bool waiting = b->waiters.next != &b->waiters;

	/*
	 * A partial blob is visited while ours, so that the worker lets it go
	 * when idle; but not an orphan, which goes with its last reference (the
	 * worker's list holds one).
	 */
	if (b->state == BLOB_BUSY)
		return waiting || b->want_all;
	return waiting || (b->state == BLOB_PARTIAL &&
			   (!b->orphan || b->map_dirty || b->nwritten));
}

/*
 * No read is parked now: a parked read holds a reference, and reads parked
 * for other processes keep the blob on the worker's list (with a reference)
 * until they are answered or expire, as all do in the worker's last pass.
 */
void blob_state_release(struct blob *b)
{
	for (unsigned i = 0; i < b->nretired; i++)
		chunkmap_free(b->retired[i]);
	free(b->retired);
	chunkmap_free(b->map);
	free(b->cs);
	free(b->bad);
	for (unsigned i = 0; i < b->nremotes; i++)
		remote_unref(b->remotes[i]);
}
