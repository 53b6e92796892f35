/*
 * index.c - the tree the mount shows.
 *
 *   models/<host>/<ns>/<model>/<tag>/<file>   one directory per tag; a file
 *                                             name may be a path (a/b/file)
 *   blobs/sha256-<hex>                        every blob a tag uses
 *   manifests/<host>/<ns>/<model>/<tag>       the manifest files
 *
 * It is built from the store's manifests and kept in line with them by
 * index_scan(). A blob is one inode however many names it has (its tag
 * directories and blobs/), like a hard link, so the kernel caches its pages
 * once and every view shares one struct blob. A tag's manifest is one inode
 * too (manifests/... and manifest.json).
 *
 * Inodes live until the kernel forgets them: removing a tag unlinks its
 * inodes from the tree, and they are freed when their reference count (the
 * kernel's lookups, plus one per child directory) drops to zero. A phantom
 * directory is one a lookup made up for a path the store does not have yet,
 * so that looking up models/<host>/<ns>/<model>/<tag> can walk down to the
 * tag and discover it from the registry; phantoms are never listed.
 *
 * Locking: ix->lock (rwlock) guards the tree, the inode table and every
 * inode field except lookups, local and local_ms, which are atomics, and a
 * blob inode's digest and size, set when it is made and never changed (so
 * fs.c may read them, and stat the store for them, without the lock).
 * ix->scan_lock serialises whole
 * scans and additions, so a scan that listed the store a moment ago never
 * undoes a tag that discovery has just added.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "index.h"
#include "log.h"
#include "manifest.h"
#include "remote.h"
#include "store.h"
#include "strmap.h"
#include "util.h"

#define ROOT_INO 1

struct bucket_entry {
	struct bucket_entry *next;
	struct inode *inode;
};

struct index {
	struct store *store;
	struct remote *(*remote_for)(void *arg, const struct model_name *n);
	void *remote_arg;
	void (*on_remove)(void *arg, const struct model_name *n);   /* set before the first scan */
	void *remove_arg;
	pthread_rwlock_t lock;
	pthread_mutex_t scan_lock;

	/* guarded by lock */
	struct bucket_entry **inos;    /* ino → inode */
	size_t ninos, ino_buckets;
	struct bucket_entry **blobs;   /* digest → blob inode */
	size_t blob_buckets;
	uint64_t next_ino;
	struct inode *root, *models, *blobdir, *manifests;
	struct strmap *tagmap;         /* "host/ns/model/tag" → struct itag *; written with scan_lock
	                                  and lock held, so either one is enough to read it */
	struct itag **tags;
	size_t ntags, tagcap;
	int64_t start_ns;
	bool live;                     /* the first scan is done: changes are news */
	uint64_t *changed;             /* directories whose entries changed, for fs */
	size_t nchanged, changedcap;
};

/* ---- tables ---- */

static size_t ino_hash(const struct index *ix, uint64_t ino)
{
	return (ino * 0x9E3779B97F4A7C15ULL) >> 20 & (ix->ino_buckets - 1);
}

static size_t blob_hash(const struct index *ix, const struct digest *d)
{
	uint64_t h;

	memcpy(&h, d->bytes, sizeof(h));
	return h & (ix->blob_buckets - 1);
}

static void table_insert(struct bucket_entry **tab, size_t b, struct inode *in)
{
	struct bucket_entry *e = xmalloc(sizeof(*e));

	e->inode = in;
	e->next = tab[b];
	tab[b] = e;
}

static void table_remove(struct bucket_entry **tab, size_t b, struct inode *in)
{
	for (struct bucket_entry **pp = &tab[b]; *pp; pp = &(*pp)->next) {
		if ((*pp)->inode == in) {
			struct bucket_entry *e = *pp;
			*pp = e->next;
			free(e);
			return;
		}
	}
}

static void grow_inos(struct index *ix)
{
	struct bucket_entry **old = ix->inos;
	size_t oldn = ix->ino_buckets;

	ix->ino_buckets *= 2;
	ix->inos = xcalloc(ix->ino_buckets, sizeof(*ix->inos));
	for (size_t i = 0; i < oldn; i++) {
		for (struct bucket_entry *e = old[i], *next; e; e = next) {
			next = e->next;
			size_t b = ino_hash(ix, e->inode->ino);
			e->next = ix->inos[b];
			ix->inos[b] = e;
		}
	}
	free(old);
}

static struct inode *new_inode(struct index *ix, enum inode_kind kind)
{
	struct inode *in = xcalloc(1, sizeof(*in));

	in->kind = kind;
	in->ino = ix->next_ino++;
	if (++ix->ninos > ix->ino_buckets)
		grow_inos(ix);
	table_insert(ix->inos, ino_hash(ix, in->ino), in);
	return in;
}

struct inode *index_get(struct index *ix, uint64_t ino)
{
	for (struct bucket_entry *e = ix->inos[ino_hash(ix, ino)]; e; e = e->next)
		if (e->inode->ino == ino)
			return e->inode;
	return NULL;
}

static struct inode *find_blob(struct index *ix, const struct digest *d)
{
	for (struct bucket_entry *e = ix->blobs[blob_hash(ix, d)]; e; e = e->next)
		if (digest_equal(&e->inode->digest, d))
			return e->inode;
	return NULL;
}

/* ---- directories ---- */

static size_t dent_pos(const struct inode *dir, const char *name, bool *found)
{
	size_t lo = 0, hi = dir->nents;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(dir->ents[mid].name, name);
		if (c == 0) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

struct dentry *index_dentry(struct inode *dir, const char *name)
{
	bool found;
	size_t i;

	if (dir->kind != INODE_DIR)
		return NULL;
	i = dent_pos(dir, name, &found);
	return found ? &dir->ents[i] : NULL;
}

/*
 * A directory's entries changed. Its mtime moves, as on any filesystem: the
 * kernel keeps listings (there is no opendir, so FOPEN_CACHE_DIR) and drops
 * one when the mtime it fetches differs. Once the index is live the change
 * is also noted, so fs can tell the kernel at once (index_take_changed).
 */
static void dir_changed(struct index *ix, struct inode *dir, int64_t when)
{
	if (ix->live) {
		when = (int64_t)wall_ms() * 1000000;
		if (ix->nchanged == ix->changedcap) {
			ix->changedcap = ix->changedcap ? 2 * ix->changedcap : 16;
			ix->changed = xrealloc(ix->changed, ix->changedcap * sizeof(*ix->changed));
		}
		ix->changed[ix->nchanged++] = dir->ino;
	}
	dir->mtime_ns = MAX(when, dir->mtime_ns + 1);
}

static void dir_add(struct index *ix, struct inode *dir, const char *name, struct inode *in,
		    int64_t when)
{
	bool found;
	size_t i = dent_pos(dir, name, &found);

	if (found)
		return;
	dir_changed(ix, dir, when);
	if (dir->nents == dir->cap) {
		dir->cap = dir->cap ? 2 * dir->cap : 8;
		dir->ents = xrealloc(dir->ents, dir->cap * sizeof(*dir->ents));
	}
	memmove(&dir->ents[i + 1], &dir->ents[i], (dir->nents - i) * sizeof(*dir->ents));
	dir->ents[i].name = xstrdup(name);
	dir->ents[i].inode = in;
	dir->ents[i].hidden = false;
	dir->nents++;
	if (in->kind == INODE_DIR)
		dir->nlink++;
	else
		in->nlink++;
}

static void dir_del(struct index *ix, struct inode *dir, const char *name)
{
	bool found;
	size_t i = dent_pos(dir, name, &found);

	if (!found)
		return;
	dir_changed(ix, dir, dir->mtime_ns);
	struct inode *in = dir->ents[i].inode;
	if (in->kind == INODE_DIR)
		dir->nlink--;
	else
		in->nlink--;
	free(dir->ents[i].name);
	memmove(&dir->ents[i], &dir->ents[i + 1], (dir->nents - i - 1) * sizeof(*dir->ents));
	dir->nents--;
}

static enum dir_role child_role(enum dir_role r)
{
	switch (r) {
	case DIR_MODELS: return DIR_MODELS_HOST;
	case DIR_MODELS_HOST: return DIR_MODELS_NS;
	case DIR_MODELS_NS: return DIR_MODELS_MODEL;
	case DIR_MODELS_MODEL: return DIR_TAG;
	case DIR_TAG: return DIR_TAG_SUB;
	case DIR_MANIFESTS: return DIR_MANIFESTS_HOST;
	case DIR_MANIFESTS_HOST: return DIR_MANIFESTS_NS;
	case DIR_MANIFESTS_NS: return DIR_MANIFESTS_MODEL;
	default: return r;
	}
}

static struct inode *new_dir(struct index *ix, struct inode *parent, const char *name,
			     enum dir_role role, int64_t mtime)
{
	struct inode *d = new_inode(ix, INODE_DIR);

	d->role = role;
	d->name = xstrdup(name);
	d->nlink = 2;
	d->mtime_ns = mtime;
	d->parent = parent;
	if (parent)
		__atomic_add_fetch(&parent->lookups, 1, __ATOMIC_RELAXED);
	return d;
}

/* The real child directory name of dir, made if missing. */
static struct inode *ensure_dir(struct index *ix, struct inode *dir, const char *name,
				int64_t mtime)
{
	struct dentry *de = index_dentry(dir, name);

	if (de)
		return de->inode;
	struct inode *d = new_dir(ix, dir, name, child_role(dir->role), mtime);
	d->linked = true;
	dir_add(ix, dir, name, d, mtime);
	return d;
}

struct inode *index_child(struct index *ix, struct inode *dir, const char *name)
{
	struct dentry *de;

	dir = index_real(ix, dir);
	if (!dir || dir->kind != INODE_DIR)
		return NULL;
	de = index_dentry(dir, name);
	if (!de) {
		for (size_t i = 0; i < dir->nents; i++) {
			if (strcasecmp(dir->ents[i].name, name) == 0) {
				de = &dir->ents[i];
				break;
			}
		}
	}
	return de && !de->hidden ? de->inode : NULL;
}

struct inode *index_real(struct index *ix, struct inode *dir)
{
	/*
	 * A phantom, or a directory pruned when its last tag went, is found again
	 * by its path: a tag added since may have made that path real.
	 */
	if (dir->linked || dir->ino == ROOT_INO)
		return dir;
	if (!dir->parent || !dir->name)
		return NULL;
	struct inode *parent = index_real(ix, dir->parent);
	if (!parent)
		return NULL;
	struct dentry *de = index_dentry(parent, dir->name);
	return de && de->inode->kind == INODE_DIR ? de->inode : NULL;
}

struct inode *index_phantom(struct index *ix, struct inode *dir, const char *name)
{
	struct inode *d = new_dir(ix, dir, name, child_role(dir->role), dir->mtime_ns);

	d->phantom = true;
	return d;
}

bool index_dir_name(struct inode *dir, const char *tag, struct model_name *out)
{
	struct inode *ns, *host;

	if (dir->role != DIR_MODELS_MODEL && dir->role != DIR_MANIFESTS_MODEL)
		return false;
	ns = dir->parent;
	host = ns ? ns->parent : NULL;
	if (!host || strlen(host->name) > NAME_HOST_MAX || strlen(ns->name) > NAME_PART_MAX ||
	    strlen(dir->name) > NAME_PART_MAX || strlen(tag) > NAME_PART_MAX ||
	    !name_part_valid(NAME_HOST, host->name) || !name_part_valid(NAME_NAMESPACE, ns->name) ||
	    !name_part_valid(NAME_MODEL, dir->name) || !name_part_valid(NAME_TAG, tag))
		return false;
	memset(out, 0, sizeof(*out));
	strcpy(out->host, host->name);
	strcpy(out->ns, ns->name);
	strcpy(out->model, dir->name);
	strcpy(out->tag, tag);
	return true;
}

/* ---- lifetime ---- */

static void free_inode(struct index *ix, struct inode *in);

/* Free in if nothing refers to it any more. Write lock held. */
static void maybe_free(struct index *ix, struct inode *in)
{
	if (in->ino == ROOT_INO || in->linked ||
	    __atomic_load_n(&in->lookups, __ATOMIC_ACQUIRE) > 0)
		return;
	free_inode(ix, in);
}

/* The memory of an inode; its table entry and parent are the caller's. */
static void inode_release(struct inode *in)
{
	for (size_t i = 0; i < in->nents; i++)
		free(in->ents[i].name);
	free(in->ents);
	free(in->name);
	for (unsigned i = 0; i < in->nremotes; i++)
		remote_unref(in->remotes[i]);
	free(in->remotes);
	free(in);
}

static void free_inode(struct index *ix, struct inode *in)
{
	struct inode *parent = in->parent;

	table_remove(ix->inos, ino_hash(ix, in->ino), in);
	ix->ninos--;
	inode_release(in);
	if (parent && __atomic_sub_fetch(&parent->lookups, 1, __ATOMIC_ACQ_REL) == 0)
		maybe_free(ix, parent);
}

void index_ref(struct index *ix, struct inode *in)
{
	(void)ix;
	__atomic_add_fetch(&in->lookups, 1, __ATOMIC_RELAXED);
}

void index_forget(struct index *ix, uint64_t ino, uint64_t n)
{
	struct inode *in;

	if (ino == ROOT_INO)
		return;
	pthread_rwlock_wrlock(&ix->lock);
	in = index_get(ix, ino);
	if (in) {
		uint64_t cur = __atomic_load_n(&in->lookups, __ATOMIC_ACQUIRE);
		__atomic_sub_fetch(&in->lookups, MIN(n, cur), __ATOMIC_ACQ_REL);
		maybe_free(ix, in);
	}
	pthread_rwlock_unlock(&ix->lock);
}

void index_unpin(struct index *ix, struct inode *in)
{
	uint64_t ino = in->ino;      /* in may be freed by a FORGET once the count drops */

	if (__atomic_sub_fetch(&in->lookups, 1, __ATOMIC_ACQ_REL) == 0)
		index_forget(ix, ino, 0);    /* finds it again, under the lock, if still there */
}

/* ---- tags ---- */

static char *tag_key(const struct model_name *n)
{
	return xasprintf("%s/%s/%s/%s", n->host, n->ns, n->model, n->tag);
}

static void itag_free(struct itag *t)
{
	if (!t)
		return;
	free(t->bytes);
	manifest_free(t->m);
	remote_unref(t->remote);
	free(t);
}

/* Every tag that names a blob names a place to fetch it from (blob_add_remote dedups). */
static void blob_inode_add_remote(struct inode *in, struct remote *r)
{
	if (!r || in->nremotes == SOURCES_MAX)
		return;
	for (unsigned i = 0; i < in->nremotes; i++)
		if (remote_same_source(in->remotes[i], r))
			return;
	in->remotes = xrealloc(in->remotes, (in->nremotes + 1) * sizeof(*in->remotes));
	in->remotes[in->nremotes++] = remote_ref(r);
}

/* The blob inode for a descriptor, shared by every tag that uses the digest. */
static struct inode *blob_inode(struct index *ix, const struct layer *l, struct itag *t)
{
	struct inode *in = find_blob(ix, &l->digest);

	if (in) {
		blob_inode_add_remote(in, t->remote);
	} else {
		char name[DIGEST_STR_LEN];
		in = new_inode(ix, INODE_BLOB);
		in->digest = l->digest;
		in->size = l->size;
		in->mtime_ns = t->mtime_ns;
		blob_inode_add_remote(in, t->remote);
		in->linked = true;
		table_insert(ix->blobs, blob_hash(ix, &l->digest), in);
		digest_filename(&l->digest, name);
		dir_add(ix, ix->blobdir, name, in, t->mtime_ns);
	}
	return in;
}

static int add_blob_layer(const struct layer *l, void *arg)
{
	struct itag *t = ((void **)arg)[1];
	struct index *ix = ((void **)arg)[0];

	blob_inode(ix, l, t)->tags++;
	return 0;
}

/*
 * A layer's file in the tag directory; a path ("a/b/file") gets its
 * directories, made once (manifest.c has refused a name that is both a
 * file and a directory). Write lock held.
 */
static void add_tag_file(struct index *ix, struct itag *t, struct inode *tagdir,
			 const char *path, struct inode *blob)
{
	struct inode *dir = tagdir;
	const char *p = path, *slash;

	while ((slash = strchr(p, '/')) != NULL) {
		char *name = xstrndup(p, (size_t)(slash - p));
		struct dentry *de = index_dentry(dir, name);
		struct inode *sub = de ? de->inode : NULL;

		if (!sub) {
			sub = new_dir(ix, dir, name, DIR_TAG_SUB, t->mtime_ns);
			sub->linked = true;
			sub->tag = t;
			dir_add(ix, dir, name, sub, t->mtime_ns);
		}
		free(name);
		dir = sub;
		p = slash + 1;
	}
	dir_add(ix, dir, p, blob, t->mtime_ns);
}

/* Paths in the order of their directories' entries: '/' ends a component. */
static int cmp_file(const void *a, const void *b, void *arg)
{
	const struct manifest *m = arg;
	const unsigned char *p = (const unsigned char *)m->layers[*(const size_t *)a].file;
	const unsigned char *q = (const unsigned char *)m->layers[*(const size_t *)b].file;

	for (; *p && *p == *q; p++, q++)
		;
	return (*p == '/' ? 0 : *p) - (*q == '/' ? 0 : *q);
}

/*
 * A tag's layer files, added in their directories' order: each entry then
 * goes at the end of its directory's sorted array, where manifest order (a
 * hostile one reversed) moved the whole array each time, under the write lock.
 */
static void add_tag_files(struct index *ix, struct itag *t, struct inode *tagdir)
{
	size_t n = t->m->nlayers, *order = xmalloc((n ? n : 1) * sizeof(*order));

	for (size_t i = 0; i < n; i++)
		order[i] = i;
	qsort_r(order, n, sizeof(*order), cmp_file, t->m);
	for (size_t i = 0; i < n; i++)
		add_tag_file(ix, t, tagdir, t->m->layers[order[i]].file,
			     find_blob(ix, &t->m->layers[order[i]].digest));
	free(order);
}

/* Put a parsed tag into the tree. Write lock held. */
static void link_tag(struct index *ix, struct itag *t)
{
	const struct model_name *n = &t->name;
	struct inode *h, *ns, *m, *tagdir, *mfile;
	char *key = tag_key(n);
	void *arg[2] = { ix, t };

	manifest_for_each_blob(t->m, add_blob_layer, arg);

	mfile = new_inode(ix, INODE_MANIFEST);
	mfile->size = t->len;
	mfile->mtime_ns = t->mtime_ns;
	mfile->linked = true;
	mfile->tag = t;

	h = ensure_dir(ix, ix->models, n->host, t->mtime_ns);
	ns = ensure_dir(ix, h, n->ns, t->mtime_ns);
	m = ensure_dir(ix, ns, n->model, t->mtime_ns);
	tagdir = new_dir(ix, m, n->tag, DIR_TAG, t->mtime_ns);
	tagdir->linked = true;
	tagdir->tag = t;
	dir_add(ix, m, n->tag, tagdir, t->mtime_ns);
	dir_add(ix, tagdir, t->m->config.file, find_blob(ix, &t->m->config.digest), t->mtime_ns);
	dir_add(ix, tagdir, "manifest.json", mfile, t->mtime_ns);
	add_tag_files(ix, t, tagdir);

	h = ensure_dir(ix, ix->manifests, n->host, t->mtime_ns);
	ns = ensure_dir(ix, h, n->ns, t->mtime_ns);
	m = ensure_dir(ix, ns, n->model, t->mtime_ns);
	dir_add(ix, m, n->tag, mfile, t->mtime_ns);

	t->dir = tagdir;
	t->file = mfile;
	strmap_put(ix->tagmap, key, (uint64_t)(uintptr_t)t);
	free(key);
	if (ix->ntags == ix->tagcap) {
		ix->tagcap = ix->tagcap ? 2 * ix->tagcap : 64;
		ix->tags = xrealloc(ix->tags, ix->tagcap * sizeof(*ix->tags));
	}
	ix->tags[ix->ntags++] = t;
}

/* Remove empty directories from dir up to (not including) stop. */
static void prune(struct index *ix, struct inode *dir, struct inode *stop)
{
	while (dir && dir != stop && dir->nents == 0 && dir->linked) {
		struct inode *parent = dir->parent;
		dir_del(ix, parent, dir->name);
		dir->linked = false;
		maybe_free(ix, dir);
		dir = parent;
	}
}

static int drop_blob_layer(const struct layer *l, void *arg)
{
	struct index *ix = arg;
	struct inode *in = find_blob(ix, &l->digest);
	char name[DIGEST_STR_LEN];

	if (!in || --in->tags > 0)
		return 0;
	digest_filename(&l->digest, name);
	dir_del(ix, ix->blobdir, name);
	table_remove(ix->blobs, blob_hash(ix, &l->digest), in);
	in->linked = false;
	maybe_free(ix, in);
	return 0;
}

/*
 * Unlink everything under a tag directory, its own directories first, deepest
 * first; each goes when the kernel forgets it. Write lock held. The depth is
 * bounded by LAYER_DEPTH_MAX.
 */
static void empty_tag_dir(struct index *ix, struct inode *dir)
{
	while (dir->nents) {
		struct dentry *de = &dir->ents[dir->nents - 1];
		struct inode *in = de->inode;

		if (in->kind == INODE_DIR && in->role == DIR_TAG_SUB) {
			empty_tag_dir(ix, in);
			dir_del(ix, dir, de->name);
			in->linked = false;
			in->tag = NULL;
			maybe_free(ix, in);
		} else {
			dir_del(ix, dir, de->name);
		}
	}
}

/* Remove a tag from the tree. scan_lock and the write lock held. */
/* A tag leaves the tree for good (not replaced). Write lock held. */
static void removed_hook(struct index *ix, const struct model_name *n)
{
	if (ix->on_remove)
		ix->on_remove(ix->remove_arg, n);
}

static void index_remove_tag(struct index *ix, struct itag *t)
{
	struct inode *tagdir = t->dir, *mfile = t->file;
	struct inode *mdir = tagdir->parent;
	char *key = tag_key(&t->name);

	/* Files in the tag directory lose this name; the directory stays a path. */
	empty_tag_dir(ix, tagdir);
	dir_del(ix, mdir, t->name.tag);
	tagdir->linked = false;
	tagdir->tag = NULL;
	prune(ix, mdir, ix->models);
	maybe_free(ix, tagdir);

	struct dentry *h = index_dentry(ix->manifests, t->name.host);
	struct dentry *ns = h ? index_dentry(h->inode, t->name.ns) : NULL;
	struct dentry *m = ns ? index_dentry(ns->inode, t->name.model) : NULL;
	if (m) {
		dir_del(ix, m->inode, t->name.tag);
		prune(ix, m->inode, ix->manifests);
	}
	mfile->linked = false;
	mfile->tag = NULL;
	maybe_free(ix, mfile);

	manifest_for_each_blob(t->m, drop_blob_layer, ix);

	strmap_put(ix->tagmap, key, 0);
	free(key);
	for (size_t i = 0; i < ix->ntags; i++) {
		if (ix->tags[i] == t) {
			ix->tags[i] = ix->tags[--ix->ntags];
			break;
		}
	}
	itag_free(t);
}

bool index_drop_tag(struct index *ix, const struct model_name *n)
{
	char *key = tag_key(n);
	uint64_t v = 0;

	pthread_mutex_lock(&ix->scan_lock);
	pthread_rwlock_wrlock(&ix->lock);
	strmap_get(ix->tagmap, key, &v);
	if (v) {
		removed_hook(ix, n);
		index_remove_tag(ix, (struct itag *)(uintptr_t)v);
	}
	pthread_rwlock_unlock(&ix->lock);
	pthread_mutex_unlock(&ix->scan_lock);
	free(key);
	return v != 0;
}

bool index_has_blob(struct index *ix, const struct digest *d)
{
	return find_blob(ix, d) != NULL;
}

struct itag *index_blob_tag(struct index *ix, const struct digest *d)
{
	for (size_t i = 0; i < ix->ntags; i++)
		if (ix->tags[i]->m && manifest_references(ix->tags[i]->m, d))
			return ix->tags[i];
	return NULL;
}

uint64_t index_blob_ino(struct index *ix, const struct digest *d)
{
	struct inode *in = find_blob(ix, d);

	return in ? in->ino : 0;
}

/* Read and parse a stored manifest into a new, unlinked tag. */
static struct itag *load_tag(struct index *ix, const struct model_name *n)
{
	struct itag *t = xcalloc(1, sizeof(*t));
	char err[256];
	int ret;

	t->name = *n;
	ret = store_read_manifest(ix->store, n, &t->bytes, &t->len, &t->mtime_ns);
	if (ret == 0)
		ret = manifest_parse(t->bytes, t->len, &t->m, err, sizeof(err));
	else
		snprintf(err, sizeof(err), "%s", file_strerror(ret));
	if (ret == 0)   /* one that names a verified blob with another size is wrong */
		ret = store_check_manifest(ix->store, t->m, err, sizeof(err));
	if (ret < 0) {
		char name[NAME_FORMAT_MAX];
		name_format(n, name, sizeof(name));
		log_warn("not showing '%s': %s", name, err);
		itag_free(t);
		return NULL;
	}
	t->remote = ix->remote_for(ix->remote_arg, n);
	if (!t->remote) {
		itag_free(t);
		return NULL;
	}
	return t;
}

struct pending {
	struct itag *add;
	struct itag *remove;
};

/*
 * What changed since the last scan: tags that are new or rewritten (read from
 * the store here, without the tree lock) and tags that are gone. HAVE is the
 * tree's tags as they were; fills P, returns how many entries.
 */
static size_t collect_changes(struct index *ix, const struct store_tag *tags, size_t n,
			      struct itag **have, size_t nhave, struct pending *p)
{
	struct strmap *seen = strmap_new();
	size_t np = 0;

	for (size_t i = 0; i < n; i++) {
		char *key = tag_key(&tags[i].name);
		uint64_t v = 0;
		struct itag *old;
		strmap_put(seen, key, 1);
		strmap_get(ix->tagmap, key, &v);
		old = (struct itag *)(uintptr_t)v;
		free(key);
		if (old && old->mtime_ns == tags[i].mtime_ns)
			continue;
		struct itag *t = load_tag(ix, &tags[i].name);
		if (!t && !old)
			continue;
		p[np].add = t;
		p[np].remove = old;
		np++;
	}
	for (size_t i = 0; i < nhave; i++) {
		char *key = tag_key(&have[i]->name);
		if (!strmap_get(seen, key, NULL))
			p[np++].remove = have[i];
		free(key);
	}
	strmap_free(seen);
	return np;
}

/* Swap the changed tags into the tree. ix->lock is held for writing. */
static void apply_changes(struct index *ix, const struct pending *p, size_t np,
			  unsigned *added, unsigned *removed)
{
	for (size_t i = 0; i < np; i++) {
		if (p[i].remove) {
			if (!p[i].add) {
				(*removed)++;
				removed_hook(ix, &p[i].remove->name);
			}
			index_remove_tag(ix, p[i].remove);
		}
		if (p[i].add) {
			link_tag(ix, p[i].add);
			(*added)++;
		}
	}
}

int index_scan(struct index *ix, unsigned *added, unsigned *removed)
{
	struct store_tag *tags;
	size_t n;
	struct pending *p;
	size_t np;

	*added = *removed = 0;
	pthread_mutex_lock(&ix->scan_lock);
	store_list_tags(ix->store, &tags, &n);
	p = xcalloc(n + ix->ntags + 1, sizeof(*p));

	/* Read what is new or changed without holding the tree lock. */
	pthread_rwlock_rdlock(&ix->lock);
	struct itag **have = xmalloc((ix->ntags + 1) * sizeof(*have));
	size_t nhave = ix->ntags;
	if (nhave)
		memcpy(have, ix->tags, nhave * sizeof(*have));
	pthread_rwlock_unlock(&ix->lock);

	np = collect_changes(ix, tags, n, have, nhave, p);

	pthread_rwlock_wrlock(&ix->lock);
	apply_changes(ix, p, np, added, removed);
	ix->live = true;
	pthread_rwlock_unlock(&ix->lock);
	pthread_mutex_unlock(&ix->scan_lock);

	free(have);
	free(p);
	store_tags_free(tags, n);
	return 0;
}

int index_add_tag(struct index *ix, const struct model_name *want)
{
	struct model_name n;
	int ret;

	pthread_mutex_lock(&ix->scan_lock);
	ret = store_find_tag(ix->store, want, &n);
	if (ret < 0)
		goto out;
	struct itag *t = load_tag(ix, &n);
	if (!t) {
		ret = -EINVAL;
		goto out;
	}
	char *key = tag_key(&n);
	uint64_t v = 0;
	pthread_rwlock_wrlock(&ix->lock);
	strmap_get(ix->tagmap, key, &v);
	if (v)
		index_remove_tag(ix, (struct itag *)(uintptr_t)v);
	link_tag(ix, t);
	pthread_rwlock_unlock(&ix->lock);
	free(key);
out:
	pthread_mutex_unlock(&ix->scan_lock);
	return ret;
}

void index_touch_dir(struct index *ix, struct inode *dir)
{
	dir_changed(ix, dir, dir->mtime_ns);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

size_t index_take_changed(struct index *ix, uint64_t **inos)
{
	size_t n, k = 0;

	pthread_rwlock_wrlock(&ix->lock);
	*inos = ix->changed;
	n = ix->nchanged;
	ix->changed = NULL;
	ix->nchanged = ix->changedcap = 0;
	pthread_rwlock_unlock(&ix->lock);
	if (n)
		qsort(*inos, n, sizeof(**inos), cmp_u64);
	for (size_t i = 0; i < n; i++)
		if (k == 0 || (*inos)[k - 1] != (*inos)[i])
			(*inos)[k++] = (*inos)[i];
	return k;
}

/* ---- setup ---- */

struct index *index_new(struct store *s,
			struct remote *(*remote_for)(void *arg, const struct model_name *n),
			void *arg)
{
	struct index *ix = xcalloc(1, sizeof(*ix));

	ix->store = s;
	ix->remote_for = remote_for;
	ix->remote_arg = arg;
	pthread_rwlock_init(&ix->lock, NULL);
	pthread_mutex_init(&ix->scan_lock, NULL);
	ix->ino_buckets = 1024;
	ix->inos = xcalloc(ix->ino_buckets, sizeof(*ix->inos));
	ix->blob_buckets = 4096;
	ix->blobs = xcalloc(ix->blob_buckets, sizeof(*ix->blobs));
	ix->next_ino = ROOT_INO;
	ix->tagmap = strmap_new();
	ix->start_ns = (int64_t)wall_ms() * 1000000;

	ix->root = new_dir(ix, NULL, "", DIR_ROOT, ix->start_ns);
	ix->root->linked = true;
	ix->models = ensure_dir(ix, ix->root, "models", ix->start_ns);
	ix->models->role = DIR_MODELS;
	ix->blobdir = ensure_dir(ix, ix->root, "blobs", ix->start_ns);
	ix->blobdir->role = DIR_BLOBS;
	ix->manifests = ensure_dir(ix, ix->root, "manifests", ix->start_ns);
	ix->manifests->role = DIR_MANIFESTS;
	return ix;
}

void index_on_remove(struct index *ix, void (*fn)(void *arg, const struct model_name *n),
		     void *arg)
{
	ix->on_remove = fn;
	ix->remove_arg = arg;
}

void index_free(struct index *ix)
{
	if (!ix)
		return;
	pthread_mutex_lock(&ix->scan_lock);
	pthread_rwlock_wrlock(&ix->lock);
	while (ix->ntags)
		index_remove_tag(ix, ix->tags[ix->ntags - 1]);
	pthread_rwlock_unlock(&ix->lock);
	pthread_mutex_unlock(&ix->scan_lock);
	/* Whatever the kernel still held goes now. */
	for (size_t b = 0; b < ix->ino_buckets; b++) {
		while (ix->inos[b]) {
			struct bucket_entry *e = ix->inos[b];
			ix->inos[b] = e->next;
			inode_release(e->inode);
			free(e);
		}
	}
	for (size_t b = 0; b < ix->blob_buckets; b++) {
		while (ix->blobs[b]) {
			struct bucket_entry *e = ix->blobs[b];
			ix->blobs[b] = e->next;
			free(e);
		}
	}
	free(ix->inos);
	free(ix->blobs);
	free(ix->tags);
	free(ix->changed);
	strmap_free(ix->tagmap);
	pthread_rwlock_destroy(&ix->lock);
	pthread_mutex_destroy(&ix->scan_lock);
	free(ix);
}

void index_rdlock(struct index *ix)
{
	pthread_rwlock_rdlock(&ix->lock);
}

void index_wrlock(struct index *ix)
{
	pthread_rwlock_wrlock(&ix->lock);
}

void index_unlock(struct index *ix)
{
	pthread_rwlock_unlock(&ix->lock);
}
