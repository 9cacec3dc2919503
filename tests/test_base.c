/*
 * test_base.c: the shared helpers of src/base that every layer calls (hashing, UTF-8
 * validation, atomic file replacement). Expected values are published test vectors or worked
 * out by hand in the comments, never taken from the code under test.
 */
#include "base/hash.h"
#include "test.h"

/* FNV-1a 64 against the published test vectors of the FNV reference (Fowler, Noll, Vo):
 * "" -> the offset basis itself, "a" -> 0xaf63dc4c8601ec8c, "foobar" -> 0x85944171f73967e8. */
TEST(base_fnv1a_reference_vectors) {
    CHECK(duet_fnv1a(DUET_FNV_OFFSET, "", 0) == 0xcbf29ce484222325ull);
    CHECK(duet_fnv1a(DUET_FNV_OFFSET, "a", 1) == 0xaf63dc4c8601ec8cull);
    CHECK(duet_fnv1a(DUET_FNV_OFFSET, "foobar", 6) == 0x85944171f73967e8ull);
    CHECK(duet_fnv1a_str(DUET_FNV_OFFSET, "foobar") == 0x85944171f73967e8ull);
    /* Chaining is the same as hashing the concatenation. */
    CHECK(duet_fnv1a(duet_fnv1a(DUET_FNV_OFFSET, "foo", 3), "bar", 3) == 0x85944171f73967e8ull);
}

/* The short seed the data and score files record hashes with: "ab" from it, worked out with
 * Python integers (h = ((h ^ c) * 0x100000001b3) mod 2^64 for c in b"ab"), is
 * 0x9bac4b00c65ba4ec. A bare byte beyond the NUL must not count for the string form. */
TEST(base_fnv1a_short_seed) {
    CHECK(DUET_FNV_SEED_SHORT == 1469598103934665603ull);
    CHECK(duet_fnv1a(DUET_FNV_SEED_SHORT, "ab", 2) == 0x9bac4b00c65ba4ecull);
    CHECK(duet_fnv1a_str(DUET_FNV_SEED_SHORT, "ab\0c") == 0x9bac4b00c65ba4ecull);
}
