/*
 * test_act.c: the gate kernels (src/engine/act.h): the SIMD exp against libm's expf over a sweep of
 * float inputs and the special values, and SiLU(gate) * up against the scalar reference.
 */
#include <stdlib.h>

#include "engine/act.h"
#include "base/common.h"
#include "engine/kernels.h"
#include "test.h"

/* distance in units in the last place between two finite floats of the same sign (or 0) */
static long ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return labs((long)ia - (long)ib);
}

TEST(act_exp_matches_expf) {
    /* every 601st float in [-110, 100] (about 3.7 million, through the subnormal results below
     * -87.3 and the overflow above 88.7), then the special values */
    const float lo = -110.0f, hi = 100.0f;
    int32_t ilo, ihi, izero = 0;
    memcpy(&ilo, &lo, 4);
    memcpy(&ihi, &hi, 4);
    size_t cap = ((size_t)(ilo & 0x7fffffff) + (size_t)ihi) / 601 + 16, n = 0;
    float *x = malloc(cap * sizeof(float)), *y = malloc(cap * sizeof(float));
    REQUIRE(x && y);
    for (int32_t i = ilo & 0x7fffffff; i > 0 && n < cap; i -= 601) { /* negative: -|x| */
        int32_t b = i | (int32_t)0x80000000;
        memcpy(&x[n++], &b, 4);
    }
    for (int32_t i = izero; i <= ihi && n < cap; i += 601) memcpy(&x[n++], &i, 4);
    const float special[] = {0.0f, -0.0f, -INFINITY, INFINITY, NAN, -1000.0f, 1000.0f, 88.72f,
                             -87.33f, -103.9f, 1.0f, -1.0f};
    size_t n_special = sizeof special / sizeof special[0];
    for (size_t i = 0; i < n_special && n < cap; i++) x[n++] = special[i];
    for (int level = KLEVEL_AVX2; level < KLEVEL_COUNT; level++) {
        act_exp_fn fn = act_exp(level);
        if (!fn) continue;
        fn(x, y, n);
        long worst = 0, differ = 0;
        for (size_t i = 0; i < n; i++) {
            float ref = expf(x[i]);
            if (isnan(ref)) { CHECKF(isnan(y[i]), "exp(%g) = %g, not NaN", x[i], y[i]); continue; }
            long u = ulps(y[i], ref);
            differ += u != 0;
            if (u > worst) worst = u;
            CHECKF(u <= 1, "%s: exp(%.9g) = %.9g, expf %.9g", kernels_level_name(level), x[i], y[i], ref);
        }
        fprintf(stderr, "    %s: %zu inputs, %ld differ from expf (by at most %ld ulp)\n",
                kernels_level_name(level), n, differ, worst);
        CHECKF(differ * 1000 < (long)n, "%ld of %zu differ from expf", differ, n);
        CHECK(y[n - n_special + 2] == 0.0f && y[n - n_special + 3] == INFINITY); /* -inf, inf */
        CHECK(y[n - n_special] == 1.0f && y[n - n_special + 1] == 1.0f);
    }
    free(x);
    free(y);
}

TEST(act_silu_mul_matches_reference) {
    act_silu_mul_fn ref = act_silu_mul(KLEVEL_SCALAR);
    REQUIRE(ref);
    static const size_t lens[] = {1, 7, 8, 9, 1003};
    uint64_t seed = 5;
    for (int level = KLEVEL_AVX2; level < KLEVEL_COUNT; level++) {
        act_silu_mul_fn fn = act_silu_mul(level);
        if (!fn) continue;
        long worst = 0, differ = 0, total = 0;
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            size_t n = lens[li];
            float g[1003], u[1003], a[1003];
            for (size_t i = 0; i < n; i++) {
                g[i] = (float)((duet_splitmix64(&seed) >> 40) * 0x1.0p-24 * 40 - 20);
                u[i] = (float)((duet_splitmix64(&seed) >> 40) * 0x1.0p-24 * 2 - 1);
            }
            g[0] = -100.0f; /* exp(100) overflows: SiLU is -0 */
            memcpy(a, g, n * sizeof(float));
            ref(g, u, n);
            fn(a, u, n);
            for (size_t i = 0; i < n; i++) {
                long d = ulps(a[i], g[i]);
                differ += d != 0;
                worst = d > worst ? d : worst;
            }
            total += (long)n;
        }
        fprintf(stderr, "    %s: %ld of %ld differ from the reference (by at most %ld ulp)\n",
                kernels_level_name(level), differ, total, worst);
        /* only where exp differs by an ulp, and that moves the quotient by at most ~1 ulp */
        CHECKF(worst <= 2 && differ * 100 < total, "%s: %ld differ, worst %ld ulp",
               kernels_level_name(level), differ, worst);
    }
}
