/*
 * judge.c: pairwise judging through an OpenAI-compatible chat endpoint (duet.h). The prompt
 * is duet's own. Network input is bounded: each reply is size-capped and time-limited by
 * http_client, the texts shown are capped, and a reply without a string at
 * choices[0].message.content is an error naming that field.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/common.h"
#include "base/http_client.h"

#define JUDGE_PROMPT_HEAD                                                                             \
    "You compare two responses to the same instruction and decide which one serves the person "     \
    "who wrote the instruction better: which is more helpful, more accurate and more complete. "   \
    "Neither the order in which the responses appear nor their length should sway you.\n\n"
#define JUDGE_PROMPT_TAIL \
    "\n\nWhich response is better? Reply with one word only: A, B, or tie."

/* s cut to at most cap bytes, at a character boundary */
static size_t capped(const char *s, size_t cap) {
    size_t n = strlen(s);
    if (n <= cap) return n;
    while (cap > 0 && ((unsigned char)s[cap] & 0xc0) == 0x80) cap--;
    return cap;
}

static char *judge_prompt(const char *instr, const char *a, const char *b, size_t cap) {
    duet_buf t = {0};
    duet_buf_add(&t, JUDGE_PROMPT_HEAD, strlen(JUDGE_PROMPT_HEAD));
    duet_buf_add(&t, "Instruction:\n", 13);
    duet_buf_add(&t, instr, capped(instr, cap));
    duet_buf_add(&t, "\n\nResponse A:\n", 14);
    duet_buf_add(&t, a, capped(a, cap));
    duet_buf_add(&t, "\n\nResponse B:\n", 14);
    duet_buf_add(&t, b, capped(b, cap));
    duet_buf_add(&t, JUDGE_PROMPT_TAIL, strlen(JUDGE_PROMPT_TAIL));
    if (duet_buf_add(&t, "", 1)) { free(t.p); return NULL; }
    return t.p;
}

/* 1: A, 2: B, 0: tie, -1: anything else. Leading white space, quotes, '*' and "Response "
 * are skipped; the word must end there (so "Absolutely" is not A). */
static int read_verdict(const char *s) {
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r' || *s == '"' || *s == '\'' || *s == '*') s++;
    if (!strncasecmp(s, "response ", 9)) s += 9;
    int v = !strncasecmp(s, "tie", 3) ? 0 : (*s == 'A' || *s == 'a') ? 1 : (*s == 'B' || *s == 'b') ? 2 : -1;
    const char *e = v < 0 ? s : s + (v == 0 ? 3 : 1);
    if (v >= 0 && ((*e >= 'a' && *e <= 'z') || (*e >= 'A' && *e <= 'Z') || (*e >= '0' && *e <= '9'))) return -1;
    return v;
}

/* One comparison: the verdict of the judge. */
static int ask(http_client *h, const char *path, const duet_judge_params *p, const char *instr, const char *a,
               const char *b, int *verdict, duet_error *err) {
    char *prompt = judge_prompt(instr, a, b, p->max_text ? p->max_text : 32768);
    json_t *req = prompt ? json_pack("{s:s, s:[{s:s, s:s}], s:i, s:f}", "model", p->model ? p->model : "judge",
                                     "messages", "role", "user", "content", prompt, "max_tokens", 16,
                                     "temperature", 0.0)
                         : NULL;
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    free(prompt);
    json_decref(req);
    if (!body) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    json_t *js = NULL;
    int rc = http_client_json(h, path, body, &js, err);
    free(body);
    if (rc) return rc;
    json_t *ch = json_object_get(js, "choices"), *c0 = json_array_get(ch, 0);
    json_t *msg = json_object_get(c0, "message"), *content = json_object_get(msg, "content");
    const char *field = !json_is_array(ch) ? "choices" : !json_is_object(c0) ? "choices[0]"
                        : !json_is_object(msg) ? "choices[0].message"
                        : !json_is_string(content) ? "choices[0].message.content" : NULL;
    if (field)
        rc = duet_fail(err, DUET_ERR_FORMAT, "judge %s%s: reply field '%s' is %s", h->url, path, field,
                       !strcmp(field, "choices") && !ch ? "missing" : "not what an OpenAI chat reply has there");
    else *verdict = read_verdict(json_string_value(content));
    json_decref(js);
    return rc;
}

int duet_judge_win_rate(const duet_judge_params *p, const char *const *instr, const char *const *outputs,
                        const char *const *refs, int n, duet_judge_result *res, duet_error *err) {
    memset(res, 0, sizeof *res);
    http_client h;
    int rc = http_client_init(&h, "judge", p->url, p->api_key, p->retries, 0, p->timeout_ms ? p->timeout_ms : 60000,
                              p->max_reply ? p->max_reply : (size_t)1 << 20, err);
    if (rc) return rc;
    size_t L = strlen(h.url);
    const char *path = L >= 3 && !strcmp(h.url + L - 3, "/v1") ? "/chat/completions" : "/v1/chat/completions";
    double score = 0;
    for (int i = 0; !rc && i < n; i++)
        for (int order = 0; !rc && order < (p->one_order ? 1 : 2); order++) {
            int v = -1; /* order 0: the model's output is A; order 1: it is B */
            rc = ask(&h, path, p, instr[i], order ? refs[i] : outputs[i], order ? outputs[i] : refs[i], &v, err);
            if (rc) break;
            int mine = order ? 2 : 1;
            res->comparisons++;
            res->invalid += v < 0;
            if (v == mine) res->wins++, score += 1;
            else if (v <= 0) res->ties++, score += 0.5;
            else res->losses++;
        }
    res->win_rate = res->comparisons ? score / res->comparisons : 0;
    http_client_free(&h);
    return rc;
}
