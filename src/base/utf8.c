/* utf8.c: strict UTF-8 (see utf8.h). */
#include "base/utf8.h"

int duet_utf8_char(const void *p, size_t n) {
    const unsigned char *s = p;
    if (n == 0) return -1;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    /* The allowed range of the second byte narrows for the leads whose plain range would
     * admit overlong forms, surrogates or code points past U+10FFFF. */
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n) return -1;
        unsigned b = s[k];
        if (k == 1 ? b < lo || b > hi : (b & 0xc0) != 0x80) return 0;
    }
    return len;
}

size_t duet_utf8_check(const void *p, size_t n) {
    const unsigned char *s = p;
    size_t i = 0;
    while (i < n) {
        int k = duet_utf8_char(s + i, n - i);
        if (k <= 0) return i;
        i += (size_t)k;
    }
    return n;
}

int duet_utf8_append(duet_buf *b, const void *p, size_t n, int hold, size_t *held) {
    const char *s = p;
    size_t i = 0;
    if (held) *held = 0;
    if (!b->p && duet_buf_add(b, "", 0)) return DUET_ERR_NOMEM; /* readable even when empty */
    while (i < n) {
        int len = duet_utf8_char(s + i, n - i);
        if (len < 0 && hold) {
            if (held) *held = n - i;
            return 0;
        }
        int rc = len <= 0 ? duet_buf_add(b, "\xef\xbf\xbd", 3) : duet_buf_add(b, s + i, (size_t)len);
        if (rc) return rc;
        i += len <= 0 ? 1 : (size_t)len;
    }
    return 0;
}
