/* digest.h - sha256 content digests: parse, format, hash (OpenSSL EVP). */
#ifndef BLOBFS_DIGEST_H
#define BLOBFS_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DIGEST_LEN 32
#define DIGEST_HEX_LEN 64
/* "sha256:" + 64 hex + NUL */
#define DIGEST_STR_LEN (7 + DIGEST_HEX_LEN + 1)

struct digest {
	uint8_t bytes[DIGEST_LEN];
};

/* Parse "sha256:<64 lowercase hex>" (len bytes, not NUL-terminated); 0 or -EINVAL. */
int digest_parse(const char *s, size_t len, struct digest *d);
/* Parse a blob file name "sha256-<64 lowercase hex>"; 0 or -EINVAL. */
int digest_parse_filename(const char *s, struct digest *d);
/* "sha256:<hex>" into buf of DIGEST_STR_LEN. */
void digest_format(const struct digest *d, char *buf);
/* "sha256-<hex>" (the file name in blobs/) into buf of DIGEST_STR_LEN. */
void digest_filename(const struct digest *d, char *buf);
/* 64 lowercase hex digits into buf of DIGEST_HEX_LEN + 1. */
void digest_hex(const struct digest *d, char *buf);
bool digest_equal(const struct digest *a, const struct digest *b);

/* sha256 of a buffer. */
void digest_of(const void *buf, size_t len, struct digest *d);
/*
 * sha256 of len bytes of fd from offset off. Calls progress(arg, done) now and
 * then if not NULL. Returns 0 or negative errno.
 */
int digest_fd(int fd, uint64_t off, uint64_t len, struct digest *d,
	      void (*progress)(void *arg, uint64_t done), void *arg);

/* An incremental hash; wraps EVP_MD_CTX. */
struct hasher;
struct hasher *hasher_new(void);
void hasher_update(struct hasher *h, const void *buf, size_t len);
void hasher_final(struct hasher *h, struct digest *d);
void hasher_reset(struct hasher *h);
void hasher_free(struct hasher *h);

/* A set of digests: append, then seal (sort) before lookups. */
struct digest_set {
	struct digest *v;
	size_t n, cap;
	bool sealed;
};

void digest_set_add(struct digest_set *s, const struct digest *d);
/* Sort and drop repeats; must be called before digest_set_has. */
void digest_set_seal(struct digest_set *s);
bool digest_set_has(const struct digest_set *s, const struct digest *d);
void digest_set_release(struct digest_set *s);

#endif
