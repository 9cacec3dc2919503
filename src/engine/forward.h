/*
 * forward.h: the transformer forward pass over a batch of rows: tokens of one or several
 * sequences, each at consecutive positions against its own KV cache. Work buffers are sized
 * once for n_batch rows; the KV cache grows with use (fwd_reserve) up to n_ctx positions, so
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
    int cap_pos;      /* positions the cache holds per (layer, kv head): a multiple of 8 */
    void *k_cache;    /* [n_layer][n_head_kv][cap_pos/8][head_dim][8] (attn_k_index) */
    void *v_cache;    /* [n_layer][n_head_kv][cap_pos][head_dim] */
    float *x;         /* [n_batch][n_embd] residual stream */
    float *xb;        /* [n_batch][n_embd] normed input of a block */
    float *q;         /* [n_batch][n_head*head_dim] */
    float *k, *v;     /* [n_batch][n_head_kv*head_dim] */
    float *att;       /* [n_batch][n_head*head_dim] attention output */
    float *proj;      /* [n_batch][n_embd] output of wo / w_down */
    float *hg, *hu;   /* [n_batch][n_ff] gate and up */
    float *scores;    /* [n_threads][n_ctx] */
    void *scratch;    /* matmul activation conversion */
    float *lora_t, *lora_u; /* [n_batch][rank / n_out] adapter products (NULL: no adapters) */
    int lora_rank_cap, lora_out_cap;
    /* per row of a batch: its sequence's state, position, token and output row (or NULL) */
    struct fwd_state **row_st;
    int *row_pos;
    int32_t *row_tok;
    float **row_out;
} fwd_state;

/* One sequence's part of a batch: tokens[0..n) at positions pos.. of st's cache; outputs
 * (final-norm hidden states) for tokens first_out..n-1 into hidden, one row of n_embd each. */
typedef struct fwd_seq {
    struct fwd_state *st;
    const int32_t *tokens;
    int n, pos, first_out;
    float *hidden;
} fwd_seq;

/* type_k, type_v: the K and V caches' element types, DT_F32 or DT_F16 (fwd_kv_type_ok). */
int fwd_init(fwd_state *st, const duet_model *m, int n_ctx, int n_batch, int type_k, int type_v,
             duet_error *err);
/* 1 when the cache can hold elements of this type. */
int fwd_kv_type_ok(int type);
void fwd_free(fwd_state *st);

/* Make the cache hold at least n_pos positions (<= n_ctx), keeping what it holds. */
int fwd_reserve(fwd_state *st, int n_pos, duet_error *err);
/* Bytes of the K and V caches as allocated now. */
size_t fwd_kv_bytes(const fwd_state *st);

/* Evaluate the rows of n_seqs sequences in one pass, with ws's work buffers: every matrix
 * is read once for all rows, attention runs per row against its own sequence's cache. The
 * rows total at most ws->n_batch, every sequence's n_ctx is at most ws->n_ctx, all share
 * ws's model, and each sequence's cache holds pos + n positions (fwd_reserve). A row's
 * result is the same bits whatever else is in the batch. */
void fwd_eval_batch(fwd_state *ws, const fwd_seq *seqs, int n_seqs);

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
