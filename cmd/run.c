/* run.c: `duet run`: generate text with one model, or with a base and an expert together
 * (Co-LLM). Flags follow llama.cpp's llama-cli where one exists. stdout: the prompt, then the
 * continuation (with --chat: the answer only); stderr: load info, timings and the
 * collaboration summary. All decoding goes through the library's collab API (a single model is
 * the "base" policy without expert), in the loop cmd/util.c shares with `duet chat`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void run_usage(FILE *f) {
    fputs("usage: duet run -m MODEL [-p PROMPT | -f FILE] [-n N] [options]\n"
          "  -p, --prompt TEXT    prompt (default empty: start from BOS)\n"
          "  -f, --file FILE      read the prompt from a file\n"
          "  --chat               one chat turn: the prompt is the user's message, rendered with\n"
          "                       the chat format (see chat options); prints the answer only\n"
          "  --no-bos             do not add BOS\n"
          "  --parse-special      text spelling control tokens (\"<s>\") becomes those tokens\n"
          "                       (always on with --chat)\n"
          "  --trace FILE         one JSON line per token: id, text, source, p_defer, top tokens\n",
          f);
    gen_opts_usage(f);
}

int cmd_run(int argc, char **argv) {
    const char *prompt = "", *prompt_file = NULL, *trace_path = NULL;
    int no_bos = 0, parse_special = 0, chat = 0;
    gen_opts o;
    gen_opts_init(&o);
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int taken = gen_opts_parse("run", &o, argc, argv, &i);
        if (taken < 0) goto out;
        if (taken) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { run_usage(stdout); rc = 0; goto out; }
        else if (!strcmp(a, "--no-bos")) no_bos = 1;
        else if (!strcmp(a, "--parse-special")) parse_special = 1;
        else if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt") || !strcmp(a, "-f") ||
                 !strcmp(a, "--file") || !strcmp(a, "--trace")) {
            const char *v = arg_value("run", argc, argv, &i);
            if (!v) goto out;
            if (!strcmp(a, "--trace")) trace_path = v;
            else if (a[1] == 'p' || a[2] == 'p') prompt = v;
            else prompt_file = v;
        } else {
            fprintf(stderr, "duet run: unknown option '%s'\n", a);
            run_usage(stderr);
            goto out;
        }
    }
    if (!gen_opts_finish("run", &o)) { run_usage(stderr); goto out; }
    if (!chat && (o.system || o.chat_template)) {
        fprintf(stderr, "duet run: --system and --chat-template need --chat\n");
        goto out;
    }
    o.cp.details = trace_path != NULL;
    rc = 1;
    char *file_text = NULL, *rendered = NULL;
    unsigned char *plain = NULL; /* --chat: which prompt bytes are the user's text */
    size_t prompt_len = strlen(prompt);
    if (prompt_file) {
        if (!(file_text = read_file("run", prompt_file, &prompt_len))) goto out;
        prompt = file_text;
    }

    duet_error err = {0};
    gen_models g = {0};
    gen_result res = {0};
    duet_atomic trace = {0};
    int32_t *toks = NULL;
    const char *stop = NULL;
    if (gen_load("run", &o, &g, &err)) goto fail;
    if (chat) { /* one turn: [system,] user, then the assistant's opening */
        const char *format;
        if (duet_model_chat_format(g.base, o.chat_template, &format, &err)) goto fail;
        duet_chat_message msgs[2] = {{"system", o.system}, {"user", prompt}};
        if (!(rendered = chat_render_alloc(g.base, o.chat_template, o.system ? msgs : msgs + 1,
                                           o.system ? 2 : 1, &plain, &err)))
            goto fail;
        prompt = rendered;
        prompt_len = strlen(rendered);
        parse_special = 1;
        stop = duet_chat_template_eot(format);
        if (!o.quiet) fprintf(stderr, "duet run: chat format %s\n", format);
    }
    int n_tok;
    if (!(toks = tokenize_alloc(g.base, prompt, prompt_len, !no_bos, parse_special, plain, &n_tok,
                                &err)))
        goto fail;
    if (n_tok == 0) {
        snprintf(err.msg, sizeof err.msg, "empty prompt and the model has no BOS token");
        goto fail;
    }
    if (o.verbose_prompt) gen_print_prompt("run", prompt, prompt_len, toks, n_tok);
    if (trace_path) { /* written to a temp file, renamed at the end: no partial output */
        if (duet_atomic_open(&trace, trace_path, &err)) goto fail;
    }
    if (!o.quiet) fprintf(stderr, "duet run: prompt %d tokens\n", n_tok);
    if (!chat) {
        fwrite(prompt, 1, prompt_len, stdout);
        fflush(stdout);
    }
    if (duet_collab_start(g.co, toks, n_tok, &err)) goto fail;
    double t_prompt = duet_collab_get_stats(g.co)->t_total;
    if (gen_decode(&o, &g, stop, trace.f, &res, &err)) goto fail;
    printf("\n");
    fflush(stdout);
    if (trace.f && duet_atomic_commit(&trace, &err)) goto fail;
    if (!o.quiet) gen_print_stats("run", &g, n_tok, t_prompt, &res);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "duet run: %s\n", err.msg);
done:
    duet_atomic_abort(&trace);
    gen_result_free(&res);
    free(toks);
    free(rendered);
    free(plain);
    free(file_text);
    gen_free(&g);
out:
    gen_opts_free(&o);
    return rc;
}
