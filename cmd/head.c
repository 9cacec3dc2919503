/* head.c: `duet head init --base MODEL -o HEAD.gguf [--threshold ETA]`: the untrained
 * deferral head (u = mean of the base's output-matrix rows), so the Co-LLM pipeline runs
 * before training; `duet head train`: learn it from two score files (duet_head_train). */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f, "usage: duet head init --base MODEL -o HEAD.gguf [--threshold ETA]\n"
               "       duet head train --base-scores B --expert-scores E -o HEAD.gguf [options]\n"
               "       duet head eval --base-scores B --expert-scores E --head HEAD.gguf --base MODEL\n"
               "       duet head import -m CO-LLM-CHECKPOINT.gguf --expert EXPERT.gguf -o BASE.gguf\n"
               "                        --head-out HEAD.gguf   (the official <|defer|> row as a head)\n"
               "       (duet head train --help for its options)\n");
}

/* ---- duet head train ------------------------------------------------------------------------ */
static void train_usage(FILE *f) {
    fprintf(f,
            "usage: duet head train --base-scores B --expert-scores E -o HEAD.gguf [options]\n"
            "  --base-scores FILE    duet score of the base (own tokenizer, hidden states)\n"
            "  --expert-scores FILE  duet score of the expert on the same data, --tokenizer-of BASE\n"
            "  -o, --output FILE     the head (sidecar GGUF)\n"
            "  --objective O         nll (default: weak-supervision start, then the paper's marginal\n"
            "                        likelihood), weak (weak supervision only), or gain (regress\n"
            "                        the score onto the expert's log-prob gain: ranks tokens best)\n"
            "  --defer-cost L        cost-aware nll: add L * sigmoid(s) per token (default 0)\n"
            "  --features LIST       head inputs: hidden,entropy,maxlogp (default hidden)\n"
            "  --epochs N            epochs of the main phase (default 2 for nll, else 5)\n"
            "  --weak-epochs N       epochs of the weak start before nll (default 3; 0 = none)\n"
            "  --lr X                peak learning rate (AdamW, warm-up + linear decay; default 1e-3\n"
            "                        for nll, else 1e-2; times 128/n_embd for wider hidden heads)\n"
            "  --weak-lr X           learning rate of the weak start (default 1e-2, scaled alike)\n"
            "  --weight-decay X      AdamW weight decay (default 0)\n"
            "  --pos-weight X        weak positive weight (default 8)\n"
            "  --preset paper        the official Co-LLM head initialisation: weak supervision on\n"
            "                        the hidden state, u from the mean output row of --base\n"
            "                        (required: the model the score file names), one pass in file\n"
            "                        order, batch 8, AdamW at a constant 2e-5, no clipping,\n"
            "                        positive weight 8, the last value kept (overrides those flags;\n"
            "                        the default, duet's own schedule, is --preset duet)\n"
            "  --batch N             sequences per step (default 8)\n"
            "  --val-frac F          validation share of the sequences (default 0.1)\n"
            "  --seed S              split and batch order (default 0)\n"
            "  --base MODEL          start u at the mean of the base's output rows (default: zero)\n"
            "                        and check the head's identity against the model\n"
            "  --report FILE         JSON report: losses per step, routing per evaluation\n"
            "  Score files larger than memory are streamed: every DUET_SCORES_WINDOW bytes read\n"
            "  (environment, default 4 MiB) their pages are let go; what grows with the file is\n"
            "  about 44 bytes per token of per-token scalars (log-probs, labels, routing keys)\n"
            "  --quiet               no progress or summary\n");
}

/* The routing table: NLL per byte of hard routing at each deferral rate. */
static void print_routing(const char *what, const duet_head_routing *r) {
    double bpt = r->n_bytes ? (double)r->n_tok / (double)r->n_bytes : 1;
    fprintf(stderr, "%s NLL per byte (%lld tokens, %llu bytes): base %.4f, expert %.4f\n", what,
            (long long)r->n_tok, (unsigned long long)r->n_bytes, r->base * bpt, r->expert * bpt);
    fprintf(stderr, "  defer   collm   random  uncert.  confid.  oracle   gap closed (collm)\n");
    for (int k = 0; k < DUET_HT_N_RATES; k++)
        fprintf(stderr, "  %3.0f%%   %.4f  %.4f  %.4f   %.4f   %.4f   %5.1f%%\n", 100 * duet_head_train_rates[k],
                r->head[k] * bpt, r->random[k] * bpt, r->uncertainty[k] * bpt,
                r->confidence[k] * bpt, r->oracle[k] * bpt,
                100 * (r->base - r->head[k]) / (r->base - r->expert));
}

/* ---- duet head eval ------------------------------------------------------------------------- */
static int cmd_head_eval(int argc, char **argv) {
    const char *bpath = NULL, *epath = NULL, *hpath = NULL, *mpath = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: duet head eval --base-scores B --expert-scores E --head HEAD.gguf --base MODEL\n"
                   "  routing NLL per byte of the head on a pair of score files (e.g. held-out data)\n"
                   "  beside random, uncertainty, confidence and oracle routing\n");
            return 0;
        }
        if (!(v = arg_value("head eval", argc, argv, &i))) return 2;
        if (!strcmp(a, "--base-scores")) bpath = v;
        else if (!strcmp(a, "--expert-scores")) epath = v;
        else if (!strcmp(a, "--head")) hpath = v;
        else if (!strcmp(a, "--base") || !strcmp(a, "-m")) mpath = v;
        else {
            fprintf(stderr, "duet head eval: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!bpath || !epath || !hpath || !mpath) {
        fprintf(stderr, "duet head eval: --base-scores, --expert-scores, --head and --base are required\n");
        return 2;
    }
    duet_error err = {0};
    duet_scores *B = NULL, *E = NULL;
    duet_model *m = NULL;
    duet_head *h = NULL;
    duet_head_routing r;
    duet_model_params mp = {.n_threads = 1, .use_mmap = 1, .vocab_only = 0};
    int rc = duet_scores_open(bpath, &B, &err);
    if (!rc) rc = duet_scores_open(epath, &E, &err);
    if (!rc) rc = duet_model_load(mpath, &mp, &m, &err);
    if (!rc) rc = duet_head_load(hpath, m, &h, &err);
    if (!rc) rc = duet_head_eval_scores(h, B, E, &r, &err);
    if (!rc) print_routing(hpath, &r);
    else fprintf(stderr, "duet head eval: %s\n", err.msg);
    duet_head_free(h);
    duet_model_free(m);
    duet_scores_close(B);
    duet_scores_close(E);
    return rc ? 1 : 0;
}

static void train_progress(void *ud, const duet_head_train_progress *p) {
    char label[48], extra[96];
    snprintf(label, sizeof label, "duet head train (%s)", p->phase);
    snprintf(extra, sizeof extra, "epoch %d, loss %.4f, routing %.4f (best %.4f)", p->epoch,
             p->loss, p->route, p->best);
    cli_progress_update(ud, label, "steps", p->step, p->steps, extra);
}

/* --base: the model that scored the base file (name, width and vocabulary must match its
 * header), and the head u starts from: the mean of its output rows (duet_head_init). */
static int head_from_base(const char *path, duet_scores *B, const char *bpath, duet_model **m,
                          duet_head **init, duet_error *err) {
    duet_model_params mp = {.n_threads = 1, .use_mmap = 1};
    const duet_scores_header *bh = duet_scores_get_header(B);
    int rc = duet_model_load(path, &mp, m, err);
    if (rc) return rc;
    const duet_hparams *mh = duet_model_hparams(*m);
    if (strcmp(mh->name, bh->model_name) || mh->n_embd != (int)bh->n_embd ||
        duet_model_vocab_hash(*m) != bh->vocab_hash) {
        snprintf(err->msg, sizeof err->msg, "%s ('%s', n_embd %d) is not the model that scored %s "
                 "('%s', n_embd %u)", path, mh->name, mh->n_embd, bpath, bh->model_name, bh->n_embd);
        return DUET_ERR_ARG;
    }
    return duet_head_init(*m, init, err);
}

static int cmd_head_train(int argc, char **argv) {
    const char *bpath = NULL, *epath = NULL, *out = NULL, *base_model = NULL;
    int quiet = 0, weak_epochs = -2, paper = 0, usage_error = 0;
    duet_head_train_params hp = {0};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { train_usage(stdout); return 0; }
        if (!strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!(v = arg_value("head train", argc, argv, &i))) return 2;
        float x;
        int n;
        if (!strcmp(a, "--base-scores")) bpath = v;
        else if (!strcmp(a, "--expert-scores")) epath = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--report")) hp.report_path = v;
        else if (!strcmp(a, "--base")) base_model = v;
        else if (!strcmp(a, "--preset")) {
            if (strcmp(v, "paper") && strcmp(v, "duet")) {
                fprintf(stderr, "duet head train: --preset '%s' is not paper or duet\n", v);
                return 2;
            }
            paper = !strcmp(v, "paper");
        } else if (!strcmp(a, "--objective")) {
            if (!strcmp(v, "nll")) hp.objective = DUET_HT_NLL;
            else if (!strcmp(v, "weak")) hp.objective = DUET_HT_WEAK;
            else if (!strcmp(v, "gain")) hp.objective = DUET_HT_GAIN;
            else {
                fprintf(stderr, "duet head train: --objective '%s' is not nll, weak or gain\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--features")) {
            duet_error e = {0};
            if (duet_head_features_parse(v, &hp.features, &e)) {
                fprintf(stderr, "duet head train: --features: %s\n", e.msg);
                return 2;
            }
        } else if (!strcmp(a, "--defer-cost")) {
            if (!arg_float("head train", a, v, 0, 1e6, &x)) return 2;
            hp.defer_cost = x;
        } else if (!strcmp(a, "--epochs")) {
            if (!arg_int("head train", a, v, 1, 100000, &hp.epochs)) return 2;
        } else if (!strcmp(a, "--weak-epochs")) {
            if (!arg_int("head train", a, v, 0, 100000, &weak_epochs)) return 2;
        } else if (!strcmp(a, "--lr")) {
            if (!arg_float("head train", a, v, 1e-12, 10, &x)) return 2;
            hp.lr = x;
        } else if (!strcmp(a, "--weak-lr")) {
            if (!arg_float("head train", a, v, 1e-12, 10, &x)) return 2;
            hp.weak_lr = x;
        } else if (!strcmp(a, "--weight-decay")) {
            if (!arg_float("head train", a, v, 0, 10, &x)) return 2;
            hp.weight_decay = x;
        } else if (!strcmp(a, "--pos-weight")) {
            if (!arg_float("head train", a, v, 1e-6, 1e6, &x)) return 2;
            hp.pos_weight = x;
        } else if (!strcmp(a, "--batch")) {
            if (!arg_int("head train", a, v, 1, 1 << 20, &hp.batch_seqs)) return 2;
        } else if (!strcmp(a, "--val-frac")) {
            if (!arg_float("head train", a, v, 1e-6, 0.9, &x)) return 2;
            hp.val_frac = x;
        } else if (!strcmp(a, "--seed")) {
            if (!arg_u64("head train", a, v, &hp.seed)) return 2;
        } else if (!strcmp(a, "--evals")) {
            if (!arg_int("head train", a, v, 1, 100000, &n)) return 2;
            hp.evals_per_phase = n;
        } else {
            fprintf(stderr, "duet head train: unknown option '%s'\n", a);
            train_usage(stderr);
            return 2;
        }
    }
    if (!bpath || !epath || !out) {
        fprintf(stderr, "duet head train: --base-scores, --expert-scores and -o are required\n");
        train_usage(stderr);
        return 2;
    }
    if (weak_epochs != -2) hp.weak_epochs = weak_epochs ? weak_epochs : -1;
    if (paper) duet_head_train_preset_paper(&hp); /* whatever else was given */
    duet_error err = {0};
    duet_scores *B = NULL, *E = NULL;
    duet_model *m = NULL;
    duet_head *init = NULL, *h = NULL;
    int rc;
    if ((rc = duet_scores_open(bpath, &B, &err)) || (rc = duet_scores_open(epath, &E, &err))) goto done;
    if (paper && !base_model) { /* the file names its base, but not where that model lives */
        rc = DUET_ERR_ARG;
        usage_error = 1;
        snprintf(err.msg, sizeof err.msg, "--preset paper starts u at the mean of the base's "
                 "output rows: give --base MODEL, the model '%s' that scored %s",
                 duet_scores_get_header(B)->model_name, bpath);
        goto done;
    }
    if (base_model) {
        if ((rc = head_from_base(base_model, B, bpath, &m, &init, &err))) goto done;
        hp.u_init = duet_head_u(init);
    }
    cli_progress pg;
    cli_progress_init(&pg, quiet);
    if (pg.show) {
        hp.progress = train_progress;
        hp.ud = &pg;
    }
    duet_head_train_result res;
    rc = duet_head_train(B, E, &hp, &h, &res, &err);
    cli_progress_end(&pg);
    if (rc) goto done;
    if ((rc = duet_head_save(h, out, &err))) goto done;
    if (!quiet) {
        char fs[64];
        duet_head_features_string(duet_head_features(h), fs, sizeof fs);
        fprintf(stderr, "duet head train: wrote %s (features %s), kept step %d (%s, validation loss "
                        "%.4f); %d/%d training/validation sequences, pseudo-label positive rate "
                        "%.1f%%\n", out, fs, res.best_step, res.best_phase, res.best_val_loss,
                res.n_train_seq, res.n_val_seq, 100 * res.pos_rate);
        print_routing("validation", &res.val);
    }
done:
    if (rc) fprintf(stderr, "duet head train: %s\n", err.msg);
    duet_head_free(h);
    duet_head_free(init);
    duet_model_free(m);
    duet_scores_close(B);
    duet_scores_close(E);
    return rc ? (usage_error ? 2 : 1) : 0;
}


/* duet head import -m CHECKPOINT --expert E -o BASE --head-out HEAD */
static int cmd_head_import(int argc, char **argv) {
    const char *ckpt = NULL, *epath = NULL, *out = NULL, *hout = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!(v = arg_value("head import", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) ckpt = v;
        else if (!strcmp(a, "--expert")) epath = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--head-out")) hout = v;
        else {
            fprintf(stderr, "duet head import: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!ckpt || !epath || !out || !hout) {
        fprintf(stderr, "duet head import: -m CHECKPOINT, --expert EXPERT, -o BASE.gguf and "
                        "--head-out HEAD.gguf are required\n");
        return 2;
    }
    duet_error err = {0};
    duet_model *e = NULL;
    duet_model_params vp = {.vocab_only = 1};
    int rc = duet_model_load(epath, &vp, &e, &err);
    if (!rc) rc = duet_head_import(ckpt, e, out, hout, &err);
    duet_model_free(e);
    if (rc) {
        fprintf(stderr, "duet head import: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "duet head import: wrote %s and %s\n", out, hout);
    return 0;
}

int cmd_head(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "import")) return cmd_head_import(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "train")) return cmd_head_train(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "eval")) return cmd_head_eval(argc, argv);
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
