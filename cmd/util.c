/* util.c: argument parsing shared by the subcommands. */
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *arg_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "duet %s: %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int arg_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s '%s' is not an integer in [%ld, %ld]\n", cmd, flag, s, lo,
                hi);
        return 0;
    }
    *out = (int)v;
    return 1;
}

int arg_u64(const char *cmd, const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') {
        fprintf(stderr, "duet %s: %s '%s' is not a non-negative integer\n", cmd, flag, s);
        return 0;
    }
    *out = v;
    return 1;
}

int arg_float(const char *cmd, const char *flag, const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || isnan(v) || v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s '%s' is not a number in [%g, %g]\n", cmd, flag, s, lo, hi);
        return 0;
    }
    *out = (float)v;
    return 1;
}

int arg_int_list(const char *cmd, const char *flag, const char *s, int *out, int cap) {
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (n == cap) {
            fprintf(stderr, "duet %s: %s: at most %d values\n", cmd, flag, cap);
            return 0;
        }
        if (!arg_int(cmd, flag, tok, 0, 1 << 24, &out[n++])) return 0;
    }
    if (!n) fprintf(stderr, "duet %s: %s needs at least one value\n", cmd, flag);
    return n;
}

char *read_file(const char *cmd, const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "duet %s: %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        fprintf(stderr, "duet %s: %s: %s\n", cmd, path, bad ? "read error" : "out of memory");
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}
