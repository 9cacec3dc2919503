/* run.c: `duet run`: generate text with one model (flags follow llama.cpp's llama-cli).
 * stdout: the prompt, then the continuation; stderr: load info and timings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void run_usage(FILE *f) {
    fprintf(f,
            "usage: duet run -m MODEL [-p PROMPT | -f FILE] [-n N] [options]\n"
            "  -m, --model FILE     GGUF model\n"
            "  -p, --prompt TEXT    prompt (default empty: start from BOS)\n"
            "  -f, --file FILE      read the prompt from a file\n"
            "  -n, --n-predict N    new tokens to generate (-1: until EOS or context full; default -1)\n"
            "  -c, --ctx-size N     context size (default min(training context, 4096))\n"
            "  -t, --threads N      threads (default: all cores)\n"
            "  --temp T             temperature (default 0.8; 0 = greedy)\n"
            "  --top-k K            top-k (default 40; 0 = off)\n"
            "  --top-p P            top-p (default 0.95; 1 = off)\n"
            "  --min-p P            min-p (default 0.05; 0 = off)\n"
            "  -s, --seed S         RNG seed (default: random)\n"
            "  --no-bos             do not add BOS\n"
            "  --parse-special      text spelling control tokens (\"<s>\") becomes those tokens\n"
            "  --mmap               compute from the file mapping (faster start, slower generation)\n"
            "  --quiet              no timings on stderr\n");
}

int cmd_run(int argc, char **argv) {
    const char *model_path = NULL, *prompt = "", *prompt_file = NULL;
    int n_predict = -1, n_ctx = 0, n_threads = 0, no_bos = 0, parse_special = 0, use_mmap = 0;
    int quiet = 0;
    duet_sampler_params sp;
    duet_sampler_defaults(&sp);
    sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VAL() do { if (!(v = arg_value("run", argc, argv, &i))) return 2; } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { run_usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); model_path = v; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { VAL(); prompt = v; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { VAL(); prompt_file = v; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            VAL(); if (!arg_int("run", a, v, -1, 1 << 24, &n_predict)) return 2;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            VAL(); if (!arg_int("run", a, v, 0, 1 << 24, &n_ctx)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            VAL(); if (!arg_int("run", a, v, 1, 256, &n_threads)) return 2;
        } else if (!strcmp(a, "--temp")) {
            VAL(); if (!arg_float("run", a, v, 0, 1e6, &sp.temp)) return 2;
        } else if (!strcmp(a, "--top-k")) {
            VAL(); if (!arg_int("run", a, v, 0, 1 << 30, &sp.top_k)) return 2;
        } else if (!strcmp(a, "--top-p")) {
            VAL(); if (!arg_float("run", a, v, 0, 1, &sp.top_p)) return 2;
        } else if (!strcmp(a, "--min-p")) {
            VAL(); if (!arg_float("run", a, v, 0, 1, &sp.min_p)) return 2;
        } else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
            VAL(); if (!arg_u64("run", a, v, &sp.seed)) return 2;
        } else if (!strcmp(a, "--no-bos")) no_bos = 1;
        else if (!strcmp(a, "--parse-special")) parse_special = 1;
        else if (!strcmp(a, "--mmap")) use_mmap = 1;
        else if (!strcmp(a, "--no-mmap")) use_mmap = 0;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else {
            fprintf(stderr, "duet run: unknown option '%s'\n", a);
            run_usage(stderr);
            return 2;
        }
#undef VAL
    }
    if (!model_path) {
        fprintf(stderr, "duet run: -m MODEL is required\n");
        run_usage(stderr);
        return 2;
    }
    char *file_text = NULL;
    size_t prompt_len = strlen(prompt);
    if (prompt_file) {
        if (!(file_text = read_file("run", prompt_file, &prompt_len))) return 1;
        prompt = file_text;
    }

    duet_error err = {0};
    duet_model *model = NULL;
    duet_session *sess = NULL;
    duet_sampler *smp = NULL;
    int32_t *toks = NULL;
    int rc = 1;
    double t0 = duet_time_s();
    duet_model_params mp = {.n_threads = n_threads, .use_mmap = use_mmap};
    if (duet_model_load(model_path, &mp, &model, &err)) goto fail;
    double t_load = duet_time_s() - t0;
    const duet_hparams *hp = duet_model_hparams(model);
    duet_session_params spar = {.n_ctx = n_ctx};
    if (duet_session_new(model, &spar, &sess, &err)) goto fail;
    if (duet_sampler_new(&sp, &smp, &err)) goto fail;
    int ctx = duet_session_n_ctx(sess);
    int n_tok = duet_tokenize(model, prompt, prompt_len, !no_bos, parse_special, NULL, 0, &err);
    if (n_tok < 0) goto fail;
    toks = malloc((size_t)(n_tok + 1) * sizeof *toks);
    if (!toks) { snprintf(err.msg, sizeof err.msg, "out of memory"); goto fail; }
    n_tok = duet_tokenize(model, prompt, prompt_len, !no_bos, parse_special, toks, n_tok, &err);
    if (n_tok < 0) goto fail;
    if (n_tok == 0) { /* no BOS in this vocabulary and an empty prompt: nothing to condition on */
        snprintf(err.msg, sizeof err.msg, "empty prompt and the model has no BOS token");
        goto fail;
    }
    if (n_tok >= ctx) {
        snprintf(err.msg, sizeof err.msg, "prompt is %d tokens, context is %d (use -c)", n_tok, ctx);
        goto fail;
    }
    if (!quiet)
        fprintf(stderr, "duet run: %s (%s, %d layers, n_embd %d, vocab %d) loaded in %.2fs; "
                        "prompt %d tokens, context %d\n",
                hp->name, hp->arch, hp->n_layer, hp->n_embd, hp->n_vocab, t_load, n_tok, ctx);
    fwrite(prompt, 1, prompt_len, stdout);
    fflush(stdout);
    int tty = isatty(1);

    double tp0 = duet_time_s();
    if (duet_session_eval(sess, toks, n_tok, 0, &err)) goto fail;
    double t_prompt = duet_time_s() - tp0;
    int32_t prev = toks[n_tok - 1];
    int n_gen = 0;
    double tg0 = duet_time_s();
    char piece[256];
    while (n_predict < 0 || n_gen < n_predict) {
        int32_t next = duet_sampler_sample(smp, duet_session_logits(sess, -1), hp->n_vocab);
        if (duet_token_is_eog(model, next)) break;
        int len = duet_token_to_piece(model, prev, next, piece, sizeof piece);
        if (len > 0) {
            fwrite(piece, 1, (size_t)(len < (int)sizeof piece ? len : (int)sizeof piece), stdout);
            if (tty) fflush(stdout);
        }
        n_gen++;
        prev = next;
        if (n_predict >= 0 && n_gen == n_predict) break;
        if (duet_session_n_past(sess) >= ctx) {
            if (!quiet) fprintf(stderr, "\nduet run: context of %d tokens is full\n", ctx);
            break;
        }
        if (duet_session_eval(sess, &next, 1, 0, &err)) goto fail;
    }
    double t_gen = duet_time_s() - tg0;
    printf("\n");
    fflush(stdout);
    if (!quiet)
        fprintf(stderr, "duet run: prompt %d tokens in %.3fs (%.2f tok/s); generated %d tokens "
                        "in %.3fs (%.2f tok/s)\n", n_tok, t_prompt, n_tok / (t_prompt > 0 ? t_prompt : 1e-9),
                n_gen, t_gen, n_gen / (t_gen > 0 ? t_gen : 1e-9));
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "duet run: %s\n", err.msg);
done:
    free(toks);
    free(file_text);
    duet_sampler_free(smp);
    duet_session_free(sess);
    duet_model_free(model);
    return rc;
}
