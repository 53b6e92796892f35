/*
 * blob_io.c - a blob's files, and the calls that need them.
 *
 * A blob owns up to three file descriptors: the complete blob or the partial
 * file readers read from (fd), the partial file the network thread writes
 * into (wfd), and the store's per-blob lock while this process fetches it
 * (lockfd). Activation takes the lock and opens the files: then the blob is
 * COMPLETE (another process finished it), PARTIAL (ours to fetch, resumed
 * from its chunk map if one is on disk) or BUSY (another process holds the
 * lock, or a cache limit could not make room for it: either way what is in
 * the partial file is read, and the worker tries again for what is not).
 * The partial file is the store's to open, save and remove
 * (store_partial_*), never opened here by path.
 *
 * The public calls here (blob_read, blob_fetch_all, blob_activate,
 * blob_served) activate the blob if they must, then leave the rest to the
 * state machine (blob_state.c).
 *
 * Sharing a partial blob between processes. The chunk map on disk is the
 * shared truth, and the blob's lock file names who fetches: the holder of
 * its flock is the only writer of the partial file and its map, and the
 * kernel releases the flock when the holder dies. Every other process keeps
 * the blob BUSY with a view: the partial file opened read-only and the map
 * the holder last saved (store_partial_peek), re-read when it changes. Reads
 * of chunks the map marks durable are answered from the file at once; reads
 * of the rest park, and the worker re-reads the map each tick (its save is
 * atomic and follows the data's fdatasync, so what it marks is there) and
 * answers them. A process that waits on a BUSY blob (parked reads, or a
 * pull) tries the lock each tick, and takes the fetch over, resumed from the
 * map, as soon as the holder lets go: when the holder dies, commits, or has
 * had nothing to fetch for LET_GO_MS (the worker saves its map and calls
 * let_go_locked), so that a mount that keeps a blob open never holds up a
 * pull. So that the others wait only for what they need, they append the
 * ranges of their parked reads to the blob's wants file, and the holder's
 * worker parks a read of its own for each (blob_want_locked): those go
 * first, like its own readers', and a request in flight is split to reach
 * them. Nothing here waits for another process: the worker polls.
 * Descriptors are replaced in place (replace_fd), so a thread that took one
 * a moment ago reads the new file, never a closed or reused descriptor.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "blob_int.h"
#include "chunkmap.h"
#include "digest.h"
#include "log.h"
#include "ranges.h"
#include "remote.h"
#include "store.h"
#include "util.h"

/*
 * Put fd in *slot, over the descriptor number already there if there is one:
 * a thread that read *slot a moment ago (a reply being spliced, a request's
 * writes) then reaches the new file, never a closed or reused descriptor.
 */
static void replace_fd(int *slot, int fd)
{
	if (*slot >= 0 && dup2(fd, *slot) >= 0) {
		close(fd);
		return;
	}
	if (*slot >= 0)
		close(*slot);
	*slot = fd;
}

static bool same_inode(int a, int b)
{
	struct stat sa, sb;

	return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_ino == sb.st_ino &&
	       sa.st_dev == sb.st_dev;
}

/*
 * Open a fresh or resumed partial file, sized, for writing (b->wfd) and
 * reading (b->fd), and its geometry: the chunk map on disk (*resumed), or
 * fixed-size chunks. *same_file: b->fd read that file already. We hold the
 * store's blob lock.
 */
static int open_partial(struct blob *b, struct chunkmap **map, bool *resumed, bool *same_file)
{
	struct blobcache *c = b->cache;
	struct chunkmap *m = NULL;
	int wfd, fd, ret = store_partial_open(c->store, &b->digest, b->size, &wfd, &fd);

	if (ret < 0)
		return ret;
	*same_file = b->fd >= 0 && same_inode(b->fd, fd);
	replace_fd(&b->wfd, wfd);
	replace_fd(&b->fd, fd);
	*resumed = store_partial_load_map(c->store, &b->digest, b->size, &m) == 0;
	if (!*resumed) {
		/* A map that does not fit is replaced at the first save. */
		const struct remote *r = b->nremotes ? b->remotes[0] : NULL;
		uint64_t chunk = r && r->o.chunk_size ? r->o.chunk_size : c->opts.chunk_size;
		m = chunkmap_new_fixed(b->size, chunk);
	}
	*map = m;
	return 0;
}

int save_map(struct blob *b, const uint8_t *buf, size_t len)
{
	return store_partial_save_map(b->cache->store, &b->digest, buf, len);
}

void remove_orphan(struct blob *b)
{
	store_partial_remove(b->cache->store, &b->digest, NULL);
}

static int reserve(struct blob *b, uint64_t have);

/*
 * Set up a fresh or resumed partial blob; we hold the store's blob lock. With
 * a quota, room is made for what is missing and reserved first, so a full
 * disk with evictable blobs is no reason to fail, and a blob that cannot fit
 * fails now (ENOSPC) instead of filling the disk. The hash of the prefix
 * goes on where it was if the file is the one we read (we let it go).
 *
 * When there is no room, what is already in the file can still be read: the
 * blob keeps the file open for reading (b->fd, which another thread may be
 * reading through this very moment, is never closed here) with the map as
 * its view, as for a blob another process fetches, and *viewing is set; the
 * caller gives the lock back and makes it BUSY.
 */
static int activate_partial(struct blob *b, bool *viewing)
{
	const struct blob_opts *o = &b->cache->opts;
	struct chunkmap *m;
	bool resumed, same;
	int ret = open_partial(b, &m, &resumed, &same);

	if (ret < 0)
		return ret;
	if (o->make_room) {
		uint64_t have = resumed ? chunkmap_bytes(m) : 0;
		o->make_room(o->room_arg, b->size - have);
		if ((ret = reserve(b, have)) < 0) {
			close(b->wfd);   /* not PARTIAL before: no request writes through it */
			b->wfd = -1;
			blob_view_locked(b, m, same);
			memset(&b->stamp, 0, sizeof(b->stamp));   /* re-read the next map saved */
			*viewing = true;
			return ret;
		}
	}
	blob_begin_partial_locked(b, m, resumed, same);
	if (!same || !b->hash) {
		hasher_free(b->hash);
		b->hash = hasher_new();
		b->hashed = 0;
		memset(&b->served, 0, sizeof(b->served));
		b->drop_upto = b->dropped = 0;
	}
	b->busy_ms = now_ms();
	return 0;
}

/*
 * BUSY: look at what the holder has made durable. The map is read under
 * b->lock, but only when the holder saved a new one (about once a second).
 */
static void refresh_view(struct blob *b)
{
	struct chunkmap *m;
	int newfd, ret = store_partial_peek(b->cache->store, &b->digest, b->size, &b->stamp,
					    &b->fd, &newfd, &m);

	if (ret <= 0)
		return;
	if (newfd >= 0)
		replace_fd(&b->fd, newfd);
	blob_view_locked(b, m, newfd < 0);
}

void let_go_locked(struct blob *b)
{
	store_blob_unlock(b->cache->store, &b->digest, b->lockfd, false);
	b->lockfd = -1;
	memset(&b->stamp, 0, sizeof(b->stamp));   /* re-read whatever is saved next */
	blob_mark_locked(b, BLOB_BUSY);
}

/*
 * Move an IDLE or BUSY blob on: take the store's blob lock, then find it
 * complete (another process finished it) or open it for fetching.
 * Called with b->lock held. 0 or negative errno; -EBUSY leaves it BUSY.
 */
int activate_locked(struct blob *b)
{
	struct blobcache *c = b->cache;
	int fd, ret;

	if (b->state != BLOB_IDLE && b->state != BLOB_BUSY)
		return 0;
	if (!c->store->writable)
		return -EROFS;
	ret = store_blob_trylock(c->store, &b->digest);
	if (ret == -EBUSY) {
		bool first = b->state != BLOB_BUSY;
		if (b->state == BLOB_IDLE)
			log_info("'%s' is being fetched by another blobfs process; "
				 "reading what it has made durable", b->name);
		blob_mark_locked(b, BLOB_BUSY);
		b->let_go = false;       /* someone else holds it now */
		refresh_view(b);
		if (first)
			want_work(b);   /* later, the worker itself calls here */
		return -EBUSY;
	}
	if (ret < 0) {
		log_error("cannot lock '%s' in the store: %s", b->name, strerror(-ret));
		return ret;
	}
	b->lockfd = ret;
	ret = store_open_blob(c->store, &b->digest, b->size, &fd);
	if (ret == 0 || ret == -EBADMSG) {
		if (ret == 0)
			replace_fd(&b->fd, fd);
		/* Complete; or complete with another size, which blames the manifest. */
		blob_mark_locked(b, ret == 0 ? BLOB_COMPLETE : BLOB_FAILED);
		b->err = ret;
		store_blob_unlock(c->store, &b->digest, b->lockfd, true);
		b->lockfd = -1;
		return ret;
	}
	bool viewing = false;
	ret = activate_partial(b, &viewing);
	if (ret < 0) {
		store_blob_unlock(c->store, &b->digest, b->lockfd, false);
		b->lockfd = -1;
		blob_mark_locked(b, viewing ? BLOB_BUSY : BLOB_IDLE);
		return ret;
	}
	/* Hash what a previous run left, finish a blob that only lacked its commit,
	 * and answer parked reads whose bytes a previous run already fetched. */
	want_work(b);
	return 0;
}

int blob_activate(struct blob *b)
{
	int ret;

	pthread_mutex_lock(&b->lock);
	ret = activate_locked(b);
	if (ret == 0 && b->state == BLOB_FAILED)
		ret = b->err;
	pthread_mutex_unlock(&b->lock);
	return ret;
}

void blob_files_close(struct blob *b)
{
	struct store *s = b->cache->store;

	if (b->orphan && b->lockfd >= 0) {
		remove_orphan(b);
		store_blob_unlock(s, &b->digest, b->lockfd, true);
		b->lockfd = -1;
	}
	if (b->fd >= 0)
		close(b->fd);
	if (b->wfd >= 0)
		close(b->wfd);
	store_blob_unlock(s, &b->digest, b->lockfd, false);
	hasher_free(b->hash);
}

int blob_fd(struct blob *b)
{
	int fd;

	pthread_mutex_lock(&b->lock);
	fd = b->fd;
	pthread_mutex_unlock(&b->lock);
	return fd;
}

int blob_wfd(struct blob *b)
{
	return b->wfd;
}

/* ---- reads ---- */

int blob_read(struct blob *b, uint64_t off, uint64_t len, uint64_t ra,
	      struct blob_waiter *w)
{
	bool kick = false;
	int ret = 0;

	if (off >= b->size || len == 0)
		return 1;
	if (len > b->size - off)
		len = b->size - off;
	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_IDLE)
		ret = activate_locked(b);
	if (ret == 0 || ret == -EBUSY)
		ret = blob_read_locked(b, off, len, ra, w, &kick);
	else if (blob_local_locked(b, off, len))
		ret = 1;    /* it could not be taken up (no room): what is here still reads */
	pthread_mutex_unlock(&b->lock);
	if (kick)
		want_fetch(b);
	return ret;
}

/*
 * Advise the kernel out of the store's pages that readers have had, up to
 * upto, once that is min_step more than before. The caller makes sure they
 * are durable, hence clean: the kernel keeps dirty pages whatever it is told.
 * The mount's page cache holds what was read; a second copy doubles the
 * memory a cold read fills, and on a VM memory touched for the first time
 * costs more than the copy into it (bench/RESULTS.md). A later read of those
 * bytes comes from the disk. Lock held; dropped around the advice.
 */
void drop_behind(struct blob *b, uint64_t upto, uint64_t min_step)
{
	if (upto <= b->dropped || upto - b->dropped < min_step)
		return;
	uint64_t from = b->dropped;
	int fd = b->fd;
	b->dropped = upto;
	pthread_mutex_unlock(&b->lock);
	posix_fadvise(fd, (off_t)from, (off_t)(upto - from), POSIX_FADV_DONTNEED);
	pthread_mutex_lock(&b->lock);
}

void blob_served(struct blob *b, uint64_t off, uint64_t len)
{
	pthread_mutex_lock(&b->lock);
	/* BUSY too: the file is the one it will be again when we take it back. */
	if (b->state != BLOB_IDLE && b->state != BLOB_FAILED)
		ranges_add(&b->served, off, off + len);
	/* A partial blob's pages go once durable (blob_work); these already are. */
	if (b->state == BLOB_COMPLETE)
		drop_behind(b, ranges_prefix(&b->served), DROP_MIN);
	pthread_mutex_unlock(&b->lock);
}

/* ---- whole blobs ---- */

/*
 * Reserve the blob's disk space now, so a full disk fails before the download;
 * have bytes of it are already local.
 */
static int reserve(struct blob *b, uint64_t have)
{
	int ret = posix_fallocate(b->wfd, 0, (off_t)b->size);

	if (ret == EOPNOTSUPP || ret == EINVAL)
		return 0;   /* the filesystem cannot: find out while writing */
	if (ret) {
		char need[16];
		format_size(b->size - have, need, sizeof(need));
		log_error("cannot make room for '%s' (%s more) in the store: %s", b->name, need,
			  strerror(ret));
		/* A failed allocation may keep what it got; give it back if nothing is ours yet. */
		if (have == 0 && (ftruncate(b->wfd, 0) < 0 ||
				  ftruncate(b->wfd, (off_t)b->size) < 0))
			log_warn("cannot release space reserved for '%s': %s", b->name, strerror(errno));
	}
	return -ret;
}

int blob_fetch_all(struct blob *b, bool reserve_space)
{
	int ret = 0;
	bool kick = false;

	pthread_mutex_lock(&b->lock);
	if (b->state == BLOB_IDLE || b->state == BLOB_BUSY)
		ret = activate_locked(b);
	if (b->state == BLOB_FAILED) {
		ret = b->err;
	} else if (b->state == BLOB_PARTIAL && reserve_space &&
		   (ret = reserve(b, b->present_bytes)) < 0) {
		/* nothing fetched: a pull stops here with the reason */
	} else if (b->state == BLOB_PARTIAL) {
		kick = blob_want_all_locked(b, true);
		ret = 0;
	} else if (ret == -EBUSY) {
		blob_want_all_locked(b, false);   /* taken up when the other process lets go */
		want_work(b);
		ret = 0;
	}
	pthread_mutex_unlock(&b->lock);
	if (kick)
		want_fetch(b);
	return ret;
}
