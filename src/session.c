/*
 * session.c - one place that opens, in order, what every command and the
 * mount need, and closes it in reverse: the network thread first (so no more
 * bytes arrive), then the blob cache (whose worker makes progress durable).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "session.h"
#include "store.h"
#include "util.h"

void session_opts_defaults(struct session_opts *o)
{
	memset(o, 0, sizeof(*o));
	net_opts_defaults(&o->net);
}

int session_open(const struct session_opts *o, unsigned flags, struct session **out)
{
	struct session *s = xcalloc(1, sizeof(*s));
	char *root = store_default_root(o->store);
	int ret;

	s->opts = *o;
	ret = store_open(root, flags & (SESSION_WRITE | SESSION_NET), &s->store);
	free(root);
	if (ret < 0)
		goto fail;
	if ((flags & SESSION_NET) && (ret = session_start_net(s)) < 0)
		goto fail;
	*out = s;
	return 0;
fail:
	session_close(s);
	return ret;
}

int session_start_net(struct session *s)
{
	int ret = fetcher_start(&s->opts.net, &s->fetcher);

	if (ret < 0)
		return ret;
	s->cache = blobcache_new(s->store, s->fetcher, &s->opts.blob);
	return 0;
}

void session_close(struct session *s)
{
	if (!s)
		return;
	fetcher_stop(s->fetcher);
	blobcache_free(s->cache);
	fetcher_free(s->fetcher);
	store_close(s->store);
	free(s);
}
