/*
 * test_fetch_policy.c - the retry and failover policy of the network thread
 * (fetch_policy.c): what each kind of failed attempt leads to, the backoff
 * and Retry-After, attempts running out, and the choice of endpoints when
 * mirrors fail.
 */
#include "config.h"

#include <curl/curl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fetch_int.h"
#include "http.h"
#include "remote.h"
#include "util.h"

static const struct retry_policy rp = {
	.max_attempts = 6, .base_ms = 1000, .max_ms = 30000, .retry_after_max_ms = 60000,
};

/* A response with an HTTP status from the registry (ranges: from a CDN with cdn). */
static struct attempt http(long status)
{
	return (struct attempt){ .res = CURLE_OK, .status = status, .to_registry = true };
}

static struct attempt transport(CURLcode res)
{
	return (struct attempt){ .res = res, .to_registry = true };
}

static struct verdict classify(struct attempt a)
{
	return classify_failure(&a, &rp, rp.max_attempts, 0);
}

/* ---- classify_failure ---- */

static void test_server_errors_are_retried_with_backoff(void **state)
{
	(void)state;
	long statuses[] = { 500, 502, 503, 504, 408, 429 };

	for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
		struct verdict v = classify(http(statuses[i]));
		assert_int_equal(v.act, ACT_RETRY);
		assert_int_equal(v.failed, 1);
		assert_int_equal(v.delay_ms, 500);   /* half the base, with no jitter */
		assert_int_equal(v.retry_after_ms, 0);
	}
}

static void test_backoff_grows_and_attempts_run_out(void **state)
{
	struct attempt a = http(503);
	struct verdict v;

	(void)state;
	a.failed = 3;
	v = classify(a);
	assert_int_equal(v.act, ACT_RETRY);
	assert_int_equal(v.failed, 4);
	assert_int_equal(v.delay_ms, 4000);   /* base doubled thrice, halved */
	a.failed = 5;
	v = classify(a);
	assert_int_equal(v.act, ACT_FAIL);
	assert_true(v.exhausted);
	assert_int_equal(v.failed, 6);
	/* A mirror gets fewer attempts: the caller says how many. */
	a.failed = 1;
	v = classify_failure(&a, &rp, 2, 0);
	assert_int_equal(v.act, ACT_FAIL);
	assert_true(v.exhausted);
}

static void test_retry_after_wins_when_longer_up_to_its_cap(void **state)
{
	struct attempt a = http(429);
	struct verdict v;

	(void)state;
	a.retry_after = "7";
	v = classify(a);
	assert_int_equal(v.act, ACT_RETRY);
	assert_int_equal(v.delay_ms, 7000);
	assert_int_equal(v.retry_after_ms, 7000);
	a.retry_after = "3600";
	v = classify(a);
	assert_int_equal(v.delay_ms, 60000);
	assert_int_equal(v.retry_after_ms, 60000);
	/* Shorter than the backoff: the backoff stands. */
	a.retry_after = "0";
	a.failed = 3;
	v = classify(a);
	assert_int_equal(v.delay_ms, 4000);
	a.retry_after = "soon";   /* unparsable: ignored */
	v = classify(a);
	assert_int_equal(v.delay_ms, 4000);
	assert_int_equal(v.retry_after_ms, 0);
}

static void test_client_errors_fail_the_endpoint_at_once(void **state)
{
	long statuses[] = { 400, 403, 404, 405, 410, 416, 301, 302 };

	(void)state;
	for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
		struct verdict v = classify(http(statuses[i]));
		assert_int_equal(v.act, ACT_FAIL);
		assert_false(v.exhausted);
		assert_int_equal(v.failed, 0);
	}
}

static void test_a_401_from_the_registry_asks_for_authentication(void **state)
{
	struct attempt a = http(401);

	(void)state;
	assert_int_equal(classify(a).act, ACT_AUTHENTICATE);
	/* Not from the registry (a token server, a CDN): nothing to answer it with. */
	a.to_registry = false;
	assert_int_equal(classify(a).act, ACT_FAIL);
}

static void test_a_redirect_is_followed_only_with_a_location(void **state)
{
	struct attempt a = http(307);

	(void)state;
	a.location = true;
	assert_int_equal(classify(a).act, ACT_REDIRECT);
	a.location = false;
	assert_int_equal(classify(a).act, ACT_FAIL);
}

static void test_a_gone_cdn_url_is_resolved_again(void **state)
{
	long statuses[] = { 403, 404, 410 };

	(void)state;
	for (size_t i = 0; i < 3; i++) {
		struct attempt a = http(statuses[i]);
		a.to_registry = false;
		a.cdn = true;
		assert_int_equal(classify(a).act, ACT_RERESOLVE);
	}
	struct attempt a = http(500);
	a.to_registry = false;
	a.cdn = true;
	assert_int_equal(classify(a).act, ACT_RETRY);   /* a CDN's 5xx is transient */
}

static void test_transport_errors(void **state)
{
	CURLcode transient[] = { CURLE_COULDNT_CONNECT, CURLE_RECV_ERROR, CURLE_SEND_ERROR,
				 CURLE_OPERATION_TIMEDOUT, CURLE_PARTIAL_FILE, CURLE_GOT_NOTHING,
				 CURLE_UNSUPPORTED_PROTOCOL /* also a garbled response */ };
	CURLcode final[] = { CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE,
			     CURLE_URL_MALFORMAT, CURLE_TOO_MANY_REDIRECTS, CURLE_WRITE_ERROR };

	(void)state;
	for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
		assert_int_equal(classify(transport(transient[i])).act, ACT_RETRY);
	for (size_t i = 0; i < sizeof(final) / sizeof(final[0]); i++)
		assert_int_equal(classify(transport(final[i])).act, ACT_FAIL);
}

static void test_invalid_responses_are_retried(void **state)
{
	struct attempt a = transport(CURLE_WRITE_ERROR);   /* we stopped reading it */
	struct attempt ok = http(206);

	(void)state;
	/* We stopped because the response was wrong: another attempt may be right. */
	a.invalid = true;
	assert_int_equal(classify(a).act, ACT_RETRY);
	ok.invalid = true;                                 /* wrong Content-Range, short body */
	assert_int_equal(classify(ok).act, ACT_RETRY);
	/* We stopped for another reason (a body past its limit): it is final. */
	a.invalid = false;
	assert_int_equal(classify(a).act, ACT_FAIL);
	assert_false(classify(a).exhausted);
}

/* ---- endpoints ---- */

static void test_failover_goes_through_the_mirrors_to_the_registry(void **state)
{
	struct endpoint eps[] = {
		{ .base = "http://m1.example/v2/library/x", .authority = "m1.example", .mirror = true },
		{ .base = "http://m2.example/v2/library/x", .authority = "m2.example", .mirror = true },
		{ .base = "http://reg.example/v2/library/x", .authority = "reg.example" },
	};
	struct remote r = { .ep = eps, .nep = 3, .o.retry = rp };
	struct fetcher *f = xcalloc(1, sizeof(*f));
	size_t ep = 0;

	(void)state;
	assert_int_equal(attempts_for(&r, 0, false), 2);
	assert_int_equal(attempts_for(&r, 2, false), 6);
	/* Another registry that has the blob waits behind this one. */
	assert_int_equal(attempts_for(&r, 2, true), 2);
	assert_int_equal(healthy_endpoint(f, &r, 0), 0);
	/* Without a reason (it was given already) the mirror is left but not marked down. */
	assert_true(next_endpoint(f, &r, &ep, NULL));
	assert_int_equal(ep, 1);
	assert_int_equal(healthy_endpoint(f, &r, 0), 0);
	/* With one, it is skipped by the requests that start after. */
	assert_true(next_endpoint(f, &r, &ep, "HTTP 500"));
	assert_int_equal(ep, 2);
	assert_int_equal(healthy_endpoint(f, &r, 0), 0);
	assert_int_equal(healthy_endpoint(f, &r, 1), 2);
	ep = 0;
	assert_true(next_endpoint(f, &r, &ep, "HTTP 500"));
	assert_int_equal(healthy_endpoint(f, &r, 0), 2);
	/* The registry is last: nothing after it. */
	ep = 2;
	assert_false(next_endpoint(f, &r, &ep, "HTTP 500"));
	assert_int_equal(ep, 2);
	assert_false(next_endpoint(f, NULL, &ep, "a token request"));
	/* A registry that failed is known down too (the next remote is tried first). */
	assert_false(endpoint_down(f, &r, 2));
	endpoint_failed(f, &r, 2);
	assert_true(endpoint_down(f, &r, 2));
	while (f->hosts) {
		struct hostinfo *h = f->hosts;
		f->hosts = h->next;
		free(h->authority);
		free(h);
	}
	free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_server_errors_are_retried_with_backoff),
		cmocka_unit_test(test_backoff_grows_and_attempts_run_out),
		cmocka_unit_test(test_retry_after_wins_when_longer_up_to_its_cap),
		cmocka_unit_test(test_client_errors_fail_the_endpoint_at_once),
		cmocka_unit_test(test_a_401_from_the_registry_asks_for_authentication),
		cmocka_unit_test(test_a_redirect_is_followed_only_with_a_location),
		cmocka_unit_test(test_a_gone_cdn_url_is_resolved_again),
		cmocka_unit_test(test_transport_errors),
		cmocka_unit_test(test_invalid_responses_are_retried),
		cmocka_unit_test(test_failover_goes_through_the_mirrors_to_the_registry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
