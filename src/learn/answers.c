/*
 * answers.c: final answers of math benchmarks (GSM8K last number, MATH boxed answer with
 * Minerva/Hendrycks-style normalisation). Every helper works on bounded NUL-terminated
 * buffers of ANSWERS_CAP bytes: answers are short, and a cut answer simply does not match.
 */
#include "learn/answers.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- numbers ------------------------------------------------------------------------- */
/* Parse an unsigned number starting at s[i] (a digit, or '.' before one) into *v; returns
 * the index after it. Commas count only as thousands separators (",ddd" not followed by a
 * digit), so "1, 2" is two numbers and "1,000" one. */
static size_t scan_number(const char *s, size_t len, size_t i, double *v) {
    char buf[64];
    int n = 0;
    while (i < len && n < 60) {
        if (isdigit((unsigned char)s[i])) buf[n++] = s[i++];
        else if (s[i] == ',' && n > 0 && isdigit((unsigned char)buf[n - 1]) && i + 3 < len &&
                 isdigit((unsigned char)s[i + 1]) && isdigit((unsigned char)s[i + 2]) &&
                 isdigit((unsigned char)s[i + 3]) && (i + 4 >= len || !isdigit((unsigned char)s[i + 4])))
            i++; /* thousands separator: skip it */
        else break;
    }
    if (i + 1 < len && s[i] == '.' && isdigit((unsigned char)s[i + 1])) {
        buf[n++] = s[i++];
        while (i < len && n < 62 && isdigit((unsigned char)s[i])) buf[n++] = s[i++];
    }
    while (i < len && isdigit((unsigned char)s[i])) i++; /* absurdly long: ignore the rest */
    buf[n] = 0;
    *v = strtod(buf, NULL);
    return i;
}

/* A number starting exactly at s[i]: returns the index after it (and *v), or 0. A number
 * starts at a digit, at '-' or '.' directly before one, but a '-' right after a letter or
 * digit is an operator ("16-3" ends in 3, not -3) and a '.' right after a digit belongs to
 * the number before it. */
static size_t number_at(const char *s, size_t len, size_t i, double *v) {
    int neg = 0;
    size_t j = i;
    if (s[j] == '-') {
        if (i > 0 && isalnum((unsigned char)s[i - 1])) return 0;
        neg = 1;
        j++;
    }
    if (j < len && s[j] == '.' && (j + 1 >= len || !isdigit((unsigned char)s[j + 1]))) return 0;
    if (j >= len || !(isdigit((unsigned char)s[j]) || s[j] == '.')) return 0;
    if (!neg && s[j] == '.' && i > 0 && isdigit((unsigned char)s[i - 1])) return 0;
    size_t end = scan_number(s, len, j, v);
    if (neg) *v = -*v;
    return end;
}

int answers_last_number(const char *text, size_t len, double *value) {
    int found = 0;
    for (size_t i = 0; i < len;) {
        size_t end = number_at(text, len, i, value);
        found |= end > 0;
        i = end ? end : i + 1;
    }
    return found;
}

int answers_gsm8k_reference(const char *answer, double *value) {
    const char *p = NULL;
    for (const char *q = strstr(answer, "####"); q; q = strstr(q + 4, "####")) p = q + 4;
    if (!p) return answers_last_number(answer, strlen(answer), value);
    size_t len = strlen(p);
    for (size_t i = 0; i < len; i++) /* the first number after the marker */
        if (number_at(p, len, i, value)) return 1;
    return 0;
}

static int same_number(double a, double b, double rel) {
    return fabs(a - b) <= rel * fmax(1.0, fabs(b));
}

int answers_gsm8k_correct(const char *output, const char *reference_answer) {
    double a, b;
    return answers_gsm8k_reference(reference_answer, &b) &&
           answers_last_number(output, strlen(output), &a) && same_number(a, b, 1e-9);
}

/* ---- MATH extraction ------------------------------------------------------------------- */
static void copy_trim(char *out, size_t cap, const char *s, size_t n) {
    while (n && isspace((unsigned char)*s)) s++, n--;
    while (n && isspace((unsigned char)s[n - 1])) n--;
    if (n >= cap) n = cap - 1;
    memcpy(out, s, n);
    out[n] = 0;
}

/* Content of a balanced {...} starting at s (s[0] == '{'); NULL when unbalanced. */
static const char *brace_end(const char *s) {
    int depth = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '\\' && p[1]) { p++; continue; } /* \{ and \} are literal braces */
        if (*p == '{') depth++;
        else if (*p == '}' && --depth == 0) return p;
    }
    return NULL;
}

static const char *last_of(const char *text, const char *needle) {
    const char *last = NULL;
    for (const char *q = strstr(text, needle); q; q = strstr(q + 1, needle)) last = q;
    return last;
}

int answers_math_extract(const char *text, char *out, size_t cap) {
    out[0] = 0;
    const char *b = last_of(text, "\\boxed"), *f = last_of(text, "\\fbox");
    const char *box = b && (!f || b > f) ? b + 6 : f ? f + 5 : NULL;
    while (box) { /* not a loop: break out with or without an answer */
        while (*box == ' ') box++;
        if (*box == '{') {
            const char *e = brace_end(box);
            if (!e) break;
            copy_trim(out, cap, box + 1, (size_t)(e - box - 1));
            return 1;
        }
        size_t n = strcspn(box, "$ \n"); /* "\boxed 5$" */
        if (!n) break;
        copy_trim(out, cap, box, n);
        return 1;
    }
    const char *fa = NULL;
    for (const char *p = text; *p; p++)
        if (!strncasecmp(p, "the final answer is", 19)) fa = p + 19;
    if (!fa) return 0;
    size_t n = strcspn(fa, "\n");
    const char *hope = strstr(fa, "I hope");
    if (hope && (size_t)(hope - fa) < n) n = (size_t)(hope - fa);
    copy_trim(out, cap, fa, n);
    size_t m = strlen(out);
    while (m && (out[m - 1] == '.' || isspace((unsigned char)out[m - 1]))) out[--m] = 0;
    if (m >= 2 && out[0] == '$' && out[m - 1] == '$') { /* "$\frac12$" */
        memmove(out, out + 1, m - 2);
        out[m - 2] = 0;
    }
    return 1;
}

/* ---- MATH normalisation ---------------------------------------------------------------- */
/* Replace every occurrence of `from` in s[cap] with `to` (bounded). When word is set, a
 * match followed by a letter does not count (\left must not eat \leftarrow). */
static void replace_all(char *s, size_t cap, const char *from, const char *to, int word) {
    char tmp[ANSWERS_CAP];
    size_t fl = strlen(from), tl = strlen(to), o = 0;
    if (cap > sizeof tmp) cap = sizeof tmp;
    for (const char *p = s; *p && o + 1 < cap;) {
        if (!strncmp(p, from, fl) && !(word && isalpha((unsigned char)p[fl]))) {
            for (size_t k = 0; k < tl && o + 1 < cap; k++) tmp[o++] = to[k];
            p += fl;
        } else {
            tmp[o++] = *p++;
        }
    }
    tmp[o] = 0;
    memcpy(s, tmp, o + 1);
}

/* \text{X} (and \textbf, \mbox, \mathrm) -> X; a trailing one after other content is a
 * unit and goes away ("10\text{ cm}" -> "10"). */
static void strip_text_groups(char *s, size_t cap) {
    static const char *cmds[] = {"\\text", "\\textbf", "\\mbox", "\\mathrm", "\\textnormal"};
    for (;;) {
        char *best = NULL;
        size_t bl = 0;
        for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
            size_t l = strlen(cmds[c]);
            for (char *q = strstr(s, cmds[c]); q; q = strstr(q + 1, cmds[c]))
                if (q[l] == '{' && (!best || q < best || (q == best && l > bl))) { best = q; bl = l; }
        }
        if (!best) return;
        char *open = best + bl, *close = (char *)brace_end(open);
        if (!close) return;
        int before = 0;
        for (char *p = s; p < best; p++) before |= !isspace((unsigned char)*p);
        int after = 0;
        for (char *p = close + 1; *p; p++) after |= !isspace((unsigned char)*p) && *p != '.';
        int unit = before && !after && strncmp(best, "\\textbf", 7) != 0;
        size_t rest = strlen(close + 1);
        if (unit) {
            *best = 0;
        } else { /* keep the content: drop "\cmd{" and "}" */
            size_t inner = (size_t)(close - open - 1);
            memmove(best, open + 1, inner);
            memmove(best + inner, close + 1, rest + 1);
        }
        (void)cap;
    }
}

/* A trailing unit word after a number ("10 cm", "5 dollars") */
static void strip_unit_words(char *s) {
    static const char *units[] = {"square units", "sq units", "units", "dollars", "cents", "degrees",
                                  "cm", "meters", "inches", "feet", "ft", "hours", "minutes",
                                  "seconds", "mph", "km", "pounds", "miles", "students", "ways",
                                  "points", "days", "years"};
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        size_t l = strlen(units[u]);
        if (n > l + 1 && !strcmp(s + n - l, units[u]) && s[n - l - 1] == ' ' &&
            (isdigit((unsigned char)s[n - l - 2]) || s[n - l - 2] == '}')) {
            s[n - l - 1] = 0;
            return;
        }
    }
}

/* \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2}, \sqrt3 -> \sqrt{3} */
static void fix_shorthand(char *s, size_t cap) {
    char tmp[ANSWERS_CAP];
    size_t o = 0;
    if (cap > sizeof tmp) cap = sizeof tmp;
    for (const char *p = s; *p && o + 8 < cap;) {
        int frac = !strncmp(p, "\\frac", 5), sq = !strncmp(p, "\\sqrt", 5);
        if (!frac && !sq) { tmp[o++] = *p++; continue; }
        memcpy(tmp + o, p, 5);
        o += 5;
        p += 5;
        for (int arg = 0; arg < (frac ? 2 : 1) && *p && o + 4 < cap; arg++) {
            if (*p == '{') {
                const char *e = brace_end(p);
                if (!e) break;
                size_t n = (size_t)(e - p + 1);
                if (o + n + 1 >= cap) break;
                memcpy(tmp + o, p, n);
                o += n;
                p = e + 1;
            } else if (isalnum((unsigned char)*p)) {
                tmp[o++] = '{';
                tmp[o++] = *p++;
                tmp[o++] = '}';
            } else {
                break;
            }
        }
    }
    tmp[o] = 0;
    memcpy(s, tmp, o + 1);
}

/* -?d{1,3}(,ddd)+(.d+)? -> without commas */
static void drop_thousands_commas(char *s) {
    const char *p = s;
    if (*p == '-') p++;
    int lead = 0, groups = 0;
    while (isdigit((unsigned char)p[lead])) lead++;
    if (lead < 1 || lead > 3) return;
    p += lead;
    while (p[0] == ',' && isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2]) &&
           isdigit((unsigned char)p[3])) {
        p += 4;
        groups++;
    }
    if (!groups) return;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p)) return;
        while (isdigit((unsigned char)*p)) p++;
    }
    if (*p) return;
    char *w = s;
    for (const char *r = s; *r; r++)
        if (*r != ',') *w++ = *r;
    *w = 0;
}

void answers_math_normalize(const char *in, char *out, size_t cap) {
    char s[ANSWERS_CAP];
    snprintf(s, sizeof s, "%s", in);
    static const char *drop[] = {"\n", "\r", "\\!", "\\,", "\\;", "\\:", "^{\\circ}", "^\\circ",
                                 "\\$", "$", "\\%", "%", "\\displaystyle"};
    for (size_t k = 0; k < sizeof drop / sizeof drop[0]; k++) replace_all(s, sizeof s, drop[k], "", 0);
    replace_all(s, sizeof s, "\\ ", " ", 0);
    replace_all(s, sizeof s, "\\dfrac", "\\frac", 0);
    replace_all(s, sizeof s, "\\tfrac", "\\frac", 0);
    replace_all(s, sizeof s, "\\left", "", 1);
    replace_all(s, sizeof s, "\\right", "", 1);
    strip_text_groups(s, sizeof s);
    strip_unit_words(s);
    replace_all(s, sizeof s, " ", "", 0);
    replace_all(s, sizeof s, "\t", "", 0);
    size_t n = strlen(s);
    while (n && s[n - 1] == '.') s[--n] = 0;
    /* "x=5", "k=-2": a short name on the left is not part of the answer */
    char *eq = strchr(s, '=');
    if (eq && !strchr(eq + 1, '=') && eq - s <= 2 && eq > s) memmove(s, eq + 1, strlen(eq + 1) + 1);
    fix_shorthand(s, sizeof s);
    drop_thousands_commas(s);
    if (s[0] == '.') { memmove(s + 1, s, strlen(s) + 1); s[0] = '0'; }
    else if (s[0] == '-' && s[1] == '.') { memmove(s + 2, s + 1, strlen(s + 1) + 1); s[1] = '0'; }
    snprintf(out, cap, "%s", s);
}

/* A plain decimal number spanning s[0..n) exactly (optional sign) */
static int plain_number(const char *s, size_t n, double *v) {
    if (!n || n >= 64) return 0;
    char buf[64];
    memcpy(buf, s, n);
    buf[n] = 0;
    size_t i = buf[0] == '-' || buf[0] == '+';
    int digits = 0, dot = 0;
    for (; i < n; i++) {
        if (isdigit((unsigned char)buf[i])) digits++;
        else if (buf[i] == '.' && !dot) dot = 1;
        else return 0;
    }
    if (!digits) return 0;
    *v = strtod(buf, NULL);
    return 1;
}

int answers_math_value(const char *s, double *v) {
    size_t n = strlen(s);
    if (plain_number(s, n, v)) return 1;
    int neg = 0;
    const char *p = s;
    if (*p == '-') { neg = 1; p++; }
    double a, b;
    if (!strncmp(p, "\\frac{", 6)) {
        const char *e1 = brace_end(p + 5);
        if (!e1 || e1[1] != '{') return 0;
        const char *e2 = brace_end(e1 + 1);
        if (!e2 || e2[1]) return 0;
        if (!plain_number(p + 6, (size_t)(e1 - p - 6), &a) ||
            !plain_number(e1 + 2, (size_t)(e2 - e1 - 2), &b) || b == 0)
            return 0;
    } else {
        const char *slash = strchr(p, '/');
        if (!slash || !plain_number(p, (size_t)(slash - p), &a) ||
            !plain_number(slash + 1, strlen(slash + 1), &b) || b == 0)
            return 0;
    }
    *v = (neg ? -a : a) / b;
    return 1;
}

int answers_math_equiv(const char *a, const char *b) {
    char na[ANSWERS_CAP], nb[ANSWERS_CAP];
    answers_math_normalize(a, na, sizeof na);
    answers_math_normalize(b, nb, sizeof nb);
    if (!na[0] || !nb[0]) return 0;
    if (!strcmp(na, nb)) return 1;
    double x, y;
    return answers_math_value(na, &x) && answers_math_value(nb, &y) && same_number(x, y, 1e-6);
}

int answers_math_correct(const char *output, const char *reference) {
    char got[ANSWERS_CAP];
    return answers_math_extract(output, got, sizeof got) && answers_math_equiv(got, reference);
}
