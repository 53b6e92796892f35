/*
 * auth.c - the parsing half of registry authentication.
 *
 * The flow itself (401 → challenge → token request → retry, tokens cached
 * until they expire) runs on the network thread in fetch.c; this file only
 * turns bytes into structs: the WWW-Authenticate challenge (RFC 7235
 * auth-params, quoted strings with backslash escapes), netrc-syntax
 * credential files, and token server replies. Everything here is hostile
 * input and is bounded and fuzzed.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "util.h"

#define PARAM_MAX 4096
#define TOKEN_MAX (64u << 10)

static bool is_tchar(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       strchr("!#$%&'*+-.^_`|~", c) != NULL;
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

/* The next netrc token: whitespace-separated, optionally "quoted". */
static char *netrc_token(const char **p, const char *end)
{
	while (*p < end && strchr(" \t\r\n", **p))
		(*p)++;
	if (*p >= end)
		return NULL;
	if (**p == '"') {
		char *v = take_value(p, end);
		return v ? v : xstrdup("");
	}
	const char *s = *p;
	while (*p < end && !strchr(" \t\r\n", **p))
		(*p)++;
	return xstrndup(s, *p - s);
}

/* Find credentials for exactly `host` (or the default entry when host is NULL). */
static int netrc_find(const char *buf, size_t len, const char *host, struct credentials *out)
{
	const char *p = buf, *end = buf + len;
	bool in_match = false, seen_match = false;
	char *tok;
	int ret = -ENOENT;

	memset(out, 0, sizeof(*out));
	while ((tok = netrc_token(&p, end)) != NULL) {
		if (strcmp(tok, "machine") == 0 || strcmp(tok, "default") == 0) {
			if (seen_match) {
				free(tok);
				break;
			}
			if (tok[0] == 'm') {
				char *m = netrc_token(&p, end);
				if (!m) {
					free(tok);
					ret = -EINVAL;
					break;
				}
				in_match = host && strcasecmp(m, host) == 0;
				free(m);
			} else {
				in_match = host == NULL;
			}
			seen_match = in_match;
		} else if (strcmp(tok, "login") == 0 || strcmp(tok, "password") == 0 ||
			   strcmp(tok, "account") == 0) {
			char *v = netrc_token(&p, end);
			if (!v) {
				free(tok);
				ret = -EINVAL;
				break;
			}
			if (in_match && tok[0] == 'l') {
				free(out->user);
				out->user = v;
			} else if (in_match && tok[0] == 'p') {
				if (out->password) {
					explicit_bzero(out->password, strlen(out->password));
					free(out->password);
				}
				out->password = v;
			} else {
				explicit_bzero(v, strlen(v));
				free(v);
			}
		} else if (strcmp(tok, "macdef") == 0) {
			/* A macro runs to the next blank line. */
			const char *bl = memmem(p, end - p, "\n\n", 2);
			p = bl ? bl + 2 : end;
		}
		free(tok);
	}
	if (ret == -EINVAL || !seen_match || !out->user) {
		credentials_release(out);
		return ret == -EINVAL ? ret : -ENOENT;
	}
	if (!out->password)
		out->password = xstrdup("");
	return 0;
}

int netrc_lookup(const char *path, const char *host, struct credentials *out)
{
	char *buf, *bare = NULL;
	size_t len;
	int ret = read_file(path, 1u << 20, &buf, &len);

	memset(out, 0, sizeof(*out));
	if (ret < 0)
		return ret == -ENOENT ? -ENOENT : ret;
	ret = netrc_find(buf, len, host, out);
	const char *colon = strrchr(host, ':');
	if (ret == -ENOENT && colon) {
		bare = xstrndup(host, colon - host);
		ret = netrc_find(buf, len, bare, out);
	}
	if (ret == -ENOENT)
		ret = netrc_find(buf, len, NULL, out);
	free(bare);
	explicit_bzero(buf, len);
	free(buf);
	return ret;
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
