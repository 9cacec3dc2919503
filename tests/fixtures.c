/* fixtures.c: model files the tests share, made once per run in the test directory:
 * llama2.c models from ../shared imported with duet's converter, and random-weight models
 * written by duet's own GGUF writer. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/common.h"
#include "format/gguf.h"
#include "format/quant.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

/* ---- helpers ----------------------------------------------------------------------------- */
const char *fixture_shared(const char *rel) {
    const char *sh = test_shared_dir();
    if (!sh) return NULL;
    const char *p = test_path(sh, rel);
    return access(p, R_OK) == 0 ? p : NULL;
}

char *fixture_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = NULL;
    long size = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    if (size >= 0 && !fseek(f, 0, SEEK_SET) && (s = malloc((size_t)size + 1)) &&
        fread(s, 1, (size_t)size, f) != (size_t)size) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s) {
        s[size] = 0;
        if (n) *n = (size_t)size;
    }
    return s;
}

/* Convert a shared llama2.c model once per run; NULL (and SKIP by caller) if absent. */
const char *fixture_llama2c(const char *name) {
    static char done[4][512];
    const char *ckpt, *tok = NULL, *vocab = NULL;
    int bytes = 0, slot;
    if (!strcmp(name, "stories260K")) {
        slot = 0;
        ckpt = fixture_shared("models/stories260K/stories260K.bin");
        tok = fixture_shared("models/stories260K/tok512.bin");
    } else if (!strcmp(name, "tok105")) {
        slot = 1;
        ckpt = fixture_shared("models/babyllama/tok105_model5000.bin");
        vocab = fixture_shared("models/babyllama/tok105.vocab");
    } else {
        slot = 2;
        ckpt = fixture_shared("models/babyllama/tok361_model5000.bin");
        vocab = fixture_shared("models/babyllama/tok105.vocab");
        bytes = 1;
    }
    if (!ckpt || (!tok && !vocab)) return NULL;
    if (done[slot][0]) return done[slot];
    char out[512];
    snprintf(out, sizeof out, "%s/%s.gguf", test_tmpdir(), name);
    duet_convert_params p = {.checkpoint = ckpt, .tokenizer = tok, .vocab = vocab,
                             .byte_tokens = bytes};
    duet_error err = {0};
    if (duet_convert_llama2c(&p, out, &err)) {
        test_fail_at(__FILE__, __LINE__, "convert %s: %s", name, err.msg);
        return NULL;
    }
    snprintf(done[slot], sizeof done[slot], "%s", out);
    return done[slot];
}

/* test_tmpdir()/NAME (printf-style) as a string valid for the whole run: callers keep these
 * pointers (the server tests hold their models' paths across every later fixture call), so
 * one path is never overwritten by another's; the same name gives the same pointer. */
static const char *fixture_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *fixture_path(const char *fmt, ...) {
    static char paths[256][512];
    static int n;
    char name[400], full[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "%s/%s", test_tmpdir(), name);
    for (int i = 0; i < n; i++)
        if (!strcmp(paths[i], full)) return paths[i];
    if (n == 256) {
        fprintf(stderr, "fixtures: more than 256 fixture files\n");
        abort();
    }
    memcpy(paths[n], full, sizeof full);
    return paths[n++];
}

const char *fixture_random(int type, uint64_t seed, int tied) {
    const char *out = fixture_path("rand-%d-%llu-%d.gguf", type, (unsigned long long)seed, tied);
    if (access(out, R_OK) == 0) return out;
    duet_make_model_params p = {.arch = "llama", .n_embd = 128, .n_layer = 2, .n_head = 4,
                                .n_head_kv = 2, .n_ff = 256, .n_vocab = 600, .n_ctx = 256,
                                .type = type, .output_type = -1, .tied = tied, .seed = seed};
    duet_error err = {0};
    if (duet_make_model(&p, out, &err)) {
        test_fail_at(__FILE__, __LINE__, "make-model: %s", err.msg);
        return NULL;
    }
    return out;
}

const char *fixture_arch(const char *arch, int type, int n_swa, float attn_softcap,
                         float final_softcap) {
    const char *out = fixture_path("arch-%s-%d-%d-%g-%g.gguf", arch, type, n_swa, attn_softcap,
                                   final_softcap);
    if (access(out, R_OK) == 0) return out;
    int wide = !strcmp(arch, "qwen3") || !strcmp(arch, "gemma2");
    int longrope = !strcmp(arch, "phi3-longrope");
    if (longrope) arch = "phi3";
    duet_make_model_params p = {.arch = arch, .n_embd = 64, .n_layer = 3, .n_head = 4,
                                .n_head_kv = 2, .n_ff = 96, .n_vocab = 300, .n_ctx = 64,
                                .type = type, .output_type = -1, .seed = 11,
                                .head_dim = wide ? 24 : 0,
                                .n_rot = !strcmp(arch, "phi3") ? 12 : 0,
                                .n_swa = n_swa ? n_swa : 4,
                                .attn_softcap = attn_softcap > 0 ? attn_softcap : 2.0f,
                                .final_softcap = final_softcap > 0 ? final_softcap : 5.0f,
                                .weight_std = 0.25f, .longrope = longrope};
    duet_error err = {0};
    if (duet_make_model(&p, out, &err)) {
        test_fail_at(__FILE__, __LINE__, "make-model --arch %s: %s", arch, err.msg);
        return NULL;
    }
    return out;
}

struct duet_model *fixture_load(const char *path) {
    duet_model *m = NULL;
    duet_error err = {0};
    duet_model_params mp = {.n_threads = 2};
    if (!path || duet_model_load(path, &mp, &m, &err))
        test_fail_at(__FILE__, __LINE__, "load %s: %s", path ? path : "(null)", err.msg);
    return m;
}

float *fixture_logits(const char *path, const int32_t *toks, int n) {
    duet_model *m = fixture_load(path);
    if (!m) return NULL;
    duet_session *s = NULL;
    duet_error err = {0};
    int V = duet_model_hparams(m)->n_vocab;
    float *out = malloc(sizeof(float) * (size_t)V * (size_t)n);
    if (!out || duet_session_new(m, NULL, &s, &err) || duet_session_eval(s, toks, n, 1, &err)) {
        test_fail_at(__FILE__, __LINE__, "%s: %s", path, out ? err.msg : "out of memory");
        free(out);
        out = NULL;
    }
    for (int i = 0; out && i < n; i++)
        memcpy(out + (size_t)i * V, duet_session_logits(s, i), sizeof(float) * (size_t)V);
    duet_session_free(s);
    duet_model_free(m);
    return out;
}

struct duet_head *fixture_random_head(struct duet_model *b, uint64_t seed, float scale) {
    int E = duet_model_hparams(b)->n_embd;
    float u[4096];
    if (E > 4096) {
        test_fail_at(__FILE__, __LINE__, "fixture_random_head: n_embd %d > 4096", E);
        return NULL;
    }
    uint64_t x = seed;
    for (int i = 0; i < E; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        u[i] = scale * ((float)(x >> 40) / (float)(1 << 24) - 0.5f);
    }
    duet_head *h = NULL;
    duet_error err = {0};
    if (duet_head_from_vector(b, u, E, &h, &err)) test_fail_at(__FILE__, __LINE__, "%s", err.msg);
    return h;
}

/* A copy of fixture_random(F32, seed 7) whose last two made-up tokens are the ChatML control
 * tokens, with FIXTURE_CHAT_TEMPLATE as tokenizer.chat_template: a model to chat with. The
 * copy goes through duet's GGUF reader and writer, key by key and tensor by tensor. */
static void copy_kv(gguf_writer *w, const gguf_kv *kv) {
    static const char *const specials[2] = {"<|im_start|>", "<|im_end|>"};
    switch (kv->type) {
    case GGUF_TYPE_UINT32: gguf_set_u32(w, kv->key, (uint32_t)kv->v.u64); break;
    case GGUF_TYPE_INT32: gguf_set_i32(w, kv->key, (int32_t)kv->v.i64); break;
    case GGUF_TYPE_UINT64: gguf_set_u64(w, kv->key, kv->v.u64); break;
    case GGUF_TYPE_FLOAT32: gguf_set_f32(w, kv->key, (float)kv->v.f64); break;
    case GGUF_TYPE_BOOL: gguf_set_bool(w, kv->key, kv->v.u64 != 0); break;
    case GGUF_TYPE_STRING: {
        char s[4096];
        snprintf(s, sizeof s, "%.*s", (int)kv->str.len, kv->str.ptr);
        gguf_set_str(w, kv->key, s);
        break;
    }
    case GGUF_TYPE_ARRAY:
        if (kv->arr_type == GGUF_TYPE_STRING) {
            uint64_t n = kv->arr_n;
            const char **p = calloc(n, sizeof *p);
            uint64_t *l = calloc(n, sizeof *l);
            for (uint64_t i = 0; p && l && i < n; i++) {
                int sp = !strcmp(kv->key, "tokenizer.ggml.tokens") && i + 2 >= n;
                p[i] = sp ? specials[i + 2 - n] : kv->arr_str[i].ptr;
                l[i] = sp ? strlen(p[i]) : kv->arr_str[i].len;
            }
            if (p && l) gguf_set_arr_str(w, kv->key, p, l, n);
            free(p);
            free(l);
        } else if (!strcmp(kv->key, "tokenizer.ggml.token_type")) {
            int32_t *t = malloc(kv->arr_n * sizeof *t);
            if (!t) break;
            memcpy(t, kv->arr_data, kv->arr_n * sizeof *t);
            t[kv->arr_n - 2] = t[kv->arr_n - 1] = 3; /* control */
            gguf_set_arr(w, kv->key, kv->arr_type, t, kv->arr_n);
            free(t);
        } else {
            gguf_set_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_n);
        }
        break;
    default: test_fail_at(__FILE__, __LINE__, "copy_kv: %s has type %d", kv->key, kv->type);
    }
}

const char *fixture_chat_model(void) {
    static char out[512];
    if (out[0]) return out;
    const char *src = fixture_random(0, 7, 0);
    if (!src) return NULL;
    char path[512];
    snprintf(path, sizeof path, "%s/chat-chatml.gguf", test_tmpdir());
    gguf_file *f = NULL;
    gguf_writer *w = gguf_writer_new();
    duet_error err = {0};
    int rc = gguf_open(src, &f, &err);
    for (uint64_t i = 0; !rc && i < f->n_kv; i++) copy_kv(w, &f->kv[i]);
    if (!rc) gguf_set_str(w, "tokenizer.chat_template", FIXTURE_CHAT_TEMPLATE);
    for (uint64_t i = 0; !rc && i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        rc = gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err);
    }
    if (!rc) rc = gguf_write(w, path, &err);
    gguf_writer_free(w);
    gguf_close(f);
    if (rc) {
        test_fail_at(__FILE__, __LINE__, "fixture_chat_model: %s", err.msg);
        return NULL;
    }
    snprintf(out, sizeof out, "%s", path);
    return out;
}

/* ---- a vocabulary with long tokens -------------------------------------------------------- */
/* A vocabulary-only GGUF: <unk>, <s>, </s>, 256 byte tokens, then n_long tokens of 300 + 7i
 * bytes each; eos is the end-of-sequence id. */
static const char *long_vocab(int n_long, uint32_t eos, const char *name) {
    const char *out = fixture_path("%s.gguf", name);
    int n = 3 + 256 + n_long;
    char **text = calloc((size_t)n, sizeof *text);
    float *score = calloc((size_t)n, sizeof *score);
    int32_t *type = calloc((size_t)n, sizeof *type);
    gguf_writer *w = gguf_writer_new();
    if (!text || !score || !type || !w) return NULL;
    const char *sp[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < n; i++) {
        if (i < 3) {
            text[i] = strdup(sp[i]);
            type[i] = i ? 3 : 2;
        } else if (i < 259) {
            text[i] = malloc(8);
            snprintf(text[i], 8, "<0x%02X>", i - 3);
            type[i] = 6;
        } else {
            int L = 300 + 7 * (i - 259);
            text[i] = malloc((size_t)L + 1);
            for (int j = 0; j < L; j++) text[i][j] = (char)('a' + (i + j) % 26);
            text[i][L] = 0;
            type[i] = 1;
            score[i] = -(float)(i - 259);
        }
    }
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)text, NULL, (uint64_t)n);
    gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, score, (uint64_t)n);
    gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, type, (uint64_t)n);
    gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_u32(w, "tokenizer.ggml.eos_token_id", eos);
    gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    duet_error err = {0};
    int rc = gguf_write(w, out, &err);
    if (rc) test_fail_at(__FILE__, __LINE__, "%s: %s", out, err.msg);
    gguf_writer_free(w);
    for (int i = 0; i < n; i++) free(text[i]);
    free(text);
    free(score);
    free(type);
    return rc ? NULL : out;
}

static const char *model_with_vocab(const char *vocab, const char *name) {
    const char *out = fixture_path("%s.gguf", name);
    duet_make_model_params mp = {.n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
                                 .n_ff = 96, .n_ctx = 128, .type = DT_F32, .output_type = -1,
                                 .seed = 77, .weight_std = 0.25f, .vocab_from = vocab};
    duet_error err = {0};
    if (duet_make_model(&mp, out, &err)) {
        test_fail_at(__FILE__, __LINE__, "%s: %s", out, err.msg);
        return NULL;
    }
    return out;
}

const char *fixture_long_vocab_model(uint32_t eos, const char *name) {
    char vname[300];
    snprintf(vname, sizeof vname, "%s-vocab", name);
    const char *vocab = long_vocab(FIXTURE_LONG_N, eos, vname);
    return vocab ? model_with_vocab(vocab, name) : NULL;
}

/* ---- LoRA adapters --------------------------------------------------------------------- */
static const char *const k_lora_mats[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                      "ffn_up", "ffn_down"};

static uint64_t g_lora_rng = 77;
static float lora_urand(void) { return (float)((duet_splitmix64(&g_lora_rng) >> 40) * 0x1.0p-24) - 0.5f; }

/* Add a random [ne0, ne1] tensor of type (F32 or F16) named name. */
static void add_random(gguf_writer *w, const char *name, int type, int64_t ne0, int64_t ne1,
                       float amp, int plant_nan) {
    size_t n = (size_t)(ne0 * ne1);
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = amp * lora_urand();
    if (plant_nan) v[n / 2] = NAN;
    void *data = v;
    uint16_t *h = NULL;
    if (type == DT_F16) {
        h = malloc(n * 2);
        for (size_t i = 0; i < n; i++) h[i] = fp32_to_fp16(v[i]);
        data = h;
    }
    int64_t ne[2] = {ne0, ne1};
    duet_error err = {0};
    if (gguf_add_tensor(w, name, type, 2, ne, data, &err))
        test_fail_at(__FILE__, __LINE__, "tensor %s: %s", name, err.msg);
    free(v);
    free(h);
}

const char *fixture_lora(const char *name, int r, float alpha, int t, int bad) {
    const char *path = test_path(test_tmpdir(), name);
    gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.type", bad == LORA_BAD_TYPE_META ? "model" : "adapter");
    gguf_set_str(w, "general.architecture", bad == LORA_BAD_ARCH ? "qwen2" : "llama");
    gguf_set_str(w, "adapter.type", "lora");
    gguf_set_f32(w, "adapter.lora.alpha", alpha);
    const int64_t E = 128, F = 256, V = 600, KV = 64; /* 2 kv heads of 32 */
    char n[128];
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 7; k++) {
            int64_t in = k == 6 ? F : E, out = k == 1 || k == 2 ? KV : k >= 4 && k < 6 ? F : E;
            snprintf(n, sizeof n, "blk.%d.%s.weight.lora_a", l, k_lora_mats[k]);
            add_random(w, n, t, in + (bad == LORA_BAD_SHAPE && l == 1 && k == 3), r,
                       0.5f, bad == LORA_BAD_NAN && l == 1 && k == 5);
            snprintf(n, sizeof n, "blk.%d.%s.weight.lora_b", l, k_lora_mats[k]);
            if (!(bad == LORA_BAD_NO_B && l == 1 && k == 2))
                add_random(w, n, t, r, out, 0.5f, 0);
        }
    add_random(w, bad == LORA_BAD_NAME ? "blk.0.attn_qkv.weight.lora_a" : "output.weight.lora_a", t, E,
               r, 0.5f, 0);
    add_random(w, bad == LORA_BAD_NAME ? "blk.0.attn_qkv.weight.lora_b" : "output.weight.lora_b", t, r,
               V, 0.5f, 0);
    duet_error err = {0};
    int rc = gguf_write(w, path, &err);
    gguf_writer_free(w);
    if (rc) test_fail_at(__FILE__, __LINE__, "writing %s: %s", path, err.msg);
    return rc ? NULL : path;
}


/* ---- the CLI ----------------------------------------------------------------------------- */
int fixture_run_cli(const char *args, const char *tag, char *err, size_t cap) {
    return fixture_run_cli_to(args, "/dev/null", tag, err, cap);
}

int fixture_run_cli_to(const char *args, const char *out, const char *tag, char *err, size_t cap) {
    const char *bin = getenv("DUET_BIN");
    char e[600], cmd[8192];
    snprintf(e, sizeof e, "%s/%s-err.txt", test_tmpdir(), tag);
    snprintf(cmd, sizeof cmd, "%s %s >'%s' 2>'%s' </dev/null", bin ? bin : "false", args, out, e);
    int st = system(cmd);
    FILE *f = fopen(e, "rb");
    size_t n = f ? fread(err, 1, cap - 1, f) : 0;
    err[n] = 0;
    if (f) fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The first n lines of a file, as a file of the run's own (fixtures.h). */
const char *fixture_first_lines(const char *src, const char *name, int n) {
    char *all = fixture_read_file(src, NULL);
    if (!all) return NULL;
    char *p = all;
    for (int i = 0; i < n && p; i++) p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL;
    if (p) *p = 0;
    const char *path = test_path(test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(all, f);
        fclose(f);
    }
    free(all);
    return f ? path : NULL;
}

/* Text as a file of the run's own (fixtures.h). */
const char *fixture_write_text(const char *name, const char *text) {
    const char *p = test_path(test_tmpdir(), name);
    FILE *f = fopen(p, "wb");
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    return p;
}

/* Two files equal byte for byte (fixtures.h). */
int fixture_same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = fixture_read_file(a, &na), *y = fixture_read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}
