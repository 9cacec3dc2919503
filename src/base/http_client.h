/*
 * http_client.h: one JSON-over-HTTP exchange with retries (libcurl), shared by the remote
 * expert and the evaluation judge (internal). Replies are size-capped (a larger one aborts
 * the transfer), every attempt has a time limit, and an error message starts with the
 * client's role and the URL, so that it says which server misbehaved.
 */
#ifndef DUET_BASE_HTTP_CLIENT_H
#define DUET_BASE_HTTP_CLIENT_H

#include <curl/curl.h>
#include <jansson.h>
#include <stddef.h>

#include "duet.h"

typedef struct http_client {
    CURL *curl;
    char url[512];           /* base URL without a trailing '/' */
    char auth[600];          /* "Authorization: Bearer KEY" or "" */
    char who[32];            /* starts error messages ("expert", "judge") */
    int retries, backoff_ms, timeout_ms;
    size_t max_response;     /* bytes; larger replies are refused, not buffered */
    long last_status;        /* HTTP status of the last answer; 0 when none came */
    long failed_attempts;
    curl_socket_t sock;      /* the connection's socket (see http_client.c) */
} http_client;

/* Checks that url starts with http:// or https:// and fits; sets every field (api_key may
 * be NULL; retries < 0: none, 0: 2; backoff_ms and timeout_ms 0: 100 ms and 30 s;
 * max_response 0: 8 MiB). */
int http_client_init(http_client *h, const char *who, const char *url, const char *api_key, int retries,
                     int backoff_ms, int timeout_ms, size_t max_response, duet_error *err);
void http_client_free(http_client *h);
/* GET url+path (body NULL) or POST of JSON body; *out gets the parsed JSON of a 2xx answer.
 * Retries connection failures, 5xx and 429 with doubling waits. */
int http_client_json(http_client *h, const char *path, const char *body, json_t **out, duet_error *err);

#endif
