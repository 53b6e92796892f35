/*
 * conffile.c - the configuration file.
 *
 *   # comments start with '#' or ';'
 *   connections = 16          # global settings, before any section
 *   max-cache = 200G
 *
 *   [host registry.ollama.ai]
 *   mirror = http://cache.internal:5000     # tried in order before the host
 *   mirror = https://mirror.example.com
 *   cacert = /etc/ssl/certs/internal-ca.pem
 *
 * Settings are layered: defaults, then the system file, then the user file
 * (a later file overrides what an earlier one sets, section by section),
 * then the environment, then the command line. For a given registry host the
 * settings of its [host ...] section override the global ones of the same
 * files. Every value is checked as the command line checks it; a bad file is
 * refused whole, with its name, the line and the reason.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "conffile.h"
#include "name.h"
#include "util.h"

struct key {
	const char *name;
	enum conf_field field;
	bool global_only, host_only;
};

static const struct key keys[] = {
	{ "store", CF_STORE, true, false },
	{ "max-cache", CF_MAX_CACHE, true, false },
	{ "connections", CF_CONNECTIONS, false, false },
	{ "chunk-size", CF_CHUNK_SIZE, false, false },
	{ "request-size", CF_REQUEST_SIZE, false, false },
	{ "stall-timeout", CF_STALL_TIMEOUT, false, false },
	{ "read-timeout", CF_READ_TIMEOUT, true, false },
	{ "connect-timeout", CF_CONNECT_TIMEOUT, false, false },
	{ "retries", CF_RETRIES, false, false },
	{ "insecure", CF_INSECURE, false, false },
	{ "cacert", CF_CACERT, false, false },
	{ "credentials", CF_CREDENTIALS, false, false },
	{ "chunksums", CF_CHUNKSUMS, false, false },
	{ "mirror", CF_MIRRORS, false, true },
	{ "scheme", CF_SCHEME, false, true },
	{ "netrc", CF_NETRC, false, false },
};

struct parse {
	const char *name;      /* the file, or NULL (a setting from the command line) */
	unsigned line;
	const char *label;     /* how the setting is named in messages */
	char *err;
	size_t errlen;
};

static int bad(struct parse *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(struct parse *p, const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (p->name)
		snprintf(p->err, p->errlen, "%s:%u: %s", p->name, p->line, why);
	else
		snprintf(p->err, p->errlen, "%s", why);
	return -EINVAL;
}

void conf_release(struct conf *c)
{
	free(c->store);
	free(c->cacert);
	free(c->credentials);
	free(c->scheme);
	for (size_t i = 0; i < c->nmirrors; i++)
		free(c->mirrors[i]);
	free(c->mirrors);
	memset(c, 0, sizeof(*c));
}

void config_release(struct config *cfg)
{
	conf_release(&cfg->global);
	for (size_t i = 0; i < cfg->nhosts; i++) {
		free(cfg->hosts[i].host);
		conf_release(&cfg->hosts[i].c);
	}
	free(cfg->hosts);
	memset(cfg, 0, sizeof(*cfg));
}

static void set_str(char **dst, const char *src)
{
	free(*dst);
	*dst = src ? xstrdup(src) : NULL;
}

void conf_set_str(struct conf *c, enum conf_field field, const char *v)
{
	set_str(field == CF_STORE ? &c->store : field == CF_CACERT ? &c->cacert :
		field == CF_CREDENTIALS ? &c->credentials : &c->scheme, v);
	c->set |= field;
}

void conf_defaults(struct conf *c)
{
	memset(c, 0, sizeof(*c));
	c->connections = 16;
	c->chunk_size = 0;             /* by blob size */
	c->request_size = 16u << 20;
	c->stall_timeout_s = 20;
	c->read_timeout_s = 60;
	c->connect_timeout_s = 10;
	c->retries = 6;
	c->chunksums = true;
	c->netrc = true;
	c->set = ~0u;
}

void conf_merge(struct conf *d, const struct conf *s)
{
	if (s->set & CF_STORE) set_str(&d->store, s->store);
	if (s->set & CF_CONNECTIONS) d->connections = s->connections;
	if (s->set & CF_CHUNK_SIZE) d->chunk_size = s->chunk_size;
	if (s->set & CF_REQUEST_SIZE) d->request_size = s->request_size;
	if (s->set & CF_STALL_TIMEOUT) d->stall_timeout_s = s->stall_timeout_s;
	if (s->set & CF_READ_TIMEOUT) d->read_timeout_s = s->read_timeout_s;
	if (s->set & CF_CONNECT_TIMEOUT) d->connect_timeout_s = s->connect_timeout_s;
	if (s->set & CF_RETRIES) d->retries = s->retries;
	if (s->set & CF_INSECURE) d->insecure = s->insecure;
	if (s->set & CF_CACERT) set_str(&d->cacert, s->cacert);
	if (s->set & CF_CREDENTIALS) set_str(&d->credentials, s->credentials);
	if (s->set & CF_CHUNKSUMS) d->chunksums = s->chunksums;
	if (s->set & CF_MAX_CACHE) d->max_cache = s->max_cache;
	if (s->set & CF_SCHEME) set_str(&d->scheme, s->scheme);
	if (s->set & CF_NETRC) d->netrc = s->netrc;
	if (s->set & CF_MIRRORS) {
		for (size_t i = 0; i < d->nmirrors; i++)
			free(d->mirrors[i]);
		free(d->mirrors);
		d->nmirrors = s->nmirrors;
		d->mirrors = xcalloc(s->nmirrors + 1, sizeof(*d->mirrors));
		for (size_t i = 0; i < s->nmirrors; i++)
			d->mirrors[i] = xstrdup(s->mirrors[i]);
	}
	d->set |= s->set;
}

static struct conf *host_section(struct config *cfg, const char *host)
{
	for (size_t i = 0; i < cfg->nhosts; i++)
		if (strcasecmp(cfg->hosts[i].host, host) == 0)
			return &cfg->hosts[i].c;
	cfg->hosts = xrealloc(cfg->hosts, (cfg->nhosts + 1) * sizeof(*cfg->hosts));
	memset(&cfg->hosts[cfg->nhosts], 0, sizeof(*cfg->hosts));
	cfg->hosts[cfg->nhosts].host = xstrdup(host);
	return &cfg->hosts[cfg->nhosts++].c;
}

void config_for_host(const struct config *cfg, const char *host, struct conf *out)
{
	memset(out, 0, sizeof(*out));
	conf_merge(out, &cfg->global);
	for (size_t i = 0; i < cfg->nhosts; i++)
		if (strcasecmp(cfg->hosts[i].host, host) == 0)
			conf_merge(out, &cfg->hosts[i].c);
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

static bool parse_uint_range(const char *v, unsigned lo, unsigned hi, unsigned *out)
{
	uint64_t n;

	if (!parse_u64(v, strlen(v), &n) || n < lo || n > hi)
		return false;
	*out = (unsigned)n;
	return true;
}

/* A mirror is an absolute http(s) URL without query or fragment. */
static bool valid_mirror(const char *v)
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

static int set_value(struct parse *p, struct conf *c, const struct key *k, const char *v)
{
	uint64_t size;

	switch (k->field) {
	case CF_STORE:
	case CF_CACERT:
	case CF_CREDENTIALS:
		if (!*v)
			return bad(p, "%s wants a path", p->label);
		set_str(k->field == CF_STORE ? &c->store :
			k->field == CF_CACERT ? &c->cacert : &c->credentials, v);
		break;
	case CF_CONNECTIONS:
		if (!parse_uint_range(v, 1, 256, &c->connections))
			return bad(p, "%s wants a number from 1 to 256, not '%s'", p->label, v);
		break;
	case CF_RETRIES:
		if (!parse_uint_range(v, 1, 100, &c->retries))
			return bad(p, "%s wants a number from 1 to 100, not '%s'", p->label, v);
		break;
	case CF_STALL_TIMEOUT:
		if (!parse_uint_range(v, 1, 3600, &c->stall_timeout_s))
			return bad(p, "%s wants seconds from 1 to 3600, not '%s'", p->label, v);
		break;
	case CF_CONNECT_TIMEOUT:
		if (!parse_uint_range(v, 1, 600, &c->connect_timeout_s))
			return bad(p, "%s wants seconds from 1 to 600, not '%s'", p->label, v);
		break;
	case CF_READ_TIMEOUT:
		if (!parse_uint_range(v, 1, 86400, &c->read_timeout_s))
			return bad(p, "%s wants seconds from 1 to 86400, not '%s'", p->label, v);
		break;
	case CF_CHUNK_SIZE:
		if (parse_size(v, &size) < 0 || size < 4096 || size > (1ULL << 30) ||
		    (size & (size - 1)))
			return bad(p, "%s wants a power of two from 4K to 1G, not '%s'", p->label, v);
		c->chunk_size = size;
		break;
	case CF_REQUEST_SIZE:
		if (parse_size(v, &size) < 0 || size < 4096 || size > (1ULL << 34))
			return bad(p, "%s wants a size from 4K to 16G, not '%s'", p->label, v);
		c->request_size = size;
		break;
	case CF_MAX_CACHE:
		if (parse_size(v, &size) < 0)
			return bad(p, "%s wants a size such as 200G, not '%s'", p->label, v);
		c->max_cache = size;
		break;
	case CF_INSECURE:
		if (!parse_bool(v, &c->insecure))
			return bad(p, "%s wants yes or no, not '%s'", p->label, v);
		break;
	case CF_CHUNKSUMS:
		if (!parse_bool(v, &c->chunksums))
			return bad(p, "%s wants yes or no, not '%s'", p->label, v);
		break;
	case CF_NETRC:
		if (!parse_bool(v, &c->netrc))
			return bad(p, "%s wants yes or no, not '%s'", p->label, v);
		break;
	case CF_SCHEME:
		if (strcmp(v, "http") != 0 && strcmp(v, "https") != 0)
			return bad(p, "%s wants http or https, not '%s'", p->label, v);
		set_str(&c->scheme, v);
		break;
	case CF_MIRRORS:
		if (!valid_mirror(v))
			return bad(p, "%s wants an http:// or https:// URL, not '%s'", p->label, v);
		if (!(c->set & CF_MIRRORS)) {
			/* The first mirror line of a file replaces what earlier files said. */
			for (size_t i = 0; i < c->nmirrors; i++)
				free(c->mirrors[i]);
			c->nmirrors = 0;
		}
		c->mirrors = xrealloc(c->mirrors, (c->nmirrors + 2) * sizeof(*c->mirrors));
		c->mirrors[c->nmirrors++] = xstrdup(v);
		c->mirrors[c->nmirrors] = NULL;
		break;
	}
	c->set |= k->field;
	return 0;
}

/* Cut a comment that follows a blank ("value   # why"), outside double quotes. */
static void cut_comment(char *s)
{
	bool quoted = false;

	for (char *p = s; *p; p++) {
		if (*p == '"')
			quoted = !quoted;
		else if (!quoted && (*p == '#' || *p == ';') && p > s &&
			 (p[-1] == ' ' || p[-1] == '\t')) {
			*p = '\0';
			return;
		}
	}
}

int conf_set(struct conf *c, const char *key, const char *value, const char *label,
	     char *err, size_t errlen)
{
	struct parse p = { .label = label, .err = err, .errlen = errlen };
	char norm[32];

	snprintf(norm, sizeof(norm), "%s", key);
	for (char *q = norm; *q; q++)
		if (*q == '_')
			*q = '-';
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		if (strcasecmp(norm, keys[i].name) == 0)
			return set_value(&p, c, &keys[i], value);
	return bad(&p, "unknown setting '%s'", key);
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		e--;
	*e = '\0';
	return s;
}

/* "[global]" or "[host NAME]"; sets *cur. */
static int parse_section(struct parse *p, struct config *cfg, char *s, struct conf **cur,
			 bool *in_host)
{
	char *end = strchr(s, ']');

	if (!end || *trim(end + 1))
		return bad(p, "a section is written [global] or [host NAME]");
	*end = '\0';
	s = trim(s + 1);
	if (strcasecmp(s, "global") == 0) {
		*cur = &cfg->global;
		*in_host = false;
		return 0;
	}
	if (strcasecmp(s, "host") == 0)
		return bad(p, "a [host NAME] section needs a registry host name");
	if (strncasecmp(s, "host", 4) == 0 && (s[4] == ' ' || s[4] == '\t')) {
		char *host = trim(s + 5);
		if (!*host || strlen(host) > NAME_HOST_MAX || !name_part_valid(NAME_HOST, host))
			return bad(p, "'%.100s' is not a registry host name", host);
		*cur = host_section(cfg, host);
		(*cur)->set &= ~CF_MIRRORS;   /* mirrors in this file replace earlier ones */
		*in_host = true;
		return 0;
	}
	return bad(p, "unknown section '[%.100s]'", s);
}

int config_load_text(struct config *cfg, const char *name, const char *text, size_t len,
		     char *err, size_t errlen)
{
	struct parse p = { .name = name, .err = err, .errlen = errlen };
	struct config next;
	struct conf *cur;
	bool in_host = false;
	const char *pos = text, *end = text + len;
	int ret = 0;

	/* Parse into a copy, so a bad file changes nothing. */
	memset(&next, 0, sizeof(next));
	conf_merge(&next.global, &cfg->global);
	for (size_t i = 0; i < cfg->nhosts; i++)
		conf_merge(host_section(&next, cfg->hosts[i].host), &cfg->hosts[i].c);
	next.global.set &= ~CF_MIRRORS;
	cur = &next.global;
	if (memchr(text, '\0', len)) {
		p.line = 1;
		ret = bad(&p, "the file contains a NUL byte");
		goto out;
	}
	while (pos < end && ret == 0) {
		const char *nl = memchr(pos, '\n', end - pos);
		char *line = xstrndup(pos, nl ? (size_t)(nl - pos) : (size_t)(end - pos));
		char *s = trim(line), *eq;
		const struct key *k = NULL;

		p.line++;
		pos = nl ? nl + 1 : end;
		if (!*s || *s == '#' || *s == ';') {
			free(line);
			continue;
		}
		if (*s == '[') {
			ret = parse_section(&p, &next, s, &cur, &in_host);
			free(line);
			continue;
		}
		eq = strchr(s, '=');
		if (!eq) {
			ret = bad(&p, "expected 'key = value'");
			free(line);
			continue;
		}
		*eq = '\0';
		cut_comment(eq + 1);
		char *key = trim(s), *val = trim(eq + 1);
		size_t vl = strlen(val);
		if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
			val[vl - 1] = '\0';
			val++;
		}
		for (char *q = key; *q; q++)
			if (*q == '_')
				*q = '-';
		for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
			if (strcasecmp(key, keys[i].name) == 0)
				k = &keys[i];
		if (!k)
			ret = bad(&p, "unknown setting '%.100s'", key);
		else if (k->global_only && in_host)
			ret = bad(&p, "'%s' is for the whole store, not one host", k->name);
		else if (k->host_only && !in_host)
			ret = bad(&p, "'%s' belongs in a [host NAME] section", k->name);
		else {
			char label[64];
			snprintf(label, sizeof(label), "'%s'", k->name);
			p.label = label;
			ret = set_value(&p, cur, k, val);
		}
		free(line);
	}
out:
	if (ret < 0) {
		config_release(&next);
		return ret;
	}
	config_release(cfg);
	*cfg = next;
	return 0;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	char *buf;
	size_t len;
	int ret = read_file(path, 1u << 20, &buf, &len);

	if (ret == -ENOENT)
		return 0;
	if (ret < 0) {
		snprintf(err, errlen, "%s: %s", path, ret == -EFBIG ? "larger than 1 MiB" : strerror(-ret));
		return ret;
	}
	ret = config_load_text(cfg, path, buf, len, err, errlen);
	free(buf);
	return ret;
}

int config_load_default(struct config *cfg, char *err, size_t errlen)
{
	const char *only = getenv("BLOBFS_CONFIG");
	const char *xdg = getenv("XDG_CONFIG_HOME");
	const char *home = getenv("HOME");
	char *user;
	int ret;

	if (only && *only) {
		ret = config_load_file(cfg, only, err, errlen);
		if (ret == 0 && access(only, R_OK) < 0) {
			snprintf(err, errlen, "%s (from BLOBFS_CONFIG): %s", only, strerror(errno));
			ret = -errno;
		}
		return ret;
	}
	ret = config_load_file(cfg, "/etc/blobfs/config", err, errlen);
	if (ret < 0)
		return ret;
	if (xdg && *xdg == '/')
		user = xasprintf("%s/blobfs/config", xdg);
	else if (home && *home)
		user = xasprintf("%s/.config/blobfs/config", home);
	else
		return 0;
	ret = config_load_file(cfg, user, err, errlen);
	free(user);
	return ret;
}
