/* passthrough.h - FUSE passthrough: the kernel reads complete blobs from the store's files. */
#ifndef BLOBFS_PASSTHROUGH_H
#define BLOBFS_PASSTHROUGH_H

#include <stdbool.h>

struct blob;
struct fuse_conn_info;
struct fuse_file_info;
struct fuse_req;
struct passthrough;

/* enabled: not switched off (-o nopassthrough). */
struct passthrough *passthrough_new(bool enabled);
/* The session is over: the kernel has dropped the backing ids with it. */
void passthrough_free(struct passthrough *p);

/* At FUSE init: ask for passthrough where the kernel offers it and we may use it. */
void passthrough_init(struct passthrough *p, struct fuse_conn_info *conn);
/* "on", or why not (a constant string); NULL before init. Any thread. */
const char *passthrough_state(struct passthrough *p);

/*
 * An open of blob b is about to be answered: fill in fi for passthrough when
 * the blob is complete, else leave it to the daemon. Returns whether the
 * open is in passthrough; the caller passes that to passthrough_release()
 * once, when the kernel releases the file or if the open reply failed (req
 * NULL then).
 */
bool passthrough_open(struct passthrough *p, struct fuse_req *req, struct blob *b,
		      struct fuse_file_info *fi);
void passthrough_release(struct passthrough *p, struct fuse_req *req, struct blob *b,
			 bool in_passthrough);

#endif
