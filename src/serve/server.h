/*
 * server.h: what server.c (the daemon and its routing) gives the endpoint handlers: the
 * server's read-only configuration record and the functions that answer a request. The
 * per-connection state stays opaque. Not public.
 */
#ifndef DUET_SERVE_SERVER_H
#define DUET_SERVE_SERVER_H

#include <jansson.h>
#include <microhttpd.h>

#include "base/common.h"
#include "serve/slots.h"

/* Set by duet_server_start before the daemon runs, read-only afterwards: handlers of many
 * connections read it at once without a lock (the slots do their own locking). */
typedef struct srv_config {
    duet_server_params p;      /* as started, with the defaults filled in */
    int n_ctx, n_vocab;
    const char *chat_override; /* passed to duet_model_chat_render */
    const char *chat_eot;      /* the format's end-of-turn text: a stop string of chat answers */
    char chat_err[512];        /* why chat is unavailable (template not recognised), or "" */
    char model_name[160];
    srv_slots *slots;
} srv_config;

/* Per-connection state (the request body, the status answered, for the log and metrics). */
typedef struct conn_ctx conn_ctx;

/* Queue a JSON response (takes the reference of js) / an OpenAI-style error. */
enum MHD_Result srv_send_json(struct MHD_Connection *c, conn_ctx *cx, unsigned status, json_t *js);
enum MHD_Result srv_send_error(struct MHD_Connection *c, conn_ctx *cx, unsigned status,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Queue a 200 server-sent-event stream that MHD pulls from reader; done(cls) runs when it
 * ends (also when it cannot be queued). */
enum MHD_Result srv_send_stream(struct MHD_Connection *c, conn_ctx *cx,
                                MHD_ContentReaderCallback reader, void *cls,
                                MHD_ContentReaderFreeCallback done);

#endif
