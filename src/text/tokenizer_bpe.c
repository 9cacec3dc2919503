/*
 * tokenizer_bpe.c: byte-level BPE (GPT-2 style; tokenizer.ggml.model == "gpt2") from GGUF
 * metadata. Encoding reproduces llama.cpp's BPE tokenizer (llm_tokenizer_bpe), whose outputs
 * are what the Hugging Face reference tokenizers give and what GGUF models were evaluated
 * with. tokenizer_encode first cuts out the special tokens (shared with SentencePiece, in
 * tokenizer.c); every plain-text fragment then goes through:
 *  1. the pre-tokenizer: the patterns that tokenizer.ggml.pre names split the fragment into
 *     pieces, one pattern after another, each within the pieces of the one before; text
 *     between two matches is a piece of its own (Hugging Face's "isolated" splitting);
 *  2. byte-to-unicode: each byte of a piece becomes one printable character (GPT-2's table:
 *     printable Latin-1 bytes stand for themselves, the other 68 map to U+0100..U+0143);
 *  3. merges: adjacent symbols are merged lowest merge rank first (ties: leftmost), the rank
 *     being the position of "left right" in tokenizer.ggml.merges; with ignore_merges (the
 *     Llama-3 family) a piece that is a token as a whole is emitted without merging;
 *  4. each final symbol is a token; one that is not (a merge whose result the vocabulary
 *     lacks) is emitted character by character, i.e. byte by byte.
 *
 * Invalid UTF-8 is never dropped. llama.cpp replaces each invalid byte by U+FFFD before
 * splitting, so its encoding decodes to "\xEF\xBF\xBD" instead of the input. Here the split
 * sees U+FFFD in the same places (so the piece boundaries are llama.cpp's), but each piece
 * is then byte-encoded from the original bytes: an invalid byte becomes the token of its own
 * byte character, and decode(encode(x)) == x for every byte string x. "Invalid" is strict
 * UTF-8 (duet_utf8_char): overlong forms, surrogates and code points past U+10FFFF count.
 *
 * The split uses PCRE2 (UTF + Unicode properties, JIT when available). Patterns are matched
 * against one piece at a time, so a lookahead such as \s+(?!\S) sees the piece's end as the
 * subject's end, as in llama.cpp and Hugging Face.
 *
 * Owns (tok_bpe, at t->impl): the merges as one blob of "left" + "right" texts with a hash
 * index over (left, right) -> rank, the compiled patterns, and the byte <-> character tables.
 * Read-only after loading; per-call scratch (including PCRE2 match data) lives in a bpe_work
 * at tok_work.impl.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/utf8.h"
#include "text/tokenizer_impl.h"

enum { MAX_PATTERNS = 8 };

typedef struct merge_slot {
    uint32_t hash;
    int32_t rank; /* -1: empty */
} merge_slot;

typedef struct tok_bpe {
    const char *pre;          /* the pre-tokenizer's canonical name (static storage) */
    bool ignore_merges;
    pcre2_code *re[MAX_PATTERNS];
    int n_re;
    int32_t n_merges;
    char *mblob;              /* left + right of merge r at moff[r], no separator */
    uint64_t *moff;           /* [n_merges] */
    uint32_t *mleft, *mlen;   /* [n_merges] bytes of left, of left + right */
    merge_slot *mindex;       /* open addressing, power-of-two size, load <= 1/2 */
    uint64_t mmask;
    char enc[256][2];         /* byte -> its character's UTF-8 (enc_len bytes) */
    uint8_t enc_len[256];
    int16_t dec[0x144];       /* code point -> byte, -1 for characters outside the table */
} tok_bpe;

/* Per-call scratch: the split subject, its byte map back to the input, and the pieces. */
typedef struct bpe_work {
    char *subj;
    uint32_t *subj_src;
    size_t subj_cap;
    uint32_t *cut;
    size_t cut_n, cut_cap;
    pcre2_match_data *match_data;
} bpe_work;

static const tok_bpe *bpe_of(const tokenizer *t) { return (const tok_bpe *)t->impl; }

/* ---- pre-tokenizers ------------------------------------------------------------------------ */

/* GPT-2's own split: contractions, letters, digits, other symbols (each optionally after one
 * space), then whitespace (all but the last space before a non-space). */
#define P_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama 3: case-insensitive contractions (spelled out: (?i) would also fold U+017F and
 * U+212A, which the reference implementations do not), a letter run with one optional
 * non-letter/digit/newline before it, digits in groups of up to three, symbols with trailing
 * newlines, newline runs. Qwen2 is the same with single digits. */
#define P_LLAMA3_HEAD "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|" \
                      "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
#define P_LLAMA3_TAIL "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define P_LLAMA3 P_LLAMA3_HEAD "\\p{N}{1,3}" P_LLAMA3_TAIL
#define P_QWEN2 P_LLAMA3_HEAD "\\p{N}" P_LLAMA3_TAIL
/* CJK ideographs, everything from U+0800 up to them, Hangul (DeepSeek's tokenizer.json) */
#define P_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"
#define P_PORO " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C})]+"

static const char *const k_pre_default[] = {
    "[\\p{P}\\$\\+<=>\\^~\\|]+", P_GPT2, "\\p{N}+", "[0-9][0-9][0-9]", NULL};
static const char *const k_pre_gpt2[] = {P_GPT2, NULL};
static const char *const k_pre_llama3[] = {P_LLAMA3, NULL};
static const char *const k_pre_qwen2[] = {P_QWEN2, NULL};
static const char *const k_pre_falcon[] = {
    "[\\p{P}\\$\\+<=>\\^~\\|`]+", P_GPT2, "[0-9][0-9][0-9]", NULL};
static const char *const k_pre_starcoder[] = {"\\p{N}", P_GPT2, NULL};
static const char *const k_pre_deepseek_coder[] = {
    "[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", P_CJK, "\\p{N}", NULL};
static const char *const k_pre_deepseek_llm[] = {
    "[\\r\\n]",
    /* the Latin, Greek, Cyrillic, Armenian, ... letters DeepSeek's tokenizer.json lists */
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"
    "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}"
    "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}"
    "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}"
    "\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}"
    "\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}"
    "\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"
    "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}"
    "\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}"
    "\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}"
    "\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}"
    "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}"
    "\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}"
    "\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}"
    "\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}"
    "\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"
    "\\x{1E900}-\\x{1E943}]+",
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
    "\\s+$", P_CJK, "\\p{N}+", NULL};
static const char *const k_pre_deepseek3[] = {
    "\\p{N}{1,3}", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?"
    "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", NULL};
static const char *const k_pre_poro[] = {P_PORO, NULL};
static const char *const k_pre_viking[] = {P_PORO, "\\p{N}", NULL};
static const char *const k_pre_tekken[] = {
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", NULL};

enum { PRE_IGNORE_MERGES = 1, PRE_ADD_BOS = 2, PRE_NO_BOS = 4 };

/* tokenizer.ggml.pre values as llama.cpp names them (convert_hf_to_gguf.py writes these). */
static const struct pre_kind {
    const char *name;
    const char *const *patterns;
    int flags;
} k_pre_kinds[] = {
    {"default", k_pre_default, 0},
    {"llama3", k_pre_llama3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"llama-v3", k_pre_llama3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"llama-bpe", k_pre_llama3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"falcon3", k_pre_llama3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"dbrx", k_pre_llama3, 0},
    {"smaug-bpe", k_pre_llama3, 0},
    {"chatglm-bpe", k_pre_llama3, PRE_NO_BOS},
    {"deepseek-llm", k_pre_deepseek_llm, 0},
    {"deepseek-coder", k_pre_deepseek_coder, 0},
    {"deepseek-v3", k_pre_deepseek3, 0},
    {"falcon", k_pre_falcon, 0},
    {"gpt-2", k_pre_gpt2, 0},
    {"gpt2", k_pre_gpt2, 0},
    {"phi-2", k_pre_gpt2, 0},
    {"roberta-bpe", k_pre_gpt2, 0},
    {"gigachat", k_pre_gpt2, 0},
    {"mpt", k_pre_gpt2, 0},
    {"olmo", k_pre_gpt2, 0},
    {"jais", k_pre_gpt2, 0},
    {"starcoder", k_pre_starcoder, 0},
    {"refact", k_pre_starcoder, 0},
    {"command-r", k_pre_starcoder, 0},
    {"smollm", k_pre_starcoder, 0},
    {"codeshell", k_pre_starcoder, 0},
    {"exaone", k_pre_starcoder, 0},
    {"minerva-7b", k_pre_starcoder, 0},
    {"qwen2", k_pre_qwen2, 0},
    {"deepseek-r1-qwen", k_pre_qwen2, 0},
    {"megrez", k_pre_qwen2, 0},
    {"stablelm2", k_pre_qwen2, 0},
    {"poro-chat", k_pre_poro, 0},
    {"bloom", k_pre_poro, 0},
    {"gpt3-finnish", k_pre_poro, 0},
    {"viking", k_pre_viking, 0},
    {"tekken", k_pre_tekken, PRE_IGNORE_MERGES | PRE_ADD_BOS},
};

/* ---- byte <-> character ------------------------------------------------------------------- */

static bool byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static int utf8_put(unsigned cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2; /* every character of the table is below U+0800 */
}

/* The UTF-8 text (1 or 2 bytes, returned count) byte-level BPE writes for byte b. */
static int byte_char(int b, char out[2]) {
    unsigned cp = (unsigned)b;
    if (!byte_is_printable(b)) {
        cp = 256;
        for (int c = 0; c < b; c++) cp += !byte_is_printable(c);
    }
    return utf8_put(cp, out);
}

static void build_byte_tables(tok_bpe *b) {
    for (int i = 0; i < 0x144; i++) b->dec[i] = -1;
    unsigned next = 256;
    for (int c = 0; c < 256; c++) {
        unsigned cp = byte_is_printable(c) ? (unsigned)c : next++;
        b->enc_len[c] = (uint8_t)utf8_put(cp, b->enc[c]);
        b->dec[cp] = (int16_t)c;
    }
}

/* ---- loading ----------------------------------------------------------------------------- */

static uint32_t pair_hash(const char *s, uint32_t ln, uint32_t n) {
    return tok_str_hash(s, n) ^ (ln * 0x9E3779B1u);
}

static int32_t find_merge(const tok_bpe *b, const char *s, uint32_t ln, uint32_t n) {
    uint32_t h = pair_hash(s, ln, n);
    for (uint64_t i = h & b->mmask;; i = (i + 1) & b->mmask) {
        const merge_slot *e = &b->mindex[i];
        if (e->rank < 0) return -1;
        if (e->hash == h && b->mleft[e->rank] == ln && b->mlen[e->rank] == n &&
            memcmp(b->mblob + b->moff[e->rank], s, n) == 0)
            return e->rank;
    }
}

/* A pair merges when tokenizer.ggml.merges lists it: score -rank. */
static bool bpe_pair_score(const tokenizer *t, const char *s, uint32_t ln, uint32_t rn,
                           float *score) {
    int32_t r = find_merge(bpe_of(t), s, ln, ln + rn);
    *score = r < 0 ? -INFINITY : -(float)r; /* ranks below 2^24 are exact in float */
    return r >= 0;
}

static int load_merges(const tokenizer *t, tok_bpe *b, const gguf_file *f, duet_error *err) {
    const char *path = f->path;
    const gguf_kv *kv = NULL;
    int rc = gguf_get_arr_opt(f, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &kv, err);
    if (rc) return rc;
    if (!kv)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.model = \"gpt2\" but there is "
                         "no tokenizer.ggml.merges key", path);
    if (kv->arr_n >= (1u << 24))
        return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.merges has %llu entries (at "
                         "most 16777215 supported)", path, (unsigned long long)kv->arr_n);
    int32_t n = (int32_t)kv->arr_n;
    uint64_t blob_n = 0;
    for (int32_t r = 0; r < n; r++) blob_n += kv->arr_str[r].len;
    b->n_merges = n;
    b->mblob = malloc(blob_n + 1);
    b->moff = malloc(((size_t)n + 1) * sizeof *b->moff);
    b->mleft = malloc(((size_t)n + 1) * sizeof *b->mleft);
    b->mlen = malloc(((size_t)n + 1) * sizeof *b->mlen);
    uint64_t cap = tok_pow2_at_least(2 * (uint64_t)n);
    b->mindex = malloc(cap * sizeof *b->mindex);
    if (!b->mblob || !b->moff || !b->mleft || !b->mlen || !b->mindex)
        return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory for %d merges", path, (int)n);
    b->mmask = cap - 1;
    for (uint64_t i = 0; i < cap; i++) b->mindex[i] = (merge_slot){0, -1};
    uint64_t pos = 0;
    for (int32_t r = 0; r < n; r++) {
        gguf_str m = kv->arr_str[r];
        /* "left right", split at the first space after the first byte (as llama.cpp does:
         * byte-level texts never hold a raw space, so only the separator is one) */
        const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', m.len - 1) : NULL;
        if (!sp || sp + 1 == m.ptr + m.len || m.len > UINT32_MAX / 2 ||
            duet_utf8_check(m.ptr, m.len) != m.len || memchr(m.ptr, 0, m.len)) {
            char p[96];
            duet_printable(p, sizeof p, m.ptr, m.len);
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.merges[%d] = \"%s\" is "
                             "not of the form \"left right\" (two UTF-8 texts and one space)",
                             path, (int)r, p);
        }
        uint32_t ln = (uint32_t)(sp - m.ptr), rn = (uint32_t)(m.len - ln - 1);
        /* both halves must be tokens (the merged text need not be: encoding then falls
         * back to the halves' bytes) */
        bool left_ok = tok_find(t, m.ptr, ln) >= 0;
        if (!left_ok || tok_find(t, sp + 1, rn) < 0) {
            char p[96], q[64];
            duet_printable(p, sizeof p, m.ptr, m.len);
            duet_printable(q, sizeof q, left_ok ? sp + 1 : m.ptr, left_ok ? rn : ln);
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.merges[%d] = \"%s\" "
                             "names \"%s\", which is not in tokenizer.ggml.tokens", path, (int)r,
                             p, q);
        }
        memcpy(b->mblob + pos, m.ptr, ln);
        memcpy(b->mblob + pos + ln, sp + 1, rn);
        b->moff[r] = pos;
        b->mleft[r] = ln;
        b->mlen[r] = ln + rn;
        uint32_t h = pair_hash(b->mblob + pos, ln, ln + rn);
        pos += ln + rn;
        uint64_t i = h & b->mmask;
        for (;; i = (i + 1) & b->mmask) {
            const merge_slot *e = &b->mindex[i];
            if (e->rank < 0) break;
            if (e->hash == h && b->mleft[e->rank] == ln && b->mlen[e->rank] == ln + rn &&
                memcmp(b->mblob + b->moff[e->rank], b->mblob + b->moff[r], ln + rn) == 0)
                break; /* a repeated merge keeps its first (best) rank, as in llama.cpp */
        }
        if (b->mindex[i].rank < 0) b->mindex[i] = (merge_slot){h, r};
    }
    return DUET_OK;
}

static int compile_patterns(tok_bpe *b, const struct pre_kind *k, const char *path,
                            duet_error *err) {
    for (int i = 0; k->patterns[i]; i++) {
        if (i == MAX_PATTERNS)
            return duet_fail(err, DUET_ERR_UNSUPPORTED, "pre-tokenizer %s: too many patterns",
                             k->name);
        int code;
        PCRE2_SIZE at;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)k->patterns[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &code, &at,
                                       NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof msg);
            return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: pre-tokenizer %s: pattern %d does not "
                             "compile at offset %zu: %s", path, k->name, i, (size_t)at,
                             (const char *)msg);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: the interpreter works */
        b->re[b->n_re++] = re;
    }
    return DUET_OK;
}

/* Reads tokenizer.ggml.pre and tokenizer.ggml.merges and compiles the split patterns; sets
 * the special-id defaults and the pre-tokenizer's flags. */
static int bpe_load(tokenizer *t, const gguf_file *f, duet_error *err) {
    const char *path = f->path;
    /* llama.cpp's defaults: 11 for both BOS and EOS (Falcon's <|endoftext|>) where that id
     * exists, no unknown token, neither BOS nor the space prefix added (some pre-tokenizers
     * turn add_bos on, below) */
    t->bos = t->eos = t->n_vocab > 11 ? 11 : -1;
    t->unk = -1;
    t->add_bos = false;
    t->add_space_prefix = false;
    tok_bpe *b = calloc(1, sizeof *b);
    if (!b) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory (BPE tokenizer)", path);
    t->impl = b;
    build_byte_tables(b);

    /* A file without tokenizer.ggml.pre predates the key; llama.cpp then uses "default"
     * (with a warning that quality may suffer), and so does this. */
    const struct pre_kind *kind = &k_pre_kinds[0];
    gguf_str pre = {0, NULL}; /* a present string, even an empty one, points into the file */
    int rc = gguf_get_str_opt(f, "tokenizer.ggml.pre", &pre, err);
    if (rc) return rc;
    if (pre.ptr) {
        kind = NULL;
        for (size_t i = 0; i < sizeof k_pre_kinds / sizeof k_pre_kinds[0]; i++) {
            size_t n = strlen(k_pre_kinds[i].name);
            if (pre.len == n && memcmp(pre.ptr, k_pre_kinds[i].name, n) == 0)
                kind = &k_pre_kinds[i];
        }
        if (!kind) {
            char p[64];
            duet_printable(p, sizeof p, pre.ptr, pre.len);
            return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: tokenizer.ggml.pre = \"%s\" is not a "
                             "known pre-tokenizer (known: default, gpt-2, llama-bpe, qwen2, "
                             "deepseek-llm, deepseek-coder, deepseek-v3, falcon, starcoder, "
                             "tekken and others llama.cpp names; see tokenizer_bpe.c)", path, p);
        }
    }
    b->pre = kind->name;
    b->ignore_merges = kind->flags & PRE_IGNORE_MERGES;
    if (kind->flags & PRE_ADD_BOS) t->add_bos = true;
    if (kind->flags & PRE_NO_BOS) t->bos = -1;
    rc = compile_patterns(b, kind, path, err);
    if (!rc) rc = load_merges(t, b, f, err);
    return rc;
}

static void bpe_free(void *impl) {
    tok_bpe *b = impl;
    if (!b) return;
    for (int i = 0; i < b->n_re; i++) pcre2_code_free(b->re[i]);
    free(b->mblob);
    free(b->moff);
    free(b->mleft);
    free(b->mlen);
    free(b->mindex);
    free(b);
}

/* ---- encoding ---------------------------------------------------------------------------- */

static void bpe_work_release(bpe_work *w) {
    free(w->subj);
    free(w->subj_src);
    free(w->cut);
    pcre2_match_data_free(w->match_data);
}

static void bpe_work_free(tok_work *w) {
    if (w->impl) bpe_work_release(w->impl);
    free(w->impl);
    w->impl = NULL;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    void *q = realloc(*p, need * elem);
    if (!q) return false;
    *p = q;
    *cap = need;
    return true;
}

/* The split subject: the fragment itself when it is valid UTF-8; otherwise a copy with each
 * invalid byte replaced by U+FFFD and subj_src[i] = the input offset of subject byte i (and
 * subj_src[m] = n). Returns the subject's length, or (size_t)-1 when out of memory. */
static size_t make_subject(bpe_work *w, const char *s, size_t n, const char **subj) {
    if (duet_utf8_check(s, n) == n) {
        *subj = s;
        return n;
    }
    if (3 * n + 1 > w->subj_cap) { /* U+FFFD is 3 bytes per invalid byte */
        size_t a = 0, c = 0;
        if (!grow((void **)&w->subj, &a, 3 * n + 1, 1) ||
            !grow((void **)&w->subj_src, &c, 3 * n + 1, sizeof *w->subj_src))
            return (size_t)-1;
        w->subj_cap = 3 * n + 1;
    }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        int k = duet_utf8_char(s + i, n - i);
        if (k > 0) {
            for (int j = 0; j < k; j++) { w->subj[m] = s[i + j]; w->subj_src[m++] = (uint32_t)(i + j); }
            i += (size_t)k;
        } else {
            for (int j = 0; j < 3; j++) {
                w->subj[m] = "\xef\xbf\xbd"[j];
                w->subj_src[m++] = (uint32_t)i;
            }
            i++;
        }
    }
    w->subj_src[m] = (uint32_t)n;
    *subj = w->subj;
    return m;
}

/* Cut the subject into pieces, pattern after pattern. On return w->cut[0..cut_n) holds the
 * piece boundaries (0 first, m last). */
static int split(const tok_bpe *b, bpe_work *w, const char *subj, size_t m, duet_error *err) {
    /* cut and its successor share one allocation of 2 * (m + 1) entries */
    size_t cap = w->cut_cap;
    if (!grow((void **)&w->cut, &cap, 2 * (m + 1), sizeof *w->cut)) goto nomem;
    w->cut_cap = cap;
    if (!w->match_data && !(w->match_data = pcre2_match_data_create(1, NULL))) goto nomem;
    pcre2_match_data *md = w->match_data;
    uint32_t *cur = w->cut, *nxt = w->cut + (m + 1);
    size_t n_cur = 0;
    cur[n_cur++] = 0;
    if (m > 0) cur[n_cur++] = (uint32_t)m;
    for (int p = 0; p < b->n_re; p++) {
        size_t n_nxt = 0;
        nxt[n_nxt++] = 0;
        for (size_t k = 0; k + 1 < n_cur; k++) {
            uint32_t a = cur[k], e = cur[k + 1];
            PCRE2_SPTR piece = (PCRE2_SPTR)subj + a;
            PCRE2_SIZE len = e - a, off = 0;
            while (off < len) {
                uint32_t opts = PCRE2_NO_UTF_CHECK;
                int rc = pcre2_match(b->re[p], piece, len, off, opts, md, NULL);
                if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter uses the heap */
                    rc = pcre2_match(b->re[p], piece, len, off, opts | PCRE2_NO_JIT, md, NULL);
                if (rc == PCRE2_ERROR_NOMATCH) break;
                if (rc < 0) {
                    PCRE2_UCHAR msg[160];
                    pcre2_get_error_message(rc, msg, sizeof msg);
                    return duet_fail(err, DUET_ERR_RANGE, "tokenize: pre-tokenizer %s, pattern "
                                     "%d failed on a piece of %zu bytes: %s", b->pre, p,
                                     (size_t)len, (const char *)msg);
                }
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                if (ov[1] <= ov[0]) { /* empty match (no pattern has one): step a character */
                    off = ov[0] + 1;
                    while (off < len && (piece[off] & 0xC0) == 0x80) off++;
                    continue;
                }
                if (a + ov[0] > nxt[n_nxt - 1]) nxt[n_nxt++] = a + (uint32_t)ov[0];
                nxt[n_nxt++] = a + (uint32_t)ov[1];
                off = ov[1];
            }
            if (e > nxt[n_nxt - 1]) nxt[n_nxt++] = e;
        }
        uint32_t *tmp = cur;
        cur = nxt;
        nxt = tmp;
        n_cur = n_nxt;
    }
    if (cur != w->cut) memcpy(w->cut, cur, n_cur * sizeof *cur);
    w->cut_n = n_cur;
    return DUET_OK;
nomem:
    return duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory");
}

/* Merge and emit one piece, s[0..n) of the input. */
static int encode_piece(const tokenizer *t, tok_work *w, const unsigned char *s, size_t n,
                        tok_emitter *e, duet_error *err) {
    const tok_bpe *b = bpe_of(t);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(w->esc + m, b->enc[s[i]], b->enc_len[s[i]]);
        m += b->enc_len[s[i]];
    }
    if (b->ignore_merges) {
        int32_t id = tok_find(t, w->esc, m);
        if (id >= 0) { tok_emit(e, id); return DUET_OK; }
    }
    int nsym = tok_merge(t, w, m);
    if (nsym < 0) return duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory");
    return tok_emit_chain(t, w, nsym, e, err);
}

/* The byte a character of the byte table (as tok_merge's symbols hold them) stands for. */
static int bpe_char_byte(const tokenizer *t, const unsigned char *c, int *byte) {
    /* the characters of the byte table are all one or two bytes long */
    unsigned cp = c[0] < 0x80 ? c[0] : ((c[0] & 0x1Fu) << 6) | (c[1] & 0x3Fu);
    *byte = bpe_of(t)->dec[cp];
    return c[0] < 0x80 ? 1 : 2;
}

/* One plain-text fragment: split, then each piece merged on its own. BPE adds no prefix
 * space, so where the fragment lies does not matter. */
static int bpe_encode(const tokenizer *t, tok_work *w, const char *s, size_t n,
                      bool after_special, tok_emitter *e, duet_error *err) {
    if (!w->impl && !(w->impl = calloc(1, sizeof(bpe_work))))
        return duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory");
    bpe_work *bw = w->impl;
    const char *subj;
    size_t m = make_subject(bw, s, n, &subj);
    if (m == (size_t)-1) return duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory");
    int rc = split(bpe_of(t), bw, subj, m, err);
    for (size_t k = 0; !rc && k + 1 < bw->cut_n; k++) {
        size_t a = bw->cut[k], z = bw->cut[k + 1];
        if (subj != s) { a = bw->subj_src[a]; z = bw->subj_src[z]; }
        rc = encode_piece(t, w, (const unsigned char *)s + a, z - a, e, err);
    }
    return rc;
}

/* tokenizer_bpe_split's work, its arguments checked by the core. */
static int bpe_split(const tokenizer *t, const char *text, size_t len, uint32_t *cuts, int cap,
                     duet_error *err) {
    bpe_work w = {0};
    const char *subj;
    size_t m = make_subject(&w, text, len, &subj);
    int rc = m == (size_t)-1 ? duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory")
                             : split(bpe_of(t), &w, subj, m, err);
    if (!rc) {
        for (size_t k = 0; k < w.cut_n; k++)
            if ((int)k < cap) cuts[k] = subj == text ? w.cut[k] : w.subj_src[w.cut[k]];
        rc = (int)w.cut_n;
    }
    bpe_work_release(&w);
    return rc;
}

/* ---- decoding ---------------------------------------------------------------------------- */

/* Bytes of a normal token: every character of its text mapped back through byte-to-unicode
 * (characters outside that mapping are copied as they are). Same contract as
 * tokenizer_piece. */
static int bpe_piece(const tokenizer *t, int32_t prev, int32_t tok, char *buf, int cap) {
    const tok_bpe *b = bpe_of(t);
    const unsigned char *s = (const unsigned char *)tok_str(t, tok);
    size_t n = t->len[tok], m = 0; /* the whole piece's length; its first cap bytes written */
    for (size_t i = 0; i < n;) {
        int k = duet_utf8_char(s + i, n - i); /* texts are valid UTF-8 (checked on load) */
        unsigned cp = k == 1 ? s[i] : k == 2 ? ((s[i] & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu)
                                             : 0x144;
        if (cp < 0x144 && b->dec[cp] >= 0) {
            if (m < (size_t)cap) buf[m] = (char)b->dec[cp];
            m++;
        } else { /* outside the byte table (e.g. a raw space): the character itself */
            for (int j = 0; j < k; j++, m++)
                if (m < (size_t)cap) buf[m] = (char)s[i + (size_t)j];
        }
        i += (size_t)k;
    }
    return m > INT_MAX ? INT_MAX : (int)m;
}

/* A byte is spelled as its byte-to-unicode character. */
static void bpe_fill_byte_table(tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char c[2];
        t->byte_tok[b] = tok_find(t, c, (size_t)byte_char(b, c));
    }
}

const tok_ops tok_bpe_ops = {
    .load = bpe_load,
    .free = bpe_free,
    .fill_byte_table = bpe_fill_byte_table,
    .encode = bpe_encode,
    .work_free = bpe_work_free,
    .pair_score = bpe_pair_score,
    .char_byte = bpe_char_byte,
    .byte_token_form = "its byte character",
    .piece = bpe_piece,
    .split = bpe_split,
};
