/* eval_alpaca.h: the alpacaeval part of `duet eval` (eval_alpaca.c). */
#ifndef DUET_CMD_EVAL_ALPACA_H
#define DUET_CMD_EVAL_ALPACA_H

#include "duet.h"

/* duet eval --task alpacaeval: every answer kept (on_answer), then the AlpacaEval outputs
 * file and, with a reference file, each policy's judged win rate into its result. */
typedef struct alpaca_rec { char *output, *instr, *dataset; } alpaca_rec;
typedef struct alpaca_out { alpaca_rec *v; int n, cap, failed; } alpaca_out;
void cmd_alpaca_collect(void *ud, const duet_eval_spec *spec, int index, const char *output, const char *pred,
                        const char *reference, int correct);
int cmd_alpaca_finish(alpaca_out *o, const duet_eval_spec *specs, int n_specs, int n_examples, duet_eval_result *res,
                      const char *outputs, const char *reference, const duet_judge_params *jp, duet_error *err);
void cmd_alpaca_free(alpaca_out *o);

#endif
