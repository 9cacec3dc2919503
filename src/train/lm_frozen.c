/*
 * lm_frozen.c: dx += dy W through a frozen base matrix (LoRA training's input gradient).
 *
 * The forward product is the engine's matrix kernel; this is its transpose, which the
 * engine's row-major blocks do not serve directly: a block holds 32 (or 256) inputs of one
 * output row, and dx needs, for each input, a sum over every output row. So the matrix is
 * walked in column strips one block wide: a thread dequantises a strip of up to 128 KiB of
 * rows into float (kept in L2), then every token's dx columns take it in register tiles of
 * 8 tokens x 32 columns, summing over the rows. Each weight is dequantised once per call
 * rather than once per token, and each dy element is read once per 32 columns. (The old
 * path, one dequantised row added into every token's dx row, moved 8 bytes through L2 per
 * multiply-add: 50 s a step for 256 tokens of a 1.1B Q4_0 base on two threads.)
 */
#include "train/lm_frozen.h"

#include "base/common.h"
#include "engine/kernels.h"
#include "format/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define FZ_TT 8                     /* tokens per register tile */
#define FZ_CW 32                    /* columns per register tile */
#define FZ_STRIP_FLOATS (32 * 1024) /* a thread's dequantised strip: 128 KiB */

size_t lm_frozen_dx_scratch(void) { return FZ_STRIP_FLOATS; }

typedef struct fzb_job {
    float *dx;
    const float *dy;
    const mtensor *W;
    float *scratch;
    int n, S, simd;
} fzb_job;

/* Columns [0, cw) of tokens [0, nt): x[t][j] += sum_o d[t][o] w[o][j], o ascending. x rows
 * are in apart, d rows out apart, w rows S apart. */
static void tile_generic(float *x, int64_t in, const float *d, int64_t out, const float *w,
                         int S, int oc, int nt, int cw) {
    for (int t = 0; t < nt; t++)
        for (int o = 0; o < oc; o++) {
            float s = d[(size_t)t * out + o];
            const float *wr = w + (size_t)o * S;
            float *xr = x + (size_t)t * in;
            for (int j = 0; j < cw; j++) xr[j] += s * wr[j];
        }
}

#if defined(__x86_64__)
/* The same for a full tile (8 tokens x 32 columns) in 16 AVX-512 accumulators. */
__attribute__((target("avx512f,fma"))) static void tile_avx512(float *x, int64_t in, const float *d,
                                                               int64_t out, const float *w, int S,
                                                               int oc) {
    __m512 a[FZ_TT][2];
    for (int t = 0; t < FZ_TT; t++) {
        a[t][0] = _mm512_loadu_ps(x + (size_t)t * in);
        a[t][1] = _mm512_loadu_ps(x + (size_t)t * in + 16);
    }
    for (int o = 0; o < oc; o++) {
        __m512 w0 = _mm512_loadu_ps(w + (size_t)o * S), w1 = _mm512_loadu_ps(w + (size_t)o * S + 16);
        for (int t = 0; t < FZ_TT; t++) {
            __m512 s = _mm512_set1_ps(d[(size_t)t * out + o]);
            a[t][0] = _mm512_fmadd_ps(s, w0, a[t][0]);
            a[t][1] = _mm512_fmadd_ps(s, w1, a[t][1]);
        }
    }
    for (int t = 0; t < FZ_TT; t++) {
        _mm512_storeu_ps(x + (size_t)t * in, a[t][0]);
        _mm512_storeu_ps(x + (size_t)t * in + 16, a[t][1]);
    }
}
#endif

/* Threads take whole strips of columns: every dx element has one writer. */
static void fzb_worker(void *ctx, int ith, int nth) {
    fzb_job *j = ctx;
    const mtensor *W = j->W;
    const int64_t in = W->n_in, out = W->n_out;
    const int S = j->S, oc_max = FZ_STRIP_FLOATS / S;
    float *wd = j->scratch + (size_t)ith * FZ_STRIP_FLOATS;
    long lo, hi;
    tp_split((long)((in + S - 1) / S), ith, nth, &lo, &hi);
    for (long s = lo; s < hi; s++) {
        int64_t c0 = (int64_t)s * S;
        int sw = (int)DUET_MIN((int64_t)S, in - c0); /* the last strip of an F32/F16 matrix */
        for (int64_t o0 = 0; o0 < out; o0 += oc_max) {
            int oc = (int)DUET_MIN((int64_t)oc_max, out - o0);
            for (int o = 0; o < oc; o++)
                quant_dequantize_matrix_cols(W->type, W->data, in, o0 + o, c0, sw, wd + (size_t)o * S);
            for (int c = 0; c < sw; c += FZ_CW) {
                int cw = DUET_MIN(FZ_CW, sw - c);
                for (int t0 = 0; t0 < j->n; t0 += FZ_TT) {
                    int nt = DUET_MIN(FZ_TT, j->n - t0);
                    float *x = j->dx + (size_t)t0 * in + c0 + c;
                    const float *d = j->dy + (size_t)t0 * out + o0;
#if defined(__x86_64__)
                    if (j->simd && nt == FZ_TT && cw == FZ_CW) {
                        tile_avx512(x, in, d, out, wd + c, S, oc);
                        continue;
                    }
#endif
                    tile_generic(x, in, d, out, wd + c, S, oc, nt, cw);
                }
            }
        }
    }
}

void lm_frozen_dx(threadpool *tp, float *dx, const float *dy, const mtensor *W, int n,
                   float *scratch) {
    const dtype_traits *ti = dtype_info(quant_file_type(W->type));
    int S = ti && ti->blck > FZ_CW ? ti->blck : FZ_CW; /* a block wide, at least a tile */
    fzb_job j = {.dx = dx, .dy = dy, .W = W, .scratch = scratch, .n = n, .S = S,
                 .simd = kernels_level() >= KLEVEL_AVX512};
    tp_run(tp, fzb_worker, &j);
}
