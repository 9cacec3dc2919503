/*
 * api_generate.c: the endpoints that run the models: /v1/completions and
 * /v1/chat/completions (OpenAI shape, streamed as server-sent events or whole), and
 * /completion (llama.cpp's protocol). /completion with n_predict 0 or 1 (not streamed) answers
 * next-token log-probabilities, what a remote-expert client asks, from the served model alone;
 * with "prompt_logprobs": true also every prompt token's log-probability, max log-probability
 * and entropy, what `duet score` stores. Any other n_predict (-1: until EOS or the context is
 * full) or "stream": true generates through the same loop as /v1/completions and answers as
 * llama-server does (content, stop_type, timings, completion_probabilities, ...). Text
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

#include "base/utf8.h"
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

#define MAX_STOP 16      /* llama.cpp's protocol: its clients send more than OpenAI allows */
#define MAX_STOP_OPENAI 4
#define MAX_STOP_LEN 256
/* Prompt tokens evaluated between two batched steps of the running answers: a running stream
 * waits at most one such chunk, not a whole long prompt, between two of its tokens. */
#define PREFILL_CHUNK 256

enum { PROTO_OPENAI = 0, PROTO_CHAT = 1, PROTO_LLAMA = 2 };

typedef struct gen_req {
    duet_collab_params cp;
    long long max_tokens;
    int stream, want_tokens, n_stop;
    int n_probs, return_tokens; /* llama.cpp's protocol */
    char stop[MAX_STOP + 1][MAX_STOP_LEN + 1]; /* + the chat format's end of turn */
} gen_req;

/* OpenAI fields duet does not implement: refused when they would change the answer, so that
 * no client gets silently different behaviour; absent, null, false, empty and the neutral
 * number (or response_format {"type": "text"}) are accepted. */
static const struct { const char *key; double neutral; } k_unsupported[] = {
    {"echo", 0}, {"best_of", 1}, {"presence_penalty", 0}, {"frequency_penalty", 0},
    {"logit_bias", 0}, {"suffix", 0}, {"tools", 0}, {"functions", 0}, {"response_format", 0},
};

/* The same for llama.cpp's /completion: its samplers and options beyond temperature, top_k,
 * top_p, min_p and seed. */
static const struct { const char *key; double neutral; } k_llama_unsupported[] = {
    {"repeat_penalty", 1}, {"presence_penalty", 0}, {"frequency_penalty", 0}, {"mirostat", 0},
    {"typical_p", 1}, {"dynatemp_range", 0}, {"xtc_probability", 0}, {"dry_multiplier", 0},
    {"logit_bias", 0}, {"grammar", 0}, {"json_schema", 0}, {"ignore_eos", 0},
    {"post_sampling_probs", 0}, {"n_indent", 0}, {"t_max_predict_ms", 0}, {"lora", 0},
};

static int is_default(json_t *v, double neutral) {
    if (!v || json_is_null(v) || json_is_false(v)) return 1;
    if (json_is_number(v)) return json_number_value(v) == neutral;
    if (json_is_array(v)) return !json_array_size(v);
    if (json_is_string(v)) return !json_string_length(v);
    if (json_is_object(v)) {
        const char *type = json_string_value(json_object_get(v, "type"));
        return !json_object_size(v) || (json_object_size(v) == 1 && type && !strcmp(type, "text"));
    }
    return 0;
}

/* The protocol's own fields: OpenAI's logprobs (refused: /completion has n_probs) and the
 * options duet lacks, or llama.cpp's n_probs and return_tokens and its options duet lacks. */
static int parse_proto_fields(const srv_config *cfg, json_t *b, int proto, gen_req *r, char *msg,
                              size_t cap) {
    long long logprobs = 0, n_probs = 0;
    int lp = 0, cache = 1;
    if (proto == PROTO_LLAMA) {
        if (field_int(b, "n_probs", 0, cfg->n_vocab, &n_probs, msg, cap) ||
            field_bool(b, "return_tokens", &r->return_tokens, msg, cap) ||
            field_bool(b, "cache_prompt", &cache, msg, cap)) /* duet always reuses the cache */
            return -1;
        r->n_probs = (int)n_probs;
        for (size_t i = 0; i < sizeof k_llama_unsupported / sizeof *k_llama_unsupported; i++)
            if (!is_default(json_object_get(b, k_llama_unsupported[i].key), k_llama_unsupported[i].neutral))
                return snprintf(msg, cap, "'%s' is not supported by duet serve",
                                k_llama_unsupported[i].key), -1;
        return 0;
    }
    if (proto == PROTO_CHAT) {
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
    return 0;
}

/* seq: how many requests were numbered before this one was parsed, mixed into the seed. */
static int parse_request(const srv_config *cfg, json_t *b, int proto, long seq, gen_req *r, char *msg,
                         size_t cap) {
    int chat = proto == PROTO_CHAT, llama = proto == PROTO_LLAMA;
    memset(r, 0, sizeof *r);
    r->cp = cfg->p.defaults;
    duet_sampler_defaults(&r->cp.sampling);
    r->cp.sampling.seed = (uint64_t)time(NULL) ^ (uint64_t)seq * 0x9e3779b97f4a7c15ull;
    /* llama.cpp's seeds are 32-bit, and generation_settings reports the one used */
    if (llama) r->cp.sampling.seed &= 0xffffffffu;
    /* OpenAI: 16 for completions, chat until the end; /completion: one token unless asked */
    r->max_tokens = chat ? cfg->n_ctx : llama ? 1 : 16;
    double temp = r->cp.sampling.temp, top_p = r->cp.sampling.top_p, min_p = r->cp.sampling.min_p;
    double thr = r->cp.threshold;
    long long top_k = r->cp.sampling.top_k, seed = -1, n = 1;
    json_t *model = json_object_get(b, "model");
    if (model && !json_is_null(model) && !json_is_string(model))
        return snprintf(msg, cap, "'model' must be a string"), -1;
    const char *mt = chat && json_object_get(b, "max_completion_tokens") ? "max_completion_tokens"
                   : llama && json_object_get(b, "n_predict") ? "n_predict" : "max_tokens";
    if (field_int(b, mt, llama ? -1 : 0, cfg->n_ctx, &r->max_tokens, msg, cap) ||
        field_num(b, "temperature", 0, 100, &temp, msg, cap) ||
        field_num(b, "top_p", 0, 1, &top_p, msg, cap) || field_num(b, "min_p", 0, 1, &min_p, msg, cap) ||
        field_int(b, "top_k", 0, 1 << 30, &top_k, msg, cap) ||
        field_int(b, "seed", -1, INT64_MAX, &seed, msg, cap) || field_int(b, "n", 1, 1, &n, msg, cap) ||
        field_bool(b, "stream", &r->stream, msg, cap) ||
        field_bool(b, "duet_tokens", &r->want_tokens, msg, cap) ||
        parse_proto_fields(cfg, b, proto, r, msg, cap))
        return -1;
    json_t *pol = json_object_get(b, "policy");
    if (pol && !json_is_null(pol)) {
        int pi = json_is_string(pol) ? duet_policy_from_name(json_string_value(pol)) : -1;
        if (pi < 0) return snprintf(msg, cap, "'policy' must be one of collm, base, expert, random, "
                                    "confidence, compose, proxy, contrastive, uncertainty, cd, cd_v2"), -1;
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
        size_t ns = one ? 1 : json_is_array(stop) ? json_array_size(stop) : 999;
        int most = llama ? MAX_STOP : MAX_STOP_OPENAI;
        if (ns > (size_t)most) return snprintf(msg, cap, "'stop' must be a string or up to %d strings", most), -1;
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
    int chat, llama, n_prompt, n_gen, done, sent_done, end;
    int joined;         /* counted among the running answers (srv_gen_join) */
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
    /* llama.cpp's protocol */
    int n_cached;       /* prompt tokens the slot's decoder already held */
    json_t *ids;        /* every generated token id */
    json_t *probs;      /* completion_probabilities of every generated token (n_probs > 0) */
    size_t ids_sent, probs_sent; /* how many of them went out in stream events */
    duet_buf raw;       /* the tokens' bytes as the vocabulary gives them: where a stop text was */
    float *lp;          /* [n_vocab] scratch for n_probs */
    int32_t *top;       /* [n_probs] */
    double t_prompt, t_pred; /* seconds: starting the decoder on the prompt / in decoding steps */
    json_t *prompt;     /* the prompt as text */
} gen;

/* Make the slot's decoder fit the request and run the prompt. */
static int gen_start(gen *g, const int32_t *prompt, duet_error *err) {
    int have;
    g->n_cached = srv_slot_prefix(g->sl, prompt, g->n_prompt, 1, &have);
    int rc = srv_slot_decoder(g->sl, &g->r.cp, &g->co, err);
    if (rc) return rc;
    double t0 = duet_time_s();
    rc = srv_gen_prefill(g->cfg->slots, g->co, prompt, g->n_prompt, PREFILL_CHUNK, err);
    if (!rc) {
        srv_compute_lock(g->cfg->slots);
        rc = duet_collab_start(g->co, prompt, g->n_prompt, err);
        srv_compute_unlock(g->cfg->slots);
    }
    g->t_prompt = duet_time_s() - t0;
    duet_gen_params gp = {.max_tokens = (int)g->r.max_tokens, .stops = g->stops,
                          .n_stops = g->r.n_stop, .utf8 = 1};
    if (!rc) rc = duet_gen_new(g->co, &gp, &g->dg, err);
    if (!rc) {
        srv_gen_join(g->cfg->slots);
        g->joined = 1;
    }
    return rc;
}

/* The answer has ended: OpenAI's finish_reason for why, and the decoder's final counts. */
static void gen_finish(gen *g, int end) {
    if (g->done) return;
    g->done = 1;
    if (g->joined) srv_gen_leave(g->cfg->slots);
    g->joined = 0;
    g->end = end;
    g->finish = end == DUET_GEN_ERROR ? "error"
              : end == DUET_GEN_LIMIT || end == DUET_GEN_CONTEXT ? "length" : "stop";
    g->st = *duet_collab_get_stats(g->co);
}

/* s[0..n) without a character that begins at its end and needs bytes past it. */
static size_t cut_unfinished(const char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++)
        if (duet_utf8_char(s + n - k, k) < 0) return n - k; /* valid so far, but unfinished */
    return n;
}

/* llama.cpp's entry for a token: id, token (its text without a character it leaves unfinished,
 * other bytes that form none as U+FFFD, as llama-server renders it), bytes (all of them) and
 * logprob. */
static json_t *llama_token(const duet_model *m, int32_t prev, int32_t id, double lp) {
    duet_buf raw = {0}, txt = {0};
    api_raw_piece(m, prev, id, &raw);
    sb_add(&txt, raw.p ? raw.p : "", cut_unfinished(raw.p ? raw.p : "", raw.n));
    json_t *bytes = json_array();
    for (size_t i = 0; i < raw.n; i++) json_array_append_new(bytes, json_integer((unsigned char)raw.p[i]));
    json_t *o = json_pack("{s:i, s:s, s:o, s:f}", "id", id, "token", txt.p ? txt.p : "", "bytes",
                          bytes, "logprob", lp);
    free(raw.p);
    free(txt.p);
    return o;
}

/* completion_probabilities of the token just emitted: the served (base) model's distribution
 * at its position, the one llama-server reports for its single model; a token the expert chose
 * gets the base's log-probability of it. The slot's plain session follows the decoder's tokens
 * one step behind, so each step evaluates one token more. */
static void token_probs(gen *g, int32_t id) {
    int n, V = g->cfg->n_vocab, k = DUET_MIN(g->r.n_probs, V), cnt = 0;
    const int32_t *toks = duet_collab_tokens(g->co, &n);
    duet_session *sess = srv_slot_session(g->sl);
    duet_error err = {0};
    if (!g->lp) g->lp = malloc((size_t)V * sizeof *g->lp);
    if (!g->top) g->top = malloc((size_t)k * sizeof *g->top);
    srv_compute_lock(g->cfg->slots);
    int rc = !g->lp || !g->top ? DUET_ERR_NOMEM : duet_session_sync(sess, toks, n - 1, &err);
    if (!rc) {
        const float *l = duet_session_logits(sess, -1);
        double mx, z;
        duet_softmax_stats(l, V, &mx, &z, NULL);
        for (int i = 0; i < V; i++) {
            float x = g->lp[i] = (float)((double)l[i] - mx - log(z));
            int at = cnt < k ? cnt++ : k; /* insert into the sorted top k, lowest id first on ties */
            while (at > 0 && x > g->lp[g->top[at - 1]]) {
                if (at < k) g->top[at] = g->top[at - 1];
                at--;
            }
            if (at < k) g->top[at] = i;
        }
    }
    srv_compute_unlock(g->cfg->slots);
    if (rc) { /* the answer stands without its probabilities; say why in their place */
        json_array_append_new(g->probs, json_pack("{s:i, s:s}", "id", id, "error", rc == DUET_ERR_NOMEM
                                                  ? "out of memory" : err.msg));
        return;
    }
    int32_t prev = toks[n - 2];
    json_t *top = json_array();
    for (int i = 0; i < k; i++)
        json_array_append_new(top, llama_token(g->cfg->p.base, prev, g->top[i], g->lp[g->top[i]]));
    json_t *e = llama_token(g->cfg->p.base, prev, id, g->lp[id]);
    json_object_set_new(e, "top_logprobs", top);
    json_array_append_new(g->probs, e);
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
    if (g->llama) {
        size_t len;
        const char *piece = duet_gen_piece(g->dg, &len);
        duet_buf_add(&g->raw, piece, len);
        json_array_append_new(g->ids, json_integer(t->id));
        if (g->r.n_probs) token_probs(g, t->id);
    }
}

static void gen_step(gen *g) {
    duet_collab_token t;
    duet_error err = {0};
    double t0 = duet_time_s();
    int rc = srv_gen_step(g->cfg->slots, g->sl, g->dg, &t, &err);
    g->t_pred += duet_time_s() - t0;
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

/* ---- llama.cpp's /completion answers ----------------------------------------------------- */
/* The settings the answer was decoded with, named as llama-server names them, and duet's own. */
static json_t *llama_settings(const gen *g) {
    const duet_sampler_params *sp = &g->r.cp.sampling;
    json_t *stops = json_array();
    for (int i = 0; i < g->r.n_stop; i++) json_array_append_new(stops, json_string(g->r.stop[i]));
    json_t *js = json_pack("{s:I, s:I, s:f, s:i, s:f, s:f, s:o, s:I, s:b, s:i, s:b, s:i, s:s, s:b}",
                           "n_predict", (json_int_t)g->r.max_tokens, "seed", (json_int_t)sp->seed,
                           "temperature", (double)sp->temp, "top_k", sp->top_k, "top_p",
                           (double)sp->top_p, "min_p", (double)sp->min_p, "stop", stops,
                           "max_tokens", (json_int_t)g->r.max_tokens, "stream", g->r.stream,
                           "n_probs", g->r.n_probs, "return_tokens", g->r.return_tokens, "n_ctx",
                           g->cfg->n_ctx, "policy", duet_policy_name(g->r.cp.policy),
                           "ignore_eos", 0);
    /* a negative threshold is the policy's default (the head's tuned one, 0.5, 2 nats) */
    json_object_set_new(js, "threshold", g->r.cp.threshold >= 0 ? json_real(g->r.cp.threshold) : json_null());
    return js;
}

static json_t *llama_timings(const gen *g) {
    double pm = g->t_prompt * 1e3, gm = g->t_pred * 1e3;
    int pn = g->n_prompt - g->n_cached, gn = g->n_gen;
    return json_pack("{s:i, s:f, s:f, s:f, s:i, s:f, s:f, s:f}", "prompt_n", pn, "prompt_ms", pm,
                     "prompt_per_token_ms", pn ? pm / pn : 0.0, "prompt_per_second",
                     pm > 0 ? 1e3 * pn / pm : 0.0, "predicted_n", gn, "predicted_ms", gm,
                     "predicted_per_token_ms", gn ? gm / gn : 0.0, "predicted_per_second",
                     gm > 0 ? 1e3 * gn / gm : 0.0);
}

/* Which stop text ended the answer: the one found earliest in the tokens' bytes. */
static const char *stopping_word(const gen *g) {
    const char *best = "";
    size_t at = (size_t)-1;
    for (int i = 0; g->end == DUET_GEN_STOP && i < g->r.n_stop; i++) {
        const char *hit = g->raw.n ? memmem(g->raw.p, g->raw.n, g->r.stop[i], strlen(g->r.stop[i])) : NULL;
        if (hit && (size_t)(hit - g->raw.p) < at) at = (size_t)(hit - g->raw.p), best = g->r.stop[i];
    }
    return best;
}

/* The final answer (stream: the last event, its text and tokens already sent). */
static json_t *llama_final(gen *g) {
    size_t n;
    const char *text = duet_gen_text(g->dg, &n);
    int st = g->r.stream;
    const char *type = g->end == DUET_GEN_EOS ? "eos" : g->end == DUET_GEN_STOP ? "word"
                     : g->end == DUET_GEN_LIMIT || g->end == DUET_GEN_CONTEXT ? "limit" : "none";
    json_t *js = json_pack("{s:i, s:s%, s:o, s:i, s:b, s:s, s:i, s:i, s:o, s:O, s:b, s:b, s:s, s:s, s:i, s:o}",
                           "index", 0, "content", st ? "" : text, st ? (size_t)0 : n, "tokens",
                           !st && g->r.return_tokens ? json_copy(g->ids) : json_array(), "id_slot",
                           srv_slot_index(g->sl),
                           "stop", 1, "model", g->cfg->model_name, "tokens_predicted", g->n_gen,
                           "tokens_evaluated", g->n_prompt, "generation_settings", llama_settings(g),
                           "prompt", g->prompt, "has_new_line", memchr(text, '\n', n) != NULL,
                           "truncated", g->end == DUET_GEN_CONTEXT, "stop_type", type,
                           "stopping_word", stopping_word(g), "tokens_cached", g->n_cached,
                           "timings", llama_timings(g));
    if (!st && g->r.n_probs) json_object_set(js, "completion_probabilities", g->probs);
    json_object_set_new(js, "duet", duet_summary(g));
    return js;
}

/* A stream event of what was decoded since the last one: text, token ids and probabilities. */
static json_t *llama_partial(gen *g, const char *text, size_t n) {
    json_t *ids = json_array(), *probs = json_array();
    for (; g->ids_sent < json_array_size(g->ids); g->ids_sent++)
        json_array_append(ids, json_array_get(g->ids, g->ids_sent));
    for (; g->probs_sent < json_array_size(g->probs); g->probs_sent++)
        json_array_append(probs, json_array_get(g->probs, g->probs_sent));
    json_t *js = json_pack("{s:i, s:s%, s:o, s:b, s:i, s:i, s:i}", "index", 0, "content", text, n,
                           "tokens", ids, "stop", 0, "id_slot", srv_slot_index(g->sl), "tokens_predicted", g->n_gen,
                           "tokens_evaluated", g->n_prompt);
    if (json_array_size(probs)) json_object_set(js, "completion_probabilities", probs);
    json_decref(probs);
    return js;
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
    if (g->joined) srv_gen_leave(g->cfg->slots); /* a client that left mid-answer */
    if (g->sl) {
        if (g->co) srv_metrics_generation(g->cfg->slots, g->n_prompt, duet_collab_get_stats(g->co));
        srv_slot_release(g->cfg->slots, g->sl);
    }
    json_decref(g->tokens);
    json_decref(g->failed);
    json_decref(g->ids);
    json_decref(g->probs);
    json_decref(g->prompt);
    free(g->raw.p);
    free(g->lp);
    free(g->top);
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
        } else if (g->llama) {
            size_t upto = duet_gen_ready(g->dg);
            if (upto > g->sent || g->ids_sent < json_array_size(g->ids))
                sse_event(g, llama_partial(g, answer(g, NULL) + g->sent, upto - g->sent));
            g->sent = upto;
            if (g->done) sse_event(g, llama_final(g));
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
        if (g->done) { /* llama.cpp ends its own protocol's stream without [DONE] */
            if (!g->llama) duet_buf_add(&g->out, "data: [DONE]\n\n", 14);
            g->sent_done = 1;
        }
    }
    size_t n = DUET_MIN(max, g->out.n - g->out_off);
    memcpy(buf, g->out.p + g->out_off, n);
    g->out_off += n;
    return (ssize_t)n;
}

/* The prompt as text for llama.cpp's answer: the string asked, or the ids' pieces. */
static json_t *prompt_text(const srv_config *cfg, json_t *pr, const int32_t *ids, int n) {
    if (json_is_string(pr)) return json_incref(pr);
    duet_buf b = {0};
    for (int i = 0; i < n; i++) api_add_piece(cfg->p.base, i ? ids[i - 1] : -1, ids[i], &b);
    json_t *js = json_stringn(b.p ? b.p : "", b.n);
    free(b.p);
    return js;
}

/* One generation in any of the three protocols (PROTO_*), streamed or whole. */
static enum MHD_Result gen_serve(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                                 json_t *body, int proto) {
    char msg[600];
    int chat = proto == PROTO_CHAT;
    gen *g = calloc(1, sizeof *g);
    if (!g) return srv_send_error(c, cx, 500, "out of memory");
    g->cfg = cfg;
    g->chat = chat;
    g->llama = proto == PROTO_LLAMA;
    g->tokens = json_array();
    g->failed = json_array();
    g->ids = json_array();
    g->probs = json_array();
    g->created = (long)time(NULL);
    long id = srv_next_request_id(cfg->slots);
    snprintf(g->id, sizeof g->id, "%s-%ld", chat ? "chatcmpl" : "cmpl", id);
    if (parse_request(cfg, body, proto, id + 1, &g->r, msg, sizeof msg)) {
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
    if (g->llama) g->prompt = prompt_text(cfg, json_object_get(body, "prompt"), ids, n);
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
    } else if (g->llama) {
        ok = srv_send_json(c, cx, 200, llama_final(g));
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

enum MHD_Result api_completions(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                                json_t *body, int chat) {
    return gen_serve(cfg, c, cx, body, chat ? PROTO_CHAT : PROTO_OPENAI);
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

/* llama.cpp's summary fields, after the next-token answer's own (which stay as they were:
 * remote-expert clients read them). The next token is the argmax, decided by the same forward
 * pass that evaluated the prompt: predicted_ms is the time spent ranking the distribution. */
static void next_token_summary(const srv_config *cfg, json_t *js, int id_slot, int n, int cached,
                               int n_predict, int n_probs, double prompt_s, double rank_s) {
    double pm = prompt_s * 1e3, gm = rank_s * 1e3;
    int pn = n - cached;
    json_t *t = json_pack("{s:i, s:f, s:f, s:f, s:i, s:f, s:f, s:f}", "prompt_n", pn, "prompt_ms", pm,
                          "prompt_per_token_ms", pn ? pm / pn : 0.0, "prompt_per_second",
                          pm > 0 ? 1e3 * pn / pm : 0.0, "predicted_n", n_predict, "predicted_ms", gm,
                          "predicted_per_token_ms", n_predict ? gm : 0.0, "predicted_per_second",
                          n_predict && gm > 0 ? 1e3 / gm : 0.0);
    const char *content = json_string_value(json_object_get(js, "content"));
    json_t *more = json_pack("{s:i, s:i, s:i, s:{s:i, s:i, s:f, s:i, s:b, s:o}, s:b, s:b, s:s, s:o}",
                             "index", 0, "id_slot", id_slot, "tokens_predicted", n_predict,
                             "generation_settings", "n_predict", n_predict, "n_probs", n_probs,
                             "temperature", 0.0, "n_ctx", cfg->n_ctx, "stream", 0, "stop",
                             json_array(), "has_new_line", content && strchr(content, '\n'),
                             "truncated", 0, "stopping_word", "", "timings", t);
    json_object_update_missing(js, more);
    json_decref(more);
}

/* The next-token answer: the served model's distribution after the prompt, its argmax. */
static enum MHD_Result next_token(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                                  json_t *pr, int n_predict, int n_probs, int want_prompt) {
    char msg[300];
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
    int id_slot = sl ? srv_slot_index(sl) : -1;
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
    double t0 = duet_time_s();
    int rc = !order || !lp ? duet_fail(&err, DUET_ERR_NOMEM, "out of memory")
             : want_prompt ? prompt_scores(cfg, sess, ids, n, prompt_probs, &err)
             : duet_session_sync(sess, ids, n, &err);
    double t1 = duet_time_s();
    if (!rc) {
        const float *l = duet_session_logits(sess, -1);
        double mx, z;
        duet_softmax_stats(l, V, &mx, &z, NULL);
        double lz = mx + log(z);
        for (int i = 0; i < V; i++) { lp[i] = (float)((double)l[i] - lz); order[i] = i; }
        g_sort_lp = lp;
        qsort(order, (size_t)V, sizeof *order, by_logprob);
    }
    double t2 = duet_time_s();
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
        next_token_summary(cfg, js, id_slot, n, cached, n_predict, n_probs, t1 - t0, t2 - t1);
        ok = srv_send_json(c, cx, 200, js);
    }
    json_decref(prompt_probs);
    free(ids);
    free(order);
    free(lp);
    return ok;
}

/* /completion: next-token mode (n_predict 0 or 1, not streamed), else a generation. */
enum MHD_Result api_next_token(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                               json_t *body) {
    char msg[300];
    long long n_predict = 1, n_probs = 0;
    int want_prompt = 0, stream = 0;
    const char *np = json_object_get(body, "n_predict") || !json_object_get(body, "max_tokens")
                     ? "n_predict" : "max_tokens"; /* llama.cpp takes either */
    if (field_int(body, np, -1, cfg->n_ctx, &n_predict, msg, sizeof msg) ||
        field_bool(body, "stream", &stream, msg, sizeof msg) ||
        field_int(body, "n_probs", 0, cfg->n_vocab, &n_probs, msg, sizeof msg) ||
        field_bool(body, "prompt_logprobs", &want_prompt, msg, sizeof msg))
        return srv_send_error(c, cx, 400, "%s", msg);
    json_t *pr = json_object_get(body, "prompt");
    if (!pr) return srv_send_error(c, cx, 400, "'prompt' is required");
    if (stream || (n_predict != 0 && n_predict != 1)) {
        if (want_prompt)
            return srv_send_error(c, cx, 400, "'prompt_logprobs' needs n_predict 0 or 1, not streamed");
        return gen_serve(cfg, c, cx, body, PROTO_LLAMA);
    }
    return next_token(cfg, c, cx, pr, (int)n_predict, (int)n_probs, want_prompt);
}
