/* util.h: the CLI's own helper header (not part of libduet): argument parsing shared by the
 * subcommands, the progress line on stderr, and the generation loop shared by `duet run` and
 * `duet chat`. The CLI reaches the library only through include/duet.h. Parsers print
 * "duet CMD: ..." on failure and return 0; callers then return 2 (usage error). */
#ifndef DUET_CMD_UTIL_H
#define DUET_CMD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "duet.h"

/* The value after argv[*i] (advancing *i), or NULL with a message when missing. */
const char *arg_value(const char *cmd, int argc, char **argv, int *i);
int arg_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out);
int arg_u64(const char *cmd, const char *flag, const char *s, uint64_t *out);
int arg_float(const char *cmd, const char *flag, const char *s, double lo, double hi, float *out);
/* Comma-separated integers ("128,512") into out[cap]; returns count (0 on error). */
int arg_int_list(const char *cmd, const char *flag, const char *s, int *out, int cap);
/* The same with every value in [lo, hi]. */
int arg_int_list_in(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out,
                    int cap);
/* A KV cache type by llama.cpp's name (-ctk / -ctv: f32, f16) into *out (DUET_KV_*). */
int arg_cache_type(const char *cmd, const char *flag, const char *s, int *out);
/* The name arg_cache_type reads for a DUET_KV_* value. */
const char *cache_type_name(int type);
/* Read a whole file (NUL-terminated); NULL with a message on failure. */
char *read_file(const char *cmd, const char *path, size_t *len);


/* ---- progress line (perplexity, score, eval, tune, train, head train) ------------------------ */
/* One line on stderr, redrawn in place: shown only when stderr is a terminal and not --quiet,
 * at most 10 redraws a second, the final one (done >= total) always, then a newline. The
 * timing starts at the first update of a label, so the rate counts only work seen by this
 * run (resumed work and set-up time are left out). */
typedef struct cli_progress {
    int show;        /* stderr is a terminal and not --quiet */
    int open;        /* a line is on screen without its newline */
    int timing;      /* t0 and done0 belong to the current label */
    double t0, last; /* when the timing started, when the line was last drawn */
    long long done0;
    char label[96];
} cli_progress;

void cli_progress_init(cli_progress *p, int quiet);
/* Redraw "LABEL: done/total UNIT, RATE UNIT/s, ETA m:ss[, EXTRA]" (see duet_format_progress).
 * A new label ends the open line and restarts the timing. */
void cli_progress_update(cli_progress *p, const char *label, const char *unit, long long done,
                         long long total, const char *extra);
/* End an open line (a run stopped before its final update, or an error message follows). */
void cli_progress_end(cli_progress *p);

/* ---- LoRA adapters (llama.cpp's flags) ------------------------------------------------------ */
#define LORA_MAX 8
typedef struct lora_opts {
    int n[2];                      /* [0]: the base's (--lora), [1]: the expert's (--expert-lora) */
    const char *path[2][LORA_MAX];
    float scale[2][LORA_MAX];
    duet_lora *held[2 * LORA_MAX]; /* loaded by lora_attach; free with lora_opts_free */
    int n_held;
} lora_opts;
/* Take --lora FILE, --lora-scaled FILE SCALE, --expert-lora FILE, --expert-lora-scaled FILE
 * SCALE (each repeatable): 1 taken, 0 not one of them, -1 bad value (message printed). */
int lora_opts_parse(const char *cmd, lora_opts *o, int argc, char **argv, int *i);
/* Load the base's (which 0) or the expert's (1) adapters for m and attach them, before any
 * session of m exists. */
int lora_attach(lora_opts *o, int which, duet_model *m, duet_error *err);
void lora_opts_free(lora_opts *o);
void lora_opts_usage(FILE *f);

/* ---- generation (run, chat) -------------------------------------------------------------- */
/* Options both generating commands take: models, sampling, collaboration, chat format. */
typedef struct gen_opts {
    const char *model_path, *expert_path, *head_path, *anti_path;
    const char *chat_template; /* --chat-template: a format name or a template file's text */
    const char *system;        /* --system TEXT */
    char *chat_template_buf;   /* owned text of --chat-template FILE (free with gen_opts_free) */
    int n_predict, n_ctx, n_threads, use_mmap, no_repack, quiet, color, verbose_prompt, policy;
    duet_collab_params cp;
    lora_opts lora;
} gen_opts;

void gen_opts_init(gen_opts *o);
void gen_opts_free(gen_opts *o);
/* Take argv[*i] when it is one of the shared options: 1 taken, 0 not one of them, -1 bad
 * value (message printed; exit status 2). */
int gen_opts_parse(const char *cmd, gen_opts *o, int argc, char **argv, int *i);
/* After parsing: -m given and the policy resolved; 0 with a message on a usage error. */
int gen_opts_finish(const char *cmd, gen_opts *o);
void gen_opts_usage(FILE *f);

typedef struct gen_models {
    duet_model *base, *expert, *anti;
    duet_head *head;
    duet_collab *co;
} gen_models;

/* Load the models and head, create the collab, print the load line unless quiet. */
int gen_load(const char *cmd, const gen_opts *o, gen_models *g, duet_error *err);
void gen_free(gen_models *g);

typedef struct gen_result {
    char *text;            /* what was printed (a stop text excluded), NUL-terminated */
    size_t len;
    int n_gen, stop;       /* tokens emitted, why the answer ended (DUET_GEN_*) */
    double t_gen;
} gen_result;
void gen_result_free(gen_result *r);

/* Generate after duet_collab_start with the library's loop (duet_generate): print each piece
 * on stdout (expert tokens highlighted with --color on a terminal), one trace line per token
 * when trace is not NULL, until n_predict tokens, an end-of-generation token, the text `stop`
 * (held back while it may be starting, never printed; NULL or "" for none) or a full context. */
int gen_decode(const gen_opts *o, gen_models *g, const char *stop, FILE *trace, gen_result *r,
               duet_error *err);
/* "prompt N tokens in ...; generated ..." and the collaboration summary on stderr. */
void gen_print_stats(const char *cmd, const gen_models *g, int n_prompt, double t_prompt,
                     const gen_result *r);
/* The --verbose-prompt lines on stderr: the text as a JSON string, then the token ids. */
void gen_print_prompt(const char *cmd, const char *text, size_t len, const int32_t *toks, int n);

/* Tokenize into a new array (*n ids); NULL with err filled on failure. With plain (a chat
 * prompt's mask, see chat_render_alloc) control tokens are parsed only outside the marked
 * message text (duet_tokenize_masked) and parse_special is ignored. */
int32_t *tokenize_alloc(const duet_model *m, const char *text, size_t len, int add_bos,
                        int parse_special, const unsigned char *plain, int *n, duet_error *err);
/* The conversation rendered with the generation prompt (duet_model_chat_prompt) into a new
 * NUL-terminated string, and in *plain a new mask of its message-text bytes for
 * tokenize_alloc (free both); NULL with err filled on failure. */
char *chat_render_alloc(const duet_model *m, const char *override, const duet_chat_message *msgs,
                        int n, unsigned char **plain, duet_error *err);
/* A JSON string literal for s[0..n) (invalid UTF-8 bytes become \u00XX). */
void json_str(FILE *f, const char *s, size_t n);

#endif
