/*
 * url.c - URLs, always through curl_url: resolving a redirect's Location
 * against the request URL, adding query parameters to a token realm,
 * comparing origins (credentials never follow a redirect to another host), and
 * stripping the query from URLs before they are logged — a CDN's presigned
 * URL carries its signature there.
 */
#include "config.h"

#include <curl/curl.h>
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

bool host_is_loopback(const char *authority)
{
	const char *colon = strrchr(authority, ':');
	size_t len = strlen(authority);
	char *h;
	bool ok = false;

	if (authority[0] == '[') {
		const char *close = strchr(authority, ']');
		len = close ? (size_t)(close - authority) + 1 : len;
	} else if (colon && strchr(authority, ':') == colon) {
		len = (size_t)(colon - authority);   /* host:port; more colons are an IPv6 literal */
	}
	h = xstrndup(authority, len);
	if (strcasecmp(h, "localhost") == 0 || strcmp(h, "[::1]") == 0 || strcmp(h, "::1") == 0) {
		ok = true;
	} else if (strncmp(h, "127.", 4) == 0) {
		unsigned a, b, c, d;
		char extra;
		ok = sscanf(h, "%u.%u.%u.%u%c", &a, &b, &c, &d, &extra) == 4 &&
		     a == 127 && b < 256 && c < 256 && d < 256;
	}
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
