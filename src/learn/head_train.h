/*
 * head_train.h: learning Co-LLM's switch on a frozen base from two score files.
 *
 * Internal part: the parameter layout, the loss and its gradient (tested by finite
 * differences) and the pair check; the objectives and the public API are in duet.h
 * (learning the switch: head training).
 */
#ifndef DUET_TRAIN_HEAD_TRAIN_H
#define DUET_TRAIN_HEAD_TRAIN_H

#include <stdint.h>

#include "duet.h"
#include "learn/scores.h"

#define DUET_HT_GAIN_CLIP 8.0

/* Where each input's weight sits in the parameter vector theta. */
typedef struct duet_head_train_layout {
    int features, n_embd;
    int n_param;
    int i_u;                   /* first of n_embd hidden weights, -1 without hidden */
    int i_ent, i_max, i_bias;  /* -1 when absent (a bias exists iff a non-hidden feature does) */
} duet_head_train_layout;

void duet_head_train_layout_init(duet_head_train_layout *L, int features, int n_embd);

/* A batch of tokens as the head and the loss see them. */
typedef struct duet_head_train_batch {
    int n;
    const float *hidden;            /* [n][n_embd], when the layout has u */
    const float *entropy, *maxlogp; /* [n], when the layout has them */
    const float *lpb, *lpe;         /* [n] (nll) */
    const float *label;             /* [n] pseudo-labels 0/1 (weak) */
} duet_head_train_batch;

/* Mean loss over the batch at theta [n_param]; grad (may be NULL) receives d loss / d theta.
 * All arithmetic in double (the finite-difference tests rely on it). */
double duet_head_train_loss_grad(const duet_head_train_layout *L, const duet_head_train_batch *b,
                                 duet_head_objective obj, double defer_cost, double pos_weight,
                                 const double *theta, double *grad);

/* The weak-supervision pseudo-label of one token from its base and expert records: 1 when
 * the gold token is the expert's top choice and not the base's (a tie within 1e-5 relative
 * probability counts as top), else 0. */
float duet_head_train_weak_label(const duet_scores_tok *b, const duet_scores_tok *e);

/* Refuse two files that do not describe the same tokens: DUET_ERR_ARG naming the first
 * mismatch (vocabulary, sequence count, layout of a sequence, gold id of a token). */
int duet_head_train_check_pair(const duet_scores *base, const duet_scores *expert,
                               duet_error *err);

#endif
