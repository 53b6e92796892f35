/*
 * cmd_verify.c - `blobfs verify`: hash complete blobs again and report each.
 * A blob that no longer matches its digest is moved to quarantine, so the
 * next read or pull fetches it anew instead of serving bad bytes.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "log.h"
#include "digest.h"
#include "manifest.h"
#include "name.h"
#include "store.h"
#include "util.h"

struct verify_ctx {
	struct store *store;
	unsigned ok, bad, missing, partial;
	unsigned bad_manifest;    /* blobs that are fine, named with a wrong size */
};

/* Hash one blob and report; size is UINT64_MAX when no manifest gives it. */
static void verify_blob(struct verify_ctx *c, const struct digest *d, uint64_t size,
			const char *label)
{
	char name[DIGEST_STR_LEN];
	struct digest got;
	struct stat st;
	int fd = store_open_complete(c->store, d);
	uint64_t local = fd == -ENOENT && size != UINT64_MAX ? store_local_bytes(c->store, d, size) : 0;

	digest_format(d, name);
	if (fd == -ENOENT && local) {
		printf("%s  partial (%llu%%)  %s\n", name,
		       (unsigned long long)(size ? local * 100 / size : 0), label);
		c->partial++;
		return;
	}
	if (fd == -ENOENT) {
		printf("%s  not local  %s\n", name, label);
		c->missing++;
		return;
	}
	int ret = fd < 0 ? fd : fstat(fd, &st) < 0 ? -errno : 0;
	if (ret == 0)
		ret = digest_fd(fd, 0, (uint64_t)st.st_size, &got, NULL, NULL);
	if (fd >= 0)
		close(fd);
	if (ret == 0 && digest_equal(&got, d) && size != UINT64_MAX &&
	    (uint64_t)st.st_size != size) {
		/* The blob is what its name says: the manifest is wrong, not the blob. */
		printf("%s  ok, but the manifest says %llu bytes and the blob has %llu  %s\n",
		       name, (unsigned long long)size, (unsigned long long)st.st_size, label);
		c->bad_manifest++;
	} else if (ret == 0 && digest_equal(&got, d)) {
		printf("%s  ok  %s\n", name, label);
		c->ok++;
	} else {
		bool moved = c->store->writable &&
			     store_quarantine_complete(c->store, d, "corrupt") == 0;
		printf("%s  CORRUPT (%s)%s  %s\n", name,
		       ret < 0 ? file_strerror(ret) : "content does not match",
		       moved ? ", moved to quarantine" : "", label);
		c->bad++;
	}
}

struct name_ctx {
	struct verify_ctx *v;
	const char *name;
};

static int verify_layer(const struct layer *l, void *arg)
{
	struct name_ctx *n = arg;
	char *label = xasprintf("(%s %s)", n->name, l->file);

	verify_blob(n->v, &l->digest, l->size, label);
	free(label);
	return 0;
}

static int verify_names(struct verify_ctx *c, char *const *names, int n)
{
	int ret = 0;

	for (int i = 0; i < n; i++) {
		struct model_name want, found;
		struct manifest *m;
		char err[512], *buf, full[NAME_FORMAT_MAX];
		size_t len;

		if (name_parse(names[i], &want, err, sizeof(err)) < 0) {
			log_error("%s", err);
			ret = -EINVAL;
			continue;
		}
		if (store_find_tag(c->store, &want, &found) < 0 ||
		    store_read_manifest(c->store, &found, &buf, &len, NULL) < 0) {
			log_error("no model '%s' in the store", names[i]);
			ret = -ENOENT;
			continue;
		}
		name_format_short(&found, full, sizeof(full));
		if (manifest_parse(buf, len, &m, err, sizeof(err)) < 0) {
			log_error("the manifest of '%s' is invalid: %s", full, err);
			free(buf);
			ret = -EINVAL;
			continue;
		}
		struct name_ctx nc = { c, full };
		manifest_for_each_blob(m, verify_layer, &nc);
		manifest_free(m);
		free(buf);
	}
	return ret;
}

static void verify_all(struct verify_ctx *c)
{
	DIR *d = c->store->blobsfd < 0 ? NULL : opendir_at(c->store->blobsfd);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)) != NULL) {
		struct digest dg;
		if (digest_parse_filename(e->d_name, &dg) == 0)
			verify_blob(c, &dg, UINT64_MAX, "");
	}
	closedir(d);
}

int cmd_verify(const struct session_opts *so, char *const *names, int n)
{
	struct session *s;
	struct verify_ctx c = { 0 };
	int ret = 0;

	if (session_open(so, SESSION_WRITE, &s) < 0)
		return EXIT_FAIL;
	c.store = s->store;
	if (n)
		ret = verify_names(&c, names, n);
	else
		verify_all(&c);
	printf("%u ok, %u corrupt, %u partial, %u not local\n", c.ok, c.bad, c.partial, c.missing);
	if (c.bad_manifest)
		log_error("%u blobs are named with the wrong size by a manifest; the manifest is "
			  "wrong, the blobs are kept", c.bad_manifest);
	session_close(s);
	return ret < 0 || c.bad || c.bad_manifest ? EXIT_FAIL : EXIT_OK;
}
