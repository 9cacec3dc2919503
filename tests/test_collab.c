/* test_collab.c: Co-LLM decoding: analytic cases (eta 1 = base, eta 0 = expert, random
 * r 0/1, proxy with anti == base = expert), lazy vs eager sync, the expert's evaluation
 * count, the vocabulary bridge, the head sidecar, and reseeding the random policy. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "format/gguf.h"
#include "format/quant.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

#define MAXGEN 64

typedef struct run_out {
    int32_t ids[MAXGEN];
    int src[MAXGEN];
    duet_collab_token tok[MAXGEN];
    int n;
    int eos_src;   /* source of the step that chose EOS, -1 if generation did not end so */
    duet_collab_stats st;
} run_out;


/* Decode n tokens after prompt (base ids) with the given policy; 0 on success. */
static int decode(duet_model *b, duet_model *e, duet_model *anti, const duet_head *h,
                  duet_collab_params p, const int32_t *prompt, int np, int n, run_out *o) {
    duet_collab *c = NULL;
    duet_error err = {0};
    memset(o, 0, sizeof *o);
    if (duet_collab_new(b, e, anti, h, &p, &c, &err) || duet_collab_start(c, prompt, np, &err)) {
        test_fail_at(__FILE__, __LINE__, "collab: %s", err.msg);
        duet_collab_free(c);
        return -1;
    }
    int rc = 0;
    while (o->n < n && o->n < MAXGEN) {
        duet_collab_token t;
        rc = duet_collab_step(c, &t, &err);
        o->eos_src = rc == DUET_EOS ? t.source : -1;
        if (rc) break;
        o->tok[o->n] = t;
        o->ids[o->n] = t.id;
        o->src[o->n++] = t.source;
    }
    o->st = *duet_collab_get_stats(c);
    duet_collab_free(c);
    if (rc < 0) test_fail_at(__FILE__, __LINE__, "step: %s", err.msg);
    return rc < 0 ? -1 : 0;
}

static int same_ids(const run_out *a, const run_out *b) {
    return a->n == b->n && !memcmp(a->ids, b->ids, sizeof(int32_t) * (size_t)a->n);
}

static void prompt_of(int k, int32_t *p, int *np) {
    *np = 3 + k % 7;
    p[0] = 1;
    for (int i = 1; i < *np; i++) p[i] = 3 + (k * 131 + i * 17) % 590;
}

TEST(collab_analytic_cases) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0)), *e = fixture_load(fixture_random(DT_F32, 22, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 5, 40.0f);
    REQUIRE(h);
    int32_t pr[16];
    int np;
    for (int k = 0; k < 4; k++) {
        prompt_of(k, pr, &np);
        run_out base, expert, x;
        duet_collab_params p = {.policy = DUET_POLICY_BASE};
        REQUIRE(!decode(b, NULL, NULL, NULL, p, pr, np, 40, &base));
        p.policy = DUET_POLICY_EXPERT;
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &expert));
        CHECKF(!same_ids(&base, &expert), "base and expert agree: the test cannot tell them apart");
        /* eta 1 never defers, eta 0 always */
        p = (duet_collab_params){.policy = DUET_POLICY_COLLM, .threshold = 1.0f};
        REQUIRE(!decode(b, e, NULL, h, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &base) && x.st.expert_calls == 0 && x.st.expert_evaluated == 0);
        p.threshold = 0.0f;
        REQUIRE(!decode(b, e, NULL, h, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &expert) && x.st.n_deferred == x.n);
        /* random r = 0 / 1 */
        p = (duet_collab_params){.policy = DUET_POLICY_RANDOM, .random_rate = 0.0f};
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &base));
        p.random_rate = 1.0f;
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &expert));
        /* proxy tuning with anti == base is the expert */
        p = (duet_collab_params){.policy = DUET_POLICY_PROXY};
        REQUIRE(!decode(b, e, b, NULL, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &expert));
        /* uncertainty: a threshold above any entropy is base, 0 is expert */
        p = (duet_collab_params){.policy = DUET_POLICY_UNCERTAINTY, .threshold = 1e6f};
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &base) && x.st.expert_calls == 0);
        p.threshold = 0.0f;
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &expert));
        /* compose with eta 1 is base; confidence and contrastive run and consult the expert */
        p = (duet_collab_params){.policy = DUET_POLICY_COMPOSE, .threshold = 1.0f};
        REQUIRE(!decode(b, e, NULL, h, p, pr, np, 40, &x));
        CHECK(same_ids(&x, &base));
        p = (duet_collab_params){.policy = DUET_POLICY_CONFIDENCE};
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &x));
        CHECK(x.st.expert_calls == x.n);
        for (int i = 0; i < x.n; i++) { /* greedy: the more confident model's argmax */
            const duet_collab_token *t = &x.tok[i];
            int want = t->expert_top_p > t->base_top_p ? t->expert_top : t->base_top;
            CHECKF(t->id == want && (t->source == DUET_SRC_EXPERT) == (t->expert_top_p > t->base_top_p),
                   "confidence token %d: id %d source %d, base %d (%.4f) expert %d (%.4f)", i, t->id,
                   t->source, t->base_top, t->base_top_p, t->expert_top, t->expert_top_p);
        }
        p = (duet_collab_params){.policy = DUET_POLICY_CONTRASTIVE};
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &x));
        CHECK(x.n > 0 && x.st.expert_calls == x.n);
    }
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}

/* An independent splitmix64 (the published constants), to predict the random policy's draws. */
static uint64_t ref_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* duet_collab_set_seed restarts the random policy's draws: on a decoder that has already
 * decoded another answer (and drawn for it), reseeding with s gives token k the deferral
 * decision u_k < rate, u_k the k-th 53-bit uniform of splitmix64 started at
 * s ^ 0x5851f42d4c957f2d (duet.h's random policy), exactly as a fresh decoder made with seed
 * s; and the same tokens as that fresh decoder. */
TEST(collab_set_seed_restarts_the_random_policy) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0)), *e = fixture_load(fixture_random(DT_F32, 22, 0));
    REQUIRE(b && e);
    int32_t pa[16], pb[16];
    int na, nb;
    prompt_of(1, pa, &na);
    prompt_of(2, pb, &nb);
    const uint64_t seed = 7;
    duet_collab_params p = {.policy = DUET_POLICY_RANDOM, .random_rate = 0.5f, .sampling.seed = seed};
    run_out fresh;
    REQUIRE(!decode(b, e, NULL, NULL, p, pa, na, 40, &fresh));
    p.sampling.seed = 99;
    duet_collab *c = NULL;
    duet_error err = {0};
    REQUIRE(!duet_collab_new(b, e, NULL, NULL, &p, &c, &err));
    duet_collab_token t;
    for (int round = 0; round < 2; round++) { /* another answer first, then prompt a again */
        int32_t *pr = round ? pa : pb;
        int n = round ? na : nb;
        if (round) duet_collab_set_seed(c, seed);
        REQUIRE(!duet_collab_start(c, pr, n, &err));
        uint64_t x = seed ^ 0x5851f42d4c957f2dull;
        for (int k = 0; k < 40; k++) {
            int rc = duet_collab_step(c, &t, &err);
            REQUIRE(rc == DUET_OK || rc == DUET_EOS);
            if (round) {
                int want = (double)(ref_splitmix64(&x) >> 11) * 0x1.0p-53 < 0.5;
                CHECKF(t.deferred == want, "token %d: deferred %d, the draw says %d", k, t.deferred, want);
                if (rc == DUET_OK) CHECKF(k < fresh.n && t.id == fresh.ids[k], "token %d differs from a fresh decoder's", k);
            }
            if (rc == DUET_EOS) break;
        }
    }
    duet_collab_free(c);
    duet_model_free(b);
    duet_model_free(e);
}

/* Lazy and eager expert sync must give identical tokens; in lazy mode the expert evaluates
 * exactly the prefix up to its last deferral, each token once. */
TEST(collab_lazy_equals_eager_and_counts) {
    duet_model *b = fixture_load(fixture_random(DT_Q8_0, 31, 0)), *e = fixture_load(fixture_random(DT_Q8_0, 32, 0));
    REQUIRE(b && e);
    double rates[2] = {0, 0};
    int runs[2] = {0, 0};
    for (int k = 0; k < 20; k++) {
        int often = k % 2;
        duet_head *h = fixture_random_head(b, 100 + (uint64_t)k, 0.5f);
        REQUIRE(h);
        int32_t pr[16];
        int np;
        prompt_of(k, pr, &np);
        duet_collab_params p = {.policy = DUET_POLICY_COLLM, .threshold = often ? 0.15f : 0.85f};
        run_out lazy, eager;
        REQUIRE(!decode(b, e, NULL, h, p, pr, np, 48, &lazy));
        p.eager_sync = 1;
        REQUIRE(!decode(b, e, NULL, h, p, pr, np, 48, &eager));
        CHECKF(same_ids(&lazy, &eager), "prompt %d: lazy and eager sync differ", k);
        CHECK_EQ_INT(lazy.st.n_deferred, eager.st.n_deferred);
        /* lazy: expert evaluated = prompt + catch-up = the prefix before its last deferral */
        /* (a step that chose EOS counts as the step after the last emitted token) */
        int last = lazy.eos_src == DUET_SRC_EXPERT ? lazy.n : -1, eos = lazy.eos_src >= 0;
        for (int i = 0; last < 0 && i < lazy.n; i++)
            if (lazy.src[lazy.n - 1 - i] == DUET_SRC_EXPERT) last = lazy.n - 1 - i;
        long want = last < 0 ? 0 : np + last;
        CHECKF(lazy.st.expert_evaluated == want, "prompt %d: expert evaluated %ld, want %ld", k,
               lazy.st.expert_evaluated, want);
        CHECK(lazy.st.expert_evaluated <= np + lazy.n);
        CHECK_EQ_INT(eager.st.expert_evaluated, np + eager.n);
        CHECK_EQ_INT(lazy.st.base_evaluated, np + lazy.n - 1 + eos);
        rates[often] += (double)lazy.st.n_deferred / (lazy.n ? lazy.n : 1);
        runs[often]++;
        duet_head_free(h);
    }
    double rare = rates[0] / runs[0], often = rates[1] / runs[1];
    fprintf(stderr, "    mean deferral: %.1f%% (eta 0.85), %.1f%% (eta 0.15)\n", 100 * rare, 100 * often);
    CHECKF(rare > 0.02 && rare < 0.35 && often > 0.65 && often < 0.98,
           "heads should defer rarely and often: %.2f / %.2f", rare, often);
    duet_model_free(b);
    duet_model_free(e);
}

TEST(collab_babyllama_bridge_and_refusal) {
    const char *a = fixture_llama2c("tok105"), *x = fixture_llama2c("tok361");
    if (!a || !x) SKIP("../shared/models/babyllama not present");
    duet_model *b = fixture_load(a), *e = fixture_load(x), *r = fixture_load(fixture_random(DT_F32, 1, 1));
    REQUIRE(b && e && r);
    int32_t pr[64];
    duet_error err = {0};
    int np = duet_tokenize(b, "Once upon a time", 16, 1, 0, pr, 64, &err);
    REQUIRE(np > 1);
    run_out base, expert;
    duet_collab_params p = {.policy = DUET_POLICY_BASE};
    REQUIRE(!decode(b, NULL, NULL, NULL, p, pr, np, 60, &base));
    p.policy = DUET_POLICY_EXPERT;
    REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 60, &expert));
    /* the expert's own greedy text, in its own ids, spells the same characters */
    char s1[512] = "", s2[512] = "";
    for (int i = 0, o = 0; i < expert.n; i++)
        o += duet_token_to_piece(b, i ? expert.ids[i - 1] : pr[np - 1], expert.ids[i], s1 + o, 8);
    duet_session *es = NULL;
    int32_t epr[64];
    int enp = duet_tokenize(e, "Once upon a time", 16, 1, 0, epr, 64, &err);
    REQUIRE(enp == np && !duet_session_new(e, NULL, &es, &err) && !duet_session_eval(es, epr, enp, 0, &err));
    int32_t prev = epr[enp - 1];
    for (int i = 0, o = 0; i < expert.n; i++) {
        int32_t t = duet_argmax(duet_session_logits(es, -1), duet_model_hparams(e)->n_vocab);
        o += duet_token_to_piece(e, prev, t, s2 + o, 8);
        prev = t;
        REQUIRE(!duet_session_eval(es, &t, 1, 0, &err));
    }
    CHECKF(!strcmp(s1, s2), "bridged expert text '%s' != expert alone '%s'", s1, s2);
    duet_session_free(es);
    /* a base whose byte tokens the expert lacks is refused, naming id and text */
    duet_collab *c = NULL;
    p.policy = DUET_POLICY_EXPERT;
    int rc = duet_collab_new(r, b, NULL, NULL, &p, &c, &err);
    CHECK(rc == DUET_ERR_UNSUPPORTED && !c);
    CHECKF(strstr(err.msg, "base token 3") && strstr(err.msg, "<0x00>"), "message: %s", err.msg);
    duet_model_free(r);
    duet_model_free(b);
    duet_model_free(e);
}

TEST(collab_head_sidecar) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 41, 0));
    REQUIRE(b);
    duet_head *h = NULL, *g = NULL;
    duet_error err = {0};
    REQUIRE(!duet_head_init(b, &h, &err));
    CHECK(duet_head_threshold(h) < 0);
    /* init is the mean of the output-matrix rows: recompute from the file in double */
    gguf_file *f = NULL;
    REQUIRE(!gguf_open(fixture_random(DT_F32, 41, 0), &f, &err));
    const gguf_tensor *o = gguf_find_tensor(f, "output.weight");
    REQUIRE(o && o->type == DT_F32);
    for (int j = 0; j < 4; j++) {
        double acc = 0;
        for (int64_t r = 0; r < o->ne[1]; r++) {
            float v;
            memcpy(&v, (const char *)o->data + (size_t)(r * o->ne[0] + j) * 4, 4);
            acc += v;
        }
        CHECK_NEAR(duet_head_u(h)[j], acc / (double)o->ne[1], 1e-7);
    }
    gguf_close(f);
    duet_head_set_threshold(h, 0.37f);
    char path[600];
    snprintf(path, sizeof path, "%s/head.gguf", test_tmpdir());
    REQUIRE(!duet_head_save(h, path, &err));
    REQUIRE(!duet_head_load(path, b, &g, &err));
    CHECK(!memcmp(duet_head_u(h), duet_head_u(g), sizeof(float) * (size_t)duet_head_n_embd(h)));
    CHECK_NEAR(duet_head_threshold(g), 0.37, 1e-7);
    duet_head_free(g);
    g = NULL;
    /* a base of another shape and name: refused with both identities in the message */
    char other_path[600];
    snprintf(other_path, sizeof other_path, "%s/other-base.gguf", test_tmpdir());
    duet_make_model_params mp = {.arch = "llama", .n_embd = 64, .n_layer = 1, .n_head = 2,
                                 .n_head_kv = 2, .n_ff = 64, .n_vocab = 600, .type = DT_F16,
                                 .output_type = -1, .seed = 3};
    REQUIRE(!duet_make_model(&mp, other_path, &err));
    duet_model *other = fixture_load(other_path);
    REQUIRE(other);
    int rc = duet_head_load(path, other, &g, &err);
    CHECK(rc < 0 && !g);
    CHECKF(strstr(err.msg, path) && strstr(err.msg, "belongs to") && strstr(err.msg, "n_embd 128"),
           "message: %s", err.msg);
    /* NaN weights are refused */
    float u[128];
    memcpy(u, duet_head_u(h), sizeof u);
    u[7] = NAN;
    duet_head_set_u(h, u, 128);
    REQUIRE(!duet_head_save(h, path, &err));
    rc = duet_head_load(path, b, &g, &err);
    CHECKF(rc < 0 && strstr(err.msg, "head.u[7]"), "NaN head: %s", err.msg);
    duet_model_free(other);
    duet_head_free(h);
    duet_model_free(b);
}

/* A head that reads only the base's entropy, s = entropy - t, thresholded at eta 0.5
 * (logit 0), must route exactly like the uncertainty policy at t nats (t = the median
 * entropy of a base-only run, so both branches are taken). */
static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

TEST(collab_feature_head_equals_uncertainty) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 71, 0)), *e = fixture_load(fixture_random(DT_F32, 72, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 9, 0.5f);
    REQUIRE(h);
    int32_t pr[16];
    int np;
    for (int k = 0; k < 3; k++) {
        prompt_of(k, pr, &np);
        run_out a, u;
        duet_collab_params p = {.policy = DUET_POLICY_UNCERTAINTY, .threshold = 1e6f};
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &u));
        float ent[MAXGEN];
        for (int i = 0; i < u.n; i++) ent[i] = u.tok[i].score;
        qsort(ent, (size_t)u.n, sizeof ent[0], cmp_float);
        float t = ent[u.n / 2];
        float w[2] = {1.0f, 0.0f};
        REQUIRE(!duet_head_set_features(h, DUET_HEAD_FEAT_ENTROPY, w, -t));
        p = (duet_collab_params){.policy = DUET_POLICY_COLLM, .threshold = 0.5f};
        REQUIRE(!decode(b, e, NULL, h, p, pr, np, 40, &a));
        p = (duet_collab_params){.policy = DUET_POLICY_UNCERTAINTY, .threshold = t};
        REQUIRE(!decode(b, e, NULL, NULL, p, pr, np, 40, &u));
        CHECK(same_ids(&a, &u));
        CHECK_EQ_INT(a.st.n_deferred, u.st.n_deferred);
        CHECKF(a.st.n_deferred > 0 && a.st.n_deferred < a.n, "deferred %d of %d", a.st.n_deferred, a.n);
        for (int i = 0; i < a.n && i < u.n; i++) CHECK_NEAR(a.tok[i].score, u.tok[i].score - t, 1e-5);
    }
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}

/* ---- the mixing policies against their formulas ------------------------------------------ */
static void log_softmax_d(const float *l, int n, double *out) {
    double mx = l[0], z = 0;
    for (int i = 1; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) z += exp((double)l[i] - mx);
    for (int i = 0; i < n; i++) out[i] = (double)l[i] - mx - log(z);
}

/* The formula's choice, or -1 when its two best values are too close for float arithmetic to
 * be sure (the decoder computes in float). */
static int clear_argmax(const double *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) best = x[i] > x[best] ? i : best;
    for (int i = 0; i < n; i++)
        if (i != best && x[best] - x[i] < 1e-4) return -1;
    return best;
}

/* At step i of a greedy run the test evaluates base, expert and anti on the emitted prefix in
 * sessions of its own and recomputes the policy from the models' log-probabilities in double:
 *   compose     (p > eta): argmax log((1 - p) P_base + p P_expert), p = sig(u . h); else base
 *   contrastive  argmax (1 + b) lp_e - b lp_b over tokens with P_e >= a * max P_e (a .1, b .5)
 *   proxy        argmax lp_e + lp_b - lp_anti
 * Contrastive and proxy must also pick, somewhere, a token neither the base nor the expert
 * would, and compose a token its weights swapped would not, so that a wrong sign or swapped
 * weight cannot pass by agreeing with one model. */
TEST(collab_mixing_policies_match_their_formulas) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0)), *e = fixture_load(fixture_random(DT_F32, 22, 0)),
               *a = fixture_load(fixture_random(DT_F32, 23, 0));
    REQUIRE(b && e && a);
    duet_head *h = fixture_random_head(b, 5, 40.0f);
    REQUIRE(h);
    const int V = duet_model_hparams(b)->n_vocab;
    double *lb = malloc(sizeof(double) * (size_t)V * 4), *le = lb + V, *la = le + V, *f = la + V;
    duet_session *sb = NULL, *se = NULL, *sa = NULL;
    duet_error err = {0};
    REQUIRE(lb && !duet_session_new(b, NULL, &sb, &err) && !duet_session_new(e, NULL, &se, &err) &&
            !duet_session_new(a, NULL, &sa, &err));
    static const duet_policy pols[] = {DUET_POLICY_COMPOSE, DUET_POLICY_CONTRASTIVE, DUET_POLICY_PROXY};
    for (int pi = 0; pi < 3; pi++) {
        int n_own = 0, n_checked = 0;
        for (int k = 0; k < 3; k++) {
            int32_t pr[16 + MAXGEN];
            int np;
            prompt_of(k, pr, &np);
            duet_collab_params p = {.policy = pols[pi], .threshold = 0.3f};
            run_out x;
            REQUIRE(!decode(b, e, pols[pi] == DUET_POLICY_PROXY ? a : NULL,
                            pols[pi] == DUET_POLICY_COMPOSE ? h : NULL, p, pr, np, 24, &x));
            for (int i = 0; i < x.n; i++) {
                int n = np + i;
                if (i) pr[n - 1] = x.ids[i - 1];
                REQUIRE(!duet_session_sync(sb, pr, n, &err) && !duet_session_sync(se, pr, n, &err) &&
                        !duet_session_sync(sa, pr, n, &err));
                log_softmax_d(duet_session_logits(sb, -1), V, lb);
                log_softmax_d(duet_session_logits(se, -1), V, le);
                log_softmax_d(duet_session_logits(sa, -1), V, la);
                double pd = 1 / (1 + exp(-(double)duet_head_score(h, duet_session_hidden(sb, -1))));
                double emax = le[0];
                for (int v = 1; v < V; v++) emax = le[v] > emax ? le[v] : emax;
                for (int v = 0; v < V; v++) {
                    switch (pols[pi]) {
                    case DUET_POLICY_COMPOSE:
                        f[v] = pd > 0.3 ? log((1 - pd) * exp(lb[v]) + pd * exp(le[v])) : lb[v];
                        break;
                    case DUET_POLICY_CONTRASTIVE:
                        f[v] = le[v] >= emax + log(0.1) ? 1.5 * le[v] - 0.5 * lb[v] : -INFINITY;
                        break;
                    default: f[v] = le[v] + lb[v] - la[v]; break;
                    }
                }
                int want = clear_argmax(f, V);
                if (want < 0) continue;
                n_checked++;
                CHECKF(x.ids[i] == want, "%s, prompt %d, token %d: decoder chose %d, the formula %d",
                       duet_policy_name(pols[pi]), k, i, x.ids[i], want);
                if (pols[pi] != DUET_POLICY_COMPOSE) {
                    n_own += want != clear_argmax(lb, V) && want != clear_argmax(le, V);
                } else if (pd > 0.3) { /* would the weights swapped choose otherwise? */
                    for (int v = 0; v < V; v++) f[v] = log(pd * exp(lb[v]) + (1 - pd) * exp(le[v]));
                    int alt = clear_argmax(f, V);
                    n_own += alt >= 0 && alt != want;
                }
            }
        }
        CHECKF(n_checked >= 60, "%s: only %d of 72 tokens could be checked", duet_policy_name(pols[pi]),
               n_checked);
        CHECKF(n_own > 0, "%s: no token tells the formula from its likely mistakes",
               duet_policy_name(pols[pi]));
    }
    duet_session_free(sb);
    duet_session_free(se);
    duet_session_free(sa);
    free(lb);
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
    duet_model_free(a);
}

/* Prompt ids outside the vocabulary are refused before they reach an embedding lookup. */
TEST(collab_start_refuses_ids_outside_the_vocabulary) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0));
    REQUIRE(b);
    duet_collab *c = NULL;
    duet_error err = {0};
    duet_collab_params p = {.policy = DUET_POLICY_BASE};
    REQUIRE(!duet_collab_new(b, NULL, NULL, NULL, &p, &c, &err));
    const int V = duet_model_hparams(b)->n_vocab;
    const int32_t bad[][3] = {{1, -1, 5}, {1, 5, V}, {1, INT32_MIN, 5}};
    for (int k = 0; k < 3; k++) {
        err.msg[0] = 0;
        int rc = duet_collab_start(c, bad[k], 3, &err);
        CHECKF(rc == DUET_ERR_RANGE && strstr(err.msg, "outside"), "case %d: rc %d, \"%s\"", k, rc,
               err.msg);
    }
    const int32_t edge[3] = {1, 0, V - 1}; /* the first and last ids are fine */
    CHECKF(!duet_collab_start(c, edge, 3, &err), "%s", err.msg);
    duet_collab_free(c);
    duet_model_free(b);
}

/* A token chosen as EOS ends the generation without being emitted, whichever model chose it.
 * The case was found by scanning greedy runs of the seed-25 fixture: after prompt 10 its 4th
 * greedy token is EOS (the test confirms that from a session of its own first). */
TEST(collab_eos_ends_the_generation) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 25, 0));
    REQUIRE(b);
    const int V = duet_model_hparams(b)->n_vocab, eos = duet_token_eos(b);
    int32_t pr[16 + 8];
    int np;
    prompt_of(10, pr, &np);
    duet_session *s = NULL;
    duet_error err = {0};
    REQUIRE(!duet_session_new(b, NULL, &s, &err) && !duet_session_eval(s, pr, np, 0, &err));
    int32_t greedy[4];
    for (int i = 0; i < 4; i++) {
        greedy[i] = duet_argmax(duet_session_logits(s, -1), V);
        if (i < 3) REQUIRE(greedy[i] != eos && !duet_session_eval(s, &greedy[i], 1, 0, &err));
    }
    duet_session_free(s);
    REQUIRE(greedy[3] == eos);
    static const duet_policy pols[] = {DUET_POLICY_BASE, DUET_POLICY_EXPERT};
    for (int k = 0; k < 2; k++) {
        duet_collab_params p = {.policy = pols[k]};
        run_out x;
        REQUIRE(!decode(b, pols[k] == DUET_POLICY_EXPERT ? b : NULL, NULL, NULL, p, pr, np, 20, &x));
        CHECKF(x.n == 3 && !memcmp(x.ids, greedy, sizeof(int32_t) * 3), "%s: %d tokens before the end",
               duet_policy_name(pols[k]), x.n);
        CHECKF(x.eos_src == (k ? DUET_SRC_EXPERT : DUET_SRC_BASE), "%s: EOS from source %d",
               duet_policy_name(pols[k]), x.eos_src);
        CHECK_EQ_INT(x.st.n_generated, 3);
    }
    duet_model_free(b);
}

/* The contrastive scores against a numpy oracle of the official formulas (cd, cd_v2) and of
 * the CD paper's rule (contrastive), on random logits: the same masked entries, the same
 * argmax, values within float rounding. cd_v2 and contrastive must mask different entries in
 * some case, or the comparison would not tell the two rules apart. */
TEST(collab_contrastive_scores_match_official_formulas) {
    if (system("/usr/bin/python3 -c 'import numpy' 2>/dev/null")) SKIP("python3-numpy missing (make deps installs it)");
    enum { NMAX = 300 };
    static float se[NMAX], sb[NMAX], got[NMAX];
    uint64_t rng = 9;
    int differ = 0;
    const int pols[3] = {DUET_POLICY_CD, DUET_POLICY_CD_V2, DUET_POLICY_CONTRASTIVE};
    for (int c = 0; c < 6; c++) {
        int n = c < 3 ? 50 : NMAX;
        float alpha = c % 3 == 0 ? 0.1f : c % 3 == 1 ? 0.5f : 0.01f, beta = c % 2 ? 0.5f : 1.0f;
        for (int i = 0; i < n; i++) {
            se[i] = (float)((duet_splitmix64(&rng) >> 40) * 0x1.0p-24) * 8 - 4;
            sb[i] = (float)((duet_splitmix64(&rng) >> 40) * 0x1.0p-24) * 8 - 4;
        }
        const char *path = test_path(test_tmpdir(), "cd-logits.bin");
        FILE *f = fopen(path, "wb");
        REQUIRE(f);
        fwrite(&n, 4, 1, f), fwrite(&alpha, 4, 1, f), fwrite(&beta, 4, 1, f);
        fwrite(se, 4, (size_t)n, f), fwrite(sb, 4, (size_t)n, f);
        fclose(f);
        char cmd[700];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/oracle/contrastive_ref.py '%s'", path);
        FILE *p = popen(cmd, "r");
        REQUIRE(p);
        static double ref[3][NMAX];
        int k = 0;
        char tok[64];
        while (k < 3 * n && fscanf(p, "%63s", tok) == 1) ref[k / n][k % n] = strtod(tok, NULL), k++;
        CHECK_EQ_INT(pclose(p), 0);
        REQUIRE(k == 3 * n);
        int masks[3] = {0};
        for (int q = 0; q < 3; q++) {
            REQUIRE(!duet_contrastive_scores(pols[q], se, sb, n, alpha, beta, got));
            int best = duet_argmax(got, n), rbest = 0;
            for (int i = 0; i < n; i++) {
                if (ref[q][i] > ref[q][rbest]) rbest = i;
                int mg = isinf(got[i]) && got[i] < 0, mr = isinf(ref[q][i]) && ref[q][i] < 0;
                masks[q] += mr;
                CHECKF(mg == mr && (mr || fabs(got[i] - ref[q][i]) <= 1e-5 * (1 + fabs(ref[q][i]))),
                       "case %d, %s, entry %d: %g vs %g", c, duet_policy_name(pols[q]), i, got[i], ref[q][i]);
            }
            CHECKF(best == rbest, "case %d, %s: argmax %d vs %d", c, duet_policy_name(pols[q]), best, rbest);
        }
        differ += masks[1] != masks[2];
    }
    CHECKF(differ > 0, "cd_v2 and contrastive masked alike in every case");
    float x[2] = {0, 1};
    CHECK_EQ_INT(duet_contrastive_scores(DUET_POLICY_COLLM, x, x, 2, 0.1f, 0.5f, got), DUET_ERR_ARG);
}

/* ---- importing an official Co-LLM checkpoint ------------------------------------------------
 * A synthetic checkpoint in the official layout: a base's vocabulary with "<pad>" and
 * "<|defer|>" appended, and two more rows in the embedding and output matrices (the defer
 * row random, so the switch fires on some tokens). The oracle decodes the checkpoint itself by
 * the official rule: defer iff sigmoid(logit of <|defer|>) > eta; the base's token is the
 * argmax over the expert's ids; a deferred token is the expert's argmax. duet's collm policy on
 * the imported base and head must emit the same tokens. */
static const char *write_checkpoint(const char *src, const char *name, int with_defer) {
    gguf_file *f = NULL;
    duet_error err = {0};
    if (gguf_open(src, &f, &err)) return NULL;
    gguf_writer *w = gguf_writer_new();
    const gguf_kv *toks = gguf_find(f, "tokenizer.ggml.tokens");
    uint64_t V = toks->arr_n;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (!strcmp(kv->key, "general.alignment")) continue;
        if (!strcmp(kv->key, "tokenizer.ggml.tokens")) {
            const char **s = malloc((V + 2) * sizeof *s);
            for (uint64_t k = 0; k < V; k++) s[k] = strndup(kv->arr_str[k].ptr, kv->arr_str[k].len);
            s[V] = "<pad>";
            s[V + 1] = with_defer ? "<|defer|>" : "<|other|>";
            gguf_set_arr_str(w, kv->key, s, NULL, V + 2);
            for (uint64_t k = 0; k < V; k++) free((void *)s[k]);
            free(s);
        } else if (!strcmp(kv->key, "tokenizer.ggml.scores") || !strcmp(kv->key, "tokenizer.ggml.token_type")) {
            size_t el = 4;
            char *d = calloc(V + 2, el);
            memcpy(d, kv->arr_data, V * el);
            if (kv->arr_type == GGUF_TYPE_INT32) ((int32_t *)d)[V] = ((int32_t *)d)[V + 1] = 3;
            gguf_set_arr(w, kv->key, kv->arr_type, d, V + 2);
            free(d);
        } else gguf_set_kv_from(w, kv);
    }
    uint64_t rng = 5;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (t->n_dims == 2 && t->ne[1] == (int64_t)V && t->type == 0) { /* embedding / output */
            int64_t E = t->ne[0], ne[2] = {E, (int64_t)V + 2};
            float *d = malloc((size_t)(E * (int64_t)(V + 2)) * sizeof *d);
            memcpy(d, t->data, (size_t)(E * (int64_t)V) * sizeof *d);
            for (int64_t k = E * (int64_t)V; k < E * (int64_t)(V + 2); k++)
                d[k] = (float)((duet_splitmix64(&rng) >> 40) * 0x1.0p-24) - 0.5f;
            gguf_add_tensor(w, t->name, 0, 2, ne, d, &err);
            free(d);
        } else gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err);
    }
    const char *path = test_path(test_tmpdir(), name);
    int rc = gguf_write(w, path, &err);
    gguf_writer_free(w);
    gguf_close(f);
    if (rc) test_fail_at(__FILE__, __LINE__, "checkpoint: %s", err.msg);
    return rc ? NULL : path;
}

TEST(collab_head_import_decides_like_the_official_rule) {
    const char *bsrc = fixture_random(DT_F32, 21, 0), *epath = fixture_random(DT_F32, 22, 0);
    REQUIRE(bsrc && epath);
    const char *ckpt = write_checkpoint(bsrc, "colm-ckpt.gguf", 1);
    const char *nodefer = write_checkpoint(bsrc, "colm-nodefer.gguf", 0);
    REQUIRE(ckpt && nodefer);
    duet_model *e = fixture_load(epath), *ck = fixture_load(ckpt);
    REQUIRE(e && ck);
    int V = duet_model_hparams(e)->n_vocab, n_gen = 40;
    float eta = 0.5f;
    int32_t prompt[4] = {1, 17, 230, 45}, want[64], n_defer = 0;
    duet_session *sc = NULL, *se = NULL;
    duet_error err = {0};
    REQUIRE(!duet_session_new(ck, NULL, &sc, &err) && !duet_session_new(e, NULL, &se, &err));
    REQUIRE(!duet_session_eval(sc, prompt, 4, 0, &err) && !duet_session_eval(se, prompt, 4, 0, &err));
    for (int k = 0; k < n_gen; k++) { /* the oracle: the official rule on the checkpoint */
        const float *lc = duet_session_logits(sc, -1), *le = duet_session_logits(se, -1);
        int defer = 1.0 / (1.0 + exp(-(double)lc[V + 1])) > eta;
        want[k] = defer ? duet_argmax(le, V) : duet_argmax(lc, V);
        n_defer += defer;
        REQUIRE(!duet_session_eval(sc, &want[k], 1, 0, &err) && !duet_session_eval(se, &want[k], 1, 0, &err));
    }
    CHECKF(n_defer > 2 && n_defer < n_gen - 2, "the switch fired on %d of %d tokens: the test "
           "needs both kinds", n_defer, n_gen);
    const char *bout = test_path(test_tmpdir(), "colm-base.gguf"), *hout = test_path(test_tmpdir(), "colm-head.gguf");
    CHECKF(!duet_head_import(ckpt, e, bout, hout, &err), "import: %s", err.msg);
    REQUIRE(!test_failed_now());
    duet_model *b = fixture_load(bout);
    duet_head *h = NULL;
    REQUIRE(b && !duet_head_load(hout, b, &h, &err));
    CHECK_EQ_INT(duet_model_hparams(b)->n_vocab, V);
    duet_collab_params cp = {.policy = DUET_POLICY_COLLM, .threshold = eta};
    duet_collab *c = NULL;
    REQUIRE(!duet_collab_new(b, e, NULL, h, &cp, &c, &err) && !duet_collab_start(c, prompt, 4, &err));
    int same = 1;
    for (int k = 0; k < n_gen; k++) {
        duet_collab_token t;
        REQUIRE(duet_collab_step(c, &t, &err) == DUET_OK);
        if (t.id != want[k]) {
            test_fail_at(__FILE__, __LINE__, "token %d: %d, the official rule gives %d", k, t.id, want[k]);
            same = 0;
            break;
        }
    }
    CHECK(same);
    /* refused by name: no <|defer|>; a vocabulary not larger than the expert's */
    CHECK(duet_head_import(nodefer, e, bout, hout, &err) < 0 && strstr(err.msg, "<|defer|>"));
    duet_model *small = fixture_load(fixture_arch("llama", 0, 0, 0, 0)); /* 300 tokens */
    const char *ck300 = small ? write_checkpoint(fixture_arch("llama", 0, 0, 0, 0), "colm-300.gguf", 1) : NULL;
    CHECK(ck300 && duet_head_import(ck300, e, bout, hout, &err) < 0 && strstr(err.msg, "302 tokens"));
    duet_model_free(small);
    duet_collab_free(c);
    duet_head_free(h);
    duet_model_free(b);
    duet_session_free(sc), duet_session_free(se);
    duet_model_free(e), duet_model_free(ck);
}
