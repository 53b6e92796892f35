/*
 * test_http.c - HTTP helpers (http.h): Content-Range and Retry-After parsing,
 * status → errno and retryability, the jittered exponential backoff, header
 * line matching; and URL helpers (url.h): resolving redirects, redacting,
 * adding query parameters, authorities, loopback detection, same-origin.
 */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "http.h"
#include "url.h"
#include "testutil.h"

/* ---- Content-Range ---- */

static int cr(const char *v, uint64_t *first, uint64_t *last, uint64_t *total)
{
	return http_parse_content_range(v, strlen(v), first, last, total);
}

static void cr_ok(const char *v, uint64_t f, uint64_t l, uint64_t t)
{
	uint64_t first = 7, last = 7, total = 7;
	int ret = cr(v, &first, &last, &total);

	if (ret != 0)
		fail_msg("'%s' refused (%d)", v, ret);
	assert_int_equal(first, f);
	assert_int_equal(last, l);
	assert_int_equal(total, t);
}

static void cr_bad(const char *v)
{
	uint64_t first, last, total;

	if (cr(v, &first, &last, &total) != -EINVAL)
		fail_msg("'%s' accepted", v);
}

static void test_content_range_valid(void **state)
{
	cr_ok("bytes 0-99/100", 0, 99, 100);
	cr_ok("bytes 5-5/*", 5, 5, HTTP_TOTAL_UNKNOWN);
	cr_ok("bytes 1048576-2097151/4661211424", 1048576, 2097151, 4661211424ull);
	cr_ok("Bytes 0-0/1", 0, 0, 1);
	cr_ok("bytes  0-99/100", 0, 99, 100);
	cr_ok("bytes\t0-99/100", 0, 99, 100);
	cr_ok("bytes 0-99/100  ", 0, 99, 100);
	cr_ok("bytes 0-99/100\t", 0, 99, 100);
	cr_ok("bytes 0-18446744073709551613/18446744073709551614", 0, 18446744073709551613ull,
	      18446744073709551614ull);
}

static void test_content_range_uses_len(void **state)
{
	const char *v = "bytes 0-99/1000";
	uint64_t first, last, total;

	assert_int_equal(http_parse_content_range(v, strlen(v) - 1, &first, &last, &total), 0);
	assert_int_equal(total, 100);
}

static void test_content_range_refusals(void **state)
{
	cr_bad("bytes 10-5/100");          /* last < first */
	cr_bad("bytes 10-5/*");
	cr_bad("bytes 0-100/100");         /* last beyond total */
	cr_bad("bytes 0-99/0");
	cr_bad("items 0-1/2");
	cr_bad("bytes=0-1/2");
	cr_bad("bytes0-1/2");
	cr_bad("bytes");
	cr_bad("bytes ");
	cr_bad("");
	cr_bad("bytes 0-99");
	cr_bad("bytes 0-99/");
	cr_bad("bytes -99/100");
	cr_bad("bytes 0-/100");
	cr_bad("bytes 0/100");
	cr_bad("bytes */100");             /* an unsatisfied-range answer */
	cr_bad("bytes 0-99/100x");
	cr_bad("bytes 0-99/*x");
	cr_bad("bytes 0-99/**");
	cr_bad("bytes 0 -99/100");
	cr_bad("bytes +0-99/100");
	cr_bad("bytes 0-99/100\r\n");     /* header_value trims CRLF, not this */
	cr_bad("bytes 0-18446744073709551616/*");      /* overflow */
	cr_bad("bytes 99999999999999999999-1/*");
	cr_bad("bytes 0-1/99999999999999999999999");
}

/* ---- Retry-After ---- */

/* Wed, 21 Oct 2015 07:28:00 GMT */
#define NOW ((time_t)1445412480)

static void test_retry_after_seconds(void **state)
{
	uint64_t ms = 1;

	assert_int_equal(http_parse_retry_after("120", NOW, &ms), 0);
	assert_int_equal(ms, 120000);
	assert_int_equal(http_parse_retry_after("0", NOW, &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(http_parse_retry_after("  7 \r\n", NOW, &ms), 0);
	assert_int_equal(ms, 7000);
	/* Too large to multiply: saturates rather than wrapping. */
	assert_int_equal(http_parse_retry_after("18446744073709551615", NOW, &ms), 0);
	assert_int_equal(ms, UINT64_MAX);
}

static void test_retry_after_date(void **state)
{
	uint64_t ms = 1;

	assert_int_equal(http_parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", NOW, &ms), 0);
	assert_int_equal(ms, 30000);
	assert_int_equal(http_parse_retry_after("Wed, 21 Oct 2015 08:28:00 GMT\r\n", NOW, &ms), 0);
	assert_int_equal(ms, 3600000);
	/* Now and in the past: retry at once. */
	ms = 1;
	assert_int_equal(http_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW, &ms), 0);
	assert_int_equal(ms, 0);
	ms = 1;
	assert_int_equal(http_parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", NOW, &ms), 0);
	assert_int_equal(ms, 0);
}

static void test_retry_after_far_future_saturates(void **state)
{
	uint64_t ms = 1;

	/* (date - now) * 1000 does not fit in 64 bits: the longest delay, not a wrap. */
	assert_int_equal(http_parse_retry_after("01 Jan 584556075 00:00:00 GMT", NOW, &ms), 0);
	assert_int_equal(ms, UINT64_MAX);
	ms = 1;
	assert_int_equal(http_parse_retry_after("3 Nov 936337936", NOW, &ms), 0);
	assert_int_equal(ms, UINT64_MAX);
	/* The largest dates that still fit are exact. */
	assert_int_equal(http_parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW, &ms), 0);
	assert_int_equal(ms, (253402300799ull - (uint64_t)NOW) * 1000);
}

static void test_retry_after_junk(void **state)
{
	static const char *const bad[] = { "soon", "", "   ", "-1", "1.5", "12abc", "a", "Mon" };
	uint64_t ms = 12345;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (http_parse_retry_after(bad[i], NOW, &ms) != -EINVAL)
			fail_msg("'%s' accepted", bad[i]);
		assert_int_equal(ms, 12345);
	}
}

/* ---- statuses ---- */

static void test_status_errno(void **state)
{
	assert_int_equal(http_status_errno(404), ENOENT);
	assert_int_equal(http_status_errno(410), ENOENT);
	assert_int_equal(http_status_errno(401), EACCES);
	assert_int_equal(http_status_errno(403), EACCES);
	assert_int_equal(http_status_errno(416), ERANGE);
	assert_int_equal(http_status_errno(408), ETIMEDOUT);
	assert_int_equal(http_status_errno(504), ETIMEDOUT);
	assert_int_equal(http_status_errno(500), EIO);
	assert_int_equal(http_status_errno(502), EIO);
	assert_int_equal(http_status_errno(503), EIO);
	assert_int_equal(http_status_errno(400), EIO);
	assert_int_equal(http_status_errno(0), EIO);
}

static void test_status_retryable(void **state)
{
	static const long yes[] = { 408, 429, 500, 502, 503, 504, 599 };
	static const long no[] = { 0, 200, 206, 301, 307, 400, 401, 403, 404, 410, 416, 499, 600 };

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!http_status_retryable(yes[i]))
			fail_msg("%ld not retryable", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (http_status_retryable(no[i]))
			fail_msg("%ld retryable", no[i]);
}

/* ---- backoff ---- */

static const uint32_t rnds[] = { 0, 1, 2, 77, 12345, 0x7fffffff, 0x80000000u, 0xffffffffu };

static void test_retry_delay_grows_and_caps(void **state)
{
	const struct retry_policy p = { .max_attempts = 10, .base_ms = 250, .max_ms = 8000,
					.retry_after_max_ms = 60000 };
	const uint64_t want[] = { 250, 500, 1000, 2000, 4000, 8000, 8000, 8000 };

	for (unsigned a = 1; a <= 8; a++) {
		uint64_t d = want[a - 1];
		/* rnd 0 gives the fixed half exactly. */
		assert_int_equal(retry_delay_ms(&p, a, 0), d / 2);
		for (size_t i = 0; i < sizeof(rnds) / sizeof(rnds[0]); i++) {
			uint64_t v = retry_delay_ms(&p, a, rnds[i]);
			if (v < d / 2 || v > d)
				fail_msg("attempt %u rnd %u: %llu not in [%llu, %llu]", a, rnds[i],
					 (unsigned long long)v, (unsigned long long)(d / 2),
					 (unsigned long long)d);
		}
		/* The top of the range is reachable. */
		assert_int_equal(retry_delay_ms(&p, a, (uint32_t)(d / 2)), d);
	}
	/* Every remainder of rnd, not just a few samples, stays in [d/2, d]. */
	for (uint32_t r = 0; r < 20000; r++) {
		uint64_t v = retry_delay_ms(&p, 7, r);
		if (v < 4000 || v > 8000)
			fail_msg("rnd %u: %llu not in [4000, 8000]", r, (unsigned long long)v);
	}
	assert_int_equal(retry_delay_ms(&p, 1000, 0), 4000);
	assert_int_equal(retry_delay_ms(&p, 4000000000u, 0), 4000);
}

static void test_retry_delay_cap_not_a_power_of_two(void **state)
{
	const struct retry_policy p = { .base_ms = 300, .max_ms = 1000 };

	assert_int_equal(retry_delay_ms(&p, 1, 0), 150);
	assert_int_equal(retry_delay_ms(&p, 2, 0), 300);
	assert_int_equal(retry_delay_ms(&p, 3, 0), 500);
	assert_int_equal(retry_delay_ms(&p, 9, 0), 500);
	for (size_t i = 0; i < sizeof(rnds) / sizeof(rnds[0]); i++) {
		uint64_t v = retry_delay_ms(&p, 5, rnds[i]);
		assert_true(v >= 500 && v <= 1000);
	}
}

static void test_retry_delay_jitter_spreads(void **state)
{
	const struct retry_policy p = { .base_ms = 1000, .max_ms = 1000 };
	uint64_t lo = UINT64_MAX, hi = 0;

	for (uint32_t r = 0; r < 2000; r++) {
		uint64_t v = retry_delay_ms(&p, 1, r * 2654435761u);
		lo = v < lo ? v : lo;
		hi = v > hi ? v : hi;
	}
	assert_true(lo < 550);
	assert_true(hi > 950);
}

static void test_retry_delay_huge_cap_does_not_wrap(void **state)
{
	/* With a cap the doubling never reaches, the delay must still not shrink. */
	const struct retry_policy p = { .base_ms = 1000, .max_ms = UINT64_MAX };
	uint64_t prev = 0;

	for (unsigned a = 1; a <= 100; a++) {
		uint64_t v = retry_delay_ms(&p, a, 0);
		if (v < prev)
			fail_msg("attempt %u: delay %llu ms is less than attempt %u's %llu ms", a,
				 (unsigned long long)v, a - 1, (unsigned long long)prev);
		prev = v;
	}
}

/* ---- header lines ---- */

static void hv_ok(const char *line, const char *name, const char *want)
{
	const char *v = NULL;
	size_t vl = 99;

	if (!http_header_value(line, strlen(line), name, &v, &vl))
		fail_msg("'%s' does not match '%s'", line, name);
	assert_int_equal(vl, strlen(want));
	assert_memory_equal(v, want, vl);
}

static void hv_no(const char *line, const char *name)
{
	const char *v;
	size_t vl;

	if (http_header_value(line, strlen(line), name, &v, &vl))
		fail_msg("'%s' matches '%s'", line, name);
}

static void test_header_value(void **state)
{
	hv_ok("Content-Range: bytes 0-1/2\r\n", "Content-Range", "bytes 0-1/2");
	hv_ok("content-range: bytes 0-1/2\r\n", "Content-Range", "bytes 0-1/2");
	hv_ok("CONTENT-RANGE:\t  bytes 0-1/2 \t\r\n", "content-range", "bytes 0-1/2");
	hv_ok("Location:https://cdn/x?a=b c\n", "location", "https://cdn/x?a=b c");
	hv_ok("Retry-After: 5", "Retry-After", "5");
	hv_ok("Content-Range:\r\n", "Content-Range", "");
	hv_ok("Content-Range:", "Content-Range", "");
	hv_ok("Content-Range:   \r\n", "Content-Range", "");
	hv_no("Content-Range-X: bytes 0-1/2\r\n", "Content-Range");
	hv_no("Content-RangeX: y", "Content-Range");
	hv_no("Content-Rang: y", "Content-Range");
	hv_no("X-Content-Range: y", "Content-Range");
	hv_no("Content-Range", "Content-Range");
	hv_no("Content-Range : y", "Content-Range");
	hv_no("", "Content-Range");
	hv_no("HTTP/1.1 206 Partial Content\r\n", "Content-Range");
}

static void test_header_value_respects_len(void **state)
{
	const char *line = "ETag: \"abc\"\r\nX-Other: y";
	const char *v;
	size_t vl;

	assert_true(http_header_value(line, 13, "etag", &v, &vl));
	assert_int_equal(vl, 5);
	assert_memory_equal(v, "\"abc\"", 5);
	assert_false(http_header_value(line, 4, "etag", &v, &vl));
}

/* ---- URLs ---- */

#define BLOB_URL "http://127.0.0.1:5000/v2/a/b/blobs/sha256:" \
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static void expect_str(char *got, const char *want)
{
	if (!got)
		fail_msg("NULL, want '%s'", want);
	assert_string_equal(got, want);
	free(got);
}

static void test_url_resolve(void **state)
{
	expect_str(url_resolve(BLOB_URL, "/cdn/x?sig=1"), "http://127.0.0.1:5000/cdn/x?sig=1");
	expect_str(url_resolve(BLOB_URL, "https://cdn.example.com/blob?X-Amz-Signature=abc"),
		   "https://cdn.example.com/blob?X-Amz-Signature=abc");
	expect_str(url_resolve(BLOB_URL, "other"), "http://127.0.0.1:5000/v2/a/b/blobs/other");
	expect_str(url_resolve(BLOB_URL, "../x"), "http://127.0.0.1:5000/v2/a/b/x");
	expect_str(url_resolve(BLOB_URL, "//cdn.example.com/p"), "http://cdn.example.com/p");
	expect_str(url_resolve("https://r.example/v2/", "https://r.example/v2/"),
		   "https://r.example/v2/");
	assert_null(url_resolve("not a url", "x"));
}

static void test_url_redact(void **state)
{
	expect_str(url_redact("https://user:pass@cdn.example.com/path/blob?sig=secret#frag"),
		   "https://cdn.example.com/path/blob");
	expect_str(url_redact("https://user@cdn.example.com:8443/p?X-Amz-Credential=k&X-Amz-Signature=s"),
		   "https://cdn.example.com:8443/p");
	expect_str(url_redact(BLOB_URL), BLOB_URL);
	expect_str(url_redact("not a url"), "(invalid URL)");
}

static void test_url_add_query(void **state)
{
	char *u = url_add_query("https://auth.docker.io/token", "scope",
				"repository:library/ubuntu:pull");
	char *v;

	expect_str(u ? strdup(u) : NULL,
		   "https://auth.docker.io/token?scope=repository%3alibrary%2fubuntu%3apull");
	v = url_add_query(u, "service", "a b&c=d");
	expect_str(v, "https://auth.docker.io/token?scope=repository%3alibrary%2fubuntu%3apull"
		      "&service=a+b%26c%3dd");
	free(u);
	expect_str(url_add_query("https://r.example/token?x=1", "k", "v"),
		   "https://r.example/token?x=1&k=v");
	assert_null(url_add_query("not a url", "k", "v"));
}

static void test_url_authority(void **state)
{
	expect_str(url_authority("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
	expect_str(url_authority("https://registry.ollama.ai/v2/library/x"), "registry.ollama.ai");
	expect_str(url_authority("https://user:pw@registry.example:443/v2/"), "registry.example:443");
	expect_str(url_authority("http://[::1]:5000/v2/"), "[::1]:5000");
	assert_null(url_authority("no scheme here"));
}

static void test_host_is_loopback(void **state)
{
	static const char *const yes[] = {
		"localhost", "LocalHost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000",
		"127.1.2.3:80", "127.255.255.255", "[::1]:5000", "[::1]", "::1",
	};
	static const char *const no[] = {
		"128.0.0.1", "127.0.0.1.evil.com", "localhost.evil", "evil-localhost",
		"127.0.0.256", "127.0.0", "1127.0.0.1", "10.0.0.1:5000", "registry.ollama.ai",
		"[::2]:5000", "", "127.0.0.1 ",
	};

	char wrong[512] = "";

	/* Collect every wrong answer, so one failure shows them all. */
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!host_is_loopback(yes[i]))
			snprintf(wrong + strlen(wrong), sizeof(wrong) - strlen(wrong),
				 " '%s'->false", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (host_is_loopback(no[i]))
			snprintf(wrong + strlen(wrong), sizeof(wrong) - strlen(wrong),
				 " '%s'->true", no[i]);
	if (wrong[0])
		fail_msg("wrong answers:%s", wrong);
}

static void test_host_is_loopback_is_strict(void **state)
{
	/*
	 * Found by fuzzing: sscanf("%u") read these as 127.x.y.z, so blobfs
	 * spoke plain http to them, while curl resolves them by DNS. Only what
	 * inet_pton() reads as a dotted quad (or ::1) is loopback.
	 */
	static const char *const no[] = {
		"127.09.6.5", "127.00.0.1", "127.-0.0.1", "127.+0.0.1", "127.4294967296.0.1",
		"127.4294967297.0.1:5000", "127.2.5.\t2", "127.0.0.1\t", " 127.0.0.1", "127.0. 0.1",
		"127.1", "127.0.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "127.0.0.1\n",
		"[::1]x", "[::1", "[127.0.0.1]", "[localhost]", "::ffff:127.0.0.1", "[::1%25lo]",
		"[ ::1]", "::2",
	};
	static const char *const yes[] = {
		"127.0.0.1:11434", "127.10.20.30", "[0:0:0:0:0:0:0:1]:5000", "[::0:1]",
		"0:0:0:0:0:0:0:1",
	};
	char wrong[1024] = "";

	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (host_is_loopback(no[i]))
			snprintf(wrong + strlen(wrong), sizeof(wrong) - strlen(wrong),
				 " '%s'->true", no[i]);
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!host_is_loopback(yes[i]))
			snprintf(wrong + strlen(wrong), sizeof(wrong) - strlen(wrong),
				 " '%s'->false", yes[i]);
	if (wrong[0])
		fail_msg("wrong answers:%s", wrong);
}

static void test_url_same_origin(void **state)
{
	assert_true(url_same_origin("https://r.example/v2/a", "https://r.example/other?x=1"));
	assert_true(url_same_origin("https://r.example/v2/", "https://R.EXAMPLE:443/v2/"));
	assert_true(url_same_origin("http://127.0.0.1:5000/a", "http://127.0.0.1:5000/b"));
	assert_false(url_same_origin("https://r.example/v2/", "http://r.example/v2/"));
	assert_false(url_same_origin("https://r.example/v2/", "https://r.example:8443/v2/"));
	assert_false(url_same_origin("https://r.example/v2/", "https://cdn.example/v2/"));
	assert_false(url_same_origin("https://r.example/v2/", "https://r.example.evil/v2/"));
	assert_false(url_same_origin("http://127.0.0.1:5000/", "http://127.0.0.1:5001/"));
	assert_false(url_same_origin("not a url", "not a url"));
	assert_false(url_same_origin("https://r.example/", "not a url"));
}

static void test_url_may_carry_credentials(void **state)
{
	assert_true(url_may_carry_credentials("https://r.example/v2/token"));
	assert_true(url_may_carry_credentials("HTTPS://r.example:8443/token?x=1"));
	assert_true(url_may_carry_credentials("http://127.0.0.1:5000/token"));
	assert_true(url_may_carry_credentials("http://localhost/token"));
	assert_true(url_may_carry_credentials("http://[::1]:5000/token"));
	assert_false(url_may_carry_credentials("http://r.example/token"));
	assert_false(url_may_carry_credentials("http://127.0.0.1.evil.example/token"));
	assert_false(url_may_carry_credentials("http://localhost.evil.example/token"));
	assert_false(url_may_carry_credentials("ftp://127.0.0.1/token"));
	assert_false(url_may_carry_credentials("not a url"));
	assert_false(url_may_carry_credentials(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_content_range_valid),
		cmocka_unit_test(test_content_range_uses_len),
		cmocka_unit_test(test_content_range_refusals),
		cmocka_unit_test(test_retry_after_seconds),
		cmocka_unit_test(test_retry_after_date),
		cmocka_unit_test(test_retry_after_far_future_saturates),
		cmocka_unit_test(test_retry_after_junk),
		cmocka_unit_test(test_status_errno),
		cmocka_unit_test(test_status_retryable),
		cmocka_unit_test(test_retry_delay_grows_and_caps),
		cmocka_unit_test(test_retry_delay_cap_not_a_power_of_two),
		cmocka_unit_test(test_retry_delay_jitter_spreads),
		cmocka_unit_test(test_retry_delay_huge_cap_does_not_wrap),
		cmocka_unit_test(test_header_value),
		cmocka_unit_test(test_header_value_respects_len),
		cmocka_unit_test(test_url_resolve),
		cmocka_unit_test(test_url_redact),
		cmocka_unit_test(test_url_add_query),
		cmocka_unit_test(test_url_authority),
		cmocka_unit_test(test_host_is_loopback),
		cmocka_unit_test(test_host_is_loopback_is_strict),
		cmocka_unit_test(test_url_same_origin),
		cmocka_unit_test(test_url_may_carry_credentials),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
