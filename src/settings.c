/*
 * settings.c - the table of settings (from settings.def) and what is done to
 * every setting alike: defaults, merging layers, releasing, and setting one
 * from text with its check. Each is one loop over the table that switches on
 * the type, so a new setting is one line in settings.def.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "settings.h"
#include "util.h"

const struct setting settings[SETTING_COUNT] = {
#define SETTING(id, key_, member, type_, lo_, hi_, dflt_, scope_, opts_, cmds_, short_, \
		metavar_, unset_, help_)                                                  \
	[SI_##id] = {                                                                     \
		.key = key_, .bit = CF_##id, .type = type_,                               \
		.offset = offsetof(struct conf, member),                                  \
		.count_offset = type_ == T_URLS ? offsetof(struct conf, member) + sizeof(char **) : 0, \
		.lo = lo_, .hi = hi_, .dflt = dflt_, .scope = scope_, .opts = opts_,      \
		.cmds = cmds_, .short_opt = short_, .metavar = metavar_, .unset = unset_, \
		.help = help_,                                                            \
	},
#include "settings.def"
#undef SETTING
};

/* The count of a T_URLS list is the member after it (CONF_MEMBER_T_URLS). */
_Static_assert(offsetof(struct conf, nmirrors) == offsetof(struct conf, mirrors) + sizeof(char **),
	       "a list's count follows the list");

/* Members by type; T_URLS's count follows its list (CONF_MEMBER_T_URLS). */
#define MEMBER(c, s, T) ((T *)((char *)(c) + (s)->offset))
#define CMEMBER(c, s, T) ((T const *)((const char *)(c) + (s)->offset))
#define COUNT(c, s) ((size_t *)((char *)(c) + (s)->count_offset))

const struct setting *setting_by_key(const char *key)
{
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const char *a = settings[i].key, *b = key;
		while (*a && (*a == *b || (*a == '-' && *b == '_') ||
			      (*b >= 'A' && *b <= 'Z' && *a == *b - 'A' + 'a'))) {
			a++;
			b++;
		}
		if (!*a && !*b)
			return &settings[i];
	}
	return NULL;
}

const char *setting_option(const struct setting *s, bool mount, char *buf, size_t len)
{
	bool negated = s->type == T_BOOL && s->dflt;

	snprintf(buf, len, "%s%s%s", mount ? "" : "--", negated ? (mount ? "no_" : "no-") : "",
		 s->key);
	if (mount)
		for (char *p = buf; *p; p++)
			if (*p == '-')
				*p = '_';
	return buf;
}

/* 4096 → "4K", 16777216 → "16M": the largest unit that divides it. */
static void short_size(uint64_t v, char *buf, size_t len)
{
	static const char units[] = "KMGT";
	int u = -1;

	while (u < 3 && v && v % 1024 == 0) {
		v /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(buf, len, "%llu", (unsigned long long)v);
	else
		snprintf(buf, len, "%llu%c", (unsigned long long)v, units[u]);
}

const char *setting_default_text(const struct setting *s, char *buf, size_t len)
{
	if (s->dflt == 0 && s->type != T_BOOL)
		return s->unset ? s->unset : "";
	switch (s->type) {
	case T_BOOL:
		return s->dflt ? "yes" : "no";
	case T_SIZE:
	case T_POW2:
		short_size(s->dflt, buf, len);
		return buf;
	default:
		snprintf(buf, len, "%llu", (unsigned long long)s->dflt);
		return buf;
	}
}

const char *setting_range_text(const struct setting *s, char *buf, size_t len)
{
	char lo[24], hi[24];

	switch (s->type) {
	case T_COUNT:
	case T_SECONDS:
		snprintf(buf, len, "%llu to %llu", (unsigned long long)s->lo,
			 (unsigned long long)s->hi);
		return buf;
	case T_SIZE:
	case T_POW2:
		if (s->lo == 0 && s->hi == UINT64_MAX)
			return "";
		short_size(s->lo, lo, sizeof(lo));
		short_size(s->hi, hi, sizeof(hi));
		snprintf(buf, len, "%s to %s", lo, hi);
		return buf;
	default:
		return "";
	}
}

static void free_urls(struct conf *c, const struct setting *s)
{
	char **list = *MEMBER(c, s, char **);

	for (size_t i = 0; i < *COUNT(c, s); i++)
		free(list[i]);
	free(list);
	*MEMBER(c, s, char **) = NULL;
	*COUNT(c, s) = 0;
}

void conf_release(struct conf *c)
{
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const struct setting *s = &settings[i];
		if (s->type == T_PATH || s->type == T_SCHEME)
			free(*MEMBER(c, s, char *));
		else if (s->type == T_URLS)
			free_urls(c, s);
	}
	memset(c, 0, sizeof(*c));
}

/* Numbers, sizes and booleans are kept as a number of their member's type. */
static bool is_number(const struct setting *s)
{
	return s->type == T_COUNT || s->type == T_SECONDS || s->type == T_SIZE ||
	       s->type == T_POW2 || s->type == T_BOOL;
}

static void store_number(struct conf *c, const struct setting *s, uint64_t v)
{
	if (s->type == T_COUNT || s->type == T_SECONDS)
		*MEMBER(c, s, unsigned) = (unsigned)v;
	else if (s->type == T_BOOL)
		*MEMBER(c, s, bool) = v != 0;
	else
		*MEMBER(c, s, uint64_t) = v;
}

static uint64_t load_number(const struct conf *c, const struct setting *s)
{
	if (s->type == T_COUNT || s->type == T_SECONDS)
		return *CMEMBER(c, s, unsigned);
	if (s->type == T_BOOL)
		return *CMEMBER(c, s, bool);
	return *CMEMBER(c, s, uint64_t);
}

void conf_defaults(struct conf *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < SETTING_COUNT; i++)
		if (is_number(&settings[i]))
			store_number(c, &settings[i], settings[i].dflt);   /* strings, lists: none */
	c->set = ~0u;
}

static void set_str(char **dst, const char *src)
{
	free(*dst);
	*dst = src ? xstrdup(src) : NULL;
}

void conf_set_str(struct conf *c, enum conf_field field, const char *v)
{
	for (size_t i = 0; i < SETTING_COUNT; i++)
		if (settings[i].bit == field && (settings[i].type == T_PATH ||
						 settings[i].type == T_SCHEME)) {
			set_str(MEMBER(c, &settings[i], char *), v);
			c->set |= field;
		}
}

static void copy_value(struct conf *d, const struct conf *src, const struct setting *s)
{
	if (is_number(s)) {
		store_number(d, s, load_number(src, s));
	} else if (s->type == T_PATH || s->type == T_SCHEME) {
		set_str(MEMBER(d, s, char *), *CMEMBER(src, s, char *));
	} else {
		char *const *from = *CMEMBER(src, s, char **);
		size_t n = *COUNT((struct conf *)src, s);
		char **to = xcalloc(n + 1, sizeof(*to));
		for (size_t i = 0; i < n; i++)
			to[i] = xstrdup(from[i]);
		free_urls(d, s);
		*MEMBER(d, s, char **) = to;
		*COUNT(d, s) = n;
	}
}

void conf_merge(struct conf *d, const struct conf *src)
{
	for (size_t i = 0; i < SETTING_COUNT; i++)
		if (src->set & settings[i].bit)
			copy_value(d, src, &settings[i]);
	d->set |= src->set;
}

static int refuse(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int refuse(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static bool parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	return false;
}

/* A mirror is an absolute http(s) URL without query or fragment. */
static bool valid_url(const char *v)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *query = NULL, *frag = NULL;
	bool ok = false;

	if (u && curl_url_set(u, CURLUPART_URL, v, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) &&
	    curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_NO_QUERY &&
	    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_NO_FRAGMENT)
		ok = true;
	curl_free(scheme);
	curl_free(query);
	curl_free(frag);
	curl_url_cleanup(u);
	return ok;
}

static void add_url(struct conf *c, const struct setting *s, const char *v, bool fresh)
{
	char ***list = MEMBER(c, s, char **);
	size_t *n = COUNT(c, s);

	if (fresh)
		free_urls(c, s);
	*list = xrealloc(*list, (*n + 2) * sizeof(**list));
	(*list)[(*n)++] = xstrdup(v);
	(*list)[*n] = NULL;
}

/* A number or size in range, into the member; false if it is not one. */
static bool parse_number(const struct setting *s, const char *v, struct conf *c)
{
	uint64_t n;
	bool ok = s->type == T_COUNT || s->type == T_SECONDS ? parse_u64(v, strlen(v), &n)
							      : parse_size(v, &n) == 0;

	if (!ok || n < s->lo || n > s->hi || (s->type == T_POW2 && (n & (n - 1))))
		return false;
	store_number(c, s, n);
	return true;
}

int setting_set(struct conf *c, const struct setting *s, const char *v, bool fresh,
		const char *label, char *err, size_t errlen)
{
	char range[64];

	setting_range_text(s, range, sizeof(range));
	switch (s->type) {
	case T_PATH:
		if (!*v)
			return refuse(err, errlen, "%s wants a path", label);
		set_str(MEMBER(c, s, char *), v);
		break;
	case T_COUNT:
		if (!parse_number(s, v, c))
			return refuse(err, errlen, "%s wants a number from %s, not '%s'", label, range, v);
		break;
	case T_SECONDS:
		if (!parse_number(s, v, c))
			return refuse(err, errlen, "%s wants seconds from %s, not '%s'", label, range, v);
		break;
	case T_SIZE:
		if (!parse_number(s, v, c))
			return *range ? refuse(err, errlen, "%s wants a size from %s, not '%s'", label, range, v)
				      : refuse(err, errlen, "%s wants a size such as 200G, not '%s'", label, v);
		break;
	case T_POW2:
		if (!parse_number(s, v, c))
			return refuse(err, errlen, "%s wants a power of two from %s, not '%s'", label,
				      range, v);
		break;
	case T_BOOL:
		if (!parse_bool(v, MEMBER(c, s, bool)))
			return refuse(err, errlen, "%s wants yes or no, not '%s'", label, v);
		break;
	case T_SCHEME:
		if (strcmp(v, "http") != 0 && strcmp(v, "https") != 0)
			return refuse(err, errlen, "%s wants http or https, not '%s'", label, v);
		set_str(MEMBER(c, s, char *), v);
		break;
	case T_URLS:
		if (!valid_url(v))
			return refuse(err, errlen, "%s wants an http:// or https:// URL, not '%s'",
				      label, v);
		add_url(c, s, v, fresh);
		break;
	}
	c->set |= s->bit;
	return 0;
}
