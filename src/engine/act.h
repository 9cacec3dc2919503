/*
 * act.h: elementwise kernels of the feed-forward gate: SiLU(gate) * up, and the float exp
 * they are built on. A scalar reference (act.c, with libm's expf) and an AVX2 variant
 * (act_avx2.c, also used at the AVX-512 level: 256-bit elementwise code gains nothing from
 * EVEX) chosen at run time. Each element is computed on its own, so results do not depend
 * on how a row is split over threads.
 */
#ifndef DUET_ACT_H
#define DUET_ACT_H

#include <stddef.h>

/* g[i] = g[i] / (1 + exp(-g[i])) * u[i] for i < n */
typedef void (*act_silu_mul_fn)(float *g, const float *u, size_t n);
/* y[i] = exp(x[i]) for i < n (tests measure the SIMD exp against expf) */
typedef void (*act_exp_fn)(const float *x, float *y, size_t n);

/* The kernels of a level (KLEVEL_*); NULL if the CPU lacks that level. */
act_silu_mul_fn act_silu_mul(int level);
act_exp_fn act_exp(int level);

/* The AVX2 variants (act_avx2.c); use the selectors, which check the CPU. */
void act_avx2_silu_mul(float *g, const float *u, size_t n);
void act_avx2_exp(const float *x, float *y, size_t n);

#endif
