/*
 * slots.c: the server's decoding slots with a wait queue, the compute lock, the batched
 * stepping of running answers, each slot's remote-expert backend, the request numbers and the
 * metrics. Every lock of the server lives here: mu guards the slots' busy flags, the queue,
 * the step queue and the counters; compute serialises forward passes on the shared thread
 * pool, and a slot's remote expert lets go of it for the length of its HTTP call when it runs
 * alone (in a batched step the decoder calls the experts from threads of their own).
 *
 * Continuous batching: each request's thread asks for its answer's next token with
 * srv_gen_step. Requests that ask at about the same time form one batch: the first to find
 * every running answer waiting (or to have waited the gather window) leads, runs one
 * duet_gen_step_batch for all of them and hands each its token. Answers join (after their
 * prompt) and leave (when done) between steps. A prompt is evaluated in chunks, at most one
 * chunk between two steps, so that running streams wait at most a step and a chunk.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/slots.h"

#define N_LAT_BUCKETS 12
static const double k_lat_bounds[N_LAT_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                   0.5,   1,    2.5,   5,    10,  30};

/* One decoding slot: a collab decoder (re-created when a request's settings differ), a plain
 * session for /completion, and its own remote-expert connection. */
struct srv_slot {
    int busy;
    long last_used;            /* use_clock when last acquired */
    duet_collab *co;
    duet_collab_params cp;     /* the settings co was made with */
    duet_session *sess;        /* /completion (next-token probabilities) */
    duet_expert_remote *remote;
    duet_expert_backend be;    /* wraps remote: releases the compute lock around HTTP */
    double down_until;         /* after a failed expert call: fail fast until then */
    int in_batch;              /* its decoder is in a batched step (the leader holds compute) */
    char down_msg[512];
    srv_slots *pool;
};

struct srv_slots {
    srv_slots_params p;
    srv_slot *slots;
    pthread_mutex_t mu;        /* slots, queue and metrics */
    pthread_cond_t cv;
    pthread_mutex_t compute;   /* one forward pass at a time on the shared pool */
    int n_waiting;
    long use_clock;
    atomic_long next_id;
    /* batched stepping (under mu) */
    pthread_cond_t step_cv;
    struct step_req *pending, **pending_tail;
    int n_pending, n_running, leading;
    long chunk_steps;          /* m_steps when the last prompt chunk took the compute lock */
    double last_step_s, last_step_end;
    duet_gen **b_gens;         /* [n_slots] a step's arguments and results */
    duet_collab_token *b_toks;
    int *b_rcs;
    duet_error *b_errs;
    struct step_req **b_reqs;
    long m_steps, m_step_rows;
    double m_step_s;           /* seconds spent in batched steps */
    int m_last_batch;
    long m_chunks, m_chunks_unpaced;
    /* metrics (under mu) */
    long m_requests, m_errors, m_prompt_tokens, m_gen_tokens, m_deferred, m_expert_calls;
    long m_expert_failures, m_lat_count, m_lat_bucket[N_LAT_BUCKETS];
    double m_lat_sum;
};

/* ---- the remote expert ------------------------------------------------------------------- */
/* The remote expert's HTTP call does not need the compute pool: let other slots step. After
 * a call failed (retries spent), the next second's calls fail at once with the same message,
 * so that a dead expert costs one retry cycle, not one per token. */
#define EXPERT_DOWN_S 1.0
static int slot_remote_next(void *ctx, const int32_t *t, int n, float *out, duet_error *err) {
    srv_slot *sl = ctx;
    if (duet_time_s() < sl->down_until)
        return duet_fail(err, DUET_ERR_IO, "%s", sl->down_msg);
    if (!sl->in_batch) pthread_mutex_unlock(&sl->pool->compute);
    const duet_expert_backend *rb = duet_expert_remote_backend(sl->remote);
    duet_error e = {0};
    int rc = rb->next_logits(rb->ctx, t, n, out, &e);
    if (!sl->in_batch) pthread_mutex_lock(&sl->pool->compute);
    if (rc) {
        sl->down_until = duet_time_s() + EXPERT_DOWN_S;
        snprintf(sl->down_msg, sizeof sl->down_msg, "%s", e.msg);
        duet_fail(err, rc, "%s", e.msg);
    }
    return rc;
}

void srv_compute_lock(srv_slots *pool) { pthread_mutex_lock(&pool->compute); }
void srv_compute_unlock(srv_slots *pool) { pthread_mutex_unlock(&pool->compute); }

/* ---- the pool ---------------------------------------------------------------------------- */
int srv_slots_new(const srv_slots_params *p, srv_slots **out, int *n_ctx, duet_error *err) {
    *out = NULL;
    srv_slots *pool = calloc(1, sizeof *pool);
    if (!pool || !(pool->slots = calloc((size_t)p->n_slots, sizeof *pool->slots))) {
        free(pool);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    pool->p = *p;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pthread_mutex_init(&pool->compute, NULL);
    pthread_cond_init(&pool->step_cv, NULL);
    pool->pending_tail = &pool->pending;
    size_t N = (size_t)p->n_slots;
    pool->b_gens = calloc(N, sizeof *pool->b_gens);
    pool->b_toks = calloc(N, sizeof *pool->b_toks);
    pool->b_rcs = calloc(N, sizeof *pool->b_rcs);
    pool->b_errs = calloc(N, sizeof *pool->b_errs);
    pool->b_reqs = calloc(N, sizeof *pool->b_reqs);
    int rc = pool->b_gens && pool->b_toks && pool->b_rcs && pool->b_errs && pool->b_reqs
                 ? DUET_OK : duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; i < p->n_slots && !rc; i++) {
        srv_slot *sl = &pool->slots[i];
        sl->pool = pool;
        if (p->remote) {
            duet_expert_remote_params rp = *p->remote;
            rp.skip_check = i > 0; /* one check at start-up is enough */
            rc = duet_expert_remote_new(p->base, &rp, &sl->remote, err);
            if (!rc) {
                sl->be = *duet_expert_remote_backend(sl->remote);
                sl->be.ctx = sl;
                sl->be.next_logits = slot_remote_next;
            }
        }
    }
    /* the decoder's own rule (min of the models' contexts, capped) decides n_ctx: build one
     * collab to learn it and to check the configuration before the server binds */
    duet_collab *co = NULL;
    if (!rc) rc = srv_slot_decoder(&pool->slots[0], &p->defaults, &co, err);
    duet_session_params sp = {.n_ctx = co ? duet_collab_n_ctx(co) : 0,
                              .type_k = p->defaults.type_k, .type_v = p->defaults.type_v};
    for (int i = 0; i < p->n_slots && !rc; i++)
        rc = duet_session_new(p->base, &sp, &pool->slots[i].sess, err);
    if (rc) {
        srv_slots_free(pool);
        return rc;
    }
    *n_ctx = sp.n_ctx;
    *out = pool;
    return DUET_OK;
}

void srv_slots_free(srv_slots *pool) {
    if (!pool) return;
    for (int i = 0; i < pool->p.n_slots; i++) {
        duet_collab_free(pool->slots[i].co);
        duet_session_free(pool->slots[i].sess);
        duet_expert_remote_free(pool->slots[i].remote);
    }
    free(pool->slots);
    free(pool->b_gens), free(pool->b_toks), free(pool->b_rcs), free(pool->b_errs), free(pool->b_reqs);
    pthread_cond_destroy(&pool->step_cv);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->compute);
    free(pool);
}

/* ---- slots ------------------------------------------------------------------------------- */
int srv_slot_index(const srv_slot *sl) { return (int)(sl - sl->pool->slots); }

int srv_slot_prefix(const srv_slot *sl, const int32_t *ids, int n, int collab, int *have_out) {
    int have = 0;
    const int32_t *t = NULL;
    if (collab && sl->co) t = duet_collab_tokens(sl->co, &have);
    if (!collab) { t = duet_session_tokens(sl->sess); have = duet_session_n_past(sl->sess); }
    int k = 0;
    while (k < have && k < n && t[k] == ids[k]) k++;
    *have_out = have;
    return k;
}

/* A free slot: the one whose timeline shares the longest prefix with ids when that prefix is
 * at least half of the timeline (a continuation: an expert server asked token by token finds
 * its KV cache every time), else the least recently used one, so an unrelated request does
 * not evict a conversation that is still going (llama.cpp's server picks alike). */
static srv_slot *pick_free(srv_slots *pool, const int32_t *ids, int n, int collab) {
    srv_slot *best = NULL, *lru = NULL;
    int best_k = 0;
    for (int i = 0; i < pool->p.n_slots; i++) {
        srv_slot *sl = &pool->slots[i];
        if (sl->busy) continue;
        int have = 0, k = ids ? srv_slot_prefix(sl, ids, n, collab, &have) : 0;
        if (k > best_k && 2 * k >= have) { best = sl; best_k = k; }
        if (!lru || sl->last_used < lru->last_used) lru = sl;
    }
    return best ? best : lru;
}

srv_slot *srv_slot_acquire(srv_slots *pool, const int32_t *ids, int n, int collab) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += pool->p.queue_timeout_s;
    pthread_mutex_lock(&pool->mu);
    pool->n_waiting++;
    srv_slot *got = NULL;
    for (;;) {
        if ((got = pick_free(pool, ids, n, collab))) break;
        if (pthread_cond_timedwait(&pool->cv, &pool->mu, &until) == ETIMEDOUT) {
            got = pick_free(pool, ids, n, collab); /* one last look */
            break;
        }
    }
    if (got) {
        got->busy = 1;
        got->last_used = ++pool->use_clock;
    }
    pool->n_waiting--;
    pthread_mutex_unlock(&pool->mu);
    return got;
}

void srv_slot_release(srv_slots *pool, srv_slot *sl) {
    pthread_mutex_lock(&pool->mu);
    sl->busy = 0;
    pthread_cond_signal(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
}

static int same_settings(const duet_collab_params *a, const duet_collab_params *b) {
    return a->policy == b->policy && a->threshold == b->threshold &&
           a->random_rate == b->random_rate && a->cd_alpha == b->cd_alpha && a->cd_beta == b->cd_beta &&
           a->eager_sync == b->eager_sync && a->details == b->details && a->n_ctx == b->n_ctx &&
           a->expert_backend == b->expert_backend && a->expert_fallback == b->expert_fallback &&
           a->sampling.temp == b->sampling.temp && a->sampling.top_k == b->sampling.top_k &&
           a->sampling.top_p == b->sampling.top_p && a->sampling.min_p == b->sampling.min_p;
}

/* A decoder is reused (keeping its KV cache prefix) only when its settings match and
 * nothing random carries over between requests (greedy sampling, no random policy): a seed
 * must mean the same answer. */
int srv_slot_decoder(srv_slot *sl, const duet_collab_params *want, duet_collab **co,
                     duet_error *err) {
    duet_collab_params cp = *want;
    cp.expert_backend = sl->remote ? &sl->be : NULL;
    int reuse = sl->co && same_settings(&sl->cp, &cp) && cp.sampling.temp <= 0 &&
                cp.policy != DUET_POLICY_RANDOM;
    *co = NULL;
    if (!reuse) {
        duet_collab_free(sl->co);
        sl->co = NULL;
        const srv_slots_params *p = &sl->pool->p;
        int rc = duet_collab_new(p->base, p->expert, NULL, p->head, &cp, &sl->co, err);
        if (rc) return rc;
        sl->cp = cp;
    }
    *co = sl->co;
    return DUET_OK;
}

duet_session *srv_slot_session(srv_slot *sl) { return sl->sess; }

/* ---- batched steps ----------------------------------------------------------------------- */
typedef struct step_req {
    duet_gen *g;
    srv_slot *sl;
    duet_collab_token tok;
    duet_error err;
    int rc, done;
    struct step_req *next;
} step_req;

/* How long a request waits for the other running answers to ask for their next token before
 * it steps without them (a client that does not read its stream holds no one up for long):
 * a fifth of the last step, within [1 ms, 20 ms]. */
static double gather_window(const srv_slots *pool) {
    return DUET_MAX(0.001, DUET_MIN(0.02, 0.2 * pool->last_step_s));
}

static void abs_deadline(struct timespec *ts, double in_s) {
    clock_gettime(CLOCK_REALTIME, ts);
    double ns = (double)ts->tv_nsec + (in_s > 0 ? in_s : 0) * 1e9;
    ts->tv_sec += (time_t)(ns / 1e9);
    ts->tv_nsec = (long)fmod(ns, 1e9);
}

/* With mu held: take every waiting request, step them as one batch (mu released meanwhile),
 * hand out the results. The batch is taken once the compute lock is held: a prompt chunk may
 * hold it for seconds, and every answer that asks meanwhile belongs in the step that follows
 * it (taken before, an answer whose thread came back a little late would wait for the step
 * after the next chunk: two chunks between two of its tokens). */
static void lead_step(srv_slots *pool) {
    pool->leading = 1;
    pthread_mutex_unlock(&pool->mu);
    pthread_mutex_lock(&pool->compute);
    pthread_mutex_lock(&pool->mu);
    int k = 0;
    for (step_req *r = pool->pending; r && k < pool->p.n_slots; r = r->next) pool->b_reqs[k++] = r;
    pool->pending = k < pool->n_pending ? pool->b_reqs[k - 1]->next : NULL;
    pool->n_pending -= k;
    if (!pool->pending) pool->pending_tail = &pool->pending;
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < k; i++) {
        pool->b_gens[i] = pool->b_reqs[i]->g;
        pool->b_reqs[i]->sl->in_batch = 1;
    }
    double t0 = duet_time_s();
    duet_gen_step_batch(pool->b_gens, k, pool->b_toks, pool->b_rcs, pool->b_errs);
    double t1 = duet_time_s();
    for (int i = 0; i < k; i++) pool->b_reqs[i]->sl->in_batch = 0;
    /* counted before the lock goes: a prompt chunk waiting for it sees this step */
    pthread_mutex_lock(&pool->mu);
    pthread_mutex_unlock(&pool->compute);
    for (int i = 0; i < k; i++) {
        step_req *r = pool->b_reqs[i];
        r->tok = pool->b_toks[i];
        r->rc = pool->b_rcs[i];
        if (r->rc && r->rc != DUET_EOS) r->err = pool->b_errs[i];
        r->done = 1;
    }
    pool->last_step_s = t1 - t0;
    pool->last_step_end = t1;
    pool->m_steps++;
    pool->m_step_rows += k;
    pool->m_step_s += t1 - t0;
    pool->m_last_batch = k;
    pool->leading = 0;
    pthread_cond_broadcast(&pool->step_cv);
}

int srv_gen_step(srv_slots *pool, srv_slot *sl, duet_gen *g, duet_collab_token *tok,
                 duet_error *err) {
    step_req me = {.g = g, .sl = sl};
    pthread_mutex_lock(&pool->mu);
    *pool->pending_tail = &me;
    pool->pending_tail = &me.next;
    pool->n_pending++;
    double arrived = duet_time_s();
    pthread_cond_broadcast(&pool->step_cv); /* a request waiting for everyone may be complete */
    while (!me.done) {
        /* the window counts from the later of this request and the last step's end */
        double until = DUET_MAX(arrived, pool->last_step_end) + gather_window(pool);
        if (!pool->leading && (pool->n_pending >= pool->n_running || duet_time_s() >= until)) {
            lead_step(pool);
            continue;
        }
        struct timespec ts;
        abs_deadline(&ts, pool->leading ? 0.05 : until - duet_time_s());
        pthread_cond_timedwait(&pool->step_cv, &pool->mu, &ts);
    }
    pthread_mutex_unlock(&pool->mu);
    *tok = me.tok;
    if (me.rc && me.rc != DUET_EOS) *err = me.err;
    return me.rc;
}

void srv_gen_join(srv_slots *pool) {
    pthread_mutex_lock(&pool->mu);
    pool->n_running++;
    pthread_mutex_unlock(&pool->mu);
}

void srv_gen_leave(srv_slots *pool) {
    pthread_mutex_lock(&pool->mu);
    pool->n_running--;
    pthread_cond_broadcast(&pool->step_cv); /* the rest may all be waiting now */
    pthread_mutex_unlock(&pool->mu);
}

/* With mu held: may a prompt chunk take the compute lock now? While answers run, only when
 * one of their steps has run since the last chunk took it (so a stream waits through at most
 * one chunk between two of its tokens), or when none of them has asked for a token by the
 * deadline (clients not reading: their threads are still sending). One that has asked gets
 * its step first, however late. */
static int chunk_may_go(const srv_slots *pool, double deadline) {
    return pool->n_running == 0 || pool->m_steps != pool->chunk_steps ||
           (!pool->n_pending && !pool->leading && duet_time_s() >= deadline);
}

int srv_gen_prefill(srv_slots *pool, duet_collab *co, const int32_t *ids, int n, int chunk,
                    duet_error *err) {
    for (;;) {
        pthread_mutex_lock(&pool->mu);
        double deadline = duet_time_s() + DUET_MAX(0.05, 2 * pool->last_step_s);
        for (;;) {
            while (!chunk_may_go(pool, deadline)) { /* woken by steps and by answers asking */
                struct timespec ts;
                abs_deadline(&ts, DUET_MAX(0.01, deadline - duet_time_s()));
                pthread_cond_timedwait(&pool->step_cv, &pool->mu, &ts);
            }
            pthread_mutex_unlock(&pool->mu);
            /* decided again with the lock held: another prompt's chunk may have taken it first */
            pthread_mutex_lock(&pool->compute);
            pthread_mutex_lock(&pool->mu);
            if (chunk_may_go(pool, deadline)) break;
            pthread_mutex_unlock(&pool->compute);
        }
        pool->m_chunks++;
        pool->m_chunks_unpaced += pool->n_running > 0 && pool->m_steps == pool->chunk_steps;
        pool->chunk_steps = pool->m_steps;
        pthread_mutex_unlock(&pool->mu);
        int left = duet_collab_prefill(co, ids, n, chunk, err);
        pthread_mutex_unlock(&pool->compute);
        if (left <= 0) return left;
    }
}

/* ---- request numbers and metrics --------------------------------------------------------- */
long srv_next_request_id(srv_slots *pool) { return atomic_fetch_add(&pool->next_id, 1); }

void srv_metrics_generation(srv_slots *pool, int n_prompt, const duet_collab_stats *st) {
    pthread_mutex_lock(&pool->mu);
    pool->m_prompt_tokens += n_prompt;
    pool->m_gen_tokens += st->n_generated;
    pool->m_deferred += st->n_deferred;
    pool->m_expert_calls += st->expert_calls;
    pool->m_expert_failures += st->expert_failures;
    pthread_mutex_unlock(&pool->mu);
}

void srv_metrics_request(srv_slots *pool, int status, double dt) {
    pthread_mutex_lock(&pool->mu);
    pool->m_requests++;
    pool->m_errors += status >= 400;
    pool->m_lat_count++;
    pool->m_lat_sum += dt;
    for (int i = 0; i < N_LAT_BUCKETS; i++)
        if (dt <= k_lat_bounds[i]) { pool->m_lat_bucket[i]++; break; }
    pthread_mutex_unlock(&pool->mu);
}

char *srv_metrics_text(srv_slots *s, size_t *n) {
    char *out = NULL;
    FILE *f = open_memstream(&out, n);
    if (!f) return NULL;
    pthread_mutex_lock(&s->mu);
    int busy = 0;
    for (int i = 0; i < s->p.n_slots; i++) busy += s->slots[i].busy;
#define METRIC(name, type, help, fmt, v) \
    fprintf(f, "# HELP duet_" name " " help "\n# TYPE duet_" name " " type "\nduet_" name " " fmt "\n", v)
    METRIC("requests_total", "counter", "HTTP requests answered", "%ld", s->m_requests);
    METRIC("requests_errors_total", "counter", "requests answered with a 4xx or 5xx status", "%ld", s->m_errors);
    METRIC("prompt_tokens_total", "counter", "prompt tokens of generation requests", "%ld", s->m_prompt_tokens);
    METRIC("tokens_generated_total", "counter", "tokens generated", "%ld", s->m_gen_tokens);
    METRIC("tokens_deferred_total", "counter", "generated tokens chosen with the expert", "%ld", s->m_deferred);
    METRIC("deferral_frequency", "gauge", "deferred / generated tokens since start", "%.6f",
           s->m_gen_tokens ? (double)s->m_deferred / (double)s->m_gen_tokens : 0.0);
    METRIC("expert_calls_total", "counter", "next-token distributions asked of the expert", "%ld", s->m_expert_calls);
    METRIC("expert_failures_total", "counter", "tokens the expert could not supply", "%ld", s->m_expert_failures);
    METRIC("slots_busy", "gauge", "decoding slots in use", "%d", busy);
    METRIC("slots_total", "gauge", "decoding slots", "%d", s->p.n_slots);
    METRIC("requests_queued", "gauge", "requests waiting for a slot", "%d", s->n_waiting);
    METRIC("generations_running", "gauge", "answers being decoded", "%d", s->n_running);
    METRIC("batch_size", "gauge", "answers the last decoding step advanced together", "%d", s->m_last_batch);
    METRIC("batch_steps_total", "counter", "batched decoding steps", "%ld", s->m_steps);
    METRIC("batch_tokens_total", "counter", "answer steps run in batched decoding steps", "%ld", s->m_step_rows);
    METRIC("batch_size_mean", "gauge", "answers per decoding step since start", "%.4f",
           s->m_steps ? (double)s->m_step_rows / (double)s->m_steps : 0.0);
    METRIC("batch_step_seconds_total", "counter", "seconds spent in batched decoding steps", "%.6f",
           s->m_step_s);
    METRIC("prefill_chunks_total", "counter", "prompt chunks given the compute lock", "%ld", s->m_chunks);
    METRIC("prefill_chunks_unpaced_total", "counter", "prompt chunks that followed another with no "
           "decoding step between them while answers ran (their clients did not ask in time)", "%ld",
           s->m_chunks_unpaced);
    fprintf(f, "# HELP duet_request_latency_seconds time from request to the last byte queued\n"
               "# TYPE duet_request_latency_seconds histogram\n");
    long cum = 0;
    for (int i = 0; i < N_LAT_BUCKETS; i++) {
        cum += s->m_lat_bucket[i];
        fprintf(f, "duet_request_latency_seconds_bucket{le=\"%g\"} %ld\n", k_lat_bounds[i], cum);
    }
    fprintf(f, "duet_request_latency_seconds_bucket{le=\"+Inf\"} %ld\n", s->m_lat_count);
    fprintf(f, "duet_request_latency_seconds_sum %.6f\nduet_request_latency_seconds_count %ld\n",
            s->m_lat_sum, s->m_lat_count);
#undef METRIC
    pthread_mutex_unlock(&s->mu);
    fclose(f);
    return out;
}
