/*
 * test_bpe.c: the byte-level BPE tokenizer (tokenizer.ggml.model == "gpt2") on the reference
 * vocabularies in ../shared/tokenizers/vocab: llama.cpp's test vectors (ids produced by the
 * Hugging Face tokenizers), round trips on the vectors and on large texts, invalid UTF-8,
 * special tokens, and speed. Hand-made malformed BPE vocabularies are in test_tokenizer.c
 * (beside its GGUF writer).
 */
#include <stdlib.h>
#include <string.h>

#include "../src/common.h"
#include "../src/gguf.h"
#include "../src/tokenizer.h"
#include "test.h"
#include "tok_vectors.h"

#define SKIP_NO_VOCAB(file)                                                                 \
    const char *path_ = tv_vocab_path(file);                                                \
    if (!path_) SKIP("../shared/tokenizers/vocab/" file " not found");                      \
    char vpath[1024];                                                                       \
    snprintf(vpath, sizeof vpath, "%s", path_)

static void vectors_test(const char *file, const char *name, int n_vocab) {
    const char *p = tv_vocab_path(file);
    if (!p) return;
    char vpath[1024];
    snprintf(vpath, sizeof vpath, "%s", p);
    tokenizer *t = tv_load_vocab_file(vpath);
    if (!t) return;
    CHECK_EQ_INT(tokenizer_n_vocab(t), n_vocab);
    tv_check_vectors(t, vpath, name);
    tokenizer_free(t);
}

TEST(bpe_vectors_gpt2) {
    SKIP_NO_VOCAB("ggml-vocab-gpt-2.gguf");
    vectors_test("ggml-vocab-gpt-2.gguf", "gpt-2", 50257);
}
TEST(bpe_vectors_starcoder) {
    SKIP_NO_VOCAB("ggml-vocab-starcoder.gguf");
    vectors_test("ggml-vocab-starcoder.gguf", "starcoder", 49152);
}
TEST(bpe_vectors_falcon) {
    SKIP_NO_VOCAB("ggml-vocab-falcon.gguf");
    vectors_test("ggml-vocab-falcon.gguf", "falcon", 65024);
}
TEST(bpe_vectors_deepseek_coder) {
    SKIP_NO_VOCAB("ggml-vocab-deepseek-coder.gguf");
    vectors_test("ggml-vocab-deepseek-coder.gguf", "deepseek-coder", 32256);
}
