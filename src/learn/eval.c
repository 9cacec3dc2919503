/*
 * eval.c: evaluating routing policies (see duet.h, evaluation). Owns the evaluation data (problems or a
 * text), the teacher-forced token records of the nll task, the calibration scores that turn
 * a target deferral rate into a threshold, and the JSON report.
 * Invariants: generation goes only through the public collab API (so eval measures exactly
 * what `duet run` does); the teacher-forced pass cuts windows exactly as duet_text_score and
 * sums log-probs in the same order, so policy base reproduces its NLL bit for bit.
 */
#include "learn/eval.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/atomic_file.h"
#include "base/common.h"
#include "learn/answers.h"
#include "learn/protocol.h"
#include "learn/task.h"
#include "collab/vocab_bridge.h"

#define N_ROUTERS (DUET_EVAL_POLICY_ORACLE + 1)

static const char *k_tasks[DUET_EVAL_TASK_COUNT] = {"nll", "gsm8k", "math", "bioasq", "alpacaeval"};
static const char *const k_default_stops[1] = {"\n\nQuestion:"};

int duet_eval_task_from_name(const char *name) {
    for (int i = 0; i < DUET_EVAL_TASK_COUNT; i++)
        if (!strcmp(name, k_tasks[i])) return i;
    return -1;
}
const char *duet_eval_task_name(int t) { return t >= 0 && t < DUET_EVAL_TASK_COUNT ? k_tasks[t] : "?"; }
const char *duet_eval_metric_name(int t) {
    return t == DUET_EVAL_TASK_NLL ? "nll_per_byte" : t == DUET_EVAL_TASK_BIOASQ ? "average"
           : t == DUET_EVAL_TASK_ALPACAEVAL ? "win_rate" : "accuracy";
}
/* tasks whose data and scoring are in files of their own (task.h) */
static int hooked(int t) { return t == DUET_EVAL_TASK_BIOASQ || t == DUET_EVAL_TASK_ALPACAEVAL; }
int duet_eval_higher_is_better(int t) { return t != DUET_EVAL_TASK_NLL; }

int duet_eval_policy_from_name(const char *name) {
    return !strcmp(name, "oracle") ? DUET_EVAL_POLICY_ORACLE : duet_policy_from_name(name);
}
const char *duet_eval_policy_name(int p) { return p == DUET_EVAL_POLICY_ORACLE ? "oracle" : duet_policy_name(p); }
const char *duet_eval_spec_name(const duet_eval_spec *s) {
    return s->policy == DUET_POLICY_RANDOM && s->rate < 0 ? "random_matched" : duet_eval_policy_name(s->policy);
}
int duet_eval_policy_thresholded(int p) {
    return p == DUET_POLICY_COLLM || p == DUET_POLICY_COMPOSE || p == DUET_POLICY_UNCERTAINTY ||
           p == DUET_EVAL_POLICY_ORACLE;
}
static int uses_head(int p) { return p == DUET_POLICY_COLLM || p == DUET_POLICY_COMPOSE; }

/* ---- growable buffers ------------------------------------------------------------------ */
typedef struct fvec { float *v; int n, cap; } fvec;

static int fvec_push(fvec *f, float x) {
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 1024;
        float *v = realloc(f->v, (size_t)cap * sizeof *v);
        if (!v) return DUET_ERR_NOMEM;
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n++] = x;
    return DUET_OK;
}

/* ---- context ------------------------------------------------------------------------- */
typedef struct problem {
    char *prompt;     /* the protocol's prompt around the question */
    char *reference;  /* gsm8k: the answer text ("... #### 18"); math: the final answer */
    char *ref_paper;  /* the official scorer's reference (gsm8k: "18"; math: the gold box);
                         NULL when the record has none, and the paper verdict is then 0 */
    int32_t *ids;     /* prompt tokens (base ids, BOS first), cut to fit the context */
    int n_ids, truncated;
} problem;

typedef struct problems { problem *v; int n; } problems;

/* Teacher-forced records of the nll task, one entry per scored token. */
typedef struct tf_data {
    int n;
    size_t n_bytes;
    double *lpb, *lpe;          /* log-prob of the gold token: base, expert (NaN: no expert) */
    float *score;               /* u.h (NaN: no head) */
    float *entropy;             /* base entropy, nats */
    float *gain;                /* lpe - lpb */
    float *maxlp_b, *maxlp_e;   /* log max-probabilities */
    double t_base, t_expert;    /* seconds in each model's forward passes */
    int n_unknown;              /* gold tokens of the base's "unknown" type */
} tf_data;

struct duet_eval {
    duet_model *base, *expert, *anti;
    const duet_head *head;
    duet_eval_params p;
    const char *const *stops;
    int n_stops, n_ctx;
    char path[1024];
    problems data;
    char *text;                 /* nll */
    size_t text_len;
    tf_data tf;
    int tf_done;
    fvec calib[N_ROUTERS];
    int calib_done[N_ROUTERS];
    eval_task task;             /* bioasq, alpacaeval */
};

static void problems_free(problems *ps) {
    for (int i = 0; i < ps->n; i++) {
        free(ps->v[i].prompt);
        free(ps->v[i].reference);
        free(ps->v[i].ref_paper);
        free(ps->v[i].ids);
    }
    free(ps->v);
    ps->v = NULL;
    ps->n = 0;
}

/* A string field of a JSONL record, or NULL with an error naming file:line and the field. */
static const char *str_field(json_t *o, const char *key, const char *path, long line, int required,
                             duet_error *err) {
    json_t *v = json_object_get(o, key);
    if (json_is_string(v)) return json_string_value(v);
    if (required)
        duet_fail(err, DUET_ERR_FORMAT, "%s:%ld: field '%s' is %s", path, line, key,
                  v ? "not a string" : "missing");
    return NULL;
}

/* One problem from a JSONL record: gsm8k {"question","answer"}; math {"problem", "answer"}
 * (or the last \boxed{} of "solution"). */
static int parse_problem(json_t *o, int task, int protocol, const char *path, long line, problem *pb,
                         duet_error *err) {
    const char *q = str_field(o, task == DUET_EVAL_TASK_GSM8K ? "question" : "problem", path, line, 1, err);
    if (!q) return DUET_ERR_FORMAT;
    const char *ref = str_field(o, "answer", path, line, task == DUET_EVAL_TASK_GSM8K, err);
    char boxed[ANSWERS_CAP];
    if (!ref && task == DUET_EVAL_TASK_GSM8K) return DUET_ERR_FORMAT;
    if (!ref) {
        const char *sol = str_field(o, "solution", path, line, 0, err);
        if (!sol || !answers_math_extract(sol, boxed, sizeof boxed))
            return duet_fail(err, DUET_ERR_FORMAT, "%s:%ld: no field 'answer' and no \\boxed{} answer "
                             "in field 'solution'", path, line);
        ref = boxed;
    }
    double v;
    if (task == DUET_EVAL_TASK_GSM8K && !answers_gsm8k_reference(ref, &v))
        return duet_fail(err, DUET_ERR_FORMAT, "%s:%ld: field 'answer' has no number after '####'",
                         path, line);
    pb->prompt = protocol_prompt(task, protocol, q);
    pb->reference = strdup(ref);
    if (!pb->prompt || !pb->reference) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    /* the official scorer's reference: the number after "####"; MATH's gold box of the
     * solution (the "answer" field when there is no solution) */
    char paper[ANSWERS_CAP];
    const char *sol = task == DUET_EVAL_TASK_MATH ? str_field(o, "solution", path, line, 0, err) : NULL;
    int has = task == DUET_EVAL_TASK_GSM8K ? answers_gsm8k_paper_reference(ref, paper, sizeof paper)
              : sol ? answers_math_paper_gold(sol, paper, sizeof paper)
                    : snprintf(paper, sizeof paper, "%s", ref) >= 0;
    if (has && !(pb->ref_paper = strdup(paper))) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return DUET_OK;
}

/* The records of the file that the split keeps (in its order), the first `limit` of them. */
static int load_problems(const char *path, const duet_eval_params *p, problems *out, duet_error *err) {
    jsonl_rec *r = NULL;
    int n = 0, n_idx = 0, rc = protocol_read_jsonl(path, &r, &n, err);
    int *idx = rc ? NULL : malloc(((size_t)n + 1) * sizeof *idx);
    if (!rc && !idx) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) rc = protocol_split(p->task, p->split, r, n, path, idx, &n_idx, err);
    if (!rc && p->limit > 0 && n_idx > p->limit) n_idx = p->limit;
    if (!rc && n_idx == 0) rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no examples", path);
    if (!rc && !(out->v = calloc((size_t)n_idx, sizeof *out->v))) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n_idx; i++) {
        const jsonl_rec *x = &r[idx[i]];
        out->n++;
        rc = parse_problem(x->o, p->task, p->protocol, path, x->line, &out->v[i], err);
    }
    free(idx);
    protocol_free_jsonl(r, n);
    return rc;
}

/* A task of its own file: its prompts become the problems. */
static int load_task(duet_eval *c, const char *path, duet_error *err) {
    int rc = c->p.task == DUET_EVAL_TASK_BIOASQ ? task_bioasq_open(path, &c->p, &c->task, err)
                                                : task_alpaca_open(path, &c->p, &c->task, err);
    if (!rc && !(c->data.v = calloc((size_t)c->task.n, sizeof *c->data.v)))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < c->task.n; i++, c->data.n++)
        if (!(c->data.v[i].prompt = strdup(c->task.prompts[i]))) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return rc;
}

/* Tokenize every prompt; one that does not leave room for the answer keeps BOS and its
 * last tokens (the question's end and "Answer:" matter most), and is counted. */
static int tokenize_prompts(duet_eval *c, problems *ps, duet_error *err) {
    int max_new = c->p.max_tokens, room = DUET_MIN(max_new, c->n_ctx / 2);
    int budget = c->n_ctx - room;
    int32_t bos = duet_token_bos(c->base);
    for (int i = 0; i < ps->n; i++) {
        problem *pb = &ps->v[i];
        size_t len = strlen(pb->prompt);
        int n = duet_tokenize(c->base, pb->prompt, len, 1, 0, NULL, 0, err);
        if (n < 0) return n;
        if (!(pb->ids = malloc((size_t)(n + 1) * sizeof(int32_t))))
            return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        if ((n = duet_tokenize(c->base, pb->prompt, len, 1, 0, pb->ids, n, err)) < 0) return n;
        if (n > budget) {
            int head = bos >= 0 && pb->ids[0] == bos;
            memmove(pb->ids + head, pb->ids + n - (budget - head), (size_t)(budget - head) * sizeof(int32_t));
            n = budget;
            pb->truncated = 1;
        }
        pb->n_ids = n;
    }
    return DUET_OK;
}

int duet_eval_open(duet_model *base, duet_model *expert, duet_model *anti, const duet_head *head,
                   const char *data_path, const duet_eval_params *params, duet_eval **out, duet_error *err) {
    *out = NULL;
    if (!params || params->task < 0 || params->task >= DUET_EVAL_TASK_COUNT)
        return duet_fail(err, DUET_ERR_ARG, "unknown task %d", params ? params->task : -1);
    duet_eval *c = calloc(1, sizeof *c);
    if (!c) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    c->base = base;
    c->expert = expert;
    c->anti = anti;
    c->head = head;
    c->p = *params;
    int paper = c->p.protocol == DUET_EVAL_PROTOCOL_PAPER;
    if (c->p.protocol != DUET_EVAL_PROTOCOL_DUET && !paper) {
        int p = c->p.protocol;
        free(c);
        return duet_fail(err, DUET_ERR_ARG, "unknown protocol %d", p);
    }
    /* the official generation: 512 new tokens and no stop string, unless asked otherwise */
    if (c->p.max_tokens <= 0) c->p.max_tokens = paper ? 512 : 256;
    if (c->p.n_calib <= 0) c->p.n_calib = 15;
    if (c->p.scoring == DUET_EVAL_SCORING_AUTO) c->p.scoring = paper ? DUET_EVAL_SCORING_PAPER : DUET_EVAL_SCORING_DUET;
    if (c->p.split == DUET_EVAL_SPLIT_AUTO) /* AlpacaEval has no split */
        c->p.split = paper && c->p.task != DUET_EVAL_TASK_NLL && c->p.task != DUET_EVAL_TASK_ALPACAEVAL
                     ? DUET_EVAL_SPLIT_TEST : DUET_EVAL_SPLIT_ALL;
    c->stops = c->p.stops ? c->p.stops : paper ? NULL : k_default_stops;
    c->n_stops = c->p.stops ? c->p.n_stops : paper ? 0 : 1;
    snprintf(c->path, sizeof c->path, "%s", data_path);
    int n_ctx = c->p.n_ctx;
    if (n_ctx <= 0) {
        n_ctx = duet_model_hparams(base)->n_ctx_train;
        if (expert) n_ctx = DUET_MIN(n_ctx, duet_model_hparams(expert)->n_ctx_train);
        if (anti) n_ctx = DUET_MIN(n_ctx, duet_model_hparams(anti)->n_ctx_train);
        n_ctx = DUET_MIN(n_ctx, 4096);
    }
    c->n_ctx = n_ctx;
    int rc = DUET_OK;
    if (head && duet_head_n_embd(head) != duet_model_hparams(base)->n_embd)
        rc = duet_fail(err, DUET_ERR_ARG, "head has n_embd %d, base has %d", duet_head_n_embd(head),
                       duet_model_hparams(base)->n_embd);
    else if (n_ctx < 8)
        rc = duet_fail(err, DUET_ERR_ARG, "context of %d tokens is too small to evaluate", n_ctx);
    else if (c->p.task == DUET_EVAL_TASK_NLL && c->p.split != DUET_EVAL_SPLIT_ALL)
        rc = duet_fail(err, DUET_ERR_ARG, "the official splits exist for gsm8k and math, not nll");
    if (!rc && c->p.task == DUET_EVAL_TASK_NLL) {
        FILE *f = fopen(data_path, "rb");
        if (!f) {
            rc = duet_fail(err, DUET_ERR_IO, "%s: %s", data_path, strerror(errno));
        } else {
            duet_buf b = {0};
            char chunk[65536];
            size_t r;
            while (!rc && (r = fread(chunk, 1, sizeof chunk, f)) > 0)
                if (duet_buf_add(&b, chunk, r)) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
            if (!rc && ferror(f)) rc = duet_fail(err, DUET_ERR_IO, "%s: read error", data_path);
            fclose(f);
            c->text = b.p;
            c->text_len = b.n;
            if (c->p.limit > 0 && (size_t)c->p.limit < c->text_len) { /* cut at a UTF-8 boundary */
                size_t n = (size_t)c->p.limit;
                while (n > 0 && ((unsigned char)c->text[n] & 0xc0) == 0x80) n--;
                c->text_len = n;
            }
            if (!rc && c->text_len == 0) rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no text to score", data_path);
        }
    } else if (!rc && hooked(c->p.task)) {
        rc = load_task(c, data_path, err);
        if (!rc) rc = tokenize_prompts(c, &c->data, err);
    } else if (!rc) {
        rc = load_problems(data_path, &c->p, &c->data, err);
        if (!rc) rc = tokenize_prompts(c, &c->data, err);
    }
    if (rc) {
        duet_eval_close(c);
        return rc;
    }
    *out = c;
    return DUET_OK;
}

void duet_eval_close(duet_eval *c) {
    if (!c) return;
    problems_free(&c->data);
    eval_task_free(&c->task);
    free(c->text);
    tf_data *t = &c->tf;
    free(t->lpb);
    free(t->lpe);
    free(t->score);
    free(t->entropy);
    free(t->gain);
    free(t->maxlp_b);
    free(t->maxlp_e);
    for (int i = 0; i < N_ROUTERS; i++) free(c->calib[i].v);
    free(c);
}

/* ---- teacher-forced pass (nll) --------------------------------------------------------- */
/* log softmax(l)[tok] in double, the same operations in the same order as duet_text_score
 * (so policy base reproduces it bit for bit), plus the base's confidence as duet score
 * stores it: entropy and log max-probability (nats). */
static double row_stats(const float *l, int n, int tok, float *entropy, float *max_logp) {
    double mx, z, ez;
    duet_softmax_stats(l, n, &mx, &z, &ez);
    double lz = log(z);
    if (entropy) *entropy = (float)(lz - ez / z);
    *max_logp = (float)-lz;
    return (double)l[tok] - mx - log(z);
}

static void progress(duet_eval *c, const char *what, long done, long total) {
    if (c->p.progress) c->p.progress(c->p.ud, what, done, total);
}

static int tf_alloc(tf_data *t, int n) {
    t->lpb = malloc((size_t)n * sizeof(double));
    t->lpe = malloc((size_t)n * sizeof(double));
    float **f[5] = {&t->score, &t->entropy, &t->gain, &t->maxlp_b, &t->maxlp_e};
    int ok = t->lpb && t->lpe;
    for (int i = 0; i < 5; i++) ok &= (*f[i] = malloc((size_t)n * sizeof(float))) != NULL;
    return ok ? DUET_OK : DUET_ERR_NOMEM;
}

static int tf_run(duet_eval *c, duet_error *err) {
    if (c->tf_done) return DUET_OK;
    tf_data *t = &c->tf;
    duet_model *b = c->base, *e = c->expert;
    int n = duet_tokenize(b, c->text, c->text_len, 0, 0, NULL, 0, err);
    if (n < 0) return n;
    if (n == 0) return duet_fail(err, DUET_ERR_FORMAT, "%s: no tokens to score", c->path);
    int ctx = c->n_ctx, Vb = duet_model_hparams(b)->n_vocab, Ve = e ? duet_model_hparams(e)->n_vocab : 0;
    int32_t bos = duet_token_bos(b);
    int per = bos >= 0 ? ctx - 1 : ctx; /* text tokens per window, as duet_text_score */
    duet_session_params sp = {.n_ctx = ctx};
    duet_session *sb = NULL, *se = NULL;
    int32_t *toks = malloc((size_t)n * sizeof *toks), *win = malloc((size_t)ctx * sizeof *win);
    int32_t *ewin = malloc((size_t)ctx * sizeof *ewin), *map = NULL;
    int rc = !toks || !win || !ewin || tf_alloc(t, n) ? duet_fail(err, DUET_ERR_NOMEM, "out of memory") : DUET_OK;
    if (!rc && (rc = duet_tokenize(b, c->text, c->text_len, 0, 0, toks, n, err)) >= 0) rc = DUET_OK;
    for (int i = 0; !rc && i < n; i++) t->n_unknown += duet_token_type(b, toks[i]) == 2;
    if (!rc) rc = duet_session_new(b, &sp, &sb, err);
    int bridged;
    if (!rc && e) rc = vocab_bridge_build(b, e, "expert", &map, &bridged, err);
    if (!rc && e) rc = duet_session_new(e, &sp, &se, err);
    t->n = 0;
    t->n_bytes = c->text_len;
    for (int start = 0; !rc && start < n; start += per) {
        int k = DUET_MIN(per, n - start), w = 0;
        if (bos >= 0) win[w++] = bos;
        memcpy(win + w, toks + start, (size_t)k * sizeof *win);
        w += k;
        double t0 = duet_time_s();
        duet_session_truncate(sb, 0);
        if ((rc = duet_session_eval(sb, win, w, 1, err))) break;
        double t1 = duet_time_s();
        t->t_base += t1 - t0;
        for (int j = 0; j + 1 < w; j++) { /* row j predicts win[j+1] */
            int i = t->n + j;
            t->lpb[i] = row_stats(duet_session_logits(sb, j), Vb, win[j + 1], &t->entropy[i], &t->maxlp_b[i]);
            t->score[i] = c->head ? duet_head_score_ex(c->head, duet_session_hidden(sb, j), t->entropy[i],
                                                       t->maxlp_b[i]) : NAN;
        }
        if (e) {
            for (int j = 0; j < w; j++) ewin[j] = map[win[j]];
            t1 = duet_time_s();
            duet_session_truncate(se, 0);
            if ((rc = duet_session_eval(se, ewin, w, 1, err))) break;
            t->t_expert += duet_time_s() - t1;
            for (int j = 0; j + 1 < w; j++) {
                int i = t->n + j;
                t->lpe[i] = row_stats(duet_session_logits(se, j), Ve, ewin[j + 1], NULL, &t->maxlp_e[i]);
                t->gain[i] = (float)(t->lpe[i] - t->lpb[i]);
            }
        } else {
            for (int j = 0; j + 1 < w; j++) {
                t->lpe[t->n + j] = NAN;
                t->maxlp_e[t->n + j] = t->gain[t->n + j] = NAN;
            }
        }
        t->n += w - 1;
        progress(c, "scoring", start + k, n);
    }
    duet_session_free(sb);
    duet_session_free(se);
    free(map);
    free(toks);
    free(win);
    free(ewin);
    if (!rc && t->n == 0) rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no tokens to score", c->path);
    c->tf_done = !rc;
    return rc;
}

/* ---- generation ---------------------------------------------------------------------- */
/* Score an answer with duet's lenient scorer; pred gets the extracted answer ("" when none). */
static int score_duet(int task, const char *output, const char *reference, char *pred, size_t cap) {
    pred[0] = 0;
    if (task == DUET_EVAL_TASK_GSM8K) {
        double v;
        if (answers_last_number(output, strlen(output), &v)) snprintf(pred, cap, "%.15g", v);
        return answers_gsm8k_correct(output, reference);
    }
    answers_math_extract(output, pred, cap);
    return answers_math_correct(output, reference);
}

/* ... and with the official scorer (0 without its reference). */
static int score_paper(int task, const char *output, const char *ref_paper, char *pred, size_t cap) {
    pred[0] = 0;
    if (task == DUET_EVAL_TASK_GSM8K) {
        int ok = answers_gsm8k_paper_correct(output, ref_paper ? ref_paper : "", pred, cap);
        return ok && ref_paper;
    }
    int ok = answers_math_paper_correct(output, ref_paper ? ref_paper : "", pred, cap);
    return ok && ref_paper;
}

static int collab_for(duet_eval *c, const duet_collab_params *cp, duet_collab **co, duet_error *err) {
    int pol = cp->policy;
    return duet_collab_new(c->base, pol == DUET_POLICY_BASE ? NULL : c->expert,
                           pol == DUET_POLICY_PROXY ? c->anti : NULL, uses_head(pol) ? c->head : NULL,
                           cp, co, err);
}

/* One problem's answer: the text the server would return for the same prompt and stops,
 * each emitted token's policy score (when asked), the emitted tokens and those the expert
 * chose (a deferred EOS is not a token). Kept from when its decoder finishes it until every
 * earlier problem has been handed on, so that results add up in problem order whatever
 * order the problems finish in. */
typedef struct answer {
    duet_buf text;
    fvec scores;
    int n_gen, n_def, expert_calls, done;
    double seconds;     /* the decoder's time on it (start and steps) */
} answer;

/* A decoder and the problem it is on. */
typedef struct slot {
    duet_collab *co;
    duet_gen *g;
    int problem;        /* -1: none */
} slot;

/* A generating pass over problems [0, n): decoders made from cp, each answer handed to take
 * in problem order. */
typedef struct gen_pass {
    const duet_collab_params *cp;
    int n, want_scores;
    const char *what;   /* the progress phase */
    int (*take)(duet_eval *c, void *ud, int i, const answer *a, duet_error *err);
    void *ud;
    int parallel;       /* out: decoders used */
    double wall;        /* out: seconds from the first start to the last answer */
} gen_pass;

static void answer_free(answer *a) {
    free(a->text.p);
    free(a->scores.v);
    memset(a, 0, sizeof *a);
}

/* Put problem i on the slot's decoder. Each problem has its own seed, so that its answer does
 * not depend on which decoder runs it or what that decoder ran before. */
static int slot_begin(duet_eval *c, slot *s, int i, duet_error *err) {
    const problem *pb = &c->data.v[i];
    s->problem = i;
    duet_collab_set_seed(s->co, c->p.seed + (uint64_t)i);
    int rc = duet_collab_start(s->co, pb->ids, pb->n_ids, err);
    duet_gen_params gp = {.max_tokens = c->p.max_tokens, .stops = c->stops, .n_stops = c->n_stops,
                          .utf8 = 1}; /* answers are JSON text: whole characters */
    return rc ? rc : duet_gen_new(s->co, &gp, &s->g, err);
}

/* The slot's problem has ended: keep its answer, free the slot. */
static int slot_end(slot *s, answer *a, duet_error *err) {
    size_t len;
    const char *text = duet_gen_text(s->g, &len);
    const duet_collab_stats *st = duet_collab_get_stats(s->co);
    a->n_gen = duet_gen_n_tokens(s->g);
    a->expert_calls = st->expert_calls;
    a->seconds = st->t_total;
    a->done = 1;
    int rc = duet_buf_add(&a->text, text, len) ? duet_fail(err, DUET_ERR_NOMEM, "out of memory") : DUET_OK;
    duet_gen_free(s->g);
    s->g = NULL;
    s->problem = -1;
    return rc;
}

/* What one step gave problem a: the emitted token's counts, or the end of the answer (then
 * the answers finished so far go on in order). */
static int after_step(duet_eval *c, gen_pass *R, slot *s, answer *ans, int rc, const duet_collab_token *t,
                      int *finished, int *handed, duet_error *err) {
    answer *a = &ans[s->problem];
    if (rc < 0) return rc;
    if (rc == DUET_OK) {
        a->n_def += t->deferred;
        if (R->want_scores && fvec_push(&a->scores, t->score)) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    if (duet_gen_end(s->g) == DUET_GEN_RUNNING) return DUET_OK;
    if ((rc = slot_end(s, a, err))) return rc;
    progress(c, R->what, ++*finished, R->n);
    for (; *handed < R->n && ans[*handed].done; ++*handed) {
        if ((rc = R->take(c, R->ud, *handed, &ans[*handed], err))) return rc;
        answer_free(&ans[*handed]);
    }
    return DUET_OK;
}

/* The stepping loop: every step advances all the problems on decoders, as one batched step
 * (one decoder alone steps as duet_generate does); a decoder whose problem ends takes the
 * next one. */
static int gen_loop(duet_eval *c, gen_pass *R, slot *sl, int P, answer *ans, duet_gen **gs, int *at,
                    duet_collab_token *toks, int *rcs, duet_error *errs, duet_error *err) {
    int rc = DUET_OK, next = 0, finished = 0, handed = 0;
    for (int k = 0; k < P && !rc; k++) rc = slot_begin(c, &sl[k], next++, err);
    while (!rc) {
        int m = 0;
        for (int k = 0; k < P; k++)
            if (sl[k].problem >= 0) gs[m] = sl[k].g, at[m++] = k;
        if (!m) break;
        if (m == 1) rcs[0] = duet_gen_step(gs[0], &toks[0], &errs[0]);
        else duet_gen_step_batch(gs, m, toks, rcs, errs);
        for (int j = 0; j < m && !rc; j++) {
            slot *s = &sl[at[j]];
            if (rcs[j] < 0 && err) *err = errs[j];
            rc = after_step(c, R, s, ans, rcs[j], &toks[j], &finished, &handed, err);
            if (!rc && s->problem < 0 && next < R->n) rc = slot_begin(c, s, next++, err);
        }
    }
    return rc;
}

/* Run the pass on min(parallel, n) decoders, created once for all its problems. */
static int run_problems(duet_eval *c, gen_pass *R, duet_error *err) {
    int n = R->n, P = DUET_MIN(c->p.parallel > 0 ? c->p.parallel : 8, n);
    R->parallel = P;
    R->wall = 0;
    if (n <= 0) return DUET_OK;
    size_t N = (size_t)P;
    answer *ans = calloc((size_t)n, sizeof *ans);
    slot *sl = calloc(N, sizeof *sl);
    duet_gen **gs = malloc(N * sizeof *gs);
    int *at = malloc(N * sizeof *at), *rcs = malloc(N * sizeof *rcs);
    duet_collab_token *toks = malloc(N * sizeof *toks);
    duet_error *errs = calloc(N, sizeof *errs);
    int rc = ans && sl && gs && at && rcs && toks && errs ? DUET_OK : duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    /* together, a new problem's prompt joins the next batched step instead of a pass of its
     * own (the step evaluates what start would) */
    duet_collab_params cp = *R->cp;
    cp.lazy_prompt = P > 1;
    for (int k = 0; k < P && !rc; k++) {
        sl[k].problem = -1;
        rc = collab_for(c, &cp, &sl[k].co, err);
    }
    double t0 = duet_time_s();
    if (!rc) rc = gen_loop(c, R, sl, P, ans, gs, at, toks, rcs, errs, err);
    R->wall = duet_time_s() - t0;
    for (int k = 0; sl && k < P; k++) {
        duet_gen_free(sl[k].g);
        duet_collab_free(sl[k].co);
    }
    for (int i = 0; ans && i < n; i++) answer_free(&ans[i]);
    free(ans), free(sl), free(gs), free(at), free(rcs), free(toks), free(errs);
    return rc;
}

/* ---- calibration ----------------------------------------------------------------------- */
/* A calibration answer's scores join the pass's, in problem order. */
static int take_scores(duet_eval *c, void *ud, int i, const answer *a, duet_error *err) {
    fvec *f = ud;
    for (int k = 0; k < a->scores.n; k++)
        if (fvec_push(f, a->scores.v[k])) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return DUET_OK;
}

static int router_slot(int policy) { return policy == DUET_POLICY_COMPOSE ? DUET_POLICY_COLLM : policy; }

int duet_eval_calibration(duet_eval *c, int policy, const float **scores, int *n, duet_error *err) {
    if (!duet_eval_policy_thresholded(policy))
        return duet_fail(err, DUET_ERR_ARG, "policy %s has no threshold to calibrate", duet_eval_policy_name(policy));
    if (uses_head(policy) && !c->head)
        return duet_fail(err, DUET_ERR_ARG, "policy %s needs a deferral head (--head)", duet_eval_policy_name(policy));
    int slot = router_slot(policy), rc = DUET_OK;
    fvec *f = &c->calib[slot];
    if (c->p.task == DUET_EVAL_TASK_NLL) {
        if (policy == DUET_EVAL_POLICY_ORACLE && !c->expert)
            return duet_fail(err, DUET_ERR_ARG, "policy oracle needs an expert model (--expert)");
        if ((rc = tf_run(c, err))) return rc;
        *scores = uses_head(policy) ? c->tf.score : policy == DUET_EVAL_POLICY_ORACLE ? c->tf.gain : c->tf.entropy;
        *n = c->tf.n;
        return DUET_OK;
    }
    if (policy == DUET_EVAL_POLICY_ORACLE)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "policy oracle needs gold tokens: only --task nll");
    if (!c->calib_done[slot]) {
        /* base-only greedy: the policy never defers (eta 1 / infinite entropy threshold), so
         * the collab decoder reproduces the base alone and reports each token's score */
        duet_collab_params cp = {.policy = uses_head(policy) ? DUET_POLICY_COLLM : DUET_POLICY_UNCERTAINTY,
                                 .threshold = uses_head(policy) ? 1.0f : INFINITY, .n_ctx = c->n_ctx};
        char what[64];
        snprintf(what, sizeof what, "calibrating %s", duet_eval_policy_name(slot));
        f->n = 0;
        gen_pass R = {.cp = &cp, .n = DUET_MIN(c->p.n_calib, c->data.n), .want_scores = 1, .what = what,
                      .take = take_scores, .ud = f};
        if ((rc = run_problems(c, &R, err))) return rc;
        c->calib_done[slot] = 1;
    }
    *scores = f->v;
    *n = f->n;
    return DUET_OK;
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

double duet_eval_rate_threshold(const float *scores, int n, double rate) {
    float *s = malloc((size_t)(n > 0 ? n : 1) * sizeof *s);
    if (!s) return NAN;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(scores[i])) s[m++] = scores[i];
    qsort(s, (size_t)m, sizeof *s, cmp_desc);
    long k = lround(rate * m);
    double thr = k <= 0 ? INFINITY : k >= m ? -INFINITY : 0.5 * ((double)s[k - 1] + (double)s[k]);
    free(s);
    return thr;
}

/* ---- evaluating one spec --------------------------------------------------------------- */
static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* The threshold a thresholded spec compares its score with (logit for collm/compose), and the
 * value to report (eta for collm/compose). */
static int resolve_threshold(duet_eval *c, const duet_eval_spec *s, double *cmp, double *report, duet_error *err) {
    int pol = s->policy;
    if (s->rate >= 0) {
        if (!(s->rate <= 1)) return duet_fail(err, DUET_ERR_ARG, "deferral rate %g is outside [0, 1]", s->rate);
        const float *sc = NULL;
        int n = 0, rc = duet_eval_calibration(c, pol, &sc, &n, err);
        if (rc) return rc;
        *cmp = duet_eval_rate_threshold(sc, n, s->rate);
        if (isnan(*cmp)) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        *report = uses_head(pol) ? sigmoid(*cmp) : *cmp;
        return DUET_OK;
    }
    if (uses_head(pol)) {
        if (s->threshold > 1) return duet_fail(err, DUET_ERR_ARG, "threshold %g is outside [0, 1]", s->threshold);
        float eta = s->threshold >= 0 ? s->threshold
                    : c->head && duet_head_threshold(c->head) >= 0 ? duet_head_threshold(c->head) : 0.5f;
        /* as the collab decoder compares: float logit of eta */
        *cmp = eta <= 0 ? -INFINITY : eta >= 1 ? INFINITY : logf(eta / (1 - eta));
        *report = eta;
    } else if (pol == DUET_POLICY_UNCERTAINTY) {
        *cmp = *report = s->threshold >= 0 ? s->threshold : 2.0f;
    } else { /* oracle */
        *cmp = *report = s->threshold;
    }
    return DUET_OK;
}

static int check_models(duet_eval *c, int pol, duet_error *err) {
    if (pol < 0 || pol > DUET_EVAL_POLICY_ORACLE) return duet_fail(err, DUET_ERR_ARG, "unknown policy %d", pol);
    if (pol != DUET_POLICY_BASE && !c->expert)
        return duet_fail(err, DUET_ERR_ARG, "policy %s needs an expert model (--expert)", duet_eval_policy_name(pol));
    if (uses_head(pol) && !c->head)
        return duet_fail(err, DUET_ERR_ARG, "policy %s needs a deferral head (--head)", duet_eval_policy_name(pol));
    if (pol == DUET_POLICY_PROXY && !c->anti)
        return duet_fail(err, DUET_ERR_ARG, "policy proxy needs a third (anti-expert) model (--anti)");
    return DUET_OK;
}

static int eval_nll(duet_eval *c, const duet_eval_spec *s, duet_eval_result *r, duet_error *err) {
    int pol = s->policy, rc = tf_run(c, err);
    if (rc) return rc;
    if (pol == DUET_POLICY_PROXY || pol == DUET_POLICY_CONTRASTIVE || pol == DUET_POLICY_CD ||
        pol == DUET_POLICY_CD_V2)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "policy %s mixes whole distributions: not "
                         "available for --task nll", duet_eval_policy_name(pol));
    double cmp = NAN, rate = NAN;
    if (duet_eval_policy_thresholded(pol) && (rc = resolve_threshold(c, s, &cmp, &r->threshold, err))) return rc;
    if (pol == DUET_POLICY_RANDOM) {
        if (!(s->rate >= 0 && s->rate <= 1))
            return duet_fail(err, DUET_ERR_ARG, "policy random needs a deferral rate in [0, 1]");
        rate = r->rate = s->rate;
    }
    const tf_data *t = &c->tf;
    uint64_t rng = c->p.seed ^ 0x5851f42d4c957f2dull;
    double nll = 0;
    long deferred = 0, calls = 0;
    for (int i = 0; i < t->n; i++) {
        int d = 0;
        double lp;
        switch (pol) {
        case DUET_POLICY_BASE: break;
        case DUET_POLICY_EXPERT: d = 1; break;
        case DUET_POLICY_RANDOM: d = (double)(duet_splitmix64(&rng) >> 11) * 0x1.0p-53 < rate; break;
        case DUET_POLICY_CONFIDENCE: d = t->maxlp_e[i] > t->maxlp_b[i]; calls++; break;
        case DUET_POLICY_UNCERTAINTY: d = t->entropy[i] > cmp; break;
        case DUET_EVAL_POLICY_ORACLE: d = t->gain[i] > cmp; break;
        default: d = t->score[i] > cmp; break; /* collm, compose */
        }
        if (d && pol == DUET_POLICY_COMPOSE) { /* log((1-p) Pb + p Pe) */
            double p = sigmoid(t->score[i]), a = log1p(-p) + t->lpb[i], b = log(p) + t->lpe[i];
            double m = fmax(a, b);
            lp = m + log(exp(a - m) + exp(b - m));
        } else {
            lp = d ? t->lpe[i] : t->lpb[i];
        }
        nll -= lp;
        deferred += d;
    }
    if (pol != DUET_POLICY_CONFIDENCE) calls = deferred;
    r->value = nll / (double)t->n_bytes;
    r->n_tokens = t->n;
    r->n_deferred = deferred;
    r->expert_calls = calls;
    r->deferral_frequency = r->deferral_frequency_examples = (double)deferred / t->n;
    r->n_examples = 1;
    /* teacher-forced throughput of the models the policy needs */
    r->seconds = pol == DUET_POLICY_BASE ? t->t_base : pol == DUET_POLICY_EXPERT ? t->t_expert
                 : calls ? t->t_base + t->t_expert : t->t_base;
    r->tokens_per_second = t->n / (r->seconds > 0 ? r->seconds : 1e-9);
    return DUET_OK;
}

/* A policy's answers, added up in problem order. */
typedef struct tally {
    const duet_eval_spec *s;
    duet_eval_result *r;
    double frac_sum;    /* each problem's own deferral fraction */
} tally;

static int take_answer(duet_eval *c, void *ud, int i, const answer *a, duet_error *err) {
    tally *t = ud;
    duet_eval_result *r = t->r;
    const problem *pb = &c->data.v[i];
    char pred_d[ANSWERS_CAP], pred_p[ANSWERS_CAP];
    const char *out = a->text.p ? a->text.p : "";
    int ok_d = 0, ok_p = 0, ok = 0;
    if (hooked(c->p.task)) { /* the task adds its answers up itself */
        const char *ref = "";
        int rc = c->task.answer(&c->task, i, out, pred_d, sizeof pred_d, &ref, err);
        if (rc) return rc;
        if (c->p.on_answer) c->p.on_answer(c->p.answer_ud, t->s, i, out, pred_d, ref, 0);
    } else {
        ok_d = score_duet(c->p.task, out, pb->reference, pred_d, sizeof pred_d);
        ok_p = score_paper(c->p.task, out, pb->ref_paper, pred_p, sizeof pred_p);
        int paper = c->p.scoring == DUET_EVAL_SCORING_PAPER;
        ok = paper ? ok_p : ok_d;
        const char *ref = paper ? (pb->ref_paper ? pb->ref_paper : "") : pb->reference;
        if (c->p.on_answer) c->p.on_answer(c->p.answer_ud, t->s, i, out, paper ? pred_p : pred_d, ref, ok);
    }
    r->n_correct += ok;
    r->n_correct_duet += ok_d;
    r->n_correct_paper += ok_p;
    r->n_examples++;
    r->n_truncated += pb->truncated;
    r->n_tokens += a->n_gen;
    r->n_deferred += a->n_def;
    r->expert_calls += a->expert_calls;
    r->seconds += a->seconds;
    t->frac_sum += a->n_gen ? (double)a->n_def / a->n_gen : 0;
    return DUET_OK;
}

static int eval_generation(duet_eval *c, const duet_eval_spec *s, duet_eval_result *r, duet_error *err) {
    int pol = s->policy, rc;
    if (pol == DUET_EVAL_POLICY_ORACLE)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "policy oracle needs gold tokens: only --task nll");
    duet_collab_params cp = {.policy = (duet_policy)pol, .threshold = -1, .n_ctx = c->n_ctx};
    cp.sampling.seed = c->p.seed;
    if (duet_eval_policy_thresholded(pol)) {
        double cmp;
        if ((rc = resolve_threshold(c, s, &cmp, &r->threshold, err))) return rc;
        if (uses_head(pol)) { /* eta; a quantile of saturated scores must not round to 1 */
            cp.threshold = (float)r->threshold;
            if (cp.threshold >= 1 && cmp < INFINITY) cp.threshold = nextafterf(1.0f, 0.0f);
        } else {
            cp.threshold = cmp == -INFINITY ? 0.0f : (float)cmp; /* entropy > 0: always */
        }
    } else if (pol == DUET_POLICY_RANDOM) {
        if (!(s->rate >= 0 && s->rate <= 1))
            return duet_fail(err, DUET_ERR_ARG, "policy random needs a deferral rate in [0, 1]");
        cp.random_rate = (float)s->rate;
        r->rate = s->rate;
    }
    char what[96];
    if (s->rate >= 0) snprintf(what, sizeof what, "%s @%.2f", duet_eval_policy_name(pol), s->rate);
    else snprintf(what, sizeof what, "%s", duet_eval_policy_name(pol));
    tally t = {.s = s, .r = r};
    if (hooked(c->p.task)) c->task.begin(&c->task);
    gen_pass R = {.cp = &cp, .n = c->data.n, .what = what, .take = take_answer, .ud = &t};
    if ((rc = run_problems(c, &R, err))) return rc;
    /* decoders that step together each count every batched step whole: the pass's wall time
     * is what their tokens took */
    if (R.parallel > 1) r->seconds = R.wall;
    r->value = r->n_examples ? (double)r->n_correct / r->n_examples : 0;
    if (hooked(c->p.task) && (rc = c->task.finish(&c->task, r, err))) return rc;
    r->deferral_frequency = r->n_tokens ? (double)r->n_deferred / r->n_tokens : 0;
    r->deferral_frequency_examples = r->n_examples ? t.frac_sum / r->n_examples : 0;
    r->tokens_per_second = r->n_tokens / (r->seconds > 0 ? r->seconds : 1e-9);
    return DUET_OK;
}

int duet_eval_one(duet_eval *c, const duet_eval_spec *spec, duet_eval_result *out, duet_error *err) {
    memset(out, 0, sizeof *out);
    out->spec = *spec;
    out->threshold = out->rate = NAN;
    out->protocol = c->p.protocol;
    out->scoring = c->p.scoring;
    out->split = c->p.split;
    if (spec->rate >= 0 && (duet_eval_policy_thresholded(spec->policy) || spec->policy == DUET_POLICY_RANDOM))
        out->rate = spec->rate;
    int rc = check_models(c, spec->policy, err);
    if (rc) return rc;
    return c->p.task == DUET_EVAL_TASK_NLL ? eval_nll(c, spec, out, err) : eval_generation(c, spec, out, err);
}

int duet_eval_run(duet_eval *c, const duet_eval_spec *specs, int n, duet_eval_result *out, duet_error *err) {
    int collm = -1, rc = DUET_OK;
    for (int i = 0; i < n && !rc; i++) {
        int later = (specs[i].policy == DUET_POLICY_RANDOM || specs[i].policy == DUET_EVAL_POLICY_ORACLE) &&
                    specs[i].rate < 0;
        if (later) continue;
        rc = duet_eval_one(c, &specs[i], &out[i], err);
        if (!rc && specs[i].policy == DUET_POLICY_COLLM && collm < 0) collm = i;
    }
    for (int i = 0; i < n && !rc; i++) {
        if (!((specs[i].policy == DUET_POLICY_RANDOM || specs[i].policy == DUET_EVAL_POLICY_ORACLE) &&
              specs[i].rate < 0))
            continue;
        if (collm < 0)
            return duet_fail(err, DUET_ERR_ARG, "policy %s needs a deferral rate (--defer-rate) or "
                             "collm in the same run to match", duet_eval_spec_name(&specs[i]));
        duet_eval_spec s = specs[i];
        s.rate = out[collm].deferral_frequency;
        rc = duet_eval_one(c, &s, &out[i], err);
        out[i].spec = specs[i];
    }
    return rc;
}

int duet_eval_task(const duet_eval *c) { return c->p.task; }
int duet_eval_n_unknown(const duet_eval *c) { return c->tf_done ? c->tf.n_unknown : 0; }

int duet_eval_size(duet_eval *c, duet_error *err) {
    if (c->p.task != DUET_EVAL_TASK_NLL) return c->data.n;
    int rc = tf_run(c, err);
    return rc ? rc : c->tf.n;
}

/* ---- reports ---------------------------------------------------------------------------- */
static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *duet_eval_results_json(int task, const char *data_path, const duet_eval_result *r, int n) {
    json_t *root = json_object(), *arr = json_array();
    json_object_set_new(root, "task", json_string(duet_eval_task_name(task)));
    json_object_set_new(root, "data", json_string(data_path));
    /* how the numbers were obtained: every result of a run shares them */
    int proto = n > 0 ? r[0].protocol : DUET_EVAL_PROTOCOL_DUET;
    json_object_set_new(root, "protocol", json_string(duet_eval_protocol_name(proto)));
    if (task != DUET_EVAL_TASK_NLL) {
        json_object_set_new(root, "scoring", json_string(protocol_scoring_name(n > 0 ? r[0].scoring : DUET_EVAL_SCORING_DUET)));
        json_object_set_new(root, "split", json_string(protocol_split_name(n > 0 ? r[0].split : DUET_EVAL_SPLIT_ALL)));
    }
    for (int i = 0; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "policy", json_string(duet_eval_spec_name(&r[i].spec)));
        json_object_set_new(o, "metric", json_string(duet_eval_metric_name(task)));
        json_object_set_new(o, "value", num(r[i].value));
        json_object_set_new(o, "deferral_frequency", num(r[i].deferral_frequency));
        json_object_set_new(o, "expert_calls", json_integer(r[i].expert_calls));
        json_object_set_new(o, "tokens_per_second", num(r[i].tokens_per_second));
        json_object_set_new(o, "target_rate", num(r[i].rate));
        json_object_set_new(o, "threshold", num(r[i].threshold));
        json_object_set_new(o, "tokens", json_integer(r[i].n_tokens));
        json_object_set_new(o, "deferred", json_integer(r[i].n_deferred));
        if (task != DUET_EVAL_TASK_NLL) {
            json_object_set_new(o, "deferral_frequency_examples", num(r[i].deferral_frequency_examples));
            json_object_set_new(o, "examples", json_integer(r[i].n_examples));
            json_object_set_new(o, "correct", json_integer(r[i].n_correct));
            json_object_set_new(o, "truncated_prompts", json_integer(r[i].n_truncated));
            /* both scorers on the same answers: value/correct above are the chosen one's */
            json_t *sc = json_object();
            int ne = r[i].n_examples, counts[2] = {r[i].n_correct_paper, r[i].n_correct_duet};
            static const char *names[2] = {"paper", "duet"};
            for (int k = 0; k < 2; k++) {
                json_t *one = json_object();
                json_object_set_new(one, "value", num(ne ? (double)counts[k] / ne : 0));
                json_object_set_new(one, "correct", json_integer(counts[k]));
                json_object_set_new(sc, names[k], one);
            }
            json_object_set_new(o, "scorers", sc);
        }
        if (r[i].n_metrics) {
            json_t *m = json_object();
            for (int k = 0; k < r[i].n_metrics; k++) json_object_set_new(m, r[i].metric_names[k], num(r[i].metrics[k]));
            json_object_set_new(o, "metrics", m);
        }
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "results", arr);
    return root;
}

int duet_eval_results_save(int task, const char *data_path, const duet_eval_result *r, int n,
                           const char *path, duet_error *err) {
    json_t *j = duet_eval_results_json(task, data_path, r, n);
    if (!j) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory building the results", path);
    int rc = duet_eval_json_save(j, path, err);
    json_decref(j);
    return rc;
}

int duet_eval_text_save(const char *text, size_t len, const char *path, duet_error *err) {
    return duet_atomic_write(path, text, len, err);
}

int duet_eval_json_save(json_t *root, const char *path, duet_error *err) {
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "%s: cannot serialise the report", path);
    size_t n = strlen(s);
    int rc = DUET_OK;
    char *t = realloc(s, n + 2); /* a final newline */
    if (!t) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    else {
        s = t;
        s[n++] = '\n';
        s[n] = 0;
        rc = duet_eval_text_save(s, n, path, err);
    }
    free(s);
    return rc;
}
