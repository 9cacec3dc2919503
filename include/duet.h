/*
 * duet.h: the one public header of libduet.
 *
 * duet makes two language models write one answer together (Co-LLM, Shen et al. 2024).
 * This header is the manual. Conventions:
 *  - Handles are opaque. Option structs are zero-initialisable: a zero field means "default".
 *  - Functions that can fail return an int status: DUET_OK (0) on success, a negative
 *    DUET_ERR_* on error, a positive value for a non-fatal condition (DUET_EOS). On error they
 *    fill the caller's duet_error (may be NULL) with a one-line message that names the file,
 *    field and value. The library never exits or aborts on anything a user or file can cause.
 *  - Every *_free accepts NULL.
 *  - Thread safety: a duet_model is read-only after loading and may be shared by sessions in
 *    different threads as long as each thread uses its own sessions; calls on one session or
 *    one sampler must not run concurrently. A model's thread pool serves one forward pass at a
 *    time: sessions of the same model must not evaluate concurrently.
 */
#ifndef DUET_H
#define DUET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DUET_VERSION "0.1.0"

/* ---- status codes ---------------------------------------------------------------------- */
enum {
    DUET_OK = 0,
    DUET_EOS = 1,               /* non-fatal: end of sequence reached */
    DUET_ERR_IO = -1,           /* cannot open/read/write/map a file */
    DUET_ERR_FORMAT = -2,       /* malformed file or data */
    DUET_ERR_UNSUPPORTED = -3,  /* well-formed but not supported (architecture, tensor type) */
    DUET_ERR_NOMEM = -4,        /* allocation failed or would exceed a cap */
    DUET_ERR_ARG = -5,          /* bad argument from the caller */
    DUET_ERR_RANGE = -6,        /* out of range: context full, token id out of vocabulary */
};

typedef struct duet_error {
    int code;       /* the status that was returned */
    char msg[512];  /* one line, no trailing newline */
} duet_error;

/* Human-readable name of a status code ("ok", "io error", ...). */
const char *duet_status_str(int status);

/* ---- models ---------------------------------------------------------------------------- */
typedef struct duet_model duet_model;

typedef struct duet_model_params {
    int n_threads;     /* threads of the model's compute pool; 0 = number of online CPUs */
    int use_mmap;      /* 1: compute straight from the file mapping (fast start-up);
                          0 (default): copy weights into anonymous memory with huge pages,
                          which measured faster for generation on this class of machine */
    int check_tensors; /* 1: scan every weight for NaN/Inf at load (slow) */
    int vocab_only;    /* 1: load metadata and tokenizer only (vocabulary-only GGUF files);
                          sessions cannot be created on such a model */
} duet_model_params;

typedef struct duet_hparams {
    char arch[32];         /* general.architecture, e.g. "llama" */
    char name[128];        /* general.name or the file's base name */
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int n_ff;
    int n_ctx_train;       /* context length the model was trained with */
    int head_dim;          /* n_embd / n_head (or key_length when given) */
    float rms_eps;
    float rope_theta;
    int tied_output;       /* 1 when the output matrix is the token embedding */
    int weight_type;       /* dominant weight type (ggml type id) */
    uint64_t n_params;     /* number of weight elements */
    uint64_t weight_bytes; /* bytes of all weight tensors */
} duet_hparams;

/* Load a GGUF model (weights + tokenizer). */
int duet_model_load(const char *path, const duet_model_params *params, duet_model **out,
                    duet_error *err);
void duet_model_free(duet_model *model);
const duet_hparams *duet_model_hparams(const duet_model *model);
/* Bytes of weights one decoded token streams from memory (all matrices read once). */
uint64_t duet_model_bytes_per_token(const duet_model *model);

/* ---- tokenizer (owned by the model) ----------------------------------------------------- */
int32_t duet_token_bos(const duet_model *model);   /* -1 when the vocabulary has none */
int32_t duet_token_eos(const duet_model *model);
int duet_token_is_eog(const duet_model *model, int32_t token); /* end of generation */

/* Encode text. add_bos: prepend BOS when the vocabulary says so (and has one).
 * parse_special: text spelling a control token ("<s>") becomes that token; otherwise it is
 * plain text. Writes at most cap ids; returns the number of ids the full encoding has
 * (may exceed cap: call again with a larger buffer), or a negative status. */
int duet_tokenize(const duet_model *model, const char *text, size_t len, int add_bos,
                  int parse_special, int32_t *out, int cap, duet_error *err);

/* The bytes of one token for output. prev is the previous token in the sequence (or -1);
 * a leading space is dropped right after BOS, as SentencePiece decoding does.
 * Returns the number of bytes the piece has (may exceed cap, nothing is then written past
 * cap), or a negative status for an id out of range. Control tokens render as "". */
int duet_token_to_piece(const duet_model *model, int32_t prev, int32_t token, char *buf,
                        int cap);
/* The raw vocabulary text of a token (as stored), or NULL when out of range. */
const char *duet_token_text(const duet_model *model, int32_t token);

/* ---- sessions: one timeline of tokens + its KV cache ------------------------------------ */
typedef struct duet_session duet_session;

typedef struct duet_session_params {
    int n_ctx;    /* context size in tokens; 0 = min(n_ctx_train, 4096) */
    int n_batch;  /* largest batch one prefill call evaluates at once; 0 = 512 */
} duet_session_params;

int duet_session_new(duet_model *model, const duet_session_params *params,
                     duet_session **out, duet_error *err);
void duet_session_free(duet_session *s);

/* Append n tokens at the end of the timeline and evaluate them (batched prefill when n > 1,
 * split into n_batch chunks). all_logits: 1 keeps logits and hidden states of every token of
 * this call, 0 only of the last. Returns DUET_ERR_RANGE (and evaluates nothing) if the
 * context would overflow or an id is out of the vocabulary. */
int duet_session_eval(duet_session *s, const int32_t *tokens, int n, int all_logits,
                      duet_error *err);
/* Logits [n_vocab] of token i of the last eval call (i = -1: the last one). NULL if not kept. */
const float *duet_session_logits(const duet_session *s, int i);
/* Final-norm hidden state [n_embd] (the input of the output matrix) of token i, as above. */
const float *duet_session_hidden(const duet_session *s, int i);
/* Number of tokens in the timeline (= KV cache positions filled). */
int duet_session_n_past(const duet_session *s);
const int32_t *duet_session_tokens(const duet_session *s);
int duet_session_n_ctx(const duet_session *s);
duet_model *duet_session_model(const duet_session *s);
/* Drop the timeline back to its first n tokens (KV entries past n become invalid). */
int duet_session_truncate(duet_session *s, int n);
/* Make the timeline equal to tokens[0..n): keeps the longest common prefix, evaluates only
 * the missing suffix in one batched call, and leaves the logits of the last token available.
 * If the timeline already equals the prefix, the last logits must have been kept; otherwise
 * the last token is re-evaluated. This is what makes lazy expert catch-up a single call. */
int duet_session_sync(duet_session *s, const int32_t *tokens, int n, duet_error *err);

/* ---- scoring text -------------------------------------------------------------------- */
typedef struct duet_text_nll {
    int n_tokens;      /* tokens scored */
    size_t n_bytes;    /* bytes of text */
    double nll;        /* total negative log-likelihood in nats */
} duet_text_nll;

/* Negative log-likelihood of a text under the session's model: the text is tokenised once
 * (no BOS) and cut into windows of the session's context; each window starts with BOS
 * (when the vocabulary has one), so every text token is scored exactly once and
 * nll / n_bytes is nats per byte. progress (may be NULL) is called after each window. */
int duet_text_score(duet_session *s, const char *text, size_t len, duet_text_nll *out,
                    void (*progress)(void *ud, int done, int total), void *ud, duet_error *err);

/* ---- sampling -------------------------------------------------------------------------- */
typedef struct duet_sampler duet_sampler;

typedef struct duet_sampler_params {
    float temp;      /* <= 0: greedy (argmax, lowest id wins ties) */
    int top_k;       /* <= 0: off */
    float top_p;     /* >= 1 or <= 0: off */
    float min_p;     /* <= 0: off */
    uint64_t seed;   /* RNG seed; same seed + same logits = same tokens */
} duet_sampler_params;

/* Fill p with the defaults llama.cpp uses (temp 0.8, top_k 40, top_p 0.95, min_p 0.05). */
void duet_sampler_defaults(duet_sampler_params *p);
int duet_sampler_new(const duet_sampler_params *params, duet_sampler **out, duet_error *err);
void duet_sampler_free(duet_sampler *s);
/* Choose a token from logits [n_vocab] (logits are not modified). */
int32_t duet_sampler_sample(duet_sampler *s, const float *logits, int n_vocab);
/* Index of the largest value (lowest index wins ties). */
int32_t duet_argmax(const float *x, int n);

/* ---- model files: import and fixtures ---------------------------------------------------- */
typedef struct duet_convert_params {
    const char *checkpoint;  /* llama2.c .bin (version 0 "legacy" layout) */
    const char *tokenizer;   /* llama2.c tokenizer .bin, or NULL */
    const char *vocab;       /* sentencepiece .vocab (piece TAB score), or NULL */
    int byte_tokens;         /* with vocab: insert <0x00>..<0xFF> after the special tokens */
    const char *name;        /* general.name; NULL = checkpoint file name */
} duet_convert_params;

/* Import a llama2.c checkpoint + tokenizer into a GGUF (F32 weights), atomically.
 * Exactly one of tokenizer / vocab must be given; the vocabulary size must equal the
 * checkpoint's. */
int duet_convert_llama2c(const duet_convert_params *p, const char *out_path, duet_error *err);

typedef struct duet_make_model_params {
    const char *arch;        /* "llama" */
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    int type;                /* ggml type id of the matrices (norms stay f32) */
    int output_type;         /* type of output.weight and token_embd; -1: same as type */
    int tied;                /* 1: no output.weight (shares token_embd) */
    uint64_t seed;
} duet_make_model_params;

/* Write a random-weight model (matrices ~N(0, 0.02), norms 1) with a synthetic
 * SentencePiece vocabulary (specials, 256 byte tokens, printable characters, then made-up
 * pieces), loadable by duet and by other GGUF tools. Same seed = same file. */
int duet_make_model(const duet_make_model_params *p, const char *out_path, duet_error *err);

/* ---- utilities ------------------------------------------------------------------------- */
/* Seconds from a monotonic clock. */
double duet_time_s(void);
/* Measured memory read bandwidth in bytes/s with n_threads threads (best of reps passes over
 * a buffer of `bytes`, far larger than the caches; 0 on allocation failure). */
double duet_memory_bandwidth(int n_threads, size_t bytes, int reps);

#ifdef __cplusplus
}
#endif
#endif /* DUET_H */
