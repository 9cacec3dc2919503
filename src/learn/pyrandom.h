/*
 * pyrandom.h: the two Mersenne Twister samplers whose draws decide the official evaluation
 * splits (internal). Both share one MT19937 generator; they differ in seeding and in how a
 * bounded integer is drawn:
 *  - Python's `random` module: random.seed(int) seeds with init_by_array over the integer's
 *    32-bit words; random.sample(range(n), k) draws with _randbelow (getrandbits of
 *    n.bit_length() bits, redrawn while >= n) and picks between a pool algorithm (small n)
 *    and a set-with-retries algorithm (large n) exactly where CPython does.
 *  - numpy's legacy RandomState(seed): seeded with init_genrand(seed); permutation(n) is a
 *    Fisher-Yates shuffle from the end whose bounded draws mask the 32-bit output to the
 *    smallest all-ones mask >= i and redraw while > i; choice(n, k, replace=False) is the
 *    first k of permutation(n) (what pandas' sample and groupby().sample use).
 * No allocation happens in the generator itself; the samplers allocate scratch only.
 */
#ifndef DUET_LEARN_PYRANDOM_H
#define DUET_LEARN_PYRANDOM_H

#include <stdint.h>

typedef struct mt19937 {
    uint32_t mt[624];
    int index;
} mt19937;

/* init_genrand(s) (numpy's legacy integer seeding) */
void mt_init_genrand(mt19937 *m, uint32_t s);
/* init_by_array(key[0..n)) (CPython's seeding; n >= 1) */
void mt_init_by_array(mt19937 *m, const uint32_t *key, int n);
uint32_t mt_next32(mt19937 *m);

/* random.seed(seed) for a non-negative integer seed below 2^64 */
void py_random_seed(mt19937 *m, uint64_t seed);
/* random.getrandbits(k), 1 <= k <= 32 */
uint32_t py_getrandbits(mt19937 *m, int k);
/* random._randbelow(n), 1 <= n < 2^32 */
uint32_t py_randbelow(mt19937 *m, uint32_t n);
/* random.sample(range(n), k) into out[k] (indices into the population); 0, or -1 when
 * k > n or out of memory. */
int py_sample(mt19937 *m, int n, int k, int *out);

/* random.shuffle(x) of x[0..n): for i from n-1 down to 1, swap x[i] with x[_randbelow(i+1)] */
void py_shuffle(mt19937 *m, int *x, int n);

/* numpy.random.RandomState(seed) */
void np_random_seed(mt19937 *m, uint32_t seed);
/* random_interval(max): uniform in [0, max] */
uint32_t np_random_interval(mt19937 *m, uint32_t max);
/* RandomState.permutation(n) into out[n] */
void np_permutation(mt19937 *m, int n, int *out);
/* RandomState.choice(n, k, replace=False) into out[k]; 0, or -1 when k > n or out of memory */
int np_choice(mt19937 *m, int n, int k, int *out);

#endif
