/*
 * util.c - small helpers shared by every part of blobfs.
 *
 * The one idea worth stating: every file that must survive a crash is written
 * to a temporary name in the store's own state directory, synced, and renamed
 * into place, so a reader sees the old file or the new one, never a mix. And
 * inside the store nothing is opened by path: always relative to a directory
 * fd, never through a link (open_regular_at and its relatives).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static void oom(void)
{
	log_error("out of memory");
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		oom();
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		oom();
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);

	if (!p)
		oom();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&p, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom();
	return p;
}

int mkdir_p(const char *path, mode_t mode)
{
	char *p;
	int ret = 0;

	if (!*path)
		return -ENOENT;
	p = xstrdup(path);

	for (char *s = p + 1; ; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char c = *s;
		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST) {
			ret = -errno;
			break;
		}
		*s = c;
		if (c == '\0')
			break;
	}
	if (ret == 0) {
		struct stat st;
		if (stat(path, &st) < 0)
			ret = -errno;
		else if (!S_ISDIR(st.st_mode))
			ret = -ENOTDIR;
	}
	free(p);
	return ret;
}

/* Read fd to its end into a NUL-terminated buffer; -EFBIG past max bytes. */
int read_fd(int fd, size_t max, char **bufp, size_t *lenp)
{
	size_t cap = 4096, len = 0;
	char *buf = xmalloc(cap + 1);
	int ret = 0;

	for (;;) {
		if (len == cap) {
			if (cap > max) {
				ret = -EFBIG;
				break;
			}
			cap *= 2;
			buf = xrealloc(buf, cap + 1);
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			break;
		}
		if (n == 0)
			break;
		len += n;
	}
	if (ret == 0 && len > max)
		ret = -EFBIG;
	if (ret < 0) {
		free(buf);
		return ret;
	}
	buf[len] = '\0';
	*bufp = buf;
	*lenp = len;
	return 0;
}

int read_file(const char *path, size_t max, char **bufp, size_t *lenp)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int ret;

	if (fd < 0)
		return -errno;
	ret = read_fd(fd, max, bufp, lenp);
	close(fd);
	return ret;
}

int pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

int pread_all(int fd, void *buf, size_t len, off_t off)
{
	char *p = buf;

	while (len > 0) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO; /* the file is shorter than it must be */
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

const char *file_strerror(int err)
{
	if (err < 0)
		err = -err;
	if (err == ELOOP)
		return "it is a symbolic link";
	if (err == EFTYPE)
		return "it is not a regular file";
	return strerror(err);
}

int open_regular_at(int dirfd, const char *name, int flags, mode_t mode)
{
	/* O_NONBLOCK: opening a FIFO planted in the store must not hang. */
	int fd = openat(dirfd, name, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode);
	struct stat st;

	int ret = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		ret = -errno;
	else if (!S_ISREG(st.st_mode))
		ret = -EFTYPE;
	if (ret < 0) {
		close(fd);
		return ret;
	}
	return fd;
}

int read_file_at(int dirfd, const char *name, size_t max, char **buf, size_t *len)
{
	int fd = open_regular_at(dirfd, name, O_RDONLY, 0);
	int ret;

	if (fd < 0)
		return fd;
	ret = read_fd(fd, max, buf, len);
	close(fd);
	return ret;
}

/* Create a new, empty temporary file in dirfd; its name goes into name. */
static int create_temp_at(int dirfd, char *name, size_t size)
{
	for (int tries = 0; tries < 100; tries++) {
		uint64_t r;
		if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
			r = now_ms() * 2654435761u + (uint64_t)tries;
		snprintf(name, size, "tmp.%016" PRIx64, r);
		int fd = openat(dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC,
				0600);
		if (fd >= 0 || errno != EEXIST)
			return fd < 0 ? -errno : fd;
	}
	return -EEXIST;
}

int write_file_atomic_at(int tmpdirfd, int dirfd, const char *name, const void *buf,
			 size_t len, mode_t mode)
{
	char tmp[32];
	int fd = create_temp_at(tmpdirfd, tmp, sizeof(tmp));
	int ret;

	if (fd < 0)
		return fd;
	ret = pwrite_all(fd, buf, len, 0);
	if (ret == 0 && fchmod(fd, mode) < 0)
		ret = -errno;
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	if (ret == 0 && renameat(tmpdirfd, tmp, dirfd, name) < 0)
		ret = -errno;
	if (ret < 0)
		unlinkat(tmpdirfd, tmp, 0);
	else if (fsync(dirfd) < 0 && errno != EINVAL)
		ret = -errno;
	return ret;
}

int open_dir_at(int dirfd, const char *name, bool create, mode_t mode)
{
	const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
	int fd = openat(dirfd, name, flags);

	if (fd < 0 && errno == ENOENT && create) {
		if (mkdirat(dirfd, name, mode) < 0 && errno != EEXIST)
			return -errno;
		fd = openat(dirfd, name, flags);
	}
	if (fd < 0 && errno == ENOTDIR) {
		/* With O_DIRECTORY a link is ENOTDIR too: tell the two apart. */
		struct stat st;
		if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
			errno = ELOOP;
	}
	return fd < 0 ? -errno : fd;
}

DIR *opendir_at(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;

	if (fd < 0)
		return NULL;
	d = fdopendir(fd);
	if (!d)
		close(fd);
	return d;
}

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool parse_u64(const char *s, size_t len, uint64_t *out)
{
	uint64_t v = 0;

	if (len == 0 || len > 20)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned d = s[i] - '0';
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

int parse_size(const char *s, uint64_t *out)
{
	uint64_t whole = 0, frac = 0, scale = 1, mult = 1;
	const char *p = s;

	if (!s || !((*p >= '0' && *p <= '9') || (*p == '.' && p[1] >= '0' && p[1] <= '9')))
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (whole > (UINT64_MAX - 9) / 10)
			return -EINVAL;
		whole = whole * 10 + (uint64_t)(*p - '0');
	}
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++) {
			if (scale < 1000000000000ULL) {
				frac = frac * 10 + (uint64_t)(*p - '0');
				scale *= 10;
			}
		}
	}
	switch (*p) {
	case '\0': break;
	case 'k': case 'K': mult = 1ULL << 10; p++; break;
	case 'm': case 'M': mult = 1ULL << 20; p++; break;
	case 'g': case 'G': mult = 1ULL << 30; p++; break;
	case 't': case 'T': mult = 1ULL << 40; p++; break;
	default: return -EINVAL;
	}
	if (mult > 1 && (*p == 'i' || *p == 'I'))
		p++;
	if (mult > 1 && (*p == 'b' || *p == 'B'))
		p++;
	if (*p != '\0' || whole > UINT64_MAX / mult)
		return -EINVAL;
	*out = whole * mult + (uint64_t)((double)frac / (double)scale * (double)mult);
	return 0;
}

void format_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KB", "MB", "GB", "TB", "PB" };
	double v = (double)bytes;
	unsigned u = 0;

	/* 999.5 would print as "1000": move to the next unit before rounding does. */
	while (v >= 999.5 && u < ARRAY_SIZE(unit) - 1) {
		v /= 1000;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", bytes);
	else
		snprintf(buf, len, "%.*f %s", v < 9.995 ? 2 : v < 99.95 ? 1 : 0, v, unit[u]);
}

void format_duration(uint64_t s, char *buf, size_t len)
{
	if (s < 60)
		snprintf(buf, len, "%" PRIu64 "s", s);
	else if (s < 3600)
		snprintf(buf, len, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
	else
		snprintf(buf, len, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, (s / 60) % 60);
}
