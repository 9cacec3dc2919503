/*
 * bench_serve.c: a load generator for duet serve and llama.cpp's llama-server, so that both
 * can be measured with the same requests.
 *
 * N client threads each send M generation requests one after another (greedy, temperature 0)
 * over one keep-alive connection each: POST /v1/completions {prompt, max_tokens, stream} with
 * --api openai, POST /completion {prompt, n_predict, stream, cache_prompt} with --api llama.
 * The prompt is --prompt TEXT (each server tokenizes it with the model's vocabulary) or
 * --prompt-tokens K: K token ids made up from a fixed seed and sent as an id array, which
 * both servers take as they are (no BOS added), so both see the same tokens.
 *
 * Reports: generated tokens (as the servers count them: usage.completion_tokens or
 * tokens_predicted) per second of the whole run, requests, errors, latency p50/p99, and with
 * --stream the time to the first token p50/p99 and the largest gap between two token events
 * of any stream (the time of each event is recorded as it arrives).
 *
 * Fairness mode (--late-prompt-tokens K --late-after-s S): first a K-token prompt (another
 * seed) is sent alone to /completion, and its timings.prompt_ms divided by its 256-token
 * chunks is the server's time for one prefill chunk; then, S seconds after the N streams
 * start, one request with a new K-token prompt arrives; the report adds the largest gap of
 * the running streams before it arrived and while it was being answered.
 *
 * When the server is duet, its /metrics is read before and after the run: batched decoding
 * steps and answer steps in them give the batch size the run reached, their seconds the mean
 * step time and the share of the run spent stepping (step_busy; the rest went to answers
 * asking for their next token, prompts and HTTP).
 *
 * Only libcurl, jansson and pthreads: it does not link the library.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PREFILL_CHUNK 256 /* duet serve's prompt chunk between two batched steps */

typedef struct opts {
    const char *url, *api, *prompt, *fmt, *label, *extra, *events;
    int clients, reqs, n_predict, prompt_tokens, stream, late_tokens, late_predict, warmup;
    int wait_s, header; /* header: CSV column names first (2: only them) */
    double late_after;
} opts;

/* One request as the client saw it. Times are seconds since the run started. */
typedef struct rec {
    double t0, t_first, t_end, max_gap, prompt_ms;
    int stream, status, ok, n_tokens, n_prompt, deferred, n_events, last_pred;
    double *ev;         /* times of the token events (stream) */
    int cap_ev;
    char *body;         /* the response (not stream) */
    size_t n_body;
    char *sse;          /* stream bytes not yet split into events */
    size_t n_sse;
    char err[200];
} rec;

static double g_t_start;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec - g_t_start;
}

static void die(const char *msg) {
    fprintf(stderr, "bench_serve: %s\n", msg);
    exit(1);
}

/* ---- request bodies ---------------------------------------------------------------------- */
/* K made-up token ids: BOS (1) then ids in [300, 30000) from an LCG (past the special and byte
 * tokens of a SentencePiece vocabulary, inside any 32000-token one). */
static json_t *synthetic_ids(int k, unsigned seed) {
    json_t *a = json_array();
    unsigned long long s = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (int i = 0; i < k; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        json_array_append_new(a, json_integer(i == 0 ? 1 : 300 + (long long)((s >> 33) % 29700)));
    }
    return a;
}

/* The body of a generation request: the same bytes for every server. */
static char *make_body(const opts *o, json_t *prompt, int n_predict, int stream) {
    int llama = !strcmp(o->api, "llama");
    json_t *b = json_pack("{s:O, s:i, s:f, s:b}", "prompt", prompt, llama ? "n_predict" : "max_tokens",
                          n_predict, "temperature", 0.0, "stream", stream);
    if (llama) json_object_set_new(b, "cache_prompt", json_true());
    if (o->extra) {
        json_error_t je;
        json_t *x = json_loads(o->extra, 0, &je);
        if (!json_is_object(x)) die("--extra must be a JSON object");
        json_object_update(b, x);
        json_decref(x);
    }
    char *s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return s;
}

/* ---- one HTTP exchange ------------------------------------------------------------------- */
static void add_event_time(rec *r, double t) {
    if (r->n_events == r->cap_ev) {
        r->cap_ev = r->cap_ev ? 2 * r->cap_ev : 128;
        r->ev = realloc(r->ev, (size_t)r->cap_ev * sizeof *r->ev);
        if (!r->ev) die("out of memory");
    }
    r->ev[r->n_events++] = t;
}

/* What a finished answer says: generated tokens, prompt tokens, deferred tokens (duet). */
static void read_final(rec *r, json_t *js) {
    json_t *u = json_object_get(js, "usage");
    json_t *n = u ? json_object_get(u, "completion_tokens") : json_object_get(js, "tokens_predicted");
    json_t *p = u ? json_object_get(u, "prompt_tokens") : json_object_get(js, "tokens_evaluated");
    if (json_is_integer(n)) r->n_tokens = (int)json_integer_value(n);
    if (json_is_integer(p)) r->n_prompt = (int)json_integer_value(p);
    json_t *d = json_object_get(json_object_get(js, "duet"), "deferred");
    if (json_is_integer(d)) r->deferred = (int)json_integer_value(d);
    json_t *pm = json_object_get(json_object_get(js, "timings"), "prompt_ms");
    if (json_is_number(pm)) r->prompt_ms = json_number_value(pm);
}

/* One server-sent event. A token event carries text or tokens and is not the end; the end
 * (stop: true, or a finish_reason) carries the counts. */
static void on_event(rec *r, const char *data, double t) {
    if (!strcmp(data, "[DONE]")) return;
    json_error_t je;
    json_t *js = json_loads(data, 0, &je);
    if (!js) return;
    if (json_object_get(js, "error")) {
        snprintf(r->err, sizeof r->err, "error event: %.150s", data);
        json_decref(js);
        return;
    }
    json_t *ch = json_array_get(json_object_get(js, "choices"), 0);
    json_t *fin = ch ? json_object_get(ch, "finish_reason") : NULL;
    int end = json_is_true(json_object_get(js, "stop")) || (fin && !json_is_null(fin));
    const char *text = json_string_value(ch ? json_object_get(ch, "text") : json_object_get(js, "content"));
    json_t *pred = json_object_get(js, "tokens_predicted");
    int more = pred && json_is_integer(pred) ? (int)json_integer_value(pred) > r->last_pred
                                             : text && text[0];
    if (json_is_integer(pred)) r->last_pred = (int)json_integer_value(pred);
    if (more) add_event_time(r, t); /* an end event with text carries the last token too */
    if (end || json_object_get(js, "usage")) read_final(r, js);
    json_decref(js);
}

static size_t on_bytes(char *p, size_t sz, size_t nm, void *ud) {
    rec *r = ud;
    size_t n = sz * nm;
    double t = now();
    char **buf = r->stream ? &r->sse : &r->body;
    size_t *len = r->stream ? &r->n_sse : &r->n_body;
    *buf = realloc(*buf, *len + n + 1);
    if (!*buf) return 0;
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = 0;
    if (!r->stream) return n;
    /* split complete events ("data: ...\n\n") off the front */
    char *s = r->sse, *e;
    while ((e = strstr(s, "\n\n"))) {
        *e = 0;
        for (char *line = s; line && *line;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            if (!strncmp(line, "data: ", 6)) on_event(r, line + 6, t);
            line = nl ? nl + 1 : NULL;
        }
        s = e + 2;
    }
    r->n_sse -= (size_t)(s - r->sse);
    memmove(r->sse, s, r->n_sse + 1);
    return n;
}

/* POST body to path and fill r; stream selects the event parser. */
static void exchange(CURL *c, const char *url, const char *path, const char *body, int stream, rec *r) {
    char full[1024];
    snprintf(full, sizeof full, "%s%s", url, path);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip for long prompts */
    r->stream = stream;
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_bytes);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    r->t0 = now();
    CURLcode cc = curl_easy_perform(c);
    r->t_end = now();
    curl_slist_free_all(h);
    long st = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    r->status = (int)st;
    if (cc != CURLE_OK) snprintf(r->err, sizeof r->err, "%s", curl_easy_strerror(cc));
    else if (st != 200) snprintf(r->err, sizeof r->err, "HTTP %ld: %.150s", st, r->body ? r->body : r->sse ? r->sse : "");
    if (!stream && !r->err[0]) {
        json_error_t je;
        json_t *js = r->body ? json_loads(r->body, 0, &je) : NULL;
        if (js) read_final(r, js);
        else snprintf(r->err, sizeof r->err, "the answer is not JSON");
        json_decref(js);
    }
    if (stream && r->n_events) {
        r->t_first = r->ev[0];
        for (int i = 1; i < r->n_events; i++)
            if (r->ev[i] - r->ev[i - 1] > r->max_gap) r->max_gap = r->ev[i] - r->ev[i - 1];
    }
    r->ok = !r->err[0] && r->n_tokens > 0;
    if (!r->ok && !r->err[0]) snprintf(r->err, sizeof r->err, "no tokens counted in the answer");
    free(r->body), r->body = NULL;
    free(r->sse), r->sse = NULL;
}

/* ---- the clients ------------------------------------------------------------------------- */
typedef struct client {
    const opts *o;
    const char *path, *body;
    rec *recs;          /* [reqs] */
    pthread_barrier_t *go;
} client;

static void *client_main(void *ud) {
    client *cl = ud;
    CURL *c = curl_easy_init();
    if (!c) die("curl_easy_init failed");
    pthread_barrier_wait(cl->go);
    for (int i = 0; i < cl->o->reqs; i++) exchange(c, cl->o->url, cl->path, cl->body, cl->o->stream, &cl->recs[i]);
    curl_easy_cleanup(c);
    return NULL;
}

typedef struct late {
    const opts *o;
    const char *path, *body;
    rec r;
    pthread_barrier_t *go;
} late;

static void *late_main(void *ud) {
    late *l = ud;
    CURL *c = curl_easy_init();
    if (!c) die("curl_easy_init failed");
    pthread_barrier_wait(l->go);
    usleep((useconds_t)(l->o->late_after * 1e6));
    exchange(c, l->o->url, l->path, l->body, 0, &l->r);
    curl_easy_cleanup(c);
    return NULL;
}

/* GET url+path into a malloc'd string (NULL when it fails or is not 200). */
static char *http_get(const char *url, const char *path) {
    CURL *c = curl_easy_init();
    char full[1024];
    snprintf(full, sizeof full, "%s%s", url, path);
    rec r = {0};
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_bytes);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    long st = 0;
    int ok = curl_easy_perform(c) == CURLE_OK && !curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st) && st == 200;
    curl_easy_cleanup(c);
    if (!ok) free(r.body), r.body = NULL;
    return r.body;
}

/* duet's counter NAME from /metrics, or -1 (another server, or none). */
static double duet_metric(const char *text, const char *name) {
    char key[96];
    snprintf(key, sizeof key, "\nduet_%s ", name);
    const char *m = text ? strstr(text, key) : NULL;
    return m ? atof(m + strlen(key)) : -1;
}

static void wait_ready(const opts *o) {
    for (int i = 0; i < 10 * o->wait_s; i++) {
        char *s = http_get(o->url, "/health");
        free(s);
        if (s) return;
        usleep(100000);
    }
    die("the server did not answer /health with 200 in time");
}

/* ---- the report -------------------------------------------------------------------------- */
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of v[0..n) (sorted in place); NAN when empty. */
static double pct(double *v, int n, double p) {
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int k = (int)ceil(p / 100.0 * n);
    return v[k < 1 ? 0 : k - 1];
}

/* The largest gap between two token events of any stream with its later event in [a, b). */
static double max_gap_in(rec *rs, int n, double a, double b) {
    double m = 0;
    for (int i = 0; i < n; i++)
        for (int k = 1; k < rs[i].n_events; k++)
            if (rs[i].ev[k] >= a && rs[i].ev[k] < b && rs[i].ev[k] - rs[i].ev[k - 1] > m)
                m = rs[i].ev[k] - rs[i].ev[k - 1];
    return m;
}

typedef struct field { const char *name; double v; int prec; } field;

static void print_report(const opts *o, const field *f, int nf) {
    int csv = !strcmp(o->fmt, "csv"), js = !strcmp(o->fmt, "json");
    if (csv) {
        if (o->header) {
            printf("label,api,stream");
            for (int i = 0; i < nf; i++) printf(",%s", f[i].name);
            printf("\n");
            if (o->header == 2) return;
        }
        printf("%s,%s,%d", o->label, o->api, o->stream);
        for (int i = 0; i < nf; i++)
            isnan(f[i].v) ? printf(",") : printf(",%.*f", f[i].prec, f[i].v);
        printf("\n");
    } else if (js) {
        json_t *j = json_pack("{s:s, s:s, s:b}", "label", o->label, "api", o->api, "stream", o->stream);
        for (int i = 0; i < nf; i++)
            json_object_set_new(j, f[i].name, isnan(f[i].v) ? json_null()
                                : f[i].prec ? json_real(round(f[i].v * pow(10, f[i].prec)) / pow(10, f[i].prec))
                                : json_integer((json_int_t)f[i].v));
        char *s = json_dumps(j, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
        json_decref(j);
    } else {
        printf("%s (%s api%s)\n", o->label, o->api, o->stream ? ", stream" : "");
        for (int i = 0; i < nf; i++)
            isnan(f[i].v) ? printf("  %-22s -\n", f[i].name) : printf("  %-22s %.*f\n", f[i].name, f[i].prec, f[i].v);
    }
}

/* --events FILE: one row per time: request (the late one is "late"), what (start, token,
 * end), seconds since bench_serve started. */
static void write_events(const char *path, const rec *rs, int n, const rec *late_r) {
    FILE *f = fopen(path, "w");
    if (!f) die("cannot write the --events file");
    fprintf(f, "request,what,t\n");
    for (int i = 0; i <= n; i++) {
        const rec *r = i < n ? &rs[i] : late_r;
        if (!r) break;
        char id[16];
        snprintf(id, sizeof id, i < n ? "%d" : "late", i);
        fprintf(f, "%s,start,%.6f\n", id, r->t0);
        for (int k = 0; k < r->n_events; k++) fprintf(f, "%s,token,%.6f\n", id, r->ev[k]);
        fprintf(f, "%s,end,%.6f\n", id, r->t_end);
    }
    fclose(f);
}

/* ---- the command line -------------------------------------------------------------------- */
static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_serve --url http://HOST:PORT [--api openai|llama] [--clients N]\n"
            "                   [--requests-per-client M] [--n-predict K] [--prompt TEXT |\n"
            "                   --prompt-tokens K] [--stream] [-o text|csv|json] [--label L]\n"
            "                   [--no-header] [--warmup 0|1] [--wait-s S] [--extra JSON] [--events FILE]\n"
            "                   [--late-prompt-tokens K --late-after-s S [--late-n-predict K]]\n"
            "  --api openai: POST /v1/completions {prompt, max_tokens, temperature 0, stream}\n"
            "  --api llama:  POST /completion {prompt, n_predict, temperature 0, stream, cache_prompt}\n"
            "  --prompt-tokens K: K made-up token ids (BOS first), sent as an id array\n"
            "  --extra JSON: fields merged into every generation request (e.g. duet's threshold)\n"
            "  --warmup 1 (default): one short request per client before the timed run\n"
            "  --events FILE: every request's start, token event and end times (s) as CSV\n"
            "  --wait-s S: wait up to S seconds for /health to answer 200 first (default 120)\n"
            "  --late-prompt-tokens K: time a K-token prompt alone, then send another one\n"
            "    --late-after-s seconds into the run; report the streams' gaps around it\n");
}

static int parse_args(int argc, char **argv, opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        if (!strcmp(a, "--stream")) { o->stream = 1; continue; }
        if (!strcmp(a, "--no-header")) { o->header = 0; continue; }
        if (i + 1 >= argc) return fprintf(stderr, "bench_serve: %s needs a value\n", a), -1;
        const char *v = argv[++i];
        if (!strcmp(a, "--url")) o->url = v;
        else if (!strcmp(a, "--api")) o->api = v;
        else if (!strcmp(a, "--clients")) o->clients = atoi(v);
        else if (!strcmp(a, "--requests-per-client")) o->reqs = atoi(v);
        else if (!strcmp(a, "--n-predict")) o->n_predict = atoi(v);
        else if (!strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--prompt-tokens")) o->prompt_tokens = atoi(v);
        else if (!strcmp(a, "-o")) o->fmt = v;
        else if (!strcmp(a, "--label")) o->label = v;
        else if (!strcmp(a, "--warmup")) o->warmup = atoi(v);
        else if (!strcmp(a, "--wait-s")) o->wait_s = atoi(v);
        else if (!strcmp(a, "--extra")) o->extra = v;
        else if (!strcmp(a, "--events")) o->events = v;
        else if (!strcmp(a, "--late-prompt-tokens")) o->late_tokens = atoi(v);
        else if (!strcmp(a, "--late-after-s")) o->late_after = atof(v);
        else if (!strcmp(a, "--late-n-predict")) o->late_predict = atoi(v);
        else return fprintf(stderr, "bench_serve: unknown option %s\n", a), -1;
    }
    if (!o->url) return fprintf(stderr, "bench_serve: --url is required\n"), -1;
    if (strcmp(o->api, "openai") && strcmp(o->api, "llama"))
        return fprintf(stderr, "bench_serve: --api must be openai or llama\n"), -1;
    if (strcmp(o->fmt, "text") && strcmp(o->fmt, "csv") && strcmp(o->fmt, "json"))
        return fprintf(stderr, "bench_serve: -o must be text, csv or json\n"), -1;
    if (o->clients < 1 || o->reqs < 1 || o->n_predict < 1 || o->prompt_tokens < 0 || o->late_tokens < 0)
        return fprintf(stderr, "bench_serve: counts must be positive\n"), -1;
    return 0;
}

/* The fairness mode's calibration: a K-token prompt (its own seed) sent alone to
 * /completion; the server's prompt_ms over its 256-token chunks. */
static double prefill_chunk_ms(const opts *o, double *wall_ms) {
    opts lo = *o;
    lo.api = "llama";
    lo.extra = NULL;
    json_t *ids = synthetic_ids(o->late_tokens, 2);
    char *body = make_body(&lo, ids, 2, 0); /* 2: a generation, not next-token scoring */
    json_decref(ids);
    CURL *c = curl_easy_init();
    rec r = {0};
    exchange(c, o->url, "/completion", body, 0, &r);
    curl_easy_cleanup(c);
    free(body);
    if (!r.ok || r.prompt_ms <= 0) die("the calibration prompt failed or reported no timings.prompt_ms");
    *wall_ms = 1e3 * (r.t_end - r.t0);
    int chunks = (o->late_tokens + PREFILL_CHUNK - 1) / PREFILL_CHUNK;
    return r.prompt_ms / chunks;
}

/* Warm-up: one short request per client at once (pages the weights in, fills each slot). */
static void warm_up(const opts *o, const char *path, json_t *prompt) {
    char *wb = make_body(o, prompt, 4, 0);
    client *w = calloc((size_t)o->clients, sizeof *w);
    pthread_t *th = calloc((size_t)o->clients, sizeof *th);
    rec *rs = calloc((size_t)o->clients, sizeof *rs);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)o->clients);
    opts wo = *o;
    wo.reqs = 1, wo.stream = 0;
    for (int i = 0; i < o->clients; i++) {
        w[i] = (client){.o = &wo, .path = path, .body = wb, .go = &go, .recs = &rs[i]};
        pthread_create(&th[i], NULL, client_main, &w[i]);
    }
    for (int i = 0; i < o->clients; i++) {
        pthread_join(th[i], NULL);
        if (!rs[i].ok) fprintf(stderr, "bench_serve: warm-up request failed: %s\n", rs[i].err);
    }
    pthread_barrier_destroy(&go);
    free(w), free(th), free(rs), free(wb);
}

/* What a run measured, for the report. */
typedef struct summary {
    int n, ok, errors, n_ttft;
    double wall, tokens, deferred, prompt_n, gap, steps, rows, step_s, chunks, unpaced, chunk_ms, chunk_wall_ms;
    double late_s, late_ms, before, during;
    double *lat, *ttft;
} summary;

static void summarize(const opts *o, rec *rs, int n, const rec *late_r, const char *m0,
                      const char *m1, summary *S) {
    double t_a = 1e300, t_b = 0;
    S->n = n;
    S->lat = calloc((size_t)n, sizeof *S->lat);
    S->ttft = calloc((size_t)n, sizeof *S->ttft);
    for (int i = 0; i < n; i++) {
        rec *r = &rs[i];
        t_a = fmin(t_a, r->t0), t_b = fmax(t_b, r->t_end);
        if (!r->ok) {
            if (S->errors++ < 5) fprintf(stderr, "bench_serve: request %d failed: %s\n", i, r->err);
            continue;
        }
        S->tokens += r->n_tokens, S->deferred += r->deferred, S->prompt_n += r->n_prompt;
        S->lat[S->ok++] = 1e3 * (r->t_end - r->t0);
        if (o->stream && r->n_events) S->ttft[S->n_ttft++] = 1e3 * (r->t_first - r->t0);
        S->gap = fmax(S->gap, r->max_gap);
    }
    S->wall = t_b - t_a;
    int duet = m0 && m1 && duet_metric(m1, "batch_steps_total") >= 0;
    S->steps = duet ? duet_metric(m1, "batch_steps_total") - duet_metric(m0, "batch_steps_total") : NAN;
    S->rows = duet ? duet_metric(m1, "batch_tokens_total") - duet_metric(m0, "batch_tokens_total") : NAN;
    /* time in steps (the rest of the run the engine waited for the answers to ask) */
    S->step_s = duet && duet_metric(m1, "batch_step_seconds_total") >= 0
                    ? duet_metric(m1, "batch_step_seconds_total") - duet_metric(m0, "batch_step_seconds_total")
                    : NAN;
    /* prompt chunks during the run, and those that went with no step of the streams between */
    S->chunks = S->unpaced = NAN;
    if (duet && duet_metric(m1, "prefill_chunks_total") >= 0) {
        S->chunks = duet_metric(m1, "prefill_chunks_total") - duet_metric(m0, "prefill_chunks_total");
        S->unpaced = duet_metric(m1, "prefill_chunks_unpaced_total") -
                     duet_metric(m0, "prefill_chunks_unpaced_total");
    }
    S->late_s = S->late_ms = S->before = S->during = NAN;
    if (late_r) {
        if (!late_r->ok) {
            S->errors++;
            fprintf(stderr, "bench_serve: the late request failed: %s\n", late_r->err);
        }
        S->before = 1e3 * max_gap_in(rs, n, 0, late_r->t0);
        S->during = 1e3 * max_gap_in(rs, n, late_r->t0, late_r->t_end);
        S->late_s = late_r->t0 - t_a;
        S->late_ms = 1e3 * (late_r->t_end - late_r->t0);
    }
}

/* The report's fields in order (a zeroed summary gives the names for --csv-header). */
static void report(const opts *o, summary *S) {
    int ok = S->ok;
    field f[] = {
        {"clients", o->clients, 0}, {"requests", S->n, 0}, {"errors", S->errors, 0},
        {"n_predict", o->n_predict, 0}, {"prompt_tokens_mean", ok ? S->prompt_n / ok : NAN, 1},
        {"wall_s", S->wall, 3}, {"gen_tokens", S->tokens, 0},
        {"agg_tps", S->wall > 0 ? S->tokens / S->wall : NAN, 2},
        {"lat_p50_ms", pct(S->lat, ok, 50), 1}, {"lat_p99_ms", pct(S->lat, ok, 99), 1},
        {"ttft_p50_ms", o->stream ? pct(S->ttft, S->n_ttft, 50) : NAN, 1},
        {"ttft_p99_ms", o->stream ? pct(S->ttft, S->n_ttft, 99) : NAN, 1},
        {"max_gap_ms", o->stream && ok ? 1e3 * S->gap : NAN, 1},
        {"deferral", S->tokens > 0 ? S->deferred / S->tokens : NAN, 4},
        {"batch_steps", S->steps, 0}, {"batch_size_mean", S->steps > 0 ? S->rows / S->steps : NAN, 3},
        {"step_ms_mean", S->steps > 0 ? 1e3 * S->step_s / S->steps : NAN, 2},
        {"step_busy", S->wall > 0 ? S->step_s / S->wall : NAN, 3},
        {"prefill_chunks", S->chunks, 0}, {"chunks_unpaced", S->unpaced, 0},
        {"late_prompt_tokens", o->late_tokens ? o->late_tokens : NAN, 0},
        {"late_sent_s", S->late_s, 3}, {"late_answer_ms", S->late_ms, 1},
        {"chunk_ms", S->chunk_ms, 1}, {"chunk_alone_wall_ms", S->chunk_wall_ms, 1},
        {"gap_before_late_ms", S->before, 1}, {"gap_during_late_ms", S->during, 1},
    };
    print_report(o, f, (int)(sizeof f / sizeof *f));
}

int main(int argc, char **argv) {
    opts o = {.api = "openai", .clients = 4, .reqs = 1, .n_predict = 64, .fmt = "text",
              .label = "server", .warmup = 1, .wait_s = 120, .header = 1, .late_predict = 8};
    if (argc == 2 && !strcmp(argv[1], "--csv-header")) { /* for scripts that prefix columns */
        summary z = {0};
        o.fmt = "csv", o.header = 2;
        report(&o, &z);
        return 0;
    }
    if (parse_args(argc, argv, &o)) { usage(stderr); return 2; }
    g_t_start = now();
    curl_global_init(CURL_GLOBAL_ALL);
    wait_ready(&o);
    json_t *prompt = o.prompt_tokens ? synthetic_ids(o.prompt_tokens, 1)
                                     : json_string(o.prompt ? o.prompt : "Once upon a time");
    const char *path = !strcmp(o.api, "llama") ? "/completion" : "/v1/completions";
    char *body = make_body(&o, prompt, o.n_predict, o.stream);
    summary S = {.chunk_ms = NAN, .chunk_wall_ms = NAN};
    if (o.late_tokens) S.chunk_ms = prefill_chunk_ms(&o, &S.chunk_wall_ms);
    if (o.warmup) warm_up(&o, path, prompt);
    char *m0 = http_get(o.url, "/metrics");

    int n = o.clients * o.reqs, nth = o.clients + (o.late_tokens > 0);
    rec *rs = calloc((size_t)n, sizeof *rs);
    client *cl = calloc((size_t)o.clients, sizeof *cl);
    pthread_t *th = calloc((size_t)nth, sizeof *th);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)nth);
    late lt = {.o = &o, .path = "/completion", .go = &go};
    if (o.late_tokens) {
        opts lo = o;
        lo.api = "llama";
        json_t *ids = synthetic_ids(o.late_tokens, 3);
        lt.body = make_body(&lo, ids, o.late_predict, 0);
        json_decref(ids);
        pthread_create(&th[o.clients], NULL, late_main, &lt);
    }
    for (int i = 0; i < o.clients; i++) {
        cl[i] = (client){.o = &o, .path = path, .body = body, .recs = rs + i * o.reqs, .go = &go};
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
    char *m1 = http_get(o.url, "/metrics");
    summarize(&o, rs, n, o.late_tokens ? &lt.r : NULL, m0, m1, &S);
    report(&o, &S);
    if (o.events) write_events(o.events, rs, n, o.late_tokens ? &lt.r : NULL);
    for (int i = 0; i < n; i++) free(rs[i].ev);
    free(lt.r.ev), free((char *)lt.body);
    free(rs), free(cl), free(th), free(S.lat), free(S.ttft), free(body), free(m0), free(m1);
    json_decref(prompt);
    pthread_barrier_destroy(&go);
    curl_global_cleanup();
    return S.errors ? 1 : 0;
}
