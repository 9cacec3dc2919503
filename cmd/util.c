/* util.c: argument parsing shared by the subcommands, and the generation loop of run and chat. */
#include "util.h"


#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *arg_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "duet %s: %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int arg_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s '%s' is not an integer in [%ld, %ld]\n", cmd, flag, s, lo,
                hi);
        return 0;
    }
    *out = (int)v;
    return 1;
}

int arg_u64(const char *cmd, const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') {
        fprintf(stderr, "duet %s: %s '%s' is not a non-negative integer\n", cmd, flag, s);
        return 0;
    }
    *out = v;
    return 1;
}

int arg_float(const char *cmd, const char *flag, const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || isnan(v) || v < lo || v > hi) {
        fprintf(stderr, "duet %s: %s '%s' is not a number in [%g, %g]\n", cmd, flag, s, lo, hi);
        return 0;
    }
    *out = (float)v;
    return 1;
}

int arg_int_list(const char *cmd, const char *flag, const char *s, int *out, int cap) {
    return arg_int_list_in(cmd, flag, s, 0, 1 << 24, out, cap);
}

int arg_int_list_in(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out,
                    int cap) {
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (n == cap) {
            fprintf(stderr, "duet %s: %s: at most %d values\n", cmd, flag, cap);
            return 0;
        }
        if (!arg_int(cmd, flag, tok, lo, hi, &out[n++])) return 0;
    }
    if (!n) fprintf(stderr, "duet %s: %s needs at least one value\n", cmd, flag);
    return n;
}

int arg_cache_type(const char *cmd, const char *flag, const char *s, int *out) {
    if (!strcmp(s, "f32")) *out = DUET_KV_F32;
    else if (!strcmp(s, "f16")) *out = DUET_KV_F16;
    else {
        fprintf(stderr, "duet %s: %s '%s' is not a KV cache type (f32, f16)\n", cmd, flag, s);
        return 0;
    }
    return 1;
}

const char *cache_type_name(int type) { return type == DUET_KV_F16 ? "f16" : "f32"; }

char *read_file(const char *cmd, const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "duet %s: %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        fprintf(stderr, "duet %s: %s: %s\n", cmd, path, bad ? "read error" : "out of memory");
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* ---- progress line -------------------------------------------------------------------------- */
void cli_progress_init(cli_progress *p, int quiet) {
    *p = (cli_progress){.show = !quiet && isatty(2)};
}

void cli_progress_end(cli_progress *p) {
    if (p->open) fputc('\n', stderr);
    p->open = 0;
    p->timing = 0;
}

void cli_progress_update(cli_progress *p, const char *label, const char *unit, long long done,
                         long long total, const char *extra) {
    if (!p->show) return;
    const char *lab = label ? label : "";
    if (p->timing && strcmp(p->label, lab)) cli_progress_end(p);
    double now = duet_time_s();
    if (!p->timing) {
        snprintf(p->label, sizeof p->label, "%s", lab);
        p->t0 = now;
        p->done0 = done;
        p->timing = 1;
        p->last = -1; /* the first update of a label is always drawn */
    }
    int final = done >= total;
    if (!final && p->last >= 0 && now - p->last < 0.1) return;
    p->last = now;
    duet_progress_line l = {lab, unit, done, total, p->done0, now - p->t0, extra};
    char line[512];
    duet_format_progress(line, sizeof line, &l);
    /* \r and erase-to-end redraw the line in place over a longer previous one. */
    fprintf(stderr, "\r\x1b[K%s", line);
    p->open = 1;
    if (final) cli_progress_end(p);
}

/* ---- LoRA adapters ------------------------------------------------------------------------ */
int lora_opts_parse(const char *cmd, lora_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    int expert = !strncmp(a, "--expert-", 9);
    const char *f = a + (expert ? 8 : 1); /* "-lora" or "-lora-scaled" */
    if (strcmp(f, "-lora") && strcmp(f, "-lora-scaled")) return 0;
    const char *path = arg_value(cmd, argc, argv, i), *sv = "1";
    if (!path || (f[5] && !(sv = arg_value(cmd, argc, argv, i)))) return -1;
    float scale;
    if (!arg_float(cmd, a, sv, -1e6, 1e6, &scale)) return -1;
    if (o->n[expert] == LORA_MAX) {
        fprintf(stderr, "duet %s: more than %d adapters for the %s\n", cmd, LORA_MAX,
                expert ? "expert" : "base");
        return -1;
    }
    o->path[expert][o->n[expert]] = path;
    o->scale[expert][o->n[expert]++] = scale;
    return 1;
}

int lora_attach(lora_opts *o, int which, duet_model *m, duet_error *err) {
    for (int k = 0; k < o->n[which]; k++) {
        duet_lora *a = NULL;
        int rc = duet_lora_load(o->path[which][k], m, &a, err);
        if (!rc) o->held[o->n_held++] = a;
        if (!rc) rc = duet_model_add_lora(m, a, o->scale[which][k], err);
        if (rc) return rc;
    }
    return DUET_OK;
}

void lora_opts_free(lora_opts *o) {
    for (int k = 0; k < o->n_held; k++) duet_lora_free(o->held[k]);
    o->n_held = 0;
}

void lora_opts_usage(FILE *f) {
    fputs("LoRA adapters (llama.cpp's LoRA GGUF; applied unmerged; repeatable):\n"
          "  --lora FILE          adapter for the base, scale 1\n"
          "  --lora-scaled FILE S adapter for the base, scale S\n"
          "  --expert-lora FILE, --expert-lora-scaled FILE S   the same for the expert\n", f);
}

/* ---- generation (run, chat) -------------------------------------------------------------- */
void gen_opts_init(gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_predict = -1;
    o->policy = -1;
    o->cp.threshold = -1;
    duet_sampler_defaults(&o->cp.sampling);
    o->cp.sampling.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
}

void gen_opts_free(gen_opts *o) {
    free(o->chat_template_buf);
    o->chat_template_buf = NULL;
    lora_opts_free(&o->lora);
}

void gen_opts_usage(FILE *f) {
    fputs("  -m, --model FILE     GGUF model (the base when --expert is given)\n"
          "  -n, --n-predict N    new tokens to generate (-1: until EOS or context full; default -1)\n"
          "  -c, --ctx-size N     context size (default min(training context, 4096))\n"
          "  -t, --threads N      threads (default: all cores)\n"
          "  -ctk, --cache-type-k TYPE  KV cache type of keys: f32 (default) or f16 (half the\n"
          "                       memory, slightly different logits)\n"
          "  -ctv, --cache-type-v TYPE  the same for values\n"
          "  --temp T             temperature (default 0.8; 0 = greedy)\n"
          "  --top-k K            top-k (default 40; 0 = off)\n"
          "  --top-p P            top-p (default 0.95; 1 = off)\n"
          "  --min-p P            min-p (default 0.05; 0 = off)\n"
          "  -s, --seed S         RNG seed (default: random)\n"
          "  --mmap               compute from the file mapping (faster start, slower generation)\n"
          "  --no-repack          keep Q4_0/Q8_0 rows in file order (slower; same results)\n"
          "  --quiet              no load line or timings on stderr\n"
          "  --verbose-prompt     print the prompt text and its token ids on stderr\n"
          "chat:\n"
          "  --system TEXT        system message\n"
          "  --chat-template T    chat format by name (chatml, llama3, mistral-v7, ...; `duet chat\n"
          "                       --list-templates`) or a Jinja template's text; default: the\n"
          "                       model's tokenizer.chat_template\n"
          "  --chat-template-file FILE  the same, read from a file\n"
          "collaboration (Co-LLM):\n"
          "  --expert FILE        expert model; the base defers tokens to it\n"
          "  --head FILE          deferral head of the base (duet head init / train)\n"
          "  --policy NAME        collm (default with --head), base, expert, random, confidence,\n"
          "                       compose, proxy, contrastive, uncertainty, cd, cd_v2\n"
          "  --threshold X        eta for collm/compose (default: the head's, else 0.5);\n"
          "                       entropy in nats for uncertainty (default 2.0)\n"
          "  --random-rate R      deferral probability of the random policy (default 0;\n"
          "                       the paper's random baseline is 0.5)\n"
          "  --anti FILE          third model for proxy tuning (logits_e + logits_b - logits_anti)\n"
          "  --expert-sync MODE   lazy (default: catch up only when deferring) or eager\n"
          "  --color              highlight expert tokens on a terminal\n", f);
    lora_opts_usage(f);
}

int gen_opts_parse(const char *cmd, gen_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    duet_sampler_params *sp = &o->cp.sampling;
#define VAL() do { if (!(v = arg_value(cmd, argc, argv, i))) return -1; } while (0)
#define NUM(call) do { VAL(); if (!(call)) return -1; } while (0)
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); o->model_path = v; }
    else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) NUM(arg_int(cmd, a, v, -1, 1 << 24, &o->n_predict));
    else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) NUM(arg_int(cmd, a, v, 0, 1 << 24, &o->n_ctx));
    else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) NUM(arg_int(cmd, a, v, 1, 256, &o->n_threads));
    else if (!strcmp(a, "-ctk") || !strcmp(a, "--cache-type-k")) NUM(arg_cache_type(cmd, a, v, &o->cp.type_k));
    else if (!strcmp(a, "-ctv") || !strcmp(a, "--cache-type-v")) NUM(arg_cache_type(cmd, a, v, &o->cp.type_v));
    else if (!strcmp(a, "--temp")) NUM(arg_float(cmd, a, v, 0, 1e6, &sp->temp));
    else if (!strcmp(a, "--top-k")) NUM(arg_int(cmd, a, v, 0, 1 << 30, &sp->top_k));
    else if (!strcmp(a, "--top-p")) NUM(arg_float(cmd, a, v, 0, 1, &sp->top_p));
    else if (!strcmp(a, "--min-p")) NUM(arg_float(cmd, a, v, 0, 1, &sp->min_p));
    else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) NUM(arg_u64(cmd, a, v, &sp->seed));
    else if (!strcmp(a, "--expert")) { VAL(); o->expert_path = v; }
    else if (!strcmp(a, "--head")) { VAL(); o->head_path = v; }
    else if (!strcmp(a, "--anti")) { VAL(); o->anti_path = v; }
    else if (!strcmp(a, "--system")) { VAL(); o->system = v; }
    else if (!strcmp(a, "--chat-template")) { VAL(); o->chat_template = v; }
    else if (!strcmp(a, "--chat-template-file")) {
        VAL();
        free(o->chat_template_buf);
        if (!(o->chat_template_buf = read_file(cmd, v, NULL))) return -1;
        o->chat_template = o->chat_template_buf;
    } else if (!strcmp(a, "--policy")) {
        VAL();
        if ((o->policy = duet_policy_from_name(v)) < 0) {
            fprintf(stderr, "duet %s: --policy '%s' is not one of collm, base, expert, random, "
                            "confidence, compose, proxy, contrastive, uncertainty, cd, cd_v2\n", cmd, v);
            return -1;
        }
    } else if (!strcmp(a, "--threshold")) NUM(arg_float(cmd, a, v, 0, 1e6, &o->cp.threshold));
    else if (!strcmp(a, "--random-rate")) NUM(arg_float(cmd, a, v, 0, 1, &o->cp.random_rate));
    else if (!strcmp(a, "--expert-sync")) {
        VAL();
        if (strcmp(v, "lazy") && strcmp(v, "eager")) {
            fprintf(stderr, "duet %s: --expert-sync '%s' is not lazy or eager\n", cmd, v);
            return -1;
        }
        o->cp.eager_sync = !strcmp(v, "eager");
    } else if (!strcmp(a, "--mmap")) o->use_mmap = 1;
    else if (!strcmp(a, "--no-mmap")) o->use_mmap = 0;
    else if (!strcmp(a, "--no-repack")) o->no_repack = 1;
    else if (!strcmp(a, "--quiet")) o->quiet = 1;
    else if (!strcmp(a, "--color")) o->color = 1;
    else if (!strcmp(a, "--verbose-prompt")) o->verbose_prompt = 1;
    else return lora_opts_parse(cmd, &o->lora, argc, argv, i);
#undef NUM
#undef VAL
    return 1;
}

int gen_opts_finish(const char *cmd, gen_opts *o) {
    if (!o->model_path) {
        fprintf(stderr, "duet %s: -m MODEL is required\n", cmd);
        return 0;
    }
    if (o->policy < 0)
        o->policy = !o->expert_path ? DUET_POLICY_BASE : o->head_path ? DUET_POLICY_COLLM : -1;
    if (o->policy < 0) {
        fprintf(stderr, "duet %s: with --expert, give --head (policy collm) or --policy NAME\n", cmd);
        return 0;
    }
    o->cp.policy = (duet_policy)o->policy;
    o->cp.n_ctx = o->n_ctx;
    return 1;
}

int gen_load(const char *cmd, const gen_opts *o, gen_models *g, duet_error *err) {
    memset(g, 0, sizeof *g);
    double t0 = duet_time_s();
    duet_model_params mp = {.n_threads = o->n_threads, .use_mmap = o->use_mmap,
                             .no_repack = o->no_repack};
    int rc;
    if ((rc = duet_model_load(o->model_path, &mp, &g->base, err)) ||
        (rc = lora_attach((lora_opts *)&o->lora, 0, g->base, err)) ||
        (o->expert_path && (rc = duet_model_load(o->expert_path, &mp, &g->expert, err))) ||
        (g->expert && (rc = lora_attach((lora_opts *)&o->lora, 1, g->expert, err))) ||
        (o->anti_path && (rc = duet_model_load(o->anti_path, &mp, &g->anti, err))) ||
        (o->head_path && (rc = duet_head_load(o->head_path, g->base, &g->head, err))))
        return rc;
    double t_load = duet_time_s() - t0;
    if ((rc = duet_collab_new(g->base, g->expert, g->anti, g->head, &o->cp, &g->co, err))) return rc;
    if (!o->quiet) {
        const duet_hparams *hp = duet_model_hparams(g->base);
        fprintf(stderr, "duet %s: %s (%s, %d layers, n_embd %d, vocab %d)%s%s%s loaded in %.2fs%s%s\n",
                cmd, hp->name, hp->arch, hp->n_layer, hp->n_embd, hp->n_vocab,
                g->expert ? " + expert " : "", g->expert ? duet_model_hparams(g->expert)->name : "",
                g->expert && duet_collab_bridged(g->co) ? " (vocabulary bridge)" : "", t_load,
                g->expert ? "; policy " : "", g->expert ? duet_policy_name(o->policy) : "");
    }
    return DUET_OK;
}

void gen_free(gen_models *g) {
    duet_collab_free(g->co);
    duet_head_free(g->head);
    duet_model_free(g->anti);
    duet_model_free(g->expert);
    duet_model_free(g->base);
    memset(g, 0, sizeof *g);
}

void gen_result_free(gen_result *r) {
    free(r->text);
    memset(r, 0, sizeof *r);
}

void json_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\u%04x", ch);
        else if (ch >= 0x80) { /* whole UTF-8 sequences pass; a stray byte stays valid JSON */
            size_t len = ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : ch >= 0xc0 ? 2 : 0;
            int ok = len && i + len <= n;
            for (size_t k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
            if (ok) { fwrite(s + i, 1, len, f); i += len - 1; }
            else fprintf(f, "\\u%04x", ch);
        } else fputc(ch, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.6g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

/* What the per-token callback needs: where printing stands, colours, the trace. */
typedef struct gen_show {
    size_t shown;
    int hl, flush, n;
    FILE *trace;
} gen_show;

/* Print text[shown..to) on stdout, expert bytes highlighted when hl. */
static void show(gen_show *v, const duet_gen *g, size_t to) {
    const char *text = duet_gen_text(g, NULL);
    const unsigned char *src = duet_gen_sources(g);
    while (v->shown < to) {
        size_t j = v->shown;
        int s = src[j];
        while (j < to && src[j] == s) j++;
        if (v->hl && s != DUET_SRC_BASE) fputs(s == DUET_SRC_EXPERT ? "\x1b[1;36m" : "\x1b[1;35m", stdout);
        fwrite(text + v->shown, 1, j - v->shown, stdout);
        if (v->hl && s != DUET_SRC_BASE) fputs("\x1b[0m", stdout);
        v->shown = j;
    }
    if (v->flush) fflush(stdout);
}

static void trace_line(FILE *trace, int i, const duet_gen *g, const duet_collab_token *t) {
    size_t len;
    const char *piece = duet_gen_piece(g, &len);
    fprintf(trace, "{\"i\":%d,\"id\":%d,\"text\":", i, t->id);
    json_str(trace, piece, len);
    fprintf(trace, ",\"source\":\"%s\"", duet_source_name(t->source));
    json_num(trace, "p_defer", t->p_defer);
    json_num(trace, "score", t->score);
    fprintf(trace, ",\"base_top\":%d", t->base_top);
    json_num(trace, "base_top_p", t->base_top_p);
    fprintf(trace, ",\"expert_top\":%d", t->expert_top);
    json_num(trace, "expert_top_p", t->expert_top >= 0 ? t->expert_top_p : NAN);
    fputs("}\n", trace);
}

static int on_token(void *ud, const duet_gen *g, const duet_collab_token *t) {
    gen_show *v = ud;
    if (v->trace) trace_line(v->trace, v->n, g, t);
    v->n++;
    show(v, g, duet_gen_ready(g));
    return 0;
}

int gen_decode(const gen_opts *o, gen_models *g, const char *stop, FILE *trace, gen_result *r,
               duet_error *err) {
    memset(r, 0, sizeof *r);
    int tty = isatty(1);
    gen_show v = {.hl = o->color && tty, .flush = tty, .trace = trace};
    double t0 = duet_time_s();
    const char *stops[1] = {stop};
    duet_gen_params gp = {.max_tokens = o->n_predict, .stops = stops, .n_stops = stop ? 1 : 0};
    duet_gen *gen = NULL;
    int rc = duet_generate(g->co, &gp, on_token, &v, &gen, err);
    if (gen) {
        int end = duet_gen_end(gen);
        if (end == DUET_GEN_CONTEXT && !o->quiet) fprintf(stderr, "\nduet: %s\n", err->msg);
        v.flush = 1;
        show(&v, gen, duet_gen_ready(gen));
        size_t len;
        const char *text = duet_gen_text(gen, &len);
        r->text = malloc(len + 1);
        if (r->text) memcpy(r->text, text, len + 1);
        else if (!rc) rc = DUET_ERR_NOMEM, snprintf(err->msg, sizeof err->msg, "out of memory");
        r->len = len;
        r->n_gen = duet_gen_n_tokens(gen);
        r->stop = end;
    }
    duet_gen_free(gen);
    r->t_gen = duet_time_s() - t0;
    return rc;
}

void gen_print_stats(const char *cmd, const gen_models *g, int n_prompt, double t_prompt,
                     const gen_result *r) {
    const duet_collab_stats *st = duet_collab_get_stats(g->co);
    fprintf(stderr, "duet %s: prompt %d tokens in %.3fs (%.2f tok/s); generated %d tokens in "
                    "%.3fs (%.2f tok/s)\n", cmd, n_prompt, t_prompt,
            n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), r->n_gen, r->t_gen,
            r->n_gen / (r->t_gen > 0 ? r->t_gen : 1e-9));
    if (g->expert)
        fprintf(stderr, "duet %s: deferred %d of %d tokens (%.1f%%), expert calls %d, expert "
                        "tokens evaluated %ld (prompt + catch-up), time base %.3fs, expert %.3fs\n",
                cmd, st->n_deferred, st->n_generated,
                100.0 * st->n_deferred / (st->n_generated ? st->n_generated : 1), st->expert_calls,
                st->expert_evaluated, st->t_base, st->t_expert);
}

void gen_print_prompt(const char *cmd, const char *text, size_t len, const int32_t *toks, int n) {
    fprintf(stderr, "duet %s: prompt: ", cmd);
    json_str(stderr, text, len);
    fprintf(stderr, "\nduet %s: prompt tokens (%d): [", cmd, n);
    for (int i = 0; i < n; i++) fprintf(stderr, i ? ", %d" : "%d", toks[i]);
    fputs("]\n", stderr);
}

/* duet_tokenize, or duet_tokenize_masked when plain is set */
static int encode(const duet_model *m, const char *text, size_t len, int add_bos, int parse_special,
                  const unsigned char *plain, int32_t *t, int cap, duet_error *err) {
    return plain ? duet_tokenize_masked(m, text, len, add_bos, plain, t, cap, err)
                 : duet_tokenize(m, text, len, add_bos, parse_special, t, cap, err);
}

int32_t *tokenize_alloc(const duet_model *m, const char *text, size_t len, int add_bos,
                        int parse_special, const unsigned char *plain, int *n, duet_error *err) {
    int k = encode(m, text, len, add_bos, parse_special, plain, NULL, 0, err);
    if (k < 0) return NULL;
    int32_t *t = malloc((size_t)(k + 1) * sizeof *t);
    if (!t) { snprintf(err->msg, sizeof err->msg, "out of memory"); return NULL; }
    if ((k = encode(m, text, len, add_bos, parse_special, plain, t, k, err)) < 0) {
        free(t);
        return NULL;
    }
    *n = k;
    return t;
}

char *chat_render_alloc(const duet_model *m, const char *override, const duet_chat_message *msgs,
                        int n, unsigned char **plain, duet_error *err) {
    char *s = NULL;
    size_t len;
    return duet_model_chat_prompt(m, override, msgs, n, 1, &s, plain, &len, err) ? NULL : s;
}
