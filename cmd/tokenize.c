/* tokenize.c: `duet tokenize -m MODEL -p TEXT [--ids] [--no-bos] [--parse-special]`.
 * Default output: one line per token, "id -> 'piece'" (as llama-tokenize prints);
 * --ids: one list "[1, 450, 1294]". Works on vocabulary-only GGUF files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet tokenize -m MODEL (-p TEXT | -f FILE) [--ids] [--no-bos] [--parse-special]\n");
}

int cmd_tokenize(int argc, char **argv) {
    const char *model_path = NULL, *text = NULL, *file = NULL;
    int ids = 0, no_bos = 0, parse_special = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--ids")) ids = 1;
        else if (!strcmp(a, "--no-bos")) no_bos = 1;
        else if (!strcmp(a, "--parse-special")) parse_special = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "-p") ||
                 !strcmp(a, "--prompt") || !strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(v = arg_value("tokenize", argc, argv, &i))) return 2;
            if (a[1] == 'm' || a[2] == 'm') model_path = v;
            else if (a[1] == 'p' || a[2] == 'p') text = v;
            else file = v;
        } else {
            fprintf(stderr, "duet tokenize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path || (!text == !file)) {
        fprintf(stderr, "duet tokenize: need -m MODEL and one of -p TEXT / -f FILE\n");
        usage(stderr);
        return 2;
    }
    size_t len = 0;
    char *buf = NULL;
    if (file) {
        if (!(buf = read_file("tokenize", file, &len))) return 1;
        text = buf;
    } else {
        len = strlen(text);
    }
    duet_error err = {0};
    duet_model *m = NULL;
    duet_model_params mp = {.vocab_only = 1};
    int32_t *toks = NULL;
    int rc = 1;
    if (duet_model_load(model_path, &mp, &m, &err)) goto fail;
    int n = duet_tokenize(m, text, len, !no_bos, parse_special, NULL, 0, &err);
    if (n < 0) goto fail;
    toks = malloc((size_t)(n + 1) * sizeof *toks);
    if (!toks) { snprintf(err.msg, sizeof err.msg, "out of memory"); goto fail; }
    n = duet_tokenize(m, text, len, !no_bos, parse_special, toks, n, &err);
    if (n < 0) goto fail;
    if (ids) {
        putchar('[');
        for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", toks[i]);
        printf("]\n");
    } else {
        char piece[512];
        for (int i = 0; i < n; i++) {
            int k = duet_token_to_piece(m, -1, toks[i], piece, sizeof piece - 1);
            if (k < 0) k = 0;
            if (k > (int)sizeof piece - 1) k = (int)sizeof piece - 1;
            const char *raw = duet_token_text(m, toks[i]);
            printf("%6d -> '%.*s'%s%s\n", toks[i], k, piece, k == 0 && raw ? "  " : "",
                   k == 0 && raw ? raw : "");
        }
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "duet tokenize: %s\n", err.msg);
done:
    free(toks);
    free(buf);
    duet_model_free(m);
    return rc;
}
