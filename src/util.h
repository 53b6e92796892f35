/* util.h - allocation, paths, whole-file I/O, time and size helpers. */
#ifndef BLOBFS_UTIL_H
#define BLOBFS_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Allocation failure is fatal: blobfs does not limp on without memory. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Create a directory and its parents; 0 or negative errno. */
int mkdir_p(const char *path, mode_t mode);
/* fsync a directory so renames and unlinks in it are durable. */
int fsync_dir(const char *dir);
/* fsync the directory that contains path. */
int fsync_parent(const char *path);

/*
 * Read a whole file. Fails with -EFBIG if it is larger than max bytes.
 * The buffer is NUL-terminated (not counted in *len).
 */
int read_file(const char *path, size_t max, char **buf, size_t *len);
/*
 * Write a file atomically: into a temporary file in tmpdir, fsync, rename over
 * path, fsync path's directory. tmpdir must be on the same filesystem.
 */
int write_file_atomic(const char *tmpdir, const char *path, const void *buf,
		      size_t len, mode_t mode);
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
