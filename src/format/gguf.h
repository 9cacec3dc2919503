/*
 * gguf.h: GGUF v2/v3 reader and writer. Format only: knows no architecture.
 *
 * Reader invariants (after gguf_open* returns DUET_OK):
 *  - every key is non-empty, unique, valid UTF-8 without NUL, at most GGUF_MAX_KEY bytes;
 *  - every string value lies inside the buffer; every array's count * element size was
 *    checked for overflow and lies inside the buffer; arrays of arrays are rejected
 *    (GGUF in the wild never nests);
 *  - a scalar BOOL is 0 or 1 (array elements are raw bytes);
 *  - general.alignment, if present, is a UINT32 power of two in [1, 1<<16]; default 32;
 *  - every tensor has a unique non-empty name (<= GGUF_MAX_NAME bytes, valid UTF-8 without
 *    NUL, like keys), 1..4 dims, each dim >= 1, element count without overflow, ne[0] a
 *    multiple of its type's block size, a known type, an aligned offset, data wholly inside
 *    the file, and no two tensors overlap. A file without tensors may end without padding.
 * Strings held by the reader point into the mapping and are NOT NUL-terminated: use len.
 * Keys and tensor names are copied and NUL-terminated.
 */
#ifndef DUET_GGUF_H
#define DUET_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "duet.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY 256      /* bytes; longer keys are rejected */
#define GGUF_MAX_NAME 256     /* bytes; ggml's own limit is 64 */
#define GGUF_MAX_DIMS 4

typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

/* The values of tokenizer.ggml.token_type (llama.cpp's). Declared with the format, not the
 * tokenizer, because the model-file writers (format/convert.c) write them and must not
 * depend on the text layer. */
enum { TOKTYPE_NORMAL = 1, TOKTYPE_UNKNOWN = 2, TOKTYPE_CONTROL = 3, TOKTYPE_USER = 4,
       TOKTYPE_UNUSED = 5, TOKTYPE_BYTE = 6 };

const char *gguf_type_name(int t); /* "u32", "str", ... or "?" */

typedef struct gguf_str {
    uint64_t len;
    const char *ptr; /* not NUL-terminated */
} gguf_str;

typedef struct gguf_kv {
    char *key;             /* NUL-terminated copy */
    gguf_type type;
    /* scalar values (type != STRING/ARRAY): converted copies */
    union {
        uint64_t u64;      /* UINT8..UINT64 and BOOL (zero-extended) */
        int64_t i64;       /* INT8..INT64 (sign-extended) */
        double f64;        /* FLOAT32/FLOAT64 */
    } v;
    gguf_str str;          /* type == STRING */
    /* arrays (type == ARRAY) */
    gguf_type arr_type;    /* element type (never ARRAY: nested arrays are rejected) */
    uint64_t arr_n;        /* element count */
    const void *arr_data;  /* scalar elements: raw little-endian data inside the buffer
                              (may be unaligned: read with memcpy) */
    gguf_str *arr_str;     /* STRING elements: arr_n entries (owned by the reader) */
} gguf_kv;

typedef struct gguf_tensor {
    char *name;            /* NUL-terminated copy */
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension; unused dims = 1 */
    int type;              /* ggml type id (see quant.h) */
    uint64_t offset;       /* relative to the start of the data section */
    uint64_t nbytes;
    const void *data;      /* inside the buffer */
} gguf_tensor;

typedef struct gguf_file {
    uint32_t version;
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
    uint32_t alignment;
    uint64_t data_offset;  /* file offset of the data section */
    const uint8_t *base;   /* whole file */
    uint64_t size;
    char path[256];        /* for messages ("<memory>" for buffers) */
    /* private */
    int owns_map;
    void *priv;
} gguf_file;

/* Open and validate a file (mmap, read-only). */
int gguf_open(const char *path, gguf_file **out, duet_error *err);
/* Parse a buffer (not copied; must outlive the gguf_file). name is used in messages. */
int gguf_open_buffer(const void *buf, size_t size, const char *name, gguf_file **out,
                     duet_error *err);
void gguf_close(gguf_file *f);

/* Lookups. Return NULL / -1 when absent. */
const gguf_kv *gguf_find(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters: DUET_OK, or an error naming file, key and the found type/value.
 * Absent keys: the *_opt variants return DUET_OK and leave *out unchanged; the others fail.
 * Integer getters accept any integer type whose value fits the destination. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, duet_error *err);
int gguf_get_u32_opt(const gguf_file *f, const char *key, uint32_t *out, duet_error *err);
int gguf_get_i64_opt(const gguf_file *f, const char *key, int64_t *out, duet_error *err);
int gguf_get_f32_opt(const gguf_file *f, const char *key, float *out, duet_error *err);
int gguf_get_bool_opt(const gguf_file *f, const char *key, bool *out, duet_error *err);
int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, duet_error *err);
int gguf_get_str_opt(const gguf_file *f, const char *key, gguf_str *out, duet_error *err);
/* Array of the given element type (any integer type accepted where want is an integer type
 * of the same width); (*out)->arr_n is the count. */
int gguf_get_arr(const gguf_file *f, const char *key, gguf_type want, const gguf_kv **out,
                 duet_error *err);
int gguf_get_arr_opt(const gguf_file *f, const char *key, gguf_type want, const gguf_kv **out,
                     duet_error *err);
/* Read element i of a scalar array as double / int64 (no bounds check beyond i < arr_n). */
double gguf_arr_f64(const gguf_kv *kv, uint64_t i);
int64_t gguf_arr_i64(const gguf_kv *kv, uint64_t i);

/* Print metadata and the tensor table (duet info). Long arrays are summarised. */
void gguf_print(const gguf_file *f, void *stdio_file);

/* ---- writer ---------------------------------------------------------------------------- */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
/* Set metadata (replaces an existing key). Values are copied. */
void gguf_set_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_set_i32(gguf_writer *w, const char *key, int32_t v);
void gguf_set_u64(gguf_writer *w, const char *key, uint64_t v);
void gguf_set_f32(gguf_writer *w, const char *key, float v);
void gguf_set_bool(gguf_writer *w, const char *key, bool v);
void gguf_set_str(gguf_writer *w, const char *key, const char *v);
/* Copy a key as a reader holds it (any type): what a file rewriter needs. */
void gguf_set_kv_from(gguf_writer *w, const gguf_kv *kv);
/* Scalar array: n elements of type t, raw little-endian data. */
void gguf_set_arr(gguf_writer *w, const char *key, gguf_type t, const void *data, uint64_t n);
/* String array (NUL-terminated strings; pass lens = NULL) or byte strings with lens. */
void gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *strs,
                      const uint64_t *lens, uint64_t n);
/* Add a tensor; data (nbytes as its type and shape require) is copied. ne as in gguf_tensor. */
int gguf_add_tensor(gguf_writer *w, const char *name, int type, uint32_t n_dims,
                    const int64_t *ne, const void *data, duet_error *err);
/* Write version-3 GGUF to path atomically (path.tmp, fsync, rename; the temp file is removed
 * on failure). general.alignment is always written: the caller's u32 value (a power of two
 * <= 65536), else 32 appended after the caller's keys. Setters return nothing: their first
 * error (bad key, NULL string, bad array type) is returned here and nothing is written. */
int gguf_write(gguf_writer *w, const char *path, duet_error *err);

#endif
