/*
 * act_avx2.c: the gate kernels with AVX2 + FMA (see act.h). The last partial vector of a row
 * goes through a small buffer, so every element takes the same vector path.
 */
#if defined(__x86_64__) || defined(__i386__)

#if !defined(__clang__)
#pragma GCC target("no-avx512f") /* run on AVX2-only CPUs too */
#endif

#include <string.h>

#include "engine/act.h"
#include "engine/vexp_x86.h"

static inline __m256 silu_mul8(__m256 g, __m256 u) {
    __m256 e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f))); /* -g, as the reference */
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

void act_avx2_silu_mul(float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(g + i, silu_mul8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) {
        float gb[8] = {0}, ub[8] = {0};
        memcpy(gb, g + i, (n - i) * sizeof(float));
        memcpy(ub, u + i, (n - i) * sizeof(float));
        _mm256_storeu_ps(gb, silu_mul8(_mm256_loadu_ps(gb), _mm256_loadu_ps(ub)));
        memcpy(g + i, gb, (n - i) * sizeof(float));
    }
}

void act_avx2_exp(const float *x, float *y, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float b[8] = {0};
        memcpy(b, x + i, (n - i) * sizeof(float));
        _mm256_storeu_ps(b, exp8(_mm256_loadu_ps(b)));
        memcpy(y + i, b, (n - i) * sizeof(float));
    }
}

#endif
