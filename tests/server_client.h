/* server_client.h: what the server tests share: duet serve run as a child process on an
 * ephemeral loopback port, a small HTTP client, and the shared servers (base, expert and head
 * fixtures; a local-expert server, an expert server, a remote-expert front server). */
#ifndef DUET_TEST_SERVER_CLIENT_H
#define DUET_TEST_SERVER_CLIENT_H

#include <jansson.h>
#include <sys/types.h>

#include "base/common.h"
#include "test.h"

/* ---- processes --------------------------------------------------------------------------- */
typedef struct proc { pid_t pid; int port; char log[600]; } proc;

/* DUET_BIN when it names an executable, else NULL. */
const char *duet_bin(void);
#define NEED_BIN() do { if (!duet_bin()) SKIP("DUET_BIN not set (run through make test)"); } while (0)
/* A whole file into buf[cap] (NUL-terminated); its length. */
int read_text(const char *path, char *buf, size_t cap);
/* Start `duet serve ARGS --port 0` (ARGS printf-style), wait for its "listening" line; 0 on
 * success. */
int spawn_serve(proc *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Still running? A process found dead is reaped (pid 0: stop_serve then reports -1). */
int alive(proc *p);
/* SIGTERM and wait; the exit status (0 = clean, which under ASan also means no leak). */
int stop_serve(proc *p);

/* ---- HTTP client ------------------------------------------------------------------------- */
typedef struct resp {
    long status; char *body; size_t n; json_t *js; int curl_rc; duet_buf buf;
    duet_buf head;            /* the response's header lines, NUL-terminated (or empty) */
} resp;
typedef struct req_opts {
    const char *method, *auth;
    const char *content_type; /* instead of application/json ("" : no Content-Type) */
    const char *const *headers; /* more request header lines, NULL-terminated list */
    size_t len;               /* body length when it holds NUL bytes (0: strlen) */
    long timeout_ms;
    size_t (*on_data)(char *, size_t, size_t, void *); /* streaming hook (NULL: collect) */
    void *ud;
} req_opts;
/* GET path (body NULL) or POST body as JSON to 127.0.0.1:port. */
resp http(int port, const char *path, const char *body, const req_opts *o);
void resp_free(resp *r);
/* A 4xx answer with an OpenAI-style JSON error whose message contains want. */
int is_error(const resp *r, long status, const char *want);
int health_ok(int port);
/* The value of response header name (case-insensitive) into out[cap]; 1 if present. */
int resp_header(const resp *r, const char *name, char *out, size_t cap);
/* The server process's peak resident memory (VmHWM) in KiB, or -1. */
long peak_rss_kb(pid_t pid);
/* A raw TCP connection to the loopback port (5 s receive timeout), or -1. */
int connect_port(int port);

#define CHECK_ERR(port, path, body, status, want) do {                                     \
        resp _r = http(port, path, body, NULL);                                             \
        CHECKF(is_error(&_r, status, want), "%s %.80s: expected %d with \"%s\"", path, body, \
               status, want ? want : "");                                                   \
        resp_free(&_r);                                                                      \
    } while (0)

/* ---- the shared servers -------------------------------------------------------------------- */
extern const char *g_base, *g_exp, *g_head;
extern proc g_expert, g_local, g_remote, g_keyed;
/* Models and a head (scale 2: p_defer spread over (0, 1), so a threshold of 0.5 mixes); 0 ok. */
int fixtures(void);
/* The plain server (local expert, collm, 2 slots) most bad-input tests talk to; 0 on failure. */
int local_port(void);
/* A server of the expert model alone, and a front server using it as a remote expert. */
int expert_port(void);
int remote_port(void);

#define NEED_FIXTURES() do { NEED_BIN(); REQUIRE(!fixtures()); } while (0)
#define NEED_SERVER(port) \
    do { NEED_BIN(); REQUIRE((port) > 0); } while (0)
#define STAYS_UP(p, port) do { CHECK(alive(p)); CHECK(health_ok(port)); } while (0)

/* ---- llama.cpp's llama-server (LLAMA_SERVER names the binary) ------------------------------ */
/* LLAMA_SERVER when it names an executable, else NULL. */
const char *llama_bin(void);
#define NEED_LLAMA() do { if (!llama_bin()) SKIP("LLAMA_SERVER not set (the path of llama.cpp's llama-server)"); } while (0)
/* Start `llama-server -m MODEL` on a free loopback port with one thread, a 256-token context
 * and an F32 KV cache (as duet's), wait until it listens; 0 on success. */
int spawn_llama(proc *p, const char *model);

#endif
