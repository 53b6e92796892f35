/* store.h - the content store on disk: Ollama's layout plus blobfs's state. */
#ifndef BLOBFS_STORE_H
#define BLOBFS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "name.h"

struct manifest;

struct store {
	char *root;
	char *blobs;       /* root/blobs: complete, verified blobs only */
	char *manifests;   /* root/manifests/<host>/<ns>/<model>/<tag> */
	char *state;       /* root/.blobfs (0700): everything unfinished */
	char *partial;     /* state/partial: sha256-<hex>, .map, .lock */
	char *tmp;         /* state/tmp: files on their way to a rename */
	char *quarantine;  /* state/quarantine: blobs that failed verification */
	bool writable;
	int lockfd;        /* state/lock, flock()ed around index changes */
};

/*
 * The store root from --store (opt, may be NULL), $BLOBFS_STORE, or
 * ${XDG_DATA_HOME:-~/.local/share}/blobfs. Caller frees.
 */
char *store_default_root(const char *opt);

/*
 * Open a store. With create, make the layout (and fail with a clear message if
 * it cannot be written); without, a missing store reads as empty.
 */
int store_open(const char *root, bool create, struct store **out);
void store_close(struct store *s);

/* The index lock serialises manifest writes, removals and gc between processes. */
int store_lock(struct store *s);
void store_unlock(struct store *s);

/* Paths; caller frees. */
char *store_blob_path(const struct store *s, const struct digest *d);
/* suffix is "" (data), ".map" or ".lock" */
char *store_partial_path(const struct store *s, const struct digest *d,
			 const char *suffix);
char *store_manifest_path(const struct store *s, const struct model_name *n);

/*
 * Find a tag case-insensitively; on success *found holds the stored casing
 * (stored casing wins). 0 or -ENOENT.
 */
int store_find_tag(const struct store *s, const struct model_name *want,
		   struct model_name *found);
/* Read a tag's manifest bytes (exact name, as found by store_find_tag). */
int store_read_manifest(const struct store *s, const struct model_name *n,
			char **buf, size_t *len);
/*
 * Write a manifest atomically, reusing the casing of directories that already
 * exist. Takes the index lock.
 */
int store_write_manifest(struct store *s, const struct model_name *n,
			 const char *buf, size_t len);

struct store_tag {
	struct model_name name;
	char *path;
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
 * Open a complete blob read-only. -ENOENT if absent. A file whose size is not
 * the expected one is moved to quarantine and reported as absent.
 */
int store_open_blob(const struct store *s, const struct digest *d,
		    uint64_t size, int *fd);

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
 * store's filesystem: delete the least recently used blobs first, skipping
 * those in_use() says are open or being fetched (it may be NULL). Takes the
 * index lock. Returns what was deleted in *freed.
 */
int store_evict(struct store *s, uint64_t max,
		bool (*in_use)(void *arg, const struct digest *d), void *arg,
		struct store_freed *freed);

/* Disk space the blobs take, complete (blobs/) and partial (with their maps). */
uint64_t store_usage(const struct store *s);

/* Move a finished partial file into blobs/ (atomic rename, then fsync). */
int store_commit_blob(const struct store *s, const struct digest *d);
/* Move a partial file that failed verification out of the way. */
int store_quarantine_blob(const struct store *s, const struct digest *d);
/* Move a complete blob that no longer matches its digest out of blobs/. */
int store_quarantine_complete(const struct store *s, const struct digest *d,
			      const char *why);

#endif
