/* mountcheck.h - refusing a mountpoint the daemon would read through. */
#ifndef BLOBFS_MOUNTCHECK_H
#define BLOBFS_MOUNTCHECK_H

#include <stddef.h>

/* A directory the daemon reads, and what to call it in a message ("the store"). */
struct mountcheck_path {
	const char *what;
	const char *path;
	int fd;              /* the directory held open, or -1 */
};

/*
 * Refuse mountpoint (real path; given: as the user wrote it) if it is one
 * of paths, inside one, or holds one: -ELOOP with a message in err. Paths
 * that do not exist are skipped; one held open is known by its fd.
 */
int mountcheck(const char *given, const char *mountpoint, const struct mountcheck_path *paths,
	       size_t n, char *err, size_t errlen);

#endif
