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
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "train/lm.h"

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
/* dx += r * (w dy) - r^3/dim * x * sum(w dy x);  dw += sum_t dy * x * r */
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
/* sign = +1: forward rotation; -1: its transpose (the backward pass of the rotation). */
LMS void LM_T(rope)(R *x, int n, int T, int nh, int hd, const R *cs, const R *sn, int sign) {
    for (int r = 0; r < n; r++) {
        int p = r % T;
        for (int h = 0; h < nh; h++) {
            R *v = x + ((size_t)r * nh + h) * hd;
            for (int i = 0; i < hd / 2; i++) {
                R c = cs[p * (hd / 2) + i], s = sign * sn[p * (hd / 2) + i];
                R x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c - x1 * s;
                v[2 * i + 1] = x0 * s + x1 * c;
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
    R *xn1, *xn2;/* [L][BT][E] normed inputs of attention / FFN */
    R *rstd1, *rstd2; /* [L][BT] */
    R *q;        /* [L][BT][Q] roped */
    R *k, *v;    /* [L][BT][KV] (k roped) */
    R *prob;     /* [L][B][H][T][T] */
    R *att;      /* [L][BT][Q] attention output */
    R *hg, *hu, *ha; /* [L][BT][F] gate, up, silu(gate)*up */
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
};

LMS void LM_T(acts_release)(struct LM_T(acts) *a) {
    if (!a) return;
    R **bufs[] = {&a->x, &a->xmid, &a->xn1, &a->xn2, &a->rstd1, &a->rstd2, &a->q, &a->k, &a->v,
                  &a->prob, &a->att, &a->hg, &a->hu, &a->ha, &a->xfin, &a->hfin, &a->rstdf,
                  &a->logits, &a->cs, &a->sn, &a->ds, &a->dx, &a->dxn, &a->dq, &a->dk, &a->dv,
                  &a->datt, &a->dhg, &a->dhu, &a->dha, &a->dh, &a->tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) duet_afree(*bufs[i]);
    duet_afree(a->loss);
    duet_afree(a->lp);
    duet_afree(a->sc);
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
    A(x, L * BT * E); A(xmid, L * BT * E); A(xn1, L * BT * E); A(xn2, L * BT * E);
    A(rstd1, L * BT); A(rstd2, L * BT); A(q, L * BT * Q); A(k, L * BT * KV); A(v, L * BT * KV);
    A(prob, L * BT * H * T); A(att, L * BT * Q); A(hg, L * BT * F); A(hu, L * BT * F);
    A(ha, L * BT * F); A(xfin, BT * E); A(hfin, BT * E); A(rstdf, BT); A(logits, BT * V);
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

/* ---- the whole model ------------------------------------------------------------------ */
/* Returns sum_t w_t loss_t; with backward, adds scale * d/dparams into g (and gu). */
LMS double LM_T(run)(const lm_config *c, const lm_layout *Lo, const R *w, R *g, const R *u,
                     R *gu, struct LM_T(acts) *a, const lm_batch *b, threadpool *tp,
                     int backward, float *logits_out) {
    int B = b->B, T = b->T, n = B * T;
    int E = c->n_embd, hd = c->head_dim, H = c->n_head, Hk = c->n_head_kv, F = c->n_ff;
    int V = c->n_vocab, Q = H * hd, KV = Hk * hd;
    size_t nE = (size_t)n * E, nQ = (size_t)n * Q, nKV = (size_t)n * KV, nF = (size_t)n * F;
    size_t nP = (size_t)B * H * T * T;

    /* forward */
    R *xcur = a->x;
    LM_T(embed_fwd)(xcur, b->tokens, n, w + Lo->tok_embd, E);
    for (int l = 0; l < c->n_layer; l++) {
        const lm_layer_off *o = &Lo->layer[l];
        R *x = a->x + l * nE, *xmid = a->xmid + l * nE, *xn1 = a->xn1 + l * nE,
          *xn2 = a->xn2 + l * nE, *q = a->q + l * nQ, *k = a->k + l * nKV, *v = a->v + l * nKV,
          *att = a->att + l * nQ, *hg = a->hg + l * nF, *hu = a->hu + l * nF,
          *ha = a->ha + l * nF;
        LM_T(rmsnorm_fwd)(xn1, a->rstd1 + (size_t)l * n, x, w + o->attn_norm, n, E, c->rms_eps);
        LM_T(matmul_fwd)(tp, q, xn1, w + o->wq, n, E, Q);
        LM_T(matmul_fwd)(tp, k, xn1, w + o->wk, n, E, KV);
        LM_T(matmul_fwd)(tp, v, xn1, w + o->wv, n, E, KV);
        LM_T(rope)(q, n, T, H, hd, a->cs, a->sn, 1);
        LM_T(rope)(k, n, T, Hk, hd, a->cs, a->sn, 1);
        LM_T(attn_fwd)(tp, att, a->prob + l * nP, q, k, v, B, T, H, Hk, hd);
        LM_T(matmul_fwd)(tp, a->tmp, att, w + o->wo, n, Q, E);
        for (size_t i = 0; i < nE; i++) xmid[i] = x[i] + a->tmp[i];
        LM_T(rmsnorm_fwd)(xn2, a->rstd2 + (size_t)l * n, xmid, w + o->ffn_norm, n, E, c->rms_eps);
        LM_T(matmul_fwd)(tp, hg, xn2, w + o->w_gate, n, E, F);
        LM_T(matmul_fwd)(tp, hu, xn2, w + o->w_up, n, E, F);
        LM_T(swiglu_fwd)(ha, hg, hu, nF);
        LM_T(matmul_fwd)(tp, a->tmp, ha, w + o->w_down, n, F, E);
        R *xnext = l + 1 < c->n_layer ? a->x + (l + 1) * nE : a->xfin;
        for (size_t i = 0; i < nE; i++) xnext[i] = xmid[i] + a->tmp[i];
    }
    LM_T(rmsnorm_fwd)(a->hfin, a->rstdf, a->xfin, w + Lo->output_norm, n, E, c->rms_eps);
    LM_T(matmul_fwd)(tp, a->logits, a->hfin, w + Lo->output, n, E, V);
    if (logits_out)
        for (size_t i = 0; i < (size_t)n * V; i++) logits_out[i] = (float)a->logits[i];

    LM_T(loss_job) lj = {.logits = a->logits, .hidden = a->hfin, .u = u, .ds = a->ds,
                         .loss = a->loss, .lp = a->lp, .sc = a->sc, .b = b, .n = n, .V = V,
                         .E = E, .backward = backward};
    tp_run(tp, LM_T(loss_worker), &lj);
    double total = 0;
    for (int t = 0; t < n; t++) total += a->loss[t];
    if (!backward) return total;

    /* backward: a->logits now holds d loss / d logits */
    memset(a->dh, 0, nE * sizeof(R));
    LM_T(matmul_bwd)(tp, a->dh, g + Lo->output, a->logits, a->hfin, w + Lo->output, n, E, V);
    if (b->loss == LM_LOSS_COLLM) {
        for (int t = 0; t < n; t++)
            if (a->ds[t] != 0) LM_T(axpy)(a->dh + (size_t)t * E, a->ds[t], u, E);
        for (int t = 0; t < n; t++)
            if (a->ds[t] != 0) LM_T(axpy)(gu, a->ds[t], a->hfin + (size_t)t * E, E);
    }
    memset(a->dx, 0, nE * sizeof(R));
    LM_T(rmsnorm_bwd)(a->dx, g + Lo->output_norm, a->dh, a->xfin, w + Lo->output_norm, a->rstdf, n, E);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        const lm_layer_off *o = &Lo->layer[l];
        R *x = a->x + l * nE, *xmid = a->xmid + l * nE, *xn1 = a->xn1 + l * nE,
          *xn2 = a->xn2 + l * nE, *q = a->q + l * nQ, *k = a->k + l * nKV, *v = a->v + l * nKV,
          *att = a->att + l * nQ, *hg = a->hg + l * nF, *hu = a->hu + l * nF,
          *ha = a->ha + l * nF;
        /* FFN: dx holds d/d(residual after the block) = d/d xmid's identity path */
        memset(a->dha, 0, nF * sizeof(R));
        LM_T(matmul_bwd)(tp, a->dha, g + o->w_down, a->dx, ha, w + o->w_down, n, F, E);
        LM_T(swiglu_bwd)(a->dhg, a->dhu, a->dha, hg, hu, nF);
        memset(a->dxn, 0, nE * sizeof(R));
        LM_T(matmul_bwd)(tp, a->dxn, g + o->w_gate, a->dhg, xn2, w + o->w_gate, n, E, F);
        LM_T(matmul_bwd)(tp, a->dxn, g + o->w_up, a->dhu, xn2, w + o->w_up, n, E, F);
        LM_T(rmsnorm_bwd)(a->dx, g + o->ffn_norm, a->dxn, xmid, w + o->ffn_norm,
                          a->rstd2 + (size_t)l * n, n, E);
        /* attention */
        memset(a->datt, 0, nQ * sizeof(R));
        LM_T(matmul_bwd)(tp, a->datt, g + o->wo, a->dx, att, w + o->wo, n, Q, E);
        LM_T(attn_bwd)(tp, a->dq, a->dk, a->dv, a->datt, a->prob + l * nP, q, k, v, B, T, H, Hk, hd);
        LM_T(rope)(a->dq, n, T, H, hd, a->cs, a->sn, -1);
        LM_T(rope)(a->dk, n, T, Hk, hd, a->cs, a->sn, -1);
        memset(a->dxn, 0, nE * sizeof(R));
        LM_T(matmul_bwd)(tp, a->dxn, g + o->wq, a->dq, xn1, w + o->wq, n, E, Q);
        LM_T(matmul_bwd)(tp, a->dxn, g + o->wk, a->dk, xn1, w + o->wk, n, E, KV);
        LM_T(matmul_bwd)(tp, a->dxn, g + o->wv, a->dv, xn1, w + o->wv, n, E, KV);
        LM_T(rmsnorm_bwd)(a->dx, g + o->attn_norm, a->dxn, x, w + o->attn_norm,
                          a->rstd1 + (size_t)l * n, n, E);
    }
    LM_T(embed_bwd)(g + Lo->tok_embd, b->tokens, n, a->dx, E);
    return total;
}

#undef R
#undef LMS
#undef RX
