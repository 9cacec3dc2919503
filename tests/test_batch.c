/* test_batch.c: several sessions in one forward pass (duet_session_eval_batch and friends)
 * against each session decoded alone. The oracle is the single-session path, which other
 * tests pin to numpy references; here every logit and hidden value must be the same bits,
 * on every architecture fixture and matrix type, for 1 to 8 sequences of different lengths
 * that join the batch at different steps (a prompt's rows then share a pass with the others'
 * one-token decodes), with n_batch small enough that a batch spans several passes. */
#include <stdlib.h>
#include <string.h>

#include "duet.h"
#include "fixtures.h"
#include "test.h"

#define MAX_SEQ 8
#define MAX_TOK 40

typedef struct seq_plan {
    int n_prompt, n_decode, join; /* join: the batch step at which the prompt arrives */
    int32_t toks[MAX_TOK];
} seq_plan;

static void plan_seqs(seq_plan *p, int n, int V) {
    for (int i = 0; i < n; i++) {
        p[i].n_prompt = 1 + (i * 7 + 3) % 19;
        p[i].n_decode = 2 + (i * 5) % 9;
        p[i].join = i % 3;
        for (int t = 0; t < p[i].n_prompt + p[i].n_decode; t++)
            p[i].toks[t] = (int32_t)((i * 37 + t * 11 + 5 + t * t) % V);
    }
}

/* Rows of logits (and hidden states) in the order a sequence produces them: every prompt
 * position, then one per decoded token. */
typedef struct seq_out { float *logits, *hidden; int rows; } seq_out;

static int record(seq_out *o, const duet_session *s, int rows, int V, int E) {
    for (int r = 0; r < rows; r++) {
        const float *l = duet_session_logits(s, rows > 1 ? r : -1);
        const float *h = duet_session_hidden(s, rows > 1 ? r : -1);
        if (!l || !h) return -1;
        memcpy(o->logits + (size_t)o->rows * V, l, (size_t)V * sizeof(float));
        memcpy(o->hidden + (size_t)o->rows * E, h, (size_t)E * sizeof(float));
        o->rows++;
    }
    return 0;
}

static void alone(duet_model *m, const seq_plan *p, seq_out *o, int V, int E) {
    duet_error err = {0};
    duet_session *s = NULL;
    duet_session_params sp = {.n_ctx = 64, .n_batch = 8};
    REQUIRE(!duet_session_new(m, &sp, &s, &err));
    REQUIRE(!duet_session_eval(s, p->toks, p->n_prompt, 1, &err));
    REQUIRE(!record(o, s, p->n_prompt, V, E));
    for (int t = 0; t < p->n_decode; t++) {
        REQUIRE(!duet_session_eval(s, p->toks + p->n_prompt + t, 1, 0, &err));
        REQUIRE(!record(o, s, 1, V, E));
    }
    duet_session_free(s);
}

/* All sequences through the batch calls: at step k, sequences that join at k bring their
 * whole prompt (all logits), running ones one token; odd steps read the pending logits
 * through duet_session_logits_batch, even ones one by one. */
static void together(duet_model *m, const seq_plan *p, int n, seq_out *o, int V, int E) {
    duet_error err = {0};
    duet_session *s[MAX_SEQ] = {0};
    int fed[MAX_SEQ] = {0};
    duet_session_params sp = {.n_ctx = 64, .n_batch = 8};
    for (int i = 0; i < n; i++) REQUIRE(!duet_session_new(m, &sp, &s[i], &err));
    for (int step = 0;; step++) {
        duet_batch_seq b[MAX_SEQ];
        duet_session *pend[MAX_SEQ];
        int k = 0, np = 0, idx[MAX_SEQ];
        for (int i = 0; i < n; i++) {
            int total = p[i].n_prompt + p[i].n_decode;
            if (step < p[i].join || fed[i] == total) continue;
            int first = fed[i] == 0, c = first ? p[i].n_prompt : 1;
            b[k] = (duet_batch_seq){.session = s[i], .tokens = p[i].toks + fed[i], .n = c,
                                    .all_logits = first};
            idx[k++] = i;
            fed[i] += c;
        }
        if (!k) break;
        REQUIRE(!duet_session_eval_batch(b, k, &err));
        for (int j = 0; j < k; j++)
            if (!b[j].all_logits) pend[np++] = s[idx[j]];
        if (step & 1) duet_session_logits_batch(pend, np);
        for (int j = 0; j < k; j++) REQUIRE(!record(&o[idx[j]], s[idx[j]], b[j].n, V, E));
    }
    for (int i = 0; i < n; i++) duet_session_free(s[i]);
}

static int same_bits(const seq_out *a, const seq_out *b, int V, int E) {
    return a->rows == b->rows &&
           !memcmp(a->logits, b->logits, (size_t)a->rows * V * sizeof(float)) &&
           !memcmp(a->hidden, b->hidden, (size_t)a->rows * E * sizeof(float));
}

static void check_model(const char *path, const char *what) {
    duet_model *m = fixture_load(path);
    REQUIRE(m);
    int V = duet_model_hparams(m)->n_vocab, E = duet_model_hparams(m)->n_embd;
    seq_plan p[MAX_SEQ];
    plan_seqs(p, MAX_SEQ, V);
    static seq_out ref[MAX_SEQ], got[MAX_SEQ];
    for (int i = 0; i < MAX_SEQ; i++) {
        for (seq_out *o = &ref[i]; o; o = o == &ref[i] ? &got[i] : NULL) {
            o->logits = malloc((size_t)MAX_TOK * V * sizeof(float));
            o->hidden = malloc((size_t)MAX_TOK * E * sizeof(float));
            o->rows = 0;
        }
        alone(m, &p[i], &ref[i], V, E);
    }
    for (int n = 1; n <= MAX_SEQ && !test_failed_now(); n++) {
        for (int i = 0; i < n; i++) got[i].rows = 0;
        together(m, p, n, got, V, E);
        for (int i = 0; i < n; i++)
            CHECKF(same_bits(&ref[i], &got[i], V, E), "%s: %d sequences together: sequence %d "
                   "(%d rows, %d expected) differs from decoding it alone", what, n, i,
                   got[i].rows, ref[i].rows);
    }
    for (int i = 0; i < MAX_SEQ; i++) {
        free(ref[i].logits), free(ref[i].hidden);
        free(got[i].logits), free(got[i].hidden);
    }
    duet_model_free(m);
}

TEST(batch_equals_alone_every_arch_and_type) {
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "phi3", "gemma2",
                                        "phi3-longrope"};
    static const int types[] = {0 /* F32 */, 8 /* Q8_0 */, 2 /* Q4_0 */};
    char what[64];
    for (size_t a = 0; a < sizeof archs / sizeof *archs; a++)
        for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
            snprintf(what, sizeof what, "%s type %d", archs[a], types[t]);
            check_model(fixture_arch(archs[a], types[t], 0, 0, 0), what);
        }
}

/* Q4_K needs rows of 256: a wider llama and qwen2 of their own. */
TEST(batch_equals_alone_q4_k) {
    static const char *const archs[] = {"llama", "qwen2"};
    for (int a = 0; a < 2; a++) {
        const char *path = test_path(test_tmpdir(), archs[a][0] == 'l' ? "q4k-llama.gguf"
                                                                      : "q4k-qwen2.gguf");
        duet_make_model_params mp = {.arch = archs[a], .n_embd = 256, .n_layer = 2, .n_head = 4,
                                     .n_head_kv = 2, .n_ff = 512, .n_vocab = 300, .n_ctx = 64,
                                     .type = 12 /* Q4_K */, .output_type = -1, .seed = 5,
                                     .weight_std = 0.1f};
        duet_error err = {0};
        REQUIRE(!duet_make_model(&mp, path, &err));
        check_model(path, archs[a]);
    }
}

/* sync_batch equals sync on each: shared prefixes kept, diverged suffixes re-evaluated,
 * a timeline already in place left alone. */
TEST(batch_sync_equals_sync) {
    duet_model *m = fixture_load(fixture_arch("llama", 0, 0, 0, 0));
    REQUIRE(m);
    int V = duet_model_hparams(m)->n_vocab;
    duet_error err = {0};
    duet_session *a[3], *b[3];
    int32_t t[3][20];
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 20; k++) t[i][k] = (int32_t)((k * 13 + i * 7 + 1) % V);
    for (int i = 0; i < 3; i++) {
        REQUIRE(!duet_session_new(m, NULL, &a[i], &err));
        REQUIRE(!duet_session_new(m, NULL, &b[i], &err));
        REQUIRE(!duet_session_eval(a[i], t[i], 12, 0, &err)); /* same history in both */
        REQUIRE(!duet_session_eval(b[i], t[i], 12, 0, &err));
    }
    t[1][10] = (t[1][10] + 1) % V; /* diverges inside the timeline */
    const int32_t *tp[3] = {t[0], t[1], t[2]};
    int n[3] = {20, 15, 12}; /* grows; diverged; already there */
    for (int i = 0; i < 3; i++) REQUIRE(!duet_session_sync(a[i], t[i], n[i], &err));
    REQUIRE(!duet_session_sync_batch(b, tp, n, 3, &err));
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(duet_session_n_past(b[i]), n[i]);
        CHECK_EQ_INT(duet_session_n_evaluated(b[i]), duet_session_n_evaluated(a[i]));
        CHECKF(!memcmp(duet_session_logits(a[i], -1), duet_session_logits(b[i], -1),
                       (size_t)V * sizeof(float)), "sync_batch sequence %d differs from sync", i);
    }
    for (int i = 0; i < 3; i++) duet_session_free(a[i]), duet_session_free(b[i]);
    duet_model_free(m);
}

/* Bad batches are refused before anything is evaluated. */
TEST(batch_bad_args_evaluate_nothing) {
    duet_model *m = fixture_load(fixture_arch("llama", 0, 0, 0, 0));
    duet_model *o = fixture_load(fixture_arch("qwen2", 0, 0, 0, 0));
    REQUIRE(m && o);
    duet_error err = {0};
    duet_session *s1, *s2, *so;
    duet_session_params sp = {.n_ctx = 16};
    REQUIRE(!duet_session_new(m, &sp, &s1, &err) && !duet_session_new(m, &sp, &s2, &err));
    REQUIRE(!duet_session_new(o, &sp, &so, &err));
    int32_t ok[16] = {1, 2, 3, 4}, bad[2] = {1, 300};
    struct { duet_batch_seq b[2]; int n, rc; const char *msg; } cases[] = {
        {{{s1, ok, 3, 0}, {s1, ok, 2, 0}}, 2, DUET_ERR_ARG, "same session"},
        {{{s1, ok, 3, 0}, {so, ok, 2, 0}}, 2, DUET_ERR_ARG, "model"},
        {{{s1, ok, 3, 0}, {s2, bad, 2, 0}}, 2, DUET_ERR_RANGE, "token id 300"},
        {{{s1, ok, 3, 0}, {s2, ok, 17, 0}}, 2, DUET_ERR_RANGE, "context full"},
        {{{s1, ok, 0, 0}, {s2, ok, 1, 0}}, 2, DUET_ERR_ARG, "0 tokens"},
        {{{s1, ok, 1, 0}}, 0, DUET_ERR_ARG, "batch of 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        err.msg[0] = 0;
        int rc = duet_session_eval_batch(cases[i].b, cases[i].n, &err);
        CHECKF(rc == cases[i].rc && strstr(err.msg, cases[i].msg),
               "case %zu: rc %d, message '%s' (want %d, '%s')", i, rc, err.msg, cases[i].rc,
               cases[i].msg);
        CHECK_EQ_INT(duet_session_n_past(s1), 0);
        CHECK_EQ_INT(duet_session_n_past(s2), 0);
    }
    /* exactly full: 16 of 16 positions */
    duet_batch_seq full[2] = {{s1, ok, 16, 0}, {s2, ok, 16, 1}};
    CHECK(!duet_session_eval_batch(full, 2, &err));
    CHECK_EQ_INT(duet_session_n_past(s1), 16);
    duet_session_free(s1), duet_session_free(s2), duet_session_free(so);
    duet_model_free(m), duet_model_free(o);
}

/* The KV cache starts small and grows as the timeline does: a token-by-token decode (the
 * cache copied to a larger one twice on the way, at 256 and 512 positions, while it holds
 * the timeline) gives the bits of one prefill (grown before anything is written). */
TEST(batch_kv_cache_grows_with_use) {
    duet_model *m = fixture_load(fixture_random(0, 5, 1));
    REQUIRE(m);
    const duet_hparams *hp = duet_model_hparams(m);
    int V = hp->n_vocab, N = 600;
    size_t per_pos = (size_t)hp->n_layer * hp->n_head_kv * (hp->n_embd / hp->n_head) * 2 * 4;
    duet_error err = {0};
    duet_session *a = NULL, *b = NULL;
    duet_session_params sp = {.n_ctx = 4096, .n_batch = 1024};
    REQUIRE(!duet_session_new(m, &sp, &a, &err) && !duet_session_new(m, &sp, &b, &err));
    CHECKF(duet_session_kv_bytes(b) <= 256 * per_pos, "a new session's cache holds %zu bytes, "
           "more than 256 positions (%zu)", duet_session_kv_bytes(b), 256 * per_pos);
    int32_t *toks = malloc((size_t)N * sizeof *toks);
    for (int i = 0; i < N; i++) toks[i] = (int32_t)((i * 131 + 7) % V);
    REQUIRE(!duet_session_eval(a, toks, N, 1, &err));
    for (int i = 0; i < N && !test_failed_now(); i++) {
        REQUIRE(!duet_session_eval(b, &toks[i], 1, 0, &err));
        CHECKF(!memcmp(duet_session_logits(a, i), duet_session_logits(b, -1), (size_t)V * 4),
               "position %d: decode through a growing cache differs from one prefill", i);
    }
    size_t kv = duet_session_kv_bytes(b);
    CHECKF(kv >= (size_t)N * per_pos && kv <= 1024 * per_pos, "after %d tokens the cache holds "
           "%zu bytes (%zu per position; n_ctx 4096 would be %zu)", N, kv, per_pos, 4096 * per_pos);
    free(toks);
    duet_session_free(a), duet_session_free(b);
    duet_model_free(m);
}
