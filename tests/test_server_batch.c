/* test_server_batch.c: duet serve's continuous batching. Concurrent requests are decoded in
 * shared batched steps; the oracle is the same requests sent one at a time (no batching):
 * every answer, token ids and their sources, and the per-request counts must be equal. The
 * server's /metrics must show that steps were actually shared (else the test proves nothing).
 * Also: --lora on serve gives the library's answer for the base with the adapter. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixtures.h"
#include "serve/slots.h"
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
    double secs0 = metric(p.port, "batch_step_seconds_total"), t0 = duet_time_s();
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
    /* the steps' time lies within the time the test waited for the answers */
    double secs = metric(p.port, "batch_step_seconds_total") - secs0, wall = duet_time_s() - t0;
    CHECKF(secs0 >= 0 && secs > 0 && secs <= wall, "%s: %.4f s in steps during %.4f s of requests",
           what, secs, wall);
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

/* ---- the step's batch, on the slots alone -------------------------------------------------- */
typedef struct stepper {
    srv_slots *pool;
    srv_slot *sl;
    duet_gen *g;
    int rc;
} stepper;

static void *step_once(void *ud) {
    stepper *s = ud;
    duet_collab_token t;
    duet_error e = {0};
    s->rc = srv_gen_step(s->pool, s->sl, s->g, &t, &e);
    return NULL;
}

/* An answer as the server starts one: a slot, its decoder, the prompt, a running generation. */
static int start_answer(srv_slots *pool, const duet_collab_params *cp, const int32_t *prompt, int n,
                        int max_tokens, stepper *st) {
    duet_error err = {0};
    duet_collab *co = NULL;
    duet_gen_params gp = {.max_tokens = max_tokens};
    st->pool = pool;
    if (!(st->sl = srv_slot_acquire(pool, prompt, n, 1)) || srv_slot_decoder(st->sl, cp, &co, &err) ||
        srv_gen_prefill(pool, co, prompt, n, 256, &err))
        return -1;
    srv_compute_lock(pool);
    int rc = duet_collab_start(co, prompt, n, &err);
    srv_compute_unlock(pool);
    if (rc || duet_gen_new(co, &gp, &st->g, &err)) return -1;
    srv_gen_join(pool);
    return 0;
}

static void end_answer(stepper *st) {
    srv_gen_leave(st->pool);
    duet_gen_free(st->g);
    srv_slot_release(st->pool, st->sl);
}

static double pool_metric(srv_slots *pool, const char *name) {
    size_t n;
    char *text = srv_metrics_text(pool, &n), key[96];
    snprintf(key, sizeof key, "\nduet_%s ", name);
    const char *m = text ? strstr(text, key) : NULL;
    double v = m ? atof(m + strlen(key)) : -1;
    free(text);
    return v;
}

/* A step waits for the compute lock while something else holds it (a prompt chunk, seconds on
 * a real model). An answer that asks for its token meanwhile must be in that step: left for
 * the next one, it would wait for another chunk too. Here the test holds the lock; answer A
 * asks first and, alone past its gather window (1 ms before any step), leads a step that
 * waits for the lock; answer B asks while A waits. Released, one step must advance both. */
TEST(server_batch_step_takes_answers_that_asked_while_it_waited) {
    const char *path = fixture_random(0, 11, 0);
    REQUIRE(path);
    duet_model *m = fixture_load(path);
    REQUIRE(m);
    srv_slots_params sp = {.n_slots = 2, .queue_timeout_s = 5, .base = m,
                           .defaults = {.policy = DUET_POLICY_BASE, .n_ctx = 64}};
    srv_slots *pool = NULL;
    duet_error err = {0};
    int n_ctx = 0;
    REQUIRE(!srv_slots_new(&sp, &pool, &n_ctx, &err));
    const int32_t prompt[2][4] = {{1, 40, 41, 42}, {1, 50, 51, 52}};
    stepper st[2] = {0};
    for (int i = 0; i < 2; i++) REQUIRE(!start_answer(pool, &sp.defaults, prompt[i], 4, 4, &st[i]));
    pthread_t th[2];
    srv_compute_lock(pool); /* stands for a prompt chunk in progress */
    pthread_create(&th[0], NULL, step_once, &st[0]);
    usleep(300 * 1000); /* A's window (1 ms) is long over: it leads and waits for the lock */
    pthread_create(&th[1], NULL, step_once, &st[1]);
    usleep(300 * 1000); /* B has asked */
    srv_compute_unlock(pool);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    double steps = pool_metric(pool, "batch_steps_total"), rows = pool_metric(pool, "batch_tokens_total");
    CHECK(st[0].rc == DUET_OK && st[1].rc == DUET_OK);
    CHECKF(steps == 1 && rows == 2, "2 answers asked while the lock was held: %.0f steps advanced "
           "%.0f answers (want 1 step of 2)", steps, rows);
    for (int i = 0; i < 2; i++) end_answer(&st[i]);
    srv_slots_free(pool);
    duet_model_free(m);
}

/* An answer that keeps asking for tokens while other slots' prompts go in, chunk by chunk. */
typedef struct asker {
    stepper st;
    atomic_int stop;
} asker;

static void *keep_asking(void *ud) {
    asker *a = ud;
    while (!atomic_load(&a->stop)) step_once(&a->st);
    return NULL;
}

enum { PF_N = 100, PF_CHUNK = 4 };
typedef struct prefiller {
    srv_slots *pool;
    duet_collab *co;
    int32_t prompt[PF_N];
    int rc;
    duet_error err;
} prefiller;

static void *prefill_main(void *ud) {
    prefiller *p = ud;
    p->rc = srv_gen_prefill(p->pool, p->co, p->prompt, PF_N, PF_CHUNK, &p->err);
    return NULL;
}

/* While an answer runs and asks for every token at once, prompts go in one chunk per step:
 * never two chunks without a step of the running answer between them, also when two prompts
 * come at once (each waits for a step, and only one of them may go after it). Two prompts of
 * 100 tokens in 4-token chunks: 50 chunks, none of them right after another (the server's
 * count of such chunks stays 0). */
TEST(server_batch_prefill_one_chunk_between_steps) {
    const char *path = fixture_random(0, 11, 0);
    REQUIRE(path);
    duet_model *m = fixture_load(path);
    REQUIRE(m);
    srv_slots_params sp = {.n_slots = 3, .queue_timeout_s = 5, .base = m,
                           .defaults = {.policy = DUET_POLICY_BASE}};
    srv_slots *pool = NULL;
    duet_error err = {0};
    int n_ctx = 0;
    REQUIRE(!srv_slots_new(&sp, &pool, &n_ctx, &err));
    REQUIRE(n_ctx > PF_N);
    const int32_t first[4] = {1, 40, 41, 42};
    asker a = {0};
    REQUIRE(!start_answer(pool, &sp.defaults, first, 4, -1, &a.st));
    prefiller pf[2] = {0};
    srv_slot *sl[2];
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < PF_N; i++) pf[k].prompt[i] = i ? 3 + (i * 37 + k * 101) % 590 : 1;
        pf[k].pool = pool;
        REQUIRE((sl[k] = srv_slot_acquire(pool, pf[k].prompt, PF_N, 1)));
        REQUIRE(!srv_slot_decoder(sl[k], &sp.defaults, &pf[k].co, &err));
    }
    pthread_t th[3];
    pthread_create(&th[0], NULL, keep_asking, &a);
    while (pool_metric(pool, "batch_steps_total") < 1) usleep(1000); /* it is stepping */
    double c0 = pool_metric(pool, "prefill_chunks_total");
    double u0 = pool_metric(pool, "prefill_chunks_unpaced_total");
    for (int k = 0; k < 2; k++) pthread_create(&th[1 + k], NULL, prefill_main, &pf[k]);
    for (int k = 0; k < 2; k++) pthread_join(th[1 + k], NULL);
    double chunks = pool_metric(pool, "prefill_chunks_total") - c0;
    double unpaced = pool_metric(pool, "prefill_chunks_unpaced_total") - u0;
    atomic_store(&a.stop, 1);
    pthread_join(th[0], NULL);
    for (int k = 0; k < 2; k++) CHECKF(pf[k].rc == 0, "prefill %d: %s", k, pf[k].err.msg);
    CHECKF(chunks == 2 * PF_N / PF_CHUNK, "%.0f chunks counted, want %d", chunks, 2 * PF_N / PF_CHUNK);
    CHECKF(unpaced == 0, "%.0f of %.0f chunks went right after another chunk, with no step of "
           "the running answer between them", unpaced, chunks);
    for (int k = 0; k < 2; k++) srv_slot_release(pool, sl[k]);
    end_answer(&a.st);
    srv_slots_free(pool);
    duet_model_free(m);
}
