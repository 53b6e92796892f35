/*
 * test_blob.c - the blob state machine (blob_state.c) on its own: no worker
 * thread, no network thread, no files. A blob is made PARTIAL with a chunk
 * map of eight 1000-byte chunks, then driven the way the FUSE threads, the
 * network thread and the worker drive it: parked reads and their answers
 * (ready, deadline, cancel), claims (single flight, who goes first, the
 * read-ahead window, background shares), and failures (unclaim with an
 * error, the memory of recent failures, chunk checksums), and a blob that
 * another process fetches: reads of what its map says is durable, taking
 * it over, and when a blob of ours is idle enough to let go.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "blob.h"
#include "blob_int.h"
#include "chunkmap.h"
#include "digest.h"
#include "store.h"
#include "testutil.h"

#define CH 1000u            /* chunk size */
#define NCH 8u              /* chunks per blob */
#define SIZE (CH * NCH)
#define ALL UINT64_MAX      /* max_bytes: no limit */

/* ---- fixture ---- */

struct fx {
	char *dir;
	struct store *s;
	struct blobcache *c;
	unsigned kicks;          /* want_fetch calls */
	struct blob *kicked;     /* the blob of the last one */
	uint8_t next_digest;
};

static void on_want_fetch(void *arg, struct blob *b)
{
	struct fx *f = arg;

	f->kicks++;
	f->kicked = b;
}

static struct fx *fx_new(uint64_t read_timeout_ms)
{
	struct fx *f = calloc(1, sizeof(*f));
	char *root;
	struct blob_opts o = { .want_fetch = on_want_fetch, .read_timeout_ms = read_timeout_ms };

	f->dir = tu_mkdtemp();
	root = tu_path(f->dir, "store");
	assert_int_equal(store_open(root, true, &f->s), 0);
	free(root);
	o.fetch_arg = f;
	f->c = blobcache_create(f->s, &o);
	return f;
}

static int fx_setup(void **state)
{
	*state = fx_new(60000);
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;

	blobcache_free(f->c);
	store_close(f->s);
	assert_int_equal(tu_rm_rf(f->dir), 0);
	free(f->dir);
	free(f);
	return 0;
}

/* A blob that is ours to fetch, with geometry m (NULL: NCH chunks of CH bytes). */
static struct blob *partial_blob(struct fx *f, struct chunkmap *m)
{
	struct digest d;
	struct blob *b;

	if (!m)
		m = chunkmap_new_fixed(SIZE, CH);
	memset(&d, ++f->next_digest, sizeof(d));
	b = blob_get(f->c, &d, m->size);
	assert_non_null(b);
	assert_int_equal(b->state, BLOB_IDLE);
	pthread_mutex_lock(&b->lock);
	blob_begin_partial_locked(b, m, false, false);
	pthread_mutex_unlock(&b->lock);
	assert_int_equal(b->state, BLOB_PARTIAL);
	return b;
}

/* A parked read that records how it was answered. */
struct rd {
	struct blob_waiter w;
	int calls;
	int err;
};

static void rd_done(struct blob_waiter *w, int err)
{
	struct rd *r = (struct rd *)w;

	r->calls++;
	r->err = err;
}

static int rd_start(struct blob *b, struct rd *r, uint64_t off, uint64_t len, uint64_t ra)
{
	memset(r, 0, sizeof(*r));
	r->w.done = rd_done;
	return blob_read(b, off, len, ra, &r->w);
}

/* Claim with no limits but the chunk-count one: max chunks. */
static int claim_n(struct blob *b, bool demand_only, unsigned chunks,
		   uint64_t *start, uint64_t *end)
{
	return blob_claim(b, demand_only, (uint64_t)chunks * CH, 1, start, end);
}

/* The network thread wrote and reported [from, to) of a request that began at from. */
static void write_range(struct blob *b, uint64_t from, uint64_t to)
{
	blob_written(b, from, from, to);
}

static void expire(struct blob *b, uint64_t now)
{
	struct blob_waiter *out = NULL;

	pthread_mutex_lock(&b->lock);
	blob_expire_locked(b, now, &out);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(out);
}

/* ---- waiters ---- */

static void test_read_of_missing_bytes_parks_and_asks_for_them(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, 2 * CH + 10, 100, 0), 0);
	assert_int_equal(f->kicks, 1);
	assert_ptr_equal(f->kicked, b);
	assert_int_equal(r.calls, 0);
	assert_true(blob_has_work(b));
	/* The network thread is given exactly the chunk the read needs. */
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_DEMAND);
	assert_int_equal(s, 2 * CH);
	assert_int_equal(e, 3 * CH);
	assert_int_equal(claim_n(b, false, NCH, &s, &e), -1);
	write_range(b, 2 * CH, 3 * CH);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, 0);
	/* Now the bytes are there: a read returns at once, without a kick. */
	assert_int_equal(rd_start(b, &r, 2 * CH, CH, 0), 1);
	assert_int_equal(f->kicks, 1);
	blob_put(b);
}

static void test_a_read_waits_for_every_chunk_it_spans(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, CH - 1, CH + 2, 0), 0);   /* chunks 0, 1 and 2 */
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_DEMAND);
	assert_int_equal(s, 0);
	assert_int_equal(e, 3 * CH);
	write_range(b, 0, 2 * CH + CH / 2);     /* chunk 2 only half here */
	assert_int_equal(r.calls, 0);
	blob_written(b, 0, 2 * CH + CH / 2, 3 * CH);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, 0);
	blob_put(b);
}

static void test_only_chunks_written_whole_by_one_request_count(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, CH, 10, 0), 0);
	assert_int_equal(blob_claim_from(b, 0, 2 * CH, &s, &e), 0);
	assert_int_equal(e, 2 * CH);
	/* A request that began inside chunk 1 did not write all of it. */
	blob_written(b, CH + CH / 2, CH + CH / 2, 2 * CH);
	assert_int_equal(r.calls, 0);
	/* One that began at chunk 0 did. */
	blob_written(b, 0, 0, 2 * CH);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, 0);
	blob_put(b);
}

static void test_the_last_chunk_waits_for_the_whole_blob_when_fetched_whole(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct blob_waiter *out = NULL;
	struct rd last, mid;
	uint64_t s, e;

	assert_int_equal(blob_fetch_all(b, false), 0);
	assert_int_equal(rd_start(b, &last, SIZE - 10, 10, 0), 0);
	assert_int_equal(rd_start(b, &mid, 3 * CH, 10, 0), 0);
	while (claim_n(b, false, NCH, &s, &e) >= 0)
		write_range(b, s, e);
	/* Every chunk is here, but the last is handed out only once the blob is verified. */
	assert_int_equal(mid.calls, 1);
	assert_int_equal(last.calls, 0);
	pthread_mutex_lock(&b->lock);
	blob_finish_locked(b, 0, &out);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(out);
	assert_int_equal(last.calls, 1);
	assert_int_equal(last.err, 0);
	assert_int_equal(b->state, BLOB_COMPLETE);
	blob_put(b);
}

static void test_a_lazy_reader_gets_the_last_chunk_at_once(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, SIZE - 10, 10, 0), 0);
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_DEMAND);
	assert_int_equal(s, (NCH - 1) * CH);
	write_range(b, s, e);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, 0);
	blob_put(b);
}

static void test_cancelled_read_is_never_answered(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r, other;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, 0, 10, 0), 0);
	assert_int_equal(rd_start(b, &other, 0, 20, 0), 0);
	assert_true(blob_cancel(b, &r.w));
	assert_false(blob_cancel(b, &r.w));
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_DEMAND);
	write_range(b, s, e);
	assert_int_equal(r.calls, 0);
	assert_int_equal(other.calls, 1);
	assert_false(blob_cancel(b, &other.w));   /* answered reads are off the list */
	blob_put(b);
}

static void test_a_read_past_its_deadline_fails_and_is_remembered(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r, again, elsewhere;

	assert_int_equal(rd_start(b, &r, 4 * CH, 10, 0), 0);
	expire(b, r.w.deadline_ms - 1);
	assert_int_equal(r.calls, 0);
	expire(b, r.w.deadline_ms);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, -EIO);
	/* The kernel reads a failed page again at once: that read fails at once too. */
	assert_int_equal(rd_start(b, &again, 4 * CH, 10, 0), -EIO);
	assert_int_equal(again.calls, 0);
	/* Other bytes are not affected. */
	assert_int_equal(rd_start(b, &elsewhere, 5 * CH, 10, 0), 0);
	assert_int_equal(elsewhere.calls, 0);
	expire(b, UINT64_MAX);
	assert_int_equal(elsewhere.calls, 1);
	blob_put(b);
}

/* ---- claims ---- */

static void test_a_chunk_is_claimed_once(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	uint64_t s, e;

	assert_int_equal(blob_fetch_all(b, false), 0);
	assert_int_equal(f->kicks, 1);
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 0);
	assert_int_equal(e, SIZE);
	assert_int_equal(claim_n(b, false, NCH, &s, &e), -1);
	assert_int_equal(blob_claim_from(b, 0, ALL, &s, &e), -1);
	/* A request that ends early gives its tail back, and only that is claimable. */
	write_range(b, 0, 3 * CH);
	blob_unclaim(b, 3 * CH, SIZE, 0);
	assert_int_equal(claim_n(b, false, 2, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 3 * CH);
	assert_int_equal(e, 5 * CH);
	assert_int_equal(blob_claim_from(b, 0, ALL, &s, &e), 0);
	assert_int_equal(s, 5 * CH);
	assert_int_equal(e, SIZE);
	assert_int_equal(claim_n(b, false, NCH, &s, &e), -1);
	assert_false(blob_has_work(b));
	blob_put(b);
}

static void test_readers_then_readahead_then_background(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e;

	assert_int_equal(blob_fetch_all(b, false), 0);
	/* A read of chunk 5 that expects to go on through chunk 6. */
	assert_int_equal(rd_start(b, &r, 5 * CH, CH, CH), 0);
	/* The read's request runs on into the read-ahead window. */
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_DEMAND);
	assert_int_equal(s, 5 * CH);
	assert_int_equal(e, 7 * CH);
	/* With readers served, only background work is left: not for demand-only slots. */
	assert_int_equal(claim_n(b, true, NCH, &s, &e), -1);
	assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 0);
	assert_int_equal(e, CH);
	blob_put(b);
}

static void test_readahead_alone_is_claimed_as_readahead(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e;

	/* Chunk 0 is here; a read of it asks for read-ahead over chunks 1 and 2. */
	assert_int_equal(blob_claim_from(b, 0, CH, &s, &e), 0);
	write_range(b, s, e);
	f->kicks = 0;
	assert_int_equal(rd_start(b, &r, 0, CH, 2 * CH), 1);
	assert_int_equal(f->kicks, 1);
	assert_int_equal(claim_n(b, true, NCH, &s, &e), PRIO_READAHEAD);
	assert_int_equal(s, CH);
	assert_int_equal(e, 3 * CH);
	/* No want_all: nothing else is fetched. */
	assert_int_equal(claim_n(b, false, NCH, &s, &e), -1);
	blob_put(b);
}

static void test_background_requests_share_what_is_missing(void **state)
{
	struct fx *f = *state;
	const uint64_t mib = 1u << 20;
	struct blob *b = partial_blob(f, chunkmap_new_fixed(8 * mib, mib));
	uint64_t s, e;

	assert_int_equal(blob_fetch_all(b, false), 0);
	/* Four connections: a request takes a quarter of what is missing... */
	assert_int_equal(blob_claim(b, false, ALL, 4, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 0);
	assert_int_equal(e, 2 * mib);
	/* ...so requests shrink toward the end, down to whole chunks. */
	assert_int_equal(blob_claim(b, false, ALL, 4, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 2 * mib);
	assert_int_equal(e, 3 * mib);
	/* One connection: the rest in one go. */
	assert_int_equal(blob_claim(b, false, ALL, 1, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 3 * mib);
	assert_int_equal(e, 8 * mib);
	blob_put(b);
}

static void test_small_blobs_are_not_shared_out(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	uint64_t s, e;

	assert_int_equal(blob_fetch_all(b, false), 0);
	/* A share is never below SHARE_MIN (1 MiB): this blob goes in one request. */
	assert_int_equal(blob_claim(b, false, ALL, 4, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 0);
	assert_int_equal(e, SIZE);
	blob_put(b);
}

static void test_blocked_offsets_name_chunks_in_flight(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e, offs[4];

	assert_int_equal(blob_fetch_all(b, false), 0);
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(blob_blocked_offsets(b, offs, 4), 0);
	assert_int_equal(rd_start(b, &r, 6 * CH + 5, 10, 0), 0);
	assert_int_equal(blob_blocked_offsets(b, offs, 4), 1);
	assert_int_equal(offs[0], 6 * CH);
	blob_put(b);
}

/* ---- failures ---- */

static void test_a_failed_range_fails_only_its_readers(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd one, six, again;
	uint64_t s, e, s6, e6;

	assert_int_equal(blob_fetch_all(b, false), 0);
	assert_int_equal(rd_start(b, &one, CH, 10, 0), 0);
	assert_int_equal(rd_start(b, &six, 6 * CH, 10, 0), 0);
	assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
	assert_int_equal(claim_n(b, false, 1, &s6, &e6), PRIO_DEMAND);
	assert_int_equal(s, CH);
	assert_int_equal(s6, 6 * CH);
	blob_unclaim(b, s, e, -EIO);
	assert_int_equal(one.calls, 1);
	assert_int_equal(one.err, -EIO);
	assert_int_equal(six.calls, 0);
	/* Background fetching stops; the failed bytes fail at once for a while. */
	assert_false(b->want_all);
	assert_int_equal(rd_start(b, &again, CH + 500, 10, 0), -EIO);
	/* Nobody waits for it now; its chunk is missing again, for a later read. */
	assert_int_equal(claim_n(b, false, NCH, &s, &e), -1);
	assert_int_equal(blob_claim_from(b, CH, CH, &s, &e), 0);
	assert_int_equal(s, CH);
	assert_int_equal(e, 2 * CH);
	blob_put(b);
}

static void test_a_full_disk_is_not_remembered(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r, again;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, 0, 10, 0), 0);
	assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
	blob_unclaim(b, s, e, -ENOSPC);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, -ENOSPC);
	/* Space may come back any moment: the next read waits for the bytes. */
	assert_int_equal(rd_start(b, &again, 0, 10, 0), 0);
	assert_int_equal(again.calls, 0);
	expire(b, UINT64_MAX);
	blob_put(b);
}

static void test_failure_memory_fades(void **state)
{
	struct fx *f = fx_new(30);   /* reads time out after 30 ms: so does the memory */
	struct blob *b = partial_blob(f, NULL);
	struct rd r, soon, later;
	uint64_t s, e;

	(void)state;
	assert_int_equal(rd_start(b, &r, 0, 10, 0), 0);
	assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
	blob_unclaim(b, s, e, -EIO);
	assert_int_equal(r.err, -EIO);
	assert_int_equal(rd_start(b, &soon, 0, 10, 0), -EIO);
	usleep(60 * 1000);
	assert_int_equal(rd_start(b, &later, 0, 10, 0), 0);
	expire(b, UINT64_MAX);
	blob_put(b);
	void *st = f;
	fx_teardown(&st);
}

static void test_blob_fail_fails_every_reader(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd a, z;

	assert_int_equal(blob_fetch_all(b, false), 0);
	assert_int_equal(rd_start(b, &a, 0, 10, 0), 0);
	assert_int_equal(rd_start(b, &z, SIZE - 10, 10, 0), 0);
	blob_fail(b, -ENOSPC, "disk full");
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.err, -ENOSPC);
	assert_int_equal(z.calls, 1);
	assert_int_equal(z.err, -ENOSPC);
	assert_false(blob_has_work(b));
	blob_put(b);
}

static void test_a_failed_blob_fails_reads(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct blob_waiter *out = NULL;
	struct rd r, after;

	assert_int_equal(rd_start(b, &r, 0, 10, 0), 0);
	pthread_mutex_lock(&b->lock);
	blob_finish_locked(b, -EIO, &out);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(out);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, -EIO);
	assert_int_equal(rd_start(b, &after, 0, 10, 0), -EIO);
	blob_put(b);
}

/* ---- chunk checksums ---- */

static struct chunkmap *summed_map(void)
{
	uint64_t bounds[NCH + 1];
	struct digest sums[NCH];

	for (unsigned i = 0; i <= NCH; i++)
		bounds[i] = (uint64_t)i * CH;
	for (unsigned i = 0; i < NCH; i++)
		memset(&sums[i], 0xa0 + i, sizeof(sums[i]));
	return chunkmap_new_table(SIZE, NCH, bounds, sums);
}

/* The worker checked chunk i: its bytes hashed to got (NULL: unreadable). */
static bool check_chunk(struct blob *b, uint32_t i, const struct digest *got)
{
	struct blob_waiter *out = NULL;
	uint32_t at = 0;
	uint64_t off, len;
	bool refetch;

	pthread_mutex_lock(&b->lock);
	assert_true(blob_next_written_locked(b, &at, &off, &len));
	assert_int_equal(at, i);
	assert_int_equal(off, (uint64_t)i * CH);
	assert_int_equal(len, CH);
	refetch = blob_chunk_checked_locked(b, i, got, &out);
	collect_waiters(b, &out, 0, 0, 0);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(out);
	return refetch;
}

static void test_a_chunk_is_handed_out_after_its_checksum(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, summed_map());
	struct rd r;
	struct digest good;
	uint64_t s, e;

	memset(&good, 0xa0 + 3, sizeof(good));
	assert_int_equal(rd_start(b, &r, 3 * CH, 10, 0), 0);
	assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
	write_range(b, s, e);
	assert_int_equal(r.calls, 0);            /* written, not yet checked */
	assert_false(check_chunk(b, 3, &good));
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, 0);
	blob_put(b);
}

static void test_a_bad_chunk_is_fetched_again_then_fails(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, summed_map());
	struct rd r;
	struct digest bad;
	uint64_t s, e;

	memset(&bad, 0x55, sizeof(bad));
	assert_int_equal(rd_start(b, &r, 3 * CH, 10, 0), 0);
	/* Without a remote a chunk gets six attempts, like a range. */
	for (int attempt = 1; attempt <= 6; attempt++) {
		assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
		assert_int_equal(s, 3 * CH);
		write_range(b, s, e);
		bool refetch = check_chunk(b, 3, attempt == 3 ? NULL : &bad);
		assert_int_equal(refetch, attempt < 6);
		assert_int_equal(r.calls, attempt < 6 ? 0 : 1);
	}
	assert_int_equal(r.err, -EIO);
	assert_int_equal(claim_n(b, false, 1, &s, &e), -1);   /* nobody waits for it now */
	blob_put(b);
}

/*
 * A chunk that failed its checksum for good is not fetched again by the
 * read-ahead that covered it (found by test_faults.py's corrupt chunk under
 * load: a give-up was followed at once by a new round of attempts).
 */
static void test_a_chunk_given_up_is_not_fetched_again_by_readahead(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, summed_map());
	struct rd r;
	struct digest bad;
	uint64_t s, e;
	int prio;

	memset(&bad, 0x55, sizeof(bad));
	assert_int_equal(rd_start(b, &r, 3 * CH, 10, 2 * CH), 0);   /* read-ahead: chunks 3-5 */
	for (int attempt = 1; attempt <= 6; attempt++) {
		assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
		assert_int_equal(s, 3 * CH);
		write_range(b, s, e);
		check_chunk(b, 3, &bad);
	}
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, -EIO);
	while ((prio = claim_n(b, false, 1, &s, &e)) >= 0) {
		if (s == 3 * CH)
			fail_msg("chunk 3 was claimed again (priority %d) right after it was given up", prio);
		assert_int_equal(prio, PRIO_READAHEAD);
	}
	blob_put(b);
}

static void test_chunk_checksums_are_adopted_only_before_any_fetch(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct blob *c = partial_blob(f, NULL);
	uint64_t s, e;

	blob_adopt_chunks(b, summed_map());
	assert_non_null(b->map->sums);
	assert_int_equal(blob_claim_from(c, 0, CH, &s, &e), 0);
	blob_adopt_chunks(c, summed_map());       /* a chunk is in flight: too late */
	assert_null(c->map->sums);
	blob_put(b);
	blob_put(c);
}

/* ---- another process holds the blob ---- */

/* A map of NCH chunks of CH bytes with chunks [lo, hi) durable. */
static struct chunkmap *durable(uint32_t lo, uint32_t hi)
{
	struct chunkmap *m = chunkmap_new_fixed(SIZE, CH);

	for (uint32_t i = lo; i < hi; i++)
		chunkmap_set(m, i);
	return m;
}

/* A blob another process fetches, seen through its map: chunks [lo, hi) durable. */
static struct blob *busy_blob(struct fx *f, uint32_t lo, uint32_t hi)
{
	struct digest d;
	struct blob *b;

	memset(&d, ++f->next_digest, sizeof(d));
	b = blob_get(f->c, &d, SIZE);
	pthread_mutex_lock(&b->lock);
	blob_mark_locked(b, BLOB_BUSY);
	blob_view_locked(b, durable(lo, hi), false);
	pthread_mutex_unlock(&b->lock);
	return b;
}

static void test_a_busy_blob_reads_what_the_holder_made_durable(void **state)
{
	struct fx *f = *state;
	struct blob *b = busy_blob(f, 0, 3);
	struct rd r;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, 100, 2 * CH, 0), 1);
	assert_int_equal(rd_start(b, &r, 2 * CH + 10, CH, 0), 0);   /* spans missing chunk 3 */
	assert_int_equal(f->kicks, 0);          /* not ours to fetch */
	assert_int_equal(claim_n(b, false, NCH, &s, &e), -1);
	/* The holder saved a map with chunk 3: the parked read is answered. */
	struct blob_waiter *ready = NULL;
	pthread_mutex_lock(&b->lock);
	blob_view_locked(b, durable(3, 4), true);
	collect_waiters(b, &ready, 0, 0, 0);
	pthread_mutex_unlock(&b->lock);
	finish_waiters(ready);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.err, 0);
	struct blob_stats st;
	blob_stats(b, &st);
	assert_int_equal(st.present, 4 * CH);   /* the same file: chunks only arrive */
	blob_put(b);
}

static void test_a_view_of_another_file_forgets_the_old_chunks(void **state)
{
	struct fx *f = *state;
	struct blob *b = busy_blob(f, 0, 4);
	struct rd r;

	struct rd r2;

	pthread_mutex_lock(&b->lock);
	blob_view_locked(b, durable(6, 7), false);
	pthread_mutex_unlock(&b->lock);
	assert_int_equal(rd_start(b, &r, 0, 10, 0), 0);
	assert_int_equal(rd_start(b, &r2, 6 * CH, 10, 0), 1);
	assert_true(blob_cancel(b, &r.w));
	blob_put(b);
}

static void test_taking_over_keeps_the_chunks_of_the_same_file(void **state)
{
	struct fx *f = *state;
	struct blob *b = busy_blob(f, 0, 2);
	struct rd r;
	uint64_t s, e;

	assert_int_equal(rd_start(b, &r, 5 * CH, 10, 0), 0);
	pthread_mutex_lock(&b->lock);
	blob_begin_partial_locked(b, durable(2, 3), true, true);
	pthread_mutex_unlock(&b->lock);
	assert_int_equal(b->state, BLOB_PARTIAL);
	/* The parked read is claimed first; chunks 0-2 are not fetched again. */
	assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
	assert_int_equal(s, 5 * CH);
	pthread_mutex_lock(&b->lock);
	assert_true(blob_want_all_locked(b, false));
	pthread_mutex_unlock(&b->lock);
	assert_int_equal(claim_n(b, false, NCH, &s, &e), PRIO_BACKGROUND);
	assert_int_equal(s, 3 * CH);
	write_range(b, 5 * CH, 6 * CH);
	assert_int_equal(r.calls, 1);
	blob_put(b);
}

static void test_a_partial_blob_is_idle_only_with_nothing_to_fetch(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	struct rd r;
	uint64_t s, e;

	pthread_mutex_lock(&b->lock);
	assert_true(blob_idle_locked(b));
	pthread_mutex_unlock(&b->lock);
	assert_int_equal(rd_start(b, &r, 0, 10, CH), 0);   /* a reader, and read-ahead */
	pthread_mutex_lock(&b->lock);
	assert_false(blob_idle_locked(b));
	pthread_mutex_unlock(&b->lock);
	assert_int_equal(claim_n(b, false, 2, &s, &e), PRIO_DEMAND);
	write_range(b, s, CH);
	pthread_mutex_lock(&b->lock);
	assert_false(blob_idle_locked(b));      /* chunk 1 in flight */
	pthread_mutex_unlock(&b->lock);
	write_range(b, CH, e);
	pthread_mutex_lock(&b->lock);
	assert_true(blob_idle_locked(b));
	b->want_all = true;
	assert_false(blob_idle_locked(b));
	pthread_mutex_unlock(&b->lock);
	blob_put(b);
}

static void test_a_busy_blob_tells_the_holder_each_read_once(void **state)
{
	struct fx *f = *state;
	struct blob *b = busy_blob(f, 0, 2);
	struct rd r1, r2, r3;
	uint64_t told[4][2];

	assert_int_equal(rd_start(b, &r1, 3 * CH, 10, 0), 0);
	assert_int_equal(rd_start(b, &r2, 5 * CH, 2 * CH, 0), 0);
	assert_int_equal(rd_start(b, &r3, 0, 10, 0), 1);        /* durable: nothing to tell */
	pthread_mutex_lock(&b->lock);
	assert_int_equal(blob_untold_locked(b, told, 4), 2);
	assert_int_equal(told[0][0], 3 * CH);
	assert_int_equal(told[1][0], 5 * CH);
	assert_int_equal(told[1][1], 2 * CH);
	assert_int_equal(blob_untold_locked(b, told, 4), 0);
	pthread_mutex_unlock(&b->lock);
	assert_true(blob_cancel(b, &r1.w));
	assert_true(blob_cancel(b, &r2.w));
	blob_put(b);
}

static void test_the_holder_fetches_what_another_process_waits_for(void **state)
{
	struct fx *f = *state;
	struct blob *b = partial_blob(f, NULL);
	uint64_t s, e;

	pthread_mutex_lock(&b->lock);
	assert_true(blob_want_locked(b, 6 * CH + 5, 10));
	assert_false(blob_want_locked(b, SIZE, 10));          /* past the end */
	assert_false(blob_idle_locked(b));                    /* someone waits */
	pthread_mutex_unlock(&b->lock);
	/* It goes first, as a read of ours would. */
	assert_int_equal(claim_n(b, false, 1, &s, &e), PRIO_DEMAND);
	assert_int_equal(s, 6 * CH);
	write_range(b, s, e);
	pthread_mutex_lock(&b->lock);
	assert_false(blob_want_locked(b, 6 * CH, CH));        /* present already */
	assert_true(blob_idle_locked(b));                     /* answered, and gone */
	pthread_mutex_unlock(&b->lock);
	blob_put(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, fx_setup, fx_teardown)
		T(test_read_of_missing_bytes_parks_and_asks_for_them),
		T(test_a_read_waits_for_every_chunk_it_spans),
		T(test_only_chunks_written_whole_by_one_request_count),
		T(test_the_last_chunk_waits_for_the_whole_blob_when_fetched_whole),
		T(test_a_lazy_reader_gets_the_last_chunk_at_once),
		T(test_cancelled_read_is_never_answered),
		T(test_a_read_past_its_deadline_fails_and_is_remembered),
		T(test_a_chunk_is_claimed_once),
		T(test_readers_then_readahead_then_background),
		T(test_readahead_alone_is_claimed_as_readahead),
		T(test_background_requests_share_what_is_missing),
		T(test_small_blobs_are_not_shared_out),
		T(test_blocked_offsets_name_chunks_in_flight),
		T(test_a_failed_range_fails_only_its_readers),
		T(test_a_full_disk_is_not_remembered),
		cmocka_unit_test(test_failure_memory_fades),
		T(test_blob_fail_fails_every_reader),
		T(test_a_failed_blob_fails_reads),
		T(test_a_chunk_is_handed_out_after_its_checksum),
		T(test_a_bad_chunk_is_fetched_again_then_fails),
		T(test_a_chunk_given_up_is_not_fetched_again_by_readahead),
		T(test_chunk_checksums_are_adopted_only_before_any_fetch),
		T(test_a_busy_blob_reads_what_the_holder_made_durable),
		T(test_a_view_of_another_file_forgets_the_old_chunks),
		T(test_taking_over_keeps_the_chunks_of_the_same_file),
		T(test_a_partial_blob_is_idle_only_with_nothing_to_fetch),
		T(test_a_busy_blob_tells_the_holder_each_read_once),
		T(test_the_holder_fetches_what_another_process_waits_for),
#undef T
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
