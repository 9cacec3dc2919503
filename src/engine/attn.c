/*
 * attn.c: the scalar reference of the attention kernel (it defines the result the SIMD
 * levels approximate) and the selection of a level. See attn.h.
 *
 * The reference treats each q head on its own, in the three passes every level keeps:
 * scores (scaled dot, optional soft cap) and their maximum; exp(score - max) summed in
 * position order, then normalised; the probability-weighted sum of V rows in position order.
 * The levels differ in fusing multiply-adds, in how the exp is computed (vexp_x86.h) and in
 * how the sum of exp is bracketed.
 */
#include "engine/attn.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine/kernels.h"
#include "format/quant.h"

/* A row of scores per head, from p0's K block to p1's (at most n_pos + 7 positions, rounded
 * up to 8), and 8 more for the SIMD softmax's padded last vector. */
size_t attn_scratch_floats(int n_q, int n_pos) {
    return (size_t)n_q * (size_t)(((n_pos + 14) & ~7) + 8);
}

typedef float f32x8 __attribute__((vector_size(32)));

/* Element i of a K or V cache of the given type, as a float (an F16 element widens exactly). */
static inline float kv_at(const void *base, int type, size_t i) {
    return type == DT_F16 ? fp16_to_fp32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

static void attn_scalar(const attn_args *a) {
    int hd = a->head_dim, n = a->p1 - a->p0;
    size_t ss = (size_t)n;
    for (int h = 0; h < a->n_q; h++) {
        const float *q = a->q + (size_t)h * hd;
        float *sc = a->scores + (size_t)h * ss, mx = -INFINITY;
        for (int b = a->p0 >> 3; b << 3 < a->p1; b++) {
            /* the 8 positions of a K block side by side, in a generic vector (GCC left to
             * itself vectorised over d here and spent its time shuffling) */
            size_t kb = attn_k_index(b << 3, 0, hd);
            f32x8 acc = {0};
            for (int d = 0; d < hd; d++) {
                f32x8 kd;
                if (a->type_k == DT_F16)
                    for (int l = 0; l < 8; l++) kd[l] = kv_at(a->k, DT_F16, kb + (size_t)d * 8 + l);
                else
                    memcpy(&kd, (const float *)a->k + kb + (size_t)d * 8, sizeof kd);
                acc += q[d] * kd;
            }
            for (int l = 0; l < 8; l++) {
                int j = (b << 3) + l - a->p0;
                if (j >= 0 && j < n) sc[j] = acc[l];
            }
        }
        for (int j = 0; j < n; j++) {
            float s = sc[j] * a->scale;
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
            size_t v = (size_t)(a->p0 + j) * a->v_stride;
            float w = sc[j] * inv;
            for (int i = 0; i < hd; i++) o[i] += w * kv_at(a->v, a->type_v, v + (size_t)i);
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
