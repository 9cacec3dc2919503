/*
 * test_kernels.c: every SIMD level against the scalar reference kernels, and the threaded
 * matrix product against a double-precision product of dequantised rows. The scalar
 * reference itself is held to an independent reading of the block layouts in
 * test_kernels_oracle.c.
 *
 * Bounds, and why:
 *  - from_float (Q8_0 activations): bit-exact with quant_quantize_row(DT_Q8_0).
 *  - vec_dot at each level vs the scalar reference: |fast - ref| <= 1e-5 * sum|w_i x_i|
 *    (the scale of the summands; only the order of float additions differs).
 *  - kernels_matmul vs vec_dot at the same level: bit-identical (tiling and threads must not
 *    change a result).
 *  - kernels_matmul vs sum over i of dequant(W)[o][i] * dequant(xq)[t][i] in double, where
 *    xq is x converted to vec_dot_type: NMSE < 1e-10 for every type.
 *  - Q4_0/Q8_0 matmul vs the product with the unquantised f32 x (the error of rounding the
 *    activations to Q8_0): NMSE < 5e-5 over all shapes together (measured 1.4e-5) and
 *    < 1e-3 for each shape (measured up to 1e-4: shapes with few outputs scatter more).
 *    K-quants (activations in Q8_K): < 1e-4 over all shapes (measured 3.5e-5), < 1e-3 each.
 *  - from_float for Q8_K too: bit-exact with quant_quantize_row(DT_Q8_K), bsums included.
 */
#include <stdlib.h>

#include "engine/kernels.h"
#include "format/quant.h"
#include "base/threadpool.h"
#include "test.h"

/* Q8_K activations share one scale per 256 values: their rounding error is larger than
 * Q8_0's on these inputs, whose scale changes every 32 values (measured 3.5e-5 over all
 * shapes, up to 2.6e-4 for one shape). */
#define K_ALL_NMSE 1e-4
#define K_SHAPE_NMSE 1e-3

static const int k_types[] = {DT_F32, DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0, DT_Q4_K, DT_Q5_K, DT_Q6_K};
#define N_TYPES (int)(sizeof k_types / sizeof k_types[0])

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

/* Values whose scale varies from block to block, as activations do. */
static void fill(float *x, int64_t n) {
    float scale = 1;
    for (int64_t i = 0; i < n; i++) {
        if (i % 32 == 0) scale = 0.05f + 2.0f * (frand() + 1.0f);
        x[i] = scale * frand();
    }
}

/* n values of type `type` from random floats; returns a malloc'd row. */
static void *make_rows(int type, int64_t rows, int64_t n) {
    size_t rs = dtype_row_size(type, n);
    char *w = malloc(rs * (size_t)rows);
    float *f = malloc((size_t)n * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        fill(f, n);
        quant_quantize_row(type, f, w + r * rs, n);
    }
    free(f);
    return w;
}

static int level_available(int level) {
    return kernels_get_level(DT_F32, level) != NULL;
}

/* ---- dispatch ---------------------------------------------------------------------------- */
TEST(kernels_dispatch) {
    int lvl = kernels_level();
    CHECK(lvl >= KLEVEL_SCALAR && lvl < KLEVEL_COUNT);
    CHECK_STR(kernels_level_name(KLEVEL_SCALAR), "scalar");
    CHECK_STR(kernels_level_name(KLEVEL_AVX2), "avx2");
    CHECK_STR(kernels_level_name(KLEVEL_AVX512), "avx512");
    for (int l = 0; l < KLEVEL_COUNT; l++) {
        if (!level_available(l)) {
            fprintf(stderr, "    note: level %s not available on this CPU\n", kernels_level_name(l));
            CHECK(kernels_get_level(DT_Q8_0, l) == NULL);
            continue;
        }
        for (int k = 0; k < N_TYPES; k++) {
            const kernel_traits *kt = kernels_get_level(k_types[k], l);
            REQUIRE(kt != NULL);
            CHECK(kt->vec_dot && kt->tile && kt->tile_rows >= 1 && kt->tile_toks >= 1);
            CHECK(kt->tile_rows <= KERNEL_TILE_MAX && kt->tile_toks <= KERNEL_TILE_MAX);
            int q = k_types[k] == DT_Q8_0 || k_types[k] == DT_Q4_0, kq = k_types[k] >= DT_Q4_K && k_types[k] <= DT_Q6_K;
            CHECK_EQ_INT(kt->vec_dot_type, (q ? DT_Q8_0 : kq ? DT_Q8_K : DT_F32));
            q |= kq;
            CHECK(q ? kt->from_float != NULL : kt->from_float == NULL);
        }
        CHECK(kernels_get_level(DT_Q4_1, l) == NULL);
        CHECK(kernels_get_level(-1, l) == NULL);
        CHECK(kernels_get_level(DT_COUNT, l) == NULL);
    }
    CHECK(kernels_get_level(DT_F32, KLEVEL_COUNT) == NULL);
    /* set_level caps at the CPU and is what kernels_get uses */
    int saved = lvl;
    CHECK_EQ_INT(kernels_set_level(KLEVEL_SCALAR), KLEVEL_SCALAR);
    CHECK(kernels_get(DT_F32) == kernels_get_level(DT_F32, KLEVEL_SCALAR));
    int top = kernels_set_level(KLEVEL_COUNT);
    CHECK(level_available(top) && (top == KLEVEL_COUNT - 1 || !level_available(top + 1)));
    kernels_set_level(saved);
    CHECK_EQ_INT(kernels_level(), saved);
    CHECK_EQ_INT(kernels_matmul_scratch(DT_F32, 4096, 7), 0);
    CHECK_EQ_INT(kernels_matmul_scratch(DT_F16, 4096, 7), 0);
    CHECK_EQ_INT(kernels_matmul_scratch(DT_Q4_0, 4096, 7), 7 * 128 * sizeof(block_q8_0));
    CHECK_EQ_INT(kernels_matmul_scratch(DT_Q4_K, 4096, 7), 7 * 16 * sizeof(block_q8_K));
    CHECK_EQ_INT(sizeof(block_q4_K), 144);
    CHECK_EQ_INT(sizeof(block_q5_K), 176);
    CHECK_EQ_INT(sizeof(block_q6_K), 210);
    CHECK_EQ_INT(sizeof(block_q8_K), 292);
}

TEST(kernels_kvec_dot_f32) {
    static const int64_t ns[] = {0, 1, 15, 16, 17, 100, 4099};
    float *a = malloc(4099 * sizeof(float)), *b = malloc(4099 * sizeof(float));
    fill(a, 4099);
    fill(b, 4099);
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < ns[k]; i++) {
            ref += (double)a[i] * b[i];
            mag += fabs((double)a[i] * b[i]);
        }
        CHECK_NEAR(kvec_dot_f32(a, b, ns[k]), ref, 1e-6 * mag);
    }
    free(a);
    free(b);
}

/* ---- per-level checks -------------------------------------------------------------------- */
static void check_from_float(int level, int wtype) {
    const kernel_traits *kt = kernels_get_level(wtype, level), *ref = kernels_get_level(wtype, KLEVEL_SCALAR);
    const int xtype = kt->vec_dot_type, bs = dtype_info(xtype)->blck;
    const int64_t n = 4096 + bs;
    float *x = malloc(n * sizeof(float));
    fill(x, n);
    /* edge blocks: all zero; exact .5 ties (amax 127 makes d = 1); values just below .5;
     * tiny and large scales; a lone negative maximum */
    for (int j = 0; j < 32; j++) x[j] = 0;
    x[32] = 127;
    for (int j = 1; j < 32; j++) x[32 + j] = (float)(j - 16) + ((j & 1) ? 0.5f : -0.5f);
    x[64] = 127;
    for (int j = 1; j < 32; j++) x[64 + j] = (j & 1 ? 1 : -1) * (j + 0.49999997f);
    for (int j = 0; j < 32; j++) x[96 + j] = 1e-20f * frand();
    for (int j = 0; j < 32; j++) x[128 + j] = 3e4f * frand();
    x[160 + 5] = -9;
    for (int j = 0; j < 32; j++) if (j != 5) x[160 + j] = 8 * frand();
    size_t rs = dtype_row_size(xtype, n), tsz = dtype_info(xtype)->type_size;
    char *a = malloc(rs), *b = malloc(rs);
    memset(a, 0x55, rs);
    memset(b, 0xaa, rs);
    kt->from_float(x, a, n);
    ref->from_float(x, b, n);
    CHECKF(memcmp(a, b, rs) == 0, "%s from_float (%s) differs from quant_quantize_row",
           kernels_level_name(level), dtype_info(xtype)->name);
    for (int64_t k = 0; k < n / bs && memcmp(a, b, rs); k++)
        if (memcmp(a + k * tsz, b + k * tsz, tsz)) {
            fprintf(stderr, "    first differing block %lld\n", (long long)k);
            break;
        }
    free(x);
    free(a);
    free(b);
}

/* sum |w_i x_i| over dequantised values: the scale for the vec_dot tolerance */
static double dot_mag(int wtype, const void *w, const void *x, int64_t n, int xtype) {
    float *wf = malloc(n * sizeof(float)), *xf = malloc(n * sizeof(float));
    quant_dequantize_row(wtype, w, wf, n);
    quant_dequantize_row(xtype, x, xf, n);
    double m = 0;
    for (int64_t i = 0; i < n; i++) m += fabs((double)wf[i] * xf[i]);
    free(wf);
    free(xf);
    return m;
}

static void check_vec_dot(int level) {
    static const int64_t nq[] = {32, 64, 2048, 5632, 4096 + 32, 256, 512};
    static const int64_t nf[] = {1, 7, 8, 9, 33, 1001};
    for (int k = 0; k < N_TYPES; k++) {
        int type = k_types[k];
        const kernel_traits *kt = kernels_get_level(type, level), *ref = kernels_get_level(type, KLEVEL_SCALAR);
        int q = kt->from_float != NULL;
        for (int s = 0; s < 7 + (q ? 0 : 6); s++) {
            int64_t n = s < 7 ? nq[s] : nf[s - 7];
            if (n % dtype_info(type)->blck) continue;
            void *w = make_rows(type, 1, n);
            float *xf = malloc(n * sizeof(float));
            fill(xf, n);
            void *x = xf;
            if (q) {
                x = malloc(dtype_row_size(kt->vec_dot_type, n));
                quant_quantize_row(kt->vec_dot_type, xf, x, n);
            }
            if (q && s == 1) { /* full int8 range in the weights, -128 included */
                int8_t *qs = type == DT_Q8_0 ? ((block_q8_0 *)w)[0].qs : NULL;
                for (int j = 0; qs && j < 32; j++) qs[j] = (int8_t)(j * 37 % 256 - 128);
                if (qs) qs[5] = -128;
            }
            float got = -1, want = -2;
            kt->vec_dot(n, &got, w, x);
            ref->vec_dot(n, &want, w, x);
            double mag = dot_mag(type, w, x, n, kt->vec_dot_type);
            CHECKF(fabs((double)got - want) <= 1e-5 * mag, "%s %s n=%lld: %.9g vs reference %.9g (scale %g)",
                   kernels_level_name(level), dtype_info(type)->name, (long long)n, got, want, mag);
            if (x != xf) free(x);
            free(xf);
            free(w);
        }
    }
}

typedef struct { int64_t n_in, n_out, n_tok; } mm_shape;

static void check_matmul(int level) {
    static const mm_shape shapes[] = {
        {32, 1000, 129}, {64, 17, 129}, {2048, 17, 7}, {5632, 17, 64}, {4128, 1000, 1},
        {5632, 3, 129}, {2048, 1, 2}, {4128, 17, 2}, {64, 3, 1}, {32, 1, 7}, {2048, 1000, 2},
        {64, 1000, 4}, {2048, 17, 3}, /* a whole token tile at some level: the decode path */
        {1001, 17, 7}, /* float types only: n_in not a multiple of any vector */
        {256, 1000, 129}, {512, 5, 1}, {768, 13, 5}, /* K-quant super-blocks */
        /* several token tiles over rows read once (a few sequences decoded together), the
         * largest such batch, and the smallest prefill after it */
        {2048, 1000, 8}, {768, 13, 16}, {768, 13, 17},
    };
    threadpool *pools[3] = {tp_new(1), tp_new(2), tp_new(3)};
    REQUIRE(pools[0] && pools[1] && pools[2]);
    int saved = kernels_level();
    kernels_set_level(level);
    double worst_q[N_TYPES] = {0}, num_q[N_TYPES] = {0}, den_q[N_TYPES] = {0};
    for (int k = 0; k < N_TYPES; k++) {
        int type = k_types[k];
        const kernel_traits *kt = kernels_get_level(type, level);
        int q = kt->from_float != NULL;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int64_t n_in = shapes[s].n_in, n_out = shapes[s].n_out, n_tok = shapes[s].n_tok;
            if (n_in % dtype_info(type)->blck) continue;
            size_t ws = dtype_row_size(type, n_in), xs = dtype_row_size(kt->vec_dot_type, n_in);
            char *w = make_rows(type, n_out, n_in);
            float *x = malloc((size_t)(n_tok * n_in) * sizeof(float));
            fill(x, n_tok * n_in);
            char *xq = malloc(xs * (size_t)n_tok);
            float *wf = malloc((size_t)(n_out * n_in) * sizeof(float));
            float *xd = malloc((size_t)(n_tok * n_in) * sizeof(float));
            for (int64_t o = 0; o < n_out; o++) quant_dequantize_row(type, w + o * ws, wf + o * n_in, n_in);
            for (int64_t t = 0; t < n_tok; t++) {
                quant_quantize_row(kt->vec_dot_type, x + t * n_in, xq + t * xs, n_in);
                quant_dequantize_row(kt->vec_dot_type, xq + t * xs, xd + t * n_in, n_in);
            }
            size_t ny = (size_t)(n_tok * n_out);
            float *ref_q = malloc(ny * sizeof(float)), *ref_x = malloc(ny * sizeof(float));
            float *vd = malloc(ny * sizeof(float)), *y = malloc(ny * sizeof(float));
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t o = 0; o < n_out; o++) {
                    double a = 0, b = 0;
                    for (int64_t i = 0; i < n_in; i++) {
                        a += (double)wf[o * n_in + i] * xd[t * n_in + i];
                        b += (double)wf[o * n_in + i] * x[t * n_in + i];
                    }
                    ref_q[t * n_out + o] = (float)a;
                    ref_x[t * n_out + o] = (float)b;
                    kt->vec_dot(n_in, &vd[t * n_out + o], w + o * ws, xq + t * xs);
                }
            size_t scratch_n = kernels_matmul_scratch(type, n_in, n_tok);
            void *scratch = scratch_n ? malloc(scratch_n) : NULL;
            for (int p = -1; p < 3; p++) {
                if (p == -1 && s % 4) continue; /* a NULL pool now and then */
                for (size_t i = 0; i < ny; i++) y[i] = NAN;
                kernels_matmul(p < 0 ? NULL : pools[p], type, w, n_in, n_out, x, n_tok, y, scratch);
                const char *tn = dtype_info(type)->name, *ln = kernels_level_name(level);
                CHECKF(memcmp(y, vd, ny * sizeof(float)) == 0,
                       "%s %s %lldx%lld x %lld tok, %d threads: matmul differs from vec_dot", ln, tn,
                       (long long)n_out, (long long)n_in, (long long)n_tok, p + 1);
                double e = test_nmse(y, ref_q, (long)ny);
                CHECKF(e < 1e-10, "%s %s %lldx%lld x %lld tok: NMSE %g vs double reference", ln, tn,
                       (long long)n_out, (long long)n_in, (long long)n_tok, e);
                if (q) {
                    double eq = test_nmse(y, ref_x, (long)ny);
                    CHECKF(eq < (kt->vec_dot_type == DT_Q8_K ? K_SHAPE_NMSE : 1e-3), "%s %s %lldx%lld x %lld tok: NMSE %g vs f32 activations", ln, tn,
                           (long long)n_out, (long long)n_in, (long long)n_tok, eq);
                    int qi = k;
                    if (eq > worst_q[qi]) worst_q[qi] = eq;
                    for (size_t i = 0; i < ny; i++) {
                        num_q[qi] += ((double)y[i] - ref_x[i]) * ((double)y[i] - ref_x[i]);
                        den_q[qi] += (double)ref_x[i] * ref_x[i];
                    }
                }
                if (test_failed_now()) break;
            }
            free(scratch);
            free(w);
            free(x);
            free(xq);
            free(wf);
            free(xd);
            free(ref_q);
            free(ref_x);
            free(vd);
            free(y);
            if (test_failed_now()) break;
        }
        if (test_failed_now()) break;
    }
    for (int qi = 0; qi < N_TYPES && !test_failed_now(); qi++) {
        if (den_q[qi] == 0) continue; /* float types: no activation rounding */
        int kq = k_types[qi] >= DT_Q4_K && k_types[qi] <= DT_Q6_K;
        CHECKF(num_q[qi] < (kq ? K_ALL_NMSE : 5e-5) * den_q[qi], "%s %s: NMSE %g over all shapes vs f32 activations",
               kernels_level_name(level), dtype_info(k_types[qi])->name, num_q[qi] / den_q[qi]);
        if (getenv("DUET_VERBOSE"))
            fprintf(stderr, "    %s %s: NMSE vs f32 activations, all shapes %.3g, worst shape %.3g\n",
                    kernels_level_name(level), dtype_info(k_types[qi])->name, num_q[qi] / den_q[qi], worst_q[qi]);
    }
    kernels_set_level(saved);
    for (int p = 0; p < 3; p++) tp_free(pools[p]);
}

static void check_level(int level) {
    check_from_float(level, DT_Q8_0);
    check_from_float(level, DT_Q4_K);
    check_vec_dot(level);
    check_matmul(level);
}

TEST(kernels_scalar) { check_level(KLEVEL_SCALAR); }

TEST(kernels_avx2) {
    if (!level_available(KLEVEL_AVX2)) SKIP("CPU lacks AVX2+FMA+F16C");
    check_level(KLEVEL_AVX2);
}

TEST(kernels_avx512) {
    if (!level_available(KLEVEL_AVX512)) SKIP("CPU lacks AVX-512 F/BW/VL/DQ");
    check_level(KLEVEL_AVX512);
}
