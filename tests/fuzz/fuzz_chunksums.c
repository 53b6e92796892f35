/*
 * fuzz_chunksums.c - Ollama's chunksums answer (chunkmap_from_chunksums).
 *
 * Input: bytes 0..7 are the blob size (little-endian; sizes above
 * BLOB_SIZE_MAX are folded into range unless byte 8 is odd), the rest (from
 * byte 9) is the response body, not NUL-terminated.
 * Invariants on a parsed list:
 *   chunksums_map        size as given, 1 ≤ n ≤ CHUNKMAP_MAX_CHUNKS, bounds
 *                        strictly increasing from 0 to size, sums present
 *   chunksums_sums       chunk i's sum is the i-th digest in the body
 *   chunksums_roundtrip  the map encodes and decodes to an equal map
 */
#include "config.h"

#include "chunkmap.h"
#include "fuzz_common.h"
#include "manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 9)
		return 0;
	uint64_t bsize = fuzz_le64(data);
	if (!(data[8] & 1))
		bsize %= BLOB_SIZE_MAX + 1;
	const uint8_t *p = data + 9;
	size_t len = size - 9;
	char *body = malloc(len ? len : 1), err[160];

	memcpy(body, p, len);
	err[0] = '\0';
	struct chunkmap *m = chunkmap_from_chunksums(body, len, bsize, err, sizeof(err));
	if (!m) {
		FUZZ_CHECK("chunksums_err", err[0], "no message");
		free(body);
		return 0;
	}
	FUZZ_CHECK("chunksums_map", m->size == bsize && m->n >= 1 &&
		   m->n <= CHUNKMAP_MAX_CHUNKS && m->bounds && m->sums && m->chunk == 0,
		   "bad map header");
	FUZZ_CHECK("chunksums_map", m->bounds[0] == 0 && m->bounds[m->n] == bsize, "ends");
	for (uint32_t i = 0; i < m->n; i++) {
		FUZZ_CHECK("chunksums_map", m->bounds[i] < m->bounds[i + 1], "chunk %u empty", i);
		FUZZ_CHECK("chunksums_map", chunkmap_index(m, m->bounds[i]) == i &&
			   chunkmap_index(m, m->bounds[i + 1] - 1) == i, "index of chunk %u", i);
		FUZZ_CHECK("chunksums_map", !chunkmap_has(m, i), "chunk %u marked present", i);
	}
	/* The sums are the digests of the body, in order. */
	const char *q = body, *end = body + len;
	uint32_t k = 0;
	while (k < m->n && (q = memmem(q, (size_t)(end - q), "sha256:", 7)) != NULL) {
		struct digest d;
		FUZZ_CHECK("chunksums_sums", end - q >= 71 && digest_parse(q, 71, &d) == 0 &&
			   digest_equal(&d, &m->sums[k]), "sum of chunk %u", k);
		k++;
		q += 71;
	}
	FUZZ_CHECK("chunksums_sums", k == m->n, "%u digests for %u chunks", k, m->n);

	struct digest d;
	uint8_t *enc;
	size_t elen;
	struct chunkmap *m2;
	digest_of("x", 1, &d);
	chunkmap_set(m, m->n - 1);
	chunkmap_encode(m, &d, &enc, &elen);
	FUZZ_CHECK("chunksums_roundtrip", chunkmap_decode(enc, elen, &d, bsize, &m2, err,
							   sizeof(err)) == 0, "decode: %s", err);
	FUZZ_CHECK("chunksums_roundtrip", m2->n == m->n && m2->sums &&
		   !memcmp(m2->bounds, m->bounds, (m->n + 1) * sizeof(uint64_t)) &&
		   !memcmp(m2->sums, m->sums, m->n * sizeof(struct digest)) &&
		   chunkmap_has(m2, m->n - 1), "decoded map differs");
	chunkmap_free(m2);
	free(enc);
	chunkmap_free(m);
	free(body);
	return 0;
}
