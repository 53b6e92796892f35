/* conffile.h - the configuration file: global settings and per-host settings. */
#ifndef BLOBFS_CONFFILE_H
#define BLOBFS_CONFFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "settings.h"

struct conf_host {
	char *host;                /* "host[:port]", as in model names */
	struct conf c;
};

struct config {
	struct conf global;
	struct conf_host *hosts;
	size_t nhosts;
};

/*
 * Parse a configuration file into cfg (added on top of what is there). A
 * missing file is not an error. On a bad file returns -EINVAL with
 * "FILE:LINE: reason" in err.
 */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);
/* Parse configuration text (name is used in messages). */
int config_load_text(struct config *cfg, const char *name, const char *text, size_t len,
		     char *err, size_t errlen);
/*
 * The standard files in order: /etc/blobfs/config, then
 * $XDG_CONFIG_HOME/blobfs/config (or ~/.config/blobfs/config); or only
 * $BLOBFS_CONFIG when that is set.
 */
int config_load_default(struct config *cfg, char *err, size_t errlen);
void config_release(struct config *cfg);

/* The settings for a registry host: global ones overridden by its section. */
void config_for_host(const struct config *cfg, const char *host, struct conf *out);
/*
 * Set one setting by its name in the file ("connections", "max-cache"; '_'
 * works for '-'), checked as the file is; label names it in the message
 * ("--connections", "-o connections"). 0, or -EINVAL with a reason in err.
 */
int conf_set(struct conf *c, const char *key, const char *value, const char *label,
	     char *err, size_t errlen);

#endif
