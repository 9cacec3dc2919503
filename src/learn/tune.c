/*
 * tune.c: the paper's threshold sweep for collm (see duet.h, tuning). Candidates come from the
 * label-free calibration scores; each candidate is one collm evaluation of the split.
 * Scores are compared as logits u.h (sigmoid is monotone, and logits keep their order where
 * float probabilities saturate at 1).
 */
#include "learn/eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/svg.h"

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

float duet_tune_candidate(const float *scores, int n, double q) {
    float *s = malloc((size_t)(n > 0 ? n : 1) * sizeof *s);
    if (!s) return 1.0f;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(scores[i])) s[m++] = scores[i];
    qsort(s, (size_t)m, sizeof *s, cmp_desc);
    /* walk down the distinct values while fraction(score >= value) <= q */
    int best = -1;
    for (int j = 0; j < m;) {
        int e = j;
        while (e + 1 < m && s[e + 1] == s[j]) e++;
        if ((double)(e + 1) > q * m + 1e-9) break;
        best = e;
        j = e + 1;
    }
    float eta = best < 0 ? 1.0f : (float)(1.0 / (1.0 + exp(-(double)s[best])));
    free(s);
    return eta;
}

int duet_tune_run(duet_eval *c, const double *portions, int n_portions, duet_tune_result *out, duet_error *err) {
    static const double k_default[10] = {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
    memset(out, 0, sizeof *out);
    if (!portions) portions = k_default, n_portions = 10;
    if (n_portions < 1 || n_portions > DUET_TUNE_MAX_POINTS)
        return duet_fail(err, DUET_ERR_ARG, "%d deferral portions: between 1 and %d", n_portions, DUET_TUNE_MAX_POINTS);
    for (int i = 0; i < n_portions; i++)
        if (!(portions[i] >= 0 && portions[i] <= 1))
            return duet_fail(err, DUET_ERR_ARG, "deferral portion %g is outside [0, 1]", portions[i]);
    const float *sc;
    int n, rc = duet_eval_calibration(c, DUET_POLICY_COLLM, &sc, &n, err);
    if (rc) return rc;
    if (n == 0) return duet_fail(err, DUET_ERR_FORMAT, "the calibration pass produced no tokens");
    out->task = duet_eval_task(c);
    out->n_calib_tokens = n;
    out->best = -1;
    for (int i = 0; i < n_portions; i++) {
        duet_tune_point *pt = &out->points[i];
        pt->portion = portions[i];
        pt->eta = duet_tune_candidate(sc, n, portions[i]);
        int same = -1; /* equal candidates give equal runs: evaluate once */
        for (int k = 0; k < i && same < 0; k++)
            if (out->points[k].eta == pt->eta) same = k;
        if (same >= 0) {
            pt->res = out->points[same].res;
        } else {
            duet_eval_spec s = {.policy = DUET_POLICY_COLLM, .rate = -1, .threshold = pt->eta};
            if ((rc = duet_eval_one(c, &s, &pt->res, err))) return rc;
        }
        out->n_points = i + 1;
        const duet_eval_result *b = out->best >= 0 ? &out->points[out->best].res : NULL, *r = &pt->res;
        int better = !b || (duet_eval_higher_is_better(out->task) ? r->value > b->value : r->value < b->value) ||
                     (r->value == b->value && r->deferral_frequency < b->deferral_frequency);
        if (better) out->best = i;
    }
    return DUET_OK;
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *point_json(const duet_tune_point *p) {
    json_t *o = json_object();
    json_object_set_new(o, "portion", json_real(p->portion));
    json_object_set_new(o, "eta", json_real(p->eta));
    json_object_set_new(o, "value", num(p->res.value));
    json_object_set_new(o, "deferral_frequency", num(p->res.deferral_frequency));
    json_object_set_new(o, "expert_calls", json_integer(p->res.expert_calls));
    json_object_set_new(o, "tokens_per_second", num(p->res.tokens_per_second));
    json_object_set_new(o, "tokens", json_integer(p->res.n_tokens));
    return o;
}

int duet_tune_save(const duet_tune_result *r, const char *prefix, duet_head *head, const char *head_path,
                   duet_error *err) {
    if (r->n_points < 1 || r->best < 0) return duet_fail(err, DUET_ERR_ARG, "no tuning results to save");
    const char *metric = duet_eval_metric_name(r->task);
    char path[4096];
    /* CSV */
    char *csv = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&csv, &len);
    if (!f) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    fprintf(f, "portion,eta,deferral_frequency,%s,expert_calls,tokens_per_second,tokens,chosen\n", metric);
    for (int i = 0; i < r->n_points; i++) {
        const duet_tune_point *p = &r->points[i];
        fprintf(f, "%.2f,%.9g,%.6f,%.6f,%ld,%.2f,%ld,%d\n", p->portion, p->eta, p->res.deferral_frequency,
                p->res.value, p->res.expert_calls, p->res.tokens_per_second, p->res.n_tokens, i == r->best);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s.csv", prefix);
    int rc = csv ? duet_eval_text_save(csv, len, path, err) : duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    free(csv);
    if (rc) return rc;
    /* JSON */
    json_t *root = json_object(), *pts = json_array();
    json_object_set_new(root, "task", json_string(duet_eval_task_name(r->task)));
    json_object_set_new(root, "metric", json_string(metric));
    const duet_eval_result *first = &r->points[0].res;
    json_object_set_new(root, "protocol", json_string(duet_eval_protocol_name(first->protocol)));
    if (r->task != DUET_EVAL_TASK_NLL)
        json_object_set_new(root, "scoring", json_string(first->scoring == DUET_EVAL_SCORING_PAPER ? "paper" : "duet"));
    json_object_set_new(root, "higher_is_better", json_boolean(duet_eval_higher_is_better(r->task)));
    json_object_set_new(root, "calibration_tokens", json_integer(r->n_calib_tokens));
    json_object_set_new(root, "chosen", point_json(&r->points[r->best]));
    for (int i = 0; i < r->n_points; i++) json_array_append_new(pts, point_json(&r->points[i]));
    json_object_set_new(root, "points", pts);
    snprintf(path, sizeof path, "%s.json", prefix);
    rc = duet_eval_json_save(root, path, err);
    json_decref(root);
    if (rc) return rc;
    /* SVG */
    double x[DUET_TUNE_MAX_POINTS], y[DUET_TUNE_MAX_POINTS];
    for (int i = 0; i < r->n_points; i++) {
        x[i] = r->points[i].res.deferral_frequency;
        y[i] = r->points[i].res.value;
    }
    char title[160], *svg = NULL;
    snprintf(title, sizeof title, "duet tune (%s): %s vs deferral frequency, chosen eta = %.4g",
             duet_eval_task_name(r->task), metric, r->points[r->best].eta);
    svg_series s = {.name = "collm", .x = x, .y = y, .n = r->n_points, .highlight = r->best};
    svg_plot pl = {.title = title, .xlabel = "deferral frequency (fraction of tokens from the expert)",
                   .ylabel = r->task == DUET_EVAL_TASK_NLL ? "NLL per byte (nats)" : "accuracy",
                   .fixed_x = 1, .x_lo = 0, .x_hi = 1,
                   .fixed_y = r->task != DUET_EVAL_TASK_NLL, .y_lo = 0, .y_hi = 1};
    if (svg_line_plot(&pl, &s, 1, &svg, &len)) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    snprintf(path, sizeof path, "%s.svg", prefix);
    rc = duet_eval_text_save(svg, len, path, err);
    free(svg);
    if (rc || !head) return rc;
    duet_head_set_threshold(head, r->points[r->best].eta);
    return duet_head_save(head, head_path, err);
}
