/* server_client.c: the server tests' shared helpers (server_client.h). */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "duet.h"
#include "fixtures.h"
#include "server_client.h"

/* ---- processes --------------------------------------------------------------------------- */

const char *duet_bin(void) {
    const char *b = getenv("DUET_BIN");
    return b && access(b, X_OK) == 0 ? b : NULL;
}

int read_text(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = 0;
    if (f) fclose(f);
    return (int)n;
}

/* Start `duet serve ARGS --port 0` (ARGS printf-style), wait for its "listening" line; 0 on
 * success. */
int spawn_serve(proc *p, const char *fmt, ...) {
    static int seq;
    char args[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    memset(p, 0, sizeof *p);
    snprintf(p->log, sizeof p->log, "%s/serve-%d.log", test_tmpdir(), seq++);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec %s serve %s --port 0 -t 1 2>'%s' </dev/null", duet_bin(), args, p->log);
    fflush(NULL);
    p->pid = fork();
    if (p->pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    char buf[4096];
    for (int i = 0; i < 600; i++) { /* up to 30 s (ASan builds start slowly) */
        read_text(p->log, buf, sizeof buf);
        const char *l = strstr(buf, "listening on http://127.0.0.1:");
        if (l) {
            p->port = atoi(l + strlen("listening on http://127.0.0.1:"));
            return 0;
        }
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) { p->pid = 0; return -1; }
        usleep(50000);
    }
    return -1;
}

/* Still running? A process found dead is reaped (pid 0: stop_serve then reports -1). */
int alive(proc *p) {
    int st;
    if (p->pid > 0 && waitpid(p->pid, &st, WNOHANG) == p->pid) p->pid = 0;
    return p->pid > 0;
}

/* SIGTERM and wait; the exit status (0 = clean, which under ASan also means no leak). */
int stop_serve(proc *p) {
    if (p->pid <= 0) return -1;
    kill(p->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 400; i++) {
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) { p->pid = 0; return WIFEXITED(st) ? WEXITSTATUS(st) : 128; }
        usleep(25000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &st, 0);
    p->pid = 0;
    return 137;
}

/* ---- HTTP client ------------------------------------------------------------------------- */

static size_t collect(char *d, size_t sz, size_t nm, void *ud) {
    duet_buf *b = ud;
    return duet_buf_add(b, d, sz * nm) ? 0 : sz * nm;
}

resp http(int port, const char *path, const char *body, const req_opts *o) {
    static const req_opts none = {0};
    if (!o) o = &none;
    resp r = {0};
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    char ctype[200];
    snprintf(ctype, sizeof ctype, "Content-Type: %s", o->content_type ? o->content_type : "application/json");
    struct curl_slist *h = NULL;
    if (!o->content_type || o->content_type[0]) h = curl_slist_append(h, ctype);
    for (int i = 0; o->headers && o->headers[i]; i++) h = curl_slist_append(h, o->headers[i]);
    char auth[300];
    if (o->auth) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->auth);
        h = curl_slist_append(h, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, o->timeout_ms ? o->timeout_ms : 30000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, o->on_data ? o->on_data : collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, o->on_data ? o->ud : &r.buf);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.head);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)(o->len ? o->len : strlen(body)));
    }
    if (o->method) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, o->method);
    r.curl_rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (r.head.n) duet_buf_add(&r.head, "", 1); /* NUL-terminated for strstr */
    r.body = r.buf.p;
    r.n = r.buf.n;
    if (r.body) r.js = json_loadb(r.body, r.n, JSON_ALLOW_NUL, NULL); /* \u0000 is valid JSON */
    return r;
}

void resp_free(resp *r) { free(r->body); free(r->head.p); json_decref(r->js); memset(r, 0, sizeof *r); }

int resp_header(const resp *r, const char *name, char *out, size_t cap) {
    size_t n = strlen(name);
    for (const char *l = r->head.p; l && *l;) {
        size_t len = strcspn(l, "\r\n");
        if (len > n && l[n] == ':' && !strncasecmp(l, name, n)) {
            const char *v = l + n + 1 + strspn(l + n + 1, " ");
            snprintf(out, cap, "%.*s", (int)(len - (size_t)(v - l)), v);
            return 1;
        }
        l += len;
        l += strspn(l, "\r\n");
    }
    return 0;
}

long peak_rss_kb(pid_t pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    if (read_text(path, buf, sizeof buf) <= 0) return -1;
    const char *l = strstr(buf, "VmHWM:");
    return l ? atol(l + 6) : -1;
}

/* A 4xx answer with an OpenAI-style JSON error whose message contains want. */
int is_error(const resp *r, long status, const char *want) {
    const char *m = json_string_value(json_object_get(json_object_get(r->js, "error"), "message"));
    if (r->status != status || !m || (want && !strstr(m, want))) {
        fprintf(stderr, "    got HTTP %ld: %.300s\n", r->status, r->body ? r->body : "(no body)");
        return 0;
    }
    return 1;
}

int health_ok(int port) {
    resp r = http(port, "/health", NULL, NULL);
    int ok = r.status == 200 && r.js && !strcmp(json_string_value(json_object_get(r.js, "status")), "ok");
    resp_free(&r);
    return ok;
}


/* ---- the shared servers -------------------------------------------------------------------- */
const char *g_base, *g_exp, *g_head;
proc g_expert, g_local, g_remote, g_keyed;

static void stop_all(void) {
    proc *ps[] = {&g_expert, &g_local, &g_remote, &g_keyed};
    for (int i = 0; i < 4; i++) if (ps[i]->pid > 0) stop_serve(ps[i]);
}

/* Models and a head (scale 2: p_defer spread over (0, 1), so a threshold of 0.5 mixes). */
int fixtures(void) {
    if (g_head) return 0;
    g_base = fixture_random(0, 11, 0);
    g_exp = fixture_random(0, 12, 0);
    if (!g_base || !g_exp) return -1;
    duet_model *b = fixture_load(g_base);
    if (!b) return -1;
    duet_head *h = fixture_random_head(b, 5, 2.0f);
    static char path[600];
    snprintf(path, sizeof path, "%s/server-head.gguf", test_tmpdir());
    int rc = h ? duet_head_save(h, path, NULL) : -1;
    duet_head_free(h);
    duet_model_free(b);
    if (!rc) g_head = path;
    atexit(stop_all);
    return rc;
}

/* The plain server (local expert, collm, 2 slots) most bad-input tests talk to. */
int local_port(void) {
    if (g_local.pid > 0 || fixtures()) return g_local.pid > 0 ? g_local.port : 0;
    return spawn_serve(&g_local, "-m '%s' --expert '%s' --head '%s' -np 2 --max-body 65536 --timeout 2",
                       g_base, g_exp, g_head) ? 0 : g_local.port;
}

int expert_port(void) {
    if (g_expert.pid > 0 || fixtures()) return g_expert.pid > 0 ? g_expert.port : 0;
    return spawn_serve(&g_expert, "-m '%s' -np 2 --quiet", g_exp) ? 0 : g_expert.port;
}

int remote_port(void) {
    if (g_remote.pid > 0) return g_remote.port;
    int ep = expert_port();
    if (!ep) return 0;
    return spawn_serve(&g_remote, "-m '%s' --expert-url http://127.0.0.1:%d --head '%s' -np 2 --quiet",
                       g_base, ep, g_head) ? 0 : g_remote.port;
}

int connect_port(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* ---- llama.cpp's llama-server (LLAMA_SERVER names the binary) ------------------------------ */
const char *llama_bin(void) {
    const char *b = getenv("LLAMA_SERVER");
    return b && *b && access(b, X_OK) == 0 ? b : NULL;
}

/* A loopback port nobody listens on now (llama-server has no --port 0). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) &&
               !getsockname(fd, (struct sockaddr *)&a, &len) ? ntohs(a.sin_port) : 0;
    if (fd >= 0) close(fd);
    return port;
}

int spawn_llama(proc *p, const char *model) {
    static int seq;
    memset(p, 0, sizeof *p);
    if (!llama_bin() || !(p->port = free_port())) return -1;
    snprintf(p->log, sizeof p->log, "%s/llama-server-%d.log", test_tmpdir(), seq++);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "exec '%s' -m '%s' --host 127.0.0.1 --port %d -t 1 -c 256 -ctk f32 "
             "-ctv f32 >'%s' 2>&1 </dev/null", llama_bin(), model, p->port, p->log);
    fflush(NULL);
    p->pid = fork();
    if (p->pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    static char buf[1 << 16];
    for (int i = 0; i < 600; i++) {
        read_text(p->log, buf, sizeof buf);
        if (strstr(buf, "server is listening")) return 0;
        int st;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) { p->pid = 0; return -1; }
        usleep(50000);
    }
    stop_serve(p);
    return -1;
}
