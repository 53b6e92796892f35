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
 * holder dies. Other processes read a partial blob through its map
 * (store_partial_peek) and tell the holder what they wait for by appending
 * to its wants file (sha256-<hex>.want).
 *
 * The store is shared ground: other users, other processes and Ollama write
 * to it, and blobfs often runs as root. So the store's directories are opened
 * once and held, everything under them is reached with *at() calls that
 * never follow a link, only regular files count (a link or a FIFO where a
 * blob should be is moved to quarantine, one in partial/ is deleted), and a
 * file that blobfs writes into must have a single link. A store that someone
 * other than its owner and root may write to is refused (check_trust).
 */
#include "config.h"

#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
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

#include "chunkmap.h"
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

/* The root as an absolute path without trailing slashes, so that it still
 * names the same place after a daemon's chdir("/"). */
static int absolute_root(const char *root, char **out)
{
	size_t len = strlen(root);

	while (len > 1 && root[len - 1] == '/')
		len--;
	if (root[0] == '/') {
		*out = xstrndup(root, len);
		return 0;
	}
	char *cwd = getcwd(NULL, 0);
	if (!cwd) {
		int ret = -errno;
		log_error("cannot find the current directory for store '%s': %s", root,
			  strerror(errno));
		return ret;
	}
	*out = xasprintf("%s/%.*s", cwd, (int)len, root);
	free(cwd);
	return 0;
}

/*
 * Open the root (following links: the user named it) and, under it, every
 * directory of the layout without following any. With create, make what is
 * missing. -ENOENT without create when the root does not exist.
 */
static int open_layout(struct store *s, bool create)
{
	const int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
	int ret;

	s->rootfd = open(s->root, flags);
	if (s->rootfd < 0 && errno == ENOENT && create) {
		if ((ret = mkdir_p(s->root, 0755)) < 0) {
			log_error("cannot create directory '%s': %s", s->root, strerror(-ret));
			return ret;
		}
		s->rootfd = open(s->root, flags);
	}
	if (s->rootfd < 0) {
		ret = -errno;
		if (ret != -ENOENT || create)
			log_error("cannot open store '%s': %s", s->root, strerror(errno));
		return ret;
	}
	const struct {
		int *fd, *parent;
		const char *name, *path;
		mode_t mode;
	} dirs[] = {
		{ &s->blobsfd, &s->rootfd, "blobs", "blobs", 0755 },
		{ &s->manifestsfd, &s->rootfd, "manifests", "manifests", 0755 },
		{ &s->statefd, &s->rootfd, ".blobfs", ".blobfs", 0700 },
		{ &s->partialfd, &s->statefd, "partial", ".blobfs/partial", 0700 },
		{ &s->tmpfd, &s->statefd, "tmp", ".blobfs/tmp", 0700 },
		{ &s->quarantinefd, &s->statefd, "quarantine", ".blobfs/quarantine", 0700 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		if (*dirs[i].parent < 0)
			continue;
		int fd = open_dir_at(*dirs[i].parent, dirs[i].name, create, dirs[i].mode);
		if ((fd == -ENOENT || fd == -EACCES) && !create)
			continue;   /* reads as empty: another user's state, say */
		if (fd < 0) {
			log_error("cannot %s directory '%s/%s': %s", create ? "create" : "open",
				  s->root, dirs[i].path, file_strerror(fd));
			return fd;
		}
		*dirs[i].fd = fd;
	}
	return 0;
}

/* "user 'name' (uid N)", or "uid N" for a uid without a name; and its name alone. */
static void describe_uid(uid_t uid, char *buf, size_t len, char *name, size_t namelen)
{
	struct passwd *pw = getpwuid(uid);

	if (pw)
		snprintf(buf, len, "user '%s' (uid %u)", pw->pw_name, (unsigned)uid);
	else
		snprintf(buf, len, "uid %u", (unsigned)uid);
	if (name && pw)
		snprintf(name, namelen, "%s", pw->pw_name);
	else if (name)
		snprintf(name, namelen, "%u", (unsigned)uid);
}

/*
 * Is one directory of the store as it must be? It belongs to the store's
 * owner or root, and no one else may write to it: no group or other write
 * permission, except on the root when its sticky bit keeps others from
 * replacing what is in it. what is "store" or "store directory".
 */
static int check_dir(const char *what, const char *path, const struct stat *st,
		     uid_t owner, bool sticky_ok)
{
	char who[96], whose[96], name[64];

	if (st->st_uid != owner && st->st_uid != 0) {
		describe_uid(st->st_uid, who, sizeof(who), NULL, 0);
		describe_uid(owner, whose, sizeof(whose), name, sizeof(name));
		log_error("%s '%s' belongs to %s, not to the store's owner (%s) or root; "
			  "run 'chown %s %s' or pass --trust-store", what, path, who, whose, name, path);
		return -EPERM;
	}
	if ((st->st_mode & (S_IWGRP | S_IWOTH)) && !(sticky_ok && (st->st_mode & S_ISVTX))) {
		log_error("%s '%s' is writable by other users (mode %04o); "
			  "run 'chmod go-w %s' or pass --trust-store", what, path,
			  (unsigned)(st->st_mode & 07777), path);
		return -EPERM;
	}
	return 0;
}

/*
 * The ownership check, as ssh checks ~/.ssh (blobfs(1), TRUST MODEL). The
 * store belongs to the owner of its root, who must be the caller or root;
 * root may also use a store that belongs to one other user (Ollama's store
 * belongs to the ollama user). Each directory blobfs uses must belong to that
 * owner or root and be writable by no one else, since whoever can write to it
 * decides what blobfs serves, fetches and writes.
 */
static int check_trust(const struct store *s)
{
	const int fds[] = { s->blobsfd, s->manifestsfd, s->statefd, s->partialfd, s->tmpfd,
			    s->quarantinefd };
	const char *names[] = { "blobs", "manifests", ".blobfs", ".blobfs/partial",
				".blobfs/tmp", ".blobfs/quarantine" };
	uid_t me = geteuid();
	struct stat st;
	char who[96];
	int ret;

	if (fstat(s->rootfd, &st) < 0)
		return -errno;
	if (me != 0 && st.st_uid != me && st.st_uid != 0) {
		describe_uid(st.st_uid, who, sizeof(who), NULL, 0);
		log_error("store '%s' belongs to %s, not to you or root; use a store of your own "
			  "or pass --trust-store", s->root, who);
		return -EPERM;
	}
	if ((ret = check_dir("store", s->root, &st, st.st_uid, true)) < 0)
		return ret;
	uid_t owner = st.st_uid;
	for (size_t i = 0; i < ARRAY_SIZE(fds) && ret == 0; i++) {
		if (fds[i] < 0)
			continue;
		if (fstat(fds[i], &st) < 0)
			return -errno;
		char *path = xasprintf("%s/%s", s->root, names[i]);
		ret = check_dir("store directory", path, &st, owner, false);
		free(path);
	}
	return ret;
}

/* Take a freshly created layout into use: a private state directory, the lock. */
static int make_writable(struct store *s)
{
	/* The state directory may hold credentials-bearing URLs in logs one day; keep it private. */
	if (fchmod(s->statefd, 0700) < 0) {
		int ret = -errno;
		log_error("cannot set the mode of '%s/.blobfs': %s", s->root, strerror(errno));
		return ret;
	}
	s->lockfd = open_regular_at(s->statefd, "lock", O_CREAT | O_RDWR, 0600);
	if (s->lockfd < 0) {
		int ret = s->lockfd;
		s->lockfd = -1;
		log_error("store '%s' is not writable: cannot open '%s/.blobfs/lock': %s",
			  s->root, s->root, file_strerror(ret));
		return ret;
	}
	if (faccessat(s->blobsfd, ".", W_OK, AT_EACCESS) < 0 ||
	    faccessat(s->manifestsfd, ".", W_OK, AT_EACCESS) < 0) {
		int ret = -errno;
		log_error("store '%s' is not writable: %s", s->root, strerror(errno));
		return ret;
	}
	s->writable = true;
	return 0;
}

int store_open(const char *root, unsigned flags, struct store **out)
{
	struct store *s = xcalloc(1, sizeof(*s));
	bool create = flags & STORE_CREATE;
	int ret;

	s->rootfd = s->blobsfd = s->manifestsfd = s->statefd = -1;
	s->partialfd = s->tmpfd = s->quarantinefd = s->lockfd = -1;
	pthread_mutex_init(&s->lock, NULL);
	if ((ret = absolute_root(root, &s->root)) < 0)
		goto fail;
	s->manifests = xasprintf("%s/manifests", s->root);
	ret = open_layout(s, create);
	if (ret == -ENOENT && !create) {
		*out = s;     /* a missing store reads as empty */
		return 0;
	}
	if (ret < 0)
		goto fail;
	if (!(flags & STORE_TRUST) && (ret = check_trust(s)) < 0)
		goto fail;
	if (create && (ret = make_writable(s)) < 0)
		goto fail;
	*out = s;
	return 0;
fail:
	store_close(s);
	return ret;
}

static void close_fd(int fd)
{
	if (fd >= 0)
		close(fd);
}

void store_close(struct store *s)
{
	if (!s)
		return;
	close_fd(s->lockfd);
	close_fd(s->quarantinefd);
	close_fd(s->tmpfd);
	close_fd(s->partialfd);
	close_fd(s->statefd);
	close_fd(s->manifestsfd);
	close_fd(s->blobsfd);
	close_fd(s->rootfd);
	pthread_mutex_destroy(&s->lock);
	free(s->root);
	free(s->manifests);
	free(s);
}

int store_lock(struct store *s)
{
	if (s->lockfd < 0)
		return -EROFS;
	/* flock() excludes other processes; the threads of this one, the mutex. */
	pthread_mutex_lock(&s->lock);
	while (flock(s->lockfd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int ret = -errno;
			pthread_mutex_unlock(&s->lock);
			return ret;
		}
	}
	return 0;
}

void store_unlock(struct store *s)
{
	if (s->lockfd < 0)
		return;
	flock(s->lockfd, LOCK_UN);
	pthread_mutex_unlock(&s->lock);
}

char *store_blob_path(const struct store *s, const struct digest *d)
{
	char name[DIGEST_STR_LEN];

	digest_filename(d, name);
	return xasprintf("%s/blobs/%s", s->root, name);
}

char *store_partial_path(const struct store *s, const struct digest *d,
			 const char *suffix)
{
	char name[DIGEST_STR_LEN];

	digest_filename(d, name);
	return xasprintf("%s/.blobfs/partial/%s%s", s->root, name, suffix);
}

/* The name of a blob's entry in blobs/ or partial/: sha256-<hex><suffix>. */
static void entry_name(const struct digest *d, const char *suffix, char *buf, size_t len)
{
	char name[DIGEST_STR_LEN];

	digest_filename(d, name);
	snprintf(buf, len, "%s%s", name, suffix);
}

#define ENTRY_MAX (DIGEST_STR_LEN + 8)

/* ---- manifests ---- */

/*
 * Find an entry of dirfd matching name case-insensitively, preferring an
 * exact match. On success copies the stored spelling into found (size len).
 */
static int find_entry(int dirfd, const char *name, char *found, size_t len)
{
	struct stat st;
	DIR *d;
	struct dirent *e;
	int ret = -ENOENT;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		snprintf(found, len, "%s", name);
		return 0;
	}
	d = opendir_at(dirfd);
	if (!d)
		return -errno;
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

/*
 * Open the directory manifests/<host>/<ns>/<model> of n, one component at a
 * time and never through a link. With fold, match each part
 * case-insensitively and write the stored spelling back into n; with create
 * (index lock held), make the directories that are missing.
 */
static int open_model_dir(const struct store *s, struct model_name *n, bool fold,
			  bool create)
{
	char *part[4];
	size_t size[4];
	int fd = s->manifestsfd < 0 ? -ENOENT : fcntl(s->manifestsfd, F_DUPFD_CLOEXEC, 0);

	if (fd == -1)
		return -errno;
	name_parts(n, part, size);
	for (int i = 0; i < 3 && fd >= 0; i++) {
		char stored[NAME_HOST_MAX + 1];
		if (fold && find_entry(fd, part[i], stored, sizeof(stored)) == 0)
			snprintf(part[i], size[i], "%s", stored);
		int next = open_dir_at(fd, part[i], create, 0755);
		close(fd);
		fd = next;
	}
	return fd;
}

int store_find_tag(const struct store *s, const struct model_name *want,
		   struct model_name *found)
{
	struct model_name n = *want;
	char stored[sizeof(n.tag)];
	struct stat st;
	int fd = open_model_dir(s, &n, true, false), ret;

	if (fd < 0)
		return -ENOENT;
	ret = find_entry(fd, n.tag, stored, sizeof(stored));
	if (ret == 0) {
		snprintf(n.tag, sizeof(n.tag), "%s", stored);
		if (fstatat(fd, n.tag, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			ret = -ENOENT;
	}
	close(fd);
	if (ret < 0)
		return -ENOENT;
	memcpy(n.scheme, want->scheme, sizeof(n.scheme));
	*found = n;
	return 0;
}

/* Open a tag's manifest (exact name) read-only: a regular file, never a link. */
static int open_manifest(const struct store *s, const struct model_name *want)
{
	struct model_name n = *want;
	int dirfd = open_model_dir(s, &n, false, false), fd;

	if (dirfd < 0)
		return dirfd;
	fd = open_regular_at(dirfd, n.tag, O_RDONLY, 0);
	close(dirfd);
	return fd;
}

int store_read_manifest(const struct store *s, const struct model_name *n,
			char **buf, size_t *len, int64_t *mtime_ns)
{
	struct stat st;
	int fd = open_manifest(s, n), ret;

	if (fd < 0)
		return fd;
	ret = fstat(fd, &st) < 0 ? -errno : 0;
	if (ret == 0 && (uint64_t)st.st_size > MANIFEST_MAX_BYTES)
		ret = -EFBIG;
	if (ret == 0) {
		*buf = xmalloc((size_t)st.st_size + 1);
		ret = pread_all(fd, *buf, (size_t)st.st_size, 0);
		if (ret < 0)
			free(*buf);
		else
			(*buf)[st.st_size] = '\0';
	}
	close(fd);
	if (ret < 0)
		return ret;
	*len = (size_t)st.st_size;
	if (mtime_ns)
		*mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	return 0;
}

static void name_path(const struct store *s, const struct model_name *n, char *buf, size_t len)
{
	snprintf(buf, len, "%s/manifests/%s/%s/%s/%s", s->root, n->host, n->ns, n->model, n->tag);
}

struct size_check {
	const struct store *s;
	char *err;
	size_t errlen;
};

static int check_layer_size(const struct layer *l, void *arg)
{
	struct size_check *c = arg;
	char name[ENTRY_MAX], hex[DIGEST_STR_LEN];
	struct stat st;

	entry_name(&l->digest, "", name, sizeof(name));
	if (c->s->blobsfd < 0 || fstatat(c->s->blobsfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(st.st_mode) || (uint64_t)st.st_size == l->size)
		return 0;
	digest_format(&l->digest, hex);
	snprintf(c->err, c->errlen, "the manifest gives blob '%s' %llu bytes, but the store's "
		 "verified copy has %llu; refusing that layer", hex, (unsigned long long)l->size,
		 (unsigned long long)st.st_size);
	return -EBADMSG;
}

int store_check_manifest(const struct store *s, const struct manifest *m, char *err,
			 size_t errlen)
{
	struct size_check c = { s, err, errlen };

	return manifest_for_each_blob(m, check_layer_size, &c);
}

/* store_check_manifest() of manifest bytes; one that does not parse is for others to judge. */
static int check_manifest_bytes(const struct store *s, const struct model_name *n,
				const char *buf, size_t len)
{
	char err[512], name[NAME_FORMAT_MAX];
	struct manifest *m;
	int ret;

	if (manifest_parse(buf, len, &m, err, sizeof(err)) < 0)
		return 0;
	ret = store_check_manifest(s, m, err, sizeof(err));
	manifest_free(m);
	if (ret < 0) {
		name_format(n, name, sizeof(name));
		log_error("not storing the manifest of '%s': %s", name, err);
	}
	return ret;
}

int store_write_manifest(struct store *s, const struct model_name *want,
			 const char *buf, size_t len)
{
	struct model_name n = *want;
	char path[PATH_MAX], stored[sizeof(n.tag)];
	int fd, ret;

	if ((ret = store_lock(s)) < 0)
		return ret;
	if ((ret = check_manifest_bytes(s, &n, buf, len)) < 0)
		goto out;
	fd = open_model_dir(s, &n, true, true);
	if (fd < 0) {
		ret = fd;
		name_path(s, &n, path, sizeof(path));
		log_error("cannot create the directories of manifest '%s': %s", path,
			  file_strerror(ret));
		goto out;
	}
	if (find_entry(fd, n.tag, stored, sizeof(stored)) == 0)
		snprintf(n.tag, sizeof(n.tag), "%s", stored);
	ret = write_file_atomic_at(s->tmpfd, fd, n.tag, buf, len, 0644);
	close(fd);
	if (ret < 0) {
		name_path(s, &n, path, sizeof(path));
		log_error("cannot write manifest '%s': %s", path, file_strerror(ret));
	}
out:
	store_unlock(s);
	return ret;
}

struct tag_list {
	struct store_tag *v;
	size_t n, cap;
};

/* Collect the tags under dirfd, which is level (0: hosts ... 3: tags) of the tree. */
static void walk_level(int dirfd, int level, struct model_name *n, struct tag_list *out)
{
	static const enum name_part kind[] = { NAME_HOST, NAME_NAMESPACE, NAME_MODEL, NAME_TAG };
	char *part[4];
	size_t size[4];
	DIR *d = opendir_at(dirfd);
	struct dirent *e;

	if (!d)
		return;
	name_parts(n, part, size);
	while ((e = readdir(d)) != NULL) {
		struct stat st;
		if (e->d_name[0] == '.' ||
		    fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !(level < 3 ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode)))
			continue;
		if (strlen(e->d_name) >= size[level] || !name_part_valid(kind[level], e->d_name)) {
			log_debug("ignoring '%s' among the manifests: not a valid name part",
				  e->d_name);
			continue;
		}
		snprintf(part[level], size[level], "%s", e->d_name);
		if (level < 3) {
			int sub = open_dir_at(dirfd, e->d_name, false, 0);
			if (sub >= 0) {
				walk_level(sub, level + 1, n, out);
				close(sub);
			}
			continue;
		}
		if (out->n == out->cap) {
			out->cap = out->cap ? 2 * out->cap : 32;
			out->v = xrealloc(out->v, out->cap * sizeof(*out->v));
		}
		out->v[out->n].name = *n;
		out->v[out->n].mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
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
	if (s->manifestsfd >= 0)
		walk_level(s->manifestsfd, 0, &name, &out);
	if (out.n)
		qsort(out.v, out.n, sizeof(*out.v), cmp_tag);
	*tags = out.v;
	*n = out.n;
	return 0;
}

void store_tags_free(struct store_tag *tags, size_t n)
{
	(void)n;
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
 * Add the digests a manifest references. An invalid or oversized manifest
 * still protects every digest that appears in its text; one that cannot be
 * read at all returns its error, and the caller then deletes nothing, since
 * it cannot know which blobs that manifest needs.
 */
static int manifest_digests(const struct store *s, const struct model_name *n,
			    struct digest_set *set)
{
	struct manifest *m;
	struct stat st;
	char err[256], path[PATH_MAX];
	void *map = NULL;
	int fd = open_manifest(s, n), ret = fd < 0 ? fd : 0;

	if (fd >= 0 && fstat(fd, &st) < 0)
		ret = -errno;
	if (ret == 0 && st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED)
			ret = -errno;
	}
	if (fd >= 0)
		close(fd);
	if (ret < 0) {
		name_path(s, n, path, sizeof(path));
		log_warn("cannot read manifest '%s': %s", path, file_strerror(ret));
		return ret;
	}
	if (st.st_size == 0)
		return 0;
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
		ret = manifest_digests(s, &tags[i].name, out);
	store_tags_free(tags, n);
	digest_set_seal(out);
	return ret;
}

/* ---- deleting ---- */

/* Unlink an entry of dirfd, adding the space it held to *bytes; true if it existed. */
static bool unlink_counted(int dirfd, const char *name, uint64_t *bytes)
{
	struct stat st;

	if (dirfd < 0 || fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    unlinkat(dirfd, name, 0) < 0)
		return false;
	*bytes += (uint64_t)st.st_blocks * 512;
	return true;
}

void store_partial_remove(const struct store *s, const struct digest *d,
			  struct store_freed *freed)
{
	struct store_freed ignored;
	char data[ENTRY_MAX], map[ENTRY_MAX], want[ENTRY_MAX];

	if (!freed)
		freed = &ignored;
	entry_name(d, "", data, sizeof(data));
	entry_name(d, ".map", map, sizeof(map));
	entry_name(d, ".want", want, sizeof(want));
	if (unlink_counted(s->partialfd, data, &freed->bytes))
		freed->partials++;
	unlink_counted(s->partialfd, map, &freed->bytes);
	unlink_counted(s->partialfd, want, &freed->bytes);
}

/* Delete a blob's partial state unless another process is fetching it. */
static void remove_partial(const struct store *s, const struct digest *d,
			   struct store_freed *freed)
{
	int lockfd = store_blob_trylock(s, d);

	if (lockfd < 0)
		return;
	store_partial_remove(s, d, freed);
	store_blob_unlock(s, d, lockfd, true);
}

static void remove_blob(const struct store *s, const struct digest *d,
			struct store_freed *freed)
{
	char name[ENTRY_MAX];

	entry_name(d, "", name, sizeof(name));
	if (unlink_counted(s->blobsfd, name, &freed->bytes))
		freed->blobs++;
	remove_partial(s, d, freed);
}

/* Remove the empty directories of a removed tag, deepest first. */
static void prune_dirs(const struct store *s, const struct model_name *n)
{
	int host = open_dir_at(s->manifestsfd, n->host, false, 0);
	int ns = host < 0 ? -1 : open_dir_at(host, n->ns, false, 0);

	if (ns >= 0 && unlinkat(ns, n->model, AT_REMOVEDIR) == 0 &&
	    unlinkat(host, n->ns, AT_REMOVEDIR) == 0)
		unlinkat(s->manifestsfd, n->host, AT_REMOVEDIR);
	close_fd(ns);
	close_fd(host);
	fsync(s->manifestsfd);
}

/* Unlink a tag's manifest (exact name) and make that durable. */
static int unlink_manifest(const struct store *s, const struct model_name *want)
{
	struct model_name n = *want;
	int fd = open_model_dir(s, &n, false, false), ret = 0;

	if (fd < 0)
		return fd;
	if (unlinkat(fd, n.tag, 0) < 0)
		ret = -errno;
	else
		fsync(fd);
	close(fd);
	return ret;
}

int store_remove_tag(struct store *s, const struct model_name *want,
		     struct store_freed *freed)
{
	struct digest_set mine = { 0 }, refs = { 0 };
	struct model_name n;
	char path[PATH_MAX];
	int ret;

	memset(freed, 0, sizeof(*freed));
	if ((ret = store_lock(s)) < 0)
		return ret;
	ret = store_find_tag(s, want, &n);
	if (ret < 0)
		goto out;
	if (manifest_digests(s, &n, &mine) < 0)
		digest_set_release(&mine);   /* its blobs stay; gc can take them later */
	if ((ret = unlink_manifest(s, &n)) < 0) {
		name_path(s, &n, path, sizeof(path));
		log_error("cannot remove manifest '%s': %s", path, strerror(-ret));
		goto out;
	}
	prune_dirs(s, &n);

	if (store_referenced(s, &refs) < 0) {
		log_warn("not deleting the blobs of '%s/%s/%s:%s': a manifest cannot be read",
			 n.host, n.ns, n.model, n.tag);
		goto out;
	}
	for (size_t i = 0; i < mine.n; i++)
		if (!digest_set_has(&refs, &mine.v[i]))
			remove_blob(s, &mine.v[i], freed);
	fsync(s->blobsfd);
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
	if (*rest && strcmp(rest, ".map") != 0 && strcmp(rest, ".lock") != 0 &&
	    strcmp(rest, ".want") != 0)
		return false;
	return digest_parse_filename(buf, d) == 0;
}

struct gc_ctx {
	const struct store *s;
	struct digest_set refs;
	struct store_freed *freed;
};

static void gc_dir(int dirfd, void (*fn)(struct gc_ctx *g, int dirfd, const char *name),
		   struct gc_ctx *g)
{
	DIR *d = dirfd < 0 ? NULL : opendir_at(dirfd);
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
		fn(g, dirfd, names[i]);
		free(names[i]);
	}
	free(names);
}

static void gc_blob(struct gc_ctx *g, int dirfd, const char *name)
{
	struct digest d;

	if (digest_parse_filename(name, &d) < 0 || digest_set_has(&g->refs, &d))
		return;
	if (unlink_counted(dirfd, name, &g->freed->bytes))
		g->freed->blobs++;
}

static void gc_partial(struct gc_ctx *g, int dirfd, const char *name)
{
	struct digest d;
	char blob[ENTRY_MAX];
	struct stat st;

	(void)dirfd;   /* partial/ */
	if (!partial_digest(name, &d))
		return;
	entry_name(&d, "", blob, sizeof(blob));
	/* Unreferenced, or leftovers next to a blob that is already complete. */
	if (!digest_set_has(&g->refs, &d) ||
	    fstatat(g->s->blobsfd, blob, &st, AT_SYMLINK_NOFOLLOW) == 0)
		remove_partial(g->s, &d, g->freed);
}

static void gc_tmp(struct gc_ctx *g, int dirfd, const char *name)
{
	struct stat st;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    (uint64_t)st.st_mtime + STALE_TMP_SECONDS < wall_ms() / 1000)
		unlink_counted(dirfd, name, &g->freed->bytes);
}

static void gc_quarantine(struct gc_ctx *g, int dirfd, const char *name)
{
	unlink_counted(dirfd, name, &g->freed->bytes);
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
	gc_dir(s->blobsfd, gc_blob, &g);
	gc_dir(s->partialfd, gc_partial, &g);
	gc_dir(s->tmpfd, gc_tmp, &g);
	gc_dir(s->quarantinefd, gc_quarantine, &g);
	fsync(s->blobsfd);
out:
	digest_set_release(&g.refs);
	store_unlock(s);
	return ret;
}

void store_touch_blob(const struct store *s, const struct digest *d)
{
	const struct timespec ts[2] = { { .tv_nsec = UTIME_NOW }, { .tv_nsec = UTIME_OMIT } };
	char name[ENTRY_MAX];

	entry_name(d, "", name, sizeof(name));
	/* best effort: at worst it is evicted sooner */
	utimensat(s->blobsfd, name, ts, AT_SYMLINK_NOFOLLOW);
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

	if (fstatvfs(s->rootfd, &sv) == 0) {
		uint64_t total = (uint64_t)sv.f_blocks * sv.f_frsize;
		uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
		uint64_t headroom = MIN(total / 20, 1ULL << 30);
		uint64_t fits = used + avail > headroom ? used + avail - headroom : 0;
		max = MIN(max, fits);
	}
	return max;
}

/* The complete blobs in blobs/ with their size and atime. */
static size_t list_cached(const struct store *s, struct cached **out, uint64_t *used)
{
	struct cached *v = NULL;
	size_t n = 0, cap = 0;
	DIR *dir = s->blobsfd < 0 ? NULL : opendir_at(s->blobsfd);
	struct dirent *e;

	*used = 0;
	while (dir && (e = readdir(dir)) != NULL) {
		struct stat st;
		struct digest d;
		if (digest_parse_filename(e->d_name, &d) < 0 ||
		    fstatat(s->blobsfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 256;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n].d = d;
		v[n].bytes = (uint64_t)st.st_blocks * 512;
		v[n].atime = (int64_t)st.st_atim.tv_sec * 1000000000 + st.st_atim.tv_nsec;
		*used += v[n].bytes;
		n++;
	}
	if (dir)
		closedir(dir);
	*out = v;
	return n;
}

int store_evict(struct store *s, uint64_t max, uint64_t reserve,
		bool (*in_use)(void *arg, const struct digest *d), void *arg,
		struct store_freed *freed)
{
	struct cached *v;
	uint64_t used, limit;
	size_t n;
	int ret;

	memset(freed, 0, sizeof(*freed));
	if ((ret = store_lock(s)) < 0)
		return ret;
	n = list_cached(s, &v, &used);
	limit = cache_limit(s, max, used);
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_atime);
	/* Deleting moves bytes from used to free: the limit stays where it is. */
	for (size_t i = 0; i < n && (used > limit || limit - used < reserve); i++) {
		char name[ENTRY_MAX];
		if (in_use && in_use(arg, &v[i].d))
			continue;
		entry_name(&v[i].d, "", name, sizeof(name));
		if (unlinkat(s->blobsfd, name, 0) == 0) {
			char hex[DIGEST_STR_LEN];
			digest_format(&v[i].d, hex);
			log_info("evicted '%s' from the cache (least recently used)", hex);
			used -= v[i].bytes;
			freed->blobs++;
			freed->bytes += v[i].bytes;
		}
	}
	if (freed->blobs)
		fsync(s->blobsfd);
	free(v);
	store_unlock(s);
	return 0;
}

/* ---- moving blobs in and out ---- */

/* Move name in dirfd (a blob of digest d) into quarantine, as <name>.<ms>.<why>. */
static int move_to_quarantine(const struct store *s, int dirfd, const char *name,
			      const struct digest *d, const char *why)
{
	char blob[ENTRY_MAX], to[ENTRY_MAX + 64];
	int ret = 0;

	entry_name(d, "", blob, sizeof(blob));
	snprintf(to, sizeof(to), "%s.%llu.%s", blob, (unsigned long long)wall_ms(), why);
	if (renameat(dirfd, name, s->quarantinefd, to) < 0) {
		ret = -errno;
		log_error("cannot move '%s' of store '%s' to quarantine: %s", name, s->root,
			  strerror(errno));
	}
	return ret;
}

int store_open_complete(const struct store *s, const struct digest *d)
{
	char name[ENTRY_MAX];

	if (s->blobsfd < 0)
		return -ENOENT;
	entry_name(d, "", name, sizeof(name));
	return open_regular_at(s->blobsfd, name, O_RDONLY, 0);
}

bool store_has_blob(const struct store *s, const struct digest *d, uint64_t size)
{
	char name[ENTRY_MAX];
	struct stat st;

	entry_name(d, "", name, sizeof(name));
	return s->blobsfd >= 0 && fstatat(s->blobsfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	       S_ISREG(st.st_mode) && (uint64_t)st.st_size == size;
}

uint64_t store_local_bytes(const struct store *s, const struct digest *d, uint64_t size)
{
	struct chunkmap *m;
	uint64_t local = 0;

	if (store_has_blob(s, d, size))
		return size;
	if (s->partialfd >= 0 && store_partial_load_map(s, d, size, &m) == 0) {
		local = chunkmap_bytes(m);
		chunkmap_free(m);
	}
	return local;
}

int store_open_blob(const struct store *s, const struct digest *d, uint64_t size,
		    int *fdp)
{
	char name[ENTRY_MAX], hex[DIGEST_STR_LEN];
	struct stat st;
	int fd = store_open_complete(s, d);

	entry_name(d, "", name, sizeof(name));
	if (fd >= 0 && fstat(fd, &st) < 0) {
		int ret = -errno;
		close(fd);
		return ret;
	}
	if (fd >= 0 && (uint64_t)st.st_size == size) {
		*fdp = fd;
		return 0;
	}
	if (fd != -ELOOP && fd != -EFTYPE && fd < 0)
		return fd;
	digest_format(d, hex);
	if (fd >= 0) {
		close(fd);
		log_error("a manifest gives blob '%s' %llu bytes, but the store's verified copy "
			  "has %lld; not using it for that manifest ('blobfs verify' checks the copy)",
			  hex, (unsigned long long)size, (long long)st.st_size);
		return -EBADMSG;
	}
	log_warn("blob '%s' in the store cannot be used: %s%s", hex, file_strerror(fd),
		 s->writable ? "; moved to quarantine" : "");
	if (!s->writable)
		return -EIO;
	move_to_quarantine(s, s->blobsfd, name, d, "notafile");
	return -ENOENT;
}

int store_blob_trylock(const struct store *s, const struct digest *d)
{
	char name[ENTRY_MAX];
	struct stat a, b;
	int fd, ret;

	entry_name(d, ".lock", name, sizeof(name));
	for (;;) {
		fd = open_regular_at(s->partialfd, name, O_CREAT | O_RDWR, 0600);
		if (fd == -ELOOP || fd == -EFTYPE) {
			/* Planted, not ours: a lock file is only ever a regular file. */
			if (unlinkat(s->partialfd, name, 0) == 0)
				continue;
		}
		if (fd < 0) {
			ret = fd;
			break;
		}
		if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
			ret = errno == EWOULDBLOCK ? -EBUSY : -errno;
			close(fd);
			break;
		}
		/* The holder before us may have removed the file: lock the live one. */
		if (fstat(fd, &a) == 0 && fstatat(s->partialfd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
		    a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
			ret = fd;
			break;
		}
		close(fd);
	}
	return ret;
}

void store_blob_unlock(const struct store *s, const struct digest *d, int lockfd,
		       bool remove)
{
	if (lockfd < 0)
		return;
	if (remove) {
		char name[ENTRY_MAX];
		entry_name(d, ".lock", name, sizeof(name));
		unlinkat(s->partialfd, name, 0);
	}
	close(lockfd);
}

/*
 * May a blob be written into fd? Only a regular file with one link: a second
 * link could be another file of the machine that someone linked into the
 * store, and writing there would change that file.
 */
static bool partial_is_ours(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1;
}

/* Open the partial file's name for writing: the existing file if it is ours, else a new one. */
static int open_partial_w(const struct store *s, const struct digest *d)
{
	char name[ENTRY_MAX];
	int fd;

	entry_name(d, "", name, sizeof(name));
	fd = open_regular_at(s->partialfd, name, O_RDWR, 0);
	if (fd >= 0 && partial_is_ours(fd))
		return fd;
	if (fd >= 0)
		close(fd);
	if (fd != -ENOENT) {
		char *path = store_partial_path(s, d, "");
		log_warn("'%s' cannot be a partial download (%s); starting over", path,
			 fd >= 0 ? "it has another link" : file_strerror(fd));
		free(path);
		store_partial_remove(s, d, NULL);
	}
	/*
	 * A map without its data says nothing about the new file. It goes before
	 * the file is made, so that no process that reads the map while the file
	 * is new (store_partial_peek) can take its bits for the new file's.
	 */
	char map[ENTRY_MAX];
	entry_name(d, ".map", map, sizeof(map));
	unlinkat(s->partialfd, map, 0);
	return open_regular_at(s->partialfd, name, O_RDWR | O_CREAT | O_EXCL, 0644);
}

int store_partial_open(const struct store *s, const struct digest *d, uint64_t size,
		       int *wfdp, int *rfdp)
{
	char name[ENTRY_MAX], *path = store_partial_path(s, d, "");
	struct stat a, b;
	int wfd = open_partial_w(s, d), rfd = -1, ret = 0;

	entry_name(d, "", name, sizeof(name));
	if (wfd < 0) {
		ret = wfd;
		log_error("cannot open '%s': %s", path, file_strerror(ret));
		goto out;
	}
	if (ftruncate(wfd, (off_t)size) < 0) {
		ret = -errno;
		log_error("cannot size '%s': %s", path, strerror(errno));
		goto out;
	}
	/* The same file, read-only: what readers are served from, before and after the commit. */
	rfd = open_regular_at(s->partialfd, name, O_RDONLY, 0);
	if (rfd >= 0 && (fstat(wfd, &a) < 0 || fstat(rfd, &b) < 0 || a.st_ino != b.st_ino ||
			 a.st_dev != b.st_dev)) {
		close(rfd);
		rfd = -EAGAIN;
	}
	if (rfd < 0) {
		ret = rfd;
		log_error("cannot open '%s': %s", path, file_strerror(ret));
	}
out:
	if (ret < 0) {
		close_fd(wfd);
		close_fd(rfd);
	} else {
		*wfdp = wfd;
		*rfdp = rfd;
	}
	free(path);
	return ret;
}

int store_partial_load_map(const struct store *s, const struct digest *d, uint64_t size,
			   struct chunkmap **out)
{
	char name[ENTRY_MAX];

	entry_name(d, ".map", name, sizeof(name));
	return chunkmap_load_at(s->partialfd, name, d, size, out);
}

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev;
}

/*
 * The map is read between two looks at the data file's name: when both name
 * the file *fd reads, the map describes that file, because a holder writes
 * only the map of the file it holds, and removes an old map before it makes
 * a new file (open_partial_w). A file renamed away (committed) or replaced
 * in between fails the second look: -EAGAIN, try again later.
 */
int store_partial_peek(const struct store *s, const struct digest *d, uint64_t size,
		       struct store_stamp *stamp, int *fdp, int *newfd, struct chunkmap **out)
{
	char name[ENTRY_MAX], map[ENTRY_MAX];
	struct stat ms, fs, ns;
	int fd = -1, ret;

	*newfd = -1;
	*out = NULL;
	entry_name(d, "", name, sizeof(name));
	entry_name(d, ".map", map, sizeof(map));
	if (fstatat(s->partialfd, map, &ms, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (*fdp >= 0 && stamp->ino == (uint64_t)ms.st_ino &&
	    stamp->sec == (int64_t)ms.st_ctim.tv_sec && stamp->nsec == (int64_t)ms.st_ctim.tv_nsec)
		return 0;
	if ((fd = open_regular_at(s->partialfd, name, O_RDONLY, 0)) < 0)
		return fd;
	if (fstat(fd, &fs) < 0 || (uint64_t)fs.st_size != size) {
		close(fd);
		return -EAGAIN;
	}
	ret = chunkmap_load_at(s->partialfd, map, d, size, out);
	if (ret == 0 && (fstatat(s->partialfd, name, &ns, AT_SYMLINK_NOFOLLOW) < 0 ||
			 !same_file(&fs, &ns)))
		ret = -EAGAIN;
	if (ret < 0) {
		chunkmap_free(*out);
		*out = NULL;
		close(fd);
		return ret;
	}
	stamp->ino = (uint64_t)ms.st_ino;
	stamp->sec = (int64_t)ms.st_ctim.tv_sec;
	stamp->nsec = (int64_t)ms.st_ctim.tv_nsec;
	if (*fdp >= 0 && fstat(*fdp, &ns) == 0 && same_file(&fs, &ns))
		close(fd);      /* the file we read already */
	else
		*newfd = fd;
	return 1;
}

int store_partial_save_map(const struct store *s, const struct digest *d,
			   const void *buf, size_t len)
{
	char name[ENTRY_MAX];

	entry_name(d, ".map", name, sizeof(name));
	return write_file_atomic_at(s->tmpfd, s->partialfd, name, buf, len, 0600);
}

/*
 * Wants: one record per range, appended with O_APPEND in one write: u64
 * offset, u64 length, u64 the wall-clock ms it was written, little-endian.
 * Writers and the holder take the file's flock, so records of several
 * processes never interleave and none is lost to a compaction. The file is
 * kept small: the holder, once it has read everything, drops the records
 * older than its read timeout (their readers have given up), so the file
 * holds what was asked for within one read timeout; and a writer appends
 * nothing past WANTS_FILE_MAX, whoever holds the blob.
 */
#define WANT_LEN 24
#define WANTS_FILE_MAX (4096 * WANT_LEN)
#define WANTS_COMPACT_AT (16 * WANT_LEN)   /* smaller files are left as they are */

int store_partial_want(const struct store *s, const struct digest *d,
		       const uint64_t (*ranges)[2], size_t n)
{
	char name[ENTRY_MAX];
	uint64_t rec[STORE_WANTS_MAX * 3], ms = wall_ms();
	struct stat st;
	int fd, ret = 0;

	n = MIN(n, (size_t)STORE_WANTS_MAX);
	for (size_t i = 0; i < n; i++) {
		rec[3 * i] = htole64(ranges[i][0]);
		rec[3 * i + 1] = htole64(ranges[i][1]);
		rec[3 * i + 2] = htole64(ms);
	}
	entry_name(d, ".want", name, sizeof(name));
	fd = open_regular_at(s->partialfd, name, O_WRONLY | O_APPEND | O_CREAT, 0600);
	if (fd < 0)
		return fd;
	if (flock(fd, LOCK_EX) < 0 || fstat(fd, &st) < 0)
		ret = -errno;
	else if ((uint64_t)st.st_size + n * WANT_LEN > WANTS_FILE_MAX)
		ret = -EFBIG;      /* nobody reads them: its holder is stuck or gone */
	else if (write(fd, rec, n * WANT_LEN) != (ssize_t)(n * WANT_LEN))
		ret = -EIO;
	close(fd);
	return ret;
}

static bool want_fresh(const uint64_t *rec, uint64_t now, uint64_t max_age_ms)
{
	return le64toh(rec[2]) + max_age_ms >= now;
}

/*
 * Rewrite the wants file (fd, locked, size bytes, all read) without its
 * records older than max_age_ms, unless its oldest, the first, is fresh;
 * *pos: the new end.
 */
static void wants_compact(int fd, uint64_t size, uint64_t now, uint64_t max_age_ms,
			  uint64_t *pos)
{
	uint64_t first[3], *all, kept = 0;

	if (size < WANTS_COMPACT_AT || pread(fd, first, WANT_LEN, 0) != WANT_LEN ||
	    want_fresh(first, now, max_age_ms))
		return;
	size = MIN(size, (uint64_t)WANTS_FILE_MAX) / WANT_LEN * WANT_LEN;
	all = xmalloc(size ? size : 1);
	if (pread_all(fd, all, size, 0) == 0) {
		for (uint64_t i = 0; i < size / WANT_LEN; i++)
			if (want_fresh(all + 3 * i, now, max_age_ms))
				memmove(all + 3 * kept++, all + 3 * i, WANT_LEN);
		if ((kept == 0 || pwrite(fd, all, kept * WANT_LEN, 0) == (ssize_t)(kept * WANT_LEN)) &&
		    ftruncate(fd, (off_t)(kept * WANT_LEN)) == 0)
			*pos = kept * WANT_LEN;
	}
	free(all);
}

int store_partial_wants(const struct store *s, const struct digest *d, uint64_t *pos,
			uint64_t max_age_ms, uint64_t (*out)[2], size_t max)
{
	char name[ENTRY_MAX];
	uint64_t rec[STORE_WANTS_MAX * 3], now = wall_ms();
	struct stat st;
	size_t n = 0;
	ssize_t got = 0;
	int fd;

	entry_name(d, ".want", name, sizeof(name));
	if (fstatat(s->partialfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    ((uint64_t)st.st_size == *pos && *pos < WANTS_COMPACT_AT))
		return 0;
	if ((fd = open_regular_at(s->partialfd, name, O_RDWR, 0)) < 0)
		return 0;
	if (flock(fd, LOCK_EX) < 0 || fstat(fd, &st) < 0) {
		close(fd);
		return 0;
	}
	if ((uint64_t)st.st_size < *pos)
		*pos = 0;          /* a new file */
	max = MIN(max, (size_t)STORE_WANTS_MAX);
	if ((uint64_t)st.st_size > *pos)
		got = pread(fd, rec, max * WANT_LEN, (off_t)*pos);
	for (ssize_t i = 0; got > 0 && i < got / WANT_LEN; i++) {
		if (!want_fresh(rec + 3 * i, now, max_age_ms))
			continue;   /* its reader has given up */
		out[n][0] = le64toh(rec[3 * i]);
		out[n][1] = le64toh(rec[3 * i + 1]);
		n++;
	}
	if (got > 0)
		*pos += (uint64_t)(got / WANT_LEN) * WANT_LEN;
	if (*pos == (uint64_t)st.st_size)
		wants_compact(fd, (uint64_t)st.st_size, now, max_age_ms, pos);
	close(fd);
	return (int)n;
}

/* Does the text of n's manifest spell d's hex digits? */
static bool manifest_mentions(const struct store *s, const struct model_name *n,
			      const char *hex)
{
	struct stat st;
	int fd = open_manifest(s, n);
	bool yes = false;

	if (fd < 0)
		return false;
	if (fstat(fd, &st) == 0 && st.st_size > 0) {
		void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map != MAP_FAILED) {
			yes = memmem(map, (size_t)st.st_size, hex, strlen(hex)) != NULL;
			munmap(map, (size_t)st.st_size);
		}
	}
	close(fd);
	return yes;
}

/*
 * Is d named by a manifest? gc's rule: when one cannot be read, what it names
 * is unknown. A manifest whose text holds d's hex digits keeps it without a
 * parse (a superset, as for a manifest that does not parse): parsing every
 * manifest for every commit made a pull of n blobs cost n² digest parses.
 * Only an answer of no parses them all.
 */
static bool still_referenced(const struct store *s, const struct digest *d)
{
	struct digest_set refs;
	struct store_tag *tags;
	char str[DIGEST_STR_LEN];
	const char *hex;
	size_t n;
	bool yes = false;

	digest_format(d, str);
	hex = strchr(str, ':') ? strchr(str, ':') + 1 : str;
	store_list_tags(s, &tags, &n);
	for (size_t i = 0; i < n && !yes; i++)
		yes = manifest_mentions(s, &tags[i].name, hex);
	store_tags_free(tags, n);
	if (yes)
		return true;
	yes = store_referenced(s, &refs) < 0 || digest_set_has(&refs, d);
	digest_set_release(&refs);
	return yes;
}

/* Rename d's partial file into blobs/ if a manifest names it. Index lock held. */
static int commit_one(struct store *s, const struct digest *d)
{
	char name[ENTRY_MAX], hex[DIGEST_STR_LEN];

	entry_name(d, "", name, sizeof(name));
	if (!still_referenced(s, d)) {
		digest_format(d, hex);
		log_info("not keeping '%s': no manifest names it any more", hex);
		store_partial_remove(s, d, NULL);
		return -ESTALE;
	}
	if (renameat(s->partialfd, name, s->blobsfd, name) < 0) {
		int ret = -errno;
		log_error("cannot move '%s' from partial downloads to blobs/ in store '%s': %s",
			  name, s->root, strerror(errno));
		return ret;
	}
	return 0;
}

/*
 * Make the renames into or out of blobs/ durable: 0, or the negative errno,
 * logged. A filesystem that cannot sync a directory (EINVAL) has nothing
 * more to make durable.
 */
static int sync_blobs_dir(const struct store *s)
{
	if (fsync(s->blobsfd) == 0 || errno == EINVAL)
		return 0;
	int ret = -errno;
	log_error("cannot make blobs/ of store '%s' durable: %s", s->root, strerror(-ret));
	return ret;
}

/*
 * One lock and one directory fsync for the group: the fsync makes every
 * rename before it durable, so a blob is reported committed only after it.
 * The maps and wants go after that, as for one blob.
 */
void store_commit_blobs(struct store *s, const struct digest *d, size_t n, int *rets)
{
	char map[ENTRY_MAX];
	size_t moved = 0;
	int ret;

	/* Under the index lock, so that no removal slips between the check and the rename. */
	if ((ret = store_lock(s)) < 0) {
		for (size_t i = 0; i < n; i++)
			rets[i] = ret;
		return;
	}
	for (size_t i = 0; i < n; i++)
		if ((rets[i] = commit_one(s, &d[i])) == 0)
			moved++;
	if (moved) {
		s->commit_syncs++;
		ret = sync_blobs_dir(s);
	}
	for (size_t i = 0; i < n; i++) {
		if (rets[i] != 0)
			continue;
		entry_name(&d[i], ".map", map, sizeof(map));
		unlinkat(s->partialfd, map, 0);
		entry_name(&d[i], ".want", map, sizeof(map));
		unlinkat(s->partialfd, map, 0);
		rets[i] = ret;
	}
	store_unlock(s);
}

int store_commit_blob(struct store *s, const struct digest *d)
{
	int ret;

	store_commit_blobs(s, d, 1, &ret);
	return ret;
}

int store_quarantine_blob(const struct store *s, const struct digest *d)
{
	char name[ENTRY_MAX], map[ENTRY_MAX];
	int ret;

	entry_name(d, "", name, sizeof(name));
	entry_name(d, ".map", map, sizeof(map));
	ret = move_to_quarantine(s, s->partialfd, name, d, "mismatch");
	unlinkat(s->partialfd, map, 0);
	entry_name(d, ".want", map, sizeof(map));
	unlinkat(s->partialfd, map, 0);
	return ret;
}

int store_quarantine_complete(const struct store *s, const struct digest *d,
			      const char *why)
{
	char name[ENTRY_MAX];
	int ret;

	entry_name(d, "", name, sizeof(name));
	ret = move_to_quarantine(s, s->blobsfd, name, d, why);
	if (ret == 0)
		ret = sync_blobs_dir(s);   /* else the blob may be back in blobs/ after a crash */
	return ret;
}

/* Disk space of the regular files directly in the directory dirfd, added to *bytes. */
static void dir_usage(int dirfd, uint64_t *bytes)
{
	DIR *d = dirfd < 0 ? NULL : opendir_at(dirfd);
	struct dirent *e;
	struct stat st;

	while (d && (e = readdir(d)) != NULL)
		if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
			*bytes += (uint64_t)st.st_blocks * 512;
	if (d)
		closedir(d);
}

uint64_t store_usage(const struct store *s)
{
	uint64_t bytes = 0;

	dir_usage(s->blobsfd, &bytes);
	dir_usage(s->partialfd, &bytes);
	return bytes;
}
