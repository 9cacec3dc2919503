/*
 * lora.h: low-rank adapters attached to a model, unmerged (lora.c): what the forward pass
 * needs to add s B (A x) after a matrix product. Not public (duet.h has the loading API).
 */
#ifndef DUET_LORA_H
#define DUET_LORA_H

#include "engine/model.h"

/* Bytes of matmul scratch the attached adapters need for n_rows rows (0: none attached). */
size_t lora_scratch_bytes(const duet_model *m, int n_rows);
/* y[n][n_out] += s B (A x[n][n_in]) for every adapter on matrix mi (model_matrix index);
 * t: [n][lora_rank_max] and u: [n][lora_out_max] floats of scratch, scratch as sized above.
 * Nothing when no adapter is attached there. */
void lora_apply(const duet_model *m, int mi, const float *x, int n, float *y, float *t, float *u,
                void *scratch);

#endif
