/* test_eval.c: answer metrics on hand-written answers (GSM8K last number, MATH boxed answers
 * and their equivalence); teacher-forced policy NLL against its analytic cases (base and
 * expert alone = duet_text_score, oracle bounds, quantile thresholds hit the requested rate);
 * the BabyLlama vocabulary bridge; gsm8k generation end to end; data errors naming file:line;
 * the random policy's per-problem seeds; duet tune's table, plot and stored threshold; the
 * eval and tune CLIs. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "format/quant.h"
#include "learn/answers.h"
#include "learn/eval.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

/* ---- answers --------------------------------------------------------------------------- */
static double last_num(const char *s) {
    double v = NAN;
    return answers_last_number(s, strlen(s), &v) ? v : NAN;
}

TEST(eval_answers_gsm8k) {
    CHECK_NEAR(last_num("She makes 9 * 2 = $18 every day."), 18, 0);
    CHECK_NEAR(last_num("The total is 1,000."), 1000, 0);
    CHECK_NEAR(last_num("It costs $1,234,567.50 in all"), 1234567.5, 1e-9);
    CHECK_NEAR(last_num("The temperature fell to -3 degrees."), -3, 0);
    CHECK_NEAR(last_num("16-3 = 13"), 13, 0);
    CHECK_NEAR(last_num("16-3"), 3, 0);          /* a minus after a digit is an operator */
    CHECK_NEAR(last_num("x = -0.5"), -0.5, 0);
    CHECK_NEAR(last_num("about .75 of it"), 0.75, 0);
    CHECK_NEAR(last_num("1, 2, 3"), 3, 0);        /* list commas are not thousands separators */
    CHECK_NEAR(last_num("1,2"), 2, 0);
    CHECK_NEAR(last_num("is 18.\n\nQuestion: what"), 18, 0);
    CHECK(isnan(last_num("no number here")));
    double v;
    CHECK(answers_gsm8k_reference("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18", &v) && v == 18);
    CHECK(answers_gsm8k_reference("#### 1,234", &v) && v == 1234);
    CHECK(answers_gsm8k_reference("so\n#### -5", &v) && v == -5);
    CHECK(!answers_gsm8k_reference("#### none", &v));
    CHECK(answers_gsm8k_correct("So she makes 9 * 2 = $18 every day.", "... #### 18"));
    CHECK(answers_gsm8k_correct("The answer is 18.0", "#### 18"));
    CHECK(answers_gsm8k_correct("He made a profit of $70,000.", "#### 70000"));
    CHECK(answers_gsm8k_correct("-2 is the answer", "#### -2"));
    CHECK(!answers_gsm8k_correct("The answer is 17.", "#### 18"));
    CHECK(!answers_gsm8k_correct("18 eggs, then 19", "#### 18")); /* the last number counts */
    CHECK(!answers_gsm8k_correct("no idea", "#### 18"));
}

TEST(eval_answers_math) {
    char a[ANSWERS_CAP];
    CHECK(answers_math_extract("so the answer is $\\boxed{\\frac{1}{2}}$.", a, sizeof a));
    CHECK_STR(a, "\\frac{1}{2}");
    CHECK(answers_math_extract("\\boxed{1} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", a, sizeof a));
    CHECK_STR(a, "\\left( 3, \\frac{\\pi}{2} \\right)");
    CHECK(answers_math_extract("thus $\\boxed 5$", a, sizeof a));
    CHECK_STR(a, "5");
    CHECK(answers_math_extract("\\fbox{x^{2}}", a, sizeof a));
    CHECK_STR(a, "x^{2}");
    CHECK(answers_math_extract("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", a, sizeof a));
    CHECK_STR(a, "\\frac{3}{4}");
    CHECK(!answers_math_extract("\\boxed{unbalanced", a, sizeof a) && a[0] == 0);
    CHECK(!answers_math_extract("no answer", a, sizeof a));
    struct { const char *x, *y; int eq; } cases[] = {
        {"\\dfrac{1}{2}", "\\frac12", 1},
        {"\\tfrac{1}{2}", "0.5", 1},
        {"1/2", "\\frac{1}{2}", 1},
        {"-\\frac{1}{2}", "-0.5", 1},
        {"\\frac{-1}{2}", "-.5", 1},
        {"\\frac{14}{3}", "\\dfrac{14}{3}", 1},
        {"\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", 1},
        {"10\\text{ cm}", "10", 1},
        {"\\text{Evelyn}", "Evelyn", 1},
        {"90^\\circ", "90", 1},
        {"x = 5", "5", 1},
        {"1,000", "1000", 1},
        {"$5$.", "5", 1},
        {"\\$5", "5", 1},
        {"50\\%", "50", 1},
        {"11\\sqrt2", "11\\sqrt{2}", 1},
        {"3\\sqrt{13}", "3\\sqrt13", 0}, /* TeX reads \sqrt13 as \sqrt{1}3 */
        {"6 - 5i", "6-5i", 1},
        {"1,-2", "1, -2", 1},
        {"\\!1\\,000", "1000", 1},
        {"1,-2", "-2,1", 0},
        {"\\frac{1}{3}", "0.33", 0},
        {"3", "4", 0},
        {"\\frac{1}{2}", "\\frac{1}{3}", 0},
        {"", "", 0},
        {"1,2", "12", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECKF(answers_math_equiv(cases[i].x, cases[i].y) == cases[i].eq, "equiv('%s', '%s') != %d",
               cases[i].x, cases[i].y, cases[i].eq);
    CHECK(answers_math_correct("We get $\\boxed{\\dfrac{14}{3}}$.", "\\frac{14}{3}"));
    CHECK(answers_math_correct("The final answer is 0.5. I hope it is correct.", "\\frac{1}{2}"));
    CHECK(!answers_math_correct("We get 14/3", "\\frac{14}{3}")); /* no boxed answer */
}

/* Hand-written outputs and the last number the rule in answers.h gives them: a comma is a
 * thousands separator only between a digit and exactly three digits ("ddd" not followed by
 * another digit), '-' is a sign unless it follows a letter or digit, a '.' ends a number
 * unless a digit follows, and a '.' right after a digit never starts a new number. */
TEST(eval_answers_gsm8k_table) {
    static const struct { const char *text; double want; } k[] = {
        {"1,234", 1234},
        {"The total is 1,234,567 eggs", 1234567},
        {"It costs $1,000.00", 1000},
        {"$12,345,678.9 in all", 12345678.9},
        {"-1,234 is the change", -1234},
        /* ",2345" has four digits: no separator; "1" then "2345" */
        {"1,2345", 2345},
        /* ",34" has two digits: "12" then "34" */
        {"12,34", 34},
        /* "1" (",23," is no group), then "23,456" (",456" is one) = 23456 */
        {"1,23,456", 23456},
        /* "1,234" then ",56" (two digits before the end): 56 */
        {"1,234,56", 56},
        /* ",0000" has four digits: "1,000" then "0000" = 0 */
        {"1,000,0000", 0},
        {"so 1,000, then", 1000},
        {",123", 123},
        {"-5", -5},
        {"(-5)", -5},
        {"x = -5", -5},
        {"- 5", 5},          /* a '-' not directly before a digit is no sign */
        {"x-5", 5},          /* after a letter: an operator */
        {"16-5", 5},         /* after a digit: an operator */
        {"--5", -5},         /* the second '-' follows a '-', not a letter or digit */
        {"\xe2\x88\x92" "5", 5}, /* U+2212 is not the ASCII sign the rule reads */
        {"3.50", 3.5},
        {".5", 0.5},
        {"-.5", -0.5},
        {"5.", 5},
        {"The answer is 42.", 42},
        {"is 42.0.", 42},
        {"1.5.3", 3},        /* ".3" right after the digit 5 is not a number of its own */
        {"3/4", 4},          /* no fractions: the last number is the denominator */
        {"v2", 2},
        {"2024-01-15", 15},
        {"12/25/2024", 2024},
        {"1e5", 5},
        {"100%", 100},
        {"2 apples and 3 pears", 3},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        double v = last_num(k[i].text);
        CHECKF(v == k[i].want, "last number of \"%s\" is %.10g, want %.10g", k[i].text, v, k[i].want);
    }
    static const char *none[] = {"", "no digits", "-", ".", "-.", ",,,"};
    for (size_t i = 0; i < sizeof none / sizeof *none; i++)
        CHECKF(isnan(last_num(none[i])), "\"%s\" has no number but gave %g", none[i], last_num(none[i]));
    /* the reference takes the first number after the last "####" */
    double v = NAN;
    CHECK(answers_gsm8k_reference("#### 1,2345", &v) && v == 1);
    CHECK(answers_gsm8k_reference("a #### 3\nb #### 1,234,567 (check)", &v) && v == 1234567);
    CHECK(answers_gsm8k_correct("The answer is 1,2345", "#### 2345"));
    CHECK(!answers_gsm8k_correct("The answer is 1,2345", "#### 12345"));
    CHECK(answers_gsm8k_correct("so she pays $1,000.00.", "#### 1000"));
    CHECK(!answers_gsm8k_correct("The answer is 5", "#### -5"));
}

/* MATH extraction: the last \boxed{} or \fbox{} (balanced braces, \{ \} literal), else the
 * text after the last "The final answer is"; then normalisation and equivalence. */
TEST(eval_answers_math_table) {
    static const struct { const char *text, *want; } ex[] = {
        {"so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"},
        {"\\boxed{x^{2}+\\frac{a}{b}}", "x^{2}+\\frac{a}{b}"},
        {"\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"},
        {"\\boxed{1} and later \\boxed{2}", "2"},
        {"\\boxed{1} then \\fbox{2}", "2"},
        {"\\fbox{1} then \\boxed{2}", "2"},
        {"\\boxed {5}", "5"},
        {"\\boxed{ 3 }", "3"},
        {"$\\boxed 7$", "7"},
        {"\\boxed{\\text{(A)}}", "\\text{(A)}"},
        {"\\boxed{10\\text{ cm}}", "10\\text{ cm}"},
        {"The final answer is $\\boxed{7}$. I hope it is correct.", "7"},
        {"The final answer is 12 cm.\nMore text", "12 cm"},
        {"the final answer is $x=3$. I hope it is correct.", "x=3"},
        {"The final answer is 1. The final answer is 2.", "2"},
    };
    char a[ANSWERS_CAP];
    for (size_t i = 0; i < sizeof ex / sizeof *ex; i++) {
        int ok = answers_math_extract(ex[i].text, a, sizeof a);
        CHECKF(ok && !strcmp(a, ex[i].want), "extract(\"%s\") = %d \"%s\", want \"%s\"", ex[i].text,
               ok, a, ex[i].want);
    }
    CHECK(!answers_math_extract("\\boxed{", a, sizeof a) && !a[0]);
    CHECK(!answers_math_extract("the answer is 5", a, sizeof a) && !a[0]);
    static const struct { const char *in, *want; } nm[] = {
        {"\\dfrac{3}{4}", "\\frac{3}{4}"},
        {"\\frac34", "\\frac{3}{4}"},
        {"\\frac3{4}", "\\frac{3}{4}"},
        {"\\sqrt3", "\\sqrt{3}"},
        {"\\left(1, 2\\right)", "(1,2)"},
        {"10\\text{ cm}", "10"},
        {"\\text{Evelyn}", "Evelyn"},
        {"\\textbf{(B)}", "(B)"},
        {"5 dollars", "5"},
        {"12 cm", "12"},
        {"90^\\circ", "90"},
        {"50\\%", "50"},
        {"\\$1,000.00", "1000.00"},
        {"x = 5", "5"},
        {".5", "0.5"},
        {"-.5", "-0.5"},
        {"5.", "5"},
        {"1,234,567", "1234567"},
        {"1,2345", "1,2345"},     /* not a thousands grouping: the comma stays */
        {"12,34", "12,34"},
        {"1234,567", "1234,567"}, /* a leading group of four digits is no grouping */
        {"\\!1\\,000", "1000"},
    };
    for (size_t i = 0; i < sizeof nm / sizeof *nm; i++) {
        answers_math_normalize(nm[i].in, a, sizeof a);
        CHECKF(!strcmp(a, nm[i].want), "normalize(\"%s\") = \"%s\", want \"%s\"", nm[i].in, a, nm[i].want);
    }
    static const struct { const char *in; int ok; double v; } val[] = {
        {"\\frac{3}{4}", 1, 0.75}, {"-\\frac{1}{2}", 1, -0.5}, {"3/4", 1, 0.75},
        {"-2.5", 1, -2.5}, {"1/0", 0, 0}, {"\\frac{a}{b}", 0, 0}, {"1,2345", 0, 0},
        {"\\frac{1}{2}x", 0, 0},
    };
    for (size_t i = 0; i < sizeof val / sizeof *val; i++) {
        double v = NAN;
        int ok = answers_math_value(val[i].in, &v);
        CHECKF(ok == val[i].ok && (!ok || v == val[i].v), "value(\"%s\") = %d %g, want %d %g",
               val[i].in, ok, v, val[i].ok, val[i].v);
    }
    CHECK(answers_math_correct("$\\boxed{\\dfrac{3}{4}}$", "0.75"));
    CHECK(answers_math_correct("\\boxed{10\\text{ cm}}", "10"));
    CHECK(answers_math_correct("\\boxed{1} then \\fbox{2}", "2"));
    CHECK(!answers_math_correct("\\boxed{1} then \\fbox{2}", "1"));
    CHECK(!answers_math_equiv("1,2345", "12345"));
    CHECK(answers_math_equiv("1,234", "1234"));
}

TEST(eval_quantile_and_candidates) {
    float s[10];
    for (int i = 0; i < 10; i++) s[i] = (float)(i + 1);
    CHECK_NEAR(duet_eval_rate_threshold(s, 10, 0.3), 7.5, 0);
    CHECK(duet_eval_rate_threshold(s, 10, 0.0) == INFINITY);
    CHECK(duet_eval_rate_threshold(s, 10, 1.0) == -INFINITY);
    /* smallest observed p with fraction(p >= eta) <= q */
    CHECK(duet_tune_candidate(s, 10, 0.0) == 1.0f);
    CHECK_NEAR(duet_tune_candidate(s, 10, 0.3), 1 / (1 + exp(-8.0)), 1e-7);
    CHECK_NEAR(duet_tune_candidate(s, 10, 0.35), 1 / (1 + exp(-8.0)), 1e-7);
    float t[6] = {5, 5, 5, 1, 1, 0}; /* ties: the three 5s enter together */
    CHECK(duet_tune_candidate(t, 6, 0.4) == 1.0f);
    CHECK_NEAR(duet_tune_candidate(t, 6, 0.5), 1 / (1 + exp(-5.0)), 1e-7);
}



/* Text of about n bytes: sentences from a fixed list with varying numbers in them. */
static char *story(int n) {
    static const char *s[] = {"Once upon a time, there was a little girl named Lily who was %d. ",
                              "She liked to play in the park with her %d red balls. ",
                              "One day, the sun was hot and %d birds sang songs. ",
                              "Tom said, \"Can I play too?\" and Lily smiled %d times at him. ",
                              "They ran and laughed until it was %d and time to go home. "};
    char *t = malloc((size_t)n + 128);
    int o = 0;
    for (int i = 0, k = 0; o < n; i = (i * 7 + 3) % 5, k++) o += sprintf(t + o, s[i], (k * 37) % 101);
    return t;
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-300); }

static duet_eval_result run1(duet_eval *c, int pol, double rate, float thr) {
    duet_eval_spec s = {.policy = pol, .rate = rate, .threshold = thr};
    duet_eval_result r;
    duet_error err = {0};
    if (duet_eval_one(c, &s, &r, &err)) {
        test_fail_at(__FILE__, __LINE__, "eval %s: %s", duet_eval_policy_name(pol), err.msg);
        memset(&r, 0, sizeof r);
        r.value = NAN;
    }
    return r;
}

/* ---- nll: analytic cases ------------------------------------------------------------------ */
static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Equal scores on both sides of the quantile (no threshold can split them) */
static int tie_at(duet_eval *c, int pol, double rate) {
    const float *sc;
    int n;
    duet_error err = {0};
    if (duet_eval_calibration(c, pol, &sc, &n, &err)) return 0;
    float *s = malloc((size_t)n * sizeof *s);
    memcpy(s, sc, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_desc);
    long k = lround(rate * n);
    int tie = k > 0 && k < n && s[k - 1] == s[k];
    free(s);
    return tie;
}
TEST(eval_nll_analytic_cases) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 51, 0)), *e = fixture_load(fixture_random(DT_F32, 52, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 7, 4.0f);
    REQUIRE(h);
    char *text = story(2500);
    const char *path = fixture_write_text("nll.txt", text);
    REQUIRE(path);
    duet_eval_params ep = {.task = DUET_EVAL_TASK_NLL, .seed = 3};
    duet_eval *c = NULL;
    duet_error err = {0};
    REQUIRE(!duet_eval_open(b, e, NULL, h, path, &ep, &c, &err));
    int n = duet_eval_size(c, &err);
    REQUIRE(n > 600);
    /* base / expert alone = duet_text_score with the same context (several windows) */
    duet_text_nll tb, te;
    duet_session *sb = NULL, *se = NULL;
    duet_session_params sp = {.n_ctx = 256};
    REQUIRE(!duet_session_new(b, &sp, &sb, &err) && !duet_session_new(e, &sp, &se, &err));
    REQUIRE(!duet_text_score(sb, text, strlen(text), &tb, NULL, NULL, &err));
    REQUIRE(!duet_text_score(se, text, strlen(text), &te, NULL, NULL, &err));
    duet_session_free(sb);
    duet_session_free(se);
    CHECK_EQ_INT(tb.n_tokens, n);
    duet_eval_result rb = run1(c, DUET_POLICY_BASE, -1, -1), re = run1(c, DUET_POLICY_EXPERT, -1, -1);
    double vb = tb.nll / (double)tb.n_bytes, ve = te.nll / (double)te.n_bytes;
    CHECKF(rel(rb.value, vb) < 1e-9, "base %.12g vs duet_text_score %.12g", rb.value, vb);
    CHECKF(rel(re.value, ve) < 1e-9, "expert %.12g vs duet_text_score %.12g", re.value, ve);
    CHECK(rb.n_deferred == 0 && rb.expert_calls == 0 && re.n_deferred == n && re.deferral_frequency == 1);
    /* the extremes of every router are the two models */
    CHECK(run1(c, DUET_POLICY_COLLM, -1, 1.0f).value == rb.value);
    CHECK(run1(c, DUET_POLICY_COLLM, -1, 0.0f).value == re.value);
    CHECK(run1(c, DUET_POLICY_RANDOM, 0.0, -1).value == rb.value);
    CHECK(run1(c, DUET_POLICY_RANDOM, 1.0, -1).value == re.value);
    CHECK(run1(c, DUET_POLICY_COMPOSE, -1, 1.0f).value == rb.value);
    CHECK(run1(c, DUET_POLICY_UNCERTAINTY, 0.0, -1).value == rb.value);
    CHECK(run1(c, DUET_POLICY_UNCERTAINTY, 1.0, -1).value == re.value);
    /* oracle with threshold 0 takes the better model per token: below both */
    duet_eval_result o0 = run1(c, DUET_EVAL_POLICY_ORACLE, -1, 0.0f);
    CHECKF(o0.value <= fmin(rb.value, re.value), "oracle@0 %.6f, base %.6f, expert %.6f", o0.value, rb.value, re.value);
    /* quantile thresholds defer the requested fraction within one token */
    static const double rates[] = {0.1, 0.2, 0.3, 0.37, 0.5, 0.9};
    const int pols[] = {DUET_POLICY_COLLM, DUET_POLICY_UNCERTAINTY, DUET_EVAL_POLICY_ORACLE, DUET_POLICY_COMPOSE};
    for (size_t k = 0; k < sizeof rates / sizeof rates[0]; k++) {
        for (size_t p = 0; p < sizeof pols / sizeof pols[0]; p++) {
            duet_eval_result r = run1(c, pols[p], rates[k], -1);
            CHECKF(fabs(r.n_deferred - rates[k] * n) <= 1.0 || tie_at(c, pols[p], rates[k]),
                   "%s at rate %.2f deferred %ld of %d", duet_eval_policy_name(pols[p]), rates[k], r.n_deferred, n);
            if (pols[p] != DUET_EVAL_POLICY_ORACLE) continue;
            /* oracle: below base, expert and their mixture at the same rate */
            double mix = (1 - rates[k]) * rb.value + rates[k] * re.value;
            CHECKF(r.value <= fmin(fmin(rb.value, re.value), mix) + 1e-12,
                   "oracle at %.2f: %.6f, base %.6f, expert %.6f", rates[k], r.value, rb.value, re.value);
            CHECK(r.value >= o0.value - 1e-12);
        }
    }
    /* a head reading the base's entropy (s = entropy - m) is the uncertainty policy at m nats */
    {
        const float *ent;
        int ne;
        REQUIRE(!duet_eval_calibration(c, DUET_POLICY_UNCERTAINTY, &ent, &ne, &err) && ne == n);
        float m = (float)duet_eval_rate_threshold(ent, ne, 0.4), zero[128] = {0}, w[2] = {1, 0};
        duet_head *fh = NULL;
        REQUIRE(!duet_head_from_vector(b, zero, 128, &fh, &err) &&
                !duet_head_set_features(fh, DUET_HEAD_FEAT_ENTROPY, w, -m));
        duet_eval *c2 = NULL;
        REQUIRE(!duet_eval_open(b, e, NULL, fh, path, &ep, &c2, &err));
        duet_eval_result ru = run1(c2, DUET_POLICY_UNCERTAINTY, -1, m), rc = run1(c2, DUET_POLICY_COLLM, -1, 0.5f);
        CHECK(ru.n_deferred > 0 && ru.n_deferred < n);
        CHECK(rc.n_deferred == ru.n_deferred && rc.value == ru.value);
        duet_eval_close(c2);
        duet_head_free(fh);
    }
    /* random matches collm's deferral frequency when given none */
    duet_eval_spec specs[3] = {{DUET_POLICY_COLLM, -1, 0.6f}, {DUET_POLICY_RANDOM, -1, -1}, {DUET_EVAL_POLICY_ORACLE, -1, -1}};
    duet_eval_result rs[3];
    REQUIRE(!duet_eval_run(c, specs, 3, rs, &err));
    CHECKF(rs[0].deferral_frequency > 0.05 && rs[0].deferral_frequency < 0.95, "collm deferral %.3f",
           rs[0].deferral_frequency);
    CHECK_NEAR(rs[1].rate, rs[0].deferral_frequency, 0);
    CHECKF(fabs(rs[1].deferral_frequency - rs[0].deferral_frequency) < 0.06, "random %.3f vs collm %.3f",
           rs[1].deferral_frequency, rs[0].deferral_frequency);
    CHECK(fabs(rs[2].n_deferred - rs[0].deferral_frequency * n) <= 1.0);
    /* JSON report fields */
    json_t *j = duet_eval_results_json(DUET_EVAL_TASK_NLL, path, rs, 3);
    json_t *r0 = json_array_get(json_object_get(j, "results"), 0);
    CHECK_STR(json_string_value(json_object_get(r0, "policy")), "collm");
    CHECK_STR(json_string_value(json_object_get(r0, "metric")), "nll_per_byte");
    CHECK(json_is_real(json_object_get(r0, "value")) && json_is_real(json_object_get(r0, "deferral_frequency")) &&
          json_is_integer(json_object_get(r0, "expert_calls")) && json_is_real(json_object_get(r0, "tokens_per_second")));
    json_decref(j);
    /* policies without a teacher-forced reading, and random without any rate, are refused */
    duet_eval_spec bad = {DUET_POLICY_PROXY, -1, -1};
    CHECK(duet_eval_one(c, &bad, rs, &err) < 0);
    bad = (duet_eval_spec){DUET_POLICY_RANDOM, -1, -1};
    CHECK(duet_eval_run(c, &bad, 1, rs, &err) < 0 && strstr(err.msg, "--defer-rate"));
    duet_eval_close(c);
    free(text);
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}

/* tok105 base + tok361 expert: the expert sees the base's tokens through the bridge, and
 * scores exactly as it does alone on text both spell the same way. */
TEST(eval_nll_babyllama_bridge) {
    const char *a = fixture_llama2c("tok105"), *x = fixture_llama2c("tok361");
    if (!a || !x) SKIP("../shared/models/babyllama not present");
    duet_model *b = fixture_load(a), *e = fixture_load(x);
    REQUIRE(b && e);
    char *text = story(1500);
    const char *path = fixture_write_text("baby.txt", text);
    duet_eval_params ep = {.task = DUET_EVAL_TASK_NLL};
    duet_eval *c = NULL;
    duet_error err = {0};
    REQUIRE(!duet_eval_open(b, e, NULL, NULL, path, &ep, &c, &err));
    duet_eval_result rb = run1(c, DUET_POLICY_BASE, -1, -1), re = run1(c, DUET_POLICY_EXPERT, -1, -1);
    duet_text_nll tb, te;
    duet_session *sb = NULL, *se = NULL;
    REQUIRE(!duet_session_new(b, NULL, &sb, &err) && !duet_session_new(e, NULL, &se, &err));
    REQUIRE(!duet_text_score(sb, text, strlen(text), &tb, NULL, NULL, &err));
    REQUIRE(!duet_text_score(se, text, strlen(text), &te, NULL, NULL, &err));
    CHECKF(rel(rb.value, tb.nll / tb.n_bytes) < 1e-9, "base %.12g vs %.12g", rb.value, tb.nll / tb.n_bytes);
    CHECKF(rel(re.value, te.nll / te.n_bytes) < 1e-9, "expert %.12g vs %.12g", re.value, te.nll / te.n_bytes);
    CHECK(duet_eval_n_unknown(c) == 0);
    duet_eval_result o = run1(c, DUET_EVAL_POLICY_ORACLE, 0.3, -1);
    CHECK(o.value < re.value);
    duet_session_free(sb);
    duet_session_free(se);
    duet_eval_close(c);
    free(text);
    duet_model_free(b);
    duet_model_free(e);
}

/* ---- generation ---------------------------------------------------------------------------- */
static const char *k_gsm3 =
    "{\"question\": \"Janet has 3 apples and buys 2 more. How many apples does she have?\", \"answer\": \"3+2=5\\n#### 5\"}\n"
    "\n"
    "{\"question\": \"A pen costs $1,200 and a book $300. What do both cost?\", \"answer\": \"#### 1,500\"}\n"
    "{\"question\": \"Tom had 10 marbles and lost 12. How many does he have now?\", \"answer\": \"#### -2\"}\n";

TEST(eval_gsm8k_end_to_end) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 51, 0)), *e = fixture_load(fixture_random(DT_F32, 52, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 9, 4.0f);
    const char *path = fixture_write_text("gsm3.jsonl", k_gsm3);
    REQUIRE(h && path);
    duet_eval_params ep = {.task = DUET_EVAL_TASK_GSM8K, .max_tokens = 24, .n_ctx = 128};
    duet_eval *c = NULL;
    duet_error err = {0};
    REQUIRE(!duet_eval_open(b, e, NULL, h, path, &ep, &c, &err));
    CHECK_EQ_INT(duet_eval_size(c, &err), 3);
    duet_eval_spec specs[5] = {{DUET_POLICY_BASE, -1, -1}, {DUET_POLICY_EXPERT, -1, -1}, {DUET_POLICY_COLLM, 0.3, -1},
                          {DUET_POLICY_RANDOM, -1, -1}, {DUET_POLICY_UNCERTAINTY, 0.5, -1}};
    duet_eval_result r[5];
    REQUIRE(!duet_eval_run(c, specs, 5, r, &err));
    for (int i = 0; i < 5; i++) {
        CHECK_EQ_INT(r[i].n_examples, 3);
        CHECK(r[i].value >= 0 && r[i].value <= 1 && r[i].n_tokens > 0 && r[i].n_tokens <= 3 * 24);
        CHECK(r[i].tokens_per_second > 0);
    }
    CHECK(r[0].n_deferred == 0 && r[1].deferral_frequency == 1 && r[1].expert_calls == r[1].n_tokens);
    CHECK(r[2].threshold > 0 && r[2].threshold < 1 && r[2].n_deferred > 0);
    CHECK_NEAR(r[3].rate, r[2].deferral_frequency, 0);
    CHECK_EQ_INT(r[0].n_truncated, 3); /* the paper's prompt is longer than this context allows */
    /* the oracle needs gold tokens */
    duet_eval_spec o = {DUET_EVAL_POLICY_ORACLE, 0.3, -1};
    CHECK(duet_eval_one(c, &o, r, &err) == DUET_ERR_UNSUPPORTED);
    duet_eval_close(c);
    /* a head with confidence features generates too: calibrated on its own scores */
    float w[2] = {0.5f, 0.5f};
    REQUIRE(!duet_head_set_features(h, DUET_HEAD_FEAT_HIDDEN | DUET_HEAD_FEAT_ENTROPY | DUET_HEAD_FEAT_MAXLOGP, w, 0));
    REQUIRE(!duet_eval_open(b, e, NULL, h, path, &ep, &c, &err));
    duet_eval_spec cs = {DUET_POLICY_COLLM, 0.3, -1};
    CHECKF(!duet_eval_one(c, &cs, r, &err), "%s", err.msg);
    CHECK(r[0].n_deferred > 0 && r[0].n_deferred < r[0].n_tokens);
    duet_eval_close(c);
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}

/* Answers kept by index (on_answer). */
typedef struct kept_answers { char text[8][512]; int n; } kept_answers;

static void keep_answer(void *ud, const duet_eval_spec *spec, int index, const char *output, const char *pred,
                        const char *reference, int correct) {
    kept_answers *k = ud;
    if (index >= 0 && index < 8) snprintf(k->text[index], sizeof k->text[index], "%s", output);
    k->n++;
}

/* Progress calls: each must count one more finished example of the same total. */
typedef struct progress_log { long last, total, bad, calls; } progress_log;

static void log_progress(void *ud, const char *what, long done, long total) {
    progress_log *p = ud;
    p->bad += done != p->last + 1 || (p->calls && total != p->total);
    p->last = done;
    p->total = total;
    p->calls++;
}

/* The random policy's seed contract: problem i of a run with seed S is answered as that
 * problem alone with seed S + i, whichever decoder runs it (2 decoders here for 3 problems);
 * the answers are handed on in problem order, and progress counts 1, 2, 3 of 3. */
TEST(eval_random_problem_i_is_seed_plus_i) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 51, 0)), *e = fixture_load(fixture_random(DT_F32, 52, 0));
    REQUIRE(b && e);
    duet_eval_spec spec = {DUET_POLICY_RANDOM, 0.5, -1};
    duet_eval_result r;
    duet_error err = {0};
    kept_answers all = {0}, one = {0}, other = {0};
    progress_log pl = {0};
    duet_eval_params ep = {.task = DUET_EVAL_TASK_GSM8K, .max_tokens = 24, .n_ctx = 128, .seed = 11,
                           .parallel = 2, .on_answer = keep_answer, .answer_ud = &all,
                           .progress = log_progress, .ud = &pl};
    duet_eval *c = NULL;
    REQUIRE(!duet_eval_open(b, e, NULL, NULL, fixture_write_text("gsm3-seed.jsonl", k_gsm3), &ep, &c, &err));
    REQUIRE(!duet_eval_one(c, &spec, &r, &err));
    duet_eval_close(c);
    CHECK(all.n == 3 && r.n_deferred > 0 && r.n_deferred < r.n_tokens);
    CHECKF(pl.calls == 3 && pl.last == 3 && pl.total == 3 && !pl.bad, "progress: %ld calls, last %ld of %ld, %ld bad",
           pl.calls, pl.last, pl.total, pl.bad);
    char *lines = strdup(k_gsm3), *save = NULL;
    int i = 0;
    for (char *l = strtok_r(lines, "\n", &save); l && i < 3; l = strtok_r(NULL, "\n", &save), i++) {
        char name[32], text[512];
        snprintf(name, sizeof name, "gsm-seed-%d.jsonl", i);
        snprintf(text, sizeof text, "%s\n", l);
        const char *path = fixture_write_text(name, text);
        for (int w = 0; w < 2; w++) { /* seed S + i, and (for i > 0) S itself */
            kept_answers *k = w ? &other : &one;
            ep = (duet_eval_params){.task = DUET_EVAL_TASK_GSM8K, .max_tokens = 24, .n_ctx = 128,
                                    .seed = w ? 11 : 11 + (uint64_t)i, .parallel = 1, .on_answer = keep_answer,
                                    .answer_ud = k};
            REQUIRE(!duet_eval_open(b, e, NULL, NULL, path, &ep, &c, &err));
            REQUIRE(!duet_eval_one(c, &spec, &r, &err));
            duet_eval_close(c);
        }
        CHECKF(!strcmp(one.text[0], all.text[i]), "problem %d: alone with seed %d: \"%s\", in the run: \"%s\"",
               i, 11 + i, one.text[0], all.text[i]);
        if (i) CHECKF(strcmp(other.text[0], all.text[i]), "problem %d: seeds 11 and %d answer alike", i, 11 + i);
    }
    free(lines);
    duet_model_free(b);
    duet_model_free(e);
}

TEST(eval_bad_data_names_file_and_line) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 51, 0));
    REQUIRE(b);
    struct { const char *name, *text, *want; int task; } cases[] = {
        {"bad1.jsonl", "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{\"question\": \"q\", \"answer\": \n",
         "bad1.jsonl:2: invalid JSON", DUET_EVAL_TASK_GSM8K},
        {"bad2.jsonl", "\n{\"answer\": \"#### 1\"}\n", "bad2.jsonl:2: field 'question' is missing", DUET_EVAL_TASK_GSM8K},
        {"bad3.jsonl", "{\"question\": 5, \"answer\": \"#### 1\"}\n", "bad3.jsonl:1: field 'question' is not a string",
         DUET_EVAL_TASK_GSM8K},
        {"bad4.jsonl", "{\"question\": \"q\", \"answer\": \"no number\"}\n", "bad4.jsonl:1: field 'answer' has no number",
         DUET_EVAL_TASK_GSM8K},
        {"bad5.jsonl", "[1, 2]\n", "bad5.jsonl:1: not a JSON object", DUET_EVAL_TASK_MATH},
        {"bad6.jsonl", "{\"problem\": \"p\", \"solution\": \"no box\"}\n", "bad6.jsonl:1: no field 'answer'", DUET_EVAL_TASK_MATH},
        {"empty.txt", "", "empty.txt: no text", DUET_EVAL_TASK_NLL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *p = fixture_write_text(cases[i].name, cases[i].text);
        duet_eval_params ep = {.task = cases[i].task};
        duet_eval *c = NULL;
        duet_error err = {0};
        int rc = duet_eval_open(b, NULL, NULL, NULL, p, &ep, &c, &err);
        CHECKF(rc < 0 && !c && strstr(err.msg, cases[i].want), "%s: rc %d, message: %s", cases[i].name, rc, err.msg);
        duet_eval_close(c);
    }
    duet_eval_params ep = {.task = DUET_EVAL_TASK_GSM8K};
    duet_eval *c = NULL;
    duet_error err = {0};
    CHECK(duet_eval_open(b, NULL, NULL, NULL, test_path(test_tmpdir(), "missing.jsonl"), &ep, &c, &err) == DUET_ERR_IO &&
          strstr(err.msg, "missing.jsonl"));
    duet_model_free(b);
}

/* ---- tune ------------------------------------------------------------------------------ */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int count_char(const char *s, char ch) {
    int n = 0;
    for (; s && *s; s++) n += *s == ch;
    return n;
}

TEST(eval_tune_nll_writes_table_plot_and_threshold) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 51, 0)), *e = fixture_load(fixture_random(DT_F32, 52, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 11, 4.0f);
    REQUIRE(h);
    char head_path[600], prefix[600], p[700];
    snprintf(head_path, sizeof head_path, "%s/tune-head.gguf", test_tmpdir());
    snprintf(prefix, sizeof prefix, "%s/tune-nll", test_tmpdir());
    duet_error err = {0};
    REQUIRE(!duet_head_save(h, head_path, &err));
    char *text = story(1200);
    const char *path = fixture_write_text("tune.txt", text);
    duet_eval_params ep = {.task = DUET_EVAL_TASK_NLL};
    duet_eval *c = NULL;
    duet_tune_result *tr = calloc(1, sizeof *tr);
    REQUIRE(tr && !duet_eval_open(b, e, NULL, h, path, &ep, &c, &err));
    REQUIRE(!duet_tune_run(c, NULL, 0, tr, &err));
    CHECK_EQ_INT(tr->n_points, 10);
    CHECK_EQ_INT(tr->n_calib_tokens, duet_eval_size(c, &err));
    CHECK(tr->points[0].eta == 1.0f && tr->points[0].res.n_deferred == 0);
    for (int i = 0; i < tr->n_points; i++) {
        CHECKF(tr->points[i].res.deferral_frequency <= tr->points[i].portion + 1e-9, "point %d defers %.4f > %.2f",
               i, tr->points[i].res.deferral_frequency, tr->points[i].portion);
        CHECK(tr->points[tr->best].res.value <= tr->points[i].res.value);
        if (i) CHECK(tr->points[i].eta <= tr->points[i - 1].eta);
    }
    REQUIRE(!duet_tune_save(tr, prefix, h, head_path, &err));
    snprintf(p, sizeof p, "%s.csv", prefix);
    const char *csv = slurp(p);
    CHECKF(csv && !strncmp(csv, "portion,eta,deferral_frequency,nll_per_byte,", 44) && count_char(csv, '\n') == 11,
           "csv: %s", csv ? csv : "(missing)");
    snprintf(p, sizeof p, "%s.json", prefix);
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    CHECKF(j && json_array_size(json_object_get(j, "points")) == 10 && json_is_object(json_object_get(j, "chosen")),
           "json: %s", j ? "fields missing" : je.text);
    json_decref(j);
    snprintf(p, sizeof p, "%s.svg", prefix);
    const char *svg = slurp(p);
    CHECK(svg && !strncmp(svg, "<?xml", 5) && strstr(svg, "<polyline") && strstr(svg, "deferral frequency") &&
          strstr(svg, "</svg>"));
    duet_head *g = NULL;
    REQUIRE(!duet_head_load(head_path, b, &g, &err));
    CHECK_NEAR(duet_head_threshold(g), tr->points[tr->best].eta, 0);
    duet_head_free(g);
    free(tr);
    duet_eval_close(c);
    free(text);
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}

/* ---- CLI ----------------------------------------------------------------------------------- */
static const char *duet_bin(void) {
    const char *b = getenv("DUET_BIN");
    return b && access(b, X_OK) == 0 ? b : NULL;
}

static int run_cli(const char *args, char *err, size_t cap) {
    return fixture_run_cli(args, "eval-cli", err, cap);
}

/* What the CLI tests share: random base and expert fixtures, a random head for the base
 * saved as TAG-head.gguf, and the three GSM8K problems as TAG-gsm3.jsonl. */
typedef struct cli_fixture {
    const char *bp, *xp, *data;
    duet_model *b;
    duet_head *h;
    char head_path[600];
} cli_fixture;

static int cli_fixture_make(cli_fixture *c, const char *tag) {
    memset(c, 0, sizeof *c);
    c->bp = fixture_random(DT_F32, 51, 0);
    c->xp = fixture_random(DT_F32, 52, 0);
    if (!c->bp || !c->xp || !(c->b = fixture_load(c->bp))) return 0;
    c->h = fixture_random_head(c->b, 13, 4.0f);
    snprintf(c->head_path, sizeof c->head_path, "%s/%s-head.gguf", test_tmpdir(), tag);
    duet_error e = {0};
    char name[64];
    snprintf(name, sizeof name, "%s-gsm3.jsonl", tag);
    c->data = fixture_write_text(name, k_gsm3);
    return c->h && c->data && !duet_head_save(c->h, c->head_path, &e);
}

static void cli_fixture_free(cli_fixture *c) {
    duet_head_free(c->h);
    duet_model_free(c->b);
}

TEST(eval_cli_eval_and_tune) {
    if (!duet_bin()) SKIP("DUET_BIN not set (run through make test)");
    cli_fixture c;
    REQUIRE(cli_fixture_make(&c, "cli"));
    const char *bp = c.bp, *xp = c.xp, *data = c.data, *head_path = c.head_path;
    duet_model *b = c.b;
    char json_path[600], prefix[600], args[6000], err[4096];
    snprintf(json_path, sizeof json_path, "%s/cli-eval.json", test_tmpdir());
    snprintf(prefix, sizeof prefix, "%s/cli-tune", test_tmpdir());
    duet_error e = {0};
    snprintf(args, sizeof args, "eval -m '%s' --expert '%s' --head '%s' --task gsm8k --data '%s' -n 16 -c 128 "
             "--policy base,collm,random --defer-rate 0.3 --json '%s' -t 2", bp, xp, head_path, data, json_path);
    CHECKF(run_cli(args, err, sizeof err) == 0, "duet eval: %s", err);
    json_error_t je;
    json_t *j = json_load_file(json_path, 0, &je), *res = json_object_get(j, "results");
    CHECKF(json_array_size(res) == 3, "json: %s", j ? "no 3 results" : je.text);
    for (size_t i = 0; i < json_array_size(res); i++) {
        json_t *o = json_array_get(res, i);
        static const char *keys[] = {"policy", "metric", "value", "deferral_frequency", "expert_calls", "tokens_per_second"};
        for (size_t k = 0; k < 6; k++) CHECKF(json_object_get(o, keys[k]), "result %zu lacks '%s'", i, keys[k]);
        CHECK_STR(json_string_value(json_object_get(o, "metric")), "accuracy");
    }
    json_decref(j);
    /* usage errors and bad data: exit codes 2 and 1, one line naming the problem */
    snprintf(args, sizeof args, "eval -m '%s' --task gsm8k --data '%s' --policy nosuch", bp, data);
    CHECK(run_cli(args, err, sizeof err) == 2 && strstr(err, "nosuch"));
    const char *bad = fixture_write_text("cli-bad.jsonl", "{\"question\": \"q\", \"answer\": \"#### 1\"}\nnot json\n");
    snprintf(args, sizeof args, "eval -m '%s' --task gsm8k --data '%s'", bp, bad);
    CHECKF(run_cli(args, err, sizeof err) == 1 && strstr(err, "cli-bad.jsonl:2:"), "bad data: %s", err);
    /* tune on the three problems: files written, threshold stored in the head */
    snprintf(args, sizeof args, "tune -m '%s' --expert '%s' --head '%s' --task gsm8k --data '%s' -n 12 -c 128 "
             "--portions 0,0.3,0.6 -o '%s' -t 2", bp, xp, head_path, data, prefix);
    CHECKF(run_cli(args, err, sizeof err) == 0, "duet tune: %s", err);
    const char *ext[3] = {"csv", "json", "svg"};
    for (int i = 0; i < 3; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s.%s", prefix, ext[i]);
        CHECKF(access(p, R_OK) == 0, "%s was not written", p);
    }
    duet_head *g = NULL;
    REQUIRE(!duet_head_load(head_path, b, &g, &e));
    CHECKF(duet_head_threshold(g) >= 0 && duet_head_threshold(g) <= 1, "stored threshold %g", duet_head_threshold(g));
    duet_head_free(g);
    cli_fixture_free(&c);
}

/* The two random baselines under their own names: "random" flips a fair coin per token (the
 * paper's baseline) and "random_matched" defers at the rate collm measured in the same run;
 * with --head they are in the default policy list. */
TEST(eval_cli_random_baselines) {
    if (!duet_bin()) SKIP("DUET_BIN not set (run through make test)");
    cli_fixture c;
    REQUIRE(cli_fixture_make(&c, "rnd"));
    const char *bp = c.bp, *xp = c.xp, *data = c.data, *head_path = c.head_path;
    char json_path[600], args[6000], err[4096];
    snprintf(json_path, sizeof json_path, "%s/rnd-eval.json", test_tmpdir());
    snprintf(args, sizeof args, "eval -m '%s' --expert '%s' --head '%s' --task gsm8k --data '%s' -n 16 -c 128 "
             "--threshold 0.8 --json '%s' -t 2", bp, xp, head_path, data, json_path);
    CHECKF(run_cli(args, err, sizeof err) == 0, "duet eval: %s", err);
    json_error_t je;
    json_t *j = json_load_file(json_path, 0, &je), *res = json_object_get(j, "results");
    static const char *want[5] = {"base", "expert", "collm", "random", "random_matched"};
    CHECKF(json_array_size(res) == 5, "json: %s", j ? "not 5 results" : je.text);
    double rate[5] = {0}, freq[5] = {0};
    for (size_t i = 0; i < json_array_size(res) && i < 5; i++) {
        json_t *o = json_array_get(res, i);
        CHECK_STR(json_string_value(json_object_get(o, "policy")), want[i]);
        rate[i] = json_number_value(json_object_get(o, "target_rate"));
        freq[i] = json_number_value(json_object_get(o, "deferral_frequency"));
    }
    CHECK_NEAR(rate[3], 0.5, 0);
    CHECKF(freq[2] > 0 && freq[2] < 0.4, "collm deferred %.3f: too close to 0.5 to tell the two apart",
           freq[2]);
    CHECK_NEAR(rate[4], freq[2], 1e-9);
    json_decref(j);
    /* random_matched without collm to match is refused by name */
    snprintf(args, sizeof args, "eval -m '%s' --expert '%s' --task gsm8k --data '%s' -n 16 -c 128 "
             "--policy random_matched", bp, xp, data);
    CHECKF(run_cli(args, err, sizeof err) == 1 && strstr(err, "random_matched"), "no collm: %s", err);
    cli_fixture_free(&c);
}

/* Deferral frequency, two ways: over all generated tokens, and the mean of each problem's own
 * frequency (the paper's averaging). The oracle is each problem evaluated alone, at a fixed
 * threshold so that calibration cannot differ between the runs. */
TEST(eval_deferral_frequency_per_example) {
    duet_model *b = fixture_load(fixture_random(DT_F32, 51, 0)), *e = fixture_load(fixture_random(DT_F32, 52, 0));
    REQUIRE(b && e);
    duet_head *h = fixture_random_head(b, 9, 4.0f);
    REQUIRE(h);
    duet_eval_params ep = {.task = DUET_EVAL_TASK_GSM8K, .max_tokens = 24, .n_ctx = 128};
    duet_eval_spec spec = {DUET_POLICY_COLLM, -1, 0.5};
    duet_error err = {0};
    const char *lines[3];
    char *all = strdup(k_gsm3), *save = NULL;
    int n = 0;
    for (char *l = strtok_r(all, "\n", &save); l && n < 3; l = strtok_r(NULL, "\n", &save)) lines[n++] = l;
    REQUIRE(n == 3);
    double mean = 0;
    long tok = 0, def = 0;
    for (int i = 0; i < 3; i++) {
        char name[32], text[512];
        snprintf(name, sizeof name, "gsm-one-%d.jsonl", i);
        snprintf(text, sizeof text, "%s\n", lines[i]);
        duet_eval *c = NULL;
        duet_eval_result r;
        REQUIRE(!duet_eval_open(b, e, NULL, h, fixture_write_text(name, text), &ep, &c, &err));
        REQUIRE(!duet_eval_one(c, &spec, &r, &err));
        duet_eval_close(c);
        mean += r.deferral_frequency / 3;
        tok += r.n_tokens;
        def += r.n_deferred;
    }
    free(all);
    duet_eval *c = NULL;
    duet_eval_result r;
    REQUIRE(!duet_eval_open(b, e, NULL, h, fixture_write_text("gsm3-freq.jsonl", k_gsm3), &ep, &c, &err));
    REQUIRE(!duet_eval_one(c, &spec, &r, &err));
    duet_eval_close(c);
    CHECK(def > 0 && def < tok);
    CHECK_EQ_INT(r.n_tokens, tok);
    CHECK_NEAR(r.deferral_frequency, (double)def / (double)tok, 1e-12);
    CHECK_NEAR(r.deferral_frequency_examples, mean, 1e-12);
    duet_head_free(h);
    duet_model_free(b);
    duet_model_free(e);
}
