/*
 * fuzz_retry_after.c - http_parse_retry_after (http.h).
 *
 * Input: bytes 0..3 are "now" (seconds since 1970, little-endian), the rest
 * is the header value as a C string.
 * Invariants:
 *   retry_after_delta  delta-seconds give exactly secs * 1000 ms (saturating)
 *   retry_after_date   an HTTP date gives (date - now) * 1000 ms, 0 if past;
 *                      a date further in the future never gives a shorter
 *                      delay than a nearer one
 *   retry_after_overflow  ... in particular when (date - now) * 1000 does not
 *                      fit in 64 bits: it must saturate, not wrap around
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>

#include "fuzz_common.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	time_t now = (time_t)fuzz_le32(data);
	char *v = fuzz_strz(data + 4, size - 4);
	uint64_t ms = 12345;
	int ret = http_parse_retry_after(v, now, &ms);

	/* The same trimming as the parser, to know what it saw. */
	const char *s = v;
	size_t len = strlen(v);
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\r' || s[len - 1] == '\n'))
		len--;
	while (len && *s == ' ') {
		s++;
		len--;
	}
	bool digits = len > 0 && len <= 20 && strspn(s, "0123456789") >= len;
	if (digits) {
		unsigned __int128 secs = 0;
		for (size_t i = 0; i < len; i++)
			secs = secs * 10 + (unsigned)(s[i] - '0');
		if (secs <= UINT64_MAX) {
			unsigned __int128 want = secs * 1000;
			FUZZ_CHECK("retry_after_delta", ret == 0 &&
				   ms == (want > UINT64_MAX ? UINT64_MAX : (uint64_t)want),
				   "'%s' → %d %llu", fuzz_esc(v, strlen(v)), ret, (unsigned long long)ms);
			goto out;
		}
	}
	if (ret == 0) {
		char *d = strndup(s, len);
		time_t t = curl_getdate(d, NULL);
		free(d);
		FUZZ_CHECK("retry_after_date", t >= 0, "'%s' accepted but curl_getdate fails",
			   fuzz_esc(v, strlen(v)));
		if (t <= now) {
			FUZZ_CHECK("retry_after_date", ms == 0, "past date gives %llu ms",
				   (unsigned long long)ms);
		} else {
			unsigned __int128 want = (unsigned __int128)(uint64_t)(t - now) * 1000;
			FUZZ_CHECK(want > UINT64_MAX ? "retry_after_overflow" : "retry_after_date",
				   ms == (want > UINT64_MAX ? UINT64_MAX : (uint64_t)want),
				   "'%s' (%lld s after now %lld) gives %llu ms, want %s",
				   fuzz_esc(v, strlen(v)), (long long)(t - now), (long long)now,
				   (unsigned long long)ms,
				   want > UINT64_MAX ? "the maximum (it overflows)" : "(t - now) * 1000");
		}
	}
out:
	free(v);
	return 0;
}
