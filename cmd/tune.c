/* tune.c: `duet tune`: choose the collm threshold the paper's way (docs/method.md section 6) on a
 * validation split: base-only calibration pass, candidate eta per target deferral portion,
 * one collm evaluation per candidate, keep the best. Writes OUTPREFIX.csv/.json/.svg and
 * stores the chosen eta in the head file. The work is the library's (duet_tune_* in duet.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: duet tune -m BASE --expert E --head H --task gsm8k|math|nll --data VALFILE\n"
            "                 -o OUTPREFIX [options]\n"
            "  -m, --model FILE     base model (GGUF)\n"
            "  --expert FILE        expert model\n"
            "  --head FILE          deferral head; the chosen threshold is stored in it\n"
            "  --task T             gsm8k, math (accuracy) or nll (NLL per byte)\n"
            "  --data FILE          validation split: JSONL (gsm8k/math) or text (nll)\n"
            "  --protocol P         duet (default) or paper: the official Co-LLM prompts, -n 512, no\n"
            "                       stop string, its scorer, and its validation split of --data\n"
            "                       (GSM8K: 50 problems drawn after the 200 test ones; MATH: 2 per\n"
            "                       level and type)\n"
            "  --scoring S          paper or duet: the scorer the sweep maximises (default: the\n"
            "                       protocol's)\n"
            "  --split S            all, test or validation: the official split of --data (default:\n"
            "                       validation under --protocol paper, else all)\n"
            "  -o, --output PREFIX  writes PREFIX.csv, PREFIX.json and PREFIX.svg\n"
            "  --portions LIST      target deferral portions (default 0,0.1,...,0.9)\n"
            "  --limit N            first N examples (gsm8k/math) or bytes of text (nll)\n"
            "  --calib N            prompts of the base-only calibration pass (default 15)\n"
            "  -n, --max-tokens N   new tokens per answer (default 256; paper: 512)\n"
            "  --stop STR           stop string (repeatable; default \"\\n\\nQuestion:\"; paper: none)\n"
            "  -c, --ctx-size N     context (default: min of the models' training contexts)\n"
            "  -t, --threads N      threads per model (default: all cores)\n"
            "  -np, --parallel N    problems decoded together, their steps batched (default 8;\n"
            "                       1: one at a time); every result but tok/s is the same for any N\n"
            "  --no-store           do not write the threshold into the head file\n"
            "  --quiet              no progress on stderr\n");
    lora_opts_usage(f);
}

int cmd_tune(int argc, char **argv) {
    const char *base_path = NULL, *expert_path = NULL, *head_path = NULL, *data = NULL;
    const char *prefix = NULL, *stops[16];
    int task = -1, n_threads = 0, quiet = 0, n_stops = 0, n_portions = 0, store = 1;
    double portions[DUET_TUNE_MAX_POINTS];
    duet_eval_params ep = {0};
    lora_opts lora = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!strcmp(a, "--no-store")) { store = 0; continue; }
        int lt = lora_opts_parse("tune", &lora, argc, argv, &i);
        if (lt < 0) return 2;
        if (lt) continue;
        if (!(v = arg_value("tune", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) base_path = v;
        else if (!strcmp(a, "--expert")) expert_path = v;
        else if (!strcmp(a, "--head")) head_path = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) prefix = v;
        else if (!strcmp(a, "--task")) {
            /* alpacaeval has no value without a judge: nothing to tune on */
            if ((task = duet_eval_task_from_name(v)) < 0 || task == DUET_EVAL_TASK_ALPACAEVAL) {
                fprintf(stderr, "duet tune: --task '%s' is not gsm8k, math, bioasq or nll\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--protocol") || !strcmp(a, "--scoring") || !strcmp(a, "--split")) {
            if (cmd_eval_protocol_arg("tune", a, v, &ep)) return 2;
        } else if (!strcmp(a, "--portions")) {
            if (!(n_portions = cmd_eval_number_list("tune", a, v, 0, 1, portions, DUET_TUNE_MAX_POINTS))) return 2;
        } else if (!strcmp(a, "--limit")) {
            if (!arg_int("tune", a, v, 1, 1 << 30, &ep.limit)) return 2;
        } else if (!strcmp(a, "--calib")) {
            if (!arg_int("tune", a, v, 1, 1 << 20, &ep.n_calib)) return 2;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            if (!arg_int("tune", a, v, 1, 1 << 20, &ep.max_tokens)) return 2;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!arg_int("tune", a, v, 8, 1 << 24, &ep.n_ctx)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!arg_int("tune", a, v, 1, 256, &n_threads)) return 2;
        } else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) {
            if (!arg_int("tune", a, v, 1, 256, &ep.parallel)) return 2;
        } else if (!strcmp(a, "--stop")) {
            if (n_stops == 16) { fprintf(stderr, "duet tune: at most 16 --stop strings\n"); return 2; }
            stops[n_stops++] = v;
        } else {
            fprintf(stderr, "duet tune: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!base_path || !expert_path || !head_path || !data || !prefix || task < 0) {
        fprintf(stderr, "duet tune: -m, --expert, --head, --task, --data and -o are required\n");
        usage(stderr);
        return 2;
    }
    ep.task = task;
    /* the threshold is chosen on the validation problems, never on the test ones */
    if (ep.protocol == DUET_EVAL_PROTOCOL_PAPER && ep.split == DUET_EVAL_SPLIT_AUTO && task != DUET_EVAL_TASK_NLL)
        ep.split = DUET_EVAL_SPLIT_VALIDATION;
    if (n_stops) { ep.stops = stops; ep.n_stops = n_stops; }
    ep.ud = cmd_eval_progress_new(quiet);
    ep.progress = ep.ud ? cmd_eval_progress : NULL;

    duet_model *base = NULL, *expert = NULL;
    duet_head *head = NULL;
    duet_eval *ctx = NULL;
    duet_tune_result *tr = calloc(1, sizeof *tr);
    duet_error err = {0};
    int rc = 1;
    if (!tr) { snprintf(err.msg, sizeof err.msg, "out of memory"); goto fail; }
    if (cmd_eval_load("tune", base_path, expert_path, NULL, head_path, n_threads, &base, &expert, NULL, &head))
        goto done;
    /* before duet_eval_open, which makes the sessions */
    if (lora_attach(&lora, 0, base, &err) || lora_attach(&lora, 1, expert, &err) ||
        duet_eval_open(base, expert, NULL, head, data, &ep, &ctx, &err) ||
        duet_tune_run(ctx, n_portions ? portions : NULL, n_portions, tr, &err) ||
        duet_tune_save(tr, prefix, store ? head : NULL, head_path, &err))
        goto fail;
    printf("duet tune: task %s, %s; %d calibration tokens\n", duet_eval_task_name(task), data, tr->n_calib_tokens);
    printf("%8s %12s %9s %12s %12s %10s\n", "portion", "eta", "deferral",
           task == DUET_EVAL_TASK_NLL ? "nll/byte" : "accuracy", "expert calls", "tok/s");
    for (int i = 0; i < tr->n_points; i++) {
        const duet_tune_point *p = &tr->points[i];
        printf("%8.2f %12.6g %8.1f%% %12.5f %12ld %10.1f%s\n", p->portion, p->eta, 100 * p->res.deferral_frequency,
               p->res.value, p->res.expert_calls, p->res.tokens_per_second, i == tr->best ? "  <- chosen" : "");
    }
    const duet_tune_point *b = &tr->points[tr->best];
    printf("chosen eta %.6g (portion %.2f): %s %.5f at deferral %.1f%%; wrote %s.csv, %s.json, %s.svg%s%s\n",
           b->eta, b->portion, duet_eval_metric_name(task), b->res.value, 100 * b->res.deferral_frequency, prefix,
           prefix, prefix, store ? "; threshold stored in " : "", store ? head_path : "");
    rc = 0;
    goto done;
fail:
    if (ep.ud) cli_progress_end(ep.ud); /* the message starts on a line of its own */
    fprintf(stderr, "duet tune: %s\n", err.msg);
done:
    duet_eval_close(ctx);
    free(tr);
    free(ep.ud);
    duet_head_free(head);
    duet_model_free(expert);
    duet_model_free(base);
    lora_opts_free(&lora);
    return rc;
}
