/*
 * answers_paper.c: the official Co-LLM scorers, reproduced operation for operation (see
 * answers.h). They are deliberately strict and quirky ("-5" matches "5", "3.5" matches "35",
 * a capital "The final answer is" is not found): the point is to compute the number the
 * paper's evaluation computes, so every string operation mirrors Python's str semantics
 * (code points where Python indexes characters, its whitespace set for strip()).
 * Limits: only ASCII digits count as digits, lower-casing is ASCII, and an answer longer
 * than PAPER_CAP bytes is cut (no real final answer is that long).
 */
#include "learn/answers.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAPER_CAP 4096

/* ---- Python string helpers ----------------------------------------------------------- */
/* Bytes of the UTF-8 character starting with lead byte c (1 for stray bytes). */
static size_t cp_len(unsigned char c) { return c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4; }

/* The whitespace character at s[0..n) as Python's str.isspace() sees it: its byte length,
 * or 0 when s does not start with one. */
static size_t py_space_at(const unsigned char *s, size_t n) {
    if (!n) return 0;
    if (s[0] < 0x80) return (s[0] >= 9 && s[0] <= 13) || (s[0] >= 0x1c && s[0] <= 0x20);
    unsigned cp = 0;
    size_t l = cp_len(s[0]);
    if (l > n) return 0;
    if (l == 2) cp = (s[0] & 0x1fu) << 6 | (s[1] & 0x3fu);
    else if (l == 3) cp = (s[0] & 0x0fu) << 12 | (s[1] & 0x3fu) << 6 | (s[2] & 0x3fu);
    else return 0;
    int sp = cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
             cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
    return sp ? l : 0;
}

void answers_py_strip(const char *s, size_t n, size_t *start, size_t *len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t a = 0, b = n, k;
    while (a < b && (k = py_space_at(u + a, b - a))) a += k;
    for (;;) { /* from the right: find the start of the last character */
        if (a >= b) break;
        size_t c = b - 1;
        while (c > a && (u[c] & 0xc0) == 0x80) c--;
        if (!(k = py_space_at(u + c, b - c)) || c + k != b) break;
        b = c;
    }
    *start = a;
    *len = b - a;
}

static void copy_n(char *out, size_t cap, const char *s, size_t n) {
    if (n >= cap) n = cap - 1;
    memcpy(out, s, n);
    out[n] = 0;
}

/* s.replace(from, to) in place (bounded by PAPER_CAP) */
static void py_replace(char *s, const char *from, const char *to) {
    char tmp[PAPER_CAP];
    size_t fl = strlen(from), tl = strlen(to), o = 0;
    for (const char *p = s; *p && o + 1 < sizeof tmp;) {
        if (!strncmp(p, from, fl)) {
            for (size_t k = 0; k < tl && o + 1 < sizeof tmp; k++) tmp[o++] = to[k];
            p += fl;
        } else {
            tmp[o++] = *p++;
        }
    }
    tmp[o] = 0;
    memcpy(s, tmp, o + 1);
}

static int count_of(const char *s, const char *needle) {
    int n = 0;
    size_t l = strlen(needle);
    for (const char *q = strstr(s, needle); q; q = strstr(q + l, needle)) n++;
    return n;
}

/* Characters (code points) in s[0..n) */
static size_t py_len(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i += cp_len((unsigned char)s[i])) c++;
    return c;
}

static void append(char *out, size_t *o, const char *s, size_t n) {
    if (*o + n + 1 > PAPER_CAP) n = PAPER_CAP - 1 - *o;
    memcpy(out + *o, s, n);
    *o += n;
    out[*o] = 0;
}

/* ---- GSM8K ----------------------------------------------------------------------------- */
/* re.sub(r"(\d),(\d)", r"\1\2", s): non-overlapping, left to right ("1,2,3" -> "12,3") */
static void drop_digit_commas(const char *s, char *out, size_t cap) {
    size_t o = 0, n = strlen(s);
    for (size_t i = 0; i < n && o + 1 < cap;) {
        if (isdigit((unsigned char)s[i]) && i + 2 < n && s[i + 1] == ',' && isdigit((unsigned char)s[i + 2])) {
            if (o + 2 >= cap) break;
            out[o++] = s[i];
            out[o++] = s[i + 2];
            i += 3;
        } else {
            out[o++] = s[i++];
        }
    }
    out[o] = 0;
}

/* One match of [-+]?\d*\.\d+|\d+ starting exactly at s[i] (the alternatives in the regex's
 * order, the sign tried first): its end, or 0. */
static size_t gsm_number_at(const char *s, size_t n, size_t i) {
    for (int sign = 1; sign >= 0; sign--) {
        size_t j = i;
        if (sign) {
            if (j >= n || (s[j] != '-' && s[j] != '+')) continue;
            j++;
        }
        while (j < n && isdigit((unsigned char)s[j])) j++;
        if (j + 1 < n && s[j] == '.' && isdigit((unsigned char)s[j + 1])) {
            j++;
            while (j < n && isdigit((unsigned char)s[j])) j++;
            return j;
        }
    }
    size_t j = i;
    while (j < n && isdigit((unsigned char)s[j])) j++;
    return j > i ? j : 0;
}

void answers_gsm8k_paper_pred(const char *output, char *pred, size_t cap) {
    char *s = malloc(strlen(output) + 1);
    if (!s) { pred[0] = 0; return; }
    drop_digit_commas(output, s, strlen(output) + 1);
    size_t n = strlen(s), last = 0, last_end = 0;
    int found = 0;
    for (size_t i = 0; i < n;) { /* re.findall: each match resumes after the previous one */
        size_t e = gsm_number_at(s, n, i);
        if (e) { found = 1; last = i; last_end = e; i = e; }
        else i++;
    }
    if (found) copy_n(pred, cap, s + last, last_end - last);
    else copy_n(pred, cap, output, strlen(output)); /* no number: the whole output */
    free(s);
}

int answers_gsm8k_paper_reference(const char *answer, char *out, size_t cap) {
    out[0] = 0;
    const char *a = strstr(answer, "####");
    if (!a) return 0;
    a += 4;
    const char *b = strstr(a, "####"); /* split("####")[1]: up to a second marker */
    size_t n = b ? (size_t)(b - a) : strlen(a), st, len;
    answers_py_strip(a, n, &st, &len);
    char tmp[PAPER_CAP];
    copy_n(tmp, sizeof tmp, a + st, len);
    drop_digit_commas(tmp, out, cap);
    return 1;
}

/* exact_match with ignore_case and ignore_punctuation: lower-case, drop string.punctuation */
static void em_normalize(const char *s, char *out, size_t cap) {
    size_t o = 0;
    for (; *s && o + 1 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x80 && ispunct(c)) continue;
        out[o++] = (char)(c < 0x80 ? tolower(c) : c);
    }
    out[o] = 0;
}

int answers_exact_match_paper(const char *pred, const char *reference) {
    char a[PAPER_CAP], b[PAPER_CAP];
    em_normalize(pred, a, sizeof a);
    em_normalize(reference, b, sizeof b);
    return !strcmp(a, b);
}

int answers_gsm8k_paper_correct(const char *output, const char *reference, char *pred, size_t cap) {
    char p[PAPER_CAP];
    answers_gsm8k_paper_pred(output, p, sizeof p);
    if (pred) copy_n(pred, cap, p, strlen(p));
    return answers_exact_match_paper(p, reference);
}

/* ---- MATH -------------------------------------------------------------------------------- */
/* The last \boxed (else \fbox) through the '}' where the brace count first returns to zero
 * (a '}' before any '{' counts -1, as the reference counts). 1 when found. */
int answers_math_paper_last_boxed(const char *s, char *out, size_t cap) {
    out[0] = 0;
    const char *idx = NULL;
    for (const char *q = strstr(s, "\\boxed"); q; q = strstr(q + 1, "\\boxed")) idx = q;
    if (!idx)
        for (const char *q = strstr(s, "\\fbox"); q; q = strstr(q + 1, "\\fbox")) idx = q;
    if (!idx) return 0;
    int open = 0;
    for (const char *p = idx; *p; p++) {
        if (*p == '{') open++;
        if (*p == '}' && --open == 0) {
            copy_n(out, cap, idx, (size_t)(p - idx + 1));
            return 1;
        }
    }
    return 0;
}

/* s[len(left):-1] when s starts with left and ends with last */
static void remove_wrapper(char *s, const char *left, char last) {
    size_t l = strlen(left), n = strlen(s);
    if (n >= l && !strncmp(s, left, l) && n && s[n - 1] == last) {
        size_t m = n >= l + 1 ? n - l - 1 : 0;
        memmove(s, s + l, m);
        s[m] = 0;
    }
}

/* Python's int(): whitespace, a sign, ASCII digits with single '_' between them.
 * 0 = not an int (ValueError), 1 = an int written canonically (str(int(x)) == x),
 * 2 = an int written otherwise. */
static int py_int_kind(const char *s, size_t n) {
    size_t st, len;
    answers_py_strip(s, n, &st, &len);
    const char *p = s + st, *e = p + len;
    int sign = p < e && (*p == '-' || *p == '+');
    const char *d = p + sign;
    if (d >= e || !isdigit((unsigned char)*d)) return 0;
    int under = 0;
    for (const char *q = d; q < e; q++) {
        if (isdigit((unsigned char)*q)) continue;
        if (*q != '_' || q + 1 >= e || !isdigit((unsigned char)q[1])) return 0;
        under = 1;
    }
    if (st || len != n || under || *p == '+') return 2;
    if (e - d > 1 && *d == '0') return 2;               /* leading zeros */
    if (*p == '-' && e - d == 1 && *d == '0') return 2; /* "-0" prints as "0" */
    return 1;
}

/* strip_string: 0 when it completes (result in s), -1 where the reference raises (then the
 * two answers are compared as they are). */
static int paper_strip(char *s) {
    py_replace(s, "\n", "");
    py_replace(s, "\\!", "");
    py_replace(s, "\\\\", "\\");
    py_replace(s, "tfrac", "frac");
    py_replace(s, "dfrac", "frac");
    py_replace(s, "\\left", "");
    py_replace(s, "\\right", "");
    py_replace(s, "^{\\circ}", "");
    py_replace(s, "^\\circ", "");
    py_replace(s, "\\$", "");
    char *u = strstr(s, "\\text{ "); /* units on the right: exactly one such group */
    if (u) {
        if (count_of(s, "\\text{ ") != 1) return -1;
        *u = 0;
    }
    py_replace(s, "\\%", "");
    py_replace(s, "\\%", "");
    py_replace(s, " .", " 0.");
    py_replace(s, "{.", "{0.");
    if (!s[0]) return 0;
    if (s[0] == '.') {
        size_t n = strlen(s);
        if (n + 2 > PAPER_CAP) n = PAPER_CAP - 2;
        memmove(s + 1, s, n + 1);
        s[0] = '0';
        s[n + 1] = 0;
    }
    char *eq = strchr(s, '=');
    if (eq && !strchr(eq + 1, '=') && py_len(s, (size_t)(eq - s)) <= 2) memmove(s, eq + 1, strlen(eq + 1) + 1);
    char tmp[PAPER_CAP];
    size_t o = 0;
    if (strstr(s, "\\sqrt")) { /* \sqrt3 -> \sqrt{3} */
        char *p = strstr(s, "\\sqrt");
        append(tmp, &o, s, (size_t)(p - s));
        while (p) {
            char *part = p + 5, *next = strstr(part, "\\sqrt");
            size_t pl = next ? (size_t)(next - part) : strlen(part);
            if (!pl) return -1;
            if (part[0] != '{') {
                size_t a = cp_len((unsigned char)part[0]);
                if (a > pl) a = pl;
                append(tmp, &o, "\\sqrt{", 6);
                append(tmp, &o, part, a);
                append(tmp, &o, "}", 1);
                append(tmp, &o, part + a, pl - a);
            } else {
                append(tmp, &o, "\\sqrt", 5);
                append(tmp, &o, part, pl);
            }
            p = next;
        }
        memcpy(s, tmp, o + 1);
    }
    py_replace(s, " ", "");
    if (strstr(s, "\\frac")) { /* \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2} */
        char *p = strstr(s, "\\frac");
        o = 0;
        append(tmp, &o, s, (size_t)(p - s));
        int keep = 0;
        while (p && !keep) {
            char *part = p + 5, *next = strstr(part, "\\frac");
            size_t pl = next ? (size_t)(next - part) : strlen(part);
            append(tmp, &o, "\\frac", 5);
            if (!pl) return -1;
            if (part[0] == '{') {
                append(tmp, &o, part, pl);
            } else if (py_len(part, pl) < 2) {
                keep = 1; /* the reference gives the string back unchanged */
            } else {
                size_t a = cp_len((unsigned char)part[0]), b = cp_len((unsigned char)part[a]);
                append(tmp, &o, "{", 1);
                append(tmp, &o, part, a);
                append(tmp, &o, "}", 1);
                if (part[a] != '{') {
                    append(tmp, &o, "{", 1);
                    append(tmp, &o, part + a, b);
                    append(tmp, &o, "}", 1);
                } else {
                    append(tmp, &o, part + a, b);
                }
                append(tmp, &o, part + a + b, pl - a - b);
            }
            p = next;
        }
        if (!keep) memcpy(s, tmp, o + 1);
    }
    if (!strcmp(s, "0.5")) strcpy(s, "\\frac{1}{2}");
    char *slash = strchr(s, '/');
    if (slash && !strchr(slash + 1, '/')) { /* a/b -> \frac{a}{b} for plain integers */
        int ka = py_int_kind(s, (size_t)(slash - s));
        if (!ka) return -1;
        int kb = py_int_kind(slash + 1, strlen(slash + 1));
        if (!kb) return -1;
        if (ka == 1 && kb == 1) {
            o = 0;
            append(tmp, &o, "\\frac{", 6);
            append(tmp, &o, s, (size_t)(slash - s));
            append(tmp, &o, "}{", 2);
            append(tmp, &o, slash + 1, strlen(slash + 1));
            append(tmp, &o, "}", 1);
            memcpy(s, tmp, o + 1);
        }
    }
    return 0;
}

int answers_math_paper_equiv(const char *a, const char *b) {
    char sa[PAPER_CAP], sb[PAPER_CAP];
    copy_n(sa, sizeof sa, a, strlen(a));
    copy_n(sb, sizeof sb, b, strlen(b));
    if (paper_strip(sa) || paper_strip(sb)) return !strcmp(a, b);
    return !strcmp(sa, sb);
}

int answers_math_paper_gold(const char *solution, char *out, size_t cap) {
    if (!answers_math_paper_last_boxed(solution, out, cap)) return 0;
    remove_wrapper(out, "\\boxed{", '}');
    remove_wrapper(out, "\\text{", '}');
    return 1;
}

/* The first $...$ on one line (re.search(r"\$(.*?)\$")): its content, or NULL. */
static const char *dollar_group(const char *s, size_t *n) {
    for (const char *p = strchr(s, '$'); p; p = strchr(p + 1, '$')) {
        size_t k = strcspn(p + 1, "$\n");
        if (p[1 + k] == '$') {
            *n = k;
            return p + 1;
        }
    }
    return NULL;
}

int answers_math_paper_extract(const char *output, char *out, size_t cap) {
    out[0] = 0;
    static const char key[] = "the final answer is";
    const char *ans = NULL;
    for (const char *q = strstr(output, key); q; q = strstr(q + sizeof key - 1, key)) ans = q + sizeof key - 1;
    if (!ans) return 0;
    size_t n = strlen(ans), gn;
    const char *g = dollar_group(ans, &gn);
    if (g) ans = g, n = gn;
    for (size_t i = 0; i + 1 < n; i++) /* split(".\n")[0] */
        if (ans[i] == '.' && ans[i + 1] == '\n') { n = i; break; }
    size_t st, len;
    answers_py_strip(ans, n, &st, &len);
    ans += st;
    if (len && ans[len - 1] == '.') len--;
    answers_py_strip(ans, len, &st, &len);
    char s[PAPER_CAP];
    size_t o = 0;
    for (size_t i = st; i < st + len && o + 1 < sizeof s; i++) /* remove_dollar_sign */
        if (ans[i] != '$') s[o++] = ans[i];
    s[o] = 0;
    remove_wrapper(s, "\\boxed{", '}');
    remove_wrapper(s, "\\text{", '}');
    remove_wrapper(s, "\"", '"');
    copy_n(out, cap, s, strlen(s));
    return 1;
}

int answers_math_paper_correct(const char *output, const char *gold, char *pred, size_t cap) {
    char p[PAPER_CAP];
    int found = answers_math_paper_extract(output, p, sizeof p);
    if (pred) copy_n(pred, cap, p, strlen(p));
    return found && answers_math_paper_equiv(p, gold);
}
