/*
 * test_settings.c - the table of settings (settings.h, settings.def) and the
 * operations written once for all of them: every setting's range is checked
 * at both ends, defaults come from the table, merging copies exactly what a
 * layer sets, and options are named from keys. Table-driven: a setting
 * added to settings.def is tested here without a new line.
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "settings.h"
#include "testutil.h"

static uint64_t number_of(const struct conf *c, const struct setting *s)
{
	const char *m = (const char *)c + s->offset;

	if (s->type == T_COUNT || s->type == T_SECONDS)
		return *(const unsigned *)m;
	if (s->type == T_BOOL)
		return *(const bool *)m;
	return *(const uint64_t *)m;
}

static bool is_number(const struct setting *s)
{
	return s->type == T_COUNT || s->type == T_SECONDS || s->type == T_SIZE ||
	       s->type == T_POW2;
}

static int set(struct conf *c, const struct setting *s, const char *v, char *err, size_t len)
{
	return setting_set(c, s, v, true, "'x'", err, len);
}

static void test_every_range_is_checked_at_both_ends(void **state)
{
	(void)state;
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const struct setting *s = &settings[i];
		struct conf c = { 0 };
		char v[32], err[256], range[64];

		if (!is_number(s) || s->hi == UINT64_MAX)
			continue;
		setting_range_text(s, range, sizeof(range));
		snprintf(v, sizeof(v), "%llu", (unsigned long long)s->lo);
		assert_int_equal(set(&c, s, v, err, sizeof(err)), 0);
		assert_int_equal(number_of(&c, s), s->lo);
		assert_true(c.set & s->bit);
		snprintf(v, sizeof(v), "%llu", (unsigned long long)s->hi);
		assert_int_equal(set(&c, s, v, err, sizeof(err)), 0);
		assert_int_equal(number_of(&c, s), s->hi);
		snprintf(v, sizeof(v), "%llu", (unsigned long long)s->hi + 1);
		assert_int_equal(set(&c, s, v, err, sizeof(err)), -EINVAL);
		assert_contains(err, range);
		assert_int_equal(number_of(&c, s), s->hi);     /* a refused value changes nothing */
		snprintf(v, sizeof(v), "%llu", (unsigned long long)s->lo - 1);
		assert_int_equal(set(&c, s, v, err, sizeof(err)), -EINVAL);
		assert_int_equal(set(&c, s, "lots", err, sizeof(err)), -EINVAL);
		assert_contains(err, "not 'lots'");
		conf_release(&c);
	}
}

static void test_defaults_come_from_the_table(void **state)
{
	struct conf d;

	(void)state;
	conf_defaults(&d);
	assert_int_equal(d.set, ~0u);
	for (size_t i = 0; i < SETTING_COUNT; i++)
		if (is_number(&settings[i]) || settings[i].type == T_BOOL)
			assert_int_equal(number_of(&d, &settings[i]), settings[i].dflt);
	/* The ones the rest of the code names without a configuration. */
	assert_int_equal(d.connections, DEFAULT_CONNECTIONS);
	assert_int_equal(d.read_timeout_s, DEFAULT_READ_TIMEOUT);
	assert_int_equal(d.retries, DEFAULT_RETRIES);
	assert_null(d.store);
	assert_int_equal(d.nmirrors, 0);
	conf_release(&d);
}

/* A value other than the default, as text. */
static const char *sample(const struct setting *s)
{
	switch (s->type) {
	case T_PATH:
		return "/some/path";
	case T_COUNT:
	case T_SECONDS:
		return "2";
	case T_SIZE:
	case T_POW2:
		return "8K";
	case T_BOOL:
		return s->dflt ? "no" : "yes";
	case T_SCHEME:
		return "https";
	case T_URLS:
		return "http://mirror.example:5000";
	}
	return NULL;
}

static void test_merge_copies_exactly_what_a_layer_sets(void **state)
{
	(void)state;
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const struct setting *s = &settings[i];
		struct conf base, layer = { 0 }, fresh;
		char err[256];

		conf_defaults(&base);
		assert_int_equal(set(&layer, s, sample(s), err, sizeof(err)), 0);
		assert_int_equal(layer.set, s->bit);
		conf_merge(&base, &layer);
		conf_defaults(&fresh);
		for (size_t j = 0; j < SETTING_COUNT; j++) {
			const struct setting *o = &settings[j];
			if (is_number(o) || o->type == T_BOOL) {
				if (j == i)
					assert_int_not_equal(number_of(&base, o), number_of(&fresh, o));
				else
					assert_int_equal(number_of(&base, o), number_of(&fresh, o));
			}
		}
		if (s->type == T_PATH || s->type == T_SCHEME)
			assert_string_equal(*(char **)((char *)&base + s->offset), sample(s));
		if (s->type == T_URLS) {
			assert_int_equal(base.nmirrors, 1);
			assert_string_equal(base.mirrors[0], sample(s));
			assert_null(base.mirrors[1]);
		}
		conf_release(&fresh);
		conf_release(&base);
		conf_release(&layer);
	}
}

static void test_lists_start_fresh_or_add(void **state)
{
	const struct setting *m = setting_by_key("mirror");
	struct conf c = { 0 };
	char err[256];

	(void)state;
	assert_non_null(m);
	assert_int_equal(setting_set(&c, m, "http://a", true, "x", err, sizeof(err)), 0);
	assert_int_equal(setting_set(&c, m, "http://b", false, "x", err, sizeof(err)), 0);
	assert_int_equal(c.nmirrors, 2);
	assert_int_equal(setting_set(&c, m, "http://c", true, "x", err, sizeof(err)), 0);
	assert_int_equal(c.nmirrors, 1);
	assert_string_equal(c.mirrors[0], "http://c");
	assert_int_equal(setting_set(&c, m, "ftp://d", false, "x", err, sizeof(err)), -EINVAL);
	assert_int_equal(c.nmirrors, 1);
	conf_release(&c);
}

static void test_keys_and_options(void **state)
{
	char buf[48];

	(void)state;
	assert_ptr_equal(setting_by_key("MAX_CACHE"), setting_by_key("max-cache"));
	assert_non_null(setting_by_key("Read_Timeout"));
	assert_null(setting_by_key("max-cach"));
	assert_null(setting_by_key("max-cachee"));
	assert_string_equal(setting_option(setting_by_key("netrc"), false, buf, sizeof(buf)),
			    "--no-netrc");
	assert_string_equal(setting_option(setting_by_key("netrc"), true, buf, sizeof(buf)),
			    "no_netrc");
	assert_string_equal(setting_option(setting_by_key("insecure"), false, buf, sizeof(buf)),
			    "--insecure");
	assert_string_equal(setting_option(setting_by_key("request-size"), true, buf, sizeof(buf)),
			    "request_size");
	assert_string_equal(setting_default_text(setting_by_key("request-size"), buf, sizeof(buf)),
			    "16M");
	assert_string_equal(setting_range_text(setting_by_key("request-size"), buf, sizeof(buf)),
			    "4K to 16G");
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		assert_ptr_equal(setting_by_key(settings[i].key), &settings[i]);
		/* an option has its help line and, with a value, a metavar */
		if (settings[i].opts & OPT_CLI) {
			assert_non_null(settings[i].help);
			assert_true(settings[i].type == T_BOOL || settings[i].metavar);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_range_is_checked_at_both_ends),
		cmocka_unit_test(test_defaults_come_from_the_table),
		cmocka_unit_test(test_merge_copies_exactly_what_a_layer_sets),
		cmocka_unit_test(test_lists_start_fresh_or_add),
		cmocka_unit_test(test_keys_and_options),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
