/*
 * test.h: the project's tiny test framework. Each tests/test_*.c file registers its tests
 * with TEST(name) { ... }; the one runner (tests/main.c) runs them all (or those whose name
 * contains argv[1]) and ends with the line "N passed, N failed, N skipped".
 * A test fails when any CHECK fails; SKIP("why") ends it as skipped (only for missing
 * ../shared data or CPU features, never to hide a failure).
 */
#ifndef DUET_TEST_H
#define DUET_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct test_case { const char *name; void (*fn)(void); const char *file; } test_case;
void test_register(const char *name, void (*fn)(void), const char *file);
void test_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void test_skip(const char *why);
int test_failed_now(void); /* 1 if the current test has failed so far */

/* Where shared data lives: $DUET_SHARED or ../shared. Returns NULL when absent. */
const char *test_shared_dir(void);
/* A fresh temporary directory for the current run (removed at exit). */
const char *test_tmpdir(void);
/* Path join into a static rotating buffer. */
const char *test_path(const char *dir, const char *name);

#define TEST(name)                                                                          \
    static void test_##name(void);                                                          \
    __attribute__((constructor)) static void test_reg_##name(void) {                        \
        test_register(#name, test_##name, __FILE__);                                        \
    }                                                                                       \
    static void test_##name(void)

#define CHECK(cond)                                                                         \
    do { if (!(cond)) { test_fail_at(__FILE__, __LINE__, "CHECK(%s)", #cond); } } while (0)
#define CHECKF(cond, ...)                                                                   \
    do { if (!(cond)) { test_fail_at(__FILE__, __LINE__, __VA_ARGS__); } } while (0)
#define CHECK_EQ_INT(a, b)                                                                  \
    do { long long _a = (long long)(a), _b = (long long)(b);                                \
         if (_a != _b) test_fail_at(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b,   \
                                    _a, _b); } while (0)
#define CHECK_STR(a, b)                                                                     \
    do { const char *_a = (a), *_b = (b);                                                   \
         if (!_a || !_b || strcmp(_a, _b) != 0)                                             \
             test_fail_at(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b,         \
                          _a ? _a : "(null)", _b ? _b : "(null)"); } while (0)
#define CHECK_NEAR(a, b, tol)                                                               \
    do { double _a = (a), _b = (b);                                                         \
         if (!(fabs(_a - _b) <= (tol)))                                                     \
             test_fail_at(__FILE__, __LINE__, "%s ~ %s: %.9g vs %.9g (tol %g)", #a, #b, _a, \
                          _b, (double)(tol)); } while (0)
/* Stop the test here if it already failed (to avoid dereferencing NULL after a CHECK). */
#define REQUIRE(cond) do { CHECK(cond); if (test_failed_now()) return; } while (0)
#define SKIP(why) do { test_skip(why); return; } while (0)

/* Normalised mean squared error: sum (a-b)^2 / sum b^2 (b the reference). */
static inline double test_nmse(const float *a, const float *ref, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

#endif
