/*
 * strmap.c - string → integer map, open addressing with linear probing.
 *
 * Used where hostile input could otherwise make blobfs quadratic (a manifest
 * with tens of thousands of layers of one media type). The table doubles when
 * it is half full, so probes stay short — as long as the keys spread. An
 * unkeyed hash lets input be built to collide (FNV-1a did: 30000 layer names
 * in one probe chain took seconds), so keys are hashed with SipHash-2-4 under
 * a random per-process key. (OpenSSL has SipHash only as an EVP_MAC: a fetch
 * that a FIPS configuration refuses and an allocation per hash, where a hash
 * table must not fail. This one gives the reference test vectors.)
 */
#include "config.h"

#include <endian.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "strmap.h"
#include "util.h"

struct slot {
	char *key;
	uint64_t val;
};

struct strmap {
	struct slot *slots;
	size_t cap;     /* a power of two */
	size_t count;
};

static uint64_t sip_key[2];
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;

static void sip_key_init(void)
{
	if (getrandom(sip_key, sizeof(sip_key), GRND_NONBLOCK) != sizeof(sip_key)) {
		/* No entropy yet (early boot): still not known in advance. */
		sip_key[0] = wall_ms() ^ ((uint64_t)getpid() << 40);
		sip_key[1] = now_ms() ^ (uint64_t)(uintptr_t)&sip_key;
	}
}

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

static void sip_round(uint64_t v[4])
{
	v[0] += v[1]; v[1] = ROTL(v[1], 13); v[1] ^= v[0]; v[0] = ROTL(v[0], 32);
	v[2] += v[3]; v[3] = ROTL(v[3], 16); v[3] ^= v[2];
	v[0] += v[3]; v[3] = ROTL(v[3], 21); v[3] ^= v[0];
	v[2] += v[1]; v[1] = ROTL(v[1], 17); v[1] ^= v[2]; v[2] = ROTL(v[2], 32);
}

/* SipHash-2-4 of len bytes under key k. */
static uint64_t siphash(const uint64_t k[2], const unsigned char *p, size_t len)
{
	uint64_t v[4] = {
		k[0] ^ 0x736f6d6570736575ULL, k[1] ^ 0x646f72616e646f6dULL,
		k[0] ^ 0x6c7967656e657261ULL, k[1] ^ 0x7465646279746573ULL,
	};
	uint64_t m, last = (uint64_t)len << 56;

	for (; len >= 8; p += 8, len -= 8) {
		memcpy(&m, p, 8);
		m = le64toh(m);
		v[3] ^= m;
		sip_round(v);
		sip_round(v);
		v[0] ^= m;
	}
	for (size_t i = 0; i < len; i++)
		last |= (uint64_t)p[i] << (8 * i);
	v[3] ^= last;
	sip_round(v);
	sip_round(v);
	v[0] ^= last;
	v[2] ^= 0xff;
	for (int i = 0; i < 4; i++)
		sip_round(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

static uint64_t hash(const char *s)
{
	return siphash(sip_key, (const unsigned char *)s, strlen(s));
}

struct strmap *strmap_new(void)
{
	struct strmap *m = xcalloc(1, sizeof(*m));

	pthread_once(&sip_once, sip_key_init);
	m->cap = 16;
	m->slots = xcalloc(m->cap, sizeof(*m->slots));
	return m;
}

void strmap_free(struct strmap *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->cap; i++)
		free(m->slots[i].key);
	free(m->slots);
	free(m);
}

static struct slot *find(const struct strmap *m, const char *key)
{
	size_t i = hash(key) & (m->cap - 1);

	while (m->slots[i].key && strcmp(m->slots[i].key, key) != 0)
		i = (i + 1) & (m->cap - 1);
	return &m->slots[i];
}

static void grow(struct strmap *m)
{
	struct slot *old = m->slots;
	size_t oldcap = m->cap;

	m->cap *= 2;
	m->slots = xcalloc(m->cap, sizeof(*m->slots));
	for (size_t i = 0; i < oldcap; i++)
		if (old[i].key)
			*find(m, old[i].key) = old[i];
	free(old);
}

void strmap_put(struct strmap *m, const char *key, uint64_t val)
{
	struct slot *s;

	if ((m->count + 1) * 2 > m->cap)
		grow(m);
	s = find(m, key);
	if (!s->key) {
		s->key = xstrdup(key);
		m->count++;
	}
	s->val = val;
}

bool strmap_get(const struct strmap *m, const char *key, uint64_t *val)
{
	const struct slot *s = find(m, key);

	if (!s->key)
		return false;
	if (val)
		*val = s->val;
	return true;
}

size_t strmap_count(const struct strmap *m)
{
	return m->count;
}
