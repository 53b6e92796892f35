/*
 * main.c - the command line, and nothing else: options are parsed with
 * getopt_long into the option structs of the library, and the command runs.
 * Options may come before or after the command (GNU getopt permutes), and
 * an option that has no meaning for the command is refused by name.
 *
 * As git's parse-options does, one table drives both the parsing and the
 * usage text: the options that are settings come from settings.def, the
 * others from options[] below, the commands from commands[]. The same
 * tables answer --completion-helper, which the bash completion asks for the
 * commands and options to offer, so that it cannot fall behind.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "conffile.h"
#include "fs.h"
#include "log.h"
#include "util.h"

struct command {
	const char *name, *alias;
	unsigned bit;              /* enum command_bit */
	const char *args, *help;   /* for --help */
};

static const struct command commands[] = {
	{ "pull", NULL, CMD_PULL, "[--lazy] NAME...",
	  "fetch a model's manifest and blobs into the store" },
	{ "ls", "list", CMD_LS, "[NAME...]", "list models with their size and how much is local" },
	{ "rm", NULL, CMD_RM, "NAME...", "remove models and the blobs only they use" },
	{ "gc", NULL, CMD_GC, "", "delete unreferenced blobs and stale partial downloads" },
	{ "verify", NULL, CMD_VERIFY, "[NAME...]", "hash complete blobs again and report each" },
	{ "status", NULL, CMD_STATUS, "[--json|--prometheus]",
	  "what each mount of the store is doing" },
	{ "mount", NULL, CMD_MOUNT, "[-f] [-o OPT,...] MOUNTPOINT",
	  "mount the store; files fill in on first read" },
	{ "umount", "unmount", CMD_UMOUNT, "MOUNTPOINT", "unmount" },
};

/* The options that are not settings. */
enum own_opt {
	OPT_DEBUG, OPT_QUIET, OPT_HELP, OPT_VERSION, OPT_LAZY, OPT_JSON, OPT_PROMETHEUS,
	OPT_FOREGROUND, OPT_OPTION, OPT_COMPLETION, OWN_COUNT
};

struct own_option {
	const char *name;
	char short_opt;
	const char *metavar;       /* NULL: takes no value */
	unsigned cmds;             /* the commands it applies to */
	const char *help;          /* NULL: not in --help */
};

static const struct own_option options[OWN_COUNT] = {
	[OPT_DEBUG] = { "debug", 'd', NULL, CMDS_ALL, "log every request" },
	[OPT_QUIET] = { "quiet", 'q', NULL, CMDS_ALL, "no progress output" },
	[OPT_HELP] = { "help", 'h', NULL, CMDS_ALL, "this help" },
	[OPT_VERSION] = { "version", 'V', NULL, CMDS_ALL, "the version" },
	[OPT_LAZY] = { "lazy", 0, NULL, CMD_PULL,
		       "store the manifest only; blobs come on first read" },
	[OPT_JSON] = { "json", 0, NULL, CMD_STATUS, "the same figures as JSON, for scripts" },
	[OPT_PROMETHEUS] = { "prometheus", 0, NULL, CMD_STATUS,
			     "the same figures in the Prometheus text format" },
	[OPT_FOREGROUND] = { "foreground", 'f', NULL, CMD_MOUNT,
			     "stay in the foreground, log to stderr" },
	[OPT_OPTION] = { "option", 'o', "OPT,...", CMD_MOUNT,
			 "FUSE and blobfs mount options (see blobfs(1))" },
	/* For the bash completion: the commands and options, one per line. */
	[OPT_COMPLETION] = { "completion-helper", 0, NULL, CMDS_ALL, NULL },
};

/* getopt's codes: an own option is OWN_BASE + enum own_opt, a setting SET_BASE + its index. */
#define OWN_BASE 1000
#define SET_BASE 2000
#define NOPTS (OWN_COUNT + SETTING_COUNT)

/* An index for each code, for per-option arrays. */
static int slot_of(int code)
{
	return code >= SET_BASE ? OWN_COUNT + code - SET_BASE : code - OWN_BASE;
}

/* The name, metavar, commands and help of option code c (of either kind). */
struct opt_view {
	char name[48];
	char short_opt;
	const char *metavar, *help;
	unsigned cmds;
	char dflt[80];             /* "(default 16)", or "" */
};

static bool view(int code, struct opt_view *v)
{
	memset(v, 0, sizeof(*v));
	if (code >= OWN_BASE && code < OWN_BASE + OWN_COUNT) {
		const struct own_option *o = &options[code - OWN_BASE];
		snprintf(v->name, sizeof(v->name), "--%s", o->name);
		v->short_opt = o->short_opt;
		v->metavar = o->metavar;
		v->cmds = o->cmds;
		v->help = o->help;
		return true;
	}
	if (code >= SET_BASE && code < SET_BASE + SETTING_COUNT &&
	    (settings[code - SET_BASE].opts & OPT_CLI)) {
		const struct setting *s = &settings[code - SET_BASE];
		char d[64];
		const char *dflt = setting_default_text(s, d, sizeof(d));
		setting_option(s, false, v->name, sizeof(v->name));
		v->short_opt = s->short_opt;
		v->metavar = s->type == T_BOOL ? NULL : s->metavar;
		v->cmds = s->cmds;
		v->help = s->help;
		if (s->type != T_BOOL && *dflt)
			snprintf(v->dflt, sizeof(v->dflt), "(default%s %s)",
				 dflt == s->unset ? ":" : "", dflt);
		return true;
	}
	return false;
}

/* Every option's code, in the order --help lists them: settings, then the others. */
static size_t option_codes(int *codes)
{
	size_t n = 0;

	for (int i = 0; i < SETTING_COUNT; i++)
		if (settings[i].opts & OPT_CLI)
			codes[n++] = SET_BASE + i;
	for (int i = 0; i < OWN_COUNT; i++)
		codes[n++] = OWN_BASE + i;
	return n;
}

/* "pull and mount", "pull, mount and gc" */
static void command_list(unsigned cmds, const char *sep, char *buf, size_t len)
{
	size_t n = 0, total = 0;

	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		total += !!(cmds & commands[i].bit);
	buf[0] = '\0';
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		if (!(cmds & commands[i].bit))
			continue;
		n++;
		snprintf(buf + strlen(buf), len - strlen(buf), "%s%s",
			 n == 1 ? "" : sep ? sep : n == total ? " and " : ", ", commands[i].name);
	}
}

/* "  lead  text", text wrapped at 79 columns and indented to column 26. */
static void help_line(FILE *out, const char *lead, const char *text)
{
	int col = fprintf(out, "  %s", lead);
	const char *p = text;

	if (col > 25) {
		fputc('\n', out);
		col = 0;
	}
	fprintf(out, "%*s", 26 - col, "");
	col = 26;
	while (*p) {
		size_t w = strcspn(p, " ");
		if (col > 26 && col + 1 + w > 79) {
			fprintf(out, "\n%26s", "");
			col = 26;
		} else if (col > 26) {
			fputc(' ', out);
			col++;
		}
		fprintf(out, "%.*s", (int)w, p);
		col += (int)w;
		p += w;
		while (*p == ' ')
			p++;
	}
	fputc('\n', out);
}

static void usage(FILE *out)
{
	static const unsigned groups[] = { CMDS_ALL, CMDS_FETCH, CMD_PULL | CMD_MOUNT | CMD_GC,
					   CMD_PULL, CMD_STATUS, CMD_MOUNT };
	int codes[NOPTS];
	size_t n = option_codes(codes);
	char lead[96], text[256], which[64];
	struct opt_view v;

	fputs("usage: blobfs [--store DIR] [--debug] COMMAND [OPTIONS] [ARGS]\n\n"
	      "A lazy, verifying filesystem for model registries (Ollama, OCI).\n\ncommands:\n",
	      out);
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		snprintf(lead, sizeof(lead), "%s %s", commands[i].name, commands[i].args);
		help_line(out, lead, commands[i].help);
	}
	fputs("\nnames: [http[s]://][host/][namespace/]name[:tag]; host defaults to\n"
	      "registry.ollama.ai, namespace to library, tag to latest.\n", out);
	for (size_t g = 0; g < ARRAY_SIZE(groups); g++) {
		command_list(groups[g], NULL, which, sizeof(which));
		fprintf(out, "\n%s%s:\n", g ? "options of " : "options", g ? which : "");
		for (size_t i = 0; i < n; i++) {
			if (!view(codes[i], &v) || v.cmds != groups[g] || !v.help)
				continue;
			char sh[8] = "    ";
			if (v.short_opt)
				snprintf(sh, sizeof(sh), "-%c, ", v.short_opt);
			snprintf(lead, sizeof(lead), "%s%s%s%s", sh, v.name, v.metavar ? " " : "",
				 v.metavar ? v.metavar : "");
			snprintf(text, sizeof(text), "%s%s%s", v.help, *v.dflt ? " " : "", v.dflt);
			help_line(out, lead, text);
		}
	}
	fputs("\nSee blobfs(1).\n", out);
}

/*
 * For the bash completion, tab-separated:
 *   command NAME                  alias ALIAS NAME
 *   option NAME METAVAR COMMANDS  (-s and --store alike; COMMANDS: "*" or "pull,mount")
 *   mount-option NAME METAVAR     (METAVAR: "", a word, or choices "a|b|c")
 *   setting KEY TYPE SCOPE DEFAULT RANGE OPTION MOUNT-OPTION
 */
static void completion_helper(FILE *out)
{
	static const char *const scopes[] = { "any", "global", "host" };
	static const char *const types[] = { "path", "number", "number", "size", "size",
					     "boolean", "scheme", "url" };
	int codes[NOPTS];
	size_t n = option_codes(codes);
	struct opt_view v;
	char which[96], a[64], b[64], c[48], d[48];

	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		fprintf(out, "command\t%s\n", commands[i].name);
		if (commands[i].alias)
			fprintf(out, "alias\t%s\t%s\n", commands[i].alias, commands[i].name);
	}
	for (size_t i = 0; i < n; i++) {
		if (!view(codes[i], &v) || !v.help)
			continue;
		if (v.cmds == CMDS_ALL)
			snprintf(which, sizeof(which), "*");
		else
			command_list(v.cmds, ",", which, sizeof(which));
		fprintf(out, "option\t%s\t%s\t%s\n", v.name, v.metavar ? v.metavar : "", which);
		if (v.short_opt)
			fprintf(out, "option\t-%c\t%s\t%s\n", v.short_opt, v.metavar ? v.metavar : "",
				which);
	}
	cmd_mount_describe_options(out);
	for (size_t i = 0; i < SETTING_COUNT; i++) {
		const struct setting *s = &settings[i];
		fprintf(out, "setting\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s->key, types[s->type],
			scopes[s->scope],
			setting_default_text(s, a, sizeof(a)), setting_range_text(s, b, sizeof(b)),
			(s->opts & OPT_CLI) ? setting_option(s, false, c, sizeof(c)) : "",
			(s->opts & OPT_MOUNT) ? setting_option(s, true, d, sizeof(d)) : "");
	}
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "blobfs: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'blobfs --help'.\n");
	return EXIT_USAGE;
}

/* The getopt tables, from the option tables. */
static void getopt_tables(struct option *longopts, char *shortopts, size_t shortlen)
{
	int codes[NOPTS];
	size_t n = option_codes(codes), k = 0, sl = 0;
	struct opt_view v;

	sl += snprintf(shortopts, shortlen, ":");
	for (size_t i = 0; i < n; i++) {
		if (!view(codes[i], &v))
			continue;
		longopts[k++] = (struct option){ xstrdup(v.name + 2),
			v.metavar ? required_argument : no_argument, NULL, codes[i] };
		if (v.short_opt)
			sl += snprintf(shortopts + sl, shortlen - sl, "%c%s", v.short_opt,
				       v.metavar ? ":" : "");
	}
	longopts[k] = (struct option){ NULL, 0, NULL, 0 };
}

/* The code of an option getopt returned by its short letter. */
static int short_code(int c)
{
	int codes[NOPTS];
	size_t n = option_codes(codes);
	struct opt_view v;

	for (size_t i = 0; i < n; i++)
		if (view(codes[i], &v) && v.short_opt == c)
			return codes[i];
	return c;
}

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		if (strcmp(name, commands[i].name) == 0 ||
		    (commands[i].alias && strcmp(name, commands[i].alias) == 0))
			return &commands[i];
	return NULL;
}

/* Set a setting from its option, checked as the configuration file checks it. */
static int set_option(struct conf *cli, const struct setting *s, const char *typed,
		      const char *value)
{
	char err[256];

	if (s->type == T_BOOL)
		value = s->dflt ? "no" : "yes";
	if (conf_set(cli, s->key, value, typed, err, sizeof(err)) < 0)
		return usage_error("%s", err);
	return 0;
}

struct parsed {
	struct pull_args *pa;
	struct status_args *sa;
	struct fs_opts *fo;
	char **mopts;
	int nmopts, maxmopts;
	char typed[NOPTS][48];     /* how each option given was written; "" if not given */
};

/* One option getopt returned; PARSED, or the exit code to leave with. */
#define PARSED (-1)

static int take(struct session_opts *so, struct parsed *p, int code, const char *typed)
{
	if (code >= SET_BASE)
		return set_option(&so->cli, &settings[code - SET_BASE], typed, optarg) ? EXIT_USAGE
											  : PARSED;
	switch (code - OWN_BASE) {
	case OPT_DEBUG:
		log_set_level(LOG_LVL_DEBUG);
		break;
	case OPT_QUIET:
		p->pa->quiet = true;
		break;
	case OPT_HELP:
		usage(stdout);
		return EXIT_OK;
	case OPT_VERSION:
		printf("blobfs %s\n", PACKAGE_VERSION);
		return EXIT_OK;
	case OPT_COMPLETION:
		completion_helper(stdout);
		return EXIT_OK;
	case OPT_LAZY:
		p->pa->lazy = true;
		break;
	case OPT_JSON:
	case OPT_PROMETHEUS:
		if (p->sa->format != STATUS_TEXT)
			return usage_error("%s", "status: --json or --prometheus, not both");
		p->sa->format = code - OWN_BASE == OPT_JSON ? STATUS_JSON : STATUS_PROMETHEUS;
		break;
	case OPT_FOREGROUND:
		p->fo->foreground = true;
		break;
	case OPT_OPTION:
		if (p->nmopts == p->maxmopts)
			return usage_error("%s", "too many -o options");
		p->mopts[p->nmopts++] = optarg;
		break;
	}
	return PARSED;
}

/* Refuse an option given to a command it has no meaning for. */
static int check_applies(const struct parsed *p, const struct command *cmd)
{
	int codes[NOPTS];
	size_t n = option_codes(codes);
	struct opt_view v;
	char which[64];

	for (size_t i = 0; i < n; i++) {
		const char *typed = p->typed[slot_of(codes[i])];
		if (!typed[0] || !view(codes[i], &v) || (v.cmds & cmd->bit))
			continue;
		command_list(v.cmds, NULL, which, sizeof(which));
		return usage_error("%s does not apply to '%s' (only to %s)", typed,
				   cmd->name, which);
	}
	return PARSED;
}

/*
 * Parse the options into so, pa, sa, fo and mopts. Returns PARSED with *cmd_at at
 * the command's index in argv, or the exit code to leave with; the caller
 * releases so either way.
 */
static int parse(int argc, char **argv, struct session_opts *so, struct parsed *p, int *cmd_at)
{
	struct option longopts[NOPTS + 1];
	char shortopts[64];
	int c, ret = PARSED;

	getopt_tables(longopts, shortopts, sizeof(shortopts));
	opterr = 0;    /* our own messages, naming the option */
	while (ret == PARSED && (c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		int code = c < OWN_BASE && c != ':' && c != '?' ? short_code(c) : c;
		struct opt_view v;
		char typed[48];

		if (c == ':') {
			ret = usage_error("option '%s' needs a value", argv[optind - 1]);
			break;
		}
		if (code < OWN_BASE || !view(code, &v)) {
			ret = usage_error("unknown option '%s'", argv[optind - 1]);
			break;
		}
		if (c < OWN_BASE)
			snprintf(typed, sizeof(typed), "-%c", c);
		else
			snprintf(typed, sizeof(typed), "%s", v.name);
		snprintf(p->typed[slot_of(code)], sizeof(p->typed[0]), "%s", typed);
		ret = take(so, p, code, typed);
	}
	for (int i = 0; longopts[i].name; i++)
		free((char *)longopts[i].name);
	if (ret != PARSED)
		return ret;
	if (optind >= argc)
		return usage_error("%s", "no command given");
	const struct command *cmd = find_command(argv[optind]);
	if (!cmd)
		return usage_error("unknown command '%s'", argv[optind]);
	*cmd_at = optind;
	return check_applies(p, cmd);
}

static int dispatch(const char *cmd, char *const *args, int nargs, struct session_opts *so,
		    const struct parsed *p);

int main(int argc, char **argv)
{
	struct session_opts so;
	struct pull_args pa = { 0 };
	struct status_args sa = { STATUS_TEXT };
	struct fs_opts fo;
	static char *mopts[256];
	static struct parsed p;
	int cmd = 0;
	char err[512];

	session_opts_init(&so);
	fs_opts_defaults(&fo);
	p = (struct parsed){ .pa = &pa, .sa = &sa, .fo = &fo, .mopts = mopts,
			     .maxmopts = (int)ARRAY_SIZE(mopts) };
	int ret = parse(argc, argv, &so, &p, &cmd);
	if (ret == PARSED) {
		if (session_opts_load(&so, err, sizeof(err)) < 0) {
			log_error("bad configuration: %s", err);
			ret = EXIT_FAIL;
		} else {
			ret = dispatch(argv[cmd], argv + cmd + 1, argc - cmd - 1, &so, &p);
		}
	}
	session_opts_release(&so);
	return ret;
}

/* Run the command, its options parsed. */
static int dispatch(const char *cmd, char *const *args, int nargs, struct session_opts *so,
		    const struct parsed *p)
{
	switch (find_command(cmd)->bit) {
	case CMD_PULL:
		if (nargs == 0)
			return usage_error("%s", "pull: which model? (blobfs pull NAME)");
		return cmd_pull(so, p->pa, args, nargs);
	case CMD_LS:
		return cmd_ls(so, args, nargs);
	case CMD_RM:
		if (nargs == 0)
			return usage_error("%s", "rm: which model? (blobfs rm NAME)");
		return cmd_rm(so, args, nargs);
	case CMD_GC:
		if (nargs)
			return usage_error("gc takes no arguments, not '%s'", args[0]);
		return cmd_gc(so);
	case CMD_VERIFY:
		return cmd_verify(so, args, nargs);
	case CMD_STATUS:
		if (nargs)
			return usage_error("status takes no arguments, not '%s'", args[0]);
		return cmd_status(so, p->sa);
	case CMD_MOUNT:
		if (nargs != 1)
			return usage_error("%s", "mount: one mount point, please (blobfs mount DIR)");
		return cmd_mount(so, p->fo, args[0], p->mopts, p->nmopts);
	default:
		if (nargs != 1)
			return usage_error("%s", "umount: which mount point? (blobfs umount DIR)");
		return cmd_umount(args[0]);
	}
}
