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

/*
 * blobfs's -o options. Settings keep their text and go through conf_set(),
 * which checks them as the configuration file and the command line are
 * checked; the rest are the mount's own.
 */
struct mount_opts {
	int nodiscover, discover, insecure, no_chunksums, no_netrc;
	char *background;
	unsigned miss_ttl, threads;
	char *settings[9];
	int fsname_given, subtype_given;
};

/* The settings, by their -o names (the configuration keys, with '_'). */
static const char *const setting_names[] = {
	"cacert", "credentials", "store", "max_cache", "read_timeout", "connections",
	"stall_timeout", "retries", "request_size",
};

#define OPT(t, f) { t, offsetof(struct mount_opts, f), 1 }
#define VAL(t, f) { t, offsetof(struct mount_opts, f), 0 }
#define SETTING(t, i) { t "=%s", offsetof(struct mount_opts, settings) + (i) * sizeof(char *), 0 }

static const struct fuse_opt spec[] = {
	OPT("nodiscover", nodiscover),
	OPT("discover", discover),
	OPT("insecure", insecure),
	OPT("no_chunksums", no_chunksums),
	OPT("no_netrc", no_netrc),
	VAL("background=%s", background),
	VAL("miss_ttl=%u", miss_ttl),
	VAL("threads=%u", threads),
	SETTING("cacert", 0),
	SETTING("credentials", 1),
	SETTING("store", 2),
	SETTING("max_cache", 3),
	SETTING("read_timeout", 4),
	SETTING("connections", 5),
	SETTING("stall_timeout", 6),
	SETTING("retries", 7),
	SETTING("request_size", 8),
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
	char err[256];
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
	if ((mo.insecure && conf_set(&so->cli, "insecure", "yes", "-o insecure", err, sizeof(err))) ||
	    (mo.no_chunksums && conf_set(&so->cli, "chunksums", "no", "-o no_chunksums", err, sizeof(err))) ||
	    (mo.no_netrc && conf_set(&so->cli, "netrc", "no", "-o no_netrc", err, sizeof(err))))
		goto bad;
	for (size_t i = 0; i < ARRAY_SIZE(setting_names); i++) {
		char label[64];
		if (!mo.settings[i])
			continue;
		snprintf(label, sizeof(label), "-o %s", setting_names[i]);
		if (conf_set(&so->cli, setting_names[i], mo.settings[i], label, err, sizeof(err)) < 0)
			goto bad;
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
	goto out;
bad:
	cli_error("%s", err);
out:
	fuse_opt_free_args(&args);
	free(mo.background);
	for (size_t i = 0; i < ARRAY_SIZE(mo.settings); i++)
		free(mo.settings[i]);
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
