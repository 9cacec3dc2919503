/*
 * make_model.c: random-weight GGUFs of any supported architecture (llama, qwen2, qwen3,
 * phi3, gemma2), shape and type, for fixtures and benchmarks. Each tensor draws from its own
 * stream seeded by (seed, tensor index), so a file is reproducible bit for bit. The synthetic
 * vocabulary is a valid SentencePiece one (specials, byte tokens, characters, made-up pieces)
 * so that other GGUF tools load it; --vocab-from takes a real one (e.g. a byte-level BPE
 * vocabulary) from another GGUF instead, so any tokenizer can be run through the product.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "format/convert.h"
#include "format/gguf.h"
#include "format/quant.h"
#include "text/tokenizer.h"

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

/* A tensor of draws mean + std * N(0, 1): a matrix [n_out][n_in], or (n_out 0) a vector. */
static int add_random(gguf_writer *w, const char *name, int type, int64_t n_in, int64_t n_out,
                      uint64_t seed, int index, double mean, double std, duet_error *err) {
    size_t row = dtype_row_size(type, n_in);
    if (!row)
        return duet_fail(err, DUET_ERR_ARG, "make-model: tensor '%s': row of %lld is not a "
                         "multiple of the %s block", name, (long long)n_in,
                         dtype_info(type) ? dtype_info(type)->name : "?");
    int64_t rows = n_out ? n_out : 1;
    uint8_t *data = malloc(row * (size_t)rows);
    float *tmp = malloc((size_t)n_in * sizeof(float));
    if (!data || !tmp) {
        free(data);
        free(tmp);
        return duet_fail(err, DUET_ERR_NOMEM, "make-model: out of memory for '%s'", name);
    }
    rng r = {seed * 0x100000001b3ull + (uint64_t)index * 0x9e3779b97f4a7c15ull, 0, 0};
    for (int64_t o = 0; o < rows; o++) {
        for (int64_t i = 0; i < n_in; i++) tmp[i] = (float)(mean + std * rng_normal(&r));
        quant_quantize_row(type, tmp, data + (size_t)o * row, n_in);
    }
    int64_t ne[2] = {n_in, n_out};
    int rc = gguf_add_tensor(w, name, type, n_out ? 2 : 1, ne, data, err);
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

/* Check that --vocab-from's file holds a tokenizer duet loads (so the model written loads
 * too) whose size agrees with a --n-vocab the caller gave; *n_vocab is that size. */
static int vocab_size(const char *path, int want_n, int *n_vocab, duet_error *err) {
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    int rc = gguf_open(path, &f, err);
    if (!rc && !gguf_find(f, "tokenizer.ggml.tokens"))
        rc = duet_fail(err, DUET_ERR_FORMAT, "make-model: --vocab-from %s: no "
                       "tokenizer.ggml.tokens (not a vocabulary)", path);
    if (!rc) rc = tokenizer_load(f, &t, err);
    if (!rc) {
        *n_vocab = tokenizer_n_vocab(t);
        if (want_n && want_n != *n_vocab)
            rc = duet_fail(err, DUET_ERR_ARG, "make-model: --n-vocab %d does not match the %d "
                           "tokens of --vocab-from %s (omit --n-vocab to take the file's)",
                           want_n, *n_vocab, path);
    }
    tokenizer_free(t);
    gguf_close(f);
    return rc;
}

/* Copy every tokenizer.* key of the file at path (checked by vocab_size: n_vocab tokens) as it
 * is (types kept, except that 8- and 16-bit integers widen to 32 bits: the writer has no
 * narrower setters and every reader accepts them). */
static int copy_vocab(gguf_writer *w, const char *path, int n_vocab, duet_error *err) {
    gguf_file *f = NULL;
    int rc = gguf_open(path, &f, err);
    const gguf_kv *toks = rc ? NULL : gguf_find(f, "tokenizer.ggml.tokens");
    if (!rc && (!toks || toks->type != GGUF_TYPE_ARRAY || toks->arr_n != (uint64_t)n_vocab))
        rc = duet_fail(err, DUET_ERR_FORMAT, "make-model: --vocab-from %s changed while it was "
                       "read (no longer %d tokens)", path, n_vocab);
    for (uint64_t i = 0; !rc && i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (strncmp(kv->key, "tokenizer.", 10)) continue;
        switch (kv->type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32:
            gguf_set_u32(w, kv->key, (uint32_t)kv->v.u64);
            break;
        case GGUF_TYPE_UINT64: gguf_set_u64(w, kv->key, kv->v.u64); break;
        case GGUF_TYPE_INT8: case GGUF_TYPE_INT16: case GGUF_TYPE_INT32:
            gguf_set_i32(w, kv->key, (int32_t)kv->v.i64);
            break;
        case GGUF_TYPE_FLOAT32: gguf_set_f32(w, kv->key, (float)kv->v.f64); break;
        case GGUF_TYPE_BOOL: gguf_set_bool(w, kv->key, kv->v.u64 != 0); break;
        case GGUF_TYPE_STRING: {
            char *s = kv->str.len < SIZE_MAX && !memchr(kv->str.ptr, 0, (size_t)kv->str.len)
                          ? strndup(kv->str.ptr, (size_t)kv->str.len) : NULL;
            if (!s) {
                rc = duet_fail(err, DUET_ERR_FORMAT, "make-model: %s: key '%s': string holds a "
                               "NUL byte (or out of memory)", path, kv->key);
                break;
            }
            gguf_set_str(w, kv->key, s);
            free(s);
            break;
        }
        case GGUF_TYPE_ARRAY: {
            if (kv->arr_type != GGUF_TYPE_STRING) {
                gguf_set_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_n);
                break;
            }
            const char **strs = malloc((size_t)kv->arr_n * sizeof *strs + 1);
            uint64_t *lens = malloc((size_t)kv->arr_n * sizeof *lens + 1);
            for (uint64_t j = 0; strs && lens && j < kv->arr_n; j++) {
                strs[j] = kv->arr_str[j].ptr;
                lens[j] = kv->arr_str[j].len;
            }
            if (strs && lens) gguf_set_arr_str(w, kv->key, strs, lens, kv->arr_n);
            else rc = duet_fail(err, DUET_ERR_NOMEM, "make-model: out of memory copying '%s'",
                                kv->key);
            free(strs);
            free(lens);
            break;
        }
        default: /* int64 / float64: no tokenizer key in the wild has them */
            rc = duet_fail(err, DUET_ERR_UNSUPPORTED, "make-model: %s: key '%s' of type %s "
                           "cannot be copied", path, kv->key, gguf_type_name(kv->type));
        }
    }
    gguf_close(f);
    return rc;
}

/* ggml's general.file_type (llama_ftype) for an all-one-type model */
static int file_type_of(int type) {
    switch (type) {
    case DT_F32: return 0;
    case DT_F16: return 1;
    case DT_Q4_0: return 2;
    case DT_Q8_0: return 7;
    case DT_Q4_K: return 14; /* llama.cpp names the uniform K types by their _S mixes */
    case DT_Q5_K: return 16;
    case DT_Q6_K: return 18;
    case DT_BF16: return 32;
    default: return 0;
    }
}

/* The type of one tensor: a mix's rule (token_embd takes output.weight's when tied, as
 * llama-quantize does), unless --output-type names the output's. */
static int tensor_type(const duet_make_model_params *p, const char *name, int is_output, int dflt) {
    if (!p->mix || (is_output && p->output_type >= 0)) return dflt;
    return quant_mix_tensor_type(p->mix, name, p->n_layer);
}

static const char *const k_archs[] = {"llama", "qwen2", "qwen3", "phi3", "gemma2"};

/* The family's own keys: RoPE dimensions, head size, norm epsilon and RoPE base, sliding
 * window, LongRoPE and soft caps. */
static void set_arch_keys(gguf_writer *w, const duet_make_model_params *p, const char *arch, int ai,
                          int hd, int n_rot) {
    int llama = ai == 0, phi3 = ai == 3, gemma2 = ai == 4;
    char key[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
    gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)n_rot);
    if (p->head_dim) {
        gguf_set_u32(w, KEY("attention.key_length"), (uint32_t)hd);
        gguf_set_u32(w, KEY("attention.value_length"), (uint32_t)hd);
    }
    if (!llama) { /* the values these families ship with, so the reader must take them */
        gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-6f);
        gguf_set_f32(w, KEY("rope.freq_base"), 1000000.0f);
    }
    if (phi3) gguf_set_u32(w, KEY("attention.sliding_window"), (uint32_t)p->n_swa);
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : 2048;
    if (p->longrope) { /* the attn_factor llama.cpp's converter derives for LongRoPE */
        int orig = DUET_MAX(n_ctx / 2, 2);
        gguf_set_u32(w, KEY("rope.scaling.original_context_length"), (uint32_t)orig);
        gguf_set_f32(w, KEY("rope.scaling.attn_factor"),
                     (float)sqrt(1 + log((double)n_ctx / orig) / log((double)orig)));
    }
    if (gemma2) {
        gguf_set_u32(w, KEY("attention.sliding_window"), p->n_swa ? (uint32_t)p->n_swa : 4096);
        gguf_set_f32(w, KEY("attn_logit_softcapping"), p->attn_softcap > 0 ? p->attn_softcap : 50);
        gguf_set_f32(w, KEY("final_logit_softcapping"),
                     p->final_softcap > 0 ? p->final_softcap : 30);
    }
#undef KEY
}

/* The tensors of layer l in the family's layout; *idx numbers the random tensors so that each
 * gets its own stream of the seed. */
static int add_layer(gguf_writer *w, const duet_make_model_params *p, int l, int ai, int type,
                     int hd, double jit, double sd, int *idx, duet_error *err) {
    int llama = ai == 0, qwen2 = ai == 1, qwen3 = ai == 2, phi3 = ai == 3, gemma2 = ai == 4;
    int64_t E = p->n_embd, F = p->n_ff, Q = (int64_t)p->n_head * hd,
            KV = (int64_t)p->n_head_kv * hd;
    int rc = DUET_OK;
    char n[64];
#define NM(suffix) (snprintf(n, sizeof n, "blk.%d.%s", l, suffix), n)
#define M(suffix, nin, nout) \
    if (!rc) { NM(suffix); /* before tensor_type reads n */ \
               rc = add_random(w, n, tensor_type(p, n, 0, type), nin, nout, p->seed, (*idx)++, 0, sd, err); }
#define V(suffix, len, mean, std) \
    if (!rc) rc = add_random(w, NM(suffix), DT_F32, len, 0, p->seed, (*idx)++, mean, std, err);
#define N(suffix, len) \
    if (!rc) rc = llama ? add_ones(w, NM(suffix), len, err) \
                        : add_random(w, NM(suffix), DT_F32, len, 0, p->seed, (*idx)++, 1, jit, err);
    N("attn_norm.weight", E)
    if (phi3) {
        M("attn_qkv.weight", E, Q + 2 * KV)
    } else {
        M("attn_q.weight", E, Q)
        M("attn_k.weight", E, KV)
        M("attn_v.weight", E, KV)
    }
    if (qwen2) {
        V("attn_q.bias", Q, 0, sd)
        V("attn_k.bias", KV, 0, sd)
        V("attn_v.bias", KV, 0, sd)
    }
    if (qwen3) {
        N("attn_q_norm.weight", hd)
        N("attn_k_norm.weight", hd)
    }
    M("attn_output.weight", Q, E)
    if (gemma2) N("post_attention_norm.weight", E)
    N("ffn_norm.weight", E)
    if (phi3) {
        M("ffn_up.weight", E, 2 * F) /* gate rows, then up rows */
        M("ffn_down.weight", F, E)
    } else {
        M("ffn_gate.weight", E, F)
        M("ffn_down.weight", F, E)
        M("ffn_up.weight", E, F)
    }
    if (gemma2) N("post_ffw_norm.weight", E)
#undef M
#undef V
#undef N
#undef NM
    return rc;
}

int duet_make_model(const duet_make_model_params *p, const char *out_path, duet_error *err) {
    const char *arch = p->arch ? p->arch : "llama";
    int ai = 0, n_archs = (int)(sizeof k_archs / sizeof k_archs[0]);
    while (ai < n_archs && strcmp(arch, k_archs[ai])) ai++;
    if (ai == n_archs)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "make-model: --arch %s is not supported "
                         "(supported: llama, qwen2, qwen3, phi3, gemma2)", arch);
    int llama = ai == 0, phi3 = ai == 3, gemma2 = ai == 4;
    duet_make_model_params with_vocab; /* p, with n_vocab the file's */
    if (p->vocab_from) {
        with_vocab = *p;
        int rc = vocab_size(p->vocab_from, p->n_vocab, &with_vocab.n_vocab, err);
        if (rc) return rc;
        p = &with_vocab;
    }
    int type = p->mix ? quant_mix_base_type(p->mix) : p->type;
    const dtype_traits *tr = dtype_info(type);
    int otype = p->output_type >= 0 ? p->output_type : type;
    if (!tr || !tr->supported || !dtype_info(otype) || !dtype_info(otype)->supported)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "make-model: type %d is not supported",
                         tr ? type : otype);
    int hd = p->head_dim > 0 ? p->head_dim : (p->n_head > 0 ? p->n_embd / p->n_head : 0);
    int n_rot = p->n_rot > 0 ? p->n_rot : hd;
    if (p->longrope && !phi3)
        return duet_fail(err, DUET_ERR_ARG, "make-model: --longrope is for --arch phi3, not %s",
                         arch);
    if (p->n_embd <= 0 || p->n_layer <= 0 || p->n_head <= 0 || p->n_head_kv <= 0 ||
        p->n_ff <= 0 || p->n_vocab < 3 || (!p->head_dim && p->n_embd % p->n_head) ||
        p->n_head % p->n_head_kv || hd <= 0 || hd % 2 || n_rot > hd || n_rot % 2 ||
        p->n_swa < 0 || !(p->attn_softcap >= 0) || !(p->final_softcap >= 0) ||
        !(p->weight_std >= 0 && p->weight_std < 100))
        return duet_fail(err, DUET_ERR_ARG, "make-model: inconsistent shape (n_embd %d, "
                         "n_layer %d, n_head %d, n_head_kv %d, n_ff %d, n_vocab %d, head_dim %d, "
                         "n_rot %d, n_swa %d, soft caps %g %g)", p->n_embd, p->n_layer, p->n_head,
                         p->n_head_kv, p->n_ff, p->n_vocab, hd, n_rot, p->n_swa,
                         p->attn_softcap, p->final_softcap);
    gguf_writer *w = gguf_writer_new();
    if (!w) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    char name[96];
    snprintf(name, sizeof name, "duet-random-%s", p->mix ? "mix" : tr->name);
    int64_t E = p->n_embd;
    convert_set_hparams(w, arch, name, p->n_ctx > 0 ? p->n_ctx : 2048, p->n_embd, p->n_layer,
                        p->n_ff, p->n_head, p->n_head_kv,
                        p->mix ? quant_mix_file_type(p->mix) : file_type_of(type));
    set_arch_keys(w, p, arch, ai, hd, n_rot);
    /* norms: ones for llama (files stay as they were); jittered for the others */
    double jit = llama ? 0.0 : 0.1, sd = p->weight_std > 0 ? p->weight_std : 0.02;
    int rc = p->vocab_from ? copy_vocab(w, p->vocab_from, p->n_vocab, err)
                           : set_vocab(w, p->n_vocab, err), idx = 0;
    int etype = tensor_type(p, p->tied || gemma2 ? "output.weight" : "token_embd.weight", 1, otype);
    if (!rc) rc = add_random(w, "token_embd.weight", etype, E, p->n_vocab, p->seed, idx++, 0, sd, err);
    if (!rc) rc = llama ? add_ones(w, "output_norm.weight", E, err)
                        : add_random(w, "output_norm.weight", DT_F32, E, 0, p->seed, idx++, 1, jit, err);
    if (!rc && !p->tied && !gemma2)
        rc = add_random(w, "output.weight", tensor_type(p, "output.weight", 1, otype), E, p->n_vocab,
                        p->seed, idx++, 0, sd, err);
    /* factors as Phi-3.5's: near 1 for the short context, larger for the long one */
    if (!rc && p->longrope)
        rc = add_random(w, "rope_factors_short.weight", DT_F32, n_rot / 2, 0, p->seed, idx++, 1.5,
                        0.1, err);
    if (!rc && p->longrope)
        rc = add_random(w, "rope_factors_long.weight", DT_F32, n_rot / 2, 0, p->seed, idx++, 6,
                        1, err);
    for (int l = 0; !rc && l < p->n_layer; l++) rc = add_layer(w, p, l, ai, type, hd, jit, sd, &idx, err);
    if (!rc) rc = gguf_write(w, out_path, err);
    gguf_writer_free(w);
    return rc;
}
