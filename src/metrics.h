/* metrics.h - a mount's read figures, counted on the read path, and their
 * renderings for monitoring (Prometheus text format, JSON). */
#ifndef BLOBFS_METRICS_H
#define BLOBFS_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

struct passthrough;

/* Upper bounds (seconds) of the read latency histogram's buckets; one more counts the rest. */
#define READ_LATENCY_BUCKETS 16
extern const double read_latency_bounds[READ_LATENCY_BUCKETS];

/* Counters of a mount's reads; every field is updated with relaxed atomics by the FUSE workers. */
struct read_stats {
	uint64_t reads;      /* read requests */
	uint64_t local;      /* answered at once from local bytes */
	uint64_t waited;     /* parked until the network brought the bytes */
	uint64_t errors;     /* answered with an error */
	uint64_t latency[READ_LATENCY_BUCKETS + 1];  /* answers per bucket, not cumulative */
	uint64_t latency_sum_ns;
	uint64_t opens;      /* files opened */
	uint64_t opens_passthrough;   /* of which the kernel reads without us (passthrough.c) */
	struct passthrough *passthrough;   /* its state, for the status file; not a counter */
};

/* When a read starts: a monotonic clock in nanoseconds. */
uint64_t read_clock(void);
/* A read that started at start has been answered: count it in the histogram. */
void read_observe(struct read_stats *rs, uint64_t start);
/* The histogram as the status file carries it: {"bounds_seconds", "counts", "sum_seconds"}. */
cJSON *read_latency_json(const struct read_stats *rs);

/*
 * Print, in the Prometheus text exposition format, the figures of every
 * mount in mounts (status documents as <store>/.blobfs/run/<pid>.json holds
 * them) and the store's size in bytes.
 */
void metrics_prometheus(FILE *out, const char *store, uint64_t store_bytes, const cJSON *mounts);

#endif
