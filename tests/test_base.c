/*
 * test_base.c: the shared helpers of src/base that every layer calls (hashing, UTF-8
 * validation, atomic file replacement). Expected values are published test vectors or worked
 * out by hand in the comments, never taken from the code under test.
 */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/atomic_file.h"
#include "base/hash.h"
#include "base/utf8.h"
#include "test.h"

/* FNV-1a 64 against the published test vectors of the FNV reference (Fowler, Noll, Vo):
 * "" -> the offset basis itself, "a" -> 0xaf63dc4c8601ec8c, "foobar" -> 0x85944171f73967e8. */
TEST(base_fnv1a_reference_vectors) {
    CHECK(duet_fnv1a(DUET_FNV_OFFSET, "", 0) == 0xcbf29ce484222325ull);
    CHECK(duet_fnv1a(DUET_FNV_OFFSET, "a", 1) == 0xaf63dc4c8601ec8cull);
    CHECK(duet_fnv1a(DUET_FNV_OFFSET, "foobar", 6) == 0x85944171f73967e8ull);
    CHECK(duet_fnv1a_str(DUET_FNV_OFFSET, "foobar") == 0x85944171f73967e8ull);
    /* Chaining is the same as hashing the concatenation. */
    CHECK(duet_fnv1a(duet_fnv1a(DUET_FNV_OFFSET, "foo", 3), "bar", 3) == 0x85944171f73967e8ull);
}

/* The short seed the data and score files record hashes with: "ab" from it, worked out with
 * Python integers (h = ((h ^ c) * 0x100000001b3) mod 2^64 for c in b"ab"), is
 * 0x9bac4b00c65ba4ec. A bare byte beyond the NUL must not count for the string form. */
TEST(base_fnv1a_short_seed) {
    CHECK(DUET_FNV_SEED_SHORT == 1469598103934665603ull);
    CHECK(duet_fnv1a(DUET_FNV_SEED_SHORT, "ab", 2) == 0x9bac4b00c65ba4ecull);
    CHECK(duet_fnv1a_str(DUET_FNV_SEED_SHORT, "ab\0c") == 0x9bac4b00c65ba4ecull);
}

/* Hand-picked characters at each boundary of strict UTF-8. */
TEST(base_utf8_char_boundaries) {
    static const struct { const char *s; size_t n; int want; } c[] = {
        {"A", 1, 1},
        {"\x7f", 1, 1},
        {"\xc2\x80", 2, 2},          /* U+0080, the first 2-byte character */
        {"\xdf\xbf", 2, 2},          /* U+07FF */
        {"\xc0\xaf", 2, 0},          /* overlong '/' (C0 lead) */
        {"\xc1\xbf", 2, 0},          /* overlong U+007F (C1 lead) */
        {"\xe0\xa0\x80", 3, 3},      /* U+0800 */
        {"\xe0\x9f\xbf", 3, 0},      /* overlong U+07FF */
        {"\xed\x9f\xbf", 3, 3},      /* U+D7FF, just below the surrogates */
        {"\xed\xa0\x80", 3, 0},      /* U+D800, a surrogate */
        {"\xed\xbf\xbf", 3, 0},      /* U+DFFF */
        {"\xee\x80\x80", 3, 3},      /* U+E000 */
        {"\xef\xbf\xbf", 3, 3},      /* U+FFFF */
        {"\xf0\x90\x80\x80", 4, 4},  /* U+10000 */
        {"\xf0\x8f\xbf\xbf", 4, 0},  /* overlong U+FFFF */
        {"\xf4\x8f\xbf\xbf", 4, 4},  /* U+10FFFF, the last code point */
        {"\xf4\x90\x80\x80", 4, 0},  /* U+110000 */
        {"\xf5\x80\x80\x80", 4, 0},  /* F5 lead: past U+10FFFF */
        {"\xff", 1, 0},
        {"\x80", 1, 0},              /* a stray continuation byte */
        {"\xe2\x28\xa1", 3, 0},      /* second byte not a continuation */
        {"\xe2\x82\x28", 3, 0},      /* third byte not a continuation */
        /* valid starts cut short: incomplete (-1), not invalid */
        {"\xe2\x82", 2, -1},
        {"\xe2", 1, -1},
        {"\xf0\x9f\x98", 3, -1},
        {"", 0, -1},
        /* a start that is already wrong stays invalid however short */
        {"\xe0\x80", 2, 0},
        {"\xed\xa0", 2, 0},
        {"\xf4\x90", 2, 0},
        {"\xc0", 1, 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        CHECKF(duet_utf8_char(c[i].s, c[i].n) == c[i].want, "case %zu: got %d, want %d", i,
               duet_utf8_char(c[i].s, c[i].n), c[i].want);
    /* check: the offset of the first bad character; a cut-short tail counts as bad */
    CHECK(duet_utf8_check("a\xe2\x82\xac", 4) == 4);
    CHECK(duet_utf8_check("ab\xed\xa0\x80z", 6) == 2);
    CHECK(duet_utf8_check("ab\xe2\x82", 4) == 2);
    CHECK(duet_utf8_check("", 0) == 0);
}

/* An independent decoder (assemble the code point, then reject by value: below the form's
 * minimum, a surrogate, or above U+10FFFF) compared over every 1-, 2- and 3-byte sequence
 * and every 4-byte sequence with lead F0..F7 and continuation tails. */
static int ref_utf8(const unsigned char *s, size_t n) {
    unsigned c = s[0], len, cp, min;
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; min = 0x80; }
    else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
    else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return -2; /* too short to judge here; those cases are in the table above */
    for (unsigned k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return (int)len;
}

TEST(base_utf8_char_exhaustive) {
    unsigned char s[4];
    long bad = 0;
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (unsigned c = 0; c < 256; c++) {
                s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = (unsigned char)c;
                int r = ref_utf8(s, 3);
                if (r != -2 && duet_utf8_char(s, 3) != r && bad++ < 5)
                    CHECKF(0, "%02x %02x %02x: got %d, want %d", a, b, c, duet_utf8_char(s, 3), r);
            }
    for (unsigned a = 0xf0; a < 0xf8; a++)
        for (unsigned b = 0x80; b < 0xc0; b++)
            for (unsigned c = 0x7f; c < 0xc1; c++) {
                s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = 0x80, s[3] = (unsigned char)c;
                if (duet_utf8_char(s, 4) != ref_utf8(s, 4) && bad++ < 5)
                    CHECKF(0, "%02x %02x 80 %02x: got %d, want %d", a, b, c, duet_utf8_char(s, 4),
                           ref_utf8(s, 4));
            }
    CHECK(bad == 0);
}

/* ---- atomic file replacement -------------------------------------------------------------- */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[256];
    *n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

TEST(base_atomic_write_replaces_whole_file) {
    const char *dir = test_tmpdir();
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/atomic-a.txt", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    duet_error err = {0};
    size_t n = 0;
    CHECK(duet_atomic_write(path, "first version", 13, &err) == DUET_OK);
    const char *s = slurp(path, &n);
    CHECK(s && n == 13 && !memcmp(s, "first version", 13));
    CHECK(!exists(tmp));
    /* a shorter replacement leaves nothing of the old content behind */
    CHECK(duet_atomic_write(path, "v2", 2, &err) == DUET_OK);
    s = slurp(path, &n);
    CHECK(s && n == 2 && !memcmp(s, "v2", 2));
    CHECK(!exists(tmp));
    /* abandoned: the target keeps its content and the temporary file goes */
    duet_atomic a;
    REQUIRE(duet_atomic_open(&a, path, &err) == DUET_OK);
    fputs("half written", a.f);
    fflush(a.f);
    CHECK(exists(tmp));
    duet_atomic_abort(&a);
    s = slurp(path, &n);
    CHECK(s && n == 2 && !memcmp(s, "v2", 2));
    CHECK(!exists(tmp));
}

TEST(base_atomic_write_failures_leave_target_alone) {
    const char *dir = test_tmpdir();
    char path[512], tmp[520];
    duet_error err = {0};
    /* no such directory: an I/O error naming the target */
    snprintf(path, sizeof path, "%s/no/such/dir/x.txt", dir);
    CHECK(duet_atomic_write(path, "x", 1, &err) == DUET_ERR_IO && strstr(err.msg, "no/such/dir/x.txt"));
    /* the target is a directory: the rename fails, the temporary file is removed and the
     * directory is still there */
    snprintf(path, sizeof path, "%s/atomic-dir", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    REQUIRE(mkdir(path, 0755) == 0);
    CHECK(duet_atomic_write(path, "x", 1, &err) == DUET_ERR_IO && strstr(err.msg, "rename"));
    CHECK(!exists(tmp));
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISDIR(st.st_mode));
    /* the low-level finish keeps its temporary file on failure (a resumable writer needs it) */
    FILE *f = fopen(tmp, "wb");
    REQUIRE(f);
    fputs("partial", f);
    const char *step = NULL;
    CHECK(duet_file_finish(f, tmp, path, &step) == -1 && step && !strcmp(step, "rename"));
    CHECK(exists(tmp));
    unlink(tmp);
    rmdir(path);
}
