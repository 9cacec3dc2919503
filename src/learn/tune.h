/*
 * tune.h: choosing the collm threshold eta the paper's way (docs/method.md section 6; internal,
 * the library side of `duet tune`).
 *  1. Record p = sigmoid(u.h) for every token of the calibration pass (eval_calibration:
 *     the base alone, greedy, on the first n_calib validation prompts; every token of the
 *     text for nll).
 *  2. For each target deferral portion q (0.0, 0.1, ..., 0.9) the candidate eta is the
 *     smallest observed p with fraction(p >= eta) <= q (eta = 1, never defer, when no p
 *     qualifies, as for q = 0).
 *  3. Evaluate the whole validation split with collm at each candidate and keep the best
 *     metric (ties: the lower deferral frequency, i.e. fewer expert calls).
 * The table (portion, eta, metric, deferral frequency, expert calls, tokens/s) is the
 * paper's metric-vs-frequency curve.
 */
#ifndef DUET_TRAIN_TUNE_H
#define DUET_TRAIN_TUNE_H

#include "learn/eval.h"

#define TUNE_MAX_POINTS 32

typedef struct tune_point {
    double portion;      /* target deferral portion q */
    float eta;           /* candidate threshold */
    eval_result res;     /* collm at eta on the validation split */
} tune_point;

typedef struct tune_result {
    int task;
    int n_calib_tokens;  /* tokens whose p the candidates come from */
    int n_points;
    tune_point points[TUNE_MAX_POINTS];
    int best;            /* index of the chosen point */
} tune_result;

/* The candidate eta for portion q from the scores s = u.h of n tokens (see above). */
float tune_candidate(const float *scores, int n, double q);
/* Run the protocol on an eval context (task, data and models as for eval). portions: the
 * q values (NULL: 0.0, 0.1, ..., 0.9), at most TUNE_MAX_POINTS. */
int tune_run(eval_ctx *c, const double *portions, int n_portions, tune_result *out,
             duet_error *err);
/* Write PREFIX.csv, PREFIX.json and PREFIX.svg (each atomically); then, when head is not
 * NULL, store the chosen eta in it and save it to head_path atomically. */
int tune_save(const tune_result *r, const char *prefix, duet_head *head, const char *head_path,
              duet_error *err);

#endif
