/* tok_vectors.c: see tok_vectors.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "tok_vectors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "format/gguf.h"
#include "test.h"

bool tv_ids_eq(const int32_t *got, int n, const int32_t *want, int m) {
    if (n != m) return false;
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) return false;
    return true;
}

void tv_print_ids(const char *what, const int32_t *ids, int n) {
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n && i < 64; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

/* Decode a whole sequence the way a generation loop does (prev = the token before). */
size_t tv_decode(const tokenizer *t, int32_t prev, const int32_t *ids, int n, char *buf,
                     size_t cap) {
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        int k = tokenizer_piece(t, prev, ids[i], buf + o, (int)(cap - 1 - o));
        if (k < 0 || (size_t)k > cap - 1 - o) return (size_t)-1;
        o += (size_t)k;
        prev = ids[i];
    }
    buf[o] = 0;
    return o;
}

int32_t *tv_oracle_ids(const char *cmd, int *n_out) {
    FILE *fp = popen(cmd, "r");
    if (!fp) {
        test_fail_at(__FILE__, __LINE__, "cannot run %s", cmd);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    long v;
    int c;
    while (fscanf(fp, "%ld", &v) == 1) {
        if (n == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
        ids[n++] = (int32_t)v;
        while ((c = fgetc(fp)) == ' ') {}
        if (c == '\n' || c == EOF) break;
        ungetc(c, fp);
    }
    while (fgetc(fp) != EOF) {}
    int st = pclose(fp);
    if (st != 0) {
        test_fail_at(__FILE__, __LINE__, "oracle failed: %s", cmd);
        free(ids);
        return NULL;
    }
    *n_out = (int)n;
    return ids;
}

char *tv_read_file(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    if (buf && fread(buf, 1, (size_t)sz, fp) != (size_t)sz) { free(buf); buf = NULL; }
    fclose(fp);
    if (buf) { buf[sz] = 0; *n = (size_t)sz; }
    return buf;
}

tokenizer *tv_load_vocab_file(const char *path) {
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    duet_error err = {0};
    if (gguf_open(path, &f, &err) != DUET_OK) {
        test_fail_at(__FILE__, __LINE__, "%s", err.msg);
        return NULL;
    }
    if (tokenizer_load(f, &t, &err) != DUET_OK) test_fail_at(__FILE__, __LINE__, "%s", err.msg);
    gguf_close(f);
    return t;
}

/* llama.cpp's test vectors: .inp strings separated by "\n__ggml_vocab_test__\n" (the text
 * after the last separator, if any, is one more string); .out one line of ids each. */
typedef struct tv_vectors {
    char *inp, *out;
    int n;
    char **text;
    size_t *len;
    char **ids_line;
} tv_vectors;

static void tv_vectors_free(tv_vectors *v) {
    free(v->inp);
    free(v->out);
    free(v->text);
    free(v->len);
    free(v->ids_line);
    memset(v, 0, sizeof *v);
}

static bool tv_vectors_read(const char *vocab_path, tv_vectors *v) {
    char p[1100];
    size_t ni = 0, no = 0;
    memset(v, 0, sizeof *v);
    snprintf(p, sizeof p, "%s.inp", vocab_path);
    v->inp = tv_read_file(p, &ni);
    snprintf(p, sizeof p, "%s.out", vocab_path);
    v->out = tv_read_file(p, &no);
    if (!v->inp || !v->out) { tv_vectors_free(v); return false; }
    const char sep[] = "\n__ggml_vocab_test__\n";
    size_t cap = 16;
    v->text = malloc(cap * sizeof *v->text);
    v->len = malloc(cap * sizeof *v->len);
    for (size_t pos = 0; pos < ni;) {
        if ((size_t)v->n == cap) {
            cap *= 2;
            v->text = realloc(v->text, cap * sizeof *v->text);
            v->len = realloc(v->len, cap * sizeof *v->len);
        }
        char *next = memmem(v->inp + pos, ni - pos, sep, sizeof sep - 1);
        size_t end = next ? (size_t)(next - v->inp) : ni;
        v->text[v->n] = v->inp + pos;
        v->len[v->n] = end - pos;
        v->n++;
        pos = next ? end + sizeof sep - 1 : ni;
    }
    int lines = 0;
    v->ids_line = malloc(((size_t)v->n + 1) * sizeof *v->ids_line);
    for (char *s = v->out; *s && lines <= v->n;) {
        char *nl = strchr(s, '\n');
        if (nl) *nl = 0;
        if (lines < v->n) v->ids_line[lines] = s;
        lines++;
        s = nl ? nl + 1 : s + strlen(s);
    }
    if (lines != v->n) {
        test_fail_at(__FILE__, __LINE__, "%s: %d test strings but %d lines of ids", vocab_path,
                     v->n, lines);
        tv_vectors_free(v);
        return false;
    }
    return true;
}

static int tv_parse_ids(const char *line, int32_t *ids, int cap) {
    int n = 0;
    char *end;
    for (const char *s = line;;) {
        long x = strtol(s, &end, 10);
        if (end == s) break;
        if (n < cap) ids[n] = (int32_t)x;
        n++;
        s = end;
    }
    return n;
}

/* Every vector must encode to exactly the expected ids, and decode (after BOS, which drops
 * the prefix space as llama.cpp's detokenizer does) back to the input. */
void tv_check_vectors(tokenizer *t, const char *vocab_path, const char *name) {
    tv_vectors v;
    if (!tv_vectors_read(vocab_path, &v)) {
        test_fail_at(__FILE__, __LINE__, "%s: cannot read test vectors", vocab_path);
        return;
    }
    int enc_ok = 0, dec_ok = 0;
    for (int i = 0; i < v.n; i++) {
        int32_t want[512], got[512];
        int m = tv_parse_ids(v.ids_line[i], want, 512);
        duet_error err = {0};
        int n = tokenizer_encode(t, v.text[i], v.len[i], false, false, got, 512, &err);
        char shown[120];
        duet_printable(shown, sizeof shown, v.text[i], v.len[i]);
        if (m <= 512 && tv_ids_eq(got, n, want, m)) {
            enc_ok++;
        } else {
            test_fail_at(__FILE__, __LINE__, "%s: vector %d \"%s\" encodes differently (%s)",
                         name, i, shown, n < 0 ? err.msg : "");
            tv_print_ids("got ", got, n);
            tv_print_ids("want", want, m);
            continue;
        }
        size_t cap = 4 * v.len[i] + 64;
        char *text = malloc(cap);
        size_t k = tv_decode(t, tokenizer_bos(t), got, n, text, cap);
        if (k == v.len[i] && memcmp(text, v.text[i], k) == 0) dec_ok++;
        else test_fail_at(__FILE__, __LINE__, "%s: vector %d \"%s\" does not decode back", name,
                          i, shown);
        free(text);
    }
    fprintf(stderr, "    %s: %d/%d vectors encode exactly, %d/%d decode back\n", name, enc_ok,
            v.n, dec_ok, v.n);
    CHECK(v.n >= 40);
    tv_vectors_free(&v);
}

int tv_vector(const char *vocab_path, int i, char **text, size_t *len, int32_t *ids, int cap) {
    tv_vectors v;
    *text = NULL;
    if (!tv_vectors_read(vocab_path, &v)) return -1;
    int n = -1;
    if (i >= 0 && i < v.n && (*text = malloc(v.len[i] + 1))) {
        memcpy(*text, v.text[i], v.len[i]);
        (*text)[v.len[i]] = 0;
        *len = v.len[i];
        n = tv_parse_ids(v.ids_line[i], ids, cap);
    }
    tv_vectors_free(&v);
    return n;
}

const char *tv_vocab_path(const char *file) {
    const char *shared = test_shared_dir();
    if (!shared) return NULL;
    static char p[1024];
    snprintf(p, sizeof p, "%s/tokenizers/vocab/%s", shared, file);
    FILE *fp = fopen(p, "rb");
    if (!fp) return NULL;
    fclose(fp);
    return p;
}

