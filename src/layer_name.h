/* layer_name.h - the file name each artifact convention gives a layer. */
#ifndef BLOBFS_LAYER_NAME_H
#define BLOBFS_LAYER_NAME_H

#include <stdbool.h>
#include <stddef.h>

struct cJSON;

/* A layer's path inside its tag directory is at most this long. */
#define LAYER_PATH_MAX 1024
/* ...and in at most this many directories (which bounds the work per name). */
#define LAYER_DEPTH_MAX 32

/* What the default name of a layer without one depends on. */
enum layer_kind {
	KIND_OTHER,
	KIND_DMR_GGUF,         /* Docker Model Runner: model.gguf, or shards */
	KIND_DMR_SAFETENSORS,  /* model.safetensors, or shards */
	KIND_DMR_MMPROJ,       /* model.mmproj */
	KIND_DMR_TEMPLATE,     /* template.jinja */
	KIND_DMR_DDUF,         /* model.dduf */
	KIND_COUNT
};

/*
 * The name a descriptor gives its layer, by the conventions in order: the
 * layer's own "name" (Ollama), the OCI title annotation (ORAS), the ModelPack
 * file path annotation (org.cncf.model.filepath, or the older
 * org.cnai.model.filepath); with dmr_bundle, a Docker Model Runner layer
 * has none of these but its bundle's name. An archive its tool would unpack keeps its
 * suffix (".tar", ".tar.gz", ".tar.zst"). *name is NULL when the descriptor
 * names nothing. Returns -EINVAL with the reason, naming `what`, for a name
 * that is not a string or not a safe relative path (layer_path_check).
 */
int layer_name_of(const struct cJSON *desc, const char *media_type, bool dmr_bundle,
		  const char *what, char **name, char *err, size_t errlen);

/*
 * Does a manifest with this config media type name its Docker Model Runner
 * layers as Docker Model Runner's bundle does (model.gguf, model.mmproj,
 * template.jinja), whatever their annotations say? True for its configs
 * before v0.2, which unpack by media type; v0.2 unpacks by file path.
 */
bool layer_dmr_bundle(const char *config_media_type);

/*
 * Is path a safe relative path: not empty, not absolute, no empty, "." or
 * ".." component, valid UTF-8 with no control character (C0, DEL, C1),
 * every component at most NAME_MAX
 * bytes, the whole at most LAYER_PATH_MAX, at most LAYER_DEPTH_MAX
 * directories deep? On failure returns -EINVAL and
 * says why in why.
 */
int layer_path_check(const char *path, char *why, size_t whylen);

enum layer_kind layer_kind_of(const char *media_type);

/*
 * The file name of a layer without a name: Docker Model Runner's names for its
 * media types (the nth of count layers of that kind, from 1), else the last
 * dot- or slash-separated part of the media type, made file-name safe.
 */
char *layer_default_file(const char *media_type, size_t nth, size_t count);

#endif
