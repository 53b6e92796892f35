/* cli.h - the commands; main.c parses options and calls these. */
#ifndef BLOBFS_CLI_H
#define BLOBFS_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "session.h"
#include "status.h"

/* Exit statuses. */
#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_SIGNAL 128     /* plus the signal: 130 after SIGINT, 143 after SIGTERM */

struct pull_args {
	bool lazy;       /* the manifest only; blobs arrive on first read */
	bool quiet;      /* no progress */
};

int cmd_pull(const struct session_opts *so, const struct pull_args *a,
	     char *const *names, int n);
int cmd_ls(const struct session_opts *so, char *const *names, int n);
int cmd_rm(const struct session_opts *so, char *const *names, int n);
int cmd_gc(const struct session_opts *so);
int cmd_verify(const struct session_opts *so, char *const *names, int n);

struct status_args {
	enum status_format format;
};
int cmd_status(const struct session_opts *so, const struct status_args *a);

struct fs_opts;
int cmd_mount(struct session_opts *so, struct fs_opts *fo, const char *mountpoint,
	      char *const *optv, int optc);
int cmd_umount(const char *mountpoint);
/*
 * The -o options blobfs knows, one per line for the bash completion:
 * "mount-option\tNAME\tVALUE[\tDEFAULT]", VALUE empty for a flag.
 */
void cmd_mount_describe_options(FILE *out);

#endif
