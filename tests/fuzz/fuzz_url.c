/*
 * fuzz_url.c - URL helpers (url.h): url_resolve (a Location header against
 * the request URL), url_redact, url_authority, url_same_origin, url_add_query
 * and host_is_loopback.
 *
 * Input: up to three lines: a base URL, a reference (or query value), and an
 * authority ("host[:port]") for host_is_loopback.
 * Invariants:
 *   (url_resolve and url_add_query are fuzzed for crashes, leaks and UB only:
 *   whether their output parses again is curl's business, and curl 7.88 fails
 *   it for some file: URLs ("file:/s" + "" gives "file://(nil)") and for a
 *   percent-encoded control byte in a host ("http://%7f/" gives "http://\x7f/",
 *   which it then refuses). fetch_job.c lets curl use only http and https.)
 *   url_redact       url_redact never returns NULL, and what it returns for a
 *                    valid URL has no user, password, query or fragment
 *   url_origin       url_same_origin is reflexive for any URL with a host,
 *                    and symmetric
 *   url_authority    url_authority of a URL with a host is not NULL
 *   loopback_claim   host_is_loopback(a) only for a loopback name or address
 */
#include "config.h"

#include <curl/curl.h>

#include "fuzz_common.h"
#include "url.h"

static bool has_part(const char *url, CURLUPart part)
{
	CURLU *u = curl_url();
	char *v = NULL;
	bool has = false;

	if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, part, &v, 0) == CURLUE_OK && v) {
		has = *v != '\0';
		curl_free(v);
	}
	curl_url_cleanup(u);
	return has;
}

static bool parses(const char *url)
{
	CURLU *u = curl_url();
	bool ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK;

	curl_url_cleanup(u);
	return ok;
}

static void check_redact(const char *url)
{
	char *r = url_redact(url);

	FUZZ_CHECK("url_redact", r != NULL, "NULL");
	if (parses(url) && strcmp(r, "(invalid URL)") != 0) {
		FUZZ_CHECK("url_redact", !has_part(r, CURLUPART_USER) &&
			   !has_part(r, CURLUPART_PASSWORD) && !has_part(r, CURLUPART_QUERY) &&
			   !has_part(r, CURLUPART_FRAGMENT),
			   "url_redact('%s') = '%s' still holds a secret part",
			   fuzz_esc(url, strlen(url)), fuzz_esc(r, strlen(r)));
	}
	free(r);
}

static void check_loopback(const char *a)
{
	const char *colon = strrchr(a, ':');
	size_t len = strlen(a);
	char host[512];

	if (!host_is_loopback(a))
		return;
	if (a[0] == '[') {
		const char *close = strchr(a, ']');
		len = close ? (size_t)(close - a) + 1 : len;
	} else if (colon && strchr(a, ':') == colon) {
		len = (size_t)(colon - a);
	}
	if (len >= sizeof(host))
		len = sizeof(host) - 1;
	memcpy(host, a, len);
	host[len] = '\0';
	FUZZ_CHECK("loopback_claim", fuzz_really_loopback(host),
		   "host_is_loopback('%s') is true, but '%s' is not a loopback address",
		   fuzz_esc(a, strlen(a)), fuzz_esc(host, strlen(host)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fuzz_strz(data, size), *parts[3] = { s, "", "" };
	char *p = s;

	for (int i = 1; i < 3; i++) {
		char *nl = strchr(p, '\n');
		if (!nl)
			break;
		*nl = '\0';
		parts[i] = p = nl + 1;
	}
	const char *base = parts[0], *ref = parts[1];

	char *r = url_resolve(base, ref);
	if (r) {
		check_redact(r);
		if (has_part(r, CURLUPART_HOST)) {
			FUZZ_CHECK("url_origin", url_same_origin(r, r), "'%s' is not its own origin",
				   fuzz_esc(r, strlen(r)));
			char *a = url_authority(r);
			FUZZ_CHECK("url_authority", a != NULL, "'%s' has no authority",
				   fuzz_esc(r, strlen(r)));
			free(a);
		}
		FUZZ_CHECK("url_origin", url_same_origin(r, base) == url_same_origin(base, r),
			   "not symmetric");
		free(r);
	}
	check_redact(base);
	char *q = url_add_query(base, "scope", ref);
	free(q);
	check_loopback(parts[2]);
	free(s);
	return 0;
}
