/*
 * bdi.c - the read-ahead window of a mount's backing device info.
 *
 * The kernel reads a FUSE file ahead, and maps a file's pages around a
 * fault, by at most the bdi's read_ahead_kb, 128 KiB unless someone raises
 * it: the FUSE INIT reply can only lower it. Root can raise it through
 * /sys/class/bdi/MAJOR:MINOR/read_ahead_kb (as mergerfs does), which is the
 * only way a fault on a mapped model file gets more than 128 KiB per round
 * trip. The device number comes from /proc/self/mountinfo, because a stat of
 * the mount point would wait for the daemon that is about to answer it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bdi.h"

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s)
{
	char *out = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*out++ = *s;
		}
	}
	*out = '\0';
}

/* "MAJOR:MINOR" of the last mount on mountpoint, into dev. */
static int mount_dev(const char *mountpoint, char *dev, size_t size)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		char id[32], mp[4096];
		/* mount ID, parent ID, major:minor, root, mount point, ... */
		if (sscanf(line, "%*u %*u %31s %*s %4095s", id, mp) != 2)
			continue;
		unescape(mp);
		if (strcmp(mp, mountpoint) == 0) {
			snprintf(dev, size, "%s", id);
			ret = 0;
		}
	}
	free(line);
	fclose(f);
	return ret;
}

int bdi_set_readahead(const char *mountpoint, unsigned kb)
{
	char dev[32], path[96], value[16];
	int fd, ret, len;

	ret = mount_dev(mountpoint, dev, sizeof(dev));
	if (ret < 0)
		return ret;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	len = snprintf(value, sizeof(value), "%u\n", kb);
	ret = write(fd, value, (size_t)len) == len ? 0 : -errno;
	close(fd);
	return ret;
}
