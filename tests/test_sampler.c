/* test_sampler.c: the sampler's truncations (top-k, top-p, min-p) and temperature on tiny
 * distributions whose kept sets and renormalised probabilities are worked out by hand below.
 * Each case draws many tokens with a fixed seed and checks two things: tokens outside the kept
 * set never appear, and every kept token's frequency lies within 5 binomial standard
 * deviations of its hand-computed probability (a wrong kept set or a wrong temperature moves
 * some frequency by tens of deviations). Reseeding restarts a sampler's stream. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "duet.h"
#include "test.h"

#define N_DRAWS 20000

/* Draw N_DRAWS tokens and compare with want[n] (0 = must never appear). */
static void check_freqs(const char *file, int line, const char *what, duet_sampler_params p,
                        const float *logits, int n, const double *want) {
    duet_sampler *s = NULL;
    duet_error err = {0};
    if (duet_sampler_new(&p, &s, &err)) {
        test_fail_at(file, line, "%s: sampler_new: %s", what, err.msg);
        return;
    }
    int counts[8] = {0}, outside = 0;
    for (int r = 0; r < N_DRAWS; r++) {
        int32_t t = duet_sampler_sample(s, logits, n);
        if (t < 0 || t >= n) outside++;
        else counts[t]++;
    }
    duet_sampler_free(s);
    if (outside) test_fail_at(file, line, "%s: %d draws outside [0, %d)", what, outside, n);
    double total = 0;
    for (int i = 0; i < n; i++) total += want[i];
    if (fabs(total - 1) > 1e-9) test_fail_at(file, line, "%s: expected probabilities sum to %g", what, total);
    for (int i = 0; i < n; i++) {
        if (want[i] == 0) {
            if (counts[i]) test_fail_at(file, line, "%s: token %d is outside the kept set but was "
                                        "drawn %d times", what, i, counts[i]);
            continue;
        }
        double mu = N_DRAWS * want[i], sd = sqrt(N_DRAWS * want[i] * (1 - want[i]));
        if (fabs(counts[i] - mu) > 5 * sd)
            test_fail_at(file, line, "%s: token %d drawn %d times, expected %.1f +- %.1f (5 sd)",
                         what, i, counts[i], mu, 5 * sd);
    }
}
#define CHECK_FREQS(what, p, logits, n, ...)                                                  \
    do {                                                                                      \
        const double _w[] = {__VA_ARGS__};                                                    \
        check_freqs(__FILE__, __LINE__, what, p, logits, n, _w);                              \
    } while (0)

/* The main distribution: logits log(w) for weights w = {1, 6, 2, 8, 3} (sum 20), so the
 * temperature-1 probabilities are w/20 = {.05, .30, .10, .40, .15}. The largest is not at id
 * 0, so the sampler's sort matters. In descending order: id 3 (.40), id 1 (.30), id 4 (.15),
 * id 2 (.10), id 0 (.05); cumulative .40, .70, .85, .95, 1. */
static void weights_logits(float *l) {
    static const double w[5] = {1, 6, 2, 8, 3};
    for (int i = 0; i < 5; i++) l[i] = (float)log(w[i]);
}

TEST(sampler_temperature_one_is_softmax) {
    float l[5];
    weights_logits(l);
    CHECK_FREQS("plain", ((duet_sampler_params){.temp = 1, .seed = 1}), l, 5,
                1 / 20.0, 6 / 20.0, 2 / 20.0, 8 / 20.0, 3 / 20.0);
}

TEST(sampler_top_k_keeps_k_largest) {
    float l[5];
    weights_logits(l);
    /* k 1: id 3 alone */
    CHECK_FREQS("top-k 1", ((duet_sampler_params){.temp = 1, .top_k = 1, .seed = 2}), l, 5,
                0, 0, 0, 1, 0);
    /* k 2: ids 3 and 1, renormalised 8/14 and 6/14 */
    CHECK_FREQS("top-k 2", ((duet_sampler_params){.temp = 1, .top_k = 2, .seed = 3}), l, 5,
                0, 6 / 14.0, 0, 8 / 14.0, 0);
    /* k 3: ids 3, 1, 4: 8/17, 6/17, 3/17 */
    CHECK_FREQS("top-k 3", ((duet_sampler_params){.temp = 1, .top_k = 3, .seed = 4}), l, 5,
                0, 6 / 17.0, 0, 8 / 17.0, 3 / 17.0);
    /* k >= n_vocab and k <= 0 are off */
    CHECK_FREQS("top-k 9", ((duet_sampler_params){.temp = 1, .top_k = 9, .seed = 5}), l, 5,
                1 / 20.0, 6 / 20.0, 2 / 20.0, 8 / 20.0, 3 / 20.0);
    CHECK_FREQS("top-k -1", ((duet_sampler_params){.temp = 1, .top_k = -1, .seed = 6}), l, 5,
                1 / 20.0, 6 / 20.0, 2 / 20.0, 8 / 20.0, 3 / 20.0);
}

TEST(sampler_top_p_keeps_smallest_set_reaching_p) {
    float l[5];
    weights_logits(l);
    /* p .6: .40 < .6, then .70 >= .6 at the 2nd token: exactly ids 3 and 1 stay, 8/14 and
     * 6/14 (keeping one token fewer would leave id 3 alone) */
    CHECK_FREQS("top-p .6", ((duet_sampler_params){.temp = 1, .top_p = 0.6f, .seed = 7}), l, 5,
                0, 6 / 14.0, 0, 8 / 14.0, 0);
    /* p .3: the first token's .40 already reaches it: id 3 alone */
    CHECK_FREQS("top-p .3", ((duet_sampler_params){.temp = 1, .top_p = 0.3f, .seed = 8}), l, 5,
                0, 0, 0, 1, 0);
    /* p .8: .70 < .8 <= .85: ids 3, 1, 4 stay, 8/17, 6/17, 3/17 */
    CHECK_FREQS("top-p .8", ((duet_sampler_params){.temp = 1, .top_p = 0.8f, .seed = 9}), l, 5,
                0, 6 / 17.0, 0, 8 / 17.0, 3 / 17.0);
    /* p .9: .85 < .9 <= .95: all but id 0, 8/19, 6/19, 3/19, 2/19 */
    CHECK_FREQS("top-p .9", ((duet_sampler_params){.temp = 1, .top_p = 0.9f, .seed = 10}), l, 5,
                0, 6 / 19.0, 2 / 19.0, 8 / 19.0, 3 / 19.0);
    /* p >= 1 is off */
    CHECK_FREQS("top-p 1", ((duet_sampler_params){.temp = 1, .top_p = 1, .seed = 11}), l, 5,
                1 / 20.0, 6 / 20.0, 2 / 20.0, 8 / 20.0, 3 / 20.0);
}

TEST(sampler_min_p_is_relative_to_the_max) {
    float l[5];
    weights_logits(l);
    /* min-p .3 keeps p >= .3 * .40 = .12, i.e. w >= 2.4: ids 3, 1, 4 (8/17, 6/17, 3/17).
     * Read as an absolute bound (p >= .3, w >= 6) it would drop id 4 (and id 1 sits on it). */
    CHECK_FREQS("min-p .3", ((duet_sampler_params){.temp = 1, .min_p = 0.3f, .seed = 12}), l, 5,
                0, 6 / 17.0, 0, 8 / 17.0, 3 / 17.0);
    /* min-p .1: p >= .04, w >= .8: everything */
    CHECK_FREQS("min-p .1", ((duet_sampler_params){.temp = 1, .min_p = 0.1f, .seed = 13}), l, 5,
                1 / 20.0, 6 / 20.0, 2 / 20.0, 8 / 20.0, 3 / 20.0);
    /* min-p .9: w >= 7.2: id 3 alone */
    CHECK_FREQS("min-p .9", ((duet_sampler_params){.temp = 1, .min_p = 0.9f, .seed = 14}), l, 5,
                0, 0, 0, 1, 0);
}

TEST(sampler_temperature_sharpens_and_flattens) {
    float l[5];
    weights_logits(l);
    /* T .5: p ~ w^(1/T) = w^2 = {1, 36, 4, 64, 9}, sum 114 */
    CHECK_FREQS("T .5", ((duet_sampler_params){.temp = 0.5f, .seed = 15}), l, 5,
                1 / 114.0, 36 / 114.0, 4 / 114.0, 64 / 114.0, 9 / 114.0);
    /* T 2 on weights {1, 4, 9, 16}: p ~ sqrt(w) = {1, 2, 3, 4}, sum 10 */
    float sq[4];
    for (int i = 0; i < 4; i++) sq[i] = (float)log((double)((i + 1) * (i + 1)));
    CHECK_FREQS("T 2", ((duet_sampler_params){.temp = 2, .seed = 16}), sq, 4, .1, .2, .3, .4);
}

TEST(sampler_temperature_zero_is_argmax) {
    float l[5];
    weights_logits(l);
    /* T <= 0 ignores every truncation and picks the largest logit; ties go to the lowest id */
    float tie[4] = {1, 5, 5, 2};
    duet_sampler_params ps[3] = {{.temp = 0, .seed = 17},
                                 {.temp = 0, .top_k = 2, .top_p = 0.5f, .min_p = 0.5f, .seed = 18},
                                 {.temp = -1, .seed = 19}};
    for (int k = 0; k < 3; k++) {
        duet_sampler *s = NULL;
        REQUIRE(duet_sampler_new(&ps[k], &s, NULL) == DUET_OK);
        for (int r = 0; r < 100; r++) {
            CHECK_EQ_INT(duet_sampler_sample(s, l, 5), 3);
            CHECK_EQ_INT(duet_sampler_sample(s, tie, 4), 1);
        }
        duet_sampler_free(s);
    }
}

/* The documented chain, llama.cpp's default order: top-k, then top-p and min-p on the
 * temperature-1 probabilities renormalised over what is left, then temperature on the kept
 * tokens only. */
TEST(sampler_order_truncate_then_temperature) {
    float l[5];
    weights_logits(l);
    /* top-k 3 then top-p .8: within the top 3 the probabilities are 8/17 = .47, 6/17, 3/17;
     * the cumulative 14/17 = .82 reaches .8 at the 2nd: ids 3 and 1 stay (8/14, 6/14). Top-p
     * on the unrenormalised .40, .70, .85 would have kept id 4 too. */
    CHECK_FREQS("top-k 3 + top-p .8",
                ((duet_sampler_params){.temp = 1, .top_k = 3, .top_p = 0.8f, .seed = 20}), l, 5,
                0, 6 / 14.0, 0, 8 / 14.0, 0);
    /* top-p .6 at T 2: the cut on T-1 probabilities keeps ids 3 and 1 (as above); then T 2
     * gives p ~ sqrt(w): sqrt 8 = 2.8284, sqrt 6 = 2.4495, sum 5.2779 -> .53590, .46410.
     * Flattening first (sqrt w / 9.4243: .300, .260, then .184 -> .744) would keep id 4. */
    double a = sqrt(8.0) / (sqrt(8.0) + sqrt(6.0));
    CHECK_FREQS("top-p .6 at T 2", ((duet_sampler_params){.temp = 2, .top_p = 0.6f, .seed = 21}),
                l, 5, 0, 1 - a, 0, a, 0);
    /* min-p .3 at T .5: the cut on T-1 probabilities keeps ids 3, 1, 4 (w >= 2.4); then
     * p ~ w^2 = 64, 36, 9 over 109. Sharpening first (w^2 / 64 >= .3 needs w >= 4.4) would
     * drop id 4. */
    CHECK_FREQS("min-p .3 at T .5", ((duet_sampler_params){.temp = 0.5f, .min_p = 0.3f, .seed = 22}),
                l, 5, 0, 36 / 109.0, 0, 64 / 109.0, 9 / 109.0);
    /* all three: top-k 4 (ids 3, 1, 4, 2: 8/19, 6/19, 3/19, 2/19), top-p .9 (cumulative
     * 14/19 = .737, 17/19 = .895, 19/19: all 4 stay), min-p .3 of 8/19 (w >= 2.4: drops id
     * 2), T .5: 64, 36, 9 over 109 */
    CHECK_FREQS("top-k 4 + top-p .9 + min-p .3 at T .5",
                ((duet_sampler_params){.temp = 0.5f, .top_k = 4, .top_p = 0.9f, .min_p = 0.3f,
                                       .seed = 23}),
                l, 5, 0, 36 / 109.0, 0, 64 / 109.0, 9 / 109.0);
}

/* Reseeding restarts the stream: after any number of draws, reseed(s) then draws equal the
 * draws of a fresh sampler made with seed s; without the reseed they differ (so the check
 * can fail). */
TEST(sampler_reseed_restarts_the_stream) {
    float l[5];
    weights_logits(l);
    duet_sampler_params p = {.temp = 1.0f, .seed = 5};
    duet_sampler *fresh = NULL, *used = NULL;
    REQUIRE(!duet_sampler_new(&p, &fresh, NULL));
    p.seed = 77;
    REQUIRE(!duet_sampler_new(&p, &used, NULL));
    int32_t want[64], cont[64];
    for (int r = 0; r < 64; r++) want[r] = duet_sampler_sample(fresh, l, 5);
    for (int r = 0; r < 37; r++) duet_sampler_sample(used, l, 5);
    for (int r = 0; r < 64; r++) cont[r] = duet_sampler_sample(used, l, 5);
    CHECKF(memcmp(want, cont, sizeof want), "seeds 5 and 77 drew the same 64 tokens");
    duet_sampler_reseed(used, 5);
    for (int r = 0; r < 64; r++) CHECK_EQ_INT(duet_sampler_sample(used, l, 5), want[r]);
    duet_sampler_free(fresh);
    duet_sampler_free(used);
}
