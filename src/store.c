/*
 * store.c - the content store on disk.
 *
 * The layout is Ollama's, so Ollama and blobfs can share one directory:
 * blobs/sha256-<hex> holds complete, verified blobs only, and
 * manifests/<host>/<ns>/<model>/<tag> holds manifests byte for byte as the
 * registry sent them. Everything unfinished lives under .blobfs/ (mode 0700),
 * where Ollama never looks: partial downloads with their chunk maps and
 * per-blob locks, temporary files on their way to a rename, quarantine.
 *
 * Two kinds of lock keep processes sharing a store out of each other's way:
 * the index lock (.blobfs/lock) serialises changes to the set of manifests
 * and the deletions that follow from them; a per-blob lock file
 * (.blobfs/partial/sha256-<hex>.lock) gives one process the right to write a
 * blob's partial file. Both are flock()s, released by the kernel if the
 * holder dies.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "log.h"
#include "manifest.h"
#include "store.h"
#include "util.h"

/* Temporary files older than this are leftovers of a crash. */
#define STALE_TMP_SECONDS 600

char *store_default_root(const char *opt)
{
	const char *env = getenv("BLOBFS_STORE");
	const char *xdg = getenv("XDG_DATA_HOME");
	const char *home = getenv("HOME");

	if (opt && *opt)
		return xstrdup(opt);
	if (env && *env)
		return xstrdup(env);
	if (xdg && *xdg == '/')
		return xasprintf("%s/blobfs", xdg);
	if (!home || !*home) {
		struct passwd *pw = getpwuid(getuid());
		home = pw ? pw->pw_dir : "/";
	}
	return xasprintf("%s/.local/share/blobfs", home);
}

static int make_dir(const char *path, mode_t mode)
{
	int ret = mkdir_p(path, mode);

	if (ret < 0)
		log_error("cannot create directory '%s': %s", path, strerror(-ret));
	return ret;
}

int store_open(const char *root, bool create, struct store **out)
{
	struct store *s = xcalloc(1, sizeof(*s));
	size_t len = strlen(root);
	int ret = 0;

	while (len > 1 && root[len - 1] == '/')
		len--;
	if (root[0] != '/') {
		/* Absolute, so it still names the same place after a daemon's chdir("/"). */
		char *cwd = getcwd(NULL, 0);
		if (!cwd) {
			ret = -errno;
			log_error("cannot find the current directory for store '%s': %s", root,
				  strerror(errno));
			free(s);
			return ret;
		}
		s->root = xasprintf("%s/%.*s", cwd, (int)len, root);
		free(cwd);
	} else {
		s->root = xstrndup(root, len);
	}
	s->blobs = xasprintf("%s/blobs", s->root);
	s->manifests = xasprintf("%s/manifests", s->root);
	s->state = xasprintf("%s/.blobfs", s->root);
	s->partial = xasprintf("%s/partial", s->state);
	s->tmp = xasprintf("%s/tmp", s->state);
	s->quarantine = xasprintf("%s/quarantine", s->state);
	s->lockfd = -1;

	if (create) {
		if ((ret = make_dir(s->root, 0755)) < 0 ||
		    (ret = make_dir(s->blobs, 0755)) < 0 ||
		    (ret = make_dir(s->manifests, 0755)) < 0 ||
		    (ret = make_dir(s->state, 0700)) < 0 ||
		    (ret = make_dir(s->partial, 0700)) < 0 ||
		    (ret = make_dir(s->tmp, 0700)) < 0 ||
		    (ret = make_dir(s->quarantine, 0700)) < 0)
			goto fail;
		/* The state directory may hold credentials-bearing URLs in logs one day; keep it private. */
		if (chmod(s->state, 0700) < 0) {
			ret = -errno;
			log_error("cannot set the mode of '%s': %s", s->state, strerror(errno));
			goto fail;
		}
		char *lock = xasprintf("%s/lock", s->state);
		s->lockfd = open(lock, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
		if (s->lockfd < 0) {
			ret = -errno;
			log_error("store '%s' is not writable: cannot open '%s': %s",
				  s->root, lock, strerror(errno));
			free(lock);
			goto fail;
		}
		free(lock);
		if (access(s->blobs, W_OK) < 0 || access(s->manifests, W_OK) < 0) {
			ret = -errno;
			log_error("store '%s' is not writable: %s", s->root, strerror(errno));
			goto fail;
		}
		s->writable = true;
	}
	*out = s;
	return 0;
fail:
	store_close(s);
	return ret;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->lockfd >= 0)
		close(s->lockfd);
	free(s->root);
	free(s->blobs);
	free(s->manifests);
	free(s->state);
	free(s->partial);
	free(s->tmp);
	free(s->quarantine);
	free(s);
}

int store_lock(struct store *s)
{
	if (s->lockfd < 0)
		return -EROFS;
	while (flock(s->lockfd, LOCK_EX) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

void store_unlock(struct store *s)
{
	if (s->lockfd >= 0)
		flock(s->lockfd, LOCK_UN);
}

char *store_blob_path(const struct store *s, const struct digest *d)
{
	char name[DIGEST_STR_LEN];

	digest_filename(d, name);
	return xasprintf("%s/%s", s->blobs, name);
}

char *store_partial_path(const struct store *s, const struct digest *d,
			 const char *suffix)
{
	char name[DIGEST_STR_LEN];

	digest_filename(d, name);
	return xasprintf("%s/%s%s", s->partial, name, suffix);
}

char *store_manifest_path(const struct store *s, const struct model_name *n)
{
	return xasprintf("%s/%s/%s/%s/%s", s->manifests, n->host, n->ns, n->model, n->tag);
}

/*
 * Find an entry of dir matching name case-insensitively, preferring an exact
 * match. On success copies the stored spelling into found (size len).
 */
static int find_entry(const char *dir, const char *name, char *found, size_t len)
{
	char *path = xasprintf("%s/%s", dir, name);
	struct stat st;
	DIR *d;
	struct dirent *e;
	int ret = -ENOENT;

	if (lstat(path, &st) == 0) {
		free(path);
		snprintf(found, len, "%s", name);
		return 0;
	}
	free(path);
	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? -ENOENT : -errno;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.' && strcasecmp(e->d_name, name) == 0 &&
		    strlen(e->d_name) < len) {
			snprintf(found, len, "%s", e->d_name);
			ret = 0;
			break;
		}
	}
	closedir(d);
	return ret;
}

/* The four parts of a name, in path order, with their buffer sizes. */
static void name_parts(struct model_name *n, char *part[4], size_t size[4])
{
	part[0] = n->host;  size[0] = sizeof(n->host);
	part[1] = n->ns;    size[1] = sizeof(n->ns);
	part[2] = n->model; size[2] = sizeof(n->model);
	part[3] = n->tag;   size[3] = sizeof(n->tag);
}

int store_find_tag(const struct store *s, const struct model_name *want,
		   struct model_name *found)
{
	struct model_name n = *want;
	char *part[4], *dir = xstrdup(s->manifests);
	size_t size[4];
	int ret = 0;

	name_parts(&n, part, size);
	for (int i = 0; i < 4 && ret == 0; i++) {
		char buf[NAME_HOST_MAX + 1];
		ret = find_entry(dir, part[i], buf, sizeof(buf));
		if (ret < 0)
			break;
		snprintf(part[i], size[i], "%s", buf);
		char *next = xasprintf("%s/%s", dir, buf);
		free(dir);
		dir = next;
	}
	if (ret == 0) {
		struct stat st;
		if (stat(dir, &st) < 0 || !S_ISREG(st.st_mode))
			ret = -ENOENT;
	}
	free(dir);
	if (ret == 0) {
		memcpy(n.scheme, want->scheme, sizeof(n.scheme));
		*found = n;
	}
	return ret;
}

int store_read_manifest(const struct store *s, const struct model_name *n,
			char **buf, size_t *len)
{
	char *path = store_manifest_path(s, n);
	int ret = read_file(path, MANIFEST_MAX_BYTES, buf, len);

	free(path);
	return ret;
}

int store_write_manifest(struct store *s, const struct model_name *want,
			 const char *buf, size_t len)
{
	struct model_name n = *want;
	char *part[4], *dir, *path = NULL;
	size_t size[4];
	int ret;

	if ((ret = store_lock(s)) < 0)
		return ret;
	name_parts(&n, part, size);
	dir = xstrdup(s->manifests);
	for (int i = 0; i < 4; i++) {
		char buf2[NAME_HOST_MAX + 1];
		if (find_entry(dir, part[i], buf2, sizeof(buf2)) == 0)
			snprintf(part[i], size[i], "%s", buf2);
		char *next = xasprintf("%s/%s", dir, part[i]);
		if (i < 3 && (ret = mkdir_p(next, 0755)) < 0) {
			log_error("cannot create directory '%s': %s", next, strerror(-ret));
			free(next);
			goto out;
		}
		free(dir);
		dir = next;
	}
	path = dir;
	dir = NULL;
	ret = write_file_atomic(s->tmp, path, buf, len, 0644);
	if (ret < 0)
		log_error("cannot write manifest '%s': %s", path, strerror(-ret));
out:
	free(dir);
	free(path);
	store_unlock(s);
	return ret;
}

static bool is_dir_entry(int dirfd, const struct dirent *e, bool want_dir, int64_t *mtime)
{
	struct stat st;

	if (e->d_name[0] == '.')
		return false;
	if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return false;
	if (mtime)
		*mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	return want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode);
}

struct tag_list {
	struct store_tag *v;
	size_t n, cap;
};

static void walk_level(const char *dir, int level, struct model_name *n,
		       struct tag_list *out)
{
	static const enum name_part kind[] = { NAME_HOST, NAME_NAMESPACE, NAME_MODEL, NAME_TAG };
	char *part[4];
	size_t size[4];
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	name_parts(n, part, size);
	while ((e = readdir(d)) != NULL) {
		int64_t mtime = 0;
		if (!is_dir_entry(dirfd(d), e, level < 3, &mtime))
			continue;
		if (strlen(e->d_name) >= size[level] || !name_part_valid(kind[level], e->d_name)) {
			log_debug("ignoring '%s/%s': not a valid name part", dir, e->d_name);
			continue;
		}
		snprintf(part[level], size[level], "%s", e->d_name);
		char *path = xasprintf("%s/%s", dir, e->d_name);
		if (level < 3) {
			walk_level(path, level + 1, n, out);
			free(path);
			continue;
		}
		if (out->n == out->cap) {
			out->cap = out->cap ? 2 * out->cap : 32;
			out->v = xrealloc(out->v, out->cap * sizeof(*out->v));
		}
		out->v[out->n].name = *n;
		out->v[out->n].path = path;
		out->v[out->n].mtime_ns = mtime;
		out->n++;
	}
	closedir(d);
}

static int cmp_tag(const void *a, const void *b)
{
	const struct model_name *x = &((const struct store_tag *)a)->name;
	const struct model_name *y = &((const struct store_tag *)b)->name;
	int c;

	if ((c = strcasecmp(x->host, y->host)) || (c = strcasecmp(x->ns, y->ns)) ||
	    (c = strcasecmp(x->model, y->model)))
		return c;
	return strcasecmp(x->tag, y->tag);
}

int store_list_tags(const struct store *s, struct store_tag **tags, size_t *n)
{
	struct tag_list out = { 0 };
	struct model_name name;

	memset(&name, 0, sizeof(name));
	walk_level(s->manifests, 0, &name, &out);
	if (out.n)
		qsort(out.v, out.n, sizeof(*out.v), cmp_tag);
	*tags = out.v;
	*n = out.n;
	return 0;
}

void store_tags_free(struct store_tag *tags, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(tags[i].path);
	free(tags);
}

static void add_digest(const struct digest *d, void *arg)
{
	digest_set_add(arg, d);
}

static int add_layer(const struct layer *l, void *arg)
{
	digest_set_add(arg, &l->digest);
	return 0;
}

/*
 * Add the digests a manifest file references. An invalid or oversized
 * manifest still protects every digest that appears in its text; one that
 * cannot be read at all returns its error, and the caller then deletes
 * nothing, since it cannot know which blobs that manifest needs.
 */
static int manifest_file_digests(const char *path, struct digest_set *set)
{
	struct manifest *m;
	struct stat st;
	char err[256];
	void *map;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) < 0) {
		int ret = -errno;
		if (fd >= 0)
			close(fd);
		log_warn("cannot read manifest '%s': %s", path, strerror(-ret));
		return ret;
	}
	if (st.st_size == 0) {
		close(fd);
		return 0;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		int ret = -errno;
		log_warn("cannot read manifest '%s': %s", path, strerror(-ret));
		return ret;
	}
	if (manifest_parse(map, (size_t)st.st_size, &m, err, sizeof(err)) == 0) {
		manifest_for_each_blob(m, add_layer, set);
		manifest_free(m);
	} else {
		manifest_scan_digests(map, (size_t)st.st_size, add_digest, set);
	}
	munmap(map, (size_t)st.st_size);
	return 0;
}

int store_referenced(const struct store *s, struct digest_set *out)
{
	struct store_tag *tags;
	size_t n;
	int ret = 0;

	memset(out, 0, sizeof(*out));
	store_list_tags(s, &tags, &n);
	for (size_t i = 0; i < n && ret == 0; i++)
		ret = manifest_file_digests(tags[i].path, out);
	store_tags_free(tags, n);
	digest_set_seal(out);
	return ret;
}

/* Unlink a file, adding the space it held to *bytes; true if it existed. */
static bool unlink_counted(const char *path, uint64_t *bytes)
{
	struct stat st;

	if (lstat(path, &st) < 0 || unlink(path) < 0)
		return false;
	*bytes += (uint64_t)st.st_blocks * 512;
	return true;
}

/* Delete a blob's partial state unless another process is fetching it. */
static void remove_partial(const struct store *s, const struct digest *d,
			   struct store_freed *freed)
{
	int lockfd = store_blob_trylock(s, d);
	char *data, *map;

	if (lockfd < 0)
		return;
	data = store_partial_path(s, d, "");
	map = store_partial_path(s, d, ".map");
	if (unlink_counted(data, &freed->bytes))
		freed->partials++;
	unlink_counted(map, &freed->bytes);
	store_blob_unlock(s, d, lockfd, true);
	free(data);
	free(map);
}

static void remove_blob(const struct store *s, const struct digest *d,
			struct store_freed *freed)
{
	char *path = store_blob_path(s, d);

	if (unlink_counted(path, &freed->bytes))
		freed->blobs++;
	free(path);
	remove_partial(s, d, freed);
}

static void prune_dirs(const struct store *s, const struct model_name *n)
{
	char *dirs[] = {
		xasprintf("%s/%s/%s/%s", s->manifests, n->host, n->ns, n->model),
		xasprintf("%s/%s/%s", s->manifests, n->host, n->ns),
		xasprintf("%s/%s", s->manifests, n->host),
	};
	bool go = true;

	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		if (go && rmdir(dirs[i]) < 0)
			go = false;
		free(dirs[i]);
	}
	fsync_dir(s->manifests);
}

int store_remove_tag(struct store *s, const struct model_name *want,
		     struct store_freed *freed)
{
	struct digest_set mine = { 0 }, refs = { 0 };
	struct model_name n;
	char *path;
	int ret;

	memset(freed, 0, sizeof(*freed));
	if ((ret = store_lock(s)) < 0)
		return ret;
	ret = store_find_tag(s, want, &n);
	if (ret < 0)
		goto out;
	path = store_manifest_path(s, &n);
	if (manifest_file_digests(path, &mine) < 0)
		digest_set_release(&mine);   /* its blobs stay; gc can take them later */
	if (unlink(path) < 0) {
		ret = -errno;
		log_error("cannot remove manifest '%s': %s", path, strerror(errno));
		free(path);
		goto out;
	}
	fsync_parent(path);
	free(path);
	prune_dirs(s, &n);

	if (store_referenced(s, &refs) < 0) {
		log_warn("not deleting the blobs of '%s/%s/%s:%s': a manifest cannot be read",
			 n.host, n.ns, n.model, n.tag);
		goto out;
	}
	for (size_t i = 0; i < mine.n; i++)
		if (!digest_set_has(&refs, &mine.v[i]))
			remove_blob(s, &mine.v[i], freed);
	fsync_dir(s->blobs);
out:
	digest_set_release(&mine);
	digest_set_release(&refs);
	store_unlock(s);
	return ret;
}

/* Names in partial/ are sha256-<hex>, sha256-<hex>.map or sha256-<hex>.lock. */
static bool partial_digest(const char *name, struct digest *d)
{
	char buf[DIGEST_STR_LEN];

	if (strlen(name) < DIGEST_STR_LEN - 1)
		return false;
	memcpy(buf, name, DIGEST_STR_LEN - 1);
	buf[DIGEST_STR_LEN - 1] = '\0';
	const char *rest = name + DIGEST_STR_LEN - 1;
	if (*rest && strcmp(rest, ".map") != 0 && strcmp(rest, ".lock") != 0)
		return false;
	return digest_parse_filename(buf, d) == 0;
}

static void gc_dir(const char *dir, void (*fn)(const char *dir, const char *name,
					      void *arg), void *arg)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char **names = NULL;
	size_t n = 0;

	if (!d)
		return;
	/* Collect first: deleting while reading a directory may skip entries. */
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		names = xrealloc(names, (n + 1) * sizeof(*names));
		names[n++] = xstrdup(e->d_name);
	}
	closedir(d);
	for (size_t i = 0; i < n; i++) {
		fn(dir, names[i], arg);
		free(names[i]);
	}
	free(names);
}

struct gc_ctx {
	const struct store *s;
	struct digest_set refs;
	struct store_freed *freed;
};

static void gc_blob(const char *dir, const char *name, void *arg)
{
	struct gc_ctx *g = arg;
	struct digest d;

	if (digest_parse_filename(name, &d) < 0 || digest_set_has(&g->refs, &d))
		return;
	char *path = xasprintf("%s/%s", dir, name);
	if (unlink_counted(path, &g->freed->bytes))
		g->freed->blobs++;
	free(path);
}

static void gc_partial(const char *dir, const char *name, void *arg)
{
	struct gc_ctx *g = arg;
	struct digest d;
	char *blob;

	if (!partial_digest(name, &d))
		return;
	blob = store_blob_path(g->s, &d);
	/* Unreferenced, or leftovers next to a blob that is already complete. */
	if (!digest_set_has(&g->refs, &d) || access(blob, F_OK) == 0)
		remove_partial(g->s, &d, g->freed);
	free(blob);
}

static void gc_tmp(const char *dir, const char *name, void *arg)
{
	struct gc_ctx *g = arg;
	char *path = xasprintf("%s/%s", dir, name);
	struct stat st;

	if (stat(path, &st) == 0 &&
	    (uint64_t)st.st_mtime + STALE_TMP_SECONDS < wall_ms() / 1000)
		unlink_counted(path, &g->freed->bytes);
	free(path);
}

static void gc_quarantine(const char *dir, const char *name, void *arg)
{
	struct gc_ctx *g = arg;
	char *path = xasprintf("%s/%s", dir, name);

	unlink_counted(path, &g->freed->bytes);
	free(path);
}

int store_gc(struct store *s, struct store_freed *freed)
{
	struct gc_ctx g = { .s = s, .freed = freed };
	int ret;

	memset(freed, 0, sizeof(*freed));
	if ((ret = store_lock(s)) < 0)
		return ret;
	ret = store_referenced(s, &g.refs);
	if (ret < 0) {
		log_error("not collecting garbage: a manifest cannot be read, so what it uses is unknown");
		goto out;
	}
	gc_dir(s->blobs, gc_blob, &g);
	gc_dir(s->partial, gc_partial, &g);
	gc_dir(s->tmp, gc_tmp, &g);
	gc_dir(s->quarantine, gc_quarantine, &g);
	fsync_dir(s->blobs);
out:
	digest_set_release(&g.refs);
	store_unlock(s);
	return ret;
}

void store_touch_blob(const struct store *s, const struct digest *d)
{
	char *path = store_blob_path(s, d);
	const struct timespec ts[2] = { { .tv_nsec = UTIME_NOW }, { .tv_nsec = UTIME_OMIT } };

	utimensat(AT_FDCWD, path, ts, 0);   /* best effort: at worst it is evicted sooner */
	free(path);
}

struct cached {
	struct digest d;
	uint64_t bytes;      /* space it takes */
	int64_t atime;
};

static int cmp_atime(const void *a, const void *b)
{
	const struct cached *x = a, *y = b;

	return (x->atime > y->atime) - (x->atime < y->atime);
}

/*
 * The most the cache may hold now: the quota, and no more than leaves
 * headroom free (5% of the filesystem, at most 1 GiB) given what it holds.
 */
static uint64_t cache_limit(const struct store *s, uint64_t max, uint64_t used)
{
	struct statvfs sv;

	if (statvfs(s->root, &sv) == 0) {
		uint64_t total = (uint64_t)sv.f_blocks * sv.f_frsize;
		uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
		uint64_t headroom = MIN(total / 20, 1ULL << 30);
		uint64_t fits = used + avail > headroom ? used + avail - headroom : 0;
		max = MIN(max, fits);
	}
	return max;
}

int store_evict(struct store *s, uint64_t max,
		bool (*in_use)(void *arg, const struct digest *d), void *arg,
		struct store_freed *freed)
{
	struct cached *v = NULL;
	size_t n = 0, cap = 0;
	uint64_t used = 0, limit;
	DIR *dir;
	struct dirent *e;
	int ret;

	memset(freed, 0, sizeof(*freed));
	if ((ret = store_lock(s)) < 0)
		return ret;
	dir = opendir(s->blobs);
	while (dir && (e = readdir(dir)) != NULL) {
		struct stat st;
		struct digest d;
		if (digest_parse_filename(e->d_name, &d) < 0 ||
		    fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 256;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n].d = d;
		v[n].bytes = (uint64_t)st.st_blocks * 512;
		v[n].atime = (int64_t)st.st_atim.tv_sec * 1000000000 + st.st_atim.tv_nsec;
		used += v[n].bytes;
		n++;
	}
	if (dir)
		closedir(dir);
	limit = cache_limit(s, max, used);
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_atime);
	for (size_t i = 0; i < n && used > limit; i++) {
		if (in_use && in_use(arg, &v[i].d))
			continue;
		char *path = store_blob_path(s, &v[i].d);
		if (unlink(path) == 0) {
			char name[DIGEST_STR_LEN];
			digest_format(&v[i].d, name);
			log_info("evicted '%s' from the cache (least recently used)", name);
			used -= v[i].bytes;
			freed->blobs++;
			freed->bytes += v[i].bytes;
		}
		free(path);
	}
	if (freed->blobs)
		fsync_dir(s->blobs);
	free(v);
	store_unlock(s);
	return 0;
}

static int move_to_quarantine(const struct store *s, const char *from,
			      const struct digest *d, const char *why)
{
	char name[DIGEST_STR_LEN];
	char *to;
	int ret = 0;

	digest_filename(d, name);
	to = xasprintf("%s/%s.%llu.%s", s->quarantine, name,
		       (unsigned long long)wall_ms(), why);
	if (rename(from, to) < 0) {
		ret = -errno;
		log_error("cannot move '%s' to quarantine: %s", from, strerror(errno));
	}
	free(to);
	return ret;
}

int store_open_blob(const struct store *s, const struct digest *d, uint64_t size,
		    int *fdp)
{
	char *path = store_blob_path(s, d);
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		close(fd);
		goto out;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
		char hex[DIGEST_STR_LEN];
		digest_format(d, hex);
		close(fd);
		log_warn("blob '%s' in the store has %lld bytes but should have %llu%s",
			 hex, (long long)st.st_size, (unsigned long long)size,
			 s->writable ? "; moved to quarantine" : "");
		if (s->writable)
			move_to_quarantine(s, path, d, "badsize");
		ret = s->writable ? -ENOENT : -EIO;
		goto out;
	}
	*fdp = fd;
out:
	free(path);
	return ret;
}

int store_blob_trylock(const struct store *s, const struct digest *d)
{
	char *path = store_partial_path(s, d, ".lock");
	struct stat a, b;
	int fd, ret;

	for (;;) {
		fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
		if (fd < 0) {
			ret = -errno;
			break;
		}
		if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
			ret = errno == EWOULDBLOCK ? -EBUSY : -errno;
			close(fd);
			break;
		}
		/* The holder before us may have removed the file: lock the live one. */
		if (fstat(fd, &a) == 0 && stat(path, &b) == 0 &&
		    a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
			ret = fd;
			break;
		}
		close(fd);
	}
	free(path);
	return ret;
}

void store_blob_unlock(const struct store *s, const struct digest *d, int lockfd,
		       bool remove)
{
	if (lockfd < 0)
		return;
	if (remove) {
		char *path = store_partial_path(s, d, ".lock");
		unlink(path);
		free(path);
	}
	close(lockfd);
}

int store_commit_blob(const struct store *s, const struct digest *d)
{
	char *from = store_partial_path(s, d, "");
	char *to = store_blob_path(s, d);
	char *map = store_partial_path(s, d, ".map");
	int ret = 0;

	if (rename(from, to) < 0) {
		ret = -errno;
		log_error("cannot move '%s' to '%s': %s", from, to, strerror(errno));
	} else {
		fsync_dir(s->blobs);
		unlink(map);
	}
	free(from);
	free(to);
	free(map);
	return ret;
}

int store_quarantine_blob(const struct store *s, const struct digest *d)
{
	char *from = store_partial_path(s, d, "");
	char *map = store_partial_path(s, d, ".map");
	int ret = move_to_quarantine(s, from, d, "mismatch");

	unlink(map);
	free(from);
	free(map);
	return ret;
}

int store_quarantine_complete(const struct store *s, const struct digest *d,
			      const char *why)
{
	char *path = store_blob_path(s, d);
	int ret = move_to_quarantine(s, path, d, why);

	if (ret == 0)
		fsync_dir(s->blobs);
	free(path);
	return ret;
}

/* Disk space of the regular files directly in dir, added to *bytes. */
static void dir_usage(const char *dir, uint64_t *bytes)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	struct stat st;

	while (d && (e = readdir(d)) != NULL)
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
			*bytes += (uint64_t)st.st_blocks * 512;
	if (d)
		closedir(d);
}

uint64_t store_usage(const struct store *s)
{
	uint64_t bytes = 0;

	dir_usage(s->blobs, &bytes);
	dir_usage(s->partial, &bytes);
	return bytes;
}
