/* name.h - model names: [scheme://][host/][namespace/]name[:tag]. */
#ifndef BLOBFS_NAME_H
#define BLOBFS_NAME_H

#include <stdbool.h>
#include <stddef.h>

#define NAME_HOST_MAX 350
#define NAME_PART_MAX 80
#define NAME_DEFAULT_HOST "registry.ollama.ai"
#define NAME_DEFAULT_NAMESPACE "library"
#define NAME_DEFAULT_TAG "latest"
/* Longest formatted name: scheme://host/ns/model:tag */
#define NAME_FORMAT_MAX (8 + 3 + NAME_HOST_MAX + 3 * (NAME_PART_MAX + 1) + 1)

struct model_name {
	char scheme[8];                   /* "", "http" or "https" */
	char host[NAME_HOST_MAX + 1];
	char ns[NAME_PART_MAX + 1];
	char model[NAME_PART_MAX + 1];
	char tag[NAME_PART_MAX + 1];
};

enum name_part { NAME_HOST, NAME_NAMESPACE, NAME_MODEL, NAME_TAG };

/*
 * Parse a model name and fill in the defaults. On failure returns -EINVAL and
 * writes a message saying which part is wrong into err.
 */
int name_parse(const char *s, struct model_name *n, char *err, size_t errlen);
/* Is s a valid value for one part? Used for directory names found on disk. */
bool name_part_valid(enum name_part part, const char *s);
/* The same, with what is wrong in err. */
bool name_part_check(enum name_part part, const char *s, char *err, size_t errlen);
/* "host/ns/model:tag" */
void name_format(const struct model_name *n, char *buf, size_t len);
/* The shortest form that parses back to the same name, as Ollama shows it. */
void name_format_short(const struct model_name *n, char *buf, size_t len);
/* Case-insensitive equality of host, namespace, model and tag. */
bool name_equal(const struct model_name *a, const struct model_name *b);

#endif
