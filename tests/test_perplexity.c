/* test_perplexity.c: llama-perplexity's chunked method (duet_text_perplexity_chunks). The
 * oracle evaluates each chunk on its own from a fresh model (fixture_logits), BOS written
 * over the chunk's first token by the test itself, and takes log-softmax in long double. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/quant.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

#define CTX 32

static char *sample_text(size_t *len) {
    static const char *words[] = {"the", "cat", "sat", "on", "a", "warm", "mat", "and", "dreamt",
                                  "of", "fish", "while", "rain", "fell", "outside", "."};
    size_t cap = 4096, n = 0;
    char *t = malloc(cap);
    for (int i = 0; t && n + 16 < cap && i < 400; i++)
        n += (size_t)snprintf(t + n, cap - n, "%s ", words[(i * 7 + i / 3) % 16]);
    *len = n;
    return t;
}

TEST(perplexity_chunks_match_chunk_by_chunk_oracle) {
    const char *path = fixture_random(DT_F32, 31, 0);
    duet_model *m = fixture_load(path);
    REQUIRE(m);
    size_t len;
    char *text = sample_text(&len);
    REQUIRE(text);
    duet_error err = {0};
    int n = duet_tokenize(m, text, len, 1, 0, NULL, 0, &err);
    REQUIRE(n >= 3 * CTX);
    int32_t *toks = malloc((size_t)n * sizeof *toks);
    REQUIRE(toks && duet_tokenize(m, text, len, 1, 0, toks, n, &err) == n);
    int32_t bos = duet_token_bos(m);
    REQUIRE(bos >= 0 && toks[0] == bos); /* this vocabulary adds BOS */
    duet_session *s = NULL;
    duet_session_params sp = {.n_ctx = CTX};
    REQUIRE(!duet_session_new(m, &sp, &s, &err));
    duet_chunk_ppl r;
    CHECKF(!duet_text_perplexity_chunks(s, text, len, &r, NULL, NULL, &err), "%s", err.msg);
    int V = duet_model_hparams(m)->n_vocab, chunks = n / CTX;
    CHECK_EQ_INT(r.n_tokens, n);
    CHECK_EQ_INT(r.n_chunks, chunks);
    CHECK_EQ_INT(r.n_scored, chunks * (CTX - CTX / 2 - 1)); /* 15 per chunk of 32 */
    long double nll = 0, nll2 = 0;
    for (int c = 0; c < chunks; c++) {
        int32_t win[CTX];
        memcpy(win, toks + c * CTX, sizeof win);
        win[0] = bos;
        float *lg = fixture_logits(path, win, CTX);
        REQUIRE(lg);
        for (int j = CTX / 2; j < CTX - 1; j++) {
            const float *row = lg + (size_t)j * V;
            long double mx = row[0], z = 0;
            for (int v = 1; v < V; v++) if (row[v] > mx) mx = row[v];
            for (int v = 0; v < V; v++) z += expl((long double)row[v] - mx);
            long double x = -((long double)row[win[j + 1]] - mx - logl(z));
            nll += x;
            nll2 += x * x;
        }
        free(lg);
    }
    CHECK_NEAR(r.nll, (double)nll, 1e-9 * (double)nll);
    CHECK_NEAR(r.nll2, (double)nll2, 1e-9 * (double)nll2);
    double mean = (double)(nll / r.n_scored);
    CHECK_NEAR(r.ppl, exp(mean), 1e-9 * exp(mean));
    double sd = sqrt(((double)(nll2 / r.n_scored) - mean * mean) / (r.n_scored - 1));
    CHECK_NEAR(r.ppl_err, sd * exp(mean), 1e-6 * sd * exp(mean));
    /* a text shorter than two contexts is refused with the counts */
    CHECK_EQ_INT(duet_text_perplexity_chunks(s, "the cat sat", 11, &r, NULL, NULL, &err), DUET_ERR_ARG);
    CHECKF(strstr(err.msg, "needs at least 64"), "%s", err.msg);
    duet_session_free(s);
    free(toks);
    free(text);
    duet_model_free(m);
}

/* With LLAMA_PERPLEXITY naming llama.cpp's llama-perplexity: both tools score the same model
 * file and text with the same chunking (F32 KV on both sides). Their final estimates agree to
 * within float rounding (the sums run in different orders): 1e-6 relative on the PPL, 1e-4 on
 * its +/-; on stories260K and 60 kB of tinyshakespeare they print the same digits. */
TEST(perplexity_llama_compat_matches_llama_perplexity) {
    const char *lp = getenv("LLAMA_PERPLEXITY"), *duet = getenv("DUET_BIN");
    if (!lp || !*lp) SKIP("LLAMA_PERPLEXITY not set (the path of llama.cpp's llama-perplexity)");
    if (!duet) SKIP("DUET_BIN not set (run through make test)");
    const char *model = fixture_random(DT_F32, 31, 0);
    REQUIRE(model);
    size_t len;
    char *text = sample_text(&len), path[600], cmd[2400];
    REQUIRE(text);
    snprintf(path, sizeof path, "%s/ppl-text.txt", test_tmpdir());
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fwrite(text, 1, len, f);
    fclose(f);
    free(text);
    /* llama-perplexity prints its final estimate on stderr, duet on stdout */
    const char *runs[2] = {"'%s' -m '%s' -f '%s' -c 32 -b 32 -t 1 -ctk f32 -ctv f32 2>&1",
                           "'%s' perplexity --llama-compat -m '%s' -f '%s' -c 32 -t 1 2>/dev/null"};
    double ppl[2] = {-1, -1}, pm[2] = {-1, -1};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, runs[i], i ? duet : lp, model, path);
        FILE *p = popen(cmd, "r");
        REQUIRE(p);
        char line[16384];
        while (fgets(line, sizeof line, p)) {
            const char *e = strstr(line, "Final estimate: PPL = ");
            if (e) sscanf(e, "Final estimate: PPL = %lf +/- %lf", &ppl[i], &pm[i]);
        }
        pclose(p);
    }
    CHECKF(ppl[0] > 0 && ppl[1] > 0, "no final estimate: llama-perplexity %g, duet %g", ppl[0], ppl[1]);
    CHECK_NEAR(ppl[1], ppl[0], 1e-6 * ppl[0]);
    CHECK_NEAR(pm[1], pm[0], 1e-4 * pm[0]);
    fprintf(stderr, "    llama-perplexity %.4f +/- %.5f, duet %.4f +/- %.5f\n", ppl[0], pm[0], ppl[1], pm[1]);
}
