/* bioasq.c: reading and scoring BioASQ answers as the official evaluation does (bioasq.h).
 * White space is Python's for str on ASCII (\t\n\v\f\r, \x1c-\x1f and the space); \w is
 * [A-Za-z0-9_] plus every byte >= 0x80, so that UTF-8 letters stay inside words. */
#include "learn/bioasq.h"

#include <stdlib.h>
#include <string.h>

static const char *k_types[BIOASQ_TYPES] = {"factoid", "list", "summary", "yesno"};

int bioasq_type_from_name(const char *name) {
    for (int i = 0; i < BIOASQ_TYPES; i++)
        if (!strcmp(name, k_types[i])) return i;
    return -1;
}
const char *bioasq_type_name(int t) { return t >= 0 && t < BIOASQ_TYPES ? k_types[t] : "?"; }

static int py_space(unsigned char c) { return c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x1f); }
static int word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

/* s[0..n) stripped, as a new string */
static char *strip_dup(const char *s, size_t n) {
    while (n && py_space((unsigned char)*s)) s++, n--;
    while (n && py_space((unsigned char)s[n - 1])) n--;
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

static int push(bioasq_parsed *p, const char *s, size_t n, int strip) {
    char **v = realloc(p->items, (size_t)(p->n_items + 1) * sizeof *v);
    if (!v) return -1;
    p->items = v;
    char *d = strip ? strip_dup(s, n) : malloc(n + 1);
    if (!d) return -1;
    if (!strip) memcpy(d, s, n), d[n] = 0;
    p->items[p->n_items++] = d;
    return 0;
}

/* findall of "^-\s(.*)" (dash) or "^\d+\)\s(.*)" with MULTILINE over s[0..n) */
static int find_items(const char *s, size_t n, int dash, bioasq_parsed *p) {
    for (size_t at = 0; at < n;) {
        size_t i = at;
        if (dash) i += s[i] == '-';
        else while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        int ok = dash ? i > at : i > at && i < n && s[i++] == ')';
        if (ok && i < n && py_space((unsigned char)s[i])) {
            size_t b = ++i;
            while (i < n && s[i] != '\n') i++;
            if (push(p, s + b, i - b, 0)) return -1;
            at = i; /* the next line start is after this '\n' */
        }
        while (at < n && s[at] != '\n') at++;
        at++;
    }
    return 0;
}

static int parse_list_like(const char *s, size_t n, bioasq_parsed *p) {
    if (n && s[0] == ':') s++, n--;
    if (n && !py_space((unsigned char)s[0])) return push(p, s, n, 1);
    while (n && py_space((unsigned char)*s)) s++, n--;
    while (n && py_space((unsigned char)s[n - 1])) n--;
    if (n && s[0] == '-') return find_items(s, n, 1, p);
    if (n >= 2 && s[0] == '1' && s[1] == ')') return find_items(s, n, 0, p);
    return push(p, s, n, 1);
}

static int contains_ci(const char *s, size_t n, const char *w) {
    size_t k = strlen(w);
    for (size_t i = 0; i + k <= n; i++) {
        size_t j = 0;
        while (j < k && (s[i + j] | 0x20) == w[j] && ((unsigned char)s[i + j] < 0x80)) j++;
        if (j == k) return 1;
    }
    return 0;
}

int bioasq_parse(const char *g, int type, bioasq_parsed *p) {
    static const char mark[] = "The final answer is:";
    memset(p, 0, sizeof *p);
    const char *a = strstr(g, mark);
    if (!a) {
        p->ideal = strip_dup(g, strlen(g));
        return p->ideal ? 0 : -1;
    }
    p->has_exact = 1;
    p->ideal = strip_dup(g, (size_t)(a - g));
    const char *e = a + sizeof mark - 1, *end = strstr(e, mark);
    size_t n = end ? (size_t)(end - e) : strlen(e);
    if (!p->ideal) return -1;
    if (type == BIOASQ_FACTOID || type == BIOASQ_LIST) return parse_list_like(e, n, p);
    if (type == BIOASQ_YESNO) {
        const char *v = contains_ci(e, n, "yes") ? "yes" : contains_ci(e, n, "no") ? "no" : NULL;
        if (v && !(p->yesno = strdup(v))) return -1;
    }
    return 0;
}

void bioasq_parsed_free(bioasq_parsed *p) {
    for (int i = 0; i < p->n_items; i++) free(p->items[i]);
    free(p->items);
    free(p->yesno);
    free(p->ideal);
    memset(p, 0, sizeof *p);
}

static int matches_any(const bioasq_entity *gold, int n_gold, const char *item) {
    for (int e = 0; e < n_gold; e++)
        for (int k = 0; k < gold[e].n; k++)
            if (strstr(gold[e].syn[k], item)) return 1;
    return 0;
}

void bioasq_factoid(const bioasq_entity *gold, int n_gold, char *const *items, int n_items, double *strict,
                    double *lenient, double *mrr) {
    *strict = *lenient = *mrr = 0;
    if (n_items <= 0) return;
    *strict = matches_any(gold, n_gold, items[0]);
    for (int i = 0; i < n_items && i < 5; i++)
        if (matches_any(gold, n_gold, items[i])) *lenient = 1, *mrr = 1.0 / (i + 1);
}

/* The forms an item counts as: itself and, with "word (ACRONYM)" in it, the text without
 * " (ACRONYM)" and one more character, and the acronym followed by the rest. */
static int expand(const char *s, char **out) {
    size_t n = strlen(s);
    for (size_t p = 2; p < n; p++) {
        if (s[p] != '(' || s[p - 1] != ' ' || !word((unsigned char)s[p - 2])) continue;
        size_t q = p + 1;
        while (q < n && word((unsigned char)s[q])) q++;
        if (q == p + 1 || q >= n || s[q] != ')') continue;
        size_t cut = q + 2 < n ? q + 2 : n; /* end(2) + 2: past ")" and one more */
        out[0] = malloc(n + 1);
        out[1] = malloc(n + 1);
        if (!out[0] || !out[1]) { free(out[0]); free(out[1]); return -1; }
        memcpy(out[0], s, p), strcpy(out[0] + p, s + cut);          /* s[:start(2)-1] + s[end(2)+2:] */
        memcpy(out[1], s + p + 1, q - p - 1), strcpy(out[1] + (q - p - 1), s + q + 1); /* group 2 + s[end:] */
        return 2;
    }
    return 0;
}

int bioasq_list(const bioasq_entity *gold, int n_gold, char *const *items, int n_items, double *precision,
                double *recall, double *f1) {
    *precision = *recall = *f1 = 0;
    char **all = calloc((size_t)(3 * n_items + 1), sizeof *all);
    char *own = calloc((size_t)(3 * n_items + 1), 1); /* expansions are ours to free */
    int n = 0, rc = all && own ? 0 : -1;
    for (int i = 0; !rc && i < n_items; i++) {
        all[n++] = (char *)items[i];
        int k = expand(items[i], all + n);
        if (k < 0) rc = -1;
        for (int j = 0; j < k; j++) own[n++] = 1;
    }
    int distinct = 0, tp = 0;
    for (int i = 0; !rc && i < n; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = !strcmp(all[i], all[j]);
        distinct += !seen;
    }
    for (int e = 0; !rc && e < n_gold; e++) {
        int hit = 0;
        for (int k = 0; k < gold[e].n && !hit; k++)
            for (int i = 0; i < n && !hit; i++) hit = !strcmp(gold[e].syn[k], all[i]);
        tp += hit;
    }
    if (!rc) {
        *precision = distinct > 0 ? (double)tp / distinct : 0; /* tp + fp = distinct items */
        *recall = n_gold > 0 ? (double)tp / n_gold : 0;
        *f1 = *precision + *recall > 0 ? 2 * *precision * *recall / (*precision + *recall) : 0;
    }
    for (int i = 0; own && i < n; i++)
        if (own[i]) free(all[i]);
    free(all);
    free(own);
    return rc;
}

double bioasq_yesno(const char *gold, const char *read) {
    if (!read) return 0;
    size_t st = 0, n = strlen(read);
    while (st < n && py_space((unsigned char)read[st])) st++;
    while (n > st && py_space((unsigned char)read[n - 1])) n--;
    const char *nl = memchr(read + st, '\n', n - st);
    size_t len = nl ? (size_t)(nl - read - st) : n - st;
    return strlen(gold) == len && !memcmp(gold, read + st, len);
}
