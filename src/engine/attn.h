/*
 * attn.h: the attention kernel: one token's q heads that share a kv head (a grouped-query
 * group, or part of one) attend to a range of cached positions. Processing a group together
 * lets every K and V row load serve all of its q heads. Like the matrix kernels, it has a
 * scalar reference (attn.c) and AVX2 / AVX-512 variants (attn_avx2.c, attn_avx512.c) chosen
 * at run time by kernels_level(); it never sees a model.
 *
 * The cache holds F32 or F16 elements (type_k / type_v, each on its own): an F16 element is
 * widened to the float it stands for (exactly) where it is loaded, and from there every level
 * runs the same operations as with F32, so F16 data gives the bits F32 copies of the same
 * values would.
 *
 * Invariant: at a given level, the output of each q head is the same sequence of float
 * operations whatever n_q is and whichever heads share the call, so the forward pass may
 * split groups over threads as it likes and prefill still equals decode bit for bit.
 */
#ifndef DUET_ATTN_H
#define DUET_ATTN_H

#include <stddef.h>

/* The K cache of one kv head is stored in blocks of 8 positions, dims major, so that one
 * vector load gives a dim of 8 positions and scores need no sum across lanes: position p,
 * dim d at k[attn_k_index(p, d, head_dim)]. Blocks are whole: a cache holds a multiple of
 * 8 positions. */
static inline size_t attn_k_index(int p, int d, int head_dim) {
    return ((size_t)(p >> 3) * (size_t)head_dim + (size_t)d) * 8 + (size_t)(p & 7);
}

typedef struct attn_args {
    int head_dim;
    int n_q;              /* q heads in this call, all reading the same K/V rows */
    const float *q;       /* [n_q][head_dim] */
    float *out;           /* [n_q][head_dim] */
    const void *k;        /* this kv head's K blocks (attn_k_index), 32-byte aligned */
    const void *v;        /* position p's V row at element p*v_stride of v */
    size_t v_stride;      /* in elements */
    int type_k, type_v;   /* element types of k and v: DT_F32 (0) or DT_F16 (1) */
    int p0, p1;           /* attend to positions [p0, p1), p0 < p1 */
    float scale;          /* score = dot(q, k) * scale ... */
    float softcap;        /* ... then, if > 0, softcap * tanh(score / softcap) (gemma2) */
    float *scores;        /* scratch: attn_scratch_floats(n_q, p1 - p0) floats */
} attn_args;

/* out[h] = sum_p softmax_p(score(h, p)) * v[p] for each head h < n_q. */
typedef void (*attn_fn)(const attn_args *a);

/* The kernel of a level (KLEVEL_*); NULL if the CPU lacks that level. */
attn_fn attn_kernel(int level);
/* Scratch a call needs for n_q heads over n_pos positions (same at every level). */
size_t attn_scratch_floats(int n_q, int n_pos);

/* Per-level kernels (attn_avx2.c, attn_avx512.c); use attn_kernel, which checks the CPU. */
void attn_avx2(const attn_args *a);
void attn_avx512(const attn_args *a);

#endif
