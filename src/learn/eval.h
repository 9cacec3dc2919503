/*
 * eval.h: evaluating routing policies (internal; the library side of `duet eval` and
 * `duet tune`).
 *
 * Tasks:
 *  - gsm8k / math: every policy generates greedily through the public collab API from the
 *    paper's prompt ("Please solve the following math problem with detailed steps.\n\n
 *    Question: <q>\nAnswer:"), stopping at EOS, max tokens, a full context or a stop string;
 *    the metric is exact-match accuracy (answers.h).
 *  - nll: teacher-forced per-byte NLL of a policy's hard routing on a text. One pass over
 *    the text (windows of the context, each led by BOS, exactly as duet_text_score cuts
 *    them) records per token the base's and the expert's log-prob of the gold token (the
 *    expert sees the same tokens mapped through the vocabulary bridge, and its log-prob is
 *    over its whole vocabulary), the head score (duet_head_score_ex: u.h plus the confidence
 *    features the head reads), the base's entropy and both models' log max-probabilities;
 *    each policy then takes every token's probability from the model it picks.
 *
 * Thresholds: a spec gives a policy either an explicit threshold or a target deferral rate.
 * A rate becomes the threshold at the matching quantile of the policy's score (label-free):
 * over all evaluated tokens for nll, over a base-only greedy pass on the first n_calib
 * prompts for generation tasks (docs/method.md section 3). random and oracle without a rate use
 * the deferral frequency that collm (the first collm spec without a rate) reached in the
 * same run.
 */
#ifndef DUET_TRAIN_EVAL_H
#define DUET_TRAIN_EVAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "duet.h"

enum { EVAL_TASK_NLL = 0, EVAL_TASK_GSM8K, EVAL_TASK_MATH, EVAL_TASK_COUNT };

/* Teacher-forced router beyond the collab policies: defer where the expert's log-prob gain
 * lpe - lpb is largest (needs the gold tokens, so nll only). */
#define EVAL_POLICY_ORACLE DUET_POLICY_COUNT

/* "nll", "gsm8k", "math" -> task; -1 when unknown. */
int eval_task_from_name(const char *name);
const char *eval_task_name(int task);
/* Metric name of a task: "nll_per_byte" or "accuracy"; 1 when higher is better. */
const char *eval_metric_name(int task);
int eval_higher_is_better(int task);
/* Collab policy names plus "oracle"; -1 when unknown. */
int eval_policy_from_name(const char *name);
const char *eval_policy_name(int policy);
/* 1 for policies whose deferral is "score > threshold" (collm, compose, uncertainty, oracle). */
int eval_policy_thresholded(int policy);

typedef struct eval_spec {
    int policy;       /* duet_policy or EVAL_POLICY_ORACLE */
    double rate;      /* target deferral fraction in [0,1], or < 0: none */
    float threshold;  /* explicit threshold (eta for collm/compose, nats for uncertainty,
                         log-prob gain for oracle), or < 0: default (the head's eta, else
                         0.5; 2.0 nats). Ignored when rate >= 0. */
} eval_spec;

typedef struct eval_params {
    int task;
    int limit;          /* examples (gsm8k/math) or bytes of text (nll); 0 = all */
    int max_tokens;     /* new tokens per answer (0 = 256) */
    int n_ctx;          /* context of every session (0 = min of the models' defaults, <= 4096) */
    int n_calib;        /* prompts of the base-only calibration pass (0 = 15) */
    const char *const *stops; /* stop strings (NULL: "\n\nQuestion:") */
    int n_stops;
    uint64_t seed;      /* random policy */
    /* called after each example (generation) or window (nll); what names the phase */
    void (*progress)(void *ud, const char *what, long done, long total);
    void *ud;
    /* generation tasks: called with every answer (may be NULL); output is cut at the stop
     * string, pred is the extracted answer ("" when none) */
    void (*on_answer)(void *ud, const eval_spec *spec, int index, const char *output,
                      const char *pred, const char *reference, int correct);
    void *answer_ud;
} eval_params;

typedef struct eval_result {
    eval_spec spec;
    double value;              /* nll per byte, or accuracy in [0,1] */
    double threshold;          /* threshold applied (eta, nats, gain), NaN when none */
    double rate;               /* random: the rate applied; else NaN */
    double deferral_frequency; /* deferred / evaluated tokens, pooled over the data */
    double deferral_frequency_examples; /* mean over examples of their own fraction */
    long n_tokens;             /* tokens scored (nll) or generated */
    long n_deferred;
    long expert_calls;         /* times the expert's next-token distribution was used */
    int n_examples, n_correct;
    int n_truncated;           /* prompts cut from the left to fit the context */
    double seconds;            /* model time: decoding, or the teacher-forced passes used */
    double tokens_per_second;
} eval_result;

typedef struct eval_ctx eval_ctx;

/* Load the data (JSONL for gsm8k/math with file:line errors, plain text for nll) and check
 * the models (vocabulary bridge, head). expert is needed by every policy but base; anti by
 * proxy only. The models and head must outlive the context. */
int eval_open(duet_model *base, duet_model *expert, duet_model *anti, const duet_head *head,
              const char *data_path, const eval_params *params, eval_ctx **out, duet_error *err);
void eval_close(eval_ctx *c);
int eval_task(const eval_ctx *c);
/* Number of examples (gsm8k/math) or of scored tokens (nll; runs the teacher-forced pass). */
int eval_size(eval_ctx *c, duet_error *err);
/* nll: scored tokens that are the base's unknown token (text the base cannot spell; the
 * expert then sees its unknown token too, which it may never have learned): worth a warning.
 * 0 before the teacher-forced pass and for generation tasks. */
int eval_n_unknown(const eval_ctx *c);
/* Scores of a thresholded policy on the calibration data, as its threshold compares them:
 * u.h (collm/compose), entropy (uncertainty), lpe - lpb (oracle, nll only). Generation tasks:
 * the base-only greedy outputs of the first n_calib prompts; nll: every token. Owned by the
 * context (valid until eval_close). */
int eval_calibration(eval_ctx *c, int policy, const float **scores, int *n, duet_error *err);
/* Threshold at which "score > threshold" holds for round(rate * n) of the n scores (the
 * midpoint between neighbouring sorted scores; +inf for rate 0, -inf for rate 1). */
double eval_rate_threshold(const float *scores, int n, double rate);
/* Evaluate one spec. random and oracle need a rate here (eval_run resolves them). */
int eval_one(eval_ctx *c, const eval_spec *spec, eval_result *out, duet_error *err);
/* Evaluate specs in order, random/oracle without a rate after the first collm spec without
 * one (whose deferral frequency they take); out[i] belongs to specs[i]. */
int eval_run(eval_ctx *c, const eval_spec *specs, int n, eval_result *out, duet_error *err);

/* {"task", "data", "results": [{"policy", "metric", "value", "deferral_frequency",
 * "expert_calls", "tokens_per_second", ...}, ...]}; the caller owns the reference. */
json_t *eval_results_json(int task, const char *data_path, const eval_result *r, int n);
/* Write JSON atomically (path.tmp, then rename); no partial file on failure. */
int eval_json_save(json_t *root, const char *path, duet_error *err);
/* Write a whole text file atomically, as above. */
int eval_text_save(const char *text, size_t len, const char *path, duet_error *err);

#endif
