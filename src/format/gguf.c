/*
 * gguf.c: GGUF v2/v3 reader (from an mmap or a caller's buffer) and writer. Format only.
 *
 * The reader treats every file as hostile (docs/bad-inputs.md, GGUF items 1-9): each count,
 * length, offset and size is checked against the bytes that remain BEFORE it is used or
 * allocated, so nothing is read outside the buffer and no allocation exceeds a small
 * multiple of the file size. Each error is one line naming the file, the field and the value.
 * On success the invariants listed in gguf.h hold, so callers need not re-check them.
 *
 * The writer keeps everything in memory, serialises kvs as they are set (a re-set key keeps
 * its first position), and writes PATH.tmp, fsyncs and renames, so a failed or interrupted
 * write never leaves a partial file at PATH.
 */
#include "format/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/atomic_file.h"
#include "base/common.h"
#include "base/hash.h"
#include "base/utf8.h"
#include "format/quant.h"

#define GGUF_HEADER_BYTES 24 /* magic, version, n_tensors, n_kv */
/* The smallest possible entries, used to bound counts before allocating anything:
 * a kv is key length + >= 1 key byte + value type + >= 1 value byte (a u8 or bool);
 * a tensor info is name length + >= 1 name byte + n_dims + >= 1 dim + type + offset. */
#define KV_MIN_BYTES (8 + 1 + 4 + 1)
#define TENSOR_MIN_BYTES (8 + 1 + 4 + 8 + 4 + 8)
#define GGUF_MAX_ALIGNMENT 65536u
#define PATH_CAP sizeof(((gguf_file *)0)->path)

/* Element sizes of the scalar metadata types (0 for STRING and ARRAY). */
static const uint8_t k_type_size[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_UINT8] = 1,   [GGUF_TYPE_INT8] = 1,    [GGUF_TYPE_UINT16] = 2,
    [GGUF_TYPE_INT16] = 2,   [GGUF_TYPE_UINT32] = 4,  [GGUF_TYPE_INT32] = 4,
    [GGUF_TYPE_FLOAT32] = 4, [GGUF_TYPE_BOOL] = 1,    [GGUF_TYPE_UINT64] = 8,
    [GGUF_TYPE_INT64] = 8,   [GGUF_TYPE_FLOAT64] = 8,
};

static const char *const k_type_names[GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64",
};

const char *gguf_type_name(int t) {
    return t >= 0 && t < GGUF_TYPE_COUNT ? k_type_names[t] : "?";
}

static bool type_is_int(gguf_type t) {
    return t <= GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64;
}

static bool type_is_signed(gguf_type t) {
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
           t == GGUF_TYPE_INT64;
}

static bool type_is_scalar(gguf_type t) {
    return (unsigned)t < GGUF_TYPE_COUNT && k_type_size[t] != 0;
}

/* ---- little-endian bytes, independent of the host's order ------------------------------ */
static uint64_t le_get(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void le_put(uint8_t *p, uint64_t v, unsigned n) {
    for (unsigned i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Two's complement reinterpretation without implementation-defined conversions. */
static int64_t u64_as_i64(uint64_t u) {
    return u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
}

/* Decode one scalar of type t at p into the kv value union. */
static void scalar_decode(gguf_type t, const uint8_t *p, gguf_kv *kv) {
    unsigned n = k_type_size[t];
    uint64_t u = le_get(p, n);
    if (t == GGUF_TYPE_FLOAT32) {
        uint32_t b = (uint32_t)u;
        float x;
        memcpy(&x, &b, 4);
        kv->v.f64 = x;
    } else if (t == GGUF_TYPE_FLOAT64) {
        memcpy(&kv->v.f64, &u, 8);
    } else if (type_is_signed(t)) {
        uint64_t sign = (uint64_t)1 << (8 * n - 1);
        if (n < 8 && (u & sign)) u |= ~((sign << 1) - 1); /* sign-extend */
        kv->v.i64 = u64_as_i64(u);
    } else {
        kv->v.u64 = u;
    }
}

/* ---- names: shared by reader and writer so both accept exactly the same keys/names ------ */
/* NULL when s[0..len) is an acceptable key / tensor name, else what is wrong with it. */
static const char *name_problem(const char *s, uint64_t len, uint64_t max) {
    if (len == 0) return "is empty";
    if (len > max) return "is too long";
    if (memchr(s, 0, len)) return "contains a NUL byte";
    if (duet_utf8_check(s, len) != len) return "is not valid UTF-8";
    return NULL;
}

/* ---- string -> index hash table (duplicate detection and lookups in O(1)) ------------- */
typedef const char *(*name_fn)(const void *arr, size_t i);

typedef struct strindex {
    size_t *slot; /* index + 1; 0 = empty */
    size_t cap;   /* power of two, or 0 */
    size_t n;
} strindex;

static size_t ix_find(const strindex *ix, const char *s, name_fn nm, const void *arr) {
    if (!ix->cap) return SIZE_MAX;
    for (size_t h = (size_t)duet_fnv1a_str(DUET_FNV_OFFSET, s) & (ix->cap - 1);; h = (h + 1) & (ix->cap - 1)) {
        if (!ix->slot[h]) return SIZE_MAX;
        if (strcmp(nm(arr, ix->slot[h] - 1), s) == 0) return ix->slot[h] - 1;
    }
}

static void ix_put(size_t *slot, size_t cap, size_t idx, const char *s) {
    size_t h = (size_t)duet_fnv1a_str(DUET_FNV_OFFSET, s) & (cap - 1);
    while (slot[h]) h = (h + 1) & (cap - 1);
    slot[h] = idx + 1;
}

/* Make room for n entries (load factor <= 1/2). -1 on allocation failure. */
static int ix_reserve(strindex *ix, size_t n, name_fn nm, const void *arr) {
    if (n <= ix->cap / 2) return 0;
    size_t cap = 16;
    while (cap / 2 < n) {
        if (cap > SIZE_MAX / 4 / sizeof(size_t)) return -1;
        cap *= 2;
    }
    size_t *slot = calloc(cap, sizeof *slot);
    if (!slot) return -1;
    for (size_t i = 0; i < ix->cap; i++)
        if (ix->slot[i]) ix_put(slot, cap, ix->slot[i] - 1, nm(arr, ix->slot[i] - 1));
    free(ix->slot);
    ix->slot = slot;
    ix->cap = cap;
    return 0;
}

/* Add idx (whose name is not yet present). -1 on allocation failure. */
static int ix_add(strindex *ix, size_t idx, name_fn nm, const void *arr) {
    if (ix_reserve(ix, ix->n + 1, nm, arr)) return -1;
    ix_put(ix->slot, ix->cap, idx, nm(arr, idx));
    ix->n++;
    return 0;
}

static const char *kv_key_at(const void *arr, size_t i) { return ((const gguf_kv *)arr)[i].key; }
static const char *tensor_name_at(const void *arr, size_t i) {
    return ((const gguf_tensor *)arr)[i].name;
}

/* ---- tensor shapes: shared by reader and writer ---------------------------------------- */
/* Checks dims, type and sizes; fills *nbytes. On error writes why (one line) and returns
 * false. ne[0..n_dims) are the dims; n_dims must already be in range. */
static bool shape_check(uint32_t n_dims, const int64_t *ne, int type, uint64_t *nbytes,
                        char *why, size_t cap) {
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1) {
            snprintf(why, cap, "ne[%u] = %lld must be >= 1", d, (long long)ne[d]);
            return false;
        }
    }
    const dtype_traits *tr = dtype_info(type);
    if (!tr) {
        snprintf(why, cap, "unknown tensor type id %d", type);
        return false;
    }
    if (ne[0] % tr->blck) {
        snprintf(why, cap, "ne[0] = %lld is not a multiple of the %s block size %d",
                 (long long)ne[0], tr->name, tr->blck);
        return false;
    }
    uint64_t n_el = 1, bytes;
    bool ok = duet_mul_ok((uint64_t)(ne[0] / tr->blck), tr->type_size, &bytes);
    for (uint32_t d = 0; d < n_dims; d++) {
        ok = ok && duet_mul_ok(n_el, (uint64_t)ne[d], &n_el) && n_el <= (uint64_t)INT64_MAX;
        if (d > 0) ok = ok && duet_mul_ok(bytes, (uint64_t)ne[d], &bytes);
    }
    if (!ok || bytes > (uint64_t)INT64_MAX) {
        int o = snprintf(why, cap, "element count or byte size of [");
        for (uint32_t d = 0; d < n_dims && o > 0 && (size_t)o < cap; d++)
            o += snprintf(why + o, cap - (size_t)o, "%s%lld", d ? ", " : "", (long long)ne[d]);
        if (o > 0 && (size_t)o < cap) snprintf(why + o, cap - (size_t)o, "] overflows");
        return false;
    }
    *nbytes = bytes;
    return true;
}

static bool alignment_ok(uint64_t a) {
    return a >= 1 && a <= GGUF_MAX_ALIGNMENT && (a & (a - 1)) == 0;
}

/* ---- reader ----------------------------------------------------------------------------- */
typedef struct reader_priv {
    strindex kv_ix, t_ix;
} reader_priv;

typedef struct parser {
    gguf_file *f;
    duet_error *err;
    const uint8_t *b;
    uint64_t size, pos;
    char ctx[160]; /* what is being parsed, e.g. "key 'general.name'"; "" at top level */
} parser;

__attribute__((format(printf, 3, 4)))
static int perr(parser *p, int code, const char *fmt, ...) {
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return duet_fail(p->err, code, "%s: %s%s%s", p->f->path, p->ctx, p->ctx[0] ? ": " : "", msg);
}

static void set_ctx(parser *p, const char *what, const char *s, size_t n) {
    char q[120];
    duet_printable(q, sizeof q, s, n);
    snprintf(p->ctx, sizeof p->ctx, "%s '%s'", what, q);
}

static uint64_t left(const parser *p) { return p->size - p->pos; }

static int need(parser *p, uint64_t n, const char *what) {
    if (n <= left(p)) return DUET_OK;
    return perr(p, DUET_ERR_FORMAT,
                "%s: truncated: needs %llu bytes at offset %llu, file has %llu bytes", what,
                (unsigned long long)n, (unsigned long long)p->pos,
                (unsigned long long)p->size);
}

static int rd_u32(parser *p, const char *what, uint32_t *out) {
    int rc = need(p, 4, what);
    if (rc) return rc;
    *out = (uint32_t)le_get(p->b + p->pos, 4);
    p->pos += 4;
    return DUET_OK;
}

static int rd_u64(parser *p, const char *what, uint64_t *out) {
    int rc = need(p, 8, what);
    if (rc) return rc;
    *out = le_get(p->b + p->pos, 8);
    p->pos += 8;
    return DUET_OK;
}

/* A length-prefixed string; idx >= 0 names an array element in messages. */
static int rd_str(parser *p, const char *what, int64_t idx, gguf_str *out) {
    char w[64];
    if (idx >= 0) snprintf(w, sizeof w, "%s[%lld]", what, (long long)idx);
    else snprintf(w, sizeof w, "%s", what);
    uint64_t len = 0;
    int rc = rd_u64(p, w, &len);
    if (rc) return rc;
    if (len > left(p))
        return perr(p, DUET_ERR_FORMAT,
                    "%s: string length %llu at offset %llu runs past end of file "
                    "(%llu bytes left)",
                    w, (unsigned long long)len, (unsigned long long)(p->pos - 8),
                    (unsigned long long)left(p));
    out->len = len;
    out->ptr = (const char *)p->b + p->pos;
    p->pos += len;
    return DUET_OK;
}

/* A key or tensor name: length-checked, validated, copied with a NUL. */
static int rd_name(parser *p, const char *what, uint64_t max, char **out) {
    gguf_str s = {0};
    int rc = rd_str(p, what, -1, &s);
    if (rc) return rc;
    const char *bad = name_problem(s.ptr, s.len, max);
    if (bad) {
        char q[120];
        duet_printable(q, sizeof q, s.ptr, (size_t)DUET_MIN(s.len, 64));
        if (s.len > max)
            return perr(p, DUET_ERR_FORMAT, "%s '%s' is too long: %llu bytes (at most %llu)",
                        what, q, (unsigned long long)s.len, (unsigned long long)max);
        return perr(p, DUET_ERR_FORMAT, "%s '%s' (length %llu) %s", what, q,
                    (unsigned long long)s.len, bad);
    }
    char *c = malloc((size_t)s.len + 1);
    if (!c) return perr(p, DUET_ERR_NOMEM, "out of memory copying %s", what);
    memcpy(c, s.ptr, (size_t)s.len);
    c[s.len] = 0;
    *out = c;
    return DUET_OK;
}

static int parse_array(parser *p, gguf_kv *kv) {
    uint32_t et = 0;
    uint64_t n = 0;
    int rc = rd_u32(p, "array element type", &et);
    if (rc) return rc;
    if (et >= GGUF_TYPE_COUNT)
        return perr(p, DUET_ERR_FORMAT, "array element type %u out of range [0, %d]", et,
                    GGUF_TYPE_COUNT - 1);
    if (et == GGUF_TYPE_ARRAY)
        return perr(p, DUET_ERR_FORMAT, "array of arrays (element type %u) is not supported",
                    et);
    if ((rc = rd_u64(p, "array count", &n))) return rc;
    kv->arr_type = (gguf_type)et;
    kv->arr_n = n;
    if (et == GGUF_TYPE_STRING) {
        /* each string needs at least its 8-byte length: bound n before allocating */
        if (n > left(p) / 8)
            return perr(p, DUET_ERR_FORMAT,
                        "array count %llu of str is more than the %llu bytes left could hold",
                        (unsigned long long)n, (unsigned long long)left(p));
        kv->arr_str = calloc(n ? (size_t)n : 1, sizeof *kv->arr_str);
        if (!kv->arr_str)
            return perr(p, DUET_ERR_NOMEM, "out of memory for %llu strings",
                        (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++)
            if ((rc = rd_str(p, "element", (int64_t)i, &kv->arr_str[i]))) return rc;
        return DUET_OK;
    }
    uint64_t bytes;
    if (!duet_mul_ok(n, k_type_size[et], &bytes))
        return perr(p, DUET_ERR_FORMAT, "array count %llu * %u-byte %s elements overflows",
                    (unsigned long long)n, k_type_size[et], k_type_names[et]);
    if (bytes > left(p))
        return perr(p, DUET_ERR_FORMAT,
                    "array of %llu %s needs %llu bytes at offset %llu, only %llu left",
                    (unsigned long long)n, k_type_names[et], (unsigned long long)bytes,
                    (unsigned long long)p->pos, (unsigned long long)left(p));
    kv->arr_data = p->b + p->pos;
    p->pos += bytes;
    return DUET_OK;
}

static int parse_value(parser *p, gguf_kv *kv) {
    uint32_t t = 0;
    int rc = rd_u32(p, "value type", &t);
    if (rc) return rc;
    if (t >= GGUF_TYPE_COUNT)
        return perr(p, DUET_ERR_FORMAT, "value type %u out of range [0, %d]", t,
                    GGUF_TYPE_COUNT - 1);
    kv->type = (gguf_type)t;
    if (t == GGUF_TYPE_STRING) return rd_str(p, "value", -1, &kv->str);
    if (t == GGUF_TYPE_ARRAY) return parse_array(p, kv);
    if ((rc = need(p, k_type_size[t], "value"))) return rc;
    scalar_decode(kv->type, p->b + p->pos, kv);
    if (t == GGUF_TYPE_BOOL && kv->v.u64 > 1)
        return perr(p, DUET_ERR_FORMAT, "bool value %llu is not 0 or 1",
                    (unsigned long long)kv->v.u64);
    p->pos += k_type_size[t];
    return DUET_OK;
}

static int parse_header(parser *p) {
    gguf_file *f = p->f;
    if (p->size == 0)
        return perr(p, DUET_ERR_FORMAT, "header: file is empty (0 bytes), not a GGUF file");
    if (p->size >= 4 && le_get(p->b, 4) != GGUF_MAGIC) {
        char q[40];
        duet_printable(q, sizeof q, (const char *)p->b, 4);
        const char *hint = le_get(p->b, 4) == 0x47475546u
                               ? " (byte-swapped: big-endian/byte-swapped GGUF is not supported)"
                               : "";
        return perr(p, DUET_ERR_FORMAT, "header.magic: '%s' is not 'GGUF': not a GGUF file%s", q,
                    hint);
    }
    if (p->size < 8)
        return perr(p, DUET_ERR_FORMAT, "header: truncated: file has %llu bytes, a GGUF header "
                    "needs %d", (unsigned long long)p->size, GGUF_HEADER_BYTES);
    uint32_t v = (uint32_t)le_get(p->b + 4, 4);
    f->version = v;
    if (v == 0)
        return perr(p, DUET_ERR_FORMAT, "header.version: version 0 is not a valid GGUF version");
    if (v == 1)
        return perr(p, DUET_ERR_UNSUPPORTED, "header.version: GGUF version 1 (32-bit counts) is "
                    "not supported; re-convert the model with a current tool");
    if (v >= 4) {
        uint32_t sw = __builtin_bswap32(v);
        if (sw >= 1 && sw <= 3)
            return perr(p, DUET_ERR_UNSUPPORTED, "header.version: 0x%08x (version %u "
                        "byte-swapped): big-endian/byte-swapped GGUF is not supported", v, sw);
        return perr(p, DUET_ERR_UNSUPPORTED,
                    "header.version: GGUF version %u is not supported (duet reads 2 and 3)", v);
    }
    if (p->size < GGUF_HEADER_BYTES)
        return perr(p, DUET_ERR_FORMAT, "header: truncated: file has %llu bytes, a GGUF header "
                    "needs %d", (unsigned long long)p->size, GGUF_HEADER_BYTES);
    p->pos = 8;
    uint64_t nt = 0, nkv = 0;
    rd_u64(p, "header.n_tensors", &nt); /* cannot fail: size checked above */
    rd_u64(p, "header.n_kv", &nkv);
    uint64_t room = left(p);
    if (nkv > room / KV_MIN_BYTES)
        return perr(p, DUET_ERR_FORMAT, "header.n_kv = %llu is more than the file could hold "
                    "(%llu bytes after the header, >= %d per kv)", (unsigned long long)nkv,
                    (unsigned long long)room, KV_MIN_BYTES);
    if (nt > room / TENSOR_MIN_BYTES)
        return perr(p, DUET_ERR_FORMAT, "header.n_tensors = %llu is more than the file could "
                    "hold (%llu bytes after the header, >= %d per tensor)",
                    (unsigned long long)nt, (unsigned long long)room, TENSOR_MIN_BYTES);
    /* both bounded above, so this cannot overflow */
    if (nkv * KV_MIN_BYTES + nt * TENSOR_MIN_BYTES > room)
        return perr(p, DUET_ERR_FORMAT, "header.n_kv = %llu and header.n_tensors = %llu are "
                    "more than the file could hold (%llu bytes after the header)",
                    (unsigned long long)nkv, (unsigned long long)nt, (unsigned long long)room);
    f->n_kv = nkv;
    f->n_tensors = nt;
    return DUET_OK;
}

static int parse_kvs(parser *p) {
    gguf_file *f = p->f;
    reader_priv *pr = f->priv;
    int rc;
    f->kv = calloc(f->n_kv ? (size_t)f->n_kv : 1, sizeof *f->kv);
    if (!f->kv || ix_reserve(&pr->kv_ix, (size_t)f->n_kv, kv_key_at, f->kv))
        return perr(p, DUET_ERR_NOMEM, "out of memory for %llu kvs",
                    (unsigned long long)f->n_kv);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        snprintf(p->ctx, sizeof p->ctx, "kv #%llu", (unsigned long long)i);
        if ((rc = rd_name(p, "key", GGUF_MAX_KEY, &kv->key))) return rc;
        set_ctx(p, "key", kv->key, strlen(kv->key));
        size_t dup = ix_find(&pr->kv_ix, kv->key, kv_key_at, f->kv);
        if (dup != SIZE_MAX)
            return perr(p, DUET_ERR_FORMAT, "duplicate key (kv #%zu and kv #%llu)", dup,
                        (unsigned long long)i);
        if (ix_add(&pr->kv_ix, (size_t)i, kv_key_at, f->kv))
            return perr(p, DUET_ERR_NOMEM, "out of memory indexing keys");
        if ((rc = parse_value(p, kv))) return rc;
    }
    p->ctx[0] = 0;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *a = gguf_find(f, "general.alignment");
    if (a) {
        snprintf(p->ctx, sizeof p->ctx, "key 'general.alignment'");
        if (a->type != GGUF_TYPE_UINT32)
            return perr(p, DUET_ERR_FORMAT, "expected u32, found %s", gguf_type_name(a->type));
        if (!alignment_ok(a->v.u64))
            return perr(p, DUET_ERR_FORMAT, "value %llu is not a power of two in [1, %u]",
                        (unsigned long long)a->v.u64, GGUF_MAX_ALIGNMENT);
        f->alignment = (uint32_t)a->v.u64;
        p->ctx[0] = 0;
    }
    return DUET_OK;
}

static int parse_tensor_info(parser *p, uint64_t i) {
    gguf_file *f = p->f;
    reader_priv *pr = f->priv;
    gguf_tensor *t = &f->tensors[i];
    int rc;
    snprintf(p->ctx, sizeof p->ctx, "tensor #%llu", (unsigned long long)i);
    if ((rc = rd_name(p, "name", GGUF_MAX_NAME, &t->name))) return rc;
    set_ctx(p, "tensor", t->name, strlen(t->name));
    size_t dup = ix_find(&pr->t_ix, t->name, tensor_name_at, f->tensors);
    if (dup != SIZE_MAX)
        return perr(p, DUET_ERR_FORMAT, "duplicate tensor name (tensors #%zu and #%llu)", dup,
                    (unsigned long long)i);
    if (ix_add(&pr->t_ix, (size_t)i, tensor_name_at, f->tensors))
        return perr(p, DUET_ERR_NOMEM, "out of memory indexing tensors");
    if ((rc = rd_u32(p, "n_dims", &t->n_dims))) return rc;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return perr(p, DUET_ERR_FORMAT, "n_dims %u out of range [1, %d]", t->n_dims,
                    GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        uint64_t v = 1;
        if (d < t->n_dims && (rc = rd_u64(p, "ne", &v))) return rc;
        t->ne[d] = u64_as_i64(v); /* > INT64_MAX reads as negative and is refused below */
    }
    uint32_t type = 0;
    if ((rc = rd_u32(p, "type", &type))) return rc;
    if (type >= DT_COUNT || !dtype_info((int)type))
        return perr(p, DUET_ERR_FORMAT, "unknown tensor type id %u", type);
    t->type = (int)type;
    char why[256];
    if (!shape_check(t->n_dims, t->ne, t->type, &t->nbytes, why, sizeof why))
        return perr(p, DUET_ERR_FORMAT, "%s", why);
    if ((rc = rd_u64(p, "offset", &t->offset))) return rc;
    if (t->offset % f->alignment)
        return perr(p, DUET_ERR_FORMAT, "offset %llu is not a multiple of alignment %u",
                    (unsigned long long)t->offset, f->alignment);
    return DUET_OK;
}

typedef struct span {
    uint64_t offset;
    size_t idx;
} span;

static int by_offset(const void *a, const void *b) {
    uint64_t x = ((const span *)a)->offset, y = ((const span *)b)->offset;
    return x < y ? -1 : x > y;
}

static int parse_tensors(parser *p) {
    gguf_file *f = p->f;
    reader_priv *pr = f->priv;
    int rc;
    f->tensors = calloc(f->n_tensors ? (size_t)f->n_tensors : 1, sizeof *f->tensors);
    if (!f->tensors || ix_reserve(&pr->t_ix, (size_t)f->n_tensors, tensor_name_at, f->tensors))
        return perr(p, DUET_ERR_NOMEM, "out of memory for %llu tensors",
                    (unsigned long long)f->n_tensors);
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if ((rc = parse_tensor_info(p, i))) return rc;
    p->ctx[0] = 0;

    uint64_t a = f->alignment, start = (p->pos + a - 1) / a * a; /* pos <= size: no overflow */
    if (f->n_tensors == 0) {
        /* vocabulary-only files often end right after the metadata, without padding */
        f->data_offset = DUET_MIN(start, p->size);
        return DUET_OK;
    }
    if (start > p->size)
        return perr(p, DUET_ERR_FORMAT, "data section: starts at offset %llu, past end of file "
                    "(%llu bytes)", (unsigned long long)start, (unsigned long long)p->size);
    f->data_offset = start;
    uint64_t avail = p->size - start;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            set_ctx(p, "tensor", t->name, strlen(t->name));
            return perr(p, DUET_ERR_FORMAT, "data at offset %llu + %llu bytes runs past end of "
                        "file (data section has %llu bytes)", (unsigned long long)t->offset,
                        (unsigned long long)t->nbytes, (unsigned long long)avail);
        }
        t->data = p->b + start + t->offset;
    }
    /* overlaps: after sorting by offset, each tensor must end before the next begins */
    span *order = malloc((size_t)f->n_tensors * sizeof *order);
    if (!order) return perr(p, DUET_ERR_NOMEM, "out of memory sorting tensors");
    for (size_t i = 0; i < f->n_tensors; i++) order[i] = (span){f->tensors[i].offset, i};
    qsort(order, (size_t)f->n_tensors, sizeof *order, by_offset);
    rc = DUET_OK;
    for (size_t k = 1; k < f->n_tensors && !rc; k++) {
        const gguf_tensor *x = &f->tensors[order[k - 1].idx], *y = &f->tensors[order[k].idx];
        if (x->offset + x->nbytes > y->offset) {
            set_ctx(p, "tensor", y->name, strlen(y->name));
            char q[120];
            duet_printable(q, sizeof q, x->name, strlen(x->name));
            rc = perr(p, DUET_ERR_FORMAT, "data [%llu, %llu) overlaps tensor '%s' [%llu, %llu)",
                      (unsigned long long)y->offset, (unsigned long long)(y->offset + y->nbytes),
                      q, (unsigned long long)x->offset,
                      (unsigned long long)(x->offset + x->nbytes));
        }
    }
    free(order);
    return rc;
}

/* Copy a caller's path for messages, escaping control bytes so a message stays one line
 * (UTF-8 names are kept as they are: the path comes from the user, not the file). */
static void set_path(char *dst, size_t cap, const char *name) {
    size_t n = strlen(name);
    bool ctl = false;
    for (size_t i = 0; i < n; i++) ctl |= (unsigned char)name[i] < 0x20 || name[i] == 0x7f;
    if (ctl) duet_printable(dst, cap, name, n);
    else snprintf(dst, cap, "%s", name);
}

static int open_common(const uint8_t *b, uint64_t size, const char *name, int owns_map,
                       gguf_file **out, duet_error *err) {
    gguf_file *f = calloc(1, sizeof *f);
    reader_priv *pr = calloc(1, sizeof *pr);
    if (!f || !pr) {
        if (owns_map) munmap((void *)b, (size_t)size);
        free(f);
        free(pr);
        char q[PATH_CAP];
        set_path(q, sizeof q, name);
        return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", q);
    }
    f->priv = pr;
    f->base = b;
    f->size = size;
    f->owns_map = owns_map;
    set_path(f->path, sizeof f->path, name);
    parser p = {.f = f, .err = err, .b = b, .size = size};
    int rc = parse_header(&p);
    if (!rc) rc = parse_kvs(&p);
    if (!rc) rc = parse_tensors(&p);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return DUET_OK;
}

int gguf_open(const char *path, gguf_file **out, duet_error *err) {
    if (!out || !path) return duet_fail(err, DUET_ERR_ARG, "gguf_open: NULL argument");
    *out = NULL;
    char name[PATH_CAP];
    set_path(name, sizeof name, path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return duet_fail(err, DUET_ERR_IO, "%s: cannot open: %s", name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return duet_fail(err, DUET_ERR_IO, "%s: cannot stat: %s", name, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return duet_fail(err, DUET_ERR_IO, "%s: not a regular file", name);
    }
    if (st.st_size == 0) { /* mmap refuses 0 bytes; the parser reports the empty file */
        close(fd);
        return open_common(NULL, 0, path, 0, out, err);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return duet_fail(err, DUET_ERR_IO, "%s: cannot map %lld bytes: %s", name,
                         (long long)st.st_size, strerror(e));
    return open_common(m, (uint64_t)st.st_size, path, 1, out, err);
}

int gguf_open_buffer(const void *buf, size_t size, const char *name, gguf_file **out,
                     duet_error *err) {
    if (!out || (!buf && size)) return duet_fail(err, DUET_ERR_ARG, "gguf_open_buffer: NULL argument");
    *out = NULL;
    return open_common(buf, size, name ? name : "<memory>", 0, out, err);
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->kv)
        for (uint64_t i = 0; i < f->n_kv; i++) {
            free(f->kv[i].key);
            free(f->kv[i].arr_str);
        }
    free(f->kv);
    if (f->tensors)
        for (uint64_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    reader_priv *pr = f->priv;
    if (pr) {
        free(pr->kv_ix.slot);
        free(pr->t_ix.slot);
        free(pr);
    }
    if (f->owns_map && f->base) munmap((void *)f->base, (size_t)f->size);
    free(f);
}

/* ---- lookups and typed getters ---------------------------------------------------------- */
const gguf_kv *gguf_find(const gguf_file *f, const char *key) {
    if (!f || !key || !f->priv) return NULL;
    size_t i = ix_find(&((const reader_priv *)f->priv)->kv_ix, key, kv_key_at, f->kv);
    return i == SIZE_MAX ? NULL : &f->kv[i];
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    if (!f || !name || !f->priv) return NULL;
    size_t i = ix_find(&((const reader_priv *)f->priv)->t_ix, name, tensor_name_at, f->tensors);
    return i == SIZE_MAX ? NULL : &f->tensors[i];
}

/* "u32", or "arr[f32]" for arrays: the type as messages name it. */
static const char *kv_type_label(const gguf_kv *kv, char *buf, size_t cap) {
    if (kv->type != GGUF_TYPE_ARRAY) return gguf_type_name(kv->type);
    snprintf(buf, cap, "arr[%s]", gguf_type_name(kv->arr_type));
    return buf;
}

/* Find key; absent: DUET_OK with *kv = NULL when optional, else an error. */
static int lookup(const gguf_file *f, const char *key, bool optional, const gguf_kv **kv,
                  duet_error *err) {
    *kv = NULL;
    if (!f || !key) return duet_fail(err, DUET_ERR_ARG, "gguf getter: NULL argument");
    *kv = gguf_find(f, key);
    if (*kv || optional) return DUET_OK;
    char q[120];
    duet_printable(q, sizeof q, key, strlen(key));
    return duet_fail(err, DUET_ERR_FORMAT, "%s: key '%s': required key is missing", f->path, q);
}

static int wrong_type(const gguf_file *f, const gguf_kv *kv, const char *want, duet_error *err) {
    char q[120], lb[32];
    duet_printable(q, sizeof q, kv->key, strlen(kv->key));
    return duet_fail(err, DUET_ERR_FORMAT, "%s: key '%s': expected %s, found %s", f->path, q,
                     want, kv_type_label(kv, lb, sizeof lb));
}

/* Any integer kv whose value lies in [lo, hi]. */
static int get_int(const gguf_file *f, const char *key, bool optional, int64_t lo, int64_t hi,
                   const char *want, int64_t *out, bool *found, duet_error *err) {
    const gguf_kv *kv = NULL;
    int rc = lookup(f, key, optional, &kv, err);
    *found = kv != NULL;
    if (rc || !kv) return rc;
    if (!type_is_int(kv->type)) return wrong_type(f, kv, want, err);
    bool fits = type_is_signed(kv->type) ? kv->v.i64 >= lo && kv->v.i64 <= hi
                                         : kv->v.u64 <= (uint64_t)hi;
    if (!fits) {
        char q[120];
        duet_printable(q, sizeof q, kv->key, strlen(kv->key));
        if (type_is_signed(kv->type))
            return duet_fail(err, DUET_ERR_FORMAT, "%s: key '%s': value %lld does not fit %s",
                             f->path, q, (long long)kv->v.i64, want);
        return duet_fail(err, DUET_ERR_FORMAT, "%s: key '%s': value %llu does not fit %s",
                         f->path, q, (unsigned long long)kv->v.u64, want);
    }
    *out = type_is_signed(kv->type) ? kv->v.i64 : (int64_t)kv->v.u64;
    return DUET_OK;
}

static int get_u32(const gguf_file *f, const char *key, bool optional, uint32_t *out,
                   duet_error *err) {
    int64_t v;
    bool found;
    int rc = get_int(f, key, optional, 0, UINT32_MAX, "u32", &v, &found, err);
    if (!rc && found && out) *out = (uint32_t)v;
    return rc;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, duet_error *err) {
    return get_u32(f, key, false, out, err);
}

int gguf_get_u32_opt(const gguf_file *f, const char *key, uint32_t *out, duet_error *err) {
    return get_u32(f, key, true, out, err);
}

int gguf_get_i64_opt(const gguf_file *f, const char *key, int64_t *out, duet_error *err) {
    int64_t v;
    bool found;
    int rc = get_int(f, key, true, INT64_MIN, INT64_MAX, "i64", &v, &found, err);
    if (!rc && found && out) *out = v;
    return rc;
}

int gguf_get_f32_opt(const gguf_file *f, const char *key, float *out, duet_error *err) {
    const gguf_kv *kv = NULL;
    int rc = lookup(f, key, true, &kv, err);
    if (rc || !kv) return rc;
    if (kv->type != GGUF_TYPE_FLOAT32 && kv->type != GGUF_TYPE_FLOAT64)
        return wrong_type(f, kv, "f32", err);
    double x = kv->v.f64;
    if (isfinite(x) && fabs(x) > FLT_MAX) { /* NaN and infinities convert as they are */
        char q[120];
        duet_printable(q, sizeof q, kv->key, strlen(kv->key));
        return duet_fail(err, DUET_ERR_FORMAT, "%s: key '%s': value %g does not fit f32",
                         f->path, q, x);
    }
    if (out) *out = (float)x;
    return DUET_OK;
}

int gguf_get_bool_opt(const gguf_file *f, const char *key, bool *out, duet_error *err) {
    const gguf_kv *kv = NULL;
    int rc = lookup(f, key, true, &kv, err);
    if (rc || !kv) return rc;
    if (kv->type != GGUF_TYPE_BOOL) return wrong_type(f, kv, "bool", err);
    if (out) *out = kv->v.u64 != 0;
    return DUET_OK;
}

static int get_str(const gguf_file *f, const char *key, bool optional, gguf_str *out,
                   duet_error *err) {
    const gguf_kv *kv = NULL;
    int rc = lookup(f, key, optional, &kv, err);
    if (rc || !kv) return rc;
    if (kv->type != GGUF_TYPE_STRING) return wrong_type(f, kv, "str", err);
    if (out) *out = kv->str;
    return DUET_OK;
}

int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, duet_error *err) {
    return get_str(f, key, false, out, err);
}

int gguf_get_str_opt(const gguf_file *f, const char *key, gguf_str *out, duet_error *err) {
    return get_str(f, key, true, out, err);
}

static int get_arr(const gguf_file *f, const char *key, bool optional, gguf_type want,
                   const gguf_kv **out, duet_error *err) {
    if ((unsigned)want >= GGUF_TYPE_COUNT || want == GGUF_TYPE_ARRAY)
        return duet_fail(err, DUET_ERR_ARG, "gguf_get_arr: bad element type %d", (int)want);
    const gguf_kv *kv = NULL;
    int rc = lookup(f, key, optional, &kv, err);
    if (rc || !kv) return rc;
    char w[32];
    snprintf(w, sizeof w, "arr[%s]", gguf_type_name(want));
    bool ok = kv->type == GGUF_TYPE_ARRAY &&
              (kv->arr_type == want || (type_is_int(want) && type_is_int(kv->arr_type) &&
                                        k_type_size[want] == k_type_size[kv->arr_type]));
    if (!ok) return wrong_type(f, kv, w, err);
    if (out) *out = kv;
    return DUET_OK;
}

int gguf_get_arr(const gguf_file *f, const char *key, gguf_type want, const gguf_kv **out,
                 duet_error *err) {
    return get_arr(f, key, false, want, out, err);
}

int gguf_get_arr_opt(const gguf_file *f, const char *key, gguf_type want, const gguf_kv **out,
                     duet_error *err) {
    return get_arr(f, key, true, want, out, err);
}

/* Element i of a scalar array as the kv union (false when i or the type is not readable). */
static bool arr_elem(const gguf_kv *kv, uint64_t i, gguf_kv *e) {
    if (!kv || kv->type != GGUF_TYPE_ARRAY || !type_is_scalar(kv->arr_type) || i >= kv->arr_n)
        return false;
    e->type = kv->arr_type;
    scalar_decode(kv->arr_type, (const uint8_t *)kv->arr_data + i * k_type_size[kv->arr_type], e);
    return true;
}

double gguf_arr_f64(const gguf_kv *kv, uint64_t i) {
    gguf_kv e;
    if (!arr_elem(kv, i, &e)) return 0.0;
    if (e.type == GGUF_TYPE_FLOAT32 || e.type == GGUF_TYPE_FLOAT64) return e.v.f64;
    return type_is_signed(e.type) ? (double)e.v.i64 : (double)e.v.u64;
}

int64_t gguf_arr_i64(const gguf_kv *kv, uint64_t i) {
    gguf_kv e;
    if (!arr_elem(kv, i, &e)) return 0;
    if (e.type == GGUF_TYPE_FLOAT32 || e.type == GGUF_TYPE_FLOAT64) {
        /* saturate: converting an out-of-range double to an integer is undefined */
        double x = e.v.f64;
        if (x != x) return 0;
        if (x >= 9223372036854775807.0) return INT64_MAX;
        if (x <= -9223372036854775808.0) return INT64_MIN;
        return (int64_t)x;
    }
    if (type_is_signed(e.type)) return e.v.i64;
    return e.v.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)e.v.u64;
}

/* ---- printing ----------------------------------------------------------------------------- */
#define PRINT_ARR_SCALARS 8
#define PRINT_ARR_STRS 4

static void print_quoted(FILE *o, const char *s, uint64_t len, size_t cap) {
    char q[256];
    duet_printable(q, DUET_MIN(cap, sizeof q), s, (size_t)len);
    fprintf(o, "\"%s\"", q);
}

static void print_scalar(FILE *o, const gguf_kv *v) {
    switch (v->type) {
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64: fprintf(o, "%g", v->v.f64); break;
    case GGUF_TYPE_BOOL: fputs(v->v.u64 ? "true" : "false", o); break;
    default:
        if (type_is_signed(v->type)) fprintf(o, "%lld", (long long)v->v.i64);
        else fprintf(o, "%llu", (unsigned long long)v->v.u64);
    }
}

static void print_kv(FILE *o, const gguf_kv *kv) {
    char key[160], label[48];
    duet_printable(key, sizeof key, kv->key, strlen(kv->key));
    if (kv->type == GGUF_TYPE_ARRAY)
        snprintf(label, sizeof label, "arr[%s,%llu]", gguf_type_name(kv->arr_type),
                 (unsigned long long)kv->arr_n);
    else
        snprintf(label, sizeof label, "%s", gguf_type_name(kv->type));
    fprintf(o, "  %-40s %-16s ", key, label);
    if (kv->type == GGUF_TYPE_STRING) {
        print_quoted(o, kv->str.ptr, kv->str.len, 200);
    } else if (kv->type != GGUF_TYPE_ARRAY) {
        print_scalar(o, kv);
    } else {
        uint64_t shown = DUET_MIN(kv->arr_n, kv->arr_type == GGUF_TYPE_STRING
                                                 ? PRINT_ARR_STRS : PRINT_ARR_SCALARS);
        fputc('[', o);
        for (uint64_t i = 0; i < shown; i++) {
            if (i) fputs(", ", o);
            gguf_kv e;
            if (kv->arr_type == GGUF_TYPE_STRING)
                print_quoted(o, kv->arr_str[i].ptr, kv->arr_str[i].len, 48);
            else if (arr_elem(kv, i, &e))
                print_scalar(o, &e);
        }
        if (shown < kv->arr_n) fputs(", ...", o);
        fputc(']', o);
    }
    fputc('\n', o);
}

void gguf_print(const gguf_file *f, void *stdio_file) {
    FILE *o = stdio_file;
    if (!f || !o) return;
    fprintf(o, "%s: GGUF version %u, %llu bytes, %llu kv, %llu tensors\n", f->path, f->version,
            (unsigned long long)f->size, (unsigned long long)f->n_kv,
            (unsigned long long)f->n_tensors);
    fprintf(o, "metadata:\n");
    for (uint64_t i = 0; i < f->n_kv; i++) print_kv(o, &f->kv[i]);
    uint64_t total = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) total += f->tensors[i].nbytes;
    fprintf(o, "tensors: %llu, alignment %u, data at offset %llu, %llu bytes of data\n",
            (unsigned long long)f->n_tensors, f->alignment, (unsigned long long)f->data_offset,
            (unsigned long long)total);
    if (!f->n_tensors) return;
    fprintf(o, "  %5s  %-40s %-8s %-26s %12s %12s\n", "#", "name", "type", "dims", "offset",
            "bytes");
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char name[160], dims[96];
        duet_printable(name, sizeof name, t->name, strlen(t->name));
        int n = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            n += snprintf(dims + n, sizeof dims - (size_t)n, "%s%lld", d ? " x " : "",
                          (long long)t->ne[d]);
        fprintf(o, "  %5llu  %-40s %-8s %-26s %12llu %12llu\n", (unsigned long long)i, name,
                dtype_info(t->type)->name, dims, (unsigned long long)t->offset,
                (unsigned long long)t->nbytes);
    }
}

int duet_gguf_print(const char *path, FILE *out, duet_error *err) {
    gguf_file *f = NULL;
    int rc = gguf_open(path, &f, err);
    if (rc != DUET_OK) return rc;
    gguf_print(f, out);
    gguf_close(f);
    return DUET_OK;
}

/* ---- writer ------------------------------------------------------------------------------- */
typedef struct bbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} bbuf;

static void bb_put(bbuf *b, const void *src, size_t n) {
    if (b->oom || n == 0) return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n) {
            if (cap > SIZE_MAX / 2) { b->oom = true; return; }
            cap *= 2;
        }
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    if (src) memcpy(b->p + b->n, src, n);
    else memset(b->p + b->n, 0, n);
    b->n += n;
}

static void bb_le(bbuf *b, uint64_t v, unsigned n) {
    uint8_t t[8];
    if (n > 8) n = 8; /* (callers pass 1..8; the bound keeps t's size evident) */
    le_put(t, v, n);
    bb_put(b, t, n);
}

static void bb_str(bbuf *b, const char *s, uint64_t len) {
    bb_le(b, len, 8);
    bb_put(b, s, (size_t)len);
}

typedef struct wkv {
    char *key;
    bbuf val; /* value type (u32) and payload, serialised when set */
} wkv;

typedef struct wtensor {
    char *name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    int type;
    uint64_t nbytes, offset;
    void *data;
} wtensor;

struct gguf_writer {
    wkv *kv;
    size_t n_kv, cap_kv;
    strindex kv_ix;
    wtensor *t;
    size_t n_t, cap_t;
    strindex t_ix;
    duet_error first_err; /* setters return nothing: their first error surfaces in gguf_write */
    bool failed;
};

static const char *wkv_key_at(const void *arr, size_t i) { return ((const wkv *)arr)[i].key; }
static const char *wt_name_at(const void *arr, size_t i) { return ((const wtensor *)arr)[i].name; }

gguf_writer *gguf_writer_new(void) { return calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val.p);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->kv);
    free(w->t);
    free(w->kv_ix.slot);
    free(w->t_ix.slot);
    free(w);
}

__attribute__((format(printf, 3, 4)))
static void w_fail(gguf_writer *w, int code, const char *fmt, ...) {
    if (w->failed) return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    duet_fail(&w->first_err, code, "%s", msg);
    w->failed = true;
}

/* A caller's key, quoted for a one-line message. */
static const char *wkey(char *q, size_t cap, const char *key) {
    if (key) duet_printable(q, cap, key, strlen(key));
    else snprintf(q, cap, "(null)");
    return q;
}

/* Grow an array of elem-sized items to hold one more. */
static bool grow(void **arr, size_t *cap, size_t n, size_t elem) {
    if (n < *cap) return true;
    size_t c = *cap ? *cap * 2 : 16;
    if (c > SIZE_MAX / elem) return false;
    void *p = realloc(*arr, c * elem);
    if (!p) return false;
    *arr = p;
    *cap = c;
    return true;
}

/* Store a serialised value under key (taking ownership of val). */
static void set_kv(gguf_writer *w, const char *key, bbuf val) {
    if (!w) { free(val.p); return; }
    const char *bad = key ? name_problem(key, strlen(key), GGUF_MAX_KEY) : "is NULL";
    if (bad || val.oom) {
        char q[120];
        wkey(q, sizeof q, key);
        if (bad) w_fail(w, DUET_ERR_ARG, "key '%s' %s", q, bad);
        else w_fail(w, DUET_ERR_NOMEM, "key '%s': out of memory", q);
        free(val.p);
        return;
    }
    size_t i = ix_find(&w->kv_ix, key, wkv_key_at, w->kv);
    if (i != SIZE_MAX) { /* re-set: keep the first position */
        free(w->kv[i].val.p);
        w->kv[i].val = val;
        return;
    }
    char *k = strdup(key);
    if (!k || !grow((void **)&w->kv, &w->cap_kv, w->n_kv, sizeof *w->kv)) {
        free(k);
        free(val.p);
        w_fail(w, DUET_ERR_NOMEM, "out of memory adding key");
        return;
    }
    w->kv[w->n_kv] = (wkv){k, val};
    if (ix_add(&w->kv_ix, w->n_kv, wkv_key_at, w->kv)) {
        free(k);
        free(val.p);
        w_fail(w, DUET_ERR_NOMEM, "out of memory adding key");
        return;
    }
    w->n_kv++;
}

static void set_scalar(gguf_writer *w, const char *key, gguf_type t, uint64_t bits) {
    bbuf b = {0};
    bb_le(&b, t, 4);
    bb_le(&b, bits, k_type_size[t]);
    set_kv(w, key, b);
}

void gguf_set_u32(gguf_writer *w, const char *key, uint32_t v) {
    set_scalar(w, key, GGUF_TYPE_UINT32, v);
}
void gguf_set_i32(gguf_writer *w, const char *key, int32_t v) {
    set_scalar(w, key, GGUF_TYPE_INT32, (uint32_t)v);
}
void gguf_set_u64(gguf_writer *w, const char *key, uint64_t v) {
    set_scalar(w, key, GGUF_TYPE_UINT64, v);
}
void gguf_set_f32(gguf_writer *w, const char *key, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    set_scalar(w, key, GGUF_TYPE_FLOAT32, bits);
}
void gguf_set_bool(gguf_writer *w, const char *key, bool v) {
    set_scalar(w, key, GGUF_TYPE_BOOL, v ? 1 : 0);
}

void gguf_set_str(gguf_writer *w, const char *key, const char *v) {
    if (w && !v) {
        char q[120];
        w_fail(w, DUET_ERR_ARG, "key '%s': NULL string", wkey(q, sizeof q, key));
        return;
    }
    bbuf b = {0};
    bb_le(&b, GGUF_TYPE_STRING, 4);
    if (v) bb_str(&b, v, strlen(v));
    set_kv(w, key, b);
}

void gguf_set_kv_from(gguf_writer *w, const gguf_kv *kv) {
    if (!w || !kv) return;
    switch (kv->type) {
    case GGUF_TYPE_STRING: {
        bbuf b = {0};
        bb_le(&b, GGUF_TYPE_STRING, 4);
        bb_str(&b, kv->str.ptr, (size_t)kv->str.len);
        set_kv(w, kv->key, b);
        return;
    }
    case GGUF_TYPE_ARRAY:
        if (kv->arr_type != GGUF_TYPE_STRING) {
            gguf_set_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_n);
            return;
        }
        const char **strs = malloc((size_t)(kv->arr_n ? kv->arr_n : 1) * sizeof *strs);
        uint64_t *lens = malloc((size_t)(kv->arr_n ? kv->arr_n : 1) * sizeof *lens);
        if (!strs || !lens) w_fail(w, DUET_ERR_NOMEM, "out of memory copying key");
        else {
            for (uint64_t i = 0; i < kv->arr_n; i++) {
                strs[i] = kv->arr_str[i].ptr ? kv->arr_str[i].ptr : "";
                lens[i] = kv->arr_str[i].len;
            }
            gguf_set_arr_str(w, kv->key, strs, lens, kv->arr_n);
        }
        free(strs);
        free(lens);
        return;
    case GGUF_TYPE_FLOAT32: {
        float f = (float)kv->v.f64; /* read as a float, so exact */
        uint32_t bits;
        memcpy(&bits, &f, 4);
        set_scalar(w, kv->key, kv->type, bits);
        return;
    }
    case GGUF_TYPE_FLOAT64: {
        uint64_t bits;
        memcpy(&bits, &kv->v.f64, 8);
        set_scalar(w, kv->key, kv->type, bits);
        return;
    }
    default: /* integers and BOOL: the low bytes of the converted value are the stored ones */
        if (type_is_scalar(kv->type) && k_type_size[kv->type] <= 8)
            set_scalar(w, kv->key, kv->type, kv->v.u64);
        else
            w_fail(w, DUET_ERR_ARG, "key '%s': type %d cannot be copied", kv->key, (int)kv->type);
    }
}

void gguf_set_arr(gguf_writer *w, const char *key, gguf_type t, const void *data, uint64_t n) {
    if (!w) return;
    uint64_t bytes = 0;
    if (!type_is_scalar(t) || (!data && n) || !duet_mul_ok(n, k_type_size[t], &bytes) ||
        bytes > SIZE_MAX) {
        char q[120];
        w_fail(w, DUET_ERR_ARG, "key '%s': bad array (element type %d, %llu elements%s)",
               wkey(q, sizeof q, key), (int)t, (unsigned long long)n, data ? "" : ", NULL data");
        return;
    }
    bbuf b = {0};
    bb_le(&b, GGUF_TYPE_ARRAY, 4);
    bb_le(&b, t, 4);
    bb_le(&b, n, 8);
    bb_put(&b, data, (size_t)bytes); /* raw little-endian, as documented */
    set_kv(w, key, b);
}

void gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *strs,
                      const uint64_t *lens, uint64_t n) {
    if (!w) return;
    bbuf b = {0};
    bb_le(&b, GGUF_TYPE_ARRAY, 4);
    bb_le(&b, GGUF_TYPE_STRING, 4);
    bb_le(&b, n, 8);
    for (uint64_t i = 0; i < n; i++) {
        if (!strs || !strs[i]) {
            free(b.p);
            char q[120];
            w_fail(w, DUET_ERR_ARG, "key '%s': string element %llu is NULL",
                   wkey(q, sizeof q, key), (unsigned long long)i);
            return;
        }
        bb_str(&b, strs[i], lens ? lens[i] : strlen(strs[i]));
    }
    set_kv(w, key, b);
}

int gguf_add_tensor(gguf_writer *w, const char *name, int type, uint32_t n_dims,
                    const int64_t *ne, const void *data, duet_error *err) {
    if (!w || !name || !ne || !data)
        return duet_fail(err, DUET_ERR_ARG, "gguf_add_tensor: NULL argument");
    char q[120];
    duet_printable(q, sizeof q, name, strlen(name));
    const char *bad = name_problem(name, strlen(name), GGUF_MAX_NAME);
    if (bad) return duet_fail(err, DUET_ERR_ARG, "tensor '%s': name %s", q, bad);
    if (ix_find(&w->t_ix, name, wt_name_at, w->t) != SIZE_MAX)
        return duet_fail(err, DUET_ERR_ARG, "tensor '%s': duplicate tensor name", q);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return duet_fail(err, DUET_ERR_ARG, "tensor '%s': n_dims %u out of range [1, %d]", q,
                         n_dims, GGUF_MAX_DIMS);
    wtensor t = {.n_dims = n_dims, .type = type};
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
    char why[256];
    if (!shape_check(n_dims, t.ne, type, &t.nbytes, why, sizeof why))
        return duet_fail(err, DUET_ERR_ARG, "tensor '%s': %s", q, why);
    if (t.nbytes > SIZE_MAX || !grow((void **)&w->t, &w->cap_t, w->n_t, sizeof *w->t))
        return duet_fail(err, DUET_ERR_NOMEM, "tensor '%s': out of memory", q);
    t.name = strdup(name);
    t.data = malloc((size_t)t.nbytes);
    if (!t.name || !t.data) {
        free(t.name);
        free(t.data);
        return duet_fail(err, DUET_ERR_NOMEM, "tensor '%s': out of memory for %llu bytes", q,
                         (unsigned long long)t.nbytes);
    }
    memcpy(t.data, data, (size_t)t.nbytes);
    w->t[w->n_t] = t;
    if (ix_add(&w->t_ix, w->n_t, wt_name_at, w->t)) {
        free(t.name);
        free(t.data);
        return duet_fail(err, DUET_ERR_NOMEM, "tensor '%s': out of memory", q);
    }
    w->n_t++;
    return DUET_OK;
}

static bool write_pad(FILE *f, uint64_t pos, uint32_t align) {
    static const uint8_t zeros[GGUF_MAX_ALIGNMENT];
    size_t pad = (size_t)((align - pos % align) % align);
    return fwrite(zeros, 1, pad, f) == pad;
}

/* Header, kvs and tensor infos; fills tensor offsets. */
static int build_header(gguf_writer *w, uint32_t align, bool add_align, bbuf *h,
                        const char *path, duet_error *err) {
    bb_le(h, GGUF_MAGIC, 4);
    bb_le(h, 3, 4);
    bb_le(h, w->n_t, 8);
    bb_le(h, w->n_kv + (add_align ? 1 : 0), 8);
    for (size_t i = 0; i < w->n_kv; i++) {
        bb_str(h, w->kv[i].key, strlen(w->kv[i].key));
        bb_put(h, w->kv[i].val.p, w->kv[i].val.n);
    }
    if (add_align) {
        bb_str(h, "general.alignment", strlen("general.alignment"));
        bb_le(h, GGUF_TYPE_UINT32, 4);
        bb_le(h, align, 4);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        t->offset = off;
        if (!duet_add_ok(off, t->nbytes, &off) || !duet_add_ok(off, align - 1, &off))
            return duet_fail(err, DUET_ERR_ARG, "%s: tensor data exceeds 2^64 bytes", path);
        off -= off % align;
        bb_str(h, t->name, strlen(t->name));
        bb_le(h, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) bb_le(h, (uint64_t)t->ne[d], 8);
        bb_le(h, (uint32_t)t->type, 4);
        bb_le(h, t->offset, 8);
    }
    if (h->oom) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory building header", path);
    return DUET_OK;
}

int gguf_write(gguf_writer *w, const char *path, duet_error *err) {
    if (!w || !path) return duet_fail(err, DUET_ERR_ARG, "gguf_write: NULL argument");
    if (w->failed) return duet_fail(err, w->first_err.code, "%s: %s", path, w->first_err.msg);
    uint32_t align = GGUF_DEFAULT_ALIGNMENT;
    size_t ai = ix_find(&w->kv_ix, "general.alignment", wkv_key_at, w->kv);
    if (ai != SIZE_MAX) {
        const bbuf *v = &w->kv[ai].val;
        uint64_t a = v->n == 8 ? le_get(v->p + 4, 4) : 0;
        if (le_get(v->p, 4) != GGUF_TYPE_UINT32 || !alignment_ok(a))
            return duet_fail(err, DUET_ERR_ARG, "%s: key 'general.alignment' must be a u32 "
                             "power of two in [1, %u]", path, GGUF_MAX_ALIGNMENT);
        align = (uint32_t)a;
    }
    bbuf h = {0};
    int rc = build_header(w, align, ai == SIZE_MAX, &h, path, err);
    if (rc) {
        free(h.p);
        return rc;
    }
    duet_atomic out;
    if ((rc = duet_atomic_open(&out, path, err))) {
        free(h.p);
        return rc;
    }
    bool ok = fwrite(h.p, 1, h.n, out.f) == h.n && write_pad(out.f, h.n, align);
    for (size_t i = 0; ok && i < w->n_t; i++)
        ok = fwrite(w->t[i].data, 1, (size_t)w->t[i].nbytes, out.f) == w->t[i].nbytes &&
             write_pad(out.f, w->t[i].nbytes, align);
    int e = errno;
    free(h.p);
    if (!ok) {
        duet_atomic_abort(&out);
        return duet_fail(err, DUET_ERR_IO, "%s: cannot write temporary file: %s", path,
                         strerror(e));
    }
    return duet_atomic_commit(&out, err);
}
