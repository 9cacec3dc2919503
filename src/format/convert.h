/* convert.h: helpers shared by the model-file writers (convert.c, make_model.c). */
#ifndef DUET_CONVERT_H
#define DUET_CONVERT_H

#include "format/gguf.h"

/* Write the general.* and ARCH.* hyperparameter keys every architecture has (llama's
 * defaults for eps, rope base and dimension: callers override what differs). */
void convert_set_hparams(gguf_writer *w, const char *arch, const char *name, int n_ctx,
                         int n_embd, int n_layer, int n_ff, int n_head, int n_head_kv,
                         int file_type);

#endif
