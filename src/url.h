/* url.h - URL work through libcurl's URL API (curl_url). */
#ifndef BLOBFS_URL_H
#define BLOBFS_URL_H

#include <stdbool.h>

/* Resolve ref (absolute or relative, e.g. a Location header) against base. NULL if invalid. */
char *url_resolve(const char *base, const char *ref);
/* The URL without credentials, query or fragment: safe to log. Never NULL. */
char *url_redact(const char *url);
/* Append key=value (URL-encoded) to the query of url. NULL if invalid. */
char *url_add_query(const char *url, const char *key, const char *value);
/* "host" or "host:port" of an absolute URL; NULL if invalid. */
char *url_authority(const char *url);
/* Is the host of "host[:port]" "localhost", a dotted quad 127.x.y.z or [::1]? */
bool host_is_loopback(const char *authority);
/* Do two absolute URLs have the same scheme, host and port? */
bool url_same_origin(const char *a, const char *b);
/*
 * May a request to url carry credentials (Basic, netrc, the credentials
 * file)? Only over https, or plain http to a loopback host. NULL or an
 * invalid URL: no.
 */
bool url_may_carry_credentials(const char *url);

#endif
