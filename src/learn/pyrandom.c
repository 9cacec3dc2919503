/*
 * pyrandom.c: MT19937 with CPython's and numpy's seeding and bounded draws (see pyrandom.h).
 * The official splits are defined by these exact draw sequences, so every branch here
 * mirrors the reference algorithm step for step: a different but "equally random" choice
 * would select different problems.
 */
#include "learn/pyrandom.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MT_N 624
#define MT_M 397

void mt_init_genrand(mt19937 *m, uint32_t s) {
    m->mt[0] = s;
    for (int i = 1; i < MT_N; i++)
        m->mt[i] = 1812433253u * (m->mt[i - 1] ^ (m->mt[i - 1] >> 30)) + (uint32_t)i;
    m->index = MT_N;
}

void mt_init_by_array(mt19937 *m, const uint32_t *key, int n) {
    mt_init_genrand(m, 19650218u);
    uint32_t *mt = m->mt;
    int i = 1, j = 0;
    for (int k = MT_N > n ? MT_N : n; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++, j++;
        if (i >= MT_N) { mt[0] = mt[MT_N - 1]; i = 1; }
        if (j >= n) j = 0;
    }
    for (int k = MT_N - 1; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= MT_N) { mt[0] = mt[MT_N - 1]; i = 1; }
    }
    mt[0] = 0x80000000u; /* a non-zero initial state is guaranteed */
    m->index = MT_N;
}

uint32_t mt_next32(mt19937 *m) {
    static const uint32_t mag01[2] = {0u, 0x9908b0dfu};
    uint32_t *mt = m->mt, y;
    if (m->index >= MT_N) { /* regenerate the whole block */
        int kk;
        for (kk = 0; kk < MT_N - MT_M; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + MT_M] ^ (y >> 1) ^ mag01[y & 1u];
        }
        for (; kk < MT_N - 1; kk++) {
            y = (mt[kk] & 0x80000000u) | (mt[kk + 1] & 0x7fffffffu);
            mt[kk] = mt[kk + (MT_M - MT_N)] ^ (y >> 1) ^ mag01[y & 1u];
        }
        y = (mt[MT_N - 1] & 0x80000000u) | (mt[0] & 0x7fffffffu);
        mt[MT_N - 1] = mt[MT_M - 1] ^ (y >> 1) ^ mag01[y & 1u];
        m->index = 0;
    }
    y = mt[m->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* ---- CPython random ------------------------------------------------------------------- */
void py_random_seed(mt19937 *m, uint64_t seed) {
    /* the integer's 32-bit words, least significant first; zero is one zero word */
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    mt_init_by_array(m, key, key[1] ? 2 : 1);
}

uint32_t py_getrandbits(mt19937 *m, int k) { return mt_next32(m) >> (32 - k); }

static int bit_length(uint32_t n) {
    int k = 0;
    while (n) k++, n >>= 1;
    return k;
}

uint32_t py_randbelow(mt19937 *m, uint32_t n) {
    int k = bit_length(n);
    uint32_t r = py_getrandbits(m, k);
    while (r >= n) r = py_getrandbits(m, k);
    return r;
}

int py_sample(mt19937 *m, int n, int k, int *out) {
    if (k < 0 || k > n) return -1;
    /* CPython's cut between the two algorithms: a list of n costs less than a set of k
     * up to this size (21 + the set's table size for k > 5) */
    long setsize = 21;
    if (k > 5) setsize += (long)pow(4.0, ceil(log((double)k * 3) / log(4.0)));
    if (n <= setsize) {
        int *pool = malloc((size_t)(n > 0 ? n : 1) * sizeof *pool);
        if (!pool) return -1;
        for (int i = 0; i < n; i++) pool[i] = i;
        for (int i = 0; i < k; i++) {
            uint32_t j = py_randbelow(m, (uint32_t)(n - i));
            out[i] = pool[j];
            pool[j] = pool[n - i - 1]; /* the last unselected item fills the hole */
        }
        free(pool);
        return 0;
    }
    unsigned char *selected = calloc((size_t)n, 1);
    if (!selected) return -1;
    for (int i = 0; i < k; i++) {
        uint32_t j = py_randbelow(m, (uint32_t)n);
        while (selected[j]) j = py_randbelow(m, (uint32_t)n);
        selected[j] = 1;
        out[i] = (int)j;
    }
    free(selected);
    return 0;
}

/* ---- numpy legacy RandomState --------------------------------------------------------- */
void np_random_seed(mt19937 *m, uint32_t seed) { mt_init_genrand(m, seed); }

uint32_t np_random_interval(mt19937 *m, uint32_t max) {
    if (max == 0) return 0;
    uint32_t mask = max, v;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    while ((v = mt_next32(m) & mask) > max) {}
    return v;
}

void np_permutation(mt19937 *m, int n, int *out) {
    for (int i = 0; i < n; i++) out[i] = i;
    for (int i = n - 1; i >= 1; i--) {
        int j = (int)np_random_interval(m, (uint32_t)i), t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

int np_choice(mt19937 *m, int n, int k, int *out) {
    if (k < 0 || k > n) return -1;
    int *perm = malloc((size_t)(n > 0 ? n : 1) * sizeof *perm);
    if (!perm) return -1;
    np_permutation(m, n, perm);
    memcpy(out, perm, (size_t)k * sizeof *out);
    free(perm);
    return 0;
}

void py_shuffle(mt19937 *m, int *x, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)py_randbelow(m, (uint32_t)(i + 1)), t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}
