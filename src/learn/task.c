/* task.c: what the evaluation tasks of their own files share (task.h). */
#include "learn/task.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void eval_task_free(eval_task *t) {
    if (!t) return;
    if (t->free) t->free(t);
    for (int i = 0; t->prompts && i < t->n; i++) free(t->prompts[i]);
    free(t->prompts);
    memset(t, 0, sizeof *t);
}

void eval_result_metric(duet_eval_result *r, const char *name, double value) {
    if (r->n_metrics >= DUET_EVAL_MAX_METRICS) return;
    snprintf(r->metric_names[r->n_metrics], sizeof r->metric_names[0], "%s", name);
    r->metrics[r->n_metrics++] = value;
}
