/*
 * cmd_mount.c - `blobfs mount` and `blobfs umount`.
 *
 * -o options are split with fuse_opt_parse: blobfs's own (documented in
 * blobfs(1)) go into the option structs, everything else is left for
 * libfuse, which refuses what it does not know.
 */
#define FUSE_USE_VERSION 312
#include "config.h"

#include <errno.h>
#include <fuse_opt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "conffile.h"
#include "fs.h"
#include "log.h"
#include "util.h"

struct mount_opts {
	int nodiscover, discover, insecure, no_chunksums, no_netrc;
	char *background, *cacert, *credentials, *store, *max_cache;
	unsigned read_timeout, connections, stall_timeout, retries, miss_ttl, threads;
	int fsname_given, subtype_given;
};

#define OPT(t, f) { t, offsetof(struct mount_opts, f), 1 }
#define VAL(t, f) { t, offsetof(struct mount_opts, f), 0 }

static const struct fuse_opt spec[] = {
	OPT("nodiscover", nodiscover),
	OPT("discover", discover),
	OPT("insecure", insecure),
	OPT("no_chunksums", no_chunksums),
	OPT("no_netrc", no_netrc),
	VAL("background=%s", background),
	VAL("cacert=%s", cacert),
	VAL("credentials=%s", credentials),
	VAL("store=%s", store),
	VAL("max_cache=%s", max_cache),
	VAL("read_timeout=%u", read_timeout),
	VAL("connections=%u", connections),
	VAL("stall_timeout=%u", stall_timeout),
	VAL("retries=%u", retries),
	VAL("miss_ttl=%u", miss_ttl),
	VAL("threads=%u", threads),
	FUSE_OPT_END
};

/* Note fsname/subtype so defaults are added only when not given; keep all else. */
static int keep(void *data, const char *arg, int key, struct fuse_args *out)
{
	struct mount_opts *mo = data;

	(void)key; (void)out;
	if (strncmp(arg, "fsname=", 7) == 0)
		mo->fsname_given = 1;
	if (strncmp(arg, "subtype=", 8) == 0)
		mo->subtype_given = 1;
	return 1;
}

static bool in_range(unsigned v, unsigned lo, unsigned hi, const char *what)
{
	if (v >= lo && v <= hi)
		return true;
	cli_error("-o %s wants a number from %u to %u", what, lo, hi);
	return false;
}

/* Run fusermount3 -u [-z] MOUNTPOINT; its exit status, or 127 if it cannot run. */
static int fusermount(const char *mountpoint, bool lazy)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return 127;
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", lazy ? "-uz" : "-u", "--", mountpoint,
		       (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
		return 127;
	return WEXITSTATUS(status);
}

/*
 * A daemon that died (kill -9, a crash) leaves its mount point answering
 * ENOTCONN; clear it so the new mount can take its place.
 */
static void clear_dead_mount(const char *mountpoint)
{
	struct stat st;

	if (stat(mountpoint, &st) == 0 || errno != ENOTCONN)
		return;
	log_warn("'%s' is a dead FUSE mount (its daemon is gone); unmounting it first", mountpoint);
	fusermount(mountpoint, true);
}

int cmd_mount(struct session_opts *so, struct fs_opts *fo, const char *mountpoint,
	      char *const *optv, int optc)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct mount_opts mo = { 0 };
	int ret;

	fuse_opt_add_arg(&args, "blobfs");
	for (int i = 0; i < optc; i++) {
		fuse_opt_add_arg(&args, "-o");
		fuse_opt_add_arg(&args, optv[i]);
	}
	if (fuse_opt_parse(&args, &mo, spec, keep) < 0) {
		fuse_opt_free_args(&args);
		return EXIT_USAGE;
	}
	if (mo.nodiscover)
		fo->discover = false;
	if (mo.discover)
		fo->discover = true;
	if (mo.insecure) {
		so->cli.insecure = true;
		so->cli.set |= CF_INSECURE;
	}
	if (mo.no_chunksums) {
		so->cli.chunksums = false;
		so->cli.set |= CF_CHUNKSUMS;
	}
	if (mo.no_netrc) {
		so->cli.netrc = false;
		so->cli.set |= CF_NETRC;
	}
	if (mo.cacert)
		conf_set_str(&so->cli, CF_CACERT, mo.cacert);
	if (mo.credentials)
		conf_set_str(&so->cli, CF_CREDENTIALS, mo.credentials);
	if (mo.store)
		conf_set_str(&so->cli, CF_STORE, mo.store);
	if (mo.background) {
		if (strcmp(mo.background, "sequential") == 0)
			fo->background = BG_SEQUENTIAL;
		else if (strcmp(mo.background, "always") == 0)
			fo->background = BG_ALWAYS;
		else if (strcmp(mo.background, "never") == 0)
			fo->background = BG_NEVER;
		else {
			cli_error("-o background wants sequential, always or never, not '%s'",
				  mo.background);
			ret = EXIT_USAGE;
			goto out;
		}
	}
	ret = EXIT_USAGE;
	if (mo.read_timeout) {
		if (!in_range(mo.read_timeout, 1, 86400, "read_timeout"))
			goto out;
		so->cli.read_timeout_s = mo.read_timeout;
		so->cli.set |= CF_READ_TIMEOUT;
	}
	if (mo.connections) {
		if (!in_range(mo.connections, 1, 256, "connections"))
			goto out;
		so->cli.connections = mo.connections;
		so->cli.set |= CF_CONNECTIONS;
	}
	if (mo.stall_timeout) {
		if (!in_range(mo.stall_timeout, 1, 3600, "stall_timeout"))
			goto out;
		so->cli.stall_timeout_s = mo.stall_timeout;
		so->cli.set |= CF_STALL_TIMEOUT;
	}
	if (mo.retries) {
		if (!in_range(mo.retries, 1, 100, "retries"))
			goto out;
		so->cli.retries = mo.retries;
		so->cli.set |= CF_RETRIES;
	}
	if (mo.max_cache) {
		uint64_t size;
		if (parse_size(mo.max_cache, &size) < 0) {
			cli_error("-o max_cache wants a size such as 200G, not '%s'", mo.max_cache);
			goto out;
		}
		so->cli.max_cache = size;
		so->cli.set |= CF_MAX_CACHE;
	}
	if (mo.miss_ttl)
		fo->miss_ttl_s = mo.miss_ttl;
	if (mo.threads) {
		if (!in_range(mo.threads, 2, 1024, "threads"))
			goto out;
		fo->threads = mo.threads;
	}
	if (!mo.fsname_given) {
		fuse_opt_add_arg(&args, "-o");
		fuse_opt_add_arg(&args, "fsname=blobfs");
	}
	if (!mo.subtype_given) {
		fuse_opt_add_arg(&args, "-o");
		fuse_opt_add_arg(&args, "subtype=blobfs");
	}
	fo->fuse_argc = args.argc;
	fo->fuse_argv = args.argv;   /* still ours: freed below */
	clear_dead_mount(mountpoint);
	ret = fs_mount(so, fo, mountpoint);
out:
	fuse_opt_free_args(&args);
	free(mo.background);
	free(mo.cacert);
	free(mo.credentials);
	free(mo.store);
	free(mo.max_cache);
	return ret;
}

int cmd_umount(const char *mountpoint)
{
	int status = fusermount(mountpoint, false);

	if (status == 0)
		return EXIT_OK;
	if (status == 127 && geteuid() == 0) {
		if (umount2(mountpoint, 0) == 0)
			return EXIT_OK;
		cli_error("cannot unmount '%s': %s", mountpoint, strerror(errno));
	} else if (status == 127) {
		cli_error("cannot unmount '%s': fusermount3 is not installed (Debian package 'fuse3')",
			  mountpoint);
	}
	return EXIT_FAIL;
}
