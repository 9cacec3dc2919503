/*
 * tokenizer_impl.h: internals shared by the tokenizer's two halves, tokenizer.c (loading,
 * special tokens, SentencePiece, the merge engine) and tokenizer_bpe.c (byte-level BPE:
 * merges, byte-to-unicode mapping, pre-tokenizer split). Not part of any public API.
 *
 * Both kinds share one struct: the vocabulary, the text index, the special-token trie and
 * the partitioner are the same; a BPE vocabulary additionally owns a tok_bpe (merge ranks
 * and compiled split patterns). The merge loop is also shared: SentencePiece merges the
 * adjacent pair whose merged text is the best-scoring token, BPE the pair with the lowest
 * merge rank; both reduce to "highest score first, leftmost on ties" with score = -rank.
 */
#ifndef DUET_TOKENIZER_IMPL_H
#define DUET_TOKENIZER_IMPL_H

#include "text/tokenizer.h"

/* Behaviour flags beside the type (llama.cpp calls these token attributes). RSTRIP/LSTRIP:
 * a matched special token also eats the whitespace after/before it. */
enum { ATTR_EOG = 1, ATTR_RSTRIP = 2, ATTR_LSTRIP = 4 };

typedef struct index_slot {
    uint32_t hash;
    int32_t id; /* -1: empty */
} index_slot;

typedef struct trie_edge {
    uint64_t key;  /* node * 256 + byte */
    int32_t child; /* 0: empty (the root is never a child) */
} trie_edge;

typedef struct tok_bpe tok_bpe; /* tokenizer_bpe.c */

struct tokenizer {
    int n_vocab;
    char *blob;        /* every text, NUL-terminated */
    uint64_t *off;     /* [n_vocab] start of text i in blob */
    uint32_t *len;     /* [n_vocab] bytes of text i */
    float *score;      /* [n_vocab] merge priority (higher merges first; SentencePiece) */
    uint8_t *type;     /* [n_vocab] TOKTYPE_* after llama.cpp's EOG override; 0 = undefined */
    uint8_t *attr;     /* [n_vocab] ATTR_* */
    index_slot *index; /* open addressing, power-of-two size, load <= 1/2 */
    uint64_t index_mask;
    uint32_t max_len;  /* longest token text: longer candidates cannot be tokens */
    int32_t byte_tok[256]; /* token for a raw byte, -1 when the vocabulary has none */
    int32_t bos, eos, unk, pad, eot, eom;
    bool add_bos, add_eos, add_space_prefix;
    uint64_t hash;
    /* special-token trie: node 0 is the root; root edges in a flat table, deeper edges
     * hashed. term[node] is the token whose text ends at node, or -1. */
    int32_t root_child[256];
    trie_edge *edges;
    uint64_t edges_mask;
    int32_t *term;
    int32_t n_nodes;
    tok_bpe *bpe; /* NULL: SentencePiece ("llama"); set: byte-level BPE ("gpt2") */
};

/* ---- shared helpers (tokenizer.c) -------------------------------------------------------- */

static inline const char *tok_str(const tokenizer *t, int32_t id) { return t->blob + t->off[id]; }
/* The id of the token with exactly this text, or -1. */
int32_t tok_find(const tokenizer *t, const char *s, size_t n);
uint32_t tok_str_hash(const char *s, size_t n);
uint64_t tok_pow2_at_least(uint64_t n);

typedef struct tok_emitter {
    int32_t *out;
    int cap;
    int n; /* ids of the full encoding so far (may exceed cap) */
} tok_emitter;

static inline void tok_emit(tok_emitter *e, int32_t id) {
    if (e->n < e->cap) e->out[e->n] = id;
    e->n++;
}

typedef struct tok_symbol {
    int32_t start, n; /* bytes [start, start + n) of w->esc; n = 0: merged away */
    int32_t prev, next;
} tok_symbol;

typedef struct tok_bigram {
    float score;
    int32_t left, right;
    int32_t size; /* bytes of the merged text when queued: detects stale entries */
} tok_bigram;

/* Scratch for one encode call, reused by each fragment: esc holds the text being merged
 * (sized for the whole input by tokenizer_encode), the rest grows as needed. */
typedef struct tok_work {
    char *esc;
    tok_symbol *sym;
    size_t sym_cap;
    tok_bigram *heap;
    size_t heap_n, heap_cap;
    /* BPE only: the split subject, its byte map back to the input, and the pieces */
    char *subj;
    uint32_t *subj_src;
    size_t subj_cap;
    uint32_t *cut;
    size_t cut_n, cut_cap;
    void *match_data; /* pcre2_match_data_8 */
} tok_work;

/* Split w->esc[0..m) into UTF-8 characters (as llama.cpp's unicode_len_utf8 counts them) and
 * merge adjacent symbols, best pair first, until no pair merges. On return w->sym holds the
 * chain from symbol 0 (next == -1 ends it); returns the symbol count (0 when m == 0), or
 * DUET_ERR_NOMEM. */
int tok_merge(const tokenizer *t, tok_work *w, size_t m);

/* Emit the chain tok_merge left (nsym symbols): each symbol's token, or when its text is not
 * a token, the tokens of its bytes (the unknown token for a byte without one; an error when
 * there is none). */
int tok_emit_chain(const tokenizer *t, const tok_work *w, int nsym, tok_emitter *e,
                   duet_error *err);

/* ---- byte-level BPE (tokenizer_bpe.c) ------------------------------------------------------ */

/* Reads tokenizer.ggml.pre and tokenizer.ggml.merges and compiles the split patterns; sets
 * t->bpe and the pre-tokenizer's defaults (t->add_bos). Needs the text index built. */
int tok_bpe_load(tokenizer *t, const gguf_file *f, duet_error *err);
void tok_bpe_free(tok_bpe *b);
/* The UTF-8 text (1 or 2 bytes, returned count) byte-level BPE writes for byte b. */
int tok_bpe_byte_char(int b, char out[2]);
/* The byte a character of the byte table (at c, as tok_merge's symbols hold them) stands for;
 * returns the character's length. */
int tok_bpe_char_byte(const tokenizer *t, const unsigned char *c, int *byte);
/* Merge priority of the adjacent symbols s[0..ln) and s[ln..ln+rn): -rank, or -INFINITY
 * (never merges) when tokenizer.ggml.merges does not list the pair. */
float tok_bpe_pair_score(const tokenizer *t, const char *s, uint32_t ln, uint32_t rn);
/* Encode one plain-text fragment (no special tokens in it). */
int tok_bpe_encode(const tokenizer *t, tok_work *w, const char *s, size_t n, tok_emitter *e,
                   duet_error *err);
void tok_bpe_work_free(tok_work *w);
/* Bytes of a normal token: every character of its text mapped back through byte-to-unicode
 * (characters outside that mapping are copied as they are). Same contract as
 * tokenizer_piece. */
int tok_bpe_piece(const tokenizer *t, int32_t tok, char *buf, int cap);

#endif
