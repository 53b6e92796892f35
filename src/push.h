/* push.h - bytes of complete blobs pushed into the kernel's page cache ahead of a reader. */
#ifndef BLOBFS_PUSH_H
#define BLOBFS_PUSH_H

#include <stdint.h>

struct blob;
struct fuse_session;
struct pusher;

/* Pusher threads for the session; stop them before the session is destroyed. */
struct pusher *pusher_start(struct fuse_session *se);
void pusher_stop(struct pusher *p);
/*
 * A reader reading inode ino (blob b, complete and verified) in file order
 * has asked for bytes up to reader_end: push what follows into the page cache.
 */
void pusher_note(struct pusher *p, uint64_t ino, struct blob *b, uint64_t reader_end);

#endif
