/*
 * attn_avx512.c: the AVX-512 level of the attention kernel: attn_avx2.c compiled with
 * AVX-512F/VL (see the Makefile's XFLAGS), the same 256-bit code with EVEX encodings and 32
 * vector registers for larger tiles (4 heads x 4 positions of scores, 4 heads x 32 floats of
 * output), as the matrix kernels do on Zen 4.
 */
#define AX_AVX512 1
#include "engine/attn_avx2.c"
