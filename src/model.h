/*
 * model.h: architecture hyperparameters and tensor binding for the llama family.
 * A duet_model owns: hyperparameters read from GGUF metadata, views of every weight (into
 * the file mapping, or into an anonymous copy), the tokenizer, and the compute pool.
 * Invariants after duet_model_load: every tensor's shape was checked against the
 * hyperparameters before anything is indexed; matrices have a supported type; norm vectors
 * are f32 (converted at load when stored otherwise).
 */
#ifndef DUET_MODEL_H
#define DUET_MODEL_H

#include "duet.h"
#include "gguf.h"
#include "threadpool.h"
#include "tokenizer.h"

/* A weight matrix: n_out rows of n_in elements of type `type`, row-major. */
typedef struct mtensor {
    const void *data; /* [n_out][row bytes] */
    int type;
    int64_t n_in;     /* ne[0] */
    int64_t n_out;    /* ne[1] */
} mtensor;

typedef struct layer_weights {
    const float *attn_norm;  /* [n_embd] */
    mtensor wq;              /* [n_head*head_dim][n_embd] */
    mtensor wk;              /* [n_head_kv*head_dim][n_embd] */
    mtensor wv;              /* [n_head_kv*head_dim][n_embd] */
    mtensor wo;              /* [n_embd][n_head*head_dim] */
    const float *ffn_norm;   /* [n_embd] */
    mtensor w_gate;          /* [n_ff][n_embd]  (ffn_gate, llama2.c w1) */
    mtensor w_up;            /* [n_ff][n_embd]  (ffn_up, w3) */
    mtensor w_down;          /* [n_embd][n_ff]  (ffn_down, w2) */
} layer_weights;

struct duet_model {
    duet_hparams hp;
    char path[512];
    gguf_file *gguf;          /* kept open while weights are views into its mapping */
    tokenizer *tok;
    threadpool *tp;
    mtensor tok_embd;         /* [n_vocab][n_embd] */
    const float *output_norm; /* [n_embd] */
    mtensor output;           /* [n_vocab][n_embd] (= tok_embd when tied) */
    layer_weights *layers;    /* [n_layer] */
    float *rope_inv_freq;     /* [head_dim/2]: theta_i per position (base, scale, llama3 factors) */
    float **owned_f32;        /* norm vectors converted to f32 */
    int n_owned_f32;
    void *weights;            /* anonymous copy of the data section (use_mmap == 0) */
    size_t weights_size;
    int vocab_only;
};

#endif
