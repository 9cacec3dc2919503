/*
 * vocab_bridge.h: mapping token ids between two vocabularies by token text (internal).
 * Used where two models must describe the same token sequence: the collaborative decoder
 * (base ids -> expert ids) and scoring passes run with another model's tokenizer
 * (`duet score --tokenizer-of BASE`). Not part of the public API.
 */
#ifndef DUET_VOCAB_BRIDGE_H
#define DUET_VOCAB_BRIDGE_H

#include <stdint.h>

#include "duet.h"

/* *out = malloc'd map[n_vocab(from)]: map[b] = the id in `to` of the token whose text equals
 * `from`'s token b (the first such id when `to` repeats a text). Identity (and *bridged = 0)
 * when both vocabularies hash equal and have the same size; otherwise *bridged = 1.
 * Refuses with DUET_ERR_UNSUPPORTED naming the first `from` id and text with no match in
 * `to` (role names `to` in the message: "expert", "anti-expert", "scored"). On error *out is
 * NULL. */
int vocab_bridge_build(const duet_model *from, const duet_model *to, const char *role,
                       int32_t **out, int *bridged, duet_error *err);

#endif
