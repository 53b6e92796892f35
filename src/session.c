/*
 * session.c - one place that settles the settings and opens, in order, what
 * every command and the mount need, and closes it in reverse: the network
 * thread first (so no more bytes arrive), then the background thread (its
 * jobs use the cache), then the blob cache (whose worker makes progress
 * durable).
 *
 * The store remembers one thing about hosts in .blobfs/hosts, in the
 * configuration file's syntax: the scheme a host was pulled with when the
 * name said so (https://127.0.0.1:5000/...), so that a later mount talks to
 * it the same way instead of guessing from the host name.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "background.h"
#include "log.h"
#include "remote.h"
#include "session.h"
#include "store.h"
#include "url.h"
#include "util.h"

void session_opts_init(struct session_opts *o)
{
	memset(o, 0, sizeof(*o));
}

int session_opts_load(struct session_opts *o, char *err, size_t errlen)
{
	const char *store = getenv("BLOBFS_STORE");

	if (store && *store) {
		free(o->env.store);
		o->env.store = xstrdup(store);
		o->env.set |= CF_STORE;
	}
	return config_load_default(&o->files, err, errlen);
}

void session_opts_release(struct session_opts *o)
{
	config_release(&o->files);
	conf_release(&o->env);
	conf_release(&o->cli);
}

void session_conf(const struct session *s, const char *host, struct conf *out)
{
	struct conf layer;

	conf_defaults(out);
	if (host) {
		config_for_host(&s->opts->files, host, &layer);
		conf_merge(out, &layer);
		conf_release(&layer);
		config_for_host(&s->recorded, host, &layer);
		conf_merge(out, &layer);
		conf_release(&layer);
	} else {
		conf_merge(out, &s->opts->files.global);
	}
	conf_merge(out, &s->opts->env);
	conf_merge(out, &s->opts->cli);
}

struct remote *session_remote(const struct session *s, const struct model_name *n)
{
	struct conf c;
	struct remote *r;

	session_conf(s, n->host, &c);
	r = remote_new(n, &c);
	conf_release(&c);
	return r;
}

void session_make_room(struct session *s, uint64_t bytes, struct store_freed *freed)
{
	char size[16], need[16];

	memset(freed, 0, sizeof(*freed));
	if (!s->max_cache || !s->store->writable)
		return;
	if (store_evict(s->store, s->max_cache, bytes, s->cache ? blob_in_use : NULL, s->cache,
			freed) < 0 || !freed->blobs)
		return;
	format_size(freed->bytes, size, sizeof(size));
	format_size(bytes, need, sizeof(need));
	if (bytes)
		log_info("making room for %s: evicted %u blobs, %s", need, freed->blobs, size);
	else
		log_info("cache over its limit: evicted %u blobs, %s", freed->blobs, size);
}

void session_evict(struct session *s)
{
	struct store_freed freed;

	session_make_room(s, 0, &freed);
}

/* The blob cache's make_room hook: a blob is about to be fetched. */
static void make_room_for_blob(void *arg, uint64_t bytes)
{
	struct store_freed freed;

	session_make_room(arg, bytes, &freed);
}

static void evict_job(void *arg)
{
	session_evict(arg);
}

void session_evict_soon(struct session *s)
{
	if (!s->background || !background_run(s->background, evict_job, s))
		session_evict(s);   /* no background thread (any more): here and now */
}

/* Range requests in flight for all blobs together, unless connections is set. */
#define BLOBS_CONNECTIONS 64

/* .blobfs/hosts, in the store's state directory. */
#define HOSTS_FILE "hosts"

static char *hosts_path(const struct session *s)
{
	return xasprintf("%s/.blobfs/" HOSTS_FILE, s->store->root);
}

void session_record_scheme(struct session *s, const struct model_name *n)
{
	struct conf have;
	char err[256], *path, *text = NULL;
	size_t len = 0;

	if (!n->scheme[0] || !s->store->writable)
		return;
	config_for_host(&s->recorded, n->host, &have);
	bool same = have.scheme && strcmp(have.scheme, n->scheme) == 0;
	conf_release(&have);
	if (same)
		return;
	path = hosts_path(s);
	if (read_file_at(s->store->statefd, HOSTS_FILE, 1u << 20, &text, &len) < 0) {
		text = xstrdup("# Written by blobfs: how hosts were reached. Edit with care.\n");
		len = strlen(text);
	}
	char *more = xasprintf("%.*s[host %s]\nscheme = %s\n", (int)len, text, n->host, n->scheme);
	if (config_load_text(&s->recorded, path, more, strlen(more), err, sizeof(err)) == 0) {
		if (write_file_atomic_at(s->store->tmpfd, s->store->statefd, HOSTS_FILE, more,
					 strlen(more), 0600) < 0)
			log_warn("cannot record the scheme of '%s' in '%s'", n->host, path);
		else if (strcmp(n->scheme, "http") == 0 && !host_is_loopback(n->host))
			log_warn("'%s' is reached over plain HTTP from now on: names without a "
				 "scheme, and mounts, use http:// for it as recorded in '%s' (a pull "
				 "with https:// switches it back)", n->host, path);
	}
	free(more);
	free(text);
	free(path);
}

char *session_store_root(const struct session_opts *o)
{
	struct session s = { .opts = o };    /* nothing recorded: the global layers only */
	struct conf g;
	char *root;

	session_conf(&s, NULL, &g);
	root = store_default_root((g.set & CF_STORE) ? g.store : NULL);
	conf_release(&g);
	return root;
}

/* Read what the store recorded about hosts, if anything. */
static void load_recorded(struct session *s)
{
	char err[512], *text, *path;
	size_t len;
	int ret = s->store->statefd < 0 ? -ENOENT
		: read_file_at(s->store->statefd, HOSTS_FILE, 1u << 20, &text, &len);

	if (ret == -ENOENT)
		return;
	path = hosts_path(s);
	if (ret < 0)
		log_warn("ignoring '%s': %s", path, file_strerror(ret));
	else if (config_load_text(&s->recorded, path, text, len, err, sizeof(err)) < 0)
		log_warn("ignoring %s", err);
	if (ret == 0)
		free(text);
	free(path);
}

int session_open(const struct session_opts *o, unsigned flags, struct session **out)
{
	struct session *s = xcalloc(1, sizeof(*s));
	struct conf g;
	char *root = session_store_root(o);
	int ret;

	s->opts = o;
	session_conf(s, NULL, &g);
	s->blob.chunk_size = g.chunk_size;
	s->blob.read_timeout_ms = (uint64_t)g.read_timeout_s * 1000;
	s->max_cache = g.max_cache;
	unsigned sf = (flags & (SESSION_WRITE | SESSION_NET)) ? STORE_CREATE : 0;
	if (g.trust_store)
		sf |= STORE_TRUST;
	conf_release(&g);
	ret = store_open(root, sf, &s->store);
	free(root);
	if (ret < 0)
		goto fail;
	load_recorded(s);
	if ((flags & SESSION_NET) && (ret = session_start_net(s)) < 0)
		goto fail;
	*out = s;
	return 0;
fail:
	session_close(s);
	return ret;
}

/* The blob cache's want_fetch hook: the network thread takes the blob on. */
static void kick_fetcher(void *arg, struct blob *b)
{
	fetcher_kick(arg, b);
}

int session_start_net(struct session *s)
{
	struct net_opts no;
	struct conf g;
	int ret;

	net_opts_defaults(&no);
	session_conf(s, NULL, &g);
	/*
	 * connections caps one blob's range requests (struct remote); unless it
	 * was set, all blobs together may have BLOBS_CONNECTIONS in flight, so a
	 * model of many small blobs keeps many blobs in flight, as Ollama does.
	 */
	unsigned given = s->opts->files.global.set | s->opts->env.set | s->opts->cli.set;
	no.connections = (given & CF_CONNECTIONS) ? g.connections
						  : MAX(g.connections, BLOBS_CONNECTIONS);
	conf_release(&g);
	ret = fetcher_start(&no, &s->fetcher);
	if (ret < 0)
		return ret;
	s->blob.want_fetch = kick_fetcher;
	s->blob.fetch_arg = s->fetcher;
	if (s->max_cache) {
		s->blob.make_room = make_room_for_blob;
		s->blob.room_arg = s;
	}
	s->cache = blobcache_new(s->store, &s->blob);
	s->background = background_start();
	return 0;
}

void session_close(struct session *s)
{
	if (!s)
		return;
	fetcher_stop(s->fetcher);
	background_stop(s->background);   /* its jobs use the cache */
	blobcache_free(s->cache);
	background_free(s->background);
	fetcher_free(s->fetcher);
	store_close(s->store);
	config_release(&s->recorded);
	free(s);
}
