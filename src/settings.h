/*
 * settings.h - the settings of blobfs, generated from settings.def.
 *
 * A struct conf is one layer of settings (the defaults, a file or one of its
 * [host] sections, the environment, the command line). A member counts only
 * when its CF_* bit is in set, so a later layer overrides what it sets and
 * nothing else. The table settings[] describes every member (its key, type,
 * range, default, options) so that defaults, merging, checking, options and
 * help are each written once, for all settings, in settings.c.
 */
#ifndef BLOBFS_SETTINGS_H
#define BLOBFS_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum setting_type {
	T_PATH,        /* a file name, not empty */
	T_COUNT,       /* a number in [lo, hi] */
	T_SECONDS,     /* seconds in [lo, hi] */
	T_SIZE,        /* a size (512K, 1.5G) in [lo, hi] */
	T_POW2,        /* a size that is a power of two, in [lo, hi] */
	T_BOOL,        /* yes/no, true/false, on/off, 1/0 */
	T_SCHEME,      /* http or https */
	T_URLS,        /* an http(s) URL per line; a section's lines are the list */
};

enum setting_scope { SCOPE_ANY, SCOPE_GLOBAL, SCOPE_HOST };

/* Where a setting is an option too. */
enum { OPT_CLI = 1, OPT_MOUNT = 2 };

/* The commands, as bits: which accept an option. */
enum command_bit {
	CMD_PULL = 1 << 0, CMD_LS = 1 << 1, CMD_RM = 1 << 2, CMD_GC = 1 << 3,
	CMD_VERIFY = 1 << 4, CMD_STATUS = 1 << 5, CMD_MOUNT = 1 << 6, CMD_UMOUNT = 1 << 7,
	CMDS_ALL = (1 << 8) - 1,
	CMDS_FETCH = CMD_PULL | CMD_MOUNT,     /* the commands that use the network */
};

enum setting_id {
#define SETTING(id, ...) SI_##id,
#include "settings.def"
#undef SETTING
	SETTING_COUNT
};

enum conf_field {
#define SETTING(id, ...) CF_##id = 1u << SI_##id,
#include "settings.def"
#undef SETTING
};

/* The defaults, for code that has a number before any configuration is read. */
enum setting_default {
#define SETTING(id, key, member, type, lo, hi, dflt, ...) DEFAULT_##id = (dflt),
#include "settings.def"
#undef SETTING
};

#define CONF_MEMBER_T_PATH(m) char *m;
#define CONF_MEMBER_T_COUNT(m) unsigned m;
#define CONF_MEMBER_T_SECONDS(m) unsigned m;
#define CONF_MEMBER_T_SIZE(m) uint64_t m;
#define CONF_MEMBER_T_POW2(m) uint64_t m;
#define CONF_MEMBER_T_BOOL(m) bool m;
#define CONF_MEMBER_T_SCHEME(m) char *m;
#define CONF_MEMBER_T_URLS(m) char **m; size_t n##m;   /* NULL-terminated, and its count */

/* One layer of settings: a member is set when its CF_* bit is in set. */
struct conf {
	unsigned set;
#define SETTING(id, key, member, type, ...) CONF_MEMBER_##type(member)
#include "settings.def"
#undef SETTING
};

struct setting {
	const char *key;          /* in the file: "max-cache" */
	enum conf_field bit;
	enum setting_type type;
	size_t offset;            /* of the member in struct conf */
	size_t count_offset;      /* T_URLS: of its count */
	uint64_t lo, hi, dflt;
	enum setting_scope scope;
	unsigned opts;            /* OPT_CLI, OPT_MOUNT */
	unsigned cmds;            /* enum command_bit */
	char short_opt;
	const char *metavar, *unset, *help;
};

extern const struct setting settings[SETTING_COUNT];

/* The setting named key ("max-cache"; '_' works for '-', any case), or NULL. */
const struct setting *setting_by_key(const char *key);
/*
 * The option of a setting in buf: "--connections", "--no-netrc"; with
 * mount true the mount option: "connections", "no_netrc".
 */
const char *setting_option(const struct setting *s, bool mount, char *buf, size_t len);
/* The default as the user writes it ("16", "16M", "yes"), or s->unset, or "". */
const char *setting_default_text(const struct setting *s, char *buf, size_t len);
/* The range as the user writes it ("1 to 256", "4K to 16G"), or "" when there is none. */
const char *setting_range_text(const struct setting *s, char *buf, size_t len);

/* Every setting at its default, all set. */
void conf_defaults(struct conf *c);
/* Copy what src sets into dst. */
void conf_merge(struct conf *dst, const struct conf *src);
void conf_release(struct conf *c);
/*
 * Set one setting from text, checked as the configuration file checks it;
 * label names it in the message ("--connections", "-o connections",
 * "'connections'"). A T_URLS value is added to the list, unless fresh: then
 * it starts a new list. 0, or -EINVAL with the reason in err.
 */
int setting_set(struct conf *c, const struct setting *s, const char *value, bool fresh,
		const char *label, char *err, size_t errlen);
/* Set a string setting (T_PATH or T_SCHEME) without checks; NULL unsets its value. */
void conf_set_str(struct conf *c, enum conf_field field, const char *v);

#endif
