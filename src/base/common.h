/*
 * common.h: internal helpers every module shares (errors, checked arithmetic, allocation).
 * Not part of the public API.
 */
#ifndef DUET_COMMON_H
#define DUET_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "duet.h"

#define DUET_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DUET_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Fill err (may be NULL) with code and a printf-style message; returns code, so that
 * `return duet_fail(err, DUET_ERR_FORMAT, "%s: ...", path);` reads naturally. */
int duet_fail(duet_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Checked size arithmetic: return false on overflow. */
static inline bool duet_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool duet_add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* splitmix64: advance *x and return the next 64 random bits. The one seeded generator every
 * module uses (sampler seeding, random deferral, random weights, shuffles), so a seed means
 * the same stream everywhere. */
static inline uint64_t duet_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Softmax statistics of logits l[0..n) in double, one definition for every pass that needs
 * them (scoring, evaluation, decoding) so their numbers agree bit for bit:
 * *max = max l, *z = sum exp(l - max), and, when ez is non-NULL, *ez = sum exp(l - max)(l - max).
 * Then log p[t] = l[t] - max - log z, max log p = -log z, entropy = log z - ez / z. */
void duet_softmax_stats(const float *l, int n, double *max, double *z, double *ez);

/* A growable byte buffer (zero-initialise; free(b.p) when done). After an add, p holds n
 * bytes and a NUL after them. */
typedef struct duet_buf { char *p; size_t n, cap; } duet_buf;
/* Append s[0..n); DUET_ERR_NOMEM (buffer unchanged) when it cannot grow. */
int duet_buf_add(duet_buf *b, const void *s, size_t n);
/* Room for n more bytes and the NUL after them (p may move); DUET_ERR_NOMEM when it cannot. */
int duet_buf_reserve(duet_buf *b, size_t n);

/* 64-byte aligned allocation (zeroed); free with duet_afree. NULL on failure or overflow. */
void *duet_aalloc(size_t n);
void duet_afree(void *p);

/* Copy at most n bytes of s into a printable, single-line form for error messages:
 * control bytes and non-UTF-8 become \xNN, long strings are cut with "...". */
void duet_printable(char *dst, size_t cap, const char *s, size_t n);

#endif
