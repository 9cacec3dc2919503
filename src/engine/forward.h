/*
 * forward.h: the transformer forward pass over a batch of tokens at consecutive positions,
 * against a KV cache. Owned buffers are sized once for n_batch tokens and n_ctx positions;
 * nothing is allocated per token.
 */
#ifndef DUET_FORWARD_H
#define DUET_FORWARD_H

#include "engine/model.h"

typedef struct fwd_state {
    const duet_model *m;
    int n_ctx, n_batch;
    const float *rope_inv_freq; /* the model's table for this n_ctx (LongRoPE: short or long) */
    int type_k, type_v; /* cache element types: DT_F32 or DT_F16 */
    void *k_cache;    /* [n_layer][n_head_kv][n_ctx/8 rounded up][head_dim][8] (attn_k_index) */
    void *v_cache;    /* [n_layer][n_head_kv][n_ctx rounded up to 8][head_dim] */
    float *x;         /* [n_batch][n_embd] residual stream */
    float *xb;        /* [n_batch][n_embd] normed input of a block */
    float *q;         /* [n_batch][n_head*head_dim] */
    float *k, *v;     /* [n_batch][n_head_kv*head_dim] */
    float *att;       /* [n_batch][n_head*head_dim] attention output */
    float *proj;      /* [n_batch][n_embd] output of wo / w_down */
    float *hg, *hu;   /* [n_batch][n_ff] gate and up */
    float *scores;    /* [n_threads][n_ctx] */
    void *scratch;    /* matmul activation conversion */
} fwd_state;

/* type_k, type_v: the K and V caches' element types, DT_F32 or DT_F16 (fwd_kv_type_ok). */
int fwd_init(fwd_state *st, const duet_model *m, int n_ctx, int n_batch, int type_k, int type_v,
             duet_error *err);
/* 1 when the cache can hold elements of this type. */
int fwd_kv_type_ok(int type);
void fwd_free(fwd_state *st);

/* Evaluate tokens[0..n) at positions pos..pos+n-1 (n <= n_batch, pos + n <= n_ctx).
 * Outputs only for tokens first_out..n-1 (a prefill that needs only the last token's logits
 * computes only those): the final-norm hidden state of token first_out + r goes to
 * hidden + r*n_embd and its logits to logits + r*n_vocab; logits NULL: hidden states only
 * (fwd_logits later, if at all: the output matrix is often the largest single weight). */
void fwd_eval(fwd_state *st, const int32_t *tokens, int n, int pos, int first_out,
              float *hidden, float *logits);

/* Logits of n final-norm hidden states (rows of n_embd) into logits (rows of n_vocab). */
void fwd_logits(fwd_state *st, const float *hidden, int n, float *logits);

#endif
