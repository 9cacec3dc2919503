/*
 * tokenizer.c: the vocabulary core shared by both kinds of tokenizer: loading the token table
 * from GGUF metadata (texts, scores, types, special ids and flags), the special-token
 * partitioner, the merge engine, and the public entry points. What differs between
 * SentencePiece (tokenizer_spm.c, tokenizer.ggml.model == "llama") and byte-level BPE
 * (tokenizer_bpe.c, "gpt2") is behind the kind's tok_ops, chosen once at load.
 * Encoding follows llama.cpp (llama-vocab.cpp), because its outputs are what GGUF models were
 * evaluated with and what the reference test vectors hold:
 *  1. special tokens found in the text become their own fragments (control and unknown
 *     tokens only with parse_special; user-defined tokens always), longest text first;
 *  2. every remaining text fragment is encoded by the kind (ops->encode), which merges
 *     adjacent symbols with tok_merge and emits them with tok_emit_chain.
 *
 * Owns: a copy of every token text (one blob, NUL-terminated each), scores, types, a hash
 * index text -> id, a byte trie over the special tokens, and the kind's state (t->impl).
 * Invariants after tokenizer_load: n_vocab >= 1; every special id is -1 or in range; token
 * texts have no NUL, non-byte texts are valid UTF-8, byte-typed texts are exactly <0xXX>;
 * non-empty texts are unique (llama.cpp refuses duplicates too).
 * A loaded tokenizer is read-only: encode and piece may run concurrently from many threads.
 */
#include "text/tokenizer_impl.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/hash.h"
#include "base/utf8.h"

/* ---- small helpers ----------------------------------------------------------------------- */

uint32_t tok_str_hash(const char *s, size_t n) {
    uint64_t h = duet_fnv1a(DUET_FNV_OFFSET, s, n);
    return (uint32_t)(h ^ (h >> 32));
}

uint64_t tok_pow2_at_least(uint64_t n) {
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* Bytes of the UTF-8 character a lead byte starts, as llama.cpp's unicode_len_utf8 decides
 * (continuation and invalid bytes count as one; F8..FF as four). Encoding must split
 * invalid input exactly like the reference to give the same ids. */
static int utf8_len(unsigned char c) {
    static const unsigned char lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "<0xXX>" exactly: the byte, or -1. */
static int parse_byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

int32_t tok_find(const tokenizer *t, const char *s, size_t n) {
    if (n == 0 || n > t->max_len) return -1;
    uint32_t h = tok_str_hash(s, n);
    for (uint64_t i = h & t->index_mask;; i = (i + 1) & t->index_mask) {
        const index_slot *e = &t->index[i];
        if (e->id < 0) return -1;
        if (e->hash == h && t->len[e->id] == n && memcmp(tok_str(t, e->id), s, n) == 0)
            return e->id;
    }
}

/* ---- loading ----------------------------------------------------------------------------- */

/* Token ids are optional u32 keys; any integer type is accepted when the value is in range. */
static int read_id(const gguf_file *f, const char *key, int n_vocab, int32_t *id,
                   duet_error *err) {
    if (!gguf_find(f, key)) return DUET_OK; /* absent: the kind's default stands */
    int64_t v;
    int rc = gguf_get_i64_opt(f, key, &v, err);
    if (rc) return rc;
    if (v < 0 || v >= n_vocab)
        return duet_fail(err, DUET_ERR_FORMAT,
                         "%s: %s = %lld is out of range (the vocabulary has %d tokens)",
                         f->path, key, (long long)v, n_vocab);
    *id = (int32_t)v;
    return DUET_OK;
}

/* Optional per-token array: absent -> *out = NULL; present -> element type (integer types of
 * want's width count as want) and count must match. */
static int read_arr(const gguf_file *f, const char *key, gguf_type want, uint64_t n,
                    const gguf_kv **out, duet_error *err) {
    *out = NULL;
    int rc = gguf_get_arr_opt(f, key, want, out, err);
    if (rc || !*out) return rc;
    if ((*out)->arr_n != n) {
        uint64_t got = (*out)->arr_n;
        *out = NULL;
        return duet_fail(err, DUET_ERR_FORMAT,
                         "%s: %s has %llu entries but tokenizer.ggml.tokens has %llu", f->path,
                         key, (unsigned long long)got, (unsigned long long)n);
    }
    return DUET_OK;
}

static bool gguf_str_eq(gguf_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int build_index(tokenizer *t, const gguf_file *f, duet_error *err) {
    uint64_t cap = tok_pow2_at_least(2 * (uint64_t)t->n_vocab);
    t->index = malloc(cap * sizeof *t->index);
    if (!t->index)
        return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory (token index)", f->path);
    t->index_mask = cap - 1;
    for (uint64_t i = 0; i < cap; i++) t->index[i] = (index_slot){0, -1};
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint32_t n = t->len[id];
        if (n == 0) continue; /* an empty text can never be matched */
        const char *s = tok_str(t, id);
        uint32_t h = tok_str_hash(s, n);
        uint64_t i = h & t->index_mask;
        for (;; i = (i + 1) & t->index_mask) {
            index_slot *e = &t->index[i];
            if (e->id < 0) break;
            if (e->hash == h && t->len[e->id] == n && memcmp(tok_str(t, e->id), s, n) == 0) {
                char p[96];
                duet_printable(p, sizeof p, s, n);
                return duet_fail(err, DUET_ERR_FORMAT,
                                 "%s: tokenizer.ggml.tokens[%d] = \"%s\" duplicates token %d",
                                 f->path, id, p, e->id);
            }
        }
        t->index[i] = (index_slot){h, id};
    }
    return DUET_OK;
}

static int trie_child(const tokenizer *t, int32_t node, unsigned char b) {
    if (node == 0) return t->root_child[b];
    uint64_t key = (uint64_t)node * 256 + b;
    for (uint64_t i = (key * 0x9E3779B97F4A7C15ull >> 20) & t->edges_mask;;
         i = (i + 1) & t->edges_mask) {
        if (t->edges[i].child == 0) return 0;
        if (t->edges[i].key == key) return t->edges[i].child;
    }
}

static bool is_special_type(int type) {
    return type == TOKTYPE_CONTROL || type == TOKTYPE_USER || type == TOKTYPE_UNKNOWN;
}

static int build_trie(tokenizer *t, const gguf_file *f, duet_error *err) {
    uint64_t total = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (is_special_type(t->type[id])) total += t->len[id];
    if (total > INT32_MAX - 1)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: special tokens too long in total", f->path);
    t->term = malloc((total + 1) * sizeof *t->term);
    uint64_t cap = tok_pow2_at_least(2 * total);
    t->edges = calloc(cap, sizeof *t->edges);
    if (!t->term || !t->edges)
        return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory (special-token trie)", f->path);
    t->edges_mask = cap - 1;
    t->term[0] = -1;
    t->n_nodes = 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!is_special_type(t->type[id]) || t->len[id] == 0) continue;
        const unsigned char *s = (const unsigned char *)tok_str(t, id);
        int32_t node = 0;
        for (uint32_t k = 0; k < t->len[id]; k++) {
            int32_t c = trie_child(t, node, s[k]);
            if (!c) {
                c = t->n_nodes++;
                t->term[c] = -1;
                if (node == 0) {
                    t->root_child[s[k]] = c;
                } else {
                    uint64_t key = (uint64_t)node * 256 + s[k];
                    uint64_t i = (key * 0x9E3779B97F4A7C15ull >> 20) & t->edges_mask;
                    while (t->edges[i].child) i = (i + 1) & t->edges_mask;
                    t->edges[i] = (trie_edge){key, c};
                }
            }
            node = c;
        }
        t->term[node] = id; /* texts are unique, so no terminal is claimed twice */
    }
    return DUET_OK;
}

/* End-of-generation tokens llama.cpp recognises by text when the metadata does not say. */
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
};

static void set_attr_by_text(tokenizer *t, const char *text, int flag, bool on) {
    int32_t id = tok_find(t, text, strlen(text));
    if (id < 0) return;
    if (on) t->attr[id] |= (uint8_t)flag;
    else t->attr[id] &= (uint8_t)~flag;
}

/* The vocabulary's kind from tokenizer.ggml.model: SentencePiece ("llama") or byte-level BPE
 * ("gpt2"); any other is refused. */
static int read_model_kind(const gguf_file *f, const tok_ops **ops, duet_error *err) {
    const char *path = f->path;
    gguf_str model = {0, NULL}; /* a present string, even an empty one, points into the file */
    int rc = gguf_get_str_opt(f, "tokenizer.ggml.model", &model, err);
    if (rc) return rc;
    if (!model.ptr)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: no tokenizer.ggml.model key (not a model "
                         "with a vocabulary?)", path);
    static const struct { const char *name; const tok_ops *ops; } kinds[] = {
        {"llama", &tok_spm_ops}, {"gpt2", &tok_bpe_ops}};
    *ops = NULL;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (gguf_str_eq(model, kinds[i].name)) *ops = kinds[i].ops;
    if (!*ops) {
        char p[64];
        duet_printable(p, sizeof p, model.ptr, model.len);
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model = \"%s\" is not "
                         "supported (only \"llama\", SentencePiece, and \"gpt2\", byte-level "
                         "BPE)", path, p);
    }
    return DUET_OK;
}

/* The token texts: an array of str with 1 .. INT32_MAX - 1 entries. */
static int read_token_texts(const gguf_file *f, const gguf_kv **out, duet_error *err) {
    const char *path = f->path;
    const gguf_kv *toks = NULL;
    int rc = gguf_get_arr_opt(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err);
    if (rc) return rc;
    if (!toks)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: no tokenizer.ggml.tokens key", path);
    uint64_t n = toks->arr_n;
    if (n == 0)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.tokens is empty (vocabulary "
                         "size 0)", path);
    if (n > (uint64_t)INT32_MAX - 1)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries, "
                         "more than token ids can address", path, (unsigned long long)n);
    *out = toks;
    return DUET_OK;
}

/* The vocabulary's arrays, sized for the n texts of toks (one blob holds them all). */
static int alloc_vocab(tokenizer *t, const gguf_file *f, const gguf_kv *toks, duet_error *err) {
    const char *path = f->path;
    uint64_t n = toks->arr_n;
    uint64_t blob_n = 0;
    for (uint64_t i = 0; i < n; i++) {
        /* a guard for int arithmetic only: real tokens are at most a few hundred bytes */
        if (toks->arr_str[i].len > (uint64_t)INT32_MAX / 4)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] is %llu "
                             "bytes long", path, (unsigned long long)i,
                             (unsigned long long)toks->arr_str[i].len);
        blob_n += toks->arr_str[i].len + 1; /* bounded by the file size plus n */
    }
    t->blob = malloc(blob_n);
    t->off = malloc(n * sizeof *t->off);
    t->len = malloc(n * sizeof *t->len);
    t->score = malloc(n * sizeof *t->score);
    t->type = malloc(n);
    t->attr = calloc(n, 1);
    if (!t->blob || !t->off || !t->len || !t->score || !t->type || !t->attr)
        return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory for %llu tokens", path,
                         (unsigned long long)n);
    return DUET_OK;
}

/* Copies each token's text, score and type into t, refusing a bad type, a NaN score, a NUL
 * byte, a byte token not spelled <0xXX> and a text that is not UTF-8. */
static int copy_tokens(tokenizer *t, const gguf_file *f, const gguf_kv *toks, const gguf_kv *scores,
                       const gguf_kv *types, duet_error *err) {
    const char *path = f->path;
    uint64_t n = toks->arr_n;
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        gguf_str s = toks->arr_str[i];
        char p[96]; /* the token for messages, filled only on the error paths */
#define SHOW_TOKEN (duet_printable(p, sizeof p, s.ptr, s.len), p)
        int type = TOKTYPE_NORMAL;
        if (types) {
            int32_t v;
            memcpy(&v, (const char *)types->arr_data + 4 * i, 4);
            /* 0 is llama.cpp's "undefined"; anything else unknown is a corrupt file */
            if (v < 0 || v > TOKTYPE_BYTE)
                return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.token_type[%llu] = "
                                 "%d is not a token type (0..6) (token \"%s\")", path,
                                 (unsigned long long)i, (int)v, SHOW_TOKEN);
            type = v;
        }
        float sc = 0.0f;
        if (scores) {
            memcpy(&sc, (const char *)scores->arr_data + 4 * i, 4);
            /* NaN would break the merge order (every comparison false) */
            if (isnan(sc))
                return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.scores[%llu] is NaN "
                                 "(token \"%s\")", path, (unsigned long long)i, SHOW_TOKEN);
        }
        if (s.len && memchr(s.ptr, 0, s.len))
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] = \"%s\" "
                             "contains a NUL byte", path, (unsigned long long)i, SHOW_TOKEN);
        if (type == TOKTYPE_BYTE) {
            if (parse_byte_token(s.ptr, s.len) < 0)
                return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] = \"%s\" "
                                 "has type byte (tokenizer.ggml.token_type 6) but is not of the "
                                 "form <0xXX>", path, (unsigned long long)i, SHOW_TOKEN);
        } else if (duet_utf8_check(s.ptr, s.len) != s.len) {
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%llu] = \"%s\" is "
                             "not valid UTF-8", path, (unsigned long long)i, SHOW_TOKEN);
        }
#undef SHOW_TOKEN
        t->off[i] = pos;
        t->len[i] = (uint32_t)s.len;
        if (s.len) memcpy(t->blob + pos, s.ptr, s.len);
        t->blob[pos + s.len] = 0;
        pos += s.len + 1;
        t->score[i] = sc;
        t->type[i] = (uint8_t)type;
        if (s.len > t->max_len) t->max_len = (uint32_t)s.len;
    }
    return DUET_OK;
}

static uint64_t vocab_identity_hash(const tokenizer *t) {
    /* The identity hash covers the file's own texts and types (before any override below). */
    uint64_t h = DUET_FNV_OFFSET;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        unsigned char sep = 0;
        h = duet_fnv1a(h, tok_str(t, id), t->len[id]);
        h = duet_fnv1a(h, &sep, 1);
        h = duet_fnv1a(h, &t->type[id], 1);
    }
    return h;
}

/* The special ids and the BOS/EOS/space-prefix flags: the kind's defaults, then the file's. */
static int read_special_ids(tokenizer *t, const gguf_file *f, duet_error *err) {
    int rc;
    /* the ids and flags no kind sets a default for; the kind's load sets BOS, EOS, the
     * unknown token, add_bos and add_space_prefix */
    t->pad = t->eot = t->eom = -1;
    t->add_eos = false;
    if ((rc = t->ops->load(t, f, err))) return rc;
    if ((rc = read_id(f, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err)) ||
        (rc = read_id(f, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err)) ||
        (rc = read_id(f, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err)) ||
        (rc = read_id(f, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad, err)) ||
        (rc = read_id(f, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot, err)) ||
        (rc = read_id(f, "tokenizer.ggml.eom_token_id", t->n_vocab, &t->eom, err)))
        return rc;

    if ((rc = gguf_get_bool_opt(f, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) ||
        (rc = gguf_get_bool_opt(f, "tokenizer.ggml.add_eos_token", &t->add_eos, err)) ||
        (rc = gguf_get_bool_opt(f, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix,
                                err)))
        return rc;
    return DUET_OK;
}

static void mark_end_of_generation(tokenizer *t) {
    /* End of generation: EOS/EOT/EOM plus the chat-turn terminators llama.cpp knows by text.
     * Like llama.cpp, such a token is treated as control even if the file says otherwise, so
     * that it renders as "" and is not matched in plain text. */
    int32_t eog_ids[3] = {t->eos, t->eot, t->eom};
    for (int k = 0; k < 3; k++)
        if (eog_ids[k] >= 0) t->attr[eog_ids[k]] |= ATTR_EOG;
    for (size_t k = 0; k < sizeof k_eog_texts / sizeof k_eog_texts[0]; k++) {
        int32_t id = tok_find(t, k_eog_texts[k], strlen(k_eog_texts[k]));
        if (id < 0) continue;
        t->attr[id] |= ATTR_EOG;
        t->type[id] = TOKTYPE_CONTROL;
    }
}

static void phi3_quirk(tokenizer *t, const gguf_file *f) {
    /* Phi-3 quirk (llama.cpp keys it on general.name): its special tokens swallow the
     * whitespace after them, as its Hugging Face tokenizer does ("<|user|>\n" -> one token). */
    gguf_str name = {0, NULL}; /* stays unset when absent or not a string: no quirk then */
    (void)gguf_get_str_opt(f, "general.name", &name, NULL);
    if (name.ptr) {
        char lower[128];
        size_t m = DUET_MIN(name.len, sizeof lower - 1);
        for (size_t i = 0; i < m; i++) {
            char c = name.ptr[i];
            lower[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
        }
        lower[m] = 0;
        if (strstr(lower, "phi-3") || strstr(lower, "phi3")) {
            for (int32_t id = 0; id < t->n_vocab; id++)
                if (is_special_type(t->type[id])) t->attr[id] |= ATTR_RSTRIP;
            set_attr_by_text(t, "</s>", ATTR_RSTRIP, true);
            set_attr_by_text(t, "<unk>", ATTR_RSTRIP, false);
            set_attr_by_text(t, "<s>", ATTR_RSTRIP, false);
            set_attr_by_text(t, "<|endoftext|>", ATTR_RSTRIP, false);
        }
    }
}

static void find_byte_tokens(tokenizer *t) {
    /* Byte fallback: the kind's own spelling of each byte first; a byte-typed token the
     * kind did not find (e.g. spelled in lower case) is accepted as a last resort. */
    t->ops->fill_byte_table(t);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] != TOKTYPE_BYTE) continue;
        int b = parse_byte_token(tok_str(t, id), t->len[id]);
        if (t->byte_tok[b] < 0) t->byte_tok[b] = id;
    }
}

static int load_impl(tokenizer *t, const gguf_file *f, duet_error *err) {
    int rc;
    const gguf_kv *toks = NULL;
    if ((rc = read_model_kind(f, &t->ops, err)) || (rc = read_token_texts(f, &toks, err))) return rc;
    uint64_t n = toks->arr_n;
    t->n_vocab = (int)n;

    const gguf_kv *scores, *types;
    if ((rc = read_arr(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, n, &scores, err)) ||
        (rc = read_arr(f, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, n, &types, err)))
        return rc;
    if ((rc = alloc_vocab(t, f, toks, err)) || (rc = copy_tokens(t, f, toks, scores, types, err)))
        return rc;
    t->hash = vocab_identity_hash(t);
    if ((rc = build_index(t, f, err)) || (rc = read_special_ids(t, f, err))) return rc;
    mark_end_of_generation(t);
    phi3_quirk(t, f);
    find_byte_tokens(t);
    return build_trie(t, f, err);
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    free(t->blob);
    free(t->off);
    free(t->len);
    free(t->score);
    free(t->type);
    free(t->attr);
    free(t->index);
    free(t->edges);
    free(t->term);
    if (t->ops) t->ops->free(t->impl);
    free(t);
}

int tokenizer_load(const gguf_file *f, tokenizer **out, duet_error *err) {
    if (!f || !out) return duet_fail(err, DUET_ERR_ARG, "tokenizer_load: NULL argument");
    *out = NULL;
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory (tokenizer)", f->path);
    int rc = load_impl(t, f, err);
    if (rc) {
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return DUET_OK;
}

/* ---- queries ----------------------------------------------------------------------------- */

int tokenizer_n_vocab(const tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos(const tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const tokenizer *t) { return t->eos; }
bool tokenizer_add_bos(const tokenizer *t) { return t->add_bos; }
uint64_t tokenizer_hash(const tokenizer *t) { return t->hash; }

bool tokenizer_is_eog(const tokenizer *t, int32_t tok) {
    return tok >= 0 && tok < t->n_vocab && (t->attr[tok] & ATTR_EOG);
}

int tokenizer_type(const tokenizer *t, int32_t tok) {
    return tok >= 0 && tok < t->n_vocab ? t->type[tok] : 0;
}

const char *tokenizer_text(const tokenizer *t, int32_t tok) {
    return tok >= 0 && tok < t->n_vocab ? tok_str(t, tok) : NULL;
}

/* ---- encoding ---------------------------------------------------------------------------- */

/* Heap order: higher score first; equal scores: the leftmost pair first. */
static bool bigram_before(const tok_bigram *a, const tok_bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(tok_work *w, tok_bigram b) {
    if (w->heap_n == w->heap_cap) {
        size_t cap = w->heap_cap ? 2 * w->heap_cap : 256;
        tok_bigram *h = realloc(w->heap, cap * sizeof *h);
        if (!h) return DUET_ERR_NOMEM;
        w->heap = h;
        w->heap_cap = cap;
    }
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_before(&b, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = b;
    return DUET_OK;
}

static tok_bigram heap_pop(tok_work *w) {
    tok_bigram top = w->heap[0];
    tok_bigram last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bigram_before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

static int try_bigram(const tokenizer *t, tok_work *w, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return DUET_OK;
    int32_t size = w->sym[left].n + w->sym[right].n;
    const char *s = w->esc + w->sym[left].start; /* contiguous: right follows left */
    float score;
    if (!t->ops->pair_score(t, s, (uint32_t)w->sym[left].n, (uint32_t)w->sym[right].n, &score))
        return DUET_OK;
    return heap_push(w, (tok_bigram){score, left, right, size});
}

int tok_merge(const tokenizer *t, tok_work *w, size_t m) {
    /* Count the symbols first (SentencePiece escaping can add some: a stray lead byte before
     * a space swallows part of the U+2581 and leaves its last bytes as symbols of their
     * own). */
    size_t count = 0;
    for (size_t o = 0; o < m; count++)
        o += DUET_MIN((size_t)utf8_len((unsigned char)w->esc[o]), m - o);
    if (count > w->sym_cap) {
        tok_symbol *g = realloc(w->sym, count * sizeof *g);
        if (!g) return DUET_ERR_NOMEM;
        w->sym = g;
        w->sym_cap = count;
    }
    int32_t nsym = 0;
    for (size_t o = 0; o < m;) {
        size_t k = DUET_MIN((size_t)utf8_len((unsigned char)w->esc[o]), m - o);
        w->sym[nsym] = (tok_symbol){(int32_t)o, (int32_t)k, nsym - 1, o + k == m ? -1 : nsym + 1};
        nsym++;
        o += k;
    }
    w->heap_n = 0;
    for (int32_t i = 1; i < nsym; i++)
        if (try_bigram(t, w, i - 1, i)) return DUET_ERR_NOMEM;
    while (w->heap_n) {
        tok_bigram b = heap_pop(w);
        tok_symbol *l = &w->sym[b.left], *r = &w->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->sym[r->next].prev = b.left;
        if (try_bigram(t, w, l->prev, b.left) || try_bigram(t, w, b.left, l->next))
            return DUET_ERR_NOMEM;
    }
    return nsym;
}

int tok_emit_chain(const tokenizer *t, const tok_work *w, int nsym, tok_emitter *e,
                   duet_error *err) {
    for (int32_t i = 0; nsym > 0 && i != -1; i = w->sym[i].next) {
        const tok_symbol *y = &w->sym[i];
        int32_t id = tok_find(t, w->esc + y->start, (size_t)y->n);
        if (id >= 0) { tok_emit(e, id); continue; }
        /* SentencePiece: merged symbols are tokens by construction, so this is one
         * character that is not in the vocabulary. BPE: a listed merge whose result is not.
         * Either way: fall back to the bytes the symbol stands for. */
        for (int32_t k = 0; k < y->n;) {
            const unsigned char *c = (const unsigned char *)w->esc + y->start + k;
            int b = *c;
            k += t->ops->char_byte(t, c, &b);
            if (t->byte_tok[b] >= 0) tok_emit(e, t->byte_tok[b]);
            else if (t->unk >= 0) tok_emit(e, t->unk);
            else
                return duet_fail(err, DUET_ERR_RANGE, "tokenize: byte 0x%02x cannot be encoded: "
                                 "the vocabulary has no token for it (%s) and no unknown "
                                 "token", b, t->ops->byte_token_form);
        }
    }
    return DUET_OK;
}

/* A special-token occurrence in the text. */
typedef struct match {
    uint32_t len;
    int32_t id;
    uint32_t pos;
} match;

/* llama.cpp's partition order: longer token texts first (ties: lower id; llama.cpp leaves
 * the order of equal lengths unspecified), then each token's occurrences left to right. */
static int match_rank(const void *pa, const void *pb) {
    const match *a = pa, *b = pb;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static int match_pos(const void *pa, const void *pb) {
    const match *a = pa, *b = pb;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static bool is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

enum { COV_TEXT = 0, COV_TOKEN = 1, COV_STRIPPED = 2 };

/* Find the special tokens of the text as llama.cpp's tokenizer_st_partition does: each
 * token in rank order claims its leftmost occurrences that still lie wholly in plain text.
 * On return *acc holds the claimed matches by position and cov marks every byte. */
static int partition(const tokenizer *t, const char *text, size_t len, bool parse_special,
                     const unsigned char *plain, match **acc, size_t *n_acc,
                     unsigned char **cov_out) {
    match *c = NULL;
    size_t nc = 0, cc = 0;
    *acc = NULL;
    *n_acc = 0;
    *cov_out = NULL;
    for (size_t i = 0; i < len; i++) {
        int32_t node = t->root_child[(unsigned char)text[i]];
        bool in_plain = plain && plain[i]; /* text[i..k) touches a plain byte */
        for (size_t k = i + 1; node; k++) {
            int32_t id = t->term[node];
            if (id >= 0 && ((parse_special && !in_plain) || t->type[id] == TOKTYPE_USER)) {
                if (nc == cc) {
                    size_t cap = cc ? 2 * cc : 64;
                    match *g = realloc(c, cap * sizeof *g);
                    if (!g) { free(c); return DUET_ERR_NOMEM; }
                    c = g;
                    cc = cap;
                }
                c[nc++] = (match){t->len[id], id, (uint32_t)i};
            }
            if (k >= len) break;
            in_plain = in_plain || (plain && plain[k]);
            node = trie_child(t, node, (unsigned char)text[k]);
        }
    }
    if (nc == 0) return DUET_OK;

    unsigned char *cov = calloc(len, 1);
    if (!cov) { free(c); return DUET_ERR_NOMEM; }
    qsort(c, nc, sizeof *c, match_rank);
    size_t na = 0;
    for (size_t j = 0; j < nc; j++) {
        size_t s = c[j].pos, end = s + c[j].len;
        bool free_run = true;
        for (size_t k = s; k < end && free_run; k++) free_run = cov[k] == COV_TEXT;
        if (!free_run) continue;
        memset(cov + s, COV_TOKEN, end - s);
        uint8_t a = t->attr[c[j].id];
        if (a & ATTR_RSTRIP)
            for (size_t k = end; k < len && cov[k] == COV_TEXT && is_space((uint8_t)text[k]); k++)
                cov[k] = COV_STRIPPED;
        if (a & ATTR_LSTRIP)
            for (size_t k = s; k > 0 && cov[k - 1] == COV_TEXT && is_space((uint8_t)text[k - 1]);
                 k--)
                cov[k - 1] = COV_STRIPPED;
        c[na++] = c[j]; /* na <= j: compacting in place is safe */
    }
    qsort(c, na, sizeof *c, match_pos);
    *acc = c;
    *n_acc = na;
    *cov_out = cov;
    return DUET_OK;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_bos,
                     bool parse_special, int32_t *out, int cap, duet_error *err) {
    return tokenizer_encode_masked(t, text, len, add_bos, parse_special, NULL, out, cap, err);
}

int tokenizer_encode_masked(const tokenizer *t, const char *text, size_t len, bool add_bos,
                            bool parse_special, const unsigned char *plain, int32_t *out,
                            int cap, duet_error *err) {
    if (!t || (!text && len > 0) || cap < 0 || (!out && cap > 0))
        return duet_fail(err, DUET_ERR_ARG, "tokenize: bad argument (text %s, len %zu, "
                         "cap %d)", text ? "set" : "NULL", len, cap);
    /* A byte yields at most 3 ids (a space escaped to U+2581, byte fallback), a fragment's
     * prefix space 3 more: this bound keeps the count and every offset inside int. */
    if (len > (size_t)INT_MAX / 8)
        return duet_fail(err, DUET_ERR_RANGE, "tokenize: text of %zu bytes is too long (at most "
                         "%d)", len, INT_MAX / 8);
    tok_emitter e = {out, cap, 0};
    bool bos = add_bos && t->add_bos && t->bos >= 0;
    if (bos) tok_emit(&e, t->bos);

    int rc = DUET_OK;
    match *acc = NULL;
    size_t n_acc = 0;
    unsigned char *cov = NULL;
    tok_work w = {0};
    if (len > 0) {
        if (partition(t, text, len, parse_special, plain, &acc, &n_acc, &cov)) {
            rc = duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory");
            goto done;
        }
        w.esc = malloc(3 * len + 3);
        if (!w.esc) {
            rc = duet_fail(err, DUET_ERR_NOMEM, "tokenize: out of memory");
            goto done;
        }
        bool prev_special = true; /* the text start counts as following a special token */
        size_t i = 0, next = 0;
        while (i < len) {
            if (next < n_acc && acc[next].pos == i) {
                tok_emit(&e, acc[next].id);
                i += acc[next].len;
                next++;
                prev_special = true;
                continue;
            }
            if (cov && cov[i] == COV_STRIPPED) { i++; continue; }
            size_t j = i + 1;
            while (j < len && (!cov || cov[j] == COV_TEXT)) j++;
            rc = t->ops->encode(t, &w, text + i, j - i, prev_special, &e, err);
            if (rc) goto done;
            prev_special = false;
            i = j;
        }
    }
    if (add_bos && t->add_eos && t->eos >= 0) tok_emit(&e, t->eos);
    rc = e.n;
done:
    free(acc);
    free(cov);
    free(w.esc);
    free(w.sym);
    free(w.heap);
    if (t->ops->work_free) t->ops->work_free(&w);
    return rc;
}

int tokenizer_bpe_split(const tokenizer *t, const char *text, size_t len, uint32_t *cuts,
                        int cap, duet_error *err) {
    if (!t || !t->ops->split || (!text && len > 0) || cap < 0 || (!cuts && cap > 0) ||
        len > (size_t)INT_MAX / 8)
        return duet_fail(err, DUET_ERR_ARG, "tokenizer_bpe_split: bad argument (%s)",
                         t && !t->ops->split ? "not a BPE vocabulary" : "NULL or too long");
    return t->ops->split(t, text, len, cuts, cap, err);
}

/* ---- decoding ---------------------------------------------------------------------------- */

int tokenizer_piece(const tokenizer *t, int32_t prev, int32_t tok, char *buf, int cap) {
    if (!t || cap < 0 || (!buf && cap > 0)) return DUET_ERR_ARG;
    if (tok < 0 || tok >= t->n_vocab) return DUET_ERR_RANGE;
    const char *s = tok_str(t, tok);
    size_t n = t->len[tok];
    char one;
    switch (t->type[tok]) {
    case TOKTYPE_NORMAL:
        return t->ops->piece(t, prev, tok, buf, cap);
    case TOKTYPE_BYTE:
        one = (char)parse_byte_token(s, n);
        s = &one;
        n = 1;
        break;
    case TOKTYPE_USER:
        break; /* verbatim: user-defined tokens are literal text */
    case TOKTYPE_UNKNOWN:
        /* a visible mark (U+2585) as llama.cpp rendered unknown tokens before mid-2024 */
        s = "\xe2\x96\x85";
        n = 3;
        break;
    default: /* control, unused, undefined */
        return 0;
    }
    if (n > 0 && cap > 0) memcpy(buf, s, DUET_MIN(n, (size_t)cap)); /* the prefix that fits */
    return (int)n;
}
