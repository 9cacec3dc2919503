/*
 * generate.c: the one loop that turns the decoder's steps into text. Every generating caller
 * (duet run and chat, the server's completions, evaluation) goes through it, so they agree on
 * what the answer is: where it ends (the earliest stop text in the text, EOS, a token limit,
 * a full context) and which bytes it holds.
 *
 * Pieces come out whole whatever their length: the piece buffer grows to fit the longest
 * token. With utf8 set the text grows by complete valid characters only; the bytes of a
 * character a later piece may finish wait in `pend`, so a streaming caller never sends half a
 * character, and bytes no piece can finish become U+FFFD.
 */
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/utf8.h"
#include "engine/model.h"

struct duet_gen {
    duet_collab *co;
    const duet_model *base;
    duet_gen_params p;
    int32_t prev;           /* the last token: it conditions the next piece's leading space */
    int n_tokens, end;
    duet_buf text;          /* the answer so far, a stop text cut off */
    unsigned char *src;     /* [text capacity] DUET_SRC_* of each byte */
    size_t src_cap, ready;
    duet_buf pend;          /* utf8: bytes that may still become a character */
    duet_buf piece;         /* the last token's bytes */
};

const char *duet_source_name(int source) {
    static const char *const names[3] = {"base", "expert", "mixed"};
    return source >= 0 && source < 3 ? names[source] : "?";
}

int duet_gen_new(duet_collab *c, const duet_gen_params *p, duet_gen **out, duet_error *err) {
    *out = NULL;
    int n = 0;
    const int32_t *toks = c ? duet_collab_tokens(c, &n) : NULL;
    if (!c || !p || n < 1 || p->n_stops < 0 || (p->n_stops > 0 && !p->stops))
        return duet_fail(err, DUET_ERR_ARG, "duet_gen_new: %s", !c || !p ? "NULL argument"
                         : n < 1 ? "the decoder has no prompt (call duet_collab_start first)"
                                 : "bad stop list");
    duet_gen *g = calloc(1, sizeof *g);
    if (!g || duet_buf_add(&g->text, "", 0)) {
        free(g);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    g->co = c;
    g->base = duet_collab_base(c);
    g->p = *p;
    g->prev = toks[n - 1];
    if (p->max_tokens == 0) g->end = DUET_GEN_LIMIT;
    *out = g;
    return DUET_OK;
}

void duet_gen_free(duet_gen *g) {
    if (!g) return;
    free(g->text.p);
    free(g->src);
    free(g->pend.p);
    free(g->piece.p);
    free(g);
}

/* The bytes of token id after prev into g->piece, however long. */
static int render_piece(duet_gen *g, int32_t id) {
    g->piece.n = 0;
    return model_piece_append(g->base, g->prev, id, &g->piece);
}

/* Mark the bytes of the text from `from` on with source. */
static int mark_sources(duet_gen *g, size_t from, int source) {
    if (g->text.n == from) return DUET_OK; /* nothing added (and src may still be NULL) */
    if (g->text.n > g->src_cap) {
        size_t cap = DUET_MAX(g->text.n, 2 * g->src_cap);
        unsigned char *u = realloc(g->src, cap);
        if (!u) return DUET_ERR_NOMEM;
        g->src = u;
        g->src_cap = cap;
    }
    memset(g->src + from, source, g->text.n - from);
    return DUET_OK;
}

/* utf8 mode: move the complete characters of pend to the text, marked with source; hold an
 * unfinished one unless flushing. */
static int drain_pending(duet_gen *g, int source, int flush) {
    size_t before = g->text.n, held = 0;
    int rc = duet_utf8_append(&g->text, g->pend.p, g->pend.n, !flush, &held);
    if (!rc) rc = mark_sources(g, before, source);
    if (held) memmove(g->pend.p, g->pend.p + g->pend.n - held, held);
    g->pend.n = held;
    return rc;
}

static void finish(duet_gen *g, int end) {
    g->end = end;
    if (g->p.utf8 && end != DUET_GEN_STOP) drain_pending(g, DUET_SRC_BASE, 1);
    g->pend.n = 0;
    g->ready = g->text.n;
}

/* Where the earliest stop text begins, and how much may be released (duet.h). */
long duet_stop_scan(const char *text, size_t len, const char *const *stops, int n_stops,
                    size_t *shown) {
    size_t from = DUET_MIN(*shown, len), hold = 0;
    long first = -1;
    for (int k = 0; k < n_stops; k++) {
        size_t sl = stops[k] ? strlen(stops[k]) : 0;
        if (!sl) continue;
        /* a match cannot start before `from`: every tail that could begin one was held */
        const char *hit = memmem(text + from, len - from, stops[k], sl);
        if (hit && (first < 0 || hit - text < first)) first = (long)(hit - text);
        size_t h = DUET_MIN(sl - 1, len - from);
        while (h && memcmp(text + len - h, stops[k], h)) h--;
        hold = DUET_MAX(hold, h);
    }
    if (first >= 0) {
        *shown = (size_t)first;
        return first;
    }
    *shown = len - hold;
    return -1;
}

/* Add the last piece to the text and end the answer at the earliest stop text. */
static int take_piece(duet_gen *g, int source) {
    int rc;
    if (g->p.utf8) {
        rc = duet_buf_add(&g->pend, g->piece.p, g->piece.n);
        if (!rc) rc = drain_pending(g, source, 0);
    } else {
        size_t before = g->text.n;
        rc = duet_buf_add(&g->text, g->piece.p, g->piece.n);
        if (!rc) rc = mark_sources(g, before, source);
    }
    if (rc) return rc;
    long cut = duet_stop_scan(g->text.p, g->text.n, g->p.stops, g->p.n_stops, &g->ready);
    if (cut >= 0) {
        g->text.n = (size_t)cut;
        g->text.p[cut] = 0;
        finish(g, DUET_GEN_STOP);
    } else if (g->p.max_tokens > 0 && g->n_tokens >= g->p.max_tokens) finish(g, DUET_GEN_LIMIT);
    return DUET_OK;
}

/* The text side of a decoder step that returned rc with tok. */
static int after_step(duet_gen *g, int rc, const duet_collab_token *tok, duet_error *err) {
    if (rc == DUET_EOS || rc == DUET_ERR_RANGE) { /* the end, or a full context: err says so */
        finish(g, rc == DUET_EOS ? DUET_GEN_EOS : DUET_GEN_CONTEXT);
        return DUET_EOS;
    }
    if (!rc && render_piece(g, tok->id)) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (rc) {
        finish(g, DUET_GEN_ERROR);
        return rc;
    }
    g->prev = tok->id;
    g->n_tokens++;
    if (take_piece(g, tok->source)) {
        finish(g, DUET_GEN_ERROR);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    return DUET_OK;
}

int duet_gen_step(duet_gen *g, duet_collab_token *tok, duet_error *err) {
    duet_collab_token t;
    if (!tok) tok = &t;
    if (g->end) return DUET_EOS;
    return after_step(g, duet_collab_step(g->co, tok, err), tok, err);
}

int duet_gen_step_batch(duet_gen *const *gs, int n, duet_collab_token *toks, int *rcs,
                        duet_error *errs) {
    duet_collab **cs = malloc((size_t)(n > 0 ? n : 1) * sizeof *cs);
    int *at = malloc((size_t)(n > 0 ? n : 1) * sizeof *at), k = 0;
    if (!cs || !at) { /* no memory to batch: one by one */
        for (int i = 0; i < n; i++) rcs[i] = duet_gen_step(gs[i], &toks[i], &errs[i]);
    } else {
        for (int i = 0; i < n; i++) {
            rcs[i] = DUET_EOS;
            if (!gs[i]->end) cs[k] = gs[i]->co, at[k++] = i;
        }
        /* the decoders' results land in the first k entries, then move to their own */
        duet_collab_token *t = malloc((size_t)(k > 0 ? k : 1) * sizeof *t);
        int *r = malloc((size_t)(k > 0 ? k : 1) * sizeof *r);
        duet_error *e = calloc((size_t)(k > 0 ? k : 1), sizeof *e);
        if (t && r && e) {
            duet_collab_step_batch(cs, k, t, r, e);
            for (int j = 0; j < k; j++) {
                int i = at[j];
                toks[i] = t[j];
                errs[i] = e[j];
                rcs[i] = after_step(gs[i], r[j], &toks[i], &errs[i]);
            }
        } else {
            for (int j = 0; j < k; j++)
                rcs[at[j]] = duet_gen_step(gs[at[j]], &toks[at[j]], &errs[at[j]]);
        }
        free(t), free(r), free(e);
    }
    free(cs), free(at);
    return DUET_OK;
}

int duet_generate(duet_collab *c, const duet_gen_params *p, duet_gen_callback cb, void *ud,
                  duet_gen **out, duet_error *err) {
    int rc = duet_gen_new(c, p, out, err);
    duet_collab_token t;
    while (!rc && !(*out)->end) {
        rc = duet_gen_step(*out, &t, err);
        if (rc == DUET_EOS) rc = DUET_OK;
        else if (!rc && cb && cb(ud, *out, &t)) finish(*out, DUET_GEN_CANCELLED);
    }
    return rc;
}

const char *duet_gen_text(const duet_gen *g, size_t *len) {
    if (len) *len = g->text.n;
    return g->text.p;
}

const unsigned char *duet_gen_sources(const duet_gen *g) { return g->src; }

size_t duet_gen_ready(const duet_gen *g) { return g->end ? g->text.n : DUET_MIN(g->ready, g->text.n); }

const char *duet_gen_piece(const duet_gen *g, size_t *len) {
    *len = g->piece.n;
    return g->piece.p ? g->piece.p : "";
}

int duet_gen_n_tokens(const duet_gen *g) { return g->n_tokens; }

int duet_gen_end(const duet_gen *g) { return g->end; }
