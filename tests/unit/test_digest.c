/*
 * test_digest.c - sha256 digests (digest.h): parsing "sha256:<hex>" and blob
 * file names, formatting, hashing buffers, file descriptors and incremental
 * input against known vectors, and the sorted digest set.
 */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "digest.h"
#include "testutil.h"

#define ABC_HEX "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define EMPTY_HEX "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* sha256("a" x 1000000), the FIPS 180-2 long-message vector */
#define MILLION_A_HEX "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"

static int parse_str(const char *s, struct digest *d)
{
	return digest_parse(s, strlen(s), d);
}

static void assert_hex(const struct digest *d, const char *hex)
{
	char buf[DIGEST_HEX_LEN + 1];

	digest_hex(d, buf);
	assert_string_equal(buf, hex);
}

/* ---- parsing and formatting ---- */

static void test_parse_valid(void **state)
{
	struct digest d;

	assert_int_equal(parse_str("sha256:" ABC_HEX, &d), 0);
	assert_int_equal(d.bytes[0], 0xba);
	assert_int_equal(d.bytes[1], 0x78);
	assert_int_equal(d.bytes[31], 0xad);
	assert_hex(&d, ABC_HEX);
}

static void test_parse_uses_len_not_nul(void **state)
{
	const char *s = "sha256:" ABC_HEX "trailing junk";
	struct digest d;

	assert_int_equal(digest_parse(s, 7 + DIGEST_HEX_LEN, &d), 0);
	assert_hex(&d, ABC_HEX);
	assert_int_equal(digest_parse(s, strlen(s), &d), -EINVAL);
	assert_int_equal(digest_parse(s, 7 + DIGEST_HEX_LEN - 1, &d), -EINVAL);
}

static void test_parse_refusals(void **state)
{
	static const char *const bad[] = {
		"",
		"sha256:",
		"sha256",
		"sha25",
		ABC_HEX,                                   /* no prefix */
		"sha256-" ABC_HEX,                         /* file-name form */
		"SHA256:" ABC_HEX,
		"sha512:" ABC_HEX,
		"md5:" ABC_HEX,
		"sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
		"sha256:Ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",   /* 63 */
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0", /* 65 */
		"sha256:ga7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"sha256: a7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a ",
	};
	struct digest d;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (parse_str(bad[i], &d) != -EINVAL)
			fail_msg("digest_parse accepted '%s'", bad[i]);
}

static void test_format_hex_filename(void **state)
{
	struct digest d;
	char buf[DIGEST_STR_LEN];

	assert_int_equal(parse_str("sha256:" ABC_HEX, &d), 0);
	digest_format(&d, buf);
	assert_string_equal(buf, "sha256:" ABC_HEX);
	digest_filename(&d, buf);
	assert_string_equal(buf, "sha256-" ABC_HEX);
	assert_int_equal(strlen(buf), DIGEST_STR_LEN - 1);
}

static void test_parse_filename(void **state)
{
	struct digest d, e;

	assert_int_equal(digest_parse_filename("sha256-" ABC_HEX, &d), 0);
	assert_int_equal(parse_str("sha256:" ABC_HEX, &e), 0);
	assert_true(digest_equal(&d, &e));
	assert_int_equal(digest_parse_filename("sha256:" ABC_HEX, &d), -EINVAL);
	assert_int_equal(digest_parse_filename(ABC_HEX, &d), -EINVAL);
	assert_int_equal(digest_parse_filename("sha256-" ABC_HEX ".map", &d), -EINVAL);
	assert_int_equal(digest_parse_filename("sha256-" ABC_HEX "-partial", &d), -EINVAL);
	assert_int_equal(digest_parse_filename(
		"sha256-BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", &d), -EINVAL);
	assert_int_equal(digest_parse_filename(
		"sha256-ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a", &d), -EINVAL);
	assert_int_equal(digest_parse_filename("", &d), -EINVAL);
	assert_int_equal(digest_parse_filename("sha256-", &d), -EINVAL);
}

static void test_filename_round_trip(void **state)
{
	struct digest d, e;
	char buf[DIGEST_STR_LEN];

	for (int i = 0; i < DIGEST_LEN; i++)
		d.bytes[i] = (uint8_t)(i * 37 + 11);
	digest_filename(&d, buf);
	assert_int_equal(digest_parse_filename(buf, &e), 0);
	assert_true(digest_equal(&d, &e));
	digest_format(&d, buf);
	assert_int_equal(parse_str(buf, &e), 0);
	assert_true(digest_equal(&d, &e));
}

static void test_equal(void **state)
{
	struct digest a, b;

	digest_of("abc", 3, &a);
	digest_of("abc", 3, &b);
	assert_true(digest_equal(&a, &b));
	b.bytes[31] ^= 1;
	assert_false(digest_equal(&a, &b));
	b.bytes[31] ^= 1;
	b.bytes[0] ^= 0x80;
	assert_false(digest_equal(&a, &b));
}

/* ---- hashing ---- */

static void test_digest_of_known_vectors(void **state)
{
	struct digest d;
	char *a = malloc(1000000);

	digest_of("abc", 3, &d);
	assert_hex(&d, ABC_HEX);
	digest_of("", 0, &d);
	assert_hex(&d, EMPTY_HEX);
	assert_non_null(a);
	memset(a, 'a', 1000000);
	digest_of(a, 1000000, &d);
	assert_hex(&d, MILLION_A_HEX);
	free(a);
}

static void test_hasher_incremental_equals_one_shot(void **state)
{
	size_t len = 3 * 1000 * 1000 + 17;
	uint8_t *buf = malloc(len);
	struct hasher *h = hasher_new();
	struct digest one, inc;
	size_t off = 0, step = 1;

	assert_non_null(buf);
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(i * 2654435761u >> 13);
	digest_of(buf, len, &one);
	while (off < len) {
		size_t n = step < len - off ? step : len - off;
		hasher_update(h, buf + off, n);
		off += n;
		step = step * 3 + 1; /* odd piece sizes */
	}
	hasher_final(h, &inc);
	assert_true(digest_equal(&one, &inc));

	/* After a reset the hasher starts from scratch. */
	hasher_reset(h);
	hasher_update(h, "a", 1);
	hasher_update(h, "", 0);
	hasher_update(h, "bc", 2);
	hasher_final(h, &inc);
	assert_hex(&inc, ABC_HEX);
	hasher_free(h);
	hasher_free(NULL);
	free(buf);
}

struct progress_log {
	uint64_t last;
	unsigned calls;
	bool monotonic;
};

static void progress_cb(void *arg, uint64_t done)
{
	struct progress_log *p = arg;

	if (done <= p->last)
		p->monotonic = false;
	p->last = done;
	p->calls++;
}

static void test_digest_fd_matches_digest_of(void **state)
{
	char *dir = tu_mkdtemp(), *path = tu_path(dir, "blob");
	size_t len = (3u << 20) + 12345; /* more than the 1 MiB read buffer */
	uint8_t *buf = malloc(len);
	struct digest want, got;
	struct progress_log pl = { 0, 0, true };
	int fd;

	assert_non_null(buf);
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(i * 7 + (i >> 9));
	tu_write(path, buf, len);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);

	digest_of(buf, len, &want);
	assert_int_equal(digest_fd(fd, 0, len, &got, progress_cb, &pl), 0);
	assert_true(digest_equal(&want, &got));
	assert_int_equal(pl.last, len);
	assert_true(pl.calls >= 4);
	assert_true(pl.monotonic);

	/* A range in the middle. */
	digest_of(buf + 1000, 2000000, &want);
	assert_int_equal(digest_fd(fd, 1000, 2000000, &got, NULL, NULL), 0);
	assert_true(digest_equal(&want, &got));

	/* Zero bytes is the empty digest. */
	assert_int_equal(digest_fd(fd, 5, 0, &got, NULL, NULL), 0);
	assert_hex(&got, EMPTY_HEX);

	/* Past the end of the file: an error, not a digest of fewer bytes. */
	assert_int_equal(digest_fd(fd, 0, len + 1, &got, NULL, NULL), -EIO);
	assert_int_equal(digest_fd(fd, len, 1, &got, NULL, NULL), -EIO);
	close(fd);

	assert_int_equal(digest_fd(fd, 0, 10, &got, NULL, NULL), -EBADF);

	free(buf);
	free(path);
	assert_int_equal(tu_rm_rf(dir), 0);
	free(dir);
}

/* ---- digest sets ---- */

static struct digest dnum(unsigned i)
{
	struct digest d;

	memset(&d, 0, sizeof(d));
	d.bytes[0] = (uint8_t)(i >> 8);
	d.bytes[31] = (uint8_t)i;
	d.bytes[15] = 0x5a;
	return d;
}

static void test_set_add_seal_has(void **state)
{
	struct digest_set s = { 0 };
	struct digest d;

	/* 1000 distinct digests, each added three times, in scrambled order. */
	for (int round = 0; round < 3; round++)
		for (unsigned i = 0; i < 1000; i++) {
			d = dnum((i * 617 + round * 31) % 1000);
			digest_set_add(&s, &d);
		}
	assert_int_equal(s.n, 3000);
	digest_set_seal(&s);
	assert_true(s.sealed);
	assert_int_equal(s.n, 1000);
	for (unsigned i = 0; i < 1000; i++) {
		d = dnum(i);
		assert_true(digest_set_has(&s, &d));
	}
	for (unsigned i = 1000; i < 1100; i++) {
		d = dnum(i);
		assert_false(digest_set_has(&s, &d));
	}
	/* Sorted and without repeats. */
	for (size_t i = 1; i < s.n; i++)
		assert_true(memcmp(s.v[i - 1].bytes, s.v[i].bytes, DIGEST_LEN) < 0);

	/* Adding unseals; sealing again includes the new digest. */
	d = dnum(5000);
	digest_set_add(&s, &d);
	assert_false(s.sealed);
	digest_set_seal(&s);
	assert_int_equal(s.n, 1001);
	assert_true(digest_set_has(&s, &d));

	digest_set_release(&s);
	assert_null(s.v);
	assert_int_equal(s.n, 0);
}

static void test_set_empty(void **state)
{
	struct digest_set s = { 0 };
	struct digest d = dnum(1);

	digest_set_seal(&s);
	assert_int_equal(s.n, 0);
	assert_false(digest_set_has(&s, &d));
	digest_set_release(&s);
}

static void test_set_single_repeated(void **state)
{
	struct digest_set s = { 0 };
	struct digest d = dnum(7), e = dnum(8);

	for (int i = 0; i < 100; i++)
		digest_set_add(&s, &d);
	digest_set_seal(&s);
	assert_int_equal(s.n, 1);
	assert_true(digest_set_has(&s, &d));
	assert_false(digest_set_has(&s, &e));
	digest_set_release(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_valid),
		cmocka_unit_test(test_parse_uses_len_not_nul),
		cmocka_unit_test(test_parse_refusals),
		cmocka_unit_test(test_format_hex_filename),
		cmocka_unit_test(test_parse_filename),
		cmocka_unit_test(test_filename_round_trip),
		cmocka_unit_test(test_equal),
		cmocka_unit_test(test_digest_of_known_vectors),
		cmocka_unit_test(test_hasher_incremental_equals_one_shot),
		cmocka_unit_test(test_digest_fd_matches_digest_of),
		cmocka_unit_test(test_set_add_seal_has),
		cmocka_unit_test(test_set_empty),
		cmocka_unit_test(test_set_single_repeated),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
