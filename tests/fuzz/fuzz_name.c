/*
 * fuzz_name.c - model names (name.h), and the step after parsing in
 * remote_new(): is the host loopback (then plain http is used), and which host
 * does curl then really connect to.
 *
 * Input: the name as a C string (bytes up to the first NUL).
 * Invariants:
 *   name_err           a failed parse returns -EINVAL with a message
 *   name_parts         every part of a parsed name passes name_part_valid(),
 *                      is a single safe path component, scheme is ""/http/https
 *   name_roundtrip     name_format() parses back to exactly the same parts
 *   name_short         name_format_short() parses back to an equal name
 *   loopback_remote    host_is_loopback(host) (→ plain http, no TLS) only for a
 *                      host curl really connects to on loopback
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <strings.h>

#include "fuzz_common.h"
#include "name.h"
#include "url.h"
#include "util.h"

static void check_part(const char *what, enum name_part part, const char *s)
{
	FUZZ_CHECK("name_parts", name_part_valid(part, s), "%s '%s' is not valid", what, s);
	FUZZ_CHECK("name_parts", *s && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/'),
		   "%s '%s' is not a safe path component", what, s);
}

static void check_remote(const struct model_name *n)
{
	bool lb = host_is_loopback(n->host);
	const char *scheme = n->scheme[0] ? n->scheme : lb ? "http" : "https";
	char *raw, *base, *host = NULL;
	CURLU *u;

	if (!lb || n->scheme[0])
		return;
	raw = xasprintf("%s://%s/v2/%s/%s", scheme, n->host, n->ns, n->model);
	base = url_resolve(raw, raw);
	if (base && (u = curl_url()) != NULL) {
		if (curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
		    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
			FUZZ_CHECK("loopback_remote", fuzz_really_loopback(host),
				   "host_is_loopback('%s') is true (so blobfs uses plain http), "
				   "but curl connects to '%s', which is not a loopback address",
				   n->host, host);
			curl_free(host);
		}
		curl_url_cleanup(u);
	}
	free(base);
	free(raw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fuzz_strz(data, size);
	struct model_name n, n2;
	char err[256], tiny[1], buf[NAME_FORMAT_MAX], sbuf[NAME_FORMAT_MAX];
	int ret;

	err[0] = tiny[0] = '\0';
	ret = name_parse(s, &n, err, sizeof(err));
	/* The same answer with a message buffer too small for any message. */
	FUZZ_CHECK("name_err", name_parse(s, &n2, tiny, sizeof(tiny)) == ret && tiny[0] == '\0',
		   "a one-byte err buffer changes the result");
	if (ret != 0) {
		FUZZ_CHECK("name_err", ret == -EINVAL && err[0], "ret %d, err '%s'", ret, err);
		free(s);
		return 0;
	}
	FUZZ_CHECK("name_parts", !n.scheme[0] || !strcmp(n.scheme, "http") ||
		   !strcmp(n.scheme, "https"), "scheme '%s'", n.scheme);
	check_part("host", NAME_HOST, n.host);
	check_part("namespace", NAME_NAMESPACE, n.ns);
	check_part("model", NAME_MODEL, n.model);
	check_part("tag", NAME_TAG, n.tag);

	name_format(&n, buf, sizeof(buf));
	FUZZ_CHECK("name_roundtrip", strlen(buf) + 1 < sizeof(buf), "formatted name truncated");
	ret = name_parse(buf, &n2, err, sizeof(err));
	FUZZ_CHECK("name_roundtrip", ret == 0, "'%s' formats as '%s', which does not parse: %s",
		   fuzz_esc(s, strlen(s)), buf, err);
	FUZZ_CHECK("name_roundtrip", !strcmp(n.host, n2.host) && !strcmp(n.ns, n2.ns) &&
		   !strcmp(n.model, n2.model) && !strcmp(n.tag, n2.tag),
		   "'%s' formats as '%s', which parses to %s/%s/%s:%s",
		   fuzz_esc(s, strlen(s)), buf, n2.host, n2.ns, n2.model, n2.tag);

	name_format_short(&n, sbuf, sizeof(sbuf));
	ret = name_parse(sbuf, &n2, err, sizeof(err));
	FUZZ_CHECK("name_short", ret == 0 && name_equal(&n, &n2),
		   "'%s' short form '%s' does not parse back to '%s'", fuzz_esc(s, strlen(s)),
		   sbuf, buf);

	check_remote(&n);
	free(s);
	return 0;
}
