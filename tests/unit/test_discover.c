/*
 * test_discover.c - discover.c where no registry is involved: a tag the
 * mount has no registry for (its remote_for() gives NULL, as remote_new()
 * does for a URL it cannot form) is answered "not found" from the discovery
 * thread and remembered as a miss, without a request. What needs a registry (per-host limits, queue order, budgets)
 * is tested through a mount in tests/integration/test_mount_trust.py.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "discover.h"
#include "name.h"

/* What the callbacks saw, and a waiter's answer; guarded by lock. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static unsigned asked, changed;

struct answer {
	struct disc_waiter w;
	bool done;
	int err;
};

static struct remote *no_remote(void *arg, const struct model_name *n)
{
	(void)arg;
	(void)n;
	pthread_mutex_lock(&lock);
	asked++;
	pthread_mutex_unlock(&lock);
	return NULL;
}

static void on_changed(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	changed++;
	pthread_mutex_unlock(&lock);
}

static void on_done(struct disc_waiter *w, int err)
{
	struct answer *a = (struct answer *)w;

	pthread_mutex_lock(&lock);
	a->done = true;
	a->err = err;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
}

/* Wait up to 10 s for a's answer; true if it came. */
static bool answered(struct answer *a)
{
	struct timespec ts;
	bool done;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	pthread_mutex_lock(&lock);
	while (!a->done && pthread_cond_timedwait(&cond, &lock, &ts) == 0)
		;
	done = a->done;
	pthread_mutex_unlock(&lock);
	return done;
}

static struct model_name name_of(const char *s)
{
	struct model_name n;
	char err[256];

	assert_int_equal(name_parse(s, &n, err, sizeof(err)), 0);
	return n;
}

/* No session and no index: a discovery without a remote must touch neither. */
static struct discoverer *start(uint64_t budget_ms)
{
	struct discover_opts o = {
		.budget_ms = budget_ms,
		.miss_ttl_ms = 60000,
		.remote_for = no_remote,
		.changed = on_changed,
	};

	asked = changed = 0;
	return discover_new(NULL, NULL, &o);
}

static void test_a_tag_without_a_remote_is_not_found_and_remembered(void **state)
{
	(void)state;
	struct discoverer *d = start(30000);
	struct model_name n = name_of("host.example/library/x:latest");
	struct answer a = { .w.done = on_done }, b = { .w.done = on_done };

	assert_int_equal(discover_wait(d, &n, &a.w), 0);
	assert_true(answered(&a));
	assert_int_equal(a.err, -ENOENT);
	assert_int_equal(asked, 1);
	assert_int_equal(changed, 0);
	/* remembered: answered at once, the mount not asked again */
	assert_int_equal(discover_wait(d, &n, &b.w), -ENOENT);
	assert_false(b.done);
	assert_int_equal(asked, 1);
	discover_stop(d);
	discover_free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_tag_without_a_remote_is_not_found_and_remembered),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
