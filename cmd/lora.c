/* lora.c: `duet lora merge`: bake LoRA adapters into a model file (llama.cpp's export-lora). */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet lora merge -m BASE.gguf (--lora FILE | --lora-scaled FILE SCALE)... "
               "[--type f32|f16|bf16|q8_0|q4_0|q4_k|q5_k|q6_k] -o OUT.gguf\n"
               "  Writes BASE with the adapters baked in: each adapted matrix becomes\n"
               "  W + scale * alpha / r * B A, stored in --type (default: the matrix's own type);\n"
               "  every other tensor and all metadata are copied unchanged.\n");
}

int cmd_lora(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "merge")) {
        usage(argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? stdout : stderr);
        return argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? 0 : 2;
    }
    const char *base = NULL, *out = NULL;
    int type = -1;
    lora_opts lo = {0};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        int t = lora_opts_parse("lora merge", &lo, argc, argv, &i);
        if (t < 0) return 2;
        if (t) continue;
        if (!(v = arg_value("lora merge", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) base = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--type")) {
            if ((type = duet_type_from_name(v)) < 0) {
                fprintf(stderr, "duet lora merge: --type '%s' is not a type duet writes\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "duet lora merge: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!base || !out || !lo.n[0] || lo.n[1]) {
        fprintf(stderr, "duet lora merge: %s\n", lo.n[1] ? "--expert-lora does not apply here"
                : "-m BASE, at least one --lora and -o OUT are required");
        return 2;
    }
    duet_error err = {0};
    if (duet_lora_merge(base, lo.path[0], lo.scale[0], lo.n[0], type, out, &err)) {
        fprintf(stderr, "duet lora merge: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "duet lora merge: wrote %s (%d adapter%s)\n", out, lo.n[0], lo.n[0] > 1 ? "s" : "");
    return 0;
}
