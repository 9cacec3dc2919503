/* test_eval_tasks.c: the BioASQ and AlpacaEval tasks of duet eval. Every metric against values
 * worked out by hand on short texts (ROUGE-1/2/L/Lsum; factoid strict/lenient/MRR, list
 * P/R/F1, yes/no), the official split's shuffle against Python's, the BioASQ averages on
 * hand-written answers to the hand-made fixture questions (tests/data), the judge's win-rate
 * arithmetic on a fake judge whose verdicts the test decides, and both tasks end to end on
 * fixture models, the judge being a real duet serve. */
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/common.h"
#include "duet.h"
#include "fixtures.h"
#include "format/quant.h"
#include "learn/bioasq.h"
#include "learn/pyrandom.h"
#include "learn/rouge.h"
#include "learn/task.h"
#include "server_client.h"
#include "test.h"

/* The hand-made fixture files, found from the repository root. */
static const char *data_file(const char *name) {
    static char path[8][256];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, 256, "tests/data/%s", name);
    return access(p, R_OK) == 0 ? p : NULL;
}
#define NEED_DATA(p, name) \
    const char *p = data_file(name); \
    if (!p) SKIP("tests/data/" name " not found (run from the repository root)")

/* ---- ROUGE ---------------------------------------------------------------------------------- */
TEST(eval_rouge_hand_computed) {
    rouge_score s[ROUGE_COUNT];
    duet_error e = {0};
    /* pred: the cat sat on the mat (6 tokens; case and punctuation go), ref: the cat lay on
     * the mat today (7).
     * ROUGE-1: counts pred the2 cat sat on mat, ref the2 cat lay on mat today; overlap 2+1+1+1
     *   = 5; P = 5/6, R = 5/7, F = 2PR/(P+R) = (50/42)/(65/42) = 10/13.
     * ROUGE-2: pred the-cat cat-sat sat-on on-the the-mat (5), ref the-cat cat-lay lay-on
     *   on-the the-mat mat-today (6); overlap the-cat on-the the-mat = 3; P = 3/5, R = 1/2,
     *   F = 0.6/1.1 = 6/11.
     * ROUGE-L: LCS the cat on the mat = 5; P = 5/6, R = 5/7, F = 10/13. */
    REQUIRE(!rouge_pair("The cat, sat on the MAT!", "the cat lay on the mat today", s, &e));
    CHECK_NEAR(s[ROUGE_1].p, 5.0 / 6, 1e-12);
    CHECK_NEAR(s[ROUGE_1].r, 5.0 / 7, 1e-12);
    CHECK_NEAR(s[ROUGE_1].f, 10.0 / 13, 1e-12);
    CHECK_NEAR(s[ROUGE_2].p, 3.0 / 5, 1e-12);
    CHECK_NEAR(s[ROUGE_2].r, 1.0 / 2, 1e-12);
    CHECK_NEAR(s[ROUGE_2].f, 6.0 / 11, 1e-12);
    CHECK_NEAR(s[ROUGE_L].p, 5.0 / 6, 1e-12);
    CHECK_NEAR(s[ROUGE_L].r, 5.0 / 7, 1e-12);
    /* the same words in reverse order: every unigram matches (F 1) but the LCS is one token:
     * P = R = F = 1/4; no bigram is shared */
    REQUIRE(!rouge_pair("a b c d", "d c b a", s, &e));
    CHECK_NEAR(s[ROUGE_1].f, 1, 1e-12);
    CHECK_NEAR(s[ROUGE_2].f, 0, 1e-12);
    CHECK_NEAR(s[ROUGE_L].p, 0.25, 1e-12);
    CHECK_NEAR(s[ROUGE_L].f, 0.25, 1e-12);
    /* ROUGE-Lsum: pred lines [on the mat] [the cat], ref one line [the cat lay on the mat
     * today]. Plain LCS over the whole pred (on the mat the cat) is "on the mat" = 3: P =
     * 3/5, R = 3/7. Summary level: the union of LCS(ref, line 1) = positions 3,4,5 (on the
     * mat) and LCS(ref, line 2) = positions 0,1 (the cat) covers 5 ref tokens, each within
     * both texts' counts (the twice in each): hits 5, P = 5/5, R = 5/7, F = (10/7)/(12/7) =
     * 5/6. */
    REQUIRE(!rouge_pair("on the mat\nthe cat", "the cat lay on the mat today", s, &e));
    CHECK_NEAR(s[ROUGE_L].p, 3.0 / 5, 1e-12);
    CHECK_NEAR(s[ROUGE_L].r, 3.0 / 7, 1e-12);
    CHECK_NEAR(s[ROUGE_LSUM].p, 1, 1e-12);
    CHECK_NEAR(s[ROUGE_LSUM].r, 5.0 / 7, 1e-12);
    CHECK_NEAR(s[ROUGE_LSUM].f, 5.0 / 6, 1e-12);
    /* each token counts at most as often as either text has it: ref lines [a b] [a b], pred
     * [a b]; both ref lines' LCS unions are {a, b}, but pred has one a and one b: hits 2,
     * P = 2/2, R = 2/4, F = 2/3 */
    REQUIRE(!rouge_pair("a b", "a b\na b", s, &e));
    CHECK_NEAR(s[ROUGE_LSUM].p, 1, 1e-12);
    CHECK_NEAR(s[ROUGE_LSUM].r, 0.5, 1e-12);
    CHECK_NEAR(s[ROUGE_LSUM].f, 2.0 / 3, 1e-12);
    /* non-ASCII separates tokens, as [^a-z0-9]+ does: "caf\xc3\xa9" is the token "caf" */
    REQUIRE(!rouge_pair("caf\xc3\xa9 x", "caf", s, &e));
    CHECK_NEAR(s[ROUGE_1].p, 1.0 / 2, 1e-12);
    CHECK_NEAR(s[ROUGE_1].r, 1, 1e-12);
    /* several references: per type the one with the best F (here the second, an exact copy) */
    const char *refs[2] = {"nothing shared", "the cat sat"};
    REQUIRE(!rouge_multi("the cat sat", refs, 2, s, &e));
    for (int t = 0; t < ROUGE_COUNT; t++) CHECK_NEAR(s[t].f, 1, 1e-12);
    REQUIRE(!rouge_pair("", "the cat", s, &e)); /* nothing predicted: all 0 */
    for (int t = 0; t < ROUGE_COUNT; t++) CHECK_NEAR(s[t].f, 0, 0);
}

/* ---- BioASQ exact answers ------------------------------------------------------------------- */
TEST(eval_bioasq_factoid_list_yesno) {
    char *s1[] = {"glimmerase", "GLM enzyme"};
    bioasq_entity fac[1] = {{s1, 2}};
    double a, b, c;
    /* "GLM" is a substring of "GLM enzyme": strict 1; the items matching are ranks 1 and 3,
     * and the official loop keeps the last one: MRR = 1/3 */
    char *i1[] = {"GLM", "shine", "glimmerase"};
    bioasq_factoid(fac, 1, i1, 3, &a, &b, &c);
    CHECK_NEAR(a, 1, 0); CHECK_NEAR(b, 1, 0); CHECK_NEAR(c, 1.0 / 3, 1e-12);
    /* only rank 2 matches ("glimmer" inside "glimmerase"): strict 0, lenient 1, MRR 1/2 */
    char *i2[] = {"shine", "glimmer"};
    bioasq_factoid(fac, 1, i2, 2, &a, &b, &c);
    CHECK_NEAR(a, 0, 0); CHECK_NEAR(b, 1, 0); CHECK_NEAR(c, 0.5, 1e-12);
    /* a match at rank 6 is beyond the top 5 */
    char *i3[] = {"k", "j", "q", "z0", "z1", "glimmerase"};
    bioasq_factoid(fac, 1, i3, 6, &a, &b, &c);
    CHECK_NEAR(b, 0, 0); CHECK_NEAR(c, 0, 0);

    /* list: gold {red}, {amber, orange}, {violet}; items red, orange, blue and "tumor necrosis
     * factor (TNF) alpha", which also counts as "tumor necrosis factor alpha" and "TNF alpha":
     * 6 distinct items, tp = 2 (red, orange), P = 2/6, R = 2/3, F1 = 2(1/3)(2/3)/(1) = 4/9 */
    char *r[] = {"red"}, *am[] = {"amber", "orange"}, *vi[] = {"violet"};
    bioasq_entity col[3] = {{r, 1}, {am, 2}, {vi, 1}};
    char *l1[] = {"red", "orange", "blue", "tumor necrosis factor (TNF) alpha"};
    REQUIRE(!bioasq_list(col, 3, l1, 4, &a, &b, &c));
    CHECK_NEAR(a, 1.0 / 3, 1e-12); CHECK_NEAR(b, 2.0 / 3, 1e-12); CHECK_NEAR(c, 4.0 / 9, 1e-12);
    /* "interleukin 6 (IL6)" counts as itself, "interleukin 6 " and "IL6": tp 1 of 3 distinct:
     * P = 1/3, R = 1/1, F1 = (2/3)/(4/3) = 1/2 */
    char *il[] = {"IL6"}, *l2[] = {"interleukin 6 (IL6)"};
    bioasq_entity ile[1] = {{il, 1}};
    REQUIRE(!bioasq_list(ile, 1, l2, 1, &a, &b, &c));
    CHECK_NEAR(a, 1.0 / 3, 1e-12); CHECK_NEAR(b, 1, 0); CHECK_NEAR(c, 0.5, 1e-12);
    /* a repeated item is one distinct prediction: P = R = 1 */
    char *l3[] = {"red", "red"};
    REQUIRE(!bioasq_list(col, 1, l3, 2, &a, &b, &c));
    CHECK_NEAR(a, 1, 0); CHECK_NEAR(c, 1, 0);

    /* reading answers */
    bioasq_parsed p;
    REQUIRE(!bioasq_parse("Glimmerase does it.\nThe final answer is:\n- shine\n- glimmer", BIOASQ_FACTOID, &p));
    CHECK(p.has_exact && p.n_items == 2);
    if (p.n_items == 2) { CHECK_STR(p.items[0], "shine"); CHECK_STR(p.items[1], "glimmer"); }
    CHECK_STR(p.ideal, "Glimmerase does it.");
    bioasq_parsed_free(&p);
    REQUIRE(!bioasq_parse("x The final answer is:\n1) alpha\n2) beta The final answer is: gamma", BIOASQ_LIST, &p));
    CHECK(p.n_items == 2); /* only the text before the second marker */
    if (p.n_items == 2) CHECK_STR(p.items[1], "beta");
    bioasq_parsed_free(&p);
    REQUIRE(!bioasq_parse("The final answer is:glimmerase, shine ", BIOASQ_FACTOID, &p));
    CHECK(p.n_items == 1); /* no white space first: one item, stripped */
    if (p.n_items == 1) CHECK_STR(p.items[0], "glimmerase, shine");
    bioasq_parsed_free(&p);
    REQUIRE(!bioasq_parse("Zorbaxin is taken with water.\nThe final answer is: Yes", BIOASQ_YESNO, &p));
    CHECK(p.yesno && !strcmp(p.yesno, "yes"));
    CHECK_NEAR(bioasq_yesno("yes", p.yesno), 1, 0);
    bioasq_parsed_free(&p);
    REQUIRE(!bioasq_parse("The final answer is: I do not know", BIOASQ_YESNO, &p)); /* "not" reads as no */
    CHECK(p.yesno && !strcmp(p.yesno, "no"));
    CHECK_NEAR(bioasq_yesno("yes", p.yesno), 0, 0);
    bioasq_parsed_free(&p);
    REQUIRE(!bioasq_parse("no marker at all, yes", BIOASQ_YESNO, &p));
    CHECK(!p.has_exact && !p.yesno);
    CHECK_NEAR(bioasq_yesno("yes", p.yesno), 0, 0);
    bioasq_parsed_free(&p);
}

TEST(eval_bioasq_split_shuffle_is_pythons) {
    /* Python: random.seed(42); x = list(range(10)); random.shuffle(x) -> [7, 3, 2, 8, 5, 6,
     * 9, 4, 0, 1]; with range(3) -> [1, 0, 2] */
    int x[10], want[10] = {7, 3, 2, 8, 5, 6, 9, 4, 0, 1}, y[3], want3[3] = {1, 0, 2};
    mt19937 m;
    for (int i = 0; i < 10; i++) x[i] = i;
    py_random_seed(&m, 42);
    py_shuffle(&m, x, 10);
    for (int i = 0; i < 10; i++) CHECKF(x[i] == want[i], "x[%d] = %d, Python gives %d", i, x[i], want[i]);
    for (int i = 0; i < 3; i++) y[i] = i;
    py_random_seed(&m, 42);
    py_shuffle(&m, y, 3);
    for (int i = 0; i < 3; i++) CHECK(y[i] == want3[i]);
}

/* The official split on a file of 7 factoid and 2 yes/no questions (bodies f0..f6, y0, y1;
 * file order f0 y0 f1 f2 y1 f3 f4 f5 f6). Python: random.seed(42) then random.shuffle of
 * range(7) gives [1, 3, 4, 2, 6, 0, 5] and of range(2) gives [1, 0]. Factoids first (sorted
 * type order): validation f1 f3 f4 f2 f6, test f0 f5; the two yes/no questions both go to
 * validation (y1 y0), none to test. */
TEST(eval_bioasq_official_split_order) {
    static const char *order[9] = {"f0", "y0", "f1", "f2", "y1", "f3", "f4", "f5", "f6"};
    char path[600];
    snprintf(path, sizeof path, "%s/split.json", test_tmpdir());
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    fputs("{\"questions\": [", f);
    for (int i = 0; i < 9; i++)
        fprintf(f, "%s{\"type\": \"%s\", \"body\": \"%s\", \"ideal_answer\": [\"x\"], \"exact_answer\": %s}",
                i ? ", " : "", order[i][0] == 'f' ? "factoid" : "yesno", order[i], order[i][0] == 'f' ? "[[\"x\"]]" : "\"yes\"");
    fputs("]}", f);
    fclose(f);
    static const char *test[2] = {"f0", "f5"}, *val[7] = {"f1", "f3", "f4", "f2", "f6", "y1", "y0"};
    for (int v = 0; v < 2; v++) {
        duet_eval_params p = {.task = DUET_EVAL_TASK_BIOASQ, .split = v ? DUET_EVAL_SPLIT_VALIDATION : DUET_EVAL_SPLIT_TEST};
        eval_task t;
        duet_error e = {0};
        REQUIRE(!task_bioasq_open(path, &p, &t, &e));
        int n = v ? 7 : 2;
        CHECK(t.n == n);
        for (int i = 0; i < n && i < t.n; i++) {
            char want[32];
            snprintf(want, sizeof want, "Question: %s\nAnswer:", v ? val[i] : test[i]);
            size_t L = strlen(t.prompts[i]), W = strlen(want);
            CHECKF(L >= W && !strcmp(t.prompts[i] + L - W, want), "%s[%d] is not %s", v ? "validation" : "test", i,
                   v ? val[i] : test[i]);
        }
        eval_task_free(&t);
    }
}

static double metric(const duet_eval_result *r, const char *name) {
    for (int k = 0; k < r->n_metrics; k++)
        if (!strcmp(r->metric_names[k], name)) return r->metrics[k];
    return NAN;
}

TEST(eval_bioasq_task_prompts_and_averages) {
    NEED_DATA(path, "bioasq_mini.json");
    duet_eval_params p = {.task = DUET_EVAL_TASK_BIOASQ, .split = DUET_EVAL_SPLIT_ALL};
    eval_task t;
    duet_error e = {0};
    REQUIRE(!task_bioasq_open(path, &p, &t, &e));
    REQUIRE(t.n == 4);
    /* the official frame, written out from its template by hand */
    CHECK_STR(t.prompts[0],
              "You are a medical expert answering real-world biomedical questions. Based on your understanding of "
              "basic and clinical science, medical knowledge, and mechanisms underlying health, disease, patient "
              "care, and modes of therapy, list the fact or facts that answer the following question with detailed "
              "explanation.\n\nQuestion: Which made-up enzyme turns glimmer into shine in the toy pathway?\nAnswer:");
    /* Hand-written answers to the four questions:
     * factoid: items GLM, shine: strict 1, lenient 1, MRR 1 (only rank 1 matches);
     * list: red, violet, blue: tp 2 of 3 items and 3 entities: P = R = F1 = 2/3;
     * yes/no: "no" against yes: 0;
     * summary: "The humbler stores quiet energy." (5 tokens) against the 10-token ideal answer
     *   (two lines): ROUGE-1 P 1, R 1/2, F 2/3; ROUGE-2 overlap 4 of 4 and 9 bigrams: F =
     *   2(4/9)/(13/9) = 8/13; ROUGE-L LCS 5: F 2/3; ROUGE-Lsum: 5 hits from the first line:
     *   F 2/3.
     * average = (strict 1 + f1 2/3 + accuracy 0 + rouge2 8/13) / 4;
     * aggregated = (1+1+1 + 2/3*3 + 0 + 2/3 + 8/13 + 2/3 + 2/3) / 11 = (7 + 8/13) / 11 = 9/13. */
    const char *ans[4] = {"It is GLM.\nThe final answer is:\n- GLM\n- shine",
                          "Colours.\nThe final answer is:\n- red\n- violet\n- blue",
                          "It is not.\nThe final answer is: no", "The humbler stores quiet energy."};
    t.begin(&t);
    for (int i = 0; i < 4; i++) {
        char pred[256];
        const char *ref;
        REQUIRE(!t.answer(&t, i, ans[i], pred, sizeof pred, &ref, &e));
    }
    duet_eval_result r = {0};
    REQUIRE(!t.finish(&t, &r, &e));
    double avg = (1 + 2.0 / 3 + 0 + 8.0 / 13) / 4;
    CHECK_NEAR(r.value, avg, 1e-12);
    CHECK_NEAR(metric(&r, "average"), avg, 1e-12);
    CHECK_NEAR(metric(&r, "mrr"), 1, 1e-12);
    CHECK_NEAR(metric(&r, "precision"), 2.0 / 3, 1e-12);
    CHECK_NEAR(metric(&r, "accuracy"), 0, 0);
    CHECK_NEAR(metric(&r, "rouge2"), 8.0 / 13, 1e-12);
    CHECK_NEAR(metric(&r, "rougeLsum"), 2.0 / 3, 1e-12);
    CHECK_NEAR(metric(&r, "aggregated"), 9.0 / 13, 1e-12);
    /* a second pass starts from nothing: the factoid alone answered wrong */
    t.begin(&t);
    char pred[256];
    const char *ref;
    REQUIRE(!t.answer(&t, 0, "The final answer is: shine", pred, sizeof pred, &ref, &e));
    duet_eval_result r2 = {0};
    REQUIRE(!t.finish(&t, &r2, &e));
    CHECK_NEAR(r2.value, 0, 0);
    CHECK(isnan(metric(&r2, "f1"))); /* no list question answered: no list metrics */
    eval_task_free(&t);

    /* the official split keeps 5 questions of each type for validation: one each leaves no test */
    p.split = DUET_EVAL_SPLIT_TEST;
    CHECK(task_bioasq_open(path, &p, &t, &e) == DUET_ERR_FORMAT);
    CHECK(strstr(e.msg, "no questions in the test split") != NULL);
    eval_task_free(&t);
    p.split = DUET_EVAL_SPLIT_VALIDATION;
    CHECK(!task_bioasq_open(path, &p, &t, &e) && t.n == 4);
    eval_task_free(&t);
}

TEST(eval_bioasq_bad_files_name_the_field) {
    static const char *bad[][2] = {
        {"{\"qs\": []}", "field 'questions' is missing"},
        {"{\"questions\": [{\"type\": \"essay\", \"body\": \"b\", \"ideal_answer\": [\"i\"]}]}",
         "questions[0]: field 'type' is not factoid"},
        {"{\"questions\": [{\"type\": \"list\", \"ideal_answer\": [\"i\"]}]}", "questions[0]: field 'body' is missing"},
        {"{\"questions\": [{\"type\": \"list\", \"body\": \"b\", \"ideal_answer\": [\"i\"], \"exact_answer\": 3}]}",
         "field 'exact_answer'"},
        {"[1, 2", "bad.json:1"},
    };
    char path[600];
    snprintf(path, sizeof path, "%s/bad.json", test_tmpdir());
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        FILE *f = fopen(path, "wb");
        REQUIRE(f);
        fputs(bad[i][0], f);
        fclose(f);
        duet_eval_params p = {.task = DUET_EVAL_TASK_BIOASQ, .split = DUET_EVAL_SPLIT_ALL};
        eval_task t;
        duet_error e = {0};
        CHECKF(task_bioasq_open(path, &p, &t, &e) != 0 && strstr(e.msg, bad[i][1]), "case %zu: %s", i, e.msg);
        eval_task_free(&t);
    }
}

/* ---- the judge ------------------------------------------------------------------------------ */
/* A fake judge whose verdict the test decides from the two responses it is shown: "A" when
 * response A holds GOOD, else "B" when B does; "A" whenever both hold POS (a judge that
 * prefers the first position); a reply that is no verdict when one holds JUNK; else "tie".
 * Mode BAD answers a chat reply without choices[0]; mode HUGE a reply over the size cap. */
enum { JUDGE_OK, JUDGE_BAD, JUDGE_HUGE };
static struct { _Atomic int mode, hits; } g_judge;

static enum MHD_Result judge_send(struct MHD_Connection *c, unsigned st, const char *body, size_t n) {
    struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ok = MHD_queue_response(c, st, r);
    MHD_destroy_response(r);
    return ok;
}

/* the text between the markers a and b of s (b NULL: to the end) contains w */
static int section_has(const char *s, const char *a, const char *b, const char *w) {
    const char *p = s ? strstr(s, a) : NULL, *e = p && b ? strstr(p, b) : NULL;
    if (!p) return 0;
    const char *f = strstr(p, w);
    return f && (!e || f < e);
}

static const char *fake_verdict(const char *prompt) {
    int ag = section_has(prompt, "Response A:", "Response B:", "GOOD"), bg = section_has(prompt, "Response B:", NULL, "GOOD");
    int pos = section_has(prompt, "Response A:", "Response B:", "POS") && section_has(prompt, "Response B:", NULL, "POS");
    int junk = section_has(prompt, "Response A:", NULL, "JUNK");
    return ag ? "A" : bg ? "B" : pos ? "A" : junk ? "Banana bread" : "tie";
}

static enum MHD_Result judge_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                     const char *version, const char *up, size_t *up_size, void **cc) {
    (void)cls, (void)method, (void)version;
    duet_buf *b = *cc;
    if (!b) { *cc = calloc(1, sizeof(duet_buf)); return MHD_YES; }
    if (*up_size) { duet_buf_add(b, up, *up_size); *up_size = 0; return MHD_YES; }
    duet_buf_add(b, "", 1);
    json_t *req = b->p ? json_loads(b->p, 0, NULL) : NULL;
    free(b->p);
    free(b);
    *cc = NULL;
    g_judge.hits++;
    json_t *m0 = json_array_get(json_object_get(req, "messages"), 0);
    const char *prompt = json_string_value(json_object_get(m0, "content"));
    enum MHD_Result ok;
    if (strcmp(url, "/v1/chat/completions")) ok = judge_send(c, 404, "{}", 2);
    else if (g_judge.mode == JUDGE_BAD) ok = judge_send(c, 200, "{\"choices\": []}", 15);
    else if (g_judge.mode == JUDGE_HUGE) {
        size_t n = 2u << 20;
        char *s = malloc(n);
        memset(s, ' ', n);
        ok = judge_send(c, 200, s, n);
        free(s);
    } else {
        json_t *r = json_pack("{s:[{s:{s:s, s:s}}]}", "choices", "message", "role", "assistant", "content",
                              fake_verdict(prompt));
        char *s = json_dumps(r, 0);
        ok = judge_send(c, 200, s, strlen(s));
        free(s);
        json_decref(r);
    }
    json_decref(req);
    return ok;
}

TEST(eval_judge_win_rate_arithmetic) {
    g_judge.mode = JUDGE_OK;
    g_judge.hits = 0;
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                                            NULL, judge_handler, NULL, MHD_OPTION_END);
    REQUIRE(d);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
    const char *instr[5] = {"i0", "i1", "i2", "i3", "i4"};
    const char *outs[5] = {"GOOD answer", "plain", "JUNK", "POS mine", "plain"};
    const char *refs[5] = {"plain", "plain", "plain", "POS theirs", "GOOD answer"};
    /* Both orders, 10 comparisons: example 0 wins twice (GOOD is A, then B); example 1 ties
     * twice; example 2's replies are no verdict: two ties, both invalid; example 3 meets a
     * judge that always says A: a win (ours first), then a loss; example 4 loses twice.
     * wins 3, ties 4, losses 3: win rate (3 + 4/2) / 10 = 0.5. */
    duet_judge_params jp = {.url = url};
    duet_judge_result r;
    duet_error e = {0};
    REQUIRE(!duet_judge_win_rate(&jp, instr, outs, refs, 5, &r, &e));
    CHECK(r.comparisons == 10 && g_judge.hits == 10);
    CHECK(r.wins == 3 && r.ties == 4 && r.losses == 3 && r.invalid == 2);
    CHECK_NEAR(r.win_rate, 0.5, 1e-12);
    /* the first four alone: wins 3, ties 4, losses 1 of 8: (3 + 2) / 8 = 0.625 */
    REQUIRE(!duet_judge_win_rate(&jp, instr, outs, refs, 4, &r, &e));
    CHECK_NEAR(r.win_rate, 0.625, 1e-12);
    /* one order: win, tie, tie, win, loss: (2 + 2/2) / 5 = 0.6 (the position bias now counts) */
    jp.one_order = 1;
    REQUIRE(!duet_judge_win_rate(&jp, instr, outs, refs, 5, &r, &e));
    CHECK(r.comparisons == 5);
    CHECK_NEAR(r.win_rate, 0.6, 1e-12);
    /* a base URL ending in /v1 is not doubled */
    char v1[80];
    snprintf(v1, sizeof v1, "%s/v1/", url);
    jp.url = v1;
    CHECK(!duet_judge_win_rate(&jp, instr, outs, refs, 1, &r, &e));
    /* hostile replies: an error naming the field, a size cap; no abort */
    jp.url = url;
    g_judge.mode = JUDGE_BAD;
    CHECK(duet_judge_win_rate(&jp, instr, outs, refs, 1, &r, &e) == DUET_ERR_FORMAT);
    CHECKF(strstr(e.msg, "'choices[0]'") != NULL, "%s", e.msg);
    g_judge.mode = JUDGE_HUGE;
    jp.max_reply = 4096;
    CHECK(duet_judge_win_rate(&jp, instr, outs, refs, 1, &r, &e) != 0);
    CHECKF(strstr(e.msg, "larger than 4096 bytes") != NULL, "%s", e.msg);
    jp.url = "ftp://x";
    CHECK(duet_judge_win_rate(&jp, instr, outs, refs, 1, &r, &e) == DUET_ERR_ARG);
    jp.url = "http://127.0.0.1:1"; /* nobody there: a connection error, quickly */
    jp.retries = -1;
    CHECK(duet_judge_win_rate(&jp, instr, outs, refs, 1, &r, &e) == DUET_ERR_IO);
    MHD_stop_daemon(d);
}

/* ---- end to end ------------------------------------------------------------------------------ */
static json_t *result0(const char *json_path) {
    json_t *j = json_load_file(json_path, 0, NULL);
    json_t *r = json_incref(json_array_get(json_object_get(j, "results"), 0));
    json_decref(j);
    return r;
}

TEST(eval_bioasq_cli_end_to_end) {
    NEED_BIN();
    NEED_DATA(data, "bioasq_mini.json");
    const char *bp = fixture_random(DT_F32, 51, 0);
    REQUIRE(bp);
    char json_path[600], out_path[600], args[4000], err[4096];
    snprintf(json_path, sizeof json_path, "%s/bioasq.json", test_tmpdir());
    snprintf(out_path, sizeof out_path, "%s/bioasq-out.jsonl", test_tmpdir());
    snprintf(args, sizeof args, "eval -m '%s' --task bioasq --data '%s' --shots '%s' -n 12 -c 512 --json '%s' "
             "--outputs '%s' -t 2 --quiet", bp, data, data, json_path, out_path);
    CHECKF(fixture_run_cli(args, "bioasq-cli", err, sizeof err) == 0, "duet eval: %s", err);
    json_t *r = result0(json_path);
    json_t *m = json_object_get(r, "metrics");
    static const char *keys[] = {"strict_accuracy", "lenient_accuracy", "mrr", "precision", "recall", "f1",
                                 "accuracy", "rouge1", "rouge2", "rougeL", "rougeLsum", "average"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) CHECKF(json_is_number(json_object_get(m, keys[k])), "no %s", keys[k]);
    /* the value is the official average of four of them, recomputed here from the report */
    double avg = (json_number_value(json_object_get(m, "strict_accuracy")) + json_number_value(json_object_get(m, "f1")) +
                  json_number_value(json_object_get(m, "accuracy")) + json_number_value(json_object_get(m, "rouge2"))) / 4;
    CHECK_NEAR(json_number_value(json_object_get(r, "value")), avg, 1e-9);
    CHECK_STR(json_string_value(json_object_get(r, "metric")), "average");
    char buf[1 << 16];
    read_text(out_path, buf, sizeof buf);
    int lines = 0;
    for (char *p = buf; *p; p++) lines += *p == '\n';
    CHECK(lines == 4);
    CHECK(strstr(buf, "\"reference\":\"glimmerase | GLM enzyme\"") != NULL);
    json_decref(r);
}

TEST(eval_alpacaeval_cli_judged_by_duet_serve) {
    NEED_FIXTURES();
    NEED_DATA(data, "alpaca_mini.json");
    NEED_DATA(ref, "alpaca_ref.json");
    proc judge;
    REQUIRE(!spawn_serve(&judge, "-m '%s' -np 1 -c 1024 --quiet", g_base)); /* the judge prompt is long */
    char json_path[600], out_path[600], args[4000], err[4096];
    snprintf(json_path, sizeof json_path, "%s/alpaca.json", test_tmpdir());
    snprintf(out_path, sizeof out_path, "%s/alpaca-out.json", test_tmpdir());
    snprintf(args, sizeof args, "eval -m '%s' --task alpacaeval --data '%s' -n 6 --json '%s' --outputs '%s' "
             "--judge-url http://127.0.0.1:%d --judge-model duet --reference '%s' -t 2 --quiet",
             g_base, data, json_path, out_path, judge.port, ref);
    CHECKF(fixture_run_cli(args, "alpaca-cli", err, sizeof err) == 0, "duet eval: %s", err);
    json_t *r = result0(json_path), *m = json_object_get(r, "metrics");
    /* 2 examples, both orders: 4 verdicts, which add up to the reported win rate */
    CHECK(json_number_value(json_object_get(m, "comparisons")) == 4);
    double w = json_number_value(json_object_get(m, "wins")), t = json_number_value(json_object_get(m, "ties")),
           l = json_number_value(json_object_get(m, "losses"));
    CHECK(w + t + l == 4);
    CHECK_NEAR(json_number_value(json_object_get(r, "value")), (w + t / 2) / 4, 1e-12);
    CHECK_STR(json_string_value(json_object_get(r, "metric")), "win_rate");
    /* AlpacaEval's format: the instructions in order, the dataset carried over */
    json_t *o = json_load_file(out_path, 0, NULL);
    CHECK(json_array_size(o) == 2);
    json_t *o1 = json_array_get(o, 1);
    CHECK_STR(json_string_value(json_object_get(o1, "instruction")), "Write one word that means happy.");
    CHECK_STR(json_string_value(json_object_get(o1, "generator")), "duet-base");
    CHECK_STR(json_string_value(json_object_get(o1, "dataset")), "handmade");
    CHECK(json_is_string(json_object_get(o1, "output")));
    json_decref(o);
    json_decref(r);
    /* a reference whose instructions differ: an error naming the record and the field */
    snprintf(args, sizeof args, "eval -m '%s' --task alpacaeval --data '%s' -n 2 --judge-url http://127.0.0.1:%d "
             "--reference '%s' --quiet", g_base, ref, judge.port, data);
    CHECK(fixture_run_cli(args, "alpaca-cli2", err, sizeof err) == 1);
    CHECKF(strstr(err, "field 'output' is missing") != NULL, "%s", err);
    snprintf(args, sizeof args, "eval -m '%s' --task alpacaeval --data '%s' --judge-url http://x --quiet", g_base, data);
    CHECK(fixture_run_cli(args, "alpaca-cli3", err, sizeof err) == 2); /* --judge-url without --reference */
    CHECK(stop_serve(&judge) == 0);
}
