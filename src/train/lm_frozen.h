/*
 * lm_frozen.h: the input gradient through a frozen base matrix, in float, for LoRA training:
 * dx[t] += sum_o dy[t][o] W[o] with W in any type the engine reads (R8 included).
 */
#ifndef DUET_TRAIN_LM_FROZEN_H
#define DUET_TRAIN_LM_FROZEN_H

#include <stddef.h>

#include "base/threadpool.h"
#include "engine/model.h"

/* Floats of scratch each thread needs (the caller allocates n_threads times this). */
size_t lm_frozen_dx_scratch(void);

/* dx[n][W->n_in] += dy[n][W->n_out] W. Every dx element is summed over o ascending by one
 * thread, so the result is the same for any thread count. scratch: [threads][above]. */
void lm_frozen_dx(threadpool *tp, float *dx, const float *dy, const mtensor *W, int n,
                   float *scratch);

#endif
