/* util.h - allocation, paths, whole-file I/O, time and size helpers. */
#ifndef BLOBFS_UTIL_H
#define BLOBFS_UTIL_H

#include <dirent.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
/* The struct of type that holds *p as its member. */
#define container_of(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

/* Allocation failure is fatal: blobfs does not limp on without memory. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Create a directory and its parents; 0 or negative errno. */
int mkdir_p(const char *path, mode_t mode);

/*
 * Read a whole file. Fails with -EFBIG if it is larger than max bytes.
 * The buffer is NUL-terminated (not counted in *len).
 */
int read_file(const char *path, size_t max, char **buf, size_t *len);
/* The same from an open file, to its end. */
int read_fd(int fd, size_t max, char **buf, size_t *len);

/*
 * Files inside the store are opened relative to a directory fd and never
 * through a link: these fail with -ELOOP on a symbolic link and -EFTYPE on
 * anything else that is not a regular file (a directory, a FIFO, a device).
 * file_strerror() says so in words; other errors as strerror().
 */
#define EFTYPE EMEDIUMTYPE
const char *file_strerror(int err);
/* openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode), regular files only; fd or -errno. */
int open_regular_at(int dirfd, const char *name, int flags, mode_t mode);
/* read_file() of name in dirfd, through open_regular_at(). */
int read_file_at(int dirfd, const char *name, size_t max, char **buf, size_t *len);
/*
 * Write name in dirfd atomically: into a new temporary file in tmpdirfd,
 * fsync, rename over name, fsync dirfd. Both on the same filesystem.
 */
int write_file_atomic_at(int tmpdirfd, int dirfd, const char *name, const void *buf,
			 size_t len, mode_t mode);
/*
 * Open (with create, make first) the directory name in dirfd, never through a
 * link: -ELOOP for a link, -ENOTDIR for anything else that is not a directory.
 */
int open_dir_at(int dirfd, const char *name, bool create, mode_t mode);
/* A DIR stream of its own over the directory dirfd (which stays open), or NULL. */
DIR *opendir_at(int dirfd);
/* write() all of buf at offset; 0 or negative errno. */
int pwrite_all(int fd, const void *buf, size_t len, off_t off);
int pread_all(int fd, void *buf, size_t len, off_t off);

/* Milliseconds on the monotonic clock. */
uint64_t now_ms(void);
/* Milliseconds on the wall clock (for stored timestamps). */
uint64_t wall_ms(void);

/* "16M", "1GiB", "4096", "2.5G" → bytes (binary multiples); 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out);
/* "123.4 MB" with SI units, as Ollama and curl print sizes. */
void format_size(uint64_t bytes, char *buf, size_t len);
/* "12s", "4m05s", "1h02m" */
void format_duration(uint64_t seconds, char *buf, size_t len);

/* Parse a whole string as an unsigned decimal integer; false on junk/overflow. */
bool parse_u64(const char *s, size_t len, uint64_t *out);

#endif
