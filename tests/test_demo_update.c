/* test_demo_update.c: the embedded demo's knowledge update (models/demo-update*.gguf, made by
 * `make models`). The LoRA joint system (demo-pre.gguf with demo-joint-lora.gguf and its
 * switch) never saw a factor above 12; the update, a second adapter stacked on it and a new
 * switch, was trained on products 13..15 x 2..12. On held-out problems of both kinds the
 * update must answer the new facts and still hand the old ones' digits to the expert.
 * Answers are scored here, not by eval's scorer: the reference is the product of the two
 * numbers in the question, the prediction the number after "####" in the answer. Needs
 * DUET_BIN (set by `make test`); skips when the shipped demo files are absent. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixtures.h"
#include "test.h"

#define DEMO "models/"
#define N_PROBLEMS 40 /* per side: four evals of 40 problems take well under a second */

static const char *k_files[] = {DEMO "demo-pre.gguf", DEMO "demo-expert.gguf", DEMO "demo-joint-lora.gguf",
                                DEMO "demo-joint-lora.head.gguf", DEMO "demo-update.gguf",
                                DEMO "demo-update.head.gguf", DEMO "demo-heldout.jsonl",
                                DEMO "demo-update-heldout.jsonl"};

/* The first two numbers of a question (every demo question names exactly its two factors);
 * 0 when it has fewer. */
static int factors(const char *q, long *a, long *b) {
    long v[2];
    int n = 0;
    for (const char *p = q; *p && n < 2;) {
        if (*p >= '0' && *p <= '9') {
            char *end;
            v[n++] = strtol(p, &end, 10);
            p = end;
        } else {
            p++;
        }
    }
    if (n < 2) return 0;
    *a = v[0], *b = v[1];
    return 1;
}

/* One side's result: problems answered right (by the product rule above), answers' tokens
 * and how many of them the expert wrote (eval's own counts). */
typedef struct {
    int correct, first_min, first_max;
    long tokens, deferred;
} side_result;

/* Run the collm policy of `lora_args` on data; -1 on a failed run (the test failed). */
static int run_side(const char *lora_args, const char *data, const char *tag, side_result *r) {
    static char err[8192], args[8192];
    char json[700], outs[700];
    snprintf(json, sizeof json, "%s/upd-%s.json", test_tmpdir(), tag);
    snprintf(outs, sizeof outs, "%s/upd-%s.jsonl", test_tmpdir(), tag);
    snprintf(args, sizeof args, "eval %s --expert " DEMO "demo-expert.gguf --task gsm8k --data '%s' -n 40 "
             "-t 1 --quiet --policy collm --json '%s' --outputs '%s'", lora_args, data, json, outs);
    if (fixture_run_cli(args, "demo-update", err, sizeof err) != 0) {
        test_fail_at(__FILE__, __LINE__, "%s: %s", args, err);
        return -1;
    }
    memset(r, 0, sizeof *r);
    r->first_min = 1 << 30;
    json_error_t je;
    json_t *j = json_load_file(json, 0, &je), *res = json_array_get(json_object_get(j, "results"), 0);
    r->tokens = (long)json_integer_value(json_object_get(res, "tokens"));
    r->deferred = (long)json_integer_value(json_object_get(res, "deferred"));
    json_decref(j);
    /* the questions, in order, to score each answer by its own index */
    FILE *qf = fopen(data, "rb"), *of = fopen(outs, "rb");
    if (!qf || !of) {
        if (qf) fclose(qf);
        if (of) fclose(of);
        test_fail_at(__FILE__, __LINE__, "cannot read %s or %s", data, outs);
        return -1;
    }
    static char line[8192];
    long prod[N_PROBLEMS];
    int nq = 0;
    while (nq < N_PROBLEMS && fgets(line, sizeof line, qf)) {
        json_t *o = json_loads(line, 0, &je);
        long a = 0, b = 0;
        const char *q = json_string_value(json_object_get(o, "question"));
        prod[nq++] = q && factors(q, &a, &b) ? a * b : -1;
        if (a < r->first_min) r->first_min = (int)a;
        if (a > r->first_max) r->first_max = (int)a;
        json_decref(o);
    }
    fclose(qf);
    while (fgets(line, sizeof line, of)) {
        json_t *o = json_loads(line, 0, &je);
        json_int_t i = json_integer_value(json_object_get(o, "index"));
        const char *text = json_string_value(json_object_get(o, "output"));
        const char *mark = text ? strstr(text, "####") : NULL;
        if (mark && i >= 0 && i < nq && prod[i] > 0) r->correct += strtol(mark + 4, NULL, 10) == prod[i];
        json_decref(o);
    }
    fclose(of);
    return 0;
}

TEST(demo_update_learns_new_facts_and_still_defers_on_old) {
    const char *bin = getenv("DUET_BIN");
    if (!bin || access(bin, X_OK) != 0) SKIP("DUET_BIN not set (run through make test)");
    for (size_t i = 0; i < sizeof k_files / sizeof *k_files; i++)
        if (access(k_files[i], R_OK) != 0) SKIP("models/ lacks the demo's knowledge-update files (make models)");
    const char *data[2] = {fixture_first_lines(DEMO "demo-update-heldout.jsonl", "upd-new.jsonl", N_PROBLEMS),
                           fixture_first_lines(DEMO "demo-heldout.jsonl", "upd-old.jsonl", N_PROBLEMS)};
    REQUIRE(data[0] && data[1]);
    const char *before = "-m " DEMO "demo-pre.gguf --lora " DEMO "demo-joint-lora.gguf --head " DEMO
                         "demo-joint-lora.head.gguf";
    const char *after = "-m " DEMO "demo-pre.gguf --lora " DEMO "demo-joint-lora.gguf --lora " DEMO
                        "demo-update.gguf --head " DEMO "demo-update.head.gguf";
    side_result b_new, a_new, b_old, a_old;
    REQUIRE(run_side(before, data[0], "before-new", &b_new) == 0);
    REQUIRE(run_side(after, data[0], "after-new", &a_new) == 0);
    REQUIRE(run_side(before, data[1], "before-old", &b_old) == 0);
    REQUIRE(run_side(after, data[1], "after-old", &a_old) == 0);
    /* the sides are what they claim: new problems' first factor in 13..15, old in 2..12 */
    CHECKF(b_new.first_min >= 13 && b_new.first_max <= 15, "new-fact problems' first factor %d..%d",
           b_new.first_min, b_new.first_max);
    CHECKF(b_old.first_min >= 2 && b_old.first_max <= 12, "old-fact problems' first factor %d..%d",
           b_old.first_min, b_old.first_max);
    /* New facts: neither the frozen base nor the expert knows them, so before the update
     * hardly any is right; the update has to get a good share of them (a third of the
     * problems more than before; shipped: 24 of 40 after, 0 before). */
    CHECKF(a_new.correct >= b_new.correct + N_PROBLEMS / 3, "new facts: %d/%d right after the update, %d before",
           a_new.correct, N_PROBLEMS, b_new.correct);
    /* ... and its switch stops asking the expert there, who has nothing to offer
     * (shipped: 15 expert tokens after, 82 before). */
    CHECKF(a_new.deferred > 0 || b_new.deferred > 0, "no deferral on new facts at all");
    CHECKF(2 * a_new.deferred < b_new.deferred, "new facts: %ld expert tokens after the update, %ld before",
           a_new.deferred, b_new.deferred);
    /* Old facts: the update must not have taught the base to answer them alone; the switch
     * still hands their digits to the expert (at least 3/4 of the tokens it did before;
     * shipped: 82 after, 88 before), and accuracy holds (within 10% of the problems). */
    CHECKF(b_old.deferred > 0, "old facts: the system before the update never deferred");
    CHECKF(4 * a_old.deferred >= 3 * b_old.deferred, "old facts: %ld expert tokens after the update, %ld before",
           a_old.deferred, b_old.deferred);
    CHECKF(a_old.correct >= b_old.correct - N_PROBLEMS / 10, "old facts: %d/%d right after the update, %d before",
           a_old.correct, N_PROBLEMS, b_old.correct);
}
