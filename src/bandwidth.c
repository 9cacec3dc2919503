/* bandwidth.c: measure the memory read bandwidth, the limit of token generation (every
 * weight streams from memory once per token). Used by `duet bench` to print the share of
 * the limit reached. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"
#include "threadpool.h"

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
