/*
 * fuzz_manifest.c - image manifests (manifest.h): manifest_parse,
 * manifest_for_each_blob, manifest_references and manifest_scan_digests.
 *
 * Input: the manifest bytes, not NUL-terminated and ending at a guard page (as
 * store.c hands an mmap()ed file to the parser), so a read past the end inside
 * cJSON crashes too.
 * Invariants on a parsed manifest:
 *   manifest_err       failure is -EINVAL/-EMSGSIZE with a message; *out NULL
 *   manifest_fields    1..MANIFEST_MAX_LAYERS layers, sizes ≤ BLOB_SIZE_MAX,
 *                      media types 1..255 bytes, names safe relative paths
 *   manifest_files     config.json for the config, or config.json.<k> when a
 *                      layer is named config.json; every file name unique (and
 *                      not manifest.json), a relative path of components that
 *                      are non-empty, not "." or "..", without control bytes,
 *                      at most 255 bytes (NAME_MAX), at most LAYER_DEPTH_MAX
 *                      directories deep; a layer's starts with the layer's name
 *                      if it has one (or is a shorter part of a long name and
 *                      ".<number>")
 *   manifest_files_len the last component of a file, which ".k" grows, fits NAME_MAX
 *   manifest_tree      no file is also a directory of another file's path, and
 *                      none is under config.json or manifest.json
 *   manifest_repeat    repeat is set exactly on descriptors whose digest an
 *                      earlier one (config first) has; total_size sums
 *                      distinct blobs
 *   manifest_each      for_each_blob visits each distinct digest once,
 *                      config first; references() knows every digest
 *   scan_found         scan_digests reports only digests spelled in the text,
 *                      or in one of its JSON strings once cJSON decodes it
 *   scan_covers_parse  every digest of a parsed manifest is also found by
 *                      scan_digests (the fallback for unreadable manifests
 *                      must not miss what the parser sees)
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>

#include "fuzz_common.h"
#include "layer_name.h"
#include "manifest.h"

struct scan {
	const char *buf;
	size_t len, n, cap;
	struct digest *v;
	char *decoded;  /* the text as cJSON reads it, re-printed; on demand */
};

/* Is the digest in the text, literally or in a JSON string with escapes? */
static bool in_text(struct scan *s, const char *str)
{
	if (memmem(s->buf, s->len, str, DIGEST_STR_LEN - 1))
		return true;
	if (!s->decoded) {
		cJSON *root = cJSON_ParseWithLength(s->buf, s->len);
		s->decoded = root ? cJSON_PrintUnformatted(root) : NULL;
		cJSON_Delete(root);
		if (!s->decoded)
			s->decoded = strdup("");
	}
	return strstr(s->decoded, str) != NULL;
}

static void on_scan(const struct digest *d, void *arg)
{
	struct scan *s = arg;
	char str[DIGEST_STR_LEN];

	digest_format(d, str);
	FUZZ_CHECK("scan_found", in_text(s, str),
		   "scan reported '%s', which is not in the text", str);
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 16;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		if (!s->v)
			abort();
	}
	s->v[s->n++] = *d;
}

static int cmp_digest(const void *a, const void *b);

/* After sorting s->v. */
static bool scanned(const struct scan *s, const struct digest *d)
{
	return s->n && bsearch(d, s->v, s->n, sizeof(*s->v), cmp_digest) != NULL;
}

struct visit {
	const struct manifest *m;
	size_t calls;
	uint64_t bytes;
	struct digest *seen;
};

static int on_blob(const struct layer *l, void *arg)
{
	struct visit *v = arg;

	FUZZ_CHECK("manifest_each", v->calls > 0 || l == &v->m->config, "config is not first");
	FUZZ_CHECK("manifest_each", v->calls <= v->m->nlayers, "too many blobs visited");
	v->seen[v->calls++] = l->digest;
	v->bytes += l->size;
	return 0;
}

static int cmp_digest(const void *a, const void *b)
{
	return memcmp(a, b, DIGEST_LEN);
}

/* Descriptor indices sorted by (digest, index): index 0 is the config. */
static const struct manifest *sort_m;

static const struct digest *desc_digest(size_t i)
{
	return i == 0 ? &sort_m->config.digest : &sort_m->layers[i - 1].digest;
}

static int cmp_idx(const void *a, const void *b)
{
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	int c = memcmp(desc_digest(i), desc_digest(j), DIGEST_LEN);

	return c ? c : (i > j) - (i < j);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Is the UTF-8 character at f a format character (Unicode 15's category Cf:
 * soft hyphen, bidi controls, zero-width and other invisible ones)? Written
 * against the UTF-8 bytes, apart from layer_name.c's decoder.
 */
static bool format_char(const unsigned char *f)
{
	static const char *const cf[][2] = {
		{ "\xc2\xad", "\xc2\xad" }, { "\xd8\x80", "\xd8\x85" }, { "\xd8\x9c", "\xd8\x9c" },
		{ "\xdb\x9d", "\xdb\x9d" }, { "\xdc\x8f", "\xdc\x8f" },
		{ "\xe0\xa2\x90", "\xe0\xa2\x91" }, { "\xe0\xa3\xa2", "\xe0\xa3\xa2" },
		{ "\xe1\xa0\x8e", "\xe1\xa0\x8e" }, { "\xe2\x80\x8b", "\xe2\x80\x8f" },
		{ "\xe2\x80\xaa", "\xe2\x80\xae" }, { "\xe2\x81\xa0", "\xe2\x81\xa4" },
		{ "\xe2\x81\xa6", "\xe2\x81\xaf" }, { "\xef\xbb\xbf", "\xef\xbb\xbf" },
		{ "\xef\xbf\xb9", "\xef\xbf\xbb" }, { "\xf0\x91\x82\xbd", "\xf0\x91\x82\xbd" },
		{ "\xf0\x91\x83\x8d", "\xf0\x91\x83\x8d" },
		{ "\xf0\x93\x90\xb0", "\xf0\x93\x90\xbf" },
		{ "\xf0\x9b\xb2\xa0", "\xf0\x9b\xb2\xa3" },
		{ "\xf0\x9d\x85\xb3", "\xf0\x9d\x85\xba" },
		{ "\xf3\xa0\x80\x81", "\xf3\xa0\x80\x81" },
		{ "\xf3\xa0\x80\xa0", "\xf3\xa0\x80\xbf" },
		{ "\xf3\xa0\x81\x80", "\xf3\xa0\x81\xbf" },
	};

	for (size_t i = 0; i < sizeof(cf) / sizeof(cf[0]); i++) {
		size_t n = strlen(cf[i][0]);
		/* Each run shares its lead bytes and differs in the last. */
		if (strncmp((const char *)f, cf[i][0], n - 1) == 0 &&
		    f[n - 1] >= (unsigned char)cf[i][0][n - 1] &&
		    f[n - 1] <= (unsigned char)cf[i][1][n - 1])
			return true;
	}
	return false;
}

/* A relative path of safe components, its own reference for layer_path_check. */
static bool safe_file(const char *f)
{
	size_t n = strlen(f), comp = 0, depth = 0;

	if (n == 0 || f[0] == '/' || f[n - 1] == '/')
		return false;
	for (size_t i = 0; i <= n; i++) {
		if (i == n || f[i] == '/') {
			const char *c = f + i - comp;
			if (comp == 0 || comp > 255 || (comp == 1 && c[0] == '.') ||
			    (comp == 2 && c[0] == '.' && c[1] == '.'))
				return false;
			depth += i < n;
			comp = 0;
			continue;
		}
		if ((unsigned char)f[i] < 0x20 || f[i] == 0x7f)
			return false;
		/* C1 controls (U+0080..U+009F), and bytes UTF-8 never has */
		if (((unsigned char)f[i] == 0xc2 && (unsigned char)f[i + 1] >= 0x80 &&
		     (unsigned char)f[i + 1] < 0xa0) || (unsigned char)f[i] == 0xc0 ||
		    (unsigned char)f[i] == 0xc1 || (unsigned char)f[i] >= 0xf5)
			return false;
		if (format_char((const unsigned char *)f + i))
			return false;
		comp++;
	}
	return depth <= LAYER_DEPTH_MAX;
}

/* files sorted: is any a directory of another ("a" and "a/b"), or under a reserved name? */
static void check_tree(char **files, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *dir = strdup(files[i]), *key = dir;

		FUZZ_CHECK("manifest_tree", strncmp(files[i], "config.json/", 12) &&
			   strncmp(files[i], "manifest.json/", 14),
			   "'%s' is under a file of the tag", fuzz_esc(files[i], strlen(files[i])));
		for (char *s = strrchr(dir, '/'); s; s = strrchr(dir, '/')) {
			*s = '\0';
			FUZZ_CHECK("manifest_tree", !bsearch(&key, files, n, sizeof(*files), cmp_str),
				   "'%s' is a file and a directory ('%s')", fuzz_esc(dir, strlen(dir)),
				   fuzz_esc(files[i], strlen(files[i])));
		}
		free(dir);
	}
}

/*
 * file is name, name.<number>, or, for a name too long to take the largest
 * number a manifest can need (".<MANIFEST_MAX_LAYERS + 2>"), a start of it
 * and .<number>.
 */
static bool from_name(const char *file, const char *name)
{
	const char *dot = strrchr(file, '.');
	size_t n = strlen(name);
	char most[24];

	if (!strncmp(file, name, n))
		return true;
	snprintf(most, sizeof(most), ".%d", MANIFEST_MAX_LAYERS + 2);
	return n + strlen(most) > 255 && dot && dot[1] &&
	       strspn(dot + 1, "0123456789") == strlen(dot + 1) &&
	       (size_t)(dot - file) < n && !strncmp(file, name, (size_t)(dot - file));
}

static void check_layer(const struct layer *l, const struct layer *config, const char *what)
{
	FUZZ_CHECK("manifest_fields", l->media_type && *l->media_type &&
		   strlen(l->media_type) <= 255, "%s media type", what);
	FUZZ_CHECK("manifest_fields", l->size <= BLOB_SIZE_MAX, "%s size %llu", what,
		   (unsigned long long)l->size);
	FUZZ_CHECK("manifest_fields", !l->name || (safe_file(l->name) &&
		   strlen(l->name) <= LAYER_PATH_MAX),
		   "%s name '%s'", what, fuzz_esc(l->name, strlen(l->name)));
	FUZZ_CHECK("manifest_files", l->file != NULL, "%s has no file", what);
	const char *base = strrchr(l->file, '/') ? strrchr(l->file, '/') + 1 : l->file;
	FUZZ_CHECK("manifest_files_len", strlen(base) <= 255,
		   "%s file name is %zu bytes, longer than NAME_MAX (255): '%s'", what,
		   strlen(base), fuzz_esc(l->file, strlen(l->file)));
	FUZZ_CHECK("manifest_files", safe_file(l->file),
		   "%s file name '%s' is not a safe relative path", what,
		   fuzz_esc(l->file, strlen(l->file)));
	FUZZ_CHECK("manifest_files", l == config || !l->name || from_name(l->file, l->name),
		   "%s file '%s' does not come from its name", what, l->file);
}

static void check_manifest(const struct manifest *m)
{
	size_t n = m->nlayers + 1;
	char **files = malloc((n + 1) * sizeof(*files));
	struct visit v = { .m = m, .seen = malloc(n * sizeof(struct digest)) };
	uint64_t total = 0;

	FUZZ_CHECK("manifest_fields", m->nlayers >= 1 && m->nlayers <= MANIFEST_MAX_LAYERS,
		   "%zu layers", m->nlayers);
	FUZZ_CHECK("manifest_fields", !m->media_type || !strcmp(m->media_type, MEDIA_DOCKER_MANIFEST) ||
		   !strcmp(m->media_type, MEDIA_OCI_MANIFEST), "media type '%s'", m->media_type);
	check_layer(&m->config, &m->config, "config");
	bool layer_config = false;
	for (size_t i = 0; i < m->nlayers; i++)
		layer_config |= m->layers[i].name && !strcmp(m->layers[i].name, "config.json");
	FUZZ_CHECK("manifest_files", layer_config ? !strncmp(m->config.file, "config.json.", 12)
		   : !strcmp(m->config.file, "config.json"), "config file '%s'", m->config.file);
	FUZZ_CHECK("manifest_repeat", !m->config.repeat, "config marked as a repeat");
	files[0] = m->config.file;
	files[1] = "manifest.json";
	total = m->config.size;
	/* earlier[i]: an earlier descriptor has layer i's digest (via a sort). */
	size_t *idx = malloc(n * sizeof(*idx));
	bool *earlier = calloc(n, sizeof(*earlier));
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	sort_m = m;
	qsort(idx, n, sizeof(*idx), cmp_idx);
	for (size_t k = 1; k < n; k++)
		if (digest_equal(desc_digest(idx[k - 1]), desc_digest(idx[k])))
			earlier[idx[k]] = true;
	for (size_t i = 0; i < m->nlayers; i++) {
		const struct layer *l = &m->layers[i];
		char what[32];

		snprintf(what, sizeof(what), "layer %zu", i);
		check_layer(l, &m->config, what);
		files[i + 2] = l->file;
		FUZZ_CHECK("manifest_repeat", l->repeat == earlier[i + 1],
			   "%s: repeat %d, but earlier %d", what, l->repeat, earlier[i + 1]);
		if (!earlier[i + 1])
			total += l->size;
		if (i < 256)
			FUZZ_CHECK("manifest_each", manifest_references(m, &l->digest) == 1,
				   "%s not referenced", what);
	}
	free(idx);
	free(earlier);
	FUZZ_CHECK("manifest_repeat", total == m->total_size, "total_size %llu, distinct sum %llu",
		   (unsigned long long)m->total_size, (unsigned long long)total);
	qsort(files, n + 1, sizeof(*files), cmp_str);
	for (size_t i = 1; i < n + 1; i++)
		FUZZ_CHECK("manifest_files", strcmp(files[i - 1], files[i]) != 0,
			   "file name '%s' is used twice", fuzz_esc(files[i], strlen(files[i])));
	check_tree(files, n + 1);

	FUZZ_CHECK("manifest_each", manifest_for_each_blob(m, on_blob, &v) == 0, "non-zero");
	FUZZ_CHECK("manifest_each", v.bytes == m->total_size, "visited %llu bytes of %llu",
		   (unsigned long long)v.bytes, (unsigned long long)m->total_size);
	qsort(v.seen, v.calls, sizeof(*v.seen), cmp_digest);
	for (size_t i = 1; i < v.calls; i++)
		FUZZ_CHECK("manifest_each", !digest_equal(&v.seen[i - 1], &v.seen[i]),
			   "a digest is visited twice");
	free(v.seen);
	free(files);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = fuzz_guarded(data, size);
	struct manifest *m = (struct manifest *)1;
	struct scan sc = { .buf = buf, .len = size };
	char err[256];
	int ret;

	err[0] = '\0';
	manifest_scan_digests(buf, size, on_scan, &sc);
	ret = manifest_parse(buf, size, &m, err, sizeof(err));
	if (ret < 0) {
		FUZZ_CHECK("manifest_err", (ret == -EINVAL || ret == -EMSGSIZE) && err[0] && !m,
			   "ret %d err '%s'", ret, err);
	} else {
		FUZZ_CHECK("manifest_err", ret == 0 && m, "ret %d", ret);
		check_manifest(m);
		if (sc.n)
			qsort(sc.v, sc.n, sizeof(*sc.v), cmp_digest);
		FUZZ_CHECK("scan_covers_parse", scanned(&sc, &m->config.digest),
			   "scan_digests misses the config digest");
		for (size_t i = 0; i < m->nlayers; i++)
			FUZZ_CHECK("scan_covers_parse", scanned(&sc, &m->layers[i].digest),
				   "scan_digests misses the digest of layer %zu", i);
		manifest_free(m);
	}
	free(sc.v);
	free(sc.decoded);
	return 0;
}
