/*
 * name.c - model names.
 *
 * The grammar and defaults are Ollama's: [scheme://][host/][namespace/]name[:tag]
 * with host registry.ollama.ai, namespace library and tag latest. The string is
 * cut from the right: a ':' after the last '/' starts the tag, then '/'
 * separates name, namespace and host. Every part is checked against its
 * character class, and no part may begin with '.', so a valid name is always a
 * safe relative path of four components: it can never escape the store.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "name.h"

/* Quote at most this much of a bad input in a message. */
#define MIN_LEN(l) ((l) < 120 ? (l) : 120)

static const char *const part_label[] = { "host", "namespace", "name", "tag" };
static const size_t part_max[] = { NAME_HOST_MAX, NAME_PART_MAX, NAME_PART_MAX, NAME_PART_MAX };

static bool is_alnum_(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_';
}

static bool part_char_ok(enum name_part part, char c)
{
	if (is_alnum_(c) || c == '-')
		return true;
	switch (part) {
	case NAME_HOST: return c == '.' || c == ':';
	case NAME_NAMESPACE: return false;
	default: return c == '.';
	}
}

/* A host's ":port", if it has one: one colon, then 1 to 65535. */
static bool check_port(const char *s, size_t len, char *err, size_t errlen)
{
	const char *colon = memchr(s, ':', len);
	unsigned long port = 0;
	size_t digits;

	if (!colon)
		return true;
	digits = len - (size_t)(colon + 1 - s);
	for (size_t i = 0; i < digits && port <= 65535; i++) {
		char c = colon[1 + i];
		if (c < '0' || c > '9') {
			port = 0;
			break;
		}
		port = port * 10 + (unsigned long)(c - '0');
	}
	if (digits > 0 && port >= 1 && port <= 65535)
		return true;
	snprintf(err, errlen, "host '%.*s' has no port from 1 to 65535 after its ':'",
		 (int)MIN_LEN(len), s);
	return false;
}

/* Validate one part; on failure describe the problem in err. */
static bool check_part(enum name_part part, const char *s, size_t len,
		       char *err, size_t errlen)
{
	const char *label = part_label[part];

	if (len == 0) {
		snprintf(err, errlen, "%s is empty", label);
		return false;
	}
	if (len > part_max[part]) {
		snprintf(err, errlen, "%s is longer than %zu characters", label,
			 part_max[part]);
		return false;
	}
	if (!is_alnum_(s[0])) {
		snprintf(err, errlen, "%s '%.*s' must start with a letter, digit or '_'",
			 label, (int)MIN_LEN(len), s);
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];
		if (part_char_ok(part, c))
			continue;
		if (c < 0x20 || c >= 0x7f)
			snprintf(err, errlen, "%s contains the byte 0x%02x", label, c);
		else
			snprintf(err, errlen, "%s '%.*s' contains '%c'", label,
				 (int)MIN_LEN(len), s, c);
		return false;
	}
	return part != NAME_HOST || check_port(s, len, err, errlen);
}

bool name_part_check(enum name_part part, const char *s, char *err, size_t errlen)
{
	return check_part(part, s, strlen(s), err, errlen);
}

bool name_part_valid(enum name_part part, const char *s)
{
	char err[1];

	return name_part_check(part, s, err, sizeof(err));
}

static void copy_part(char *dst, const char *s, size_t len)
{
	memcpy(dst, s, len);
	dst[len] = '\0';
}

/*
 * An optional leading "http://" or "https://" (any case) goes to n->scheme in
 * lowercase; *rest is what follows it. Any other scheme is refused.
 */
static int take_scheme(const char *s, struct model_name *n, const char **rest,
		       char *err, size_t errlen)
{
	const char *sep = strstr(s, "://");
	size_t sl;

	*rest = s;
	if (!sep)
		return 0;
	sl = sep - s;
	if (!(sl == 4 && strncasecmp(s, "http", 4) == 0) &&
	    !(sl == 5 && strncasecmp(s, "https", 5) == 0)) {
		snprintf(err, errlen, "invalid model name '%s': scheme '%.*s' is not http or https",
			 s, (int)MIN_LEN(sl), s);
		return -EINVAL;
	}
	for (size_t i = 0; i < sl; i++)
		n->scheme[i] = (char)(s[i] | 0x20);
	*rest = sep + 3;
	return 0;
}

/*
 * Split [p, end) at '/' from the right into at most three parts, the last
 * part first. Returns how many; 4 means there were more than three.
 */
static size_t split_parts(const char *p, const char *end, const char *parts[3], size_t lens[3])
{
	size_t nparts = 0;

	while (nparts < 3) {
		const char *q = end;
		while (q > p && q[-1] != '/')
			q--;
		parts[nparts] = q;
		lens[nparts] = end - q;
		nparts++;
		if (q == p)
			break;
		end = q - 1;
		if (nparts == 3)
			return 4;
	}
	return nparts;
}

int name_parse(const char *s, struct model_name *n, char *err, size_t errlen)
{
	const char *parts[3];
	size_t lens[3], nparts;
	const char *p, *end, *colon, *slash;
	char why[200];

	memset(n, 0, sizeof(*n));
	if (!s || !*s) {
		snprintf(err, errlen, "model name is empty");
		return -EINVAL;
	}
	end = s + strlen(s);
	if (take_scheme(s, n, &p, err, errlen) < 0)
		return -EINVAL;

	colon = strrchr(p, ':');
	slash = strrchr(p, '/');
	if (colon && (!slash || colon > slash)) {
		if (!check_part(NAME_TAG, colon + 1, end - colon - 1, why, sizeof(why)))
			goto bad;
		copy_part(n->tag, colon + 1, end - colon - 1);
		end = colon;
	} else {
		strcpy(n->tag, NAME_DEFAULT_TAG);
	}

	nparts = split_parts(p, end, parts, lens);
	if (nparts > 3) {
		snprintf(why, sizeof(why), "too many '/' separated parts "
			 "(the form is host/namespace/name:tag)");
		goto bad;
	}

	static const enum name_part order[] = { NAME_MODEL, NAME_NAMESPACE, NAME_HOST };
	char *dst[] = { n->model, n->ns, n->host };
	for (size_t i = 0; i < nparts; i++) {
		if (!check_part(order[i], parts[i], lens[i], why, sizeof(why)))
			goto bad;
		copy_part(dst[i], parts[i], lens[i]);
	}
	if (nparts < 3)
		strcpy(n->host, NAME_DEFAULT_HOST);
	if (nparts < 2)
		strcpy(n->ns, NAME_DEFAULT_NAMESPACE);
	return 0;

bad:
	snprintf(err, errlen, "invalid model name '%.*s': %s",
		 (int)MIN_LEN(strlen(s)), s, why);
	return -EINVAL;
}

void name_format(const struct model_name *n, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/%s:%s", n->host, n->ns, n->model, n->tag);
}

void name_format_short(const struct model_name *n, char *buf, size_t len)
{
	if (strcasecmp(n->host, NAME_DEFAULT_HOST) != 0)
		snprintf(buf, len, "%s/%s/%s:%s", n->host, n->ns, n->model, n->tag);
	else if (strcasecmp(n->ns, NAME_DEFAULT_NAMESPACE) != 0)
		snprintf(buf, len, "%s/%s:%s", n->ns, n->model, n->tag);
	else
		snprintf(buf, len, "%s:%s", n->model, n->tag);
}

bool name_equal(const struct model_name *a, const struct model_name *b)
{
	return strcasecmp(a->host, b->host) == 0 && strcasecmp(a->ns, b->ns) == 0 &&
	       strcasecmp(a->model, b->model) == 0 && strcasecmp(a->tag, b->tag) == 0;
}
