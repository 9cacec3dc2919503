/*
 * lm_impl.h: the trainer's ops and whole-model forward/backward, written once for a real
 * type and included by lm_model.c (R = float, the trainer) and by tests/test_lm_train.c
 * (R = double, checked against central finite differences). Before including, define
 *   LM_R        the real type
 *   LM_T(name)  the name of a type or function of this instantiation
 * Every function is static to the including file.
 *
 * Conventions: matrices row-major [n_out][n_in] (y = x W^T); "_bwd" functions ADD into
 * gradients of inputs that can have several consumers (dx, dW) and SET the others (noted).
 * Each gradient element is produced by one thread with a fixed order of summation, so the
 * result does not depend on the thread count (see lm.h).
 *
 * A frozen base's matrices (LoRA training) are read from their blocks: the backward pass
 * dequantises one row at a time. The forward product is the engine's kernel when the
 * includer defines LM_FROZEN_KERNELS (R must be float then: the trainer computes exactly what
 * inference will), else a dequantised row dotted in R (the double tests' reference).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "format/quant.h"
#include "train/lm.h"
#ifdef LM_FROZEN_KERNELS
#include "engine/kernels.h"
#include "train/lm_frozen.h"
#endif

#define R LM_R
#define LMS static __attribute__((unused))
#define RX(fn) _Generic((R)0, float: fn##f, default: fn)

/* 8 independent partial sums (the compiler vectorises across them), added in a fixed order. */
LMS R LM_T(dot)(const R *a, const R *b, int n) {
    R s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    R t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) t += a[i] * b[i];
    return t;
}

LMS void LM_T(axpy)(R *y, R a, const R *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* ---- embedding ------------------------------------------------------------------------ */
LMS void LM_T(embed_fwd)(R *x, const int32_t *tok, int n, const R *emb, int dim) {
    for (int t = 0; t < n; t++) memcpy(x + (size_t)t * dim, emb + (size_t)tok[t] * dim, (size_t)dim * sizeof(R));
}
/* Token order, one thread: rows of the same token add up in a fixed order. */
LMS void LM_T(embed_bwd)(R *demb, const int32_t *tok, int n, const R *dx, int dim) {
    for (int t = 0; t < n; t++) LM_T(axpy)(demb + (size_t)tok[t] * dim, 1, dx + (size_t)t * dim, dim);
}

/* ---- RMSNorm: y = w * x / sqrt(mean(x^2) + eps) (the engine's arithmetic for float) ---- */
LMS void LM_T(rmsnorm_fwd)(R *y, R *rstd, const R *x, const R *w, int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const R *xr = x + (size_t)t * dim;
        R *yr = y + (size_t)t * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
        R r = (R)1 / RX(sqrt)((R)(ss / dim) + (R)eps);
        rstd[t] = r;
        for (int i = 0; i < dim; i++) yr[i] = w[i] * (r * xr[i]);
    }
}
/* dx += r * (w dy) - r^3/dim * x * sum(w dy x);  dw += sum_t dy * x * r (dw NULL: none) */
LMS void LM_T(rmsnorm_bwd)(R *dx, R *dw, const R *dy, const R *x, const R *w, const R *rstd,
                           int n, int dim) {
    for (int t = 0; t < n; t++) {
        const R *xr = x + (size_t)t * dim, *dyr = dy + (size_t)t * dim;
        R *dxr = dx + (size_t)t * dim, r = rstd[t];
        double dot = 0;
        for (int i = 0; i < dim; i++) dot += (double)w[i] * dyr[i] * xr[i];
        R c = (R)(dot * r * r * r / dim);
        for (int i = 0; i < dim; i++) dxr[i] += r * w[i] * dyr[i] - c * xr[i];
    }
    if (!dw) return; /* a frozen norm */
    for (int t = 0; t < n; t++) {
        const R *xr = x + (size_t)t * dim, *dyr = dy + (size_t)t * dim;
        R r = rstd[t];
        for (int i = 0; i < dim; i++) dw[i] += dyr[i] * xr[i] * r;
    }
}

/* ---- matrix products: y[n][out] = x[n][in] W[out][in]^T ------------------------------ */
typedef struct LM_T(mm_job) {
    R *y, *dx, *dW;
    const R *x, *W, *dy;
    int n, in, out;
} LM_T(mm_job);

#define LM_NB 16  /* token block: a block of x rows stays in cache across the W rows */

static void LM_T(mm_fwd_worker)(void *ctx, int ith, int nth) {
    LM_T(mm_job) *j = ctx;
    long lo, hi;
    tp_split(j->out, ith, nth, &lo, &hi);
    for (int t0 = 0; t0 < j->n; t0 += LM_NB) {
        int t1 = DUET_MIN(j->n, t0 + LM_NB);
        for (long o = lo; o < hi; o++) {
            const R *wr = j->W + (size_t)o * j->in;
            for (int t = t0; t < t1; t++)
                j->y[(size_t)t * j->out + o] = LM_T(dot)(j->x + (size_t)t * j->in, wr, j->in);
        }
    }
}
LMS void LM_T(matmul_fwd)(threadpool *tp, R *y, const R *x, const R *W, int n, int in, int out) {
    LM_T(mm_job) j = {.y = y, .x = x, .W = W, .n = n, .in = in, .out = out};
    tp_run(tp, LM_T(mm_fwd_worker), &j);
}

/* dx[t] += sum_o dy[t][o] W[o]  (rows of dx split over threads);
 * dW[o] += sum_t dy[t][o] x[t]  (rows of dW split over threads), t ascending. */
static void LM_T(mm_bwd_worker)(void *ctx, int ith, int nth) {
    LM_T(mm_job) *j = ctx;
    long lo, hi;
    if (j->dx) {
        tp_split(j->n, ith, nth, &lo, &hi);
        for (long t = lo; t < hi; t++) {
            R *dxr = j->dx + (size_t)t * j->in;
            const R *dyr = j->dy + (size_t)t * j->out;
            for (int o = 0; o < j->out; o++)
                if (dyr[o] != 0) LM_T(axpy)(dxr, dyr[o], j->W + (size_t)o * j->in, j->in);
        }
    }
    tp_split(j->out, ith, nth, &lo, &hi);
    for (int t0 = 0; t0 < j->n; t0 += LM_NB) {
        int t1 = DUET_MIN(j->n, t0 + LM_NB);
        for (long o = lo; o < hi; o++) {
            R *dwr = j->dW + (size_t)o * j->in;
            for (int t = t0; t < t1; t++) {
                R d = j->dy[(size_t)t * j->out + o];
                if (d != 0) LM_T(axpy)(dwr, d, j->x + (size_t)t * j->in, j->in);
            }
        }
    }
}
/* dx may be NULL (no gradient wanted for the input). */
LMS void LM_T(matmul_bwd)(threadpool *tp, R *dx, R *dW, const R *dy, const R *x, const R *W,
                          int n, int in, int out) {
    LM_T(mm_job) j = {.dx = dx, .dW = dW, .dy = dy, .x = x, .W = W, .n = n, .in = in, .out = out};
    tp_run(tp, LM_T(mm_bwd_worker), &j);
}

/* ---- a frozen base's matrices, straight from their blocks ---------------------------------
 * W is an mtensor in the file's type (any the engine reads). Each thread dequantises the rows
 * it needs into its own buffers (f: float, r: R), [nth][row_cap] in the activations. */
typedef struct LM_T(fz_job) {
    R *y, *dx;
    const R *x, *dy;
    const mtensor *W;
    float *f;
    R *r;
    int n, row_cap;
} LM_T(fz_job);

/* Row o of W as R: F32 rows are read in place when R is float; others are dequantised into
 * f and, when R is not float, converted into r. */
static inline const R *LM_T(fz_row)(const mtensor *W, int64_t o, float *f, R *r) {
    if (sizeof(R) == sizeof(float) && W->type == DT_F32)
        return (const R *)(const void *)((const float *)W->data + o * W->n_in);
    quant_dequantize_matrix_row(W->type, W->data, W->n_in, o, f);
    if (sizeof(R) == sizeof(float)) return (const R *)(const void *)f;
    for (int64_t i = 0; i < W->n_in; i++) r[i] = (R)f[i];
    return r;
}

/* y[t][o] = W[o] . x[t] with the row dequantised (rows split over threads). */
static __attribute__((unused)) void LM_T(fz_fwd_worker)(void *ctx, int ith, int nth) {
    LM_T(fz_job) *j = ctx;
    int in = (int)j->W->n_in, out = (int)j->W->n_out;
    float *f = j->f + (size_t)ith * j->row_cap;
    R *r = j->r + (size_t)ith * j->row_cap;
    long lo, hi;
    tp_split(out, ith, nth, &lo, &hi);
    for (long o = lo; o < hi; o++) {
        const R *wr = LM_T(fz_row)(j->W, o, f, r);
        for (int t = 0; t < j->n; t++)
            j->y[(size_t)t * out + o] = LM_T(dot)(j->x + (size_t)t * in, wr, in);
    }
}

#define LM_FZ_TB 32 /* tokens whose dx rows take each dequantised row while it is in cache */

/* dx[t] += sum_o dy[t][o] W[o], o ascending, every dx row by one thread (tokens split over
 * threads): the same bits for any thread count. Rows with no gradient in a tile of tokens
 * are not dequantised. */
static __attribute__((unused)) void LM_T(fz_bwd_worker)(void *ctx, int ith, int nth) {
    LM_T(fz_job) *j = ctx;
    int in = (int)j->W->n_in, out = (int)j->W->n_out;
    float *f = j->f + (size_t)ith * j->row_cap;
    R *r = j->r + (size_t)ith * j->row_cap;
    long lo, hi;
    tp_split(j->n, ith, nth, &lo, &hi);
    for (long t0 = lo; t0 < hi; t0 += LM_FZ_TB) {
        long t1 = DUET_MIN(hi, t0 + LM_FZ_TB);
        for (int o = 0; o < out; o++) {
            int any = 0;
            for (long t = t0; t < t1 && !any; t++) any = j->dy[(size_t)t * out + o] != 0;
            if (!any) continue;
            const R *wr = LM_T(fz_row)(j->W, o, f, r);
            for (long t = t0; t < t1; t++) {
                R d = j->dy[(size_t)t * out + o];
                if (d != 0) LM_T(axpy)(j->dx + (size_t)t * in, d, wr, in);
            }
        }
    }
}

/* x[t] = row tok[t] of the frozen embedding (dequantised). f: [dim] floats of scratch. */
LMS void LM_T(frozen_embed)(R *x, const int32_t *tok, int n, const mtensor *E, float *f) {
    int dim = (int)E->n_in;
    for (int t = 0; t < n; t++) {
        R *xr = x + (size_t)t * dim;
        if (sizeof(R) == sizeof(float)) {
            quant_dequantize_matrix_row(E->type, E->data, dim, tok[t], (float *)(void *)xr);
            continue;
        }
        quant_dequantize_matrix_row(E->type, E->data, dim, tok[t], f);
        for (int i = 0; i < dim; i++) xr[i] = (R)f[i];
    }
}

/* ---- RoPE: rotate pairs (2i, 2i+1) of each head by pos * inv_freq[i] ------------------- */
/* cs/sn: [T][hd/2] tables; x: [B*T][nh*hd]; the position of row r is r % T. */
LMS void LM_T(rope_tables)(R *cs, R *sn, int T, int hd, const float *inv_freq) {
    for (int p = 0; p < T; p++)
        for (int i = 0; i < hd / 2; i++) {
            R val = (R)p * (R)inv_freq[i];
            cs[p * (hd / 2) + i] = RX(cos)(val);
            sn[p * (hd / 2) + i] = RX(sin)(val);
        }
}
/* sign = +1: forward rotation; -1: its transpose (the backward pass of the rotation).
 * neox: the pairs are (i, i + hd/2), as qwen2/qwen3 files expect, instead of (2i, 2i+1). */
LMS void LM_T(rope)(R *x, int n, int T, int nh, int hd, const R *cs, const R *sn, int sign,
                    int neox) {
    int step = neox ? 1 : 2, off = neox ? hd / 2 : 1;
    for (int r = 0; r < n; r++) {
        int p = r % T;
        for (int h = 0; h < nh; h++) {
            R *v = x + ((size_t)r * nh + h) * hd;
            for (int i = 0; i < hd / 2; i++) {
                R c = cs[p * (hd / 2) + i], s = sign * sn[p * (hd / 2) + i];
                R x0 = v[i * step], x1 = v[i * step + off];
                v[i * step] = x0 * c - x1 * s;
                v[i * step + off] = x0 * s + x1 * c;
            }
        }
    }
}

/* ---- causal grouped-query attention ------------------------------------------------------ */
typedef struct LM_T(attn_job) {
    R *out, *prob, *dq, *dk, *dv;
    const R *q, *k, *v, *dout, *cprob;
    int B, T, H, Hkv, hd;
} LM_T(attn_job);

/* prob: [B][H][T][T] softmax rows (entries past t are zero). Work item: (b, h). */
static void LM_T(attn_fwd_worker)(void *ctx, int ith, int nth) {
    LM_T(attn_job) *j = ctx;
    int T = j->T, H = j->H, hd = j->hd, group = H / j->Hkv;
    size_t Q = (size_t)H * hd, KV = (size_t)j->Hkv * hd;
    R scale = (R)1 / RX(sqrt)((R)hd);
    long lo, hi;
    tp_split((long)j->B * H, ith, nth, &lo, &hi);
    for (long w = lo; w < hi; w++) {
        int b = (int)(w / H), h = (int)(w % H), kvh = h / group;
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)b * T + t;
            const R *q = j->q + r * Q + (size_t)h * hd;
            R *pr = j->prob + (((size_t)b * H + h) * T + t) * T;
            R mx = -INFINITY;
            for (int s = 0; s <= t; s++) {
                pr[s] = LM_T(dot)(q, j->k + ((size_t)b * T + s) * KV + (size_t)kvh * hd, hd) * scale;
                if (pr[s] > mx) mx = pr[s];
            }
            R sum = 0;
            for (int s = 0; s <= t; s++) { pr[s] = RX(exp)(pr[s] - mx); sum += pr[s]; }
            R inv = 1 / sum;
            for (int s = 0; s <= t; s++) pr[s] *= inv;
            for (int s = t + 1; s < T; s++) pr[s] = 0;
            R *o = j->out + r * Q + (size_t)h * hd;
            memset(o, 0, (size_t)hd * sizeof(R));
            for (int s = 0; s <= t; s++)
                LM_T(axpy)(o, pr[s], j->v + ((size_t)b * T + s) * KV + (size_t)kvh * hd, hd);
        }
    }
}
LMS void LM_T(attn_fwd)(threadpool *tp, R *out, R *prob, const R *q, const R *k, const R *v,
                        int B, int T, int H, int Hkv, int hd) {
    LM_T(attn_job) j = {.out = out, .prob = prob, .q = q, .k = k, .v = v, .B = B, .T = T,
                        .H = H, .Hkv = Hkv, .hd = hd};
    tp_run(tp, LM_T(attn_fwd_worker), &j);
}

/* Work item (b, kv head): the heads of a group write the same dk/dv rows, so they run in one
 * item in a fixed order. dq, dk, dv are SET. */
static void LM_T(attn_bwd_worker)(void *ctx, int ith, int nth) {
    LM_T(attn_job) *j = ctx;
    int T = j->T, H = j->H, hd = j->hd, group = H / j->Hkv;
    size_t Q = (size_t)H * hd, KV = (size_t)j->Hkv * hd;
    R scale = (R)1 / RX(sqrt)((R)hd);
    long lo, hi;
    tp_split((long)j->B * j->Hkv, ith, nth, &lo, &hi);
    R dp[T > 0 ? T : 1];
    for (long w = lo; w < hi; w++) {
        int b = (int)(w / j->Hkv), kvh = (int)(w % j->Hkv);
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)b * T + t;
            memset(j->dk + r * KV + (size_t)kvh * hd, 0, (size_t)hd * sizeof(R));
            memset(j->dv + r * KV + (size_t)kvh * hd, 0, (size_t)hd * sizeof(R));
        }
        for (int h = kvh * group; h < (kvh + 1) * group; h++)
            for (int t = 0; t < T; t++) {
                size_t r = (size_t)b * T + t;
                const R *pr = j->cprob + (((size_t)b * H + h) * T + t) * T;
                const R *dout = j->dout + r * Q + (size_t)h * hd;
                const R *q = j->q + r * Q + (size_t)h * hd;
                R *dq = j->dq + r * Q + (size_t)h * hd;
                /* dp_s = dout . v_s; dv_s += p_s dout; dscore_s = p_s (dp_s - sum p dp) */
                R sum = 0;
                for (int s = 0; s <= t; s++) {
                    size_t rs = ((size_t)b * T + s) * KV + (size_t)kvh * hd;
                    dp[s] = LM_T(dot)(dout, j->v + rs, hd);
                    sum += pr[s] * dp[s];
                    LM_T(axpy)(j->dv + rs, pr[s], dout, hd);
                }
                memset(dq, 0, (size_t)hd * sizeof(R));
                for (int s = 0; s <= t; s++) {
                    size_t rs = ((size_t)b * T + s) * KV + (size_t)kvh * hd;
                    R ds = pr[s] * (dp[s] - sum) * scale;
                    LM_T(axpy)(dq, ds, j->k + rs, hd);
                    LM_T(axpy)(j->dk + rs, ds, q, hd);
                }
            }
    }
}
LMS void LM_T(attn_bwd)(threadpool *tp, R *dq, R *dk, R *dv, const R *dout, const R *prob,
                        const R *q, const R *k, const R *v, int B, int T, int H, int Hkv, int hd) {
    LM_T(attn_job) j = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .cprob = prob, .q = q,
                        .k = k, .v = v, .B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd};
    tp_run(tp, LM_T(attn_bwd_worker), &j);
}

/* ---- SwiGLU: h = silu(g) * u ---------------------------------------------------------- */
LMS void LM_T(swiglu_fwd)(R *h, const R *g, const R *u, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = g[i] / (1 + RX(exp)(-g[i])) * u[i];
}
/* dg, du are SET. */
LMS void LM_T(swiglu_bwd)(R *dg, R *du, const R *dh, const R *g, const R *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        R sg = 1 / (1 + RX(exp)(-g[i]));
        du[i] = dh[i] * g[i] * sg;
        dg[i] = dh[i] * u[i] * sg * (1 + g[i] * (1 - sg));
    }
}

/* ---- the loss ------------------------------------------------------------------------- */
static double LM_T(log_sig)(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }

typedef struct LM_T(loss_job) {
    R *logits;        /* [n][V] in, d loss / d logits out (when backward) */
    const R *hidden;  /* [n][E] (COLLM) */
    const R *u;       /* [E] (COLLM) */
    R *ds;            /* [n] d loss / d s_t (COLLM) */
    double *loss;     /* [n] weighted loss per position */
    float *lp, *sc;   /* [n] target log-prob, head score */
    const lm_batch *b;
    int n, V, E, backward;
} LM_T(loss_job);

/* LM_LOSS_WEAK at position t (lm.h): the deferral logit s joins the V logits as one more
 * class of the softmax, as the official trainer's extra output row does, so the token
 * cross-entropy's normaliser includes exp(s); z holds logits in, gradients out. */
static void LM_T(weak_token)(LM_T(loss_job) *j, long t, R *z, R mx, double sum, int y, double wt) {
    const lm_batch *b = j->b;
    double s = LM_T(dot)(j->hidden + (size_t)t * j->E, j->u, j->E);
    double m2 = s > (double)mx ? s : (double)mx;
    double sum2 = sum * exp((double)mx - m2) + exp(s - m2);
    double ce = -((double)z[y] - m2 - log(sum2));
    double lab = b->lpe[t], pw = LM_WEAK_POS_WEIGHT;
    double sg = 1 / (1 + exp(-s));
    double bce = -(pw * lab * LM_T(log_sig)(s) + (1 - lab) * LM_T(log_sig)(-s));
    j->sc[t] = (float)s;
    j->loss[t] = wt == 0 ? 0 : wt * (LM_WEAK_CE_SHARE * ce + (1 - LM_WEAK_CE_SHARE) * bce);
    /* dCE/ds = softmax share of s; dBCE/ds = pw z (sig - 1) + (1 - z) sig */
    double ps = exp(s - m2) / sum2;
    j->ds[t] = wt == 0 ? 0
                       : (R)(wt * b->scale *
                             (LM_WEAK_CE_SHARE * ps +
                              (1 - LM_WEAK_CE_SHARE) * (pw * lab * (sg - 1) + (1 - lab) * sg)));
    if (!j->backward) return;
    R f = (R)(wt * b->scale * LM_WEAK_CE_SHARE), inv = (R)(exp((double)mx - m2) / sum2);
    for (int v = 0; v < j->V; v++) z[v] = f * RX(exp)(z[v] - mx) * inv;
    z[y] -= f;
}

static void LM_T(loss_worker)(void *ctx, int ith, int nth) {
    LM_T(loss_job) *j = ctx;
    const lm_batch *b = j->b;
    long lo, hi;
    tp_split(j->n, ith, nth, &lo, &hi);
    for (long t = lo; t < hi; t++) {
        R *z = j->logits + (size_t)t * j->V;
        int y = b->targets[t];
        double wt = b->weight ? b->weight[t] : 1.0;
        R mx = z[0];
        for (int v = 1; v < j->V; v++) if (z[v] > mx) mx = z[v];
        double sum = 0;
        for (int v = 0; v < j->V; v++) sum += RX(exp)(z[v] - mx);
        double lpb = (double)(z[y] - mx) - log(sum);
        j->lp[t] = (float)lpb;
        double gz = 1.0; /* weight of the base's token gradient: 1, or (1 - q) under COLLM */
        if (b->loss == LM_LOSS_WEAK) {
            LM_T(weak_token)(j, t, z, mx, sum, y, wt);
            continue;
        }
        if (b->loss == LM_LOSS_COLLM && wt == 0) { /* no expert log-prob here: no loss */
            j->sc[t] = (float)LM_T(dot)(j->hidden + (size_t)t * j->E, j->u, j->E);
            j->loss[t] = 0;
            j->ds[t] = 0;
            gz = 0;
        } else if (b->loss == LM_LOSS_COLLM) {
            double s = LM_T(dot)(j->hidden + (size_t)t * j->E, j->u, j->E);
            double a = LM_T(log_sig)(-s) + lpb, c = LM_T(log_sig)(s) + b->lpe[t];
            double m = a > c ? a : c, lse = m + log(exp(a - m) + exp(c - m));
            double q = exp(c - lse); /* posterior that the expert wrote the token */
            j->sc[t] = (float)s;
            j->loss[t] = wt * -lse;
            gz = 1 - q;
            j->ds[t] = (R)(wt * b->scale * (1 / (1 + exp(-s)) - q));
        } else {
            j->loss[t] = wt * -lpb;
        }
        if (!j->backward) continue;
        R f = (R)(wt * b->scale * gz), inv = (R)(1 / sum);
        for (int v = 0; v < j->V; v++) z[v] = f * RX(exp)(z[v] - mx) * inv;
        z[y] -= f;
    }
}

/* ---- activations of a micro-batch ---------------------------------------------------------- */
struct LM_T(acts) {
    int B, T, n_layer;
    /* saved for backward, per layer l at [l][...]: */
    R *x;        /* [L][BT][E] layer inputs */
    R *xmid;     /* [L][BT][E] after attention's residual */
    R *xn1, *xn2;/* [BT][E] normed inputs of attention / FFN of the layer at hand (recomputed
                    in backward from x, xmid and the norm weights) */
    R *rstd1, *rstd2; /* [L][BT] */
    R *q;        /* [L][BT][Q] roped */
    R *k, *v;    /* [L][BT][KV] (k roped) */
    R *prob;     /* [L][B][H][T][T] */
    R *att;      /* [L][BT][Q] attention output */
    R *hg, *hu;  /* [L][BT][F] gate, up */
    R *ha;       /* [BT][F] silu(gate)*up of the layer at hand (recomputed in backward) */
    R *xfin, *hfin;  /* [BT][E] last residual, final-norm hidden */
    R *rstdf;    /* [BT] */
    R *logits;   /* [BT][V] (gradient after backward) */
    R *cs, *sn;  /* [T][hd/2] */
    /* per position */
    double *loss;
    float *lp, *sc;
    R *ds;
    /* gradient scratch */
    R *dx, *dxn, *dq, *dk, *dv, *datt, *dhg, *dhu, *dha, *dh, *tmp;
    /* LoRA (acts_alloc_lora; NULL otherwise) */
    R *ax;       /* [slots][BT][r] A x of each adapted matrix, saved for backward */
    R *dax;      /* [BT][r] */
    R *ltmp;     /* [BT][widest adapted output] B (A x), then s dy */
    R *nbuf;     /* [max(E, hd)] a frozen norm vector in R */
    R *qraw, *kraw;   /* [L][BT][Q], [L][BT][KV] q, k before per-head norms (qwen3) */
    R *qrstd, *krstd; /* [L][BT][H], [L][BT][Hkv] */
    R *dkn;      /* [BT][KV] */
    float *frow; /* [nth][row_cap] dequantised rows of frozen matrices */
    R *rrow;     /* [nth][row_cap] the same in R */
    void *kscratch; /* the engine kernels' scratch (LM_FROZEN_KERNELS) */
    float *fstrip;  /* [nth][lm_frozen_dx_scratch()] (LM_FROZEN_KERNELS) */
    int nth, row_cap;
};

LMS void LM_T(acts_release)(struct LM_T(acts) *a) {
    if (!a) return;
    R **bufs[] = {&a->x, &a->xmid, &a->xn1, &a->xn2, &a->rstd1, &a->rstd2, &a->q, &a->k, &a->v,
                  &a->prob, &a->att, &a->hg, &a->hu, &a->ha, &a->xfin, &a->hfin, &a->rstdf,
                  &a->logits, &a->cs, &a->sn, &a->ds, &a->dx, &a->dxn, &a->dq, &a->dk, &a->dv,
                  &a->datt, &a->dhg, &a->dhu, &a->dha, &a->dh, &a->tmp, &a->ax, &a->dax,
                  &a->ltmp, &a->nbuf, &a->rrow, &a->qraw, &a->kraw, &a->qrstd, &a->krstd,
                  &a->dkn};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) duet_afree(*bufs[i]);
    duet_afree(a->loss);
    duet_afree(a->lp);
    duet_afree(a->sc);
    duet_afree(a->frow);
    duet_afree(a->kscratch);
    duet_afree(a->fstrip);
    free(a);
}

LMS struct LM_T(acts) *LM_T(acts_alloc)(const lm_config *c, int B, int T) {
    struct LM_T(acts) *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    size_t BT = (size_t)B * T, L = (size_t)c->n_layer, E = (size_t)c->n_embd;
    size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_head_kv * c->head_dim;
    size_t F = (size_t)c->n_ff, V = (size_t)c->n_vocab, H = (size_t)c->n_head;
    a->B = B;
    a->T = T;
    a->n_layer = c->n_layer;
    int ok = 1;
#define A(f, n) ok &= (a->f = duet_aalloc((n) * sizeof(R))) != NULL
    A(x, L * BT * E); A(xmid, L * BT * E); A(xn1, BT * E); A(xn2, BT * E);
    A(rstd1, L * BT); A(rstd2, L * BT); A(q, L * BT * Q); A(k, L * BT * KV); A(v, L * BT * KV);
    A(prob, L * BT * H * T); A(att, L * BT * Q); A(hg, L * BT * F); A(hu, L * BT * F);
    A(ha, BT * F); A(xfin, BT * E); A(hfin, BT * E); A(rstdf, BT); A(logits, BT * V);
    A(cs, (size_t)T * c->head_dim / 2 + 1); A(sn, (size_t)T * c->head_dim / 2 + 1); A(ds, BT);
    A(dx, BT * E); A(dxn, BT * E); A(dq, BT * Q); A(dk, BT * KV); A(dv, BT * KV);
    A(datt, BT * Q); A(dhg, BT * F); A(dhu, BT * F); A(dha, BT * F); A(dh, BT * E);
    A(tmp, BT * E);
#undef A
    ok &= (a->loss = duet_aalloc(BT * sizeof(double))) != NULL;
    ok &= (a->lp = duet_aalloc(BT * sizeof(float))) != NULL;
    ok &= (a->sc = duet_aalloc(BT * sizeof(float))) != NULL;
    if (!ok) {
        LM_T(acts_release)(a);
        return NULL;
    }
    LM_T(rope_tables)(a->cs, a->sn, T, c->head_dim, c->inv_freq);
    return a;
}

/* The frozen matrix of kind k in layer l. */
static inline const mtensor *LM_T(fz_mat)(const lm_frozen *fz, int l, int k) {
    return k == LM_MAT_OUT ? &fz->output : &fz->layer[l].w[k];
}

/* acts_alloc's buffers plus a LoRA run's: the adapters' saved A x and scratch, dequantised
 * rows for up to nth threads, and the engine kernels' scratch. */
LMS struct LM_T(acts) *LM_T(acts_alloc_lora)(const lm_config *c, const lm_frozen *fz,
                                             const lm_lora *lo, int B, int T, int nth) {
    struct LM_T(acts) *a = LM_T(acts_alloc)(c, B, T);
    if (!a) return NULL;
    size_t BT = (size_t)B * T, r = (size_t)lo->rank, maxin = 1, maxout = 1, ks = 1;
    for (int k = 0; k < LM_N_MAT; k++) {
        int in, out;
        lm_mat_dims(c, k, &in, &out);
        maxin = DUET_MAX(maxin, (size_t)in);
        if (lo->targets >> k & 1) maxout = DUET_MAX(maxout, (size_t)out);
    }
#ifdef LM_FROZEN_KERNELS
    for (int l = 0; l <= c->n_layer; l++)
        for (int k = l < c->n_layer ? 0 : LM_MAT_OUT; k < (l < c->n_layer ? 7 : LM_N_MAT); k++) {
            const mtensor *W = LM_T(fz_mat)(fz, l, k);
            ks = DUET_MAX(ks, kernels_matmul_scratch(W->type, W->n_in, (int64_t)BT));
        }
#endif
    a->nth = nth > 0 ? nth : 1;
    a->row_cap = (int)maxin;
    int ok = 1;
#define A(f, n) ok &= (a->f = duet_aalloc((n) * sizeof(R))) != NULL
    A(ax, (7 * (size_t)c->n_layer + 1) * BT * r); A(dax, BT * r); A(ltmp, BT * maxout);
    A(nbuf, (size_t)DUET_MAX(c->n_embd, c->head_dim)); A(rrow, (size_t)a->nth * maxin);
    if (fz->layer[0].q_norm) {
        size_t L = (size_t)c->n_layer, hd = (size_t)c->head_dim;
        A(qraw, L * BT * c->n_head * hd); A(kraw, L * BT * c->n_head_kv * hd);
        A(qrstd, L * BT * c->n_head); A(krstd, L * BT * c->n_head_kv);
        A(dkn, BT * c->n_head_kv * hd);
    }
#undef A
    ok &= (a->frow = duet_aalloc((size_t)a->nth * maxin * sizeof(float))) != NULL;
    ok &= (a->kscratch = duet_aalloc(ks)) != NULL;
#ifdef LM_FROZEN_KERNELS
    ok &= (a->fstrip = duet_aalloc((size_t)a->nth * lm_frozen_dx_scratch() * sizeof(float))) != NULL;
#endif
    if (!ok) {
        LM_T(acts_release)(a);
        return NULL;
    }
    return a;
}

/* y[n][n_out] = x[n][n_in] W^T for a frozen W. */
static void LM_T(frozen_fwd)(threadpool *tp, struct LM_T(acts) *a, R *y, const R *x,
                             const mtensor *W, int n) {
#ifdef LM_FROZEN_KERNELS
    kernels_matmul(tp, W->type, W->data, W->n_in, W->n_out, x, n, y, a->kscratch);
#else
    LM_T(fz_job) j = {.y = y, .x = x, .W = W, .f = a->frow, .r = a->rrow, .n = n,
                      .row_cap = a->row_cap};
    tp_run(tp, LM_T(fz_fwd_worker), &j);
#endif
}

/* dx[n][n_in] += dy[n][n_out] W for a frozen W. */
static void LM_T(frozen_bwd)(threadpool *tp, struct LM_T(acts) *a, R *dx, const R *dy,
                             const mtensor *W, int n) {
#ifdef LM_FROZEN_KERNELS
    lm_frozen_dx(tp, dx, dy, W, n, a->fstrip);
#else
    LM_T(fz_job) j = {.dx = dx, .dy = dy, .W = W, .f = a->frow, .r = a->rrow, .n = n,
                      .row_cap = a->row_cap};
    tp_run(tp, LM_T(fz_bwd_worker), &j);
#endif
}

/* ---- the network: where the weights come from -------------------------------------------
 * Full training reads every weight from the flat array w (offsets Lo) and adds gradients to
 * g. LoRA training (fz set) reads the frozen base fz and the adapters in w (offsets lo); only
 * the adapters (and u) get gradients. The layers below are the same code for both. */
typedef struct LM_T(net) {
    const lm_config *c;
    const lm_layout *Lo;
    const lm_frozen *fz;
    const lm_lora *lo;
    const R *w, *u;
    R *g, *gu;
    struct LM_T(acts) *a;
    threadpool *tp;
} LM_T(net);

/* The full model's offset of matrix kind k of layer l. */
static size_t LM_T(full_off)(const lm_layout *Lo, int l, int k) {
    if (k == LM_MAT_OUT) return Lo->output;
    const lm_layer_off *o = &Lo->layer[l];
    const size_t offs[7] = {o->wq, o->wk, o->wv, o->wo, o->w_gate, o->w_up, o->w_down};
    return offs[k];
}

/* y = W x for matrix (l, k); adapted: plus s B (A x), A x kept for the backward pass. */
static void LM_T(lin_fwd)(const LM_T(net) *N, int l, int k, R *y, const R *x, int n) {
    int in, out;
    lm_mat_dims(N->c, k, &in, &out);
    if (!N->fz) {
        LM_T(matmul_fwd)(N->tp, y, x, N->w + LM_T(full_off)(N->Lo, l, k), n, in, out);
        return;
    }
    struct LM_T(acts) *a = N->a;
    LM_T(frozen_fwd)(N->tp, a, y, x, LM_T(fz_mat)(N->fz, l, k), n);
    int s = lm_lora_slot(N->c, l, k), r = N->lo->rank;
    if (N->lo->a_off[s] == SIZE_MAX) return;
    R *ax = a->ax + (size_t)s * a->B * a->T * r, sc = (R)N->lo->scale;
    LM_T(matmul_fwd)(N->tp, ax, x, N->w + N->lo->a_off[s], n, in, r);
    LM_T(matmul_fwd)(N->tp, a->ltmp, ax, N->w + N->lo->b_off[s], n, r, out);
    for (size_t i = 0; i < (size_t)n * out; i++) y[i] += sc * a->ltmp[i];
}

/* From dy = dL/dy of matrix (l, k): dx += W^T dy (+ the adapter's path; dx NULL: not
 * wanted) and the gradients of its parameters. */
static void LM_T(lin_bwd)(const LM_T(net) *N, int l, int k, R *dx, const R *dy, const R *x, int n) {
    int in, out;
    lm_mat_dims(N->c, k, &in, &out);
    if (!N->fz) {
        size_t off = LM_T(full_off)(N->Lo, l, k);
        LM_T(matmul_bwd)(N->tp, dx, N->g + off, dy, x, N->w + off, n, in, out);
        return;
    }
    struct LM_T(acts) *a = N->a;
    if (dx) LM_T(frozen_bwd)(N->tp, a, dx, dy, LM_T(fz_mat)(N->fz, l, k), n);
    int s = lm_lora_slot(N->c, l, k), r = N->lo->rank;
    if (N->lo->a_off[s] == SIZE_MAX) return;
    const R *ax = a->ax + (size_t)s * a->B * a->T * r;
    R sc = (R)N->lo->scale;
    for (size_t i = 0; i < (size_t)n * out; i++) a->ltmp[i] = sc * dy[i]; /* d(B A x) */
    memset(a->dax, 0, (size_t)n * r * sizeof(R));
    LM_T(matmul_bwd)(N->tp, a->dax, N->g + N->lo->b_off[s], a->ltmp, ax, N->w + N->lo->b_off[s],
                     n, r, out);
    LM_T(matmul_bwd)(N->tp, dx, N->g + N->lo->a_off[s], a->dax, x, N->w + N->lo->a_off[s], n,
                     in, r);
}

/* A frozen F32 vector as R (a->nbuf when R is not float). */
static const R *LM_T(fz_vec)(struct LM_T(acts) *a, const float *v, int n) {
    if (sizeof(R) == sizeof(float)) return (const R *)(const void *)v;
    for (int i = 0; i < n; i++) a->nbuf[i] = (R)v[i];
    return a->nbuf;
}

/* Norm vector `which` (0: attention, 1: FFN) of layer l, or the output norm (l < 0), and its
 * gradient in *grad (NULL: frozen). A frozen vector is read as F32 (copied to a->nbuf when R
 * is not float). */
static const R *LM_T(norm_w)(const LM_T(net) *N, int l, int which, R **grad) {
    if (!N->fz) {
        const lm_layout *Lo = N->Lo;
        size_t off = l < 0 ? Lo->output_norm : which ? Lo->layer[l].ffn_norm : Lo->layer[l].attn_norm;
        *grad = N->g + off;
        return N->w + off;
    }
    *grad = NULL;
    const float *v = l < 0 ? N->fz->output_norm
                           : which ? N->fz->layer[l].ffn_norm : N->fz->layer[l].attn_norm;
    return LM_T(fz_vec)(N->a, v, N->c->n_embd);
}

/* x[t] += b for n rows of width w (a frozen bias: its gradient is not wanted, and dx passes
 * through unchanged). */
static void LM_T(add_bias)(R *x, const float *b, int n, int w) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < w; i++) x[(size_t)t * w + i] += (R)b[i];
}

/* After the q, k, v products of a frozen base's layer l: biases (qwen2) and the per-head
 * RMSNorms of q and k (qwen3; the inputs and rstd kept for the backward pass), as the
 * engine does them before RoPE. */
static void LM_T(qk_extras_fwd)(const LM_T(net) *N, int l, R *q, R *k, R *v, int n) {
    const lm_frozen_layer *fl = &N->fz->layer[l];
    const lm_config *c = N->c;
    struct LM_T(acts) *a = N->a;
    int hd = c->head_dim, H = c->n_head, Hk = c->n_head_kv;
    if (fl->bq) LM_T(add_bias)(q, fl->bq, n, H * hd);
    if (fl->bk) LM_T(add_bias)(k, fl->bk, n, Hk * hd);
    if (fl->bv) LM_T(add_bias)(v, fl->bv, n, Hk * hd);
    if (!fl->q_norm) return;
    size_t nQ = (size_t)n * H * hd, nKV = (size_t)n * Hk * hd;
    R *qr = a->qraw + l * nQ, *kr = a->kraw + l * nKV;
    memcpy(qr, q, nQ * sizeof(R));
    memcpy(kr, k, nKV * sizeof(R));
    LM_T(rmsnorm_fwd)(q, a->qrstd + (size_t)l * n * H, qr, LM_T(fz_vec)(a, fl->q_norm, hd), n * H,
                      hd, c->rms_eps);
    LM_T(rmsnorm_fwd)(k, a->krstd + (size_t)l * n * Hk, kr, LM_T(fz_vec)(a, fl->k_norm, hd),
                      n * Hk, hd, c->rms_eps);
}

/* The per-head norms' backward pass: a->dq and a->dk (gradients after the norms) become the
 * gradients of the products' outputs. */
static void LM_T(qk_norm_bwd)(const LM_T(net) *N, int l, int n) {
    const lm_frozen_layer *fl = &N->fz->layer[l];
    const lm_config *c = N->c;
    struct LM_T(acts) *a = N->a;
    if (!fl->q_norm) return;
    int hd = c->head_dim, H = c->n_head, Hk = c->n_head_kv;
    size_t nQ = (size_t)n * H * hd, nKV = (size_t)n * Hk * hd;
    /* datt is free once attention's backward pass has read it */
    memset(a->datt, 0, nQ * sizeof(R));
    LM_T(rmsnorm_bwd)(a->datt, NULL, a->dq, a->qraw + l * nQ, LM_T(fz_vec)(a, fl->q_norm, hd),
                      a->qrstd + (size_t)l * n * H, n * H, hd);
    memcpy(a->dq, a->datt, nQ * sizeof(R));
    memset(a->dkn, 0, nKV * sizeof(R));
    LM_T(rmsnorm_bwd)(a->dkn, NULL, a->dk, a->kraw + l * nKV, LM_T(fz_vec)(a, fl->k_norm, hd),
                      a->krstd + (size_t)l * n * Hk, n * Hk, hd);
    memcpy(a->dk, a->dkn, nKV * sizeof(R));
}

/* ---- the whole model ------------------------------------------------------------------ */
/* Forward to the logits (a->logits), keeping what the backward pass needs. */
static void LM_T(net_forward)(const LM_T(net) *N, const lm_batch *b) {
    const lm_config *c = N->c;
    struct LM_T(acts) *a = N->a;
    int B = b->B, T = b->T, n = B * T;
    int E = c->n_embd, hd = c->head_dim, H = c->n_head, Hk = c->n_head_kv, F = c->n_ff;
    int Q = H * hd, KV = Hk * hd;
    size_t nE = (size_t)n * E, nQ = (size_t)n * Q, nKV = (size_t)n * KV, nF = (size_t)n * F;
    size_t nP = (size_t)B * H * T * T;
    R *gn;
    if (!N->fz) LM_T(embed_fwd)(a->x, b->tokens, n, N->w + N->Lo->tok_embd, E);
    else LM_T(frozen_embed)(a->x, b->tokens, n, &N->fz->tok_embd, a->frow);
    for (int l = 0; l < c->n_layer; l++) {
        R *x = a->x + l * nE, *xmid = a->xmid + l * nE, *xn1 = a->xn1, *xn2 = a->xn2,
          *q = a->q + l * nQ, *k = a->k + l * nKV, *v = a->v + l * nKV, *att = a->att + l * nQ,
          *hg = a->hg + l * nF, *hu = a->hu + l * nF, *ha = a->ha;
        LM_T(rmsnorm_fwd)(xn1, a->rstd1 + (size_t)l * n, x, LM_T(norm_w)(N, l, 0, &gn), n, E,
                          c->rms_eps);
        LM_T(lin_fwd)(N, l, LM_MAT_Q, q, xn1, n);
        LM_T(lin_fwd)(N, l, LM_MAT_K, k, xn1, n);
        LM_T(lin_fwd)(N, l, LM_MAT_V, v, xn1, n);
        if (N->fz) LM_T(qk_extras_fwd)(N, l, q, k, v, n);
        LM_T(rope)(q, n, T, H, hd, a->cs, a->sn, 1, c->rope_neox);
        LM_T(rope)(k, n, T, Hk, hd, a->cs, a->sn, 1, c->rope_neox);
        LM_T(attn_fwd)(N->tp, att, a->prob + l * nP, q, k, v, B, T, H, Hk, hd);
        LM_T(lin_fwd)(N, l, LM_MAT_O, a->tmp, att, n);
        for (size_t i = 0; i < nE; i++) xmid[i] = x[i] + a->tmp[i];
        LM_T(rmsnorm_fwd)(xn2, a->rstd2 + (size_t)l * n, xmid, LM_T(norm_w)(N, l, 1, &gn), n, E,
                          c->rms_eps);
        LM_T(lin_fwd)(N, l, LM_MAT_GATE, hg, xn2, n);
        LM_T(lin_fwd)(N, l, LM_MAT_UP, hu, xn2, n);
        LM_T(swiglu_fwd)(ha, hg, hu, nF);
        LM_T(lin_fwd)(N, l, LM_MAT_DOWN, a->tmp, ha, n);
        R *xnext = l + 1 < c->n_layer ? a->x + (l + 1) * nE : a->xfin;
        for (size_t i = 0; i < nE; i++) xnext[i] = xmid[i] + a->tmp[i];
    }
    LM_T(rmsnorm_fwd)(a->hfin, a->rstdf, a->xfin, LM_T(norm_w)(N, -1, 0, &gn), n, E, c->rms_eps);
    LM_T(lin_fwd)(N, 0, LM_MAT_OUT, a->logits, a->hfin, n);
}

/* Backward from a->logits holding d loss / d logits (and a->ds, COLLM). */
static void LM_T(net_backward)(const LM_T(net) *N, const lm_batch *b) {
    const lm_config *c = N->c;
    struct LM_T(acts) *a = N->a;
    int B = b->B, T = b->T, n = B * T;
    int E = c->n_embd, hd = c->head_dim, H = c->n_head, Hk = c->n_head_kv, F = c->n_ff;
    int Q = H * hd, KV = Hk * hd;
    size_t nE = (size_t)n * E, nQ = (size_t)n * Q, nKV = (size_t)n * KV, nF = (size_t)n * F;
    size_t nP = (size_t)B * H * T * T;
    R *gn;
    const R *nw;
    memset(a->dh, 0, nE * sizeof(R));
    LM_T(lin_bwd)(N, 0, LM_MAT_OUT, a->dh, a->logits, a->hfin, n);
    if (b->loss != LM_LOSS_CE) {
        for (int t = 0; t < n; t++)
            if (a->ds[t] != 0) LM_T(axpy)(a->dh + (size_t)t * E, a->ds[t], N->u, E);
        for (int t = 0; t < n; t++)
            if (a->ds[t] != 0) LM_T(axpy)(N->gu, a->ds[t], a->hfin + (size_t)t * E, E);
    }
    memset(a->dx, 0, nE * sizeof(R));
    nw = LM_T(norm_w)(N, -1, 0, &gn);
    LM_T(rmsnorm_bwd)(a->dx, gn, a->dh, a->xfin, nw, a->rstdf, n, E);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        R *x = a->x + l * nE, *xmid = a->xmid + l * nE, *xn1 = a->xn1, *xn2 = a->xn2,
          *q = a->q + l * nQ, *k = a->k + l * nKV, *v = a->v + l * nKV, *att = a->att + l * nQ,
          *hg = a->hg + l * nF, *hu = a->hu + l * nF, *ha = a->ha;
        /* FFN: dx holds d/d(residual after the block) = d/d xmid's identity path. The down
         * matrix's input and the normed inputs are recomputed here, the same bits as the
         * forward's (one layer's buffers instead of every layer's: n_ff + 2 n_embd floats a
         * token a layer, 219 MB of a 1.1B model's 256 tokens) */
        LM_T(swiglu_fwd)(ha, hg, hu, nF);
        nw = LM_T(norm_w)(N, l, 1, &gn);
        LM_T(rmsnorm_fwd)(xn2, a->rstd2 + (size_t)l * n, xmid, nw, n, E, c->rms_eps);
        memset(a->dha, 0, nF * sizeof(R));
        LM_T(lin_bwd)(N, l, LM_MAT_DOWN, a->dha, a->dx, ha, n);
        LM_T(swiglu_bwd)(a->dhg, a->dhu, a->dha, hg, hu, nF);
        memset(a->dxn, 0, nE * sizeof(R));
        LM_T(lin_bwd)(N, l, LM_MAT_GATE, a->dxn, a->dhg, xn2, n);
        LM_T(lin_bwd)(N, l, LM_MAT_UP, a->dxn, a->dhu, xn2, n);
        LM_T(rmsnorm_bwd)(a->dx, gn, a->dxn, xmid, nw, a->rstd2 + (size_t)l * n, n, E);
        /* attention */
        memset(a->datt, 0, nQ * sizeof(R));
        LM_T(lin_bwd)(N, l, LM_MAT_O, a->datt, a->dx, att, n);
        LM_T(attn_bwd)(N->tp, a->dq, a->dk, a->dv, a->datt, a->prob + l * nP, q, k, v, B, T, H,
                       Hk, hd);
        LM_T(rope)(a->dq, n, T, H, hd, a->cs, a->sn, -1, c->rope_neox);
        LM_T(rope)(a->dk, n, T, Hk, hd, a->cs, a->sn, -1, c->rope_neox);
        if (N->fz) LM_T(qk_norm_bwd)(N, l, n);
        /* with a frozen embedding nothing below layer 0's q, k, v learns */
        R *dxn = N->fz && l == 0 ? NULL : a->dxn;
        if (dxn) memset(dxn, 0, nE * sizeof(R));
        nw = LM_T(norm_w)(N, l, 0, &gn);
        LM_T(rmsnorm_fwd)(xn1, a->rstd1 + (size_t)l * n, x, nw, n, E, c->rms_eps);
        LM_T(lin_bwd)(N, l, LM_MAT_Q, dxn, a->dq, xn1, n);
        LM_T(lin_bwd)(N, l, LM_MAT_K, dxn, a->dk, xn1, n);
        LM_T(lin_bwd)(N, l, LM_MAT_V, dxn, a->dv, xn1, n);
        if (!dxn) break;
        LM_T(rmsnorm_bwd)(a->dx, gn, a->dxn, x, nw, a->rstd1 + (size_t)l * n, n, E);
    }
    if (!N->fz) LM_T(embed_bwd)(N->g + N->Lo->tok_embd, b->tokens, n, a->dx, E);
}

/* Forward, loss and (backward) gradients; returns sum_t w_t loss_t. */
static double LM_T(net_run)(const LM_T(net) *N, const lm_batch *b, int backward,
                            float *logits_out) {
    struct LM_T(acts) *a = N->a;
    int n = b->B * b->T, V = N->c->n_vocab, E = N->c->n_embd;
    LM_T(net_forward)(N, b);
    if (logits_out)
        for (size_t i = 0; i < (size_t)n * V; i++) logits_out[i] = (float)a->logits[i];
    LM_T(loss_job) lj = {.logits = a->logits, .hidden = a->hfin, .u = N->u, .ds = a->ds,
                         .loss = a->loss, .lp = a->lp, .sc = a->sc, .b = b, .n = n, .V = V,
                         .E = E, .backward = backward};
    tp_run(N->tp, LM_T(loss_worker), &lj);
    double total = 0;
    for (int t = 0; t < n; t++) total += a->loss[t];
    if (backward) LM_T(net_backward)(N, b);
    return total;
}

/* The full model: returns sum_t w_t loss_t; with backward, adds scale * d/dparams into g
 * (and gu). */
LMS double LM_T(run)(const lm_config *c, const lm_layout *Lo, const R *w, R *g, const R *u,
                     R *gu, struct LM_T(acts) *a, const lm_batch *b, threadpool *tp,
                     int backward, float *logits_out) {
    LM_T(net) N = {.c = c, .Lo = Lo, .w = w, .g = g, .u = u, .gu = gu, .a = a, .tp = tp};
    return LM_T(net_run)(&N, b, backward, logits_out);
}

/* LoRA on the frozen base fz: w and g hold the adapters (offsets lo); a from acts_alloc_lora
 * for at least tp's thread count. */
LMS double LM_T(lora_run)(const lm_config *c, const lm_frozen *fz, const lm_lora *lo, const R *w,
                          R *g, const R *u, R *gu, struct LM_T(acts) *a, const lm_batch *b,
                          threadpool *tp, int backward, float *logits_out) {
    LM_T(net) N = {.c = c, .fz = fz, .lo = lo, .w = w, .g = g, .u = u, .gu = gu, .a = a,
                   .tp = tp_n_threads(tp) <= a->nth ? tp : NULL};
    return LM_T(net_run)(&N, b, backward, logits_out);
}

#undef R
#undef LMS
#undef RX
