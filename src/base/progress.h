/*
 * progress.h: the text of the one progress line the command-line tool shows on a terminal
 * (perplexity, score, eval/tune, train, head train): done/total, a rate with its unit, one
 * ETA format and an optional tail. Pure formatting, no clock and no printing, so the
 * arithmetic can be tested; cmd/util.c times, throttles and prints it.
 */
#ifndef DUET_PROGRESS_H
#define DUET_PROGRESS_H

#include <stddef.h>

/* "ETA h:mm:ss" from one hour up, else "ETA m:ss" (seconds rounded to the nearest one), or
 * "ETA ?" when seconds is negative, NaN, infinite or 1e9 or more (no meaningful estimate).
 * Writes at most cap bytes, always NUL-terminated when cap > 0 (cut short when the text does
 * not fit); returns the length of the whole text, like snprintf, so a return >= cap means the
 * text was cut. buf may be NULL when cap is 0. */
size_t duet_format_eta(char *buf, size_t cap, double seconds);

typedef struct duet_progress_line {
    const char *label;   /* leads the line, followed by ": " (NULL or "": no label) */
    const char *unit;    /* what done and total count, e.g. "tok" (NULL or "": no unit) */
    long long done, total;
    long long done0;     /* done when the timing started (work resumed or before the clock) */
    double elapsed;      /* seconds since the timing started */
    const char *extra;   /* appended after ", " (NULL or "": nothing) */
} duet_progress_line;

/* "LABEL: DONE/TOTAL UNIT, RATE UNIT/s, ETA ...[, EXTRA]". RATE = (done - done0) / elapsed,
 * printed with 2 decimals below 10, 1 below 100, none above, and "?" when no work has been
 * timed yet (elapsed <= 0 or done <= done0); the ETA is (total - done) / RATE, 0 once done
 * reaches total, "?" while the rate is unknown. Same length and termination contract as
 * duet_format_eta. */
size_t duet_format_progress(char *buf, size_t cap, const duet_progress_line *l);

#endif
