/*
 * test_kernels_oracle.c: the scalar reference formats and kernels against an independent
 * reading of ggml's block layouts. test_kernels.c compares the SIMD levels with the scalar
 * reference; this file is what the scalar reference itself is held to, so that a mistake
 * made the same way in quantiser, dequantiser and dot product (nibbles swapped, a wrong
 * offset) cannot pass by agreeing with itself.
 *
 * The oracle (o_* below) reads blocks as raw little-endian bytes at the offsets of ggml's
 * layouts, never through quant.h's structs or functions, and computes in double:
 *   F16   IEEE binary16 (1 sign, 5 exponent bits biased by 15, 10 fraction bits)
 *   BF16  the top 16 bits of an f32 (8 exponent bits biased by 127, 7 fraction bits)
 *   Q8_0  34 bytes: f16 d, int8 q[32];                     x = d * q
 *   Q4_0  18 bytes: f16 d, 16 bytes; byte j holds element j in its low nibble and j + 16
 *         in its high nibble;                              x = d * (q - 8)
 *   Q4_K  144 bytes: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32,
 *         128 bytes of nibbles: 32-byte group g holds sub-block 2g low, 2g + 1 high;
 *                                                          x = d * sc * q - dmin * m
 *   Q5_K  176 bytes: as Q4_K with qh[32] after the scales; bit j of qh[l] adds 16 to element
 *         l of sub-block j
 *   Q6_K  210 bytes: ql[128], qh[64], int8 scales[16], f16 d. Element e = 128 h + 32 k + l
 *         (l < 32): low 4 bits in ql[64 h + 32 (k & 1) + l] (low nibble for k < 2, high
 *         nibble otherwise), top 2 bits at bit 2k of qh[32 h + l]; scale scales[e / 16];
 *                                                          x = d * scale * (q - 32)
 *   Q8_K  292 bytes: f32 d, int8 q[256], int16 sums of 16;  x = d * q
 *
 * Bounds, and why (u = 2^-24, the unit roundoff of f32):
 *  - Dequantising: F16, BF16, Q8_0, Q4_0, Q6_K values are products of an f16 scale (11
 *    significant bits) and small integers (<= 12 bits together), exact in f32: equality.
 *    Q8_K's f32 scale times q rounds once: u |x|. Q4_K/Q5_K subtract two exact products:
 *    one rounding, u * (|d sc q| + |dmin m|).
 *  - An f16 scale is the f16 nearest the rule's value d: within half an ulp, 2^-11 |d|, or
 *    2^-25 where d is below the normal range (subnormal spacing 2^-24).
 *  - Quantising F16/BF16: the result is the nearest representable value, ties to even
 *    (checked against both neighbours by the oracle's decoding).
 *  - Q8_0: d is amax / 127 rounded to f16 (D); values are rounded against the unrounded
 *    d, so |x - D q| <= d/2 + 127 |D - d|.
 *  - Q4_0: d = (signed value of largest magnitude) / -8 rounded to f16, that value gets
 *    q = 0; |x - D (q - 8)| <= |d| / 2 + 8 |D - d|, or |d| + 8 |D - d| where q is clamped to
 *    15 (values up to 8 |d| of the opposite sign).
 *  - Q6_K: per sub-block of 16, s = (signed value of largest magnitude) / -32; D = f16 of
 *    max |s| / 127; scales = round(s / D); where q is not clamped and the scale not 0,
 *    |x - v| <= |D sc| / 2.
 *  - Q4_K/Q5_K (duet's own affine fit): scales and mins are 6-bit against f16 d and dmin
 *    set from the largest, so the largest sub-block scale is 63 (and the largest min, if
 *    any is non-zero); where q is not clamped, |x - v| <= d sc / 2; relative RMS error
 *    below 0.10 / 0.05 on varied data (Q6_K: 0.04).
 *  - Q8_K: d = amax / 127 in f32, |x - d q| <= d / 2, the sums are sums of 16 q.
 *  - vec_dot at every level vs sum_i w_i x_i in double over the oracle's values of the
 *    weights and of the activations as from_float made them: each of the N terms summed in
 *    f32 (N blocks, or N elements for float types) carries at most 4 roundings and the sum
 *    N - 1 more, so |got - exact| <= (N + 4) u * sum_i |w_i x_i| (for Q4_K/Q5_K with
 *    |w_i| taken as |d sc q| + |dmin m|, the two products the kernel rounds apart).
 */
#include <float.h>
#include <stdlib.h>

#include "engine/kernels.h"
#include "format/quant.h"
#include "test.h"

#define U24 0x1p-24

static uint64_t g_rs = 0x853c49e6748fea9bull;
static uint32_t rnd(void) {
    g_rs ^= g_rs << 13;
    g_rs ^= g_rs >> 7;
    g_rs ^= g_rs << 17;
    return (uint32_t)(g_rs >> 32);
}
static float urand(void) { return (float)(rnd() >> 8) * 0x1p-23f - 1.0f; } /* [-1, 1) */

/* ---- the oracle ------------------------------------------------------------------------ */
typedef struct { int type, blck, bytes; } o_layout;
static const o_layout k_layouts[] = {
    {DT_F32, 1, 4},     {DT_F16, 1, 2},      {DT_BF16, 1, 2},     {DT_Q8_0, 32, 34}, {DT_Q4_0, 32, 18},
    {DT_Q4_K, 256, 144}, {DT_Q5_K, 256, 176}, {DT_Q6_K, 256, 210}, {DT_Q8_K, 256, 292},
};
static const o_layout *o_layout_of(int type) {
    for (size_t i = 0; i < sizeof k_layouts / sizeof k_layouts[0]; i++)
        if (k_layouts[i].type == type) return &k_layouts[i];
    return NULL;
}

static unsigned rd16(const uint8_t *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }

static double o_f16(unsigned h) {
    int e = (int)(h >> 10 & 31), f = (int)(h & 1023);
    double v = e == 0 ? ldexp(f, -24) : e == 31 ? (f ? NAN : INFINITY) : ldexp(1024 + f, e - 25);
    return h & 0x8000 ? -v : v;
}

static double o_bf16(unsigned h) {
    int e = (int)(h >> 7 & 255), f = (int)(h & 127);
    double v = e == 0 ? ldexp(f, -133) : e == 255 ? (f ? NAN : INFINITY) : ldexp(128 + f, e - 134);
    return h & 0x8000 ? -v : v;
}

/* The 6-bit scale and min of sub-block j from ggml's 12 bytes: sub-blocks 0..3 in the low
 * 6 bits of bytes j (scale) and j + 4 (min); 4..7 have their low 4 bits in byte j + 4
 * (scale low nibble, min high nibble) and their top 2 bits in the top bits of bytes j - 4
 * (scale) and j (min). */
static void o_kscale(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* Element e of the block at b; *mag (may be NULL) gets the size of what a kernel rounds:
 * |x|, or |d sc q| + |dmin m| for Q4_K/Q5_K. *q (may be NULL) gets the stored integer. */
static double o_elem(int type, const uint8_t *b, int e, double *mag, int *qout) {
    double v = 0, mg = -1;
    int q = 0;
    switch (type) {
    case DT_F32: { float f; memcpy(&f, b, 4); v = f; break; }
    case DT_F16: v = o_f16(rd16(b)); break;
    case DT_BF16: v = o_bf16(rd16(b)); break;
    case DT_Q8_0: q = (int8_t)b[2 + e]; v = o_f16(rd16(b)) * q; break;
    case DT_Q4_0: q = e < 16 ? b[2 + e] & 15 : b[2 + e - 16] >> 4; v = o_f16(rd16(b)) * (q - 8); break;
    case DT_Q4_K:
    case DT_Q5_K: {
        int j = e / 32, l = e % 32, sc, m, five = type == DT_Q5_K;
        o_kscale(b + 4, j, &sc, &m);
        int byte = b[(five ? 48 : 16) + 32 * (j / 2) + l];
        q = j % 2 ? byte >> 4 : byte & 15;
        if (five) q += (b[16 + l] >> j & 1) * 16;
        double a = o_f16(rd16(b)) * sc * q, c = o_f16(rd16(b + 2)) * m;
        v = a - c;
        mg = fabs(a) + fabs(c);
        break;
    }
    case DT_Q6_K: {
        int h = e / 128, k = e % 128 / 32, l = e % 32;
        int lo = b[64 * h + 32 * (k & 1) + l], hi = b[128 + 32 * h + l] >> 2 * k & 3;
        q = (k < 2 ? lo & 15 : lo >> 4) | hi << 4;
        v = o_f16(rd16(b + 208)) * (int8_t)b[192 + e / 16] * (q - 32);
        break;
    }
    case DT_Q8_K: { float d; memcpy(&d, b, 4); q = (int8_t)b[4 + e]; v = (double)d * q; break; }
    default: v = NAN;
    }
    if (mag) *mag = mg >= 0 ? mg : fabs(v);
    if (qout) *qout = q;
    return v;
}

/* Element i of a row of n elements. */
static double o_value(int type, const void *row, int64_t i, double *mag, int *q) {
    const o_layout *L = o_layout_of(type);
    const uint8_t *b = (const uint8_t *)row + (i / L->blck) * L->bytes;
    return o_elem(type, b, (int)(i % L->blck), mag, q);
}

/* ---- (a) dequantising hand-built blocks --------------------------------------------------- */
static void check_dequant(int type, const void *blk, int n, const int *idx, const double *want, int nw) {
    float *y = malloc((size_t)n * sizeof(float));
    quant_dequantize_row(type, blk, y, n);
    for (int k = 0; k < nw; k++) {
        double o = o_value(type, blk, idx[k], NULL, NULL);
        CHECKF(o == want[k], "oracle %s element %d: %.9g, by hand %.9g", dtype_info(type)->name, idx[k], o, want[k]);
        CHECKF(y[idx[k]] == want[k], "%s element %d: %.9g, by hand %.9g", dtype_info(type)->name, idx[k],
               (double)y[idx[k]], want[k]);
    }
    free(y);
}

TEST(kernels_oracle_dequant_by_hand) {
    /* F16: 0x3c00 = 1; 0xc000 = -2; 0x7bff = (2 - 2^-10) * 2^15 = 65504; 0x0001 = 2^-24
     * (smallest subnormal); 0x3555 = (1 + 341/1024) / 4 = 0.333251953125; 0x8000 = -0 */
    const uint16_t h[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x8000};
    const double hw[] = {1, -2, 65504, 0x1p-24, 0.333251953125, -0.0};
    const int i6[] = {0, 1, 2, 3, 4, 5};
    check_dequant(DT_F16, h, 6, i6, hw, 6);
    /* BF16: 0x3f80 = 1; 0xc040 = -3; 0x4049 = (1 + 73/128) * 2 = 3.140625;
     * 0x0001 = 2^-133; 0x7f7f = (1 + 127/128) * 2^127 = 0x1.fep127; 0xbe00 = -0.125 */
    const uint16_t bh[] = {0x3f80, 0xc040, 0x4049, 0x0001, 0x7f7f, 0xbe00};
    const double bw[] = {1, -3, 3.140625, 0x1p-133, 0x1.fep127, -0.125};
    check_dequant(DT_BF16, bh, 6, i6, bw, 6);

    /* Q4_0: d = 0.5 (0x3800); byte j = j | (15 - j) << 4: elements 0..15 have nibbles
     * 0..15 -> (q - 8) / 2 = -4, -3.5, ..., 3.5; elements 16..31 have 15..0 -> 3.5 .. -4 */
    uint8_t q4[18] = {0x00, 0x38};
    for (int j = 0; j < 16; j++) q4[2 + j] = (uint8_t)(j | (15 - j) << 4);
    const double q4w[32] = {-4,  -3.5, -3,  -2.5, -2, -1.5, -1, -0.5, 0,  0.5,  1,  1.5,  2,  2.5,  3,  3.5,
                            3.5, 3,    2.5, 2,    1.5, 1,   0.5, 0,   -0.5, -1, -1.5, -2, -2.5, -3, -3.5, -4};
    int i32[32];
    for (int j = 0; j < 32; j++) i32[j] = j;
    check_dequant(DT_Q4_0, q4, 32, i32, q4w, 32);

    /* Q8_0: d = -0.25 (0xb400); q = -128, -127, -1, 0, 1, 2, 127 -> 32, 31.75, 0.25, -0,
     * -0.25, -0.5, -31.75 */
    uint8_t q8[34] = {0x00, 0xb4, 0x80, 0x81, 0xff, 0x00, 0x01, 0x02, 0x7f};
    const double q8w[] = {32, 31.75, 0.25, 0, -0.25, -0.5, -31.75};
    check_dequant(DT_Q8_0, q8, 32, i32, q8w, 7);

    /* Q4_K: d = 1 (0x3c00), dmin = 0.5 (0x3800); sub-block scales sc = 1 2 3 4 17 33 50 63,
     * mins m = 0 1 2 3 20 40 5 63. Bytes: 0..3 = sc0..3 | top2(sc4..7) << 6 = 0x41 0x82 0xc3
     * 0xc4; 4..7 = m0..3 | top2(m4..7) << 6 = 0x40 0x81 0x02 0xc3; 8..11 = low4(sc4..7) |
     * low4(m4..7) << 4 = 0x41 0x81 0x52 0xff.
     * Nibble bytes: group byte l = (l & 15) | (15 - (l & 15)) << 4, so element l of an even
     * sub-block has q = l & 15 and of an odd one 15 - (l & 15).
     *   x0   (j0, q0)   = 1*0  - 0.5*0  = 0       x33  (j1, q14) = 2*14 - 0.5*1  = 27.5
     *   x143 (j4, q15)  = 17*15 - 0.5*20 = 245     x162 (j5, q13) = 33*13 - 0.5*40 = 409
     *   x199 (j6, q7)   = 50*7 - 0.5*5  = 347.5   x255 (j7, q0)  = 0 - 0.5*63    = -31.5 */
    uint8_t k4[176] = {0x00, 0x3c, 0x00, 0x38, 0x41, 0x82, 0xc3, 0xc4, 0x40, 0x81, 0x02, 0xc3, 0x41, 0x81, 0x52, 0xff};
    for (int l = 0; l < 128; l++) k4[16 + l] = (uint8_t)((l & 15) | (15 - (l & 15)) << 4);
    const int k4i[] = {0, 33, 143, 162, 199, 255};
    const double k4w[] = {0, 27.5, 245, 409, 347.5, -31.5};
    check_dequant(DT_Q4_K, k4, 256, k4i, k4w, 6);

    /* Q5_K: the same header; qh[32] then the same nibbles. qh[1] = 0xaa (bits 1 3 5 7),
     * qh[31] = 0x80 (bit 7), qh[4] = 0x10 (bit 4):
     *   x1   (j0, bit 0 clear, q1)      = 1*1 - 0           = 1
     *   x33  (j1, bit 1 set, q14 + 16)  = 2*30 - 0.5        = 59.5
     *   x132 (j4, bit 4 set, q4 + 16)   = 17*20 - 0.5*20    = 330
     *   x255 (j7, bit 7 set, q0 + 16)   = 63*16 - 0.5*63    = 976.5
     *   x225 (j7, qh[1] bit 7 set, q 15 - 1 + 16 = 30) = 63*30 - 31.5 = 1858.5 */
    uint8_t k5[176];
    memcpy(k5, k4, 16);
    memset(k5 + 16, 0, 32);
    k5[16 + 1] = 0xaa;
    k5[16 + 31] = 0x80;
    k5[16 + 4] = 0x10;
    memcpy(k5 + 48, k4 + 16, 128);
    const int k5i[] = {1, 33, 132, 255, 225};
    const double k5w[] = {1, 59.5, 330, 976.5, 1858.5};
    check_dequant(DT_Q5_K, k5, 256, k5i, k5w, 5);

    /* Q6_K: ql[i] = i, qh all 0xe4 (2-bit fields 0 1 2 3, so the top bits of element
     * 128 h + 32 k + l are k), scales 1 -1 2 -2 3 -3 4 -4 5 -5 6 -6 7 -7 8 -8, d = 0.5:
     *   e0   h0 k0 l0:  ql[0]  = 0x00 low 0,  top 0: q 0  -> -32; scale[0] 1  -> -16
     *   e40  h0 k1 l8:  ql[40] = 0x28 low 8,  top 1: q 24 -> -8;  scale[2] 2  -> -8
     *   e70  h0 k2 l6:  ql[6]  = 0x06 high 0, top 2: q 32 -> 0                -> 0
     *   e127 h0 k3 l31: ql[63] = 0x3f high 3, top 3: q 51 -> 19;  scale[7] -4 -> -38
     *   e160 h1 k1 l0:  ql[96] = 0x60 low 0,  top 1: q 16 -> -16; scale[10] 6 -> -48
     *   e223 h1 k2 l31: ql[95] = 0x5f high 5, top 2: q 37 -> 5;   scale[13] -7 -> -17.5 */
    uint8_t k6[210];
    for (int i = 0; i < 128; i++) k6[i] = (uint8_t)i;
    memset(k6 + 128, 0xe4, 64);
    for (int j = 0; j < 16; j++) k6[192 + j] = (uint8_t)(int8_t)((j % 2 ? -1 : 1) * (j / 2 + 1));
    k6[208] = 0x00;
    k6[209] = 0x38;
    const int k6i[] = {0, 40, 70, 127, 160, 223};
    const double k6w[] = {-16, -8, 0, -38, -48, -17.5};
    check_dequant(DT_Q6_K, k6, 256, k6i, k6w, 6);

    /* Q8_K: d = 0.125 as f32 (0x3e000000), q[i] = i - 128: x0 = -16, x255 = 15.875 */
    uint8_t k8[292] = {0x00, 0x00, 0x00, 0x3e};
    for (int i = 0; i < 256; i++) k8[4 + i] = (uint8_t)(i - 128);
    const int k8i[] = {0, 127, 128, 255};
    const double k8w[] = {-16, -0.125, 0, 15.875};
    check_dequant(DT_Q8_K, k8, 256, k8i, k8w, 4);
}

/* ---- random blocks: every bit pattern of the quants, sane scales ------------------------- */
static uint16_t rand_f16(void) { /* exponent 1..20: 2^-14 .. 2^5, either sign */
    return (uint16_t)((rnd() & 0x83ff) | (1 + rnd() % 20) << 10);
}

/* A row of n elements with random bytes, the scale fields set to random finite values. */
static void *rand_row(int type, int64_t n) {
    const o_layout *L = o_layout_of(type);
    int64_t nb = n / L->blck;
    uint8_t *r = malloc((size_t)(nb * L->bytes));
    for (int64_t i = 0; i < nb * L->bytes; i++) r[i] = (uint8_t)rnd();
    for (int64_t k = 0; k < nb; k++) {
        uint8_t *b = r + k * L->bytes;
        uint16_t h0 = rand_f16(), h1 = rand_f16() & 0x7fff; /* dmin >= 0 as ggml makes it */
        float f = urand() * 4;
        switch (type) {
        case DT_F32: memcpy(b, &f, 4); break;
        case DT_F16: memcpy(b, &h0, 2); break;
        case DT_BF16: b[1] = (uint8_t)((b[1] & 0x80) | (0x38 + rnd() % 16)); break; /* 2^-15 .. 2^15 */
        case DT_Q8_0: case DT_Q4_0: case DT_Q4_K: case DT_Q5_K: memcpy(b, &h0, 2); break;
        case DT_Q6_K: memcpy(b + 208, &h0, 2); break;
        case DT_Q8_K: memcpy(b, &f, 4); break;
        }
        if (type == DT_Q4_K || type == DT_Q5_K) memcpy(b + 2, &h1, 2);
    }
    return r;
}

TEST(kernels_oracle_dequant_random_blocks) {
    const int types[] = {DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0, DT_Q4_K, DT_Q5_K, DT_Q6_K, DT_Q8_K};
    const int64_t n = 8 * 256;
    float *y = malloc(n * sizeof(float));
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        int type = types[t];
        const o_layout *L = o_layout_of(type);
        CHECK_EQ_INT(dtype_info(type)->blck, L->blck);
        CHECK_EQ_INT(dtype_info(type)->type_size, L->bytes);
        void *r = rand_row(type, n);
        quant_dequantize_row(type, r, y, n);
        int bad = 0;
        for (int64_t i = 0; i < n && bad < 3; i++) {
            double mag, want = o_value(type, r, i, &mag, NULL);
            /* exact but for Q4_K/Q5_K's and Q8_K's one rounding */
            double tol = type == DT_Q4_K || type == DT_Q5_K || type == DT_Q8_K ? U24 * mag : 0;
            if (!(fabs(y[i] - want) <= tol)) {
                bad++;
                CHECKF(0, "%s element %lld: %.9g, oracle %.9g", dtype_info(type)->name, (long long)i, (double)y[i], want);
            }
        }
        free(r);
    }
    free(y);
}

/* ---- (b) quantising: the oracle reads what quant_quantize_row wrote ----------------------- */
/* Varied data: scales change every 32 values; then blocks of edge cases. */
static void fill_varied(float *x, int64_t n) {
    float s = 1;
    for (int64_t i = 0; i < n; i++) {
        if (i % 32 == 0) s = 0.01f + 3.0f * (urand() + 1.0f);
        x[i] = s * urand();
    }
    if (n < 128) return;
    for (int j = 0; j < 32; j++) x[j] = 0;                          /* all zero */
    for (int j = 0; j < 32; j++) x[32 + j] = (float)(j - 16) + 0.5f; /* ties against d = 1/8ish */
    x[64 + 7] = -9;                                                   /* lone negative maximum */
    for (int j = 0; j < 32; j++) if (j != 7) x[64 + j] = 8 * urand();
    for (int j = 0; j < 32; j++) x[96 + j] = 1e-3f * urand();
}

/* How far the f16 nearest to d may be from it (file comment). */
static double f16_err(double d) { return fmax(0x1p-11 * fabs(d), 0x1p-25); }

/* x quantised by duet to type, read back by the oracle into v (double), q the integers. */
static void *quant_read(int type, const float *x, int64_t n, double *v, int *q) {
    void *r = malloc(dtype_row_size(type, n));
    quant_quantize_row(type, x, r, n);
    for (int64_t i = 0; i < n; i++) v[i] = o_value(type, r, i, NULL, &q[i]);
    return r;
}

/* Nearest representable, ties to even: |x - dec(h)| no larger than for either neighbour of
 * h (same sign, magnitudes one code apart), and even code on a tie. */
static void check_nearest(const char *name, double (*dec)(unsigned), unsigned maxfin, float x, unsigned h) {
    unsigned mag = h & 0x7fff;
    double ax = fabs((double)x), dm = fabs(ax - dec(mag));
    CHECKF(mag <= maxfin && (x == 0 || (h >> 15) == (x < 0)), "%s of %.9g: code 0x%04x", name, x, h);
    double lo = mag > 0 ? fabs(ax - dec(mag - 1)) : INFINITY, hi = mag < maxfin ? fabs(ax - dec(mag + 1)) : INFINITY;
    CHECKF(dm <= lo && dm <= hi, "%s of %.9g: 0x%04x (%.9g) is not the nearest", name, x, h, dec(mag));
    if (dm == lo || dm == hi) CHECKF((mag & 1) == 0, "%s of %.9g: tie not to even (0x%04x)", name, x, h);
}

static void check_quant_float(void) {
    /* exact ties: 1 + 2^-11 is half way between f16 1 and 1 + 2^-10 (-> 1, even); 1 + 3 *
     * 2^-11 between odd 1 + 2^-10 and even 1 + 2^-9; 3 * 2^-25 between subnormals 1 and 2
     * ulps; 65519 (-> 65504) and 65504 itself */
    float x[512] = {1 + 0x1p-11f, 1 + 3 * 0x1p-11f, 3 * 0x1p-25f, 0x1p-25f, -65519.0f, 65504.0f, 1 + 0x1p-8f,
                    1 + 3 * 0x1p-8f, -0.0f};
    for (int i = 9; i < 512; i++) x[i] = ldexpf(urand(), (int)(rnd() % 40) - 26);
    uint16_t h[512];
    quant_quantize_row(DT_F16, x, h, 512);
    for (int i = 0; i < 512; i++) check_nearest("f16", o_f16, 0x7bff, x[i], h[i]);
    CHECK_EQ_INT(h[0], 0x3c00);
    CHECK_EQ_INT(h[1], 0x3c02);
    CHECK_EQ_INT(h[2], 0x0002);
    CHECK_EQ_INT(h[4], 0xfbff);
    for (int i = 9; i < 512; i++) x[i] = ldexpf(urand(), (int)(rnd() % 200) - 100);
    quant_quantize_row(DT_BF16, x, h, 512);
    for (int i = 0; i < 512; i++) check_nearest("bf16", o_bf16, 0x7f7f, x[i], h[i]);
    /* bf16 ties: 1 + 2^-8 between 1 and 1 + 2^-7 (-> 1); 1 + 3 * 2^-8 -> 1 + 2^-6 */
    CHECK_EQ_INT(h[6], 0x3f80);
    CHECK_EQ_INT(h[7], 0x3f82);
}

/* Q8_0 and Q4_0: the scale rule and the per-value bound (file comment). */
static void check_quant_q8_q4(int type, const float *x, int64_t n) {
    double *v = malloc(n * sizeof(double));
    int *q = malloc(n * sizeof(int));
    uint8_t *r = quant_read(type, x, n, v, q);
    const int q4 = type == DT_Q4_0, bs = q4 ? 18 : 34;
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        int arg = 0;
        for (int j = 1; j < 32; j++) if (fabsf(xb[j]) > fabsf(xb[arg])) arg = j;
        double d = q4 ? xb[arg] / -8.0 : fabs(xb[arg]) / 127.0, D = o_f16(rd16(r + b * bs));
        CHECKF(fabs(D - d) <= f16_err(d), "%s block %lld: d %.9g, want f16 of %.9g", dtype_info(type)->name,
               (long long)b, D, d);
        if (q4 && d != 0) CHECKF(q[32 * b + arg] == 0, "q4_0 block %lld: largest value has q %d, not 0", (long long)b, q[32 * b + arg]);
        if (!q4 && d != 0) CHECKF(abs(q[32 * b + arg]) == 127, "q8_0 block %lld: largest |q| %d", (long long)b, q[32 * b + arg]);
        for (int j = 0; j < 32; j++) {
            int64_t i = 32 * b + j;
            double bound = fabs(d) * (q4 && q[i] == 15 ? 1.0 : 0.5) + (q4 ? 8 : 127) * f16_err(d);
            CHECKF(fabs(xb[j] - v[i]) <= bound, "%s element %lld: %.9g read back as %.9g (bound %g)",
                   dtype_info(type)->name, (long long)i, xb[j], v[i], bound);
            if (!q4) CHECK(q[i] >= -127);
            if (test_failed_now()) goto out;
        }
    }
out:
    free(r);
    free(v);
    free(q);
}

static double rel_rms(const float *x, const double *v, int64_t n) {
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        e += (x[i] - v[i]) * (x[i] - v[i]);
        s += (double)x[i] * x[i];
    }
    return sqrt(e / s);
}

/* K-quants: the scale rules and bounds in the file comment. */
static void check_quant_k(int type, const float *x, int64_t n, double rms_bound) {
    double *v = malloc(n * sizeof(double));
    int *q = malloc(n * sizeof(int));
    uint8_t *r = quant_read(type, x, n, v, q);
    const o_layout *L = o_layout_of(type);
    const char *name = dtype_info(type)->name;
    const int qmax = type == DT_Q4_K ? 15 : type == DT_Q5_K ? 31 : 63;
    for (int64_t b = 0; b < n / QK_K && !test_failed_now(); b++) {
        const uint8_t *blk = r + b * L->bytes;
        const float *xb = x + b * QK_K;
        double ds[16];
        if (type == DT_Q6_K) {
            double s[16], smax = 0, D = o_f16(rd16(blk + 208));
            for (int j = 0; j < 16; j++) {
                int arg = 0;
                for (int l = 1; l < 16; l++) if (fabsf(xb[16 * j + l]) > fabsf(xb[16 * j + arg])) arg = l;
                s[j] = xb[16 * j + arg] / -32.0;
                smax = fmax(smax, fabs(s[j]));
            }
            CHECKF(fabs(D - smax / 127) <= f16_err(smax / 127), "q6_K block %lld: d %.9g, want f16 of %.9g",
                   (long long)b, D, smax / 127);
            for (int j = 0; j < 16; j++) {
                int sc = (int8_t)blk[192 + j];
                CHECKF(D == 0 || fabs(sc - s[j] / D) <= 0.5 + 1e-4, "q6_K block %lld sub-block %d: scale %d for %.9g",
                       (long long)b, j, sc, s[j] / D);
                ds[j] = fabs(D * sc);
            }
        } else {
            int scmax = 0, mmax = 0;
            double d = o_f16(rd16(blk)), dmin = o_f16(rd16(blk + 2));
            CHECKF(d >= 0 && dmin >= 0, "%s block %lld: d %g dmin %g", name, (long long)b, d, dmin);
            for (int j = 0; j < 8; j++) {
                int sc, m;
                o_kscale(blk + 4, j, &sc, &m);
                scmax = sc > scmax ? sc : scmax;
                mmax = m > mmax ? m : mmax;
                ds[2 * j] = ds[2 * j + 1] = d * sc;
            }
            CHECKF(d == 0 || scmax == 63, "%s block %lld: largest scale %d", name, (long long)b, scmax);
            CHECKF(dmin == 0 || mmax == 63, "%s block %lld: largest min %d", name, (long long)b, mmax);
        }
        for (int i = 0; i < QK_K; i++) {
            int64_t e = b * QK_K + i;
            /* clamped, or a sub-block whose scale rounded to 0 (all its values read as 0):
             * no per-value bound */
            if (q[e] == 0 || q[e] == qmax || ds[i / 16] == 0) continue;
            double bound = ds[i / 16] / 2 * (1 + 1e-5) + 1e-6 * fabs(xb[i]);
            CHECKF(fabs(xb[i] - v[e]) <= bound, "%s element %lld: %.9g read back as %.9g (q %d, bound %g)", name,
                   (long long)e, xb[i], v[e], q[e], bound);
            if (test_failed_now()) break;
        }
    }
    double rel = rel_rms(x, v, n);
    CHECKF(rel < rms_bound, "%s: relative RMS error %g read back by the oracle (bound %g)", name, rel, rms_bound);
    free(r);
    free(v);
    free(q);
}

static void check_quant_q8_K(const float *x, int64_t n) {
    uint8_t *r = malloc(dtype_row_size(DT_Q8_K, n));
    quant_quantize_row(DT_Q8_K, x, r, n);
    for (int64_t b = 0; b < n / QK_K; b++) {
        const uint8_t *blk = r + b * 292;
        float amax = 0, d;
        for (int i = 0; i < QK_K; i++) amax = fmaxf(amax, fabsf(x[b * QK_K + i]));
        memcpy(&d, blk, 4);
        CHECKF(d == amax / 127.0f, "q8_K block %lld: d %.9g, amax / 127 = %.9g", (long long)b, d, amax / 127.0f);
        for (int i = 0; i < QK_K; i++) {
            double v = o_elem(DT_Q8_K, blk, i, NULL, NULL);
            CHECKF(fabs(x[b * QK_K + i] - v) <= d / 2 * (1 + 1e-6), "q8_K element %d of block %lld", i, (long long)b);
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += (int8_t)blk[4 + 16 * g + l];
            CHECK_EQ_INT((int16_t)rd16(blk + 260 + 2 * g), s);
        }
    }
    free(r);
}

TEST(kernels_oracle_quantize_round_trip) {
    const int64_t n = 16 * QK_K;
    float *x = malloc(n * sizeof(float));
    fill_varied(x, n);
    check_quant_float();
    check_quant_q8_q4(DT_Q8_0, x, n);
    check_quant_q8_q4(DT_Q4_0, x, n);
    check_quant_k(DT_Q4_K, x, n, 0.10);
    check_quant_k(DT_Q5_K, x, n, 0.05);
    check_quant_k(DT_Q6_K, x, n, 0.04);
    check_quant_q8_K(x, n);
    /* the activations as from_float makes them, at every level: Q8_0 and Q8_K's rules */
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        const kernel_traits *k0 = kernels_get_level(DT_Q4_0, level), *kk = kernels_get_level(DT_Q4_K, level);
        if (!k0 || !kk) continue;
        uint8_t *a = malloc(dtype_row_size(DT_Q8_0, n)), *c = malloc(dtype_row_size(DT_Q8_0, n));
        k0->from_float(x, a, n);
        quant_quantize_row(DT_Q8_0, x, c, n); /* just checked against the rules above */
        CHECKF(memcmp(a, c, dtype_row_size(DT_Q8_0, n)) == 0, "%s from_float (q8_0)", kernels_level_name(level));
        free(a);
        free(c);
        a = malloc(dtype_row_size(DT_Q8_K, n));
        c = malloc(dtype_row_size(DT_Q8_K, n));
        kk->from_float(x, a, n);
        quant_quantize_row(DT_Q8_K, x, c, n);
        CHECKF(memcmp(a, c, dtype_row_size(DT_Q8_K, n)) == 0, "%s from_float (q8_K)", kernels_level_name(level));
        free(a);
        free(c);
    }
    free(x);
}

/* ---- (c) vec_dot against the oracle's values, at every level ----------------------------- */
static void check_vec_dot_one(int level, int type, int64_t n, int random_bytes) {
    const kernel_traits *kt = kernels_get_level(type, level);
    const o_layout *L = o_layout_of(type);
    float *xf = malloc(n * sizeof(float)), *wf = malloc(n * sizeof(float));
    fill_varied(xf, n);
    void *w;
    if (random_bytes) {
        w = rand_row(type, n);
    } else {
        for (int64_t i = 0; i < n; i++) wf[i] = urand();
        w = malloc(dtype_row_size(type, n));
        quant_quantize_row(type, wf, w, n);
    }
    void *x = xf;
    if (kt->from_float) {
        x = malloc(dtype_row_size(kt->vec_dot_type, n));
        kt->from_float(xf, x, n);
    }
    double exact = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        double wm, wv = o_value(type, w, i, &wm, NULL);
        double xv = kt->from_float ? o_value(kt->vec_dot_type, x, i, NULL, NULL) : xf[i];
        exact += wv * xv;
        mag += wm * fabs(xv);
    }
    float got = NAN;
    kt->vec_dot(n, &got, w, x);
    double tol = (double)(n / L->blck + 4) * U24 * mag;
    CHECKF(fabs(got - exact) <= tol, "%s %s n=%lld (%s weights): vec_dot %.9g, oracle %.9g (tol %g)",
           kernels_level_name(level), dtype_info(type)->name, (long long)n, random_bytes ? "random-byte" : "quantised",
           (double)got, exact, tol);
    if (x != xf) free(x);
    free(xf);
    free(wf);
    free(w);
}

TEST(kernels_oracle_vec_dot) {
    const int types[] = {DT_F32, DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0, DT_Q4_K, DT_Q5_K, DT_Q6_K};
    const int64_t ns[] = {1, 7, 33, 32, 64, 256, 1024, 4096};
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        if (!kernels_get_level(DT_F32, level)) continue;
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
            for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
                if (ns[k] % o_layout_of(types[t])->blck) continue;
                check_vec_dot_one(level, types[t], ns[k], 0);
                check_vec_dot_one(level, types[t], ns[k], 1);
                if (test_failed_now()) return;
            }
    }
}
