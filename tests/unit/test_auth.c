/*
 * test_auth.c - registry authentication parsing (auth.h): WWW-Authenticate
 * challenges, netrc credential files (written to temporary directories), and
 * token server replies.
 */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "auth.h"
#include "testutil.h"

/* ---- challenges ---- */

static struct auth_challenge chal_ok(const char *v)
{
	struct auth_challenge c;
	int ret = auth_parse_challenge(v, strlen(v), &c);

	if (ret != 0)
		fail_msg("challenge '%s' refused (%d)", v, ret);
	return c;
}

static void chal_bad(const char *v)
{
	struct auth_challenge c;
	int ret = auth_parse_challenge(v, strlen(v), &c);

	if (ret != -EINVAL) {
		auth_challenge_release(&c);
		fail_msg("challenge '%s' accepted (%d)", v, ret);
	}
	/* Nothing is left allocated. */
	assert_null(c.realm);
	assert_null(c.service);
	assert_null(c.scope);
}

static void assert_str_or_null(const char *got, const char *want)
{
	if (!want)
		assert_null(got);
	else
		assert_string_equal(got, want);
}

static void expect_chal(const char *v, enum auth_scheme scheme, const char *realm,
			const char *service, const char *scope)
{
	struct auth_challenge c = chal_ok(v);

	assert_int_equal(c.scheme, scheme);
	assert_str_or_null(c.realm, realm);
	assert_str_or_null(c.service, service);
	assert_str_or_null(c.scope, scope);
	auth_challenge_release(&c);
	assert_null(c.realm);
}

static void test_challenge_docker_hub(void **state)
{
	expect_chal("Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
		    "scope=\"repository:library/ubuntu:pull\"",
		    AUTH_BEARER, "https://auth.docker.io/token", "registry.docker.io",
		    "repository:library/ubuntu:pull");
}

static void test_challenge_realm_only(void **state)
{
	expect_chal("Bearer realm=\"https://registry.ollama.ai/v2/token\"", AUTH_BEARER,
		    "https://registry.ollama.ai/v2/token", NULL, NULL);
}

static void test_challenge_unquoted_values(void **state)
{
	expect_chal("Bearer realm=tokensrv,service=registry.example.com,scope=pull", AUTH_BEARER,
		    "tokensrv", "registry.example.com", "pull");
}

static void test_challenge_escaped_quotes(void **state)
{
	expect_chal("Bearer realm=\"https://a/\\\"q\\\"\",service=\"back\\\\slash\"", AUTH_BEARER,
		    "https://a/\"q\"", "back\\slash", NULL);
}

static void test_challenge_whitespace(void **state)
{
	expect_chal("  Bearer   realm = \"r\" ,\tservice=\"s\" ,  scope =\"x\"  ", AUTH_BEARER,
		    "r", "s", "x");
	expect_chal("Bearer realm=\"r\",", AUTH_BEARER, "r", NULL, NULL);
}

static void test_challenge_case_insensitive(void **state)
{
	expect_chal("bearer REALM=\"r\",Service=\"s\",SCOPE=\"x\"", AUTH_BEARER, "r", "s", "x");
	expect_chal("BEARER realm=\"r\"", AUTH_BEARER, "r", NULL, NULL);
	expect_chal("basic realm=\"b\"", AUTH_BASIC, "b", NULL, NULL);
}

static void test_challenge_basic(void **state)
{
	expect_chal("Basic realm=\"Registry Realm\"", AUTH_BASIC, "Registry Realm", NULL, NULL);
	expect_chal("Basic", AUTH_BASIC, NULL, NULL, NULL);
	expect_chal("Basic realm=\"r\", charset=\"UTF-8\"", AUTH_BASIC, "r", NULL, NULL);
}

static void test_challenge_unknown_params_ignored(void **state)
{
	expect_chal("Bearer realm=\"r\",error=\"invalid_token\",error_description=\"expired\"",
		    AUTH_BEARER, "r", NULL, NULL);
}

static void test_challenge_second_challenge_ignored(void **state)
{
	expect_chal("Bearer realm=\"r1\",service=\"s1\", Basic realm=\"r2\"", AUTH_BEARER, "r1",
		    "s1", NULL);
	expect_chal("Basic realm=\"b\", Bearer realm=\"x\",service=\"y\"", AUTH_BASIC, "b", NULL,
		    NULL);
}

static void test_challenge_uses_len(void **state)
{
	const char *v = "Bearer realm=\"r\",service=\"s\"";
	struct auth_challenge c;

	/* Cut before service: realm only. */
	assert_int_equal(auth_parse_challenge(v, 16, &c), 0);
	assert_string_equal(c.realm, "r");
	assert_null(c.service);
	auth_challenge_release(&c);
	/* Cut inside the quoted realm: unterminated. */
	assert_int_equal(auth_parse_challenge(v, 15, &c), -EINVAL);
}

static void test_challenge_refusals(void **state)
{
	chal_bad("");
	chal_bad("   ");
	chal_bad("Digest realm=\"x\",nonce=\"y\"");
	chal_bad("Negotiate");
	chal_bad("Bearerx realm=\"x\"");
	chal_bad("Bearer");
	chal_bad("Bearer service=\"s\",scope=\"x\"");       /* no realm */
	chal_bad("Bearer realm=\"\"");                      /* empty realm */
	chal_bad("Bearer realm=\"https://auth/token");      /* unterminated */
	chal_bad("Bearer service=\"s\",realm=\"abc");
	chal_bad("Bearer realm=");                          /* no value */
	chal_bad("Bearer realm=,service=\"s\"");
	chal_bad("Bearer realm=\"a\nb\"");                  /* control character */
	chal_bad("Bearer realm=\"r\" service=\"s\"");       /* missing comma */
	chal_bad("Bearer realm=\"r\";service=\"s\"");
	chal_bad("Bearer realm=https://auth/token");        /* unquoted non-token */
}

static void test_challenge_overlong_value_refused(void **state)
{
	size_t n = 10000;
	char *v = malloc(n + 64);

	assert_non_null(v);
	strcpy(v, "Bearer realm=\"");
	memset(v + strlen(v), 'a', n);
	strcpy(v + 14 + n, "\"");
	chal_bad(v);
	free(v);
}

static void test_challenge_nul_is_a_control_byte(void **state)
{
	/*
	 * Found by fuzzing: is_tchar('\0') was true (strchr() finds the
	 * terminator), so a NUL inside a token was taken and the C string cut
	 * there. A NUL must be refused or ignored exactly like 0x01.
	 */
#define NUL_CASE(s) { s, sizeof(s) - 1 }
	static const struct { const char *v; size_t len; } cases[] = {
		NUL_CASE("Basic\0"),
		NUL_CASE("Bearer realm=abc\0def"),
		NUL_CASE("Bearer realm=\"r\",service=s\0x"),
		NUL_CASE("Bea\0rer realm=\"r\""),
		NUL_CASE("Bearer realm\0=\"r\""),
		NUL_CASE("Bearer realm=\"r\",\0"),
	};
#undef NUL_CASE
	struct auth_challenge c, c1;
	char buf[64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int ret, ret1;
		memcpy(buf, cases[i].v, cases[i].len);
		ret = auth_parse_challenge(buf, cases[i].len, &c);
		for (size_t k = 0; k < cases[i].len; k++)
			if (buf[k] == '\0')
				buf[k] = '\1';
		ret1 = auth_parse_challenge(buf, cases[i].len, &c1);
		if (ret != ret1)
			fail_msg("case %zu: %d with a NUL, %d with 0x01", i, ret, ret1);
		if (ret == 0) {
			assert_int_equal(c.scheme, c1.scheme);
			assert_true((!c.realm && !c1.realm) || strcmp(c.realm, c1.realm) == 0);
			assert_true((!c.service && !c1.service) || strcmp(c.service, c1.service) == 0);
			auth_challenge_release(&c);
			auth_challenge_release(&c1);
		}
	}
	/* In particular, a value is never cut short at the NUL. */
	assert_int_equal(auth_parse_challenge("Bearer realm=abc\0def", 20, &c), -EINVAL);
	assert_int_equal(auth_parse_challenge("Basic\0", 6, &c), 0);
	assert_int_equal(c.scheme, AUTH_BASIC);
	auth_challenge_release(&c);
}

/* ---- netrc ---- */

struct netrc_fixture {
	char *dir, *path;
};

static int netrc_setup(void **state)
{
	struct netrc_fixture *f = calloc(1, sizeof(*f));

	f->dir = tu_mkdtemp();
	f->path = tu_path(f->dir, "netrc");
	*state = f;
	return 0;
}

static int netrc_teardown(void **state)
{
	struct netrc_fixture *f = *state;
	int ret = tu_rm_rf(f->dir);

	free(f->dir);
	free(f->path);
	free(f);
	return ret;
}

static void netrc_expect(const char *path, const char *host, const char *user,
			 const char *password)
{
	struct credentials c;
	char err[256] = "";
	int ret = netrc_lookup(path, host, &c, err, sizeof(err));

	if (ret != 0)
		fail_msg("lookup '%s' = %d (%s)", host, ret, err);
	assert_string_equal(c.user, user);
	assert_string_equal(c.password, password);
	credentials_release(&c);
	assert_null(c.user);
	assert_null(c.password);
}

static void netrc_expect_err(const char *path, const char *host, int err)
{
	struct credentials c;
	char msg[256] = "";
	int ret = netrc_lookup(path, host, &c, msg, sizeof(msg));

	if (ret != err) {
		if (ret == 0)
			credentials_release(&c);
		fail_msg("lookup '%s' = %d, want %d", host, ret, err);
	}
	assert_null(c.user);
	assert_null(c.password);
}

/* Bad syntax: -EINVAL, no credentials, and the message says where and why. */
static void netrc_expect_syntax(const char *path, const char *host, const char *want)
{
	struct credentials c;
	char msg[256] = "";
	int ret = netrc_lookup(path, host, &c, msg, sizeof(msg));

	if (ret != -EINVAL) {
		if (ret == 0)
			fail_msg("lookup '%s' accepted, user '%s'", host, c.user);
		fail_msg("lookup '%s' = %d, want -EINVAL", host, ret);
	}
	assert_null(c.user);
	assert_null(c.password);
	assert_string_equal(msg, want);
}

static void test_netrc_machine_port_default(void **state)
{
	struct netrc_fixture *f = *state;

	tu_write_str(f->path,
		     "machine registry.example.com login alice password s3cret\n"
		     "machine registry.example.com:5000 login bob password pw2\n"
		     "default login anon password anonpw\n");
	netrc_expect(f->path, "registry.example.com", "alice", "s3cret");
	netrc_expect(f->path, "registry.example.com:5000", "bob", "pw2");
	netrc_expect(f->path, "registry.example.com:6000", "alice", "s3cret");
	netrc_expect(f->path, "REGISTRY.Example.com", "alice", "s3cret");
	/* A host lookup never falls back to "default"; host NULL asks for it. */
	netrc_expect_err(f->path, "other.example", -ENOENT);
	netrc_expect_err(f->path, "other.example:5000", -ENOENT);
	netrc_expect(f->path, NULL, "anon", "anonpw");
}

static void find_expect(const struct credential_files *cf, const char *host, bool use_default,
			const char *user)
{
	struct credentials c;
	int ret = credentials_find(cf, host, use_default, &c);

	if (!user) {
		if (ret == 0)
			fail_msg("'%s' got the credentials of '%s'", host, c.user);
		assert_int_equal(ret, -ENOENT);
		assert_null(c.user);
		return;
	}
	if (ret != 0)
		fail_msg("'%s': %d, want '%s'", host, ret, user);
	assert_string_equal(c.user, user);
	credentials_release(&c);
}

static void test_credentials_find_order_and_default(void **state)
{
	struct netrc_fixture *f = *state;
	char *netrc = tu_path(f->dir, "dot-netrc");
	struct credential_files cf = { f->path, netrc };

	tu_write_str(f->path,
		     "machine both.example login file-both password x\n"
		     "machine file.example login file-only password x\n"
		     "default login file-default password x\n");
	tu_write_str(netrc,
		     "machine both.example login netrc-both password x\n"
		     "machine netrc.example login netrc-only password x\n"
		     "default login netrc-default password x\n");
	find_expect(&cf, "both.example", false, "file-both");    /* the file first */
	find_expect(&cf, "netrc.example", false, "netrc-only");
	/* A machine entry in ~/.netrc beats the default entry of the file. */
	find_expect(&cf, "netrc.example", true, "netrc-only");
	find_expect(&cf, "other.example", false, NULL);
	find_expect(&cf, "other.example", true, "file-default");
	cf.file = NULL;
	find_expect(&cf, "other.example", true, "netrc-default");
	find_expect(&cf, "file.example", true, "netrc-default");
	cf.netrc = NULL;
	find_expect(&cf, "other.example", true, NULL);
	/* An unreadable or bad file is skipped, not fatal. */
	cf.file = f->path;
	cf.netrc = netrc;
	tu_write_str(f->path, "machine \"broken login x\n");
	find_expect(&cf, "netrc.example", false, "netrc-only");
	free(netrc);
}

static void test_netrc_port_entry_before_bare_host(void **state)
{
	struct netrc_fixture *f = *state;

	/* The host:port entry wins even when the bare host comes first in the file. */
	tu_write_str(f->path,
		     "machine h.example login bare password b\n"
		     "machine h.example:5000 login withport password p\n");
	netrc_expect(f->path, "h.example:5000", "withport", "p");
	netrc_expect(f->path, "h.example", "bare", "b");
}

static void test_netrc_layouts(void **state)
{
	struct netrc_fixture *f = *state;

	tu_write_str(f->path,
		     "machine a.example\n"
		     "\tlogin\tua\n"
		     "\tpassword pa\n"
		     "\taccount ignored\n"
		     "machine b.example password pb login ub\n"
		     "machine c.example login uc\n"
		     "machine a.example login second password entry\n");
	netrc_expect(f->path, "a.example", "ua", "pa");  /* the first entry wins */
	netrc_expect(f->path, "b.example", "ub", "pb");  /* order of keys is free */
	netrc_expect(f->path, "c.example", "uc", "");    /* no password */
}

static void test_netrc_quoted_tokens(void **state)
{
	struct netrc_fixture *f = *state;

	tu_write_str(f->path,
		     "machine \"q.example\" login \"user name\" password \"pa ss\\\"word\"\n"
		     "machine r.example login \"\" password x\n");
	netrc_expect(f->path, "q.example", "user name", "pa ss\"word");
}

static void test_netrc_macdef_skipped(void **state)
{
	struct netrc_fixture *f = *state;

	tu_write_str(f->path,
		     "macdef init\n"
		     "machine fake.example login mallory password x\n"
		     "cd /pub\n"
		     "\n"
		     "machine real.example login carol password c\n");
	netrc_expect_err(f->path, "fake.example", -ENOENT);
	netrc_expect(f->path, "real.example", "carol", "c");
}

static void test_netrc_no_match(void **state)
{
	struct netrc_fixture *f = *state;

	tu_write_str(f->path, "machine a.example login u password p\n");
	netrc_expect_err(f->path, "b.example", -ENOENT);
	netrc_expect_err(f->path, "a.example.evil", -ENOENT);
	netrc_expect_err(f->path, "example", -ENOENT);
	tu_write_str(f->path, "");
	netrc_expect_err(f->path, "a.example", -ENOENT);
}

static void test_netrc_entry_without_login(void **state)
{
	struct netrc_fixture *f = *state;

	tu_write_str(f->path, "machine a.example password p\n");
	netrc_expect_err(f->path, "a.example", -ENOENT);
}

static void test_netrc_missing_file(void **state)
{
	struct netrc_fixture *f = *state;

	netrc_expect_err(f->path, "a.example", -ENOENT);
}

static void test_netrc_bad_syntax(void **state)
{
	struct netrc_fixture *f = *state;

	tu_write_str(f->path, "machine a.example login");
	netrc_expect_err(f->path, "a.example", -EINVAL);
	tu_write_str(f->path, "machine");
	netrc_expect_err(f->path, "a.example", -EINVAL);
	tu_write_str(f->path, "machine a.example\n\n  login");
	netrc_expect_syntax(f->path, "a.example", "line 3: 'login' without a value");
	tu_write_str(f->path, "\nmachine");
	netrc_expect_syntax(f->path, "a.example", "line 2: 'machine' without a value");
}

static void test_netrc_broken_quote_is_bad_syntax(void **state)
{
	/*
	 * Found by fuzzing: a quoted token left open became "", so the lookup
	 * succeeded with an empty login (and, below, the password of the next
	 * line as the password).
	 */
	struct netrc_fixture *f = *state;

	tu_write_str(f->path, "machine a.example login \"alice\npassword s3cret\n");
	netrc_expect_syntax(f->path, "a.example", "line 1: quoted token not closed on its line");
	tu_write_str(f->path, "machine a.example login \"");
	netrc_expect_syntax(f->path, "a.example", "line 1: quoted token not closed on its line");
	tu_write_str(f->path, "machine a.example\nlogin u password \"unterminated");
	netrc_expect_syntax(f->path, "a.example", "line 2: quoted token not closed on its line");
	tu_write_str(f->path, "machine \"a.example\tb\" login u\n");
	netrc_expect_syntax(f->path, "a.example", "line 1: control character in a quoted token");
	/* Also when the broken entry is not the one looked up (the file is bad). */
	tu_write_str(f->path, "machine b.example login \"x\nmachine a.example login u\n");
	netrc_expect_syntax(f->path, "a.example", "line 1: quoted token not closed on its line");
	/* An explicit "" is still an empty value, and a closed quote is fine. */
	tu_write_str(f->path, "machine a.example login \"\" password \"p w\"\n");
	netrc_expect(f->path, "a.example", "", "p w");
}

/* ---- token replies ---- */

static void token_ok(const char *body, const char *want, uint64_t want_ttl)
{
	char *tok = NULL;
	uint64_t ttl = 0;
	int ret = auth_parse_token(body, strlen(body), &tok, &ttl);

	if (ret != 0)
		fail_msg("'%s' refused (%d)", body, ret);
	assert_string_equal(tok, want);
	assert_int_equal(ttl, want_ttl);
	free(tok);
}

static void token_bad(const char *body)
{
	char *tok = (char *)(uintptr_t)1;
	uint64_t ttl;
	int ret = auth_parse_token(body, strlen(body), &tok, &ttl);

	if (ret != -EINVAL) {
		if (ret == 0)
			free(tok);
		fail_msg("'%s' accepted (%d)", body, ret);
	}
	assert_null(tok);
}

static void test_token_reply(void **state)
{
	token_ok("{\"token\":\"abc.def-ghi_jkl\",\"expires_in\":300,\"issued_at\":\"2024-01-01T00:00:00Z\"}",
		 "abc.def-ghi_jkl", 300);
	token_ok("{\"access_token\":\"xyz\"}", "xyz", 60);
	token_ok("{\"token\":\"\",\"access_token\":\"fallback\"}", "fallback", 60);
	token_ok("{\"token\":7,\"access_token\":\"fallback\"}", "fallback", 60);
	token_ok("{\"token\":\"t\",\"access_token\":\"a\"}", "t", 60);
	token_ok("{\"token\":\"t\",\"expires_in\":0}", "t", 60);
	token_ok("{\"token\":\"t\",\"expires_in\":-5}", "t", 60);
	token_ok("{\"token\":\"t\",\"expires_in\":\"300\"}", "t", 60);
	token_ok("{\"token\":\"t\",\"expires_in\":1e12}", "t", 60);
	token_ok("{\"token\":\"t\",\"expires_in\":1}", "t", 1);
	token_ok("{\"token\":\"t\",\"expires_in\":90.9}", "t", 90);
}

static void test_token_refusals(void **state)
{
	token_bad("");
	token_bad("not json");
	token_bad("[\"token\"]");
	token_bad("\"token\"");
	token_bad("{}");
	token_bad("{\"token\":\"\"}");
	token_bad("{\"token\":null}");
	token_bad("{\"token\":\"a b\"}");
	token_bad("{\"token\":\"a\\nb\"}");
	token_bad("{\"token\":\"a\\r\\nX-Injected: 1\"}");
	token_bad("{\"token\":\"a\\tb\"}");
	token_bad("{\"token\":\"a\\u007fb\"}");
	token_bad("{\"access_token\":\"a b\"}");
}

static void test_token_size_limit(void **state)
{
	size_t n = 64 * 1024;
	char *body = malloc(n + 64), *tok;
	uint64_t ttl;

	assert_non_null(body);
	strcpy(body, "{\"token\":\"");
	memset(body + 10, 'x', n);
	strcpy(body + 10 + n, "\"}");
	assert_int_equal(auth_parse_token(body, strlen(body), &tok, &ttl), 0);
	assert_int_equal(strlen(tok), n);
	free(tok);
	strcpy(body + 10 + n, "x\"}");
	token_bad(body);
	free(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_challenge_docker_hub),
		cmocka_unit_test(test_challenge_realm_only),
		cmocka_unit_test(test_challenge_unquoted_values),
		cmocka_unit_test(test_challenge_escaped_quotes),
		cmocka_unit_test(test_challenge_whitespace),
		cmocka_unit_test(test_challenge_case_insensitive),
		cmocka_unit_test(test_challenge_basic),
		cmocka_unit_test(test_challenge_unknown_params_ignored),
		cmocka_unit_test(test_challenge_second_challenge_ignored),
		cmocka_unit_test(test_challenge_uses_len),
		cmocka_unit_test(test_challenge_refusals),
		cmocka_unit_test(test_challenge_overlong_value_refused),
		cmocka_unit_test(test_challenge_nul_is_a_control_byte),
		cmocka_unit_test_setup_teardown(test_netrc_machine_port_default, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_port_entry_before_bare_host, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_credentials_find_order_and_default, netrc_setup,
						netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_layouts, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_quoted_tokens, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_macdef_skipped, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_no_match, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_entry_without_login, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_missing_file, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_bad_syntax, netrc_setup, netrc_teardown),
		cmocka_unit_test_setup_teardown(test_netrc_broken_quote_is_bad_syntax, netrc_setup,
						netrc_teardown),
		cmocka_unit_test(test_token_reply),
		cmocka_unit_test(test_token_refusals),
		cmocka_unit_test(test_token_size_limit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
