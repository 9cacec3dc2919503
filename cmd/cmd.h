/* cmd.h: the CLI's own header (not part of libduet): the subcommands of the duet CLI, one
 * file each under cmd/, dispatched by cmd/duet.c. Each returns the process exit status (0 ok,
 * 1 runtime error, 2 usage error). */
#ifndef DUET_CMD_H
#define DUET_CMD_H

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_make_model(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_head(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_lora(int argc, char **argv);

/* ---- evaluation: duet eval and duet tune (cmd/eval.c, cmd/tune.c) ---- */
int cmd_eval(int argc, char **argv);
int cmd_tune(int argc, char **argv);
int cmd_data(int argc, char **argv);
/* Shared by eval and tune (defined in cmd/eval.c): progress on stderr with rate and ETA (the
 * state from _new is NULL when quiet or stderr is not a terminal; free() it); a comma list of
 * numbers in [lo, hi]; loading base/expert/anti/head (prints the error, returns 1). */
struct duet_model;
struct duet_head;
void cmd_eval_progress(void *ud, const char *what, long done, long total);
void *cmd_eval_progress_new(int quiet);
int cmd_eval_number_list(const char *cmd, const char *flag, const char *s, double lo, double hi,
                         double *out, int cap);
int cmd_eval_load(const char *cmd, const char *base_path, const char *expert_path,
                  const char *anti_path, const char *head_path, int n_threads,
                  struct duet_model **base, struct duet_model **expert, struct duet_model **anti,
                  struct duet_head **head);
/* --protocol, --scoring or --split (flag) with value v into ep; 0, or 1 after a message */
struct duet_eval_params;
int cmd_eval_protocol_arg(const char *cmd, const char *flag, const char *v, struct duet_eval_params *ep);

#endif
