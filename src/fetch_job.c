/*
 * fetch_job.c - one HTTP request of the network thread: its curl handle,
 * the callbacks that take its headers and body, the checks a range response
 * must pass before a byte of it is written, and the staging of body bytes
 * into the blob's partial file (or, for the request behind in a hedged pair,
 * the dropping of bytes the other one has: fetch_hedge.c). What to do when
 * it ends is the caller's (fetch_mem.c, fetch_range.c).
 */
#include "config.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "blob.h"
#include "chunkmap.h"
#include "fetch_int.h"
#include "http.h"
#include "log.h"
#include "remote.h"
#include "url.h"
#include "util.h"

#define HEADER_MAX 8192
#define STAGE_SIZE (512u << 10)  /* body bytes a range request gathers per write */
#define STAGE_POOL 32            /* spare stage buffers kept for the next requests */
#define CURL_BUFFER (256L << 10) /* curl's receive buffer: fewer, larger write callbacks */
#define FLOW_GAP_MS 250          /* a longer gap between body bytes is a silence, not flow */

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

size_t on_mem_data(char *data, size_t size, size_t n, void *arg)
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
uint64_t job_at(const struct job *j)
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
void job_sync(struct job *j)
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

/*
 * Drop n body bytes at the request's position that are not its to write (a
 * hedged pair's: see fetch_hedge.c). Nothing is staged then: a request that
 * drops bytes has been written out when it lost the lead.
 */
static void skip_body(struct job *j, size_t n)
{
	j->pos += n;
	j->reported = j->pos;
	j->body_off += n;
	j->win_bytes += n;
	if (j->pos < blob_size(j->src->blob))
		j->next_boundary = chunkmap_end(j->geo, chunkmap_index(j->geo, j->pos));
}

/* Bytes in a row: their time counts toward the speed they flow at (fetch_hedge.c). */
static void note_flow(struct job *j, uint64_t now)
{
	if (j->first_byte_ms && now - j->last_io_ms < FLOW_GAP_MS)
		j->flow_ms += now - j->last_io_ms;
	j->last_io_ms = now;
}

/* The first body bytes: false (the request is bad) if the response is no answer. */
static bool first_bytes_ok(struct job *j)
{
	j->checked = true;
	j->first_byte_ms = now_ms();
	/* A pair shares one range: a whole blob from 0 is no answer for it. */
	return check_range_response(j) && !(j->twin && j->status == 200);
}

/* The request has all it asked for: true if a 200 streams on into the next range. */
static bool at_end_goes_on(struct job *j)
{
	if (j->status == 200 && j->src->no_ranges && stream_on(j))
		return true;
	/* Past what we asked for: a cut request, or a server sending extra. */
	if (!j->cut && j->status == 206)
		log_debug("the server sent more than the range asked for");
	j->done_early = true;
	return false;
}

/* Stage n body bytes that are the request's to write, and count them. */
static bool take_body(struct job *j, const char *data, size_t n)
{
	pair_take_lead(j);
	if (!stage_put(j, data, n))
		return false;
	j->body_off += n;
	j->win_bytes += n;
	stat_add(j->f, &j->f->stats.bytes, n);
	return true;
}

/* Place a 200 or 206 body's bytes: pass over, drop or take each run; false stops. */
static bool place_body(struct job *j, const char *data, size_t len)
{
	size_t done = 0;

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
			if (at_end_goes_on(j))
				continue;
			return false;
		}
		uint64_t skip = pair_skip_to(j);
		if (at < skip) {
			/* Its pair's lead has these bytes, or they were written: drop them. */
			size_t k = (size_t)MIN((uint64_t)avail, MIN(skip, j->end) - at);
			skip_body(j, k);
			done += k;
			continue;
		}
		size_t take = (size_t)MIN((uint64_t)avail, j->end - at);
		if (!take_body(j, data + done, take))
			return false;
		done += take;
	}
	return true;
}

size_t on_range_data(char *data, size_t size, size_t n, void *arg)
{
	struct job *j = arg;
	size_t len = size * n;

	note_flow(j, now_ms());
	if (j->werr)
		return 0;
	if (!j->checked && !first_bytes_ok(j)) {
		j->bad = true;
		return 0;
	}
	if (j->status != 206 && j->status != 200)
		return len;   /* an error body: read and dropped */
	j->judged = false;    /* it delivers again: a later silence is judged afresh */
	return place_body(j, data, len) ? len : 0;
}

/* After a round of curl_multi_perform: write the whole chunks that arrived. */
void flush_stages(struct fetcher *f)
{
	for (struct job *j = f->jobs; j; j = j->next)
		if (j->kind == JOB_RANGE && j->staged)
			stage_flush(j, false);
}

/*
 * ---- jobs: lifecycle ----
 *
 * Every curl_easy_setopt goes through job_setopt: an option libcurl refuses
 * (too old a libcurl, no memory) fails the request with a message that
 * names it, instead of sending a request that is not the one meant.
 */

void job_setopt_result(struct job *j, const char *name, CURLcode rc)
{
	if (rc == CURLE_OK || j->setopt_rc != CURLE_OK)
		return;
	j->setopt_rc = rc;
	snprintf(j->errbuf, sizeof(j->errbuf), "cannot set %s: %s%s", name,
		 curl_easy_strerror(rc), rc == CURLE_UNKNOWN_OPTION || rc == CURLE_NOT_BUILT_IN
		 ? " (is libcurl older than the one blobfs was built with?)" : "");
}

void new_easy(struct fetcher *f, struct job *j, const char *url, const struct remote_opts *o)
{
	j->easy = curl_easy_init();
	if (!j->easy) {
		log_error("cannot create a curl handle");
		abort();
	}
	job_setopt(j, CURLOPT_URL, url);
	job_setopt(j, CURLOPT_PRIVATE, j);
	job_setopt(j, CURLOPT_ERRORBUFFER, j->errbuf);
	job_setopt(j, CURLOPT_NOSIGNAL, 1L);
	job_setopt(j, CURLOPT_PROTOCOLS_STR, "http,https");
	job_setopt(j, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	job_setopt(j, CURLOPT_HEADERFUNCTION, on_header);
	job_setopt(j, CURLOPT_HEADERDATA, j);
	job_setopt(j, CURLOPT_CONNECTTIMEOUT, (long)o->connect_timeout_s);
	job_setopt(j, CURLOPT_USERAGENT, f->o.user_agent);
	job_setopt(j, CURLOPT_TCP_KEEPALIVE, 1L);
	job_setopt(j, CURLOPT_BUFFERSIZE, CURL_BUFFER);
	/*
	 * HTTP/1.1 for every request: ranges need one TCP connection each
	 * (start_range), and small ones gained nothing from HTTP/2 (a pull asks
	 * for manifests one after another), while an HTTP/2 connection could
	 * not carry the blob GETs that follow a manifest (bench/RESULTS.md).
	 */
	job_setopt(j, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	if (o->cacert)
		job_setopt(j, CURLOPT_CAINFO, o->cacert);
	j->url = xstrdup(url);
	j->content_length = -1;
	/* Stalls are ours to see (check_stalls): curl's low-speed test averages over
	 * seconds, so a burst followed by silence would go unnoticed for too long. */
	j->stall_ms = (uint64_t)o->stall_timeout_s * 1000;
}

void job_free(struct job *j)
{
	if (j->twin)
		j->twin->twin = NULL;
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

void job_add(struct fetcher *f, struct job *j)
{
	j->started_ms = j->last_io_ms = now_ms();
	if (j->setopt_rc != CURLE_OK) {
		/* Never sent: it fails as if curl had refused it (fetcher_main finishes it). */
		j->next = f->finished;
		f->finished = j;
		return;
	}
	j->next = f->jobs;
	f->jobs = j;
	curl_multi_add_handle(f->multi, j->easy);
	stat_add(f, &f->stats.requests, 1);
}

void job_remove(struct fetcher *f, struct job *j)
{
	struct job **pp;

	for (pp = &f->jobs; *pp && *pp != j; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = j->next;
	curl_multi_remove_handle(f->multi, j->easy);
}
