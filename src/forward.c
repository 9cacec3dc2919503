/*
 * forward.c: transformer forward (RMSNorm, RoPE, grouped-query attention, gated FFN) for a
 * batch of consecutive tokens against the KV cache. The llama path is the plain one; the
 * other architectures add steps where their weights or arch_params say so (qwen2 q/k/v
 * biases, qwen3 per-head q/k norms, gemma2 embedding scale, soft caps, post-norms, GELU and
 * sliding windows; phi3's fused matrices are split at load and need nothing here). Matrix
 * products go through kernels_matmul (threaded, SIMD); attention is split over (token, head)
 * pairs across the pool. Elementwise steps are cheap next to the matrices and stay on the
 * calling thread.
 */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"
#include "quant.h"

int fwd_init(fwd_state *st, const duet_model *m, int n_ctx, int n_batch, duet_error *err) {
    memset(st, 0, sizeof *st);
    const duet_hparams *hp = &m->hp;
    st->m = m;
    st->n_ctx = n_ctx;
    st->n_batch = n_batch;
    st->rope_inv_freq = m->rope_inv_freq_long && n_ctx > m->n_ctx_orig ? m->rope_inv_freq_long
                                                                        : m->rope_inv_freq;
    size_t E = (size_t)hp->n_embd, Q = (size_t)hp->n_head * hp->head_dim,
           KV = (size_t)hp->n_head_kv * hp->head_dim, F = (size_t)hp->n_ff, B = (size_t)n_batch;
    size_t cache = (size_t)hp->n_layer * (size_t)n_ctx * KV * sizeof(float);
    int nth = tp_n_threads(m->tp);
    size_t scratch = 0;
    for (int l = 0; l < hp->n_layer; l++) {
        const layer_weights *L = &m->layers[l];
        const mtensor *ts[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++)
            scratch = DUET_MAX(scratch, kernels_matmul_scratch(ts[i]->type, ts[i]->n_in, n_batch));
    }
    scratch = DUET_MAX(scratch, kernels_matmul_scratch(m->output.type, m->output.n_in, n_batch));
    st->k_cache = duet_aalloc(cache);
    st->v_cache = duet_aalloc(cache);
    st->x = duet_aalloc(B * E * 4);
    st->xb = duet_aalloc(B * E * 4);
    st->q = duet_aalloc(B * Q * 4);
    st->k = duet_aalloc(B * KV * 4);
    st->v = duet_aalloc(B * KV * 4);
    st->att = duet_aalloc(B * Q * 4);
    st->proj = duet_aalloc(B * E * 4);
    st->hg = duet_aalloc(B * F * 4);
    st->hu = duet_aalloc(B * F * 4);
    st->scores = duet_aalloc((size_t)nth * (size_t)n_ctx * 4);
    st->scratch = duet_aalloc(scratch);
    if (!st->k_cache || !st->v_cache || !st->x || !st->xb || !st->q || !st->k || !st->v ||
        !st->att || !st->proj || !st->hg || !st->hu || !st->scores || !st->scratch) {
        fwd_free(st);
        return duet_fail(err, DUET_ERR_NOMEM,
                         "%s: cannot allocate buffers for n_ctx %d, n_batch %d (KV cache %zu MiB)",
                         m->path, n_ctx, n_batch, 2 * cache >> 20);
    }
    return DUET_OK;
}

void fwd_free(fwd_state *st) {
    if (!st) return;
    float *bufs[] = {st->k_cache, st->v_cache, st->x, st->xb, st->q, st->k, st->v,
                     st->att, st->proj, st->hg, st->hu, st->scores};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) duet_afree(bufs[i]);
    duet_afree(st->scratch);
    memset(st, 0, sizeof *st);
}

static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
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

typedef struct attn_job {
    fwd_state *st;
    int layer, n, pos;
} attn_job;

/* Causal attention for the batch: work item = (token t, head h), split over threads. */
static void attn_worker(void *ctx, int ith, int nth) {
    attn_job *job = ctx;
    fwd_state *st = job->st;
    const duet_hparams *hp = &st->m->hp;
    int hd = hp->head_dim, H = hp->n_head, group = hp->n_head / hp->n_head_kv;
    size_t KV = (size_t)hp->n_head_kv * hd;
    const float *kc = st->k_cache + (size_t)job->layer * st->n_ctx * KV;
    const float *vc = st->v_cache + (size_t)job->layer * st->n_ctx * KV;
    float *sc = st->scores + (size_t)ith * st->n_ctx;
    const arch_params *ap = &st->m->ap;
    float scale = ap->attn_scale, cap = ap->attn_softcap;
    int window = st->m->layers[job->layer].swa ? ap->n_swa : 0;
    long lo, hi;
    tp_split((long)job->n * H, ith, nth, &lo, &hi);
    for (long w = lo; w < hi; w++) {
        int t = (int)(w / H), h = (int)(w % H), kvh = h / group;
        int n_pos = job->pos + t + 1;
        /* a sliding-window layer sees the last `window` positions, itself included */
        int p0 = window && n_pos > window ? n_pos - window : 0;
        const float *q = st->q + ((size_t)t * H + h) * hd;
        float mx = -INFINITY;
        for (int p = p0; p < n_pos; p++) {
            const float *k = kc + (size_t)p * KV + (size_t)kvh * hd;
            float s = kvec_dot_f32(q, k, hd) * scale;
            if (cap > 0) s = softcap(s, cap);
            sc[p] = s;
            mx = s > mx ? s : mx;
        }
        float sum = 0;
        for (int p = p0; p < n_pos; p++) {
            sc[p] = expf(sc[p] - mx);
            sum += sc[p];
        }
        float inv = 1.0f / sum;
        float *o = st->att + ((size_t)t * H + h) * hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int p = p0; p < n_pos; p++) {
            const float *v = vc + (size_t)p * KV + (size_t)kvh * hd;
            float a = sc[p] * inv;
            for (int i = 0; i < hd; i++) o[i] += a * v[i];
        }
    }
}

static void matmul(fwd_state *st, const mtensor *w, const float *x, int n, float *y) {
    kernels_matmul(st->m->tp, w->type, w->data, w->n_in, w->n_out, x, n, y, st->scratch);
}

void fwd_eval(fwd_state *st, const int32_t *tokens, int n, int pos, int first_out,
              float *hidden, float *logits) {
    const duet_model *m = st->m;
    const duet_hparams *hp = &m->hp;
    const arch_params *ap = &m->ap;
    int E = hp->n_embd, F = hp->n_ff, hd = hp->head_dim;
    int Q = hp->n_head * hd, KV = hp->n_head_kv * hd;
    size_t erow = dtype_row_size(m->tok_embd.type, E);

    for (int t = 0; t < n; t++)
        quant_dequantize_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data +
                             (size_t)tokens[t] * erow, st->x + (size_t)t * E, E);
    if (ap->embd_scale != 1.0f)
        for (size_t i = 0; i < (size_t)n * E; i++) st->x[i] *= ap->embd_scale;

    for (int l = 0; l < hp->n_layer; l++) {
        const layer_weights *L = &m->layers[l];
        for (int t = 0; t < n; t++)
            rmsnorm(st->xb + (size_t)t * E, st->x + (size_t)t * E, L->attn_norm, E, hp->rms_eps);
        matmul(st, &L->wq, st->xb, n, st->q);
        matmul(st, &L->wk, st->xb, n, st->k);
        matmul(st, &L->wv, st->xb, n, st->v);
        float *kc = st->k_cache + ((size_t)l * st->n_ctx + (size_t)pos) * KV;
        float *vc = st->v_cache + ((size_t)l * st->n_ctx + (size_t)pos) * KV;
        if (L->bq) add_bias(st->q, L->bq, n, Q); /* each is optional on its own */
        if (L->bk) add_bias(st->k, L->bk, n, KV);
        if (L->bv) add_bias(st->v, L->bv, n, KV);
        if (L->q_norm) {
            rmsnorm_rows(st->q, L->q_norm, n * hp->n_head, hd, hp->rms_eps);
            rmsnorm_rows(st->k, L->k_norm, n * hp->n_head_kv, hd, hp->rms_eps);
        }
        for (int t = 0; t < n; t++) {
            rope(st->q + (size_t)t * Q, hp->n_head, hd, ap->n_rot, ap->rope_neox, pos + t,
                 st->rope_inv_freq, ap->rope_mscale);
            rope(st->k + (size_t)t * KV, hp->n_head_kv, hd, ap->n_rot, ap->rope_neox, pos + t,
                 st->rope_inv_freq, ap->rope_mscale);
        }
        memcpy(kc, st->k, (size_t)n * KV * sizeof(float));
        memcpy(vc, st->v, (size_t)n * KV * sizeof(float));
        attn_job job = {st, l, n, pos};
        tp_run(m->tp, attn_worker, &job);
        matmul(st, &L->wo, st->att, n, st->proj);
        if (L->attn_post_norm) rmsnorm_rows(st->proj, L->attn_post_norm, n, E, hp->rms_eps);
        for (size_t i = 0; i < (size_t)n * E; i++) st->x[i] += st->proj[i];

        for (int t = 0; t < n; t++)
            rmsnorm(st->xb + (size_t)t * E, st->x + (size_t)t * E, L->ffn_norm, E, hp->rms_eps);
        matmul(st, &L->w_gate, st->xb, n, st->hg);
        matmul(st, &L->w_up, st->xb, n, st->hu);
        if (ap->ffn_gelu) {
            for (size_t i = 0; i < (size_t)n * F; i++) {
                float g = st->hg[i]; /* GELU, tanh approximation (as ggml_gelu) */
                st->hg[i] = 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g)))
                            * st->hu[i];
            }
        } else {
            for (size_t i = 0; i < (size_t)n * F; i++) {
                float g = st->hg[i];
                st->hg[i] = g / (1.0f + expf(-g)) * st->hu[i];
            }
        }
        matmul(st, &L->w_down, st->hg, n, st->proj);
        if (L->ffn_post_norm) rmsnorm_rows(st->proj, L->ffn_post_norm, n, E, hp->rms_eps);
        for (size_t i = 0; i < (size_t)n * E; i++) st->x[i] += st->proj[i];
    }
    int n_out = n - first_out;
    for (int t = 0; t < n_out; t++)
        rmsnorm(hidden + (size_t)t * E, st->x + (size_t)(first_out + t) * E, m->output_norm, E,
                hp->rms_eps);
    if (logits) fwd_logits(st, hidden, n_out, logits);
}

void fwd_logits(fwd_state *st, const float *hidden, int n, float *logits) {
    matmul(st, &st->m->output, hidden, n, logits);
    float cap = st->m->ap.final_softcap;
    if (cap > 0)
        for (size_t i = 0; i < (size_t)n * st->m->hp.n_vocab; i++)
            logits[i] = softcap(logits[i], cap);
}
