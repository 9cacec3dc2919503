/*
 * task.h: generation tasks whose data and scoring live in files of their own (internal):
 * BioASQ (task_bioasq.c) and AlpacaEval (task_alpaca.c). eval.c decodes their prompts as it
 * does GSM8K's and hands every answer to the task; the task adds them up per policy pass.
 */
#ifndef DUET_LEARN_TASK_H
#define DUET_LEARN_TASK_H

#include <stddef.h>

#include "duet.h"

typedef struct eval_task eval_task;
struct eval_task {
    int n;          /* examples */
    char **prompts; /* n prompts (owned) */
    void *state;
    /* a policy pass begins: forget the previous pass's answers */
    void (*begin)(eval_task *t);
    /* the answer to example i: pred (cap bytes) gets what the scorer read from it, *ref the
     * gold it was compared with (owned by the task) */
    int (*answer)(eval_task *t, int i, const char *output, char *pred, size_t cap, const char **ref,
                  duet_error *err);
    /* the pass is over: r->value and r->metrics */
    int (*finish)(eval_task *t, duet_eval_result *r, duet_error *err);
    void (*free)(eval_task *t);
};

/* Both read data_path (named in errors) for p's protocol and split, keep the first p->limit
 * examples (when > 0), and fill t. */
int task_bioasq_open(const char *data_path, const duet_eval_params *p, eval_task *t, duet_error *err);
int task_alpaca_open(const char *data_path, const duet_eval_params *p, eval_task *t, duet_error *err);
void eval_task_free(eval_task *t);

/* AlpacaEval's JSON (a list of {"instruction", ...}): every record's instruction and its
 * string field `field` ("" when absent unless required) into malloc'd arrays of *n strings
 * (freed by the caller, also after an error). Errors name the file, the record and the
 * field. At most ALPACA_MAX_RECORDS records. */
#define ALPACA_MAX_RECORDS 100000
int alpaca_read(const char *path, const char *field, int required, char ***instr, char ***values, int *n,
                duet_error *err);

/* A named metric into r->metrics (silently dropped past DUET_EVAL_MAX_METRICS). */
void eval_result_metric(duet_eval_result *r, const char *name, double value);

#endif
