/* head.c: `duet head init --base MODEL -o HEAD.gguf [--threshold ETA]`: the untrained
 * deferral head (u = mean of the base's output-matrix rows), so the Co-LLM pipeline runs
 * before training. (`duet head train` comes with the switch-learning work.) */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet head init --base MODEL -o HEAD.gguf [--threshold ETA]\n");
}

int cmd_head(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "init")) {
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
            usage(stdout);
            return 0;
        }
        usage(stderr);
        return 2;
    }
    const char *base_path = NULL, *out = NULL;
    float eta = -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!(v = arg_value("head", argc, argv, &i))) return 2;
        if (!strcmp(a, "--base") || !strcmp(a, "-m")) base_path = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--threshold")) { if (!arg_float("head", a, v, 0, 1, &eta)) return 2; }
        else {
            fprintf(stderr, "duet head: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!base_path || !out) { usage(stderr); return 2; }
    duet_error err = {0};
    duet_model *m = NULL;
    duet_head *h = NULL;
    duet_model_params mp = {.n_threads = 1, .use_mmap = 1};
    int rc = duet_model_load(base_path, &mp, &m, &err);
    if (!rc) rc = duet_head_init(m, &h, &err);
    if (!rc) {
        if (eta >= 0) duet_head_set_threshold(h, eta);
        rc = duet_head_save(h, out, &err);
    }
    if (rc) fprintf(stderr, "duet head: %s\n", err.msg);
    else fprintf(stderr, "duet head: wrote %s (n_embd %d)\n", out, duet_head_n_embd(h));
    duet_head_free(h);
    duet_model_free(m);
    return rc ? 1 : 0;
}
