/*
 * test_ranges.c - the bounded range set (ranges.h): merging of overlapping
 * and adjacent ranges, a prefix that grows as out-of-order gaps fill, and
 * what is forgotten when the set is full.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "ranges.h"

static void assert_range(const struct ranges *s, unsigned i, uint64_t start, uint64_t end)
{
	assert_true(i < s->n);
	assert_int_equal(s->r[i].start, start);
	assert_int_equal(s->r[i].end, end);
}

static void test_empty_and_ignored(void **state)
{
	struct ranges s = {0};

	(void)state;
	assert_int_equal(ranges_prefix(&s), 0);
	ranges_add(&s, 5, 5);
	ranges_add(&s, 9, 3);
	assert_int_equal(s.n, 0);
	ranges_add(&s, 10, 20);
	assert_int_equal(s.n, 1);
	assert_int_equal(ranges_prefix(&s), 0);  /* does not start at 0 */
}

static void test_merges_overlap_and_adjacency(void **state)
{
	struct ranges s = {0};

	(void)state;
	ranges_add(&s, 10, 20);
	ranges_add(&s, 30, 40);
	ranges_add(&s, 50, 60);
	assert_int_equal(s.n, 3);
	ranges_add(&s, 20, 25);          /* adjacent to the first */
	assert_int_equal(s.n, 3);
	assert_range(&s, 0, 10, 25);
	ranges_add(&s, 24, 52);          /* spans the gap to the third */
	assert_int_equal(s.n, 1);
	assert_range(&s, 0, 10, 60);
	ranges_add(&s, 12, 14);          /* inside */
	assert_int_equal(s.n, 1);
	assert_range(&s, 0, 10, 60);
	ranges_add(&s, 0, 5);            /* before, apart */
	ranges_add(&s, 70, 80);          /* after, apart */
	assert_int_equal(s.n, 3);
	assert_range(&s, 0, 0, 5);
	assert_range(&s, 1, 10, 60);
	assert_range(&s, 2, 70, 80);
	assert_int_equal(ranges_prefix(&s), 5);
}

/* Read-ahead replies that complete out of order: the prefix waits for the gap. */
static void test_prefix_grows_when_gaps_fill(void **state)
{
	struct ranges s = {0};
	const uint64_t k = 131072;
	const unsigned order[] = {1, 3, 2, 0, 5, 4, 7, 6};

	(void)state;
	for (unsigned i = 0; i < 8; i++) {
		ranges_add(&s, order[i] * k, (order[i] + 1) * k);
		uint64_t want = i < 3 ? 0 : i < 5 ? 4 * k : i < 7 ? 6 * k : 8 * k;
		assert_int_equal(ranges_prefix(&s), want);
	}
	assert_int_equal(s.n, 1);
}

/* Full: the highest range is forgotten, never one below a new range. */
static void test_full_forgets_the_highest(void **state)
{
	struct ranges s = {0};

	(void)state;
	for (uint64_t i = 1; i <= RANGES_MAX; i++)
		ranges_add(&s, i * 10, i * 10 + 5);
	assert_int_equal(s.n, RANGES_MAX);
	ranges_add(&s, 100000, 100005);  /* would be the highest: not kept */
	assert_int_equal(s.n, RANGES_MAX);
	assert_range(&s, RANGES_MAX - 1, RANGES_MAX * 10, RANGES_MAX * 10 + 5);
	ranges_add(&s, 0, 3);            /* the lowest: the highest goes */
	assert_int_equal(s.n, RANGES_MAX);
	assert_range(&s, 0, 0, 3);
	assert_range(&s, RANGES_MAX - 1, (RANGES_MAX - 1) * 10, (RANGES_MAX - 1) * 10 + 5);
	ranges_add(&s, 3, 10);           /* joins two: room again */
	assert_int_equal(s.n, RANGES_MAX - 1);
	assert_int_equal(ranges_prefix(&s), 15);
	for (unsigned i = 1; i < s.n; i++)
		assert_true(s.r[i - 1].end < s.r[i].start);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_and_ignored),
		cmocka_unit_test(test_merges_overlap_and_adjacency),
		cmocka_unit_test(test_prefix_grows_when_gaps_fill),
		cmocka_unit_test(test_full_forgets_the_highest),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
