/*
 * url.c - URLs, always through curl_url: resolving a redirect's Location
 * against the request URL, adding query parameters to a token realm,
 * comparing origins (credentials never follow a redirect to another host), and
 * stripping the query from URLs before they are logged — a CDN's presigned
 * URL carries its signature there. Whether a host is loopback (then plain
 * http is used, and may carry credentials) is decided by inet_pton(), never
 * by scanning digits.
 */
#include "config.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "url.h"
#include "util.h"

static CURLU *parse(const char *url)
{
	CURLU *u = curl_url();

	if (!u)
		return NULL;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
		curl_url_cleanup(u);
		return NULL;
	}
	return u;
}

static char *get(CURLU *u, CURLUPart part, unsigned flags)
{
	char *v = NULL, *out;

	if (curl_url_get(u, part, &v, flags) != CURLUE_OK)
		return NULL;
	out = xstrdup(v);
	curl_free(v);
	return out;
}

char *url_resolve(const char *base, const char *ref)
{
	CURLU *u = parse(base);
	char *out = NULL;

	if (!u)
		return NULL;
	if (curl_url_set(u, CURLUPART_URL, ref, 0) == CURLUE_OK)
		out = get(u, CURLUPART_URL, 0);
	curl_url_cleanup(u);
	return out;
}

char *url_redact(const char *url)
{
	CURLU *u = parse(url);
	char *out;

	if (!u)
		return xstrdup("(invalid URL)");
	curl_url_set(u, CURLUPART_USER, NULL, 0);
	curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
	curl_url_set(u, CURLUPART_QUERY, NULL, 0);
	curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0);
	out = get(u, CURLUPART_URL, 0);
	curl_url_cleanup(u);
	return out ? out : xstrdup("(invalid URL)");
}

char *url_add_query(const char *url, const char *key, const char *value)
{
	CURLU *u = parse(url);
	char *kv, *out = NULL;

	if (!u)
		return NULL;
	kv = xasprintf("%s=%s", key, value);
	if (curl_url_set(u, CURLUPART_QUERY, kv, CURLU_APPENDQUERY | CURLU_URLENCODE) == CURLUE_OK)
		out = get(u, CURLUPART_URL, 0);
	free(kv);
	curl_url_cleanup(u);
	return out;
}

char *url_authority(const char *url)
{
	CURLU *u = parse(url);
	char *host, *port, *out;

	if (!u)
		return NULL;
	host = get(u, CURLUPART_HOST, 0);
	port = get(u, CURLUPART_PORT, 0);
	curl_url_cleanup(u);
	if (!host) {
		free(port);
		return NULL;
	}
	if (port) {
		out = xasprintf("%s:%s", host, port);
		free(host);
		free(port);
		return out;
	}
	return host;
}

/*
 * The host of "host[:port]", without the brackets of an IPv6 literal; more
 * than one colon without brackets is a bare IPv6 literal. NULL if a bracket
 * is not closed or is followed by anything but ":port".
 */
static char *authority_host(const char *authority)
{
	const char *colon = strchr(authority, ':');

	if (authority[0] == '[') {
		const char *close = strchr(authority, ']');
		if (!close || (close[1] && close[1] != ':'))
			return NULL;
		return xstrndup(authority + 1, (size_t)(close - authority) - 1);
	}
	if (colon && !strchr(colon + 1, ':'))
		return xstrndup(authority, (size_t)(colon - authority));
	return xstrdup(authority);
}

/*
 * Plain http is used for these, so only exact forms count: "localhost", a
 * dotted quad in 127.0.0.0/8 and ::1, as inet_pton() reads them. Anything
 * else (leading zeros, signs, blanks, "127.1") gets https: curl looks some of
 * those up in DNS, which may answer with any address.
 */
bool host_is_loopback(const char *authority)
{
	char *h = authority_host(authority);
	struct in_addr a4;
	struct in6_addr a6;
	bool ok = false;

	if (!h)
		return false;
	if (authority[0] == '[')
		ok = inet_pton(AF_INET6, h, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
	else
		ok = strcasecmp(h, "localhost") == 0 ||
		     (inet_pton(AF_INET, h, &a4) == 1 && ntohl(a4.s_addr) >> 24 == 127) ||
		     (inet_pton(AF_INET6, h, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6));
	free(h);
	return ok;
}

bool url_same_origin(const char *a, const char *b)
{
	CURLU *ua = parse(a), *ub = parse(b);
	bool same = false;

	if (ua && ub) {
		char *sa = get(ua, CURLUPART_SCHEME, 0), *sb = get(ub, CURLUPART_SCHEME, 0);
		char *ha = get(ua, CURLUPART_HOST, 0), *hb = get(ub, CURLUPART_HOST, 0);
		char *pa = get(ua, CURLUPART_PORT, CURLU_DEFAULT_PORT);
		char *pb = get(ub, CURLUPART_PORT, CURLU_DEFAULT_PORT);
		same = sa && sb && ha && hb && pa && pb && strcasecmp(sa, sb) == 0 &&
		       strcasecmp(ha, hb) == 0 && strcmp(pa, pb) == 0;
		free(sa); free(sb); free(ha); free(hb); free(pa); free(pb);
	}
	curl_url_cleanup(ua);
	curl_url_cleanup(ub);
	return same;
}

bool url_may_carry_credentials(const char *url)
{
	CURLU *u = url ? parse(url) : NULL;
	char *scheme, *authority;
	bool ok = false;

	if (!u)
		return false;
	scheme = get(u, CURLUPART_SCHEME, 0);
	curl_url_cleanup(u);
	if (scheme && strcasecmp(scheme, "https") == 0) {
		ok = true;
	} else if (scheme && strcasecmp(scheme, "http") == 0) {
		authority = url_authority(url);
		ok = authority && host_is_loopback(authority);
		free(authority);
	}
	free(scheme);
	return ok;
}
