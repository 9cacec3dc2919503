/*
 * vexp_x86.h: exp of float vectors, for the AVX2 / AVX-512 kernel files that include it (the
 * including file's target flags decide the encoding). One definition, so that attention's
 * softmax and the SiLU gate round alike at every level that uses it.
 *
 * exp is evaluated in double (relative error under 1e-12) and rounded once to float, so the
 * result is the correctly rounded one but where the true value lies within 1e-12 of a
 * rounding midpoint. glibc's expf (within 0.502 ulp) works the same way, so the two agree
 * but in rare cases, and then by one ulp: about 1 input in 10^4 (tests/test_act.c), and in
 * each such case checked (every 7th negative float down to -110) this value was the
 * correctly rounded one and expf's was not.
 */
#ifndef DUET_VEXP_X86_H
#define DUET_VEXP_X86_H

#include <immintrin.h>

/* exp of 4 doubles: x = n*ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series to r^10/10!
 * (the next term is under 3e-13 relative), times 2^n added into the exponent. x is clamped
 * to [-110, 100], whose ends round to 0 and inf in float as the true values do; NaN passes
 * through. */
static inline __attribute__((always_inline)) __m256d exp4d(__m256d x) {
    x = _mm256_min_pd(_mm256_set1_pd(100.0), _mm256_max_pd(_mm256_set1_pd(-110.0), x));
    /* adding 1.5*2^52 rounds x*log2(e) to an integer n held in the low mantissa bits */
    const __m256d shift = _mm256_set1_pd(0x1.8p52);
    __m256d t = _mm256_fmadd_pd(x, _mm256_set1_pd(1.4426950408889634074), shift);
    __m256d n = _mm256_sub_pd(t, shift);
    __m256d r = _mm256_fmadd_pd(n, _mm256_set1_pd(-0.69314718055994530942), x);
    static const double c[11] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720,
                                 1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800};
    __m256d p = _mm256_set1_pd(c[10]);
#pragma GCC unroll 10
    for (int i = 9; i >= 0; i--) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c[i]));
    __m256i e = _mm256_slli_epi64(_mm256_castpd_si256(t), 52); /* n << 52, mod 2^64 */
    return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p), e));
}

/* expf of 8 floats (see the top of the file) */
static inline __attribute__((always_inline)) __m256 exp8(__m256 x) {
    __m128 lo = _mm256_cvtpd_ps(exp4d(_mm256_cvtps_pd(_mm256_castps256_ps128(x))));
    __m128 hi = _mm256_cvtpd_ps(exp4d(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1))));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

#endif
