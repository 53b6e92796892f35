/*
 * fuzz_chunkmap.c - the on-disk chunk map (chunkmap_decode / chunkmap_encode).
 *
 * Input: byte 0 is a mode, bytes 1..8 a blob size (little-endian), the rest
 * is a map file. Mode bits:
 *   1   check the map against the digest in its own header (else a fixed one)
 *   2   check it against the size in its own header (else bytes 1..8)
 *   4   recompute the trailing sha256 first, so the fuzzer gets past it
 *   8   don't decode: build a fixed map (chunkmap_new_fixed) of that size with
 *       chunk 4K << (byte 1 % 19) (or automatic), set bits from the rest,
 *       encode and decode it
 *   16  allow sizes above BLOB_SIZE_MAX (no blob that large can exist: the
 *       manifest parser refuses it, so findings that need it are theoretical)
 * Invariants on a decoded map:
 *   chunkmap_geometry  n ≥ 1 unless size is 0; chunks are non-empty, contiguous,
 *                      from 0 to size; chunkmap_index maps each chunk's first and
 *                      last byte back to it; count ≤ n, bytes ≤ size
 *   chunkmap_roundtrip encode(decode(x)) == x byte for byte, and decoding that
 *                      again gives an equal map
 */
#include "config.h"

#include <errno.h>

#include "chunkmap.h"
#include "fuzz_common.h"
#include "manifest.h"

static struct digest fixed;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	digest_of("blobfs fuzz", 11, &fixed);
	return 0;
}

static bool maps_equal(const struct chunkmap *a, const struct chunkmap *b)
{
	if (a->size != b->size || a->chunk != b->chunk || a->n != b->n ||
	    !a->bounds != !b->bounds || !a->sums != !b->sums)
		return false;
	if (a->bounds && memcmp(a->bounds, b->bounds, ((size_t)a->n + 1) * sizeof(*a->bounds)))
		return false;
	if (a->sums && memcmp(a->sums, b->sums, (size_t)a->n * sizeof(*a->sums)))
		return false;
	return memcmp(a->bits, b->bits, (a->n + 7) / 8) == 0;
}

/* The next chunk to check after i: all of a small map, else both ends and a stride. */
static uint32_t next_sample(uint32_t i, uint32_t n)
{
	if (n <= 4096 || i + 1 < 1024 || i + 1 >= n - 1024)
		return i + 1;
	uint32_t stride = n / 2048, next = (i + 1 + stride - 1) / stride * stride;
	return next < n - 1024 ? next : n - 1024;
}

static void check_geometry(const struct chunkmap *m, uint64_t size)
{
	FUZZ_CHECK("chunkmap_geometry", m->size == size, "size %llu, want %llu",
		   (unsigned long long)m->size, (unsigned long long)size);
	FUZZ_CHECK("chunkmap_geometry", (m->n == 0) == (size == 0), "n %u for size %llu",
		   m->n, (unsigned long long)size);
	for (uint32_t i = 0; i < m->n; i = next_sample(i, m->n)) {
		uint64_t s = chunkmap_start(m, i), e = chunkmap_end(m, i);
		uint64_t prev = i ? chunkmap_end(m, i - 1) : 0;
		FUZZ_CHECK("chunkmap_geometry", s == prev && s < e && e <= size,
			   "chunk %u of %u is [%llu, %llu) after %llu; size %llu chunk %llu", i, m->n,
			   (unsigned long long)s, (unsigned long long)e, (unsigned long long)prev,
			   (unsigned long long)size, (unsigned long long)m->chunk);
		FUZZ_CHECK("chunkmap_geometry", chunkmap_index(m, s) == i &&
			   chunkmap_index(m, e - 1) == i, "chunkmap_index wrong for chunk %u", i);
	}
	FUZZ_CHECK("chunkmap_geometry", !m->n || chunkmap_end(m, m->n - 1) == size,
		   "chunks end at %llu, size %llu",
		   (unsigned long long)chunkmap_end(m, m->n - 1), (unsigned long long)size);
	FUZZ_CHECK("chunkmap_geometry", chunkmap_count(m) <= m->n &&
		   (m->n > 65536 || chunkmap_bytes(m) <= size),
		   "count %u bytes %llu", chunkmap_count(m), (unsigned long long)chunkmap_bytes(m));
}

static void roundtrip(const struct chunkmap *m, const struct digest *d, uint64_t size,
		      const uint8_t *orig, size_t origlen)
{
	uint8_t *enc;
	size_t elen;
	struct chunkmap *m2;
	char err[128];

	chunkmap_encode(m, d, &enc, &elen);
	if (orig)
		FUZZ_CHECK("chunkmap_roundtrip", elen == origlen && !memcmp(enc, orig, elen),
			   "re-encoding a decoded map gives other bytes (%zu vs %zu)", elen, origlen);
	int ret = chunkmap_decode(enc, elen, d, size, &m2, err, sizeof(err));
	FUZZ_CHECK("chunkmap_roundtrip", ret == 0, "an encoded map does not decode: %s", err);
	FUZZ_CHECK("chunkmap_roundtrip", maps_equal(m, m2), "decoded map differs");
	chunkmap_free(m2);
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 9)
		return 0;
	uint8_t mode = data[0];
	uint64_t bsize = fuzz_le64(data + 1);
	const uint8_t *map = data + 9;
	size_t len = size - 9;
	struct digest d = fixed;
	struct chunkmap *m;
	char err[128];

	if (mode & 8) {
		uint64_t chunk = data[1] % 20 == 19 ? 0 : 4096ull << (data[1] % 20);
		bsize >>= 8;
		if (!(mode & 16))
			bsize &= BLOB_SIZE_MAX * 2 - 1;
		if (bsize > BLOB_SIZE_MAX && !(mode & 16))
			return 0;
		m = chunkmap_new_fixed(bsize, chunk);
		check_geometry(m, bsize);
		for (size_t i = 0; i + 4 <= len && m->n; i += 4)
			chunkmap_set(m, fuzz_le32(map + i) % m->n);
		roundtrip(m, &d, bsize, NULL, 0);
		chunkmap_free(m);
		return 0;
	}

	if ((mode & 1) && len >= 64)
		memcpy(d.bytes, map + 32, DIGEST_LEN);
	if ((mode & 2) && len >= 16)
		bsize = fuzz_le64(map + 8);
	if (bsize > BLOB_SIZE_MAX && !(mode & 16))
		return 0;

	/* An exactly-sized copy, so ASan sees any read past the end. */
	uint8_t *buf = malloc(len ? len : 1);
	memcpy(buf, map, len);
	if ((mode & 4) && len >= DIGEST_LEN) {
		struct digest sum;
		digest_of(buf, len - DIGEST_LEN, &sum);
		memcpy(buf + len - DIGEST_LEN, sum.bytes, DIGEST_LEN);
	}
	m = (struct chunkmap *)1;
	err[0] = '\0';
	int ret = chunkmap_decode(buf, len, &d, bsize, &m, err, sizeof(err));
	if (ret < 0) {
		FUZZ_CHECK("chunkmap_err", ret == -EINVAL && !m && err[0], "ret %d", ret);
	} else {
		check_geometry(m, bsize);
		roundtrip(m, &d, bsize, buf, len);
		chunkmap_free(m);
	}
	free(buf);
	return 0;
}
