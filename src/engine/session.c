/*
 * session.c: one timeline per model: the token list and its KV cache. eval appends and
 * evaluates; truncate rolls back; sync makes the timeline equal a given token list by
 * evaluating only the missing suffix (one batched call: the lazy expert catch-up).
 * Invariant: tokens[0..n_past) are exactly what the KV cache holds; out_pos is the
 * position of the last row of the kept outputs (-1 when none are valid).
 * Logits of a last-token-only eval are computed on first read (logits_pending): a caller
 * that needs only the hidden state (the Co-LLM decision when it defers) skips the output
 * matrix, which is a quarter or more of a small model's weights.
 * The batch calls evaluate several sessions of one model in one forward pass (each weight
 * read once for all of them); rows are independent in the forward pass, so every session
 * gets the bits its own calls would have given it.
 */
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "engine/forward.h"

struct duet_session {
    duet_model *m;
    fwd_state st;
    int32_t *tokens; /* [n_ctx] */
    int n_past;
    float *logits;   /* [out_cap][n_vocab] */
    float *hidden;   /* [out_cap][n_embd] */
    int out_cap;     /* rows allocated */
    int n_out;       /* rows kept by the last eval */
    int out_pos;     /* position of the last kept row; -1: none valid */
    int logits_pending; /* the one kept row has its hidden state but no logits yet */
    long n_evaluated;
};

static int grow_outputs(duet_session *s, int rows, duet_error *err) {
    if (rows <= s->out_cap) return DUET_OK;
    size_t V = (size_t)s->m->hp.n_vocab, E = (size_t)s->m->hp.n_embd;
    float *l = duet_aalloc((size_t)rows * V * sizeof(float));
    float *h = duet_aalloc((size_t)rows * E * sizeof(float));
    if (!l || !h) {
        duet_afree(l);
        duet_afree(h);
        return duet_fail(err, DUET_ERR_NOMEM, "%s: cannot allocate logits for %d tokens",
                         s->m->path, rows);
    }
    duet_afree(s->logits);
    duet_afree(s->hidden);
    s->logits = l;
    s->hidden = h;
    s->out_cap = rows;
    return DUET_OK;
}

int duet_session_new(duet_model *m, const duet_session_params *p, duet_session **out,
                     duet_error *err) {
    duet_session_params def = {0};
    if (!p) p = &def;
    *out = NULL;
    if (m->vocab_only)
        return duet_fail(err, DUET_ERR_ARG, "%s: loaded vocabulary-only: no session possible",
                         m->path);
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : DUET_MIN(m->hp.n_ctx_train, 4096);
    int n_batch = p->n_batch > 0 ? p->n_batch : 512;
    if (n_ctx > (1 << 24))
        return duet_fail(err, DUET_ERR_ARG, "n_ctx %d is too large", n_ctx);
    n_batch = DUET_MIN(n_batch, n_ctx);
    duet_session *s = calloc(1, sizeof *s);
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    s->m = m;
    s->out_pos = -1;
    int rc = fwd_init(&s->st, m, n_ctx, n_batch, p->type_k, p->type_v, err);
    if (!rc && !(s->tokens = calloc((size_t)n_ctx, sizeof(int32_t))))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) rc = grow_outputs(s, n_batch, err);
    if (rc) {
        duet_session_free(s);
        return rc;
    }
    *out = s;
    return DUET_OK;
}

void duet_session_free(duet_session *s) {
    if (!s) return;
    fwd_free(&s->st);
    free(s->tokens);
    duet_afree(s->logits);
    duet_afree(s->hidden);
    free(s);
}

int duet_session_eval(duet_session *s, const int32_t *tokens, int n, int all_logits,
                      duet_error *err) {
    if (n <= 0) return duet_fail(err, DUET_ERR_ARG, "eval of %d tokens", n);
    if (n > s->st.n_ctx - s->n_past)
        return duet_fail(err, DUET_ERR_RANGE,
                         "context full: %d tokens in the session + %d new > n_ctx %d",
                         s->n_past, n, s->st.n_ctx);
    int V = s->m->hp.n_vocab;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return duet_fail(err, DUET_ERR_RANGE, "token id %d (at %d) is outside the "
                             "vocabulary [0, %d)", tokens[i], i, V);
    int rc = grow_outputs(s, all_logits ? n : 1, err);
    if (!rc) rc = fwd_reserve(&s->st, s->n_past + n, err);
    if (rc) return rc;
    size_t E = (size_t)s->m->hp.n_embd;
    for (int done = 0; done < n;) {
        int c = DUET_MIN(s->st.n_batch, n - done);
        int last_chunk = done + c == n;
        int first_out = all_logits ? 0 : (last_chunk ? c - 1 : c);
        int row = all_logits ? done : 0;
        memcpy(s->tokens + s->n_past, tokens + done, (size_t)c * sizeof(int32_t));
        fwd_eval(&s->st, tokens + done, c, s->n_past, first_out, s->hidden + (size_t)row * E,
                 all_logits ? s->logits + (size_t)row * V : NULL);
        s->n_past += c;
        s->n_evaluated += c;
        done += c;
    }
    s->n_out = all_logits ? n : 1;
    s->out_pos = s->n_past - 1;
    s->logits_pending = !all_logits;
    return DUET_OK;
}

static int row_of(const duet_session *s, int i) {
    if (s->out_pos < 0) return -1;
    if (i < 0) i = s->n_out - 1;
    if (i >= s->n_out) return -1;
    return i;
}

const float *duet_session_logits(const duet_session *s, int i) {
    int r = row_of(s, i);
    if (r < 0) return NULL;
    if (s->logits_pending) { /* computed on first read; the session is logically unchanged */
        duet_session *w = (duet_session *)s;
        fwd_logits(&w->st, w->hidden, 1, w->logits);
        w->logits_pending = 0;
    }
    return s->logits + (size_t)r * s->m->hp.n_vocab;
}

const float *duet_session_hidden(const duet_session *s, int i) {
    int r = row_of(s, i);
    return r < 0 ? NULL : s->hidden + (size_t)r * s->m->hp.n_embd;
}

int duet_session_n_past(const duet_session *s) { return s->n_past; }
const int32_t *duet_session_tokens(const duet_session *s) { return s->tokens; }
int duet_session_n_ctx(const duet_session *s) { return s->st.n_ctx; }
duet_model *duet_session_model(const duet_session *s) { return s->m; }
long duet_session_n_evaluated(const duet_session *s) { return s->n_evaluated; }
size_t duet_session_kv_bytes(const duet_session *s) { return fwd_kv_bytes(&s->st); }

int duet_session_truncate(duet_session *s, int n) {
    if (n < 0 || n > s->n_past) return DUET_ERR_ARG;
    s->n_past = n;
    if (s->out_pos >= n) s->out_pos = -1; /* outputs describe tokens no longer there */
    return DUET_OK;
}

int duet_session_sync(duet_session *s, const int32_t *tokens, int n, duet_error *err) {
    if (n <= 0) return duet_fail(err, DUET_ERR_ARG, "sync to %d tokens", n);
    int lcp = 0;
    while (lcp < s->n_past && lcp < n && s->tokens[lcp] == tokens[lcp]) lcp++;
    if (lcp == n && s->n_past == n && s->out_pos == n - 1) return DUET_OK; /* already there */
    if (lcp == n) lcp = n - 1; /* need the last token's logits: re-evaluate it */
    duet_session_truncate(s, lcp);
    return duet_session_eval(s, tokens + lcp, n - lcp, 0, err);
}

/* ---- several sessions in one pass ------------------------------------------------------- */
static int check_batch(const duet_batch_seq *seqs, int n_seqs, duet_error *err) {
    if (n_seqs <= 0 || !seqs) return duet_fail(err, DUET_ERR_ARG, "batch of %d sequences", n_seqs);
    for (int i = 0; i < n_seqs; i++) {
        duet_session *s = seqs[i].session;
        if (!s || !seqs[i].tokens || seqs[i].n <= 0)
            return duet_fail(err, DUET_ERR_ARG, "batch sequence %d: no session or %d tokens", i,
                             seqs[i].n);
        if (s->m != seqs[0].session->m)
            return duet_fail(err, DUET_ERR_ARG, "batch sequence %d: model %s, not %s", i,
                             s->m->path, seqs[0].session->m->path);
        for (int k = 0; k < i; k++)
            if (seqs[k].session == s)
                return duet_fail(err, DUET_ERR_ARG, "batch sequences %d and %d: same session", k, i);
        if (seqs[i].n > s->st.n_ctx - s->n_past)
            return duet_fail(err, DUET_ERR_RANGE, "batch sequence %d: context full: %d tokens in "
                             "the session + %d new > n_ctx %d", i, s->n_past, seqs[i].n, s->st.n_ctx);
        for (int t = 0; t < seqs[i].n; t++)
            if (seqs[i].tokens[t] < 0 || seqs[i].tokens[t] >= s->m->hp.n_vocab)
                return duet_fail(err, DUET_ERR_RANGE, "batch sequence %d: token id %d (at %d) is "
                                 "outside the vocabulary [0, %d)", i, seqs[i].tokens[t], t,
                                 s->m->hp.n_vocab);
    }
    for (int i = 0; i < n_seqs; i++) {
        duet_session *s = seqs[i].session;
        int rc = grow_outputs(s, seqs[i].all_logits ? seqs[i].n : 1, err);
        if (!rc) rc = fwd_reserve(&s->st, s->n_past + seqs[i].n, err);
        if (rc) return rc;
    }
    return DUET_OK;
}

int duet_session_eval_batch(const duet_batch_seq *seqs, int n_seqs, duet_error *err) {
    int rc = check_batch(seqs, n_seqs, err);
    if (rc) return rc;
    /* the work buffers of the session with the largest context serve every row (attention
     * scratch is sized by n_ctx) */
    duet_session *ws = seqs[0].session;
    for (int i = 1; i < n_seqs; i++)
        if (seqs[i].session->st.n_ctx > ws->st.n_ctx) ws = seqs[i].session;
    int *done = calloc((size_t)n_seqs, sizeof *done);
    fwd_seq *fs = malloc((size_t)n_seqs * sizeof *fs);
    if (!done || !fs) {
        free(done);
        free(fs);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    size_t E = (size_t)ws->m->hp.n_embd, V = (size_t)ws->m->hp.n_vocab;
    for (int next = 0; next < n_seqs;) { /* one pass per n_batch rows, sequences in order */
        int rows = 0, k = 0;
        for (int i = next; i < n_seqs && rows < ws->st.n_batch; i++) {
            const duet_batch_seq *q = &seqs[i];
            duet_session *s = q->session;
            int c = DUET_MIN(q->n - done[i], ws->st.n_batch - rows), last = done[i] + c == q->n;
            memcpy(s->tokens + s->n_past, q->tokens + done[i], (size_t)c * sizeof(int32_t));
            fs[k++] = (fwd_seq){.st = &s->st, .tokens = q->tokens + done[i], .n = c,
                                .pos = s->n_past, .first_out = q->all_logits ? 0 : last ? c - 1 : c,
                                .hidden = s->hidden + (q->all_logits ? (size_t)done[i] * E : 0)};
            rows += c;
        }
        fwd_eval_batch(&ws->st, fs, k);
        for (int r = 0; r < k; r++) {
            int i = next + r;
            duet_session *s = seqs[i].session;
            if (seqs[i].all_logits)
                fwd_logits(&ws->st, s->hidden + (size_t)done[i] * E, fs[r].n,
                           s->logits + (size_t)done[i] * V);
            s->n_past += fs[r].n;
            s->n_evaluated += fs[r].n;
            done[i] += fs[r].n;
        }
        while (next < n_seqs && done[next] == seqs[next].n) next++;
    }
    for (int i = 0; i < n_seqs; i++) {
        duet_session *s = seqs[i].session;
        s->n_out = seqs[i].all_logits ? seqs[i].n : 1;
        s->out_pos = s->n_past - 1;
        s->logits_pending = !seqs[i].all_logits;
    }
    free(done);
    free(fs);
    return DUET_OK;
}

void duet_session_logits_batch(duet_session *const *ss, int n) {
    duet_session *ws = NULL, **group = malloc((size_t)(n > 0 ? n : 1) * sizeof *group);
    int g = 0;
    for (int i = 0; i <= n; i++) {
        duet_session *s = i < n ? ss[i] : NULL;
        int take = s && s->logits_pending && s->out_pos >= 0 && (!ws || s->m == ws->m);
        if (take && !group) { /* no memory for the batch: compute it alone */
            duet_session_logits(s, -1);
            continue;
        }
        if (take) {
            if (!ws) ws = s; /* first: its own row 0 is both input and output */
            group[g++] = s;
        }
        if (g && (g == ws->st.n_batch || i == n)) {
            size_t E = (size_t)ws->m->hp.n_embd, V = (size_t)ws->m->hp.n_vocab;
            for (int r = 0; r < g; r++) memcpy(ws->st.x + r * E, group[r]->hidden, E * sizeof(float));
            fwd_logits(&ws->st, ws->st.x, g, ws->logits);
            for (int r = 1; r < g; r++)
                memcpy(group[r]->logits, ws->logits + r * V, V * sizeof(float));
            for (int r = 0; r < g; r++) group[r]->logits_pending = 0;
            g = 0;
            ws = NULL;
        }
    }
    free(group);
}

int duet_session_sync_batch(duet_session *const *ss, const int32_t *const *tokens, const int *n,
                            int n_seqs, duet_error *err) {
    duet_batch_seq *seqs = malloc((size_t)(n_seqs > 0 ? n_seqs : 1) * sizeof *seqs);
    if (!seqs) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    int k = 0, rc = DUET_OK;
    for (int i = 0; i < n_seqs && !rc; i++) {
        duet_session *s = ss[i];
        if (n[i] <= 0) {
            rc = duet_fail(err, DUET_ERR_ARG, "batch sequence %d: sync to %d tokens", i, n[i]);
            break;
        }
        int lcp = 0;
        while (lcp < s->n_past && lcp < n[i] && s->tokens[lcp] == tokens[i][lcp]) lcp++;
        if (lcp == n[i] && s->n_past == n[i] && s->out_pos == n[i] - 1) continue;
        if (lcp == n[i]) lcp = n[i] - 1;
        duet_session_truncate(s, lcp);
        seqs[k++] = (duet_batch_seq){.session = s, .tokens = tokens[i] + lcp, .n = n[i] - lcp};
    }
    if (!rc && k) rc = duet_session_eval_batch(seqs, k, err);
    free(seqs);
    return rc;
}
