/*
 * server.h: internals shared by the HTTP server's files: server.c (daemon, routing, limits,
 * slots, metrics, small endpoints) and server_gen.c (the generation endpoints). Not public.
 */
#ifndef DUET_SERVER_H
#define DUET_SERVER_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "base/common.h"

/* One decoding slot: a collab decoder (re-created when a request's settings differ), a plain
 * session for /completion, and its own remote-expert connection. */
typedef struct slot {
    int busy;
    long last_used;            /* use_clock when last acquired */
    duet_collab *co;
    duet_collab_params cp;     /* the settings co was made with */
    duet_session *sess;        /* /completion (next-token probabilities) */
    duet_expert_remote *remote;
    duet_expert_backend be;    /* wraps remote: releases the compute lock around HTTP */
    double down_until;         /* after a failed expert call: fail fast until then */
    char down_msg[512];
    struct duet_server *srv;
} slot;

#define N_LAT_BUCKETS 12

struct duet_server {
    duet_server_params p;
    struct MHD_Daemon *d;
    int port, n_ctx, n_vocab;
    const char *chat_override; /* passed to duet_model_chat_render */
    const char *chat_eot;      /* the format's end-of-turn text: a stop string of chat answers */
    char chat_err[512];        /* why chat is unavailable (template not recognised), or "" */
    char model_name[160];
    slot *slots;
    pthread_mutex_t mu;        /* slots, queue and metrics */
    pthread_cond_t cv;
    pthread_mutex_t compute;   /* one forward pass at a time on the shared pool */
    int n_waiting;
    long use_clock;
    atomic_long next_id;
    /* metrics (under mu) */
    long m_requests, m_errors, m_prompt_tokens, m_gen_tokens, m_deferred, m_expert_calls;
    long m_expert_failures, m_lat_count, m_lat_bucket[N_LAT_BUCKETS];
    double m_lat_sum;
};

/* Per-connection state, kept from the first callback to the completion notice. */
typedef struct conn_ctx {
    duet_buf body;
    int too_big;
    double t0;
    int status;                /* of the response queued, for the log and metrics */
    char endpoint[32];
} conn_ctx;

extern const double k_lat_bounds[N_LAT_BUCKETS];

/* Queue a JSON response (takes the reference of js) / an OpenAI-style error. */
enum MHD_Result srv_send_json(struct MHD_Connection *c, conn_ctx *cx, unsigned status, json_t *js);
enum MHD_Result srv_send_error(struct MHD_Connection *c, conn_ctx *cx, unsigned status,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Wait for a free slot (NULL after queue_timeout_s), preferring the one whose decoder
 * (collab = 1) or plain session (0) already holds the longest prefix of ids / give it back. */
slot *srv_slot_acquire(duet_server *s, const int32_t *ids, int n, int collab);
void srv_slot_release(duet_server *s, slot *sl);
/* Tokens at the start of the slot's timeline (decoder or session) that equal ids[0..n): what
 * its KV cache can reuse; *have gets the timeline's length. */
int srv_slot_prefix(const slot *sl, const int32_t *ids, int n, int collab, int *have);
/* Add one finished generation to the metrics. */
void srv_count_generation(duet_server *s, int n_prompt, const duet_collab_stats *st);

/* Generation endpoints (server_gen.c); body is the parsed request. */
enum MHD_Result srv_completions(duet_server *s, struct MHD_Connection *c, conn_ctx *cx,
                                json_t *body, int chat);
enum MHD_Result srv_next_token(duet_server *s, struct MHD_Connection *c, conn_ctx *cx,
                               json_t *body);
/* Tokenize a "prompt"-style value (string, or array of ids checked against the vocabulary);
 * returns the count or -1 after filling msg. *ids is malloc'd. */
int srv_prompt_ids(duet_server *s, json_t *prompt, int add_bos, int parse_special, int32_t **ids,
                   char *msg, size_t cap);
/* Append text to a buffer as valid UTF-8 (invalid bytes become U+FFFD). */
int sb_add(duet_buf *b, const char *s, size_t n);
/* Append the piece of token id (after prev) with sb_add, however long it is. 0 or
 * DUET_ERR_NOMEM. */
int srv_add_piece(const duet_model *m, int32_t prev, int32_t id, duet_buf *out);

#endif
