/* tests/main.c: the one test runner. Usage: run_tests [FILTER...] (substring of test names).
 * Each test runs in-process; failures are counted, not fatal. Ends with
 * "N passed, N failed, N skipped" and exits non-zero if any test failed. */
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/common.h"
#include "test.h"

#define MAX_TESTS 1024
static test_case g_tests[MAX_TESTS];
static int g_n_tests;
static int g_cur_failed, g_cur_skipped;
static char g_skip_why[256];

void test_register(const char *name, void (*fn)(void), const char *file) {
    if (g_n_tests < MAX_TESTS) g_tests[g_n_tests++] = (test_case){name, fn, file};
}

void test_fail_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    g_cur_failed++;
}

void test_skip(const char *why) {
    g_cur_skipped = 1;
    snprintf(g_skip_why, sizeof g_skip_why, "%s", why);
}

int test_failed_now(void) { return g_cur_failed > 0; }

const char *test_shared_dir(void) {
    static char buf[1024];
    const char *env = getenv("DUET_SHARED");
    snprintf(buf, sizeof buf, "%s", env && *env ? env : "../shared");
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) return NULL;
    return buf;
}

static char g_tmpdir[256];
static void rm_tmpdir(void) {
    if (!g_tmpdir[0] || getenv("DUET_KEEP_TMP")) return;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmpdir);
}

const char *test_tmpdir(void) {
    if (!g_tmpdir[0]) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/duet-test-XXXXXX");
        if (!mkdtemp(g_tmpdir)) { perror("mkdtemp"); exit(2); }
        atexit(rm_tmpdir);
    }
    return g_tmpdir;
}

const char *test_path(const char *dir, const char *name) {
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 1024, "%s/%s", dir, name);
    return b;
}

static int by_file_then_order(const void *a, const void *b) {
    const test_case *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : (x < y ? -1 : x > y);
}

int main(int argc, char **argv) {
    int passed = 0, failed = 0, skipped = 0;
    /* constructors run in link order; sort by file for a stable report */
    qsort(g_tests, (size_t)g_n_tests, sizeof g_tests[0], by_file_then_order);
    if (!test_shared_dir())
        fprintf(stderr, "note: ../shared not found (set DUET_SHARED): tests that need the "
                        "shared models and vocabularies will be skipped\n");
    for (int i = 0; i < g_n_tests; i++) {
        if (argc > 1) {
            int match = 0;
            for (int a = 1; a < argc; a++) match |= strstr(g_tests[i].name, argv[a]) != NULL;
            if (!match) continue;
        }
        g_cur_failed = 0;
        g_cur_skipped = 0;
        double t0 = duet_time_s();
        g_tests[i].fn();
        double dt = duet_time_s() - t0;
        if (g_cur_failed) {
            failed++;
            fprintf(stderr, "FAIL %s (%.2fs)\n", g_tests[i].name, dt);
        } else if (g_cur_skipped) {
            skipped++;
            fprintf(stderr, "skip %s: %s\n", g_tests[i].name, g_skip_why);
        } else {
            passed++;
            fprintf(stderr, "ok   %s (%.2fs)\n", g_tests[i].name, dt);
        }
    }
    fflush(stderr);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
