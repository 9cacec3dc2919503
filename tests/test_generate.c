/* test_generate.c: the library's generation loop (duet_gen / duet_generate), the one every
 * generating command and the server use. The oracle is the decoder driven by hand: the ids
 * of duet_collab_step, each rendered with duet_token_to_piece into a buffer far larger than
 * any piece, concatenated; where the answer must end is worked out from that text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/utf8.h"
#include "format/quant.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

#define MAXTOK 96
#define BIGPIECE 65536

/* What the decoder emits, stepped by hand. */
typedef struct ref {
    int32_t ids[MAXTOK];
    size_t end[MAXTOK];  /* text offset where token i's piece ends */
    int src[MAXTOK];
    int n, stop_rc;      /* tokens; the rc that ended it (DUET_OK: max reached) */
    duet_buf text;       /* the pieces concatenated, bytes as given */
} ref;

static duet_collab *start(duet_model *b, duet_model *e, const duet_head *h,
                          const duet_collab_params *p, const int32_t *prompt, int np) {
    duet_collab *c = NULL;
    duet_error err = {0};
    if (duet_collab_new(b, e, NULL, h, p, &c, &err) || duet_collab_start(c, prompt, np, &err)) {
        test_fail_at(__FILE__, __LINE__, "collab: %s", err.msg);
        duet_collab_free(c);
        return NULL;
    }
    return c;
}

static int reference(duet_model *b, duet_model *e, const duet_head *h, const duet_collab_params *p,
                     const int32_t *prompt, int np, int max, ref *r) {
    memset(r, 0, sizeof *r);
    duet_buf_add(&r->text, "", 0);
    duet_collab *c = start(b, e, h, p, prompt, np);
    char *piece = malloc(BIGPIECE);
    if (!c || !piece) { duet_collab_free(c); free(piece); return -1; }
    int32_t prev = prompt[np - 1];
    duet_error err = {0};
    while (r->n < max && r->n < MAXTOK) {
        duet_collab_token t;
        r->stop_rc = duet_collab_step(c, &t, &err);
        if (r->stop_rc) break;
        int len = duet_token_to_piece(b, prev, t.id, piece, BIGPIECE);
        if (len > 0) duet_buf_add(&r->text, piece, (size_t)len);
        prev = t.id;
        r->ids[r->n] = t.id;
        r->src[r->n] = t.source;
        r->end[r->n++] = r->text.n;
    }
    free(piece);
    duet_collab_free(c);
    return r->stop_rc < 0 && r->stop_rc != DUET_ERR_RANGE ? -1 : 0;
}

/* What the callback sees, token by token. */
typedef struct seen {
    int32_t ids[MAXTOK];
    int n, bad_piece, not_prefix, ready_back, invalid_utf8;
    size_t last_ready;
    const ref *r;
    int utf8;
} seen;

static int watch(void *ud, const duet_gen *g, const duet_collab_token *t) {
    seen *s = ud;
    size_t pl, tl, ready = duet_gen_ready(g);
    const char *piece = duet_gen_piece(g, &pl), *text = duet_gen_text(g, &tl);
    if (s->n < MAXTOK) s->ids[s->n] = t->id;
    if (s->r && s->n < s->r->n) { /* the piece is exactly the oracle's bytes for this token */
        size_t from = s->n ? s->r->end[s->n - 1] : 0;
        if (pl != s->r->end[s->n] - from || memcmp(piece, s->r->text.p + from, pl)) s->bad_piece++;
        if (!s->utf8 && (tl != s->r->end[s->n] || memcmp(text, s->r->text.p, tl))) s->not_prefix++;
    }
    if (ready < s->last_ready || ready > tl) s->ready_back++;
    s->last_ready = ready;
    if (duet_utf8_check(text, tl) != tl) s->invalid_utf8++;
    s->n++;
    return 0;
}

static int32_t k_prompt[] = {1, 17, 230, 45, 9};
#define NP ((int)(sizeof k_prompt / sizeof *k_prompt))

/* Greedy base and collm answers: the same ids, pieces, sources and text as the decoder
 * stepped by hand, ending at the token limit. */
TEST(generate_equals_decoder_steps_and_pieces) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0));
    duet_model *e = fixture_load(fixture_random(DT_F32, 22, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 5, 40.0f);
    REQUIRE(h);
    for (int pol = 0; pol < 2; pol++) {
        duet_collab_params p = {.policy = pol ? DUET_POLICY_COLLM : DUET_POLICY_BASE, .threshold = 0.5f};
        ref r;
        REQUIRE(!reference(b, pol ? e : NULL, pol ? h : NULL, &p, k_prompt, NP, 40, &r));
        REQUIRE(r.n == 40);
        duet_collab *c = start(b, pol ? e : NULL, pol ? h : NULL, &p, k_prompt, NP);
        REQUIRE(c);
        duet_gen_params gp = {.max_tokens = 40};
        duet_gen *g = NULL;
        duet_error err = {0};
        seen s = {.r = &r};
        CHECK_EQ_INT(duet_generate(c, &gp, watch, &s, &g, &err), DUET_OK);
        REQUIRE(g);
        size_t len;
        const char *text = duet_gen_text(g, &len);
        CHECK_EQ_INT(len, r.text.n);
        CHECK(len == r.text.n && !memcmp(text, r.text.p, len));
        CHECK_EQ_INT(duet_gen_n_tokens(g), 40);
        CHECK_EQ_INT(duet_gen_end(g), DUET_GEN_LIMIT);
        CHECK_EQ_INT(s.n, 40);
        CHECK(!memcmp(s.ids, r.ids, sizeof(int32_t) * 40));
        CHECK_EQ_INT(s.bad_piece, 0);
        CHECK_EQ_INT(s.not_prefix, 0);
        const unsigned char *src = duet_gen_sources(g);
        int bad_src = 0, n_expert = 0;
        for (int i = 0; i < r.n; i++)
            for (size_t j = i ? r.end[i - 1] : 0; j < r.end[i]; j++) {
                bad_src += src[j] != r.src[i];
                n_expert += src[j] == DUET_SRC_EXPERT;
            }
        CHECK_EQ_INT(bad_src, 0);
        if (pol) CHECKF(n_expert > 0, "the collm answer has no expert byte: sources are untested");
        /* after the end a step adds nothing */
        CHECK_EQ_INT(duet_gen_step(g, NULL, &err), DUET_EOS);
        CHECK_EQ_INT(duet_gen_n_tokens(g), 40);
        duet_gen_free(g);
        duet_collab_free(c);
        free(r.text.p);
    }
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}

/* Two stop texts complete in the same token; the answer ends at the one that begins earlier
 * in the text although it is second in the list (a scan in list order cuts later). */
TEST(generate_stop_earliest_in_text_not_first_in_list) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0));
    REQUIRE(b);
    duet_collab_params p = {.policy = DUET_POLICY_BASE};
    ref r;
    REQUIRE(!reference(b, NULL, NULL, &p, k_prompt, NP, 60, &r));
    const char *T = r.text.p;
    /* s1 = T[bb, e) whose first occurrence is at bb; s2 = T[bb-1, e) then first occurs at
     * bb-1 (an earlier s2 would put s1 earlier too). e is the end of token k's piece. */
    int k = -1;
    size_t e = 0, bb = 0;
    for (int i = 5; i < r.n && k < 0; i++) {
        e = r.end[i];
        for (bb = e - 1; bb >= 2 && bb + 12 > e; bb--) {
            char *s1 = strndup(T + bb, e - bb);
            int first = (size_t)(strstr(T, s1) - T) == bb;
            free(s1);
            if (first && r.end[i - 1] < e) { k = i; break; }
        }
    }
    REQUIRE(k >= 0);
    char *s1 = strndup(T + bb, e - bb), *s2 = strndup(T + bb - 1, e - bb + 1);
    const char *stops[2] = {s1, s2};
    duet_collab *c = start(b, NULL, NULL, &p, k_prompt, NP);
    REQUIRE(c);
    duet_gen_params gp = {.max_tokens = 60, .stops = stops, .n_stops = 2};
    duet_gen *g = NULL;
    duet_error err = {0};
    seen s = {0};
    CHECK_EQ_INT(duet_generate(c, &gp, watch, &s, &g, &err), DUET_OK);
    size_t len;
    const char *text = duet_gen_text(g, &len);
    CHECK_EQ_INT(len, bb - 1);
    CHECK(len == bb - 1 && !memcmp(text, T, len));
    CHECK_EQ_INT(duet_gen_end(g), DUET_GEN_STOP);
    CHECK_EQ_INT(duet_gen_n_tokens(g), k + 1); /* the token that completed the stop counts */
    CHECK_EQ_INT(s.ready_back, 0);             /* what may be shown never shrinks */
    duet_gen_free(g);
    /* a stop text that never occurs changes nothing */
    duet_collab_free(c);
    c = start(b, NULL, NULL, &p, k_prompt, NP);
    REQUIRE(c);
    const char *none[1] = {"\x01never\x02"};
    gp = (duet_gen_params){.max_tokens = 60, .stops = none, .n_stops = 1};
    CHECK_EQ_INT(duet_generate(c, &gp, NULL, NULL, &g, &err), DUET_OK);
    text = duet_gen_text(g, &len);
    CHECK(len == r.text.n && !memcmp(text, T, len));
    CHECK_EQ_INT(duet_gen_end(g), DUET_GEN_LIMIT);
    duet_gen_free(g);
    duet_collab_free(c);
    free(s1);
    free(s2);
    free(r.text.p);
    duet_model_free(b);
}

/* Sampled answers of a vocabulary with 256 byte tokens split characters across pieces. In
 * utf8 mode the text is valid UTF-8 after every token and equals the whole answer's bytes made
 * valid in one go (duet_utf8_append, hold 0); in byte mode it is the bytes as given. */
TEST(generate_utf8_mode_holds_split_characters) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0));
    REQUIRE(b);
    int split_seen = 0, invalid_seen = 0;
    for (uint64_t seed = 1; seed <= 6; seed++) {
        duet_collab_params p = {.policy = DUET_POLICY_BASE, .sampling = {.temp = 3.0f, .seed = seed}};
        ref r;
        REQUIRE(!reference(b, NULL, NULL, &p, k_prompt, NP, 64, &r));
        for (int i = 0; i + 1 < r.n; i++) {
            size_t from = i ? r.end[i - 1] : 0;
            /* a piece ending in a valid but unfinished character that the next piece finishes */
            size_t j = from;
            while (j < r.end[i] && duet_utf8_char(r.text.p + j, r.end[i] - j) > 0)
                j += (size_t)duet_utf8_char(r.text.p + j, r.end[i] - j);
            if (j < r.end[i] && duet_utf8_char(r.text.p + j, r.end[i] - j) < 0 &&
                duet_utf8_char(r.text.p + j, r.end[i + 1] - j) > 0)
                split_seen++;
        }
        invalid_seen += duet_utf8_check(r.text.p, r.text.n) < r.text.n;
        duet_buf want = {0};
        REQUIRE(!duet_utf8_append(&want, r.text.p, r.text.n, 0, NULL));
        for (int utf8 = 0; utf8 < 2; utf8++) {
            duet_collab *c = start(b, NULL, NULL, &p, k_prompt, NP);
            REQUIRE(c);
            duet_gen_params gp = {.max_tokens = 64, .utf8 = utf8};
            duet_gen *g = NULL;
            duet_error err = {0};
            seen s = {.r = &r, .utf8 = utf8};
            CHECK_EQ_INT(duet_generate(c, &gp, watch, &s, &g, &err), DUET_OK);
            size_t len;
            const char *text = duet_gen_text(g, &len);
            const duet_buf *w = utf8 ? &want : &r.text;
            CHECKF(len == w->n && !memcmp(text, w->p, len), "seed %d utf8 %d: text differs",
                   (int)seed, utf8);
            if (utf8) CHECK_EQ_INT(s.invalid_utf8, 0);
            CHECK_EQ_INT(s.bad_piece, 0);
            duet_gen_free(g);
            duet_collab_free(c);
        }
        free(want.p);
        free(r.text.p);
    }
    /* the data must hold what the test is about */
    CHECKF(split_seen > 0, "no character was split across pieces in these answers");
    CHECKF(invalid_seen > 0, "no answer held invalid UTF-8");
    duet_model_free(b);
}

/* Tokens of 300 to 580 bytes come out whole, in the text and as pieces; and an
 * end-of-sequence token ends the answer without entering it. */
TEST(generate_long_pieces_whole_and_eos) {
    duet_model *b = fixture_load(fixture_long_vocab_model(2, "long-model"));
    REQUIRE(b);
    int32_t pr[3] = {1, 290, 70};
    duet_collab_params p = {.policy = DUET_POLICY_BASE, .sampling = {.temp = 1.5f, .seed = 4}};
    ref r;
    REQUIRE(!reference(b, NULL, NULL, &p, pr, 3, 40, &r));
    size_t longest = 0;
    for (int i = 0; i < r.n; i++) longest = DUET_MAX(longest, r.end[i] - (i ? r.end[i - 1] : 0));
    CHECKF(longest > 256, "no piece over 256 bytes was drawn (longest %zu)", longest);
    duet_collab *c = start(b, NULL, NULL, &p, pr, 3);
    REQUIRE(c);
    duet_gen_params gp = {.max_tokens = 40};
    duet_gen *g = NULL;
    duet_error err = {0};
    seen s = {.r = &r};
    CHECK_EQ_INT(duet_generate(c, &gp, watch, &s, &g, &err), DUET_OK);
    size_t len;
    const char *text = duet_gen_text(g, &len);
    CHECK(len == r.text.n && !memcmp(text, r.text.p, len));
    CHECK_EQ_INT(s.bad_piece, 0);
    duet_gen_free(g);
    duet_collab_free(c);
    /* the same weights with the 5th answer token declared end-of-sequence: the answer is the
     * first pieces up to the first time that token is drawn */
    int32_t eos = r.ids[4];
    int k = 0;
    while (r.ids[k] != eos) k++;
    duet_model *b2 = fixture_load(fixture_long_vocab_model((uint32_t)eos, "long-model-eos"));
    REQUIRE(b2);
    c = start(b2, NULL, NULL, &p, pr, 3);
    REQUIRE(c);
    CHECK_EQ_INT(duet_generate(c, &gp, NULL, NULL, &g, &err), DUET_OK);
    text = duet_gen_text(g, &len);
    size_t want = k ? r.end[k - 1] : 0;
    CHECK_EQ_INT(len, want);
    CHECK(len == want && !memcmp(text, r.text.p, len));
    CHECK_EQ_INT(duet_gen_end(g), DUET_GEN_EOS);
    CHECK_EQ_INT(duet_gen_n_tokens(g), k);
    duet_gen_free(g);
    duet_collab_free(c);
    free(r.text.p);
    duet_model_free(b);
    duet_model_free(b2);
}

/* A full context ends the answer (what was generated stands, err says why); max_tokens 0
 * generates nothing; bad arguments are refused. */
TEST(generate_context_full_zero_tokens_bad_args) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0));
    REQUIRE(b);
    duet_collab_params p = {.policy = DUET_POLICY_BASE, .n_ctx = 16};
    ref r;
    REQUIRE(!reference(b, NULL, NULL, &p, k_prompt, NP, MAXTOK, &r));
    CHECK_EQ_INT(r.stop_rc, DUET_ERR_RANGE);
    duet_collab *c = start(b, NULL, NULL, &p, k_prompt, NP);
    REQUIRE(c);
    duet_gen_params gp = {.max_tokens = -1};
    duet_gen *g = NULL;
    duet_error err = {0};
    CHECK_EQ_INT(duet_generate(c, &gp, NULL, NULL, &g, &err), DUET_OK);
    size_t len;
    const char *text = duet_gen_text(g, &len);
    CHECK_EQ_INT(duet_gen_end(g), DUET_GEN_CONTEXT);
    CHECK_EQ_INT(duet_gen_n_tokens(g), r.n);
    CHECK(len == r.text.n && !memcmp(text, r.text.p, len));
    CHECK(err.msg[0] != 0);
    duet_gen_free(g);
    /* max_tokens 0 */
    CHECK_EQ_INT(duet_collab_start(c, k_prompt, NP, &err), DUET_OK);
    gp.max_tokens = 0;
    CHECK_EQ_INT(duet_gen_new(c, &gp, &g, &err), DUET_OK);
    CHECK_EQ_INT(duet_gen_end(g), DUET_GEN_LIMIT);
    CHECK_EQ_INT(duet_gen_step(g, NULL, &err), DUET_EOS);
    CHECK_STR(duet_gen_text(g, &len), "");
    CHECK_EQ_INT(duet_gen_n_tokens(g), 0);
    duet_gen_free(g);
    /* a stop count without a list, and a decoder without a prompt */
    gp = (duet_gen_params){.max_tokens = 4, .n_stops = 1};
    CHECK_EQ_INT(duet_gen_new(c, &gp, &g, &err), DUET_ERR_ARG);
    CHECK(g == NULL);
    duet_collab *fresh = NULL;
    REQUIRE(!duet_collab_new(b, NULL, NULL, NULL, &p, &fresh, &err));
    gp.n_stops = 0;
    CHECK_EQ_INT(duet_gen_new(fresh, &gp, &g, &err), DUET_ERR_ARG);
    CHECK(strstr(err.msg, "duet_collab_start") != NULL);
    duet_collab_free(fresh);
    duet_collab_free(c);
    free(r.text.p);
    duet_model_free(b);
}

/* The streaming UTF-8 helper itself, with hand-written expectations. */
TEST(utf8_append_holds_split_characters) {
    duet_buf b = {0};
    size_t held = 99;
    /* "é" = c3 a9 arriving as two pieces: nothing, then the whole character */
    CHECK_EQ_INT(duet_utf8_append(&b, "a\xc3", 2, 1, &held), 0);
    CHECK_EQ_INT(held, 1);
    CHECK_STR(b.p, "a");
    CHECK_EQ_INT(duet_utf8_append(&b, "\xc3\xa9", 2, 1, &held), 0);
    CHECK_EQ_INT(held, 0);
    CHECK_STR(b.p, "a\xc3\xa9");
    /* a 4-byte emoji cut after 3 bytes is held, never emitted half */
    CHECK_EQ_INT(duet_utf8_append(&b, "\xf0\x9f\x98", 3, 1, &held), 0);
    CHECK_EQ_INT(held, 3);
    CHECK_STR(b.p, "a\xc3\xa9");
    /* invalid bytes (stray continuation, overlong, surrogate) become U+FFFD */
    b.n = 0;
    duet_utf8_append(&b, "\x80x\xc0\xafy\xed\xa0\x80", 9, 0, NULL);
    CHECK_STR(b.p, "\xef\xbf\xbdx\xef\xbf\xbd\xef\xbf\xbdy\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    /* at the end of an answer a never-completed start is replaced, not dropped */
    b.n = 0;
    CHECK_EQ_INT(duet_utf8_append(&b, "z\xe2\x82", 3, 0, &held), 0);
    CHECK_EQ_INT(held, 0);
    CHECK_STR(b.p, "z\xef\xbf\xbd\xef\xbf\xbd");
    free(b.p);
    /* an empty append still leaves a readable, empty string */
    duet_buf e = {0};
    CHECK_EQ_INT(duet_utf8_append(&e, "", 0, 1, &held), 0);
    CHECK(e.p && e.p[0] == 0 && e.n == 0);
    free(e.p);
}

/* ---- many generations in one batched step -------------------------------------------------
 * duet_gen_step_batch against each generation stepped alone: every policy (with a local
 * expert, and the proxy's anti-expert), greedy and sampled, prompts of different lengths and
 * limits, an answer ending by EOS-free limits at different steps and one by a full context,
 * half of them with the prompt left to the first batched pass (lazy_prompt); tokens, sources,
 * texts, end reasons and the decoders' cost counters must be equal. */
typedef struct gen_case {
    duet_collab_params p;
    int max_tokens, np;
    int32_t prompt[12];
} gen_case;

static void gen_cases(gen_case *gc, int n, const duet_model *b) {
    static const int pols[] = {DUET_POLICY_COLLM, DUET_POLICY_BASE, DUET_POLICY_EXPERT,
                               DUET_POLICY_RANDOM, DUET_POLICY_CONFIDENCE, DUET_POLICY_COMPOSE,
                               DUET_POLICY_CONTRASTIVE, DUET_POLICY_UNCERTAINTY, DUET_POLICY_COLLM};
    int V = duet_model_hparams(b)->n_vocab;
    for (int i = 0; i < n; i++) {
        gen_case *g = &gc[i];
        memset(g, 0, sizeof *g);
        g->p.policy = pols[i % 9];
        g->p.threshold = i == 8 ? 0.2f : -1;
        g->p.random_rate = 0.4f;
        g->p.sampling.temp = i % 2 ? 0.8f : 0;
        g->p.sampling.seed = 100 + (uint64_t)i;
        g->p.n_ctx = i == 3 ? 20 : 128; /* one fills its context before its limit */
        g->max_tokens = 10 + 3 * i;
        g->np = 2 + (i * 5) % 11;
        g->prompt[0] = 1;
        for (int k = 1; k < g->np; k++) g->prompt[k] = (int32_t)(3 + (i * 31 + k * 17) % (V - 3));
    }
}

typedef struct gen_out {
    char text[4096];
    size_t len;
    int32_t ids[MAXTOK];
    int src[MAXTOK], n, end, rc_last;
    duet_collab_stats st;
} gen_out;

static void gen_record(gen_out *o, const duet_gen *g, const duet_collab *c, int rc,
                       const duet_collab_token *t) {
    if (!rc && o->n < MAXTOK) o->ids[o->n] = t->id, o->src[o->n++] = t->source;
    o->rc_last = rc;
    const char *text = duet_gen_text(g, &o->len);
    memcpy(o->text, text, DUET_MIN(o->len, sizeof o->text));
    o->end = duet_gen_end(g);
    o->st = *duet_collab_get_stats(c);
}

static int stats_equal(const duet_collab_stats *a, const duet_collab_stats *b) {
    return a->n_prompt == b->n_prompt && a->n_generated == b->n_generated &&
           a->n_deferred == b->n_deferred && a->expert_calls == b->expert_calls &&
           a->expert_evaluated == b->expert_evaluated && a->base_evaluated == b->base_evaluated &&
           a->expert_failures == b->expert_failures;
}

TEST(generate_batch_equals_alone) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0));
    duet_model *e = fixture_load(fixture_random(DT_F32, 22, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 5, 40.0f);
    REQUIRE(h);
    enum { N = 9 };
    gen_case gc[N];
    gen_cases(gc, N, b);
    static gen_out alone[N], together[N];
    duet_error err = {0};
    for (int i = 0; i < N; i++) { /* the oracle: each alone */
        duet_collab *c = start(b, e, h, &gc[i].p, gc[i].prompt, gc[i].np);
        duet_gen_params gp = {.max_tokens = gc[i].max_tokens};
        duet_gen *g = NULL;
        REQUIRE(c && !duet_gen_new(c, &gp, &g, &err));
        memset(&alone[i], 0, sizeof alone[i]);
        for (int rc = 0; !rc;) {
            duet_collab_token t;
            rc = duet_gen_step(g, &t, &err);
            gen_record(&alone[i], g, c, rc, &t);
        }
        duet_gen_free(g);
        duet_collab_free(c);
    }
    int n_ctx_end = 0, n_expert = 0;
    for (int i = 0; i < N; i++) {
        n_ctx_end += alone[i].end == DUET_GEN_CONTEXT;
        n_expert += alone[i].st.expert_calls > 0;
    }
    CHECKF(n_ctx_end == 1 && n_expert >= 5, "the cases do not exercise what they should: %d "
           "full contexts, %d answers with expert calls", n_ctx_end, n_expert);
    for (int n = 1; n <= N; n++) { /* the first n together */
        duet_collab *c[N];
        duet_gen *g[N];
        for (int i = 0; i < n; i++) {
            duet_gen_params gp = {.max_tokens = gc[i].max_tokens};
            duet_collab_params p = gc[i].p;
            p.lazy_prompt = (i + n) % 2; /* half leave their prompt to the first batched pass */
            c[i] = start(b, e, h, &p, gc[i].prompt, gc[i].np);
            REQUIRE(c[i] && !duet_gen_new(c[i], &gp, &g[i], &err));
            memset(&together[i], 0, sizeof together[i]);
        }
        for (int live = n; live;) {
            duet_collab_token t[N];
            int rcs[N];
            duet_error errs[N];
            REQUIRE(!duet_gen_step_batch(g, n, t, rcs, errs));
            live = 0;
            for (int i = 0; i < n; i++) {
                if (together[i].end && rcs[i] == DUET_EOS) continue; /* ended before */
                gen_record(&together[i], g[i], c[i], rcs[i], &t[i]);
                live += !rcs[i];
            }
        }
        for (int i = 0; i < n; i++) {
            gen_out *a = &alone[i], *o = &together[i];
            CHECKF(a->n == o->n && !memcmp(a->ids, o->ids, sizeof(int32_t) * (size_t)a->n) &&
                   !memcmp(a->src, o->src, sizeof(int) * (size_t)a->n) && a->len == o->len &&
                   !memcmp(a->text, o->text, DUET_MIN(a->len, sizeof a->text)) &&
                   a->end == o->end && stats_equal(&a->st, &o->st),
                   "%d together: answer %d (policy %s) differs from alone: %d vs %d tokens, end "
                   "%d vs %d, deferred %d vs %d, expert evaluated %ld vs %ld", n, i,
                   duet_policy_name(gc[i].p.policy), o->n, a->n, o->end, a->end,
                   o->st.n_deferred, a->st.n_deferred, o->st.expert_evaluated,
                   a->st.expert_evaluated);
        }
        for (int i = 0; i < n; i++) duet_gen_free(g[i]), duet_collab_free(c[i]);
    }
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}

/* An expert behind the backend interface (as a remote one is): a session of its own on a
 * local model, failing every third call. Batched steps call such experts from threads of
 * their own; with the fallback the base speaks where a call failed. */
typedef struct fake_backend {
    duet_expert_backend be;
    duet_model *m; /* its own, with 1 thread: calls run concurrently, and models loaded with
                      the same thread count share one pool, which serves one pass at a time */
    duet_session *s;
    int calls;
} fake_backend;

static int fake_next(void *ctx, const int32_t *t, int n, float *out, duet_error *err) {
    fake_backend *f = ctx;
    if (++f->calls % 3 == 0) return duet_fail(err, DUET_ERR_IO, "fake expert: call %d fails", f->calls);
    int rc = duet_session_sync(f->s, t, n, err);
    if (rc) return rc;
    const float *l = duet_session_logits(f->s, -1);
    memcpy(out, l, sizeof(float) * (size_t)duet_model_hparams(duet_session_model(f->s))->n_vocab);
    return DUET_OK;
}

TEST(generate_batch_backend_experts_fail_alike) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 21, 0));
    duet_model *e = fixture_load(fixture_random(DT_F32, 22, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 5, 40.0f);
    REQUIRE(h);
    enum { N = 4 };
    gen_out alone[N], together[N];
    fake_backend fb[2][N];
    duet_error err = {0};
    for (int pass = 0; pass < 2; pass++) { /* 0: each alone, 1: together */
        duet_collab *c[N];
        duet_gen *g[N];
        for (int i = 0; i < N; i++) {
            fake_backend *f = &fb[pass][i];
            memset(f, 0, sizeof *f);
            duet_model_params one = {.n_threads = 1};
            REQUIRE(!duet_model_load(fixture_random(DT_F32, 22, 0), &one, &f->m, &err) &&
                    !duet_session_new(f->m, NULL, &f->s, &err));
            f->be = (duet_expert_backend){.ctx = f, .next_logits = fake_next};
            duet_collab_params p = {.policy = i % 2 ? DUET_POLICY_EXPERT : DUET_POLICY_COLLM,
                                    .threshold = 0.3f, .expert_backend = &f->be,
                                    .expert_fallback = 1, .n_ctx = 128};
            int32_t prompt[4] = {1, (int32_t)(10 + i), 40, (int32_t)(7 * i + 3)};
            duet_gen_params gp = {.max_tokens = 12 + i};
            c[i] = start(b, NULL, h, &p, prompt, 4);
            REQUIRE(c[i] && !duet_gen_new(c[i], &gp, &g[i], &err));
        }
        gen_out *out = pass ? together : alone;
        memset(out, 0, sizeof(gen_out) * N);
        if (!pass) {
            for (int i = 0; i < N; i++)
                for (int rc = 0; !rc;) {
                    duet_collab_token t;
                    rc = duet_gen_step(g[i], &t, &err);
                    gen_record(&out[i], g[i], c[i], rc, &t);
                }
        } else {
            for (int live = N; live;) {
                duet_collab_token t[N];
                int rcs[N];
                duet_error errs[N];
                REQUIRE(!duet_gen_step_batch(g, N, t, rcs, errs));
                live = 0;
                for (int i = 0; i < N; i++) {
                    if (out[i].end && rcs[i] == DUET_EOS) continue;
                    gen_record(&out[i], g[i], c[i], rcs[i], &t[i]);
                    live += !rcs[i];
                }
            }
        }
        for (int i = 0; i < N; i++) {
            duet_gen_free(g[i]), duet_collab_free(c[i]);
            duet_session_free(fb[pass][i].s);
            duet_model_free(fb[pass][i].m);
        }
    }
    int failures = 0;
    for (int i = 0; i < N; i++) {
        failures += alone[i].st.expert_failures;
        CHECKF(alone[i].n == together[i].n && !memcmp(alone[i].ids, together[i].ids,
               sizeof(int32_t) * (size_t)alone[i].n) && stats_equal(&alone[i].st, &together[i].st),
               "backend expert %d: together (%d tokens, %d failures) differs from alone (%d, %d)",
               i, together[i].n, together[i].st.expert_failures, alone[i].n,
               alone[i].st.expert_failures);
    }
    CHECKF(failures >= N, "only %d expert failures: the failure path is untested", failures);
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}
