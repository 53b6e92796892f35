/*
 * cmd_rm.c - `blobfs rm` and `blobfs gc`: removing tags frees the blobs no
 * other tag uses; gc sweeps what nothing references any more.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "name.h"
#include "store.h"
#include "util.h"

int cmd_rm(const struct session_opts *so, char *const *names, int n)
{
	struct session *s;
	int ret = EXIT_OK;

	if (session_open(so, SESSION_WRITE, &s) < 0)
		return EXIT_FAIL;
	for (int i = 0; i < n; i++) {
		struct model_name name;
		struct store_freed freed;
		char err[512], full[NAME_FORMAT_MAX], size[16];

		if (name_parse(names[i], &name, err, sizeof(err)) < 0) {
			log_error("%s", err);
			ret = EXIT_FAIL;
			continue;
		}
		name_format(&name, full, sizeof(full));
		int r = store_remove_tag(s->store, &name, &freed);
		if (r == -ENOENT) {
			log_error("no model '%s' in the store", full);
			ret = EXIT_FAIL;
			continue;
		}
		if (r < 0) {
			log_error("cannot remove '%s': %s", full, strerror(-r));
			ret = EXIT_FAIL;
			continue;
		}
		format_size(freed.bytes, size, sizeof(size));
		printf("removed %s (%u blobs, %s freed)\n", full, freed.blobs + freed.partials, size);
	}
	session_close(s);
	return ret;
}

int cmd_gc(const struct session_opts *so)
{
	struct session *s;
	struct store_freed freed, evicted;
	char size[16], also[64] = "";
	int r;

	if (session_open(so, SESSION_WRITE, &s) < 0)
		return EXIT_FAIL;
	r = store_gc(s->store, &freed);
	session_make_room(s, 0, &evicted);   /* --max-cache */
	session_close(s);
	if (r < 0) {
		log_error("cannot collect garbage: %s", strerror(-r));
		return EXIT_FAIL;
	}
	if (evicted.blobs)
		snprintf(also, sizeof(also), ", evicted %u least recently used blobs", evicted.blobs);
	format_size(freed.bytes + evicted.bytes, size, sizeof(size));
	printf("removed %u unreferenced blobs and %u partial downloads%s, %s freed\n",
	       freed.blobs, freed.partials, also, size);
	return EXIT_OK;
}
