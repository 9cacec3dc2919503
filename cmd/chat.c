/* chat.c: `duet chat`: an interactive conversation on a terminal (or from a pipe), one model or
 * a base and an expert together. Lines are read with plain fgets (no readline); /exit ends,
 * /reset forgets the conversation (the system message stays). Every turn renders the whole
 * conversation with the chat format and generates the answer through the same loop as
 * `duet run`. The KV cache is reused: when the new rendering extends the previous one at a
 * special token (the usual end-of-turn marker), only the new text is tokenised and appended to
 * the tokens already evaluated, as llama-cli does; otherwise the text is tokenised afresh and
 * the collab keeps the longest common token prefix. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void chat_usage(FILE *f) {
    fputs("usage: duet chat -m MODEL [--expert E --head H] [--system TEXT] [options]\n"
          "  type a message and Enter; /exit (or end of input) quits, /reset starts over\n"
          "  --list-templates     print the chat format names and exit\n", f);
    gen_opts_usage(f);
}

/* One line of stdin without its line end, in a growing buffer; 0 at end of input, -1 when a
 * line exceeds the chat size limit. */
static int read_line(char **buf, size_t *cap) {
    size_t n = 0;
    for (;;) {
        if (*cap - n < 2) {
            size_t nc = *cap ? *cap * 2 : 4096;
            char *b = nc > (size_t)DUET_CHAT_MAX_BYTES + 2 ? NULL : realloc(*buf, nc);
            if (!b) return -1;
            *buf = b;
            *cap = nc;
        }
        if (!fgets(*buf + n, (int)(*cap - n), stdin)) {
            (*buf)[n] = 0;
            return n > 0;
        }
        n += strlen(*buf + n);
        if (n && (*buf)[n - 1] == '\n') break;
    }
    while (n && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r')) (*buf)[--n] = 0;
    return 1;
}

typedef struct history {
    duet_chat_message *m;
    int n, cap;
} history;

static int history_add(history *h, const char *role, const char *text, size_t len) {
    if (h->n == h->cap) {
        int nc = h->cap ? h->cap * 2 : 16;
        duet_chat_message *m = realloc(h->m, (size_t)nc * sizeof *m);
        if (!m) return 0;
        h->m = m;
        h->cap = nc;
    }
    char *c = malloc(len + 1);
    if (!c) return 0;
    memcpy(c, text, len);
    c[len] = 0;
    h->m[h->n++] = (duet_chat_message){role, c};
    return 1;
}

static void history_truncate(history *h, int n) {
    while (h->n > n) free((char *)h->m[--h->n].content);
}

/* The prompt tokens of this turn: the previous turn's tokens + the new text when the new
 * rendering extends the previous one and the new part starts with a special token (so that
 * tokenising it alone gives what tokenising the whole would); else the whole text afresh. */
static int32_t *turn_tokens(const duet_model *m, const char *text, const unsigned char *plain,
                            const char *prev_text, const int32_t *prev, int n_prev, int *n,
                            duet_error *err) {
    size_t pl = prev_text ? strlen(prev_text) : 0, tl = strlen(text);
    if (prev_text && pl < tl && !memcmp(text, prev_text, pl)) {
        int nd;
        int32_t *d = tokenize_alloc(m, text + pl, tl - pl, 0, 1, plain + pl, &nd, err);
        if (!d) return NULL;
        int ty = nd > 0 ? duet_token_type(m, d[0]) : 0;
        if (ty == 3 || ty == 4) { /* control or user-defined */
            int32_t *t = realloc(d, (size_t)(n_prev + nd) * sizeof *t);
            if (!t) { free(d); snprintf(err->msg, sizeof err->msg, "out of memory"); return NULL; }
            memmove(t + n_prev, t, (size_t)nd * sizeof *t);
            memcpy(t, prev, (size_t)n_prev * sizeof *t);
            *n = n_prev + nd;
            return t;
        }
        free(d);
    }
    return tokenize_alloc(m, text, tl, 1, 1, plain, n, err);
}

/* Reads the command line into o; returns -1 to go on, else the exit status (0 after --help
 * or --list-templates). */
static int parse_args(int argc, char **argv, gen_opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int taken = gen_opts_parse("chat", o, argc, argv, &i);
        if (taken < 0) return 2;
        if (taken) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { chat_usage(stdout); return 0; }
        if (!strcmp(a, "--list-templates")) {
            const char *names[128];
            int n = duet_chat_template_names(names, 128);
            for (int k = 0; k < n && k < 128; k++) printf("%s\n", names[k]);
            return 0;
        }
        fprintf(stderr, "duet chat: unknown option '%s'\n", a);
        chat_usage(stderr);
        return 2;
    }
    if (!gen_opts_finish("chat", o)) { chat_usage(stderr); return 2; }
    return -1;
}

/* What the next turn may extend: the rendered prompt plus the answer as generated, and the
 * tokens of both, unless a stop text was cut from the answer (its tokens are in the timeline,
 * not the text). Without memory the next turn tokenises afresh. */
static void remember_turn(const char *text, const gen_result *res, duet_collab *co, char **prev_text,
                          int32_t **prev, int *n_prev) {
    free(*prev_text);
    *prev_text = NULL;
    if (res->stop == DUET_GEN_EOS || res->stop == DUET_GEN_LIMIT) {
        size_t tl = strlen(text);
        if ((*prev_text = malloc(tl + res->len + 1))) {
            memcpy(*prev_text, text, tl);
            memcpy(*prev_text + tl, res->text, res->len + 1);
            const int32_t *all = duet_collab_tokens(co, n_prev);
            int32_t *p = realloc(*prev, (size_t)(*n_prev ? *n_prev : 1) * sizeof *p);
            if (p) { *prev = p; memcpy(*prev, all, (size_t)*n_prev * sizeof **prev); }
            else { free(*prev_text); *prev_text = NULL; }
        }
    }
}

int cmd_chat(int argc, char **argv) {
    gen_opts o;
    gen_opts_init(&o);
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0) goto out;
    rc = 1;

    duet_error err = {0};
    gen_models g = {0};
    history h = {0};
    char *line = NULL, *text = NULL, *prev_text = NULL;
    unsigned char *plain = NULL; /* which bytes of text are message content */
    size_t line_cap = 0;
    int32_t *prev = NULL;
    int n_prev = 0, n_fixed = 0, tty_in = isatty(0), turn = 0;
    const char *format;
    if (gen_load("chat", &o, &g, &err)) goto fail;
    if (duet_model_chat_format(g.base, o.chat_template, &format, &err)) goto fail;
    const char *stop = duet_chat_template_eot(format);
    if (o.system && !history_add(&h, "system", o.system, strlen(o.system))) goto oom;
    n_fixed = h.n;
    if (!o.quiet)
        fprintf(stderr, "duet chat: chat format %s; /exit quits, /reset starts over\n", format);
    for (;;) {
        if (tty_in) {
            fputs("\n> ", stdout);
            fflush(stdout);
        }
        int got = read_line(&line, &line_cap);
        if (got < 0) {
            fprintf(stderr, "duet chat: input line longer than %d bytes\n", DUET_CHAT_MAX_BYTES);
            goto done;
        }
        if (!got) break;
        if (!line[0]) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            history_truncate(&h, n_fixed);
            free(prev_text);
            prev_text = NULL;
            if (!o.quiet) fprintf(stderr, "duet chat: conversation reset\n");
            continue;
        }
        if (!history_add(&h, "user", line, strlen(line))) goto oom;
        free(text);
        int n_tok = 0;
        int32_t *toks = NULL;
        double t0 = duet_time_s();
        free(plain);
        plain = NULL;
        if (!(text = chat_render_alloc(g.base, o.chat_template, h.m, h.n, &plain, &err)) ||
            !(toks = turn_tokens(g.base, text, plain, prev_text, prev, n_prev, &n_tok, &err)) ||
            (o.verbose_prompt && (gen_print_prompt("chat", text, strlen(text), toks, n_tok), 0)) ||
            duet_collab_start(g.co, toks, n_tok, &err)) {
            /* this message cannot be answered (e.g. the context is full): say so, keep going */
            fprintf(stderr, "duet chat: %s%s\n", err.msg,
                    strstr(err.msg, "context") ? " (/reset starts over)" : "");
            free(toks);
            history_truncate(&h, h.n - 1);
            continue;
        }
        double t_prompt = duet_time_s() - t0;
        long ev_prompt = duet_collab_get_stats(g.co)->base_evaluated;
        gen_result res;
        int drc = gen_decode(&o, &g, stop, NULL, &res, &err);
        free(toks);
        printf("\n");
        fflush(stdout);
        if (drc) { gen_result_free(&res); goto fail; }
        turn++;
        if (!history_add(&h, "assistant", res.text, res.len)) { gen_result_free(&res); goto oom; }
        remember_turn(text, &res, g.co, &prev_text, &prev, &n_prev);
        if (!o.quiet)
            fprintf(stderr, "duet chat: turn %d: prompt %d tokens (%ld evaluated, %ld from the "
                            "cache) in %.3fs; answer %d tokens in %.3fs (%.2f tok/s)\n", turn,
                    n_tok, ev_prompt, n_tok - ev_prompt, t_prompt, res.n_gen, res.t_gen,
                    res.n_gen / (res.t_gen > 0 ? res.t_gen : 1e-9));
        gen_result_free(&res);
    }
    if (!o.quiet && g.expert) {
        const duet_collab_stats *st = duet_collab_get_stats(g.co);
        fprintf(stderr, "duet chat: last answer: deferred %d of %d tokens, expert calls %d\n",
                st->n_deferred, st->n_generated, st->expert_calls);
    }
    rc = 0;
    goto done;
oom:
    snprintf(err.msg, sizeof err.msg, "out of memory");
fail:
    fprintf(stderr, "duet chat: %s\n", err.msg);
done:
    history_truncate(&h, 0);
    free(h.m);
    free(line);
    free(text);
    free(plain);
    free(prev_text);
    free(prev);
    gen_free(&g);
out:
    gen_opts_free(&o);
    return rc;
}
