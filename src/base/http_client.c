/* http_client.c: JSON over HTTP with retries (http_client.h). */
#include "base/http_client.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "base/common.h"

typedef struct buf {
    duet_buf b;
    size_t max;
    int over;
} buf;

static size_t on_data(char *d, size_t sz, size_t nm, void *ud) {
    buf *b = ud;
    size_t n = sz * nm;
    if (b->b.n + n + 1 > b->max) { b->over = 1; return 0; } /* aborts the transfer */
    return duet_buf_add(&b->b, d, n) ? 0 : n;
}

/* Latency of a kept-alive connection. llama-server writes a reply's headers and its body
 * separately without TCP_NODELAY, so the body waits (Nagle) until the headers are acknowledged,
 * and Linux delays that acknowledgement by ~40 ms once the connection looks interactive: each
 * expert call cost ~43 ms. TCP_QUICKACK acknowledges at once, but the kernel drops it again
 * whenever this side sends, so it is re-armed as each reply's headers arrive (arming it before
 * the request was measured not to help; a fresh connection per call costs ~1.5 ms instead of
 * ~1.3). The socket is the one curl last opened: a kept-alive transfer reuses it, and a new
 * connection reports its own through on_socket. */
static int on_socket(void *ud, curl_socket_t fd, curlsocktype purpose) {
    (void)purpose;
    *(curl_socket_t *)ud = fd;
    return CURL_SOCKOPT_OK;
}

static size_t on_header(char *d, size_t sz, size_t nm, void *ud) {
    (void)d;
    curl_socket_t fd = *(curl_socket_t *)ud;
    int one = 1;
    if (fd != CURL_SOCKET_BAD) setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    return sz * nm;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One HTTP exchange with retries: GET when body is NULL, else POST of JSON. On success
 * returns the parsed JSON of a 2xx answer in *out. */
int http_client_json(http_client *r, const char *path, const char *body, json_t **out, duet_error *err) {
    *out = NULL;
    char url[1024];
    snprintf(url, sizeof url, "%s%s", r->url, path);
    int wait = r->backoff_ms, rc = DUET_OK, attempts = 0;
    for (int attempt = 0; attempt <= r->retries; attempt++) {
        attempts++;
        if (attempt) { sleep_ms(wait); wait *= 2; }
        buf b = {.max = r->max_response};
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
        if (r->auth[0]) h = curl_slist_append(h, r->auth);
        curl_easy_reset(r->curl);
        curl_easy_setopt(r->curl, CURLOPT_URL, url);
        curl_easy_setopt(r->curl, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(r->curl, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(r->curl, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(r->curl, CURLOPT_TIMEOUT_MS, (long)r->timeout_ms);
        curl_easy_setopt(r->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)DUET_MIN(r->timeout_ms, 5000));
        curl_easy_setopt(r->curl, CURLOPT_NOSIGNAL, 1L);
        if (body) curl_easy_setopt(r->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(r->curl, CURLOPT_SOCKOPTFUNCTION, on_socket);
        curl_easy_setopt(r->curl, CURLOPT_SOCKOPTDATA, &r->sock);
        curl_easy_setopt(r->curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(r->curl, CURLOPT_HEADERDATA, &r->sock);
        CURLcode cc = curl_easy_perform(r->curl);
        long status = 0;
        curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
        r->last_status = cc == CURLE_OK ? status : 0;
        curl_slist_free_all(h);
        int retry = 0;
        if (b.over) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s %s: response larger than %zu bytes", r->who, url,
                           r->max_response);
        } else if (cc != CURLE_OK) {
            rc = duet_fail(err, DUET_ERR_IO, "%s %s: %s", r->who, url, curl_easy_strerror(cc));
            retry = 1;
        } else if (status < 200 || status >= 300) {
            char snip[160];
            duet_printable(snip, sizeof snip, b.b.p ? b.b.p : "", b.b.n);
            rc = duet_fail(err, DUET_ERR_IO, "%s %s: HTTP %ld: %s", r->who, url, status, snip);
            retry = status >= 500 || status == 429;
        } else {
            json_error_t je;
            *out = json_loadb(b.b.p ? b.b.p : "", b.b.n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
            rc = *out ? DUET_OK
                      : duet_fail(err, DUET_ERR_FORMAT, "%s %s: malformed JSON: %s", r->who, url, je.text);
        }
        free(b.b.p);
        if (rc) r->failed_attempts++;
        if (!rc || !retry) break;
    }
    if (rc && attempts > 1 && err) /* only requests really sent again count */
        snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
                 " (after %d attempts)", attempts);
    return rc;
}


static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

int http_client_init(http_client *h, const char *who, const char *url, const char *api_key, int retries,
                     int backoff_ms, int timeout_ms, size_t max_response, duet_error *err) {
    memset(h, 0, sizeof *h);
    if (!url || (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)))
        return duet_fail(err, DUET_ERR_ARG, "%s URL '%.200s' does not start with http:// or https://", who,
                         url ? url : "");
    if (strlen(url) >= 500) return duet_fail(err, DUET_ERR_ARG, "%s URL is too long", who);
    pthread_once(&g_curl_once, curl_init_once);
    if (!(h->curl = curl_easy_init())) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    snprintf(h->who, sizeof h->who, "%s", who);
    snprintf(h->url, sizeof h->url, "%s", url);
    for (size_t n = strlen(h->url); n && h->url[n - 1] == '/'; n--) h->url[n - 1] = 0;
    if (api_key) snprintf(h->auth, sizeof h->auth, "Authorization: Bearer %.500s", api_key);
    h->sock = CURL_SOCKET_BAD;
    h->retries = retries < 0 ? 0 : retries ? retries : 2;
    h->backoff_ms = backoff_ms > 0 ? backoff_ms : 100;
    h->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    h->max_response = max_response ? max_response : (size_t)8 << 20;
    return DUET_OK;
}

void http_client_free(http_client *h) {
    if (h && h->curl) curl_easy_cleanup(h->curl);
    if (h) h->curl = NULL;
}
