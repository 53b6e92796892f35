/*
 * layer_name.c - the file name each artifact convention gives a layer.
 *
 * A layer's name is hostile input that becomes a path in the mount, so it is
 * checked here whole: a relative path of safe components. Which name a layer
 * gets follows the tools that made it, so that a tag directory looks like
 * what they would unpack (blobfs(1), ARTIFACT CONVENTIONS):
 *
 *   "name" field                      Ollama (tensor-format models: paths)
 *   org.opencontainers.image.title    ORAS; "+.tar.gz" when ORAS would unpack it
 *   org.cncf.model.filepath           CNCF ModelPack, Docker Model Runner v0.2
 *   org.cnai.model.filepath           ModelPack's earlier name for the same
 *   application/vnd.docker.ai.*       Docker Model Runner's own file names (its
 *                                     configs before v0.2 unpack by media type,
 *                                     whatever the annotations say)
 *   anything else                     the last part of the media type
 *
 * A ModelPack archive layer (.tar, .tar+gzip, .tar+zstd) keeps an archive
 * suffix, since its tools unpack it and the blob itself is not the file.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer_name.h"
#include "util.h"

#define OCI_TITLE "org.opencontainers.image.title"
#define ORAS_UNPACK "io.deis.oras.content.unpack"
#define MODELPACK_PATH "org.cncf.model.filepath"
#define MODELPACK_PATH_OLD "org.cnai.model.filepath"

/*
 * The code point of the UTF-8 character at s (n bytes left) and its length,
 * or 0 if it is not well-formed (overlong, a surrogate, over U+10FFFF, cut).
 */
static size_t utf8_char(const unsigned char *s, size_t n, unsigned *cp)
{
	static const unsigned min[] = { 0, 0, 0x80, 0x800, 0x10000 };
	size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 :
		     s[0] >= 0xe0 && s[0] < 0xf0 ? 3 : s[0] >= 0xf0 && s[0] < 0xf5 ? 4 : 0;

	if (len == 0 || len > n)
		return 0;
	*cp = len == 1 ? s[0] : s[0] & (0x7f >> len);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		*cp = *cp << 6 | (s[i] & 0x3f);
	}
	if (*cp < min[len] || *cp > 0x10ffff || (*cp >= 0xd800 && *cp < 0xe000))
		return 0;
	return len;
}

/*
 * Unicode 15's format characters (general category Cf), first and last of
 * each run: they are invisible, and the bidi ones (U+202A-U+202E,
 * U+2066-U+2069, U+200E, U+200F, U+061C) reorder what follows, so a name
 * holding one displays as another name ("Trojan source").
 */
static const unsigned format_chars[][2] = {
	{ 0x00ad, 0x00ad }, { 0x0600, 0x0605 }, { 0x061c, 0x061c }, { 0x06dd, 0x06dd },
	{ 0x070f, 0x070f }, { 0x0890, 0x0891 }, { 0x08e2, 0x08e2 }, { 0x180e, 0x180e },
	{ 0x200b, 0x200f }, { 0x202a, 0x202e }, { 0x2060, 0x2064 }, { 0x2066, 0x206f },
	{ 0xfeff, 0xfeff }, { 0xfff9, 0xfffb }, { 0x110bd, 0x110bd }, { 0x110cd, 0x110cd },
	{ 0x13430, 0x1343f }, { 0x1bca0, 0x1bca3 }, { 0x1d173, 0x1d17a },
	{ 0xe0001, 0xe0001 }, { 0xe0020, 0xe007f },
};

static bool is_format_char(unsigned cp)
{
	for (size_t i = 0; i < sizeof(format_chars) / sizeof(format_chars[0]); i++)
		if (cp >= format_chars[i][0] && cp <= format_chars[i][1])
			return true;
	return false;
}

/*
 * Every character is well-formed UTF-8 (JSON's encoding) and none is a control
 * character, C0, DEL or C1, or a format character: a name reaches terminals
 * through ls and logs, U+009B is a terminal's CSI as much as ESC [ is, and a
 * name must look like what it is.
 */
static int check_chars(const char *path, size_t n, char *why, size_t whylen)
{
	unsigned cp = 0;

	for (size_t i = 0, len; i < n; i += len) {
		len = utf8_char((const unsigned char *)path + i, n - i, &cp);
		if (len == 0)
			return snprintf(why, whylen, "it is not valid UTF-8 at byte %zu", i),
			       -EINVAL;
		if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0))
			return snprintf(why, whylen, "it contains the control character 0x%02x "
					"at byte %zu", cp, i), -EINVAL;
		if (is_format_char(cp))
			return snprintf(why, whylen, "it contains the format character U+%04X "
					"at byte %zu", cp, i), -EINVAL;
	}
	return 0;
}

int layer_path_check(const char *path, char *why, size_t whylen)
{
	size_t n = strlen(path);
	const char *c = path;

	if (n == 0)
		return snprintf(why, whylen, "it is empty"), -EINVAL;
	if (path[0] == '/')
		return snprintf(why, whylen, "it is an absolute path"), -EINVAL;
	if (n > LAYER_PATH_MAX)
		return snprintf(why, whylen, "it is %zu bytes long, over the limit of %d",
				n, LAYER_PATH_MAX), -EINVAL;
	if (check_chars(path, n, why, whylen) < 0)
		return -EINVAL;
	for (unsigned depth = 0;; depth++) {
		size_t len = strcspn(c, "/");
		if (len == 0)
			return snprintf(why, whylen, "it has an empty component"), -EINVAL;
		if (len == 1 && c[0] == '.')
			return snprintf(why, whylen, "it has a '.' component"), -EINVAL;
		if (len == 2 && c[0] == '.' && c[1] == '.')
			return snprintf(why, whylen, "it has a '..' component"), -EINVAL;
		if (len > NAME_MAX)
			return snprintf(why, whylen, "a component is %zu bytes long, over "
					"NAME_MAX (%d)", len, NAME_MAX), -EINVAL;
		if (!c[len])
			return 0;
		if (depth == LAYER_DEPTH_MAX)
			return snprintf(why, whylen, "it is nested more than %d directories deep",
					LAYER_DEPTH_MAX), -EINVAL;
		c += len + 1;
	}
}

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The media type without parameters (";..."), in buf. */
static const char *bare_type(const char *mt, char *buf, size_t len)
{
	size_t n = strcspn(mt, ";");

	while (n > 0 && (mt[n - 1] == ' ' || mt[n - 1] == '\t'))
		n--;
	snprintf(buf, len, "%.*s", (int)MIN(n, len - 1), mt);
	return buf;
}

/* The suffix a ModelPack archive layer keeps, or "". */
static const char *archive_suffix(const char *mt)
{
	char b[256];

	mt = bare_type(mt, b, sizeof(b));
	if (!has_prefix(mt, "application/vnd.cncf.model.") &&
	    !has_prefix(mt, "application/vnd.cnai.model."))
		return "";
	if (strstr(mt, ".tar+gzip"))
		return ".tar.gz";
	if (strstr(mt, ".tar+zstd"))
		return ".tar.zst";
	if (strlen(mt) > 4 && strcmp(mt + strlen(mt) - 4, ".tar") == 0)
		return ".tar";
	return "";
}

/* The string of key in obj, or NULL; -EINVAL if it is there but not a string. */
static int string_item(const cJSON *obj, const char *key, const char **out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);

	*out = NULL;
	if (!it)
		return 0;
	if (!cJSON_IsString(it))
		return -EINVAL;
	*out = it->valuestring;
	return 0;
}

bool layer_dmr_bundle(const char *config_media_type)
{
	char b[256];
	const char *mt = bare_type(config_media_type, b, sizeof(b));

	return has_prefix(mt, "application/vnd.docker.ai.model.config.") &&
	       strcmp(mt, "application/vnd.docker.ai.model.config.v0.2+json") != 0;
}

int layer_name_of(const cJSON *desc, const char *media_type, bool dmr_bundle,
		  const char *what, char **name, char *err, size_t errlen)
{
	static const char *const keys[] = { OCI_TITLE, MODELPACK_PATH, MODELPACK_PATH_OLD };
	const cJSON *ann = cJSON_GetObjectItemCaseSensitive(desc, "annotations");
	const char *s = NULL, *from = "name", *suffix = "", *unpack = NULL;
	char why[128], shown[120];

	*name = NULL;
	if (dmr_bundle && layer_kind_of(media_type) != KIND_OTHER)
		return 0;    /* its file path annotation is only the packaged file's name */
	if (string_item(desc, "name", &s) < 0)
		return snprintf(err, errlen, "%s has a name that is not a string", what), -EINVAL;
	for (size_t i = 0; !s && cJSON_IsObject(ann) && i < sizeof(keys) / sizeof(keys[0]); i++) {
		from = keys[i];
		if (string_item(ann, keys[i], &s) < 0)
			return snprintf(err, errlen, "%s has a name that is not a string (%s)",
					what, from), -EINVAL;
	}
	if (!s)
		return 0;
	if (strcmp(from, OCI_TITLE) == 0) {
		if (string_item(ann, ORAS_UNPACK, &unpack) == 0 && unpack &&
		    strcmp(unpack, "true") == 0)
			suffix = ".tar.gz";
	} else if (strcmp(from, "name") != 0) {
		suffix = archive_suffix(media_type);
	}
	char *full = xasprintf("%s%s", s, suffix);
	if (layer_path_check(full, why, sizeof(why)) < 0) {
		snprintf(shown, sizeof(shown), "%.100s", full);
		free(full);
		return snprintf(err, errlen, "%s has an unsafe name '%s' (%s): %s", what, shown,
				from, why), -EINVAL;
	}
	*name = full;
	return 0;
}

enum layer_kind layer_kind_of(const char *media_type)
{
	static const struct { const char *mt; enum layer_kind kind; } kinds[] = {
		{ "application/vnd.docker.ai.gguf.v3", KIND_DMR_GGUF },
		{ "application/vnd.docker.ai.safetensors", KIND_DMR_SAFETENSORS },
		{ "application/vnd.docker.ai.mmproj", KIND_DMR_MMPROJ },
		{ "application/vnd.docker.ai.chat.template.jinja", KIND_DMR_TEMPLATE },
		{ "application/vnd.docker.ai.dduf", KIND_DMR_DDUF },
	};
	char b[256];
	const char *mt = bare_type(media_type, b, sizeof(b));

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (strcmp(mt, kinds[i].mt) == 0)
			return kinds[i].kind;
	return KIND_OTHER;
}

/* The last dot- or slash-separated part of a media type, made file-name safe. */
static char *media_type_file(const char *media_type)
{
	char b[256];
	const char *mt = bare_type(media_type, b, sizeof(b));
	const char *p = mt + strlen(mt);
	char *s;

	while (p > mt && p[-1] != '.' && p[-1] != '/')
		p--;
	if (!*p)
		return xstrdup("layer");
	s = xstrdup(p);
	for (char *q = s; *q; q++) {
		char c = *q;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '+'))
			*q = '_';
	}
	return s;
}

/* "model.gguf", or "model-00002-of-00003.gguf" for the 2nd of 3 shards. */
static char *sharded(const char *ext, size_t nth, size_t count)
{
	if (count <= 1)
		return xasprintf("model.%s", ext);
	return xasprintf("model-%05zu-of-%05zu.%s", nth, count, ext);
}

char *layer_default_file(const char *media_type, size_t nth, size_t count)
{
	switch (layer_kind_of(media_type)) {
	case KIND_DMR_GGUF:
		return sharded("gguf", nth, count);
	case KIND_DMR_SAFETENSORS:
		return sharded("safetensors", nth, count);
	case KIND_DMR_MMPROJ:
		return xstrdup("model.mmproj");
	case KIND_DMR_TEMPLATE:
		return xstrdup("template.jinja");
	case KIND_DMR_DDUF:
		return xstrdup("model.dduf");
	default:
		return media_type_file(media_type);
	}
}
