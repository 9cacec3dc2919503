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
#include <sys/wait.h>
#include <unistd.h>

#include "format/gguf.h"
#include "format/quant.h"
#include "train/lm_frozen.h"
#include "fixtures.h"
#include "test.h"

static uint64_t g_rng = 99;
static double urand(void) { return (double)(duet_splitmix64(&g_rng) >> 11) * 0x1.0p-53 * 2 - 1; }

/* ---- a tiny frozen base held in memory ---------------------------------------------------- */
/* n_embd 32, 2 layers, 2 heads of 16 (1 kv head), n_ff 64, vocab 13: every matrix row is a
 * whole number of 32-element blocks, so Q8_0 and Q4_0 hold it. Variants: qwen2's q/k/v
 * biases and qwen3's per-head q/k norms (with heads of 24, so n_head * head_dim is not
 * n_embd: F32 only), both with neox RoPE. */
enum { TINY_LLAMA, TINY_QWEN2, TINY_QWEN3 };
typedef struct tiny {
    lm_config c;
    lm_frozen fz;
    lm_frozen_layer layer[2];
    void *mat[2 * 7 + 2];          /* the quantised matrices (owned) */
    float *dq[2 * 7 + 2];          /* the same dequantised, [n_out][n_in] */
    float norms[5][32];
    float bias[2][3][48];          /* qwen2: bq, bk, bv of each layer */
    float qk_norm[2][2][24];       /* qwen3: q_norm, k_norm of each layer */
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

static void tiny_init(tiny *m, int type, int tied, uint64_t seed, int variant) {
    memset(m, 0, sizeof *m);
    g_rng = seed;
    int hd = variant == TINY_QWEN3 ? 24 : 16;
    m->c = (lm_config){.n_vocab = 13, .n_embd = 32, .n_layer = 2, .n_head = 2, .n_head_kv = 1,
                       .n_ff = 64, .head_dim = hd, .tied = tied, .rms_eps = 1e-5f,
                       .rope_neox = variant != TINY_LLAMA};
    for (int i = 0; i < hd / 2; i++) m->c.inv_freq[i] = powf(10000.0f, -(float)(2 * i) / hd);
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
    for (int l = 0; l < 2; l++) {
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < 48; i++) m->bias[l][j][i] = (float)(0.5 * urand());
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < 24; i++) m->qk_norm[l][j][i] = (float)(1 + 0.3 * urand());
        if (variant == TINY_QWEN2) {
            m->layer[l].bq = m->bias[l][0];
            m->layer[l].bk = m->bias[l][1];
            m->layer[l].bv = m->bias[l][2];
        } else if (variant == TINY_QWEN3) {
            m->layer[l].q_norm = m->qk_norm[l][0];
            m->layer[l].k_norm = m->qk_norm[l][1];
        }
    }
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
static void lora_setup(lora_ctx *m, int type, int tied, int loss, int variant) {
    tiny_init(&m->base, type, tied, 1000 + 10 * (uint64_t)type + 2 * (uint64_t)tied + (uint64_t)loss +
              100 * (uint64_t)variant, variant);
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
        if (loss == LM_LOSS_WEAK) m->lpe[i] = i % 3 == 0 ? 1.0f : 0.0f; /* weak labels */
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
static void check_lora_grads(int type, int tied, int loss, int variant) {
    static lora_ctx m;
    lora_setup(&m, type, tied, loss, variant);
    REQUIRE(m.a && m.w && m.g);
    lmq_lora_run(&m.base.c, &m.base.fz, &m.lo, m.w, m.g, m.u, m.gu, m.a, &m.b, NULL, 1, NULL);
    int kinds = 0;
    for (int i = 0; i < m.L.n_t; i++) {
        const lm_tensor *t = &m.L.t[i];
        size_t at = 0;
        double rel = fd_rel(&m, m.w + t->off, m.g + t->off, (size_t)(t->n_in * t->n_out), &at);
        CHECKF(rel < 1e-6, "%s base, %s loss: %s: max |analytic - numeric| / max |grad| = %.3g "
               "at element %zu", dtype_info(type)->name, loss == LM_LOSS_WEAK ? "weak" : loss ? "collm" : "ce", t->name, rel, at);
        kinds += strstr(t->name, "blk.0.") != NULL;
    }
    CHECK_EQ_INT(kinds, 14); /* A and B of all seven kinds of a layer were checked */
    if (loss != LM_LOSS_CE) {
        size_t at = 0;
        double rel = fd_rel(&m, m.u, m.gu, 32, &at);
        CHECKF(rel < 1e-6, "%s base: head u: rel %.3g at %zu", dtype_info(type)->name, rel, at);
    }
    lora_teardown(&m);
}

TEST(lm_lora_fd_ce_f32) { check_lora_grads(DT_F32, 0, LM_LOSS_CE, TINY_LLAMA); }
TEST(lm_lora_fd_ce_q8_0_tied) { check_lora_grads(DT_Q8_0, 1, LM_LOSS_CE, TINY_LLAMA); }
TEST(lm_lora_fd_ce_q4_0) { check_lora_grads(DT_Q4_0, 0, LM_LOSS_CE, TINY_LLAMA); }
TEST(lm_lora_fd_collm_f32_tied) { check_lora_grads(DT_F32, 1, LM_LOSS_COLLM, TINY_LLAMA); }
TEST(lm_lora_fd_collm_q8_0) { check_lora_grads(DT_Q8_0, 0, LM_LOSS_COLLM, TINY_LLAMA); }
TEST(lm_lora_fd_collm_q4_0) { check_lora_grads(DT_Q4_0, 0, LM_LOSS_COLLM, TINY_LLAMA); }
/* the official weak-supervision objective (CE with the deferral logit in the softmax + BCE) */
TEST(lm_lora_fd_weak_q8_0) { check_lora_grads(DT_Q8_0, 0, LM_LOSS_WEAK, TINY_LLAMA); }
/* qwen2 (frozen q/k/v biases, neox RoPE) and qwen3 (frozen per-head q/k norms, heads of 24) */
TEST(lm_lora_fd_qwen2_q8_0) { check_lora_grads(DT_Q8_0, 0, LM_LOSS_COLLM, TINY_QWEN2); }
TEST(lm_lora_fd_qwen3_f32) { check_lora_grads(DT_F32, 1, LM_LOSS_COLLM, TINY_QWEN3); }

/* The forward pass against the full model's (its own code path over a flat array, checked by
 * tests/test_lm_train.c) with the adapters merged by this test: W + s B A in double, from the
 * dequantised base. Logits and loss agree to rounding. */
TEST(lm_lora_forward_equals_merged_model) {
    static lora_ctx m;
    lora_setup(&m, DT_Q4_0, 0, LM_LOSS_COLLM, TINY_LLAMA);
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

/* ---- the float trainer against the engine ------------------------------------------------ */
/* Logits of toks[0..T) from a fresh session of the model at base (with the adapter file at
 * lora, scale 1, when not NULL): malloc'd [T][V]. */
static float *engine_logits(const char *base, const char *lora, const int32_t *toks, int T) {
    duet_error err = {0};
    duet_model *dm = fixture_load(base);
    duet_lora *ad = NULL;
    duet_session *s = NULL;
    duet_session_params sp = {.n_ctx = 64};
    float *out = NULL;
    if (!dm) return NULL;
    if (lora && (duet_lora_load(lora, dm, &ad, &err) || duet_model_add_lora(dm, ad, 1.0f, &err))) {
        test_fail_at(__FILE__, __LINE__, "%s: %s", lora, err.msg);
    } else if (duet_session_new(dm, &sp, &s, &err) || duet_session_eval(s, toks, T, 1, &err)) {
        test_fail_at(__FILE__, __LINE__, "%s", err.msg);
    } else {
        int V = duet_model_hparams(dm)->n_vocab;
        out = malloc((size_t)T * V * sizeof(float));
        for (int t = 0; t < T; t++) memcpy(out + (size_t)t * V, duet_session_logits(s, t), V * 4);
    }
    duet_session_free(s);
    duet_model_free(dm);
    duet_lora_free(ad);
    return out;
}

/* Max |a - b| over max |b|. */
static double rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return d / m;
}

/* The trainer's logits for toks (targets = toks) from a forward pass. */
static float *trainer_logits(lm_model *m, const int32_t *toks, int T) {
    duet_error err = {0};
    lm_acts *a = NULL;
    if (lm_acts_new(m, 1, T, &a, &err)) return NULL;
    float *lg = malloc((size_t)T * m->c.n_vocab * sizeof(float));
    lm_batch b = {.B = 1, .T = T, .tokens = toks, .targets = toks, .scale = 1};
    lm_step(m, a, &b, 0, lg);
    lm_acts_free(a);
    return lg;
}

/* Quantised bases: the engine's kernels round each activation row to Q8_0 before the product,
 * so a float difference of an ulp between two implementations of the steps in between (the
 * trainer's and the engine's SiLU, norms, attention) occasionally moves one element across a
 * rounding step; the logits then differ by up to ~1e-3 of their scale. F32 bases have no such
 * step: there the trainer and the engine agree to rounding. */
#define QUANT_TOL 1e-2
#define F32_TOL 1e-5

/* A fixture_random base (n_embd 128, 2 layers, 4 heads of 32 / 2 kv heads, n_ff 256, vocab
 * 600) with rank-4 adapters on the default kinds: parameters per layer r (in + out) summed
 * over q 128+128, k 128+64, v 128+64, o 128+128, gate 128+256, up 128+256, down 256+128 =
 * 4 * 2048 = 8192, two layers 16384. The base's matrices are the engine's own views (same
 * pointer, still Q8_0), and at step 0 (B = 0) the trainer's logits are the engine's. */
TEST(lm_lora_step0_is_the_base_and_not_copied) {
    for (int q = 0; q < 2; q++) {
        const char *path = fixture_random(q ? DT_Q8_0 : DT_F32, 41, 0);
        REQUIRE(path);
        duet_error err = {0};
        duet_lm_lora_params lp = {.rank = 4, .seed = 1};
        duet_lm *m = NULL;
        REQUIRE(duet_lm_load_lora(path, 2, &lp, &m, &err) == DUET_OK);
        CHECK_EQ_INT(m->L.n_params, 16384);
        CHECK_EQ_INT(m->L.n_t, 28);
        const mtensor *wq = &m->fz->layer[1].w[LM_MAT_Q];
        /* Q8_0 in the engine's row-interleaved layout: the load copies and repacks it */
        CHECK(quant_file_type(wq->type) == (q ? DT_Q8_0 : DT_F32) &&
              wq->data == m->src->layers[1].wq.data);
        CHECK(m->fz->output.data == m->src->output.data);
        enum { T = 20 };
        int32_t tok[T];
        for (int i = 0; i < T; i++) tok[i] = (int32_t)(3 + (i * 37) % 500);
        tok[0] = 1;
        float *lt = trainer_logits(m, tok, T), *le = engine_logits(path, NULL, tok, T);
        REQUIRE(lt && le);
        double rel = rel_diff(lt, le, (size_t)T * 600);
        CHECKF(rel < (q ? QUANT_TOL : F32_TOL), "%s step 0: max |trainer - engine| / max "
               "|engine| = %g", q ? "q8_0" : "f32", rel);
        free(lt);
        free(le);
        duet_lm_free(m);
    }
}

/* An adapter file written by the trainer, applied unmerged by the engine: the trainer's
 * logits, on an F32 and a Q4_0 llama base and F32 qwen2 and qwen3 bases. Rank 3, alpha 6
 * (s = 2), every kind and the output, A and B drawn at random (a wrong scale moves the logits
 * by ~5e-2 of their scale). At step 0 (B = 0) the trainer computes the base. */
static void check_applied(const char *path, int type, int V, const char *name) {
    REQUIRE(path);
    duet_error err = {0};
    duet_lm_lora_params lp = {.rank = 3, .alpha = 6, .targets = DUET_LORA_DEFAULT | DUET_LORA_OUTPUT};
    duet_lm *m = NULL;
    REQUIRE(duet_lm_load_lora(path, 2, &lp, &m, &err) == DUET_OK);
    enum { T = 20 };
    int32_t tok[T];
    for (int i = 0; i < T; i++) tok[i] = (int32_t)(5 + (i * 53) % (V - 10));
    tok[0] = 1;
    double tol = type == DT_F32 ? F32_TOL : QUANT_TOL;
    float *l0 = trainer_logits(m, tok, T), *lb = engine_logits(path, NULL, tok, T);
    REQUIRE(l0 && lb);
    double rel0 = rel_diff(l0, lb, (size_t)T * V);
    CHECKF(rel0 < tol, "%s: step 0: max |trainer - engine| / max |engine| = %g", name, rel0);
    free(l0);
    g_rng = 5;
    for (size_t i = 0; i < m->L.n_params; i++) m->w[i] = (float)(0.05 * urand());
    const char *ad = test_path(test_tmpdir(), name);
    REQUIRE(lm_model_save(m, ad, "adapter-test", &err) == DUET_OK);
    float *lt = trainer_logits(m, tok, T), *le = engine_logits(path, ad, tok, T);
    REQUIRE(lt && le);
    double rel = rel_diff(lt, le, (size_t)T * V), moved = rel_diff(lb, le, (size_t)T * V);
    CHECKF(rel < tol, "%s: max |trainer - engine with the adapter| / max |engine| = %g", name, rel);
    CHECKF(moved > 1e-1, "%s: the adapter changes the logits by only %g", name, moved);
    free(lt);
    free(le);
    free(lb);
    duet_lm_free(m);
}

TEST(lm_lora_adapter_file_applies_as_trained) {
    check_applied(fixture_random(DT_F32, 43, 0), DT_F32, 600, "lora-applies-f32.gguf");
    check_applied(fixture_random(DT_Q4_0, 43, 0), DT_Q4_0, 600, "lora-applies-q4_0.gguf");
}

/* qwen2 (q/k/v biases) and qwen3 (per-head q/k norms, head_dim 24 with n_embd 64), neox RoPE:
 * the fixture_arch models (n_embd 64, 3 layers, vocab 300). */
TEST(lm_lora_qwen_applies_as_trained) {
    check_applied(fixture_arch("qwen2", DT_F32, 0, 0, 0), DT_F32, 300, "lora-qwen2.gguf");
    check_applied(fixture_arch("qwen3", DT_F32, 0, 0, 0), DT_F32, 300, "lora-qwen3.gguf");
}

/* The adapter file has llama.cpp's metadata, names and shapes (F32), and the trainer reads
 * it back bit for bit with its rank, alpha and kinds. */
TEST(lm_lora_adapter_file_format) {
    const char *path = fixture_random(DT_Q8_0, 43, 0);
    REQUIRE(path);
    duet_error err = {0};
    duet_lm_lora_params lp = {.rank = 3, .alpha = 6, .targets = DUET_LORA_DEFAULT | DUET_LORA_OUTPUT};
    duet_lm *m = NULL;
    REQUIRE(duet_lm_load_lora(path, 1, &lp, &m, &err) == DUET_OK);
    g_rng = 6;
    for (size_t i = 0; i < m->L.n_params; i++) m->w[i] = (float)(0.05 * urand());
    const char *ad = test_path(test_tmpdir(), "lora-format.gguf");
    REQUIRE(lm_model_save(m, ad, "adapter-test", &err) == DUET_OK);
    gguf_file *f = NULL;
    REQUIRE(gguf_open(ad, &f, &err) == DUET_OK);
    gguf_str s;
    const char *want[4][2] = {{"general.type", "adapter"}, {"general.architecture", "llama"},
                              {"adapter.type", "lora"}, {"general.name", "adapter-test"}};
    for (int i = 0; i < 4; i++)
        CHECKF(!gguf_get_str(f, want[i][0], &s, &err) && s.len == strlen(want[i][1]) &&
               !memcmp(s.ptr, want[i][1], s.len), "%s", want[i][0]);
    float alpha = 0;
    CHECK(!gguf_get_f32_opt(f, "adapter.lora.alpha", &alpha, &err) && alpha == 6.0f);
    CHECK_EQ_INT(f->n_tensors, 30); /* 2 x (7 kinds x 2 layers + the output) */
    static const struct { const char *name; int64_t ne0, ne1; } shapes[] = {
        {"blk.0.attn_q.weight.lora_a", 128, 3}, {"blk.0.attn_q.weight.lora_b", 3, 128},
        {"blk.1.attn_k.weight.lora_b", 3, 64}, {"blk.1.ffn_down.weight.lora_a", 256, 3},
        {"blk.1.ffn_down.weight.lora_b", 3, 128}, {"blk.0.ffn_gate.weight.lora_b", 3, 256},
        {"output.weight.lora_a", 128, 3}, {"output.weight.lora_b", 3, 600}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const gguf_tensor *t = gguf_find_tensor(f, shapes[i].name);
        CHECKF(t && t->type == DT_F32 && t->n_dims == 2 && t->ne[0] == shapes[i].ne0 &&
               t->ne[1] == shapes[i].ne1, "%s", shapes[i].name);
    }
    /* B of blk.0 attn_q, element [o = 1][j = 2] at row-major index 1 * 3 + 2 */
    const gguf_tensor *tb = gguf_find_tensor(f, "blk.0.attn_q.weight.lora_b");
    REQUIRE(tb);
    float v;
    memcpy(&v, (const char *)tb->data + 5 * sizeof(float), sizeof v);
    CHECK(v == m->w[m->lora->b_off[lm_lora_slot(&m->c, 0, LM_MAT_Q)] + 5]);
    gguf_close(f);
    duet_lm *m2 = NULL;
    duet_lm_lora_params again = {.init = ad};
    REQUIRE(duet_lm_load_lora(path, 1, &again, &m2, &err) == DUET_OK);
    CHECK(m2->L.n_params == m->L.n_params && !memcmp(m2->w, m->w, m->L.n_params * 4));
    CHECK(m2->lora->rank == 3 && m2->lora->alpha == 6.0f && m2->lora->targets == lp.targets);
    duet_lm_free(m2);
    duet_lm_free(m);
}

/* One step's adapter and u gradients on 1 and 3 threads: the same bits. */
TEST(lm_lora_grads_independent_of_threads) {
    const char *path = fixture_random(DT_Q4_0, 45, 1);
    REQUIRE(path);
    duet_error err = {0};
    duet_lm_lora_params lp = {.rank = 4, .seed = 2};
    duet_lm *ms[2] = {NULL, NULL};
    REQUIRE(duet_lm_load_lora(path, 1, &lp, &ms[0], &err) == DUET_OK);
    REQUIRE(duet_lm_load_lora(path, 3, &lp, &ms[1], &err) == DUET_OK);
    enum { B = 2, T = 16 };
    int32_t tok[B * T], tgt[B * T];
    float wt[B * T], lpe[B * T], u[128];
    uint64_t r = 7;
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(duet_splitmix64(&r) % 600);
        tgt[i] = (int32_t)(duet_splitmix64(&r) % 600);
        wt[i] = 1;
        lpe[i] = -1.5f;
    }
    for (int i = 0; i < 128; i++) u[i] = (float)((i % 7) - 3) * 0.01f;
    for (int k = 0; k < 2; k++) {
        lm_model *m = ms[k];
        g_rng = 11; /* B away from zero, so that every path carries gradient */
        for (size_t i = 0; i < m->L.n_params; i++) m->w[i] = (float)(0.05 * urand());
        m->u = duet_aalloc(sizeof u);
        m->gu = duet_aalloc(sizeof u);
        memcpy(m->u, u, sizeof u);
        lm_acts *a;
        REQUIRE(lm_acts_new(m, B, T, &a, &err) == DUET_OK);
        lm_batch b = {.B = B, .T = T, .tokens = tok, .targets = tgt, .weight = wt, .lpe = lpe,
                      .loss = LM_LOSS_COLLM, .scale = 1.0 / (B * T)};
        lm_zero_grad(m);
        lm_step(m, a, &b, 1, NULL);
        lm_acts_free(a);
    }
    CHECK(memcmp(ms[0]->g, ms[1]->g, ms[0]->L.n_params * sizeof(float)) == 0);
    CHECK(memcmp(ms[0]->gu, ms[1]->gu, sizeof u) == 0);
    double n2 = 0;
    for (size_t i = 0; i < ms[0]->L.n_params; i++) n2 += (double)ms[0]->g[i] * ms[0]->g[i];
    CHECK(n2 > 0);
    duet_lm_free(ms[0]);
    duet_lm_free(ms[1]);
}

/* What LoRA training refuses, by name: another architecture (and full training, a
 * non-llama one, whose biases and norms its layout lacks), the output of a tied model, an
 * adapter file that does not match the rank asked for. */
TEST(lm_lora_refusals) {
    duet_error err = {0};
    duet_lm *m = NULL;
    const char *phi = fixture_arch("phi3", DT_F32, 0, 0, 0);
    REQUIRE(phi);
    duet_lm_lora_params lp = {.rank = 2};
    CHECK(duet_lm_load_lora(phi, 1, &lp, &m, &err) == DUET_ERR_UNSUPPORTED && !m);
    CHECKF(strstr(err.msg, "architecture phi3: LoRA training not supported yet"), "%s", err.msg);
    lm_model full;
    CHECK(lm_model_load(fixture_arch("qwen2", DT_F32, 0, 0, 0), 1, &full, &err) ==
          DUET_ERR_UNSUPPORTED);
    CHECKF(strstr(err.msg, "architecture qwen2: training every weight"), "%s", err.msg);
    const char *tied = fixture_random(DT_F32, 47, 1);
    REQUIRE(tied);
    lp.targets = DUET_LORA_Q | DUET_LORA_OUTPUT;
    CHECK(duet_lm_load_lora(tied, 1, &lp, &m, &err) == DUET_ERR_UNSUPPORTED && !m);
    CHECKF(strstr(err.msg, "'output'") && strstr(err.msg, "tied"), "%s", err.msg);
    lp.targets = DUET_LORA_Q;
    REQUIRE(duet_lm_load_lora(tied, 1, &lp, &m, &err) == DUET_OK);
    const char *ad = test_path(test_tmpdir(), "lora-rank2.gguf");
    REQUIRE(lm_model_save(m, ad, NULL, &err) == DUET_OK);
    duet_lm_free(m);
    m = NULL;
    duet_lm_lora_params again = {.rank = 4, .init = ad};
    CHECK(duet_lm_load_lora(tied, 1, &again, &m, &err) == DUET_ERR_ARG && !m);
    CHECKF(strstr(err.msg, "lora-rank2.gguf") && strstr(err.msg, "rank 2"), "%s", err.msg);
    unsigned t = 0;
    CHECK(duet_lora_targets_parse("q,v,down", &t, &err) == DUET_OK &&
          t == (DUET_LORA_Q | DUET_LORA_V | DUET_LORA_DOWN));
    CHECK(duet_lora_targets_parse("q,attn", &t, &err) == DUET_ERR_ARG && strstr(err.msg, "'attn'"));
}

/* ---- the CLI: duet train lm / collm --lora ------------------------------------------------ */
static int run_cli(const char *args, char *err, size_t cap) {
    return fixture_run_cli(args, "lora-cli", err, cap);
}


static const char *lora_jsonl(const char *name, int n) {
    const char *path = test_path(test_tmpdir(), name);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    for (int i = 0; i < n; i++) {
        int a = i % 10, b = (i * 7) % 10;
        fprintf(f, "{\"prompt\": \"%d plus %d\", \"response\": \"is %d, so %d\"}\n", a, b, a + b, a + b);
    }
    fclose(f);
    return path;
}

#define NEED_BIN() do { if (!getenv("DUET_BIN")) SKIP("DUET_BIN not set (run through make test)"); } while (0)

/* duet train lm --lora: the same adapter bytes on 1 and 2 threads, and from a run stopped
 * half-way and resumed; duet run applies it. */
TEST(lm_lora_cli_threads_and_resume) {
    NEED_BIN();
    const char *base = fixture_random(DT_Q8_0, 51, 1), *data = lora_jsonl("lora-cli.jsonl", 40);
    REQUIRE(base && data);
    char common[2048], args[3072], err[4096];
    const char *tmp = test_tmpdir();
    snprintf(common, sizeof common, "train lm -m '%s' --lora 4 --lora-alpha 8 -d '%s' --seq-len 24 "
             "--batch 4 --steps 6 --lr 3e-3 --eval-every 3 --name t --seed 1 --quiet", base, data);
    snprintf(args, sizeof args, "%s -t 1 -o '%s/lc1.gguf'", common, tmp);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
    snprintf(args, sizeof args, "%s -t 2 -o '%s/lc2.gguf'", common, tmp);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
    char p1[600], p2[600], p3[600], opt[700];
    snprintf(p1, sizeof p1, "%s/lc1.gguf", tmp);
    snprintf(p2, sizeof p2, "%s/lc2.gguf", tmp);
    snprintf(p3, sizeof p3, "%s/lc3.gguf", tmp);
    snprintf(opt, sizeof opt, "%s.optim", p3);
    CHECKF(fixture_same_file(p1, p2), "1 and 2 threads wrote different adapters");
    snprintf(args, sizeof args, "%s -t 2 --stop-at 3 -o '%s'", common, p3);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
    CHECK(access(opt, R_OK) == 0);
    snprintf(args, sizeof args, "%s -t 1 --resume -o '%s'", common, p3);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
    CHECKF(fixture_same_file(p1, p3), "3 steps + resume + 3 steps differ from 6 steps");
    CHECK(access(opt, F_OK) != 0); /* a finished run leaves nothing to resume */
    snprintf(args, sizeof args, "run -m '%s' --lora '%s' -p '1 plus 2' -n 3 --temp 0 --quiet",
             base, p1);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
}

/* duet train collm --lora: adapters and u together; stopped and resumed, the adapter and the
 * head come out byte for byte as from the uninterrupted run (the head resumes from
 * --head-out, not from the --head it started from). */
TEST(lm_lora_cli_collm_resume) {
    NEED_BIN();
    const char *base = fixture_random(DT_Q8_0, 52, 1), *expert = fixture_random(DT_F32, 53, 1);
    const char *data = lora_jsonl("lora-collm.jsonl", 40);
    REQUIRE(base && expert && data);
    duet_error err0 = {0};
    duet_model *bm = fixture_load(base), *em = fixture_load(expert);
    REQUIRE(bm && em);
    duet_dataset d;
    REQUIRE(duet_dataset_load(data, NULL, &d, &err0) == DUET_OK);
    char ep[600], hp[600], common[3072], args[5000], err[4096], a[4][600];
    const char *tmp = test_tmpdir();
    snprintf(ep, sizeof ep, "%s/lora-collm-expert.dsf", tmp);
    snprintf(hp, sizeof hp, "%s/lora-collm-weak.head.gguf", tmp);
    duet_scores_params sp = {.n_ctx = 25, .no_hidden = 1, .ids_model = bm};
    REQUIRE(duet_scores_compute(em, &d, &sp, ep, NULL, &err0) == DUET_OK);
    duet_dataset_free(&d);
    duet_head *h = fixture_random_head(bm, 3, 0.5f);
    REQUIRE(h && duet_head_save(h, hp, &err0) == DUET_OK);
    duet_head_free(h);
    duet_model_free(bm);
    duet_model_free(em);
    snprintf(common, sizeof common, "train collm -m '%s' --lora 4 -d '%s' --expert-scores '%s' "
             "--head '%s' --seq-len 24 --batch 4 --steps 6 --lr 3e-3 --name j --seed 1 --quiet "
             "-t 2", base, data, ep, hp);
    const char *names[4] = {"lj1.gguf", "lj1.head.gguf", "lj2.gguf", "lj2.head.gguf"};
    for (int i = 0; i < 4; i++) snprintf(a[i], sizeof a[i], "%s/%s", tmp, names[i]);
    snprintf(args, sizeof args, "%s -o '%s' --head-out '%s'", common, a[0], a[1]);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
    snprintf(args, sizeof args, "%s --stop-at 3 -o '%s' --head-out '%s'", common, a[2], a[3]);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
    snprintf(args, sizeof args, "%s --resume -o '%s' --head-out '%s'", common, a[2], a[3]);
    CHECKF(run_cli(args, err, sizeof err) == 0, "%s", err);
    CHECKF(fixture_same_file(a[0], a[2]), "resumed adapter differs");
    CHECKF(fixture_same_file(a[1], a[3]), "resumed head differs");
    CHECK(!fixture_same_file(a[1], hp)); /* u learned */
}

/* Usage errors exit 2 and say what is wrong. */
TEST(lm_lora_cli_usage) {
    NEED_BIN();
    const char *base = fixture_random(DT_F32, 54, 1), *data = lora_jsonl("lora-usage.jsonl", 4);
    REQUIRE(base && data);
    char args[2048], err[4096];
    const char *o = test_path(test_tmpdir(), "lora-usage.gguf");
    snprintf(args, sizeof args, "train lm -m '%s' -d '%s' -o '%s' --lora 2 --lora-targets q,x", base,
             data, o);
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 2);
    CHECKF(strstr(err, "'x'") && strstr(err, "gate"), "%s", err);
    snprintf(args, sizeof args, "train lm -m '%s' -d '%s' -o '%s' --lora-alpha 4", base, data, o);
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 2);
    CHECKF(strstr(err, "--lora R"), "%s", err);
    snprintf(args, sizeof args, "train lm --n-embd 64 --n-layer 1 --n-head 2 --n-ff 64 --n-vocab "
             "300 -d '%s' -o '%s' --lora 2", data, o);
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 2);
    CHECKF(strstr(err, "-m"), "%s", err);
    CHECK(access(o, F_OK) != 0);
}

/* duet eval --lora: the adapter is applied to the base (the NLL changes); an expert adapter
 * needs an expert. */
TEST(lm_lora_cli_eval_takes_adapters) {
    NEED_BIN();
    const char *base = fixture_random(DT_F32, 55, 1), *data = lora_jsonl("lora-eval.jsonl", 24);
    REQUIRE(base && data);
    char args[4096], err[4096];
    const char *ad = test_path(test_tmpdir(), "lora-eval.gguf"),
               *text = test_path(test_tmpdir(), "lora-eval.txt");
    FILE *f = fopen(text, "w");
    REQUIRE(f);
    fputs("1 plus 2 is 3, so 3. 4 plus 5 is 9, so 9. 7 plus 1 is 8, so 8.\n", f);
    fclose(f);
    snprintf(args, sizeof args, "train lm -m '%s' --lora 4 -d '%s' --seq-len 24 --batch 4 --steps 4 "
             "--lr 1e-2 --quiet -o '%s'", base, data, ad);
    REQUIRE(run_cli(args, err, sizeof err) == 0);
    double nll[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        const char *o = test_path(test_tmpdir(), "lora-eval-out.txt");
        snprintf(args, sizeof args, "eval -m '%s' %s%s%s --task nll --data '%s' --quiet -t 1",
                 base, k ? "--lora '" : "", k ? ad : "", k ? "'" : "", text);
        CHECKF(fixture_run_cli_to(args, o, "lora-cli", err, sizeof err) == 0, "%s", err);
        char *txt = fixture_read_file(o, NULL);
        const char *row = txt ? strstr(txt, "\nbase ") : NULL;
        CHECKF(row && sscanf(row, " base - - %lf", &nll[k]) == 1, "output: %s", txt ? txt : "");
        free(txt);
    }
    CHECKF(nll[0] > 0 && nll[1] > 0 && nll[0] != nll[1], "NLL/byte %g without, %g with the adapter",
           nll[0], nll[1]);
    snprintf(args, sizeof args, "eval -m '%s' --expert-lora '%s' --task nll --data '%s' --quiet", base,
             ad, text);
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 1);
    CHECKF(strstr(err, "--expert-lora needs --expert"), "%s", err);
}

/* The float input gradient through a frozen matrix (lm_frozen_dx, the trainer's fast path)
 * against dx0 + dy W summed in double over the dequantised matrix, for every type a base
 * may hold, R8 layouts included, with token counts around the 8-token tile and F32/F16
 * widths that are not a multiple of the 32-column tile; and the same bits for 1 and 3
 * threads. The bound is float rounding of a 296-term sum of terms below 1 in size. */
static float unit_rand(uint64_t *st) { return (float)((duet_splitmix64(st) >> 40) * 0x1.0p-24); }

static void frozen_dx_case(threadpool *tp1, threadpool *tp3, int type, int r8) {
    const int in = type == DT_Q4_K || type == DT_Q6_K ? 512 : (type == DT_Q4_0 || type == DT_Q8_0 ? 96 : 72);
    const int out = 296, ns[] = {1, 7, 8, 13};
    size_t rs = dtype_row_size(type, in);
    uint8_t *wq = malloc(rs * out);
    float *row = malloc(sizeof(float) * in), *wf = malloc(sizeof(float) * in * out);
    if (!wq || !row || !wf) abort();
    uint64_t st = 99 + (uint64_t)type;
    for (int o = 0; o < out; o++) {
        for (int i = 0; i < in; i++) row[i] = 2 * unit_rand(&st) - 1;
        quant_quantize_row(type, row, wq + (size_t)o * rs, in);
        quant_dequantize_row(type, wq + (size_t)o * rs, wf + (size_t)o * in, in);
    }
    int wtype = r8 ? quant_repack_r8(type, wq, in, out) : type;
    CHECK(wtype >= 0);
    mtensor W = {.data = wq, .type = wtype, .n_in = in, .n_out = out};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        int n = ns[k];
        float *dy = malloc(sizeof(float) * n * out), *dx1 = malloc(sizeof(float) * n * in);
        float *dx3 = malloc(sizeof(float) * n * in), *scr = malloc(sizeof(float) * 3 * lm_frozen_dx_scratch());
        double *ref = malloc(sizeof(double) * n * in);
        if (!dy || !dx1 || !dx3 || !scr || !ref) abort();
        for (int i = 0; i < n * out; i++) dy[i] = 2 * unit_rand(&st) - 1;
        for (int i = 0; i < n * in; i++) ref[i] = dx1[i] = dx3[i] = unit_rand(&st);
        for (int t = 0; t < n; t++)
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++)
                    ref[(size_t)t * in + i] += (double)dy[(size_t)t * out + o] * wf[(size_t)o * in + i];
        lm_frozen_dx(tp1, dx1, dy, &W, n, scr);
        lm_frozen_dx(tp3, dx3, dy, &W, n, scr);
        double worst = 0;
        for (int i = 0; i < n * in; i++) worst = fmax(worst, fabs(dx1[i] - ref[i]));
        CHECKF(worst < 1e-4, "%s%s n=%d: max |dx - ref| = %g", dtype_info(type)->name,
               r8 ? " (r8)" : "", n, worst);
        CHECKF(!memcmp(dx1, dx3, sizeof(float) * n * in), "%s%s n=%d: 1 and 3 threads differ",
               dtype_info(type)->name, r8 ? " (r8)" : "", n);
        free(dy), free(dx1), free(dx3), free(scr), free(ref);
    }
    free(wq), free(row), free(wf);
}

TEST(lm_lora_frozen_dx_equals_double_reference) {
    static const int types[] = {DT_F32, DT_F16, DT_BF16, DT_Q4_0, DT_Q8_0, DT_Q4_K, DT_Q6_K};
    threadpool *tp1 = tp_new(1), *tp3 = tp_new(3);
    REQUIRE(tp1 && tp3);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (int r8 = 0; r8 < 2; r8++)
            if (!r8 || quant_r8_type(types[ti]) >= 0) frozen_dx_case(tp1, tp3, types[ti], r8);
    tp_free(tp1);
    tp_free(tp3);
}
