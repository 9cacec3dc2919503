/*
 * test_bpe.c: the byte-level BPE tokenizer (tokenizer.ggml.model == "gpt2") on the reference
 * vocabularies in ../shared/tokenizers/vocab: llama.cpp's test vectors (ids produced by the
 * Hugging Face tokenizers), round trips on the vectors and on large texts, invalid UTF-8,
 * special tokens, and speed. Hand-made malformed BPE vocabularies are in test_tokenizer.c
 * (beside its GGUF writer).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duet.h"
#include "base/common.h"
#include "format/gguf.h"
#include "text/tokenizer.h"
#include "test.h"
#include "tok_vectors.h"

#define SKIP_NO_VOCAB(file)                                                                 \
    const char *path_ = tv_vocab_path(file);                                                \
    if (!path_) SKIP("../shared/tokenizers/vocab/" file " not found");                      \
    char vpath[1024];                                                                       \
    snprintf(vpath, sizeof vpath, "%s", path_)

/* Every byte-level BPE vocabulary of ../shared: each of llama.cpp's vectors encodes exactly
 * and decodes back. */
TEST(bpe_vectors) {
    static const struct { const char *name; int n_vocab; } vocabs[] = {
        {"gpt-2", 50257}, {"starcoder", 49152}, {"falcon", 65024}, {"deepseek-coder", 32256}};
    int found = 0;
    for (size_t k = 0; k < sizeof vocabs / sizeof vocabs[0]; k++) {
        char file[128], vpath[1024];
        snprintf(file, sizeof file, "ggml-vocab-%s.gguf", vocabs[k].name);
        const char *p = tv_vocab_path(file);
        if (!p) {
            fprintf(stderr, "    %s: not found in ../shared/tokenizers/vocab\n", file);
            continue;
        }
        found++;
        snprintf(vpath, sizeof vpath, "%s", p);
        tokenizer *t = tv_load_vocab_file(vpath);
        if (!t) continue;
        CHECK_EQ_INT(tokenizer_n_vocab(t), vocabs[k].n_vocab);
        tv_check_vectors(t, vpath, vocabs[k].name);
        tokenizer_free(t);
    }
    if (!found) SKIP("no BPE vocabulary in ../shared/tokenizers/vocab");
}

/* ---- special tokens, flags, invalid UTF-8 --------------------------------------------------- */

static int enc_n(const tokenizer *t, const char *s, size_t n, bool bos, bool special,
                 int32_t *ids, int cap) {
    duet_error err = {0};
    int k = tokenizer_encode(t, s, n, bos, special, ids, cap, &err);
    if (k < 0) fprintf(stderr, "    encode: %s\n", err.msg);
    return k;
}

#define CHECK_BPE(t, text, bos, special, ...)                                               \
    do {                                                                                    \
        int32_t _want[] = {__VA_ARGS__};                                                    \
        int32_t _got[64];                                                                   \
        int _n = enc_n(t, text, sizeof(text) - 1, bos, special, _got, 64);                  \
        int _m = (int)(sizeof _want / sizeof _want[0]);                                     \
        if (!tv_ids_eq(_got, _n, _want, _m)) {                                              \
            test_fail_at(__FILE__, __LINE__, "encode \"%s\" (bos %d, special %d)", #text,   \
                         (int)(bos), (int)(special));                                       \
            tv_print_ids("got ", _got, _n);                                                 \
            tv_print_ids("want", _want, _m);                                                \
        }                                                                                   \
    } while (0)

/* Byte round trip of s[0..n) under t (no BOS, no special parsing). */
static bool round_trips(const tokenizer *t, const char *s, size_t n) {
    int32_t ids[256];
    char back[1024];
    int k = enc_n(t, s, n, false, false, ids, 256);
    if (k < 0 || k > 256) return false;
    size_t m = tv_decode(t, -1, ids, k, back, sizeof back);
    return m == n && memcmp(back, s, n) == 0;
}

/* Expected ids below are GPT-2's own (OpenAI's encoder.json: "!" 0, "<" 27, "|" 91,
 * "\xc3\xbf" (the character for byte 0xFF) 187, "Hello" 15496, " world" 995). */
TEST(bpe_gpt2_specials_and_bytes) {
    SKIP_NO_VOCAB("ggml-vocab-gpt-2.gguf");
    tokenizer *t = tv_load_vocab_file(vpath);
    REQUIRE(t);
    CHECK_EQ_INT(tokenizer_bos(t), 50256);
    CHECK_EQ_INT(tokenizer_eos(t), 50256);
    CHECK(!tokenizer_add_bos(t)); /* no add_bos_token key: BPE's default is off */
    CHECK(tokenizer_is_eog(t, 50256));
    CHECK_BPE(t, "Hello world!", true, false, 15496, 995, 0); /* add_bos asked, not added */
    /* <|endoftext|> is one token only with special parsing; a control token renders as "" */
    CHECK_BPE(t, "<|endoftext|>", false, true, 50256);
    int32_t ids[64];
    int n = enc_n(t, "<|endoftext|>", 13, false, false, ids, 64);
    CHECK(n > 1 && ids[0] == 27 && ids[1] == 91);
    char buf[16];
    CHECK_EQ_INT(tokenizer_piece(t, -1, 50256, buf, sizeof buf), 0);
    /* an invalid byte is its byte character's token, not U+FFFD and not dropped */
    CHECK_BPE(t, "\xff", false, false, 187);
    static const char *const odd[] = {"\xff", "a\xff" "b", "\xc3(", "x\xe2\x82", "\xf0\x9f\x98",
                                      "\xed\xa0\x80 surrogate", "\xc0\x80 overlong", " \xfe\xfe!!",
                                      "ok \xf4\x90\x80\x80 past U+10FFFF"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
        CHECKF(round_trips(t, odd[i], strlen(odd[i])), "invalid UTF-8 case %zu", i);
    /* NUL bytes are text like any other */
    CHECK(round_trips(t, "a\0b\0", 4));
    tokenizer_free(t);
}

TEST(bpe_special_tokens_other_vocabularies) {
    SKIP_NO_VOCAB("ggml-vocab-deepseek-coder.gguf");
    tokenizer *t = tv_load_vocab_file(vpath);
    REQUIRE(t);
    CHECK_EQ_INT(tokenizer_bos(t), 32013);
    CHECK(tokenizer_add_bos(t)); /* add_bos_token = true in the file */
    int32_t ids[64];
    int n = enc_n(t, "def", 3, true, false, ids, 64);
    CHECK(n >= 2 && ids[0] == 32013);
    /* user-defined tokens ("\xc3\xb5" is id 32000 in this file) match without special
     * parsing and render verbatim, as llama.cpp does */
    CHECK_EQ_INT(tokenizer_type(t, 32000), TOKTYPE_USER);
    CHECK_BPE(t, "\xc3\xb5", false, false, 32000);
    tokenizer_free(t);

    const char *p = tv_vocab_path("ggml-vocab-starcoder.gguf");
    if (!p) return;
    snprintf(vpath, sizeof vpath, "%s", p);
    t = tv_load_vocab_file(vpath);
    REQUIRE(t);
    /* <fim_prefix> is id 1, a control token: one token with special parsing, text without */
    CHECK_EQ_INT(tokenizer_type(t, 1), TOKTYPE_CONTROL);
    n = enc_n(t, "<fim_prefix>x", 13, false, true, ids, 64);
    CHECK(n == 2 && ids[0] == 1);
    n = enc_n(t, "<fim_prefix>x", 13, false, false, ids, 64);
    CHECK(n > 2);
    for (int i = 0; i < n; i++) CHECK(ids[i] != 1);
    tokenizer_free(t);
}

/* ---- large texts: round trip and speed ------------------------------------------------------- */

/* Encode and decode a whole text; returns the encode time in seconds (or -1). */
static double big_round_trip(tokenizer *t, const char *name, const char *what, const char *text,
                             size_t n) {
    duet_error err = {0};
    double t0 = duet_time_s();
    int m = tokenizer_encode(t, text, n, false, false, NULL, 0, &err);
    double dt = duet_time_s() - t0;
    CHECKF(m > 0, "%s %s: %s", name, what, err.msg);
    if (m <= 0) return -1;
    int32_t *ids = malloc((size_t)m * sizeof *ids);
    char *back = malloc(n + 64);
    int m2 = tokenizer_encode(t, text, n, false, false, ids, m, &err);
    CHECK_EQ_INT(m2, m);
    size_t k = tv_decode(t, -1, ids, m, back, n + 64);
    CHECKF(k == n && memcmp(back, text, n) == 0, "%s %s: decode(encode(x)) != x", name, what);
    fprintf(stderr, "    %-15s %-16s %8zu bytes -> %7d tokens in %.3f s (%.1f MB/s)\n", name,
            what, n, m, dt, (double)n / 1e6 / (dt > 0 ? dt : 1e-9));
    free(back);
    free(ids);
    return dt;
}

TEST(bpe_large_texts) {
    const char *shared = test_shared_dir();
    if (!shared) SKIP("../shared not found");
    char p[1024];
    size_t n_shk = 0, n_gsm = 0;
    snprintf(p, sizeof p, "%s/data/tinyshakespeare/input.txt", shared);
    char *shk = tv_read_file(p, &n_shk);
    snprintf(p, sizeof p, "%s/data/gsm8k/test.jsonl", shared);
    char *gsm = tv_read_file(p, &n_gsm);
    if (!shk || !gsm) {
        free(shk);
        free(gsm);
        SKIP("../shared/data/tinyshakespeare/input.txt or gsm8k/test.jsonl not found");
    }
    static const char *const vocabs[] = {"gpt-2", "starcoder", "falcon", "deepseek-coder"};
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        char file[128];
        snprintf(file, sizeof file, "ggml-vocab-%s.gguf", vocabs[v]);
        const char *vp = tv_vocab_path(file);
        if (!vp) continue;
        snprintf(p, sizeof p, "%s", vp);
        tokenizer *t = tv_load_vocab_file(p);
        if (!t) continue;
        double dt = big_round_trip(t, vocabs[v], "tinyshakespeare", shk, n_shk);
        /* 1.1 MB: well under a second on an idle core; the bound leaves room for a busy
         * shared machine while still catching a quadratic or linear-scan regression */
        CHECKF(dt < 5.0, "%s: tinyshakespeare took %.2f s", vocabs[v], dt);
        big_round_trip(t, vocabs[v], "gsm8k test", gsm, n_gsm);
        tokenizer_free(t);
    }
    free(shk);
    free(gsm);
}

/* Long runs of one character class: one huge piece to merge, or a long regex match. */
TEST(bpe_pathological_runs) {
    SKIP_NO_VOCAB("ggml-vocab-gpt-2.gguf");
    tokenizer *t = tv_load_vocab_file(vpath);
    REQUIRE(t);
    size_t n = 200000;
    char *s = malloc(n);
    static const char fill[] = {'a', ' ', '7', '!', '\n'};
    for (size_t k = 0; k < sizeof fill; k++) {
        memset(s, fill[k], n);
        char what[32];
        snprintf(what, sizeof what, "200000 x 0x%02x", fill[k]);
        double dt = big_round_trip(t, "gpt-2", what, s, n);
        CHECKF(dt < 10.0, "%s took %.1f s", what, dt);
    }
    for (size_t i = 0; i < n; i++) s[i] = " \t\n\r"[i % 4]; /* mixed whitespace */
    big_round_trip(t, "gpt-2", "mixed spaces", s, n);
    free(s);
    tokenizer_free(t);
}

/* ---- the independent GPT-2 oracle (tests/oracle/gpt2_bpe.py) ------------------------------- */

/* Run the oracle on a file; returns the ids of its first output line (malloc'd) or NULL. */
static int32_t *oracle_ids(const char *gpt2_dir, const char *input, int *n_out) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/oracle/gpt2_bpe.py '%s/encoder.json' "
             "'%s/vocab.bpe' '%s'", gpt2_dir, gpt2_dir, input);
    return tv_oracle_ids(cmd, n_out);
}

TEST(bpe_gpt2_matches_oracle) {
    SKIP_NO_VOCAB("ggml-vocab-gpt-2.gguf");
    const char *shared = test_shared_dir();
    char dir[1024], p[2048];
    snprintf(dir, sizeof dir, "%s/tokenizers/gpt2", shared);
    snprintf(p, sizeof p, "%s/encoder.json", dir);
    FILE *fp = fopen(p, "rb");
    if (!fp) SKIP("../shared/tokenizers/gpt2/encoder.json not found");
    fclose(fp);
    if (access("/usr/bin/python3", X_OK) != 0) SKIP("/usr/bin/python3 not found");
    tokenizer *t = tv_load_vocab_file(vpath);
    REQUIRE(t);
    /* the GGUF's vocabulary is OpenAI's, id for id */
    static const char *const texts[] = {"tinyshakespeare/input.txt", "gsm8k/test.jsonl"};
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        snprintf(p, sizeof p, "%s/data/%s", shared, texts[k]);
        size_t n = 0;
        char *text = tv_read_file(p, &n);
        if (!text) continue;
        int nw = 0;
        int32_t *want = oracle_ids(dir, p, &nw);
        duet_error err = {0};
        int ng = tokenizer_encode(t, text, n, false, false, NULL, 0, &err);
        int32_t *got = malloc((size_t)(ng > 0 ? ng : 1) * sizeof *got);
        tokenizer_encode(t, text, n, false, false, got, ng, &err);
        if (want) {
            int i = 0;
            while (i < ng && i < nw && got[i] == want[i]) i++;
            CHECKF(ng == nw && i == ng, "%s: %d tokens vs the oracle's %d, first difference "
                   "at %d", texts[k], ng, nw, i);
            fprintf(stderr, "    %s: %d tokens, %d identical to the oracle's\n", texts[k], ng, i);
        }
        free(want);
        free(got);
        free(text);
    }
    tokenizer_free(t);
}

/* ---- through the public API ------------------------------------------------------------------ */

/* A vocabulary-only load of a non-llama file (gpt2, starcoder2, falcon architectures) and the
 * public calls every command uses. */
TEST(bpe_public_api_vocab_only) {
    SKIP_NO_VOCAB("ggml-vocab-starcoder.gguf");
    duet_model_params mp = {.vocab_only = 1};
    duet_model *m = NULL;
    duet_error err = {0};
    REQUIRE(duet_model_load(vpath, &mp, &m, &err) == DUET_OK);
    CHECK_EQ_INT(duet_model_hparams(m)->n_vocab, 49152);
    static const char text[] = "def f(x):\n    return x**2  # \xc3\xa9t\xc3\xa9\n";
    int32_t ids[128];
    int n = duet_tokenize(m, text, sizeof text - 1, 0, 0, ids, 128, &err);
    CHECKF(n > 0 && n < 128, "%d: %s", n, err.msg);
    char out[256];
    size_t o = 0;
    for (int i = 0; i < n && n < 128; i++) {
        int k = duet_token_to_piece(m, i ? ids[i - 1] : -1, ids[i], out + o, (int)(sizeof out - o));
        REQUIRE(k >= 0 && (size_t)k < sizeof out - o);
        o += (size_t)k;
    }
    CHECK(o == sizeof text - 1 && memcmp(out, text, o) == 0);
    CHECK_STR(duet_token_text(m, 0), "<|endoftext|>");
    duet_model_free(m);
}
