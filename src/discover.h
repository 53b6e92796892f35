/* discover.h - finding tags the store does not have in their registry. */
#ifndef BLOBFS_DISCOVER_H
#define BLOBFS_DISCOVER_H

#include <stdbool.h>
#include <stdint.h>

#include "name.h"

struct index;
struct remote;
struct session;
struct discoverer;

/* Discoveries of one registry host that may be in flight at once. */
#define DISCOVER_PER_HOST 4

/* A lookup waiting for a discovery. */
struct disc_waiter {
	struct disc_waiter *prev, *next;   /* guarded by the discoverer's lock */
	bool linked;                       /* likewise: still waits */
	uint64_t deadline_ms;              /* monotonic: answered -ETIMEDOUT then */
	/*
	 * From the discovery thread, no lock held: 0 when the tag is in the
	 * index now; -ENOENT (not there), -EIO (the registry failed), or
	 * -ETIMEDOUT (no answer within the budget) otherwise.
	 */
	void (*done)(struct disc_waiter *w, int err);
};

struct discover_opts {
	uint64_t budget_ms;                /* how long a lookup waits */
	uint64_t miss_ttl_ms;              /* how long a miss or a removal is remembered */
	/* Where to ask for a tag: the mount's remote for it (a reference). */
	struct remote *(*remote_for)(void *arg, const struct model_name *n);
	/* The index changed (a tag was added): from the discovery thread. */
	void (*changed)(void *arg);
	void *arg;
};

struct discoverer *discover_new(struct session *sess, struct index *ix,
				const struct discover_opts *o);
/*
 * Stop the thread and answer every waiter (-ECANCELED). Fetches still in
 * flight complete into the void; free once the fetcher has stopped.
 */
void discover_stop(struct discoverer *d);
void discover_free(struct discoverer *d);

/*
 * Discover n for w. -ENOENT at once when n was missing or removed less
 * than miss_ttl ago (w untouched); else 0, and w->done() is called later,
 * exactly once, unless discover_cancel() takes w back first.
 */
int discover_wait(struct discoverer *d, const struct model_name *n, struct disc_waiter *w);
/* Take w back (the lookup was interrupted); false if it is being answered. */
bool discover_cancel(struct discoverer *d, struct disc_waiter *w);
/* A tag left the store: do not discover it again for miss_ttl. */
void discover_removed(struct discoverer *d, const struct model_name *n);

#endif
