/*
 * lm_lora.c: LoRA training's model and files (see lm.h): the frozen base as views of the
 * engine's loaded weights (nothing of it is copied), the adapters' layout in the flat array,
 * their start (PEFT's: A kaiming-uniform, B zero; or an adapter file when resuming), and
 * llama.cpp's LoRA GGUF: general.type "adapter", general.architecture, adapter.type "lora",
 * adapter.lora.alpha, and per adapted matrix "<base tensor>.lora_a" (ggml shape [n_in, r])
 * and "<base tensor>.lora_b" ([r, n_out]). The forward and backward passes are lm_impl.h's.
 */
#include "train/lm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/gguf.h"
#include "format/quant.h"

/* llama.cpp's tensor names of the matrix kinds (LM_MAT_*) and the names --lora-targets takes. */
static const char *const k_tensor[LM_N_MAT] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                               "ffn_gate", "ffn_up", "ffn_down", "output"};
static const char *const k_target[LM_N_MAT] = {"q", "k", "v", "o", "gate", "up", "down",
                                               "output"};

static void base_name(char *buf, size_t cap, int l, int k) {
    if (k == LM_MAT_OUT) snprintf(buf, cap, "output.weight");
    else snprintf(buf, cap, "blk.%d.%s.weight", l, k_tensor[k]);
}

int duet_lora_targets_parse(const char *list, unsigned *out, duet_error *err) {
    unsigned t = 0;
    const char *p = list ? list : "";
    do {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int k = -1;
        for (int i = 0; i < LM_N_MAT && k < 0; i++)
            if (strlen(k_target[i]) == len && !memcmp(k_target[i], p, len)) k = i;
        if (k < 0)
            return duet_fail(err, DUET_ERR_ARG, "LoRA target '%.*s' is not one of q, k, v, o, "
                             "gate, up, down, output", (int)DUET_MIN(len, 64), p);
        t |= 1u << k;
        p = e ? e + 1 : NULL;
    } while (p);
    *out = t;
    return DUET_OK;
}

void lm_lora_targets_str(unsigned targets, char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (int k = 0; k < LM_N_MAT; k++)
        if (targets >> k & 1 && len < cap)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s", len ? "," : "", k_target[k]);
}

/* ---- the frozen base ---------------------------------------------------------------------- */
int lm_frozen_init(lm_frozen *fz, const duet_model *s, duet_error *err) {
    memset(fz, 0, sizeof *fz);
    fz->layer = calloc((size_t)s->hp.n_layer, sizeof *fz->layer);
    if (!fz->layer) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    fz->tok_embd = s->tok_embd;
    fz->output = s->output;
    fz->output_norm = s->output_norm;
    for (int l = 0; l < s->hp.n_layer; l++) {
        const layer_weights *lw = &s->layers[l];
        lm_frozen_layer *f = &fz->layer[l];
        f->attn_norm = lw->attn_norm;
        f->ffn_norm = lw->ffn_norm;
        f->bq = lw->bq;
        f->bk = lw->bk;
        f->bv = lw->bv;
        f->q_norm = lw->q_norm;
        f->k_norm = lw->k_norm;
        const mtensor *w[7] = {&lw->wq, &lw->wk, &lw->wv, &lw->wo, &lw->w_gate, &lw->w_up,
                               &lw->w_down};
        for (int k = 0; k < 7; k++) f->w[k] = *w[k];
    }
    return DUET_OK;
}

void lm_frozen_free(lm_frozen *fz) {
    free(fz->layer);
    memset(fz, 0, sizeof *fz);
}

/* ---- the adapters' layout ------------------------------------------------------------------ */
static void add_pair(lm_layout *L, lm_lora *lo, const lm_config *c, int l, int k, size_t *off) {
    int in, out, r = lo->rank, s = lm_lora_slot(c, l, k);
    char base[40]; /* "blk.<int>.attn_output.weight" fits, and the suffix after it */
    lm_mat_dims(c, k, &in, &out);
    base_name(base, sizeof base, l, k);
    lm_tensor *a = &L->t[L->n_t++], *b = &L->t[L->n_t++];
    *a = (lm_tensor){.n_in = in, .n_out = r, .off = *off, .decay = 1};
    snprintf(a->name, sizeof a->name, "%s.lora_a", base);
    lo->a_off[s] = *off;
    *off += (size_t)in * r;
    *b = (lm_tensor){.n_in = r, .n_out = out, .off = *off, .decay = 1};
    snprintf(b->name, sizeof b->name, "%s.lora_b", base);
    lo->b_off[s] = *off;
    *off += (size_t)r * out;
}

int lm_lora_layout(lm_layout *L, lm_lora *lo, const lm_config *c, int rank, float alpha,
                   unsigned targets, duet_error *err) {
    memset(L, 0, sizeof *L);
    memset(lo, 0, sizeof *lo);
    if (rank < 1 || rank > c->n_embd)
        return duet_fail(err, DUET_ERR_ARG, "LoRA rank %d is out of range [1, %d] (n_embd)", rank,
                         c->n_embd);
    if (!(alpha > 0 && isfinite(alpha)))
        return duet_fail(err, DUET_ERR_ARG, "LoRA alpha %g is not a positive number", alpha);
    if (!(targets & 0xffu) || targets >> LM_N_MAT)
        return duet_fail(err, DUET_ERR_ARG, "LoRA targets 0x%x name no matrix kind", targets);
    if ((targets >> LM_MAT_OUT & 1) && c->tied)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "LoRA target 'output': this model's output "
                         "matrix is its token embedding (tied), which duet does not adapt");
    int n_slots = 7 * c->n_layer + 1, per_layer = __builtin_popcount(targets & 0x7fu);
    lo->a_off = malloc((size_t)n_slots * sizeof *lo->a_off);
    lo->b_off = malloc((size_t)n_slots * sizeof *lo->b_off);
    L->t = calloc((size_t)2 * (per_layer * c->n_layer + 1), sizeof *L->t);
    if (!lo->a_off || !lo->b_off || !L->t) {
        lm_lora_free(lo);
        lm_layout_free(L);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_slots; i++) lo->a_off[i] = lo->b_off[i] = SIZE_MAX;
    lo->rank = rank;
    lo->alpha = alpha;
    lo->scale = 1.0f * alpha / (float)rank; /* the engine's scale at --lora-scaled 1 */
    lo->targets = targets;
    size_t off = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int k = 0; k < 7; k++)
            if (targets >> k & 1) add_pair(L, lo, c, l, k, &off);
    if (targets >> LM_MAT_OUT & 1) add_pair(L, lo, c, 0, LM_MAT_OUT, &off);
    L->n_params = off;
    return DUET_OK;
}

void lm_lora_free(lm_lora *lo) {
    free(lo->a_off);
    free(lo->b_off);
    memset(lo, 0, sizeof *lo);
}

/* ---- adapter files ------------------------------------------------------------------------- */
int lm_lora_save(const lm_model *m, const char *path, const char *name, duet_error *err) {
    gguf_writer *w = gguf_writer_new();
    if (!w) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    gguf_set_str(w, "general.type", "adapter");
    gguf_set_str(w, "general.architecture", duet_model_hparams(m->src)->arch);
    if (name) gguf_set_str(w, "general.name", name);
    gguf_set_str(w, "adapter.type", "lora");
    gguf_set_f32(w, "adapter.lora.alpha", m->lora->alpha);
    int rc = DUET_OK;
    for (int i = 0; !rc && i < m->L.n_t; i++) {
        const lm_tensor *t = &m->L.t[i];
        int64_t ne[2] = {t->n_in, t->n_out};
        rc = gguf_add_tensor(w, t->name, DT_F32, 2, ne, m->w + t->off, err);
    }
    if (!rc) rc = gguf_write(w, path, err);
    gguf_writer_free(w);
    return rc;
}

static int str_eq(gguf_str s, const char *want) {
    return s.len == strlen(want) && !memcmp(s.ptr, want, s.len);
}

/* What an adapter file holds: its rank, alpha and the kinds of layer 0 and the output. The
 * layout made from them is then checked tensor by tensor (read_adapter). */
static int adapter_meta(const gguf_file *f, const duet_model *s, int *rank, float *alpha,
                        unsigned *targets, duet_error *err) {
    gguf_str v;
    const char *path = f->path, *arch = s->hp.arch;
    int rc = gguf_get_str(f, "general.type", &v, err);
    if (!rc && !str_eq(v, "adapter"))
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: general.type is '%.*s', not 'adapter'", path,
                       (int)DUET_MIN(v.len, 64), v.ptr);
    if (!rc) rc = gguf_get_str(f, "adapter.type", &v, err);
    if (!rc && !str_eq(v, "lora"))
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: adapter.type is '%.*s', not 'lora'", path,
                       (int)DUET_MIN(v.len, 64), v.ptr);
    if (!rc) rc = gguf_get_str(f, "general.architecture", &v, err);
    if (!rc && !str_eq(v, arch))
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: general.architecture is '%.*s' but the base %s "
                       "is '%s'", path, (int)DUET_MIN(v.len, 64), v.ptr, s->path, arch);
    *alpha = 0;
    if (!rc) rc = gguf_get_f32_opt(f, "adapter.lora.alpha", alpha, err);
    if (rc) return rc;
    *targets = 0;
    *rank = 0;
    char name[64];
    for (int k = 0; k < LM_N_MAT; k++) {
        base_name(name, sizeof name - 8, 0, k);
        strcat(name, ".lora_a");
        const gguf_tensor *t = gguf_find_tensor(f, name);
        if (!t) continue;
        *targets |= 1u << k;
        if (!*rank) *rank = (int)t->ne[1];
    }
    if (!*targets)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: no adapter of layer 0 or the output", path);
    if (*alpha == 0) *alpha = (float)*rank; /* alpha 0 means scale 1 to llama.cpp */
    return DUET_OK;
}

/* Copy the file's A and B into the layout L (rank and kinds from adapter_meta), checking
 * that it holds exactly those tensors with their shapes. */
static int read_adapter(const gguf_file *f, const lm_layout *L, float *w, duet_error *err) {
    if (f->n_tensors != (uint64_t)L->n_t)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: %llu tensors, but the same matrix kinds on "
                         "every layer at one rank make %d (the trainer adapts whole kinds)",
                         f->path, (unsigned long long)f->n_tensors, L->n_t);
    for (int i = 0; i < L->n_t; i++) {
        const lm_tensor *t = &L->t[i];
        const gguf_tensor *g = gguf_find_tensor(f, t->name);
        if (!g)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' is missing", f->path, t->name);
        if (g->n_dims != 2 || g->ne[0] != t->n_in || g->ne[1] != t->n_out)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' is [%lld, %lld], want [%lld, "
                             "%lld]", f->path, t->name, (long long)g->ne[0], (long long)g->ne[1],
                             (long long)t->n_in, (long long)t->n_out);
        if (g->type != DT_F32 && g->type != DT_F16 && g->type != DT_BF16)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' has type %d; the trainer reads "
                             "f32, f16 and bf16 adapters", f->path, t->name, g->type);
        float *dst = w + t->off;
        size_t n = (size_t)(t->n_in * t->n_out);
        quant_dequantize_row(g->type, g->data, dst, (int64_t)n);
        for (size_t j = 0; j < n; j++)
            if (!isfinite(dst[j]))
                return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' element %zu is %g",
                                 f->path, t->name, j, dst[j]);
    }
    return DUET_OK;
}

/* PEFT's start: A uniform in +-1/sqrt(n_in) (kaiming-uniform with a = sqrt(5)), B zero. */
static void init_adapters(lm_model *m, uint64_t seed) {
    uint64_t st = seed * 0x9e3779b97f4a7c15ull + 0x10a;
    memset(m->w, 0, m->L.n_params * sizeof(float));
    for (int i = 0; i < m->L.n_t; i += 2) { /* pairs: A, then B */
        const lm_tensor *a = &m->L.t[i];
        float bound = 1.0f / sqrtf((float)a->n_in);
        for (size_t j = 0; j < (size_t)(a->n_in * a->n_out); j++) {
            float u = (float)(duet_splitmix64(&st) >> 40) * 0x1.0p-24f;
            m->w[a->off + j] = bound * (2 * u - 1);
        }
    }
}

/* Rank, alpha and kinds of the run: p's, or the init file's (p's, where set, must agree). */
static int lora_shape(const duet_lm_lora_params *p, const gguf_file *init, const duet_model *s,
                      int *rank, float *alpha, unsigned *targets, duet_error *err) {
    if (!init) {
        *rank = p->rank;
        *alpha = p->alpha > 0 ? p->alpha : (float)p->rank;
        *targets = p->targets ? p->targets : DUET_LORA_DEFAULT;
        return DUET_OK;
    }
    int rc = adapter_meta(init, s, rank, alpha, targets, err);
    if (rc) return rc;
    if ((p->rank && p->rank != *rank) || (p->alpha > 0 && p->alpha != *alpha) ||
        (p->targets && p->targets != *targets))
        return duet_fail(err, DUET_ERR_ARG, "%s: holds rank %d, alpha %g, targets 0x%x; asked for "
                         "rank %d, alpha %g, targets 0x%x", init->path, *rank, *alpha, *targets,
                         p->rank, p->alpha, p->targets);
    return DUET_OK;
}

/* The architectures whose forward pass lm_impl.h computes: llama, and qwen2 (q/k/v biases)
 * and qwen3 (per-head q/k norms), both with neox RoPE. */
static int arch_check(const duet_model *s, duet_error *err) {
    const char *arch = s->hp.arch;
    const arch_params *ap = &s->ap;
    if (strcmp(arch, "llama") && strcmp(arch, "qwen2") && strcmp(arch, "qwen3"))
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: architecture %s: LoRA training not "
                         "supported yet (llama, qwen2 and qwen3 are)", s->path, arch);
    if (ap->n_rot != s->hp.head_dim || ap->rope_mscale != 1.0f || s->rope_inv_freq_long ||
        ap->rope_neox != (strcmp(arch, "llama") != 0))
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: a RoPE variant the trainer does not "
                         "compute (partial, scaled, LongRoPE or another pair order)", s->path);
    if (ap->ffn_gelu || ap->embd_scale != 1.0f || ap->attn_softcap > 0 || ap->final_softcap > 0 ||
        ap->n_swa || fabsf(ap->attn_scale - 1.0f / sqrtf((float)s->hp.head_dim)) > 1e-7f)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: %s with GELU, scaled embeddings, soft "
                         "caps, a sliding window or another attention scale: not trained yet",
                         s->path, arch);
    return DUET_OK;
}

int lm_lora_load(const char *path, int n_threads, const duet_lm_lora_params *p, lm_model *m,
                 duet_error *err) {
    memset(m, 0, sizeof *m);
    /* Copied, not mapped: the engine then repacks Q4_0/Q8_0 matrices into its row-interleaved
     * layout, whose prompt-sized products (the forward pass over B x T tokens) run about 1.9x
     * faster (pp256 of a 1.1B Q4_0 file, 2 threads); resident memory is the same, anonymous
     * instead of the file's pages. */
    duet_model_params mp = {.n_threads = n_threads, .use_mmap = 0};
    int rc = duet_model_load(path, &mp, &m->src, err);
    if (rc) return rc;
    const duet_model *s = m->src;
    gguf_file *init = NULL;
    int rank = 0;
    float alpha = 0;
    unsigned targets = 0;
    m->lora = calloc(1, sizeof *m->lora);
    m->fz = calloc(1, sizeof *m->fz);
    if (!m->lora || !m->fz) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) rc = arch_check(s, err);
    if (!rc) rc = lm_config_init(&m->c, s, err);
    if (!rc && p->init) rc = gguf_open(p->init, &init, err);
    if (!rc) rc = lora_shape(p, init, s, &rank, &alpha, &targets, err);
    if (!rc) rc = lm_lora_layout(&m->L, m->lora, &m->c, rank, alpha, targets, err);
    if (!rc) rc = lm_frozen_init(m->fz, s, err);
    if (!rc) {
        m->w = duet_aalloc(m->L.n_params * sizeof(float));
        m->g = duet_aalloc(m->L.n_params * sizeof(float));
        if (!m->w || !m->g) rc = duet_fail(err, DUET_ERR_NOMEM, "cannot allocate %zu adapter "
                                           "parameters", m->L.n_params);
    }
    if (!rc && init) rc = read_adapter(init, &m->L, m->w, err);
    else if (!rc) init_adapters(m, p->seed);
    gguf_close(init);
    if (rc) {
        lm_model_free(m);
        return rc;
    }
    m->tp = s->tp;
    m->n_threads = tp_n_threads(s->tp);
    return DUET_OK;
}

int duet_lm_load_lora(const char *path, int n_threads, const duet_lm_lora_params *p,
                      duet_lm **out, duet_error *err) {
    *out = NULL;
    lm_model *m = calloc(1, sizeof *m);
    if (!m) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", path);
    int rc = lm_lora_load(path, n_threads, p, m, err);
    if (rc) {
        free(m);
        return rc;
    }
    *out = m;
    return DUET_OK;
}
