/*
 * collab.c: the collaborative decoder (Co-LLM). One canonical token list in base ids; the
 * base session consumes every emitted token; the expert session is synced to the list only
 * when a policy needs its distribution (lazy: one batched catch-up of the tokens it has not
 * seen) or after every token (eager, for comparison). Both give the same text because a
 * batched prefill computes bit-identical logits to token-by-token decoding.
 * Distributions are compared in the base's id space: expert (and anti) logits are gathered
 * through an id bridge, which restricts the expert to tokens the base can represent.
 * Invariants: base session == toks[0..n) before a step's decision; the expert never
 * evaluates a token twice in lazy mode (its timeline only grows along toks).
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "collab/vocab_bridge.h"

static const char *k_policy_names[DUET_POLICY_COUNT] = {
    "collm", "base", "expert", "random", "confidence", "compose", "proxy", "contrastive",
    "uncertainty", "cd", "cd_v2"};

int duet_policy_from_name(const char *name) {
    for (int i = 0; i < DUET_POLICY_COUNT; i++)
        if (!strcmp(name, k_policy_names[i])) return i;
    return -1;
}

const char *duet_policy_name(int p) {
    return p >= 0 && p < DUET_POLICY_COUNT ? k_policy_names[p] : "?";
}

/* A model that follows the canonical list through an id map. */
typedef struct follower {
    const duet_expert_backend *remote; /* set: the backend replaces m, s, map and ids */
    duet_model *m;
    duet_session *s;
    int32_t *map;   /* [n_vocab_base] base id -> this model's id */
    int32_t *ids;   /* [n_ctx] the canonical list mapped */
    float *logits;  /* [n_vocab_base] last logits gathered into base ids */
} follower;

struct duet_collab {
    duet_model *base;
    const duet_head *head;
    duet_collab_params p;
    duet_session *sb;
    follower ex, anti;
    int has_expert, has_anti, bridged, n_vocab, n_ctx;
    int base_stats;    /* compute the base's max-probability and entropy each step */
    int32_t *toks;     /* [n_ctx] canonical list, base ids */
    int n_toks;
    float *work;       /* [n_vocab] the distribution handed to the sampler */
    float thr_logit;   /* collm/compose: defer iff score > thr_logit */
    float eta;
    uint64_t rng;
    duet_sampler *smp;
    duet_collab_stats st;
    long ex_eval0, base_eval0;
    long pre_evaluated; /* prompt tokens duet_collab_prefill evaluated for the next start */
    double pre_time;
    struct { /* the step in progress (step_begin .. step_finish) */
        double t_start;
        const float *lb;   /* the base's logits, once read */
        float p, base_entropy;
        int lazy_lb, need_expert;
    } cur;
};

static int follower_init(follower *f, duet_model *base, duet_model *m, const char *role,
                         const duet_session_params *sp, int *bridged, duet_error *err) {
    f->m = m;
    int n_ctx = sp->n_ctx;
    int nb = duet_model_hparams(base)->n_vocab;
    int rc = vocab_bridge_build(base, m, role, &f->map, bridged, err);
    if (!rc) rc = duet_session_new(m, sp, &f->s, err);
    if (!rc && (!(f->ids = malloc((size_t)n_ctx * sizeof(int32_t))) ||
                !(f->logits = malloc((size_t)nb * sizeof(float)))))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    return rc;
}

static void follower_free(follower *f) {
    duet_session_free(f->s);
    free(f->map);
    free(f->ids);
    free(f->logits);
}

/* Bring the follower's timeline to toks[0..n) (one batched call for the missing suffix) and
 * gather its next-token logits into base ids. */
static int follower_sync(duet_collab *c, follower *f, int want_logits, duet_error *err) {
    if (f->remote) { /* stateless: the backend gets the whole list (servers cache prefixes) */
        if (!want_logits) return DUET_OK;
        double t0 = duet_time_s();
        int rc = f->remote->next_logits(f->remote->ctx, c->toks, c->n_toks, f->logits, err);
        c->st.t_expert += duet_time_s() - t0;
        return rc;
    }
    int have = duet_session_n_past(f->s);
    for (int i = 0; i < c->n_toks; i++) f->ids[i] = f->map[c->toks[i]];
    double t0 = duet_time_s();
    int rc;
    if (want_logits) {
        rc = duet_session_sync(f->s, f->ids, c->n_toks, err);
    } else { /* eager mode: only evaluate what is new; logits are read on the next defer */
        int lcp = 0;
        const int32_t *cur = duet_session_tokens(f->s);
        while (lcp < have && lcp < c->n_toks && cur[lcp] == f->ids[lcp]) lcp++;
        duet_session_truncate(f->s, lcp);
        rc = lcp < c->n_toks ? duet_session_eval(f->s, f->ids + lcp, c->n_toks - lcp, 0, err) : 0;
    }
    if (!rc && want_logits) { /* (the logits are computed on this read) */
        const float *l = duet_session_logits(f->s, -1);
        for (int b = 0; b < c->n_vocab; b++) f->logits[b] = l[f->map[b]];
    }
    c->st.t_expert += duet_time_s() - t0;
    return rc;
}

/* ---- creation --------------------------------------------------------------------------- */
/* The random policy's splitmix64 state for a seed (one definition for creation and
 * reseeding; evaluation's teacher-forced random routing starts its stream the same way). */
static uint64_t random_policy_stream(uint64_t seed) { return seed ^ 0x5851f42d4c957f2dull; }

int duet_collab_new(duet_model *base, duet_model *expert, duet_model *anti,
                    const duet_head *head, const duet_collab_params *params,
                    duet_collab **out, duet_error *err) {
    *out = NULL;
    duet_collab_params p = {0};
    if (params) p = *params;
    if (p.policy < 0 || p.policy >= DUET_POLICY_COUNT)
        return duet_fail(err, DUET_ERR_ARG, "unknown policy %d", (int)p.policy);
    int need_head = p.policy == DUET_POLICY_COLLM || p.policy == DUET_POLICY_COMPOSE;
    if (need_head && !head)
        return duet_fail(err, DUET_ERR_ARG, "policy %s needs a deferral head (--head)",
                         duet_policy_name(p.policy));
    if (head && duet_head_n_embd(head) != duet_model_hparams(base)->n_embd)
        return duet_fail(err, DUET_ERR_ARG, "head has n_embd %d, base has %d",
                         duet_head_n_embd(head), duet_model_hparams(base)->n_embd);
    if (p.policy == DUET_POLICY_PROXY && !anti)
        return duet_fail(err, DUET_ERR_ARG, "policy proxy needs a third (anti-expert) model");
    if (!expert && !p.expert_backend && p.policy != DUET_POLICY_BASE)
        return duet_fail(err, DUET_ERR_ARG, "policy %s needs an expert model (--expert)",
                         duet_policy_name(p.policy));
    if (!(p.random_rate >= 0 && p.random_rate <= 1))
        return duet_fail(err, DUET_ERR_ARG, "random rate %g is outside [0, 1]", p.random_rate);
    if (isnan(p.threshold)) return duet_fail(err, DUET_ERR_ARG, "threshold is NaN");
    if (need_head && p.threshold > 1)
        return duet_fail(err, DUET_ERR_ARG, "threshold %g is outside [0, 1]", p.threshold);
    if (p.cd_alpha <= 0) p.cd_alpha = 0.1f;
    if (p.cd_beta <= 0) p.cd_beta = 0.5f;
    duet_collab *c = calloc(1, sizeof *c);
    if (!c) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    c->base = base;
    c->head = head;
    c->p = p;
    c->n_vocab = duet_model_hparams(base)->n_vocab;
    int n_ctx = p.n_ctx;
    if (n_ctx <= 0) {
        n_ctx = duet_model_hparams(base)->n_ctx_train;
        if (expert) n_ctx = DUET_MIN(n_ctx, duet_model_hparams(expert)->n_ctx_train);
        if (!expert && p.expert_backend && p.expert_backend->n_ctx > 0)
            n_ctx = DUET_MIN(n_ctx, p.expert_backend->n_ctx);
        if (anti) n_ctx = DUET_MIN(n_ctx, duet_model_hparams(anti)->n_ctx_train);
        n_ctx = DUET_MIN(n_ctx, 4096);
    }
    c->n_ctx = n_ctx;
    if (need_head) {
        c->eta = p.threshold >= 0 ? p.threshold
                 : duet_head_threshold(head) >= 0 ? duet_head_threshold(head) : 0.5f;
        /* compare logits: eta = 0 defers always, eta = 1 never (trained heads saturate) */
        c->thr_logit = c->eta <= 0 ? -INFINITY : c->eta >= 1 ? INFINITY : logf(c->eta / (1 - c->eta));
    } else if (p.policy == DUET_POLICY_UNCERTAINTY) {
        c->thr_logit = p.threshold >= 0 ? p.threshold : 2.0f;
    }
    c->rng = random_policy_stream(p.sampling.seed);
    c->base_stats = p.details || p.policy == DUET_POLICY_CONFIDENCE ||
                    p.policy == DUET_POLICY_UNCERTAINTY ||
                    (need_head && (duet_head_features(head) & (DUET_HEAD_FEAT_ENTROPY | DUET_HEAD_FEAT_MAXLOGP)));
    duet_session_params sp = {.n_ctx = n_ctx, .type_k = p.type_k, .type_v = p.type_v};
    int bridged_anti = 0;
    int rc = duet_session_new(base, &sp, &c->sb, err);
    if (!rc && expert) {
        c->has_expert = 1;
        rc = follower_init(&c->ex, base, expert, "expert", &sp, &c->bridged, err);
    } else if (!rc && p.expert_backend) {
        c->has_expert = 1;
        c->ex.remote = p.expert_backend;
        if (!(c->ex.logits = malloc((size_t)c->n_vocab * sizeof(float))))
            rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    if (!rc && anti) {
        c->has_anti = 1;
        rc = follower_init(&c->anti, base, anti, "anti-expert", &sp, &bridged_anti, err);
    }
    if (!rc && (!(c->toks = malloc((size_t)n_ctx * sizeof(int32_t))) ||
                !(c->work = malloc((size_t)c->n_vocab * sizeof(float)))))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) rc = duet_sampler_new(&p.sampling, &c->smp, err);
    if (rc) {
        duet_collab_free(c);
        return rc;
    }
    *out = c;
    return DUET_OK;
}

void duet_collab_free(duet_collab *c) {
    if (!c) return;
    duet_session_free(c->sb);
    if (c->has_expert) follower_free(&c->ex);
    if (c->has_anti) follower_free(&c->anti);
    duet_sampler_free(c->smp);
    free(c->toks);
    free(c->work);
    free(c);
}

/* ---- decoding --------------------------------------------------------------------------- */
static long expert_evaluated(const duet_collab *c) {
    return (c->has_expert && c->ex.s ? duet_session_n_evaluated(c->ex.s) : 0) +
           (c->has_anti ? duet_session_n_evaluated(c->anti.s) : 0);
}

static void update_counts(duet_collab *c) {
    c->st.expert_evaluated = expert_evaluated(c) - c->ex_eval0;
    c->st.base_evaluated = duet_session_n_evaluated(c->sb) - c->base_eval0;
}

int duet_collab_start(duet_collab *c, const int32_t *prompt, int n, duet_error *err) {
    if (n <= 0) return duet_fail(err, DUET_ERR_ARG, "empty prompt (at least BOS is needed)");
    if (n >= c->n_ctx)
        return duet_fail(err, DUET_ERR_RANGE, "prompt of %d tokens does not fit the context of %d",
                         n, c->n_ctx);
    for (int i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= c->n_vocab)
            return duet_fail(err, DUET_ERR_RANGE, "prompt token %d at %d is outside [0, %d)",
                             prompt[i], i, c->n_vocab);
    memcpy(c->toks, prompt, (size_t)n * sizeof *prompt);
    c->n_toks = n;
    memset(&c->st, 0, sizeof c->st);
    c->st.n_prompt = n;
    c->ex_eval0 = expert_evaluated(c);
    c->base_eval0 = duet_session_n_evaluated(c->sb) - c->pre_evaluated;
    c->st.t_base = c->st.t_total = c->pre_time;
    c->pre_evaluated = 0;
    c->pre_time = 0;
    double t0 = duet_time_s();
    /* the first step's base sync evaluates what this one would (the longest common prefix
     * kept, the rest in one call) */
    int rc = c->p.lazy_prompt ? DUET_OK : duet_session_sync(c->sb, c->toks, n, err);
    c->st.t_base += duet_time_s() - t0;
    if (!rc && c->p.eager_sync && c->has_expert) rc = follower_sync(c, &c->ex, 0, err);
    c->st.t_total += duet_time_s() - t0;
    update_counts(c); /* so that the stats show what the prompt cost (cache reuse) */
    return rc;
}

int duet_collab_prefill(duet_collab *c, const int32_t *prompt, int n, int max_tokens,
                        duet_error *err) {
    if (n <= 0 || max_tokens <= 0)
        return duet_fail(err, DUET_ERR_ARG, "prefill of %d tokens, %d at a time", n, max_tokens);
    if (n >= c->n_ctx)
        return duet_fail(err, DUET_ERR_RANGE, "prompt of %d tokens does not fit the context of %d",
                         n, c->n_ctx);
    const int32_t *have = duet_session_tokens(c->sb);
    int lcp = 0, past = duet_session_n_past(c->sb);
    while (lcp < past && lcp < n && have[lcp] == prompt[lcp]) lcp++;
    if (lcp == n) return 0; /* (start re-evaluates the last token if its outputs are gone) */
    duet_session_truncate(c->sb, lcp);
    int k = DUET_MIN(max_tokens, n - lcp);
    double t0 = duet_time_s();
    int rc = duet_session_eval(c->sb, prompt + lcp, k, 0, err);
    /* the answer's statistics count this work as start's own */
    c->pre_evaluated += rc ? 0 : k;
    c->pre_time += duet_time_s() - t0;
    return rc ? rc : n - lcp - k;
}

/* max-probability and entropy (nats) of softmax(l) */
static void dist_stats(const float *l, int n, float *maxp, float *entropy) {
    double mx, z, ez;
    duet_softmax_stats(l, n, &mx, &z, &ez);
    if (maxp) *maxp = (float)(1.0 / z);
    if (entropy) *entropy = (float)(log(z) - ez / z);
}

static void log_softmax(const float *l, int n, float *out) {
    double mx, z;
    duet_softmax_stats(l, n, &mx, &z, NULL);
    double lz = mx + log(z);
    for (int i = 0; i < n; i++) out[i] = (float)((double)l[i] - lz);
}

/* The policy's decision for this token: whether to ask the expert. collm and compose set the
 * head's score and *p, its deferral probability; uncertainty the base's entropy as score. */
static int decide_defer(duet_collab *c, duet_collab_token *tok, const float *h, float base_entropy,
                        float *p) {
    int need_expert = 0;
    switch (c->p.policy) {
    case DUET_POLICY_COLLM:
    case DUET_POLICY_COMPOSE:
        /* heads may also read the base's confidence (entropy, max log-prob) */
        tok->score = duet_head_score_ex(c->head, h, base_entropy, logf(tok->base_top_p));
        *p = 1.0f / (1.0f + expf(-tok->score));
        tok->p_defer = *p;
        need_expert = tok->score > c->thr_logit;
        break;
    case DUET_POLICY_BASE: break;
    case DUET_POLICY_EXPERT: need_expert = 1; break;
    case DUET_POLICY_RANDOM:
        /* 53-bit uniform in [0,1): rate 0 never defers, rate 1 always */
        need_expert = (double)(duet_splitmix64(&c->rng) >> 11) * 0x1.0p-53 < (double)c->p.random_rate;
        break;
    case DUET_POLICY_UNCERTAINTY:
        tok->score = base_entropy;
        need_expert = tok->score > c->thr_logit;
        break;
    default: need_expert = 1; break; /* confidence, proxy, contrastive read the expert always */
    }
    return need_expert;
}

int duet_contrastive_scores(int policy, const float *se, const float *sb, int n, float alpha,
                            float beta, float *out) {
    if (n <= 0) return DUET_ERR_ARG;
    float mx = se[duet_argmax(se, n)], cut = mx + logf(alpha);
    switch (policy) {
    case DUET_POLICY_CONTRASTIVE: /* the plausibility mask is on the expert's own scores */
        for (int i = 0; i < n; i++) out[i] = se[i] >= cut ? (1 + beta) * se[i] - beta * sb[i] : -INFINITY;
        return DUET_OK;
    case DUET_POLICY_CD_V2: /* the official code masks the combined score instead */
        for (int i = 0; i < n; i++) {
            float d = (1 + beta) * se[i] - beta * sb[i];
            out[i] = d < cut ? -INFINITY : d;
        }
        return DUET_OK;
    case DUET_POLICY_CD: {
        double me, ze, mb, zb;
        duet_softmax_stats(se, n, &me, &ze, NULL);
        duet_softmax_stats(sb, n, &mb, &zb, NULL);
        double le = me + log(ze), lb = mb + log(zb);
        for (int i = 0; i < n; i++) out[i] = (float)(((double)se[i] - le) - ((double)sb[i] - lb));
        return DUET_OK;
    }
    default: return DUET_ERR_ARG;
    }
}

/* The expert has been asked: the logits to sample from (*pick) and where they come from,
 * by policy; lb is the base's logits (NULL where the policy did not read them). */
static int use_expert(duet_collab *c, duet_collab_token *tok, const float *lb, float p,
                      const float **pick, int *source, duet_error *err) {
    int V = c->n_vocab, rc;
    const float *le = c->ex.logits;
    tok->expert_top = duet_argmax(le, V);
    tok->expert_top_p = NAN;
    if (c->p.details || c->p.policy == DUET_POLICY_CONFIDENCE) dist_stats(le, V, &tok->expert_top_p, NULL);
    switch (c->p.policy) {
    case DUET_POLICY_CONFIDENCE:
        if (tok->expert_top_p > tok->base_top_p) { *pick = le; *source = DUET_SRC_EXPERT; }
        break;
    case DUET_POLICY_COMPOSE: { /* log((1-p) Pb + p Pe) as the sampler's logits */
        float *lpb = c->work, *lpe = c->ex.logits;
        log_softmax(lb, V, lpb);
        log_softmax(le, V, lpe); /* the gathered copy is ours to overwrite */
        double l1 = log1p(-(double)p), l2 = log((double)p);
        for (int i = 0; i < V; i++) {
            double a = lpb[i] + l1, b = lpe[i] + l2, m = a > b ? a : b;
            lpb[i] = (float)(m + log(exp(a - m) + exp(b - m)));
        }
        *pick = lpb;
        *source = DUET_SRC_MIXED;
        break;
    }
    case DUET_POLICY_PROXY:
        if ((rc = follower_sync(c, &c->anti, 1, err))) return rc;
        /* le + (lb - la): with anti == base the bracket is exactly 0, so proxy tuning
         * then reproduces the expert bit for bit */
        for (int i = 0; i < V; i++) c->work[i] = le[i] + (lb[i] - c->anti.logits[i]);
        *pick = c->work;
        *source = DUET_SRC_MIXED;
        break;
    case DUET_POLICY_CONTRASTIVE:
    case DUET_POLICY_CD:
    case DUET_POLICY_CD_V2:
        duet_contrastive_scores(c->p.policy, le, lb, V, c->p.cd_alpha, c->p.cd_beta, c->work);
        *pick = c->work;
        *source = DUET_SRC_MIXED;
        break;
    default:
        *pick = le;
        *source = DUET_SRC_EXPERT;
        break;
    }
    return DUET_OK;
}

/* ---- one step, in phases ----------------------------------------------------------------
 * A step is: bring the base up to the list (sync), read what the policy needs and decide,
 * ask the expert (sync it), then pick and sample. duet_collab_step runs the phases for one
 * decoder; duet_collab_step_batch runs each phase for many decoders at once, with the
 * forward passes of the syncs and logits batched, and the decisions made in between exactly
 * as for one. */

/* Checks and clears the token; the step's state starts here. */
static int step_begin(duet_collab *c, duet_collab_token *tok, duet_error *err) {
    memset(tok, 0, sizeof *tok);
    memset(&c->cur, 0, sizeof c->cur);
    c->cur.t_start = duet_time_s();
    tok->score = tok->p_defer = NAN;
    tok->expert_top = -1;
    tok->base_top = -1;
    tok->base_top_p = NAN;
    c->cur.p = c->cur.base_entropy = NAN;
    if (c->n_toks >= c->n_ctx)
        return duet_fail(err, DUET_ERR_RANGE, "context of %d tokens is full", c->n_ctx);
    int pol = c->p.policy;
    /* The base's logits are read only where something needs them: collm, random and expert
     * decide without them, and a deferred token then never pays for the output matrix. */
    c->cur.lazy_lb = !c->base_stats && (pol == DUET_POLICY_COLLM || pol == DUET_POLICY_RANDOM ||
                                        pol == DUET_POLICY_EXPERT);
    return DUET_OK;
}

/* After the base is synced: read its logits if the policy needs them, and decide. */
static void step_decide(duet_collab *c, duet_collab_token *tok) {
    const float *h = duet_session_hidden(c->sb, -1);
    if (!c->cur.lazy_lb) {
        double t0 = duet_time_s();
        c->cur.lb = duet_session_logits(c->sb, -1);
        c->st.t_base += duet_time_s() - t0;
        tok->base_top = duet_argmax(c->cur.lb, c->n_vocab);
        if (c->base_stats) dist_stats(c->cur.lb, c->n_vocab, &tok->base_top_p, &c->cur.base_entropy);
    }
    c->cur.need_expert = decide_defer(c, tok, h, c->cur.base_entropy, &c->cur.p);
}

/* After the expert was asked (expert_rc: how that went; err holds its message): pick the
 * distribution, sample, append. */
static int step_finish(duet_collab *c, duet_collab_token *tok, int expert_rc, duet_error *err) {
    int V = c->n_vocab, rc = DUET_OK, source = DUET_SRC_BASE;
    const float *lb = c->cur.lb, *pick = lb;
    int need_expert = c->cur.need_expert;
    if (need_expert && expert_rc) {
        if (!c->p.expert_fallback) return expert_rc;
        tok->expert_failed = 1; /* the base decides this token; the caller reports it */
        c->st.expert_failures++;
        need_expert = 0;
    }
    if (need_expert) {
        c->st.expert_calls++;
        if ((rc = use_expert(c, tok, lb, c->cur.p, &pick, &source, err))) return rc;
    }
    if (!pick) { /* the base speaks after a decision that did not read its logits */
        double t0 = duet_time_s();
        pick = lb = duet_session_logits(c->sb, -1);
        c->st.t_base += duet_time_s() - t0;
        tok->base_top = duet_argmax(lb, V);
    }
    tok->source = source;
    tok->deferred = source != DUET_SRC_BASE;
    tok->id = duet_sampler_sample(c->smp, pick, V);
    c->st.n_deferred += tok->deferred;
    int eos = duet_token_is_eog(c->base, tok->id);
    if (!eos) {
        c->toks[c->n_toks++] = tok->id;
        c->st.n_generated++;
        if (c->p.eager_sync && c->has_expert) rc = follower_sync(c, &c->ex, 0, err);
    }
    update_counts(c);
    c->st.t_total += duet_time_s() - c->cur.t_start;
    if (rc) return rc;
    return eos ? DUET_EOS : DUET_OK;
}

int duet_collab_step(duet_collab *c, duet_collab_token *tok, duet_error *err) {
    int rc = step_begin(c, tok, err);
    if (rc) return rc;
    /* the base consumes every emitted token: evaluate the one emitted last step */
    double t0 = duet_time_s();
    rc = duet_session_sync(c->sb, c->toks, c->n_toks, err);
    c->st.t_base += duet_time_s() - t0;
    if (rc) return rc;
    step_decide(c, tok);
    int erc = c->cur.need_expert ? follower_sync(c, &c->ex, 1, err) : DUET_OK;
    return step_finish(c, tok, erc, err);
}

/* ---- many decoders, one step each ------------------------------------------------------ */
/* Remote experts answer over the network: each deferring decoder's call runs in a thread of
 * its own, so that no decoder waits on another's round trip. */
typedef struct remote_call {
    duet_collab *c;
    duet_error *err;
    int rc;
    pthread_t th;
    int started;
} remote_call;

static void *remote_call_run(void *arg) {
    remote_call *r = arg;
    r->rc = follower_sync(r->c, &r->c->ex, 1, r->err);
    return NULL;
}

/* Scratch of a batched step, one entry per decoder. */
typedef struct batch_work {
    duet_collab **grp;
    int *idx, *grc, *erc;
    duet_error **gerr;
    duet_session **ss;
    const int32_t **ts;
    int *ns;
    remote_call *rem;
} batch_work;

/* Base syncs (which 0) or expert syncs with logits (which 1) of decoders w->grp[0..n) in one
 * batched call when their sessions share a model; w->grc[i] gets each one's result and
 * *w->gerr[i] its message. A batch that fails (one bad member) is redone one by one, so each
 * error lands where it belongs. */
static void sync_many(batch_work *w, int n, int which) {
    if (!n) return;
    int same = 1;
    for (int i = 0; i < n; i++) {
        duet_collab *c = w->grp[i];
        follower *f = &c->ex;
        if (which) for (int k = 0; k < c->n_toks; k++) f->ids[k] = f->map[c->toks[k]];
        w->ss[i] = which ? f->s : c->sb;
        w->ts[i] = which ? f->ids : c->toks;
        w->ns[i] = c->n_toks;
        same &= duet_session_model(w->ss[i]) == duet_session_model(w->ss[0]);
    }
    duet_error scratch = {0};
    double t0 = duet_time_s();
    int rc = same && n > 1 ? duet_session_sync_batch(w->ss, w->ts, w->ns, n, &scratch) : -1;
    if (!rc && which) duet_session_logits_batch(w->ss, n); /* read just below */
    double share = (duet_time_s() - t0) / n;
    for (int i = 0; i < n; i++) {
        duet_collab *c = w->grp[i];
        double *t = which ? &c->st.t_expert : &c->st.t_base;
        if (rc) { /* alone: one decoder, mixed models, or a failed batch */
            double t1 = duet_time_s();
            w->grc[i] = which ? follower_sync(c, &c->ex, 1, w->gerr[i])
                              : duet_session_sync(c->sb, c->toks, c->n_toks, w->gerr[i]);
            if (!which) *t += duet_time_s() - t1; /* (follower_sync counts its own time) */
            continue;
        }
        w->grc[i] = DUET_OK;
        *t += share;
        if (which) {
            const float *l = duet_session_logits(c->ex.s, -1);
            for (int b = 0; b < c->n_vocab; b++) c->ex.logits[b] = l[c->ex.map[b]];
        }
    }
}

/* The phases of duet_collab_step for every decoder, each phase's forward passes batched. */
static void step_batch(duet_collab *const *cs, int n, duet_collab_token *toks, int *rcs,
                       duet_error *errs, batch_work *w) {
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!(rcs[i] = step_begin(cs[i], &toks[i], &errs[i])))
            w->grp[k] = cs[i], w->idx[k] = i, w->gerr[k++] = &errs[i];
    sync_many(w, k, 0);
    int m = 0, live = 0;
    for (int j = 0; j < k; j++) {
        if (w->grc[j]) rcs[w->idx[j]] = w->grc[j];
        else {
            w->grp[live] = w->grp[j], w->idx[live++] = w->idx[j];
            if (!w->grp[j]->cur.lazy_lb) w->ss[m++] = w->grp[j]->sb;
        }
    }
    duet_session_logits_batch(w->ss, m); /* the base logits the decisions read */
    int nl = 0, nr = 0;
    for (int j = 0; j < live; j++) {
        duet_collab *c = w->grp[j];
        int i = w->idx[j];
        step_decide(c, &toks[i]);
        if (!c->cur.need_expert) continue;
        if (c->ex.remote) {
            remote_call *r = &w->rem[nr++];
            *r = (remote_call){.c = c, .err = &errs[i]};
            r->started = !pthread_create(&r->th, NULL, remote_call_run, r);
            if (!r->started) remote_call_run(r);
        } else { /* local deferrals gather at the front of grp (j >= nl: nothing lost) */
            w->grp[nl] = c, w->idx[nl] = i, w->gerr[nl++] = &errs[i];
        }
    }
    sync_many(w, nl, 1);
    for (int j = 0; j < nl; j++) w->erc[w->idx[j]] = w->grc[j];
    for (int j = 0; j < nr; j++) {
        if (w->rem[j].started) pthread_join(w->rem[j].th, NULL);
        w->erc[w->rem[j].err - errs] = w->rem[j].rc;
    }
    m = 0;
    for (int i = 0; i < n; i++) /* the base logits of the tokens the base will speak */
        if (!rcs[i] && cs[i]->cur.lazy_lb && (!cs[i]->cur.need_expert || w->erc[i]))
            w->ss[m++] = cs[i]->sb;
    duet_session_logits_batch(w->ss, m);
    for (int i = 0; i < n; i++)
        if (!rcs[i]) rcs[i] = step_finish(cs[i], &toks[i], w->erc[i], &errs[i]);
}

int duet_collab_step_batch(duet_collab *const *cs, int n, duet_collab_token *toks, int *rcs,
                           duet_error *errs) {
    if (n <= 0) return DUET_OK;
    size_t N = (size_t)n;
    batch_work w = {.grp = malloc(N * sizeof *w.grp), .idx = malloc(N * sizeof *w.idx),
                    .grc = malloc(N * sizeof *w.grc), .erc = calloc(N, sizeof *w.erc),
                    .gerr = malloc(N * sizeof *w.gerr), .ss = malloc(N * sizeof *w.ss),
                    .ts = malloc(N * sizeof *w.ts), .ns = malloc(N * sizeof *w.ns),
                    .rem = malloc(N * sizeof *w.rem)};
    if (w.grp && w.idx && w.grc && w.erc && w.gerr && w.ss && w.ts && w.ns && w.rem)
        step_batch(cs, n, toks, rcs, errs, &w);
    else /* no memory to batch: step them one by one */
        for (int i = 0; i < n; i++) rcs[i] = duet_collab_step(cs[i], &toks[i], &errs[i]);
    free(w.grp), free(w.idx), free(w.grc), free(w.erc), free(w.gerr);
    free(w.ss), free(w.ts), free(w.ns), free(w.rem);
    return DUET_OK;
}

void duet_collab_set_seed(duet_collab *c, uint64_t seed) {
    c->p.sampling.seed = seed;
    c->rng = random_policy_stream(seed);
    duet_sampler_reseed(c->smp, seed);
}

const duet_collab_stats *duet_collab_get_stats(const duet_collab *c) { return &c->st; }

const int32_t *duet_collab_tokens(const duet_collab *c, int *n) {
    if (n) *n = c->n_toks;
    return c->toks;
}

int duet_collab_bridged(const duet_collab *c) { return c->bridged; }

int duet_collab_n_ctx(const duet_collab *c) { return c->n_ctx; }

duet_model *duet_collab_base(const duet_collab *c) { return c->base; }
