/*
 * fetch.c - the network thread.
 *
 * One thread owns a curl multi handle and every easy handle; other threads
 * only post work to its inbox and wake it with curl_multi_wakeup(). Blobs
 * decide *what* is needed (blob_claim: readers first, then read-ahead, then
 * background completion); this file decides *how*: which URL, which
 * credentials, how many requests, and what to do when a response is wrong.
 *
 * Per blob, a `source` remembers where its bytes really come from. The first
 * request goes to the registry; a redirect (a CDN) is remembered and reused by
 * every later range, and forgotten when the CDN says the URL expired. Until
 * the URL is resolved only one request is in flight, so a registry sees one
 * blob GET per blob, not sixteen.
 *
 * A range request that fails keeps its chunks claimed and waits in the
 * source's retry list with exponential backoff (Retry-After wins if longer);
 * a request that made progress starts counting again. Requests are split so
 * a blocked reader does not wait behind a long transfer, the last big range
 * is split when connections fall idle, and a range far slower than its peers
 * is restarted on a fresh connection.
 *
 * Authentication follows the registry's challenge: Bearer tokens from the
 * realm it names (anonymous, or with the credentials for the registry host),
 * cached per scope until they expire and refreshed once on a 401; Basic where
 * asked. Credentials and tokens only ever go to the registry's own origin —
 * redirects to a CDN are not followed by curl but by us, without them.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "blob.h"
#include "chunkmap.h"
#include "fetch.h"
#include "http.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define MAX_REDIRECTS 8          /* redirects without a byte in between */
#define MAX_RERESOLVES 8         /* expired CDN URLs in a row */
#define SPLIT_GAP (1u << 20)     /* never split for a reader waiting closer than this */
#define SPLIT_WAIT_MS 150        /* split when the request would take longer to get there */
#define SPLIT_MIN_AGE_MS 50      /* ... as judged from at least this much of its speed */
#define STEAL_MIN (4u << 20)     /* only split idle-time tails bigger than twice this */
#define SLOW_CHECK_MS 1000
#define SLOW_MIN_AGE_MS 3000
#define SLOW_RESTARTS_MAX 3
#define SLOW_MIN_LEFT (1u << 20)  /* not worth restarting for less than this */
#define SLOW_PEERS 4              /* peers needed for a median; else the typical speed */
#define TOKEN_MARGIN_MS 5000     /* refresh a token this long before it expires */
#define HEADER_MAX 8192
#define STAGE_SIZE (512u << 10)  /* body bytes a range request gathers per write */
#define STAGE_POOL 32            /* spare stage buffers kept for the next requests */

/* ---- structures; all owned by the network thread unless noted ---- */

struct authent {                 /* auth for one (endpoint, scope) */
	struct authent *next;
	char *authority;
	char *scope;
	struct remote *origin;       /* whose settings (credentials, CA) apply */
	enum auth_scheme scheme;     /* AUTH_NONE until challenged */
	struct auth_challenge ch;    /* the last Bearer challenge */
	char *token;
	uint64_t issued_ms, expires_ms;
	bool pending;                /* a token request is in flight */
	int err;                     /* the last token request failed with this */
	char msg[1400];
	bool cred_loaded;
	struct credentials cred;
};

struct hostinfo {                /* what we learned about an endpoint */
	struct hostinfo *next;
	char *authority;
	bool no_chunksums;
	uint64_t down_until;         /* a mirror that failed is skipped until then */
};

struct retry {                   /* a claimed range waiting to be fetched again */
	struct retry *next;
	uint64_t origin, start, end; /* origin: where its first chunk begins */
	unsigned attempt;
	unsigned slow_restarts;
	uint64_t due_ms;
	bool fresh;                  /* use a new connection */
	bool auth_retried;
	bool demand;                 /* a reader waits for it: may use the reserve */
};

struct source {                  /* a blob being fetched */
	struct source *next;
	struct blob *blob;           /* referenced */
	struct remote *remote;       /* referenced */
	size_t ep;                   /* the endpoint in use (mirrors first) */
	char *start_url;             /* the endpoint's blob URL (or chunksums' Content-Location) */
	char *direct;                /* where ranges go once resolved */
	bool resolving;
	unsigned redirects, reresolves;
	bool no_ranges;
	bool chunksums_pending;
	bool chunksums_checked;
	uint64_t pause_until;
	unsigned jobs;
	struct retry *retries;
	bool dead;                   /* failed for good; drop when idle */
};

struct memreq {                  /* a small GET into memory */
	struct memreq *next;
	struct remote *remote;       /* NULL for a token request */
	char *path;                  /* under the endpoint's repository (remote set) */
	size_t ep;                   /* the endpoint tried now */
	char *url;                   /* the URL of the current attempt */
	char *accept;
	size_t max;
	void (*done)(struct http_result *res, void *arg);
	void *arg;
	unsigned attempt;
	uint64_t due_ms;
	bool auth_retried;
	struct authent *token_for;   /* this is a token request for that entry */
	struct credentials *basic;   /* send these (token requests) */
};

enum job_kind { JOB_RANGE, JOB_MEM };

struct job {
	struct job *next;
	struct fetcher *f;
	enum job_kind kind;
	CURL *easy;
	struct curl_slist *hdrs;
	char *url;
	bool to_registry;
	char *token_sent;            /* the bearer token this request carried */
	bool basic_sent;
	/* response headers */
	long status;
	char *location, *bearer, *basic, *retry_after, *content_range;
	char *content_type, *docker_digest, *content_location;
	int64_t content_length;
	bool checked;                /* the response was validated before its first byte */
	char errbuf[CURL_ERROR_SIZE]; /* curl's detailed message */
	/* JOB_RANGE */
	struct source *src;
	int wfd;
	const struct chunkmap *geo;
	uint64_t origin, start, pos, end, reported, next_boundary;
	char *stage;                 /* body bytes [pos, pos + staged) not yet written */
	size_t staged;
	uint64_t body_off;           /* a 200 answer: the blob offset of the next body byte */
	uint64_t asked_end;          /* the end in the Range header (end may be cut later) */
	unsigned attempt, slow_restarts;
	bool auth_retried, demand, cut, slow, bad, done_early;
	size_t ep;                   /* the endpoint this request went to */
	int werr;
	uint64_t started_ms, first_byte_ms, win_bytes;
	uint64_t last_io_ms;         /* when the last byte (header or body) arrived */
	uint64_t stall_ms;           /* cancel when nothing arrives for this long */
	bool stalled;
	/* JOB_MEM */
	struct memreq *req;
	char *body;
	size_t len;
	bool too_big;
};

struct kick {
	struct kick *next;
	struct blob *blob;           /* referenced */
};

struct fetcher {
	struct net_opts o;
	pthread_t thread;
	CURLM *multi;

	pthread_mutex_t lock;        /* guards inbox, newreqs, stop, stats */
	struct kick *inbox;
	struct memreq *newreqs;
	bool stop;
	struct fetch_stats stats;

	/* network thread only */
	struct source *sources;
	struct job *jobs;
	struct job *finished;        /* jobs taken off the multi early */
	struct memreq *pending;      /* waiting for a token or a retry time */
	struct authent *auth;
	struct hostinfo *hosts;
	unsigned nrange;             /* range requests in flight; written here only, atomically */
	void *stage_pool;            /* spare stage buffers, linked through their first bytes */
	unsigned nstage_pool;
	uint64_t last_slow_check;
	uint64_t typical_rate;       /* bytes/s of a finished range request, smoothed */
};

void net_opts_defaults(struct net_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->connections = 16;
	o->demand_reserve = 4;
	o->user_agent = PACKAGE_NAME "/" PACKAGE_VERSION;
}

static uint32_t rnd(void)
{
	uint32_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v))
		v = (uint32_t)now_ms() * 2654435761u;
	return v;
}

static void stat_add(struct fetcher *f, uint64_t *field, uint64_t n)
{
	__atomic_add_fetch(field, n, __ATOMIC_RELAXED);
	(void)f;
}

void http_result_release(struct http_result *r)
{
	free(r->url);
	free(r->body);
	free(r->content_type);
	free(r->docker_digest);
	free(r->content_location);
	memset(r, 0, sizeof(*r));
}

/* ---- what we know of endpoints ---- */

static struct hostinfo *hostinfo_get(struct fetcher *f, const char *authority)
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

#define MIRROR_DOWN_MS 30000

/* The first endpoint from ep on that is not a mirror known to be down. */
static size_t healthy_endpoint(struct fetcher *f, const struct remote *r, size_t ep)
{
	uint64_t now = now_ms();

	while (ep + 1 < r->nep && hostinfo_get(f, r->ep[ep].authority)->down_until > now)
		ep++;
	return ep;
}

/* ---- auth cache ---- */

static struct authent *auth_get(struct fetcher *f, struct remote *r, size_t ep)
{
	const char *authority = r->ep[ep].authority;
	struct authent *a;

	for (a = f->auth; a; a = a->next)
		if (strcasecmp(a->authority, authority) == 0 && strcmp(a->scope, r->scope) == 0)
			return a;
	a = xcalloc(1, sizeof(*a));
	a->authority = xstrdup(authority);
	a->scope = xstrdup(r->scope);
	a->origin = remote_ref(r);
	a->next = f->auth;
	f->auth = a;
	return a;
}

/* Credentials for a registry: the credentials file, then ~/.netrc. */
static struct credentials *auth_credentials(struct fetcher *f, struct authent *a)
{
	if (!a->cred_loaded) {
		const char *home = getenv("HOME");
		int ret = -ENOENT;
		const struct remote_opts *o = &a->origin->o;
		char err[160];
		a->cred_loaded = true;
		if (o->credentials) {
			ret = netrc_lookup(o->credentials, a->authority, &a->cred, err, sizeof(err));
			if (ret < 0 && ret != -ENOENT)
				log_warn("cannot read credentials file '%s': %s", o->credentials,
					 ret == -EINVAL ? err : strerror(-ret));
		}
		if (ret < 0 && !o->no_netrc && home) {
			char *netrc = xasprintf("%s/.netrc", home);
			ret = netrc_lookup(netrc, a->authority, &a->cred, err, sizeof(err));
			if (ret < 0 && ret != -ENOENT)
				log_warn("cannot read '%s': %s", netrc,
					 ret == -EINVAL ? err : strerror(-ret));
			free(netrc);
		}
	}
	return a->cred.user ? &a->cred : NULL;
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
static int auth_ready(struct fetcher *f, struct authent *a, uint64_t now)
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

static void auth_apply(struct fetcher *f, struct job *j, struct authent *a)
{
	if (a->scheme == AUTH_BEARER && a->token) {
		curl_easy_setopt(j->easy, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
		curl_easy_setopt(j->easy, CURLOPT_XOAUTH2_BEARER, a->token);
		j->token_sent = xstrdup(a->token);
	} else if (a->scheme == AUTH_BASIC) {
		struct credentials *c = auth_credentials(f, a);
		if (c) {
			curl_easy_setopt(j->easy, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
			curl_easy_setopt(j->easy, CURLOPT_USERNAME, c->user);
			curl_easy_setopt(j->easy, CURLOPT_PASSWORD, c->password);
			j->basic_sent = true;
		}
	}
}

/*
 * A 401 from the registry: learn the challenge. Returns 0 when the request
 * should be retried (a token is coming, or Basic credentials will be sent),
 * or a negative errno with a message when it cannot succeed.
 */
static int auth_challenged(struct fetcher *f, struct authent *a, struct job *j,
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
		if (!auth_credentials(f, a)) {
			snprintf(msg, msglen, "registry '%s' requires a login; add it to the "
				 "credentials file or ~/.netrc", a->authority);
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

/* ---- jobs: curl callbacks ---- */

static void set_str(char **slot, const char *v, size_t len)
{
	free(*slot);
	*slot = xstrndup(v, len);
}

static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
	struct job *j = arg;
	size_t len = size * n;
	const char *v;
	size_t vl;

	j->last_io_ms = now_ms();
	if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
		/* A new response (after a followed redirect): forget the last one's headers. */
		const char *sp = memchr(line, ' ', len);
		j->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		free(j->location); free(j->bearer); free(j->basic); free(j->retry_after);
		free(j->content_range); free(j->content_type); free(j->docker_digest);
		free(j->content_location);
		j->location = j->bearer = j->basic = j->retry_after = j->content_range = NULL;
		j->content_type = j->docker_digest = j->content_location = NULL;
		j->content_length = -1;
		return len;
	}
	if (len > HEADER_MAX)
		return len;
	if (http_header_value(line, len, "Location", &v, &vl))
		set_str(&j->location, v, vl);
	else if (http_header_value(line, len, "WWW-Authenticate", &v, &vl)) {
		if (vl >= 6 && strncasecmp(v, "Bearer", 6) == 0)
			set_str(&j->bearer, v, vl);
		else if (vl >= 5 && strncasecmp(v, "Basic", 5) == 0)
			set_str(&j->basic, v, vl);
	} else if (http_header_value(line, len, "Retry-After", &v, &vl))
		set_str(&j->retry_after, v, vl);
	else if (http_header_value(line, len, "Content-Range", &v, &vl))
		set_str(&j->content_range, v, vl);
	else if (http_header_value(line, len, "Content-Type", &v, &vl))
		set_str(&j->content_type, v, vl);
	else if (http_header_value(line, len, "Docker-Content-Digest", &v, &vl))
		set_str(&j->docker_digest, v, vl);
	else if (http_header_value(line, len, "Content-Location", &v, &vl))
		set_str(&j->content_location, v, vl);
	else if (http_header_value(line, len, "Content-Length", &v, &vl)) {
		uint64_t cl;
		j->content_length = parse_u64(v, vl, &cl) ? (int64_t)cl : -1;
	}
	return len;
}

static size_t on_mem_data(char *data, size_t size, size_t n, void *arg)
{
	struct job *j = arg;
	size_t len = size * n;

	j->last_io_ms = now_ms();
	if (j->len + len > j->req->max) {
		j->too_big = true;
		return 0;
	}
	j->body = xrealloc(j->body, j->len + len + 1);
	memcpy(j->body + j->len, data, len);
	j->len += len;
	j->body[j->len] = '\0';
	return len;
}

/*
 * A 200 to a range request brings the blob from offset 0. Give back the range
 * the job claimed and claim again from 0, so that the stream fills every
 * missing chunk it passes: claiming only from the job's own start on would
 * leave the chunks before it to another whole-blob request. The range given
 * back is the first missing one at or after 0, or lies within the new claim.
 */
static bool restream(struct job *j)
{
	uint64_t start, end;

	if (j->pos != j->start || j->start == 0)
		return true;
	blob_unclaim(j->src->blob, j->start, j->end, 0);
	if (blob_claim_from(j->src->blob, 0, blob_size(j->src->blob), &start, &end) < 0)
		return false;   /* the blob is no longer partial: nothing to write */
	j->origin = j->start = j->pos = j->reported = start;
	j->end = j->asked_end = end;
	j->next_boundary = chunkmap_end(j->geo, chunkmap_index(j->geo, start));
	return true;
}

/*
 * Check a range response before writing a byte of it: a 206 must carry the
 * Content-Range asked for; a 200 is the whole blob from offset 0 (the server
 * ignores ranges) and is skipped up to where we want to start.
 */
static bool check_range_response(struct job *j)
{
	uint64_t first, last, total, size = blob_size(j->src->blob);

	if ((j->status == 206 || j->status == 200) && !j->src->direct) {
		/* The registry serves the bytes itself: later ranges may go in parallel now. */
		j->src->direct = xstrdup(j->url);
		j->src->resolving = false;
	}
	if (j->status == 206) {
		if (!j->content_range ||
		    http_parse_content_range(j->content_range, strlen(j->content_range),
					     &first, &last, &total) < 0) {
			char *u = url_redact(j->url);
			log_warn("'%s': a 206 response without a valid Content-Range", u);
			free(u);
			return false;
		}
		if (first != j->start || last >= j->asked_end ||
		    (total != HTTP_TOTAL_UNKNOWN && total != size)) {
			log_warn("the server answered bytes %llu-%llu/%llu to a request for %llu-%llu",
				 (unsigned long long)first, (unsigned long long)last,
				 (unsigned long long)total, (unsigned long long)j->start,
				 (unsigned long long)j->asked_end - 1);
			return false;
		}
		if (last + 1 < j->end) {
			j->end = last + 1;    /* a shorter range is allowed; the rest is refetched */
			j->cut = true;
		}
		return true;
	}
	if (j->status == 200) {
		if (j->content_length >= 0 && (uint64_t)j->content_length != size) {
			log_warn("the server sent %lld bytes for a blob of %llu",
				 (long long)j->content_length, (unsigned long long)size);
			return false;
		}
		if (j->start == 0 && j->asked_end == size)
			return true;   /* the whole blob was asked for; a 200 is the right answer */
		if (!j->src->no_ranges) {
			char *u = url_redact(j->url);
			log_info("the server for '%s' ignores ranges; fetching it whole, in order", u);
			free(u);
		}
		j->src->no_ranges = true;
		return restream(j);   /* the body starts at offset 0: on_range_data skips to pos */
	}
	return true; /* an error body: read and dropped */
}

static void report_progress(struct job *j)
{
	if (j->pos > j->reported) {
		blob_written(j->src->blob, j->origin, j->reported, j->pos);
		j->reported = j->pos;
	}
	if (j->pos < blob_size(j->src->blob))
		j->next_boundary = chunkmap_end(j->geo, chunkmap_index(j->geo, j->pos));
}

/*
 * A server that ignores ranges sends each blob whole, from offset 0: rather
 * than stop where the claimed range ends and ask again (from 0 again), keep
 * reading and claim the next missing chunks as the stream reaches them.
 */
static void job_sync(struct job *j);

static bool stream_on(struct job *j)
{
	uint64_t start, end;

	job_sync(j);
	if (j->werr || blob_claim_from(j->src->blob, j->end, blob_size(j->src->blob), &start, &end) < 0)
		return false;
	j->origin = j->pos = j->reported = start;
	j->end = j->asked_end = end;
	j->next_boundary = chunkmap_end(j->geo, chunkmap_index(j->geo, start));
	return true;
}

/*
 * Body bytes are gathered in a per-request stage and written in big pieces:
 * curl hands them over 16 KiB at a time, and a pwrite per 16 KiB costs the
 * kernel about twice what one per 512 KiB does (page cache folios, ext4
 * block mapping, the syscall itself). Whole chunks are written when the
 * stage fills and after every curl_multi_perform round (fetcher_main), so a
 * reader waits no longer than before: the bytes held back belong to a chunk
 * that has not fully arrived. The end of the range, and anything that looks
 * at the request from outside (finish, split, shutdown), writes it all.
 */
static uint64_t job_at(const struct job *j)
{
	return j->pos + j->staged;   /* where the next body byte goes */
}

static void stage_free(struct fetcher *f, char *buf)
{
	if (!buf)
		return;
	if (f->nstage_pool >= STAGE_POOL) {
		free(buf);
		return;
	}
	*(void **)buf = f->stage_pool;
	f->stage_pool = buf;
	f->nstage_pool++;
}

static char *stage_alloc(struct fetcher *f)
{
	char *buf = f->stage_pool;

	if (!buf)
		return xmalloc(STAGE_SIZE);
	f->stage_pool = *(void **)buf;
	f->nstage_pool--;
	return buf;
}

/* Write the staged bytes: with all, every one; else those of whole chunks. */
static void stage_flush(struct job *j, bool all)
{
	uint64_t at = job_at(j), upto = at;
	int ret;

	if (!j->staged || j->werr)
		return;
	if (!all && at < j->end)
		upto = chunkmap_start(j->geo, chunkmap_index(j->geo, at));
	if (upto <= j->pos)
		return;
	size_t n = (size_t)(upto - j->pos);
	ret = pwrite_all(j->wfd, j->stage, n, (off_t)j->pos);
	if (ret < 0) {
		j->werr = ret;
		return;
	}
	memmove(j->stage, j->stage + n, j->staged - n);
	j->staged -= n;
	j->pos = upto;
	if (j->pos >= j->next_boundary || j->pos == j->end)
		report_progress(j);
}

/* Everything received is written and reported. */
static void job_sync(struct job *j)
{
	stage_flush(j, true);
	report_progress(j);
}

static bool stage_put(struct job *j, const char *data, size_t len)
{
	while (len > 0) {
		if (j->staged == STAGE_SIZE) {
			stage_flush(j, false);
			if (j->staged == STAGE_SIZE)   /* chunks bigger than the stage */
				stage_flush(j, true);
			if (j->werr)
				return false;
		}
		if (!j->stage)
			j->stage = stage_alloc(j->f);
		size_t k = MIN(len, STAGE_SIZE - j->staged);
		memcpy(j->stage + j->staged, data, k);
		j->staged += k;
		data += k;
		len -= k;
	}
	if (job_at(j) == j->end)
		stage_flush(j, true);
	return !j->werr;
}

static size_t on_range_data(char *data, size_t size, size_t n, void *arg)
{
	struct job *j = arg;
	size_t len = size * n, done = 0;

	j->last_io_ms = now_ms();
	if (j->werr)
		return 0;
	if (!j->checked) {
		j->checked = true;
		j->first_byte_ms = now_ms();
		if (!check_range_response(j)) {
			j->bad = true;
			return 0;
		}
	}
	if (j->status != 206 && j->status != 200)
		return len;   /* an error body: read and dropped */
	while (done < len) {
		size_t avail = len - done;
		uint64_t at = job_at(j);
		/* A 200 carries the blob from offset 0: skip what is not ours to write. */
		if (j->status == 200 && j->body_off < at) {
			size_t k = (size_t)MIN((uint64_t)avail, at - j->body_off);
			j->body_off += k;
			done += k;
			continue;
		}
		if (at == j->end) {
			if (j->status == 200 && j->src->no_ranges && stream_on(j))
				continue;
			/* Past what we asked for: a cut request, or a server sending extra. */
			if (!j->cut && j->status == 206)
				log_debug("the server sent more than the range asked for");
			j->done_early = true;
			return 0;
		}
		size_t take = (size_t)MIN((uint64_t)avail, j->end - at);
		if (!stage_put(j, data + done, take))
			return 0;
		j->body_off += take;
		j->win_bytes += take;
		done += take;
		stat_add(j->f, &j->f->stats.bytes, take);
	}
	return len;
}

/* After a round of curl_multi_perform: write the whole chunks that arrived. */
static void flush_stages(struct fetcher *f)
{
	for (struct job *j = f->jobs; j; j = j->next)
		if (j->kind == JOB_RANGE && j->staged)
			stage_flush(j, false);
}

/* ---- jobs: lifecycle ---- */

static CURL *new_easy(struct fetcher *f, struct job *j, const char *url,
		      const struct remote_opts *o)
{
	CURL *e = curl_easy_init();

	if (!e) {
		log_error("cannot create a curl handle");
		abort();
	}
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, j);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long)o->connect_timeout_s);
	curl_easy_setopt(e, CURLOPT_USERAGENT, f->o.user_agent);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024);
	if (o->cacert)
		curl_easy_setopt(e, CURLOPT_CAINFO, o->cacert);
	j->url = xstrdup(url);
	j->content_length = -1;
	/* Stalls are ours to see (check_stalls): curl's low-speed test averages over
	 * seconds, so a burst followed by silence would go unnoticed for too long. */
	j->stall_ms = (uint64_t)o->stall_timeout_s * 1000;
	return e;
}

static void job_free(struct job *j)
{
	stage_free(j->f, j->stage);
	if (j->easy)
		curl_easy_cleanup(j->easy);
	curl_slist_free_all(j->hdrs);
	free(j->url);
	free(j->token_sent);
	free(j->location); free(j->bearer); free(j->basic); free(j->retry_after);
	free(j->content_range); free(j->content_type); free(j->docker_digest);
	free(j->content_location);
	free(j->body);
	free(j);
}

static void job_add(struct fetcher *f, struct job *j)
{
	j->next = f->jobs;
	f->jobs = j;
	j->started_ms = j->last_io_ms = now_ms();
	curl_multi_add_handle(f->multi, j->easy);
	stat_add(f, &f->stats.requests, 1);
}

static void job_remove(struct fetcher *f, struct job *j)
{
	struct job **pp;

	for (pp = &f->jobs; *pp && *pp != j; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = j->next;
	curl_multi_remove_handle(f->multi, j->easy);
}

/* ---- small GETs ---- */

static void memreq_free(struct memreq *r)
{
	remote_unref(r->remote);
	free(r->path);
	free(r->url);
	free(r->accept);
	free(r);
}

static void memreq_complete(struct memreq *r, struct http_result *res)
{
	r->done(res, r->arg);
	memreq_free(r);
}

static void memreq_fail(struct memreq *r, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void memreq_fail(struct memreq *r, int err, const char *fmt, ...)
{
	struct http_result res = { .err = err };
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(res.msg, sizeof(res.msg), fmt, ap);
	va_end(ap);
	memreq_complete(r, &res);
}

static void start_mem(struct fetcher *f, struct memreq *r)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->f = f;
	j->kind = JOB_MEM;
	j->req = r;
	if (r->remote) {
		free(r->url);
		r->url = remote_url(r->remote, r->ep, r->path);
	}
	j->ep = r->ep;
	j->easy = new_easy(f, j, r->url, r->remote ? &r->remote->o : &r->token_for->origin->o);
	curl_easy_setopt(j->easy, CURLOPT_WRITEFUNCTION, on_mem_data);
	curl_easy_setopt(j->easy, CURLOPT_WRITEDATA, j);
	curl_easy_setopt(j->easy, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(j->easy, CURLOPT_MAXREDIRS, 5L);
	curl_easy_setopt(j->easy, CURLOPT_ACCEPT_ENCODING, "");
	if (r->accept) {
		char *h = xasprintf("Accept: %s", r->accept);
		j->hdrs = curl_slist_append(j->hdrs, h);
		free(h);
		curl_easy_setopt(j->easy, CURLOPT_HTTPHEADER, j->hdrs);
	}
	if (r->basic) {
		curl_easy_setopt(j->easy, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
		curl_easy_setopt(j->easy, CURLOPT_USERNAME, r->basic->user);
		curl_easy_setopt(j->easy, CURLOPT_PASSWORD, r->basic->password);
		j->basic_sent = true;
	}
	if (r->remote) {
		j->to_registry = true;
		auth_apply(f, j, auth_get(f, r->remote, r->ep));
	}
	if (log_get_level() >= LOG_LVL_DEBUG) {
		char *u = url_redact(r->url);
		log_debug("GET %s", u);
		free(u);
	}
	job_add(f, j);
}

/* Start a request, or park it until its token arrives or its retry is due. */
static void submit_mem(struct fetcher *f, struct memreq *r)
{
	uint64_t now = now_ms();

	if (r->due_ms <= now && r->remote) {
		r->ep = healthy_endpoint(f, r->remote, r->ep);
		struct authent *a = auth_get(f, r->remote, r->ep);
		int ready = auth_ready(f, a, now);
		if (ready < 0 && r->ep + 1 < r->remote->nep) {
			r->ep++;           /* that mirror will not let us in: the next one */
			submit_mem(f, r);
			return;
		}
		if (ready < 0) {
			memreq_fail(r, ready, "%s", a->msg);
			return;
		}
		if (ready > 0) {
			start_mem(f, r);
			return;
		}
	} else if (r->due_ms <= now) {
		start_mem(f, r);
		return;
	}
	r->next = f->pending;
	f->pending = r;
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
	r = xcalloc(1, sizeof(*r));
	r->url = u2;
	r->max = 1u << 20;
	r->done = token_done;
	r->arg = a;
	r->token_for = a;
	r->basic = auth_credentials(f, a);
	a->pending = true;
	a->err = 0;
	start_mem(f, r);
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
		http_result_release(res);
		return;
	}
	a->err = -EACCES;
	if (res->status == 401 || res->status == 403)
		snprintf(a->msg, sizeof(a->msg), a->cred.user
			 ? "registry '%s' refused the credentials for it"
			 : "registry '%s' requires a login; add it to the credentials file or ~/.netrc",
			 a->authority);
	else if (res->err)
		snprintf(a->msg, sizeof(a->msg), "cannot get a token for '%s': %s",
			 a->authority, res->msg[0] ? res->msg : strerror(-res->err));
	else
		snprintf(a->msg, sizeof(a->msg), "the token server for '%s' sent an invalid answer",
			 a->authority);
	log_error("%s", a->msg);
	http_result_release(res);
}

/* What curl said went wrong: its detailed message if it left one. */
static const char *job_error(const struct job *j, CURLcode res)
{
	return j->errbuf[0] ? j->errbuf : curl_easy_strerror(res);
}

/* Is a transport failure worth another attempt? TLS and URL errors are not. */
static bool transient_curl(CURLcode res)
{
	return res != CURLE_OK && res != CURLE_WRITE_ERROR &&
	       res != CURLE_PEER_FAILED_VERIFICATION && res != CURLE_SSL_CACERT_BADFILE &&
	       res != CURLE_UNSUPPORTED_PROTOCOL && res != CURLE_URL_MALFORMAT &&
	       res != CURLE_TOO_MANY_REDIRECTS;
}

/* A mirror gets fewer attempts than the registry: the next endpoint is waiting. */
static unsigned attempts_for(const struct remote *r, size_t ep)
{
	unsigned max = r->o.retry.max_attempts;

	return r->ep[ep].mirror ? MIN(max, 2u) : max;
}

/* Leave a failing mirror for the next endpoint; remember it is down for a while. */
static void mirror_failed(struct fetcher *f, const struct remote *r, size_t ep, const char *why)
{
	char *u = url_redact(r->ep[ep].base), *next = url_redact(r->ep[ep + 1].base);

	hostinfo_get(f, r->ep[ep].authority)->down_until = now_ms() + MIRROR_DOWN_MS;
	log_warn("mirror '%s' failed (%s); trying '%s'", u, why, next);
	free(u);
	free(next);
}

/* A finished small GET: retry, re-authenticate, try the next endpoint, or answer. */
static void finish_mem(struct fetcher *f, struct job *j, CURLcode res)
{
	struct memreq *r = j->req;
	struct http_result out = { 0 };
	const struct retry_policy *rp = r->remote ? &r->remote->o.retry
						  : &r->token_for->origin->o.retry;
	unsigned max = r->remote ? attempts_for(r->remote, r->ep) : rp->max_attempts;
	char msg[1400];

	j->req = NULL;
	if (res == CURLE_OK && j->status == 401 && r->remote) {
		struct authent *a = auth_get(f, r->remote, r->ep);
		int ret = auth_challenged(f, a, j, r->auth_retried, msg, sizeof(msg));
		if (ret < 0 && r->ep + 1 < r->remote->nep) {
			mirror_failed(f, r->remote, r->ep, msg);
			r->ep++;
			r->attempt = 0;
			r->auth_retried = false;
			submit_mem(f, r);
			return;
		}
		if (ret < 0) {
			memreq_fail(r, ret, "%s", msg);
			return;
		}
		r->auth_retried = j->token_sent != NULL || j->basic_sent;
		submit_mem(f, r);
		return;
	}
	bool transient = transient_curl(res) || (res == CURLE_OK && http_status_retryable(j->status));
	if (transient && ++r->attempt < max) {   /* attempt: made so far */
		uint64_t delay = retry_delay_ms(rp, r->attempt, rnd()), ra;
		if (j->retry_after && http_parse_retry_after(j->retry_after, time(NULL), &ra) == 0)
			delay = MAX(delay, MIN(ra, rp->retry_after_max_ms));
		if (log_get_level() >= LOG_LVL_DEBUG) {
			char *u = url_redact(r->url);
			log_debug("retrying %s in %llums", u, (unsigned long long)delay);
			free(u);
		}
		r->due_ms = now_ms() + delay;
		stat_add(f, &f->stats.retries, 1);
		submit_mem(f, r);
		return;
	}
	char *where = url_redact(r->url);
	if (res == CURLE_WRITE_ERROR && j->too_big) {
		out.err = -EMSGSIZE;
		snprintf(out.msg, sizeof(out.msg), "'%s' sent more than %zu bytes", where, r->max);
	} else if (res != CURLE_OK) {
		out.err = res == CURLE_PEER_FAILED_VERIFICATION ? -EACCES : -EIO;
		snprintf(out.msg, sizeof(out.msg), "cannot get '%s': %s%s", where, job_error(j, res),
			 res == CURLE_PEER_FAILED_VERIFICATION
			 ? " (is the CA known? see --cacert)" : "");
	} else {
		out.status = j->status;
		if (j->status < 200 || j->status > 299) {
			out.err = -http_status_errno(j->status);
			snprintf(out.msg, sizeof(out.msg), "'%s' answered HTTP %ld", where, j->status);
		}
	}
	free(where);
	if (out.err && r->remote && r->ep + 1 < r->remote->nep) {
		mirror_failed(f, r->remote, r->ep, out.msg);
		r->ep++;
		r->attempt = 0;
		r->auth_retried = false;
		r->due_ms = 0;
		submit_mem(f, r);
		return;
	}
	out.url = xstrdup(r->url);
	out.body = j->body;
	out.len = j->len;
	j->body = NULL;
	out.content_type = j->content_type;
	out.docker_digest = j->docker_digest;
	out.content_location = j->content_location;
	j->content_type = j->docker_digest = j->content_location = NULL;
	memreq_complete(r, &out);
}

/* ---- range requests ---- */

static struct retry *retry_new(uint64_t origin, uint64_t start, uint64_t end)
{
	struct retry *r = xcalloc(1, sizeof(*r));

	r->origin = origin;
	r->start = start;
	r->end = end;
	return r;
}

/* Queue a claimed range for another attempt; demand-split ranges go first. */
static void queue_retry(struct source *s, struct retry *r, bool front)
{
	struct retry **pp = &s->retries;

	if (!front)
		while (*pp)
			pp = &(*pp)->next;
	r->next = *pp;
	*pp = r;
}

/* Give a claimed range up for good (or, with err 0, just unclaim it). */
static void drop_range(struct source *s, uint64_t start, uint64_t end, int err)
{
	blob_unclaim(s->blob, start, end, err);
	if (err)
		s->dead = s->dead || !blob_has_work(s->blob);
}

static void start_range(struct fetcher *f, struct source *s, struct retry *r)
{
	struct job *j = xcalloc(1, sizeof(*j));
	struct blob *b = s->blob;
	const char *url = s->direct ? s->direct : s->start_url;
	char range[64];

	j->f = f;
	j->kind = JOB_RANGE;
	j->src = s;
	j->wfd = blob_wfd(b);
	j->geo = blob_geometry(b);
	j->origin = r->origin;
	j->start = j->pos = j->reported = r->start;
	j->end = j->asked_end = r->end;
	j->attempt = r->attempt;
	j->slow_restarts = r->slow_restarts;
	j->auth_retried = r->auth_retried;
	j->demand = r->demand;
	j->next_boundary = chunkmap_end(j->geo, chunkmap_index(j->geo, j->pos));
	j->ep = s->ep;
	j->easy = new_easy(f, j, url, &s->remote->o);
	curl_easy_setopt(j->easy, CURLOPT_WRITEFUNCTION, on_range_data);
	curl_easy_setopt(j->easy, CURLOPT_WRITEDATA, j);
	snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)r->start,
		 (unsigned long long)r->end - 1);
	curl_easy_setopt(j->easy, CURLOPT_RANGE, range);
	if (r->fresh)
		curl_easy_setopt(j->easy, CURLOPT_FRESH_CONNECT, 1L);
	j->to_registry = url_same_origin(url, s->remote->ep[s->ep].base);
	if (j->to_registry)
		auth_apply(f, j, auth_get(f, s->remote, s->ep));
	if (!s->direct)
		s->resolving = true;
	s->jobs++;
	__atomic_add_fetch(&f->nrange, 1, __ATOMIC_RELAXED);   /* read by status */
	free(r);
	if (log_get_level() >= LOG_LVL_DEBUG) {
		char *u = url_redact(url);
		log_debug("GET %s bytes %s", u, range);
		free(u);
	}
	job_add(f, j);
}

static void chunksums_done(struct http_result *res, void *arg);

struct cs_req {
	struct fetcher *f;
	struct source *s;
};

/* Ask the registry for chunk checksums once per large fresh blob and host. */
static bool want_chunksums(struct fetcher *f, struct source *s)
{
	struct hostinfo *h;

	if (s->chunksums_checked)
		return false;
	h = hostinfo_get(f, s->remote->ep[s->ep].authority);
	if (!s->remote->o.chunksums || h->no_chunksums || !blob_wants_chunksums(s->blob)) {
		s->chunksums_checked = true;
		blob_chunksums_done(s->blob);
		return false;
	}
	return true;
}

static void request_chunksums(struct fetcher *f, struct source *s)
{
	struct memreq *r = xcalloc(1, sizeof(*r));
	struct cs_req *c = xcalloc(1, sizeof(*c));

	c->f = f;
	c->s = s;
	r->remote = remote_ref(s->remote);
	r->path = remote_chunksums_path(blob_digest(s->blob));
	r->ep = s->ep;
	r->max = 64u << 20;
	r->done = chunksums_done;
	r->arg = c;
	s->chunksums_pending = true;
	s->chunksums_checked = true;
	submit_mem(f, r);
}

static void chunksums_done(struct http_result *res, void *arg)
{
	struct cs_req *c = arg;
	struct source *s = c->s;
	char err[160];

	s->chunksums_pending = false;
	if (res->err == 0 && res->status == 200) {
		struct chunkmap *m = chunkmap_from_chunksums(res->body, res->len,
							      blob_size(s->blob), err, sizeof(err));
		if (m) {
			blob_adopt_chunks(s->blob, m);
			if (res->content_location && res->url) {
				char *u = url_resolve(res->url, res->content_location);
				if (u) {
					free(s->start_url);
					s->start_url = u;
				}
			}
		} else {
			log_warn("ignoring the registry's chunk checksums: %s", err);
		}
	} else if (res->status == 404 || res->status == 405 || res->status == 400) {
		hostinfo_get(c->f, s->remote->ep[s->ep].authority)->no_chunksums = true;
	}
	blob_chunksums_done(s->blob);
	http_result_release(res);
	free(c);
}

static struct source *source_find(struct fetcher *f, struct blob *b)
{
	for (struct source *s = f->sources; s; s = s->next)
		if (s->blob == b)
			return s;
	return NULL;
}

/* Take a kicked blob on (the kick's reference becomes the source's). */
static void source_add(struct fetcher *f, struct blob *b)
{
	struct source *s = source_find(f, b);
	struct remote *r;
	int ret;

	if (s) {
		s->dead = false;
		blob_put(b);
		return;
	}
	r = blob_remote(b);
	ret = blob_activate(b);
	if (ret < 0 && ret != -EBUSY) {
		blob_fail(b, ret, strerror(-ret));
		blob_put(b);
		return;
	}
	if (!r) {
		char d[DIGEST_STR_LEN];
		digest_format(blob_digest(b), d);
		blob_fail(b, -ENOENT, "no registry is known for it");
		blob_put(b);
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->blob = b;
	s->remote = remote_ref(r);
	s->ep = healthy_endpoint(f, r, 0);
	char *path = remote_blob_path(blob_digest(b));
	s->start_url = remote_url(r, s->ep, path);
	free(path);
	s->next = f->sources;
	f->sources = s;
}

static void source_free(struct fetcher *f, struct source *s)
{
	while (s->retries) {
		struct retry *r = s->retries;
		s->retries = r->next;
		blob_unclaim(s->blob, r->start, r->end, 0);
		free(r);
	}
	blob_put(s->blob);
	remote_unref(s->remote);
	free(s->start_url);
	free(s->direct);
	free(s);
	(void)f;
}

/* Move a source to its next endpoint: a new blob URL, to be resolved afresh. */
static void source_next_endpoint(struct source *s)
{
	char *path = remote_blob_path(blob_digest(s->blob));

	s->ep++;
	free(s->start_url);
	s->start_url = remote_url(s->remote, s->ep, path);
	free(path);
	free(s->direct);
	s->direct = NULL;
	s->resolving = false;
	s->redirects = s->reresolves = 0;
	s->no_ranges = false;
}

/*
 * Classify a failed attempt of a range request and act: another attempt
 * (after a backoff), re-resolution of an expired CDN URL, authentication,
 * or a final error for the readers waiting on it.
 */
static void range_failed(struct fetcher *f, struct job *j, CURLcode res)
{
	struct source *s = j->src;
	struct retry *r;
	bool progress = j->pos > j->start;
	uint64_t now = now_ms(), delay = 0, ra;
	char *where = url_redact(j->url);
	int err = 0;
	char msg[1024] = "";

	r = retry_new(j->origin, j->pos, j->end);
	r->attempt = progress ? 0 : j->attempt;
	r->slow_restarts = j->slow_restarts;
	r->auth_retried = progress ? false : j->auth_retried;
	r->demand = j->demand;

	if (j->ep < s->ep && !j->werr) {
		/* It went to a mirror the source has left since: go where it is now. */
		r->attempt = 0;
		r->auth_retried = false;
		queue_retry(s, r, true);
		goto out;
	}
	if (j->werr) {
		err = j->werr;
		snprintf(msg, sizeof(msg), "cannot write to the store: %s", strerror(-err));
		goto final;
	}
	if (j->slow) {
		r->fresh = true;
		r->slow_restarts++;
		log_info("restarting a slow range of '%s' on a new connection", where);
		queue_retry(s, r, true);
		goto out;
	}
	if (res == CURLE_OK && j->status >= 300 && j->status < 400 && j->location) {
		char *u = url_resolve(j->url, j->location);
		if (!u || ++s->redirects > MAX_REDIRECTS) {
			free(u);
			err = -EIO;
			snprintf(msg, sizeof(msg), "too many redirects for '%s'", where);
			goto final;
		}
		free(s->direct);
		s->direct = u;
		queue_retry(s, r, true);
		goto out;
	}
	if (res == CURLE_OK && j->status == 401 && j->to_registry) {
		struct authent *a = auth_get(f, s->remote, s->ep);
		err = auth_challenged(f, a, j, j->auth_retried, msg, sizeof(msg));
		if (err < 0)
			goto final;
		r->auth_retried = j->token_sent != NULL || j->basic_sent;
		queue_retry(s, r, true);
		goto out;
	}
	if (res == CURLE_OK && !j->to_registry &&
	    (j->status == 403 || j->status == 404 || j->status == 410)) {
		/*
		 * The CDN URL expired: ask the registry again. Requests still in
		 * flight with the old URL fail the same way; they only need the
		 * new one, so only a failure of the current URL counts.
		 */
		if (!s->direct || strcmp(j->url, s->direct) != 0) {
			queue_retry(s, r, true);
			goto out;
		}
		if (++s->reresolves > MAX_RERESOLVES) {
			err = -EIO;
			snprintf(msg, sizeof(msg), "'%s' keeps answering %ld", where, j->status);
			goto final;
		}
		log_debug("'%s' answered %ld: resolving the blob URL again", where, j->status);
		free(s->direct);
		s->direct = NULL;
		queue_retry(s, r, true);
		goto out;
	}
	if (res == CURLE_OK && j->status >= 400 && !http_status_retryable(j->status)) {
		err = -http_status_errno(j->status);
		snprintf(msg, sizeof(msg), "'%s' answered HTTP %ld%s", where, j->status,
			 j->status == 416 ? " (the blob is smaller than its manifest says)" : "");
		goto final;
	}
	if (res == CURLE_PEER_FAILED_VERIFICATION || res == CURLE_SSL_CACERT_BADFILE) {
		err = -EACCES;
		snprintf(msg, sizeof(msg), "cannot verify the TLS certificate of '%s': %s "
			 "(is the CA known? see --cacert)", where, job_error(j, res));
		goto final;
	}
	/* Transient: 5xx, 429, a reset, a stall, a short or malformed response. */
	r->attempt++;                  /* attempts made without progress */
	stat_add(f, &f->stats.errors, 1);
	if (r->attempt >= attempts_for(s->remote, s->ep)) {
		err = -EIO;
		if (res != CURLE_OK && !j->bad)
			snprintf(msg, sizeof(msg), "'%s': %s (gave up after %u attempts)", where,
				 job_error(j, res), r->attempt);
		else
			snprintf(msg, sizeof(msg), "'%s': %s (gave up after %u attempts)", where,
				 j->bad ? "invalid responses" : "server errors", r->attempt);
		goto final;
	}
	delay = retry_delay_ms(&s->remote->o.retry, r->attempt, rnd());
	if (j->retry_after && http_parse_retry_after(j->retry_after, time(NULL), &ra) == 0) {
		ra = MIN(ra, s->remote->o.retry.retry_after_max_ms);
		delay = MAX(delay, ra);
		s->pause_until = MAX(s->pause_until, now + ra);
	}
	r->due_ms = now + delay;
	r->fresh = res != CURLE_OK;
	stat_add(f, &f->stats.retries, 1);
	log_debug("range %llu-%llu of '%s' failed (%s, HTTP %ld); attempt %u in %llums",
		  (unsigned long long)j->pos, (unsigned long long)j->end - 1, where,
		  res != CURLE_OK ? job_error(j, res) : j->bad ? "bad response" : "status",
		  j->status, r->attempt, (unsigned long long)delay);
	queue_retry(s, r, false);
	goto out;
final:
	if (!j->werr && s->ep + 1 < s->remote->nep) {
		/* A mirror failed for good: the next endpoint (at last the registry) takes over. */
		mirror_failed(f, s->remote, s->ep, msg);
		source_next_endpoint(s);
		r->attempt = 0;
		r->auth_retried = false;
		r->fresh = true;
		queue_retry(s, r, true);
		goto out;
	}
	free(r);
	if (j->werr)
		blob_fail(s->blob, err, msg);   /* a local error stops the whole blob */
	else
		log_error("%s", msg);
	drop_range(s, j->pos, j->end, err);
out:
	free(where);
}

static void note_rate(struct fetcher *f, const struct job *j);

static void finish_range(struct fetcher *f, struct job *j, CURLcode res)
{
	struct source *s = j->src;

	job_sync(j);
	s->jobs--;
	__atomic_sub_fetch(&f->nrange, 1, __ATOMIC_RELAXED);
	if (j->to_registry || !s->direct)
		s->resolving = false;
	if (j->pos > j->start)
		s->redirects = s->reresolves = 0;
	bool ok = (res == CURLE_OK || (res == CURLE_WRITE_ERROR && j->done_early)) &&
		  !j->bad && !j->werr && !j->slow && (j->status == 206 || j->status == 200);
	if (ok && j->pos == j->end) {
		note_rate(f, j);
		if (!s->direct && j->to_registry)
			s->direct = xstrdup(j->url);   /* the registry serves ranges itself */
		return;
	}
	if (ok && j->pos < j->end) {
		/* Short but clean: the server ended early. Fetch the rest. */
		j->bad = true;
	}
	range_failed(f, j, res);
}

/* ---- scheduling ---- */

/* Split job j at the first chunk boundary at or after `at`; the tail is queued first. */
static struct retry *split_job(struct job *j, uint64_t at)
{
	const struct chunkmap *g = j->geo;
	uint32_t i = chunkmap_index(g, at);

	if (chunkmap_start(g, i) < at)
		i++;
	if (i >= g->n)
		return NULL;
	at = chunkmap_start(g, i);
	if (at <= job_at(j) || at >= j->end || j->src->no_ranges)
		return NULL;
	struct retry *r = retry_new(at, at, j->end);
	log_debug("splitting bytes %llu-%llu at %llu (the request is at %llu)",
		  (unsigned long long)j->start, (unsigned long long)j->end - 1,
		  (unsigned long long)at, (unsigned long long)j->pos);
	j->end = at;
	j->cut = true;
	queue_retry(j->src, r, true);
	return r;
}

/* Bytes of j's response that have arrived but that curl has not handed us yet. */
static uint64_t queued_bytes(const struct job *j)
{
	curl_socket_t sock = CURL_SOCKET_BAD;
	int n = 0;

	if (curl_easy_getinfo(j->easy, CURLINFO_ACTIVESOCKET, &sock) != CURLE_OK ||
	    sock == CURL_SOCKET_BAD || ioctl(sock, FIONREAD, &n) < 0 || n < 0)
		return 0;
	return (uint64_t)n;
}

/*
 * Will job j take long to reach offset off? Cutting a request costs what
 * the server has already sent past the cut (on a fast link, all the rest
 * of it), so a request is cut only when the bytes the reader needs have not
 * arrived and the request, measured since its first byte, is too slow to
 * bring them soon.
 */
static bool too_slow_to_reach(const struct job *j, uint64_t off, uint64_t now)
{
	uint64_t gap = off - job_at(j), age;

	/* Not started yet: a new request would start no sooner (stalls are retried anyway). */
	if (!j->first_byte_ms || gap <= SPLIT_GAP)
		return false;
	age = now - j->first_byte_ms;
	if (age < SPLIT_MIN_AGE_MS)
		return false;
	uint64_t queued = queued_bytes(j);
	if (queued >= gap)
		return false;
	uint64_t rate = (job_at(j) + queued - j->start) * 1000 / age;   /* bytes per second */
	return rate == 0 || (gap - queued) * 1000 / rate > SPLIT_WAIT_MS;
}

/* Readers blocked on chunks deep inside a slow request get their own request. */
static void split_for_readers(struct fetcher *f, struct source *s)
{
	uint64_t offs[16], now = now_ms();
	int n = blob_blocked_offsets(s->blob, offs, 16);

	for (int k = 0; k < n; k++) {
		for (struct job *j = f->jobs; j; j = j->next) {
			if (j->kind == JOB_RANGE && j->src == s && offs[k] >= job_at(j) &&
			    offs[k] < j->end && too_slow_to_reach(j, offs[k], now)) {
				struct retry *r = split_job(j, offs[k]);
				if (r)
					r->demand = true;
				break;
			}
		}
	}
}

/*
 * Connections are idle and nothing is left to claim: split the biggest tail
 * that is too slow to arrive soon on its own (see too_slow_to_reach).
 */
static bool steal_tail(struct fetcher *f)
{
	struct job *best = NULL;
	uint64_t now = now_ms();

	for (struct job *j = f->jobs; j; j = j->next)
		if (j->kind == JOB_RANGE && !j->src->no_ranges && j->end - job_at(j) > 2 * STEAL_MIN &&
		    too_slow_to_reach(j, job_at(j) + (j->end - job_at(j)) / 2, now) &&
		    (!best || j->end - job_at(j) > best->end - job_at(best)))
			best = j;
	return best && split_job(best, job_at(best) + (best->end - job_at(best)) / 2) != NULL;
}

static struct retry *take_due_retry(struct source *s, uint64_t now, bool demand_only)
{
	for (struct retry **pp = &s->retries; *pp; pp = &(*pp)->next) {
		if ((*pp)->due_ms <= now && (!demand_only || (*pp)->demand)) {
			struct retry *r = *pp;
			*pp = r->next;
			return r;
		}
	}
	return NULL;
}

/* Can source s start a request now? Waits for chunksums, tokens, backoff, resolution. */
static bool source_ready(struct fetcher *f, struct source *s, uint64_t now)
{
	if (s->dead || s->chunksums_pending)
		return false;
	if (want_chunksums(f, s)) {
		request_chunksums(f, s);
		return false;
	}
	if (now < s->pause_until)
		return false;
	if ((!s->direct || url_same_origin(s->direct, s->remote->ep[s->ep].base))) {
		struct authent *a = auth_get(f, s->remote, s->ep);
		int ready = auth_ready(f, a, now);
		if (ready < 0 && s->ep + 1 < s->remote->nep) {
			mirror_failed(f, s->remote, s->ep, a->msg);
			source_next_endpoint(s);
			return false;
		}
		if (ready < 0) {
			blob_fail(s->blob, ready, a->msg);
			while (s->retries) {
				struct retry *r = s->retries;
				s->retries = r->next;
				blob_unclaim(s->blob, r->start, r->end, ready);
				free(r);
			}
			s->dead = true;
			a->err = 0;     /* a later read may try again */
			return false;
		}
		if (ready == 0)
			return false;
	}
	if (!s->direct && s->resolving)
		return false;
	if (s->no_ranges && s->jobs > 0)
		return false;
	return true;
}

/* Start one request for s if it has work; true if one was started. */
static bool schedule_one(struct fetcher *f, struct source *s, uint64_t now, bool demand_only)
{
	struct retry *r;
	uint64_t start, end, max;
	int prio;

	if (!source_ready(f, s, now) || s->jobs >= s->remote->o.connections + f->o.demand_reserve ||
	    (!demand_only && s->jobs >= s->remote->o.connections))
		return false;
	r = take_due_retry(s, now, demand_only);
	if (r) {
		start_range(f, s, r);
		return true;
	}
	max = s->no_ranges ? blob_size(s->blob) : s->remote->o.request_size;
	prio = blob_claim(s->blob, demand_only, max,
			  s->no_ranges ? 1 : MIN(f->o.connections, s->remote->o.connections),
			  &start, &end);
	if (prio < 0)
		return false;
	r = retry_new(start, start, end);
	r->demand = prio == PRIO_DEMAND;
	start_range(f, s, r);
	return true;
}

static void schedule(struct fetcher *f)
{
	uint64_t now = now_ms();
	unsigned cap = f->o.connections, hard = cap + f->o.demand_reserve;
	bool progress = true;

	for (struct source *s = f->sources; s; s = s->next)
		if (s->jobs)
			split_for_readers(f, s);
	/* Round-robin, one request per source per pass, so small blobs are not starved. */
	while (progress && f->nrange < hard) {
		progress = false;
		for (struct source *s = f->sources; s && f->nrange < hard; s = s->next)
			if (schedule_one(f, s, now, f->nrange >= cap))
				progress = true;
	}
	if (f->nrange < cap && f->nrange > 0 && steal_tail(f)) {
		for (struct source *s = f->sources; s && f->nrange < cap; s = s->next)
			schedule_one(f, s, now, false);
	}
	/* Forget sources with nothing left to do. */
	for (struct source **pp = &f->sources; *pp;) {
		struct source *s = *pp;
		if (!s->jobs && !s->retries && !s->chunksums_pending &&
		    (s->dead || !blob_has_work(s->blob))) {
			*pp = s->next;
			source_free(f, s);
		} else {
			pp = &s->next;
		}
	}
}

/* Cancel requests that received nothing for their stall timeout; they are retried. */
static void check_stalls(struct fetcher *f, uint64_t now)
{
	for (struct job *j = f->jobs, *next; j; j = next) {
		next = j->next;
		if (!j->stall_ms || now - j->last_io_ms < j->stall_ms)
			continue;
		j->stalled = true;
		snprintf(j->errbuf, sizeof(j->errbuf), "no data for %llu s",
			 (unsigned long long)(j->stall_ms / 1000));
		job_remove(f, j);
		j->next = f->finished;
		f->finished = j;
	}
}

/* Learn how fast a range request normally goes, from those that finish. */
static void note_rate(struct fetcher *f, const struct job *j)
{
	uint64_t now = now_ms(), bytes = j->pos - j->start;

	if (!j->first_byte_ms || bytes < SLOW_MIN_LEFT || now - j->first_byte_ms < 20)
		return;
	uint64_t rate = bytes * 1000 / (now - j->first_byte_ms);
	f->typical_rate = f->typical_rate ? (7 * f->typical_rate + 3 * rate) / 10 : rate;
}

/*
 * Restart ranges running at under a tenth of the speed of their peers (the
 * median of those running, or, with too few running, the typical speed of
 * ranges that finished) on a fresh connection: a straggler is often one bad
 * connection or one slow CDN node.
 */
static void check_slow(struct fetcher *f, uint64_t now)
{
	uint64_t rates[64], ref = 0;
	int n = 0;

	if (now - f->last_slow_check < SLOW_CHECK_MS)
		return;
	uint64_t span = now - f->last_slow_check;
	f->last_slow_check = now;
	for (struct job *j = f->jobs; j && n < 64; j = j->next)
		if (j->kind == JOB_RANGE && now - j->started_ms >= SLOW_MIN_AGE_MS)
			rates[n++] = j->win_bytes * 1000 / span;
	if (n >= SLOW_PEERS) {
		for (int a = 1; a < n; a++)
			for (int b = a; b > 0 && rates[b - 1] > rates[b]; b--) {
				uint64_t t = rates[b]; rates[b] = rates[b - 1]; rates[b - 1] = t;
			}
		ref = rates[n / 2];
	} else if (n > 0) {
		ref = f->typical_rate;
	}
	for (struct job *j = f->jobs, *next; j && ref; j = next) {
		next = j->next;
		if (j->kind != JOB_RANGE || now - j->started_ms < SLOW_MIN_AGE_MS ||
		    j->slow_restarts >= SLOW_RESTARTS_MAX || j->end - job_at(j) < SLOW_MIN_LEFT ||
		    j->win_bytes * 1000 / span * 10 >= ref)
			continue;
		j->slow = true;
		job_remove(f, j);
		j->next = f->finished;
		f->finished = j;
	}
	for (struct job *j = f->jobs; j; j = j->next)
		j->win_bytes = 0;
}

static void finish_job(struct fetcher *f, struct job *j, CURLcode res)
{
	if (j->kind == JOB_MEM)
		finish_mem(f, j, res);
	else
		finish_range(f, j, res);
	job_free(j);
}

static void drain_inbox(struct fetcher *f)
{
	struct kick *k;
	struct memreq *reqs;

	pthread_mutex_lock(&f->lock);
	k = f->inbox;
	f->inbox = NULL;
	reqs = f->newreqs;
	f->newreqs = NULL;
	pthread_mutex_unlock(&f->lock);
	while (k) {
		struct kick *next = k->next;
		source_add(f, k->blob);
		free(k);
		k = next;
	}
	while (reqs) {
		struct memreq *next = reqs->next;
		submit_mem(f, reqs);
		reqs = next;
	}
}

static void run_pending(struct fetcher *f)
{
	struct memreq *list = f->pending;

	f->pending = NULL;
	while (list) {
		struct memreq *r = list;
		list = r->next;
		submit_mem(f, r);
	}
}

static long next_timeout(struct fetcher *f)
{
	uint64_t now = now_ms(), next = now + 1000;

	for (struct source *s = f->sources; s; s = s->next) {
		for (struct retry *r = s->retries; r; r = r->next)
			next = MIN(next, MAX(r->due_ms, s->pause_until));
		if (s->pause_until > now)
			next = MIN(next, s->pause_until);
	}
	for (struct memreq *r = f->pending; r; r = r->next)
		next = MIN(next, r->due_ms);
	if (f->nrange)
		next = MIN(next, f->last_slow_check + SLOW_CHECK_MS);
	for (struct job *j = f->jobs; j; j = j->next)
		if (j->stall_ms)
			next = MIN(next, j->last_io_ms + j->stall_ms);
	return next > now ? (long)(next - now) : 0;
}

static void shutdown_all(struct fetcher *f)
{
	while (f->jobs) {
		struct job *j = f->jobs;
		job_remove(f, j);
		if (j->kind == JOB_RANGE) {
			job_sync(j);
			j->src->jobs--;
			blob_unclaim(j->src->blob, j->pos, j->end, 0);
		} else {
			memreq_fail(j->req, -ECANCELED, "cancelled");
		}
		job_free(j);
	}
	while (f->sources) {
		struct source *s = f->sources;
		f->sources = s->next;
		source_free(f, s);
	}
	while (f->pending) {
		struct memreq *r = f->pending;
		f->pending = r->next;
		if (r->token_for)
			memreq_free(r);
		else
			memreq_fail(r, -ECANCELED, "cancelled");
	}
	while (f->auth) {
		struct authent *a = f->auth;
		f->auth = a->next;
		free(a->authority);
		free(a->scope);
		remote_unref(a->origin);
		auth_challenge_release(&a->ch);
		if (a->token)
			explicit_bzero(a->token, strlen(a->token));
		free(a->token);
		credentials_release(&a->cred);
		free(a);
	}
	while (f->hosts) {
		struct hostinfo *h = f->hosts;
		f->hosts = h->next;
		free(h->authority);
		free(h);
	}
}

static void *fetcher_main(void *arg)
{
	struct fetcher *f = arg;

	f->last_slow_check = now_ms();
	for (;;) {
		pthread_mutex_lock(&f->lock);
		bool stop = f->stop;
		pthread_mutex_unlock(&f->lock);
		if (stop)
			break;
		drain_inbox(f);
		run_pending(f);
		schedule(f);
		curl_multi_poll(f->multi, NULL, 0, (int)next_timeout(f), NULL);
		int running;
		curl_multi_perform(f->multi, &running);
		flush_stages(f);
		CURLMsg *m;
		int left;
		while ((m = curl_multi_info_read(f->multi, &left)) != NULL) {
			if (m->msg != CURLMSG_DONE)
				continue;
			struct job *j;
			CURLcode res = m->data.result;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
			job_remove(f, j);
			finish_job(f, j, res);
		}
		check_stalls(f, now_ms());
		check_slow(f, now_ms());
		while (f->finished) {
			struct job *j = f->finished;
			f->finished = j->next;
			finish_job(f, j, j->stalled ? CURLE_OPERATION_TIMEDOUT : CURLE_ABORTED_BY_CALLBACK);
		}
	}
	shutdown_all(f);
	return NULL;
}

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int fetcher_start(const struct net_opts *o, struct fetcher **out)
{
	struct fetcher *f = xcalloc(1, sizeof(*f));
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, curl_init_once);
	f->o = *o;
	f->multi = curl_multi_init();
	if (!f->multi) {
		free(f);
		log_error("cannot initialise libcurl");
		return -ENOMEM;
	}
	curl_multi_setopt(f->multi, CURLMOPT_MAXCONNECTS,
			  (long)(o->connections + o->demand_reserve + 4));
	pthread_mutex_init(&f->lock, NULL);
	if (pthread_create(&f->thread, NULL, fetcher_main, f) != 0) {
		curl_multi_cleanup(f->multi);
		pthread_mutex_destroy(&f->lock);
		free(f);
		log_error("cannot start the network thread");
		return -EAGAIN;
	}
	*out = f;
	return 0;
}

void fetcher_stop(struct fetcher *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	f->stop = true;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
	pthread_join(f->thread, NULL);
	/* Kicks that arrived after the thread stopped still hold references. */
	while (f->inbox) {
		struct kick *k = f->inbox;
		f->inbox = k->next;
		blob_put(k->blob);
		free(k);
	}
	while (f->newreqs) {
		struct memreq *r = f->newreqs;
		f->newreqs = r->next;
		memreq_fail(r, -ECANCELED, "cancelled");
	}
}

void fetcher_free(struct fetcher *f)
{
	if (!f)
		return;
	curl_multi_cleanup(f->multi);
	pthread_mutex_destroy(&f->lock);
	while (f->stage_pool) {
		void *buf = f->stage_pool;
		f->stage_pool = *(void **)buf;
		free(buf);
	}
	free(f);
}

void fetcher_stats(struct fetcher *f, struct fetch_stats *st)
{
	st->bytes = __atomic_load_n(&f->stats.bytes, __ATOMIC_RELAXED);
	st->requests = __atomic_load_n(&f->stats.requests, __ATOMIC_RELAXED);
	st->retries = __atomic_load_n(&f->stats.retries, __ATOMIC_RELAXED);
	st->errors = __atomic_load_n(&f->stats.errors, __ATOMIC_RELAXED);
	st->inflight = __atomic_load_n(&f->nrange, __ATOMIC_RELAXED);
}

void fetcher_kick(struct fetcher *f, struct blob *b)
{
	struct kick *k;

	pthread_mutex_lock(&f->lock);
	if (f->stop) {
		pthread_mutex_unlock(&f->lock);
		return;
	}
	for (k = f->inbox; k; k = k->next) {
		if (k->blob == b) {
			pthread_mutex_unlock(&f->lock);
			curl_multi_wakeup(f->multi);
			return;
		}
	}
	k = xcalloc(1, sizeof(*k));
	k->blob = b;
	blob_ref(b);
	k->next = f->inbox;
	f->inbox = k;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
}

void fetcher_get_async(struct fetcher *f, struct remote *r, const char *path,
		       const char *accept, size_t max,
		       void (*done)(struct http_result *res, void *arg), void *arg)
{
	struct memreq *q = xcalloc(1, sizeof(*q));

	q->remote = remote_ref(r);
	q->path = xstrdup(path);
	q->url = remote_url(r, 0, path);
	q->accept = accept ? xstrdup(accept) : NULL;
	q->max = max;
	q->done = done;
	q->arg = arg;
	pthread_mutex_lock(&f->lock);
	if (f->stop) {
		pthread_mutex_unlock(&f->lock);
		memreq_fail(q, -ECANCELED, "cancelled");
		return;
	}
	q->next = f->newreqs;
	f->newreqs = q;
	pthread_mutex_unlock(&f->lock);
	curl_multi_wakeup(f->multi);
}

struct sync_get {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	struct http_result res;
};

static void sync_done(struct http_result *res, void *arg)
{
	struct sync_get *g = arg;

	pthread_mutex_lock(&g->lock);
	g->res = *res;
	g->done = true;
	pthread_cond_signal(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

int fetcher_get(struct fetcher *f, struct remote *r, const char *path,
		const char *accept, size_t max, struct http_result *res)
{
	struct sync_get g = { .lock = PTHREAD_MUTEX_INITIALIZER,
			      .cond = PTHREAD_COND_INITIALIZER };

	fetcher_get_async(f, r, path, accept, max, sync_done, &g);
	pthread_mutex_lock(&g.lock);
	while (!g.done)
		pthread_cond_wait(&g.cond, &g.lock);
	pthread_mutex_unlock(&g.lock);
	pthread_mutex_destroy(&g.lock);
	pthread_cond_destroy(&g.cond);
	*res = g.res;
	return res->err;
}
