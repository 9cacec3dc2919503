/*
 * lora.c: low-rank adapters in llama.cpp's LoRA GGUF format, applied unmerged. A file holds
 * general.type "adapter", general.architecture, adapter.type "lora", adapter.lora.alpha and,
 * for each adapted matrix W (n_out rows of n_in), two tensors named after W's tensor:
 * "<name>.lora_a" with ggml shape [n_in, r] (r rows of n_in: A) and "<name>.lora_b" with
 * [r, n_out] (n_out rows of r: B). The adapted product is W x + s B (A x), with llama.cpp's
 * scale s = user scale * alpha / r (alpha 0: the user scale alone). Everything is checked
 * against the base when the file is loaded, so the forward pass indexes nothing unchecked.
 * Phi-3's fused matrices (attn_qkv, the gate+up ffn_up) and the token embedding are refused
 * by name: their adapters would have to be split the way the base is.
 */
#include "engine/lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"
#include "engine/kernels.h"
#include "format/quant.h"

struct duet_lora {
    char path[512];
    gguf_file *f;
    float alpha;
    int rank_max;
    int n;               /* adapted matrices */
    struct lora_pair {
        int matrix;      /* model_matrix index */
        mtensor a, b;    /* A: r rows of n_in; B: n_out rows of r */
    } *pairs;
};

/* llama.cpp's tensor names of the matrices, by MAT_* (layer matrices: "blk.%d.<name>.weight") */
static const char *const k_mat_names[7] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                           "ffn_gate", "ffn_up", "ffn_down"};

/* The model_matrix index of a base tensor name, -1 when no matrix has it. */
static int matrix_of(const duet_model *m, const char *name, size_t len) {
    char want[96];
    if (len == strlen("output.weight") && !memcmp(name, "output.weight", len)) return 0;
    for (int l = 0; l < m->hp.n_layer; l++)
        for (int k = 0; k < 7; k++) {
            int w = snprintf(want, sizeof want, "blk.%d.%s.weight", l, k_mat_names[k]);
            if ((size_t)w == len && !memcmp(want, name, len)) return 1 + 7 * l + k;
        }
    return -1;
}

static int str_is(gguf_str s, const char *want) {
    return s.len == strlen(want) && !memcmp(s.ptr, want, s.len);
}

static int check_meta(duet_lora *a, const duet_model *base, duet_error *err) {
    gguf_str s;
    const char *arch = duet_model_hparams(base)->arch;
    int rc = gguf_get_str(a->f, "general.type", &s, err);
    if (!rc && !str_is(s, "adapter"))
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: general.type is '%.*s', not 'adapter'", a->path,
                       (int)DUET_MIN(s.len, 64), s.ptr);
    if (!rc) rc = gguf_get_str(a->f, "adapter.type", &s, err);
    if (!rc && !str_is(s, "lora"))
        rc = duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: adapter.type is '%.*s'; duet reads 'lora' "
                       "adapters", a->path, (int)DUET_MIN(s.len, 64), s.ptr);
    if (!rc) rc = gguf_get_str(a->f, "general.architecture", &s, err);
    if (!rc && !str_is(s, arch))
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: general.architecture is '%.*s' but the base "
                       "%s is '%s'", a->path, (int)DUET_MIN(s.len, 64), s.ptr, base->path, arch);
    a->alpha = 0;
    if (!rc) rc = gguf_get_f32_opt(a->f, "adapter.lora.alpha", &a->alpha, err);
    if (!rc && !(isfinite(a->alpha) && a->alpha >= 0))
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: adapter.lora.alpha is %g", a->path, a->alpha);
    return rc;
}

/* Binds one pair: base tensor name (without the suffix) of n_in x n_out, A and B. */
static int bind_pair(duet_lora *a, duet_model *base, const gguf_tensor *ta, const gguf_tensor *tb,
                     int mi, duet_error *err) {
    const mtensor *w = model_matrix(base, mi);
    const gguf_tensor *t2[2] = {ta, tb};
    for (int i = 0; i < 2; i++) {
        const dtype_traits *tr = dtype_info(t2[i]->type);
        if (!tr || !tr->supported || !kernels_get(t2[i]->type))
            return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s (%d), which "
                             "duet cannot compute with", a->path, t2[i]->name, tr ? tr->name : "?",
                             t2[i]->type);
        if (t2[i]->n_dims != 2)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' has %u dimensions, not 2",
                             a->path, t2[i]->name, t2[i]->n_dims);
    }
    int64_t r = ta->ne[1];
    if (ta->ne[0] != w->n_in || tb->ne[1] != w->n_out || tb->ne[0] != r || r < 1)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: '%s' is [%lld, %lld] and '%s' [%lld, %lld]; "
                         "the base matrix is %lld in x %lld out, so they must be [%lld, r] and "
                         "[r, %lld] with the same r >= 1", a->path, ta->name, (long long)ta->ne[0],
                         (long long)ta->ne[1], tb->name, (long long)tb->ne[0], (long long)tb->ne[1],
                         (long long)w->n_in, (long long)w->n_out, (long long)w->n_in,
                         (long long)w->n_out);
    for (int i = 0; i < 2; i++) {
        int rc = model_tensor_finite(a->path, t2[i], t2[i]->data, err);
        if (rc) return rc;
    }
    struct lora_pair *p = &a->pairs[a->n++];
    p->matrix = mi;
    p->a = (mtensor){.data = ta->data, .type = ta->type, .n_in = ta->ne[0], .n_out = r};
    p->b = (mtensor){.data = tb->data, .type = tb->type, .n_in = r, .n_out = tb->ne[1]};
    a->rank_max = (int)DUET_MAX(a->rank_max, r);
    return DUET_OK;
}

static int bind_pairs(duet_lora *a, duet_model *base, duet_error *err) {
    static const char sa[] = ".lora_a", sb[] = ".lora_b";
    size_t ls = sizeof sa - 1;
    for (uint64_t i = 0; i < a->f->n_tensors; i++) {
        const gguf_tensor *t = &a->f->tensors[i];
        size_t len = strlen(t->name);
        int is_a = len > ls && !strcmp(t->name + len - ls, sa);
        int is_b = len > ls && !strcmp(t->name + len - ls, sb);
        if (!is_a && !is_b)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' is neither a .lora_a nor a "
                             ".lora_b", a->path, t->name);
        char other[GGUF_MAX_NAME + 8];
        snprintf(other, sizeof other, "%.*s%s", (int)(len - ls), t->name, is_a ? sb : sa);
        const gguf_tensor *o = gguf_find_tensor(a->f, other);
        if (!o)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' has no '%s' to pair with",
                             a->path, t->name, other);
        int mi = matrix_of(base, t->name, len - ls);
        if (mi < 0)
            return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: tensor '%s' adapts '%.*s', which %s "
                             "has no matrix of (or duet does not adapt yet: token embeddings, "
                             "fused matrices)", a->path, t->name, (int)(len - ls), t->name,
                             base->path);
        if (!model_matrix(base, mi)->data)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: '%s' adapts a matrix %s does not have",
                             a->path, t->name, base->path);
        if (is_a) {
            int rc = bind_pair(a, base, t, o, mi, err);
            if (rc) return rc;
        }
    }
    if (!a->n) return duet_fail(err, DUET_ERR_FORMAT, "%s: no adapter tensors", a->path);
    return DUET_OK;
}

int duet_lora_load(const char *path, duet_model *base, duet_lora **out, duet_error *err) {
    *out = NULL;
    if (base->vocab_only)
        return duet_fail(err, DUET_ERR_ARG, "%s: the base was loaded vocabulary-only", base->path);
    duet_lora *a = calloc(1, sizeof *a);
    if (!a) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    snprintf(a->path, sizeof a->path, "%s", path);
    int rc = gguf_open(path, &a->f, err);
    if (!rc) rc = check_meta(a, base, err);
    if (!rc && !(a->pairs = calloc(a->f->n_tensors + 1, sizeof *a->pairs)))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) rc = bind_pairs(a, base, err);
    if (rc) {
        duet_lora_free(a);
        return rc;
    }
    *out = a;
    return DUET_OK;
}

void duet_lora_free(duet_lora *a) {
    if (!a) return;
    gguf_close(a->f);
    free(a->pairs);
    free(a);
}

float duet_lora_alpha(const duet_lora *a) { return a->alpha; }
int duet_lora_n_matrices(const duet_lora *a) { return a->n; }

/* ---- attached to a model --------------------------------------------------------------- */
/* Multiply-adds of one adapter's two products below which they run on the calling thread. */
#define LORA_POOL_MIN (1 << 18)

struct lora_use {
    int n;
    struct { const mtensor *a, *b; float scale; } e[];
};

int duet_model_add_lora(duet_model *m, const duet_lora *a, float scale, duet_error *err) {
    if (!isfinite(scale))
        return duet_fail(err, DUET_ERR_ARG, "%s: scale %g", a->path, scale);
    if (__atomic_load_n(&m->n_fwd, __ATOMIC_RELAXED))
        return duet_fail(err, DUET_ERR_ARG, "%s: attach adapters to %s before making sessions "
                         "with it", a->path, m->path);
    int nm = model_n_matrices(m);
    for (int i = 0; i < a->n; i++) /* adapters are checked against their base at load */
        if (a->pairs[i].matrix >= nm || model_matrix(m, a->pairs[i].matrix)->n_out != a->pairs[i].b.n_out ||
            model_matrix(m, a->pairs[i].matrix)->n_in != a->pairs[i].a.n_in)
            return duet_fail(err, DUET_ERR_ARG, "%s was loaded for another base than %s", a->path,
                             m->path);
    if (!m->lora && !(m->lora = calloc((size_t)nm, sizeof *m->lora)))
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; i < a->n; i++) {
        const struct lora_pair *p = &a->pairs[i];
        struct lora_use *u = m->lora[p->matrix];
        int n = u ? u->n : 0;
        struct lora_use *g = realloc(u, sizeof *g + (size_t)(n + 1) * sizeof g->e[0]);
        if (!g) return duet_fail(err, DUET_ERR_NOMEM, "out of memory"); /* (what is in stays) */
        g->n = n + 1;
        float s = a->alpha > 0 ? scale * a->alpha / (float)p->a.n_out : scale;
        g->e[n].a = &p->a;
        g->e[n].b = &p->b;
        g->e[n].scale = s;
        m->lora[p->matrix] = g;
        m->lora_rank_max = (int)DUET_MAX(m->lora_rank_max, p->a.n_out);
        m->lora_out_max = (int)DUET_MAX(m->lora_out_max, p->b.n_out);
    }
    return DUET_OK;
}

void lora_model_free(duet_model *m) {
    if (!m->lora) return;
    for (int i = 0; i < model_n_matrices(m); i++) free(m->lora[i]);
    free(m->lora);
    m->lora = NULL;
}

uint64_t duet_model_lora_hash(const duet_model *m) {
    uint64_t h = 0; /* until a term counts: one at scale 0 adds exactly 0 to every product */
    for (int i = 0; m->lora && i < model_n_matrices(m); i++)
        for (int k = 0; m->lora[i] && k < m->lora[i]->n; k++) {
            const mtensor *t[2] = {m->lora[i]->e[k].a, m->lora[i]->e[k].b};
            if (m->lora[i]->e[k].scale == 0) continue;
            if (!h) h = DUET_FNV_SEED_SHORT;
            h = duet_fnv1a(h, &i, sizeof i);
            h = duet_fnv1a(h, &m->lora[i]->e[k].scale, sizeof(float));
            for (int j = 0; j < 2; j++) {
                h = duet_fnv1a(h, &t[j]->type, sizeof t[j]->type);
                h = duet_fnv1a(h, t[j]->data, dtype_row_size(t[j]->type, t[j]->n_in) * (size_t)t[j]->n_out);
            }
        }
    return h;
}

size_t lora_scratch_bytes(const duet_model *m, int n_rows) {
    size_t s = 0;
    if (!m->lora) return 0;
    for (int i = 0; i < model_n_matrices(m); i++)
        for (int k = 0; m->lora[i] && k < m->lora[i]->n; k++) {
            const mtensor *a = m->lora[i]->e[k].a, *b = m->lora[i]->e[k].b;
            s = DUET_MAX(s, kernels_matmul_scratch(a->type, a->n_in, n_rows));
            s = DUET_MAX(s, kernels_matmul_scratch(b->type, b->n_in, n_rows));
        }
    return s;
}

void lora_apply(const duet_model *m, int mi, const float *x, int n, float *y, float *t, float *u,
                void *scratch) {
    const struct lora_use *g = m->lora ? m->lora[mi] : NULL;
    for (int k = 0; g && k < g->n; k++) {
        const mtensor *a = g->e[k].a, *b = g->e[k].b;
        float s = g->e[k].scale;
        /* the products are small (rank r): waking the pool costs more than a decode step's
         * work, so only large batches use it (results do not depend on the split) */
        threadpool *tp = (double)n * (double)(a->n_in + b->n_out) * (double)a->n_out >= LORA_POOL_MIN
                             ? m->tp : NULL;
        kernels_matmul(tp, a->type, a->data, a->n_in, a->n_out, x, n, t, scratch);
        kernels_matmul(tp, b->type, b->data, b->n_in, b->n_out, t, n, u, scratch);
        size_t all = (size_t)n * (size_t)b->n_out;
        for (size_t i = 0; i < all; i++) y[i] += s * u[i];
    }
}

/* ---- merging into a new model file ------------------------------------------------------ */
/* W + sum of the adapters' s B A for matrix mi, rows of n_in floats into w (n_out x n_in):
 * the file's matrix dequantised, then each term added in double per element. */
static int merged_matrix(duet_model *m, const gguf_tensor *t, int mi, float *w, duet_error *err) {
    int64_t n_in = t->ne[0], n_out = t->ne[1];
    size_t row = dtype_row_size(t->type, n_in);
    for (int64_t o = 0; o < n_out; o++)
        quant_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)o * row, w + o * n_in, n_in);
    const struct lora_use *g = m->lora ? m->lora[mi] : NULL;
    for (int k = 0; g && k < g->n; k++) {
        const mtensor *a = g->e[k].a, *b = g->e[k].b;
        int64_t r = a->n_out;
        float *A = malloc((size_t)(r * n_in) * sizeof *A), *B = malloc((size_t)(n_out * r) * sizeof *B);
        double *acc = malloc((size_t)n_in * sizeof *acc);
        if (!A || !B || !acc) {
            free(A), free(B), free(acc);
            return duet_fail(err, DUET_ERR_NOMEM, "out of memory merging '%s'", t->name);
        }
        for (int64_t i = 0; i < r; i++)
            quant_dequantize_row(a->type, (const uint8_t *)a->data + (size_t)i * dtype_row_size(a->type, n_in),
                                 A + i * n_in, n_in);
        for (int64_t o = 0; o < n_out; o++)
            quant_dequantize_row(b->type, (const uint8_t *)b->data + (size_t)o * dtype_row_size(b->type, r),
                                 B + o * r, r);
        for (int64_t o = 0; o < n_out; o++) {
            for (int64_t j = 0; j < n_in; j++) acc[j] = 0;
            for (int64_t i = 0; i < r; i++)
                for (int64_t j = 0; j < n_in; j++) acc[j] += (double)B[o * r + i] * A[i * n_in + j];
            for (int64_t j = 0; j < n_in; j++) w[o * n_in + j] += (float)(g->e[k].scale * acc[j]);
        }
        free(A), free(B), free(acc);
    }
    return DUET_OK;
}

/* Tensor t of the base into the writer: as it is, or merged and stored as type (-1: its own). */
static int write_tensor(gguf_writer *w, duet_model *m, const gguf_tensor *t, int type,
                        duet_error *err) {
    int mi = t->n_dims == 2 ? matrix_of(m, t->name, strlen(t->name)) : -1;
    if (mi < 0 || !m->lora || !m->lora[mi])
        return gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, err);
    int out = type >= 0 ? type : t->type;
    int64_t n_in = t->ne[0], n_out = t->ne[1];
    size_t row = dtype_row_size(out, n_in);
    if (!row)
        return duet_fail(err, DUET_ERR_ARG, "%s: '%s' has rows of %lld, which type %s cannot hold",
                         m->path, t->name, (long long)n_in, dtype_info(out) ? dtype_info(out)->name : "?");
    float *f = malloc((size_t)(n_in * n_out) * sizeof *f);
    void *q = malloc(row * (size_t)n_out);
    int rc = !f || !q ? duet_fail(err, DUET_ERR_NOMEM, "out of memory merging '%s'", t->name)
                      : merged_matrix(m, t, mi, f, err);
    for (int64_t o = 0; !rc && o < n_out; o++)
        quant_quantize_row(out, f + o * n_in, (uint8_t *)q + (size_t)o * row, n_in);
    if (!rc) rc = gguf_add_tensor(w, t->name, out, 2, t->ne, q, err);
    free(f);
    free(q);
    return rc;
}

int duet_lora_merge(const char *base_path, const char *const *adapters, const float *scales,
                    int n, int type, const char *out_path, duet_error *err) {
    if (type >= 0 && (!dtype_info(type) || !dtype_info(type)->supported))
        return duet_fail(err, DUET_ERR_ARG, "type %d cannot be written", type);
    duet_model_params mp = {.n_threads = 1, .use_mmap = 1, .no_repack = 1};
    duet_model *m = NULL;
    duet_lora **ad = calloc((size_t)(n > 0 ? n : 1), sizeof *ad);
    if (!ad) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    int rc = duet_model_load(base_path, &mp, &m, err);
    for (int i = 0; !rc && i < n; i++) {
        rc = duet_lora_load(adapters[i], m, &ad[i], err);
        if (!rc) rc = duet_model_add_lora(m, ad[i], scales[i], err);
    }
    gguf_writer *w = rc ? NULL : gguf_writer_new();
    if (!rc && !w) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; !rc && i < m->gguf->n_kv; i++)
        if (strcmp(m->gguf->kv[i].key, "general.alignment")) gguf_set_kv_from(w, &m->gguf->kv[i]);
    for (uint64_t i = 0; !rc && i < m->gguf->n_tensors; i++)
        rc = write_tensor(w, m, &m->gguf->tensors[i], type, err);
    if (!rc) rc = gguf_write(w, out_path, err);
    gguf_writer_free(w);
    duet_model_free(m);
    for (int i = 0; i < n; i++) duet_lora_free(ad[i]);
    free(ad);
    return rc;
}
