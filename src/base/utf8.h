/*
 * utf8.h: the one strict UTF-8 validator every layer uses (model names and vocabularies,
 * tokenizer input, training data, streamed server text), so they all accept exactly the same
 * bytes. Strict means: no overlong forms (C0, C1 leads; E0 80..9F; F0 80..8F), no UTF-16
 * surrogates (ED A0..BF), nothing past U+10FFFF (F4 90..BF, F5..FF leads), no stray
 * continuation bytes.
 */
#ifndef DUET_UTF8_H
#define DUET_UTF8_H

#include <stddef.h>

#include "base/common.h"

/* Length (1-4) of the valid character at s[0..n); 0 when no valid character starts there;
 * -1 when s[0..n) is a valid but unfinished start of one (more bytes may complete it; also
 * when n is 0), which a streaming caller can hold back. */
int duet_utf8_char(const void *s, size_t n);

/* Offset of the first byte of s[0..n) that does not start a complete valid character, or n
 * when all of s is valid UTF-8. */
size_t duet_utf8_check(const void *s, size_t n);

/* Append s[0..n) to b as valid UTF-8: bytes that cannot start a complete valid character
 * become U+FFFD. hold = 1: a valid but unfinished character at the end is not appended and
 * *held (may be NULL) gets its byte count, for the caller to keep until more bytes arrive;
 * hold = 0: it is replaced too. 0, or DUET_ERR_NOMEM (b then holds a prefix of the result). */
int duet_utf8_append(duet_buf *b, const void *s, size_t n, int hold, size_t *held);

#endif
