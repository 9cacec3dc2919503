/*
 * tokenizer.h: tokenizers built from GGUF metadata (tokenizer.ggml.*):
 * SentencePiece-style ("llama" model; tokenizer_spm.c): scores, byte fallback (<0xXX>
 * tokens), add-space-prefix; byte-level BPE ("gpt2" model; tokenizer_bpe.c): merges,
 * byte-to-unicode mapping, the pre-tokenizer named by tokenizer.ggml.pre. Both (the core,
 * tokenizer.c): control/user-defined special tokens, BOS/EOS, end-of-generation tokens.
 * Token types follow llama.cpp: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
 * 6 byte.
 */
#ifndef DUET_TOKENIZER_H
#define DUET_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "duet.h"
#include "format/gguf.h"

/* The token types (TOKTYPE_*) are declared with the format, in format/gguf.h. */

typedef struct tokenizer tokenizer;

/* Build from a parsed GGUF (copies what it needs; f may be closed afterwards).
 * Validates: model kind, vocab size > 0, scores/types lengths, special ids in range,
 * byte tokens well-formed, token texts valid UTF-8. Errors name file, key and value. */
int tokenizer_load(const gguf_file *f, tokenizer **out, duet_error *err);
void tokenizer_free(tokenizer *t);

int tokenizer_n_vocab(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t);  /* -1 if none */
int32_t tokenizer_eos(const tokenizer *t);  /* -1 if none */
bool tokenizer_add_bos(const tokenizer *t); /* tokenizer.ggml.add_bos_token (default true) */
bool tokenizer_is_eog(const tokenizer *t, int32_t tok);
int tokenizer_type(const tokenizer *t, int32_t tok);     /* TOKTYPE_*, 0 if out of range */
const char *tokenizer_text(const tokenizer *t, int32_t tok); /* stored text or NULL */
/* FNV-1a 64 over every token text and type (identifies a vocabulary across files). */
uint64_t tokenizer_hash(const tokenizer *t);

/* Same contract as duet_tokenize (see duet.h). add_bos is honoured only when the vocabulary
 * has a BOS token and asks for it (add_bos_token true or absent). */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_bos,
                     bool parse_special, int32_t *out, int cap, duet_error *err);
/* As tokenizer_encode with parse_special, except that a control token is recognised only where
 * its text touches no byte marked in plain[len] (plain may be NULL: none marked). A chat
 * prompt marks its messages' text, so the template's markers become control tokens and a
 * user's "<|im_end|>" stays text. User-defined tokens are recognised everywhere, as always. */
int tokenizer_encode_masked(const tokenizer *t, const char *text, size_t len, bool add_bos,
                            bool parse_special, const unsigned char *plain, int32_t *out,
                            int cap, duet_error *err);
/* Byte-level BPE only: the pre-tokenizer's piece boundaries in text (input byte offsets,
 * 0 first and len last; a text without special tokens is one fragment). Writes up to cap
 * offsets and returns how many there are; DUET_ERR_ARG for a SentencePiece vocabulary.
 * For tests and tools that check the split against other implementations. */
int tokenizer_bpe_split(const tokenizer *t, const char *text, size_t len, uint32_t *cuts,
                        int cap, duet_error *err);
/* Same contract as duet_token_to_piece. */
int tokenizer_piece(const tokenizer *t, int32_t prev, int32_t tok, char *buf, int cap);

#endif
