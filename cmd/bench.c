/* bench.c: `duet bench`: prompt processing (ppN: one batch of N tokens into an empty
 * context) and generation (tgN: N tokens one at a time) in tokens/s, mean ± sd over
 * repetitions, as llama-bench reports them; plus the share of each test's limit: for
 * generation the memory bandwidth (weight bytes streamed per token vs bandwidth measured
 * here), for prompt processing the FP32 FMA peak measured here (FLOPs per token vs peak;
 * int8 kernels can pass 100%). With -ctk / -ctv other than f32 the rows gain type_k and
 * type_v columns, as llama-bench shows them only when they are not its default; with
 * --lora / --lora-scaled (llama.cpp's tools' names; llama-bench has none) a lora column names
 * the adapters, applied unmerged to the benchmarked model.
 * With --batch (llama-batched-bench's -npl) it measures B sequences decoded together
 * instead, in llama-batched-bench's columns: see bench_batch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

#define MAXL 16
#define MAX_SEQS 256 /* --batch: sessions at once (llama-batched-bench has no bound) */
#define MIN(a, b) ((a) < (b) ? (a) : (b))

enum { FMT_MD, FMT_CSV, FMT_JSON };

static void usage(FILE *f) {
    fprintf(f, "usage: duet bench -m MODEL [-p 512[,..]] [-n 128[,..]] [-t 2[,..]] [-r REPS] "
               "[--batch|-npl 1,2,4,8] [-ctk f32|f16] [-ctv f32|f16] [-o md|csv|json] [--mmap] "
               "[--no-repack] [--lora FILE | --lora-scaled FILE S]...\n");
    lora_opts_usage(f);
    fputs("  (--lora: the benchmarked model's, named in a lora column; no --expert-lora here)\n", f);
}

typedef struct bench_opts {
    const char *model_path;
    int fmt, reps, use_mmap, no_repack;
    int pl[MAXL], nl[MAXL], tl[MAXL], bl[MAXL], np, nn, nt, nb; /* nb 0: no --batch */
    lora_opts lora;
} bench_opts;

static int g_type_k = DUET_KV_F32, g_type_v = DUET_KV_F32; /* -ctk, -ctv */
static int g_rows;                                          /* rows printed (json commas) */

/* A prompt of n pseudo-random ids, one stream per seed (the same for every run). */
static void fill_tokens(int32_t *toks, int n, unsigned seed, int n_vocab) {
    unsigned x = seed;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        toks[i] = (int32_t)((x >> 8) % (unsigned)n_vocab);
    }
}

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
    fill_tokens(toks, n_prompt > 0 ? n_prompt : 1, 12345, n_vocab);
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

/* ---- --batch: llama-batched-bench's test ------------------------------------------------
 * B sessions; their B prompts of pp tokens (different ids per sequence) in one
 * duet_session_eval_batch, then tg steps of one token per sequence, each one
 * duet_session_eval_batch and the logits of every sequence (duet_session_logits_batch, as
 * llama.cpp computes them for every sequence) whose argmax is the sequence's next token.
 * The first generated step feeds each sequence a pseudo-random id: the prompt's own logits
 * are not computed, as llama-bench's pp test leaves them out too. */
static int run_batch(duet_model *m, int B, int pp, int tg, double *t_pp, double *t_tg) {
    duet_error err = {0};
    int V = duet_model_hparams(m)->n_vocab, rc = 0;
    long rows = (long)B * pp;
    duet_session_params sp = {.n_ctx = pp + tg, .n_batch = (int)(rows > B ? MIN(rows, 1 << 24) : B),
                              .type_k = g_type_k, .type_v = g_type_v};
    duet_session **ss = calloc((size_t)B, sizeof *ss);
    duet_batch_seq *seqs = calloc((size_t)B, sizeof *seqs);
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)B * (size_t)(pp + 1)), *cur;
    if (!ss || !seqs || !toks) {
        fprintf(stderr, "duet bench: out of memory for %d sequences\n", B);
        rc = 1;
    }
    for (int j = 0; !rc && j < B; j++) {
        if ((rc = duet_session_new(m, &sp, &ss[j], &err))) break;
        /* pp prompt ids and then the first generated input, seeded per sequence */
        fill_tokens(toks + (size_t)j * (pp + 1), pp + 1, 12345u + 7919u * (unsigned)j, V);
        seqs[j] = (duet_batch_seq){.session = ss[j], .tokens = toks + (size_t)j * (pp + 1), .n = pp};
    }
    double t0 = duet_time_s();
    if (!rc && pp > 0) rc = duet_session_eval_batch(seqs, B, &err);
    *t_pp = duet_time_s() - t0;
    t0 = duet_time_s();
    for (int i = 0; !rc && i < tg; i++) {
        for (int j = 0; j < B; j++) {
            cur = toks + (size_t)j * (pp + 1) + pp; /* the sequence's next input */
            seqs[j] = (duet_batch_seq){.session = ss[j], .tokens = cur, .n = 1};
        }
        if ((rc = duet_session_eval_batch(seqs, B, &err))) break;
        duet_session_logits_batch(ss, B);
        for (int j = 0; j < B; j++)
            toks[(size_t)j * (pp + 1) + pp] = duet_argmax(duet_session_logits(ss[j], -1), V);
    }
    *t_tg = duet_time_s() - t0;
    if (rc && err.msg[0]) fprintf(stderr, "duet bench: %s\n", err.msg);
    for (int j = 0; ss && j < B; j++) duet_session_free(ss[j]);
    free(ss);
    free(seqs);
    free(toks);
    return rc;
}

/* ---- rows -------------------------------------------------------------------------------- */
/* The lora cell: each adapter as FILE:SCALE (the file's base name), joined by '+'; in JSON an
 * array of {"file", "scale"} (empty without adapters). */
static void print_lora(const bench_opts *o) {
    for (int k = 0; k < o->lora.n[0]; k++) {
        const char *p = o->lora.path[0][k], *b = strrchr(p, '/') ? strrchr(p, '/') + 1 : p;
        if (o->fmt == FMT_JSON) {
            printf("%s{\"file\": ", k ? ", " : "");
            json_str(stdout, p, strlen(p));
            printf(", \"scale\": %g}", o->lora.scale[0][k]);
        } else printf("%s%s:%g", k ? "+" : "", b, o->lora.scale[0][k]);
    }
}

/* The columns every row starts with: model, size, params, threads (and the cache types). */
static void row_start(const bench_opts *o, const duet_hparams *hp, int threads) {
    const char *tk = cache_type_name(g_type_k), *tv = cache_type_name(g_type_v);
    int kv = g_type_k != DUET_KV_F32 || g_type_v != DUET_KV_F32;
    if (o->fmt == FMT_JSON) {
        printf("%s  {\"model\": ", g_rows ? ",\n" : "");
        json_str(stdout, hp->name, strlen(hp->name));
        printf(", \"size_bytes\": %llu, \"params\": %llu, \"threads\": %d, \"type_k\": \"%s\", "
               "\"type_v\": \"%s\"", (unsigned long long)hp->weight_bytes,
               (unsigned long long)hp->n_params, threads, tk, tv);
        printf(", \"lora\": [");
        print_lora(o);
        printf("]");
    } else if (o->fmt == FMT_CSV) {
        printf("%s,%llu,%llu,%d,", hp->name, (unsigned long long)hp->weight_bytes,
               (unsigned long long)hp->n_params, threads);
        if (kv) printf("%s,%s,", tk, tv);
        if (o->lora.n[0]) {
            print_lora(o);
            printf(",");
        }
    } else {
        printf("| %s | %.2f GiB | %.2f B | %d |", hp->name, hp->weight_bytes / (double)(1 << 30),
               hp->n_params / 1e9, threads);
        if (kv) printf(" %s | %s |", tk, tv);
        if (o->lora.n[0]) {
            printf(" ");
            print_lora(o);
            printf(" |");
        }
    }
    g_rows++;
}

static void print_header(const bench_opts *o) {
    int kv = g_type_k != DUET_KV_F32 || g_type_v != DUET_KV_F32, lo = o->lora.n[0] > 0;
    if (o->fmt == FMT_JSON) printf("[\n");
    else if (o->fmt == FMT_CSV && o->nb)
        printf("model,size_bytes,params,threads,%s%spp,tg,b,n_kv,t_pp,s_pp,t_tg,s_tg,t,s\n",
               kv ? "type_k,type_v," : "", lo ? "lora," : "");
    else if (o->fmt == FMT_CSV)
        printf("model,size_bytes,params,threads,%s%stest,tps_mean,tps_sd,limit_tps,share\n",
               kv ? "type_k,type_v," : "", lo ? "lora," : "");
    else {
        printf("| model | size | params | threads |%s%s %s |\n", kv ? " type_k | type_v |" : "",
               lo ? " lora |" : "",
               o->nb ? "PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s"
                     : "test | t/s | share of limit");
        printf("| --- | ---: | ---: | ---: |%s%s %s |\n", kv ? " --- | --- |" : "", lo ? " --- |" : "",
               o->nb ? "---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---:"
                     : "--- | ---: | ---");
    }
}

/* One --batch row: times are the means over the repetitions; speeds are tokens over those
 * times, B * PP / T_PP, B * TG / T_TG and N_KV / T with N_KV = B * (PP + TG), as
 * llama-batched-bench defines them (0 where a phase has no tokens). */
static void print_batch_row(const bench_opts *o, const duet_hparams *hp, int threads, int pp,
                            int tg, int B, double t_pp, double t_tg) {
    long n_kv = (long)B * (pp + tg);
    double t = t_pp + t_tg, s_pp = pp > 0 && t_pp > 0 ? (double)B * pp / t_pp : 0;
    double s_tg = tg > 0 && t_tg > 0 ? (double)B * tg / t_tg : 0, s = t > 0 ? n_kv / t : 0;
    row_start(o, hp, threads);
    if (o->fmt == FMT_JSON)
        printf(", \"pp\": %d, \"tg\": %d, \"b\": %d, \"n_kv\": %ld, \"t_pp\": %.6f, \"s_pp\": %.3f, "
               "\"t_tg\": %.6f, \"s_tg\": %.3f, \"t\": %.6f, \"s\": %.3f}", pp, tg, B, n_kv, t_pp,
               s_pp, t_tg, s_tg, t, s);
    else if (o->fmt == FMT_CSV)
        printf("%d,%d,%d,%ld,%.6f,%.3f,%.6f,%.3f,%.6f,%.3f\n", pp, tg, B, n_kv, t_pp, s_pp, t_tg,
               s_tg, t, s);
    else
        printf(" %d | %d | %d | %ld | %.3f | %.2f | %.3f | %.2f | %.3f | %.2f |\n", pp, tg, B,
               n_kv, t_pp, s_pp, t_tg, s_tg, t, s);
    fflush(stdout);
}

/* Every (PP, TG, B) of the lists, in llama-batched-bench's order, on one loaded model. */
static int bench_batch(const bench_opts *o, duet_model *m, int threads) {
    const duet_hparams *hp = duet_model_hparams(m);
    for (int a = 0; a < o->np; a++)
        for (int b = 0; b < o->nn; b++)
            for (int c = 0; c < o->nb; c++) {
                int pp = o->pl[a], tg = o->nl[b], B = o->bl[c];
                double tp, tt, sum_pp = 0, sum_tg = 0;
                if (pp + tg <= 0) continue;
                /* a short warm-up of this B: pages, threads and buffers, as run_test's */
                if (run_batch(m, B, MIN(pp, 16), MIN(tg, 4), &tp, &tt)) return 1;
                for (int r = 0; r < o->reps; r++) {
                    if (run_batch(m, B, pp, tg, &tp, &tt)) return 1;
                    sum_pp += tp;
                    sum_tg += tt;
                }
                print_batch_row(o, hp, threads, pp, tg, B, sum_pp / o->reps, sum_tg / o->reps);
            }
    return 0;
}

/* One ppN / tgN row (the tests without --batch). */
static void print_row(const bench_opts *o, const duet_hparams *hp, int threads, int is_pp, int n,
                      double mean, double sd, double limit, double peak, double fpt, double bw,
                      double bpt) {
    char test[32];
    snprintf(test, sizeof test, "%s%d", is_pp ? "pp" : "tg", n);
    row_start(o, hp, threads);
    if (o->fmt == FMT_JSON)
        printf(", \"test\": \"%s\", \"tps_mean\": %.3f, \"tps_sd\": %.3f, \"limit_tps\": %.3f, "
               "\"share\": %.4f}", test, mean, sd, limit, limit > 0 ? mean / limit : 0);
    else if (o->fmt == FMT_CSV)
        printf("%s,%.3f,%.3f,%.3f,%.4f\n", test, mean, sd, limit, limit > 0 ? mean / limit : 0);
    else {
        char share[96] = "-";
        if (limit > 0 && is_pp)
            snprintf(share, sizeof share, "%.1f%% of %.1f t/s (FMA peak %.0f GFLOP/s, "
                     "%.2f GFLOP/token)", 100 * mean / limit, limit, peak / 1e9, fpt / 1e9);
        else if (limit > 0)
            snprintf(share, sizeof share, "%.1f%% of %.1f t/s (%.1f GB/s, %.0f MB/token)",
                     100 * mean / limit, limit, bw / 1e9, bpt / 1e6);
        printf(" %s | %.2f ± %.2f | %s |\n", test, mean, sd, share);
    }
    fflush(stdout);
}

/* The ppN and tgN tests on one loaded model. */
static int bench_single(const bench_opts *o, duet_model *m, int threads) {
    const duet_hparams *hp = duet_model_hparams(m);
    double bw = duet_memory_bandwidth(threads, (size_t)1 << 30, 3);
    double bpt = (double)duet_model_bytes_per_token(m);
    double peak = o->np > 0 ? duet_fma_peak(threads) : 0; /* FLOP/s, for the pp rows */
    for (int k = 0; k < o->np + o->nn; k++) {
        int is_pp = k < o->np, n = is_pp ? o->pl[k] : o->nl[k - o->np];
        if (n <= 0) continue;
        double warm, sum = 0, sum2 = 0, tps;
        if (run_test(m, is_pp ? n : 0, is_pp ? 0 : (n < 16 ? n : 16), &warm)) return 1;
        for (int r = 0; r < o->reps; r++) {
            if (run_test(m, is_pp ? n : 0, is_pp ? 0 : n, &tps)) return 1;
            sum += tps;
            sum2 += tps * tps;
        }
        /* this machine's bandwidth drifts from minute to minute: measure it again right
         * after the test and keep the higher figure, so the share is not flattered */
        if (!is_pp) bw = fmax(bw, duet_memory_bandwidth(threads, (size_t)1 << 30, 3));
        int reps = o->reps;
        double mean = sum / reps, sd = reps > 1 ? sqrt(fmax(0, (sum2 - sum * sum / reps) / (reps - 1))) : 0;
        /* tokens/s if weights streamed at full bandwidth (tg), or if the prompt's
         * arithmetic ran at the FP32 FMA peak (pp; the mean position is (n + 1) / 2) */
        double fpt = duet_model_flops_per_token(m, (n + 1) / 2);
        double limit = is_pp ? (fpt > 0 ? peak / fpt : 0) : bw / bpt;
        print_row(o, hp, threads, is_pp, n, mean, sd, limit, peak, fpt, bw, bpt);
    }
    return 0;
}

/* The command line into *o; 0 ok, 1 --help printed, 2 usage error (message printed). */
static int parse_args(int argc, char **argv, bench_opts *o) {
    const char *fmt = "md";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 1; }
        if (!strcmp(a, "--mmap")) { o->use_mmap = 1; continue; }
        if (!strcmp(a, "--no-repack")) { o->no_repack = 1; continue; }
        int lt = lora_opts_parse("bench", &o->lora, argc, argv, &i);
        if (lt < 0) return 2;
        if (lt) continue;
        if (!(v = arg_value("bench", argc, argv, &i))) return 2;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model_path = v;
        else if (!strcmp(a, "-p")) { if (!(o->np = arg_int_list("bench", a, v, o->pl, MAXL))) return 2; }
        else if (!strcmp(a, "-n")) { if (!(o->nn = arg_int_list("bench", a, v, o->nl, MAXL))) return 2; }
        else if (!strcmp(a, "-t")) { if (!(o->nt = arg_int_list("bench", a, v, o->tl, MAXL))) return 2; }
        else if (!strcmp(a, "--batch") || !strcmp(a, "-npl")) {
            if (!(o->nb = arg_int_list_in("bench", a, v, 1, MAX_SEQS, o->bl, MAXL))) return 2;
        }
        else if (!strcmp(a, "-r")) { if (!arg_int("bench", a, v, 1, 1000, &o->reps)) return 2; }
        else if (!strcmp(a, "-o")) fmt = v;
        else if (!strcmp(a, "-ctk") || !strcmp(a, "--cache-type-k")) { if (!arg_cache_type("bench", a, v, &g_type_k)) return 2; }
        else if (!strcmp(a, "-ctv") || !strcmp(a, "--cache-type-v")) { if (!arg_cache_type("bench", a, v, &g_type_v)) return 2; }
        else {
            fprintf(stderr, "duet bench: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    o->fmt = !strcmp(fmt, "csv") ? FMT_CSV : !strcmp(fmt, "json") ? FMT_JSON : FMT_MD;
    if (!o->model_path || (o->fmt == FMT_MD && strcmp(fmt, "md"))) { usage(stderr); return 2; }
    if (o->lora.n[1]) {
        fprintf(stderr, "duet bench: --expert-lora does not apply (one model)\n");
        return 2;
    }
    return 0;
}

int cmd_bench(int argc, char **argv) {
    bench_opts o = {.pl = {512}, .nl = {128}, .tl = {2}, .np = 1, .nn = 1, .nt = 1, .reps = 5};
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    print_header(&o);
    for (int ti = 0; ti < o.nt && !rc; ti++) {
        duet_error err = {0};
        duet_model *m = NULL;
        duet_model_params mp = {.n_threads = o.tl[ti], .use_mmap = o.use_mmap,
                                .no_repack = o.no_repack};
        /* adapters bind to the loaded model: loaded again for each */
        if (duet_model_load(o.model_path, &mp, &m, &err) || lora_attach(&o.lora, 0, m, &err)) {
            fprintf(stderr, "duet bench: %s\n", err.msg);
            duet_model_free(m);
            lora_opts_free(&o.lora);
            return 1;
        }
        rc = o.nb ? bench_batch(&o, m, o.tl[ti]) : bench_single(&o, m, o.tl[ti]);
        duet_model_free(m);
        lora_opts_free(&o.lora);
    }
    if (!rc && o.fmt == FMT_JSON) printf("%s]\n", g_rows ? "\n" : "");
    return rc;
}
