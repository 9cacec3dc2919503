/* cmd.h: the subcommands of the duet CLI, one file each under cmd/. Each returns the
 * process exit status (0 ok, 1 runtime error, 2 usage error). */
#ifndef DUET_CMD_H
#define DUET_CMD_H

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_make_model(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_head(int argc, char **argv);

#endif
