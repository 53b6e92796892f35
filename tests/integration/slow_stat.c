/*
 * slow_stat.c - an LD_PRELOAD shim for the tests: a store on a slow or
 * stalled disk. fstatat() of a name that contains $BLOBFS_TEST_SLOW_NAME
 * sleeps $BLOBFS_TEST_SLOW_MS milliseconds first, but only while the file
 * $BLOBFS_TEST_SLOW_FLAG exists, so that a test turns the stall on once its
 * mount is up. Every call is passed on to the next fstatat (libc's, or a
 * sanitizer's interceptor).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int (*fstatat_fn)(int, const char *, void *, int);   /* struct stat or stat64 */

static void maybe_stall(const char *name)
{
	const char *match = getenv("BLOBFS_TEST_SLOW_NAME");
	const char *flag = getenv("BLOBFS_TEST_SLOW_FLAG");
	const char *ms = getenv("BLOBFS_TEST_SLOW_MS");

	if (!match || !flag || !ms || !name || !strstr(name, match) || access(flag, F_OK) != 0)
		return;
	long n = atol(ms);
	struct timespec ts = { .tv_sec = n / 1000, .tv_nsec = (n % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static int pass_on(const char *sym, int dirfd, const char *name, void *st, int flags)
{
	fstatat_fn real = (fstatat_fn)dlsym(RTLD_NEXT, sym);

	maybe_stall(name);
	return real(dirfd, name, st, flags);
}

int fstatat(int dirfd, const char *name, struct stat *st, int flags)
{
	return pass_on("fstatat", dirfd, name, st, flags);
}

int fstatat64(int dirfd, const char *name, struct stat64 *st, int flags)
{
	return pass_on("fstatat64", dirfd, name, st, flags);
}
