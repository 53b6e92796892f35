/*
 * digest.c - sha256 digests.
 *
 * The only digest algorithm blobfs accepts is sha256, written as
 * "sha256:<64 lowercase hex>" in manifests and "sha256-<hex>" on disk, as
 * Ollama does. Uppercase hex is refused: two spellings of one digest would
 * give one blob two file names.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "digest.h"
#include "log.h"
#include "util.h"

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int parse_hex(const char *s, size_t len, struct digest *d)
{
	if (len != DIGEST_HEX_LEN)
		return -EINVAL;
	for (size_t i = 0; i < DIGEST_LEN; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		d->bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int digest_parse(const char *s, size_t len, struct digest *d)
{
	if (len < 7 || memcmp(s, "sha256:", 7) != 0)
		return -EINVAL;
	return parse_hex(s + 7, len - 7, d);
}

int digest_parse_filename(const char *s, struct digest *d)
{
	if (strncmp(s, "sha256-", 7) != 0)
		return -EINVAL;
	return parse_hex(s + 7, strlen(s + 7), d);
}

void digest_hex(const struct digest *d, char *buf)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < DIGEST_LEN; i++) {
		buf[2 * i] = hex[d->bytes[i] >> 4];
		buf[2 * i + 1] = hex[d->bytes[i] & 15];
	}
	buf[DIGEST_HEX_LEN] = '\0';
}

void digest_format(const struct digest *d, char *buf)
{
	memcpy(buf, "sha256:", 7);
	digest_hex(d, buf + 7);
}

void digest_filename(const struct digest *d, char *buf)
{
	memcpy(buf, "sha256-", 7);
	digest_hex(d, buf + 7);
}

bool digest_equal(const struct digest *a, const struct digest *b)
{
	return memcmp(a->bytes, b->bytes, DIGEST_LEN) == 0;
}

struct hasher {
	EVP_MD_CTX *ctx;
};

struct hasher *hasher_new(void)
{
	struct hasher *h = xmalloc(sizeof(*h));

	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
		log_error("cannot initialise sha256");
		abort();
	}
	return h;
}

void hasher_update(struct hasher *h, const void *buf, size_t len)
{
	EVP_DigestUpdate(h->ctx, buf, len);
}

void hasher_final(struct hasher *h, struct digest *d)
{
	unsigned int n = DIGEST_LEN;

	EVP_DigestFinal_ex(h->ctx, d->bytes, &n);
}

void hasher_reset(struct hasher *h)
{
	EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL);
}

void hasher_free(struct hasher *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void digest_of(const void *buf, size_t len, struct digest *d)
{
	struct hasher *h = hasher_new();

	hasher_update(h, buf, len);
	hasher_final(h, d);
	hasher_free(h);
}

int digest_fd(int fd, uint64_t off, uint64_t len, struct digest *d,
	      void (*progress)(void *arg, uint64_t done), void *arg)
{
	const size_t bufsize = 1 << 20;
	char *buf = xmalloc(bufsize);
	struct hasher *h = hasher_new();
	uint64_t done = 0;
	int ret = 0;

	posix_fadvise(fd, off, len, POSIX_FADV_SEQUENTIAL);
	while (done < len) {
		size_t n = MIN(bufsize, len - done);
		ret = pread_all(fd, buf, n, off + done);
		if (ret < 0)
			break;
		hasher_update(h, buf, n);
		done += n;
		if (progress)
			progress(arg, done);
	}
	if (ret == 0)
		hasher_final(h, d);
	hasher_free(h);
	free(buf);
	return ret;
}

void digest_set_add(struct digest_set *s, const struct digest *d)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 64;
		s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
	}
	s->v[s->n++] = *d;
	s->sealed = false;
}

static int cmp_digest(const void *a, const void *b)
{
	return memcmp(a, b, DIGEST_LEN);
}

void digest_set_seal(struct digest_set *s)
{
	size_t k = 0;

	if (s->n > 1)
		qsort(s->v, s->n, sizeof(*s->v), cmp_digest);
	for (size_t i = 0; i < s->n; i++)
		if (k == 0 || !digest_equal(&s->v[k - 1], &s->v[i]))
			s->v[k++] = s->v[i];
	s->n = k;
	s->sealed = true;
}

bool digest_set_has(const struct digest_set *s, const struct digest *d)
{
	return s->n && bsearch(d, s->v, s->n, sizeof(*s->v), cmp_digest) != NULL;
}

void digest_set_release(struct digest_set *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}
