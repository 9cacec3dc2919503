/* fuzz_tokenizer.c: libFuzzer harness for the tokenizers (docs/bad-inputs.md: a fuzz harness
 * for each parser; user text is the tokenizer's input). Random bytes are encoded, then decoded,
 * under each vocabulary and each add_bos / parse_special combination; ASan/UBSan watch for
 * bad accesses and the harness aborts on a broken invariant:
 *  - counting (cap 0), a full encode and a truncated encode agree on count and ids;
 *  - every id is in range and every piece decodes (its reported size is honoured);
 *  - round trip, without special-token parsing: byte-level BPE must give back the exact
 *    input for ANY bytes (invalid UTF-8 included: it maps through the byte characters)
 *    made of bytes the vocabulary has a character token for (StarCoder's lacks some, e.g.
 *    0xF1; such a byte becomes the unknown token, or an error without one);
 *    SentencePiece must for valid UTF-8 text, except where llama.cpp's behaviour is lossy
 *    by design (U+2581 in the input decodes as a space; a user-defined token such as
 *    Phi-3's </s> swallows the whitespace after it).
 * The first input byte picks the vocabulary and the flags; the rest is the text.
 *
 * Vocabularies: DUET_FUZZ_VOCAB, a colon-separated list of GGUF files; by default every
 * ggml-vocab-*.gguf of ../shared/tokenizers/vocab (run from the repository root). Run:
 *   make fuzz && build-fuzz/fuzz_tokenizer -max_total_time=600 [CORPUS_DIR]
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/gguf.h"
#include "text/tokenizer.h"

enum { MAX_VOCABS = 8 };

static tokenizer *g_tok[MAX_VOCABS];
static bool g_bpe[MAX_VOCABS];
static bool g_byte_ok[MAX_VOCABS][256]; /* the byte alone encodes and decodes back */
static int g_n;

static void load_one(const char *path) {
    if (g_n == MAX_VOCABS) return;
    gguf_file *f = NULL;
    duet_error err = {0};
    if (gguf_open(path, &f, &err) != DUET_OK || tokenizer_load(f, &g_tok[g_n], &err) != DUET_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
        abort(); /* a misconfigured harness must not pass silently */
    }
    const gguf_kv *m = gguf_find(f, "tokenizer.ggml.model");
    g_bpe[g_n] = m && m->str.len == 4 && memcmp(m->str.ptr, "gpt2", 4) == 0;
    int n_ok = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b, back[16];
        int32_t id[4];
        int n = tokenizer_encode(g_tok[g_n], &c, 1, false, false, id, 4, &err);
        g_byte_ok[g_n][b] = n == 1 && tokenizer_piece(g_tok[g_n], -1, id[0], back, 16) == 1 &&
                            back[0] == c;
        n_ok += g_byte_ok[g_n][b];
    }
    fprintf(stderr, "fuzz_tokenizer: vocabulary %d: %s (%s, %d tokens, %d/256 bytes alone "
            "round-trip)\n", g_n, path, g_bpe[g_n] ? "BPE" : "SentencePiece",
            tokenizer_n_vocab(g_tok[g_n]), n_ok);
    g_n++;
    gguf_close(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *env = getenv("DUET_FUZZ_VOCAB");
    if (env && *env) {
        char *list = strdup(env);
        for (char *save = NULL, *p = strtok_r(list, ":", &save); p; p = strtok_r(NULL, ":", &save))
            load_one(p);
        free(list);
    } else {
        static const char *const names[] = {"gpt-2", "deepseek-coder", "starcoder", "falcon",
                                            "llama-spm", "phi-3"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            char p[256];
            snprintf(p, sizeof p, "../shared/tokenizers/vocab/ggml-vocab-%s.gguf", names[i]);
            FILE *fp = fopen(p, "rb");
            if (!fp) continue;
            fclose(fp);
            load_one(p);
        }
    }
    if (g_n == 0) {
        fprintf(stderr, "fuzz_tokenizer: no vocabulary: set DUET_FUZZ_VOCAB=a.gguf[:b.gguf...] "
                        "or run from the repository root with ../shared present\n");
        abort();
    }
    return 0;
}

static bool utf8_ok(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], cp, k;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
        else return false;
        if (n - i <= k) return false;
        for (unsigned j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

#define REQUIRE(c, ...)                                                                     \
    do {                                                                                    \
        if (!(c)) {                                                                         \
            fprintf(stderr, "fuzz_tokenizer: " __VA_ARGS__);                                \
            fprintf(stderr, "\n");                                                          \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

static void run(int v, const char *text, size_t len, bool bos, bool special) {
    const tokenizer *t = g_tok[v];
    duet_error err = {0};
    int n = tokenizer_encode(t, text, len, bos, special, NULL, 0, &err);
    if (n < 0) return; /* a clear error (e.g. a byte the vocabulary cannot encode) is allowed */
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    REQUIRE(ids, "out of memory");
    int n2 = tokenizer_encode(t, text, len, bos, special, ids, n, &err);
    REQUIRE(n2 == n, "vocab %d: count %d then %d", v, n, n2);
    if (n > 1) { /* a truncated encode writes exactly cap ids, the same ones */
        int cut = n / 2;
        int32_t *part = malloc((size_t)cut * sizeof *part);
        REQUIRE(part, "out of memory");
        int n3 = tokenizer_encode(t, text, len, bos, special, part, cut, &err);
        REQUIRE(n3 == n && memcmp(part, ids, (size_t)cut * sizeof *part) == 0,
                "vocab %d: truncated encode differs", v);
        free(part);
    }
    size_t cap = 4 * len + 64 * (size_t)n + 16, o = 0;
    char *out = malloc(cap);
    REQUIRE(out, "out of memory");
    bool user = false;
    int32_t prev = bos ? -1 : tokenizer_bos(t); /* without BOS: as if after one (SPM space) */
    for (int i = 0; i < n; i++) {
        REQUIRE(ids[i] >= 0 && ids[i] < tokenizer_n_vocab(t), "vocab %d: id %d", v, ids[i]);
        user |= tokenizer_type(t, ids[i]) == TOKTYPE_USER;
        int k = tokenizer_piece(t, prev, ids[i], NULL, 0); /* size only */
        REQUIRE(k >= 0 && (size_t)k <= cap - o, "vocab %d: piece %d of id %d", v, k, ids[i]);
        int k2 = tokenizer_piece(t, prev, ids[i], out + o, (int)(cap - o));
        REQUIRE(k2 == k, "vocab %d: piece size %d then %d", v, k, k2);
        o += (size_t)k;
        prev = ids[i];
    }
    bool valid = utf8_ok((const uint8_t *)text, len);
    bool lossy = !g_bpe[v] && (!valid || user || memmem(text, len, "\xe2\x96\x81", 3));
    for (size_t i = 0; i < len && g_bpe[v]; i++) lossy |= !g_byte_ok[v][(uint8_t)text[i]];
    if (!special && !bos && !lossy)
        REQUIRE(o == len && memcmp(out, text, len) == 0,
                "vocab %d: decode(encode(x)) != x (%zu bytes in, %zu out)", v, len, o);
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int v = data[0] % g_n;
    bool bos = data[0] & 0x40, special = data[0] & 0x80;
    run(v, (const char *)data + 1, size - 1, bos, special);
    if (bos || special) run(v, (const char *)data + 1, size - 1, false, false);
    return 0;
}
