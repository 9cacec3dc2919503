/*
 * test_repack.c: the row-interleaved R8 layouts of Q4_0 / Q8_0 (quant.h) and their kernels.
 *
 * Oracles, and why they are independent of the code under test:
 *  - layout: bytes placed by hand-computed offsets (quant.h's description), and every row
 *    read back from R8 equals the plain row's dequantisation exactly;
 *  - kernels: at every level, R8 matrix products equal the SCALAR PLAIN kernel (vec_dot_q4_0
 *    / vec_dot_q8_0 on the rows as the file has them) bit for bit: the integer block sums
 *    are exact and the float steps are the reference's, so no tolerance is needed;
 *  - Q8_0S activations: the same quants and scale as quant_quantize_row(DT_Q8_0), and c
 *    recomputed here from the quants;
 *  - model: logits of a repacked model at the best level equal the unrepacked model's at
 *    the scalar level, bit for bit, for prefill and decode.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/model.h"
#include "format/quant.h"
#include "base/threadpool.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

static void *quantized(int type, int64_t rows, int64_t n) {
    size_t rs = dtype_row_size(type, n);
    uint8_t *w = malloc(rs * (size_t)rows);
    float *f = malloc((size_t)n * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        float scale = 0.1f + 3.0f * (frand() + 1.0f);
        for (int64_t i = 0; i < n; i++) f[i] = scale * frand();
        quant_quantize_row(type, f, w + r * rs, n);
    }
    free(f);
    return w;
}

TEST(repack_layout) {
    CHECK_EQ_INT(sizeof(block_q4_0x8), 8 * sizeof(block_q4_0));
    CHECK_EQ_INT(sizeof(block_q8_0x8), 8 * sizeof(block_q8_0));
    CHECK_EQ_INT(sizeof(block_q8_0s), 40);
    CHECK(dtype_info(DT_Q4_0_R8) == NULL); /* never a file type */
    CHECK_EQ_INT(dtype_row_size(DT_Q4_0_R8, 96), dtype_row_size(DT_Q4_0, 96));
    CHECK_EQ_INT(dtype_row_size(DT_Q8_0S, 96), 3 * 40);
    CHECK_EQ_INT(quant_r8_type(DT_Q4_K), -1);
    CHECK_EQ_INT(quant_file_type(DT_Q8_0_R8), DT_Q8_0);
    const int types[2] = {DT_Q4_0, DT_Q8_0};
    for (int k = 0; k < 2; k++) {
        const int type = types[k], n_in = 96, n_out = 24, qb = type == DT_Q4_0 ? 16 : 32;
        const size_t ws = dtype_row_size(type, n_in), bs = 2 + (size_t)qb;
        uint8_t *w = quantized(type, n_out, n_in), *orig = malloc(ws * n_out);
        memcpy(orig, w, ws * n_out);
        /* refused: rows not a multiple of 8, a type without R8; nothing changes */
        CHECK_EQ_INT(quant_repack_r8(type, w, n_in, 12), -1);
        CHECK_EQ_INT(quant_repack_r8(DT_F32, w, 8, 8), -1);
        CHECK(memcmp(w, orig, ws * n_out) == 0);
        CHECK_EQ_INT(quant_repack_r8(type, w, n_in, n_out), quant_r8_type(type));
        /* by hand: group 2, block 1, row 5: scale at d[5], chunk c at 16 + 32c + 20 */
        const uint8_t *blk = orig + (2 * 8 + 5) * ws + 1 * bs, *g = w + 2 * 8 * ws + 1 * 8 * bs;
        CHECK(memcmp(g + 2 * 5, blk, 2) == 0);
        for (int c = 0; c < qb / 4; c++) CHECK(memcmp(g + 16 + 32 * c + 4 * 5, blk + 2 + 4 * c, 4) == 0);
        float a[96], b[96];
        for (int r = 0; r < n_out; r++) {
            quant_dequantize_matrix_row(quant_r8_type(type), w, n_in, r, a);
            quant_dequantize_row(type, orig + r * ws, b, n_in);
            CHECKF(memcmp(a, b, sizeof a) == 0, "type %d row %d reads back differently", type, r);
        }
        free(w);
        free(orig);
    }
}

/* y[t][o] of the scalar plain kernel: the oracle. */
static void plain_reference(int type, const uint8_t *w, int64_t n_in, int64_t n_out,
                            const float *x, int n_tok, float *y) {
    const kernel_traits *ref = kernels_get_level(type, KLEVEL_SCALAR);
    size_t ws = dtype_row_size(type, n_in), xs = dtype_row_size(DT_Q8_0, n_in);
    uint8_t *xq = malloc(xs * n_tok);
    for (int t = 0; t < n_tok; t++) quant_quantize_row(DT_Q8_0, x + t * n_in, xq + t * xs, n_in);
    for (int t = 0; t < n_tok; t++)
        for (int64_t o = 0; o < n_out; o++) ref->vec_dot(n_in, &y[t * n_out + o], w + o * ws, xq + t * xs);
    free(xq);
}

TEST(repack_kernels_equal_the_scalar_plain_kernel) {
    static const int64_t shapes[][2] = {{32, 8}, {96, 24}, {320, 40}, {2048, 48}};
    /* one token (one group at a time), small batches (two groups, one or more token tiles),
     * the last small batch and the first prefill (16, 17 tokens), a longer prefill */
    static const int toks[] = {1, 2, 5, 9, 16, 17, 40};
    enum { NT = 40 }; /* the most tokens */
    const int types[2] = {DT_Q4_0, DT_Q8_0};
    const int saved = kernels_level();
    threadpool *tps[3] = {tp_new(1), tp_new(2), tp_new(3)};
    REQUIRE(tps[0] && tps[1] && tps[2]);
    int compared = 0;
    for (int k = 0; k < 2; k++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int type = types[k], r8 = quant_r8_type(type);
            const int64_t n_in = shapes[s][0], n_out = shapes[s][1];
            const size_t ws = dtype_row_size(type, n_in);
            uint8_t *w = quantized(type, n_out, n_in), *wr = malloc(ws * n_out);
            memcpy(wr, w, ws * n_out);
            REQUIRE(quant_repack_r8(type, wr, n_in, n_out) == r8);
            float *x = malloc(sizeof(float) * n_in * NT), *want = malloc(sizeof(float) * n_out * NT),
                  *got = malloc(sizeof(float) * n_out * NT);
            for (int64_t i = 0; i < n_in * NT; i++) x[i] = (1 + (i / 32) % 5) * frand();
            plain_reference(type, w, n_in, n_out, x, NT, want);
            void *scratch = malloc(kernels_matmul_scratch(r8, n_in, NT));
            for (int level = 0; level < KLEVEL_COUNT; level++) {
                const kernel_traits *kt = kernels_get_level(r8, level);
                if (!kt) continue;
                CHECK_EQ_INT(kt->group_rows, 8);
                CHECK_EQ_INT(kt->vec_dot_type, DT_Q8_0S);
                /* the activations: Q8_0's quants and scale, c = -k * sum */
                block_q8_0s xs[2048 / 32];
                block_q8_0 xq[2048 / 32];
                kt->from_float(x, xs, n_in);
                quant_quantize_row(DT_Q8_0, x, xq, n_in);
                for (int64_t b = 0; b < n_in / 32; b++) {
                    int sum = 0;
                    for (int j = 0; j < 32; j++) sum += xq[b].qs[j];
                    CHECK(xs[b].d == fp16_to_fp32(xq[b].d) && memcmp(xs[b].qs, xq[b].qs, 32) == 0);
                    CHECK_EQ_INT(xs[b].c, -(type == DT_Q4_0 ? 8 : 128) * sum);
                }
                /* vec_dot of one group (the second, or the first) against token 0 */
                int64_t g = n_out > 8 ? 1 : 0;
                float s8[8];
                kt->vec_dot(n_in, s8, wr + g * 8 * ws, xs);
                CHECKF(memcmp(s8, want + g * 8, sizeof s8) == 0, "level %d type %d n_in %lld: vec_dot",
                       level, type, (long long)n_in);
                kernels_set_level(level);
                for (size_t ti = 0; ti < sizeof toks / sizeof toks[0]; ti++)
                    for (int th = 0; th < 3; th++) {
                        memset(got, 0, sizeof(float) * n_out * NT);
                        kernels_matmul(tps[th], r8, wr, n_in, n_out, x, toks[ti], got, scratch);
                        CHECKF(memcmp(got, want, sizeof(float) * n_out * toks[ti]) == 0,
                               "level %d type %d shape %lldx%lld, %d tokens, %d threads: not the "
                               "scalar plain result", level, type, (long long)n_in,
                               (long long)n_out, toks[ti], th + 1);
                        compared++;
                    }
                kernels_set_level(saved);
            }
            free(scratch);
            free(w);
            free(wr);
            free(x);
            free(want);
            free(got);
        }
    CHECK(compared >= 2 * 4 * 7 * 3); /* at least the scalar level ran everything */
    for (int i = 0; i < 3; i++) tp_free(tps[i]);
}

TEST(repack_model_logits_equal_the_unrepacked_scalar_model) {
    const int types[2] = {DT_Q4_0, DT_Q8_0};
    const int saved = kernels_level();
    for (int k = 0; k < 2; k++) {
        const char *p = fixture_random(types[k], 11, 0); /* untied: the output is repacked too */
        REQUIRE(p);
        duet_error err = {0};
        duet_model *fast = NULL, *plain = NULL, *mapped = NULL;
        duet_model_params mp = {.n_threads = 2}, np = {.n_threads = 2, .no_repack = 1},
                          mm = {.n_threads = 2, .use_mmap = 1};
        REQUIRE(!duet_model_load(p, &mp, &fast, &err) && !duet_model_load(p, &np, &plain, &err) &&
                !duet_model_load(p, &mm, &mapped, &err));
        CHECK_EQ_INT(fast->layers[0].w_gate.type, quant_r8_type(types[k]));
        CHECK_EQ_INT(fast->output.type, quant_r8_type(types[k]));
        CHECK_EQ_INT(plain->layers[0].w_gate.type, types[k]);
        CHECK_EQ_INT(mapped->layers[0].w_gate.type, types[k]); /* the file mapping stays as it is */
        CHECK_EQ_INT(duet_model_bytes_per_token(fast), duet_model_bytes_per_token(plain));
        const int V = duet_model_hparams(fast)->n_vocab;
        int32_t toks[20];
        for (int i = 0; i < 20; i++) toks[i] = (i * 37 + 5) % V;
        duet_session *a = NULL, *b = NULL, *c = NULL;
        REQUIRE(!duet_session_new(fast, NULL, &a, &err) && !duet_session_new(fast, NULL, &c, &err));
        REQUIRE(!duet_session_eval(a, toks, 20, 1, &err));
        kernels_set_level(KLEVEL_SCALAR);
        REQUIRE(!duet_session_new(plain, NULL, &b, &err));
        REQUIRE(!duet_session_eval(b, toks, 20, 1, &err));
        kernels_set_level(saved);
        int same = 1;
        for (int i = 0; i < 20; i++) {
            REQUIRE(!duet_session_eval(c, &toks[i], 1, 0, &err)); /* decode, one at a time */
            same &= memcmp(duet_session_logits(a, i), duet_session_logits(b, i), V * sizeof(float)) == 0;
            same &= memcmp(duet_session_logits(c, -1), duet_session_logits(b, i), V * sizeof(float)) == 0;
        }
        CHECKF(same, "type %d: repacked logits differ from the scalar unrepacked model's", types[k]);
        duet_session_free(a);
        duet_session_free(b);
        duet_session_free(c);
        duet_model_free(fast);
        duet_model_free(plain);
        duet_model_free(mapped);
    }
}
