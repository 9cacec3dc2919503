/*
 * api.h: the server's endpoint handlers, called by server.c's routing: api_generate.c
 * (/v1/completions, /v1/chat/completions, /completion) and api_text.c (/tokenize,
 * /detokenize, /v1/models, /props, and the text helpers both use). body is the parsed
 * request, a JSON object. Handlers read the server through its srv_config (server.h), which
 * this header only names so that server.c can include it. Not public.
 */
#ifndef DUET_SERVE_API_H
#define DUET_SERVE_API_H

#include <jansson.h>
#include <microhttpd.h>

#include "base/common.h"

typedef struct srv_config srv_config;
typedef struct conn_ctx conn_ctx;

/* ---- api_generate.c ---------------------------------------------------------------------- */
/* /v1/completions (chat 0) and /v1/chat/completions (chat 1), streamed or whole. */
enum MHD_Result api_completions(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                                json_t *body, int chat);
/* /completion: next-token (and prompt) log-probabilities, llama.cpp's protocol. */
enum MHD_Result api_next_token(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                               json_t *body);

/* ---- api_text.c -------------------------------------------------------------------------- */
enum MHD_Result api_tokenize(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                             json_t *body);
enum MHD_Result api_detokenize(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                               json_t *body);
enum MHD_Result api_models(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx);
enum MHD_Result api_props(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx);

/* Append text to a buffer as valid UTF-8 (invalid bytes become U+FFFD). 0 or DUET_ERR_NOMEM. */
int sb_add(duet_buf *b, const char *s, size_t n);
/* Append the piece of token id (after prev) with sb_add, however long it is. 0 or
 * DUET_ERR_NOMEM. */
int api_add_piece(const duet_model *m, int32_t prev, int32_t id, duet_buf *out);
/* The same bytes exactly as the vocabulary gives them (possibly not UTF-8), appended to out. */
int api_raw_piece(const duet_model *m, int32_t prev, int32_t id, duet_buf *out);
/* Tokenize a "prompt"-style value (string, or array of ids checked against the vocabulary);
 * returns the count or -1 after filling msg. *ids is malloc'd. */
int api_prompt_ids(const srv_config *cfg, json_t *prompt, int add_bos, int parse_special,
                   int32_t **ids, char *msg, size_t cap);
/* Chat messages -> prompt ids in the server's chat format: the template's markers are control
 * tokens, the messages' text never is (duet_tokenize_masked). The count (*ids malloc'd), or
 * -1 after filling msg. */
int api_chat_ids(const srv_config *cfg, json_t *msgs, int32_t **ids, char *msg, size_t cap);

#endif
