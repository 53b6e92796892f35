/*
 * fetch_int.h - what the parts of the network thread share (fetch_loop.c,
 * fetch_auth.c, fetch_job.c, fetch_mem.c, fetch_range.c,
 * fetch_sched.c, fetch_hedge.c, fetch_policy.c). Private to them: nothing outside the
 * fetch_*.c files includes it.
 */
#ifndef BLOBFS_FETCH_INT_H
#define BLOBFS_FETCH_INT_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "fetch.h"

struct remote;
struct remote_opts;
struct retry_policy;

#define SLOW_CHECK_MS 1000       /* how often check_slow looks (fetch_sched.c) */

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
	struct credentials cred;     /* the endpoint's own, for Basic */
	struct credentials realm_cred; /* what the token request in flight carries */
	char *endpoint;              /* the endpoint's base URL: is it HTTPS? */
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
	bool to_end;                 /* ask up to the blob's end, keep [start, end) (after a stall) */
};

struct source {                  /* a blob being fetched */
	struct source *next;
	struct blob *blob;           /* referenced */
	struct remote *remote;       /* referenced: the blob's ri-th remote (blob_remote) */
	unsigned ri;
	size_t ep;                   /* the endpoint in use (mirrors first) */
	unsigned hop;                /* how often it moved on to another endpoint or remote */
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
	uint64_t deadline_ms;        /* its time budget, every attempt included, ends here */
	uint64_t share_ms;           /* how much of it the attempt in flight may use */
	unsigned budget_s;
	bool auth_retried;
	bool absent_ok;              /* 400/404/405 mean "no such thing", not a failed endpoint */
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
	char errbuf[CURL_ERROR_SIZE]; /* curl's detailed message, or ours (setopt_rc) */
	CURLcode setopt_rc;          /* the first option curl refused: the request fails */
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
	unsigned hop;                /* the source's hop when this request started */
	int werr;
	uint64_t started_ms, first_byte_ms, win_bytes;
	uint64_t last_io_ms;         /* when the last byte (header or body) arrived */
	uint64_t flow_ms;            /* time body bytes took to come, silences left out */
	uint64_t stall_ms;           /* cancel when nothing arrives for this long */
	bool stalled;
	/* a stall judged against the speed seen (fetch_hedge.c) */
	bool judged;                 /* this silence was judged; new bytes clear it */
	bool restart;                /* judged stalled: go again at once, on a fresh connection */
	struct job *twin;            /* the other request of a hedged pair over [start, end) */
	bool lead;                   /* of a pair: ahead, and the only one that writes */
	bool superseded;             /* its pair's other request has its range: ends, no retry */
	uint64_t skip_to;            /* body bytes below this are written already: drop them */
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

	pthread_mutex_t lock;        /* guards inbox, newreqs, stop, interrupted */
	struct kick *inbox;
	struct memreq *newreqs;
	bool stop;
	bool interrupted;            /* fetcher_interrupt: small requests end now */
	struct fetch_stats stats;    /* atomics: added to here, read by fetcher_stats */

	/* network thread only */
	bool cancelling;             /* interrupted was seen: small requests fail at once */
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
	uint64_t seen_rate;          /* bytes/s of a connection while bytes flow, smoothed */
};

static inline void stat_add(struct fetcher *f, uint64_t *field, uint64_t n)
{
	__atomic_add_fetch(field, n, __ATOMIC_RELAXED);
	(void)f;
}

/* fetch_policy.c: the retry and failover policy */
uint32_t fetch_rnd(void);
struct hostinfo *hostinfo_get(struct fetcher *f, const char *authority);
/* The first endpoint from ep on that is not a mirror known to be down. */
size_t healthy_endpoint(struct fetcher *f, const struct remote *r, size_t ep);
/* Has endpoint ep of r failed lately (every request skips it for a while)? */
bool endpoint_down(struct fetcher *f, const struct remote *r, size_t ep);
/* Endpoint ep of r failed: requests skip it for a while. */
void endpoint_failed(struct fetcher *f, const struct remote *r, size_t ep);
/* What curl said went wrong: its detailed message if it left one. */
const char *job_error(const struct job *j, CURLcode res);
/*
 * Attempts at endpoint ep of r: fewer when another place waits behind it
 * (a mirror's registry; with more, another remote that has the blob).
 */
unsigned attempts_for(const struct remote *r, size_t ep, bool more);

/* What one failed attempt of a request got, for classify_failure(). */
struct attempt {
	CURLcode res;            /* curl's result */
	long status;             /* the last response's HTTP status, 0 if none */
	bool location;           /* it named where to go (ranges; curl follows for small GETs) */
	bool invalid;            /* it was not what was asked for: wrong range, short body */
	bool to_registry;        /* the request went to the registry's own origin */
	bool cdn;                /* it went to a URL a redirect gave us */
	const char *retry_after; /* its Retry-After header, or NULL */
	unsigned failed;         /* attempts in a row that failed before this one */
};

enum fetch_action {
	ACT_RETRY,               /* the same endpoint again, after delay_ms */
	ACT_AUTHENTICATE,        /* a 401 from the registry: answer its challenge, then again */
	ACT_REDIRECT,            /* go where the response said */
	ACT_RERESOLVE,           /* the CDN URL is gone: ask the registry for a fresh one */
	ACT_FAIL,                /* this endpoint cannot serve it: next_endpoint(), or give up */
};

struct verdict {
	enum fetch_action act;
	bool exhausted;          /* ACT_FAIL: transient, but no attempts were left */
	unsigned failed;         /* attempts in a row that failed, this one included if transient */
	uint64_t delay_ms;       /* ACT_RETRY: the backoff, or Retry-After if longer */
	uint64_t retry_after_ms; /* ACT_RETRY: what Retry-After asked for (capped), or 0 */
};

struct verdict classify_failure(const struct attempt *a, const struct retry_policy *rp,
				unsigned max_attempts, uint32_t rnd);
/*
 * Endpoint *ep of r failed for good: move *ep to the next one and return
 * true, remembering the failed one is down for a while and saying so with
 * why (NULL: it was said already, and the endpoint is not marked down);
 * false when *ep is the last (or r is NULL: a token request).
 */
bool next_endpoint(struct fetcher *f, const struct remote *r, size_t *ep, const char *why);

/* fetch_auth.c: the auth cache */
struct authent *auth_get(struct fetcher *f, struct remote *r, size_t ep);
void authent_free(struct authent *a);
/* 1: a request may go now; 0: wait for a token; negative: auth failed for good. */
int auth_ready(struct fetcher *f, struct authent *a, uint64_t now);
void auth_apply(struct fetcher *f, struct job *j, struct authent *a);
/* A 401: learn the challenge; 0 to retry, or a negative errno with msg. */
int auth_challenged(struct fetcher *f, struct authent *a, struct job *j,
		    bool already_retried, char *msg, size_t msglen);

/* fetch_job.c: one request, its curl callbacks and the staging of its body */
/* j->easy for url, with what every request sets. */
void new_easy(struct fetcher *f, struct job *j, const char *url, const struct remote_opts *o);
/* Set a curl option on j's handle; the first one refused fails the request (job_add). */
#define job_setopt(j, opt, val) \
	job_setopt_result((j), #opt, curl_easy_setopt((j)->easy, (opt), (val)))
void job_setopt_result(struct job *j, const char *name, CURLcode rc);
size_t on_mem_data(char *data, size_t size, size_t n, void *arg);
size_t on_range_data(char *data, size_t size, size_t n, void *arg);
/* Where the next body byte of a range request goes. */
uint64_t job_at(const struct job *j);
/* Everything received is written and reported. */
void job_sync(struct job *j);
/* After a round of curl_multi_perform: write the whole chunks that arrived. */
void flush_stages(struct fetcher *f);
void job_free(struct job *j);
void job_add(struct fetcher *f, struct job *j);
void job_remove(struct fetcher *f, struct job *j);

/* fetch_mem.c: small GETs into memory */
/* A new small request; its time budget (o->budget_s) starts now. */
struct memreq *memreq_new(const struct remote_opts *o);
void memreq_free(struct memreq *r);
/* fetcher_interrupt: fail every small request, in flight or waiting. */
void cancel_mem(struct fetcher *f);
void memreq_fail(struct memreq *r, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void start_mem(struct fetcher *f, struct memreq *r);
/* Start a request, or park it until its token arrives or its retry is due. */
void submit_mem(struct fetcher *f, struct memreq *r);
void finish_mem(struct fetcher *f, struct job *j, CURLcode res);

/* fetch_range.c: range requests of a blob being fetched */
struct retry *retry_new(uint64_t origin, uint64_t start, uint64_t end);
/* Queue a claimed range for another attempt; demand-split ranges go first. */
void queue_retry(struct source *s, struct retry *r, bool front);
/* Start a request for r (which it takes); the request, already added. */
struct job *start_range(struct fetcher *f, struct source *s, struct retry *r);
bool want_chunksums(struct fetcher *f, struct source *s);
void request_chunksums(struct fetcher *f, struct source *s);
/* Take a kicked blob on (the kick's reference becomes the source's). */
void source_add(struct fetcher *f, struct blob *b);
void source_free(struct fetcher *f, struct source *s);
/*
 * Move a source to its next endpoint (see next_endpoint), or past its
 * remote's last to the next remote that names the blob; false if none is left.
 */
bool source_next_endpoint(struct fetcher *f, struct source *s, const char *why);
/*
 * Drop the requests, in flight and queued, of blobs that no tag uses and no
 * reader waits for any more (blob_abandoned); their sources go when idle.
 */
void drop_abandoned(struct fetcher *f);
void finish_range(struct fetcher *f, struct job *j, CURLcode res);

/* fetch_sched.c: which request starts next; stalled and slow requests */
void schedule(struct fetcher *f);
void check_stalls(struct fetcher *f, uint64_t now);
/* Learn how fast a range request normally goes, from those that finish. */
void note_rate(struct fetcher *f, const struct job *j);
void check_slow(struct fetcher *f, uint64_t now);

/* fetch_hedge.c: stalls judged against the speed seen; hedged pairs of requests */
/* Learn how fast a connection delivers, from a range request that ends. */
void note_seen_rate(struct fetcher *f, const struct job *j);
/* Hedge or restart the requests that went silent for longer than their speed makes plausible. */
void check_hedges(struct fetcher *f, uint64_t now);
/* When check_hedges next has a request to judge; UINT64_MAX if none. */
uint64_t hedge_due(const struct fetcher *f);
/* Body bytes of j below this are written, or its pair's lead has them: drop them. */
uint64_t pair_skip_to(const struct job *j);
/* j got as far as its pair's lead: the lead's bytes are written, j writes on. */
void pair_take_lead(struct job *j);
/* j reached the end of its range: its pair's other request is dropped. */
void pair_done(struct fetcher *f, struct job *j);
/* j failed: its pair's other request carries on alone. False if j had none. */
bool pair_handover(struct job *j);

#endif
