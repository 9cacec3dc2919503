/* run.c: `duet run`: generate text with one model, or with a base and an expert together
 * (Co-LLM). Flags follow llama.cpp's llama-cli where one exists. stdout: the prompt, then the
 * continuation; stderr: load info, timings and the collaboration summary. All decoding goes
 * through the library's collab API (a single model is the "base" policy without expert). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "duet.h"
#include "util.h"

static void run_usage(FILE *f) {
    fprintf(f,
            "usage: duet run -m MODEL [-p PROMPT | -f FILE] [-n N] [options]\n"
            "  -m, --model FILE     GGUF model (the base when --expert is given)\n"
            "  -p, --prompt TEXT    prompt (default empty: start from BOS)\n"
            "  -f, --file FILE      read the prompt from a file\n"
            "  -n, --n-predict N    new tokens to generate (-1: until EOS or context full; default -1)\n"
            "  -c, --ctx-size N     context size (default min(training context, 4096))\n"
            "  -t, --threads N      threads (default: all cores)\n"
            "  --temp T             temperature (default 0.8; 0 = greedy)\n"
            "  --top-k K            top-k (default 40; 0 = off)\n"
            "  --top-p P            top-p (default 0.95; 1 = off)\n"
            "  --min-p P            min-p (default 0.05; 0 = off)\n"
            "  -s, --seed S         RNG seed (default: random)\n"
            "  --no-bos             do not add BOS\n"
            "  --parse-special      text spelling control tokens (\"<s>\") becomes those tokens\n"
            "  --mmap               compute from the file mapping (faster start, slower generation)\n"
            "  --quiet              no timings on stderr\n"
            "collaboration (Co-LLM):\n"
            "  --expert FILE        expert model; the base defers tokens to it\n"
            "  --head FILE          deferral head of the base (duet head init / train)\n"
            "  --policy NAME        collm (default with --head), base, expert, random, confidence,\n"
            "                       compose, proxy, contrastive, uncertainty\n"
            "  --threshold X        eta for collm/compose (default: the head's, else 0.5);\n"
            "                       entropy in nats for uncertainty (default 2.0)\n"
            "  --random-rate R      deferral probability of the random policy\n"
            "  --anti FILE          third model for proxy tuning (logits_e + logits_b - logits_anti)\n"
            "  --expert-sync MODE   lazy (default: catch up only when deferring) or eager\n"
            "  --trace FILE         one JSON line per token: id, text, source, p_defer, top tokens\n"
            "  --color              highlight expert tokens on a terminal\n");
}

/* JSON string body for a token piece (bytes >= 0x80 pass through; the caller keeps pieces
 * whole, and a lone invalid byte becomes \u00XX so the line stays valid JSON). */
static void json_str(FILE *f, const char *s, int n) {
    fputc('"', f);
    for (int i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\u%04x", ch);
        else if (ch >= 0x80) {
            int len = ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : ch >= 0xc0 ? 2 : 0, ok = len && i + len <= n;
            for (int k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
            if (ok) { fwrite(s + i, 1, (size_t)len, f); i += len - 1; }
            else fprintf(f, "\\u%04x", ch);
        } else fputc(ch, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.6g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

int cmd_run(int argc, char **argv) {
    const char *model_path = NULL, *prompt = "", *prompt_file = NULL, *expert_path = NULL;
    const char *head_path = NULL, *anti_path = NULL, *trace_path = NULL;
    int n_predict = -1, n_ctx = 0, n_threads = 0, no_bos = 0, parse_special = 0, use_mmap = 0;
    int quiet = 0, color = 0, policy = -1;
    duet_collab_params cp = {.threshold = -1};
    duet_sampler_defaults(&cp.sampling);
    cp.sampling.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
#define VAL() do { if (!(v = arg_value("run", argc, argv, &i))) return 2; } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { run_usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); model_path = v; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { VAL(); prompt = v; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { VAL(); prompt_file = v; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            VAL(); if (!arg_int("run", a, v, -1, 1 << 24, &n_predict)) return 2;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            VAL(); if (!arg_int("run", a, v, 0, 1 << 24, &n_ctx)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            VAL(); if (!arg_int("run", a, v, 1, 256, &n_threads)) return 2;
        } else if (!strcmp(a, "--temp")) {
            VAL(); if (!arg_float("run", a, v, 0, 1e6, &cp.sampling.temp)) return 2;
        } else if (!strcmp(a, "--top-k")) {
            VAL(); if (!arg_int("run", a, v, 0, 1 << 30, &cp.sampling.top_k)) return 2;
        } else if (!strcmp(a, "--top-p")) {
            VAL(); if (!arg_float("run", a, v, 0, 1, &cp.sampling.top_p)) return 2;
        } else if (!strcmp(a, "--min-p")) {
            VAL(); if (!arg_float("run", a, v, 0, 1, &cp.sampling.min_p)) return 2;
        } else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
            VAL(); if (!arg_u64("run", a, v, &cp.sampling.seed)) return 2;
        } else if (!strcmp(a, "--expert")) { VAL(); expert_path = v; }
        else if (!strcmp(a, "--head")) { VAL(); head_path = v; }
        else if (!strcmp(a, "--anti")) { VAL(); anti_path = v; }
        else if (!strcmp(a, "--trace")) { VAL(); trace_path = v; }
        else if (!strcmp(a, "--policy")) {
            VAL();
            if ((policy = duet_policy_from_name(v)) < 0) {
                fprintf(stderr, "duet run: --policy '%s' is not one of collm, base, expert, random, "
                                "confidence, compose, proxy, contrastive, uncertainty\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--threshold")) {
            VAL(); if (!arg_float("run", a, v, 0, 1e6, &cp.threshold)) return 2;
        } else if (!strcmp(a, "--random-rate")) {
            VAL(); if (!arg_float("run", a, v, 0, 1, &cp.random_rate)) return 2;
        } else if (!strcmp(a, "--expert-sync")) {
            VAL();
            if (strcmp(v, "lazy") && strcmp(v, "eager")) {
                fprintf(stderr, "duet run: --expert-sync '%s' is not lazy or eager\n", v);
                return 2;
            }
            cp.eager_sync = !strcmp(v, "eager");
        } else if (!strcmp(a, "--no-bos")) no_bos = 1;
        else if (!strcmp(a, "--parse-special")) parse_special = 1;
        else if (!strcmp(a, "--mmap")) use_mmap = 1;
        else if (!strcmp(a, "--no-mmap")) use_mmap = 0;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--color")) color = 1;
        else {
            fprintf(stderr, "duet run: unknown option '%s'\n", a);
            run_usage(stderr);
            return 2;
        }
#undef VAL
    }
    if (!model_path) {
        fprintf(stderr, "duet run: -m MODEL is required\n");
        run_usage(stderr);
        return 2;
    }
    if (policy < 0) policy = !expert_path ? DUET_POLICY_BASE : head_path ? DUET_POLICY_COLLM : -1;
    if (policy < 0) {
        fprintf(stderr, "duet run: with --expert, give --head (policy collm) or --policy NAME\n");
        return 2;
    }
    cp.policy = (duet_policy)policy;
    cp.n_ctx = n_ctx;
    cp.details = trace_path != NULL;
    char *file_text = NULL;
    size_t prompt_len = strlen(prompt);
    if (prompt_file) {
        if (!(file_text = read_file("run", prompt_file, &prompt_len))) return 1;
        prompt = file_text;
    }

    duet_error err = {0};
    duet_model *base = NULL, *expert = NULL, *anti = NULL;
    duet_head *head = NULL;
    duet_collab *co = NULL;
    FILE *trace = NULL;
    int32_t *toks = NULL;
    int rc = 1;
    char trace_tmp[4096] = "";
    double t0 = duet_time_s();
    duet_model_params mp = {.n_threads = n_threads, .use_mmap = use_mmap};
    if (duet_model_load(model_path, &mp, &base, &err)) goto fail;
    if (expert_path && duet_model_load(expert_path, &mp, &expert, &err)) goto fail;
    if (anti_path && duet_model_load(anti_path, &mp, &anti, &err)) goto fail;
    if (head_path && duet_head_load(head_path, base, &head, &err)) goto fail;
    double t_load = duet_time_s() - t0;
    if (duet_collab_new(base, expert, anti, head, &cp, &co, &err)) goto fail;
    const duet_hparams *hp = duet_model_hparams(base);
    int n_tok = duet_tokenize(base, prompt, prompt_len, !no_bos, parse_special, NULL, 0, &err);
    if (n_tok < 0) goto fail;
    toks = malloc((size_t)(n_tok + 1) * sizeof *toks);
    if (!toks) { snprintf(err.msg, sizeof err.msg, "out of memory"); goto fail; }
    n_tok = duet_tokenize(base, prompt, prompt_len, !no_bos, parse_special, toks, n_tok, &err);
    if (n_tok < 0) goto fail;
    if (n_tok == 0) {
        snprintf(err.msg, sizeof err.msg, "empty prompt and the model has no BOS token");
        goto fail;
    }
    if (trace_path) { /* written to a temp file, renamed at the end: no partial output */
        snprintf(trace_tmp, sizeof trace_tmp, "%s.tmp", trace_path);
        if (!(trace = fopen(trace_tmp, "w"))) {
            snprintf(err.msg, sizeof err.msg, "%s: cannot write", trace_tmp);
            goto fail;
        }
    }
    if (!quiet)
        fprintf(stderr, "duet run: %s (%s, %d layers, n_embd %d, vocab %d)%s%s%s loaded in %.2fs; "
                        "%s%s%sprompt %d tokens\n", hp->name, hp->arch, hp->n_layer, hp->n_embd,
                hp->n_vocab, expert ? " + expert " : "", expert ? duet_model_hparams(expert)->name : "",
                expert && duet_collab_bridged(co) ? " (vocabulary bridge)" : "", t_load,
                expert ? "policy " : "", expert ? duet_policy_name(policy) : "", expert ? "; " : "", n_tok);
    fwrite(prompt, 1, prompt_len, stdout);
    fflush(stdout);
    int tty = isatty(1), hl = color && tty;
    if (duet_collab_start(co, toks, n_tok, &err)) goto fail;
    double t_prompt = duet_collab_get_stats(co)->t_total;
    int32_t prev = toks[n_tok - 1];
    char piece[256];
    int n_gen = 0, status = DUET_OK;
    double tg0 = duet_time_s();
    while (n_predict < 0 || n_gen < n_predict) {
        duet_collab_token t;
        status = duet_collab_step(co, &t, &err);
        if (status == DUET_EOS) break;
        if (status == DUET_ERR_RANGE) {
            if (!quiet) fprintf(stderr, "\nduet run: %s\n", err.msg);
            break;
        }
        if (status) goto fail;
        int len = duet_token_to_piece(base, prev, t.id, piece, sizeof piece);
        len = len < 0 ? 0 : len > (int)sizeof piece ? (int)sizeof piece : len;
        if (hl && t.source != DUET_SRC_BASE) fputs(t.source == DUET_SRC_EXPERT ? "\x1b[1;36m" : "\x1b[1;35m", stdout);
        fwrite(piece, 1, (size_t)len, stdout);
        if (hl && t.source != DUET_SRC_BASE) fputs("\x1b[0m", stdout);
        if (tty) fflush(stdout);
        if (trace) {
            static const char *src[3] = {"base", "expert", "mixed"};
            fprintf(trace, "{\"i\":%d,\"id\":%d,\"text\":", n_gen, t.id);
            json_str(trace, piece, len);
            fprintf(trace, ",\"source\":\"%s\"", src[t.source]);
            json_num(trace, "p_defer", t.p_defer);
            json_num(trace, "score", t.score);
            fprintf(trace, ",\"base_top\":%d", t.base_top);
            json_num(trace, "base_top_p", t.base_top_p);
            fprintf(trace, ",\"expert_top\":%d", t.expert_top);
            json_num(trace, "expert_top_p", t.expert_top >= 0 ? t.expert_top_p : NAN);
            fputs("}\n", trace);
        }
        n_gen++;
        prev = t.id;
    }
    double t_gen = duet_time_s() - tg0;
    printf("\n");
    fflush(stdout);
    if (trace) {
        int bad = ferror(trace) | fclose(trace);
        trace = NULL;
        if (bad || rename(trace_tmp, trace_path)) {
            snprintf(err.msg, sizeof err.msg, "%s: write failed", trace_path);
            goto fail;
        }
    }
    if (!quiet) {
        const duet_collab_stats *st = duet_collab_get_stats(co);
        fprintf(stderr, "duet run: prompt %d tokens in %.3fs (%.2f tok/s); generated %d tokens in "
                        "%.3fs (%.2f tok/s)\n", n_tok, t_prompt, n_tok / (t_prompt > 0 ? t_prompt : 1e-9),
                n_gen, t_gen, n_gen / (t_gen > 0 ? t_gen : 1e-9));
        if (expert)
            fprintf(stderr, "duet run: deferred %d of %d tokens (%.1f%%), expert calls %d, expert "
                            "tokens evaluated %ld (prompt + catch-up), time base %.3fs, expert %.3fs\n",
                    st->n_deferred, st->n_generated, 100.0 * st->n_deferred / (st->n_generated ? st->n_generated : 1),
                    st->expert_calls, st->expert_evaluated, st->t_base, st->t_expert);
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "duet run: %s\n", err.msg);
done:
    if (trace) {
        fclose(trace);
        remove(trace_tmp);
    }
    free(toks);
    free(file_text);
    duet_collab_free(co);
    duet_head_free(head);
    duet_model_free(anti);
    duet_model_free(expert);
    duet_model_free(base);
    return rc;
}
