/*
 * sampler.c: token choice from logits: greedy, or top-k -> top-p -> min-p (on the
 * temperature-1 distribution, as llama.cpp's default chain orders them) -> temperature ->
 * a draw from a seeded RNG (splitmix64 seeding xoshiro256**, so a seed reproduces a run).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"

typedef struct cand { float logit; int32_t id; } cand;

struct duet_sampler {
    duet_sampler_params p;
    uint64_t s[4];
    cand *c;
    int cap;
};

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(duet_sampler *s) {
    uint64_t r = rotl(s->s[1] * 5, 7) * 9, t = s->s[1] << 17;
    s->s[2] ^= s->s[0];
    s->s[3] ^= s->s[1];
    s->s[1] ^= s->s[2];
    s->s[0] ^= s->s[3];
    s->s[2] ^= t;
    s->s[3] = rotl(s->s[3], 45);
    return r;
}

/* uniform in [0, 1) with 53 random bits */
static double next_unit(duet_sampler *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

void duet_sampler_defaults(duet_sampler_params *p) {
    memset(p, 0, sizeof *p);
    p->temp = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
}

int duet_sampler_new(const duet_sampler_params *params, duet_sampler **out, duet_error *err) {
    *out = NULL;
    if (params && (isnan(params->temp) || isnan(params->top_p) || isnan(params->min_p)))
        return duet_fail(err, DUET_ERR_ARG, "sampler: temperature, top-p and min-p must be numbers");
    duet_sampler *s = calloc(1, sizeof *s);
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (params) s->p = *params;
    duet_sampler_reseed(s, s->p.seed);
    *out = s;
    return DUET_OK;
}

void duet_sampler_reseed(duet_sampler *s, uint64_t seed) {
    s->p.seed = seed;
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->s[i] = duet_splitmix64(&x);
}

void duet_sampler_free(duet_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s);
}

int32_t duet_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int by_logit_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t duet_sampler_sample(duet_sampler *s, const float *logits, int n_vocab) {
    const duet_sampler_params *p = &s->p;
    if (p->temp <= 0 || n_vocab <= 1) return duet_argmax(logits, n_vocab);
    if (s->cap < n_vocab) {
        cand *c = realloc(s->c, (size_t)n_vocab * sizeof *c);
        if (!c) return duet_argmax(logits, n_vocab); /* no memory: degrade to greedy */
        s->c = c;
        s->cap = n_vocab;
    }
    cand *c = s->c;
    int n = n_vocab;
    for (int i = 0; i < n; i++) c[i] = (cand){logits[i], i};
    qsort(c, (size_t)n, sizeof *c, by_logit_desc);
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    /* probabilities at temperature 1 for top-p / min-p */
    double mx = c[0].logit, sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)c[i].logit - mx);
    if (p->top_p > 0 && p->top_p < 1) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += exp((double)c[i].logit - mx) / sum;
            if (cum >= p->top_p) { n = i + 1; break; }
        }
    }
    if (p->min_p > 0) {
        /* keep tokens with prob >= min_p * max prob, i.e. logit >= max + log(min_p) */
        double cut = mx + log((double)p->min_p);
        int k = 1;
        while (k < n && c[k].logit >= cut) k++;
        n = k;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += exp(((double)c[i].logit - mx) / p->temp);
    double r = next_unit(s) * total, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += exp(((double)c[i].logit - mx) / p->temp);
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;
}
