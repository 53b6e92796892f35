/*
 * test_util.c - the small helpers blobfs builds on: strmap.h (a string map)
 * and util.h (sizes and durations parsed and formatted, mkdir -p, whole-file
 * and atomic writes, full preads and pwrites), some in a temporary directory.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "strmap.h"
#include "util.h"
#include "testutil.h"

/* ---- fixture: a temporary directory ---- */

struct fx {
	char *dir;
};

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	f->dir = tu_mkdtemp();
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	int ret = tu_rm_rf(f->dir);

	free(f->dir);
	free(f);
	return ret;
}

/* ---- strmap ---- */

static void test_strmap_many_keys(void **state)
{
	struct strmap *m = strmap_new();
	char key[32];
	uint64_t v;

	assert_int_equal(strmap_count(m), 0);
	assert_false(strmap_get(m, "absent", &v));
	for (unsigned i = 0; i < 10000; i++) {
		snprintf(key, sizeof(key), "key-%u", i);
		strmap_put(m, key, (uint64_t)i * 3 + 1);
	}
	assert_int_equal(strmap_count(m), 10000);
	for (unsigned i = 0; i < 10000; i++) {
		snprintf(key, sizeof(key), "key-%u", i);
		v = 0;
		if (!strmap_get(m, key, &v))
			fail_msg("'%s' missing", key);
		assert_int_equal(v, (uint64_t)i * 3 + 1);
	}
	assert_false(strmap_get(m, "key-10000", &v));
	assert_false(strmap_get(m, "key-", &v));
	assert_false(strmap_get(m, "", &v));
	/* Overwrite keeps the count. */
	strmap_put(m, "key-42", 7);
	assert_int_equal(strmap_count(m), 10000);
	assert_true(strmap_get(m, "key-42", &v));
	assert_int_equal(v, 7);
	assert_true(strmap_get(m, "key-43", NULL));
	strmap_put(m, "", 99);
	assert_true(strmap_get(m, "", &v));
	assert_int_equal(v, 99);
	assert_int_equal(strmap_count(m), 10001);
	strmap_free(m);
	strmap_free(NULL);
}

static void test_strmap_copies_keys(void **state)
{
	struct strmap *m = strmap_new();
	char key[8] = "abc";
	uint64_t v;

	strmap_put(m, key, 1);
	strcpy(key, "xyz");
	assert_true(strmap_get(m, "abc", &v));
	assert_int_equal(v, 1);
	assert_false(strmap_get(m, "xyz", &v));
	strmap_free(m);
}

/* ---- util ---- */

static void test_parse_size(void **state)
{
	static const struct { const char *s; uint64_t v; } ok[] = {
		{ "16M", 16ull << 20 }, { "1GiB", 1ull << 30 }, { "4096", 4096 },
		{ "1.5K", 1536 }, { "2.5G", 5ull << 29 }, { "1k", 1024 }, { "1KB", 1024 },
		{ "1kib", 1024 }, { "1MiB", 1ull << 20 }, { "0", 0 }, { "1T", 1ull << 40 },
		{ ".5K", 512 }, { "64m", 64ull << 20 },
	};
	static const char *const bad[] = {
		"", "-1", "abc", "1X", "nan", "inf", "NaN", "-inf", "1 M", " 1", "1KBx", "1iB",
		"1MM", "16777216T", "1e30", "K", "1.5.K",
	};
	uint64_t v;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		v = 12345;
		if (parse_size(ok[i].s, &v) != 0)
			fail_msg("'%s' refused", ok[i].s);
		assert_int_equal(v, ok[i].v);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 12345;
		if (parse_size(bad[i], &v) != -EINVAL)
			fail_msg("'%s' accepted as %llu", bad[i], (unsigned long long)v);
		assert_int_equal(v, 12345);
	}
	assert_int_equal(parse_size(NULL, &v), -EINVAL);
}

static void test_format_size(void **state)
{
	static const struct { uint64_t b; const char *s; } cases[] = {
		{ 0, "0 B" }, { 999, "999 B" }, { 1000, "1.00 KB" }, { 1500, "1.50 KB" },
		{ 12345678, "12.3 MB" }, { 123456789, "123 MB" }, { 4661211424ull, "4.66 GB" },
		{ 1000000000000ull, "1.00 TB" }, { 1000000000000000ull, "1.00 PB" },
	};
	char buf[32];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		format_size(cases[i].b, buf, sizeof(buf));
		assert_string_equal(buf, cases[i].s);
	}
	format_size(4661211424ull, buf, 4);
	assert_string_equal(buf, "4.6");
}

static void test_format_size_never_shows_1000_of_a_unit(void **state)
{
	/* util.h: "123.4 MB" with SI units; 999999 bytes is not "1000 KB". */
	static const uint64_t sizes[] = { 999499, 999500, 999999, 999999999, 999999999999ull };
	char buf[32], wrong[256] = "";

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		format_size(sizes[i], buf, sizeof(buf));
		if (strtod(buf, NULL) >= 1000)
			snprintf(wrong + strlen(wrong), sizeof(wrong) - strlen(wrong), " %llu->'%s'",
				 (unsigned long long)sizes[i], buf);
	}
	if (wrong[0])
		fail_msg("shown as 1000 of a unit:%s", wrong);
}

static void test_format_duration(void **state)
{
	static const struct { uint64_t s; const char *out; } cases[] = {
		{ 0, "0s" }, { 59, "59s" }, { 60, "1m00s" }, { 245, "4m05s" }, { 3599, "59m59s" },
		{ 3600, "1h00m" }, { 3720, "1h02m" }, { 90061, "25h01m" },
	};
	char buf[32];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		format_duration(cases[i].s, buf, sizeof(buf));
		assert_string_equal(buf, cases[i].out);
	}
}

static void test_parse_u64(void **state)
{
	uint64_t v = 0;

	assert_true(parse_u64("0", 1, &v));
	assert_int_equal(v, 0);
	assert_true(parse_u64("18446744073709551615", 20, &v));
	assert_int_equal(v, UINT64_MAX);
	assert_true(parse_u64("12345", 2, &v));
	assert_int_equal(v, 12);
	assert_true(parse_u64("007", 3, &v));
	assert_int_equal(v, 7);
	v = 5;
	assert_false(parse_u64("18446744073709551616", 20, &v));
	assert_false(parse_u64("99999999999999999999", 20, &v));
	assert_false(parse_u64("184467440737095516150", 21, &v));
	assert_false(parse_u64("", 0, &v));
	assert_false(parse_u64("12a", 3, &v));
	assert_false(parse_u64("+1", 2, &v));
	assert_false(parse_u64("-1", 2, &v));
	assert_false(parse_u64(" 1", 2, &v));
	assert_false(parse_u64("1 ", 2, &v));
	assert_int_equal(v, 5);
}

static void test_mkdir_p(void **state)
{
	struct fx *f = *state;
	char *deep = tu_path(f->dir, "a/b/c"), *file = tu_path(f->dir, "file");
	char *under = tu_path(file, "x/y"), *slash = tu_path(f->dir, "s/t/");
	mode_t old = umask(022);

	assert_int_equal(mkdir_p(deep, 0750), 0);
	assert_true(tu_is_dir(deep));
	assert_int_equal(tu_mode_of(deep), 0750);
	assert_int_equal(mkdir_p(deep, 0750), 0);           /* exists: fine */
	assert_int_equal(mkdir_p(f->dir, 0755), 0);
	tu_write_str(file, "x");
	assert_int_equal(mkdir_p(file, 0755), -ENOTDIR);
	assert_int_equal(mkdir_p(under, 0755), -ENOTDIR);
	assert_int_equal(mkdir_p(slash, 0755), 0);
	assert_true(tu_is_dir(slash));
	umask(old);
	free(deep);
	free(file);
	free(under);
	free(slash);
}

/*
 * An empty path is an error, not a walk past the end of the buffer. In a
 * plain build this only fails by luck; valgrind and ASan catch the overrun.
 */
static void test_mkdir_p_empty_path(void **state)
{
	assert_int_equal(mkdir_p("", 0755), -ENOENT);
}

static void test_write_file_atomic_and_read_file(void **state)
{
	struct fx *f = *state;
	char *tmp = tu_path(f->dir, "tmp"), *path = tu_path(f->dir, "out");
	char *link = tu_path(f->dir, "link"), *fifo = tu_path(f->dir, "fifo");
	char *buf;
	size_t len;
	int dirfd = open(f->dir, O_RDONLY | O_DIRECTORY), tmpfd;

	assert_int_equal(mkdir(tmp, 0700), 0);
	tmpfd = open(tmp, O_RDONLY | O_DIRECTORY);
	assert_true(dirfd >= 0 && tmpfd >= 0);
	assert_int_equal(write_file_atomic_at(tmpfd, dirfd, "out", "hello", 5, 0640), 0);
	assert_int_equal(tu_mode_of(path), 0640);
	assert_int_equal(tu_count_entries(tmp), 0);
	assert_int_equal(read_file_at(dirfd, "out", 100, &buf, &len), 0);
	assert_int_equal(len, 5);
	assert_string_equal(buf, "hello");
	free(buf);
	/* Replace. */
	assert_int_equal(write_file_atomic_at(tmpfd, dirfd, "out", "bye", 3, 0600), 0);
	assert_int_equal(tu_mode_of(path), 0600);
	assert_int_equal(read_file(path, 100, &buf, &len), 0);
	assert_int_equal(len, 3);
	assert_string_equal(buf, "bye");
	free(buf);
	/* Failures leave nothing behind and the old file intact. */
	assert_int_equal(write_file_atomic_at(tmpfd, dirfd, "nodir/out", "x", 1, 0600), -ENOENT);
	assert_int_equal(tu_count_entries(tmp), 0);
	assert_int_equal(write_file_atomic_at(-1, dirfd, "out", "x", 1, 0600), -EBADF);
	assert_int_equal(read_file_at(dirfd, "out", 100, &buf, &len), 0);
	assert_string_equal(buf, "bye");
	free(buf);
	/* Empty contents. */
	assert_int_equal(write_file_atomic_at(tmpfd, dirfd, "out", "", 0, 0600), 0);
	assert_int_equal(read_file_at(dirfd, "out", 0, &buf, &len), 0);
	assert_int_equal(len, 0);
	assert_string_equal(buf, "");
	free(buf);
	/* Never through a link, never anything but a regular file, never hanging on a FIFO. */
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(read_file_at(dirfd, "link", 100, &buf, &len), -ELOOP);
	assert_int_equal(open_regular_at(dirfd, "link", O_RDWR | O_CREAT, 0600), -ELOOP);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_int_equal(read_file_at(dirfd, "fifo", 100, &buf, &len), -EFTYPE);
	assert_int_equal(read_file_at(dirfd, "tmp", 100, &buf, &len), -EFTYPE);
	assert_int_equal(open_dir_at(dirfd, "link", false, 0), -ELOOP);
	assert_int_equal(open_dir_at(dirfd, "out", false, 0), -ENOTDIR);
	assert_int_equal(unlink(link), 0);
	assert_int_equal(symlink(tmp, link), 0);
	assert_int_equal(open_dir_at(dirfd, "link", false, 0), -ELOOP);
	assert_int_equal(open_dir_at(dirfd, "link", true, 0700), -ELOOP);
	assert_string_equal(file_strerror(-ELOOP), "it is a symbolic link");
	assert_string_equal(file_strerror(EFTYPE), "it is not a regular file");
	close(dirfd);
	close(tmpfd);
	free(tmp);
	free(path);
	free(link);
	free(fifo);
}

static void test_read_file_max(void **state)
{
	struct fx *f = *state;
	char *path = tu_path(f->dir, "f");
	char *buf = (char *)(uintptr_t)1;
	size_t len;

	tu_put_pattern(path, 10);
	assert_int_equal(read_file(path, 10, &buf, &len), 0);
	assert_int_equal(len, 10);
	assert_int_equal(buf[10], '\0');
	free(buf);
	assert_int_equal(read_file(path, 9, &buf, &len), -EFBIG);
	assert_int_equal(read_file(path, 0, &buf, &len), -EFBIG);
	tu_put_pattern(path, 4096);
	assert_int_equal(read_file(path, 4096, &buf, &len), 0);
	assert_int_equal(len, 4096);
	free(buf);
	assert_int_equal(read_file(path, 4095, &buf, &len), -EFBIG);
	tu_put_pattern(path, 4097);
	assert_int_equal(read_file(path, 4096, &buf, &len), -EFBIG);
	tu_put_pattern(path, 100000);
	assert_int_equal(read_file(path, 1u << 20, &buf, &len), 0);
	assert_int_equal(len, 100000);
	assert_int_equal((uint8_t)buf[99999], tu_pattern(99999));
	assert_int_equal(buf[100000], '\0');
	free(buf);
	assert_int_equal(read_file(path, 99999, &buf, &len), -EFBIG);
	free(path);
	path = tu_path(f->dir, "absent");
	assert_int_equal(read_file(path, 100, &buf, &len), -ENOENT);
	assert_int_equal(read_file(f->dir, 100, &buf, &len), -EISDIR);
	free(path);
}

static void test_pread_pwrite_all(void **state)
{
	struct fx *f = *state;
	char *path = tu_path(f->dir, "rw"), buf[8];
	int fd = open(path, O_RDWR | O_CREAT, 0600);

	assert_true(fd >= 0);
	assert_int_equal(pwrite_all(fd, "abcdef", 6, 10), 0);
	assert_int_equal(pread_all(fd, buf, 6, 10), 0);
	assert_memory_equal(buf, "abcdef", 6);
	assert_int_equal(pread_all(fd, buf, 2, 0), 0);
	assert_int_equal(buf[0], '\0');                    /* the hole reads as zeros */
	assert_int_equal(pread_all(fd, buf, 7, 10), -EIO);  /* short file */
	close(fd);
	assert_int_equal(pread_all(fd, buf, 1, 0), -EBADF);
	free(path);
}

#define D(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_strmap_many_keys),
		cmocka_unit_test(test_strmap_copies_keys),
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_format_size),
		cmocka_unit_test(test_format_size_never_shows_1000_of_a_unit),
		cmocka_unit_test(test_format_duration),
		cmocka_unit_test(test_parse_u64),
		D(test_mkdir_p),
		D(test_write_file_atomic_and_read_file),
		D(test_read_file_max),
		D(test_pread_pwrite_all),
		/* Last: under ASan this one aborts the program (see the report). */
		cmocka_unit_test(test_mkdir_p_empty_path),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
