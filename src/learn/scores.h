/*
 * scores.h: score files: per-token results of one model's teacher-forced pass over a dataset
 * (`duet score`), the input of head training and routing evaluation. Internal API: the
 * public part (the header, scoring, opening) is in duet.h.
 *
 * What a file holds. The dataset's examples become sequences (duet.h, datasets): JSONL
 * examples in the completion format BOS + prompt + "\n" + response + EOS (cut to the context,
 * with a count), plain-text paragraphs as windows of BOS + up to n_ctx-1 tokens. For every response
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
 *   0      duet_scores_header, 512 bytes
 *   512    one block per sequence, in order, each starting at a multiple of 64:
 *            duet_scores_block                      32 bytes
 *            duet_scores_tok [n_tok]                16 bytes each
 *            uint16  [n_tok][hidden_dim]    F16 hidden states (none when hidden_dim is 0)
 *            zero padding to a multiple of 64
 *   index_offset: duet_scores_seq [n_seq], 40 bytes each (written last)
 * A file being written (OUT.partial) has complete = 0 and no index yet. Blocks are appended
 * and flushed one at a time, so an interrupted run leaves complete blocks plus at most one
 * torn block; re-running the same command resumes after the last complete block (`check`
 * detects torn data) and renames OUT.partial to OUT when done.
 * Readers map the file and use the index; every count, offset and id is validated at open.
 *
 * Files larger than memory. A reader that goes through the sequences calls duet_scores_done
 * after each one; every DUET_SCORES_WINDOW bytes of blocks (environment, default 4 MiB)
 * the process's pages of the mapping are dropped, so what a pass keeps resident is bounded by
 * the window (about twice it: the kernel maps neighbouring cached pages on each fault), not
 * by the file (opening validates that way too). Dropped pages read back from the file on the
 * next access, so pointers stay valid; a later pass re-reads from the page cache.
 */
#ifndef DUET_TRAIN_SCORES_H
#define DUET_TRAIN_SCORES_H

#include <stdint.h>

#include "duet.h"


enum { DUET_SCORES_SEQ_TRUNCATED = 1, DUET_SCORES_SEQ_WINDOW = 2 };


typedef struct duet_scores_block {     /* offsets from the block's start */
    char magic[4];            /* "SEQB" */
    uint32_t seq;             /* ordinal of the sequence */
    uint32_t n_tok;           /* response tokens */
    uint32_t n_prompt;        /* context tokens before them (BOS included) */
    uint32_t example;         /* index of the dataset example it comes from */
    uint32_t n_bytes;         /* bytes of its response tokens' text */
    uint32_t flags;           /* DUET_SCORES_SEQ_* */
    uint32_t check;           /* hash of the block's token records and hidden states
                                 (duet_scores_block_check; other readers may ignore it) */
} duet_scores_block;

typedef struct duet_scores_tok {
    int32_t gold;             /* 0 */
    float lp, maxlp, entropy; /* 4, 8, 12 */
} duet_scores_tok;

typedef struct duet_scores_seq {
    uint64_t offset;          /*  0: of the sequence's duet_scores_block */
    uint64_t tok_start;       /*  8: response tokens in the sequences before it */
    uint32_t n_tok, n_prompt, example, n_bytes, flags, reserved; /* 16 .. 36 */
} duet_scores_seq;

/* The block check of n bytes of token records and hidden states (for tools and tests that
 * edit a file's records in place and keep it valid). */
uint32_t duet_scores_block_check(const void *p, size_t n);

/* ---- the sequences of a dataset ---------------------------------------------------------- */
/* The token sequences the scorer evaluates (and the trainer trains on), in dataset order:
 * ids[off .. off+n) with the first n_prompt tokens context only (see the top of this file). */
typedef struct duet_scores_plan_seq {
    int64_t off;                   /* into duet_scores_plan.ids */
    int n, n_prompt, example, flags;
} duet_scores_plan_seq;

typedef struct duet_scores_plan {
    int32_t *ids;
    int64_t n_ids, cap_ids;
    duet_scores_plan_seq *seq;
    int n_seq, cap_seq;
    int64_t tok_total, n_tok, n_dropped;
    int n_truncated, n_skipped;
} duet_scores_plan;

/* Tokenise `d` with idm's tokenizer into sequences of at most n_ctx tokens. */
int duet_scores_plan_build(const duet_model *idm, const duet_dataset *d, int n_ctx,
                           duet_scores_plan *p, duet_error *err);
void duet_scores_plan_free(duet_scores_plan *p);

/* ---- reading (opening a file: duet.h) ----------------------------------------------------- */
const duet_scores_seq *duet_scores_seqs(const duet_scores *f);                 /* [n_seq] */
/* The token records [n_tok] of sequence i. */
const duet_scores_tok *duet_scores_seq_toks(const duet_scores *f, uint64_t i);
/* F16 hidden states [n_tok][hidden_dim] of sequence i; NULL when none are stored. */
const uint16_t *duet_scores_seq_hidden(const duet_scores *f, uint64_t i);
/* Sequence i has been read (see the top of this file): may drop the mapping's pages. */
void duet_scores_done(const duet_scores *f, uint64_t i);

#endif
