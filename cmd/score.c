/* score.c: `duet score`: a teacher-forced pass of one model over a dataset, writing the
 * per-token score file that head training reads (format: docs/formats.md). Progress with
 * tokens/s and ETA on a terminal; Ctrl-C stops cleanly and the same command resumes. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: duet score -m MODEL -d DATA -o SCORES [options]\n"
            "  -m, --model FILE      GGUF model to score with\n"
            "  -d, --data FILE       JSONL ({\"prompt\",\"response\"}, {\"messages\"}, {\"question\",\"answer\"})\n"
            "                        or plain text (paragraphs, cut into context windows)\n"
            "  -o, --output FILE     score file (written as FILE.partial, renamed when complete;\n"
            "                        re-running the same command resumes an interrupted run)\n"
            "  --tokenizer-of BASE   tokenise with BASE's tokenizer and map ids through the\n"
            "                        vocabulary bridge (score the expert on the base's tokens)\n"
            "  --url URL             score with a remote duet serve (its prompt log-probabilities)\n"
            "                        instead of -m; needs --tokenizer-of BASE, whose vocabulary the\n"
            "                        server must share; no hidden states are stored\n"
            "  --api-key KEY         API key of the --url server\n"
            "  -c, --ctx-size N      context per sequence (default min(training context, 4096));\n"
            "                        longer examples are cut, with a count\n"
            "  --format F            auto (default), jsonl or text: how the file is read; and\n"
            "                        (repeatable) duet (default) or paper: the JSONL frames, paper\n"
            "                        being the official Co-LLM training format (docs/formats.md)\n"
            "  --skip-bad            skip malformed examples (counted) instead of stopping\n"
            "  --no-hidden           do not store hidden states\n"
            "  --hidden              store the final-norm hidden states (F16, n_embd per token);\n"
            "                        the default for a model's own tokens, the base file that head\n"
            "                        training reads them from. With --tokenizer-of or --url the\n"
            "                        default is none: nothing reads an expert's hidden states, and\n"
            "                        they would be most of the file (--url cannot give them)\n"
            "  -t, --threads N       threads (default: all cores)\n"
            "  -np, --parallel N     sequences scored together in one batched pass (default 8;\n"
            "                        the file is the same for any N)\n"
            "  --quiet               no progress or summary (warnings still print)\n");
    lora_opts_usage(f);
    fputs("  (--lora: the scored model's; no --expert-lora here, and none with --url, whose server\n"
          "   holds its own weights)\n", f);
}

static volatile sig_atomic_t g_stop;
static void on_sigint(int sig) { (void)sig; g_stop = 1; }

static int on_progress(void *ud, const duet_scores_progress *p) {
    char seqs[64];
    snprintf(seqs, sizeof seqs, "%lld/%lld sequences", (long long)p->seq_done, (long long)p->seq_total);
    cli_progress_update(ud, "duet score", "tok", p->tok_done, p->tok_total, seqs);
    return g_stop;
}

int cmd_score(int argc, char **argv) {
    const char *model_path = NULL, *data_path = NULL, *out = NULL, *tok_of = NULL;
    duet_expert_remote_params rp = {0};
    duet_expert_remote *remote = NULL;
    int n_ctx = 0, n_threads = 0, quiet = 0, hidden = -1; /* -1: by the kind of file */
    duet_dataset_params dp = {0};
    duet_scores_params sp = {0};
    lora_opts lora = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VAL() do { if (!(v = arg_value("score", argc, argv, &i))) return 2; } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        int lt = lora_opts_parse("score", &lora, argc, argv, &i);
        if (lt < 0) return 2;
        if (lt) continue;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); model_path = v; }
        else if (!strcmp(a, "-d") || !strcmp(a, "--data")) { VAL(); data_path = v; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { VAL(); out = v; }
        else if (!strcmp(a, "--tokenizer-of")) { VAL(); tok_of = v; }
        else if (!strcmp(a, "--url")) { VAL(); rp.url = v; }
        else if (!strcmp(a, "--api-key")) { VAL(); rp.api_key = v; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            VAL(); if (!arg_int("score", a, v, 2, 1 << 20, &n_ctx)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            VAL(); if (!arg_int("score", a, v, 1, 256, &n_threads)) return 2;
        } else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) {
            VAL(); if (!arg_int("score", a, v, 1, 256, &sp.parallel)) return 2;
        } else if (!strcmp(a, "--format")) {
            VAL();
            if (!strcmp(v, "auto")) dp.format = DUET_DATASET_AUTO;
            else if (!strcmp(v, "jsonl")) dp.format = DUET_DATASET_JSONL;
            else if (!strcmp(v, "text")) dp.format = DUET_DATASET_TEXT;
            else if (!strcmp(v, "paper")) dp.frames = DUET_DATASET_FRAMES_PAPER;
            else if (!strcmp(v, "duet")) dp.frames = DUET_DATASET_FRAMES_DUET;
            else {
                fprintf(stderr, "duet score: --format '%s' is not auto, jsonl, text, paper or duet\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--skip-bad")) dp.skip_bad = 1;
        else if (!strcmp(a, "--no-hidden")) hidden = 0;
        else if (!strcmp(a, "--hidden")) hidden = 1;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else {
            fprintf(stderr, "duet score: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
#undef VAL
    }
    if (rp.url && (model_path || !tok_of || hidden == 1)) {
        fprintf(stderr, "duet score: --url scores with the server: give --tokenizer-of BASE, not -m; "
                        "it gives log-probabilities only (no --hidden)\n");
        return 2;
    }
    if (lora.n[1] || (rp.url && lora.n[0])) {
        fprintf(stderr, "duet score: %s\n", lora.n[1] ? "--expert-lora does not apply (one model is scored)"
                        : "--lora does not apply with --url: the server scores with its own weights");
        return 2;
    }
    sp.no_hidden = hidden == -1 ? (tok_of || rp.url) : !hidden;
    if ((!model_path && !rp.url) || !data_path || !out) {
        fprintf(stderr, "duet score: -m MODEL (or --url URL), -d DATA and -o SCORES are required\n");
        usage(stderr);
        return 2;
    }
    duet_error err = {0};
    duet_model *m = NULL, *base = NULL;
    duet_dataset ds = {0};
    int rc = 1, st;
    duet_model_params mp = {.n_threads = n_threads};
    if ((st = duet_dataset_load(data_path, &dp, &ds, &err))) goto fail;
    if (ds.n_bad)
        fprintf(stderr, "duet score: warning: skipped %d bad example%s in %s (the first: %s)\n",
                ds.n_bad, ds.n_bad > 1 ? "s" : "", data_path, ds.first_bad);
    if (rp.url) { /* the server scores; the base's vocabulary numbers the tokens */
        duet_model_params bp = {.vocab_only = 1};
        if ((st = duet_model_load(tok_of, &bp, &m, &err)) ||
            (st = duet_expert_remote_new(m, &rp, &remote, &err)))
            goto fail;
        tok_of = NULL;
    } else if ((st = duet_model_load(model_path, &mp, &m, &err)) || (st = lora_attach(&lora, 0, m, &err)))
        goto fail;
    if (tok_of) {
        duet_model_params bp = {.vocab_only = 1};
        if ((st = duet_model_load(tok_of, &bp, &base, &err))) goto fail;
    }
    cli_progress pg;
    cli_progress_init(&pg, quiet);
    sp.n_ctx = n_ctx;
    sp.ids_model = base;
    sp.remote = remote;
    sp.progress = on_progress; /* also for ^C when no line is shown */
    sp.ud = &pg;
    g_stop = 0;
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old);
    duet_scores_stats ss;
    st = duet_scores_compute(m, &ds, &sp, out, &ss, &err);
    sigaction(SIGINT, &old, NULL);
    cli_progress_end(&pg);
    if (st == DUET_SCORES_STOPPED) {
        fprintf(stderr, "duet score: interrupted after %d of %d sequences; %s.partial is kept: "
                        "run the same command again to resume\n", (int)ss.n_seq_done, ss.n_seq, out);
        rc = 130;
        goto done;
    }
    if (ss.n_truncated)
        fprintf(stderr, "duet score: warning: %d example%s longer than the context of %d tokens "
                        "were cut (%lld tokens dropped)\n", ss.n_truncated, ss.n_truncated > 1 ? "s" : "",
                ss.n_ctx, (long long)ss.n_dropped_tok);
    if (ss.n_skipped)
        fprintf(stderr, "duet score: warning: skipped %d example%s with no response token inside "
                        "the context\n", ss.n_skipped, ss.n_skipped > 1 ? "s" : "");
    if (st) goto fail;
    if (!quiet)
        fprintf(stderr, "duet score: wrote %s: %d sequences, %lld response tokens from %d examples "
                        "(%s%s) in %.1fs%s\n", out, ss.n_seq, (long long)ss.n_tok, ss.n_examples,
                remote ? duet_expert_remote_name(remote) : duet_model_hparams(m)->name,
                base || remote ? ", base tokenizer" : "", ss.seconds,
                ss.n_resumed_seq ? " (resumed)" : "");
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "duet score: %s\n", err.msg);
done:
    duet_dataset_free(&ds);
    duet_expert_remote_free(remote);
    duet_model_free(base);
    duet_model_free(m);
    lora_opts_free(&lora);
    return rc;
}
