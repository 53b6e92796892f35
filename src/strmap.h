/* strmap.h - a small open-addressing hash map from strings to integers. */
#ifndef BLOBFS_STRMAP_H
#define BLOBFS_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strmap;

struct strmap *strmap_new(void);
void strmap_free(struct strmap *m);
/* Set key to val (the key is copied). */
void strmap_put(struct strmap *m, const char *key, uint64_t val);
/* Look up key; false when absent. */
bool strmap_get(const struct strmap *m, const char *key, uint64_t *val);
size_t strmap_count(const struct strmap *m);

#endif
