/*
 * dataset.h: training and evaluation text read into (prompt, response) examples (internal).
 *
 * Formats (DS_AUTO picks JSONL when the first non-blank byte of the file is '{'):
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
 * skip (the first message is kept); a dataset with no usable example is an error.
 */
#ifndef DUET_TRAIN_DATASET_H
#define DUET_TRAIN_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "duet.h"

typedef enum ds_format { DS_AUTO = 0, DS_JSONL = 1, DS_TEXT = 2 } ds_format;

typedef struct ds_example {
    char *prompt;         /* NUL-terminated; NULL for plain text (no prompt, no separator) */
    size_t prompt_len;
    char *response;       /* NUL-terminated, never empty */
    size_t response_len;
    int line;             /* 1-based line of the source file (first line of a paragraph) */
} ds_example;

typedef struct ds_params {
    ds_format format;     /* DS_AUTO (0) by default */
    int skip_bad;         /* 1: skip bad lines/paragraphs and count them; 0: stop at the first */
} ds_params;

typedef struct ds_dataset {
    ds_example *ex;       /* [n] */
    int n;
    ds_format format;     /* the format actually read */
    int n_bad;            /* examples skipped as bad (skip_bad) */
    char first_bad[512];  /* the first skipped example's message ("" when none) */
    size_t n_bytes;       /* bytes of prompt + response text over all examples */
    uint64_t hash;        /* FNV-1a 64 of the file's bytes: identifies the data for resuming */
    char path[512];
} ds_dataset;

/* Read a dataset file. On error nothing is allocated (ds_free is still safe). */
int ds_load(const char *path, const ds_params *p, ds_dataset *out, duet_error *err);
/* The same from a buffer (name is used in messages as the file name). */
int ds_load_buffer(const char *buf, size_t len, const char *name, const ds_params *p,
                   ds_dataset *out, duet_error *err);
void ds_free(ds_dataset *d);


#endif
