/*
 * model.h: architecture hyperparameters and tensor binding for the architectures duet runs
 * (general.architecture: llama, qwen2, qwen3, phi3, gemma2; see arch_desc in model.c).
 * A duet_model owns: hyperparameters read from GGUF metadata, views of every weight (into
 * the file mapping, or into an anonymous copy), the tokenizer, and the compute pool.
 * Invariants after duet_model_load: every tensor's shape was checked against the
 * hyperparameters before anything is indexed; matrices have a supported type; norm vectors
 * are f32 (converted at load when stored otherwise).
 */
#ifndef DUET_MODEL_H
#define DUET_MODEL_H

#include "duet.h"
#include "base/common.h"
#include "base/threadpool.h"
#include "format/gguf.h"
#include "text/tokenizer.h"

/* A weight matrix: n_out rows of n_in elements of type `type`, row-major. */
typedef struct mtensor {
    const void *data; /* [n_out][row bytes] */
    int type;
    int64_t n_in;     /* ne[0] */
    int64_t n_out;    /* ne[1] */
} mtensor;

/* Fused matrices (phi3's attn_qkv, ffn_up holding gate and up) are bound as row ranges of
 * the one stored matrix, so the forward pass never needs to know they were fused. */
typedef struct layer_weights {
    const float *attn_norm;  /* [n_embd] */
    mtensor wq;              /* [n_head*head_dim][n_embd] */
    mtensor wk;              /* [n_head_kv*head_dim][n_embd] */
    mtensor wv;              /* [n_head_kv*head_dim][n_embd] */
    const float *bq, *bk, *bv; /* [n_head*head_dim], [n_head_kv*head_dim] x2, or NULL (qwen2) */
    const float *q_norm, *k_norm; /* [head_dim] per-head RMSNorm before RoPE, or NULL (qwen3) */
    mtensor wo;              /* [n_embd][n_head*head_dim] */
    const float *attn_post_norm; /* [n_embd] on the attention output, or NULL (gemma2) */
    const float *ffn_norm;   /* [n_embd] */
    mtensor w_gate;          /* [n_ff][n_embd]  (ffn_gate, llama2.c w1) */
    mtensor w_up;            /* [n_ff][n_embd]  (ffn_up, w3) */
    mtensor w_down;          /* [n_embd][n_ff]  (ffn_down, w2) */
    const float *ffn_post_norm; /* [n_embd] on the FFN output, or NULL (gemma2) */
    int swa;                 /* 1: attends only to the last n_swa positions */
} layer_weights;

enum { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3, ARCH_PHI3, ARCH_GEMMA2 };

/* How an architecture computes, beyond the shapes in duet_hparams. */
typedef struct arch_params {
    int id;                  /* ARCH_* */
    int rope_neox;           /* 1: rotate (x[i], x[i + n_rot/2]); 0: (x[2i], x[2i+1]) */
    int n_rot;               /* leading dims of each head that RoPE rotates (<= head_dim) */
    float rope_mscale;       /* rotated dims are scaled by this (rope.scaling.attn_factor) */
    int ffn_gelu;            /* 1: GELU (tanh form) on the gate; 0: SiLU */
    float embd_scale;        /* token embeddings are multiplied by this (gemma2: sqrt(n_embd)) */
    float attn_scale;        /* q.k is multiplied by this (1/sqrt(head_dim) or gemma2's) */
    float attn_softcap;      /* > 0: scores become cap * tanh(score / cap) */
    float final_softcap;     /* > 0: the same on the logits */
    int n_swa;               /* sliding-window size of layers with swa set (0: none) */
} arch_params;

struct duet_model {
    duet_hparams hp;
    arch_params ap;
    char path[512];
    gguf_file *gguf;          /* kept open while weights are views into its mapping */
    tokenizer *tok;
    threadpool *tp;
    mtensor tok_embd;         /* [n_vocab][n_embd] */
    const float *output_norm; /* [n_embd] */
    mtensor output;           /* [n_vocab][n_embd] (= tok_embd when tied) */
    layer_weights *layers;    /* [n_layer] */
    float *rope_inv_freq;     /* [n_rot/2]: theta_i per position (base, scale, llama3 factors;
                                 LongRoPE's short factors) */
    float *rope_inv_freq_long; /* [n_rot/2] with LongRoPE's long factors, or NULL: used by
                                 sessions whose n_ctx exceeds n_ctx_orig */
    int n_ctx_orig;           /* rope.scaling.original_context_length (default n_ctx_train) */
    float **owned_f32;        /* norm vectors converted to f32 */
    int n_owned_f32;
    void *weights;            /* anonymous copy of the data section (use_mmap == 0) */
    size_t weights_size;
    int vocab_only;
    struct lora_use **lora;   /* [model_n_matrices] adapters on each matrix (lora.c), or NULL */
    int lora_rank_max, lora_out_max; /* over attached adapters: sizes the forward's scratch */
    int n_fwd;                /* forward states made with the model and not yet freed: adapters
                                 may only be attached while there are none (they size scratch) */
};

/* Matrix i of the model_n_matrices a token's forward pass multiplies by: the output (0), then
 * the seven of each layer l at 1 + 7l + k, k in the order of MAT_* (the index adapters use). */
enum { MAT_Q, MAT_K, MAT_V, MAT_O, MAT_GATE, MAT_UP, MAT_DOWN };
int model_n_matrices(const duet_model *m);
mtensor *model_matrix(duet_model *m, int i);
/* Drop the model's adapter bindings (lora.c; the adapters themselves belong to the caller).
 * Declared here, not in lora.h, so that the model does not include the adapters' header
 * while they include the model's. */
void lora_model_free(duet_model *m);
/* DUET_OK when every element of tensor t (its data at data) is finite, else an error naming
 * path, the tensor and the element. */
int model_tensor_finite(const char *path, const gguf_tensor *t, const void *data, duet_error *err);

/* The bytes of token after prev (duet_token_to_piece) appended to out whole, however long:
 * the one grow-to-fit caller of the piece function inside the library. 0 or DUET_ERR_NOMEM. */
int model_piece_append(const duet_model *m, int32_t prev, int32_t token, duet_buf *out);

#endif
