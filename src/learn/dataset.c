/*
 * dataset.c: JSONL and plain-text datasets into (prompt, response) examples (the formats:
 * duet.h, datasets).
 * JSON is parsed by Jansson (which also rejects invalid UTF-8 and NUL escapes inside
 * strings); plain text is checked for UTF-8 here. Every message names file:line.
 */
#include "base/common.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"
#include "base/utf8.h"
#include "learn/answers.h"
#include "learn/protocol.h"

#define GSM8K_PREFIX "Please solve the following math problem with detailed steps.\n\nQuestion: "
#define GSM8K_SUFFIX "\nAnswer:"

void duet_dataset_free(duet_dataset *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) {
        free(d->ex[i].prompt);
        free(d->ex[i].response);
    }
    free(d->ex);
    d->ex = NULL;
    d->n = 0;
}

typedef struct builder {
    duet_dataset *d;
    int cap;
    int frames;   /* DUET_DATASET_FRAMES_* */
} builder;

/* Takes ownership of prompt and response (freed on failure). */
static int add_example(builder *b, char *prompt, size_t plen, char *resp, size_t rlen, int line,
                       duet_error *err) {
    if (b->d->n == b->cap) {
        int nc = b->cap ? 2 * b->cap : 256;
        duet_dataset_example *ne = nc > b->cap ? realloc(b->d->ex, (size_t)nc * sizeof *ne) : NULL;
        if (!ne) {
            free(prompt);
            free(resp);
            return duet_fail(err, DUET_ERR_NOMEM, "out of memory reading %s", b->d->path);
        }
        b->d->ex = ne;
        b->cap = nc;
    }
    b->d->ex[b->d->n++] = (duet_dataset_example){prompt, plen, resp, rlen, line};
    b->d->n_bytes += plen + rlen;
    return DUET_OK;
}

static char *dup_n(const char *s, size_t n) {
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = 0;
    }
    return r;
}

/* A growable string for rendering prompts. */
typedef struct sbuf { char *p; size_t n, cap; int oom; } sbuf;
static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* The string field `key` of obj: 1 found (value in *s, *n), 0 absent, -1 wrong type
 * (message in err). */
static int get_str(json_t *obj, const char *key, const char *where, const char **s, size_t *n,
                   duet_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_string(v)) {
        static const char *names[] = {"an object", "an array", "a string", "an integer",
                                      "a number", "true", "false", "null"};
        int t = json_typeof(v);
        duet_fail(err, DUET_ERR_FORMAT, "%s: field '%s' is %s, not a string", where, key,
                  t >= 0 && t < 8 ? names[t] : "not a string");
        return -1;
    }
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 1;
}

/* a + s[0..n) + c, s stripped as strip says (0: not, 1: its right end, 2: both ends);
 * malloc'd (NULL when out of memory) */
static char *framed(const char *a, const char *s, size_t n, int strip, const char *c, size_t *len) {
    size_t st = 0, sl = n;
    if (strip) answers_py_strip(s, n, &st, &sl);
    if (strip == 1) sl += st, st = 0;
    sbuf sb = {0};
    sb_add(&sb, a, strlen(a));
    sb_add(&sb, s + st, sl);
    sb_add(&sb, c, strlen(c));
    if (sb.oom) {
        free(sb.p);
        return NULL;
    }
    *len = sb.n;
    return sb.p;
}

/* The official training frames (duet.h, DUET_DATASET_FRAMES_PAPER) of a line that is not
 * prompt/response: 0 with the prompt and response set (NULL when out of memory), 1 when the
 * line has none of their shapes (the caller reports it), or an error. */
static int parse_paper(json_t *root, const char *where, char **prompt, size_t *plen, char **resp,
                       size_t *rlen, duet_error *err) {
    const char *q = NULL, *a = NULL;
    size_t qn = 0, an = 0;
    int hq, ha;
    json_t *msgs = json_object_get(root, "messages");
    if ((hq = get_str(root, "question", where, &q, &qn, err)) < 0 || (ha = get_str(root, "answer", where, &a, &an, err)) < 0)
        return DUET_ERR_FORMAT;
    if (hq && ha) { /* the whole user text is stripped: only Q's right end can move; the
                       response "Answer: A." starts and ends with no space to strip */
        *prompt = framed(PROTOCOL_GSM8K_PREFIX "Problem: ", q, qn, 1, "", plen);
        *resp = framed("Answer: ", a, an, 0, ".", rlen);
        return DUET_OK;
    }
    if ((hq = get_str(root, "problem", where, &q, &qn, err)) < 0 || (ha = get_str(root, "solution", where, &a, &an, err)) < 0)
        return DUET_ERR_FORMAT;
    if (hq && ha) {
        *prompt = framed(PROTOCOL_MATH_PREFIX "Problem: ", q, qn, 2, "\n\nSolution:", plen);
        *resp = framed("", a, an, 2, "", rlen);
        return DUET_OK;
    }
    if (!msgs) return 1;
    if (!json_is_array(msgs) || json_array_size(msgs) < 2)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: field 'messages' needs at least two messages (the official "
                         "format takes the first as the prompt, the second as the response)", where);
    const char *c[2];
    size_t cl[2];
    for (int i = 0; i < 2; i++) {
        json_t *m = json_array_get(msgs, (size_t)i);
        char w2[640];
        snprintf(w2, sizeof w2, "%s: messages[%d]", where, i);
        int g = json_is_object(m) ? get_str(m, "content", w2, &c[i], &cl[i], err) : 0;
        if (g < 0) return DUET_ERR_FORMAT;
        if (!g) return duet_fail(err, DUET_ERR_FORMAT, "%s needs a string field 'content'", w2);
    }
    *prompt = framed("", c[0], cl[0], 2, "", plen);
    *resp = framed("", c[1], cl[1], 2, "", rlen);
    return DUET_OK;
}

/* One JSONL line into an example (added to b); DUET_ERR_FORMAT with file:line otherwise. */
static int parse_line(builder *b, const char *line, size_t len, int lineno, duet_error *err) {
    char where[600];
    snprintf(where, sizeof where, "%s:%d", b->d->path, lineno);
    json_error_t je;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: invalid JSON at column %d: %s", where,
                         je.column, je.text);
    int rc = DUET_OK;
    char *prompt = NULL, *resp = NULL;
    size_t plen = 0, rlen = 0;
    const char *p = NULL, *r = NULL, *q = NULL, *a = NULL;
    size_t pn = 0, rn = 0, qn = 0, an = 0;
    if (!json_is_object(root)) {
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: a line must hold a JSON object", where);
        goto done;
    }
    int hp, hr = 0, hq = 0, ha = 0;
    if ((hp = get_str(root, "prompt", where, &p, &pn, err)) < 0 ||
        (hr = get_str(root, "response", where, &r, &rn, err)) < 0 ||
        (hq = get_str(root, "question", where, &q, &qn, err)) < 0 ||
        (ha = get_str(root, "answer", where, &a, &an, err)) < 0) {
        rc = DUET_ERR_FORMAT;
        goto done;
    }
    json_t *msgs = json_object_get(root, "messages");
    int pr = !hp && !hr && b->frames == DUET_DATASET_FRAMES_PAPER
                 ? parse_paper(root, where, &prompt, &plen, &resp, &rlen, err) : 1;
    if (pr < 0) { rc = pr; goto done; }
    if (pr == 0) { /* framed by parse_paper */
    } else if (hp || hr) { /* prompt/response win over question/answer when a line has both */
        if (!hp || !hr) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: field '%s' is missing (a prompt/response "
                           "example needs both)", where, hp ? "response" : "prompt");
            goto done;
        }
        prompt = dup_n(p, pn);
        plen = pn;
        resp = dup_n(r, rn);
        rlen = rn;
    } else if (hq || ha) {
        if (!hq || !ha) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: field '%s' is missing (a question/answer "
                           "example needs both)", where, hq ? "answer" : "question");
            goto done;
        }
        sbuf sb = {0};
        sb_add(&sb, GSM8K_PREFIX, strlen(GSM8K_PREFIX));
        sb_add(&sb, q, qn);
        sb_add(&sb, GSM8K_SUFFIX, strlen(GSM8K_SUFFIX));
        if (sb.oom) free(sb.p);
        prompt = sb.oom ? NULL : sb.p;
        plen = sb.n;
        resp = dup_n(a, an);
        rlen = an;
    } else if (msgs) {
        if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: field 'messages' must be a non-empty array",
                           where);
            goto done;
        }
        size_t nm = json_array_size(msgs), last = nm;
        for (size_t i = 0; i < nm; i++) {
            json_t *m = json_array_get(msgs, i);
            char w2[640];
            snprintf(w2, sizeof w2, "%s: messages[%zu]", where, i);
            const char *role = NULL, *content = NULL;
            size_t rl = 0, cl = 0;
            int gr = json_is_object(m) ? get_str(m, "role", w2, &role, &rl, err) : 0;
            int gc = gr > 0 ? get_str(m, "content", w2, &content, &cl, err) : 0;
            if (gr < 0 || gc < 0) { rc = DUET_ERR_FORMAT; goto done; }
            if (!json_is_object(m) || !gr || !gc) {
                rc = duet_fail(err, DUET_ERR_FORMAT, "%s needs string fields 'role' and "
                               "'content'", w2);
                goto done;
            }
            if (!strcmp(role, "assistant")) last = i;
        }
        if (last == nm) {
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: 'messages' has no assistant message (the "
                           "response)", where);
            goto done;
        }
        sbuf sb = {0};
        for (size_t i = 0; i < last; i++) {
            json_t *m = json_array_get(msgs, i);
            json_t *ro = json_object_get(m, "role"), *co = json_object_get(m, "content");
            if (i) sb_add(&sb, "\n", 1);
            sb_add(&sb, json_string_value(ro), json_string_length(ro));
            sb_add(&sb, ": ", 2);
            sb_add(&sb, json_string_value(co), json_string_length(co));
        }
        sb_add(&sb, "", 0);
        if (sb.oom) free(sb.p);
        prompt = sb.oom ? NULL : sb.p;
        plen = sb.n;
        json_t *co = json_object_get(json_array_get(msgs, last), "content");
        rlen = json_string_length(co);
        resp = dup_n(json_string_value(co), rlen);
    } else {
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no example fields: expected 'prompt' and "
                       "'response', 'messages', or 'question' and 'answer'%s", where,
                       b->frames == DUET_DATASET_FRAMES_PAPER ? " (or 'problem' and 'solution')" : "");
        goto done;
    }
    if (!prompt || !resp) {
        rc = duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory", where);
        goto done;
    }
    if (rlen == 0) {
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: the response is empty", where);
        goto done;
    }
    rc = add_example(b, prompt, plen, resp, rlen, lineno, err);
    prompt = resp = NULL; /* owned by the dataset (or freed) now */
done:
    free(prompt);
    free(resp);
    json_decref(root);
    return rc;
}

/* A failure at one example: stop, or count and go on (keeping the first message). */
static int bad(builder *b, const duet_dataset_params *p, int rc, duet_error *err) {
    if (!p->skip_bad || rc == DUET_ERR_NOMEM) return rc;
    if (!b->d->n_bad++ && err) snprintf(b->d->first_bad, sizeof b->d->first_bad, "%s", err->msg);
    return DUET_OK;
}

static int line_is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

static int load_jsonl(builder *b, const char *buf, size_t len, const duet_dataset_params *p,
                      duet_error *err) {
    int lineno = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        lineno++;
        if (!line_is_blank(buf + pos, end - pos)) {
            int rc = parse_line(b, buf + pos, end - pos, lineno, err);
            if (rc && (rc = bad(b, p, rc, err))) return rc;
        }
        pos = end + 1;
    }
    return DUET_OK;
}

static int load_text(builder *b, const char *buf, size_t len, const duet_dataset_params *p,
                     duet_error *err) {
    int lineno = 0, para_line = 0;
    size_t para_start = 0, para_end = 0;
    int in_para = 0;
    for (size_t pos = 0; pos <= len;) {
        const char *nl = pos < len ? memchr(buf + pos, '\n', len - pos) : NULL;
        size_t end = nl ? (size_t)(nl - buf) : len;
        int at_eof = pos >= len;
        lineno++;
        int blank = at_eof || line_is_blank(buf + pos, end - pos);
        if (!blank) {
            if (!in_para) { in_para = 1; para_start = pos; para_line = lineno; }
            para_end = end;
        }
        if ((blank || !nl) && in_para) {
            in_para = 0;
            size_t n = para_end - para_start, badat = duet_utf8_check(buf + para_start, n);
            int rc;
            if (badat < n) {
                int l = para_line;
                for (size_t i = para_start; i < para_start + badat; i++) l += buf[i] == '\n';
                rc = duet_fail(err, DUET_ERR_FORMAT, "%s:%d: invalid UTF-8 (byte 0x%02x)",
                               b->d->path, l, (unsigned char)buf[para_start + badat]);
            } else {
                char *r = dup_n(buf + para_start, n);
                rc = r ? add_example(b, NULL, 0, r, n, para_line, err)
                       : duet_fail(err, DUET_ERR_NOMEM, "out of memory reading %s", b->d->path);
            }
            if (rc && (rc = bad(b, p, rc, err))) return rc;
        }
        if (at_eof || !nl) break;
        pos = end + 1;
    }
    return DUET_OK;
}

int duet_dataset_load_buffer(const char *buf, size_t len, const char *name, const duet_dataset_params *params,
                             duet_dataset *d, duet_error *err) {
    duet_dataset_params p = {0};
    if (params) p = *params;
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", name);
    d->hash = duet_fnv1a(DUET_FNV_SEED_SHORT, buf, len);
    if (p.frames == DUET_DATASET_FRAMES_PAPER) /* other text from the same bytes */
        d->hash = duet_fnv1a(d->hash, "paper-frames", 12);
    duet_dataset_format f = p.format;
    if (f == DUET_DATASET_AUTO) {
        size_t i = 0;
        while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n')) i++;
        f = i < len && buf[i] == '{' ? DUET_DATASET_JSONL : DUET_DATASET_TEXT;
    }
    d->format = f;
    builder b = {d, 0, p.frames};
    int rc = f == DUET_DATASET_JSONL ? load_jsonl(&b, buf, len, &p, err) : load_text(&b, buf, len, &p, err);
    if (!rc && d->n == 0) {
        if (d->n_bad)
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no usable examples (%d bad, the first: %s)",
                           name, d->n_bad, d->first_bad);
        else
            rc = duet_fail(err, DUET_ERR_FORMAT, "%s: no usable examples (the file is empty)", name);
    }
    if (rc) duet_dataset_free(d);
    return rc;
}

int duet_dataset_load(const char *path, const duet_dataset_params *p, duet_dataset *d, duet_error *err) {
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "rb");
    if (!f) return duet_fail(err, DUET_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    int rc = DUET_OK;
    while (buf) {
        if (n == cap) {
            char *nb = cap < ((size_t)1 << 40) ? realloc(buf, cap * 2) : NULL;
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    if (!buf) rc = duet_fail(err, DUET_ERR_NOMEM, "%s: out of memory reading the file", path);
    else if (ferror(f)) rc = duet_fail(err, DUET_ERR_IO, "%s: read error", path);
    fclose(f);
    if (!rc) rc = duet_dataset_load_buffer(buf, n, path, p, d, err);
    free(buf);
    return rc;
}
