/*
 * make_model.c: random-weight llama GGUFs of any shape and type, for fixtures and
 * benchmarks. Each tensor draws from its own stream seeded by (seed, tensor index), so a
 * file is reproducible bit for bit. The synthetic vocabulary is a valid SentencePiece one
 * (specials, byte tokens, characters, made-up pieces) so that other GGUF tools load it.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "convert.h"
#include "gguf.h"
#include "quant.h"
#include "tokenizer.h"

typedef struct rng { uint64_t s; int have; double spare; } rng;

static double rng_normal(rng *r) { /* Box-Muller, both values used */
    if (r->have) { r->have = 0; return r->spare; }
    double u1 = ((double)(duet_splitmix64(&r->s) >> 11) + 0.5) * 0x1.0p-53;
    double u2 = (double)(duet_splitmix64(&r->s) >> 11) * 0x1.0p-53;
    double m = sqrt(-2.0 * log(u1));
    r->spare = m * sin(2 * M_PI * u2);
    r->have = 1;
    return m * cos(2 * M_PI * u2);
}

static int add_random(gguf_writer *w, const char *name, int type, int64_t n_in, int64_t n_out,
                      uint64_t seed, int index, duet_error *err) {
    size_t row = dtype_row_size(type, n_in);
    if (!row)
        return duet_fail(err, DUET_ERR_ARG, "make-model: tensor '%s': row of %lld is not a "
                         "multiple of the %s block", name, (long long)n_in,
                         dtype_info(type) ? dtype_info(type)->name : "?");
    uint8_t *data = malloc(row * (size_t)n_out);
    float *tmp = malloc((size_t)n_in * sizeof(float));
    if (!data || !tmp) {
        free(data);
        free(tmp);
        return duet_fail(err, DUET_ERR_NOMEM, "make-model: out of memory for '%s'", name);
    }
    rng r = {seed * 0x100000001b3ull + (uint64_t)index * 0x9e3779b97f4a7c15ull, 0, 0};
    for (int64_t o = 0; o < n_out; o++) {
        for (int64_t i = 0; i < n_in; i++) tmp[i] = (float)(0.02 * rng_normal(&r));
        quant_quantize_row(type, tmp, data + (size_t)o * row, n_in);
    }
    int64_t ne[2] = {n_in, n_out};
    int rc = gguf_add_tensor(w, name, type, 2, ne, data, err);
    free(data);
    free(tmp);
    return rc;
}

static int add_ones(gguf_writer *w, const char *name, int64_t n, duet_error *err) {
    float *v = malloc((size_t)n * sizeof(float));
    if (!v) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) v[i] = 1.0f;
    int rc = gguf_add_tensor(w, name, DT_F32, 1, &n, v, err);
    free(v);
    return rc;
}

static int set_vocab(gguf_writer *w, int n_vocab, duet_error *err) {
    char **text = calloc((size_t)n_vocab, sizeof(char *));
    float *score = calloc((size_t)n_vocab, sizeof(float));
    int32_t *type = calloc((size_t)n_vocab, sizeof(int32_t));
    int rc = DUET_OK;
    if (!text || !score || !type) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n_vocab; i++) {
        char buf[64];
        int t = TOKTYPE_NORMAL, k = i - 259;
        if (i == 0) { strcpy(buf, "<unk>"); t = TOKTYPE_UNKNOWN; }
        else if (i == 1) { strcpy(buf, "<s>"); t = TOKTYPE_CONTROL; }
        else if (i == 2) { strcpy(buf, "</s>"); t = TOKTYPE_CONTROL; }
        else if (i < 259) { snprintf(buf, sizeof buf, "<0x%02X>", i - 3); t = TOKTYPE_BYTE; }
        else if (k < 94) { buf[0] = (char)(0x21 + k); buf[1] = 0; }           /* "!".."~" */
        else if (k < 188) { snprintf(buf, sizeof buf, "\xe2\x96\x81%c", 0x21 + k - 94); }
        else {                                  /* "▁aa", "▁ab", ...: two letters or more */
            int x = k - 188 + 26, n = 0;
            char rev[16];
            while (x > 0) { rev[n++] = (char)('a' + x % 26); x /= 26; }
            strcpy(buf, "\xe2\x96\x81");
            for (int j = 0; j < n; j++) buf[3 + j] = rev[n - 1 - j];
            buf[3 + n] = 0;
        }
        text[i] = strdup(buf);
        score[i] = t == TOKTYPE_NORMAL ? -(float)i : 0.0f;
        type[i] = t;
        if (!text[i]) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    if (!rc) {
        gguf_set_str(w, "tokenizer.ggml.model", "llama");
        gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)text, NULL, (uint64_t)n_vocab);
        gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, score, (uint64_t)n_vocab);
        gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, type, (uint64_t)n_vocab);
        gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
        gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
        gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
        gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true);
        gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", true);
    }
    for (int i = 0; text && i < n_vocab; i++) free(text[i]);
    free(text);
    free(score);
    free(type);
    return rc;
}

/* ggml's general.file_type (llama_ftype) for an all-one-type model */
static int file_type_of(int type) {
    switch (type) {
    case DT_F32: return 0;
    case DT_F16: return 1;
    case DT_Q4_0: return 2;
    case DT_Q8_0: return 7;
    case DT_BF16: return 32;
    default: return 0;
    }
}

int duet_make_model(const duet_make_model_params *p, const char *out_path, duet_error *err) {
    if (p->arch && strcmp(p->arch, "llama") != 0)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "make-model: --arch %s is not supported "
                         "(supported: llama)", p->arch);
    const dtype_traits *tr = dtype_info(p->type);
    int otype = p->output_type >= 0 ? p->output_type : p->type;
    if (!tr || !tr->supported || !dtype_info(otype) || !dtype_info(otype)->supported)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "make-model: type %d is not supported",
                         tr ? p->type : otype);
    if (p->n_embd <= 0 || p->n_layer <= 0 || p->n_head <= 0 || p->n_head_kv <= 0 ||
        p->n_ff <= 0 || p->n_vocab < 3 || p->n_embd % p->n_head || p->n_head % p->n_head_kv ||
        (p->n_embd / p->n_head) % 2)
        return duet_fail(err, DUET_ERR_ARG, "make-model: inconsistent shape (n_embd %d, "
                         "n_layer %d, n_head %d, n_head_kv %d, n_ff %d, n_vocab %d)", p->n_embd,
                         p->n_layer, p->n_head, p->n_head_kv, p->n_ff, p->n_vocab);
    gguf_writer *w = gguf_writer_new();
    if (!w) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    char name[96];
    snprintf(name, sizeof name, "duet-random-%s", tr->name);
    int hd = p->n_embd / p->n_head, kv = p->n_head_kv * hd;
    convert_set_llama_hparams(w, name, p->n_ctx > 0 ? p->n_ctx : 2048, p->n_embd, p->n_layer,
                              p->n_ff, p->n_head, p->n_head_kv, file_type_of(p->type));
    int rc = set_vocab(w, p->n_vocab, err), idx = 0;
    if (!rc) rc = add_random(w, "token_embd.weight", otype, p->n_embd, p->n_vocab, p->seed, idx++, err);
    if (!rc) rc = add_ones(w, "output_norm.weight", p->n_embd, err);
    if (!rc && !p->tied)
        rc = add_random(w, "output.weight", otype, p->n_embd, p->n_vocab, p->seed, idx++, err);
    for (int l = 0; !rc && l < p->n_layer; l++) {
        char n[64];
#define M(suffix, nin, nout) \
    if (!rc) { snprintf(n, sizeof n, "blk.%d.%s.weight", l, suffix); \
               rc = add_random(w, n, p->type, nin, nout, p->seed, idx++, err); }
#define N(suffix) \
    if (!rc) { snprintf(n, sizeof n, "blk.%d.%s.weight", l, suffix); rc = add_ones(w, n, p->n_embd, err); }
        N("attn_norm")
        M("attn_q", p->n_embd, p->n_embd)
        M("attn_k", p->n_embd, kv)
        M("attn_v", p->n_embd, kv)
        M("attn_output", p->n_embd, p->n_embd)
        N("ffn_norm")
        M("ffn_gate", p->n_embd, p->n_ff)
        M("ffn_down", p->n_ff, p->n_embd)
        M("ffn_up", p->n_embd, p->n_ff)
#undef M
#undef N
    }
    if (!rc) rc = gguf_write(w, out_path, err);
    gguf_writer_free(w);
    return rc;
}
