/*
 * strmap.c - string → integer map, open addressing with linear probing.
 *
 * Used where hostile input could otherwise make blobfs quadratic (a manifest
 * with tens of thousands of layers of one media type). The table doubles when
 * it is half full, so probes stay short.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

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

static uint64_t hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

struct strmap *strmap_new(void)
{
	struct strmap *m = xcalloc(1, sizeof(*m));

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
