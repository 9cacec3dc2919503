/*
 * act.c: the scalar reference of the gate kernels (act.h) and the selection of a level.
 */
#include "engine/act.h"

#include <math.h>

#include "engine/kernels.h"
#include "format/quant.h"

static void silu_mul_scalar(float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void exp_scalar(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

/* a level is available when the matrix kernels have it (they probe the CPU) */
static int simd(int level) {
#if defined(__x86_64__) || defined(__i386__)
    return level >= KLEVEL_AVX2 && kernels_get_level(DT_F32, level);
#else
    return 0;
#endif
}

act_silu_mul_fn act_silu_mul(int level) {
#if defined(__x86_64__) || defined(__i386__)
    if (simd(level)) return act_avx2_silu_mul;
#endif
    return level == KLEVEL_SCALAR ? silu_mul_scalar : NULL;
}

act_exp_fn act_exp(int level) {
#if defined(__x86_64__) || defined(__i386__)
    if (simd(level)) return act_avx2_exp;
#endif
    return level == KLEVEL_SCALAR ? exp_scalar : NULL;
}
