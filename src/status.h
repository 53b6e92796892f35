/* status.h - what a mount is doing, published in the store for `blobfs status`. */
#ifndef BLOBFS_STATUS_H
#define BLOBFS_STATUS_H

#include <stdint.h>

#include "metrics.h"     /* struct read_stats */

struct session;

struct status_writer;

/* Write <store>/.blobfs/run/<pid>.json about once a second until stopped. */
struct status_writer *status_start(struct session *s, const char *mountpoint,
				   const struct read_stats *rs);
/* Stop and remove the file. */
void status_stop(struct status_writer *w);

enum status_format {
	STATUS_TEXT,         /* for people */
	STATUS_JSON,         /* {"store", "store_bytes", "mounts": [status documents]} */
	STATUS_PROMETHEUS,   /* the Prometheus text exposition format */
};

/* `blobfs status`: print every live mount of the store; returns an exit status. */
int status_print(struct session *s, enum status_format format);

#endif
