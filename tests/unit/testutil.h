/*
 * testutil.h - helpers shared by the cmocka unit tests: temporary
 * directories, small file I/O, and a substring assertion for error messages.
 * Include after "config.h" and <cmocka.h>.
 */
#ifndef BLOBFS_TESTUTIL_H
#define BLOBFS_TESTUTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Fail unless hay contains needle; prints both on failure. */
#define assert_contains(hay, needle)                                          \
	do {                                                                  \
		const char *h_ = (hay), *n_ = (needle);                       \
		if (!h_ || !strstr(h_, n_))                                   \
			fail_msg("'%s' does not contain '%s'",                \
				 h_ ? h_ : "(null)", n_);                     \
	} while (0)

/* A fresh private directory under $TMPDIR (or /tmp); caller frees. */
static inline char *tu_mkdtemp(void)
{
	const char *base = getenv("TMPDIR");
	char *path;

	if (!base || !*base)
		base = "/tmp";
	if (asprintf(&path, "%s/blobfs-unit.XXXXXX", base) < 0)
		abort();
	if (!mkdtemp(path)) {
		fprintf(stderr, "mkdtemp(%s): %s\n", path, strerror(errno));
		abort();
	}
	return path;
}

static inline int tu_rm_one(const char *path, const struct stat *st, int type,
			    struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (type == FTW_DP || type == FTW_D)
		return rmdir(path) < 0 ? -1 : 0;
	return unlink(path) < 0 ? -1 : 0;
}

/* rm -rf; returns 0 on success. */
static inline int tu_rm_rf(const char *path)
{
	return nftw(path, tu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Join two path parts; caller frees. */
static inline char *tu_path(const char *a, const char *b)
{
	char *p;

	if (asprintf(&p, "%s/%s", a, b) < 0)
		abort();
	return p;
}

/* Write len bytes to path (created/truncated, mode 0644); aborts on error. */
static inline void tu_write(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	const char *p = buf;

	if (fd < 0) {
		fprintf(stderr, "open(%s): %s\n", path, strerror(errno));
		abort();
	}
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n <= 0)
			abort();
		p += n;
		len -= (size_t)n;
	}
	close(fd);
}

static inline void tu_write_str(const char *path, const char *s)
{
	tu_write(path, s, strlen(s));
}

/* Read a whole (small) file into a NUL-terminated buffer; NULL if absent. */
static inline char *tu_read(const char *path, size_t *lenp)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, len = 0, n;

	if (!f)
		return NULL;
	do {
		if (len + 4096 + 1 > cap) {
			cap = (len + 4096 + 1) * 2;
			buf = realloc(buf, cap);
			if (!buf)
				abort();
		}
		n = fread(buf + len, 1, 4096, f);
		len += n;
	} while (n > 0);
	fclose(f);
	buf[len] = '\0';
	if (lenp)
		*lenp = len;
	return buf;
}

/* A byte of a fixed pseudo-random pattern, by offset. */
static inline unsigned char tu_pattern(size_t i)
{
	unsigned x = (unsigned)i * 2654435761u + 12345u;

	x ^= x >> 13;
	x *= 0x5bd1e995u;
	return (unsigned char)(x >> 24);
}

/* A file of size bytes of tu_pattern(). */
static inline void tu_put_pattern(const char *path, size_t size)
{
	unsigned char *buf = malloc(size ? size : 1);

	for (size_t i = 0; i < size; i++)
		buf[i] = tu_pattern(i);
	tu_write(path, buf, size);
	free(buf);
}

/* The permission bits of path, or -1 if it cannot be stat'ed. */
static inline int tu_mode_of(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -1;
	return (int)(st.st_mode & 07777);
}

static inline int tu_is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static inline int tu_exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* Number of entries (other than . and ..) in a directory; -1 if absent. */
static inline int tu_count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

/* The name of the only entry of dir that starts with prefix; caller frees. */
static inline char *tu_find_entry(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char *found = NULL;

	if (!d)
		return NULL;
	while ((e = readdir(d)) != NULL)
		if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
			free(found);
			found = strdup(e->d_name);
		}
	closedir(d);
	return found;
}

#endif
