/* test_objective.c: the deferral head's training objectives pinned by hand-computed numbers.
 * The finite-difference tests only tie each gradient to its own loss, and at s = 0 the
 * marginal likelihood is symmetric in base and expert; here three tokens with s != 0 and
 * different base and expert log-probs fix which model sig(s) belongs to, the pseudo-label
 * weighting and the sign of the deferral cost.
 *
 * The tokens (log-probs chosen to be exact in float, so the numbers below hold to ~1e-16):
 *   token  s      lpb     lpe     Zhat
 *   1      1.0   -0.75   -2.5     1
 *   2     -0.5   -3.0    -0.25    0
 *   3      2.0   -1.5    -0.5     1
 * Constants: sig(1) = 0.73105857863000488, sig(-0.5) = 0.37754066879814544,
 * sig(2) = 0.88079707797788244; e^-0.75 = 0.47236655274101471, e^-2.5 = 0.082084998623898795,
 * e^-3 = 0.049787068367863943, e^-0.25 = 0.77880078307140487, e^-1.5 = 0.22313016014842983,
 * e^-0.5 = 0.60653065971263342.
 * The head is two hidden weights theta = (1, 0) on h = (s, 1), so s = u . h is the table's s,
 * d loss / d theta_0 = mean(dL/ds * s) and d loss / d theta_1 = mean(dL/ds). */
#include <math.h>
#include <string.h>

#include "learn/head_train.h"
#include "test.h"

/* 1e-9 relative: far below any change of role, weight or sign, far above rounding. */
#define CHECK_REL(got, want) CHECK_NEAR(got, want, 1e-9 * fabs(want))

static const float k_h[3 * 2] = {1.0f, 1.0f, -0.5f, 1.0f, 2.0f, 1.0f};
static const float k_lpb[3] = {-0.75f, -3.0f, -1.5f};
static const float k_lpe[3] = {-2.5f, -0.25f, -0.5f};
static const float k_z[3] = {1.0f, 0.0f, 1.0f};
static const double k_s[3] = {1.0, -0.5, 2.0};

/* Loss and gradient of token i alone (grad[1] is then dL/ds) and of the three together. */
static void head_eval(duet_head_objective obj, double cost, double pw, double loss[3], double dlds[3],
                      double *mean, double grad[2]) {
    duet_head_train_layout L;
    duet_head_train_layout_init(&L, DUET_HEAD_FEAT_HIDDEN, 2);
    const double th[2] = {1.0, 0.0};
    double g[2];
    for (int i = 0; i < 3; i++) {
        duet_head_train_batch b = {1, k_h + 2 * i, NULL, NULL, k_lpb + i, k_lpe + i, k_z + i};
        loss[i] = duet_head_train_loss_grad(&L, &b, obj, cost, pw, th, g);
        dlds[i] = g[1];
        CHECK_REL(g[0], g[1] * k_s[i]); /* the chain rule through h = (s, 1) */
    }
    duet_head_train_batch b = {3, k_h, NULL, NULL, k_lpb, k_lpe, k_z};
    *mean = duet_head_train_loss_grad(&L, &b, obj, cost, pw, th, grad);
}


/* head_eval against want = {loss[0..2], dL/ds[0..2], mean loss, d/d theta_1, d/d theta_0}. */
static void check_head(duet_head_objective obj, double cost, double pw, const double want[9]) {
    double loss[3], dlds[3], mean, grad[2];
    head_eval(obj, cost, pw, loss, dlds, &mean, grad);
    const double got[9] = {loss[0], loss[1], loss[2], dlds[0], dlds[1], dlds[2], mean, grad[1], grad[0]};
    for (int i = 0; i < 9; i++) CHECKF(fabs(got[i] - want[i]) <= 1e-9 * fabs(want[i]),
                                       "%s (cost %g, pw %g): value %d is %.17g, by hand %.17g",
                                       obj == DUET_HT_WEAK ? "weak" : obj == DUET_HT_GAIN ? "gain" : "nll", cost, pw, i,
                                       got[i], want[i]);
}

/* The Co-LLM marginal likelihood: loss = -log(sig(-s) p_b + sig(s) p_e), the base keeps the
 * token with probability sig(-s), the expert takes it with sig(s).
 *   token 1: A = sig(-1) e^-0.75 = 0.26894142136999512 * 0.47236655274101471 = 0.12703893210181326
 *            C = sig(1) e^-2.5   = 0.73105857863000488 * 0.082084998623898795 = 0.060008942420833360
 *            loss = -log(0.18704787452264662) = 1.6763906814033229
 *            q = C / (A + C) = 0.32082130082460703 (posterior that the expert wrote it)
 *            dL/ds = sig(s) - q = 0.73105857863000488 - 0.32082130082460703 = 0.41023727780539785
 *            (with the roles swapped, -log(sig(1) e^-0.75 + sig(-1) e^-2.5) = 1.0012940985150242)
 *   token 2: A = 0.62245933120185456 * 0.049787068367863943 = 0.030990425278761599
 *            C = 0.37754066879814544 * 0.77880078307140487 = 0.29402896850129758
 *            loss = -log(0.32501939378005917) = 1.1238704252633595, q = 0.90465053510089051
 *            dL/ds = 0.37754066879814544 - 0.90465053510089051 = -0.52710986630274507
 *   token 3: A = 0.11920292202211756 * 0.22313016014842983 = 0.026597767080955883
 *            C = 0.88079707797788244 * 0.60653065971263342 = 0.53423043277888486
 *            loss = -log(0.56082819985984075) = 0.57834065946923044, q = 0.95257412682243322
 *            dL/ds = 0.88079707797788244 - 0.95257412682243322 = -0.071777048844550775
 *   mean loss = (1.6763906814033229 + 1.1238704252633595 + 0.57834065946923044) / 3
 *             = 1.1262005887119709
 *   d/d theta_1 = (0.41023727780539785 - 0.52710986630274507 - 0.071777048844550775) / 3
 *               = -0.062883212447299331
 *   d/d theta_0 = (0.41023727780539785 * 1 + -0.52710986630274507 * -0.5
 *                  + -0.071777048844550775 * 2) / 3 = 0.17674603775588961 */
TEST(objective_head_nll_hand_computed) {
    static const double want[9] = {1.6763906814033229, 1.1238704252633595, 0.57834065946923044,
                                  0.41023727780539785, -0.52710986630274507, -0.071777048844550775,
                                  1.1262005887119709, -0.062883212447299331, 0.17674603775588961};
    check_head(DUET_HT_NLL, 0, 8, want);
}

/* The cost-aware marginal likelihood adds L * sig(s) (deferring costs L nats per unit of
 * deferral probability) and so L * sig(s) sig(-s) to dL/ds; L = 0.3:
 *   token 1: 1.6763906814033229 + 0.3 * 0.73105857863000488 = 1.8957082549923244
 *            dL/ds = 0.41023727780539785 + 0.3 * 0.73105857863000488 * 0.26894142136999512
 *                  = 0.46922085777784241
 *   token 2: 1.1238704252633595 + 0.3 * 0.37754066879814544 = 1.2371326259028031
 *            dL/ds = -0.52710986630274507 + 0.3 * 0.37754066879814544 * 0.62245933120185456
 *                  = -0.45660875264226672
 *   token 3: 0.57834065946923044 + 0.3 * 0.88079707797788244 = 0.84257978286259517
 *            dL/ds = -0.071777048844550775 + 0.3 * 0.88079707797788244 * 0.11920292202211756
 *                  = -0.040278973223498820
 *   mean = 1.3251402212525742; d/d theta_1 = -0.0092222893626410452;
 *   d/d theta_0 = (0.46922085777784241 + 0.5 * 0.45660875264226672 - 2 * 0.040278973223498820) / 3
 *               = 0.20565576255065938
 * (a cost of the wrong sign would give 1.4570731078143214 for token 1) */
TEST(objective_head_cost_aware_hand_computed) {
    static const double want[9] = {1.8957082549923244, 1.2371326259028031, 0.84257978286259517,
                                  0.46922085777784241, -0.45660875264226672, -0.040278973223498820,
                                  1.3251402212525742, -0.0092222893626410452, 0.20565576255065938};
    check_head(DUET_HT_NLL, 0.3, 8, want);
}

/* Weak supervision: -(pw Zhat log sig(s) + (1 - Zhat) log sig(-s)), pw = 8 (the trainer's
 * default, passed explicitly here):
 *   token 1 (Zhat 1): 8 * log(1 + e^-1) = 8 * 0.31326168751822283 = 2.5060935001457827
 *            dL/ds = 8 (sig(1) - 1) = -8 * 0.26894142136999512 = -2.1515313709599610
 *   token 2 (Zhat 0): log(1 + e^-0.5) = 0.47407698418010668, dL/ds = sig(-0.5) = 0.37754066879814544
 *   token 3 (Zhat 1): 8 * log(1 + e^-2) = 8 * 0.12692801104297250 = 1.0154240883437800
 *            dL/ds = -8 * 0.11920292202211756 = -0.95362337617694045
 *   mean = 1.3318648575565564; d/d theta_1 = -0.90920469277958533;
 *   d/d theta_0 = (-2.1515313709599610 - 0.5 * 0.37754066879814544 - 2 * 0.95362337617694045) / 3
 *               = -1.4158494859043049
 * The base and expert log-probs play no part. */
TEST(objective_head_weak_hand_computed) {
    static const double want[9] = {2.5060935001457827, 0.47407698418010668, 1.0154240883437800,
                                  -2.1515313709599610, 0.37754066879814544, -0.95362337617694045,
                                  1.3318648575565564, -0.90920469277958533, -1.4158494859043049};
    check_head(DUET_HT_WEAK, 0, 8, want);
    /* the weight scales the positives only: pw = 1 gives log(1 + e^-1) = 0.31326168751822283
     * for token 1 and leaves token 2 as it was */
    double loss[3], dlds[3], mean, grad[2];
    head_eval(DUET_HT_WEAK, 0, 1, loss, dlds, &mean, grad);
    CHECK_REL(loss[0], 0.31326168751822283);
    CHECK_REL(loss[1], 0.47407698418010668);
}

/* The gain regression, 0.5 (s - clip(lpe - lpb, +-8))^2, with one clipped token: s = 1,
 * lpb = -12, lpe = -1: the gain 11 clips to 8, loss 0.5 * 49 = 24.5, dL/ds = 1 - 8 = -7;
 * token 2 above unclipped: gain 2.75, 0.5 * (-0.5 - 2.75)^2 = 5.28125, dL/ds = -3.25. */
TEST(objective_head_gain_hand_computed) {
    duet_head_train_layout L;
    duet_head_train_layout_init(&L, DUET_HEAD_FEAT_HIDDEN, 2);
    const double th[2] = {1.0, 0.0};
    const float lpb[2] = {-12.0f, -3.0f}, lpe[2] = {-1.0f, -0.25f}, h[4] = {1, 1, -0.5f, 1};
    double g[2];
    duet_head_train_batch b1 = {1, h, NULL, NULL, lpb, lpe, NULL}, b2 = {1, h + 2, NULL, NULL, lpb + 1, lpe + 1, NULL};
    CHECK_REL(duet_head_train_loss_grad(&L, &b1, DUET_HT_GAIN, 0, 8, th, g), 24.5);
    CHECK_REL(g[1], -7.0);
    CHECK_REL(duet_head_train_loss_grad(&L, &b2, DUET_HT_GAIN, 0, 8, th, g), 5.28125);
    CHECK_REL(g[1], -3.25);
}
