/* remote.h - one repository on one registry: where and how to reach it. */
#ifndef BLOBFS_REMOTE_H
#define BLOBFS_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "http.h"
#include "name.h"

struct conf;

/* A place that serves the repository: a mirror, or the registry itself (last). */
struct endpoint {
	char *base;          /* "scheme://host[:port][/prefix]/v2/<ns>/<model>" */
	char *authority;     /* "host[:port]": the key for credentials, tokens and health */
	bool mirror;
};

/* How to talk to the registry: the effective settings for its host. */
struct remote_opts {
	unsigned connections;       /* range requests in flight for one blob */
	uint64_t request_size;      /* the largest range asked for */
	uint64_t chunk_size;        /* chunk map granularity; 0: by blob size */
	unsigned stall_timeout_s;
	unsigned connect_timeout_s;
	unsigned budget_s;          /* a manifest, token or chunksums request, retries included */
	struct retry_policy retry;
	char *cacert;               /* CA bundle, or NULL for the system's */
	char *credentials;          /* netrc-syntax file, or NULL */
	bool no_netrc;
	bool no_default_credentials; /* never send netrc's "default" entry (a mount's remotes) */
	bool chunksums;             /* ask for Ollama's chunk checksums */
};

struct remote {
	int refs;            /* atomic */
	char *repo;          /* "<ns>/<model>" */
	char *scope;         /* "repository:<ns>/<model>:pull" */
	struct endpoint *ep; /* mirrors in order, then the registry */
	size_t nep;
	struct remote_opts o;
};

/*
 * The remote for a model name, with settings c (NULL: defaults). Loopback
 * hosts use plain HTTP, as Docker does; so does a name written with http://,
 * a host configured with scheme http, or any host when insecure is set.
 * Everything else is HTTPS with certificate verification.
 */
struct remote *remote_new(const struct model_name *n, const struct conf *c);
struct remote *remote_ref(struct remote *r);
void remote_unref(struct remote *r);

/* The registry itself (the last endpoint). */
static inline const struct endpoint *remote_upstream(const struct remote *r)
{
	return &r->ep[r->nep - 1];
}

/*
 * Do two remotes name one repository of one registry? Every tag gets a
 * remote of its own; tags of one repository are one source of its blobs.
 */
bool remote_same_source(const struct remote *a, const struct remote *b);
/* A blob is fetched from at most this many sources (the tags that name it). */
#define SOURCES_MAX 8

/* URLs under an endpoint's repository; caller frees. */
char *remote_url(const struct remote *r, size_t ep, const char *path);
/* "blobs/sha256:<hex>" and "chunksums/sha256:<hex>"; caller frees. */
char *remote_blob_path(const struct digest *d);
char *remote_chunksums_path(const struct digest *d);

#endif
