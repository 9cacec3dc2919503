/*
 * lm.h: the llama trainer (internal): parameters in one flat F32 array, a forward pass that
 * keeps every activation the backward pass needs, hand-written backward passes for every op,
 * AdamW with warm-up and decay, gradient clipping, GGUF checkpoints (llm.c in spirit).
 *
 * Shapes. A batch is B sequences of T positions (padded; padding has loss weight 0, and
 * causal attention keeps it from touching earlier positions). Parameters follow the GGUF
 * tensor list of a llama model (lm_layout), row-major [n_out][n_in] like the engine's.
 *
 * Loss. Per position t with weight w_t (0 = not a response token):
 *   LM_LOSS_CE:    -log softmax(z_t)[y_t]
 *   LM_LOSS_COLLM: -logsumexp(log sig(-s_t) + lpb_t, log sig(s_t) + lpe_t), s_t = u . h_t,
 *                  h_t the final-norm hidden state, lpe_t the expert's log-prob of y_t
 *                  (docs/method.md section 5): the base and u learn together
 *   LM_LOSS_WEAK:  2/3 * CE' + 1/3 * BCE(s_t, z_t) with positive weight 5: the official
 *                  weak-supervision trainer. CE' = -log softmax([z_t, s_t])[y_t], the deferral
 *                  logit s_t = u . h_t taking part in the normaliser as the extra output row
 *                  it is there; z_t (in lm_batch.lpe) is 1 where the expert's top token is the
 *                  target and the base's is not. Both terms average over the same tokens.
 * and the total is sum_t w_t loss_t * scale (scale = 1 / tokens of the whole accumulated
 * step, so micro-batches add up to the mean).
 *
 * Determinism: every output element (activation or gradient) is computed by one thread with a
 * fixed order of summation, and reductions over threads run in a fixed order of fixed-size
 * chunks, so results are bit-identical for any thread count (what `make models` relies on).
 *
 * The ops are written once for a real type R (lm_impl.h) and compiled for float here; the
 * tests compile them for double to check every backward pass by finite differences.
 */
#ifndef DUET_TRAIN_LM_H
#define DUET_TRAIN_LM_H

#include <stdint.h>
#include <stdio.h>

#include "duet.h"
#include "base/threadpool.h"
#include "engine/model.h"

typedef struct lm_config {
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, head_dim;
    int tied;                  /* output matrix = token embedding */
    float rms_eps;
    float inv_freq[256];       /* [head_dim/2] RoPE frequencies (the engine's, llama3 too) */
    int rope_neox;             /* 1: RoPE rotates (x[i], x[i + hd/2]) (qwen2, qwen3); 0: pairs */
} lm_config;

/* One tensor of the flat parameter array. */
typedef struct lm_tensor {
    char name[48];             /* GGUF name ("blk.0.attn_q.weight") */
    int64_t n_in, n_out;       /* n_out = 1 for vectors */
    size_t off;                /* element offset in the flat array */
    int decay;                 /* matrices take weight decay, norm vectors do not */
} lm_tensor;

/* Offsets of each tensor (element offsets into the flat array). */
typedef struct lm_layer_off { size_t attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down; } lm_layer_off;
typedef struct lm_layout {
    size_t tok_embd, output_norm, output;   /* output == tok_embd when tied */
    lm_layer_off *layer;                     /* [n_layer] */
    lm_tensor *t;                            /* [n_t] in GGUF order */
    int n_t;
    size_t n_params;
} lm_layout;

int lm_layout_init(lm_layout *L, const lm_config *c, duet_error *err);
void lm_layout_free(lm_layout *L);

enum { LM_LOSS_CE = 0, LM_LOSS_COLLM = 1, LM_LOSS_WEAK = 2 };
#define LM_WEAK_CE_SHARE (2.0 / 3.0)   /* LM_LOSS_WEAK: weight of the token cross-entropy */
#define LM_WEAK_POS_WEIGHT 5.0         /* LM_LOSS_WEAK: BCE weight of a positive label */

/* ---- LoRA on a frozen base ---------------------------------------------------------------
 * The base's weights stay where the engine loaded them, in the file's type: matrices are
 * multiplied straight from their blocks (the engine's kernels forward; W^T dy row by row
 * backward), norms are read as F32. Only the adapters (and u) are parameters: for each
 * adapted matrix W (n_out x n_in), A (r x n_in) and B (n_out x r), and the product becomes
 * W x + s B (A x) with s = alpha / r, as the engine applies a LoRA file at scale 1. */
enum { LM_MAT_Q, LM_MAT_K, LM_MAT_V, LM_MAT_O, LM_MAT_GATE, LM_MAT_UP, LM_MAT_DOWN, LM_MAT_OUT,
       LM_N_MAT };

typedef struct lm_frozen_layer {
    const float *attn_norm, *ffn_norm;   /* [n_embd] */
    mtensor w[7];                        /* LM_MAT_Q .. LM_MAT_DOWN */
    const float *bq, *bk, *bv;           /* q/k/v biases (qwen2), or NULL */
    const float *q_norm, *k_norm;        /* [head_dim] per-head RMSNorm before RoPE (qwen3), or NULL */
} lm_frozen_layer;

typedef struct lm_frozen {
    mtensor tok_embd, output;            /* output = tok_embd when tied */
    const float *output_norm;
    lm_frozen_layer *layer;              /* [n_layer] */
} lm_frozen;

typedef struct lm_lora {
    int rank;
    float alpha, scale;                  /* scale = alpha / rank, in float as the engine's */
    unsigned targets;                    /* bit k: matrix kind k (LM_MAT_*) is adapted */
    /* element offsets of A and B in the flat array, slot lm_lora_slot(); SIZE_MAX: none */
    size_t *a_off, *b_off;
} lm_lora;

/* Slot of matrix kind k of layer l (the output: any l). */
static inline int lm_lora_slot(const lm_config *c, int l, int k) {
    return k == LM_MAT_OUT ? 7 * c->n_layer : 7 * l + k;
}
/* Input and output widths of matrix kind k. */
static inline void lm_mat_dims(const lm_config *c, int k, int *in, int *out) {
    int E = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim;
    static const int which_in[LM_N_MAT] = {0, 0, 0, 1, 0, 0, 2, 0};
    static const int which_out[LM_N_MAT] = {1, 3, 3, 0, 2, 2, 0, 4};
    int dims[5] = {E, Q, c->n_ff, KV, c->n_vocab};
    *in = dims[which_in[k]];
    *out = dims[which_out[k]];
}

/* ---- the float model ------------------------------------------------------------------- */
/* The struct behind the public handle duet_lm (duet.h); the library and the tests use it by
 * value as lm_model. */
typedef struct duet_lm {
    lm_config c;
    lm_layout L;
    float *w, *g;              /* [n_params] weights and gradients */
    float *u, *gu;             /* [n_embd] deferral head (joint training), NULL otherwise */
    duet_model *src;           /* the GGUF the model came from (tokenizer, metadata) */
    lm_lora *lora;             /* LoRA training: w holds only the adapters; NULL: every weight */
    lm_frozen *fz;             /* LoRA training: the frozen base (views into src) */
    threadpool *tp;
    int n_threads;
} lm_model;

/* The trainer's shape of a loaded model (refuses a head_dim the RoPE table cannot hold). */
int lm_config_init(lm_config *c, const duet_model *s, duet_error *err);
/* Load every weight of a llama GGUF (any supported type) as F32. n_threads as the engine's. */
int lm_model_load(const char *path, int n_threads, lm_model *m, duet_error *err);
void lm_model_free(lm_model *m);
/* Write the weights as an F32 GGUF with the source file's metadata (tokenizer, hparams);
 * general.name is set to name when non-NULL. Atomic (temp file + rename). */
int lm_model_save(const lm_model *m, const char *path, const char *name, duet_error *err);

/* LoRA (lm_lora.c). Load the base at path and lay out adapters of rank p->rank on the kinds
 * of p->targets of every layer, A uniform in +-1/sqrt(n_in) (PEFT's kaiming-uniform) from
 * p->seed and B zero, so step 0 is the base; or, with p->init, the adapter file's values
 * (its rank, alpha and kinds). llama, qwen2 (frozen q/k/v biases) and qwen3 (frozen
 * per-head q/k norms); other architectures are refused by name. */
int lm_lora_load(const char *path, int n_threads, const duet_lm_lora_params *p, lm_model *m,
                 duet_error *err);
/* The adapters as llama.cpp's LoRA GGUF (F32 tensors), atomically. lm_model_save calls it
 * for a LoRA model. */
int lm_lora_save(const lm_model *m, const char *path, const char *name, duet_error *err);
/* Views of a loaded model's weights as a frozen base (allocates the layer array). */
int lm_frozen_init(lm_frozen *fz, const duet_model *src, duet_error *err);
void lm_frozen_free(lm_frozen *fz);
/* The adapter layout: tensors "<base>.lora_a" / ".lora_b" in GGUF order, offsets in lo. */
int lm_lora_layout(lm_layout *L, lm_lora *lo, const lm_config *c, int rank, float alpha,
                   unsigned targets, duet_error *err);
void lm_lora_free(lm_lora *lo);
/* "q,k,v,..." of target bits (--lora-targets' names). */
void lm_lora_targets_str(unsigned targets, char *buf, size_t cap);

/* Activations of one micro-batch (allocated once for B x T). */
typedef struct lm_acts lm_acts;
int lm_acts_new(const lm_model *m, int B, int T, lm_acts **out, duet_error *err);
void lm_acts_free(lm_acts *a);

typedef struct lm_batch {
    int B, T;
    const int32_t *tokens;     /* [B][T] inputs */
    const int32_t *targets;    /* [B][T] next tokens */
    const float *weight;       /* [B][T] loss weights (0 or 1) */
    const float *lpe;          /* [B][T] expert log-probs of the targets (LM_LOSS_COLLM), or
                                  the weak labels 0/1 (LM_LOSS_WEAK) */
    int loss;                  /* LM_LOSS_* */
    double scale;              /* gradient/loss scale (1 / weighted tokens of the step) */
} lm_batch;

/* Forward pass; returns sum_t w_t loss_t (unscaled). With logits != NULL the logits [B*T][V]
 * are copied out (tests). With backward = 1 the gradients (scaled by b->scale) are ADDED to
 * m->g (and m->gu for COLLM): zero them at the start of a step with lm_zero_grad. */
double lm_step(lm_model *m, lm_acts *a, const lm_batch *b, int backward, float *logits);
void lm_zero_grad(lm_model *m);
/* Per-position results of the last forward pass of a: log-prob of the target under the
 * model, and (COLLM) the head's score s_t. Arrays [B*T]. */
const float *lm_acts_lp(const lm_acts *a);
const float *lm_acts_score(const lm_acts *a);
/* Final-norm hidden states [B*T][n_embd] of the last forward pass. */
const float *lm_acts_hidden(const lm_acts *a);

/* ---- optimisation ------------------------------------------------------------------------ */
typedef struct lm_adamw {
    double lr, beta1, beta2, eps, weight_decay, clip;   /* clip <= 0: off */
    int64_t step;
    float *m, *v;              /* [n_params (+ n_embd for u)] */
    size_t n;
} lm_adamw;

int lm_adamw_init(lm_adamw *o, size_t n, duet_error *err);
void lm_adamw_free(lm_adamw *o);
/* Global gradient norm (weights and, when present, u), a fixed-order reduction. */
double lm_grad_norm(const lm_model *m);
/* One AdamW update at learning rate lr (clipping to o->clip first); returns the norm before
 * clipping. */
double lm_adamw_update(lm_adamw *o, lm_model *m, double lr);

/* Learning rate at step (1-based) of steps: linear warm-up over warmup steps, then linear or
 * cosine decay to lr * min_frac. */
double lm_lr_at(double lr, int64_t step, int64_t steps, int64_t warmup, int cosine, double min_frac);

/* Optimizer state sidecar (resume): step, moments, and the caller's RNG state. */
int lm_adamw_save(const lm_adamw *o, uint64_t rng, const char *path, duet_error *err);
int lm_adamw_load(lm_adamw *o, uint64_t *rng, const char *path, duet_error *err);

#endif
