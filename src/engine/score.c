/* score.c: teacher-forced log-likelihood of a text (perplexity, model comparisons).
 * duet_text_score: windows of the context size, each led by BOS, so every text token is scored
 * once. duet_text_perplexity_chunks: llama-perplexity's chunks, for numbers comparable with
 * llama.cpp's (each token is then scored at most once, with at least n_ctx / 2 of context). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "engine/model.h"

/* log softmax(logits)[tok] in double */
static double log_prob(const float *logits, int n, int tok) {
    double mx, z;
    duet_softmax_stats(logits, n, &mx, &z, NULL);
    return (double)logits[tok] - mx - log(z);
}

int duet_text_score(duet_session *s, const char *text, size_t len, duet_text_nll *out,
                    void (*progress)(void *ud, int done, int total), void *ud, duet_error *err) {
    memset(out, 0, sizeof *out);
    out->n_bytes = len;
    const duet_model *m = duet_session_model(s);
    int n = duet_tokenize(m, text, len, 0, 0, NULL, 0, err);
    if (n < 0) return n;
    if (n == 0) return duet_fail(err, DUET_ERR_ARG, "no tokens to score");
    int ctx = duet_session_n_ctx(s), V = m->hp.n_vocab;
    int32_t bos = duet_token_bos(m);
    int per = bos >= 0 ? ctx - 1 : ctx; /* text tokens per window */
    if (per < 1) return duet_fail(err, DUET_ERR_ARG, "context of %d is too small to score", ctx);
    int32_t *toks = malloc((size_t)n * sizeof *toks), *win = malloc((size_t)ctx * sizeof *win);
    int rc = !toks || !win ? duet_fail(err, DUET_ERR_NOMEM, "out of memory") : DUET_OK;
    if (!rc) {
        int got = duet_tokenize(m, text, len, 0, 0, toks, n, err);
        if (got < 0) rc = got;
    }
    for (int start = 0; !rc && start < n; start += per) {
        int k = DUET_MIN(per, n - start), w = 0;
        if (bos >= 0) win[w++] = bos;
        memcpy(win + w, toks + start, (size_t)k * sizeof *win);
        w += k;
        duet_session_truncate(s, 0);
        if ((rc = duet_session_eval(s, win, w, 1, err))) break;
        /* logits row j predicts win[j+1]; without BOS a window's first token is unscored */
        for (int j = 0; j + 1 < w; j++) out->nll -= log_prob(duet_session_logits(s, j), V, win[j + 1]);
        out->n_tokens += w - 1;
        if (progress) progress(ud, start + k, n);
    }
    free(toks);
    free(win);
    return rc;
}

/* Tokens of text with the vocabulary's BOS rule, into a new array (*n of them). */
static int32_t *tokens_of(const duet_model *m, const char *text, size_t len, int *n, duet_error *err) {
    *n = duet_tokenize(m, text, len, 1, 0, NULL, 0, err);
    int32_t *t = *n > 0 ? malloc((size_t)*n * sizeof *t) : NULL;
    if (*n > 0 && !t) duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (t && duet_tokenize(m, text, len, 1, 0, t, *n, err) < 0) {
        free(t);
        t = NULL;
    }
    return t;
}

int duet_text_perplexity_chunks(duet_session *s, const char *text, size_t len, duet_chunk_ppl *out,
                                void (*on_chunk)(void *ud, int chunk, int n_chunks, double ppl),
                                void *ud, duet_error *err) {
    memset(out, 0, sizeof *out);
    const duet_model *m = duet_session_model(s);
    int ctx = duet_session_n_ctx(s), V = m->hp.n_vocab, n = 0;
    if (ctx < 4) return duet_fail(err, DUET_ERR_ARG, "a context of %d is too small to score", ctx);
    /* "adds BOS" is what tokenizing nothing with add_bos gives */
    int adds_bos = duet_tokenize(m, "", 0, 1, 0, NULL, 0, err) > 0;
    int32_t *toks = tokens_of(m, text, len, &n, err);
    if (!toks) return n < 0 ? n : duet_fail(err, DUET_ERR_ARG, "no tokens to score");
    out->n_tokens = n;
    if (n < 2 * ctx) {
        free(toks);
        return duet_fail(err, DUET_ERR_ARG, "the text has %d tokens; chunked perplexity with a "
                         "context of %d needs at least %d", n, ctx, 2 * ctx);
    }
    int32_t *win = malloc((size_t)ctx * sizeof *win);
    int rc = win ? DUET_OK : duet_fail(err, DUET_ERR_NOMEM, "out of memory"), first = ctx / 2;
    out->n_chunks = n / ctx;
    for (int c = 0; !rc && c < out->n_chunks; c++) {
        memcpy(win, toks + (size_t)c * ctx, (size_t)ctx * sizeof *win);
        if (adds_bos) win[0] = duet_token_bos(m);
        duet_session_truncate(s, 0);
        if ((rc = duet_session_eval(s, win, ctx, 1, err))) break;
        for (int j = first; j + 1 < ctx; j++) { /* row j predicts win[j + 1] */
            double nll = -log_prob(duet_session_logits(s, j), V, win[j + 1]);
            out->nll += nll;
            out->nll2 += nll * nll;
            out->n_scored++;
        }
        if (on_chunk) on_chunk(ud, c, out->n_chunks, exp(out->nll / out->n_scored));
    }
    if (!rc) {
        double mean = out->nll / out->n_scored, var = out->nll2 / out->n_scored - mean * mean;
        out->ppl = exp(mean);
        out->ppl_err = var > 0 && out->n_scored > 1 ? sqrt(var / (out->n_scored - 1)) * out->ppl : 0;
    }
    free(win);
    free(toks);
    return rc;
}
