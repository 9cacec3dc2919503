/* util.h: argument parsing shared by the subcommands. Parsers print "duet CMD: ..." on
 * failure and return 0; callers then return 2 (usage error). */
#ifndef DUET_CMD_UTIL_H
#define DUET_CMD_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* The value after argv[*i] (advancing *i), or NULL with a message when missing. */
const char *arg_value(const char *cmd, int argc, char **argv, int *i);
int arg_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out);
int arg_u64(const char *cmd, const char *flag, const char *s, uint64_t *out);
int arg_float(const char *cmd, const char *flag, const char *s, double lo, double hi, float *out);
/* Comma-separated integers ("128,512") into out[cap]; returns count (0 on error). */
int arg_int_list(const char *cmd, const char *flag, const char *s, int *out, int cap);
/* Read a whole file (NUL-terminated); NULL with a message on failure. */
char *read_file(const char *cmd, const char *path, size_t *len);

#endif
