/* progress.h - per-layer progress: bars on a terminal, plain lines otherwise. */
#ifndef BLOBFS_PROGRESS_H
#define BLOBFS_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum progress_state { PROG_ACTIVE, PROG_WAITING, PROG_VERIFYING, PROG_DONE, PROG_FAILED };

struct progress;

struct progress *progress_new(FILE *out, bool tty);
/* Add an item; returns its index. */
int progress_add(struct progress *p, const char *label, uint64_t size);
void progress_set(struct progress *p, int i, uint64_t done, enum progress_state st);
/* Redraw (terminal) or print what changed (plain); final prints the last state. */
void progress_draw(struct progress *p, bool final);
void progress_free(struct progress *p);

#endif
