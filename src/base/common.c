/* common.c: error formatting, aligned allocation, printable strings, clock. */
#include "base/common.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

int duet_fail(duet_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

const char *duet_status_str(int status) {
    switch (status) {
    case DUET_OK: return "ok";
    case DUET_EOS: return "end of sequence";
    case DUET_ERR_IO: return "i/o error";
    case DUET_ERR_FORMAT: return "format error";
    case DUET_ERR_UNSUPPORTED: return "unsupported";
    case DUET_ERR_NOMEM: return "out of memory";
    case DUET_ERR_ARG: return "bad argument";
    case DUET_ERR_RANGE: return "out of range";
    default: return "unknown status";
    }
}

/* calloc rather than aligned_alloc + memset: large blocks come zeroed from mmap, and their
 * pages become resident only when first written, so buffers sized for the worst case (a
 * full batch of activations and logits, the whole context's KV cache) cost memory only as
 * they are used (generating after a short prompt touched 114 MiB of them before). The raw
 * pointer is kept just below the aligned block for duet_afree. */
void *duet_aalloc(size_t n) {
    if (n == 0) n = 64;
    if (n > SIZE_MAX - 64 - sizeof(void *)) return NULL;
    char *raw = calloc(1, n + 64 + sizeof(void *));
    if (!raw) return NULL;
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63;
    ((void **)a)[-1] = raw;
    return (void *)a;
}

void duet_afree(void *p) {
    if (p) free(((void **)p)[-1]);
}

void duet_printable(char *dst, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    if (cap == 0) return;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= cap) {
            if (cap >= 4) { o = DUET_MIN(o, cap - 4); memcpy(dst + o, "...", 3); o += 3; }
            break;
        }
        if (c < 0x20 || c == 0x7f || c >= 0x80 || c == '\\') {
            if (c == '\\') { dst[o++] = '\\'; dst[o++] = '\\'; }
            else o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
        } else {
            dst[o++] = (char)c;
        }
    }
    dst[o < cap ? o : cap - 1] = 0;
}

double duet_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void duet_softmax_stats(const float *l, int n, double *max, double *z, double *ez) {
    double mx = l[0], zz = 0, e2 = 0;
    for (int i = 1; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) {
        double d = (double)l[i] - mx, e = exp(d);
        zz += e;
        e2 += e * d;
    }
    *max = mx;
    *z = zz;
    if (ez) *ez = e2;
}

int duet_buf_reserve(duet_buf *b, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = DUET_MAX(b->cap * 2, b->n + n + 64);
        char *p = realloc(b->p, cap);
        if (!p) return DUET_ERR_NOMEM;
        b->p = p;
        b->cap = cap;
    }
    return DUET_OK;
}

int duet_buf_add(duet_buf *b, const void *s, size_t n) {
    if (duet_buf_reserve(b, n)) return DUET_ERR_NOMEM;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return DUET_OK;
}
