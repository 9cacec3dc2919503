/*
 * bench_kernels.c: kernels_matmul against this machine's own limits.
 *   - read bandwidth: a 1 GiB buffer (far beyond the 32 MiB L3) summed with vector loads,
 *     each thread reading its half as a few sequential streams
 *   - FMA peak: independent register-only FMA chains (256- and 512-bit, the faster)
 *   - decode: matrix-vector, n_out x n_in weights, rotating over copies totalling >= 512 MiB
 *     so that every call streams from memory (as a model's layers do); GB/s of weights,
 *     against read passes interleaved with the matvec passes (the bandwidth a shared
 *     machine gives varies by the minute)
 *   - prefill: n_tok tokens through n_out x n_in weights, activation conversion included;
 *     GFLOP/s counted as 2*n_out*n_in*n_tok
 * Each figure is the best of several runs, for 1 and N threads.
 * Not part of the test run. Build by hand from the repository root:
 *   gcc -O3 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -c src/engine/kernels_avx2.c \
 *       -mavx2 -mfma -mf16c -o /tmp/ka2.o
 *   gcc -O3 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -c src/engine/kernels_avx512.c \
 *       -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c -o /tmp/ka5.o
 *   gcc -O3 -march=native -std=c11 -D_GNU_SOURCE -Iinclude -Isrc bench/bench_kernels.c \
 *       src/engine/kernels.c src/format/quant.c src/base/threadpool.c src/base/common.c \
 *       /tmp/ka2.o /tmp/ka5.o -lm -pthread -o /tmp/bench_kernels
 * Usage: bench_kernels [n_threads (default: online CPUs)] [level: scalar|avx2|avx512]
 */
#include <immintrin.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/common.h"
#include "engine/kernels.h"
#include "format/quant.h"
#include "base/threadpool.h"

#define REPS 5

static void *big_alloc(size_t n) {
    size_t align = 2u << 20;
    void *p = aligned_alloc(align, (n + align - 1) / align * align);
    if (!p) { fprintf(stderr, "out of memory (%zu bytes)\n", n); exit(1); }
    madvise(p, n, MADV_HUGEPAGE);
    memset(p, 1, n);
    return p;
}

/* ---- read bandwidth -------------------------------------------------------------------- */
/* Each thread reads its share as RD_LANES interleaved sequential streams (one stream alone
 * measured ~30% slower here), lanes a few KiB off a power of two apart so that they do not
 * collide in the same DRAM banks. */
#define RD_LANES 6
typedef struct { const char *buf; size_t n; _Atomic uint64_t sink; } rd_ctx;

static void rd_run(void *p, int ith, int nth) {
    rd_ctx *c = p;
    size_t part = c->n / (size_t)nth, lane = (part / RD_LANES - 8192) / 4096 * 4096;
    const char *base = c->buf + part * (size_t)ith;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
    for (size_t off = 0; off < lane; off += 128)
        for (int l = 0; l < RD_LANES; l++) {
            const __m256i *v = (const __m256i *)(base + (size_t)l * (lane + 1088) + off);
            a0 = _mm256_add_epi64(a0, _mm256_add_epi64(_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1)));
            a1 = _mm256_add_epi64(a1, _mm256_add_epi64(_mm256_loadu_si256(v + 2), _mm256_loadu_si256(v + 3)));
        }
    __m256i s = _mm256_add_epi64(a0, a1);
    atomic_fetch_add(&c->sink, (uint64_t)_mm256_extract_epi64(s, 0) + (uint64_t)_mm256_extract_epi64(s, 3));
}

/* Seconds for one pass (bytes read: bench_read_bytes). */
static double read_pass(threadpool *tp, const char *buf, size_t n) {
    rd_ctx c = {.buf = buf, .n = n};
    double t0 = duet_time_s();
    tp_run(tp, rd_run, &c);
    return duet_time_s() - t0;
}
static size_t read_bytes(size_t n, int nth) {
    return (size_t)nth * RD_LANES * ((n / (size_t)nth / RD_LANES - 8192) / 4096 * 4096);
}

/* ---- FMA peak -------------------------------------------------------------------------- */
typedef struct { long iters; _Atomic int sink; } fma_ctx;

/* 16 independent chains: enough to cover FMA latency x pipes on current cores. */
__attribute__((target("avx512f"))) static void fma_run512(void *p, int ith, int nth) {
    fma_ctx *c = p;
    __m512 a[16], m = _mm512_set1_ps(0.999999f), k = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)(i + ith));
    for (long it = 0; it < c->iters; it++)
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], m, k);
    __m512 s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
    atomic_fetch_add(&c->sink, (int)_mm512_reduce_add_ps(s));
}

static void fma_run256(void *p, int ith, int nth) {
    fma_ctx *c = p;
    __m256 a[12], m = _mm256_set1_ps(0.999999f), k = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)(i + ith));
    for (long it = 0; it < c->iters; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, k);
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float f[8];
    _mm256_storeu_ps(f, s);
    atomic_fetch_add(&c->sink, (int)f[0]);
}

static double bench_fma(threadpool *tp) {
    double best = 0;
    for (int wide = 0; wide < 2; wide++) { /* whichever width runs faster is the peak */
        if (wide && !__builtin_cpu_supports("avx512f")) break;
        fma_ctx c = {.iters = 20000000};
        for (int r = 0; r < REPS; r++) {
            double t0 = duet_time_s();
            tp_run(tp, wide ? fma_run512 : fma_run256, &c);
            double dt = duet_time_s() - t0;
            double g = (double)c.iters * (wide ? 16 * 16 : 12 * 8) * 2 * tp_n_threads(tp) / dt / 1e9;
            if (g > best) best = g;
        }
    }
    return best;
}

/* ---- kernels_matmul -------------------------------------------------------------------- */
static void *make_weights(int type, int64_t n_out, int64_t n_in, int copies) {
    size_t rs = dtype_row_size(type, n_in), total = rs * (size_t)n_out;
    char *w = big_alloc(total * (size_t)copies);
    float *f = malloc((size_t)n_in * sizeof(float));
    uint32_t s = 12345;
    for (int64_t r = 0; r < n_out; r++) {
        for (int64_t i = 0; i < n_in; i++) {
            s = s * 1664525u + 1013904223u;
            f[i] = (float)(s >> 8) / (float)(1 << 24) - 0.5f;
        }
        quant_quantize_row(type, f, w + r * rs, n_in);
    }
    for (int c = 1; c < copies; c++) memcpy(w + c * total, w, total);
    free(f);
    return w;
}

static double pass_matmul(threadpool *tp, int type, const char *w, int copies, int64_t n_in,
                          int64_t n_out, const float *x, int64_t n_tok, float *y, void *scratch) {
    size_t total = dtype_row_size(type, n_in) * (size_t)n_out;
    double t0 = duet_time_s();
    for (int c = 0; c < copies; c++)
        kernels_matmul(tp, type, w + c * total, n_in, n_out, x, n_tok, y, scratch);
    return (duet_time_s() - t0) / copies;
}

int main(int argc, char **argv) {
    int nth = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2) {
        for (int l = 0; l < KLEVEL_COUNT; l++)
            if (strcmp(argv[2], kernels_level_name(l)) == 0) kernels_set_level(l);
    }
    threadpool *tp1 = tp_new(1), *tpn = tp_new(nth);
    threadpool *pools[2] = {tp1, tpn};
    nth = tp_n_threads(tpn);
    printf("level %s, threads 1 and %d\n", kernels_level_name(kernels_level()), nth);

    /* The memory bandwidth this machine gets varies from minute to minute (other tenants), so
     * each decode figure is compared with read passes interleaved with its own passes. */
    size_t rd_n = (size_t)1 << 30;
    char *rd = big_alloc(rd_n);
    double peak[2];
    for (int p = 0; p < 2; p++) {
        peak[p] = bench_fma(pools[p]);
        printf("%d thread(s): FMA peak %.1f GFLOP/s\n", tp_n_threads(pools[p]), peak[p]);
    }

    static const int types[] = {DT_Q4_0, DT_Q8_0, DT_Q4_K, DT_Q5_K, DT_Q6_K, DT_F16, DT_BF16, DT_F32};
    const int64_t n_out = 2048, n_in = 5632;
    printf("\ndecode: %lld x %lld matrix-vector, weights cycled over copies >= 512 MiB;\n"
           "read = best read pass of a 1 GiB buffer interleaved with the matvec passes\n",
           (long long)n_out, (long long)n_in);
    printf("%-5s %6s | %8s %8s %6s | %8s %8s %6s\n", "type", "MiB", "1t GB/s", "1t read", "ratio",
           "Nt GB/s", "Nt read", "ratio");
    float *x = big_alloc(512 * 5632 * sizeof(float));
    for (int64_t i = 0; i < 512 * 5632; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    float *y = big_alloc(512 * 5632 * sizeof(float));
    void *scratch = big_alloc(kernels_matmul_scratch(DT_Q4_K, 5632, 512) + 64); /* Q8_K: the largest */
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        size_t total = dtype_row_size(types[k], n_in) * (size_t)n_out;
        int copies = (int)((512u << 20) / total) + 1;
        char *w = make_weights(types[k], n_out, n_in, copies);
        printf("%-5s %6.1f", dtype_info(types[k])->name, total / 1048576.0);
        for (int p = 0; p < 2; p++) {
            double best_mv = 1e30, best_rd = 1e30;
            pass_matmul(pools[p], types[k], w, copies, n_in, n_out, x, 1, y, scratch); /* warm-up */
            for (int r = 0; r < REPS; r++) {
                double a = read_pass(pools[p], rd, rd_n);
                double b = pass_matmul(pools[p], types[k], w, copies, n_in, n_out, x, 1, y, scratch);
                if (a < best_rd) best_rd = a;
                if (b < best_mv) best_mv = b;
            }
            double g = (double)total / best_mv / 1e9;
            double bw = (double)read_bytes(rd_n, tp_n_threads(pools[p])) / best_rd / 1e9;
            printf(" | %8.1f %8.1f %5.0f%%", g, bw, 100 * g / bw);
        }
        printf("\n");
        free(w);
    }
    free(rd);

    const int64_t pn = 2048, pt = 512;
    printf("\nprefill: %lld x %lld weights, %lld tokens\n", (long long)pn, (long long)pn, (long long)pt);
    printf("%-5s %12s %12s %10s\n", "type", "1 thr GF/s", "N thr GF/s", "N/FMA peak");
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        char *w = make_weights(types[k], pn, pn, 1);
        double g[2];
        for (int p = 0; p < 2; p++) {
            double best = 1e30;
            pass_matmul(pools[p], types[k], w, 1, pn, pn, x, pt, y, scratch); /* warm-up */
            for (int r = 0; r < REPS; r++) {
                double t = pass_matmul(pools[p], types[k], w, 1, pn, pn, x, pt, y, scratch);
                if (t < best) best = t;
            }
            g[p] = 2.0 * pn * pn * pt / best / 1e9;
        }
        printf("%-5s %12.1f %12.1f %9.0f%%\n", dtype_info(types[k])->name, g[0], g[1], 100 * g[1] / peak[1]);
        free(w);
    }
    free(x);
    free(y);
    free(scratch);
    tp_free(tp1);
    tp_free(tpn);
    return 0;
}
