/*
 * fs.c - FUSE low-level operations.
 *
 * Every operation replies exactly once. Reads of bytes not yet local never
 * hold a worker thread: the request is parked on the blob as a waiter and
 * answered by whichever thread makes its bytes present (or gives up on them);
 * local bytes are spliced from the backing file (fuse_reply_data with an fd
 * buffer), never copied through this process. Files are immutable, so opens
 * keep the kernel's page cache and mmap works; there is no direct_io. Where
 * the kernel allows it, complete blobs open in FUSE passthrough instead
 * (passthrough.c): the kernel reads the store's file without asking us.
 *
 * The mount is read-only but for removal: rmdir of a tag directory (and
 * unlink of a manifest file) removes the tag from the store. Unlinking one
 * file inside a tag directory hides it from that directory for the life of
 * the mount and changes nothing on disk, so `rm -r` of a tag works without
 * removing a blob that other tags share; the directory can be removed once
 * nothing is left in it. A directory inside a tag directory (a layer named
 * by a path) is hidden the same way once nothing in it is left, so `rm -r`
 * works at any depth. Everything else that would write answers EROFS.
 *
 * Listings: opendir answers ENOSYS where the kernel allows it, which then
 * caches directory listings itself (FOPEN_CACHE_DIR); entries come with
 * their attributes (readdirplus). A
 * directory's mtime moves whenever its entries change, and changes the
 * kernel did not make itself are pushed to it (tell_kernel).
 *
 * Discovery (a lookup of a tag the store lacks) lives in discover.c; the
 * lookup waits there without a thread, like a parked read.
 *
 * Interrupts: a request answered later (a parked read, a lookup waiting for
 * discovery) is a `struct later`; see there. Whoever takes it back from what
 * it waits on replies, so it is answered exactly once, and an interrupt
 * that comes before it waits is acted on as soon as it does.
 *
 * Other users: with allow_other the kernel checks modes (default_permissions,
 * added by cmd_mount.c); removal and discovery are the mount owner's (and
 * root's) unless -o allow_other_remove / allow_other_discover.
 */
#define FUSE_USE_VERSION 312
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "bdi.h"
#include "blob.h"
#include "chunkmap.h"
#include "discover.h"
#include "fs.h"
#include "index.h"
#include "log.h"
#include "manifest.h"
#include "mountcheck.h"
#include "passthrough.h"
#include "prefetch.h"
#include "push.h"
#include "remote.h"
#include "status.h"
#include "store.h"
#include "util.h"
#include "watch.h"

#define DIR_TIMEOUT 0.5          /* tags come and go (see NEG_TIMEOUT) */
#define FILE_TIMEOUT 3600.0      /* file contents and sizes never change */
#define NEG_TIMEOUT 0.5          /* a tag pulled elsewhere shows within a second, the watch included */
#define WATCH_DEPTH 3            /* manifests/<host>/<ns>/<model>: the directories of tags */
#define RESCAN_S 30              /* a rescan this often, whatever inotify says */
#define RA_START (1u << 20)
#define RA_MAX (64u << 20)
#define SEQ_SLACK (4u << 20)     /* out-of-order kernel read-ahead still counts as sequential */
#define BACKGROUND_AFTER (2u << 20) /* sequential bytes before background completion starts */
#define WHOLE_READ (2u << 20)    /* the first read of a blob this small fetches all of it */
#define PUSH_AFTER (4u << 20)    /* sequential bytes of a complete blob before it is pushed */
/*
 * The largest READ: 252 pages. libfuse splices a reply only if the header,
 * the data and three pages of slack fit its pipe, which grows to 1 MiB; a
 * 1 MiB READ does not, and is copied through a buffer instead (bench/RESULTS.md).
 */
#define READ_MAX (252u << 12)
#define READAHEAD_KB 4096        /* read-ahead and fault read-around, where root may set it */

#define XATTR_DIGEST "user.blobfs.digest"
#define XATTR_CACHED "user.blobfs.cached"

/* Open files, so what the kernel never released is freed at exit. */
struct handle {
	struct handle *prev, *next;
	void (*free)(struct handle *h);
};

struct fs {
	struct session *sess;
	struct index *ix;
	struct watch *watch;
	struct status_writer *status;
	struct pusher *pusher;
	struct read_stats rs;        /* atomics */
	struct fuse_session *se;
	struct fs_opts o;
	uid_t uid;
	gid_t gid;
	bool no_opendir;             /* set at init */
	struct passthrough *pt;      /* its own lock */
	struct prefetch *pf;         /* its own lock; NULL: no prefetch of walked tags */
	pthread_mutex_t open_lock;   /* guards the open list */
	struct handle open;          /* open files (circular) */
	struct discoverer *disc;
};

/*
 * An open file. Reads touch it only under its lock, and release takes the
 * lock before freeing it: the kernel orders a release after the file's last
 * reply, but that order passes through /dev/fuse, where neither a reader of
 * this code nor ThreadSanitizer can see it.
 */
struct ofile {
	struct handle h;             /* first */
	enum inode_kind kind;
	struct blob *blob;           /* INODE_BLOB */
	bool passthrough;            /* the kernel reads it (passthrough.c); set at open */
	char *data;                  /* INODE_MANIFEST: its bytes */
	size_t len;
	pthread_mutex_t lock;        /* guards all of the above's use, and: */
	uint64_t next_off, seq_bytes, ra;
	bool background;
};

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void count(uint64_t *counter)
{
	__atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

/* ---- requests answered later ---- */

/*
 * A request answered from another thread: a read parked on a blob, a lookup
 * waiting for discovery. What it waits on hands it back once, either to the
 * thread that answers it or to cancel() (an interrupt); whoever gets it
 * replies, so it is answered exactly once.
 *
 * The interrupt callback is registered before the request is handed over,
 * and libfuse calls it at once if the kernel interrupted the request
 * earlier, when there is nothing yet to cancel: so while the request is
 * being started the callback only notes the interrupt, and later_waiting()
 * acts on it once the request waits. Before any other reply the callback is
 * unregistered, which waits for a running one to finish. Two references
 * keep the memory: the starting thread's and the answer's.
 */
enum { LATER_STARTING, LATER_WAITING, LATER_INTERRUPTED };

struct later {
	struct fs *fs;
	fuse_req_t req;
	int state;                   /* atomic: LATER_* */
	int refs;                    /* atomic */
	bool (*cancel)(struct later *l);   /* take it back from what it waits on */
	void (*free)(struct later *l);
};

static void later_put(struct later *l)
{
	if (__atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) == 0)
		l->free(l);
}

static void later_interrupted(fuse_req_t req, void *data)
{
	struct later *l = data;
	int starting = LATER_STARTING;

	if (__atomic_compare_exchange_n(&l->state, &starting, LATER_INTERRUPTED, false,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return;                      /* later_waiting() will see it */
	if (l->cancel(l)) {
		fuse_reply_err(req, EINTR);  /* inside the callback: no unregistering */
		later_put(l);
	}
}

static void later_start(struct later *l, struct fs *fs, fuse_req_t req,
			bool (*cancel)(struct later *l), void (*release)(struct later *l))
{
	l->fs = fs;
	l->req = req;
	l->state = LATER_STARTING;
	l->refs = 2;
	l->cancel = cancel;
	l->free = release;
	fuse_req_interrupt_func(req, later_interrupted, l);
}

/* Before the answer's reply: no interrupt callback runs from here on. */
static void later_unregister(struct later *l)
{
	fuse_req_interrupt_func(l->req, NULL, NULL);
}

/* The request waits now (it was handed over); the starting thread lets go of it. */
static void later_waiting(struct later *l)
{
	int starting = LATER_STARTING;

	if (!__atomic_compare_exchange_n(&l->state, &starting, LATER_WAITING, false,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
	    l->cancel(l)) {
		/* interrupted before it waited, and still ours to answer */
		later_unregister(l);
		fuse_reply_err(l->req, EINTR);
		later_put(l);
	}
	later_put(l);
}

/*
 * It was never handed over, and the starting thread answered it itself
 * (after later_unregister()): both references go.
 */
static void later_drop(struct later *l)
{
	__atomic_store_n(&l->refs, 1, __ATOMIC_RELAXED);
	later_put(l);
}

static void handle_add(struct fs *fs, struct handle *h, void (*release)(struct handle *h))
{
	h->free = release;
	pthread_mutex_lock(&fs->open_lock);
	h->next = &fs->open;
	h->prev = fs->open.prev;
	fs->open.prev->next = h;
	fs->open.prev = h;
	pthread_mutex_unlock(&fs->open_lock);
}

/* Take h off the open list and free it. */
static void handle_free(struct fs *fs, struct handle *h)
{
	pthread_mutex_lock(&fs->open_lock);
	h->prev->next = h->next;
	h->next->prev = h->prev;
	pthread_mutex_unlock(&fs->open_lock);
	h->free(h);
}

/* The session is over: free what the kernel still had open. */
static void free_handles(struct fs *fs)
{
	while (fs->open.next != &fs->open)
		handle_free(fs, fs->open.next);
}

/*
 * The kernel keeps directory listings (see list_dir): when the index changes
 * directories behind its back (a scan, discovery, a tag removed through its
 * other path), drop its copies now rather than when their attributes expire.
 * Only invalidation that takes no inode lock is used, so this is safe inside
 * any request.
 */
static void tell_kernel(struct fs *fs)
{
	uint64_t *inos;
	size_t n = index_take_changed(fs->ix, &inos);

	for (size_t i = 0; i < n && fs->se; i++)
		fuse_lowlevel_notify_inval_inode(fs->se, inos[i], 0, 0);
	free(inos);
}

/* ---- attributes ---- */

#define LOCAL_CACHE_MS 1000   /* how long a count from the disk is trusted */

/*
 * Bytes of a blob that are local, cheaply: the live blob if this process has
 * it, else what the store holds. A complete blob is one stat away, and is
 * what a reader has just fetched, so it is always asked for; only the count
 * of a partial one (a chunk map to read) is remembered in the inode, for a
 * second, so that a listing of thousands of files stays cheap. What the live
 * blob said is remembered too, for when it is gone.
 */
static uint64_t local_bytes(struct fs *fs, struct inode *in)
{
	struct blob *b = fs->sess->cache ? blob_find(fs->sess->cache, &in->digest) : NULL;
	struct store *s = fs->sess->store;
	uint64_t local, now = now_ms();

	if (b) {
		struct blob_stats st;
		blob_stats(b, &st);
		blob_put(b);
		local = st.present;
	} else if (store_has_blob(s, &in->digest, in->size)) {
		return in->size;
	} else if (now - __atomic_load_n(&in->local_ms, __ATOMIC_ACQUIRE) < LOCAL_CACHE_MS) {
		return __atomic_load_n(&in->local, __ATOMIC_RELAXED);
	} else {
		local = store_local_bytes(s, &in->digest, in->size);
	}
	__atomic_store_n(&in->local, local, __ATOMIC_RELAXED);
	__atomic_store_n(&in->local_ms, now, __ATOMIC_RELEASE);
	return local;
}

/*
 * Directories are 0755; with -o allow_other_remove, those that removal
 * changes are 0777, so that the kernel's mode checks (default_permissions)
 * let other users remove (see op_rmdir). Writing stays EROFS.
 */
static mode_t dir_mode(const struct fs *fs, const struct inode *in)
{
	return fs->o.others_remove && in->role != DIR_ROOT && in->role != DIR_BLOBS ? 0777 : 0755;
}

/*
 * A blob's st_blocks, what of it is local, set once the index lock is
 * dropped: it may stat the store, and a slow disk must hold up only the
 * request that asked (test_lock_io.py). The caller holds a reference to in
 * (index_ref), which keeps it alive without the lock; its digest and size
 * never change (index.c).
 */
static void add_blocks(struct fs *fs, struct inode *in, struct stat *st)
{
	if (in->kind == INODE_BLOB)
		st->st_blocks = (blkcnt_t)((local_bytes(fs, in) + 511) / 512);
}

/* Attributes of in; a blob's st_blocks is left 0, for add_blocks. Index lock held. */
static void fill_attr(struct fs *fs, struct inode *in, struct stat *st)
{
	/*
	 * A phantom directory shows what its path holds now: the kernel checks
	 * its cached listing against this mtime.
	 */
	const struct inode *src = in->kind == INODE_DIR && index_real(fs->ix, in)
				  ? index_real(fs->ix, in) : in;

	memset(st, 0, sizeof(*st));
	st->st_ino = in->ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_mtim.tv_sec = src->mtime_ns / 1000000000;
	st->st_mtim.tv_nsec = src->mtime_ns % 1000000000;
	st->st_atim = st->st_ctim = st->st_mtim;
	st->st_blksize = 1 << 20;     /* cat and cp read files in 1 MiB steps */
	switch (in->kind) {
	case INODE_DIR:
		/*
		 * glibc sizes readdir's buffer by st_blksize, and the kernel
		 * allocates that much for every READDIRPLUS: with 1 MiB, ls -lR
		 * of 1,000 tags took a quarter longer than with 4 KiB (for which
		 * glibc uses its minimum, 32 KiB).
		 */
		st->st_blksize = 4096;
		st->st_mode = S_IFDIR | dir_mode(fs, in);
		st->st_nlink = MAX(src->nlink, 2u);
		st->st_size = 4096;
		break;
	case INODE_BLOB:
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = MAX(in->nlink, 1u);
		st->st_size = (off_t)in->size;
		st->st_blocks = 0;         /* add_blocks, without the lock */
		break;
	case INODE_MANIFEST:
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = MAX(in->nlink, 1u);
		st->st_size = (off_t)in->size;
		st->st_blocks = (blkcnt_t)((in->size + 511) / 512);
		break;
	}
}

static double timeout_of(const struct inode *in)
{
	return in->kind == INODE_DIR ? DIR_TIMEOUT : FILE_TIMEOUT;
}

/* An entry's reply, a blob's st_blocks still 0 (add_blocks). Index lock held. */
static void entry_of(struct fs *fs, struct inode *in, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = in->ino;
	e->attr_timeout = e->entry_timeout = timeout_of(in);
	fill_attr(fs, in, &e->attr);
}

/* An entry for in, counting the kernel's new reference. Lock held; send it with send_entry. */
static void make_entry(struct fs *fs, struct inode *in, struct fuse_entry_param *e)
{
	entry_of(fs, in, e);
	index_ref(fs->ix, in);
}

/* Send it, lock not held: if the kernel never got it, take the reference back. */
/* Lock dropped: make_entry's reference keeps in alive until the kernel forgets it. */
static void send_entry(fuse_req_t req, struct fs *fs, struct inode *in, struct fuse_entry_param *e)
{
	add_blocks(fs, in, &e->attr);
	if (fuse_reply_entry(req, e) != 0)
		index_forget(fs->ix, e->ino, 1);
}

static void reply_negative(fuse_req_t req, double timeout)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.entry_timeout = timeout;
	fuse_reply_entry(req, &e);
}

/* ---- discovery ---- */

/* A lookup waiting for a discovery. */
struct lookup_wait {
	struct later l;
	struct disc_waiter w;
	fuse_ino_t parent;
	char *name;
};

static void lookup_free(struct later *l)
{
	struct lookup_wait *lw = container_of(l, struct lookup_wait, l);

	free(lw->name);
	free(lw);
}

static bool lookup_cancel(struct later *l)
{
	struct lookup_wait *lw = container_of(l, struct lookup_wait, l);

	return discover_cancel(l->fs->disc, &lw->w);
}

/* Answer a lookup of name in parent from the index; negative if it is not there. */
static void reply_lookup(struct fs *fs, fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	struct inode *dir, *child = NULL;

	index_rdlock(fs->ix);
	dir = index_get(fs->ix, parent);
	if (dir && dir->kind == INODE_DIR)
		child = index_child(fs->ix, dir, name);
	if (child)
		make_entry(fs, child, &e);
	index_unlock(fs->ix);
	if (child)
		send_entry(req, fs, child, &e);
	else
		reply_negative(req, NEG_TIMEOUT);
}

/* The discovery is over (from the discovery thread). */
static void lookup_done(struct disc_waiter *w, int err)
{
	struct lookup_wait *lw = container_of(w, struct lookup_wait, w);

	later_unregister(&lw->l);
	if (err)
		reply_negative(lw->l.req, NEG_TIMEOUT);
	else
		reply_lookup(lw->l.fs, lw->l.req, lw->parent, lw->name);
	later_put(&lw->l);
}

/*
 * The remote of a tag the mount reads or discovers. It never sends netrc's
 * "default" entry: any user of the mount can make it contact a host of their
 * choosing (blobfs(1), TRUST MODEL).
 */
static struct remote *mount_remote(struct session *s, const struct model_name *n)
{
	struct remote *r = session_remote(s, n);

	if (r)
		r->o.no_default_credentials = true;
	return r;
}

/* Look the tag n up in its registry; the lookup is answered when that is done. */
static void lookup_discover(struct fs *fs, fuse_req_t req, fuse_ino_t parent, const char *name,
			    const struct model_name *n)
{
	struct lookup_wait *lw = xcalloc(1, sizeof(*lw));

	lw->parent = parent;
	lw->name = xstrdup(name);
	lw->w.done = lookup_done;
	later_start(&lw->l, fs, req, lookup_cancel, lookup_free);
	if (discover_wait(fs->disc, n, &lw->w) == 0) {
		later_waiting(&lw->l);
		return;
	}
	later_unregister(&lw->l);
	reply_negative(req, NEG_TIMEOUT);
	later_drop(&lw->l);
}

/* May the caller of req do what the owner may, or was it opened to everyone? */
static bool owner_or(struct fs *fs, fuse_req_t req, bool open_to_all)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);

	return open_to_all || c->uid == 0 || c->uid == fs->uid;
}

/* Is name valid for a directory created under a directory of role r? */
static bool phantom_ok(enum dir_role r, const char *name)
{
	switch (r) {
	case DIR_MODELS:
	case DIR_MANIFESTS:
		return strlen(name) <= NAME_HOST_MAX && name_part_valid(NAME_HOST, name);
	case DIR_MODELS_HOST:
	case DIR_MANIFESTS_HOST:
		return strlen(name) <= NAME_PART_MAX && name_part_valid(NAME_NAMESPACE, name);
	case DIR_MODELS_NS:
	case DIR_MANIFESTS_NS:
		return strlen(name) <= NAME_PART_MAX && name_part_valid(NAME_MODEL, name);
	default:
		return false;
	}
}

/* ---- operations ---- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;

	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {
		conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
		fs->no_opendir = true;                        /* see op_opendir */
	}
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	/* Sets the kernel's max_pages; nothing is ever written here. */
	conn->max_write = READ_MAX;
	/* The kernel keeps the smaller of this and the bdi's window (fs_mount). */
	conn->max_readahead = READAHEAD_KB << 10;
	passthrough_init(fs->pt, conn);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct inode *dir, *child;
	struct fuse_entry_param e;
	struct model_name n;
	enum dir_role role;
	bool tagdir = false;

	index_rdlock(fs->ix);
	dir = index_get(fs->ix, parent);
	if (!dir || dir->kind != INODE_DIR) {
		index_unlock(fs->ix);
		fuse_reply_err(req, dir ? ENOTDIR : ENOENT);
		return;
	}
	child = index_child(fs->ix, dir, name);
	if (child) {
		make_entry(fs, child, &e);
		index_unlock(fs->ix);
		send_entry(req, fs, child, &e);
		return;
	}
	role = dir->role;
	tagdir = (role == DIR_MODELS_MODEL || role == DIR_MANIFESTS_MODEL) &&
		 index_dir_name(dir, name, &n);
	index_unlock(fs->ix);

	if (!fs->o.discover) {
		reply_negative(req, NEG_TIMEOUT);
		return;
	}
	if (!owner_or(fs, req, fs->o.others_discover)) {
		/* Not cached: the owner's lookup right after may discover it. */
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (phantom_ok(role, name)) {
		index_wrlock(fs->ix);
		child = index_child(fs->ix, dir, name);
		if (!child)
			child = index_phantom(fs->ix, dir, name);
		make_entry(fs, child, &e);
		index_unlock(fs->ix);
		send_entry(req, fs, child, &e);
		return;
	}
	if (tagdir)
		lookup_discover(fs, req, parent, name, &n);
	else
		reply_negative(req, NEG_TIMEOUT);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	index_forget(fs_of(req)->ix, ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
	for (size_t i = 0; i < count; i++)
		index_forget(fs_of(req)->ix, f[i].ino, f[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct inode *in;
	struct stat st;
	double timeout;
	bool blob = false;

	(void)fi;
	index_rdlock(fs->ix);
	in = index_get(fs->ix, ino);
	if (in) {
		fill_attr(fs, in, &st);
		timeout = in->kind == INODE_BLOB ? DIR_TIMEOUT : timeout_of(in);
		blob = in->kind == INODE_BLOB;
		if (blob)
			index_ref(fs->ix, in);   /* for add_blocks, without the lock */
	}
	index_unlock(fs->ix);
	if (!in) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (blob) {
		add_blocks(fs, in, &st);
		index_unpin(fs->ix, in);
	}
	fuse_reply_attr(req, &st, timeout);
}

static void op_erofs(fuse_req_t req)
{
	fuse_reply_err(req, EROFS);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	(void)ino; (void)attr; (void)to_set; (void)fi;
	op_erofs(req);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	(void)parent; (void)name; (void)mode; (void)rdev;
	op_erofs(req);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)parent; (void)name; (void)mode;
	op_erofs(req);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link; (void)parent; (void)name;
	op_erofs(req);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
	(void)ino; (void)parent; (void)name;
	op_erofs(req);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	(void)parent; (void)name; (void)newparent; (void)newname; (void)flags;
	op_erofs(req);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	(void)parent; (void)name; (void)mode; (void)fi;
	op_erofs(req);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		     off_t off, struct fuse_file_info *fi)
{
	(void)ino; (void)buf; (void)size; (void)off; (void)fi;
	op_erofs(req);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	(void)ino; (void)name; (void)value; (void)size; (void)flags;
	op_erofs(req);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino; (void)name;
	op_erofs(req);
}

/* Digests a tag uses, to look for orphans after it is removed. */
static int collect_digest(const struct layer *l, void *arg)
{
	digest_set_add(arg, &l->digest);
	return 0;
}

/*
 * Remove a tag: from the store (which frees the blobs nothing else uses),
 * then from the tree; blobs of it still open here become orphans.
 */
static int remove_tag(struct fs *fs, const struct model_name *n, struct digest_set *used)
{
	struct store_freed freed;
	char full[NAME_FORMAT_MAX];
	int ret;

	name_format(n, full, sizeof(full));
	ret = store_remove_tag(fs->sess->store, n, &freed);
	if (ret < 0 && ret != -ENOENT) {
		log_error("cannot remove '%s': %s", full, strerror(-ret));
		return ret;
	}
	index_drop_tag(fs->ix, n);   /* discovery leaves it alone for miss_ttl (on_tag_removed) */
	tell_kernel(fs);
	log_info("removed '%s' (%u blobs freed)", full, freed.blobs + freed.partials);
	for (size_t i = 0; i < used->n; i++) {
		bool still;
		index_rdlock(fs->ix);
		still = index_has_blob(fs->ix, &used->v[i]);
		index_unlock(fs->ix);
		struct blob *b = still ? NULL : blob_find(fs->sess->cache, &used->v[i]);
		if (b) {
			blob_orphan(b);
			blob_put(b);
		}
	}
	return 0;
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct inode *dir, *real;
	struct dentry *de;
	struct digest_set used = { 0 };
	struct model_name n;
	int err = 0;

	if (!owner_or(fs, req, fs->o.others_remove)) {
		fuse_reply_err(req, EACCES);
		return;
	}
	index_wrlock(fs->ix);
	dir = index_get(fs->ix, parent);
	real = dir ? index_real(fs->ix, dir) : NULL;
	de = real ? index_dentry(real, name) : NULL;
	if (!de || de->hidden) {
		err = ENOENT;
	} else if ((real->role == DIR_TAG || real->role == DIR_TAG_SUB) &&
		   de->inode->kind == INODE_DIR) {
		err = EISDIR;
	} else if ((real->role == DIR_TAG || real->role == DIR_TAG_SUB) &&
		   de->inode->kind != INODE_DIR) {
		de->hidden = true;     /* see the top of this file */
		index_touch_dir(fs->ix, real);
	} else if (real->role == DIR_MANIFESTS_MODEL && de->inode->kind == INODE_MANIFEST &&
		   de->inode->tag) {
		n = de->inode->tag->name;
		manifest_for_each_blob(de->inode->tag->m, collect_digest, &used);
		err = -1;              /* removed below, without the lock */
	} else {
		err = EROFS;
	}
	index_unlock(fs->ix);
	if (err == -1) {
		int ret = remove_tag(fs, &n, &used);
		err = ret < 0 ? -ret : 0;
	}
	digest_set_release(&used);
	fuse_reply_err(req, err);
}

static size_t visible_entries(const struct inode *dir)
{
	size_t n = 0;

	for (size_t i = 0; i < dir->nents; i++)
		n += !dir->ents[i].hidden;
	return n;
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	struct inode *dir, *real, *child = NULL;
	struct dentry *de;
	struct digest_set used = { 0 };
	struct model_name n;
	bool remove = false;
	int err = 0;

	if (!owner_or(fs, req, fs->o.others_remove)) {
		fuse_reply_err(req, EACCES);
		return;
	}
	index_wrlock(fs->ix);
	dir = index_get(fs->ix, parent);
	real = dir ? index_real(fs->ix, dir) : NULL;
	de = real ? index_dentry(real, name) : NULL;
	child = de && !de->hidden ? de->inode : NULL;
	if (!dir) {
		err = ENOENT;
	} else if (dir->role == DIR_ROOT) {
		err = EROFS;
	} else if (de && de->hidden) {
		err = ENOENT;
	} else if (child && child->kind != INODE_DIR) {
		err = ENOTDIR;
	} else if (child && visible_entries(child) > 0) {
		err = ENOTEMPTY;
	} else if (child && child->role == DIR_TAG_SUB) {
		de->hidden = true;     /* like a file in it: hidden for the mount's life */
		index_touch_dir(fs->ix, real);
	} else if (child && child->role == DIR_TAG && child->tag) {
		n = child->tag->name;
		manifest_for_each_blob(child->tag->m, collect_digest, &used);
		remove = true;
	}
	/* An empty or already-gone directory the kernel still knows is simply done. */
	index_unlock(fs->ix);
	if (remove) {
		int ret = remove_tag(fs, &n, &used);
		err = ret < 0 ? -ret : 0;
	}
	digest_set_release(&used);
	fuse_reply_err(req, err);
}

/*
 * Directory listings come straight from the index on every call, with no
 * per-open state (see op_opendir). Offsets are 1 for ".", 2 for "..", then 3 + the entry's
 * position; a directory that changes between calls may show an entry twice
 * or not at all, as POSIX allows.
 */
struct listing {
	struct fs *fs;
	fuse_req_t req;
	char *buf;
	size_t size, used;
	bool plus;
	uint64_t *refs;              /* readdirplus: the inodes given a reference */
	size_t nrefs, refcap;
	struct unsized *unsized;     /* readdirplus: blob entries whose st_blocks is still 0 */
	size_t nunsized, unsizedcap;
};

/*
 * A blob's entry, written under the index lock with st_blocks 0 and written
 * again, same size, once the lock is dropped: how much of a blob is local
 * may take a stat of the store, which must not happen under the lock.
 */
struct unsized {
	struct inode *in;            /* kept alive by the entry's reference */
	size_t at;                   /* where its entry starts in the buffer */
	off_t next;
	char *name;
	struct fuse_entry_param e;
};

/* Add one entry; false when the reply is full. Index lock held. */
static bool list_add(struct listing *l, const char *name, struct inode *in, uint64_t ino,
		     mode_t mode, off_t next)
{
	size_t room = l->size - l->used, len;

	if (!l->plus) {
		struct stat st = { .st_ino = ino, .st_mode = mode };
		len = fuse_add_direntry(l->req, l->buf + l->used, room, name, &st, next);
	} else {
		/* Every entry but . and .. counts as a lookup the kernel will forget. */
		struct fuse_entry_param e;
		memset(&e, 0, sizeof(e));
		/* The size an entry takes, from its name alone: nothing is referenced in vain. */
		if (fuse_add_direntry_plus(l->req, NULL, 0, name, NULL, 0) > room)
			return false;
		if (in) {
			entry_of(l->fs, in, &e);
			index_ref(l->fs->ix, in);
			if (l->nrefs == l->refcap) {
				l->refcap = l->refcap ? 2 * l->refcap : 64;
				l->refs = xrealloc(l->refs, l->refcap * sizeof(*l->refs));
			}
			l->refs[l->nrefs++] = in->ino;
			if (in->kind == INODE_BLOB) {
				if (l->nunsized == l->unsizedcap) {
					l->unsizedcap = l->unsizedcap ? 2 * l->unsizedcap : 64;
					l->unsized = xrealloc(l->unsized,
							      l->unsizedcap * sizeof(*l->unsized));
				}
				l->unsized[l->nunsized++] = (struct unsized){ .in = in, .at = l->used,
					.next = next, .name = xstrdup(name), .e = e };
			}
		} else {
			e.attr.st_ino = ino;
			e.attr.st_mode = mode;
		}
		len = fuse_add_direntry_plus(l->req, l->buf + l->used, room, name, &e, next);
	}
	if (len > room)
		return false;
	l->used += len;
	return true;
}

static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct fs *fs = fs_of(req);
	struct listing l = { .fs = fs, .req = req, .buf = xmalloc(size), .size = size, .plus = plus };
	struct inode *dir, *real;
	int err = 0;

	index_rdlock(fs->ix);
	dir = index_get(fs->ix, ino);
	if (!dir || dir->kind != INODE_DIR) {
		err = dir ? ENOTDIR : ENOENT;
		goto out;
	}
	real = index_real(fs->ix, dir);
	if (off < 1 && !list_add(&l, ".", NULL, dir->ino, S_IFDIR, 1))
		goto out;
	if (off < 2 && !list_add(&l, "..", NULL, dir->parent ? dir->parent->ino : dir->ino,
				 S_IFDIR, 2))
		goto out;
	for (size_t i = off > 2 ? (size_t)off - 2 : 0; real && i < real->nents; i++) {
		struct dentry *de = &real->ents[i];
		if (de->hidden)
			continue;
		if (!list_add(&l, de->name, de->inode, de->inode->ino,
			      de->inode->kind == INODE_DIR ? S_IFDIR : S_IFREG, (off_t)i + 3))
			break;
	}
out:
	index_unlock(fs->ix);
	for (size_t i = 0; i < l.nunsized; i++) {
		struct unsized *w = &l.unsized[i];
		add_blocks(fs, w->in, &w->e.attr);
		fuse_add_direntry_plus(req, l.buf + w->at, l.size - w->at, w->name, &w->e, w->next);
		free(w->name);
	}
	free(l.unsized);
	if (err)
		fuse_reply_err(req, err);
	else if (fuse_reply_buf(req, l.buf, l.used) != 0)
		for (size_t i = 0; i < l.nrefs; i++)   /* the kernel never got them */
			index_forget(fs->ix, l.refs[i], 1);
	free(l.refs);
	free(l.buf);
}

/*
 * No opendir: ENOSYS once, and the kernel stops asking (a round trip saved
 * per directory) and keeps listings (FOPEN_CACHE_DIR), which list_dir's
 * mtimes and tell_kernel keep true. Kernels without that get a plain open.
 */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);

	(void)ino;
	if (fs->no_opendir) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->fh = 0;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, false);
}

/* readdir with each entry's attributes, so that `ls -l` needs no lookup per file. */
static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, true);
}

static void ofile_free(struct handle *h)
{
	struct ofile *of = (struct ofile *)h;

	pthread_mutex_lock(&of->lock);       /* after the last read's use */
	pthread_mutex_unlock(&of->lock);
	blob_put(of->blob);
	free(of->data);
	pthread_mutex_destroy(&of->lock);
	free(of);
}

/* A blob of a tag was opened: a loader walking the tag's files gets the rest prefetched. */
static void note_walk(struct fs *fs, const struct digest *d, uint64_t size)
{
	struct itag *t = index_blob_tag(fs->ix, d);

	if (!t)
		return;
	char *key = xasprintf("%s/%s/%s/%s", t->name.host, t->name.ns, t->name.model,
			      t->name.tag);
	prefetch_opened(fs->pf, key, t->m, t->remote, d, size);
	free(key);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct inode *in;
	struct ofile *of;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	index_rdlock(fs->ix);
	in = index_get(fs->ix, ino);
	if (!in || in->kind == INODE_DIR || (in->kind == INODE_MANIFEST && !in->tag)) {
		index_unlock(fs->ix);
		fuse_reply_err(req, !in ? ENOENT : in->kind == INODE_DIR ? EISDIR : ENOENT);
		return;
	}
	of = xcalloc(1, sizeof(*of));
	of->kind = in->kind;
	pthread_mutex_init(&of->lock, NULL);
	struct digest d = in->digest;
	uint64_t size = in->size;
	struct remote *rs[SOURCES_MAX];
	unsigned nr = 0;
	for (; nr < in->nremotes; nr++)
		rs[nr] = remote_ref(in->remotes[nr]);
	if (in->kind == INODE_MANIFEST) {
		of->len = in->tag->len;
		of->data = xmalloc(of->len + 1);
		memcpy(of->data, in->tag->bytes, of->len);
	}
	if (in->kind == INODE_BLOB && fs->pf)
		note_walk(fs, &in->digest, in->size);
	index_unlock(fs->ix);
	if (of->kind == INODE_BLOB) {
		of->blob = blob_get(fs->sess->cache, &d, size);
		for (unsigned i = 0; i < nr; i++)
			blob_add_remote(of->blob, rs[i]);
		store_touch_blob(fs->sess->store, &d);   /* most recently used */
	}
	for (unsigned i = 0; i < nr; i++)
		remote_unref(rs[i]);
	handle_add(fs, &of->h, ofile_free);
	fi->fh = (uint64_t)(uintptr_t)of;
	fi->keep_cache = 1;   /* immutable content: keep the page cache across opens */
	/* Complete: the kernel reads the store's file itself. */
	bool pt = of->passthrough = of->blob && passthrough_open(fs->pt, req, of->blob, fi);
	if (fuse_reply_open(req, fi) != 0) {
		if (of->blob)
			passthrough_release(fs->pt, NULL, of->blob, pt);
		handle_free(fs, &of->h);
		return;
	}
	count(&fs->rs.opens);         /* not of: its release may have come already */
	if (pt)
		count(&fs->rs.opens_passthrough);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct ofile *of = (struct ofile *)(uintptr_t)fi->fh;

	(void)ino;
	if (of->blob)
		passthrough_release(fs->pt, req, of->blob, of->passthrough);
	handle_free(fs, &of->h);
	fuse_reply_err(req, 0);
}

static void reply_from_fd(fuse_req_t req, struct blob *b, uint64_t off, size_t size)
{
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);

	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv.buf[0].fd = blob_fd(b);
	bv.buf[0].pos = (off_t)off;
	if (fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE) == 0)
		blob_served(b, off, size);
}

/*
 * The errno a failed read returns: EIO, as readers expect of a filesystem,
 * whatever the registry said (the log has the detail); but a full disk and
 * an interrupted read keep theirs, since they mean something to the reader.
 */
static int read_errno(int err)
{
	return err == -ENOSPC || err == -EDQUOT || err == -EINTR ? -err : EIO;
}

struct parked {                  /* a read waiting for bytes */
	struct later l;
	struct blob_waiter w;
	struct blob *blob;
	uint64_t off;
	size_t size;
	uint64_t t0;                 /* read_clock() when the read came */
};

static void parked_free(struct later *l)
{
	struct parked *p = container_of(l, struct parked, l);

	blob_put(p->blob);
	free(p);
}

static bool parked_cancel(struct later *l)
{
	struct parked *p = container_of(l, struct parked, l);

	return blob_cancel(p->blob, &p->w);
}

/* The blob answered a parked read (from another thread). */
static void parked_done(struct blob_waiter *w, int err)
{
	struct parked *p = container_of(w, struct parked, w);

	later_unregister(&p->l);
	if (err) {
		count(&p->l.fs->rs.errors);
		fuse_reply_err(p->l.req, read_errno(err));
	}
	else
		reply_from_fd(p->l.req, p->blob, p->off, p->size);
	read_observe(&p->l.fs->rs, p->t0);
	later_put(&p->l);
}

/* Track sequential reading; returns the read-ahead hint. of->lock held. */
static uint64_t track_sequential(struct fs *fs, struct ofile *of, uint64_t off, size_t size,
			  bool *start_background)
{
	uint64_t ra;
	bool seq = (off == 0 && of->next_off == 0) ||
		   (off + SEQ_SLACK >= of->next_off && off <= of->next_off + SEQ_SLACK &&
		    of->next_off > 0);
	if (seq) {
		of->ra = of->ra ? MIN(of->ra * 2, (uint64_t)RA_MAX) : RA_START;
		of->seq_bytes += size;
	} else {
		of->ra = 0;
		of->seq_bytes = 0;
	}
	of->next_off = MAX(of->next_off, off + size);
	if (!seq)
		of->next_off = off + size;
	ra = of->ra;
	*start_background = !of->background &&
			    (fs->o.background == BG_ALWAYS ||
			     (fs->o.background == BG_SEQUENTIAL && of->seq_bytes >= BACKGROUND_AFTER));
	if (*start_background)
		of->background = true;
	return ra;
}

static bool blob_is_complete(struct blob *b)
{
	struct blob_stats st;

	blob_stats(b, &st);
	return st.state == BLOB_COMPLETE;
}

/* A manifest file's bytes from OFF, which are in memory. of->lock is held. */
static void reply_manifest(fuse_req_t req, const struct ofile *of, size_t off, size_t size)
{
	size_t o = MIN(off, of->len);

	fuse_reply_buf(req, of->data + o, MIN(size, of->len - o));
}

/* The reply of a read of B that may wait, registered so that an interrupt finds it. */
static struct parked *park_read(struct fs *fs, fuse_req_t req, struct blob *b, uint64_t off,
				size_t size, uint64_t t0)
{
	struct parked *p = xcalloc(1, sizeof(*p));

	p->blob = b;
	p->off = off;
	p->size = size;
	p->t0 = t0;
	p->w.done = parked_done;
	later_start(&p->l, fs, req, parked_cancel, parked_free);
	return p;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	struct ofile *of = (struct ofile *)(uintptr_t)fi->fh;
	struct parked *p;
	struct blob *b;
	bool background;
	uint64_t ra, bsize, t0 = read_clock();
	int ret;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	pthread_mutex_lock(&of->lock);
	if (of->kind == INODE_MANIFEST) {
		reply_manifest(req, of, (size_t)off, size);
		pthread_mutex_unlock(&of->lock);
		return;
	}
	b = blob_ref(of->blob);
	bsize = blob_size(b);
	if ((uint64_t)off >= bsize || size == 0) {
		pthread_mutex_unlock(&of->lock);
		blob_put(b);
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	size = (size_t)MIN((uint64_t)size, bsize - (uint64_t)off);
	ra = track_sequential(fs, of, (uint64_t)off, size, &background);
	if (bsize <= WHOLE_READ)
		ra = bsize;   /* one request for the whole of a small file, not one per window */
	uint64_t seq_bytes = of->seq_bytes;
	pthread_mutex_unlock(&of->lock);
	if (background && blob_fetch_all(b, false) < 0)
		log_debug("background completion could not start");

	count(&fs->rs.reads);
	p = park_read(fs, req, b, (uint64_t)off, size, t0);   /* b: the reference taken above */
	ret = blob_read(b, (uint64_t)off, size, ra, &p->w);
	if (ret == 0) {
		count(&fs->rs.waited);
		later_waiting(&p->l);   /* parked: parked_done() or an interrupt replies */
		return;
	}
	later_unregister(&p->l);
	if (ret > 0) {
		count(&fs->rs.local);
		reply_from_fd(req, b, (uint64_t)off, size);
		if (seq_bytes >= PUSH_AFTER && fs->pusher && blob_is_complete(b))
			pusher_note(fs->pusher, ino, b, (uint64_t)off + size);
	} else {
		count(&fs->rs.errors);
		fuse_reply_err(req, read_errno(ret));
	}
	read_observe(&fs->rs, t0);
	later_drop(&p->l);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	if (statvfs(fs_of(req)->sess->store->root, &sv) < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	fuse_reply_statfs(req, &sv);
}

static void reply_xattr(fuse_req_t req, const char *value, size_t len, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct fs *fs = fs_of(req);
	struct inode *in;
	char value[DIGEST_STR_LEN + 32];
	int len = -1;
	bool cached = false;

	index_rdlock(fs->ix);
	in = index_get(fs->ix, ino);
	if (in && in->kind == INODE_BLOB) {
		if (strcmp(name, XATTR_DIGEST) == 0) {
			digest_format(&in->digest, value);
			len = (int)strlen(value);
		} else if (strcmp(name, XATTR_CACHED) == 0) {
			cached = true;
			index_ref(fs->ix, in);   /* counted without the lock, as add_blocks does */
		}
	}
	index_unlock(fs->ix);
	if (cached) {
		len = snprintf(value, sizeof(value), "%" PRIu64, local_bytes(fs, in));
		index_unpin(fs->ix, in);
	}
	if (!in)
		fuse_reply_err(req, ENOENT);
	else if (len >= 0)
		reply_xattr(req, value, (size_t)len, size);
	else if (strncmp(name, "user.", 5) != 0)
		/*
		 * No ACLs, no security labels: say the namespace is not supported,
		 * which tools such as ls remember per filesystem, instead of asking
		 * about every file (23,000 round trips for an ls -lR of 1,000 tags).
		 */
		fuse_reply_err(req, EOPNOTSUPP);
	else
		fuse_reply_err(req, ENODATA);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	static const char names[] = XATTR_DIGEST "\0" XATTR_CACHED;
	struct fs *fs = fs_of(req);
	struct inode *in;
	bool blob;

	index_rdlock(fs->ix);
	in = index_get(fs->ix, ino);
	blob = in && in->kind == INODE_BLOB;
	index_unlock(fs->ix);
	if (!in)
		fuse_reply_err(req, ENOENT);
	else
		reply_xattr(req, names, blob ? sizeof(names) : 0, size);
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.release = op_release,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.create = op_create,
};

/* ---- mounting ---- */

void fs_opts_defaults(struct fs_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->discover = true;
	o->background = BG_SEQUENTIAL;
	o->miss_ttl_s = 10;
	o->threads = 16;
	o->passthrough = true;
}

/*
 * A blob failed verification: pages of it that readers already got may sit
 * in the kernel's cache; drop them so every later read asks us, and fails.
 */
static void on_blob_failed(void *arg, const struct digest *d)
{
	struct fs *fs = arg;
	uint64_t ino;

	index_rdlock(fs->ix);
	ino = index_blob_ino(fs->ix, d);
	index_unlock(fs->ix);
	if (ino)
		fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
}

/* A blob joined the cache: keep the cache within its limit (not on the blob worker). */
static void on_blob_committed(void *arg, const struct digest *d)
{
	struct fs *fs = arg;

	(void)d;
	session_evict_soon(fs->sess);
}

static struct remote *tag_remote(void *arg, const struct model_name *n)
{
	return mount_remote(arg, n);
}

/* A blob of this process that no tag uses any more stops being fetched; one used again resumes. */
static void sweep_orphan(struct blob *b, void *arg)
{
	struct fs *fs = arg;
	bool used;

	index_rdlock(fs->ix);
	used = index_has_blob(fs->ix, blob_digest(b));
	index_unlock(fs->ix);
	if (used)
		blob_unorphan(b);
	else
		blob_orphan(b);
}

/* A tag left the tree (the index's write lock held). */
static void on_tag_removed(void *arg, const struct model_name *n)
{
	struct fs *fs = arg;

	if (fs->disc)
		discover_removed(fs->disc, n);
}

/* The discovery thread added a tag. */
static void on_discovered(void *arg)
{
	tell_kernel(arg);
}

/* Discovery asks where the mount's reads of the tag will go. */
static struct remote *discovery_remote(void *arg, const struct model_name *n)
{
	struct fs *fs = arg;

	return tag_remote(fs->sess, n);
}

/*
 * Refuse a mountpoint the daemon would read through (mountcheck.c): the
 * store, and with it its state directory, which is always inside it.
 */
static int check_mountpoint(struct fs *fs, const char *given, const char *mountpoint)
{
	const struct store *st = fs->sess->store;
	const struct mountcheck_path own[] = { { "the store", st->root, st->rootfd } };
	char err[PATH_MAX * 3];

	if (mountcheck(given, mountpoint, own, ARRAY_SIZE(own), err, sizeof(err)) == 0)
		return 0;
	log_error("%s", err);
	return -1;
}

static void start_discovery(struct fs *fs)
{
	struct discover_opts o = {
		.budget_ms = fs->sess->blob.read_timeout_ms,
		.miss_ttl_ms = (uint64_t)fs->o.miss_ttl_s * 1000,
		.remote_for = discovery_remote,
		.changed = on_discovered,
		.arg = fs,
	};

	fs->disc = discover_new(fs->sess, fs->ix, &o);
}

static void on_store_change(void *arg)
{
	struct fs *fs = arg;
	unsigned added, removed;

	index_scan(fs->ix, &added, &removed);
	tell_kernel(fs);
	if (added || removed) {
		log_info("store changed: %u tags added, %u removed", added, removed);
		/* Another process removed tags or moved them to new content (blobfs rm, pull). */
		blobcache_each(fs->sess->cache, sweep_orphan, fs);
	}
}

/* Before INIT is answered: the kernel keeps the smaller window. */
static void set_readahead(const char *mountpoint)
{
	int ra = bdi_set_readahead(mountpoint, READAHEAD_KB);

	if (ra < 0)
		log_debug("read-ahead of '%s' stays at the kernel's default: %s", mountpoint,
			  strerror(-ra));
}

/*
 * Our threads stop before the session is unmounted: they reply to
 * requests too (a blob worker answers parked reads), through the fd that
 * unmounting closes, and a reply written after that could land in
 * whatever file reuses the number. libfuse also frees each replying
 * thread's splice pipe only as long as its session lives.
 */
static void stop_replying(struct fs *fs)
{
	prefetch_free(fs->pf);   /* its blob references, before the cache goes */
	fs->pf = NULL;
	free_handles(fs);        /* blob references the kernel never released */
	session_close(fs->sess);
	fs->sess = NULL;
	discover_free(fs->disc); /* after the fetcher: no fetch of it is left */
}

static struct fs *fs_new(const struct fs_opts *fo)
{
	struct fs *fs = xcalloc(1, sizeof(*fs));

	fs->o = *fo;
	fs->pt = passthrough_new(fo->passthrough);
	fs->rs.passthrough = fs->pt;
	fs->uid = getuid();
	fs->gid = getgid();
	pthread_mutex_init(&fs->open_lock, NULL);
	fs->open.next = fs->open.prev = &fs->open;
	return fs;
}

/* Everything that runs a thread of its own: after the fork, which keeps none. */
static int start_threads(struct fs *fs, const char *mountpoint)
{
	fs->sess->blob.on_fail = on_blob_failed;
	fs->sess->blob.on_commit = on_blob_committed;
	fs->sess->blob.hook_arg = fs;
	if (session_start_net(fs->sess) < 0)
		return -1;
	if (fs->o.background != BG_NEVER)
		fs->pf = prefetch_new(fs->sess->cache);
	session_evict(fs->sess);
	start_discovery(fs);
	fs->watch = watch_start(fs->sess->store->manifests, WATCH_DEPTH, RESCAN_S, on_store_change, fs);
	fs->status = status_start(fs->sess, mountpoint, &fs->rs);
	fs->pusher = pusher_start(fs->se);
	return 0;
}

/*
 * Answer requests until unmounted or signalled, then stop the threads that
 * reply through the session (stop_replying says why before unmounting).
 * 0 for a clean stop or a signal, 1 for a failed loop.
 */
static int serve(struct fs *fs)
{
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	int ret;

	fuse_loop_cfg_set_max_threads(cfg, fs->o.threads);
	ret = fuse_session_loop_mt(fs->se, cfg) < 0 ? 1 : 0;  /* > 0: a signal; a clean stop */
	fuse_loop_cfg_destroy(cfg);
	pusher_stop(fs->pusher);   /* its threads reply through the session too */
	fs->pusher = NULL;
	status_stop(fs->status);
	watch_stop(fs->watch);
	discover_stop(fs->disc);  /* lookups still waiting are answered */
	return ret;
}

int fs_mount(const struct session_opts *so, const struct fs_opts *fo, const char *mp)
{
	/* Absolute: the daemon changes to / when it detaches. */
	char *mountpoint = realpath(mp, NULL);

	if (!mountpoint) {
		log_error("cannot mount on '%s': %s", mp, strerror(errno));
		return 1;
	}
	struct fuse_args args = FUSE_ARGS_INIT(fo->fuse_argc, fo->fuse_argv);
	struct fs *fs = fs_new(fo);
	unsigned added, removed;
	int ret = 1;

	if (session_open(so, SESSION_WRITE, &fs->sess) < 0 ||
	    check_mountpoint(fs, mp, mountpoint) < 0)
		goto out;
	fs->ix = index_new(fs->sess->store, tag_remote, fs->sess);
	index_on_remove(fs->ix, on_tag_removed, fs);
	index_scan(fs->ix, &added, &removed);

	fs->se = fuse_session_new(&args, &ops, sizeof(ops), fs);
	if (!fs->se)
		goto out;
	if (fuse_set_signal_handlers(fs->se) != 0)
		goto out;
	if (fuse_session_mount(fs->se, mountpoint) != 0) {
		log_error("cannot mount on '%s'", mountpoint);
		goto out_signals;
	}
	set_readahead(mountpoint);
	/* Threads start only after the fork; the tree is already built. */
	if (fuse_daemonize(fo->foreground) != 0)
		goto out_unmount;
	if (!fo->foreground)
		log_use_syslog(true);
	if (start_threads(fs, mountpoint) < 0)
		goto out_unmount;
	log_info("mounted '%s' on '%s' (%u tags)", fs->sess->store->root, mountpoint, added);
	ret = serve(fs);
out_unmount:
	stop_replying(fs);
	fuse_session_unmount(fs->se);
out_signals:
	fuse_remove_signal_handlers(fs->se);
out:
	session_close(fs->sess);
	if (fs->se)
		fuse_session_destroy(fs->se);
	index_free(fs->ix);
	passthrough_free(fs->pt);
	pthread_mutex_destroy(&fs->open_lock);
	fuse_opt_free_args(&args);
	free(fs);
	free(mountpoint);
	return ret;
}
