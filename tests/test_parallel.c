/* test_parallel.c: --parallel N of duet eval, tune and score. Whatever N, the files they
 * write are the same bytes as with N = 1 (one problem or sequence at a time): answers and
 * their order, counts, thresholds, score records; only the timing fields (tokens_per_second)
 * are left out of the comparison. Runs on the embedded demo models (models/), whose answers
 * end at different lengths, so that problems finish out of order on the decoders. Needs
 * DUET_BIN (set by `make test`). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures.h"
#include "test.h"

#define DEMO "models/"
#define N_PROBLEMS 10

static const char *duet_bin(void) {
    const char *b = getenv("DUET_BIN");
    return b && access(b, X_OK) == 0 ? b : NULL;
}

#define NEED_BIN_AND_DEMO()                                                                  \
    do {                                                                                     \
        if (!duet_bin()) SKIP("DUET_BIN not set (run through make test)");                   \
        REQUIRE(access(DEMO "demo-base.gguf", R_OK) == 0 &&                                  \
                access(DEMO "demo-heldout.jsonl", R_OK) == 0);                               \
    } while (0)

static int run_duet(const char *args, char *err, size_t cap) {
    return fixture_run_cli(args, "parallel", err, cap);
}

static void tmp(char *buf, size_t cap, const char *name, int n) {
    snprintf(buf, cap, "%s/par-%s-%d", test_tmpdir(), name, n);
}

/* The file with the timing left out: JSON lines naming tokens_per_second are dropped, and
 * in a CSV whose header has a tokens_per_second column, that column. Caller frees. */
static char *without_timing(const char *path) {
    char *s = fixture_read_file(path, NULL);
    if (!s) return NULL;
    int col = -1; /* the CSV column to drop */
    char *nl = strchr(s, '\n');
    if (nl && !strchr(s, '{') && strstr(s, "tokens_per_second") && strstr(s, "tokens_per_second") < nl) {
        col = 0;
        for (const char *p = s; p < strstr(s, "tokens_per_second"); p++) col += *p == ',';
    }
    char *out = malloc(strlen(s) + 1), *o = out;
    for (char *line = s; out && *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line + 1) : strlen(line);
        if (col >= 0) { /* every field but the col-th (and the comma before it) */
            int f = 0;
            for (size_t i = 0; i < len; i++) {
                f += line[i] == ',';
                if (f != col || line[i] == '\n') *o++ = line[i];
            }
        } else if (!memmem(line, len, "tokens_per_second", 17)) {
            memcpy(o, line, len);
            o += len;
        }
        line += len;
    }
    if (out) *o = 0;
    free(s);
    return out;
}

/* Whole files equal, byte for byte (timing=1: once the timing is left out). */
static int same_file(const char *a, const char *b, int timing) {
    size_t na = 0, nb = 0;
    char *x = timing ? without_timing(a) : fixture_read_file(a, &na);
    char *y = timing ? without_timing(b) : fixture_read_file(b, &nb);
    if (timing && x && y) na = strlen(x), nb = strlen(y);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static const int k_parallel[3] = {1, 3, 16}; /* 16: more decoders than problems */

TEST(parallel_eval_writes_the_same_results) {
    NEED_BIN_AND_DEMO();
    static char err[8192], args[8192];
    /* every generating policy, thresholds from a rate (a calibration pass), random seeded;
     * the demo's own run: random at the rate collm reached; a base with a LoRA adapter */
    const char *runs[3] = {
        "-m " DEMO "demo-base.gguf --head " DEMO "demo-base.head.gguf --anti " DEMO "demo-joint.gguf -s 5 "
        "--calib 4 --defer-rate 0.2 --policy base,expert,collm,random,confidence,compose,uncertainty,contrastive,proxy",
        "-m " DEMO "demo-base.gguf --head " DEMO "demo-base.head.gguf -s 3",
        "-m " DEMO "demo-pre.gguf --lora " DEMO "demo-joint-lora.gguf --head " DEMO "demo-joint-lora.head.gguf "
        "-s 7 --policy collm,random"};
    for (int r = 0; r < 3; r++) {
        char json[3][700], outs[3][700];
        for (int k = 0; k < 3; k++) {
            char name[32];
            snprintf(name, sizeof name, "eval%d", r);
            tmp(json[k], sizeof json[k], name, k_parallel[k]);
            strcat(json[k], ".json");
            tmp(outs[k], sizeof outs[k], name, k_parallel[k]);
            strcat(outs[k], ".jsonl");
            snprintf(args, sizeof args, "eval --expert " DEMO "demo-expert.gguf "
                     "--task gsm8k --data " DEMO "demo-heldout.jsonl --limit %d -n 40 -t 1 --quiet %s "
                     "--json '%s' --outputs '%s' --parallel %d", N_PROBLEMS, runs[r], json[k], outs[k],
                     k_parallel[k]);
            REQUIRE(run_duet(args, err, sizeof err) == 0 || (test_fail_at(__FILE__, __LINE__, "%s: %s", args, err), 0));
        }
        for (int k = 1; k < 3; k++) {
            CHECKF(same_file(outs[0], outs[k], 0), "run %d: --outputs with --parallel %d differs from 1", r,
                   k_parallel[k]);
            CHECKF(same_file(json[0], json[k], 1), "run %d: --json with --parallel %d differs from 1", r, k_parallel[k]);
        }
        /* the comparison means something: answers of several lengths (so decoders finish
         * out of problem order), and the random policy deferred */
        json_error_t je;
        json_t *j = json_load_file(json[0], 0, &je), *res = json_object_get(j, "results");
        int random_deferred = -1;
        for (size_t i = 0; i < json_array_size(res); i++) {
            json_t *o = json_array_get(res, i);
            if (!strcmp(json_string_value(json_object_get(o, "policy")), "random"))
                random_deferred = (int)json_integer_value(json_object_get(o, "deferred"));
        }
        json_decref(j);
        CHECKF(random_deferred > 0, "run %d: random deferred %d tokens", r, random_deferred);
        FILE *f = fopen(outs[0], "rb");
        REQUIRE(f);
        char line[4096];
        size_t lens[N_PROBLEMS] = {0};
        for (int i = 0; i < N_PROBLEMS && fgets(line, sizeof line, f); i++) {
            json_t *o = json_loads(line, 0, &je);
            const char *text = json_string_value(json_object_get(o, "output"));
            lens[i] = text ? strlen(text) : 0;
            json_decref(o);
        }
        fclose(f);
        int distinct = 0;
        for (int i = 0; i < N_PROBLEMS; i++) {
            int seen = 0;
            for (int k = 0; k < i; k++) seen |= lens[k] == lens[i];
            distinct += !seen;
        }
        CHECKF(distinct >= 3, "run %d: the first policy's answers have only %d distinct lengths", r, distinct);
    }
}

TEST(parallel_tune_writes_the_same_files) {
    NEED_BIN_AND_DEMO();
    static char err[8192], args[8192];
    char prefix[3][700], head[3][700];
    size_t n = 0;
    char *h = fixture_read_file(DEMO "demo-base.head.gguf", &n);
    REQUIRE(h);
    for (int k = 0; k < 3; k++) {
        tmp(prefix[k], sizeof prefix[k], "tune", k_parallel[k]);
        tmp(head[k], sizeof head[k], "tune-head", k_parallel[k]);
        strcat(head[k], ".gguf");
        FILE *f = fopen(head[k], "wb");
        REQUIRE(f && fwrite(h, 1, n, f) == n);
        fclose(f);
        snprintf(args, sizeof args, "tune -m " DEMO "demo-base.gguf --expert " DEMO "demo-expert.gguf --head '%s' "
                 "--task gsm8k --data " DEMO "demo-heldout.jsonl --limit %d -n 40 -t 1 --quiet --calib 4 "
                 "--portions 0,0.1,0.3 -o '%s' --parallel %d", head[k], N_PROBLEMS, prefix[k], k_parallel[k]);
        REQUIRE(run_duet(args, err, sizeof err) == 0 || (test_fail_at(__FILE__, __LINE__, "%s: %s", args, err), 0));
    }
    free(h);
    for (int k = 1; k < 3; k++) {
        static const char *ext[3] = {"csv", "json", "svg"};
        for (int e = 0; e < 3; e++) {
            char a[800], b[800];
            snprintf(a, sizeof a, "%s.%s", prefix[0], ext[e]);
            snprintf(b, sizeof b, "%s.%s", prefix[k], ext[e]);
            CHECKF(same_file(a, b, e < 2), "tune %s with --parallel %d differs from 1", ext[e], k_parallel[k]);
        }
        CHECKF(same_file(head[0], head[k], 0), "tuned head with --parallel %d differs from 1", k_parallel[k]);
    }
}

TEST(parallel_score_writes_the_same_file) {
    NEED_BIN_AND_DEMO();
    static char err[8192], args[8192];
    const char *data = fixture_first_lines(DEMO "demo-heldout.jsonl", "par-score.jsonl", N_PROBLEMS);
    REQUIRE(data);
    char jsonl[700];
    snprintf(jsonl, sizeof jsonl, "%s", data);
    /* plain text: one paragraph cut into windows of the context */
    char *all = fixture_read_file(DEMO "demo-heldout.jsonl", NULL);
    REQUIRE(all);
    all[4000] = 0;
    for (char *p = all; *p; p++)
        if (*p == '\n' || *p == '"' || *p == '{' || *p == '}') *p = ' ';
    const char *text = test_path(test_tmpdir(), "par-score.txt");
    FILE *f = fopen(text, "wb");
    REQUIRE(f);
    fputs(all, f);
    fclose(f);
    free(all);
    /* prompts that share a long prefix (the eval prompt), so that a session keeps the KV
     * cache of what its previous sequence shared with the next */
    char *q = fixture_read_file(data, NULL);
    REQUIRE(q);
    const char *shared = test_path(test_tmpdir(), "par-score-shared.jsonl");
    char shared_path[700];
    snprintf(shared_path, sizeof shared_path, "%s", shared);
    f = fopen(shared_path, "wb");
    REQUIRE(f);
    for (char *line = strtok(q, "\n"); line; line = strtok(NULL, "\n")) {
        char *a = strstr(line, "\", \"answer\": \"");
        REQUIRE(!strncmp(line, "{\"question\": \"", 14) && a);
        fprintf(f, "{\"prompt\": \"Please solve the following math problem with detailed steps.\\n\\nQuestion: "
                   "%.*s\\nAnswer:\", \"response\": \"%s\n", (int)(a - line - 14), line + 14, a + 14);
    }
    fclose(f);
    free(q);
    /* the expert on the base's tokens (vocabulary bridge), the base over text windows, and
     * the base on the shared-prefix prompts */
    const char *runs[3][2] = {{"-m " DEMO "demo-expert.gguf --tokenizer-of " DEMO "demo-base.gguf", jsonl},
                              {"-m " DEMO "demo-base.gguf -c 48", text},
                              {"-m " DEMO "demo-base.gguf", shared_path}};
    for (int r = 0; r < 3; r++) {
        char out[3][700];
        for (int k = 0; k < 3; k++) {
            char name[32];
            snprintf(name, sizeof name, "score%d", r);
            tmp(out[k], sizeof out[k], name, k_parallel[k]);
            snprintf(args, sizeof args, "score %s -d '%s' -o '%s' -t 1 --quiet --parallel %d", runs[r][0],
                     runs[r][1], out[k], k_parallel[k]);
            REQUIRE(run_duet(args, err, sizeof err) == 0 || (test_fail_at(__FILE__, __LINE__, "%s: %s", args, err), 0));
        }
        for (int k = 1; k < 3; k++)
            CHECKF(same_file(out[0], out[k], 0), "score run %d with --parallel %d differs from 1", r, k_parallel[k]);
    }
}
