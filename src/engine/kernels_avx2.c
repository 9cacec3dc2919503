/*
 * kernels_avx2.c: the AVX2 + FMA + F16C level (256-bit vectors), and the template of the
 * AVX-512 level: kernels_avx512.c defines KX_AVX512 and includes this file, which compiles
 * the same code with EVEX encodings (32 vector registers, so larger register tiles) and
 * VNNI (vpdpbusd) for the int8 dot products. Keeping one source keeps the levels' results
 * and tiling logic from drifting apart.
 *
 * Every kernel is one always-inline function of the tile shape (R weight rows x T tokens);
 * vec_dot is the 1x1 instance. Each (row, token) accumulator sees the same sequence of
 * vector operations whatever R and T are, so tiles equal vec_dot bit for bit.
 */
#if defined(__x86_64__) || defined(__i386__)

#if !defined(KX_AVX512) && !defined(__clang__)
/* A -march=native build would otherwise let this level use AVX-512 encodings too; keep it
 * to what an AVX2-only CPU runs, so that it can be tested and measured here. (clang has no
 * such pragma; there the AVX2 level may use what -march allows, which is still correct.) */
#pragma GCC target("no-avx512f")
#endif

#include <immintrin.h>
#include <string.h>

#include "engine/kernels.h"
#include "format/quant.h"

#ifdef KX_AVX512
#define KX(name) avx512_##name
#define KX_TRAITS kernels_avx512_traits
#define KX_VNNI 1
/* Tile shapes (rows x tokens) measured fastest on Zen 4, within 32 registers: R*T
 * accumulators, the T activation vectors (and their offset corrections), temporaries. */
#define F_TR 4
#define F_TT 4
#define Q_TR 5
#define Q_TT 4
#else
#define KX(name) avx2_##name
#define KX_TRAITS kernels_avx2_traits
#define KX_VNNI 0
/* The same within 16 registers (measured running this level on Zen 4). */
#define F_TR 4
#define F_TT 3
#define Q_TR 4
#define Q_TT 3
#endif

#define KX_MAX 6 /* largest tile side any level may ask for (array bounds only) */
#define KX_INLINE static inline __attribute__((always_inline))
#define KX_EXPAND(...) __VA_ARGS__
/* The tile loops must unroll completely so that the accumulator arrays become registers. */
#ifdef __clang__
#define KX_UNROLL _Pragma("clang loop unroll(full)")
#else
#define KX_UNROLL _Pragma("GCC unroll 8")
#endif
/* GCC likes to fold a load into each FMA that uses it, which for a tile turns T loads into
 * R*T loads from L2; this empty asm makes the value live in a register instead. */
#define KX_IN_REGISTER(v) __asm__("" : "+v"(v))

/* Call fn(R, T, args...) with compile-time R <= MR, T <= MT equal to (nr, nt), so that each
 * tile shape gets its own fully unrolled, register-allocated instance. */
#define KX_CASE(MR, MT, fn, args, R, T)                                                     \
    case (R) * 8 + (T):                                                                     \
        if ((R) <= (MR) && (T) <= (MT)) fn(R, T, KX_EXPAND args);                           \
        break;
#define KX_ROW(MR, MT, fn, args, R)                                                         \
    KX_CASE(MR, MT, fn, args, R, 1) KX_CASE(MR, MT, fn, args, R, 2)                         \
    KX_CASE(MR, MT, fn, args, R, 3) KX_CASE(MR, MT, fn, args, R, 4)                         \
    KX_CASE(MR, MT, fn, args, R, 5) KX_CASE(MR, MT, fn, args, R, 6)
#define KX_DISPATCH(MR, MT, nr, nt, fn, args)                                               \
    switch ((nr) * 8 + (nt)) {                                                              \
        KX_ROW(MR, MT, fn, args, 1) KX_ROW(MR, MT, fn, args, 2)                             \
        KX_ROW(MR, MT, fn, args, 3) KX_ROW(MR, MT, fn, args, 4)                             \
        KX_ROW(MR, MT, fn, args, 5) KX_ROW(MR, MT, fn, args, 6)                             \
    default: break;                                                                         \
    }

KX_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- float weights: 8 weights per step converted to f32, FMA with f32 activations ------ */
KX_INLINE __m256 ld8_f32(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
KX_INLINE __m256 ld8_f16(const void *w, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
}
KX_INLINE __m256 ld8_bf16(const void *w, int64_t i) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
KX_INLINE float ld1_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }
KX_INLINE float ld1_f16(const void *w, int64_t i) { return _cvtsh_ss(((const uint16_t *)w)[i]); }
KX_INLINE float ld1_bf16(const void *w, int64_t i) {
    uint32_t bits = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

KX_INLINE void ftile(const int R, const int T, __m256 (*ld8)(const void *, int64_t),
                     float (*ld1)(const void *, int64_t), int64_t n, const char *w, size_t ws,
                     const char *x, size_t xs, float *y, int64_t ys) {
    __m256 acc[KX_MAX][KX_MAX];
    KX_UNROLL
    for (int r = 0; r < R; r++)
        KX_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv[KX_MAX];
        KX_UNROLL
        for (int t = 0; t < T; t++) {
            xv[t] = _mm256_loadu_ps((const float *)(x + t * xs) + i);
            KX_IN_REGISTER(xv[t]);
        }
        KX_UNROLL
        for (int r = 0; r < R; r++) {
            __m256 wv = ld8(w + r * ws, i);
            KX_IN_REGISTER(wv);
            KX_UNROLL
            for (int t = 0; t < T; t++) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    KX_UNROLL
    for (int r = 0; r < R; r++)
        KX_UNROLL
        for (int t = 0; t < T; t++) {
            const float *xt = (const float *)(x + t * xs);
            float s = hsum8(acc[r][t]);
            for (int64_t j = i; j < n; j++) s += ld1(w + r * ws, j) * xt[j];
            y[t * ys + r] = s;
        }
}

#define KX_FLOAT_KERNELS(name)                                                              \
    static void KX(vec_dot_##name)(int64_t n, float *s, const void *w, const void *x) {     \
        ftile(1, 1, ld8_##name, ld1_##name, n, w, 0, x, 0, s, 0);                          \
    }                                                                                       \
    static void KX(tile_##name)(int64_t n, const void *w, size_t ws, const void *x,         \
                                size_t xs, float *y, int64_t ys, int nr, int nt) {          \
        KX_DISPATCH(F_TR, F_TT, nr, nt, ftile,                                              \
                    (ld8_##name, ld1_##name, n, w, ws, x, xs, y, ys))                       \
    }
KX_FLOAT_KERNELS(f32)
KX_FLOAT_KERNELS(f16)
KX_FLOAT_KERNELS(bf16)

/* ---- Q8_0 activations ------------------------------------------------------------------ */
KX_INLINE float hmax8(__m256 m) {
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    return _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
}

/* 32 values v * id rounded half away from zero (roundf) to int8 in element order; values
 * beyond the int8 range saturate. */
KX_INLINE __m256i round_pack32(const __m256 v[4], __m256 id) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256i q[4];
    KX_UNROLL
    for (int k = 0; k < 4; k++) {
        __m256 p = _mm256_mul_ps(v[k], id);
        __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(p, t)), half, _CMP_GE_OQ);
        __m256 step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(p, sign), one));
        q[k] = _mm256_cvttps_epi32(_mm256_add_ps(t, step));
    }
    /* the packs work within 128-bit lanes; the permute restores element order */
    __m256i q8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    return _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Bit-exact with quant_quantize_row(DT_Q8_0): same amax (max is exact), same float division
 * for d and 1/d, and roundf's half-away-from-zero done as trunc + (|frac| >= 0.5), which
 * unlike floor(v + 0.5) cannot be spoilt by the addition rounding up. */
KX_INLINE __m256i q8_block(const float *x, uint16_t *dh) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    KX_UNROLL
    for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + 8 * k);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    float d = hmax8(m) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    *dh = (uint16_t)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    return round_pack32(v, _mm256_set1_ps(id));
}

static void KX(from_float_q8_0)(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++)
        _mm256_storeu_si256((__m256i *)y[b].qs, q8_block(x + b * QK8_0, &y[b].d));
}

/* Q8_0S (quant.h): the same blocks, the scale widened to f32 and c = -off * sum(q). */
KX_INLINE void from_float_q8_0s(const float *x, void *vy, int64_t n, int off) {
    block_q8_0s *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        uint16_t dh;
        const __m256i q = q8_block(x + b * QK8_0, &dh);
        __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        y[b].d = _cvtsh_ss(dh);
        y[b].c = -off * _mm_cvtsi128_si32(s4);
        _mm256_storeu_si256((__m256i *)y[b].qs, q);
    }
}
static void KX(from_float_q8_0s_q4)(const float *x, void *y, int64_t n) { from_float_q8_0s(x, y, n, 8); }
static void KX(from_float_q8_0s_q8)(const float *x, void *y, int64_t n) { from_float_q8_0s(x, y, n, 128); }

/* ---- Q4_0 / Q8_0 weights x Q8_0 activations --------------------------------------------
 * Per 32-element block, an exact int32 dot in 8 lanes, then acc += lanes * (dw * dx).
 * VNNI: vpdpbusd takes an unsigned and a signed operand. The weights are made unsigned
 * (Q8_0: w + 128 by flipping the sign bit; Q4_0: the raw nibbles, w + 8) and the offset is
 * removed by starting the accumulator at -offset * sum(x), computed once per token and
 * block and shared by the tile's rows. Exact for every int8 input.
 * AVX2: vpmaddubsw (u8 x s8 -> s16, saturating) then vpmaddwd. Q4_0: nibbles times x, minus
 * 8 * x pairs in s16 (|.| <= 3840: no saturation). Q8_0: |w| times sign(x, w) (|.| <=
 * 32512); needs x > -128, which from_float guarantees (|q| <= 127). */

/* 16 bytes of nibbles -> 32 bytes 0..15 in element order: the load broadcasts the bytes to
 * both halves (no shuffle), then only the upper half is shifted. */
KX_INLINE __m256i q4_unpack(const uint8_t *qs) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

/* The weight block as the unsigned operand (u), and for AVX2 Q8_0 its signs (*wq). */
KX_INLINE __m256i q_weights(int q4, const char *wb, __m256i *wq) {
    if (q4) return q4_unpack(((const block_q4_0 *)wb)->qs);
    *wq = _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)wb)->qs);
    return KX_VNNI ? _mm256_xor_si256(*wq, _mm256_set1_epi8((char)0x80)) : _mm256_abs_epi8(*wq);
}

/* What each token block contributes for all rows: the offset correction (VNNI: -offset *
 * lane sums of x, as int32; AVX2 Q4_0: 8 * pair sums of x, as int16). */
KX_INLINE __m256i q_correction(int q4, __m256i xv) {
#if KX_VNNI
    const __m256i off = _mm256_set1_epi8(q4 ? 8 : (char)0x80), zero = _mm256_setzero_si256();
    return _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, off, xv));
#else
    return q4 ? _mm256_maddubs_epi16(_mm256_set1_epi8(8), xv) : _mm256_setzero_si256();
#endif
}

/* Exact int32 lane sums of (weight block) x (activation block). */
KX_INLINE __m256i q_dot(int q4, __m256i u, __m256i wq, __m256i xv, __m256i xc) {
#if KX_VNNI
    return _mm256_dpbusd_epi32(xc, u, xv);
#else
    __m256i p = q4 ? _mm256_sub_epi16(_mm256_maddubs_epi16(u, xv), xc)
                   : _mm256_maddubs_epi16(u, _mm256_sign_epi8(xv, wq));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
}

/* Eight copies of an f16 scale as f32. */
KX_INLINE __m256 broadcast_f16(const void *d) {
    uint16_t h;
    memcpy(&h, d, 2);
    return _mm256_cvtph_ps(_mm_set1_epi16((short)h));
}

/* f16 scale d (it leads both block layouts) of block b of row r into lane r of v; written
 * out per lane because the lane must be an immediate even at -O0. */
#define KX_DW_LANE(v, r)                                                                        if (R > (r)) {                                                                                  uint16_t h_;                                                                                memcpy(&h_, w + (r) * ws + b * wbs, 2);                                                     v = _mm_insert_epi16(v, (short)h_, r);                                                  }

/* Blocks whose scales are prepared at a time (see qtile). */
#define KX_SC_BLOCKS 8

KX_INLINE void qtile(const int R, const int T, const int q4, int64_t n, const char *w,
                     size_t ws, const char *x, size_t xs, float *y, int64_t ys) {
    const size_t wbs = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const int64_t nb = n / QK8_0;
    __m256 acc[Q_TR][Q_TT];
    KX_UNROLL
    for (int r = 0; r < R; r++)
        KX_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    /* sc[k][t][r] = dw(row r, block b0 + k) * dx(token t, block b0 + k): R*T products in T
     * multiplies, stored a few blocks ahead of use and read back as broadcast operands of
     * the FMAs. Multiplying set1(dw) * set1(dx) per (row, token) instead costs as much as
     * the dot itself: GCC turns it into a scalar multiply and a register broadcast. */
    float sc[KX_SC_BLOCKS][KX_MAX][8] __attribute__((aligned(32)));
    for (int64_t b0 = 0; b0 < nb; b0 += KX_SC_BLOCKS) {
        const int g = nb - b0 < KX_SC_BLOCKS ? (int)(nb - b0) : KX_SC_BLOCKS;
        for (int k = 0; k < g; k++) {
            const int64_t b = b0 + k;
            __m128i dwh = _mm_setzero_si128();
            KX_DW_LANE(dwh, 0) KX_DW_LANE(dwh, 1) KX_DW_LANE(dwh, 2)
            KX_DW_LANE(dwh, 3) KX_DW_LANE(dwh, 4) KX_DW_LANE(dwh, 5)
            const __m256 dwv = _mm256_cvtph_ps(dwh);
            KX_UNROLL
            for (int t = 0; t < T; t++) {
                const block_q8_0 *xb = (const block_q8_0 *)(x + t * xs) + b;
                _mm256_store_ps(sc[k][t], _mm256_mul_ps(dwv, broadcast_f16(&xb->d)));
            }
        }
        for (int k = 0; k < g; k++) {
            const int64_t b = b0 + k;
            __m256i xv[KX_MAX], xc[KX_MAX];
            KX_UNROLL
            for (int t = 0; t < T; t++) {
                xv[t] = _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)(x + t * xs) + b)->qs);
                xc[t] = q_correction(q4, xv[t]);
            }
            KX_UNROLL
            for (int r = 0; r < R; r++) {
                __m256i wq = _mm256_setzero_si256();
                const __m256i u = q_weights(q4, w + r * ws + b * wbs, &wq);
                KX_UNROLL
                for (int t = 0; t < T; t++) {
                    __m256 p = _mm256_cvtepi32_ps(q_dot(q4, u, wq, xv[t], xc[t]));
                    acc[r][t] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(&sc[k][t][r]), acc[r][t]);
                }
            }
        }
    }
    KX_UNROLL
    for (int r = 0; r < R; r++)
        KX_UNROLL
        for (int t = 0; t < T; t++) y[t * ys + r] = hsum8(acc[r][t]);
}

#define KX_QUANT_KERNELS(name, q4)                                                          \
    static void KX(vec_dot_##name)(int64_t n, float *s, const void *w, const void *x) {     \
        qtile(1, 1, q4, n, w, 0, x, 0, s, 0);                                               \
    }                                                                                       \
    static void KX(tile_##name)(int64_t n, const void *w, size_t ws, const void *x,         \
                                size_t xs, float *y, int64_t ys, int nr, int nt) {          \
        KX_DISPATCH(Q_TR, Q_TT, nr, nt, qtile, (q4, n, w, ws, x, xs, y, ys))                \
    }
KX_QUANT_KERNELS(q8_0, 0)
KX_QUANT_KERNELS(q4_0, 1)

/* ---- R8 (row-interleaved) Q4_0 / Q8_0 weights x Q8_0S activations -----------------------
 * Lane r of every vector is row r of a group of 8 (layout in quant.h). One 4-byte chunk of
 * the 8 rows times the token's matching 4 activations, broadcast to all lanes, adds 4
 * products to each row's sum: after a block's chunks, lane r holds row r's exact integer dot
 * (started at the activation block's correction c), and the float step is the reference's,
 * once per 8 rows: acc += (float)sumi * (dw * dx), as a multiply and an add. So every level
 * computes vec_dot_q4_0 / vec_dot_q8_0 of the un-interleaved rows bit for bit, with a third
 * of the plain kernels' instructions per weight: no per-row conversion, scale or sum.
 * VNNI: vpdpbusd with the weights unsigned (Q4_0 nibbles, Q8_0 w + 128; c holds -8 or -128
 * times the block's activation sum). AVX2: vpmaddubsw + vpmaddwd as in the plain kernels
 * (Q8_0: |w| times sign(x, w), so c is not used). */
/* Register tiles (groups of 8 rows x tokens) measured on Zen 4 (one core, 5632 x 2048 Q4_0,
 * 512 tokens): VNNI 1x4 129, 2x4 160, 2x6 171, 3x4 172 GMAC/s (2x6 kept: 28 registers, and
 * 341 vs 338 on two cores); AVX2 (16 registers) 1x4 75, 1x6 75, 2x2 68. */
#if KX_VNNI
#define R8_G 2
#define R8_T 6
#else
#define R8_G 1
#define R8_T 4
#endif

/* acc + the 4-product lane sums of unsigned u (or, AVX2 Q8_0, signed w) and signed x. */
KX_INLINE __m256i r8_dot(int q4, __m256i acc, __m256i u, __m256i x) {
#if KX_VNNI
    (void)q4;
    return _mm256_dpbusd_epi32(acc, u, x);
#else
    __m256i p = q4 ? _mm256_maddubs_epi16(u, x) : _mm256_maddubs_epi16(_mm256_abs_epi8(u), _mm256_sign_epi8(x, u));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

KX_INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

KX_INLINE void r8tile(const int G, const int T, const int q4, int64_t n, const char *w,
                      size_t ws, const char *x, size_t xs, float *y, int64_t ys) {
    const int64_t nb = n / QK8_0;
    const size_t gbs = q4 ? sizeof(block_q4_0x8) : sizeof(block_q8_0x8);
    const int nchunk = q4 ? QK4_0 / 8 : QK8_0 / 4;
    /* with few accumulators, a second chain per tile cell hides vpdpbusd's latency */
    const int split = G * T < 4;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc[R8_G][R8_T];
    KX_UNROLL
    for (int g = 0; g < G; g++)
        KX_UNROLL
        for (int t = 0; t < T; t++) acc[g][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const char *wb[R8_G];
        const block_q8_0s *xb[R8_T];
        KX_UNROLL
        for (int g = 0; g < G; g++) wb[g] = w + (size_t)g * 8 * ws + (size_t)b * gbs;
        KX_UNROLL
        for (int t = 0; t < T; t++) xb[t] = (const block_q8_0s *)(x + t * xs) + b;
        /* a group's stream, 1 KiB ahead: more lines in flight than the hardware prefetcher
         * keeps (one token on this Xeon: 1.1x; past the end it is a no-op, never a fault) */
        KX_UNROLL
        for (int g = 0; g < G; g++) _mm_prefetch(wb[g] + 1024, _MM_HINT_T0);
        __m256i s[R8_G][R8_T], s2[R8_G][R8_T];
        KX_UNROLL
        for (int g = 0; g < G; g++)
            KX_UNROLL
            for (int t = 0; t < T; t++) {
                s[g][t] = KX_VNNI || q4 ? _mm256_set1_epi32(xb[t]->c) : _mm256_setzero_si256();
                s2[g][t] = _mm256_setzero_si256();
            }
        KX_UNROLL
        for (int c = 0; c < nchunk; c++) {
            __m256i lo[R8_G], hi[R8_G];
            KX_UNROLL
            for (int g = 0; g < G; g++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(wb[g] + 16 + 32 * c));
                if (q4) {
                    lo[g] = _mm256_and_si256(v, low4);
                    hi[g] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                } else {
                    lo[g] = KX_VNNI ? _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)) : v;
                }
                KX_IN_REGISTER(lo[g]);
            }
            KX_UNROLL
            for (int t = 0; t < T; t++) {
                const __m256i xl = bcast4(xb[t]->qs + 4 * c);
                KX_UNROLL
                for (int g = 0; g < G; g++) {
                    if (split && !q4 && (c & 1)) s2[g][t] = r8_dot(q4, s2[g][t], lo[g], xl);
                    else s[g][t] = r8_dot(q4, s[g][t], lo[g], xl);
                }
                if (q4) {
                    const __m256i xh = bcast4(xb[t]->qs + QK4_0 / 2 + 4 * c);
                    KX_UNROLL
                    for (int g = 0; g < G; g++) {
                        if (split) s2[g][t] = r8_dot(q4, s2[g][t], hi[g], xh);
                        else s[g][t] = r8_dot(q4, s[g][t], hi[g], xh);
                    }
                }
            }
        }
        KX_UNROLL
        for (int g = 0; g < G; g++) {
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)wb[g]));
            KX_UNROLL
            for (int t = 0; t < T; t++) {
                const __m256i si = split ? _mm256_add_epi32(s[g][t], s2[g][t]) : s[g][t];
                const __m256 sc = _mm256_mul_ps(dw, _mm256_broadcast_ss(&xb[t]->d));
                acc[g][t] = _mm256_add_ps(acc[g][t], _mm256_mul_ps(_mm256_cvtepi32_ps(si), sc));
            }
        }
    }
    KX_UNROLL
    for (int g = 0; g < G; g++)
        KX_UNROLL
        for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ys + 8 * g, acc[g][t]);
}

#define KX_R8_KERNELS(name, q4)                                                             \
    static void KX(vec_dot_##name)(int64_t n, float *s, const void *w, const void *x) {     \
        r8tile(1, 1, q4, n, w, 0, x, 0, s, 0);                                              \
    }                                                                                       \
    static void KX(tile_##name)(int64_t n, const void *w, size_t ws, const void *x,         \
                                size_t xs, float *y, int64_t ys, int nr, int nt) {          \
        KX_DISPATCH(R8_G, R8_T, nr / 8, nt, r8tile, (q4, n, w, ws, x, xs, y, ys))           \
    }
KX_R8_KERNELS(q4_0_r8, 1)
KX_R8_KERNELS(q8_0_r8, 0)

/* ---- K-quant weights x Q8_K activations ------------------------------------------------
 * Per super-block of 256 and per (row, token), an exact int32 sum in 8 lanes of each
 * sub-block's dot times its integer scale: vpmaddubsw (weights 0..63 unsigned x int8
 * activations, |pair| <= 16002: no saturation), then vpmaddwd with the scale broadcast
 * to int16 (VNNI: vpdpwssd, the same sum fused). Then per super-block one or two FMAs into
 * the float accumulator. Integer sums are exact, so every level agrees with the reference
 * up to the order of the float additions. Q6_K's offset of 32 and Q4_K/Q5_K's mins come
 * from the activations' 16-value sums (bsums), once per token and super-block. */
#if KX_VNNI
#define K_TR 4
#define K_TT 3
#else
#define K_TR 2
#define K_TT 2
#endif

/* The R x T float accumulators of a K-quant tile: cleared, and summed into y at the end. */
#define KX_ZERO_ACC(acc, R, T)                                                              \
    KX_UNROLL                                                                               \
    for (int r_ = 0; r_ < (R); r_++)                                                        \
        KX_UNROLL                                                                           \
        for (int t_ = 0; t_ < (T); t_++) acc[r_][t_] = _mm256_setzero_ps();
#define KX_STORE_ACC(acc, R, T, y, ys)                                                      \
    KX_UNROLL                                                                               \
    for (int r_ = 0; r_ < (R); r_++)                                                        \
        KX_UNROLL                                                                           \
        for (int t_ = 0; t_ < (T); t_++) (y)[t_ * (ys) + r_] = hsum8(acc[r_][t_]);

KX_INLINE __m256i kdot(__m256i acc, __m256i q, const void *x, __m256i sc16) {
    __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)x));
#if KX_VNNI
    return _mm256_dpwssd_epi32(acc, p, sc16);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc16));
#endif
}

/* Bit `bit` (0..7) of every byte of h moved to bit 4 (the fifth bit of a Q5_K value). In
 * 16-bit lanes a shift by at most 4 never carries a byte's bit 4 from the other byte. */
KX_INLINE __m256i kbit4(__m256i h, const int bit) {
    __m256i v = bit <= 4 ? _mm256_slli_epi16(h, 4 - bit) : _mm256_srli_epi16(h, bit - 4);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

KX_INLINE void ktile_affine(const int R, const int T, const int five, int64_t n, const char *w,
                            size_t ws, const char *x, size_t xs, float *y, int64_t ys) {
    const size_t wbs = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m256i lo4 = _mm256_set1_epi8(0x0f);
    __m256 acc[K_TR][K_TT];
    KX_ZERO_ACC(acc, R, T)
    for (int64_t b = 0; b < n / QK_K; b++) {
        __m256i isum[K_TR][K_TT], scb[K_TR];
        __m128i mins[K_TR], xsum[K_TT];
        KX_UNROLL
        for (int r = 0; r < R; r++) {
            /* the 6-bit scales and mins (quant_kscales) unpacked four at a time in words */
            uint32_t u[3];
            memcpy(u, w + r * ws + b * wbs + 4, 12);
            const uint32_t sc_lo = u[0] & 0x3f3f3f3f, m_lo = u[1] & 0x3f3f3f3f;
            const uint32_t sc_hi = (u[2] & 0x0f0f0f0f) | ((u[0] >> 6) & 0x03030303) << 4;
            const uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 6) & 0x03030303) << 4;
            const __m256i s16 = _mm256_cvtepu8_epi16(_mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi));
            scb[r] = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(s16)); /* sc[0..7] twice */
            mins[r] = _mm256_extracti128_si256(s16, 1);                       /* m[0..7] */
            KX_UNROLL
            for (int t = 0; t < T; t++) isum[r][t] = _mm256_setzero_si256();
        }
        KX_UNROLL
        for (int t = 0; t < T; t++) { /* sums of each 32-value sub-block */
            const block_q8_K *xb = (const block_q8_K *)(x + t * xs) + b;
            xsum[t] = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)xb->bsums),
                                     _mm_loadu_si128((const __m128i *)xb->bsums + 1));
        }
        KX_UNROLL
        for (int g = 0; g < 4; g++) {
            KX_UNROLL
            for (int r = 0; r < R; r++) {
                const char *wb = w + r * ws + b * wbs;
                const uint8_t *qs = five ? ((const block_q5_K *)wb)->qs : ((const block_q4_K *)wb)->qs;
                const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
                __m256i lo = _mm256_and_si256(v, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                if (five) {
                    const __m256i h = _mm256_loadu_si256((const __m256i *)((const block_q5_K *)wb)->qh);
                    lo = _mm256_or_si256(lo, kbit4(h, 2 * g));
                    hi = _mm256_or_si256(hi, kbit4(h, 2 * g + 1));
                }
                const __m256i s0 = _mm256_shuffle_epi8(scb[r], _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * g)))),
                              s1 = _mm256_shuffle_epi8(scb[r], _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * g + 1))));
                KX_UNROLL
                for (int t = 0; t < T; t++) {
                    const int8_t *xq = ((const block_q8_K *)(x + t * xs) + b)->qs + 64 * g;
                    isum[r][t] = kdot(kdot(isum[r][t], lo, xq, s0), hi, xq + 32, s1);
                }
            }
        }
        KX_UNROLL
        for (int r = 0; r < R; r++) {
            const char *wb = w + r * ws + b * wbs;
            const float d = _cvtsh_ss(((const uint16_t *)wb)[0]), dmin = _cvtsh_ss(((const uint16_t *)wb)[1]);
            KX_UNROLL
            for (int t = 0; t < T; t++) {
                const float dx = ((const block_q8_K *)(x + t * xs) + b)->d;
                const __m256i summ = _mm256_zextsi128_si256(_mm_madd_epi16(mins[r], xsum[t]));
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_set1_ps(d * dx), acc[r][t]);
                acc[r][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ), _mm256_set1_ps(dmin * dx), acc[r][t]);
            }
        }
    }
    KX_STORE_ACC(acc, R, T, y, ys)
}

KX_INLINE void ktile_q6(const int R, const int T, int64_t n, const char *w, size_t ws,
                        const char *x, size_t xs, float *y, int64_t ys) {
    const __m256i lo4 = _mm256_set1_epi8(0x0f), hi2 = _mm256_set1_epi8(0x30);
    __m256 acc[K_TR][K_TT];
    KX_ZERO_ACC(acc, R, T)
    for (int64_t b = 0; b < n / QK_K; b++) {
        __m256i isum[K_TR][K_TT];
        __m128i sc8[K_TR];
        KX_UNROLL
        for (int r = 0; r < R; r++) {
            const block_q6_K *wb = (const block_q6_K *)(w + r * ws) + b;
            sc8[r] = _mm_loadu_si128((const __m128i *)wb->scales);
            const __m256i sc16 = _mm256_cvtepi8_epi16(sc8[r]);
            KX_UNROLL
            for (int t = 0; t < T; t++) { /* -32 * sum_j scale[j] * bsum[j]: the offset */
                const block_q8_K *xb = (const block_q8_K *)(x + t * xs) + b;
                const __m256i c = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)xb->bsums));
                isum[r][t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(c, 5));
            }
        }
        KX_UNROLL
        for (int h = 0; h < 2; h++) {
            KX_UNROLL
            for (int r = 0; r < R; r++) {
                const block_q6_K *wb = (const block_q6_K *)(w + r * ws) + b;
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h)),
                              l1 = _mm256_loadu_si256((const __m256i *)(wb->ql + 64 * h + 32)),
                              qh = _mm256_loadu_si256((const __m256i *)(wb->qh + 32 * h));
                /* the four 32-value runs of this half, 0..63 (see quant.c's dequantizer) */
                __m256i q[4];
                q[0] = _mm256_or_si256(_mm256_and_si256(l0, lo4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), hi2));
                q[1] = _mm256_or_si256(_mm256_and_si256(l1, lo4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), hi2));
                q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), lo4), _mm256_and_si256(qh, hi2));
                q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), lo4),
                                       _mm256_and_si256(_mm256_srli_epi16(qh, 2), hi2));
                KX_UNROLL
                for (int k = 0; k < 4; k++) {
                    /* run k covers sub-blocks 8h + 2k (its first 16 values) and 8h + 2k + 1 */
                    const int j = 8 * h + 2 * k;
                    const __m256i s16 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
                        sc8[r], _mm_setr_epi8(j, j, j, j, j, j, j, j, j + 1, j + 1, j + 1, j + 1, j + 1,
                                              j + 1, j + 1, j + 1)));
                    KX_UNROLL
                    for (int t = 0; t < T; t++)
                        isum[r][t] = kdot(isum[r][t], q[k],
                                          ((const block_q8_K *)(x + t * xs) + b)->qs + 128 * h + 32 * k, s16);
                }
            }
        }
        KX_UNROLL
        for (int r = 0; r < R; r++) {
            const float d = _cvtsh_ss(((const block_q6_K *)(w + r * ws) + b)->d);
            KX_UNROLL
            for (int t = 0; t < T; t++) {
                const float dx = ((const block_q8_K *)(x + t * xs) + b)->d;
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_set1_ps(d * dx), acc[r][t]);
            }
        }
    }
    KX_STORE_ACC(acc, R, T, y, ys)
}

/* Q8_K activations: quant_quantize_row's rule (as from_float_q8_0 does it), 256 at a time,
 * plus the 16-value sums. */
static void KX(from_float_q8_K)(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < QK_K / 8; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
        const float d = hmax8(m) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = d;
        const __m256 idv = _mm256_set1_ps(id);
        for (int k = 0; k < QK_K / 32; k++) {
            __m256 v[4];
            KX_UNROLL
            for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(x + 32 * k + 8 * i);
            __m256i q8 = round_pack32(v, idv);
            /* packs saturate at -128; the rule clamps at -127 */
            q8 = _mm256_max_epi8(q8, _mm256_set1_epi8(-127));
            q8 = _mm256_min_epi8(q8, _mm256_set1_epi8(127));
            _mm256_storeu_si256((__m256i *)(y[b].qs + 32 * k), q8);
            /* two 16-value sums: bytes -> pair sums -> sums of four in 8 lanes -> two sums */
            __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q8), _mm256_set1_epi16(1));
            int16_t *bs = y[b].bsums + 2 * k;
            int32_t lanes[8];
            _mm256_storeu_si256((__m256i *)lanes, s);
            bs[0] = (int16_t)(lanes[0] + lanes[1] + lanes[2] + lanes[3]);
            bs[1] = (int16_t)(lanes[4] + lanes[5] + lanes[6] + lanes[7]);
        }
    }
}

#define KX_KQUANT_KERNELS(name, call, ...)                                                  \
    static void KX(vec_dot_##name)(int64_t n, float *s, const void *w, const void *x) {     \
        call(1, 1, __VA_ARGS__ n, w, 0, x, 0, s, 0);                                        \
    }                                                                                       \
    static void KX(tile_##name)(int64_t n, const void *w, size_t ws, const void *x,         \
                                size_t xs, float *y, int64_t ys, int nr, int nt) {          \
        KX_DISPATCH(K_TR, K_TT, nr, nt, call, (__VA_ARGS__ n, w, ws, x, xs, y, ys))         \
    }
KX_KQUANT_KERNELS(q4_K, ktile_affine, 0,)
KX_KQUANT_KERNELS(q5_K, ktile_affine, 1,)
KX_KQUANT_KERNELS(q6_K, ktile_q6,)

static const kernel_traits KX(traits)[] = {
    [DT_F32] = {DT_F32, NULL, KX(vec_dot_f32), KX(tile_f32), F_TR, F_TT},
    [DT_F16] = {DT_F32, NULL, KX(vec_dot_f16), KX(tile_f16), F_TR, F_TT},
    [DT_BF16] = {DT_F32, NULL, KX(vec_dot_bf16), KX(tile_bf16), F_TR, F_TT},
    [DT_Q8_0] = {DT_Q8_0, KX(from_float_q8_0), KX(vec_dot_q8_0), KX(tile_q8_0), Q_TR, Q_TT},
    [DT_Q4_0] = {DT_Q8_0, KX(from_float_q8_0), KX(vec_dot_q4_0), KX(tile_q4_0), Q_TR, Q_TT},
    [DT_Q4_K] = {DT_Q8_K, KX(from_float_q8_K), KX(vec_dot_q4_K), KX(tile_q4_K), K_TR, K_TT},
    [DT_Q5_K] = {DT_Q8_K, KX(from_float_q8_K), KX(vec_dot_q5_K), KX(tile_q5_K), K_TR, K_TT},
    [DT_Q6_K] = {DT_Q8_K, KX(from_float_q8_K), KX(vec_dot_q6_K), KX(tile_q6_K), K_TR, K_TT},
    [DT_Q4_0_R8] = {DT_Q8_0S, KX(from_float_q8_0s_q4), KX(vec_dot_q4_0_r8), KX(tile_q4_0_r8),
                    8 * R8_G, R8_T, 8},
    [DT_Q8_0_R8] = {DT_Q8_0S, KX(from_float_q8_0s_q8), KX(vec_dot_q8_0_r8), KX(tile_q8_0_r8),
                    8 * R8_G, R8_T, 8},
};

const kernel_traits *KX_TRAITS(int type) {
    if (type < 0 || type >= (int)(sizeof KX(traits) / sizeof KX(traits)[0])) return NULL;
    return KX(traits)[type].vec_dot ? &KX(traits)[type] : NULL;
}

#endif
