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
