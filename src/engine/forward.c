/*
 * forward.c: transformer forward (RMSNorm, RoPE, grouped-query attention, gated FFN) for a
 * batch of consecutive tokens against the KV cache. The llama path is the plain one; the
 * other architectures add steps where their weights or arch_params say so (qwen2 q/k/v
 * biases, qwen3 per-head q/k norms, gemma2 embedding scale, soft caps, post-norms, GELU and
 * sliding windows; phi3's fused matrices are split at load and need nothing here). Matrix
 * products go through kernels_matmul (threaded, SIMD), attention through the attn kernel
 * over (kv head, token) items across the pool, and the per-token steps between them (norms,
 * RoPE, residual adds, the gated activation) are split over the pool by tokens when the
 * batch is large enough to pay for it. No result depends on the split or on the batch size:
 * prefill of n tokens equals n one-token decodes bit for bit.
 */
#include "engine/forward.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "engine/act.h"
#include "engine/attn.h"
#include "base/common.h"
#include "engine/kernels.h"
#include "engine/lora.h"
#include "format/quant.h"

/* Positions rounded up to whole blocks of 8 (attn.h). */
static size_t cache_positions(int n_pos) { return (size_t)((n_pos + 7) & ~7); }

/* Positions the cache starts with: a short chat or a scoring window never pays for n_ctx. */
#define CACHE_FIRST_POSITIONS 256

int fwd_kv_type_ok(int type) { return type == DT_F32 || type == DT_F16; }

/* Bytes of one cache element. */
static size_t kv_size(int type) { return type == DT_F16 ? 2 : 4; }

int fwd_init(fwd_state *st, const duet_model *m, int n_ctx, int n_batch, int type_k, int type_v,
             duet_error *err) {
    memset(st, 0, sizeof *st);
    if (!fwd_kv_type_ok(type_k) || !fwd_kv_type_ok(type_v))
        return duet_fail(err, DUET_ERR_ARG, "KV cache type %d is not supported (f32 = 0, f16 = 1)",
                         fwd_kv_type_ok(type_k) ? type_v : type_k);
    st->type_k = type_k;
    st->type_v = type_v;
    __atomic_add_fetch(&((duet_model *)m)->n_fwd, 1, __ATOMIC_RELAXED);
    const duet_hparams *hp = &m->hp;
    st->m = m;
    st->n_ctx = n_ctx;
    st->n_batch = n_batch;
    st->rope_inv_freq = m->rope_inv_freq_long && n_ctx > m->n_ctx_orig ? m->rope_inv_freq_long
                                                                        : m->rope_inv_freq;
    size_t E = (size_t)hp->n_embd, Q = (size_t)hp->n_head * hp->head_dim,
           KV = (size_t)hp->n_head_kv * hp->head_dim, F = (size_t)hp->n_ff, B = (size_t)n_batch;
    st->cap_pos = (int)cache_positions(DUET_MIN(n_ctx, CACHE_FIRST_POSITIONS));
    size_t cache = (size_t)hp->n_layer * (size_t)st->cap_pos * KV;
    size_t cache_k = cache * kv_size(type_k), cache_v = cache * kv_size(type_v);
    int nth = tp_n_threads(m->tp);
    size_t scratch = 0;
    for (int l = 0; l < hp->n_layer; l++) {
        const layer_weights *L = &m->layers[l];
        const mtensor *ts[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++)
            scratch = DUET_MAX(scratch, kernels_matmul_scratch(ts[i]->type, ts[i]->n_in, n_batch));
    }
    scratch = DUET_MAX(scratch, kernels_matmul_scratch(m->output.type, m->output.n_in, n_batch));
    scratch = DUET_MAX(scratch, lora_scratch_bytes(m, n_batch));
    if (m->lora) { /* adapters are attached before sessions are made (duet_model_add_lora) */
        st->lora_t = duet_aalloc(B * (size_t)m->lora_rank_max * 4);
        st->lora_u = duet_aalloc(B * (size_t)m->lora_out_max * 4);
        st->lora_rank_cap = m->lora_rank_max;
        st->lora_out_cap = m->lora_out_max;
    }
    st->k_cache = duet_aalloc(cache_k);
    st->v_cache = duet_aalloc(cache_v);
    st->x = duet_aalloc(B * E * 4);
    st->xb = duet_aalloc(B * E * 4);
    st->q = duet_aalloc(B * Q * 4);
    st->k = duet_aalloc(B * KV * 4);
    st->v = duet_aalloc(B * KV * 4);
    st->att = duet_aalloc(B * Q * 4);
    st->proj = duet_aalloc(B * E * 4);
    st->hg = duet_aalloc(B * F * 4);
    st->hu = duet_aalloc(B * F * 4);
    st->scores = duet_aalloc((size_t)nth * attn_scratch_floats(hp->n_head / hp->n_head_kv, n_ctx) * 4);
    st->scratch = duet_aalloc(scratch);
    st->row_st = malloc(B * sizeof *st->row_st);
    st->row_pos = malloc(B * sizeof *st->row_pos);
    st->row_tok = malloc(B * sizeof *st->row_tok);
    st->row_out = malloc(B * sizeof *st->row_out);
    if (!st->k_cache || !st->v_cache || !st->x || !st->xb || !st->q || !st->k || !st->v ||
        !st->att || !st->proj || !st->hg || !st->hu || !st->scores || !st->scratch ||
        !st->row_st || !st->row_pos || !st->row_tok || !st->row_out ||
        (m->lora && (!st->lora_t || !st->lora_u))) {
        fwd_free(st);
        return duet_fail(err, DUET_ERR_NOMEM,
                         "%s: cannot allocate buffers for n_ctx %d, n_batch %d (KV cache %zu MiB)",
                         m->path, n_ctx, n_batch, (cache_k + cache_v) >> 20);
    }
    return DUET_OK;
}

void fwd_free(fwd_state *st) {
    if (!st || !st->m) return;
    __atomic_sub_fetch(&((duet_model *)st->m)->n_fwd, 1, __ATOMIC_RELAXED);
    void *bufs[] = {st->k_cache, st->v_cache, st->x, st->xb, st->q, st->k, st->v,
                    st->att, st->proj, st->hg, st->hu, st->scores};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) duet_afree(bufs[i]);
    duet_afree(st->scratch);
    duet_afree(st->lora_t);
    duet_afree(st->lora_u);
    free(st->row_st);
    free(st->row_pos);
    free(st->row_tok);
    free(st->row_out);
    memset(st, 0, sizeof *st);
}

size_t fwd_kv_bytes(const fwd_state *st) {
    const duet_hparams *hp = &st->m->hp;
    size_t n = (size_t)hp->n_layer * hp->n_head_kv * (size_t)st->cap_pos * (size_t)hp->head_dim;
    return n * (kv_size(st->type_k) + kv_size(st->type_v));
}

int fwd_reserve(fwd_state *st, int n_pos, duet_error *err) {
    if (n_pos <= st->cap_pos) return DUET_OK;
    const duet_hparams *hp = &st->m->hp;
    size_t cap = (size_t)st->cap_pos;
    while (cap < (size_t)n_pos) cap *= 2; /* doubling: a long decode copies each entry ~once */
    cap = DUET_MIN(cap, cache_positions(st->n_ctx));
    size_t heads = (size_t)hp->n_layer * hp->n_head_kv, hd = (size_t)hp->head_dim;
    void *caches[2] = {st->k_cache, st->v_cache}, *grown[2];
    int types[2] = {st->type_k, st->type_v};
    for (int c = 0; c < 2; c++) {
        size_t el = kv_size(types[c]);
        if (!(grown[c] = duet_aalloc(heads * cap * hd * el))) {
            if (c) duet_afree(grown[0]);
            return duet_fail(err, DUET_ERR_NOMEM, "%s: cannot grow the KV cache to %zu positions "
                             "(%zu MiB)", st->m->path, cap, (heads * cap * hd * el) >> 20);
        }
    }
    /* each (layer, kv head) keeps its layout; only the stride between heads changes */
    for (int c = 0; c < 2; c++) {
        size_t row = (size_t)st->cap_pos * hd * kv_size(types[c]), nrow = cap * hd * kv_size(types[c]);
        for (size_t h = 0; h < heads; h++)
            memcpy((char *)grown[c] + h * nrow, (char *)caches[c] + h * row, row);
        duet_afree(caches[c]);
    }
    st->k_cache = grown[0];
    st->v_cache = grown[1];
    st->cap_pos = (int)cap;
    return DUET_OK;
}

/* The sum of squares runs in eight double lanes (element i in lane i % 8; a float's square
 * is exact in double) that the compiler vectorises without reordering anything, so the
 * result is the same at any -march; one serial double chain cost ~1% of a prefill. */
static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    double lane[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) lane[j] += (double)x[i + j] * x[i + j];
    for (int j = 0; i + j < n; j++) lane[j] += (double)x[i + j] * x[i + j];
    double ss = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) o[i] = w[i] * (scale * x[i]);
}

/* Rotate the first n_rot dims of each head by pos * inv_freq[i] and scale them by mscale
 * (rope.scaling.attn_factor; 1 for most files): pairs (x[2i], x[2i+1])
 * (llama files store q/k in this "normal" order; llama2.c uses it too) or, neox, the halves
 * (x[i], x[i + n_rot/2]) as qwen2/qwen3/phi3/gemma2 files expect. */
static void rope(float *x, int n_heads, int head_dim, int n_rot, int neox, int pos,
                 const float *inv_freq, float mscale) {
    int half = n_rot / 2, step = neox ? 1 : 2, off = neox ? half : 1;
    for (int i = 0; i < half; i++) {
        float val = (float)pos * inv_freq[i];
        float c = cosf(val) * mscale, s = sinf(val) * mscale;
        for (int h = 0; h < n_heads; h++) {
            float *p = x + h * head_dim + i * step;
            float x0 = p[0], x1 = p[off];
            p[0] = x0 * c - x1 * s;
            p[off] = x0 * s + x1 * c;
        }
    }
}

/* x[t][i] += b[i] for n rows of width w (qwen2's q/k/v biases). */
static void add_bias(float *x, const float *b, int n, int w) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < w; i++) x[(size_t)t * w + i] += b[i];
}

/* RMSNorm of each of n rows of width w in place (per-head q/k norms, post-norms). */
static void rmsnorm_rows(float *x, const float *wt, int n, int w, float eps) {
    for (int r = 0; r < n; r++) rmsnorm(x + (size_t)r * w, x + (size_t)r * w, wt, w, eps);
}

/* cap * tanh(x / cap): gemma2's soft capping of attention scores and logits. */
static inline float softcap(float x, float cap) { return cap * tanhf(x / cap); }

/* ---- attention ------------------------------------------------------------------------ */
typedef struct attn_job {
    fwd_state *st; /* the work buffers; each row's cache is st->row_st[row] */
    attn_fn fn;
    int layer, n;
    int n_sub;        /* each kv group's q heads split into this many work items */
    long n_items;     /* n_head_kv * n_sub * n */
    atomic_long next; /* next work item */
} attn_job;

/* Causal attention for the batch. A work item is (kv head, part of its q-head group, token):
 * the kernel loads each K/V row once for all the q heads it is given. The cost of a token
 * grows with its position, so threads take items from a shared counter, the last (longest)
 * tokens first, and the items of one kv head come together so that its cache rows stay warm.
 * Which heads share a call does not change their results (attn.h). */
/* Layer l's K blocks (attn.h) or V rows of kv head kvh: [cache_positions][head_dim] elements
 * of the cache's type. */
static void *cache_head(const fwd_state *st, void *cache, int type, int l, int kvh) {
    const duet_hparams *hp = &st->m->hp;
    return (char *)cache + ((size_t)l * hp->n_head_kv + (size_t)kvh) * (size_t)st->cap_pos *
                               (size_t)hp->head_dim * kv_size(type);
}

/* Element i of a cache head := x (rounded to nearest even for F16, as ggml stores it). */
static inline void cache_put(void *head, int type, size_t i, float x) {
    if (type == DT_F16) ((uint16_t *)head)[i] = fp32_to_fp16(x);
    else ((float *)head)[i] = x;
}

static void attn_worker(void *ctx, int ith, int nth) {
    attn_job *job = ctx;
    fwd_state *st = job->st;
    const duet_hparams *hp = &st->m->hp;
    int hd = hp->head_dim, H = hp->n_head, group = hp->n_head / hp->n_head_kv;
    const arch_params *ap = &st->m->ap;
    int window = st->m->layers[job->layer].swa ? ap->n_swa : 0;
    attn_args a = {.head_dim = hd, .v_stride = (size_t)hd, .scale = ap->attn_scale,
                   .softcap = ap->attn_softcap,
                   .scores = st->scores + (size_t)ith * attn_scratch_floats(group, st->n_ctx)};
    for (;;) {
        long w = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (w >= job->n_items) break;
        int t = job->n - 1 - (int)(w % job->n), part = (int)(w / job->n % job->n_sub);
        int kvh = (int)(w / job->n / job->n_sub);
        long h0, h1;
        tp_split(group, part, job->n_sub, &h0, &h1);
        int h = kvh * group + (int)h0;
        a.n_q = (int)(h1 - h0);
        a.q = st->q + ((size_t)t * H + h) * hd;
        a.out = st->att + ((size_t)t * H + h) * hd;
        const fwd_state *rs = st->row_st[t];
        a.k = cache_head(rs, rs->k_cache, rs->type_k, job->layer, kvh);
        a.v = cache_head(rs, rs->v_cache, rs->type_v, job->layer, kvh);
        a.type_k = rs->type_k;
        a.type_v = rs->type_v;
        a.p1 = st->row_pos[t] + 1;
        /* a sliding-window layer sees the last `window` positions, itself included */
        a.p0 = window && a.p1 > window ? a.p1 - window : 0;
        job->fn(&a);
    }
}

static void attention(fwd_state *st, int layer, int n) {
    const duet_hparams *hp = &st->m->hp;
    int nth = tp_n_threads(st->m->tp), group = hp->n_head / hp->n_head_kv;
    attn_job job = {.st = st, .fn = attn_kernel(kernels_level()), .layer = layer, .n = n,
                    .n_sub = 1};
    /* decode has only n_head_kv groups: split them when that leaves threads idle */
    while ((long)n * hp->n_head_kv * job.n_sub < 2L * nth && job.n_sub < group) job.n_sub++;
    job.n_items = (long)n * hp->n_head_kv * job.n_sub;
    atomic_init(&job.next, 0);
    tp_run(job.n_items > 1 ? st->m->tp : NULL, attn_worker, &job);
}

/* ---- the per-token steps between the matrix products -------------------------------------
 * Each runs over a range of tokens; with a large batch the range is split over the pool
 * (a token's values do not depend on the split), a small one stays on the calling thread,
 * where a wake-up would cost more than the work. */
typedef struct step_job {
    fwd_state *st; /* the work buffers and the rows' sequences (row_*) */
    int l, n;
    act_silu_mul_fn silu_mul;
    void (*fn)(struct step_job *j, int t0, int t1);
} step_job;

/* Tokens x elements (with a transcendental or a norm each) below which a step stays on the
 * calling thread: a few microseconds of work per thread. */
#define STEP_MIN_PER_THREAD 8192

static void step_worker(void *ctx, int ith, int nth) {
    step_job *j = ctx;
    long lo, hi;
    tp_split(j->n, ith, nth, &lo, &hi);
    if (lo < hi) j->fn(j, (int)lo, (int)hi);
}

static void run_step(step_job *j, void (*fn)(step_job *, int, int), size_t width) {
    threadpool *tp = j->st->m->tp;
    j->fn = fn;
    if (j->n > 1 && (size_t)j->n * width >= (size_t)STEP_MIN_PER_THREAD * tp_n_threads(tp))
        tp_run(tp, step_worker, j);
    else
        fn(j, 0, j->n);
}

/* Before layer l's attention: the previous layer's FFN output (post-normed) joins the
 * residual stream (layer 0: the embeddings do), then the attention norm. After the last
 * layer (l == n_layer), the output norm of the tokens that need outputs. */
static void step_pre_attn(step_job *j, int t0, int t1) {
    fwd_state *st = j->st;
    const duet_model *m = st->m;
    const duet_hparams *hp = &m->hp;
    int E = hp->n_embd;
    for (int t = t0; t < t1; t++) {
        float *x = st->x + (size_t)t * E, *pr = st->proj + (size_t)t * E;
        if (j->l == 0) {
            quant_dequantize_matrix_row(m->tok_embd.type, m->tok_embd.data, E, st->row_tok[t], x);
            if (m->ap.embd_scale != 1.0f)
                for (int i = 0; i < E; i++) x[i] *= m->ap.embd_scale;
        } else {
            const layer_weights *P = &m->layers[j->l - 1];
            if (P->ffn_post_norm) rmsnorm(pr, pr, P->ffn_post_norm, E, hp->rms_eps);
            for (int i = 0; i < E; i++) x[i] += pr[i];
        }
        if (j->l < hp->n_layer)
            rmsnorm(st->xb + (size_t)t * E, x, m->layers[j->l].attn_norm, E, hp->rms_eps);
        else if (st->row_out[t])
            rmsnorm(st->row_out[t], x, m->output_norm, E, hp->rms_eps);
    }
}

/* After q, k, v: biases, per-head norms, RoPE, and k, v into the cache. */
static void step_qkv(step_job *j, int t0, int t1) {
    fwd_state *st = j->st;
    const duet_hparams *hp = &st->m->hp;
    const arch_params *ap = &st->m->ap;
    const layer_weights *L = &st->m->layers[j->l];
    int hd = hp->head_dim, Q = hp->n_head * hd, KV = hp->n_head_kv * hd;
    for (int t = t0; t < t1; t++) {
        float *q = st->q + (size_t)t * Q, *k = st->k + (size_t)t * KV, *v = st->v + (size_t)t * KV;
        if (L->bq) add_bias(q, L->bq, 1, Q); /* each is optional on its own */
        if (L->bk) add_bias(k, L->bk, 1, KV);
        if (L->bv) add_bias(v, L->bv, 1, KV);
        if (L->q_norm) {
            rmsnorm_rows(q, L->q_norm, hp->n_head, hd, hp->rms_eps);
            rmsnorm_rows(k, L->k_norm, hp->n_head_kv, hd, hp->rms_eps);
        }
        fwd_state *rs = st->row_st[t];
        int pos = st->row_pos[t];
        rope(q, hp->n_head, hd, ap->n_rot, ap->rope_neox, pos, rs->rope_inv_freq, ap->rope_mscale);
        rope(k, hp->n_head_kv, hd, ap->n_rot, ap->rope_neox, pos, rs->rope_inv_freq, ap->rope_mscale);
        for (int g = 0; g < hp->n_head_kv; g++) {
            void *kc = cache_head(rs, rs->k_cache, rs->type_k, j->l, g);
            void *vc = cache_head(rs, rs->v_cache, rs->type_v, j->l, g);
            for (int d = 0; d < hd; d++) {
                cache_put(kc, rs->type_k, attn_k_index(pos, d, hd), k[g * hd + d]);
                cache_put(vc, rs->type_v, (size_t)pos * hd + d, v[g * hd + d]);
            }
        }
    }
}

/* After wo: the (post-normed) attention output joins the residual, then the FFN norm. */
static void step_post_attn(step_job *j, int t0, int t1) {
    fwd_state *st = j->st;
    const duet_hparams *hp = &st->m->hp;
    const layer_weights *L = &st->m->layers[j->l];
    int E = hp->n_embd;
    for (int t = t0; t < t1; t++) {
        float *x = st->x + (size_t)t * E, *pr = st->proj + (size_t)t * E;
        if (L->attn_post_norm) rmsnorm(pr, pr, L->attn_post_norm, E, hp->rms_eps);
        for (int i = 0; i < E; i++) x[i] += pr[i];
        rmsnorm(st->xb + (size_t)t * E, x, L->ffn_norm, E, hp->rms_eps);
    }
}

/* gate * up with the gate through GELU (tanh approximation, as ggml_gelu) or SiLU. */
static void step_glu(step_job *j, int t0, int t1) {
    fwd_state *st = j->st;
    size_t F = (size_t)st->m->hp.n_ff;
    float *hg = st->hg + t0 * F, *hu = st->hu + t0 * F;
    size_t n = (size_t)(t1 - t0) * F;
    if (!st->m->ap.ffn_gelu) {
        j->silu_mul(hg, hu, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float g = hg[i];
        hg[i] = 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))) * hu[i];
    }
}

/* y = W x for matrix mi (model_matrix index) of the model, plus its adapters' s B (A x). */
static void matmul(fwd_state *st, int mi, const float *x, int n, float *y) {
    const mtensor *w = model_matrix((duet_model *)st->m, mi);
    kernels_matmul(st->m->tp, w->type, w->data, w->n_in, w->n_out, x, n, y, st->scratch);
    if (st->lora_t) lora_apply(st->m, mi, x, n, y, st->lora_t, st->lora_u, st->scratch);
}

void fwd_eval_batch(fwd_state *st, const fwd_seq *seqs, int n_seqs) {
    const duet_model *m = st->m;
    const duet_hparams *hp = &m->hp;
    int E = hp->n_embd, F = hp->n_ff, Q = hp->n_head * hp->head_dim, n = 0;
    for (int i = 0; i < n_seqs; i++)
        for (int t = 0; t < seqs[i].n; t++, n++) {
            st->row_st[n] = seqs[i].st;
            st->row_pos[n] = seqs[i].pos + t;
            st->row_tok[n] = seqs[i].tokens[t];
            st->row_out[n] = t >= seqs[i].first_out
                                 ? seqs[i].hidden + (size_t)(t - seqs[i].first_out) * E : NULL;
        }
    step_job j = {.st = st, .n = n, .silu_mul = act_silu_mul(kernels_level())};
    for (int l = 0; l < hp->n_layer; l++) {
        j.l = l;
        run_step(&j, step_pre_attn, (size_t)E);
        int mi = 1 + 7 * l; /* model_matrix index of the layer's first matrix */
        matmul(st, mi + MAT_Q, st->xb, n, st->q);
        matmul(st, mi + MAT_K, st->xb, n, st->k);
        matmul(st, mi + MAT_V, st->xb, n, st->v);
        run_step(&j, step_qkv, (size_t)Q);
        attention(st, l, n);
        matmul(st, mi + MAT_O, st->att, n, st->proj);
        run_step(&j, step_post_attn, (size_t)E);
        matmul(st, mi + MAT_GATE, st->xb, n, st->hg);
        matmul(st, mi + MAT_UP, st->xb, n, st->hu);
        run_step(&j, step_glu, (size_t)F);
        matmul(st, mi + MAT_DOWN, st->hg, n, st->proj);
    }
    j.l = hp->n_layer;
    run_step(&j, step_pre_attn, (size_t)E);
}

void fwd_eval(fwd_state *st, const int32_t *tokens, int n, int pos, int first_out,
              float *hidden, float *logits) {
    fwd_seq one = {.st = st, .tokens = tokens, .n = n, .pos = pos, .first_out = first_out,
                   .hidden = hidden};
    fwd_eval_batch(st, &one, 1);
    if (logits) fwd_logits(st, hidden, n - first_out, logits);
}

void fwd_logits(fwd_state *st, const float *hidden, int n, float *logits) {
    matmul(st, 0, hidden, n, logits);
    float cap = st->m->ap.final_softcap;
    if (cap > 0)
        for (size_t i = 0; i < (size_t)n * st->m->hp.n_vocab; i++)
            logits[i] = softcap(logits[i], cap);
}
