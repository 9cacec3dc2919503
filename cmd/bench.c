/* bench.c: `duet bench`: prompt processing (ppN: one batch of N tokens into an empty
 * context) and generation (tgN: N tokens one at a time) in tokens/s, mean ± sd over
 * repetitions, as llama-bench reports them; plus the share of each test's limit: for
 * generation the memory bandwidth (weight bytes streamed per token vs bandwidth measured
 * here), for prompt processing the FP32 FMA peak measured here (FLOPs per token vs peak;
 * int8 kernels can pass 100%). With -ctk / -ctv other than f32 the rows gain type_k and
 * type_v columns, as llama-bench shows them only when they are not its default. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

#define MAXL 16

static void usage(FILE *f) {
    fprintf(f, "usage: duet bench -m MODEL [-p 512[,..]] [-n 128[,..]] [-t 2[,..]] [-r REPS] "
               "[-ctk f32|f16] [-ctv f32|f16] [-o md|csv] [--mmap] [--no-repack]\n");
}

static int g_type_k = DUET_KV_F32, g_type_v = DUET_KV_F32; /* -ctk, -ctv */

static int run_test(duet_model *m, int n_prompt, int n_gen, double *tps) {
    duet_session *s = NULL;
    duet_error err = {0};
    duet_session_params sp = {.n_ctx = n_prompt + n_gen + 1, .n_batch = n_prompt > 0 ? n_prompt : 1,
                              .type_k = g_type_k, .type_v = g_type_v};
    if (duet_session_new(m, &sp, &s, &err)) {
        fprintf(stderr, "duet bench: %s\n", err.msg);
        return 1;
    }
    int n_vocab = duet_model_hparams(m)->n_vocab;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(n_prompt > 0 ? n_prompt : 1));
    unsigned x = 12345;
    for (int i = 0; i < (n_prompt > 0 ? n_prompt : 1); i++) {
        x = x * 1103515245u + 12345u;
        toks[i] = (int32_t)((x >> 8) % (unsigned)n_vocab);
    }
    int rc = 0;
    double t0 = duet_time_s();
    if (n_prompt > 0) {
        rc = duet_session_eval(s, toks, n_prompt, 0, &err);
    } else {
        int32_t t = duet_token_bos(m) >= 0 ? duet_token_bos(m) : 0;
        for (int i = 0; !rc && i < n_gen; i++) {
            rc = duet_session_eval(s, &t, 1, 0, &err);
            if (!rc) t = duet_argmax(duet_session_logits(s, -1), n_vocab);
        }
    }
    double dt = duet_time_s() - t0;
    if (rc) fprintf(stderr, "duet bench: %s\n", err.msg);
    *tps = (n_prompt > 0 ? n_prompt : n_gen) / dt;
    free(toks);
    duet_session_free(s);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    const char *model_path = NULL, *fmt = "md";
    int pl[MAXL] = {512}, nl[MAXL] = {128}, tl[MAXL] = {2}, np = 1, nn = 1, nt = 1, reps = 5;
    int use_mmap = 0, no_repack = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--mmap")) { use_mmap = 1; continue; }
        if (!strcmp(a, "--no-repack")) { no_repack = 1; continue; }
        if (!(v = arg_value("bench", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "-p")) { if (!(np = arg_int_list("bench", a, v, pl, MAXL))) return 2; }
        else if (!strcmp(a, "-n")) { if (!(nn = arg_int_list("bench", a, v, nl, MAXL))) return 2; }
        else if (!strcmp(a, "-t")) { if (!(nt = arg_int_list("bench", a, v, tl, MAXL))) return 2; }
        else if (!strcmp(a, "-r")) { if (!arg_int("bench", a, v, 1, 1000, &reps)) return 2; }
        else if (!strcmp(a, "-o")) fmt = v;
        else if (!strcmp(a, "-ctk") || !strcmp(a, "--cache-type-k")) { if (!arg_cache_type("bench", a, v, &g_type_k)) return 2; }
        else if (!strcmp(a, "-ctv") || !strcmp(a, "--cache-type-v")) { if (!arg_cache_type("bench", a, v, &g_type_v)) return 2; }
        else {
            fprintf(stderr, "duet bench: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path || (strcmp(fmt, "md") && strcmp(fmt, "csv"))) { usage(stderr); return 2; }
    int csv = !strcmp(fmt, "csv"), kv = g_type_k != DUET_KV_F32 || g_type_v != DUET_KV_F32;
    char kvcol[32] = ""; /* the type columns of a row, when shown */
    if (kv) snprintf(kvcol, sizeof kvcol, csv ? "%s,%s," : " %s | %s |", cache_type_name(g_type_k),
                     cache_type_name(g_type_v));
    if (csv) printf("model,size_bytes,params,threads,%stest,tps_mean,tps_sd,limit_tps,share\n",
                    kv ? "type_k,type_v," : "");
    else {
        printf("| model | size | params | threads |%s test | t/s | share of limit |\n",
               kv ? " type_k | type_v |" : "");
        printf("| --- | ---: | ---: | ---: |%s --- | ---: | --- |\n", kv ? " --- | --- |" : "");
    }
    for (int ti = 0; ti < nt; ti++) {
        duet_error err = {0};
        duet_model *m = NULL;
        duet_model_params mp = {.n_threads = tl[ti], .use_mmap = use_mmap,
                                  .no_repack = no_repack};
        if (duet_model_load(model_path, &mp, &m, &err)) {
            fprintf(stderr, "duet bench: %s\n", err.msg);
            return 1;
        }
        const duet_hparams *hp = duet_model_hparams(m);
        double bw = duet_memory_bandwidth(tl[ti], (size_t)1 << 30, 3);
        double bpt = (double)duet_model_bytes_per_token(m);
        double peak = np > 0 ? duet_fma_peak(tl[ti]) : 0; /* FLOP/s, for the pp rows */
        for (int k = 0; k < np + nn; k++) {
            int is_pp = k < np, n = is_pp ? pl[k] : nl[k - np];
            if (n <= 0) continue;
            double warm, sum = 0, sum2 = 0, tps;
            if (run_test(m, is_pp ? n : 0, is_pp ? 0 : (n < 16 ? n : 16), &warm)) { duet_model_free(m); return 1; }
            for (int r = 0; r < reps; r++) {
                if (run_test(m, is_pp ? n : 0, is_pp ? 0 : n, &tps)) { duet_model_free(m); return 1; }
                sum += tps;
                sum2 += tps * tps;
            }
            /* this machine's bandwidth drifts from minute to minute: measure it again right
             * after the test and keep the higher figure, so the share is not flattered */
            if (!is_pp) bw = fmax(bw, duet_memory_bandwidth(tl[ti], (size_t)1 << 30, 3));
            double mean = sum / reps, sd = reps > 1 ? sqrt(fmax(0, (sum2 - sum * sum / reps) / (reps - 1))) : 0;
            /* tokens/s if weights streamed at full bandwidth (tg), or if the prompt's
             * arithmetic ran at the FP32 FMA peak (pp; the mean position is (n + 1) / 2) */
            double fpt = duet_model_flops_per_token(m, (n + 1) / 2);
            double limit = is_pp ? (fpt > 0 ? peak / fpt : 0) : bw / bpt;
            char test[32];
            snprintf(test, sizeof test, "%s%d", is_pp ? "pp" : "tg", n);
            if (csv)
                printf("%s,%llu,%llu,%d,%s%s,%.3f,%.3f,%.3f,%.4f\n", hp->name,
                       (unsigned long long)hp->weight_bytes, (unsigned long long)hp->n_params,
                       tl[ti], kvcol, test, mean, sd, limit, limit > 0 ? mean / limit : 0);
            else {
                char share[96] = "-";
                if (limit > 0 && is_pp)
                    snprintf(share, sizeof share, "%.1f%% of %.1f t/s (FMA peak %.0f GFLOP/s, "
                             "%.2f GFLOP/token)", 100 * mean / limit, limit, peak / 1e9, fpt / 1e9);
                else if (limit > 0)
                    snprintf(share, sizeof share, "%.1f%% of %.1f t/s (%.1f GB/s, %.0f MB/token)",
                             100 * mean / limit, limit, bw / 1e9, bpt / 1e6);
                printf("| %s | %.2f GiB | %.2f B | %d |%s %s | %.2f ± %.2f | %s |\n", hp->name,
                       hp->weight_bytes / (double)(1 << 30), hp->n_params / 1e9, tl[ti], kvcol,
                       test, mean, sd, share);
            }
            fflush(stdout);
        }
        duet_model_free(m);
    }
    return 0;
}
