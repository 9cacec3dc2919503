/*
 * scores.h: score files: per-token results of one model's teacher-forced pass over a dataset
 * (`duet score`), the input of head training and routing evaluation. Internal API.
 *
 * What a file holds. The dataset's examples become sequences (dataset.h): JSONL examples in
 * the completion format BOS + prompt + "\n" + response + EOS (cut to the context, with a
 * count), plain-text paragraphs as windows of BOS + up to n_ctx-1 tokens. For every response
 * token (the tokens after the sequence's n_prompt context tokens) the file stores:
 *   gold     the token's id in the "ids" vocabulary (the scored model's own, or with
 *            --tokenizer-of BASE the base's: then text is tokenised by BASE and the ids are
 *            mapped into the scored model through the vocabulary bridge, so a base file and
 *            an expert file describe the same tokens)
 *   lp       log P(gold | prefix)                      \  natural log, from the logits row
 *   maxlp    max_v log P(v | prefix)                    > that predicts the token; over the
 *   entropy  -sum_v P(v) log P(v) (nats)               /  ids vocabulary (bridged files: the
 *            scored model's distribution restricted to tokens the ids vocabulary has, and
 *            renormalised, which is what the collaborative decoder compares)
 *   hidden   optionally, the final-norm hidden state of that row, F16 [hidden_dim]
 *
 * File layout (little-endian; offsets in bytes from the start of the file):
 *   0      dsf_header, 512 bytes
 *   512    one block per sequence, in order, each starting at a multiple of 64:
 *            dsf_block                      32 bytes
 *            dsf_tok [n_tok]                16 bytes each
 *            uint16  [n_tok][hidden_dim]    F16 hidden states (none when hidden_dim is 0)
 *            zero padding to a multiple of 64
 *   index_offset: dsf_seq [n_seq], 40 bytes each (written last)
 * A file being written (OUT.partial) has complete = 0 and no index yet. Blocks are appended
 * and flushed one at a time, so an interrupted run leaves complete blocks plus at most one
 * torn block; re-running the same command resumes after the last complete block (`check`
 * detects torn data) and renames OUT.partial to OUT when done.
 * Readers map the file and use the index; every count, offset and id is validated at open.
 */
#ifndef DUET_TRAIN_SCORES_H
#define DUET_TRAIN_SCORES_H

#include <stdint.h>

#include "learn/dataset.h"
#include "duet.h"

#define DSF_MAGIC "DUETSCR"   /* 8 bytes with the NUL */
#define DSF_VERSION 1
#define DSF_HEADER_SIZE 512
#define DSF_STOPPED 2          /* positive status: the progress callback asked to stop */

enum { DSF_SEQ_TRUNCATED = 1, DSF_SEQ_WINDOW = 2 };

typedef struct dsf_header {
    char magic[8];            /*   0: "DUETSCR\0" */
    uint32_t version;         /*   8: DSF_VERSION */
    uint32_t header_size;     /*  12: DSF_HEADER_SIZE */
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
} dsf_header;

typedef struct dsf_block {     /* offsets from the block's start */
    char magic[4];            /* "SEQB" */
    uint32_t seq;             /* ordinal of the sequence */
    uint32_t n_tok;           /* response tokens */
    uint32_t n_prompt;        /* context tokens before them (BOS included) */
    uint32_t example;         /* index of the dataset example it comes from */
    uint32_t n_bytes;         /* bytes of its response tokens' text */
    uint32_t flags;           /* DSF_SEQ_* */
    uint32_t check;           /* hash of the block's token records and hidden states
                                 (dsf_block_check; other readers may ignore it) */
} dsf_block;

typedef struct dsf_tok {
    int32_t gold;             /* 0 */
    float lp, maxlp, entropy; /* 4, 8, 12 */
} dsf_tok;

typedef struct dsf_seq {
    uint64_t offset;          /*  0: of the sequence's dsf_block */
    uint64_t tok_start;       /*  8: response tokens in the sequences before it */
    uint32_t n_tok, n_prompt, example, n_bytes, flags, reserved; /* 16 .. 36 */
} dsf_seq;

/* The block check of n bytes of token records and hidden states (for tools and tests that
 * edit a file's records in place and keep it valid). */
uint32_t dsf_block_check(const void *p, size_t n);

/* ---- the sequences of a dataset ---------------------------------------------------------- */
/* The token sequences the scorer evaluates (and the trainer trains on), in dataset order:
 * ids[off .. off+n) with the first n_prompt tokens context only (see the top of this file). */
typedef struct dsf_plan_seq {
    int64_t off;                   /* into dsf_plan.ids */
    int n, n_prompt, example, flags;
} dsf_plan_seq;

typedef struct dsf_plan {
    int32_t *ids;
    int64_t n_ids, cap_ids;
    dsf_plan_seq *seq;
    int n_seq, cap_seq;
    int64_t tok_total, n_tok, n_dropped;
    int n_truncated, n_skipped;
} dsf_plan;

/* Tokenise `d` with idm's tokenizer into sequences of at most n_ctx tokens. */
int dsf_plan_build(const duet_model *idm, const ds_dataset *d, int n_ctx, dsf_plan *p,
                   duet_error *err);
void dsf_plan_free(dsf_plan *p);

/* ---- writing: the scoring pass ---------------------------------------------------------- */
typedef struct dsf_progress {
    int64_t seq_done, seq_total;   /* sequences in the file so far / in all */
    int64_t tok_done, tok_total;   /* tokens evaluated (context + response) so far / in all */
    int64_t tok_run;               /* tokens evaluated by this run (excludes resumed ones) */
    double seconds;                /* elapsed in this run */
} dsf_progress;

typedef struct dsf_score_params {
    int n_ctx;                     /* 0: min(n_ctx_train of the model(s), 4096) */
    int n_batch;                   /* tokens per prefill call, which bounds the logits buffer
                                      to n_batch x n_vocab (0: min(n_ctx, 512)) */
    int no_hidden;                 /* 1: store no hidden states */
    const duet_model *ids_model;   /* tokenizer-of: NULL = the scored model's own */
    /* Score with a remote duet serve (its prompt log-probabilities) instead of evaluating
     * the model, which then only gives the vocabulary the server shares (vocab_only is
     * enough; checked when r was made). No hidden states are stored. */
    duet_expert_remote *remote;
    /* called after each sequence; a non-zero return stops (the partial file stays and the
     * call returns DSF_STOPPED) */
    int (*progress)(void *ud, const dsf_progress *p);
    void *ud;
} dsf_score_params;

typedef struct dsf_score_stats {
    int n_examples, n_seq, n_truncated, n_skipped;
    int64_t n_tok, n_dropped_tok;
    int64_t n_resumed_seq;         /* sequences found complete in OUT.partial */
    int64_t n_seq_done;            /* sequences in the file when the call returned */
    int n_ctx;                     /* the context used */
    double seconds;
} dsf_score_stats;

/* Score `data` with `model` into out_path (via out_path.partial, resumed when present and
 * made by the same data, models and options; renamed at the end). DUET_OK, DSF_STOPPED, or
 * an error; st (may be NULL) is filled in every case. */
int dsf_score(duet_model *model, const ds_dataset *data, const dsf_score_params *p,
              const char *out_path, dsf_score_stats *st, duet_error *err);

/* ---- reading ---------------------------------------------------------------------------- */
typedef struct dsf_file dsf_file;

/* Map and validate a complete score file. */
int dsf_open(const char *path, dsf_file **out, duet_error *err);
void dsf_close(dsf_file *f);
const char *dsf_path(const dsf_file *f);
const dsf_header *dsf_hdr(const dsf_file *f);
const dsf_seq *dsf_seqs(const dsf_file *f);                  /* [n_seq] */
const dsf_tok *dsf_seq_toks(const dsf_file *f, uint64_t i);  /* [n_tok] of sequence i */
/* F16 hidden states [n_tok][hidden_dim] of sequence i; NULL when none are stored. */
const uint16_t *dsf_seq_hidden(const dsf_file *f, uint64_t i);

#endif
