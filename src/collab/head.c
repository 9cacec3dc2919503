/*
 * head.c: the deferral head, Co-LLM's switch: one vector u over the base model's final-norm
 * hidden state, s = u . h, P(defer) = sigmoid(s). Sidecar GGUF layout:
 *   general.type = "duet.head", general.architecture = "duet.head"
 *   duet.head.base.name (str), duet.head.base.n_embd (u32), duet.head.base.n_vocab (u32),
 *   duet.head.base.vocab_hash (u64), duet.head.threshold (f32, optional)
 *   tensor "head.u": f32 [n_embd]
 * Heads with confidence features (trained by `duet head train --features ...`) add:
 *   duet.head.features (str): the inputs, comma-separated, from "hidden", "entropy",
 *     "maxlogp" (absent: "hidden", the paper's head)
 *   duet.head.bias (f32, optional, default 0)
 *   tensor "head.w": f32 [number of features other than hidden], in the order listed
 *   s = u . h (if hidden is listed; u is stored, zero, otherwise) + sum_k w_k f_k + bias
 * The identity keys make loading a head against another base a clear error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "format/gguf.h"
#include "engine/model.h"
#include "format/quant.h"

struct duet_head {
    int n_embd;
    float *u;          /* [n_embd] */
    int features;      /* DUET_HEAD_FEAT_* */
    float w[2];        /* entropy, maxlogp weights (0 when unused) */
    float bias;
    float threshold;   /* < 0: none */
    char base_name[128];
    int base_n_vocab;
    uint64_t vocab_hash;
};

static duet_head *head_alloc_id(const char *name, int n_embd, int n_vocab, uint64_t hash) {
    duet_head *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->n_embd = n_embd;
    h->u = calloc((size_t)h->n_embd, sizeof(float));
    if (!h->u) { free(h); return NULL; }
    h->features = DUET_HEAD_FEAT_HIDDEN;
    h->threshold = -1;
    snprintf(h->base_name, sizeof h->base_name, "%s", name);
    h->base_n_vocab = n_vocab;
    h->vocab_hash = hash;
    return h;
}

static duet_head *head_alloc(const duet_model *base) {
    return head_alloc_id(base->hp.name, base->hp.n_embd, base->hp.n_vocab,
                         duet_model_vocab_hash(base));
}

int duet_head_new(const char *base_name, int n_embd, int n_vocab, uint64_t vocab_hash,
                  duet_head **out, duet_error *err) {
    *out = NULL;
    if (n_embd <= 0 || n_embd > (1 << 20) || n_vocab <= 0)
        return duet_fail(err, DUET_ERR_ARG, "head for n_embd %d, n_vocab %d: out of range", n_embd,
                         n_vocab);
    if (!(*out = head_alloc_id(base_name ? base_name : "", n_embd, n_vocab, vocab_hash)))
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return DUET_OK;
}

/* ---- features --------------------------------------------------------------------------- */
static const char *k_feat_names[3] = {"hidden", "entropy", "maxlogp"};

int duet_head_features_parse(const char *s, int *mask, duet_error *err) {
    int m = 0;
    *mask = 0;
    for (const char *p = s; p && *p;) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (strlen(k_feat_names[i]) == n && !memcmp(p, k_feat_names[i], n)) k = i;
        if (k < 0 || (m & (1 << k))) {
            char t[64];
            duet_printable(t, sizeof t, p, n);
            return duet_fail(err, DUET_ERR_ARG, "head feature '%s' is %s (features: hidden, "
                             "entropy, maxlogp)", t, k < 0 ? "unknown" : "listed twice");
        }
        m |= 1 << k;
        p = c ? c + 1 : NULL;
    }
    if (!m) return duet_fail(err, DUET_ERR_ARG, "empty head feature list");
    *mask = m;
    return DUET_OK;
}

void duet_head_features_string(int mask, char *buf, size_t cap) {
    size_t o = 0;
    if (cap) buf[0] = 0;
    for (int i = 0; i < 3; i++)
        if (mask & (1 << i)) {
            int w = snprintf(buf + o, o < cap ? cap - o : 0, "%s%s", o ? "," : "", k_feat_names[i]);
            o += w > 0 ? (size_t)w : 0;
        }
}

int duet_head_features(const duet_head *h) { return h->features; }

int duet_head_set_features(duet_head *h, int mask, const float w[2], float bias) {
    if (mask <= 0 || mask > 7) return DUET_ERR_ARG;
    float w0 = w && (mask & DUET_HEAD_FEAT_ENTROPY) ? w[0] : 0;
    float w1 = w && (mask & DUET_HEAD_FEAT_MAXLOGP) ? w[1] : 0;
    if (!isfinite(w0) || !isfinite(w1) || !isfinite(bias)) return DUET_ERR_ARG;
    h->features = mask;
    h->w[0] = w0;
    h->w[1] = w1;
    h->bias = bias;
    if (!(mask & DUET_HEAD_FEAT_HIDDEN)) memset(h->u, 0, (size_t)h->n_embd * sizeof(float));
    return DUET_OK;
}

void duet_head_get_features(const duet_head *h, float w[2], float *bias) {
    if (w) {
        w[0] = h->w[0];
        w[1] = h->w[1];
    }
    if (bias) *bias = h->bias;
}

float duet_head_score_ex(const duet_head *h, const float *hidden, float entropy, float max_logp) {
    double s = h->bias;
    if ((h->features & DUET_HEAD_FEAT_HIDDEN) && hidden)
        for (int i = 0; i < h->n_embd; i++) s += (double)h->u[i] * hidden[i];
    if (h->features & DUET_HEAD_FEAT_ENTROPY) s += (double)h->w[0] * entropy;
    if (h->features & DUET_HEAD_FEAT_MAXLOGP) s += (double)h->w[1] * max_logp;
    return (float)s;
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
    for (int64_t r = 0; r < o->n_out; r++) {
        quant_dequantize_matrix_row(o->type, o->data, o->n_in, r, row);
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

/* duet.head.features, duet.head.bias and head.w (all optional: a hidden-only head). */
static int load_features(const gguf_file *f, const char *path, duet_head *h, duet_error *err) {
    gguf_str fs = {0, NULL};
    float bias = 0;
    int rc;
    if ((rc = gguf_get_str_opt(f, "duet.head.features", &fs, err)) ||
        (rc = gguf_get_f32_opt(f, "duet.head.bias", &bias, err)))
        return rc;
    if (!isfinite(bias))
        return duet_fail(err, DUET_ERR_FORMAT, "%s: duet.head.bias = %g", path, bias);
    int mask = DUET_HEAD_FEAT_HIDDEN;
    if (fs.ptr) {
        char buf[128];
        if (fs.len >= sizeof buf || memchr(fs.ptr, 0, fs.len))
            return duet_fail(err, DUET_ERR_FORMAT, "%s: duet.head.features is not a short feature "
                             "list", path);
        memcpy(buf, fs.ptr, fs.len);
        buf[fs.len] = 0;
        if ((rc = duet_head_features_parse(buf, &mask, err))) {
            char m[512];
            snprintf(m, sizeof m, "%s", err ? err->msg : "");
            return duet_fail(err, DUET_ERR_FORMAT, "%s: duet.head.features: %s", path, m);
        }
    }
    int n_extra = !!(mask & DUET_HEAD_FEAT_ENTROPY) + !!(mask & DUET_HEAD_FEAT_MAXLOGP);
    float w[2] = {0, 0};
    const gguf_tensor *t = gguf_find_tensor(f, "head.w");
    if (n_extra) {
        if (!t || t->type != DT_F32 || t->n_dims != 1 || t->ne[0] != n_extra)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor 'head.w' (f32 [%d], one weight per "
                             "feature besides hidden) is missing or has another type or shape",
                             path, n_extra);
        float v[2];
        memcpy(v, t->data, (size_t)n_extra * sizeof(float));
        int k = 0;
        if (mask & DUET_HEAD_FEAT_ENTROPY) w[0] = v[k++];
        if (mask & DUET_HEAD_FEAT_MAXLOGP) w[1] = v[k++];
        for (int i = 0; i < n_extra; i++)
            if (!isfinite(v[i]))
                return duet_fail(err, DUET_ERR_FORMAT, "%s: head.w[%d] = %g", path, i, v[i]);
    } else if (t) {
        return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor 'head.w' is present but "
                         "duet.head.features lists no feature besides hidden", path);
    }
    h->features = mask;
    h->w[0] = w[0];
    h->w[1] = w[1];
    h->bias = bias;
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
    if ((rc = load_features(f, path, h, err))) goto done;
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
    float wv[2];
    int64_t n_extra = 0;
    if (h->features != DUET_HEAD_FEAT_HIDDEN) {
        char fs[64];
        duet_head_features_string(h->features, fs, sizeof fs);
        gguf_set_str(w, "duet.head.features", fs);
        if (h->features & DUET_HEAD_FEAT_ENTROPY) wv[n_extra++] = h->w[0];
        if (h->features & DUET_HEAD_FEAT_MAXLOGP) wv[n_extra++] = h->w[1];
    }
    if (h->bias != 0) gguf_set_f32(w, "duet.head.bias", h->bias);
    int64_t ne = h->n_embd;
    int rc = gguf_add_tensor(w, "head.u", DT_F32, 1, &ne, h->u, err);
    if (!rc && n_extra) rc = gguf_add_tensor(w, "head.w", DT_F32, 1, &n_extra, wv, err);
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
    double s = h->bias; /* double: trained heads saturate, and the threshold is on this logit */
    for (int i = 0; i < h->n_embd; i++) s += (double)h->u[i] * hidden[i];
    return (float)s;
}
