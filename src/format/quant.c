/*
 * quant.c: element types and block formats (ggml's ids and layouts) and their scalar
 * reference conversions. These functions define the formats: every fast kernel is tested
 * against them, so they favour plainness over speed.
 */
#include "format/quant.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Sizes of every ggml type, so files holding types duet cannot compute with still parse and
 * are refused by name. supported marks the ones duet computes with. */
static const dtype_traits k_types[DT_COUNT] = {
    [DT_F32] = {"f32", 1, 4, 1},
    [DT_F16] = {"f16", 1, 2, 1},
    [DT_Q4_0] = {"q4_0", 32, 18, 1},
    [DT_Q4_1] = {"q4_1", 32, 20, 0},
    [DT_Q5_0] = {"q5_0", 32, 22, 0},
    [DT_Q5_1] = {"q5_1", 32, 24, 0},
    [DT_Q8_0] = {"q8_0", 32, 34, 1},
    [DT_Q8_1] = {"q8_1", 32, 36, 0},
    [DT_Q2_K] = {"q2_K", 256, 84, 0},
    [DT_Q3_K] = {"q3_K", 256, 110, 0},
    [DT_Q4_K] = {"q4_K", 256, 144, 1},
    [DT_Q5_K] = {"q5_K", 256, 176, 1},
    [DT_Q6_K] = {"q6_K", 256, 210, 1},
    [DT_Q8_K] = {"q8_K", 256, 292, 0},
    [DT_IQ2_XXS] = {"iq2_xxs", 256, 66, 0},
    [DT_IQ2_XS] = {"iq2_xs", 256, 74, 0},
    [DT_IQ3_XXS] = {"iq3_xxs", 256, 98, 0},
    [DT_IQ1_S] = {"iq1_s", 256, 50, 0},
    [DT_IQ4_NL] = {"iq4_nl", 32, 18, 0},
    [DT_IQ3_S] = {"iq3_s", 256, 110, 0},
    [DT_IQ2_S] = {"iq2_s", 256, 82, 0},
    [DT_IQ4_XS] = {"iq4_xs", 256, 136, 0},
    [DT_I8] = {"i8", 1, 1, 0},
    [DT_I16] = {"i16", 1, 2, 0},
    [DT_I32] = {"i32", 1, 4, 0},
    [DT_I64] = {"i64", 1, 8, 0},
    [DT_F64] = {"f64", 1, 8, 0},
    [DT_IQ1_M] = {"iq1_m", 256, 56, 0},
    [DT_BF16] = {"bf16", 1, 2, 1},
    [DT_TQ1_0] = {"tq1_0", 256, 54, 0},
    [DT_TQ2_0] = {"tq2_0", 256, 66, 0},
};

const dtype_traits *dtype_info(int type) {
    if (type < 0 || type >= DT_COUNT || !k_types[type].name) return NULL;
    return &k_types[type];
}

_Static_assert((int)DUET_TYPE_F32 == (int)DT_F32, "duet.h names ggml's F32 id");

int duet_type_from_name(const char *name) {
    for (int t = 0; t < DT_COUNT; t++)
        if (k_types[t].name && strcasecmp(k_types[t].name, name) == 0) return t;
    return -1;
}

size_t dtype_row_size(int type, int64_t n) {
    if (type == DT_Q8_0S) return n >= 0 && n % QK8_0 == 0 ? (size_t)(n / QK8_0) * sizeof(block_q8_0s) : 0;
    const dtype_traits *tr = dtype_info(quant_file_type(type));
    if (!tr || n < 0 || n % tr->blck) return 0;
    return (size_t)(n / tr->blck) * tr->type_size;
}

/* ---- half precision: bit-exact IEEE 754 binary16, round to nearest even ---------------- */
float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan (keep nan quiet and non-zero) */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 | ((absx >> 13) & 0x3ff) : 0));
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (absx < 0x38800000u) { /* result subnormal or zero: value / 2^-24, round to even */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25: zero */
        uint32_t e = absx >> 23, m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;            /* 14 + (113 - e) - ... */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((absx >> 13) - (112u << 10)), rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

float bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); /* quiet nan */
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

/* ---- block formats --------------------------------------------------------------------- */
static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float amax = 0;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[b].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quantize_q4_0(const float *x, block_q4_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
        /* scale from the signed value of largest magnitude so that it maps to -8 exactly */
        float amax = 0, max = 0;
        for (int j = 0; j < QK4_0; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + QK4_0 / 2] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ---- K-quants ------------------------------------------------------------------------- */
static int nearest_int(float v) { return (int)lrintf(v); }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

void quant_kscales(const uint8_t s[12], uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

static void pack_kscales(const uint8_t sc[8], const uint8_t m[8], uint8_t s[12]) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4));
    }
}

/* Affine fit x ~ a * q - b of one sub-block (q in 0..nmax, a >= 0, b >= 0 so that zero
 * stays representable): min/max start, then least-squares refits of (a, b) to the rounded
 * q while the squared error falls. */
static void fit_affine(const float *x, int n, int nmax, float *a_out, float *b_out) {
    float lo = 0, hi = 0;
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    float a = (hi - lo) / (float)nmax, b = -lo;
    if (a <= 0) { *a_out = 0; *b_out = b; return; }
    double best = INFINITY;
    for (int it = 0; it < 4; it++) {
        double sq = 0, sx = 0, sqq = 0, sqx = 0, err = 0;
        for (int i = 0; i < n; i++) {
            int q = clampi(nearest_int((x[i] + b) / a), 0, nmax);
            double e = (double)a * q - b - x[i];
            err += e * e;
            sq += q; sx += x[i]; sqq += (double)q * q; sqx += (double)q * x[i];
        }
        if (err >= best) break;
        best = err;
        *a_out = a;
        *b_out = b;
        double det = n * sqq - sq * sq;
        if (det <= 0) break;
        double na = (n * sqx - sq * sx) / det, nb = (na * sq - sx) / n;
        if (nb < 0) { nb = 0; na = sqq > 0 ? sqx / sqq : 0; }
        if (na <= 0) break;
        a = (float)na;
        b = (float)nb;
    }
}

/* Q4_K (nmax 15) and Q5_K (nmax 31): per sub-block of 32 an affine fit, then the 8 scales
 * and 8 mins quantised to 6 bits against the block's f16 d and dmin, then the values
 * against the quantised scales (so rounding of the scales is not compounded). */
static void quantize_kaffine(const float *x, void *vy, int64_t n, int nmax) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float a[8], mn[8], amax = 0, mmax = 0;
        for (int j = 0; j < 8; j++) {
            fit_affine(x + 32 * j, 32, nmax, &a[j], &mn[j]);
            amax = fmaxf(amax, a[j]);
            mmax = fmaxf(mmax, mn[j]);
        }
        uint16_t dh = fp32_to_fp16(amax / 63), mh = fp32_to_fp16(mmax / 63);
        float d = fp16_to_fp32(dh), dmin = fp16_to_fp32(mh);
        uint8_t sc[8], m[8], q[QK_K];
        for (int j = 0; j < 8; j++) {
            sc[j] = (uint8_t)(d > 0 ? clampi(nearest_int(a[j] / d), 0, 63) : 0);
            m[j] = (uint8_t)(dmin > 0 ? clampi(nearest_int(mn[j] / dmin), 0, 63) : 0);
            float ds = d * sc[j], dm = dmin * m[j];
            for (int l = 0; l < 32; l++)
                q[32 * j + l] = (uint8_t)(ds > 0 ? clampi(nearest_int((x[32 * j + l] + dm) / ds), 0, nmax) : 0);
        }
        uint8_t *scales, *qs;
        if (nmax == 15) {
            block_q4_K *y = (block_q4_K *)vy + b;
            y->d = dh; y->dmin = mh; scales = y->scales; qs = y->qs;
        } else {
            block_q5_K *y = (block_q5_K *)vy + b;
            y->d = dh; y->dmin = mh; scales = y->scales; qs = y->qs;
            memset(y->qh, 0, sizeof y->qh);
            for (int j = 0; j < 8; j++)
                for (int l = 0; l < 32; l++) y->qh[l] |= (uint8_t)(((q[32 * j + l] >> 4) & 1) << j);
        }
        pack_kscales(sc, m, scales);
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++)
                qs[32 * g + l] = (uint8_t)((q[64 * g + l] & 15) | ((q[64 * g + 32 + l] & 15) << 4));
    }
}

/* Q6_K: per sub-block of 16 a symmetric scale mapping the value of largest magnitude to
 * -32 (as Q4_0 does with -8), the 16 scales to int8 against the block's f16 d. */
static void quantize_q6_K(const float *x, block_q6_K *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y++) {
        float s[16], smax = 0;
        for (int j = 0; j < 16; j++) {
            float amax = 0, v = 0;
            for (int l = 0; l < 16; l++)
                if (fabsf(x[16 * j + l]) > amax) { amax = fabsf(x[16 * j + l]); v = x[16 * j + l]; }
            s[j] = v / -32.0f;
            smax = fmaxf(smax, fabsf(s[j]));
        }
        y->d = fp32_to_fp16(smax / 127);
        float d = fp16_to_fp32(y->d);
        uint8_t q[QK_K];
        for (int j = 0; j < 16; j++) {
            y->scales[j] = (int8_t)(d > 0 ? clampi(nearest_int(s[j] / d), -128, 127) : 0);
            float ds = d * y->scales[j];
            for (int l = 0; l < 16; l++)
                q[16 * j + l] = (uint8_t)(ds != 0 ? clampi(nearest_int(x[16 * j + l] / ds) + 32, 0, 63) : 32);
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *e = q + 128 * h + l; /* e[0], e[32], e[64], e[96] */
                y->ql[64 * h + l] = (uint8_t)((e[0] & 15) | ((e[64] & 15) << 4));
                y->ql[64 * h + 32 + l] = (uint8_t)((e[32] & 15) | ((e[96] & 15) << 4));
                y->qh[32 * h + l] = (uint8_t)((e[0] >> 4) | ((e[32] >> 4) << 2) | ((e[64] >> 4) << 4) |
                                              ((e[96] >> 4) << 6));
            }
    }
}

/* Q8_K: the Q8_0 rule over 256 values with an f32 scale, plus the 16-value sums the
 * K-quant dot products use for their mins and offsets. */
static void quantize_q8_K(const float *x, block_q8_K *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y++) {
        float amax = 0;
        for (int j = 0; j < QK_K; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        y->d = d;
        for (int j = 0; j < QK_K; j++) y->qs[j] = (int8_t)clampi((int)roundf(x[j] * id), -127, 127);
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y->qs[16 * g + l];
            y->bsums[g] = (int16_t)sum;
        }
    }
}

/* The dequantisers follow ggml's arithmetic step for step (d * sc first, then * q, then
 * minus dmin * m), so that a file's values come out as ggml computes them. Q4_K and Q5_K
 * share their header (d, dmin, scales) and nibble layout; Q5_K adds qh. */
static void dequantize_kaffine(const void *src, float *y, int64_t n, int five) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_q4_K *x4 = (const block_q4_K *)src + b;
        const block_q5_K *x5 = (const block_q5_K *)src + b;
        const uint8_t *qs = five ? x5->qs : x4->qs;
        uint8_t sc[8], m[8];
        quant_kscales(five ? x5->scales : x4->scales, sc, m);
        float d = fp16_to_fp32(five ? x5->d : x4->d), dmin = fp16_to_fp32(five ? x5->dmin : x4->dmin);
        for (int j = 0; j < 8; j++) { /* sub-block j: nibbles of group j / 2, high if j odd */
            float dj = d * sc[j], mj = dmin * m[j];
            for (int l = 0; l < 32; l++) {
                int q = j & 1 ? qs[32 * (j / 2) + l] >> 4 : qs[32 * (j / 2) + l] & 15;
                if (five) q |= ((x5->qh[l] >> j) & 1) << 4;
                *y++ = dj * (float)q - mj;
            }
        }
    }
}

static void dequantize_q6_K(const block_q6_K *x, float *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x++, y += QK_K) {
        float d = fp16_to_fp32(x->d);
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t ql0 = x->ql[64 * h + l], ql1 = x->ql[64 * h + 32 + l], qh = x->qh[32 * h + l];
                const int q[4] = {(ql0 & 15) | ((qh & 3) << 4), (ql1 & 15) | (((qh >> 2) & 3) << 4),
                                  (ql0 >> 4) | (((qh >> 4) & 3) << 4), (ql1 >> 4) | (((qh >> 6) & 3) << 4)};
                for (int k = 0; k < 4; k++) {
                    int e = 128 * h + 32 * k + l;
                    y[e] = d * (float)x->scales[e / 16] * (float)(q[k] - 32);
                }
            }
    }
}

/* ---- llama.cpp's mixed file types ------------------------------------------------------ */
int duet_type_mix_from_name(const char *name) {
    if (!strcasecmp(name, "q4_k_m")) return QMIX_Q4_K_M;
    if (!strcasecmp(name, "q5_k_m")) return QMIX_Q5_K_M;
    return -1;
}

int quant_mix_base_type(int mix) {
    return mix == QMIX_Q4_K_M ? DT_Q4_K : mix == QMIX_Q5_K_M ? DT_Q5_K : -1;
}

int quant_mix_file_type(int mix) { return mix == QMIX_Q4_K_M ? 15 : mix == QMIX_Q5_K_M ? 17 : 0; }

/* llama.cpp gives more bits to the first and last eighth of the layers and every third
 * layer between. */
static int use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

int quant_mix_tensor_type(int mix, const char *name, int n_layer) {
    int base = quant_mix_base_type(mix), layer = -1, off = 0;
    if (!strcmp(name, "output.weight")) return DT_Q6_K;
    if (sscanf(name, "blk.%d.%n", &layer, &off) == 1 && off > 0 &&
        (!strcmp(name + off, "attn_v.weight") || !strcmp(name + off, "ffn_down.weight")) &&
        use_more_bits(layer, n_layer))
        return DT_Q6_K;
    return base;
}

void quant_quantize_row(int type, const float *src, void *dst, int64_t n) {
    switch (type) {
    case DT_F32: memcpy(dst, src, (size_t)n * 4); break;
    case DT_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = fp32_to_fp16(src[i]);
        break;
    case DT_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = fp32_to_bf16(src[i]);
        break;
    case DT_Q8_0: quantize_q8_0(src, dst, n); break;
    case DT_Q4_0: quantize_q4_0(src, dst, n); break;
    case DT_Q4_K: quantize_kaffine(src, dst, n, 15); break;
    case DT_Q5_K: quantize_kaffine(src, dst, n, 31); break;
    case DT_Q6_K: quantize_q6_K(src, dst, n); break;
    case DT_Q8_K: quantize_q8_K(src, dst, n); break;
    default: break; /* callers check dtype_info()->supported first */
    }
}

void quant_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    switch (type) {
    case DT_F32: memcpy(dst, src, (size_t)n * 4); break;
    case DT_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = fp16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case DT_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case DT_Q8_0: {
        const block_q8_0 *x = src;
        for (int64_t b = 0; b < n / QK8_0; b++) {
            float d = fp16_to_fp32(x[b].d);
            for (int j = 0; j < QK8_0; j++) dst[b * QK8_0 + j] = d * (float)x[b].qs[j];
        }
        break;
    }
    case DT_Q4_0: {
        const block_q4_0 *x = src;
        for (int64_t b = 0; b < n / QK4_0; b++) {
            float d = fp16_to_fp32(x[b].d);
            for (int j = 0; j < QK4_0 / 2; j++) {
                dst[b * QK4_0 + j] = d * (float)((x[b].qs[j] & 0x0f) - 8);
                dst[b * QK4_0 + j + QK4_0 / 2] = d * (float)((x[b].qs[j] >> 4) - 8);
            }
        }
        break;
    }
    case DT_Q4_K: dequantize_kaffine(src, dst, n, 0); break;
    case DT_Q5_K: dequantize_kaffine(src, dst, n, 1); break;
    case DT_Q6_K: dequantize_q6_K(src, dst, n); break;
    case DT_Q8_K: {
        const block_q8_K *x = src;
        for (int64_t b = 0; b < n / QK_K; b++)
            for (int j = 0; j < QK_K; j++) dst[b * QK_K + j] = x[b].d * (float)x[b].qs[j];
        break;
    }
    default: break;
    }
}

/* ---- row-interleaved (R8) layouts ------------------------------------------------------- */
int quant_r8_type(int type) {
    return type == DT_Q4_0 ? DT_Q4_0_R8 : type == DT_Q8_0 ? DT_Q8_0_R8 : -1;
}

int quant_file_type(int type) {
    return type == DT_Q4_0_R8 ? DT_Q4_0 : type == DT_Q8_0_R8 ? DT_Q8_0 : type;
}

/* Both base layouts are {f16 d; qs[qb]} blocks (18 or 34 bytes); their R8 blocks are
 * {d[8]; qs[8 * qb]}. */
static int r8_qbytes(int type) { return type == DT_Q4_0 ? QK4_0 / 2 : QK8_0; }

int quant_repack_r8(int type, void *data, int64_t n_in, int64_t n_out) {
    int r8 = quant_r8_type(type);
    size_t ws = dtype_row_size(type, n_in);
    if (r8 < 0 || n_out % 8 || !ws) return -1;
    const int qb = r8_qbytes(type);
    const size_t bs = 2 + (size_t)qb, nb = ws / bs;
    uint8_t *tmp = malloc(8 * ws);
    if (!tmp) return -1;
    for (int64_t g = 0; g < n_out / 8; g++) {
        uint8_t *grp = (uint8_t *)data + (size_t)g * 8 * ws;
        memcpy(tmp, grp, 8 * ws);
        for (size_t b = 0; b < nb; b++) {
            uint8_t *o = grp + b * 8 * bs;
            for (int r = 0; r < 8; r++) {
                const uint8_t *blk = tmp + r * ws + b * bs;
                memcpy(o + 2 * r, blk, 2);
                for (int c = 0; c < qb / 4; c++) memcpy(o + 16 + 32 * c + 4 * r, blk + 2 + 4 * c, 4);
            }
        }
    }
    free(tmp);
    return r8;
}

void quant_dequantize_matrix_cols(int type, const void *data, int64_t n_in, int64_t r, int64_t c0,
                                  int64_t n, float *dst) {
    int base = quant_file_type(type);
    size_t ws = dtype_row_size(base, n_in);
    if (base == type) {
        quant_dequantize_row(type, (const uint8_t *)data + (size_t)r * ws + dtype_row_size(type, c0),
                             dst, n);
        return;
    }
    /* R8: block b of the 8 rows of a group lies at b * 8 * bs, its scales first, then the
     * quants interleaved by 4 bytes (quant_repack_r8) */
    const int qb = r8_qbytes(base);
    const size_t bs = 2 + (size_t)qb;
    const uint8_t *grp = (const uint8_t *)data + (size_t)(r / 8) * 8 * ws;
    int k = (int)(r % 8);
    /* read in place (LoRA training dequantises every weight this way each step): byte j of
     * the row's quants is at 16 + 32 (j / 4) + 4 k + j % 4 of the group's block */
    for (int64_t b = c0 / 32; b < (c0 + n) / 32; b++) {
        const uint8_t *i = grp + (size_t)b * 8 * bs, *q = i + 16 + 4 * k;
        uint16_t h;
        memcpy(&h, i + 2 * k, 2);
        float d = fp16_to_fp32(h), *o = dst + (b * 32 - c0);
        if (base == DT_Q4_0)
            for (int j = 0; j < QK4_0 / 2; j++) {
                uint8_t v = q[32 * (j / 4) + j % 4];
                o[j] = d * (float)((v & 0x0f) - 8);
                o[j + QK4_0 / 2] = d * (float)((v >> 4) - 8);
            }
        else
            for (int j = 0; j < QK8_0; j++) o[j] = d * (float)(int8_t)q[32 * (j / 4) + j % 4];
    }
}

void quant_dequantize_matrix_row(int type, const void *data, int64_t n_in, int64_t r, float *dst) {
    quant_dequantize_matrix_cols(type, data, n_in, r, 0, n_in, dst);
}
