/* ranges.h - a small, bounded set of byte ranges. */
#ifndef BLOBFS_RANGES_H
#define BLOBFS_RANGES_H

#include <stdint.h>

/*
 * At most RANGES_MAX disjoint, non-adjacent ranges, sorted by start. Adding
 * merges what touches; when a new range would not fit, the highest range is
 * forgotten, so the set stays exact from 0 upward and only ever under-reports.
 * It tells what readers have had of a blob (blob_io.c), where out-of-order
 * replies leave a few gaps that later fill.
 */
#define RANGES_MAX 64

struct ranges {
	unsigned n;
	struct {
		uint64_t start, end;
	} r[RANGES_MAX];
};

/* Add [start, end); empty ranges are ignored. */
void ranges_add(struct ranges *s, uint64_t start, uint64_t end);
/* The end of the range that starts at 0, or 0 when there is none. */
uint64_t ranges_prefix(const struct ranges *s);

#endif
