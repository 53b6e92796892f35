/*
 * remote.c - where a repository lives. Names are validated before they get
 * here (only [A-Za-z0-9_.:-] in a host), so a URL built from them is well
 * formed; it is still passed through curl_url once so that what curl later
 * requests is exactly what was checked.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

struct remote *remote_new(const struct model_name *n, bool insecure)
{
	struct remote *r = xcalloc(1, sizeof(*r));
	const char *scheme;
	char *raw;

	if (n->scheme[0])
		scheme = n->scheme;
	else if (insecure || host_is_loopback(n->host))
		scheme = "http";
	else
		scheme = "https";
	r->refs = 1;
	r->plain_http = strcmp(scheme, "http") == 0;
	r->repo = xasprintf("%s/%s", n->ns, n->model);
	r->scope = xasprintf("repository:%s:pull", r->repo);
	raw = xasprintf("%s://%s/v2/%s", scheme, n->host, r->repo);
	r->base = url_resolve(raw, raw);
	r->authority = r->base ? url_authority(r->base) : NULL;
	if (!r->base || !r->authority) {
		log_error("cannot form a registry URL for host '%s'", n->host);
		free(raw);
		remote_unref(r);
		return NULL;
	}
	free(raw);
	return r;
}

struct remote *remote_ref(struct remote *r)
{
	__atomic_add_fetch(&r->refs, 1, __ATOMIC_RELAXED);
	return r;
}

void remote_unref(struct remote *r)
{
	if (!r || __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	free(r->base);
	free(r->authority);
	free(r->repo);
	free(r->scope);
	free(r);
}

char *remote_manifest_url(const struct remote *r, const char *reference)
{
	return xasprintf("%s/manifests/%s", r->base, reference);
}

char *remote_blob_url(const struct remote *r, const struct digest *d)
{
	char s[DIGEST_STR_LEN];

	digest_format(d, s);
	return xasprintf("%s/blobs/%s", r->base, s);
}

char *remote_chunksums_url(const struct remote *r, const struct digest *d)
{
	char s[DIGEST_STR_LEN];

	digest_format(d, s);
	return xasprintf("%s/chunksums/%s", r->base, s);
}
