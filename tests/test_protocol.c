/* test_protocol.c: the official Co-LLM evaluation protocol. MT19937 against its published
 * reference outputs; Python's random.sample and numpy's RandomState.choice against python3
 * itself (skipped without it); the official splits of the public files pinned by ids that an
 * independent Python computation gave; the official prompts written out by hand; a table of
 * hand-checked answers under both scorers; `duet eval --protocol paper` naming its protocol
 * and scoring with both scorers' results; `duet data split`. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duet.h"
#include "fixtures.h"
#include "format/quant.h"
#include "learn/answers.h"
#include "learn/protocol.h"
#include "learn/pyrandom.h"
#include "test.h"

/* ---- MT19937 ------------------------------------------------------------------------- */
/* The reference implementation's published outputs (mt19937ar.out: init_by_array with
 * {0x123, 0x234, 0x345, 0x456}; and the C++ standard's mt19937 default seed 5489, whose
 * 10000th output the standard fixes at 4123659995). */
TEST(protocol_mt19937_reference_outputs) {
    mt19937 m;
    uint32_t key[4] = {0x123, 0x234, 0x345, 0x456};
    mt_init_by_array(&m, key, 4);
    const uint32_t want[5] = {1067595299u, 955945823u, 477289528u, 4107218783u, 4228976476u};
    for (int i = 0; i < 5; i++) CHECK(mt_next32(&m) == want[i]);
    mt_init_genrand(&m, 5489u);
    uint32_t x = 0;
    for (int i = 0; i < 10000; i++) x = mt_next32(&m);
    CHECKF(x == 4123659995u, "10000th output %u", x);
}

/* Run a python3 one-liner (interpreter first that works) and read its single output line. */
static int python_line(const char *const *interps, int n_interps, const char *code, char *out, size_t cap) {
    for (int k = 0; k < n_interps; k++) {
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "%s -c \"%s\" 2>/dev/null", interps[k], code);
        FILE *p = popen(cmd, "r");
        if (!p) continue;
        size_t n = fread(out, 1, cap - 1, p);
        out[n] = 0;
        if (pclose(p) == 0 && n > 0) return 1;
    }
    return 0;
}

static void join_ints(const int *v, int n, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < n && o + 16 < cap; i++) o += (size_t)snprintf(out + o, cap - o, "%s%d", i ? " " : "", v[i]);
    if (o + 2 < cap) out[o++] = '\n', out[o] = 0;
}

/* Shapes on both sides of CPython's pool/set cut (n <= 21 + 4^ceil(log4(3k)) uses the pool:
 * 21 for k = 5, 85 for k = 16, 277 for k = 22; near the cut the two differ only when a draw
 * repeats or falls past the shrinking pool, hence k large for its n). */
static const int k_shapes[][2] = {{10, 3}, {5, 5}, {21, 5}, {22, 5}, {85, 16}, {86, 16}, {277, 22},
                                  {100, 30}, {1319, 200}, {1119, 50}, {200, 10}, {1, 1}};

TEST(protocol_random_sample_matches_python) {
    static const char *py[] = {"python3"};
    char probe[64];
    if (!python_line(py, 1, "print(1)", probe, sizeof probe)) SKIP("python3 is not installed");
    for (size_t s = 0; s < sizeof k_shapes / sizeof k_shapes[0]; s++) {
        int n = k_shapes[s][0], k = k_shapes[s][1], got[256];
        char code[256], want[4096], mine[4096];
        snprintf(code, sizeof code, "import random; random.seed(42); print(' '.join(map(str, random.sample(range(%d), %d))))", n, k);
        REQUIRE(python_line(py, 1, code, want, sizeof want));
        mt19937 m;
        py_random_seed(&m, 42);
        REQUIRE(py_sample(&m, n, k, got) == 0);
        join_ints(got, k, mine, sizeof mine);
        CHECKF(!strcmp(mine, want), "sample(%d, %d): python %.60s..., duet %.60s...", n, k, want, mine);
    }
    /* a second draw continues the same stream, as the validation draw does */
    char want[4096], mine[4096];
    REQUIRE(python_line(py, 1, "import random; random.seed(7); random.sample(range(300), 40); "
                        "print(' '.join(map(str, random.sample(range(260), 12))))", want, sizeof want));
    mt19937 m;
    int a[40], b[12];
    py_random_seed(&m, 7);
    REQUIRE(!py_sample(&m, 300, 40, a) && !py_sample(&m, 260, 12, b));
    join_ints(b, 12, mine, sizeof mine);
    CHECKF(!strcmp(mine, want), "second draw: python %s duet %s", want, mine);
}

TEST(protocol_numpy_choice_matches_numpy) {
    static const char *py[] = {"python3", "/usr/bin/python3"};
    char probe[64];
    if (!python_line(py, 2, "import numpy; print(1)", probe, sizeof probe)) SKIP("no python3 with numpy");
    for (size_t s = 0; s < sizeof k_shapes / sizeof k_shapes[0]; s++) {
        int n = k_shapes[s][0], k = k_shapes[s][1], got[256];
        char code[400], want[4096], mine[4096];
        /* two choices from one RandomState: groupby().sample shares it across the groups */
        snprintf(code, sizeof code, "import numpy as np; r = np.random.RandomState(42); r.choice(57, 27, replace=False); "
                 "print(' '.join(map(str, r.choice(%d, %d, replace=False))))", n, k);
        REQUIRE(python_line(py, 2, code, want, sizeof want));
        mt19937 m;
        int first[27];
        np_random_seed(&m, 42);
        REQUIRE(np_choice(&m, 57, 27, first) == 0 && np_choice(&m, n, k, got) == 0);
        join_ints(got, k, mine, sizeof mine);
        CHECKF(!strcmp(mine, want), "choice(%d, %d): numpy %.60s..., duet %.60s...", n, k, want, mine);
    }
}

/* ---- the official splits of the public files ---------------------------------------- */
/* The first five problems of each split. GSM8K: line numbers (from 0) in test.jsonl; MATH:
 * the "idx" field. They come from running the official loaders' own steps in Python
 * (random.seed(42); random.sample over the parsed test problems; pandas
 * df.groupby(["level", "type"]).sample(27, random_state=42) then head(25)/tail(2)), not
 * from duet. */
static const int k_gsm_test[5] = {1309, 228, 51, 563, 501}, k_gsm_val[5] = {1137, 594, 977, 463, 233};
static const int k_math_test[5] = {848, 532, 925, 179, 350}, k_math_val[5] = {983, 377, 1350, 1283, 1741};

static void check_split(int task, const char *path, int split, int want_n, const int *want5, int use_idx) {
    jsonl_rec *r = NULL;
    int n = 0, n_idx = 0;
    duet_error err = {0};
    REQUIRE(!protocol_read_jsonl(path, &r, &n, &err));
    int *idx = malloc((size_t)n * sizeof *idx);
    REQUIRE(idx);
    CHECKF(!protocol_split(task, split, r, n, path, idx, &n_idx, &err), "%s", err.msg);
    CHECK_EQ_INT(n_idx, want_n);
    for (int i = 0; i < 5 && i < n_idx; i++) {
        int id = use_idx ? (int)json_integer_value(json_object_get(r[idx[i]].o, "idx")) : idx[i];
        CHECKF(id == want5[i], "%s split %d: problem %d is %d, not %d", path, split, i, id, want5[i]);
    }
    free(idx);
    protocol_free_jsonl(r, n);
}

TEST(protocol_official_splits_of_the_public_files) {
    const char *gsm = fixture_shared("data/gsm8k/test.jsonl"), *math = fixture_shared("data/math/MATH_test5000.jsonl");
    if (!gsm || !math) SKIP("../shared/data (gsm8k test, MATH test5000) is absent");
    check_split(DUET_EVAL_TASK_GSM8K, gsm, DUET_EVAL_SPLIT_TEST, 200, k_gsm_test, 0);
    check_split(DUET_EVAL_TASK_GSM8K, gsm, DUET_EVAL_SPLIT_VALIDATION, 50, k_gsm_val, 0);
    check_split(DUET_EVAL_TASK_MATH, math, DUET_EVAL_SPLIT_TEST, 35 * 25, k_math_test, 1);
    check_split(DUET_EVAL_TASK_MATH, math, DUET_EVAL_SPLIT_VALIDATION, 35 * 2, k_math_val, 1);
}

/* `duet data split` writes the same problems, each line as the file has it. */
TEST(protocol_cli_data_split) {
    const char *gsm = fixture_shared("data/gsm8k/test.jsonl");
    if (!gsm) SKIP("../shared/data/gsm8k/test.jsonl is absent");
    if (!getenv("DUET_BIN")) SKIP("DUET_BIN not set (run through make test)");
    char t[600], v[600], args[2000], err[2048];
    snprintf(t, sizeof t, "%s/split-test.jsonl", test_tmpdir());
    snprintf(v, sizeof v, "%s/split-val.jsonl", test_tmpdir());
    snprintf(args, sizeof args, "data split --task gsm8k --data '%s' --out-test '%s' --out-val '%s'", gsm, t, v);
    CHECKF(fixture_run_cli(args, "data-split", err, sizeof err) == 0, "duet data split: %s", err);
    char *all = fixture_read_file(gsm, NULL), *ts = fixture_read_file(t, NULL), *vs = fixture_read_file(v, NULL);
    REQUIRE(all && ts && vs);
    /* line i of the source file */
    const char *lines[1400];
    int nl = 0;
    for (char *p = all, *save = NULL, *l = strtok_r(p, "\n", &save); l && nl < 1400; l = strtok_r(NULL, "\n", &save))
        lines[nl++] = l;
    CHECK_EQ_INT(nl, 1319);
    const char *files[2] = {ts, vs};
    const int *want[2] = {k_gsm_test, k_gsm_val}, want_n[2] = {200, 50};
    for (int f = 0; f < 2; f++) {
        int n = 0;
        for (const char *p = files[f]; *p; p++) n += *p == '\n';
        CHECK_EQ_INT(n, want_n[f]);
        const char *p = files[f];
        for (int i = 0; i < 5; i++) {
            const char *e = strchr(p, '\n');
            REQUIRE(e);
            CHECKF((size_t)(e - p) == strlen(lines[want[f][i]]) && !strncmp(p, lines[want[f][i]], (size_t)(e - p)),
                   "split %d line %d is not source line %d", f, i, want[f][i]);
            p = e + 1;
        }
    }
    free(all), free(ts), free(vs);
    /* usage errors */
    CHECK(fixture_run_cli("data split --task nll --data x", "data-split", err, sizeof err) == 2);
    CHECK(fixture_run_cli("data nosuch", "data-split", err, sizeof err) == 2);
}

/* A MATH file with a group too small for the official draw fails naming the group. */
TEST(protocol_math_split_needs_27_per_group) {
    char path[600];
    snprintf(path, sizeof path, "%s/math-small.jsonl", test_tmpdir());
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    for (int i = 0; i < 30; i++)
        fprintf(f, "{\"problem\": \"p%d\", \"level\": \"Level 1\", \"type\": \"%s\", \"solution\": \"\\\\boxed{1}\"}\n", i,
                i < 28 ? "Algebra" : "Geometry");
    fclose(f);
    jsonl_rec *r = NULL;
    int n = 0, n_idx = 0, idx[30];
    duet_error err = {0};
    REQUIRE(!protocol_read_jsonl(path, &r, &n, &err));
    CHECK(protocol_split(DUET_EVAL_TASK_MATH, DUET_EVAL_SPLIT_TEST, r, n, path, idx, &n_idx, &err) == DUET_ERR_FORMAT);
    CHECKF(strstr(err.msg, "Geometry") && strstr(err.msg, "27"), "%s", err.msg);
    protocol_free_jsonl(r, n);
}

/* ---- prompts --------------------------------------------------------------------------- */
TEST(protocol_paper_prompts_written_out) {
    char *g = protocol_prompt(DUET_EVAL_TASK_GSM8K, DUET_EVAL_PROTOCOL_PAPER, "  Tom has 3 apples. How many?\n");
    CHECK_STR(g, "Please solve the following math problem with detailed steps.\n\nQuestion: Tom has 3 apples. "
                 "How many?\nAnswer:");
    char *m = protocol_prompt(DUET_EVAL_TASK_MATH, DUET_EVAL_PROTOCOL_PAPER, "What is $1+1$?\n");
    CHECK_STR(m, "Given a mathematics problem, determine the answer. Simplify your answer as much as possible. "
                 "You can use latex to format your answer and you should state your final answer as \"The final "
                 "answer is $(final-answer)$.\"\n\nProblem: What is $1+1$?\n\nSolution:");
    /* duet's own prompt: the same GSM8K frame for both tasks, the question as given */
    char *d = protocol_prompt(DUET_EVAL_TASK_MATH, DUET_EVAL_PROTOCOL_DUET, "What is $1+1$?\n");
    CHECK_STR(d, "Please solve the following math problem with detailed steps.\n\nQuestion: What is $1+1$?\n\nAnswer:");
    free(g), free(m), free(d);
}

/* ---- scorers --------------------------------------------------------------------------- */
/* Hand-checked verdicts of both scorers. GSM8K paper: commas between digits dropped, last
 * match of [-+]?\d*\.\d+|\d+, then both sides lower-cased without punctuation (so "-5" is
 * "5" and "3.5" is "35"); duet: numeric comparison of the last number. MATH paper: only a
 * lower-case "the final answer is" counts, then the Hendrycks normalisation; duet: the last
 * box or the phrase in any case, plus commas, quotes-free numbers and values. */
typedef struct verdict { const char *output, *reference; int paper, duet; } verdict;

static const verdict k_gsm[] = {
    {"so she makes 18 dollars.", "#### 18", 1, 1},
    {"The loss is -5.", "#### 5", 1, 0},           /* paper: the sign is punctuation */
    {"-5", "#### -5", 1, 1},
    {"It costs 1,000 dollars", "#### 1000", 1, 1},
    {"1,000", "#### 1,000", 1, 1},                 /* the reference loses its comma too */
    {"The answer is 3.5", "#### 35", 1, 0},        /* paper: "3.5" -> "35" */
    {"She has 18.0 apples", "#### 18", 0, 1},      /* paper: "180" != "18" */
    {"5 - 3 = 2, so 2 left\n\nQuestion: 7", "#### 2", 0, 0}, /* both: the last number, 7 */
    {"no idea", "#### 4", 0, 0},
    {"1,2,3", "#### 3", 1, 1},                     /* "1,2,3" -> "12,3": last is 3 */
    {"x = 12.", "#### 12", 1, 1},
    {"about .5 of it", "#### 0.5", 0, 1},          /* paper: "5" != "05" */
    {"16-3 = 13", "#### 13", 1, 1},
    {"Total: $1,234.50", "#### 1234.5", 0, 1},     /* paper: "123450" != "12345" */
    {"+7 more", "#### 7", 1, 1},
    {"1.2.3", "#### .3", 1, 0},                    /* paper: last match ".3"; duet: 3 != 0.3 */
};

static const verdict k_math[] = { /* reference: the solution; its last box is the answer */
    {"... The final answer is $5$.", "\\boxed{5}", 0, 1},  /* paper: capital T is not found */
    {"so the final answer is $5$.", "\\boxed{5}", 1, 1},
    {"We get \\boxed{12}.", "\\boxed{12}", 0, 1},           /* paper: no phrase, no answer */
    {"the final answer is $\\frac12$.", "\\boxed{\\frac{1}{2}}", 1, 1},
    {"the final answer is $0.5$", "\\boxed{\\frac{1}{2}}", 1, 1},
    {"the final answer is $1/2$", "\\boxed{\\frac12}", 1, 1},
    {"the final answer is $1,000$", "\\boxed{1000}", 0, 1}, /* paper keeps the comma */
    {"the final answer is $x = 3$", "\\boxed{3}", 1, 1},
    {"the final answer is $10\\text{ cm}$", "\\boxed{10}", 1, 1},
    {"the final answer is $-5$", "\\boxed{5}", 0, 0},
    {"the final answer is $\\text{even}$", "\\boxed{\\text{even}}", 1, 1},
    {"the final answer is \\boxed{7}.\nDone", "\\boxed{7}", 1, 1},
    {"the final answer is $90^\\circ$", "\\boxed{90}", 1, 1},
    {"the final answer is $\\dfrac{3}{4}$", "\\boxed{\\frac34}", 1, 1},
    {"the final answer is $3 / x$", "\\boxed{3/x}", 0, 1},  /* paper: int("x") raises: raw compare */
    {"the final answer is $(1,2)$", "\\boxed{(1, 2)}", 1, 1},
    {"the final answer is 12.\nNext the final answer is $4$", "\\boxed{4}", 1, 1},
    {"the final answer is \"odd\".", "\\boxed{\\text{odd}}", 1, 0}, /* paper unquotes */
    {"the final answer is $\\sqrt3$", "\\boxed{\\sqrt{3}}", 1, 1},
    {"the final answer is $50\\%$", "\\boxed{50\\%}", 1, 1},
};

TEST(protocol_scorers_paper_and_duet_table) {
    for (size_t i = 0; i < sizeof k_gsm / sizeof k_gsm[0]; i++) {
        const verdict *v = &k_gsm[i];
        char ref[ANSWERS_CAP];
        REQUIRE(answers_gsm8k_paper_reference(v->reference, ref, sizeof ref));
        int p = answers_gsm8k_paper_correct(v->output, ref, NULL, 0), d = answers_gsm8k_correct(v->output, v->reference);
        CHECKF(p == v->paper && d == v->duet, "gsm8k %zu %s vs %s: paper %d (want %d), duet %d (want %d)", i, v->output,
               v->reference, p, v->paper, d, v->duet);
    }
    for (size_t i = 0; i < sizeof k_math / sizeof k_math[0]; i++) {
        const verdict *v = &k_math[i];
        char gold[ANSWERS_CAP], box[ANSWERS_CAP];
        REQUIRE(answers_math_paper_gold(v->reference, gold, sizeof gold));
        REQUIRE(answers_math_extract(v->reference, box, sizeof box));
        int p = answers_math_paper_correct(v->output, gold, NULL, 0), d = answers_math_correct(v->output, box);
        CHECKF(p == v->paper && d == v->duet, "math %zu %s vs %s: paper %d (want %d), duet %d (want %d)", i, v->output,
               v->reference, p, v->paper, d, v->duet);
    }
}

/* What the paper scorers extract, by hand. */
TEST(protocol_paper_extraction) {
    char p[256];
    answers_gsm8k_paper_pred("a 1,234,567 b 2,5", p, sizeof p); /* -> "a 1234567 b 25" */
    CHECK_STR(p, "25");
    answers_gsm8k_paper_pred("none here", p, sizeof p);
    CHECK_STR(p, "none here");
    CHECK(answers_gsm8k_paper_reference("x #### 1,234 \n", p, sizeof p) && !strcmp(p, "1234"));
    CHECK(!answers_gsm8k_paper_reference("no marker", p, sizeof p));
    CHECK(answers_math_paper_extract("the final answer is $\\boxed{3}$.\nmore", p, sizeof p) && !strcmp(p, "3"));
    CHECK(answers_math_paper_extract("the final answer is\n$7$ and $8$", p, sizeof p) && !strcmp(p, "7"));
    CHECK(!answers_math_paper_extract("The final answer is $7$", p, sizeof p));
    CHECK(answers_math_paper_gold("a \\boxed{1} then \\boxed{\\frac{2}{3}} end", p, sizeof p) && !strcmp(p, "\\frac{2}{3}"));
    CHECK(answers_math_paper_last_boxed("\\fbox{4}", p, sizeof p) && !strcmp(p, "\\fbox{4}"));
}

/* ---- the CLI ----------------------------------------------------------------------------- */
static const char *k_gsm3 =
    "{\"question\": \"Tom has 3 apples and buys 2 more. How many?\", \"answer\": \"3 + 2 = 5\\n#### 5\"}\n"
    "{\"question\": \"A box holds 4 pens. How many pens in 2 boxes?\", \"answer\": \"#### 8\"}\n"
    "{\"question\": \"What is 10 minus 7?\", \"answer\": \"#### 3\"}\n";

static json_t *run_eval_json(const char *extra, const char *tag) {
    const char *bp = fixture_random(DT_F32, 51, 0);
    if (!bp) return NULL;
    char data[600], json[600], args[4000], err[4096];
    snprintf(data, sizeof data, "%s/proto-gsm3.jsonl", test_tmpdir());
    snprintf(json, sizeof json, "%s/proto-%s.json", test_tmpdir(), tag);
    FILE *f = fopen(data, "wb");
    if (!f) return NULL;
    fputs(k_gsm3, f);
    fclose(f);
    snprintf(args, sizeof args, "eval -m '%s' --task gsm8k --data '%s' -n 8 -c 128 -t 2 --json '%s' %s", bp, data, json,
             extra);
    int rc = fixture_run_cli(args, tag, err, sizeof err);
    CHECKF(rc == 0, "duet eval %s: %s", extra, err);
    return rc ? NULL : json_load_file(json, 0, NULL);
}

TEST(protocol_cli_eval_json_names_protocol_and_both_scorers) {
    if (!getenv("DUET_BIN")) SKIP("DUET_BIN not set (run through make test)");
    static const struct { const char *flags, *protocol, *scoring, *split; } runs[] = {
        {"", "duet", "duet", "all"},
        {"--protocol paper --split all", "paper", "paper", "all"},
        {"--protocol paper --split all --scoring duet", "paper", "duet", "all"},
        {"--scoring paper", "duet", "paper", "all"},
    };
    for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
        char tag[32];
        snprintf(tag, sizeof tag, "run%zu", k);
        json_t *j = run_eval_json(runs[k].flags, tag);
        REQUIRE(j);
        CHECK_STR(json_string_value(json_object_get(j, "protocol")), runs[k].protocol);
        CHECK_STR(json_string_value(json_object_get(j, "scoring")), runs[k].scoring);
        CHECK_STR(json_string_value(json_object_get(j, "split")), runs[k].split);
        json_t *r = json_array_get(json_object_get(j, "results"), 0), *sc = json_object_get(r, "scorers");
        REQUIRE(r && sc);
        json_t *chosen = json_object_get(sc, runs[k].scoring);
        CHECK(json_integer_value(json_object_get(r, "examples")) == 3);
        /* the row's value and count are the chosen scorer's */
        CHECK(json_integer_value(json_object_get(r, "correct")) == json_integer_value(json_object_get(chosen, "correct")));
        CHECK(json_real_value(json_object_get(r, "value")) == json_real_value(json_object_get(chosen, "value")));
        CHECK(json_object_get(json_object_get(sc, "paper"), "value") && json_object_get(json_object_get(sc, "duet"), "value"));
        json_decref(j);
    }
    char err[2048];
    CHECK(fixture_run_cli("eval -m x --task gsm8k --data y --protocol nosuch", "proto-bad", err, sizeof err) == 2 &&
          strstr(err, "nosuch"));
    CHECK(fixture_run_cli("eval -m x --task gsm8k --data y --scoring nosuch", "proto-bad", err, sizeof err) == 2);
    /* three problems cannot give the official test split (it draws 10 validation problems
     * from a small file, so the test split is all three; the validation split fails) */
    const char *bp = fixture_random(DT_F32, 51, 0);
    char args[2000], data[600];
    snprintf(data, sizeof data, "%s/proto-gsm3.jsonl", test_tmpdir());
    snprintf(args, sizeof args, "eval -m '%s' --task gsm8k --data '%s' -n 4 -c 128 --protocol paper --split validation",
             bp, data);
    CHECKF(fixture_run_cli(args, "proto-val", err, sizeof err) == 1 && strstr(err, "validation split draws 10"), "%s", err);
}

/* ---- training data frames ----------------------------------------------------------------- */
/* The official completion format, written out by hand from its recipe: GSM8K user text
 * "Please solve ...\n\nProblem: " + Q and assistant text "Answer: " + A + ".", each stripped
 * whole; messages: the first two contents, stripped; prompt/response untouched. */
TEST(protocol_paper_training_frames) {
    static const char jsonl[] =
        "{\"question\": \" Tom has 3 apples.\\n\", \"answer\": \"3 + 2 = 5\\n#### 5\"}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"  Hi there \\n\"}, {\"role\": \"assistant\", "
        "\"content\": \"\\nHello! \"}, {\"role\": \"user\", \"content\": \"ignored\"}]}\n"
        "{\"problem\": \" What is 1+1?\\n\", \"solution\": \"It is $\\\\boxed{2}$. \"}\n"
        "{\"prompt\": \" p \", \"response\": \" r \"}\n";
    duet_dataset d = {0}, plain = {0};
    duet_dataset_params pp = {.frames = DUET_DATASET_FRAMES_PAPER};
    duet_error err = {0};
    CHECKF(!duet_dataset_load_buffer(jsonl, sizeof jsonl - 1, "frames.jsonl", &pp, &d, &err), "%s", err.msg);
    REQUIRE(d.n == 4);
    CHECK_STR(d.ex[0].prompt, "Please solve the following math problem with detailed steps.\n\nProblem:  Tom has 3 apples.");
    CHECK_STR(d.ex[0].response, "Answer: 3 + 2 = 5\n#### 5.");
    CHECK_STR(d.ex[1].prompt, "Hi there");
    CHECK_STR(d.ex[1].response, "Hello!");
    CHECK_STR(d.ex[2].prompt, "Given a mathematics problem, determine the answer. Simplify your answer as much as "
                              "possible. You can use latex to format your answer and you should state your final "
                              "answer as \"The final answer is $(final-answer)$.\"\n\nProblem: What is 1+1?\n\nSolution:");
    CHECK_STR(d.ex[2].response, "It is $\\boxed{2}$.");
    CHECK_STR(d.ex[3].prompt, " p ");
    CHECK_STR(d.ex[3].response, " r ");
    CHECK(d.ex[0].prompt_len == strlen(d.ex[0].prompt) && d.ex[2].response_len == strlen(d.ex[2].response));
    /* the same bytes under duet's frames: another dataset identity (no resuming across) */
    static const char gsm[] = "{\"question\": \"Q\", \"answer\": \"#### 1\"}\n";
    duet_dataset a = {0};
    REQUIRE(!duet_dataset_load_buffer(gsm, sizeof gsm - 1, "g.jsonl", NULL, &plain, &err));
    REQUIRE(!duet_dataset_load_buffer(gsm, sizeof gsm - 1, "g.jsonl", &pp, &a, &err));
    CHECK(plain.hash != a.hash);
    CHECK_STR(plain.ex[0].prompt, "Please solve the following math problem with detailed steps.\n\nQuestion: Q\nAnswer:");
    CHECK_STR(a.ex[0].prompt, "Please solve the following math problem with detailed steps.\n\nProblem: Q");
    duet_dataset_free(&a);
    duet_dataset_free(&plain);
    duet_dataset_free(&d);
    /* one message is not a prompt and a response; problem/solution is paper-only */
    static const char one[] = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n";
    CHECK(duet_dataset_load_buffer(one, sizeof one - 1, "one.jsonl", &pp, &d, &err) == DUET_ERR_FORMAT &&
          strstr(err.msg, "one.jsonl:1") && strstr(err.msg, "two messages"));
    static const char ps[] = "{\"problem\": \"p\", \"solution\": \"s\"}\n";
    CHECK(duet_dataset_load_buffer(ps, sizeof ps - 1, "ps.jsonl", NULL, &d, &err) == DUET_ERR_FORMAT);
}
