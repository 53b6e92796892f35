/* manifest.h - image manifests (Docker v2 schema 2, OCI) ↔ struct. */
#ifndef BLOBFS_MANIFEST_H
#define BLOBFS_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"

#define MEDIA_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define MEDIA_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MEDIA_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MEDIA_OCI_INDEX "application/vnd.oci.image.index.v1+json"

/* Larger manifests are refused (the registry itself stops at 4 MiB). */
#define MANIFEST_MAX_BYTES (4u << 20)
#define MANIFEST_MAX_LAYERS 65536
/* No single blob is larger than this (4 TiB); bigger sizes are hostile. */
#define BLOB_SIZE_MAX (1ULL << 42)

struct layer {
	char *media_type;
	struct digest digest;
	uint64_t size;
	char *name;        /* the layer's own "name", or NULL */
	char *file;        /* its file name in the tag directory */
	bool repeat;       /* an earlier descriptor has the same digest */
};

struct manifest {
	char *media_type;  /* as declared; NULL when an OCI manifest omits it */
	struct layer config;
	size_t nlayers;
	struct layer *layers;
	uint64_t total_size; /* distinct blobs, config included */
};

/*
 * Parse and validate a manifest. On failure returns -EINVAL (or -EMSGSIZE for
 * an oversized one) and writes the reason into err.
 */
int manifest_parse(const char *buf, size_t len, struct manifest **out,
		   char *err, size_t errlen);
void manifest_free(struct manifest *m);

/* Calls fn for each distinct blob (config first); stops on non-zero return. */
int manifest_for_each_blob(const struct manifest *m,
			   int (*fn)(const struct layer *l, void *arg), void *arg);

/* Does the manifest reference the digest (config or layer)? */
int manifest_references(const struct manifest *m, const struct digest *d);

/*
 * Find every "sha256:<hex>" in a text that could not be parsed as a manifest,
 * so that a store never frees a blob that some unreadable manifest may use:
 * spelled out anywhere in the text, or inside a JSON string with escapes
 * ("sha256\u003a...") as the parser would read it.
 */
void manifest_scan_digests(const char *buf, size_t len,
			   void (*fn)(const struct digest *d, void *arg), void *arg);

#endif
