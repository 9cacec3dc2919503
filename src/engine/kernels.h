/*
 * kernels.h: the compute kernels: dot products of a weight row (any supported type) with an
 * activation row, and the threaded matrix products built on them. Each kernel has a scalar
 * reference (kernels.c) and AVX2 / AVX-512 variants (kernels_avx2.c, kernels_avx512.c)
 * chosen at run time; tests compare each variant with the reference. Kernels never see a
 * model: only types, pointers and sizes.
 */
#ifndef DUET_KERNELS_H
#define DUET_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "base/threadpool.h"

enum { KLEVEL_SCALAR = 0, KLEVEL_AVX2 = 1, KLEVEL_AVX512 = 2, KLEVEL_COUNT };

typedef struct kernel_traits {
    /* Activations are converted once per row to this type before dotting with weights of
     * the kernel's type (Q8_0 for Q4_0/Q8_0 weights, Q8_K for the K-quants Q4_K/Q5_K/Q6_K,
     * F32 for float weights). */
    int vec_dot_type;
    /* Convert n f32 activations to vec_dot_type (NULL when vec_dot_type is F32). */
    void (*from_float)(const float *x, void *y, int64_t n);
    /* *s = dot(w[0..n), x[0..n)) where w has the weight type and x vec_dot_type (for Q8_0,
     * values in [-127, 127], as from_float makes them). */
    void (*vec_dot)(int64_t n, float *s, const void *w, const void *x);
    /* kernels_matmul's inner kernel: y[t * y_stride + r] = dot(w row r, x row t) for r < nr,
     * t < nt (nr <= tile_rows, nt <= tile_toks); w rows are w_stride bytes apart, x rows
     * (vec_dot_type) x_stride bytes. Each result is bit-identical to vec_dot's, whatever the
     * tile shape, so the matrix product does not depend on tiling or thread count. */
    void (*tile)(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride,
                 float *y, int64_t y_stride, int nr, int nt);
    int tile_rows, tile_toks; /* at most KERNEL_TILE_MAX */
    /* 0 for ordinary row-major types. 8 for the row-interleaved R8 types (quant.h): their
     * rows exist only as groups of 8, so vec_dot takes a group and writes its 8 dots to
     * s[0..8), tile's nr and its row offsets are multiples of 8, and a matrix has n_out a
     * multiple of 8. */
    int group_rows;
} kernel_traits;

#define KERNEL_TILE_MAX 16

/* Detected CPU level (highest supported), honouring DUET_KLEVEL=scalar|avx2|avx512. */
int kernels_level(void);
const char *kernels_level_name(int level);
/* Traits for weight type at the detected level; NULL if the type is unsupported. */
const kernel_traits *kernels_get(int type);
/* Traits at a given level (for tests); NULL if that level is not available on this CPU or
 * has no kernel for the type. */
const kernel_traits *kernels_get_level(int type, int level);
/* Use at most `level` from now on (tests, benchmarks); capped at what the CPU has. Returns
 * the level in effect. Not to be called while kernels run on other threads. */
int kernels_set_level(int level);
/* Per-level tables (kernels_avx2.c, kernels_avx512.c); use kernels_get*, which check the
 * CPU. The AVX-512 table's integer kernels use VNNI (vpdpbusd, vpdpwssd). */
const kernel_traits *kernels_avx2_traits(int type);
const kernel_traits *kernels_avx512_traits(int type);

/*
 * y[t][o] = sum_i W[o][i] * x[t][i]   for t < n_tok, o < n_out
 *   W: [n_out][n_in] rows of type wtype (row stride = dtype_row_size(wtype, n_in))
 *   x: [n_tok][n_in] f32, y: [n_tok][n_out] f32 (row stride n_out)
 * Activations are converted once per call; work is split over the pool by output rows, in
 * blocks so that each weight block is reused across tokens while it is in cache.
 * scratch must hold kernels_matmul_scratch(wtype, n_in, n_tok) bytes (0: may be NULL).
 * y[t] is bit-identical to vec_dot of each row with x[t] converted by from_float, so it does
 * not depend on n_tok (decode and prefill agree), tiling or the number of threads.
 */
size_t kernels_matmul_scratch(int wtype, int64_t n_in, int64_t n_tok); /* same at every level */
void kernels_matmul(threadpool *tp, int wtype, const void *W, int64_t n_in, int64_t n_out,
                    const float *x, int64_t n_tok, float *y, void *scratch);

/* Small f32 helpers (scalar; the compiler vectorises them). */
float kvec_dot_f32(const float *a, const float *b, int64_t n);

#endif
