/*
 * tokenizer_impl.h: internals shared by the tokenizer's files. Not part of any public API.
 *  - tokenizer.c: the vocabulary core (loading the token table, special tokens and ids, the
 *    special-token partitioner, the merge engine, the public entry points);
 *  - tokenizer_spm.c: SentencePiece ("llama"): fragment encoding, pieces, the <0xXX> table;
 *  - tokenizer_bpe.c: byte-level BPE ("gpt2"): merges, byte-to-unicode mapping, the
 *    pre-tokenizer split.
 * The core never asks which kind it holds: everything that differs goes through the kind's
 * tok_ops, and a kind's own state hangs off tokenizer.impl (and tok_work.impl for per-call
 * scratch), which only that kind's file reads.
 *
 * The merge loop is shared: SentencePiece merges the adjacent pair whose merged text is the
 * best-scoring token, BPE the pair with the lowest merge rank; both reduce to "highest score
 * first, leftmost on ties" with score = -rank.
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

typedef struct tok_ops tok_ops;

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
    const tok_ops *ops; /* the kind's functions, chosen by tokenizer.ggml.model */
    void *impl;         /* the kind's own state (NULL when it has none) */
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
    void *impl; /* the kind's own scratch, freed by ops->work_free */
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

/* ---- what differs between the kinds ------------------------------------------------------- */

struct tok_ops {
    /* Sets the kind's defaults (special ids, add_bos, add_space_prefix; the file's keys are
     * read after) and builds t->impl. Runs once the text index is built. */
    int (*load)(tokenizer *t, const gguf_file *f, duet_error *err);
    void (*free)(void *impl); /* t->impl */
    /* Fills t->byte_tok[256] with the tokens the kind spells raw bytes as (-1: none). */
    void (*fill_byte_table)(tokenizer *t);
    /* Encode one plain-text fragment (no special tokens in it); after_special: the fragment
     * starts the text or follows a special token. w->esc holds 3 * n + 3 bytes. */
    int (*encode)(const tokenizer *t, tok_work *w, const char *s, size_t n, bool after_special,
                  tok_emitter *e, duet_error *err);
    void (*work_free)(tok_work *w); /* w->impl; may be NULL */
    /* Merge priority of the adjacent symbols s[0..ln) and s[ln..ln+rn): false when the pair
     * never merges. */
    bool (*pair_score)(const tokenizer *t, const char *s, uint32_t ln, uint32_t rn,
                       float *score);
    /* The byte the symbol character at c stands for in byte fallback; returns the
     * character's length. */
    int (*char_byte)(const tokenizer *t, const unsigned char *c, int *byte);
    const char *byte_token_form; /* how the kind spells a byte token, for messages */
    /* Bytes of a normal token; same contract as tokenizer_piece. */
    int (*piece)(const tokenizer *t, int32_t prev, int32_t tok, char *buf, int cap);
    /* The pre-tokenizer's piece boundaries (tokenizer_bpe_split); NULL: the kind has none. */
    int (*split)(const tokenizer *t, const char *text, size_t len, uint32_t *cuts, int cap,
                 duet_error *err);
};

extern const tok_ops tok_spm_ops; /* tokenizer_spm.c */
extern const tok_ops tok_bpe_ops; /* tokenizer_bpe.c */

#endif
