/* convert.c: `duet convert --llama2c CKPT.bin (--tokenizer TOK.bin | --vocab FILE.vocab
 * [--byte-tokens]) -o OUT.gguf`. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet convert --llama2c CKPT.bin (--tokenizer TOK.bin | --vocab FILE.vocab "
               "[--byte-tokens]) [--name NAME] -o OUT.gguf\n"
               "  --tokenizer    llama2.c tokenizer.bin (score, length, bytes per token)\n"
               "  --vocab        sentencepiece .vocab (piece TAB score per line)\n"
               "  --byte-tokens  insert the 256 byte tokens <0x00>..<0xFF> after the 3 specials\n");
}

int cmd_convert(int argc, char **argv) {
    duet_convert_params p = {0};
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--byte-tokens")) { p.byte_tokens = 1; continue; }
        if (!(v = arg_value("convert", argc, argv, &i))) return 2;
        if (!strcmp(a, "--llama2c")) p.checkpoint = v;
        else if (!strcmp(a, "--tokenizer")) p.tokenizer = v;
        else if (!strcmp(a, "--vocab")) p.vocab = v;
        else if (!strcmp(a, "--name")) p.name = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else {
            fprintf(stderr, "duet convert: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!p.checkpoint || !out || !p.tokenizer == !p.vocab) {
        fprintf(stderr, "duet convert: need --llama2c, -o, and exactly one of --tokenizer/--vocab\n");
        usage(stderr);
        return 2;
    }
    duet_error err = {0};
    if (duet_convert_llama2c(&p, out, &err)) {
        fprintf(stderr, "duet convert: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "duet convert: wrote %s\n", out);
    return 0;
}
