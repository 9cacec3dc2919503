/*
 * test_attn.c: the attention kernel (src/engine/attn.h) at every level against a double-precision
 * softmax written here (an independent oracle), the kernel's invariant that a head's output
 * does not depend on which heads share the call, and the forward pass giving the same bits
 * whatever the thread count; all of it with F32 and F16 K/V caches.
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
 * from plain rows (krow: position p's at krow + p*head_dim) rather than the kernel's blocks
 * and V from float rows (vrow, a->v_stride apart) whatever the kernel's cache type. */
static void oracle(const attn_args *a, const float *krow, const float *vrow, double *out) {
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
            for (int j = 0; j < n; j++) o += s[j] * vrow[(size_t)(a->p0 + j) * a->v_stride + i];
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
    uint16_t *kblk16, *v16; /* the same K blocks and V rows as F16 */
} attn_data;

/* A value in [-1, 1]: uniform, or (halves) a multiple of 2^-10, which F16 holds exactly
 * (at most 11 significant bits, exponent >= -10). */
static float kv_value(int halves) {
    return halves ? (float)((int)(duet_splitmix64(&g_seed) % 2049) - 1024) / 1024.0f : urand();
}

/* Random q, K, V for a case: K rows also written into the kernel's blocks (the positions
 * past p1 in the last block hold NaN, which must not reach any output), V rows 3*hd+1
 * apart inside wider rows, q scaled so that softmaxes range from flat to sharp. K and V are
 * stored both as F32 and as F16 (round to nearest), the kernel reading type_k / type_v;
 * halves: values F16 holds exactly, so both copies are the same numbers. */
static attn_args make_case(const attn_case *c, attn_data *d, int type_k, int type_v, int halves) {
    size_t vs = (size_t)c->hd * 3 + 1, nq = (size_t)c->n_q * c->hd;
    size_t nblk = (size_t)((c->p1 + 7) & ~7) * c->hd;
    d->q = malloc(nq * sizeof(float));
    d->krow = malloc((size_t)c->p1 * c->hd * sizeof(float));
    d->kblk = duet_aalloc(nblk * sizeof(float));
    d->kblk16 = duet_aalloc(nblk * sizeof(uint16_t));
    d->v = malloc((size_t)c->p1 * vs * sizeof(float));
    d->v16 = malloc((size_t)c->p1 * vs * sizeof(uint16_t));
    d->out = malloc(nq * sizeof(float));
    d->scores = duet_aalloc(attn_scratch_floats(c->n_q, c->p1 - c->p0) * sizeof(float));
    for (size_t i = 0; i < nq; i++) d->q[i] = 3 * urand();
    for (size_t i = 0; i < nblk; i++) d->kblk[i] = NAN;
    for (size_t i = 0; i < nblk; i++) d->kblk16[i] = 0x7e00; /* F16 NaN */
    for (int p = 0; p < c->p1; p++)
        for (int i = 0; i < c->hd; i++) {
            size_t b = attn_k_index(p, i, c->hd);
            d->kblk[b] = d->krow[(size_t)p * c->hd + i] = kv_value(halves);
            d->kblk16[b] = fp32_to_fp16(d->kblk[b]);
        }
    for (size_t i = 0; i < (size_t)c->p1 * vs; i++) d->v16[i] = fp32_to_fp16(d->v[i] = kv_value(halves));
    attn_args a = {.head_dim = c->hd, .n_q = c->n_q, .q = d->q, .out = d->out,
                   .k = type_k == DT_F16 ? (const void *)d->kblk16 : d->kblk,
                   .v = type_v == DT_F16 ? (const void *)(d->v16 + 2) : d->v + 2, .v_stride = vs,
                   .type_k = type_k, .type_v = type_v, .p0 = c->p0, .p1 = c->p1,
                   .scale = 1.0f / sqrtf((float)c->hd), .softcap = c->softcap,
                   .scores = d->scores};
    return a;
}

static void free_case(attn_data *d) {
    free(d->q);
    free(d->krow);
    duet_afree(d->kblk);
    duet_afree(d->kblk16);
    free(d->v);
    free(d->v16);
    free(d->out);
    duet_afree(d->scores);
}

/* K/V cache type pairs every kernel test runs (F32 first, unchanged; F16 on either side) */
static const int k_kv_types[][2] = {{DT_F32, DT_F32}, {DT_F16, DT_F16}, {DT_F16, DT_F32}, {DT_F32, DT_F16}};
#define N_KV_TYPES (int)(sizeof k_kv_types / sizeof k_kv_types[0])

TEST(attn_kernels_match_double_oracle) {
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        attn_fn fn = attn_kernel(level);
        if (!fn) {
            CHECK(!kernels_get_level(DT_F32, level)); /* missing only where the CPU lacks it */
            fprintf(stderr, "    note: level %s not available on this CPU\n", kernels_level_name(level));
            continue;
        }
        for (int t = 0; t < N_KV_TYPES; t++) {
            int tk = k_kv_types[t][0], tv = k_kv_types[t][1], halves = tk == DT_F16 || tv == DT_F16;
            double worst = 0;
            for (size_t ci = 0; ci < sizeof k_cases / sizeof k_cases[0]; ci++) {
                const attn_case *c = &k_cases[ci];
                attn_data d;
                attn_args a = make_case(c, &d, tk, tv, halves);
                double *ref = malloc(sizeof(double) * (size_t)c->n_q * c->hd);
                oracle(&a, d.krow, d.v + 2, ref);
                fn(&a);
                double err = 0;
                for (int i = 0; i < c->n_q * c->hd; i++) err = fmax(err, fabs(d.out[i] - ref[i]));
                /* outputs are averages of values in [-1, 1] (with F16, values it holds
                 * exactly): absolute error is float rounding */
                CHECKF(err < 1e-6, "%s K %s V %s: hd %d n_q %d [%d, %d) cap %g: max error %g",
                       kernels_level_name(level), dtype_info(tk)->name, dtype_info(tv)->name,
                       c->hd, c->n_q, c->p0, c->p1, c->softcap, err);
                worst = fmax(worst, err);
                free(ref);
                free_case(&d);
            }
            fprintf(stderr, "    %s K %s V %s: max |out - oracle| %.3g\n", kernels_level_name(level),
                    dtype_info(tk)->name, dtype_info(tv)->name, worst);
        }
    }
}

/* The forward pass splits a group's heads over threads for decode: a head's output must be
 * the same bits alone, with all its group, or in any part of it. */
TEST(attn_head_result_independent_of_split) {
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        attn_fn fn = attn_kernel(level);
        if (!fn) continue;
        for (int t = 0; t < N_KV_TYPES; t++)
        for (size_t ci = 0; ci < sizeof k_cases / sizeof k_cases[0]; ci++) {
            const attn_case *c = &k_cases[ci];
            if (c->n_q == 1) continue;
            attn_data d;
            attn_args a = make_case(c, &d, k_kv_types[t][0], k_kv_types[t][1], 0);
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
                   "%s K %s V %s: hd %d n_q %d [%d, %d): heads differ when split",
                   kernels_level_name(level), dtype_info(k_kv_types[t][0])->name,
                   dtype_info(k_kv_types[t][1])->name, c->hd, c->n_q, c->p0, c->p1);
            free(whole);
            free_case(&d);
        }
    }
}

/* An F16 element widens to its float exactly, so on values F16 holds exactly an F16 cache
 * must give the very bits the F32 cache gives at the same level: any other difference is a
 * load that reads the wrong element or lane. */
TEST(attn_f16_cache_same_bits_as_f32) {
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        attn_fn fn = attn_kernel(level);
        if (!fn) continue;
        for (size_t ci = 0; ci < sizeof k_cases / sizeof k_cases[0]; ci++) {
            const attn_case *c = &k_cases[ci];
            size_t n = (size_t)c->n_q * c->hd;
            attn_data d;
            attn_args a = make_case(c, &d, DT_F32, DT_F32, 1);
            fn(&a);
            float *ref = malloc(sizeof(float) * n);
            memcpy(ref, d.out, sizeof(float) * n);
            for (int t = 1; t < N_KV_TYPES; t++) {
                attn_args b = a;
                b.type_k = k_kv_types[t][0];
                b.type_v = k_kv_types[t][1];
                if (b.type_k == DT_F16) b.k = d.kblk16;
                if (b.type_v == DT_F16) b.v = d.v16 + 2;
                memset(d.out, 0, sizeof(float) * n);
                fn(&b);
                CHECKF(!memcmp(ref, d.out, sizeof(float) * n),
                       "%s K %s V %s: hd %d n_q %d [%d, %d): differs from the F32 cache",
                       kernels_level_name(level), dtype_info(b.type_k)->name,
                       dtype_info(b.type_v)->name, c->hd, c->n_q, c->p0, c->p1);
            }
            free(ref);
            free_case(&d);
        }
    }
}

/* On values F16 cannot hold, the F16 cache's output against the double oracle on the
 * unrounded values stays within what rounding K and V to F16 can cost. Each element x moves
 * by at most 2^-11 |x| + 2^-25 (half an ulp of an 11-bit significand; 2^-25 is half the
 * spacing of F16's subnormals), so with |k|, |v| <= 1:
 *   a score moves by at most delta_h = scale * sum_i |q_h,i| * (2^-11 + 2^-25)
 *     (the soft cap, c*tanh(s/c), has slope <= 1 and cannot enlarge it);
 *   softmax weights w_j = e^{s_j} / sum e^{s}: each moves by a factor within e^{+-2 delta_h},
 *     so sum_j |w'_j - w_j| <= e^{2 delta_h} - 1, times |v| <= 1 in the output;
 *   the V rounding adds at most 2^-11 + 2^-25 to a weighted average of values;
 *   1e-6 covers the float arithmetic (the F32 test's bound). */
TEST(attn_f16_cache_within_rounding_bound) {
    for (int level = 0; level < KLEVEL_COUNT; level++) {
        attn_fn fn = attn_kernel(level);
        if (!fn) continue;
        double worst = 0, worst_ratio = 0;
        for (size_t ci = 0; ci < sizeof k_cases / sizeof k_cases[0]; ci++) {
            const attn_case *c = &k_cases[ci];
            attn_data d;
            attn_args a = make_case(c, &d, DT_F16, DT_F16, 0);
            double *ref = malloc(sizeof(double) * (size_t)c->n_q * c->hd);
            oracle(&a, d.krow, d.v + 2, ref);
            fn(&a);
            for (int h = 0; h < c->n_q; h++) {
                double ql1 = 0, err = 0;
                for (int i = 0; i < c->hd; i++) ql1 += fabs(d.q[(size_t)h * c->hd + i]);
                double delta = a.scale * ql1 * (0x1p-11 + 0x1p-25);
                double bound = expm1(2 * delta) + 0x1p-11 + 0x1p-25 + 1e-6;
                for (int i = 0; i < c->hd; i++)
                    err = fmax(err, fabs(d.out[(size_t)h * c->hd + i] - ref[(size_t)h * c->hd + i]));
                CHECKF(err <= bound, "%s: hd %d n_q %d [%d, %d) head %d: error %g > bound %g",
                       kernels_level_name(level), c->hd, c->n_q, c->p0, c->p1, h, err, bound);
                worst = fmax(worst, err);
                worst_ratio = fmax(worst_ratio, err / bound);
            }
            free(ref);
            free_case(&d);
        }
        fprintf(stderr, "    %s F16 K/V: max |out - oracle(unrounded)| %.3g (%.2f of its bound)\n",
                kernels_level_name(level), worst, worst_ratio);
    }
}

/* Logits of toks[0..n) in one batch with a model loaded on n_threads, K/V caches of kv_type. */
static float *logits_with_threads(const char *path, int n_threads, int kv_type,
                                  const int32_t *toks, int n) {
    duet_model *m = NULL;
    duet_session *s = NULL;
    duet_error err = {0};
    duet_model_params mp = {.n_threads = n_threads};
    duet_session_params sp = {.type_k = kv_type, .type_v = kv_type};
    if (duet_model_load(path, &mp, &m, &err) || duet_session_new(m, &sp, &s, &err) ||
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
 * gemma2 adds soft caps, a sliding window, post-norms, GELU and head_dim 24. Both with F32
 * and F16 K/V caches. */
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
        for (int kv = DT_F32; kv <= DT_F16; kv++) {
            float *one = logits_with_threads(models[mi].path, 1, kv, toks, n);
            REQUIRE(one);
            for (int nth = 2; nth <= 3; nth++) {
                float *many = logits_with_threads(models[mi].path, nth, kv, toks, n);
                REQUIRE(many);
                CHECKF(!memcmp(one, many, sizeof(float) * (size_t)V * n),
                       "%s, K/V %s: logits with %d threads differ from 1 thread",
                       models[mi].path, dtype_info(kv)->name, nth);
                free(many);
            }
            free(one);
        }
    }
}
