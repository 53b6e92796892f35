/*
 * fuzz_http_header.c - raw header lines as curl hands them to fetch_job.c's
 * on_header(): http_header_value() with each header name blobfs looks for,
 * then the value (copied to a C string, as set_str() does) through the parser
 * that fetch_job.c uses for it.
 *
 * Input: one header line, not NUL-terminated (curl's buffer is not).
 * Invariants:
 *   header_value  a match means the line starts with "<name>:" (any case); the
 *                 value lies inside the line with blanks trimmed off both
 *                 ends (and CR/LF off the end)
 * The per-header parsers are also run here; their own invariants are checked
 * by their own harnesses.
 */
#include "config.h"

#include <strings.h>

#include "auth.h"
#include "fuzz_common.h"
#include "http.h"
#include "url.h"
#include "util.h"

static const char *const names[] = {
	"Location", "WWW-Authenticate", "Retry-After", "Content-Range", "Content-Type",
	"Docker-Content-Digest", "Content-Location", "Content-Length",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;

	if (size > 8192) /* HEADER_MAX in fetch_job.c */
		return 0;
	for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
		const char *v = NULL;
		size_t vl = 0, n = strlen(names[k]);

		if (!http_header_value(line, size, names[k], &v, &vl))
			continue;
		FUZZ_CHECK("header_value", size > n && !strncasecmp(line, names[k], n) &&
			   line[n] == ':', "'%s' matched %s", fuzz_esc(line, size), names[k]);
		FUZZ_CHECK("header_value", v >= line + n + 1 && v + vl <= line + size,
			   "value outside the line");
		FUZZ_CHECK("header_value", !vl || (v[0] != ' ' && v[0] != '\t' &&
			   !memchr(" \t\r\n", v[vl - 1], 4)), "value not trimmed: '%s'",
			   fuzz_esc(v, vl));
		char *val = xstrndup(v, vl);
		uint64_t a, b, c;
		switch (k) {
		case 0: {
			char *u = url_resolve("https://registry.example.com/v2/library/m/blobs/sha256:0", val);
			free(u);
			break;
		}
		case 1: {
			struct auth_challenge ch;
			if ((vl >= 6 && !strncasecmp(val, "Bearer", 6)) ||
			    (vl >= 5 && !strncasecmp(val, "Basic", 5))) {
				if (auth_parse_challenge(val, strlen(val), &ch) == 0)
					auth_challenge_release(&ch);
			}
			break;
		}
		case 2:
			http_parse_retry_after(val, 1700000000, &a);
			break;
		case 3:
			if (http_parse_content_range(val, strlen(val), &a, &b, &c) == 0)
				FUZZ_CHECK("content_range_order", a <= b &&
					   (c == HTTP_TOTAL_UNKNOWN || b < c), "order");
			break;
		case 7:
			parse_u64(v, vl, &a);
			break;
		}
		free(val);
	}
	return 0;
}
