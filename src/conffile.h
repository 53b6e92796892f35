/* conffile.h - the configuration file: global settings and per-host settings. */
#ifndef BLOBFS_CONFFILE_H
#define BLOBFS_CONFFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * One set of settings. A field is "set" when its flag bit is on, so layers
 * (system file, user file, environment, command line) can be merged: a later
 * layer overrides only what it sets.
 */
enum conf_field {
	CF_STORE = 1 << 0,
	CF_CONNECTIONS = 1 << 1,
	CF_CHUNK_SIZE = 1 << 2,
	CF_REQUEST_SIZE = 1 << 3,
	CF_STALL_TIMEOUT = 1 << 4,
	CF_READ_TIMEOUT = 1 << 5,
	CF_CONNECT_TIMEOUT = 1 << 6,
	CF_RETRIES = 1 << 7,
	CF_INSECURE = 1 << 8,
	CF_CACERT = 1 << 9,
	CF_CREDENTIALS = 1 << 10,
	CF_CHUNKSUMS = 1 << 11,
	CF_MAX_CACHE = 1 << 12,
	CF_MIRRORS = 1 << 13,
	CF_SCHEME = 1 << 14,
	CF_NETRC = 1 << 15,
};

struct conf {
	unsigned set;              /* which fields are set (enum conf_field) */
	char *store;
	unsigned connections;
	uint64_t chunk_size;
	uint64_t request_size;
	unsigned stall_timeout_s;
	unsigned read_timeout_s;
	unsigned connect_timeout_s;
	unsigned retries;
	bool insecure;
	char *cacert;
	char *credentials;
	bool chunksums;
	uint64_t max_cache;
	char **mirrors;            /* base URLs, tried in order before the host itself */
	size_t nmirrors;
	char *scheme;              /* "http" or "https" for a host; NULL: by the rules */
	bool netrc;                /* read ~/.netrc */
};

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
/* Set a string setting (CF_STORE, CF_CACERT, CF_CREDENTIALS or CF_SCHEME). */
void conf_set_str(struct conf *c, enum conf_field field, const char *v);
/* Every setting at its default, all set. */
void conf_defaults(struct conf *c);
/* Copy what src sets into dst. */
void conf_merge(struct conf *dst, const struct conf *src);
void conf_release(struct conf *c);

#endif
