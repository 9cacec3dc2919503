/* test_server_hardening.c: duet serve exposed to hostile clients and web pages: slow clients
 * that hold connections, request bodies whose parsed form is far larger than their bytes,
 * requests a foreign web page can send (Host, Origin, Content-Type, CORS preflights),
 * request smuggling through ambiguous framing, and the OpenAI error shape and route aliases.
 * Each test spawns its own server so that its flags and its memory are its own. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "duet.h"
#include "server_client.h"
#include "test.h"

/* A TCP connection to the loopback port from source address src (another address of the
 * loopback network stands for another client), non-blocking; -1 when refused. */
static int connect_from(int port, const char *src) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in me = {.sin_family = AF_INET}, to = {.sin_family = AF_INET,
                                                           .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, src, &me.sin_addr);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) || connect(fd, (struct sockaddr *)&to, sizeof to)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Has the server closed fd (end of stream or reset)? Never blocks. */
static int closed_by_peer(int fd) {
    char b[256];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* Send raw bytes, then read everything the server answers until it closes or stays silent
 * for 2 s; NUL-terminated into out[cap]. Its length. */
static size_t raw_exchange(int port, const char *req, char *out, size_t cap) {
    int fd = connect_port(port);
    out[0] = 0;
    if (fd < 0) return 0;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t n = 0;
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) == (ssize_t)strlen(req)) {
        ssize_t got;
        while (n + 1 < cap && (got = read(fd, out + n, cap - 1 - n)) > 0) n += (size_t)got;
    }
    out[n] = 0;
    close(fd);
    return n;
}

/* How many HTTP responses (status lines) a byte stream holds. */
static int count_responses(const char *s) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, "HTTP/1.1 ")); p += 9) n++;
    return n;
}

/* ---- slow clients ----------------------------------------------------------------------- */
#define N_SLOW 64

TEST(server_slowloris_keeps_health) {
    NEED_FIXTURES();
    proc p;
    /* timings scaled down: one byte every 0.5 s (for 2 s) beats an idle timeout of 1 s; the
     * whole request is due within 2 s */
    REQUIRE(!spawn_serve(&p, "-m '%s' --timeout 1 --request-timeout 2 --quiet", g_base));
    int fd[N_SLOW], n_conn = 0;
    /* the attacker is 127.0.0.2, the health checks come from 127.0.0.1 */
    for (int i = 0; i < N_SLOW; i++) n_conn += (fd[i] = connect_from(p.port, "127.0.0.2")) >= 0;
    REQUIRE(n_conn > 0);
    static const char req[] = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n";
    int open_at_1s = 0, polls = 0, polls_ok = 0, sent = 0;
    double worst = 0, t0 = duet_time_s(), next_byte = t0;
    while (duet_time_s() - t0 < 5.0) {
        double now = duet_time_s();
        if (now >= next_byte) { /* one more byte on every connection */
            for (int i = 0; i < N_SLOW; i++)
                if (fd[i] >= 0) send(fd[i], req + sent % (sizeof req - 1), 1, MSG_NOSIGNAL);
            sent++;
            next_byte += 0.5;
        }
        if (!open_at_1s && now - t0 >= 1.0)
            for (int i = 0; i < N_SLOW; i++) open_at_1s += fd[i] >= 0 && !closed_by_peer(fd[i]);
        req_opts o = {.timeout_ms = 1000};
        double t = duet_time_s();
        resp r = http(p.port, "/health", NULL, &o);
        double dt = duet_time_s() - t;
        polls++;
        polls_ok += r.status == 200 && dt < 1.0;
        if (dt > worst) worst = dt;
        resp_free(&r);
        usleep(200000);
    }
    int still_open = 0;
    for (int i = 0; i < N_SLOW; i++) {
        if (fd[i] < 0) continue;
        still_open += !closed_by_peer(fd[i]);
        close(fd[i]);
    }
    fprintf(stderr, "    slowloris: %d connections, %d open after 1 s, %d open after 5 s; /health "
            "%d of %d polls answered within 1 s (slowest %.3f s)\n", n_conn, open_at_1s, still_open,
            polls_ok, polls, worst);
    CHECKF(polls_ok == polls, "/health answered %d of %d polls within 1 s", polls_ok, polls);
    /* the per-address cap (32 by default) leaves room for others */
    CHECKF(open_at_1s <= 32, "%d connections from one address held open", open_at_1s);
    /* the deadline (2 s) closes the ones that were let in, though they keep sending */
    CHECKF(still_open == 0, "%d slow connections still open after 5 s", still_open);
    CHECK(alive(&p));
    CHECK_EQ_INT(stop_serve(&p), 0);
}

/* ---- JSON amplification ------------------------------------------------------------------- */
#define N_ATTACK 60

typedef struct { int port; const char *body; long status; char msg[200]; } attack_arg;

static void *attack_one(void *arg) {
    attack_arg *a = arg;
    req_opts o = {.timeout_ms = 60000};
    resp r = http(a->port, "/v1/completions", a->body, &o);
    a->status = r.status;
    const char *m = json_string_value(json_object_get(json_object_get(r.js, "error"), "message"));
    snprintf(a->msg, sizeof a->msg, "%s", m ? m : "");
    resp_free(&r);
    return NULL;
}

TEST(server_json_amplification_bounded) {
    NEED_FIXTURES();
    proc p;
    /* the per-address cap raised so all 60 requests run at once, as from 60 clients */
    REQUIRE(!spawn_serve(&p, "-m '%s' --max-conns-per-ip 64 --quiet", g_base));
    long rss0 = peak_rss_kb(p.pid);
    /* "[" + 333333 "{}" joined by "," + "]": 3 * 333333 + 1 = 1000000 bytes, under the
     * default 1 MiB (1048576) body limit */
    size_t n_obj = 333333, len = 3 * n_obj + 1;
    char *body = malloc(len + 1);
    REQUIRE(body);
    body[0] = '[';
    for (size_t i = 0; i < n_obj; i++) memcpy(body + 1 + 3 * i, i + 1 < n_obj ? "{}," : "{}]", 3);
    body[len] = 0;
    pthread_t th[N_ATTACK];
    static attack_arg args[N_ATTACK];
    for (int i = 0; i < N_ATTACK; i++) {
        args[i] = (attack_arg){.port = p.port, .body = body};
        pthread_create(&th[i], NULL, attack_one, &args[i]);
    }
    int refused = 0;
    for (int i = 0; i < N_ATTACK; i++) {
        pthread_join(th[i], NULL);
        refused += args[i].status == 413 && strstr(args[i].msg, "16384 objects and arrays");
    }
    long rss = peak_rss_kb(p.pid);
    fprintf(stderr, "    %d x 1 MB of {}: peak RSS %ld MB (%ld MB at start), %d answered 413 "
            "(first answer %ld: %.100s)\n", N_ATTACK, rss / 1024, rss0 / 1024, refused,
            args[0].status, args[0].msg);
    CHECKF(rss > 0 && rss < 300 * 1024, "peak RSS %ld KiB", rss);
    CHECK_EQ_INT(refused, N_ATTACK);
    free(body);
    /* scalars: 200000 values ("1," each) are over max(65536, 2 n_ctx) for any n_ctx up to
     * 4096 (the default context is at most 4096) */
    size_t n_val = 200000;
    char *many = malloc(2 * n_val + 16);
    REQUIRE(many);
    memcpy(many, "{\"prompt\":[", 11);
    for (size_t i = 0; i < n_val; i++) memcpy(many + 11 + 2 * i, i + 1 < n_val ? "1," : "1]", 2);
    memcpy(many + 11 + 2 * n_val, "}", 2);
    CHECK_ERR(p.port, "/v1/completions", many, 413, "values (the limit)");
    free(many);
    /* an ordinary token-array prompt still gets through */
    resp r = http(p.port, "/v1/completions", "{\"prompt\": [1, 2, 3], \"max_tokens\": 2}", NULL);
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
    CHECK(alive(&p));
    CHECK_EQ_INT(stop_serve(&p), 0);
}

TEST(server_max_body_capped) {
    NEED_BIN();
    /* 64 MiB = 67108864 is the largest body limit; one byte more is refused before loading */
    char cmd[512], out[2048];
    snprintf(cmd, sizeof cmd, "%s serve -m /nonexistent --max-body 67108865 2>&1", duet_bin());
    FILE *f = popen(cmd, "r");
    REQUIRE(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    int st = pclose(f);
    CHECKF(WEXITSTATUS(st) == 2 && strstr(out, "--max-body"), "exit %d: %s", WEXITSTATUS(st), out);
}

/* ---- web pages: Host, Origin, Content-Type, CORS ------------------------------------------ */
TEST(server_foreign_pages_refused) {
    NEED_FIXTURES();
    proc p;
    REQUIRE(!spawn_serve(&p, "-m '%s' --allowed-hosts duet.lan --quiet", g_base));
    int port = p.port;
    const char *gen = "{\"prompt\": \"a\", \"max_tokens\": 2}";
    /* Host: a rebound name is refused, loopback names and --allowed-hosts are not */
    const char *evil_host[] = {"Host: evil.example:8080", NULL};
    req_opts o = {.headers = evil_host};
    resp r = http(port, "/health", NULL, &o);
    CHECK(is_error(&r, 403, "Host 'evil.example:8080'"));
    resp_free(&r);
    const char *ok_hosts[] = {"Host: localhost", "Host: [::1]:1", "Host: DUET.lan:80"};
    for (int i = 0; i < 3; i++) {
        const char *h[] = {ok_hosts[i], NULL};
        o = (req_opts){.headers = h};
        r = http(port, "/health", NULL, &o);
        CHECKF(r.status == 200, "%s: HTTP %ld", ok_hosts[i], r.status);
        resp_free(&r);
    }
    /* a form or text/plain POST (what a page sends without a preflight) gets 415 */
    o = (req_opts){.content_type = "text/plain"};
    r = http(port, "/v1/completions", gen, &o);
    CHECK(is_error(&r, 415, "application/json"));
    resp_free(&r);
    o = (req_opts){.content_type = ""};
    r = http(port, "/tokenize", "{\"content\": \"a\"}", &o);
    CHECK(is_error(&r, 415, "application/json"));
    resp_free(&r);
    o = (req_opts){.content_type = "application/json; charset=utf-8"};
    r = http(port, "/tokenize", "{\"content\": \"a\"}", &o);
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
    /* a foreign Origin: 403 and nothing generated */
    const char *evil_origin[] = {"Origin: http://evil.example", NULL};
    o = (req_opts){.headers = evil_origin};
    r = http(port, "/v1/completions", gen, &o);
    CHECK(is_error(&r, 403, "Origin 'http://evil.example'"));
    resp_free(&r);
    r = http(port, "/metrics", NULL, NULL);
    CHECKF(r.body && strstr(r.body, "\nduet_tokens_generated_total 0\n"), "tokens were generated");
    resp_free(&r);
    /* the server's own page (same host:port, as web/index.html posts) is answered */
    char own[64], acao[128] = "";
    snprintf(own, sizeof own, "Origin: http://127.0.0.1:%d", port);
    const char *own_origin[] = {own, NULL};
    o = (req_opts){.headers = own_origin};
    r = http(port, "/v1/completions", gen, &o);
    CHECK_EQ_INT(r.status, 200);
    CHECK(resp_header(&r, "Access-Control-Allow-Origin", acao, sizeof acao));
    CHECK_STR(acao, own + 8);
    resp_free(&r);
    CHECK(alive(&p));
    CHECK_EQ_INT(stop_serve(&p), 0);
}

TEST(server_cors_origins) {
    NEED_FIXTURES();
    proc p;
    REQUIRE(!spawn_serve(&p, "-m '%s' --cors-origin http://app.example --cors-origin "
                         "https://b.example:8443 --quiet", g_base));
    int port = p.port;
    const char *gen = "{\"prompt\": \"a\", \"max_tokens\": 2}";
    const char *app[] = {"Origin: http://app.example", NULL};
    req_opts o = {.headers = app};
    char v[200] = "";
    resp r = http(port, "/v1/completions", gen, &o);
    CHECK_EQ_INT(r.status, 200);
    CHECK(resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    CHECK_STR(v, "http://app.example");
    resp_free(&r);
    const char *b[] = {"Origin: https://b.example:8443", NULL};
    o = (req_opts){.headers = b};
    r = http(port, "/tokenize", "{\"content\": \"a\"}", &o);
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
    const char *other[] = {"Origin: http://app.example.evil", NULL};
    o = (req_opts){.headers = other};
    r = http(port, "/v1/completions", gen, &o);
    CHECK(is_error(&r, 403, "not allowed"));
    CHECK(!resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    resp_free(&r);
    /* the preflight a browser sends before a JSON POST */
    const char *pre[] = {"Origin: http://app.example", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: content-type, authorization", NULL};
    o = (req_opts){.method = "OPTIONS", .headers = pre, .content_type = ""};
    r = http(port, "/v1/chat/completions", NULL, &o);
    CHECK_EQ_INT(r.status, 204);
    CHECK(resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v) && !strcmp(v, "http://app.example"));
    CHECK(resp_header(&r, "Access-Control-Allow-Methods", v, sizeof v) && strstr(v, "POST"));
    CHECK(resp_header(&r, "Access-Control-Allow-Headers", v, sizeof v) && strstr(v, "Content-Type") &&
          strstr(v, "Authorization"));
    resp_free(&r);
    o.headers = other;
    r = http(port, "/v1/chat/completions", NULL, &o);
    CHECK(is_error(&r, 403, "not allowed"));
    resp_free(&r);
    CHECK_EQ_INT(stop_serve(&p), 0);
    /* "*" allows every origin */
    REQUIRE(!spawn_serve(&p, "-m '%s' --cors-origin '*' --quiet", g_base));
    o = (req_opts){.headers = other};
    r = http(p.port, "/v1/completions", gen, &o);
    CHECK_EQ_INT(r.status, 200);
    CHECK(resp_header(&r, "Access-Control-Allow-Origin", v, sizeof v) && !strcmp(v, "*"));
    resp_free(&r);
    CHECK_EQ_INT(stop_serve(&p), 0);
}

/* ---- request smuggling ---------------------------------------------------------------------- */
TEST(server_ambiguous_framing_refused) {
    NEED_FIXTURES();
    proc p;
    REQUIRE(!spawn_serve(&p, "-m '%s' --quiet", g_base));
    /* read with the first Content-Length (2), the bytes after "{}" are a second request; read
     * with the second, they are body. Either way the second must never be answered. */
    static const char smuggled[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    char req[1024], out[8192];
    snprintf(req, sizeof req, "POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
             "application/json\r\nContent-Length: 2\r\nContent-Length: %zu\r\n\r\n{}%s",
             2 + strlen(smuggled), smuggled);
    raw_exchange(p.port, req, out, sizeof out);
    CHECKF(count_responses(out) == 1 && !strncmp(out, "HTTP/1.1 400", 12) && !strstr(out, "\"ok\""),
           "two Content-Length headers: %.300s", out);
    snprintf(req, sizeof req, "POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
             "application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: %zu\r\n\r\n"
             "0\r\n\r\n%s", 5 + strlen(smuggled), smuggled);
    raw_exchange(p.port, req, out, sizeof out);
    CHECKF(count_responses(out) == 1 && !strncmp(out, "HTTP/1.1 400", 12) && !strstr(out, "\"ok\""),
           "Content-Length with chunked: %.300s", out);
    /* one honest request followed by a pipelined one is still answered twice */
    snprintf(req, sizeof req, "POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
             "application/json\r\nContent-Length: 15\r\n\r\n{\"content\":\"a\"}%s", smuggled);
    raw_exchange(p.port, req, out, sizeof out);
    CHECKF(count_responses(out) == 2 && strstr(out, "\"ok\""), "pipelined pair: %.300s", out);
    STAYS_UP(&p, p.port);
    CHECK_EQ_INT(stop_serve(&p), 0);
}

/* ---- OpenAI error objects and routes ----------------------------------------------------- */
/* error.type is the wanted one, error.param is present and null, error.code a string or
 * null (OpenAI's SDKs read it as a string) */
static int openai_error(const resp *r, long status, const char *type) {
    json_t *e = json_object_get(r->js, "error");
    json_t *code = json_object_get(e, "code"), *param = json_object_get(e, "param");
    int ok = r->status == status && json_is_string(json_object_get(e, "message")) &&
             !strcmp(json_string_value(json_object_get(e, "type")) ? json_string_value(json_object_get(e, "type")) : "", type) &&
             param && json_is_null(param) && code && (json_is_string(code) || json_is_null(code));
    if (!ok) fprintf(stderr, "    got HTTP %ld: %.300s\n", r->status, r->body ? r->body : "(none)");
    return ok;
}

TEST(server_openai_errors_and_aliases) {
    NEED_FIXTURES();
    proc p;
    REQUIRE(!spawn_serve(&p, "-m '%s' --quiet", g_base));
    int port = p.port;
    resp r = http(port, "/v2/nothing", NULL, NULL);
    CHECK(openai_error(&r, 404, "not_found_error"));
    resp_free(&r);
    r = http(port, "/v1/completions", "{", NULL);
    CHECK(openai_error(&r, 400, "invalid_request_error"));
    resp_free(&r);
    req_opts del = {.method = "DELETE"};
    r = http(port, "/v1/models", NULL, &del);
    CHECK(openai_error(&r, 405, "invalid_request_error"));
    resp_free(&r);
    /* the paths without /v1 answer as the /v1 ones */
    r = http(port, "/models", NULL, NULL);
    json_t *data = json_array_get(json_object_get(r.js, "data"), 0);
    char id[200] = "";
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(data, "id")) ?
             json_string_value(json_object_get(data, "id")) : "");
    CHECKF(r.status == 200 && id[0], "/models: HTTP %ld", r.status);
    resp_free(&r);
    r = http(port, "/completions", "{\"prompt\": \"a\", \"max_tokens\": 2}", NULL);
    CHECKF(r.status == 200 && json_is_array(json_object_get(r.js, "choices")), "/completions %ld", r.status);
    resp_free(&r);
    r = http(port, "/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], "
             "\"max_tokens\": 2}", NULL);
    CHECKF(r.status == 200 && json_object_get(json_object_get(json_array_get(
               json_object_get(r.js, "choices"), 0), "message"), "content"), "/chat/completions %ld", r.status);
    resp_free(&r);
    /* /v1/models/{id}: the served model by its (URL-escaped) id, 404 for another */
    char *esc = curl_easy_escape(NULL, id, 0), path[400];
    snprintf(path, sizeof path, "/v1/models/%s", esc);
    r = http(port, path, NULL, NULL);
    CHECKF(r.status == 200 && !strcmp(json_string_value(json_object_get(r.js, "id")) ?
           json_string_value(json_object_get(r.js, "id")) : "", id), "%s: HTTP %ld", path, r.status);
    resp_free(&r);
    snprintf(path, sizeof path, "/models/%s", esc);
    r = http(port, path, NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
    curl_free(esc);
    r = http(port, "/v1/models/no-such-model", NULL, NULL);
    CHECK(openai_error(&r, 404, "not_found_error"));
    resp_free(&r);
    CHECK_EQ_INT(stop_serve(&p), 0);
}
