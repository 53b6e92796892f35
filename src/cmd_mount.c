/*
 * cmd_mount.c - `blobfs mount` and `blobfs umount`.
 *
 * -o options are split with fuse_opt_parse: blobfs's own (documented in
 * blobfs(1)) -- the settings that are mount options (settings.def) and the
 * mount's own (mount_options[] below) -- go into the option structs,
 * everything else is left for libfuse, which refuses what it does not know.
 *
 * allow_other brings default_permissions: other users are then held to
 * the modes the mount shows, as on any filesystem, rather than acting with
 * the daemon's rights. Removal and discovery stay the owner's unless
 * allow_other_remove / allow_other_discover open them (fs.c).
 */
#define FUSE_USE_VERSION 312
#include "config.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <fuse_opt.h>
#include <mntent.h>
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
 * The mount's own -o options, besides the settings (settings.def) that are
 * mount options too. Each sets a member of struct fs_opts: a flag its value,
 * a choice the index of the word given, a number anything in its range.
 */
enum mo_kind { MO_FLAG, MO_CHOICE, MO_NUMBER };

struct mount_option {
	const char *name;
	enum mo_kind kind;
	size_t offset;             /* of the member of struct fs_opts */
	int flag;                  /* MO_FLAG: the value it sets (a bool) */
	const char *values;        /* MO_CHOICE: "a|b|c", index = value; MO_NUMBER: metavar */
	unsigned lo, hi;           /* MO_NUMBER: the range */
};

static const struct mount_option mount_options[] = {
	{ "nodiscover", MO_FLAG, offsetof(struct fs_opts, discover), false, NULL, 0, 0 },
	{ "discover", MO_FLAG, offsetof(struct fs_opts, discover), true, NULL, 0, 0 },
	{ "create_store", MO_FLAG, offsetof(struct fs_opts, create_store), true, NULL, 0, 0 },
	{ "nopassthrough", MO_FLAG, offsetof(struct fs_opts, passthrough), false, NULL, 0, 0 },
	{ "allow_other_remove", MO_FLAG, offsetof(struct fs_opts, others_remove), true, NULL, 0, 0 },
	{ "allow_other_discover", MO_FLAG, offsetof(struct fs_opts, others_discover), true, NULL,
	  0, 0 },
	{ "background", MO_CHOICE, offsetof(struct fs_opts, background), 0,
	  "sequential|always|never", 0, 0 },
	{ "miss_ttl", MO_NUMBER, offsetof(struct fs_opts, miss_ttl_s), 0, "SEC", 0, 86400 },
	{ "threads", MO_NUMBER, offsetof(struct fs_opts, threads), 0, "N", 2, 1024 },
};

#define NMO ARRAY_SIZE(mount_options)

/* What fuse_opt_parse fills in: the text of each option given (flags: 1). */
struct mount_opts {
	char *own[NMO];
	int own_flag[NMO];
	char *setting[SETTING_COUNT];
	int setting_flag[SETTING_COUNT];
	int fsname_given, subtype_given, allow_other, default_permissions;
};

/* A fuse_opt spec for every blobfs option; the templates are allocated. */
static struct fuse_opt *make_spec(void)
{
	struct fuse_opt *spec = xcalloc(NMO + SETTING_COUNT + 1, sizeof(*spec));
	size_t n = 0;
	char name[48];

	for (size_t i = 0; i < NMO; i++) {
		bool flag = mount_options[i].kind == MO_FLAG;
		spec[n++] = (struct fuse_opt){
			xasprintf("%s%s", mount_options[i].name, flag ? "" : "=%s"),
			flag ? offsetof(struct mount_opts, own_flag[i]) : offsetof(struct mount_opts, own[i]),
			flag };
	}
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const struct setting *s = &settings[i];
		bool flag = s->type == T_BOOL;
		if (!(s->opts & OPT_MOUNT))
			continue;
		setting_option(s, true, name, sizeof(name));
		spec[n++] = (struct fuse_opt){
			xasprintf("%s%s", name, flag ? "" : "=%s"),
			flag ? offsetof(struct mount_opts, setting_flag[i])
			     : offsetof(struct mount_opts, setting[i]),
			flag };
	}
	return spec;
}

static void free_spec(struct fuse_opt *spec)
{
	for (struct fuse_opt *o = spec; o->templ; o++)
		free((char *)o->templ);
	free(spec);
}

void cmd_mount_describe_options(FILE *out)
{
	struct fs_opts dflt;
	char name[48];

	fs_opts_defaults(&dflt);
	for (size_t i = 0; i < NMO; i++) {
		const struct mount_option *m = &mount_options[i];
		fprintf(out, "mount-option\t%s\t%s", m->name, m->values ? m->values : "");
		if (m->kind == MO_NUMBER)
			fprintf(out, "\t%u", *(const unsigned *)((const char *)&dflt + m->offset));
		fputc('\n', out);
	}
	for (size_t i = 0; i < SETTING_COUNT; i++)
		if (settings[i].opts & OPT_MOUNT)
			fprintf(out, "mount-option\t%s\t%s\n",
				setting_option(&settings[i], true, name, sizeof(name)),
				settings[i].type == T_BOOL ? "" : settings[i].metavar);
}

/* "a|b|c" as "a, b or c". */
static void choice_words(const char *values, char *buf, size_t len)
{
	const char *last = strrchr(values, '|');
	size_t n = 0;

	for (const char *p = values; *p && n + 5 < len; p++) {
		if (*p != '|')
			buf[n++] = *p;
		else if (p == last)
			n += (size_t)snprintf(buf + n, len - n, " or ");
		else
			n += (size_t)snprintf(buf + n, len - n, ", ");
	}
	buf[n] = '\0';
}

/* Apply the mount's own options to fo; false (with a message) if one is bad. */
static bool apply_own(const struct mount_opts *mo, struct fs_opts *fo)
{
	for (size_t i = 0; i < NMO; i++) {
		const struct mount_option *m = &mount_options[i];
		void *member = (char *)fo + m->offset;
		const char *v = mo->own[i];
		uint64_t n;

		if (m->kind == MO_FLAG && mo->own_flag[i])
			*(bool *)member = m->flag;
		if (!v)
			continue;
		if (m->kind == MO_NUMBER) {
			if (!parse_u64(v, strlen(v), &n) || n < m->lo || n > m->hi) {
				log_error("-o %s wants a number from %u to %u, not '%s'", m->name, m->lo,
					  m->hi, v);
				return false;
			}
			*(unsigned *)member = (unsigned)n;
		} else if (m->kind == MO_CHOICE) {
			const char *p = m->values;
			int index = 0;
			size_t vl = strlen(v);
			while (!(strncmp(p, v, vl) == 0 && (p[vl] == '|' || !p[vl]))) {
				p = strchr(p, '|');
				if (!p) {
					char words[96];
					choice_words(m->values, words, sizeof(words));
					log_error("-o %s wants %s, not '%s'", m->name, words, v);
					return false;
				}
				p++;
				index++;
			}
			*(int *)member = index;
		}
	}
	return true;
}

/*
 * Does "-o store=" name another store than --store? mount.blobfs gives the
 * fstab source as --store and as fsname=, so /proc/mounts would name one store
 * while the other is served.
 */
static bool stores_differ(const struct conf *cli, const char *v)
{
	size_t a, b;

	if (!(cli->set & CF_STORE) || !cli->store)
		return false;
	for (a = strlen(cli->store); a > 1 && cli->store[a - 1] == '/'; a--)
		;
	for (b = strlen(v); b > 1 && v[b - 1] == '/'; b--)
		;
	return a != b || strncmp(cli->store, v, a) != 0;
}

/* Apply the settings given as -o options to the command line's layer. */
static bool apply_settings(const struct mount_opts *mo, struct conf *cli)
{
	char label[64], name[48], err[256];

	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const struct setting *s = &settings[i];
		const char *v = mo->setting[i];
		if (s->type == T_BOOL && mo->setting_flag[i])
			v = s->dflt ? "no" : "yes";
		if (!v)
			continue;
		if (s->bit == CF_STORE && stores_differ(cli, v)) {
			log_error("--store '%s' and -o store='%s' name two stores; give one", cli->store,
				  v);
			return false;
		}
		snprintf(label, sizeof(label), "-o %s", setting_option(s, true, name, sizeof(name)));
		if (conf_set(cli, s->key, v, label, err, sizeof(err)) < 0) {
			log_error("%s", err);
			return false;
		}
	}
	return true;
}

/*
 * What blobfs does not know goes to libfuse, which refuses what it does not
 * know either -- but only once the store is open. Ask it first, so an unknown
 * option is a usage error (status 2) that touches nothing.
 */
static bool fuse_knows(const struct fuse_args *args)
{
	struct fuse_args copy = FUSE_ARGS_INIT(0, NULL);
	struct fuse_lowlevel_ops none = { 0 };
	struct fuse_session *probe;

	for (int i = 0; i < args->argc; i++)
		fuse_opt_add_arg(&copy, args->argv[i]);
	probe = fuse_session_new(&copy, &none, sizeof(none), NULL);
	fuse_opt_free_args(&copy);
	if (!probe) {
		log_error("%s", "bad mount options (blobfs's are in blobfs(1), FUSE's in fuse(8))");
		return false;
	}
	fuse_session_destroy(probe);
	return true;
}

/* Note the libfuse options that change ours (defaults, allow_other); keep all. */
static int keep(void *data, const char *arg, int key, struct fuse_args *out)
{
	struct mount_opts *mo = data;

	(void)key; (void)out;
	if (strncmp(arg, "fsname=", 7) == 0)
		mo->fsname_given = 1;
	if (strncmp(arg, "subtype=", 8) == 0)
		mo->subtype_given = 1;
	if (strcmp(arg, "allow_other") == 0)
		mo->allow_other = 1;
	if (strcmp(arg, "default_permissions") == 0)
		mo->default_permissions = 1;
	return 1;
}

/* What other users may do: see the top of this file. False (with a message) if refused. */
static bool apply_others(const struct mount_opts *mo, const struct fs_opts *fo,
			 struct fuse_args *args)
{
	if ((fo->others_remove || fo->others_discover) && !mo->allow_other) {
		log_error("-o %s is for other users, and needs -o allow_other",
			  fo->others_remove ? "allow_other_remove" : "allow_other_discover");
		return false;
	}
	if (!mo->allow_other)
		return true;
	if (!mo->default_permissions) {
		fuse_opt_add_arg(args, "-o");
		fuse_opt_add_arg(args, "default_permissions");
	}
	log_info("allow_other: applying default_permissions; other users may read, %s remove "
		 "tags, %s discover them", fo->others_remove ? "may" : "may not",
		 fo->others_discover ? "may" : "may not");
	return true;
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

/*
 * At boot the disk a store lives on may not be mounted yet; making the store
 * would put an empty one on the root filesystem, and mount it. The store must
 * exist (pull, or -o create_store, makes it).
 */
static bool store_exists(const struct session_opts *so)
{
	char *root = session_store_root(so);
	struct stat st;
	bool ok = stat(root, &st) == 0;

	if (!ok && errno == ENOENT)
		log_error("store '%s' does not exist; is the disk it is on mounted? (blobfs pull "
			  "creates a store, and so does mount -o create_store)", root);
	else if (!ok)
		log_error("cannot use store '%s': %s", root, strerror(errno));
	free(root);
	return ok;
}

/*
 * A second daemon mounted on a blobfs mount point hides the first, which then
 * outlives the umount of the second; the source of the blobfs mount whose
 * root mountpoint is, or NULL.
 */
static char *blobfs_mounted_at(const char *mountpoint)
{
	char *real = realpath(mountpoint, NULL), *source = NULL;
	FILE *f = real ? setmntent("/proc/self/mounts", "r") : NULL;
	struct mntent *m;

	while (f && (m = getmntent(f)))
		if (strcmp(m->mnt_dir, real) == 0 && strcmp(m->mnt_type, "fuse.blobfs") == 0) {
			free(source);
			source = xstrdup(m->mnt_fsname);
		}
	if (f)
		endmntent(f);
	free(real);
	return source;
}

int cmd_mount(struct session_opts *so, struct fs_opts *fo, const char *mountpoint,
	      char *const *optv, int optc)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_opt *spec = make_spec();
	struct mount_opts mo = { 0 };
	int ret = EXIT_USAGE;

	fuse_opt_add_arg(&args, "blobfs");
	for (int i = 0; i < optc; i++) {
		fuse_opt_add_arg(&args, "-o");
		fuse_opt_add_arg(&args, optv[i]);
	}
	if (fuse_opt_parse(&args, &mo, spec, keep) < 0)
		goto out;
	if (!apply_own(&mo, fo) || !apply_settings(&mo, &so->cli) || !fuse_knows(&args) ||
	    !apply_others(&mo, fo, &args))
		goto out;
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
	if (!fo->create_store && !store_exists(so)) {
		ret = EXIT_FAIL;
		goto out;
	}
	clear_dead_mount(mountpoint);
	char *there = blobfs_mounted_at(mountpoint);
	if (there) {
		log_error("'%s' is already a blobfs mount (of '%s'); unmount it first", mountpoint,
			  there);
		free(there);
		ret = EXIT_FAIL;
		goto out;
	}
	ret = fs_mount(so, fo, mountpoint);
out:
	fuse_opt_free_args(&args);
	free_spec(spec);
	for (size_t i = 0; i < NMO; i++)
		free(mo.own[i]);
	for (size_t i = 0; i < SETTING_COUNT; i++)
		free(mo.setting[i]);
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
		log_error("cannot unmount '%s': %s", mountpoint, strerror(errno));
	} else if (status == 127) {
		log_error("cannot unmount '%s': fusermount3 is not installed (Debian package 'fuse3')",
			  mountpoint);
	}
	return EXIT_FAIL;
}
