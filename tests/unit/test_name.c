/*
 * test_name.c - model names (name.h): Ollama's grammar
 * [scheme://][host/][namespace/]name[:tag] with its defaults, the character
 * classes and lengths of each part, the error messages for bad names,
 * formatting (full and short) and case-insensitive comparison.
 */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "name.h"
#include "testutil.h"

static struct model_name parse_ok(const char *s)
{
	struct model_name n;
	char err[256] = "";
	int ret = name_parse(s, &n, err, sizeof(err));

	if (ret != 0)
		fail_msg("name_parse('%s') = %d: %s", s, ret, err);
	return n;
}

static void assert_name(const struct model_name *n, const char *scheme, const char *host,
			const char *ns, const char *model, const char *tag)
{
	assert_string_equal(n->scheme, scheme);
	assert_string_equal(n->host, host);
	assert_string_equal(n->ns, ns);
	assert_string_equal(n->model, model);
	assert_string_equal(n->tag, tag);
}

/* name_parse must fail with -EINVAL and a message containing each of want. */
static void parse_bad(const char *s, const char *want1, const char *want2)
{
	struct model_name n;
	char err[512] = "";
	int ret = name_parse(s, &n, err, sizeof(err));

	if (ret != -EINVAL)
		fail_msg("name_parse('%s') = %d, want -EINVAL", s, ret);
	assert_contains(err, want1);
	if (want2)
		assert_contains(err, want2);
}

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* ---- valid names ---- */

static void test_bare_model_gets_all_defaults(void **state)
{
	struct model_name n = parse_ok("llama3");

	assert_name(&n, "", "registry.ollama.ai", "library", "llama3", "latest");
}

static void test_model_with_tag(void **state)
{
	struct model_name n = parse_ok("llama3:8b");

	assert_name(&n, "", "registry.ollama.ai", "library", "llama3", "8b");
}

static void test_namespace_model_tag(void **state)
{
	struct model_name n = parse_ok("user/model:v1");

	assert_name(&n, "", "registry.ollama.ai", "user", "model", "v1");
}

static void test_namespace_model_without_tag(void **state)
{
	struct model_name n = parse_ok("user/model");

	assert_name(&n, "", "registry.ollama.ai", "user", "model", "latest");
}

static void test_host_with_port_and_tag(void **state)
{
	struct model_name n = parse_ok("127.0.0.1:5000/library/tiny:latest");

	assert_name(&n, "", "127.0.0.1:5000", "library", "tiny", "latest");
}

static void test_host_port_colon_is_not_a_tag(void **state)
{
	/* The only ':' is before the last '/', so it belongs to the host. */
	struct model_name n = parse_ok("127.0.0.1:5000/library/tiny");

	assert_name(&n, "", "127.0.0.1:5000", "library", "tiny", "latest");
}

static void test_scheme_host_port(void **state)
{
	struct model_name n = parse_ok("http://localhost:5000/a/b:c");

	assert_name(&n, "http", "localhost:5000", "a", "b", "c");
}

static void test_https_scheme_is_lowercased(void **state)
{
	struct model_name n = parse_ok("HTTPS://registry.example.com/ns/m:t");

	assert_name(&n, "https", "registry.example.com", "ns", "m", "t");
}

static void test_uppercase_is_kept(void **state)
{
	struct model_name n = parse_ok("Registry.Example.COM/MyNS/Llama3:Q4_K_M");

	assert_name(&n, "", "Registry.Example.COM", "MyNS", "Llama3", "Q4_K_M");
}

/* Hugging Face's Ollama-compatible endpoint: hf.co/<user>/<repo>:<quant>, as given. */
static void test_hugging_face_names(void **state)
{
	struct model_name n = parse_ok("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M");
	char buf[NAME_FORMAT_MAX];

	assert_name(&n, "", "hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M");
	name_format_short(&n, buf, sizeof(buf));
	assert_string_equal(buf, "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M");
	n = parse_ok("huggingface.co/unsloth/gemma-3-4b-it-GGUF");
	assert_name(&n, "", "huggingface.co", "unsloth", "gemma-3-4b-it-GGUF", "latest");
}

static void test_allowed_punctuation(void **state)
{
	struct model_name n = parse_ok("my-host_1.example:8080/my_ns-2/model.v2_x-y:tag.1-2_b");

	assert_name(&n, "", "my-host_1.example:8080", "my_ns-2", "model.v2_x-y", "tag.1-2_b");
	n = parse_ok("_ns/_model:_tag");
	assert_name(&n, "", "registry.ollama.ai", "_ns", "_model", "_tag");
	n = parse_ok("0ns/9model:7");
	assert_name(&n, "", "registry.ollama.ai", "0ns", "9model", "7");
}

static void test_maximum_lengths_are_accepted(void **state)
{
	char *host = repeat('h', NAME_HOST_MAX), *part = repeat('p', NAME_PART_MAX);
	char s[1024];
	struct model_name n;

	snprintf(s, sizeof(s), "%s/%s/%s:%s", host, part, part, part);
	n = parse_ok(s);
	assert_int_equal(strlen(n.host), NAME_HOST_MAX);
	assert_string_equal(n.host, host);
	assert_string_equal(n.ns, part);
	assert_string_equal(n.model, part);
	assert_string_equal(n.tag, part);
	free(host);
	free(part);
}

/* ---- invalid names; the message must name the bad part ---- */

static void test_empty_and_null_refused(void **state)
{
	struct model_name n;
	char err[128] = "";

	parse_bad("", "empty", NULL);
	assert_int_equal(name_parse(NULL, &n, err, sizeof(err)), -EINVAL);
	assert_contains(err, "empty");
}

static void test_empty_parts_refused(void **state)
{
	parse_bad("a//b", "namespace is empty", NULL);
	parse_bad("/b", "namespace is empty", NULL);
	parse_bad("b:", "tag is empty", NULL);
	parse_bad("x/y/", "name is empty", NULL);
	parse_bad("/a/b", "host is empty", NULL);
	parse_bad("h/n/m:", "tag is empty", NULL);
}

static void test_dot_parts_refused(void **state)
{
	parse_bad("..", "name '..'", "must start");
	parse_bad(".", "name '.'", "must start");
	parse_bad(".hidden", "name '.hidden'", "must start");
	parse_bad("a/../b", "namespace '..'", "must start");
	parse_bad("../ns/m", "host '..'", "must start");
	parse_bad("m:.tag", "tag '.tag'", "must start");
	parse_bad("-model", "name '-model'", "must start");
}

static void test_too_many_parts_refused(void **state)
{
	parse_bad("a/b/c/d", "too many", NULL);
	parse_bad("http://a/b/c/d:e", "too many", NULL);
}

static void test_overlong_parts_refused(void **state)
{
	char *longpart = repeat('m', NAME_PART_MAX + 1), *longhost = repeat('h', NAME_HOST_MAX + 1);
	char s[1024];

	parse_bad(longpart, "name is longer than 80", NULL);
	snprintf(s, sizeof(s), "%s/ns/m", longhost);
	parse_bad(s, "host is longer than 350", NULL);
	snprintf(s, sizeof(s), "%s/m", longpart);
	parse_bad(s, "namespace is longer than 80", NULL);
	snprintf(s, sizeof(s), "m:%s", longpart);
	parse_bad(s, "tag is longer than 80", NULL);
	free(longpart);
	free(longhost);
}

static void test_bad_characters_refused(void **state)
{
	parse_bad("na me", "name 'na me'", "' '");
	parse_bad("a@b", "name 'a@b'", "'@'");
	parse_bad("ns.x/model", "namespace 'ns.x'", "'.'");
	parse_bad("ns:x/model:t", "namespace 'ns:x'", "':'");
	parse_bad("model:t:u", "name 'model:t'", "':'");
	parse_bad("h*st/ns/model", "host 'h*st'", "'*'");
	parse_bad("model:ta g", "tag 'ta g'", "' '");
}

static void test_bad_scheme_refused(void **state)
{
	parse_bad("ftp://x/y/z", "scheme 'ftp'", NULL);
	parse_bad("://x/y/z", "scheme", NULL);
	parse_bad("httpx://x/y/z", "scheme 'httpx'", NULL);
}

static void test_control_and_high_bytes_refused(void **state)
{
	parse_bad("mo\x01" "del", "name contains the byte 0x01", NULL);
	parse_bad("model:t\x7f", "tag contains the byte 0x7f", NULL);
	parse_bad("ns\n/model", "namespace contains the byte 0x0a", NULL);
	parse_bad("mod\xc3\xa8l", "name contains the byte 0xc3", NULL);
	parse_bad("ho\tst/ns/m", "host contains the byte 0x09", NULL);
}

static void test_error_message_fits_small_buffer(void **state)
{
	struct model_name n;
	char err[8];

	memset(err, 'X', sizeof(err));
	assert_int_equal(name_parse("a@b", &n, err, sizeof(err)), -EINVAL);
	assert_true(memchr(err, '\0', sizeof(err)) != NULL);
}

/* ---- formatting and comparison ---- */

static void test_format_full(void **state)
{
	struct model_name n = parse_ok("llama3");
	char buf[NAME_FORMAT_MAX];

	name_format(&n, buf, sizeof(buf));
	assert_string_equal(buf, "registry.ollama.ai/library/llama3:latest");
	n = parse_ok("http://localhost:5000/a/b:c");
	name_format(&n, buf, sizeof(buf));
	assert_string_equal(buf, "localhost:5000/a/b:c");
}

static void test_format_short(void **state)
{
	static const struct { const char *in, *out; } cases[] = {
		{ "llama3", "llama3:latest" },
		{ "llama3:8b", "llama3:8b" },
		{ "user/model:v1", "user/model:v1" },
		{ "registry.ollama.ai/library/llama3:8b", "llama3:8b" },
		{ "REGISTRY.OLLAMA.AI/Library/Llama3:8B", "Llama3:8B" },
		{ "registry.ollama.ai/user/m", "user/m:latest" },
		{ "127.0.0.1:5000/library/tiny:latest", "127.0.0.1:5000/library/tiny:latest" },
		{ "example.com/library/tiny", "example.com/library/tiny:latest" },
	};
	char buf[NAME_FORMAT_MAX];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct model_name n = parse_ok(cases[i].in);
		name_format_short(&n, buf, sizeof(buf));
		assert_string_equal(buf, cases[i].out);
	}
}

static void test_format_round_trips(void **state)
{
	static const char *const names[] = {
		"llama3", "llama3:8b", "user/model:v1", "127.0.0.1:5000/library/tiny:latest",
		"Registry.Example.COM/MyNS/Llama3:Q4_K_M", "h/n/m.x:t-1", "registry.ollama.ai/u/m",
	};
	char buf[NAME_FORMAT_MAX];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct model_name a = parse_ok(names[i]), b;
		name_format(&a, buf, sizeof(buf));
		b = parse_ok(buf);
		assert_name(&b, "", a.host, a.ns, a.model, a.tag);
		name_format_short(&a, buf, sizeof(buf));
		b = parse_ok(buf);
		assert_name(&b, "", a.host, a.ns, a.model, a.tag);
	}
}

static void test_format_max_fits(void **state)
{
	char *host = repeat('h', NAME_HOST_MAX), *part = repeat('p', NAME_PART_MAX);
	char s[1024], buf[NAME_FORMAT_MAX];
	struct model_name n;

	snprintf(s, sizeof(s), "https://%s/%s/%s:%s", host, part, part, part);
	n = parse_ok(s);
	name_format(&n, buf, sizeof(buf));
	assert_int_equal(strlen(buf), NAME_HOST_MAX + 3 * NAME_PART_MAX + 3);
	assert_string_equal(buf, s + strlen("https://"));
	free(host);
	free(part);
}

static void test_equal_is_case_insensitive(void **state)
{
	struct model_name a = parse_ok("Host.Example/NS/Model:Tag");
	struct model_name b = parse_ok("host.example/ns/model:tag");
	struct model_name c = parse_ok("http://HOST.EXAMPLE/ns/MODEL:TAG");

	assert_true(name_equal(&a, &b));
	assert_true(name_equal(&b, &a));
	assert_true(name_equal(&a, &c)); /* the scheme is not part of identity */
	b = parse_ok("host.example/ns/model:tag2");
	assert_false(name_equal(&a, &b));
	b = parse_ok("other.example/ns/model:tag");
	assert_false(name_equal(&a, &b));
	b = parse_ok("host.example/ns2/model:tag");
	assert_false(name_equal(&a, &b));
	b = parse_ok("host.example/ns/model2:tag");
	assert_false(name_equal(&a, &b));
	a = parse_ok("llama3");
	b = parse_ok("registry.ollama.ai/library/llama3:latest");
	assert_true(name_equal(&a, &b));
}

static void test_part_valid(void **state)
{
	char *p80 = repeat('a', NAME_PART_MAX), *p81 = repeat('a', NAME_PART_MAX + 1);
	char *h350 = repeat('h', NAME_HOST_MAX), *h351 = repeat('h', NAME_HOST_MAX + 1);

	assert_true(name_part_valid(NAME_HOST, "localhost:5000"));
	assert_true(name_part_valid(NAME_HOST, "registry.ollama.ai"));
	assert_true(name_part_valid(NAME_HOST, h350));
	assert_false(name_part_valid(NAME_HOST, h351));
	assert_false(name_part_valid(NAME_HOST, "a/b"));
	assert_false(name_part_valid(NAME_HOST, ":5000"));
	assert_true(name_part_valid(NAME_HOST, "a:1"));
	assert_true(name_part_valid(NAME_HOST, "a:65535"));
	assert_false(name_part_valid(NAME_HOST, "a:65536"));
	assert_false(name_part_valid(NAME_HOST, "a:99999999"));
	assert_false(name_part_valid(NAME_HOST, "a:0"));
	assert_false(name_part_valid(NAME_HOST, "a:"));
	assert_false(name_part_valid(NAME_HOST, "a:1:2"));
	assert_false(name_part_valid(NAME_HOST, "a:http"));
	assert_true(name_part_valid(NAME_NAMESPACE, "library"));
	assert_true(name_part_valid(NAME_NAMESPACE, "my_ns-1"));
	assert_false(name_part_valid(NAME_NAMESPACE, "ns.x"));
	assert_false(name_part_valid(NAME_NAMESPACE, "ns:x"));
	assert_true(name_part_valid(NAME_MODEL, "a.b"));
	assert_true(name_part_valid(NAME_MODEL, p80));
	assert_false(name_part_valid(NAME_MODEL, p81));
	assert_false(name_part_valid(NAME_MODEL, "a:b"));
	assert_true(name_part_valid(NAME_TAG, "v1.0"));
	assert_true(name_part_valid(NAME_TAG, "_x"));
	assert_false(name_part_valid(NAME_TAG, p81));
	for (int part = NAME_HOST; part <= NAME_TAG; part++) {
		assert_false(name_part_valid(part, ""));
		assert_false(name_part_valid(part, "."));
		assert_false(name_part_valid(part, ".."));
		assert_false(name_part_valid(part, ".x"));
		assert_false(name_part_valid(part, "-x"));
		assert_false(name_part_valid(part, "a b"));
		assert_false(name_part_valid(part, "a\x01"));
	}
	free(p80);
	free(p81);
	free(h350);
	free(h351);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bare_model_gets_all_defaults),
		cmocka_unit_test(test_model_with_tag),
		cmocka_unit_test(test_namespace_model_tag),
		cmocka_unit_test(test_namespace_model_without_tag),
		cmocka_unit_test(test_host_with_port_and_tag),
		cmocka_unit_test(test_host_port_colon_is_not_a_tag),
		cmocka_unit_test(test_scheme_host_port),
		cmocka_unit_test(test_https_scheme_is_lowercased),
		cmocka_unit_test(test_uppercase_is_kept),
		cmocka_unit_test(test_hugging_face_names),
		cmocka_unit_test(test_allowed_punctuation),
		cmocka_unit_test(test_maximum_lengths_are_accepted),
		cmocka_unit_test(test_empty_and_null_refused),
		cmocka_unit_test(test_empty_parts_refused),
		cmocka_unit_test(test_dot_parts_refused),
		cmocka_unit_test(test_too_many_parts_refused),
		cmocka_unit_test(test_overlong_parts_refused),
		cmocka_unit_test(test_bad_characters_refused),
		cmocka_unit_test(test_bad_scheme_refused),
		cmocka_unit_test(test_control_and_high_bytes_refused),
		cmocka_unit_test(test_error_message_fits_small_buffer),
		cmocka_unit_test(test_format_full),
		cmocka_unit_test(test_format_short),
		cmocka_unit_test(test_format_round_trips),
		cmocka_unit_test(test_format_max_fits),
		cmocka_unit_test(test_equal_is_case_insensitive),
		cmocka_unit_test(test_part_valid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
