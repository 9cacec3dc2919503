/* perplexity.c: `duet perplexity -m MODEL -f FILE [-c CTX]`: mean negative log-likelihood
 * per token and per byte, and perplexity, over a text file. The text is tokenised once and
 * cut into windows of the context size; each window starts with BOS (when the vocabulary
 * has one) and every text token is scored exactly once, so nats/byte = total NLL / bytes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet perplexity -m MODEL -f FILE [-c CTX] [-t THREADS] [--quiet]\n");
}

static void show_progress(void *ud, int done, int total) {
    cli_progress_update(ud, "duet perplexity", "tok", done, total, NULL);
}

int cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *file = NULL;
    int n_ctx = 0, n_threads = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!(v = arg_value("perplexity", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = v;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!arg_int("perplexity", a, v, 2, 1 << 24, &n_ctx)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!arg_int("perplexity", a, v, 1, 256, &n_threads)) return 2;
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
    duet_session_params sp = {.n_ctx = n_ctx};
    if (duet_model_load(model_path, &mp, &m, &err) || duet_session_new(m, &sp, &s, &err)) goto fail;
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
    return rc;
}
