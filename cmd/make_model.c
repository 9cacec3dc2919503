/* make_model.c: `duet make-model`: random-weight GGUFs for fixtures and benchmarks. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet make-model [--arch llama|qwen2|qwen3|phi3|gemma2] --n-embd N "
               "--n-layer N --n-head N [--n-head-kv N] --n-ff N (--n-vocab N | --vocab-from V.gguf) "
               "[--n-ctx N] "
               "[--head-dim N] [--n-rot N] [--sliding-window N] [--attn-softcap X] "
               "[--final-softcap X] [--weight-std X] [--longrope] [--type f32|f16|bf16|q8_0|q4_0|q4_k|q5_k|q6_k|q4_k_m|q5_k_m] [--output-type T] [--tied] "
               "[--seed S] -o OUT.gguf\n");
}

int cmd_make_model(int argc, char **argv) {
    duet_make_model_params p = {.arch = "llama", .n_ctx = 2048, .type = DUET_TYPE_F32, .output_type = -1};
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--tied")) { p.tied = 1; continue; }
        if (!strcmp(a, "--longrope")) { p.longrope = 1; continue; }
        if (!(v = arg_value("make-model", argc, argv, &i))) return 2;
        int *ip = !strcmp(a, "--n-embd") ? &p.n_embd : !strcmp(a, "--n-layer") ? &p.n_layer
                : !strcmp(a, "--n-head") ? &p.n_head : !strcmp(a, "--n-head-kv") ? &p.n_head_kv
                : !strcmp(a, "--n-ff") ? &p.n_ff : !strcmp(a, "--n-vocab") ? &p.n_vocab
                : !strcmp(a, "--n-ctx") ? &p.n_ctx : !strcmp(a, "--head-dim") ? &p.head_dim
                : !strcmp(a, "--n-rot") ? &p.n_rot : !strcmp(a, "--sliding-window") ? &p.n_swa
                : NULL;
        float *fp = !strcmp(a, "--attn-softcap") ? &p.attn_softcap
                  : !strcmp(a, "--final-softcap") ? &p.final_softcap
                  : !strcmp(a, "--weight-std") ? &p.weight_std : NULL;
        if (ip) {
            if (!arg_int("make-model", a, v, 1, 1 << 24, ip)) return 2;
        } else if (fp) {
            if (!arg_float("make-model", a, v, 1e-6, 1e6, fp)) return 2;
        } else if (!strcmp(a, "--type") || !strcmp(a, "--output-type")) {
            int t = duet_type_from_name(v), mix = a[2] == 't' ? duet_type_mix_from_name(v) : -1;
            if (mix > 0) {
                p.mix = mix;
                continue;
            }
            if (t < 0) {
                fprintf(stderr, "duet make-model: %s '%s' is not a known type\n", a, v);
                return 2;
            }
            *(a[2] == 't' ? &p.type : &p.output_type) = t;
        } else if (!strcmp(a, "--seed") || !strcmp(a, "-s")) {
            if (!arg_u64("make-model", a, v, &p.seed)) return 2;
        } else if (!strcmp(a, "--arch")) p.arch = v;
        else if (!strcmp(a, "--vocab-from")) p.vocab_from = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else {
            fprintf(stderr, "duet make-model: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!p.n_head_kv) p.n_head_kv = p.n_head;
    if (!out || !p.n_embd || !p.n_layer || !p.n_head || !p.n_ff ||
        (!p.n_vocab && !p.vocab_from)) {
        fprintf(stderr, "duet make-model: need --n-embd, --n-layer, --n-head, --n-ff, --n-vocab "
                        "(or --vocab-from) and -o\n");
        usage(stderr);
        return 2;
    }
    duet_error err = {0};
    if (duet_make_model(&p, out, &err)) {
        /* the library's own messages already start "make-model: " (they name the call) */
        int own = !strncmp(err.msg, "make-model: ", 12);
        fprintf(stderr, "duet %s%s\n", own ? "" : "make-model: ", err.msg);
        return 1;
    }
    return 0;
}
