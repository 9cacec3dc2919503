/* test_server_completion.c: llama.cpp's /completion as duet serve answers it beyond the next
 * token: n_predict counts, stop words with stop_type and stopping_word, streaming that adds up
 * to the whole answer, n_probs' shapes, bytes and values, timings that agree with the counts,
 * and the next-token mode (what remote-expert clients send) answering as it did before
 * generation was added. The expectations are llama.cpp's own server tests' for /completion,
 * restated here. With LLAMA_SERVER set, llama-server's answer to the same request must have no
 * field that duet's lacks or types differently. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duet.h"
#include "fixtures.h"
#include "server_client.h"
#include "test.h"

static json_t *post(int port, const char *body) {
    resp r = http(port, "/completion", body, NULL);
    json_t *js = r.status == 200 ? json_incref(r.js) : NULL;
    if (!js) fprintf(stderr, "    /completion %.200s: HTTP %ld: %.300s\n", body, r.status, r.body ? r.body : "");
    resp_free(&r);
    return js;
}

static long geti(json_t *o, const char *k) { return (long)json_integer_value(json_object_get(o, k)); }
static const char *gets(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* ---- the next-token mode, as it answered before generation existed ----------------------- */
/* Requests a remote-expert client sends (n_predict 1, n_probs, temperature 0, return_tokens),
 * the default n_predict and n_predict 0, to a fresh server in this order (tokens_cached of
 * the second is the BOS the first left in the slot's session). The answers were recorded from
 * duet serve built from the commit before /completion could generate, on the same fixtures;
 * every field they held must come back with the same value, to the last bit of each double. */
static const char *k_fixed[][2] = {
    {"{\"prompt\": [1, 40, 41, 42], \"n_predict\": 1, \"n_probs\": 3, \"temperature\": 0, \"return_tokens\": true}",
     "{\"model\":\"duet-random-f32\",\"content\":\"^\",\"stop\":true,\"stop_type\":\"limit\",\"tokens_evaluated\":4,"
     "\"tokens_cached\":0,\"tokens\":[320],\"completion_probabilities\":[{\"id\":320,\"token\":\"^\",\"logprob\":"
     "-5.7669358253479004,\"top_logprobs\":[{\"id\":320,\"token\":\"^\",\"logprob\":-5.7669358253479004},{\"id\":57,"
     "\"token\":\"6\",\"logprob\":-5.7786216735839844},{\"id\":291,\"token\":\"A\",\"logprob\":-5.8388156890869141}]}]}"},
    {"{\"prompt\": \"Once upon a time\", \"n_probs\": 2}",
     "{\"model\":\"duet-random-f32\",\"content\":\"p\",\"stop\":true,\"stop_type\":\"limit\",\"tokens_evaluated\":14,"
     "\"tokens_cached\":1,\"tokens\":[115],\"completion_probabilities\":[{\"id\":115,\"token\":\"p\",\"logprob\":"
     "-5.7430386543273926,\"top_logprobs\":[{\"id\":115,\"token\":\"p\",\"logprob\":-5.7430386543273926},{\"id\":169,"
     "\"token\":\"\\ufffd\",\"logprob\":-5.8008193969726562}]}]}"},
    {"{\"prompt\": [1, 40, 41], \"n_predict\": 0}",
     "{\"model\":\"duet-random-f32\",\"content\":\"\",\"stop\":true,\"stop_type\":\"limit\",\"tokens_evaluated\":3,"
     "\"tokens_cached\":1}"},
};

TEST(completion_next_token_mode_unchanged) {
    NEED_FIXTURES();
    proc p;
    REQUIRE(!spawn_serve(&p, "-m '%s' --expert '%s' --head '%s' --quiet", g_base, g_exp, g_head));
    for (int i = 0; i < 3; i++) {
        json_t *want = json_loads(k_fixed[i][1], 0, NULL), *got = post(p.port, k_fixed[i][0]);
        CHECKF(want && got, "request %d", i);
        const char *k;
        json_t *v;
        json_object_foreach(want, k, v) {
            json_t *g = json_object_get(got, k);
            char *a = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT), *b = g ? json_dumps(g, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
            CHECKF(json_equal(v, g), "request %d, %s: was %s, now %s", i, k, a, b ? b : "(missing)");
            free(a);
            free(b);
        }
        json_decref(want);
        json_decref(got);
    }
    CHECK_EQ_INT(stop_serve(&p), 0);
}

/* ---- generation ------------------------------------------------------------------------- */
/* The prompt's token count with BOS, from /tokenize (independent of /completion). */
static long prompt_tokens(int port, const char *text) {
    char body[256];
    snprintf(body, sizeof body, "{\"content\": \"%s\", \"add_special\": true}", text);
    resp r = http(port, "/tokenize", body, NULL);
    long n = r.status == 200 ? (long)json_array_size(json_object_get(r.js, "tokens")) : -1;
    resp_free(&r);
    return n;
}

/* The timings agree with the counts: predicted_n is tokens_predicted, prompt_n the prompt
 * tokens the cache did not hold, the rates their inverses (per_second = 1000 / per_token_ms). */
static void check_timings(json_t *js) {
    json_t *t = json_object_get(js, "timings");
    REQUIRE(json_is_object(t));
    CHECK_EQ_INT(geti(t, "predicted_n"), geti(js, "tokens_predicted"));
    CHECK_EQ_INT(geti(t, "prompt_n"), geti(js, "tokens_evaluated") - geti(js, "tokens_cached"));
    static const char *k[] = {"prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_ms",
                              "predicted_per_token_ms", "predicted_per_second"};
    for (int i = 0; i < 6; i++) CHECKF(json_is_real(json_object_get(t, k[i])) && json_real_value(json_object_get(t, k[i])) >= 0, "%s", k[i]);
    double ms = json_real_value(json_object_get(t, "predicted_ms")), per = json_real_value(json_object_get(t, "predicted_per_token_ms"));
    long n = geti(t, "predicted_n");
    if (n > 0) CHECK_NEAR(per * n, ms, 1e-9 * ms + 1e-12);
    if (per > 0) CHECK_NEAR(json_real_value(json_object_get(t, "predicted_per_second")), 1e3 / per, 1e-6 * (1e3 / per));
}

TEST(completion_n_predict_counts) {
    int port = local_port();
    NEED_SERVER(port);
    long n_prompt = prompt_tokens(port, "I believe the meaning of life is");
    REQUIRE(n_prompt > 1);
    json_t *a = post(port, "{\"prompt\": \"I believe the meaning of life is\", \"n_predict\": 8, "
                     "\"temperature\": 0, \"seed\": 42, \"return_tokens\": true}");
    json_t *b = post(port, "{\"prompt\": \"I believe the meaning of life is\", \"n_predict\": 8, "
                     "\"temperature\": 0}");
    REQUIRE(a && b);
    /* the fixture's greedy continuation reaches no EOS within 8 tokens: stopped by the limit */
    CHECK_STR(gets(a, "stop_type"), "limit");
    CHECK_EQ_INT(geti(a, "tokens_predicted"), 8);
    CHECK_EQ_INT(geti(a, "tokens_evaluated"), n_prompt);
    CHECK(json_is_true(json_object_get(a, "stop")));
    CHECK(json_is_false(json_object_get(a, "truncated")));
    CHECK(json_is_boolean(json_object_get(a, "has_new_line")));
    CHECK_STR(gets(a, "stopping_word"), "");
    CHECK_STR(gets(a, "prompt"), "I believe the meaning of life is");
    json_t *toks = json_object_get(a, "tokens");
    CHECK_EQ_INT(json_array_size(toks), 8);
    for (size_t i = 0; i < json_array_size(toks); i++) CHECK(json_is_integer(json_array_get(toks, i)));
    CHECK_EQ_INT(json_array_size(json_object_get(b, "tokens")), 0); /* without return_tokens */
    CHECK_STR(gets(a, "content"), gets(b, "content"));               /* greedy: the same text */
    json_t *gs = json_object_get(a, "generation_settings");
    CHECK_EQ_INT(geti(gs, "n_predict"), 8);
    CHECK_EQ_INT(geti(gs, "seed"), 42);
    CHECK_EQ_INT(geti(gs, "n_ctx"), 256);
    CHECK_NEAR(json_number_value(json_object_get(gs, "temperature")), 0, 0);
    check_timings(a);
    /* the loop /v1/completions uses: the same greedy text for the same prompt and policy */
    resp o = http(port, "/v1/completions", "{\"prompt\": \"I believe the meaning of life is\", "
                  "\"max_tokens\": 8, \"temperature\": 0}", NULL);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(o.js, "choices"), 0), "text")),
              gets(a, "content"));
    resp_free(&o);
    /* -1: until EOS or the context (256) is full */
    json_t *u = post(port, "{\"prompt\": [1, 40], \"n_predict\": -1, \"temperature\": 0}");
    REQUIRE(u);
    const char *st = gets(u, "stop_type");
    long n = geti(u, "tokens_predicted");
    CHECKF(st && (!strcmp(st, "eos") || (!strcmp(st, "limit") && json_is_true(json_object_get(u, "truncated")))),
           "stop_type %s", st ? st : "(none)");
    CHECK(n > 0 && 2 + n <= 256);
    if (st && !strcmp(st, "limit")) CHECK_EQ_INT(2 + n, 256);
    check_timings(u);
    json_decref(a); json_decref(b); json_decref(u);
    CHECK_ERR(port, "/completion", "{\"prompt\": [1], \"n_predict\": -2}", 400, "'n_predict'");
    CHECK_ERR(port, "/completion", "{\"prompt\": [1], \"n_predict\": 4, \"repeat_penalty\": 1.3}", 400, "'repeat_penalty'");
    CHECK_ERR(port, "/completion", "{\"prompt\": [1], \"n_predict\": 4, \"prompt_logprobs\": true}", 400, "'prompt_logprobs'");
}

/* The first stretch of 2 ASCII letters or digits in s at or after byte 1, copied to out. */
static int ascii_pair(const char *s, char out[3]) {
    for (size_t i = 1; s[i] && s[i + 1]; i++) {
        unsigned char x = (unsigned char)s[i], y = (unsigned char)s[i + 1];
        if (x < 128 && y < 128 && x > ' ' && y > ' ' && x != '"' && y != '"' && x != '\\' && y != '\\') {
            out[0] = (char)x, out[1] = (char)y, out[2] = 0;
            return 1;
        }
    }
    return 0;
}

TEST(completion_stop_words) {
    int port = local_port();
    NEED_SERVER(port);
    json_t *full = post(port, "{\"prompt\": \"Once upon a time\", \"n_predict\": 24, \"temperature\": 0}");
    REQUIRE(full);
    const char *text = gets(full, "content");
    char stop[3];
    REQUIRE(text && ascii_pair(text, stop));
    /* the answer ends where the stop text first appears: the full text's prefix before it */
    size_t cut = (size_t)(strstr(text, stop) - text);
    char body[300];
    snprintf(body, sizeof body, "{\"prompt\": \"Once upon a time\", \"n_predict\": 24, \"temperature\": 0, "
             "\"stop\": [\"never-in-it\", \"%s\"]}", stop);
    json_t *s = post(port, body);
    REQUIRE(s);
    CHECKF(strlen(gets(s, "content")) == cut && !strncmp(gets(s, "content"), text, cut),
           "stop '%s': '%s' vs '%s'", stop, gets(s, "content"), text);
    CHECK_STR(gets(s, "stop_type"), "word");
    CHECK_STR(gets(s, "stopping_word"), stop);
    CHECK(geti(s, "tokens_predicted") <= 24);
    check_timings(s);
    json_t *gs = json_object_get(json_object_get(s, "generation_settings"), "stop");
    CHECK_EQ_INT(json_array_size(gs), 2);
    CHECK_STR(json_string_value(json_array_get(gs, 1)), stop);
    json_decref(full);
    json_decref(s);
}

/* The data events of an SSE body, parsed (NULL entries for lines that are not JSON). */
static int sse_events(const char *body, json_t **ev, int cap, int *done_marker) {
    int n = 0;
    *done_marker = 0;
    for (const char *p = body; p && (p = strstr(p, "data: ")); p += 6) {
        if (!strncmp(p + 6, "[DONE]", 6)) { *done_marker = 1; continue; }
        const char *e = strstr(p, "\n\n");
        if (n < cap) ev[n++] = json_loadb(p + 6, e ? (size_t)(e - p - 6) : strlen(p + 6), JSON_ALLOW_NUL, NULL);
    }
    return n;
}

TEST(completion_stream_equals_whole) {
    int port = local_port();
    NEED_SERVER(port);
    static const char req[] = "\"prompt\": \"The dog\", \"n_predict\": 12, \"temperature\": 0, \"n_probs\": 2";
    char body[300];
    snprintf(body, sizeof body, "{%s, \"return_tokens\": true}", req);
    json_t *whole = post(port, body);
    REQUIRE(whole);
    snprintf(body, sizeof body, "{%s, \"stream\": true}", req);
    resp r = http(port, "/completion", body, NULL);
    CHECK_EQ_INT(r.status, 200);
    json_t *ev[64];
    int done_marker, n = sse_events(r.body, ev, 64, &done_marker);
    CHECK(n >= 2);
    CHECK(!done_marker); /* llama.cpp's own protocol has no [DONE] */
    duet_buf text = {0};
    json_t *ids = json_array();
    size_t n_probs = 0;
    for (int i = 0; i < n; i++) {
        CHECKF(ev[i] && json_is_boolean(json_object_get(ev[i], "stop")), "event %d", i);
        if (!ev[i]) continue;
        int last = i == n - 1;
        CHECK_EQ_INT(json_is_true(json_object_get(ev[i], "stop")), last);
        const char *c = gets(ev[i], "content");
        if (c) duet_buf_add(&text, c, strlen(c));
        if (!last) {
            json_array_extend(ids, json_object_get(ev[i], "tokens"));
            n_probs += json_array_size(json_object_get(ev[i], "completion_probabilities"));
        } else {
            CHECK_STR(c, "");
            CHECK_EQ_INT(geti(ev[i], "tokens_predicted"), geti(whole, "tokens_predicted"));
            CHECK_STR(gets(ev[i], "stop_type"), gets(whole, "stop_type"));
            CHECK(json_is_object(json_object_get(ev[i], "generation_settings")));
            CHECK(json_is_boolean(json_object_get(ev[i], "has_new_line")));
            check_timings(ev[i]);
        }
    }
    duet_buf_add(&text, "", 1);
    CHECK_STR(text.p, gets(whole, "content"));
    CHECK(json_equal(ids, json_object_get(whole, "tokens")));
    CHECK_EQ_INT((long)n_probs, geti(whole, "tokens_predicted"));
    for (int i = 0; i < n; i++) json_decref(ev[i]);
    json_decref(ids);
    free(text.p);
    resp_free(&r);
    json_decref(whole);
}

/* n_probs with policy base and temperature 0: each entry names the token chosen, which is the
 * base's argmax, so it heads its own top list; the log-probabilities are the base's, which the
 * test computes itself from the model's logits (log-softmax in double). */
TEST(completion_n_probs_shapes_and_values) {
    int port = local_port();
    NEED_SERVER(port);
    json_t *a = post(port, "{\"prompt\": [1, 40, 41], \"n_predict\": 6, \"temperature\": 0, \"n_probs\": 3, "
                     "\"policy\": \"base\", \"return_tokens\": true}");
    REQUIRE(a);
    json_t *cp = json_object_get(a, "completion_probabilities"), *toks = json_object_get(a, "tokens");
    long n = geti(a, "tokens_predicted");
    CHECK_EQ_INT(json_array_size(cp), n);
    CHECK_EQ_INT(json_array_size(toks), n);
    duet_model *m = fixture_load(g_base);
    REQUIRE(m);
    duet_session *s = NULL;
    REQUIRE(!duet_session_new(m, NULL, &s, NULL));
    int32_t all[16] = {1, 40, 41};
    for (long i = 0; i < n && i < 12; i++) all[3 + i] = (int32_t)json_integer_value(json_array_get(toks, i));
    REQUIRE(!duet_session_eval(s, all, 3 + (int)n, 1, NULL));
    int V = duet_model_hparams(m)->n_vocab;
    duet_buf bytes = {0};
    for (long i = 0; i < n; i++) {
        json_t *e = json_array_get(cp, i), *top = json_object_get(e, "top_logprobs");
        CHECK_EQ_INT(geti(e, "id"), all[3 + i]);
        CHECK_EQ_INT(json_array_size(top), 3);
        CHECK_EQ_INT(geti(json_array_get(top, 0), "id"), all[3 + i]);
        const float *l = duet_session_logits(s, 2 + (int)i);
        double mx = l[0], z = 0;
        for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        for (int v = 0; v < V; v++) z += exp((double)l[v] - mx);
        CHECK_NEAR(json_real_value(json_object_get(e, "logprob")), (double)l[all[3 + i]] - mx - log(z), 1e-5);
        double prev = 0;
        for (size_t k = 0; k < 3; k++) {
            json_t *t = json_array_get(top, k), *b = json_object_get(t, "bytes");
            double lp = json_real_value(json_object_get(t, "logprob"));
            CHECK(json_is_string(json_object_get(t, "token")) && json_is_array(b));
            CHECK_NEAR(lp, (double)l[geti(t, "id")] - mx - log(z), 1e-5);
            CHECK(lp <= prev + 1e-12);
            prev = lp;
        }
        json_t *b = json_object_get(e, "bytes");
        for (size_t k = 0; k < json_array_size(b); k++) {
            json_int_t x = json_integer_value(json_array_get(b, k));
            CHECK(x >= 0 && x < 256);
            char ch = (char)x;
            duet_buf_add(&bytes, &ch, 1);
        }
    }
    /* the chosen tokens' bytes are the answer's text when that text is whole UTF-8 */
    const char *content = gets(a, "content");
    if (content && !strstr(content, "\xef\xbf\xbd")) {
        duet_buf_add(&bytes, "", 1);
        CHECK_STR(bytes.p, content);
    }
    free(bytes.p);
    duet_session_free(s);
    duet_model_free(m);
    json_decref(a);
}

TEST(completion_props_model_path) {
    int port = local_port();
    NEED_SERVER(port);
    resp r = http(port, "/props", NULL, NULL);
    CHECK_STR(json_string_value(json_object_get(r.js, "model_path")), g_base);
    resp_free(&r);
}

/* ---- llama-server's answer to the same request ------------------------------------------ */
/* Every field of want is in got with the same JSON type (integers and reals both numbers),
 * objects compared field by field, arrays by their first element. */
static void same_shape(json_t *want, json_t *got, const char *path) {
    int num_w = json_is_number(want), num_g = json_is_number(got);
    CHECKF(got && (json_typeof(want) == json_typeof(got) || (num_w && num_g) ||
                   (json_is_boolean(want) && json_is_boolean(got))),
           "%s: llama-server type %d, duet %s", path, json_typeof(want), got ? "differs" : "missing");
    if (!got) return;
    char sub[256];
    if (json_is_object(want)) {
        const char *k;
        json_t *v;
        json_object_foreach(want, k, v) {
            snprintf(sub, sizeof sub, "%s.%s", path, k);
            same_shape(v, json_object_get(got, k), sub);
        }
    } else if (json_is_array(want) && json_array_size(want) && json_array_size(got)) {
        snprintf(sub, sizeof sub, "%s[0]", path);
        same_shape(json_array_get(want, 0), json_array_get(got, 0), sub);
    }
}

TEST(llama_server_completion_fields_agree) {
    NEED_FIXTURES();
    NEED_LLAMA();
    int port = local_port();
    REQUIRE(port > 0);
    proc ls;
    REQUIRE(!spawn_llama(&ls, g_base));
    static const char req[] = "{\"prompt\": \"Hello\", \"n_predict\": 6, \"n_probs\": 2, \"temperature\": 0, "
                              "\"return_tokens\": true, \"policy\": \"base\"}";
    json_t *l = post(ls.port, req), *d = post(port, req);
    CHECK(l && d);
    if (l && d) {
        /* llama-server's generation settings name samplers duet lacks: only duet's subset */
        json_t *lgs = json_object_get(l, "generation_settings"), *dgs = json_object_get(d, "generation_settings");
        const char *k;
        json_t *v;
        void *tmp;
        json_object_foreach_safe(lgs, tmp, k, v) if (!json_object_get(dgs, k)) json_object_del(lgs, k);
        CHECK(json_object_size(lgs) >= 10);
        same_shape(l, d, "answer");
        /* the same model decoded greedily: the same tokens, text, pieces and probabilities */
        CHECK(json_equal(json_object_get(l, "tokens"), json_object_get(d, "tokens")));
        CHECK_STR(gets(l, "content"), gets(d, "content"));
        json_t *lp = json_object_get(l, "completion_probabilities"), *dp = json_object_get(d, "completion_probabilities");
        CHECK_EQ_INT(json_array_size(lp), json_array_size(dp));
        for (size_t i = 0; i < json_array_size(lp) && i < json_array_size(dp); i++) {
            json_t *x = json_object_get(json_array_get(lp, i), "top_logprobs");
            json_t *y = json_object_get(json_array_get(dp, i), "top_logprobs");
            for (size_t j = 0; j < json_array_size(x) && j < json_array_size(y); j++) {
                json_t *p = json_array_get(x, j), *q = json_array_get(y, j);
                CHECK_EQ_INT(geti(p, "id"), geti(q, "id"));
                CHECK_STR(gets(p, "token"), gets(q, "token"));
                CHECK(json_equal(json_object_get(p, "bytes"), json_object_get(q, "bytes")));
                CHECK_NEAR(json_real_value(json_object_get(p, "logprob")), json_real_value(json_object_get(q, "logprob")), 1e-4);
            }
        }
    }
    json_decref(l);
    json_decref(d);
    stop_serve(&ls);
}

/* id_slot names the slot that answered: an index into the server's 2 slots (-np 2), in both
 * modes (next-token and generation). */
TEST(completion_id_slot_is_a_slot_index) {
    int port = local_port();
    NEED_SERVER(port);
    const char *bodies[2] = {"{\"prompt\": \"Once upon\", \"n_predict\": 1}",
                             "{\"prompt\": \"Once upon\", \"n_predict\": 4, \"temperature\": 0}"};
    for (int i = 0; i < 2; i++) {
        resp r = http(port, "/completion", bodies[i], NULL);
        CHECK_EQ_INT(r.status, 200);
        json_t *s = json_object_get(r.js, "id_slot");
        CHECKF(json_is_integer(s) && json_integer_value(s) >= 0 && json_integer_value(s) < 2,
               "%s: id_slot %lld", bodies[i], (long long)json_integer_value(s));
        resp_free(&r);
    }
}
