/* background.h - a thread for slow housekeeping, off the threads that answer reads. */
#ifndef BLOBFS_BACKGROUND_H
#define BLOBFS_BACKGROUND_H

#include <stdbool.h>

struct background;

struct background *background_start(void);
/*
 * Run fn(arg) on the background thread soon; a job already waiting is not
 * added twice. Cheap, from any thread. False once the thread is stopped:
 * then the caller runs the job itself or drops it.
 */
bool background_run(struct background *bg, void (*fn)(void *arg), void *arg);
/* Run the jobs still waiting, then stop the thread. */
void background_stop(struct background *bg);
void background_free(struct background *bg);

#endif
