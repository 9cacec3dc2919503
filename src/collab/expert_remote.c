/*
 * expert_remote.c: an expert behind HTTP (libcurl): llama.cpp's /completion protocol (also
 * served by `duet serve`) and the OpenAI /v1/completions protocol (vLLM). Each call sends the
 * whole token list (the servers keep a prefix cache, so only the new suffix is evaluated) and
 * reads back the top-K next-token log-probabilities; the rest of the vocabulary is -inf.
 * See duet.h for the protocol details and the failure semantics.
 */
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/http_client.h"

#define REMOTE_MAX_CTX (1 << 24)          /* a context beyond 16M tokens is a malformed reply */

struct duet_expert_remote {
    duet_expert_backend be;
    const duet_model *base;
    int n_vocab, openai, top_k;
    char url[512], model[256], name[128];
    http_client http;  /* its last_status is 0 when the server did not answer */
    long calls;
};
/* A short printable rendering of a reply value for error messages ("missing" when absent),
 * so that a message says what the server sent, not only that it was wrong. */
static const char *show_json(const json_t *v, char *buf, size_t cap) {
    if (!v) return "missing";
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    duet_printable(buf, cap, s ? s : "?", s ? strlen(s) : 1);
    free(s);
    return buf;
}

/* Record one (id, logprob) pair; ids must lie in the base vocabulary, each at most once (out
 * starts all -inf, and a finite logprob <= 0 replaces it): a repeated id would leave which of
 * its log-probabilities counts to the order of the reply. */
static int put_logprob(duet_expert_remote *r, float *out, json_int_t id, json_t *lp, duet_error *err) {
    char shown[48];
    if (id < 0 || id >= r->n_vocab)
        return duet_fail(err, DUET_ERR_FORMAT, "expert %s: token id %lld is outside the base "
                         "vocabulary [0, %d)", r->url, (long long)id, r->n_vocab);
    if (!json_is_number(lp) || !(json_number_value(lp) <= 0) )
        return duet_fail(err, DUET_ERR_FORMAT, "expert %s: logprob of token %lld is not a "
                         "number <= 0: %s", r->url, (long long)id, show_json(lp, shown, sizeof shown));
    if (out[id] != -INFINITY)
        return duet_fail(err, DUET_ERR_FORMAT, "expert %s: token id %lld appears twice in "
                         "top_logprobs", r->url, (long long)id);
    out[id] = (float)json_number_value(lp);
    return DUET_OK;
}

static int parse_llama(duet_expert_remote *r, json_t *js, float *out, duet_error *err) {
    json_t *cp = json_object_get(js, "completion_probabilities");
    json_t *top = json_object_get(json_array_get(cp, 0), "top_logprobs");
    json_t *toks = json_object_get(js, "tokens");
    if (!json_array_size(cp) && json_array_size(toks) == 1 &&
        json_is_integer(json_array_get(toks, 0))) {
        /* llama-server leaves out the probabilities of a token that ends inside a UTF-8
         * character (a byte token) but still names the token it chose at temperature 0: its
         * argmax becomes a point mass, which greedy decoding follows exactly */
        json_t *zero = json_real(0);
        int rc = put_logprob(r, out, json_integer_value(json_array_get(toks, 0)), zero, err);
        json_decref(zero);
        return rc;
    }
    if (!json_is_array(top) || !json_array_size(top))
        return duet_fail(err, DUET_ERR_FORMAT, "expert %s: response has no "
                         "completion_probabilities[0].top_logprobs", r->url);
    size_t i;
    json_t *e;
    json_array_foreach(top, i, e) {
        char shown[48];
        if (!json_is_object(e))
            return duet_fail(err, DUET_ERR_FORMAT, "expert %s: top_logprobs[%zu] is not an {id, "
                             "logprob} object: %s", r->url, i, show_json(e, shown, sizeof shown));
        json_t *id = json_object_get(e, "id");
        if (!json_is_integer(id))
            return duet_fail(err, DUET_ERR_FORMAT, "expert %s: top_logprobs[%zu] has no integer "
                             "id: %s", r->url, i, show_json(id, shown, sizeof shown));
        int rc = put_logprob(r, out, json_integer_value(id), json_object_get(e, "logprob"), err);
        if (rc) return rc;
    }
    return DUET_OK;
}

/* "token_id:123" (vLLM's return_tokens_as_token_ids) -> 123; -2 when k is not of that form
 * (digits only, or a '-' for the range check to name: strtoll alone would also take
 * "token_id: 5" and "token_id:+5"). */
static long long token_id_key(const char *k) {
    const char *num = k && !strncmp(k, "token_id:", 9) ? k + 9 : NULL;
    if (!num || !(isdigit((unsigned char)num[0]) || (num[0] == '-' && isdigit((unsigned char)num[1]))))
        return -2;
    char *end = NULL;
    long long id = strtoll(num, &end, 10);
    return end == num || *end ? -2 : id;
}

/* vLLM's legacy shape: logprobs.top_logprobs[0] is a {"token_id:N": logprob} map. */
static int parse_openai_map(duet_expert_remote *r, json_t *top, float *out, duet_error *err) {
    const char *k;
    json_t *v;
    json_object_foreach(top, k, v) {
        long long id = token_id_key(k);
        if (id == -2)
            return duet_fail(err, DUET_ERR_FORMAT, "expert %s: top_logprobs key '%.40s' is not "
                             "token_id:N (does the server support return_tokens_as_token_ids?)",
                             r->url, k);
        int rc = put_logprob(r, out, id, v, err);
        if (rc) return rc;
    }
    return DUET_OK;
}

/* The newer shape (llama-server, OpenAI chat): logprobs.content[0].top_logprobs is a list of
 * {id?, token, logprob, bytes}; the id is "id" where the server gives it, else the token must
 * be "token_id:N". */
static int parse_openai_list(duet_expert_remote *r, json_t *top, float *out, duet_error *err) {
    size_t i;
    json_t *e;
    json_array_foreach(top, i, e) {
        char shown[48];
        json_t *id = json_object_get(e, "id");
        long long v = json_is_integer(id) ? (long long)json_integer_value(id)
                    : token_id_key(json_string_value(json_object_get(e, "token")));
        if (!json_is_object(e) || v == -2)
            return duet_fail(err, DUET_ERR_FORMAT, "expert %s: content[0].top_logprobs[%zu] has "
                             "neither an integer id nor a token_id:N token: %s", r->url, i,
                             show_json(e, shown, sizeof shown));
        int rc = put_logprob(r, out, v, json_object_get(e, "logprob"), err);
        if (rc) return rc;
    }
    return DUET_OK;
}

static int parse_openai(duet_expert_remote *r, json_t *js, float *out, duet_error *err) {
    json_t *lp = json_object_get(json_array_get(json_object_get(js, "choices"), 0), "logprobs");
    json_t *map = json_array_get(json_object_get(lp, "top_logprobs"), 0);
    json_t *list = json_object_get(json_array_get(json_object_get(lp, "content"), 0), "top_logprobs");
    if (json_is_object(map) && json_object_size(map)) return parse_openai_map(r, map, out, err);
    if (json_is_array(list) && json_array_size(list)) return parse_openai_list(r, list, out, err);
    return duet_fail(err, DUET_ERR_FORMAT, "expert %s: response has neither choices[0].logprobs."
                     "top_logprobs[0] nor choices[0].logprobs.content[0].top_logprobs%s", r->url,
                     lp && json_is_null(lp) ? " (llama-server sends null logprobs for a token that ends "
                     "inside a UTF-8 character: use --expert-api llama with it)" : "");
}

static int remote_next(void *ctx, const int32_t *tokens, int n, float *out, duet_error *err) {
    duet_expert_remote *r = ctx;
    json_t *ids = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(ids, json_integer(tokens[i]));
    json_t *req = r->openai
        ? json_pack("{s:o, s:i, s:i, s:f, s:b}", "prompt", ids, "max_tokens", 1, "logprobs",
                    r->top_k, "temperature", 0.0, "return_tokens_as_token_ids", 1)
        : json_pack("{s:o, s:i, s:i, s:f, s:b}", "prompt", ids, "n_predict", 1, "n_probs",
                    r->top_k, "temperature", 0.0, "cache_prompt", 1);
    if (req && !r->openai) json_object_set_new(req, "return_tokens", json_true());
    if (req && r->openai && r->model[0]) json_object_set_new(req, "model", json_string(r->model));
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!body) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    json_t *js = NULL;
    r->calls++;
    int rc = http_client_json(&r->http, r->openai ? "/v1/completions" : "/completion", body, &js, err);
    free(body);
    if (rc) return rc;
    for (int i = 0; i < r->n_vocab; i++) out[i] = -INFINITY;
    rc = r->openai ? parse_openai(r, js, out, err) : parse_llama(r, js, out, err);
    json_decref(js);
    return rc;
}

/* llama.cpp's /props, where the server has it: the vocabulary hash duet serve reports, the
 * model name, and the context size. */
static int check_props(duet_expert_remote *r, duet_error *err) {
    json_t *js = NULL;
    int rc = DUET_OK;
    if (http_client_json(&r->http, "/props", NULL, &js, NULL)) return DUET_OK; /* optional endpoint */
    const char *h = json_string_value(json_object_get(js, "duet_vocab_hash"));
    const char *served = json_string_value(json_object_get(js, "model"));
    if (served) snprintf(r->name, sizeof r->name, "%s", served);
    char mine[32];
    snprintf(mine, sizeof mine, "%016llx", (unsigned long long)duet_model_vocab_hash(r->base));
    if (h && strcmp(h, mine)) rc = duet_fail(err, DUET_ERR_UNSUPPORTED, "expert %s: vocabulary "
                                             "hash %.20s differs from the base's %s", r->url, h, mine);
    json_t *nc = json_object_get(json_object_get(js, "default_generation_settings"), "n_ctx");
    /* checked before the narrowing: 2^32 + 1 must not become a context of 1 */
    if (!rc && nc && !json_is_null(nc)) {
        json_int_t v = json_is_integer(nc) ? json_integer_value(nc) : -1;
        if (v < 1 || v > REMOTE_MAX_CTX) {
            char shown[48];
            rc = duet_fail(err, DUET_ERR_FORMAT, "expert %s: /props default_generation_settings."
                           "n_ctx = %s is not an integer in [1, %d]", r->url,
                           show_json(nc, shown, sizeof shown), REMOTE_MAX_CTX);
        } else r->be.n_ctx = (int)v;
    }
    json_decref(js);
    return rc;
}

/* POST /tokenize of text in one request shape: vLLM's {prompt, add_special_tokens} or
 * llama.cpp's {content, add_special}. The reply's ids (llama.cpp answers {id, piece} objects
 * when asked with_pieces: both are read) into ids[cap]; their count, 0 when the reply has no
 * tokens (the shape was not understood), or an error code from the request. */
static int tokenize_as(duet_expert_remote *r, const char *text, int vllm, int32_t *ids, int cap,
                       duet_error *err) {
    json_t *req = vllm ? json_pack("{s:s, s:b}", "prompt", text, "add_special_tokens", 0)
                       : json_pack("{s:s, s:b}", "content", text, "add_special", 0);
    if (req && r->model[0]) json_object_set_new(req, "model", json_string(r->model));
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    json_t *js = NULL;
    int rc = body ? http_client_json(&r->http, "/tokenize", body, &js, err) : duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    free(body);
    if (rc) return rc;
    json_t *toks = json_object_get(js, "tokens");
    /* the probe is never empty: no tokens means the server read another field (llama-server
     * answers {"tokens": []} to vLLM's shape) */
    int n = json_is_array(toks) ? (int)json_array_size(toks) : 0;
    for (int i = 0; i < n && i < cap; i++) {
        json_t *t = json_array_get(toks, (size_t)i);
        if (json_is_object(t)) t = json_object_get(t, "id");
        ids[i] = json_is_integer(t) ? (int32_t)json_integer_value(t) : -1;
    }
    json_decref(js);
    return n;
}

/* Same ids for a probe text, and the same vocabulary hash where the server reports one. The
 * OpenAI-style API has no standard /tokenize: try vLLM's request shape, then llama.cpp's, and
 * say which failed how. */
static int check_tokenizer(duet_expert_remote *r, duet_error *err) {
    static const char probe[] = "Hello, world! The quick brown fox: 12345 \xc3\xa9t\xc3\xa9\n  x";
    int32_t want[256], got[256];
    int nw = duet_tokenize(r->base, probe, sizeof probe - 1, 0, 0, want, 256, err);
    if (nw < 0) return nw;
    int n = 0;
    char first[sizeof err->msg] = "";
    for (int shape = r->openai ? 0 : 1; shape < 2 && n <= 0; shape++) {
        duet_error e = {0};
        n = tokenize_as(r, probe, shape == 0, got, 256, &e);
        if (n < 0 && shape == 0) memcpy(first, e.msg, sizeof first);
        /* another request shape can only help a server that answered */
        if (n < 0 && (shape == 1 || r->http.last_status == 0)) {
            *err = e;
            if (first[0] && shape == 1)
                snprintf(err->msg + strlen(err->msg), sizeof err->msg - strlen(err->msg),
                         "; with vLLM's shape {prompt}: %s", first);
            return n;
        }
    }
    if (n <= 0)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "expert %s: /tokenize answers without a "
                         "'tokens' list%s", r->url, r->openai ? " to both {prompt} and {content}" : "");
    int k = 0;
    while (k < nw && k < n && got[k] == want[k]) k++;
    if (k < nw || n != nw)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "expert %s: its tokenizer numbers the probe "
                         "text differently from the base's (token %d: expert %d, base %d; %d vs "
                         "%d tokens): a remote expert needs the same vocabulary", r->url, k,
                         k < n ? got[k] : -1, k < nw ? want[k] : -1, n, nw);
    return r->openai ? DUET_OK : check_props(r, err);
}

int duet_expert_remote_new(const duet_model *base, const duet_expert_remote_params *params,
                           duet_expert_remote **out, duet_error *err) {
    *out = NULL;
    const duet_expert_remote_params p = *params;
    if (p.api && strcmp(p.api, "llama") && strcmp(p.api, "openai"))
        return duet_fail(err, DUET_ERR_ARG, "expert API '%.40s' is not llama or openai", p.api);
    duet_expert_remote *r = calloc(1, sizeof *r);
    if (!r) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    int rc = http_client_init(&r->http, "expert", p.url, p.api_key, p.retries, p.backoff_ms, p.timeout_ms, 0, err);
    if (rc) {
        free(r);
        return rc;
    }
    r->base = base;
    r->n_vocab = duet_model_hparams(base)->n_vocab;
    r->openai = p.api && !strcmp(p.api, "openai");
    r->top_k = p.top_k > 0 ? p.top_k : 20;
    snprintf(r->url, sizeof r->url, "%s", r->http.url);
    snprintf(r->name, sizeof r->name, "%.127s", r->url);
    if (p.model) snprintf(r->model, sizeof r->model, "%s", p.model);
    r->be.ctx = r;
    r->be.next_logits = remote_next;
    rc = p.skip_check ? DUET_OK : check_tokenizer(r, err);
    if (rc) {
        duet_expert_remote_free(r);
        return rc;
    }
    r->calls = r->http.failed_attempts = 0;
    *out = r;
    return DUET_OK;
}

void duet_expert_remote_free(duet_expert_remote *r) {
    if (!r) return;
    http_client_free(&r->http);
    free(r);
}

const duet_expert_backend *duet_expert_remote_backend(duet_expert_remote *r) { return &r->be; }

void duet_expert_remote_counts(const duet_expert_remote *r, long *calls, long *failed_attempts) {
    if (calls) *calls = r->calls;
    if (failed_attempts) *failed_attempts = r->http.failed_attempts;
}

const char *duet_expert_remote_name(const duet_expert_remote *r) { return r->name; }

int duet_expert_remote_prompt_scores(duet_expert_remote *r, const int32_t *tokens, int n,
                                     float *lp, float *maxlp, float *entropy, duet_error *err) {
    if (r->openai)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "expert %s: prompt scores (with entropy) "
                         "need a duet serve (--expert-api llama)", r->url);
    json_t *ids = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(ids, json_integer(tokens[i]));
    json_t *req = json_pack("{s:o, s:i, s:b}", "prompt", ids, "n_predict", 0, "prompt_logprobs", 1);
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!body) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    json_t *js = NULL;
    r->calls++;
    int rc = http_client_json(&r->http, "/completion", body, &js, err);
    free(body);
    if (rc) return rc;
    json_t *pp = json_object_get(js, "prompt_probabilities");
    if (!json_is_array(pp) || (int)json_array_size(pp) != n - 1)
        rc = duet_fail(err, DUET_ERR_FORMAT, "expert %s: response has no prompt_probabilities "
                       "for %d tokens (is it a duet serve?)", r->url, n - 1);
    for (int i = 0; !rc && i < n - 1; i++) {
        json_t *e = json_array_get(pp, (size_t)i);
        json_t *a = json_object_get(e, "logprob"), *b = json_object_get(e, "max_logprob"),
               *c = json_object_get(e, "entropy"), *id = json_object_get(e, "id");
        if (!json_is_number(a) || !json_is_number(b) || !json_is_number(c) ||
            json_integer_value(id) != tokens[i + 1])
            rc = duet_fail(err, DUET_ERR_FORMAT, "expert %s: prompt_probabilities[%d] is not "
                           "{id %d, logprob, max_logprob, entropy}", r->url, i, tokens[i + 1]);
        else {
            lp[i] = (float)json_number_value(a);
            maxlp[i] = (float)json_number_value(b);
            entropy[i] = (float)json_number_value(c);
        }
    }
    json_decref(js);
    return rc;
}
