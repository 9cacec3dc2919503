/*
 * convert.c: import llama2.c checkpoints (legacy "version 0" layout) into GGUF.
 * Checkpoint: 7 x int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
 * seq_len; a negative vocab_size means a separate classifier follows), then f32 arrays
 * tok_emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis (skipped),
 * [wcls]. Matrices are [out][in] row-major, which is GGUF's layout (ne0 = in), and q/k use
 * consecutive-pair rotary order, as llama GGUF files do, so no permutation is needed.
 * The vocabulary comes from a llama2.c tokenizer .bin or a sentencepiece .vocab file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "format/gguf.h"
#include "format/quant.h"
#include "format/convert.h"

#define MAX_VOCAB (1 << 22)
#define MAX_PIECE 4096

typedef struct vocab {
    int n;
    char **text;
    float *score;
    int32_t *type;
} vocab;

static void vocab_free(vocab *v) {
    for (int i = 0; i < v->n; i++) free(v->text[i]);
    free(v->text);
    free(v->score);
    free(v->type);
    memset(v, 0, sizeof *v);
}

static int vocab_reserve(vocab *v, int n, duet_error *err) {
    v->text = calloc((size_t)n, sizeof(char *));
    v->score = calloc((size_t)n, sizeof(float));
    v->type = calloc((size_t)n, sizeof(int32_t));
    if (!v->text || !v->score || !v->type) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return DUET_OK;
}

/* Classify a piece the way llama.cpp's converters do. */
static int32_t piece_type(const char *s) {
    if (!strcmp(s, "<unk>")) return TOKTYPE_UNKNOWN;
    if (!strcmp(s, "<s>") || !strcmp(s, "</s>")) return TOKTYPE_CONTROL;
    unsigned b;
    char tail;
    if (strlen(s) == 6 && sscanf(s, "<0x%2X%c", &b, &tail) == 2 && tail == '>')
        return TOKTYPE_BYTE;
    return TOKTYPE_NORMAL;
}

/* Append text with ' ' replaced by U+2581 (SentencePiece's visible space). */
static char *escape_spaces(const char *s, size_t n) {
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
    char *o = malloc(n + 2 * spaces + 1), *p = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(p, "\xe2\x96\x81", 3); p += 3; }
        else *p++ = s[i];
    }
    *p = 0;
    return o;
}

static int read_tokenizer_bin(const char *path, int n_vocab, vocab *v, duet_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return duet_fail(err, DUET_ERR_IO, "%s: %s", path, strerror(errno));
    int rc = vocab_reserve(v, n_vocab, err);
    int32_t max_len;
    if (!rc && fread(&max_len, 4, 1, f) != 1)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: truncated header (max_token_length)", path);
    char buf[MAX_PIECE + 1];
    for (int i = 0; !rc && i < n_vocab; i++) {
        int32_t len;
        if (fread(&v->score[i], 4, 1, f) != 1 || fread(&len, 4, 1, f) != 1) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: truncated at token %d of %d (the "
                           "checkpoint's vocab_size)", path, i, n_vocab);
            break;
        }
        if (len < 0 || len > MAX_PIECE) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: token %d: length %d is out of range",
                           path, i, len);
            break;
        }
        if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: token %d: text truncated", path, i);
            break;
        }
        buf[len] = 0;
        /* llama2.c's exporter wraps BOS/EOS in newlines */
        const char *t = buf;
        if (!strcmp(buf, "\n<s>\n")) t = "<s>";
        else if (!strcmp(buf, "\n</s>\n")) t = "</s>";
        v->text[i] = escape_spaces(t, strlen(t));
        v->n = i + 1;
        if (!v->text[i]) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        else v->type[i] = piece_type(v->text[i]);
    }
    fclose(f);
    return rc;
}

static int read_sp_vocab(const char *path, int byte_tokens, vocab *v, duet_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return duet_fail(err, DUET_ERR_IO, "%s: %s", path, strerror(errno));
    int cap = 0, rc = DUET_OK, line = 0;
    char buf[MAX_PIECE + 64];
    while (!rc && fgets(buf, sizeof buf, f)) {
        line++;
        size_t n = strlen(buf);
        if (n && buf[n - 1] == '\n') buf[--n] = 0;
        char *tab = strchr(buf, '\t');
        if (!tab) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s:%d: expected 'piece<TAB>score'", path, line);
            break;
        }
        *tab = 0;
        char *end;
        float score = strtof(tab + 1, &end);
        if (end == tab + 1) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s:%d: score '%.32s' is not a number", path,
                           line, tab + 1);
            break;
        }
        int extra = (byte_tokens && v->n == 3) ? 256 : 0; /* bytes go after the 3 specials */
        if (v->n + extra + 1 > cap) {
            int nc = (cap ? cap * 2 : 512) + extra;
            if (nc > MAX_VOCAB) { rc = duet_fail(err, DUET_ERR_FORMAT, "%s: too many pieces", path); break; }
            char **t = realloc(v->text, (size_t)nc * sizeof *t);
            if (t) v->text = t;
            float *s = realloc(v->score, (size_t)nc * sizeof *s);
            if (s) v->score = s;
            int32_t *ty = realloc(v->type, (size_t)nc * sizeof *ty);
            if (ty) v->type = ty;
            if (!t || !s || !ty) { rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
            cap = nc;
        }
        for (int b = 0; b < extra; b++) {
            char bt[8];
            snprintf(bt, sizeof bt, "<0x%02X>", b);
            v->text[v->n] = strdup(bt);
            v->score[v->n] = 0;
            v->type[v->n] = TOKTYPE_BYTE;
            if (!v->text[v->n++]) { rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
        }
        if (rc) break;
        v->text[v->n] = strdup(buf);
        v->score[v->n] = score;
        v->type[v->n] = piece_type(buf);
        if (!v->text[v->n++]) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    fclose(f);
    if (!rc && v->n < 3)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: %d pieces; expected <unk>, <s>, </s> first",
                       path, v->n);
    return rc;
}

static int32_t find_piece(const vocab *v, const char *s, int32_t fallback) {
    for (int i = 0; i < v->n; i++)
        if (!strcmp(v->text[i], s)) return i;
    return fallback;
}

static void set_tokenizer_kv(gguf_writer *w, const vocab *v) {
    gguf_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->text, NULL, (uint64_t)v->n);
    gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v->score, (uint64_t)v->n);
    gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v->type, (uint64_t)v->n);
    gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)find_piece(v, "<s>", 1));
    gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)find_piece(v, "</s>", 2));
    gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)find_piece(v, "<unk>", 0));
    gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true);
    gguf_set_bool(w, "tokenizer.ggml.add_eos_token", false);
    gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", true);
}

/* Shared by convert and make-model: the llama hyperparameter keys. */
void convert_set_hparams(gguf_writer *w, const char *arch, const char *name, int n_ctx,
                         int n_embd, int n_layer, int n_ff, int n_head, int n_head_kv,
                         int file_type) {
    char k[96];
#define KEY(suffix) (snprintf(k, sizeof k, "%s." suffix, arch), k)
    gguf_set_str(w, "general.architecture", arch);
    gguf_set_str(w, "general.name", name);
    gguf_set_u32(w, "general.file_type", (uint32_t)file_type);
    gguf_set_u32(w, KEY("context_length"), (uint32_t)n_ctx);
    gguf_set_u32(w, KEY("embedding_length"), (uint32_t)n_embd);
    gguf_set_u32(w, KEY("block_count"), (uint32_t)n_layer);
    gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)n_ff);
    gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)n_head);
    gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)n_head_kv);
    gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)(n_embd / n_head));
    gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    gguf_set_f32(w, KEY("rope.freq_base"), 10000.0f);
#undef KEY
}

static int add_f32(gguf_writer *w, const char *name, const float *data, int64_t n_in,
                   int64_t n_out, duet_error *err) {
    int64_t ne[2] = {n_in, n_out};
    return gguf_add_tensor(w, name, DT_F32, n_out > 1 ? 2 : 1, ne, data, err);
}

int duet_convert_llama2c(const duet_convert_params *p, const char *out_path, duet_error *err) {
    if (!p->checkpoint || (!p->tokenizer == !p->vocab))
        return duet_fail(err, DUET_ERR_ARG, "convert: need a checkpoint and exactly one of "
                         "a tokenizer .bin or a .vocab file");
    FILE *f = fopen(p->checkpoint, "rb");
    if (!f) return duet_fail(err, DUET_ERR_IO, "%s: %s", p->checkpoint, strerror(errno));
    int32_t h[7];
    if (fread(h, 4, 7, f) != 7) {
        fclose(f);
        return duet_fail(err, DUET_ERR_FORMAT, "%s: truncated header (need 28 bytes)",
                         p->checkpoint);
    }
    fseek(f, 0, SEEK_END);
    long fsize = ftell(f);
    int dim = h[0], hidden = h[1], n_layer = h[2], n_head = h[3], n_kv = h[4];
    int shared = h[5] > 0, n_vocab = h[5] > 0 ? h[5] : -h[5], seq = h[6];
    static const char *field[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                   "vocab_size", "seq_len"};
    for (int i = 0; i < 7; i++) {
        int v = i == 5 ? n_vocab : h[i];
        if (v <= 0 || v > (1 << 24)) {
            fclose(f);
            return duet_fail(err, DUET_ERR_FORMAT, "%s: header %s = %d is out of range",
                             p->checkpoint, field[i], h[i]);
        }
    }
    if (dim % n_head || n_head % n_kv || (dim / n_head) % 2) {
        fclose(f);
        return duet_fail(err, DUET_ERR_FORMAT, "%s: dim %d, n_heads %d, n_kv_heads %d are "
                         "inconsistent", p->checkpoint, dim, n_head, n_kv);
    }
    int hs = dim / n_head, kv_dim = n_kv * hs;
    uint64_t L = (uint64_t)n_layer, D = (uint64_t)dim, Hd = (uint64_t)hidden, n_floats = 0;
    /* Each field may be up to 2^24, so the tensor sizes can exceed 64 bits: sum them with
     * checked arithmetic, or a wrapped total could match a tiny file and the tensors below
     * would be read far past the buffer. */
    const uint64_t terms[][3] = {{(uint64_t)n_vocab, D, 1}, {L, D, 1}, {L, D, D},
                                 {2 * L, D, (uint64_t)kv_dim}, {L, D, D}, {L, D, 1},
                                 {3 * L, D, Hd}, {D, 1, 1}, {(uint64_t)seq, (uint64_t)hs, 1},
                                 {shared ? 0 : (uint64_t)n_vocab, D, 1}};
    int fits = 1;
    for (size_t i = 0; i < sizeof terms / sizeof *terms; i++) {
        uint64_t t;
        fits = fits && duet_mul_ok(terms[i][0], terms[i][1], &t) &&
               duet_mul_ok(t, terms[i][2], &t) && duet_add_ok(n_floats, t, &n_floats);
    }
    if (!fits || n_floats > ((uint64_t)SIZE_MAX - 28) / 4 || n_floats > (uint64_t)INT64_MAX / 4) {
        fclose(f);
        return duet_fail(err, DUET_ERR_FORMAT, "%s: the header (dim %d, hidden %d, layers %d, "
                         "heads %d/%d, vocab %d, seq %d) implies more than 2^64 bytes of tensors",
                         p->checkpoint, dim, hidden, n_layer, n_head, n_kv, h[5], seq);
    }
    if ((uint64_t)fsize != 28 + 4 * n_floats) {
        fclose(f);
        return duet_fail(err, DUET_ERR_FORMAT, "%s: size %ld bytes, but the header (dim %d, "
                         "hidden %d, layers %d, heads %d/%d, vocab %d, seq %d) implies %llu",
                         p->checkpoint, fsize, dim, hidden, n_layer, n_head, n_kv, h[5], seq,
                         (unsigned long long)(28 + 4 * n_floats));
    }
    float *w = malloc(n_floats * sizeof(float));
    if (!w) { fclose(f); return duet_fail(err, DUET_ERR_NOMEM, "out of memory"); }
    fseek(f, 28, SEEK_SET);
    size_t got = fread(w, sizeof(float), n_floats, f);
    fclose(f);
    if (got != n_floats) {
        free(w);
        return duet_fail(err, DUET_ERR_IO, "%s: short read", p->checkpoint);
    }

    vocab v = {0};
    int rc = p->tokenizer ? read_tokenizer_bin(p->tokenizer, n_vocab, &v, err)
                          : read_sp_vocab(p->vocab, p->byte_tokens, &v, err);
    if (!rc && v.n != n_vocab)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: %d tokens, but the checkpoint %s has "
                       "vocab_size %d", p->tokenizer ? p->tokenizer : p->vocab, v.n,
                       p->checkpoint, n_vocab);
    gguf_writer *gw = rc ? NULL : gguf_writer_new();
    if (!rc && !gw) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) {
        const char *name = p->name;
        if (!name) {
            name = strrchr(p->checkpoint, '/');
            name = name ? name + 1 : p->checkpoint;
        }
        convert_set_hparams(gw, "llama", name, seq, dim, n_layer, hidden, n_head, n_kv, 0);
        set_tokenizer_kv(gw, &v);
        const float *tok_emb = w, *rms_att = tok_emb + (uint64_t)n_vocab * D;
        const float *wq = rms_att + L * D, *wk = wq + L * D * D, *wv = wk + L * D * kv_dim;
        const float *wo = wv + L * D * kv_dim, *rms_ffn = wo + L * D * D;
        const float *w1 = rms_ffn + L * D, *w2 = w1 + L * D * Hd, *w3 = w2 + L * Hd * D;
        const float *rms_final = w3 + L * D * Hd;
        const float *wcls = shared ? NULL : rms_final + D + (uint64_t)seq * hs;
        rc = add_f32(gw, "token_embd.weight", tok_emb, dim, n_vocab, err);
        if (!rc) rc = add_f32(gw, "output_norm.weight", rms_final, dim, 1, err);
        if (!rc && wcls) rc = add_f32(gw, "output.weight", wcls, dim, n_vocab, err);
        for (uint64_t l = 0; !rc && l < L; l++) {
            char n[64];
#define T(suffix, ptr, nin, nout)                                                        \
    if (!rc) {                                                                           \
        snprintf(n, sizeof n, "blk.%d.%s.weight", (int)l, suffix);                       \
        rc = add_f32(gw, n, (ptr) + l * (uint64_t)(nin) * (uint64_t)(nout), nin, nout, err); \
    }
            T("attn_norm", rms_att, dim, 1)
            T("attn_q", wq, dim, dim)
            T("attn_k", wk, dim, kv_dim)
            T("attn_v", wv, dim, kv_dim)
            T("attn_output", wo, dim, dim)
            T("ffn_norm", rms_ffn, dim, 1)
            T("ffn_gate", w1, dim, hidden)
            T("ffn_down", w2, hidden, dim)
            T("ffn_up", w3, dim, hidden)
#undef T
        }
        if (!rc) rc = gguf_write(gw, out_path, err);
    }
    gguf_writer_free(gw);
    vocab_free(&v);
    free(w);
    return rc;
}
