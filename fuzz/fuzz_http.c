/* fuzz_http.c: libFuzzer harness for duet serve's request handling: raw bytes, as a client
 * could send them, go to a server running in this process (a tiny random-weight model, one
 * slot, small limits), through libmicrohttpd's parser into duet's routing, limits and
 * request validation. Each input is sent on a fresh connection, half-closed, and the answer
 * read until the server closes or 300 ms pass. ASan/UBSan watch the server's threads; every
 * 64 inputs a /health request from another address must be answered within 5 s, else the
 * harness aborts (a hung or dead server is a finding too).
 *
 * Inputs that do not start with an HTTP method get one prepended by their first byte, so the
 * fuzzer spends its time past the request line. Seeds: a few valid requests are built in.
 * Run: build-fuzz/fuzz_http -max_total_time=600 CORPUS_DIR */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "duet.h"

static duet_server *g_srv;
static int g_port;

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_http: %s: %s\n", what, msg);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    static char path[] = "/tmp/fuzz-http-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) die("mkstemp", path);
    close(fd);
    duet_error err = {0};
    duet_make_model_params mp = {.n_embd = 32, .n_layer = 1, .n_head = 2, .n_head_kv = 1,
                                 .n_ff = 64, .n_vocab = 300, .n_ctx = 64, .type = 0,
                                 .output_type = -1, .seed = 1};
    if (duet_make_model(&mp, path, &err)) die("make model", err.msg);
    duet_model_params lp = {.n_threads = 1};
    duet_model *m = NULL;
    if (duet_model_load(path, &lp, &m, &err)) die("load", err.msg);
    unlink(path);
    duet_server_params sp = {.host = "127.0.0.1", .n_slots = 1, .base = m, .max_body = 65536,
                             .timeout_s = 2, .queue_timeout_s = 2, .quiet = 1,
                             .defaults = {.policy = DUET_POLICY_BASE, .n_ctx = 64}};
    if (duet_server_start(&sp, &g_srv, &err)) die("server", err.msg);
    g_port = duet_server_port(g_srv);
    return 0;
}

/* connect, resumed when a signal (libFuzzer's timers) interrupts it: the connection then
 * completes in the background, so wait for it and read its result. */
static int connect_to(int fd, const struct sockaddr_in *a) {
    if (!connect(fd, (const struct sockaddr *)a, sizeof *a)) return 0;
    if (errno != EINTR && errno != EINPROGRESS) return -1;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    while (poll(&p, 1, 5000) < 0 && errno == EINTR) {}
    int e = ETIMEDOUT;
    socklen_t l = sizeof e;
    if (!(p.revents & (POLLOUT | POLLERR | POLLHUP)) ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) || e) {
        errno = e ? e : ETIMEDOUT;
        return -1;
    }
    return 0;
}

/* A connection to the server from loopback address src (host order; 0: any). */
static int connect_server(uint32_t src) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in me = {.sin_family = AF_INET}, to = {.sin_family = AF_INET,
                                                           .sin_port = htons((uint16_t)g_port)};
    me.sin_addr.s_addr = htonl(src);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* close with a reset: tens of thousands of connections a minute would otherwise leave
     * as many client ports in TIME_WAIT and exhaust them */
    struct linger lg = {1, 0};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) ||
        (src && bind(fd, (struct sockaddr *)&me, sizeof me)) || connect_to(fd, &to))
        die("connect", strerror(errno));
    return fd;
}

/* Milliseconds since an arbitrary start, for deadlines that survive interrupted calls. */
static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* From src, send n bytes, half-close, read the answer into buf (up to cap) until close or
 * timeout. libFuzzer's SIGALRM (every -timeout/2 s) interrupts send, poll and recv: each is
 * resumed, with the time left, rather than taken for a closed or silent server. */
static size_t exchange(uint32_t src, const void *data, size_t n, char *buf, size_t cap,
                       int timeout_ms) {
    int fd = connect_server(src);
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, (const char *)data + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break; /* the server may close early on a bad request */
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    size_t got = 0;
    long long end = now_ms() + timeout_ms;
    while (got < cap) {
        long long left = end - now_ms();
        if (left <= 0) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        ssize_t k = recv(fd, buf + got, cap - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    return got;
}

/* /health from another loopback address (127.0.0.2): the per-address connection cap may
 * hold back the fuzzing client's own address for a moment under this load, by design; what
 * must hold is that another client is answered within 5 s. */
static void check_alive(void) {
    static const char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    char buf[512];
    size_t n = exchange(0x7f000002, req, sizeof req - 1, buf, sizeof buf - 1, 5000);
    buf[n] = 0;
    if (!strstr(buf, " 200 ")) die("health", n ? buf : "no answer within 5 s");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const lead[] = {"POST /v1/completions HTTP/1.1\r\n",
                                       "POST /v1/chat/completions HTTP/1.1\r\n",
                                       "POST /completion HTTP/1.1\r\n", "POST /tokenize HTTP/1.1\r\n",
                                       "POST /detokenize HTTP/1.1\r\n", "GET /v1/models HTTP/1.1\r\n",
                                       "OPTIONS /v1/completions HTTP/1.1\r\n", ""};
    static unsigned long n_inputs;
    if (size > 1 << 16) return 0;
    const char *l = size ? lead[data[0] & 7] : "";
    size_t ln = strlen(l);
    char *req = malloc(ln + size);
    if (!req) return 0;
    memcpy(req, l, ln);
    if (size) memcpy(req + ln, data + (ln ? 1 : 0), size - (ln ? 1 : 0));
    char buf[4096];
    (void)exchange(0, req, ln + size - (ln && size ? 1 : 0), buf, sizeof buf, 300);
    free(req);
    if (++n_inputs % 64 == 0) check_alive();
    return 0;
}
