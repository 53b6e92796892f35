/* http.h - HTTP header parsing, status → errno, and the retry policy. */
#ifndef BLOBFS_HTTP_H
#define BLOBFS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define HTTP_TOTAL_UNKNOWN UINT64_MAX

/*
 * "bytes <first>-<last>/<total>" (total may be "*"). last is inclusive.
 * 0 or -EINVAL.
 */
int http_parse_content_range(const char *v, size_t len, uint64_t *first,
			     uint64_t *last, uint64_t *total);
/*
 * Retry-After: delta seconds or an HTTP date (relative to now). A delay past
 * UINT64_MAX ms saturates there (callers cap it). 0 or -EINVAL.
 */
int http_parse_retry_after(const char *v, time_t now, uint64_t *delay_ms);

/* Which errno a final HTTP status maps to (404 → ENOENT, 401/403 → EACCES, ...). */
int http_status_errno(long status);
/* Is a status worth retrying (408, 429, 5xx)? */
bool http_status_retryable(long status);

struct retry_policy {
	unsigned max_attempts;   /* consecutive failures before giving up */
	uint64_t base_ms;        /* first backoff */
	uint64_t max_ms;         /* backoff cap */
	uint64_t retry_after_max_ms; /* cap on a server's Retry-After */
};

/*
 * Delay before attempt number `attempt` (1 = first retry): exponential from
 * base_ms, capped at max_ms, with "equal jitter" — half fixed, half random
 * from rnd — so retries from many ranges spread out.
 */
uint64_t retry_delay_ms(const struct retry_policy *p, unsigned attempt, uint32_t rnd);

/* Header name match at the start of a raw header line; returns the trimmed value. */
bool http_header_value(const char *line, size_t len, const char *name,
		       const char **value, size_t *vlen);

#endif
