/*
 * auth.c - the parsing half of registry authentication.
 *
 * The flow itself (401 → challenge → token request → retry, tokens cached
 * until they expire) runs on the network thread in fetch_auth.c; this file only
 * turns bytes into structs: the WWW-Authenticate challenge (RFC 7235
 * auth-params, quoted strings with backslash escapes), netrc-syntax
 * credential files (bad syntax fails the lookup, with the line and the
 * reason), and token server replies. Everything here is hostile
 * input and is bounded and fuzzed.
 *
 * Which credentials a host gets is decided here too (credentials_find):
 * its own machine entry, and netrc's "default" entry only when the caller
 * says the host is one the user named. Where they may go at all (HTTPS, or
 * loopback) is the caller's check (url_may_carry_credentials).
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "log.h"
#include "util.h"

#define PARAM_MAX 4096
#define TOKEN_MAX (64u << 10)

/* RFC 9110 tchar. (strchr() alone would also find the terminating NUL.) */
static bool is_tchar(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void skip_ws(const char **p, const char *end)
{
	while (*p < end && (**p == ' ' || **p == '\t'))
		(*p)++;
}

/* A token or a quoted-string; returns a new string or NULL. */
static char *take_value(const char **p, const char *end)
{
	char *out;
	size_t n = 0;

	if (*p < end && **p == '"') {
		const char *s = ++(*p);
		out = xmalloc(end - s + 1);
		while (*p < end && **p != '"') {
			if (**p == '\\' && *p + 1 < end)
				(*p)++;
			if ((unsigned char)**p < 0x20 || n >= PARAM_MAX) {
				free(out);
				return NULL;
			}
			out[n++] = *(*p)++;
		}
		if (*p >= end) {
			free(out);
			return NULL;
		}
		(*p)++;
		out[n] = '\0';
		return out;
	}
	const char *s = *p;
	while (*p < end && is_tchar(**p))
		(*p)++;
	if (*p == s || *p - s > PARAM_MAX)
		return NULL;
	return xstrndup(s, *p - s);
}

void auth_challenge_release(struct auth_challenge *c)
{
	free(c->realm);
	free(c->service);
	free(c->scope);
	memset(c, 0, sizeof(*c));
}

int auth_parse_challenge(const char *v, size_t len, struct auth_challenge *c)
{
	const char *p = v, *end = v + len, *s;

	memset(c, 0, sizeof(*c));
	skip_ws(&p, end);
	s = p;
	while (p < end && is_tchar(*p))
		p++;
	if (p - s == 6 && strncasecmp(s, "Bearer", 6) == 0)
		c->scheme = AUTH_BEARER;
	else if (p - s == 5 && strncasecmp(s, "Basic", 5) == 0)
		c->scheme = AUTH_BASIC;
	else
		return -EINVAL;

	for (;;) {
		skip_ws(&p, end);
		if (p >= end)
			break;
		s = p;
		while (p < end && is_tchar(*p))
			p++;
		size_t klen = p - s;
		skip_ws(&p, end);
		if (klen == 0 || p >= end || *p != '=')
			break; /* the next challenge starts here; one is enough */
		p++;
		skip_ws(&p, end);
		char *val = take_value(&p, end);
		if (!val)
			goto bad;
		char **slot = NULL;
		if (klen == 5 && strncasecmp(s, "realm", 5) == 0)
			slot = &c->realm;
		else if (klen == 7 && strncasecmp(s, "service", 7) == 0)
			slot = &c->service;
		else if (klen == 5 && strncasecmp(s, "scope", 5) == 0)
			slot = &c->scope;
		if (slot) {
			free(*slot);
			*slot = val;
		} else {
			free(val);
		}
		skip_ws(&p, end);
		if (p < end && *p == ',')
			p++;
		else if (p < end)
			goto bad;
	}
	if (c->scheme == AUTH_BEARER && (!c->realm || !*c->realm))
		goto bad;
	return 0;
bad:
	auth_challenge_release(c);
	return -EINVAL;
}

void credentials_release(struct credentials *c)
{
	if (c->password)
		explicit_bzero(c->password, strlen(c->password));
	free(c->user);
	free(c->password);
	memset(c, 0, sizeof(*c));
}

/* A netrc file being read: where, and the reason when it is bad. */
struct netrc {
	const char *buf, *p, *end;
	const char *at;    /* where the last token started */
	char *err;
	size_t errlen;
};

static int netrc_bad(const struct netrc *n, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* -EINVAL, with "line N: <reason>" (the line of the last token) in err. */
static int netrc_bad(const struct netrc *n, const char *fmt, ...)
{
	unsigned line = 1;
	char why[128];
	va_list ap;

	for (const char *q = n->buf; q < n->at; q++)
		line += *q == '\n';
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	snprintf(n->err, n->errlen, "line %u: %s", line, why);
	return -EINVAL;
}

/* Blanks separate tokens, and so does a NUL: a token could not hold one. */
static bool netrc_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\0';
}

/*
 * The next token: whitespace-separated, or "quoted" with backslash escapes
 * and closed on its own line. 1 with *tok set, 0 at the end of the file, or
 * -EINVAL for a quoted token that take_value() refuses.
 */
static int netrc_token(struct netrc *n, char **tok)
{
	while (n->p < n->end && netrc_space(*n->p))
		n->p++;
	if (n->p >= n->end)
		return 0;
	n->at = n->p;
	if (*n->p == '"') {
		*tok = take_value(&n->p, n->end);
		if (*tok)
			return 1;
		/* take_value() stopped where the token went wrong. */
		if (n->p >= n->end || *n->p == '\n' || *n->p == '\r')
			return netrc_bad(n, "quoted token not closed on its line");
		if ((unsigned char)*n->p < 0x20)
			return netrc_bad(n, "control character in a quoted token");
		return netrc_bad(n, "quoted token longer than %d bytes", PARAM_MAX);
	}
	while (n->p < n->end && !netrc_space(*n->p))
		n->p++;
	*tok = xstrndup(n->at, n->p - n->at);
	return 1;
}

/* The token after keyword key, which must have one. */
static int netrc_value(struct netrc *n, const char *key, char **v)
{
	int ret = netrc_token(n, v);

	if (ret == 0)
		return netrc_bad(n, "'%s' without a value", key);
	return ret;
}

static void free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/* Find credentials for exactly `host` (or the default entry when host is NULL). */
static int netrc_find(const char *buf, size_t len, const char *host, struct credentials *out,
		      char *err, size_t errlen)
{
	struct netrc n = { .buf = buf, .p = buf, .end = buf + len, .at = buf, .err = err,
			   .errlen = errlen };
	bool in_match = false, seen_match = false;
	char *tok, *v;
	int ret;

	memset(out, 0, sizeof(*out));
	while ((ret = netrc_token(&n, &tok)) > 0) {
		if (strcmp(tok, "machine") == 0 || strcmp(tok, "default") == 0) {
			if (seen_match) {
				free(tok);
				break;
			}
			if (tok[0] == 'm') {
				ret = netrc_value(&n, tok, &v);
				if (ret < 0) {
					free(tok);
					break;
				}
				in_match = host && strcasecmp(v, host) == 0;
				free(v);
			} else {
				in_match = host == NULL;
			}
			seen_match = in_match;
		} else if (strcmp(tok, "login") == 0 || strcmp(tok, "password") == 0 ||
			   strcmp(tok, "account") == 0) {
			ret = netrc_value(&n, tok, &v);
			if (ret < 0) {
				free(tok);
				break;
			}
			if (in_match && tok[0] == 'l') {
				free(out->user);
				out->user = v;
			} else if (in_match && tok[0] == 'p') {
				free_secret(out->password);
				out->password = v;
			} else {
				free_secret(v);
			}
		} else if (strcmp(tok, "macdef") == 0) {
			/* A macro runs to the next blank line. */
			const char *bl = memmem(n.p, n.end - n.p, "\n\n", 2);
			n.p = bl ? bl + 2 : n.end;
		}
		free(tok);
	}
	if (ret < 0 || !seen_match || !out->user) {
		credentials_release(out);
		return ret < 0 ? ret : -ENOENT;
	}
	if (!out->password)
		out->password = xstrdup("");
	return 0;
}

int netrc_lookup(const char *path, const char *host, struct credentials *out,
		 char *err, size_t errlen)
{
	char *buf, *bare = NULL;
	size_t len;
	int ret = read_file(path, 1u << 20, &buf, &len);

	memset(out, 0, sizeof(*out));
	if (ret < 0)
		return ret == -ENOENT ? -ENOENT : ret;
	ret = netrc_find(buf, len, host, out, err, errlen);
	const char *colon = host ? strrchr(host, ':') : NULL;
	if (ret == -ENOENT && colon) {
		bare = xstrndup(host, colon - host);
		ret = netrc_find(buf, len, bare, out, err, errlen);
	}
	free(bare);
	explicit_bzero(buf, len);
	free(buf);
	return ret;
}

/* One lookup; a file that is there but unusable is reported and skipped. */
static int lookup_one(const char *path, const char *host, struct credentials *out)
{
	char err[160];
	int ret;

	if (!path)
		return -ENOENT;
	ret = netrc_lookup(path, host, out, err, sizeof(err));
	if (ret < 0 && ret != -ENOENT) {
		log_warn("cannot read credentials from '%s': %s", path,
			 ret == -EINVAL ? err : strerror(-ret));
		ret = -ENOENT;
	}
	return ret;
}

int credentials_find(const struct credential_files *cf, const char *host, bool use_default,
		     struct credentials *out)
{
	memset(out, 0, sizeof(*out));
	if (lookup_one(cf->file, host, out) == 0 || lookup_one(cf->netrc, host, out) == 0)
		return 0;
	if (use_default &&
	    (lookup_one(cf->file, NULL, out) == 0 || lookup_one(cf->netrc, NULL, out) == 0))
		return 0;
	return -ENOENT;
}

int auth_parse_token(const char *body, size_t len, char **token, uint64_t *ttl_s)
{
	cJSON *root = cJSON_ParseWithLength(body, len);
	const cJSON *t, *e;
	int ret = -EINVAL;

	*token = NULL;
	*ttl_s = 60;
	if (!cJSON_IsObject(root))
		goto out;
	t = cJSON_GetObjectItemCaseSensitive(root, "token");
	if (!cJSON_IsString(t) || !*t->valuestring)
		t = cJSON_GetObjectItemCaseSensitive(root, "access_token");
	if (!cJSON_IsString(t) || !*t->valuestring || strlen(t->valuestring) > TOKEN_MAX)
		goto out;
	for (const char *c = t->valuestring; *c; c++)
		if ((unsigned char)*c < 0x21 || *c == 0x7f)
			goto out; /* a token goes into a header: no spaces, no CR/LF */
	e = cJSON_GetObjectItemCaseSensitive(root, "expires_in");
	if (cJSON_IsNumber(e) && isfinite(e->valuedouble) && e->valuedouble >= 1 &&
	    e->valuedouble < 1e9)
		*ttl_s = (uint64_t)e->valuedouble;
	*token = xstrdup(t->valuestring);
	ret = 0;
out:
	cJSON_Delete(root);
	return ret;
}
