/*
 * hash.h: FNV-1a 64, the one byte hash every module uses (vocabulary identity, data and
 * score-file identity, string hash tables). Hashes written to files depend on it, so its
 * output must never change.
 */
#ifndef DUET_HASH_H
#define DUET_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The standard FNV-1a 64 offset basis (14695981039346656037). */
#define DUET_FNV_OFFSET 0xcbf29ce484222325ull
/* A shorter seed (the standard basis missing its last digit) that the data, score-file and
 * vocabulary-bridge hashes have always started from; data and score files record hashes
 * made with it, so it stays. */
#define DUET_FNV_SEED_SHORT 1469598103934665603ull

/* Continue the FNV-1a 64 hash h over p[0..n). */
static inline uint64_t duet_fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

/* Continue h over the NUL-terminated string s (the NUL itself not included). */
static inline uint64_t duet_fnv1a_str(uint64_t h, const char *s) {
    return duet_fnv1a(h, s, strlen(s));
}

#endif
