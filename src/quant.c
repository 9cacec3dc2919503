/*
 * quant.c: element types and block formats (ggml's ids and layouts) and their scalar
 * reference conversions. These functions define the formats: every fast kernel is tested
 * against them, so they favour plainness over speed.
 */
#include "quant.h"

#include <math.h>
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
    [DT_Q4_K] = {"q4_K", 256, 144, 0},
    [DT_Q5_K] = {"q5_K", 256, 176, 0},
    [DT_Q6_K] = {"q6_K", 256, 210, 0},
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

int dtype_from_name(const char *name) {
    for (int t = 0; t < DT_COUNT; t++)
        if (k_types[t].name && strcasecmp(k_types[t].name, name) == 0) return t;
    return -1;
}

size_t dtype_row_size(int type, int64_t n) {
    const dtype_traits *tr = dtype_info(type);
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
    default: break;
    }
}
