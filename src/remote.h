/* remote.h - one repository on one registry: where its manifests and blobs live. */
#ifndef BLOBFS_REMOTE_H
#define BLOBFS_REMOTE_H

#include <stdbool.h>
#include <stddef.h>

#include "digest.h"
#include "name.h"

struct remote {
	int refs;            /* atomic */
	char *base;          /* "https://host[:port]/v2/<ns>/<model>" */
	char *authority;     /* "host[:port]": the key for credentials and tokens */
	char *repo;          /* "<ns>/<model>" */
	char *scope;         /* "repository:<ns>/<model>:pull" */
	bool plain_http;
};

/*
 * The remote for a model name. Loopback hosts use plain HTTP, as Docker does;
 * so does a name written with http://, or any host when insecure is set.
 * Everything else is HTTPS with certificate verification.
 */
struct remote *remote_new(const struct model_name *n, bool insecure);
struct remote *remote_ref(struct remote *r);
void remote_unref(struct remote *r);

/* URLs under the repository; caller frees. */
char *remote_manifest_url(const struct remote *r, const char *reference);
char *remote_blob_url(const struct remote *r, const struct digest *d);
char *remote_chunksums_url(const struct remote *r, const struct digest *d);

#endif
