/*
 * test_layers.c: the library's layering (tools/check_layers.py) as part of the test run, so a
 * build whose includes point up a layer, sideways between siblings or both ways between two
 * modules, or whose CLI includes a header of src/, fails `make test`. The second test runs the checker on a small hand-made tree with
 * one violation of each kind, so a checker that stopped finding them fails too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

/* Run the checker on root (NULL: the repository the tests run in). Returns its exit status
 * (-1 if it could not run) and its output in out. */
static int run_check(const char *root, char *out, size_t cap) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tools/check_layers.py %s%s%s 2>&1",
             root ? "'" : "", root ? root : "", root ? "'" : "");
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    while (fgetc(p) != EOF) {}
    int st = pclose(p);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

TEST(layers_includes_point_down) {
    if (access("/usr/bin/python3", X_OK) != 0) SKIP("/usr/bin/python3 not found");
    static char out[1 << 16];
    int rc = run_check(NULL, out, sizeof out);
    CHECKF(rc == 0, "tools/check_layers.py exited %d:\n%s", rc, out);
}

/* Write text to root/rel, creating the folders on the way. */
static int put(const char *root, const char *rel, const char *text) {
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *s = path + strlen(root) + 1; (s = strchr(s, '/')); s++) {
        *s = 0;
        int bad = mkdir(path, 0755) != 0 && errno != EEXIST;
        *s = '/';
        if (bad) return 0;
    }
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fputs(text, f);
    return fclose(f) == 0;
}

TEST(layers_check_finds_each_kind_of_violation) {
    if (access("/usr/bin/python3", X_OK) != 0) SKIP("/usr/bin/python3 not found");
    char root[1024];
    snprintf(root, sizeof root, "%s/layers-tree", test_tmpdir());
    REQUIRE(mkdir(root, 0755) == 0 || errno == EEXIST);
    /* Each include below is one case; the line numbers in the expected messages are the
     * include's line in its file. */
    static const char *const files[][2] = {
        {"include/duet.h", ""},
        {"src/base/a.c", "#include \"collab/x.h\"\n"},       /* base -> collab: up 3 ranks */
        {"src/collab/x.h", "#include \"base/b.h\"\n"},       /* down: fine */
        {"src/base/b.h", "#include \"duet.h\"\n"},           /* api is the lowest: fine */
        /* engine -> text is an allowed edge */
        {"src/engine/p.c", "#include \"engine/q.h\"\n#include \"text/t.h\"\n"},
        {"src/engine/p.h", ""},
        {"src/engine/q.c", "#include \"engine/p.h\"\n"},     /* p and q include each other */
        {"src/engine/q.h", ""},
        {"src/text/t.h", ""},
        {"src/text/t.c", "#include \"engine/r.h\"\n"},       /* text -> engine: not allowed */
        {"src/engine/r.h", ""},
        {"src/format/f.c", "#include \"quant.h\"\n"},        /* not spelled from src/ */
        {"src/format/quant.h", ""},
        /* cmd: its own header and duet.h are fine, an src/ header is not */
        {"cmd/main.c", "#include \"util.h\"\n#include \"collab/x.h\"\n#include \"duet.h\"\n"},
        {"cmd/util.h", ""},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        REQUIRE(put(root, files[i][0], files[i][1]));
    static char out[1 << 16];
    int rc = run_check(root, out, sizeof out);
    CHECKF(rc == 1, "exit %d, want 1:\n%s", rc, out);
    static const char *const want[] = {
        "src/base/a.c:1: #include \"collab/x.h\": upward include, base (rank 1) -> collab (rank 4)",
        "src/text/t.c:1: #include \"engine/r.h\": sideways include, text -> engine",
        "src/format/f.c:1: #include \"quant.h\": resolves to no file of the tree",
        "src/engine/p.c:1: #include \"engine/q.h\": src/engine/p and src/engine/q include each "
        "other's headers (and src/engine/q.c:1: #include \"engine/p.h\")",
        "cmd/main.c:2: #include \"collab/x.h\": cmd reaches past the public API (src/collab/x.h)",
        "check_layers: 5 violation(s)",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECKF(strstr(out, want[i]), "missing from the output: %s\n--- output:\n%s", want[i], out);
    /* the allowed and downward includes are not reported */
    CHECKF(!strstr(out, "text/t.h\":"), "engine -> text reported:\n%s", out);
    CHECKF(!strstr(out, "cmd/main.c:1") && !strstr(out, "cmd/main.c:3"),
           "cmd's own header or duet.h reported:\n%s", out);
}
