/*
 * cmd_ls.c - `blobfs ls`: every tag in the store with its size and how much
 * of it is local. Reads the store only: complete blobs count whole, partial
 * ones by their durable chunk map.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "manifest.h"
#include "name.h"
#include "store.h"
#include "util.h"

struct local_ctx {
	const struct store *store;
	uint64_t local;
};

static int add_local(const struct layer *l, void *arg)
{
	struct local_ctx *c = arg;

	c->local += store_local_bytes(c->store, &l->digest, l->size);
	return 0;
}

static bool wanted(const struct model_name *tag, const struct model_name *want, int n)
{
	if (n == 0)
		return true;
	for (int i = 0; i < n; i++)
		if (name_equal(tag, &want[i]))
			return true;
	return false;
}

/* Parse the names asked for into want[]; false (after saying why) if one is not a name. */
static bool parse_wanted(char *const *names, int n, struct model_name *want)
{
	char err[512];

	for (int i = 0; i < n; i++) {
		if (name_parse(names[i], &want[i], err, sizeof(err)) < 0) {
			log_error("%s", err);
			return false;
		}
	}
	return true;
}

/* Print one tag's line: its name, total size and the share of it that is local. */
static void print_tag(const struct store *store, const struct model_name *tag)
{
	char name[NAME_FORMAT_MAX], size[16], err[512], *buf;
	struct manifest *m;
	size_t len;

	name_format_short(tag, name, sizeof(name));
	if (store_read_manifest(store, tag, &buf, &len, NULL) < 0) {
		printf("%-48s %10s %6s  (unreadable manifest)\n", name, "-", "-");
		return;
	}
	if (manifest_parse(buf, len, &m, err, sizeof(err)) < 0) {
		printf("%-48s %10s %6s  (invalid manifest: %s)\n", name, "-", "-", err);
		free(buf);
		return;
	}
	struct local_ctx c = { .store = store };
	manifest_for_each_blob(m, add_local, &c);
	format_size(m->total_size, size, sizeof(size));
	printf("%-48s %10s %5u%%\n", name, size,
	       m->total_size ? (unsigned)(c.local * 100 / m->total_size) : 100);
	manifest_free(m);
	free(buf);
}

/* Say which names asked for are not in the store: EXIT_FAIL if any, else EXIT_OK. */
static int report_missing(const struct store_tag *tags, size_t ntags, char *const *names,
			  const struct model_name *want, int n)
{
	int ret = EXIT_OK;

	for (int i = 0; i < n; i++) {
		bool found = false;
		for (size_t k = 0; k < ntags && !found; k++)
			found = name_equal(&tags[k].name, &want[i]);
		if (!found) {
			log_error("no model '%s' in the store", names[i]);
			ret = EXIT_FAIL;
		}
	}
	return ret;
}

int cmd_ls(const struct session_opts *so, char *const *names, int n)
{
	struct session *s;
	struct store_tag *tags;
	struct model_name *want = xcalloc(n + 1, sizeof(*want));
	size_t ntags;
	int ret;

	if (!parse_wanted(names, n, want)) {
		free(want);
		return EXIT_USAGE;
	}
	if (session_open(so, 0, &s) < 0) {
		free(want);
		return EXIT_FAIL;
	}
	store_list_tags(s->store, &tags, &ntags);
	printf("%-48s %10s %6s\n", "NAME", "SIZE", "LOCAL");
	for (size_t i = 0; i < ntags; i++)
		if (wanted(&tags[i].name, want, n))
			print_tag(s->store, &tags[i].name);
	ret = report_missing(tags, ntags, names, want, n);
	store_tags_free(tags, ntags);
	session_close(s);
	free(want);
	return ret;
}
