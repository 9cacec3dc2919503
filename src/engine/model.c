/*
 * model.c: read a GGUF (llama, qwen2, qwen3, phi3, gemma2) into a duet_model: hyperparameters
 * from metadata, every tensor's shape checked against them before anything is indexed,
 * weights bound as views (file mapping) or copied into anonymous memory (default: measured
 * faster for generation). Names and keys are llama.cpp's, so its GGUF files load as they are.
 */
#include "engine/model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/common.h"
#include "engine/kernels.h"
#include "format/quant.h"

#define MAX_LAYERS 1024
#define MAX_CTX (1 << 24)
#define MAX_EMBD (1 << 17)

static int get_u32_req(const gguf_file *f, const char *arch, const char *suffix, uint32_t *out,
                       duet_error *err) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return gguf_get_u32(f, key, out, err);
}

static int get_u32_opt(const gguf_file *f, const char *arch, const char *suffix, uint32_t *out,
                       duet_error *err) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return gguf_get_u32_opt(f, key, out, err);
}

static int get_f32_opt(const gguf_file *f, const char *arch, const char *suffix, float *out,
                       duet_error *err) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return gguf_get_f32_opt(f, key, out, err);
}

/* The architectures duet runs, by general.architecture. RoPE order as llama.cpp has it:
 * llama files store q/k so that consecutive pairs rotate; the others rotate halves (NEOX). */
static const struct { const char *name; int id, rope_neox; } k_archs[] = {
    {"llama", ARCH_LLAMA, 0}, {"qwen2", ARCH_QWEN2, 1}, {"qwen3", ARCH_QWEN3, 1},
    {"phi3", ARCH_PHI3, 1},   {"gemma2", ARCH_GEMMA2, 1},
};
#define N_ARCHS (int)(sizeof k_archs / sizeof k_archs[0])

/* Architecture-specific metadata: sliding window, soft caps, embedding and query scales. */
static int read_arch_params(duet_model *m, const char *arch, duet_error *err) {
    const gguf_file *f = m->gguf;
    const duet_hparams *hp = &m->hp;
    arch_params *ap = &m->ap;
    int rc;
    ap->embd_scale = 1.0f;
    ap->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (ap->id == ARCH_PHI3) {
        /* llama.cpp: every phi3 layer uses the window; files from before the key existed get
         * the value Phi-3-mini/medium-4k were trained with */
        uint32_t swa = (hp->n_layer == 32 || hp->n_layer == 40) && hp->n_ctx_train == 4096
                       ? 2047 : 0;
        if ((rc = get_u32_opt(f, arch, "attention.sliding_window", &swa, err))) return rc;
        ap->n_swa = (int)DUET_MIN(swa, (uint32_t)MAX_CTX);
    } else if (ap->id == ARCH_GEMMA2) {
        uint32_t swa = 4096;
        float cap_a = 50.0f, cap_f = 30.0f; /* Gemma 2's values, defaults in llama.cpp too */
        if ((rc = get_u32_opt(f, arch, "attention.sliding_window", &swa, err)) ||
            (rc = get_f32_opt(f, arch, "attn_logit_softcapping", &cap_a, err)) ||
            (rc = get_f32_opt(f, arch, "final_logit_softcapping", &cap_f, err)))
            return rc;
        if (swa == 0)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: %s.attention.sliding_window = 0 (gemma2 "
                             "needs a window for its local layers)", f->path, arch);
        if (!isfinite(cap_a) || cap_a < 0)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: %s.attn_logit_softcapping = %g is not a "
                             "number >= 0", f->path, arch, cap_a);
        if (!isfinite(cap_f) || cap_f < 0)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: %s.final_logit_softcapping = %g is not a "
                             "number >= 0", f->path, arch, cap_f);
        ap->n_swa = (int)DUET_MIN(swa, (uint32_t)MAX_CTX);
        ap->attn_softcap = cap_a;
        ap->final_softcap = cap_f;
        ap->ffn_gelu = 1;
        ap->embd_scale = sqrtf((float)hp->n_embd);
        /* query_pre_attn_scalar is not in GGUF; llama.cpp derives it as Gemma 2 configs set
         * it: n_embd / n_head for the 27B (46 layers), head_dim for the others */
        if (hp->n_layer == 46) ap->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
    }
    return DUET_OK;
}

/* The architecture (into arch, 64 bytes) and the model's name (general.name, else the file
 * name). An unknown architecture is refused unless only the vocabulary is loaded. */
static int read_arch_and_name(duet_model *m, char *arch, duet_error *err) {
    const gguf_file *f = m->gguf;
    duet_hparams *hp = &m->hp;
    gguf_str s;
    int rc = gguf_get_str(f, "general.architecture", &s, err);
    if (rc) return rc;
    duet_printable(arch, 64, s.ptr, s.len);
    int ai = 0;
    while (ai < N_ARCHS && !(strlen(k_archs[ai].name) == s.len &&
                             !memcmp(k_archs[ai].name, s.ptr, s.len)))
        ai++;
    /* a vocabulary-only load needs no compute, so any architecture's vocabulary will do
     * (llama.cpp's vocab files are gpt2, falcon, starcoder2, ...) */
    if (ai == N_ARCHS && !m->vocab_only)
        return duet_fail(err, DUET_ERR_UNSUPPORTED,
                         "%s: general.architecture '%s' is not supported (supported: llama, "
                         "qwen2, qwen3, phi3, gemma2)", f->path, arch);
    m->ap.id = ai < N_ARCHS ? k_archs[ai].id : -1;
    m->ap.rope_neox = ai < N_ARCHS ? k_archs[ai].rope_neox : 0;
    snprintf(hp->arch, sizeof hp->arch, "%.31s", arch);

    gguf_str name = {0, NULL};
    if ((rc = gguf_get_str_opt(f, "general.name", &name, err))) return rc;
    if (name.ptr) {
        duet_printable(hp->name, sizeof hp->name, name.ptr, name.len);
    } else {
        const char *b = strrchr(m->path, '/');
        snprintf(hp->name, sizeof hp->name, "%.127s", b ? b + 1 : m->path);
    }
    return DUET_OK;
}

/* The norm epsilon and the RoPE numbers must be finite and positive. */
static int check_rope_norm(const char *path, const char *arch, float eps, float theta, float scale,
                           float attn_factor, uint32_t n_ctx_orig, duet_error *err) {
#define BAD(...) duet_fail(err, DUET_ERR_FORMAT, __VA_ARGS__)
    if (!isfinite(eps) || eps <= 0 || eps > 1)
        return BAD("%s: %s.attention.layer_norm_rms_epsilon = %g is out of range", path,
                   arch, eps);
    if (!isfinite(theta) || theta <= 0)
        return BAD("%s: %s.rope.freq_base = %g is not a positive number", path, arch, theta);
    if (!isfinite(scale) || scale <= 0)
        return BAD("%s: %s.rope.scaling.factor = %g is not a positive number", path, arch,
                   scale);
    if (!isfinite(attn_factor) || attn_factor <= 0)
        return BAD("%s: %s.rope.scaling.attn_factor = %g is not a positive number", path,
                   arch, attn_factor);
    if (n_ctx_orig == 0)
        return BAD("%s: %s.rope.scaling.original_context_length = 0", path, arch);
#undef BAD
    return DUET_OK;
}

/* RoPE scaling: none, or linear (positions divided by scale: *freq_scale = 1 / scale). */
static int read_rope_scaling_type(const gguf_file *f, const char *arch, float scale,
                                  float *freq_scale, duet_error *err) {
    int rc;
    char skey[160];
    snprintf(skey, sizeof skey, "%s.rope.scaling.type", arch);
    gguf_str stype = {0, NULL};
    if ((rc = gguf_get_str_opt(f, skey, &stype, err))) return rc;
    if (stype.ptr && !(stype.len == 4 && !memcmp(stype.ptr, "none", 4))) {
        if (stype.len == 6 && !memcmp(stype.ptr, "linear", 6)) {
            *freq_scale = 1.0f / scale;
        } else {
            char t[64];
            duet_printable(t, sizeof t, stype.ptr, stype.len);
            return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: %s = '%s' is not supported "
                             "(supported: none, linear)", f->path, skey, t);
        }
    }
    return DUET_OK;
}

static int read_hparams(duet_model *m, duet_error *err) {
    const gguf_file *f = m->gguf;
    duet_hparams *hp = &m->hp;
    char arch[64];
    int rc = read_arch_and_name(m, arch, err);
    if (rc) return rc;
    if (m->vocab_only) return DUET_OK;

    uint32_t n_ctx, n_embd, n_layer, n_ff, n_head, n_head_kv = 0, n_rot = 0, key_len = 0,
             val_len = 0;
    if ((rc = get_u32_req(f, arch, "context_length", &n_ctx, err)) ||
        (rc = get_u32_req(f, arch, "embedding_length", &n_embd, err)) ||
        (rc = get_u32_req(f, arch, "block_count", &n_layer, err)) ||
        (rc = get_u32_req(f, arch, "feed_forward_length", &n_ff, err)) ||
        (rc = get_u32_req(f, arch, "attention.head_count", &n_head, err)))
        return rc;
    n_head_kv = n_head;
    if ((rc = get_u32_opt(f, arch, "attention.head_count_kv", &n_head_kv, err)) ||
        (rc = get_u32_opt(f, arch, "rope.dimension_count", &n_rot, err)) ||
        (rc = get_u32_opt(f, arch, "attention.key_length", &key_len, err)) ||
        (rc = get_u32_opt(f, arch, "attention.value_length", &val_len, err)))
        return rc;
    float eps = 1e-5f, theta = 10000.0f, scale = 1.0f, attn_factor = 1.0f;
    uint32_t n_ctx_orig = n_ctx;
    if ((rc = get_f32_opt(f, arch, "attention.layer_norm_rms_epsilon", &eps, err)) ||
        (rc = get_f32_opt(f, arch, "rope.freq_base", &theta, err)) ||
        (rc = get_f32_opt(f, arch, "rope.scaling.factor", &scale, err)) ||
        (rc = get_f32_opt(f, arch, "rope.scaling.attn_factor", &attn_factor, err)) ||
        (rc = get_u32_opt(f, arch, "rope.scaling.original_context_length", &n_ctx_orig, err)))
        return rc;
#define BAD(...) duet_fail(err, DUET_ERR_FORMAT, __VA_ARGS__)
    if (n_layer == 0 || n_layer > MAX_LAYERS)
        return BAD("%s: %s.block_count = %u is out of range [1, %d]", f->path, arch, n_layer,
                   MAX_LAYERS);
    if (n_ctx == 0 || n_ctx > MAX_CTX)
        return BAD("%s: %s.context_length = %u is out of range [1, %d]", f->path, arch, n_ctx,
                   MAX_CTX);
    if (n_embd == 0 || n_embd > MAX_EMBD)
        return BAD("%s: %s.embedding_length = %u is out of range", f->path, arch, n_embd);
    if (n_ff == 0 || n_ff > 16 * MAX_EMBD)
        return BAD("%s: %s.feed_forward_length = %u is out of range", f->path, arch, n_ff);
    if (n_head == 0 || n_head > n_embd)
        return BAD("%s: %s.attention.head_count = %u is out of range", f->path, arch, n_head);
    /* the head size is key_length when given (qwen3, gemma2 differ from n_embd / n_head) */
    if (!key_len && n_embd % n_head)
        return BAD("%s: %s.embedding_length %u is not a multiple of attention.head_count %u",
                   f->path, arch, n_embd, n_head);
    if (n_head_kv == 0 || n_head % n_head_kv)
        return BAD("%s: %s.attention.head_count %u is not a multiple of head_count_kv %u",
                   f->path, arch, n_head, n_head_kv);
    /* 0 would silently mean "absent" below: a file that says 0 is broken */
    static const char *const nonzero[3] = {"attention.key_length", "attention.value_length",
                                           "rope.dimension_count"};
    for (int i = 0; i < 3; i++) {
        char key[160];
        snprintf(key, sizeof key, "%s.%s", arch, nonzero[i]);
        uint32_t v = i == 0 ? key_len : i == 1 ? val_len : n_rot;
        if (v == 0 && gguf_find(f, key)) return BAD("%s: %s = 0", f->path, key);
    }
    uint32_t head_dim = key_len ? key_len : n_embd / n_head;
    if (head_dim % 2 || head_dim > MAX_EMBD)
        return duet_fail(err, DUET_ERR_UNSUPPORTED,
                         "%s: %s.attention.key_length %u (head dim %u) is not supported (must be "
                         "even, at most %d)", f->path, arch, key_len, head_dim, MAX_EMBD);
    if (val_len && val_len != head_dim)
        return duet_fail(err, DUET_ERR_UNSUPPORTED,
                         "%s: %s.attention.value_length %u differs from the key length %u (not "
                         "supported)", f->path, arch, val_len, head_dim);
    if (!n_rot) n_rot = head_dim;
    if (n_rot > head_dim || n_rot % 2)
        return BAD("%s: %s.rope.dimension_count = %u is not an even number <= head dim %u",
                   f->path, arch, n_rot, head_dim);
    if ((rc = check_rope_norm(f->path, arch, eps, theta, scale, attn_factor, n_ctx_orig, err)))
        return rc;
    float freq_scale = 1.0f;
    if ((rc = read_rope_scaling_type(f, arch, scale, &freq_scale, err))) return rc;
#undef BAD
    hp->n_ctx_train = (int)n_ctx;
    hp->n_embd = (int)n_embd;
    hp->n_layer = (int)n_layer;
    hp->n_ff = (int)n_ff;
    hp->n_head = (int)n_head;
    hp->n_head_kv = (int)n_head_kv;
    hp->head_dim = (int)head_dim;
    hp->rms_eps = eps;
    hp->rope_theta = theta;
    m->ap.n_rot = (int)n_rot;
    m->ap.rope_mscale = attn_factor;
    m->n_ctx_orig = (int)DUET_MIN(n_ctx_orig, (uint32_t)MAX_CTX);
    if ((rc = read_arch_params(m, arch, err))) return rc;
    m->rope_inv_freq = calloc(n_rot / 2, sizeof(float));
    if (!m->rope_inv_freq) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", f->path);
    /* same float formula as llama2.c's run.c, so greedy output matches it bit for bit */
    for (uint32_t i = 0; i < n_rot / 2; i++)
        m->rope_inv_freq[i] = freq_scale * (1.0f / powf(theta, (float)(2 * i) / (float)n_rot));
    return DUET_OK;
}

/* Find a tensor and check its shape is exactly {n_in, n_out} (n_out 0: a 1-d vector). */
static int bind(duet_model *m, const char *name, int64_t n_in, int64_t n_out, int optional,
                mtensor *out, duet_error *err) {
    const gguf_tensor *t = gguf_find_tensor(m->gguf, name);
    memset(out, 0, sizeof *out);
    if (!t) {
        if (optional) return DUET_OK;
        return duet_fail(err, DUET_ERR_FORMAT, "%s: required tensor '%s' is missing",
                         m->gguf->path, name);
    }
    uint32_t want_dims = n_out ? 2 : 1;
    int ok = t->n_dims == want_dims && t->ne[0] == n_in && (n_out ? t->ne[1] == n_out : 1);
    for (uint32_t d = want_dims; d < GGUF_MAX_DIMS; d++) ok = ok && t->ne[d] == 1;
    if (!ok)
        return duet_fail(err, DUET_ERR_FORMAT,
                         "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld%s%lld]",
                         m->gguf->path, name, (long long)t->ne[0], (long long)t->ne[1],
                         (long long)t->ne[2], (long long)t->ne[3], (long long)n_in,
                         n_out ? ", " : "", (long long)(n_out ? n_out : 0));
    const dtype_traits *tr = dtype_info(t->type);
    if (!tr || !tr->supported || (n_out && !kernels_get(t->type)))
        return duet_fail(err, DUET_ERR_UNSUPPORTED,
                         "%s: tensor '%s' has type %s (%d), which duet cannot compute with yet",
                         m->gguf->path, name, tr ? tr->name : "unknown", t->type);
    out->data = m->weights ? (const uint8_t *)m->weights + t->offset : t->data;
    out->type = t->type;
    out->n_in = n_in;
    out->n_out = n_out ? n_out : 1;
    return DUET_OK;
}

/* A 1-d weight (norm, bias) as f32: a view when stored as f32, else a converted owned copy.
 * optional: *out = NULL when the tensor is absent. */
static int bind_vec(duet_model *m, const char *name, int64_t n, int optional, const float **out,
                    duet_error *err) {
    mtensor t;
    *out = NULL;
    int rc = bind(m, name, n, 0, optional, &t, err);
    if (rc || !t.data) return rc;
    if (t.type == DT_F32) { *out = t.data; return DUET_OK; }
    float *v = malloc((size_t)n * sizeof(float));
    float **list = realloc(m->owned_f32, (size_t)(m->n_owned_f32 + 1) * sizeof(float *));
    if (!v || !list) {
        free(v);
        if (list) m->owned_f32 = list;
        return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", m->gguf->path);
    }
    m->owned_f32 = list;
    quant_dequantize_row(t.type, t.data, v, n);
    m->owned_f32[m->n_owned_f32++] = v;
    *out = v;
    return DUET_OK;
}

/* Rows [r0, r0 + n) of a bound matrix, as a matrix of its own (fused tensors). */
static mtensor rows_of(const mtensor *t, int64_t r0, int64_t n) {
    mtensor v = *t;
    v.data = (const uint8_t *)t->data + (size_t)r0 * dtype_row_size(t->type, t->n_in);
    v.n_out = n;
    return v;
}

/* One block's tensors under llama.cpp's names, by architecture. */
static int bind_layer(duet_model *m, int l, duet_error *err) {
    const duet_hparams *hp = &m->hp;
    const arch_params *ap = &m->ap;
    layer_weights *L = &m->layers[l];
    int64_t E = hp->n_embd, F = hp->n_ff, hd = hp->head_dim;
    int64_t Q = (int64_t)hp->n_head * hd, KV = (int64_t)hp->n_head_kv * hd;
    char n[96];
    int rc;
#define NM(s) (snprintf(n, sizeof n, "blk.%d.%s", l, s), n)
    if ((rc = bind_vec(m, NM("attn_norm.weight"), E, 0, &L->attn_norm, err))) return rc;
    mtensor qkv = {0};
    if (ap->id == ARCH_PHI3 && (rc = bind(m, NM("attn_qkv.weight"), E, Q + 2 * KV, 1, &qkv, err)))
        return rc;
    if (qkv.data) { /* phi3: q, k, v rows one after another */
        L->wq = rows_of(&qkv, 0, Q);
        L->wk = rows_of(&qkv, Q, KV);
        L->wv = rows_of(&qkv, Q + KV, KV);
    } else if ((rc = bind(m, NM("attn_q.weight"), E, Q, 0, &L->wq, err)) ||
               (rc = bind(m, NM("attn_k.weight"), E, KV, 0, &L->wk, err)) ||
               (rc = bind(m, NM("attn_v.weight"), E, KV, 0, &L->wv, err))) {
        return rc;
    }
    /* biases: required by qwen2, optional elsewhere (as llama.cpp loads llama) */
    int nb = ap->id != ARCH_QWEN2;
    if ((rc = bind_vec(m, NM("attn_q.bias"), Q, nb, &L->bq, err)) ||
        (rc = bind_vec(m, NM("attn_k.bias"), KV, nb, &L->bk, err)) ||
        (rc = bind_vec(m, NM("attn_v.bias"), KV, nb, &L->bv, err)))
        return rc;
    if (ap->id == ARCH_QWEN3 &&
        ((rc = bind_vec(m, NM("attn_q_norm.weight"), hd, 0, &L->q_norm, err)) ||
         (rc = bind_vec(m, NM("attn_k_norm.weight"), hd, 0, &L->k_norm, err))))
        return rc;
    if ((rc = bind(m, NM("attn_output.weight"), Q, E, 0, &L->wo, err)) ||
        (rc = bind_vec(m, NM("ffn_norm.weight"), E, 0, &L->ffn_norm, err)))
        return rc;
    if (ap->id == ARCH_GEMMA2 &&
        ((rc = bind_vec(m, NM("post_attention_norm.weight"), E, 0, &L->attn_post_norm, err)) ||
         (rc = bind_vec(m, NM("post_ffw_norm.weight"), E, 0, &L->ffn_post_norm, err))))
        return rc;
    if (ap->id == ARCH_PHI3) { /* ffn_up holds the gate rows, then the up rows */
        mtensor up2;
        if ((rc = bind(m, NM("ffn_up.weight"), E, 2 * F, 0, &up2, err))) return rc;
        L->w_gate = rows_of(&up2, 0, F);
        L->w_up = rows_of(&up2, F, F);
    } else if ((rc = bind(m, NM("ffn_gate.weight"), E, F, 0, &L->w_gate, err)) ||
               (rc = bind(m, NM("ffn_up.weight"), E, F, 0, &L->w_up, err))) {
        return rc;
    }
    if ((rc = bind(m, NM("ffn_down.weight"), F, E, 0, &L->w_down, err))) return rc;
#undef NM
    /* gemma2 alternates local (sliding-window) and global layers, starting with local */
    L->swa = ap->n_swa > 0 && (ap->id == ARCH_PHI3 || (ap->id == ARCH_GEMMA2 && l % 2 == 0));
    return DUET_OK;
}

/* out[i] = inv[i] / factor[i] for the n_rot/2 factors in tensor `name` (out may be inv);
 * *found = 0 (and out untouched) when the file has no such tensor. */
static int freq_factors(duet_model *m, const char *name, const float *inv, float *out,
                        int *found, duet_error *err) {
    mtensor ff;
    int half = m->ap.n_rot / 2, rc;
    *found = 0;
    if ((rc = bind(m, name, half, 0, 1, &ff, err)) || !ff.data) return rc;
    float *div = malloc((size_t)half * sizeof(float));
    if (!div) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", m->path);
    quant_dequantize_row(ff.type, ff.data, div, half);
    for (int i = 0; i < half; i++) {
        if (!isfinite(div[i]) || div[i] <= 0) {
            float bad = div[i];
            free(div);
            return duet_fail(err, DUET_ERR_FORMAT, "%s: %s[%d] = %g is not a positive number",
                             m->path, name, i, bad);
        }
        out[i] = inv[i] / div[i];
    }
    free(div);
    *found = 1;
    return DUET_OK;
}

static int bind_all(duet_model *m, duet_error *err) {
    duet_hparams *hp = &m->hp;
    int64_t E = hp->n_embd, V = hp->n_vocab;
    int rc;
    if ((rc = bind(m, "token_embd.weight", E, V, 0, &m->tok_embd, err)) ||
        (rc = bind_vec(m, "output_norm.weight", E, 0, &m->output_norm, err)) ||
        /* gemma2 always computes logits with the embedding (llama.cpp ignores output.weight) */
        (m->ap.id != ARCH_GEMMA2 && (rc = bind(m, "output.weight", E, V, 1, &m->output, err))))
        return rc;
    hp->tied_output = m->output.data == NULL;
    if (hp->tied_output) m->output = m->tok_embd;
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", m->path);
    for (int l = 0; l < hp->n_layer; l++)
        if ((rc = bind_layer(m, l, err))) return rc;
    /* llama3-style per-frequency divisors */
    int found;
    if ((rc = freq_factors(m, "rope_freqs.weight", m->rope_inv_freq, m->rope_inv_freq, &found,
                           err)))
        return rc;
    /* Phi-3's LongRoPE: divisors for contexts up to original_context_length (short) and for
     * longer ones (long); fwd_init picks by the session's n_ctx, as llama.cpp does */
    static const char *lr[2] = {"rope_factors_long.weight", "rope_factors_short.weight"};
    int has_long = gguf_find_tensor(m->gguf, lr[0]) != NULL;
    int has_short = gguf_find_tensor(m->gguf, lr[1]) != NULL;
    if ((has_long || has_short) && m->ap.id != ARCH_PHI3)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: tensor '%s': LongRoPE factors are "
                         "only supported for phi3, not %s", m->path, lr[has_long ? 0 : 1],
                         hp->arch);
    if (has_long != has_short)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' is missing (LongRoPE needs "
                         "both factor tensors)", m->path, lr[has_long ? 1 : 0]);
    if (has_long) {
        size_t half = (size_t)m->ap.n_rot / 2;
        if (!(m->rope_inv_freq_long = malloc(half * sizeof(float))))
            return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", m->path);
        if ((rc = freq_factors(m, lr[0], m->rope_inv_freq, m->rope_inv_freq_long, &found, err)) ||
            (rc = freq_factors(m, lr[1], m->rope_inv_freq, m->rope_inv_freq, &found, err)))
            return rc;
    }
    /* totals for reports and the bandwidth figure of `duet bench` */
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const gguf_tensor *t = &m->gguf->tensors[i];
        hp->n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        hp->weight_bytes += t->nbytes;
    }
    hp->weight_type = m->layers[0].wq.type;
    return DUET_OK;
}

int model_tensor_finite(const char *path, const gguf_tensor *t, const void *data, duet_error *err) {
    float buf[256];
    const dtype_traits *tr = dtype_info(t->type);
    if (!tr || !tr->supported) return DUET_OK;
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    int64_t chunk = 256 - 256 % tr->blck;
    for (int64_t j = 0; j < n; j += chunk) {
        int64_t c = DUET_MIN(chunk, n - j);
        quant_dequantize_row(t->type, (const uint8_t *)data + (size_t)(j / tr->blck) * tr->type_size,
                             buf, c);
        for (int64_t k = 0; k < c; k++)
            if (!isfinite(buf[k]))
                return duet_fail(err, DUET_ERR_FORMAT, "%s: tensor '%s' element %lld is %g", path,
                                 t->name, (long long)(j + k), buf[k]);
    }
    return DUET_OK;
}

static int check_finite(duet_model *m, duet_error *err) {
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const gguf_tensor *t = &m->gguf->tensors[i];
        const uint8_t *p = m->weights ? (const uint8_t *)m->weights + t->offset : t->data;
        int rc = model_tensor_finite(m->path, t, p, err);
        if (rc) return rc;
    }
    return DUET_OK;
}

/* Interleave the rows of Q4_0/Q8_0 matrices in groups of 8 (quant.h's R8 layouts) where a
 * kernel for the layout exists: in place, in the private copy of the weights, once all
 * checks that read the file's layout are done. The token embedding keeps its rows (they are
 * looked up one at a time), and so does a tied output matrix. Phi-3's fused matrices are
 * repacked per bound part: the parts are disjoint row ranges. A matrix that cannot be
 * repacked (rows not a multiple of 8, no memory for one group) keeps its layout and works
 * as before. */
static void repack_one(mtensor *t) {
    int r8 = quant_r8_type(t->type);
    if (r8 >= 0 && kernels_get(r8) && t->n_out % 8 == 0 &&
        quant_repack_r8(t->type, (void *)t->data, t->n_in, t->n_out) == r8)
        t->type = r8;
}

/* Matrix i of the n_matrices a token's forward pass multiplies by: the output, then the
 * seven of each layer. */
int model_n_matrices(const duet_model *m) { return 1 + 7 * m->hp.n_layer; }

mtensor *model_matrix(duet_model *m, int i) {
    if (i == 0) return &m->output;
    layer_weights *L = &m->layers[(i - 1) / 7];
    mtensor *lt[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return lt[(i - 1) % 7];
}

static void repack(duet_model *m) {
    for (int i = 0; i < model_n_matrices(m); i++)
        if (model_matrix(m, i)->data != m->tok_embd.data) repack_one(model_matrix(m, i));
}

/* Copy the data section into anonymous memory (huge pages where the kernel allows). */
static int copy_weights(duet_model *m, duet_error *err) {
    size_t n = (size_t)(m->gguf->size - m->gguf->data_offset);
    if (n == 0) return DUET_OK;
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return duet_fail(err, DUET_ERR_NOMEM, "%s: cannot allocate %zu bytes for weights",
                         m->path, n);
#ifdef MADV_HUGEPAGE
    madvise(p, n, MADV_HUGEPAGE);
#endif
    int fd = open(m->path, O_RDONLY);
    if (fd < 0) {
        munmap(p, n);
        return duet_fail(err, DUET_ERR_IO, "%s: %s", m->path, strerror(errno));
    }
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)p + done, n - done, (off_t)(m->gguf->data_offset + done));
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            close(fd);
            munmap(p, n);
            return duet_fail(err, DUET_ERR_IO, "%s: reading weights: %s", m->path, strerror(e));
        }
        done += (size_t)r;
    }
    close(fd);
    m->weights = p;
    m->weights_size = n;
    return DUET_OK;
}

int duet_model_load(const char *path, const duet_model_params *params, duet_model **out,
                    duet_error *err) {
    duet_model_params def = {0};
    if (!params) params = &def;
    *out = NULL;
    duet_model *m = calloc(1, sizeof *m);
    if (!m) return duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", path);
    snprintf(m->path, sizeof m->path, "%s", path);
    m->vocab_only = params->vocab_only;
    int rc = gguf_open(path, &m->gguf, err);
    if (!rc) rc = read_hparams(m, err);
    if (!rc) rc = tokenizer_load(m->gguf, &m->tok, err);
    if (!rc) m->hp.n_vocab = tokenizer_n_vocab(m->tok);
    if (!rc && !m->vocab_only) {
        if (!params->use_mmap) rc = copy_weights(m, err);
        if (!rc) rc = bind_all(m, err);
        if (!rc && params->check_tensors) rc = check_finite(m, err);
        if (!rc && m->weights && !params->no_repack) repack(m);
        if (!rc && !(m->tp = tp_new(params->n_threads)))
            rc = duet_fail(err, DUET_ERR_NOMEM, "%s: cannot start the thread pool", path);
    }
    if (rc) {
        duet_model_free(m);
        return rc;
    }
    *out = m;
    return DUET_OK;
}

void duet_model_free(duet_model *m) {
    if (!m) return;
    lora_model_free(m);
    tp_free(m->tp);
    tokenizer_free(m->tok);
    gguf_close(m->gguf);
    if (m->weights) munmap(m->weights, m->weights_size);
    for (int i = 0; i < m->n_owned_f32; i++) free(m->owned_f32[i]);
    free(m->owned_f32);
    free(m->layers);
    free(m->rope_inv_freq);
    free(m->rope_inv_freq_long);
    free(m);
}

const duet_hparams *duet_model_hparams(const duet_model *m) { return &m->hp; }
const char *duet_model_path(const duet_model *m) { return m->path; }

static uint64_t mat_bytes(const mtensor *t) {
    return t->data ? (uint64_t)dtype_row_size(t->type, t->n_in) * (uint64_t)t->n_out : 0;
}

double duet_model_flops_per_token(const duet_model *m, int n_kv) {
    if (m->vocab_only) return 0;
    const duet_hparams *hp = &m->hp;
    double f = 4.0 * hp->n_layer * hp->n_head * hp->head_dim * (double)n_kv;
    for (int i = 0; i < model_n_matrices(m); i++) {
        const mtensor *t = model_matrix((duet_model *)m, i);
        if (t->data) f += 2.0 * (double)t->n_in * (double)t->n_out;
    }
    return f;
}

uint64_t duet_model_bytes_per_token(const duet_model *m) {
    if (m->vocab_only) return 0;
    uint64_t b = 0;
    for (int i = 0; i < model_n_matrices(m); i++) b += mat_bytes(model_matrix((duet_model *)m, i));
    return b;
}

/* ---- tokenizer pass-throughs ----------------------------------------------------------- */
int32_t duet_token_bos(const duet_model *m) { return tokenizer_bos(m->tok); }
int32_t duet_token_eos(const duet_model *m) { return tokenizer_eos(m->tok); }
int duet_token_is_eog(const duet_model *m, int32_t t) { return tokenizer_is_eog(m->tok, t); }
const char *duet_token_text(const duet_model *m, int32_t t) { return tokenizer_text(m->tok, t); }

int duet_tokenize(const duet_model *m, const char *text, size_t len, int add_bos,
                  int parse_special, int32_t *out, int cap, duet_error *err) {
    return tokenizer_encode(m->tok, text, len, add_bos, parse_special, out, cap, err);
}

int duet_tokenize_masked(const duet_model *m, const char *text, size_t len, int add_bos,
                         const unsigned char *plain, int32_t *out, int cap, duet_error *err) {
    return tokenizer_encode_masked(m->tok, text, len, add_bos, 1, plain, out, cap, err);
}

int model_piece_append(const duet_model *m, int32_t prev, int32_t token, duet_buf *out) {
    /* first into the room the buffer has (most pieces fit); a longer one reports its length:
     * grow to it and ask again */
    if (duet_buf_reserve(out, 0)) return DUET_ERR_NOMEM;
    size_t room = DUET_MIN(out->cap - out->n - 1, (size_t)INT_MAX);
    int len = tokenizer_piece(m->tok, prev, token, out->p + out->n, (int)room);
    if (len <= 0) return DUET_OK; /* an id without text (a control token) adds nothing */
    if ((size_t)len > room) {
        if (duet_buf_reserve(out, (size_t)len)) return DUET_ERR_NOMEM;
        len = tokenizer_piece(m->tok, prev, token, out->p + out->n, len);
    }
    out->n += (size_t)len;
    out->p[out->n] = 0;
    return DUET_OK;
}

int duet_token_to_piece(const duet_model *m, int32_t prev, int32_t token, char *buf, int cap) {
    return tokenizer_piece(m->tok, prev, token, buf, cap);
}

uint64_t duet_model_vocab_hash(const duet_model *m) { return tokenizer_hash(m->tok); }
int duet_token_type(const duet_model *m, int32_t t) { return tokenizer_type(m->tok, t); }
