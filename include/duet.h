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
 *    one sampler must not run concurrently. A compute pool serves one forward pass at a
 *    time, and models loaded with the same n_threads share one pool (so that a base and an
 *    expert do not spin against each other): evaluate sessions of such models one at a time.
 */
#ifndef DUET_H
#define DUET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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
    int no_repack;     /* 1: keep Q4_0/Q8_0 matrices in the file's row order. By default
                          (and only when not use_mmap) they are rearranged at load into
                          groups of 8 interleaved rows, which the matrix kernels run about
                          twice as fast on; the results are the same bit for bit */
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
/* The file the model was loaded from, as given to duet_model_load. */
const char *duet_model_path(const duet_model *model);
/* Bytes of weights one decoded token streams from memory (all matrices read once). */
uint64_t duet_model_bytes_per_token(const duet_model *model);
/* Arithmetic of one token in a forward pass at kv positions n_kv: 2 FLOPs per weight of the
 * matrices (the output included) plus attention's 4 * n_head * head_dim * n_kv per layer. */
double duet_model_flops_per_token(const duet_model *model, int n_kv);
/* FNV-1a 64 hash of the vocabulary (every token's text and type): equal hashes mean the
 * two models tokenise and number text identically. */
uint64_t duet_model_vocab_hash(const duet_model *model);
/* Token type as GGUF stores it (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
 * 6 byte), 0 when out of range. */
int duet_token_type(const duet_model *model, int32_t token);

/* ---- tokenizer (owned by the model) ----------------------------------------------------- */
int32_t duet_token_bos(const duet_model *model);   /* -1 when the vocabulary has none */
int32_t duet_token_eos(const duet_model *model);
int duet_token_is_eog(const duet_model *model, int32_t token); /* end of generation */

/* Encode text. add_bos: prepend BOS when the vocabulary says so (and has one).
 * parse_special: text spelling a control token ("<s>") becomes that token; otherwise it is
 * plain text. Writes at most cap ids; returns the number of ids the full encoding has
 * (may exceed cap: call again with a larger buffer), or a negative status.
 * Vocabularies: SentencePiece ("llama") and byte-level BPE ("gpt2", split as
 * tokenizer.ggml.pre names; an unknown name fails to load). Invalid UTF-8 is never dropped:
 * BPE encodes such bytes as their byte tokens (decoding gives them back), or as the unknown
 * token / an error when the vocabulary has no token for that byte. */
int duet_tokenize(const duet_model *model, const char *text, size_t len, int add_bos,
                  int parse_special, int32_t *out, int cap, duet_error *err);
/* Encode text in which control tokens are parsed except where their text touches a byte
 * marked in plain[len] (1 = plain text that must never become a control token; NULL: none).
 * For prompts built by the program around user text: the chat template's markers become
 * control tokens, a user writing "</s>" or "<|im_end|>" gets that text as text. User-defined
 * tokens are recognised everywhere, as with duet_tokenize. Same return contract. */
int duet_tokenize_masked(const duet_model *model, const char *text, size_t len, int add_bos,
                         const unsigned char *plain, int32_t *out, int cap, duet_error *err);

/* The bytes of one token for output. prev is the previous token in the sequence (or -1);
 * a leading space is dropped right after BOS, as SentencePiece decoding does.
 * Writes the first min(L, cap) bytes of the piece to buf, where L is the piece's length, and
 * returns L. No NUL is written or counted, and buf[cap] onwards is never touched; when L
 * exceeds cap, buf holds a truncated prefix (possibly cut inside a UTF-8 character): grow
 * the buffer to L bytes and call again for the whole piece. cap 0 (buf may be NULL) only
 * measures. Returns a negative status, writing nothing, for an id out of range or a bad
 * argument. Control tokens render as "" (0 bytes). */
int duet_token_to_piece(const duet_model *model, int32_t prev, int32_t token, char *buf,
                        int cap);
/* The raw vocabulary text of a token (as stored), or NULL when out of range. */
const char *duet_token_text(const duet_model *model, int32_t token);

/* ---- LoRA adapters (llama.cpp's LoRA GGUF), applied unmerged ---------------------------
 * An adapter file holds general.type "adapter", general.architecture (the base's),
 * adapter.type "lora", adapter.lora.alpha and, per adapted matrix, "<base tensor>.lora_a"
 * (ggml shape [n_in, r]) and "<base tensor>.lora_b" ([r, n_out]). Adapted products become
 * W x + s B (A x), s = scale * alpha / r (alpha 0: s = scale), as llama.cpp's --lora-scaled. */
typedef struct duet_lora duet_lora;
/* Load and check against base: architecture, every pair complete, shapes, types duet
 * computes with, finite values; errors name the file, the tensor or key and the value. The
 * adapter must outlive the models it is attached to. */
int duet_lora_load(const char *path, duet_model *base, duet_lora **out, duet_error *err);
void duet_lora_free(duet_lora *a);
float duet_lora_alpha(const duet_lora *a);
/* Number of base matrices the adapter changes. */
int duet_lora_n_matrices(const duet_lora *a);
/* Attach adapter a to model m (the base it was loaded for) with the given scale; several may
 * be attached, each adds its term. Only before any session of m exists (DUET_ERR_ARG). */
int duet_model_add_lora(duet_model *m, const duet_lora *a, float scale, duet_error *err);
/* A fingerprint of the adapters attached to m (which matrices, scales, A and B values): 0
 * with none (or only ones at scale 0, which change nothing). Files made with the model (score files) record it, so a resume with other
 * adapters is refused. */
uint64_t duet_model_lora_hash(const duet_model *m);
/* Write base_path with adapters[0..n) (each at scales[i]) baked in: every adapted matrix
 * becomes W + sum s B A (in double per element, from the dequantised W) stored as type (a
 * ggml type id; -1: the matrix's own type); everything else is copied unchanged. Atomic. */
int duet_lora_merge(const char *base_path, const char *const *adapters, const float *scales,
                    int n, int type, const char *out_path, duet_error *err);

/* ---- sessions: one timeline of tokens + its KV cache ------------------------------------ */
typedef struct duet_session duet_session;

typedef struct duet_session_params {
    int n_ctx;    /* context size in tokens; 0 = min(n_ctx_train, 4096) */
    int n_batch;  /* largest batch one prefill call evaluates at once; 0 = 512 */
    /* Element types of the KV cache, as ggml type ids (llama.cpp's -ctk / -ctv):
     * DUET_KV_F32 (0, the default: exact) or DUET_KV_F16 (1: half the memory; keys and
     * values rounded to the nearest half, which moves the logits slightly). Others:
     * duet_session_new fails with DUET_ERR_ARG. */
    int type_k, type_v;
} duet_session_params;

enum { DUET_KV_F32 = 0, DUET_KV_F16 = 1 };

int duet_session_new(duet_model *model, const duet_session_params *params,
                     duet_session **out, duet_error *err);
void duet_session_free(duet_session *s);

/* Append n tokens at the end of the timeline and evaluate them (batched prefill when n > 1,
 * split into n_batch chunks). all_logits: 1 keeps logits and hidden states of every token of
 * this call, 0 only of the last. Returns DUET_ERR_RANGE (and evaluates nothing) if the
 * context would overflow or an id is out of the vocabulary. */
int duet_session_eval(duet_session *s, const int32_t *tokens, int n, int all_logits,
                      duet_error *err);
/* Logits [n_vocab] of token i of the last eval call (i = -1: the last one). NULL if not kept.
 * After an eval with all_logits 0 the logits are computed on this first read (the output
 * matrix is skipped by callers that need only the hidden state), so like every session call
 * it must not race with another call on the same session. */
const float *duet_session_logits(const duet_session *s, int i);
/* Final-norm hidden state [n_embd] (the input of the output matrix) of token i, as above. */
const float *duet_session_hidden(const duet_session *s, int i);
/* Number of tokens in the timeline (= KV cache positions filled). */
int duet_session_n_past(const duet_session *s);
const int32_t *duet_session_tokens(const duet_session *s);
int duet_session_n_ctx(const duet_session *s);
duet_model *duet_session_model(const duet_session *s);
/* Tokens this session has run through the model since creation (prompt, decode, re-evaluation
 * after truncate/sync all count): the cost counter collaboration statistics are built on. */
long duet_session_n_evaluated(const duet_session *s);
/* Bytes the KV cache holds now: it starts at 256 positions and doubles as the timeline
 * grows, up to n_ctx. */
size_t duet_session_kv_bytes(const duet_session *s);
/* Drop the timeline back to its first n tokens (KV entries past n become invalid). */
int duet_session_truncate(duet_session *s, int n);
/* Make the timeline equal to tokens[0..n): keeps the longest common prefix, evaluates only
 * the missing suffix in one batched call, and leaves the logits of the last token available.
 * If the timeline already equals the prefix, the last logits must have been kept; otherwise
 * the last token is re-evaluated. This is what makes lazy expert catch-up a single call. */
int duet_session_sync(duet_session *s, const int32_t *tokens, int n, duet_error *err);

/* ---- several sessions of one model in one forward pass ---------------------------------
 * Decoding is bound by reading the weights; these calls read each weight once for the
 * tokens of all the sessions given. Each session's results (logits, hidden states, cache)
 * are bit-identical to what duet_session_eval / _sync / _logits on it alone would give. */
typedef struct duet_batch_seq {
    duet_session *session; /* distinct sessions of one model */
    const int32_t *tokens;
    int n;                 /* tokens to append, >= 1 */
    int all_logits;        /* as duet_session_eval's */
} duet_batch_seq;
/* duet_session_eval on every sequence, in one pass per n_batch rows (of the session with
 * the largest n_ctx). Checks everything first: on an error nothing is evaluated. */
int duet_session_eval_batch(const duet_batch_seq *seqs, int n_seqs, duet_error *err);
/* duet_session_sync of session s[i] to tokens[i][0..n[i]) for every i, the missing suffixes
 * evaluated together. */
int duet_session_sync_batch(duet_session *const *s, const int32_t *const *tokens, const int *n,
                            int n_seqs, duet_error *err);
/* Compute the pending last-token logits (see duet_session_logits) of the given sessions with
 * one pass of the output matrix per n_batch of them; sessions with nothing pending or of
 * another model than the first pending one are left to duet_session_logits. */
void duet_session_logits_batch(duet_session *const *s, int n);

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

/* llama-perplexity's method, so that a perplexity compares with llama.cpp's: the text is
 * tokenised once (BOS first where the vocabulary adds one) and cut into chunks of the
 * session's context (the remainder is dropped); each chunk is evaluated from an empty cache
 * with its first token replaced by BOS (where the vocabulary adds one), and only its second
 * half is scored: the tokens after position n_ctx / 2, n_ctx - n_ctx / 2 - 1 per chunk.
 * on_chunk (may be NULL) gets each chunk's index, the chunk count and the running perplexity.
 * DUET_ERR_ARG when the text has fewer than 2 * n_ctx tokens (llama-perplexity's minimum). */
typedef struct duet_chunk_ppl {
    int n_tokens;          /* tokens of the whole text */
    int n_chunks, n_scored;
    double nll, nll2;      /* sums of -log p and of its square over the scored tokens */
    double ppl, ppl_err;   /* exp(mean), and its +/- (std error of the mean, times ppl) */
} duet_chunk_ppl;
int duet_text_perplexity_chunks(duet_session *s, const char *text, size_t len, duet_chunk_ppl *out,
                                void (*on_chunk)(void *ud, int chunk, int n_chunks, double ppl),
                                void *ud, duet_error *err);

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
/* Restart the sampler's random stream as duet_sampler_new with this seed would start it. */
void duet_sampler_reseed(duet_sampler *s, uint64_t seed);
/* Choose a token from logits [n_vocab] (logits are not modified). */
int32_t duet_sampler_sample(duet_sampler *s, const float *logits, int n_vocab);
/* Index of the largest value (lowest index wins ties). */
int32_t duet_argmax(const float *x, int n);

/* ---- deferral head (Co-LLM's switch) ------------------------------------------------------ */
/* s_t = u . h_t on the base model's final-norm hidden state h_t; P(defer) = sigmoid(s_t).
 * Stored as a sidecar GGUF (general.type "duet.head") that records the base model's identity
 * (name, n_embd, n_vocab, vocabulary hash): loading it for another base is an error. */
typedef struct duet_head duet_head;

/* The untrained start: u = mean of the base's output-matrix rows. */
int duet_head_init(const duet_model *base, duet_head **out, duet_error *err);
/* A head from a given vector u [n_embd] (copied), e.g. hand-made heads for tests. */
int duet_head_from_vector(const duet_model *base, const float *u, int n, duet_head **out,
                          duet_error *err);
/* Load and check against base: name, n_embd, n_vocab and vocabulary hash must all match
 * (docs/bad-inputs.md, item 15); NaN/Inf weights are rejected. */
int duet_head_load(const char *path, const duet_model *base, duet_head **out, duet_error *err);
/* Write atomically (temp file + rename). */
int duet_head_save(const duet_head *head, const char *path, duet_error *err);
/* Import an official Co-LLM checkpoint (a GGUF converted from it: the switch is an extra
 * "<|defer|>" token after the expert's vocabulary, usually with a "<pad>" before it): writes
 * base_out, the checkpoint with only the expert's n_vocab rows (embedding, output, tokenizer
 * arrays; special ids past them dropped), and head_out, a head for that base whose u is the
 * <|defer|> output row. duet's collm policy on them decides as the official decoder does
 * (defer iff sigmoid(h . u) > eta; the base's token is its argmax over the expert's ids).
 * Refused by name: no <|defer|> token, a vocabulary not larger than the expert's (or the
 * switch inside it), token texts that differ from the expert's. */
int duet_head_import(const char *ckpt_path, const duet_model *expert, const char *base_out,
                     const char *head_out, duet_error *err);
void duet_head_free(duet_head *head);
int duet_head_n_embd(const duet_head *head);
const float *duet_head_u(const duet_head *head);   /* [n_embd], mutable via _set_u */
int duet_head_set_u(duet_head *head, const float *u, int n);
/* The tuned threshold eta in [0,1], or a negative value when the head has none. */
float duet_head_threshold(const duet_head *head);
void duet_head_set_threshold(duet_head *head, float eta);
/* s = u . h (the logit of P(defer)). */
float duet_head_score(const duet_head *head, const float *hidden);

/* ---- deferral head: confidence features (head training) ----------------------------------- */
/* Besides the hidden state, a trained head may read the base's confidence at the same
 * position: s = [u . h] + w_entropy * entropy + w_maxlogp * max_logp + bias, each term only
 * when the head uses that input. entropy = -sum_v p_v log p_v and max_logp = log max_v p_v,
 * natural log, over softmax of the base's logits for the next token (all n_vocab entries):
 * exactly what `duet score` stores for the base. Hidden-only heads (the paper's) have bias 0
 * and duet_head_score gives their full score; for other heads use duet_head_score_ex. */
enum {
    DUET_HEAD_FEAT_HIDDEN = 1,   /* u . h */
    DUET_HEAD_FEAT_ENTROPY = 2,  /* entropy of the base's next-token distribution (nats) */
    DUET_HEAD_FEAT_MAXLOGP = 4,  /* log of the base's largest next-token probability */
};
/* A zero head (u = 0, hidden only) for a base known by identity (e.g. from a score file). */
int duet_head_new(const char *base_name, int n_embd, int n_vocab, uint64_t vocab_hash,
                  duet_head **out, duet_error *err);
/* DUET_HEAD_FEAT_* mask of the inputs the head reads. */
int duet_head_features(const duet_head *head);
/* Set the inputs and weights: w[0] entropy, w[1] max_logp (ignored for inputs not in mask);
 * without DUET_HEAD_FEAT_HIDDEN, u is zeroed. DUET_ERR_ARG on a bad mask or non-finite value. */
int duet_head_set_features(duet_head *head, int mask, const float w[2], float bias);
void duet_head_get_features(const duet_head *head, float w[2], float *bias);
/* The score (logit of P(defer)); hidden may be NULL for heads without the hidden input. */
float duet_head_score_ex(const duet_head *head, const float *hidden, float entropy,
                         float max_logp);
/* "hidden,entropy,maxlogp" (any non-empty subset, comma-separated) <-> mask. */
int duet_head_features_parse(const char *s, int *mask, duet_error *err);
void duet_head_features_string(int mask, char *buf, size_t cap);
/* ---- end of confidence features ---------------------------------------------------------- */

/* ---- collaborative decoding ------------------------------------------------------------- */
typedef enum duet_policy {
    DUET_POLICY_COLLM = 0,   /* defer iff u.h > logit(eta) (head required) */
    DUET_POLICY_BASE,        /* base alone */
    DUET_POLICY_EXPERT,      /* expert alone */
    DUET_POLICY_RANDOM,      /* defer with probability random_rate (seeded) */
    DUET_POLICY_CONFIDENCE,  /* token of the model whose max-probability is higher */
    DUET_POLICY_COMPOSE,     /* p = sigmoid(u.h); if p > eta: argmax (1-p) P_base + p P_expert */
    DUET_POLICY_PROXY,       /* logits_expert + logits_base - logits_anti (anti model required) */
    DUET_POLICY_CONTRASTIVE, /* (1+b) s_expert - b s_base over s_expert >= log(a) + max s_expert */
    DUET_POLICY_UNCERTAINTY, /* defer iff the base's next-token entropy (nats) > threshold */
    DUET_POLICY_CD,          /* the official Co-LLM code's "cd": log p_expert - log p_base */
    DUET_POLICY_CD_V2,       /* its "cd_v2": (1+b) s_expert - b s_base, masked where that
                                score < log(a) + max s_expert (duet_contrastive_scores) */
    DUET_POLICY_COUNT
} duet_policy;

/* "collm", "base", ... -> policy; -1 for an unknown name. */
int duet_policy_from_name(const char *name);
const char *duet_policy_name(int policy);

typedef struct duet_collab_params {
    duet_policy policy;
    float threshold;       /* eta for collm/compose (default: the head's tuned one, else 0.5);
                              entropy in nats for uncertainty (default 2.0). Negative = default */
    float random_rate;     /* random policy: P(defer) */
    float cd_alpha;        /* contrastive plausibility alpha (0 = 0.1) */
    float cd_beta;         /* contrastive beta (0 = 0.5) */
    int eager_sync;        /* 1: the expert evaluates every token as it is emitted */
    int details;           /* 1: fill base_top_p / expert_top_p of every token (traces);
                              0: compute distribution statistics only where the policy or
                              the head reads them (they cost ~10% of a small model's step) */
    int n_ctx;             /* context for all sessions (0 = min of the models' defaults) */
    int type_k, type_v;    /* KV cache element types of all sessions (duet_session_params) */
    duet_sampler_params sampling; /* applied to whichever distribution the policy picks */
    /* An expert behind an interface instead of a local model (e.g. a remote server, see
     * duet_expert_remote_new): give it here and pass expert = NULL to duet_collab_new. */
    const struct duet_expert_backend *expert_backend;
    int expert_fallback;   /* 1: when the expert fails, the base chooses the token (reported
                              as expert_failed) instead of the step returning the error */
    int lazy_prompt;       /* 1: duet_collab_start checks and records the prompt, and the first
                              step evaluates it in its base pass (in duet_collab_step_batch, one
                              pass with the other decoders' tokens); the same tokens and counts */
} duet_collab_params;

enum { DUET_SRC_BASE = 0, DUET_SRC_EXPERT = 1, DUET_SRC_MIXED = 2 };

/* One emitted token and why. */
typedef struct duet_collab_token {
    int32_t id;            /* base vocabulary id (the canonical token list is in base ids) */
    int source;            /* DUET_SRC_* */
    int deferred;          /* the policy consulted the expert for this token's choice */
    float score;           /* u.h (collm/compose), entropy (uncertainty), or NaN */
    float p_defer;         /* sigmoid(score) for head policies, else NaN */
    int32_t base_top;      /* base's argmax (base ids; -1 when a deferred token of collm, */
                           /* random or expert never read the base's logits, unless details) */
    float base_top_p;      /* its probability (NaN when not computed: see details) */
    int32_t expert_top;    /* expert's argmax mapped to base ids (-1 when not computed) */
    float expert_top_p;    /* (NaN when not computed) */
    int expert_failed;     /* the expert was needed but failed; the base chose (expert_fallback) */
} duet_collab_token;

typedef struct duet_collab_stats {
    int n_prompt;          /* prompt tokens */
    int n_generated;       /* tokens emitted */
    int n_deferred;        /* tokens whose choice consulted the expert */
    int expert_calls;      /* times the expert produced a next-token distribution */
    long expert_evaluated; /* tokens the expert evaluated (prompt + catch-up) */
    long base_evaluated;   /* tokens the base evaluated */
    double t_base;         /* seconds in base forward passes */
    double t_expert;       /* seconds in expert forward passes (incl. the anti model) */
    double t_total;        /* seconds in start + steps */
    int expert_failures;   /* tokens the expert could not supply (expert_fallback) */
} duet_collab_stats;

typedef struct duet_collab duet_collab;

/* Check vocabularies (identical, or bridged when every base token text exists in the expert's
 * vocabulary; else DUET_ERR_UNSUPPORTED naming the first base id and text that has no match)
 * and create sessions. head is needed by collm and compose; anti by proxy; expert may be NULL
 * only for the base policy (single-model generation). The models and head must outlive the
 * collab. */
int duet_collab_new(duet_model *base, duet_model *expert, duet_model *anti,
                    const duet_head *head, const duet_collab_params *params,
                    duet_collab **out, duet_error *err);
void duet_collab_free(duet_collab *c);
/* Begin a new answer after prompt (base ids). Sessions keep their KV caches where the new
 * prompt shares a prefix with the previous timeline. */
int duet_collab_start(duet_collab *c, const int32_t *prompt, int n, duet_error *err);
/* Optional, before duet_collab_start: evaluate at most max_tokens more of the prompt in the
 * base (what start would evaluate, in pieces, so that a server can step other answers in
 * between). Returns the prompt tokens still to go (0: start will find the prompt in place),
 * or a negative status (ids are checked by the evaluation). */
int duet_collab_prefill(duet_collab *c, const int32_t *prompt, int n, int max_tokens,
                        duet_error *err);
/* Choose and emit the next token. DUET_OK with *tok filled; DUET_EOS when the chosen token
 * ends generation (it is reported in *tok but not added); DUET_ERR_RANGE when the context is
 * full. */
int duet_collab_step(duet_collab *c, duet_collab_token *tok, duet_error *err);
/* One step of each of n decoders (distinct; each at its own place in its own answer): the
 * same tokens, statistics and errors as calling duet_collab_step on each in turn, bit for
 * bit, but the base passes of all of them run as one batched forward pass, the expert
 * catch-ups of those that defer as another (per model), and calls to remote experts run
 * concurrently, one thread each (so each decoder needs a backend of its own, callable from
 * any thread; one that runs a model in-process must load it with 1 thread, since models
 * loaded with the same thread count share a pool that serves one pass at a time). rcs[i] and
 * errs[i] get decoder i's result. Returns DUET_OK (results are per decoder). */
int duet_collab_step_batch(duet_collab *const *cs, int n, duet_collab_token *toks, int *rcs,
                           duet_error *errs);
/* Restart the decoder's random streams (the random policy's draws and the sampler's) as
 * duet_collab_new with sampling.seed = seed would start them. A caller that decodes many
 * answers on one decoder seeds each answer, so that an answer does not depend on how many
 * draws the answers before it took (evaluation decodes several at once, in any order). */
void duet_collab_set_seed(duet_collab *c, uint64_t seed);
const duet_collab_stats *duet_collab_get_stats(const duet_collab *c);
/* The canonical token list (prompt + emitted), base ids. */
const int32_t *duet_collab_tokens(const duet_collab *c, int *n);
/* 1 when the vocabularies differ and ids go through the bridge. */
int duet_collab_bridged(const duet_collab *c);
/* The context size (tokens) of the decoder's sessions: prompt + answer must fit it. */
int duet_collab_n_ctx(const duet_collab *c);
/* The base model the decoder was made with (its vocabulary names the emitted ids). */
duet_model *duet_collab_base(const duet_collab *c);
/* "base", "expert" or "mixed" for a DUET_SRC_* value ("?" for others). */
const char *duet_source_name(int source);
/* The contrastive scores a policy samples from, over n base ids, from the expert's and the
 * base's logits (se, sb): DUET_POLICY_CONTRASTIVE (the CD paper's plausibility rule: (1+b) se
 * - b sb where se >= log(a) + max se, else -inf), DUET_POLICY_CD (log_softmax(se) -
 * log_softmax(sb), no mask) or DUET_POLICY_CD_V2 ((1+b) se - b sb, -inf where that score <
 * log(a) + max se). DUET_ERR_ARG for another policy. */
int duet_contrastive_scores(int policy, const float *se, const float *sb, int n, float alpha,
                            float beta, float *out);

/* ---- generation: the decoder's steps as text ---------------------------------------------- */
/* The one loop every generating caller uses (CLI, server, evaluation), so they agree on where
 * an answer ends and which bytes it holds. Start the decoder (duet_collab_start), then step a
 * duet_gen (streaming) or call duet_generate (to the end, with a callback per token). */
enum {
    DUET_GEN_RUNNING = 0,
    DUET_GEN_LIMIT,      /* max_tokens emitted */
    DUET_GEN_EOS,        /* the decoder chose an end-of-generation token (not in the text) */
    DUET_GEN_STOP,       /* a stop text appeared: the text ends where it begins */
    DUET_GEN_CONTEXT,    /* the context is full; what was generated stands */
    DUET_GEN_ERROR,      /* a step failed (the error was returned by that step) */
    DUET_GEN_CANCELLED   /* the callback asked duet_generate to stop */
};

typedef struct duet_gen_params {
    int max_tokens;               /* tokens to emit at most; < 0: no limit; 0: none */
    const char *const *stops;     /* stop texts; the answer ends before the earliest one in the
                                     text, whichever of them it is (NULL/"" entries ignored) */
    int n_stops;
    int utf8;                     /* 1: the text grows by whole valid UTF-8 characters only;
                                     bytes of an unfinished one wait for the next piece, bytes
                                     that cannot form one become U+FFFD (for JSON clients).
                                     0: bytes exactly as the vocabulary gives them */
} duet_gen_params;

typedef struct duet_gen duet_gen;
/* After duet_collab_start: the last prompt token conditions the first piece. c must outlive
 * the duet_gen. DUET_ERR_ARG when c has no prompt or the stop list is NULL with n_stops > 0. */
int duet_gen_new(duet_collab *c, const duet_gen_params *p, duet_gen **out, duet_error *err);
void duet_gen_free(duet_gen *g);
/* One token: DUET_OK with *tok (may be NULL) filled and its bytes in duet_gen_piece; the
 * answer may have ended with it (duet_gen_end: STOP or LIMIT). DUET_EOS when the answer ended
 * without a new token (EOS, or a full context: then err holds the decoder's message) or had
 * already ended. An error code (and end DUET_GEN_ERROR) when the step failed. */
int duet_gen_step(duet_gen *g, duet_collab_token *tok, duet_error *err);
/* duet_gen_step on each of n generations (distinct decoders) as one batched decoder step
 * (duet_collab_step_batch): the same texts and tokens as stepping each alone. rcs[i], toks[i]
 * and errs[i] are generation i's; an ended one gets DUET_EOS and is not stepped. */
int duet_gen_step_batch(duet_gen *const *gs, int n, duet_collab_token *toks, int *rcs,
                        duet_error *errs);
/* Called after every emitted token; return nonzero to stop (end DUET_GEN_CANCELLED). */
typedef int (*duet_gen_callback)(void *ud, const duet_gen *g, const duet_collab_token *tok);
/* Step to the end. *out holds the answer (free with duet_gen_free, also after an error). */
int duet_generate(duet_collab *c, const duet_gen_params *p, duet_gen_callback cb, void *ud,
                  duet_gen **out, duet_error *err);
/* The answer so far, NUL-terminated (a stop text and everything after it excluded). */
const char *duet_gen_text(const duet_gen *g, size_t *len);
/* DUET_SRC_* of each byte of the text. */
const unsigned char *duet_gen_sources(const duet_gen *g);
/* How many bytes of the text may be shown now: all once ended, else all but a tail that could
 * be the beginning of a stop text. Never decreases. */
size_t duet_gen_ready(const duet_gen *g);
/* The last emitted token's bytes, whole whatever their length (not NUL-terminated). */
const char *duet_gen_piece(const duet_gen *g, size_t *len);
int duet_gen_n_tokens(const duet_gen *g);
/* DUET_GEN_RUNNING, or why the answer ended. */
int duet_gen_end(const duet_gen *g);
/* Stop texts in streamed output (the format's end-of-turn marker, a request's stop strings).
 * text[0..len) is the output so far, of which text[0..*shown) was already released. Returns the
 * offset of the earliest stop text (then *shown = that offset: release up to it, cut there), or
 * -1 when none occurs; then *shown advances to what may be released now: all but a tail that
 * could be the start of a stop text. Empty or NULL stops are ignored. */
long duet_stop_scan(const char *text, size_t len, const char *const *stops, int n_stops,
                    size_t *shown);

/* ---- expert backends --------------------------------------------------------------------- */
/* What the collab decoder needs from an expert it does not run itself: the next-token
 * distribution after a token list. Implementations: remote servers (duet_expert_remote_new);
 * a local expert model is handled inside the decoder (sessions with KV cache). */
typedef struct duet_expert_backend {
    void *ctx;
    /* Next-token scores after tokens[0..n) (base ids) into out[n_vocab of the base]: logits
     * or log-probabilities (the decoder only takes argmax / softmax of them); ids the backend
     * does not know (a remote that returns only the top-k) are -INFINITY. */
    int (*next_logits)(void *ctx, const int32_t *tokens, int n, float *out, duet_error *err);
    int n_ctx;             /* the expert's context size, 0 when unknown */
} duet_expert_backend;

/* Experts over HTTP (libcurl). Two protocols:
 *  "llama":  llama.cpp's server and `duet serve`: POST /completion {prompt: [ids], n_predict: 1,
 *            n_probs: K, temperature 0} -> completion_probabilities[0].top_logprobs[{id, logprob}];
 *  "openai": OpenAI-compatible engines (vLLM): POST /v1/completions {prompt: [ids], max_tokens 1,
 *            logprobs: K, return_tokens_as_token_ids: true} -> choices[0].logprobs.top_logprobs[0].
 * Only the top K log-probabilities come back, so the expert's distribution is truncated to
 * them (argmax / greedy decoding is exact; sampling from the expert samples among its top K).
 * Vocabularies must be identical (no bridge): _new tokenizes a probe text through the
 * server's /tokenize and compares ids, and compares duet's vocabulary hash where the server
 * reports one (/props). Failures (refused, timeout, 5xx, 429) are retried with exponential
 * backoff; then the call fails with a message naming the URL and the cause. */
typedef struct duet_expert_remote duet_expert_remote;

typedef struct duet_expert_remote_params {
    const char *url;       /* base URL, e.g. "http://127.0.0.1:8081" */
    const char *api;       /* "llama" (default) or "openai" */
    const char *api_key;   /* sent as "Authorization: Bearer KEY" (NULL: none) */
    const char *model;     /* "model" field of openai requests (NULL: the server's first) */
    int top_k;             /* log-probabilities asked per call (0 = 20) */
    int retries;           /* extra attempts after a failure (0 = 2, negative = none) */
    int backoff_ms;        /* wait before the first retry, doubled each time (0 = 100) */
    int timeout_ms;        /* per HTTP request (0 = 30000) */
    int skip_check;        /* 1: do not verify the tokenizer (already done by another instance) */
} duet_expert_remote_params;

/* Connect-check and verify the tokenizer against base. One instance per thread (it owns one
 * HTTP connection); the base must outlive it. */
int duet_expert_remote_new(const duet_model *base, const duet_expert_remote_params *params,
                           duet_expert_remote **out, duet_error *err);
void duet_expert_remote_free(duet_expert_remote *r);
/* The backend to put in duet_collab_params.expert_backend (valid while r lives). */
const duet_expert_backend *duet_expert_remote_backend(duet_expert_remote *r);
/* Calls made and HTTP attempts that failed (retries included), for metrics. */
void duet_expert_remote_counts(const duet_expert_remote *r, long *calls, long *failed_attempts);
/* Teacher-forced scores of tokens[1..n) (base ids) from the server's prompt log-probabilities
 * ("prompt_logprobs" of duet serve's /completion; llama.cpp and OpenAI servers do not give
 * the entropy: DUET_ERR_UNSUPPORTED): for token i, lp[i-1] = log P(token i | prefix),
 * maxlp[i-1] = the largest log-probability and entropy[i-1] (nats) of that distribution,
 * exactly what `duet score` stores. */
int duet_expert_remote_prompt_scores(duet_expert_remote *r, const int32_t *tokens, int n,
                                     float *lp, float *maxlp, float *entropy, duet_error *err);
/* The served model's name as the server reports it (/props "model"), else the URL. */
const char *duet_expert_remote_name(const duet_expert_remote *r);

/* ---- HTTP server (duet serve) ------------------------------------------------------------ */
/* An OpenAI-compatible server on libmicrohttpd: /v1/completions, /v1/chat/completions
 * (server-sent events with stream: true), /v1/models, /health, /props, /tokenize, /detokenize,
 * /metrics (Prometheus), /completion (llama.cpp protocol: next-token log-probabilities of the
 * served model -m alone, which is what a remote-expert client asks; "prompt_logprobs": true
 * adds each prompt token's log-probability, max log-probability and entropy, the per-token
 * numbers of a score file), and a web page at /.
 * Requests queue for one of n_slots decoding slots; forward passes of all slots take turns
 * on the models' one compute pool (token by token), HTTP calls to a remote expert do not
 * hold it. */
typedef struct duet_server duet_server;

typedef struct duet_server_params {
    const char *host;          /* address to bind (default "127.0.0.1") */
    int port;                  /* 0: an ephemeral port (see duet_server_port) */
    const char *api_key;       /* required as "Authorization: Bearer KEY" (NULL: open);
                                  / and /health stay open, as in llama.cpp */
    int n_slots;               /* concurrent generations (0 = 1); more requests queue */
    duet_model *base;          /* the served (base) model */
    duet_model *expert;        /* local expert, or NULL */
    const duet_expert_remote_params *remote; /* expert over HTTP instead (or NULL) */
    const duet_head *head;     /* deferral head, or NULL */
    duet_collab_params defaults; /* policy, threshold, n_ctx; sampling is per request */
    size_t max_body;           /* request body limit in bytes (0 = 1 MiB; at most 64 MiB) */
    int max_connections;       /* open connections (0 = 64) */
    int timeout_s;             /* idle connection timeout (0 = 60) */
    int queue_timeout_s;       /* longest wait for a slot before 503 (0 = 120) */
    int request_timeout_s;     /* a connection must deliver a whole request (headers and body)
                                  within this many seconds of its start, or of its previous
                                  answer, or it is closed (0 = 10) */
    int max_conns_per_ip;      /* open connections from one address (0 = 32; at most
                                  max_connections) */
    const char *allowed_hosts; /* comma list of extra Host names accepted without an API key
                                  (NULL: the bind address, and localhost names on loopback;
                                  a 0.0.0.0 bind then accepts any Host) */
    const char *cors_origins;  /* comma list of origins allowed to call from a web page, "*"
                                  for any (NULL: only the server's own origin) */
    int quiet;                 /* 1: no request log on stderr */
    const char *chat_template; /* chat format name or template source for /v1/chat/completions
                                  (NULL: the model's own; ChatML when the model has none) */
} duet_server_params;

/* Bind, start serving in background threads, return. The models and head must outlive it.
 * Sets SIGPIPE to be ignored in the process (a client that hangs up must not end it). */
int duet_server_start(const duet_server_params *params, duet_server **out, duet_error *err);
int duet_server_port(const duet_server *s);
/* Stop accepting, finish, free. */
void duet_server_stop(duet_server *s);

/* ---- chat templates ------------------------------------------------------------------------ */
/* A conversation is rendered into prompt text by a built-in chat format. A model's Jinja
 * template (tokenizer.chat_template) is recognised by distinctive substrings, never evaluated.
 * Format names follow llama.cpp (chatml, llama2, llama2-sys, llama3, mistral-v1, mistral-v3,
 * mistral-v7, phi3, gemma, deepseek3, command-r, ...) plus formats that reproduce one model
 * family's own template exactly (qwen2.5, llama3.1, mistral-nemo, deepseek-r1, ...).
 * The rendered text leaves out the template's leading BOS: tokenize it with add_bos = 1 and
 * parse_special = 1. Only plain chat: tool-calling templates are refused with the reason. */
typedef struct duet_chat_message {
    const char *role;     /* "system", "user" or "assistant" */
    const char *content;  /* NUL-terminated UTF-8; may be empty, not NULL */
} duet_chat_message;

#define DUET_CHAT_MAX_BYTES (64 << 20)   /* largest rendered conversation (and message) */
#define DUET_CHAT_MAX_MESSAGES (1 << 20)

/* The built-in format names (static strings) into out[0..cap); returns how many there are
 * (as llama_chat_builtin_templates). */
int duet_chat_template_names(const char **out, int cap);
/* Which format a template uses: tmpl[0..len) is a format name or a Jinja template source.
 * *name gets the (static) format name. DUET_ERR_UNSUPPORTED, naming the template's first bytes,
 * when it is not recognised or is a recognised template duet refuses (tool calling). */
int duet_chat_template_detect(const char *tmpl, size_t len, const char **name, duet_error *err);
/* The text that closes an assistant turn in that format ("<|im_end|>", "<|eot_id|>", ...; "" when
 * the format has none, NULL for an unknown name): generation stops when it appears. */
const char *duet_chat_template_eot(const char *name);
/* Render msgs[0..n) (add_generation_prompt: end with the assistant turn's opening) with tmpl,
 * a format name or template source (NUL-terminated). Writes at most cap bytes including a NUL;
 * returns the length of the full text (call again with a larger buffer when >= cap), or a
 * negative status: NULL role/content, unknown role, more than DUET_CHAT_MAX_BYTES of text. */
int duet_chat_render(const char *tmpl, const duet_chat_message *msgs, int n,
                     int add_generation_prompt, char *buf, size_t cap, duet_error *err);
/* The model's tokenizer.chat_template: *tmpl points into the model (valid while it lives, NOT
 * NUL-terminated) with *len bytes, or is NULL when the model has none. */
int duet_model_chat_template(const duet_model *model, const char **tmpl, size_t *len,
                             duet_error *err);
/* The format to chat with: override (a name or template source) when not NULL, else the
 * model's own template, recognised. An error names the model file when its template is absent
 * or not recognised. */
int duet_model_chat_format(const duet_model *model, const char *override, const char **name,
                           duet_error *err);

/* Render with the model's own template (or override, a name or template source, when not
 * NULL): as duet_chat_render, and what only the template says is kept (a ChatML template's
 * default system message, used when the conversation has none). Prefer this to rendering by
 * the name from duet_model_chat_format. */
int duet_model_chat_render(const duet_model *model, const char *override,
                           const duet_chat_message *msgs, int n, int add_generation_prompt,
                           char *buf, size_t cap, duet_error *err);
/* The conversation rendered for a prompt (as duet_model_chat_render, with the generation
 * prompt when add_generation_prompt) into a new NUL-terminated *text of *len bytes, and a new
 * *plain[*len] marking the bytes that came from the messages' content (1) rather than from the
 * template (0): tokenize the two with duet_tokenize_masked. Free both with free(). */
int duet_model_chat_prompt(const duet_model *model, const char *override,
                           const duet_chat_message *msgs, int n, int add_generation_prompt,
                           char **text, unsigned char **plain, size_t *len, duet_error *err);

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
    const char *arch;        /* "llama" (NULL too), "qwen2", "qwen3", "phi3" or "gemma2" */
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    int type;                /* ggml type id of the matrices (norms stay f32) */
    int output_type;         /* type of output.weight and token_embd; -1: same as type */
    int tied;                /* 1: no output.weight (shares token_embd; gemma2 always) */
    uint64_t seed;
    int head_dim;            /* 0: n_embd / n_head; else written as attention.key_length */
    int n_rot;               /* rope.dimension_count; 0: head_dim */
    int n_swa;               /* phi3/gemma2 attention.sliding_window; 0: none (phi3),
                                4096 (gemma2) */
    float attn_softcap, final_softcap; /* gemma2; 0: Gemma 2's 50 and 30 */
    float weight_std;        /* std of the random matrices and biases; 0: 0.02 (larger values
                                make attention sharp, so tests see the position terms) */
    int longrope;            /* phi3: LongRoPE as Phi-3.5 files have it (factor tensors, an
                                original context of n_ctx / 2, the matching attn_factor) */
    const char *vocab_from;  /* a GGUF (a model or a vocabulary-only file) whose tokenizer.*
                                keys are copied in place of the synthetic vocabulary; n_vocab
                                is then its token count (n_vocab 0, or equal to it). NULL: the
                                synthetic SentencePiece vocabulary */
    int mix;                 /* 0, or a llama.cpp mixed type (duet_type_mix_from_name):
                                per-tensor types by llama-quantize's rules; type is ignored */
} duet_make_model_params;

/* Write a random-weight model (matrices ~N(0, weight_std); norms 1 for llama, 1 + N(0, 0.1) for
 * the other architectures so that a norm applied to the wrong vector shows; biases
 * N(0, weight_std)) with the tensors and metadata llama.cpp expects of the architecture, and a
 * synthetic SentencePiece vocabulary (specials, 256 byte tokens, printable characters, then
 * made-up pieces) or the vocabulary of p->vocab_from, loadable by duet and by other GGUF tools.
 * Same seed (and vocabulary) = same file. */
int duet_make_model(const duet_make_model_params *p, const char *out_path, duet_error *err);

/* ---- utilities ------------------------------------------------------------------------- */
/* Seconds from a monotonic clock. */
double duet_time_s(void);
/* Measured memory read bandwidth in bytes/s with n_threads threads (best of reps passes over
 * a buffer of `bytes`, far larger than the caches; 0 on allocation failure). */
double duet_memory_bandwidth(int n_threads, size_t bytes, int reps);
/* Measured FP32 fused multiply-add peak in FLOP/s (2 per lane per FMA) with n_threads
 * threads, on the widest vectors the CPU has (best of 3 passes of about 0.1 s). The int8
 * kernels of quantised models can exceed it. */
double duet_fma_peak(int n_threads);

/* ---- learning the switch: datasets and score files -------------------------------------- */
/* Training and evaluation text read into (prompt, response) examples. Formats
 * (DUET_DATASET_AUTO picks JSONL when the first non-blank byte of the file is '{'):
 *  - JSONL, one example per line (blank lines ignored):
 *      {"prompt": P, "response": R}
 *      {"messages": [{"role": ..., "content": ...}, ...]}: the last "assistant" message is the
 *          response; the messages before it are the prompt, rendered as "role: content" lines
 *          joined by "\n" (messages after it are ignored)
 *      {"question": Q, "answer": A} (GSM8K): prompt = the paper's evaluation prompt
 *          "Please solve the following math problem with detailed steps.\n\nQuestion: Q\nAnswer:"
 *  - plain text: paragraphs (runs of non-blank lines) become examples with no prompt, so
 *    every token is a response token; long paragraphs are cut into windows at scoring time.
 * The completion format (docs/formats.md) is applied by the scorer: BOS + prompt + "\n" +
 * response + EOS, loss on response tokens only.
 * Bad data (docs/bad-inputs.md, data files): a malformed line, a missing or mistyped field, an
 * empty response or invalid UTF-8 is an error naming file:line, or with skip_bad a counted
 * skip (the first message is kept); a dataset with no usable example is an error. */
typedef enum duet_dataset_format {
    DUET_DATASET_AUTO = 0, DUET_DATASET_JSONL = 1, DUET_DATASET_TEXT = 2
} duet_dataset_format;

typedef struct duet_dataset_example {
    char *prompt;         /* NUL-terminated; NULL for plain text (no prompt, no separator) */
    size_t prompt_len;
    char *response;       /* NUL-terminated, never empty */
    size_t response_len;
    int line;             /* 1-based line of the source file (first line of a paragraph) */
} duet_dataset_example;

/* How JSONL examples become prompt/response text (`--format paper|duet`):
 *  DUET (0): as above.
 *  PAPER: the official Co-LLM training frames (its completion format: the prompt and the
 *    response each stripped of surrounding whitespace, joined by the scorer's "\n"):
 *      {"messages": [...]}: prompt = messages[0].content, response = messages[1].content,
 *          whatever their roles (at least two messages);
 *      {"question": Q, "answer": A} (GSM8K, as the official training data is made):
 *          prompt = "Please solve the following math problem with detailed steps.\n\n"
 *          "Problem: " + Q, response = "Answer: " + A + ".";
 *      {"problem": P, "solution": S} (MATH; no official training script exists, so the
 *          official evaluation frame): prompt = the MATH instruction + "Problem: " + P +
 *          "\n\nSolution:", response = S;
 *      {"prompt", "response"}: unchanged.
 *    The frames are part of the dataset's identity (hash): a score file made with one does
 *    not resume or train with the other. */
enum { DUET_DATASET_FRAMES_DUET = 0, DUET_DATASET_FRAMES_PAPER = 1 };

typedef struct duet_dataset_params {
    duet_dataset_format format; /* DUET_DATASET_AUTO (0) by default */
    int frames;           /* DUET_DATASET_FRAMES_* (0: duet's) */
    int skip_bad;         /* 1: skip bad lines/paragraphs and count them; 0: stop at the first */
} duet_dataset_params;

typedef struct duet_dataset {
    duet_dataset_example *ex;   /* [n] */
    int n;
    duet_dataset_format format; /* the format actually read */
    int n_bad;            /* examples skipped as bad (skip_bad) */
    char first_bad[512];  /* the first skipped example's message ("" when none) */
    size_t n_bytes;       /* bytes of prompt + response text over all examples */
    uint64_t hash;        /* FNV-1a 64 of the file's bytes: identifies the data for resuming */
    char path[512];
} duet_dataset;

/* Read a dataset file (p may be NULL: the defaults). On error nothing is allocated
 * (duet_dataset_free is still safe). */
int duet_dataset_load(const char *path, const duet_dataset_params *p, duet_dataset *out,
                      duet_error *err);
/* The same from a buffer (name is used in messages as the file name). */
int duet_dataset_load_buffer(const char *buf, size_t len, const char *name,
                             const duet_dataset_params *p, duet_dataset *out, duet_error *err);
void duet_dataset_free(duet_dataset *d);

/* A score file holds one model's teacher-forced pass over a dataset (`duet score`): for every
 * response token the gold id, log P(gold), the largest log-probability and the entropy (nats)
 * of the next-token distribution, and optionally the final-norm hidden state. Head training
 * and routing evaluation read a base's file and an expert's file of the same tokens (the
 * expert scored with the base's tokenizer). The layout is in docs/formats.md. */
#define DUET_SCORES_MAGIC "DUETSCR"   /* 8 bytes with the NUL */
#define DUET_SCORES_VERSION 1
#define DUET_SCORES_HEADER_SIZE 512
#define DUET_SCORES_STOPPED 2         /* positive status: the progress callback asked to stop */

/* The file header (offsets in bytes); every field is validated at open. */
typedef struct duet_scores_header {
    char magic[8];            /*   0: "DUETSCR\0" */
    uint32_t version;         /*   8: DUET_SCORES_VERSION */
    uint32_t header_size;     /*  12: DUET_SCORES_HEADER_SIZE */
    uint32_t complete;        /*  16: 1 once the index is written */
    uint32_t hidden_dim;      /*  20: elements per stored hidden state (0: none stored) */
    uint32_t n_embd;          /*  24: scored model */
    uint32_t n_vocab;         /*  28: scored model */
    uint64_t vocab_hash;      /*  32: scored model's vocabulary hash */
    uint64_t ids_vocab_hash;  /*  40: vocabulary of the gold ids (= vocab_hash unbridged) */
    uint32_t ids_n_vocab;     /*  48 */
    uint32_t n_ctx;           /*  52: every sequence has n_prompt + n_tok <= n_ctx */
    uint64_t n_seq;           /*  56 */
    uint64_t n_tok;           /*  64: response tokens, all sequences */
    uint64_t n_bytes;         /*  72: bytes of the response tokens' text (ids pieces) */
    uint64_t index_offset;    /*  80: 0 until complete */
    uint64_t config_hash;     /*  88: dataset bytes + models + options (resume identity) */
    uint32_t n_examples;      /*  96: examples in the dataset */
    uint32_t n_truncated;     /* 100: examples cut to the context */
    uint32_t n_skipped;       /* 104: examples with no response token inside the context */
    uint32_t reserved0;       /* 108 */
    uint64_t n_dropped_tok;   /* 112: tokens cut off by truncation */
    char model_name[128];     /* 120: scored model (general.name), NUL-terminated */
    char ids_name[128];       /* 248: model whose tokenizer produced the ids */
    uint8_t reserved[136];    /* 376: zero */
} duet_scores_header;

/* Writing: the scoring pass. */
typedef struct duet_scores_progress {
    int64_t seq_done, seq_total;   /* sequences in the file so far / in all */
    int64_t tok_done, tok_total;   /* tokens evaluated (context + response) so far / in all */
    int64_t tok_run;               /* tokens evaluated by this run (excludes resumed ones) */
    double seconds;                /* elapsed in this run */
} duet_scores_progress;

typedef struct duet_scores_params {
    int n_ctx;                     /* 0: min(n_ctx_train of the model(s), 4096) */
    int n_batch;                   /* tokens per prefill call, which bounds the logits buffer
                                      to n_batch x n_vocab (0: min(n_ctx, 512)) */
    int no_hidden;                 /* 1: store no hidden states */
    int parallel;                  /* sequences scored together, each in a session of its own,
                                      their chunks in one batched pass and n_batch shared among
                                      them (0 = 8; 1 with a remote). The file is the same for
                                      every value */
    const duet_model *ids_model;   /* tokenizer-of: NULL = the scored model's own */
    /* Score with a remote duet serve (its prompt log-probabilities) instead of evaluating
     * the model, which then only gives the vocabulary the server shares (vocab_only is
     * enough; checked when r was made). No hidden states are stored. */
    duet_expert_remote *remote;
    /* called after each sequence; a non-zero return stops (the partial file stays and the
     * call returns DUET_SCORES_STOPPED) */
    int (*progress)(void *ud, const duet_scores_progress *p);
    void *ud;
} duet_scores_params;

typedef struct duet_scores_stats {
    int n_examples, n_seq, n_truncated, n_skipped;
    int64_t n_tok, n_dropped_tok;
    int64_t n_resumed_seq;         /* sequences found complete in OUT.partial */
    int64_t n_seq_done;            /* sequences in the file when the call returned */
    int n_ctx;                     /* the context used */
    double seconds;
} duet_scores_stats;

/* Score `data` with `model` into out_path (via out_path.partial, resumed when present and
 * made by the same data, models and options; renamed at the end). DUET_OK,
 * DUET_SCORES_STOPPED, or an error; st (may be NULL) is filled in every case. */
int duet_scores_compute(duet_model *model, const duet_dataset *data, const duet_scores_params *p,
                        const char *out_path, duet_scores_stats *st, duet_error *err);

/* Reading. */
typedef struct duet_scores duet_scores;

/* Map and validate a complete score file. */
int duet_scores_open(const char *path, duet_scores **out, duet_error *err);
void duet_scores_close(duet_scores *f);
const char *duet_scores_path(const duet_scores *f);
/* The header of an open file. */
const duet_scores_header *duet_scores_get_header(const duet_scores *f);

/* ---- learning the switch: head training ------------------------------------------------- */
/* Inputs: a base score file (the base's own tokenizer, hidden states stored) and an expert
 * score file of the same tokens (`duet score --tokenizer-of BASE`). Per response token t:
 * lpb_t, lpe_t (gold log-probs), the base's entropy and max log-prob, and h_t.
 * The head: s_t = u . h_t + w_e * entropy_t + w_m * maxlogp_t + b (terms as features ask;
 * the paper's head is u . h_t alone, no bias). Objectives, mean over tokens (docs/method.md
 * section 4):
 *   weak: -(pw * Z_t * log sig(s_t) + (1 - Z_t) * log sig(-s_t)), pw = 8, with
 *        the pseudo-label Z_t = 1 iff the gold token is the expert's argmax and not the base's
 *        (ties within 1e-5 relative count as argmax)
 *   nll: -logsumexp(log sig(-s_t) + lpb_t, log sig(s_t) + lpe_t)
 *        + L * sig(s_t)   (the cost-aware variant, L = defer_cost >= 0)
 *   gain (duet's addition): (s_t - clip(lpe_t - lpb_t, +-8))^2 / 2: s regresses onto the
 *        expert's log-prob gain, so ranking tokens by s approximates the oracle router;
 *        sig(s) > 0.5 then means "the expert is expected to do better"
 * With a frozen base the marginal likelihood improves by deferring more everywhere (the
 * expert is better on most tokens), which can leave the head's ranking worse than its weak
 * start: hence the selection by routing quality below.
 * Training: a weak-supervision start, then (objective nll) the marginal likelihood, AdamW
 * with warm-up and linear decay, gradient clipping at 1. Sequences are split into training and
 * validation; the checkpoint kept is the one with the best routing quality on validation:
 * mean NLL per token of hard routing (defer the top r fraction of tokens by s, the expert's
 * log-prob for those, the base's for the rest) averaged over r = 10, 20, 30, 40, 50%.
 * Extra features are standardised for training and folded back into the saved weights. */
#define DUET_HT_N_RATES 5   /* rates of the routing table */
extern const double duet_head_train_rates[DUET_HT_N_RATES]; /* 0.1, 0.2, 0.3, 0.4, 0.5 */

typedef enum duet_head_objective {
    DUET_HT_NLL = 0, DUET_HT_WEAK = 1, DUET_HT_GAIN = 2
} duet_head_objective;

/* Routing on a set of tokens: mean NLL per token (nats) of hard routing at each rate. */
typedef struct duet_head_routing {
    int64_t n_tok;
    uint64_t n_bytes;               /* text bytes of these tokens (per byte: x * n_tok / n_bytes) */
    double base, expert;            /* never / always defer */
    double head[DUET_HT_N_RATES];        /* top r by the head's score */
    double random[DUET_HT_N_RATES];      /* expectation of Bernoulli(r) deferral */
    double oracle[DUET_HT_N_RATES];      /* top r by lpe - lpb (the best any router can do) */
    double uncertainty[DUET_HT_N_RATES]; /* top r by the base's entropy */
    double confidence[DUET_HT_N_RATES];  /* top r by the base's lowest max log-prob */
    double head_mean;               /* mean of head[] over the rates: routing quality */
} duet_head_routing;

/* Routing of a head (and the baselines) on a pair of score files, e.g. held-out data. */
int duet_head_eval_scores(const duet_head *head, const duet_scores *base,
                          const duet_scores *expert, duet_head_routing *out, duet_error *err);

typedef struct duet_head_train_progress {
    const char *phase;              /* "weak" or "nll" */
    int step, steps;                /* within the phase */
    int epoch;
    double loss;                    /* mean training loss since the last report */
    double route;                   /* last validation routing quality (NaN before any) */
    double best;                    /* best so far */
} duet_head_train_progress;

enum { DUET_HT_SCHEDULE_DUET = 0, DUET_HT_SCHEDULE_PAPER = 1 };

typedef struct duet_head_train_params {
    duet_head_objective objective;  /* DUET_HT_NLL (weak start, then nll), DUET_HT_WEAK (weak
                                       only) or DUET_HT_GAIN (gain regression only) */
    double defer_cost;              /* L of the cost-aware nll, >= 0 */
    int features;                   /* DUET_HEAD_FEAT_* mask; 0 = hidden */
    int epochs;                     /* epochs of the main phase (0 = 2 for nll, else 5) */
    int weak_epochs;                /* epochs of the weak start before nll (0 = 3, -1 = none) */
    double lr;                      /* main phase peak learning rate (0 = 1e-3 for nll, else
                                       1e-2; times 128/n_embd for hidden heads wider than 128) */
    double weak_lr;                 /* weak start (0 = 1e-2, scaled the same way) */
    double weight_decay;            /* AdamW decoupled decay (0 = none, the paper's) */
    double pos_weight;              /* weak positive weight (0 = 8) */
    double val_frac;                /* validation share of the sequences (0 = 0.1) */
    uint64_t seed;                  /* split and batch order */
    int batch_seqs;                 /* sequences per step (0 = 8) */
    int evals_per_phase;            /* validation passes per phase (0 = 10) */
    const float *u_init;            /* [n_embd] starting u (NULL: zeros) */
    int schedule;                   /* DUET_HT_SCHEDULE_DUET (0: warm-up and linear decay,
                                       gradients clipped to norm 1, batches shuffled, 10% of the
                                       sequences held out, the best validation checkpoint kept) or
                                       DUET_HT_SCHEDULE_PAPER (the official Co-LLM code's head
                                       initialisation: constant lr, no clipping, every sequence
                                       trained on in file order, the last value kept; validation
                                       figures are then measured on the training sequences) */
    const char *report_path;        /* JSON report, written atomically (NULL: none) */
    /* called about every 1% of a phase */
    void (*progress)(void *ud, const duet_head_train_progress *p);
    void *ud;
} duet_head_train_params;

typedef struct duet_head_train_result {
    int n_train_seq, n_val_seq;
    int64_t n_train_tok, n_val_tok;
    double pos_rate;                /* pseudo-label positive rate, training tokens */
    int best_step;                  /* global step of the kept checkpoint (0: the start) */
    char best_phase[8];             /* "init", "weak" or "nll" */
    double best_val_loss;           /* validation loss (the phase's objective) there */
    duet_head_routing val;                 /* validation routing of the kept head + baselines */
} duet_head_train_result;

/* --preset paper: the official Co-LLM head initialisation's settings in p (the rest of p is
 * kept): weak supervision on the hidden state alone, positive weight 8 (the official run's
 * weight balance), one pass in file order of batches of 8 sequences, AdamW (betas 0.9, 0.999,
 * eps 1e-8, no weight decay) at a constant 2e-5 without clipping, the last value kept. u_init
 * must then be the mean of the base's output rows (duet_head_init), as the official start. */
void duet_head_train_preset_paper(duet_head_train_params *p);

/* Train a head for the base of `base` (identity from its header). *out is the kept
 * checkpoint; res (may be NULL) is filled on success. */
int duet_head_train(const duet_scores *base, const duet_scores *expert,
                    const duet_head_train_params *p, duet_head **out, duet_head_train_result *res,
                    duet_error *err);

/* ---- learning the switch: evaluation ---------------------------------------------------- */
/* Evaluating routing policies (`duet eval`).
 * Tasks:
 *  - gsm8k / math: every policy generates greedily through the public collab API from the
 *    paper's prompt ("Please solve the following math problem with detailed steps.\n\n
 *    Question: <q>\nAnswer:"), stopping at EOS, max tokens, a full context or a stop string;
 *    the metric is exact-match accuracy (answers.h).
 *  - nll: teacher-forced per-byte NLL of a policy's hard routing on a text. One pass over
 *    the text (windows of the context, each led by BOS, exactly as duet_text_score cuts
 *    them) records per token the base's and the expert's log-prob of the gold token (the
 *    expert sees the same tokens mapped through the vocabulary bridge, and its log-prob is
 *    over its whole vocabulary), the head score (duet_head_score_ex: u.h plus the confidence
 *    features the head reads), the base's entropy and both models' log max-probabilities;
 *    each policy then takes every token's probability from the model it picks.
 *
 * Thresholds: a spec gives a policy either an explicit threshold or a target deferral rate.
 * A rate becomes the threshold at the matching quantile of the policy's score (label-free):
 * over all evaluated tokens for nll, over a base-only greedy pass on the first n_calib
 * prompts for generation tasks (docs/method.md section 3). random and oracle without a rate use
 * the deferral frequency that collm (the first collm spec without a rate) reached in the
 * same run. */
enum {
    DUET_EVAL_TASK_NLL = 0, DUET_EVAL_TASK_GSM8K, DUET_EVAL_TASK_MATH, DUET_EVAL_TASK_BIOASQ,
    DUET_EVAL_TASK_ALPACAEVAL, DUET_EVAL_TASK_COUNT
};

/* Teacher-forced router beyond the collab policies: defer where the expert's log-prob gain
 * lpe - lpb is largest (needs the gold tokens, so nll only). */
#define DUET_EVAL_POLICY_ORACLE DUET_POLICY_COUNT

/* "nll", "gsm8k", "math" -> task; -1 when unknown. */
int duet_eval_task_from_name(const char *name);
const char *duet_eval_task_name(int task);
/* Metric name of a task: "nll_per_byte" or "accuracy"; 1 when higher is better. */
const char *duet_eval_metric_name(int task);
int duet_eval_higher_is_better(int task);
/* Collab policy names plus "oracle"; -1 when unknown. */
int duet_eval_policy_from_name(const char *name);
const char *duet_eval_policy_name(int policy);
/* 1 for policies whose deferral is "score > threshold" (collm, compose, uncertainty, oracle). */
int duet_eval_policy_thresholded(int policy);

/* The random baseline's deferral rate when none is asked for: the paper's coin flip. */
#define DUET_EVAL_RANDOM_RATE 0.5

typedef struct duet_eval_spec {
    int policy;       /* duet_policy or DUET_EVAL_POLICY_ORACLE */
    double rate;      /* target deferral fraction in [0,1], or < 0: none */
    float threshold;  /* explicit threshold (eta for collm/compose, nats for uncertainty,
                         log-prob gain for oracle), or < 0: default (the head's eta, else
                         0.5; 2.0 nats). Ignored when rate >= 0. */
} duet_eval_spec;

/* The evaluation protocol (docs/method.md, evaluation protocols): duet's own prompts, stop and
 * lenient scorers, or the official Co-LLM code's prompts, splits, 512 new tokens, no stop
 * string and strict scorers. */
enum { DUET_EVAL_PROTOCOL_DUET = 0, DUET_EVAL_PROTOCOL_PAPER = 1 };
/* Which scorer decides "value"/"n_correct" (both are always computed): AUTO = the protocol's. */
enum { DUET_EVAL_SCORING_AUTO = 0, DUET_EVAL_SCORING_DUET = 1, DUET_EVAL_SCORING_PAPER = 2 };
/* Which problems of the file: AUTO = the test split under the paper protocol, else all. */
enum { DUET_EVAL_SPLIT_AUTO = 0, DUET_EVAL_SPLIT_ALL = 1, DUET_EVAL_SPLIT_TEST = 2,
       DUET_EVAL_SPLIT_VALIDATION = 3 };

/* "duet"/"paper" -> DUET_EVAL_PROTOCOL_*, "duet"/"paper" -> DUET_EVAL_SCORING_*, "all"/"test"/
 * "validation" -> DUET_EVAL_SPLIT_*; -1 for any other name */
int duet_eval_protocol_from_name(const char *name);
const char *duet_eval_protocol_name(int protocol);
int duet_eval_scoring_from_name(const char *name);
int duet_eval_split_from_name(const char *name);
/* Write the records of a split (gsm8k or math; DUET_EVAL_SPLIT_TEST or _VALIDATION, or _ALL)
 * of a JSONL file to out_path, one per line as the file has them, in the split's order,
 * atomically (`duet data split`). *n_written (may be NULL) gets their number. */
int duet_eval_split_save(int task, const char *data_path, int split, const char *out_path, int *n_written,
                         duet_error *err);

/* The name a result is reported under: the policy's, except "random_matched" for the random
 * policy without a rate of its own (duet_eval_run gives it collm's measured deferral rate),
 * so it stands apart from "random" at a given rate. */
const char *duet_eval_spec_name(const duet_eval_spec *spec);

/* A pairwise judge behind an OpenAI-compatible /v1/chat/completions (AlpacaEval-style win
 * rates; docs/method.md). Each comparison asks the judge which of two responses to an
 * instruction is better and reads "A", "B" or "tie" from the start of its reply; any other
 * reply counts as a tie and as invalid. With both orders (the default) every example is
 * judged twice, the model's output first and then second, which cancels a judge's
 * preference for a position. win_rate = (wins + ties / 2) / comparisons. */
typedef struct duet_judge_params {
    const char *url;        /* base URL; "/v1/chat/completions" is appended ("/chat/completions"
                               when it ends in "/v1") */
    const char *model;      /* "model" of the request (NULL: "judge") */
    const char *api_key;    /* Bearer token (NULL: none) */
    int timeout_ms;         /* per request (0: 60 s) */
    int retries;            /* on connection errors, 5xx and 429 (0: 2; < 0: none) */
    size_t max_reply;       /* bytes of one reply (0: 1 MiB) */
    size_t max_text;        /* bytes of each response shown to the judge (0: 32 KiB; cut at a
                               UTF-8 character boundary) */
    int one_order;          /* 1: only the model's output as response A */
} duet_judge_params;
typedef struct duet_judge_result {
    int comparisons, wins, ties, losses, invalid;
    double win_rate;
} duet_judge_result;
/* Judge outputs[i] against refs[i] (both answers to instr[i]), n examples. */
int duet_judge_win_rate(const duet_judge_params *p, const char *const *instr, const char *const *outputs,
                        const char *const *refs, int n, duet_judge_result *res, duet_error *err);

typedef struct duet_eval_params {
    int task;
    int protocol;       /* DUET_EVAL_PROTOCOL_* (0: duet) */
    int scoring;        /* DUET_EVAL_SCORING_* (0: the protocol's) */
    int split;          /* DUET_EVAL_SPLIT_* (0: the protocol's); applied before limit */
    int limit;          /* examples (gsm8k/math) or bytes of text (nll); 0 = all */
    int max_tokens;     /* new tokens per answer (0 = 256; paper protocol: 512) */
    int n_ctx;          /* context of every session (0 = min of the models' defaults, <= 4096) */
    int n_calib;        /* prompts of the base-only calibration pass (0 = 15) */
    const char *const *stops; /* stop strings (NULL: "\n\nQuestion:"; paper protocol: none) */
    int n_stops;
    uint64_t seed;      /* random policy: problem i is decoded with seed + i (duet_collab_set_seed),
                           whichever decoder runs it and whenever */
    int parallel;       /* generation tasks: problems decoded together, each on a decoder of its
                           own, their steps batched (duet_gen_step_batch); 0 = 8; never more than
                           the problems. Results are the same for every value; 1 decodes one
                           problem at a time */
    /* called after each example (generation: done counts the finished ones, which finish in
     * any order with parallel > 1) or window (nll); what names the phase */
    void (*progress)(void *ud, const char *what, long done, long total);
    void *ud;
    /* generation tasks: called with every answer (may be NULL); output is cut at the stop
     * string, pred is the extracted answer ("" when none) */
    void (*on_answer)(void *ud, const duet_eval_spec *spec, int index, const char *output,
                      const char *pred, const char *reference, int correct);
    void *answer_ud;
    /* bioasq: a BioASQ JSON file whose first 4 questions of each type are the in-context
       examples of that type (NULL: none) */
    const char *shots;
    /* alpacaeval: where to write every policy's outputs in AlpacaEval's JSON (NULL: nowhere;
       rewritten atomically after each policy), and a judge with the reference outputs
       (AlpacaEval's JSON, the data's instructions in order; both NULL: no win rate) */
    const char *alpaca_outputs;
    const char *reference;
    const duet_judge_params *judge;
} duet_eval_params;

#define DUET_EVAL_MAX_METRICS 16

typedef struct duet_eval_result {
    duet_eval_spec spec;
    double value;              /* nll per byte, or accuracy in [0,1] */
    double threshold;          /* threshold applied (eta, nats, gain), NaN when none */
    double rate;               /* random: the rate applied; else NaN */
    double deferral_frequency; /* deferred / evaluated tokens, pooled over the data */
    double deferral_frequency_examples; /* mean over examples of their own fraction */
    long n_tokens;             /* tokens scored (nll) or generated */
    long n_deferred;
    long expert_calls;         /* times the expert's next-token distribution was used */
    int n_examples, n_correct;
    int n_truncated;           /* prompts cut from the left to fit the context */
    int protocol, scoring;     /* as applied (scoring resolved: DUET or PAPER) */
    int split;                 /* as applied (resolved: ALL, TEST or VALIDATION) */
    int n_correct_duet, n_correct_paper; /* both scorers' counts (n_correct is the chosen one's) */
    double seconds;            /* model time: decoding (with parallel > 1 the wall time of
                                  the batched decoding), or the teacher-forced passes used */
    double tokens_per_second;
    /* bioasq, alpacaeval: the task's named metrics (bioasq: the official per-type means and
       their averages; alpacaeval: the mean output length, and the win rate once judged) */
    int n_metrics;
    char metric_names[DUET_EVAL_MAX_METRICS][24];
    double metrics[DUET_EVAL_MAX_METRICS];
} duet_eval_result;

typedef struct duet_eval duet_eval;

/* Load the data (JSONL for gsm8k/math with file:line errors, plain text for nll) and check
 * the models (vocabulary bridge, head). expert is needed by every policy but base; anti by
 * proxy only. The models and head must outlive the context. */
int duet_eval_open(duet_model *base, duet_model *expert, duet_model *anti, const duet_head *head,
                   const char *data_path, const duet_eval_params *params, duet_eval **out,
                   duet_error *err);
void duet_eval_close(duet_eval *c);
int duet_eval_task(const duet_eval *c);
/* Number of examples (gsm8k/math) or of scored tokens (nll; runs the teacher-forced pass). */
int duet_eval_size(duet_eval *c, duet_error *err);
/* nll: scored tokens that are the base's unknown token (text the base cannot spell; the
 * expert then sees its unknown token too, which it may never have learned): worth a warning.
 * 0 before the teacher-forced pass and for generation tasks. */
int duet_eval_n_unknown(const duet_eval *c);
/* Evaluate one spec. random and oracle need a rate here (duet_eval_run resolves them). */
int duet_eval_one(duet_eval *c, const duet_eval_spec *spec, duet_eval_result *out,
                  duet_error *err);
/* Evaluate specs in order, random/oracle without a rate after the first collm spec without
 * one (whose deferral frequency they take); out[i] belongs to specs[i]. */
int duet_eval_run(duet_eval *c, const duet_eval_spec *specs, int n, duet_eval_result *out,
                  duet_error *err);
/* The results as JSON, written atomically: {"task", "data", "results": [{"policy", "metric",
 * "value", "deferral_frequency", "expert_calls", "tokens_per_second", ...}, ...]}. */
int duet_eval_results_save(int task, const char *data_path, const duet_eval_result *r, int n,
                           const char *path, duet_error *err);

/* ---- learning the switch: tuning ------------------------------------------------------- */
/* Choosing the collm threshold eta the paper's way (docs/method.md section 6, `duet tune`):
 *  1. Record p = sigmoid(u.h) for every token of the calibration pass (duet_eval_calibration:
 *     the base alone, greedy, on the first n_calib validation prompts; every token of the
 *     text for nll).
 *  2. For each target deferral portion q (0.0, 0.1, ..., 0.9) the candidate eta is the
 *     smallest observed p with fraction(p >= eta) <= q (eta = 1, never defer, when no p
 *     qualifies, as for q = 0).
 *  3. Evaluate the whole validation split with collm at each candidate and keep the best
 *     metric (ties: the lower deferral frequency, i.e. fewer expert calls).
 * The table (portion, eta, metric, deferral frequency, expert calls, tokens/s) is the
 * paper's metric-vs-frequency curve. */
#define DUET_TUNE_MAX_POINTS 32

typedef struct duet_tune_point {
    double portion;      /* target deferral portion q */
    float eta;           /* candidate threshold */
    duet_eval_result res;     /* collm at eta on the validation split */
} duet_tune_point;

typedef struct duet_tune_result {
    int task;
    int n_calib_tokens;  /* tokens whose p the candidates come from */
    int n_points;
    duet_tune_point points[DUET_TUNE_MAX_POINTS];
    int best;            /* index of the chosen point */
} duet_tune_result;

/* The candidate eta for portion q from the scores s = u.h of n tokens (see above). */
float duet_tune_candidate(const float *scores, int n, double q);
/* Run the protocol on an eval context (task, data and models as for eval). portions: the
 * q values (NULL: 0.0, 0.1, ..., 0.9), at most DUET_TUNE_MAX_POINTS. */
int duet_tune_run(duet_eval *c, const double *portions, int n_portions, duet_tune_result *out,
                  duet_error *err);
/* Write PREFIX.csv, PREFIX.json and PREFIX.svg (each atomically); then, when head is not
 * NULL, store the chosen eta in it and save it to head_path atomically. */
int duet_tune_save(const duet_tune_result *r, const char *prefix, duet_head *head,
                   const char *head_path, duet_error *err);

/* ---- training the base (LM trainer) ------------------------------------------------------ */
/* A llama model trained in F32 (`duet train`): language-model pre-training on plain text,
 * supervised fine-tuning on prompt/response JSONL (loss on response tokens only), and
 * Co-LLM's joint training of the base and its deferral head (docs/method.md section 5).
 *
 * Data. The dataset is cut into sequences exactly as `duet score` cuts it (with
 * n_ctx = T + 1): plain-text paragraphs as windows of BOS + T tokens, JSONL examples as
 * BOS + prompt + "\n" + response + EOS. Position i of a sequence predicts token i + 1 and
 * carries loss iff token i + 1 is a response token. Held-out: a separate file, or a seeded
 * share of the examples (whole examples, so no window of a held-out paragraph is trained on).
 * Step s uses the sequences s*B*accum .. of the epoch's seeded permutation, so a resumed run
 * continues bit for bit (the data order needs no saved state).
 *
 * Joint training (expert != NULL): the expert's log-probs come from a `duet score` file made
 * with --tokenizer-of BASE on the same data and context (n_ctx = T + 1); every sequence and
 * gold token is checked against the trainer's own tokenisation before training starts. */
typedef struct duet_lm duet_lm;

/* Load every weight of a llama GGUF (any supported type) as F32 for training; n_threads as
 * duet_model_params (0: all CPUs). */
int duet_lm_load(const char *path, int n_threads, duet_lm **out, duet_error *err);
void duet_lm_free(duet_lm *m);
/* The model the weights came from (tokenizer, metadata, identity): a head for the trained
 * base is loaded and checked against it. Valid while m lives. */
const duet_model *duet_lm_source(const duet_lm *m);

/* LoRA training on a frozen base (llama, qwen2, qwen3): the base's matrices stay in the file's type and are
 * multiplied straight from their blocks; only low-rank adapters (and, joint training, u) are
 * trained, and duet_lm_train writes them to out_path as a llama.cpp LoRA GGUF (F32 A and B,
 * adapter.lora.alpha) that duet_lora_load / llama.cpp's --lora apply unmerged. Each adapted
 * matrix W gains s B A, A: r x n_in, B: n_out x r, s = alpha / r; A starts uniform in
 * +-1/sqrt(n_in) (PEFT's init) and B at zero, so step 0 is the base exactly. Target bits: */
enum { DUET_LORA_Q = 1, DUET_LORA_K = 2, DUET_LORA_V = 4, DUET_LORA_O = 8, DUET_LORA_GATE = 16,
       DUET_LORA_UP = 32, DUET_LORA_DOWN = 64, DUET_LORA_OUTPUT = 128,
       DUET_LORA_DEFAULT = 127 /* the attention and FFN matrices; the output stays plain */ };
typedef struct duet_lm_lora_params {
    int rank;             /* r >= 1 (0 with init: the file's) */
    float alpha;          /* 0: r (s = 1) */
    unsigned targets;     /* DUET_LORA_* bits; 0: DUET_LORA_DEFAULT (with init: the file's) */
    uint64_t seed;        /* A's random start */
    const char *init;     /* start from this adapter file instead (resuming): its rank, alpha
                             and targets, which rank/alpha/targets, when set, must equal */
} duet_lm_lora_params;
/* Load the base at path (llama, qwen2 or qwen3; other architectures are refused by name) with
 * adapters. */
int duet_lm_load_lora(const char *path, int n_threads, const duet_lm_lora_params *p,
                      duet_lm **out, duet_error *err);
/* Parse a comma-separated list of q, k, v, o, gate, up, down, output into DUET_LORA_* bits;
 * DUET_ERR_ARG naming the unknown entry. */
int duet_lora_targets_parse(const char *list, unsigned *out, duet_error *err);

typedef struct duet_lm_progress {
    int64_t step, steps;
    double loss;          /* mean training loss per token since the last report */
    double val_loss;      /* last held-out loss (NaN before the first evaluation) */
    double lr, grad_norm;
    double tok_per_s;     /* weighted + context tokens through the model per second */
    double eta_s;
    int is_eval;          /* 1: this report follows a held-out evaluation */
} duet_lm_progress;

typedef struct duet_lm_train_params {
    const char *data_path;       /* training data (JSONL or plain text) */
    const char *val_path;        /* held-out data; NULL: val_frac of the examples */
    int data_frames;             /* DUET_DATASET_FRAMES_* of both files (0: duet's) */
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
    const char *out_path;        /* the trained model, F32 GGUF (LoRA: the adapter file) */
    const char *name;            /* general.name of the output (NULL: keep the source's) */
    const char *log_path;        /* JSON log (NULL: none) */
    const char *curve_prefix;    /* PREFIX.csv and PREFIX.svg of the losses (NULL: none) */
    /* joint Co-LLM training */
    const duet_scores *expert;      /* expert scores of data_path (NULL: language modelling) */
    const duet_scores *val_expert;  /* expert scores of val_path (with val_path) */
    const float *u_init;         /* [n_embd] head start (the weak-supervision head) */
    const char *head_out;        /* the trained head (sidecar GGUF) */
    /* with expert: the base's own scores of data_path (and of val_path) switch the objective
     * to the official weak-supervision one: 2/3 token cross-entropy (the deferral logit in
     * the softmax) + 1/3 BCE of the deferral logit against the pseudo-label "the expert's top
     * token is the gold one and the base's is not", positive weight 5, both means over the
     * response tokens. NULL: the marginal likelihood. */
    const duet_scores *weak_base;
    const duet_scores *val_weak_base;
    void (*progress)(void *ud, const duet_lm_progress *p);
    void *ud;
} duet_lm_train_params;

typedef struct duet_lm_train_result {
    int64_t steps, tokens;       /* tokens = weighted (loss) tokens trained on */
    int n_train_seq, n_val_seq;
    double first_val, last_val, best_val;
    double seconds, tok_per_s;
    int n_threads;
} duet_lm_train_result;

#define DUET_LM_STOPPED 2   /* positive status: stopped at stop_at, resumable */

/* Train m (its weights, or a LoRA model's adapters, change in place) and write p->out_path
 * (and the head, joint training). DUET_OK, DUET_LM_STOPPED, or an error. */
int duet_lm_train(duet_lm *m, const duet_lm_train_params *p, duet_lm_train_result *res,
                  duet_error *err);

/* ---- model files: inspection, types ------------------------------------------------------ */
/* Validate a GGUF file (the whole file is read and checked, as a model load would) and print
 * its version, every metadata key (long arrays summarised) and the tensor table to out: what
 * `duet info` shows. DUET_OK, or the reader's error naming the file and what is wrong; nothing
 * is printed then. */
int duet_gguf_print(const char *path, FILE *out, duet_error *err);

/* Tensor element types are ggml's type ids (duet_hparams.weight_type,
 * duet_make_model_params.type). */
enum { DUET_TYPE_F32 = 0 };
/* Type id for a name as ggml spells it, in either case ("q8_0", "Q8_0", "f16", ...); -1 if
 * unknown. */
int duet_type_from_name(const char *name);
/* llama.cpp's mixed file types as `llama-quantize` names them ("q4_k_m", "q5_k_m"): most
 * matrices in one type, some in more bits (duet_make_model_params.mix); > 0, or -1 if unknown. */
int duet_type_mix_from_name(const char *name);

/* ---- atomic files, progress text --------------------------------------------------------- */
/* Replacing a file all at once: output goes to "<path>.tmp" beside the target and is flushed,
 * fsync'ed, closed and renamed over it only when complete, so a reader (or a crash, or a full
 * disk) never sees a half-written model, report or trace; on failure the temporary file is
 * removed and the target is untouched. */
typedef struct duet_atomic {
    FILE *f;    /* write here between open and commit */
    char *tmp;  /* "<path>.tmp" */
    char *path; /* the target */
} duet_atomic;

/* Create "<path>.tmp" (truncating an old one) for writing. DUET_OK, or an I/O / memory error
 * with a left closed (a->f NULL; abort is then a no-op). A zero-initialised duet_atomic is
 * closed too, so cleanup code may call abort whether or not open ran. */
int duet_atomic_open(duet_atomic *a, const char *path, duet_error *err);
/* Flush, fsync, close and rename onto the target (then, best effort, fsync its directory so
 * the rename survives a crash). Also fails when a write on a->f failed earlier (ferror). On
 * failure the temporary file is removed. Always releases a. */
int duet_atomic_commit(duet_atomic *a, duet_error *err);
/* Close and remove the temporary file without touching the target; releases a. */
void duet_atomic_abort(duet_atomic *a);

/* The whole of data[0..n) as the new content of path. */
int duet_atomic_write(const char *path, const void *data, size_t n, duet_error *err);

/* The text of the one progress line the command-line tool shows on a terminal (perplexity,
 * score, eval/tune, train, head train): done/total, a rate with its unit, one ETA format and
 * an optional tail. Pure formatting, no clock and no printing; the CLI times, throttles and
 * prints it.
 * "ETA h:mm:ss" from one hour up, else "ETA m:ss" (seconds rounded to the nearest one), or
 * "ETA ?" when seconds is negative, NaN, infinite or 1e9 or more (no meaningful estimate).
 * Writes at most cap bytes, always NUL-terminated when cap > 0 (cut short when the text does
 * not fit); returns the length of the whole text, like snprintf, so a return >= cap means the
 * text was cut. buf may be NULL when cap is 0. */
size_t duet_format_eta(char *buf, size_t cap, double seconds);

typedef struct duet_progress_line {
    const char *label;   /* leads the line, followed by ": " (NULL or "": no label) */
    const char *unit;    /* what done and total count, e.g. "tok" (NULL or "": no unit) */
    long long done, total;
    long long done0;     /* done when the timing started (work resumed or before the clock) */
    double elapsed;      /* seconds since the timing started */
    const char *extra;   /* appended after ", " (NULL or "": nothing) */
} duet_progress_line;

/* "LABEL: DONE/TOTAL UNIT, RATE UNIT/s, ETA ...[, EXTRA]". RATE = (done - done0) / elapsed,
 * printed with 2 decimals below 10, 1 below 100, none above, and "?" when no work has been
 * timed yet (elapsed <= 0 or done <= done0); the ETA is (total - done) / RATE, 0 once done
 * reaches total, "?" while the rate is unknown. Same length and termination contract as
 * duet_format_eta. */
size_t duet_format_progress(char *buf, size_t cap, const duet_progress_line *l);

#ifdef __cplusplus
}
#endif
#endif /* DUET_H */
