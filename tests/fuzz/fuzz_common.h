/*
 * fuzz_common.h - what every harness shares: invariant checks that abort with
 * "INVARIANT <name> violated (...)" (unless $FUZZ_IGNORE names them), input
 * copies (a C string; bytes that end exactly at a PROT_NONE page, so a read
 * past the end is a SEGV even in uninstrumented cJSON), little-endian
 * integers, printable escapes for
 * messages, and a reference answer to "is this host a loopback address".
 */
#ifndef BLOBFS_FUZZ_COMMON_H
#define BLOBFS_FUZZ_COMMON_H

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

/* Is the invariant turned off by FUZZ_IGNORE (comma-separated names)? */
static inline bool fuzz_ignored(const char *name)
{
	const char *list = getenv("FUZZ_IGNORE");
	size_t n = strlen(name);

	for (const char *p = list; p && *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
		if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0'))
			return true;
	}
	return false;
}

#define FUZZ_CHECK(name, cond, ...)                                                  \
	do {                                                                         \
		if (!(cond) && !fuzz_ignored(name)) {                                \
			fprintf(stderr, "INVARIANT %s violated (", (name));          \
			fprintf(stderr, __VA_ARGS__);                                \
			fprintf(stderr, ")\n");                                      \
			abort();                                                     \
		}                                                                    \
	} while (0)

/*
 * s[0..n) with non-printable bytes as \xNN, cut at 300 bytes; one of eight
 * rotating buffers, so a message may hold several.
 */
static inline const char *fuzz_esc(const char *s, size_t n)
{
	static char bufs[8][300 * 4 + 8];
	static unsigned next;
	char *out = bufs[next++ % 8], *o = out;

	if (!s)
		return "(null)";
	for (size_t i = 0; i < n && i < 300; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '\\')
			*o++ = (char)c;
		else
			o += sprintf(o, "\\x%02x", c);
	}
	if (n > 300)
		o += sprintf(o, "...");
	*o = '\0';
	return out;
}

/* Little-endian integers from the input (the caller checked there are enough bytes). */
static inline uint64_t fuzz_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static inline uint32_t fuzz_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The bytes up to the first NUL (or all of them), as a C string to free. */
static inline char *fuzz_strz(const uint8_t *data, size_t size)
{
	size_t n = strnlen((const char *)data, size);
	char *s = malloc(n + 1);

	if (!s)
		abort();
	memcpy(s, data, n);
	s[n] = '\0';
	return s;
}

/*
 * A copy of the input that ends exactly where a PROT_NONE page begins; valid
 * until the next call.
 */
static inline const char *fuzz_guarded(const uint8_t *data, size_t size)
{
	static char *map;
	static size_t maplen;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t body = (size + page - 1) / page * page;

	if (map)
		munmap(map, maplen);
	maplen = body + page;
	map = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED || mprotect(map + body, page, PROT_NONE) != 0)
		abort();
	memcpy(map + body - size, data, size);
	return map + body - size;
}

/*
 * Is host (as curl's URL parser gives it: a name, a dotted IPv4 address or a
 * bracketed IPv6 one) an address on loopback? "localhost" and names under
 * ".localhost" count: curl resolves them to loopback itself.
 */
static inline bool fuzz_really_loopback(const char *host)
{
	char buf[256];
	size_t n = strlen(host);
	unsigned char a[16];

	if (n >= sizeof(buf))
		return false;
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
	} else {
		memcpy(buf, host, n + 1);
	}
	n = strlen(buf);
	if (n && buf[n - 1] == '.')
		buf[--n] = '\0';
	if (strcasecmp(buf, "localhost") == 0 ||
	    (n > 10 && strcasecmp(buf + n - 10, ".localhost") == 0))
		return true;
	if (inet_pton(AF_INET, buf, a) == 1)
		return a[0] == 127;
	if (inet_pton(AF_INET6, buf, a) == 1) {
		static const unsigned char one[16] = { [15] = 1 };
		static const unsigned char v4[12] = { [10] = 0xff, [11] = 0xff };
		return memcmp(a, one, 16) == 0 || (memcmp(a, v4, 12) == 0 && a[12] == 127);
	}
	return false;
}

#endif
