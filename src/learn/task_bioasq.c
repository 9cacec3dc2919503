/*
 * task_bioasq.c: `duet eval --task bioasq`: BioASQ task B questions ({"questions": [{"id",
 * "type", "body", "ideal_answer", "exact_answer"}]}) prompted and scored as the official
 * Co-LLM evaluation does (bioasq.h for the reading and the exact-answer metrics, rouge.h for
 * the summaries).
 * Prompt: the medical-expert instruction with the type's request, a blank line, the in-context
 * examples of the type (from --shots: "Question: " body "\n" response "\n\n" each), then
 * "Question: " body "\nAnswer:". Test split (paper protocol): per type in sorted order, the
 * question indices shuffled by random.seed(42) + random.shuffle; the first 5 are the
 * validation split, the rest the test split.
 * Metrics: per type the mean over its questions (no exact answer: 0); "average" (the value)
 * is the mean of strict_accuracy, f1, accuracy and rouge2 over the types present, "average2"
 * the same with mrr for strict_accuracy, "aggregated" the mean of every metric present.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "learn/bioasq.h"
#include "learn/pyrandom.h"
#include "learn/rouge.h"
#include "learn/task.h"

#define N_SHOT 4
#define VALIDATION_PER_TYPE 5

typedef struct question {
    int type;
    char *body, *response;   /* response: the in-context answer text */
    char **ideal;
    int n_ideal;
    bioasq_entity *gold;
    int n_gold;
    char *gold_text;         /* the gold shown in --outputs */
} question;

/* sums of the current pass: [type][metric] */
enum { M_STRICT, M_LENIENT, M_MRR, M_P, M_R, M_F1, M_ACC, M_R1, M_R2, M_RL, M_RLSUM, M_COUNT };
static const char *k_metric[M_COUNT] = {"strict_accuracy", "lenient_accuracy", "mrr", "precision", "recall",
                                        "f1", "accuracy", "rouge1", "rouge2", "rougeL", "rougeLsum"};
static const int k_metric_type[M_COUNT] = {BIOASQ_FACTOID, BIOASQ_FACTOID, BIOASQ_FACTOID, BIOASQ_LIST,
                                           BIOASQ_LIST, BIOASQ_LIST, BIOASQ_YESNO, BIOASQ_SUMMARY,
                                           BIOASQ_SUMMARY, BIOASQ_SUMMARY, BIOASQ_SUMMARY};

typedef struct bq_state {
    question *q;
    int n;
    double sum[M_COUNT];
    int count[BIOASQ_TYPES];
} bq_state;

static const char *k_request[BIOASQ_TYPES] = {
    "list the fact or facts that answer the following question with detailed explanation.",
    "write a list of entity names, numbers, or short expressions that answer the following question.",
    "answer the following question with a summary of the main points.",
    "answer yes or no to the following question with detailed explanation.",
};
#define INSTRUCTION                                                                                       \
    "You are a medical expert answering real-world biomedical questions. Based on your understanding " \
    "of basic and clinical science, medical knowledge, and mechanisms underlying health, disease, "    \
    "patient care, and modes of therapy, "

static void question_free(question *q) {
    free(q->body);
    free(q->response);
    for (int i = 0; i < q->n_ideal; i++) free(q->ideal[i]);
    free(q->ideal);
    for (int e = 0; e < q->n_gold; e++) {
        for (int k = 0; k < q->gold[e].n; k++) free(q->gold[e].syn[k]);
        free(q->gold[e].syn);
    }
    free(q->gold);
    free(q->gold_text);
}

/* Python's repr of a str (single quotes unless it holds ' and no "), as the official
 * template prints a synonym list. */
static void repr_str(duet_buf *b, const char *s) {
    char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
    duet_buf_add(b, &q, 1);
    for (; *s; s++) {
        const char *e = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : *s == '\t' ? "\\t" : *s == '\r' ? "\\r" : NULL;
        if (*s == q) duet_buf_add(b, "\\", 1), duet_buf_add(b, s, 1);
        else if (e) duet_buf_add(b, e, strlen(e));
        else duet_buf_add(b, s, 1);
    }
    duet_buf_add(b, &q, 1);
}

/* The in-context response: "Answer: " ideal ".\nThe final answer is: " exact (factoid: each
 * entity's synonym list as Python prints it, list: each entity's first synonym, one per
 * "\n- " line; yes/no: the word; summary: no exact part). */
static char *render_response(const question *q, const char *ideal) {
    duet_buf b = {0};
    size_t n = strlen(ideal);
    while (n && ideal[n - 1] == '.') n--; /* rstrip(".") */
    duet_buf_add(&b, "Answer: ", 8);
    duet_buf_add(&b, ideal, n);
    duet_buf_add(&b, ".", 1);
    if (q->type != BIOASQ_SUMMARY) duet_buf_add(&b, "\nThe final answer is: ", 22);
    for (int e = 0; q->type != BIOASQ_SUMMARY && e < q->n_gold; e++) {
        if (q->type == BIOASQ_YESNO) {
            duet_buf_add(&b, q->gold[e].syn[0], strlen(q->gold[e].syn[0]));
            break;
        }
        duet_buf_add(&b, "\n- ", 3);
        if (q->type == BIOASQ_LIST) {
            if (q->gold[e].n) duet_buf_add(&b, q->gold[e].syn[0], strlen(q->gold[e].syn[0]));
            continue;
        }
        duet_buf_add(&b, "[", 1);
        for (int k = 0; k < q->gold[e].n; k++) {
            if (k) duet_buf_add(&b, ", ", 2);
            repr_str(&b, q->gold[e].syn[k]);
        }
        duet_buf_add(&b, "]", 1);
    }
    if (duet_buf_add(&b, "", 1)) { free(b.p); return NULL; }
    return b.p;
}

/* The ideal answer as the in-context examples show it: the ideal texts joined by spaces; for
 * yes/no without the bare "yes"/"no" items and a leading "Yes, "/"No. ", capitalised (first
 * letter upper, the rest lower). */
static char *ideal_text(const question *q) {
    duet_buf b = {0};
    for (int i = 0, first = 1; i < q->n_ideal; i++) {
        const char *s = q->ideal[i];
        size_t st = 0, n = strlen(s);
        if (q->type == BIOASQ_YESNO) {
            if (!strcasecmp(s, "yes") || !strcasecmp(s, "no")) continue;
            while (st < n && (s[st] == ' ' || (s[st] >= 9 && s[st] <= 13))) st++;
            while (n > st && (s[n - 1] == ' ' || (s[n - 1] >= 9 && s[n - 1] <= 13))) n--;
        }
        if (!first) duet_buf_add(&b, " ", 1);
        first = 0;
        duet_buf_add(&b, s + st, n - st);
    }
    if (duet_buf_add(&b, "", 1)) { free(b.p); return NULL; }
    char *t = b.p;
    if (q->type == BIOASQ_YESNO) {
        size_t k = !strncasecmp(t, "yes", 3) ? 3 : !strncasecmp(t, "no", 2) ? 2 : 0, j = k;
        if (k && (t[j] == ',' || t[j] == '.')) j++;
        size_t w = j;
        while (t[w] == ' ' || (t[w] >= 9 && t[w] <= 13)) w++;
        if (k && w > j) memmove(t, t + w, strlen(t + w) + 1);
        for (size_t i = 0; t[i]; i++)
            t[i] = (char)(i ? (t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 32 : t[i]) : (t[i] >= 'a' && t[i] <= 'z' ? t[i] - 32 : t[i]));
    }
    return t;
}

/* A list of strings, or one string, from field key of question i. */
static int string_list(json_t *v, char ***out, int *n) {
    *out = NULL, *n = 0;
    if (json_is_string(v)) {
        if (!(*out = malloc(sizeof **out)) || !((*out)[0] = strdup(json_string_value(v)))) return DUET_ERR_NOMEM;
        *n = 1;
        return DUET_OK;
    }
    if (!json_is_array(v)) return DUET_ERR_FORMAT;
    size_t k = json_array_size(v);
    if (!(*out = calloc(k + 1, sizeof **out))) return DUET_ERR_NOMEM;
    for (size_t i = 0; i < k; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_string(e)) return DUET_ERR_FORMAT;
        if (!((*out)[i] = strdup(json_string_value(e)))) return DUET_ERR_NOMEM;
        ++*n;
    }
    return DUET_OK;
}

/* exact_answer: "yes" / [[synonyms], ...] / [answers] (each its own entity); missing: one
 * empty entity, as the official loader defaults it */
static int parse_gold(json_t *v, question *q) {
    if (!v || json_is_string(v)) {
        if (!(q->gold = calloc(1, sizeof *q->gold))) return DUET_ERR_NOMEM;
        q->n_gold = 1;
        json_t *s = v ? v : json_string("");
        int rc = string_list(s, &q->gold[0].syn, &q->gold[0].n);
        if (!v) json_decref(s);
        return rc;
    }
    if (!json_is_array(v)) return DUET_ERR_FORMAT;
    size_t k = json_array_size(v);
    if (!(q->gold = calloc(k + 1, sizeof *q->gold))) return DUET_ERR_NOMEM;
    for (size_t e = 0; e < k; e++) {
        int rc = string_list(json_array_get(v, e), &q->gold[e].syn, &q->gold[e].n);
        q->n_gold++;
        if (rc) return rc;
    }
    return DUET_OK;
}

static int parse_question(json_t *o, const char *path, int i, question *q, duet_error *err) {
    const char *f = "type";
    json_t *t = json_object_get(o, "type"), *b = json_object_get(o, "body");
    int rc = DUET_ERR_FORMAT;
    if (!json_is_object(o)) return duet_fail(err, rc, "%s: questions[%d] is not an object", path, i);
    if (json_is_string(t) && (q->type = bioasq_type_from_name(json_string_value(t))) >= 0 && (f = "body") &&
        json_is_string(b) && (f = "ideal_answer")) {
        rc = (q->body = strdup(json_string_value(b))) ? string_list(json_object_get(o, "ideal_answer"), &q->ideal, &q->n_ideal) : DUET_ERR_NOMEM;
        if (!rc) rc = parse_gold(json_object_get(o, "exact_answer"), q), f = "exact_answer";
    }
    if (rc == DUET_ERR_NOMEM) return duet_fail(err, rc, "out of memory");
    if (rc)
        return duet_fail(err, rc, "%s: questions[%d]: field '%s' is %s", path, i, f,
                         !strcmp(f, "type") && json_is_string(t) ? "not factoid, list, summary or yesno"
                         : !strcmp(f, "exact_answer") ? "not a string or a list of (lists of) strings"
                         : !strcmp(f, "ideal_answer") ? "not a string or a list of strings"
                         : json_object_get(o, f) ? "not a string" : "missing");
    duet_buf g = {0};
    for (int e = 0; e < q->n_gold; e++)
        for (int k = 0; k < q->gold[e].n; k++) {
            if (g.n) duet_buf_add(&g, e && !k ? "; " : " | ", e && !k ? 2 : 3);
            duet_buf_add(&g, q->gold[e].syn[k], strlen(q->gold[e].syn[k]));
        }
    if (q->type == BIOASQ_SUMMARY && q->n_ideal) g.n = 0, duet_buf_add(&g, q->ideal[0], strlen(q->ideal[0]));
    if (duet_buf_add(&g, "", 1)) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    q->gold_text = g.p;
    return DUET_OK;
}

/* Every question of a BioASQ JSON file. */
static int read_questions(const char *path, question **out, int *n_out, duet_error *err) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    *out = NULL, *n_out = 0;
    if (!root) return duet_fail(err, DUET_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
    json_t *qs = json_object_get(root, "questions");
    int rc = json_is_array(qs) ? DUET_OK
             : duet_fail(err, DUET_ERR_FORMAT, "%s: field 'questions' is %s", path, qs ? "not a list" : "missing");
    size_t n = rc ? 0 : json_array_size(qs);
    question *v = rc ? NULL : calloc(n + 1, sizeof *v);
    if (!rc && !v) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) {
        rc = parse_question(json_array_get(qs, i), path, (int)i, &v[i], err);
        ++*n_out;
    }
    json_decref(root);
    *out = v;
    if (!rc && n == 0) rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no questions", path);
    return rc;
}

static void free_questions(question *v, int n) {
    for (int i = 0; i < n; i++) question_free(&v[i]);
    free(v);
}

/* The in-context text of each type: its first N_SHOT questions in the shots file. */
static int read_shots(const char *path, char *shots[BIOASQ_TYPES], duet_error *err) {
    question *v;
    int n, rc = read_questions(path, &v, &n, err), used[BIOASQ_TYPES] = {0};
    duet_buf b[BIOASQ_TYPES] = {{0}};
    for (int i = 0; !rc && i < n; i++) {
        question *q = &v[i];
        if (used[q->type]++ >= N_SHOT) continue;
        char *ideal = ideal_text(q), *resp = ideal ? render_response(q, ideal) : NULL;
        if (!resp) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        else {
            duet_buf_add(&b[q->type], "Question: ", 10);
            duet_buf_add(&b[q->type], q->body, strlen(q->body));
            duet_buf_add(&b[q->type], "\n", 1);
            duet_buf_add(&b[q->type], resp, strlen(resp));
            duet_buf_add(&b[q->type], "\n\n", 2);
        }
        free(ideal);
        free(resp);
    }
    for (int t = 0; t < BIOASQ_TYPES; t++) {
        if (duet_buf_add(&b[t], "", 1) && !rc) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        shots[t] = b[t].p;
    }
    free_questions(v, n);
    return rc;
}

static char *make_prompt(const question *q, const char *shots) {
    duet_buf b = {0};
    duet_buf_add(&b, INSTRUCTION, strlen(INSTRUCTION));
    duet_buf_add(&b, k_request[q->type], strlen(k_request[q->type]));
    duet_buf_add(&b, "\n\n", 2);
    if (shots) duet_buf_add(&b, shots, strlen(shots));
    duet_buf_add(&b, "Question: ", 10);
    duet_buf_add(&b, q->body, strlen(q->body));
    if (duet_buf_add(&b, "\nAnswer:", 9)) { free(b.p); return NULL; } /* with its NUL */
    return b.p;
}

/* The split's question indices in its order. */
static int split_order(const question *v, int n, int split, int *idx) {
    if (split != DUET_EVAL_SPLIT_TEST && split != DUET_EVAL_SPLIT_VALIDATION) {
        for (int i = 0; i < n; i++) idx[i] = i;
        return n;
    }
    int k = 0, *of = malloc(((size_t)n + 1) * sizeof *of);
    if (!of) return -1;
    for (int t = 0; t < BIOASQ_TYPES; t++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (v[i].type == t) of[m++] = i;
        int *perm = malloc(((size_t)m + 1) * sizeof *perm);
        if (!perm) { free(of); return -1; }
        for (int i = 0; i < m; i++) perm[i] = i;
        mt19937 mt;
        py_random_seed(&mt, 42); /* reseeded for every type */
        py_shuffle(&mt, perm, m);
        int a = split == DUET_EVAL_SPLIT_TEST ? DUET_MIN(VALIDATION_PER_TYPE, m) : 0;
        int b = split == DUET_EVAL_SPLIT_TEST ? m : DUET_MIN(VALIDATION_PER_TYPE, m);
        for (int i = a; i < b; i++) idx[k++] = of[perm[i]];
        free(perm);
    }
    free(of);
    return k;
}

/* ---- the eval_task --------------------------------------------------------------------- */
static void bq_begin(eval_task *t) {
    bq_state *s = t->state;
    memset(s->sum, 0, sizeof s->sum);
    memset(s->count, 0, sizeof s->count);
}

static int bq_answer(eval_task *t, int i, const char *output, char *pred, size_t cap, const char **ref,
                     duet_error *err) {
    bq_state *s = t->state;
    const question *q = &s->q[i];
    bioasq_parsed p;
    double *m = s->sum;
    int rc = bioasq_parse(output, q->type, &p) ? DUET_ERR_NOMEM : DUET_OK;
    *ref = q->gold_text;
    s->count[q->type]++;
    if (!rc && q->type == BIOASQ_FACTOID) {
        double a, b, c;
        bioasq_factoid(q->gold, q->n_gold, p.items, p.n_items, &a, &b, &c);
        m[M_STRICT] += a, m[M_LENIENT] += b, m[M_MRR] += c;
    } else if (!rc && q->type == BIOASQ_LIST) {
        double a, b, c;
        if (bioasq_list(q->gold, q->n_gold, p.items, p.n_items, &a, &b, &c)) rc = DUET_ERR_NOMEM;
        m[M_P] += a, m[M_R] += b, m[M_F1] += c;
    } else if (!rc && q->type == BIOASQ_YESNO) {
        m[M_ACC] += bioasq_yesno(q->gold[0].syn[0], p.yesno);
    } else if (!rc) {
        rouge_score r[ROUGE_COUNT];
        if ((rc = rouge_multi(p.ideal, (const char *const *)q->ideal, q->n_ideal, r, err))) goto out;
        m[M_R1] += r[ROUGE_1].f, m[M_R2] += r[ROUGE_2].f, m[M_RL] += r[ROUGE_L].f, m[M_RLSUM] += r[ROUGE_LSUM].f;
    }
    if (!rc) { /* what was read: the items joined by " | ", the yes/no word or the ideal text */
        size_t at = 0;
        pred[0] = 0;
        for (int k = 0; k < p.n_items && at < cap; k++)
            at += (size_t)snprintf(pred + at, cap - at, "%s%s", k ? " | " : "", p.items[k]);
        if (q->type == BIOASQ_YESNO) snprintf(pred, cap, "%s", p.yesno ? p.yesno : "");
        if (q->type == BIOASQ_SUMMARY) snprintf(pred, cap, "%s", p.ideal);
    }
out:
    bioasq_parsed_free(&p);
    return rc == DUET_ERR_NOMEM ? duet_fail(err, rc, "out of memory") : rc;
}

static int bq_finish(eval_task *t, duet_eval_result *r, duet_error *err) {
    (void)err;
    bq_state *s = t->state;
    double mean[M_COUNT], all = 0, avg = 0, avg2 = 0;
    int n_all = 0, n_avg = 0, n_avg2 = 0;
    for (int k = 0; k < M_COUNT; k++) {
        int ty = k_metric_type[k];
        if (!s->count[ty]) continue;
        mean[k] = s->sum[k] / s->count[ty];
        eval_result_metric(r, k_metric[k], mean[k]);
        all += mean[k], n_all++;
        if (k == M_STRICT || k == M_F1 || k == M_ACC || k == M_R2) avg += mean[k], n_avg++;
        if (k == M_MRR || k == M_F1 || k == M_ACC || k == M_R2) avg2 += mean[k], n_avg2++;
    }
    r->value = n_avg ? avg / n_avg : 0;
    eval_result_metric(r, "average", r->value);
    eval_result_metric(r, "average2", n_avg2 ? avg2 / n_avg2 : 0);
    eval_result_metric(r, "aggregated", n_all ? all / n_all : 0);
    return DUET_OK;
}

static void bq_free(eval_task *t) {
    bq_state *s = t->state;
    if (s) free_questions(s->q, s->n);
    free(s);
}

int task_bioasq_open(const char *path, const duet_eval_params *p, eval_task *t, duet_error *err) {
    memset(t, 0, sizeof *t);
    bq_state *s = calloc(1, sizeof *s);
    if (!s) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    t->state = s;
    t->begin = bq_begin, t->answer = bq_answer, t->finish = bq_finish, t->free = bq_free;
    char *shots[BIOASQ_TYPES] = {0};
    question *all = NULL;
    int n_all = 0, rc = p->shots ? read_shots(p->shots, shots, err) : DUET_OK;
    if (!rc) rc = read_questions(path, &all, &n_all, err);
    int *idx = rc ? NULL : malloc(((size_t)n_all + 1) * sizeof *idx);
    int n = idx ? split_order(all, n_all, p->split, idx) : -1;
    if (!rc && n < 0) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (!rc && p->limit > 0 && n > p->limit) n = p->limit;
    if (!rc && n == 0) rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no questions in the %s split", path,
                                     p->split == DUET_EVAL_SPLIT_VALIDATION ? "validation" : "test");
    if (!rc && (!(s->q = calloc((size_t)n, sizeof *s->q)) || !(t->prompts = calloc((size_t)n, sizeof *t->prompts))))
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) { /* the kept questions move into the task */
        s->q[i] = all[idx[i]];
        memset(&all[idx[i]], 0, sizeof all[idx[i]]);
        s->n = t->n = i + 1;
        if (!(t->prompts[i] = make_prompt(&s->q[i], shots[s->q[i].type]))) rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    free(idx);
    free_questions(all, n_all);
    for (int k = 0; k < BIOASQ_TYPES; k++) free(shots[k]);
    return rc;
}
