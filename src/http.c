/*
 * http.c - small pieces of HTTP the fetcher needs, kept free of curl so they
 * can be unit-tested and fuzzed: Content-Range and Retry-After parsing, the
 * mapping of final statuses to errno, and the backoff schedule.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "util.h"

static bool take_number(const char **p, const char *end, uint64_t *v)
{
	const char *s = *p;

	while (*p < end && **p >= '0' && **p <= '9')
		(*p)++;
	return parse_u64(s, *p - s, v);
}

int http_parse_content_range(const char *v, size_t len, uint64_t *first,
			     uint64_t *last, uint64_t *total)
{
	const char *p = v, *end = v + len;

	while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end - p < 6 || strncasecmp(p, "bytes", 5) != 0)
		return -EINVAL;
	p += 5;
	if (p >= end || (*p != ' ' && *p != '\t'))
		return -EINVAL;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	if (!take_number(&p, end, first) || p >= end || *p++ != '-' ||
	    !take_number(&p, end, last) || p >= end || *p++ != '/')
		return -EINVAL;
	if (end - p == 1 && *p == '*') {
		*total = HTTP_TOTAL_UNKNOWN;
	} else {
		if (!take_number(&p, end, total) || p != end || *last >= *total)
			return -EINVAL;
	}
	if (*last < *first)
		return -EINVAL;
	return 0;
}

/* Saturating: a date centuries ahead must not wrap around to a short delay. */
static uint64_t secs_to_ms(uint64_t secs)
{
	return secs > UINT64_MAX / 1000 ? UINT64_MAX : secs * 1000;
}

int http_parse_retry_after(const char *v, time_t now, uint64_t *delay_ms)
{
	size_t len = strlen(v);
	uint64_t secs;
	time_t t;

	while (len && (v[len - 1] == ' ' || v[len - 1] == '\r' || v[len - 1] == '\n'))
		len--;
	while (len && *v == ' ') {
		v++;
		len--;
	}
	if (parse_u64(v, len, &secs)) {
		*delay_ms = secs_to_ms(secs);
		return 0;
	}
	char *s = xstrndup(v, len);
	t = curl_getdate(s, NULL);
	free(s);
	if (t < 0)
		return -EINVAL;
	/* t > now, so the difference fits in 64 unsigned bits even if now < 0. */
	*delay_ms = t > now ? secs_to_ms((uint64_t)t - (uint64_t)now) : 0;
	return 0;
}

int http_status_errno(long status)
{
	switch (status) {
	case 401:
	case 403:
		return EACCES;
	case 404:
	case 410:
		return ENOENT;
	case 416:
		return ERANGE;
	case 408:
	case 504:
		return ETIMEDOUT;
	default:
		return EIO;
	}
}

bool http_status_retryable(long status)
{
	return status == 408 || status == 429 || (status >= 500 && status <= 599);
}

uint64_t retry_delay_ms(const struct retry_policy *p, unsigned attempt, uint32_t rnd)
{
	uint64_t d = p->base_ms;

	for (unsigned i = 1; i < attempt && d < p->max_ms; i++)
		d = d > p->max_ms / 2 ? p->max_ms : d * 2;
	if (d > p->max_ms)
		d = p->max_ms;
	return d / 2 + (d / 2 ? rnd % (d / 2 + 1) : 0);
}

bool http_header_value(const char *line, size_t len, const char *name,
		       const char **value, size_t *vlen)
{
	size_t n = strlen(name);
	const char *v, *end = line + len;

	if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
		return false;
	v = line + n + 1;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' ||
			    end[-1] == '\t'))
		end--;
	*value = v;
	*vlen = end - v;
	return true;
}
