/* rouge.c: ROUGE as rouge_score computes it with its defaults (see rouge.h). Tokens of both
 * texts are interned to small integers first, so that n-grams compare as numbers. */
#include "learn/rouge.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"

static const char *k_names[ROUGE_COUNT] = {"rouge1", "rouge2", "rougeL", "rougeLsum"};
const char *rouge_name(int t) { return t >= 0 && t < ROUGE_COUNT ? k_names[t] : "?"; }

/* A token: its bytes in the text (upper-case letters compare as lower case), its line. */
typedef struct tok { const char *s; int len, line, text; } tok;

static int alnum(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }
static unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c; }

/* Appends the tokens of s to v[*n] (v has room for strlen(s) / 2 + 1 more). */
static void tokenize(const char *s, int text, tok *v, int *n) {
    int line = 0;
    for (const char *p = s; *p;) {
        if (*p == '\n') line++;
        if (!alnum((unsigned char)*p)) { p++; continue; }
        const char *b = p;
        while (alnum((unsigned char)*p)) p++;
        v[(*n)++] = (tok){b, (int)(p - b), line, text};
    }
}

static int tok_cmp(const tok *a, const tok *b) {
    int n = a->len < b->len ? a->len : b->len;
    for (int i = 0; i < n; i++) {
        int d = (int)lower((unsigned char)a->s[i]) - (int)lower((unsigned char)b->s[i]);
        if (d) return d;
    }
    return a->len - b->len;
}
static int tok_qcmp(const void *a, const void *b) { return tok_cmp(*(const tok *const *)a, *(const tok *const *)b); }

/* One text as token ids and the line of each. */
typedef struct seq { int *id, *line; int n; } seq;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double fmeasure(double p, double r) { return p + r > 0 ? 2 * p * r / (p + r) : 0; }

/* ROUGE-N for n = 1, 2: sorted n-gram keys of both, merged; the overlap is the sum of the
 * smaller counts. */
static int rouge_n(const seq *pr, const seq *rf, int n, rouge_score *out) {
    int np = pr->n >= n ? pr->n - n + 1 : 0, nr = rf->n >= n ? rf->n - n + 1 : 0;
    uint64_t *a = malloc(((size_t)np + 1) * sizeof *a), *b = malloc(((size_t)nr + 1) * sizeof *b);
    if (!a || !b) { free(a); free(b); return DUET_ERR_NOMEM; }
    for (int i = 0; i < np; i++) a[i] = n == 1 ? (uint64_t)pr->id[i] : ((uint64_t)pr->id[i] << 32) | (uint32_t)pr->id[i + 1];
    for (int i = 0; i < nr; i++) b[i] = n == 1 ? (uint64_t)rf->id[i] : ((uint64_t)rf->id[i] << 32) | (uint32_t)rf->id[i + 1];
    qsort(a, (size_t)np, sizeof *a, cmp_u64);
    qsort(b, (size_t)nr, sizeof *b, cmp_u64);
    long overlap = 0;
    for (int i = 0, j = 0; i < np && j < nr;) { /* equal keys pair off one to one */
        if (a[i] < b[j]) i++;
        else if (a[i] > b[j]) j++;
        else overlap++, i++, j++;
    }
    free(a);
    free(b);
    out->p = (double)overlap / (np > 0 ? np : 1);
    out->r = (double)overlap / (nr > 0 ? nr : 1);
    out->f = fmeasure(out->p, out->r);
    return DUET_OK;
}

/* LCS table of ref[0..R) x can[0..C): t[i*(C+1)+j] = LCS of ref[:i], can[:j]. */
static int *lcs_table(const int *ref, int R, const int *can, int C) {
    int *t = calloc(((size_t)R + 1) * ((size_t)C + 1), sizeof *t);
    if (!t) return NULL;
    for (int i = 1; i <= R; i++)
        for (int j = 1; j <= C; j++) {
            int *x = &t[(size_t)i * (C + 1) + j];
            if (ref[i - 1] == can[j - 1]) *x = t[(size_t)(i - 1) * (C + 1) + j - 1] + 1;
            else {
                int up = t[(size_t)(i - 1) * (C + 1) + j], left = t[(size_t)i * (C + 1) + j - 1];
                *x = up > left ? up : left;
            }
        }
    return t;
}

static int rouge_l(const seq *pr, const seq *rf, rouge_score *out) {
    *out = (rouge_score){0, 0, 0};
    if (!pr->n || !rf->n) return DUET_OK;
    int *t = lcs_table(rf->id, rf->n, pr->id, pr->n);
    if (!t) return DUET_ERR_NOMEM;
    int lcs = t[(size_t)rf->n * (pr->n + 1) + pr->n];
    free(t);
    out->p = (double)lcs / pr->n;
    out->r = (double)lcs / rf->n;
    out->f = fmeasure(out->p, out->r);
    return DUET_OK;
}

/* Marks in used[] the positions of ref that the backtracked LCS with can takes: a match goes
 * diagonally, else left (in can) when that cell is strictly larger, else up. */
static int mark_lcs(const int *ref, int R, const int *can, int C, char *used) {
    int *t = lcs_table(ref, R, can, C);
    if (!t) return DUET_ERR_NOMEM;
    for (int i = R, j = C; i > 0 && j > 0;) {
        if (ref[i - 1] == can[j - 1]) used[--i] = 1, j--;
        else if (t[(size_t)i * (C + 1) + j - 1] > t[(size_t)(i - 1) * (C + 1) + j]) j--;
        else i--;
    }
    free(t);
    return DUET_OK;
}

/* Summary-level LCS over lines. Tokens of a line are contiguous in a seq. */
static int rouge_lsum(const seq *pr, const seq *rf, int vocab, rouge_score *out) {
    *out = (rouge_score){0, 0, 0};
    if (!pr->n || !rf->n) return DUET_OK;
    int *cnt_c = calloc((size_t)vocab, sizeof *cnt_c), *cnt_r = calloc((size_t)vocab, sizeof *cnt_r);
    char *used = malloc((size_t)rf->n);
    int rc = cnt_c && cnt_r && used ? DUET_OK : DUET_ERR_NOMEM;
    long hits = 0;
    for (int i = 0; !rc && i < pr->n; i++) cnt_c[pr->id[i]]++;
    for (int i = 0; !rc && i < rf->n; i++) cnt_r[rf->id[i]]++;
    for (int a = 0; !rc && a < rf->n;) { /* reference line [a, b) */
        int b = a;
        while (b < rf->n && rf->line[b] == rf->line[a]) b++;
        memset(used + a, 0, (size_t)(b - a));
        for (int c = 0; !rc && c < pr->n;) { /* predicted line [c, d) */
            int d = c;
            while (d < pr->n && pr->line[d] == pr->line[c]) d++;
            rc = mark_lcs(rf->id + a, b - a, pr->id + c, d - c, used + a);
            c = d;
        }
        for (int i = a; !rc && i < b; i++) { /* the union, in reference order */
            int t = rf->id[i];
            if (used[i] && cnt_c[t] > 0 && cnt_r[t] > 0) hits++, cnt_c[t]--, cnt_r[t]--;
        }
        a = b;
    }
    free(cnt_c);
    free(cnt_r);
    free(used);
    if (rc) return rc;
    out->p = (double)hits / pr->n;
    out->r = (double)hits / rf->n;
    out->f = fmeasure(out->p, out->r);
    return DUET_OK;
}

int rouge_pair(const char *pred, const char *ref, rouge_score out[ROUGE_COUNT], duet_error *err) {
    size_t lp = strlen(pred), lr = strlen(ref), cap = lp / 2 + lr / 2 + 2;
    tok *v = malloc(cap * sizeof *v);
    tok **order = malloc(cap * sizeof *order);
    int *ids = malloc(2 * cap * sizeof *ids), *lines = malloc(2 * cap * sizeof *lines);
    int n = 0, rc = v && order && ids && lines ? DUET_OK : DUET_ERR_NOMEM;
    if (!rc) {
        tokenize(pred, 0, v, &n);
        int n_pred = n;
        tokenize(ref, 1, v, &n);
        for (int i = 0; i < n; i++) order[i] = &v[i];
        qsort(order, (size_t)n, sizeof *order, tok_qcmp);
        int vocab = 0; /* equal strings get one id */
        for (int i = 0; i < n; i++) {
            if (i && tok_cmp(order[i - 1], order[i])) vocab++;
            ids[order[i] - v] = vocab;
        }
        vocab += n > 0;
        for (int i = 0; i < n; i++) lines[i] = v[i].line;
        seq sp = {ids, lines, n_pred}, sr = {ids + n_pred, lines + n_pred, n - n_pred};
        rc = rouge_n(&sp, &sr, 1, &out[ROUGE_1]);
        if (!rc) rc = rouge_n(&sp, &sr, 2, &out[ROUGE_2]);
        if (!rc) rc = rouge_l(&sp, &sr, &out[ROUGE_L]);
        if (!rc) rc = rouge_lsum(&sp, &sr, vocab, &out[ROUGE_LSUM]);
    }
    free(v);
    free(order);
    free(ids);
    free(lines);
    return rc ? duet_fail(err, rc, "out of memory computing ROUGE") : DUET_OK;
}

int rouge_multi(const char *pred, const char *const *refs, int n_refs, rouge_score out[ROUGE_COUNT],
                duet_error *err) {
    for (int t = 0; t < ROUGE_COUNT; t++) out[t] = (rouge_score){0, 0, 0};
    for (int k = 0; k < n_refs; k++) {
        rouge_score s[ROUGE_COUNT];
        int rc = rouge_pair(pred, refs[k], s, err);
        if (rc) return rc;
        for (int t = 0; t < ROUGE_COUNT; t++)
            if (k == 0 || s[t].f > out[t].f) out[t] = s[t];
    }
    return DUET_OK;
}
