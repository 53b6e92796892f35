/*
 * fetch_policy.c - the retry and failover policy of the network thread,
 * written once for small GETs and range requests alike.
 *
 * classify_failure() turns what a failed attempt got into an action: the
 * same endpoint again after a backoff (transient failures: 5xx, 408, 429,
 * resets, stalls, invalid responses; Retry-After wins if longer, up to its
 * cap), answer a 401's challenge, follow a redirect, ask the registry again
 * for an expired CDN URL, or give the endpoint up. next_endpoint() chooses
 * where a request goes when an endpoint is given up: the next mirror, at
 * last the registry; healthy_endpoint() where a new request starts. A blob
 * named by several repositories (tags of other registries) moves on to the
 * next one's endpoints after that (fetch_range.c, source_next_endpoint).
 *
 * An endpoint that fails is skipped for ENDPOINT_DOWN_MS by every later
 * request, and gets fewer attempts when another place waits behind it (a
 * mirror always: its registry). What a failure means for the request (its
 * message, its readers) is the caller's. Network thread only.
 */
#include "config.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "fetch_int.h"
#include "http.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define ENDPOINT_DOWN_MS 30000   /* a mirror (or a registry) that failed is skipped this long */
#define FAILOVER_ATTEMPTS 2      /* attempts at an endpoint another one waits behind */

uint32_t fetch_rnd(void)
{
	uint32_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v))
		v = (uint32_t)now_ms() * 2654435761u;
	return v;
}

/* ---- what we know of endpoints ---- */

struct hostinfo *hostinfo_get(struct fetcher *f, const char *authority)
{
	struct hostinfo *h;

	for (h = f->hosts; h; h = h->next)
		if (strcasecmp(h->authority, authority) == 0)
			return h;
	h = xcalloc(1, sizeof(*h));
	h->authority = xstrdup(authority);
	h->next = f->hosts;
	f->hosts = h;
	return h;
}


bool endpoint_down(struct fetcher *f, const struct remote *r, size_t ep)
{
	return hostinfo_get(f, r->ep[ep].authority)->down_until > now_ms();
}

void endpoint_failed(struct fetcher *f, const struct remote *r, size_t ep)
{
	hostinfo_get(f, r->ep[ep].authority)->down_until = now_ms() + ENDPOINT_DOWN_MS;
}

/* The first endpoint from ep on that is not a mirror known to be down. */
size_t healthy_endpoint(struct fetcher *f, const struct remote *r, size_t ep)
{
	while (ep + 1 < r->nep && endpoint_down(f, r, ep))
		ep++;
	return ep;
}

const char *job_error(const struct job *j, CURLcode res)
{
	return j->errbuf[0] ? j->errbuf : curl_easy_strerror(res);
}

/*
 * Is a transport failure worth another attempt? TLS errors, a malformed URL,
 * a redirect loop and an option libcurl refused (job_setopt) are not, nor a
 * body we stopped reading (the caller says when that was for an invalid
 * response). An unsupported protocol is:
 * curl also says so of a garbled response ("Received HTTP/0.9"), which a
 * server that sent bytes past its Content-Length leaves on a kept-alive
 * connection for the next request.
 */
static bool transient_curl(CURLcode res)
{
	return res != CURLE_OK && res != CURLE_WRITE_ERROR &&
	       res != CURLE_PEER_FAILED_VERIFICATION && res != CURLE_SSL_CACERT_BADFILE &&
	       res != CURLE_URL_MALFORMAT && res != CURLE_TOO_MANY_REDIRECTS &&
	       res != CURLE_UNKNOWN_OPTION && res != CURLE_NOT_BUILT_IN &&
	       res != CURLE_BAD_FUNCTION_ARGUMENT;
}

unsigned attempts_for(const struct remote *r, size_t ep, bool more)
{
	unsigned max = r->o.retry.max_attempts;

	return r->ep[ep].mirror || more ? MIN(max, (unsigned)FAILOVER_ATTEMPTS) : max;
}

/* ---- failures ---- */

/*
 * What to do after a failed attempt. The rules, in order: a redirect, a 401
 * from the registry, an expired CDN URL, an HTTP error that retrying cannot
 * fix, a transport error that retrying cannot fix (TLS, a malformed URL,
 * a redirect loop, a body we stopped reading because it was too big);
 * everything else is transient and retried while attempts remain.
 * max_attempts: failures in a row allowed at this endpoint.
 */
struct verdict classify_failure(const struct attempt *a, const struct retry_policy *rp,
				unsigned max_attempts, uint32_t rnd)
{
	struct verdict v = { .act = ACT_FAIL, .failed = a->failed };
	bool ok = a->res == CURLE_OK;
	uint64_t ra;

	if (ok && a->status >= 300 && a->status < 400 && a->location)
		v.act = ACT_REDIRECT;
	else if (ok && a->status == 401 && a->to_registry)
		v.act = ACT_AUTHENTICATE;
	else if (ok && a->cdn && (a->status == 403 || a->status == 404 || a->status == 410))
		v.act = ACT_RERESOLVE;
	if (v.act != ACT_FAIL)
		return v;
	if (ok && a->status >= 300 && !http_status_retryable(a->status))
		return v;
	if (!ok && !a->invalid && !transient_curl(a->res))
		return v;
	v.failed = a->failed + 1;
	if (v.failed >= max_attempts) {
		v.exhausted = true;
		return v;
	}
	v.act = ACT_RETRY;
	v.delay_ms = retry_delay_ms(rp, v.failed, rnd);
	if (a->retry_after && http_parse_retry_after(a->retry_after, time(NULL), &ra) == 0) {
		v.retry_after_ms = MIN(ra, rp->retry_after_max_ms);
		v.delay_ms = MAX(v.delay_ms, v.retry_after_ms);
	}
	return v;
}

/* ---- endpoints ---- */

bool next_endpoint(struct fetcher *f, const struct remote *r, size_t *ep, const char *why)
{
	if (!r || *ep + 1 >= r->nep)
		return false;
	if (why) {
		char *u = url_redact(r->ep[*ep].base), *next = url_redact(r->ep[*ep + 1].base);
		endpoint_failed(f, r, *ep);
		log_warn("mirror '%s' failed (%s); trying '%s'", u, why, next);
		free(u);
		free(next);
	}
	(*ep)++;
	return true;
}
