/*
 * log.c - diagnostics.
 *
 * Every message is formatted into one buffer and written with a single call,
 * so lines from the network thread and the FUSE workers never interleave.
 * Nothing secret is ever passed here: callers log URLs through
 * url_redact() and never log header values.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "log.h"

static enum log_level log_level = LOG_LVL_WARN; /* set once at start-up */
static bool log_syslog;

void log_set_level(enum log_level level)
{
	log_level = level;
}

enum log_level log_get_level(void)
{
	return log_level;
}

void log_use_syslog(bool on)
{
	if (on && !log_syslog)
		openlog("blobfs", LOG_PID, LOG_DAEMON);
	log_syslog = on;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const prefix[] = { "error: ", "warning: ", "", "debug: " };
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	char buf[2048];
	va_list ap;
	int n;

	if (level > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (log_syslog) {
		syslog(prio[level], "%s%s", prefix[level], buf);
		return;
	}
	char line[sizeof(buf) + 32];
	n = snprintf(line, sizeof(line), "blobfs: %s%s\n", prefix[level], buf);
	if (n > (int)sizeof(line) - 1) {
		n = sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (write(STDERR_FILENO, line, n) < 0) {
		/* nowhere left to report it */
	}
}
