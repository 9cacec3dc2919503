/*
 * head_import.c: the official Co-LLM checkpoints, as duet's base + head sidecar. Those
 * checkpoints keep the switch as an extra "<|defer|>" token at the end of the vocabulary (and
 * a "<pad>" row before it): the deferral logit is that row of the output matrix times the
 * final hidden state, and the base's own token is the argmax over the first n_vocab entries,
 * n_vocab being the expert's vocabulary size. Importing keeps exactly those rows in a clean
 * base (embedding, output, the tokenizer's per-token arrays) and puts the <|defer|> output row
 * in a head as u, so duet's collm policy takes the decisions the official decoder takes.
 */
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "engine/model.h"
#include "format/gguf.h"
#include "format/quant.h"

#define DEFER_TOKEN "<|defer|>"

static int is_token_array(const char *key) {
    return !strcmp(key, "tokenizer.ggml.tokens") || !strcmp(key, "tokenizer.ggml.scores") ||
           !strcmp(key, "tokenizer.ggml.token_type");
}

/* A metadata key whose value is a token id (tokenizer.ggml.*_token_id). */
static int is_token_id(const char *key) {
    size_t n = strlen(key);
    return !strncmp(key, "tokenizer.ggml.", 15) && n > 9 && !strcmp(key + n - 9, "_token_id");
}

/* Copy the metadata with the vocabulary cut to its first n tokens. */
static void copy_meta(gguf_writer *w, const gguf_file *f, int64_t n) {
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (!strcmp(kv->key, "general.alignment")) continue;
        if (is_token_id(kv->key) && kv->type != GGUF_TYPE_STRING && kv->type != GGUF_TYPE_ARRAY &&
            kv->v.u64 >= (uint64_t)n)
            continue; /* the <pad> / <|defer|> ids go with their rows */
        if (is_token_array(kv->key) && kv->type == GGUF_TYPE_ARRAY && kv->arr_n > (uint64_t)n) {
            gguf_kv cut = *kv;
            cut.arr_n = (uint64_t)n;
            gguf_set_kv_from(w, &cut);
            continue;
        }
        gguf_set_kv_from(w, kv);
    }
}

/* The first n rows of a [n_embd, V] matrix, or the whole tensor for any other. */
static int copy_tensor(gguf_writer *w, const gguf_tensor *t, int64_t V, int64_t n, duet_error *err) {
    if (t->n_dims == 2 && t->ne[1] == V &&
        (!strcmp(t->name, "token_embd.weight") || !strcmp(t->name, "output.weight"))) {
        int64_t ne[2] = {t->ne[0], n};
        return gguf_add_tensor(w, t->name, t->type, 2, ne, t->data, err);
    }
    return gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
}

/* Finds the <|defer|> id and checks the vocabulary against the expert's. */
static int find_defer(const gguf_file *f, const duet_model *expert, int64_t *defer, int64_t *V,
                      duet_error *err) {
    const gguf_kv *toks = NULL;
    int rc = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err);
    if (rc) return rc;
    int64_t n = duet_model_hparams(expert)->n_vocab;
    *V = (int64_t)toks->arr_n;
    *defer = -1;
    for (uint64_t i = 0; i < toks->arr_n; i++)
        if (toks->arr_str[i].len == strlen(DEFER_TOKEN) &&
            !memcmp(toks->arr_str[i].ptr, DEFER_TOKEN, strlen(DEFER_TOKEN)))
            *defer = (int64_t)i;
    if (*defer < 0)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: no '%s' token in tokenizer.ggml.tokens: not a "
                         "Co-LLM checkpoint", f->path, DEFER_TOKEN);
    if (*V <= n || *defer < n)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: a vocabulary of %lld tokens with '%s' at %lld; "
                         "the expert %s has %lld, so the checkpoint must have more and the switch "
                         "after them", f->path, (long long)*V, DEFER_TOKEN, (long long)*defer,
                         duet_model_path(expert), (long long)n);
    for (int64_t i = 0; i < n; i++) {
        const char *e = duet_token_text(expert, (int32_t)i);
        size_t el = e ? strlen(e) : 0;
        if (toks->arr_str[i].len != el || memcmp(toks->arr_str[i].ptr, e, el))
            return duet_fail(err, DUET_ERR_FORMAT, "%s: token %lld is '%.*s' but the expert's is "
                             "'%s': the vocabularies differ", f->path, (long long)i,
                             (int)DUET_MIN(toks->arr_str[i].len, 64), toks->arr_str[i].ptr, e ? e : "");
    }
    return DUET_OK;
}

int duet_head_import(const char *ckpt_path, const duet_model *expert, const char *base_out,
                     const char *head_out, duet_error *err) {
    gguf_file *f = NULL;
    gguf_writer *w = NULL;
    duet_model *b = NULL;
    duet_head *h = NULL;
    float *u = NULL;
    int64_t defer = -1, V = 0, n = duet_model_hparams(expert)->n_vocab;
    int rc = gguf_open(ckpt_path, &f, err);
    if (!rc) rc = find_defer(f, expert, &defer, &V, err);
    const gguf_tensor *out = NULL;
    if (!rc) {
        out = gguf_find_tensor(f, "output.weight");
        if (!out) out = gguf_find_tensor(f, "token_embd.weight"); /* tied */
        if (!out || out->n_dims != 2 || out->ne[1] != V)
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no output matrix with %lld rows", ckpt_path,
                           (long long)V);
    }
    if (!rc && !(w = gguf_writer_new())) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) copy_meta(w, f, n);
    for (uint64_t i = 0; !rc && i < f->n_tensors; i++) rc = copy_tensor(w, &f->tensors[i], V, n, err);
    if (!rc) rc = gguf_write(w, base_out, err);
    /* the head names the clean base: its identity is read back from the file written */
    duet_model_params vp = {.vocab_only = 1};
    if (!rc) rc = duet_model_load(base_out, &vp, &b, err);
    if (!rc && !(u = malloc((size_t)out->ne[0] * sizeof *u)))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) {
        size_t row = dtype_row_size(out->type, out->ne[0]);
        quant_dequantize_row(out->type, (const uint8_t *)out->data + (size_t)defer * row, u, out->ne[0]);
        const duet_hparams *hp = duet_model_hparams(b);
        rc = duet_head_new(hp->name, (int)out->ne[0], hp->n_vocab, duet_model_vocab_hash(b), &h, err);
    }
    if (!rc && duet_head_set_u(h, u, (int)out->ne[0]))
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: the output rows have %lld elements, the base's "
                       "n_embd differs", ckpt_path, (long long)out->ne[0]);
    if (!rc) rc = duet_head_save(h, head_out, err);
    free(u);
    duet_head_free(h);
    duet_model_free(b);
    gguf_writer_free(w);
    gguf_close(f);
    return rc;
}
