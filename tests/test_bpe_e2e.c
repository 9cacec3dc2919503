/* test_bpe_e2e.c: byte-level BPE models through the whole product. `duet make-model
 * --vocab-from` gives random-weight qwen2/qwen3 models the real gpt-2 and starcoder
 * vocabularies of ../shared/tokenizers/vocab; then run, tokenize, perplexity, the collaborative
 * decoder and score are checked against oracles that do not come from the code under test:
 * the vocabulary file itself, llama.cpp's .inp/.out vectors, the prompt text, ln(n_vocab) for a
 * near-uniform model, and the expert decoding alone. Needs DUET_BIN (set by `make test`). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "format/gguf.h"
#include "learn/scores.h"
#include "collab/vocab_bridge.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"
#include "tok_vectors.h"

#define GPT2 "ggml-vocab-gpt-2.gguf"
#define STARCODER "ggml-vocab-starcoder.gguf"

static const char *duet_bin(void) {
    const char *b = getenv("DUET_BIN");
    return b && access(b, X_OK) == 0 ? b : NULL;
}

static char g_err[16384]; /* stderr of the last duet() */

/* Run `duet ARGS` (printf-style) through the shell: stdout into out (NUL-terminated), stderr
 * into g_err; the exit status (-1 when it did not exit). */
__attribute__((format(printf, 3, 4)))
static int duet(char *out, size_t cap, const char *fmt, ...) {
    char args[4096], cmd[5200], errp[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(errp, sizeof errp, "%s/bpe-e2e-stderr.txt", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s 2>'%s' </dev/null", duet_bin(), args, errp);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, cap - 1, p) : 0;
    out[n] = 0;
    int st = p ? pclose(p) : -1;
    char *e = fixture_read_file(errp, NULL);
    snprintf(g_err, sizeof g_err, "%s", e ? e : "");
    free(e);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A random-weight model (n_embd 64, 4 heads / 2 kv, n_ctx 256) with the vocabulary of
 * ../shared/tokenizers/vocab/VOCAB, written once per run by `duet make-model --vocab-from`.
 * NULL when the vocabulary or DUET_BIN is absent (the caller skips) or make-model failed
 * (test failed). */
static const char *bpe_model(const char *vocab, const char *arch, int n_layer, int n_ff,
                             int tied, uint64_t seed) {
    static char path[8][600];
    static int k;
    const char *v = tv_vocab_path(vocab);
    if (!v || !duet_bin()) return NULL; /* NEED skips: no vocabulary or no binary to run */
    char *out = path[k++ & 7];
    snprintf(out, sizeof path[0], "%s/bpe-%s-%s-%d-%d-%d-%llu.gguf", test_tmpdir(), vocab, arch,
             n_layer, n_ff, tied, (unsigned long long)seed);
    if (access(out, R_OK) == 0) return out;
    char o[256];
    if (duet(o, sizeof o, "make-model --arch %s --n-embd 64 --n-layer %d --n-head 4 "
             "--n-head-kv 2 --n-ff %d --n-ctx 256 %s --seed %llu --vocab-from '%s' -o '%s'",
             arch, n_layer, n_ff, tied ? "--tied" : "", (unsigned long long)seed, v, out)) {
        test_fail_at(__FILE__, __LINE__, "make-model --vocab-from %s: %s", vocab, g_err);
        return NULL;
    }
    return out;
}

/* The models of these tests: a qwen2 base and a larger qwen2 expert (another seed, 3 layers,
 * a wider FFN, tied output) on gpt-2's vocabulary, and a qwen3 model on starcoder's. */
static const char *gpt2_base(void) { return bpe_model(GPT2, "qwen2", 2, 96, 0, 1); }
static const char *gpt2_expert(void) { return bpe_model(GPT2, "qwen2", 3, 128, 1, 2); }
static const char *starcoder_model(void) { return bpe_model(STARCODER, "qwen3", 2, 96, 0, 3); }

#define NEED(cond)                                                                            \
    do {                                                                                      \
        if (!duet_bin()) SKIP("DUET_BIN not set (run through make test)");                    \
        if (!tv_vocab_path(GPT2) || !tv_vocab_path(STARCODER))                                \
            SKIP("../shared/tokenizers/vocab (gpt-2, starcoder) not present");                \
        REQUIRE(cond);                                                                        \
    } while (0)

static size_t elem_size(gguf_type t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 4;
    }
}

/* 1 when two metadata values are the same type and bytes. */
static int kv_equal(const gguf_kv *a, const gguf_kv *b) {
    if (a->type != b->type) return 0;
    if (a->type == GGUF_TYPE_STRING)
        return a->str.len == b->str.len && !memcmp(a->str.ptr, b->str.ptr, a->str.len);
    if (a->type != GGUF_TYPE_ARRAY) return a->v.u64 == b->v.u64;
    if (a->arr_type != b->arr_type || a->arr_n != b->arr_n) return 0;
    if (a->arr_type != GGUF_TYPE_STRING)
        return !memcmp(a->arr_data, b->arr_data, a->arr_n * elem_size(a->arr_type));
    for (uint64_t i = 0; i < a->arr_n; i++)
        if (a->arr_str[i].len != b->arr_str[i].len ||
            memcmp(a->arr_str[i].ptr, b->arr_str[i].ptr, a->arr_str[i].len))
            return 0;
    return 1;
}

/* The model carries exactly the vocabulary file's tokenizer.* keys, byte for byte. */
static void check_same_tokenizer_keys(const char *model, const char *vocab, int n_vocab) {
    gguf_file *m = NULL, *v = NULL;
    duet_error err = {0};
    REQUIRE(!gguf_open(model, &m, &err) && !gguf_open(vocab, &v, &err));
    int copied = 0;
    for (uint64_t i = 0; i < v->n_kv; i++) {
        if (strncmp(v->kv[i].key, "tokenizer.", 10)) continue;
        const gguf_kv *got = gguf_find(m, v->kv[i].key);
        CHECKF(got && kv_equal(got, &v->kv[i]), "%s: key %s differs from %s", model,
               v->kv[i].key, vocab);
        copied++;
    }
    for (uint64_t i = 0; i < m->n_kv; i++)
        CHECKF(strncmp(m->kv[i].key, "tokenizer.", 10) || gguf_find(v, m->kv[i].key),
               "%s: key %s is not in %s", model, m->kv[i].key, vocab);
    CHECKF(copied >= 6, "only %d tokenizer keys", copied);
    const gguf_tensor *e = gguf_find_tensor(m, "token_embd.weight");
    CHECK(e && e->ne[1] == n_vocab);
    gguf_close(m);
    gguf_close(v);
}

static duet_model *load_vocab_only(const char *path) {
    duet_model_params mp = {.vocab_only = 1};
    duet_model *m = NULL;
    duet_error err = {0};
    if (duet_model_load(path, &mp, &m, &err)) test_fail_at(__FILE__, __LINE__, "%s", err.msg);
    return m;
}

TEST(bpe_e2e_make_model_copies_the_vocabulary) {
    const char *b = gpt2_base(), *s = starcoder_model();
    NEED(b && s);
    check_same_tokenizer_keys(b, tv_vocab_path(GPT2), 50257);
    check_same_tokenizer_keys(s, tv_vocab_path(STARCODER), 49152);
    /* the vocabulary duet sees is the file's own (same text and types of every token) */
    duet_model *mv = load_vocab_only(tv_vocab_path(GPT2)), *mb = load_vocab_only(b);
    REQUIRE(mv && mb);
    CHECK(duet_model_vocab_hash(mv) == duet_model_vocab_hash(mb));
    duet_model_free(mv);
    duet_model_free(mb);
    /* --n-vocab equal to the file's is the same as leaving it out: the same bytes */
    char out[4096], again[600];
    const char *v = tv_vocab_path(GPT2);
    snprintf(again, sizeof again, "%s/bpe-again.gguf", test_tmpdir());
    CHECK_EQ_INT(duet(out, sizeof out, "make-model --arch qwen2 --n-embd 64 --n-layer 2 "
                      "--n-head 4 --n-head-kv 2 --n-ff 96 --n-ctx 256 --seed 1 --n-vocab 50257 "
                      "--vocab-from '%s' -o '%s'", v, again), 0);
    size_t na = 0, nb = 0;
    char *fa = fixture_read_file(again, &na), *fb = fixture_read_file(b, &nb);
    CHECKF(fa && fb && na == nb && !memcmp(fa, fb, na), "%s and %s differ", again, b);
    free(fa);
    free(fb);
    unlink(again);
    /* a different --n-vocab: one line naming both sizes and the file, nothing written */
    CHECK_EQ_INT(duet(out, sizeof out, "make-model --arch qwen2 --n-embd 64 --n-layer 2 "
                      "--n-head 4 --n-ff 96 --n-vocab 300 --vocab-from '%s' -o '%s'", v, again),
                 1);
    CHECKF(strstr(g_err, "300") && strstr(g_err, "50257") && strstr(g_err, GPT2) &&
           strchr(g_err, '\n') == g_err + strlen(g_err) - 1, "stderr: %s", g_err);
    CHECK(access(again, F_OK) != 0);
    /* a file that is not a vocabulary, a missing file, no vocabulary at all */
    char novocab[600];
    snprintf(novocab, sizeof novocab, "%s/bpe-novocab.gguf", test_tmpdir());
    gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.architecture", "llama");
    duet_error err = {0};
    REQUIRE(!gguf_write(w, novocab, &err));
    gguf_writer_free(w);
    CHECK_EQ_INT(duet(out, sizeof out, "make-model --n-embd 64 --n-layer 1 --n-head 4 --n-ff 96 "
                      "--vocab-from '%s' -o '%s'", novocab, again), 1);
    CHECKF(strstr(g_err, "bpe-novocab.gguf") && strstr(g_err, "tokenizer.ggml.tokens"),
           "stderr: %s", g_err);
    CHECK_EQ_INT(duet(out, sizeof out, "make-model --n-embd 64 --n-layer 1 --n-head 4 --n-ff 96 "
                      "--vocab-from '%s/nosuch.gguf' -o '%s'", test_tmpdir(), again), 1);
    CHECKF(strstr(g_err, "nosuch.gguf"), "stderr: %s", g_err);
    CHECK_EQ_INT(duet(out, sizeof out, "make-model --n-embd 64 --n-layer 1 --n-head 4 --n-ff 96 "
                      "-o '%s'", again), 2);
    CHECKF(strstr(g_err, "--vocab-from"), "stderr: %s", g_err);
    CHECK(access(again, F_OK) != 0);
}

TEST(bpe_e2e_run_prints_the_prompt_back) {
    const char *models[2] = {gpt2_base(), starcoder_model()};
    NEED(models[0] && models[1]);
    /* plain, a leading space, Cyrillic and an emoji (multi-byte pieces), runs of whitespace */
    static const char *const prompts[] = {"Hello world", " Hello world",
                                          "нещо на Български 🦙", "  a\n\tb  c"};
    static char out[8192];
    for (int m = 0; m < 2; m++)
        for (size_t i = 0; i < sizeof prompts / sizeof *prompts; i++) {
            const char *p = prompts[i];
            CHECK_EQ_INT(duet(out, sizeof out, "run -m '%s' -p '%s' -n 8 --temp 0 --quiet",
                              models[m], p), 0);
            CHECKF(!strncmp(out, p, strlen(p)) && strlen(out) > strlen(p) + 1,
                   "%s: prompt \"%s\" came back as \"%s\" (%s)", models[m], p, out, g_err);
        }
}

/* Ids printed by `duet tokenize --ids` ("[1, 2, 3]"). */
static int parse_ids(const char *s, int32_t *ids, int cap) {
    int n = 0;
    for (char *end; *s; s++) {
        if (*s < '0' || *s > '9') continue;
        long x = strtol(s, &end, 10);
        if (n < cap) ids[n] = (int32_t)x;
        n++;
        s = end - 1;
    }
    return n;
}

/* Write vector i of VOCAB's .inp into a file; its expected id count (ids filled) or -1. */
static int vector_file(const char *vocab, int i, char *path, size_t cap, int32_t *ids,
                       int idcap, size_t *len) {
    char *text = NULL;
    int n = tv_vector(tv_vocab_path(vocab), i, &text, len, ids, idcap);
    snprintf(path, cap, "%s/bpe-vec-%s-%d.txt", test_tmpdir(), vocab, i);
    FILE *f = text ? fopen(path, "wb") : NULL;
    if (!f || fwrite(text, 1, *len, f) != *len) n = -1;
    if (f) fclose(f);
    free(text);
    return n;
}

TEST(bpe_e2e_tokenize_matches_the_vocabulary_vectors) {
    const char *models[2] = {gpt2_base(), starcoder_model()}, *vocabs[2] = {GPT2, STARCODER};
    NEED(models[0] && models[1]);
    /* "ied 4 ½ months", Cyrillic, whitespace and newlines, the long mixed one */
    static const int vec[] = {0, 20, 28, 45};
    static char out[16384];
    for (int m = 0; m < 2; m++)
        for (size_t i = 0; i < sizeof vec / sizeof *vec; i++) {
            int32_t want[512], got[512];
            char path[700];
            size_t len;
            int nw = vector_file(vocabs[m], vec[i], path, sizeof path, want, 512, &len);
            REQUIRE(nw > 0 && nw <= 512);
            CHECK_EQ_INT(duet(out, sizeof out, "tokenize -m '%s' -f '%s' --ids --no-bos",
                              models[m], path), 0);
            int ng = parse_ids(out, got, 512);
            CHECKF(tv_ids_eq(got, ng, want, nw), "%s: vector %d: %d ids, want %d (%s)",
                   vocabs[m], vec[i], ng, nw, g_err);
        }
}

/* The value after "NAME " on its own line of s; NAN when absent. */
static double field(const char *s, const char *name) {
    size_t n = strlen(name);
    for (const char *p = s; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

TEST(bpe_e2e_perplexity_scores_every_token) {
    const char *models[2] = {gpt2_base(), starcoder_model()}, *vocabs[2] = {GPT2, STARCODER};
    const double n_vocab[2] = {50257, 49152};
    NEED(models[0] && models[1]);
    static char out[4096];
    for (int m = 0; m < 2; m++) {
        int32_t ids[512];
        char path[700];
        size_t len;
        int nw = vector_file(vocabs[m], 45, path, sizeof path, ids, 512, &len);
        REQUIRE(nw > 100);
        /* windows of 63 text tokens after BOS: several windows, every token scored once */
        CHECK_EQ_INT(duet(out, sizeof out, "perplexity -m '%s' -f '%s' -c 64 -t 1 --quiet",
                          models[m], path), 0);
        CHECKF(field(out, "tokens") == nw, "%s: %s, want %d tokens", vocabs[m], out, nw);
        CHECK(field(out, "bytes") == (double)len);
        /* weights N(0, 0.02) on n_embd 64 leave the logits nearly flat: about ln(n_vocab) */
        double nll = field(out, "nll_per_token");
        CHECK_NEAR(nll, log(n_vocab[m]), 0.3);
        CHECK_NEAR(field(out, "perplexity") / exp(nll), 1, 1e-4);
        CHECK_NEAR(field(out, "nll_per_byte") * len, nll * nw, 1e-3 * nw);
    }
}

/* The number after TEXT in s (-1 when absent). */
static long number_after(const char *s, const char *text) {
    const char *p = strstr(s, text);
    return p ? strtol(p + strlen(text), NULL, 10) : -1;
}

TEST(bpe_e2e_collab_on_a_shared_bpe_vocabulary) {
    const char *b = gpt2_base(), *e = gpt2_expert();
    NEED(b && e);
    static char base_out[8192], exp_out[8192], out[8192], lazy[8192], eager[8192];
    const char *gen = "-p 'Hello world' -n 16 --temp 0 --quiet";
    CHECK_EQ_INT(duet(base_out, sizeof base_out, "run -m '%s' %s", b, gen), 0);
    CHECK_EQ_INT(duet(exp_out, sizeof exp_out, "run -m '%s' %s", e, gen), 0);
    CHECKF(strcmp(base_out, exp_out) != 0, "base and expert agree: the check below is void");
    /* always deferring is the expert alone, byte for byte, whatever the sync */
    CHECK_EQ_INT(duet(out, sizeof out, "run -m '%s' --expert '%s' --policy expert %s", b, e, gen),
                 0);
    CHECK_STR(out, exp_out);
    CHECK_EQ_INT(duet(out, sizeof out, "run -m '%s' --expert '%s' --policy expert "
                      "--expert-sync eager %s", b, e, gen), 0);
    CHECK_STR(out, exp_out);
    /* deferring some tokens: lazy catch-up and eager sync choose the same tokens, and lazy
     * evaluates fewer expert tokens (so the two paths really differ) */
    const char *mix = "--policy random --random-rate 0.5 -s 5 -p 'Hello world' -n 24 --temp 0";
    CHECK_EQ_INT(duet(lazy, sizeof lazy, "run -m '%s' --expert '%s' %s", b, e, mix), 0);
    long lazy_eval = number_after(g_err, "expert tokens evaluated ");
    long deferred = number_after(g_err, "deferred ");
    CHECK_EQ_INT(duet(eager, sizeof eager, "run -m '%s' --expert '%s' %s --expert-sync eager", b,
                      e, mix), 0);
    long eager_eval = number_after(g_err, "expert tokens evaluated ");
    CHECK_STR(lazy, eager);
    CHECKF(deferred > 0 && deferred < 24, "deferred %ld of 24", deferred);
    CHECKF(lazy_eval > 0 && lazy_eval < eager_eval, "expert evaluated %ld (lazy), %ld (eager)",
           lazy_eval, eager_eval);
    CHECK_EQ_INT(eager_eval, 2 + 24); /* "Hello", " world", then every emitted token */
    /* another byte-level vocabulary lacks some of gpt-2's byte tokens: refused by name */
    CHECK_EQ_INT(duet(out, sizeof out, "run -m '%s' --expert '%s' --policy expert %s", b,
                      starcoder_model(), gen), 1);
    CHECKF(strstr(g_err, "no match"), "stderr: %s", g_err);
}

TEST(bpe_e2e_score_through_the_vocab_bridge) {
    const char *b = gpt2_base(), *e = gpt2_expert();
    NEED(b && e);
    char data[600], sb[600], se[600], sx[600], out[4096];
    snprintf(data, sizeof data, "%s/bpe-score.jsonl", test_tmpdir());
    snprintf(sb, sizeof sb, "%s/bpe-base.scores", test_tmpdir());
    snprintf(se, sizeof se, "%s/bpe-expert.scores", test_tmpdir());
    snprintf(sx, sizeof sx, "%s/bpe-expert-bridged.scores", test_tmpdir());
    FILE *f = fopen(data, "w");
    REQUIRE(f);
    fputs("{\"prompt\": \"What is 2+2?\", \"response\": \" It is 4, of course.\"}\n"
          "{\"prompt\": \"Name a colour: \", \"response\": \"Синий, like the sky 🦙.\"}\n", f);
    fclose(f);
    CHECK_EQ_INT(duet(out, sizeof out, "score -m '%s' -d '%s' -o '%s' --quiet -t 1", b, data, sb),
                 0);
    CHECK_EQ_INT(duet(out, sizeof out, "score -m '%s' -d '%s' -o '%s' --no-hidden --quiet -t 1",
                      e, data, se), 0);
    CHECK_EQ_INT(duet(out, sizeof out, "score -m '%s' --tokenizer-of '%s' -d '%s' -o '%s' "
                      "--no-hidden --quiet -t 1", e, b, data, sx), 0);
    duet_scores *fb = NULL, *fe = NULL, *fx = NULL;
    duet_error err = {0};
    REQUIRE(!duet_scores_open(sb, &fb, &err) && !duet_scores_open(se, &fe, &err) && !duet_scores_open(sx, &fx, &err));
    const duet_scores_header *hb = duet_scores_get_header(fb), *he = duet_scores_get_header(fe), *hx = duet_scores_get_header(fx);
    CHECK(hb->n_seq == 2 && he->n_seq == 2 && hx->n_seq == 2);
    CHECK(hb->n_tok == hx->n_tok && he->n_tok == hx->n_tok && hx->n_tok > 10);
    CHECK(hb->ids_vocab_hash == hx->ids_vocab_hash);
    for (uint64_t i = 0; i < 2 && !test_failed_now(); i++) {
        const duet_scores_tok *tb = duet_scores_seq_toks(fb, i), *te = duet_scores_seq_toks(fe, i),
                      *tx = duet_scores_seq_toks(fx, i);
        for (uint32_t t = 0; t < duet_scores_seqs(fx)[i].n_tok; t++) {
            /* the base's tokens are the expert's (identical vocabularies: an identity bridge),
             * so scoring on them is scoring alone */
            CHECK_EQ_INT(tb[t].gold, tx[t].gold);
            CHECK_EQ_INT(te[t].gold, tx[t].gold);
            CHECK(te[t].lp == tx[t].lp && te[t].entropy == tx[t].entropy);
            /* nearly flat logits: entropy just under ln(50257), lp near -ln(50257) */
            CHECK(tx[t].entropy <= log(50257.0) + 1e-3 && tx[t].entropy > log(50257.0) - 0.1);
            CHECK_NEAR(tx[t].lp, -log(50257.0), 0.5);
            CHECK(tx[t].lp <= tx[t].maxlp);
        }
    }
    duet_scores_close(fb);
    duet_scores_close(fe);
    duet_scores_close(fx);
    /* the bridge the decoder and score build: identity, not bridged */
    duet_model *mb = fixture_load(b), *me = fixture_load(e);
    REQUIRE(mb && me);
    int32_t *map = NULL;
    int bridged = -1;
    CHECK(!vocab_bridge_build(mb, me, "expert", &map, &bridged, &err));
    CHECK_EQ_INT(bridged, 0);
    int ident = 1;
    for (int i = 0; map && i < 50257; i++) ident &= map[i] == i;
    CHECK(map && ident);
    free(map);
    duet_model_free(mb);
    duet_model_free(me);
    /* scoring on the tokens of a vocabulary the model lacks: refused, naming the token */
    CHECK_EQ_INT(duet(out, sizeof out, "score -m '%s' --tokenizer-of '%s' -d '%s' -o '%s' "
                      "--no-hidden --quiet", starcoder_model(), b, data, sx), 1);
    CHECKF(strstr(g_err, "incompatible vocabularies") && strstr(g_err, "no match"),
           "stderr: %s", g_err);
}
