/*
 * test_progress.c: the text of the command-line progress line: the one ETA format and the
 * rate/ETA arithmetic, and the snprintf-like length contract (never past cap, always
 * NUL-terminated, the whole length returned). Every expected string is worked out by hand in
 * the comments.
 */
#include <math.h>
#include <string.h>

#include "duet.h"
#include "test.h"

static const char *eta(double s) {
    static char buf[64];
    duet_format_eta(buf, sizeof buf, s);
    return buf;
}

/* Under an hour m:ss, from an hour h:mm:ss; hours do not wrap at a day. */
TEST(progress_eta_formats) {
    CHECK_STR(eta(0), "ETA 0:00");
    CHECK_STR(eta(59), "ETA 0:59");
    CHECK_STR(eta(60), "ETA 1:00");        /* 60 = 1 min 0 s */
    CHECK_STR(eta(65), "ETA 1:05");        /* 65 = 1 min 5 s */
    CHECK_STR(eta(600), "ETA 10:00");      /* 600 = 10 min */
    CHECK_STR(eta(3599), "ETA 59:59");     /* 3599 = 59*60 + 59 */
    CHECK_STR(eta(3600), "ETA 1:00:00");   /* 3600 = 1 h */
    CHECK_STR(eta(3661), "ETA 1:01:01");   /* 3661 = 3600 + 60 + 1 */
    CHECK_STR(eta(86399), "ETA 23:59:59"); /* 86399 = 23*3600 (82800) + 3599 (59 min 59 s) */
    CHECK_STR(eta(90061), "ETA 25:01:01"); /* 90061 = 25*3600 (90000) + 61 */
    /* the largest accepted: 999999999 = 277777*3600 (999997200) + 2799 (46*60 + 39) */
    CHECK_STR(eta(999999999), "ETA 277777:46:39");
}

/* Seconds round to the nearest one: 59.4 -> 59; 59.5 -> 60 (carries into the minutes);
 * 3599.5 -> 3600 (carries into the hours). */
TEST(progress_eta_rounds) {
    CHECK_STR(eta(59.4), "ETA 0:59");
    CHECK_STR(eta(59.5), "ETA 1:00");
    CHECK_STR(eta(3599.5), "ETA 1:00:00");
    CHECK_STR(eta(0.4), "ETA 0:00");
}

/* No meaningful estimate: negative, NaN, infinite, and 1e9 s (three decades) or more. */
TEST(progress_eta_unknown) {
    CHECK_STR(eta(-1), "ETA ?");
    CHECK_STR(eta(-0.001), "ETA ?");
    CHECK_STR(eta(NAN), "ETA ?");
    CHECK_STR(eta(INFINITY), "ETA ?");
    CHECK_STR(eta(-INFINITY), "ETA ?");
    CHECK_STR(eta(1e9), "ETA ?");
    CHECK_STR(eta(1e300), "ETA ?");
}

/* Every cap from 0 to one past the text: the first min(cap - 1, len) bytes of `want` then a
 * NUL, nothing written at or past cap (guard bytes stay 'X'), and the whole length returned. */
static void check_caps(const char *want, size_t (*fmt)(char *, size_t, const void *),
                       const void *arg) {
    size_t len = strlen(want);
    for (size_t cap = 0; cap <= len + 1; cap++) {
        char buf[256];
        memset(buf, 'X', sizeof buf);
        size_t n = fmt(cap ? buf : NULL, cap, arg);
        CHECKF(n == len, "cap %zu: returned %zu, want %zu", cap, n, len);
        if (cap) {
            size_t keep = cap - 1 < len ? cap - 1 : len;
            CHECKF(!memcmp(buf, want, keep) && buf[keep] == 0, "cap %zu: \"%.*s\"", cap,
                   (int)keep, buf);
        }
        for (size_t i = cap; i < sizeof buf; i++)
            if (buf[i] != 'X') { CHECKF(0, "cap %zu: byte %zu written", cap, i); break; }
    }
}

static size_t eta_fmt(char *buf, size_t cap, const void *arg) {
    return duet_format_eta(buf, cap, *(const double *)arg);
}

static size_t line_fmt(char *buf, size_t cap, const void *arg) {
    return duet_format_progress(buf, cap, arg);
}

/* "ETA 1:05" is 8 bytes: cap 9 holds it exactly, cap 8 is one short ("ETA 1:0"), cap 3 far
 * too small ("ET"), cap 0 writes nothing; check_caps goes through all of them. */
TEST(progress_eta_buffer_contract) {
    char buf[16];
    memset(buf, 'X', sizeof buf);
    CHECK_EQ_INT(duet_format_eta(buf, 9, 65), 8);
    CHECK_STR(buf, "ETA 1:05");
    CHECK(buf[9] == 'X');
    memset(buf, 'X', sizeof buf);
    CHECK_EQ_INT(duet_format_eta(buf, 8, 65), 8);
    CHECK_STR(buf, "ETA 1:0");
    CHECK(buf[8] == 'X');
    memset(buf, 'X', sizeof buf);
    CHECK_EQ_INT(duet_format_eta(buf, 3, 65), 8);
    CHECK_STR(buf, "ET");
    CHECK(buf[3] == 'X');
    CHECK_EQ_INT(duet_format_eta(NULL, 0, 65), 8);
    double s[] = {65, 3661, NAN};
    check_caps("ETA 1:05", eta_fmt, &s[0]);
    check_caps("ETA 1:01:01", eta_fmt, &s[1]);
    check_caps("ETA ?", eta_fmt, &s[2]);
}

static const char *line(const duet_progress_line *l) {
    static char buf[256];
    duet_format_progress(buf, sizeof buf, l);
    return buf;
}

/* Resumed work: 100 of the 300 done tokens were there before the clock started, so the rate
 * is (300 - 100) / 4 s = 50 tok/s (one decimal from 10 up to 100), and the 1000 - 300 = 700
 * tokens left take 700 / 50 = 14 s. */
TEST(progress_line_resumed) {
    duet_progress_line l = {"duet score", "tok", 300, 1000, 100, 4.0, "3/10 sequences"};
    CHECK_STR(line(&l), "duet score: 300/1000 tok, 50.0 tok/s, ETA 0:14, 3/10 sequences");
}

/* 5000 tokens in 2 s = 2500 tok/s (no decimals from 100 up); 9005000 - 5000 = 9000000 left
 * / 2500 = 3600 s = one hour. */
TEST(progress_line_fast_hours) {
    duet_progress_line l = {"duet perplexity", "tok", 5000, 9005000, 0, 2.0, NULL};
    CHECK_STR(line(&l), "duet perplexity: 5000/9005000 tok, 2500 tok/s, ETA 1:00:00");
}

/* 3 examples in 4 s = 0.75/s (two decimals below 10); 7 left / 0.75 = 9.33 s -> 9 s. No unit:
 * no space before the rate's "/s" and none after the count; no label: no "label: ". */
TEST(progress_line_slow_no_unit) {
    duet_progress_line l = {"scoring", NULL, 3, 10, 0, 4.0, NULL};
    CHECK_STR(line(&l), "scoring: 3/10, 0.75/s, ETA 0:09");
    l.unit = "";
    l.extra = "";
    CHECK_STR(line(&l), "scoring: 3/10, 0.75/s, ETA 0:09");
    l.label = NULL;
    CHECK_STR(line(&l), "3/10, 0.75/s, ETA 0:09");
}

/* The decimal boundaries: 20 in 2 s = 10/s -> "10.0" (one decimal from 10); 100 left / 10 =
 * 10 s. 200 in 2 s = 100/s -> "100" (none from 100); 6000 left / 100 = 60 s = 1:00. 19 in
 * 2 s = 9.5/s -> "9.50" (two below 10); 1 left / 9.5 = 0.105 s -> 0:00. */
TEST(progress_line_rate_decimals) {
    duet_progress_line l = {"t", "steps", 20, 120, 0, 2.0, NULL};
    CHECK_STR(line(&l), "t: 20/120 steps, 10.0 steps/s, ETA 0:10");
    l = (duet_progress_line){"t", "steps", 200, 6200, 0, 2.0, NULL};
    CHECK_STR(line(&l), "t: 200/6200 steps, 100 steps/s, ETA 1:00");
    l = (duet_progress_line){"t", "steps", 19, 20, 0, 2.0, NULL};
    CHECK_STR(line(&l), "t: 19/20 steps, 9.50 steps/s, ETA 0:00");
}

/* Before any timed work (no time elapsed, or nothing done since the clock started) the rate
 * and the ETA are unknown; once done reaches total nothing is left, so the ETA is 0:00 even
 * without a rate. */
TEST(progress_line_unknown_rate) {
    duet_progress_line l = {"x", "steps", 5, 10, 0, 0.0, NULL};
    CHECK_STR(line(&l), "x: 5/10 steps, ? steps/s, ETA ?");
    l.elapsed = -1;
    CHECK_STR(line(&l), "x: 5/10 steps, ? steps/s, ETA ?");
    l.elapsed = 3;
    l.done0 = 5;
    CHECK_STR(line(&l), "x: 5/10 steps, ? steps/s, ETA ?");
    l.done = l.done0 = l.total = 10;
    CHECK_STR(line(&l), "x: 10/10 steps, ? steps/s, ETA 0:00");
}

/* The whole line against every cap: exactly full, one short, far too small, none. */
TEST(progress_line_buffer_contract) {
    duet_progress_line l = {"duet score", "tok", 300, 1000, 100, 4.0, "3/10 sequences"};
    const char *want = "duet score: 300/1000 tok, 50.0 tok/s, ETA 0:14, 3/10 sequences";
    size_t len = strlen(want);
    char buf[128];
    memset(buf, 'X', sizeof buf);
    CHECK_EQ_INT(duet_format_progress(buf, len + 1, &l), len);
    CHECK_STR(buf, want);
    memset(buf, 'X', sizeof buf);
    CHECK_EQ_INT(duet_format_progress(buf, len, &l), len);
    CHECK(!strncmp(buf, want, len - 1) && buf[len - 1] == 0 && buf[len] == 'X');
    memset(buf, 'X', sizeof buf);
    CHECK_EQ_INT(duet_format_progress(buf, 5, &l), len);
    CHECK_STR(buf, "duet");
    CHECK(buf[5] == 'X');
    CHECK_EQ_INT(duet_format_progress(NULL, 0, &l), len);
    check_caps(want, line_fmt, &l);
}
