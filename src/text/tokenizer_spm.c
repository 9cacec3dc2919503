/*
 * tokenizer_spm.c: the SentencePiece-style tokenizer (tokenizer.ggml.model == "llama").
 * Encoding reproduces llama.cpp's SPM tokenizer (llm_tokenizer_spm), because its outputs are
 * what GGUF models were evaluated with and what the reference test vectors hold.
 * tokenizer_encode first cuts out the special tokens (tokenizer.c); every plain-text fragment
 * then goes through:
 *  1. a leading space when add_space_prefix is set and the fragment starts the text or
 *     follows a special token; spaces become U+2581;
 *  2. the fragment is split into UTF-8 characters, and adjacent symbols are merged best
 *     score first (ties: leftmost) while the merged text is a token (tok_merge);
 *  3. a final symbol that is not a token is emitted byte by byte (<0xXX> tokens), or as the
 *     unknown token when the vocabulary has no such byte token.
 *
 * Owns nothing beyond the shared vocabulary: t->impl stays NULL.
 */
#include "text/tokenizer_impl.h"

#include <string.h>

#include "base/common.h"

/* U+2581 LOWER ONE EIGHTH BLOCK: SentencePiece's visible space */
#define SPM_SPACE "\xe2\x96\x81"

static int spm_load(tokenizer *t, const gguf_file *f, duet_error *err) {
    /* llama.cpp's defaults where those ids exist: <s> 1, </s> 2, <unk> 0; BOS and the space
     * prefix are added unless the file says otherwise. */
    int64_t n = t->n_vocab;
    t->bos = n > 1 ? 1 : -1;
    t->eos = n > 2 ? 2 : -1;
    t->unk = 0;
    t->add_bos = true;
    t->add_space_prefix = true;
    return DUET_OK;
}

static void spm_free(void *impl) { (void)impl; }

/* Byte fallback as llama.cpp looks it up: "<0xXX>", else the one-byte text itself (the core
 * then tries byte-typed tokens spelled in lower case). */
static void spm_fill_byte_table(tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        static const char hex[] = "0123456789ABCDEF";
        char s[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        char one = (char)b;
        t->byte_tok[b] = tok_find(t, s, 6);
        if (t->byte_tok[b] < 0) t->byte_tok[b] = tok_find(t, &one, 1);
    }
}

/* One text fragment (raw bytes, spaces not yet escaped). */
static int spm_encode(const tokenizer *t, tok_work *w, const char *s, size_t n,
                      bool after_special, tok_emitter *e, duet_error *err) {
    size_t m = 0;
    if (t->add_space_prefix && after_special) { memcpy(w->esc, SPM_SPACE, 3); m = 3; }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(w->esc + m, SPM_SPACE, 3); m += 3; }
        else w->esc[m++] = s[i];
    }
    int nsym = tok_merge(t, w, m);
    if (nsym < 0) return duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory");
    return tok_emit_chain(t, w, nsym, e, err);
}

/* A pair merges when the merged text is a token; that token's score orders the merges. */
static bool spm_pair_score(const tokenizer *t, const char *s, uint32_t ln, uint32_t rn,
                           float *score) {
    int32_t id = tok_find(t, s, (size_t)ln + rn);
    if (id < 0) return false;
    *score = t->score[id];
    return true;
}

/* Symbols hold the text's own bytes: each stands for itself. */
static int spm_char_byte(const tokenizer *t, const unsigned char *c, int *byte) {
    *byte = *c;
    return 1;
}

/* U+2581 -> ' '. Right after BOS the piece loses the space that the encoder prefixed
 * (SentencePiece decoding; llama2.c does the same). */
static int spm_piece(const tokenizer *t, int32_t prev, int32_t tok, char *buf, int cap) {
    const char *s = tok_str(t, tok);
    size_t n = t->len[tok];
    size_t i0 = 0;
    if (prev >= 0 && prev == t->bos && t->add_space_prefix && n >= 3 &&
        memcmp(s, SPM_SPACE, 3) == 0)
        i0 = 3;
    size_t m = 0; /* the whole piece's length; only its first cap bytes are written */
    for (size_t i = i0; i < n;) {
        bool sp = n - i >= 3 && memcmp(s + i, SPM_SPACE, 3) == 0;
        if (m < (size_t)cap) buf[m] = sp ? ' ' : s[i];
        m++;
        i += sp ? 3 : 1;
    }
    return (int)m;
}

const tok_ops tok_spm_ops = {
    .load = spm_load,
    .free = spm_free,
    .fill_byte_table = spm_fill_byte_table,
    .encode = spm_encode,
    .work_free = NULL,
    .pair_score = spm_pair_score,
    .char_byte = spm_char_byte,
    .byte_token_form = "<0xXX>",
    .piece = spm_piece,
    .split = NULL,
};
