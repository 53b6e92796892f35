/* bdi.h - the read-ahead window of a mount's backing device info. */
#ifndef BLOBFS_BDI_H
#define BLOBFS_BDI_H

/*
 * Set read_ahead_kb of the filesystem mounted on mountpoint (an absolute
 * path, as /proc/self/mountinfo shows it). 0 or a negative errno; only root
 * may write it.
 */
int bdi_set_readahead(const char *mountpoint, unsigned kb);

#endif
