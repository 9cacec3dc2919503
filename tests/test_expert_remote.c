/* test_expert_remote.c: the remote-expert client (llama.cpp and OpenAI-style APIs) against
 * an in-process fake server that answers whatever a test sets (failures, hostile replies,
 * request shapes of real servers), and the decoder with an expert behind the backend
 * interface. */
#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/utf8.h"
#include "duet.h"
#include "fixtures.h"
#include "server_client.h"
#include "test.h"

/* ---- remote expert client against a fake server ------------------------------------------ */
/* An OpenAI-style reply with logprobs in the content-list shape (llama-server, chat). */
#define CL(x) "{\"choices\":[{\"logprobs\":{\"content\":[{\"top_logprobs\":[" x "]}]}}]}"
enum { FAKE_OK, FAKE_500, FAKE_400, FAKE_429_ONCE, FAKE_MALFORMED, FAKE_NO_LOGPROBS, FAKE_BAD_ID, FAKE_HUGE,
       FAKE_SLOW, FAKE_WRONG_TOKENS, FAKE_REPLY, FAKE_TOK_CONTENT_ONLY };
/* mode and hits are read and written by the fake's connection threads and the test */
static struct { _Atomic int mode, hits; duet_model *base; const char *reply, *props; } g_fake;

static enum MHD_Result fake_send(struct MHD_Connection *c, unsigned st, const char *body, size_t n) {
    struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ok = MHD_queue_response(c, st, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result fake_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                    const char *version, const char *up, size_t *up_size, void **cc) {
    duet_buf *b = *cc;
    if (!b) { *cc = calloc(1, sizeof(duet_buf)); return MHD_YES; }
    if (*up_size) { duet_utf8_append(b, up, *up_size, 0, NULL); *up_size = 0; return MHD_YES; }
    json_t *req = b->p ? json_loads(b->p, 0, NULL) : NULL;
    free(b->p);
    free(b);
    *cc = NULL;
    enum MHD_Result ok;
    if (!strcmp(url, "/tokenize")) {
        json_t *t = json_object_get(req, "content");
        /* llama-server reads only content: asked with vLLM's prompt it tokenizes nothing */
        if (!t && g_fake.mode != FAKE_TOK_CONTENT_ONLY) t = json_object_get(req, "prompt");
        int32_t ids[256];
        int n = duet_tokenize(g_fake.base, json_string_value(t), json_string_length(t), 0, 0, ids, 256, NULL);
        json_t *arr = json_array();
        for (int i = 0; i < n; i++) json_array_append_new(arr, json_integer(g_fake.mode == FAKE_WRONG_TOKENS ? i : ids[i]));
        json_t *js = json_pack("{s:o}", "tokens", arr);
        char *s = json_dumps(js, 0);
        json_decref(js);
        ok = fake_send(c, 200, s, strlen(s));
        free(s);
    } else if (!strcmp(url, "/completion") || !strcmp(url, "/v1/completions")) {
        g_fake.hits++;
        int openai = url[1] == 'v';
        static const char *llama_ok = "{\"completion_probabilities\":[{\"id\":5,\"logprob\":-0.25,\"top_logprobs\":"
                                      "[{\"id\":5,\"logprob\":-0.25},{\"id\":7,\"logprob\":-2.5}]}]}";
        static const char *openai_ok = "{\"choices\":[{\"logprobs\":{\"top_logprobs\":[{\"token_id:5\":-0.25,"
                                       "\"token_id:7\":-2.5}]}}]}";
        switch (g_fake.mode) {
        case FAKE_500: ok = fake_send(c, 500, "boom", 4); break;
        case FAKE_400: ok = fake_send(c, 400, "bad request", 11); break;
        case FAKE_429_ONCE:
            ok = g_fake.hits == 1 ? fake_send(c, 429, "slow down", 9) : fake_send(c, 200, llama_ok, strlen(llama_ok));
            break;
        case FAKE_MALFORMED: ok = fake_send(c, 200, "{\"completion_probabilities\": [", 30); break;
        case FAKE_NO_LOGPROBS: ok = fake_send(c, 200, "{\"content\": \"x\"}", 16); break;
        case FAKE_BAD_ID: {
            const char *s = "{\"completion_probabilities\":[{\"top_logprobs\":[{\"id\":600,\"logprob\":-1}]}]}";
            ok = fake_send(c, 200, s, strlen(s));
            break;
        }
        case FAKE_HUGE: {
            size_t n = 9u << 20;
            char *s = malloc(n);
            memset(s, ' ', n);
            ok = fake_send(c, 200, s, n);
            free(s);
            break;
        }
        case FAKE_REPLY: ok = fake_send(c, 200, g_fake.reply, strlen(g_fake.reply)); break;
        case FAKE_SLOW: usleep(1500000); /* fall through */
        default: ok = openai ? fake_send(c, 200, openai_ok, strlen(openai_ok)) : fake_send(c, 200, llama_ok, strlen(llama_ok));
        }
    } else if (!strcmp(url, "/props") && g_fake.props) {
        ok = fake_send(c, 200, g_fake.props, strlen(g_fake.props));
    } else {
        ok = fake_send(c, 404, "{}", 2);
    }
    json_decref(req);
    return ok;
}

/* The fake expert on an ephemeral port, tokenizing with base. */
static struct MHD_Daemon *fake_start(duet_model *base, int *port) {
    g_fake.base = base;
    g_fake.mode = FAKE_OK;
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0,
                                            NULL, NULL, fake_handler, NULL, MHD_OPTION_END);
    *port = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port : 0;
    return d;
}

/* The fixture base and a fake expert for it; its URL in url. NULL (test failed) on error. */
static struct MHD_Daemon *fake_expert(duet_model **base, char *url, size_t cap) {
    if (fixtures() || !(*base = fixture_load(g_base))) return NULL;
    int port;
    struct MHD_Daemon *d = fake_start(*base, &port);
    if (!d) test_fail_at(__FILE__, __LINE__, "cannot start the fake expert");
    else snprintf(url, cap, "http://127.0.0.1:%d", port);
    return d;
}

TEST(server_remote_client_failures) {
    duet_model *base = NULL;
    char url[64];
    struct MHD_Daemon *d = fake_expert(&base, url, sizeof url);
    REQUIRE(d);
    float *out = malloc(600 * sizeof *out);
    int32_t toks[3] = {1, 20, 30};
    for (int api = 0; api < 2; api++) { /* the happy path, both protocols */
        duet_expert_remote_params rp = {.url = url, .api = api ? "openai" : "llama", .backoff_ms = 10};
        duet_expert_remote *r = NULL;
        duet_error err = {0};
        CHECKF(!duet_expert_remote_new(base, &rp, &r, &err), "%s", err.msg);
        if (!r) continue;
        const duet_expert_backend *be = duet_expert_remote_backend(r);
        CHECKF(!be->next_logits(be->ctx, toks, 3, out, &err), "%s", err.msg);
        CHECK_NEAR(out[5], -0.25, 0);
        CHECK_NEAR(out[7], -2.5, 0);
        CHECK(isinf(out[0]) && out[0] < 0 && isinf(out[599]));
        duet_expert_remote_free(r);
    }
    static const struct { int mode, hits; const char *want; } k[] = {
        {FAKE_500, 3, "HTTP 500: boom (after 3 attempts)"},
        {FAKE_400, 1, "HTTP 400: bad request"}, /* the same request would fail again */
        {FAKE_429_ONCE, 2, NULL},
        {FAKE_MALFORMED, 1, "malformed JSON"},
        {FAKE_NO_LOGPROBS, 1, "no completion_probabilities[0].top_logprobs"},
        {FAKE_BAD_ID, 1, "token id 600 is outside the base vocabulary [0, 600)"},
        {FAKE_HUGE, 1, "response larger than"},
        {FAKE_SLOW, 3, "Timeout"},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        duet_expert_remote_params rp = {.url = url, .backoff_ms = 10, .timeout_ms = 400};
        duet_expert_remote *r = NULL;
        duet_error err = {0};
        g_fake.mode = FAKE_OK;
        REQUIRE(!duet_expert_remote_new(base, &rp, &r, &err));
        g_fake.mode = k[i].mode;
        g_fake.hits = 0;
        const duet_expert_backend *be = duet_expert_remote_backend(r);
        int rc = be->next_logits(be->ctx, toks, 3, out, &err);
        if (k[i].want) CHECKF(rc < 0 && strstr(err.msg, k[i].want), "mode %d: rc %d, '%s'", k[i].mode, rc, err.msg);
        else CHECKF(rc == 0, "mode %d: %s", k[i].mode, err.msg);
        /* "(after N attempts)" counts requests really sent: none for what is not retried */
        if (k[i].want && k[i].hits == 1) CHECKF(!strstr(err.msg, "attempts"), "mode %d: '%s'", k[i].mode, err.msg);
        CHECKF(g_fake.hits == k[i].hits, "mode %d: %d attempts, want %d", k[i].mode, g_fake.hits, k[i].hits);
        duet_expert_remote_free(r);
    }
    /* a tokenizer that numbers text differently is refused at start-up */
    g_fake.mode = FAKE_WRONG_TOKENS;
    duet_expert_remote_params rp = {.url = url};
    duet_expert_remote *r = NULL;
    duet_error err = {0};
    CHECK(duet_expert_remote_new(base, &rp, &r, &err) == DUET_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "tokenizer numbers the probe text differently") != NULL);
    CHECKF(strstr(err.msg, "token 0: expert 0, base "), "the message names the first difference: %s", err.msg);
    /* the OpenAI API against a /tokenize that reads only llama.cpp's content field: the probe
     * falls back to that shape, and the content-list logprobs parse */
    g_fake.mode = FAKE_TOK_CONTENT_ONLY;
    rp = (duet_expert_remote_params){.url = url, .api = "openai", .backoff_ms = 10};
    CHECKF(!duet_expert_remote_new(base, &rp, &r, &err), "content-only /tokenize: %s", err.msg);
    if (r) {
        const duet_expert_backend *be = duet_expert_remote_backend(r);
        g_fake.mode = FAKE_REPLY;
        g_fake.reply = CL("{\"id\":5,\"token\":\"a\",\"logprob\":-0.25,\"bytes\":[97]},"
                          "{\"token\":\"token_id:7\",\"logprob\":-2.5}");
        CHECKF(!be->next_logits(be->ctx, toks, 3, out, &err), "%s", err.msg);
        CHECK_NEAR(out[5], -0.25, 0);
        CHECK_NEAR(out[7], -2.5, 0);
        CHECK(isinf(out[6]) && out[6] < 0);
        duet_expert_remote_free(r);
        r = NULL;
    }
    g_fake.mode = FAKE_OK;
    rp.url = "ftp://x";
    CHECK(duet_expert_remote_new(base, &rp, &r, &err) == DUET_ERR_ARG);
    MHD_stop_daemon(d);
    free(out);
    duet_model_free(base);
}

/* Every malformed field of a 200 reply, in both protocols: the call fails at once (one
 * attempt, DUET_ERR_FORMAT) with a message that names the field or the value sent. */
#define LL(x) "{\"completion_probabilities\":[{\"top_logprobs\":[" x "]}]}"
#define OA(x) "{\"choices\":[{\"logprobs\":{\"top_logprobs\":[{" x "}]}}]}"
static const struct { int openai; const char *reply, *want; } k_bad_replies[] = {
    /* llama: ids */
    {0, LL("{\"id\":-1,\"logprob\":-1}"), "token id -1 is outside the base vocabulary [0, 600)"},
    {0, LL("{\"id\":600,\"logprob\":-1}"), "token id 600 is outside the base vocabulary [0, 600)"},
    {0, LL("{\"id\":2147483648,\"logprob\":-1}"), "token id 2147483648 is outside"},
    {0, LL("{\"id\":5,\"logprob\":-1},{\"id\":-3,\"logprob\":-1}"), "token id -3 is outside"},
    {0, LL("{\"id\":\"5\",\"logprob\":-1}"), "top_logprobs[0] has no integer id: \"5\""},
    {0, LL("{\"id\":3.5,\"logprob\":-1}"), "top_logprobs[0] has no integer id: 3.5"},
    {0, LL("{\"id\":5.0,\"logprob\":-1}"), "top_logprobs[0] has no integer id: 5.0"},
    {0, LL("{\"id\":true,\"logprob\":-1}"), "top_logprobs[0] has no integer id: true"},
    {0, LL("{\"id\":null,\"logprob\":-1}"), "top_logprobs[0] has no integer id: null"},
    {0, LL("{\"id\":5,\"logprob\":-1},{\"logprob\":-1}"), "top_logprobs[1] has no integer id: missing"},
    {0, LL("{\"id\":99999999999999999999,\"logprob\":-1}"), "malformed JSON"},
    /* llama: log-probabilities */
    {0, LL("{\"id\":5,\"logprob\":\"-1\"}"), "logprob of token 5 is not a number <= 0: \"-1\""},
    {0, LL("{\"id\":5,\"logprob\":0.5}"), "logprob of token 5 is not a number <= 0: 0.5"},
    {0, LL("{\"id\":5,\"logprob\":null}"), "logprob of token 5 is not a number <= 0: null"},
    {0, LL("{\"id\":5,\"logprob\":[-1]}"), "logprob of token 5 is not a number <= 0: [-1]"},
    {0, LL("{\"id\":5}"), "logprob of token 5 is not a number <= 0: missing"},
    {0, LL("{\"id\":5,\"logprob\":-1e999}"), "malformed JSON"},
    {0, LL("{\"id\":5,\"logprob\":NaN}"), "malformed JSON"},
    /* llama: shape */
    {0, LL(""), "no completion_probabilities[0].top_logprobs"},
    {0, "{\"completion_probabilities\":[]}", "no completion_probabilities[0].top_logprobs"},
    {0, "{\"completion_probabilities\":[{}]}", "no completion_probabilities[0].top_logprobs"},
    {0, "{\"completion_probabilities\":{\"top_logprobs\":[{\"id\":5,\"logprob\":-1}]}}",
     "no completion_probabilities[0].top_logprobs"},
    {0, "{\"completion_probabilities\":[{\"top_logprobs\":{\"id\":5,\"logprob\":-1}}]}",
     "no completion_probabilities[0].top_logprobs"},
    {0, "[{\"top_logprobs\":[{\"id\":5,\"logprob\":-1}]}]", "no completion_probabilities[0].top_logprobs"},
    {0, LL("5"), "top_logprobs[0] is not an {id, logprob} object: 5"},
    {0, LL("[5,-1]"), "top_logprobs[0] is not an {id, logprob} object: [5,-1]"},
    {0, LL("{\"id\":5,\"logprob\":-1},{\"id\":5,\"logprob\":-2}"), "token id 5 appears twice"},
    /* openai, the content-list shape (llama-server's /v1/completions, chat) */
    {1, CL("{\"id\":600,\"token\":\"x\",\"logprob\":-1}"), "token id 600 is outside"},
    {1, CL("{\"token\":\"x\",\"logprob\":-1}"),
     "content[0].top_logprobs[0] has neither an integer id nor a token_id:N token"},
    {1, CL("{\"id\":\"5\",\"logprob\":-1}"), "content[0].top_logprobs[0] has neither"},
    {1, CL("{\"token\":\"token_id:7\",\"logprob\":0.5}"), "logprob of token 7 is not a number <= 0: 0.5"},
    {1, CL("5"), "content[0].top_logprobs[0] has neither"},
    {1, CL("{\"id\":5,\"logprob\":-1},{\"token\":\"token_id:5\",\"logprob\":-2}"), "token id 5 appears twice"},
    {1, "{\"choices\":[{\"logprobs\":{\"content\":[{\"top_logprobs\":[]}]}}]}", "has neither choices"},
    /* openai: ids (keys) */
    {1, OA("\"token_id:-1\":-1"), "token id -1 is outside the base vocabulary [0, 600)"},
    {1, OA("\"token_id:600\":-1"), "token id 600 is outside the base vocabulary [0, 600)"},
    {1, OA("\"token_id:99999999999999999999\":-1"), "token id 9223372036854775807 is outside"},
    {1, OA("\"token_id:abc\":-1"), "top_logprobs key 'token_id:abc' is not token_id:N"},
    {1, OA("\"token_id:3.5\":-1"), "top_logprobs key 'token_id:3.5' is not token_id:N"},
    {1, OA("\"token_id: 5\":-1"), "top_logprobs key 'token_id: 5' is not token_id:N"},
    {1, OA("\"token_id:+5\":-1"), "top_logprobs key 'token_id:+5' is not token_id:N"},
    {1, OA("\"token_id:\":-1"), "top_logprobs key 'token_id:' is not token_id:N"},
    {1, OA("\"5\":-1"), "top_logprobs key '5' is not token_id:N"},
    {1, OA("\"hello\":-1"), "top_logprobs key 'hello' is not token_id:N"},
    /* openai: log-probabilities */
    {1, OA("\"token_id:5\":\"-1\""), "logprob of token 5 is not a number <= 0: \"-1\""},
    {1, OA("\"token_id:5\":0.25"), "logprob of token 5 is not a number <= 0: 0.25"},
    {1, OA("\"token_id:5\":null"), "logprob of token 5 is not a number <= 0: null"},
    {1, OA("\"token_id:5\":true"), "logprob of token 5 is not a number <= 0: true"},
    {1, OA("\"token_id:5\":{\"logprob\":-1}"), "logprob of token 5 is not a number <= 0: {\"logprob\":-1}"},
    /* openai: shape */
    {1, "{\"choices\":[{\"logprobs\":{\"top_logprobs\":[]}}]}", "neither choices[0].logprobs.top_logprobs[0]"},
    {1, OA(""), "neither choices[0].logprobs.top_logprobs[0]"},
    {1, "{\"choices\":[{\"logprobs\":{\"top_logprobs\":{\"token_id:5\":-1}}}]}",
     "neither choices[0].logprobs.top_logprobs[0]"},
    {1, "{\"choices\":[{\"logprobs\":{\"top_logprobs\":[[{\"token_id:5\":-1}]]}}]}",
     "neither choices[0].logprobs.top_logprobs[0]"},
    {1, "{\"choices\":[{\"logprobs\":null}]}", "neither choices[0].logprobs.top_logprobs[0]"},
    {1, "{\"choices\":[]}", "neither choices[0].logprobs.top_logprobs[0]"},
    {1, "{\"choices\":{\"logprobs\":{\"top_logprobs\":[{\"token_id:5\":-1}]}}}",
     "neither choices[0].logprobs.top_logprobs[0]"},
    {1, OA("\"token_id:5\":-1,\"token_id:05\":-2"), "token id 5 appears twice"},
    {1, OA("\"token_id:5\":-1,\"token_id:5\":-2"), "malformed JSON"},
};

/* A reply listing ids 0..n-1 with logprob -id (as an integer, 0 for id 0), then extra
 * entries that repeat ids 0..extra-1. */
static char *full_reply(int openai, int n, int extra) {
    char *s = malloc((size_t)(n + extra) * 40 + 100), *p = s;
    p += sprintf(p, openai ? "{\"choices\":[{\"logprobs\":{\"top_logprobs\":[{"
                           : "{\"completion_probabilities\":[{\"top_logprobs\":[");
    for (int i = 0; i < n + extra; i++) {
        int id = i < n ? i : i - n;
        const char *sep = i ? "," : "";
        if (openai && i >= n) p += sprintf(p, "%s\"token_id:0%d\":%d", sep, id, -id);
        else if (openai) p += sprintf(p, "%s\"token_id:%d\":%d", sep, id, -id);
        else p += sprintf(p, "%s{\"id\":%d,\"logprob\":%d}", sep, id, -id);
    }
    sprintf(p, openai ? "}]}}]}" : "]}]}");
    return s;
}

TEST(server_remote_reply_fields) {
    duet_model *base = NULL;
    char url[64];
    struct MHD_Daemon *d = fake_expert(&base, url, sizeof url);
    REQUIRE(d);
    duet_expert_remote *r[2] = {NULL, NULL};
    for (int api = 0; api < 2; api++) {
        duet_expert_remote_params rp = {.url = url, .api = api ? "openai" : "llama", .backoff_ms = 10};
        duet_error err = {0};
        CHECKF(!duet_expert_remote_new(base, &rp, &r[api], &err), "%s", err.msg);
    }
    if (!r[0] || !r[1]) goto done;
    float *out = malloc(600 * sizeof *out);
    int32_t toks[3] = {1, 20, 30};
    g_fake.mode = FAKE_REPLY;
    for (size_t i = 0; i < sizeof k_bad_replies / sizeof *k_bad_replies; i++) {
        const duet_expert_backend *be = duet_expert_remote_backend(r[k_bad_replies[i].openai]);
        duet_error err = {0};
        g_fake.reply = k_bad_replies[i].reply;
        g_fake.hits = 0;
        int rc = be->next_logits(be->ctx, toks, 3, out, &err);
        CHECKF(rc == DUET_ERR_FORMAT && strstr(err.msg, k_bad_replies[i].want) && g_fake.hits == 1,
               "reply %s: rc %d after %d attempts, '%s' (want '%s')", k_bad_replies[i].reply, rc,
               g_fake.hits, err.msg, k_bad_replies[i].want);
    }
    /* a reply as large as the vocabulary is fine (logprob 0 included); one entry more must
     * repeat an id and is refused */
    for (int api = 0; api < 2; api++) {
        const duet_expert_backend *be = duet_expert_remote_backend(r[api]);
        duet_error err = {0};
        char *full = full_reply(api, 600, 0), *over = full_reply(api, 600, 1);
        g_fake.reply = full;
        CHECKF(!be->next_logits(be->ctx, toks, 3, out, &err), "api %d, 600 entries: %s", api, err.msg);
        CHECK(out[0] == 0 && out[1] == -1 && out[599] == -599);
        g_fake.reply = over;
        CHECKF(be->next_logits(be->ctx, toks, 3, out, &err) == DUET_ERR_FORMAT &&
               strstr(err.msg, "token id 0 appears twice"), "api %d, 601 entries: '%s'", api, err.msg);
        free(full);
        free(over);
    }
    free(out);
done:
    g_fake.mode = FAKE_OK;
    duet_expert_remote_free(r[0]);
    duet_expert_remote_free(r[1]);
    MHD_stop_daemon(d);
    duet_model_free(base);
}

/* ---- the collab decoder's expert interface, without HTTP ---------------------------------- */
typedef struct sess_backend { duet_session *s; int calls, fail_at; } sess_backend;
static int sess_next(void *ctx, const int32_t *t, int n, float *out, duet_error *err) {
    sess_backend *b = ctx;
    if (++b->calls == b->fail_at) return duet_fail(err, DUET_ERR_IO, "expert down (test)");
    int rc = duet_session_sync(b->s, t, n, err);
    if (rc) return rc;
    int V = duet_model_hparams(duet_session_model(b->s))->n_vocab;
    memcpy(out, duet_session_logits(b->s, -1), (size_t)V * sizeof *out);
    return DUET_OK;
}


TEST(collab_expert_backend_matches_local_and_falls_back) {
    REQUIRE(!fixtures());
    duet_model *b = fixture_load(g_base), *e = fixture_load(g_exp);
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 5, 2.0f);
    int32_t prompt[3] = {1, 40, 90};
    duet_collab_params cp = {.policy = DUET_POLICY_COLLM, .threshold = 0.5f};
    cp.sampling = (duet_sampler_params){.temp = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 9};
    duet_collab *local = NULL, *viab = NULL;
    sess_backend sb = {0};
    REQUIRE(!duet_session_new(e, NULL, &sb.s, NULL));
    duet_expert_backend be = {.ctx = &sb, .next_logits = sess_next};
    REQUIRE(!duet_collab_new(b, e, NULL, h, &cp, &local, NULL));
    duet_collab_params cp2 = cp;
    cp2.expert_backend = &be;
    REQUIRE(!duet_collab_new(b, NULL, NULL, h, &cp2, &viab, NULL));
    /* the same sampled tokens and sources through the interface as with the local expert */
    REQUIRE(!duet_collab_start(local, prompt, 3, NULL) && !duet_collab_start(viab, prompt, 3, NULL));
    int deferred = 0;
    for (int i = 0; i < 40; i++) {
        duet_collab_token x, y;
        int r1 = duet_collab_step(local, &x, NULL), r2 = duet_collab_step(viab, &y, NULL);
        CHECK_EQ_INT(r1, r2);
        CHECK_EQ_INT(x.id, y.id);
        CHECK_EQ_INT(x.source, y.source);
        deferred += x.deferred;
        if (r1) break;
    }
    CHECK(deferred > 0);
    CHECK_EQ_INT(duet_collab_get_stats(viab)->expert_calls, sb.calls);
    /* a failing expert: the step fails, or with expert_fallback the base writes the token */
    duet_collab_free(viab);
    cp2.policy = DUET_POLICY_EXPERT;
    cp2.sampling.temp = 0; /* greedy: the base's fallback token is its argmax */
    sb.calls = 0;
    sb.fail_at = 2;
    REQUIRE(!duet_collab_new(b, NULL, NULL, h, &cp2, &viab, NULL));
    REQUIRE(!duet_collab_start(viab, prompt, 3, NULL));
    duet_collab_token t;
    duet_error err = {0};
    CHECK_EQ_INT(duet_collab_step(viab, &t, &err), 0);
    CHECK(duet_collab_step(viab, &t, &err) == DUET_ERR_IO && strstr(err.msg, "expert down"));
    duet_collab_free(viab);
    cp2.expert_fallback = 1;
    sb.calls = 0;
    REQUIRE(!duet_collab_new(b, NULL, NULL, h, &cp2, &viab, NULL));
    REQUIRE(!duet_collab_start(viab, prompt, 3, NULL));
    CHECK_EQ_INT(duet_collab_step(viab, &t, NULL), 0);
    CHECK(!t.expert_failed && t.source == DUET_SRC_EXPERT);
    CHECK_EQ_INT(duet_collab_step(viab, &t, NULL), 0);
    CHECK(t.expert_failed && t.source == DUET_SRC_BASE && t.id == t.base_top);
    CHECK_EQ_INT(duet_collab_get_stats(viab)->expert_failures, 1);
    duet_collab_free(viab);
    duet_collab_free(local);
    duet_session_free(sb.s);
    duet_head_free(h);
    duet_model_free(e);
    duet_model_free(b);
}

/* ---- duet score against a remote expert ------------------------------------------------------ */
#include "learn/scores.h"

TEST(server_score_remote_equals_local) {
    int port = expert_port();
    NEED_SERVER(port);
    const char *data = test_path(test_tmpdir(), "srv-score.jsonl");
    FILE *f = fopen(data, "w");
    REQUIRE(f);
    fputs("{\"prompt\": \"What is 2+2?\", \"response\": \"It is 4, of course.\"}\n"
          "{\"prompt\": \"Name a colour.\", \"response\": \"Blue, like the sky.\"}\n"
          "{\"question\": \"Once upon a time\", \"answer\": \"there was a cat who sat.\"}\n", f);
    fclose(f);
    char cmd[4096], local[600], remote[600];
    snprintf(local, sizeof local, "%s/srv-local.scores", test_tmpdir());
    snprintf(remote, sizeof remote, "%s/srv-remote.scores", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s score -m '%s' --tokenizer-of '%s' -d '%s' -o '%s' --no-hidden --quiet -t 1",
             duet_bin(), g_exp, g_base, data, local);
    REQUIRE(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s score --url http://127.0.0.1:%d --tokenizer-of '%s' -d '%s' -o '%s' --quiet",
             duet_bin(), port, g_base, data, remote);
    REQUIRE(system(cmd) == 0);
    duet_scores *a = NULL, *b = NULL;
    duet_error err = {0};
    REQUIRE(!duet_scores_open(local, &a, &err) && !duet_scores_open(remote, &b, &err));
    const duet_scores_header *ha = duet_scores_get_header(a), *hb = duet_scores_get_header(b);
    CHECK_EQ_INT(ha->n_seq, hb->n_seq);
    CHECK_EQ_INT(ha->n_tok, hb->n_tok);
    CHECK(ha->n_tok > 10);
    CHECK(ha->ids_vocab_hash == hb->ids_vocab_hash);
    CHECK_STR(hb->model_name, ha->model_name); /* the server reports the expert's name */
    for (uint64_t i = 0; i < ha->n_seq && i < hb->n_seq; i++) {
        const duet_scores_tok *x = duet_scores_seq_toks(a, i), *y = duet_scores_seq_toks(b, i);
        for (uint32_t t = 0; t < duet_scores_seqs(a)[i].n_tok; t++) {
            CHECK_EQ_INT(x[t].gold, y[t].gold);
            CHECK_NEAR(x[t].lp, y[t].lp, 1e-6);
            CHECK_NEAR(x[t].maxlp, y[t].maxlp, 1e-6);
            CHECK_NEAR(x[t].entropy, y[t].entropy, 1e-6);
        }
    }
    duet_scores_close(a);
    duet_scores_close(b);
    /* --url scores with the server: a local -m with it is a usage error */
    snprintf(cmd, sizeof cmd, "%s score --url http://127.0.0.1:%d -m '%s' -d '%s' -o x 2>/dev/null",
             duet_bin(), port, g_base, data);
    CHECK(WEXITSTATUS(system(cmd)) == 2);
}

/* A front server with an OpenAI-protocol (vLLM-shaped) expert: the fake's top token (id 5)
 * is what the expert policy writes, token after token. */
TEST(server_openai_expert_in_the_decoder) {
    NEED_FIXTURES();
    duet_model *base = fixture_load(g_base);
    REQUIRE(base);
    int fport;
    struct MHD_Daemon *d = fake_start(base, &fport);
    REQUIRE(d);
    proc front;
    if (!spawn_serve(&front, "-m '%s' --expert-url http://127.0.0.1:%d --expert-api openai --policy expert --quiet",
                     g_base, fport)) {
        resp r = http(front.port, "/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 6, \"temperature\": 0, "
                      "\"duet_tokens\": true}", NULL);
        CHECK_EQ_INT(r.status, 200);
        json_t *toks = json_object_get(json_array_get(json_object_get(r.js, "choices"), 0), "duet_tokens");
        CHECK_EQ_INT(json_array_size(toks), 6);
        size_t i;
        json_t *t;
        json_array_foreach(toks, i, t) {
            CHECK_EQ_INT(json_integer_value(json_object_get(t, "id")), 5);
            CHECK_STR(json_string_value(json_object_get(t, "source")), "expert");
        }
        resp_free(&r);
        CHECK_EQ_INT(stop_serve(&front), 0);
    } else {
        CHECK(!"front server with an openai expert did not start");
    }
    MHD_stop_daemon(d);
    duet_model_free(base);
}

/* The remote expert's context size from /props: taken when it is an integer in [1, 2^24],
 * refused by field and value otherwise (2^32 + 1 once became a context of 1). */
TEST(server_remote_props_n_ctx_range) {
    duet_model *base = NULL;
    char url[64];
    struct MHD_Daemon *d = fake_expert(&base, url, sizeof url);
    REQUIRE(d);
    static const struct { const char *props; int n_ctx; const char *want; } cases[] = {
        {"{\"default_generation_settings\": {\"n_ctx\": 4096}}", 4096, NULL},
        {"{\"default_generation_settings\": {\"n_ctx\": 16777216}}", 16777216, NULL},
        {"{\"default_generation_settings\": {}}", 0, NULL},
        {"{\"default_generation_settings\": {\"n_ctx\": 4294967297}}", 0, "n_ctx = 4294967297 is not"},
        {"{\"default_generation_settings\": {\"n_ctx\": 16777217}}", 0, "n_ctx = 16777217 is not"},
        {"{\"default_generation_settings\": {\"n_ctx\": 0}}", 0, "n_ctx = 0 is not"},
        {"{\"default_generation_settings\": {\"n_ctx\": -5}}", 0, "n_ctx = -5 is not"},
        {"{\"default_generation_settings\": {\"n_ctx\": \"4096\"}}", 0, "n_ctx = \"4096\" is not"},
        {"{\"default_generation_settings\": {\"n_ctx\": 4096.5}}", 0, "n_ctx = 4096.5 is not"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        g_fake.props = cases[i].props;
        duet_expert_remote_params rp = {.url = url, .api = "llama", .backoff_ms = 10};
        duet_expert_remote *r = NULL;
        duet_error err = {0};
        int rc = duet_expert_remote_new(base, &rp, &r, &err);
        if (!cases[i].want) {
            CHECKF(rc == DUET_OK && r, "%s: %s", cases[i].props, err.msg);
            if (r) CHECK_EQ_INT(duet_expert_remote_backend(r)->n_ctx, cases[i].n_ctx);
        } else {
            CHECKF(rc == DUET_ERR_FORMAT && !r && strstr(err.msg, cases[i].want) &&
                   strstr(err.msg, "/props"), "%s: rc %d, '%s'", cases[i].props, rc, err.msg);
        }
        duet_expert_remote_free(r);
    }
    g_fake.props = NULL;
    MHD_stop_daemon(d);
    duet_model_free(base);
}
