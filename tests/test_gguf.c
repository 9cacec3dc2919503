/* test_gguf.c: GGUF reader/writer round trips, hand-built v2 files, one hand-made bad file
 * per GGUF case of docs/bad-inputs.md (items 1-9), getters, printing, and the shared files. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format/gguf.h"
#include "format/quant.h"
#include "test.h"

/* ---- byte builder: GGUF files written by hand, so bad ones can be made on purpose ------- */
typedef struct bb {
    uint8_t *p;
    size_t n, cap;
} bb;

static void put(bb *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void le(bb *b, uint64_t v, int n) {
    for (int i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        put(b, &c, 1);
    }
}
static void u32(bb *b, uint32_t v) { le(b, v, 4); }
static void u64(bb *b, uint64_t v) { le(b, v, 8); }
static void strn(bb *b, const void *s, uint64_t len) { u64(b, len); put(b, s, (size_t)len); }
static void str(bb *b, const char *s) { strn(b, s, strlen(s)); }
static void pad(bb *b, size_t align) {
    while (b->n % align) le(b, 0, 1);
}
static void hdr(bb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    u32(b, version);
    u64(b, n_tensors);
    u64(b, n_kv);
}
static void kv_u32(bb *b, const char *key, uint32_t v) { str(b, key); u32(b, GGUF_TYPE_UINT32); u32(b, v); }
static void kv_str(bb *b, const char *key, const char *v) { str(b, key); u32(b, GGUF_TYPE_STRING); str(b, v); }

typedef struct tspec {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    uint64_t offset;
} tspec;

static void tinfo(bb *b, const tspec *t) {
    str(b, t->name);
    u32(b, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims && d < 4; d++) u64(b, t->ne[d]);
    u32(b, t->type);
    u64(b, t->offset);
}

/* A v3 file with one kv and the given tensors, then data_bytes of data (after padding). */
static void tensor_file(bb *b, int n, const tspec *ts, size_t data_bytes) {
    hdr(b, 3, (uint64_t)n, 1);
    kv_str(b, "general.architecture", "test");
    for (int i = 0; i < n; i++) tinfo(b, &ts[i]);
    pad(b, GGUF_DEFAULT_ALIGNMENT);
    for (size_t i = 0; i < data_bytes; i++) le(b, i & 0xff, 1);
}

/* Parse from an exactly-sized heap copy, so ASan sees any read past the end. */
static int parse_exact(const bb *b, gguf_file **f, duet_error *err) {
    void *c = malloc(b->n ? b->n : 1);
    if (b->n) memcpy(c, b->p, b->n);
    int rc = gguf_open_buffer(c, b->n, "bad.gguf", f, err);
    if (rc == DUET_OK) gguf_close(*f); /* the buffer must outlive the file */
    free(c);
    return rc;
}

/* The file must be refused with a one-line message naming the file and want1 (and want2). */
static void expect_bad_at(int line, bb *b, const char *want1, const char *want2) {
    gguf_file *f = (gguf_file *)(uintptr_t)1;
    duet_error err = {0};
    int rc = parse_exact(b, &f, &err);
    free(b->p);
    *b = (bb){0};
    if (rc >= 0) {
        test_fail_at(__FILE__, line, "bad file accepted (wanted an error about '%s')", want1);
        return;
    }
    if (f != NULL) test_fail_at(__FILE__, line, "*out not NULL after an error");
    if (err.code != rc) test_fail_at(__FILE__, line, "err.code %d != rc %d", err.code, rc);
    if (strncmp(err.msg, "bad.gguf: ", 10) != 0 || strchr(err.msg, '\n') ||
        !strstr(err.msg, want1) || (want2 && !strstr(err.msg, want2)))
        test_fail_at(__FILE__, line, "message \"%s\" should name the file, '%s'%s%s%s", err.msg,
                     want1, want2 ? " and '" : "", want2 ? want2 : "", want2 ? "'" : "");
}
#define EXPECT_BAD(b, w1, w2) expect_bad_at(__LINE__, (b), (w1), (w2))

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* ---- round trips ------------------------------------------------------------------------ */
TEST(gguf_roundtrip_metadata) {
    gguf_writer *w = gguf_writer_new();
    REQUIRE(w);
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_u32(w, "t.u32", 4000000000u);
    gguf_set_i32(w, "t.i32", -123456);
    gguf_set_u64(w, "t.u64", UINT64_MAX - 5);
    gguf_set_f32(w, "t.f32", 0.125f);
    gguf_set_bool(w, "t.bool", true);
    gguf_set_str(w, "t.str.empty", "");
    gguf_set_u32(w, "t.reset", 1); /* re-set below: keeps this position */
    /* arrays of every scalar type */
    uint8_t a_u8[] = {0, 1, 255};
    int8_t a_i8[] = {-128, 0, 127};
    uint16_t a_u16[] = {0, 65535};
    int16_t a_i16[] = {-32768, 32767};
    uint32_t a_u32[] = {0, 4294967295u, 7};
    int32_t a_i32[] = {INT32_MIN, -1, INT32_MAX};
    float a_f32[] = {1.5f, -2.25f, 1e30f};
    uint8_t a_bool[] = {1, 0, 1, 1};
    uint64_t a_u64[] = {UINT64_MAX, 0};
    int64_t a_i64[] = {INT64_MIN, INT64_MAX, -7};
    double a_f64[] = {3.141592653589793, -1e300};
    gguf_set_arr(w, "a.u8", GGUF_TYPE_UINT8, a_u8, 3);
    gguf_set_arr(w, "a.i8", GGUF_TYPE_INT8, a_i8, 3);
    gguf_set_arr(w, "a.u16", GGUF_TYPE_UINT16, a_u16, 2);
    gguf_set_arr(w, "a.i16", GGUF_TYPE_INT16, a_i16, 2);
    gguf_set_arr(w, "a.u32", GGUF_TYPE_UINT32, a_u32, 3);
    gguf_set_arr(w, "a.i32", GGUF_TYPE_INT32, a_i32, 3);
    gguf_set_arr(w, "a.f32", GGUF_TYPE_FLOAT32, a_f32, 3);
    gguf_set_arr(w, "a.bool", GGUF_TYPE_BOOL, a_bool, 4);
    gguf_set_arr(w, "a.u64", GGUF_TYPE_UINT64, a_u64, 2);
    gguf_set_arr(w, "a.i64", GGUF_TYPE_INT64, a_i64, 3);
    gguf_set_arr(w, "a.f64", GGUF_TYPE_FLOAT64, a_f64, 2);
    gguf_set_arr(w, "a.empty", GGUF_TYPE_UINT32, NULL, 0);
    const char *strs[] = {"<unk>", "", "h\xc3\xa9llo"};
    gguf_set_arr_str(w, "a.str", strs, NULL, 3);
    const char *raw[] = {"a\0b", "\xff\xfe"}; /* byte strings: NUL and invalid UTF-8 allowed */
    const uint64_t raw_len[] = {3, 2};
    gguf_set_arr_str(w, "a.bytes", raw, raw_len, 2);
    gguf_set_u32(w, "t.reset", 2);
    const char *path = test_path(test_tmpdir(), "meta.gguf");
    duet_error err = {0};
    int rc = gguf_write(w, path, &err);
    gguf_writer_free(w);
    CHECKF(rc == DUET_OK, "gguf_write: %s", err.msg);
    CHECK(!file_exists(test_path(test_tmpdir(), "meta.gguf.tmp")));

    gguf_file *f = NULL;
    rc = gguf_open(path, &f, &err);
    REQUIRE(rc == DUET_OK && f);
    CHECK_EQ_INT(f->version, 3);
    CHECK_EQ_INT(f->n_tensors, 0);
    CHECK_EQ_INT(f->alignment, 32);
    /* insertion order, re-set key in its first place, general.alignment appended */
    const char *order[] = {"general.architecture", "t.u32", "t.i32", "t.u64", "t.f32", "t.bool",
                           "t.str.empty", "t.reset", "a.u8"};
    for (int i = 0; i < 9; i++) CHECK_STR(f->kv[i].key, order[i]);
    CHECK_STR(f->kv[f->n_kv - 1].key, "general.alignment");
    CHECK_EQ_INT(f->n_kv, 23);

    gguf_str s;
    CHECK(gguf_get_str(f, "general.architecture", &s, &err) == DUET_OK);
    CHECK(s.len == 5 && memcmp(s.ptr, "llama", 5) == 0);
    CHECK(gguf_get_str(f, "t.str.empty", &s, &err) == DUET_OK && s.len == 0);
    uint32_t u = 0;
    CHECK(gguf_get_u32(f, "t.u32", &u, &err) == DUET_OK && u == 4000000000u);
    CHECK(gguf_get_u32(f, "t.reset", &u, &err) == DUET_OK && u == 2);
    int64_t i64 = 0;
    CHECK(gguf_get_i64_opt(f, "t.i32", &i64, &err) == DUET_OK && i64 == -123456);
    CHECK_EQ_INT(gguf_find(f, "t.u64")->type, GGUF_TYPE_UINT64);
    CHECK(gguf_find(f, "t.u64")->v.u64 == UINT64_MAX - 5);
    float x = 0;
    CHECK(gguf_get_f32_opt(f, "t.f32", &x, &err) == DUET_OK && x == 0.125f);
    bool bv = false;
    CHECK(gguf_get_bool_opt(f, "t.bool", &bv, &err) == DUET_OK && bv);

    const gguf_kv *a;
    CHECK(gguf_get_arr(f, "a.u8", GGUF_TYPE_UINT8, &a, &err) == DUET_OK);
    CHECK(a->arr_n == 3 && gguf_arr_i64(a, 2) == 255);
    CHECK(gguf_get_arr(f, "a.i8", GGUF_TYPE_INT8, &a, &err) == DUET_OK);
    CHECK(gguf_arr_i64(a, 0) == -128 && gguf_arr_i64(a, 2) == 127);
    CHECK(gguf_get_arr(f, "a.u16", GGUF_TYPE_UINT16, &a, &err) == DUET_OK);
    CHECK(gguf_arr_i64(a, 1) == 65535);
    CHECK(gguf_get_arr(f, "a.i16", GGUF_TYPE_INT16, &a, &err) == DUET_OK);
    CHECK(gguf_arr_i64(a, 0) == -32768 && gguf_arr_i64(a, 1) == 32767);
    CHECK(gguf_get_arr(f, "a.u32", GGUF_TYPE_UINT32, &a, &err) == DUET_OK);
    CHECK(gguf_arr_i64(a, 1) == 4294967295ll && gguf_arr_i64(a, 2) == 7);
    CHECK(gguf_get_arr(f, "a.i32", GGUF_TYPE_INT32, &a, &err) == DUET_OK);
    CHECK(gguf_arr_i64(a, 0) == INT32_MIN && gguf_arr_i64(a, 1) == -1);
    CHECK(gguf_get_arr(f, "a.f32", GGUF_TYPE_FLOAT32, &a, &err) == DUET_OK);
    CHECK(gguf_arr_f64(a, 0) == 1.5 && gguf_arr_f64(a, 1) == -2.25 && gguf_arr_f64(a, 2) == (double)1e30f);
    CHECK(gguf_get_arr(f, "a.bool", GGUF_TYPE_BOOL, &a, &err) == DUET_OK);
    CHECK(a->arr_n == 4 && gguf_arr_i64(a, 0) == 1 && gguf_arr_i64(a, 1) == 0);
    CHECK(gguf_get_arr(f, "a.u64", GGUF_TYPE_UINT64, &a, &err) == DUET_OK);
    CHECK(gguf_arr_i64(a, 0) == INT64_MAX); /* saturates */
    uint64_t big;
    memcpy(&big, a->arr_data, 8); /* raw data is little-endian and exact */
    CHECK(big == UINT64_MAX);
    CHECK(gguf_get_arr(f, "a.i64", GGUF_TYPE_INT64, &a, &err) == DUET_OK);
    CHECK(gguf_arr_i64(a, 0) == INT64_MIN && gguf_arr_i64(a, 1) == INT64_MAX && gguf_arr_i64(a, 2) == -7);
    CHECK(gguf_get_arr(f, "a.f64", GGUF_TYPE_FLOAT64, &a, &err) == DUET_OK);
    CHECK(gguf_arr_f64(a, 0) == 3.141592653589793 && gguf_arr_f64(a, 1) == -1e300);
    CHECK(gguf_arr_f64(a, 2) == 0.0); /* out of range index reads as 0 */
    CHECK(gguf_get_arr(f, "a.empty", GGUF_TYPE_UINT32, &a, &err) == DUET_OK && a->arr_n == 0);
    CHECK(gguf_get_arr(f, "a.str", GGUF_TYPE_STRING, &a, &err) == DUET_OK);
    CHECK(a->arr_n == 3 && a->arr_str[0].len == 5 && memcmp(a->arr_str[0].ptr, "<unk>", 5) == 0);
    CHECK(a->arr_str[1].len == 0);
    CHECK(a->arr_str[2].len == 6 && memcmp(a->arr_str[2].ptr, "h\xc3\xa9llo", 6) == 0);
    CHECK(gguf_get_arr(f, "a.bytes", GGUF_TYPE_STRING, &a, &err) == DUET_OK);
    CHECK(a->arr_n == 2 && a->arr_str[0].len == 3 && memcmp(a->arr_str[0].ptr, "a\0b", 3) == 0);
    CHECK(a->arr_str[1].len == 2 && memcmp(a->arr_str[1].ptr, "\xff\xfe", 2) == 0);
    gguf_close(f);
}

static void fill(uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
}

TEST(gguf_roundtrip_tensors_and_alignment) {
    static const struct { const char *name; int type; uint32_t n_dims; int64_t ne[4]; } ts[] = {
        {"tok_embd.weight", DT_F32, 1, {3}},
        {"blk.0.attn_q.weight", DT_F16, 2, {5, 3}},
        {"blk.0.ffn.weight", DT_Q8_0, 2, {64, 3}},
        {"blk.0.q4", DT_Q4_0, 3, {32, 1, 2}},
        {"norm.bf16", DT_BF16, 4, {2, 2, 1, 3}},
        {"k.q6", DT_Q6_K, 1, {256}}, /* parsed even though duet cannot compute with it */
    };
    const int nt = (int)(sizeof ts / sizeof ts[0]);
    for (int pass = 0; pass < 2; pass++) {
        uint32_t align = pass ? 64 : GGUF_DEFAULT_ALIGNMENT;
        gguf_writer *w = gguf_writer_new();
        if (pass) gguf_set_u32(w, "general.alignment", align);
        gguf_set_str(w, "general.architecture", "test");
        uint8_t *bufs[8];
        duet_error err = {0};
        for (int i = 0; i < nt; i++) {
            uint64_t n_el = 1;
            for (uint32_t d = 0; d < ts[i].n_dims; d++) n_el *= (uint64_t)ts[i].ne[d];
            const dtype_traits *tr = dtype_info(ts[i].type);
            size_t nb = (size_t)(n_el / (uint64_t)tr->blck * tr->type_size);
            bufs[i] = malloc(nb);
            fill(bufs[i], nb, (unsigned)i);
            CHECKF(gguf_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne, bufs[i],
                                   &err) == DUET_OK, "add_tensor: %s", err.msg);
        }
        const char *path = test_path(test_tmpdir(), pass ? "t64.gguf" : "t32.gguf");
        int rc = gguf_write(w, path, &err);
        gguf_writer_free(w);
        CHECKF(rc == DUET_OK, "gguf_write: %s", err.msg);
        gguf_file *f = NULL;
        rc = gguf_open(path, &f, &err);
        CHECKF(rc == DUET_OK, "gguf_open: %s", err.msg);
        if (rc == DUET_OK) {
            CHECK_EQ_INT(f->alignment, align);
            CHECK_EQ_INT(f->data_offset % align, 0);
            CHECK_EQ_INT(f->n_tensors, nt);
            CHECK_EQ_INT(f->size % align, 0); /* last tensor padded too */
            for (int i = 0; i < nt; i++) {
                const gguf_tensor *t = gguf_find_tensor(f, ts[i].name);
                CHECKF(t == &f->tensors[i], "tensor %s in insertion order", ts[i].name);
                if (!t) continue;
                CHECK_EQ_INT(t->type, ts[i].type);
                CHECK_EQ_INT(t->n_dims, ts[i].n_dims);
                for (int d = 0; d < 4; d++)
                    CHECK_EQ_INT(t->ne[d], d < (int)ts[i].n_dims ? ts[i].ne[d] : 1);
                CHECK_EQ_INT(t->offset % align, 0);
                CHECK_EQ_INT(((const uint8_t *)t->data - f->base) % align, 0);
                CHECK(memcmp(t->data, bufs[i], (size_t)t->nbytes) == 0);
            }
            CHECK(gguf_find_tensor(f, "missing") == NULL);
            gguf_close(f);
        }
        for (int i = 0; i < nt; i++) free(bufs[i]);
    }
}

TEST(gguf_reader_scalar_types_v2) {
    /* The writer has setters for the common types only; the reader must take all 13,
     * and version 2 files (same layout as v3). */
    bb b = {0};
    hdr(&b, 2, 1, 10);
    str(&b, "s.u8"); u32(&b, GGUF_TYPE_UINT8); le(&b, 200, 1);
    str(&b, "s.i8"); u32(&b, GGUF_TYPE_INT8); le(&b, 0x80, 1);
    str(&b, "s.u16"); u32(&b, GGUF_TYPE_UINT16); le(&b, 60000, 2);
    str(&b, "s.i16"); u32(&b, GGUF_TYPE_INT16); le(&b, 0xfffe, 2);
    str(&b, "s.i64"); u32(&b, GGUF_TYPE_INT64); u64(&b, (uint64_t)-5);
    double d = -0.5;
    uint64_t db;
    memcpy(&db, &d, 8);
    str(&b, "s.f64"); u32(&b, GGUF_TYPE_FLOAT64); u64(&b, db);
    str(&b, "s.bool"); u32(&b, GGUF_TYPE_BOOL); le(&b, 0, 1);
    kv_str(&b, "general.name", "v2 \xff raw"); /* invalid UTF-8 in a value is allowed */
    kv_u32(&b, "general.alignment", 16);
    str(&b, "s.big"); u32(&b, GGUF_TYPE_UINT64); u64(&b, (uint64_t)1 << 40);
    tinfo(&b, &(tspec){"w", 2, {4, 2}, DT_F32, 0});
    pad(&b, 16);
    for (int i = 0; i < 32; i++) le(&b, (uint64_t)i, 1);

    gguf_file *f = NULL;
    duet_error err = {0};
    int rc = gguf_open_buffer(b.p, b.n, "v2.gguf", &f, &err);
    CHECKF(rc == DUET_OK, "%s", err.msg);
    if (rc == DUET_OK) {
        CHECK_EQ_INT(f->version, 2);
        CHECK_EQ_INT(f->alignment, 16);
        uint32_t u = 0;
        int64_t v = 0;
        float x = 0;
        bool bo = true;
        CHECK(gguf_get_u32(f, "s.u8", &u, &err) == DUET_OK && u == 200);
        CHECK(gguf_get_i64_opt(f, "s.i8", &v, &err) == DUET_OK && v == -128);
        CHECK(gguf_get_u32(f, "s.u16", &u, &err) == DUET_OK && u == 60000);
        CHECK(gguf_get_i64_opt(f, "s.i16", &v, &err) == DUET_OK && v == -2);
        CHECK(gguf_get_i64_opt(f, "s.i64", &v, &err) == DUET_OK && v == -5);
        CHECK(gguf_get_f32_opt(f, "s.f64", &x, &err) == DUET_OK && x == -0.5f);
        CHECK(gguf_get_bool_opt(f, "s.bool", &bo, &err) == DUET_OK && !bo);
        gguf_str s;
        CHECK(gguf_get_str(f, "general.name", &s, &err) == DUET_OK && s.len == 8);
        const gguf_tensor *t = gguf_find_tensor(f, "w");
        CHECK(t && t->nbytes == 32 && ((const uint8_t *)t->data)[5] == 5);
        CHECK_EQ_INT(f->data_offset % 16, 0);

        /* getter errors name the key, the expected and the found type/value */
        rc = gguf_get_u32(f, "s.i8", &u, &err);
        CHECK(rc < 0 && strstr(err.msg, "v2.gguf") && strstr(err.msg, "'s.i8'") &&
              strstr(err.msg, "-128"));
        rc = gguf_get_u32(f, "s.big", &u, &err);
        CHECK(rc < 0 && strstr(err.msg, "'s.big'") && strstr(err.msg, "1099511627776"));
        rc = gguf_get_f32_opt(f, "s.u8", &x, &err);
        CHECK(rc < 0 && strstr(err.msg, "'s.u8'") && strstr(err.msg, "expected f32") &&
              strstr(err.msg, "found u8"));
        rc = gguf_get_str(f, "s.u8", &s, &err);
        CHECK(rc < 0 && strstr(err.msg, "expected str, found u8"));
        rc = gguf_get_bool_opt(f, "s.u8", &bo, &err);
        CHECK(rc < 0 && strstr(err.msg, "expected bool"));
        gguf_close(f);
    }
    free(b.p);
}

TEST(gguf_getters) {
    gguf_writer *w = gguf_writer_new();
    int32_t ids[] = {1, 2, -3};
    float scores[] = {0.5f, 1.5f};
    gguf_set_arr(w, "ids", GGUF_TYPE_INT32, ids, 3);
    gguf_set_arr(w, "scores", GGUF_TYPE_FLOAT32, scores, 2);
    gguf_set_i32(w, "neg", -1);
    gguf_set_u64(w, "huge", UINT64_MAX);
    gguf_set_str(w, "name", "x");
    const char *path = test_path(test_tmpdir(), "getters.gguf");
    duet_error err = {0};
    CHECK(gguf_write(w, path, &err) == DUET_OK);
    gguf_writer_free(w);
    gguf_file *f = NULL;
    REQUIRE(gguf_open(path, &f, &err) == DUET_OK);

    /* same-width integer types are interchangeable for arrays */
    const gguf_kv *a = NULL;
    CHECK(gguf_get_arr(f, "ids", GGUF_TYPE_UINT32, &a, &err) == DUET_OK && a->arr_n == 3);
    CHECK(gguf_arr_i64(a, 2) == -3);
    CHECK(gguf_get_arr(f, "ids", GGUF_TYPE_FLOAT32, &a, &err) < 0);
    CHECK(strstr(err.msg, "'ids'") && strstr(err.msg, "expected arr[f32], found arr[i32]"));
    CHECK(gguf_get_arr(f, "scores", GGUF_TYPE_UINT8, &a, &err) < 0); /* scores as u8: item 5 */
    CHECK(strstr(err.msg, "'scores'") && strstr(err.msg, "arr[u8]"));
    CHECK(gguf_get_arr(f, "name", GGUF_TYPE_STRING, &a, &err) < 0); /* tokens not an array */
    CHECK(strstr(err.msg, "found str"));
    CHECK(gguf_get_arr(f, "ids", GGUF_TYPE_STRING, &a, &err) < 0); /* tokens not strings */
    /* required key missing: names it; _opt leaves the output alone */
    gguf_str s = {0};
    CHECK(gguf_get_str(f, "general.architecture", &s, &err) < 0);
    CHECK(strstr(err.msg, "getters.gguf") && strstr(err.msg, "'general.architecture'") &&
          strstr(err.msg, "missing"));
    uint32_t u = 77;
    CHECK(gguf_get_u32(f, "absent", &u, &err) < 0 && strstr(err.msg, "'absent'"));
    CHECK(gguf_get_u32_opt(f, "absent", &u, &err) == DUET_OK && u == 77);
    CHECK(gguf_get_u32_opt(f, "neg", &u, &err) < 0 && strstr(err.msg, "-1") && u == 77);
    int64_t v = 5;
    CHECK(gguf_get_i64_opt(f, "huge", &v, &err) < 0 && v == 5);
    CHECK(strstr(err.msg, "18446744073709551615"));
    CHECK(gguf_get_i64_opt(f, "absent", &v, &err) == DUET_OK && v == 5);
    CHECK(gguf_get_str_opt(f, "absent", &s, &err) == DUET_OK);
    CHECK(gguf_get_arr(f, "absent", GGUF_TYPE_INT32, &a, &err) < 0);
    gguf_close(f);
}

/* The optional array getter: absent is not an error and leaves the output alone; present, it
 * checks the type exactly as gguf_get_arr does. */
TEST(gguf_get_arr_opt_absent_present_wrong) {
    gguf_writer *w = gguf_writer_new();
    int32_t ids[] = {1, 2, -3};
    gguf_set_arr(w, "ids", GGUF_TYPE_INT32, ids, 3);
    gguf_set_str(w, "name", "x");
    const char *path = test_path(test_tmpdir(), "getters-opt.gguf");
    duet_error err = {0};
    CHECK(gguf_write(w, path, &err) == DUET_OK);
    gguf_writer_free(w);
    gguf_file *f = NULL;
    REQUIRE(gguf_open(path, &f, &err) == DUET_OK);

    gguf_kv mark;
    const gguf_kv *a = &mark;
    CHECK(gguf_get_arr_opt(f, "absent", GGUF_TYPE_INT32, &a, &err) == DUET_OK && a == &mark);
    /* present: any 4-byte integer type reads an i32 array; element 2 was written as -3 */
    CHECK(gguf_get_arr_opt(f, "ids", GGUF_TYPE_UINT32, &a, &err) == DUET_OK);
    REQUIRE(a != &mark && a->arr_n == 3);
    CHECK(gguf_arr_i64(a, 2) == -3);
    /* a wrong type fails, names file, key, wanted and found type, and writes nothing */
    a = &mark;
    CHECK_EQ_INT(gguf_get_arr_opt(f, "ids", GGUF_TYPE_FLOAT32, &a, &err), DUET_ERR_FORMAT);
    CHECK(a == &mark);
    CHECKF(strstr(err.msg, "getters-opt.gguf") && strstr(err.msg, "'ids'") &&
               strstr(err.msg, "expected arr[f32], found arr[i32]"), "%s", err.msg);
    CHECK_EQ_INT(gguf_get_arr_opt(f, "name", GGUF_TYPE_STRING, &a, &err), DUET_ERR_FORMAT);
    CHECKF(strstr(err.msg, "'name'") && strstr(err.msg, "expected arr[str], found str"), "%s",
           err.msg);
    CHECK(a == &mark);
    CHECK_EQ_INT(gguf_get_arr_opt(f, "ids", GGUF_TYPE_ARRAY, &a, &err), DUET_ERR_ARG);
    gguf_close(f);
}

TEST(gguf_print_output) {
    gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.architecture", "llama\n\x1b[31m"); /* hostile: stays one line */
    const char *toks[] = {"a", "b", "c", "d", "e", "f", "g"};
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 7);
    float xs[20] = {0};
    gguf_set_arr(w, "scores", GGUF_TYPE_FLOAT32, xs, 20);
    int64_t ne[2] = {32, 4};
    uint8_t data[4 * 34] = {0};
    duet_error err;
    CHECK(gguf_add_tensor(w, "blk.0.w", DT_Q8_0, 2, ne, data, &err) == DUET_OK);
    const char *path = test_path(test_tmpdir(), "print.gguf");
    CHECK(gguf_write(w, path, &err) == DUET_OK);
    gguf_writer_free(w);
    gguf_file *f = NULL;
    REQUIRE(gguf_open(path, &f, &err) == DUET_OK);
    char *out = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&out, &n);
    gguf_print(f, m);
    fclose(m);
    gguf_close(f);
    REQUIRE(out);
    CHECK(strstr(out, "version 3"));
    CHECK(strstr(out, "\"llama\\x0a\\x1b[31m\""));
    CHECK(strstr(out, "arr[str,7]") && strstr(out, "\"a\", \"b\", \"c\", \"d\", ..."));
    CHECK(strstr(out, "arr[f32,20]"));
    CHECK(strstr(out, "blk.0.w") && strstr(out, "q8_0") && strstr(out, "32 x 4") &&
          strstr(out, "136"));
    if (test_failed_now()) fprintf(stderr, "%s", out);
    free(out);
}

/* ---- writer errors ------------------------------------------------------------------------ */
TEST(gguf_writer_errors) {
    duet_error err = {0};
    const char *path = test_path(test_tmpdir(), "werr.gguf");
    const char *tmp = test_path(test_tmpdir(), "werr.gguf.tmp");
    /* a bad key is reported by gguf_write, which then writes nothing */
    gguf_writer *w = gguf_writer_new();
    gguf_set_u32(w, "", 1);
    gguf_set_u32(w, "ok", 1);
    CHECK(gguf_write(w, path, &err) < 0 && strstr(err.msg, "werr.gguf") &&
          strstr(err.msg, "is empty"));
    CHECK(!file_exists(path) && !file_exists(tmp));
    gguf_writer_free(w);

    w = gguf_writer_new();
    gguf_set_str(w, "general.alignment", "32");
    CHECK(gguf_write(w, path, &err) < 0 && strstr(err.msg, "general.alignment"));
    gguf_set_u32(w, "general.alignment", 48);
    CHECK(gguf_write(w, path, &err) < 0 && strstr(err.msg, "power of two"));
    CHECK(!file_exists(path) && !file_exists(tmp));

    float x[64] = {0};
    int64_t ne[2] = {33, 1};
    CHECK(gguf_add_tensor(w, "q", DT_Q8_0, 1, ne, x, &err) < 0 && strstr(err.msg, "'q'") &&
          strstr(err.msg, "block size 32"));
    CHECK(gguf_add_tensor(w, "z", DT_F32, 5, ne, x, &err) < 0 && strstr(err.msg, "n_dims 5"));
    CHECK(gguf_add_tensor(w, "t", 99, 1, ne, x, &err) < 0 && strstr(err.msg, "type id 99"));
    CHECK(gguf_add_tensor(w, "t", DT_F32, 1, ne, x, &err) == DUET_OK);
    CHECK(gguf_add_tensor(w, "t", DT_F32, 1, ne, x, &err) < 0 && strstr(err.msg, "duplicate"));
    gguf_set_u32(w, "general.alignment", 8);
    CHECK(gguf_write(w, path, &err) == DUET_OK);
    /* an unwritable destination: error, and no temporary file left behind */
    const char *nodir = test_path(test_tmpdir(), "no/such/dir/x.gguf");
    CHECK(gguf_write(w, nodir, &err) == DUET_ERR_IO && strstr(err.msg, "no/such/dir/x.gguf"));
    gguf_writer_free(w);
    gguf_file *f = NULL;
    CHECK(gguf_open(path, &f, &err) == DUET_OK && f->alignment == 8);
    gguf_close(f);
}

/* ---- files on disk ------------------------------------------------------------------------ */
TEST(gguf_open_missing_empty_dir) {
    gguf_file *f = NULL;
    duet_error err = {0};
    const char *missing = test_path(test_tmpdir(), "does-not-exist.gguf");
    CHECK(gguf_open(missing, &f, &err) == DUET_ERR_IO && f == NULL);
    CHECK(strstr(err.msg, "does-not-exist.gguf") && strstr(err.msg, "No such file"));
    const char *empty = test_path(test_tmpdir(), "empty.gguf");
    FILE *e = fopen(empty, "wb");
    REQUIRE(e);
    fclose(e);
    CHECK(gguf_open(empty, &f, &err) == DUET_ERR_FORMAT && f == NULL);
    CHECK(strstr(err.msg, "empty.gguf") && strstr(err.msg, "empty"));
    CHECK(gguf_open(test_tmpdir(), &f, &err) < 0 && strstr(err.msg, "not a regular file"));
    /* a truncated file on disk (mmap path) */
    bb b = {0};
    hdr(&b, 3, 0, 1);
    kv_str(&b, "general.architecture", "llama");
    const char *trunc = test_path(test_tmpdir(), "trunc.gguf");
    e = fopen(trunc, "wb");
    REQUIRE(e);
    fwrite(b.p, 1, b.n - 2, e);
    fclose(e);
    free(b.p);
    CHECK(gguf_open(trunc, &f, &err) == DUET_ERR_FORMAT && f == NULL);
    CHECK(strstr(err.msg, "trunc.gguf") && strstr(err.msg, "general.architecture") &&
          strstr(err.msg, "past end of file"));
}

TEST(gguf_shared_files) {
    const char *sh = test_shared_dir();
    if (!sh) SKIP("../shared not found (set DUET_SHARED) for the real GGUF files");
    static const struct { const char *rel; const char *arch; } files[] = {
        {"models/tiny-random/llama-2-tiny-random.gguf", "llama"},
        {"tokenizers/vocab/ggml-vocab-llama-spm.gguf", "llama"},
    };
    for (int i = 0; i < 2; i++) {
        const char *path = test_path(sh, files[i].rel);
        gguf_file *f = NULL;
        duet_error err = {0};
        int rc = gguf_open(path, &f, &err);
        CHECKF(rc == DUET_OK, "%s", err.msg);
        if (rc) continue;
        gguf_str s = {0};
        CHECK(gguf_get_str(f, "general.architecture", &s, &err) == DUET_OK);
        CHECK(s.len == strlen(files[i].arch) && memcmp(s.ptr, files[i].arch, s.len) == 0);
        const gguf_kv *toks = NULL;
        CHECK(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, &err) == DUET_OK);
        CHECK(toks && toks->arr_n == 32000);
        if (toks && toks->arr_n == 32000)
            CHECK(toks->arr_str[1].len == 3 && memcmp(toks->arr_str[1].ptr, "<s>", 3) == 0);
        const gguf_kv *scores = NULL;
        CHECK(gguf_get_arr(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &scores, &err) ==
              DUET_OK && scores->arr_n == 32000);
        if (i == 0) CHECK(f->n_tensors > 0 && gguf_find_tensor(f, "token_embd.weight"));
        FILE *null = fopen("/dev/null", "w");
        if (null) {
            gguf_print(f, null);
            fclose(null);
        }
        gguf_close(f);
    }
}

/* ---- bad files: docs/bad-inputs.md, GGUF items 1-9 ----------------------------------------- */
TEST(gguf_bad_1_header) {
    bb b = {0};
    EXPECT_BAD(&b, "empty", NULL);
    put(&b, "GGUF\x03\x00", 6);
    EXPECT_BAD(&b, "header", "truncated");
    hdr(&b, 3, 0, 0);
    b.n = 20; /* counts cut short */
    EXPECT_BAD(&b, "header", "truncated");
    put(&b, "GGML", 4); u32(&b, 3); u64(&b, 0); u64(&b, 0);
    EXPECT_BAD(&b, "header.magic", "not a GGUF file");
    hdr(&b, 0, 0, 0);
    EXPECT_BAD(&b, "header.version", "version 0");
    hdr(&b, 1, 0, 0);
    EXPECT_BAD(&b, "header.version", "version 1");
    hdr(&b, 4, 0, 0);
    EXPECT_BAD(&b, "header.version", "version 4");
    hdr(&b, 0x03000000u, 0, 0); /* version 3 written big-endian */
    EXPECT_BAD(&b, "header.version", "big-endian/byte-swapped GGUF is not supported");
}

TEST(gguf_bad_2_counts) {
    bb b = {0};
    hdr(&b, 3, UINT64_MAX, 0);
    EXPECT_BAD(&b, "header.n_tensors", "18446744073709551615");
    hdr(&b, 3, 0, UINT64_MAX);
    EXPECT_BAD(&b, "header.n_kv", "18446744073709551615");
    hdr(&b, 3, 0, (uint64_t)1 << 62); /* n_kv * entry size overflows */
    kv_u32(&b, "a", 1);
    EXPECT_BAD(&b, "header.n_kv", "4611686018427387904");
    hdr(&b, 3, 0, 5); /* more than the 3 kvs that follow could be */
    kv_u32(&b, "a", 1);
    kv_u32(&b, "b", 1);
    kv_u32(&b, "c", 1);
    EXPECT_BAD(&b, "header.n_kv = 5", "more than the file could hold");
    hdr(&b, 3, 2, 1); /* one kv + two tensors cannot fit in 40 bytes */
    kv_u32(&b, "a", 1);
    tinfo(&b, &(tspec){"t", 1, {1}, DT_F32, 0});
    EXPECT_BAD(&b, "header.n_tensors", "more than the file could hold");
}

TEST(gguf_bad_3_strings_and_keys) {
    bb b = {0};
    hdr(&b, 3, 0, 1); /* key length huge */
    u64(&b, UINT64_MAX); u32(&b, GGUF_TYPE_UINT32); u32(&b, 0);
    EXPECT_BAD(&b, "kv #0", "string length 18446744073709551615");
    hdr(&b, 3, 0, 1); /* string value past end of file */
    str(&b, "general.name"); u32(&b, GGUF_TYPE_STRING); u64(&b, 1000); put(&b, "abcdef", 6);
    EXPECT_BAD(&b, "key 'general.name'", "past end of file");
    hdr(&b, 3, 0, 1);
    kv_u32(&b, "", 7);
    EXPECT_BAD(&b, "kv #0", "empty");
    hdr(&b, 3, 0, 2);
    kv_u32(&b, "general.x", 1);
    kv_str(&b, "general.x", "again");
    EXPECT_BAD(&b, "key 'general.x'", "duplicate key");
    hdr(&b, 3, 0, 1);
    kv_u32(&b, "bad\xc3\x28key", 1);
    EXPECT_BAD(&b, "kv #0", "not valid UTF-8");
    hdr(&b, 3, 0, 1);
    kv_u32(&b, "over\xc0\xafong", 1); /* overlong encoding of '/' */
    EXPECT_BAD(&b, "kv #0", "not valid UTF-8");
    hdr(&b, 3, 0, 1);
    strn(&b, "nul\0inside", 10); u32(&b, GGUF_TYPE_UINT32); u32(&b, 1);
    EXPECT_BAD(&b, "kv #0", "NUL");
    char longkey[GGUF_MAX_KEY + 2];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = 0;
    hdr(&b, 3, 0, 1);
    kv_u32(&b, longkey, 1);
    EXPECT_BAD(&b, "kv #0", "too long");
    hdr(&b, 3, 0, 1); /* string array element past end */
    str(&b, "tokenizer.ggml.tokens"); u32(&b, GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_STRING);
    u64(&b, 2); str(&b, "<s>"); u64(&b, 99); put(&b, "abc", 3);
    EXPECT_BAD(&b, "key 'tokenizer.ggml.tokens'", "element[1]");
}

TEST(gguf_bad_4_types_and_arrays) {
    bb b = {0};
    hdr(&b, 3, 0, 1);
    str(&b, "general.x"); u32(&b, 13); u32(&b, 0);
    EXPECT_BAD(&b, "key 'general.x'", "value type 13 out of range");
    hdr(&b, 3, 0, 1);
    str(&b, "general.x"); u32(&b, 0xffffffffu); u32(&b, 0);
    EXPECT_BAD(&b, "key 'general.x'", "value type 4294967295");
    hdr(&b, 3, 0, 1); /* array of arrays, nested deeply */
    str(&b, "nested"); u32(&b, GGUF_TYPE_ARRAY);
    for (int i = 0; i < 64; i++) { u32(&b, GGUF_TYPE_ARRAY); u64(&b, 1); }
    EXPECT_BAD(&b, "key 'nested'", "array of arrays");
    hdr(&b, 3, 0, 1);
    str(&b, "arr"); u32(&b, GGUF_TYPE_ARRAY); u32(&b, 200); u64(&b, 0);
    EXPECT_BAD(&b, "key 'arr'", "element type 200");
    hdr(&b, 3, 0, 1); /* count * 8 overflows uint64 */
    str(&b, "arr"); u32(&b, GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_UINT64);
    u64(&b, (uint64_t)1 << 61 | 1); u64(&b, 0);
    EXPECT_BAD(&b, "key 'arr'", "overflows");
    hdr(&b, 3, 0, 1); /* count * 4 fits but is past end of file */
    str(&b, "arr"); u32(&b, GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_FLOAT32); u64(&b, 1000);
    u64(&b, 0);
    EXPECT_BAD(&b, "key 'arr'", "needs 4000 bytes");
    hdr(&b, 3, 0, 1); /* string count huge: refused before allocating */
    str(&b, "arr"); u32(&b, GGUF_TYPE_ARRAY); u32(&b, GGUF_TYPE_STRING); u64(&b, UINT64_MAX / 2);
    u64(&b, 0);
    EXPECT_BAD(&b, "key 'arr'", "array count 9223372036854775807");
    hdr(&b, 3, 0, 1); /* bool other than 0/1 */
    str(&b, "flag"); u32(&b, GGUF_TYPE_BOOL); le(&b, 2, 1);
    EXPECT_BAD(&b, "key 'flag'", "bool value 2");
    hdr(&b, 3, 0, 1); /* scalar cut short */
    str(&b, "v"); u32(&b, GGUF_TYPE_UINT64); u32(&b, 0);
    EXPECT_BAD(&b, "key 'v'", "truncated");
}

TEST(gguf_bad_5_6_alignment) {
    bb b = {0};
    hdr(&b, 3, 0, 1);
    kv_str(&b, "general.alignment", "32");
    EXPECT_BAD(&b, "general.alignment", "expected u32, found str");
    hdr(&b, 3, 0, 1);
    str(&b, "general.alignment"); u32(&b, GGUF_TYPE_UINT64); u64(&b, 32);
    EXPECT_BAD(&b, "general.alignment", "found u64");
    static const uint32_t bad[] = {0, 3, 48, 1u << 17, 0x80000000u};
    for (int i = 0; i < 5; i++) {
        hdr(&b, 3, 0, 1);
        kv_u32(&b, "general.alignment", bad[i]);
        char v[32];
        snprintf(v, sizeof v, "value %u ", bad[i]);
        EXPECT_BAD(&b, "general.alignment", v);
    }
}

TEST(gguf_bad_7_tensor_names_dims) {
    bb b = {0};
    char longname[GGUF_MAX_NAME + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    tensor_file(&b, 1, &(tspec){longname, 1, {1}, DT_F32, 0}, 32);
    EXPECT_BAD(&b, "tensor #0", "too long");
    tensor_file(&b, 1, &(tspec){"", 1, {1}, DT_F32, 0}, 32);
    EXPECT_BAD(&b, "tensor #0", "empty");
    tensor_file(&b, 2, (tspec[]){{"w", 1, {8}, DT_F32, 0}, {"w", 1, {8}, DT_F32, 32}}, 64);
    EXPECT_BAD(&b, "tensor 'w'", "duplicate tensor name");
    tensor_file(&b, 1, &(tspec){"w", 0, {0}, DT_F32, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "n_dims 0");
    tensor_file(&b, 1, &(tspec){"w", 5, {1, 1, 1, 1}, DT_F32, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "n_dims 5");
    /* a required tensor missing is the model's check; the lookup must just say NULL */
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, DT_F32, 0}, 32);
    gguf_file *f = NULL;
    duet_error err;
    CHECK(gguf_open_buffer(b.p, b.n, "ok.gguf", &f, &err) == DUET_OK);
    CHECK(f && gguf_find_tensor(f, "output.weight") == NULL && gguf_find_tensor(f, "w"));
    gguf_close(f);
    free(b.p);
}

TEST(gguf_bad_8_shapes_and_types) {
    bb b = {0};
    tensor_file(&b, 1, &(tspec){"w", 2, {4, 0}, DT_F32, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "ne[1] = 0");
    tensor_file(&b, 1, &(tspec){"w", 2, {4, UINT64_MAX}, DT_F32, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "ne[1] = -1");
    tensor_file(&b, 1, &(tspec){"w", 1, {(uint64_t)1 << 63}, DT_F32, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "ne[0] = -9223372036854775808");
    tensor_file(&b, 1, &(tspec){"w", 3, {1u << 31, 1u << 31, 1u << 31}, DT_I8, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "overflows");
    tensor_file(&b, 1, &(tspec){"w", 2, {1ull << 62, 1}, DT_F64, 0}, 32); /* bytes overflow */
    EXPECT_BAD(&b, "tensor 'w'", "overflows");
    tensor_file(&b, 1, &(tspec){"w", 2, {33, 2}, DT_Q8_0, 0}, 128);
    EXPECT_BAD(&b, "tensor 'w'", "ne[0] = 33 is not a multiple of the q8_0 block size 32");
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, 99, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "unknown tensor type id 99");
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, 4, 0}, 32); /* a retired ggml id */
    EXPECT_BAD(&b, "tensor 'w'", "unknown tensor type id 4");
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, 0xffffffffu, 0}, 32);
    EXPECT_BAD(&b, "tensor 'w'", "unknown tensor type id 4294967295");
}

TEST(gguf_bad_9_offsets) {
    bb b = {0};
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, DT_F32, 4}, 64);
    EXPECT_BAD(&b, "tensor 'w'", "offset 4 is not a multiple of alignment 32");
    tensor_file(&b, 2, (tspec[]){{"a", 1, {16}, DT_F32, 0}, {"b", 1, {8}, DT_F32, 32}}, 96);
    EXPECT_BAD(&b, "tensor 'b'", "overlaps tensor 'a'");
    tensor_file(&b, 2, (tspec[]){{"a", 1, {8}, DT_F32, 64}, {"b", 1, {8}, DT_F32, 64}}, 96);
    EXPECT_BAD(&b, "tensor '", "overlaps tensor '");
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, DT_F32, 1024}, 64);
    EXPECT_BAD(&b, "tensor 'w'", "past end of file");
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, DT_F32, UINT64_MAX - 31}, 64); /* offset + size wraps */
    EXPECT_BAD(&b, "tensor 'w'", "past end of file");
    tensor_file(&b, 1, &(tspec){"w", 1, {64}, DT_F32, 0}, 100); /* data section truncated */
    EXPECT_BAD(&b, "tensor 'w'", "data section has 100 bytes");
    tensor_file(&b, 1, &(tspec){"w", 1, {8}, DT_F32, 0}, 0); /* no data at all */
    EXPECT_BAD(&b, "tensor 'w'", "past end of file");
}

TEST(gguf_vocab_only_without_padding) {
    /* vocabulary-only files end right after the metadata; that is not a truncation */
    bb b = {0};
    hdr(&b, 3, 0, 1);
    kv_str(&b, "tokenizer.ggml.model", "llama"); /* 24 + 45 bytes: not a multiple of 32 */
    gguf_file *f = NULL;
    duet_error err = {0};
    void *c = malloc(b.n);
    memcpy(c, b.p, b.n);
    int rc = gguf_open_buffer(c, b.n, "vocab.gguf", &f, &err);
    CHECKF(rc == DUET_OK, "%s", err.msg);
    if (rc == DUET_OK) {
        CHECK_EQ_INT(f->data_offset, b.n);
        CHECK_EQ_INT(f->n_tensors, 0);
        gguf_close(f);
    }
    free(c);
    free(b.p);
}
