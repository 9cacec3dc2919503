/*
 * test_attn.c: the attention kernel (src/engine/attn.h) at every level against a double-precision
 * softmax written here (an independent oracle), the kernel's invariant that a head's output
 * does not depend on which heads share the call, and the forward pass giving the same bits
 * whatever the thread count.
 */
#include <stdlib.h>

#include "engine/attn.h"
#include "base/common.h"
#include "duet.h"
#include "fixtures.h"
#include "engine/kernels.h"
#include "format/quant.h"
#include "test.h"

static uint64_t g_seed = 99;
static float urand(void) { return (float)((duet_splitmix64(&g_seed) >> 40) * 0x1.0p-24 * 2 - 1); }

/* out[h] of the oracle: scores, soft cap, softmax and the weighted sum, all in double, with K
 * from plain rows (krow: position p's at krow + p*head_dim) rather than the kernel's blocks. */
static void oracle(const attn_args *a, const float *krow, double *out) {
    int hd = a->head_dim, n = a->p1 - a->p0;
    double *s = malloc(sizeof(double) * (size_t)n);
    for (int h = 0; h < a->n_q; h++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < n; j++) {
            const float *k = krow + (size_t)(a->p0 + j) * hd;
            double d = 0;
            for (int i = 0; i < hd; i++) d += (double)a->q[(size_t)h * hd + i] * k[i];
            d *= a->scale;
            if (a->softcap > 0) d = a->softcap * tanh(d / a->softcap);
            s[j] = d;
            mx = fmax(mx, d);
        }
        for (int j = 0; j < n; j++) sum += s[j] = exp(s[j] - mx);
        for (int i = 0; i < hd; i++) {
            double o = 0;
            for (int j = 0; j < n; j++) o += s[j] * a->v[(size_t)(a->p0 + j) * a->v_stride + i];
            out[(size_t)h * hd + i] = o / sum;
        }
    }
    free(s);
}

typedef struct attn_case {
    int hd, n_q, p0, p1;
    float softcap;
} attn_case;

/* head_dim: odd, below one vector, 24 (gemma2/qwen3 fixtures), 64, 80 (a partial V tile),
 * 128; group sizes 1, 2, 3, 8; ranges short, ragged, across the V position blocks, and
 * starting past 0 (sliding window); soft cap on and off. */
static const attn_case k_cases[] = {
    {64, 8, 0, 1, 0},   {64, 8, 0, 5, 0},    {64, 8, 0, 200, 0}, {64, 8, 37, 141, 30},
    {24, 2, 0, 7, 0},   {24, 2, 3, 70, 2},   {80, 8, 0, 129, 0}, {80, 1, 5, 66, 0},
    {7, 3, 0, 9, 0},    {7, 1, 1, 2, 5},     {128, 2, 0, 64, 0}, {128, 8, 60, 65, 50},
    {3, 8, 0, 33, 0},   {64, 1, 0, 100, 30}, {64, 2, 10, 300, 0}, {17, 5, 0, 13, 0},
};

typedef struct attn_data {
    float *q, *krow, *kblk, *v, *out, *scores;
} attn_data;

/* Random q, K, V for a case: K rows also written into the kernel's blocks (the positions
 * past p1 in the last block hold NaN, which must not reach any output), V rows 3*hd+1
 * apart inside wider rows, q scaled so that softmaxes range from flat to sharp. */
static attn_args make_case(const attn_case *c, attn_data *d) {
    size_t vs = (size_t)c->hd * 3 + 1, nq = (size_t)c->n_q * c->hd;
    size_t nblk = (size_t)((c->p1 + 7) & ~7) * c->hd;
    d->q = malloc(nq * sizeof(float));
    d->krow = malloc((size_t)c->p1 * c->hd * sizeof(float));
    d->kblk = duet_aalloc(nblk * sizeof(float));
    d->v = malloc((size_t)c->p1 * vs * sizeof(float));
    d->out = malloc(nq * sizeof(float));
    d->scores = duet_aalloc(attn_scratch_floats(c->n_q, c->p1 - c->p0) * sizeof(float));
    for (size_t i = 0; i < nq; i++) d->q[i] = 3 * urand();
    for (size_t i = 0; i < nblk; i++) d->kblk[i] = NAN;
    for (int p = 0; p < c->p1; p++)
        for (int i = 0; i < c->hd; i++)
            d->kblk[attn_k_index(p, i, c->hd)] = d->krow[(size_t)p * c->hd + i] = urand();
    for (size_t i = 0; i < (size_t)c->p1 * vs; i++) d->v[i] = urand();
    attn_args a = {.head_dim = c->hd, .n_q = c->n_q, .q = d->q, .out = d->out, .k = d->kblk,
                   .v = d->v + 2, .v_stride = vs, .p0 = c->p0, .p1 = c->p1,
                   .scale = 1.0f / sqrtf((float)c->hd), .softcap = c->softcap,
                   .scores = d->scores};
    return a;
}

static void free_case(attn_data *d) {
    free(d->q);
    free(d->krow);
    duet_afree(d->kblk);
    free(d->v);
    free(d->out);
    duet_afree(d->scores);
}

TEST(attn_kernels_match_double_oracle) {
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        attn_fn fn = attn_kernel(level);
        if (!fn) {
            CHECK(!kernels_get_level(DT_F32, level)); /* missing only where the CPU lacks it */
            fprintf(stderr, "    note: level %s not available on this CPU\n", kernels_level_name(level));
            continue;
        }
        double worst = 0;
        for (size_t ci = 0; ci < sizeof k_cases / sizeof k_cases[0]; ci++) {
            const attn_case *c = &k_cases[ci];
            attn_data d;
            attn_args a = make_case(c, &d);
            double *ref = malloc(sizeof(double) * (size_t)c->n_q * c->hd);
            oracle(&a, d.krow, ref);
            fn(&a);
            double err = 0;
            for (int i = 0; i < c->n_q * c->hd; i++) err = fmax(err, fabs(d.out[i] - ref[i]));
            /* outputs are averages of values in [-1, 1]: absolute error is float rounding */
            CHECKF(err < 1e-6, "%s: hd %d n_q %d [%d, %d) cap %g: max error %g",
                   kernels_level_name(level), c->hd, c->n_q, c->p0, c->p1, c->softcap, err);
            worst = fmax(worst, err);
            free(ref);
            free_case(&d);
        }
        fprintf(stderr, "    %s: max |out - oracle| %.3g\n", kernels_level_name(level), worst);
    }
}

/* The forward pass splits a group's heads over threads for decode: a head's output must be
 * the same bits alone, with all its group, or in any part of it. */
TEST(attn_head_result_independent_of_split) {
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        attn_fn fn = attn_kernel(level);
        if (!fn) continue;
        for (size_t ci = 0; ci < sizeof k_cases / sizeof k_cases[0]; ci++) {
            const attn_case *c = &k_cases[ci];
            if (c->n_q == 1) continue;
            attn_data d;
            attn_args a = make_case(c, &d);
            fn(&a);
            float *whole = malloc(sizeof(float) * (size_t)c->n_q * c->hd);
            memcpy(whole, d.out, sizeof(float) * (size_t)c->n_q * c->hd);
            memset(d.out, 0, sizeof(float) * (size_t)c->n_q * c->hd);
            /* parts of 1, 2, 3, ... heads */
            for (int h = 0, len = 1; h < c->n_q; h += len, len++) {
                attn_args part = a;
                part.n_q = DUET_MIN(len, c->n_q - h);
                part.q = a.q + (size_t)h * c->hd;
                part.out = a.out + (size_t)h * c->hd;
                fn(&part);
            }
            CHECKF(!memcmp(whole, d.out, sizeof(float) * (size_t)c->n_q * c->hd),
                   "%s: hd %d n_q %d [%d, %d): heads differ when split",
                   kernels_level_name(level), c->hd, c->n_q, c->p0, c->p1);
            free(whole);
            free_case(&d);
        }
    }
}

/* Logits of toks[0..n) in one batch with a model loaded on n_threads. */
static float *logits_with_threads(const char *path, int n_threads, const int32_t *toks, int n) {
    duet_model *m = NULL;
    duet_session *s = NULL;
    duet_error err = {0};
    duet_model_params mp = {.n_threads = n_threads};
    if (duet_model_load(path, &mp, &m, &err) || duet_session_new(m, NULL, &s, &err) ||
        duet_session_eval(s, toks, n, 1, &err)) {
        test_fail_at(__FILE__, __LINE__, "%s: %s", path, err.msg);
        duet_session_free(s);
        duet_model_free(m);
        return NULL;
    }
    int V = duet_model_hparams(m)->n_vocab;
    float *out = malloc(sizeof(float) * (size_t)V * n);
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * V, duet_session_logits(s, i), sizeof(float) * (size_t)V);
    duet_session_free(s);
    duet_model_free(m);
    return out;
}

/* Attention items, the per-token steps (threaded from 128 tokens of this width) and the
 * matrix products all split differently over 1, 2 and 3 threads; the logits must not move.
 * gemma2 adds soft caps, a sliding window, post-norms, GELU and head_dim 24. */
TEST(attn_forward_same_bits_any_thread_count) {
    const struct { const char *path; int n, V; } models[] = {
        {fixture_random(DT_Q8_0, 3, 0), 200, 600},
        {fixture_arch("gemma2", DT_F32, 0, 0, 0), 60, 300},
    };
    for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++) {
        REQUIRE(models[mi].path);
        int n = models[mi].n, V = models[mi].V;
        int32_t toks[200];
        for (int i = 0; i < n; i++) toks[i] = (i * 37 + 11) % V;
        float *one = logits_with_threads(models[mi].path, 1, toks, n);
        REQUIRE(one);
        for (int nth = 2; nth <= 3; nth++) {
            float *many = logits_with_threads(models[mi].path, nth, toks, n);
            REQUIRE(many);
            CHECKF(!memcmp(one, many, sizeof(float) * (size_t)V * n),
                   "%s: logits with %d threads differ from 1 thread", models[mi].path, nth);
            free(many);
        }
        free(one);
    }
}
