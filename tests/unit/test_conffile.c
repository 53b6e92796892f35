/*
 * test_conffile.c - the configuration file (conffile.h): its syntax, every
 * refusal naming the file and the line, layering of files and sections, and
 * the precedence the session builds on it (tested through session_conf in
 * the integration tests).
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "conffile.h"
#include "session.h"
#include "testutil.h"

static int load(struct config *cfg, const char *text, char *err, size_t errlen)
{
	return config_load_text(cfg, "test.conf", text, strlen(text), err, errlen);
}

static void test_globals_and_host_sections(void **state)
{
	struct config cfg = { 0 };
	struct conf c;
	char err[256] = "";
	const char *text =
		"# a comment\n"
		"; another\n"
		"connections = 32\n"
		"max_cache = 200G\n"
		"request-size = 8M\n"
		"\n"
		"[host Registry.Example.com:5000]\n"
		"mirror = http://cache.internal:5000\n"
		"mirror = https://mirror.example.com/prefix/\n"
		"cacert = \"/etc/ssl/ca.pem\"\n"
		"insecure = yes\n"
		"connections = 4\n"
		"[global]\n"
		"stall-timeout = 7   # end-of-line comments are allowed\n"
		"credentials = \"/etc/blobfs/creds#1\"  ; a # inside quotes is kept\n";

	(void)state;
	assert_int_equal(load(&cfg, text, err, sizeof(err)), 0);
	assert_int_equal(cfg.global.connections, 32);
	assert_int_equal(cfg.global.max_cache, 200ULL << 30);
	assert_int_equal(cfg.global.request_size, 8u << 20);
	assert_int_equal(cfg.global.stall_timeout_s, 7);
	assert_string_equal(cfg.global.credentials, "/etc/blobfs/creds#1");
	assert_true(cfg.global.set & CF_STALL_TIMEOUT);
	assert_false(cfg.global.set & CF_CACERT);

	config_for_host(&cfg, "registry.example.com:5000", &c);  /* case-insensitive */
	assert_int_equal(c.connections, 4);
	assert_int_equal(c.stall_timeout_s, 7);
	assert_true(c.insecure);
	assert_string_equal(c.cacert, "/etc/ssl/ca.pem");
	assert_int_equal(c.nmirrors, 2);
	assert_string_equal(c.mirrors[0], "http://cache.internal:5000");
	assert_string_equal(c.mirrors[1], "https://mirror.example.com/prefix/");
	conf_release(&c);

	config_for_host(&cfg, "other.example.com", &c);
	assert_int_equal(c.connections, 32);
	assert_int_equal(c.nmirrors, 0);
	assert_false(c.set & CF_INSECURE);
	conf_release(&c);
	config_release(&cfg);
}

static void test_later_file_overrides_earlier(void **state)
{
	struct config cfg = { 0 };
	struct conf c;
	char err[256];

	(void)state;
	assert_int_equal(load(&cfg, "connections = 8\nretries = 3\n"
			      "[host h]\nmirror = http://a\nmirror = http://b\n", err, sizeof(err)), 0);
	assert_int_equal(load(&cfg, "connections = 12\n[host h]\nmirror = http://c\n",
			      err, sizeof(err)), 0);
	config_for_host(&cfg, "h", &c);
	assert_int_equal(c.connections, 12);   /* the later file */
	assert_int_equal(c.retries, 3);        /* kept: the later file does not say */
	assert_int_equal(c.nmirrors, 1);       /* mirrors of a later file replace the list */
	assert_string_equal(c.mirrors[0], "http://c");
	conf_release(&c);
	config_release(&cfg);
}

static void test_bad_file_changes_nothing(void **state)
{
	struct config cfg = { 0 };
	char err[256];

	(void)state;
	assert_int_equal(load(&cfg, "connections = 8\n", err, sizeof(err)), 0);
	assert_int_equal(load(&cfg, "connections = 9\nbogus = 1\n", err, sizeof(err)), -EINVAL);
	assert_int_equal(cfg.global.connections, 8);
	config_release(&cfg);
}

struct refusal {
	const char *text;
	const char *where;   /* "test.conf:LINE:" */
	const char *why;
};

static void test_refusals_name_file_line_and_reason(void **state)
{
	static const struct refusal cases[] = {
		{ "bogus = 1\n", "test.conf:1:", "unknown setting 'bogus'" },
		{ "\n\nconnections = 0\n", "test.conf:3:", "'connections' wants a number from 1 to 256" },
		{ "connections = lots\n", "test.conf:1:", "not 'lots'" },
		{ "retries = 101\n", "test.conf:1:", "'retries'" },
		{ "chunk-size = 100K\n", "test.conf:1:", "power of two" },
		{ "request-size = 1K\n", "test.conf:1:", "'request-size'" },
		{ "max-cache = huge\n", "test.conf:1:", "'max-cache'" },
		{ "insecure = maybe\n", "test.conf:1:", "yes or no" },
		{ "mirror = http://x\n", "test.conf:1:", "belongs in a [host NAME] section" },
		{ "[host h]\nstore = /x\n", "test.conf:2:", "for the whole store" },
		{ "[host h]\nmax-cache = 1G\n", "test.conf:2:", "for the whole store" },
		{ "[host h]\nread-timeout = 5\n", "test.conf:2:", "for the whole store" },
		{ "[host h]\nmirror = ftp://x\n", "test.conf:2:", "http:// or https://" },
		{ "[host h]\nmirror = http://x/?q=1\n", "test.conf:2:", "http:// or https://" },
		{ "[host h]\nscheme = gopher\n", "test.conf:2:", "http or https" },
		{ "[host ../etc]\n", "test.conf:1:", "not a registry host name" },
		{ "[host ]\n", "test.conf:1:", "needs a registry host name" },
		{ "[host a:99999999]\n", "test.conf:1:", "no port from 1 to 65535" },
		{ "[hosts h]\n", "test.conf:1:", "unknown section" },
		{ "[global\n", "test.conf:1:", "a section is written" },
		{ "just words\n", "test.conf:1:", "expected 'key = value'" },
		{ "cacert =\n", "test.conf:1:", "wants a path" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct config cfg = { 0 };
		char err[256] = "";
		assert_int_equal(load(&cfg, cases[i].text, err, sizeof(err)), -EINVAL);
		assert_contains(err, cases[i].where);
		assert_contains(err, cases[i].why);
		config_release(&cfg);
	}
}

static void test_byte_order_mark_is_skipped(void **state)
{
	struct config cfg = { 0 };
	char err[256] = "";

	(void)state;
	assert_int_equal(load(&cfg, "\xef\xbb\xbfretries = 3\n", err, sizeof(err)), 0);
	assert_int_equal(cfg.global.retries, 3);
	/* only at the very start: elsewhere it is part of a key, and named */
	assert_int_equal(load(&cfg, "retries = 3\n\xef\xbb\xbf" "connections = 2\n", err,
			      sizeof(err)), -EINVAL);
	assert_contains(err, "test.conf:2: unknown setting");
	config_release(&cfg);
}

static void test_nul_byte_refused(void **state)
{
	struct config cfg = { 0 };
	char err[256];
	static const char text[] = "connections = 4\n\0\n";

	(void)state;
	assert_int_equal(config_load_text(&cfg, "nul.conf", text, sizeof(text) - 1, err,
					  sizeof(err)), -EINVAL);
	assert_contains(err, "NUL");
	config_release(&cfg);
}

static void test_files_missing_bad_and_env(void **state)
{
	char *dir = tu_mkdtemp();
	char *good = NULL, *bad = NULL, err[512];
	struct config cfg = { 0 };

	(void)state;
	assert_true(asprintf(&good, "%s/good", dir) > 0);
	assert_true(asprintf(&bad, "%s/bad", dir) > 0);
	FILE *f = fopen(good, "w");
	fputs("retries = 2\n", f);
	fclose(f);
	f = fopen(bad, "w");
	fputs("retries = 2\nnope\n", f);
	fclose(f);

	assert_int_equal(config_load_file(&cfg, "/nonexistent/blobfs/config", err, sizeof(err)), 0);
	assert_int_equal(config_load_file(&cfg, good, err, sizeof(err)), 0);
	assert_int_equal(cfg.global.retries, 2);
	assert_int_equal(config_load_file(&cfg, bad, err, sizeof(err)), -EINVAL);
	assert_contains(err, bad);
	assert_contains(err, ":2:");

	/* BLOBFS_CONFIG names the only file, and it must exist. */
	config_release(&cfg);
	setenv("BLOBFS_CONFIG", good, 1);
	assert_int_equal(config_load_default(&cfg, err, sizeof(err)), 0);
	assert_int_equal(cfg.global.retries, 2);
	config_release(&cfg);
	setenv("BLOBFS_CONFIG", "/nonexistent/blobfs.conf", 1);
	assert_true(config_load_default(&cfg, err, sizeof(err)) < 0);
	assert_contains(err, "BLOBFS_CONFIG");
	unsetenv("BLOBFS_CONFIG");
	config_release(&cfg);

	free(good);
	free(bad);
	assert_int_equal(tu_rm_rf(dir), 0);
	free(dir);
}

static void test_defaults_and_merge(void **state)
{
	struct conf d, over = { 0 };

	(void)state;
	conf_defaults(&d);
	assert_int_equal(d.connections, 16);
	assert_int_equal(d.request_size, 16u << 20);
	assert_int_equal(d.retries, 6);
	assert_true(d.chunksums);
	assert_true(d.netrc);
	assert_false(d.insecure);
	over.retries = 2;
	over.set = CF_RETRIES;
	conf_set_str(&over, CF_CACERT, "/ca.pem");
	conf_merge(&d, &over);
	assert_int_equal(d.retries, 2);
	assert_int_equal(d.connections, 16);
	assert_string_equal(d.cacert, "/ca.pem");
	conf_release(&d);
	conf_release(&over);
}

static void test_later_section_without_mirrors_keeps_them(void **state)
{
	struct config cfg = { 0 };
	struct conf c;
	char err[256];

	(void)state;
	/* the system file gives the mirrors; the user's section says something else */
	assert_int_equal(load(&cfg, "[host h]\nmirror = http://m1\nmirror = http://m2\n",
			      err, sizeof(err)), 0);
	assert_int_equal(load(&cfg, "[host h]\nconnections = 4\n", err, sizeof(err)), 0);
	config_for_host(&cfg, "h", &c);
	assert_int_equal(c.connections, 4);
	assert_int_equal(c.nmirrors, 2);
	assert_string_equal(c.mirrors[0], "http://m1");
	assert_string_equal(c.mirrors[1], "http://m2");
	conf_release(&c);
	/* so does a later section of the same file */
	assert_int_equal(load(&cfg, "[host h]\nretries = 2\n[global]\nretries = 3\n"
			      "[host H]\nstall-timeout = 9\n", err, sizeof(err)), 0);
	config_for_host(&cfg, "h", &c);
	assert_int_equal(c.nmirrors, 2);
	assert_int_equal(c.stall_timeout_s, 9);
	conf_release(&c);
	/* a section with mirror lines replaces the list, in a later file or the same one */
	assert_int_equal(load(&cfg, "[host h]\nmirror = http://a\n[host h]\nmirror = http://b\n"
			      "mirror = http://c\n", err, sizeof(err)), 0);
	config_for_host(&cfg, "h", &c);
	assert_int_equal(c.nmirrors, 2);
	assert_string_equal(c.mirrors[0], "http://b");
	assert_string_equal(c.mirrors[1], "http://c");
	conf_release(&c);
	config_release(&cfg);
}

static void write_text(const char *path, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void write_text(const char *path, const char *fmt, ...)
{
	char *text;
	va_list ap;

	va_start(ap, fmt);
	assert_true(vasprintf(&text, fmt, ap) >= 0);
	va_end(ap);
	tu_write_str(path, text);
	free(text);
}

/* A value of setting s that is not its default, two of them (which = 0, 1). */
static const char *value_of(const struct setting *s, int which)
{
	static const char *const values[][2] = {
		[T_PATH] = { "/etc/one", "/etc/two" }, [T_COUNT] = { "2", "3" },
		[T_SECONDS] = { "2", "3" }, [T_SIZE] = { "8K", "16K" }, [T_POW2] = { "8K", "16K" },
		[T_BOOL] = { "yes", "no" }, [T_SCHEME] = { "https", "http" },
		[T_URLS] = { "http://one", "http://two" },
	};
	return values[s->type][which];
}

/* s's member in c, as text, so that any two settings compare alike. */
static void text_of(const struct conf *c, const struct setting *s, char *buf, size_t len)
{
	const char *m = (const char *)c + s->offset;

	switch (s->type) {
	case T_PATH:
	case T_SCHEME:
		snprintf(buf, len, "%s", *(char *const *)m ? *(char *const *)m : "(none)");
		break;
	case T_URLS:
		snprintf(buf, len, "%zu:%s", c->nmirrors, c->nmirrors ? c->mirrors[0] : "");
		break;
	case T_COUNT:
	case T_SECONDS:
		snprintf(buf, len, "%u", *(const unsigned *)m);
		break;
	case T_BOOL:
		snprintf(buf, len, "%d", *(const bool *)m);
		break;
	default:
		snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)m);
	}
}

/* What value_of(s, which) gives once set, as text_of shows it. */
static void expected(const struct setting *s, int which, char *buf, size_t len)
{
	struct conf c = { 0 };
	char err[256];

	assert_int_equal(setting_set(&c, s, value_of(s, which), true, "x", err, sizeof(err)), 0);
	text_of(&c, s, buf, len);
	conf_release(&c);
}

/* Another setting that may share s's section, so a file can say something else there. */
static const struct setting *other_than(const struct setting *s)
{
	for (size_t i = 0; i < SETTING_COUNT; i++)
		if (&settings[i] != s && settings[i].scope == (s->scope == SCOPE_HOST ? SCOPE_HOST
											  : SCOPE_ANY))
			return &settings[i];
	fail();
	return NULL;
}

/*
 * Every setting through every layer: the system file sets it, the user's file
 * says something else in the same section (it is kept) and then sets it too
 * (it wins), the environment (BLOBFS_STORE, the store only) and the command
 * line win over both -- as session_conf combines them for a host.
 */
static void test_every_setting_layers_per_key(void **state)
{
	char *dir = tu_mkdtemp(), *sys = NULL, *user = NULL;

	(void)state;
	assert_true(asprintf(&sys, "%s/system", dir) > 0);
	assert_true(asprintf(&user, "%s/user", dir) > 0);
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const struct setting *s = &settings[i], *o = other_than(s);
		const char *section = s->scope == SCOPE_GLOBAL ? "" : "[host h]\n";
		struct session_opts so;
		struct session sess = { .opts = &so };
		struct conf c;
		char want[128], got[128], err[512];

		session_opts_init(&so);
		write_text(sys, "%s%s = %s\n", section, s->key, value_of(s, 0));
		write_text(user, "%s%s = %s\n", section, o->key, value_of(o, 0));
		assert_int_equal(config_load_file(&so.files, sys, err, sizeof(err)), 0);
		assert_int_equal(config_load_file(&so.files, user, err, sizeof(err)), 0);
		session_conf(&sess, "h", &c);
		text_of(&c, s, got, sizeof(got));
		expected(s, 0, want, sizeof(want));
		if (strcmp(got, want) != 0)
			fail_msg("%s: the system file's %s was lost to a user file without it (%s)",
				 s->key, want, got);
		conf_release(&c);

		write_text(user, "%s%s = %s\n", section, s->key, value_of(s, 1));
		assert_int_equal(config_load_file(&so.files, user, err, sizeof(err)), 0);
		session_conf(&sess, "h", &c);
		text_of(&c, s, got, sizeof(got));
		expected(s, 1, want, sizeof(want));
		if (strcmp(got, want) != 0)
			fail_msg("%s: the user file's %s did not win (%s)", s->key, want, got);
		conf_release(&c);

		if (s->bit == CF_STORE) {
			conf_set_str(&so.env, CF_STORE, "/from/env");
			session_conf(&sess, "h", &c);
			assert_string_equal(c.store, "/from/env");
			conf_release(&c);
		}
		if (s->type != T_URLS) {
			assert_int_equal(conf_set(&so.cli, s->key, value_of(s, 0), "--x", err,
						  sizeof(err)), 0);
			session_conf(&sess, "h", &c);
			text_of(&c, s, got, sizeof(got));
			expected(s, 0, want, sizeof(want));
			assert_string_equal(got, want);
			conf_release(&c);
		}
		session_opts_release(&so);
	}
	free(sys);
	free(user);
	assert_int_equal(tu_rm_rf(dir), 0);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_globals_and_host_sections),
		cmocka_unit_test(test_later_file_overrides_earlier),
		cmocka_unit_test(test_bad_file_changes_nothing),
		cmocka_unit_test(test_refusals_name_file_line_and_reason),
		cmocka_unit_test(test_nul_byte_refused),
		cmocka_unit_test(test_byte_order_mark_is_skipped),
		cmocka_unit_test(test_files_missing_bad_and_env),
		cmocka_unit_test(test_defaults_and_merge),
		cmocka_unit_test(test_later_section_without_mirrors_keeps_them),
		cmocka_unit_test(test_every_setting_layers_per_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
