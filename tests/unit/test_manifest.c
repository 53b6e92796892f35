/*
 * test_manifest.c - image manifests (manifest.h): parsing real Ollama (Docker
 * v2) and OCI manifests, the file names given to layers, distinct-blob
 * accounting, every refusal of hostile input with its message, the size
 * limit, a guard against quadratic file naming, and the digest scan used for
 * manifests that cannot be parsed.
 */
#include "config.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "manifest.h"
#include "testutil.h"

/*
 * Templates use ' for " and "@c" for "sha256:" followed by 64 copies of the
 * hex digit c, so the JSON stays readable.
 */
static char *expand(const char *t)
{
	size_t cap = strlen(t) * 36 + 1, n = 0; /* "@c" (2 bytes) becomes 71 */
	char *out = malloc(cap);

	assert_non_null(out);
	for (const char *p = t; *p; p++) {
		if (*p == '\'') {
			out[n++] = '"';
		} else if (*p == '@' && p[1]) {
			p++;
			memcpy(out + n, "sha256:", 7);
			n += 7;
			memset(out + n, *p, 64);
			n += 64;
		} else {
			out[n++] = *p;
		}
	}
	out[n] = '\0';
	return out;
}

/* The digest "@c" stands for. */
static struct digest dig(char c)
{
	struct digest d;
	char s[DIGEST_STR_LEN];

	memcpy(s, "sha256:", 7);
	memset(s + 7, c, 64);
	assert_int_equal(digest_parse(s, 71, &d), 0);
	return d;
}

static struct manifest *parse_ok(const char *tmpl)
{
	char *json = expand(tmpl), err[512] = "";
	struct manifest *m = NULL;
	int ret = manifest_parse(json, strlen(json), &m, err, sizeof(err));

	if (ret != 0)
		fail_msg("manifest_parse = %d (%s) for %s", ret, err, json);
	assert_non_null(m);
	free(json);
	return m;
}

static void parse_bad(const char *tmpl, const char *want)
{
	char *json = expand(tmpl), err[512] = "";
	struct manifest *m = (struct manifest *)(uintptr_t)1;
	int ret = manifest_parse(json, strlen(json), &m, err, sizeof(err));

	if (ret != -EINVAL)
		fail_msg("manifest_parse = %d, want -EINVAL, for %s", ret, json);
	assert_null(m);
	assert_contains(err, want);
	free(json);
}

#define HDR "{'schemaVersion':2,'mediaType':'" MEDIA_DOCKER_MANIFEST "',"
#define CFG "'config':{'mediaType':'application/vnd.docker.container.image.v1+json','digest':'@0','size':485}"
#define OL(kind, d, size) \
	"{'mediaType':'application/vnd.ollama.image." kind "','digest':'@" d "','size':" size "}"
/* A valid manifest with one layer l. */
#define ONE(l) HDR CFG ",'layers':[" l "]}"
/* One layer with extra fields after the size. */
#define OLX(kind, d, size, extra) \
	"{'mediaType':'application/vnd.ollama.image." kind "','digest':'@" d "','size':" size "," extra "}"

static const char ollama_manifest[] =
	HDR CFG ",'layers':["
	OL("model", "1", "4661211424") ","
	OL("template", "2", "1429") ","
	OL("params", "3", "110") ","
	OL("license", "4", "12403") ","
	OL("system", "5", "68")
	"]}";

/* ---- valid manifests ---- */

static void test_ollama_manifest(void **state)
{
	struct manifest *m = parse_ok(ollama_manifest);
	static const char *const files[] = { "model", "template", "params", "license", "system" };
	static const uint64_t sizes[] = { 4661211424ull, 1429, 110, 12403, 68 };
	struct digest d;

	assert_string_equal(m->media_type, MEDIA_DOCKER_MANIFEST);
	assert_string_equal(m->config.media_type, "application/vnd.docker.container.image.v1+json");
	assert_string_equal(m->config.file, "config.json");
	assert_int_equal(m->config.size, 485);
	d = dig('0');
	assert_true(digest_equal(&m->config.digest, &d));
	assert_int_equal(m->nlayers, 5);
	for (size_t i = 0; i < 5; i++) {
		struct layer *l = &m->layers[i];
		d = dig((char)('1' + i));
		assert_string_equal(l->file, files[i]);
		assert_int_equal(l->size, sizes[i]);
		assert_true(digest_equal(&l->digest, &d));
		assert_null(l->name);
		assert_false(l->repeat);
		assert_true(strncmp(l->media_type, "application/vnd.ollama.image.", 29) == 0);
		assert_string_equal(l->media_type + 29, files[i]);
	}
	assert_int_equal(m->total_size, 485 + 4661211424ull + 1429 + 110 + 12403 + 68);
	manifest_free(m);
}

static void test_oci_manifest_without_media_type(void **state)
{
	struct manifest *m = parse_ok(
		"{'schemaVersion':2,"
		"'config':{'mediaType':'application/vnd.oci.image.config.v1+json','digest':'@a','size':7},"
		"'layers':[{'mediaType':'application/vnd.oci.image.layer.v1.tar+gzip','digest':'@b','size':100}]}");

	assert_null(m->media_type);
	assert_int_equal(m->nlayers, 1);
	assert_string_equal(m->layers[0].file, "tar+gzip");
	assert_string_equal(m->config.file, "config.json");
	assert_int_equal(m->total_size, 107);
	manifest_free(m);
}

static void test_oci_manifest_with_media_type(void **state)
{
	struct manifest *m = parse_ok(
		"{'schemaVersion':2,'mediaType':'" MEDIA_OCI_MANIFEST "',"
		"'config':{'mediaType':'application/vnd.oci.image.config.v1+json','digest':'@a','size':7},"
		"'layers':[{'mediaType':'application/vnd.oci.image.layer.v1.tar','digest':'@b','size':1}]}");

	assert_string_equal(m->media_type, MEDIA_OCI_MANIFEST);
	assert_string_equal(m->layers[0].file, "tar");
	manifest_free(m);
}

static void test_layer_name_becomes_file(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OLX("model", "1", "10", "'name':'weights.gguf'") ","
		OL("model", "2", "20") "]}");

	assert_string_equal(m->layers[0].name, "weights.gguf");
	assert_string_equal(m->layers[0].file, "weights.gguf");
	assert_null(m->layers[1].name);
	assert_string_equal(m->layers[1].file, "model");
	manifest_free(m);
}

static void test_oci_title_annotation_becomes_file(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OLX("model", "1", "10",
		    "'annotations':{'org.opencontainers.image.title':'README.md','x':'y'}") ","
		OLX("model", "2", "10",
		    "'name':'own-name','annotations':{'org.opencontainers.image.title':'title'}") "]}");

	assert_string_equal(m->layers[0].file, "README.md");
	assert_string_equal(m->layers[0].name, "README.md");
	/* An explicit name wins over the annotation. */
	assert_string_equal(m->layers[1].file, "own-name");
	manifest_free(m);
}

static void test_repeated_media_types_get_suffixes(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OL("model", "1", "1") "," OL("model", "2", "2") "," OL("model", "3", "3") ","
		OL("adapter", "4", "4") "," OL("adapter", "5", "5") "]}");

	assert_string_equal(m->layers[0].file, "model");
	assert_string_equal(m->layers[1].file, "model.1");
	assert_string_equal(m->layers[2].file, "model.2");
	assert_string_equal(m->layers[3].file, "adapter");
	assert_string_equal(m->layers[4].file, "adapter.1");
	manifest_free(m);
}

static void test_file_names_never_collide(void **state)
{
	/* Explicit names that look like generated ones. */
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OLX("model", "1", "1", "'name':'model.1'") ","
		OL("model", "2", "2") "," OL("model", "3", "3") "," OL("model", "4", "4") ","
		OLX("x", "5", "5", "'name':'model'") "]}");

	for (size_t i = 0; i < m->nlayers; i++) {
		assert_string_not_equal(m->layers[i].file, "config.json");
		for (size_t j = 0; j < i; j++)
			if (strcmp(m->layers[i].file, m->layers[j].file) == 0)
				fail_msg("layers %zu and %zu are both '%s'", j, i, m->layers[i].file);
	}
	assert_string_equal(m->layers[0].file, "model.1");
	assert_string_equal(m->layers[1].file, "model");
	manifest_free(m);
}

static void test_reserved_names_renamed(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OLX("model", "1", "1", "'name':'config.json'") ","
		OLX("model", "2", "2", "'name':'manifest.json'") "]}");

	/* A layer named config.json is the model's own: it keeps the name. */
	assert_string_equal(m->config.file, "config.json.1");
	assert_string_equal(m->layers[0].name, "config.json");
	assert_string_equal(m->layers[0].file, "config.json");
	assert_string_equal(m->layers[1].file, "manifest.json.1");
	manifest_free(m);

	/* The config steps past names that are taken. */
	m = parse_ok(HDR CFG ",'layers':["
		OLX("model", "1", "1", "'name':'config.json.1'") ","
		OLX("model", "2", "2", "'name':'config.json'") "]}");
	assert_string_equal(m->layers[0].file, "config.json.1");
	assert_string_equal(m->layers[1].file, "config.json");
	assert_string_equal(m->config.file, "config.json.2");
	manifest_free(m);
}

static void test_media_type_file_edge_cases(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		"{'mediaType':'plain','digest':'@1','size':1},"
		"{'mediaType':'application/vnd.x.','digest':'@2','size':1},"
		"{'mediaType':'application/x.we ird:type','digest':'@3','size':1},"
		"{'mediaType':'a/b/c','digest':'@4','size':1}]}");

	assert_string_equal(m->layers[0].file, "plain");
	assert_string_equal(m->layers[1].file, "layer");
	assert_string_equal(m->layers[2].file, "we_ird_type");
	assert_string_equal(m->layers[3].file, "c");
	manifest_free(m);
}

static void test_size_limits(void **state)
{
	/* Exactly 4 TiB is allowed; 0 is allowed; 1e3 is a whole number. */
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OL("model", "1", "4398046511104") "," OL("params", "2", "0") ","
		OL("system", "3", "1e3") "]}");

	assert_int_equal(m->layers[0].size, 1ull << 42);
	assert_int_equal(m->layers[1].size, 0);
	assert_int_equal(m->layers[2].size, 1000);
	manifest_free(m);
}

static void test_total_size_counts_distinct_blobs_once(void **state)
{
	/* Layer 1 repeats layer 0's blob under another media type; layer 2 is the config blob. */
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OL("model", "1", "1000") "," OL("projector", "1", "1000") ","
		OL("params", "0", "485") "," OL("system", "2", "5") "]}");

	assert_int_equal(m->nlayers, 4);
	assert_false(m->layers[0].repeat);
	assert_true(m->layers[1].repeat);
	assert_true(m->layers[2].repeat);
	assert_false(m->layers[3].repeat);
	assert_int_equal(m->total_size, 485 + 1000 + 5);
	/* Repeats still get their own file. */
	assert_string_equal(m->layers[1].file, "projector");
	assert_string_equal(m->layers[2].file, "params");
	manifest_free(m);
}

static void test_same_blob_different_names_allowed(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OLX("model", "1", "10", "'name':'a.bin'") ","
		OLX("model", "1", "10", "'name':'b.bin'") "]}");

	assert_false(m->layers[0].repeat);
	assert_true(m->layers[1].repeat);
	assert_int_equal(m->total_size, 485 + 10);
	manifest_free(m);
}

struct visit {
	unsigned calls;
	uint64_t bytes;
	struct digest first;
	unsigned stop_after;
};

static int visit_cb(const struct layer *l, void *arg)
{
	struct visit *v = arg;

	if (v->calls == 0)
		v->first = l->digest;
	v->calls++;
	v->bytes += l->size;
	return v->stop_after && v->calls >= v->stop_after ? 42 : 0;
}

static void test_for_each_blob_skips_repeats(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OL("model", "1", "1000") "," OL("projector", "1", "1000") ","
		OL("params", "0", "485") "," OL("system", "2", "5") "]}");
	struct visit v = { 0 };
	struct digest cfg = dig('0');

	assert_int_equal(manifest_for_each_blob(m, visit_cb, &v), 0);
	assert_int_equal(v.calls, 3);
	assert_int_equal(v.bytes, m->total_size);
	assert_true(digest_equal(&v.first, &cfg)); /* config first */

	memset(&v, 0, sizeof(v));
	v.stop_after = 2;
	assert_int_equal(manifest_for_each_blob(m, visit_cb, &v), 42);
	assert_int_equal(v.calls, 2);
	manifest_free(m);
}

static void test_references(void **state)
{
	struct manifest *m = parse_ok(ollama_manifest);
	struct digest d;

	d = dig('0');
	assert_int_equal(manifest_references(m, &d), 1);
	d = dig('5');
	assert_int_equal(manifest_references(m, &d), 1);
	d = dig('9');
	assert_int_equal(manifest_references(m, &d), 0);
	manifest_free(m);
	manifest_free(NULL);
}

/* ---- refusals ---- */

static void test_refuses_non_json(void **state)
{
	parse_bad("not json at all", "JSON");
	parse_bad("", "JSON");
	parse_bad("{'schemaVersion':2,", "JSON");
	parse_bad("[1,2,3]", "object");
	parse_bad("'a string'", "object");
}

static void test_refuses_schema_version(void **state)
{
	parse_bad("{'schemaVersion':1,'config':{},'layers':[]}", "schemaVersion");
	parse_bad("{'config':{},'layers':[]}", "schemaVersion");
	parse_bad("{'schemaVersion':'2'," CFG ",'layers':[" OL("model", "1", "1") "]}",
		  "schemaVersion");
}

static void test_refuses_missing_config_or_layers(void **state)
{
	parse_bad(HDR "'layers':[" OL("model", "1", "1") "]}", "config");
	parse_bad(HDR "'config':'x','layers':[" OL("model", "1", "1") "]}", "config");
	parse_bad(HDR "'config':null,'layers':[" OL("model", "1", "1") "]}", "config");
	parse_bad(HDR CFG "}", "layers");
	parse_bad(HDR CFG ",'layers':{}}", "layers");
	parse_bad(HDR CFG ",'layers':[]}", "no layers");
	parse_bad(HDR CFG ",'layers':[1]}", "layer 0 is not an object");
}

static void test_refuses_bad_descriptor_fields(void **state)
{
	parse_bad(ONE("{'mediaType':'x/model','size':1}"), "digest");
	parse_bad(ONE("{'mediaType':'x/model','digest':'@1'}"), "size");
	parse_bad(ONE("{'digest':'@1','size':1}"), "mediaType");
	parse_bad(ONE("{'mediaType':'','digest':'@1','size':1}"), "mediaType");
	parse_bad(ONE("{'mediaType':5,'digest':'@1','size':1}"), "mediaType");
	parse_bad(ONE("{'mediaType':'x/model','digest':5,'size':1}"), "digest");
	parse_bad(ONE("{'mediaType':'x/model','digest':'sha256:abc','size':1}"), "invalid digest");
	parse_bad(ONE("{'mediaType':'x/model','digest':'@A','size':1}"), "invalid digest");
	parse_bad(ONE("{'mediaType':'x/model','digest':'sha512:0000','size':1}"), "invalid digest");
	parse_bad(HDR "'config':{'mediaType':'x/c','digest':'nope','size':1},'layers':["
		  OL("model", "1", "1") "]}", "config has an invalid digest");
}

static void test_refuses_bad_sizes(void **state)
{
	parse_bad(ONE(OL("model", "1", "-1")), "negative");
	parse_bad(ONE(OL("model", "1", "1.5")), "whole number");
	parse_bad(ONE(OL("model", "1", "0.0001")), "whole number");
	parse_bad(ONE(OL("model", "1", "4398046511105")), "size");
	parse_bad(ONE(OL("model", "1", "1e300")), "size");
	parse_bad(ONE(OL("model", "1", "'12'")), "size");
	parse_bad(ONE(OL("model", "1", "null")), "size");
	parse_bad(ONE(OL("model", "1", "true")), "size");
	parse_bad(HDR "'config':{'mediaType':'x/c','digest':'@0','size':-5},'layers':["
		  OL("model", "1", "1") "]}", "config has a negative size");
}

static void test_refuses_lists_and_indexes(void **state)
{
	parse_bad("{'schemaVersion':2,'mediaType':'" MEDIA_DOCKER_LIST "','manifests':[]}", "list");
	parse_bad("{'schemaVersion':2,'mediaType':'" MEDIA_OCI_INDEX "','manifests':[]}", "list");
	parse_bad("{'schemaVersion':2,'manifests':[{'mediaType':'" MEDIA_OCI_MANIFEST
		  "','digest':'@1','size':10}]}", "index");
	parse_bad("{'schemaVersion':2,'mediaType':'application/json'," CFG ",'layers':["
		  OL("model", "1", "1") "]}", "unsupported");
	parse_bad("{'schemaVersion':2,'mediaType':7," CFG ",'layers':["
		  OL("model", "1", "1") "]}", "mediaType");
}

static void test_refuses_unsafe_layer_names(void **state)
{
	static const char *const names[] = {
		"'..'", "'.'", "'/etc/passwd'", "'../../x'", "''", "'a//b'", "'a/./b'",
		"'a/../b'", "'a/..'", "'./a'", "'//a'", "'a/b\\u001f/c'", "'d\\n/x'",
		"'a\\nb'", "'a\\u0001b'", "'tab\\there'", "'del\\u007f'", "'x/'",
	};
	char tmpl[512];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':%s")), names[i]);
		parse_bad(tmpl, "unsafe name");
		snprintf(tmpl, sizeof(tmpl),
			 ONE(OLX("model", "1", "1", "'annotations':{'org.opencontainers.image.title':%s}")),
			 names[i]);
		parse_bad(tmpl, "unsafe name");
	}
	parse_bad(ONE(OLX("model", "1", "1", "'name':7")), "name");
}

static void test_refuses_overlong_name(void **state)
{
	char name[300], tmpl[1024];

	memset(name, 'n', 256);
	name[256] = '\0';
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'%s'")), name);
	parse_bad(tmpl, "unsafe name");
	name[255] = '\0';
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'%s'")), name);
	manifest_free(parse_ok(tmpl));
}

/* Each hostile path is refused with the reason, naming the layer. */
static void test_unsafe_path_reasons(void **state)
{
	static const struct { const char *name, *why; } cases[] = {
		{ "'/abs/x'", "absolute" },
		{ "'a//b'", "empty component" },
		{ "'a/'", "empty component" },
		{ "'a/./b'", "'.' component" },
		{ "'a/../../b'", "'..' component" },
		{ "'a/b\\u0007'", "control character 0x07" },
		{ "'a\\u007f/b'", "control character 0x7f" },
		{ "'a\\u009bb'", "control character 0x9b" },     /* C1: a terminal's CSI */
		{ "'x/\\u0085'", "control character 0x85" },
		{ "'a\xff" "b'", "not valid UTF-8" },
		{ "'a\xc0\xaf" "b'", "not valid UTF-8" },          /* an overlong '/' */
		{ "'a\xed\xa0\x80'", "not valid UTF-8" },         /* a surrogate */
		{ "'a\xe2\x82'", "not valid UTF-8" },              /* cut short */
	};
	char tmpl[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(tmpl, sizeof(tmpl), HDR CFG ",'layers':[" OL("model", "1", "1") ","
			 OLX("model", "2", "1", "'name':%s") "]}", cases[i].name);
		parse_bad(tmpl, cases[i].why);
		parse_bad(tmpl, "layer 1 has an unsafe name");
	}
}

/*
 * Unicode format characters (category Cf) make a name that displays as
 * something else: bidi overrides reorder what follows ("Trojan source"),
 * zero-width ones hide. The first and last of each of Unicode 15's Cf ranges
 * is refused, naming the layer and the character; their neighbours are not.
 */
static void test_refuses_format_characters(void **state)
{
	static const struct { const char *utf8, *why; } bad[] = {
		{ "\xc2\xad", "U+00AD" },
		{ "\xd8\x80", "U+0600" }, { "\xd8\x85", "U+0605" }, { "\xd8\x9c", "U+061C" },
		{ "\xdb\x9d", "U+06DD" }, { "\xdc\x8f", "U+070F" },
		{ "\xe0\xa2\x90", "U+0890" }, { "\xe0\xa2\x91", "U+0891" },
		{ "\xe0\xa3\xa2", "U+08E2" }, { "\xe1\xa0\x8e", "U+180E" },
		{ "\xe2\x80\x8b", "U+200B" }, { "\xe2\x80\x8e", "U+200E" },
		{ "\xe2\x80\x8f", "U+200F" }, { "\xe2\x80\xaa", "U+202A" },
		{ "\xe2\x80\xae", "U+202E" }, { "\xe2\x81\xa0", "U+2060" },
		{ "\xe2\x81\xa4", "U+2064" }, { "\xe2\x81\xa6", "U+2066" },
		{ "\xe2\x81\xa9", "U+2069" }, { "\xe2\x81\xaf", "U+206F" },
		{ "\xef\xbb\xbf", "U+FEFF" }, { "\xef\xbf\xb9", "U+FFF9" },
		{ "\xef\xbf\xbb", "U+FFFB" }, { "\xf0\x91\x82\xbd", "U+110BD" },
		{ "\xf0\x91\x83\x8d", "U+110CD" }, { "\xf0\x93\x90\xb0", "U+13430" },
		{ "\xf0\x93\x90\xbf", "U+1343F" }, { "\xf0\x9b\xb2\xa0", "U+1BCA0" },
		{ "\xf0\x9b\xb2\xa3", "U+1BCA3" }, { "\xf0\x9d\x85\xb3", "U+1D173" },
		{ "\xf0\x9d\x85\xba", "U+1D17A" }, { "\xf3\xa0\x80\x81", "U+E0001" },
		{ "\xf3\xa0\x80\xa0", "U+E0020" }, { "\xf3\xa0\x81\xbf", "U+E007F" },
	};
	static const char *const good[] = {
		"\xc2\xac", "\xc2\xae", "\xe2\x80\x8a", "\xe2\x80\x90", "\xe2\x80\xa9",
		"\xe2\x80\xaf", "\xef\xbb\xbe", "\xef\xbf\xbc", "\xf3\xa0\x82\x80",
		"\xe6\xa8\xa1\xe5\x9e\x8b",
	};
	char tmpl[512], why[64];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(tmpl, sizeof(tmpl), HDR CFG ",'layers':[" OL("model", "1", "1") ","
			 OLX("model", "2", "1", "'name':'dir/gguf%s.exe'") "]}", bad[i].utf8);
		snprintf(why, sizeof(why), "format character %s at byte 8", bad[i].why);
		parse_bad(tmpl, why);
		parse_bad(tmpl, "layer 1 has an unsafe name");
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'a%sb'")), good[i]);
		manifest_free(parse_ok(tmpl));
	}
}

static void test_refuses_long_and_deep_paths(void **state)
{
	char name[2048], tmpl[4096];

	/* A component over NAME_MAX, anywhere in the path. */
	snprintf(name, sizeof(name), "dir/%0256d/x", 0);
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'%s'")), name);
	parse_bad(tmpl, "over NAME_MAX");
	snprintf(name, sizeof(name), "dir/%0255d/x", 0);
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'%s'")), name);
	manifest_free(parse_ok(tmpl));
	/* 32 directories deep is fine, 33 is not. */
	name[0] = '\0';
	for (int i = 0; i < 32; i++)
		strcat(name, "d/");
	strcat(name, "f");
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'%s'")), name);
	manifest_free(parse_ok(tmpl));
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'d/%s'")), name);
	parse_bad(tmpl, "nested more than 32");
	/* The whole path is at most 1024 bytes. */
	snprintf(name, sizeof(name), "%0200d/%0200d/%0200d/%0200d/%0200d/%019d", 0, 0, 0, 0, 0, 0);
	assert_int_equal(strlen(name), 1024);
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'%s'")), name);
	manifest_free(parse_ok(tmpl));
	snprintf(tmpl, sizeof(tmpl), ONE(OLX("model", "1", "1", "'name':'%sx'")), name);
	parse_bad(tmpl, "over the limit of 1024");
}

/* Ollama's tensor format: a blob per tensor, config files under paths. */
static void test_tensor_model_paths_become_files(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		"{'mediaType':'application/vnd.ollama.image.tensor','digest':'@1','size':10,"
		"'name':'text_encoder/model.layers.0.mlp.down_proj.weight','dtype':'BF16',"
		"'shape':[2560,9728]},"
		"{'mediaType':'application/vnd.ollama.image.tensor','digest':'@2','size':10,"
		"'name':'transformer/blocks.0.attn.weight'},"
		"{'mediaType':'application/vnd.ollama.image.json','digest':'@3','size':10,"
		"'name':'text_encoder/config.json'},"
		"{'mediaType':'application/vnd.ollama.image.json','digest':'@4','size':10,"
		"'name':'tokenizer/vocab.json'},"
		"{'mediaType':'application/vnd.ollama.image.json','digest':'@5','size':10,"
		"'name':'model_index.json'},"
		"{'mediaType':'application/vnd.ollama.image.json','digest':'@6','size':10,"
		"'name':'config.json'}]}");

	assert_string_equal(m->layers[0].file, "text_encoder/model.layers.0.mlp.down_proj.weight");
	assert_string_equal(m->layers[1].file, "transformer/blocks.0.attn.weight");
	assert_string_equal(m->layers[2].file, "text_encoder/config.json");
	assert_string_equal(m->layers[3].file, "tokenizer/vocab.json");
	assert_string_equal(m->layers[4].file, "model_index.json");
	assert_string_equal(m->layers[5].file, "config.json");
	assert_string_equal(m->config.file, "config.json.1");
	manifest_free(m);
}

static void test_refuses_file_that_is_a_directory(void **state)
{
	parse_bad(HDR CFG ",'layers':[" OLX("model", "1", "1", "'name':'a/b'") ","
		  OLX("model", "2", "1", "'name':'a'") "]}", "both a file and a directory");
	parse_bad(HDR CFG ",'layers':[" OLX("model", "1", "1", "'name':'a'") ","
		  OLX("model", "2", "1", "'name':'a/b/c'") "]}",
		  "layer 0 has the name 'a', which is both a file and a directory (layer 1 is 'a/b/c')");
	parse_bad(HDR CFG ",'layers':[" OLX("model", "1", "1", "'name':'x/a/b'") ","
		  OLX("model", "2", "1", "'name':'x/a'") "]}", "both a file and a directory");
	parse_bad(ONE(OLX("model", "1", "1", "'name':'config.json/x'")),
		  "layer 0 has the name 'config.json/x', which needs 'config.json' as a directory");
	parse_bad(ONE(OLX("model", "1", "1", "'name':'manifest.json/x/y'")), "'manifest.json'");
}

static void test_paths_share_directories_and_defaults_step_aside(void **state)
{
	/* An unnamed layer whose default is a directory, a repeated path. */
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		OLX("model", "1", "1", "'name':'model/weights'") ","
		OL("model", "2", "1") ","
		OLX("model", "3", "1", "'name':'model/extra/a'") ","
		OLX("model", "4", "1", "'name':'model/extra/a'") "]}");

	assert_string_equal(m->layers[0].file, "model/weights");
	assert_string_equal(m->layers[1].file, "model.1");
	assert_string_equal(m->layers[2].file, "model/extra/a");
	assert_string_equal(m->layers[3].file, "model/extra/a.1");
	manifest_free(m);
}

static void test_long_repeated_path_fits(void **state)
{
	char name[300], tmpl[1024];
	struct manifest *m;

	snprintf(name, sizeof(name), "d/%0255d", 0);
	snprintf(tmpl, sizeof(tmpl), HDR CFG ",'layers':[" OLX("model", "1", "1", "'name':'%s'") ","
		 OLX("model", "2", "1", "'name':'%s'") "]}", name, name);
	m = parse_ok(tmpl);
	assert_string_equal(m->layers[0].file, name);
	assert_int_equal(strlen(m->layers[1].file), 2 + 249 + 2);
	assert_memory_equal(m->layers[1].file, name, 2 + 249);
	assert_string_equal(m->layers[1].file + 2 + 249, ".1");
	manifest_free(m);
}

#define OCI_HDR "{'schemaVersion':2,'mediaType':'" MEDIA_OCI_MANIFEST "',"
#define MP(mt, d, extra) \
	"{'mediaType':'application/vnd.cncf.model." mt "','digest':'@" d "','size':1" extra "}"

/* CNCF ModelPack: org.cncf.model.filepath; archives keep a suffix. */
static void test_modelpack_file_paths(void **state)
{
	struct manifest *m = parse_ok(OCI_HDR "'artifactType':'application/vnd.cncf.model.manifest.v1+json',"
		"'config':{'mediaType':'application/vnd.cncf.model.config.v1+json','digest':'@0','size':9},"
		"'layers':["
		MP("weight.v1.raw", "1", ",'annotations':{'org.cncf.model.filepath':'model-00001-of-00002.safetensors'}") ","
		MP("weight.config.v1.raw", "2", ",'annotations':{'org.cncf.model.filepath':'config.json'}") ","
		MP("doc.v1.raw", "3", ",'annotations':{'org.cncf.model.filepath':'docs/README.md'}") ","
		MP("weight.v1.tar", "4", ",'annotations':{'org.cncf.model.filepath':'w.bin'}") ","
		MP("code.v1.tar+gzip", "5", ",'annotations':{'org.cncf.model.filepath':'src'}") ","
		MP("dataset.v1.tar+zstd", "6", ",'annotations':{'org.cncf.model.filepath':'data'}") ","
		"{'mediaType':'application/vnd.cnai.model.weight.v1.raw','digest':'@7','size':1,"
		"'annotations':{'org.cnai.model.filepath':'old/tokenizer.json'}}]}");

	assert_string_equal(m->layers[0].file, "model-00001-of-00002.safetensors");
	/* The model's config.json is the layer's; the manifest's config steps aside. */
	assert_string_equal(m->layers[1].file, "config.json");
	assert_string_equal(m->config.file, "config.json.1");
	assert_string_equal(m->layers[2].file, "docs/README.md");
	assert_string_equal(m->layers[3].file, "w.bin.tar");
	assert_string_equal(m->layers[4].file, "src.tar.gz");
	assert_string_equal(m->layers[5].file, "data.tar.zst");
	assert_string_equal(m->layers[6].file, "old/tokenizer.json");
	manifest_free(m);
	parse_bad(ONE(OLX("model", "1", "1", "'annotations':{'org.cncf.model.filepath':'../x'}")),
		  "unsafe name '../x' (org.cncf.model.filepath): it has a '..' component");
	parse_bad(ONE(OLX("model", "1", "1", "'annotations':{'org.cncf.model.filepath':5}")),
		  "name that is not a string");
}

/* ORAS: the title; a directory ORAS would unpack stays its .tar.gz. */
static void test_oras_titles(void **state)
{
	struct manifest *m = parse_ok(OCI_HDR "'artifactType':'application/vnd.unknown.artifact.v1',"
		"'config':{'mediaType':'application/vnd.oci.empty.v1+json','digest':'@0','size':2,'data':'e30='},"
		"'layers':["
		"{'mediaType':'application/vnd.oci.image.layer.v1.tar','digest':'@1','size':1,"
		"'annotations':{'org.opencontainers.image.title':'sub/dir/file.txt'}},"
		"{'mediaType':'application/vnd.oci.image.layer.v1.tar+gzip','digest':'@2','size':1,"
		"'annotations':{'org.opencontainers.image.title':'tree','io.deis.oras.content.digest':"
		"'sha256:@3','io.deis.oras.content.unpack':'true'}},"
		"{'mediaType':'application/vnd.oci.image.layer.v1.tar','digest':'@4','size':1,"
		"'annotations':{'org.opencontainers.image.title':'t','org.cncf.model.filepath':'fp'}}]}");

	assert_string_equal(m->layers[0].file, "sub/dir/file.txt");
	assert_string_equal(m->layers[1].file, "tree.tar.gz");
	/* The title wins over the ModelPack path. */
	assert_string_equal(m->layers[2].file, "t");
	manifest_free(m);
}

#define DMR(mt, d) "{'mediaType':'application/vnd.docker.ai." mt "','digest':'@" d "','size':1}"

/* Docker Model Runner: the names its bundles give each media type. */
static void test_docker_model_runner_names(void **state)
{
	struct manifest *m = parse_ok(OCI_HDR
		"'config':{'mediaType':'application/vnd.docker.ai.model.config.v0.1+json','digest':'@0','size':9},"
		"'layers':[" DMR("gguf.v3", "1") "," DMR("license", "2") "," DMR("license", "3") ","
		DMR("mmproj", "4") "," DMR("chat.template.jinja", "5") "]}");

	assert_string_equal(m->layers[0].file, "model.gguf");
	assert_string_equal(m->layers[1].file, "license");
	assert_string_equal(m->layers[2].file, "license.1");
	assert_string_equal(m->layers[3].file, "model.mmproj");
	assert_string_equal(m->layers[4].file, "template.jinja");
	manifest_free(m);

	/* Shards are numbered as Docker Model Runner unpacks them. */
	m = parse_ok(OCI_HDR
		"'config':{'mediaType':'application/vnd.docker.ai.model.config.v0.1+json','digest':'@0','size':9},"
		"'layers':[" DMR("gguf.v3", "1") "," DMR("gguf.v3", "2") "," DMR("gguf.v3", "3") ","
		DMR("safetensors", "4") "]}");
	assert_string_equal(m->layers[0].file, "model-00001-of-00003.gguf");
	assert_string_equal(m->layers[1].file, "model-00002-of-00003.gguf");
	assert_string_equal(m->layers[2].file, "model-00003-of-00003.gguf");
	assert_string_equal(m->layers[3].file, "model.safetensors");
	manifest_free(m);

	/*
	 * Its packager annotates every layer with the file's own name, which
	 * Docker Model Runner ignores for v0.1 configs: its bundle names win.
	 */
	m = parse_ok(OCI_HDR
		"'config':{'mediaType':'application/vnd.docker.ai.model.config.v0.1+json','digest':'@0','size':9},"
		"'layers':[{'mediaType':'application/vnd.docker.ai.gguf.v3','digest':'@1','size':1,"
		"'annotations':{'org.cncf.model.filepath':'Llama-3.2-1B-Q4_K_M.gguf'}},"
		"{'mediaType':'application/vnd.docker.ai.license','digest':'@2','size':1,"
		"'annotations':{'org.cncf.model.filepath':'LICENSE'}}]}");
	assert_string_equal(m->layers[0].file, "model.gguf");
	assert_string_equal(m->layers[1].file, "LICENSE");
	manifest_free(m);

	/* v0.2 layers carry the ModelPack path, which wins. */
	m = parse_ok(OCI_HDR
		"'config':{'mediaType':'application/vnd.docker.ai.model.config.v0.2+json','digest':'@0','size':9},"
		"'layers':[{'mediaType':'application/vnd.docker.ai.safetensors','digest':'@1','size':1,"
		"'annotations':{'org.cncf.model.filepath':'text_encoder/model.safetensors'}},"
		"{'mediaType':'application/vnd.docker.ai.model.file','digest':'@2','size':1,"
		"'annotations':{'org.cncf.model.filepath':'text_encoder/config.json'}}]}");
	assert_string_equal(m->layers[0].file, "text_encoder/model.safetensors");
	assert_string_equal(m->layers[1].file, "text_encoder/config.json");
	manifest_free(m);
}

static void test_media_type_parameters_are_not_names(void **state)
{
	struct manifest *m = parse_ok(HDR CFG ",'layers':["
		"{'mediaType':'application/vnd.ollama.image.template; name=chat','digest':'@1','size':1}]}");

	assert_string_equal(m->layers[0].file, "template");
	manifest_free(m);
}

static void assert_files_fit_and_differ(const struct manifest *m)
{
	for (size_t i = 0; i < m->nlayers; i++) {
		if (strlen(m->layers[i].file) > 255)
			fail_msg("layer %zu: file name of %zu bytes", i, strlen(m->layers[i].file));
		for (size_t j = 0; j < i; j++)
			if (strcmp(m->layers[i].file, m->layers[j].file) == 0)
				fail_msg("layers %zu and %zu have the same file", j, i);
	}
}

static void test_long_repeated_names_fit(void **state)
{
	/*
	 * Found by fuzzing: ".1" was appended to a 255-byte name, past NAME_MAX.
	 * A name too long for the number is cut first (to 249 bytes, room for
	 * any ".k" a manifest can need), at a UTF-8 character boundary.
	 */
	char x[256], y1[256], y2[256], e[256], mt[256], want[300], tmpl[8192];
	struct manifest *m;

	memset(x, 'x', 255);
	x[255] = '\0';
	memset(y1, 'y', 254);
	strcpy(y1 + 254, "1");
	memset(y2, 'y', 254);
	strcpy(y2 + 254, "2");
	for (int i = 0; i < 127; i++)
		memcpy(e + 2 * i, "\xc3\xa9", 2);  /* é: byte 249 is inside one */
	strcpy(e + 254, "a");
	snprintf(tmpl, sizeof(tmpl), HDR CFG ",'layers':["
		 OLX("model", "1", "1", "'name':'%s'") "," OLX("model", "2", "1", "'name':'%s'") ","
		 OLX("model", "3", "1", "'name':'%s'") "," OLX("model", "4", "1", "'name':'%s'") ","
		 OLX("model", "5", "1", "'name':'%s'") "," OLX("model", "6", "1", "'name':'%s'") ","
		 OLX("model", "7", "1", "'name':'%s'") "," OLX("model", "8", "1", "'name':'%s'") ","
		 OLX("model", "9", "1", "'name':'%s'") "]}",
		 x, x, x, y1, y1, y2, y2, e, e);
	m = parse_ok(tmpl);
	assert_files_fit_and_differ(m);
	assert_string_equal(m->layers[0].file, x);
	snprintf(want, sizeof(want), "%.249s.1", x);
	assert_string_equal(m->layers[1].file, want);
	snprintf(want, sizeof(want), "%.249s.2", x);
	assert_string_equal(m->layers[2].file, want);
	/* Two names that differ only past the cut share its numbers. */
	assert_string_equal(m->layers[3].file, y1);
	snprintf(want, sizeof(want), "%.249s.1", y1);
	assert_string_equal(m->layers[4].file, want);
	assert_string_equal(m->layers[5].file, y2);
	snprintf(want, sizeof(want), "%.249s.2", y2);
	assert_string_equal(m->layers[6].file, want);
	/* Cut before the é that byte 249 belongs to, not inside it. */
	assert_string_equal(m->layers[7].file, e);
	snprintf(want, sizeof(want), "%.248s.1", e);
	assert_string_equal(m->layers[8].file, want);
	manifest_free(m);

	/* The same for a file name made from a long media type. */
	memset(mt, 'm', 255);
	mt[255] = '\0';
	snprintf(tmpl, sizeof(tmpl), HDR CFG ",'layers':["
		 "{'mediaType':'%s','digest':'@1','size':1},{'mediaType':'%s','digest':'@2','size':1}]}",
		 mt, mt);
	m = parse_ok(tmpl);
	assert_files_fit_and_differ(m);
	assert_string_equal(m->layers[0].file, mt);
	snprintf(want, sizeof(want), "%.249s.1", mt);
	assert_string_equal(m->layers[1].file, want);
	manifest_free(m);
}

static void test_refuses_nul(void **state)
{
	char buf[1024], err[256] = "";
	char *json = expand(ONE(OL("model", "1", "1")));
	struct manifest *m;
	size_t len = strlen(json);

	parse_bad(ONE(OLX("model", "1", "1", "'name':'a\\u0000/../../etc'")), "NUL");
	parse_bad(ONE(OLX("model", "1", "1", "'name':'\\u0000'")), "NUL");

	/* A raw NUL byte inside the text. */
	assert_true(len + 1 < sizeof(buf));
	memcpy(buf, json, len);
	buf[len - 1] = '\0';
	buf[len] = '}';
	assert_int_equal(manifest_parse(buf, len + 1, &m, err, sizeof(err)), -EINVAL);
	assert_null(m);
	assert_contains(err, "NUL");
	free(json);
}

static void test_refuses_same_digest_different_sizes(void **state)
{
	parse_bad(HDR CFG ",'layers':[" OL("model", "1", "10") "," OL("params", "1", "11") "]}",
		  "different sizes");
	/* The config's blob listed as a layer with another size. */
	parse_bad(HDR CFG ",'layers':[" OL("model", "0", "486") "]}", "different sizes");
}

static void test_refuses_exact_duplicate_layer(void **state)
{
	parse_bad(HDR CFG ",'layers':[" OL("model", "1", "10") "," OL("params", "2", "1") ","
		  OL("model", "1", "10") "]}", "repeats");
	parse_bad(HDR CFG ",'layers':[" OLX("model", "1", "10", "'name':'w'") ","
		  OLX("model", "1", "10", "'name':'w'") "]}", "repeats");
}

static void test_size_limit_of_input(void **state)
{
	char *json = expand(ollama_manifest);
	size_t len = strlen(json);
	char *big = malloc(MANIFEST_MAX_BYTES + 2), err[256] = "";
	struct manifest *m = NULL;

	assert_non_null(big);
	/* Exactly the limit (valid JSON padded with whitespace) is fine. */
	memcpy(big, json, len);
	memset(big + len, ' ', MANIFEST_MAX_BYTES + 2 - len);
	assert_int_equal(manifest_parse(big, MANIFEST_MAX_BYTES, &m, err, sizeof(err)), 0);
	assert_int_equal(m->nlayers, 5);
	manifest_free(m);
	/* One byte more is refused before parsing. */
	assert_int_equal(manifest_parse(big, MANIFEST_MAX_BYTES + 1, &m, err, sizeof(err)),
			 -EMSGSIZE);
	assert_null(m);
	assert_contains(err, "limit");
	free(big);
	free(json);
}

/* ---- performance guard ---- */

static double elapsed_s(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

/* The time limit: 2 s, or 100 s under valgrind (which runs code ~50x slower). */
static double time_limit_s(void)
{
	const char *pre = getenv("LD_PRELOAD");

	return pre && strstr(pre, "vgpreload") ? 100.0 : 2.0;
}

/*
 * As many layers of one media type as fit into MANIFEST_MAX_BYTES (with the
 * shortest possible descriptors that is about 38000; 60000 layers cannot fit
 * into 4 MiB). named_every > 0 gives every named_every-th layer an explicit
 * name "m.<i>" that collides with a generated one.
 */
static char *many_layers(size_t *nout, size_t *lenout, unsigned named_every)
{
	size_t cap = MANIFEST_MAX_BYTES, len = 0, n = 0;
	char *buf = malloc(cap + 1);
	const char *head = "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x/c\",\"digest\":"
			   "\"sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\","
			   "\"size\":1},\"layers\":[";

	assert_non_null(buf);
	len = (size_t)snprintf(buf, cap, "%s", head);
	for (;;) {
		char l[256];
		int k;
		if (named_every && n % named_every == 1)
			k = snprintf(l, sizeof(l), "%s{\"mediaType\":\"x/m\",\"digest\":\"sha256:%064zx\","
				     "\"size\":0,\"name\":\"m.%zu\"}", n ? "," : "", n, n + 1);
		else
			k = snprintf(l, sizeof(l), "%s{\"mediaType\":\"x/m\",\"digest\":\"sha256:%064zx\","
				     "\"size\":0}", n ? "," : "", n);
		if (len + (size_t)k + 2 > cap)
			break;
		memcpy(buf + len, l, (size_t)k);
		len += (size_t)k;
		n++;
	}
	memcpy(buf + len, "]}", 2);
	len += 2;
	buf[len] = '\0';
	*nout = n;
	*lenout = len;
	return buf;
}

static void test_many_layers_one_media_type_is_fast(void **state)
{
	size_t n, len;
	char *json = many_layers(&n, &len, 0), err[256] = "", want[64];
	struct manifest *m = NULL;
	struct timespec t0, t1;
	int ret;

	assert_true(n > 30000);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = manifest_parse(json, len, &m, err, sizeof(err));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	free(json);
	assert_int_equal(ret, 0);
	if (elapsed_s(&t0, &t1) >= time_limit_s()) {
		manifest_free(m);
		fail_msg("%zu layers took %.2f s", n, elapsed_s(&t0, &t1));
	}
	assert_int_equal(m->nlayers, n);
	assert_string_equal(m->layers[0].file, "m");
	for (size_t i = 1; i < n; i++) {
		snprintf(want, sizeof(want), "m.%zu", i);
		assert_string_equal(m->layers[i].file, want);
	}
	manifest_free(m);
}

static void test_many_colliding_names_is_fast(void **state)
{
	size_t n, len;
	char *json = many_layers(&n, &len, 2), err[256] = "";
	struct manifest *m = NULL;
	struct timespec t0, t1;
	size_t nl;
	int ret;

	assert_true(n > 25000);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = manifest_parse(json, len, &m, err, sizeof(err));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	free(json);
	assert_int_equal(ret, 0);
	nl = m->nlayers;
	manifest_free(m);
	if (elapsed_s(&t0, &t1) >= time_limit_s())
		fail_msg("%zu layers took %.2f s", n, elapsed_s(&t0, &t1));
	assert_int_equal(nl, n);
}

/*
 * n distinct names on which FNV-1a, as strmap.c used it, agrees in the low 16
 * bits (which depend only on the low 16 bits of its state): all of them in
 * one probe chain of a table of up to 65536 slots. Each is a numbered prefix
 * and three characters solved for (see tests/fuzz/gen-manifest-flood.py).
 */
#define FNV_OFFSET 1469598103934665603ULL
#define FNV_PRIME 1099511628211ULL

static uint16_t fnv_step16(uint16_t h, unsigned char c)
{
	return (uint16_t)((h ^ c) * (uint16_t)FNV_PRIME);
}

static char (*fnv_colliding_names(size_t n))[16]
{
	static const char alpha[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	char (*names)[16] = calloc(n, sizeof(*names));
	uint16_t inv = (uint16_t)FNV_PRIME, target = 0x5eed, pre;
	size_t got = 0;

	assert_non_null(names);
	for (int i = 0; i < 4; i++)          /* Newton: the prime's inverse mod 2^16 */
		inv = (uint16_t)(inv * (uint16_t)(2 - (uint16_t)FNV_PRIME * inv));
	pre = (uint16_t)(target * inv);      /* the state that one more byte must xor to */
	for (unsigned k = 0; got < n; k++) {
		char p[8];
		uint16_t h = (uint16_t)FNV_OFFSET;
		int len = snprintf(p, sizeof(p), "f%06u", k);
		for (int i = 0; i < len; i++)
			h = fnv_step16(h, (unsigned char)p[i]);
		for (const char *x = alpha; *x && got < n; x++) {
			for (const char *y = alpha; *y; y++) {
				uint16_t s = fnv_step16(fnv_step16(h, (unsigned char)*x), (unsigned char)*y);
				uint16_t z = s ^ pre;
				if (z < 128 && z && strchr(alpha, z)) {
					snprintf(names[got++], 16, "%s%c%c%c", p, *x, *y, (char)z);
					break;
				}
			}
		}
	}
	/* The full 64-bit hash really agrees in the low bits. */
	for (size_t i = 0; i < n; i += n / 7 + 1) {
		uint64_t h = FNV_OFFSET;
		for (const char *c = names[i]; *c; c++)
			h = (h ^ (unsigned char)*c) * FNV_PRIME;
		assert_int_equal(h & 0xffff, target);
	}
	return names;
}

static void test_hash_flood_is_fast(void **state)
{
	/*
	 * Found by fuzzing: with an unkeyed hash these 30000 layer names all
	 * collided in assign_files()'s maps, and parsing took seconds.
	 */
	const size_t n = 30000;
	char (*names)[16] = fnv_colliding_names(n), err[256] = "";
	size_t cap = 256 + n * 160, len;
	char *json = malloc(cap);
	struct manifest *m = NULL;
	struct timespec t0, t1;
	int ret;

	assert_non_null(json);
	len = (size_t)snprintf(json, cap, "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"c\","
			       "\"digest\":\"sha256:%064d\",\"size\":1},\"layers\":[", 0);
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(json + len, cap - len,
					"%s{\"mediaType\":\"m\",\"digest\":\"sha256:%064d\",\"size\":1,"
					"\"name\":\"%s\"}", i ? "," : "", 1, names[i]);
	len += (size_t)snprintf(json + len, cap - len, "]}");
	assert_true(len < MANIFEST_MAX_BYTES);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ret = manifest_parse(json, len, &m, err, sizeof(err));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	free(json);
	if (ret != 0)
		fail_msg("manifest_parse = %d: %s", ret, err);
	assert_int_equal(m->nlayers, n);
	assert_string_equal(m->layers[n - 1].file, names[n - 1]);
	manifest_free(m);
	free(names);
	if (elapsed_s(&t0, &t1) >= time_limit_s())
		fail_msg("%zu colliding names took %.2f s", n, elapsed_s(&t0, &t1));
}

/* ---- digest scan ---- */

struct found {
	struct digest d[16];
	unsigned n;
};

static void found_cb(const struct digest *d, void *arg)
{
	struct found *f = arg;

	if (f->n < 16)
		f->d[f->n] = *d;
	f->n++;
}

static void test_scan_digests_in_junk(void **state)
{
	char *text = expand(
		"}}garbage{ not json @a, 'digest':'@b' trailing"
		" sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccX"  /* 63 + junk */
		" sha256:DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD"  /* uppercase */
		" sha512:@e sha256:sha256:@f sha256 :@z"
		" end @9");
	struct found f = { .n = 0 };
	/* "sha256 :@z" is "sha256 :sha256:zzz..." which is not hex. */
	const struct digest want[] = { dig('a'), dig('b'), dig('e'), dig('f'), dig('9') };

	manifest_scan_digests(text, strlen(text), found_cb, &f);
	assert_int_equal(f.n, 5);
	for (unsigned i = 0; i < 5; i++)
		assert_true(digest_equal(&f.d[i], &want[i]));
	free(text);
}

static void test_scan_digests_truncated_and_empty(void **state)
{
	char *text = expand("x @1");
	struct found f = { .n = 0 };

	/* The digest is cut short by len: nothing found, nothing read past len. */
	manifest_scan_digests(text, strlen(text) - 1, found_cb, &f);
	assert_int_equal(f.n, 0);
	manifest_scan_digests(text, strlen(text), found_cb, &f);
	assert_int_equal(f.n, 1);
	manifest_scan_digests("", 0, found_cb, &f);
	manifest_scan_digests("sha256:", 7, found_cb, &f);
	assert_int_equal(f.n, 1);
	free(text);
}

static void test_scan_digests_sees_json_escapes(void **state)
{
	/*
	 * Found by fuzzing: the parser reads "sha256\u003a<hex>" as a digest, so
	 * the scan must too, or removing another tag would free a blob that a
	 * manifest the parser refuses (here: schemaVersion 3) still names.
	 */
	char *text = expand("{'schemaVersion':3,'config':{'digest':'sha256\\u003a"
			    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'},"
			    "'layers':[{'digest':'\\u0073ha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
			    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\\u0062\\u0062'},{'digest':'@c'}],"
			    "'sha256\\u003adddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd':1}");
	struct found f = { .n = 0 };
	const struct digest want[] = { dig('c'), dig('a'), dig('b'), dig('c'), dig('d') };
	struct digest want_e;
	char *bad;

	manifest_scan_digests(text, strlen(text), found_cb, &f);
	/* The text as it is first ('c'), then every string as cJSON reads it. */
	assert_int_equal(f.n, 5);
	for (unsigned i = 0; i < 5; i++)
		if (!digest_equal(&f.d[i], &want[i]))
			fail_msg("digest %u is not '%c'", i, "cabcd"[i]);

	/* Not JSON: the parser sees nothing, so only what is spelled out counts. */
	bad = expand("{'digest':'sha256\\u003a"
		     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' @e");
	f.n = 0;
	manifest_scan_digests(bad, strlen(bad), found_cb, &f);
	assert_int_equal(f.n, 1);
	want_e = dig('e');
	assert_true(digest_equal(&f.d[0], &want_e));
	free(bad);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ollama_manifest),
		cmocka_unit_test(test_oci_manifest_without_media_type),
		cmocka_unit_test(test_oci_manifest_with_media_type),
		cmocka_unit_test(test_layer_name_becomes_file),
		cmocka_unit_test(test_oci_title_annotation_becomes_file),
		cmocka_unit_test(test_repeated_media_types_get_suffixes),
		cmocka_unit_test(test_file_names_never_collide),
		cmocka_unit_test(test_reserved_names_renamed),
		cmocka_unit_test(test_media_type_file_edge_cases),
		cmocka_unit_test(test_size_limits),
		cmocka_unit_test(test_total_size_counts_distinct_blobs_once),
		cmocka_unit_test(test_same_blob_different_names_allowed),
		cmocka_unit_test(test_for_each_blob_skips_repeats),
		cmocka_unit_test(test_references),
		cmocka_unit_test(test_refuses_non_json),
		cmocka_unit_test(test_refuses_schema_version),
		cmocka_unit_test(test_refuses_missing_config_or_layers),
		cmocka_unit_test(test_refuses_bad_descriptor_fields),
		cmocka_unit_test(test_refuses_bad_sizes),
		cmocka_unit_test(test_refuses_lists_and_indexes),
		cmocka_unit_test(test_refuses_unsafe_layer_names),
		cmocka_unit_test(test_refuses_format_characters),
		cmocka_unit_test(test_refuses_overlong_name),
		cmocka_unit_test(test_unsafe_path_reasons),
		cmocka_unit_test(test_refuses_long_and_deep_paths),
		cmocka_unit_test(test_tensor_model_paths_become_files),
		cmocka_unit_test(test_refuses_file_that_is_a_directory),
		cmocka_unit_test(test_paths_share_directories_and_defaults_step_aside),
		cmocka_unit_test(test_long_repeated_path_fits),
		cmocka_unit_test(test_modelpack_file_paths),
		cmocka_unit_test(test_oras_titles),
		cmocka_unit_test(test_docker_model_runner_names),
		cmocka_unit_test(test_media_type_parameters_are_not_names),
		cmocka_unit_test(test_long_repeated_names_fit),
		cmocka_unit_test(test_refuses_nul),
		cmocka_unit_test(test_refuses_same_digest_different_sizes),
		cmocka_unit_test(test_refuses_exact_duplicate_layer),
		cmocka_unit_test(test_size_limit_of_input),
		cmocka_unit_test(test_many_layers_one_media_type_is_fast),
		cmocka_unit_test(test_many_colliding_names_is_fast),
		cmocka_unit_test(test_hash_flood_is_fast),
		cmocka_unit_test(test_scan_digests_in_junk),
		cmocka_unit_test(test_scan_digests_truncated_and_empty),
		cmocka_unit_test(test_scan_digests_sees_json_escapes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
