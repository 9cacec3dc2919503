/* eval.c: `duet eval`: policies side by side on a task: GSM8K / MATH exact match from greedy
 * collaborative generation, or per-byte NLL of a policy's hard routing on a text (teacher-
 * forced). stdout: a table, one row per policy (and target rate); --json FILE: the same as
 * {"results": [...]}, written atomically. stderr: progress on a terminal. The work is the
 * library's (duet_eval_* in duet.h); this file parses flags and prints. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

#define MAX_SPECS 128
#define MAX_RATES 32

static void usage(FILE *f) {
    fprintf(f,
            "usage: duet eval -m BASE [--expert E] [--head H] --task gsm8k|math|nll|bioasq|alpacaeval --data FILE\n"
            "                 [--policy P1,P2,...] [--defer-rate R1,R2,...] [options]\n"
            "  -m, --model FILE     base model (GGUF)\n"
            "  --expert FILE        expert model\n"
            "  --head FILE          deferral head of the base (collm, compose)\n"
            "  --anti FILE          third model for proxy tuning\n"
            "  --task T             gsm8k, math (accuracy of greedy answers), nll (NLL per byte),\n"
            "                       bioasq (the official BioASQ metrics; value: their average) or\n"
            "                       alpacaeval (outputs; a win rate with --judge-url)\n"
            "  --data FILE          JSONL ({\"question\",\"answer\"} / {\"problem\",\"answer\"}), text (nll),\n"
            "                       BioASQ JSON ({\"questions\": [...]}) or AlpacaEval JSON (a list of\n"
            "                       {\"instruction\", ...})\n"
            "  --shots FILE         bioasq: BioASQ JSON whose first 4 questions of each type are the\n"
            "                       in-context examples (default: none)\n"
            "  --judge-url URL      alpacaeval: an OpenAI-compatible server (e.g. duet serve) that\n"
            "                       judges each output against --reference, in both orders\n"
            "  --judge-model NAME   the judge's \"model\" (default \"judge\")\n"
            "  --judge-api-key K    the judge's Bearer token\n"
            "  --judge-timeout S    seconds per judge request (default 60)\n"
            "  --judge-one-order    judge each example once (the model's output first)\n"
            "  --reference FILE     alpacaeval: reference outputs (AlpacaEval JSON, same instructions\n"
            "                       in the same order)\n"
            "  --protocol P         duet (default: duet's prompt, -n 256, stop \"\\n\\nQuestion:\", lenient\n"
            "                       scorer, every problem) or paper (the official Co-LLM code's prompts,\n"
            "                       its test split of --data, -n 512, no stop string, its scorer)\n"
            "  --scoring S          paper or duet: the scorer behind value/accuracy (default: the\n"
            "                       protocol's); the JSON always carries both scorers' results\n"
            "  --split S            all, test or validation: the official split of --data (default:\n"
            "                       test under --protocol paper, else all); before --limit\n"
            "  --policy LIST        base, expert, collm, random, random_matched, uncertainty,\n"
            "                       confidence, compose, oracle (nll only), proxy, contrastive,\n"
            "                       cd, cd_v2 (these four not nll);\n"
            "                       default: base,expert (+ collm,random,random_matched with --head)\n"
            "                       random defers each token with probability 0.5 (the paper's\n"
            "                       baseline) or at each --defer-rate; random_matched at the rate\n"
            "                       collm deferred in the same run (needs collm)\n"
            "  --defer-rate LIST    target deferral rates: each thresholded policy (collm, compose,\n"
            "                       uncertainty, oracle) gets the threshold at that quantile of its\n"
            "                       score, random that rate; one row per rate\n"
            "  --threshold X        eta for collm/compose (default: the head's, else 0.5)\n"
            "  --entropy-threshold X  nats for uncertainty (default 2.0)\n"
            "  -n, --max-tokens N   new tokens per answer (default 256; paper: 512)\n"
            "  --limit N            first N examples (gsm8k/math) or bytes of text (nll)\n"
            "  --calib N            prompts of the base-only pass that calibrates rates (default 15)\n"
            "  --stop STR           stop string (repeatable; default \"\\n\\nQuestion:\"; paper: none)\n"
            "  -c, --ctx-size N     context (default: min of the models' training contexts)\n"
            "  -t, --threads N      threads per model (default: all cores)\n"
            "  -s, --seed S         seed of the random policy (default 0; problem i gets S + i)\n"
            "  -np, --parallel N    problems decoded together, their steps batched (default 8;\n"
            "                       1: one at a time); every result but tok/s is the same for any N\n"
            "  --json FILE          write the results as JSON (atomically)\n"
            "  --outputs FILE       gsm8k/math/bioasq: every answer as a JSON line (policy, rate,\n"
            "                       index, output, pred, reference, correct); alpacaeval: AlpacaEval's\n"
            "                       JSON list of {instruction, output, generator, dataset}, generator\n"
            "                       \"duet-POLICY\" (\"@RATE\" with a rate)\n"
            "  --quiet              no progress on stderr\n");
    lora_opts_usage(f);
}

/* ---- shared with duet tune ------------------------------------------------------------ */
void cmd_eval_progress(void *ud, const char *what, long done, long total) {
    /* The library reports its teacher-forced pass ("scoring") in tokens and every generating
     * pass (calibration, each policy) in examples. */
    cli_progress_update(ud, what, strcmp(what, "scoring") ? "examples" : "tok", done, total, NULL);
}

void *cmd_eval_progress_new(int quiet) {
    cli_progress p;
    cli_progress_init(&p, quiet);
    cli_progress *q = p.show ? malloc(sizeof *q) : NULL;
    if (q) *q = p;
    return q;
}

/* Comma-separated numbers in [lo, hi] into out[cap]; count, or 0 after a message. */
int cmd_eval_number_list(const char *cmd, const char *flag, const char *s, double lo, double hi,
                         double *out, int cap) {
    int n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        float v;
        if (n == cap) {
            fprintf(stderr, "duet %s: %s: at most %d values\n", cmd, flag, cap);
            return 0;
        }
        if (!arg_float(cmd, flag, tok, lo, hi, &v)) return 0;
        out[n++] = v;
    }
    if (!n) fprintf(stderr, "duet %s: %s needs at least one value\n", cmd, flag);
    return n;
}

/* --protocol, --scoring, --split into ep; 0, or 1 after a message */
int cmd_eval_protocol_arg(const char *cmd, const char *flag, const char *v, duet_eval_params *ep) {
    int x;
    if (!strcmp(flag, "--protocol")) {
        if ((x = duet_eval_protocol_from_name(v)) < 0) {
            fprintf(stderr, "duet %s: --protocol '%s' is not paper or duet\n", cmd, v);
            return 1;
        }
        ep->protocol = x;
    } else if (!strcmp(flag, "--scoring")) {
        if ((x = duet_eval_scoring_from_name(v)) < 0) {
            fprintf(stderr, "duet %s: --scoring '%s' is not paper or duet\n", cmd, v);
            return 1;
        }
        ep->scoring = x;
    } else {
        if ((x = duet_eval_split_from_name(v)) < 0) {
            fprintf(stderr, "duet %s: --split '%s' is not all, test or validation\n", cmd, v);
            return 1;
        }
        ep->split = x;
    }
    return 0;
}

/* ---- duet eval ------------------------------------------------------------------------- */
static void fmt_or_dash(char *buf, size_t cap, const char *fmt, double v) {
    if (isfinite(v)) snprintf(buf, cap, fmt, v);
    else snprintf(buf, cap, "-");
}

static void print_table(int task, const duet_eval_result *r, int n) {
    printf("%-14s %6s %10s %12s %9s %12s %10s\n", "policy", "rate", "threshold",
           task == DUET_EVAL_TASK_NLL ? "nll/byte" : duet_eval_metric_name(task), "deferral", "expert calls", "tok/s");
    for (int i = 0; i < n; i++) {
        char rate[32], thr[32], val[48];
        fmt_or_dash(rate, sizeof rate, "%.2f", r[i].rate);
        fmt_or_dash(thr, sizeof thr, "%.4g", r[i].threshold);
        if (task == DUET_EVAL_TASK_NLL) snprintf(val, sizeof val, "%.5f", r[i].value);
        else if (task == DUET_EVAL_TASK_BIOASQ || task == DUET_EVAL_TASK_ALPACAEVAL) fmt_or_dash(val, sizeof val, "%.4f", r[i].value);
        else snprintf(val, sizeof val, "%.1f%% %d/%d", 100 * r[i].value, r[i].n_correct, r[i].n_examples);
        printf("%-14s %6s %10s %12s %8.1f%% %12ld %10.1f\n", duet_eval_spec_name(&r[i].spec), rate, thr,
               val, 100 * r[i].deferral_frequency, r[i].expert_calls, r[i].tokens_per_second);
    }
}

/* A JSON string of model text, which need not be valid UTF-8 (bytes >= 0x80 become '?'
 * only when it is not). */
static json_t *text_json(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    char *t = strdup(s);
    if (!t) return json_null();
    for (char *p = t; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(t);
    free(t);
    return j ? j : json_null();
}

/* --outputs: one JSON line per generated answer */
static void write_answer(void *ud, const duet_eval_spec *spec, int index, const char *output, const char *pred,
                         const char *reference, int correct) {
    json_t *o = json_object();
    json_object_set_new(o, "policy", json_string(duet_eval_policy_name(spec->policy)));
    json_object_set_new(o, "rate", spec->rate >= 0 ? json_real(spec->rate) : json_null());
    json_object_set_new(o, "index", json_integer(index));
    json_object_set_new(o, "output", text_json(output));
    json_object_set_new(o, "pred", text_json(pred));
    json_object_set_new(o, "reference", text_json(reference));
    json_object_set_new(o, "correct", json_boolean(correct));
    json_dumpf(o, ud, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fputc('\n', ud);
    json_decref(o);
}

/* One spec per policy, and per rate for the policies a rate applies to. */
static int build_specs(const char *list, const double *rates, int n_rates, float eta, float ent,
                       duet_eval_spec *specs, int cap) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int matched = !strcmp(tok, "random_matched");
        int pol = matched ? DUET_POLICY_RANDOM : duet_eval_policy_from_name(tok);
        if (pol < 0) {
            fprintf(stderr, "duet eval: --policy '%s' is not one of base, expert, collm, random, "
                            "random_matched, uncertainty, confidence, compose, proxy, contrastive, "
                            "cd, cd_v2, oracle\n", tok);
            return -1;
        }
        if (pol == DUET_POLICY_RANDOM && !matched && n_rates == 0) { /* the paper's coin flip */
            if (n == cap) return -1;
            specs[n++] = (duet_eval_spec){.policy = pol, .rate = DUET_EVAL_RANDOM_RATE, .threshold = -1};
            continue;
        }
        int per_rate = n_rates > 0 && !matched &&
                       (duet_eval_policy_thresholded(pol) || pol == DUET_POLICY_RANDOM);
        for (int k = 0; k < (per_rate ? n_rates : 1); k++) {
            if (n == cap) {
                fprintf(stderr, "duet eval: at most %d policy/rate rows\n", cap);
                return -1;
            }
            float thr = pol == DUET_POLICY_UNCERTAINTY ? ent : pol == DUET_EVAL_POLICY_ORACLE ? -1 : eta;
            specs[n++] = (duet_eval_spec){.policy = pol, .rate = per_rate ? rates[k] : -1, .threshold = thr};
        }
    }
    return n;
}

int cmd_eval_load(const char *cmd, const char *base_path, const char *expert_path, const char *anti_path,
                  const char *head_path, int n_threads, duet_model **base, duet_model **expert,
                  duet_model **anti, duet_head **head) {
    duet_error err = {0};
    duet_model_params mp = {.n_threads = n_threads};
    if (duet_model_load(base_path, &mp, base, &err) ||
        (expert_path && duet_model_load(expert_path, &mp, expert, &err)) ||
        (anti_path && duet_model_load(anti_path, &mp, anti, &err)) ||
        (head_path && duet_head_load(head_path, *base, head, &err))) {
        fprintf(stderr, "duet %s: %s\n", cmd, err.msg);
        return 1;
    }
    return 0;
}

/* What the command line asks for. */
typedef struct eval_args {
    const char *base_path, *expert_path, *head_path, *anti_path;
    const char *data, *json_path, *policies, *stops[16], *outputs;
    const char *reference;
    duet_judge_params judge;
    int task, n_threads, quiet, n_stops, n_rates;
    double rates[MAX_RATES];
    float eta, ent;
    duet_eval_params ep;
    lora_opts lora;
} eval_args;

/* Reads the command line into A; returns -1 to go on, else the exit status (0 after --help). */
static int parse_args(int argc, char **argv, eval_args *A) {
    *A = (eval_args){.task = -1, .eta = -1, .ent = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--quiet")) { A->quiet = 1; continue; }
        if (!strcmp(a, "--judge-one-order")) { A->judge.one_order = 1; continue; }
        int lt = lora_opts_parse("eval", &A->lora, argc, argv, &i);
        if (lt < 0) return 2;
        if (lt) continue;
        if (!(v = arg_value("eval", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) A->base_path = v;
        else if (!strcmp(a, "--expert")) A->expert_path = v;
        else if (!strcmp(a, "--head")) A->head_path = v;
        else if (!strcmp(a, "--anti")) A->anti_path = v;
        else if (!strcmp(a, "--data")) A->data = v;
        else if (!strcmp(a, "--json")) A->json_path = v;
        else if (!strcmp(a, "--outputs")) A->outputs = v;
        else if (!strcmp(a, "--policy")) A->policies = v;
        else if (!strcmp(a, "--shots")) A->ep.shots = v;
        else if (!strcmp(a, "--reference")) A->reference = v;
        else if (!strcmp(a, "--judge-url")) A->judge.url = v;
        else if (!strcmp(a, "--judge-model")) A->judge.model = v;
        else if (!strcmp(a, "--judge-api-key")) A->judge.api_key = v;
        else if (!strcmp(a, "--judge-timeout")) {
            int sec;
            if (!arg_int("eval", a, v, 1, 3600, &sec)) return 2;
            A->judge.timeout_ms = sec * 1000;
        }
        else if (!strcmp(a, "--task")) {
            if ((A->task = duet_eval_task_from_name(v)) < 0) {
                fprintf(stderr, "duet eval: --task '%s' is not gsm8k, math, nll, bioasq or alpacaeval\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--protocol") || !strcmp(a, "--scoring") || !strcmp(a, "--split")) {
            if (cmd_eval_protocol_arg("eval", a, v, &A->ep)) return 2;
        } else if (!strcmp(a, "--defer-rate")) {
            if (!(A->n_rates = cmd_eval_number_list("eval", a, v, 0, 1, A->rates, MAX_RATES))) return 2;
        } else if (!strcmp(a, "--threshold")) {
            if (!arg_float("eval", a, v, 0, 1, &A->eta)) return 2;
        } else if (!strcmp(a, "--entropy-threshold")) {
            if (!arg_float("eval", a, v, 0, 1e6, &A->ent)) return 2;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            if (!arg_int("eval", a, v, 1, 1 << 20, &A->ep.max_tokens)) return 2;
        } else if (!strcmp(a, "--limit")) {
            if (!arg_int("eval", a, v, 1, 1 << 30, &A->ep.limit)) return 2;
        } else if (!strcmp(a, "--calib")) {
            if (!arg_int("eval", a, v, 1, 1 << 20, &A->ep.n_calib)) return 2;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!arg_int("eval", a, v, 8, 1 << 24, &A->ep.n_ctx)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!arg_int("eval", a, v, 1, 256, &A->n_threads)) return 2;
        } else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
            if (!arg_u64("eval", a, v, &A->ep.seed)) return 2;
        } else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) {
            if (!arg_int("eval", a, v, 1, 256, &A->ep.parallel)) return 2;
        } else if (!strcmp(a, "--stop")) {
            if (A->n_stops == 16) { fprintf(stderr, "duet eval: at most 16 --stop strings\n"); return 2; }
            A->stops[A->n_stops++] = v;
        } else {
            fprintf(stderr, "duet eval: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!A->base_path || !A->data || A->task < 0) {
        fprintf(stderr, "duet eval: -m BASE, --task and --data are required\n");
        usage(stderr);
        return 2;
    }
    if (!A->judge.url != !A->reference || (A->judge.url && A->task != DUET_EVAL_TASK_ALPACAEVAL)) {
        fprintf(stderr, "duet eval: --judge-url and --reference go together, with --task alpacaeval\n");
        return 2;
    }
    return -1;
}

int cmd_eval(int argc, char **argv) {
    eval_args A;
    int prc = parse_args(argc, argv, &A);
    if (prc >= 0) return prc;
    const char *base_path = A.base_path, *expert_path = A.expert_path, *head_path = A.head_path,
               *anti_path = A.anti_path, *data = A.data, *json_path = A.json_path,
               *policies = A.policies, *outputs = A.outputs;
    int task = A.task, n_threads = A.n_threads, quiet = A.quiet, n_stops = A.n_stops;
    duet_eval_params ep = A.ep;
    if (!policies)
        policies = !expert_path ? "base" : head_path ? "base,expert,collm,random,random_matched" : "base,expert";
    duet_eval_spec specs[MAX_SPECS];
    int n_specs = build_specs(policies, A.rates, A.n_rates, A.eta, A.ent, specs, MAX_SPECS);
    if (n_specs <= 0) return 2;
    ep.task = task;
    if (n_stops) { ep.stops = A.stops; ep.n_stops = n_stops; }
    ep.progress = cmd_eval_progress;
    ep.ud = cmd_eval_progress_new(quiet);
    if (!ep.ud) ep.progress = NULL;

    duet_model *base = NULL, *expert = NULL, *anti = NULL;
    duet_head *head = NULL;
    duet_eval *ctx = NULL;
    duet_eval_result res[MAX_SPECS];
    duet_error err = {0};
    int rc = 1;
    duet_atomic out = {0};
    if (task == DUET_EVAL_TASK_ALPACAEVAL) { /* AlpacaEval's JSON, written by the task */
        ep.alpaca_outputs = outputs;
        ep.reference = A.reference;
        ep.judge = A.judge.url ? &A.judge : NULL;
    } else if (outputs) { /* written to a temp file, renamed at the end: no partial output */
        if (duet_atomic_open(&out, outputs, &err)) goto fail;
        ep.on_answer = write_answer;
        ep.answer_ud = out.f;
    }
    if (cmd_eval_load("eval", base_path, expert_path, anti_path, head_path, n_threads, &base, &expert,
                      &anti, &head))
        goto done;
    if (lora_attach(&A.lora, 0, base, &err) || (A.lora.n[1] && !expert) ||
        (expert && lora_attach(&A.lora, 1, expert, &err))) {
        if (!err.msg[0]) snprintf(err.msg, sizeof err.msg, "--expert-lora needs --expert");
        goto fail;
    }
    if (duet_eval_open(base, expert, anti, head, data, &ep, &ctx, &err) || duet_eval_run(ctx, specs, n_specs, res, &err))
        goto fail;
    int size = duet_eval_size(ctx, &err);
    printf("duet eval: task %s, %s (%d %s), base %s%s%s\n", duet_eval_task_name(task), data, size,
           task == DUET_EVAL_TASK_NLL ? "tokens" : "examples", duet_model_hparams(base)->name,
           expert ? ", expert " : "", expert ? duet_model_hparams(expert)->name : "");
    print_table(task, res, n_specs);
    if (task != DUET_EVAL_TASK_NLL && res[0].n_truncated)
        fprintf(stderr, "duet eval: %d prompts were cut from the left to fit the context\n", res[0].n_truncated);
    if (duet_eval_n_unknown(ctx))
        fprintf(stderr, "duet eval: warning: %d of %d tokens are the base's unknown token (text it cannot "
                        "spell); the expert is scored on its unknown token there\n", duet_eval_n_unknown(ctx), size);
    if (out.f && duet_atomic_commit(&out, &err)) goto fail;
    if (json_path && duet_eval_results_save(task, data, res, n_specs, json_path, &err)) goto fail;
    rc = 0;
    goto done;
fail:
    if (ep.ud) cli_progress_end(ep.ud);
    fprintf(stderr, "duet eval: %s\n", err.msg);
done:
    duet_atomic_abort(&out);
    duet_eval_close(ctx);
    free(ep.ud);
    duet_head_free(head);
    duet_model_free(anti);
    duet_model_free(expert);
    duet_model_free(base);
    lora_opts_free(&A.lora);
    return rc;
}
