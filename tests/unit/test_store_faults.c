/*
 * test_store_faults.c - the store (store.h) when the disk says no: a sync of
 * blobs/ that fails must be reported, never taken for durability. The
 * program is linked with -Wl,--wrap=fsync, so the store's fsync() calls come
 * here first (__wrap_fsync), and one descriptor can be made to fail with a
 * chosen errno as a disk that hits an I/O error would.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "digest.h"
#include "store.h"
#include "util.h"
#include "testutil.h"

/* ---- fault injection ---- */

int __real_fsync(int fd);
int __wrap_fsync(int fd);

static int fail_fd = -1;        /* fsync() of this descriptor fails ... */
static int fail_errno;          /* ... with this errno */
static unsigned fsyncs_of_fail_fd;

int __wrap_fsync(int fd)
{
	if (fd >= 0 && fd == fail_fd) {
		fsyncs_of_fail_fd++;
		if (fail_errno) {
			errno = fail_errno;
			return -1;
		}
	}
	return __real_fsync(fd);
}

/* ---- helpers ---- */

struct fx {
	char *dir, *root, *blobs, *quarantine, *log;
	struct store *s;
	struct digest d;
	char blob[80];   /* sha256-<hex> */
};

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char str[DIGEST_STR_LEN];

	f->dir = tu_mkdtemp();
	f->root = tu_path(f->dir, "store");
	f->blobs = tu_path(f->root, "blobs");
	f->quarantine = tu_path(f->root, ".blobfs/quarantine");
	f->log = tu_path(f->dir, "log");
	if (store_open(f->root, STORE_CREATE, &f->s) != 0)
		return -1;
	static const char hex[] =
		"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	if (digest_parse(hex, strlen(hex), &f->d) != 0)
		return -1;
	digest_format(&f->d, str);
	snprintf(f->blob, sizeof(f->blob), "sha256-%s", strchr(str, ':') + 1);
	char *p = tu_path(f->blobs, f->blob);
	tu_write_str(p, "not what its name says");
	free(p);
	fail_fd = -1;
	fail_errno = 0;
	fsyncs_of_fail_fd = 0;
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;

	fail_fd = -1;
	store_close(f->s);
	tu_rm_rf(f->dir);
	free(f->dir);
	free(f->root);
	free(f->blobs);
	free(f->quarantine);
	free(f->log);
	free(f);
	return 0;
}

/* Run store_quarantine_complete with stderr (the log) going to f->log; its result. */
static int quarantine_logged(struct fx *f, char **log)
{
	int saved = dup(STDERR_FILENO), fd = open(f->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	int ret;

	assert_true(saved >= 0 && fd >= 0);
	fflush(stderr);
	dup2(fd, STDERR_FILENO);
	close(fd);
	ret = store_quarantine_complete(f->s, &f->d, "corrupt");
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	*log = tu_read(f->log, NULL);
	return ret;
}

/* ---- tests ---- */

/* The control: with nothing failing, the blob moves and blobs/ is synced once. */
static void test_quarantine_syncs_blobs_dir(void **state)
{
	struct fx *f = *state;
	char *log;

	fail_fd = f->s->blobsfd;
	assert_int_equal(quarantine_logged(f, &log), 0);
	assert_int_equal(fsyncs_of_fail_fd, 1);
	assert_int_equal(tu_count_entries(f->blobs), 0);
	assert_int_equal(tu_count_entries(f->quarantine), 1);
	free(log);
}

/*
 * A failed sync of blobs/ after the move: the rename may not survive a
 * crash, so the caller hears the errno and the log says which store.
 */
static void test_quarantine_reports_a_failed_sync(void **state)
{
	struct fx *f = *state;
	char *log, quoted[4200];

	fail_fd = f->s->blobsfd;
	fail_errno = EIO;
	assert_int_equal(quarantine_logged(f, &log), -EIO);
	assert_int_equal(fsyncs_of_fail_fd, 1);
	snprintf(quoted, sizeof(quoted), "'%s'", f->root);
	assert_contains(log, quoted);
	assert_contains(log, "blobs/");
	assert_contains(log, strerror(EIO));
	free(log);
}

/* A filesystem that cannot sync a directory (EINVAL) is no error, as in a commit. */
static void test_quarantine_where_dirs_cannot_be_synced(void **state)
{
	struct fx *f = *state;
	char *log;

	fail_fd = f->s->blobsfd;
	fail_errno = EINVAL;
	assert_int_equal(quarantine_logged(f, &log), 0);
	assert_int_equal(tu_count_entries(f->quarantine), 1);
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_quarantine_syncs_blobs_dir, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_quarantine_reports_a_failed_sync, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_quarantine_where_dirs_cannot_be_synced,
						fx_setup, fx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
