/*
 * passthrough.c - FUSE passthrough of complete blobs.
 *
 * Since Linux 6.9 (libfuse 3.17), an open reply may name a backing file: the
 * kernel then serves that open's reads, splices and mmaps from the backing
 * file itself, with no request to the daemon and with the backing file's
 * page cache as the only copy. A complete blob is an immutable, verified
 * regular file, so its opens go that way; a partial blob's opens stay with
 * the daemon, which fetches what is missing, and an open keeps the mode it
 * started in.
 *
 * The kernel's rules shape the bookkeeping:
 * - A backing id is made from the blob's own store fd and holds that file
 *   open in the kernel until it is closed, so a blob removed or evicted
 *   while open keeps its bytes for its open files.
 * - All opens of one FUSE inode at a time must use passthrough with the same
 *   backing file, or none may: the kernel fails a mixed open with EIO. So a
 *   blob has one backing id, shared by its passthrough opens and closed when
 *   the last of them is released; and while any open of the blob goes
 *   through the daemon (it started partial), new ones do too. The rule is
 *   kept per blob, which is at least as strict as per inode.
 * - FOPEN_KEEP_CACHE is refused with passthrough (the page cache is the
 *   backing file's), so it is left out.
 * - Backing files need CAP_SYS_ADMIN, and one on a stacked filesystem
 *   (overlayfs) is refused: libfuse's default stack depth is kept, so that
 *   the mount itself can be stacked under overlayfs.
 * A refused backing file turns passthrough off for the mount, since what
 * causes it holds for every blob. That and init's decision are each logged
 * once, at debug level.
 *
 * Threads: the FUSE workers; lock guards the table. The kernel answers a
 * release only after the file's open reply, so counts never go negative.
 */
#define FUSE_USE_VERSION 312
#include "config.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_FUSE_PASSTHROUGH
#include <sys/capability.h>
#endif

#include "blob.h"
#include "log.h"
#include "passthrough.h"
#include "util.h"

#define STATE_MAX 200

struct backing {                    /* a blob with open files */
	struct backing *next;
	struct digest digest;
	int id;                         /* backing id while in_passthrough; else 0 */
	unsigned in_passthrough;        /* opens using id */
	unsigned via_daemon;            /* opens the daemon answers */
};

struct passthrough {
	bool enabled;                   /* not -o nopassthrough; immutable */
	bool granted;                   /* asked for at init; atomic */
	bool on;                        /* granted, and no backing file refused; atomic */
	const char *state;              /* what passthrough_state says; atomic */
	char init_state[STATE_MAX];     /* written once, before state points to it */
	char refused_state[STATE_MAX];  /* likewise */
	pthread_mutex_t lock;           /* guards everything below */
	struct backing *table;          /* few: the blobs open at once */
	int *orphans;                   /* ids whose open reply failed: closed at the next request */
	size_t norphans;
};

struct passthrough *passthrough_new(bool enabled)
{
	struct passthrough *p = xcalloc(1, sizeof(*p));

	p->enabled = enabled;
	pthread_mutex_init(&p->lock, NULL);
	return p;
}

void passthrough_free(struct passthrough *p)
{
	if (!p)
		return;
	while (p->table) {
		struct backing *e = p->table;
		p->table = e->next;
		free(e);
	}
	free(p->orphans);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

const char *passthrough_state(struct passthrough *p)
{
	return __atomic_load_n(&p->state, __ATOMIC_ACQUIRE);
}

/* Publish a new state (text in buf, which is not written again) and log it. */
__attribute__((format(printf, 3, 4)))
static void set_state(struct passthrough *p, char *buf, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, STATE_MAX, fmt, ap);
	va_end(ap);
	__atomic_store_n(&p->state, buf, __ATOMIC_RELEASE);
	log_debug("FUSE passthrough %s", buf);
}

#ifdef HAVE_FUSE_PASSTHROUGH

static bool have_sys_admin(void)
{
	cap_flag_value_t v = CAP_CLEAR;
	cap_t caps = cap_get_proc();

	if (caps && cap_get_flag(caps, CAP_SYS_ADMIN, CAP_EFFECTIVE, &v) < 0)
		v = CAP_CLEAR;
	cap_free(caps);
	return v == CAP_SET;
}

void passthrough_init(struct passthrough *p, struct fuse_conn_info *conn)
{
	const char *why = NULL;

	if (!p->enabled)
		why = "switched off with -o nopassthrough";
	else if (!(conn->capable & FUSE_CAP_PASSTHROUGH))
		why = "not offered by the kernel (it needs Linux 6.9 or later, "
		      "built with CONFIG_FUSE_PASSTHROUGH)";
	else if (!have_sys_admin())
		why = "not allowed: the kernel requires CAP_SYS_ADMIN for it";
	if (why) {
		set_state(p, p->init_state, "off: %s", why);
		return;
	}
	conn->want |= FUSE_CAP_PASSTHROUGH;
	conn->max_backing_stack_depth = FUSE_BACKING_STACKED_UNDER;
	__atomic_store_n(&p->granted, true, __ATOMIC_RELEASE);
	__atomic_store_n(&p->on, true, __ATOMIC_RELEASE);
	set_state(p, p->init_state, "on");
}

/* A backing id for e from b's store fd; false (passthrough off) if refused. Lock held. */
static bool make_backing(struct passthrough *p, fuse_req_t req, struct blob *b,
			 struct backing *e)
{
	int id, err;

	if (!__atomic_load_n(&p->on, __ATOMIC_ACQUIRE))
		return false;
	id = fuse_passthrough_open(req, blob_fd(b));
	err = errno;
	if (id > 0) {
		e->id = id;
		return true;
	}
	__atomic_store_n(&p->on, false, __ATOMIC_RELEASE);
	set_state(p, p->refused_state, "off: the kernel refused the store's file as a backing "
		  "file: %s", err == ELOOP ? "the store is on a stacked filesystem (overlayfs?)"
		  : strerror(err));
	return false;
}

static void close_backing(fuse_req_t req, int id)
{
	fuse_passthrough_close(req, id);   /* libfuse logs a failure */
}

#else /* !HAVE_FUSE_PASSTHROUGH */

void passthrough_init(struct passthrough *p, struct fuse_conn_info *conn)
{
	(void)conn;
	if (p->enabled)
		set_state(p, p->init_state, "off: this blobfs was built with libfuse %d.%d, "
			  "which lacks it (it needs 3.17 or later)", FUSE_MAJOR_VERSION,
			  FUSE_MINOR_VERSION);
	else
		set_state(p, p->init_state, "off: switched off with -o nopassthrough");
}

static bool make_backing(struct passthrough *p, fuse_req_t req, struct blob *b,
			 struct backing *e)
{
	(void)p; (void)req; (void)b; (void)e;
	return false;   /* never granted */
}

static void close_backing(fuse_req_t req, int id)
{
	(void)req; (void)id;
}

#endif

/* Close the ids of failed open replies, now that there is a request. Lock held. */
static void close_orphans(struct passthrough *p, fuse_req_t req)
{
	for (size_t i = 0; i < p->norphans; i++)
		close_backing(req, p->orphans[i]);
	p->norphans = 0;
}

/* The entry of blob d; add it if add. Lock held. */
static struct backing *entry(struct passthrough *p, const struct digest *d, bool add)
{
	struct backing *e;

	for (e = p->table; e; e = e->next)
		if (digest_equal(&e->digest, d))
			return e;
	if (!add)
		return NULL;
	e = xcalloc(1, sizeof(*e));
	e->digest = *d;
	e->next = p->table;
	p->table = e;
	return e;
}

static void remove_entry(struct passthrough *p, struct backing *gone)
{
	for (struct backing **pp = &p->table; *pp; pp = &(*pp)->next) {
		if (*pp == gone) {
			*pp = gone->next;
			free(gone);
			return;
		}
	}
}

bool passthrough_open(struct passthrough *p, struct fuse_req *req, struct blob *b,
		      struct fuse_file_info *fi)
{
	struct blob_stats st;
	struct backing *e;
	bool pt;

	if (!__atomic_load_n(&p->granted, __ATOMIC_ACQUIRE))
		return false;
	blob_stats(b, &st);   /* a complete blob stays complete while referenced */
	pthread_mutex_lock(&p->lock);
	close_orphans(p, req);
	e = entry(p, blob_digest(b), true);
	pt = st.state == BLOB_COMPLETE && !e->via_daemon && (e->id || make_backing(p, req, b, e));
	if (pt) {
		e->in_passthrough++;
#ifdef HAVE_FUSE_PASSTHROUGH
		fi->backing_id = e->id;
#endif
		fi->keep_cache = 0;
	} else {
		e->via_daemon++;
	}
	pthread_mutex_unlock(&p->lock);
	return pt;
}

void passthrough_release(struct passthrough *p, struct fuse_req *req, struct blob *b,
			 bool in_passthrough)
{
	struct backing *e;

	if (!__atomic_load_n(&p->granted, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&p->lock);
	e = entry(p, blob_digest(b), false);
	if (e && in_passthrough && e->in_passthrough && --e->in_passthrough == 0) {
		if (req) {
			close_backing(req, e->id);
		} else {
			p->orphans = xrealloc(p->orphans, (p->norphans + 1) * sizeof(*p->orphans));
			p->orphans[p->norphans++] = e->id;
		}
		e->id = 0;
	} else if (e && !in_passthrough && e->via_daemon) {
		e->via_daemon--;
	}
	if (e && !e->in_passthrough && !e->via_daemon)
		remove_entry(p, e);
	if (req)
		close_orphans(p, req);
	pthread_mutex_unlock(&p->lock);
}
