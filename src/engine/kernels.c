/*
 * kernels.c: the scalar reference kernels (they define every kernel's result), run-time
 * selection of the SIMD levels, and the threaded matrix product.
 *
 * Invariants: at every level, vec_dot and tile compute each (row, token) dot with the same
 * sequence of operations, so kernels_matmul equals vec_dot bit for bit at that level, for
 * any tile shape and thread count. Q4_0/Q8_0 weights are dotted with activations quantised
 * to Q8_0, K-quants with activations in Q8_K, by exactly quant_quantize_row's rules; float
 * weights with f32 activations.
 */
#include "engine/kernels.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "format/quant.h"

/* ---- scalar reference ------------------------------------------------------------------ */
static void vec_dot_f32(int64_t n, float *s, const void *w, const void *x) {
    const float *a = w, *b = x;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    *s = sum;
}

static void vec_dot_f16(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w;
    const float *b = x;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += fp16_to_fp32(a[i]) * b[i];
    *s = sum;
}

static void vec_dot_bf16(int64_t n, float *s, const void *w, const void *x) {
    const uint16_t *a = w;
    const float *b = x;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += bf16_to_fp32(a[i]) * b[i];
    *s = sum;
}

/* Block sums are exact integers; only the per-block scaling is floating point. */
static void vec_dot_q8_0(int64_t n, float *s, const void *w, const void *x) {
    const block_q8_0 *a = w, *b = x;
    float sum = 0;
    for (int64_t k = 0; k < n / QK8_0; k++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += a[k].qs[j] * b[k].qs[j];
        sum += (float)sumi * (fp16_to_fp32(a[k].d) * fp16_to_fp32(b[k].d));
    }
    *s = sum;
}

static void vec_dot_q4_0(int64_t n, float *s, const void *w, const void *x) {
    const block_q4_0 *a = w;
    const block_q8_0 *b = x;
    float sum = 0;
    for (int64_t k = 0; k < n / QK4_0; k++) {
        int sumi = 0;
        for (int j = 0; j < QK4_0 / 2; j++)
            sumi += ((a[k].qs[j] & 0x0f) - 8) * b[k].qs[j] +
                    ((a[k].qs[j] >> 4) - 8) * b[k].qs[j + QK4_0 / 2];
        sum += (float)sumi * (fp16_to_fp32(a[k].d) * fp16_to_fp32(b[k].d));
    }
    *s = sum;
}

static void from_float_q8_0(const float *x, void *y, int64_t n) {
    quant_quantize_row(DT_Q8_0, x, y, n);
}

/* Q8_0S: quant_quantize_row's Q8_0 blocks, with the f16 scale as f32 and c = -off * sum. */
static void from_float_q8_0s(const float *x, void *vy, int64_t n, int off) {
    block_q8_0s *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        block_q8_0 q;
        quant_quantize_row(DT_Q8_0, x + b * QK8_0, &q, QK8_0);
        int sum = 0;
        for (int j = 0; j < QK8_0; j++) sum += q.qs[j];
        y[b].d = fp16_to_fp32(q.d);
        y[b].c = -off * sum;
        memcpy(y[b].qs, q.qs, QK8_0);
    }
}
static void from_float_q8_0s_q4(const float *x, void *y, int64_t n) { from_float_q8_0s(x, y, n, 8); }
static void from_float_q8_0s_q8(const float *x, void *y, int64_t n) { from_float_q8_0s(x, y, n, 128); }

/* R8 weights (a group of 8 rows) x Q8_0S activations: vec_dot_q4_0's / vec_dot_q8_0's
 * formula for each row of the group, reading the row's quants out of the interleaved chunks
 * (quant.h). The integer sums are exact, so s[k] is vec_dot of the un-interleaved row k bit
 * for bit, and so are the SIMD levels' R8 kernels. */
static void vec_dot_r8(int q4, int64_t n, float *s, const void *w, const void *x) {
    const block_q8_0s *b = x;
    const size_t gbs = q4 ? sizeof(block_q4_0x8) : sizeof(block_q8_0x8);
    for (int k = 0; k < 8; k++) {
        float sum = 0;
        for (int64_t i = 0; i < n / QK8_0; i++) {
            const uint8_t *g = (const uint8_t *)w + i * gbs;
            uint16_t dw;
            memcpy(&dw, g + 2 * k, 2);
            const uint8_t *qs = g + 16 + 4 * k; /* chunk c of row k at qs[32 * c] */
            int sumi = 0;
            for (int j = 0; j < (q4 ? QK4_0 / 2 : QK8_0); j++) {
                int v = qs[32 * (j / 4) + j % 4];
                if (q4)
                    sumi += ((v & 0x0f) - 8) * b[i].qs[j] + ((v >> 4) - 8) * b[i].qs[j + QK4_0 / 2];
                else
                    sumi += (int8_t)v * b[i].qs[j];
            }
            sum += (float)sumi * (fp16_to_fp32(dw) * b[i].d);
        }
        s[k] = sum;
    }
}
static void vec_dot_q4_0_r8(int64_t n, float *s, const void *w, const void *x) { vec_dot_r8(1, n, s, w, x); }
static void vec_dot_q8_0_r8(int64_t n, float *s, const void *w, const void *x) { vec_dot_r8(0, n, s, w, x); }

/* K-quants x Q8_K: per super-block, the integer sums of each sub-block times its integer
 * scale, exact in int32 (|sum| < 2^28); the mins (Q4_K/Q5_K) come from the activations'
 * 16-value sums. Then two float terms per super-block. */
static void vec_dot_kaffine(int64_t n, float *s, const void *w, const void *x, int five) {
    const block_q8_K *b = x;
    float sum = 0;
    for (int64_t k = 0; k < n / QK_K; k++) {
        const block_q4_K *a4 = (const block_q4_K *)w + k;
        const block_q5_K *a5 = (const block_q5_K *)w + k;
        uint8_t sc[8], m[8];
        quant_kscales(five ? a5->scales : a4->scales, sc, m);
        const uint8_t *qs = five ? a5->qs : a4->qs;
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int si = 0;
            for (int l = 0; l < 32; l++) {
                int q = j & 1 ? qs[32 * (j / 2) + l] >> 4 : qs[32 * (j / 2) + l] & 15;
                if (five) q |= ((a5->qh[l] >> j) & 1) << 4;
                si += q * b[k].qs[32 * j + l];
            }
            sumi += sc[j] * si;
            summ += m[j] * (b[k].bsums[2 * j] + b[k].bsums[2 * j + 1]);
        }
        float d = fp16_to_fp32(five ? a5->d : a4->d), dmin = fp16_to_fp32(five ? a5->dmin : a4->dmin);
        sum += (d * b[k].d) * (float)sumi - (dmin * b[k].d) * (float)summ;
    }
    *s = sum;
}

static void vec_dot_q4_K(int64_t n, float *s, const void *w, const void *x) {
    vec_dot_kaffine(n, s, w, x, 0);
}

static void vec_dot_q5_K(int64_t n, float *s, const void *w, const void *x) {
    vec_dot_kaffine(n, s, w, x, 1);
}

static void vec_dot_q6_K(int64_t n, float *s, const void *w, const void *x) {
    const block_q6_K *a = w;
    const block_q8_K *b = x;
    float sum = 0;
    for (int64_t k = 0; k < n / QK_K; k++) {
        float wf[QK_K]; /* the 6-bit values q - 32 are exact small integers in float */
        block_q6_K one = a[k];
        one.d = 0x3c00; /* 1.0: dequantise to scales[j] * (q - 32), exact */
        quant_dequantize_row(DT_Q6_K, &one, wf, QK_K);
        int sumi = 0;
        for (int j = 0; j < QK_K; j++) sumi += (int)wf[j] * b[k].qs[j];
        sum += (fp16_to_fp32(a[k].d) * b[k].d) * (float)sumi;
    }
    *s = sum;
}

static void from_float_q8_K(const float *x, void *y, int64_t n) {
    quant_quantize_row(DT_Q8_K, x, y, n);
}

/* The scalar level has no register tiling: a tile is a loop of vec_dot calls. */
#define SCALAR_TILE(name)                                                                   \
    static void tile_##name(int64_t n, const void *w, size_t ws, const void *x, size_t xs,  \
                            float *y, int64_t ys, int nr, int nt) {                         \
        for (int t = 0; t < nt; t++)                                                        \
            for (int r = 0; r < nr; r++)                                                    \
                vec_dot_##name(n, &y[t * ys + r], (const char *)w + r * ws,                 \
                               (const char *)x + t * xs);                                   \
    }
SCALAR_TILE(f32)
SCALAR_TILE(f16)
SCALAR_TILE(bf16)
SCALAR_TILE(q8_0)
SCALAR_TILE(q4_0)
SCALAR_TILE(q4_K)
SCALAR_TILE(q5_K)
SCALAR_TILE(q6_K)

/* The same for R8 types, a group (8 rows, 8 * ws bytes) at a time. */
#define SCALAR_TILE_R8(name)                                                                \
    static void tile_##name(int64_t n, const void *w, size_t ws, const void *x, size_t xs,  \
                            float *y, int64_t ys, int nr, int nt) {                         \
        for (int t = 0; t < nt; t++)                                                        \
            for (int r = 0; r < nr; r += 8) {                                               \
                float s[8];                                                                 \
                vec_dot_##name(n, s, (const char *)w + r * ws, (const char *)x + t * xs);   \
                memcpy(&y[t * ys + r], s, sizeof s);                                        \
            }                                                                               \
    }
SCALAR_TILE_R8(q4_0_r8)
SCALAR_TILE_R8(q8_0_r8)

static const kernel_traits k_scalar[] = {
    [DT_F32] = {DT_F32, NULL, vec_dot_f32, tile_f32, 1, 1},
    [DT_F16] = {DT_F32, NULL, vec_dot_f16, tile_f16, 1, 1},
    [DT_BF16] = {DT_F32, NULL, vec_dot_bf16, tile_bf16, 1, 1},
    [DT_Q8_0] = {DT_Q8_0, from_float_q8_0, vec_dot_q8_0, tile_q8_0, 1, 1},
    [DT_Q4_0] = {DT_Q8_0, from_float_q8_0, vec_dot_q4_0, tile_q4_0, 1, 1},
    [DT_Q4_K] = {DT_Q8_K, from_float_q8_K, vec_dot_q4_K, tile_q4_K, 1, 1},
    [DT_Q5_K] = {DT_Q8_K, from_float_q8_K, vec_dot_q5_K, tile_q5_K, 1, 1},
    [DT_Q6_K] = {DT_Q8_K, from_float_q8_K, vec_dot_q6_K, tile_q6_K, 1, 1},
    [DT_Q4_0_R8] = {DT_Q8_0S, from_float_q8_0s_q4, vec_dot_q4_0_r8, tile_q4_0_r8, 8, 1, 8},
    [DT_Q8_0_R8] = {DT_Q8_0S, from_float_q8_0s_q8, vec_dot_q8_0_r8, tile_q8_0_r8, 8, 1, 8},
};

/* ---- dispatch -------------------------------------------------------------------------- */
#if defined(__x86_64__) || defined(__i386__)
#define KX86 1
#include <cpuid.h>
#else
#define KX86 0
#endif

static int cpu_level_probe(void);

/* CPUID traps to the hypervisor on VMs (6% of a collaboration benchmark was spent here when
 * every matrix product asked): probe once. */
static int cpu_level(void) {
    static atomic_int cached = -1;
    int l = atomic_load_explicit(&cached, memory_order_relaxed);
    if (l < 0) atomic_store_explicit(&cached, l = cpu_level_probe(), memory_order_relaxed);
    return l;
}

static int cpu_level_probe(void) {
#if KX86
    __builtin_cpu_init();
    unsigned a, b, c, d; /* F16C by cpuid: clang's __builtin_cpu_supports does not know it */
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return KLEVEL_AVX512;
    if (avx2) return KLEVEL_AVX2;
#endif
    return KLEVEL_SCALAR;
}

static int cpu_has_vnni(void) {
#if KX86
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        atomic_store_explicit(&cached, v = __builtin_cpu_supports("avx512vnni") != 0, memory_order_relaxed);
    }
    return v;
#else
    return 0;
#endif
}

static const char *const k_level_names[KLEVEL_COUNT] = {"scalar", "avx2", "avx512"};

const char *kernels_level_name(int level) {
    return level >= 0 && level < KLEVEL_COUNT ? k_level_names[level] : "unknown";
}

/* -1 until first use; an atomic so that concurrent first calls are well defined (they all
 * compute the same value). */
static atomic_int g_level = -1;

int kernels_level(void) {
    int level = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (level >= 0) return level;
    level = cpu_level();
    const char *env = getenv("DUET_KLEVEL");
    if (env && *env) {
        for (int l = 0; l < KLEVEL_COUNT; l++)
            if (strcmp(env, k_level_names[l]) == 0 && l < level) level = l;
    }
    atomic_store_explicit(&g_level, level, memory_order_relaxed);
    return level;
}

int kernels_set_level(int level) {
    int cpu = cpu_level();
    if (level < 0) level = 0;
    if (level > cpu) level = cpu;
    atomic_store_explicit(&g_level, level, memory_order_relaxed);
    return level;
}

const kernel_traits *kernels_get_level(int type, int level) {
    if (type < 0 || type >= (int)(sizeof k_scalar / sizeof k_scalar[0]) || level < 0 ||
        level > cpu_level())
        return NULL;
    const kernel_traits *kt = NULL;
#if KX86
    if (level == KLEVEL_AVX512)
        kt = (type == DT_Q4_0 || type == DT_Q8_0 || type == DT_Q4_K || type == DT_Q5_K ||
              type == DT_Q6_K || type == DT_Q4_0_R8 || type == DT_Q8_0_R8) && !cpu_has_vnni()
                 ? kernels_avx2_traits(type) /* the int8 kernels need vpdpbusd */
                 : kernels_avx512_traits(type);
    else if (level == KLEVEL_AVX2)
        kt = kernels_avx2_traits(type);
#endif
    if (!kt && level == KLEVEL_SCALAR) kt = &k_scalar[type];
    return kt && kt->vec_dot ? kt : NULL;
}

const kernel_traits *kernels_get(int type) { return kernels_get_level(type, kernels_level()); }

/* ---- matrix product -------------------------------------------------------------------- */
typedef struct mm_ctx {
    const kernel_traits *kt;
    const char *w;      /* [n_out] rows of ws bytes */
    size_t ws;
    int64_t n_in, n_out, n_tok;
    const float *xf;    /* [n_tok][n_in] f32 activations */
    const char *x;      /* [n_tok] rows of xs bytes in vec_dot_type */
    size_t xs;
    void *xq;           /* scratch for the converted activations */
    float *y;           /* [n_tok][n_out] */
    int64_t chunk_rows, n_chunks;
    atomic_long next_chunk;
} mm_ctx;

static void mm_convert(void *p, int ith, int nth) {
    mm_ctx *c = p;
    long lo, hi;
    tp_split((long)c->n_tok, ith, nth, &lo, &hi);
    for (long t = lo; t < hi; t++)
        c->kt->from_float(c->xf + t * c->n_in, (char *)c->xq + t * c->xs, c->n_in);
}

/* Up to this many tokens (decoding one sequence, or a few together) each weight is read
 * from memory once and used for every token while it is in L1: a tile of rows meets the
 * token tiles one after another. Past it (prefill), token tiles sweep a chunk kept in L2. */
#define MM_SMALL_TOK 16

/* A small batch's rows [r0, r1). Decode streams the weights, at memory speed only if the
 * hardware prefetchers see enough long sequential streams: a tile of adjacent rows is a
 * few KiB per stream before it jumps (measured: 2+ adjacent Q8_0 rows ran at half the speed
 * of one row). So the tile's rows are lanes spread over the chunk, row k of the tile in
 * lane k, each lane read front to back. R8 matrices do the same by groups of 8 rows (a
 * group is one stream, its rows interleaved block by block): a tile's groups are lanes.
 * (Two groups as two lanes rather than one group at a time: 1.3x at one token on this
 * Xeon, 6.5 MB Q4_0 at 13.7 -> 17.4 GB/s on two threads; 1.1x at 4 and 8 tokens.)
 * With more tokens than a tile holds, the following token tiles reuse the lanes' rows
 * from L1: for a K-quant, 4 tokens had cost 2.4x 3 tokens when each token tile swept the
 * chunk again. */
static void mm_small(const mm_ctx *c, int64_t r0, int64_t r1) {
    const kernel_traits *kt = c->kt;
    const int TT = kt->tile_toks, U = kt->group_rows ? kt->group_rows : 1; /* rows per lane */
    const int64_t units = (r1 - r0) / U, per_tile = kt->tile_rows / U;
    const int64_t lane = (units + per_tile - 1) / per_tile;
    for (int64_t i = 0; i < lane; i++) {
        int nu = (int)((units - i + lane - 1) / lane); /* <= per_tile */
        for (int64_t t = 0; t < c->n_tok; t += TT) {
            int nt = c->n_tok - t < TT ? (int)(c->n_tok - t) : TT;
            float out[KERNEL_TILE_MAX * KERNEL_TILE_MAX];
            /* row (or group) k of the tile is lane k's: lane * ws bytes apart */
            kt->tile(c->n_in, c->w + (r0 + i * U) * c->ws, (size_t)lane * c->ws, c->x + t * c->xs,
                     c->xs, out, KERNEL_TILE_MAX, nu * U, nt);
            for (int u = 0; u < nt; u++)
                for (int k = 0; k < nu; k++)
                    memcpy(&c->y[(t + u) * c->n_out + r0 + (i + k * lane) * U],
                           &out[u * KERNEL_TILE_MAX + k * U], (size_t)U * sizeof(float));
        }
    }
}

/* Threads take chunks of output rows from a shared counter (a hypervisor or a third thread
 * on two cores makes static shares uneven). */
static void mm_compute(void *p, int ith, int nth) {
    mm_ctx *c = p;
    const kernel_traits *kt = c->kt;
    const int TR = kt->tile_rows, TT = kt->tile_toks;
    for (;;) {
        int64_t ch = atomic_fetch_add_explicit(&c->next_chunk, 1, memory_order_relaxed);
        if (ch >= c->n_chunks) break;
        int64_t r0 = ch * c->chunk_rows;
        int64_t r1 = r0 + c->chunk_rows < c->n_out ? r0 + c->chunk_rows : c->n_out;
        if (c->n_tok <= MM_SMALL_TOK) {
            mm_small(c, r0, r1);
            continue;
        }
        /* Prefill: tokens advance in tiles and each token tile sweeps the chunk's rows, so
         * the chunk's weights stay in L2 and the token tile in L1 while every weight block
         * is used tile_toks times from registers. */
        for (int64_t t = 0; t < c->n_tok; t += TT) {
            int nt = c->n_tok - t < TT ? (int)(c->n_tok - t) : TT;
            for (int64_t r = r0; r < r1; r += TR) {
                int nr = r1 - r < TR ? (int)(r1 - r) : TR;
                kt->tile(c->n_in, c->w + r * c->ws, c->ws, c->x + t * c->xs, c->xs,
                         c->y + t * c->n_out + r, c->n_out, nr, nt);
            }
        }
    }
}

size_t kernels_matmul_scratch(int wtype, int64_t n_in, int64_t n_tok) {
    const kernel_traits *kt = kernels_get_level(wtype, KLEVEL_SCALAR);
    if (!kt || !kt->from_float) return 0;
    return dtype_row_size(kt->vec_dot_type, n_in) * (size_t)n_tok;
}

void kernels_matmul(threadpool *tp, int wtype, const void *W, int64_t n_in, int64_t n_out,
                    const float *x, int64_t n_tok, float *y, void *scratch) {
    const kernel_traits *kt = kernels_get(wtype);
    if (!kt || n_out <= 0 || n_tok <= 0 || !dtype_row_size(wtype, n_in) ||
        (kt->group_rows && n_out % kt->group_rows))
        return; /* callers validate types and shapes at load */
    mm_ctx c = {.kt = kt, .w = W, .ws = dtype_row_size(wtype, n_in), .n_in = n_in,
                .n_out = n_out, .n_tok = n_tok, .xf = x, .x = (const char *)x,
                .xs = (size_t)n_in * sizeof(float), .y = y};
    int nth = tp_n_threads(tp);
    if (kt->from_float) {
        c.xq = scratch;
        c.x = scratch;
        c.xs = dtype_row_size(kt->vec_dot_type, n_in);
        if (n_tok < 2 * nth) mm_convert(&c, 0, 1); /* too little to be worth a wake-up */
        else tp_run(tp, mm_convert, &c);
    }
    /* Chunks of ~1 MiB of weights for small batches (long streams, see mm_small) or ~128 KiB
     * for prefill (fits L2 beside the token tile), and at least 4 per thread when the matrix
     * allows, so that threads finish together. */
    int64_t TR = kt->tile_rows;
    int64_t target = (n_tok <= MM_SMALL_TOK ? 1 << 20 : 1 << 17) / (int64_t)c.ws;
    int64_t rows = target < TR ? TR : (target + TR - 1) / TR * TR;
    int64_t balanced = (n_out + 4 * nth - 1) / (4 * nth);
    balanced = balanced < TR ? TR : (balanced + TR - 1) / TR * TR;
    if (rows > balanced) rows = balanced;
    c.chunk_rows = rows;
    c.n_chunks = (n_out + rows - 1) / rows;
    atomic_init(&c.next_chunk, 0);
    tp_run(c.n_chunks > 1 ? tp : NULL, mm_compute, &c);
}

/* Sixteen independent partial sums: the compiler maps them onto vector lanes without
 * reassociating anything, so the result is the same at any -march. */
float kvec_dot_f32(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i + j < n; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}
