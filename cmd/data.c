/* data.c: `duet data split`: the official Co-LLM test and validation splits of a GSM8K or
 * MATH JSONL file, written as JSONL (each record as the file has it, in the split's order),
 * so that a user can see exactly which problems `duet eval/tune --protocol paper` use. The
 * work is the library's (duet_eval_split_save). */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: duet data split --task gsm8k|math --data FILE [--out-test F] [--out-val F]\n"
            "  --task T         gsm8k: random.seed(42); 200 test problems drawn with Python's\n"
            "                   random.sample, then 50 validation problems from the rest (a file\n"
            "                   of at most 200: all are test, 10 drawn for validation);\n"
            "                   math: per (level, type) group, in sorted order, 27 problems drawn\n"
            "                   with numpy's RandomState(42) as pandas' groupby().sample does:\n"
            "                   the first 25 are test, the last 2 validation\n"
            "  --data FILE      JSONL: {\"question\",\"answer\"} (gsm8k) or {\"problem\",\"level\",\n"
            "                   \"type\",...} (math), in the public files' order\n"
            "  --out-test F     write the test split to F (default FILE.test.jsonl)\n"
            "  --out-val F      write the validation split to F (default FILE.validation.jsonl)\n"
            "Files are written atomically (a temporary file, then rename).\n");
}

int cmd_data(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "split")) {
        fprintf(stderr, "duet data: unknown subcommand '%s' (only: split)\n", argv[1]);
        usage(stderr);
        return 2;
    }
    const char *data = NULL, *out_test = NULL, *out_val = NULL;
    int task = -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!(v = arg_value("data split", argc, argv, &i))) return 2;
        if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out-test")) out_test = v;
        else if (!strcmp(a, "--out-val")) out_val = v;
        else if (!strcmp(a, "--task")) {
            task = duet_eval_task_from_name(v);
            if (task != DUET_EVAL_TASK_GSM8K && task != DUET_EVAL_TASK_MATH) {
                fprintf(stderr, "duet data split: --task '%s' is not gsm8k or math\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "duet data split: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!data || task < 0) {
        fprintf(stderr, "duet data split: --task and --data are required\n");
        usage(stderr);
        return 2;
    }
    char test_path[4096], val_path[4096];
    snprintf(test_path, sizeof test_path, "%s", out_test ? out_test : "");
    snprintf(val_path, sizeof val_path, "%s", out_val ? out_val : "");
    if (!out_test) snprintf(test_path, sizeof test_path, "%s.test.jsonl", data);
    if (!out_val) snprintf(val_path, sizeof val_path, "%s.validation.jsonl", data);
    duet_error err = {0};
    int n_test = 0, n_val = 0;
    if (duet_eval_split_save(task, data, DUET_EVAL_SPLIT_TEST, test_path, &n_test, &err) ||
        duet_eval_split_save(task, data, DUET_EVAL_SPLIT_VALIDATION, val_path, &n_val, &err)) {
        fprintf(stderr, "duet data split: %s\n", err.msg);
        return 1;
    }
    printf("duet data split: %s: %d test problems -> %s, %d validation problems -> %s\n", data, n_test, test_path,
           n_val, val_path);
    return 0;
}
