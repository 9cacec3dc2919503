/*
 * bench_collab.c: the collaboration benchmark of `make bench`.
 *
 * A small base and a larger expert (random weights, written once under build/bench/ unless
 * --base/--expert are given) decode -n tokens together with the Co-LLM policy, greedy, lazy
 * expert catch-up, at deferral rates 0, 10%, 30% and 100%. The rates are forced by hand-made
 * heads: rate 0 is eta 1 and rate 1 is eta 0 (any head); for 10% and 30% the benchmark first
 * decodes with a fixed, evenly spread deferral schedule (two plain sessions, greedy), then
 * fits u so that u.h > 0 exactly at the scheduled steps (random-weight models repeat tokens,
 * so a random u with a threshold cannot hit a rate: deferring changes the trajectory), and
 * checks that the collaboration reproduces the schedule; if it does not, it falls back to a
 * random u with eta from its scores' quantile. For each rate it prints:
 *  - tokens/s of the collaboration (duet_collab_start + steps, wall clock);
 *  - the ratio to the ideal cost: the base alone replaying the same token list (prompt as one
 *    call, then one token per call, argmax after each) plus the expert alone replaying exactly
 *    the catch-up calls the collaboration made (duet_session_sync to the list length of every
 *    deferred step, on a fresh session), each timed on its own in the same run;
 *  - the speed-up over a re-prefill-every-call implementation (what the research code does):
 *    at every deferred step the expert evaluates the whole prefix from scratch
 *    (truncate to 0, one batched eval), plus the base-alone time.
 * Collaboration and ideal times are the best (or median) of -r repetitions, each repetition
 * on fresh sessions. The re-prefill calls run once each (they are slow); a call that ran slow
 * against its neighbours is timed again (--rp-retime, default 2) and the fastest time kept.
 *
 * Uses only the public API (include/duet.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "duet.h"

#define TYPE_Q8_0 8 /* ggml type id */
#define N_RATES 4
static const double k_rates[N_RATES] = {0.0, 0.1, 0.3, 1.0};

/* default model shapes: sized so that the whole benchmark takes a few minutes on 2 cores */
static const duet_make_model_params k_base_shape = {
    .arch = "llama", .n_embd = 512, .n_layer = 8, .n_head = 8, .n_head_kv = 4, .n_ff = 1536,
    .n_vocab = 32000, .n_ctx = 2048, .type = TYPE_Q8_0, .output_type = -1, .seed = 1};
static const duet_make_model_params k_expert_shape = {
    .arch = "llama", .n_embd = 768, .n_layer = 12, .n_head = 12, .n_head_kv = 4, .n_ff = 2048,
    .n_vocab = 32000, .n_ctx = 2048, .type = TYPE_Q8_0, .output_type = -1, .seed = 2};

static const char *k_default_prompt =
    "Question: A train leaves the station at nine in the morning and travels at sixty miles "
    "per hour. How far has it gone by noon? Answer:";

typedef struct opts {
    const char *base, *expert, *dir, *fmt, *csv_path, *prompt;
    int n, threads, reps, rp_retime, no_rp, median;
} opts;

/* one collaborative decoding run */
typedef struct run_rec {
    int32_t *toks;     /* final canonical list (prompt + emitted) */
    int n_toks, n_prompt, n_steps, eos;
    int *sync_len;     /* canonical list length at each expert call */
    int n_sync;
    float *scores;     /* u.h of every step */
    unsigned char *deferred; /* every step: 1 when the expert chose the token */
    duet_collab_stats st;
    double wall;
} run_rec;

static void rec_free(run_rec *r) {
    free(r->toks);
    free(r->sync_len);
    free(r->scores);
    free(r->deferred);
    memset(r, 0, sizeof *r);
}

static void die(const char *what, const duet_error *err) {
    fprintf(stderr, "bench_collab: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_collab [--base B.gguf --expert E.gguf] [-n 256] [-t THREADS] [-r REPS]\n"
            "                    [-o md|csv] [--csv FILE] [--median] [--rp-retime N]\n"
            "                    [--no-reprefill] [-p PROMPT] [--dir DIR]\n"
            "  without --base/--expert, random-weight models are written once under DIR\n"
            "  (default build/bench). --csv FILE also writes the CSV rows to FILE.\n");
}

static double now(void) { return duet_time_s(); }

static void ensure_model(const char *dir, const char *role, const duet_make_model_params *p,
                         char *path, size_t cap) {
    snprintf(path, cap, "%s/collab-%s-e%d-l%d-h%d-kv%d-ff%d-v%d-q8_0-s%llu.gguf", dir, role,
             p->n_embd, p->n_layer, p->n_head, p->n_head_kv, p->n_ff, p->n_vocab,
             (unsigned long long)p->seed);
    struct stat sb;
    if (stat(path, &sb) == 0 && sb.st_size > 0) return;
    mkdir(dir, 0777); /* one level: build/ exists after make */
    fprintf(stderr, "bench_collab: writing %s\n", path);
    duet_error err = {0};
    if (duet_make_model(p, path, &err)) die("make model", &err);
}

/* ---- the collaboration run -------------------------------------------------------------- */
static void run_collab(duet_model *base, duet_model *expert, const duet_head *head, float eta,
                       const int32_t *prompt, int n_prompt, int n_gen, int n_ctx, run_rec *r) {
    duet_error err = {0};
    duet_collab_params cp = {.policy = DUET_POLICY_COLLM, .threshold = eta, .n_ctx = n_ctx};
    cp.sampling.temp = 0; /* greedy */
    duet_collab *c = NULL;
    if (duet_collab_new(base, expert, NULL, head, &cp, &c, &err)) die("collab", &err);
    if (duet_collab_bridged(c)) {
        fprintf(stderr, "bench_collab: the models must share one vocabulary\n");
        exit(1);
    }
    rec_free(r);
    r->sync_len = malloc(sizeof(int) * (size_t)(n_gen + 1));
    r->scores = malloc(sizeof(float) * (size_t)(n_gen + 1));
    r->deferred = malloc((size_t)(n_gen + 1));
    if (!r->sync_len || !r->scores || !r->deferred) die("out of memory", NULL);
    r->n_prompt = n_prompt;
    duet_collab_token tok;
    double t0 = now();
    if (duet_collab_start(c, prompt, n_prompt, &err)) die("collab start", &err);
    int k;
    for (k = 0; k < n_gen; k++) {
        int rc = duet_collab_step(c, &tok, &err);
        if (rc < 0) die("collab step", &err);
        r->scores[k] = tok.score;
        r->deferred[k] = (unsigned char)tok.deferred;
        if (tok.deferred) r->sync_len[r->n_sync++] = n_prompt + k;
        if (rc == DUET_EOS) { r->eos = 1; k++; break; }
    }
    r->wall = now() - t0;
    r->n_steps = k;
    r->st = *duet_collab_get_stats(c);
    const int32_t *t = duet_collab_tokens(c, &r->n_toks);
    if (!(r->toks = malloc(sizeof(int32_t) * (size_t)r->n_toks))) die("out of memory", NULL);
    memcpy(r->toks, t, sizeof(int32_t) * (size_t)r->n_toks);
    if (r->n_sync != r->st.expert_calls || r->n_toks != n_prompt + r->st.n_generated) {
        fprintf(stderr, "bench_collab: trace does not match the statistics (%d syncs, %d calls)\n",
                r->n_sync, r->st.expert_calls);
        exit(1);
    }
    duet_collab_free(c);
}

static duet_session *new_session(duet_model *m, int n_ctx) {
    duet_error err = {0};
    duet_session_params sp = {.n_ctx = n_ctx};
    duet_session *s = NULL;
    if (duet_session_new(m, &sp, &s, &err)) die("session", &err);
    return s;
}

/* the base alone: what the collaboration's base evaluated, the same calls, argmax after each */
static double replay_base(duet_model *base, const run_rec *r, int n_ctx) {
    duet_error err = {0};
    duet_session *s = new_session(base, n_ctx);
    int V = duet_model_hparams(base)->n_vocab;
    int n_eval = (int)r->st.base_evaluated; /* prompt + every emitted token but the last */
    volatile int32_t sink = 0;
    double t0 = now();
    if (duet_session_eval(s, r->toks, r->n_prompt, 0, &err)) die("base replay", &err);
    sink += duet_argmax(duet_session_logits(s, -1), V);
    for (int i = r->n_prompt; i < n_eval; i++) {
        if (duet_session_eval(s, r->toks + i, 1, 0, &err)) die("base replay", &err);
        sink += duet_argmax(duet_session_logits(s, -1), V);
    }
    double dt = now() - t0;
    if (duet_session_n_evaluated(s) != r->st.base_evaluated) {
        fprintf(stderr, "bench_collab: base replay evaluated %ld tokens, the collab %ld\n",
                duet_session_n_evaluated(s), r->st.base_evaluated);
        exit(1);
    }
    duet_session_free(s);
    return dt;
}

/* the expert alone: the collaboration's catch-up calls, replayed on a fresh session */
static double replay_expert(duet_model *expert, const run_rec *r, int n_ctx) {
    if (!r->n_sync) return 0;
    duet_error err = {0};
    duet_session *s = new_session(expert, n_ctx);
    int V = duet_model_hparams(expert)->n_vocab;
    volatile int32_t sink = 0;
    double t0 = now();
    for (int i = 0; i < r->n_sync; i++) {
        if (duet_session_sync(s, r->toks, r->sync_len[i], &err)) die("expert replay", &err);
        sink += duet_argmax(duet_session_logits(s, -1), V);
    }
    double dt = now() - t0;
    if (duet_session_n_evaluated(s) != r->st.expert_evaluated) {
        fprintf(stderr, "bench_collab: expert replay evaluated %ld tokens, the collab %ld\n",
                duet_session_n_evaluated(s), r->st.expert_evaluated);
        exit(1);
    }
    duet_session_free(s);
    return dt;
}

static int cmp_d(const void *a, const void *b);

/* the research code's expert: the whole prefix from scratch at every deferred step. Every
 * call is timed on its own; a call more than 15% slower per token than the median of its
 * neighbours (a busy spell on a shared machine), or 25% slower than the reference prefill
 * measured during the timing runs, or than the fastest tenth of the calls (a longer spell;
 * the cost per token varies far less than that with the length here), is timed again, up to
 * `retime` times, and the fastest time kept. Returns the sum. */
static double reprefill_expert(duet_model *expert, const run_rec *r, int n_ctx, int retime,
                               double ref_pt, long *n_eval, int *n_retimed) {
    *n_eval = 0;
    *n_retimed = 0;
    if (!r->n_sync) return 0;
    duet_error err = {0};
    duet_session *s = new_session(expert, n_ctx);
    int V = duet_model_hparams(expert)->n_vocab, n = r->n_sync;
    double *t = malloc(sizeof(double) * (size_t)n), *pt = malloc(sizeof(double) * (size_t)n);
    double win[17], p10 = 0;
    if (!t || !pt) die("out of memory", NULL);
    volatile int32_t sink = 0;
    for (int pass = 0; pass <= retime; pass++) {
        int again = 0;
        if (pass > 0) {
            for (int i = 0; i < n; i++) pt[i] = t[i] / r->sync_len[i];
            qsort(pt, (size_t)n, sizeof *pt, cmp_d);
            p10 = pt[n / 10];
        }
        for (int i = 0; i < n; i++) {
            if (pass > 0) { /* a call slow against its neighbours, or against all? */
                int m = 0;
                for (int j = i - 8; j <= i + 8; j++)
                    if (j >= 0 && j < n) win[m++] = t[j] / r->sync_len[j];
                qsort(win, (size_t)m, sizeof *win, cmp_d);
                double ti = t[i] / r->sync_len[i];
                if (ti <= 1.15 * win[m / 2] && ti <= 1.25 * p10 && ti <= 1.25 * ref_pt) continue;
                (*n_retimed)++;
                again = 1;
            }
            double t0 = now();
            duet_session_truncate(s, 0);
            if (duet_session_eval(s, r->toks, r->sync_len[i], 0, &err)) die("re-prefill", &err);
            sink += duet_argmax(duet_session_logits(s, -1), V);
            double dt = now() - t0;
            t[i] = pass == 0 || dt < t[i] ? dt : t[i];
        }
        if (pass == 0) *n_eval = duet_session_n_evaluated(s);
        else if (!again) break;
    }
    double sum = 0;
    for (int i = 0; i < n; i++) sum += t[i];
    free(t);
    free(pt);
    duet_session_free(s);
    return sum;
}

/* ---- deferral-rate calibration ----------------------------------------------------------- */
static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* eta such that a fraction `rate` of the given scores lies strictly above logit(eta) */
static float eta_for(const float *scores, int n, double rate) {
    if (rate <= 0 || n <= 0) return 1.0f;
    if (rate >= 1) return 0.0f;
    float *d = malloc(sizeof(float) * (size_t)n);
    if (!d) die("out of memory", NULL);
    memcpy(d, scores, sizeof(float) * (size_t)n);
    qsort(d, (size_t)n, sizeof(float), cmp_desc);
    int k = (int)lround(rate * n);
    double thr = k <= 0 ? d[0] + 1.0 : k >= n ? d[n - 1] - 1.0 : 0.5 * ((double)d[k - 1] + d[k]);
    free(d);
    return (float)(1.0 / (1.0 + exp(-thr)));
}

static double measured_rate(const run_rec *r) {
    return r->n_steps ? (double)r->st.n_deferred / r->n_steps : 0;
}

/* Exact forcing: decode with a fixed deferral schedule (defer at step k iff
 * floor((k+1) rate) > floor(k rate): evenly spread, round(rate n) deferrals) using two plain
 * sessions and greedy argmax, exactly as the collm policy would, recording the base's hidden
 * state at every step. Then fit u with u.h_k = +1 on deferred steps and -1 elsewhere
 * (minimum-norm least squares: more dimensions than steps) and keep eta 0.5 (defer iff
 * u.h > 0): the collaboration then makes the same decisions along the same trajectory.
 * Returns 0 and fills u when every recorded step is classified with a margin. */
static int fit_head(duet_model *base, duet_model *expert, const int32_t *prompt, int n_prompt,
                    int n_gen, int n_ctx, double rate, float *u) {
    const duet_hparams *hb = duet_model_hparams(base);
    int E = hb->n_embd, V = hb->n_vocab, S = 0, ok = 0;
    duet_error err = {0};
    duet_session *sb = new_session(base, n_ctx), *se = new_session(expert, n_ctx);
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(n_prompt + n_gen));
    float *H = malloc(sizeof(float) * (size_t)n_gen * E);
    double *y = malloc(sizeof(double) * (size_t)n_gen);
    double *G = malloc(sizeof(double) * (size_t)n_gen * n_gen);
    if (!toks || !H || !y || !G) die("out of memory", NULL);
    memcpy(toks, prompt, sizeof(int32_t) * (size_t)n_prompt);
    int nt = n_prompt;
    for (int k = 0; k < n_gen; k++) {
        int defer = floor((k + 1) * rate) > floor(k * rate);
        if (duet_session_sync(sb, toks, nt, &err)) die("fit: base", &err);
        memcpy(H + (size_t)k * E, duet_session_hidden(sb, -1), sizeof(float) * (size_t)E);
        y[k] = defer ? 1 : -1;
        S = k + 1;
        int32_t id;
        if (defer) {
            if (duet_session_sync(se, toks, nt, &err)) die("fit: expert", &err);
            id = duet_argmax(duet_session_logits(se, -1), V);
        } else {
            id = duet_argmax(duet_session_logits(sb, -1), V);
        }
        if (duet_token_is_eog(base, id)) break;
        toks[nt++] = id;
    }
    /* (H H^T + lambda I) a = y by Cholesky; u = H^T a */
    double tr = 0;
    for (int i = 0; i < S; i++)
        for (int j = 0; j <= i; j++) {
            const float *a = H + (size_t)i * E, *b = H + (size_t)j * E;
            double d = 0;
            for (int e = 0; e < E; e++) d += (double)a[e] * b[e];
            G[(size_t)i * S + j] = G[(size_t)j * S + i] = d;
            if (i == j) tr += d;
        }
    for (int i = 0; i < S; i++) G[(size_t)i * S + i] += 1e-9 * tr / S;
    int spd = 1;
    for (int j = 0; j < S && spd; j++) { /* lower triangle in place */
        double d = G[(size_t)j * S + j];
        for (int k = 0; k < j; k++) d -= G[(size_t)j * S + k] * G[(size_t)j * S + k];
        if (!(d > 0)) { spd = 0; break; }
        d = sqrt(d);
        G[(size_t)j * S + j] = d;
        for (int i = j + 1; i < S; i++) {
            double v = G[(size_t)i * S + j];
            for (int k = 0; k < j; k++) v -= G[(size_t)i * S + k] * G[(size_t)j * S + k];
            G[(size_t)i * S + j] = v / d;
        }
    }
    if (spd) {
        for (int i = 0; i < S; i++) { /* forward, then backward substitution */
            double v = y[i];
            for (int k = 0; k < i; k++) v -= G[(size_t)i * S + k] * y[k];
            y[i] = v / G[(size_t)i * S + i];
        }
        for (int i = S - 1; i >= 0; i--) {
            double v = y[i];
            for (int k = i + 1; k < S; k++) v -= G[(size_t)k * S + i] * y[k];
            y[i] = v / G[(size_t)i * S + i];
        }
        for (int e = 0; e < E; e++) {
            double v = 0;
            for (int i = 0; i < S; i++) v += y[i] * H[(size_t)i * E + e];
            u[e] = (float)v;
        }
        /* check with the library's own score function on the very same hidden states */
        duet_head *h = NULL;
        if (duet_head_from_vector(base, u, E, &h, &err)) die("head", &err);
        ok = 1;
        for (int k = 0; k < S && ok; k++) {
            float sc = duet_head_score(h, H + (size_t)k * E);
            int defer = floor((k + 1) * rate) > floor(k * rate);
            if (!(defer ? sc > 0.5f : sc < -0.5f)) ok = 0;
        }
        duet_head_free(h);
    }
    free(toks);
    free(H);
    free(y);
    free(G);
    duet_session_free(sb);
    duet_session_free(se);
    return ok ? 0 : -1;
}

/* ---- statistics ------------------------------------------------------------------------- */
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pick(double *v, int n, int median) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return median ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : v[0];
}

typedef struct row {
    double target, rate;
    float eta;
    int n_gen, steps, eos, calls, identical;
    const char *method; /* how the rate was forced */
    long ex_eval, base_eval, rp_eval;
    int rp_retimed; /* re-prefill calls timed again */
    double wall, t_base_alone, t_expert_alone, ideal, t_rp, t_rp_total;
    double in_base, in_expert; /* collab's own split (best run) */
} row;

static void print_shape(FILE *f, const char *pre, const char *role, const char *path,
                        const duet_model *m) {
    const duet_hparams *h = duet_model_hparams(m);
    fprintf(f, "%s%s: %s: n_embd %d, %d layers, %d heads, %d kv heads, n_ff %d, vocab %d, "
               "type %d, %.1fM params, %.1f MB weights, %.1f MB/token\n",
            pre, role, path, h->n_embd, h->n_layer, h->n_head, h->n_head_kv, h->n_ff, h->n_vocab,
            h->weight_type, h->n_params / 1e6, h->weight_bytes / 1e6,
            duet_model_bytes_per_token(m) / 1e6);
}

static void print_header(FILE *f, const char *pre, const opts *o, int argc, char **argv,
                         const char *bp, const duet_model *b, const char *ep, const duet_model *e,
                         int n_prompt) {
    fprintf(f, "%scommand:", pre);
    for (int i = 0; i < argc; i++) fprintf(f, " %s", argv[i]);
    fprintf(f, "\n");
    print_shape(f, pre, "base", bp, b);
    print_shape(f, pre, "expert", ep, e);
    fprintf(f, "%sCo-LLM policy, greedy, lazy expert catch-up; prompt %d tokens, %d new tokens; "
               "%d threads per model\n",
            pre, n_prompt, o->n, o->threads);
    fprintf(f, "%sdeferral forced per rate: 0%%: eta 1; 100%%: eta 0; in between, a head fitted "
               "so that u.h > 0 exactly at evenly spread steps (eta 0.5), checked against the "
               "run, else a random head with eta from its scores' quantile\n", pre);
    FILE *la = fopen("/proc/loadavg", "r");
    char load[64] = "";
    if (la) {
        if (fgets(load, sizeof load, la)) load[strcspn(load, "\n")] = 0;
        fclose(la);
    }
    if (*load) fprintf(f, "%sload average at start (/proc/loadavg): %s\n", pre, load);
    fprintf(f, "%stimes: %s of %d runs, rates interleaved (collab and each replay, fresh "
               "sessions); ideal = base alone + expert alone (same calls, timed separately); "
               "re-prefill = base alone + every expert call timed once, calls slow per token "
               "against their neighbours, the fastest tenth or the reference prefill re-timed up "
               "to %d times (fastest kept)\n",
            pre, o->median ? "median" : "best", o->reps, o->rp_retime);
}

static void print_csv(FILE *f, const row *rw, int n) {
    fprintf(f, "target_rate,measured_rate,eta,tokens,steps,eos,tps,expert_calls,"
               "expert_tokens,base_tokens,collab_s,base_alone_s,expert_alone_s,ideal_s,"
               "ideal_ratio,collab_base_s,collab_expert_s,reprefill_expert_tokens,reprefill_s,"
               "reprefill_speedup,reprefill_retimed_calls,identical_runs,forced_by\n");
    for (int i = 0; i < n; i++) {
        const row *r = &rw[i];
        fprintf(f, "%.2f,%.4f,%.6g,%d,%d,%d,%.3f,%d,%ld,%ld,%.6f,%.6f,%.6f,%.6f,%.4f,%.6f,%.6f,"
                   "%ld,%.6f,%.3f,%d,%d,%s\n",
                r->target, r->rate, r->eta, r->n_gen, r->steps, r->eos, r->n_gen / r->wall,
                r->calls, r->ex_eval, r->base_eval, r->wall, r->t_base_alone, r->t_expert_alone,
                r->ideal, r->wall / r->ideal, r->in_base, r->in_expert, r->rp_eval, r->t_rp_total,
                r->t_rp_total / r->wall, r->rp_retimed, r->identical, r->method);
    }
}

static void print_md(const row *rw, int n) {
    printf("\n| target rate | forced by | measured rate | tokens | t/s | expert calls "
           "| expert tokens "
           "| collab s | ideal s (base + expert) | vs ideal | re-prefill s | speed-up vs "
           "re-prefill |\n");
    printf("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
           "| ---: |\n");
    for (int i = 0; i < n; i++) {
        const row *r = &rw[i];
        char rp[32] = "-", sp[32] = "-";
        if (r->t_rp_total > 0) snprintf(rp, sizeof rp, "%.2f", r->t_rp_total);
        if (r->t_rp_total > 0 && r->calls > 0)
            snprintf(sp, sizeof sp, "%.1fx", r->t_rp_total / r->wall);
        printf("| %.0f%% | %s | %.1f%% | %d%s | %.1f | %d | %ld | %.3f | %.3f (%.3f + %.3f) "
               "| %.3fx | %s | %s |\n",
               100 * r->target, r->method, 100 * r->rate, r->n_gen, r->eos ? " (EOS)" : "",
               r->n_gen / r->wall, r->calls, r->ex_eval, r->wall, r->ideal, r->t_base_alone,
               r->t_expert_alone, r->wall / r->ideal, rp, sp);
    }
    printf("\nwhere the collaboration's time goes (its best run; 'other' = decision, "
           "distribution statistics, copies, outside the forward passes):\n\n");
    printf("| target rate | base in collab / alone | expert in collab / alone | other ms/token "
           "|\n| ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < n; i++) {
        const row *r = &rw[i];
        char ex[64] = "-";
        if (r->t_expert_alone > 0)
            snprintf(ex, sizeof ex, "%.3f / %.3f s (%.3fx)", r->in_expert, r->t_expert_alone,
                     r->in_expert / r->t_expert_alone);
        printf("| %.0f%% | %.3f / %.3f s (%.3fx) | %s | %.3f |\n", 100 * r->target, r->in_base,
               r->t_base_alone, r->in_base / r->t_base_alone, ex,
               1e3 * (r->wall - r->in_base - r->in_expert) / (r->steps ? r->steps : 1));
    }
    const row *r30 = NULL;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        if (rw[i].target > 0.29 && rw[i].target < 0.31) r30 = &rw[i];
        worst = fmax(worst, rw[i].wall / rw[i].ideal);
    }
    printf("\ntargets: <= 1.10x of the ideal cost at every rate: %s (worst %.3fx)",
           worst <= 1.10 ? "met" : "NOT met", worst);
    if (r30 && r30->t_rp_total > 0)
        printf("; >= 10x faster than re-prefill at 30%%: %s (%.1fx)",
               r30->t_rp_total / r30->wall >= 10 ? "met" : "NOT met", r30->t_rp_total / r30->wall);
    printf("\n");
}

int main(int argc, char **argv) {
    opts o = {.dir = "build/bench", .fmt = "md", .prompt = k_default_prompt, .n = 256,
              .threads = 2, .reps = 3, .rp_retime = 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "--median")) { o.median = 1; continue; }
        if (!strcmp(a, "--no-reprefill")) { o.no_rp = 1; continue; }
        if (i + 1 >= argc) { usage(stderr); return 2; }
        const char *v = argv[++i];
        if (!strcmp(a, "--base")) o.base = v;
        else if (!strcmp(a, "--expert")) o.expert = v;
        else if (!strcmp(a, "--dir")) o.dir = v;
        else if (!strcmp(a, "-o")) o.fmt = v;
        else if (!strcmp(a, "--csv")) o.csv_path = v;
        else if (!strcmp(a, "-p")) o.prompt = v;
        else if (!strcmp(a, "-n")) o.n = atoi(v);
        else if (!strcmp(a, "-t")) o.threads = atoi(v);
        else if (!strcmp(a, "-r")) o.reps = atoi(v);
        else if (!strcmp(a, "--rp-retime")) o.rp_retime = atoi(v);
        else { fprintf(stderr, "bench_collab: unknown option '%s'\n", a); usage(stderr); return 2; }
    }
    if (!!o.base != !!o.expert || o.n < 1 || o.threads < 1 || o.reps < 1 || o.rp_retime < 0 ||
        (strcmp(o.fmt, "md") && strcmp(o.fmt, "csv"))) {
        usage(stderr);
        return 2;
    }
    char bpath[1024], epath[1024];
    if (o.base) {
        snprintf(bpath, sizeof bpath, "%s", o.base);
        snprintf(epath, sizeof epath, "%s", o.expert);
    } else {
        ensure_model(o.dir, "base", &k_base_shape, bpath, sizeof bpath);
        ensure_model(o.dir, "expert", &k_expert_shape, epath, sizeof epath);
    }
    duet_error err = {0};
    duet_model_params mp = {.n_threads = o.threads};
    duet_model *base = NULL, *expert = NULL;
    if (duet_model_load(bpath, &mp, &base, &err)) die("load base", &err);
    if (duet_model_load(epath, &mp, &expert, &err)) die("load expert", &err);

    int32_t prompt[1024];
    int n_prompt = duet_tokenize(base, o.prompt, strlen(o.prompt), 1, 0, prompt, 1024, &err);
    if (n_prompt < 0) die("tokenize", &err);
    if (n_prompt > 1024) { fprintf(stderr, "bench_collab: prompt too long\n"); return 2; }
    int n_ctx = n_prompt + o.n + 8;

    /* the hand-made head: a fixed random unit direction (scores u.h ~ N(0, 1)) */
    int E = duet_model_hparams(base)->n_embd;
    float *u = malloc(sizeof(float) * (size_t)E);
    if (!u) die("out of memory", NULL);
    uint64_t x = 0x243f6a8885a308d3ull;
    double norm = 0;
    for (int i = 0; i < E; i++) { /* Box-Muller on splitmix64 */
        double a[2];
        for (int j = 0; j < 2; j++) {
            uint64_t z = (x += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            a[j] = ((double)((z ^ (z >> 31)) >> 11) + 0.5) * 0x1.0p-53;
        }
        u[i] = (float)(sqrt(-2 * log(a[0])) * cos(2 * M_PI * a[1]));
        norm += (double)u[i] * u[i];
    }
    for (int i = 0; i < E; i++) u[i] = (float)(u[i] / sqrt(norm));
    duet_head *head = NULL;
    if (duet_head_from_vector(base, u, E, &head, &err)) die("head", &err);

    FILE *csv_f = NULL;
    if (o.csv_path && !(csv_f = fopen(o.csv_path, "w"))) {
        fprintf(stderr, "bench_collab: cannot write %s\n", o.csv_path);
        return 1;
    }
    int md = !strcmp(o.fmt, "md");
    print_header(stdout, md ? "" : "# ", &o, argc, argv, bpath, base, epath, expert, n_prompt);
    if (csv_f) print_header(csv_f, "# ", &o, argc, argv, bpath, base, epath, expert, n_prompt);
    fflush(stdout);

    /* base-only trajectory (eta 1): a warm-up, and the scores the fallback starts from */
    run_rec r0 = {0}, cal = {0}, rr = {0};
    run_collab(base, expert, head, 1.0f, prompt, n_prompt, o.n, n_ctx, &r0);
    row rows[N_RATES];
    memset(rows, 0, sizeof rows);
    float *uf = malloc(sizeof(float) * (size_t)E);
    if (!uf) die("out of memory", NULL);
    const duet_head *hds[N_RATES];
    duet_head *fitted_heads[N_RATES];
    run_rec recs[N_RATES];
    memset(recs, 0, sizeof recs);
    double t_start = now();
    for (int ri = 0; ri < N_RATES; ri++) {
        double target = k_rates[ri];
        row *w = &rows[ri];
        w->target = target;
        const duet_head *hd = head;
        duet_head *fitted = NULL;
        float eta = target <= 0 ? 1.0f : 0.0f;
        w->method = target <= 0 ? "eta 1" : "eta 0";
        if (target > 0 && target < 1 &&
            !fit_head(base, expert, prompt, n_prompt, o.n, n_ctx, target, uf)) {
            if (duet_head_from_vector(base, uf, E, &fitted, &err)) die("head", &err);
            run_collab(base, expert, fitted, 0.5f, prompt, n_prompt, o.n, n_ctx, &cal);
            int same = 1;
            for (int k = 0; k < cal.n_steps; k++)
                same &= cal.deferred[k] == (floor((k + 1) * target) > floor(k * target));
            if (same) {
                hd = fitted;
                eta = 0.5f;
                w->method = "fitted head (eta 0.5)";
            } else {
                duet_head_free(fitted);
                fitted = NULL;
            }
        }
        if (target > 0 && target < 1 && !fitted) {
            /* fallback: the random head with eta at the quantile of the scores along the
             * current trajectory, iterated because deferring changes the trajectory */
            w->method = "random head (eta by quantile)";
            eta = eta_for(r0.scores, r0.n_steps, target);
            float best_eta = eta;
            double best_err = 2, lo = 0, hi = 1; /* the rate falls as eta grows: bracket */
            for (int it = 0; it < 8; it++) {
                run_collab(base, expert, head, eta, prompt, n_prompt, o.n, n_ctx, &cal);
                double m = measured_rate(&cal), e = fabs(m - target);
                if (e < best_err) { best_err = e; best_eta = eta; }
                if (e <= 0.5 / o.n + 0.01) break;
                if (m > target) lo = eta; else hi = eta;
                float next = eta_for(cal.scores, cal.n_steps, target);
                if (!(next > lo && next < hi) || next == eta) { /* bisect in logit space */
                    double a = lo > 0 ? log(lo / (1 - lo)) : log(hi / (1 - hi)) - 2;
                    double b = hi < 1 ? log(hi / (1 - hi)) : a + 4;
                    next = (float)(1 / (1 + exp(-0.5 * (a + b))));
                }
                eta = next;
            }
            eta = best_eta;
        }
        w->eta = eta;
        fprintf(stderr, "bench_collab: rate %.0f%%: %s\n", 100 * target, w->method);

        hds[ri] = hd;
        fitted_heads[ri] = fitted;
    }

    /* timing: repetitions outside, rates inside, so that the runs of each rate spread over
     * the whole period (a busy spell on a shared machine spoils one run of each rate rather
     * than all runs of one rate) */
    double *tm = malloc(sizeof(double) * (size_t)o.reps * 3 * N_RATES);
    if (!tm) die("out of memory", NULL);
    double best_wall[N_RATES], ref_pt = INFINITY;
    int ref_len = r0.n_toks < n_prompt + o.n / 2 ? r0.n_toks : n_prompt + o.n / 2;
    duet_session *ref_s = new_session(expert, n_ctx); /* warmed once, as the re-prefill's is */
    if (duet_session_eval(ref_s, r0.toks, ref_len, 0, &err)) die("reference prefill", &err);
    for (int ri = 0; ri < N_RATES; ri++) {
        best_wall[ri] = INFINITY;
        rows[ri].identical = 1;
    }
    for (int rep = 0; rep < o.reps; rep++) {
        for (int ri = 0; ri < N_RATES; ri++) {
            row *w = &rows[ri];
            double *tc = tm + (size_t)ri * 3 * o.reps, *tb = tc + o.reps, *te = tb + o.reps;
            run_collab(base, expert, hds[ri], w->eta, prompt, n_prompt, o.n, n_ctx, &rr);
            tc[rep] = rr.wall;
            tb[rep] = replay_base(base, &rr, n_ctx);
            te[rep] = replay_expert(expert, &rr, n_ctx);
            if (rr.wall < best_wall[ri]) {
                best_wall[ri] = rr.wall;
                w->in_base = rr.st.t_base;
                w->in_expert = rr.st.t_expert;
            }
            if (rep == 0) { /* keep the first run's record */
                recs[ri] = rr;
                memset(&rr, 0, sizeof rr);
            } else if (rr.n_toks != recs[ri].n_toks ||
                       memcmp(rr.toks, recs[ri].toks, sizeof(int32_t) * (size_t)rr.n_toks)) {
                w->identical = 0;
            }
        }
        { /* reference for the re-prefill: one prefill of the middle length, best of the runs */
            double t0 = now();
            duet_session_truncate(ref_s, 0);
            if (duet_session_eval(ref_s, r0.toks, ref_len, 0, &err)) die("reference prefill", &err);
            ref_pt = fmin(ref_pt, (now() - t0) / ref_len);
        }
        fprintf(stderr, "bench_collab: timing run %d of %d done (%.0f s elapsed)\n", rep + 1,
                o.reps, now() - t_start);
    }
    for (int ri = 0; ri < N_RATES; ri++) {
        row *w = &rows[ri];
        const run_rec *c0 = &recs[ri];
        double *tc = tm + (size_t)ri * 3 * o.reps, *tb = tc + o.reps, *te = tb + o.reps;
        w->wall = pick(tc, o.reps, o.median);
        w->t_base_alone = pick(tb, o.reps, o.median);
        w->t_expert_alone = pick(te, o.reps, o.median);
        w->ideal = w->t_base_alone + w->t_expert_alone;
        w->rate = measured_rate(c0);
        w->n_gen = c0->st.n_generated;
        w->steps = c0->n_steps;
        w->eos = c0->eos;
        w->calls = c0->st.expert_calls;
        w->ex_eval = c0->st.expert_evaluated;
        w->base_eval = c0->st.base_evaluated;
        if (!o.no_rp) {
            w->t_rp = reprefill_expert(expert, c0, n_ctx, o.rp_retime, ref_pt, &w->rp_eval,
                                       &w->rp_retimed);
            w->t_rp_total = w->t_rp + w->t_base_alone;
        }
        fprintf(stderr, "bench_collab: rate %.0f%%: measured %.1f%%, %.3f s vs ideal %.3f s, "
                        "re-prefill %.2f s, %d calls re-timed (%.0f s elapsed)\n",
                100 * w->target, 100 * w->rate, w->wall, w->ideal, w->t_rp_total,
                w->rp_retimed, now() - t_start);
        duet_head_free(fitted_heads[ri]);
        rec_free(&recs[ri]);
    }
    free(tm);
    duet_session_free(ref_s);
    rec_free(&r0);
    rec_free(&cal);
    rec_free(&rr);
    free(uf);

    if (md) print_md(rows, N_RATES);
    else print_csv(stdout, rows, N_RATES);
    /* every rate replays the base over the same number of tokens: a spread in those times
     * means the machine was busy during the run */
    double bmin = INFINITY, bmax = 0;
    for (int i = 0; i < N_RATES; i++) {
        bmin = fmin(bmin, rows[i].t_base_alone / rows[i].base_eval);
        bmax = fmax(bmax, rows[i].t_base_alone / rows[i].base_eval);
    }
    if (bmax > 1.15 * bmin)
        printf("%swarning: the base-alone time per token varied %.2fx between rates: the machine "
               "was busy, timings are unreliable\n", md ? "" : "# ", bmax / bmin);
    /* the re-prefill runs once per rate; its prefill speed should hardly depend on the rate */
    double pmin = INFINITY, pmax = 0;
    for (int i = 0; i < N_RATES; i++)
        if (rows[i].rp_eval > 0 && rows[i].t_rp > 0) {
            pmin = fmin(pmin, rows[i].rp_eval / rows[i].t_rp);
            pmax = fmax(pmax, rows[i].rp_eval / rows[i].t_rp);
        }
    if (pmin < INFINITY)
        printf("%sre-prefill speed %.0f to %.0f tokens/s; reference prefill of %d tokens in the "
               "timing runs: %.0f tokens/s\n", md ? "" : "# ", pmin, pmax, ref_len, 1 / ref_pt);
    if (pmax > 1.15 * pmin || (pmin > 0 && pmin * ref_pt < 0.8))
        printf("%swarning: re-prefill speed %.0f to %.0f tokens/s against %.0f tokens/s for "
               "the reference prefill in the timing runs: the machine was busy, re-prefill "
               "times are unreliable\n", md ? "" : "# ", pmin, pmax, 1 / ref_pt);
    for (int i = 0; i < N_RATES; i++)
        if (!rows[i].identical)
            printf("%swarning: rate %.0f%%: repeated runs emitted different tokens\n",
                   md ? "" : "# ", 100 * rows[i].target);
    if (csv_f) {
        print_csv(csv_f, rows, N_RATES);
        fclose(csv_f);
    }
    duet_head_free(head);
    free(u);
    duet_model_free(base);
    duet_model_free(expert);
    return 0;
}
