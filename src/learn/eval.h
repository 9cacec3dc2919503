/*
 * eval.h: evaluating routing policies (the library side of `duet eval` and `duet tune`).
 *
 * Internal part: the calibration scores and rate thresholds (tuning and the tests use
 * them) and the JSON/text report writers; the tasks, policies and the public API are in
 * duet.h (learning the switch: evaluation).
 */
#ifndef DUET_TRAIN_EVAL_H
#define DUET_TRAIN_EVAL_H

#include <jansson.h>
#include <stddef.h>

#include "duet.h"

/* Scores of a thresholded policy on the calibration data, as its threshold compares them:
 * u.h (collm/compose), entropy (uncertainty), lpe - lpb (oracle, nll only). Generation tasks:
 * the base-only greedy outputs of the first n_calib prompts; nll: every token. Owned by the
 * context (valid until duet_eval_close). */
int duet_eval_calibration(duet_eval *c, int policy, const float **scores, int *n, duet_error *err);
/* Threshold at which "score > threshold" holds for round(rate * n) of the n scores (the
 * midpoint between neighbouring sorted scores; +inf for rate 0, -inf for rate 1). */
double duet_eval_rate_threshold(const float *scores, int n, double rate);
/* {"task", "data", "results": [{"policy", "metric", "value", "deferral_frequency",
 * "expert_calls", "tokens_per_second", ...}, ...]}; the caller owns the reference. */
json_t *duet_eval_results_json(int task, const char *data_path, const duet_eval_result *r, int n);
/* Write JSON atomically (path.tmp, then rename); no partial file on failure. */
int duet_eval_json_save(json_t *root, const char *path, duet_error *err);
/* Write a whole text file atomically, as above. */
int duet_eval_text_save(const char *text, size_t len, const char *path, duet_error *err);

#endif
