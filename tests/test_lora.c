/* test_lora.c: LoRA adapters in llama.cpp's GGUF format, applied unmerged. The oracle is the
 * numpy reference (tests/oracle/gguf_ref.py --lora), which merges the adapter into the
 * dequantised weights in float64 from the format's definition, not from duet's code. Bad
 * adapters (another architecture, another shape, a missing half, NaN, rank 0) are refused
 * with the file, tensor and value named. (A rank of 0 is a dimension of 0, which the GGUF
 * reader refuses for every file: tests/test_gguf.c.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/quant.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

static const int32_t k_toks[] = {1, 45, 300, 7, 99, 512, 3, 250};
#define NT ((int)(sizeof k_toks / sizeof *k_toks))

/* duet's logits of k_toks with the adapters attached (scales), and numpy's. */
static double lora_nmse(const char *base, const char *const *ads, const float *scales, int n_ad) {
    duet_model *m = fixture_load(base);
    if (!m) return -1;
    duet_lora *a[4] = {0};
    duet_error err = {0};
    for (int i = 0; i < n_ad; i++) {
        if (duet_lora_load(ads[i], m, &a[i], &err) || duet_model_add_lora(m, a[i], scales[i], &err)) {
            test_fail_at(__FILE__, __LINE__, "%s: %s", ads[i], err.msg);
            return -1;
        }
    }
    int V = duet_model_hparams(m)->n_vocab;
    duet_session *s = NULL;
    float *got = malloc(sizeof(float) * (size_t)NT * V);
    double *ref = malloc(sizeof(double) * (size_t)NT * V);
    float *reff = malloc(sizeof(float) * (size_t)NT * V);
    double e = -1;
    if (!duet_session_new(m, NULL, &s, &err) && !duet_session_eval(s, k_toks, NT, 1, &err)) {
        for (int i = 0; i < NT; i++) memcpy(got + (size_t)i * V, duet_session_logits(s, i), sizeof(float) * V);
        char cmd[2048];
        int o = snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/oracle/gguf_ref.py '%s'", base);
        for (int i = 0; i < n_ad; i++)
            o += snprintf(cmd + o, sizeof cmd - (size_t)o, " --lora '%s' %g", ads[i], scales[i]);
        for (int i = 0; i < NT; i++) o += snprintf(cmd + o, sizeof cmd - (size_t)o, " %d", k_toks[i]);
        FILE *p = popen(cmd, "r");
        int n = 0;
        while (p && n < NT * V && fscanf(p, "%lf", &ref[n]) == 1) n++;
        int st = p ? pclose(p) : -1;
        if (n == NT * V && st == 0) {
            for (int i = 0; i < NT * V; i++) reff[i] = (float)ref[i];
            e = test_nmse(got, reff, (long)NT * V);
        } else test_fail_at(__FILE__, __LINE__, "oracle: %d numbers, status %d: %s", n, st, cmd);
    } else test_fail_at(__FILE__, __LINE__, "%s", err.msg);
    duet_session_free(s);
    duet_model_free(m);
    for (int i = 0; i < n_ad; i++) duet_lora_free(a[i]);
    free(got), free(ref), free(reff);
    return e;
}

static int have_numpy(void) { return system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") == 0; }

/* Unmerged adapters equal the merged float64 reference: one adapter (F32, alpha 8), and two
 * stacked with their own scales (the second F16 with alpha 0: the scale alone). On an F32
 * base: NMSE < 1e-6. On Q8_0 and Q4_0 bases the reference dequantises the same blocks, but
 * duet (like llama.cpp) rounds the activations to 8 bits for quantised dot products, which
 * alone costs the bare base ~1e-5 here; there the adapter may add no more than that base
 * error again (bound: twice the bare base's NMSE, plus 1e-6). */
TEST(lora_unmerged_equals_merged_reference) {
    if (!have_numpy()) SKIP("python3-numpy missing (make deps installs it)");
    const char *a32 = fixture_lora("lora-a32.gguf", 4, 8.0f, DT_F32, LORA_GOOD);
    const char *a16 = fixture_lora("lora-a16.gguf", 8, 0.0f, DT_F16, LORA_GOOD);
    REQUIRE(a32 && a16);
    const int types[] = {DT_F32, DT_Q8_0, DT_Q4_0};
    for (int b = 0; b < 3; b++) {
        const char *base = fixture_random(types[b], 5, 0);
        const char *one[1] = {a32}, *two[2] = {a32, a16};
        float s1[1] = {0.75f}, s2[2] = {0.5f, 0.25f};
        double e0 = lora_nmse(base, NULL, NULL, 0);
        double e1 = lora_nmse(base, one, s1, 1), e2 = lora_nmse(base, two, s2, 2);
        double tol = types[b] == DT_F32 ? 1e-6 : 2 * e0 + 1e-6;
        CHECKF(e0 >= 0 && e1 >= 0 && e1 < tol && e2 >= 0 && e2 < tol,
               "base type %d: NMSE against the merged reference %g (one adapter), %g (two); "
               "bare base %g, bound %g", types[b], e1, e2, e0, tol);
        if (getenv("DUET_TEST_VERBOSE"))
            printf("  type %d: NMSE bare %.3g, one %.3g, two %.3g\n", types[b], e0, e1, e2);
    }
}

/* The adapter must change the logits by far more than the tolerance, or the comparison
 * above proves nothing. */
TEST(lora_changes_the_logits) {
    const char *ad = fixture_lora("lora-big.gguf", 4, 8.0f, DT_F32, LORA_GOOD);
    const char *base = fixture_random(DT_F32, 5, 0);
    REQUIRE(ad && base);
    float *plain = fixture_logits(base, k_toks, NT);
    duet_model *m = fixture_load(base);
    REQUIRE(plain && m);
    duet_lora *a = NULL;
    duet_error err = {0};
    REQUIRE(!duet_lora_load(ad, m, &a, &err) && !duet_model_add_lora(m, a, 1.0f, &err));
    duet_session *s = NULL;
    REQUIRE(!duet_session_new(m, NULL, &s, &err) && !duet_session_eval(s, k_toks, NT, 1, &err));
    int V = duet_model_hparams(m)->n_vocab;
    double worst = 0;
    for (int i = 0; i < NT; i++) worst = fmax(worst, test_nmse(duet_session_logits(s, i), plain + (size_t)i * V, V));
    CHECKF(worst > 1e-3, "the adapter moves the logits by NMSE %g only", worst);
    /* attaching after a session exists is refused (the session's scratch is sized) */
    CHECK_EQ_INT(duet_model_add_lora(m, a, 1.0f, &err), DUET_ERR_ARG);
    CHECKF(strstr(err.msg, "before making sessions"), "%s", err.msg);
    duet_session_free(s);
    duet_model_free(m);
    duet_lora_free(a);
    free(plain);
}

TEST(lora_bad_adapters_refused_by_name) {
    struct { int bad; const char *want; } cases[] = {
        {LORA_BAD_ARCH, "general.architecture is 'qwen2'"},
        {LORA_BAD_SHAPE, "blk.1.attn_output.weight.lora_a' is [129, 4]"},
        {LORA_BAD_NO_B, "'blk.1.attn_v.weight.lora_a' has no 'blk.1.attn_v.weight.lora_b'"},
        {LORA_BAD_NAN, "blk.1.ffn_up.weight.lora_a' element"},
        {LORA_BAD_TYPE_META, "general.type is 'model'"},
        {LORA_BAD_NAME, "blk.0.attn_qkv.weight"},
    };
    duet_model *m = fixture_load(fixture_random(DT_F32, 5, 0));
    REQUIRE(m);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char name[64];
        snprintf(name, sizeof name, "lora-bad-%d.gguf", cases[i].bad);
        const char *path = fixture_lora(name, 4, 8.0f, DT_F32, cases[i].bad);
        duet_lora *a = NULL;
        duet_error err = {0};
        int rc = path ? duet_lora_load(path, m, &a, &err) : 0;
        CHECKF(rc < 0 && !a && strstr(err.msg, cases[i].want) && strstr(err.msg, "lora-bad-"),
               "case %d: rc %d, '%s' (want '%s' and the file name)", cases[i].bad, rc, err.msg,
               cases[i].want);
        duet_lora_free(a);
    }
    duet_model_free(m);
}

/* duet_lora_merge bakes the adapters in: as F32, the merged file's logits equal the unmerged
 * ones (NMSE < 1e-6; the merge sums in double); the metadata is copied (the vocabulary
 * hash, architecture, context); as Q8_0 the merged file is the merged weights rounded to 8
 * bits. A type the rows cannot hold and a missing adapter are refused by name. */
TEST(lora_merge_equals_unmerged) {
    const char *ad = fixture_lora("lora-merge.gguf", 4, 8.0f, DT_F32, LORA_GOOD);
    const char *base = fixture_random(DT_F32, 5, 0);
    REQUIRE(ad && base);
    const char *out32 = test_path(test_tmpdir(), "merged-f32.gguf");
    const char *out8 = test_path(test_tmpdir(), "merged-q8.gguf");
    const char *ads[1] = {ad};
    float sc[1] = {0.75f};
    duet_error err = {0};
    REQUIRE(!duet_lora_merge(base, ads, sc, 1, DT_F32, out32, &err));
    REQUIRE(!duet_lora_merge(base, ads, sc, 1, DT_Q8_0, out8, &err));
    duet_model *m = fixture_load(base);
    duet_lora *a = NULL;
    REQUIRE(m && !duet_lora_load(ad, m, &a, &err) && !duet_model_add_lora(m, a, 0.75f, &err));
    duet_session *s = NULL;
    REQUIRE(!duet_session_new(m, NULL, &s, &err) && !duet_session_eval(s, k_toks, NT, 1, &err));
    int V = duet_model_hparams(m)->n_vocab;
    float *f32 = fixture_logits(out32, k_toks, NT), *q8 = fixture_logits(out8, k_toks, NT);
    REQUIRE(f32 && q8);
    double e32 = 0, e8 = 0;
    for (int i = 0; i < NT; i++) {
        e32 = fmax(e32, test_nmse(f32 + (size_t)i * V, duet_session_logits(s, i), V));
        e8 = fmax(e8, test_nmse(q8 + (size_t)i * V, duet_session_logits(s, i), V));
    }
    CHECKF(e32 < 1e-6, "merged F32 vs unmerged: NMSE %g", e32);
    CHECKF(e8 < 1e-2, "merged Q8_0 vs unmerged: NMSE %g", e8);
    duet_model *mm = fixture_load(out32);
    REQUIRE(mm);
    CHECK(duet_model_vocab_hash(mm) == duet_model_vocab_hash(m));
    CHECK_STR(duet_model_hparams(mm)->arch, duet_model_hparams(m)->arch);
    CHECK_EQ_INT(duet_model_hparams(mm)->n_ctx_train, duet_model_hparams(m)->n_ctx_train);
    duet_model_free(mm);
    CHECK(duet_lora_merge(base, ads, sc, 1, 12 /* Q4_K: rows of 128 cannot hold it */, out8, &err) < 0);
    CHECKF(strstr(err.msg, "rows of 128"), "%s", err.msg);
    const char *bad[1] = {"/nonexistent/adapter.gguf"};
    CHECK(duet_lora_merge(base, bad, sc, 1, -1, out8, &err) < 0);
    CHECKF(strstr(err.msg, "/nonexistent/adapter.gguf"), "%s", err.msg);
    free(f32), free(q8);
    duet_session_free(s);
    duet_model_free(m);
    duet_lora_free(a);
}
