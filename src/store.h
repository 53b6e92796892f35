/* store.h - the content store on disk: Ollama's layout plus blobfs's state. */
#ifndef BLOBFS_STORE_H
#define BLOBFS_STORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "name.h"

struct chunkmap;
struct manifest;

/*
 * An open store. Every file under it is reached through these directory
 * descriptors, never through a link; a directory that does not exist (a store
 * opened without STORE_CREATE) is -1 and reads as empty.
 */
struct store {
	char *root;        /* absolute path, for messages and the statfs of the mount */
	char *manifests;   /* root/manifests as a path: only for inotify watches */
	int rootfd;
	int blobsfd;       /* blobs/: complete, verified blobs only */
	int manifestsfd;   /* manifests/<host>/<ns>/<model>/<tag> */
	int statefd;       /* .blobfs (0700): everything unfinished */
	int partialfd;     /* state/partial: sha256-<hex>, .map, .lock */
	int tmpfd;         /* state/tmp: files on their way to a rename */
	int quarantinefd;  /* state/quarantine: blobs that failed verification */
	bool writable;
	int lockfd;        /* state/lock: store_lock() flock()s it around index changes */
	pthread_mutex_t lock;  /* ...and holds this, for the threads of one process */
	unsigned long commit_syncs;  /* fsyncs of blobs/ by commits, under lock (tests count them) */
};

/*
 * The store root from --store (opt, may be NULL), $BLOBFS_STORE, or
 * ${XDG_DATA_HOME:-~/.local/share}/blobfs. Caller frees.
 */
char *store_default_root(const char *opt);

enum {
	STORE_CREATE = 1,  /* make the layout; it must be writable */
	STORE_TRUST = 2,   /* skip the ownership check (--trust-store) */
};

/*
 * Open a store. With STORE_CREATE, make the layout (and fail with a clear
 * message if it cannot be written); without, a missing store reads as empty.
 * A store that others may write to is refused (see blobfs(1), TRUST MODEL)
 * with -EPERM and a message that says why, unless STORE_TRUST is given.
 */
int store_open(const char *root, unsigned flags, struct store **out);
void store_close(struct store *s);

/*
 * The index lock serialises manifest writes, removals, gc, eviction and
 * commits, between processes and between the threads of one.
 */
int store_lock(struct store *s);
void store_unlock(struct store *s);

/* Paths, for messages only; caller frees. suffix is "" (data), ".map" or ".lock". */
char *store_blob_path(const struct store *s, const struct digest *d);
char *store_partial_path(const struct store *s, const struct digest *d,
			 const char *suffix);

/*
 * Find a tag case-insensitively; on success *found holds the stored casing
 * (stored casing wins). 0 or -ENOENT.
 */
int store_find_tag(const struct store *s, const struct model_name *want,
		   struct model_name *found);
/*
 * Read a tag's manifest bytes (exact name, as found by store_find_tag), and
 * the manifest's mtime if mtime_ns is not NULL.
 */
int store_read_manifest(const struct store *s, const struct model_name *n,
			char **buf, size_t *len, int64_t *mtime_ns);
/*
 * Does a manifest agree with the store? A blob that is complete in blobs/ was
 * verified, so a manifest that gives it another size is wrong, and the blob is
 * never the one blamed: 0, or -EBADMSG with the digest and both sizes in err.
 */
int store_check_manifest(const struct store *s, const struct manifest *m, char *err,
			 size_t errlen);
/*
 * Write a manifest atomically, reusing the casing of directories that already
 * exist. Takes the index lock. A manifest that store_check_manifest() refuses
 * is not written (-EBADMSG, logged).
 */
int store_write_manifest(struct store *s, const struct model_name *n,
			 const char *buf, size_t len);

struct store_tag {
	struct model_name name;
	int64_t mtime_ns;
};

/* Every tag under manifests/, sorted by name. */
int store_list_tags(const struct store *s, struct store_tag **tags, size_t *n);
void store_tags_free(struct store_tag *tags, size_t n);

/*
 * Digests referenced by every manifest in the store (sealed). Fails if a
 * manifest cannot be read: then nothing may be deleted.
 */
int store_referenced(const struct store *s, struct digest_set *out);

struct store_freed {
	unsigned blobs;     /* complete blobs deleted */
	unsigned partials;  /* partial downloads deleted */
	uint64_t bytes;     /* bytes given back to the filesystem */
};

/*
 * Remove a tag: its manifest, then each blob it used that no remaining
 * manifest references, then empty directories. Takes the index lock.
 * -ENOENT when the tag does not exist.
 */
int store_remove_tag(struct store *s, const struct model_name *n,
		     struct store_freed *freed);
/*
 * Delete blobs no manifest references, partial downloads of unreferenced
 * blobs, stale temporary files and quarantined blobs.
 */
int store_gc(struct store *s, struct store_freed *freed);

/*
 * Open a complete blob read-only. -ENOENT if absent. Anything at its name that
 * is not a regular file is moved to quarantine and reported as absent. A blob
 * of another size than expected is left alone (the manifest that gave the
 * size is wrong, not the verified blob): -EBADMSG, logged.
 */
int store_open_blob(const struct store *s, const struct digest *d,
		    uint64_t size, int *fd);

/* Open a complete blob read-only whatever its size (verify); fd, -ENOENT, -ELOOP, -EFTYPE. */
int store_open_complete(const struct store *s, const struct digest *d);
/*
 * How many bytes of a blob are local: all of it when it is complete, else
 * what its partial download's chunk map says is durable.
 */
uint64_t store_local_bytes(const struct store *s, const struct digest *d, uint64_t size);
/* Is the blob complete in blobs/, with that size? One fstatat: cheap. */
bool store_has_blob(const struct store *s, const struct digest *d, uint64_t size);

/*
 * Per-blob lock between processes: only its holder writes the partial file.
 * Returns the lock fd, -EBUSY when another process holds it, or an error.
 */
int store_blob_trylock(const struct store *s, const struct digest *d);
/* Release; with remove, delete the lock file first (the blob is done). */
void store_blob_unlock(const struct store *s, const struct digest *d, int lockfd,
		       bool remove);

/* Mark a complete blob as used now (its atime), for least-recently-used eviction. */
void store_touch_blob(const struct store *s, const struct digest *d);

/*
 * Keep complete blobs within max bytes, and leave headroom free on the
 * store's filesystem, with room for reserve more bytes (a blob about to be
 * fetched): delete the least recently used blobs first, skipping those
 * in_use() says are open or being fetched (it may be NULL). Takes the index
 * lock. Returns what was deleted in *freed.
 */
int store_evict(struct store *s, uint64_t max, uint64_t reserve,
		bool (*in_use)(void *arg, const struct digest *d), void *arg,
		struct store_freed *freed);

/* Disk space the blobs take, complete (blobs/) and partial (with their maps). */
uint64_t store_usage(const struct store *s);

/* ---- partial blobs: only the holder of the blob's lock writes them ---- */

/*
 * Open the blob's partial file for writing, creating it if need be, sized to
 * size, and a read-only descriptor of the same file. Whatever else is at its
 * name - a link, anything but a regular file with a single link - is deleted
 * with its map first, and the blob starts over.
 */
int store_partial_open(const struct store *s, const struct digest *d, uint64_t size,
		       int *wfd, int *rfd);
/* The partial blob's durable chunk map; -ENOENT, or -EINVAL if it does not fit. */
int store_partial_load_map(const struct store *s, const struct digest *d, uint64_t size,
			   struct chunkmap **out);
/* Which version of a chunk map a process last read (store_partial_peek). */
struct store_stamp {
	uint64_t ino;
	int64_t sec, nsec;   /* its ctime */
};

/*
 * For a process that does not hold the blob's lock: another process's partial
 * blob, read-only. If the map on disk is the one stamp names and *fd is open,
 * 0: nothing changed. Else 1 with the durable map in *map, the stamp updated,
 * and in *newfd the partial file the map describes, opened read-only, or -1
 * when that is the file *fd reads already. -ENOENT: no map (nothing durable
 * yet, or the blob was committed); -EAGAIN: the file changed while looking.
 */
int store_partial_peek(const struct store *s, const struct digest *d, uint64_t size,
		       struct store_stamp *stamp, int *fd, int *newfd, struct chunkmap **map);
/*
 * What processes that do not hold a partial blob wait for, so that its
 * holder fetches that first (blob_io.c): a reader appends the ranges its
 * parked reads need (at most STORE_WANTS_MAX at a time; -EFBIG once the file
 * is at its limit); the holder reads the ranges appended since *pos (at most
 * max), skipping those older than max_age_ms, and once it has read them all
 * drops those from the file, which so stays small. Both return a negative
 * errno or, for the holder, how many.
 */
#define STORE_WANTS_MAX 64
int store_partial_want(const struct store *s, const struct digest *d,
		       const uint64_t (*ranges)[2], size_t n);
int store_partial_wants(const struct store *s, const struct digest *d, uint64_t *pos,
			uint64_t max_age_ms, uint64_t (*out)[2], size_t max);
/* Replace its chunk map (encoded) atomically. */
int store_partial_save_map(const struct store *s, const struct digest *d,
			   const void *buf, size_t len);
/* Delete its partial file, map and wants, counting what that frees (freed may be NULL). */
void store_partial_remove(const struct store *s, const struct digest *d,
			  struct store_freed *freed);

/*
 * Move a finished partial file into blobs/ (atomic rename, then fsync), under
 * the index lock, if a manifest still names the blob. If none does (its tags
 * were removed while it was fetched), the partial state is deleted instead and
 * the answer is -ESTALE: nothing unreferenced is committed. The caller has
 * made the file's data durable (fdatasync) first.
 */
int store_commit_blob(struct store *s, const struct digest *d);
/*
 * store_commit_blob for n blobs at once, with one fsync of blobs/ for all of
 * the renames: rets[i] is d[i]'s answer. Every rename is durable when it
 * returns, as after n calls of store_commit_blob.
 */
void store_commit_blobs(struct store *s, const struct digest *d, size_t n, int *rets);
/* Move a partial file that failed verification out of the way. */
int store_quarantine_blob(const struct store *s, const struct digest *d);
/*
 * Move a complete blob that no longer matches its digest out of blobs/, and
 * make that durable: 0, or a negative errno (the move, or the sync of blobs/
 * after it, failed; logged).
 */
int store_quarantine_complete(const struct store *s, const struct digest *d,
			      const char *why);

#endif
