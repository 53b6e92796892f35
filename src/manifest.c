/*
 * manifest.c - image manifests.
 *
 * A manifest is parsed once with cJSON into a plain struct and validated as a
 * whole before anything else sees it: a manifest is hostile input, and the
 * mount turns its fields into file names and file sizes. Sizes must be whole
 * numbers in [0, BLOB_SIZE_MAX]; digests must be sha256; a layer's name must
 * be a safe relative path (layer_name.c says which field names a layer, by
 * the conventions of the tools that made it). File names inside a tag
 * directory are assigned here, once, so every view agrees: the layer's name
 * if it has one, else its convention's default, with ".1", ".2" added to
 * repeats and "manifest.json" reserved. The manifest's config is "config.json"
 * unless a layer is named so (Ollama's tensor models, ModelPack and Docker
 * Model Runner ship the model's own config.json): then the layer keeps the
 * name its tools give it and the config takes the next free "config.json.k".
 * A name is a path: its
 * directories become directories of the tag, and a name that is both a file
 * and a directory is refused. A name too long to take the number is cut
 * first, so that every component still fits in NAME_MAX.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer_name.h"
#include "manifest.h"
#include "strmap.h"
#include "util.h"

static int fail(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static void layer_release(struct layer *l)
{
	free(l->media_type);
	free(l->name);
	free(l->file);
	memset(l, 0, sizeof(*l));
}

void manifest_free(struct manifest *m)
{
	if (!m)
		return;
	layer_release(&m->config);
	for (size_t i = 0; i < m->nlayers; i++)
		layer_release(&m->layers[i]);
	free(m->layers);
	free(m->media_type);
	free(m);
}

static int parse_descriptor(const cJSON *obj, const char *what, bool dmr_bundle,
			    struct layer *l, char *err, size_t errlen)
{
	const cJSON *mt, *dg, *sz;
	char d[120];

	if (!cJSON_IsObject(obj))
		return fail(err, errlen, "%s is not an object", what);
	mt = cJSON_GetObjectItemCaseSensitive(obj, "mediaType");
	dg = cJSON_GetObjectItemCaseSensitive(obj, "digest");
	sz = cJSON_GetObjectItemCaseSensitive(obj, "size");
	if (!cJSON_IsString(mt) || !*mt->valuestring)
		return fail(err, errlen, "%s has no mediaType", what);
	if (strlen(mt->valuestring) > 255)
		return fail(err, errlen, "%s has a mediaType longer than 255 characters", what);
	if (!cJSON_IsString(dg))
		return fail(err, errlen, "%s has no digest", what);
	if (digest_parse(dg->valuestring, strlen(dg->valuestring), &l->digest) < 0) {
		snprintf(d, sizeof(d), "%.100s", dg->valuestring);
		return fail(err, errlen, "%s has an invalid digest '%s' (want sha256:<64 lowercase hex>)",
			    what, d);
	}
	if (!cJSON_IsNumber(sz))
		return fail(err, errlen, "%s has no size", what);
	double v = sz->valuedouble;
	if (!isfinite(v) || v != floor(v))
		return fail(err, errlen, "%s has a size that is not a whole number", what);
	if (v < 0)
		return fail(err, errlen, "%s has a negative size", what);
	if (v > (double)BLOB_SIZE_MAX)
		return fail(err, errlen, "%s has an absurd size %.0f (the limit is %llu)",
			    what, v, (unsigned long long)BLOB_SIZE_MAX);
	l->size = (uint64_t)v;

	if (layer_name_of(obj, mt->valuestring, dmr_bundle, what, &l->name, err, errlen) < 0)
		return -EINVAL;
	l->media_type = xstrdup(mt->valuestring);
	return 0;
}

/*
 * A repeated name gets ".k", and k never exceeds the number of names in the
 * manifest (each step past a taken name passes a different one), so a name
 * longer than NAME_MAX - SUFFIX_ROOM is cut to that length first.
 */
#define SUFFIX_ROOM 6
_Static_assert(MANIFEST_MAX_LAYERS + 2 < 100000, "\".k\" may need more than SUFFIX_ROOM bytes");

/*
 * path, its last component cut if need be to leave room for ".k" (at a UTF-8
 * character boundary).
 */
static char *file_stem(const char *path)
{
	const char *slash = strrchr(path, '/');
	size_t dir = slash ? (size_t)(slash + 1 - path) : 0, n = strlen(path) - dir;

	if (n <= NAME_MAX - SUFFIX_ROOM)
		return xstrdup(path);
	n = NAME_MAX - SUFFIX_ROOM;
	for (int i = 0; i < 3 && ((unsigned char)path[dir + n] & 0xc0) == 0x80; i++)
		n--;
	return xstrndup(path, dir + n);
}

/*
 * Note every directory a layer's path needs ("a" and "a/b" for "a/b/c") with
 * the layer's index + 1, deepest first, stopping at one already noted (its
 * parents are then noted too).
 */
static void note_dirs(struct strmap *dirs, const char *path, size_t i)
{
	char *p = xstrdup(path);

	for (char *s = strrchr(p, '/'); s; s = strrchr(p, '/')) {
		*s = '\0';
		if (strmap_get(dirs, p, NULL))
			break;
		strmap_put(dirs, p, i + 1);
	}
	free(p);
}

/* A layer's path needs a reserved file (config.json, manifest.json) as a directory. */
static int check_reserved_dirs(const struct strmap *dirs, const struct manifest *m,
			       char *err, size_t errlen)
{
	static const char *const reserved[] = { "config.json", "manifest.json" };
	uint64_t v;

	for (size_t i = 0; i < 2; i++)
		if (strmap_get(dirs, reserved[i], &v))
			return fail(err, errlen, "layer %llu has the name '%.100s', which needs "
				    "'%s' as a directory, but that is the tag's own file",
				    (unsigned long long)v - 1, m->layers[v - 1].name, reserved[i]);
	return 0;
}

/* f if free, else "<stem>.k" with the next free k; taken (f is consumed). */
static char *take_free(struct strmap *taken, struct strmap *next, const struct strmap *dirs,
		       char *f)
{
	if (strmap_get(taken, f, NULL) || strmap_get(dirs, f, NULL)) {
		char *stem = file_stem(f);
		uint64_t k = 0;

		strmap_get(next, stem, &k);
		do {
			free(f);
			f = xasprintf("%s.%llu", stem, (unsigned long long)++k);
		} while (strmap_get(taken, f, NULL) || strmap_get(dirs, f, NULL));
		strmap_put(next, stem, k);
		free(stem);
	}
	strmap_put(taken, f, 0);
	return f;
}

/* The file of layer i before repeats are resolved; counts: unnamed layers of each kind. */
static char *base_file(const struct manifest *m, size_t i, size_t *nth, const size_t *counts)
{
	const struct layer *l = &m->layers[i];
	enum layer_kind k;

	if (l->name)
		return xstrdup(l->name);
	k = layer_kind_of(l->media_type);
	return layer_default_file(l->media_type, ++nth[k], counts[k]);
}

/*
 * Give every layer its file name: its name, or the default its convention
 * gives, if free, else "<stem>.k" with the next free k. A map remembers the
 * names taken and, for each stem, the last k used, so repeats cost O(1)
 * each. A path is a file in directories of the tag directory: a layer named
 * as a directory another layer's path needs is refused; a default name or
 * a repeat skips past directories.
 */
/*
 * A tag's names need at most this many directories: each is an inode of the
 * mount, and 4 MiB of names "<i>/a/a/.../a" would otherwise make 600,000.
 */
#define TAG_DIRS_MAX MANIFEST_MAX_LAYERS

static int assign_files(struct manifest *m, char *err, size_t errlen)
{
	struct strmap *taken = strmap_new(), *next = strmap_new(), *dirs = strmap_new();
	size_t counts[KIND_COUNT] = { 0 }, nth[KIND_COUNT] = { 0 };
	int ret = 0;
	uint64_t v;

	bool layer_config = false;    /* a layer is named config.json */

	strmap_put(taken, "manifest.json", 0);
	for (size_t i = 0; i < m->nlayers; i++) {
		if (m->layers[i].name)
			note_dirs(dirs, m->layers[i].name, i);
		if (strmap_count(dirs) > TAG_DIRS_MAX) {
			ret = fail(err, errlen, "layer %zu has the name '%.100s', which takes the "
				   "tag's directories past the limit of %d", i, m->layers[i].name,
				   TAG_DIRS_MAX);
			goto out;
		}
		if (!m->layers[i].name)
			counts[layer_kind_of(m->layers[i].media_type)]++;
		layer_config |= m->layers[i].name && strcmp(m->layers[i].name, "config.json") == 0;
	}
	if (!layer_config) {
		m->config.file = xstrdup("config.json");
		strmap_put(taken, "config.json", 0);
	}
	ret = check_reserved_dirs(dirs, m, err, errlen);
	for (size_t i = 0; i < m->nlayers && ret == 0; i++) {
		struct layer *l = &m->layers[i];
		char *f = base_file(m, i, nth, counts);

		if (l->name && strmap_get(dirs, f, &v)) {
			ret = fail(err, errlen, "layer %zu has the name '%.100s', which is both a file "
				   "and a directory (layer %llu is '%.100s')", i, f,
				   (unsigned long long)v - 1, m->layers[v - 1].name);
			free(f);
			break;
		}
		l->file = take_free(taken, next, dirs, f);
	}
	if (ret == 0 && layer_config)   /* the layer keeps the name its tools give it */
		m->config.file = take_free(taken, next, dirs, xstrdup("config.json"));
out:
	strmap_free(taken);
	strmap_free(next);
	strmap_free(dirs);
	return ret;
}

static const struct layer *desc_at(const struct manifest *m, size_t i)
{
	return i == 0 ? &m->config : &m->layers[i - 1];
}

static int cmp_desc(const void *a, const void *b, void *arg)
{
	const struct manifest *m = arg;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	int c = memcmp(desc_at(m, i)->digest.bytes, desc_at(m, j)->digest.bytes,
		       DIGEST_LEN);

	return c ? c : (i > j) - (i < j);
}

static bool same_layer(const struct layer *a, const struct layer *b)
{
	return strcmp(a->media_type, b->media_type) == 0 && !!a->name == !!b->name &&
	       (!a->name || strcmp(a->name, b->name) == 0);
}

/*
 * Sort descriptor indices by digest (index 0 is the config) so repeats sit
 * side by side: a digest listed with two sizes is refused, and so is a layer
 * that repeats another exactly; later copies are marked as repeats.
 */
static int check_duplicates(struct manifest *m, char *err, size_t errlen)
{
	size_t n = m->nlayers + 1, *idx = xmalloc(n * sizeof(*idx));
	char d[DIGEST_STR_LEN];
	int ret = 0;

	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	qsort_r(idx, n, sizeof(*idx), cmp_desc, m);
	for (size_t k = 1; k < n && ret == 0; k++) {
		size_t i = idx[k - 1], j = idx[k];
		struct layer *a = (struct layer *)desc_at(m, i), *b = (struct layer *)desc_at(m, j);
		if (!digest_equal(&a->digest, &b->digest))
			continue;
		b->repeat = true;
		digest_format(&a->digest, d);
		if (a->size != b->size)
			ret = fail(err, errlen, "'%s' is listed twice with different sizes", d);
		else if (i > 0 && same_layer(a, b))
			ret = fail(err, errlen, "layer %zu repeats layer %zu ('%s')",
				   j - 1, i - 1, d);
	}
	free(idx);
	return ret;
}

static int has_nul_escape(const char *buf, size_t len)
{
	if (memchr(buf, '\0', len))
		return 1;
	return memmem(buf, len, "\\u0000", 6) != NULL;
}

static int check_media_type(const cJSON *root, char **out, char *err, size_t errlen)
{
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "mediaType");
	const char *s;

	if (!mt) {
		if (cJSON_GetObjectItemCaseSensitive(root, "manifests"))
			return fail(err, errlen, "this is an image index (a list of manifests); "
				    "blobfs needs a single image manifest");
		*out = NULL;
		return 0;
	}
	if (!cJSON_IsString(mt))
		return fail(err, errlen, "mediaType is not a string");
	s = mt->valuestring;
	if (strcmp(s, MEDIA_DOCKER_LIST) == 0 || strcmp(s, MEDIA_OCI_INDEX) == 0)
		return fail(err, errlen, "'%s' is a manifest list; blobfs needs a single "
			    "image manifest", s);
	if (strcmp(s, MEDIA_DOCKER_MANIFEST) != 0 && strcmp(s, MEDIA_OCI_MANIFEST) != 0) {
		char d[120];
		snprintf(d, sizeof(d), "%.100s", s);
		return fail(err, errlen, "unsupported manifest media type '%s'", d);
	}
	*out = xstrdup(s);
	return 0;
}

/* The "layers" array: present, not empty, within the limit, each a descriptor. */
static int parse_layers(const cJSON *root, struct manifest *m, char *err, size_t errlen)
{
	const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers"), *it;
	int ret;

	if (!cJSON_IsArray(layers))
		return fail(err, errlen, "manifest has no layers array");
	int n = cJSON_GetArraySize(layers);
	if (n == 0)
		return fail(err, errlen, "manifest has no layers");
	if (n > MANIFEST_MAX_LAYERS)
		return fail(err, errlen, "manifest has %d layers, over the limit of %d",
			    n, MANIFEST_MAX_LAYERS);
	m->layers = xcalloc(n, sizeof(*m->layers));
	cJSON_ArrayForEach(it, layers) {
		char what[32];
		snprintf(what, sizeof(what), "layer %zu", m->nlayers);
		ret = parse_descriptor(it, what, layer_dmr_bundle(m->config.media_type),
				       &m->layers[m->nlayers], err, errlen);
		m->nlayers++;
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* The manifest text as a JSON object: within the size limit, no NUL, valid JSON. */
static int parse_root(const char *buf, size_t len, cJSON **root, char *err, size_t errlen)
{
	*root = NULL;
	if (len > MANIFEST_MAX_BYTES) {
		snprintf(err, errlen, "manifest is %zu bytes, over the %u byte limit",
			 len, MANIFEST_MAX_BYTES);
		return -EMSGSIZE;
	}
	if (has_nul_escape(buf, len))
		return fail(err, errlen, "manifest contains a NUL character");
	*root = cJSON_ParseWithLength(buf, len);
	if (!*root)
		return fail(err, errlen, "manifest is not valid JSON");
	if (!cJSON_IsObject(*root)) {
		cJSON_Delete(*root);
		*root = NULL;
		return fail(err, errlen, "manifest is not a JSON object");
	}
	return 0;
}

/* Fill m from the JSON object: media type, schema, config, layers, file names. */
static int parse_fields(const cJSON *root, struct manifest *m, char *err, size_t errlen)
{
	const cJSON *sv, *cfg;
	int ret;

	ret = check_media_type(root, &m->media_type, err, errlen);
	if (ret < 0)
		return ret;
	sv = cJSON_GetObjectItemCaseSensitive(root, "schemaVersion");
	if (!cJSON_IsNumber(sv) || sv->valuedouble != 2)
		return fail(err, errlen, "schemaVersion is not 2");
	cfg = cJSON_GetObjectItemCaseSensitive(root, "config");
	if (!cfg)
		return fail(err, errlen, "manifest has no config");
	ret = parse_descriptor(cfg, "config", false, &m->config, err, errlen);
	if (ret < 0)
		return ret;
	ret = parse_layers(root, m, err, errlen);
	if (ret < 0)
		return ret;
	ret = check_duplicates(m, err, errlen);
	if (ret < 0)
		return ret;
	return assign_files(m, err, errlen);
}

/* The size of the distinct blobs: the config and each layer, a repeated one once. */
static uint64_t sum_sizes(const struct manifest *m)
{
	uint64_t total = m->config.size;

	for (size_t i = 0; i < m->nlayers; i++)
		if (!m->layers[i].repeat)
			total += m->layers[i].size;
	return total;
}

int manifest_parse(const char *buf, size_t len, struct manifest **out,
		   char *err, size_t errlen)
{
	struct manifest *m;
	cJSON *root;
	int ret;

	*out = NULL;
	ret = parse_root(buf, len, &root, err, errlen);
	if (ret < 0)
		return ret;
	m = xcalloc(1, sizeof(*m));
	ret = parse_fields(root, m, err, errlen);
	cJSON_Delete(root);
	if (ret < 0) {
		manifest_free(m);
		return ret;
	}
	m->total_size = sum_sizes(m);
	*out = m;
	return 0;
}

int manifest_for_each_blob(const struct manifest *m,
			   int (*fn)(const struct layer *l, void *arg), void *arg)
{
	int ret = fn(&m->config, arg);

	for (size_t i = 0; i < m->nlayers && ret == 0; i++)
		if (!m->layers[i].repeat)
			ret = fn(&m->layers[i], arg);
	return ret;
}

int manifest_references(const struct manifest *m, const struct digest *d)
{
	if (digest_equal(&m->config.digest, d))
		return 1;
	for (size_t i = 0; i < m->nlayers; i++)
		if (digest_equal(&m->layers[i].digest, d))
			return 1;
	return 0;
}

static void scan_text(const char *buf, size_t len,
		      void (*fn)(const struct digest *d, void *arg), void *arg)
{
	const char *p = buf, *end = buf + len;

	while ((p = memmem(p, end - p, "sha256:", 7)) != NULL) {
		struct digest d;
		if (end - p >= 7 + DIGEST_HEX_LEN &&
		    digest_parse(p, 7 + DIGEST_HEX_LEN, &d) == 0)
			fn(&d, arg);
		p += 7;
	}
}

/* Every key and string value, as cJSON decoded them (nesting is bounded by cJSON). */
static void scan_json(const cJSON *it, void (*fn)(const struct digest *d, void *arg),
		      void *arg)
{
	for (; it; it = it->next) {
		if (it->string)
			scan_text(it->string, strlen(it->string), fn, arg);
		if (cJSON_IsString(it))
			scan_text(it->valuestring, strlen(it->valuestring), fn, arg);
		scan_json(it->child, fn, arg);
	}
}

/*
 * The text as it is, and, if it holds an escape, also every string cJSON
 * reads from it: "sha256\u003a..." is a digest to the parser. Without a
 * backslash every string is a piece of the text, already scanned; over
 * MANIFEST_MAX_BYTES the parser reads nothing.
 */
void manifest_scan_digests(const char *buf, size_t len,
			   void (*fn)(const struct digest *d, void *arg), void *arg)
{
	cJSON *root;

	scan_text(buf, len, fn, arg);
	if (len > MANIFEST_MAX_BYTES || !memchr(buf, '\\', len))
		return;
	root = cJSON_ParseWithLength(buf, len);
	scan_json(root, fn, arg);
	cJSON_Delete(root);
}
