/* duet.c: the CLI entry point: one binary, one subcommand per file under cmd/. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} k_cmds[] = {
    {"run", cmd_run, "generate text: duet run -m MODEL -p PROMPT -n N"},
    {"chat", cmd_chat, "interactive chat: duet chat -m BASE [--expert E --head H]"},
    {"info", cmd_info, "print a GGUF file's metadata and tensors: duet info FILE"},
    {"tokenize", cmd_tokenize, "tokenize text: duet tokenize -m MODEL -p TEXT [--ids]"},
    {"convert", cmd_convert, "import llama2.c checkpoints: duet convert --llama2c CKPT ..."},
    {"perplexity", cmd_perplexity, "perplexity of a text file: duet perplexity -m MODEL -f FILE"},
    {"make-model", cmd_make_model, "write a random-weight GGUF: duet make-model ... -o OUT"},
    {"head", cmd_head, "deferral head: duet head init | train (see duet head --help)"},
    {"score", cmd_score, "teacher-forced scores of a dataset: duet score -m MODEL -d DATA -o OUT"},
    {"train", cmd_train, "train models: duet train lm | collm (see duet train --help)"},
    {"eval", cmd_eval, "policies side by side: duet eval -m BASE --expert E --task gsm8k|math|nll"},
    {"tune", cmd_tune, "choose the deferral threshold: duet tune -m BASE --expert E --head H ..."},
    {"data", cmd_data, "the official test/validation splits: duet data split --task gsm8k|math --data F"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server: duet serve -m BASE [--expert E] --port 8080"},
    {"lora", cmd_lora, "LoRA adapters: duet lora merge -m BASE --lora A -o OUT.gguf"},
    {"bench", cmd_bench, "prompt/generation speed: duet bench -m MODEL [-p 512] [-n 128]"},
};

static void usage(FILE *f) {
    fprintf(f, "duet %s: two language models, one answer (Co-LLM)\n\nusage: duet COMMAND [options]"
               "   (duet COMMAND --help for its options)\n\n", DUET_VERSION);
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        fprintf(f, "  %-11s %s\n", k_cmds[i].name, k_cmds[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("duet %s\n", DUET_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        if (!strcmp(argv[1], k_cmds[i].name)) return k_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "duet: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
