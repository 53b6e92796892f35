/* index.h - the tree the mount shows, built from the store's manifests. */
#ifndef BLOBFS_INDEX_H
#define BLOBFS_INDEX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "name.h"

struct manifest;
struct remote;
struct store;

enum inode_kind { INODE_DIR, INODE_BLOB, INODE_MANIFEST };

/* What a directory is; the tree has a fixed shape. */
enum dir_role {
	DIR_ROOT,
	DIR_MODELS, DIR_MODELS_HOST, DIR_MODELS_NS, DIR_MODELS_MODEL, DIR_TAG,
	DIR_TAG_SUB,          /* a directory inside a tag's (layer names are paths) */
	DIR_BLOBS,
	DIR_MANIFESTS, DIR_MANIFESTS_HOST, DIR_MANIFESTS_NS, DIR_MANIFESTS_MODEL,
};

struct inode;
struct itag;

struct dentry {
	char *name;
	struct inode *inode;
	bool hidden;          /* unlinked by the user inside a tag directory */
};

struct inode {
	uint64_t ino;
	enum inode_kind kind;
	uint64_t size;
	int64_t mtime_ns;
	unsigned nlink;
	uint64_t lookups;     /* the kernel's references, and index_ref pins; atomic */
	bool linked;          /* reachable from the root */
	/* directories */
	enum dir_role role;
	char *name;
	struct inode *parent; /* for a phantom, the directory it was looked up in */
	struct dentry *ents;  /* sorted by name */
	size_t nents, cap;
	bool phantom;         /* made up by a lookup so discovery can walk a path */
	struct itag *tag;     /* DIR_TAG, DIR_TAG_SUB, and the manifest file */
	/* INODE_BLOB */
	struct digest digest;
	/* where to fetch it: a remote of each source that names it (SOURCES_MAX at most) */
	struct remote **remotes;
	unsigned nremotes;
	unsigned tags;           /* how many tags use this blob */
	uint64_t local, local_ms; /* bytes local as last found on disk, and when; atomics */
};

struct itag {
	struct model_name name;
	char *bytes;          /* the manifest, exactly as stored */
	size_t len;
	struct manifest *m;
	int64_t mtime_ns;
	struct inode *dir;    /* models/<host>/<ns>/<model>/<tag> */
	struct inode *file;   /* manifests/<host>/<ns>/<model>/<tag> (also manifest.json) */
	struct remote *remote;
};

struct index;

/* remote_for gives the remote of a tag's repository (with a reference). */
struct index *index_new(struct store *s,
			struct remote *(*remote_for)(void *arg, const struct model_name *n),
			void *arg);
void index_free(struct index *ix);
/*
 * Call fn whenever a tag leaves the tree for good (a scan found it gone, or
 * index_drop_tag), with the index's write lock held. Set before the first scan.
 */
void index_on_remove(struct index *ix, void (*fn)(void *arg, const struct model_name *n),
		     void *arg);

/*
 * Bring the tree in line with manifests/: add new and changed tags, remove
 * tags that are gone. Tags added or removed are counted in *added / *removed.
 */
int index_scan(struct index *ix, unsigned *added, unsigned *removed);

/* The index lock: FUSE operations read, scans and removals write. */
void index_rdlock(struct index *ix);
void index_wrlock(struct index *ix);
void index_unlock(struct index *ix);

/* With the lock held. */
struct inode *index_get(struct index *ix, uint64_t ino);
/* A child of dir by name: exact match first, then case-insensitive. */
struct inode *index_child(struct index *ix, struct inode *dir, const char *name);
/* For a phantom directory, the real directory at the same path (or NULL). */
struct inode *index_real(struct index *ix, struct inode *dir);
/* The dentry of name in dir (exact), or NULL. */
struct dentry *index_dentry(struct inode *dir, const char *name);
/* A phantom directory under dir (write lock). */
struct inode *index_phantom(struct index *ix, struct inode *dir, const char *name);

/* The kernel took n more references to ino / dropped n (lock not held). */
void index_ref(struct index *ix, struct inode *in);
void index_forget(struct index *ix, uint64_t ino, uint64_t n);
/*
 * Drop a reference taken with index_ref (under the lock) to use an inode
 * after the lock is released; no lock held. Frees the inode if that was the
 * last reference to an inode no longer in the tree.
 */
void index_unpin(struct index *ix, struct inode *in);

/* Add a tag whose manifest was just stored (write lock taken inside). */
int index_add_tag(struct index *ix, const struct model_name *n);
/* Remove a tag from the tree (takes the locks); false if it was not there. */
bool index_drop_tag(struct index *ix, const struct model_name *n);
/* Is the digest still used by any tag (lock held)? */
bool index_has_blob(struct index *ix, const struct digest *d);
/* The first tag whose manifest names the digest, or NULL (lock held). */
struct itag *index_blob_tag(struct index *ix, const struct digest *d);
/* The inode number of a blob, or 0 (lock held). */
uint64_t index_blob_ino(struct index *ix, const struct digest *d);
/* Entries of dir changed outside the index (write lock held): move its mtime. */
void index_touch_dir(struct index *ix, struct inode *dir);
/*
 * The directories whose entries changed since the last call (after the first
 * scan), each once, in *inos (to free); takes the write lock.
 */
size_t index_take_changed(struct index *ix, uint64_t **inos);
/* The model name a DIR_MODELS_MODEL / DIR_MANIFESTS_MODEL path spells, with tag. */
bool index_dir_name(struct inode *dir, const char *tag, struct model_name *out);

#endif
