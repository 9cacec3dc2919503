/*
 * atomic_file.h: replace a file all at once (the public part, duet_atomic and
 * duet_atomic_write, is in duet.h: atomic files). Here: finishing a temporary file whose
 * writer keeps it on failure.
 */
#ifndef DUET_ATOMIC_FILE_H
#define DUET_ATOMIC_FILE_H

#include <stdio.h>

#include "duet.h"

/* Flush, fsync and close f (closed in every case), then rename tmp to path. Leaves tmp in
 * place on failure, for writers whose temporary file is worth keeping (a resumable one).
 * 0, or -1 with errno set; *step (may be NULL) names the step that failed. */
int duet_file_finish(FILE *f, const char *tmp, const char *path, const char **step);

#endif
