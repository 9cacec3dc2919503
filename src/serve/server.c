/*
 * server.c: duet's HTTP server: the libmicrohttpd daemon (one thread per connection, bounded
 * by a total and a per-address connection limit, an idle timeout and a deadline for each
 * request), request bodies with a size and a structure cap, the checks a web page cannot get
 * past (Host, Origin, Content-Type, request smuggling), the API key, routing to the handlers
 * (api_generate.c, api_text.c), the request log and the responses: JSON, OpenAI-style
 * errors, event streams. Slots, locks and metrics live in slots.c. Every failure answers
 * JSON {"error": {"message", "type", "param", "code"}} and leaves the server up.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "serve/api.h"
#include "serve/server.h"
#include "serve/slots.h"
#include "serve/web_page.h"

#define MAX_BODY_CAP ((size_t)64 << 20) /* the largest --max-body */
#define JSON_MAX_CONTAINERS 16384       /* objects and arrays in one request body */
#define JSON_PARSER_DEPTH 2048          /* jansson's own nesting cap */

/* A connection's request deadline, watched by a thread of its own: libmicrohttpd's timeout
 * is an idle timeout that every received byte resets, so a client sending one byte at a
 * time would hold its connection (and thread) for ever. */
typedef struct conn_watch {
    struct conn_watch *prev, *next;
    int fd;
    double deadline;           /* 0: none (a request is being answered) */
} conn_watch;

struct duet_server {
    srv_config cfg;            /* first: handlers get &cfg, the watch code casts it back */
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;        /* guards watch and stopping */
    pthread_cond_t cv;
    pthread_t watchdog;
    int watchdog_on, stopping;
    conn_watch *watch;
};

/* Kept from the first callback of a connection to its completion notice. */
struct conn_ctx {
    duet_buf body;
    int too_big;
    int must_close;            /* answer with Connection: close (the framing is not trusted) */
    double t0;
    int status;                /* of the response queued, for the log and metrics */
    char endpoint[32];
    char allow_origin[256];    /* Access-Control-Allow-Origin of the answer, or "" */
};

/* ---- responses --------------------------------------------------------------------------- */
static void add_common_headers(struct MHD_Response *r, const conn_ctx *cx) {
    if (cx->allow_origin[0]) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", cx->allow_origin);
        MHD_add_response_header(r, "Vary", "Origin");
    }
    if (cx->must_close) MHD_add_response_header(r, "Connection", "close");
}

static enum MHD_Result send_buf(struct MHD_Connection *c, conn_ctx *cx, unsigned status,
                                const char *type, const char *data, size_t n, int copy) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        n, (void *)data, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (status == 405) MHD_add_response_header(r, "Allow", "GET, POST, OPTIONS");
    if (cx) add_common_headers(r, cx);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    if (cx) cx->status = (int)status;
    return ok;
}

enum MHD_Result srv_send_json(struct MHD_Connection *c, conn_ctx *cx, unsigned status, json_t *js) {
    /* the length comes from the literal itself: a hand-counted one went stale and made the
     * server send bytes past the literal's end */
    static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                              "\"param\":null,\"code\":\"internal_error\"}}";
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
    /* OpenAI's shape: type names the class, code is a string (or null) a client can switch
     * on; "param" is null because the message names the field */
    const char *type = status == 401 ? "authentication_error" : status == 403 ? "permission_error"
                     : status == 404 ? "not_found_error" : status >= 500 ? "server_error"
                     : "invalid_request_error";
    const char *code = status == 401 ? "invalid_api_key" : status == 403 ? "forbidden"
                     : status == 404 ? "not_found" : status == 405 ? "method_not_allowed"
                     : status == 413 ? "request_too_large" : status == 415 ? "unsupported_media_type"
                     : status == 500 ? "internal_error" : status == 502 ? "upstream_error"
                     : status == 503 ? "server_busy" : NULL;
    /* messages may quote user text: json_string needs valid UTF-8, so go through sb_add */
    duet_buf b = {0};
    sb_add(&b, msg, strlen(msg));
    json_t *js = json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", b.p ? b.p : "", "type",
                           type, "param", "code", code);
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
    add_common_headers(r, cx);
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

/* ---- request checks ---------------------------------------------------------------------- */
/* Counts a JSON text's objects and arrays, and its values (commas and colons outside
 * strings, plus one), without building anything: jansson spends about 200 bytes on an empty
 * object, so a 1 MiB body of "{}," would otherwise cost some 70 MB before a handler sees it.
 * Text the parser refuses anyway (nesting past its own cap) is left to its message. 1 and
 * msg filled when a count is over its limit. */
static int json_too_costly(const char *p, size_t n, size_t max_values, char *msg, size_t cap) {
    size_t depth = 0, containers = 0, values = 1;
    int in_str = 0, esc = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (in_str) {
            if (esc) esc = 0;
            else if (ch == '\\') esc = 1;
            else if (ch == '"') in_str = 0;
            continue;
        }
        if (ch == '"') in_str = 1;
        else if (ch == '{' || ch == '[') {
            if (++depth > JSON_PARSER_DEPTH) return 0;
            if (++containers > JSON_MAX_CONTAINERS) {
                snprintf(msg, cap, "request body has more than %d objects and arrays (the limit)",
                         JSON_MAX_CONTAINERS);
                return 1;
            }
        } else if (ch == '}' || ch == ']') { if (depth) depth--; }
        else if ((ch == ',' || ch == ':') && ++values > max_values) {
            snprintf(msg, cap, "request body has more than %zu values (the limit)", max_values);
            return 1;
        }
    }
    return 0;
}

/* The name part of a Host header or of an origin's authority: "[::1]:8080" -> "[::1]",
 * "Example.com:80" -> "Example.com"; its length. */
static size_t host_name_len(const char *h) {
    if (h[0] == '[') {
        const char *e = strchr(h, ']');
        return e ? (size_t)(e - h) + 1 : strlen(h);
    }
    return strcspn(h, ":");
}

/* Is name[0..n) one of the comma list's entries (case-insensitive, blanks around ignored)? */
static int in_list(const char *list, const char *name, size_t n) {
    for (const char *p = list; p && *p;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, ",");
        size_t e = len;
        while (e && (p[e - 1] == ' ' || p[e - 1] == '\t')) e--;
        if (e && e == n && !strncasecmp(p, name, n)) return 1;
        p += len;
    }
    return 0;
}

/* Without an API key, a web page on any site could reach a loopback server through DNS
 * rebinding (its own name resolving to 127.0.0.1); such a request carries the page's name in
 * Host. Accepted: the bind address, the loopback names for a loopback or 0.0.0.0 bind, and
 * --allowed-hosts. A 0.0.0.0 bind has no single name to check against: it accepts any Host
 * unless --allowed-hosts is given. A request without Host (HTTP/1.0) comes from no browser. */
static int host_allowed(const srv_config *s, const char *host) {
    if ((s->p.api_key && s->p.api_key[0]) || !host) return 1;
    size_t n = host_name_len(host);
    const char *bind = s->p.host;
    int any = !strcmp(bind, "0.0.0.0"), loop = any || !strncmp(bind, "127.", 4);
    if (any && !s->p.allowed_hosts) return 1;
    if (in_list(s->p.allowed_hosts, host, n)) return 1;
    if (n == strlen(bind) && !strncasecmp(host, bind, n)) return 1;
    return loop && in_list("localhost,127.0.0.1,[::1]", host, n);
}

/* A browser names the calling page's origin ("http://name:port") in Origin. Allowed: the
 * server's own origin (the authority equals Host), --cors-origin entries, or any with "*".
 * Fills allow (the Access-Control-Allow-Origin value); no Origin (not a browser): 1, "". */
static int origin_allowed(const srv_config *s, const char *origin, const char *host,
                          char *allow, size_t cap) {
    allow[0] = 0;
    if (!origin) return 1;
    size_t n = strlen(origin);
    while (n && origin[n - 1] == '/') n--;
    const char *auth = !strncasecmp(origin, "http://", 7) ? origin + 7
                     : !strncasecmp(origin, "https://", 8) ? origin + 8 : NULL;
    int ok = in_list(s->p.cors_origins, "*", 1) || in_list(s->p.cors_origins, origin, n) ||
             (auth && host && (size_t)(origin + n - auth) == strlen(host) &&
              !strncasecmp(auth, host, strlen(host)));
    if (ok && n < cap) snprintf(allow, cap, "%.*s", (int)n, origin);
    if (ok && in_list(s->p.cors_origins, "*", 1)) snprintf(allow, cap, "*");
    return ok;
}

/* Content-Type: application/json, parameters (charset) allowed. A form or text/plain POST is
 * what a foreign page can send without a CORS preflight. */
static int is_json_type(const char *ct) {
    if (!ct) return 0;
    ct += strspn(ct, " \t");
    return !strncasecmp(ct, "application/json", 16) && strchr("; \t", ct[16]) != NULL;
}

struct framing { int n_length, n_encoding; };
static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
    struct framing *f = cls;
    if (!strcasecmp(key, "Content-Length")) f->n_length++;
    else if (!strcasecmp(key, "Transfer-Encoding")) f->n_encoding++;
    return MHD_YES;
}

/* A request whose body length two headers disagree on could be read one way here and another
 * way by a proxy in front: the rest of it would be answered as a second, smuggled request.
 * libmicrohttpd accepts both forms, so they are refused before anything is read. */
static int ambiguous_framing(struct MHD_Connection *c) {
    struct framing f = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_framing, &f);
    return f.n_length > 1 || f.n_encoding > 1 || (f.n_length && f.n_encoding);
}

/* ---- request deadlines --------------------------------------------------------------------- */
static void watch_set(const srv_config *cfg, struct MHD_Connection *c, double deadline) {
    duet_server *s = (duet_server *)cfg;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_watch *w = ci ? ci->socket_context : NULL;
    if (!w) return;
    pthread_mutex_lock(&s->mu);
    w->deadline = deadline;
    pthread_mutex_unlock(&s->mu);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code) {
    duet_server *s = cls;
    conn_watch *w = *socket_ctx;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci) return;
        if (!(w = calloc(1, sizeof *w))) { shutdown(ci->connect_fd, SHUT_RDWR); return; }
        w->fd = ci->connect_fd;
        pthread_mutex_lock(&s->mu);
        w->deadline = duet_time_s() + s->cfg.p.request_timeout_s;
        w->next = s->watch;
        if (s->watch) s->watch->prev = w;
        s->watch = w;
        pthread_mutex_unlock(&s->mu);
        *socket_ctx = w;
    } else if (w) { /* closed: the socket is closed after this returns, never before */
        pthread_mutex_lock(&s->mu);
        if (w->prev) w->prev->next = w->next;
        else s->watch = w->next;
        if (w->next) w->next->prev = w->prev;
        pthread_mutex_unlock(&s->mu);
        free(w);
        *socket_ctx = NULL;
    }
}

/* Shuts down the socket of every connection past its deadline: its thread then reads the end
 * of the stream and libmicrohttpd closes it. Checks ten times a second. */
static void *watchdog(void *arg) {
    duet_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        double now = duet_time_s();
        for (conn_watch *w = s->watch; w; w = w->next)
            if (w->deadline > 0 && now >= w->deadline) {
                shutdown(w->fd, SHUT_RDWR);
                w->deadline = 0;
            }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- routing ----------------------------------------------------------------------------- */
enum { R_PAGE, R_HEALTH, R_MODELS, R_PROPS, R_METRICS, R_TOKENIZE, R_DETOKENIZE, R_COMPL, R_CHAT,
       R_NEXT, R_MODEL };
/* OpenAI clients configured with a base URL without /v1 ask for the paths without it */
static const struct { const char *path; const char *method; int open, id; } k_routes[] = {
    {"/", "GET", 1, R_PAGE},                 {"/health", "GET", 1, R_HEALTH},
    {"/v1/models", "GET", 0, R_MODELS},      {"/models", "GET", 0, R_MODELS},
    {"/props", "GET", 0, R_PROPS},           {"/metrics", "GET", 0, R_METRICS},
    {"/tokenize", "POST", 0, R_TOKENIZE},    {"/detokenize", "POST", 0, R_DETOKENIZE},
    {"/v1/completions", "POST", 0, R_COMPL}, {"/completions", "POST", 0, R_COMPL},
    {"/v1/chat/completions", "POST", 0, R_CHAT}, {"/chat/completions", "POST", 0, R_CHAT},
    {"/completion", "POST", 0, R_NEXT},
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

/* /v1/models/{id}: the served model, as listed by /v1/models, or 404 */
static enum MHD_Result send_model(const srv_config *s, struct MHD_Connection *c, conn_ctx *cx,
                                  const char *id) {
    if (strcmp(id, s->model_name)) return srv_send_error(c, cx, 404, "no model %.200s", id);
    return srv_send_json(c, cx, 200, json_pack("{s:s, s:s, s:i, s:s}", "id", s->model_name,
                                               "object", "model", "created", 0, "owned_by", "duet"));
}

/* The answer to a CORS preflight: which methods and headers a page may use. */
static enum MHD_Result send_preflight(struct MHD_Connection *c, conn_ctx *cx) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    add_common_headers(r, cx);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    MHD_add_response_header(r, "Access-Control-Allow-Headers", "Content-Type, Authorization");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    enum MHD_Result ok = MHD_queue_response(c, 204, r);
    MHD_destroy_response(r);
    cx->status = 204;
    return ok;
}

static enum MHD_Result dispatch(const srv_config *s, struct MHD_Connection *c, conn_ctx *cx, int r,
                                const char *url) {
    switch (r) {
    case R_PAGE: return send_buf(c, cx, 200, "text/html; charset=utf-8", k_web_page,
                                 web_page_size(), 0);
    case R_HEALTH: return send_buf(c, cx, 200, "application/json", "{\"status\":\"ok\"}", 15, 0);
    case R_MODELS: return api_models(s, c, cx);
    case R_MODEL: return send_model(s, c, cx, url + (!strncmp(url, "/v1/", 4) ? 11 : 8));
    case R_PROPS: return api_props(s, c, cx);
    case R_METRICS: return send_metrics(s, c, cx);
    default: break;
    }
    char why[160];
    size_t max_values = (size_t)s->n_ctx * 2 > 65536 ? (size_t)s->n_ctx * 2 : 65536;
    if (json_too_costly(cx->body.p, cx->body.n, max_values, why, sizeof why))
        return srv_send_error(c, cx, 413, "%s", why);
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

/* The route of url for method: its id, -1 (path unknown), -2 (method not allowed there) or
 * -3 (an OPTIONS preflight of a known path). */
static int find_route(const char *url, const char *method, int *open) {
    int path_known = 0;
    *open = 0;
    if ((!strncmp(url, "/v1/models/", 11) && url[11]) || (!strncmp(url, "/models/", 8) && url[8])) {
        if (!strcmp(method, "OPTIONS")) return -3;
        return !strcmp(method, "GET") || !strcmp(method, "HEAD") ? R_MODEL : -2;
    }
    for (int i = 0; i < N_ROUTES; i++)
        if (!strcmp(url, k_routes[i].path)) {
            path_known = 1;
            *open = k_routes[i].open;
            if (!strcmp(method, k_routes[i].method) ||
                (!strcmp(method, "HEAD") && !strcmp(k_routes[i].method, "GET")))
                return k_routes[i].id;
        }
    if (path_known && !strcmp(method, "OPTIONS")) return -3;
    return path_known ? -2 : -1;
}

/* Everything a complete request passes before its handler: Host, route, Origin,
 * Content-Type, API key. */
static enum MHD_Result route(const srv_config *s, struct MHD_Connection *c, conn_ctx *cx,
                             const char *url, const char *method) {
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    if (!host_allowed(s, host)) {
        char shown[80];
        duet_printable(shown, sizeof shown, host, strlen(host));
        return srv_send_error(c, cx, 403, "Host '%s' is not this server's name (see --allowed-hosts)",
                              shown);
    }
    int open, r = find_route(url, method, &open);
    if (r == -2) return srv_send_error(c, cx, 405, "method %.16s is not allowed on %s", method,
                                       cx->endpoint);
    if (r == -1) return srv_send_error(c, cx, 404, "no endpoint %s", cx->endpoint);
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    int origin_ok = origin_allowed(s, origin, host, cx->allow_origin, sizeof cx->allow_origin);
    if (!origin_ok && (r == -3 || !strcmp(method, "POST"))) {
        char shown[80];
        duet_printable(shown, sizeof shown, origin, strlen(origin));
        return srv_send_error(c, cx, 403, "Origin '%s' is not allowed (see --cors-origin)", shown);
    }
    if (r == -3) return send_preflight(c, cx);
    if (!strcmp(method, "POST") &&
        !is_json_type(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type")))
        return srv_send_error(c, cx, 415, "POST bodies must be sent as Content-Type: application/json");
    if (!open && !authorized(s, c))
        return srv_send_error(c, cx, 401, "missing or wrong API key (Authorization: Bearer KEY)");
    return dispatch(s, c, cx, r, url);
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
        if (ambiguous_framing(c)) {
            cx->must_close = 1;
            return srv_send_error(c, cx, 400, "the request has several Content-Length headers, or "
                                  "Content-Length with Transfer-Encoding");
        }
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
    watch_set(s, c, 0); /* the request is complete: answering may take as long as it takes */
    if (cx->too_big)
        return srv_send_error(c, cx, 413, "request body exceeds the limit of %zu bytes", s->p.max_body);
    return route(s, c, cx, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    const srv_config *s = cls;
    conn_ctx *cx = *con_cls;
    /* a kept-alive connection owes its next request within the same time */
    watch_set(s, c, duet_time_s() + s->p.request_timeout_s);
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
    if (p.request_timeout_s <= 0) p.request_timeout_s = 10;
    if (p.max_conns_per_ip <= 0) p.max_conns_per_ip = 32;
    /* one address never takes every connection: the others (a health check) still get in */
    if (p.max_conns_per_ip > p.max_connections) p.max_conns_per_ip = p.max_connections;
    if (p.max_body > MAX_BODY_CAP)
        return duet_fail(err, DUET_ERR_ARG, "max_body %zu is over the limit of %zu bytes", p.max_body,
                         MAX_BODY_CAP);
    if (p.port < 0 || p.port > 65535) return duet_fail(err, DUET_ERR_ARG, "port %d is outside [0, 65535]", p.port);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p.port)};
    if (inet_pton(AF_INET, p.host, &sa.sin_addr) != 1)
        return duet_fail(err, DUET_ERR_ARG, "host '%.100s' is not an IPv4 address", p.host);
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up must not kill the server */
    duet_server *s = calloc(1, sizeof *s);
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    srv_config *cfg = &s->cfg;
    cfg->p = p;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
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
        if (pthread_create(&s->watchdog, NULL, watchdog, s))
            rc = duet_fail(err, DUET_ERR_NOMEM, "cannot start the request-deadline thread");
        else s->watchdog_on = 1;
    }
    if (!rc) {
        s->d = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL,
            0, NULL, NULL, on_request, cfg, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)p.max_connections,
            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)p.max_conns_per_ip,
            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
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
    if (s->watchdog_on) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->watchdog, NULL);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    srv_slots_free(s->cfg.slots);
    free(s);
}
