/*
 * slots.h: the server's decoding slots and everything that takes a lock: the slots with their
 * wait queue, the compute lock (one forward pass at a time on the shared thread pool), each
 * slot's remote-expert backend (which lets go of the compute lock around its HTTP call), the
 * request numbers and the metrics counters with their Prometheus text. The types are opaque:
 * the rest of the server goes through these functions. Not public.
 */
#ifndef DUET_SERVE_SLOTS_H
#define DUET_SERVE_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#include "base/common.h"

typedef struct srv_slots srv_slots; /* the pool: slots, queue, locks, counters */
typedef struct srv_slot srv_slot;   /* one slot: a collab decoder, a plain session, an expert */

typedef struct srv_slots_params {
    int n_slots;                /* > 0 */
    int queue_timeout_s;        /* longest wait for a free slot */
    duet_model *base, *expert;  /* the models every slot's decoder uses */
    const duet_head *head;
    const duet_expert_remote_params *remote; /* one connection per slot, or NULL */
    duet_collab_params defaults; /* slot 0's first decoder: it decides the context size */
} srv_slots_params;

/* Make the pool: each slot's remote expert (checked once), slot 0's decoder with the defaults
 * (checks the configuration; *n_ctx gets its context size) and a session of that size per
 * slot. The models must outlive it. */
int srv_slots_new(const srv_slots_params *p, srv_slots **out, int *n_ctx, duet_error *err);
void srv_slots_free(srv_slots *pool);

/* Wait for a free slot (NULL after queue_timeout_s), preferring the one whose decoder
 * (collab = 1) or plain session (0) already holds the longest prefix of ids / give it back. */
srv_slot *srv_slot_acquire(srv_slots *pool, const int32_t *ids, int n, int collab);
void srv_slot_release(srv_slots *pool, srv_slot *sl);
/* Tokens at the start of the slot's timeline (decoder or session) that equal ids[0..n): what
 * its KV cache can reuse; *have gets the timeline's length. */
int srv_slot_prefix(const srv_slot *sl, const int32_t *ids, int n, int collab, int *have);
/* The slot's index in the pool (llama.cpp's id_slot). */
int srv_slot_index(const srv_slot *sl);

/* The slot's decoder made to fit cp (its expert_backend is the slot's own, whatever cp says):
 * the one it has when the settings match and nothing random carries over between requests,
 * else a new one. *co is NULL after an error. The slot must be held. */
int srv_slot_decoder(srv_slot *sl, const duet_collab_params *cp, duet_collab **co, duet_error *err);
/* The slot's plain session (next-token probabilities). The slot must be held. */
duet_session *srv_slot_session(srv_slot *sl);

/* Around every forward pass (decoder start and step, session evaluation). */
void srv_compute_lock(srv_slots *pool);
void srv_compute_unlock(srv_slots *pool);

/* Batched decoding: an answer joins after its prompt is in (srv_gen_join) and leaves when it
 * ends (srv_gen_leave); while running, its thread asks for each token with srv_gen_step,
 * which steps it together with the other running answers that ask at about the same time
 * (duet_gen_step_batch; the same token as duet_gen_step alone). The slot must be held. */
int srv_gen_step(srv_slots *pool, srv_slot *sl, duet_gen *g, duet_collab_token *tok,
                 duet_error *err);
void srv_gen_join(srv_slots *pool);
void srv_gen_leave(srv_slots *pool);
/* Evaluate the prompt ids[0..n) in co's base chunk tokens at a time (duet_collab_prefill), at
 * most one chunk between two batched steps while answers run. 0 when done, else an error. */
int srv_gen_prefill(srv_slots *pool, duet_collab *co, const int32_t *ids, int n, int chunk,
                    duet_error *err);

/* Request numbers, 0, 1, 2, ... for the answers' ids. */
long srv_next_request_id(srv_slots *pool);
/* Count one finished generation / one answered request (its HTTP status and seconds taken). */
void srv_metrics_generation(srv_slots *pool, int n_prompt, const duet_collab_stats *st);
void srv_metrics_request(srv_slots *pool, int status, double seconds);
/* The metrics in Prometheus' text format: malloc'd, *n bytes; NULL when out of memory. */
char *srv_metrics_text(srv_slots *pool, size_t *n);

#endif
