/*
 * attn_avx2.c: the attention kernel with AVX2 + FMA (256-bit vectors), and the template of
 * the AVX-512 level: attn_avx512.c defines AX_AVX512 and includes this file, compiled with
 * EVEX encodings and 32 vector registers, which buy larger register tiles (as in
 * kernels_avx2.c / kernels_avx512.c).
 *
 * Scores: K is stored in blocks of 8 positions, dims major (attn.h), so a vector holds one
 * dim of 8 positions; a tile of SH q heads x SB blocks keeps one accumulator vector per
 * (head, block) and per dim loads SB K vectors and broadcasts SH q values. Each score is
 * thus one chain of FMAs over the dims in order, in its own lane. V: a tile of VH heads x VC
 * 8-float chunks of the output keeps its accumulators in registers over a block of
 * positions, so each V row load serves VH heads. Each (head, position) score and each
 * output float sees the same operations whatever the tile shape, the heads beside it or the
 * number of heads in the call (attn.h). F16 caches load 8 halves and widen them with F16C
 * (exact) where F32 ones load 8 floats; nothing else changes.
 */
#if defined(__x86_64__) || defined(__i386__)

#if !defined(AX_AVX512) && !defined(__clang__)
#pragma GCC target("no-avx512f") /* keep this level to what an AVX2-only CPU runs */
#endif

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include <string.h>

#include "engine/attn.h"
#include "engine/vexp_x86.h"
#include "format/quant.h"

#ifdef AX_AVX512
#define AX_NAME attn_avx512
#define SH 4 /* score tile: heads x blocks of 8 positions */
#define SB 4
#define VH 4 /* V tile: heads x 8-float chunks */
#define VC 4
#else
#define AX_NAME attn_avx2
#define SH 4
#define SB 2
#define VH 2
#define VC 4
#endif
#define AX_PBLOCK 64 /* positions per V block: 64 rows of a 64-dim head are 16 KiB, in L1 */

#define AX_INLINE static inline __attribute__((always_inline))
#ifdef __clang__
#define AX_UNROLL _Pragma("clang loop unroll(full)")
#else
#define AX_UNROLL _Pragma("GCC unroll 16")
#endif
/* keep a loaded vector in a register rather than folding its load into every FMA */
#define AX_IN_REGISTER(v) __asm__("" : "+v"(v))

/* lanes [0, n) set, for the head_dim % 8 tail */
AX_INLINE __m256i tail_mask(int n) {
    static const int32_t bits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(bits + 8 - n));
}

/* 8 F16 elements widened to floats (exact) */
AX_INLINE __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* The first n < 8 F16 elements at p, the other lanes 0 (a masked load reads no further) */
AX_INLINE __m256 load_f16_part(const uint16_t *p, int n) {
    uint16_t t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof *t);
    return load_f16(t);
}

/* Raw dots of heads [h, h+nh) with the positions of K blocks [b, b+nb), into sc rows of ss
 * floats that start at block b0. Lanes of positions outside the call's range hold dots
 * with whatever the cache has there; nothing reads them. */
AX_INLINE void score_tile(const int nh, const int nb, const int kf16, const attn_args *a, int h,
                          int b, int b0, float *sc, size_t ss) {
    const int hd = a->head_dim;
    const float *q = a->q + (size_t)h * hd;
    const float *kb = kf16 ? NULL : (const float *)a->k + (size_t)b * hd * 8;
    const uint16_t *kh = kf16 ? (const uint16_t *)a->k + (size_t)b * hd * 8 : NULL;
    __m256 acc[SH][SB];
    AX_UNROLL
    for (int i = 0; i < nh; i++)
        AX_UNROLL
        for (int j = 0; j < nb; j++) acc[i][j] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d++) {
        __m256 kv[SB];
        AX_UNROLL
        for (int j = 0; j < nb; j++) {
            kv[j] = kf16 ? load_f16(kh + ((size_t)j * hd + d) * 8)
                         : _mm256_loadu_ps(kb + ((size_t)j * hd + d) * 8);
            AX_IN_REGISTER(kv[j]);
        }
        AX_UNROLL
        for (int i = 0; i < nh; i++) {
            __m256 qb = _mm256_broadcast_ss(q + (size_t)i * hd + d);
            AX_UNROLL
            for (int j = 0; j < nb; j++) acc[i][j] = _mm256_fmadd_ps(qb, kv[j], acc[i][j]);
        }
    }
    AX_UNROLL
    for (int i = 0; i < nh; i++)
        AX_UNROLL
        for (int j = 0; j < nb; j++)
            _mm256_storeu_ps(sc + (size_t)(h + i) * ss + (size_t)(b - b0 + j) * 8, acc[i][j]);
}

/* score_tile with nh in [1, SH], nb in [1, SB] and the K type as compile-time constants */
#define AX_SCASE(NH, NB)                                                                    \
    case (NH) * 8 + (NB):                                                                   \
        if ((NH) > SH || (NB) > SB) break;                                                  \
        if (a->type_k == DT_F16) score_tile(NH, NB, 1, a, h, b, b0, sc, ss);                \
        else score_tile(NH, NB, 0, a, h, b, b0, sc, ss);                                    \
        break;
#define AX_SROW(NH) AX_SCASE(NH, 1) AX_SCASE(NH, 2) AX_SCASE(NH, 3) AX_SCASE(NH, 4)

static void score_tile_any(int nh, int nb, const attn_args *a, int h, int b, int b0, float *sc,
                           size_t ss) {
    switch (nh * 8 + nb) { AX_SROW(1) AX_SROW(2) AX_SROW(3) AX_SROW(4) default: break; }
}

/* out[h+i][d0 + 8c ..] for i < nh, c < nc, over positions [q0, q1) of the probabilities
 * w (rows of ss floats indexed from p0); the last chunk masked when `partial`. first: start
 * from zero, else from what the previous position block left in out. */
AX_INLINE void v_tile(const int nh, const int nc, const int partial, const int vf16,
                      const attn_args *a, int h, int d0, int q0, int q1, const float *w,
                      size_t ss, int first) {
    const int hd = a->head_dim, tail = partial ? hd - (d0 + 8 * (nc - 1)) : 8;
    __m256i m = tail_mask(tail);
    __m256 acc[VH][VC];
    AX_UNROLL
    for (int i = 0; i < nh; i++) {
        float *o = a->out + (size_t)(h + i) * hd + d0;
        AX_UNROLL
        for (int c = 0; c < nc; c++)
            acc[i][c] = first ? _mm256_setzero_ps()
                        : partial && c == nc - 1 ? _mm256_maskload_ps(o + 8 * c, m)
                                                 : _mm256_loadu_ps(o + 8 * c);
    }
    const float *wr = w + (size_t)h * ss - a->p0;
    for (int p = q0; p < q1; p++) {
        const size_t vo = (size_t)p * a->v_stride + d0;
        const float *vr = vf16 ? NULL : (const float *)a->v + vo;
        const uint16_t *vh = vf16 ? (const uint16_t *)a->v + vo : NULL;
        __m256 vv[VC];
        AX_UNROLL
        for (int c = 0; c < nc; c++) {
            if (vf16)
                vv[c] = partial && c == nc - 1 ? load_f16_part(vh + 8 * c, tail)
                                               : load_f16(vh + 8 * c);
            else
                vv[c] = partial && c == nc - 1 ? _mm256_maskload_ps(vr + 8 * c, m)
                                               : _mm256_loadu_ps(vr + 8 * c);
            AX_IN_REGISTER(vv[c]);
        }
        AX_UNROLL
        for (int i = 0; i < nh; i++) {
            __m256 b = _mm256_broadcast_ss(wr + (size_t)i * ss + p);
            AX_UNROLL
            for (int c = 0; c < nc; c++) acc[i][c] = _mm256_fmadd_ps(b, vv[c], acc[i][c]);
        }
    }
    AX_UNROLL
    for (int i = 0; i < nh; i++) {
        float *o = a->out + (size_t)(h + i) * hd + d0;
        AX_UNROLL
        for (int c = 0; c < nc; c++) {
            if (partial && c == nc - 1) _mm256_maskstore_ps(o + 8 * c, m, acc[i][c]);
            else _mm256_storeu_ps(o + 8 * c, acc[i][c]);
        }
    }
}

/* v_tile with nh in {VH, 1}, nc in [1, VC], partial and the V type as compile-time constants */
#define AX_VCASE(NH, NC)                                                                    \
    case NC:                                                                                \
        if (a->type_v == DT_F16) {                                                          \
            if (partial) v_tile(NH, NC, 1, 1, a, h, d0, q0, q1, w, ss, first);              \
            else v_tile(NH, NC, 0, 1, a, h, d0, q0, q1, w, ss, first);                      \
        } else if (partial) v_tile(NH, NC, 1, 0, a, h, d0, q0, q1, w, ss, first);           \
        else v_tile(NH, NC, 0, 0, a, h, d0, q0, q1, w, ss, first);                          \
        break;
#define AX_VSWITCH(NH)                                                                      \
    switch (nc) { AX_VCASE(NH, 1) AX_VCASE(NH, 2) AX_VCASE(NH, 3) AX_VCASE(NH, 4) }

static void v_tile_any(int nh, int nc, int partial, const attn_args *a, int h, int d0, int q0,
                       int q1, const float *w, size_t ss, int first) {
    if (nh == VH) AX_VSWITCH(VH)
    else AX_VSWITCH(1)
}

/* Scale (and cap) the scores of one head in place, then turn them into probabilities:
 * exp(s - max), summed in eight lanes (position j in lane j % 8) and then across them,
 * then times 1/sum. sc has room for n rounded up to 8. */
static void softmax_row(float *sc, int n, float scale, float cap) {
    __m256 vm = _mm256_set1_ps(-INFINITY);
    const int n8 = n & ~7, rem = n - n8;
    const __m256i m = tail_mask(rem);
    if (cap > 0) {
        for (int j = 0; j < n; j++) sc[j] = cap * tanhf(sc[j] * scale / cap);
        for (int j = 0; j < n8; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(sc + j));
    } else {
        __m256 vs = _mm256_set1_ps(scale);
        for (int j = 0; j < n8; j += 8) {
            __m256 s = _mm256_mul_ps(_mm256_loadu_ps(sc + j), vs);
            _mm256_storeu_ps(sc + j, s);
            vm = _mm256_max_ps(vm, s);
        }
        for (int j = n8; j < n; j++) sc[j] *= scale;
    }
    float t[8], mx = -INFINITY;
    _mm256_storeu_ps(t, vm);
    for (int i = 0; i < 8; i++) mx = t[i] > mx ? t[i] : mx;
    for (int j = n8; j < n; j++) mx = sc[j] > mx ? sc[j] : mx;
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (int j = 0; j < n8; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), vmx));
        _mm256_storeu_ps(sc + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (rem) { /* the padding lanes add zeros */
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + n8), vmx)),
                                 _mm256_castsi256_ps(m));
        _mm256_storeu_ps(sc + n8, e);
        acc = _mm256_add_ps(acc, e);
    }
    /* lanes summed as ((0+4)+(2+6))+((1+5)+(3+7)), the same tree every time */
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    const __m256 vi = _mm256_set1_ps(1.0f / _mm_cvtss_f32(s4));
    for (int j = 0; j < n; j += 8) _mm256_storeu_ps(sc + j, _mm256_mul_ps(_mm256_loadu_ps(sc + j), vi));
}

void AX_NAME(const attn_args *a) {
    const int hd = a->head_dim, n = a->p1 - a->p0, nq = a->n_q;
    /* score rows start at p0's K block: o0 = p0 - that block's first position */
    const int b0 = a->p0 >> 3, b1 = (a->p1 + 7) >> 3, o0 = a->p0 & 7;
    const size_t ss = (size_t)(b1 - b0) * 8 + 8; /* + 8: softmax's padded tail from o0 */
    float *sc = a->scores;
    for (int b = b0; b < b1; b += SB)
        for (int h = 0; h < nq; h += SH)
            score_tile_any(nq - h < SH ? nq - h : SH, b1 - b < SB ? b1 - b : SB, a, h, b, b0, sc, ss);
    sc += o0;
    for (int h = 0; h < nq; h++) softmax_row(sc + (size_t)h * ss, n, a->scale, a->softcap);
    const int n_chunks = (hd + 7) / 8, partial = hd % 8 != 0;
    for (int q0 = a->p0; q0 < a->p1; q0 += AX_PBLOCK) {
        int q1 = q0 + AX_PBLOCK < a->p1 ? q0 + AX_PBLOCK : a->p1;
        for (int h = 0; h < nq; h += VH) {
            int nh = nq - h >= VH ? VH : 1, hn = nh == VH ? 1 : nq - h;
            for (int r = 0; r < hn; r++) /* nh == 1: the leftover heads one by one */
                for (int c = 0; c < n_chunks; c += VC) {
                    int nc = n_chunks - c < VC ? n_chunks - c : VC;
                    v_tile_any(nh, nc, partial && c + nc == n_chunks, a, h + r, 8 * c, q0, q1,
                               sc, ss, q0 == a->p0);
                }
            if (nh == 1) break;
        }
    }
}

#endif
