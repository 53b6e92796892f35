/*
 * metrics.c - what a mount measures for monitoring, and how it is shown.
 *
 * The read path pays two relaxed atomic adds and a vDSO clock read per read
 * for a latency histogram with fixed buckets: no lock, no allocation. The
 * status writer (status.c) copies the counters into the mount's status file
 * once a second; `blobfs status --prometheus` renders those files here in the
 * Prometheus text exposition format, one family per figure, one sample per
 * mount (labels: store and mountpoint), table-driven so that a figure is one
 * line. Counters end in _total, sizes in _bytes, times in _seconds, as the
 * Prometheus naming conventions ask; `promtool check metrics` finds nothing.
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
#include "util.h"

const double read_latency_bounds[READ_LATENCY_BUCKETS] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
	0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

uint64_t read_clock(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void read_observe(struct read_stats *rs, uint64_t start)
{
	uint64_t ns = read_clock() - start;
	double s = (double)ns / 1e9;
	unsigned i = 0;

	while (i < READ_LATENCY_BUCKETS && s > read_latency_bounds[i])
		i++;
	__atomic_add_fetch(&rs->latency[i], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&rs->latency_sum_ns, ns, __ATOMIC_RELAXED);
}

cJSON *read_latency_json(const struct read_stats *rs)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *bounds = cJSON_AddArrayToObject(o, "bounds_seconds");
	cJSON *counts = cJSON_AddArrayToObject(o, "counts");

	for (unsigned i = 0; i <= READ_LATENCY_BUCKETS; i++) {
		if (i < READ_LATENCY_BUCKETS)
			cJSON_AddItemToArray(bounds, cJSON_CreateNumber(read_latency_bounds[i]));
		uint64_t n = __atomic_load_n(&rs->latency[i], __ATOMIC_RELAXED);
		cJSON_AddItemToArray(counts, cJSON_CreateNumber((double)n));
	}
	cJSON_AddNumberToObject(o, "sum_seconds",
				(double)__atomic_load_n(&rs->latency_sum_ns, __ATOMIC_RELAXED) / 1e9);
	return o;
}

/* ---- Prometheus text format ---- */

enum family_type { COUNTER, GAUGE };

static const struct family {
	const char *name;
	enum family_type type;
	const char *key;          /* in the status document */
	const char *help;
} families[] = {
	{ "blobfs_reads_total", COUNTER, "reads", "Read requests on the mount's files." },
	{ "blobfs_reads_local_total", COUNTER, "reads_local",
	  "Reads answered at once from local data." },
	{ "blobfs_reads_waited_total", COUNTER, "reads_waited",
	  "Reads that waited for the network to bring their bytes." },
	{ "blobfs_read_errors_total", COUNTER, "read_errors", "Reads answered with an error." },
	{ "blobfs_opens_total", COUNTER, "opens", "Files opened on the mount." },
	{ "blobfs_opens_passthrough_total", COUNTER, "opens_passthrough",
	  "Opens the kernel serves by FUSE passthrough, without the daemon." },
	{ "blobfs_fetched_bytes_total", COUNTER, "fetched_bytes",
	  "Blob bytes received from registries, mirrors and CDNs." },
	{ "blobfs_http_requests_total", COUNTER, "requests", "HTTP requests started." },
	{ "blobfs_http_retries_total", COUNTER, "retries",
	  "Ranges asked for again after a failed attempt." },
	{ "blobfs_http_failures_total", COUNTER, "failed_attempts", "HTTP attempts that failed." },
	{ "blobfs_http_hedges_total", COUNTER, "hedges",
	  "Stalled ranges asked for again while the stalled request stayed open." },
	{ "blobfs_range_requests_in_flight", GAUGE, "requests_in_flight",
	  "Range requests in flight." },
	{ "blobfs_blobs_in_flight", GAUGE, "blobs_in_flight", "Blobs being fetched." },
	{ "blobfs_store_quota_bytes", GAUGE, "max_cache",
	  "The most bytes of complete blobs the mount keeps in the store (absent: no quota)." },
	{ "blobfs_start_time_seconds", GAUGE, "started",
	  "When the mount started, in seconds since the epoch." },
	{ "blobfs_status_updated_timestamp_seconds", GAUGE, "updated",
	  "When the mount last wrote these figures, in seconds since the epoch." },
};

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* A label value, escaped as the text format wants: backslash, quote, newline. */
static void put_label(FILE *out, const char *name, const char *value)
{
	fprintf(out, "%s=\"", name);
	for (const char *p = value; *p; p++) {
		if (*p == '\\' || *p == '"')
			fputc('\\', out);
		if (*p == '\n')
			fputs("\\n", out);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

/* {store="...",mountpoint="..."[,le="..."]} */
static void put_labels(FILE *out, const char *store, const cJSON *m, const char *le)
{
	const cJSON *mp = cJSON_GetObjectItemCaseSensitive(m, "mountpoint");

	fputc('{', out);
	put_label(out, "store", store);
	fputc(',', out);
	put_label(out, "mountpoint", cJSON_IsString(mp) ? mp->valuestring : "");
	if (le) {
		fputc(',', out);
		put_label(out, "le", le);
	}
	fputc('}', out);
}

static void put_header(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_histogram(FILE *out, const char *store, const cJSON *mounts)
{
	const char *name = "blobfs_read_duration_seconds";
	const cJSON *m;
	char le[32];

	put_header(out, name, "histogram", "How long reads took to be answered.");
	cJSON_ArrayForEach(m, mounts) {
		const cJSON *h = cJSON_GetObjectItemCaseSensitive(m, "read_latency");
		const cJSON *counts = cJSON_GetObjectItemCaseSensitive(h, "counts");
		double total = 0;
		for (int i = 0; i <= READ_LATENCY_BUCKETS; i++) {
			const cJSON *c = cJSON_GetArrayItem(counts, i);
			total += cJSON_IsNumber(c) ? c->valuedouble : 0;
			if (i < READ_LATENCY_BUCKETS)
				snprintf(le, sizeof(le), "%g", read_latency_bounds[i]);
			fprintf(out, "%s_bucket", name);
			put_labels(out, store, m, i < READ_LATENCY_BUCKETS ? le : "+Inf");
			fprintf(out, " %.0f\n", total);
		}
		fprintf(out, "%s_sum", name);
		put_labels(out, store, m, NULL);
		fprintf(out, " %.9g\n%s_count", num(h, "sum_seconds"), name);
		put_labels(out, store, m, NULL);
		fprintf(out, " %.0f\n", total);
	}
}

void metrics_prometheus(FILE *out, const char *store, uint64_t store_bytes, const cJSON *mounts)
{
	const cJSON *m;

	for (size_t i = 0; i < ARRAY_SIZE(families); i++) {
		const struct family *f = &families[i];
		bool any = false;
		cJSON_ArrayForEach(m, mounts) {
			if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(m, f->key)))
				continue;   /* not measured (e.g. no quota) */
			if (!any)
				put_header(out, f->name, f->type == COUNTER ? "counter" : "gauge", f->help);
			any = true;
			fputs(f->name, out);
			put_labels(out, store, m, NULL);
			fprintf(out, " %.0f\n", num(m, f->key));
		}
	}
	if (cJSON_GetArraySize(mounts) > 0)
		put_histogram(out, store, mounts);
	put_header(out, "blobfs_store_bytes", "gauge",
		   "Disk space the store's blobs take, complete and partial.");
	fputs("blobfs_store_bytes{", out);
	put_label(out, "store", store);
	fprintf(out, "} %" PRIu64 "\n", store_bytes);
}
