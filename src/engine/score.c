/* score.c: teacher-forced log-likelihood of a text (perplexity, model comparisons).
 * Windows of the context size, each led by BOS, so every text token is scored once. */
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
