/*
 * test_quant.c: the K-quant formats (Q4_K, Q5_K, Q6_K, Q8_K) and llama.cpp's Q4_K_M mix.
 *
 * Oracles and bounds:
 *  - Dequantisation: hand-assembled blocks whose values are worked out by hand from the
 *    layout in ggml-common.h (bytes written here, expected floats computed in the comment).
 *  - Quantisation: round trip on N(0, 1) data; relative RMS error (RMS(x - dq(q(x))) /
 *    RMS(x)) below 0.10 (Q4_K), 0.05 (Q5_K), 0.04 (Q6_K) (measured 0.073, 0.037, 0.019),
 *    also for the half of the data at 1/100 the scale; all-zero blocks exact, constant
 *    blocks within 0.05.
 *  - Q8_K: |x - d q| <= d / 2 per value and bsums equal the sums of the qs.
 *  - Q4_K_M: the per-tensor types of a 22-layer model, written out by hand from
 *    llama-quantize's rule (first and last eighth of the layers and every third between).
 *  - Models: a make-model file in each K type (and Q8_0, Q4_0) gives the same logits as an
 *    F32 file holding its dequantised weights: NMSE < 1e-3 (measured 0.9e-4 to 2.2e-4;
 *    only the rounding of the activations to Q8_K / Q8_0 differs; random weights make the
 *    logits small and near-uniform, the hardest case for a relative error).
 */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/common.h"
#include "format/gguf.h"
#include "format/quant.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

static uint64_t g_s = 0x2545f4914f6cdd1dull;
static double gauss(void) {
    double u1 = ((double)(duet_splitmix64(&g_s) >> 11) + 0.5) * 0x1.0p-53;
    double u2 = (double)(duet_splitmix64(&g_s) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

TEST(quant_k_dequantize_by_hand) {
    /* Q4_K: d = 2 (0x4000), dmin = 0.5 (0x3800). scales bytes:
     *   s[0] = 0x43: sc0 = 3, top bits 01 -> sc4 = 16 + (s[8] & 15) = 16 + 5 = 21
     *   s[4] = 0x82: m0 = 2,  top bits 10 -> m4 = 32 + (s[8] >> 4) = 32 + 7 = 39
     *   s[1] = 7 -> sc1 = 7; s[5] = 1 -> m1 = 1; s[8] = 0x75
     * qs[0] = 0x9c: element 0 (sub-block 0, low nibble) = 12, element 32 (sub-block 1) = 9
     * qs[64] = 0x0f: element 128 (sub-block 4) = 15
     *   x0 = 2*3*12 - 0.5*2 = 71; x32 = 2*7*9 - 0.5*1 = 125.5; x128 = 2*21*15 - 0.5*39 = 610.5
     *   x1 = 2*3*0 - 1 = -1 (qs[1] = 0) */
    block_q4_K b4;
    memset(&b4, 0, sizeof b4);
    b4.d = 0x4000;
    b4.dmin = 0x3800;
    b4.scales[0] = 0x43;
    b4.scales[4] = 0x82;
    b4.scales[1] = 7;
    b4.scales[5] = 1;
    b4.scales[8] = 0x75;
    b4.qs[0] = 0x9c;
    b4.qs[64] = 0x0f;
    float y[QK_K];
    quant_dequantize_row(DT_Q4_K, &b4, y, QK_K);
    CHECK_NEAR(y[0], 71.0, 0);
    CHECK_NEAR(y[1], -1.0, 0);
    CHECK_NEAR(y[32], 125.5, 0);
    CHECK_NEAR(y[128], 610.5, 0);
    uint8_t sc[8], m[8];
    quant_kscales(b4.scales, sc, m);
    CHECK_EQ_INT(sc[4], 21);
    CHECK_EQ_INT(m[4], 39);

    /* Q5_K: the same scales; qh[0] = 0b00000101: fifth bit of element 0 (sub-block 0) and
     * element 64 (sub-block 2); qh[3] = 0x02: element 32 + 3 (sub-block 1).
     *   x0 = 2*3*(12+16) - 1 = 167; x64 = 2*sc2*16 - dmin*m2 with sc2 = s[2] = 0, m2 = 0: 0
     *   x35 = 2*7*(0+16) - 0.5 = 223.5 */
    block_q5_K b5;
    memset(&b5, 0, sizeof b5);
    b5.d = b4.d;
    b5.dmin = b4.dmin;
    memcpy(b5.scales, b4.scales, 12);
    b5.qs[0] = 0x0c;
    b5.qh[0] = 0x05;
    b5.qh[3] = 0x02;
    b5.scales[2] = 1; /* sc2 = 1: x64 = 2*1*16 - 0 = 32 */
    quant_dequantize_row(DT_Q5_K, &b5, y, QK_K);
    CHECK_NEAR(y[0], 167.0, 0);
    CHECK_NEAR(y[64], 32.0, 0);
    CHECK_NEAR(y[35], 223.5, 0);
    CHECK_NEAR(y[36], -0.5, 0);

    /* Q6_K: d = 0.25 (0x3400); scales[0] = 4, scales[2] = -2, scales[9] = 8.
     * ql[0] = 0x31, qh[0] = 0b00100110: element 0: low 1 | (qh bits 0-1 = 2) << 4 = 33 -> +1;
     *   element 64: high nibble 3 | (qh bits 4-5 = 2) << 4 = 35 -> +3, sub-block 4 (scale 0)
     *   element 32: ql[32] = 0 | (qh bits 2-3 = 1) << 4 = 16 -> -16, sub-block 2 (scale -2)
     * ql[64 + 16] = 0x0a, qh[32 + 16] = 0x03: element 128 + 16 = 144 (sub-block 9):
     *   10 | 3 << 4 = 58 -> +26
     *   x0 = 0.25*4*1 = 1; x32 = 0.25*-2*-16 = 8; x64 = 0; x144 = 0.25*8*26 = 52 */
    block_q6_K b6;
    memset(&b6, 0, sizeof b6);
    b6.d = 0x3400;
    b6.scales[0] = 4;
    b6.scales[2] = -2;
    b6.scales[9] = 8;
    b6.ql[0] = 0x31;
    b6.qh[0] = 0x26;
    b6.ql[64 + 16] = 0x0a;
    b6.qh[32 + 16] = 0x03;
    quant_dequantize_row(DT_Q6_K, &b6, y, QK_K);
    CHECK_NEAR(y[0], 1.0, 0);
    CHECK_NEAR(y[32], 8.0, 0);
    CHECK_NEAR(y[64], 0.0, 0);
    CHECK_NEAR(y[144], 52.0, 0);
    CHECK_NEAR(y[1], 0.25 * 4 * -32, 0); /* all-zero bits: q - 32 = -32 */
}

TEST(quant_k_round_trip_error) {
    const int types[] = {DT_Q4_K, DT_Q5_K, DT_Q6_K};
    const double bound[] = {0.10, 0.05, 0.04};
    const int64_t n = 64 * QK_K;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    void *q = malloc(dtype_row_size(DT_Q6_K, n));
    for (int64_t i = 0; i < n; i++) x[i] = (float)gauss() * (i < n / 2 ? 1.0f : 0.01f);
    for (int k = 0; k < 3; k++) {
        quant_quantize_row(types[k], x, q, n);
        quant_dequantize_row(types[k], q, y, n);
        double e = 0, s = 0;
        for (int64_t i = 0; i < n; i++) {
            e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            s += (double)x[i] * x[i];
            CHECK(isfinite(y[i]));
        }
        double rel = sqrt(e / s);
        fprintf(stderr, "    %s: relative RMS error %.4f (bound %.2f)\n", dtype_info(types[k])->name, rel, bound[k]);
        CHECKF(rel < bound[k], "%s: relative RMS error %g", dtype_info(types[k])->name, rel);
        /* the small-scale half on its own: scales adapt per super-block */
        double e2 = 0, s2 = 0;
        for (int64_t i = n / 2; i < n; i++) {
            e2 += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            s2 += (double)x[i] * x[i];
        }
        CHECKF(sqrt(e2 / s2) < bound[k], "%s: relative RMS error %g at scale 0.01",
               dtype_info(types[k])->name, sqrt(e2 / s2));
    }
    /* all-zero and constant blocks */
    for (int k = 0; k < 3; k++) {
        float z[QK_K] = {0}, out[QK_K];
        quant_quantize_row(types[k], z, q, QK_K);
        quant_dequantize_row(types[k], q, out, QK_K);
        for (int i = 0; i < QK_K; i++) CHECK_NEAR(out[i], 0.0, 0);
        for (int i = 0; i < QK_K; i++) z[i] = -3.0f;
        quant_quantize_row(types[k], z, q, QK_K);
        quant_dequantize_row(types[k], q, out, QK_K);
        for (int i = 0; i < QK_K; i++) CHECK_NEAR(out[i], -3.0, 0.05);
    }
    free(x);
    free(y);
    free(q);
}

TEST(quant_q8_K_activations) {
    const int64_t n = 4 * QK_K;
    float x[4 * QK_K];
    for (int64_t i = 0; i < n; i++) x[i] = (float)gauss() * (float)(1 + i / QK_K);
    block_q8_K b[4];
    quant_quantize_row(DT_Q8_K, x, b, n);
    for (int k = 0; k < 4; k++) {
        float amax = 0;
        for (int i = 0; i < QK_K; i++) amax = fmaxf(amax, fabsf(x[k * QK_K + i]));
        CHECK_NEAR(b[k].d, amax / 127, 1e-7 * amax);
        for (int i = 0; i < QK_K; i++) CHECK(fabsf(x[k * QK_K + i] - b[k].d * b[k].qs[i]) <= 0.5001f * b[k].d);
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += b[k].qs[16 * g + i];
            CHECK_EQ_INT(b[k].bsums[g], s);
        }
    }
}

TEST(quant_mix_q4_k_m_rules) {
    CHECK_EQ_INT(duet_type_mix_from_name("Q4_K_M"), QMIX_Q4_K_M);
    CHECK_EQ_INT(duet_type_mix_from_name("q4_k"), -1);
    CHECK_EQ_INT(quant_mix_file_type(QMIX_Q4_K_M), 15);
    /* 22 layers: n/8 = 2, 7n/8 = 19; more bits in 0, 1, 19, 20, 21 and 4, 7, 10, 13, 16 */
    const int six[] = {0, 1, 4, 7, 10, 13, 16, 19, 20, 21};
    for (int l = 0; l < 22; l++) {
        int want = DT_Q4_K;
        for (size_t i = 0; i < sizeof six / sizeof six[0]; i++)
            if (six[i] == l) want = DT_Q6_K;
        char n[64];
        snprintf(n, sizeof n, "blk.%d.attn_v.weight", l);
        CHECK_EQ_INT(quant_mix_tensor_type(QMIX_Q4_K_M, n, 22), want);
        snprintf(n, sizeof n, "blk.%d.ffn_down.weight", l);
        CHECK_EQ_INT(quant_mix_tensor_type(QMIX_Q4_K_M, n, 22), want);
        snprintf(n, sizeof n, "blk.%d.attn_q.weight", l);
        CHECK_EQ_INT(quant_mix_tensor_type(QMIX_Q4_K_M, n, 22), DT_Q4_K);
        snprintf(n, sizeof n, "blk.%d.ffn_up.weight", l);
        CHECK_EQ_INT(quant_mix_tensor_type(QMIX_Q4_K_M, n, 22), DT_Q4_K);
    }
    CHECK_EQ_INT(quant_mix_tensor_type(QMIX_Q4_K_M, "output.weight", 22), DT_Q6_K);
    CHECK_EQ_INT(quant_mix_tensor_type(QMIX_Q4_K_M, "token_embd.weight", 22), DT_Q4_K);
    CHECK_EQ_INT(quant_mix_tensor_type(QMIX_Q5_K_M, "blk.3.ffn_gate.weight", 22), DT_Q5_K);
}

/* Write `path` as a make-model file of the given shape and type (or mix). */
static int make(const char *path, int type, int mix, int tied) {
    duet_make_model_params p = {.arch = "llama", .n_embd = 256, .n_layer = 2, .n_head = 4,
                                .n_head_kv = 2, .n_ff = 512, .n_vocab = 300, .n_ctx = 128,
                                .type = type, .output_type = -1, .tied = tied, .seed = 7, .mix = mix};
    duet_error err = {0};
    int rc = duet_make_model(&p, path, &err);
    if (rc) fprintf(stderr, "    make-model: %s\n", err.msg);
    return rc;
}

/* Overwrite the tensors of F32 file `f32` (same names and shapes) with the dequantised
 * tensors of `q`: the F32 twin of a quantised file. */
static int dequantised_twin(const char *q, const char *f32) {
    gguf_file *fq = NULL, *ff = NULL;
    duet_error err = {0};
    if (gguf_open(q, &fq, &err) || gguf_open(f32, &ff, &err)) {
        fprintf(stderr, "    %s\n", err.msg);
        gguf_close(fq);
        return -1;
    }
    int fd = open(f32, O_WRONLY), rc = fd < 0 ? -1 : 0;
    for (uint64_t i = 0; !rc && i < fq->n_tensors; i++) {
        const gguf_tensor *tq = &fq->tensors[i], *tf = gguf_find_tensor(ff, tq->name);
        if (!tf || tf->type != DT_F32 || tf->nbytes / 4 != (uint64_t)(tq->ne[0] * tq->ne[1])) { rc = -1; break; }
        float *buf = malloc(tf->nbytes);
        quant_dequantize_row(tq->type, tq->data, buf, tq->ne[0] * tq->ne[1]);
        if (pwrite(fd, buf, tf->nbytes, (off_t)(ff->data_offset + tf->offset)) != (ssize_t)tf->nbytes) rc = -1;
        free(buf);
    }
    if (fd >= 0) close(fd);
    gguf_close(fq);
    gguf_close(ff);
    return rc;
}

TEST(quant_k_models_match_dequantised_f32) {
    struct { int type, mix, tied; const char *name; } cases[] = {
        {DT_Q4_K, 0, 0, "q4_K"}, {DT_Q5_K, 0, 0, "q5_K"}, {DT_Q6_K, 0, 1, "q6_K tied"},
        {0, QMIX_Q4_K_M, 0, "q4_K_M"}, {DT_Q8_0, 0, 0, "q8_0"}, {DT_Q4_0, 0, 0, "q4_0"}};
    int32_t toks[20];
    for (int i = 0; i < 20; i++) toks[i] = (i * 53 + 11) % 300;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char q[512], f[512];
        snprintf(q, sizeof q, "%s/kq-%zu.gguf", test_tmpdir(), c);
        snprintf(f, sizeof f, "%s/kq-%zu-f32.gguf", test_tmpdir(), c);
        REQUIRE(!make(q, cases[c].type, cases[c].mix, cases[c].tied));
        REQUIRE(!make(f, DT_F32, 0, cases[c].tied));
        REQUIRE(!dequantised_twin(q, f));
        float *lq = fixture_logits(q, toks, 20), *lf = fixture_logits(f, toks, 20);
        REQUIRE(lq && lf);
        double e = test_nmse(lq, lf, 20L * 300);
        fprintf(stderr, "    %s vs its dequantised f32: logits NMSE %.3g (bound 1e-3)\n", cases[c].name, e);
        CHECKF(e < 1e-3, "%s: NMSE %g vs dequantised f32", cases[c].name, e);
        CHECKF(e > 0, "%s: identical to f32: activations were not quantised?", cases[c].name);
        free(lq);
        free(lf);
        unlink(q);
        unlink(f);
    }
    /* the mix really mixes: output in Q6_K; of 2 layers only the last is in the last eighth,
     * so its attn_v and ffn_down are Q6_K too; the rest Q4_K */
    char q[512];
    snprintf(q, sizeof q, "%s/kq-mix.gguf", test_tmpdir());
    REQUIRE(!make(q, 0, QMIX_Q4_K_M, 0));
    gguf_file *g = NULL;
    duet_error err = {0};
    REQUIRE(!gguf_open(q, &g, &err));
    CHECK_EQ_INT(gguf_find_tensor(g, "output.weight")->type, DT_Q6_K);
    CHECK_EQ_INT(gguf_find_tensor(g, "token_embd.weight")->type, DT_Q4_K);
    CHECK_EQ_INT(gguf_find_tensor(g, "blk.1.attn_v.weight")->type, DT_Q6_K);
    CHECK_EQ_INT(gguf_find_tensor(g, "blk.1.ffn_down.weight")->type, DT_Q6_K);
    CHECK_EQ_INT(gguf_find_tensor(g, "blk.0.attn_v.weight")->type, DT_Q4_K);
    CHECK_EQ_INT(gguf_find_tensor(g, "blk.0.ffn_down.weight")->type, DT_Q4_K);
    CHECK_EQ_INT(gguf_find_tensor(g, "blk.0.attn_q.weight")->type, DT_Q4_K);
    CHECK_EQ_INT(gguf_find_tensor(g, "blk.1.ffn_up.weight")->type, DT_Q4_K);
    gguf_close(g);
    unlink(q);
}

/* K-quant files from other tools: DUET_FOREIGN_KQUANT="Q.gguf:Q_F32.gguf[,...]" names
 * files written by another quantiser (llama.cpp's llama-quantize) and their F32 twins as
 * that tool dequantises them. duet's dequantisation must equal the tool's bit for bit, and
 * the file's logits must match the twin's (NMSE < 1e-3, the bound above). Skipped unless
 * set: the files come from outside the repository (bench/results/ says how they were made). */
TEST(quant_k_foreign_files) {
    const char *env = getenv("DUET_FOREIGN_KQUANT");
    if (!env || !*env) SKIP("DUET_FOREIGN_KQUANT not set");
    char list[4096];
    snprintf(list, sizeof list, "%s", env);
    int32_t toks[20];
    for (char *save = NULL, *pair = strtok_r(list, ",", &save); pair; pair = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(pair, ':');
        REQUIRE(colon);
        *colon = 0;
        const char *qp = pair, *fp = colon + 1;
        gguf_file *fq = NULL, *ff = NULL;
        duet_error err = {0};
        REQUIRE(!gguf_open(qp, &fq, &err) && !gguf_open(fp, &ff, &err));
        long n_k = 0, n_diff = 0;
        for (uint64_t i = 0; i < fq->n_tensors; i++) {
            const gguf_tensor *tq = &fq->tensors[i], *tf = gguf_find_tensor(ff, tq->name);
            REQUIRE(tf && tf->type == DT_F32);
            int64_t n = tq->ne[0] * tq->ne[1];
            float *y = malloc((size_t)n * sizeof(float));
            quant_dequantize_row(tq->type, tq->data, y, n);
            if (memcmp(y, tf->data, (size_t)n * sizeof(float))) n_diff++;
            n_k += tq->type >= DT_Q4_K && tq->type <= DT_Q6_K;
            free(y);
        }
        CHECKF(n_diff == 0, "%s: %ld tensors dequantise differently from %s", qp, n_diff, fp);
        duet_model *m = fixture_load(qp);
        REQUIRE(m);
        int V = duet_model_hparams(m)->n_vocab;
        duet_model_free(m);
        for (int i = 0; i < 20; i++) toks[i] = (i * 53 + 11) % V;
        float *lq = fixture_logits(qp, toks, 20), *lf = fixture_logits(fp, toks, 20);
        REQUIRE(lq && lf);
        double e = test_nmse(lq, lf, 20L * V);
        fprintf(stderr, "    %s: %ld K-quant tensors, all bit-exact with %s: %s; logits NMSE %.3g\n", qp, n_k,
                fp, n_diff ? "no" : "yes", e);
        CHECKF(e < 1e-3, "%s: logits NMSE %g vs its dequantised twin", qp, e);
        free(lq);
        free(lf);
        gguf_close(fq);
        gguf_close(ff);
    }
}
