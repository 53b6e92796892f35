/* watch.h - notice changes under a directory tree (inotify). */
#ifndef BLOBFS_WATCH_H
#define BLOBFS_WATCH_H

struct watch;

/*
 * Watch dir and its subdirectories (depth levels deep); call changed(arg)
 * from the watch thread shortly after anything in it changes (debounced),
 * and every fallback_s seconds in any case.
 */
struct watch *watch_start(const char *dir, int depth, unsigned fallback_s,
			  void (*changed)(void *arg), void *arg);
void watch_stop(struct watch *w);

#endif
