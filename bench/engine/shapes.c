/*
 * shapes - read a model file the ways inference engines do, for bench/run's
 * engine measurement. Prints one JSON line: seconds and a checksum of one
 * 8-byte word per 4 KiB page read (the same for every way of reading the
 * same ranges, so a run through the mount is checked against the local file).
 *
 *   shapes pread FILE THREADS RANGES   THREADS threads take the ranges in turn
 *                                      and pread each whole into a buffer (as
 *                                      safetensors loaders read tensors)
 *   shapes mmap FILE RANGES            mmap without MAP_POPULATE, then touch
 *                                      every page of each range in the order
 *                                      given (a forward pass's fault order)
 *
 * RANGES is a file of "offset length" lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

struct range {
	uint64_t off, len;
};

static struct range *ranges;
static size_t nranges;
static int fd;
static size_t next_range;           /* atomic: the next range a thread takes */
static uint64_t sum;                /* atomic */
static int failed;                  /* atomic: an errno */

static void die(const char *what)
{
	fprintf(stderr, "shapes: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void load_ranges(const char *path)
{
	FILE *f = fopen(path, "r");
	unsigned long long off, len;
	size_t cap = 0;

	if (!f)
		die(path);
	while (fscanf(f, "%llu %llu", &off, &len) == 2) {
		if (nranges == cap) {
			cap = cap ? 2 * cap : 256;
			ranges = realloc(ranges, cap * sizeof(*ranges));
			if (!ranges)
				die("realloc");
		}
		ranges[nranges].off = off;
		ranges[nranges++].len = len;
	}
	fclose(f);
}

/* One word per page, weighted by where the page is, so misplaced pages count. */
static uint64_t page_sum(const unsigned char *p, uint64_t off, uint64_t len)
{
	uint64_t s = 0, w;

	for (uint64_t i = (PAGE - off % PAGE) % PAGE; i + sizeof(w) <= len; i += PAGE) {
		memcpy(&w, p + i, sizeof(w));
		s += w * ((off + i) / PAGE + 1);
	}
	return s;
}

static void *pread_thread(void *arg)
{
	size_t cap = 0;
	unsigned char *buf = NULL;

	(void)arg;
	for (;;) {
		size_t i = __atomic_fetch_add(&next_range, 1, __ATOMIC_RELAXED);
		if (i >= nranges)
			break;
		struct range r = ranges[i];
		if (r.len > cap) {
			free(buf);
			cap = r.len;
			buf = malloc(cap);
			if (!buf)
				die("malloc");
		}
		for (uint64_t done = 0; done < r.len;) {
			ssize_t n = pread(fd, buf + done, r.len - done, (off_t)(r.off + done));
			if (n <= 0) {
				__atomic_store_n(&failed, n < 0 ? errno : EIO, __ATOMIC_RELAXED);
				free(buf);
				return NULL;
			}
			done += (uint64_t)n;
		}
		__atomic_add_fetch(&sum, page_sum(buf, r.off, r.len), __ATOMIC_RELAXED);
	}
	free(buf);
	return NULL;
}

static void shape_pread(int threads)
{
	pthread_t t[64];

	if (threads < 1 || threads > 64)
		threads = 4;
	for (int i = 0; i < threads; i++)
		if (pthread_create(&t[i], NULL, pread_thread, NULL) != 0)
			die("pthread_create");
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	if (failed) {
		errno = failed;
		die("pread");
	}
}

static void shape_mmap(void)
{
	struct stat st;
	volatile unsigned char *map;

	if (fstat(fd, &st) < 0)
		die("fstat");
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		die("mmap");
	for (size_t i = 0; i < nranges; i++) {
		/* Touch first, so that the faults come page by page, in order. */
		for (uint64_t p = ranges[i].off - ranges[i].off % PAGE; p < ranges[i].off + ranges[i].len;
		     p += PAGE)
			(void)map[p];
		sum += page_sum((const unsigned char *)map + ranges[i].off, ranges[i].off,
				ranges[i].len);
	}
	munmap((void *)map, (size_t)st.st_size);
}

int main(int argc, char **argv)
{
	struct timespec t0, t1;
	bool mmap_shape = argc == 4 && strcmp(argv[1], "mmap") == 0;

	if (!mmap_shape && !(argc == 5 && strcmp(argv[1], "pread") == 0)) {
		fprintf(stderr, "usage: shapes pread FILE THREADS RANGES | shapes mmap FILE RANGES\n");
		return 2;
	}
	load_ranges(argv[argc - 1]);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	fd = open(argv[2], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(argv[2]);
	if (mmap_shape)
		shape_mmap();
	else
		shape_pread(atoi(argv[3]));
	close(fd);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("{\"seconds\": %.6f, \"sum\": \"%016llx\", \"ranges\": %zu}\n",
	       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
	       (unsigned long long)sum, nranges);
	return 0;
}
