/* test_train.c: datasets, score files (round trip against an independent recomputation,
 * resume after interruption, several sequences at a time, refusals), the head's gradients
 * against finite differences, head sidecars with features, and head training end to end
 * (BabyLlama pair when present: the trained head must beat random routing on held-out
 * text; with any models: expert scores rewritten so the expert is right exactly on a set of
 * tokens a linear head can identify, which trained heads must find). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/common.h"
#include "base/utf8.h"
#include "format/gguf.h"
#include "format/quant.h"
#include "learn/head_train.h"
#include "learn/scores.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

/* ---- helpers ------------------------------------------------------------------------------ */
/* Paths in the test directory, in a ring of buffers large enough for any one test. */
static const char *tmp_file(const char *name) {
    static char ring[64][600];
    static int k;
    char *b = ring[k++ & 63];
    snprintf(b, sizeof ring[0], "%s/%s", test_tmpdir(), name);
    return b;
}

static void write_text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f) { test_fail_at(__FILE__, __LINE__, "cannot write %s", path); return; }
    fputs(s, f);
    fclose(f);
}

static duet_model *load(const char *path, int n_threads) {
    duet_model *m = NULL;
    duet_error err = {0};
    duet_model_params mp = {.n_threads = n_threads};
    if (!path || duet_model_load(path, &mp, &m, &err))
        test_fail_at(__FILE__, __LINE__, "load %s: %s", path ? path : "(null)", err.msg);
    return m;
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) ? -1 : (long)st.st_size;
}


/* Score a dataset file; 0 on success. */
static int g_n_batch; /* prefill chunk of the scoring passes (0: default) */
static int score(duet_model *m, const duet_model *ids, const char *data, int n_ctx, const char *out,
                 duet_scores_stats *st, duet_error *err) {
    duet_dataset d;
    int rc = duet_dataset_load(data, NULL, &d, err);
    if (rc) return rc;
    duet_scores_params p = {.n_ctx = n_ctx, .ids_model = ids, .n_batch = g_n_batch};
    rc = duet_scores_compute(m, &d, &p, out, st, err);
    duet_dataset_free(&d);
    return rc;
}

/* ---- datasets ------------------------------------------------------------------------------ */
TEST(train_dataset_formats) {
    duet_error err = {0};
    duet_dataset d;
    const char *j = "{\"prompt\": \"Hi\", \"response\": \"there\"}\n"
                    "\n"
                    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                    "{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", "
                    "\"content\": \"4\"}, {\"role\": \"user\", \"content\": \"thanks\"}]}\n"
                    "{\"question\": \"1+1?\", \"answer\": \"2\\n#### 2\"}\n";
    REQUIRE(!duet_dataset_load_buffer(j, strlen(j), "a.jsonl", NULL, &d, &err));
    CHECK_EQ_INT(d.format, DUET_DATASET_JSONL);
    REQUIRE(d.n == 3);
    CHECK_STR(d.ex[0].prompt, "Hi");
    CHECK_STR(d.ex[0].response, "there");
    CHECK_STR(d.ex[1].prompt, "system: Be brief.\nuser: 2+2?");
    CHECK_STR(d.ex[1].response, "4");
    CHECK_EQ_INT(d.ex[1].line, 3);
    CHECK(strstr(d.ex[2].prompt, "Question: 1+1?\nAnswer:") != NULL);
    CHECK_STR(d.ex[2].response, "2\n#### 2");
    duet_dataset_free(&d);
    /* plain text: paragraphs, first lines numbered */
    const char *t = "One two.\nthree\n\n  \n\nfour\n";
    REQUIRE(!duet_dataset_load_buffer(t, strlen(t), "a.txt", NULL, &d, &err));
    CHECK_EQ_INT(d.format, DUET_DATASET_TEXT);
    REQUIRE(d.n == 2);
    CHECK(d.ex[0].prompt == NULL);
    CHECK_STR(d.ex[0].response, "One two.\nthree");
    CHECK_STR(d.ex[1].response, "four");
    CHECK_EQ_INT(d.ex[1].line, 6);
    duet_dataset_free(&d);
}

TEST(train_dataset_bad_inputs) {
    duet_error err = {0};
    duet_dataset d;
    static const struct { const char *text, *want; } cases[] = {
        {"{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\", \"response\": }\n", "x.jsonl:2: invalid JSON"},
        {"{\"prompt\": \"a\"}\n", "x.jsonl:1: field 'response' is missing"},
        {"{\"prompt\": \"a\", \"response\": \"\"}\n", "x.jsonl:1: the response is empty"},
        {"{\"prompt\": 3, \"response\": \"b\"}\n", "x.jsonl:1: field 'prompt' is an integer"},
        {"{\"text\": \"b\"}\n", "x.jsonl:1: no example fields"},
        {"[1, 2]\n", "x.jsonl:1: a line must hold a JSON object"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n", "no assistant message"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": null}]}\n", "messages[0]: field 'content' is null"},
        {"{\"prompt\": \"\xc3\x28\", \"response\": \"b\"}\n", "x.jsonl:1: invalid JSON"},
        {"{\"prompt\": \"a\", \"prompt\": \"b\", \"response\": \"c\"}\n", "x.jsonl:1: invalid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = duet_dataset_load_buffer(cases[i].text, strlen(cases[i].text), "x.jsonl",
                                          &(duet_dataset_params){.format = DUET_DATASET_JSONL}, &d, &err);
        CHECKF(rc == DUET_ERR_FORMAT && strstr(err.msg, cases[i].want), "case %zu: rc %d, '%s'", i,
               rc, err.msg);
        CHECK(d.n == 0 && d.ex == NULL);
    }
    /* skip_bad: counted, the first message kept */
    const char *mixed = "{\"prompt\": \"a\", \"response\": \"b\"}\nnot json\n{\"prompt\": \"c\"}\n"
                        "{\"prompt\": \"d\", \"response\": \"e\"}\n";
    REQUIRE(!duet_dataset_load_buffer(mixed, strlen(mixed), "m.jsonl", &(duet_dataset_params){.skip_bad = 1}, &d, &err));
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_INT(d.n_bad, 2);
    CHECKF(strstr(d.first_bad, "m.jsonl:2:"), "first bad: %s", d.first_bad);
    duet_dataset_free(&d);
    /* all bad / empty: no usable examples */
    CHECK(duet_dataset_load_buffer("x\n", 2, "b.jsonl", &(duet_dataset_params){.format = DUET_DATASET_JSONL, .skip_bad = 1}, &d, &err) ==
          DUET_ERR_FORMAT && strstr(err.msg, "no usable examples"));
    CHECK(duet_dataset_load_buffer(" \n\n", 3, "e.txt", NULL, &d, &err) == DUET_ERR_FORMAT &&
          strstr(err.msg, "no usable examples"));
    /* invalid UTF-8 in plain text: the line of the bad byte */
    const char *bad = "good line\nstill good\n\nfine\nbad \xff here\n";
    CHECK(duet_dataset_load_buffer(bad, strlen(bad), "u.txt", NULL, &d, &err) == DUET_ERR_FORMAT);
    CHECKF(strstr(err.msg, "u.txt:5: invalid UTF-8 (byte 0xff)"), "%s", err.msg);
    CHECK_EQ_INT(duet_utf8_check("\xed\xa0\x80", 3), 0);   /* surrogate */
    CHECK_EQ_INT(duet_utf8_check("\xc0\xaf", 2), 0);       /* overlong */
    CHECK_EQ_INT(duet_utf8_check("a\xe2\x82\xac", 4), 4);  /* euro sign */
    CHECK(duet_dataset_load(tmp_file("missing.jsonl"), NULL, &d, &err) == DUET_ERR_IO && strstr(err.msg, "missing.jsonl"));
}

/* ---- head gradients ------------------------------------------------------------------------- */
TEST(train_head_gradients_match_finite_differences) {
    enum { N = 9, E = 12 };
    float h[N * E], ent[N], mx[N], lpb[N], lpe[N], z[N];
    uint64_t x = 12345;
#define RND() ((x = x * 6364136223846793005ull + 1442695040888963407ull), (double)(x >> 11) * 0x1.0p-53)
    for (int i = 0; i < N * E; i++) h[i] = (float)(2 * RND() - 1);
    for (int i = 0; i < N; i++) {
        ent[i] = (float)(3 * RND());
        mx[i] = (float)(-2 * RND());
        lpb[i] = (float)(-6 * RND());
        lpe[i] = (float)(-6 * RND());
        z[i] = RND() < 0.4 ? 1.0f : 0.0f;
    }
    duet_head_train_batch b = {N, h, ent, mx, lpb, lpe, z};
    static const int masks[] = {1, 3, 5, 7, 2, 6};
    static const struct { duet_head_objective obj; double cost; } objs[] = {
        {DUET_HT_WEAK, 0}, {DUET_HT_NLL, 0}, {DUET_HT_NLL, 0.7}, {DUET_HT_GAIN, 0}};
    for (size_t mi = 0; mi < sizeof masks / sizeof masks[0]; mi++)
        for (size_t oi = 0; oi < sizeof objs / sizeof objs[0]; oi++) {
            duet_head_train_layout L;
            duet_head_train_layout_init(&L, masks[mi], E);
            double th[E + 3], g[E + 3], t2[E + 3];
            for (int k = 0; k < L.n_param; k++) th[k] = 1.5 * (2 * RND() - 1) / (k < E ? 3 : 1);
            duet_head_train_loss_grad(&L, &b, objs[oi].obj, objs[oi].cost, 8, th, g);
            double num = 0, den = 0, worst = 0;
            for (int k = 0; k < L.n_param; k++) {
                double eps = 1e-5;
                memcpy(t2, th, sizeof th);
                t2[k] += eps;
                double lp = duet_head_train_loss_grad(&L, &b, objs[oi].obj, objs[oi].cost, 8, t2, NULL);
                t2[k] -= 2 * eps;
                double lm = duet_head_train_loss_grad(&L, &b, objs[oi].obj, objs[oi].cost, 8, t2, NULL);
                double fd = (lp - lm) / (2 * eps), d = fabs(fd - g[k]);
                num += d * d;
                den += fd * fd;
                double rel = d / fmax(fabs(fd), 1e-3);
                worst = rel > worst ? rel : worst;
            }
            double rel = sqrt(num / den);
            CHECKF(rel < 1e-4 && worst < 1e-4, "mask %d objective %d cost %g: relative error %.3g "
                   "(worst component %.3g)", masks[mi], objs[oi].obj, objs[oi].cost, rel, worst);
        }
    /* the loss itself at s = 0: weak = mean of pw*z*log2 + (1-z)*log2; nll = -log((pb+pe)/2) */
    duet_head_train_layout L;
    duet_head_train_layout_init(&L, 1, E);
    double zero[E] = {0};
    double want_w = 0, want_n = 0;
    for (int i = 0; i < N; i++) {
        want_w += (8 * z[i] + (1 - z[i])) * log(2.0) / N;
        want_n += -log((exp(lpb[i]) + exp(lpe[i])) / 2) / N;
    }
    CHECK_NEAR(duet_head_train_loss_grad(&L, &b, DUET_HT_WEAK, 0, 8, zero, NULL), want_w, 1e-12);
    CHECK_NEAR(duet_head_train_loss_grad(&L, &b, DUET_HT_NLL, 0, 8, zero, NULL), want_n, 1e-12);
    CHECK_NEAR(duet_head_train_loss_grad(&L, &b, DUET_HT_NLL, 0.5, 8, zero, NULL), want_n + 0.25, 1e-12);
    double want_g = 0;
    for (int i = 0; i < N; i++) want_g += 0.5 * ((double)lpe[i] - lpb[i]) * ((double)lpe[i] - lpb[i]) / N;
    CHECK_NEAR(duet_head_train_loss_grad(&L, &b, DUET_HT_GAIN, 0, 8, zero, NULL), want_g, 1e-12);
    /* at s = 0.8 (an entropy-only head: weight 0, bias 0.8), where the marginal likelihood is
     * no longer symmetric in base and expert: sig(0.8) = 1 / (1 + e^-0.8) weighs the expert */
    duet_head_train_layout Lb;
    duet_head_train_layout_init(&Lb, DUET_HEAD_FEAT_ENTROPY, E);
    const double thb[2] = {0, 0.8};
    double sp = 1 / (1 + exp(-0.8)), sn = 1 - sp;
    want_w = want_n = 0;
    for (int i = 0; i < N; i++) {
        want_w += -(8 * z[i] * log(sp) + (1 - z[i]) * log(sn)) / N;
        want_n += -log(sn * exp(lpb[i]) + sp * exp(lpe[i])) / N;
    }
    CHECK_NEAR(duet_head_train_loss_grad(&Lb, &b, DUET_HT_WEAK, 0, 8, thb, NULL), want_w, 1e-12);
    CHECK_NEAR(duet_head_train_loss_grad(&Lb, &b, DUET_HT_NLL, 0, 8, thb, NULL), want_n, 1e-12);
    CHECK_NEAR(duet_head_train_loss_grad(&Lb, &b, DUET_HT_NLL, 0.5, 8, thb, NULL), want_n + 0.5 * sp, 1e-12);
#undef RND
}

/* ---- score files ----------------------------------------------------------------------------- */
static const char *k_jsonl =
    "{\"prompt\": \"The cat\", \"response\": \"sat on the mat.\"}\n"
    "{\"prompt\": \"The cat\", \"response\": \"ran away from the dog, fast.\"}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}, {\"role\": \"assistant\", "
    "\"content\": \"hi, how are you?\"}]}\n"
    "{\"question\": \"What is 3 + 4?\", \"answer\": \"3 + 4 = <<3+4=7>>7\\n#### 7\"}\n";

static double lsm(const float *l, int n, int k, double *maxlp, double *ent) {
    double mx = l[0], z = 0, ez = 0;
    for (int i = 1; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) z += exp((double)l[i] - mx);
    double lz = mx + log(z);
    for (int i = 0; i < n; i++) ez += exp((double)l[i] - lz) * ((double)l[i] - lz);
    *maxlp = mx - lz;
    *ent = -ez;
    return (double)l[k] - lz;
}

TEST(train_score_file_round_trip) {
    const char *mp = fixture_random(DT_F32, 61, 0);
    duet_model *m = load(mp, 2);
    REQUIRE(m);
    const char *data = tmp_file("rt.jsonl"), *out = tmp_file("rt.scores");
    /* a long example that does not fit a context of 48 tokens */
    char buf[4096];
    const char *abc = "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9 ";
    snprintf(buf, sizeof buf, "%s{\"prompt\": \"long\", \"response\": \"%s%s%s%s\"}\n", k_jsonl,
             abc, abc, abc, abc);
    write_text(data, buf);
    duet_error err = {0};
    duet_scores_stats st;
    /* a context of 48 has no room for the GSM8K prompt: skipped, with a count */
    CHECK(!score(m, NULL, data, 48, out, &st, &err) && st.n_skipped == 1 && st.n_seq == 4);
    g_n_batch = 16; /* several prefill chunks per sequence */
    int rc0 = score(m, NULL, data, 120, out, &st, &err);
    g_n_batch = 0;
    REQUIRE(!rc0 || (test_fail_at(__FILE__, __LINE__, "%s", err.msg), 0));
    CHECK_EQ_INT(st.n_examples, 5);
    CHECK_EQ_INT(st.n_truncated, 1);
    CHECK(st.n_dropped_tok > 0);
    CHECK(access(test_path(test_tmpdir(), "rt.scores.partial"), F_OK) != 0);
    duet_scores *f = NULL;
    REQUIRE(!duet_scores_open(out, &f, &err));
    const duet_scores_header *h = duet_scores_get_header(f);
    const duet_hparams *hp = duet_model_hparams(m);
    CHECK_EQ_INT(h->n_seq, 5);
    CHECK_EQ_INT(h->n_ctx, 120);
    CHECK_EQ_INT(h->hidden_dim, hp->n_embd);
    CHECK_EQ_INT(h->n_embd, hp->n_embd);
    CHECK_EQ_INT(h->n_vocab, hp->n_vocab);
    CHECK(h->vocab_hash == duet_model_vocab_hash(m) && h->ids_vocab_hash == h->vocab_hash);
    CHECK_STR(h->model_name, hp->name);
    CHECK_EQ_INT(h->n_truncated, 1);
    /* independent recomputation: tokenise, evaluate the whole sequence, log-softmax */
    duet_dataset d;
    REQUIRE(!duet_dataset_load(data, NULL, &d, &err));
    duet_session *s = NULL;
    duet_session_params sp = {.n_ctx = 160};
    REQUIRE(!duet_session_new(m, &sp, &s, &err));
    uint64_t tok_sum = 0;
    double worst = 0;
    int hid_bad = 0;
    for (int e = 0; e < 5; e++) {
        const duet_scores_seq *q = &duet_scores_seqs(f)[e];
        char text[2048];
        int32_t full[256], pre[256];
        snprintf(text, sizeof text, "%s\n", d.ex[e].prompt);
        int np = duet_tokenize(m, text, strlen(text), 1, 0, pre, 256, &err);
        snprintf(text, sizeof text, "%s\n%s", d.ex[e].prompt, d.ex[e].response);
        int n = duet_tokenize(m, text, strlen(text), 1, 0, full, 255, &err);
        REQUIRE(np > 0 && n > np);
        full[n++] = duet_token_eos(m);
        int lcp = 0;
        while (lcp < np && full[lcp] == pre[lcp]) lcp++;
        if (n > 120) n = 120;
        CHECK_EQ_INT(q->n_prompt, lcp);
        CHECK_EQ_INT(q->n_tok, n - lcp);
        CHECK_EQ_INT(q->example, e);
        CHECK_EQ_INT(q->flags, e == 4 ? DUET_SCORES_SEQ_TRUNCATED : 0);
        CHECK_EQ_INT(q->tok_start, tok_sum);
        tok_sum += q->n_tok;
        duet_session_truncate(s, 0);
        REQUIRE(!duet_session_eval(s, full, n, 1, &err));
        const duet_scores_tok *t = duet_scores_seq_toks(f, (uint64_t)e);
        const uint16_t *hh = duet_scores_seq_hidden(f, (uint64_t)e);
        for (uint32_t k = 0; k < q->n_tok; k++) {
            int pos = lcp + (int)k;
            double mxl, ent, lp = lsm(duet_session_logits(s, pos - 1), hp->n_vocab, full[pos], &mxl, &ent);
            CHECK_EQ_INT(t[k].gold, full[pos]);
            double dd = fmax(fabs(lp - t[k].lp), fmax(fabs(mxl - t[k].maxlp), fabs(ent - t[k].entropy)));
            worst = dd > worst ? dd : worst;
            const float *hv = duet_session_hidden(s, pos - 1);
            for (int c = 0; c < hp->n_embd; c++) {
                float a = fp16_to_fp32(hh[(size_t)k * hp->n_embd + c]), b = fp16_to_fp32(fp32_to_fp16(hv[c]));
                hid_bad += fabsf(a - b) > 1e-3f * fabsf(b) + 1e-6f;
            }
        }
    }
    CHECKF(worst < 2e-5, "lp/maxlp/entropy differ from the recomputation by %.3g", worst);
    CHECKF(hid_bad == 0, "%d hidden values differ", hid_bad);
    CHECK_EQ_INT(h->n_tok, tok_sum);
    duet_session_free(s);
    duet_dataset_free(&d);
    duet_scores_close(f);
    /* corrupt files are refused with the file's name */
    const char *bad = tmp_file("bad.scores");
    FILE *in = fopen(out, "rb"), *o = fopen(bad, "wb");
    REQUIRE(in && o);
    int c, k = 0;
    while ((c = fgetc(in)) != EOF) fputc(k++ == 600 ? c ^ 0x55 : c, o);
    fclose(in);
    fclose(o);
    CHECK(duet_scores_open(bad, &f, &err) == DUET_ERR_FORMAT && strstr(err.msg, "bad.scores") && !f);
    if (truncate(bad, 300) == 0)
        CHECK(duet_scores_open(bad, &f, &err) == DUET_ERR_FORMAT && strstr(err.msg, "too short"));
    duet_model_free(m);
}

typedef struct stopper { int left; } stopper;
static int stop_after(void *ud, const duet_scores_progress *p) {
    stopper *s = ud;
    (void)p;
    return --s->left <= 0;
}

/* Twelve paragraphs into text (at least 8 KiB, empty): every third one long enough to need
 * several windows of a small context. */
static void twelve_paragraphs(char *text) {
    for (int i = 0; i < 12; i++) {
        char para[512];
        snprintf(para, sizeof para, "Paragraph %d says %s.\n\n", i,
                 i % 3 ? "something short" : "a much longer thing that will need a few windows of "
                 "a small context to be scored in full, every token exactly once");
        strcat(text, para);
    }
}

TEST(train_score_resume_gives_the_same_file) {
    duet_model *m = load(fixture_random(DT_Q8_0, 62, 0), 2);
    REQUIRE(m);
    const char *data = tmp_file("res.txt");
    char text[8192] = "";
    twelve_paragraphs(text);
    write_text(data, text);
    duet_error err = {0};
    duet_scores_stats st;
    const char *whole = tmp_file("whole.scores"), *cut = tmp_file("cut.scores");
    char partial[600];
    snprintf(partial, sizeof partial, "%s.partial", cut);
    REQUIRE(!score(m, NULL, data, 40, whole, &st, &err));
    CHECKF(st.n_seq > 12, "long paragraphs should need several windows: %d sequences", st.n_seq);
    /* stopped after 5 sequences: the partial stays, no final file */
    duet_dataset d;
    REQUIRE(!duet_dataset_load(data, NULL, &d, &err));
    stopper sp = {5};
    duet_scores_params p = {.n_ctx = 40, .progress = stop_after, .ud = &sp};
    CHECK_EQ_INT(duet_scores_compute(m, &d, &p, cut, &st, &err), DUET_SCORES_STOPPED);
    CHECK_EQ_INT(st.n_seq_done, 5);
    CHECK(file_size(partial) > 512 && access(cut, F_OK) != 0);
    /* a torn last block (killed mid-write) is dropped on resume */
    REQUIRE(!truncate(partial, file_size(partial) - 100));
    sp.left = 1000;
    CHECK_EQ_INT(duet_scores_compute(m, &d, &p, cut, &st, &err), DUET_OK);
    CHECK_EQ_INT(st.n_resumed_seq, 4);
    CHECK(access(partial, F_OK) != 0);
    CHECKF(fixture_same_file(whole, cut), "resumed file differs from the uninterrupted one");
    /* a partial made with other options is refused, naming it */
    sp.left = 2;
    CHECK_EQ_INT(duet_scores_compute(m, &d, &p, cut, &st, &err), DUET_SCORES_STOPPED);
    p.n_ctx = 32;
    p.progress = NULL;
    CHECK(duet_scores_compute(m, &d, &p, cut, &st, &err) == DUET_ERR_ARG && strstr(err.msg, "remove it"));
    remove(partial);
    duet_dataset_free(&d);
    duet_model_free(m);
}

/* Sequences scored together (one session each, their chunks in one batched pass) give the
 * file that scoring one at a time gives, byte for byte: windows of text of uneven lengths,
 * and prompts shared between examples (a session keeps the KV cache of a shared prefix).
 * n_batch 8 shared by the slots makes most sequences take several passes. A run stopped
 * with one parallel resumes with another. */
TEST(train_score_parallel_gives_the_same_file) {
    duet_model *m = load(fixture_random(DT_Q8_0, 62, 0), 2);
    REQUIRE(m);
    char text[8192] = "", jsonl[4096] = "";
    twelve_paragraphs(text);
    for (int i = 0; i < 3; i++) strcat(jsonl, k_jsonl);
    const char *data[2] = {tmp_file("par.txt"), tmp_file("par.jsonl")};
    write_text(data[0], text);
    write_text(data[1], jsonl);
    static const int parallel[4] = {1, 3, 8, 50}; /* 50: more than the sequences and n_batch */
    for (int d = 0; d < 2; d++) {
        duet_dataset ds;
        duet_error err = {0};
        REQUIRE(!duet_dataset_load(data[d], NULL, &ds, &err));
        const char *out[4];
        for (int k = 0; k < 4; k++) {
            char name[32];
            snprintf(name, sizeof name, "par-%d-%d.scores", d, parallel[k]);
            out[k] = tmp_file(name);
            duet_scores_params p = {.n_ctx = 40, .n_batch = 8, .parallel = parallel[k]};
            duet_scores_stats st;
            REQUIRE(!duet_scores_compute(m, &ds, &p, out[k], &st, &err) ||
                    (test_fail_at(__FILE__, __LINE__, "%s", err.msg), 0));
            if (d == 0) CHECKF(st.n_seq > 12, "long paragraphs should need several windows: %d sequences", st.n_seq);
        }
        for (int k = 1; k < 4; k++)
            CHECKF(fixture_same_file(out[0], out[k]), "%s: parallel %d differs from 1", data[d], parallel[k]);
        /* stopped with 3 at a time after 4 blocks (mid-group), resumed one at a time */
        const char *cut = tmp_file(d ? "par-cut-1.scores" : "par-cut-0.scores");
        stopper sp = {4};
        duet_scores_params p = {.n_ctx = 40, .n_batch = 8, .parallel = 3, .progress = stop_after, .ud = &sp};
        duet_scores_stats st;
        CHECK_EQ_INT(duet_scores_compute(m, &ds, &p, cut, &st, &err), DUET_SCORES_STOPPED);
        CHECK_EQ_INT(st.n_seq_done, 4);
        p = (duet_scores_params){.n_ctx = 40, .n_batch = 8, .parallel = 1};
        CHECK_EQ_INT(duet_scores_compute(m, &ds, &p, cut, &st, &err), DUET_OK);
        CHECK_EQ_INT(st.n_resumed_seq, 4);
        CHECKF(fixture_same_file(out[0], cut), "%s: resumed with another parallel, the file differs", data[d]);
        duet_dataset_free(&ds);
    }
    duet_model_free(m);
}

/* ---- pairs of score files and training ---------------------------------------------------- */
TEST(train_mismatched_score_files_are_refused) {
    duet_model *b = load(fixture_random(DT_F32, 63, 0), 2), *e = load(fixture_random(DT_F32, 64, 0), 2);
    REQUIRE(b && e);
    const char *d1 = tmp_file("mm1.jsonl"), *d2 = tmp_file("mm2.jsonl");
    write_text(d1, k_jsonl);
    write_text(d2, "{\"prompt\": \"The cat\", \"response\": \"sat on the mat.\"}\n"
                   "{\"prompt\": \"The cat\", \"response\": \"ran away from the cat, fast.\"}\n"
                   "{\"prompt\": \"x\", \"response\": \"y\"}\n{\"prompt\": \"x\", \"response\": \"y\"}\n");
    duet_error err = {0};
    REQUIRE(!score(b, NULL, d1, 0, tmp_file("mm-b.scores"), NULL, &err));
    REQUIRE(!score(e, b, d2, 0, tmp_file("mm-e.scores"), NULL, &err));
    REQUIRE(!score(e, b, d1, 0, tmp_file("mm-e1.scores"), NULL, &err));
    duet_scores *B = NULL, *E = NULL, *E1 = NULL;
    REQUIRE(!duet_scores_open(tmp_file("mm-b.scores"), &B, &err) && !duet_scores_open(tmp_file("mm-e.scores"), &E, &err) &&
            !duet_scores_open(tmp_file("mm-e1.scores"), &E1, &err));
    CHECK(!duet_head_train_check_pair(B, E1, &err));
    int rc = duet_head_train_check_pair(B, E, &err);
    CHECKF(rc == DUET_ERR_ARG && strstr(err.msg, "sequence 1") && strstr(err.msg, "gold id"), "%s", err.msg);
    duet_head *h = NULL;
    CHECK(duet_head_train(B, E, NULL, &h, NULL, &err) == DUET_ERR_ARG && !h && strstr(err.msg, "sequence 1"));
    /* the expert file as base: hidden states of another model are refused; ids of another
     * vocabulary name --tokenizer-of */
    char other[600];
    snprintf(other, sizeof other, "%s/other-vocab.gguf", test_tmpdir());
    duet_make_model_params mp = {.arch = "llama", .n_embd = 32, .n_layer = 1, .n_head = 2,
                                 .n_head_kv = 2, .n_ff = 64, .n_vocab = 700, .n_ctx = 128,
                                 .type = DT_F32, .output_type = -1, .seed = 9};
    REQUIRE(!duet_make_model(&mp, other, &err));
    duet_model *o = load(other, 1);
    REQUIRE(o);
    REQUIRE(!score(o, NULL, d1, 0, tmp_file("mm-o.scores"), NULL, &err) || (test_fail_at(__FILE__, __LINE__, "%s", err.msg), 0));
    duet_scores *O = NULL;
    REQUIRE(!duet_scores_open(tmp_file("mm-o.scores"), &O, &err));
    rc = duet_head_train_check_pair(B, O, &err);
    CHECKF(rc == DUET_ERR_ARG && strstr(err.msg, "--tokenizer-of"), "%s", err.msg);
    /* a base scored through another tokenizer cannot be the base */
    duet_scores *O2 = NULL;
    REQUIRE(!score(o, b, d1, 0, tmp_file("mm-o2.scores"), NULL, &err) &&
            !duet_scores_open(tmp_file("mm-o2.scores"), &O2, &err));
    CHECK(!duet_head_train_check_pair(B, O2, &err));
    CHECK(duet_head_train(O2, B, NULL, &h, NULL, &err) == DUET_ERR_ARG && strstr(err.msg, "own tokenizer"));
    duet_scores_close(O2);
    duet_scores_close(O);
    duet_model_free(o);
    duet_scores_close(B);
    duet_scores_close(E);
    duet_scores_close(E1);
    duet_model_free(b);
    duet_model_free(e);
}

TEST(train_head_sidecar_with_features) {
    duet_model *b = load(fixture_random(DT_F32, 65, 0), 1);
    REQUIRE(b);
    const duet_hparams *hp = duet_model_hparams(b);
    duet_head *h = NULL, *g = NULL;
    duet_error err = {0};
    REQUIRE(!duet_head_new(hp->name, hp->n_embd, hp->n_vocab, duet_model_vocab_hash(b), &h, &err));
    float u[128], hid[128];
    for (int i = 0; i < 128; i++) {
        u[i] = 0.01f * (float)(i % 7 - 3);
        hid[i] = (float)(i % 5) - 2.0f;
    }
    duet_head_set_u(h, u, 128);
    float w[2] = {0.75f, -1.25f};
    CHECK(duet_head_set_features(h, 0, w, 0) == DUET_ERR_ARG);
    REQUIRE(!duet_head_set_features(h, 7, w, 0.3f));
    double want = 0.3 + 0.75 * 2.0 - 1.25 * -0.5;
    for (int i = 0; i < 128; i++) want += (double)u[i] * hid[i];
    CHECK_NEAR(duet_head_score_ex(h, hid, 2.0f, -0.5f), want, 1e-5);
    const char *path = tmp_file("feat-head.gguf");
    REQUIRE(!duet_head_save(h, path, &err));
    REQUIRE(!duet_head_load(path, b, &g, &err));
    CHECK_EQ_INT(duet_head_features(g), 7);
    CHECK_NEAR(duet_head_score_ex(g, hid, 2.0f, -0.5f), want, 1e-5);
    duet_head_free(g);
    g = NULL;
    /* entropy only: u is zeroed, hidden may be NULL */
    REQUIRE(!duet_head_set_features(h, DUET_HEAD_FEAT_ENTROPY, w, -1.0f));
    REQUIRE(!duet_head_save(h, path, &err));
    REQUIRE(!duet_head_load(path, b, &g, &err));
    CHECK_NEAR(duet_head_score_ex(g, NULL, 2.0f, 9.0f), 0.5, 1e-6);
    CHECK_NEAR(duet_head_score_ex(g, hid, 2.0f, 9.0f), 0.5, 1e-6);
    duet_head_free(g);
    g = NULL;
    int mask = 0;
    CHECK(duet_head_features_parse("hidden,entropy", &mask, &err) == 0 && mask == 3);
    CHECK(duet_head_features_parse("hidden,colour", &mask, &err) == DUET_ERR_ARG && strstr(err.msg, "'colour'"));
    CHECK(duet_head_features_parse("entropy,entropy", &mask, &err) == DUET_ERR_ARG && strstr(err.msg, "twice"));
    char fs[64];
    duet_head_features_string(6, fs, sizeof fs);
    CHECK_STR(fs, "entropy,maxlogp");
    /* a hidden-only head keeps the paper's layout: no features key, no head.w, no bias */
    REQUIRE(!duet_head_set_features(h, DUET_HEAD_FEAT_HIDDEN, NULL, 0));
    REQUIRE(!duet_head_save(h, path, &err));
    gguf_file *gf = NULL;
    REQUIRE(!gguf_open(path, &gf, &err));
    CHECK(!gguf_find(gf, "duet.head.features") && !gguf_find(gf, "duet.head.bias") &&
          !gguf_find_tensor(gf, "head.w") && gguf_find_tensor(gf, "head.u"));
    gguf_close(gf);
    duet_model_free(b);
    duet_head_free(h);
}

/* Stories sampled from a model at temperature 1, one per paragraph, ASCII, one line each. */
static int sample_stories(duet_model *m, uint64_t seed, int chars, const char *path) {
    FILE *f = fopen(path, "wb");
    duet_session *s = NULL;
    duet_sampler *smp = NULL;
    duet_error err = {0};
    duet_session_params sp = {.n_ctx = 256};
    duet_sampler_params pp = {.temp = 1.0f, .seed = seed};
    if (!f || duet_session_new(m, &sp, &s, &err) || duet_sampler_new(&pp, &smp, &err)) {
        if (f) fclose(f);
        duet_session_free(s);
        return -1;
    }
    int V = duet_model_hparams(m)->n_vocab, total = 0;
    while (total < chars) {
        int32_t t = duet_token_bos(m), prev = t;
        duet_session_truncate(s, 0);
        int col = 0;
        for (int i = 0; i < 250; i++) {
            if (duet_session_eval(s, &t, 1, 0, &err)) break;
            t = duet_sampler_sample(smp, duet_session_logits(s, -1), V);
            if (duet_token_is_eog(m, t)) break;
            char piece[64];
            int n = duet_token_to_piece(m, prev, t, piece, sizeof piece);
            for (int k = 0; k < n && k < (int)sizeof piece; k++) {
                unsigned char c = (unsigned char)piece[k];
                if (c == '\n') c = ' ';
                if (c < 0x20 || c >= 0x7f || (c == ' ' && col == 0)) continue;
                fputc(c, f);
                col++;
            }
            prev = t;
        }
        if (col) fputs("\n\n", f);
        total += col;
    }
    duet_sampler_free(smp);
    duet_session_free(s);
    return fclose(f);
}

/* ---- planted routing oracles: score files whose expert is right where the test says ---- */
/* An edit of one token record t, seeing the base's record and final hidden state there. */
typedef void (*tok_edit)(void *ud, const duet_scores_tok *base, const float *h, int hd, duet_scores_tok *t);

/* A copy of the score file src at dst with every token record passed through edit (B gives
 * the matching base record and hidden state); the block checks are recomputed so the copy
 * opens as a scored file would. 0 on success. */
static int edit_scores(const duet_scores *B, const char *src, const char *dst, tok_edit edit, void *ud) {
    size_t n = 0;
    char *buf = fixture_read_file(src, &n);
    int hd = (int)duet_scores_get_header(B)->hidden_dim;
    float *hid = malloc((size_t)(hd ? hd : 1) * sizeof *hid);
    if (!buf || !hid || n < DUET_SCORES_HEADER_SIZE) {
        free(buf);
        free(hid);
        return -1;
    }
    const duet_scores_header *h = (const duet_scores_header *)buf;
    const duet_scores_seq *seqs = (const duet_scores_seq *)(buf + h->index_offset);
    for (uint64_t i = 0; i < h->n_seq; i++) {
        char *blk = buf + seqs[i].offset;
        duet_scores_tok *t = (duet_scores_tok *)(blk + sizeof(duet_scores_block));
        const duet_scores_tok *bt = duet_scores_seq_toks(B, i);
        const uint16_t *bh = duet_scores_seq_hidden(B, i);
        for (uint32_t k = 0; k < seqs[i].n_tok; k++) {
            for (int j = 0; j < hd; j++) hid[j] = fp16_to_fp32(bh[(size_t)k * hd + j]);
            edit(ud, &bt[k], hid, hd, &t[k]);
        }
        duet_scores_block b;
        memcpy(&b, blk, sizeof b);
        b.check = duet_scores_block_check(blk + sizeof b, (size_t)seqs[i].n_tok *
                                          (sizeof(duet_scores_tok) + (size_t)h->hidden_dim * 2));
        memcpy(blk, &b, sizeof b);
    }
    FILE *f = fopen(dst, "wb");
    int rc = !f || fwrite(buf, 1, n, f) != n;
    if (f && fclose(f)) rc = 1;
    free(buf);
    free(hid);
    return rc ? -1 : 0;
}

/* The planted rule: the expert is right exactly where d . h > thr (h the base's hidden state,
 * so a linear head can find the rule). There it puts 0.9 on the gold token, its argmax;
 * elsewhere it gives the gold token e^-2 of the base's probability and prefers another token
 * (max log-prob log 0.5, above any log-prob <= -2). */
typedef struct planted { const float *d; double thr; } planted;

static double proj(const float *d, const float *h, int hd) {
    double s = 0;
    for (int j = 0; j < hd; j++) s += (double)d[j] * h[j];
    return s;
}

static void plant_expert(void *ud, const duet_scores_tok *b, const float *h, int hd, duet_scores_tok *t) {
    const planted *p = ud;
    if (proj(p->d, h, hd) > p->thr) {
        t->lp = t->maxlp = logf(0.9f);
    } else {
        t->lp = b->lp - 2.0f;
        t->maxlp = logf(0.5f);
    }
}

/* Every token a pseudo-label positive: the gold token is the expert's argmax and not the
 * base's. */
static void expert_always_top(void *ud, const duet_scores_tok *b, const float *h, int hd, duet_scores_tok *t) {
    t->maxlp = t->lp;
}
static void base_never_top(void *ud, const duet_scores_tok *b, const float *h, int hd, duet_scores_tok *t) {
    t->maxlp = t->lp + 0.5f;
}

static json_t *first_eval(const char *report) {
    json_error_t je;
    json_t *j = json_load_file(report, 0, &je);
    json_t *e = j ? json_array_get(json_object_get(j, "evaluations"), 0) : NULL;
    json_t *v = e ? json_object_get(e, "val_bce") : NULL;
    json_t *r = v ? json_real(json_number_value(v)) : NULL;
    json_decref(j);
    return r;
}

/* The default positive weight of weak supervision: with every pseudo-label positive, the
 * weak loss of the zero head is pw * log 2 per token whatever the split, 8 log 2 =
 * 5.5451774444795623 for the default pw = 8 (1 would give 0.693). */
static void check_default_pos_weight(const duet_scores *TB, const char *tb, const char *te) {
    const char *b2 = tmp_file("pw-base.scores"), *e2 = tmp_file("pw-expert.scores");
    REQUIRE(!edit_scores(TB, tb, b2, base_never_top, NULL) && !edit_scores(TB, te, e2, expert_always_top, NULL));
    duet_scores *B = NULL, *E = NULL;
    duet_error err = {0};
    REQUIRE(!duet_scores_open(b2, &B, &err) && !duet_scores_open(e2, &E, &err));
    duet_head_train_params p = {.objective = DUET_HT_WEAK, .epochs = 1, .report_path = tmp_file("pw-report.json")};
    duet_head *h = NULL;
    duet_head_train_result res;
    if (duet_head_train(B, E, &p, &h, &res, &err)) {
        test_fail_at(__FILE__, __LINE__, "train: %s", err.msg);
    } else {
        CHECKF(res.pos_rate == 1.0, "pseudo-label positive rate %g, every token is positive", res.pos_rate);
        json_t *v = first_eval(p.report_path);
        /* the report keeps 7 significant digits */
        CHECKF(v && fabs(json_real_value(v) - 8 * log(2.0)) < 5e-6, "weak loss of the zero head "
               "%.12g, want 8 log 2 = 5.5451774444795623", v ? json_real_value(v) : NAN);
        json_decref(v);
    }
    duet_head_free(h);
    h = NULL;
    duet_scores_close(B);
    /* The same expert, and a base whose argmax is the gold token too: no token is a positive,
     * since a token the base gets right needs no expert. */
    const char *b3 = tmp_file("pw-base-top.scores");
    REQUIRE(!edit_scores(TB, tb, b3, expert_always_top, NULL) && !duet_scores_open(b3, &B, &err));
    p.report_path = NULL;
    if (duet_head_train(B, E, &p, &h, &res, &err))
        test_fail_at(__FILE__, __LINE__, "train: %s", err.msg);
    else
        CHECKF(res.pos_rate == 0.0, "pseudo-label positive rate %g where the base is right everywhere",
               res.pos_rate);
    duet_head_free(h);
    duet_scores_close(B);
    duet_scores_close(E);
}

/* A complete score file written field by field (the layout of learn/scores.h): n_seq
 * sequences of one response token each after a one-token context, F16 hidden states of
 * width hd (none when hd is 0). 0 on success. */
static int write_tiny_scores(const char *path, const char *model, uint64_t vocab_hash, uint64_t ids_hash,
                             int n_seq, int hd, const duet_scores_tok *toks, const float *hidden) {
    uint64_t blk = (sizeof(duet_scores_block) + sizeof(duet_scores_tok) + (uint64_t)hd * 2 + 63) & ~63ull;
    uint64_t idx = DUET_SCORES_HEADER_SIZE + blk * (uint64_t)n_seq;
    size_t size = (size_t)idx + (size_t)n_seq * sizeof(duet_scores_seq);
    uint8_t *buf = calloc(1, size);
    if (!buf) return -1;
    duet_scores_header h = {.version = DUET_SCORES_VERSION, .header_size = DUET_SCORES_HEADER_SIZE,
                            .complete = 1, .hidden_dim = (uint32_t)hd, .n_embd = (uint32_t)(hd ? hd : 2),
                            .n_vocab = 16, .vocab_hash = vocab_hash, .ids_vocab_hash = ids_hash,
                            .ids_n_vocab = 16, .n_ctx = 8, .n_seq = (uint64_t)n_seq,
                            .n_tok = (uint64_t)n_seq, .n_bytes = (uint64_t)n_seq * 3, .index_offset = idx,
                            .n_examples = (uint32_t)n_seq};
    memcpy(h.magic, DUET_SCORES_MAGIC, 8);
    snprintf(h.model_name, sizeof h.model_name, "%s", model);
    snprintf(h.ids_name, sizeof h.ids_name, "%s", vocab_hash == ids_hash ? model : "tiny-base");
    memcpy(buf, &h, sizeof h);
    for (int i = 0; i < n_seq; i++) {
        uint8_t *b = buf + DUET_SCORES_HEADER_SIZE + blk * (uint64_t)i;
        memcpy(b + sizeof(duet_scores_block), &toks[i], sizeof toks[i]);
        for (int j = 0; j < hd; j++) {
            uint16_t x = fp32_to_fp16(hidden[i * hd + j]);
            memcpy(b + sizeof(duet_scores_block) + sizeof(duet_scores_tok) + 2 * j, &x, 2);
        }
        duet_scores_block k = {.magic = {'S', 'E', 'Q', 'B'}, .seq = (uint32_t)i, .n_tok = 1,
                               .n_prompt = 1, .example = (uint32_t)i, .n_bytes = 3};
        k.check = duet_scores_block_check(b + sizeof k, sizeof(duet_scores_tok) + (size_t)hd * 2);
        memcpy(b, &k, sizeof k);
        duet_scores_seq q = {.offset = DUET_SCORES_HEADER_SIZE + blk * (uint64_t)i, .tok_start = (uint64_t)i,
                             .n_tok = 1, .n_prompt = 1, .example = (uint32_t)i, .n_bytes = 3};
        memcpy(buf + idx + (size_t)i * sizeof q, &q, sizeof q);
    }
    FILE *f = fopen(path, "wb");
    int rc = !f || fwrite(buf, 1, size, f) != size;
    if (f && fclose(f)) rc = 1;
    free(buf);
    return rc ? -1 : 0;
}

/* --preset paper reproduces one step of the official head initialisation, by hand. Two
 * sequences of one token each, so the one pass is one batch (of up to 8) and one step.
 * u0 = (0.25, -0.5) stands for the mean output row (what the CLI passes from --base).
 *   token 0: h = (-1, 0.5), base lp -1 < maxlp -0.5 (not its top), expert lp = maxlp = -0.2
 *            (its top): label 1; s = -0.25 - 0.25 = -0.5
 *   token 1: h = (-0.5, 2), base lp = maxlp = -0.3 (its top): label 0; s = -0.125 - 1 = -1.125
 *   loss = mean of 8 z (-log sig s) + (1 - z)(-log sig -s) (positive weight 8);
 *   d/ds_0 = 8 (sig(-0.5) - 1) = 8 (0.37754066879814541 - 1) = -4.9796746496148367
 *   d/ds_1 = sig(-1.125) = 0.24508501313237172
 *   g = (d/ds_0 h_0 + d/ds_1 h_1) / 2
 *     = ((4.9796746496148367 - 0.12254250656618586) / 2, (-2.4898373248074184 + 0.49017002626474344) / 2)
 *     = (2.4285660715243256, -0.99983364927133744)
 *   AdamW step 1 (betas 0.9, 0.999, eps 1e-8, no decay, no clipping): m^ = g, v^ = g^2, so
 *   u -= 2e-5 g / (|g| + 1e-8): u = (0.25 - 2e-5 (1 - 4e-9), -0.5 + 2e-5 (1 - 1e-8))
 *     = (0.24998000000008236, -0.49998000000020004)
 * A positive weight of 1 would give d/ds_0 = -0.62245933120185459 and g_1 = +0.0893 > 0, so
 * u_1 would fall instead of rise; a kept best-validation start would leave u at u0. */
TEST(head_train_paper_preset_one_step_by_hand) {
    const char *bp = tmp_file("paper-b.scores"), *ep = tmp_file("paper-e.scores");
    const duet_scores_tok bt[2] = {{3, -1.0f, -0.5f, 1.0f}, {5, -0.3f, -0.3f, 0.8f}};
    const duet_scores_tok et[2] = {{3, -0.2f, -0.2f, 0.5f}, {5, -0.1f, -0.1f, 0.4f}};
    const float hid[4] = {-1, 0.5f, -0.5f, 2};
    REQUIRE(!write_tiny_scores(bp, "tiny-base", 0x1234, 0x1234, 2, 2, bt, hid));
    REQUIRE(!write_tiny_scores(ep, "tiny-expert", 0x5678, 0x1234, 2, 0, et, NULL));
    duet_error err = {0};
    duet_scores *B = NULL, *E = NULL;
    REQUIRE(duet_scores_open(bp, &B, &err) == DUET_OK);
    REQUIRE(duet_scores_open(ep, &E, &err) == DUET_OK);
    const float u0[2] = {0.25f, -0.5f};
    duet_head_train_params p = {.features = DUET_HEAD_FEAT_ENTROPY, .pos_weight = 1, .lr = 1,
                                .epochs = 9}; /* all overridden by the preset */
    duet_head_train_preset_paper(&p);
    p.u_init = u0;
    duet_head *h = NULL;
    duet_head_train_result res;
    CHECKF(duet_head_train(B, E, &p, &h, &res, &err) == DUET_OK, "%s", err.msg);
    if (h) {
        const float *u = duet_head_u(h);
        CHECK_EQ_INT(duet_head_features(h), DUET_HEAD_FEAT_HIDDEN);
        CHECK_EQ_INT(res.best_step, 1);
        CHECKF(fabs(u[0] - 0.24998000000008236) < 1e-7 && fabs(u[1] - -0.49998000000020004) < 1e-7,
               "u after one step (%.9g, %.9g), want (0.24998, -0.49998)", u[0], u[1]);
    }
    duet_head_free(h);
    duet_scores_close(B);
    duet_scores_close(E);
}

/* Resident kilobytes of this process's mapping that starts at addr (/proc/self/smaps); -1
 * when none is found. */
static long mapping_rss_kb(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    long rss = -1;
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = lo == (unsigned long)(uintptr_t)addr;
            continue;
        }
        if (in && sscanf(line, "Rss: %ld kB", &rss) == 1) break;
    }
    fclose(f);
    return rss;
}

/* Head training streams a score file: with DUET_SCORES_WINDOW at 1 byte every sequence's
 * pages are dropped once read, so after training (and opening, which validates every block)
 * the base file's mapping keeps almost nothing resident, while with the default window all of
 * it stays. The head must be bit-identical either way. */
TEST(head_train_streams_score_files) {
    duet_model *b = load(fixture_random(DT_F32, 71, 0), 2), *e = load(fixture_random(DT_F32, 72, 0), 2);
    REQUIRE(b && e);
    const char *data = tmp_file("stream.jsonl");
    FILE *f = fopen(data, "wb");
    REQUIRE(f);
    for (int i = 0; i < 48; i++)
        fprintf(f, "{\"prompt\": \"Item %d:\", \"response\": \"the quick brown fox jumps over the lazy "
                   "dog %d times, then the dog chases the fox back across the field %d.\"}\n", i, i, 3 * i);
    fclose(f);
    duet_error err = {0};
    REQUIRE(!score(b, NULL, data, 0, tmp_file("stream-b.scores"), NULL, &err));
    REQUIRE(!score(e, b, data, 0, tmp_file("stream-e.scores"), NULL, &err));
    long size_kb = file_size(tmp_file("stream-b.scores")) / 1024;
    duet_head *h[2] = {0};
    long rss[2] = {-1, -1};
    for (int r = 0; r < 2; r++) {
        if (r) setenv("DUET_SCORES_WINDOW", "1", 1);
        duet_scores *B = NULL, *E = NULL;
        int rc = duet_scores_open(tmp_file("stream-b.scores"), &B, &err);
        if (!rc) rc = duet_scores_open(tmp_file("stream-e.scores"), &E, &err);
        unsetenv("DUET_SCORES_WINDOW");
        duet_head_train_params p = {.objective = DUET_HT_WEAK, .epochs = 2, .seed = 5};
        if (!rc) rc = duet_head_train(B, E, &p, &h[r], NULL, &err);
        CHECKF(rc == DUET_OK, "run %d: %s", r, err.msg);
        if (B) rss[r] = mapping_rss_kb(duet_scores_get_header(B));
        duet_scores_close(B);
        duet_scores_close(E);
    }
    CHECKF(size_kb > 512, "the base file is %ld KiB: too small to tell streaming apart", size_kb);
    CHECKF(rss[0] >= size_kb / 2, "whole file: %ld of %ld KiB resident", rss[0], size_kb);
    CHECKF(rss[1] >= 0 && rss[1] <= 64, "streamed: %ld of %ld KiB resident", rss[1], size_kb);
    if (h[0] && h[1]) {
        int n = duet_head_n_embd(h[0]);
        CHECK(n == duet_head_n_embd(h[1]) && !memcmp(duet_head_u(h[0]), duet_head_u(h[1]), (size_t)n * sizeof(float)));
    }
    duet_head_free(h[0]);
    duet_head_free(h[1]);
    duet_model_free(b);
    duet_model_free(e);
}

/* --preset paper's schedule (the official head initialisation): every sequence trained on in
 * file order (so the seed changes nothing), one pass of batches of 8, AdamW at a constant lr
 * without clipping, the last value kept. Adam moves each weight by at most about
 * lr (1 - b1) / sqrt(1 - b2) = 3.16 lr per step, so u stays within 3.2 lr * steps of its start;
 * it must also have moved, and a duet-schedule run (shuffled, best kept) must differ. */
static void check_paper_schedule(const duet_scores *TB, const duet_scores *TE) {
    int E = (int)duet_scores_get_header(TB)->n_embd, n_seq = (int)duet_scores_get_header(TB)->n_seq;
    float *u0 = malloc((size_t)E * sizeof *u0);
    for (int j = 0; j < E; j++) u0[j] = 0.01f * (float)((j % 7) - 3);
    duet_head_train_params p = {.objective = DUET_HT_WEAK, .schedule = DUET_HT_SCHEDULE_PAPER,
                                .lr = 2e-5, .epochs = 1, .batch_seqs = 8, .pos_weight = 1, .u_init = u0};
    duet_head *h[3] = {0};
    duet_head_train_result res[3];
    duet_error err = {0};
    for (int r = 0; r < 3; r++) {
        duet_head_train_params q = p;
        q.seed = (uint64_t)r * 17;
        if (r == 2) q.schedule = DUET_HT_SCHEDULE_DUET;
        if (duet_head_train(TB, TE, &q, &h[r], &res[r], &err)) {
            test_fail_at(__FILE__, __LINE__, "paper schedule run %d: %s", r, err.msg);
            goto out;
        }
    }
    int steps = (n_seq + 7) / 8;
    CHECK_EQ_INT(res[0].n_train_seq, n_seq);
    CHECK_EQ_INT(res[0].best_step, steps);
    CHECK_STR(res[0].best_phase, "weak");
    const float *u = duet_head_u(h[0]), *u1 = duet_head_u(h[1]), *u2 = duet_head_u(h[2]);
    double moved = 0, worst = 0;
    for (int j = 0; j < E; j++) {
        moved = fmax(moved, fabs(u[j] - u0[j]));
        worst = fmax(worst, fabs(u[j] - u0[j]) / (3.2 * 2e-5 * steps));
    }
    CHECKF(moved > 1e-5 && worst <= 1, "paper schedule: u moved by at most %g (bound ratio %g, "
           "%d steps)", moved, worst, steps);
    CHECK(!memcmp(u, u1, (size_t)E * sizeof *u));
    CHECK(memcmp(u, u2, (size_t)E * sizeof *u) != 0);
out:
    for (int r = 0; r < 3; r++) duet_head_free(h[r]);
    free(u0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Heads trained on planted expert scores must find the rule: on held-out text they defer the
 * planted tokens first (routing at 30% closes most of the gap from random to the oracle) and
 * rank the pseudo-label positives first. Swapped roles of base and expert would rank them last. */
static void check_planted_oracle(const duet_scores *TB, const duet_scores *HB, const char *tb, const char *te,
                                 const char *hb, const char *he) {
    int hd = (int)duet_scores_get_header(TB)->hidden_dim;
    float *d = malloc((size_t)hd * sizeof *d);
    int64_t nt = (int64_t)duet_scores_get_header(TB)->n_tok, nh = (int64_t)duet_scores_get_header(HB)->n_tok;
    double *v = malloc((size_t)(nt > nh ? nt : nh) * sizeof *v), *sc = malloc((size_t)nh * sizeof *sc);
    float *hid = malloc((size_t)hd * sizeof *hid);
    uint8_t *zh = malloc((size_t)nh);
    REQUIRE(d && v && sc && hid && zh);
    uint64_t r = 2024;
    for (int j = 0; j < hd; j++) d[j] = (float)((double)(duet_splitmix64(&r) >> 11) * 0x1.0p-53 * 2 - 1);
    /* the threshold: the 70th percentile of d . h over the training tokens (30% planted) */
    int64_t k = 0;
    for (uint64_t q = 0; q < duet_scores_get_header(TB)->n_seq; q++) {
        const uint16_t *bh = duet_scores_seq_hidden(TB, q);
        for (uint32_t t = 0; t < duet_scores_seqs(TB)[q].n_tok; t++, k++) {
            for (int j = 0; j < hd; j++) hid[j] = fp16_to_fp32(bh[(size_t)t * hd + j]);
            v[k] = proj(d, hid, hd);
        }
    }
    qsort(v, (size_t)nt, sizeof *v, cmp_double);
    planted pl = {d, v[(int64_t)(0.7 * (double)nt)]};
    /* the base never has the gold token as its argmax, so the pseudo-labels are the rule */
    const char *tb2 = tmp_file("planted-tb.scores"), *te2 = tmp_file("planted-te.scores"),
               *hb2 = tmp_file("planted-hb.scores"), *he2 = tmp_file("planted-he.scores");
    REQUIRE(!edit_scores(TB, tb, tb2, base_never_top, NULL) && !edit_scores(TB, te, te2, plant_expert, &pl) &&
            !edit_scores(HB, hb, hb2, base_never_top, NULL) && !edit_scores(HB, he, he2, plant_expert, &pl));
    duet_scores *TB2 = NULL, *TE = NULL, *HB2 = NULL, *HE = NULL;
    duet_error err = {0};
    REQUIRE(!duet_scores_open(tb2, &TB2, &err) && !duet_scores_open(te2, &TE, &err) && !duet_scores_open(hb2, &HB2, &err) &&
            !duet_scores_open(he2, &HE, &err));
    int64_t npos = 0;
    k = 0;
    for (uint64_t q = 0; q < duet_scores_get_header(HB)->n_seq; q++) {
        const uint16_t *bh = duet_scores_seq_hidden(HB, q);
        for (uint32_t t = 0; t < duet_scores_seqs(HB)[q].n_tok; t++, k++) {
            for (int j = 0; j < hd; j++) hid[j] = fp16_to_fp32(bh[(size_t)t * hd + j]);
            zh[k] = proj(d, hid, hd) > pl.thr;
            npos += zh[k];
        }
    }
    REQUIRE(npos > 0 && npos < nh);
    /* about 130000 token passes per run: 40 epochs of the random models' few thousand tokens.
     * The nll head starts from zero, not from a weak start: the checkpoint kept is the one that
     * routes best, so after a weak start a broken marginal likelihood would go unseen. */
    int ep = (int)fmin(40, fmax(8, 130000.0 / (double)nt));
    const struct { const char *name; duet_head_train_params p; } runs[] = {
        {"weak", {.objective = DUET_HT_WEAK, .epochs = ep}},
        {"nll", {.objective = DUET_HT_NLL, .weak_epochs = -1, .epochs = 2 * ep, .lr = 1e-2}}, /* no weak start */
        {"gain", {.objective = DUET_HT_GAIN, .epochs = ep}}};
    for (size_t ri = 0; ri < sizeof runs / sizeof runs[0]; ri++) {
        duet_head *h = NULL;
        duet_head_train_result res;
        duet_head_routing hr;
        if (duet_head_train(TB2, TE, &runs[ri].p, &h, &res, &err) || duet_head_eval_scores(h, HB2, HE, &hr, &err)) {
            test_fail_at(__FILE__, __LINE__, "planted %s: %s", runs[ri].name, err.msg);
            duet_head_free(h);
            continue;
        }
        double closed = (hr.random[2] - hr.head[2]) / (hr.random[2] - hr.oracle[2]);
        /* precision of the head's top npos held-out tokens against the pseudo-labels */
        k = 0;
        for (uint64_t q = 0; q < duet_scores_get_header(HB)->n_seq; q++) {
            const uint16_t *bh = duet_scores_seq_hidden(HB, q);
            for (uint32_t t = 0; t < duet_scores_seqs(HB)[q].n_tok; t++, k++) {
                for (int j = 0; j < hd; j++) hid[j] = fp16_to_fp32(bh[(size_t)t * hd + j]);
                sc[k] = duet_head_score(h, hid);
                v[k] = sc[k];
            }
        }
        qsort(v, (size_t)nh, sizeof *v, cmp_double);
        double cut = v[nh - npos];
        int64_t hit = 0, above = 0;
        for (int64_t i = 0; i < nh; i++)
            if (sc[i] >= cut) {
                above++;
                hit += zh[i];
            }
        double prec = (double)hit / (double)above;
        fprintf(stderr, "    planted rule, %s head: %lld of %lld held-out tokens positive; precision "
                "of its top %lld %.3f; routing at 30%% closes %.3f of random -> oracle\n",
                runs[ri].name, (long long)npos, (long long)nh, (long long)above, prec, closed);
        CHECKF(fabs(res.pos_rate - 0.3) < 0.05, "planted %s: pseudo-label positive rate %.3f, the rule "
               "plants 30%% of the tokens", runs[ri].name, res.pos_rate);
        CHECKF(prec >= 0.65, "planted %s: precision %.3f of the head's top tokens", runs[ri].name, prec);
        CHECKF(closed >= 0.65, "planted %s: routing at 30%% %.4f closes %.3f of the gap from random "
               "%.4f to the oracle %.4f", runs[ri].name, hr.head[2], closed, hr.random[2], hr.oracle[2]);
        duet_head_free(h);
    }
    duet_scores_close(TB2);
    duet_scores_close(TE);
    duet_scores_close(HB2);
    duet_scores_close(HE);
    free(d);
    free(v);
    free(sc);
    free(hid);
    free(zh);
}

TEST(train_head_end_to_end) {
    const char *bp = fixture_llama2c("tok105"), *ep = fixture_llama2c("tok361");
    int baby = bp && ep;
    if (!baby) { /* the pipeline still runs on random-weight models */
        bp = fixture_random(DT_F32, 66, 0);
        ep = fixture_random(DT_F32, 67, 0);
    }
    duet_model *b = load(bp, 1), *e = load(ep, 1);
    REQUIRE(b && e);
    const char *tr = tmp_file("e2e-train.txt"), *ho = tmp_file("e2e-heldout.txt");
    /* sanitizer builds run the models ~10x slower: less text there (same seeds) */
#if defined(__SANITIZE_ADDRESS__)
    int small = 1;
#else
    int small = 0;
#endif
    int train_chars = !baby ? 6000 : getenv("DUET_LONG") ? 100000 : small ? 10000 : 20000;
    REQUIRE(!sample_stories(e, 1, train_chars, tr) && !sample_stories(e, 777, baby && !small ? 6000 : 3000, ho));
    duet_error err = {0};
    if (score(b, NULL, tr, 0, tmp_file("e2e-tb.scores"), NULL, &err) ||
        score(e, b, tr, 0, tmp_file("e2e-te.scores"), NULL, &err) ||
        score(b, NULL, ho, 0, tmp_file("e2e-hb.scores"), NULL, &err) ||
        score(e, b, ho, 0, tmp_file("e2e-he.scores"), NULL, &err)) {
        test_fail_at(__FILE__, __LINE__, "score: %s", err.msg);
        duet_model_free(b);
        duet_model_free(e);
        return;
    }
    duet_scores *TB = NULL, *TE = NULL, *HB = NULL, *HE = NULL;
    REQUIRE(!duet_scores_open(tmp_file("e2e-tb.scores"), &TB, &err) && !duet_scores_open(tmp_file("e2e-te.scores"), &TE, &err) &&
            !duet_scores_open(tmp_file("e2e-hb.scores"), &HB, &err) && !duet_scores_open(tmp_file("e2e-he.scores"), &HE, &err));
    static const struct { const char *name; duet_head_train_params p; } runs[] = {
        {"weak, hidden", {.objective = DUET_HT_WEAK, .epochs = 6, .lr = 1e-2}},
        {"nll, hidden+entropy+maxlogp", {.objective = DUET_HT_NLL, .features = 7, .epochs = 3,
                                         .weak_epochs = 3, .weak_lr = 1e-2, .lr = 3e-3}},
        {"gain, hidden+entropy+maxlogp", {.objective = DUET_HT_GAIN, .features = 7}},
    };
    const char *report = tmp_file("e2e-report.json");
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        duet_head_train_params p = runs[r].p;
        p.report_path = report;
        duet_head *h = NULL;
        duet_head_train_result res;
        if (duet_head_train(TB, TE, &p, &h, &res, &err)) {
            test_fail_at(__FILE__, __LINE__, "train (%s): %s", runs[r].name, err.msg);
            continue;
        }
        duet_head_routing hr;
        REQUIRE(!duet_head_eval_scores(h, HB, HE, &hr, &err));
        double bpt = (double)hr.n_tok / (double)hr.n_bytes;
        fprintf(stderr, "    %s: held-out NLL/byte base %.4f expert %.4f; at 10..50%%: collm", runs[r].name,
                hr.base * bpt, hr.expert * bpt);
        for (int k = 0; k < DUET_HT_N_RATES; k++) fprintf(stderr, " %.4f", hr.head[k] * bpt);
        fprintf(stderr, ", random");
        for (int k = 0; k < DUET_HT_N_RATES; k++) fprintf(stderr, " %.4f", hr.random[k] * bpt);
        fprintf(stderr, ", uncertainty");
        for (int k = 0; k < DUET_HT_N_RATES; k++) fprintf(stderr, " %.4f", hr.uncertainty[k] * bpt);
        fprintf(stderr, "\n");
        CHECK(res.n_train_seq > 0 && res.n_val_seq > 0 && res.pos_rate > 0 && res.pos_rate < 1);
        if (baby)
            CHECKF(hr.head[2] < hr.random[2], "%s: held-out routing NLL at 30%% %.4f is not below "
                   "random's %.4f", runs[r].name, hr.head[2], hr.random[2]);
        /* the saved head routes the same after a round trip through its sidecar */
        const char *hp = tmp_file("e2e-head.gguf");
        duet_head *g = NULL;
        duet_head_routing gr;
        REQUIRE(!duet_head_save(h, hp, &err) && !duet_head_load(hp, b, &g, &err));
        REQUIRE(!duet_head_eval_scores(g, HB, HE, &gr, &err));
        CHECK_NEAR(gr.head_mean, hr.head_mean, 1e-12);
        duet_head_free(g);
        duet_head_free(h);
        /* the report: losses per step and routing per evaluation */
        json_error_t je;
        json_t *j = json_load_file(report, 0, &je);
        CHECKF(j && json_array_size(json_object_get(j, "train_loss")) > 0 &&
               json_array_size(json_object_get(j, "evaluations")) > 1 &&
               json_is_number(json_object_get(j, "pseudo_label_positive_rate")) &&
               json_object_get(json_object_get(j, "validation"), "uncertainty"), "report %s", report);
        json_decref(j);
    }
    /* routing quality the models cannot supply on their own (random weights): a planted rule */
    check_planted_oracle(TB, HB, tmp_file("e2e-tb.scores"), tmp_file("e2e-te.scores"),
                         tmp_file("e2e-hb.scores"), tmp_file("e2e-he.scores"));
    check_default_pos_weight(TB, tmp_file("e2e-tb.scores"), tmp_file("e2e-te.scores"));
    check_paper_schedule(TB, TE);
    duet_scores_close(TB);
    duet_scores_close(TE);
    duet_scores_close(HB);
    duet_scores_close(HE);
    duet_model_free(b);
    duet_model_free(e);
}

/* ---- the CLI --------------------------------------------------------------------------------- */
static int run_cli(const char *args, char *err, size_t cap) {
    return fixture_run_cli(args, "train-cli", err, cap);
}

TEST(train_cli_score_and_head_train) {
    if (!getenv("DUET_BIN")) SKIP("DUET_BIN not set (run through make test)");
    const char *b = fixture_random(DT_F32, 68, 0), *e = fixture_random(DT_F32, 69, 0);
    REQUIRE(b && e);
    const char *data = tmp_file("cli.jsonl"), *bad = tmp_file("cli-bad.jsonl");
    char text[4096] = "";
    for (int i = 0; i < 6; i++) strcat(text, k_jsonl);
    write_text(data, text);
    write_text(bad, "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\", \"response\": \"b\"}\n{oops\n");
    char args[4096], err[8192];
    snprintf(args, sizeof args, "score -m '%s' -d '%s' -o '%s'", b, bad, tmp_file("cli-bad.scores"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 1);
    CHECKF(strstr(err, "cli-bad.jsonl:3: invalid JSON") && !strchr(strchr(err, '\n') + 1, '\n'),
           "stderr: %s", err);
    snprintf(args, sizeof args, "score -m '%s' -d '%s' -o '%s' --skip-bad", b, bad, tmp_file("cli-bad.scores"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 0);
    CHECKF(strstr(err, "skipped 1 bad example") && strstr(err, "2 sequences"), "stderr: %s", err);
    snprintf(args, sizeof args, "score -m '%s' -d '%s' -o '%s' -c 24 --quiet", b, data, tmp_file("cli-b.scores"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 0);
    CHECKF(strstr(err, "were cut") && strstr(err, "context of 24"), "truncation must be reported: %s", err);
    snprintf(args, sizeof args, "score -m '%s' --tokenizer-of '%s' -d '%s' -o '%s' -c 24 --quiet", e, b, data,
             tmp_file("cli-e.scores"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 0);
    /* hidden states: stored by default for a model's own tokens (the base file head training
     * reads them from), not for --tokenizer-of unless asked for */
    snprintf(args, sizeof args, "score -m '%s' --tokenizer-of '%s' -d '%s' -o '%s' -c 24 --hidden --quiet", e,
             b, data, tmp_file("cli-eh.scores"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 0);
    {
        duet_scores *sb = NULL, *se = NULL, *sh = NULL;
        duet_error e2 = {0};
        REQUIRE(!duet_scores_open(tmp_file("cli-b.scores"), &sb, &e2) &&
                !duet_scores_open(tmp_file("cli-e.scores"), &se, &e2) &&
                !duet_scores_open(tmp_file("cli-eh.scores"), &sh, &e2));
        const duet_scores_header *hb = duet_scores_get_header(sb), *he = duet_scores_get_header(se),
                                 *hh = duet_scores_get_header(sh);
        CHECKF(hb->hidden_dim == hb->n_embd && hb->hidden_dim > 0, "base file: hidden_dim %u", hb->hidden_dim);
        CHECKF(he->hidden_dim == 0, "--tokenizer-of file: hidden_dim %u", he->hidden_dim);
        CHECKF(hh->hidden_dim == hh->n_embd && hh->hidden_dim > 0, "--hidden: hidden_dim %u", hh->hidden_dim);
        duet_scores_close(sb);
        duet_scores_close(se);
        duet_scores_close(sh);
    }
    snprintf(args, sizeof args, "head train --base-scores '%s' --expert-scores '%s' -o '%s' --report '%s' "
             "--features hidden,maxlogp --defer-cost 0.1 --epochs 2 --seed 3", tmp_file("cli-b.scores"),
             tmp_file("cli-e.scores"), tmp_file("cli-head.gguf"), tmp_file("cli-report.json"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 0);
    CHECKF(strstr(err, "collm") && strstr(err, "uncert."), "summary: %s", err);
    CHECK(file_size(tmp_file("cli-head.gguf")) > 0 && file_size(tmp_file("cli-report.json")) > 0);
    /* --preset paper needs the base model for u's start: refused, naming the model the file
     * was scored with */
    snprintf(args, sizeof args, "head train --preset paper --base-scores '%s' --expert-scores '%s' -o '%s'",
             tmp_file("cli-b.scores"), tmp_file("cli-e.scores"), tmp_file("cli-paper.gguf"));
    {
        duet_scores *sb = NULL;
        duet_error e2 = {0};
        REQUIRE(!duet_scores_open(tmp_file("cli-b.scores"), &sb, &e2));
        char name[160];
        snprintf(name, sizeof name, "'%s'", duet_scores_get_header(sb)->model_name);
        duet_scores_close(sb);
        CHECKF(run_cli(args, err, sizeof err) == 2 && strstr(err, "--base MODEL") && strstr(err, name) &&
               access(tmp_file("cli-paper.gguf"), F_OK) != 0, "stderr: %s", err);
    }
    /* the head-only weak-supervision baseline under its own flag */
    snprintf(args, sizeof args, "train collm --weak-supervision-head --base-scores '%s' --expert-scores '%s' "
             "--head-out '%s' --quiet", tmp_file("cli-b.scores"), tmp_file("cli-e.scores"), tmp_file("cli-weak.gguf"));
    CHECKF(run_cli(args, err, sizeof err) == 0 && file_size(tmp_file("cli-weak.gguf")) > 0, "%s", err);
    snprintf(args, sizeof args, "run -m '%s' --expert '%s' --head '%s' -p 'ab' -n 4 --temp 0 --quiet", b, e,
             tmp_file("cli-head.gguf"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 0);
    /* mismatched files: one line naming the first difference */
    snprintf(args, sizeof args, "head train --base-scores '%s' --expert-scores '%s' -o '%s'",
             tmp_file("cli-b.scores"), tmp_file("cli-bad.scores"), tmp_file("cli-head2.gguf"));
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 1);
    CHECKF(strstr(err, "sequences") && access(tmp_file("cli-head2.gguf"), F_OK) != 0, "stderr: %s", err);
    snprintf(args, sizeof args, "head train --base-scores x --expert-scores y -o z --features hidden,bogus");
    CHECK_EQ_INT(run_cli(args, err, sizeof err), 2);
}
