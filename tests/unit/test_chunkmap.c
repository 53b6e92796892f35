/*
 * test_chunkmap.c - chunk maps of partial blobs (chunkmap.h): automatic chunk
 * sizes, chunk geometry of fixed and table maps, the bit operations, the
 * on-disk encoding (round trips and every kind of damage), save/load, and
 * parsing Ollama's chunksums answer.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "chunkmap.h"
#include "util.h"
#include "testutil.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)

static struct digest dfill(uint8_t b)
{
	struct digest d;

	memset(d.bytes, b, sizeof(d.bytes));
	return d;
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
	return a / b + (a % b != 0);
}

/* ---- chunk sizes and geometry ---- */

static void test_auto_chunk_known_sizes(void **state)
{
	assert_int_equal(chunkmap_auto_chunk(0), 16 * KiB);
	assert_int_equal(chunkmap_auto_chunk(1), 16 * KiB);
	assert_int_equal(chunkmap_auto_chunk(100 * MiB), 16 * KiB);
	assert_int_equal(chunkmap_auto_chunk(4 * GiB), 16 * KiB);
	assert_int_equal(chunkmap_auto_chunk(4 * GiB + 16 * KiB), 32 * KiB);
	assert_int_equal(chunkmap_auto_chunk(8 * GiB), 32 * KiB);
	assert_int_equal(chunkmap_auto_chunk(400 * GiB), 2 * MiB);
	assert_int_equal(chunkmap_auto_chunk(1 * TiB), 4 * MiB);
	assert_int_equal(chunkmap_auto_chunk(4 * TiB), 16 * MiB);
}

static void test_auto_chunk_is_power_of_two_at_least_min(void **state)
{
	for (uint64_t size = 1; size < 8 * TiB; size = size * 3 + 7) {
		uint64_t c = chunkmap_auto_chunk(size);
		assert_true(c >= CHUNK_MIN);
		assert_int_equal(c & (c - 1), 0);
		/* Not larger than needed: half the chunk would exceed the target. */
		if (c > CHUNK_MIN)
			assert_true(ceil_div(size, c / 2) > CHUNKMAP_TARGET);
	}
}

static void test_auto_chunk_never_exceeds_target_chunks(void **state)
{
	/* chunkmap.h: "larger blobs get larger chunks, at most CHUNKMAP_TARGET of them". */
	static const uint64_t sizes[] = {
		4 * GiB, 4 * GiB + 1, 4 * GiB + 16 * KiB - 1, 8 * GiB + 1, 400 * GiB + 1,
		1 * TiB + 1, 3 * GiB + 12345,
	};

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		uint64_t c = chunkmap_auto_chunk(sizes[i]);
		if (ceil_div(sizes[i], c) > CHUNKMAP_TARGET)
			fail_msg("size %llu: chunk %llu gives %llu chunks, more than %u",
				 (unsigned long long)sizes[i], (unsigned long long)c,
				 (unsigned long long)ceil_div(sizes[i], c), CHUNKMAP_TARGET);
	}
}

static void test_fixed_geometry(void **state)
{
	struct chunkmap *m = chunkmap_new_fixed(10000, 4096);

	assert_int_equal(m->size, 10000);
	assert_int_equal(m->chunk, 4096);
	assert_int_equal(m->n, 3);
	assert_null(m->bounds);
	assert_null(m->sums);
	assert_int_equal(chunkmap_start(m, 0), 0);
	assert_int_equal(chunkmap_end(m, 0), 4096);
	assert_int_equal(chunkmap_start(m, 2), 8192);
	assert_int_equal(chunkmap_end(m, 2), 10000); /* the short last chunk */
	assert_int_equal(chunkmap_index(m, 0), 0);
	assert_int_equal(chunkmap_index(m, 4095), 0);
	assert_int_equal(chunkmap_index(m, 4096), 1);
	assert_int_equal(chunkmap_index(m, 8191), 1);
	assert_int_equal(chunkmap_index(m, 8192), 2);
	assert_int_equal(chunkmap_index(m, 9999), 2);
	assert_int_equal(chunkmap_count(m), 0);
	chunkmap_free(m);

	/* An exact multiple has no short chunk. */
	m = chunkmap_new_fixed(3 * 4096, 4096);
	assert_int_equal(m->n, 3);
	assert_int_equal(chunkmap_end(m, 2), 3 * 4096);
	chunkmap_free(m);

	/* One byte. */
	m = chunkmap_new_fixed(1, 4096);
	assert_int_equal(m->n, 1);
	assert_int_equal(chunkmap_end(m, 0), 1);
	chunkmap_free(m);
	chunkmap_free(NULL);
}

static void test_fixed_size_zero(void **state)
{
	struct chunkmap *m = chunkmap_new_fixed(0, 0);

	assert_int_equal(m->n, 0);
	assert_int_equal(m->chunk, CHUNK_MIN);
	assert_int_equal(chunkmap_count(m), 0);
	assert_int_equal(chunkmap_bytes(m), 0);
	chunkmap_free(m);
}

static void test_fixed_auto_and_cap(void **state)
{
	struct chunkmap *m = chunkmap_new_fixed(400 * GiB, 0);

	assert_int_equal(m->chunk, 2 * MiB);
	assert_int_equal(m->n, 204800);
	chunkmap_free(m);

	/* A tiny explicit chunk for a huge blob grows until the map is bounded. */
	m = chunkmap_new_fixed(1 * TiB, 4096);
	assert_true(m->n <= CHUNKMAP_MAX_CHUNKS);
	assert_int_equal(m->n, ceil_div(1 * TiB, m->chunk));
	assert_int_equal(m->chunk & (m->chunk - 1), 0);
	assert_int_equal(m->chunk, 256 * KiB);
	chunkmap_free(m);
}

static void test_table_geometry(void **state)
{
	const uint64_t b[] = { 0, 10, 25, 100 };
	struct digest sums[3] = { dfill(1), dfill(2), dfill(3) };
	uint64_t bb[4];
	struct chunkmap *m;

	memcpy(bb, b, sizeof(bb));
	m = chunkmap_new_table(100, 3, bb, sums);
	assert_non_null(m);
	/* Copies, not references. */
	bb[1] = 11;
	sums[0] = dfill(9);
	assert_int_equal(m->chunk, 0);
	assert_int_equal(m->n, 3);
	assert_int_equal(chunkmap_start(m, 1), 10);
	assert_int_equal(chunkmap_end(m, 0), 10);
	assert_int_equal(chunkmap_end(m, 2), 100);
	assert_int_equal(chunkmap_index(m, 0), 0);
	assert_int_equal(chunkmap_index(m, 9), 0);
	assert_int_equal(chunkmap_index(m, 10), 1);
	assert_int_equal(chunkmap_index(m, 24), 1);
	assert_int_equal(chunkmap_index(m, 25), 2);
	assert_int_equal(chunkmap_index(m, 99), 2);
	assert_non_null(m->sums);
	assert_int_equal(m->sums[0].bytes[0], 1);
	assert_int_equal(m->sums[2].bytes[31], 3);
	chunkmap_free(m);

	m = chunkmap_new_table(100, 3, b, NULL);
	assert_non_null(m);
	assert_null(m->sums);
	chunkmap_free(m);
}

static void test_table_index_many_chunks(void **state)
{
	uint32_t n = 1000;
	uint64_t *b = malloc((n + 1) * sizeof(*b));
	struct chunkmap *m;

	assert_non_null(b);
	b[0] = 0;
	for (uint32_t i = 1; i <= n; i++)
		b[i] = b[i - 1] + 1 + (i * 7919) % 97; /* uneven sizes */
	m = chunkmap_new_table(b[n], n, b, NULL);
	assert_non_null(m);
	for (uint32_t i = 0; i < n; i++) {
		assert_int_equal(chunkmap_index(m, b[i]), i);
		assert_int_equal(chunkmap_index(m, b[i + 1] - 1), i);
	}
	chunkmap_free(m);
	free(b);
}

static void test_table_refuses_bad_bounds(void **state)
{
	const uint64_t not0[] = { 1, 10, 100 };
	const uint64_t notsize[] = { 0, 10, 99 };
	const uint64_t flat[] = { 0, 10, 10, 100 };
	const uint64_t down[] = { 0, 50, 20, 100 };
	const uint64_t one[] = { 0 };

	assert_null(chunkmap_new_table(100, 2, not0, NULL));
	assert_null(chunkmap_new_table(100, 2, notsize, NULL));
	assert_null(chunkmap_new_table(100, 3, flat, NULL));
	assert_null(chunkmap_new_table(100, 3, down, NULL));
	assert_null(chunkmap_new_table(0, 0, one, NULL));
}

/* ---- bits ---- */

static void test_set_has_clear_count_bytes(void **state)
{
	struct chunkmap *m = chunkmap_new_fixed(10000, 4096);

	chunkmap_set(m, 2);
	assert_true(chunkmap_has(m, 2));
	assert_false(chunkmap_has(m, 0));
	assert_int_equal(chunkmap_count(m), 1);
	assert_int_equal(chunkmap_bytes(m), 10000 - 8192);
	chunkmap_set(m, 0);
	chunkmap_set(m, 0);
	assert_int_equal(chunkmap_count(m), 2);
	assert_int_equal(chunkmap_bytes(m), 4096 + 1808);
	chunkmap_clear(m, 2);
	assert_false(chunkmap_has(m, 2));
	assert_int_equal(chunkmap_count(m), 1);
	assert_int_equal(chunkmap_bytes(m), 4096);
	chunkmap_clear(m, 1); /* clearing a clear bit */
	assert_int_equal(chunkmap_count(m), 1);
	chunkmap_free(m);

	/* Across byte boundaries. */
	m = chunkmap_new_fixed(20 * 4096 - 1, 4096);
	assert_int_equal(m->n, 20);
	for (uint32_t i = 6; i < 18; i++)
		chunkmap_set(m, i);
	assert_int_equal(chunkmap_count(m), 12);
	assert_false(chunkmap_has(m, 5));
	assert_true(chunkmap_has(m, 7));
	assert_true(chunkmap_has(m, 8));
	assert_false(chunkmap_has(m, 18));
	assert_int_equal(chunkmap_bytes(m), 12 * 4096);
	for (uint32_t i = 0; i < 20; i++)
		chunkmap_set(m, i);
	assert_int_equal(chunkmap_count(m), 20);
	assert_int_equal(chunkmap_bytes(m), m->size);
	chunkmap_free(m);
}

static void test_table_bytes(void **state)
{
	const uint64_t b[] = { 0, 10, 25, 100 };
	struct chunkmap *m = chunkmap_new_table(100, 3, b, NULL);

	chunkmap_set(m, 1);
	assert_int_equal(chunkmap_bytes(m), 15);
	chunkmap_set(m, 2);
	assert_int_equal(chunkmap_bytes(m), 90);
	assert_int_equal(chunkmap_count(m), 2);
	chunkmap_free(m);
}

/* ---- encoding ---- */

static void assert_maps_equal(const struct chunkmap *a, const struct chunkmap *b)
{
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->chunk, b->chunk);
	assert_int_equal(a->n, b->n);
	assert_int_equal(!!a->bounds, !!b->bounds);
	if (a->bounds)
		assert_memory_equal(a->bounds, b->bounds, ((size_t)a->n + 1) * sizeof(uint64_t));
	assert_int_equal(!!a->sums, !!b->sums);
	if (a->sums)
		assert_memory_equal(a->sums, b->sums, (size_t)a->n * sizeof(struct digest));
	for (uint32_t i = 0; i < a->n; i++)
		assert_int_equal(chunkmap_has(a, i), chunkmap_has(b, i));
	assert_int_equal(chunkmap_count(a), chunkmap_count(b));
}

static struct chunkmap *round_trip(const struct chunkmap *m, const struct digest *d)
{
	uint8_t *buf;
	size_t len;
	struct chunkmap *out = NULL;
	char err[128] = "";
	int ret;

	chunkmap_encode(m, d, &buf, &len);
	ret = chunkmap_decode(buf, len, d, m->size, &out, err, sizeof(err));
	if (ret != 0)
		fail_msg("decode = %d: %s", ret, err);
	free(buf);
	assert_maps_equal(m, out);
	return out;
}

static struct chunkmap *table_with_sums(void)
{
	const uint64_t b[] = { 0, 100, 250, 251, 1000, 4096, 5000, 7777, 8000, 9000, 10000 };
	struct digest sums[10];

	for (int i = 0; i < 10; i++)
		sums[i] = dfill((uint8_t)(0x10 + i));
	return chunkmap_new_table(10000, 10, b, sums);
}

static void test_round_trip_fixed(void **state)
{
	struct digest d = dfill(0xab);
	struct chunkmap *m = chunkmap_new_fixed(10 * 4096 + 5, 4096), *out;

	assert_int_equal(m->n, 11);
	chunkmap_set(m, 0);
	chunkmap_set(m, 7);
	chunkmap_set(m, 10);
	out = round_trip(m, &d);
	assert_true(chunkmap_has(out, 10));
	assert_false(chunkmap_has(out, 9));
	chunkmap_free(out);
	chunkmap_free(m);
}

static void test_round_trip_table_with_sums(void **state)
{
	struct digest d = dfill(0xcd);
	struct chunkmap *m = table_with_sums(), *out;

	assert_non_null(m);
	chunkmap_set(m, 1);
	chunkmap_set(m, 9);
	out = round_trip(m, &d);
	chunkmap_free(out);
	chunkmap_free(m);
}

static void test_round_trip_edge_shapes(void **state)
{
	struct digest d = dfill(1);
	struct chunkmap *m, *out;
	const uint64_t one[] = { 0, 5 };
	struct digest s1 = dfill(7);

	/* Size 0. */
	m = chunkmap_new_fixed(0, 0);
	out = round_trip(m, &d);
	chunkmap_free(out);
	chunkmap_free(m);

	/* n a multiple of 8, all set. */
	m = chunkmap_new_fixed(16 * 65536, 65536);
	assert_int_equal(m->n, 16);
	for (uint32_t i = 0; i < 16; i++)
		chunkmap_set(m, i);
	out = round_trip(m, &d);
	assert_int_equal(chunkmap_count(out), 16);
	chunkmap_free(out);
	chunkmap_free(m);

	/* A fixed map with per-chunk sums. */
	m = chunkmap_new_fixed(3 * 4096, 4096);
	m->sums = calloc(3, sizeof(*m->sums));
	m->sums[1] = dfill(0x42);
	chunkmap_set(m, 1);
	out = round_trip(m, &d);
	chunkmap_free(out);
	chunkmap_free(m);

	/* A one-chunk table. */
	m = chunkmap_new_table(5, 1, one, &s1);
	out = round_trip(m, &d);
	chunkmap_free(out);
	chunkmap_free(m);
}

static int decode(const uint8_t *buf, size_t len, const struct digest *d, uint64_t size,
		  char *err, size_t errlen)
{
	struct chunkmap *out = (struct chunkmap *)(uintptr_t)1;
	int ret = chunkmap_decode(buf, len, d, size, &out, err, errlen);

	if (ret == 0)
		chunkmap_free(out);
	else
		assert_null(out);
	return ret;
}

static void test_decode_refuses_other_blob_or_size(void **state)
{
	struct digest d = dfill(0xab), other = dfill(0xac);
	struct chunkmap *m = chunkmap_new_fixed(100000, 4096);
	uint8_t *buf;
	size_t len;
	char err[128] = "";

	chunkmap_encode(m, &d, &buf, &len);
	assert_int_equal(decode(buf, len, &other, 100000, err, sizeof(err)), -EINVAL);
	assert_contains(err, "another blob");
	err[0] = '\0';
	assert_int_equal(decode(buf, len, &d, 100001, err, sizeof(err)), -EINVAL);
	assert_contains(err, "another blob");
	assert_int_equal(decode(buf, len, &d, 100000, err, sizeof(err)), 0);
	free(buf);
	chunkmap_free(m);
}

static void test_decode_refuses_truncation(void **state)
{
	struct digest d = dfill(0xab);
	struct chunkmap *m = table_with_sums();
	uint8_t *buf;
	size_t len;
	char err[128];

	chunkmap_encode(m, &d, &buf, &len);
	for (size_t cut = 0; cut < len; cut++)
		if (decode(buf, cut, &d, m->size, err, sizeof(err)) != -EINVAL)
			fail_msg("a map cut to %zu of %zu bytes was accepted", cut, len);
	free(buf);
	chunkmap_free(m);
}

static void test_decode_refuses_trailing_junk(void **state)
{
	struct digest d = dfill(0xab);
	struct chunkmap *m = chunkmap_new_fixed(100000, 4096);
	uint8_t *buf, *big;
	size_t len;
	char err[128];

	chunkmap_encode(m, &d, &buf, &len);
	big = calloc(1, len + 1);
	memcpy(big, buf, len);
	assert_int_equal(decode(big, len + 1, &d, m->size, err, sizeof(err)), -EINVAL);
	free(big);
	free(buf);
	chunkmap_free(m);
}

static void test_decode_refuses_any_flipped_byte(void **state)
{
	struct digest d = dfill(0xab);
	struct chunkmap *maps[2] = { table_with_sums(), chunkmap_new_fixed(100000, 4096) };

	chunkmap_set(maps[0], 3);
	chunkmap_set(maps[1], 24);
	for (int k = 0; k < 2; k++) {
		uint8_t *buf;
		size_t len;
		char err[128];

		chunkmap_encode(maps[k], &d, &buf, &len);
		for (size_t i = 0; i < len; i++) {
			for (int bit = 0; bit < 8; bit += 3) {
				buf[i] ^= (uint8_t)(1u << bit);
				if (decode(buf, len, &d, maps[k]->size, err, sizeof(err)) != -EINVAL)
					fail_msg("map %d: flipping bit %d of byte %zu was accepted", k, bit, i);
				buf[i] ^= (uint8_t)(1u << bit);
			}
		}
		assert_int_equal(decode(buf, len, &d, maps[k]->size, err, sizeof(err)), 0);
		free(buf);
		chunkmap_free(maps[k]);
	}
}

/*
 * Build a map file by hand, following the format in chunkmap.c's design
 * comment, with a correct checksum, so that the geometry checks are reached.
 */
static uint8_t *craft(uint64_t size, uint64_t chunk, uint32_t n, uint32_t flags,
		      const struct digest *d, const uint64_t *bounds, uint32_t nbounds,
		      uint32_t nsums, const uint8_t *bits, size_t nbits_bytes, size_t *lenp)
{
	size_t len = 8 + 8 + 8 + 4 + 4 + 32 + 8 * (size_t)nbounds + 32 * (size_t)nsums +
		     nbits_bytes + 32;
	uint8_t *buf = calloc(1, len), *p = buf;
	uint64_t v64;
	uint32_t v32;
	struct digest sum;

	memcpy(p, "BLOBFSM1", 8);
	p += 8;
	v64 = htole64(size); memcpy(p, &v64, 8); p += 8;
	v64 = htole64(chunk); memcpy(p, &v64, 8); p += 8;
	v32 = htole32(n); memcpy(p, &v32, 4); p += 4;
	v32 = htole32(flags); memcpy(p, &v32, 4); p += 4;
	memcpy(p, d->bytes, 32);
	p += 32;
	for (uint32_t i = 0; i < nbounds; i++) {
		v64 = htole64(bounds[i]);
		memcpy(p, &v64, 8);
		p += 8;
	}
	for (uint32_t i = 0; i < nsums; i++) {
		memset(p, 0x33, 32);
		p += 32;
	}
	if (nbits_bytes)
		memcpy(p, bits, nbits_bytes);
	p += nbits_bytes;
	digest_of(buf, (size_t)(p - buf), &sum);
	memcpy(p, sum.bytes, 32);
	*lenp = len;
	return buf;
}

static void test_craft_matches_encoder(void **state)
{
	/* The hand-built format is the real one: otherwise the tests below prove nothing. */
	struct digest d = dfill(5);
	struct chunkmap *m = chunkmap_new_fixed(10000, 4096);
	uint8_t bits = 0x05, *a, *b;
	size_t alen, blen;

	chunkmap_set(m, 0);
	chunkmap_set(m, 2);
	chunkmap_encode(m, &d, &a, &alen);
	b = craft(10000, 4096, 3, 0, &d, NULL, 0, 0, &bits, 1, &blen);
	assert_int_equal(alen, blen);
	assert_memory_equal(a, b, alen);
	free(a);
	free(b);
	chunkmap_free(m);
}

static void expect_geometry_refused(uint8_t *buf, size_t len, const struct digest *d,
				    uint64_t size, const char *what)
{
	char err[128] = "";
	int ret = decode(buf, len, d, size, err, sizeof(err));

	free(buf);
	if (ret != -EINVAL)
		fail_msg("%s: decode = %d, want -EINVAL", what, ret);
	if (!strstr(err, "geometry") && !strstr(err, "length") && !strstr(err, "chunk list") &&
	    !strstr(err, "past the end"))
		fail_msg("%s: unexpected reason '%s'", what, err);
}

static void test_decode_refuses_bits_past_end(void **state)
{
	struct digest d = dfill(5);
	uint8_t bits = 0x05 | 0x08; /* chunk 3 of a 3-chunk map */
	size_t len;
	uint8_t *buf = craft(10000, 4096, 3, 0, &d, NULL, 0, 0, &bits, 1, &len);
	char err[128] = "";

	assert_int_equal(decode(buf, len, &d, 10000, err, sizeof(err)), -EINVAL);
	assert_contains(err, "past the end");
	free(buf);
	bits = 0x80;
	buf = craft(10000, 4096, 3, 0, &d, NULL, 0, 0, &bits, 1, &len);
	assert_int_equal(decode(buf, len, &d, 10000, err, sizeof(err)), -EINVAL);
	free(buf);
}

static void test_decode_refuses_bad_geometry(void **state)
{
	struct digest d = dfill(5);
	uint8_t bits[8] = { 0 };
	const uint64_t flat[] = { 0, 10, 10, 100 };
	const uint64_t shortb[] = { 0, 10, 99 };
	size_t len;
	uint8_t *buf;

	/* Chunk count does not match size / chunk. */
	buf = craft(10000, 4096, 4, 0, &d, NULL, 0, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, 10000, "n too large");
	buf = craft(10000, 4096, 2, 0, &d, NULL, 0, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, 10000, "n too small");
	/* Absurdly small chunk. */
	buf = craft(10000, 1000, 10, 0, &d, NULL, 0, 0, bits, 2, &len);
	expect_geometry_refused(buf, len, &d, 10000, "chunk < 4096");
	/* Unknown flag. */
	buf = craft(10000, 4096, 3, 2, &d, NULL, 0, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, 10000, "unknown flag");
	/* Too many chunks. */
	buf = craft(10000, 0, CHUNKMAP_MAX_CHUNKS + 1, 0, &d, NULL, 0, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, 10000, "n > max");
	/* A table with no chunks. */
	buf = craft(100, 0, 0, 0, &d, flat, 1, 0, bits, 0, &len);
	expect_geometry_refused(buf, len, &d, 100, "empty table");
	/* A table whose bounds are not increasing / do not reach the size. */
	buf = craft(100, 0, 3, 0, &d, flat, 4, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, 100, "flat bounds");
	buf = craft(100, 0, 2, 0, &d, shortb, 3, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, 100, "short bounds");
	/* Sums flagged on an empty map. */
	buf = craft(0, 4096, 0, 1, &d, NULL, 0, 0, bits, 0, &len);
	expect_geometry_refused(buf, len, &d, 0, "sums without chunks");
	/* Bad magic. */
	buf = craft(10000, 4096, 3, 0, &d, NULL, 0, 0, bits, 1, &len);
	buf[0] = 'X';
	{
		char err[128] = "";
		assert_int_equal(decode(buf, len, &d, 10000, err, sizeof(err)), -EINVAL);
		assert_contains(err, "not a chunk map");
	}
	free(buf);
}

static void test_decode_refuses_wrapping_chunk_size(void **state)
{
	/*
	 * chunk = 2^64 - 50 for a 100-byte blob: (size + chunk - 1) / chunk
	 * wraps to 0, so a map with zero chunks would describe a non-empty blob.
	 */
	struct digest d = dfill(5);
	size_t len;
	uint8_t *buf = craft(100, UINT64_MAX - 49, 0, 0, &d, NULL, 0, 0, NULL, 0, &len);

	expect_geometry_refused(buf, len, &d, 100, "chunk size that wraps");
}

static void test_decode_refuses_chunk_ends_past_2p64(void **state)
{
	/*
	 * Found by fuzzing: two chunks of 2^63 for a blob of 2^63 + 1 bytes. The
	 * chunk count matches, but the second chunk's end, 2 * 2^63, wraps to 0.
	 * (No blob is that large: BLOB_SIZE_MAX is 4 TiB; a map file is not trusted.)
	 */
	struct digest d = dfill(5);
	uint8_t bits[1] = { 0 };
	size_t len;
	uint8_t *buf;

	buf = craft((1ull << 63) + 1, 1ull << 63, 2, 0, &d, NULL, 0, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, (1ull << 63) + 1, "2 chunks of 2^63");
	buf = craft(UINT64_MAX, 1ull << 62, 4, 0, &d, NULL, 0, 0, bits, 1, &len);
	expect_geometry_refused(buf, len, &d, UINT64_MAX, "4 chunks of 2^62");
}

static void test_fixed_huge_chunk_does_not_wrap(void **state)
{
	/* Chunks whose ends would wrap become one chunk of the whole blob. */
	static const uint64_t cases[][2] = {
		{ (1ull << 63) + 1, 1ull << 63 },
		{ UINT64_MAX, 1ull << 62 },
		{ UINT64_MAX, UINT64_MAX - 1 },
		{ UINT64_MAX, 0 },   /* automatic: a power of two, so the last end is 2^64 */
	};
	struct digest d = dfill(9);

	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		struct chunkmap *m = chunkmap_new_fixed(cases[k][0], cases[k][1]), *out;
		assert_int_equal(m->n, 1);
		assert_int_equal(chunkmap_start(m, 0), 0);
		assert_int_equal(chunkmap_end(m, 0), cases[k][0]);
		assert_int_equal(chunkmap_index(m, cases[k][0] - 1), 0);
		chunkmap_set(m, 0);
		assert_int_equal(chunkmap_bytes(m), cases[k][0]);
		out = round_trip(m, &d);
		chunkmap_free(out);
		chunkmap_free(m);
	}
	/* Where the ends fit, even 2^63 bytes keep their chunks. */
	struct chunkmap *m = chunkmap_new_fixed(1ull << 63, 0);
	assert_true(m->n > 1);
	assert_int_equal(chunkmap_end(m, m->n - 1), 1ull << 63);
	assert_int_equal(chunkmap_end(m, m->n - 2), chunkmap_start(m, m->n - 1));
	chunkmap_free(m);
}

/* ---- save / load ---- */

/* Encode m for d and write it atomically as name in dirfd. */
static int save_at(const struct chunkmap *m, const struct digest *d, int tmpfd, int dirfd,
		   const char *name)
{
	uint8_t *buf;
	size_t len;
	int ret;

	chunkmap_encode(m, d, &buf, &len);
	ret = write_file_atomic_at(tmpfd, dirfd, name, buf, len, 0600);
	free(buf);
	return ret;
}

static void test_save_load(void **state)
{
	char *dir = tu_mkdtemp(), *tmp = tu_path(dir, "tmp"), *path = tu_path(dir, "m.map");
	char *link = tu_path(dir, "link.map");
	struct digest d = dfill(0x77), other = dfill(0x78);
	struct chunkmap *m = table_with_sums(), *out = NULL;
	struct stat st;
	int dirfd, tmpfd;

	(void)state;
	assert_int_equal(mkdir(tmp, 0700), 0);
	dirfd = open(dir, O_RDONLY | O_DIRECTORY);
	tmpfd = open(tmp, O_RDONLY | O_DIRECTORY);
	assert_true(dirfd >= 0 && tmpfd >= 0);
	chunkmap_set(m, 4);
	assert_int_equal(save_at(m, &d, tmpfd, dirfd, "m.map"), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(tu_count_entries(tmp), 0); /* no temporary left behind */
	assert_int_equal(chunkmap_load_at(dirfd, "m.map", &d, m->size, &out), 0);
	assert_maps_equal(m, out);
	chunkmap_free(out);

	/* Saving again replaces the file. */
	chunkmap_set(m, 5);
	assert_int_equal(save_at(m, &d, tmpfd, dirfd, "m.map"), 0);
	assert_int_equal(chunkmap_load_at(dirfd, "m.map", &d, m->size, &out), 0);
	assert_true(chunkmap_has(out, 5));
	chunkmap_free(out);

	assert_int_equal(chunkmap_load_at(dirfd, "m.map", &other, m->size, &out), -EINVAL);
	assert_int_equal(chunkmap_load_at(dirfd, "m.map", &d, m->size + 1, &out), -EINVAL);
	assert_int_equal(chunkmap_load_at(dirfd, "absent.map", &d, m->size, &out), -ENOENT);
	/* A map is never read through a link. */
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(chunkmap_load_at(dirfd, "link.map", &d, m->size, &out), -ELOOP);

	chunkmap_free(m);
	close(dirfd);
	close(tmpfd);
	free(path);
	free(link);
	free(tmp);
	assert_int_equal(tu_rm_rf(dir), 0);
	free(dir);
}

/* ---- chunksums ---- */

#define HA "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define HB "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define HC "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

static struct chunkmap *chunksums(const char *body, uint64_t size, char *err, size_t errlen)
{
	return chunkmap_from_chunksums(body, strlen(body), size, err, errlen);
}

static void test_chunksums_valid(void **state)
{
	char err[128] = "";
	struct chunkmap *m = chunksums(HA " 0-99\n" HB " 100-149\n" HC " 150-150\n", 151,
				       err, sizeof(err));

	if (!m)
		fail_msg("refused: %s", err);
	assert_int_equal(m->n, 3);
	assert_int_equal(m->chunk, 0);
	assert_int_equal(m->size, 151);
	assert_int_equal(chunkmap_start(m, 0), 0);
	assert_int_equal(chunkmap_end(m, 0), 100);
	assert_int_equal(chunkmap_end(m, 1), 150);
	assert_int_equal(chunkmap_end(m, 2), 151);
	assert_non_null(m->sums);
	assert_int_equal(m->sums[0].bytes[0], 0xaa);
	assert_int_equal(m->sums[1].bytes[31], 0xbb);
	assert_int_equal(m->sums[2].bytes[5], 0xcc);
	assert_int_equal(chunkmap_count(m), 0);
	chunkmap_free(m);

	/* CRLF, no final newline, extra blank lines. */
	m = chunksums("\r\n" HA " 0-9\r\n\r\n" HB " 10-19", 20, err, sizeof(err));
	assert_non_null(m);
	assert_int_equal(m->n, 2);
	chunkmap_free(m);

	/* One chunk. */
	m = chunksums(HA " 0-0\n", 1, err, sizeof(err));
	assert_non_null(m);
	assert_int_equal(m->n, 1);
	chunkmap_free(m);
}

static void chunksums_bad(const char *body, uint64_t size, const char *want)
{
	char err[128] = "";
	struct chunkmap *m = chunksums(body, size, err, sizeof(err));

	if (m) {
		chunkmap_free(m);
		fail_msg("accepted '%s' for size %llu", body, (unsigned long long)size);
	}
	assert_contains(err, want);
}

static void test_chunksums_refusals(void **state)
{
	chunksums_bad(HA " 0-99\n" HB " 101-149\n", 150, "does not continue");   /* gap */
	chunksums_bad(HA " 0-99\n" HB " 99-149\n", 150, "does not continue");    /* overlap */
	chunksums_bad(HA " 1-149\n", 150, "does not continue");                  /* not at 0 */
	chunksums_bad(HA " 0-99\n", 150, "do not cover");                        /* short */
	chunksums_bad(HA " 0-150\n", 150, "150");                                /* end >= size */
	chunksums_bad(HA " 0-99\n" HB " 100-150\n", 150, "chunk 1");             /* end >= size */
	chunksums_bad(HA " 10-5\n", 150, "does not continue");
	chunksums_bad(HA " 0-5\n" HB " 6-5\n", 150, "chunk 1");                  /* end < start */
	chunksums_bad("", 150, "do not cover");
	chunksums_bad("  \n\n", 150, "do not cover");
	chunksums_bad("", 0, "do not cover");
	chunksums_bad(HA " 0-0\n", 0, "chunk 0");
	chunksums_bad("sha256:abc 0-99\n", 100, "invalid digest");
	chunksums_bad("sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA 0-99\n",
		      100, "invalid digest");
	chunksums_bad("0-99 " HA "\n", 100, "invalid digest");
	chunksums_bad(HA "\n", 100, "invalid range");
	chunksums_bad(HA " 0_99\n", 100, "invalid range");
	chunksums_bad(HA " a-99\n", 100, "invalid range");
	chunksums_bad(HA " 0-\n", 100, "invalid range");
	chunksums_bad(HA " -99\n", 100, "invalid range");
	chunksums_bad(HA " 0-99 junk\n", 100, "invalid digest");
	chunksums_bad(HA " 0-99999999999999999999999\n", 100, "invalid range");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_auto_chunk_known_sizes),
		cmocka_unit_test(test_auto_chunk_is_power_of_two_at_least_min),
		cmocka_unit_test(test_auto_chunk_never_exceeds_target_chunks),
		cmocka_unit_test(test_fixed_geometry),
		cmocka_unit_test(test_fixed_size_zero),
		cmocka_unit_test(test_fixed_auto_and_cap),
		cmocka_unit_test(test_table_geometry),
		cmocka_unit_test(test_table_index_many_chunks),
		cmocka_unit_test(test_table_refuses_bad_bounds),
		cmocka_unit_test(test_set_has_clear_count_bytes),
		cmocka_unit_test(test_table_bytes),
		cmocka_unit_test(test_round_trip_fixed),
		cmocka_unit_test(test_round_trip_table_with_sums),
		cmocka_unit_test(test_round_trip_edge_shapes),
		cmocka_unit_test(test_decode_refuses_other_blob_or_size),
		cmocka_unit_test(test_decode_refuses_truncation),
		cmocka_unit_test(test_decode_refuses_trailing_junk),
		cmocka_unit_test(test_decode_refuses_any_flipped_byte),
		cmocka_unit_test(test_craft_matches_encoder),
		cmocka_unit_test(test_decode_refuses_bits_past_end),
		cmocka_unit_test(test_decode_refuses_bad_geometry),
		cmocka_unit_test(test_decode_refuses_wrapping_chunk_size),
		cmocka_unit_test(test_decode_refuses_chunk_ends_past_2p64),
		cmocka_unit_test(test_fixed_huge_chunk_does_not_wrap),
		cmocka_unit_test(test_save_load),
		cmocka_unit_test(test_chunksums_valid),
		cmocka_unit_test(test_chunksums_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
