/*
 * fuzz_content_range.c - http_parse_content_range (http.h).
 *
 * Input: the header value, not NUL-terminated.
 * Invariants:
 *   content_range_order  on success first ≤ last, and last < total unless
 *                        total is "*" (HTTP_TOTAL_UNKNOWN)
 *   content_range_ref    the result agrees with a straightforward reference
 *                        parser of `bytes SP first "-" last "/" (total | "*")`
 *                        (case-insensitive unit, blanks after it and at the end)
 */
#include "config.h"

#include <errno.h>
#include <strings.h>

#include "fuzz_common.h"
#include "http.h"

static bool num(const char **p, const char *end, uint64_t *v)
{
	const char *s = *p;
	unsigned __int128 x = 0;

	while (*p < end && **p >= '0' && **p <= '9') {
		x = x * 10 + (unsigned)(**p - '0');
		if (x > UINT64_MAX)
			return false;
		(*p)++;
	}
	*v = (uint64_t)x;
	return *p > s && *p - s <= 20;
}

static int ref_parse(const char *v, size_t len, uint64_t *f, uint64_t *l, uint64_t *t)
{
	const char *p = v, *end = v + len;

	while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end - p < 5 || strncasecmp(p, "bytes", 5))
		return -EINVAL;
	p += 5;
	if (p == end || (*p != ' ' && *p != '\t'))
		return -EINVAL;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	if (!num(&p, end, f) || p == end || *p++ != '-' || !num(&p, end, l) || p == end ||
	    *p++ != '/')
		return -EINVAL;
	if (end - p == 1 && *p == '*')
		*t = HTTP_TOTAL_UNKNOWN;
	else if (!num(&p, end, t) || p != end || *l >= *t)
		return -EINVAL;
	return *l < *f ? -EINVAL : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *v = (const char *)data;
	uint64_t f, l, t, rf, rl, rt;
	int ret = http_parse_content_range(v, size, &f, &l, &t);
	int rret = ref_parse(v, size, &rf, &rl, &rt);

	FUZZ_CHECK("content_range_ref", ret == rret, "'%s': %d, reference %d",
		   fuzz_esc(v, size), ret, rret);
	if (ret == 0) {
		FUZZ_CHECK("content_range_order", f <= l && (t == HTTP_TOTAL_UNKNOWN || l < t),
			   "'%s' → %llu-%llu/%llu", fuzz_esc(v, size), (unsigned long long)f,
			   (unsigned long long)l, (unsigned long long)t);
		FUZZ_CHECK("content_range_ref", f == rf && l == rl && t == rt,
			   "'%s' values differ from the reference", fuzz_esc(v, size));
	}
	return 0;
}
