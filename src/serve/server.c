/*
 * server.c: duet's HTTP server: the libmicrohttpd daemon (one thread per connection, bounded
 * by a connection limit and an idle timeout), request bodies with a size cap, the API key,
 * routing, decoding slots with a queue, Prometheus metrics and the small endpoints. The
 * generation endpoints live in server_gen.c. Every failure answers JSON
 * {"error": {"message", "type", "code"}} and leaves the server up.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/server.h"
#include "serve/web_page.h"

const double k_lat_bounds[N_LAT_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                            0.5,   1,    2.5,   5,    10,  30};

/* ---- responses --------------------------------------------------------------------------- */
static enum MHD_Result send_buf(struct MHD_Connection *c, conn_ctx *cx, unsigned status,
                                const char *type, const char *data, size_t n, int copy) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        n, (void *)data, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (status == 405) MHD_add_response_header(r, "Allow", "GET, POST");
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    if (cx) cx->status = (int)status;
    return ok;
}

enum MHD_Result srv_send_json(struct MHD_Connection *c, conn_ctx *cx, unsigned status, json_t *js) {
    /* the length comes from the literal itself: a hand-counted one went stale and made the
     * server send bytes past the literal's end */
    static const char oom[] =
        "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":500}}";
    char *s = js ? json_dumps(js, JSON_COMPACT) : NULL;
    json_decref(js);
    if (!s) return send_buf(c, cx, 500, "application/json", oom, sizeof oom - 1, 0);
    enum MHD_Result ok = send_buf(c, cx, status, "application/json", s, strlen(s), 1);
    free(s);
    return ok;
}

enum MHD_Result srv_send_error(struct MHD_Connection *c, conn_ctx *cx, unsigned status,
                               const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *type = status == 401 ? "authentication_error" : status == 404 ? "not_found_error"
                     : status >= 500 ? "server_error" : "invalid_request_error";
    /* messages may quote user text: json_string needs valid UTF-8, so go through sb_add */
    duet_buf b = {0};
    sb_add(&b, msg, strlen(msg));
    json_t *js = json_pack("{s:{s:s, s:s, s:i}}", "error", "message", b.p ? b.p : "", "type",
                           type, "code", (int)status);
    free(b.p);
    return srv_send_json(c, cx, status, js);
}

/* ---- slots ------------------------------------------------------------------------------- */
int srv_slot_prefix(const slot *sl, const int32_t *ids, int n, int collab, int *have_out) {
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
static slot *pick_free(duet_server *s, const int32_t *ids, int n, int collab) {
    slot *best = NULL, *lru = NULL;
    int best_k = 0;
    for (int i = 0; i < s->p.n_slots; i++) {
        slot *sl = &s->slots[i];
        if (sl->busy) continue;
        int have = 0, k = ids ? srv_slot_prefix(sl, ids, n, collab, &have) : 0;
        if (k > best_k && 2 * k >= have) { best = sl; best_k = k; }
        if (!lru || sl->last_used < lru->last_used) lru = sl;
    }
    return best ? best : lru;
}

slot *srv_slot_acquire(duet_server *s, const int32_t *ids, int n, int collab) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += s->p.queue_timeout_s;
    pthread_mutex_lock(&s->mu);
    s->n_waiting++;
    slot *got = NULL;
    for (;;) {
        if ((got = pick_free(s, ids, n, collab))) break;
        if (pthread_cond_timedwait(&s->cv, &s->mu, &until) == ETIMEDOUT) {
            got = pick_free(s, ids, n, collab); /* one last look */
            break;
        }
    }
    if (got) {
        got->busy = 1;
        got->last_used = ++s->use_clock;
    }
    s->n_waiting--;
    pthread_mutex_unlock(&s->mu);
    return got;
}

void srv_slot_release(duet_server *s, slot *sl) {
    pthread_mutex_lock(&s->mu);
    sl->busy = 0;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void srv_count_generation(duet_server *s, int n_prompt, const duet_collab_stats *st) {
    pthread_mutex_lock(&s->mu);
    s->m_prompt_tokens += n_prompt;
    s->m_gen_tokens += st->n_generated;
    s->m_deferred += st->n_deferred;
    s->m_expert_calls += st->expert_calls;
    s->m_expert_failures += st->expert_failures;
    pthread_mutex_unlock(&s->mu);
}

/* The remote expert's HTTP call does not need the compute pool: let other slots step. After
 * a call failed (retries spent), the next second's calls fail at once with the same message,
 * so that a dead expert costs one retry cycle, not one per token. */
#define EXPERT_DOWN_S 1.0
static int slot_remote_next(void *ctx, const int32_t *t, int n, float *out, duet_error *err) {
    slot *sl = ctx;
    if (duet_time_s() < sl->down_until)
        return duet_fail(err, DUET_ERR_IO, "%s", sl->down_msg);
    pthread_mutex_unlock(&sl->srv->compute);
    const duet_expert_backend *rb = duet_expert_remote_backend(sl->remote);
    duet_error e = {0};
    int rc = rb->next_logits(rb->ctx, t, n, out, &e);
    pthread_mutex_lock(&sl->srv->compute);
    if (rc) {
        sl->down_until = duet_time_s() + EXPERT_DOWN_S;
        snprintf(sl->down_msg, sizeof sl->down_msg, "%s", e.msg);
        duet_fail(err, rc, "%s", e.msg);
    }
    return rc;
}

/* ---- small endpoints --------------------------------------------------------------------- */
static enum MHD_Result send_metrics(duet_server *s, struct MHD_Connection *c, conn_ctx *cx) {
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (!f) return srv_send_error(c, cx, 500, "out of memory");
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
    enum MHD_Result ok = send_buf(c, cx, 200, "text/plain; version=0.0.4", out, n, 1);
    free(out);
    return ok;
}

int srv_prompt_ids(duet_server *s, json_t *prompt, int add_bos, int parse_special, int32_t **ids,
                   char *msg, size_t cap) {
    *ids = NULL;
    if (json_is_array(prompt) && json_array_size(prompt) == 1 &&
        json_is_string(json_array_get(prompt, 0)))
        prompt = json_array_get(prompt, 0); /* OpenAI allows ["text"] */
    if (json_is_string(prompt)) {
        const char *t = json_string_value(prompt);
        size_t len = json_string_length(prompt);
        int n = duet_tokenize(s->p.base, t, len, add_bos, parse_special, NULL, 0, NULL);
        if (n < 0 || !(*ids = malloc((size_t)(n + 1) * sizeof **ids))) {
            snprintf(msg, cap, "cannot tokenize the prompt");
            return -1;
        }
        return duet_tokenize(s->p.base, t, len, add_bos, parse_special, *ids, n, NULL);
    }
    if (!json_is_array(prompt)) {
        snprintf(msg, cap, "'prompt' must be a string or an array of token ids");
        return -1;
    }
    size_t n = json_array_size(prompt);
    if (!(*ids = malloc((n + 1) * sizeof **ids))) {
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(prompt, i);
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (!json_is_integer(v) || id < 0 || id >= s->n_vocab) {
            snprintf(msg, cap, "'prompt'[%zu] must be a token id in [0, %d)", i, s->n_vocab);
            free(*ids);
            *ids = NULL;
            return -1;
        }
        (*ids)[i] = (int32_t)id;
    }
    return (int)n;
}

static enum MHD_Result do_tokenize(duet_server *s, struct MHD_Connection *c, conn_ctx *cx, json_t *b) {
    json_t *content = json_object_get(b, "content");
    if (!json_is_string(content)) return srv_send_error(c, cx, 400, "'content' must be a string");
    json_t *as = json_object_get(b, "add_special");
    if (as && !json_is_boolean(as)) return srv_send_error(c, cx, 400, "'add_special' must be a boolean");
    int32_t *ids = NULL;
    char msg[200];
    int n = srv_prompt_ids(s, content, json_is_true(as), 0, &ids, msg, sizeof msg);
    if (n < 0) return srv_send_error(c, cx, 400, "%s", msg);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    free(ids);
    return srv_send_json(c, cx, 200, json_pack("{s:o}", "tokens", arr));
}

static enum MHD_Result do_detokenize(duet_server *s, struct MHD_Connection *c, conn_ctx *cx, json_t *b) {
    json_t *toks = json_object_get(b, "tokens");
    if (!json_is_array(toks)) return srv_send_error(c, cx, 400, "'tokens' must be an array of token ids");
    int32_t *ids = NULL;
    char msg[200];
    int n = srv_prompt_ids(s, toks, 0, 0, &ids, msg, sizeof msg);
    if (n < 0) return srv_send_error(c, cx, 400, "%s", msg[0] == '\'' ? msg + 8 : msg);
    duet_buf text = {0};
    for (int i = 0; i < n; i++) /* as after BOS: SentencePiece's leading space goes */
        srv_add_piece(s->p.base, i ? ids[i - 1] : duet_token_bos(s->p.base), ids[i], &text);
    free(ids);
    json_t *js = json_pack("{s:s%}", "content", text.p ? text.p : "", text.n);
    free(text.p);
    return srv_send_json(c, cx, 200, js);
}

static enum MHD_Result do_models(duet_server *s, struct MHD_Connection *c, conn_ctx *cx) {
    const duet_hparams *hp = duet_model_hparams(s->p.base);
    json_t *m = json_pack("{s:s, s:s, s:i, s:s, s:{s:i, s:i, s:s, s:s}}", "id", s->model_name,
                          "object", "model", "created", 0, "owned_by", "duet", "meta", "n_ctx",
                          s->n_ctx, "n_vocab", hp->n_vocab, "expert",
                          s->p.expert ? duet_model_hparams(s->p.expert)->name
                          : s->p.remote ? s->p.remote->url : "",
                          "policy", duet_policy_name(s->p.defaults.policy));
    return srv_send_json(c, cx, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", m));
}

static enum MHD_Result do_props(duet_server *s, struct MHD_Connection *c, conn_ctx *cx) {
    char h[32];
    snprintf(h, sizeof h, "%016llx", (unsigned long long)duet_model_vocab_hash(s->p.base));
    return srv_send_json(c, cx, 200,
                         json_pack("{s:s, s:s, s:i, s:i, s:{s:i}}", "model", s->model_name,
                                   "duet_vocab_hash", h, "n_vocab", s->n_vocab, "total_slots",
                                   s->p.n_slots, "default_generation_settings", "n_ctx", s->n_ctx));
}

/* ---- routing ----------------------------------------------------------------------------- */
enum { R_PAGE, R_HEALTH, R_MODELS, R_PROPS, R_METRICS, R_TOKENIZE, R_DETOKENIZE, R_COMPL, R_CHAT,
       R_NEXT };
static const struct { const char *path; const char *method; int open; } k_routes[] = {
    {"/", "GET", 1},           {"/health", "GET", 1},       {"/v1/models", "GET", 0},
    {"/props", "GET", 0},      {"/metrics", "GET", 0},      {"/tokenize", "POST", 0},
    {"/detokenize", "POST", 0}, {"/v1/completions", "POST", 0}, {"/v1/chat/completions", "POST", 0},
    {"/completion", "POST", 0},
};
#define N_ROUTES ((int)(sizeof k_routes / sizeof k_routes[0]))

static int authorized(duet_server *s, struct MHD_Connection *c) {
    if (!s->p.api_key || !s->p.api_key[0]) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    /* constant-time compare: the key's length is not secret, its bytes are */
    const char *k = s->p.api_key, *v = h + 7;
    size_t nk = strlen(k), nv = strlen(v);
    unsigned diff = nk != nv;
    for (size_t i = 0; i < nk; i++) diff |= (unsigned char)k[i] ^ (unsigned char)(i < nv ? v[i] : 0);
    return !diff;
}

static enum MHD_Result dispatch(duet_server *s, struct MHD_Connection *c, conn_ctx *cx, int r) {
    switch (r) {
    case R_PAGE: return send_buf(c, cx, 200, "text/html; charset=utf-8", k_web_page,
                                 web_page_size(), 0);
    case R_HEALTH: return send_buf(c, cx, 200, "application/json", "{\"status\":\"ok\"}", 15, 0);
    case R_MODELS: return do_models(s, c, cx);
    case R_PROPS: return do_props(s, c, cx);
    case R_METRICS: return send_metrics(s, c, cx);
    default: break;
    }
    json_error_t je;
    json_t *b = json_loadb(cx->body.p ? cx->body.p : "", cx->body.n, JSON_REJECT_DUPLICATES, &je);
    if (!b) {
        char snip[120];
        duet_printable(snip, sizeof snip, je.text, strlen(je.text));
        return srv_send_error(c, cx, 400, "request body is not valid JSON: %s (line %d, column %d)",
                              snip, je.line, je.column);
    }
    enum MHD_Result ok;
    if (!json_is_object(b)) ok = srv_send_error(c, cx, 400, "request body must be a JSON object");
    else if (r == R_TOKENIZE) ok = do_tokenize(s, c, cx, b);
    else if (r == R_DETOKENIZE) ok = do_detokenize(s, c, cx, b);
    else if (r == R_NEXT) ok = srv_next_token(s, c, cx, b);
    else ok = srv_completions(s, c, cx, b, r == R_CHAT);
    json_decref(b);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    duet_server *s = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) { /* first call: headers only */
        if (!(cx = calloc(1, sizeof *cx))) return MHD_NO;
        cx->t0 = duet_time_s();
        *con_cls = cx;
        duet_printable(cx->endpoint, sizeof cx->endpoint, url, strlen(url));
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->p.max_body)
            return srv_send_error(c, cx, 413, "request body of %s bytes exceeds the limit of %zu",
                                  cl, s->p.max_body);
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (cx->too_big || cx->status) return MHD_YES;
        if (cx->body.n + n > s->p.max_body) { /* chunked bodies have no Content-Length */
            cx->too_big = 1;
            free(cx->body.p);
            cx->body = (duet_buf){0};
            return MHD_YES;
        }
        return duet_buf_add(&cx->body, upload, n) ? MHD_NO : MHD_YES;
    }
    if (cx->status) return MHD_YES; /* already answered (413 from the headers) */
    if (cx->too_big)
        return srv_send_error(c, cx, 413, "request body exceeds the limit of %zu bytes", s->p.max_body);
    int r = -1, path_known = 0;
    for (int i = 0; i < N_ROUTES && r < 0; i++)
        if (!strcmp(url, k_routes[i].path)) {
            path_known = 1;
            if (!strcmp(method, k_routes[i].method) ||
                (!strcmp(method, "HEAD") && !strcmp(k_routes[i].method, "GET")))
                r = i;
        }
    if (r < 0 && path_known) return srv_send_error(c, cx, 405, "method %.16s is not allowed on %s",
                                                   method, cx->endpoint);
    if (r < 0) return srv_send_error(c, cx, 404, "no endpoint %s", cx->endpoint);
    if (!k_routes[r].open && !authorized(s, c))
        return srv_send_error(c, cx, 401, "missing or wrong API key (Authorization: Bearer KEY)");
    return dispatch(s, c, cx, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    duet_server *s = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) return;
    double dt = duet_time_s() - cx->t0;
    pthread_mutex_lock(&s->mu);
    s->m_requests++;
    s->m_errors += cx->status >= 400;
    s->m_lat_count++;
    s->m_lat_sum += dt;
    for (int i = 0; i < N_LAT_BUCKETS; i++)
        if (dt <= k_lat_bounds[i]) { s->m_lat_bucket[i]++; break; }
    pthread_mutex_unlock(&s->mu);
    if (!s->p.quiet) /* the endpoint went through duet_printable: no CR/LF or escapes */
        fprintf(stderr, "duet serve: %s %d %.3fs%s\n", cx->endpoint, cx->status, dt,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    free(cx->body.p);
    free(cx);
    *con_cls = NULL;
}

/* ---- start / stop ------------------------------------------------------------------------ */
int duet_server_start(const duet_server_params *params, duet_server **out, duet_error *err) {
    *out = NULL;
    duet_server_params p = *params;
    if (!p.base) return duet_fail(err, DUET_ERR_ARG, "server: no model");
    if (!p.host) p.host = "127.0.0.1";
    if (p.n_slots <= 0) p.n_slots = 1;
    if (p.max_body == 0) p.max_body = 1u << 20;
    if (p.max_connections <= 0) p.max_connections = 64;
    if (p.timeout_s <= 0) p.timeout_s = 60;
    if (p.queue_timeout_s <= 0) p.queue_timeout_s = 120;
    if (p.port < 0 || p.port > 65535) return duet_fail(err, DUET_ERR_ARG, "port %d is outside [0, 65535]", p.port);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p.port)};
    if (inet_pton(AF_INET, p.host, &sa.sin_addr) != 1)
        return duet_fail(err, DUET_ERR_ARG, "host '%.100s' is not an IPv4 address", p.host);
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up must not kill the server */
    duet_server *s = calloc(1, sizeof *s);
    if (!s || !(s->slots = calloc((size_t)p.n_slots, sizeof *s->slots))) {
        free(s);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    s->p = p;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_mutex_init(&s->compute, NULL);
    const duet_hparams *hp = duet_model_hparams(p.base);
    snprintf(s->model_name, sizeof s->model_name, "%s", hp->name);
    s->n_vocab = hp->n_vocab;
    int rc = DUET_OK;
    for (int i = 0; i < p.n_slots && !rc; i++) {
        slot *sl = &s->slots[i];
        sl->srv = s;
        if (p.remote) {
            duet_expert_remote_params rp = *p.remote;
            rp.skip_check = i > 0; /* one check at start-up is enough */
            rc = duet_expert_remote_new(p.base, &rp, &sl->remote, err);
            if (!rc) {
                sl->be = *duet_expert_remote_backend(sl->remote);
                sl->be.ctx = sl;
                sl->be.next_logits = slot_remote_next;
            }
        }
    }
    /* chat format: the override, else the model's template, else ChatML (as llama.cpp does);
     * a template duet does not recognise leaves the other endpoints working */
    if (!rc) {
        const char *tmpl = NULL, *fmt = NULL;
        size_t tlen = 0;
        duet_error cerr = {0};
        s->chat_override = p.chat_template;
        if (!s->chat_override && (duet_model_chat_template(p.base, &tmpl, &tlen, NULL) || !tmpl))
            s->chat_override = "chatml";
        if (duet_model_chat_format(p.base, s->chat_override, &fmt, &cerr))
            snprintf(s->chat_err, sizeof s->chat_err, "%s", cerr.msg);
        else
            s->chat_eot = duet_chat_template_eot(fmt);
    }
    /* the decoder's own rule (min of the models' contexts, capped) decides n_ctx: build one
     * collab to learn it and to check the configuration before binding */
    if (!rc) {
        duet_collab_params cp = p.defaults;
        cp.expert_backend = p.remote ? &s->slots[0].be : NULL;
        rc = duet_collab_new(p.base, p.expert, NULL, p.head, &cp, &s->slots[0].co, err);
        if (!rc) {
            s->slots[0].cp = cp;
            s->n_ctx = duet_collab_n_ctx(s->slots[0].co);
        }
    }
    duet_session_params sp = {.n_ctx = s->n_ctx};
    for (int i = 0; i < p.n_slots && !rc; i++) rc = duet_session_new(p.base, &sp, &s->slots[i].sess, err);
    if (!rc) {
        s->d = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL,
            0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)p.max_connections,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)p.timeout_s,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 << 10), MHD_OPTION_END);
        if (!s->d) rc = duet_fail(err, DUET_ERR_IO, "cannot listen on %s:%d (%s)", p.host, p.port,
                                  strerror(errno));
    }
    if (rc) {
        duet_server_stop(s);
        return rc;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : p.port;
    *out = s;
    return DUET_OK;
}

int duet_server_port(const duet_server *s) { return s->port; }

void duet_server_stop(duet_server *s) {
    if (!s) return;
    if (s->d) MHD_stop_daemon(s->d);
    for (int i = 0; i < s->p.n_slots; i++) {
        duet_collab_free(s->slots[i].co);
        duet_session_free(s->slots[i].sess);
        duet_expert_remote_free(s->slots[i].remote);
    }
    free(s->slots);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->compute);
    free(s);
}
