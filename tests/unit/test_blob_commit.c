/*
 * test_blob_commit.c - the blob worker's commit group (blob_worker.c) with
 * real files: blobs fetched whole into a real store are verified and
 * committed by one pass of the worker, called here without its thread so
 * that every blob is ready in the same pass. The blobs of one pass share a
 * single fsync of blobs/, each committed blob is in blobs/ byte for byte,
 * and a blob whose bytes do not match its digest never reaches blobs/.
 */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "blob.h"
#include "blob_int.h"
#include "digest.h"
#include "name.h"
#include "store.h"
#include "testutil.h"

#define NBLOBS 6          /* the last one's bytes do not match its digest */
#define SIZE 10000u       /* three chunks of 4096 and a short one */
#define CHUNK 4096u

struct fx {
	char *dir;
	struct store *s;
	struct blobcache *c;
	uint8_t data[NBLOBS][SIZE];
	struct digest d[NBLOBS];
	struct blob *b[NBLOBS];
};

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct blob_opts o = { .chunk_size = CHUNK, .read_timeout_ms = 60000,
			       .sync_interval_ms = 1000 };
	char *root;

	f->dir = tu_mkdtemp();
	root = tu_path(f->dir, "store");
	assert_int_equal(store_open(root, STORE_CREATE, &f->s), 0);
	free(root);
	f->c = blobcache_create(f->s, &o);
	for (size_t i = 0; i < NBLOBS; i++) {
		for (size_t j = 0; j < SIZE; j++)
			f->data[i][j] = (uint8_t)(tu_pattern(j) + 31 * i);
		digest_of(f->data[i], SIZE, &f->d[i]);
	}
	f->data[NBLOBS - 1][SIZE / 2] ^= 1;   /* what the registry sends is not what it named */
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;

	for (size_t i = 0; i < NBLOBS; i++)
		if (f->b[i])
			blob_put(f->b[i]);
	blobcache_free(f->c);
	store_close(f->s);
	assert_int_equal(tu_rm_rf(f->dir), 0);
	free(f->dir);
	free(f);
	return 0;
}

/* A manifest that names every blob, so that the store keeps them. */
static void write_manifest(struct fx *f)
{
	char buf[4096], hex[DIGEST_STR_LEN], err[256];
	struct model_name n;
	size_t len;

	len = (size_t)snprintf(buf, sizeof(buf),
		"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\","
		"\"config\":{\"mediaType\":\"application/vnd.docker.container.image.v1+json\","
		"\"digest\":\"%s\",\"size\":%u},\"layers\":[", (digest_format(&f->d[0], hex), hex), SIZE);
	for (size_t i = 1; i < NBLOBS; i++) {
		digest_format(&f->d[i], hex);
		len += (size_t)snprintf(buf + len, sizeof(buf) - len,
					"%s{\"mediaType\":\"application/vnd.ollama.image.l%zu\","
					"\"digest\":\"%s\",\"size\":%u}", i > 1 ? "," : "", i, hex, SIZE);
	}
	len += (size_t)snprintf(buf + len, sizeof(buf) - len, "]}");
	assert_int_equal(name_parse("h.example/ns/m:t", &n, err, sizeof(err)), 0);
	assert_int_equal(store_write_manifest(f->s, &n, buf, len), 0);
}

/* Fetch blob i whole, as the network thread does: claim, write, report. */
static void fetch(struct fx *f, size_t i)
{
	uint64_t start, end;

	f->b[i] = blob_get(f->c, &f->d[i], SIZE);
	assert_non_null(f->b[i]);
	assert_int_equal(blob_fetch_all(f->b[i], false), 0);
	while (blob_claim(f->b[i], false, SIZE, 1, &start, &end) >= 0) {
		assert_int_equal(pwrite(blob_wfd(f->b[i]), f->data[i] + start, end - start,
					(off_t)start), (ssize_t)(end - start));
		blob_written(f->b[i], start, start, end);
	}
}

static bool in_blobs(struct fx *f, size_t i, bool *same)
{
	char *p = store_blob_path(f->s, &f->d[i]);
	size_t len = 0;
	uint8_t *got = tu_exists(p) ? (uint8_t *)tu_read(p, &len) : NULL;

	free(p);
	*same = got && len == SIZE && memcmp(got, f->data[i], SIZE) == 0;
	free(got);
	return got != NULL;
}

static void test_blobs_ready_together_share_one_directory_sync(void **state)
{
	struct fx *f = *state;
	struct blob_stats st;
	bool same;

	write_manifest(f);
	for (size_t i = 0; i < NBLOBS; i++)
		fetch(f, i);
	for (size_t i = 0; i < NBLOBS; i++) {   /* nothing reaches blobs/ before the worker */
		blob_stats(f->b[i], &st);
		assert_int_equal(st.state, BLOB_PARTIAL);
		assert_false(in_blobs(f, i, &same));
	}
	unsigned long before = f->s->commit_syncs;
	blob_worker_pass(f->c, false);
	/* One fsync of blobs/ for the five that passed, not one each. */
	assert_int_equal(f->s->commit_syncs - before, 1);
	for (size_t i = 0; i + 1 < NBLOBS; i++) {
		blob_stats(f->b[i], &st);
		assert_int_equal(st.state, BLOB_COMPLETE);
		assert_true(in_blobs(f, i, &same));
		assert_true(same);
	}
	/* The mismatch failed, and is in quarantine, not in blobs/. */
	blob_stats(f->b[NBLOBS - 1], &st);
	assert_int_equal(st.state, BLOB_FAILED);
	assert_int_equal(st.err, -EIO);
	assert_false(in_blobs(f, NBLOBS - 1, &same));
	char *blobs = tu_path(f->s->root, "blobs");
	assert_int_equal(tu_count_entries(blobs), NBLOBS - 1);
	free(blobs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_blobs_ready_together_share_one_directory_sync,
						fx_setup, fx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
