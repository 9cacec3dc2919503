/*
 * atomic_file.h: replace a file all at once. Output goes to "<path>.tmp" beside the target
 * and is flushed, fsync'ed, closed and renamed over it only when complete, so a reader (or a
 * crash, or a full disk) never sees a half-written model, report or trace; on failure the
 * temporary file is removed and the target is untouched.
 */
#ifndef DUET_ATOMIC_FILE_H
#define DUET_ATOMIC_FILE_H

#include <stddef.h>
#include <stdio.h>

#include "duet.h"

typedef struct duet_atomic {
    FILE *f;    /* write here between open and commit */
    char *tmp;  /* "<path>.tmp" */
    char *path; /* the target */
} duet_atomic;

/* Create "<path>.tmp" (truncating an old one) for writing. DUET_OK, or an I/O / memory error
 * with a left closed (a->f NULL; abort is then a no-op). A zero-initialised duet_atomic is
 * closed too, so cleanup code may call abort whether or not open ran. */
int duet_atomic_open(duet_atomic *a, const char *path, duet_error *err);
/* Flush, fsync, close and rename onto the target (then, best effort, fsync its directory so
 * the rename survives a crash). Also fails when a write on a->f failed earlier (ferror). On
 * failure the temporary file is removed. Always releases a. */
int duet_atomic_commit(duet_atomic *a, duet_error *err);
/* Close and remove the temporary file without touching the target; releases a. */
void duet_atomic_abort(duet_atomic *a);

/* Flush, fsync and close f (closed in every case), then rename tmp to path. Leaves tmp in
 * place on failure, for writers whose temporary file is worth keeping (a resumable one).
 * 0, or -1 with errno set; *step (may be NULL) names the step that failed. */
int duet_file_finish(FILE *f, const char *tmp, const char *path, const char **step);

/* The whole of data[0..n) as the new content of path. */
int duet_atomic_write(const char *path, const void *data, size_t n, duet_error *err);

#endif
