/* fuzz_gguf.c: libFuzzer harness for the GGUF reader (docs/bad-inputs.md: a fuzz harness
 * for each parser). Parses the input as a whole file; on success it drives every getter on every
 * key with every expected type, reads each array's first and last element, touches each
 * tensor's first and last data byte and prints everything, so ASan/UBSan see any access the
 * validation let through.
 * Run: build-fuzz/fuzz_gguf -max_total_time=600 CORPUS_DIR */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "format/gguf.h"

static void exercise_kv(const gguf_file *f, const gguf_kv *kv) {
    duet_error err;
    uint32_t u32;
    int64_t i64;
    float f32;
    bool b;
    gguf_str s;
    const gguf_kv *a;
    (void)gguf_get_u32(f, kv->key, &u32, &err);
    (void)gguf_get_u32_opt(f, kv->key, &u32, &err);
    (void)gguf_get_i64_opt(f, kv->key, &i64, &err);
    (void)gguf_get_f32_opt(f, kv->key, &f32, &err);
    (void)gguf_get_bool_opt(f, kv->key, &b, &err);
    (void)gguf_get_str(f, kv->key, &s, &err);
    (void)gguf_get_str_opt(f, kv->key, &s, &err);
    for (int t = 0; t < GGUF_TYPE_COUNT; t++)
        (void)gguf_get_arr(f, kv->key, (gguf_type)t, &a, &err);
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_n == 0) return;
    volatile uint64_t sink = 0;
    if (kv->arr_type == GGUF_TYPE_STRING) {
        const gguf_str *first = &kv->arr_str[0], *last = &kv->arr_str[kv->arr_n - 1];
        if (first->len) sink += (uint8_t)first->ptr[0];
        if (last->len) sink += (uint8_t)last->ptr[last->len - 1];
    } else {
        sink += (uint64_t)gguf_arr_i64(kv, 0) + (uint64_t)gguf_arr_i64(kv, kv->arr_n - 1);
        sink += (uint64_t)(gguf_arr_f64(kv, kv->arr_n - 1) != 0.0);
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *devnull;
    if (!devnull) devnull = fopen("/dev/null", "w");
    gguf_file *f = NULL;
    duet_error err;
    if (gguf_open_buffer(data, size, "fuzz.gguf", &f, &err) != DUET_OK) return 0;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        exercise_kv(f, &f->kv[i]);
        if (gguf_find(f, f->kv[i].key) != &f->kv[i]) __builtin_trap(); /* keys are unique */
    }
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (gguf_find_tensor(f, t->name) != t) __builtin_trap();
        const uint8_t *p = t->data;
        sink ^= p[0] ^ p[t->nbytes - 1]; /* nbytes >= 1 for every valid tensor */
    }
    (void)sink;
    (void)gguf_find(f, "general.architecture");
    if (devnull) gguf_print(f, devnull);
    gguf_close(f);
    return 0;
}
