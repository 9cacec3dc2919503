/* bandwidth.c: measure the machine's two limits: the memory read bandwidth, the limit of
 * token generation (every weight streams from memory once per token), and the FP32 FMA
 * peak, the reference for prompt processing (arithmetic bound). Used by `duet bench` to
 * print the share of each limit reached. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/common.h"
#include "base/threadpool.h"

typedef struct bw_job {
    const uint64_t *buf;
    size_t n;
    uint64_t sink[64];
} bw_job;

#if defined(__x86_64__)
#include <immintrin.h>
/* The same with 256-bit loads, as the generation kernels read weights: the 64-bit loop
 * measured 44 GB/s where these loads reached 56-62 GB/s in the same minutes, which would
 * flatter every "share of the limit" figure. */
__attribute__((target("avx2"))) static uint64_t bw_avx2(const uint64_t *b, long lo, long hi) {
    __m256i acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_si256();
    for (long i = lo * 256; i < hi * 256; i += 32)
        for (int k = 0; k < 8; k++)
            acc[k] = _mm256_xor_si256(acc[k], _mm256_load_si256((const __m256i *)(b + i) + k));
    for (int k = 1; k < 8; k++) acc[0] = _mm256_xor_si256(acc[0], acc[k]);
    return (uint64_t)_mm256_extract_epi64(acc[0], 0);
}
#endif

static void bw_worker(void *ctx, int ith, int nth) {
    bw_job *j = ctx;
    long lo, hi;
    tp_split((long)(j->n / 256), ith, nth, &lo, &hi);
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        j->sink[ith & 63] = bw_avx2(j->buf, lo, hi);
        return;
    }
#endif
    /* 32 independent accumulators over four 64-byte lines per step (the compiler makes them
     * vector loads): enough loads in flight that latency does not cap the rate */
    uint64_t acc[32] = {0};
    for (long i = lo * 256; i < hi * 256; i += 32)
        for (int k = 0; k < 32; k++) acc[k] ^= j->buf[i + k];
    uint64_t x = 0;
    for (int k = 0; k < 32; k++) x ^= acc[k];
    j->sink[ith & 63] = x;
}

double duet_memory_bandwidth(int n_threads, size_t bytes, int reps) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    memset(p, 1, bytes); /* fault every page in before timing */
    threadpool *tp = tp_new(n_threads);
    bw_job job = {.buf = p, .n = bytes / 8};
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = duet_time_s();
        tp_run(tp, bw_worker, &job);
        double dt = duet_time_s() - t0;
        double bw = (double)(job.n / 256 * 256 * 8) / dt;
        if (bw > best) best = bw;
    }
    tp_free(tp);
    munmap(p, bytes);
    return best;
}

/* ---- FP32 FMA peak ----------------------------------------------------------------------
 * Ten independent FMA chains per thread (more than latency x throughput, 4 x 2, on current
 * x86 cores), on the widest vectors the CPU has; the empty asm keeps the compiler from
 * folding the chains. */
typedef struct fma_job {
    long iters;
    int wide; /* 0 scalar-width C, 1 AVX2 + FMA, 2 AVX-512 */
    float sink[64];
} fma_job;

#define FMA_CHAINS 10

/* Ten named chains (GCC keeps an array of vectors on the stack even when unrolled). */
#define FMA_STEP(op, v) v = op(v, m, c); __asm__("" : "+v"(v))
#define FMA_BODY(T, set1, op, add)                                                          \
    T m = set1(0.999999f), c = set1(1e-7f), a0 = set1(0), a1 = set1(1), a2 = set1(2),      \
      a3 = set1(3), a4 = set1(4), a5 = set1(5), a6 = set1(6), a7 = set1(7), a8 = set1(8),  \
      a9 = set1(9);                                                                         \
    for (long i = 0; i < iters; i++) {                                                      \
        FMA_STEP(op, a0); FMA_STEP(op, a1); FMA_STEP(op, a2); FMA_STEP(op, a3);             \
        FMA_STEP(op, a4); FMA_STEP(op, a5); FMA_STEP(op, a6); FMA_STEP(op, a7);             \
        FMA_STEP(op, a8); FMA_STEP(op, a9);                                                 \
    }                                                                                       \
    a0 = add(add(add(a0, a1), add(a2, a3)), add(add(a4, a5), add(a6, a7)));                 \
    a0 = add(a0, add(a8, a9))

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
    FMA_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps);
    return _mm256_cvtss_f32(a0);
}

__attribute__((target("avx512f"))) static float fma_avx512(long iters) {
    FMA_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps);
    return _mm512_reduce_add_ps(a0);
}
#endif

static float fma_scalar(long iters) {
    float a[FMA_CHAINS];
    for (int k = 0; k < FMA_CHAINS; k++) a[k] = (float)k;
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < FMA_CHAINS; k++) a[k] = a[k] * 0.999999f + 1e-7f;
    float s = 0;
    for (int k = 0; k < FMA_CHAINS; k++) s += a[k];
    return s;
}

static int fma_lanes(int wide) { return wide == 2 ? 16 : wide == 1 ? 8 : 1; }

static void fma_worker(void *ctx, int ith, int nth) {
    fma_job *j = ctx;
    (void)nth;
    float r = 0;
#if defined(__x86_64__)
    if (j->wide == 2) r = fma_avx512(j->iters);
    else if (j->wide == 1) r = fma_avx2(j->iters);
    else
#endif
        r = fma_scalar(j->iters);
    j->sink[ith & 63] = r;
}

double duet_fma_peak(int n_threads) {
    threadpool *tp = tp_new(n_threads);
    if (!tp) return 0;
    int n = tp_n_threads(tp), widths[3] = {0, -1, -1};
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) widths[1] = 1;
    if (__builtin_cpu_supports("avx512f")) widths[2] = 2;
#endif
    double best = 0;
    for (int w = 0; w < 3; w++) {
        if (widths[w] < 0) continue;
        fma_job job = {.iters = widths[w] ? 8000000 : 1000000, .wide = widths[w]};
        for (int r = 0; r < 3; r++) {
            double t0 = duet_time_s();
            tp_run(tp, fma_worker, &job);
            double dt = duet_time_s() - t0;
            double flops = 2.0 * FMA_CHAINS * fma_lanes(job.wide) * (double)job.iters * n;
            if (dt > 0 && flops / dt > best) best = flops / dt;
        }
    }
    tp_free(tp);
    return best;
}
