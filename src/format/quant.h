/*
 * quant.h: tensor element types and block formats, with scalar reference
 * quantize / dequantize. Type ids and block layouts are ggml's, so GGUF files from other
 * tools are read bit-for-bit:
 *   F32 (0), F16 (1, IEEE half), BF16 (30, top 16 bits of an f32),
 *   Q4_0 (2): blocks of 32: f16 d; 16 bytes qs, low nibbles = elements 0..15, high = 16..31;
 *             x = d * (q - 8)
 *   Q8_0 (8): blocks of 32: f16 d; int8 qs[32]; x = d * q
 *   K-quants: super-blocks of 256 (QK_K) made of sub-blocks with their own small scales.
 *   Q4_K (12): f16 d, dmin; scales[12] = 8 six-bit scales sc[j] and mins m[j] (packing in
 *             quant_kscales); qs[128]: each 32-byte group g holds sub-block 2g in its low
 *             nibbles and 2g+1 in its high nibbles; x = d * sc[j] * q - dmin * m[j]
 *   Q5_K (13): as Q4_K plus qh[32]: bit j of qh[l] is the fifth bit (+16) of element l of
 *             sub-block j
 *   Q6_K (14): ql[128], qh[64], int8 scales[16], f16 d; 16 sub-blocks of 16;
 *             x = d * scales[j] * (q - 32), q six bits (layout in quant.c's dequantizer)
 *   Q8_K (15): f32 d; int8 qs[256]; int16 bsums[16] (sums of 16 consecutive qs): the
 *             activations K-quant dot products take; never stored in files
 * Q8_K is computed with (activations) but not a weight type, so not "supported".
 * Other ggml types are known by size (so files holding them are parsed and named in errors)
 * but have supported = 0 until implemented.
 */
#ifndef DUET_QUANT_H
#define DUET_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

enum {
    DT_F32 = 0, DT_F16 = 1, DT_Q4_0 = 2, DT_Q4_1 = 3, DT_Q5_0 = 6, DT_Q5_1 = 7, DT_Q8_0 = 8,
    DT_Q8_1 = 9, DT_Q2_K = 10, DT_Q3_K = 11, DT_Q4_K = 12, DT_Q5_K = 13, DT_Q6_K = 14,
    DT_Q8_K = 15, DT_IQ2_XXS = 16, DT_IQ2_XS = 17, DT_IQ3_XXS = 18, DT_IQ1_S = 19,
    DT_IQ4_NL = 20, DT_IQ3_S = 21, DT_IQ2_S = 22, DT_IQ4_XS = 23, DT_I8 = 24, DT_I16 = 25,
    DT_I32 = 26, DT_I64 = 27, DT_F64 = 28, DT_IQ1_M = 29, DT_BF16 = 30, DT_TQ1_0 = 34,
    DT_TQ2_0 = 35, DT_COUNT = 40
};

#define QK4_0 32
#define QK8_0 32

typedef struct { uint16_t d; uint8_t qs[QK4_0 / 2]; } block_q4_0; /* 18 bytes */
typedef struct { uint16_t d; int8_t qs[QK8_0]; } block_q8_0;      /* 34 bytes */

#define QK_K 256
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K; /* 144 */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K; /* 176 */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
} block_q6_K; /* 210 */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K; /* 292 */

/* Layouts duet makes in memory and never reads from or writes to a file (ids past ggml's,
 * so a file naming them is refused as an unknown type).
 * R8 (row-interleaved): a Q4_0 / Q8_0 matrix whose rows are taken in groups of 8 and stored
 * block by block: for block b of a group, the 8 rows' f16 scales, then their quants in
 * 4-byte chunks, chunk c of row r at qs[32 * c + 4 * r] (row r's qs[4c .. 4c+3]). A vector
 * of 8 lanes then holds one chunk of each row, so one instruction computes part of 8 rows'
 * dot products and a block's 8 sums land in one register (kernels_avx2.c). Each group takes
 * exactly the bytes of its 8 rows, so groups sit where those rows sat.
 * Q8_0S: Q8_0 activations as the R8 kernels read them: the scale already as f32, and c, the
 * offset correction -k * sum(qs) of the kernel's weight type (k = 8 for Q4_0, 128 for Q8_0
 * at the VNNI level), computed once per token and block instead of once per tile. */
enum { DT_Q4_0_R8 = 64, DT_Q8_0_R8 = 65, DT_Q8_0S = 66 };
typedef struct { uint16_t d[8]; uint8_t qs[8 * QK4_0 / 2]; } block_q4_0x8; /* 144 = 8 x 18 */
typedef struct { uint16_t d[8]; int8_t qs[8 * QK8_0]; } block_q8_0x8;      /* 272 = 8 x 34 */
typedef struct { float d; int32_t c; int8_t qs[QK8_0]; } block_q8_0s;      /* 40 */

/* The R8 type of a weight type (DT_Q4_0_R8 for DT_Q4_0 ...), -1 if it has none. */
int quant_r8_type(int type);
/* The file type an in-memory type stands for (DT_Q4_0 for DT_Q4_0_R8; others unchanged). */
int quant_file_type(int type);
/* Rearrange a matrix of n_out rows of n_in elements of type (Q4_0 or Q8_0) in place into
 * its R8 layout. Returns the new type, or -1 (data untouched) when the type has no R8
 * layout, n_out is not a multiple of 8 or memory for one group is short. */
int quant_repack_r8(int type, void *data, int64_t n_in, int64_t n_out);
/* Dequantise row r of a matrix of n_in-element rows of any supported type, R8 included. */
void quant_dequantize_matrix_row(int type, const void *data, int64_t n_in, int64_t r, float *dst);
/* Columns [c0, c0 + n) of that row: c0 and n multiples of the file type's block size. */
void quant_dequantize_matrix_cols(int type, const void *data, int64_t n_in, int64_t r, int64_t c0,
                                  int64_t n, float *dst);

/* The eight 6-bit scales and mins of a Q4_K/Q5_K block: sc[j], m[j] for j < 8. */
void quant_kscales(const uint8_t scales[12], uint8_t sc[8], uint8_t m[8]);

typedef struct dtype_traits {
    const char *name;   /* "f32", "q4_0", ... as ggml names them */
    int blck;           /* elements per block */
    size_t type_size;   /* bytes per block */
    int supported;      /* 1 when duet can compute with it */
} dtype_traits;

/* NULL for an id that is not a known ggml type. */
const dtype_traits *dtype_info(int type);
/* duet_type_from_name (a name to a type id) is public: duet.h. */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block or type unknown. */
size_t dtype_row_size(int type, int64_t n);

/* Half / bfloat16 conversions (round to nearest even; NaN stays NaN). */
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);

/* Scalar reference conversions of n elements (n a multiple of the block size).
 * These define the formats; every fast path is tested against them. */
void quant_dequantize_row(int type, const void *src, float *dst, int64_t n);
void quant_quantize_row(int type, const float *src, void *dst, int64_t n);


/* llama.cpp's mixed file types, as `llama-quantize` names them ("q4_k_m"): most matrices
 * in one type, some in more bits. 0 = none (a uniform type). */
enum { QMIX_NONE = 0, QMIX_Q4_K_M = 1, QMIX_Q5_K_M = 2 };
/* duet_type_mix_from_name (a name to a mix) is public: duet.h. */
int quant_mix_base_type(int mix);                /* DT_Q4_K for QMIX_Q4_K_M ... */
int quant_mix_file_type(int mix);                /* general.file_type (llama_ftype) */
/* Type of tensor `name` ("output.weight", "blk.3.attn_v.weight", ...) of a model with
 * n_layer layers in the mix, by llama.cpp's rules for llama-architecture models. */
int quant_mix_tensor_type(int mix, const char *name, int n_layer);

#endif
