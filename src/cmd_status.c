/*
 * cmd_status.c - `blobfs status`: the figures of every mount on a store, as
 * text, JSON or Prometheus exposition (status.c formats them). Read-only: it
 * never creates a store.
 */
#include "config.h"

#include "cli.h"
#include "session.h"
#include "status.h"

int cmd_status(const struct session_opts *so, const struct status_args *a)
{
	struct session *s;
	int ret;

	/* Stale files are dropped if we may; nothing is created. */
	if (session_open(so, 0, &s) < 0)
		return EXIT_FAIL;
	ret = status_print(s, a->format);
	session_close(s);
	return ret;
}
