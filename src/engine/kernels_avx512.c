/*
 * kernels_avx512.c: the AVX-512 level. It is kernels_avx2.c compiled with AVX-512F/BW/VL/DQ
 * and VNNI (see the Makefile's XFLAGS): the same 256-bit kernels, but EVEX-encoded with 32
 * vector registers (larger register tiles) and vpdpbusd for the int8 dot products. On Zen 4,
 * which splits 512-bit operations into two 256-bit halves, wider vectors would add shuffles
 * (two Q blocks per register) without adding throughput. kernels.c uses this level's
 * integer kernels (Q4_0, Q8_0, K-quants) only on CPUs with avx512vnni, the AVX2 ones otherwise.
 */
#define KX_AVX512 1
#include "engine/kernels_avx2.c"
