/* ranges.c - a small, bounded set of byte ranges (see ranges.h). */
#include "config.h"

#include <string.h>

#include "ranges.h"
#include "util.h"

void ranges_add(struct ranges *s, uint64_t start, uint64_t end)
{
	unsigned i = 0, j;

	if (start >= end)
		return;
	/* The first range that ends at or after start may touch [start, end). */
	while (i < s->n && s->r[i].end < start)
		i++;
	for (j = i; j < s->n && s->r[j].start <= end; j++) {
		start = MIN(start, s->r[j].start);
		end = MAX(end, s->r[j].end);
	}
	if (i == j) {           /* touches nothing: insert at i */
		if (s->n == RANGES_MAX) {
			if (i == s->n)
				return;   /* it would be the highest: forget it */
			s->n--;           /* forget the highest */
		}
		memmove(&s->r[i + 1], &s->r[i], (s->n - i) * sizeof(s->r[0]));
		s->n++;
	} else if (j > i + 1) {  /* [i, j) become one */
		memmove(&s->r[i + 1], &s->r[j], (s->n - j) * sizeof(s->r[0]));
		s->n -= j - i - 1;
	}
	s->r[i].start = start;
	s->r[i].end = end;
}

uint64_t ranges_prefix(const struct ranges *s)
{
	return s->n && s->r[0].start == 0 ? s->r[0].end : 0;
}
