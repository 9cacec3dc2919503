/*
 * test_lm_train.c: the llama trainer. The ops of src/train/lm_impl.h are compiled here for
 * double and every backward pass is checked against central finite differences of its own
 * forward pass (an independent oracle: only the forward code is trusted). The float trainer's
 * logits are checked against the engine's (duet_session) for the same GGUF, its gradients
 * for independence from the thread count, its checkpoints for a lossless round trip.
 */
#define LM_R double
#define LM_T(name) lmd_##name
#include "train/lm_impl.h"

#include <stdlib.h>

#include "fixtures.h"
#include "test.h"

/* ---- finite differences ------------------------------------------------------------------ */
static uint64_t g_rng = 12345;
static double urand(void) { return (double)(duet_splitmix64(&g_rng) >> 11) * 0x1.0p-53 * 2 - 1; }
static void fill(double *x, size_t n, double scale) { for (size_t i = 0; i < n; i++) x[i] = scale * urand(); }

/* Worst |analytic - numeric| over the largest |numeric|: the error relative to the gradient's
 * scale (elementwise relative errors blow up on gradients that are zero up to rounding). */
typedef double (*objective)(void *ctx);
static double fd_check(objective f, void *ctx, double *x, const double *grad, size_t n,
                       const char *what) {
    const double h = 1e-5;
    double worst = 0, scale = 1e-12;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + h;
        double fp = f(ctx);
        x[i] = x0 - h;
        double fm = f(ctx);
        x[i] = x0;
        double num = (fp - fm) / (2 * h);
        if (fabs(num) > scale) scale = fabs(num);
        double e = fabs(num - grad[i]);
        if (e > worst) { worst = e; at = i; }
    }
    double rel = worst / scale;
    CHECKF(rel < 1e-6, "%s: max |analytic - numeric| / max |grad| = %.3g at element %zu", what, rel, at);
    return rel;
}

/* Each op: the objective is sum(out * c) for fixed random c, so d obj / d out = c. */
typedef struct op_ctx {
    int n, in, out, dim, B, T, H, Hkv, hd, neox;
    double *x, *w, *y, *c, *rstd, *prob, *k, *v, *u, *cs, *sn;
} op_ctx;

static double dotc(const double *y, const double *c, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += y[i] * c[i];
    return s;
}

static double obj_rmsnorm(void *p) {
    op_ctx *o = p;
    lmd_rmsnorm_fwd(o->y, o->rstd, o->x, o->w, o->n, o->dim, 1e-5f);
    return dotc(o->y, o->c, (size_t)o->n * o->dim);
}

TEST(lm_fd_rmsnorm) {
    op_ctx o = {.n = 3, .dim = 7};
    double x[21], w[7], y[21], c[21], rstd[3], dx[21] = {0}, dw[7] = {0};
    o.x = x; o.w = w; o.y = y; o.c = c; o.rstd = rstd;
    fill(x, 21, 1); fill(w, 7, 1); fill(c, 21, 1);
    obj_rmsnorm(&o);
    lmd_rmsnorm_bwd(dx, dw, c, x, w, rstd, 3, 7);
    fd_check(obj_rmsnorm, &o, x, dx, 21, "rmsnorm dx");
    fd_check(obj_rmsnorm, &o, w, dw, 7, "rmsnorm dw");
}

static double obj_matmul(void *p) {
    op_ctx *o = p;
    lmd_matmul_fwd(NULL, o->y, o->x, o->w, o->n, o->in, o->out);
    return dotc(o->y, o->c, (size_t)o->n * o->out);
}

TEST(lm_fd_matmul) {
    op_ctx o = {.n = 5, .in = 11, .out = 6};  /* in not a multiple of 8: the dot's tail */
    double x[55], w[66], y[30], c[30], dx[55] = {0}, dw[66] = {0};
    o.x = x; o.w = w; o.y = y; o.c = c;
    fill(x, 55, 1); fill(w, 66, 1); fill(c, 30, 1);
    obj_matmul(&o);
    lmd_matmul_bwd(NULL, dx, dw, c, x, w, 5, 11, 6);
    fd_check(obj_matmul, &o, x, dx, 55, "matmul dx");
    fd_check(obj_matmul, &o, w, dw, 66, "matmul dW");
}

static double obj_rope(void *p) {
    op_ctx *o = p;
    size_t n = (size_t)o->n * o->H * o->hd;
    memcpy(o->y, o->x, n * sizeof(double));
    lmd_rope(o->y, o->n, o->T, o->H, o->hd, o->cs, o->sn, 1, o->neox);
    return dotc(o->y, o->c, n);
}

TEST(lm_fd_rope) {
    lm_config cfg = {.head_dim = 6};
    for (int i = 0; i < 3; i++) cfg.inv_freq[i] = powf(10000.0f, -(float)(2 * i) / 6);
    op_ctx o = {.n = 8, .T = 4, .H = 2, .hd = 6};  /* two sequences of 4 positions */
    double x[96], y[96], c[96], cs[12], sn[12], dx[96];
    o.x = x; o.y = y; o.c = c; o.cs = cs; o.sn = sn;
    lmd_rope_tables(cs, sn, 4, 6, cfg.inv_freq);
    fill(x, 96, 1); fill(c, 96, 1);
    obj_rope(&o);
    memcpy(dx, c, sizeof dx);
    lmd_rope(dx, 8, 4, 2, 6, cs, sn, -1, 0);
    fd_check(obj_rope, &o, x, dx, 96, "rope dx");
    o.neox = 1; /* pairs (i, i + 3) */
    obj_rope(&o);
    memcpy(dx, c, sizeof dx);
    lmd_rope(dx, 8, 4, 2, 6, cs, sn, -1, 1);
    fd_check(obj_rope, &o, x, dx, 96, "rope dx (neox)");
}

static double obj_attn(void *p) {
    op_ctx *o = p;
    lmd_attn_fwd(NULL, o->y, o->prob, o->x, o->k, o->v, o->B, o->T, o->H, o->Hkv, o->hd);
    return dotc(o->y, o->c, (size_t)o->B * o->T * o->H * o->hd);
}

TEST(lm_fd_attention) {
    enum { B = 2, T = 5, H = 4, Hkv = 2, hd = 3, NQ = B * T * H * hd, NKV = B * T * Hkv * hd };
    op_ctx o = {.B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd};
    static double q[NQ], k[NKV], v[NKV], y[NQ], c[NQ], prob[B * H * T * T], dq[NQ], dk[NKV], dv[NKV];
    o.x = q; o.k = k; o.v = v; o.y = y; o.c = c; o.prob = prob;
    fill(q, NQ, 1); fill(k, NKV, 1); fill(v, NKV, 1); fill(c, NQ, 1);
    obj_attn(&o);
    /* causality: the first position attends to itself only */
    CHECK_NEAR(prob[0], 1.0, 1e-12);
    lmd_attn_bwd(NULL, dq, dk, dv, c, prob, q, k, v, B, T, H, Hkv, hd);
    fd_check(obj_attn, &o, q, dq, NQ, "attention dq");
    fd_check(obj_attn, &o, k, dk, NKV, "attention dk (grouped heads)");
    fd_check(obj_attn, &o, v, dv, NKV, "attention dv (grouped heads)");
}

static double obj_swiglu(void *p) {
    op_ctx *o = p;
    lmd_swiglu_fwd(o->y, o->x, o->w, (size_t)o->n);
    return dotc(o->y, o->c, (size_t)o->n);
}

TEST(lm_fd_swiglu) {
    op_ctx o = {.n = 13};
    double g[13], u[13], y[13], c[13], dg[13], du[13];
    o.x = g; o.w = u; o.y = y; o.c = c;
    fill(g, 13, 4); fill(u, 13, 2); fill(c, 13, 1);
    obj_swiglu(&o);
    lmd_swiglu_bwd(dg, du, c, g, u, 13);
    fd_check(obj_swiglu, &o, g, dg, 13, "swiglu dgate");
    fd_check(obj_swiglu, &o, u, du, 13, "swiglu dup");
}

/* ---- the whole model in double: every parameter's gradient, CE and COLLM, tied/untied ---- */
typedef struct model_ctx {
    lm_config c;
    lm_layout L;
    double *w, *g, *u, *gu;
    struct lmd_acts *a;
    lm_batch b;
} model_ctx;

static double obj_model(void *p) {
    model_ctx *m = p;
    return lmd_run(&m->c, &m->L, m->w, m->g, m->u, m->gu, m->a, &m->b, NULL, 0, NULL) * m->b.scale;
}

static void check_model(int tied, int loss) {
    /* inputs of their own, not whatever the tests run before left in g_rng (a filtered run
     * once drew a case with rel 1.3e-6; 30 seeds of each variant give at most 1.8e-7) */
    g_rng = 777 + 2 * (uint64_t)tied + (uint64_t)loss;
    model_ctx m = {.c = {.n_vocab = 11, .n_embd = 8, .n_layer = 2, .n_head = 2, .n_head_kv = 1,
                         .n_ff = 12, .head_dim = 4, .tied = tied, .rms_eps = 1e-5f}};
    for (int i = 0; i < 2; i++) m.c.inv_freq[i] = powf(10000.0f, -(float)(2 * i) / 4);
    duet_error err = {0};
    REQUIRE(lm_layout_init(&m.L, &m.c, &err) == DUET_OK);
    enum { B = 2, T = 5 };
    size_t n = m.L.n_params;
    m.w = calloc(n, sizeof(double));
    m.g = calloc(n, sizeof(double));
    double u[8], gu[8] = {0};
    m.u = u;
    m.gu = gu;
    fill(u, 8, 1);
    fill(m.w, n, 0.5);
    for (int i = 0; i < m.L.n_t; i++) /* norms near 1, as trained models have */
        if (m.L.t[i].n_out == 1)
            for (int64_t j = 0; j < m.L.t[i].n_in; j++) m.w[m.L.t[i].off + j] += 1;
    int32_t tok[B * T], tgt[B * T];
    float wt[B * T], lpe[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(duet_splitmix64(&g_rng) % 11);
        tgt[i] = (int32_t)(duet_splitmix64(&g_rng) % 11);
        wt[i] = i % T >= 1 ? 1.0f : 0.0f;          /* a masked prompt position per sequence */
        lpe[i] = (float)(-3 * (urand() + 1));
        if (loss == LM_LOSS_WEAK) lpe[i] = i % 3 == 0 ? 1.0f : 0.0f; /* weak labels, both kinds */
    }
    m.b = (lm_batch){.B = B, .T = T, .tokens = tok, .targets = tgt, .weight = wt, .lpe = lpe,
                     .loss = loss, .scale = 1.0 / 8};
    m.a = lmd_acts_alloc(&m.c, B, T);
    REQUIRE(m.a);
    lmd_run(&m.c, &m.L, m.w, m.g, m.u, m.gu, m.a, &m.b, NULL, 1, NULL);
    char what[96];
    for (int i = 0; i < m.L.n_t; i++) {
        const lm_tensor *t = &m.L.t[i];
        snprintf(what, sizeof what, "%s %s (%s)", loss == LM_LOSS_WEAK ? "weak" : loss ? "collm" : "ce",
                 t->name, tied ? "tied" : "untied");
        fd_check(obj_model, &m, m.w + t->off, m.g + t->off, (size_t)(t->n_in * t->n_out), what);
    }
    if (loss != LM_LOSS_CE) fd_check(obj_model, &m, u, gu, 8, "joint head u");
    /* the prompt position carries no loss: its target can change freely */
    double before = obj_model(&m);
    tgt[0] = (tgt[0] + 1) % 11;
    CHECK_NEAR(obj_model(&m), before, 1e-15);
    lmd_acts_release(m.a);
    free(m.w);
    free(m.g);
    lm_layout_free(&m.L);
}

TEST(lm_fd_model_ce_untied) { check_model(0, LM_LOSS_CE); }
TEST(lm_fd_model_ce_tied) { check_model(1, LM_LOSS_CE); }
TEST(lm_fd_model_collm) { check_model(0, LM_LOSS_COLLM); }
TEST(lm_fd_model_weak_tied) { check_model(1, LM_LOSS_WEAK); }

/* The COLLM loss against the formula of docs/method.md section 5, computed by hand for one
 * token. */
TEST(lm_collm_loss_value) {
    lm_config c = {.n_vocab = 3, .n_embd = 2, .n_layer = 1, .n_head = 1, .n_head_kv = 1,
                   .n_ff = 2, .head_dim = 2, .tied = 1, .rms_eps = 1e-5f};
    lm_layout L;
    duet_error err;
    REQUIRE(lm_layout_init(&L, &c, &err) == DUET_OK);
    double *w = calloc(L.n_params, sizeof(double)), *g = calloc(L.n_params, sizeof(double));
    /* zero blocks (attention/FFN add nothing), embedding rows e0 = (1, 0), e1 = (0, 1), e2 = 0,
     * norms 1: the hidden state of token 0 is (sqrt(2)-ish normed (1,0)), logits = E h */
    w[L.tok_embd + 0] = 1;
    w[L.tok_embd + 3] = 1;
    for (int i = 0; i < 2; i++) w[L.output_norm + i] = 1;
    double u[2] = {0.7, -0.2}, gu[2] = {0};
    int32_t tok[1] = {0}, tgt[1] = {1};
    float wt[1] = {1}, lpe[1] = {-0.5f};
    lm_batch b = {.B = 1, .T = 1, .tokens = tok, .targets = tgt, .weight = wt, .lpe = lpe,
                  .loss = LM_LOSS_COLLM, .scale = 1};
    struct lmd_acts *a = lmd_acts_alloc(&c, 1, 1);
    REQUIRE(a);
    double got = lmd_run(&c, &L, w, g, u, gu, a, &b, NULL, 0, NULL);
    double h0 = 1 / sqrt(0.5 + 1e-5);   /* rmsnorm of (1, 0) with eps (float eps as stored) */
    h0 = 1 / sqrt((double)(float)0.5 + (double)1e-5f);
    double z0 = h0, z1 = 0, z2 = 0;     /* logits: rows e0, e1, e2 dotted with (h0, 0) */
    double lpb = z1 - log(exp(z0) + exp(z1) + exp(z2));
    double s = 0.7 * h0;
    double ls = -log1p(exp(-s)), lns = -log1p(exp(s));
    double want = -log(exp(lns + lpb) + exp(ls + (double)-0.5f));
    CHECK_NEAR(got, want, 1e-6);
    lmd_acts_release(a);
    free(w);
    free(g);
    lm_layout_free(&L);
}

/* The hand-computed cases' model: vocabulary 3, n_embd 2, one layer whose matrices are zero
 * (attention and FFN add nothing), unit norms, embeddings (1, 1), (1, -1), (-1, -1) and
 * output rows (0, 0), (0.5, 0.5), (1, -1). w and g are the caller's to free. */
static int hand_model(lm_config *c, lm_layout *L, double **w, double **g) {
    *c = (lm_config){.n_vocab = 3, .n_embd = 2, .n_layer = 1, .n_head = 1, .n_head_kv = 1,
                     .n_ff = 2, .head_dim = 2, .tied = 0, .rms_eps = 0};
    duet_error err;
    if (lm_layout_init(L, c, &err) != DUET_OK) return 0;
    *w = calloc(L->n_params, sizeof(double));
    *g = calloc(L->n_params, sizeof(double));
    if (!*w || !*g) return 0;
    const double emb[6] = {1, 1, 1, -1, -1, -1}, out[6] = {0, 0, 0.5, 0.5, 1, -1};
    memcpy(*w + L->tok_embd, emb, sizeof emb);
    memcpy(*w + L->output, out, sizeof out);
    for (int i = 0; i < 2; i++) {
        (*w)[L->output_norm + i] = 1;
        (*w)[L->layer[0].attn_norm + i] = 1;
        (*w)[L->layer[0].ffn_norm + i] = 1;
    }
    return 1;
}

/* The joint loss, its d/ds, d/dlogits and d/du on three positions computed by hand.
 * The model passes its embedding through: blocks of zeros add nothing, rms_eps = 0 and norm
 * weights 1, so an embedding row with mean square 1 is its own final hidden state h. Rows:
 * token 0 (1, 1), token 1 (1, -1), token 2 (-1, -1). Untied output rows (0, 0), (0.5, 0.5),
 * (1, -1) give logits (0, 1, 0), (0, 0, 2), (0, -1, 0); u = (0.25, 0.75) gives s = 1, -0.5, -1.
 * Inputs 0, 1, 2 with targets 0, 1, 2 and expert log-probs -0.25, -2, -0.5; scale 1/3.
 *   pos 0: lpb = -log(2 + e) = -1.5514447139320511, p_b = 0.21194155761708545,
 *          p_e = e^-0.25 = 0.77880078307140487, sig(1) = 0.73105857863000488
 *          A = sig(-1) p_b = 0.056999863752909676, C = sig(1) p_e = 0.56934899350811601
 *          loss = -log(A + C) = 0.46784778313516554 (swapped roles: 1.0095209967763669)
 *          q = C / (A + C) = 0.90899661890952336, dL/ds = sig(1) - q = -0.17793804027951848
 *          softmax (0.21194155761708545, 0.57611688476582911, 0.21194155761708545);
 *          dL/dz = (1 - q)(softmax - onehot(0)) = (-0.071715982753739800,
 *          0.052428584417002961, 0.019287398336736838)
 *   pos 1: lpb = -log(2 + e^2) = -2.2395447662218845, p_b = 0.10650697891920075,
 *          p_e = e^-2 = 0.13533528323661269, sig(-0.5) = 0.37754066879814544
 *          A = 0.066296262866375722, C = 0.051094573345137196, loss = 2.1422464307546706
 *          q = 0.43525180494562469, dL/ds = -0.057711136147479254
 *          softmax (0.10650697891920075, 0.10650697891920075, 0.78698604216159850);
 *          dL/dz = (0.060149624105313025, -0.50459857094906229, 0.44444894684374926)
 *   pos 2: lpb = -log(2 + e^-1) = -0.86199480405825108, p_b = 0.42231879825151820,
 *          p_e = e^-0.5 = 0.60653065971263342, sig(-1) = 0.26894142136999512
 *          A = 0.30873978037848668, C = 0.16312121772759647, loss = 0.75107083230686755
 *          q = 0.34569760667297995, dL/ds = -0.076756185302984827
 *          softmax (0.42231879825151820, 0.15536240349696361, 0.42231879825151820);
 *          dL/dz = (0.27632420044295929, 0.10165399244110148, -0.37797819288406077)
 *   sum of losses 3.3611650461967037 (lmd_run returns it unscaled); the gradients carry the
 *   scale 1/3: d/du = sum_t dL/ds_t h_t / 3 = (-0.052964330374670970, -0.014490239609684801) */
TEST(lm_collm_loss_and_grads_hand_computed) {
    lm_config c;
    lm_layout L;
    double *w, *g;
    REQUIRE(hand_model(&c, &L, &w, &g));
    double u[2] = {0.25, 0.75}, gu[2] = {0};
    int32_t tok[3] = {0, 1, 2}, tgt[3] = {0, 1, 2};
    float wt[3] = {1, 1, 1}, lpe[3] = {-0.25f, -2.0f, -0.5f};
    lm_batch b = {.B = 1, .T = 3, .tokens = tok, .targets = tgt, .weight = wt, .lpe = lpe,
                  .loss = LM_LOSS_COLLM, .scale = 1.0 / 3};
    struct lmd_acts *a = lmd_acts_alloc(&c, 1, 3);
    REQUIRE(a);
    double got = lmd_run(&c, &L, w, g, u, gu, a, &b, NULL, 1, NULL);
    CHECK_NEAR(got, 3.3611650461967037, 1e-9 * 3.4);
    static const double loss[3] = {0.46784778313516554, 2.1422464307546706, 0.75107083230686755};
    static const double ds[3] = {-0.17793804027951848, -0.057711136147479254, -0.076756185302984827};
    static const double dz[3][3] = {
        {-0.071715982753739800, 0.052428584417002961, 0.019287398336736838},
        {0.060149624105313025, -0.50459857094906229, 0.44444894684374926},
        {0.27632420044295929, 0.10165399244110148, -0.37797819288406077}};
    for (int t = 0; t < 3; t++) {
        CHECKF(fabs(a->loss[t] - loss[t]) <= 1e-9 * loss[t], "position %d: loss %.17g, want %.17g",
               t, a->loss[t], loss[t]);
        CHECKF(fabs(a->ds[t] - ds[t] / 3) <= 1e-9 * fabs(ds[t] / 3), "position %d: dL/ds %.17g, "
               "want %.17g / 3", t, a->ds[t], ds[t]);
        for (int v = 0; v < 3; v++)
            CHECKF(fabs(a->logits[t * 3 + v] - dz[t][v] / 3) <= 1e-9 * fabs(dz[t][v] / 3),
                   "position %d logit %d: dL/dz %.17g, want %.17g / 3", t, v, a->logits[t * 3 + v],
                   dz[t][v]);
    }
    CHECK_NEAR(gu[0], -0.052964330374670970, 1e-9 * 0.053);
    CHECK_NEAR(gu[1], -0.014490239609684801, 1e-9 * 0.0145);
    lmd_acts_release(a);
    free(w);
    free(g);
    lm_layout_free(&L);
}

/* The weak-supervision loss (lm.h, LM_LOSS_WEAK) on two positions by hand, with the model of
 * the test above: inputs 0, 1 with targets 0, 1, logits (0, 1, 0) and (0, 0, 2), deferral
 * logits s = 1 and -0.5, labels z = 1 and 0, scale 1/2. The softmax runs over the 3 logits
 * and s (4 classes); BCE(s, z) = -(5 z log sig(s) + (1 - z) log sig(-s)).
 *   pos 0: denominator 1 + e + 1 + e^1 = 2 + 2e = 7.4365636569180893
 *          CE = log(2 + 2e) - 0 = 2.006408868078168
 *          BCE = 5 log(1 + e^-1) = 5 * 0.31326168751822283 = 1.566308437591114
 *          loss = 2/3 * 2.006408868078168 + 1/3 * 1.566308437591114 = 1.8597087245824833
 *          p_s = e / (2 + 2e) = 0.3655292893150025, sig(1) = 0.7310585786300049
 *          dL/ds = 2/3 * 0.3655292893150025 + 1/3 * 5 * (0.7310585786300049 - 1)
 *                = -0.20454950940665689
 *          dL/dz = 2/3 (softmax - onehot(0)) = 2/3 (1/7.43656 - 1, e/7.43656, 1/7.43656)
 *                = (-0.57701952621000152, 0.24368619287666832, 0.089647140456665053)
 *   pos 1: denominator 1 + 1 + e^2 + e^-0.5 = 9.9955867586432845
 *          CE = log(9.9955867586432845) - 0 = 2.3021436714462165
 *          BCE = log(1 + e^-0.5) = 0.47407698418010663
 *          loss = 2/3 * 2.3021436714462165 + 1/3 * 0.47407698418010663 = 1.6927881090241796
 *          p_s = e^-0.5 / 9.99558 = 0.060679845451609961, sig(-0.5) = 0.37754066879814544
 *          dL/ds = 2/3 * 0.060679845451609961 + 1/3 * 0.37754066879814544 = 0.1663001199004551
 *          dL/dz = 2/3 (1/9.99558, 1/9.99558 - 1, e^2/9.99558)
 *                = (0.066696101265910496, -0.59997056540075611, 0.4928212338337723)
 *   sum 3.5524968336066629 (unscaled); d/du = (dL/ds_0 h_0 + dL/ds_1 h_1) / 2 with h_0 = (1, 1),
 *   h_1 = (1, -1): (-0.019124694753100899, -0.18542481465355598) */
TEST(lm_weak_loss_and_grads_hand_computed) {
    lm_config c;
    lm_layout L;
    double *w, *g;
    REQUIRE(hand_model(&c, &L, &w, &g));
    double u[2] = {0.25, 0.75}, gu[2] = {0};
    int32_t tok[2] = {0, 1}, tgt[2] = {0, 1};
    float wt[2] = {1, 1}, lab[2] = {1, 0};
    lm_batch b = {.B = 1, .T = 2, .tokens = tok, .targets = tgt, .weight = wt, .lpe = lab,
                  .loss = LM_LOSS_WEAK, .scale = 0.5};
    struct lmd_acts *a = lmd_acts_alloc(&c, 1, 2);
    REQUIRE(a);
    double got = lmd_run(&c, &L, w, g, u, gu, a, &b, NULL, 1, NULL);
    CHECK_NEAR(got, 3.5524968336066629, 1e-9 * 3.6);
    static const double loss[2] = {1.8597087245824833, 1.6927881090241796};
    static const double ds[2] = {-0.20454950940665689, 0.1663001199004551};
    static const double dz[2][3] = {
        {-0.57701952621000152, 0.24368619287666832, 0.089647140456665053},
        {0.066696101265910496, -0.59997056540075611, 0.4928212338337723}};
    for (int t = 0; t < 2; t++) {
        CHECKF(fabs(a->loss[t] - loss[t]) <= 1e-9 * loss[t], "position %d: loss %.17g, want %.17g",
               t, a->loss[t], loss[t]);
        CHECKF(fabs(a->ds[t] - ds[t] / 2) <= 1e-9 * fabs(ds[t]), "position %d: dL/ds %.17g, "
               "want %.17g / 2", t, a->ds[t], ds[t]);
        for (int v = 0; v < 3; v++)
            CHECKF(fabs(a->logits[t * 3 + v] - dz[t][v] / 2) <= 1e-9 * fabs(dz[t][v]),
                   "position %d logit %d: dL/dz %.17g, want %.17g / 2", t, v, a->logits[t * 3 + v],
                   dz[t][v]);
    }
    CHECK_NEAR(gu[0], -0.019124694753100899, 1e-9 * 0.02);
    CHECK_NEAR(gu[1], -0.18542481465355598, 1e-9 * 0.19);
    lmd_acts_release(a);
    free(w);
    free(g);
    lm_layout_free(&L);
}

/* ---- the float trainer ------------------------------------------------------------------- */
TEST(lm_logits_match_engine) {
    /* random F32 models untied and tied, and a trained one (stories260K, GQA) when present */
    const char *paths[3] = {fixture_random(0 /* F32 */, 7, 0), fixture_random(0, 7, 1),
                            fixture_llama2c("stories260K")};
    for (int tied = 0; tied < 3; tied++) {
        const char *path = paths[tied];
        if (tied == 2 && !path) break;
        REQUIRE(path);
        lm_model m;
        duet_error err = {0};
        REQUIRE(lm_model_load(path, 2, &m, &err) == DUET_OK);
        enum { T = 24 };
        int32_t tok[T], tgt[T];
        for (int i = 0; i < T; i++) { tok[i] = (int32_t)(3 + (i * 37) % 500); tgt[i] = tok[i]; }
        if (tied == 2) { /* a real story's tokens */
            int n = duet_tokenize(m.src, "Once upon a time, there was a little girl named Lily.", 53,
                                  1, 0, tok, T, &err);
            REQUIRE(n > 8 && n <= T);
            for (int i = n; i < T; i++) tok[i] = tok[i - n];
        }
        tok[0] = 1;
        lm_acts *a;
        REQUIRE(lm_acts_new(&m, 1, T, &a, &err) == DUET_OK);
        int V = m.c.n_vocab;
        float *logits = malloc((size_t)T * V * sizeof(float));
        lm_batch b = {.B = 1, .T = T, .tokens = tok, .targets = tgt, .scale = 1};
        lm_step(&m, a, &b, 0, logits);
        duet_model *dm = fixture_load(path);
        duet_session *s = NULL;
        duet_session_params sp = {.n_ctx = 64};
        REQUIRE(dm && duet_session_new(dm, &sp, &s, &err) == DUET_OK);
        REQUIRE(duet_session_eval(s, tok, T, 1, &err) == DUET_OK);
        double worst = 0;
        for (int t = 0; t < T; t++) {
            const float *ref = duet_session_logits(s, t);
            for (int v = 0; v < V; v++) worst = fmax(worst, fabs((double)ref[v] - logits[(size_t)t * V + v]));
        }
        CHECKF(worst < 1e-4, "%s: max |trainer - engine| logit = %g", path, worst);
        /* the hidden state the head reads is the engine's too */
        double wh = 0;
        for (int i = 0; i < m.c.n_embd; i++)
            wh = fmax(wh, fabs((double)duet_session_hidden(s, T - 1)[i] -
                               lm_acts_hidden(a)[(size_t)(T - 1) * m.c.n_embd + i]));
        CHECKF(wh < 1e-4, "hidden differs by %g", wh);
        duet_session_free(s);
        duet_model_free(dm);
        free(logits);
        lm_acts_free(a);
        lm_model_free(&m);
    }
}

/* One step's gradients on 1 and on 3 threads: the same bits (make models relies on it). */
/* The public handle of the trainer: duet_lm_load wraps the by-value loader (the same F32
 * weights element by element), its source is the loaded GGUF (the fixture's shape: n_embd
 * 128, n_vocab 600), and a missing file leaves *out NULL with a message naming it. */
TEST(lm_public_handle_load_and_source) {
    const char *path = fixture_random(0 /* F32 */, 7, 0);
    REQUIRE(path);
    duet_error err = {0};
    duet_lm *h = NULL;
    const char *missing = test_path(test_tmpdir(), "no-such-model.gguf");
    CHECK(duet_lm_load(missing, 1, &h, &err) < 0);
    CHECK(h == NULL);
    CHECKF(strstr(err.msg, "no-such-model.gguf"), "message: %s", err.msg);
    duet_lm_free(NULL); /* accepted, as every free */
    REQUIRE(duet_lm_load(path, 1, &h, &err) == DUET_OK);
    const duet_hparams *hp = duet_model_hparams(duet_lm_source(h));
    CHECK_EQ_INT(hp->n_embd, 128);
    CHECK_EQ_INT(hp->n_vocab, 600);
    lm_model m;
    REQUIRE(lm_model_load(path, 1, &m, &err) == DUET_OK);
    CHECK(h->L.n_params == m.L.n_params && h->L.n_params > 0);
    CHECK(!memcmp(h->w, m.w, m.L.n_params * sizeof(float)));
    lm_model_free(&m);
    duet_lm_free(h);
}

TEST(lm_grads_independent_of_threads) {
    const char *path = fixture_random(0, 9, 0);
    REQUIRE(path);
    lm_model m1, m3;
    duet_error err = {0};
    REQUIRE(lm_model_load(path, 1, &m1, &err) == DUET_OK);
    REQUIRE(lm_model_load(path, 3, &m3, &err) == DUET_OK);
    enum { B = 2, T = 16 };
    int32_t tok[B * T], tgt[B * T];
    float wt[B * T], lpe[B * T];
    uint64_t r = 5;
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(duet_splitmix64(&r) % 600);
        tgt[i] = (int32_t)(duet_splitmix64(&r) % 600);
        wt[i] = 1;
        lpe[i] = -1;
    }
    lm_model *ms[2] = {&m1, &m3};
    float u[128];
    for (int i = 0; i < 128; i++) u[i] = (float)((i % 7) - 3) * 0.01f;
    for (int k = 0; k < 2; k++) {
        ms[k]->u = duet_aalloc(sizeof u);
        ms[k]->gu = duet_aalloc(sizeof u);
        memcpy(ms[k]->u, u, sizeof u);
        lm_acts *a;
        REQUIRE(lm_acts_new(ms[k], B, T, &a, &err) == DUET_OK);
        lm_batch b = {.B = B, .T = T, .tokens = tok, .targets = tgt, .weight = wt, .lpe = lpe,
                      .loss = LM_LOSS_COLLM, .scale = 1.0 / (B * T)};
        lm_zero_grad(ms[k]);
        lm_step(ms[k], a, &b, 1, NULL);
        lm_acts_free(a);
    }
    CHECK(memcmp(m1.g, m3.g, m1.L.n_params * sizeof(float)) == 0);
    CHECK(memcmp(m1.gu, m3.gu, sizeof u) == 0);
    lm_model_free(&m1);
    lm_model_free(&m3);
}

/* Overfit one short sequence; then the checkpoint reloads with the same weights and the
 * optimizer sidecar round-trips. */
TEST(lm_train_overfits_and_saves) {
    const char *path = fixture_random(0, 11, 1);
    REQUIRE(path);
    lm_model m;
    duet_error err = {0};
    REQUIRE(lm_model_load(path, 2, &m, &err) == DUET_OK);
    enum { T = 12 };
    int32_t tok[T + 1];
    for (int i = 0; i <= T; i++) tok[i] = (int32_t)(3 + (i * 13) % 90);
    lm_acts *a;
    REQUIRE(lm_acts_new(&m, 1, T, &a, &err) == DUET_OK);
    lm_adamw o;
    REQUIRE(lm_adamw_init(&o, m.L.n_params, &err) == DUET_OK);
    lm_batch b = {.B = 1, .T = T, .tokens = tok, .targets = tok + 1, .scale = 1.0 / T};
    double first = 0, last = 0;
    for (int s = 1; s <= 30; s++) {
        lm_zero_grad(&m);
        last = lm_step(&m, a, &b, 1, NULL) / T;
        if (s == 1) first = last;
        lm_adamw_update(&o, &m, lm_lr_at(3e-3, s, 30, 3, 1, 0.1));
    }
    CHECKF(last < 0.3 * first, "loss %g -> %g", first, last);
    const char *ck = test_path(test_tmpdir(), "lm-ckpt.gguf");
    REQUIRE(lm_model_save(&m, ck, "lm-test", &err) == DUET_OK);
    lm_model m2;
    REQUIRE(lm_model_load(ck, 2, &m2, &err) == DUET_OK);
    CHECK(m2.L.n_params == m.L.n_params && memcmp(m2.w, m.w, m.L.n_params * 4) == 0);
    CHECK_STR(duet_model_hparams(m2.src)->name, "lm-test");
    const char *sc = test_path(test_tmpdir(), "lm-ckpt.optim");
    REQUIRE(lm_adamw_save(&o, 77, sc, &err) == DUET_OK);
    lm_adamw o2;
    uint64_t rng = 0;
    REQUIRE(lm_adamw_init(&o2, m.L.n_params, &err) == DUET_OK);
    REQUIRE(lm_adamw_load(&o2, &rng, sc, &err) == DUET_OK);
    CHECK(rng == 77 && o2.step == 30 && memcmp(o2.v, o.v, o.n * 4) == 0);
    lm_adamw o3;
    REQUIRE(lm_adamw_init(&o3, 5, &err) == DUET_OK);
    CHECK(lm_adamw_load(&o3, &rng, sc, &err) == DUET_ERR_FORMAT && strstr(err.msg, "parameters"));
    lm_adamw_free(&o);
    lm_adamw_free(&o2);
    lm_adamw_free(&o3);
    lm_acts_free(a);
    lm_model_free(&m);
    lm_model_free(&m2);
}

/* Schedule: warm-up ramps linearly, cosine reaches min_frac at the end, linear halfway is half. */
TEST(lm_lr_schedule) {
    CHECK_NEAR(lm_lr_at(1.0, 5, 100, 10, 1, 0.1), 0.5, 1e-12);
    CHECK_NEAR(lm_lr_at(1.0, 100, 100, 10, 1, 0.1), 0.1, 1e-12);
    CHECK_NEAR(lm_lr_at(1.0, 55, 100, 10, 0, 0.0), 0.5, 1e-12);
    CHECK_NEAR(lm_lr_at(1.0, 10, 100, 10, 1, 0.0), 1.0, 1e-12);
}

/* ---- training runs ---------------------------------------------------------------------- */

static const char *write_jsonl(const char *name, int n, int offset) {
    const char *path = test_path(test_tmpdir(), name);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    for (int i = 0; i < n; i++) {
        int a = (i + offset) % 10, b = (i * 7 + offset) % 10;
        fprintf(f, "{\"prompt\": \"%d plus %d\", \"response\": \"is %d, so %d\"}\n", a, b, a + b, a + b);
    }
    fclose(f);
    return path;
}

static int weights_equal(const char *a, const char *b) {
    lm_model x, y;
    duet_error err;
    if (lm_model_load(a, 1, &x, &err) || lm_model_load(b, 1, &y, &err)) return 0;
    int eq = x.L.n_params == y.L.n_params && !memcmp(x.w, y.w, x.L.n_params * sizeof(float));
    lm_model_free(&x);
    lm_model_free(&y);
    return eq;
}

/* SFT on JSONL: held-out loss goes down; a run stopped half-way and resumed ends with the
 * same bits as the uninterrupted run (data order and optimizer state restored). */
TEST(lm_train_sft_and_resume) {
    const char *init = fixture_random(0, 21, 1);
    const char *data = write_jsonl("sft.jsonl", 60, 0);
    REQUIRE(init && data);
    duet_error err = {0};
    duet_lm_train_params p = {.data_path = data, .seq_len = 24, .batch = 4, .accum = 2, .steps = 12,
                         .lr = 3e-3, .seed = 3, .val_frac = 0.2, .eval_every = 4};
    lm_model m;
    duet_lm_train_result r;
    p.out_path = test_path(test_tmpdir(), "sft-a.gguf");
    REQUIRE(lm_model_load(init, 2, &m, &err) == DUET_OK);
    CHECKF(duet_lm_train(&m, &p, &r, &err) == DUET_OK, "%s", err.msg);
    lm_model_free(&m);
    CHECKF(r.last_val < r.first_val - 0.5, "held-out %g -> %g", r.first_val, r.last_val);
    CHECK(r.n_val_seq > 0 && r.n_train_seq > r.n_val_seq);
    /* the same run in two halves */
    p.out_path = test_path(test_tmpdir(), "sft-b.gguf");
    p.stop_at = 5;
    REQUIRE(lm_model_load(init, 1, &m, &err) == DUET_OK); /* other thread count on purpose */
    CHECK(duet_lm_train(&m, &p, &r, &err) == DUET_LM_STOPPED);
    lm_model_free(&m);
    p.stop_at = 0;
    p.resume = 1;
    REQUIRE(lm_model_load(p.out_path, 2, &m, &err) == DUET_OK);
    CHECKF(duet_lm_train(&m, &p, &r, &err) == DUET_OK, "%s", err.msg);
    lm_model_free(&m);
    CHECK(weights_equal(test_path(test_tmpdir(), "sft-a.gguf"), p.out_path));
}

/* The head written beside a trained base loads on that base, and its u moved from u0. */
static void check_trained_head(const char *out_path, const char *head_out, const float *u0, size_t bytes) {
    duet_error err = {0};
    duet_model *tm = fixture_load(out_path);
    duet_head *h = NULL;
    CHECK(tm != NULL);
    if (!tm) return;
    CHECKF(duet_head_load(head_out, tm, &h, &err) == DUET_OK, "%s", err.msg);
    CHECK(h && memcmp(duet_head_u(h), u0, bytes) != 0);
    duet_head_free(h);
    duet_model_free(tm);
}

/* Joint training: expert scores made by the scorer; a wrong context is refused by name. */
TEST(lm_train_collm_joint) {
    const char *base = fixture_random(0, 31, 1), *expert = fixture_random(0, 32, 0);
    const char *data = write_jsonl("collm.jsonl", 40, 3);
    REQUIRE(base && expert && data);
    duet_error err = {0};
    duet_model *bm = fixture_load(base), *em = fixture_load(expert);
    REQUIRE(bm && em);
    duet_dataset d;
    REQUIRE(duet_dataset_load(data, NULL, &d, &err) == DUET_OK);
    const char *ep = test_path(test_tmpdir(), "collm-expert.dsf"),
               *bad = test_path(test_tmpdir(), "collm-expert-bad.dsf");
    duet_scores_params sp = {.n_ctx = 25, .no_hidden = 1, .ids_model = bm};
    REQUIRE(duet_scores_compute(em, &d, &sp, ep, NULL, &err) == DUET_OK);
    sp.n_ctx = 14; /* shorter context: sequences cut differently */
    REQUIRE(duet_scores_compute(em, &d, &sp, bad, NULL, &err) == DUET_OK);
    duet_dataset_free(&d);
    duet_scores *E, *Ebad;
    REQUIRE(duet_scores_open(ep, &E, &err) == DUET_OK && duet_scores_open(bad, &Ebad, &err) == DUET_OK);
    float u[128];
    for (int i = 0; i < 128; i++) u[i] = 0.01f * (float)((i % 5) - 2);
    duet_lm_train_params p = {.data_path = data, .seq_len = 24, .batch = 4, .steps = 8, .lr = 2e-3,
                         .val_frac = 0.2, .expert = Ebad, .u_init = u,
                         .out_path = test_path(test_tmpdir(), "collm.gguf"),
                         .head_out = test_path(test_tmpdir(), "collm.head.gguf"), .name = "joint"};
    lm_model m;
    duet_lm_train_result r;
    REQUIRE(lm_model_load(base, 2, &m, &err) == DUET_OK);
    int brc = duet_lm_train(&m, &p, &r, &err);
    CHECKF(brc == DUET_ERR_ARG && strstr(err.msg, "collm-expert-bad.dsf"), "rc %d: %s", brc, err.msg);
    p.expert = E;
    CHECKF(duet_lm_train(&m, &p, &r, &err) == DUET_OK, "%s", err.msg);
    CHECKF(r.last_val < r.first_val, "held-out marginal NLL %g -> %g", r.first_val, r.last_val);
    lm_model_free(&m);
    check_trained_head(p.out_path, p.head_out, u, sizeof u);
    duet_scores_close(E);
    duet_scores_close(Ebad);
    duet_model_free(bm);
    duet_model_free(em);
}

/* The official weak-supervision objective end to end: labels from the base's and the expert's
 * score files of the data, a base file of other data refused, the held-out loss falls and u
 * moves from its start. */
TEST(lm_train_collm_weak_supervision) {
    const char *base = fixture_random(0, 31, 1), *expert = fixture_random(0, 32, 0);
    const char *data = write_jsonl("weak.jsonl", 40, 3), *other = write_jsonl("weak-other.jsonl", 30, 3);
    REQUIRE(base && expert && data && other);
    duet_error err = {0};
    duet_model *bm = fixture_load(base), *em = fixture_load(expert);
    REQUIRE(bm && em);
    duet_dataset d, d2;
    REQUIRE(duet_dataset_load(data, NULL, &d, &err) == DUET_OK);
    REQUIRE(duet_dataset_load(other, NULL, &d2, &err) == DUET_OK);
    const char *ep = test_path(test_tmpdir(), "weak-expert.dsf"), *bp = test_path(test_tmpdir(), "weak-base.dsf"),
               *bad = test_path(test_tmpdir(), "weak-base-other.dsf");
    duet_scores_params sp = {.n_ctx = 25, .no_hidden = 1, .ids_model = bm};
    REQUIRE(duet_scores_compute(em, &d, &sp, ep, NULL, &err) == DUET_OK);
    sp.ids_model = NULL;
    REQUIRE(duet_scores_compute(bm, &d, &sp, bp, NULL, &err) == DUET_OK);
    REQUIRE(duet_scores_compute(bm, &d2, &sp, bad, NULL, &err) == DUET_OK);
    duet_dataset_free(&d);
    duet_dataset_free(&d2);
    duet_scores *E, *B, *Bbad;
    REQUIRE(duet_scores_open(ep, &E, &err) == DUET_OK && duet_scores_open(bp, &B, &err) == DUET_OK &&
            duet_scores_open(bad, &Bbad, &err) == DUET_OK);
    float u[128];
    for (int i = 0; i < 128; i++) u[i] = 0.01f * (float)((i % 5) - 2);
    duet_lm_train_params p = {.data_path = data, .seq_len = 24, .batch = 4, .steps = 8, .lr = 2e-3,
                              .val_frac = 0.2, .expert = E, .weak_base = Bbad, .u_init = u,
                              .out_path = test_path(test_tmpdir(), "weak.gguf"),
                              .head_out = test_path(test_tmpdir(), "weak.head.gguf"), .name = "weak"};
    lm_model m;
    duet_lm_train_result r;
    REQUIRE(lm_model_load(base, 2, &m, &err) == DUET_OK);
    int brc = duet_lm_train(&m, &p, &r, &err);
    CHECKF(brc == DUET_ERR_ARG && strstr(err.msg, "weak-base-other.dsf"), "rc %d: %s", brc, err.msg);
    p.weak_base = B;
    CHECKF(duet_lm_train(&m, &p, &r, &err) == DUET_OK, "%s", err.msg);
    CHECKF(r.last_val < r.first_val, "held-out weak loss %g -> %g", r.first_val, r.last_val);
    lm_model_free(&m);
    check_trained_head(p.out_path, p.head_out, u, sizeof u);
    /* the command line: u starts at the mean of the base's output rows (a learning rate of
     * 1e-9 over two steps moves it by at most about 1e-8), and the labels need the base's
     * scores */
    if (getenv("DUET_BIN")) {
        char args[4000], msg[2048], dp[600], out[600], hout[600]; /* test_path reuses its buffers */
        snprintf(dp, sizeof dp, "%s", data);
        snprintf(out, sizeof out, "%s", test_path(test_tmpdir(), "weak-cli.gguf"));
        snprintf(hout, sizeof hout, "%s", test_path(test_tmpdir(), "weak-cli.head.gguf"));
        snprintf(args, sizeof args, "train collm --weak-supervision -m '%s' -d '%s' --base-scores '%s' "
                 "--expert-scores '%s' -o '%s' --head-out '%s' --seq-len 24 --batch 4 --steps 2 --lr 1e-9 "
                 "--val-frac 0.2 -t 2 --quiet", base, dp, bp, ep, out, hout);
        CHECKF(fixture_run_cli(args, "weak-cli", msg, sizeof msg) == 0, "%s", msg);
        duet_model *cm = fixture_load(out);
        duet_head *ch = NULL, *mean = NULL;
        REQUIRE(cm);
        int lrc = duet_head_load(hout, cm, &ch, &err);
        CHECKF(!lrc, "%s", err.msg);
        REQUIRE(!lrc && !duet_head_init(bm, &mean, &err));
        double worst = 0;
        for (int i = 0; i < 128; i++) worst = fmax(worst, fabs(duet_head_u(ch)[i] - duet_head_u(mean)[i]));
        CHECKF(worst < 1e-6, "u differs from the mean output row by %g", worst);
        duet_head_free(ch);
        duet_head_free(mean);
        duet_model_free(cm);
        snprintf(args, sizeof args, "train collm --weak-supervision -m '%s' -d '%s' --expert-scores '%s' "
                 "-o '%s' --head-out '%s'", base, dp, ep, out, hout);
        CHECKF(fixture_run_cli(args, "weak-cli", msg, sizeof msg) == 2 && strstr(msg, "--base-scores"), "%s", msg);
    }
    duet_scores_close(E);
    duet_scores_close(B);
    duet_scores_close(Bbad);
    duet_model_free(bm);
    duet_model_free(em);
}

/* Two AdamW steps by hand on three parameters: a 2-element matrix (weight decay) and a
 * 1-element norm vector (no decay); lr 0.1, weight decay 0.1, betas 0.9 / 0.95, eps 1e-8,
 * clip 1. The first gradient (3, -4, 0) has norm 5 and is clipped to (0.6, -0.8, 0); the
 * second (0.3, -0.4, 0) has norm 0.5 and is not, so a wrong clip factor changes the moments'
 * mix (Adam alone is blind to a common scale).
 *   step 1: m = 0.1 g = (.06, -.08, 0), v = 0.05 g^2 = (.018, .032, 0); bias corrections
 *           1 - .9 = .1 and 1 - .95 = .05 give m^ = (.6, -.8), v^ = (.36, .64), m^/sqrt(v^) = +-1:
 *           w0 = 1 - .1 (1 + .1 * 1) = .89, w1 = -2 - .1 (-1 + .1 * -2) = -1.88, w2 = .5 (no decay)
 *   step 2: m = (.084, -.112), v = (.0216, .0384); corrections .19, .0975:
 *           w0 = .89 - .1 (.084/.19 / sqrt(.0216/.0975) + .1 * .89) = .787170696816
 *           w1 = -1.767270695905, w2 = .5
 * (to 1e-12 by double arithmetic outside duet; the optimizer keeps its moments in float). */
TEST(lm_adamw_two_steps_by_hand) {
    lm_tensor t[2] = {{"blk.0.attn_q.weight", 2, 1, 0, 1}, {"blk.0.attn_norm.weight", 1, 1, 2, 0}};
    float w[3] = {1.0f, -2.0f, 0.5f}, g[3];
    lm_model m = {0};
    m.L.t = t;
    m.L.n_t = 2;
    m.L.n_params = 3;
    m.w = w;
    m.g = g;
    lm_adamw o;
    duet_error err = {0};
    REQUIRE(!lm_adamw_init(&o, 3, &err));
    o.weight_decay = 0.1;
    o.clip = 1.0;
    static const float grads[2][3] = {{3, -4, 0}, {0.3f, -0.4f, 0}};
    static const double norms[2] = {5, 0.5};
    static const double want[2][3] = {{0.890000001667, -1.880000001250, 0.5},
                                      {0.787170696816, -1.767270695905, 0.5}};
    for (int s = 0; s < 2; s++) {
        memcpy(g, grads[s], sizeof g);
        CHECK_NEAR(lm_adamw_update(&o, &m, 0.1), norms[s], 1e-6);
        for (int i = 0; i < 3; i++) CHECK_NEAR(w[i], want[s][i], 2e-6);
    }
    lm_adamw_free(&o);
}
