/*
 * fuzz_netrc.c - netrc-syntax credential files (netrc_lookup).
 *
 * The file is a memfd rewritten for each input and opened by netrc_lookup as
 * /proc/self/fd/N, so nothing touches the disk.
 * Input: byte 0 picks the host looked up (its value mod 8: 0-6, a fixed
 * list; 7, the bytes after byte 0 up to the first newline, at most 300), or,
 * with its high bit set, the "default" entry; the rest is the file.
 * Invariants:
 *   netrc_result  0 gives a non-NULL user and password, -ENOENT/-EINVAL leave
 *                 both NULL; nothing else is returned; -EINVAL says
 *                 "line N: <reason>" in err
 *   netrc_found   the user returned occurs in the file (as a bare word, or
 *                 inside quotes where escapes make it a subsequence)
 *   netrc_bad_quote  an empty user is only returned for an explicit `""`: a
 *                 quoted token that is not closed (or holds a control byte)
 *                 is bad syntax (-EINVAL), not an empty string
 */
#include "config.h"

#include <errno.h>
#include <sys/mman.h>

#include "auth.h"
#include "fuzz_common.h"

static int fd = -1;
static char path[64];

static const char *const hosts[] = {
	"registry.ollama.ai", "localhost:5000", "[::1]:5000", "ghcr.io",
	"Registry-1.Docker.IO", "127.0.0.1:11434", "example.com:443",
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fd = memfd_create("netrc", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return 0;
}

/* Is s (non-empty) a subsequence of buf? Quoted values lose their escapes. */
static bool in_file(const char *s, const uint8_t *buf, size_t len)
{
	size_t j = 0, n = strlen(s);

	if (memmem(buf, len, s, n))
		return true;
	for (size_t i = 0; i < len && j < n; i++)
		if (buf[i] == (uint8_t)s[j])
			j++;
	return j == n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char host[301];
	const uint8_t *file;
	size_t flen;

	if (size < 1)
		return 0;
	if (data[0] % 8 < 7) {
		snprintf(host, sizeof(host), "%s", hosts[data[0] % 8]);
		file = data + 1;
		flen = size - 1;
	} else {
		const uint8_t *nl = memchr(data + 1, '\n', size - 1);
		size_t hl = nl ? (size_t)(nl - data - 1) : size - 1;
		if (hl > 300)
			hl = 300;
		memcpy(host, data + 1, hl);
		host[hl] = '\0';
		file = data + 1 + hl;
		flen = size - 1 - hl;
	}
	if (ftruncate(fd, 0) < 0 || pwrite(fd, file, flen, 0) != (ssize_t)flen)
		abort();

	struct credentials c = { (char *)1, (char *)1 };
	char err[256] = "";
	/* Every other input looks the "default" entry up instead. */
	int ret = netrc_lookup(path, data[0] & 0x80 ? NULL : host, &c, err, sizeof(err));
	if (ret < 0) {
		FUZZ_CHECK("netrc_result", (ret == -ENOENT || ret == -EINVAL) && !c.user && !c.password,
			   "ret %d", ret);
		FUZZ_CHECK("netrc_result", ret != -EINVAL || !strncmp(err, "line ", 5),
			   "-EINVAL with the message '%s'", fuzz_esc(err, strlen(err)));
		return 0;
	}
	FUZZ_CHECK("netrc_result", ret == 0 && c.user && c.password, "ret %d", ret);
	FUZZ_CHECK("netrc_found", !*c.user || in_file(c.user, file, flen), "user '%s' not in file",
		   fuzz_esc(c.user, strlen(c.user)));
	FUZZ_CHECK("netrc_bad_quote", *c.user || memmem(file, flen, "\"\"", 2),
		   "an empty login from a broken quoted token is accepted (password '%s')",
		   fuzz_esc(c.password, strlen(c.password)));
	credentials_release(&c);
	return 0;
}
