/*
 * head_train.c: the deferral head trainer (see head_train.h): pair check, pseudo-labels,
 * losses with hand-written gradients, AdamW, validation routing and checkpoint selection,
 * the JSON report.
 * Invariants: token k of the pair is the same gold token in both files (duet_head_train_check_pair);
 * theta holds standardised-feature weights while training and is folded into raw weights
 * only when the head is written out.
 */
#include "learn/head_train.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/atomic_file.h"
#include "base/common.h"
#include "format/quant.h"

const double duet_head_train_rates[DUET_HT_N_RATES] = {0.1, 0.2, 0.3, 0.4, 0.5};

/* ---- F16 rows ---------------------------------------------------------------------------- */
static float g_f16[65536];
static pthread_once_t g_f16_once = PTHREAD_ONCE_INIT;
static void f16_init(void) {
    for (int i = 0; i < 65536; i++) g_f16[i] = fp16_to_fp32((uint16_t)i);
}
static void f16_row(const uint16_t *src, float *dst, int n) {
    for (int i = 0; i < n; i++) dst[i] = g_f16[src[i]];
}

/* ---- pseudo-labels ----------------------------------------------------------------------- */
float duet_head_train_weak_label(const duet_scores_tok *b, const duet_scores_tok *e) {
    const double tol = log1p(-1e-5); /* ties within 1e-5 relative count as argmax */
    int e_top = (double)e->lp >= (double)e->maxlp + tol;
    int b_top = (double)b->lp >= (double)b->maxlp + tol;
    return e_top && !b_top ? 1.0f : 0.0f;
}

/* ---- the head and its losses ------------------------------------------------------------- */
void duet_head_train_layout_init(duet_head_train_layout *L, int features, int n_embd) {
    if (!features) features = DUET_HEAD_FEAT_HIDDEN;
    int k = 0;
    L->features = features;
    L->n_embd = n_embd;
    L->i_u = L->i_ent = L->i_max = L->i_bias = -1;
    if (features & DUET_HEAD_FEAT_HIDDEN) { L->i_u = 0; k = n_embd; }
    if (features & DUET_HEAD_FEAT_ENTROPY) L->i_ent = k++;
    if (features & DUET_HEAD_FEAT_MAXLOGP) L->i_max = k++;
    if (features & (DUET_HEAD_FEAT_ENTROPY | DUET_HEAD_FEAT_MAXLOGP)) L->i_bias = k++;
    L->n_param = k;
}

static double log_sig(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sig(double x) {
    if (x >= 0) return 1 / (1 + exp(-x));
    double e = exp(x);
    return e / (1 + e);
}

static double tok_score(const duet_head_train_layout *L, const duet_head_train_batch *b, int i, const double *th) {
    double s = 0;
    if (L->i_u >= 0) {
        const float *h = b->hidden + (size_t)i * L->n_embd;
        for (int j = 0; j < L->n_embd; j++) s += th[L->i_u + j] * h[j];
    }
    if (L->i_ent >= 0) s += th[L->i_ent] * b->entropy[i];
    if (L->i_max >= 0) s += th[L->i_max] * b->maxlogp[i];
    if (L->i_bias >= 0) s += th[L->i_bias];
    return s;
}

/* Per-token loss at score s and its derivative d loss / d s. */
static double tok_loss(duet_head_objective obj, double s, double lpb, double lpe, double z, double cost,
                       double pw, double *dlds) {
    if (obj == DUET_HT_GAIN) {
        double d = lpe - lpb;
        d = d > DUET_HT_GAIN_CLIP ? DUET_HT_GAIN_CLIP : d < -DUET_HT_GAIN_CLIP ? -DUET_HT_GAIN_CLIP : d;
        if (dlds) *dlds = s - d;
        return 0.5 * (s - d) * (s - d);
    }
    if (obj == DUET_HT_WEAK) {
        double sg = sig(s);
        if (dlds) *dlds = pw * z * (sg - 1) + (1 - z) * sg;
        return -(pw * z * log_sig(s) + (1 - z) * log_sig(-s));
    }
    double a = log_sig(-s) + lpb, c = log_sig(s) + lpe, m = a > c ? a : c;
    double lse = m + log(exp(a - m) + exp(c - m)), sg = sig(s);
    if (dlds) *dlds = sg - exp(c - lse) + cost * sg * (1 - sg);
    return -lse + cost * sg;
}

double duet_head_train_loss_grad(const duet_head_train_layout *L, const duet_head_train_batch *b, duet_head_objective obj, double defer_cost,
                                 double pos_weight, const double *th, double *grad) {
    if (grad) memset(grad, 0, (size_t)L->n_param * sizeof *grad);
    if (b->n <= 0) return 0;
    double tot = 0, inv = 1.0 / b->n;
    for (int i = 0; i < b->n; i++) {
        double s = tok_score(L, b, i, th), g;
        tot += tok_loss(obj, s, obj != DUET_HT_WEAK ? b->lpb[i] : 0, obj != DUET_HT_WEAK ? b->lpe[i] : 0,
                        obj == DUET_HT_WEAK ? b->label[i] : 0, defer_cost, pos_weight, &g);
        if (!grad) continue;
        g *= inv;
        if (L->i_u >= 0) {
            const float *h = b->hidden + (size_t)i * L->n_embd;
            double *gu = grad + L->i_u;
            for (int j = 0; j < L->n_embd; j++) gu[j] += g * h[j];
        }
        if (L->i_ent >= 0) grad[L->i_ent] += g * b->entropy[i];
        if (L->i_max >= 0) grad[L->i_max] += g * b->maxlogp[i];
        if (L->i_bias >= 0) grad[L->i_bias] += g;
    }
    return tot * inv;
}

/* ---- routing ------------------------------------------------------------------------------ */
typedef struct kv { double k; int64_t i; } kv;

static int kv_desc(const void *a, const void *b) {
    const kv *x = a, *y = b;
    if (x->k != y->k) return x->k > y->k ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* p[].k filled with routing keys (higher = defer first); out[r] = mean NLL per token when the
 * top round(rate * n) tokens take the expert's log-prob. */
static void route_curve(kv *p, int64_t n, const float *lpb, const float *lpe, double *out) {
    for (int64_t i = 0; i < n; i++) {
        p[i].i = i;
        if (isnan(p[i].k)) p[i].k = -INFINITY;
    }
    qsort(p, (size_t)n, sizeof *p, kv_desc);
    double base = 0;
    for (int64_t i = 0; i < n; i++) base -= lpb[i];
    double acc = 0;
    int64_t done = 0;
    for (int r = 0; r < DUET_HT_N_RATES; r++) {
        int64_t k = (int64_t)llround(duet_head_train_rates[r] * (double)n);
        for (; done < k; done++) acc += lpb[p[done].i] - lpe[p[done].i];
        out[r] = (base + acc) / (double)n;
    }
}

/* All curves for n tokens; score may be NULL (head curve left as NaN). */
static int routing_fill(const double *score, const float *lpb, const float *lpe,
                        const float *ent, const float *maxlp, int64_t n, uint64_t n_bytes,
                        duet_head_routing *out, duet_error *err) {
    memset(out, 0, sizeof *out);
    out->n_tok = n;
    out->n_bytes = n_bytes;
    kv *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    if (!p) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    double sb = 0, se = 0;
    for (int64_t i = 0; i < n; i++) {
        sb -= lpb[i];
        se -= lpe[i];
    }
    out->base = n ? sb / (double)n : 0;
    out->expert = n ? se / (double)n : 0;
    for (int r = 0; r < DUET_HT_N_RATES; r++)
        out->random[r] = (1 - duet_head_train_rates[r]) * out->base + duet_head_train_rates[r] * out->expert;
    for (int64_t i = 0; i < n; i++) p[i].k = (double)lpe[i] - lpb[i];
    route_curve(p, n, lpb, lpe, out->oracle);
    for (int64_t i = 0; i < n; i++) p[i].k = ent[i];
    route_curve(p, n, lpb, lpe, out->uncertainty);
    for (int64_t i = 0; i < n; i++) p[i].k = -maxlp[i];
    route_curve(p, n, lpb, lpe, out->confidence);
    out->head_mean = NAN;
    for (int r = 0; r < DUET_HT_N_RATES; r++) out->head[r] = NAN;
    if (score) {
        for (int64_t i = 0; i < n; i++) p[i].k = score[i];
        route_curve(p, n, lpb, lpe, out->head);
        out->head_mean = 0;
        for (int r = 0; r < DUET_HT_N_RATES; r++) out->head_mean += out->head[r] / DUET_HT_N_RATES;
    }
    free(p);
    return DUET_OK;
}

/* ---- the pair of score files --------------------------------------------------------------- */
int duet_head_train_check_pair(const duet_scores *B, const duet_scores *E, duet_error *err) {
    const duet_scores_header *hb = duet_scores_get_header(B), *he = duet_scores_get_header(E);
    const char *pb = duet_scores_path(B), *pe = duet_scores_path(E);
    if (hb->ids_vocab_hash != he->ids_vocab_hash || hb->ids_n_vocab != he->ids_n_vocab)
        return duet_fail(err, DUET_ERR_ARG, "%s and %s number tokens differently: ids from '%s' "
                         "(%u tokens, vocab hash %016llx) vs '%s' (%u tokens, vocab hash %016llx); "
                         "score the expert with --tokenizer-of BASE", pb, pe, hb->ids_name,
                         hb->ids_n_vocab, (unsigned long long)hb->ids_vocab_hash, he->ids_name,
                         he->ids_n_vocab, (unsigned long long)he->ids_vocab_hash);
    if (hb->n_seq != he->n_seq)
        return duet_fail(err, DUET_ERR_ARG, "%s has %llu sequences, %s has %llu: not the same "
                         "data and context (-c)", pb, (unsigned long long)hb->n_seq, pe,
                         (unsigned long long)he->n_seq);
    const duet_scores_seq *sb = duet_scores_seqs(B), *se = duet_scores_seqs(E);
    for (uint64_t i = 0; i < hb->n_seq; i++) {
        if (sb[i].n_tok != se[i].n_tok || sb[i].n_prompt != se[i].n_prompt ||
            sb[i].example != se[i].example)
            return duet_fail(err, DUET_ERR_ARG, "sequence %llu differs: %s has example %u with %u "
                             "context + %u response tokens, %s has example %u with %u + %u",
                             (unsigned long long)i, pb, sb[i].example, sb[i].n_prompt, sb[i].n_tok,
                             pe, se[i].example, se[i].n_prompt, se[i].n_tok);
        const duet_scores_tok *tb = duet_scores_seq_toks(B, i), *te = duet_scores_seq_toks(E, i);
        for (uint32_t t = 0; t < sb[i].n_tok; t++)
            if (tb[t].gold != te[t].gold)
                return duet_fail(err, DUET_ERR_ARG, "sequence %llu (example %u) token %u: gold id "
                                 "%d in %s, %d in %s", (unsigned long long)i, sb[i].example, t,
                                 tb[t].gold, pb, te[t].gold, pe);
        duet_scores_done(B, i);
        duet_scores_done(E, i);
    }
    return DUET_OK;
}

static int check_base_file(const duet_scores *B, int features, int n_embd, duet_error *err) {
    const duet_scores_header *h = duet_scores_get_header(B);
    if (h->vocab_hash != h->ids_vocab_hash)
        return duet_fail(err, DUET_ERR_ARG, "%s: the base file was tokenised by '%s', not by its "
                         "model '%s': score the base with its own tokenizer", duet_scores_path(B),
                         h->ids_name, h->model_name);
    if ((features & DUET_HEAD_FEAT_HIDDEN) && (int)h->hidden_dim != n_embd)
        return duet_fail(err, DUET_ERR_ARG, "%s: %s (the head reads the hidden state of n_embd "
                         "%d; score the base without --no-hidden)", duet_scores_path(B),
                         h->hidden_dim ? "hidden states have another size" : "no hidden states",
                         n_embd);
    return DUET_OK;
}

int duet_head_eval_scores(const duet_head *head, const duet_scores *B, const duet_scores *E, duet_head_routing *out,
                          duet_error *err) {
    int rc = duet_head_train_check_pair(B, E, err);
    if (!rc) rc = check_base_file(B, duet_head_features(head), duet_head_n_embd(head), err);
    if (rc) return rc;
    pthread_once(&g_f16_once, f16_init);
    const duet_scores_header *hb = duet_scores_get_header(B);
    int64_t n = (int64_t)hb->n_tok;
    int hd = (int)hb->hidden_dim, use_h = duet_head_features(head) & DUET_HEAD_FEAT_HIDDEN;
    double *s = malloc((size_t)(n ? n : 1) * sizeof *s);
    float *a = malloc((size_t)(n ? n : 1) * 4 * sizeof *a), *row = malloc((size_t)(hd ? hd : 1) * sizeof *row);
    if (!s || !a || !row) {
        free(s);
        free(a);
        free(row);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    float *lpb = a, *lpe = a + n, *ent = a + 2 * n, *mx = a + 3 * n;
    for (uint64_t q = 0; q < hb->n_seq; q++) {
        const duet_scores_seq *sq = &duet_scores_seqs(B)[q];
        const duet_scores_tok *tb = duet_scores_seq_toks(B, q), *te = duet_scores_seq_toks(E, q);
        const uint16_t *hh = duet_scores_seq_hidden(B, q);
        for (uint32_t t = 0; t < sq->n_tok; t++) {
            int64_t k = (int64_t)sq->tok_start + t;
            lpb[k] = tb[t].lp;
            lpe[k] = te[t].lp;
            ent[k] = tb[t].entropy;
            mx[k] = tb[t].maxlp;
            if (use_h) f16_row(hh + (size_t)t * hd, row, hd);
            s[k] = duet_head_score_ex(head, use_h ? row : NULL, ent[k], mx[k]);
        }
        duet_scores_done(B, q);
        duet_scores_done(E, q);
    }
    rc = routing_fill(s, lpb, lpe, ent, mx, n, hb->n_bytes, out, err);
    free(s);
    free(a);
    free(row);
    return rc;
}

/* ---- training ------------------------------------------------------------------------------ */
typedef struct trainer {
    const duet_scores *B, *E;
    duet_head_train_params p;
    duet_head_train_layout L;
    int hd;                        /* hidden size stored in B */
    float *lpb, *lpe, *ent, *mx, *z; /* [n_tok] by global token index */
    double mean[2], sd[2];         /* standardisation of entropy, max log-prob (training) */
    int *train, *val, n_train, n_val;
    int64_t n_val_tok;
    uint64_t val_bytes;
    /* one batch of tokens as the loss reads it */
    int cap;
    float *bh, *be, *bm, *bb, *bx, *bz;
    duet_head_train_batch batch;
    /* validation */
    double *vs;
    float *vlpb, *vlpe, *vent, *vmx; /* the training arrays themselves when validation is
                                        every sequence (the paper's schedule) */
    int v_owned;
    json_t *steps, *losses;
    uint64_t rng;
} trainer;

static void shuffle(int *a, int n, uint64_t *rng) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(duet_splitmix64(rng) % (uint64_t)(i + 1)), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* Fill the batch with the tokens of sequences seqs[0..n). */
static void load_batch(trainer *T, const int *seqs, int n) {
    const duet_scores_seq *sq = duet_scores_seqs(T->B);
    int k = 0, E = T->hd;
    for (int i = 0; i < n; i++) {
        const duet_scores_seq *q = &sq[seqs[i]];
        const uint16_t *hh = T->L.i_u >= 0 ? duet_scores_seq_hidden(T->B, (uint64_t)seqs[i]) : NULL;
        for (uint32_t t = 0; t < q->n_tok; t++, k++) {
            int64_t g = (int64_t)q->tok_start + t;
            if (hh) f16_row(hh + (size_t)t * E, T->bh + (size_t)k * E, E);
            T->be[k] = (float)((T->ent[g] - T->mean[0]) / T->sd[0]);
            T->bm[k] = (float)((T->mx[g] - T->mean[1]) / T->sd[1]);
            T->bb[k] = T->lpb[g];
            T->bx[k] = T->lpe[g];
            T->bz[k] = T->z[g];
        }
        duet_scores_done(T->B, (uint64_t)seqs[i]);
    }
    T->batch.n = k;
}

static json_t *jnum(double x) { return isfinite(x) ? json_real(x) : json_null(); }
static json_t *jarr(const double *x, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, jnum(x[i]));
    return a;
}

typedef struct evalres {
    double val_loss, val_nll, val_bce, route[DUET_HT_N_RATES], mean;
} evalres;

/* Validation pass at theta: scores, losses and routing. */
static int evaluate(trainer *T, const double *th, duet_head_objective obj, evalres *r, duet_head_routing *rt,
                    duet_error *err) {
    int bs = T->p.batch_seqs;
    int64_t k = 0;
    double ln = 0, lb = 0, lo = 0;
    for (int i = 0; i < T->n_val; i += bs) {
        int n = DUET_MIN(bs, T->n_val - i);
        load_batch(T, T->val + i, n);
        for (int t = 0; t < T->batch.n; t++, k++) {
            double s = tok_score(&T->L, &T->batch, t, th);
            T->vs[k] = s;
            ln += tok_loss(DUET_HT_NLL, s, T->bb[t], T->bx[t], 0, 0, 1, NULL);
            lb += tok_loss(DUET_HT_WEAK, s, 0, 0, T->bz[t], 0, T->p.pos_weight, NULL);
            lo += tok_loss(obj, s, T->bb[t], T->bx[t], T->bz[t], T->p.defer_cost, T->p.pos_weight, NULL);
        }
    }
    double nv = (double)T->n_val_tok;
    r->val_nll = ln / nv;
    r->val_bce = lb / nv;
    r->val_loss = lo / nv;
    duet_head_routing tmp;
    if (!rt) rt = &tmp;
    int rc = routing_fill(T->vs, T->vlpb, T->vlpe, T->vent, T->vmx, T->n_val_tok, T->val_bytes, rt, err);
    if (rc) return rc;
    memcpy(r->route, rt->head, sizeof r->route);
    r->mean = rt->head_mean;
    return DUET_OK;
}

static void log_eval(trainer *T, int gstep, const char *phase, int epoch, double train_loss,
                     const evalres *r) {
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(gstep));
    json_object_set_new(o, "phase", json_string(phase));
    json_object_set_new(o, "epoch", json_integer(epoch));
    json_object_set_new(o, "train_loss", jnum(train_loss));
    json_object_set_new(o, "val_loss", jnum(r->val_loss));
    json_object_set_new(o, "val_nll", jnum(r->val_nll));
    json_object_set_new(o, "val_bce", jnum(r->val_bce));
    json_object_set_new(o, "routing_nll", jarr(r->route, DUET_HT_N_RATES));
    json_object_set_new(o, "routing_mean", jnum(r->mean));
    json_array_append_new(T->steps, o);
}

static void trainer_free(trainer *T) {
    free(T->lpb);
    free(T->train);
    free(T->val);
    free(T->bh);
    free(T->be);
    free(T->vs);
    if (T->v_owned) free(T->vlpb);
    json_decref(T->steps);
    json_decref(T->losses);
}

/* Arrays, pseudo-labels, split and standardisation. */
static int trainer_init(trainer *T, duet_error *err) {
    const duet_scores_header *hb = duet_scores_get_header(T->B);
    int64_t n = (int64_t)hb->n_tok;
    int ns = (int)hb->n_seq;
    if (ns < 2)
        return duet_fail(err, DUET_ERR_ARG, "%s: %d sequence%s: at least 2 are needed (training "
                         "and validation)", duet_scores_path(T->B), ns, ns == 1 ? "" : "s");
    if (!(T->lpb = malloc((size_t)n * 5 * sizeof(float))) ||
        !(T->train = malloc((size_t)ns * sizeof(int))) || !(T->val = malloc((size_t)ns * sizeof(int))))
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory for %lld tokens", (long long)n);
    T->lpe = T->lpb + n;
    T->ent = T->lpb + 2 * n;
    T->mx = T->lpb + 3 * n;
    T->z = T->lpb + 4 * n;
    for (int q = 0; q < ns; q++) {
        const duet_scores_seq *s = &duet_scores_seqs(T->B)[q];
        const duet_scores_tok *tb = duet_scores_seq_toks(T->B, (uint64_t)q), *te = duet_scores_seq_toks(T->E, (uint64_t)q);
        for (uint32_t t = 0; t < s->n_tok; t++) {
            int64_t k = (int64_t)s->tok_start + t;
            T->lpb[k] = tb[t].lp;
            T->lpe[k] = te[t].lp;
            T->ent[k] = tb[t].entropy;
            T->mx[k] = tb[t].maxlp;
            T->z[k] = duet_head_train_weak_label(&tb[t], &te[t]);
        }
        duet_scores_done(T->B, (uint64_t)q);
        duet_scores_done(T->E, (uint64_t)q);
    }
    int *perm = T->train;
    for (int i = 0; i < ns; i++) perm[i] = i;
    uint64_t rng = T->p.seed ^ 0x243f6a8885a308d3ull;
    shuffle(perm, ns, &rng);
    int nv = (int)llround(T->p.val_frac * ns);
    nv = DUET_MAX(1, DUET_MIN(nv, ns - 1));
    memcpy(T->val, perm, (size_t)nv * sizeof(int));
    memmove(T->train, perm + nv, (size_t)(ns - nv) * sizeof(int));
    T->n_val = nv;
    T->n_train = ns - nv;
    if (T->p.schedule == DUET_HT_SCHEDULE_PAPER) { /* every sequence, in file order, both roles */
        for (int i = 0; i < ns; i++) T->train[i] = T->val[i] = i;
        T->n_train = T->n_val = nv = ns;
    }
    /* sorted validation order: the routing arrays follow the file's order */
    for (int i = 1; i < nv; i++)
        for (int j = i; j > 0 && T->val[j - 1] > T->val[j]; j--) {
            int t = T->val[j];
            T->val[j] = T->val[j - 1];
            T->val[j - 1] = t;
        }
    double m[2] = {0, 0}, m2[2] = {0, 0};
    int64_t nt = 0, maxtok = 0;
    for (int i = 0; i < T->n_train; i++) {
        const duet_scores_seq *s = &duet_scores_seqs(T->B)[T->train[i]];
        for (uint32_t t = 0; t < s->n_tok; t++) {
            int64_t k = (int64_t)s->tok_start + t;
            m[0] += T->ent[k];
            m2[0] += (double)T->ent[k] * T->ent[k];
            m[1] += T->mx[k];
            m2[1] += (double)T->mx[k] * T->mx[k];
        }
        nt += s->n_tok;
    }
    for (int f = 0; f < 2; f++) {
        T->mean[f] = m[f] / (double)nt;
        double var = m2[f] / (double)nt - T->mean[f] * T->mean[f];
        T->sd[f] = var > 1e-12 ? sqrt(var) : 1.0;
    }
    for (uint64_t q = 0; q < hb->n_seq; q++) maxtok = DUET_MAX(maxtok, (int64_t)duet_scores_seqs(T->B)[q].n_tok);
    T->n_val_tok = 0;
    for (int i = 0; i < nv; i++) {
        T->n_val_tok += duet_scores_seqs(T->B)[T->val[i]].n_tok;
        T->val_bytes += duet_scores_seqs(T->B)[T->val[i]].n_bytes;
    }
    T->cap = (int)(maxtok * T->p.batch_seqs);
    int E = T->L.i_u >= 0 ? T->hd : 0;
    if (!(T->bh = malloc((size_t)T->cap * (size_t)(E ? E : 1) * sizeof(float))) ||
        !(T->be = malloc((size_t)T->cap * 5 * sizeof(float))) ||
        !(T->vs = malloc((size_t)T->n_val_tok * sizeof(double))))
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    T->bm = T->be + T->cap;
    T->bb = T->be + 2 * T->cap;
    T->bx = T->be + 3 * T->cap;
    T->bz = T->be + 4 * T->cap;
    T->batch = (duet_head_train_batch){0, T->bh, T->be, T->bm, T->bb, T->bx, T->bz};
    T->rng = rng;
    T->steps = json_array();
    T->losses = json_array();
    if (nv == ns) { /* every sequence in file order: the same arrays, no copy per token */
        T->vlpb = T->lpb;
        T->vlpe = T->lpe;
        T->vent = T->ent;
        T->vmx = T->mx;
        return DUET_OK;
    }
    if (!(T->vlpb = malloc((size_t)T->n_val_tok * 4 * sizeof(float))))
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    T->v_owned = 1;
    T->vlpe = T->vlpb + T->n_val_tok;
    T->vent = T->vlpb + 2 * T->n_val_tok;
    T->vmx = T->vlpb + 3 * T->n_val_tok;
    int64_t k = 0;
    for (int i = 0; i < nv; i++) {
        const duet_scores_seq *s = &duet_scores_seqs(T->B)[T->val[i]];
        for (uint32_t t = 0; t < s->n_tok; t++, k++) {
            int64_t g = (int64_t)s->tok_start + t;
            T->vlpb[k] = T->lpb[g];
            T->vlpe[k] = T->lpe[g];
            T->vent[k] = T->ent[g];
            T->vmx[k] = T->mx[g];
        }
    }
    return DUET_OK;
}

static int write_report(trainer *T, const duet_head_train_result *res, const duet_head_routing *vr,
                        duet_error *err) {
    json_t *o = json_object();
    char fs[64];
    duet_head_features_string(T->L.features, fs, sizeof fs);
    json_object_set_new(o, "base_scores", json_string(duet_scores_path(T->B)));
    json_object_set_new(o, "expert_scores", json_string(duet_scores_path(T->E)));
    json_object_set_new(o, "base_model", json_string(duet_scores_get_header(T->B)->model_name));
    json_object_set_new(o, "expert_model", json_string(duet_scores_get_header(T->E)->model_name));
    static const char *objs[] = {"nll", "weak", "gain"};
    json_object_set_new(o, "objective", json_string(objs[T->p.objective]));
    json_object_set_new(o, "defer_cost", json_real(T->p.defer_cost));
    json_object_set_new(o, "features", json_string(fs));
    json_object_set_new(o, "epochs", json_integer(T->p.epochs));
    int weak_start = T->p.objective == DUET_HT_NLL && T->p.weak_epochs > 0;
    json_object_set_new(o, "weak_epochs", json_integer(weak_start ? T->p.weak_epochs : 0));
    json_object_set_new(o, "lr", json_real(T->p.lr));
    json_object_set_new(o, "weak_lr", weak_start ? json_real(T->p.weak_lr) : json_null());
    json_object_set_new(o, "weight_decay", json_real(T->p.weight_decay));
    json_object_set_new(o, "pos_weight", json_real(T->p.pos_weight));
    json_object_set_new(o, "val_frac", json_real(T->p.val_frac));
    json_object_set_new(o, "schedule", json_string(T->p.schedule == DUET_HT_SCHEDULE_PAPER ? "paper" : "duet"));
    json_object_set_new(o, "seed", json_integer((json_int_t)T->p.seed));
    json_object_set_new(o, "batch_seqs", json_integer(T->p.batch_seqs));
    json_object_set_new(o, "n_train_seq", json_integer(res->n_train_seq));
    json_object_set_new(o, "n_val_seq", json_integer(res->n_val_seq));
    json_object_set_new(o, "n_train_tok", json_integer(res->n_train_tok));
    json_object_set_new(o, "n_val_tok", json_integer(res->n_val_tok));
    json_object_set_new(o, "val_bytes", json_integer((json_int_t)vr->n_bytes));
    json_object_set_new(o, "pseudo_label_positive_rate", jnum(res->pos_rate));
    json_object_set_new(o, "rates", jarr(duet_head_train_rates, DUET_HT_N_RATES));
    double bpt = vr->n_bytes ? (double)vr->n_tok / (double)vr->n_bytes : NAN;
    json_t *bl = json_object();
    const struct { const char *name; const double *v; } curves[] = {
        {"collm", vr->head}, {"random", vr->random}, {"oracle", vr->oracle},
        {"uncertainty", vr->uncertainty}, {"confidence", vr->confidence}};
    for (size_t c = 0; c < sizeof curves / sizeof curves[0]; c++) {
        double pb[DUET_HT_N_RATES], gap[DUET_HT_N_RATES];
        for (int r = 0; r < DUET_HT_N_RATES; r++) {
            pb[r] = curves[c].v[r] * bpt;
            gap[r] = (vr->base - curves[c].v[r]) / (vr->base - vr->expert);
        }
        json_t *x = json_object();
        json_object_set_new(x, "nll_per_token", jarr(curves[c].v, DUET_HT_N_RATES));
        json_object_set_new(x, "nll_per_byte", jarr(pb, DUET_HT_N_RATES));
        json_object_set_new(x, "gap_closed", jarr(gap, DUET_HT_N_RATES));
        json_object_set_new(bl, curves[c].name, x);
    }
    json_t *b = json_object(), *e = json_object();
    json_object_set_new(b, "nll_per_token", jnum(vr->base));
    json_object_set_new(b, "nll_per_byte", jnum(vr->base * bpt));
    json_object_set_new(e, "nll_per_token", jnum(vr->expert));
    json_object_set_new(e, "nll_per_byte", jnum(vr->expert * bpt));
    json_object_set_new(bl, "base", b);
    json_object_set_new(bl, "expert", e);
    json_object_set_new(o, "validation", bl);
    json_t *sel = json_object();
    json_object_set_new(sel, "step", json_integer(res->best_step));
    json_object_set_new(sel, "phase", json_string(res->best_phase));
    json_object_set_new(sel, "val_loss", jnum(res->best_val_loss));
    json_object_set_new(sel, "routing_mean", jnum(vr->head_mean));
    json_object_set_new(o, "selected", sel);
    json_object_set_new(o, "evaluations", json_incref(T->steps));
    json_object_set_new(o, "train_loss", json_incref(T->losses));
    duet_atomic out;
    int rc = duet_atomic_open(&out, T->p.report_path, err);
    if (!rc && json_dumpf(o, out.f, JSON_INDENT(1) | JSON_REAL_PRECISION(7))) {
        duet_atomic_abort(&out);
        rc = duet_fail(err, DUET_ERR_IO, "%s: cannot write the report", T->p.report_path);
    }
    json_decref(o);
    return rc ? rc : duet_atomic_commit(&out, err);
}

void duet_head_train_preset_paper(duet_head_train_params *p) {
    p->objective = DUET_HT_WEAK;
    p->schedule = DUET_HT_SCHEDULE_PAPER;
    p->features = DUET_HEAD_FEAT_HIDDEN;
    p->lr = p->weak_lr = 2e-5;
    p->epochs = 1;
    p->batch_seqs = 8;
    p->pos_weight = 8;  /* the official script's --deferral_initialization_weight_balance */
    p->weight_decay = 0;
    p->defer_cost = 0;
}

/* Fills the unset training parameters with their defaults and refuses the out-of-range ones. */
static int ht_defaults(duet_head_train_params *p, const duet_scores_header *hb, duet_error *err) {
    if (!p->features) p->features = DUET_HEAD_FEAT_HIDDEN;
    /* Adam moves every weight by about lr per step, so a step moves u . h by about
     * lr * n_embd: the default rates shrink with the hidden size (measured at n_embd 128) */
    double lr_scale = (p->features & DUET_HEAD_FEAT_HIDDEN) && hb->n_embd > 128
                          ? 128.0 / hb->n_embd : 1.0;
    if (p->epochs <= 0) p->epochs = p->objective == DUET_HT_NLL ? 2 : 5;
    if (p->weak_epochs == 0) p->weak_epochs = 3;
    if (p->lr <= 0) p->lr = (p->objective == DUET_HT_NLL ? 1e-3 : 1e-2) * lr_scale;
    if (p->weak_lr <= 0) p->weak_lr = (p->objective == DUET_HT_WEAK ? p->lr : 1e-2 * lr_scale);
    if (p->pos_weight <= 0) p->pos_weight = 8;
    if (p->val_frac <= 0) p->val_frac = 0.1;
    if (p->batch_seqs <= 0) p->batch_seqs = 8;
    if (p->evals_per_phase <= 0) p->evals_per_phase = 10;
    if (!(p->defer_cost >= 0) || !(p->val_frac < 1) || p->features > 7 || !(p->weight_decay >= 0) ||
        p->objective < DUET_HT_NLL || p->objective > DUET_HT_GAIN ||
        (p->schedule != DUET_HT_SCHEDULE_DUET && p->schedule != DUET_HT_SCHEDULE_PAPER))
        return duet_fail(err, DUET_ERR_ARG, "head training: defer cost %g, validation share %g, "
                         "features %d, weight decay %g or objective %d out of range", p->defer_cost,
                         p->val_frac, p->features, p->weight_decay, (int)p->objective);
    return DUET_OK;
}

/* Training set sizes and the share of positive pseudo-labels in it. */
static void count_train(const trainer *T, duet_head_train_result *R) {
    R->n_train_seq = T->n_train;
    R->n_val_seq = T->n_val;
    R->n_val_tok = T->n_val_tok;
    double pos = 0;
    for (int i = 0; i < T->n_train; i++) {
        const duet_scores_seq *s = &duet_scores_seqs(T->B)[T->train[i]];
        for (uint32_t t = 0; t < s->n_tok; t++) pos += T->z[s->tok_start + t];
        R->n_train_tok += s->n_tok;
    }
    R->pos_rate = pos / (double)R->n_train_tok;
}

typedef struct ht_phase { const char *name; duet_head_objective obj; int epochs; double lr; } ht_phase;

/* The phases of the run: the objective alone, or for NLL a weak-supervision start first. */
static int plan_phases(const duet_head_train_params *p, ht_phase *ph) {
    int n_ph = 0;
    if (p->objective == DUET_HT_WEAK) ph[n_ph++] = (ht_phase){"weak", DUET_HT_WEAK, p->epochs, p->weak_lr};
    else if (p->objective == DUET_HT_GAIN) ph[n_ph++] = (ht_phase){"gain", DUET_HT_GAIN, p->epochs, p->lr};
    else {
        if (p->weak_epochs > 0) ph[n_ph++] = (ht_phase){"weak", DUET_HT_WEAK, p->weak_epochs, p->weak_lr};
        ph[n_ph++] = (ht_phase){"nll", DUET_HT_NLL, p->epochs, p->lr};
    }
    return n_ph;
}

/* One AdamW step (step counts from 1) with the gradient clipped to norm 1; the bias is not
 * decayed. */
static void adam_update(const duet_head_train_layout *L, double *th, const double *g, double *m, double *v,
                        int step, double lr, double weight_decay, int no_clip) {
    int np = L->n_param;
    double b1 = 0.9, b2 = 0.999;
    double gn = 0;
    for (int j = 0; j < np; j++) gn += g[j] * g[j];
    gn = sqrt(gn);
    double clip = gn > 1.0 && !no_clip ? 1.0 / gn : 1.0;
    double c1 = 1 - pow(b1, step), c2 = 1 - pow(b2, step);
    for (int j = 0; j < np; j++) {
        double gj = g[j] * clip;
        m[j] = b1 * m[j] + (1 - b1) * gj;
        v[j] = b2 * v[j] + (1 - b2) * gj * gj;
        if (j != L->i_bias) th[j] -= lr * weight_decay * th[j];
        th[j] -= lr * (m[j] / c1) / (sqrt(v[j] / c2) + 1e-8);
    }
}

/* Puts the kept weights into the head: u, and the entropy and max-probability weights with
 * their standardization folded into the weights and the bias. */
static int fold_head(const trainer *T, const double *best, duet_head *h, duet_error *err) {
    const duet_scores_header *hb = duet_scores_get_header(T->B);
    int np = T->L.n_param;
    float *u = calloc((size_t)hb->n_embd, sizeof *u);
    if (!u) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (T->L.i_u >= 0)
        for (int j = 0; j < T->L.n_embd; j++) u[j] = (float)best[T->L.i_u + j];
    duet_head_set_u(h, u, (int)hb->n_embd);
    free(u);
    float w[2] = {0, 0};
    double bias = T->L.i_bias >= 0 ? best[T->L.i_bias] : 0;
    if (T->L.i_ent >= 0) {
        w[0] = (float)(best[T->L.i_ent] / T->sd[0]);
        bias -= best[T->L.i_ent] * T->mean[0] / T->sd[0];
    }
    if (T->L.i_max >= 0) {
        w[1] = (float)(best[T->L.i_max] / T->sd[1]);
        bias -= best[T->L.i_max] * T->mean[1] / T->sd[1];
    }
    if (duet_head_set_features(h, T->L.features, w, (float)bias))
        return duet_fail(err, DUET_ERR_RANGE, "head training diverged (non-finite weights)");
    for (int j = 0; j < np; j++)
        if (!isfinite(best[j]))
            return duet_fail(err, DUET_ERR_RANGE, "head training diverged (weight %d is %g)", j, best[j]);
    return DUET_OK;
}

int duet_head_train(const duet_scores *B, const duet_scores *E, const duet_head_train_params *params, duet_head **out,
                    duet_head_train_result *res, duet_error *err) {
    *out = NULL;
    trainer T;
    memset(&T, 0, sizeof T);
    T.B = B;
    T.E = E;
    if (params) T.p = *params;
    duet_head_train_params *p = &T.p;
    int rc = ht_defaults(p, duet_scores_get_header(B), err);
    if (rc) return rc;
    const duet_scores_header *hb = duet_scores_get_header(B);
    rc = duet_head_train_check_pair(B, E, err);
    if (!rc) rc = check_base_file(B, p->features, (int)hb->n_embd, err);
    if (rc) return rc;
    pthread_once(&g_f16_once, f16_init);
    T.hd = (int)hb->hidden_dim;
    duet_head_train_layout_init(&T.L, p->features, (int)hb->n_embd);
    double *th = NULL, *best = NULL, *g = NULL, *m = NULL, *v = NULL;
    duet_head *h = NULL;
    duet_head_train_result R;
    memset(&R, 0, sizeof R);
    if ((rc = trainer_init(&T, err))) goto done;
    int np = T.L.n_param;
    th = calloc((size_t)np, sizeof *th);
    best = calloc((size_t)np, sizeof *best);
    g = calloc((size_t)np, sizeof *g);
    m = calloc((size_t)np, sizeof *m);
    v = calloc((size_t)np, sizeof *v);
    if (!th || !best || !g || !m || !v) {
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (p->u_init && T.L.i_u >= 0)
        for (int j = 0; j < T.L.n_embd; j++) th[T.L.i_u + j] = p->u_init[j];
    count_train(&T, &R);
    ht_phase ph[2];
    int n_ph = plan_phases(p, ph);
    evalres er;
    if ((rc = evaluate(&T, th, ph[0].obj, &er, NULL, err))) goto done;
    log_eval(&T, 0, "init", 0, NAN, &er);
    double best_mean = er.mean;
    memcpy(best, th, (size_t)np * sizeof *th);
    snprintf(R.best_phase, sizeof R.best_phase, "init");
    R.best_val_loss = er.val_loss;
    int gstep = 0, bs = p->batch_seqs, paper = p->schedule == DUET_HT_SCHEDULE_PAPER;
    for (int f = 0; f < n_ph; f++) {
        int per_epoch = (T.n_train + bs - 1) / bs, steps = per_epoch * ph[f].epochs;
        int warm = DUET_MAX(1, (int)ceil(0.04 * steps));
        int every = DUET_MAX(1, steps / p->evals_per_phase), report = DUET_MAX(1, steps / 100);
        memset(m, 0, (size_t)np * sizeof *m);
        memset(v, 0, (size_t)np * sizeof *v);
        double run = 0, last_route = er.mean;
        int run_n = 0, step = 0;
        for (int ep = 0; ep < ph[f].epochs; ep++) {
            if (!paper) shuffle(T.train, T.n_train, &T.rng);
            for (int i = 0; i < T.n_train; i += bs) {
                load_batch(&T, T.train + i, DUET_MIN(bs, T.n_train - i));
                double loss = duet_head_train_loss_grad(&T.L, &T.batch, ph[f].obj, p->defer_cost,
                                                        p->pos_weight, th, g);
                step++;
                gstep++;
                double lr = paper ? ph[f].lr
                                  : ph[f].lr * (step <= warm ? (double)step / warm
                                                             : (double)(steps - step + 1) / (steps - warm + 1));
                adam_update(&T.L, th, g, m, v, step, lr, p->weight_decay, paper);
                json_t *lo = json_array();
                json_array_append_new(lo, json_integer(gstep));
                json_array_append_new(lo, jnum(loss));
                json_array_append_new(T.losses, lo);
                run += loss;
                run_n++;
                if (step % every == 0 || step == steps) {
                    if ((rc = evaluate(&T, th, ph[f].obj, &er, NULL, err))) goto done;
                    log_eval(&T, gstep, ph[f].name, ep + 1, run / run_n, &er);
                    last_route = er.mean;
                    if (er.mean < best_mean || (paper && step == steps && f == n_ph - 1)) {
                        best_mean = er.mean;
                        memcpy(best, th, (size_t)np * sizeof *th);
                        R.best_step = gstep;
                        snprintf(R.best_phase, sizeof R.best_phase, "%s", ph[f].name);
                        R.best_val_loss = er.val_loss;
                    }
                }
                if (p->progress && (step % report == 0 || step == steps)) {
                    duet_head_train_progress pr = {ph[f].name, step, steps, ep + 1, run / run_n, last_route, best_mean};
                    p->progress(p->ud, &pr);
                    run = 0;
                    run_n = 0;
                }
            }
        }
    }
    /* the kept checkpoint: routing on validation, then the head with folded features */
    if ((rc = evaluate(&T, best, ph[n_ph - 1].obj, &er, &R.val, err))) goto done;
    if ((rc = duet_head_new(hb->model_name, (int)hb->n_embd, (int)hb->n_vocab, hb->vocab_hash, &h, err)))
        goto done;
    if ((rc = fold_head(&T, best, h, err))) goto done;
    if (p->report_path && (rc = write_report(&T, &R, &R.val, err))) goto done;
done:
    free(th);
    free(best);
    free(g);
    free(m);
    free(v);
    trainer_free(&T);
    if (rc) {
        duet_head_free(h);
        return rc;
    }
    if (res) *res = R;
    *out = h;
    return DUET_OK;
}
