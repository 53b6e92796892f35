/*
 * push.c - bytes of complete blobs pushed into the kernel's page cache
 * ahead of a sequential reader (fuse_lowlevel_notify_store).
 *
 * Without passthrough, every byte a reader of a fresh mount gets is copied
 * once into the mount's page cache, and a reader that faults a mapping in
 * (llama.cpp maps with MAP_POPULATE) waits for that copy READ by READ. Once
 * a reader of a complete (verified) blob has read a few MiB in file order,
 * a pusher thread splices the bytes ahead of it into the page cache, so the
 * copy runs beside the reader instead of in front of it: the reader's own
 * READs cover the stretch just ahead of it, and the pusher starts
 * PUSH_GAP further on, never more than PUSH_LEAD ahead of where the reader
 * has got to. Only complete blobs are pushed: their bytes are exactly
 * what any READ would return, and they never fail verification later.
 *
 * Threads: FUSE workers call pusher_note(); PUSH_THREADS pusher threads do
 * the pushing. A job ends at the blob's end, when the kernel no longer has
 * the inode, or after PUSH_IDLE_MS without a reader's progress.
 */
#define FUSE_USE_VERSION 312
#include "config.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "log.h"
#include "push.h"
#include "util.h"

#define PUSH_PIECE (248u << 12)   /* one notify: header + data + slack fit libfuse's 1 MiB pipe */
#define PUSH_GAP (8u << 20)       /* the reader's own READs and read-ahead cover this */
#define PUSH_LEAD (256u << 20)    /* never further ahead of the reader */
#define PUSH_IDLE_MS 5000
#define PUSH_JOBS 8
#define PUSH_THREADS 2

struct job {
	fuse_ino_t ino;              /* 0: free slot */
	struct blob *blob;
	uint64_t size;
	uint64_t next;               /* pushed up to here (or claimed by a pusher) */
	uint64_t reader;             /* the furthest end a reader has asked for */
	uint64_t active_ms;          /* the reader's last progress */
	unsigned busy;               /* pushers working on it */
	bool dead;                   /* the kernel refused: push no more */
};

struct pusher {
	struct fuse_session *se;
	pthread_mutex_t lock;        /* guards everything below */
	pthread_cond_t cond;
	struct job jobs[PUSH_JOBS];
	bool stop;
	unsigned nthreads;
	pthread_t threads[PUSH_THREADS];
};

static void job_free(struct job *j)
{
	blob_put(j->blob);
	memset(j, 0, sizeof(*j));
}

/* A job with something to push now, and where; NULL if none. Lock held. */
static struct job *next_work(struct pusher *p, uint64_t now, uint64_t *from)
{
	for (unsigned i = 0; i < PUSH_JOBS; i++) {
		struct job *j = &p->jobs[i];
		if (!j->ino)
			continue;
		uint64_t pos = MAX(j->next, j->reader + PUSH_GAP);
		bool done = j->dead || pos >= j->size;
		if ((done || now - j->active_ms > PUSH_IDLE_MS) && !j->busy) {
			job_free(j);
			continue;
		}
		if (!done && pos < j->reader + PUSH_LEAD) {
			*from = pos;
			return j;
		}
	}
	return NULL;
}

static void *pusher_main(void *arg)
{
	struct pusher *p = arg;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		uint64_t from;
		struct job *j = next_work(p, now_ms(), &from);
		if (!j) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += 100 * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&p->cond, &p->lock, &ts);
			continue;
		}
		size_t len = (size_t)MIN((uint64_t)PUSH_PIECE, j->size - from);
		j->next = from + len;
		j->busy++;
		fuse_ino_t ino = j->ino;
		struct blob *b = j->blob;
		pthread_mutex_unlock(&p->lock);

		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(len);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = blob_fd(b);
		bv.buf[0].pos = (off_t)from;
		int ret = fuse_lowlevel_notify_store(p->se, ino, (off_t)from, &bv,
						     FUSE_BUF_SPLICE_MOVE);
		if (ret == 0)
			blob_served(b, from, len);

		pthread_mutex_lock(&p->lock);
		j->busy--;
		if (ret < 0) {
			log_debug("pushing bytes %llu-%llu of inode %llu stopped: %s",
				  (unsigned long long)from, (unsigned long long)(from + len - 1),
				  (unsigned long long)ino, strerror(-ret));
			j->dead = true;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

struct pusher *pusher_start(struct fuse_session *se)
{
	struct pusher *p = xcalloc(1, sizeof(*p));
	pthread_condattr_t ca;

	p->se = se;
	pthread_mutex_init(&p->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cond, &ca);
	pthread_condattr_destroy(&ca);
	for (unsigned i = 0; i < PUSH_THREADS; i++) {
		if (pthread_create(&p->threads[i], NULL, pusher_main, p) != 0) {
			log_warn("cannot start a page cache pusher thread");
			break;
		}
		p->nthreads++;
	}
	return p;
}

void pusher_stop(struct pusher *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	for (unsigned i = 0; i < PUSH_JOBS; i++)
		if (p->jobs[i].ino)
			job_free(&p->jobs[i]);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

void pusher_note(struct pusher *p, uint64_t ino, struct blob *b, uint64_t reader_end)
{
	struct job *j = NULL, *free_slot = NULL;
	uint64_t now = now_ms();

	pthread_mutex_lock(&p->lock);
	for (unsigned i = 0; i < PUSH_JOBS && !j; i++) {
		if (p->jobs[i].ino == ino)
			j = &p->jobs[i];
		else if (!p->jobs[i].ino && !free_slot)
			free_slot = &p->jobs[i];
	}
	if (!j && free_slot) {
		j = free_slot;
		j->ino = ino;
		j->blob = blob_ref(b);
		j->size = blob_size(b);
	}
	if (j && reader_end > j->reader) {
		j->reader = reader_end;
		j->active_ms = now;
		pthread_cond_broadcast(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
}
