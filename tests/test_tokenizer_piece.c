/*
 * test_tokenizer_piece.c: the piece contract of tokenizer_piece (and so duet_token_to_piece)
 * at the edges of cap, for both vocabulary kinds and for the token types the core renders
 * itself. The contract: the first min(L, cap) bytes of the piece are written, nothing at or
 * past buf[cap] is touched (no NUL either), and the piece's full length L comes back, so a
 * caller can grow its buffer and call again.
 *
 * The vocabularies are tiny GGUF files made with the project's writer (format/gguf.h). Every
 * expected piece is spelled out here by hand from the token's text:
 *  - SentencePiece: U+2581 (E2 96 81) renders as one space; right after BOS the leading one
 *    is dropped; a byte token <0xXX> is that byte; user-defined tokens are verbatim; the
 *    unknown token is U+2585 (E2 96 85); control tokens are "";
 *  - byte-level BPE: each character of GPT-2's byte table stands for one byte (U+0120 for
 *    0x20, U+010A for 0x0A: the non-printable bytes 0x00..0x20 are U+0100..U+0120 in order),
 *    characters outside the table (U+20AC, E2 82 AC) are copied as they are.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "format/gguf.h"
#include "text/tokenizer.h"
#include "test.h"

enum { CANARY = 0xA5, LONG_HALF = 150 };

/* The long token's letters: LONG_HALF of 'a'..'z' repeating, then a separator, then the same
 * letters again, so that every prefix length is distinguishable from its neighbours. */
static void long_text(char *out, const char *sep, size_t sep_len) {
    size_t o = 0;
    for (int half = 0; half < 2; half++) {
        memcpy(out + o, sep, sep_len);
        o += sep_len;
        for (int i = 0; i < LONG_HALF; i++) out[o++] = (char)('a' + i % 26);
    }
    out[o] = 0;
}

/* SentencePiece ids: 0 <unk>, 1 <s>, 2 </s>, 3 "▁hi", 4 the long token, 5 <0x41>, 6 <|user|> */
enum { S_HI = 3, S_LONG, S_BYTE_A, S_USER, S_N };
/* BPE ids: 0 "a", 1 "b", 2 "ab", 3 "Ġhi", 4 the long token, 5 "xĊ€y", 6 <|end|> (control) */
enum { B_HI = 3, B_LONG, B_MIXED, B_END, B_N };

static tokenizer *load_vocab(bool bpe) {
    static char long_spm[2 * (3 + LONG_HALF) + 1], long_bpe[2 * (2 + LONG_HALF) + 1];
    long_text(long_spm, "\xe2\x96\x81", 3);
    long_text(long_bpe, "\xc4\xa0", 2);
    const char *spm_texts[S_N] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81hi", long_spm, "<0x41>",
                                  "<|user|>"};
    int32_t spm_types[S_N] = {TOKTYPE_UNKNOWN, TOKTYPE_CONTROL, TOKTYPE_CONTROL, TOKTYPE_NORMAL,
                              TOKTYPE_NORMAL, TOKTYPE_BYTE, TOKTYPE_USER};
    const char *bpe_texts[B_N] = {"a", "b", "ab", "\xc4\xa0hi", long_bpe,
                                  "x\xc4\x8a\xe2\x82\xacy", "<|end|>"};
    int32_t bpe_types[B_N] = {TOKTYPE_NORMAL, TOKTYPE_NORMAL, TOKTYPE_NORMAL, TOKTYPE_NORMAL,
                              TOKTYPE_NORMAL, TOKTYPE_NORMAL, TOKTYPE_CONTROL};
    const char *merges[1] = {"a b"};

    gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "tokenizer.ggml.model", bpe ? "gpt2" : "llama");
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", bpe ? bpe_texts : spm_texts, NULL,
                     bpe ? B_N : S_N);
    gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, bpe ? bpe_types : spm_types,
                 bpe ? B_N : S_N);
    if (bpe) gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 1);
    const char *path = test_path(test_tmpdir(), bpe ? "piece-bpe.gguf" : "piece-spm.gguf");
    duet_error err = {0};
    int rc = gguf_write(w, path, &err);
    gguf_writer_free(w);
    if (rc != DUET_OK) {
        test_fail_at(__FILE__, __LINE__, "writing %s: %s", path, err.msg);
        return NULL;
    }
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    rc = gguf_open(path, &f, &err);
    if (rc == DUET_OK) rc = tokenizer_load(f, &t, &err);
    gguf_close(f);
    if (rc != DUET_OK) test_fail_at(__FILE__, __LINE__, "loading %s: %s", path, err.msg);
    return t;
}

/* One call with cap: the full length L back, want[0..min(L, cap)) in buf, the canary from
 * there to the buffer's end. */
static void check_cap(const tokenizer *t, int32_t prev, int32_t tok, const char *want, int len,
                      int cap, const char *what) {
    unsigned char buf[1024];
    REQUIRE(cap >= 0 && (size_t)cap <= sizeof buf);
    memset(buf, CANARY, sizeof buf);
    int got = tokenizer_piece(t, prev, tok, (char *)buf, cap);
    CHECKF(got == len, "%s, cap %d: returned %d, the piece has %d bytes", what, cap, got, len);
    int w = len < cap ? len : cap;
    CHECKF(w <= 0 || memcmp(buf, want, (size_t)w) == 0, "%s, cap %d: the first %d bytes differ",
           what, cap, w);
    size_t bad = sizeof buf;
    for (size_t i = (size_t)(w > 0 ? w : 0); i < sizeof buf && bad == sizeof buf; i++)
        if (buf[i] != CANARY) bad = i;
    CHECKF(bad == sizeof buf, "%s, cap %d: byte %zu (past the %d written) was touched", what,
           cap, bad, w);
}

/* The edges the contract names: cap exactly L, one short, 0 (and NULL), one byte, far more. */
static void check_piece(const tokenizer *t, int32_t prev, int32_t tok, const char *want,
                        const char *what) {
    int len = (int)strlen(want);
    check_cap(t, prev, tok, want, len, len, what);
    if (len > 0) check_cap(t, prev, tok, want, len, len - 1, what);
    check_cap(t, prev, tok, want, len, 0, what);
    check_cap(t, prev, tok, want, len, 1, what);
    check_cap(t, prev, tok, want, len, 1000, what);
    CHECKF(tokenizer_piece(t, prev, tok, NULL, 0) == len, "%s: measuring with NULL", what);
}

/* The long token's piece (a separator rendered as one space, then the letters, twice): 302
 * bytes, more than the 256-byte stack buffers callers use. Whole with a buffer large enough,
 * its exact prefix with shorter ones. */
static void check_long(const tokenizer *t, int32_t tok, const char *what) {
    char want[2 * (1 + LONG_HALF) + 1];
    long_text(want, " ", 1);
    REQUIRE(strlen(want) == 302);
    static const int caps[] = {302, 303, 1000, 301, 256, 255, 151, 150, 2, 1, 0};
    for (size_t k = 0; k < sizeof caps / sizeof caps[0]; k++)
        check_cap(t, -1, tok, want, 302, caps[k], what);
}

TEST(piece_spm_cap_edges) {
    tokenizer *t = load_vocab(false);
    REQUIRE(t != NULL);
    check_piece(t, -1, S_HI, " hi", "SentencePiece \"\xe2\x96\x81hi\"");
    check_piece(t, 1, S_HI, "hi", "SentencePiece \"\xe2\x96\x81hi\" after BOS");
    check_long(t, S_LONG, "SentencePiece long token");
    tokenizer_free(t);
}

TEST(piece_bpe_cap_edges) {
    tokenizer *t = load_vocab(true);
    REQUIRE(t != NULL);
    check_piece(t, -1, B_HI, " hi", "BPE \"\xc4\xa0hi\"");
    /* x, U+010A -> 0A, U+20AC copied as its three bytes (a cap inside them cuts it), y */
    check_piece(t, -1, B_MIXED, "x\n\xe2\x82\xacy", "BPE mixed");
    for (int cap = 0; cap <= 6; cap++)
        check_cap(t, -1, B_MIXED, "x\n\xe2\x82\xacy", 6, cap, "BPE mixed, every cap");
    check_long(t, B_LONG, "BPE long token");
    check_piece(t, -1, B_END, "", "BPE control token");
    tokenizer_free(t);
}

/* The token types the core renders without the kind: verbatim, the unknown mark, a byte,
 * control (""). */
TEST(piece_core_types_cap_edges) {
    tokenizer *t = load_vocab(false);
    REQUIRE(t != NULL);
    check_piece(t, -1, S_USER, "<|user|>", "user-defined");
    check_piece(t, -1, 0, "\xe2\x96\x85", "unknown");
    check_piece(t, -1, S_BYTE_A, "A", "byte <0x41>");
    check_piece(t, -1, 1, "", "control <s>");
    /* bad ids write nothing */
    check_cap(t, -1, S_N, "", DUET_ERR_RANGE, 8, "id past the vocabulary");
    check_cap(t, -1, -1, "", DUET_ERR_RANGE, 8, "id -1");
    tokenizer_free(t);
}
