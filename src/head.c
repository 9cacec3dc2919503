/*
 * head.c: the deferral head, Co-LLM's switch: one vector u over the base model's final-norm
 * hidden state, s = u . h, P(defer) = sigmoid(s). Sidecar GGUF layout:
 *   general.type = "duet.head", general.architecture = "duet.head"
 *   duet.head.base.name (str), duet.head.base.n_embd (u32), duet.head.base.n_vocab (u32),
 *   duet.head.base.vocab_hash (u64), duet.head.threshold (f32, optional)
 *   tensor "head.u": f32 [n_embd]
 * The identity keys make loading a head against another base a clear error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"

struct duet_head {
    int n_embd;
    float *u;          /* [n_embd] */
    float threshold;   /* < 0: none */
    char base_name[128];
    int base_n_vocab;
    uint64_t vocab_hash;
};

static duet_head *head_alloc(const duet_model *base) {
    duet_head *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->n_embd = base->hp.n_embd;
    h->u = calloc((size_t)h->n_embd, sizeof(float));
    if (!h->u) { free(h); return NULL; }
    h->threshold = -1;
    snprintf(h->base_name, sizeof h->base_name, "%s", base->hp.name);
    h->base_n_vocab = base->hp.n_vocab;
    h->vocab_hash = duet_model_vocab_hash(base);
    return h;
}

int duet_head_init(const duet_model *base, duet_head **out, duet_error *err) {
    *out = NULL;
    if (base->vocab_only)
        return duet_fail(err, DUET_ERR_ARG, "%s: vocabulary-only model has no output matrix", base->path);
    duet_head *h = head_alloc(base);
    double *acc = calloc((size_t)base->hp.n_embd, sizeof(double));
    float *row = malloc((size_t)base->hp.n_embd * sizeof(float));
    if (!h || !acc || !row) {
        duet_head_free(h);
        free(acc);
        free(row);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    const mtensor *o = &base->output;
    size_t rs = dtype_row_size(o->type, o->n_in);
    for (int64_t r = 0; r < o->n_out; r++) {
        quant_dequantize_row(o->type, (const uint8_t *)o->data + (size_t)r * rs, row, o->n_in);
        for (int i = 0; i < h->n_embd; i++) acc[i] += row[i];
    }
    for (int i = 0; i < h->n_embd; i++) h->u[i] = (float)(acc[i] / (double)o->n_out);
    free(acc);
    free(row);
    *out = h;
    return DUET_OK;
}

int duet_head_from_vector(const duet_model *base, const float *u, int n, duet_head **out,
                          duet_error *err) {
    *out = NULL;
    if (n != base->hp.n_embd)
        return duet_fail(err, DUET_ERR_ARG, "head vector has %d elements, base n_embd is %d", n,
                         base->hp.n_embd);
    duet_head *h = head_alloc(base);
    if (!h) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    memcpy(h->u, u, (size_t)n * sizeof(float));
    *out = h;
    return DUET_OK;
}

int duet_head_load(const char *path, const duet_model *base, duet_head **out, duet_error *err) {
    *out = NULL;
    gguf_file *f = NULL;
    int rc = gguf_open(path, &f, err);
    if (rc) return rc;
    duet_head *h = NULL;
    gguf_str type = {0, NULL}, name = {0, NULL};
    uint32_t n_embd = 0, n_vocab = 0;
    int64_t hash = 0;
    float eta = -1;
    if ((rc = gguf_get_str(f, "general.type", &type, err))) goto done;
    if (type.len != 9 || memcmp(type.ptr, "duet.head", 9)) {
        char t[64];
        duet_printable(t, sizeof t, type.ptr, type.len);
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: general.type is '%s', not 'duet.head'", path, t);
        goto done;
    }
    const gguf_kv *hk = gguf_find(f, "duet.head.base.vocab_hash");
    if (!hk || hk->type != GGUF_TYPE_UINT64) {
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: duet.head.base.vocab_hash (u64) is missing", path);
        goto done;
    }
    hash = (int64_t)hk->v.u64;
    if ((rc = gguf_get_str(f, "duet.head.base.name", &name, err)) ||
        (rc = gguf_get_u32(f, "duet.head.base.n_embd", &n_embd, err)) ||
        (rc = gguf_get_u32(f, "duet.head.base.n_vocab", &n_vocab, err)) ||
        (rc = gguf_get_f32_opt(f, "duet.head.threshold", &eta, err)))
        goto done;
    char nm[128];
    duet_printable(nm, sizeof nm, name.ptr, name.len);
    if ((int)n_embd != base->hp.n_embd || (int)n_vocab != base->hp.n_vocab ||
        (uint64_t)hash != duet_model_vocab_hash(base) || strcmp(nm, base->hp.name) != 0) {
        rc = duet_fail(err, DUET_ERR_ARG,
                       "%s: head belongs to base '%s' (n_embd %u, n_vocab %u, vocab hash %016llx), "
                       "not to %s ('%s', n_embd %d, n_vocab %d, vocab hash %016llx)", path, nm,
                       n_embd, n_vocab, (unsigned long long)hash, base->path, base->hp.name,
                       base->hp.n_embd, base->hp.n_vocab,
                       (unsigned long long)duet_model_vocab_hash(base));
        goto done;
    }
    if (eta >= 0 && !(eta <= 1)) {
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: duet.head.threshold = %g is outside [0, 1]", path, eta);
        goto done;
    }
    const gguf_tensor *t = gguf_find_tensor(f, "head.u");
    if (!t || t->type != DT_F32 || t->n_dims != 1 || t->ne[0] != (int64_t)n_embd) {
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: tensor 'head.u' (f32 [%u]) is missing or has "
                       "another type or shape", path, n_embd);
        goto done;
    }
    if (!(h = head_alloc(base))) { rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); goto done; }
    memcpy(h->u, t->data, (size_t)n_embd * sizeof(float));
    for (uint32_t i = 0; i < n_embd; i++)
        if (!isfinite(h->u[i])) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: head.u[%u] = %g", path, i, h->u[i]);
            goto done;
        }
    h->threshold = eta;
done:
    gguf_close(f);
    if (rc) duet_head_free(h);
    else *out = h;
    return rc;
}

int duet_head_save(const duet_head *h, const char *path, duet_error *err) {
    gguf_writer *w = gguf_writer_new();
    if (!w) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    gguf_set_str(w, "general.architecture", "duet.head");
    gguf_set_str(w, "general.type", "duet.head");
    gguf_set_str(w, "duet.head.base.name", h->base_name);
    gguf_set_u32(w, "duet.head.base.n_embd", (uint32_t)h->n_embd);
    gguf_set_u32(w, "duet.head.base.n_vocab", (uint32_t)h->base_n_vocab);
    gguf_set_u64(w, "duet.head.base.vocab_hash", h->vocab_hash);
    if (h->threshold >= 0) gguf_set_f32(w, "duet.head.threshold", h->threshold);
    int64_t ne = h->n_embd;
    int rc = gguf_add_tensor(w, "head.u", DT_F32, 1, &ne, h->u, err);
    if (!rc) rc = gguf_write(w, path, err);
    gguf_writer_free(w);
    return rc;
}

void duet_head_free(duet_head *h) {
    if (!h) return;
    free(h->u);
    free(h);
}

int duet_head_n_embd(const duet_head *h) { return h->n_embd; }
const float *duet_head_u(const duet_head *h) { return h->u; }
float duet_head_threshold(const duet_head *h) { return h->threshold; }
void duet_head_set_threshold(duet_head *h, float eta) { h->threshold = eta; }

int duet_head_set_u(duet_head *h, const float *u, int n) {
    if (n != h->n_embd) return DUET_ERR_ARG;
    memcpy(h->u, u, (size_t)n * sizeof(float));
    return DUET_OK;
}

float duet_head_score(const duet_head *h, const float *hidden) {
    double s = 0; /* double: trained heads saturate, and the threshold is on this logit */
    for (int i = 0; i < h->n_embd; i++) s += (double)h->u[i] * hidden[i];
    return (float)s;
}
