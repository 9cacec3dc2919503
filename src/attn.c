/*
 * attn.c: the scalar reference of the attention kernel (it defines the result the SIMD
 * levels approximate) and the selection of a level. See attn.h.
 *
 * The reference treats each q head on its own, in the three passes every level keeps:
 * scores (scaled dot, optional soft cap) and their maximum; exp(score - max) summed in
 * position order, then normalised; the probability-weighted sum of V rows in position order.
 * The levels differ only in how a dot product is summed and in fusing V's multiply-add.
 */
#include "attn.h"

#include <math.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"

size_t attn_scratch_floats(int n_q, int n_pos) {
    return (size_t)n_q * (size_t)((n_pos + 7) & ~7); /* rows padded for 8-wide stores */
}

static void attn_scalar(const attn_args *a) {
    int hd = a->head_dim, n = a->p1 - a->p0;
    size_t ss = attn_scratch_floats(1, n);
    for (int h = 0; h < a->n_q; h++) {
        const float *q = a->q + (size_t)h * hd;
        float *sc = a->scores + (size_t)h * ss, mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            float s = kvec_dot_f32(q, a->k + (size_t)(a->p0 + j) * a->kv_stride, hd) * a->scale;
            if (a->softcap > 0) s = a->softcap * tanhf(s / a->softcap);
            sc[j] = s;
            mx = s > mx ? s : mx;
        }
        float sum = 0;
        for (int j = 0; j < n; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        float inv = 1.0f / sum;
        float *o = a->out + (size_t)h * hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int j = 0; j < n; j++) {
            const float *v = a->v + (size_t)(a->p0 + j) * a->kv_stride;
            float w = sc[j] * inv;
            for (int i = 0; i < hd; i++) o[i] += w * v[i];
        }
    }
}

attn_fn attn_kernel(int level) {
    /* a level is available when the matrix kernels have it (they probe the CPU) */
    if (!kernels_get_level(DT_F32, level)) return NULL;
#if defined(__x86_64__) || defined(__i386__)
    if (level == KLEVEL_AVX512) return attn_avx512;
    if (level == KLEVEL_AVX2) return attn_avx2;
#endif
    return level == KLEVEL_SCALAR ? attn_scalar : NULL;
}
