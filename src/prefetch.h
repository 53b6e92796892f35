/*
 * prefetch.h - fetch the rest of a tag once a loader walks it (the mount).
 *
 * A loader of a model of many files (Ollama's tensor format: one blob per
 * tensor) opens one file of a tag, then another. From the second distinct
 * file on, the tag's other blobs are fetched in manifest order, a window at
 * a time, at background priority: a read of another blob never waits
 * behind them (it may use connections background work may not).
 */
#ifndef BLOBFS_PREFETCH_H
#define BLOBFS_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

#include "digest.h"

struct blobcache;
struct manifest;
struct remote;
struct prefetch;

struct prefetch *prefetch_new(struct blobcache *cache);
/* Stop the thread and give every blob back (before the blob cache goes). */
void prefetch_free(struct prefetch *p);
/*
 * A reader opened blob d (size bytes) of tag `key` ("host/ns/model/tag"),
 * whose manifest is m and whose blobs come from r. Cheap unless it starts the tag's
 * prefetch, which copies what it needs from m: the caller may hold the
 * index lock and free m afterwards.
 */
void prefetch_opened(struct prefetch *p, const char *key, const struct manifest *m,
		     struct remote *r, const struct digest *d, uint64_t size);

#endif
