/* perplexity.c: `duet perplexity -m MODEL -f FILE [-c CTX]`: mean negative log-likelihood
 * per token and per byte, and perplexity, over a text file. The text is tokenised once and
 * cut into windows of the context size; each window starts with BOS (when the vocabulary
 * has one) and every text token is scored exactly once, so nats/byte = total NLL / bytes.
 * --llama-compat scores as llama-perplexity does instead (duet_text_perplexity_chunks:
 * chunks of the context, BOS replacing each chunk's first token, the second halves scored)
 * and prints its running "[i]ppl," line and its "Final estimate", so numbers compare. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet perplexity -m MODEL -f FILE [-c CTX] [-t THREADS] [-ctk TYPE] [-ctv TYPE]\n"
               "                       [--llama-compat] [--quiet]\n"
               "  -ctk, --cache-type-k TYPE, -ctv, --cache-type-v TYPE\n"
               "                   KV cache element types: f32 (default) or f16\n"
               "  --llama-compat   llama-perplexity's method: chunks of CTX tokens, BOS first in each,\n"
               "                   only each chunk's second half scored (needs 2 x CTX tokens)\n");
    lora_opts_usage(f);
}

static void show_progress(void *ud, int done, int total) {
    cli_progress_update(ud, "duet perplexity", "tok", done, total, NULL);
}

static void show_chunk(void *ud, int chunk, int n_chunks, double ppl) {
    printf("[%d]%.4f,", chunk + 1, ppl);
    fflush(stdout);
}

/* --llama-compat: llama-perplexity's output lines; 0, or 1 after the message. */
static int perplexity_chunks(duet_session *s, const char *text, size_t len, duet_error *err) {
    duet_chunk_ppl r;
    if (duet_text_perplexity_chunks(s, text, len, &r, show_chunk, NULL, err)) {
        fprintf(stderr, "duet perplexity: %s\n", err->msg);
        return 1;
    }
    printf("\nchunks %d of %d tokens, %d tokens scored of %d\n", r.n_chunks, duet_session_n_ctx(s),
           r.n_scored, r.n_tokens);
    printf("Final estimate: PPL = %.4f +/- %.5f\n", r.ppl, r.ppl_err);
    return 0;
}

int cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *file = NULL;
    int n_ctx = 0, n_threads = 0, quiet = 0, compat = 0, type_k = DUET_KV_F32, type_v = DUET_KV_F32;
    lora_opts lora = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!strcmp(a, "--llama-compat")) { compat = 1; continue; }
        int lt = lora_opts_parse("perplexity", &lora, argc, argv, &i);
        if (lt < 0) return 2;
        if (lt) continue;
        if (!(v = arg_value("perplexity", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = v;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!arg_int("perplexity", a, v, 2, 1 << 24, &n_ctx)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!arg_int("perplexity", a, v, 1, 256, &n_threads)) return 2;
        } else if (!strcmp(a, "-ctk") || !strcmp(a, "--cache-type-k")) {
            if (!arg_cache_type("perplexity", a, v, &type_k)) return 2;
        } else if (!strcmp(a, "-ctv") || !strcmp(a, "--cache-type-v")) {
            if (!arg_cache_type("perplexity", a, v, &type_v)) return 2;
        } else {
            fprintf(stderr, "duet perplexity: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path || !file) { usage(stderr); return 2; }
    size_t len;
    char *text = read_file("perplexity", file, &len);
    if (!text) return 1;
    duet_error err = {0};
    duet_model *m = NULL;
    duet_session *s = NULL;
    int rc = 1;
    duet_model_params mp = {.n_threads = n_threads};
    duet_session_params sp = {.n_ctx = n_ctx, .type_k = type_k, .type_v = type_v};
    if (lora.n[1]) {
        fprintf(stderr, "duet perplexity: --expert-lora does not apply (one model)\n");
        goto done;
    }
    if (duet_model_load(model_path, &mp, &m, &err) || lora_attach(&lora, 0, m, &err) ||
        duet_session_new(m, &sp, &s, &err))
        goto fail;
    if (compat) {
        rc = perplexity_chunks(s, text, len, &err);
        goto done;
    }
    cli_progress pr;
    cli_progress_init(&pr, quiet);
    duet_text_nll r;
    int failed = duet_text_score(s, text, len, &r, pr.show ? show_progress : NULL, &pr, &err);
    cli_progress_end(&pr);
    if (failed) goto fail;
    printf("tokens %d\nbytes %zu\nnll_per_token %.6f\nnll_per_byte %.6f\nperplexity %.6f\n",
           r.n_tokens, r.n_bytes, r.nll / r.n_tokens, r.nll / (double)r.n_bytes,
           exp(r.nll / r.n_tokens));
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "duet perplexity: %s\n", err.msg);
done:
    free(text);
    duet_session_free(s);
    duet_model_free(m);
    lora_opts_free(&lora);
    return rc;
}
