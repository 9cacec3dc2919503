/* tok_vectors.h: helpers the tokenizer tests share: reading llama.cpp's .inp/.out test
 * vectors beside ../shared/tokenizers/vocab/ (*.gguf), checking a tokenizer against them, and
 * small encode/decode utilities. */
#ifndef DUET_TESTS_TOK_VECTORS_H
#define DUET_TESTS_TOK_VECTORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "text/tokenizer.h"

bool tv_ids_eq(const int32_t *got, int n, const int32_t *want, int m);
void tv_print_ids(const char *what, const int32_t *ids, int n);
/* Decode a whole sequence the way a generation loop does (prev = the token before); returns
 * the byte count, or (size_t)-1 when a piece fails or cap is too small. */
size_t tv_decode(const tokenizer *t, int32_t prev, const int32_t *ids, int n, char *buf,
                 size_t cap);
/* The whole file, NUL-terminated (NULL when it cannot be read). */
char *tv_read_file(const char *path, size_t *n);
/* Parse and load a tokenizer (fails the test and returns NULL on error). */
tokenizer *tv_load_vocab_file(const char *path);
/* Every vector must encode (no BOS, no special parsing, as llama.cpp's test-tokenizer-0) to
 * exactly the expected ids and decode back to the input. */
void tv_check_vectors(tokenizer *t, const char *vocab_path, const char *name);
/* Vector i of vocab_path's .inp/.out: *text (malloc'd, NUL-terminated, *len bytes) and its
 * expected ids (the first cap of them); the id count, or -1 when the files or vector i are
 * absent (then *text is NULL). */
int tv_vector(const char *vocab_path, int i, char **text, size_t *len, int32_t *ids, int cap);
/* Run an oracle command (popen) that prints ids separated by spaces; the ids of its first
 * output line (malloc'd, *n of them), or NULL after failing the test when it cannot run or
 * exits non-zero. */
int32_t *tv_oracle_ids(const char *cmd, int *n);
/* ../shared/tokenizers/vocab/FILE when it exists (static storage), else NULL. */
const char *tv_vocab_path(const char *file);

#endif
