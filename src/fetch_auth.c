/*
 * fetch_auth.c - the network thread's auth cache.
 *
 * Authentication follows the registry's challenge: Bearer tokens from the
 * realm it names (anonymous, or with the credentials configured for the
 * realm's own host), cached per scope until they expire and refreshed once
 * on a 401; Basic where asked. Tokens only ever go to the registry's own
 * origin — redirects to a CDN are not followed by curl but by us, without
 * them.
 *
 * Where credentials go (blobfs(1), TRUST MODEL):
 * - never over plain HTTP, except to a loopback host (url_may_carry_credentials);
 * - a host gets the entry configured for it: a realm on another host than
 *   the registry never gets the registry's credentials;
 * - netrc's "default" entry goes only to the registry or mirror host itself,
 *   and not at all for remotes marked no_default_credentials (a mount's).
 * One entry per (endpoint, scope); network thread only.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "fetch_int.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define TOKEN_MARGIN_MS 5000     /* refresh a token this long before it expires */
#define TOKEN_MAX_BYTES (1u << 20)  /* a token server's answer, read at most */

struct authent *auth_get(struct fetcher *f, struct remote *r, size_t ep)
{
	const char *authority = r->ep[ep].authority;
	struct authent *a;

	for (a = f->auth; a; a = a->next)
		if (strcasecmp(a->authority, authority) == 0 && strcmp(a->scope, r->scope) == 0)
			return a;
	a = xcalloc(1, sizeof(*a));
	a->authority = xstrdup(authority);
	a->endpoint = xstrdup(r->ep[ep].base);
	a->scope = xstrdup(r->scope);
	a->origin = remote_ref(r);
	a->next = f->auth;
	f->auth = a;
	return a;
}

void authent_free(struct authent *a)
{
	free(a->authority);
	free(a->endpoint);
	free(a->scope);
	remote_unref(a->origin);
	auth_challenge_release(&a->ch);
	if (a->token)
		explicit_bzero(a->token, strlen(a->token));
	free(a->token);
	credentials_release(&a->cred);
	credentials_release(&a->realm_cred);
	free(a);
}

/* The credentials configured for host, netrc's "default" entry only with use_default. */
static int find_credentials(const struct remote_opts *o, const char *host, bool use_default,
			    struct credentials *out)
{
	const char *home = getenv("HOME");
	char *netrc = !o->no_netrc && home ? xasprintf("%s/.netrc", home) : NULL;
	struct credential_files cf = { o->credentials, netrc };
	int ret = credentials_find(&cf, host, use_default, out);

	free(netrc);
	return ret;
}

/* The registry's (or mirror's) own credentials, for Basic. */
static struct credentials *auth_credentials(struct authent *a)
{
	if (!a->cred_loaded) {
		a->cred_loaded = true;
		find_credentials(&a->origin->o, a->authority,
				 !a->origin->o.no_default_credentials, &a->cred);
	}
	return a->cred.user ? &a->cred : NULL;
}

/*
 * What the token realm gets: the credentials configured for the realm's own
 * host, "default" only if that is the registry's host; nothing over plain
 * HTTP to a host that is not loopback. Kept in a->realm_cred while the
 * request is in flight.
 */
static struct credentials *realm_credentials(struct authent *a, const char *realm)
{
	char *host = url_authority(realm);

	credentials_release(&a->realm_cred);
	if (host && url_may_carry_credentials(realm))
		find_credentials(&a->origin->o, host, strcasecmp(host, a->authority) == 0 &&
				 !a->origin->o.no_default_credentials, &a->realm_cred);
	free(host);
	return a->realm_cred.user ? &a->realm_cred : NULL;
}

/*
 * A token is renewed a little before it expires: TOKEN_MARGIN_MS, or a
 * quarter of its life if that is shorter, so a token that lives a second is
 * still used rather than renewed forever.
 */
static bool token_valid(const struct authent *a, uint64_t now)
{
	uint64_t life = a->expires_ms - a->issued_ms;

	return a->token && now + MIN((uint64_t)TOKEN_MARGIN_MS, life / 4) < a->expires_ms;
}

static void start_token_request(struct fetcher *f, struct authent *a);

/*
 * Can a request to this registry go now? 1: yes (credentials, if any, are
 * known); 0: wait for a token; negative: auth failed for good.
 */
int auth_ready(struct fetcher *f, struct authent *a, uint64_t now)
{
	if (a->pending)
		return 0;
	if (a->err)
		return a->err;
	if (a->scheme == AUTH_BEARER && !token_valid(a, now)) {
		start_token_request(f, a);
		return a->pending ? 0 : a->err ? a->err : 0;
	}
	return 1;
}

void auth_apply(struct fetcher *f, struct job *j, struct authent *a)
{
	if (a->scheme == AUTH_BEARER && a->token) {
		job_setopt(j, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
		job_setopt(j, CURLOPT_XOAUTH2_BEARER, a->token);
		j->token_sent = xstrdup(a->token);
	} else if (a->scheme == AUTH_BASIC && url_may_carry_credentials(a->endpoint)) {
		struct credentials *c = auth_credentials(a);
		if (c) {
			job_setopt(j, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
			job_setopt(j, CURLOPT_USERNAME, c->user);
			job_setopt(j, CURLOPT_PASSWORD, c->password);
			j->basic_sent = true;
		}
	}
}

/*
 * A 401 from the registry: learn the challenge. Returns 0 when the request
 * should be retried (a token is coming, or Basic credentials will be sent),
 * or a negative errno with a message when it cannot succeed.
 */
int auth_challenged(struct fetcher *f, struct authent *a, struct job *j,
			   bool already_retried, char *msg, size_t msglen)
{
	struct auth_challenge ch;
	const char *hdr = j->bearer ? j->bearer : j->basic;

	if (!hdr || auth_parse_challenge(hdr, strlen(hdr), &ch) < 0) {
		snprintf(msg, msglen, "registry '%s' refused access (401) without a usable challenge",
			 a->authority);
		return -EACCES;
	}
	if (ch.scheme == AUTH_BASIC) {
		auth_challenge_release(&ch);
		if (!url_may_carry_credentials(a->endpoint)) {
			snprintf(msg, msglen, "registry '%s' asks for a login over plain HTTP; blobfs "
				 "sends credentials only over HTTPS or to a loopback host",
				 a->authority);
			return -EACCES;
		}
		if (!auth_credentials(a)) {
			snprintf(msg, msglen, "registry '%s' requires a login; add a 'machine %s' "
				 "entry to the credentials file or ~/.netrc", a->authority,
				 a->authority);
			return -EACCES;
		}
		if (j->basic_sent) {
			snprintf(msg, msglen, "registry '%s' refused the credentials for it",
				 a->authority);
			return -EACCES;
		}
		a->scheme = AUTH_BASIC;
		return 0;
	}
	/* Bearer: a request that carried the current token gets one refresh. */
	if (j->token_sent && a->token && strcmp(j->token_sent, a->token) == 0) {
		if (already_retried) {
			auth_challenge_release(&ch);
			snprintf(msg, msglen, "registry '%s' refused a fresh token for '%s'",
				 a->authority, a->scope);
			return -EACCES;
		}
		free(a->token);
		a->token = NULL;
	}
	auth_challenge_release(&a->ch);
	a->ch = ch;
	a->scheme = AUTH_BEARER;
	a->err = 0;
	if (!token_valid(a, now_ms()))
		start_token_request(f, a);
	return 0;
}

static void token_done(struct http_result *res, void *arg);

static void start_token_request(struct fetcher *f, struct authent *a)
{
	struct memreq *r;
	char *url, *u2;

	if (a->pending)
		return;
	url = a->ch.service ? url_add_query(a->ch.realm, "service", a->ch.service)
			    : xstrdup(a->ch.realm);
	u2 = url && a->ch.scope ? url_add_query(url, "scope", a->ch.scope)
			       : url && a->scope ? url_add_query(url, "scope", a->scope) : NULL;
	free(url);
	if (!u2) {
		a->err = -EACCES;
		snprintf(a->msg, sizeof(a->msg), "registry '%s' named an invalid token realm",
			 a->authority);
		return;
	}
	r = memreq_new(&a->origin->o);
	r->url = u2;
	r->max = TOKEN_MAX_BYTES;
	r->done = token_done;
	r->arg = a;
	r->token_for = a;
	r->basic = realm_credentials(a, a->ch.realm);
	a->pending = true;
	a->err = 0;
	start_mem(f, r);
}

/* The realm answered 401 or 403: say what would get in, and where it goes. */
static void token_refused(struct authent *a, long status)
{
	char *realm = url_redact(a->ch.realm), *host = url_authority(a->ch.realm);

	if (!url_may_carry_credentials(a->ch.realm))
		snprintf(a->msg, sizeof(a->msg), "the token server '%s' of registry '%s' answered "
			 "%ld: it wants a login, which blobfs sends only over HTTPS or to a loopback "
			 "host, never over plain HTTP", realm, a->authority, status);
	else if (a->realm_cred.user)
		snprintf(a->msg, sizeof(a->msg), "the token server '%s' of registry '%s' refused "
			 "the credentials for '%s'", realm, a->authority, host ? host : "?");
	else
		snprintf(a->msg, sizeof(a->msg), "registry '%s' requires a login; add a 'machine %s' "
			 "entry to the credentials file or ~/.netrc", a->authority, host ? host : "?");
	free(realm);
	free(host);
}

static void token_done(struct http_result *res, void *arg)
{
	struct authent *a = arg;
	uint64_t ttl;
	char *token;

	a->pending = false;
	if (res->err == 0 && auth_parse_token(res->body, res->len, &token, &ttl) == 0) {
		free(a->token);
		a->token = token;
		a->issued_ms = now_ms();
		a->expires_ms = a->issued_ms + ttl * 1000;
		a->err = 0;
		log_debug("got a token for '%s' on '%s', valid %llus", a->scope, a->authority,
			  (unsigned long long)ttl);
		credentials_release(&a->realm_cred);
		http_result_release(res);
		return;
	}
	a->err = -EACCES;
	if (res->status == 401 || res->status == 403)
		token_refused(a, res->status);
	else if (res->err)
		snprintf(a->msg, sizeof(a->msg), "cannot get a token for '%s': %s",
			 a->authority, res->msg[0] ? res->msg : strerror(-res->err));
	else
		snprintf(a->msg, sizeof(a->msg), "the token server for '%s' sent an invalid answer",
			 a->authority);
	/* Not logged here: whoever waited for the token reports a->msg, once. */
	credentials_release(&a->realm_cred);
	http_result_release(res);
}

