/* auth.h - registry authentication: challenges, credentials, token responses. */
#ifndef BLOBFS_AUTH_H
#define BLOBFS_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum auth_scheme { AUTH_NONE, AUTH_BASIC, AUTH_BEARER };

struct auth_challenge {
	enum auth_scheme scheme;
	char *realm;
	char *service;
	char *scope;
};

/*
 * Parse one WWW-Authenticate value: `Bearer realm="...",service="...",scope="..."`
 * or `Basic realm="..."`. 0, or -EINVAL for anything malformed or unknown.
 */
int auth_parse_challenge(const char *v, size_t len, struct auth_challenge *c);
void auth_challenge_release(struct auth_challenge *c);

struct credentials {
	char *user;
	char *password;
};

/*
 * Look host up in a netrc-syntax file ("machine H login U password P"); a
 * host with a port is tried with it first, then without. host NULL: the
 * "default" entry instead, which a host lookup never falls back to. 0,
 * -ENOENT when the file has no entry (or no file), -EINVAL on bad syntax
 * (such as a quoted token left open) with "line N: <reason>" in err, or
 * another negative errno when the file cannot be read.
 */
int netrc_lookup(const char *path, const char *host, struct credentials *out,
		 char *err, size_t errlen);
void credentials_release(struct credentials *c);

/* Where credentials are looked up, in order. */
struct credential_files {
	const char *file;           /* the credentials file, or NULL */
	const char *netrc;          /* ~/.netrc, or NULL */
};

/*
 * The credentials for host ("host[:port]"): its machine entry in the
 * credentials file, else in ~/.netrc; then, with use_default only, the
 * "default" entry of either, in the same order. A file that cannot be read
 * or parsed is skipped with a warning. 0 or -ENOENT.
 */
int credentials_find(const struct credential_files *cf, const char *host, bool use_default,
		     struct credentials *out);

/*
 * Parse a token server's answer: {"token"|"access_token": "...", "expires_in": N}.
 * ttl_s defaults to 60 s, as the Docker token spec says. 0 or -EINVAL.
 */
int auth_parse_token(const char *body, size_t len, char **token, uint64_t *ttl_s);

#endif
