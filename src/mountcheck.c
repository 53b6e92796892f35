/*
 * mountcheck.c - refusing a mountpoint the daemon would read through.
 *
 * The daemon reads its store while it serves the mount. A mount on the
 * store, inside it, or above it puts the store behind the mount: the daemon's
 * own reads become requests to itself, and the reader and the daemon wait on
 * each other for good. Directories are compared by device and inode along
 * each real path, so another name for the same directory (a symlink, a bind
 * mount) is caught as well as the name itself.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mountcheck.h"
#include "util.h"

/* Is st the directory dev/ino? */
static bool same(const struct stat *st, dev_t dev, ino_t ino)
{
	return st->st_dev == dev && st->st_ino == ino;
}

/* Does path (real, absolute) or one of its ancestors have dev/ino? */
static bool on_path(const char *path, dev_t dev, ino_t ino)
{
	char *p = xstrdup(path);
	bool found = false;

	for (;;) {
		struct stat st;
		if (stat(p, &st) == 0 && same(&st, dev, ino)) {
			found = true;
			break;
		}
		char *slash = strrchr(p, '/');
		if (!slash || p[1] == '\0')
			break;
		slash[slash == p] = '\0';     /* "/a" becomes "/" */
	}
	free(p);
	return found;
}

int mountcheck(const char *given, const char *mountpoint, const struct mountcheck_path *paths,
	       size_t n, char *err, size_t errlen)
{
	struct stat mp;

	if (stat(mountpoint, &mp) < 0)
		return 0;                     /* mounting will say what is wrong */
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		char *real = paths[i].path ? realpath(paths[i].path, NULL) : NULL;
		const char *how = NULL;

		if (!real || (paths[i].fd >= 0 ? fstat(paths[i].fd, &st) : stat(real, &st)) < 0)
			how = NULL;
		else if (same(&st, mp.st_dev, mp.st_ino))
			how = "it is";
		else if (on_path(real, mp.st_dev, mp.st_ino))
			how = "it holds";
		else if (on_path(mountpoint, st.st_dev, st.st_ino))
			how = "it is inside";
		if (how)
			snprintf(err, errlen, "cannot mount on '%s': %s %s '%s', which the mount "
				 "would then read through itself", given, how, paths[i].what,
				 paths[i].path);
		free(real);
		if (how)
			return -ELOOP;
	}
	return 0;
}
