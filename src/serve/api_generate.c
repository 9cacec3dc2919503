/*
 * api_generate.c: the endpoints that run the models: /v1/completions and
 * /v1/chat/completions (OpenAI shape, streamed as server-sent events or whole), and
 * /completion (llama.cpp's protocol: next-token log-probabilities, what a remote-expert client
 * asks, answered by the served model alone; with "prompt_logprobs": true also every prompt
 * token's log-probability, max log-probability and entropy, what `duet score` stores). Text
 * leaves only as valid UTF-8: token pieces that end inside a multi-byte character
 * wait for the rest, and bytes that never form a character become U+FFFD.
 * Extensions (off unless asked): "duet_tokens": true adds each token's id, text, source and
 * p_defer; "policy", "threshold" and "on_expert_failure" ("fail" | "continue") are per request.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/api.h"
#include "serve/server.h"
#include "serve/slots.h"

/* ---- request fields ---------------------------------------------------------------------- */
/* Optional number in [lo, hi] (absent or null: untouched). 0 ok, -1 after filling msg. */
static int field_num(json_t *b, const char *k, double lo, double hi, double *out, char *msg, size_t cap) {
    json_t *v = json_object_get(b, k);
    if (!v || json_is_null(v)) return 0;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!json_is_number(v) || !(x >= lo && x <= hi)) {
        snprintf(msg, cap, "'%s' must be a number in [%g, %g]", k, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int field_int(json_t *b, const char *k, long long lo, long long hi, long long *out, char *msg,
                     size_t cap) {
    json_t *v = json_object_get(b, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(msg, cap, "'%s' must be an integer in [%lld, %lld]", k, lo, hi);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int field_bool(json_t *b, const char *k, int *out, char *msg, size_t cap) {
    json_t *v = json_object_get(b, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) {
        snprintf(msg, cap, "'%s' must be true or false", k);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

#define MAX_STOP 4
#define MAX_STOP_LEN 256

typedef struct gen_req {
    duet_collab_params cp;
    long long max_tokens;
    int stream, want_tokens, n_stop;
    char stop[MAX_STOP + 1][MAX_STOP_LEN + 1]; /* + the chat format's end of turn */
} gen_req;

/* OpenAI fields duet does not implement: refused when they would change the answer, so that
 * no client gets silently different behaviour; absent, null, false, empty and the neutral
 * number (or response_format {"type": "text"}) are accepted. */
static const struct { const char *key; double neutral; } k_unsupported[] = {
    {"echo", 0}, {"best_of", 1}, {"presence_penalty", 0}, {"frequency_penalty", 0},
    {"logit_bias", 0}, {"suffix", 0}, {"tools", 0}, {"functions", 0}, {"response_format", 0},
};

static int is_default(json_t *v, double neutral) {
    if (!v || json_is_null(v) || json_is_false(v)) return 1;
    if (json_is_number(v)) return json_number_value(v) == neutral;
    if (json_is_array(v)) return !json_array_size(v);
    if (json_is_object(v)) {
        const char *type = json_string_value(json_object_get(v, "type"));
        return !json_object_size(v) || (json_object_size(v) == 1 && type && !strcmp(type, "text"));
    }
    return 0;
}

/* seq: how many requests were numbered before this one was parsed, mixed into the seed. */
static int parse_request(const srv_config *cfg, json_t *b, int chat, long seq, gen_req *r, char *msg,
                         size_t cap) {
    memset(r, 0, sizeof *r);
    r->cp = cfg->p.defaults;
    duet_sampler_defaults(&r->cp.sampling);
    r->cp.sampling.seed = (uint64_t)time(NULL) ^ (uint64_t)seq * 0x9e3779b97f4a7c15ull;
    r->max_tokens = chat ? cfg->n_ctx : 16; /* OpenAI: 16 for completions; chat until the end */
    double temp = r->cp.sampling.temp, top_p = r->cp.sampling.top_p, min_p = r->cp.sampling.min_p;
    double thr = r->cp.threshold;
    long long top_k = r->cp.sampling.top_k, seed = -1, n = 1, logprobs = 0;
    json_t *model = json_object_get(b, "model");
    if (model && !json_is_null(model) && !json_is_string(model))
        return snprintf(msg, cap, "'model' must be a string"), -1;
    const char *mt = chat && json_object_get(b, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (field_int(b, mt, 0, cfg->n_ctx, &r->max_tokens, msg, cap) ||
        field_num(b, "temperature", 0, 100, &temp, msg, cap) ||
        field_num(b, "top_p", 0, 1, &top_p, msg, cap) || field_num(b, "min_p", 0, 1, &min_p, msg, cap) ||
        field_int(b, "top_k", 0, 1 << 30, &top_k, msg, cap) ||
        field_int(b, "seed", -1, INT64_MAX, &seed, msg, cap) || field_int(b, "n", 1, 1, &n, msg, cap) ||
        field_bool(b, "stream", &r->stream, msg, cap) ||
        field_bool(b, "duet_tokens", &r->want_tokens, msg, cap))
        return -1;
    if (chat) {
        int lp = 0;
        if (field_bool(b, "logprobs", &lp, msg, cap)) return -1;
        if (lp) return snprintf(msg, cap, "'logprobs' is not supported by duet serve's chat endpoint "
                                "(ask /completion with n_probs)"), -1;
    } else {
        if (field_int(b, "logprobs", 0, cfg->n_vocab, &logprobs, msg, cap)) return -1;
        if (logprobs) return snprintf(msg, cap, "'logprobs' is not supported by duet serve's "
                                      "completions endpoint (ask /completion with n_probs)"), -1;
    }
    for (size_t i = 0; i < sizeof k_unsupported / sizeof *k_unsupported; i++)
        if (!is_default(json_object_get(b, k_unsupported[i].key), k_unsupported[i].neutral))
            return snprintf(msg, cap, "'%s' is not supported by duet serve", k_unsupported[i].key), -1;
    json_t *pol = json_object_get(b, "policy");
    if (pol && !json_is_null(pol)) {
        int pi = json_is_string(pol) ? duet_policy_from_name(json_string_value(pol)) : -1;
        if (pi < 0) return snprintf(msg, cap, "'policy' must be one of collm, base, expert, random, "
                                    "confidence, compose, proxy, contrastive, uncertainty"), -1;
        r->cp.policy = (duet_policy)pi;
    }
    int head_pol = r->cp.policy == DUET_POLICY_COLLM || r->cp.policy == DUET_POLICY_COMPOSE;
    if (field_num(b, "threshold", 0, head_pol ? 1 : 100, &thr, msg, cap)) return -1;
    json_t *fail = json_object_get(b, "on_expert_failure");
    if (fail && !json_is_null(fail)) {
        const char *f = json_string_value(fail);
        if (!f || (strcmp(f, "fail") && strcmp(f, "continue")))
            return snprintf(msg, cap, "'on_expert_failure' must be \"fail\" or \"continue\""), -1;
        r->cp.expert_fallback = !strcmp(f, "continue");
    }
    json_t *stop = json_object_get(b, "stop");
    if (stop && !json_is_null(stop)) {
        json_t *one = json_is_string(stop) ? stop : NULL;
        size_t ns = one ? 1 : json_is_array(stop) ? json_array_size(stop) : 99;
        if (ns > MAX_STOP) return snprintf(msg, cap, "'stop' must be a string or up to %d strings", MAX_STOP), -1;
        for (size_t i = 0; i < ns; i++) {
            json_t *v = one ? one : json_array_get(stop, i);
            if (!json_is_string(v) || !json_string_length(v) || json_string_length(v) > MAX_STOP_LEN)
                return snprintf(msg, cap, "'stop' strings must have 1 to %d bytes", MAX_STOP_LEN), -1;
            memcpy(r->stop[r->n_stop++], json_string_value(v), json_string_length(v) + 1);
        }
    }
    r->cp.sampling.temp = (float)temp;
    r->cp.sampling.top_p = (float)top_p;
    r->cp.sampling.min_p = (float)min_p;
    r->cp.sampling.top_k = (int)top_k;
    if (seed >= 0) r->cp.sampling.seed = (uint64_t)seed;
    r->cp.threshold = (float)thr;
    r->cp.n_ctx = cfg->n_ctx;
    return 0;
}

/* ---- one generation ---------------------------------------------------------------------- */
typedef struct gen {
    const srv_config *cfg;
    srv_slot *sl;
    duet_collab *co;    /* the slot's decoder, fitted to this request */
    gen_req r;
    int chat, n_prompt, n_gen, done, sent_done;
    const char *finish;
    duet_gen *dg;       /* the library's generation loop: the answer so far, valid UTF-8 */
    size_t sent;        /* bytes of the answer already streamed */
    const char *stops[MAX_STOP + 1];
    json_t *tokens;   /* duet_tokens not yet reported */
    json_t *failed;   /* indices of tokens the expert could not supply */
    char id[48], err[560];
    long created;
    duet_buf out;       /* SSE bytes waiting for the socket */
    size_t out_off;
    duet_collab_stats st;
} gen;

/* Make the slot's decoder fit the request and run the prompt. */
static int gen_start(gen *g, const int32_t *prompt, duet_error *err) {
    int rc = srv_slot_decoder(g->sl, &g->r.cp, &g->co, err);
    if (rc) return rc;
    srv_compute_lock(g->cfg->slots);
    rc = duet_collab_start(g->co, prompt, g->n_prompt, err);
    srv_compute_unlock(g->cfg->slots);
    duet_gen_params gp = {.max_tokens = (int)g->r.max_tokens, .stops = g->stops,
                          .n_stops = g->r.n_stop, .utf8 = 1};
    if (!rc) rc = duet_gen_new(g->co, &gp, &g->dg, err);
    return rc;
}

/* The answer has ended: OpenAI's finish_reason for why, and the decoder's final counts. */
static void gen_finish(gen *g, int end) {
    if (g->done) return;
    g->done = 1;
    g->finish = end == DUET_GEN_ERROR ? "error"
              : end == DUET_GEN_LIMIT || end == DUET_GEN_CONTEXT ? "length" : "stop";
    g->st = *duet_collab_get_stats(g->co);
}

/* A token's entry in duet_tokens and, when the expert could not supply it, in the failed list. */
static void record_token(gen *g, const duet_collab_token *t) {
    if (t->expert_failed) json_array_append_new(g->failed, json_integer(g->n_gen));
    if (g->r.want_tokens) {
        size_t len;
        const char *piece = duet_gen_piece(g->dg, &len);
        duet_buf ps = {0};
        sb_add(&ps, piece, len);
        json_t *o = json_pack("{s:i, s:s, s:s}", "id", t->id, "text", ps.p, "source",
                              duet_source_name(t->source));
        free(ps.p);
        json_object_set_new(o, "p_defer", isfinite(t->p_defer) ? json_real(t->p_defer) : json_null());
        if (t->expert_failed) json_object_set_new(o, "expert_failed", json_true());
        json_array_append_new(g->tokens, o);
    }
    g->n_gen = duet_gen_n_tokens(g->dg);
}

static void gen_step(gen *g) {
    duet_collab_token t;
    duet_error err = {0};
    srv_compute_lock(g->cfg->slots);
    int rc = duet_gen_step(g->dg, &t, &err);
    srv_compute_unlock(g->cfg->slots);
    if (rc == DUET_OK) record_token(g, &t);
    else if (rc != DUET_EOS) snprintf(g->err, sizeof g->err, "%s", err.msg);
    if (duet_gen_end(g->dg)) gen_finish(g, duet_gen_end(g->dg));
}

/* The answer so far; what may be streamed of it is duet_gen_ready. */
static const char *answer(const gen *g, size_t *n) { return duet_gen_text(g->dg, n); }

static json_t *duet_summary(const gen *g) {
    json_t *d = json_pack("{s:s, s:i, s:i, s:i, s:O}", "policy", duet_policy_name(g->r.cp.policy),
                          "deferred", g->st.n_deferred, "expert_calls", g->st.expert_calls,
                          "expert_failures", g->st.expert_failures, "expert_failed_tokens", g->failed);
    if (g->st.expert_failures)
        json_object_set_new(d, "warning", json_string("the expert failed for some tokens "
                            "(expert_failed_tokens); the base chose them (on_expert_failure: continue)"));
    return d;
}

static json_t *usage(const gen *g) {
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", g->n_prompt, "completion_tokens", g->n_gen,
                     "total_tokens", g->n_prompt + g->n_gen);
}

/* One choice object: a chunk (delta) when streaming, else the whole answer. */
static json_t *choice(gen *g, const char *text, size_t n, int final) {
    json_t *c = json_pack("{s:i}", "index", 0);
    json_t *txt = json_stringn(text ? text : "", n);
    if (g->chat) json_object_set_new(c, g->r.stream ? "delta" : "message",
                                     g->r.stream ? json_pack("{s:o}", "content", txt)
                                                 : json_pack("{s:s, s:o}", "role", "assistant", "content", txt));
    else {
        json_object_set_new(c, "text", txt);
        json_object_set_new(c, "logprobs", json_null());
    }
    json_object_set_new(c, "finish_reason", final && g->done ? json_string(g->finish) : json_null());
    if (g->r.want_tokens) {
        json_object_set(c, "duet_tokens", g->tokens);
        json_decref(g->tokens);
        g->tokens = json_array();
    }
    return c;
}

static json_t *envelope(gen *g, json_t *ch) {
    const char *obj = g->chat ? (g->r.stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    return json_pack("{s:s, s:s, s:i, s:s, s:[o]}", "id", g->id, "object", obj, "created",
                     (int)g->created, "model", g->cfg->model_name, "choices", ch);
}

static void sse_event(gen *g, json_t *js) {
    char *s = json_dumps(js, JSON_COMPACT);
    json_decref(js);
    if (!s) return;
    duet_buf_add(&g->out, "data: ", 6);
    duet_buf_add(&g->out, s, strlen(s));
    duet_buf_add(&g->out, "\n\n", 2);
    free(s);
}

static void gen_free(void *cls) {
    gen *g = cls;
    if (g->sl) {
        if (g->co) srv_metrics_generation(g->cfg->slots, g->n_prompt, duet_collab_get_stats(g->co));
        srv_slot_release(g->cfg->slots, g->sl);
    }
    json_decref(g->tokens);
    json_decref(g->failed);
    duet_gen_free(g->dg);
    free(g->out.p);
    free(g);
}

/* MHD pulls the stream from here: one decoding step per event. Returning END_OF_STREAM (or
 * a client hanging up) ends the response, and gen_free gives the slot back. */
static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    gen *g = cls;
    while (g->out_off == g->out.n) {
        g->out.n = g->out_off = 0;
        if (g->sent_done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!g->done) gen_step(g);
        if (g->done && g->err[0]) { /* the stream has begun: the error becomes an event */
            duet_buf m = {0};
            sb_add(&m, g->err, strlen(g->err));
            sse_event(g, json_pack("{s:{s:s, s:s, s:i}}", "error", "message", m.p, "type",
                                   "expert_error", "code", 502));
            free(m.p);
        } else {
            size_t upto = duet_gen_ready(g->dg);
            if (upto > g->sent || g->done || (g->r.want_tokens && json_array_size(g->tokens))) {
                json_t *js = envelope(g, choice(g, answer(g, NULL) + g->sent, upto - g->sent, 1));
                g->sent = upto;
                if (g->done) {
                    json_object_set_new(js, "usage", usage(g));
                    json_object_set_new(js, "duet", duet_summary(g));
                }
                sse_event(g, js);
            }
        }
        if (g->done) {
            duet_buf_add(&g->out, "data: [DONE]\n\n", 14);
            g->sent_done = 1;
        }
    }
    size_t n = DUET_MIN(max, g->out.n - g->out_off);
    memcpy(buf, g->out.p + g->out_off, n);
    g->out_off += n;
    return (ssize_t)n;
}

enum MHD_Result api_completions(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                                json_t *body, int chat) {
    char msg[600];
    gen *g = calloc(1, sizeof *g);
    if (!g) return srv_send_error(c, cx, 500, "out of memory");
    g->cfg = cfg;
    g->chat = chat;
    g->tokens = json_array();
    g->failed = json_array();
    g->created = (long)time(NULL);
    long id = srv_next_request_id(cfg->slots);
    snprintf(g->id, sizeof g->id, "%s-%ld", chat ? "chatcmpl" : "cmpl", id);
    if (parse_request(cfg, body, chat, id + 1, &g->r, msg, sizeof msg)) {
        gen_free(g);
        return srv_send_error(c, cx, 400, "%s", msg);
    }
    if (chat && cfg->chat_eot && cfg->chat_eot[0] && strlen(cfg->chat_eot) <= MAX_STOP_LEN)
        strcpy(g->r.stop[g->r.n_stop++], cfg->chat_eot);
    for (int i = 0; i < g->r.n_stop; i++) g->stops[i] = g->r.stop[i];
    int32_t *ids = NULL;
    int n = -1;
    if (chat) {
        n = api_chat_ids(cfg, json_object_get(body, "messages"), &ids, msg, sizeof msg);
    } else {
        json_t *pr = json_object_get(body, "prompt"), *empty = json_string("");
        n = api_prompt_ids(cfg, pr ? pr : empty, 1, 0, &ids, msg, sizeof msg); /* none: from BOS */
        json_decref(empty);
    }
    if (n == 0) snprintf(msg, sizeof msg, "the prompt is empty (and the model has no BOS token)");
    if (n >= cfg->n_ctx)
        snprintf(msg, sizeof msg, "the prompt has %d tokens and the context holds %d: shorten it "
                 "(duet serve never truncates silently)", n, cfg->n_ctx);
    if (n <= 0 || n >= cfg->n_ctx) {
        free(ids);
        gen_free(g);
        return srv_send_error(c, cx, 400, "%s", msg);
    }
    g->n_prompt = n;
    if (!(g->sl = srv_slot_acquire(cfg->slots, ids, n, 1))) {
        free(ids);
        gen_free(g);
        return srv_send_error(c, cx, 503, "all %d slots stayed busy for %d s; try again later",
                              cfg->p.n_slots, cfg->p.queue_timeout_s);
    }
    duet_error err = {0};
    int rc = gen_start(g, ids, &err);
    free(ids);
    if (rc) {
        unsigned st = rc == DUET_ERR_ARG || rc == DUET_ERR_RANGE || rc == DUET_ERR_UNSUPPORTED ? 400 : 500;
        gen_free(g);
        return srv_send_error(c, cx, st, "%s", err.msg);
    }
    if (duet_gen_end(g->dg)) gen_finish(g, duet_gen_end(g->dg)); /* max_tokens 0 */
    if (g->r.stream) {
        if (chat) { /* OpenAI opens a chat stream with the role */
            json_t *ch = json_pack("{s:i, s:{s:s, s:s}, s:n}", "index", 0, "delta", "role",
                                   "assistant", "content", "", "finish_reason");
            sse_event(g, envelope(g, ch));
        }
        return srv_send_stream(c, cx, sse_reader, g, gen_free);
    }
    while (!g->done) gen_step(g);
    enum MHD_Result ok;
    if (g->err[0]) {
        ok = srv_send_error(c, cx, 502, "the expert failed and on_expert_failure is \"fail\": %s", g->err);
    } else {
        size_t n_text;
        const char *text = answer(g, &n_text);
        json_t *js = envelope(g, choice(g, text, n_text, 1));
        json_object_set_new(js, "usage", usage(g));
        json_object_set_new(js, "duet", duet_summary(g));
        ok = srv_send_json(c, cx, 200, js);
    }
    gen_free(g);
    return ok;
}

/* ---- /completion: next-token log-probabilities (llama.cpp protocol) --------------------- */
static const float *g_sort_lp; /* qsort has no context argument; guarded by the compute lock */
static int by_logprob(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float lx = g_sort_lp[x], ly = g_sort_lp[y];
    return lx > ly ? -1 : lx < ly ? 1 : (x > y) - (x < y); /* lowest id first on ties */
}

static json_t *token_json(const srv_config *cfg, int32_t prev, int32_t id, double lp) {
    duet_buf b = {0};
    api_add_piece(cfg->p.base, prev, id, &b);
    json_t *o = json_pack("{s:i, s:s, s:f}", "id", id, "token", b.p, "logprob", lp);
    free(b.p);
    return o;
}

/* What `duet score` stores per token, for every prompt position after the first: the token's
 * log-probability, the largest log-probability and the entropy (nats) of the distribution that
 * predicts it. Evaluated from scratch in chunks so that only one chunk's logits are held;
 * afterwards the session's timeline is the prompt, its last logits kept. */
#define PROMPT_CHUNK 256
static int prompt_scores(const srv_config *cfg, duet_session *sess, const int32_t *ids, int n, json_t *out,
                         duet_error *err) {
    duet_session_truncate(sess, 0);
    for (int start = 0; start < n; start += PROMPT_CHUNK) {
        int c = DUET_MIN(PROMPT_CHUNK, n - start);
        int rc = duet_session_eval(sess, ids + start, c, 1, err);
        if (rc) return rc;
        for (int i = 0; i < c && start + i + 1 < n; i++) {
            const float *l = duet_session_logits(sess, i);
            double mx, z, ez;
            duet_softmax_stats(l, cfg->n_vocab, &mx, &z, &ez);
            int32_t gold = ids[start + i + 1];
            json_array_append_new(out, json_pack("{s:i, s:f, s:f, s:f}", "id", gold, "logprob",
                                                 (double)l[gold] - mx - log(z), "max_logprob",
                                                 -log(z), "entropy", log(z) - ez / z));
        }
    }
    return DUET_OK;
}

enum MHD_Result api_next_token(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                               json_t *body) {
    char msg[300];
    long long n_predict = 1, n_probs = 0;
    int want_prompt = 0;
    if (field_int(body, "n_predict", 0, 1, &n_predict, msg, sizeof msg) ||
        field_int(body, "n_probs", 0, cfg->n_vocab, &n_probs, msg, sizeof msg) ||
        field_bool(body, "prompt_logprobs", &want_prompt, msg, sizeof msg))
        return srv_send_error(c, cx, 400, "%s (duet serve's /completion answers next-token "
                              "probabilities; generate with /v1/completions)", msg);
    json_t *pr = json_object_get(body, "prompt");
    if (!pr) return srv_send_error(c, cx, 400, "'prompt' is required");
    int32_t *ids = NULL;
    int n = api_prompt_ids(cfg, pr, 1, 0, &ids, msg, sizeof msg);
    int fits = n_predict ? n < cfg->n_ctx : n <= cfg->n_ctx; /* scoring only may fill the context */
    if (n == 0) snprintf(msg, sizeof msg, "the prompt is empty");
    if (n > 0 && !fits)
        snprintf(msg, sizeof msg, "the prompt has %d tokens and the context holds %d", n, cfg->n_ctx);
    if (n <= 0 || !fits) {
        free(ids);
        return srv_send_error(c, cx, 400, "%s", msg);
    }
    srv_slot *sl = srv_slot_acquire(cfg->slots, ids, n, 0);
    if (!sl) {
        free(ids);
        return srv_send_error(c, cx, 503, "all slots stayed busy for %d s", cfg->p.queue_timeout_s);
    }
    duet_error err = {0};
    int V = cfg->n_vocab;
    int32_t *order = malloc((size_t)V * sizeof *order);
    float *lp = malloc((size_t)V * sizeof *lp);
    json_t *prompt_probs = want_prompt ? json_array() : NULL;
    int have; /* tokens_cached, as llama.cpp reports: prompt tokens the KV cache already held */
    int cached = want_prompt ? 0 : srv_slot_prefix(sl, ids, n, 0, &have);
    duet_session *sess = srv_slot_session(sl);
    srv_compute_lock(cfg->slots);
    int rc = !order || !lp ? duet_fail(&err, DUET_ERR_NOMEM, "out of memory")
             : want_prompt ? prompt_scores(cfg, sess, ids, n, prompt_probs, &err)
             : duet_session_sync(sess, ids, n, &err);
    if (!rc) {
        const float *l = duet_session_logits(sess, -1);
        double mx, z;
        duet_softmax_stats(l, V, &mx, &z, NULL);
        double lz = mx + log(z);
        for (int i = 0; i < V; i++) { lp[i] = (float)((double)l[i] - lz); order[i] = i; }
        g_sort_lp = lp;
        qsort(order, (size_t)V, sizeof *order, by_logprob);
    }
    srv_compute_unlock(cfg->slots);
    srv_slot_release(cfg->slots, sl);
    enum MHD_Result ok;
    if (rc) {
        ok = srv_send_error(c, cx, rc == DUET_ERR_RANGE ? 400 : 500, "%s", err.msg);
    } else {
        int32_t prev = ids[n - 1], best = order[0];
        json_t *top = json_array();
        for (int k = 0; k < n_probs; k++)
            json_array_append_new(top, token_json(cfg, prev, order[k], lp[order[k]]));
        json_t *first = token_json(cfg, prev, best, lp[best]);
        json_object_set_new(first, "top_logprobs", top);
        json_t *js = json_pack("{s:s, s:s, s:b, s:s, s:i, s:i}", "model", cfg->model_name, "content",
                               "", "stop", 1, "stop_type", "limit", "tokens_evaluated", n,
                               "tokens_cached", cached);
        if (n_predict) {
            json_object_set(js, "content", json_object_get(first, "token"));
            json_object_set_new(js, "tokens", json_pack("[i]", best));
            json_object_set_new(js, "completion_probabilities", json_pack("[o]", first));
        } else {
            json_decref(first);
        }
        if (prompt_probs) json_object_set(js, "prompt_probabilities", prompt_probs);
        ok = srv_send_json(c, cx, 200, js);
    }
    json_decref(prompt_probs);
    free(ids);
    free(order);
    free(lp);
    return ok;
}
