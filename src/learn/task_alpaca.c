/*
 * task_alpaca.c: `duet eval --task alpacaeval`: AlpacaEval instructions (a JSON list of
 * {"instruction", "output"?, "generator"?, "dataset"?}) prompted as the official Co-LLM
 * code prompts them without a chat template: "Question: " instruction "\n\nAnswer:". There
 * is no split (the whole file is the evaluation set). The library only generates and
 * reports the mean output length in characters ("avg_length", as AlpacaEval's leaderboard
 * does); with a judge and reference outputs (read and checked when the task opens, before
 * anything is generated) each policy pass gets its win rate (judge.c). Every pass's outputs
 * join one list in AlpacaEval's format, written atomically after each pass.
 * Each answer's on_answer call carries the instruction as `reference` and the record's
 * "dataset" ("" when none) as `pred`.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "learn/eval.h"
#include "learn/task.h"

int alpaca_read(const char *path, const char *field, int required, char ***instr, char ***values, int *n,
                duet_error *err) {
    json_error_t je;
    *instr = *values = NULL, *n = 0;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) return duet_fail(err, DUET_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
    size_t m = json_is_array(root) ? json_array_size(root) : 0;
    int rc = !json_is_array(root) ? duet_fail(err, DUET_ERR_FORMAT, "%s: not a JSON list of records", path)
             : m == 0               ? duet_fail(err, DUET_ERR_FORMAT, "%s: no records", path)
             : m > ALPACA_MAX_RECORDS ? duet_fail(err, DUET_ERR_FORMAT, "%s: more than %d records", path, ALPACA_MAX_RECORDS)
                                  : DUET_OK;
    if (!rc && (!(*instr = calloc(m, sizeof **instr)) || !(*values = calloc(m, sizeof **values))))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < m; i++) {
        json_t *o = json_array_get(root, i), *a = json_object_get(o, "instruction"), *b = json_object_get(o, field);
        const char *bad = !json_is_object(o) ? NULL : !json_is_string(a) ? "instruction"
                          : (b && !json_is_string(b)) || (required && !b) ? field : "";
        if (!bad) rc = duet_fail(err, DUET_ERR_FORMAT, "%s: record %zu is not an object", path, i);
        else if (*bad)
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: record %zu: field '%s' is %s", path, i, bad,
                           json_object_get(o, bad) ? "not a string" : "missing");
        else if (!((*instr)[i] = strdup(json_string_value(a))) ||
                 !((*values)[i] = strdup(b ? json_string_value(b) : ""))) {
            free((*instr)[i]); /* the caller frees the n whole records */
            rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        } else ++*n;
    }
    json_decref(root);
    return rc;
}

typedef struct al_state {
    char **instr, **dataset;
    int n;                      /* records read (prompts: the first t->n of them) */
    char **ref_instr, **ref_out;
    int n_ref;
    char **out;                 /* this pass's outputs, [t->n] */
    double chars;
    int count;
    json_t *list;               /* every pass's records so far */
    const duet_eval_params *p;
    const char *outputs_path;
    const duet_judge_params *judge;
} al_state;

static void al_begin(eval_task *t) {
    al_state *s = t->state;
    s->chars = 0, s->count = 0;
    for (int i = 0; i < t->n; i++) free(s->out[i]), s->out[i] = NULL;
}

static int al_answer(eval_task *t, int i, const char *output, char *pred, size_t cap, const char **ref,
                     duet_error *err) {
    al_state *s = t->state;
    for (const char *c = output; *c; c++) s->chars += ((unsigned char)*c & 0xc0) != 0x80; /* characters */
    s->count++;
    *ref = s->instr[i];
    snprintf(pred, cap, "%s", s->dataset[i]);
    free(s->out[i]);
    if (!(s->out[i] = strdup(output))) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return DUET_OK;
}

static json_t *str_json(const char *s) {
    json_t *j = json_string(s);
    return j ? j : json_string("(not UTF-8)");
}

static int al_finish(eval_task *t, duet_eval_result *r, duet_error *err) {
    al_state *s = t->state;
    r->value = NAN; /* until judged */
    eval_result_metric(r, "avg_length", s->count ? s->chars / s->count : 0);
    char gen[96];
    if (r->spec.rate >= 0) snprintf(gen, sizeof gen, "duet-%s@%.2f", duet_eval_spec_name(&r->spec), r->spec.rate);
    else snprintf(gen, sizeof gen, "duet-%s", duet_eval_spec_name(&r->spec));
    for (int i = 0; i < t->n; i++)
        if (json_array_append_new(s->list, json_pack("{s:o, s:o, s:s, s:o}", "instruction", str_json(s->instr[i]),
                                                     "output", str_json(s->out[i] ? s->out[i] : ""), "generator",
                                                     gen, "dataset", str_json(s->dataset[i]))))
            return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    int rc = s->outputs_path ? duet_eval_json_save(s->list, s->outputs_path, err) : DUET_OK;
    if (rc || !s->judge) return rc;
    duet_judge_result jr;
    rc = duet_judge_win_rate(s->judge, (const char *const *)s->instr, (const char *const *)s->out,
                                 (const char *const *)s->ref_out, t->n, &jr, err);
    if (rc) return rc;
    r->value = jr.win_rate;
    eval_result_metric(r, "win_rate", jr.win_rate);
    eval_result_metric(r, "comparisons", jr.comparisons);
    eval_result_metric(r, "wins", jr.wins);
    eval_result_metric(r, "ties", jr.ties);
    eval_result_metric(r, "losses", jr.losses);
    eval_result_metric(r, "invalid_verdicts", jr.invalid);
    return DUET_OK;
}

static void al_free(eval_task *t) {
    al_state *s = t->state;
    if (!s) return;
    for (int i = 0; i < s->n; i++) free(s->instr[i]), free(s->dataset[i]);
    for (int i = 0; i < s->n_ref; i++) free(s->ref_instr[i]), free(s->ref_out[i]);
    for (int i = 0; s->out && i < t->n; i++) free(s->out[i]);
    free(s->instr), free(s->dataset), free(s->ref_instr), free(s->ref_out), free(s->out);
    json_decref(s->list);
    free(s);
}

/* The reference outputs: the data's instructions, in order. */
static int read_reference(al_state *s, int n, duet_error *err) {
    const char *path = s->p->reference;
    int rc = alpaca_read(path, "output", 1, &s->ref_instr, &s->ref_out, &s->n_ref, err);
    if (!rc && s->n_ref < n)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: %d records for %d instructions", path, s->n_ref, n);
    for (int i = 0; !rc && i < n; i++)
        if (strcmp(s->ref_instr[i], s->instr[i]))
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: record %d: field 'instruction' differs from the data's "
                           "instruction %d", path, i, i);
    return rc;
}

int task_alpaca_open(const char *path, const duet_eval_params *p, eval_task *t, duet_error *err) {
    memset(t, 0, sizeof *t);
    if (p->split == DUET_EVAL_SPLIT_TEST || p->split == DUET_EVAL_SPLIT_VALIDATION)
        return duet_fail(err, DUET_ERR_ARG, "AlpacaEval has no test or validation split: the whole file is evaluated");
    if (!p->judge != !p->reference)
        return duet_fail(err, DUET_ERR_ARG, "a judge needs reference outputs, and reference outputs a judge");
    al_state *s = calloc(1, sizeof *s);
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    t->state = s;
    t->begin = al_begin, t->answer = al_answer, t->finish = al_finish, t->free = al_free;
    s->p = p, s->outputs_path = p->alpaca_outputs, s->judge = p->judge;
    int n, rc = alpaca_read(path, "dataset", 0, &s->instr, &s->dataset, &n, err);
    s->n = n;
    if (rc) return rc;
    if (p->limit > 0 && n > p->limit) n = p->limit;
    if (p->reference && (rc = read_reference(s, n, err))) return rc;
    if (!(s->list = json_array()) || !(t->prompts = calloc((size_t)n + 1, sizeof *t->prompts)) ||
        !(s->out = calloc((size_t)n + 1, sizeof *s->out)))
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++, t->n++) {
        size_t k = strlen(s->instr[i]);
        if (!(t->prompts[i] = malloc(k + 32))) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        snprintf(t->prompts[i], k + 32, "Question: %s\n\nAnswer:", s->instr[i]);
    }
    return DUET_OK;
}
