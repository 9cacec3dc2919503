/*
 * test_lm_lora.c: LoRA training on a frozen base. The network code of src/train/lm_impl.h is
 * compiled here for double: the adapters' and u's gradients are checked against central
 * finite differences of the forward pass alone, on bases whose matrices are F32, Q8_0 and
 * Q4_0 (the double forward multiplies by the dequantised matrix, so that is the function
 * being differentiated), and the forward pass against the full model's with the adapters
 * merged into its weights by the test. The float trainer is checked against the engine:
 * step 0 is the base, and a written adapter file applied by duet_lora_load gives the
 * trainer's logits.
 */
#define LM_R double
#define LM_T(name) lmq_##name
#include "train/lm_impl.h"

#include <stdlib.h>

#include "fixtures.h"
#include "test.h"

static uint64_t g_rng = 99;
static double urand(void) { return (double)(duet_splitmix64(&g_rng) >> 11) * 0x1.0p-53 * 2 - 1; }

/* ---- a tiny frozen base held in memory ---------------------------------------------------- */
/* n_embd 32, 2 layers, 2 heads of 16 (1 kv head), n_ff 64, vocab 13: every matrix row is a
 * whole number of 32-element blocks, so Q8_0 and Q4_0 hold it. */
typedef struct tiny {
    lm_config c;
    lm_frozen fz;
    lm_frozen_layer layer[2];
    void *mat[2 * 7 + 2];          /* the quantised matrices (owned) */
    float *dq[2 * 7 + 2];          /* the same dequantised, [n_out][n_in] */
    float norms[5][32];
} tiny;

/* A random matrix of type `type`, and its dequantised values in *deq. */
static mtensor tiny_matrix(int type, int in, int out, double scale, void **own, float **deq) {
    size_t rs = dtype_row_size(type, in);
    float *src = malloc((size_t)in * out * sizeof(float));
    char *q = malloc(rs * (size_t)out);
    *deq = malloc((size_t)in * out * sizeof(float));
    for (size_t i = 0; i < (size_t)in * out; i++) src[i] = (float)(scale * urand());
    for (int o = 0; o < out; o++) {
        quant_quantize_row(type, src + (size_t)o * in, q + (size_t)o * rs, in);
        quant_dequantize_row(type, q + (size_t)o * rs, *deq + (size_t)o * in, in);
    }
    free(src);
    *own = q;
    return (mtensor){.data = q, .type = type, .n_in = in, .n_out = out};
}

static void tiny_init(tiny *m, int type, int tied, uint64_t seed) {
    memset(m, 0, sizeof *m);
    g_rng = seed;
    m->c = (lm_config){.n_vocab = 13, .n_embd = 32, .n_layer = 2, .n_head = 2, .n_head_kv = 1,
                       .n_ff = 64, .head_dim = 16, .tied = tied, .rms_eps = 1e-5f};
    for (int i = 0; i < 8; i++) m->c.inv_freq[i] = powf(10000.0f, -(float)(2 * i) / 16);
    m->fz.layer = m->layer;
    int nm = 0;
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 7; k++) {
            int in, out;
            lm_mat_dims(&m->c, k, &in, &out);
            m->layer[l].w[k] = tiny_matrix(type, in, out, 0.4, &m->mat[nm], &m->dq[nm]);
            nm++;
        }
    m->fz.tok_embd = tiny_matrix(type, 32, 13, 1.0, &m->mat[nm], &m->dq[nm]);
    nm++;
    m->fz.output = tied ? m->fz.tok_embd : tiny_matrix(type, 32, 13, 0.5, &m->mat[nm], &m->dq[nm]);
    for (int v = 0; v < 5; v++)
        for (int i = 0; i < 32; i++) m->norms[v][i] = (float)(1 + 0.2 * urand());
    for (int l = 0; l < 2; l++) {
        m->layer[l].attn_norm = m->norms[2 * l];
        m->layer[l].ffn_norm = m->norms[2 * l + 1];
    }
    m->fz.output_norm = m->norms[4];
}

static void tiny_free(tiny *m) {
    for (int i = 0; i < 16; i++) {
        free(m->mat[i]);
        free(m->dq[i]);
    }
}

/* ---- finite differences ------------------------------------------------------------------ */
typedef struct lora_ctx {
    tiny base;
    lm_layout L;
    lm_lora lo;
    double *w, *g, u[32], gu[32];
    struct lmq_acts *a;
    lm_batch b;
    int32_t tok[10], tgt[10];
    float wt[10], lpe[10];
} lora_ctx;

static double obj_lora(lora_ctx *m) {
    return lmq_lora_run(&m->base.c, &m->base.fz, &m->lo, m->w, m->g, m->u, m->gu, m->a, &m->b,
                        NULL, 0, NULL) * m->b.scale;
}

/* Worst |analytic - numeric| over the largest |numeric| of the n values at x, or of 20 spread
 * evenly over them (every row of a larger tensor is sampled; the test stays fast). */
static double fd_rel(lora_ctx *m, double *x, const double *grad, size_t n, size_t *at) {
    const double h = 1e-5;
    double worst = 0, scale = 1e-12;
    size_t ns = n < 20 ? n : 20;
    for (size_t s = 0; s < ns; s++) {
        size_t i = s * n / ns + s % 3 * (n > 40); /* not only the first column */
        double x0 = x[i];
        x[i] = x0 + h;
        double fp = obj_lora(m);
        x[i] = x0 - h;
        double fm = obj_lora(m);
        x[i] = x0;
        double num = (fp - fm) / (2 * h);
        if (fabs(num) > scale) scale = fabs(num);
        if (fabs(num - grad[i]) > worst) { worst = fabs(num - grad[i]); *at = i; }
    }
    return worst / scale;
}

/* Adapters of rank 2, alpha 3 (s = 1.5) on every kind (and the output when untied), A and
 * B random so that every gradient path carries something (at B = 0, A's gradient is 0). */
static void lora_setup(lora_ctx *m, int type, int tied, int loss) {
    tiny_init(&m->base, type, tied, 1000 + 10 * (uint64_t)type + 2 * (uint64_t)tied + (uint64_t)loss);
    duet_error err = {0};
    unsigned targets = DUET_LORA_DEFAULT | (tied ? 0 : DUET_LORA_OUTPUT);
    CHECK(lm_lora_layout(&m->L, &m->lo, &m->base.c, 2, 3.0f, targets, &err) == DUET_OK);
    m->w = calloc(m->L.n_params, sizeof(double));
    m->g = calloc(m->L.n_params, sizeof(double));
    for (size_t i = 0; i < m->L.n_params; i++) m->w[i] = 0.3 * urand();
    for (int i = 0; i < 32; i++) m->u[i] = urand(), m->gu[i] = 0;
    for (int i = 0; i < 10; i++) {
        m->tok[i] = (int32_t)(duet_splitmix64(&g_rng) % 13);
        m->tgt[i] = (int32_t)(duet_splitmix64(&g_rng) % 13);
        m->wt[i] = i % 5 >= 1 ? 1.0f : 0.0f; /* a masked prompt position per sequence */
        m->lpe[i] = (float)(-3 * (urand() + 1));
    }
    m->b = (lm_batch){.B = 2, .T = 5, .tokens = m->tok, .targets = m->tgt, .weight = m->wt,
                      .lpe = m->lpe, .loss = loss, .scale = 1.0 / 8};
    m->a = lmq_acts_alloc_lora(&m->base.c, &m->base.fz, &m->lo, 2, 5, 1);
}

static void lora_teardown(lora_ctx *m) {
    lmq_acts_release(m->a);
    free(m->w);
    free(m->g);
    lm_lora_free(&m->lo);
    lm_layout_free(&m->L);
    tiny_free(&m->base);
}

/* Every adapter tensor (and u under the joint loss) against finite differences. */
static void check_lora_grads(int type, int tied, int loss) {
    static lora_ctx m;
    lora_setup(&m, type, tied, loss);
    REQUIRE(m.a && m.w && m.g);
    lmq_lora_run(&m.base.c, &m.base.fz, &m.lo, m.w, m.g, m.u, m.gu, m.a, &m.b, NULL, 1, NULL);
    int kinds = 0;
    for (int i = 0; i < m.L.n_t; i++) {
        const lm_tensor *t = &m.L.t[i];
        size_t at = 0;
        double rel = fd_rel(&m, m.w + t->off, m.g + t->off, (size_t)(t->n_in * t->n_out), &at);
        CHECKF(rel < 1e-6, "%s base, %s loss: %s: max |analytic - numeric| / max |grad| = %.3g "
               "at element %zu", dtype_info(type)->name, loss ? "collm" : "ce", t->name, rel, at);
        kinds += strstr(t->name, "blk.0.") != NULL;
    }
    CHECK_EQ_INT(kinds, 14); /* A and B of all seven kinds of a layer were checked */
    if (loss == LM_LOSS_COLLM) {
        size_t at = 0;
        double rel = fd_rel(&m, m.u, m.gu, 32, &at);
        CHECKF(rel < 1e-6, "%s base: head u: rel %.3g at %zu", dtype_info(type)->name, rel, at);
    }
    lora_teardown(&m);
}

TEST(lm_lora_fd_ce_f32) { check_lora_grads(DT_F32, 0, LM_LOSS_CE); }
TEST(lm_lora_fd_ce_q8_0_tied) { check_lora_grads(DT_Q8_0, 1, LM_LOSS_CE); }
TEST(lm_lora_fd_ce_q4_0) { check_lora_grads(DT_Q4_0, 0, LM_LOSS_CE); }
TEST(lm_lora_fd_collm_f32_tied) { check_lora_grads(DT_F32, 1, LM_LOSS_COLLM); }
TEST(lm_lora_fd_collm_q8_0) { check_lora_grads(DT_Q8_0, 0, LM_LOSS_COLLM); }
TEST(lm_lora_fd_collm_q4_0) { check_lora_grads(DT_Q4_0, 0, LM_LOSS_COLLM); }

/* The forward pass against the full model's (its own code path over a flat array, checked by
 * tests/test_lm_train.c) with the adapters merged by this test: W + s B A in double, from the
 * dequantised base. Logits and loss agree to rounding. */
TEST(lm_lora_forward_equals_merged_model) {
    static lora_ctx m;
    lora_setup(&m, DT_Q4_0, 0, LM_LOSS_COLLM);
    REQUIRE(m.a && m.w);
    const lm_config *c = &m.base.c;
    lm_layout L;
    duet_error err = {0};
    REQUIRE(lm_layout_init(&L, c, &err) == DUET_OK);
    double *w = calloc(L.n_params, sizeof(double)), *g = calloc(L.n_params, sizeof(double));
    REQUIRE(w && g);
    /* tensors of the full layout: the same matrices in the order tiny_init drew them */
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 8; k++) {
            if (k == 7 && l) break;
            int in, out, slot = lm_lora_slot(c, l, k), mi = k == 7 ? 15 : 7 * l + k;
            lm_mat_dims(c, k, &in, &out);
            const lm_layer_off *lo = &L.layer[l];
            const size_t offs[8] = {lo->wq, lo->wk, lo->wv, lo->wo, lo->w_gate, lo->w_up,
                                    lo->w_down, L.output};
            double *W = w + offs[k];
            const double *A = m.w + m.lo.a_off[slot], *Bm = m.w + m.lo.b_off[slot];
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    double ba = 0;
                    for (int j = 0; j < 2; j++) ba += Bm[o * 2 + j] * A[j * in + i];
                    W[(size_t)o * in + i] = m.base.dq[mi][(size_t)o * in + i] + 1.5 * ba;
                }
        }
    for (size_t i = 0; i < 13 * 32; i++) w[L.tok_embd + i] = m.base.dq[14][i];
    for (int i = 0; i < 32; i++) {
        w[L.layer[0].attn_norm + i] = m.base.norms[0][i];
        w[L.layer[0].ffn_norm + i] = m.base.norms[1][i];
        w[L.layer[1].attn_norm + i] = m.base.norms[2][i];
        w[L.layer[1].ffn_norm + i] = m.base.norms[3][i];
        w[L.output_norm + i] = m.base.norms[4][i];
    }
    struct lmq_acts *fa = lmq_acts_alloc(c, 2, 5);
    float lg_lora[10 * 13], lg_full[10 * 13];
    double l1 = lmq_lora_run(c, &m.base.fz, &m.lo, m.w, m.g, m.u, m.gu, m.a, &m.b, NULL, 0, lg_lora);
    double l2 = lmq_run(c, &L, w, g, m.u, m.gu, fa, &m.b, NULL, 0, lg_full);
    CHECKF(fabs(l1 - l2) <= 1e-10 * fabs(l2), "loss %.17g (LoRA) vs %.17g (merged)", l1, l2);
    double worst = 0;
    for (int i = 0; i < 10 * 13; i++) worst = fmax(worst, fabs((double)lg_lora[i] - lg_full[i]));
    CHECKF(worst < 1e-5, "logits differ by %g", worst); /* float copies of double logits */
    lmq_acts_release(fa);
    free(w);
    free(g);
    lm_layout_free(&L);
    lora_teardown(&m);
}
