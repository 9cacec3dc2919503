/* eval_alpaca.c: `duet eval --task alpacaeval`'s outputs file (AlpacaEval's JSON) and its
 * judged win rate. The library hands every answer over in order, pass after pass; the passes
 * run in duet_eval_run's order (every spec but the rate-less random/oracle ones, then those). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "eval_alpaca.h"
#include "duet.h"
#include "base/common.h"
#include "learn/eval.h"
#include "learn/task.h"

void cmd_alpaca_collect(void *ud, const duet_eval_spec *spec, int index, const char *output, const char *pred,
                        const char *reference, int correct) {
    (void)spec, (void)index, (void)correct;
    alpaca_out *o = ud;
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 64;
        alpaca_rec *v = realloc(o->v, (size_t)cap * sizeof *v);
        if (!v) { o->failed = 1; return; }
        o->v = v, o->cap = cap;
    }
    alpaca_rec *r = &o->v[o->n];
    r->output = strdup(output), r->instr = strdup(reference), r->dataset = strdup(pred);
    if (!r->output || !r->instr || !r->dataset) {
        free(r->output), free(r->instr), free(r->dataset);
        o->failed = 1;
        return;
    }
    o->n++;
}

void cmd_alpaca_free(alpaca_out *o) {
    for (int i = 0; i < o->n; i++) free(o->v[i].output), free(o->v[i].instr), free(o->v[i].dataset);
    free(o->v);
    memset(o, 0, sizeof *o);
}

static int later(const duet_eval_spec *s) {
    return (s->policy == DUET_POLICY_RANDOM || s->policy == DUET_EVAL_POLICY_ORACLE) && s->rate < 0;
}

/* pass[k] = the result index of the k-th pass */
static void pass_order(const duet_eval_spec *specs, int n, int *pass) {
    int k = 0;
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < n; i++)
            if (later(&specs[i]) == round) pass[k++] = i;
}

static json_t *str_json(const char *s) {
    json_t *j = json_string(s);
    return j ? j : json_string("(not UTF-8)");
}

int cmd_alpaca_finish(alpaca_out *o, const duet_eval_spec *specs, int n_specs, int n_examples, duet_eval_result *res,
                      const char *outputs, const char *reference, const duet_judge_params *jp, duet_error *err) {
    int pass[256];
    if (o->failed) return duet_fail(err, DUET_ERR_NOMEM, "out of memory keeping the outputs");
    if (n_specs > 256 || o->n != n_specs * n_examples)
        return duet_fail(err, DUET_ERR_ARG, "%d outputs for %d policies of %d examples", o->n, n_specs, n_examples);
    pass_order(specs, n_specs, pass);
    char **ref_instr = NULL, **ref_out = NULL;
    int n_ref = 0, rc = DUET_OK;
    if (reference) {
        rc = alpaca_read(reference, "output", 1, &ref_instr, &ref_out, &n_ref, err);
        if (!rc && n_ref < n_examples)
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: %d records for %d instructions", reference, n_ref, n_examples);
        for (int i = 0; !rc && i < n_examples; i++)
            if (strcmp(ref_instr[i], o->v[i].instr))
                rc = duet_fail(err, DUET_ERR_FORMAT, "%s: record %d: field 'instruction' differs from the "
                               "data's instruction %d", reference, i, i);
    }
    json_t *list = json_array();
    const char **outs = malloc(((size_t)n_examples + 1) * sizeof *outs);
    if (!rc && !outs) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int k = 0; !rc && k < n_specs; k++) {
        duet_eval_result *r = &res[pass[k]];
        char gen[96];
        if (isfinite(r->rate)) snprintf(gen, sizeof gen, "duet-%s@%.2f", duet_eval_spec_name(&r->spec), r->rate);
        else snprintf(gen, sizeof gen, "duet-%s", duet_eval_spec_name(&r->spec));
        for (int i = 0; i < n_examples; i++) {
            const alpaca_rec *a = &o->v[(size_t)k * n_examples + i];
            outs[i] = a->output;
            json_array_append_new(list, json_pack("{s:o, s:o, s:s, s:o}", "instruction", str_json(a->instr),
                                                  "output", str_json(a->output), "generator", gen, "dataset",
                                                  str_json(a->dataset)));
        }
        if (!reference) continue;
        duet_judge_result jr;
        rc = duet_judge_win_rate(jp, (const char *const *)ref_instr, outs, (const char *const *)ref_out,
                                 n_examples, &jr, err);
        if (rc) break;
        r->value = jr.win_rate;
        eval_result_metric(r, "win_rate", jr.win_rate);
        eval_result_metric(r, "comparisons", jr.comparisons);
        eval_result_metric(r, "wins", jr.wins);
        eval_result_metric(r, "ties", jr.ties);
        eval_result_metric(r, "losses", jr.losses);
        eval_result_metric(r, "invalid_verdicts", jr.invalid);
    }
    if (!rc && outputs) rc = duet_eval_json_save(list, outputs, err);
    json_decref(list);
    free(outs);
    for (int i = 0; i < n_ref; i++) free(ref_instr[i]), free(ref_out[i]);
    free(ref_instr), free(ref_out);
    return rc;
}
