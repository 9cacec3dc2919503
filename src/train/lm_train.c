/*
 * lm_train.c: training runs (see duet.h, training the base): data into sequences and
 * batches, the step loop with gradient accumulation, held-out evaluation, checkpoints and
 * resume, the JSON log and the loss curve (CSV + SVG).
 * Invariants: the batch of step s depends only on (seed, s), never on earlier steps, so
 * resuming needs only the step count; with an expert, seq k of the plan is seq k of the
 * expert's score file (checked token by token before training).
 */
#include "train/lm.h"
#include "learn/head_train.h"
#include "learn/scores.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/common.h"
#include "engine/model.h"
#include "base/svg.h"
#include "learn/eval.h"

typedef struct seqset {
    duet_scores_plan plan;
    float *lpe;          /* [plan.n_ids] expert log-prob of each token (NaN: none), or its
                            weak label 0/1 under the weak objective */
    int *idx;            /* sequences of this split */
    int n;
} seqset;

static void seqset_free(seqset *s) {
    duet_scores_plan_free(&s->plan);
    free(s->lpe);
    free(s->idx);
    memset(s, 0, sizeof *s);
}

/* A score file must describe exactly the plan's response tokens. */
static int check_scores(const duet_scores_plan *p, const duet_scores *e, const char *data_path,
                        duet_error *err) {
    const duet_scores_header *h = duet_scores_get_header(e);
    if ((int64_t)h->n_seq != p->n_seq)
        return duet_fail(err, DUET_ERR_ARG, "%s: %llu sequences, but %s gives %d with this "
                         "tokenizer and context (score it with --tokenizer-of BASE and --n-ctx "
                         "equal to the trainer's sequence length + 1)", duet_scores_path(e),
                         (unsigned long long)h->n_seq, data_path, p->n_seq);
    const duet_scores_seq *es = duet_scores_seqs(e);
    for (int k = 0; k < p->n_seq; k++) {
        const duet_scores_plan_seq *q = &p->seq[k];
        if ((int)es[k].n_prompt != q->n_prompt || (int)es[k].n_tok != q->n - q->n_prompt)
            return duet_fail(err, DUET_ERR_ARG, "%s: sequence %d has %u context + %u scored "
                             "tokens, the trainer's has %d + %d (different data, tokenizer or "
                             "context)", duet_scores_path(e), k, es[k].n_prompt, es[k].n_tok,
                             q->n_prompt, q->n - q->n_prompt);
        const duet_scores_tok *t = duet_scores_seq_toks(e, (uint64_t)k);
        for (int j = 0; j < q->n - q->n_prompt; j++) {
            if (t[j].gold != p->ids[q->off + q->n_prompt + j])
                return duet_fail(err, DUET_ERR_ARG, "%s: sequence %d token %d is id %d, the "
                                 "trainer's is %d (score with --tokenizer-of BASE)", duet_scores_path(e),
                                 k, j, t[j].gold, p->ids[q->off + q->n_prompt + j]);
        }
        duet_scores_done(e, (uint64_t)k);
    }
    return DUET_OK;
}

/* Per token of the plan: the expert's log-prob, or with the base's scores (weak objective)
 * the weak label of the pair. */
static int attach_expert(seqset *s, const duet_scores *e, const duet_scores *base,
                         const char *data_path, duet_error *err) {
    const duet_scores_plan *p = &s->plan;
    int rc = check_scores(p, e, data_path, err);
    if (!rc && base) rc = check_scores(p, base, data_path, err);
    if (rc) return rc;
    s->lpe = malloc((size_t)(p->n_ids ? p->n_ids : 1) * sizeof(float));
    if (!s->lpe) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < p->n_ids; i++) s->lpe[i] = NAN;
    for (int k = 0; k < p->n_seq; k++) {
        const duet_scores_plan_seq *q = &p->seq[k];
        const duet_scores_tok *t = duet_scores_seq_toks(e, (uint64_t)k);
        const duet_scores_tok *tb = base ? duet_scores_seq_toks(base, (uint64_t)k) : NULL;
        for (int j = 0; j < q->n - q->n_prompt; j++)
            s->lpe[q->off + q->n_prompt + j] = tb ? duet_head_train_weak_label(&tb[j], &t[j]) : t[j].lp;
        duet_scores_done(e, (uint64_t)k);
        if (base) duet_scores_done(base, (uint64_t)k);
    }
    return DUET_OK;
}

static int load_set(lm_model *m, const char *path, int frames, int T, const duet_scores *expert,
                    const duet_scores *base, seqset *s, duet_error *err) {
    duet_dataset d;
    duet_dataset_params dp = {.frames = frames};
    int rc = duet_dataset_load(path, &dp, &d, err);
    if (rc) return rc;
    rc = duet_scores_plan_build(m->src, &d, T + 1, &s->plan, err);
    duet_dataset_free(&d);
    if (!rc && expert) rc = attach_expert(s, expert, base, path, err);
    return rc;
}

/* Examples to the held-out side with probability frac, by a hash of (seed, example). */
static int split(seqset *tr, seqset *va, double frac, uint64_t seed, duet_error *err) {
    int n = tr->plan.n_seq;
    int *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    int na = 0, nb = 0;
    for (int k = 0; k < n; k++) {
        uint64_t x = seed ^ (0x51ed2701ull * (uint64_t)(tr->plan.seq[k].example + 1));
        double r = (double)(duet_splitmix64(&x) >> 11) * 0x1.0p-53;
        if (r < frac) b[nb++] = k;
        else a[na++] = k;
    }
    tr->idx = a;
    tr->n = na;
    va->idx = b;
    va->n = nb;
    return DUET_OK;
}

/* Fill micro-batch rows from sequences seqs[0..B) (-1: an empty row). Returns the number of
 * loss-carrying positions; *n_tok receives the number of real (non-padding) positions. */
typedef struct batchbuf {
    int *seqs;            /* [B] */
    int32_t *tok, *tgt;
    float *w, *lpe;
} batchbuf;

static int64_t fill_batch(const seqset *s, const int *seqs, int B, int T, batchbuf *bb,
                          int64_t *n_tok) {
    int64_t nw = 0, nt = 0;
    for (int r = 0; r < B; r++) {
        int32_t *tok = bb->tok + (size_t)r * T, *tgt = bb->tgt + (size_t)r * T;
        float *w = bb->w + (size_t)r * T, *lpe = bb->lpe + (size_t)r * T;
        int n = 0;
        const duet_scores_plan_seq *q = seqs[r] >= 0 ? &s->plan.seq[seqs[r]] : NULL;
        if (q) n = q->n - 1;
        for (int i = 0; i < T; i++) {
            if (i < n) {
                tok[i] = s->plan.ids[q->off + i];
                tgt[i] = s->plan.ids[q->off + i + 1];
                w[i] = i + 1 >= q->n_prompt ? 1.0f : 0.0f;
                lpe[i] = s->lpe ? s->lpe[q->off + i + 1] : 0.0f;
                if (!isfinite(lpe[i])) lpe[i] = 0, w[i] = 0;
            } else {
                tok[i] = tgt[i] = 0;
                w[i] = 0;
                lpe[i] = 0;
            }
            nw += w[i] != 0;
        }
        nt += n;
    }
    *n_tok = nt;
    return nw;
}

/* The epoch's permutation of the training sequences: Fisher-Yates seeded by (seed, epoch). */
static void permute(int *perm, const int *idx, int n, uint64_t seed, int64_t epoch) {
    memcpy(perm, idx, (size_t)n * sizeof *perm);
    uint64_t r = seed * 0x9e3779b97f4a7c15ull + (uint64_t)epoch * 0xbf58476d1ce4e5b9ull + 1;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(duet_splitmix64(&r) % (uint64_t)(i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Sequences of micro-batch g: positions g*B .. g*B+B-1 of the stream of epochs. */
static void pick(const seqset *tr, int *perm, int64_t *cur_epoch, uint64_t seed, int64_t g,
                 int B, int *seqs) {
    for (int r = 0; r < B; r++) {
        int64_t pos = g * B + r, e = pos / tr->n;
        if (e != *cur_epoch) {
            permute(perm, tr->idx, tr->n, seed, e);
            *cur_epoch = e;
        }
        seqs[r] = perm[pos % tr->n];
    }
}

static double evaluate(lm_model *m, lm_acts *a, const seqset *va, int B, int T, int limit,
                       int loss, batchbuf *bb) {
    int n = limit > 0 && limit < va->n ? limit : va->n;
    double sum = 0;
    int64_t nw = 0, nt;
    int *seqs = bb->seqs;
    for (int k = 0; k < n; k += B) {
        for (int r = 0; r < B; r++) seqs[r] = k + r < n ? va->idx[k + r] : -1;
        int64_t w = fill_batch(va, seqs, B, T, bb, &nt);
        if (!w) continue;
        lm_batch b = {.B = B, .T = T, .tokens = bb->tok, .targets = bb->tgt, .weight = bb->w,
                      .lpe = bb->lpe, .loss = loss, .scale = 1};
        sum += lm_step(m, a, &b, 0, NULL);
        nw += w;
    }
    return nw ? sum / (double)nw : NAN;
}

/* ---- curve and log ----------------------------------------------------------------------- */
typedef struct curve {
    double *step, *train, *val;
    int n, cap;
} curve;

static int curve_add(curve *c, double step, double train, double val) {
    if (c->n == c->cap) {
        int nc = c->cap ? 2 * c->cap : 64;
        double *a = realloc(c->step, (size_t)nc * sizeof(double));
        if (a) c->step = a;
        double *b = realloc(c->train, (size_t)nc * sizeof(double));
        if (b) c->train = b;
        double *d = realloc(c->val, (size_t)nc * sizeof(double));
        if (d) c->val = d;
        if (!a || !b || !d) return -1;
        c->cap = nc;
    }
    c->step[c->n] = step;
    c->train[c->n] = train;
    c->val[c->n] = val;
    c->n++;
    return 0;
}

static int curve_save(const curve *c, const char *prefix, const char *title, duet_error *err) {
    char path[1100];
    size_t cap = 64 + (size_t)c->n * 64, len = 0;
    char *csv = malloc(cap);
    if (!csv) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    len += (size_t)snprintf(csv, cap, "step,train_loss,val_loss\n");
    for (int i = 0; i < c->n; i++)
        len += (size_t)snprintf(csv + len, cap - len, "%.0f,%.6f,%.6f\n", c->step[i], c->train[i],
                                c->val[i]);
    snprintf(path, sizeof path, "%s.csv", prefix);
    int rc = duet_eval_text_save(csv, len, path, err);
    free(csv);
    if (rc) return rc;
    svg_series s[2] = {{.name = "training loss (mean since the previous point)", .x = c->step,
                        .y = c->train, .n = c->n, .highlight = -1},
                       {.name = "held-out loss", .x = c->step, .y = c->val, .n = c->n,
                        .highlight = -1}};
    svg_plot pl = {.title = title, .xlabel = "step", .ylabel = "loss per token (nats)"};
    char *svg;
    if (svg_line_plot(&pl, s, 2, &svg, &len)) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    snprintf(path, sizeof path, "%s.svg", prefix);
    rc = duet_eval_text_save(svg, len, path, err);
    free(svg);
    return rc;
}

static int save_checkpoint(lm_model *m, const duet_lm_train_params *p, const char *name,
                           const lm_adamw *o, int sidecar, duet_error *err) {
    int rc = lm_model_save(m, p->out_path, name, err);
    if (!rc && sidecar) {
        char sc[1100];
        snprintf(sc, sizeof sc, "%s.optim", p->out_path);
        rc = lm_adamw_save(o, 0, sc, err);
    }
    if (!rc && m->u && p->head_out) {
        duet_head *h = NULL;
        /* with adapters the head reads the base's hidden states through them, but the model
         * it is loaded with is the base (plus --lora): it carries the base's name */
        if (m->lora) name = duet_model_hparams(m->src)->name;
        rc = duet_head_new(name, m->c.n_embd, m->c.n_vocab, duet_model_vocab_hash(m->src), &h, err);
        if (!rc) rc = duet_head_set_u(h, m->u, m->c.n_embd);
        if (!rc) rc = duet_head_save(h, p->head_out, err);
        duet_head_free(h);
    }
    return rc;
}

/* ---- the run ------------------------------------------------------------------------------ */
/* Fills the unset parameters with their defaults and refuses the ones that cannot run. */
static int train_defaults(duet_lm_train_params *p, const duet_hparams *hp, duet_error *err) {
    if (p->seq_len <= 0) p->seq_len = DUET_MIN(hp->n_ctx_train - 1, 128);
    if (p->seq_len < 1 || p->seq_len + 1 > hp->n_ctx_train)
        return duet_fail(err, DUET_ERR_ARG, "--seq-len %d is out of range [1, %d] (context %d)",
                         p->seq_len, hp->n_ctx_train - 1, hp->n_ctx_train);
    if (p->batch <= 0) p->batch = 8;
    if (p->accum <= 0) p->accum = 1;
    if (p->val_frac <= 0) p->val_frac = 0.05;
    if (p->lr <= 0) p->lr = 1e-3;
    if (p->warmup == 0) p->warmup = 0.04;
    if (p->min_lr_frac == 0) p->min_lr_frac = 0.1;
    if (p->min_lr_frac < 0) p->min_lr_frac = 0;
    if (p->clip == 0) p->clip = 1.0;
    if (p->epochs <= 0) p->epochs = 1;
    if (!p->out_path) return duet_fail(err, DUET_ERR_ARG, "no output path");
    if (p->expert && p->val_path && !p->val_expert)
        return duet_fail(err, DUET_ERR_ARG, "joint training with held-out data %s needs the "
                         "expert's scores of it too", p->val_path);
    if (p->weak_base && (!p->expert || (p->val_path && !p->val_weak_base)))
        return duet_fail(err, DUET_ERR_ARG, "the weak-supervision objective needs the expert's "
                         "scores and, with held-out data, the base's scores of it too");
    return DUET_OK;
}

/* The training and held-out sets: a separate held-out file, or a seeded split of the data. */
static int load_sets(lm_model *m, const duet_lm_train_params *p, seqset *tr, seqset *va, duet_error *err) {
    int rc = load_set(m, p->data_path, p->data_frames, p->seq_len, p->expert, p->weak_base, tr, err);
    if (!rc && p->val_path) {
        rc = load_set(m, p->val_path, p->data_frames, p->seq_len, p->val_expert, p->val_weak_base, va,
                      err);
        if (!rc) {
            tr->idx = malloc((size_t)tr->plan.n_seq * sizeof(int));
            va->idx = malloc((size_t)(va->plan.n_seq ? va->plan.n_seq : 1) * sizeof(int));
            if (!tr->idx || !va->idx) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
            for (int k = 0; !rc && k < tr->plan.n_seq; k++) tr->idx[k] = k;
            for (int k = 0; !rc && k < va->plan.n_seq; k++) va->idx[k] = k;
            tr->n = tr->plan.n_seq;
            va->n = va->plan.n_seq;
        }
    } else if (!rc) {
        rc = split(tr, va, p->val_frac, p->seed, err);
        if (!rc) { /* both sides read the one plan */
            va->plan = tr->plan;
            va->lpe = tr->lpe;
        }
    }
    if (!rc && tr->n == 0)
        rc = duet_fail(err, DUET_ERR_ARG, "%s: no training sequence left after the held-out split",
                       p->data_path);
    return rc;
}

/* Forward and backward passes of one optimizer step's micro-batches, gradients summed into m.
 * Returns the step's summed loss; *wsum is its weighted token count (0: nothing to learn). */
static double accumulate_step(lm_model *m, lm_acts *a, const duet_lm_train_params *p, const seqset *tr,
                              int *perm, int64_t *cur_epoch, batchbuf *bb, int64_t step, int loss,
                              int64_t *wsum_out, int64_t *tok_run) {
    int B = p->batch, T = p->seq_len, *seqs = bb->seqs;
    /* the step's sequences: micro-batch g covers positions g*B .. of the epoch stream */
    /* the loss is a mean over the whole step's weighted tokens: count them first */
    int64_t wsum = 0, nt;
    for (int k = 0; k < p->accum; k++) {
        pick(tr, perm, cur_epoch, p->seed, (step - 1) * p->accum + k, B, seqs);
        wsum += fill_batch(tr, seqs, B, T, bb, &nt);
    }
    lm_zero_grad(m);
    double lsum = 0;
    for (int k = 0; k < p->accum && wsum > 0; k++) {
        pick(tr, perm, cur_epoch, p->seed, (step - 1) * p->accum + k, B, seqs);
        fill_batch(tr, seqs, B, T, bb, &nt);
        lm_batch b = {.B = B, .T = T, .tokens = bb->tok, .targets = bb->tgt, .weight = bb->w,
                      .lpe = bb->lpe, .loss = loss, .scale = 1.0 / (double)wsum};
        lsum += lm_step(m, a, &b, 1, NULL);
        *tok_run += nt;
    }
    *wsum_out = wsum;
    return lsum;
}

/* After the run: the JSON log with its result, and the loss curve, where asked for. */
static int save_reports(json_t *log, const curve *cv, const duet_lm_train_params *p,
                        const duet_lm_train_result *res, int joint, const char *name, duet_error *err) {
    int rc = DUET_OK;
    if (p->log_path) {
        json_object_set_new(log, "result", json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:f}",
                            "steps", (json_int_t)res->steps, "tokens", (json_int_t)res->tokens,
                            "first_val_loss", isnan(res->first_val) ? 0.0 : res->first_val,
                            "last_val_loss", isnan(res->last_val) ? 0.0 : res->last_val,
                            "best_val_loss", isnan(res->best_val) ? 0.0 : res->best_val,
                            "seconds", res->seconds, "tokens_per_s", res->tok_per_s));
        if ((rc = duet_eval_json_save(log, p->log_path, err))) return rc;
    }
    if (p->curve_prefix) {
        char title[300];
        snprintf(title, sizeof title, "duet train %s: %s", joint ? "collm" : "lm", name);
        rc = curve_save(cv, p->curve_prefix, title, err);
    }
    return rc;
}

/* The optimizer with the run's settings, and the deferral vector u of a joint run (its given
 * start, else zeros). */
static int init_optimizer(lm_model *m, const duet_lm_train_params *p, int joint, lm_adamw *o,
                          duet_error *err) {
    int rc;
    size_t n_opt = m->L.n_params + (joint ? (size_t)m->c.n_embd : 0);
    if ((rc = lm_adamw_init(o, n_opt, err))) return rc;
    o->lr = p->lr;
    o->weight_decay = p->weight_decay;
    o->clip = p->clip > 0 ? p->clip : 0;
    if (joint) {
        m->u = duet_aalloc((size_t)m->c.n_embd * sizeof(float));
        m->gu = duet_aalloc((size_t)m->c.n_embd * sizeof(float));
        if (!m->u || !m->gu) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        if (p->u_init) memcpy(m->u, p->u_init, (size_t)m->c.n_embd * sizeof(float));
    }
    return DUET_OK;
}

/* Buffers of one micro-batch of B sequences of T tokens; the caller checks them. */
static void batchbuf_alloc(batchbuf *bb, int B, int T) {
    size_t BT = (size_t)B * T;
    bb->seqs = malloc((size_t)B * sizeof(int));
    bb->tok = malloc(BT * sizeof(int32_t));
    bb->tgt = malloc(BT * sizeof(int32_t));
    bb->w = malloc(BT * sizeof(float));
    bb->lpe = malloc(BT * sizeof(float));
}

/* Continues a saved run from its optimizer sidecar: *start is the step it reached. */
static int resume_point(lm_adamw *o, const char *sidecar, int64_t steps, int64_t *start,
                        duet_error *err) {
    int rc;
    uint64_t unused;
    if ((rc = lm_adamw_load(o, &unused, sidecar, err))) return rc;
    *start = o->step;
    if (*start > steps)
        return duet_fail(err, DUET_ERR_ARG, "%s: the saved run is at step %lld, past --steps %lld",
                         sidecar, (long long)*start, (long long)steps);
    return DUET_OK;
}

/* The run's settings, as the log's "config". */
static void log_config(json_t *log, const lm_model *m, const duet_lm_train_params *p, int64_t steps,
                       int64_t warm, int n_train, int n_val, int joint) {
    int T = p->seq_len, B = p->batch;
    json_object_set_new(log, "config", json_pack("{s:s, s:s?, s:i, s:i, s:i, s:I, s:f, s:I, "
                                                  "s:s, s:f, s:f, s:f, s:I, s:i, s:i, s:s, s:I, s:i}",
                        "data", p->data_path, "val_data", p->val_path, "seq_len", T, "batch", B,
                        "accum", p->accum, "steps", (json_int_t)steps, "lr", p->lr, "warmup_steps",
                        (json_int_t)warm, "decay", p->linear ? "linear" : "cosine", "min_lr_frac",
                        p->min_lr_frac, "weight_decay", p->weight_decay, "clip", p->clip, "seed",
                        (json_int_t)p->seed, "n_train_seq", n_train, "n_val_seq", n_val, "objective",
                        !joint ? "lm" : p->weak_base ? "weak-supervision" : "collm", "n_params", (json_int_t)m->L.n_params,
                        "threads", m->n_threads));
    if (m->lora) { /* the parameters are adapters on a frozen base */
        char targets[64];
        lm_lora_targets_str(m->lora->targets, targets, sizeof targets);
        json_object_set_new(json_object_get(log, "config"), "lora",
                            json_pack("{s:i, s:f, s:s}", "rank", m->lora->rank, "alpha",
                                      (double)m->lora->alpha, "targets", targets));
    }
}

/* A held-out evaluation at step: its loss (*last_val, NaN without held-out data) into the
 * result's first and best, the log and the curve. */
static int record_eval(lm_model *m, lm_acts *a, const seqset *va, const duet_lm_train_params *p,
                       int eval_seqs, int loss, batchbuf *bb, int64_t step, double train_avg,
                       duet_lm_train_result *res, json_t *jevals, curve *cv, double *last_val,
                       duet_error *err) {
    double v = va->n ? evaluate(m, a, va, p->batch, p->seq_len, eval_seqs, loss, bb) : NAN;
    *last_val = v;
    if (isnan(res->first_val)) res->first_val = v;
    if (!(v >= res->best_val)) res->best_val = v;
    json_array_append_new(jevals, json_pack("{s:I, s:f, s:f, s:I}", "step", (json_int_t)step,
                          "train_loss", isnan(train_avg) ? 0.0 : train_avg, "val_loss",
                          isnan(v) ? 0.0 : v, "tokens", (json_int_t)res->tokens));
    if (curve_add(cv, (double)step, train_avg, v)) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return DUET_OK;
}

int duet_lm_train(lm_model *m, const duet_lm_train_params *pp, duet_lm_train_result *res, duet_error *err) {
    duet_lm_train_params p = *pp;
    duet_lm_train_result dummy;
    if (!res) res = &dummy;
    memset(res, 0, sizeof *res);
    const duet_hparams *hp = duet_model_hparams(m->src);
    int rc = train_defaults(&p, hp, err);
    if (rc) return rc;
    int joint = p.expert != NULL, loss = !joint ? LM_LOSS_CE : p.weak_base ? LM_LOSS_WEAK : LM_LOSS_COLLM;
    int B = p.batch, T = p.seq_len;
    const char *name = p.name ? p.name : hp->name;

    seqset tr = {0}, va = {0};
    lm_acts *a = NULL;
    lm_adamw o = {0};
    batchbuf bb = {0};
    int *perm = NULL;
    json_t *log = NULL, *jsteps = NULL, *jevals = NULL;
    curve cv = {0};
    if ((rc = load_sets(m, &p, &tr, &va, err))) goto done;
    res->n_train_seq = tr.n;
    res->n_val_seq = va.n;
    int64_t seqs_per_step = (int64_t)B * p.accum;
    int64_t steps = p.steps > 0 ? p.steps
                                : DUET_MAX(1, (int64_t)ceil(p.epochs * tr.n / (double)seqs_per_step));
    int64_t warm = p.warmup > 0 ? (int64_t)ceil(p.warmup * (double)steps) : 0;
    int eval_every = p.eval_every > 0 ? p.eval_every : (int)DUET_MAX(1, steps / 20);
    int eval_seqs = p.eval_seqs > 0 ? p.eval_seqs : 512;

    if ((rc = lm_acts_new(m, B, T, &a, err))) goto done;
    if ((rc = init_optimizer(m, &p, joint, &o, err))) goto done;
    batchbuf_alloc(&bb, B, T);
    perm = malloc((size_t)tr.n * sizeof *perm);
    log = json_object();
    jsteps = json_array();
    jevals = json_array();
    if (!bb.seqs || !bb.tok || !bb.tgt || !bb.w || !bb.lpe || !perm || !log || !jsteps || !jevals) {
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        goto done;
    }
    int64_t start = 0;
    char sidecar[1100];
    snprintf(sidecar, sizeof sidecar, "%s.optim", p.out_path);
    if (p.resume && access(sidecar, R_OK) == 0 && (rc = resume_point(&o, sidecar, steps, &start, err)))
        goto done;

    log_config(log, m, &p, steps, warm, tr.n, va.n, joint);
    json_object_set(log, "steps", jsteps);
    json_object_set(log, "evals", jevals);

    double t0 = duet_time_s(), since_loss = 0, last_val = NAN, lr = 0, gnorm = 0;
    int64_t since_w = 0, tok_run = 0, cur_epoch = -1;
    res->first_val = res->best_val = NAN;
    for (int64_t step = start + 1; step <= steps; step++) {
        int64_t wsum;
        double lsum = accumulate_step(m, a, &p, &tr, perm, &cur_epoch, &bb, step, loss, &wsum, &tok_run);
        lr = lm_lr_at(p.lr, step, steps, warm, !p.linear, p.min_lr_frac);
        if (wsum > 0) gnorm = lm_adamw_update(&o, m, lr);
        else o.step++;
        since_loss += lsum;
        since_w += wsum;
        res->tokens += wsum;
        double el = duet_time_s() - t0, tps = el > 0 ? (double)tok_run / el : 0;
        json_array_append_new(jsteps, json_pack("{s:I, s:f, s:f, s:f}", "step", (json_int_t)step,
                              "loss", wsum ? lsum / (double)wsum : 0.0, "lr", lr, "grad_norm", gnorm));
        int is_eval = step % eval_every == 0 || step == steps || step == start + 1;
        double train_avg = since_w ? since_loss / (double)since_w : NAN;
        if (is_eval && (rc = record_eval(m, a, &va, &p, eval_seqs, loss, &bb, step, train_avg, res,
                                         jevals, &cv, &last_val, err)))
            goto done;
        if (p.progress) {
            double left = (double)(steps - step) * (el / (double)(step - start));
            duet_lm_progress pr = {step, steps, train_avg, last_val, lr, gnorm, tps, left, is_eval};
            p.progress(p.ud, &pr);
        }
        if (is_eval) since_loss = 0, since_w = 0;
        if (p.stop_at > 0 && step == p.stop_at && step < steps) {
            if (!(rc = save_checkpoint(m, &p, name, &o, 1, err))) rc = DUET_LM_STOPPED;
            res->steps = step;
            goto done;
        }
        if (p.save_every > 0 && step % p.save_every == 0 && step < steps &&
            (rc = save_checkpoint(m, &p, name, &o, 1, err)))
            goto done;
    }
    res->steps = steps;
    res->last_val = last_val;
    res->seconds = duet_time_s() - t0;
    res->tok_per_s = res->seconds > 0 ? (double)tok_run / res->seconds : 0;
    res->n_threads = m->n_threads;
    if ((rc = save_checkpoint(m, &p, name, &o, 0, err))) goto done;
    if (access(sidecar, F_OK) == 0) unlink(sidecar); /* a finished run has nothing to resume */
    rc = save_reports(log, &cv, &p, res, joint, name, err);
done:
    if (va.plan.ids == tr.plan.ids) { /* shared plan: free once */
        memset(&va.plan, 0, sizeof va.plan);
        va.lpe = NULL;
    }
    seqset_free(&tr);
    seqset_free(&va);
    lm_acts_free(a);
    lm_adamw_free(&o);
    free(bb.seqs);
    free(bb.tok);
    free(bb.tgt);
    free(bb.w);
    free(bb.lpe);
    free(perm);
    free(cv.step);
    free(cv.train);
    free(cv.val);
    json_decref(jsteps);
    json_decref(jevals);
    json_decref(log);
    return rc;
}
