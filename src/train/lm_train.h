/*
 * lm_train.h: training runs of the llama trainer (internal): language-model pre-training on
 * plain text, supervised fine-tuning on prompt/response JSONL (loss on response tokens only),
 * and Co-LLM's joint training of the base and its deferral head (docs/method.md section 5).
 *
 * Data. The dataset is cut into sequences exactly as `duet score` cuts it (duet_scores_plan_build with
 * n_ctx = T + 1): plain-text paragraphs as windows of BOS + T tokens, JSONL examples as
 * BOS + prompt + "\n" + response + EOS. Position i of a sequence predicts token i + 1 and
 * carries loss iff token i + 1 is a response token. Held-out: a separate file, or a seeded
 * share of the examples (whole examples, so no window of a held-out paragraph is trained on).
 * Step s uses the sequences s*B*accum .. of the epoch's seeded permutation, so a resumed run
 * continues bit for bit (the data order needs no saved state).
 *
 * Joint training (expert != NULL): the expert's log-probs come from a `duet score` file made
 * with --tokenizer-of BASE on the same data and context (n_ctx = T + 1); every sequence and
 * gold token is checked against the trainer's own tokenisation before training starts.
 */
#ifndef DUET_TRAIN_LM_TRAIN_H
#define DUET_TRAIN_LM_TRAIN_H

#include "train/lm.h"
#include "learn/scores.h"

typedef struct lm_progress {
    int64_t step, steps;
    double loss;          /* mean training loss per token since the last report */
    double val_loss;      /* last held-out loss (NaN before the first evaluation) */
    double lr, grad_norm;
    double tok_per_s;     /* weighted + context tokens through the model per second */
    double eta_s;
    int is_eval;          /* 1: this report follows a held-out evaluation */
} lm_progress;

typedef struct lm_train_params {
    const char *data_path;       /* training data (JSONL or plain text) */
    const char *val_path;        /* held-out data; NULL: val_frac of the examples */
    double val_frac;             /* 0 = 0.05 */
    int seq_len;                 /* T (0 = min(n_ctx_train - 1, 128)) */
    int batch;                   /* sequences per micro-batch (0 = 8) */
    int accum;                   /* micro-batches per step (0 = 1) */
    int64_t steps;               /* 0: epochs */
    double epochs;               /* used when steps = 0 (0 = 1) */
    double lr;                   /* peak (0 = 1e-3) */
    double warmup;               /* fraction of the steps (0 = 0.04, the paper's; < 0: none) */
    int linear;                  /* 1: linear decay (the paper's), 0: cosine */
    double min_lr_frac;          /* decay floor as a fraction of lr (0 = 0.1; < 0: 0) */
    double weight_decay;         /* AdamW, matrices only (default 0) */
    double clip;                 /* 0 = 1.0; < 0: off */
    uint64_t seed;
    int eval_every;              /* steps between held-out evaluations (0 = steps / 20) */
    int eval_seqs;               /* held-out sequences evaluated (0 = all, at most 512) */
    int save_every;              /* steps between checkpoints (0 = only at the end) */
    int resume;                  /* continue from out_path + its .optim sidecar when present */
    int64_t stop_at;             /* > 0: stop after this step with a resumable checkpoint */
    const char *out_path;        /* the trained model, F32 GGUF */
    const char *name;            /* general.name of the output (NULL: keep the source's) */
    const char *log_path;        /* JSON log (NULL: none) */
    const char *curve_prefix;    /* PREFIX.csv and PREFIX.svg of the losses (NULL: none) */
    /* joint Co-LLM training */
    const duet_scores *expert;      /* expert scores of data_path (NULL: language modelling) */
    const duet_scores *val_expert;  /* expert scores of val_path (with val_path) */
    const float *u_init;         /* [n_embd] head start (the weak-supervision head) */
    const char *head_out;        /* the trained head (sidecar GGUF) */
    void (*progress)(void *ud, const lm_progress *p);
    void *ud;
} lm_train_params;

typedef struct lm_train_result {
    int64_t steps, tokens;       /* tokens = weighted (loss) tokens trained on */
    int n_train_seq, n_val_seq;
    double first_val, last_val, best_val;
    double seconds, tok_per_s;
    int n_threads;
} lm_train_result;

#define LM_STOPPED 2   /* positive status: stopped at stop_at, resumable */

/* DUET_OK, LM_STOPPED, or an error. */
int lm_train(lm_model *m, const lm_train_params *p, lm_train_result *res, duet_error *err);

#endif
