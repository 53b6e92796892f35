/* status.h - what a mount is doing, published in the store for `blobfs status`. */
#ifndef BLOBFS_STATUS_H
#define BLOBFS_STATUS_H

#include <stdint.h>

struct session;

/* Counters of a mount's reads; updated with atomics by the FUSE workers. */
struct read_stats {
	uint64_t reads;      /* read requests */
	uint64_t local;      /* answered at once from local bytes */
	uint64_t waited;     /* parked until the network brought the bytes */
	uint64_t errors;     /* answered with an error */
};

struct status_writer;

/* Write <store>/.blobfs/run/<pid>.json about once a second until stopped. */
struct status_writer *status_start(struct session *s, const char *mountpoint,
				   const struct read_stats *rs);
/* Stop and remove the file. */
void status_stop(struct status_writer *w);

/* `blobfs status`: print every live mount of the store; returns an exit status. */
int status_print(struct session *s);

#endif
