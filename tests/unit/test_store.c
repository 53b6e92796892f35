/*
 * test_store.c - the content store (store.h) in temporary directories: the
 * layout and its modes, the default root, manifests found case-insensitively
 * with the stored casing winning, tag listing, tag removal and garbage
 * collection with their reference counting, per-blob and index locks across
 * processes, and moving blobs in and out of quarantine. strmap.h and util.h
 * have their own file, test_util.c.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "chunkmap.h"
#include "digest.h"
#include "manifest.h"
#include "name.h"
#include "store.h"
#include "strmap.h"
#include "util.h"
#include "testutil.h"

#define BLOB_SIZE 8192

/* ---- helpers ---- */

struct fx {
	char *dir;      /* the temporary directory */
	char *root;     /* dir/store */
	char *blobs, *manifests, *state, *partial, *tmp, *quarantine;   /* its directories */
	struct store *s;
};

static void fx_paths(struct fx *f)
{
	f->blobs = tu_path(f->root, "blobs");
	f->manifests = tu_path(f->root, "manifests");
	f->state = tu_path(f->root, ".blobfs");
	f->partial = tu_path(f->root, ".blobfs/partial");
	f->tmp = tu_path(f->root, ".blobfs/tmp");
	f->quarantine = tu_path(f->root, ".blobfs/quarantine");
}

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	f->dir = tu_mkdtemp();
	f->root = tu_path(f->dir, "store");
	fx_paths(f);
	if (store_open(f->root, STORE_CREATE, &f->s) != 0)
		return -1;
	*state = f;
	return 0;
}

/* A fixture without an opened store. */
static int fx_setup_bare(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	f->dir = tu_mkdtemp();
	f->root = tu_path(f->dir, "store");
	fx_paths(f);
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	int ret;

	store_close(f->s);
	ret = tu_rm_rf(f->dir);
	free(f->blobs);
	free(f->manifests);
	free(f->state);
	free(f->partial);
	free(f->tmp);
	free(f->quarantine);
	free(f->root);
	free(f->dir);
	free(f);
	return ret;
}

/* The digest sha256:<c x 64>. */
static struct digest dg(char c)
{
	char s[DIGEST_STR_LEN];
	struct digest d;

	memcpy(s, "sha256:", 7);
	memset(s + 7, c, 64);
	if (digest_parse(s, 71, &d) != 0)
		abort();
	return d;
}

static struct model_name nm(const char *s)
{
	struct model_name n;
	char err[256];

	if (name_parse(s, &n, err, sizeof(err)) != 0)
		fail_msg("bad test name '%s': %s", s, err);
	return n;
}

/*
 * A manifest whose config is blob cfg and whose layers are the blobs named by
 * the characters of layers, each BLOB_SIZE bytes; caller frees.
 */
static char *mj(char cfg, const char *layers)
{
	size_t cap = 512 + strlen(layers) * 160, n;
	char *buf = malloc(cap), hex[65];

	memset(hex, cfg, 64);
	hex[64] = '\0';
	n = (size_t)snprintf(buf, cap,
		"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\","
		"\"config\":{\"mediaType\":\"application/vnd.docker.container.image.v1+json\","
		"\"digest\":\"sha256:%s\",\"size\":%d},\"layers\":[", hex, BLOB_SIZE);
	for (size_t i = 0; layers[i]; i++) {
		memset(hex, layers[i], 64);
		n += (size_t)snprintf(buf + n, cap - n,
				      "%s{\"mediaType\":\"application/vnd.ollama.image.l%zu\","
				      "\"digest\":\"sha256:%s\",\"size\":%d}",
				      i ? "," : "", i, hex, BLOB_SIZE);
	}
	snprintf(buf + n, cap - n, "]}");
	return buf;
}

static void write_manifest(struct store *s, const char *name, const char *text)
{
	struct model_name n = nm(name);

	assert_int_equal(store_write_manifest(s, &n, text, strlen(text)), 0);
}

static void write_mj(struct store *s, const char *name, char cfg, const char *layers)
{
	char *text = mj(cfg, layers);

	write_manifest(s, name, text);
	free(text);
}

/* Pseudo-random (incompressible, so st_blocks is honest) but fixed contents. */
static void put_blob(const struct store *s, char c)
{
	struct digest d = dg(c);
	char *p = store_blob_path(s, &d);

	tu_put_pattern(p, BLOB_SIZE);
	free(p);
}

static bool has_blob(const struct store *s, char c)
{
	struct digest d = dg(c);
	char *p = store_blob_path(s, &d);
	bool ok = tu_exists(p);

	free(p);
	return ok;
}

static void put_partial(const struct store *s, char c, const char *suffix)
{
	struct digest d = dg(c);
	char *p = store_partial_path(s, &d, suffix);

	tu_put_pattern(p, *suffix ? 100 : BLOB_SIZE);
	free(p);
}

static bool has_partial(const struct store *s, char c, const char *suffix)
{
	struct digest d = dg(c);
	char *p = store_partial_path(s, &d, suffix);
	bool ok = tu_exists(p);

	free(p);
	return ok;
}

static int wait_child(pid_t pid)
{
	int status;

	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

/* ---- opening ---- */

static void test_open_creates_layout(void **state)
{
	struct fx *f = *state;
	struct store *s = f->s;
	char *lock = tu_path(f->state, "lock");

	assert_true(s->writable);
	assert_true(s->lockfd >= 0);
	assert_string_equal(s->root, f->root);
	assert_true(tu_is_dir(f->blobs));
	assert_true(tu_is_dir(f->manifests));
	assert_true(tu_is_dir(f->partial));
	assert_true(tu_is_dir(f->tmp));
	assert_true(tu_is_dir(f->quarantine));
	assert_true(tu_exists(lock));
	assert_int_equal(tu_mode_of(f->state), 0700);
	assert_true(s->blobsfd >= 0 && s->manifestsfd >= 0 && s->statefd >= 0 &&
		    s->partialfd >= 0 && s->tmpfd >= 0 && s->quarantinefd >= 0);
	free(lock);
}

static void test_open_state_is_private_whatever_the_umask(void **state)
{
	struct fx *f = *state;
	struct store *s;
	mode_t old = umask(0);
	int ret = store_open(f->root, STORE_CREATE, &s);

	umask(old);
	assert_int_equal(ret, 0);
	assert_int_equal(tu_mode_of(f->state), 0700);
	assert_int_equal(tu_mode_of(f->partial) & 077, 0);
	assert_int_equal(tu_mode_of(f->tmp) & 077, 0);
	assert_int_equal(tu_mode_of(f->quarantine) & 077, 0);
	store_close(s);
}

static void test_open_fixes_existing_state_mode(void **state)
{
	struct fx *f = *state;
	char *st = tu_path(f->root, ".blobfs");
	struct store *s;

	assert_int_equal(mkdir(f->root, 0755), 0);
	assert_int_equal(mkdir(st, 0755), 0);
	assert_int_equal(chmod(st, 0755), 0);
	assert_int_equal(store_open(f->root, STORE_CREATE, &s), 0);
	assert_int_equal(tu_mode_of(st), 0700);
	store_close(s);
	free(st);
}

static void test_open_strips_trailing_slashes(void **state)
{
	struct fx *f = *state;
	char *r = tu_path(f->root, "//");
	struct store *s;

	assert_int_equal(store_open(r, STORE_CREATE, &s), 0);
	assert_string_equal(s->root, f->root);
	store_close(s);
	free(r);
}

static void test_open_missing_without_create_reads_empty(void **state)
{
	struct fx *f = *state;
	struct store *s;
	struct store_tag *tags = (struct store_tag *)(uintptr_t)1;
	size_t n = 99;
	struct model_name want = nm("llama3"), found;
	struct digest_set refs;
	struct store_freed freed;

	assert_int_equal(store_open(f->root, 0, &s), 0);
	assert_false(s->writable);
	assert_int_equal(s->lockfd, -1);
	assert_false(tu_exists(f->root)); /* nothing created */
	assert_int_equal(store_list_tags(s, &tags, &n), 0);
	assert_int_equal(n, 0);
	store_tags_free(tags, n);
	assert_int_equal(store_find_tag(s, &want, &found), -ENOENT);
	assert_int_equal(store_referenced(s, &refs), 0);
	assert_int_equal(refs.n, 0);
	digest_set_release(&refs);
	assert_int_equal(store_lock(s), -EROFS);
	assert_int_equal(store_write_manifest(s, &want, "{}", 2), -EROFS);
	assert_int_equal(store_remove_tag(s, &want, &freed), -EROFS);
	assert_int_equal(store_gc(s, &freed), -EROFS);
	store_close(s);
}

static void test_open_create_fails_under_a_file(void **state)
{
	struct fx *f = *state;
	char *file = tu_path(f->dir, "file"), *root = tu_path(file, "store");
	struct store *s = (struct store *)(uintptr_t)1;

	tu_write_str(file, "x");
	assert_int_equal(store_open(root, STORE_CREATE, &s), -ENOTDIR);
	assert_true(s == (struct store *)(uintptr_t)1);
	free(file);
	free(root);
}

/* ---- the default root ---- */

struct saved_env {
	char *v[3];
};

static const char *const env_names[3] = { "BLOBFS_STORE", "XDG_DATA_HOME", "HOME" };

static void env_save(struct saved_env *e)
{
	for (int i = 0; i < 3; i++) {
		const char *v = getenv(env_names[i]);
		e->v[i] = v ? strdup(v) : NULL;
	}
}

static void env_restore(struct saved_env *e)
{
	for (int i = 0; i < 3; i++) {
		if (e->v[i])
			setenv(env_names[i], e->v[i], 1);
		else
			unsetenv(env_names[i]);
		free(e->v[i]);
	}
}

static void expect_root(const char *opt, const char *want)
{
	char *r = store_default_root(opt);

	assert_string_equal(r, want);
	free(r);
}

static void test_default_root_precedence(void **state)
{
	struct saved_env e;

	env_save(&e);
	setenv("BLOBFS_STORE", "/env/store", 1);
	setenv("XDG_DATA_HOME", "/xdg/data", 1);
	setenv("HOME", "/home/u", 1);
	expect_root("/opt/store", "/opt/store");
	expect_root(NULL, "/env/store");
	expect_root("", "/env/store");
	setenv("BLOBFS_STORE", "", 1);
	expect_root(NULL, "/xdg/data/blobfs");
	unsetenv("BLOBFS_STORE");
	expect_root(NULL, "/xdg/data/blobfs");
	/* A relative XDG_DATA_HOME is invalid and ignored, as the spec says. */
	setenv("XDG_DATA_HOME", "relative/data", 1);
	expect_root(NULL, "/home/u/.local/share/blobfs");
	setenv("XDG_DATA_HOME", "", 1);
	expect_root(NULL, "/home/u/.local/share/blobfs");
	unsetenv("XDG_DATA_HOME");
	expect_root(NULL, "/home/u/.local/share/blobfs");
	expect_root("/opt/store", "/opt/store");
	env_restore(&e);
}

/* ---- paths ---- */

static void test_paths(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('a');
	char *p, want[1024];
	const char *hex = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

	p = store_blob_path(f->s, &d);
	snprintf(want, sizeof(want), "%s/blobs/sha256-%s", f->root, hex);
	assert_string_equal(p, want);
	free(p);
	p = store_partial_path(f->s, &d, ".map");
	snprintf(want, sizeof(want), "%s/.blobfs/partial/sha256-%s.map", f->root, hex);
	assert_string_equal(p, want);
	free(p);
	p = store_partial_path(f->s, &d, "");
	snprintf(want, sizeof(want), "%s/.blobfs/partial/sha256-%s", f->root, hex);
	assert_string_equal(p, want);
	free(p);
}

/* ---- manifests ---- */

static void test_write_read_find_exact(void **state)
{
	struct fx *f = *state;
	struct model_name n = nm("llama3:8b"), found;
	char *buf, *path;
	size_t len;

	write_manifest(f->s, "llama3:8b", "{\"hello\":1}");
	path = tu_path(f->root, "manifests/registry.ollama.ai/library/llama3/8b");
	assert_true(tu_exists(path));
	assert_int_equal(tu_mode_of(path), 0644);
	assert_int_equal(tu_count_entries(f->tmp), 0);
	free(path);
	assert_int_equal(store_find_tag(f->s, &n, &found), 0);
	assert_true(name_equal(&n, &found));
	assert_string_equal(found.tag, "8b");
	assert_int_equal(store_read_manifest(f->s, &found, &buf, &len, NULL), 0);
	assert_int_equal(len, 11);
	assert_string_equal(buf, "{\"hello\":1}");
	free(buf);
}

static void test_find_tag_stored_casing_wins(void **state)
{
	struct fx *f = *state;
	struct model_name want = nm("http://host.example/ns/model:tag"), found;

	write_manifest(f->s, "Host.Example/NS/Model:Tag", "v1");
	memset(&found, 0, sizeof(found));
	assert_int_equal(store_find_tag(f->s, &want, &found), 0);
	assert_string_equal(found.host, "Host.Example");
	assert_string_equal(found.ns, "NS");
	assert_string_equal(found.model, "Model");
	assert_string_equal(found.tag, "Tag");
	assert_string_equal(found.scheme, "http"); /* carried over from the request */
}

static void test_write_other_casing_reuses_directories(void **state)
{
	struct fx *f = *state;
	struct model_name want = nm("host.example/ns/model:tag"), found;
	char *path, *text;
	struct store_tag *tags;
	size_t n;

	write_manifest(f->s, "Host.Example/NS/Model:Tag", "v1");
	write_manifest(f->s, "HOST.EXAMPLE/ns/MODEL:TAG", "v2");
	assert_int_equal(tu_count_entries(f->manifests), 1);
	path = tu_path(f->manifests, "Host.Example");
	assert_int_equal(tu_count_entries(path), 1);
	free(path);
	path = tu_path(f->manifests, "Host.Example/NS/Model");
	assert_int_equal(tu_count_entries(path), 1);
	free(path);
	path = tu_path(f->manifests, "Host.Example/NS/Model/Tag");
	text = tu_read(path, NULL);
	assert_non_null(text);
	assert_string_equal(text, "v2");
	free(text);
	free(path);
	assert_int_equal(store_find_tag(f->s, &want, &found), 0);
	assert_string_equal(found.model, "Model");
	assert_int_equal(store_list_tags(f->s, &tags, &n), 0);
	assert_int_equal(n, 1);
	store_tags_free(tags, n);

	/* A new tag of the same model lands in the existing directories. */
	write_manifest(f->s, "host.example/ns/model:other", "v3");
	path = tu_path(f->manifests, "Host.Example/NS/Model/other");
	assert_true(tu_exists(path));
	free(path);
	assert_int_equal(tu_count_entries(f->manifests), 1);
}

static void test_find_tag_absent(void **state)
{
	struct fx *f = *state;
	struct model_name want, found;
	char *dir;

	write_manifest(f->s, "a.example/ns/model:tag", "x");
	want = nm("a.example/ns/model:other");
	assert_int_equal(store_find_tag(f->s, &want, &found), -ENOENT);
	want = nm("a.example/ns/nomodel:tag");
	assert_int_equal(store_find_tag(f->s, &want, &found), -ENOENT);
	want = nm("b.example/ns/model:tag");
	assert_int_equal(store_find_tag(f->s, &want, &found), -ENOENT);
	/* A directory where the tag file should be is not a tag. */
	dir = tu_path(f->manifests, "a.example/ns/model/dirtag");
	assert_int_equal(mkdir(dir, 0755), 0);
	want = nm("a.example/ns/model:dirtag");
	assert_int_equal(store_find_tag(f->s, &want, &found), -ENOENT);
	free(dir);
}

static void test_list_tags_sorted_and_filtered(void **state)
{
	struct fx *f = *state;
	static const char *const names[] = {
		"registry.ollama.ai/library/llama3:latest",
		"b.example/Zeta/m:x",
		"a.example/ns/m:t2",
		"b.example/alpha/m:x",
		"a.example/ns/m:T1",
	};
	static const char *const want[] = {
		"a.example/ns/m:T1",
		"a.example/ns/m:t2",
		"b.example/alpha/m:x",
		"b.example/Zeta/m:x",
		"registry.ollama.ai/library/llama3:latest",
	};
	static const char *const junk_dirs[] = {
		".hidden", ".hidden/ns", ".hidden/ns/m",
		"a.example/ns/.dotmodel", "a.example/ns/bad name", "a.example/ns.x",
		"a.example/ns.x/m", "a.example/ns/m/subdir",
	};
	static const char *const junk_files[] = {
		".hidden/ns/m/t", "a.example/ns/.dotmodel/t", "a.example/ns/bad name/t",
		"a.example/ns.x/m/t", "a.example/ns/m/.tmp123", "a.example/ns/m/bad tag",
		"stray-file", "a.example/ns/stray",
	};
	struct store_tag *tags;
	size_t n;
	char buf[NAME_FORMAT_MAX], *p, *link;

	for (size_t i = 0; i < 5; i++)
		write_manifest(f->s, names[i], "{}");
	for (size_t i = 0; i < sizeof(junk_dirs) / sizeof(junk_dirs[0]); i++) {
		p = tu_path(f->manifests, junk_dirs[i]);
		assert_int_equal(mkdir(p, 0755), 0);
		free(p);
	}
	for (size_t i = 0; i < sizeof(junk_files) / sizeof(junk_files[0]); i++) {
		p = tu_path(f->manifests, junk_files[i]);
		tu_write_str(p, "{}");
		free(p);
	}
	/* A symlinked tag is not followed. */
	p = tu_path(f->manifests, "a.example/ns/m/t2");
	link = tu_path(f->manifests, "a.example/ns/m/linked");
	assert_int_equal(symlink(p, link), 0);
	free(p);
	free(link);

	assert_int_equal(store_list_tags(f->s, &tags, &n), 0);
	if (n != 5) {
		for (size_t i = 0; i < n; i++) {
			name_format(&tags[i].name, buf, sizeof(buf));
			fprintf(stderr, "tag %zu: %s\n", i, buf);
		}
		fail_msg("%zu tags, want 5", n);
	}
	for (size_t i = 0; i < n; i++) {
		name_format(&tags[i].name, buf, sizeof(buf));
		assert_string_equal(buf, want[i]);
		assert_true(tags[i].mtime_ns > 0);
	}
	store_tags_free(tags, n);
}

static void test_referenced(void **state)
{
	struct fx *f = *state;
	struct digest_set refs;
	struct digest d;

	write_mj(f->s, "a.example/ns/one:t", '1', "ab");
	write_mj(f->s, "a.example/ns/two:t", '2', "bc");
	assert_int_equal(store_referenced(f->s, &refs), 0);
	assert_true(refs.sealed);
	assert_int_equal(refs.n, 5);
	for (const char *c = "12abc"; *c; c++) {
		d = dg(*c);
		assert_true(digest_set_has(&refs, &d));
	}
	d = dg('d');
	assert_false(digest_set_has(&refs, &d));
	digest_set_release(&refs);
}

/* ---- removing tags ---- */

static void test_remove_tag_frees_unshared_blobs(void **state)
{
	struct fx *f = *state;
	struct model_name one = nm("reg.example/ns1/model1:tag"), found;
	struct store_freed freed;
	char *p;

	write_mj(f->s, "reg.example/ns1/model1:tag", '1', "af");
	write_mj(f->s, "reg.example/ns2/model2:tag", '2', "bf");
	for (const char *c = "12abfe"; *c; c++)
		put_blob(f->s, *c);
	put_partial(f->s, 'a', "");
	put_partial(f->s, 'a', ".map");

	assert_int_equal(store_remove_tag(f->s, &one, &freed), 0);
	assert_int_equal(freed.blobs, 2);       /* its config '1' and layer 'a' */
	assert_int_equal(freed.partials, 1);
	assert_true(freed.bytes >= 2 * BLOB_SIZE);
	assert_false(has_blob(f->s, '1'));
	assert_false(has_blob(f->s, 'a'));
	assert_true(has_blob(f->s, 'f'));       /* shared with model2 */
	assert_true(has_blob(f->s, '2'));
	assert_true(has_blob(f->s, 'b'));
	assert_true(has_blob(f->s, 'e'));       /* unreferenced, but not this tag's */
	assert_false(has_partial(f->s, 'a', ""));
	assert_false(has_partial(f->s, 'a', ".map"));
	assert_false(has_partial(f->s, 'a', ".lock"));
	assert_int_equal(store_find_tag(f->s, &one, &found), -ENOENT);
	/* Empty directories are pruned, shared ones are kept. */
	p = tu_path(f->manifests, "reg.example/ns1");
	assert_false(tu_exists(p));
	free(p);
	p = tu_path(f->manifests, "reg.example/ns2/model2/tag");
	assert_true(tu_exists(p));
	free(p);
}

static void test_remove_tag_keeps_shared_config(void **state)
{
	struct fx *f = *state;
	struct model_name a = nm("m:a");
	struct store_freed freed;

	write_mj(f->s, "m:a", '1', "a");
	write_mj(f->s, "m:b", '1', "b");
	for (const char *c = "1ab"; *c; c++)
		put_blob(f->s, *c);
	assert_int_equal(store_remove_tag(f->s, &a, &freed), 0);
	assert_int_equal(freed.blobs, 1);
	assert_true(has_blob(f->s, '1'));
	assert_false(has_blob(f->s, 'a'));
	assert_true(has_blob(f->s, 'b'));
}

static void test_remove_last_tag_prunes_all_levels(void **state)
{
	struct fx *f = *state;
	struct model_name a = nm("m:a"), b = nm("m:b");
	struct store_freed freed;
	char *p = tu_path(f->manifests, "registry.ollama.ai");

	write_mj(f->s, "m:a", '1', "a");
	write_mj(f->s, "m:b", '1', "b");
	assert_int_equal(store_remove_tag(f->s, &a, &freed), 0);
	assert_true(tu_exists(p)); /* m:b is still there */
	assert_int_equal(store_remove_tag(f->s, &b, &freed), 0);
	assert_false(tu_exists(p));
	assert_true(tu_is_dir(f->manifests));
	assert_int_equal(tu_count_entries(f->manifests), 0);
	free(p);
}

static void test_remove_tag_absent(void **state)
{
	struct fx *f = *state;
	struct model_name a = nm("nothing:here");
	struct store_freed freed;

	memset(&freed, 0xff, sizeof(freed));
	assert_int_equal(store_remove_tag(f->s, &a, &freed), -ENOENT);
	assert_int_equal(freed.blobs, 0);
	assert_int_equal(freed.partials, 0);
	assert_int_equal(freed.bytes, 0);
}

static void test_remove_tag_case_insensitive(void **state)
{
	struct fx *f = *state;
	struct model_name want = nm("HOST.example/NS/MODEL:TAG"), found;
	struct store_freed freed;

	write_mj(f->s, "Host.Example/ns/Model:tag", '1', "a");
	put_blob(f->s, '1');
	put_blob(f->s, 'a');
	assert_int_equal(store_remove_tag(f->s, &want, &freed), 0);
	assert_int_equal(freed.blobs, 2);
	assert_int_equal(store_find_tag(f->s, &want, &found), -ENOENT);
	assert_int_equal(tu_count_entries(f->manifests), 0);
}

static void test_unparseable_manifest_protects_its_digests(void **state)
{
	struct fx *f = *state;
	struct model_name one = nm("m:one");
	struct store_freed freed;
	char junk[256];

	write_mj(f->s, "m:one", '1', "af");
	/* Not a manifest, but it mentions 'f' and '1'. */
	snprintf(junk, sizeof(junk), "garbage {{ \"sha256:%064d\" sha256:%s sha256:%s",
		 0, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
		 "1111111111111111111111111111111111111111111111111111111111111111");
	write_manifest(f->s, "m:broken", junk);
	for (const char *c = "1af"; *c; c++)
		put_blob(f->s, *c);
	assert_int_equal(store_remove_tag(f->s, &one, &freed), 0);
	assert_int_equal(freed.blobs, 1);
	assert_false(has_blob(f->s, 'a'));
	assert_true(has_blob(f->s, 'f'));
	assert_true(has_blob(f->s, '1'));
}

static void test_unparseable_manifest_protects_escaped_digests(void **state)
{
	/*
	 * Found by fuzzing: JSON that the manifest parser refuses (schemaVersion
	 * 3) but reads "sha256\u003a<hex>" from. The scan missed that digest,
	 * so removing another tag freed a blob this manifest names.
	 */
	struct fx *f = *state;
	struct model_name one = nm("m:one");
	struct store_freed freed;
	char junk[256];

	write_mj(f->s, "m:one", '1', "af");
	snprintf(junk, sizeof(junk), "{\"schemaVersion\":3,\"layers\":[{\"digest\":"
		 "\"sha256\\u003a%s\"}]}",
		 "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
	write_manifest(f->s, "m:future", junk);
	for (const char *c = "1af"; *c; c++)
		put_blob(f->s, *c);
	assert_int_equal(store_remove_tag(f->s, &one, &freed), 0);
	assert_int_equal(freed.blobs, 2);
	assert_false(has_blob(f->s, 'a'));
	assert_false(has_blob(f->s, '1'));
	assert_true(has_blob(f->s, 'f'));
}

static void test_removing_unparseable_manifest_frees_mentioned_blobs(void **state)
{
	struct fx *f = *state;
	struct model_name broken = nm("m:broken");
	struct store_freed freed;
	char junk[256];

	snprintf(junk, sizeof(junk), "{ truncated \"digest\":\"sha256:%s\"",
		 "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
	write_manifest(f->s, "m:broken", junk);
	write_mj(f->s, "m:other", '1', "a");
	for (const char *c = "1ac"; *c; c++)
		put_blob(f->s, *c);
	assert_int_equal(store_remove_tag(f->s, &broken, &freed), 0);
	assert_int_equal(freed.blobs, 1);
	assert_false(has_blob(f->s, 'c'));
	assert_true(has_blob(f->s, 'a'));
}

static void test_oversized_manifest_still_protects_its_digests(void **state)
{
	/*
	 * manifest.h: the digest scan exists "so that a store never frees a blob
	 * that some unreadable manifest may use". A tag file too large to read
	 * (here 64 MiB + 1, sparse) is such a manifest.
	 */
	struct fx *f = *state;
	struct store_freed freed;
	char *path, text[128];
	int fd;

	write_manifest(f->s, "m:huge", "{}");
	path = tu_path(f->manifests, "registry.ollama.ai/library/m/huge");
	snprintf(text, sizeof(text), "{\"digest\":\"sha256:%s\"",
		 "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, text, strlen(text), 0), (ssize_t)strlen(text));
	assert_int_equal(ftruncate(fd, (64 << 20) + 1), 0);
	close(fd);
	free(path);
	put_blob(f->s, 'f');
	assert_int_equal(store_gc(f->s, &freed), 0);
	assert_true(has_blob(f->s, 'f'));
}

/* ---- garbage collection ---- */

static void test_gc(void **state)
{
	struct fx *f = *state;
	struct store_freed freed;
	char *readme, *ollama_partial, *junk_partial, *fresh_tmp, *old_tmp, *q;
	struct timespec old[2] = { { .tv_sec = 1000000000 }, { .tv_sec = 1000000000 } };

	write_mj(f->s, "m:a", '1', "ab");
	put_blob(f->s, '1');
	put_blob(f->s, 'a');            /* referenced, complete */
	put_blob(f->s, 'e');            /* unreferenced */
	put_blob(f->s, 'd');            /* unreferenced */
	put_partial(f->s, 'b', "");     /* referenced, in progress: kept */
	put_partial(f->s, 'b', ".map");
	put_partial(f->s, 'c', "");     /* unreferenced partial: removed with map and lock */
	put_partial(f->s, 'c', ".map");
	put_partial(f->s, 'c', ".lock");
	put_partial(f->s, 'a', ".map"); /* leftover next to a complete blob */
	readme = tu_path(f->blobs, "README");
	ollama_partial = tu_path(f->blobs,
		"sha256-9999eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-partial-0");
	junk_partial = tu_path(f->partial, "junk");
	fresh_tmp = tu_path(f->tmp, "tmp.fresh");
	old_tmp = tu_path(f->tmp, "tmp.old");
	q = tu_path(f->quarantine, "sha256-x.123.mismatch");
	tu_write_str(readme, "hi");
	tu_write_str(ollama_partial, "partial");
	tu_write_str(junk_partial, "junk");
	tu_write_str(fresh_tmp, "fresh");
	tu_write_str(old_tmp, "old");
	assert_int_equal(utimensat(AT_FDCWD, old_tmp, old, 0), 0);
	tu_put_pattern(q, BLOB_SIZE);

	assert_int_equal(store_gc(f->s, &freed), 0);
	assert_int_equal(freed.blobs, 2);
	assert_int_equal(freed.partials, 1);
	assert_true(freed.bytes >= 3 * BLOB_SIZE);
	assert_true(has_blob(f->s, '1'));
	assert_true(has_blob(f->s, 'a'));
	assert_false(has_blob(f->s, 'e'));
	assert_false(has_blob(f->s, 'd'));
	assert_true(has_partial(f->s, 'b', ""));
	assert_true(has_partial(f->s, 'b', ".map"));
	assert_false(has_partial(f->s, 'c', ""));
	assert_false(has_partial(f->s, 'c', ".map"));
	assert_false(has_partial(f->s, 'c', ".lock"));
	assert_false(has_partial(f->s, 'a', ".map"));
	assert_true(tu_exists(readme));
	assert_true(tu_exists(ollama_partial));
	assert_true(tu_exists(junk_partial));
	assert_true(tu_exists(fresh_tmp));
	assert_false(tu_exists(old_tmp));
	assert_false(tu_exists(q));
	assert_int_equal(tu_count_entries(f->quarantine), 0);

	/* A second run has nothing left to do. */
	assert_int_equal(store_gc(f->s, &freed), 0);
	assert_int_equal(freed.blobs, 0);
	assert_int_equal(freed.partials, 0);
	free(readme);
	free(ollama_partial);
	free(junk_partial);
	free(fresh_tmp);
	free(old_tmp);
	free(q);
}

static void test_gc_spares_a_locked_partial(void **state)
{
	struct fx *f = *state;
	struct store_freed freed;
	struct digest d = dg('c');
	int fd;

	put_partial(f->s, 'c', "");
	put_partial(f->s, 'c', ".map");
	fd = store_blob_trylock(f->s, &d);
	assert_true(fd >= 0);
	assert_int_equal(store_gc(f->s, &freed), 0);
	assert_int_equal(freed.partials, 0);
	assert_true(has_partial(f->s, 'c', ""));
	assert_true(has_partial(f->s, 'c', ".map"));
	store_blob_unlock(f->s, &d, fd, false);
	assert_int_equal(store_gc(f->s, &freed), 0);
	assert_int_equal(freed.partials, 1);
	assert_false(has_partial(f->s, 'c', ""));
}

/* ---- locks ---- */

static void test_blob_trylock_excludes_other_fds_and_processes(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('a');
	int fd = store_blob_trylock(f->s, &d), fd2;
	pid_t pid;

	assert_true(fd >= 0);
	assert_true(has_partial(f->s, 'a', ".lock"));
	/* Another open file in this process. */
	assert_int_equal(store_blob_trylock(f->s, &d), -EBUSY);
	/* Another process. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(store_blob_trylock(f->s, &d) == -EBUSY ? 0 : 1);
	assert_int_equal(wait_child(pid), 0);
	/* Another digest is independent. */
	{
		struct digest e = dg('b');
		int fe = store_blob_trylock(f->s, &e);
		assert_true(fe >= 0);
		store_blob_unlock(f->s, &e, fe, true);
	}
	store_blob_unlock(f->s, &d, fd, false);
	assert_true(has_partial(f->s, 'a', ".lock"));

	/* Free again: another process gets it. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int r = store_blob_trylock(f->s, &d);
		_exit(r >= 0 ? 0 : 1);
	}
	assert_int_equal(wait_child(pid), 0);

	fd2 = store_blob_trylock(f->s, &d);
	assert_true(fd2 >= 0);
	store_blob_unlock(f->s, &d, fd2, true);
	assert_false(has_partial(f->s, 'a', ".lock"));
	store_blob_unlock(f->s, &d, -1, true); /* no-op */
}

static void test_index_lock_excludes_other_processes(void **state)
{
	struct fx *f = *state;
	char *lock = tu_path(f->state, "lock");
	pid_t pid;

	assert_int_equal(store_lock(f->s), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(lock, O_RDWR);
		_exit(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK ? 0 : 1);
	}
	assert_int_equal(wait_child(pid), 0);
	store_unlock(f->s);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(lock, O_RDWR);
		_exit(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : 1);
	}
	assert_int_equal(wait_child(pid), 0);
	free(lock);
}

struct locker {
	struct store *s;
	int got;          /* set once the thread holds the lock */
};

static void *take_lock(void *arg)
{
	struct locker *l = arg;

	if (store_lock(l->s) == 0) {
		__atomic_store_n(&l->got, 1, __ATOMIC_RELEASE);
		store_unlock(l->s);
	}
	return NULL;
}

/* flock() does not exclude the threads of one process; the index lock must. */
static void test_index_lock_excludes_other_threads(void **state)
{
	struct fx *f = *state;
	struct locker l = { f->s, 0 };
	pthread_t t;

	assert_int_equal(store_lock(f->s), 0);
	assert_int_equal(pthread_create(&t, NULL, take_lock, &l), 0);
	usleep(200 * 1000);
	assert_int_equal(__atomic_load_n(&l.got, __ATOMIC_ACQUIRE), 0);
	store_unlock(f->s);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(l.got, 1);
}

/* ---- blobs in and out ---- */

static void test_open_blob(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('a'), e = dg('e');
	uint8_t buf[16];
	int fd = -1;

	put_blob(f->s, 'a');
	assert_int_equal(store_open_blob(f->s, &d, BLOB_SIZE, &fd), 0);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, sizeof(buf), 100), (ssize_t)sizeof(buf));
	for (size_t i = 0; i < sizeof(buf); i++)
		assert_int_equal(buf[i], tu_pattern(100 + i));
	close(fd);
	assert_int_equal(store_open_blob(f->s, &e, BLOB_SIZE, &fd), -ENOENT);
}

static void test_open_blob_of_another_size_is_left_alone(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('a');
	int fd = -1;

	/* The blob is verified; a manifest that says otherwise is wrong. */
	put_blob(f->s, 'a');
	assert_int_equal(store_open_blob(f->s, &d, BLOB_SIZE + 1, &fd), -EBADMSG);
	assert_int_equal(fd, -1);
	assert_true(has_blob(f->s, 'a'));
	assert_int_equal(tu_count_entries(f->quarantine), 0);
	assert_int_equal(store_open_blob(f->s, &d, BLOB_SIZE, &fd), 0);
	close(fd);
}

static void test_open_blob_of_another_size_read_only(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('a');
	struct store *ro;
	int fd = -1;

	put_blob(f->s, 'a');
	assert_int_equal(store_open(f->root, 0, &ro), 0);
	assert_false(ro->writable);
	assert_int_equal(store_open_blob(ro, &d, BLOB_SIZE - 1, &fd), -EBADMSG);
	assert_true(has_blob(f->s, 'a'));   /* left alone */
	assert_int_equal(store_open_blob(ro, &d, BLOB_SIZE, &fd), 0);
	close(fd);
	store_close(ro);
}

static void test_manifest_with_another_size_for_a_verified_blob(void **state)
{
	struct fx *f = *state;
	struct model_name n = nm("h.example/ns/bad:t"), found;
	struct digest b = dg('b');
	char *path = store_blob_path(f->s, &b), *text = mj('c', "b"), err[512];
	struct manifest *m;

	tu_put_pattern(path, BLOB_SIZE - 1);
	assert_int_equal(manifest_parse(text, strlen(text), &m, err, sizeof(err)), 0);
	assert_int_equal(store_check_manifest(f->s, m, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "sha256:bbbbbbbb"));
	assert_non_null(strstr(err, "8192 bytes"));
	assert_non_null(strstr(err, "has 8191"));
	assert_int_equal(store_write_manifest(f->s, &n, text, strlen(text)), -EBADMSG);
	assert_int_equal(store_find_tag(f->s, &n, &found), -ENOENT);
	assert_int_equal(tu_count_entries(f->manifests), 0);
	/* The right size, or a blob not in the store, is fine. */
	manifest_free(m);
	tu_put_pattern(path, BLOB_SIZE);
	assert_int_equal(manifest_parse(text, strlen(text), &m, err, sizeof(err)), 0);
	assert_int_equal(store_check_manifest(f->s, m, err, sizeof(err)), 0);
	write_manifest(f->s, "h.example/ns/bad:t", text);
	manifest_free(m);
	free(text);
	free(path);
}

static void test_commit_blob(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('c');
	int fd;

	/* No manifest names it (its tag was removed while it was fetched): nothing is kept. */
	put_partial(f->s, 'c', "");
	put_partial(f->s, 'c', ".map");
	assert_int_equal(store_commit_blob(f->s, &d), -ESTALE);
	assert_false(has_blob(f->s, 'c'));
	assert_false(has_partial(f->s, 'c', ""));
	assert_false(has_partial(f->s, 'c', ".map"));
	/* Named by a manifest: committed. */
	write_mj(f->s, "a.example/ns/m:t", '1', "c");
	put_partial(f->s, 'c', "");
	put_partial(f->s, 'c', ".map");
	assert_int_equal(store_commit_blob(f->s, &d), 0);
	assert_true(has_blob(f->s, 'c'));
	assert_false(has_partial(f->s, 'c', ""));
	assert_false(has_partial(f->s, 'c', ".map"));
	assert_int_equal(store_open_blob(f->s, &d, BLOB_SIZE, &fd), 0);
	close(fd);
	/* Nothing to commit. */
	d = dg('d');
	write_mj(f->s, "a.example/ns/m:t2", '1', "d");
	assert_int_equal(store_commit_blob(f->s, &d), -ENOENT);
	assert_false(has_blob(f->s, 'd'));
}

/*
 * A group of blobs committed together: each is kept or refused as on its
 * own, and the renames share one fsync of blobs/, not one each.
 */
static void test_commit_blobs_share_one_directory_sync(void **state)
{
	struct fx *f = *state;
	struct digest d[5] = { dg('c'), dg('d'), dg('e'), dg('f'), dg('9') };
	int rets[5], fd;

	write_mj(f->s, "a.example/ns/m:t", '1', "cde9");
	for (const char *c = "cdef"; *c; c++) {   /* 9 has no partial file */
		put_partial(f->s, *c, "");
		put_partial(f->s, *c, ".map");
	}
	unsigned long before = f->s->commit_syncs;
	store_commit_blobs(f->s, d, 5, rets);
	assert_int_equal(f->s->commit_syncs - before, 1);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rets[i], 0);
		assert_int_equal(store_open_blob(f->s, &d[i], BLOB_SIZE, &fd), 0);
		close(fd);
		assert_false(has_partial(f->s, (char)('c' + i), ""));
		assert_false(has_partial(f->s, (char)('c' + i), ".map"));
	}
	/* f: no manifest names it, so it is deleted, not kept; 9: nothing to commit. */
	assert_int_equal(rets[3], -ESTALE);
	assert_false(has_blob(f->s, 'f'));
	assert_false(has_partial(f->s, 'f', ""));
	assert_int_equal(rets[4], -ENOENT);
	assert_false(has_blob(f->s, '9'));
	/* A group with nothing to rename syncs nothing. */
	before = f->s->commit_syncs;
	store_commit_blobs(f->s, &d[4], 1, rets);
	assert_int_equal(rets[0], -ENOENT);
	assert_int_equal(f->s->commit_syncs - before, 0);
}

static void test_quarantine_partial_and_complete(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('c'), e = dg('e');
	char *q;

	put_partial(f->s, 'c', "");
	put_partial(f->s, 'c', ".map");
	assert_int_equal(store_quarantine_blob(f->s, &d), 0);
	assert_false(has_partial(f->s, 'c', ""));
	assert_false(has_partial(f->s, 'c', ".map"));
	assert_false(has_blob(f->s, 'c'));
	q = tu_find_entry(f->quarantine, "sha256-cccc");
	assert_non_null(q);
	assert_non_null(strstr(q, ".mismatch"));
	free(q);

	put_blob(f->s, 'e');
	assert_int_equal(store_quarantine_complete(f->s, &e, "corrupt"), 0);
	assert_false(has_blob(f->s, 'e'));
	q = tu_find_entry(f->quarantine, "sha256-eeee");
	assert_non_null(q);
	assert_non_null(strstr(q, ".corrupt"));
	free(q);
	assert_int_equal(tu_count_entries(f->quarantine), 2);

	/* Nothing there. */
	assert_int_equal(store_quarantine_complete(f->s, &e, "corrupt"), -ENOENT);
	assert_int_equal(store_quarantine_blob(f->s, &d), -ENOENT);
}

/* ---- links and other files that are not ours ---- */

/* A file outside the store with known content; returns its path. */
static char *victim(struct fx *f, const char *content)
{
	char *p = tu_path(f->dir, "victim");

	tu_write_str(p, content);
	return p;
}

static void assert_file_is(const char *path, const char *content)
{
	size_t len;
	char *got = tu_read(path, &len);

	assert_int_equal(len, strlen(content));
	assert_memory_equal(got, content, len);
	free(got);
}

static void test_open_blob_through_a_link_is_quarantined(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('a');
	char *v = tu_path(f->dir, "victim"), *p = store_blob_path(f->s, &d), *q;
	int fd = -1;

	tu_put_pattern(v, BLOB_SIZE);        /* the right size: only the link is wrong */
	assert_int_equal(symlink(v, p), 0);
	assert_int_equal(store_open_blob(f->s, &d, BLOB_SIZE, &fd), -ENOENT);
	assert_int_equal(fd, -1);
	assert_false(tu_exists(p) || access(p, F_OK) == 0);
	q = tu_find_entry(f->quarantine, "sha256-aaaa");
	assert_non_null(q);
	assert_non_null(strstr(q, "notafile"));
	assert_true(tu_exists(v));
	assert_int_equal(store_open_complete(f->s, &d), -ENOENT);
	assert_int_equal(store_local_bytes(f->s, &d, BLOB_SIZE), 0);
	free(q);
	free(p);
	free(v);
}

static void test_open_blob_fifo_does_not_hang(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('a');
	char *p = store_blob_path(f->s, &d);
	int fd = -1;

	assert_int_equal(mkfifo(p, 0644), 0);
	assert_int_equal(store_open_complete(f->s, &d), -EFTYPE);
	assert_int_equal(store_open_blob(f->s, &d, 0, &fd), -ENOENT);
	assert_int_equal(tu_count_entries(f->quarantine), 1);
	free(p);
}

static void test_trylock_replaces_a_planted_link(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('b');
	char *made = tu_path(f->dir, "made"), *lock = store_partial_path(f->s, &d, ".lock");
	struct stat st;
	int fd;

	assert_int_equal(symlink(made, lock), 0);
	fd = store_blob_trylock(f->s, &d);
	assert_true(fd >= 0);
	assert_false(tu_exists(made));            /* nothing created through the link */
	assert_int_equal(lstat(lock, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	store_blob_unlock(f->s, &d, fd, true);
	free(made);
	free(lock);
}

static void test_partial_open_never_writes_through_a_link(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('c');
	char *v = victim(f, "precious"), *p = store_partial_path(f->s, &d, "");
	char *map = store_partial_path(f->s, &d, ".map");
	struct stat st;
	int wfd, rfd;

	assert_int_equal(symlink(v, p), 0);
	assert_int_equal(symlink(v, map), 0);
	assert_int_equal(store_partial_open(f->s, &d, BLOB_SIZE, &wfd, &rfd), 0);
	assert_int_equal(pwrite(wfd, "x", 1, 0), 1);
	assert_file_is(v, "precious");
	assert_int_equal(lstat(p, &st), 0);
	assert_true(S_ISREG(st.st_mode) && st.st_size == BLOB_SIZE);
	assert_int_equal(access(map, F_OK), -1);   /* the map of what was there went too */
	close(wfd);
	close(rfd);
	free(map);
	free(p);
	free(v);
}

static void test_partial_open_never_writes_into_a_second_link(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('c');
	char *v = victim(f, "precious"), *p = store_partial_path(f->s, &d, "");
	struct chunkmap *m;
	struct stat st;
	int wfd, rfd;

	assert_int_equal(link(v, p), 0);
	assert_int_equal(store_partial_open(f->s, &d, BLOB_SIZE, &wfd, &rfd), 0);
	assert_int_equal(pwrite(wfd, "x", 1, 0), 1);
	assert_file_is(v, "precious");
	assert_int_equal(fstat(rfd, &st), 0);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(store_partial_load_map(f->s, &d, BLOB_SIZE, &m), -ENOENT);
	close(wfd);
	close(rfd);
	/* A file of ours is kept: a resumed download. */
	assert_int_equal(store_partial_open(f->s, &d, BLOB_SIZE, &wfd, &rfd), 0);
	char c = 0;
	assert_int_equal(pread(rfd, &c, 1, 0), 1);
	assert_int_equal(c, 'x');
	close(wfd);
	close(rfd);
	free(p);
	free(v);
}

/* Save a map of blob d, in chunks of 1 KiB, with chunks [0, n) durable. */
static void save_chunks(const struct store *s, const struct digest *d, uint32_t n)
{
	uint64_t bounds[BLOB_SIZE / 1024 + 1];
	uint8_t *buf;
	size_t len;

	for (uint32_t i = 0; i <= BLOB_SIZE / 1024; i++)
		bounds[i] = i * 1024;
	struct chunkmap *m = chunkmap_new_table(BLOB_SIZE, BLOB_SIZE / 1024, bounds, NULL);

	for (uint32_t i = 0; i < n; i++)
		chunkmap_set(m, i);
	chunkmap_encode(m, d, &buf, &len);
	assert_int_equal(store_partial_save_map(s, d, buf, len), 0);
	free(buf);
	chunkmap_free(m);
}

static void test_partial_peek_sees_what_the_holder_made_durable(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('f');
	struct store_stamp stamp = { 0 };
	struct chunkmap *m;
	int wfd, rfd, fd = -1, newfd;

	assert_int_equal(store_partial_open(f->s, &d, BLOB_SIZE, &wfd, &rfd), 0);
	/* Nothing durable yet. */
	assert_int_equal(store_partial_peek(f->s, &d, BLOB_SIZE, &stamp, &fd, &newfd, &m),
			 -ENOENT);
	assert_int_equal(pwrite(wfd, "y", 1, 0), 1);
	save_chunks(f->s, &d, 1);
	assert_int_equal(store_partial_peek(f->s, &d, BLOB_SIZE, &stamp, &fd, &newfd, &m), 1);
	assert_true(newfd >= 0);
	fd = newfd;
	assert_int_equal(chunkmap_count(m), 1);
	chunkmap_free(m);
	char c = 0;
	assert_int_equal(pread(fd, &c, 1, 0), 1);
	assert_int_equal(c, 'y');
	/* The same map again: nothing to read. */
	assert_int_equal(store_partial_peek(f->s, &d, BLOB_SIZE, &stamp, &fd, &newfd, &m), 0);
	/* A new map of the same file: no new descriptor. */
	save_chunks(f->s, &d, 3);
	assert_int_equal(store_partial_peek(f->s, &d, BLOB_SIZE, &stamp, &fd, &newfd, &m), 1);
	assert_int_equal(newfd, -1);
	assert_int_equal(chunkmap_count(m), 3);
	chunkmap_free(m);
	close(wfd);
	close(rfd);

	/* The download starts over in a new file: its old map goes before it is made. */
	store_partial_remove(f->s, &d, NULL);
	save_chunks(f->s, &d, 5);      /* a map whose file is gone */
	assert_int_equal(store_partial_open(f->s, &d, BLOB_SIZE, &wfd, &rfd), 0);
	assert_int_equal(store_partial_peek(f->s, &d, BLOB_SIZE, &stamp, &fd, &newfd, &m),
			 -ENOENT);
	save_chunks(f->s, &d, 2);
	assert_int_equal(store_partial_peek(f->s, &d, BLOB_SIZE, &stamp, &fd, &newfd, &m), 1);
	assert_true(newfd >= 0);       /* another file than the one fd reads */
	assert_int_equal(chunkmap_count(m), 2);
	chunkmap_free(m);
	close(newfd);
	close(fd);
	close(wfd);
	close(rfd);
}

/* Size of d's wants file, or -1. */
static long wants_size(struct fx *f, struct digest *d)
{
	char hex[DIGEST_STR_LEN], *name, *path;
	struct stat st;
	long size;

	digest_format(d, hex);
	if (asprintf(&name, "sha256-%s.want", strchr(hex, ':') + 1) < 0)
		abort();
	path = tu_path(f->partial, name);
	size = stat(path, &st) == 0 ? (long)st.st_size : -1;
	free(path);
	free(name);
	return size;
}

/*
 * A reader that waits many times does not grow the wants file without bound:
 * the holder drops what its read timeout has outlived once it has read all,
 * a new holder still finds what is fresh, and writers stop at a limit.
 */
static void test_partial_wants_stay_small(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('b');
	uint64_t asked[STORE_WANTS_MAX][2], got[STORE_WANTS_MAX][2], pos = 0;
	int ret = 0, n = 0;

	for (int i = 0; i < STORE_WANTS_MAX; i++) {
		asked[i][0] = (uint64_t)i * 4096;
		asked[i][1] = 4096;
	}
	for (int k = 0; k < 4; k++)
		assert_int_equal(store_partial_want(f->s, &d, asked, STORE_WANTS_MAX), 0);
	while ((ret = store_partial_wants(f->s, &d, &pos, 60000, got, STORE_WANTS_MAX)) > 0)
		n += ret;
	assert_int_equal(n, 4 * STORE_WANTS_MAX);
	/* All young: all kept, for a holder that comes next. */
	assert_int_equal(wants_size(f, &d), 4 * STORE_WANTS_MAX * 24);
	usleep(20 * 1000);
	assert_int_equal(store_partial_want(f->s, &d, asked, 3), 0);
	/* The holder reads the three new ones, then drops the old. */
	assert_int_equal(store_partial_wants(f->s, &d, &pos, 10, got, STORE_WANTS_MAX), 3);
	assert_int_equal(wants_size(f, &d), 3 * 24);
	assert_int_equal(pos, 3 * 24);
	assert_int_equal(store_partial_want(f->s, &d, asked + 5, 1), 0);
	assert_int_equal(store_partial_wants(f->s, &d, &pos, 60000, got, STORE_WANTS_MAX), 1);
	assert_int_equal(got[0][0], 5 * 4096);
	uint64_t fresh = 0;
	assert_int_equal(store_partial_wants(f->s, &d, &fresh, 60000, got, STORE_WANTS_MAX), 4);

	/* Nobody reads: writers stop at the limit, with a reason. */
	for (int k = 0; k < 1000 && (ret = store_partial_want(f->s, &d, asked, STORE_WANTS_MAX)) == 0;
	     k++)
		;
	assert_int_equal(ret, -EFBIG);
	assert_true(wants_size(f, &d) <= 4096 * 24);
	assert_true(wants_size(f, &d) > 4000 * 24);
	store_partial_remove(f->s, &d, NULL);
}

static void test_partial_wants_reach_the_holder_once(void **state)
{
	struct fx *f = *state;
	struct digest d = dg('e');
	const uint64_t asked[2][2] = { { 0, 100 }, { 4096, 10 } }, more[1][2] = { { 7, 1 } };
	uint64_t got[STORE_WANTS_MAX][2], pos = 0;

	assert_int_equal(store_partial_wants(f->s, &d, &pos, 60000, got, STORE_WANTS_MAX), 0);
	assert_int_equal(store_partial_want(f->s, &d, asked, 2), 0);
	assert_int_equal(store_partial_want(f->s, &d, more, 1), 0);
	assert_int_equal(store_partial_wants(f->s, &d, &pos, 60000, got, 2), 2);
	assert_int_equal(got[0][0], 0);
	assert_int_equal(got[0][1], 100);
	assert_int_equal(got[1][0], 4096);
	assert_int_equal(got[1][1], 10);
	assert_int_equal(store_partial_wants(f->s, &d, &pos, 60000, got, STORE_WANTS_MAX), 1);
	assert_int_equal(got[0][0], 7);
	assert_int_equal(store_partial_wants(f->s, &d, &pos, 60000, got, STORE_WANTS_MAX), 0);
	/* A new holder reads them all again, but only those young enough. */
	pos = 0;
	usleep(20 * 1000);
	assert_int_equal(store_partial_wants(f->s, &d, &pos, 5, got, STORE_WANTS_MAX), 0);
	assert_int_equal(pos, 3 * 24);
	/* They go with the partial download. */
	assert_true(has_partial(f->s, 'e', ".want"));
	store_partial_remove(f->s, &d, NULL);
	assert_false(has_partial(f->s, 'e', ".want"));
}

static void test_manifests_are_never_read_through_links(void **state)
{
	struct fx *f = *state;
	struct model_name n = nm("a.example/ns/m:t"), found;
	char *v = victim(f, "{}"), *dir = tu_path(f->dir, "elsewhere");
	char *model = tu_path(f->manifests, "a.example/ns/m"), *buf;
	struct store_tag *tags;
	size_t len, ntags;

	write_manifest(f->s, "a.example/ns/real:t", "{}");
	/* A linked model directory, and a linked tag. */
	assert_int_equal(mkdir(dir, 0755), 0);
	{
		char *t = tu_path(dir, "t");
		tu_write_str(t, "{}");
		free(t);
	}
	assert_int_equal(symlink(dir, model), 0);
	assert_int_equal(store_find_tag(f->s, &n, &found), -ENOENT);
	assert_int_equal(store_read_manifest(f->s, &n, &buf, &len, NULL), -ELOOP);
	assert_int_equal(store_list_tags(f->s, &tags, &ntags), 0);
	assert_int_equal(ntags, 1);
	store_tags_free(tags, ntags);
	free(model);
	model = tu_path(f->manifests, "a.example/ns/real/linked");
	assert_int_equal(symlink(v, model), 0);
	n = nm("a.example/ns/real:linked");
	assert_int_equal(store_read_manifest(f->s, &n, &buf, &len, NULL), -ELOOP);
	free(model);
	free(dir);
	free(v);
}

/* ---- who may write to the store ---- */

static void test_open_refuses_a_store_others_may_write(void **state)
{
	struct fx *f = *state;
	struct store *s;

	assert_int_equal(chmod(f->root, 0777), 0);
	assert_int_equal(store_open(f->root, 0, &s), -EPERM);
	assert_int_equal(store_open(f->root, STORE_CREATE, &s), -EPERM);
	assert_int_equal(store_open(f->root, STORE_TRUST, &s), 0);
	store_close(s);
	/* Sticky, like /tmp: others cannot replace what is in it. */
	assert_int_equal(chmod(f->root, 01777), 0);
	assert_int_equal(store_open(f->root, STORE_CREATE, &s), 0);
	store_close(s);
	assert_int_equal(chmod(f->root, 0755), 0);
	/* Below the root, the sticky bit does not help: others could add blobs. */
	const char *dirs[] = { f->blobs, f->manifests, f->state, f->partial, f->tmp,
			       f->quarantine };
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		int mode = tu_mode_of(dirs[i]);
		assert_int_equal(chmod(dirs[i], 01770), 0);
		if (store_open(f->root, 0, &s) != -EPERM)
			fail_msg("'%s' mode 1770 was accepted", dirs[i]);
		assert_int_equal(chmod(dirs[i], (mode_t)mode), 0);
	}
	assert_int_equal(store_open(f->root, 0, &s), 0);
	store_close(s);
}

static void test_open_refuses_a_directory_of_a_third_user(void **state)
{
	struct fx *f = *state;
	struct store *s;

	if (geteuid() != 0)
		skip();
	assert_int_equal(chown(f->blobs, 4242, 4242), 0);
	assert_int_equal(store_open(f->root, 0, &s), -EPERM);
	assert_int_equal(store_open(f->root, STORE_TRUST, &s), 0);
	store_close(s);
	/* A store that belongs to one user (Ollama's): root may use it. */
	const char *all[] = { f->root, f->manifests, f->state, f->partial, f->tmp,
			      f->quarantine };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		assert_int_equal(chown(all[i], 4242, 4242), 0);
	assert_int_equal(store_open(f->root, STORE_CREATE, &s), 0);
	store_close(s);
}

static void test_open_refuses_a_linked_directory(void **state)
{
	struct fx *f = *state;
	char *elsewhere = tu_path(f->dir, "elsewhere");
	struct store *s;

	assert_int_equal(mkdir(elsewhere, 0755), 0);
	assert_int_equal(tu_rm_rf(f->blobs), 0);
	assert_int_equal(symlink(elsewhere, f->blobs), 0);
	assert_int_equal(store_open(f->root, STORE_CREATE, &s), -ELOOP);
	assert_int_equal(store_open(f->root, 0, &s), -ELOOP);
	free(elsewhere);
}

/* ---- the quota ---- */

static void set_atime(const struct store *s, char c, time_t t)
{
	struct digest d = dg(c);
	char *p = store_blob_path(s, &d);
	struct timespec ts[2] = { { .tv_sec = t }, { .tv_nsec = UTIME_OMIT } };

	assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
	free(p);
}

static void test_evict_makes_room_for_what_comes(void **state)
{
	struct fx *f = *state;
	struct store_freed freed;
	struct stat st;
	char *p;
	struct digest a = dg('a');

	put_blob(f->s, 'a');
	put_blob(f->s, 'b');
	put_blob(f->s, 'c');
	set_atime(f->s, 'a', 1000);       /* the least recently used */
	set_atime(f->s, 'b', 2000);
	set_atime(f->s, 'c', 3000);
	p = store_blob_path(f->s, &a);
	assert_int_equal(stat(p, &st), 0);
	free(p);
	uint64_t one = (uint64_t)st.st_blocks * 512;
	/* All three fit the quota: nothing goes. */
	assert_int_equal(store_evict(f->s, 3 * one, 0, NULL, NULL, &freed), 0);
	assert_int_equal(freed.blobs, 0);
	/* One more is coming: the least recently used makes room for it. */
	assert_int_equal(store_evict(f->s, 3 * one, one, NULL, NULL, &freed), 0);
	assert_int_equal(freed.blobs, 1);
	assert_int_equal(freed.bytes, one);
	assert_false(has_blob(f->s, 'a'));
	assert_true(has_blob(f->s, 'b') && has_blob(f->s, 'c'));
	/* More than the quota itself: all that may go, goes. */
	assert_int_equal(store_evict(f->s, 3 * one, 4 * one, NULL, NULL, &freed), 0);
	assert_int_equal(freed.blobs, 2);
	assert_false(has_blob(f->s, 'b') || has_blob(f->s, 'c'));
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
#define TB(fn) cmocka_unit_test_setup_teardown(fn, fx_setup_bare, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_open_creates_layout),
		TB(test_open_state_is_private_whatever_the_umask),
		TB(test_open_fixes_existing_state_mode),
		TB(test_open_strips_trailing_slashes),
		TB(test_open_missing_without_create_reads_empty),
		TB(test_open_create_fails_under_a_file),
		cmocka_unit_test(test_default_root_precedence),
		T(test_paths),
		T(test_write_read_find_exact),
		T(test_find_tag_stored_casing_wins),
		T(test_write_other_casing_reuses_directories),
		T(test_find_tag_absent),
		T(test_list_tags_sorted_and_filtered),
		T(test_referenced),
		T(test_remove_tag_frees_unshared_blobs),
		T(test_remove_tag_keeps_shared_config),
		T(test_remove_last_tag_prunes_all_levels),
		T(test_remove_tag_absent),
		T(test_remove_tag_case_insensitive),
		T(test_unparseable_manifest_protects_its_digests),
		T(test_unparseable_manifest_protects_escaped_digests),
		T(test_removing_unparseable_manifest_frees_mentioned_blobs),
		T(test_oversized_manifest_still_protects_its_digests),
		T(test_gc),
		T(test_gc_spares_a_locked_partial),
		T(test_blob_trylock_excludes_other_fds_and_processes),
		T(test_index_lock_excludes_other_processes),
		T(test_index_lock_excludes_other_threads),
		T(test_open_blob),
		T(test_open_blob_of_another_size_is_left_alone),
		T(test_open_blob_of_another_size_read_only),
		T(test_manifest_with_another_size_for_a_verified_blob),
		T(test_commit_blob),
		T(test_commit_blobs_share_one_directory_sync),
		T(test_quarantine_partial_and_complete),
		T(test_evict_makes_room_for_what_comes),
		T(test_open_blob_through_a_link_is_quarantined),
		T(test_open_blob_fifo_does_not_hang),
		T(test_trylock_replaces_a_planted_link),
		T(test_partial_open_never_writes_through_a_link),
		T(test_partial_open_never_writes_into_a_second_link),
		T(test_partial_peek_sees_what_the_holder_made_durable),
		T(test_partial_wants_reach_the_holder_once),
		T(test_partial_wants_stay_small),
		T(test_manifests_are_never_read_through_links),
		T(test_open_refuses_a_store_others_may_write),
		T(test_open_refuses_a_directory_of_a_third_user),
		T(test_open_refuses_a_linked_directory),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
