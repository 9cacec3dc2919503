/*
 * server.c: duet's HTTP server: the libmicrohttpd daemon (one thread per connection, bounded
 * by a connection limit and an idle timeout), request bodies with a size cap, the API key,
 * routing to the handlers (api_generate.c, api_text.c), the request log and the responses:
 * JSON, OpenAI-style errors, event streams. Slots, locks and metrics live in slots.c. Every
 * failure answers JSON {"error": {"message", "type", "code"}} and leaves the server up.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"
#include "serve/server.h"
#include "serve/slots.h"
#include "serve/web_page.h"

struct duet_server {
    srv_config cfg;            /* all the daemon's callbacks and the handlers see */
    struct MHD_Daemon *d;
    int port;
};

/* Kept from the first callback of a connection to its completion notice. */
struct conn_ctx {
    duet_buf body;
    int too_big;
    double t0;
    int status;                /* of the response queued, for the log and metrics */
    char endpoint[32];
};

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

enum MHD_Result srv_send_stream(struct MHD_Connection *c, conn_ctx *cx,
                                MHD_ContentReaderCallback reader, void *cls,
                                MHD_ContentReaderFreeCallback done) {
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, reader,
                                                               cls, done);
    if (!r) { done(cls); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    cx->status = 200;
    return ok;
}

static enum MHD_Result send_metrics(const srv_config *s, struct MHD_Connection *c, conn_ctx *cx) {
    size_t n = 0;
    char *out = srv_metrics_text(s->slots, &n);
    if (!out) return srv_send_error(c, cx, 500, "out of memory");
    enum MHD_Result ok = send_buf(c, cx, 200, "text/plain; version=0.0.4", out, n, 1);
    free(out);
    return ok;
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

static int authorized(const srv_config *s, struct MHD_Connection *c) {
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

static enum MHD_Result dispatch(const srv_config *s, struct MHD_Connection *c, conn_ctx *cx, int r) {
    switch (r) {
    case R_PAGE: return send_buf(c, cx, 200, "text/html; charset=utf-8", k_web_page,
                                 web_page_size(), 0);
    case R_HEALTH: return send_buf(c, cx, 200, "application/json", "{\"status\":\"ok\"}", 15, 0);
    case R_MODELS: return api_models(s, c, cx);
    case R_PROPS: return api_props(s, c, cx);
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
    else if (r == R_TOKENIZE) ok = api_tokenize(s, c, cx, b);
    else if (r == R_DETOKENIZE) ok = api_detokenize(s, c, cx, b);
    else if (r == R_NEXT) ok = api_next_token(s, c, cx, b);
    else ok = api_completions(s, c, cx, b, r == R_CHAT);
    json_decref(b);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    const srv_config *s = cls;
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
    const srv_config *s = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) return;
    double dt = duet_time_s() - cx->t0;
    srv_metrics_request(s->slots, cx->status, dt);
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
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    srv_config *cfg = &s->cfg;
    cfg->p = p;
    const duet_hparams *hp = duet_model_hparams(p.base);
    snprintf(cfg->model_name, sizeof cfg->model_name, "%s", hp->name);
    cfg->n_vocab = hp->n_vocab;
    srv_slots_params sp = {.n_slots = p.n_slots, .queue_timeout_s = p.queue_timeout_s,
                           .base = p.base, .expert = p.expert, .head = p.head,
                           .remote = p.remote, .defaults = p.defaults};
    int rc = srv_slots_new(&sp, &cfg->slots, &cfg->n_ctx, err);
    /* chat format: the override, else the model's template, else ChatML (as llama.cpp does);
     * a template duet does not recognise leaves the other endpoints working */
    if (!rc) {
        const char *tmpl = NULL, *fmt = NULL;
        size_t tlen = 0;
        duet_error cerr = {0};
        cfg->chat_override = p.chat_template;
        if (!cfg->chat_override && (duet_model_chat_template(p.base, &tmpl, &tlen, NULL) || !tmpl))
            cfg->chat_override = "chatml";
        if (duet_model_chat_format(p.base, cfg->chat_override, &fmt, &cerr))
            snprintf(cfg->chat_err, sizeof cfg->chat_err, "%s", cerr.msg);
        else
            cfg->chat_eot = duet_chat_template_eot(fmt);
    }
    if (!rc) {
        s->d = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL,
            0, NULL, NULL, on_request, cfg, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)p.max_connections,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)p.timeout_s,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, cfg,
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
    if (s->d) MHD_stop_daemon(s->d); /* first: no handler runs after it returns */
    srv_slots_free(s->cfg.slots);
    free(s);
}
