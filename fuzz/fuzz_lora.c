/* fuzz_lora.c: libFuzzer harness for LoRA adapter loading (duet_lora_load against a base).
 * Random bytes would rarely pass the GGUF header, so each input edits a valid adapter: the
 * first two bytes cut the file to a length (0: keep it whole), then every 3 bytes put a byte
 * value at an offset (2 bytes, little-endian, modulo the length). A loaded adapter is then
 * attached to the base and run on a few tokens, so ASan/UBSan see any access the checks let
 * through. Run: build-fuzz/fuzz_lora -max_total_time=600 CORPUS_DIR */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "duet.h"

static uint8_t *g_tmpl;
static size_t g_tmpl_n;
static char g_base[64], g_file[64];

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_lora: %s: %s\n", what, msg);
    abort();
}

/* A valid adapter for the base: rank 2 on q, v and down of layer 0 and on the output. */
static void write_template(void) {
    gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.type", "adapter");
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_str(w, "adapter.type", "lora");
    gguf_set_f32(w, "adapter.lora.alpha", 4.0f);
    static const struct { const char *name; int64_t in, out; } m[] = {
        {"blk.0.attn_q.weight", 32, 32}, {"blk.0.attn_v.weight", 32, 16},
        {"blk.0.ffn_down.weight", 64, 32}, {"output.weight", 32, 300}};
    float v[2 * 300];
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) v[i] = (float)((int)(i * 37 % 17) - 8) / 64;
    duet_error err = {0};
    char n[96];
    for (int i = 0; i < 4; i++) {
        int64_t na[2] = {m[i].in, 2}, nb[2] = {2, m[i].out};
        snprintf(n, sizeof n, "%s.lora_a", m[i].name);
        if (gguf_add_tensor(w, n, 0, 2, na, v, &err)) die("template", err.msg);
        snprintf(n, sizeof n, "%s.lora_b", m[i].name);
        if (gguf_add_tensor(w, n, 0, 2, nb, v, &err)) die("template", err.msg);
    }
    if (gguf_write(w, g_file, &err)) die("template", err.msg);
    gguf_writer_free(w);
    FILE *f = fopen(g_file, "rb");
    if (!f) die("template", "cannot read it back");
    fseek(f, 0, SEEK_END);
    g_tmpl_n = (size_t)ftell(f);
    rewind(f);
    g_tmpl = malloc(g_tmpl_n);
    if (!g_tmpl || fread(g_tmpl, 1, g_tmpl_n, f) != g_tmpl_n) die("template", "short read");
    fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    snprintf(g_base, sizeof g_base, "/tmp/fuzz-lora-base-%d.gguf", (int)getpid());
    snprintf(g_file, sizeof g_file, "/tmp/fuzz-lora-%d.gguf", (int)getpid());
    duet_error err = {0};
    duet_make_model_params mp = {.n_embd = 32, .n_layer = 1, .n_head = 2, .n_head_kv = 1,
                                 .n_ff = 64, .n_vocab = 300, .n_ctx = 32, .type = 0,
                                 .output_type = -1, .seed = 1};
    if (duet_make_model(&mp, g_base, &err)) die("make model", err.msg);
    write_template();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(g_tmpl_n);
    if (!buf) return 0;
    memcpy(buf, g_tmpl, g_tmpl_n);
    size_t n = g_tmpl_n;
    if (size >= 2) {
        size_t cut = (size_t)(data[0] | data[1] << 8);
        if (cut) n = cut % g_tmpl_n + 1;
    }
    for (size_t i = 2; i + 3 <= size; i += 3)
        buf[(size_t)(data[i] | data[i + 1] << 8) % n] = data[i + 2];
    FILE *f = fopen(g_file, "wb");
    if (!f || fwrite(buf, 1, n, f) != n) die("write", g_file);
    fclose(f);
    free(buf);
    duet_model_params lp = {.n_threads = 1};
    duet_model *m = NULL;
    duet_error err = {0};
    if (duet_model_load(g_base, &lp, &m, &err)) die("load base", err.msg);
    duet_lora *a = NULL;
    if (!duet_lora_load(g_file, m, &a, &err) && !duet_model_add_lora(m, a, 1.0f, &err)) {
        duet_session *s = NULL;
        int32_t toks[4] = {1, 20, 77, 299};
        if (!duet_session_new(m, NULL, &s, &err) && !duet_session_eval(s, toks, 4, 1, &err)) {
            volatile float sink = duet_session_logits(s, 3)[299];
            (void)sink;
        }
        duet_session_free(s);
    }
    duet_lora_free(a);
    duet_model_free(m);
    return 0;
}
