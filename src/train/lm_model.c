/*
 * lm_model.c: the trainer's float model (see lm.h): the parameter layout, loading any llama
 * GGUF as F32, writing F32 GGUF checkpoints with the source's metadata, the forward/backward
 * of lm_impl.h compiled for float, AdamW, the learning-rate schedule, the optimizer sidecar.
 */
#define LM_R float
#define LM_T(name) lm_##name
#define LM_FROZEN_KERNELS 1 /* a frozen base's products are the engine's (lm_impl.h) */
#include "train/lm_impl.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#include "base/atomic_file.h"
#include "format/gguf.h"
#include "engine/model.h"
#include "format/quant.h"

/* ---- layout ------------------------------------------------------------------------------ */
static void add_t(lm_layout *L, const char *name, int64_t n_in, int64_t n_out, size_t *off) {
    lm_tensor *t = &L->t[L->n_t++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_in = n_in;
    t->n_out = n_out;
    t->off = *off;
    t->decay = n_out > 1;
    *off += (size_t)(n_in * n_out);
}

int lm_layout_init(lm_layout *L, const lm_config *c, duet_error *err) {
    memset(L, 0, sizeof *L);
    if (c->n_embd <= 0 || c->n_layer <= 0 || c->n_head <= 0 || c->n_head_kv <= 0 ||
        c->n_head % c->n_head_kv || c->head_dim * c->n_head != c->n_embd || c->head_dim % 2 ||
        c->head_dim / 2 > 256 || c->n_ff <= 0 || c->n_vocab <= 0)
        return duet_fail(err, DUET_ERR_ARG, "trainer: unsupported shape (n_embd %d, n_layer %d, "
                         "n_head %d, n_head_kv %d, head_dim %d, n_ff %d)", c->n_embd, c->n_layer,
                         c->n_head, c->n_head_kv, c->head_dim, c->n_ff);
    L->layer = calloc((size_t)c->n_layer, sizeof *L->layer);
    L->t = calloc((size_t)(3 + 9 * c->n_layer), sizeof *L->t);
    if (!L->layer || !L->t) {
        lm_layout_free(L);
        return duet_fail(err, DUET_ERR_NOMEM, "trainer: out of memory");
    }
    int64_t E = c->n_embd, Q = (int64_t)c->n_head * c->head_dim,
            KV = (int64_t)c->n_head_kv * c->head_dim, F = c->n_ff, V = c->n_vocab;
    size_t off = 0;
    L->tok_embd = off;
    add_t(L, "token_embd.weight", E, V, &off);
    L->output_norm = off;
    add_t(L, "output_norm.weight", E, 1, &off);
    L->output = L->tok_embd;
    if (!c->tied) {
        L->output = off;
        add_t(L, "output.weight", E, V, &off);
    }
    for (int l = 0; l < c->n_layer; l++) {
        lm_layer_off *o = &L->layer[l];
        char n[48];
#define T_(field, suffix, nin, nout) \
    snprintf(n, sizeof n, "blk.%d." suffix ".weight", l); o->field = off; add_t(L, n, nin, nout, &off);
        T_(attn_norm, "attn_norm", E, 1)
        T_(wq, "attn_q", E, Q)
        T_(wk, "attn_k", E, KV)
        T_(wv, "attn_v", E, KV)
        T_(wo, "attn_output", Q, E)
        T_(ffn_norm, "ffn_norm", E, 1)
        T_(w_gate, "ffn_gate", E, F)
        T_(w_up, "ffn_up", E, F)
        T_(w_down, "ffn_down", F, E)
#undef T_
    }
    L->n_params = off;
    return DUET_OK;
}

void lm_layout_free(lm_layout *L) {
    free(L->layer);
    free(L->t);
    memset(L, 0, sizeof *L);
}

/* ---- loading and saving ------------------------------------------------------------------ */
static void copy_mtensor(float *dst, const mtensor *t) {
    for (int64_t o = 0; o < t->n_out; o++)
        quant_dequantize_matrix_row(t->type, t->data, t->n_in, o, dst + (size_t)o * t->n_in);
}

int lm_config_init(lm_config *c, const duet_model *s, duet_error *err) {
    const duet_hparams *hp = &s->hp;
    memset(c, 0, sizeof *c);
    c->n_vocab = hp->n_vocab;
    c->n_embd = hp->n_embd;
    c->n_layer = hp->n_layer;
    c->n_head = hp->n_head;
    c->n_head_kv = hp->n_head_kv;
    c->n_ff = hp->n_ff;
    c->head_dim = hp->head_dim;
    c->tied = hp->tied_output;
    c->rms_eps = hp->rms_eps;
    if (hp->head_dim / 2 > 256)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: head_dim %d is too large for the "
                         "trainer (at most 512)", s->path, hp->head_dim);
    memcpy(c->inv_freq, s->rope_inv_freq, (size_t)hp->head_dim / 2 * sizeof(float));
    c->rope_neox = s->ap.rope_neox;
    return DUET_OK;
}

int lm_model_load(const char *path, int n_threads, lm_model *m, duet_error *err) {
    memset(m, 0, sizeof *m);
    duet_model_params mp = {.n_threads = n_threads, .use_mmap = 1};
    int rc = duet_model_load(path, &mp, &m->src, err);
    if (rc) return rc;
    const duet_model *s = m->src;
    lm_config *c = &m->c;
    if (strcmp(s->hp.arch, "llama")) /* its layout has no biases or q/k norms */
        rc = duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: architecture %s: training every weight "
                       "is supported for llama (LoRA: llama, qwen2, qwen3)", path, s->hp.arch);
    if (rc || (rc = lm_config_init(c, s, err)) || (rc = lm_layout_init(&m->L, c, err))) {
        lm_model_free(m);
        return rc;
    }
    m->w = duet_aalloc(m->L.n_params * sizeof(float));
    m->g = duet_aalloc(m->L.n_params * sizeof(float));
    if (!m->w || !m->g) {
        lm_model_free(m);
        return duet_fail(err, DUET_ERR_NOMEM, "%s: cannot allocate %zu parameters", path,
                         m->L.n_params);
    }
    m->tp = s->tp;
    m->n_threads = tp_n_threads(s->tp);
    float *w = m->w;
    copy_mtensor(w + m->L.tok_embd, &s->tok_embd);
    memcpy(w + m->L.output_norm, s->output_norm, (size_t)c->n_embd * sizeof(float));
    if (!c->tied) copy_mtensor(w + m->L.output, &s->output);
    for (int l = 0; l < c->n_layer; l++) {
        const layer_weights *lw = &s->layers[l];
        const lm_layer_off *o = &m->L.layer[l];
        memcpy(w + o->attn_norm, lw->attn_norm, (size_t)c->n_embd * sizeof(float));
        memcpy(w + o->ffn_norm, lw->ffn_norm, (size_t)c->n_embd * sizeof(float));
        copy_mtensor(w + o->wq, &lw->wq);
        copy_mtensor(w + o->wk, &lw->wk);
        copy_mtensor(w + o->wv, &lw->wv);
        copy_mtensor(w + o->wo, &lw->wo);
        copy_mtensor(w + o->w_gate, &lw->w_gate);
        copy_mtensor(w + o->w_up, &lw->w_up);
        copy_mtensor(w + o->w_down, &lw->w_down);
    }
    return DUET_OK;
}

void lm_model_free(lm_model *m) {
    if (!m) return;
    if (m->lora) lm_lora_free(m->lora);
    free(m->lora);
    if (m->fz) lm_frozen_free(m->fz);
    free(m->fz);
    duet_afree(m->w);
    duet_afree(m->g);
    duet_afree(m->u);
    duet_afree(m->gu);
    lm_layout_free(&m->L);
    duet_model_free(m->src);
    memset(m, 0, sizeof *m);
}

int duet_lm_load(const char *path, int n_threads, duet_lm **out, duet_error *err) {
    *out = NULL;
    lm_model *m = calloc(1, sizeof *m);
    if (!m) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", path);
    int rc = lm_model_load(path, n_threads, m, err);
    if (rc) {
        duet_lm_free(m);
        return rc;
    }
    *out = m;
    return DUET_OK;
}

void duet_lm_free(duet_lm *m) {
    lm_model_free(m);
    free(m);
}

const duet_model *duet_lm_source(const duet_lm *m) { return m->src; }

/* Copy one metadata entry of the source file into the writer. */
static void copy_kv(gguf_writer *w, const gguf_kv *kv) {
    switch (kv->type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32:
        gguf_set_u32(w, kv->key, (uint32_t)kv->v.u64); break;
    case GGUF_TYPE_INT8: case GGUF_TYPE_INT16: case GGUF_TYPE_INT32:
        gguf_set_i32(w, kv->key, (int32_t)kv->v.i64); break;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64:
        gguf_set_u64(w, kv->key, kv->v.u64); break;
    case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64:
        gguf_set_f32(w, kv->key, (float)kv->v.f64); break;
    case GGUF_TYPE_BOOL: gguf_set_bool(w, kv->key, kv->v.u64 != 0); break;
    case GGUF_TYPE_STRING: {
        char *s = strndup(kv->str.ptr, kv->str.len);
        if (s) gguf_set_str(w, kv->key, s);
        free(s);
        break;
    }
    case GGUF_TYPE_ARRAY:
        if (kv->arr_type == GGUF_TYPE_STRING) {
            const char **p = malloc((size_t)(kv->arr_n ? kv->arr_n : 1) * sizeof *p);
            uint64_t *len = malloc((size_t)(kv->arr_n ? kv->arr_n : 1) * sizeof *len);
            if (p && len) {
                for (uint64_t i = 0; i < kv->arr_n; i++) {
                    p[i] = kv->arr_str[i].ptr;
                    len[i] = kv->arr_str[i].len;
                }
                gguf_set_arr_str(w, kv->key, p, len, kv->arr_n);
            }
            free(p);
            free(len);
        } else {
            gguf_set_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_n);
        }
        break;
    default: break;
    }
}

int lm_model_save(const lm_model *m, const char *path, const char *name, duet_error *err) {
    if (m->lora) return lm_lora_save(m, path, name, err);
    const gguf_file *src = m->src->gguf;
    gguf_writer *w = gguf_writer_new();
    if (!w) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < src->n_kv; i++) {
        const char *k = src->kv[i].key;
        if (!strcmp(k, "general.alignment")) continue;
        copy_kv(w, &src->kv[i]);
    }
    gguf_set_u32(w, "general.file_type", 0);
    if (name) gguf_set_str(w, "general.name", name);
    int rc = DUET_OK;
    for (int i = 0; !rc && i < m->L.n_t; i++) {
        const lm_tensor *t = &m->L.t[i];
        int64_t ne[2] = {t->n_in, t->n_out};
        rc = gguf_add_tensor(w, t->name, DT_F32, t->n_out > 1 ? 2 : 1, ne, m->w + t->off, err);
    }
    /* tensors the trainer does not learn (rope_freqs) travel unchanged */
    for (uint64_t i = 0; !rc && i < src->n_tensors; i++) {
        const gguf_tensor *t = &src->tensors[i];
        int known = 0;
        for (int j = 0; j < m->L.n_t && !known; j++) known = !strcmp(m->L.t[j].name, t->name);
        if (!known) rc = gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
    }
    if (!rc) rc = gguf_write(w, path, err);
    gguf_writer_free(w);
    return rc;
}

/* ---- forward / backward ------------------------------------------------------------------ */
int lm_acts_new(const lm_model *m, int B, int T, lm_acts **out, duet_error *err) {
    *out = m->lora ? lm_acts_alloc_lora(&m->c, m->fz, m->lora, B, T, m->n_threads)
                   : lm_acts_alloc(&m->c, B, T);
    if (!*out)
        return duet_fail(err, DUET_ERR_NOMEM, "trainer: cannot allocate activations for a "
                         "batch of %d x %d tokens", B, T);
    return DUET_OK;
}
void lm_acts_free(lm_acts *a) { lm_acts_release(a); }
const float *lm_acts_lp(const lm_acts *a) { return a->lp; }
const float *lm_acts_score(const lm_acts *a) { return a->sc; }
const float *lm_acts_hidden(const lm_acts *a) { return a->hfin; }

double lm_step(lm_model *m, lm_acts *a, const lm_batch *b, int backward, float *logits) {
    if (m->lora)
        return lm_lora_run(&m->c, m->fz, m->lora, m->w, m->g, m->u, m->gu, a, b, m->tp, backward,
                           logits);
    return lm_run(&m->c, &m->L, m->w, m->g, m->u, m->gu, a, b, m->tp, backward, logits);
}

void lm_zero_grad(lm_model *m) {
    memset(m->g, 0, m->L.n_params * sizeof(float));
    if (m->gu) memset(m->gu, 0, (size_t)m->c.n_embd * sizeof(float));
}

/* ---- AdamW --------------------------------------------------------------------------------- */
int lm_adamw_init(lm_adamw *o, size_t n, duet_error *err) {
    memset(o, 0, sizeof *o);
    o->beta1 = 0.9;
    o->beta2 = 0.95;
    o->eps = 1e-8;
    o->clip = 1.0;
    o->n = n;
    o->m = duet_aalloc(n * sizeof(float));
    o->v = duet_aalloc(n * sizeof(float));
    if (!o->m || !o->v) {
        lm_adamw_free(o);
        return duet_fail(err, DUET_ERR_NOMEM, "trainer: cannot allocate optimizer state");
    }
    return DUET_OK;
}

void lm_adamw_free(lm_adamw *o) {
    duet_afree(o->m);
    duet_afree(o->v);
    o->m = o->v = NULL;
}

/* Sum of squares in fixed chunks added in order: the same bits for any thread count. */
#define NORM_CHUNK 65536
static double sumsq(const float *g, size_t n) {
    double total = 0;
    for (size_t c0 = 0; c0 < n; c0 += NORM_CHUNK) {
        size_t c1 = DUET_MIN(n, c0 + NORM_CHUNK);
        double s = 0;
        for (size_t i = c0; i < c1; i++) s += (double)g[i] * g[i];
        total += s;
    }
    return total;
}

double lm_grad_norm(const lm_model *m) {
    double s = sumsq(m->g, m->L.n_params);
    if (m->gu) s += sumsq(m->gu, (size_t)m->c.n_embd);
    return sqrt(s);
}

static void adam_range(const lm_adamw *o, float *w, const float *g, float *mm, float *vv,
                       size_t n, double lr, double gscale, double wd) {
    double b1c = 1 - pow(o->beta1, (double)o->step), b2c = 1 - pow(o->beta2, (double)o->step);
    float b1 = (float)o->beta1, b2 = (float)o->beta2;
    for (size_t i = 0; i < n; i++) {
        float gi = (float)(g[i] * gscale);
        mm[i] = b1 * mm[i] + (1 - b1) * gi;
        vv[i] = b2 * vv[i] + (1 - b2) * gi * gi;
        double mh = mm[i] / b1c, vh = vv[i] / b2c;
        w[i] -= (float)(lr * (mh / (sqrt(vh) + o->eps) + wd * w[i]));
    }
}

double lm_adamw_update(lm_adamw *o, lm_model *m, double lr) {
    double norm = lm_grad_norm(m);
    double gscale = o->clip > 0 && norm > o->clip ? o->clip / norm : 1.0;
    o->step++;
    for (int i = 0; i < m->L.n_t; i++) {
        const lm_tensor *t = &m->L.t[i];
        size_t n = (size_t)(t->n_in * t->n_out);
        adam_range(o, m->w + t->off, m->g + t->off, o->m + t->off, o->v + t->off, n, lr, gscale,
                   t->decay ? o->weight_decay : 0);
    }
    if (m->u && o->n >= m->L.n_params + (size_t)m->c.n_embd)
        adam_range(o, m->u, m->gu, o->m + m->L.n_params, o->v + m->L.n_params,
                   (size_t)m->c.n_embd, lr, gscale, 0);
    return norm;
}

double lm_lr_at(double lr, int64_t step, int64_t steps, int64_t warmup, int cosine, double min_frac) {
    if (warmup > 0 && step <= warmup) return lr * (double)step / (double)warmup;
    if (steps <= warmup) return lr;
    double p = (double)(step - warmup) / (double)(steps - warmup);
    if (p > 1) p = 1;
    double f = cosine ? 0.5 * (1 + cos(M_PI * p)) : 1 - p;
    return lr * (min_frac + (1 - min_frac) * f);
}

/* ---- optimizer sidecar: "DUETADAM", version, n, step, rng, m[n], v[n] -------------------- */
#define ADAM_MAGIC "DUETADAM"

int lm_adamw_save(const lm_adamw *o, uint64_t rng, const char *path, duet_error *err) {
    duet_atomic out;
    int rc = duet_atomic_open(&out, path, err);
    if (rc) return rc;
    FILE *f = out.f;
    uint32_t ver = 1;
    uint64_t n = o->n, step = (uint64_t)o->step;
    int ok = fwrite(ADAM_MAGIC, 1, 8, f) == 8 && fwrite(&ver, 4, 1, f) == 1 &&
             fwrite(&n, 8, 1, f) == 1 && fwrite(&step, 8, 1, f) == 1 &&
             fwrite(&rng, 8, 1, f) == 1 && fwrite(o->m, 4, o->n, f) == o->n &&
             fwrite(o->v, 4, o->n, f) == o->n;
    if (!ok) {
        rc = duet_fail(err, DUET_ERR_IO, "%s: cannot write the optimizer state: %s", path,
                       strerror(errno));
        duet_atomic_abort(&out);
        return rc;
    }
    return duet_atomic_commit(&out, err);
}

int lm_adamw_load(lm_adamw *o, uint64_t *rng, const char *path, duet_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return duet_fail(err, DUET_ERR_IO, "%s: %s", path, strerror(errno));
    char magic[8];
    uint32_t ver = 0;
    uint64_t n = 0, step = 0;
    int rc = DUET_OK;
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, ADAM_MAGIC, 8) || fread(&ver, 4, 1, f) != 1 ||
        ver != 1 || fread(&n, 8, 1, f) != 1 || fread(&step, 8, 1, f) != 1 ||
        fread(rng, 8, 1, f) != 1)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: not a duet optimizer state (magic/version)", path);
    else if (n != o->n)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: holds %llu parameters, the model has %zu", path,
                       (unsigned long long)n, o->n);
    else if (fread(o->m, 4, o->n, f) != o->n || fread(o->v, 4, o->n, f) != o->n)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: truncated", path);
    else
        o->step = (int64_t)step;
    fclose(f);
    return rc;
}
