/*
 * registry.c - fetching a manifest: the Accept header that gets either image
 * format, the size limit, the Docker-Content-Digest check (the registry's own
 * statement of what it sent), and validation before anything is stored.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "fetch.h"
#include "manifest.h"
#include "registry.h"
#include "remote.h"
#include "util.h"

int registry_fetch_manifest(struct fetcher *f, struct remote *r, const char *tag,
			    char **buf, size_t *len, struct manifest **m,
			    char *err, size_t errlen)
{
	struct http_result res;
	char *path = registry_manifest_path(tag);
	int ret = fetcher_get(f, r, path, MANIFEST_ACCEPT, MANIFEST_MAX_BYTES, &res);

	free(path);
	return registry_check_manifest(r, tag, ret, &res, buf, len, m, err, errlen);
}

char *registry_manifest_path(const char *tag)
{
	return xasprintf("manifests/%s", tag);
}

int registry_check_manifest(const struct remote *r, const char *tag, int ret,
			    struct http_result *res, char **buf, size_t *len,
			    struct manifest **m, char *err, size_t errlen)
{
	char why[256];

	*buf = NULL;
	*m = NULL;
	if (ret == -ENOENT) {
		snprintf(err, errlen, "'%s:%s' was not found on '%s'", r->repo, tag,
			 remote_upstream(r)->authority);
		goto out;
	}
	if (ret == -EMSGSIZE) {
		snprintf(err, errlen, "the manifest of '%s:%s' is larger than %u bytes",
			 r->repo, tag, MANIFEST_MAX_BYTES);
		goto out;
	}
	if (ret < 0) {
		snprintf(err, errlen, "%s", res->msg[0] ? res->msg : strerror(-ret));
		goto out;
	}
	if (res->docker_digest && strncmp(res->docker_digest, "sha256:", 7) == 0) {
		struct digest want, got;
		if (digest_parse(res->docker_digest, strlen(res->docker_digest), &want) == 0) {
			digest_of(res->body ? res->body : "", res->len, &got);
			if (!digest_equal(&want, &got)) {
				ret = -EIO;
				snprintf(err, errlen, "the manifest of '%s:%s' does not match the "
					 "digest the registry gives for it", r->repo, tag);
				goto out;
			}
		}
	}
	ret = manifest_parse(res->body ? res->body : "", res->len, m, why, sizeof(why));
	if (ret < 0) {
		snprintf(err, errlen, "refusing the manifest of '%s:%s': %s", r->repo, tag, why);
		goto out;
	}
	*buf = res->body;
	*len = res->len;
	res->body = NULL;
out:
	http_result_release(res);
	return ret;
}
