/*
 * fetch_policy.c - what the network thread knows of endpoints, and when a
 * failure is worth another attempt.
 *
 * A mirror that fails is skipped for MIRROR_DOWN_MS by every later request
 * (healthy_endpoint), and gets fewer attempts than the registry, which waits
 * behind it. Network thread only.
 */
#include "config.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/random.h>

#include "fetch_int.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define MIRROR_DOWN_MS 30000     /* a mirror that failed is skipped this long */

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


/* The first endpoint from ep on that is not a mirror known to be down. */
size_t healthy_endpoint(struct fetcher *f, const struct remote *r, size_t ep)
{
	uint64_t now = now_ms();

	while (ep + 1 < r->nep && hostinfo_get(f, r->ep[ep].authority)->down_until > now)
		ep++;
	return ep;
}

const char *job_error(const struct job *j, CURLcode res)
{
	return j->errbuf[0] ? j->errbuf : curl_easy_strerror(res);
}

/* Is a transport failure worth another attempt? TLS and URL errors are not. */
bool transient_curl(CURLcode res)
{
	return res != CURLE_OK && res != CURLE_WRITE_ERROR &&
	       res != CURLE_PEER_FAILED_VERIFICATION && res != CURLE_SSL_CACERT_BADFILE &&
	       res != CURLE_UNSUPPORTED_PROTOCOL && res != CURLE_URL_MALFORMAT &&
	       res != CURLE_TOO_MANY_REDIRECTS;
}

/* A mirror gets fewer attempts than the registry: the next endpoint is waiting. */
unsigned attempts_for(const struct remote *r, size_t ep)
{
	unsigned max = r->o.retry.max_attempts;

	return r->ep[ep].mirror ? MIN(max, 2u) : max;
}

/* Leave a failing mirror for the next endpoint; remember it is down for a while. */
void mirror_failed(struct fetcher *f, const struct remote *r, size_t ep, const char *why)
{
	char *u = url_redact(r->ep[ep].base), *next = url_redact(r->ep[ep + 1].base);

	hostinfo_get(f, r->ep[ep].authority)->down_until = now_ms() + MIRROR_DOWN_MS;
	log_warn("mirror '%s' failed (%s); trying '%s'", u, why, next);
	free(u);
	free(next);
}

