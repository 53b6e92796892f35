/*
 * fuzz_digest.c - sha256 digest strings and digest sets (digest.h).
 *
 * Input: the bytes are tried as "sha256:<hex>" (exact length, not
 * NUL-terminated), as a blob file name "sha256-<hex>" (C string), and as a
 * run of 32-byte digests for a digest_set.
 * Invariants:
 *   digest_accept      digest_parse accepts exactly "sha256:" + 64 lowercase hex
 *   digest_roundtrip   a parsed digest formats back to the very input
 *   digest_filename    the same for digest_parse_filename / digest_filename
 *   digest_set         after seal: sorted, no repeats, has() finds every digest added
 */
#include "config.h"

#include <errno.h>

#include "digest.h"
#include "fuzz_common.h"

static bool ref_valid(const char *s, size_t len, char sep)
{
	if (len != 71 || memcmp(s, "sha256", 6) != 0 || s[6] != sep)
		return false;
	for (size_t i = 7; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *raw = (const char *)data;
	char out[DIGEST_STR_LEN], hex[DIGEST_HEX_LEN + 1];
	struct digest d;
	int ret;

	ret = digest_parse(raw, size, &d);
	FUZZ_CHECK("digest_accept", (ret == 0) == ref_valid(raw, size, ':'),
		   "digest_parse('%s') = %d", fuzz_esc(raw, size), ret);
	if (ret == 0) {
		digest_format(&d, out);
		FUZZ_CHECK("digest_roundtrip", strlen(out) == size && !memcmp(out, raw, size),
			   "'%s' formats as '%s'", fuzz_esc(raw, size), out);
		digest_hex(&d, hex);
		FUZZ_CHECK("digest_roundtrip", !memcmp(hex, raw + 7, 64), "hex differs");
	}

	char *s = fuzz_strz(data, size);
	ret = digest_parse_filename(s, &d);
	FUZZ_CHECK("digest_accept", (ret == 0) == ref_valid(s, strlen(s), '-'),
		   "digest_parse_filename('%s') = %d", fuzz_esc(s, strlen(s)), ret);
	if (ret == 0) {
		digest_filename(&d, out);
		FUZZ_CHECK("digest_filename", !strcmp(out, s), "'%s' formats as '%s'",
			   fuzz_esc(s, strlen(s)), out);
	}
	free(s);

	/* A digest set of the input's 32-byte blocks (at most 512 of them). */
	struct digest_set set = { 0 };
	size_t n = size / DIGEST_LEN;
	if (n > 512)
		n = 512;
	for (size_t i = 0; i < n; i++) {
		memcpy(d.bytes, data + i * DIGEST_LEN, DIGEST_LEN);
		digest_set_add(&set, &d);
	}
	digest_set_seal(&set);
	FUZZ_CHECK("digest_set", set.n <= n && (n == 0 || set.n > 0), "n %zu → %zu", n, set.n);
	for (size_t i = 1; i < set.n; i++)
		FUZZ_CHECK("digest_set", memcmp(set.v[i - 1].bytes, set.v[i].bytes, DIGEST_LEN) < 0,
			   "not strictly sorted at %zu", i);
	for (size_t i = 0; i < n; i++) {
		memcpy(d.bytes, data + i * DIGEST_LEN, DIGEST_LEN);
		FUZZ_CHECK("digest_set", digest_set_has(&set, &d), "digest %zu not found", i);
	}
	digest_set_release(&set);
	return 0;
}
