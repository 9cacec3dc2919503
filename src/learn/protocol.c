/*
 * protocol.c: the official Co-LLM prompts and splits (see protocol.h). The splits replay the
 * exact random draws of the official loaders (pyrandom.c), so the same public file gives the
 * same problems, in the same order, as the paper's evaluation.
 */
#include "learn/protocol.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "learn/answers.h"
#include "base/atomic_file.h"
#include "learn/pyrandom.h"

#define SPLIT_SEED 42
#define GSM8K_TEST 200
#define GSM8K_VALIDATION 50
#define GSM8K_SMALL_VALIDATION 10
#define MATH_TEST_PER_GROUP 25
#define MATH_VALIDATION_PER_GROUP 2

static const char *k_protocols[] = {"duet", "paper"};
static const char *k_scorings[] = {"auto", "duet", "paper"};
static const char *k_splits[] = {"auto", "all", "test", "validation"};

static int index_of(const char *const *names, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], name)) return i;
    return -1;
}
const char *duet_eval_protocol_name(int p) { return p >= 0 && p < 2 ? k_protocols[p] : "?"; }
const char *protocol_scoring_name(int s) { return s >= 0 && s < 3 ? k_scorings[s] : "?"; }
const char *protocol_split_name(int s) { return s >= 0 && s < 4 ? k_splits[s] : "?"; }
int duet_eval_protocol_from_name(const char *name) { return index_of(k_protocols, 2, name); }
int duet_eval_scoring_from_name(const char *name) {
    int s = index_of(k_scorings, 3, name);
    return s > 0 ? s : -1; /* "auto" is the absence of the flag, not a value to pass */
}
int duet_eval_split_from_name(const char *name) {
    int s = index_of(k_splits, 4, name);
    return s > 0 ? s : -1;
}

/* ---- JSONL ------------------------------------------------------------------------------ */
void protocol_free_jsonl(jsonl_rec *r, int n) {
    for (int i = 0; r && i < n; i++) {
        json_decref(r[i].o);
        free(r[i].text);
    }
    free(r);
}

int protocol_read_jsonl(const char *path, jsonl_rec **out, int *n_out, duet_error *err) {
    *out = NULL;
    *n_out = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return duet_fail(err, DUET_ERR_IO, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long ln = 0;
    int rc = DUET_OK, n = 0, vcap = 0;
    jsonl_rec *v = NULL;
    while (rc == DUET_OK && (len = getline(&line, &cap, f)) >= 0) {
        ln++;
        size_t k = 0;
        while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n')) k++;
        if (k == (size_t)len) continue; /* blank line */
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)len, JSON_DISABLE_EOF_CHECK, &je);
        if (!o || !json_is_object(o)) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s:%ld: %s%s", path, ln, o ? "not a JSON object" : "invalid JSON: ",
                           o ? "" : je.text);
            json_decref(o);
            break;
        }
        if (n == vcap) {
            vcap = vcap ? 2 * vcap : 64;
            jsonl_rec *nv = realloc(v, (size_t)vcap * sizeof *nv);
            if (!nv) { json_decref(o); rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
            v = nv;
        }
        size_t tl = (size_t)len;
        while (tl && (line[tl - 1] == '\n' || line[tl - 1] == '\r')) tl--;
        char *t = malloc(tl + 1);
        if (!t) { json_decref(o); rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
        memcpy(t, line, tl);
        t[tl] = 0;
        v[n++] = (jsonl_rec){o, ln, t, tl};
    }
    if (rc == DUET_OK && ferror(f)) rc = duet_fail(err, DUET_ERR_IO, "%s: read error", path);
    free(line);
    fclose(f);
    if (rc) {
        protocol_free_jsonl(v, n);
        return rc;
    }
    *out = v;
    *n_out = n;
    return DUET_OK;
}

/* ---- prompts ------------------------------------------------------------------------------ */
char *protocol_prompt(int task, int protocol, const char *q) {
    const char *pre, *mid, *post;
    size_t st = 0, len = strlen(q);
    if (protocol == DUET_EVAL_PROTOCOL_PAPER) {
        answers_py_strip(q, len, &st, &len); /* the official loaders strip the question */
        int math = task == DUET_EVAL_TASK_MATH;
        pre = math ? PROTOCOL_MATH_PREFIX : PROTOCOL_GSM8K_PREFIX;
        mid = math ? "Problem: " : "Question: ";
        post = math ? "\n\nSolution:" : "\nAnswer:";
    } else {
        pre = PROTOCOL_GSM8K_PREFIX;
        mid = "Question: ";
        post = "\nAnswer:";
    }
    size_t a = strlen(pre), b = strlen(mid), c = strlen(post);
    char *s = malloc(a + b + len + c + 1);
    if (!s) return NULL;
    memcpy(s, pre, a);
    memcpy(s + a, mid, b);
    memcpy(s + a + b, q + st, len);
    memcpy(s + a + b + len, post, c + 1);
    return s;
}

/* ---- splits --------------------------------------------------------------------------------- */
static const char *field(const jsonl_rec *r, const char *key, const char *path, duet_error *err) {
    json_t *v = json_object_get(r->o, key);
    if (json_is_string(v)) return json_string_value(v);
    duet_fail(err, DUET_ERR_FORMAT, "%s:%ld: field '%s' is %s (the official split needs it)", path, r->line, key,
              v ? "not a string" : "missing");
    return NULL;
}

/* GSM8K: problems are the (question, reference) pairs the official loader builds; the
 * validation draw excludes every problem equal to a test one, duplicates included. */
static int split_gsm8k(int split, const jsonl_rec *r, int n, const char *path, int *idx, int *n_idx,
                       duet_error *err) {
    const char **q = calloc((size_t)n + 1, sizeof *q);
    char **a = calloc((size_t)n + 1, sizeof *a);
    int *test = malloc(((size_t)n + 1) * sizeof *test), *rest = malloc(((size_t)n + 1) * sizeof *rest);
    unsigned char *in_test = calloc((size_t)n + 1, 1);
    int rc = q && a && test && rest && in_test ? DUET_OK : duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        const char *ans = field(&r[i], "answer", path, err);
        if (!(q[i] = field(&r[i], "question", path, err)) || !ans) { rc = DUET_ERR_FORMAT; break; }
        char ref[ANSWERS_CAP];
        if (!answers_gsm8k_paper_reference(ans, ref, sizeof ref)) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s:%ld: field 'answer' has no '####'", path, r[i].line);
            break;
        }
        if (!(a[i] = strdup(ref))) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    mt19937 m;
    py_random_seed(&m, SPLIT_SEED);
    int n_test = n > GSM8K_TEST ? GSM8K_TEST : n, n_val = n > GSM8K_TEST ? GSM8K_VALIDATION : GSM8K_SMALL_VALIDATION;
    if (!rc && n > GSM8K_TEST) {
        if (py_sample(&m, n, n_test, test)) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        for (int i = 0; !rc && i < n_test; i++) in_test[test[i]] = 1;
        int n_rest = 0;
        for (int i = 0; !rc && i < n; i++) {
            int dup = in_test[i];
            for (int t = 0; !dup && t < n_test; t++) dup = !strcmp(q[i], q[test[t]]) && !strcmp(a[i], a[test[t]]);
            if (!dup) rest[n_rest++] = i;
        }
        if (!rc && n_rest < n_val)
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: %d problems left after the test split, the validation "
                           "split needs %d", path, n_rest, n_val);
        if (!rc && split == DUET_EVAL_SPLIT_VALIDATION) {
            int *pick = malloc((size_t)n_val * sizeof *pick);
            if (!pick || py_sample(&m, n_rest, n_val, pick)) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
            for (int i = 0; !rc && i < n_val; i++) idx[i] = rest[pick[i]];
            free(pick);
        } else if (!rc) {
            memcpy(idx, test, (size_t)n_test * sizeof *idx);
        }
    } else if (!rc) { /* a small file: all of it is the test split */
        if (split == DUET_EVAL_SPLIT_VALIDATION && n < n_val)
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: %d problems; the validation split draws %d", path, n, n_val);
        else if (split == DUET_EVAL_SPLIT_VALIDATION && py_sample(&m, n, n_val, idx))
            rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        else if (split != DUET_EVAL_SPLIT_VALIDATION)
            for (int i = 0; i < n; i++) idx[i] = i;
    }
    if (!rc) *n_idx = split == DUET_EVAL_SPLIT_VALIDATION ? n_val : n_test;
    for (int i = 0; a && i < n; i++) free(a[i]);
    free(q), free(a), free(test), free(rest), free(in_test);
    return rc;
}

typedef struct keyed { const char *level, *type; int i; } keyed;

/* groupby's order: sorted (level, type) keys; file order inside a group */
static int cmp_keyed(const void *x, const void *y) {
    const keyed *a = x, *b = y;
    int c = strcmp(a->level, b->level);
    if (!c) c = strcmp(a->type, b->type);
    return c ? c : (a->i > b->i) - (a->i < b->i);
}

static int split_math(int split, const jsonl_rec *r, int n, const char *path, int *idx, int *n_idx,
                      duet_error *err) {
    const int per = MATH_TEST_PER_GROUP + MATH_VALIDATION_PER_GROUP;
    keyed *k = malloc(((size_t)n + 1) * sizeof *k);
    int *pick = malloc((size_t)per * sizeof *pick), rc = k && pick ? DUET_OK : duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        k[i].i = i;
        if (!(k[i].level = field(&r[i], "level", path, err)) || !(k[i].type = field(&r[i], "type", path, err)))
            rc = DUET_ERR_FORMAT;
    }
    if (!rc) qsort(k, (size_t)n, sizeof *k, cmp_keyed);
    mt19937 m;
    np_random_seed(&m, SPLIT_SEED);
    int out = 0;
    for (int g = 0; !rc && g < n;) {
        int e = g;
        while (e < n && !strcmp(k[e].level, k[g].level) && !strcmp(k[e].type, k[g].type)) e++;
        if (e - g < per) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: group (%s, %s) has %d problems; the official split draws %d "
                           "from each", path, k[g].level, k[g].type, e - g, per);
            break;
        }
        if (np_choice(&m, e - g, per, pick)) { rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
        int lo = split == DUET_EVAL_SPLIT_VALIDATION ? MATH_TEST_PER_GROUP : 0;
        int hi = split == DUET_EVAL_SPLIT_VALIDATION ? per : MATH_TEST_PER_GROUP;
        for (int j = lo; j < hi; j++) idx[out++] = k[g + pick[j]].i;
        g = e;
    }
    if (!rc) *n_idx = out;
    free(k);
    free(pick);
    return rc;
}

int protocol_split(int task, int split, const jsonl_rec *r, int n, const char *path, int *idx, int *n_idx,
                   duet_error *err) {
    *n_idx = 0;
    if (split == DUET_EVAL_SPLIT_ALL || split == DUET_EVAL_SPLIT_AUTO) {
        for (int i = 0; i < n; i++) idx[i] = i;
        *n_idx = n;
        return DUET_OK;
    }
    if (task == DUET_EVAL_TASK_GSM8K) return split_gsm8k(split, r, n, path, idx, n_idx, err);
    if (task == DUET_EVAL_TASK_MATH) return split_math(split, r, n, path, idx, n_idx, err);
    return duet_fail(err, DUET_ERR_ARG, "the official splits exist for gsm8k and math only");
}

int duet_eval_split_save(int task, const char *data_path, int split, const char *out_path, int *n_written,
                         duet_error *err) {
    jsonl_rec *r = NULL;
    int n = 0, n_idx = 0, rc = protocol_read_jsonl(data_path, &r, &n, err);
    int *idx = rc ? NULL : malloc(((size_t)n + 1) * sizeof *idx);
    if (!rc && !idx) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) rc = protocol_split(task, split, r, n, data_path, idx, &n_idx, err);
    duet_buf b = {0};
    for (int i = 0; !rc && i < n_idx; i++) /* the records as the file has them */
        if (duet_buf_add(&b, r[idx[i]].text, r[idx[i]].len) || duet_buf_add(&b, "\n", 1))
            rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc) rc = duet_atomic_write(out_path, b.p ? b.p : "", b.n, err);
    if (!rc && n_written) *n_written = n_idx;
    free(b.p);
    free(idx);
    protocol_free_jsonl(r, n);
    return rc;
}
