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
 * (a later file overrides what an earlier one sets, section by section,
 * setting by setting), then the environment, then the command line. A list
 * (mirror) is one setting: the lines of one section are its value, which
 * replaces the list an earlier section or file gave; a section without
 * such lines keeps it. For a given registry host the
 * settings of its [host ...] section override the global ones of the same
 * files. Every value is checked as the command line checks it (both go
 * through setting_set; the keys, their scopes and checks are settings.def's);
 * a bad file is refused whole, with its name, the line and the reason.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "conffile.h"
#include "name.h"
#include "util.h"

struct parse {
	const char *name;      /* the file */
	unsigned line;
	unsigned lists;        /* the lists (T_URLS, by CF_* bit) this section has begun */
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
	snprintf(p->err, p->errlen, "%s:%u: %s", p->name, p->line, why);
	return -EINVAL;
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
	const struct setting *k = setting_by_key(key);

	if (!k) {
		snprintf(err, errlen, "unknown setting '%s'", key);
		return -EINVAL;
	}
	return setting_set(c, k, value, !(c->set & k->bit), label, err, errlen);
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
	p->lists = 0;
	if (strcasecmp(s, "global") == 0) {
		*cur = &cfg->global;
		*in_host = false;
		return 0;
	}
	if (strcasecmp(s, "host") == 0)
		return bad(p, "a [host NAME] section needs a registry host name");
	if (strncasecmp(s, "host", 4) == 0 && (s[4] == ' ' || s[4] == '\t')) {
		char *host = trim(s + 5), why[200];
		if (!*host || !name_part_check(NAME_HOST, host, why, sizeof(why)))
			return bad(p, "'%.100s' is not a registry host name (%s)", host, why);
		*cur = host_section(cfg, host);
		*in_host = true;
		return 0;
	}
	return bad(p, "unknown section '[%.100s]'", s);
}

/* "key = value" into the section being read. */
static int parse_setting(struct parse *p, struct conf *cur, bool in_host, char *s)
{
	char *eq = strchr(s, '='), label[64], why[256];
	const struct setting *k;

	if (!eq)
		return bad(p, "expected 'key = value'");
	*eq = '\0';
	cut_comment(eq + 1);
	char *key = trim(s), *val = trim(eq + 1);
	size_t vl = strlen(val);
	if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
		val[vl - 1] = '\0';
		val++;
	}
	k = setting_by_key(key);
	if (!k)
		return bad(p, "unknown setting '%.100s'", key);
	if (k->scope == SCOPE_GLOBAL && in_host)
		return bad(p, "'%s' is for the whole store, not one host", k->key);
	if (k->scope == SCOPE_HOST && !in_host)
		return bad(p, "'%s' belongs in a [host NAME] section", k->key);
	snprintf(label, sizeof(label), "'%s'", k->key);
	/* A list is one setting: a section's lines replace what came before. */
	if (setting_set(cur, k, val, !(p->lists & k->bit), label, why, sizeof(why)) < 0)
		return bad(p, "%s", why);
	p->lists |= k->bit;
	return 0;
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
	cur = &next.global;
	/* A UTF-8 byte order mark, as some editors write one, is not part of a key. */
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		pos += 3;
	if (memchr(pos, '\0', (size_t)(end - pos))) {
		p.line = 1;
		ret = bad(&p, "the file contains a NUL byte");
	}
	while (pos < end && ret == 0) {
		const char *nl = memchr(pos, '\n', end - pos);
		char *line = xstrndup(pos, nl ? (size_t)(nl - pos) : (size_t)(end - pos));
		char *s = trim(line);

		p.line++;
		pos = nl ? nl + 1 : end;
		if (*s == '[')
			ret = parse_section(&p, &next, s, &cur, &in_host);
		else if (*s && *s != '#' && *s != ';')
			ret = parse_setting(&p, cur, in_host, s);
		free(line);
	}
	if (ret < 0) {
		config_release(&next);
		return ret;
	}
	config_release(cfg);
	*cfg = next;
	return 0;
}

/*
 * Read a configuration file, which must be a regular file (or /dev/null, the
 * usual way to say "none"): opening a FIFO would block every command until
 * something wrote to it. -ENOENT if there is none; else, on an error, the
 * reason in err.
 */
static int read_config(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	struct stat st;
	int ret = 0;

	if (fd < 0)
		ret = -errno;
	else if (fstat(fd, &st) < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		ret = -errno;
	else if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3))
		ret = read_fd(fd, 0, buf, len);     /* /dev/null: empty */
	else if (!S_ISREG(st.st_mode))
		ret = -EFTYPE;
	else
		ret = read_fd(fd, 1u << 20, buf, len);
	if (fd >= 0)
		close(fd);
	if (ret < 0 && ret != -ENOENT)
		snprintf(err, errlen, "%s: %s", path, ret == -EFTYPE ? "not a regular file" :
			 ret == -EFBIG ? "larger than 1 MiB" : strerror(-ret));
	return ret;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	char *buf;
	size_t len;
	int ret = read_config(path, &buf, &len, err, errlen);

	if (ret == -ENOENT)
		return 0;
	if (ret < 0)
		return ret;
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
