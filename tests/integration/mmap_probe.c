/*
 * mmap_probe - read bytes of a file through mmap, for tests of the blobfs mount.
 *
 * usage: mmap_probe FILE LEN OFFSET...
 *
 * Maps FILE whole with PROT_READ, once MAP_SHARED and once MAP_PRIVATE, and
 * for each OFFSET prints one line "shared|private OFFSET HEX" with the LEN
 * bytes found there. Exit status 0, or 1 with a message on stderr.
 */
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	static const struct { const char *name; int flag; } kinds[] = {
		{ "shared", MAP_SHARED },
		{ "private", MAP_PRIVATE },
	};
	struct stat st;
	unsigned long long len;
	int fd;

	if (argc < 4) {
		fprintf(stderr, "usage: mmap_probe FILE LEN OFFSET...\n");
		return 1;
	}
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "mmap_probe: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	len = strtoull(argv[2], NULL, 10);
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		const unsigned char *p = mmap(NULL, (size_t)st.st_size, PROT_READ, kinds[k].flag, fd, 0);

		if (p == MAP_FAILED) {
			fprintf(stderr, "mmap_probe: mmap %s: %s\n", kinds[k].name, strerror(errno));
			return 1;
		}
		for (int i = 3; i < argc; i++) {
			unsigned long long off = strtoull(argv[i], NULL, 10);

			if (off + len > (unsigned long long)st.st_size) {
				fprintf(stderr, "mmap_probe: %llu+%llu is past the end (%lld)\n",
					off, len, (long long)st.st_size);
				return 1;
			}
			printf("%s %llu ", kinds[k].name, off);
			for (unsigned long long j = 0; j < len; j++)
				printf("%02x", p[off + j]);
			printf("\n");
		}
		munmap((void *)p, (size_t)st.st_size);
	}
	close(fd);
	return fflush(stdout) == 0 ? 0 : 1;
}
