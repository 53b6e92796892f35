/*
 * chunkmap.c - the persisted chunk map of a partial blob.
 *
 * A blob being fetched is a sparse file of its full size plus this map, which
 * says which chunks hold verified-durable bytes. The map is only ever written
 * after the data it describes has been fdatasync()ed, and always by atomic
 * rename, so after a crash every chunk it marks is really on disk; chunks that
 * were in flight are simply fetched again.
 *
 * On disk (little-endian):
 *   "BLOBFSM1"  u64 size  u64 chunk  u32 n  u32 flags  digest[32]
 *   [u64 bounds[n + 1]]   if chunk == 0 (chunks from a list)
 *   [digest sums[n]]      if flags & 1 (expected per-chunk sha256)
 *   bits[(n + 7) / 8]
 *   sha256 of all the above
 * The map names its blob and size, so a map can never be applied to the
 * wrong file, and its trailing checksum catches any other damage.
 *
 * A fixed map keeps n * chunk within 64 bits: chunkmap_end() and its callers
 * compute (i + 1) * chunk for i < n. Only a size over 2^63, far beyond
 * BLOB_SIZE_MAX, could break that, but a map file is not trusted.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunkmap.h"
#include "log.h"
#include "util.h"

#define MAGIC "BLOBFSM1"
#define HEADER_LEN (8 + 8 + 8 + 4 + 4 + DIGEST_LEN)
#define FLAG_SUMS 1u
/* A map file can never be larger than this. */
#define MAP_MAX_BYTES (HEADER_LEN + 8 * (CHUNKMAP_MAX_CHUNKS + 1) + \
		       DIGEST_LEN * CHUNKMAP_MAX_CHUNKS + CHUNKMAP_MAX_CHUNKS / 8 + 1 + DIGEST_LEN)

/* How many chunks of `chunk` bytes cover size bytes; never overflows. */
static uint64_t chunks_of(uint64_t size, uint64_t chunk)
{
	return size ? (size - 1) / chunk + 1 : 0;
}

uint64_t chunkmap_auto_chunk(uint64_t size)
{
	uint64_t chunk = CHUNK_MIN;

	while (chunks_of(size, chunk) > CHUNKMAP_TARGET)
		chunk <<= 1;
	return chunk;
}

static struct chunkmap *alloc_map(uint64_t size, uint32_t n)
{
	struct chunkmap *m = xcalloc(1, sizeof(*m));

	m->size = size;
	m->n = n;
	m->bits = xcalloc((n + 7) / 8 + 1, 1);
	return m;
}

/* Do n chunks of `chunk` bytes end within 64 bits? */
static bool chunks_fit(uint64_t chunk, uint64_t n)
{
	return n == 0 || chunk <= UINT64_MAX / n;
}

struct chunkmap *chunkmap_new_fixed(uint64_t size, uint64_t chunk)
{
	if (chunk == 0)
		chunk = chunkmap_auto_chunk(size);
	while (chunks_of(size, chunk) > CHUNKMAP_MAX_CHUNKS)
		chunk <<= 1;
	/* Chunk ends past 2^64 (only for sizes over 2^63): one chunk for all. */
	if (!chunks_fit(chunk, chunks_of(size, chunk)))
		chunk = size;
	struct chunkmap *m = alloc_map(size, (uint32_t)chunks_of(size, chunk));
	m->chunk = chunk;
	return m;
}

static bool bounds_valid(uint64_t size, uint32_t n, const uint64_t *b)
{
	if (n == 0 || n > CHUNKMAP_MAX_CHUNKS || b[0] != 0 || b[n] != size)
		return false;
	for (uint32_t i = 0; i < n; i++)
		if (b[i + 1] <= b[i])
			return false;
	return true;
}

struct chunkmap *chunkmap_new_table(uint64_t size, uint32_t n, const uint64_t *bounds,
				    const struct digest *sums)
{
	struct chunkmap *m;

	if (!bounds_valid(size, n, bounds))
		return NULL;
	m = alloc_map(size, n);
	m->bounds = xmalloc((n + 1) * sizeof(*m->bounds));
	memcpy(m->bounds, bounds, (n + 1) * sizeof(*m->bounds));
	if (sums) {
		m->sums = xmalloc(n * sizeof(*m->sums));
		memcpy(m->sums, sums, n * sizeof(*m->sums));
	}
	return m;
}

static const char *next_word(const char **p, const char *end, size_t *len)
{
	const char *s;

	while (*p < end && (**p == ' ' || **p == '\t' || **p == '\r' || **p == '\n'))
		(*p)++;
	s = *p;
	while (*p < end && !(**p == ' ' || **p == '\t' || **p == '\r' || **p == '\n'))
		(*p)++;
	*len = *p - s;
	return *len ? s : NULL;
}

struct chunkmap *chunkmap_from_chunksums(const char *body, size_t len, uint64_t size,
					 char *err, size_t errlen)
{
	const char *p = body, *end = body + len, *w;
	size_t wl, cap = 0;
	uint64_t *bounds = NULL;
	struct digest *sums = NULL;
	uint32_t n = 0;
	struct chunkmap *m = NULL;

	while ((w = next_word(&p, end, &wl)) != NULL) {
		struct digest d;
		uint64_t a, b;
		const char *dash;
		if (digest_parse(w, wl, &d) < 0) {
			snprintf(err, errlen, "chunk %u: invalid digest", n);
			goto out;
		}
		w = next_word(&p, end, &wl);
		dash = w ? memchr(w, '-', wl) : NULL;
		if (!dash || !parse_u64(w, dash - w, &a) ||
		    !parse_u64(dash + 1, w + wl - dash - 1, &b)) {
			snprintf(err, errlen, "chunk %u: invalid range", n);
			goto out;
		}
		uint64_t expect = n ? bounds[n] : 0;
		if (a != expect || b < a || b >= size) {
			snprintf(err, errlen, "chunk %u: range %llu-%llu does not continue at %llu",
				 n, (unsigned long long)a, (unsigned long long)b,
				 (unsigned long long)expect);
			goto out;
		}
		if (n >= CHUNKMAP_MAX_CHUNKS) {
			snprintf(err, errlen, "more than %u chunks", CHUNKMAP_MAX_CHUNKS);
			goto out;
		}
		if (n + 2 > cap) {
			cap = cap ? 2 * cap : 64;
			bounds = xrealloc(bounds, cap * sizeof(*bounds));
			sums = xrealloc(sums, cap * sizeof(*sums));
		}
		bounds[n] = a;
		bounds[n + 1] = b + 1;
		sums[n] = d;
		n++;
	}
	if (n == 0 || bounds[n] != size) {
		snprintf(err, errlen, "the chunks do not cover the blob");
		goto out;
	}
	m = chunkmap_new_table(size, n, bounds, sums);
	if (!m)
		snprintf(err, errlen, "invalid chunk list");
out:
	free(bounds);
	free(sums);
	return m;
}

void chunkmap_free(struct chunkmap *m)
{
	if (!m)
		return;
	free(m->bounds);
	free(m->sums);
	free(m->bits);
	free(m);
}

bool chunkmap_same_geometry(const struct chunkmap *a, const struct chunkmap *b)
{
	if (a->size != b->size || a->chunk != b->chunk || a->n != b->n ||
	    !a->bounds != !b->bounds || !a->sums != !b->sums)
		return false;
	if (a->bounds && memcmp(a->bounds, b->bounds, (a->n + 1) * sizeof(*a->bounds)))
		return false;
	return !a->sums || !memcmp(a->sums, b->sums, a->n * sizeof(*a->sums));
}

uint32_t chunkmap_index(const struct chunkmap *m, uint64_t off)
{
	uint32_t lo = 0, hi = m->n;

	if (!m->bounds)
		return (uint32_t)(off / m->chunk);
	/* The last i with bounds[i] <= off. */
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (m->bounds[mid] <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

uint32_t chunkmap_count(const struct chunkmap *m)
{
	uint32_t c = 0;

	for (uint32_t i = 0; i < (m->n + 7) / 8; i++)
		c += __builtin_popcount(m->bits[i]);
	return c;
}

uint64_t chunkmap_bytes(const struct chunkmap *m)
{
	uint64_t b = 0;

	for (uint32_t i = 0; i < m->n; i++)
		if (chunkmap_has(m, i))
			b += chunkmap_end(m, i) - chunkmap_start(m, i);
	return b;
}

static void put64(uint8_t **p, uint64_t v)
{
	v = htole64(v);
	memcpy(*p, &v, 8);
	*p += 8;
}

static void put32(uint8_t **p, uint32_t v)
{
	v = htole32(v);
	memcpy(*p, &v, 4);
	*p += 4;
}

static uint64_t get64(const uint8_t **p)
{
	uint64_t v;

	memcpy(&v, *p, 8);
	*p += 8;
	return le64toh(v);
}

static uint32_t get32(const uint8_t **p)
{
	uint32_t v;

	memcpy(&v, *p, 4);
	*p += 4;
	return le32toh(v);
}

static size_t encoded_len(uint64_t chunk, uint32_t n, bool sums)
{
	return HEADER_LEN + (chunk ? 0 : 8 * ((size_t)n + 1)) +
	       (sums ? (size_t)DIGEST_LEN * n : 0) + (n + 7) / 8 + DIGEST_LEN;
}

void chunkmap_encode(const struct chunkmap *m, const struct digest *d,
		     uint8_t **bufp, size_t *lenp)
{
	size_t len = encoded_len(m->chunk, m->n, m->sums != NULL);
	uint8_t *buf = xmalloc(len), *p = buf;
	struct digest sum;

	memcpy(p, MAGIC, 8);
	p += 8;
	put64(&p, m->size);
	put64(&p, m->chunk);
	put32(&p, m->n);
	put32(&p, m->sums ? FLAG_SUMS : 0);
	memcpy(p, d->bytes, DIGEST_LEN);
	p += DIGEST_LEN;
	if (!m->chunk)
		for (uint32_t i = 0; i <= m->n; i++)
			put64(&p, m->bounds[i]);
	if (m->sums) {
		memcpy(p, m->sums, (size_t)DIGEST_LEN * m->n);
		p += (size_t)DIGEST_LEN * m->n;
	}
	memcpy(p, m->bits, (m->n + 7) / 8);
	p += (m->n + 7) / 8;
	digest_of(buf, p - buf, &sum);
	memcpy(p, sum.bytes, DIGEST_LEN);
	*bufp = buf;
	*lenp = len;
}

/* The geometry an encoded map's header gives. */
struct header {
	uint64_t chunk;
	uint32_t n;
	uint32_t flags;
};

/*
 * Check everything but the chunk list and the bits: the magic, the blob the
 * map belongs to, its geometry, its length and its checksum. *body is where
 * the header ends.
 */
static int check_header(const uint8_t *buf, size_t len, const struct digest *d, uint64_t size,
			struct header *h, const uint8_t **body, char *err, size_t errlen)
{
	const uint8_t *p = buf;
	struct digest sum, mine;
	uint64_t msize, chunk;
	uint32_t n, flags;

	if (len < HEADER_LEN + DIGEST_LEN || memcmp(p, MAGIC, 8) != 0) {
		snprintf(err, errlen, "not a chunk map");
		return -EINVAL;
	}
	p += 8;
	msize = get64(&p);
	chunk = get64(&p);
	n = get32(&p);
	flags = get32(&p);
	memcpy(mine.bytes, p, DIGEST_LEN);
	p += DIGEST_LEN;
	if (!digest_equal(&mine, d) || msize != size) {
		snprintf(err, errlen, "the map belongs to another blob");
		return -EINVAL;
	}
	if ((flags & ~FLAG_SUMS) || n > CHUNKMAP_MAX_CHUNKS ||
	    (chunk && (chunk < 4096 || n != chunks_of(size, chunk) || !chunks_fit(chunk, n))) ||
	    (!chunk && n == 0) || ((flags & FLAG_SUMS) && !n)) {
		snprintf(err, errlen, "the map's geometry is invalid");
		return -EINVAL;
	}
	if (len != encoded_len(chunk, n, flags & FLAG_SUMS)) {
		snprintf(err, errlen, "the map has the wrong length");
		return -EINVAL;
	}
	digest_of(buf, len - DIGEST_LEN, &sum);
	if (memcmp(sum.bytes, buf + len - DIGEST_LEN, DIGEST_LEN) != 0) {
		snprintf(err, errlen, "the map's checksum does not match");
		return -EINVAL;
	}
	h->chunk = chunk;
	h->n = n;
	h->flags = flags;
	*body = p;
	return 0;
}

int chunkmap_decode(const uint8_t *buf, size_t len, const struct digest *d,
		    uint64_t size, struct chunkmap **out, char *err, size_t errlen)
{
	const uint8_t *p;
	struct chunkmap *m = NULL;
	struct header h;
	uint64_t chunk;
	uint32_t n, flags;
	int ret;

	*out = NULL;
	ret = check_header(buf, len, d, size, &h, &p, err, errlen);
	if (ret < 0)
		return ret;
	chunk = h.chunk;
	n = h.n;
	flags = h.flags;
	if (chunk) {
		m = alloc_map(size, n);
		m->chunk = chunk;
	} else {
		uint64_t *b = xmalloc(((size_t)n + 1) * sizeof(*b));
		for (uint32_t i = 0; i <= n; i++)
			b[i] = get64(&p);
		m = chunkmap_new_table(size, n, b, NULL);
		free(b);
		if (!m) {
			snprintf(err, errlen, "the map's chunk list is invalid");
			return -EINVAL;
		}
	}
	if (flags & FLAG_SUMS) {
		m->sums = xmalloc((size_t)n * sizeof(*m->sums));
		memcpy(m->sums, p, (size_t)DIGEST_LEN * n);
		p += (size_t)DIGEST_LEN * n;
	}
	memcpy(m->bits, p, (n + 7) / 8);
	/* Bits past the last chunk must be clear. */
	if ((n & 7) && (m->bits[n / 8] >> (n & 7))) {
		chunkmap_free(m);
		snprintf(err, errlen, "the map marks chunks past the end");
		return -EINVAL;
	}
	*out = m;
	return 0;
}

int chunkmap_load_at(int dirfd, const char *name, const struct digest *d, uint64_t size,
		     struct chunkmap **out)
{
	char *buf, err[128];
	size_t len;
	int ret = read_file_at(dirfd, name, MAP_MAX_BYTES, &buf, &len);

	if (ret < 0)
		return ret;
	ret = chunkmap_decode((uint8_t *)buf, len, d, size, out, err, sizeof(err));
	if (ret < 0)
		log_warn("ignoring chunk map '%s': %s", name, err);
	free(buf);
	return ret;
}
