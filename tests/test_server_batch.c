/* test_server_batch.c: duet serve's continuous batching. Concurrent requests are decoded in
 * shared batched steps; the oracle is the same requests sent one at a time (no batching):
 * every answer, token ids and their sources, and the per-request counts must be equal. The
 * server's /metrics must show that steps were actually shared (else the test proves nothing).
 * Also: --lora on serve gives the library's answer for the base with the adapter. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "server_client.h"

enum { NREQ = 8 };

typedef struct job {
    int port;
    char body[400];
    resp r;
    pthread_barrier_t *go;
} job;

static void *run_job(void *ud) {
    job *j = ud;
    if (j->go) pthread_barrier_wait(j->go);
    j->r = http(j->port, "/v1/completions", j->body, NULL);
    return NULL;
}

/* What must be equal: the text, the tokens with their sources, the counts. */
static char *answer_of(const resp *r) {
    json_t *ch = json_array_get(json_object_get(r->js, "choices"), 0);
    json_t *keep = json_pack("{s:O?, s:O?, s:O?, s:O?}", "text", json_object_get(ch, "text"),
                             "tokens", json_object_get(ch, "duet_tokens"), "duet",
                             json_object_get(r->js, "duet"), "usage", json_object_get(r->js, "usage"));
    char *s = keep ? json_dumps(keep, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(keep);
    return s;
}

static double metric(int port, const char *name) {
    resp r = http(port, "/metrics", NULL, NULL);
    char key[96];
    snprintf(key, sizeof key, "\nduet_%s ", name);
    const char *m = r.body ? strstr(r.body, key) : NULL;
    double v = m ? atof(m + strlen(key)) : -1;
    resp_free(&r);
    return v;
}

static void together_equals_alone(const char *serve_args, const char *what) {
    proc p;
    REQUIRE(!spawn_serve(&p, "%s -np %d --quiet", serve_args, NREQ));
    job jobs[NREQ];
    char *alone[NREQ] = {0};
    for (int i = 0; i < NREQ; i++) { /* different prompt lengths and answer lengths */
        char words[200] = "";
        for (int k = 0; k < 1 + (i * 3) % 7; k++) strcat(words, " once more");
        jobs[i] = (job){.port = p.port};
        snprintf(jobs[i].body, sizeof jobs[i].body, "{\"prompt\": \"Story %d:%s\", \"max_tokens\": "
                 "%d, \"temperature\": 0, \"duet_tokens\": true}", i, words, 60 + 12 * i);
    }
    for (int i = 0; i < NREQ; i++) { /* one at a time: each step decodes this answer alone */
        run_job(&jobs[i]);
        REQUIRE(jobs[i].r.status == 200);
        alone[i] = answer_of(&jobs[i].r);
        resp_free(&jobs[i].r);
    }
    double steps0 = metric(p.port, "batch_steps_total"), rows0 = metric(p.port, "batch_tokens_total");
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, NREQ);
    pthread_t th[NREQ];
    for (int i = 0; i < NREQ; i++) {
        jobs[i].go = &go;
        pthread_create(&th[i], NULL, run_job, &jobs[i]);
    }
    for (int i = 0; i < NREQ; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    double steps = metric(p.port, "batch_steps_total") - steps0,
           rows = metric(p.port, "batch_tokens_total") - rows0;
    for (int i = 0; i < NREQ; i++) {
        char *got = jobs[i].r.status == 200 ? answer_of(&jobs[i].r) : NULL;
        CHECKF(got && alone[i] && !strcmp(got, alone[i]), "%s: request %d sent with %d others "
               "differs from sent alone:\n  together: %.300s\n  alone:    %.300s", what, i,
               NREQ - 1, got ? got : "(failed)", alone[i] ? alone[i] : "(failed)");
        free(got);
        free(alone[i]);
        resp_free(&jobs[i].r);
    }
    /* 8 answers of 60..144 tokens (long enough to overlap on these tiny models): up to 816 answer
     * steps; shared steps make fewer passes */
    fprintf(stderr, "    %s: %.0f answer steps in %.0f batched steps (%.2f per step)\n", what,
            rows, steps, steps > 0 ? rows / steps : 0);
    CHECKF(rows > 0 && rows / steps >= 1.25, "%s: %.0f answer steps in %.0f steps: the requests "
           "were not batched, so equality proves nothing", what, rows, steps);
    CHECK_EQ_INT(stop_serve(&p), 0);
}

TEST(server_batch_concurrent_equals_alone) {
    NEED_FIXTURES();
    char args[1400];
    snprintf(args, sizeof args, "-m '%s'", g_base);
    together_equals_alone(args, "base only");
}

TEST(server_batch_local_expert_equals_alone) {
    NEED_FIXTURES();
    char args[1400];
    snprintf(args, sizeof args, "-m '%s' --expert '%s' --head '%s' --threshold 0.5", g_base,
             g_exp, g_head);
    together_equals_alone(args, "local expert");
}

/* duet serve --lora: the served greedy answer is the library's for the base with the adapter
 * attached, and differs from the bare base's (so the flag reached the model). */
static char *library_answer(const char *base, const char *lora, const char *prompt, int n) {
    duet_model *m = fixture_load(base);
    duet_lora *a = NULL;
    duet_collab *c = NULL;
    duet_gen *g = NULL;
    duet_error err = {0};
    int32_t toks[64];
    char *out = NULL;
    int nt = m ? duet_tokenize(m, prompt, strlen(prompt), 1, 0, toks, 64, &err) : -1;
    duet_collab_params cp = {.policy = DUET_POLICY_BASE};
    duet_gen_params gp = {.max_tokens = n, .utf8 = 1};
    if (nt > 0 && (!lora || (!duet_lora_load(lora, m, &a, &err) && !duet_model_add_lora(m, a, 1, &err))) &&
        !duet_collab_new(m, NULL, NULL, NULL, &cp, &c, &err) && !duet_collab_start(c, toks, nt, &err) &&
        !duet_generate(c, &gp, NULL, NULL, &g, &err))
        out = strdup(duet_gen_text(g, NULL));
    else test_fail_at(__FILE__, __LINE__, "library answer: %s", err.msg);
    duet_gen_free(g);
    duet_collab_free(c);
    duet_model_free(m);
    duet_lora_free(a);
    return out;
}

TEST(server_lora_flag) {
    NEED_FIXTURES();
    const char *base = fixture_random(0, 5, 0), *ad = fixture_lora("serve-lora.gguf", 4, 8, 0, LORA_GOOD);
    REQUIRE(base && ad);
    proc p;
    REQUIRE(!spawn_serve(&p, "-m '%s' --lora '%s' --quiet", base, ad));
    resp r = http(p.port, "/v1/completions", "{\"prompt\": \"Once\", \"max_tokens\": 20, "
                  "\"temperature\": 0}", NULL);
    const char *got = json_string_value(json_object_get(json_array_get(json_object_get(r.js,
                                        "choices"), 0), "text"));
    char *with = library_answer(base, ad, "Once", 20), *bare = library_answer(base, NULL, "Once", 20);
    CHECKF(got && with && !strcmp(got, with), "served \"%s\", library with the adapter \"%s\"",
           got ? got : "(none)", with ? with : "(none)");
    CHECKF(with && bare && strcmp(with, bare), "the adapter does not change the answer");
    free(with), free(bare);
    resp_free(&r);
    CHECK_EQ_INT(stop_serve(&p), 0);
    proc q; /* a bad adapter stops the server before it listens, naming the file */
    CHECK(spawn_serve(&q, "-m '%s' --lora /nonexistent/a.gguf --quiet", base) != 0);
    char log[4096];
    read_text(q.log, log, sizeof log);
    CHECKF(strstr(log, "/nonexistent/a.gguf"), "%s", log);
}
