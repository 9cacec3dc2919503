/* test_lora_cli.c: --lora / --lora-scaled (and the expert's) on duet score, tune and bench.
 * The analytic case: an adapter at scale 0 adds 0 * B(Ax) = +0 to every product, so every
 * result is bit for bit the bare model's. At scale 1 the fixture adapter (elements up to
 * 0.25 on every matrix) moves the logits far (test_lora.c), so the results must differ.
 * Adapters that cannot load stop the command with the file named; flags that cannot apply
 * (the expert's on a one-model command, any on score --url) are refused as usage errors.
 * A partial score file remembers the adapters it was scored with. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "format/quant.h"
#include "duet.h"
#include "fixtures.h"
#include "test.h"

static int have_bin(void) {
    const char *b = getenv("DUET_BIN");
    return b && access(b, X_OK) == 0;
}
#define NEED_BIN() do { if (!have_bin()) SKIP("DUET_BIN not set (run through make test)"); } while (0)

static int cli(const char *args, char *err, size_t cap) { return fixture_run_cli(args, "lora-cli", err, cap); }



static const char *k_text =
    "Once upon a time there was a little dog named Max who liked to run in the park.\n\n"
    "One day Max found a red ball under a tree, and he played with it until the sun went down.\n\n"
    "His friend the cat watched from the fence and asked if she could play too.\n";

/* duet score: the score file (log-probabilities only, --no-hidden, so a differing byte is a
 * differing log-probability or statistic) with --lora-scaled FILE 0 is the bare model's byte
 * for byte; with --lora it differs. */
TEST(lora_cli_score) {
    NEED_BIN();
    const char *m = fixture_random(DT_F32, 5, 0), *ad = fixture_lora("lcli-score.gguf", 4, 8, DT_F32, LORA_GOOD);
    const char *data = fixture_write_text("lcli-score.txt", k_text);
    REQUIRE(m && ad && data);
    char out[3][600]; /* own buffers: test_path's are reused */
    for (int i = 0; i < 3; i++) snprintf(out[i], sizeof out[i], "%s/lcli-%d.scores", test_tmpdir(), i);
    const char *flags[3] = {"", "--lora-scaled", "--lora"}, *scale[3] = {"", "0", ""};
    static char args[4096], err[4096];
    for (int i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "score -m '%s' -d '%s' -o '%s' -c 32 --no-hidden --quiet -t 1 %s %s%s%s %s", m,
                 data, out[i], flags[i], i ? "'" : "", i ? ad : "", i ? "'" : "", scale[i]);
        CHECKF(cli(args, err, sizeof err) == 0, "%s: %s", args, err);
    }
    CHECKF(fixture_same_file(out[0], out[1]), "--lora-scaled FILE 0 changed the score file");
    CHECKF(!fixture_same_file(out[0], out[2]) && access(out[2], R_OK) == 0, "--lora left the score file unchanged");
    /* a bad adapter: exit 1, the file named; flags that cannot apply: exit 2 */
    const char *bad = fixture_lora("lcli-bad-arch.gguf", 4, 8, DT_F32, LORA_BAD_ARCH);
    REQUIRE(bad);
    snprintf(args, sizeof args, "score -m '%s' -d '%s' -o '%s' --quiet --lora '%s'", m, data, out[2], bad);
    CHECK_EQ_INT(cli(args, err, sizeof err), 1);
    CHECKF(strstr(err, "lcli-bad-arch.gguf") && strstr(err, "general.architecture"), "%s", err);
    snprintf(args, sizeof args, "score -m '%s' -d '%s' -o '%s' --quiet --lora /nonexistent/lcli.gguf", m, data,
             out[2]);
    CHECK_EQ_INT(cli(args, err, sizeof err), 1);
    CHECKF(strstr(err, "/nonexistent/lcli.gguf"), "%s", err);
    snprintf(args, sizeof args, "score --url http://127.0.0.1:9 --tokenizer-of '%s' -d '%s' -o '%s' --lora '%s'",
             m, data, out[2], ad);
    CHECK_EQ_INT(cli(args, err, sizeof err), 2);
    CHECKF(strstr(err, "--lora") && strstr(err, "--url"), "%s", err);
    snprintf(args, sizeof args, "score -m '%s' -d '%s' -o '%s' --expert-lora '%s'", m, data, out[2], ad);
    CHECK_EQ_INT(cli(args, err, sizeof err), 2);
    CHECKF(strstr(err, "--expert-lora"), "%s", err);
}

/* The tune CSV without its tokens_per_second column (the 6th: timing is not a result). */
static char *tune_csv(const char *prefix) {
    char p[4200];
    snprintf(p, sizeof p, "%s.csv", prefix);
    char *s = fixture_read_file(p, NULL);
    if (!s) return NULL;
    char *o = s;
    int f = 0;
    for (char *c = s; *c; c++) {
        if (*c == '\n') f = 0;
        else if (*c == ',') f++;
        if (f != 5 || *c == '\n') *o++ = *c; /* drops field 5 (0-based) and the comma before it */
    }
    *o = 0;
    return s;
}

/* duet tune (task nll): the curve (eta, deferral, NLL per byte, expert calls per portion) with
 * both --lora-scaled FILE 0 and --expert-lora-scaled FILE 0 is the bare models'. Each flag
 * reaches its own model: the base's adapter moves the candidate thresholds (they come from
 * the head on the base's hidden states); the expert's leaves them and the portion-0 NLL (no
 * token deferred: the expert is never asked) as they were, and moves the NLL where tokens
 * are deferred. */
TEST(lora_cli_tune) {
    NEED_BIN();
    const char *bp = fixture_random(DT_F32, 51, 0), *xp = fixture_random(DT_F32, 52, 0);
    const char *ad = fixture_lora("lcli-tune.gguf", 4, 8, DT_F32, LORA_GOOD), *data = fixture_write_text("lcli-tune.txt", k_text);
    REQUIRE(bp && xp && ad && data);
    duet_model *b = fixture_load(bp);
    REQUIRE(b);
    duet_head *h = fixture_random_head(b, 13, 4.0f);
    const char *head = test_path(test_tmpdir(), "lcli-tune-head.gguf");
    duet_error e = {0};
    REQUIRE(h && !duet_head_save(h, head, &e));
    duet_head_free(h);
    duet_model_free(b);
    static char args[6000], err[4096], pre[4][600];
    const char *extra[4] = {"", "--lora-scaled '%s' 0 --expert-lora-scaled '%s' 0", "--lora '%s'",
                            "--expert-lora '%s'"};
    char *csv[4] = {0};
    for (int i = 0; i < 4; i++) {
        char x[1400];
        snprintf(pre[i], sizeof pre[i], "%s/lcli-tune-%d", test_tmpdir(), i);
        snprintf(x, sizeof x, extra[i], ad, ad);
        snprintf(args, sizeof args, "tune -m '%s' --expert '%s' --head '%s' --task nll --data '%s' -c 32 "
                 "--portions 0,0.3,0.6 --calib 2 --no-store --quiet -t 1 -o '%s' %s", bp, xp, head, data, pre[i], x);
        CHECKF(cli(args, err, sizeof err) == 0, "%s: %s", args, err);
        csv[i] = tune_csv(pre[i]);
        CHECKF(csv[i] != NULL, "%s.csv was not written", pre[i]);
    }
    double eta[4][3], nll[4][3];
    if (csv[0] && csv[1] && csv[2] && csv[3]) {
        CHECKF(!strcmp(csv[0], csv[1]), "scale 0 changed the curve:\n%s\nvs\n%s", csv[1], csv[0]);
        for (int i = 0; i < 4; i++) {
            const char *l = strchr(csv[i], '\n');
            for (int k = 0; k < 3; k++, l = l ? strchr(l + 1, '\n') : NULL) {
                double q = -1;
                REQUIRE(l && sscanf(l + 1, "%lf,%lf,%*f,%lf", &q, &eta[i][k], &nll[i][k]) == 3);
                CHECK_NEAR(q, 0.3 * k, 1e-9);
            }
        }
        CHECKF(eta[2][1] != eta[0][1] && eta[2][2] != eta[0][2], "--lora left the thresholds: %g %g",
               eta[2][1], eta[2][2]);
        CHECKF(eta[3][1] == eta[0][1] && eta[3][2] == eta[0][2] && nll[3][0] == nll[0][0],
               "--expert-lora changed what only the base decides:\n%s", csv[3]);
        CHECKF(nll[3][1] != nll[0][1] && nll[3][2] != nll[0][2], "--expert-lora left the NLL:\n%s", csv[3]);
    }
    for (int i = 0; i < 4; i++) free(csv[i]);
    const char *bad = fixture_lora("lcli-bad-arch.gguf", 4, 8, DT_F32, LORA_BAD_ARCH);
    REQUIRE(bad);
    for (int x = 0; x < 2; x++) {
        snprintf(args, sizeof args, "tune -m '%s' --expert '%s' --head '%s' --task nll --data '%s' --no-store "
                 "--quiet -o '%s' %s '%s'", bp, xp, head, data, pre[0], x ? "--expert-lora" : "--lora", bad);
        CHECK_EQ_INT(cli(args, err, sizeof err), 1);
        CHECKF(strstr(err, "lcli-bad-arch.gguf") && strstr(err, "general.architecture"), "%s", err);
    }
}

/* `$DUET_BIN ARGS` with stdout into out[cap]; the exit status (-1 when it could not run). */
static int cli_out(const char *args, char *out, size_t cap) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>/dev/null </dev/null", getenv("DUET_BIN"), args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* duet bench: with adapters the rows name them, FILE:SCALE joined by '+' (a lora column after
 * threads in markdown and CSV, an array in JSON); without, no column and an empty array. A bad
 * adapter stops it with the file named; --expert-lora does not apply. */
TEST(lora_cli_bench) {
    NEED_BIN();
    const char *m = fixture_random(DT_F32, 5, 0), *ad = fixture_lora("lcli-bench.gguf", 4, 8, DT_F32, LORA_GOOD);
    REQUIRE(m && ad);
    static char out[16384], args[4096], err[4096];
    const char *common = "-p 8 -n 4 -r 1 -t 1";
    snprintf(args, sizeof args, "bench -m '%s' %s --lora '%s' --lora-scaled '%s' 0.5", m, common, ad, ad);
    CHECKF(cli_out(args, out, sizeof out) == 0, "%s", args);
    CHECKF(strstr(out, "| model | size | params | threads | lora | test |"), "header: %s", out);
    CHECKF(strstr(out, " | 1 | lcli-bench.gguf:1+lcli-bench.gguf:0.5 | pp8 |") &&
           strstr(out, " | 1 | lcli-bench.gguf:1+lcli-bench.gguf:0.5 | tg4 |"), "rows: %s", out);
    /* the rest with --batch, which measures no bandwidth or FMA peak (seconds each) */
    const char *batch = "--batch 1 -p 8 -n 4 -r 1 -t 1";
    snprintf(args, sizeof args, "bench -m '%s' %s -o csv --lora-scaled '%s' 0.25", m, batch, ad);
    CHECKF(cli_out(args, out, sizeof out) == 0, "%s", args);
    CHECKF(!strncmp(out, "model,size_bytes,params,threads,lora,pp,", 40) && strstr(out, ",1,lcli-bench.gguf:0.25,8,4,1,"),
           "csv: %s", out);
    snprintf(args, sizeof args, "bench -m '%s' %s -o json --lora-scaled '%s' 0.25", m, batch, ad);
    CHECKF(cli_out(args, out, sizeof out) == 0, "%s", args);
    CHECKF(strstr(out, "\"lora\": [{\"file\": \"") && strstr(out, "lcli-bench.gguf\", \"scale\": 0.25}]"), "json: %s",
           out);
    snprintf(args, sizeof args, "bench -m '%s' %s -o json", m, batch);
    CHECKF(cli_out(args, out, sizeof out) == 0, "%s", args);
    CHECKF(strstr(out, "\"lora\": []"), "json without adapters: %s", out);
    snprintf(args, sizeof args, "bench -m '%s' %s", m, batch);
    CHECKF(cli_out(args, out, sizeof out) == 0 && !strstr(out, "lora") && strstr(out, "| threads | PP |"),
           "md without adapters: %s", out);
    const char *bad = fixture_lora("lcli-bad-arch.gguf", 4, 8, DT_F32, LORA_BAD_ARCH);
    REQUIRE(bad);
    snprintf(args, sizeof args, "bench -m '%s' %s --lora '%s'", m, common, bad);
    CHECK_EQ_INT(cli(args, err, sizeof err), 1);
    CHECKF(strstr(err, "lcli-bad-arch.gguf") && strstr(err, "general.architecture"), "%s", err);
    snprintf(args, sizeof args, "bench -m '%s' %s --expert-lora '%s'", m, common, ad);
    CHECK_EQ_INT(cli(args, err, sizeof err), 2);
    CHECKF(strstr(err, "--expert-lora"), "%s", err);
}

static int stop_after(void *ud, const duet_scores_progress *p) {
    int *left = ud;
    (void)p;
    return --*left <= 0;
}

/* A partial score file records the adapters (duet_model_lora_hash: 0 without any): one made
 * without an adapter is not resumed with one (refused, naming the file), while one made with
 * it resumes to the file an uninterrupted run writes. */
TEST(lora_score_resume_needs_the_same_adapters) {
    const char *mp = fixture_random(DT_F32, 5, 0), *ad = fixture_lora("lcli-resume.gguf", 4, 8, DT_F32, LORA_GOOD);
    const char *data = fixture_write_text("lcli-resume.txt", k_text);
    REQUIRE(mp && ad && data);
    duet_model *bare = fixture_load(mp), *with = fixture_load(mp);
    duet_lora *a = NULL;
    duet_error err = {0};
    REQUIRE(bare && with && !duet_lora_load(ad, with, &a, &err) && !duet_model_add_lora(with, a, 1, &err));
    CHECK(duet_model_lora_hash(bare) == 0 && duet_model_lora_hash(with) != 0);
    duet_dataset d;
    REQUIRE(!duet_dataset_load(data, NULL, &d, &err));
    char whole[600], cut[600], partial[700];
    snprintf(whole, sizeof whole, "%s/lcli-whole.scores", test_tmpdir());
    snprintf(cut, sizeof cut, "%s/lcli-cut.scores", test_tmpdir());
    snprintf(partial, sizeof partial, "%s.partial", cut);
    duet_scores_stats st;
    duet_scores_params p = {.n_ctx = 16, .no_hidden = 1, .parallel = 1};
    REQUIRE(!duet_scores_compute(with, &d, &p, whole, &st, &err));
    CHECKF(st.n_seq > 3, "%d sequences: too few to stop half-way", st.n_seq);
    int left = 2;
    p.progress = stop_after;
    p.ud = &left;
    CHECK_EQ_INT(duet_scores_compute(bare, &d, &p, cut, &st, &err), DUET_SCORES_STOPPED);
    p.progress = NULL;
    CHECK_EQ_INT(duet_scores_compute(with, &d, &p, cut, &st, &err), DUET_ERR_ARG);
    CHECKF(strstr(err.msg, "lcli-cut.scores.partial") && strstr(err.msg, "remove it"), "%s", err.msg);
    remove(partial);
    left = 2;
    p.progress = stop_after;
    CHECK_EQ_INT(duet_scores_compute(with, &d, &p, cut, &st, &err), DUET_SCORES_STOPPED);
    p.progress = NULL;
    CHECK_EQ_INT(duet_scores_compute(with, &d, &p, cut, &st, &err), DUET_OK);
    CHECKF(st.n_resumed_seq == 2, "resumed %lld sequences, want the 2 written", (long long)st.n_resumed_seq);
    CHECKF(fixture_same_file(whole, cut), "the resumed file differs from the uninterrupted one");
    duet_dataset_free(&d);
    duet_model_free(with);
    duet_model_free(bare);
    duet_lora_free(a);
}
