/*
 * task_alpaca.c: `duet eval --task alpacaeval`: AlpacaEval instructions (a JSON list of
 * {"instruction", "output"?, "generator"?, "dataset"?}) prompted as the official Co-LLM
 * code prompts them without a chat template: "Question: " instruction "\n\nAnswer:". There
 * is no split (the whole file is the evaluation set). The library only generates and
 * reports the mean output length in characters ("avg_length", as AlpacaEval's leaderboard
 * does); the win rate comes from a judge (judge.c), which `duet eval` calls afterwards.
 * Each answer's on_answer call carries the instruction as `reference` and the record's
 * "dataset" ("" when none) as `pred`, for the AlpacaEval outputs file.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
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
    int n;
    double chars;
    int count;
} al_state;

static void al_begin(eval_task *t) {
    al_state *s = t->state;
    s->chars = 0, s->count = 0;
}

static int al_answer(eval_task *t, int i, const char *output, char *pred, size_t cap, const char **ref,
                     duet_error *err) {
    (void)err;
    al_state *s = t->state;
    for (const char *c = output; *c; c++) s->chars += ((unsigned char)*c & 0xc0) != 0x80; /* characters */
    s->count++;
    *ref = s->instr[i];
    snprintf(pred, cap, "%s", s->dataset[i]);
    return DUET_OK;
}

static int al_finish(eval_task *t, duet_eval_result *r, duet_error *err) {
    (void)err;
    al_state *s = t->state;
    r->value = NAN; /* until judged */
    eval_result_metric(r, "avg_length", s->count ? s->chars / s->count : 0);
    return DUET_OK;
}

static void al_free(eval_task *t) {
    al_state *s = t->state;
    for (int i = 0; s && i < s->n; i++) free(s->instr[i]), free(s->dataset[i]);
    if (s) free(s->instr), free(s->dataset);
    free(s);
}

int task_alpaca_open(const char *path, const duet_eval_params *p, eval_task *t, duet_error *err) {
    memset(t, 0, sizeof *t);
    al_state *s = calloc(1, sizeof *s);
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    t->state = s;
    t->begin = al_begin, t->answer = al_answer, t->finish = al_finish, t->free = al_free;
    if (p->split == DUET_EVAL_SPLIT_TEST || p->split == DUET_EVAL_SPLIT_VALIDATION)
        return duet_fail(err, DUET_ERR_ARG, "AlpacaEval has no test or validation split: the whole file is evaluated");
    int n, rc = alpaca_read(path, "dataset", 0, &s->instr, &s->dataset, &n, err);
    s->n = n;
    if (rc) return rc;
    if (p->limit > 0 && n > p->limit) n = p->limit;
    if (!(t->prompts = calloc((size_t)n + 1, sizeof *t->prompts))) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++, t->n++) {
        size_t k = strlen(s->instr[i]);
        if (!(t->prompts[i] = malloc(k + 32))) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        snprintf(t->prompts[i], k + 32, "Question: %s\n\nAnswer:", s->instr[i]);
    }
    return DUET_OK;
}
