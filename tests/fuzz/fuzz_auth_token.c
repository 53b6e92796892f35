/*
 * fuzz_auth_token.c - token server replies (auth_parse_token).
 *
 * Input: the JSON body, not NUL-terminated and ending at a guard page, so a
 * read past the end inside cJSON crashes.
 * Invariants:
 *   token_fields  on success the token is non-empty, at most 64 KiB, has no
 *                 byte < 0x21 or 0x7f (it goes into an Authorization header),
 *                 and ttl is in [1, 1e9) s; on failure *token is NULL
 */
#include "config.h"

#include <errno.h>

#include "auth.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *body = fuzz_guarded(data, size);
	char *token = (char *)1;
	uint64_t ttl = 0;
	int ret = auth_parse_token(body, size, &token, &ttl);

	if (ret < 0) {
		FUZZ_CHECK("token_fields", ret == -EINVAL && !token, "ret %d", ret);
		return 0;
	}
	FUZZ_CHECK("token_fields", ret == 0 && token && *token && strlen(token) <= (64u << 10),
		   "token length");
	for (const char *c = token; *c; c++)
		FUZZ_CHECK("token_fields", (unsigned char)*c >= 0x21 && *c != 0x7f,
			   "token holds byte 0x%02x", (unsigned char)*c);
	FUZZ_CHECK("token_fields", ttl >= 1 && ttl < 1000000000, "ttl %llu",
		   (unsigned long long)ttl);
	free(token);
	return 0;
}
