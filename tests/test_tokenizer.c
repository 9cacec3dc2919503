/*
 * test_tokenizer.c: the SentencePiece ("llama") tokenizer.
 * Unit tests run on small vocabularies built here as in-memory GGUF buffers (a tiny metadata
 * writer of its own, so that malformed vocabularies the real writer would refuse can be made
 * too). Reference tests use ../shared/tokenizers/vocab (llama.cpp's test vectors, produced by
 * the Hugging Face tokenizers) the way llama.cpp's test-tokenizer-0 reads them: no BOS, no
 * special-token parsing. Large texts are compared id for id with independent Python
 * tokenizers (tests/oracle/spm_bpe.py, tests/oracle/gpt2_bpe.py).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "base/common.h"
#include "format/gguf.h"
#include "text/tokenizer.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"
#include "tok_vectors.h"

/* ---- a minimal GGUF metadata writer (no tensors) ---------------------------------------- */

typedef struct gbuf {
    unsigned char *p;
    size_t n, cap;
    uint64_t n_kv;
} gbuf;

static void gb_bytes(gbuf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) abort();
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void gb_u32(gbuf *b, uint32_t v) { gb_bytes(b, &v, 4); }
static void gb_u64(gbuf *b, uint64_t v) { gb_bytes(b, &v, 8); }
static void gb_strn(gbuf *b, const char *s, size_t n) { gb_u64(b, n); gb_bytes(b, s, n); }
static void gb_str(gbuf *b, const char *s) { gb_strn(b, s, strlen(s)); }

static void gb_init(gbuf *b) {
    memset(b, 0, sizeof *b);
    gb_u32(b, GGUF_MAGIC);
    gb_u32(b, 3);
    gb_u64(b, 0); /* tensors */
    gb_u64(b, 0); /* kv count, patched by gb_open */
}
static void gb_key(gbuf *b, const char *key, uint32_t type) {
    gb_str(b, key);
    gb_u32(b, type);
    b->n_kv++;
}
static void kv_str(gbuf *b, const char *key, const char *v) {
    gb_key(b, key, GGUF_TYPE_STRING);
    gb_str(b, v);
}
static void kv_u32(gbuf *b, const char *key, uint32_t v) {
    gb_key(b, key, GGUF_TYPE_UINT32);
    gb_u32(b, v);
}
static void kv_bool(gbuf *b, const char *key, bool v) {
    unsigned char c = v;
    gb_key(b, key, GGUF_TYPE_BOOL);
    gb_bytes(b, &c, 1);
}
static void kv_arr(gbuf *b, const char *key, uint32_t type, const void *data, uint64_t n,
                   size_t elem) {
    gb_key(b, key, GGUF_TYPE_ARRAY);
    gb_u32(b, type);
    gb_u64(b, n);
    gb_bytes(b, data, n * elem);
}
static void kv_strs(gbuf *b, const char *key, const char *const *s, uint64_t n) {
    gb_key(b, key, GGUF_TYPE_ARRAY);
    gb_u32(b, GGUF_TYPE_STRING);
    gb_u64(b, n);
    for (uint64_t i = 0; i < n; i++) gb_str(b, s[i]);
}
/* Parse the buffer; the buffer must outlive the gguf_file (freed by gb_close). */
static int gb_open(gbuf *b, gguf_file **f, duet_error *err) {
    static const unsigned char zero[32];
    memcpy(b->p + 16, &b->n_kv, 8);
    gb_bytes(b, zero, (32 - b->n % 32) % 32); /* the (empty) data section starts aligned */
    return gguf_open_buffer(b->p, b->n, "hand-made.gguf", f, err);
}
static void gb_close(gbuf *b, gguf_file *f) {
    gguf_close(f);
    free(b->p);
    b->p = NULL;
}

/* ---- a small SentencePiece vocabulary ------------------------------------------------------ */

#define SP "\xe2\x96\x81" /* U+2581, SentencePiece's space */

typedef struct vtok { const char *text; float score; int type; } vtok;

/* ids 0..2 specials, 3..258 the bytes <0x00>..<0xFF>, then these: */
static const vtok k_words[] = {
    {SP, -1, 1},          /* 259 */
    {"a", -2, 1},         /* 260 */
    {"b", -2, 1},         /* 261 */
    {"c", -2, 1},         /* 262 */
    {"ab", -1.5f, 1},     /* 263 */
    {"bc", -1.0f, 1},     /* 264 */
    {"abb", -3, 1},       /* 265 */
    {SP "a", -0.5f, 1},   /* 266 */
    {"aa", -1, 1},        /* 267 */
    {"<", -4, 1},         /* 268 */
    {"s", -4, 1},         /* 269 */
    {">", -4, 1},         /* 270 */
    {"<|u|>", 0, 4},      /* 271 user-defined */
    {"h", -4, 1},         /* 272 */
    {"i", -4, 1},         /* 273 */
    {SP "hi", -0.1f, 1},  /* 274 */
    {"hi", -0.2f, 1},     /* 275 */
    {"<unused>", 0, 5},   /* 276 unused */
    {"\xc3\xa9", -5, 1},  /* 277 "é" */
};
#define N_WORDS (int)(sizeof k_words / sizeof k_words[0])
#define ID_SP 259
#define ID_A 260
#define ID_B 261
#define ID_C 262
#define ID_AB 263
#define ID_BC 264
#define ID_ABB 265
#define ID_SPA 266
#define ID_AA 267
#define ID_LT 268
#define ID_S 269
#define ID_GT 270
#define ID_USER 271
#define ID_SPHI 274
#define ID_HI 275
#define ID_UNUSED 276
#define ID_EACUTE 277
#define BYTE_ID(b) (3 + (b))

typedef struct vocab_opts {
    bool no_bytes;      /* leave out the 256 byte tokens */
    bool bytes_reversed; /* byte tokens stored <0xFF> first, so byte b is id 3 + 255 - b */
    int add_bos;        /* -1: key absent */
    int add_eos;        /* -1: key absent */
    int space_prefix;   /* -1: key absent */
} vocab_opts;

/* Build the vocabulary (ids as above; without byte tokens the words start at 3). */
static int load_small(const vocab_opts *o, tokenizer **t, duet_error *err) {
    static char bytes[256][8];
    const char *texts[3 + 256 + N_WORDS];
    float scores[3 + 256 + N_WORDS];
    int32_t types[3 + 256 + N_WORDS];
    int n = 0;
    const char *sp[3] = {"<unk>", "<s>", "</s>"};
    int spt[3] = {TOKTYPE_UNKNOWN, TOKTYPE_CONTROL, TOKTYPE_CONTROL};
    for (int i = 0; i < 3; i++, n++) { texts[n] = sp[i]; scores[n] = 0; types[n] = spt[i]; }
    if (!o->no_bytes)
        for (int i = 0; i < 256; i++, n++) {
            snprintf(bytes[i], sizeof bytes[i], "<0x%02X>", o->bytes_reversed ? 255 - i : i);
            texts[n] = bytes[i];
            scores[n] = 0;
            types[n] = TOKTYPE_BYTE;
        }
    for (int i = 0; i < N_WORDS; i++, n++) {
        texts[n] = k_words[i].text;
        scores[n] = k_words[i].score;
        types[n] = k_words[i].type;
    }
    gbuf b;
    gb_init(&b);
    kv_str(&b, "general.architecture", "llama");
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_strs(&b, "tokenizer.ggml.tokens", texts, (uint64_t)n);
    kv_arr(&b, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, (uint64_t)n, 4);
    kv_arr(&b, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, (uint64_t)n, 4);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
    kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    if (o->add_bos >= 0) kv_bool(&b, "tokenizer.ggml.add_bos_token", o->add_bos);
    if (o->add_eos >= 0) kv_bool(&b, "tokenizer.ggml.add_eos_token", o->add_eos);
    if (o->space_prefix >= 0) kv_bool(&b, "tokenizer.ggml.add_space_prefix", o->space_prefix);
    gguf_file *f = NULL;
    int rc = gb_open(&b, &f, err);
    if (rc == DUET_OK) rc = tokenizer_load(f, t, err);
    gb_close(&b, f);
    return rc;
}

static const vocab_opts k_default = {false, false, -1, -1, -1};

/* Encode into a fixed buffer; returns the count (or a negative status). */
static int enc(const tokenizer *t, const char *s, bool bos, bool special, int32_t *ids) {
    duet_error err = {0};
    int n = tokenizer_encode(t, s, strlen(s), bos, special, ids, 64, &err);
    if (n < 0) fprintf(stderr, "    encode \"%s\": %s\n", s, err.msg);
    return n;
}

#define CHECK_IDS(t, text, bos, special, ...)                                                 \
    do {                                                                                    \
        int32_t _want[] = {__VA_ARGS__};                                                    \
        int32_t _got[64];                                                                   \
        int _n = enc(t, text, bos, special, _got);                                          \
        int _m = (int)(sizeof _want / sizeof _want[0]);                                     \
        if (!tv_ids_eq(_got, _n, _want, _m)) {                                                 \
            test_fail_at(__FILE__, __LINE__, "encode \"%s\" (bos %d, special %d)", text,    \
                         (int)(bos), (int)(special));                                       \
            tv_print_ids("got ", _got, _n);                                                    \
            tv_print_ids("want", _want, _m);                                                   \
        }                                                                                   \
    } while (0)

/* ---- unit tests on the small vocabulary ------------------------------------------------- */

TEST(tok_small_load_and_queries) {
    tokenizer *t = NULL;
    duet_error err = {0};
    REQUIRE(load_small(&k_default, &t, &err) == DUET_OK);
    CHECK_EQ_INT(tokenizer_n_vocab(t), 3 + 256 + N_WORDS);
    CHECK_EQ_INT(tokenizer_bos(t), 1);
    CHECK_EQ_INT(tokenizer_eos(t), 2);
    CHECK(tokenizer_add_bos(t)); /* absent key: SentencePiece default */
    CHECK(tokenizer_is_eog(t, 2));
    CHECK(!tokenizer_is_eog(t, 1));
    CHECK(!tokenizer_is_eog(t, -1));
    CHECK(!tokenizer_is_eog(t, 1 << 30));
    CHECK_EQ_INT(tokenizer_type(t, 0), TOKTYPE_UNKNOWN);
    CHECK_EQ_INT(tokenizer_type(t, BYTE_ID(0x41)), TOKTYPE_BYTE);
    CHECK_EQ_INT(tokenizer_type(t, ID_USER), TOKTYPE_USER);
    CHECK_EQ_INT(tokenizer_type(t, -1), 0);
    CHECK_EQ_INT(tokenizer_type(t, 100000), 0);
    CHECK_STR(tokenizer_text(t, ID_SPA), SP "a");
    CHECK_STR(tokenizer_text(t, BYTE_ID(0x0A)), "<0x0A>");
    CHECK(tokenizer_text(t, -1) == NULL);
    CHECK(tokenizer_text(t, tokenizer_n_vocab(t)) == NULL);
    tokenizer_free(t);
    tokenizer_free(NULL);
}

TEST(tok_small_merges) {
    tokenizer *t = NULL;
    duet_error err = {0};
    vocab_opts o = k_default;
    o.space_prefix = 0; /* test the merge order itself, without the leading U+2581 */
    REQUIRE(load_small(&o, &t, &err) == DUET_OK);
    /* "bc" (-1.0) beats "ab" (-1.5); "a"+"bc" is no token, so no further merge */
    CHECK_IDS(t, "abc", false, false, ID_A, ID_BC);
    CHECK_IDS(t, "ab", false, false, ID_AB);
    /* merges chain: "ab" + "b" -> "abb" */
    CHECK_IDS(t, "abb", false, false, ID_ABB);
    /* ... but greedily: "bc" goes first, then "ab", and "abb" never forms */
    CHECK_IDS(t, "abbc", false, false, ID_AB, ID_BC);
    /* equal scores: the leftmost pair merges first */
    CHECK_IDS(t, "aaa", false, false, ID_AA, ID_A);
    CHECK_IDS(t, "aaaa", false, false, ID_AA, ID_AA);
    /* a space becomes U+2581 and merges like any character */
    CHECK_IDS(t, " a", false, false, ID_SPA);
    CHECK_IDS(t, "a a", false, false, ID_A, ID_SPA);
    int32_t ids[8];
    CHECK_EQ_INT(enc(t, "", false, false, ids), 0);
    tokenizer_free(t);
}

TEST(tok_small_space_prefix_and_bos) {
    tokenizer *t = NULL;
    duet_error err = {0};
    REQUIRE(load_small(&k_default, &t, &err) == DUET_OK);
    CHECK_IDS(t, "a", false, false, ID_SPA);
    CHECK_IDS(t, "a", true, false, 1, ID_SPA);
    CHECK_IDS(t, "hi", false, false, ID_SPHI);
    CHECK_IDS(t, " hi", false, false, ID_SP, ID_SPHI);
    int32_t ids[8];
    CHECK_EQ_INT(enc(t, "", false, false, ids), 0);
    CHECK_IDS(t, "", true, false, 1);
    tokenizer_free(t);

    /* add_bos_token false: add_bos is not honoured; add_eos_token true appends EOS */
    vocab_opts o = k_default;
    o.add_bos = 0;
    o.add_eos = 1;
    REQUIRE(load_small(&o, &t, &err) == DUET_OK);
    CHECK(!tokenizer_add_bos(t));
    CHECK_IDS(t, "a", true, false, ID_SPA, 2);
    CHECK_IDS(t, "a", false, false, ID_SPA);
    tokenizer_free(t);
}

TEST(tok_small_byte_fallback_and_unknown) {
    tokenizer *t = NULL;
    duet_error err = {0};
    REQUIRE(load_small(&k_default, &t, &err) == DUET_OK);
    /* "é" is a token; "ö" is not, so its two UTF-8 bytes become byte tokens */
    CHECK_IDS(t, "\xc3\xa9", false, false, ID_SP, ID_EACUTE);
    CHECK_IDS(t, "\xc3\xb6", false, false, ID_SP, BYTE_ID(0xC3), BYTE_ID(0xB6));
    CHECK_IDS(t, "\n", false, false, ID_SP, BYTE_ID(0x0A));
    /* invalid UTF-8 is split byte-wise and still encodes losslessly */
    CHECK_IDS(t, "\xff", false, false, ID_SP, BYTE_ID(0xFF));
    /* a stray lead byte swallows part of the next U+2581: more symbols than input bytes */
    CHECK_IDS(t, "\xc3 \xc3 ", false, false, ID_SP, BYTE_ID(0xC3), BYTE_ID(0xE2), BYTE_ID(0x96),
              BYTE_ID(0x81), BYTE_ID(0xC3), BYTE_ID(0xE2), BYTE_ID(0x96), BYTE_ID(0x81));
    tokenizer_free(t);

    /* without byte tokens an unknown character becomes <unk>, once per byte */
    vocab_opts o = k_default;
    o.no_bytes = true;
    REQUIRE(load_small(&o, &t, &err) == DUET_OK);
    int32_t ids[8];
    int n = enc(t, "\xc3\xb6", false, false, ids);
    CHECK_EQ_INT(n, 3);
    if (n == 3) CHECK(ids[1] == 0 && ids[2] == 0);
    tokenizer_free(t);
}

/* The id whose stored text is "<0xNN>" for byte b, found by scanning the vocabulary (not
 * through the tokenizer's own byte table); -1 when none or more than one. */
static int32_t byte_id_by_text(const tokenizer *t, int b) {
    char want[8];
    snprintf(want, sizeof want, "<0x%02X>", b);
    int32_t found = -1;
    for (int32_t id = 0; id < tokenizer_n_vocab(t); id++) {
        if (strcmp(tokenizer_text(t, id), want)) continue;
        if (found >= 0) return -1;
        found = id;
    }
    return found;
}

/* Characters the vocabulary does not have ("ö", "日", an emoji, control bytes, a byte that is
 * never valid UTF-8) come out byte by byte as their <0xNN> tokens and decode back exactly,
 * whether the byte tokens are stored in byte order or reversed. */
TEST(tok_small_byte_fallback_every_byte_by_text) {
    static const char s[] = "\xc3\xb6\xe6\x97\xa5\xf0\x9f\x98\x80\x01\x1b\x7f\xff";
    const int len = (int)sizeof s - 1;
    for (int rev = 0; rev < 2; rev++) {
        tokenizer *t = NULL;
        duet_error err = {0};
        vocab_opts o = k_default;
        o.space_prefix = 0; /* no U+2581 in front: every input byte is a byte token */
        o.bytes_reversed = rev;
        REQUIRE(load_small(&o, &t, &err) == DUET_OK);
        int32_t want[32], got[64];
        for (int i = 0; i < len; i++) {
            want[i] = byte_id_by_text(t, (unsigned char)s[i]);
            CHECKF(want[i] >= 0 && tokenizer_type(t, want[i]) == TOKTYPE_BYTE,
                   "layout %d: byte 0x%02X has no single byte token", rev, (unsigned char)s[i]);
        }
        /* the layout really differs: <0xC3> is id 3 + 0xC3 = 198 in order, 3 + 0x3C = 63 reversed */
        CHECK_EQ_INT(want[0], rev ? 63 : 198);
        int n = enc(t, s, false, false, got);
        CHECKF(n == len, "layout %d: %d ids for %d bytes", rev, n, len);
        for (int i = 0; i < len && i < n; i++)
            CHECKF(got[i] == want[i], "layout %d: byte %d (0x%02X) encoded as id %d (\"%s\"), "
                   "want %d", rev, i, (unsigned char)s[i], got[i], tokenizer_text(t, got[i]), want[i]);
        char text[64];
        size_t k = n > 0 ? tv_decode(t, -1, got, n, text, sizeof text) : 0;
        CHECKF(k == (size_t)len && memcmp(text, s, (size_t)len) == 0,
               "layout %d: decoding gives back %zu bytes, not the %d input bytes", rev, k, len);
        tokenizer_free(t);
    }
}

/* The same through the public API on the random-weight test model's vocabulary (byte tokens,
 * then printable ASCII, then "\u2581"-prefixed pieces; no "é"): "x" is a piece after the
 * prefix space, every other byte falls back to its <0xNN> token, looked up by text. */
TEST(tok_byte_fallback_model_vocabulary_by_text) {
    const char *path = fixture_random(0, 11, 0);
    REQUIRE(path);
    duet_model *m = fixture_load(path);
    REQUIRE(m);
    static const char s[] = "x\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80\x01\x7f";
    const int len = (int)sizeof s - 1, V = duet_model_hparams(m)->n_vocab;
    int32_t want[32], got[64];
    int nw = 0;
    want[nw++] = duet_token_bos(m);
    want[nw] = -1;
    for (int32_t id = 0; id < V; id++)
        if (!strcmp(duet_token_text(m, id), "\xe2\x96\x81x")) want[nw] = id;
    CHECKF(want[nw++] >= 0, "the model's vocabulary has no \"\\u2581x\"");
    for (int i = 1; i < len; i++, nw++) {
        char bt[8];
        snprintf(bt, sizeof bt, "<0x%02X>", (unsigned char)s[i]);
        want[nw] = -1;
        for (int32_t id = 0; id < V; id++)
            if (!strcmp(duet_token_text(m, id), bt)) want[nw] = id;
        CHECKF(want[nw] >= 0 && duet_token_type(m, want[nw]) == TOKTYPE_BYTE, "no token %s", bt);
    }
    duet_error err = {0};
    int n = duet_tokenize(m, s, (size_t)len, 1, 0, got, 64, &err);
    CHECKF(n == nw, "%d ids, want %d (%s)", n, nw, err.msg);
    for (int i = 0; i < n && i < nw; i++)
        CHECKF(got[i] == want[i], "id %d is %d (\"%s\"), want %d (\"%s\")", i, got[i],
               duet_token_text(m, got[i]), want[i], duet_token_text(m, want[i]));
    /* decoding after BOS drops the prefix space and gives back the exact bytes */
    char text[64];
    int o = 0;
    for (int i = 1; i < n && o < 60; i++) {
        int k = duet_token_to_piece(m, got[i - 1], got[i], text + o, 63 - o);
        CHECKF(k >= 0, "piece of %d: %d", got[i], k);
        if (k > 0) o += k;
    }
    CHECKF(o == len && memcmp(text, s, (size_t)len) == 0, "decoded %d bytes, want %d", o, len);
    duet_model_free(m);
}

TEST(tok_small_special_tokens) {
    tokenizer *t = NULL;
    duet_error err = {0};
    REQUIRE(load_small(&k_default, &t, &err) == DUET_OK);
    /* "<s>" is plain text unless parse_special */
    CHECK_IDS(t, "<s>", false, false, ID_SP, ID_LT, ID_S, ID_GT);
    CHECK_IDS(t, "<s>", false, true, 1);
    /* the text after a special token gets its own space prefix (as llama.cpp does) */
    CHECK_IDS(t, "<s>hi", false, true, 1, ID_SPHI);
    CHECK_IDS(t, "hi<s>hi", false, true, ID_SPHI, 1, ID_SPHI);
    CHECK_IDS(t, "<s></s>", true, true, 1, 1, 2);
    /* the unknown token's text is special too; unused tokens never are */
    CHECK_IDS(t, "<unk>", false, true, 0);
    /* user-defined tokens are matched even without parse_special */
    CHECK_IDS(t, "<|u|>", false, false, ID_USER);
    CHECK_IDS(t, "hi<|u|>hi", false, false, ID_SPHI, ID_USER, ID_SPHI);
    /* an incomplete one is plain text ('|' and 'u' are not in this vocabulary: bytes) */
    CHECK_IDS(t, "<|u|", false, false, ID_SP, ID_LT, BYTE_ID('|'), BYTE_ID('u'), BYTE_ID('|'));
    tokenizer_free(t);
}

TEST(tok_small_capacity) {
    tokenizer *t = NULL;
    duet_error err = {0};
    REQUIRE(load_small(&k_default, &t, &err) == DUET_OK);
    int32_t ids[4] = {-7, -7, -7, -7};
    /* the full count comes back; only cap ids are written */
    CHECK_EQ_INT(tokenizer_encode(t, "a a a", 5, true, false, ids, 2, &err), 4);
    CHECK(ids[0] == 1 && ids[1] == ID_SPA && ids[2] == -7);
    CHECK_EQ_INT(tokenizer_encode(t, "a a a", 5, true, false, NULL, 0, &err), 4);
    /* bad arguments */
    CHECK_EQ_INT(tokenizer_encode(t, NULL, 3, false, false, ids, 4, &err), DUET_ERR_ARG);
    CHECK_EQ_INT(tokenizer_encode(t, "a", 1, false, false, NULL, 4, &err), DUET_ERR_ARG);
    CHECK_EQ_INT(tokenizer_encode(t, "a", 1, false, false, ids, -1, &err), DUET_ERR_ARG);
    CHECK_EQ_INT(tokenizer_encode(t, NULL, 0, false, false, ids, 4, &err), 0);
    /* text with an embedded NUL is encoded by length, not cut at the NUL */
    CHECK_EQ_INT(tokenizer_encode(t, "a\0a", 3, false, false, ids, 4, &err), 3);
    CHECK(ids[1] == BYTE_ID(0));
    tokenizer_free(t);
}

TEST(tok_small_pieces) {
    tokenizer *t = NULL;
    duet_error err = {0};
    REQUIRE(load_small(&k_default, &t, &err) == DUET_OK);
    char buf[16];
    int n;
    n = tokenizer_piece(t, -1, ID_SPHI, buf, sizeof buf);
    CHECK(n == 3 && memcmp(buf, " hi", 3) == 0);
    /* right after BOS the prefix space goes */
    n = tokenizer_piece(t, 1, ID_SPHI, buf, sizeof buf);
    CHECK(n == 2 && memcmp(buf, "hi", 2) == 0);
    n = tokenizer_piece(t, 1, ID_HI, buf, sizeof buf);
    CHECK(n == 2 && memcmp(buf, "hi", 2) == 0);
    n = tokenizer_piece(t, -1, BYTE_ID(0x0A), buf, sizeof buf);
    CHECK(n == 1 && buf[0] == '\n');
    n = tokenizer_piece(t, -1, BYTE_ID(0xC3), buf, sizeof buf);
    CHECK(n == 1 && (unsigned char)buf[0] == 0xC3);
    CHECK_EQ_INT(tokenizer_piece(t, -1, 1, buf, sizeof buf), 0); /* control */
    CHECK_EQ_INT(tokenizer_piece(t, -1, 2, buf, sizeof buf), 0);
    CHECK_EQ_INT(tokenizer_piece(t, -1, ID_UNUSED, buf, sizeof buf), 0);
    n = tokenizer_piece(t, -1, 0, buf, sizeof buf); /* unknown: a visible mark */
    CHECK(n == 3 && memcmp(buf, "\xe2\x96\x85", 3) == 0);
    n = tokenizer_piece(t, -1, ID_USER, buf, sizeof buf); /* user-defined: verbatim */
    CHECK(n == 5 && memcmp(buf, "<|u|>", 5) == 0);
    /* too small: the full size comes back, the first cap bytes are written, no more */
    memset(buf, 'x', sizeof buf);
    CHECK_EQ_INT(tokenizer_piece(t, -1, ID_SPHI, buf, 2), 3);
    CHECK(buf[0] == ' ' && buf[1] == 'h' && buf[2] == 'x');
    CHECK_EQ_INT(tokenizer_piece(t, -1, ID_USER, NULL, 0), 5);
    CHECK_EQ_INT(tokenizer_piece(t, -1, -1, buf, sizeof buf), DUET_ERR_RANGE);
    CHECK_EQ_INT(tokenizer_piece(t, -1, tokenizer_n_vocab(t), buf, sizeof buf), DUET_ERR_RANGE);
    /* a round trip through encode and decode */
    int32_t ids[64];
    const char *s = "hi a\xc3\xb6<s> aa\n";
    n = tokenizer_encode(t, s, strlen(s), true, false, ids, 64, &err);
    REQUIRE(n > 0 && n <= 64);
    char text[128];
    CHECK(tv_decode(t, -1, ids, n, text, sizeof text) == strlen(s));
    CHECK_STR(text, s);
    tokenizer_free(t);
}

TEST(tok_small_hash) {
    tokenizer *a = NULL, *b = NULL, *c = NULL;
    duet_error err = {0};
    vocab_opts o = k_default;
    REQUIRE(load_small(&o, &a, &err) == DUET_OK);
    REQUIRE(load_small(&o, &b, &err) == DUET_OK);
    o.no_bytes = true;
    REQUIRE(load_small(&o, &c, &err) == DUET_OK);
    CHECK(tokenizer_hash(a) == tokenizer_hash(b));
    CHECK(tokenizer_hash(a) != tokenizer_hash(c));
    CHECK(tokenizer_hash(a) != 0);
    tokenizer_free(a);
    tokenizer_free(b);
    tokenizer_free(c);
}

/* ---- bad vocabularies (docs/bad-inputs.md, item 12) ------------------------------------- */

typedef struct bad_case {
    const char *what;
    int code;
    const char *msg_part1, *msg_part2; /* both must appear in the message */
} bad_case;

/* Builds a vocabulary of 5 tokens with one defect chosen by k. */
static int load_bad(int k, tokenizer **t, duet_error *err) {
    const char *texts[5] = {"<unk>", "<s>", "</s>", "<0x41>", "a"};
    float scores[5] = {0, 0, 0, 0, -1};
    int32_t types[5] = {2, 3, 3, 6, 1};
    uint64_t n_scores = 5, n_types = 5, n_tokens = 5;
    const char *model = "llama";
    uint32_t bos = 1;
    switch (k) {
    case 0: model = "gpt2"; break;
    case 1: model = "t5-unigram"; break;
    case 2: n_tokens = 0; n_scores = 0; n_types = 0; break;
    case 3: n_scores = 4; break;
    case 4: n_types = 3; break;
    case 5: bos = 5; break;
    case 6: texts[3] = "<0xZZ>"; break;
    case 7: texts[3] = "<0x411>"; break;
    case 8: texts[4] = "a\xc3("; break;
    case 9: texts[4] = "<s>"; break;
    case 10: types[4] = 9; break;
    case 11: scores[4] = NAN; break;
    case 12: texts[3] = "<0x4>"; break;
    case 16: texts[4] = "a\xed\xa0\x80"; break; /* U+D800, a UTF-16 surrogate, in UTF-8 form */
    case 17: texts[4] = "a\xe0\x81\x81"; break; /* 'A' as an overlong 3-byte form */
    }
    gbuf b;
    gb_init(&b);
    kv_str(&b, "tokenizer.ggml.model", model);
    kv_strs(&b, "tokenizer.ggml.tokens", texts, n_tokens);
    kv_arr(&b, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, n_scores, 4);
    kv_arr(&b, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, n_types, 4);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", bos);
    if (k == 13) kv_str(&b, "tokenizer.ggml.eos_token_id", "2");
    if (k == 14) kv_u32(&b, "tokenizer.ggml.unknown_token_id", 1000);
    if (k == 15) kv_u32(&b, "tokenizer.ggml.add_bos_token", 1);
    gguf_file *f = NULL;
    int rc = gb_open(&b, &f, err);
    if (rc == DUET_OK) rc = tokenizer_load(f, t, err);
    gb_close(&b, f);
    return rc;
}

TEST(tok_bad_vocabularies) {
    static const bad_case cases[] = {
        {"BPE without merges", DUET_ERR_FORMAT, "tokenizer.ggml.merges", "\"gpt2\""},
        {"unknown model", DUET_ERR_UNSUPPORTED, "tokenizer.ggml.model = \"t5-unigram\"", "llama"},
        {"vocab size 0", DUET_ERR_FORMAT, "tokenizer.ggml.tokens", "size 0"},
        {"scores length", DUET_ERR_FORMAT, "tokenizer.ggml.scores has 4 entries", "has 5"},
        {"types length", DUET_ERR_FORMAT, "tokenizer.ggml.token_type has 3 entries", "has 5"},
        {"bos out of range", DUET_ERR_FORMAT, "tokenizer.ggml.bos_token_id = 5", "5 tokens"},
        {"byte token <0xZZ>", DUET_ERR_FORMAT, "tokenizer.ggml.tokens[3] = \"<0xZZ>\"", "<0xXX>"},
        {"byte token <0x411>", DUET_ERR_FORMAT, "tokenizer.ggml.tokens[3] = \"<0x411>\"", "byte"},
        {"invalid UTF-8", DUET_ERR_FORMAT, "tokenizer.ggml.tokens[4] = \"a\\xc3(\"", "UTF-8"},
        {"duplicate", DUET_ERR_FORMAT, "tokenizer.ggml.tokens[4] = \"<s>\"", "duplicates token 1"},
        {"token type 9", DUET_ERR_FORMAT, "tokenizer.ggml.token_type[4] = 9", "token type"},
        {"NaN score", DUET_ERR_FORMAT, "tokenizer.ggml.scores[4]", "NaN"},
        {"byte token <0x4>", DUET_ERR_FORMAT, "tokenizer.ggml.tokens[3] = \"<0x4>\"", "<0xXX>"},
        {"eos id of type str", DUET_ERR_FORMAT, "tokenizer.ggml.eos_token_id", "found str"},
        {"unk out of range", DUET_ERR_FORMAT, "tokenizer.ggml.unknown_token_id = 1000", "range"},
        {"add_bos not bool", DUET_ERR_FORMAT, "tokenizer.ggml.add_bos_token", "expected bool"},
        {"surrogate", DUET_ERR_FORMAT, "tokenizer.ggml.tokens[4] = \"a\\xed\\xa0\\x80\"", "UTF-8"},
        {"overlong", DUET_ERR_FORMAT, "tokenizer.ggml.tokens[4] = \"a\\xe0\\x81\\x81\"", "UTF-8"},
    };
    for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        tokenizer *t = (tokenizer *)&k; /* must come back NULL */
        duet_error err = {0};
        int rc = load_bad(k, &t, &err);
        CHECKF(rc == cases[k].code, "%s: status %d, want %d (%s)", cases[k].what, rc,
               cases[k].code, err.msg);
        CHECKF(t == NULL, "%s: output not cleared", cases[k].what);
        CHECKF(strstr(err.msg, "hand-made.gguf") && strstr(err.msg, cases[k].msg_part1) &&
                   strstr(err.msg, cases[k].msg_part2),
               "%s: message \"%s\" lacks \"%s\" / \"%s\"", cases[k].what, err.msg,
               cases[k].msg_part1, cases[k].msg_part2);
        if (rc == DUET_OK) tokenizer_free(t);
    }
    /* the unmodified vocabulary loads */
    tokenizer *t = NULL;
    duet_error err = {0};
    CHECKF(load_bad(-1, &t, &err) == DUET_OK, "%s", err.msg);
    tokenizer_free(t);
}

TEST(tok_missing_keys) {
    duet_error err = {0};
    tokenizer *t = NULL;
    gguf_file *f = NULL;
    gbuf b;
    gb_init(&b);
    kv_str(&b, "general.architecture", "llama");
    REQUIRE(gb_open(&b, &f, &err) == DUET_OK);
    CHECK_EQ_INT(tokenizer_load(f, &t, &err), DUET_ERR_FORMAT);
    CHECK(strstr(err.msg, "tokenizer.ggml.model") != NULL);
    gb_close(&b, f);

    gb_init(&b);
    kv_str(&b, "tokenizer.ggml.model", "llama");
    REQUIRE(gb_open(&b, &f, &err) == DUET_OK);
    CHECK_EQ_INT(tokenizer_load(f, &t, &err), DUET_ERR_FORMAT);
    CHECK(strstr(err.msg, "tokenizer.ggml.tokens") != NULL);
    gb_close(&b, f);

    /* tokens only: scores 0, every type normal, SentencePiece default ids 1/2/0 */
    const char *texts[4] = {"<unk>", "<s>", "</s>", SP "x"};
    gb_init(&b);
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_strs(&b, "tokenizer.ggml.tokens", texts, 4);
    REQUIRE(gb_open(&b, &f, &err) == DUET_OK);
    CHECKF(tokenizer_load(f, &t, &err) == DUET_OK, "%s", err.msg);
    gb_close(&b, f);
    REQUIRE(t != NULL);
    CHECK_EQ_INT(tokenizer_bos(t), 1);
    CHECK_EQ_INT(tokenizer_eos(t), 2);
    CHECK_EQ_INT(tokenizer_type(t, 1), TOKTYPE_NORMAL);
    CHECK_IDS(t, "x", true, false, 1, 3);
    tokenizer_free(t);
}

/* ---- a small byte-level BPE vocabulary ------------------------------------------------------ */

/* ids 0..254: the characters of bytes 0x00..0xFE (GPT-2's table, written out here: printable
 * Latin-1 bytes are themselves, the others U+0100 onwards in byte order); 0xFF has none. */
#define BPE_G "\xc4\xa0" /* U+0120, byte 0x20's character */
enum { B_AB = 255, B_BC, B_ABC, B_GA, B_AA, B_END, B_XYZ, B_N };
static const char *const k_bpe_extra[] = {"ab", "bc", "abc", BPE_G "a", "aa", "<|end|>", "xyz"};
static const char *const k_bpe_merges[] = {"b c", "a b", "a bc", BPE_G " a", "a a", "x y"};

typedef struct bpe_opts {
    const char *pre;        /* NULL: key absent */
    int unk;                /* -1: key absent */
    int bad; /* 1: a merge without a space, 2: merges of u32, 3: pre of u32, 4: unknown part */
} bpe_opts;

static int load_bpe(const bpe_opts *o, tokenizer **t, duet_error *err) {
    static char chars[255][3];
    const char *texts[B_N];
    int32_t types[B_N];
    int extra = 0;
    for (int b = 0; b < 255; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        unsigned cp = printable ? (unsigned)b : 256u + (unsigned)extra++;
        if (cp < 0x80) { chars[b][0] = (char)cp; chars[b][1] = 0; }
        else { chars[b][0] = (char)(0xC0 | (cp >> 6)); chars[b][1] = (char)(0x80 | (cp & 63)); chars[b][2] = 0; }
        texts[b] = chars[b];
        types[b] = TOKTYPE_NORMAL;
    }
    for (int i = B_AB; i < B_N; i++) {
        texts[i] = k_bpe_extra[i - B_AB];
        types[i] = i == B_END ? TOKTYPE_CONTROL : TOKTYPE_NORMAL;
    }
    const char *merges[6];
    memcpy(merges, k_bpe_merges, sizeof merges);
    if (o->bad == 1) merges[1] = "ab";
    if (o->bad == 4) merges[4] = "a qq";
    gbuf b;
    gb_init(&b);
    kv_str(&b, "tokenizer.ggml.model", "gpt2");
    if (o->bad == 3) kv_u32(&b, "tokenizer.ggml.pre", 1);
    else if (o->pre) kv_str(&b, "tokenizer.ggml.pre", o->pre);
    kv_strs(&b, "tokenizer.ggml.tokens", texts, B_N);
    kv_arr(&b, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, B_N, 4);
    if (o->bad == 2) {
        uint32_t m[2] = {1, 2};
        kv_arr(&b, "tokenizer.ggml.merges", GGUF_TYPE_UINT32, m, 2, 4);
    } else {
        kv_strs(&b, "tokenizer.ggml.merges", merges, 6);
    }
    if (o->unk >= 0) kv_u32(&b, "tokenizer.ggml.unknown_token_id", (uint32_t)o->unk);
    gguf_file *f = NULL;
    int rc = gb_open(&b, &f, err);
    if (rc == DUET_OK) rc = tokenizer_load(f, t, err);
    gb_close(&b, f);
    return rc;
}

TEST(bpe_small_merges_and_split) {
    tokenizer *t = NULL;
    duet_error err = {0};
    bpe_opts o = {"gpt-2", -1, 0};
    REQUIRE(load_bpe(&o, &t, &err) == DUET_OK);
    CHECK_EQ_INT(tokenizer_bos(t), 11); /* llama.cpp's BPE default when the file names none */
    CHECK(!tokenizer_add_bos(t));
    /* "b c" (rank 0) before "a b" (rank 1), then "a bc" */
    CHECK_IDS(t, "abc", false, false, B_ABC);
    CHECK_IDS(t, "ab", false, false, B_AB);
    /* equal ranks: the leftmost pair first */
    CHECK_IDS(t, "aaa", false, false, B_AA, 'a');
    /* the split keeps one leading space with a letter run, then merges across it */
    CHECK_IDS(t, " a", false, false, B_GA);
    CHECK_IDS(t, "a b", false, false, 'a', 0x20, 'b');
    CHECK_IDS(t, "ab,abc", false, false, B_AB, ',', B_ABC);
    /* "x y" is a merge whose result is not a token: its bytes are emitted instead */
    CHECK_IDS(t, "xyz", false, false, 'x', 'y', 'z');
    /* control token: with special parsing only; renders as "" */
    CHECK_IDS(t, "a<|end|>", false, true, 'a', B_END);
    char buf[8];
    CHECK_EQ_INT(tokenizer_piece(t, -1, B_END, buf, sizeof buf), 0);
    /* a normal token decodes through the byte table: U+0120 is a space again */
    CHECK_EQ_INT(tokenizer_piece(t, -1, B_GA, buf, sizeof buf), 2);
    CHECK(memcmp(buf, " a", 2) == 0);
    /* too small: the full size, and only the first byte (" a" starts with a space) */
    memset(buf, 'x', sizeof buf);
    CHECK_EQ_INT(tokenizer_piece(t, -1, B_GA, buf, 1), 2);
    CHECK(buf[0] == ' ' && buf[1] == 'x');
    /* byte 0xFF has no character token and there is no unknown token: a clear error */
    int32_t ids[8];
    CHECK_EQ_INT(tokenizer_encode(t, "a\xff", 2, false, false, ids, 8, &err), DUET_ERR_RANGE);
    CHECKF(strstr(err.msg, "0xff") != NULL, "%s", err.msg);
    tokenizer_free(t);

    /* with an unknown token the byte becomes it */
    o.unk = 3;
    REQUIRE(load_bpe(&o, &t, &err) == DUET_OK);
    CHECK_IDS(t, "a\xff", false, false, 'a', 3);
    tokenizer_free(t);

    /* Llama-3's pre-tokenizer: a piece that is a token is taken whole (ignore_merges), and
     * BOS is on by default */
    bpe_opts l3 = {"llama-bpe", -1, 0};
    REQUIRE(load_bpe(&l3, &t, &err) == DUET_OK);
    CHECK_IDS(t, "xyz", false, false, B_XYZ);
    CHECK(tokenizer_add_bos(t));
    CHECK_IDS(t, "abc", true, false, 11, B_ABC);
    tokenizer_free(t);

    /* no tokenizer.ggml.pre: llama.cpp's "default" (punctuation runs split off first) */
    bpe_opts none = {NULL, -1, 0};
    REQUIRE(load_bpe(&none, &t, &err) == DUET_OK);
    CHECK_IDS(t, "ab,abc", false, false, B_AB, ',', B_ABC);
    tokenizer_free(t);
}

TEST(bpe_small_bad_vocabularies) {
    static const struct {
        bpe_opts o;
        int code;
        const char *part1, *part2;
    } cases[] = {
        {{"no-such-pre", -1, 0}, DUET_ERR_UNSUPPORTED, "tokenizer.ggml.pre = \"no-such-pre\"",
         "not a known pre-tokenizer"},
        {{"gpt-2", -1, 1}, DUET_ERR_FORMAT, "tokenizer.ggml.merges[1] = \"ab\"", "left right"},
        {{"gpt-2", -1, 2}, DUET_ERR_FORMAT, "'tokenizer.ggml.merges'",
         "expected arr[str], found arr[u32]"},
        {{"gpt-2", -1, 3}, DUET_ERR_FORMAT, "'tokenizer.ggml.pre'", "expected str, found u32"},
        {{"gpt-2", -1, 4}, DUET_ERR_FORMAT, "tokenizer.ggml.merges[4] = \"a qq\" names \"qq\"",
         "not in tokenizer.ggml.tokens"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tokenizer *t = (tokenizer *)&k; /* must come back NULL */
        duet_error err = {0};
        int rc = load_bpe(&cases[k].o, &t, &err);
        CHECKF(rc == cases[k].code, "case %zu: status %d, want %d (%s)", k, rc, cases[k].code,
               err.msg);
        CHECKF(t == NULL, "case %zu: output not cleared", k);
        CHECKF(strstr(err.msg, "hand-made.gguf") && strstr(err.msg, cases[k].part1) &&
                   strstr(err.msg, cases[k].part2),
               "case %zu: message \"%s\" lacks \"%s\" / \"%s\"", k, err.msg, cases[k].part1,
               cases[k].part2);
        if (rc == DUET_OK) tokenizer_free(t);
    }
}

/* Every tokenizer.ggml.pre name llama.cpp knows and this file claims compiles its patterns
 * and loses nothing: a text with letters, digits, CJK, emoji, contractions, punctuation,
 * mixed whitespace and invalid UTF-8 comes back byte for byte (byte 0xFF aside: this
 * vocabulary has no character for it). */
TEST(bpe_small_every_pre_tokenizer) {
    static const char *const names[] = {
        "default", "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe",
        "chatglm-bpe", "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon", "gpt-2",
        "gpt2", "phi-2", "roberta-bpe", "gigachat", "mpt", "olmo", "jais", "starcoder", "refact",
        "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "qwen2", "deepseek-r1-qwen",
        "megrez", "stablelm2", "poro-chat", "bloom", "gpt3-finnish", "viking", "tekken"};
    static const char text[] = "Hello, y'all! It's 2024: 12345 \xe6\x88\x91\xe6\x83\xb3 "
                               "\xf0\x9f\x98\x81 caf\xc3\xa9 \xce\xb1\xce\xb2\t\n\n  \r\n x\xfe"
                               "\xc3( $+<=>^~|` \xef\xbc\x81 \xe2\x80\x9cq\xe2\x80\x9d   ";
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        tokenizer *t = NULL;
        duet_error err = {0};
        bpe_opts o = {names[k], -1, 0};
        if (load_bpe(&o, &t, &err) != DUET_OK) {
            test_fail_at(__FILE__, __LINE__, "pre %s: %s", names[k], err.msg);
            continue;
        }
        int32_t ids[256];
        char back[512];
        int n = tokenizer_encode(t, text, sizeof text - 1, false, false, ids, 256, &err);
        size_t m = n > 0 && n <= 256 ? tv_decode(t, -1, ids, n, back, sizeof back) : 0;
        CHECKF(m == sizeof text - 1 && memcmp(back, text, m) == 0, "pre %s: %d ids, %zu bytes "
               "back (%s)", names[k], n, m, n < 0 ? err.msg : "");
        tokenizer_free(t);
    }
}

/* The PCRE2 splits of the pre-tokenizers whose vocabularies ../shared does not carry (Llama 3,
 * Qwen2; GPT-2 as a control) against tests/oracle/bpe_split.py, a hand-written scanner, on
 * llama.cpp's test strings and on a slice of gsm8k (digits, symbols, newlines). The .out ids
 * of those strings add a consistency check: every piece yields at least one token. */
static int read_cut_line(FILE *fp, uint32_t *cuts, int cap) {
    int n = 0, c;
    long v;
    while (fscanf(fp, "%ld", &v) == 1) {
        if (n < cap) cuts[n] = (uint32_t)v;
        n++;
        while ((c = fgetc(fp)) == ' ') {}
        if (c == '\n' || c == EOF) break;
        ungetc(c, fp);
    }
    return n;
}

static void split_vs_oracle(tokenizer *t, const char *kind, const char *inp, const char *sep,
                            const char *out_ids) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/oracle/bpe_split.py %s '%s' '%s'", kind,
             inp, sep);
    FILE *fp = popen(cmd, "r");
    if (!fp) { /* (REQUIRE would also return after any earlier failure of this test) */
        test_fail_at(__FILE__, __LINE__, "cannot run %s", cmd);
        return;
    }
    size_t n = 0;
    char *text = tv_read_file(inp, &n);
    char *ids = out_ids ? tv_read_file(out_ids, &(size_t){0}) : NULL;
    char *ids_line = ids;
    size_t sep_n = strlen(sep) + 2;
    char *full_sep = malloc(sep_n + 1);
    snprintf(full_sep, sep_n + 1, "\n%s\n", sep);
    int parts = 0, same = 0;
    static uint32_t want[1 << 18], got[1 << 18];
    for (size_t pos = 0; text && pos < n; parts++) {
        char *next = memmem(text + pos, n - pos, full_sep, sep_n);
        size_t end = next ? (size_t)(next - text) : n;
        int nw = read_cut_line(fp, want, 1 << 18);
        duet_error err = {0};
        int ng = tokenizer_bpe_split(t, text + pos, end - pos, got, 1 << 18, &err);
        bool eq = ng == nw && ng <= (1 << 18) && memcmp(got, want, (size_t)ng * 4) == 0;
        same += eq;
        if (!eq) {
            char shown[80];
            duet_printable(shown, sizeof shown, text + pos, end - pos);
            test_fail_at(__FILE__, __LINE__, "%s: part %d \"%s\": %d cuts vs the oracle's %d "
                         "(%s)", kind, parts, shown, ng, nw, ng < 0 ? err.msg : "");
        }
        if (ids_line) { /* count the ids on this part's line of .out */
            int k = 0;
            char *nl = strchr(ids_line, '\n');
            for (char *s = ids_line, *e; s < (nl ? nl : s + strlen(s)); s = e, k++) {
                strtol(s, &e, 10);
                if (e == s) break;
            }
            CHECKF(ng - 1 <= k, "%s: part %d: %d pieces but the reference has %d tokens", kind,
                   parts, ng - 1, k);
            ids_line = nl ? nl + 1 : NULL;
        }
        pos = next ? end + sep_n : n;
    }
    int st = pclose(fp);
    CHECKF(st == 0 && parts > 0, "oracle failed: %s", cmd);
    fprintf(stderr, "    %-7s %s: %d/%d splits identical to the oracle's\n", kind,
            strrchr(inp, '/') ? strrchr(inp, '/') + 1 : inp, same, parts);
    free(full_sep);
    free(ids);
    free(text);
}

TEST(bpe_split_matches_oracle) {
    const char *shared = test_shared_dir();
    if (!shared) SKIP("../shared not found");
    if (access("/usr/bin/python3", X_OK) != 0) SKIP("/usr/bin/python3 not found");
    /* a slice of gsm8k, written out whole lines (never a cut UTF-8 character) */
    char p[1024];
    snprintf(p, sizeof p, "%s/data/gsm8k/test.jsonl", shared);
    size_t n = 0;
    char *gsm = tv_read_file(p, &n);
    const char *slice = NULL;
    char slice_path[1024];
    if (gsm) {
        size_t cut = n < 200000 ? n : 200000;
        while (cut > 0 && gsm[cut - 1] != '\n') cut--;
        snprintf(slice_path, sizeof slice_path, "%s", test_path(test_tmpdir(), "gsm8k-slice.txt"));
        slice = slice_path;
        FILE *fp = fopen(slice, "wb");
        if (fp) { fwrite(gsm, 1, cut, fp); fclose(fp); }
        free(gsm);
    }
    static const struct { const char *pre, *kind, *vocab; } kinds[] = {
        {"llama-bpe", "llama3", "llama-bpe"}, {"qwen2", "qwen2", "qwen2"},
        {"gpt-2", "gpt2", "gpt-2"}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        tokenizer *t = NULL;
        duet_error err = {0};
        bpe_opts o = {kinds[k].pre, -1, 0};
        if (load_bpe(&o, &t, &err) != DUET_OK) {
            test_fail_at(__FILE__, __LINE__, "%s", err.msg);
            continue;
        }
        char inp[256], out[256];
        snprintf(inp, sizeof inp, "ggml-vocab-%s.gguf.inp", kinds[k].vocab);
        snprintf(out, sizeof out, "ggml-vocab-%s.gguf.out", kinds[k].vocab);
        const char *ip = tv_vocab_path(inp);
        if (ip) {
            char ipath[1024], opath[1024];
            snprintf(ipath, sizeof ipath, "%s", ip);
            snprintf(opath, sizeof opath, "%s", tv_vocab_path(out) ? tv_vocab_path(out) : "");
            split_vs_oracle(t, kinds[k].kind, ipath, "__ggml_vocab_test__",
                            opath[0] ? opath : NULL);
        }
        if (slice) split_vs_oracle(t, kinds[k].kind, slice, "__no_such_separator__", NULL);
        tokenizer_free(t);
    }
}

/* ---- reference vocabularies from ../shared ----------------------------------------------- */

TEST(tok_vectors_llama_spm) {
    const char *p = tv_vocab_path("ggml-vocab-llama-spm.gguf");
    if (!p) SKIP("../shared/tokenizers/vocab/ggml-vocab-llama-spm.gguf not found");
    tokenizer *t = tv_load_vocab_file(p);
    REQUIRE(t != NULL);
    CHECK_EQ_INT(tokenizer_n_vocab(t), 32000);
    CHECK_EQ_INT(tokenizer_bos(t), 1);
    CHECK_EQ_INT(tokenizer_eos(t), 2);
    CHECK(tokenizer_add_bos(t));
    tv_check_vectors(t, p, "llama-spm");
    /* "<s>" is text unless parse_special */
    CHECK_IDS(t, "<s>Hello", false, true, 1, 15043);
    CHECK_IDS(t, "<s>", false, false, 529, 29879, 29958);
    tokenizer_free(t);
}

TEST(tok_vectors_phi3) {
    const char *p = tv_vocab_path("ggml-vocab-phi-3.gguf");
    if (!p) SKIP("../shared/tokenizers/vocab/ggml-vocab-phi-3.gguf not found");
    tokenizer *t = tv_load_vocab_file(p);
    REQUIRE(t != NULL);
    CHECK_EQ_INT(tokenizer_n_vocab(t), 32064);
    CHECK_EQ_INT(tokenizer_eos(t), 32000);
    CHECK(tokenizer_is_eog(t, 32000)); /* <|endoftext|> */
    CHECK(tokenizer_is_eog(t, 32007)); /* <|end|>, known by text */
    CHECK(!tokenizer_is_eog(t, 32010));
    tv_check_vectors(t, p, "phi-3");
    /* a chat turn: Phi-3's special tokens swallow the whitespace after them */
    CHECK_IDS(t, "<|user|>\nHello<|end|>\n<|assistant|>", true, true, 1, 32010, 15043, 32007,
              32001);
    /* without parse_special they are text */
    int32_t ids[64];
    int n = enc(t, "<|user|>", false, false, ids);
    CHECK(n > 1);
    tokenizer_free(t);
}

TEST(tok_tiny_random_matches_llama_spm) {
    const char *shared = test_shared_dir();
    const char *ref = tv_vocab_path("ggml-vocab-llama-spm.gguf");
    if (!shared || !ref) SKIP("../shared vocabularies not found");
    char p[1024];
    snprintf(p, sizeof p, "%s/models/tiny-random/llama-2-tiny-random.gguf", shared);
    FILE *fp = fopen(p, "rb");
    if (!fp) SKIP("../shared/models/tiny-random/llama-2-tiny-random.gguf not found");
    fclose(fp);
    char refp[1024];
    snprintf(refp, sizeof refp, "%s", ref);
    tokenizer *a = tv_load_vocab_file(p), *b = tv_load_vocab_file(refp);
    if (a && b) {
        CHECK(tokenizer_hash(a) == tokenizer_hash(b));
        CHECK_EQ_INT(tokenizer_n_vocab(a), tokenizer_n_vocab(b));
        tv_check_vectors(a, refp, "tiny-random (llama-spm vectors)");
    }
    tokenizer_free(a);
    tokenizer_free(b);
}

/* Special-token partitioning, space prefixes, Phi-3's whitespace stripping and invalid UTF-8,
 * under every add_bos/parse_special combination. Expected ids come from llama.cpp itself
 * (commit c392e50, llama_tokenize on these vocabulary files); a differential run of 22,000
 * random strings, each under all 8 vocabulary/flag combinations, matched it too. */
typedef struct ref_case {
    int phi3;
    int bos, special;
    const char *text;
    int32_t ids[32]; /* ends with -1 */
} ref_case;

static const ref_case k_ref_cases[] = {
    {0, 0, 0, "<|user|>\nHello<|end|>\n<|assistant|>",
     {529, 29989, 1792, 29989, 29958, 13, 10994, 29966, 29989, 355, 29989, 29958, 13, 29966,
      29989, 465, 22137, 29989, 29958, -1}},
    {0, 0, 0, "</s>  x",
     {1533, 29879, 29958, 29871, 921, -1}},
    {0, 0, 0, " <|end|> \n x",
     {29871, 529, 29989, 355, 29989, 29958, 29871, 13, 921, -1}},
    {0, 0, 0, "\xc3 \xe2 \xf0 x\xff",
     {29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {0, 0, 0, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {259, 263, 529, 29879, 29958, 12, 29966, 2960, 29958, 29890, -1}},
    {0, 0, 0, "<s><s>  </s>",
     {529, 29879, 5299, 29879, 29958, 29871, 1533, 29879, 29958, -1}},
    {0, 0, 0, "<|system|><|system|>hi<|endoftext|>",
     {529, 29989, 5205, 29989, 5299, 29989, 5205, 29989, 29958, 2918, 29966, 29989, 355, 974,
      726, 29989, 29958, -1}},
    {0, 0, 1, "<|user|>\nHello<|end|>\n<|assistant|>",
     {529, 29989, 1792, 29989, 29958, 13, 10994, 29966, 29989, 355, 29989, 29958, 13, 29966,
      29989, 465, 22137, 29989, 29958, -1}},
    {0, 0, 1, "</s>  x",
     {2, 259, 921, -1}},
    {0, 0, 1, " <|end|> \n x",
     {29871, 529, 29989, 355, 29989, 29958, 29871, 13, 921, -1}},
    {0, 0, 1, "\xc3 \xe2 \xf0 x\xff",
     {29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {0, 0, 1, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {259, 263, 29871, 1, 29871, 12, 0, 289, -1}},
    {0, 0, 1, "<s><s>  </s>",
     {1, 1, 1678, 2, -1}},
    {0, 0, 1, "<|system|><|system|>hi<|endoftext|>",
     {529, 29989, 5205, 29989, 5299, 29989, 5205, 29989, 29958, 2918, 29966, 29989, 355, 974,
      726, 29989, 29958, -1}},
    {0, 1, 0, "<|user|>\nHello<|end|>\n<|assistant|>",
     {1, 529, 29989, 1792, 29989, 29958, 13, 10994, 29966, 29989, 355, 29989, 29958, 13, 29966,
      29989, 465, 22137, 29989, 29958, -1}},
    {0, 1, 0, "</s>  x",
     {1, 1533, 29879, 29958, 29871, 921, -1}},
    {0, 1, 0, " <|end|> \n x",
     {1, 29871, 529, 29989, 355, 29989, 29958, 29871, 13, 921, -1}},
    {0, 1, 0, "\xc3 \xe2 \xf0 x\xff",
     {1, 29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {0, 1, 0, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {1, 259, 263, 529, 29879, 29958, 12, 29966, 2960, 29958, 29890, -1}},
    {0, 1, 0, "<s><s>  </s>",
     {1, 529, 29879, 5299, 29879, 29958, 29871, 1533, 29879, 29958, -1}},
    {0, 1, 0, "<|system|><|system|>hi<|endoftext|>",
     {1, 529, 29989, 5205, 29989, 5299, 29989, 5205, 29989, 29958, 2918, 29966, 29989, 355, 974,
      726, 29989, 29958, -1}},
    {0, 1, 1, "<|user|>\nHello<|end|>\n<|assistant|>",
     {1, 529, 29989, 1792, 29989, 29958, 13, 10994, 29966, 29989, 355, 29989, 29958, 13, 29966,
      29989, 465, 22137, 29989, 29958, -1}},
    {0, 1, 1, "</s>  x",
     {1, 2, 259, 921, -1}},
    {0, 1, 1, " <|end|> \n x",
     {1, 29871, 529, 29989, 355, 29989, 29958, 29871, 13, 921, -1}},
    {0, 1, 1, "\xc3 \xe2 \xf0 x\xff",
     {1, 29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {0, 1, 1, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {1, 259, 263, 29871, 1, 29871, 12, 0, 289, -1}},
    {0, 1, 1, "<s><s>  </s>",
     {1, 1, 1, 1678, 2, -1}},
    {0, 1, 1, "<|system|><|system|>hi<|endoftext|>",
     {1, 529, 29989, 5205, 29989, 5299, 29989, 5205, 29989, 29958, 2918, 29966, 29989, 355, 974,
      726, 29989, 29958, -1}},
    {1, 0, 0, "<|user|>\nHello<|end|>\n<|assistant|>",
     {529, 29989, 1792, 29989, 29958, 13, 10994, 29966, 29989, 355, 29989, 29958, 13, 29966,
      29989, 465, 22137, 29989, 29958, -1}},
    {1, 0, 0, "</s>  x",
     {2, 921, -1}},
    {1, 0, 0, " <|end|> \n x",
     {29871, 529, 29989, 355, 29989, 29958, 29871, 13, 921, -1}},
    {1, 0, 0, "\xc3 \xe2 \xf0 x\xff",
     {29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {1, 0, 0, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {259, 263, 529, 29879, 29958, 12, 29966, 2960, 29958, 29890, -1}},
    {1, 0, 0, "<s><s>  </s>",
     {529, 29879, 5299, 29879, 29958, 259, 2, -1}},
    {1, 0, 0, "<|system|><|system|>hi<|endoftext|>",
     {529, 29989, 5205, 29989, 5299, 29989, 5205, 29989, 29958, 2918, 29966, 29989, 355, 974,
      726, 29989, 29958, -1}},
    {1, 0, 1, "<|user|>\nHello<|end|>\n<|assistant|>",
     {32010, 15043, 32007, 32001, -1}},
    {1, 0, 1, "</s>  x",
     {2, 921, -1}},
    {1, 0, 1, " <|end|> \n x",
     {259, 32007, 921, -1}},
    {1, 0, 1, "\xc3 \xe2 \xf0 x\xff",
     {29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {1, 0, 1, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {259, 263, 29871, 1, 29871, 12, 0, 289, -1}},
    {1, 0, 1, "<s><s>  </s>",
     {1, 1, 1678, 2, -1}},
    {1, 0, 1, "<|system|><|system|>hi<|endoftext|>",
     {32006, 32006, 7251, 32000, -1}},
    {1, 1, 0, "<|user|>\nHello<|end|>\n<|assistant|>",
     {1, 529, 29989, 1792, 29989, 29958, 13, 10994, 29966, 29989, 355, 29989, 29958, 13, 29966,
      29989, 465, 22137, 29989, 29958, -1}},
    {1, 1, 0, "</s>  x",
     {1, 2, 921, -1}},
    {1, 1, 0, " <|end|> \n x",
     {1, 29871, 529, 29989, 355, 29989, 29958, 29871, 13, 921, -1}},
    {1, 1, 0, "\xc3 \xe2 \xf0 x\xff",
     {1, 29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {1, 1, 0, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {1, 259, 263, 529, 29879, 29958, 12, 29966, 2960, 29958, 29890, -1}},
    {1, 1, 0, "<s><s>  </s>",
     {1, 529, 29879, 5299, 29879, 29958, 259, 2, -1}},
    {1, 1, 0, "<|system|><|system|>hi<|endoftext|>",
     {1, 529, 29989, 5205, 29989, 5299, 29989, 5205, 29989, 29958, 2918, 29966, 29989, 355, 974,
      726, 29989, 29958, -1}},
    {1, 1, 1, "<|user|>\nHello<|end|>\n<|assistant|>",
     {1, 32010, 15043, 32007, 32001, -1}},
    {1, 1, 1, "</s>  x",
     {1, 2, 921, -1}},
    {1, 1, 1, " <|end|> \n x",
     {1, 259, 32007, 921, -1}},
    {1, 1, 1, "\xc3 \xe2 \xf0 x\xff",
     {1, 29871, 198, 229, 153, 132, 229, 229, 153, 132, 243, 229, 153, 132, 29916, 258, -1}},
    {1, 1, 1, "\xe2\x96\x81\xe2\x96\x81" "a <s>\t<unk>b",
     {1, 259, 263, 29871, 1, 29871, 12, 0, 289, -1}},
    {1, 1, 1, "<s><s>  </s>",
     {1, 1, 1, 1678, 2, -1}},
    {1, 1, 1, "<|system|><|system|>hi<|endoftext|>",
     {1, 32006, 32006, 7251, 32000, -1}},
};

TEST(tok_reference_cases) {
    const char *p[2] = {tv_vocab_path("ggml-vocab-llama-spm.gguf"), NULL};
    char spm[1024];
    if (!p[0]) SKIP("../shared/tokenizers/vocab not found");
    snprintf(spm, sizeof spm, "%s", p[0]);
    p[1] = tv_vocab_path("ggml-vocab-phi-3.gguf");
    if (!p[1]) SKIP("../shared/tokenizers/vocab/ggml-vocab-phi-3.gguf not found");
    tokenizer *t[2] = {tv_load_vocab_file(spm), tv_load_vocab_file(p[1])};
    if (t[0] && t[1]) {
        for (size_t i = 0; i < sizeof k_ref_cases / sizeof k_ref_cases[0]; i++) {
            const ref_case *c = &k_ref_cases[i];
            int m = 0;
            while (c->ids[m] >= 0) m++;
            int32_t got[64];
            duet_error err = {0};
            int n = tokenizer_encode(t[c->phi3], c->text, strlen(c->text), c->bos, c->special,
                                     got, 64, &err);
            if (!tv_ids_eq(got, n, c->ids, m)) {
                char shown[120];
                duet_printable(shown, sizeof shown, c->text, strlen(c->text));
                test_fail_at(__FILE__, __LINE__, "%s \"%s\" (bos %d, special %d) %s",
                             c->phi3 ? "phi-3" : "llama-spm", shown, c->bos, c->special, err.msg);
                tv_print_ids("got ", got, n);
                tv_print_ids("want", c->ids, m);
            }
        }
    }
    tokenizer_free(t[0]);
    tokenizer_free(t[1]);
}

/* ---- large texts against independent oracles --------------------------------------------- */

/* The oracles: tests/oracle/spm_bpe.py (SentencePiece BPE: best score first, leftmost on a
 * tie, found by scanning every pair; byte fallback; vocabulary read by its own GGUF reader)
 * and tests/oracle/gpt2_bpe.py (GPT-2's byte-level BPE from OpenAI's encoder.json and
 * vocab.bpe, not from a GGUF file). Both print the ids of a file without BOS. */
static int32_t *spm_oracle_ids(const char *vocab, const char *input, int *n) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/oracle/spm_bpe.py '%s' '%s'", vocab, input);
    return tv_oracle_ids(cmd, n);
}

/* The SentencePiece oracle itself reproduces the Hugging Face ids of llama.cpp's vectors for
 * both SentencePiece vocabularies, every part (it is what tok_large_text trusts). One oracle
 * run per vocabulary, one output line per vector. */
static int spm_oracle_vectors(const char *vocab, const char *name) {
    char vp[1024], inp[1100], cmd[4096];
    snprintf(vp, sizeof vp, "%s", vocab);
    snprintf(inp, sizeof inp, "%s.inp", vp);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/oracle/spm_bpe.py '%s' '%s' __ggml_vocab_test__", vp, inp);
    FILE *fp = popen(cmd, "r");
    if (!fp) return 0;
    char *line = NULL;
    size_t cap = 0;
    int i = 0;
    for (;; i++) {
        char *text = NULL;
        size_t len = 0;
        int32_t want[512], got[512];
        int m = tv_vector(vp, i, &text, &len, want, 512);
        if (m < 0) break;
        int n = 0;
        if (getline(&line, &cap, fp) > 0)
            for (char *s = line, *e;; s = e) {
                long v = strtol(s, &e, 10);
                if (e == s || n == 512) break;
                got[n++] = (int32_t)v;
            }
        if (!tv_ids_eq(got, n, want, m)) {
            char shown[120];
            duet_printable(shown, sizeof shown, text, len);
            test_fail_at(__FILE__, __LINE__, "%s vector %d \"%s\": the oracle differs", name, i, shown);
            tv_print_ids("oracle", got, n);
            tv_print_ids("want  ", want, m);
        }
        free(text);
    }
    free(line);
    CHECKF(pclose(fp) == 0, "oracle failed: %s", cmd);
    fprintf(stderr, "    %s: the oracle reproduces %d vectors\n", name, i);
    return i;
}

TEST(tok_spm_oracle_matches_vectors) {
    if (access("/usr/bin/python3", X_OK) != 0) SKIP("/usr/bin/python3 not found");
    const char *a = tv_vocab_path("ggml-vocab-llama-spm.gguf");
    int done = a ? spm_oracle_vectors(a, "llama-spm") : 0;
    const char *b = tv_vocab_path("ggml-vocab-phi-3.gguf");
    done += b ? spm_oracle_vectors(b, "phi-3") : 0;
    if (!a && !b) SKIP("../shared/tokenizers/vocab not found");
    CHECK(done >= 80);
}

/* duet's ids for text (no BOS) against the oracle's; reports the first difference. */
static void large_vs_oracle(const char *name, tokenizer *t, const char *text, size_t n,
                            const int32_t *want, int nw) {
    duet_error err = {0};
    int ng = tokenizer_encode(t, text, n, false, false, NULL, 0, &err);
    CHECKF(ng > 0, "%s: %s", name, err.msg);
    int32_t *got = malloc((size_t)(ng > 0 ? ng : 1) * sizeof *got);
    tokenizer_encode(t, text, n, false, false, got, ng, &err);
    int i = 0;
    while (i < ng && i < nw && got[i] == want[i]) i++;
    CHECKF(ng == nw && i == ng, "%s: %d tokens vs the oracle's %d, first difference at token %d",
           name, ng, nw, i);
    if (i < ng && i < nw) {
        int lo = i < 3 ? 0 : i - 3;
        tv_print_ids("duet  ", got + lo, (ng - lo) < 8 ? ng - lo : 8);
        tv_print_ids("oracle", want + lo, (nw - lo) < 8 ? nw - lo : 8);
    }
    fprintf(stderr, "    %s: %zu bytes, %d tokens, %d identical to the oracle's\n", name, n, ng, i);
    free(got);
}

/* A whole file (malloc'd, *n bytes; NULL if unreadable) and its first *slice <= cap bytes,
 * cut after a newline (never inside a UTF-8 character), written to `out`. */
static char *text_slice(const char *path, size_t cap, const char *out, size_t *n, size_t *slice) {
    char *s = tv_read_file(path, n);
    if (!s) return NULL;
    *slice = *n;
    if (*slice > cap) {
        *slice = cap;
        while (*slice > 0 && s[*slice - 1] != '\n') (*slice)--;
    }
    FILE *fp = fopen(out, "wb");
    if (fp) {
        fwrite(s, 1, *slice, fp);
        fclose(fp);
    }
    return s;
}

/* Phi-3's vocabulary on gsm8k (its user-defined </s> never occurs there): the whole file
 * round-trips; a 100 KB slice (the oracle's pair scan is quadratic in gsm8k's long lines)
 * matches the oracle. */
static void large_phi3_gsm8k(const char *shared) {
    const char *pp = tv_vocab_path("ggml-vocab-phi-3.gguf");
    char tp[1024], vp[1024];
    if (!pp) return;
    snprintf(vp, sizeof vp, "%s", pp);
    snprintf(tp, sizeof tp, "%s/data/gsm8k/test.jsonl", shared);
    char sp[1024];
    snprintf(sp, sizeof sp, "%s", test_path(test_tmpdir(), "gsm8k-100k.txt"));
    size_t gn = 0, sn = 0;
    char *gsm = text_slice(tp, 100000, sp, &gn, &sn);
    tokenizer *phi = gsm ? tv_load_vocab_file(vp) : NULL;
    if (!phi) { free(gsm); return; }
    duet_error err = {0};
    int gm = tokenizer_encode(phi, gsm, gn, true, false, NULL, 0, &err);
    int32_t *gids = malloc((size_t)(gm > 0 ? gm : 1) * sizeof *gids);
    char *gback = malloc(gn + 64);
    CHECK_EQ_INT(tokenizer_encode(phi, gsm, gn, true, false, gids, gm, &err), gm);
    size_t gk = tv_decode(phi, -1, gids, gm, gback, gn + 64);
    CHECKF(gm > 0 && gk == gn && memcmp(gback, gsm, gn) == 0, "phi-3: gsm8k does not "
           "round-trip (%d ids, %zu of %zu bytes)", gm, gk, gn);
    fprintf(stderr, "    phi-3 gsm8k test: %zu bytes -> %d tokens\n", gn, gm);
    int nw = 0;
    int32_t *want = spm_oracle_ids(vp, sp, &nw);
    if (want) large_vs_oracle("phi-3 gsm8k (100 KB)", phi, gsm, sn, want, nw);
    free(want);
    free(gids);
    free(gback);
    free(gsm);
    tokenizer_free(phi);
}

/* Runs of one character (and of "ab"), 1 to 64 long, a line each: the same pair overlapping
 * itself, where only the tie rule (leftmost first) decides the segmentation; real prose
 * rarely has such runs (tinyshakespeare's ids do not depend on the tie rule). */
static void runs_vs_oracle(tokenizer *t, const char *vp) {
    static const char *const units[] = {"a", " ", ".", "-", "!", "=", "0", "ab", "\xc3\xa9"};
    size_t cap = 1 << 16, n = 0;
    char *text = malloc(cap);
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++)
        for (int len = 1; len <= 64; len++) {
            text[n++] = 'x';
            for (int k = 0; k < len; k++)
                for (const char *c = units[u]; *c; c++) text[n++] = *c;
            text[n++] = '\n';
        }
    char rp[1024];
    snprintf(rp, sizeof rp, "%s", test_path(test_tmpdir(), "runs.txt"));
    FILE *fp = fopen(rp, "wb");
    if (fp) {
        fwrite(text, 1, n, fp);
        fclose(fp);
    }
    int nw = 0;
    int32_t *want = fp ? spm_oracle_ids(vp, rp, &nw) : NULL;
    if (want) large_vs_oracle("llama-spm runs", t, text, n, want, nw);
    free(want);
    free(text);
}

/* Big inputs must be segmented exactly as the independent oracles do (llama-spm on all of
 * tinyshakespeare and on runs of repeated characters, Phi-3 on a slice of gsm8k, GPT-2 on
 * tinyshakespeare), stay fast (hash lookups, heap merges: O(n log n)) and lossless. */
TEST(tok_large_text) {
    const char *shared = test_shared_dir();
    const char *p = tv_vocab_path("ggml-vocab-llama-spm.gguf");
    if (!shared || !p) SKIP("../shared vocabularies not found");
    if (access("/usr/bin/python3", X_OK) != 0) SKIP("/usr/bin/python3 not found");
    char vp[1024], tp[1024];
    snprintf(vp, sizeof vp, "%s", p);
    snprintf(tp, sizeof tp, "%s/data/tinyshakespeare/input.txt", shared);
    size_t n = 0;
    char *text = tv_read_file(tp, &n);
    if (!text) SKIP("../shared/data/tinyshakespeare/input.txt not found");
    tokenizer *t = tv_load_vocab_file(vp);
    if (!t) { free(text); return; }
    duet_error err = {0};
    double t0 = duet_time_s();
    int m = tokenizer_encode(t, text, n, true, false, NULL, 0, &err);
    double dt = duet_time_s() - t0;
    CHECKF(m > 0, "%s", err.msg);
    int32_t *ids = malloc((size_t)(m > 0 ? m : 1) * sizeof *ids);
    int m2 = tokenizer_encode(t, text, n, true, false, ids, m, &err);
    CHECK_EQ_INT(m2, m);
    CHECK(m > 0 && ids[0] == tokenizer_bos(t));
    char *back = malloc(n + 64);
    size_t k = tv_decode(t, -1, ids, m, back, n + 64);
    CHECK(k == n && memcmp(back, text, n) == 0);
    fprintf(stderr, "    tinyshakespeare: %zu bytes -> %d tokens in %.3f s\n", n, m, dt);
    int nw = 0;
    int32_t *want = spm_oracle_ids(vp, tp, &nw);
    if (want) large_vs_oracle("llama-spm tinyshakespeare", t, text, n, want, nw);
    free(want);

    /* GPT-2's byte-level BPE on the same text */
    const char *gp = tv_vocab_path("ggml-vocab-gpt-2.gguf");
    char gdir[1024], cmd[4096];
    snprintf(gdir, sizeof gdir, "%s/tokenizers/gpt2", shared);
    tokenizer *g = gp ? tv_load_vocab_file(gp) : NULL;
    if (g) {
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/oracle/gpt2_bpe.py '%s/encoder.json' '%s/vocab.bpe' '%s'",
                 gdir, gdir, tp);
        want = tv_oracle_ids(cmd, &nw);
        if (want) large_vs_oracle("gpt-2 tinyshakespeare", g, text, n, want, nw);
        free(want);
        tokenizer_free(g);
    }
    free(back);
    free(ids);
    free(text);

    large_phi3_gsm8k(shared);
    runs_vs_oracle(t, vp);

    /* one long run of the same character: the worst case for pair merging */
    size_t rn = 200000;
    char *run = malloc(rn);
    memset(run, 'a', rn);
    t0 = duet_time_s();
    m = tokenizer_encode(t, run, rn, false, false, NULL, 0, &err);
    dt = duet_time_s() - t0;
    CHECK(m > 0);
    fprintf(stderr, "    200000 x 'a' -> %d tokens in %.3f s\n", m, dt);
    CHECKF(dt < 10.0, "pathological input took %.1f s", dt);
    free(run);
    tokenizer_free(t);
}
