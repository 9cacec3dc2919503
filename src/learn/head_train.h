/*
 * head_train.h: learning Co-LLM's switch on a frozen base from two score files (internal).
 *
 * Inputs: a base score file (the base's own tokenizer, hidden states stored) and an expert
 * score file of the same tokens (`duet score --tokenizer-of BASE`). Per response token t:
 * lpb_t, lpe_t (gold log-probs), the base's entropy and max log-prob, and h_t.
 * The head: s_t = u . h_t + w_e * entropy_t + w_m * maxlogp_t + b (terms as features ask;
 * the paper's head is u . h_t alone, no bias). Objectives, mean over tokens (docs/method.md
 * section 4):
 *   weak: -(pw * Z_t * log sig(s_t) + (1 - Z_t) * log sig(-s_t)), pw = 8, with
 *        the pseudo-label Z_t = 1 iff the gold token is the expert's argmax and not the base's
 *        (ties within 1e-5 relative count as argmax)
 *   nll: -logsumexp(log sig(-s_t) + lpb_t, log sig(s_t) + lpe_t)
 *        + L * sig(s_t)   (the cost-aware variant, L = defer_cost >= 0)
 *   gain (duet's addition): (s_t - clip(lpe_t - lpb_t, +-8))^2 / 2: s regresses onto the
 *        expert's log-prob gain, so ranking tokens by s approximates the oracle router;
 *        sig(s) > 0.5 then means "the expert is expected to do better"
 * With a frozen base the marginal likelihood improves by deferring more everywhere (the
 * expert is better on most tokens), which can leave the head's ranking worse than its weak
 * start: hence the selection by routing quality below.
 * Training: a weak-supervision start, then (objective nll) the marginal likelihood, AdamW
 * with warm-up and linear decay, gradient clipping at 1. Sequences are split into training and
 * validation; the checkpoint kept is the one with the best routing quality on validation:
 * mean NLL per token of hard routing (defer the top r fraction of tokens by s, the expert's
 * log-prob for those, the base's for the rest) averaged over r = 10, 20, 30, 40, 50%.
 * Extra features are standardised for training and folded back into the saved weights.
 */
#ifndef DUET_TRAIN_HEAD_TRAIN_H
#define DUET_TRAIN_HEAD_TRAIN_H

#include <stdint.h>

#include "duet.h"
#include "learn/scores.h"

#define HT_N_RATES 5
extern const double ht_rates[HT_N_RATES]; /* 0.1, 0.2, 0.3, 0.4, 0.5 */

#define HT_GAIN_CLIP 8.0

typedef enum ht_objective { HT_NLL = 0, HT_WEAK = 1, HT_GAIN = 2 } ht_objective;

/* Where each input's weight sits in the parameter vector theta. */
typedef struct ht_layout {
    int features, n_embd;
    int n_param;
    int i_u;                   /* first of n_embd hidden weights, -1 without hidden */
    int i_ent, i_max, i_bias;  /* -1 when absent (a bias exists iff a non-hidden feature does) */
} ht_layout;

void ht_layout_init(ht_layout *L, int features, int n_embd);

/* A batch of tokens as the head and the loss see them. */
typedef struct ht_batch {
    int n;
    const float *hidden;            /* [n][n_embd], when the layout has u */
    const float *entropy, *maxlogp; /* [n], when the layout has them */
    const float *lpb, *lpe;         /* [n] (nll) */
    const float *label;             /* [n] pseudo-labels 0/1 (weak) */
} ht_batch;

/* Mean loss over the batch at theta [n_param]; grad (may be NULL) receives d loss / d theta.
 * All arithmetic in double (the finite-difference tests rely on it). */
double ht_loss_grad(const ht_layout *L, const ht_batch *b, ht_objective obj, double defer_cost,
                    double pos_weight, const double *theta, double *grad);

/* Routing on a set of tokens: mean NLL per token (nats) of hard routing at each rate. */
typedef struct ht_routing {
    int64_t n_tok;
    uint64_t n_bytes;               /* text bytes of these tokens (per-byte = x * n_tok / n_bytes) */
    double base, expert;            /* never / always defer */
    double head[HT_N_RATES];        /* top r by the head's score */
    double random[HT_N_RATES];      /* expectation of Bernoulli(r) deferral */
    double oracle[HT_N_RATES];      /* top r by lpe - lpb (the best any router can do) */
    double uncertainty[HT_N_RATES]; /* top r by the base's entropy */
    double confidence[HT_N_RATES];  /* top r by the base's lowest max log-prob */
    double head_mean;               /* mean of head[] over the rates: routing quality */
} ht_routing;

/* Refuse two files that do not describe the same tokens: DUET_ERR_ARG naming the first
 * mismatch (vocabulary, sequence count, layout of a sequence, gold id of a token). */
int ht_check_pair(const duet_scores *base, const duet_scores *expert, duet_error *err);

/* Routing of a head (and the baselines) on a pair of score files, e.g. held-out data. */
int ht_eval_scores(const duet_head *head, const duet_scores *base, const duet_scores *expert,
                   ht_routing *out, duet_error *err);

typedef struct ht_progress {
    const char *phase;              /* "weak" or "nll" */
    int step, steps;                /* within the phase */
    int epoch;
    double loss;                    /* mean training loss since the last report */
    double route;                   /* last validation routing quality (NaN before any) */
    double best;                    /* best so far */
} ht_progress;

typedef struct ht_params {
    ht_objective objective;         /* HT_NLL (weak start, then nll), HT_WEAK (weak only) or
                                       HT_GAIN (gain regression only) */
    double defer_cost;              /* L of the cost-aware nll, >= 0 */
    int features;                   /* DUET_HEAD_FEAT_* mask; 0 = hidden */
    int epochs;                     /* epochs of the main phase (0 = 2 for nll, else 5) */
    int weak_epochs;                /* epochs of the weak start before nll (0 = 3, -1 = none) */
    double lr;                      /* main phase peak learning rate (0 = 1e-3 for nll, else
                                       1e-2; times 128/n_embd for hidden heads wider than 128) */
    double weak_lr;                 /* weak start (0 = 1e-2, scaled the same way) */
    double weight_decay;            /* AdamW decoupled decay (0 = none, the paper's) */
    double pos_weight;              /* weak positive weight (0 = 8) */
    double val_frac;                /* validation share of the sequences (0 = 0.1) */
    uint64_t seed;                  /* split and batch order */
    int batch_seqs;                 /* sequences per step (0 = 8) */
    int evals_per_phase;            /* validation passes per phase (0 = 10) */
    const float *u_init;            /* [n_embd] starting u (NULL: zeros) */
    const char *report_path;        /* JSON report, written atomically (NULL: none) */
    void (*progress)(void *ud, const ht_progress *p); /* about every 1% of a phase */
    void *ud;
} ht_params;

typedef struct ht_result {
    int n_train_seq, n_val_seq;
    int64_t n_train_tok, n_val_tok;
    double pos_rate;                /* pseudo-label positive rate, training tokens */
    int best_step;                  /* global step of the kept checkpoint (0: the start) */
    char best_phase[8];             /* "init", "weak" or "nll" */
    double best_val_loss;           /* validation loss (the phase's objective) there */
    ht_routing val;                 /* validation routing of the kept head + baselines */
} ht_result;

/* Train a head for the base of `base` (identity from its header). *out is the kept
 * checkpoint; res (may be NULL) is filled on success. */
int ht_train(const duet_scores *base, const duet_scores *expert, const ht_params *p, duet_head **out,
             ht_result *res, duet_error *err);

#endif
