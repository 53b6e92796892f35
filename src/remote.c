/*
 * remote.c - where a repository lives, and how to reach it.
 *
 * A remote lists its endpoints in the order they are tried: the mirrors
 * configured for its host (containerd's hosts.toml semantics: a mirror that
 * fails hands the request to the next), then the registry itself. It also
 * carries the effective settings for its host, so the network thread asks
 * one place for timeouts, the CA file or credentials. Names are validated
 * before they get here (only [A-Za-z0-9_.:-] in a host), so URLs built from
 * them are well formed; they still go through curl_url once, so that what
 * curl later requests is exactly what was checked.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "conffile.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

static bool endpoint_init(struct endpoint *e, const char *raw, bool mirror)
{
	e->base = url_resolve(raw, raw);
	e->authority = e->base ? url_authority(e->base) : NULL;
	e->mirror = mirror;
	return e->base && e->authority;
}

static void opts_init(struct remote_opts *o, const struct conf *c)
{
	o->connections = c->connections;
	o->request_size = c->request_size;
	o->chunk_size = c->chunk_size;
	o->stall_timeout_s = c->stall_timeout_s;
	o->connect_timeout_s = c->connect_timeout_s;
	o->budget_s = c->read_timeout_s;    /* what a reader or a pull waits at most */
	o->retry.max_attempts = c->retries;
	o->retry.base_ms = 250;
	o->retry.max_ms = 8000;
	o->retry.retry_after_max_ms = 60000;
	o->cacert = c->cacert ? xstrdup(c->cacert) : NULL;
	o->credentials = c->credentials ? xstrdup(c->credentials) : NULL;
	o->no_netrc = !c->netrc;
	o->chunksums = c->chunksums;
}

struct remote *remote_new(const struct model_name *n, const struct conf *c)
{
	struct remote *r = xcalloc(1, sizeof(*r));
	struct conf dflt;
	const char *scheme;
	char *raw;

	conf_defaults(&dflt);
	if (!c)
		c = &dflt;
	if (n->scheme[0])
		scheme = n->scheme;
	else if ((c->set & CF_SCHEME) && c->scheme)
		scheme = c->scheme;
	else if (c->insecure || host_is_loopback(n->host))
		scheme = "http";
	else
		scheme = "https";
	r->refs = 1;
	r->repo = xasprintf("%s/%s", n->ns, n->model);
	r->scope = xasprintf("repository:%s:pull", r->repo);
	r->ep = xcalloc(c->nmirrors + 1, sizeof(*r->ep));
	for (size_t i = 0; i < c->nmirrors; i++) {
		size_t len = strlen(c->mirrors[i]);
		while (len && c->mirrors[i][len - 1] == '/')
			len--;
		raw = xasprintf("%.*s/v2/%s", (int)len, c->mirrors[i], r->repo);
		if (endpoint_init(&r->ep[r->nep], raw, true))
			r->nep++;
		else
			log_warn("ignoring mirror '%s': not a usable URL", c->mirrors[i]);
		free(raw);
	}
	raw = xasprintf("%s://%s/v2/%s", scheme, n->host, r->repo);
	if (!endpoint_init(&r->ep[r->nep++], raw, false)) {
		log_error("cannot form a registry URL for host '%s'", n->host);
		free(raw);
		remote_unref(r);
		return NULL;
	}
	free(raw);
	opts_init(&r->o, c);
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
	for (size_t i = 0; i < r->nep; i++) {
		free(r->ep[i].base);
		free(r->ep[i].authority);
	}
	free(r->ep);
	free(r->repo);
	free(r->scope);
	free(r->o.cacert);
	free(r->o.credentials);
	free(r);
}

bool remote_same_source(const struct remote *a, const struct remote *b)
{
	return a == b || strcmp(remote_upstream(a)->base, remote_upstream(b)->base) == 0;
}

char *remote_url(const struct remote *r, size_t ep, const char *path)
{
	return xasprintf("%s/%s", r->ep[ep].base, path);
}

char *remote_blob_path(const struct digest *d)
{
	char s[DIGEST_STR_LEN];

	digest_format(d, s);
	return xasprintf("blobs/%s", s);
}

char *remote_chunksums_path(const struct digest *d)
{
	char s[DIGEST_STR_LEN];

	digest_format(d, s);
	return xasprintf("chunksums/%s", s);
}
