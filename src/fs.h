/* fs.h - the FUSE filesystem: `blobfs mount`. */
#ifndef BLOBFS_FS_H
#define BLOBFS_FS_H

#include <stdbool.h>

#include "session.h"

/* When to fetch the rest of a blob in the background after it is first read. */
enum fs_background { BG_SEQUENTIAL, BG_ALWAYS, BG_NEVER };

struct fs_opts {
	bool foreground;        /* -f: do not detach */
	bool discover;          /* look tags up in the registry on a miss */
	enum fs_background background;
	unsigned miss_ttl_s;    /* how long a discovery miss is remembered */
	unsigned threads;       /* FUSE worker threads, at most */
	bool create_store;      /* make the store if it does not exist (else refuse) */
	bool passthrough;       /* complete blobs by FUSE passthrough where possible */
	bool others_remove;     /* -o allow_other_remove: others may remove tags */
	bool others_discover;   /* -o allow_other_discover: others' lookups may discover */
	char **fuse_argv;       /* argv for libfuse (argv[0] and -o options) */
	int fuse_argc;
};

void fs_opts_defaults(struct fs_opts *o);

/*
 * Mount the store at mountpoint and serve until unmounted or signalled.
 * Returns an exit status.
 */
int fs_mount(const struct session_opts *so, const struct fs_opts *fo,
	     const char *mountpoint);

#endif
