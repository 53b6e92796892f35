/* chunkmap.h - which chunks of a partial blob are durable on disk. */
#ifndef BLOBFS_CHUNKMAP_H
#define BLOBFS_CHUNKMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"

/*
 * The smallest chunk; larger blobs get larger chunks, at most CHUNKMAP_TARGET
 * of them. A read that misses fetches at least a chunk, so this is what a
 * random 4 KiB read costs. Reading 1% of a 4 GiB blob at random fetched 15%
 * of it with 64 KiB chunks, 4.0% with 16 KiB (bench/run --only random).
 * 262144 chunks cost a blob 256 KiB of chunk states and a 32 KiB bitmap.
 */
#define CHUNK_MIN (16u << 10)
#define CHUNKMAP_TARGET 262144u
/* A map (or a chunksums list) with more chunks than this is refused. */
#define CHUNKMAP_MAX_CHUNKS (1u << 22)

struct chunkmap {
	uint64_t size;          /* blob size */
	uint64_t chunk;         /* fixed chunk size; 0 when bounds is used */
	uint32_t n;             /* number of chunks */
	uint64_t *bounds;       /* n + 1 offsets when chunks come from a list */
	struct digest *sums;    /* expected sha256 of each chunk, or NULL */
	uint8_t *bits;          /* chunk i durable: bits[i / 8] & (1 << i % 8) */
};

/* The default chunk size for a blob: a power of two ≥ CHUNK_MIN. */
uint64_t chunkmap_auto_chunk(uint64_t size);
/* A map of fixed-size chunks, all missing. chunk 0 = automatic. */
struct chunkmap *chunkmap_new_fixed(uint64_t size, uint64_t chunk);
/*
 * A map whose chunks come from a list (Ollama's chunksums): bounds has n + 1
 * entries from 0 to size, strictly increasing; sums may be NULL. Both are
 * copied. NULL if the list is invalid.
 */
struct chunkmap *chunkmap_new_table(uint64_t size, uint32_t n, const uint64_t *bounds,
				    const struct digest *sums);
void chunkmap_free(struct chunkmap *m);
/*
 * Parse Ollama's chunksums answer ("sha256:<hex> <start>-<end>" per line,
 * inclusive, contiguous from 0 to size - 1) into a map with per-chunk sums.
 * NULL with a reason in err if it is not exactly that.
 */
struct chunkmap *chunkmap_from_chunksums(const char *body, size_t len, uint64_t size,
					 char *err, size_t errlen);

static inline uint64_t chunkmap_start(const struct chunkmap *m, uint32_t i)
{
	return m->bounds ? m->bounds[i] : (uint64_t)i * m->chunk;
}

static inline uint64_t chunkmap_end(const struct chunkmap *m, uint32_t i)
{
	if (m->bounds)
		return m->bounds[i + 1];
	uint64_t e = ((uint64_t)i + 1) * m->chunk;
	return e < m->size ? e : m->size;
}

/* The chunk that holds byte off (off < size). */
uint32_t chunkmap_index(const struct chunkmap *m, uint64_t off);

static inline bool chunkmap_has(const struct chunkmap *m, uint32_t i)
{
	return m->bits[i >> 3] & (1u << (i & 7));
}

static inline void chunkmap_set(struct chunkmap *m, uint32_t i)
{
	m->bits[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static inline void chunkmap_clear(struct chunkmap *m, uint32_t i)
{
	m->bits[i >> 3] &= (uint8_t)~(1u << (i & 7));
}

/* Do a and b cut the blob into the same chunks, with the same checksums? */
bool chunkmap_same_geometry(const struct chunkmap *a, const struct chunkmap *b);

uint32_t chunkmap_count(const struct chunkmap *m);
uint64_t chunkmap_bytes(const struct chunkmap *m);

/* Serialise / parse the on-disk form, which names the blob it belongs to. */
void chunkmap_encode(const struct chunkmap *m, const struct digest *d,
		     uint8_t **buf, size_t *len);
/*
 * Parse a map for blob d of the given size. Anything inconsistent (another
 * blob, another size, a bad checksum, junk) is -EINVAL with a reason in err.
 */
int chunkmap_decode(const uint8_t *buf, size_t len, const struct digest *d,
		    uint64_t size, struct chunkmap **out, char *err, size_t errlen);

/*
 * Read and parse the map file name in dirfd (never through a link); -ENOENT,
 * or -EINVAL (logged) if it is not a map of blob d of that size.
 */
int chunkmap_load_at(int dirfd, const char *name, const struct digest *d, uint64_t size,
		     struct chunkmap **out);

#endif
