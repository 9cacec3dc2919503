/* train.c: `duet train lm` (pre-training on plain text, fine-tuning on prompt/response JSONL)
 * and `duet train collm` (the paper's joint training of the base and its deferral head, or the
 * official weak-supervision baseline, or the head-only one), of every weight or, with --lora, of low-rank adapters on a frozen
 * base: thin wrappers over duet_lm_train and duet_head_train. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void usage(FILE *f, int collm) {
    if (collm)
        fprintf(f,
                "usage: duet train collm -m BASE.gguf -d DATA --expert-scores E -o OUT.gguf\n"
                "                        --head-out HEAD.gguf (--head WEAK.gguf | --base-scores B) [options]\n"
                "  Joint training (docs/method.md section 5): the base's weights (with --lora: adapters on\n"
                "  the frozen base, OUT is the adapter file) and the head vector u learn together on the\n"
                "  negative log marginal likelihood, with the expert's log-probs from E.\n"
                "  --expert-scores FILE  duet score -m EXPERT --tokenizer-of BASE -d DATA -c SEQ_LEN+1\n"
                "  --head FILE           the starting head (duet head train --objective weak)\n"
                "  --base-scores FILE    or: the base's scores of DATA, to train the weak start here\n"
                "                        (duet's head schedule, u from zero; for the official start\n"
                "                        give --head from duet head train --preset paper)\n"
                "  --head-out FILE       the trained head (sidecar GGUF, for the trained base)\n"
                "  --weak-supervision    the paper's weak-supervision baseline, as the official trainer\n"
                "                        (v2) runs it: the base (or its --lora adapters) and u learn on\n"
                "                        2/3 token cross-entropy (u's logit in the softmax as an extra\n"
                "                        row) + 1/3 BCE of u . h against the pseudo-label 'the expert's\n"
                "                        top token is the gold one and the base's is not' (positive\n"
                "                        weight 5), both means over the response tokens; the labels come\n"
                "                        from --base-scores (the base's own scores of DATA) and\n"
                "                        --expert-scores; u starts at the mean of the base's output rows\n"
                "                        (or --head). The official run: --lr 2e-5 --decay linear\n"
                "                        --warmup 0.04 --min-lr 0 --epochs 2 and 128 sequences a step\n"
                "  --weak-supervision-head  the head-only baseline: write the weak-supervision head\n"
                "                        from --base-scores and --expert-scores to --head-out, base\n"
                "                        unchanged (duet head train --objective weak)\n"
                "  --val-expert-scores F the expert's scores of --val-data\n"
                "  --val-base-scores F   the base's scores of --val-data (--weak-supervision)\n"
                "  and the options of duet train lm (below)\n\n");
    fprintf(f,
            "usage: duet train lm (-m INIT.gguf | --n-embd N --n-layer N --n-head N [--n-head-kv N]\n"
            "                     --n-ff N --n-vocab N [--n-ctx N] [--tied] [--init-seed S])\n"
            "                     -d DATA -o OUT.gguf [options]\n"
            "  -d, --data FILE       plain text (pre-training) or prompt/response JSONL (loss on the\n"
            "                        response tokens only)\n"
            "  --val-data FILE       held-out data (default: --val-frac of the examples)\n"
            "  --format duet|paper   JSONL frames of both files: duet's (default) or the official\n"
            "                        Co-LLM training format (the same as duet score --format)\n"
            "  --val-frac F          held-out share of the examples (default 0.05)\n"
            "  --seq-len T           positions per sequence (default min(context - 1, 128))\n"
            "  --batch B             sequences per micro-batch (default 8)\n"
            "  --accum K             micro-batches per step (gradient accumulation, default 1)\n"
            "  --steps N | --epochs E  length of the run (default 1 epoch)\n"
            "  --lr X                peak learning rate (default 1e-3)\n"
            "  --warmup F            warm-up share of the steps (default 0.04)\n"
            "  --decay cosine|linear learning-rate decay after warm-up (default cosine)\n"
            "  --min-lr F            decay floor as a share of --lr (default 0.1)\n"
            "  --weight-decay X      AdamW decay of the matrices (default 0)\n"
            "  --clip X              gradient-norm clipping (default 1; 0 = off)\n"
            "  --seed S              data order and held-out split (default 0)\n"
            "  --eval-every N        steps between held-out evaluations (default steps/20)\n"
            "  --eval-seqs N         held-out sequences per evaluation (default up to 512)\n"
            "  --save-every N        checkpoint (OUT + OUT.optim) every N steps (default: at the end)\n"
            "  --resume              continue from OUT and OUT.optim when they exist\n"
            "  --name NAME           general.name of the output\n"
            "  --log FILE            JSON log (per step and per evaluation)\n"
            "  --curve PREFIX        the loss curve as PREFIX.csv and PREFIX.svg\n"
            "  --stop-at N           stop after step N with a checkpoint that --resume continues\n"
            "  -t, --threads N       threads (default: all CPUs)\n"
            "  --quiet               no progress or summary\n"
            "LoRA (with -m BASE; OUT is then a llama.cpp LoRA GGUF for run/chat/serve --lora):\n"
            "  --lora R              train rank-R adapters on the frozen base (its matrices stay in\n"
            "                        their type); A starts random (--init-seed), B at zero\n"
            "  --lora-alpha A        scale alpha / R on the adapters' product (default R)\n"
            "  --lora-targets LIST   matrices to adapt: q,k,v,o,gate,up,down,output (default all\n"
            "                        but output)\n");
}

static void progress(void *ud, const duet_lm_progress *p) {
    char extra[128];
    snprintf(extra, sizeof extra, "loss %.4f, held-out %.4f, lr %.2e, %.0f tok/s", p->loss,
             p->val_loss, p->lr, p->tok_per_s);
    cli_progress_update(ud, "duet train", "steps", p->step, p->steps, extra);
}

/* What the command line asks for. */
typedef struct train_args {
    int collm;
    const char *cmd, *init, *epath, *vepath, *bpath, *vbpath, *head_in;
    int quiet, n_threads, weak_only, weak;
    duet_make_model_params mk;
    duet_lm_train_params p;
    duet_lm_lora_params lora;   /* rank 0: every weight is trained */
} train_args;

/* Reads the command line into A; returns -1 to go on, else the exit status (0 after --help). */
static int parse_args(int argc, char **argv, train_args *A) {
    *A = (train_args){.mk = {.arch = "llama", .n_ctx = 256, .type = DUET_TYPE_F32, .output_type = -1}};
    if (argc < 2 || (strcmp(argv[1], "lm") && strcmp(argv[1], "collm"))) {
        int help = argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"));
        usage(help ? stdout : stderr, 1);
        return help ? 0 : 2;
    }
    int collm = A->collm = !strcmp(argv[1], "collm");
    const char *cmd = A->cmd = collm ? "train collm" : "train lm";
    duet_make_model_params *mk = &A->mk;
    duet_lm_train_params *p = &A->p;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout, collm); return 0; }
        if (!strcmp(a, "--quiet")) { A->quiet = 1; continue; }
        if (!strcmp(a, "--tied")) { mk->tied = 1; continue; }
        if (!strcmp(a, "--resume")) { p->resume = 1; continue; }
        if (collm && !strcmp(a, "--weak-supervision-head")) { A->weak_only = 1; continue; }
        if (collm && !strcmp(a, "--weak-supervision")) { A->weak = 1; continue; }
        if (!(v = arg_value(cmd, argc, argv, &i))) return 2;
        float x;
        int *ip = !strcmp(a, "--n-embd") ? &mk->n_embd : !strcmp(a, "--n-layer") ? &mk->n_layer
                : !strcmp(a, "--n-head") ? &mk->n_head : !strcmp(a, "--n-head-kv") ? &mk->n_head_kv
                : !strcmp(a, "--n-ff") ? &mk->n_ff : !strcmp(a, "--n-vocab") ? &mk->n_vocab
                : !strcmp(a, "--n-ctx") ? &mk->n_ctx : !strcmp(a, "--seq-len") ? &p->seq_len
                : !strcmp(a, "--batch") ? &p->batch : !strcmp(a, "--accum") ? &p->accum
                : !strcmp(a, "--eval-every") ? &p->eval_every : !strcmp(a, "--eval-seqs") ? &p->eval_seqs
                : !strcmp(a, "--save-every") ? &p->save_every : !strcmp(a, "--lora") ? &A->lora.rank
                : !strcmp(a, "-t") || !strcmp(a, "--threads") ? &A->n_threads : NULL;
        if (ip) {
            if (!arg_int(cmd, a, v, 1, 1 << 24, ip)) return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) A->init = v;
        else if (!strcmp(a, "-d") || !strcmp(a, "--data")) p->data_path = v;
        else if (!strcmp(a, "--val-data")) p->val_path = v;
        else if (!strcmp(a, "--format")) {
            if (strcmp(v, "paper") && strcmp(v, "duet")) {
                fprintf(stderr, "duet %s: --format '%s' is not duet or paper\n", cmd, v);
                return 2;
            }
            p->data_frames = !strcmp(v, "paper") ? DUET_DATASET_FRAMES_PAPER : DUET_DATASET_FRAMES_DUET;
        }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) p->out_path = v;
        else if (!strcmp(a, "--name")) p->name = v;
        else if (!strcmp(a, "--log")) p->log_path = v;
        else if (!strcmp(a, "--curve")) p->curve_prefix = v;
        else if (collm && !strcmp(a, "--expert-scores")) A->epath = v;
        else if (collm && !strcmp(a, "--val-expert-scores")) A->vepath = v;
        else if (collm && !strcmp(a, "--base-scores")) A->bpath = v;
        else if (collm && !strcmp(a, "--val-base-scores")) A->vbpath = v;
        else if (collm && !strcmp(a, "--head")) A->head_in = v;
        else if (collm && !strcmp(a, "--head-out")) p->head_out = v;
        else if (!strcmp(a, "--steps") || !strcmp(a, "--stop-at")) {
            int n;
            if (!arg_int(cmd, a, v, 1, 1 << 30, &n)) return 2;
            if (!strcmp(a, "--steps")) p->steps = n;
            else p->stop_at = n;
        } else if (!strcmp(a, "--lora-alpha")) {
            if (!arg_float(cmd, a, v, 1e-6, 1e6, &A->lora.alpha)) return 2;
        } else if (!strcmp(a, "--lora-targets")) {
            duet_error e = {0};
            if (duet_lora_targets_parse(v, &A->lora.targets, &e)) {
                fprintf(stderr, "duet %s: --lora-targets: %s\n", cmd, e.msg);
                return 2;
            }
        } else if (!strcmp(a, "--epochs")) {
            if (!arg_float(cmd, a, v, 1e-6, 1e6, &x)) return 2;
            p->epochs = x;
        } else if (!strcmp(a, "--lr")) {
            if (!arg_float(cmd, a, v, 1e-12, 10, &x)) return 2;
            p->lr = x;
        } else if (!strcmp(a, "--warmup")) {
            if (!arg_float(cmd, a, v, 0, 1, &x)) return 2;
            p->warmup = x > 0 ? x : -1;
        } else if (!strcmp(a, "--min-lr")) {
            if (!arg_float(cmd, a, v, 0, 1, &x)) return 2;
            p->min_lr_frac = x > 0 ? x : -1;
        } else if (!strcmp(a, "--weight-decay")) {
            if (!arg_float(cmd, a, v, 0, 10, &x)) return 2;
            p->weight_decay = x;
        } else if (!strcmp(a, "--clip")) {
            if (!arg_float(cmd, a, v, 0, 1e6, &x)) return 2;
            p->clip = x > 0 ? x : -1;
        } else if (!strcmp(a, "--val-frac")) {
            if (!arg_float(cmd, a, v, 1e-6, 0.9, &x)) return 2;
            p->val_frac = x;
        } else if (!strcmp(a, "--decay")) {
            if (strcmp(v, "cosine") && strcmp(v, "linear")) {
                fprintf(stderr, "duet %s: --decay '%s' is not cosine or linear\n", cmd, v);
                return 2;
            }
            p->linear = !strcmp(v, "linear");
        } else if (!strcmp(a, "--seed")) {
            if (!arg_u64(cmd, a, v, &p->seed)) return 2;
        } else if (!strcmp(a, "--init-seed")) {
            if (!arg_u64(cmd, a, v, &mk->seed)) return 2;
        } else {
            fprintf(stderr, "duet %s: unknown option '%s'\n", cmd, a);
            usage(stderr, collm);
            return 2;
        }
    }
    return -1;
}

/* The model to train: the checkpoint of a resumed run, a new random model, or the base of -m;
 * with --lora, the base of -m with adapters (a resumed run's from OUT). */
static int load_trainee(const train_args *A, duet_lm_train_params *p, int resuming, char *tmp_init,
                        size_t cap, duet_lm **m, duet_error *err) {
    const char *init = A->init;
    if (A->lora.rank) {
        duet_lm_lora_params lp = A->lora;
        lp.seed = A->mk.seed;
        if (resuming) lp.init = p->out_path; /* the adapter file; the sidecar has the rest */
        return duet_lm_load_lora(init, A->n_threads, &lp, m, err);
    }
    if (resuming) {
        init = p->out_path; /* the checkpoint carries the weights; the sidecar the rest */
    } else if (!init) {
        duet_make_model_params mk = A->mk;
        if (!mk.n_head_kv) mk.n_head_kv = mk.n_head;
        snprintf(tmp_init, cap, "%s.init.gguf", p->out_path);
        int rc = duet_make_model(&mk, tmp_init, err);
        if (rc) return rc;
        init = tmp_init;
    }
    int rc = duet_lm_load(init, A->n_threads, m, err);
    if (!rc && tmp_init[0]) {
        unlink(tmp_init); /* mapped: stays readable until the model is freed */
        if (!p->name) {
            const char *b = strrchr(p->out_path, '/');
            p->name = b ? b + 1 : p->out_path;
        }
    }
    return rc;
}

/* --weak-supervision-head: the weak-supervision head alone, the base unchanged. */
static int weak_head_only(const train_args *A) {
    if (!A->bpath || !A->epath || !A->p.head_out) {
        fprintf(stderr, "duet train collm --weak-supervision-head: needs --base-scores, "
                        "--expert-scores and --head-out\n");
        return 2;
    }
    duet_error err = {0};
    duet_scores *B = NULL, *E = NULL;
    duet_head *h = NULL;
    duet_head_train_params hp = {.objective = DUET_HT_WEAK, .seed = A->p.seed};
    int rc = duet_scores_open(A->bpath, &B, &err);
    if (!rc) rc = duet_scores_open(A->epath, &E, &err);
    if (!rc) rc = duet_head_train(B, E, &hp, &h, NULL, &err);
    if (!rc) rc = duet_head_save(h, A->p.head_out, &err);
    if (!rc && !A->quiet)
        fprintf(stderr, "duet %s: wrote the weak-supervision head %s\n", A->cmd, A->p.head_out);
    if (rc) fprintf(stderr, "duet %s: %s\n", A->cmd, err.msg);
    duet_head_free(h);
    duet_scores_close(B);
    duet_scores_close(E);
    return rc ? 1 : 0;
}

int cmd_train(int argc, char **argv) {
    train_args A;
    int prc = parse_args(argc, argv, &A);
    if (prc >= 0) return prc;
    int collm = A.collm, quiet = A.quiet, weak_only = A.weak_only, weak = A.weak;
    const char *cmd = A.cmd, *init = A.init, *epath = A.epath, *vepath = A.vepath, *bpath = A.bpath,
               *vbpath = A.vbpath, *head_in = A.head_in;
    duet_make_model_params mk = A.mk;
    duet_lm_train_params p = A.p;
    duet_error err = {0};
    int rc = 0;
    duet_scores *E = NULL, *VE = NULL, *BS = NULL, *VBS = NULL;
    duet_head *h = NULL;
    duet_lm *m = NULL;
    char tmp_init[1100] = "";
    if (weak && weak_only) {
        fprintf(stderr, "duet %s: --weak-supervision (base and head) or --weak-supervision-head "
                        "(the head alone), not both\n", cmd);
        return 2;
    }
    if (collm && weak_only) return weak_head_only(&A);
    if (!p.data_path || !p.out_path || (!init && !mk.n_embd) ||
        (collm && (!epath || !p.head_out || (!head_in && !bpath)))) {
        fprintf(stderr, "duet %s: need -d DATA, -o OUT and -m INIT (or the --n-* shape)%s\n", cmd,
                collm ? ", --expert-scores, --head-out and --head or --base-scores" : "");
        usage(stderr, collm);
        return 2;
    }
    if (weak && (!bpath || !init || (vepath && !vbpath) || (vbpath && !vepath))) {
        fprintf(stderr, "duet %s --weak-supervision: needs -m BASE and --base-scores (the base's "
                        "own scores of DATA, for the labels); --val-expert-scores and "
                        "--val-base-scores go together\n", cmd);
        return 2;
    }
    if (A.lora.rank && (!init || mk.n_embd)) {
        fprintf(stderr, "duet %s: --lora trains adapters on the base given with -m (not a new "
                        "model)\n", cmd);
        return 2;
    }
    if (!A.lora.rank && (A.lora.alpha > 0 || A.lora.targets)) {
        fprintf(stderr, "duet %s: --lora-alpha and --lora-targets go with --lora R\n", cmd);
        return 2;
    }
    char sidecar[1100];
    snprintf(sidecar, sizeof sidecar, "%s.optim", p.out_path);
    int resuming = p.resume && access(sidecar, R_OK) == 0;
    if (!resuming && !init && (!mk.n_vocab || !mk.n_layer || !mk.n_head || !mk.n_ff)) {
        fprintf(stderr, "duet %s: a new model needs --n-embd, --n-layer, --n-head, --n-ff "
                        "and --n-vocab\n", cmd);
        return 2;
    }
    if ((rc = load_trainee(&A, &p, resuming, tmp_init, sizeof tmp_init, &m, &err))) goto done;
    if (collm) {
        if ((rc = duet_scores_open(epath, &E, &err))) goto done;
        if (vepath && (rc = duet_scores_open(vepath, &VE, &err))) goto done;
        p.expert = E;
        p.val_expert = VE;
        /* a resumed run continues the head where its checkpoint left it */
        const char *hpath = resuming && access(p.head_out, R_OK) == 0 ? p.head_out : head_in;
        if (hpath) {
            rc = duet_head_load(hpath, duet_lm_source(m), &h, &err);
        } else if (weak) { /* the official start: the mean of the base's output rows */
            rc = duet_head_init(duet_lm_source(m), &h, &err);
        } else {
            duet_head_train_params hp = {.objective = DUET_HT_WEAK, .seed = p.seed};
            if (!(rc = duet_scores_open(bpath, &BS, &err))) rc = duet_head_train(BS, E, &hp, &h, NULL, &err);
        }
        if (!rc && weak && !(rc = duet_scores_open(bpath, &BS, &err)) && vbpath)
            rc = duet_scores_open(vbpath, &VBS, &err);
        if (rc) goto done;
        p.weak_base = weak ? BS : NULL;
        p.val_weak_base = VBS;
        if (duet_head_features(h) != DUET_HEAD_FEAT_HIDDEN) {
            rc = DUET_ERR_ARG;
            snprintf(err.msg, sizeof err.msg, "%s: joint training takes a hidden-state head "
                     "(the paper's), not one with confidence features",
                     hpath ? hpath : "the weak-supervision head");
            goto done;
        }
        p.u_init = duet_head_u(h);
    }
    cli_progress pg;
    cli_progress_init(&pg, quiet);
    if (pg.show) {
        p.progress = progress;
        p.ud = &pg;
    }
    duet_lm_train_result r;
    rc = duet_lm_train(m, &p, &r, &err);
    cli_progress_end(&pg);
    if (rc == DUET_LM_STOPPED) {
        if (!quiet)
            fprintf(stderr, "duet %s: stopped after step %lld: %s and %s.optim continue with "
                            "--resume\n", cmd, (long long)r.steps, p.out_path, p.out_path);
        rc = 0;
        goto done;
    }
    if (rc) goto done;
    if (!quiet)
        fprintf(stderr, "duet %s: wrote %s%s%s: %lld steps, %lld loss tokens, held-out loss %.4f -> "
                        "%.4f (best %.4f), %.0f tokens/s on %d threads, %.1f s\n", cmd, p.out_path,
                collm ? " and " : "", collm ? p.head_out : "", (long long)r.steps,
                (long long)r.tokens, r.first_val, r.last_val, r.best_val, r.tok_per_s, r.n_threads,
                r.seconds);
done:
    if (rc) fprintf(stderr, "duet %s: %s\n", cmd, err.msg);
    if (tmp_init[0]) unlink(tmp_init);
    duet_head_free(h);
    duet_scores_close(E);
    duet_scores_close(VE);
    duet_scores_close(BS);
    duet_scores_close(VBS);
    duet_lm_free(m);
    return rc ? 1 : 0;
}
