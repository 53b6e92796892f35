/*
 * progress.c - progress of a pull, one line per layer.
 *
 * On a terminal the lines are redrawn in place (cursor up, clear line) with a
 * bar, percent, bytes, speed and ETA. Anywhere else — a log, a pipe, CI —
 * redrawing makes noise, so each layer prints a line when it starts, at
 * every quarter, and when it ends.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "progress.h"
#include "util.h"

#define BAR_WIDTH 24

struct item {
	char *label;
	uint64_t size, done;
	enum progress_state st;
	uint64_t last_done, last_ms;
	double speed;              /* bytes per second, smoothed */
	int printed_quarter;       /* plain output: the last quarter printed */
	enum progress_state printed_st;
};

struct progress {
	FILE *out;
	bool tty;
	struct item *items;
	int n;
	int drawn;                 /* lines on screen from the last draw */
};

struct progress *progress_new(FILE *out, bool tty)
{
	struct progress *p = xcalloc(1, sizeof(*p));

	p->out = out;
	p->tty = tty;
	return p;
}

int progress_add(struct progress *p, const char *label, uint64_t size)
{
	struct item *it;

	p->items = xrealloc(p->items, (p->n + 1) * sizeof(*p->items));
	it = &p->items[p->n];
	memset(it, 0, sizeof(*it));
	it->label = xstrdup(label);
	it->size = size;
	it->last_ms = now_ms();
	it->printed_quarter = 0;
	it->printed_st = PROG_ACTIVE;
	return p->n++;
}

void progress_set(struct progress *p, int i, uint64_t done, enum progress_state st)
{
	struct item *it = &p->items[i];
	uint64_t now = now_ms();

	if (now - it->last_ms >= 250) {
		double inst = (double)(done - MIN(done, it->last_done)) * 1000.0 / (double)(now - it->last_ms);
		it->speed = it->speed ? 0.7 * it->speed + 0.3 * inst : inst;
		it->last_done = done;
		it->last_ms = now;
	}
	it->done = done;
	it->st = st;
}

static const char *state_word(enum progress_state st)
{
	switch (st) {
	case PROG_WAITING: return "waiting for another blobfs";
	case PROG_VERIFYING: return "verifying";
	case PROG_DONE: return "done";
	case PROG_FAILED: return "failed";
	default: return "";
	}
}

static void draw_tty_line(struct progress *p, const struct item *it)
{
	char done[16], size[16], speed[16], eta[32] = "";
	unsigned pct = it->size ? (unsigned)(it->done * 100 / it->size) : 100;
	int fill = it->size ? (int)(it->done * BAR_WIDTH / it->size) : BAR_WIDTH;
	char bar[BAR_WIDTH + 1];

	format_size(it->done, done, sizeof(done));
	format_size(it->size, size, sizeof(size));
	format_size((uint64_t)it->speed, speed, sizeof(speed));
	if (it->st == PROG_ACTIVE && it->speed > 1 && it->done < it->size) {
		char d[16];
		format_duration((uint64_t)((double)(it->size - it->done) / it->speed), d, sizeof(d));
		snprintf(eta, sizeof(eta), "  ETA %s", d);
	}
	for (int k = 0; k < BAR_WIDTH; k++)
		bar[k] = k < fill ? '#' : '-';
	bar[BAR_WIDTH] = '\0';
	fprintf(p->out, "\r\033[K%-16.16s [%s] %3u%%  %s / %s", it->label, bar, pct, done, size);
	if (it->st == PROG_ACTIVE)
		fprintf(p->out, "  %s/s%s\n", speed, eta);
	else
		fprintf(p->out, "  %s\n", state_word(it->st));
}

static void draw_plain(struct progress *p, struct item *it, bool final)
{
	char done[16], size[16], speed[16];
	int quarter = it->size ? (int)(it->done * 4 / it->size) : 4;

	if (it->st == it->printed_st && (it->st != PROG_ACTIVE || quarter <= it->printed_quarter))
		return;
	format_size(it->done, done, sizeof(done));
	format_size(it->size, size, sizeof(size));
	format_size((uint64_t)it->speed, speed, sizeof(speed));
	if (it->st == PROG_ACTIVE)
		fprintf(p->out, "%s: %s of %s (%d%%), %s/s\n", it->label, done, size,
			it->size ? (int)(it->done * 100 / it->size) : 100, speed);
	else
		fprintf(p->out, "%s: %s of %s, %s\n", it->label, done, size, state_word(it->st));
	it->printed_quarter = quarter;
	it->printed_st = it->st;
}

void progress_draw(struct progress *p, bool final)
{
	if (p->tty) {
		if (p->drawn)
			fprintf(p->out, "\033[%dA", p->drawn);
		for (int i = 0; i < p->n; i++)
			draw_tty_line(p, &p->items[i]);
		p->drawn = p->n;
	} else {
		for (int i = 0; i < p->n; i++)
			draw_plain(p, &p->items[i], final);
	}
	fflush(p->out);
}

void progress_free(struct progress *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->n; i++)
		free(p->items[i].label);
	free(p->items);
	free(p);
}
