/*
 * api_text.c: the text side of duet serve's API: prompts (a string or token ids) and chat
 * messages turned into token ids, token ids into text, and the endpoints that do only that
 * or describe the model: /tokenize, /detokenize, /v1/models and /props. Text leaves only as
 * valid UTF-8 (bytes that never form a character become U+FFFD), and a token's piece is
 * rendered whole however long it is.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/utf8.h"
#include "duet.h"
#include "serve/api.h"
#include "engine/model.h"
#include "serve/server.h"

int sb_add(duet_buf *b, const char *s, size_t n) { return duet_utf8_append(b, s, n, 0, NULL); }

int api_raw_piece(const duet_model *m, int32_t prev, int32_t id, duet_buf *out) {
    return model_piece_append(m, prev, id, out);
}

int api_add_piece(const duet_model *m, int32_t prev, int32_t id, duet_buf *out) {
    duet_buf raw = {0};
    int rc = api_raw_piece(m, prev, id, &raw);
    if (!rc) rc = sb_add(out, raw.p ? raw.p : "", raw.n);
    free(raw.p);
    return rc;
}

/* A token's bytes as llama.cpp renders one token alone: SentencePiece's leading space kept
 * and a control token as its text ("<s>"). Raw bytes (possibly not UTF-8) appended to out. */
static int llama_piece(const duet_model *m, int32_t id, duet_buf *out) {
    size_t before = out->n;
    int rc = model_piece_append(m, -1, id, out);
    const char *text = duet_token_type(m, id) == 3 ? duet_token_text(m, id) : NULL;
    if (!rc && out->n == before && text) /* control: duet renders none */
        rc = duet_buf_add(out, text, strlen(text));
    return rc;
}

/* ---- chat rendering ---------------------------------------------------------------------- */
/* messages -> prompt text with the server's chat format (duet_model_chat_render). OpenAI's
 * "developer" role is the system role; content is a string or [{"type": "text", "text"}]
 * parts (joined). Returns 0, or -1 after filling msg. */
int api_chat_ids(const srv_config *cfg, json_t *msgs, int32_t **ids, char *msg, size_t cap) {
    *ids = NULL;
    if (cfg->chat_err[0]) return snprintf(msg, cap, "chat is unavailable: %s", cfg->chat_err), -1;
    if (!json_is_array(msgs) || !json_array_size(msgs))
        return snprintf(msg, cap, "'messages' must be a non-empty array"), -1;
    size_t n = json_array_size(msgs), i;
    duet_chat_message *cm = calloc(n, sizeof *cm);
    duet_buf *parts = calloc(n, sizeof *parts);
    int rc = cm && parts ? 0 : (snprintf(msg, cap, "out of memory"), -1);
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (rc) break;
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role && !strcmp(role, "developer")) role = "system";
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))) {
            char shown[64];
            duet_printable(shown, sizeof shown, role ? role : "(missing)", role ? strlen(role) : 9);
            rc = -1;
            snprintf(msg, cap, "messages[%zu].role '%s' is not one of system, developer, user, assistant",
                     i, shown);
            break;
        }
        json_t *content = json_object_get(m, "content");
        duet_buf_add(&parts[i], "", 0);
        if (json_is_string(content)) {
            duet_buf_add(&parts[i], json_string_value(content), json_string_length(content));
        } else if (json_is_array(content)) {
            size_t k;
            json_t *part;
            json_array_foreach(content, k, part) {
                json_t *t = json_object_get(part, "text");
                const char *ty = json_string_value(json_object_get(part, "type"));
                if (!ty || strcmp(ty, "text") || !json_is_string(t)) {
                    rc = -1;
                    snprintf(msg, cap, "messages[%zu].content[%zu] must be {\"type\": \"text\", "
                             "\"text\": string}", i, k);
                    break;
                }
                duet_buf_add(&parts[i], json_string_value(t), json_string_length(t));
            }
        } else {
            rc = -1;
            snprintf(msg, cap, "messages[%zu].content must be a string or an array of text parts%s",
                     i, json_is_null(content) || !content ? " (it is null or missing)" : "");
        }
        cm[i].role = role;
        cm[i].content = parts[i].p;
    }
    duet_error err = {0};
    char *text = NULL;
    unsigned char *plain = NULL;
    size_t len = 0;
    if (!rc && duet_model_chat_prompt(cfg->p.base, cfg->chat_override, cm, (int)n, 1, &text,
                                      &plain, &len, &err))
        rc = -1, snprintf(msg, cap, "%s", err.msg);
    int k = rc ? -1 : duet_tokenize_masked(cfg->p.base, text, len, 1, plain, NULL, 0, &err);
    if (!rc && (k < 0 || !(*ids = malloc((size_t)(k + 1) * sizeof **ids))))
        rc = -1, snprintf(msg, cap, "%s", k < 0 ? err.msg : "out of memory");
    if (!rc) k = duet_tokenize_masked(cfg->p.base, text, len, 1, plain, *ids, k, &err);
    for (i = 0; parts && i < n; i++) free(parts[i].p);
    free(parts);
    free(cm);
    free(text);
    free(plain);
    if (rc) {
        free(*ids);
        *ids = NULL;
    }
    return rc ? -1 : k;
}

/* ---- prompts and the small endpoints ----------------------------------------------------- */
int api_prompt_ids(const srv_config *cfg, json_t *prompt, int add_bos, int parse_special,
                   int32_t **ids, char *msg, size_t cap) {
    *ids = NULL;
    if (json_is_array(prompt) && json_array_size(prompt) == 1 &&
        json_is_string(json_array_get(prompt, 0)))
        prompt = json_array_get(prompt, 0); /* OpenAI allows ["text"] */
    if (json_is_string(prompt)) {
        const char *t = json_string_value(prompt);
        size_t len = json_string_length(prompt);
        int n = duet_tokenize(cfg->p.base, t, len, add_bos, parse_special, NULL, 0, NULL);
        if (n < 0 || !(*ids = malloc((size_t)(n + 1) * sizeof **ids))) {
            snprintf(msg, cap, "cannot tokenize the prompt");
            return -1;
        }
        return duet_tokenize(cfg->p.base, t, len, add_bos, parse_special, *ids, n, NULL);
    }
    if (!json_is_array(prompt)) {
        snprintf(msg, cap, "'prompt' must be a string or an array of token ids");
        return -1;
    }
    size_t n = json_array_size(prompt);
    if (!(*ids = malloc((n + 1) * sizeof **ids))) {
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(prompt, i);
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (!json_is_integer(v) || id < 0 || id >= cfg->n_vocab) {
            snprintf(msg, cap, "'prompt'[%zu] must be a token id in [0, %d)", i, cfg->n_vocab);
            free(*ids);
            *ids = NULL;
            return -1;
        }
        (*ids)[i] = (int32_t)id;
    }
    return (int)n;
}

/* llama.cpp's /tokenize: {content, add_special (default false), with_pieces}; pieces are
 * {id, piece}, the piece a string when it is valid UTF-8, else its byte values. parse_special
 * (default false): text spelling a control token becomes that token. */
enum MHD_Result api_tokenize(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                             json_t *b) {
    json_t *content = json_object_get(b, "content");
    if (!json_is_string(content)) return srv_send_error(c, cx, 400, "'content' must be a string");
    static const char *flags[] = {"add_special", "with_pieces", "parse_special"};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(b, flags[i]);
        if (v && !json_is_null(v) && !json_is_boolean(v))
            return srv_send_error(c, cx, 400, "'%s' must be a boolean", flags[i]);
    }
    int32_t *ids = NULL;
    char msg[200];
    int n = api_prompt_ids(cfg, content, json_is_true(json_object_get(b, "add_special")),
                           json_is_true(json_object_get(b, "parse_special")), &ids, msg, sizeof msg);
    if (n < 0) return srv_send_error(c, cx, 400, "%s", msg);
    int pieces = json_is_true(json_object_get(b, "with_pieces"));
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        if (!pieces) { json_array_append_new(arr, json_integer(ids[i])); continue; }
        duet_buf raw = {0};
        llama_piece(cfg->p.base, ids[i], &raw);
        json_t *pj;
        if (duet_utf8_check(raw.p, raw.n) == raw.n) {
            pj = json_stringn(raw.p ? raw.p : "", raw.n);
        } else {
            pj = json_array();
            for (size_t k = 0; k < raw.n; k++) json_array_append_new(pj, json_integer((unsigned char)raw.p[k]));
        }
        free(raw.p);
        json_array_append_new(arr, json_pack("{s:i, s:o}", "id", ids[i], "piece", pj));
    }
    free(ids);
    return srv_send_json(c, cx, 200, json_pack("{s:o}", "tokens", arr));
}

/* llama.cpp's /detokenize: the tokens' pieces as each renders alone, concatenated (a leading
 * space and control-token text kept), as valid UTF-8. */
enum MHD_Result api_detokenize(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx,
                               json_t *b) {
    json_t *toks = json_object_get(b, "tokens");
    if (!json_is_array(toks)) return srv_send_error(c, cx, 400, "'tokens' must be an array of token ids");
    int32_t *ids = NULL;
    char msg[200];
    int n = api_prompt_ids(cfg, toks, 0, 0, &ids, msg, sizeof msg);
    if (n < 0) return srv_send_error(c, cx, 400, "%s", msg[0] == '\'' ? msg + 8 : msg);
    duet_buf raw = {0}, text = {0};
    for (int i = 0; i < n; i++) llama_piece(cfg->p.base, ids[i], &raw);
    free(ids);
    sb_add(&text, raw.p ? raw.p : "", raw.n);
    free(raw.p);
    json_t *js = json_pack("{s:s%}", "content", text.p ? text.p : "", text.n);
    free(text.p);
    return srv_send_json(c, cx, 200, js);
}

enum MHD_Result api_models(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx) {
    const duet_hparams *hp = duet_model_hparams(cfg->p.base);
    json_t *m = json_pack("{s:s, s:s, s:i, s:s, s:{s:i, s:i, s:s, s:s}}", "id", cfg->model_name,
                          "object", "model", "created", 0, "owned_by", "duet", "meta", "n_ctx",
                          cfg->n_ctx, "n_vocab", hp->n_vocab, "expert",
                          cfg->p.expert ? duet_model_hparams(cfg->p.expert)->name
                          : cfg->p.remote ? cfg->p.remote->url : "",
                          "policy", duet_policy_name(cfg->p.defaults.policy));
    return srv_send_json(c, cx, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", m));
}

/* llama.cpp's /props (model_path: the served model's file as it was given), plus
 * duet_vocab_hash (what a remote-expert client compares). */
enum MHD_Result api_props(const srv_config *cfg, struct MHD_Connection *c, conn_ctx *cx) {
    char h[32];
    snprintf(h, sizeof h, "%016llx", (unsigned long long)duet_model_vocab_hash(cfg->p.base));
    const duet_model *m = cfg->p.base;
    int32_t bos = duet_token_bos(m), eos = duet_token_eos(m);
    const char *bt = bos >= 0 ? duet_token_text(m, bos) : NULL, *et = eos >= 0 ? duet_token_text(m, eos) : NULL;
    const char *tmpl = NULL;
    size_t tl = 0;
    duet_buf t = {0};
    if (!duet_model_chat_template(m, &tmpl, &tl, NULL) && tmpl) sb_add(&t, tmpl, tl);
    json_t *js = json_pack("{s:s, s:s, s:i, s:i, s:{s:i, s:i, s:{s:i, s:f}}, s:s, s:s, s:s, s:s}",
                           "model", cfg->model_name, "duet_vocab_hash", h, "n_vocab", cfg->n_vocab,
                           "total_slots", cfg->p.n_slots, "default_generation_settings", "n_ctx",
                           cfg->n_ctx, "id", 0, "params", "n_predict", -1, "temperature",
                           (double)cfg->p.defaults.sampling.temp, "chat_template", t.p ? t.p : "",
                           "bos_token", bt ? bt : "", "eos_token", et ? et : "", "build_info",
                           "duet " DUET_VERSION);
    free(t.p);
    t = (duet_buf){0};
    sb_add(&t, duet_model_path(m), strlen(duet_model_path(m))); /* a file name need not be UTF-8 */
    json_object_set_new(js, "model_path", json_string(t.p ? t.p : ""));
    free(t.p);
    return srv_send_json(c, cx, 200, js);
}
