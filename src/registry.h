/* registry.h - the registry protocol above plain transfers: manifests. */
#ifndef BLOBFS_REGISTRY_H
#define BLOBFS_REGISTRY_H

#include <stddef.h>

struct fetcher;
struct http_result;
struct remote;
struct manifest;

/* The Accept header for manifests: both image types, and lists so they can be refused by name. */
#define MANIFEST_ACCEPT                                                         \
	"application/vnd.docker.distribution.manifest.v2+json, "               \
	"application/vnd.oci.image.manifest.v1+json;q=0.9, "                   \
	"application/vnd.docker.distribution.manifest.list.v2+json;q=0.5, "    \
	"application/vnd.oci.image.index.v1+json;q=0.5"

/*
 * Fetch and validate the manifest for tag (or digest) from r. On success the
 * exact bytes are in *buf (caller frees) and the parsed form in *m. On
 * failure a negative errno and a message in err.
 */
int registry_fetch_manifest(struct fetcher *f, struct remote *r, const char *tag,
			    char **buf, size_t *len, struct manifest **m,
			    char *err, size_t errlen);

/* The path of tag's manifest under a repository ("manifests/<tag>"); caller frees. */
char *registry_manifest_path(const char *tag);
/*
 * The checking half of registry_fetch_manifest, for a caller that fetched
 * the path itself (fetcher_get_async): ret and res are what the fetch gave;
 * res is released.
 */
int registry_check_manifest(const struct remote *r, const char *tag, int ret,
			    struct http_result *res, char **buf, size_t *len,
			    struct manifest **m, char *err, size_t errlen);

#endif
