/*
 * main.c - the command line, and nothing else: options are parsed with
 * getopt_long into the option structs of the library, and the command runs.
 * Options may come before or after the command (GNU getopt permutes), and
 * an option that has no meaning for the command is refused by name.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "conffile.h"
#include "fs.h"
#include "log.h"
#include "util.h"

enum opt {
	OPT_STORE = 's', OPT_DEBUG = 'd', OPT_QUIET = 'q', OPT_HELP = 'h', OPT_VERSION = 'V',
	OPT_LAZY = 256, OPT_INSECURE, OPT_CACERT, OPT_CREDENTIALS, OPT_CONNECTIONS,
	OPT_CHUNK_SIZE, OPT_STALL_TIMEOUT, OPT_RETRIES, OPT_NO_CHUNKSUMS, OPT_NO_NETRC,
	OPT_READ_TIMEOUT, OPT_REQUEST_SIZE, OPT_MAX_CACHE, OPT_FOREGROUND = 'f', OPT_OPTION = 'o',
};

static const struct option longopts[] = {
	{ "store", required_argument, NULL, OPT_STORE },
	{ "debug", no_argument, NULL, OPT_DEBUG },
	{ "quiet", no_argument, NULL, OPT_QUIET },
	{ "help", no_argument, NULL, OPT_HELP },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ "lazy", no_argument, NULL, OPT_LAZY },
	{ "insecure", no_argument, NULL, OPT_INSECURE },
	{ "cacert", required_argument, NULL, OPT_CACERT },
	{ "credentials", required_argument, NULL, OPT_CREDENTIALS },
	{ "no-netrc", no_argument, NULL, OPT_NO_NETRC },
	{ "connections", required_argument, NULL, OPT_CONNECTIONS },
	{ "chunk-size", required_argument, NULL, OPT_CHUNK_SIZE },
	{ "request-size", required_argument, NULL, OPT_REQUEST_SIZE },
	{ "stall-timeout", required_argument, NULL, OPT_STALL_TIMEOUT },
	{ "read-timeout", required_argument, NULL, OPT_READ_TIMEOUT },
	{ "retries", required_argument, NULL, OPT_RETRIES },
	{ "no-chunksums", no_argument, NULL, OPT_NO_CHUNKSUMS },
	{ "max-cache", required_argument, NULL, OPT_MAX_CACHE },
	{ "foreground", no_argument, NULL, OPT_FOREGROUND },
	{ "option", required_argument, NULL, OPT_OPTION },
	{ NULL, 0, NULL, 0 },
};

/* Options that configure the network: only commands that fetch accept them. */
static const int net_opts[] = {
	OPT_INSECURE, OPT_CACERT, OPT_CREDENTIALS, OPT_NO_NETRC, OPT_CONNECTIONS,
	OPT_CHUNK_SIZE, OPT_REQUEST_SIZE, OPT_STALL_TIMEOUT, OPT_READ_TIMEOUT, OPT_RETRIES,
	OPT_NO_CHUNKSUMS,
};

static const char usage_text[] =
	"usage: blobfs [--store DIR] [--debug] COMMAND [OPTIONS] [ARGS]\n"
	"\n"
	"A lazy, verifying filesystem for model registries (Ollama, OCI).\n"
	"\n"
	"commands:\n"
	"  pull [--lazy] NAME...   fetch a model's manifest and blobs into the store\n"
	"  ls [NAME...]            list models with their size and how much is local\n"
	"  rm NAME...              remove models and the blobs only they use\n"
	"  gc                      delete unreferenced blobs and stale partial downloads\n"
	"  verify [NAME...]        hash complete blobs again and report each\n"
	"  status                  what each mount of the store is doing\n"
	"  mount [-f] [-o OPT,...] MOUNTPOINT\n"
	"                          mount the store; files fill in on first read\n"
	"  umount MOUNTPOINT       unmount\n"
	"\n"
	"names: [http[s]://][host/][namespace/]name[:tag]; host defaults to\n"
	"registry.ollama.ai, namespace to library, tag to latest.\n"
	"\n"
	"options:\n"
	"  -s, --store DIR         the store (default $BLOBFS_STORE, else\n"
	"                          ${XDG_DATA_HOME:-~/.local/share}/blobfs)\n"
	"  -d, --debug             log every request\n"
	"  -q, --quiet             no progress output\n"
	"      --lazy              pull: store the manifest only; blobs come on first read\n"
	"      --insecure          plain HTTP to registries named without a scheme\n"
	"      --cacert FILE       trust the CAs in FILE for HTTPS\n"
	"      --credentials FILE  netrc-syntax credentials (also read: ~/.netrc)\n"
	"      --no-netrc          do not read ~/.netrc\n"
	"      --connections N     range requests in flight (default 16)\n"
	"      --chunk-size SIZE   chunk map granularity (default: by blob size, >= 16K)\n"
	"      --request-size SIZE largest range asked for in one request (default 16M)\n"
	"      --stall-timeout SEC retry a request that receives nothing this long (20)\n"
	"      --read-timeout SEC  fail a read that waits longer than this (60)\n"
	"      --retries N         attempts per range before giving up (6)\n"
	"      --no-chunksums      do not ask registries for per-chunk checksums\n"
	"      --max-cache SIZE    pull, mount, gc: keep complete blobs within SIZE,\n"
	"                          evicting the least recently used\n"
	"  -f, --foreground        mount: stay in the foreground, log to stderr\n"
	"  -o, --option OPT,...    mount: FUSE and blobfs mount options (see blobfs(1))\n"
	"  -h, --help              this help\n"
	"  -V, --version           the version\n"
	"\n"
	"See blobfs(1).\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "blobfs: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'blobfs --help'.\n");
	return EXIT_USAGE;
}

static const char *opt_name(int c);

/* Set a setting from its option, checked as the configuration file checks it. */
static int set_option(struct conf *cli, const char *key, const char *value)
{
	char label[64], err[256];

	snprintf(label, sizeof(label), "--%s", key);
	if (conf_set(cli, key, value, label, err, sizeof(err)) < 0) {
		usage_error("%s", err);
		return -1;
	}
	return 0;
}

static const char *opt_name(int c)
{
	for (const struct option *o = longopts; o->name; o++)
		if (o->val == c)
			return o->name;
	return "?";
}

static int dispatch(const char *cmd, char *const *args, int nargs, struct session_opts *so,
		    struct pull_args *pa, struct fs_opts *fo, char **mopts, int nmopts);

/*
 * Parse the options into so, pa, fo and mopts. Returns PARSED with *cmd_at at
 * the command's index in argv, or the exit code to leave with; the caller
 * releases so either way.
 */
#define PARSED (-1)

static int parse(int argc, char **argv, struct session_opts *so, struct pull_args *pa,
		 struct fs_opts *fo, char **mopts, int *nmopts_out, int maxmopts, int *cmd_at)
{
	bool seen[512] = { false };
	int nmopts = 0;
	int c;

	opterr = 0;    /* our own messages, naming the option */
	while ((c = getopt_long(argc, argv, ":s:dqhVfo:", longopts, NULL)) != -1) {
		if (c >= 0 && c < (int)ARRAY_SIZE(seen))
			seen[c] = true;
		switch (c) {
		case OPT_DEBUG:
			log_set_level(LOG_LVL_DEBUG);
			break;
		case OPT_QUIET:
			pa->quiet = true;
			break;
		case OPT_HELP:
			fputs(usage_text, stdout);
			return EXIT_OK;
		case OPT_VERSION:
			printf("blobfs %s\n", PACKAGE_VERSION);
			return EXIT_OK;
		case OPT_LAZY:
			pa->lazy = true;
			break;
		case OPT_STORE:
		case OPT_CACERT:
		case OPT_CREDENTIALS:
		case OPT_CONNECTIONS:
		case OPT_CHUNK_SIZE:
		case OPT_REQUEST_SIZE:
		case OPT_STALL_TIMEOUT:
		case OPT_READ_TIMEOUT:
		case OPT_RETRIES:
		case OPT_MAX_CACHE:
			/* Settings: the option has the name of the configuration key. */
			if (set_option(&so->cli, opt_name(c), optarg) < 0)
				return EXIT_USAGE;
			break;
		case OPT_INSECURE:
			set_option(&so->cli, "insecure", "yes");
			break;
		case OPT_NO_NETRC:
			set_option(&so->cli, "netrc", "no");
			break;
		case OPT_NO_CHUNKSUMS:
			set_option(&so->cli, "chunksums", "no");
			break;
		case OPT_FOREGROUND:
			fo->foreground = true;
			break;
		case OPT_OPTION:
			if (nmopts == maxmopts)
				return usage_error("%s", "too many -o options");
			mopts[nmopts++] = optarg;
			break;
		case ':':
			return usage_error("option '%s' needs a value", argv[optind - 1]);
		default:
			return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return usage_error("%s", "no command given");

	const char *cmd = argv[optind];
	bool fetches = strcmp(cmd, "pull") == 0 || strcmp(cmd, "mount") == 0;

	if ((seen[OPT_FOREGROUND] || seen[OPT_OPTION]) && strcmp(cmd, "mount") != 0)
		return usage_error("%s", "-f and -o apply to 'mount' only");

	if (!fetches) {
		for (size_t i = 0; i < ARRAY_SIZE(net_opts); i++)
			if (seen[net_opts[i]])
				return usage_error("--%s does not apply here", opt_name(net_opts[i]));
	}
	if (seen[OPT_MAX_CACHE] && !fetches && strcmp(cmd, "gc") != 0)
		return usage_error("%s", "--max-cache applies to pull, mount and gc");
	if (seen[OPT_LAZY] && strcmp(cmd, "pull") != 0)
		return usage_error("%s", "--lazy applies to 'pull' only");
	*nmopts_out = nmopts;
	*cmd_at = optind;
	return PARSED;
}

int main(int argc, char **argv)
{
	struct session_opts so;
	struct pull_args pa = { 0 };
	struct fs_opts fo;
	static char *mopts[256];
	int nmopts = 0, cmd = 0;
	char err[512];

	session_opts_init(&so);
	fs_opts_defaults(&fo);
	int ret = parse(argc, argv, &so, &pa, &fo, mopts, &nmopts, (int)ARRAY_SIZE(mopts), &cmd);
	if (ret == PARSED) {
		if (session_opts_load(&so, err, sizeof(err)) < 0) {
			fprintf(stderr, "blobfs: error: bad configuration: %s\n", err);
			ret = EXIT_FAIL;
		} else {
			ret = dispatch(argv[cmd], argv + cmd + 1, argc - cmd - 1, &so, &pa, &fo,
				       mopts, nmopts);
		}
	}
	session_opts_release(&so);
	return ret;
}

/* Run the command, its options parsed. */
static int dispatch(const char *cmd, char *const *args, int nargs, struct session_opts *so,
		    struct pull_args *pa, struct fs_opts *fo, char **mopts, int nmopts)
{
	if (strcmp(cmd, "pull") == 0) {
		if (nargs == 0)
			return usage_error("%s", "pull: which model? (blobfs pull NAME)");
		return cmd_pull(so, pa, args, nargs);
	}
	if (strcmp(cmd, "ls") == 0 || strcmp(cmd, "list") == 0)
		return cmd_ls(so, args, nargs);
	if (strcmp(cmd, "rm") == 0) {
		if (nargs == 0)
			return usage_error("%s", "rm: which model? (blobfs rm NAME)");
		return cmd_rm(so, args, nargs);
	}
	if (strcmp(cmd, "gc") == 0) {
		if (nargs)
			return usage_error("gc takes no arguments, not '%s'", args[0]);
		return cmd_gc(so);
	}
	if (strcmp(cmd, "verify") == 0)
		return cmd_verify(so, args, nargs);
	if (strcmp(cmd, "status") == 0) {
		if (nargs)
			return usage_error("status takes no arguments, not '%s'", args[0]);
		return cmd_status(so);
	}
	if (strcmp(cmd, "mount") == 0) {
		if (nargs != 1)
			return usage_error("%s", "mount: one mount point, please (blobfs mount DIR)");
		return cmd_mount(so, fo, args[0], mopts, nmopts);
	}
	if (strcmp(cmd, "umount") == 0 || strcmp(cmd, "unmount") == 0) {
		if (nargs != 1)
			return usage_error("%s", "umount: which mount point? (blobfs umount DIR)");
		return cmd_umount(args[0]);
	}
	return usage_error("unknown command '%s'", cmd);
}
