/*
 * fuzz_auth_challenge.c - WWW-Authenticate challenges (auth_parse_challenge).
 *
 * Input: the header value, not NUL-terminated.
 * Invariants:
 *   challenge_fields     on success the scheme is Basic or Bearer, a Bearer
 *                        challenge has a non-empty realm, and realm/service/scope
 *                        hold no control bytes and at most 4096 bytes
 *   challenge_roundtrip  the challenge re-serialised as
 *                        `Scheme realm="..",service="..",scope=".."` (quotes and
 *                        backslashes escaped) parses back to the same values
 *   challenge_nul        a NUL byte is treated like any other control byte:
 *                        the result does not change when every NUL becomes 0x01
 *                        (a NUL in a header cannot be honoured: C strings stop
 *                        there, so a value containing one is cut short)
 */
#include "config.h"

#include <errno.h>

#include "auth.h"
#include "fuzz_common.h"

static bool clean(const char *s)
{
	if (!s)
		return true;
	if (strlen(s) > 4096)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20)
			return false;
	return true;
}

static void put_quoted(char **o, const char *key, const char *v)
{
	*o += sprintf(*o, ",%s=\"", key);
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			*(*o)++ = '\\';
		*(*o)++ = *v;
	}
	*(*o)++ = '"';
}

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && !strcmp(a, b));
}

static bool same(const struct auth_challenge *a, const struct auth_challenge *b)
{
	return a->scheme == b->scheme && str_eq(a->realm, b->realm) &&
	       str_eq(a->service, b->service) && str_eq(a->scope, b->scope);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *v = (const char *)data;
	struct auth_challenge c, c2;
	int ret = auth_parse_challenge(v, size, &c);

	/* The same input with each NUL replaced by 0x01. */
	char *alt = malloc(size ? size : 1);
	bool has_nul = false;
	for (size_t i = 0; i < size; i++) {
		alt[i] = v[i] ? v[i] : '\x01';
		has_nul |= !v[i];
	}
	if (has_nul) {
		int ret2 = auth_parse_challenge(alt, size, &c2);
		FUZZ_CHECK("challenge_nul", ret2 == ret && (ret < 0 || same(&c, &c2)),
			   "'%s' parses %s (%d, realm '%s') but with NUL as 0x01 %d, realm '%s'",
			   fuzz_esc(v, size), ret == 0 ? "OK" : "as invalid", ret,
			   ret == 0 && c.realm ? c.realm : "", ret2,
			   ret2 == 0 && c2.realm ? c2.realm : "");
		if (ret2 == 0)
			auth_challenge_release(&c2);
	}
	free(alt);
	if (ret < 0) {
		FUZZ_CHECK("challenge_fields", ret == -EINVAL && !c.realm && !c.service && !c.scope,
			   "failure leaves fields set");
		return 0;
	}
	FUZZ_CHECK("challenge_fields", c.scheme == AUTH_BASIC || c.scheme == AUTH_BEARER,
		   "scheme %d", c.scheme);
	FUZZ_CHECK("challenge_fields", c.scheme != AUTH_BEARER || (c.realm && *c.realm),
		   "Bearer without realm");
	FUZZ_CHECK("challenge_fields", clean(c.realm) && clean(c.service) && clean(c.scope),
		   "'%s': a field holds a control byte or is too long", fuzz_esc(v, size));

	size_t cap = 64 + 2 * ((c.realm ? strlen(c.realm) : 0) + (c.service ? strlen(c.service) : 0) +
			       (c.scope ? strlen(c.scope) : 0));
	char *out = malloc(cap), *o = out;
	o += sprintf(o, "%s x=y", c.scheme == AUTH_BEARER ? "Bearer" : "Basic");
	if (c.realm)
		put_quoted(&o, "realm", c.realm);
	if (c.service)
		put_quoted(&o, "service", c.service);
	if (c.scope)
		put_quoted(&o, "scope", c.scope);
	*o = '\0';
	ret = auth_parse_challenge(out, (size_t)(o - out), &c2);
	FUZZ_CHECK("challenge_roundtrip", ret == 0 && same(&c, &c2), "'%s' → '%s' → %d",
		   fuzz_esc(v, size), fuzz_esc(out, (size_t)(o - out)), ret);
	if (ret == 0)
		auth_challenge_release(&c2);
	free(out);
	auth_challenge_release(&c);
	return 0;
}
