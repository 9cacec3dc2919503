/*
 * chat_template.c: chat formats without a template engine.
 *
 * GGUF models carry their chat format as a Jinja template (tokenizer.chat_template). duet never
 * evaluates it: a template is data that may be huge or hostile (docs/bad-inputs.md, item 13).
 * Instead the template is recognised by distinctive substrings, the way llama.cpp's built-in
 * formats are (llm_chat_detect_template), and the conversation is rendered by the matching
 * built-in format.
 *
 * Conventions (shared with llama.cpp's built-in formats):
 *  - the leading BOS that most templates print ({{ bos_token }}) is left out: the tokenizer adds
 *    it (duet_tokenize with add_bos), so the rendered text is tokenised with add_bos = 1 and
 *    parse_special = 1;
 *  - roles are "system", "user" and "assistant"; tools are not supported. Templates written
 *    around tool calling (their plain-chat output is a function-calling prompt) are refused by
 *    name with a reason, so that a user picks a plain format on purpose;
 *  - names are llama.cpp's where it has the format, with the same output. Formats named after
 *    a model (qwen2.5, llama3.1, functionary-v3.1, deepseek-r1, llama-cpp-deepseek-r1,
 *    mistral-nemo) reproduce that model's own template exactly for system/user/assistant
 *    conversations, where llama.cpp's generic format would differ.
 *  - one thing is read from the template text itself: a ChatML template's default system
 *    message (a string literal), so that rendering with the template (duet_model_chat_render)
 *    matches Qwen2 / Qwen2.5-Math / SmolLM2 when the conversation has no system message.
 *
 * A format is a table row: most are "per role: prefix + content + suffix" with a few flags;
 * the Llama-2 and Mistral v1/v3 families keep an [INST] turn open across messages and have
 * their own small renderers.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "engine/model.h"

/* Rendered text larger than this is refused: far beyond any context window, and it keeps
 * every length inside int. */
#define CHAT_MAX_BYTES ((size_t)DUET_CHAT_MAX_BYTES)

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

enum {
    F_TRIM = 1,              /* content | trim (Python str.strip on ASCII whitespace) */
    F_SKIP_EMPTY_SYSTEM = 2, /* a system message with empty content prints nothing */
    F_SYS_MERGE = 4,         /* no system turn: trimmed system text opens the next user turn */
    F_ALWAYS_SYSTEM = 8,     /* a system turn is printed even without a system message */
    F_SYS_HOIST = 16,        /* the last system message's content is printed first, bare */
    F_THINK_SPLIT = 32,      /* assistant content keeps only the text after the last </think> */
};

typedef enum { K_TURNS, K_LLAMA2, K_MISTRAL, K_NEMO } kind;

typedef struct chat_format {
    const char *name;
    kind kind;
    int flags;      /* F_* (K_TURNS), or variant bits for K_LLAMA2 / K_MISTRAL */
    const char *head;              /* fixed text before the first message */
    const char *pre[3], *suf[3];   /* per role: system, user, assistant */
    const char *first_sys_pre;     /* prefix of a system message that comes first, if other */
    const char *default_system;    /* F_ALWAYS_SYSTEM: content when there is no system message */
    const char *gen;               /* add_generation_prompt */
    const char *eot;               /* text that closes the assistant's turn */
} chat_format;

/* K_LLAMA2 variants (llama.cpp's llama2, llama2-sys, llama2-sys-bos, llama2-sys-strip) */
enum { L2_SYS = 1, L2_BOS = 2, L2_STRIP = 4 };
/* K_MISTRAL variants: v1 puts spaces before [INST]/[/INST], v3-tekken none after them. */
enum { MI_V1 = 1, MI_TEKKEN = 2, MI_TRIM_ASSISTANT = 4 };

#define LLAMA3_HDR(r) "<|start_header_id|>" r "<|end_header_id|>\n\n"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>" /* <｜end▁of▁sentence｜> */
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"            /* <｜User｜> */
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>" /* <｜Assistant｜> */

static const chat_format k_formats[] = {
    {"chatml", K_TURNS, 0, NULL,
     {"<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"},
     {"<|im_end|>\n", "<|im_end|>\n", "<|im_end|>\n"}, NULL, NULL, "<|im_start|>assistant\n",
     "<|im_end|>"},
    /* Qwen2.5-Instruct: ChatML with its own default system message */
    {"qwen2.5", K_TURNS, F_ALWAYS_SYSTEM, NULL,
     {"<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"},
     {"<|im_end|>\n", "<|im_end|>\n", "<|im_end|>\n"}, NULL,
     "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
     "<|im_start|>assistant\n", "<|im_end|>"},
    {"llama2", K_LLAMA2, 0, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    {"llama2-sys", K_LLAMA2, L2_SYS, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    {"llama2-sys-bos", K_LLAMA2, L2_SYS | L2_BOS, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    {"llama2-sys-strip", K_LLAMA2, L2_SYS | L2_STRIP, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    {"mistral-v1", K_MISTRAL, MI_V1, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    {"mistral-v3", K_MISTRAL, MI_TRIM_ASSISTANT, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    {"mistral-v3-tekken", K_MISTRAL, MI_TEKKEN, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    /* Mistral-Nemo-Instruct-2407: the system message joins the last user message */
    {"mistral-nemo", K_NEMO, 0, NULL, {0}, {0}, NULL, NULL, NULL, "</s>"},
    {"mistral-v7", K_TURNS, 0, NULL, {"[SYSTEM_PROMPT] ", "[INST] ", " "},
     {"[/SYSTEM_PROMPT]", "[/INST]", "</s>"}, NULL, NULL, NULL, "</s>"},
    {"phi3", K_TURNS, F_SKIP_EMPTY_SYSTEM, NULL, {"<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
     {"<|end|>\n", "<|end|>\n", "<|end|>\n"}, NULL, NULL, "<|assistant|>\n", "<|end|>"},
    {"phi4", K_TURNS, 0, NULL,
     {"<|im_start|>system<|im_sep|>", "<|im_start|>user<|im_sep|>", "<|im_start|>assistant<|im_sep|>"},
     {"<|im_end|>", "<|im_end|>", "<|im_end|>"}, NULL, NULL, "<|im_start|>assistant<|im_sep|>",
     "<|im_end|>"},
    {"falcon3", K_TURNS, 0, NULL, {"<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
     {"\n", "\n", "\n"}, NULL, NULL, "<|assistant|>\n", ""},
    {"zephyr", K_TURNS, 0, NULL, {"<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
     {"<|endoftext|>\n", "<|endoftext|>\n", "<|endoftext|>\n"}, NULL, NULL, "<|assistant|>\n",
     "<|endoftext|>"},
    {"gemma", K_TURNS, F_SYS_MERGE | F_TRIM, NULL,
     {"", "<start_of_turn>user\n", "<start_of_turn>model\n"},
     {"", "<end_of_turn>\n", "<end_of_turn>\n"}, NULL, NULL, "<start_of_turn>model\n",
     "<end_of_turn>"},
    {"openchat", K_TURNS, 0, NULL, {"", "GPT4 Correct User: ", "GPT4 Correct Assistant: "},
     {"<|end_of_turn|>", "<|end_of_turn|>", "<|end_of_turn|>"}, NULL, NULL,
     "GPT4 Correct Assistant:", "<|end_of_turn|>"},
    {"vicuna", K_TURNS, 0, NULL, {"", "USER: ", "ASSISTANT: "}, {"\n\n", "\n", "</s>\n"}, NULL,
     NULL, "ASSISTANT:", "</s>"},
    {"vicuna-orca", K_TURNS, 0, NULL, {"SYSTEM: ", "USER: ", "ASSISTANT: "},
     {"\n", "\n", "</s>\n"}, NULL, NULL, "ASSISTANT:", "</s>"},
    {"deepseek", K_TURNS, 0, NULL, {"", "### Instruction:\n", "### Response:\n"},
     {"", "\n", "\n<|EOT|>\n"}, NULL, NULL, "### Response:\n", "<|EOT|>"},
    {"deepseek2", K_TURNS, 0, NULL, {"", "User: ", "Assistant: "}, {"\n\n", "\n\n", DS_EOS},
     NULL, NULL, "Assistant:", DS_EOS},
    {"deepseek3", K_TURNS, 0, NULL, {"", DS_USER, DS_ASSISTANT}, {"\n\n", "", DS_EOS}, NULL,
     NULL, DS_ASSISTANT, DS_EOS},
    /* DeepSeek-R1 (and its Distill models): the last system message goes first, bare;
     * earlier reasoning is dropped from assistant turns; the answer opens with <think>. */
    {"deepseek-r1", K_TURNS, F_SYS_HOIST | F_THINK_SPLIT, NULL, {"", DS_USER, DS_ASSISTANT},
     {"", "", DS_EOS}, NULL, NULL, DS_ASSISTANT "<think>\n", DS_EOS},
    /* llama.cpp's rewrite of it (models/templates/llama-cpp-deepseek-r1.jinja) also closes
     * user turns */
    {"llama-cpp-deepseek-r1", K_TURNS, F_SYS_HOIST | F_THINK_SPLIT, NULL,
     {"", DS_USER, DS_ASSISTANT}, {"", DS_EOS, DS_EOS}, NULL, NULL, DS_ASSISTANT "<think>\n",
     DS_EOS},
    {"command-r", K_TURNS, F_TRIM, NULL,
     {"<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>", "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
      "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"},
     {"<|END_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"}, NULL, NULL,
     "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>"},
    {"llama3", K_TURNS, F_TRIM, NULL,
     {LLAMA3_HDR("system"), LLAMA3_HDR("user"), LLAMA3_HDR("assistant")},
     {"<|eot_id|>", "<|eot_id|>", "<|eot_id|>"}, NULL, NULL, LLAMA3_HDR("assistant"),
     "<|eot_id|>"},
    /* Llama 3.1 / 3.2 / 3.3 Instruct without tools: a system turn always comes first and
     * opens with the knowledge cut-off and the template's default date (Llama 3.2 prints
     * today's date when the engine defines strftime_now; duet keeps the default). */
    {"llama3.1", K_TURNS, F_TRIM | F_ALWAYS_SYSTEM, NULL,
     {LLAMA3_HDR("system"), LLAMA3_HDR("user"), LLAMA3_HDR("assistant")},
     {"<|eot_id|>", "<|eot_id|>", "<|eot_id|>"},
     LLAMA3_HDR("system") "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
     "", LLAMA3_HDR("assistant"), "<|eot_id|>"},
    /* functionary-medium-v3.1 without tools: a fixed system turn, then Llama-3 turns
     * (content not trimmed) */
    {"functionary-v3.1", K_TURNS, 0,
     LLAMA3_HDR("system") "\nCutting Knowledge Date: December 2023\n\n<|eot_id|>",
     {LLAMA3_HDR("system"), LLAMA3_HDR("user"), LLAMA3_HDR("assistant")},
     {"<|eot_id|>", "<|eot_id|>", "<|eot_id|>"}, NULL, NULL, LLAMA3_HDR("assistant"),
     "<|eot_id|>"},
    {"chatglm3", K_TURNS, 0, "[gMASK]sop", {"<|system|>\n ", "<|user|>\n ", "<|assistant|>\n "},
     {"", "", ""}, NULL, NULL, "<|assistant|>", ""},
    {"chatglm4", K_TURNS, 0, "[gMASK]<sop>", {"<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
     {"", "", ""}, NULL, NULL, "<|assistant|>", ""},
    {"glmedge", K_TURNS, 0, NULL, {"<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
     {"", "", ""}, NULL, NULL, "<|assistant|>", ""},
    {"minicpm", K_TURNS, F_TRIM, NULL, {"", "<\xe7\x94\xa8\xe6\x88\xb7>", ""}, {"", "<AI>", ""},
     NULL, NULL, NULL, ""},
    {"exaone3", K_TURNS, F_TRIM, NULL, {"[|system|]", "[|user|]", "[|assistant|]"},
     {"[|endofturn|]\n", "\n", "[|endofturn|]\n"}, NULL, NULL, "[|assistant|]", "[|endofturn|]"},
    {"rwkv-world", K_TURNS, 0, NULL, {"", "User: ", ""}, {"\n\n", "\n\nAssistant:", "\n\n"},
     NULL, NULL, NULL, "\n\n"},
    {"granite", K_TURNS, 0, NULL,
     {"<|start_of_role|>system<|end_of_role|>", "<|start_of_role|>user<|end_of_role|>",
      "<|start_of_role|>assistant<|end_of_role|>"},
     {"<|end_of_text|>\n", "<|end_of_text|>\n", "<|end_of_text|>\n"}, NULL, NULL,
     "<|start_of_role|>assistant<|end_of_role|>\n", "<|end_of_text|>"},
    {"megrez", K_TURNS, 0, NULL,
     {"<|role_start|>system<|role_end|>", "<|role_start|>user<|role_end|>",
      "<|role_start|>assistant<|role_end|>"},
     {"<|turn_end|>", "<|turn_end|>", "<|turn_end|>"}, NULL, NULL,
     "<|role_start|>assistant<|role_end|>", "<|turn_end|>"},
};
#define N_FORMATS (sizeof k_formats / sizeof k_formats[0])

int duet_chat_template_names(const char **out, int cap) {
    for (int i = 0; i < cap && i < (int)N_FORMATS; i++) out[i] = k_formats[i].name;
    return (int)N_FORMATS;
}

static const chat_format *format_by_name(const char *s, size_t len) {
    for (size_t i = 0; i < N_FORMATS; i++)
        if (strlen(k_formats[i].name) == len && !memcmp(k_formats[i].name, s, len))
            return &k_formats[i];
    return NULL;
}

static const chat_format *named(const char *s) { return format_by_name(s, strlen(s)); }

/* ---- recognising a template ------------------------------------------------------------ */
typedef struct tmpl_text { const char *s; size_t n; } tmpl_text;

static int has(const tmpl_text *t, const char *needle) {
    return memmem(t->s, t->n, needle, strlen(needle)) != NULL;
}

/* Templates recognised but refused: why, and which format renders their plain turns. */
typedef struct refusal { const char *what, *why, *use; } refusal;

static const refusal *refused(const tmpl_text *t) {
    static const refusal r7b = {"Command R7B (<|START_RESPONSE|>)",
        "its prompt opens with a fixed multi-paragraph preamble and wraps answers in "
        "<|START_RESPONSE|> markers, which duet does not reproduce", "command-r"};
    static const refusal cmdr_tools = {"Command R tool-use",
        "it writes function-calling instructions and an 'Action:' request into every prompt",
        "command-r"};
    static const refusal hermes_tools = {"Hermes tool-use (ChatML)",
        "it writes a function-calling system prompt into every conversation", "chatml"};
    static const refusal firefunction = {"FireFunction v2 (functools)",
        "it needs the 'functions' and 'datetime' variables and a function-call parser", "llama3"};
    static const refusal functionary32 = {"Functionary v3.2 (>>>recipient)",
        "its answers start with a '>>>recipient' line and need a function-call parser", "llama3"};
    if (has(t, "<|START_RESPONSE|>")) return &r7b;
    if (has(t, "<|START_OF_TURN_TOKEN|>") && has(t, "## Available Tools")) return &cmdr_tools;
    if (has(t, "<|im_start|>") && has(t, "You are a function calling AI model"))
        return &hermes_tools;
    if (has(t, "functools[")) return &firefunction;
    if (has(t, ">>>all")) return &functionary32;
    return NULL;
}

/* The format of a template, or NULL. *llama_only: a format llama.cpp knows that duet does not
 * render. The order follows llama.cpp where the checks overlap, after the model-specific
 * templates duet reproduces exactly. */
static const chat_format *detect(const tmpl_text *t, const char **llama_only) {
    *llama_only = NULL;
    if (has(t, "<|im_start|>")) {
        if (has(t, "<|im_sep|>")) return named("phi4");
        if (has(t, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."))
            return named("qwen2.5");
        return named("chatml");
    }
    if (has(t, "<|start_header_id|>") && has(t, "Cutting Knowledge Date: December 2023")) {
        if (has(t, "Today Date: ")) return named("llama3.1");
        if (has(t, "<function=")) return named("functionary-v3.1");
    }
    if (has(t, DS_ASSISTANT "<think>") && has(t, DS_USER)) {
        if (has(t, "'" DS_USER "' + message['content'] + '" DS_EOS "'"))
            return named("llama-cpp-deepseek-r1");
        return named("deepseek-r1");
    }
    if ((t->n >= 7 && !memcmp(t->s, "mistral", 7)) || has(t, "[INST]")) {
        if (has(t, "[SYSTEM_PROMPT]")) return named("mistral-v7");
        if (has(t, "\"[INST]\"") && has(t, "loop.last and system_message"))
            return named("mistral-nemo");
        if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
            if (has(t, " [INST]")) return named("mistral-v1");
            if (has(t, "\"[INST]\"")) return named("mistral-v3-tekken");
            return named("mistral-v3");
        }
        if (has(t, "content.strip()")) return named("llama2-sys-strip");
        if (has(t, "bos_token + '[INST]")) return named("llama2-sys-bos");
        if (has(t, "<<SYS>>")) return named("llama2-sys");
        return named("llama2");
    }
    if (has(t, "<|assistant|>") && has(t, "<|end|>")) return named("phi3");
    if (has(t, "<|assistant|>") && has(t, "<|user|>"))
        return has(t, "</s>") ? named("falcon3") : named("glmedge");
    if (has(t, "<|user|>") && has(t, "<|endoftext|>")) return named("zephyr");
    if (has(t, "bos_token + message['role']")) { *llama_only = "monarch"; return NULL; }
    if (has(t, "<start_of_turn>")) return named("gemma");
    if (has(t, "'\\n\\nAssistant: ' + eos_token")) { *llama_only = "orion"; return NULL; }
    if (has(t, "GPT4 Correct ")) return named("openchat");
    if (has(t, "USER: ") && has(t, "ASSISTANT: "))
        return has(t, "SYSTEM: ") ? named("vicuna-orca") : named("vicuna");
    if (has(t, "### Instruction:") && has(t, "<|EOT|>")) return named("deepseek");
    if (has(t, "<|START_OF_TURN_TOKEN|>") && has(t, "<|USER_TOKEN|>"))
        return named("command-r");
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>"))
        return named("llama3");
    if (has(t, "[gMASK]sop")) return named("chatglm3");
    if (has(t, "[gMASK]<sop>")) return named("chatglm4");
    if (has(t, "<\xe7\x94\xa8\xe6\x88\xb7>")) return named("minicpm");
    if (has(t, "'Assistant: ' + message['content'] + eos_token"))
        return named("deepseek2");
    if (has(t, DS_ASSISTANT) && has(t, DS_USER) && has(t, DS_EOS))
        return named("deepseek3");
    if (has(t, "[|system|]") && has(t, "[|assistant|]") && has(t, "[|endofturn|]"))
        return named("exaone3");
    if (has(t, "rwkv-world")) return named("rwkv-world");
    if (has(t, "<|start_of_role|>")) return named("granite");
    if (has(t, "message['role'] + additional_special_tokens[0] + message['content'] + "
               "additional_special_tokens[1]")) { *llama_only = "gigachat"; return NULL; }
    if (has(t, "<|role_start|>")) return named("megrez");
    return NULL;
}

/* A ChatML template's own default system message: the string literal
 * '<|im_start|>system\nTEXT<|im_end|>\n' that such templates print when the conversation has
 * no system message (Qwen2, Qwen2.5, Qwen2.5-Math, SmolLM2, ...). Only read, as data: *dflt
 * gets TEXT still escaped (put_literal unescapes it), or NULL. */
static void find_default_system(const tmpl_text *t, const char **dflt, size_t *n) {
    static const char open[] = "<|im_start|>system\\n", close[] = "<|im_end|>\\n";
    const size_t lo = sizeof open - 1, lc = sizeof close - 1;
    *dflt = NULL;
    *n = 0;
    for (const char *p = t->s, *end = t->s + t->n;
         (p = memmem(p, (size_t)(end - p), open, lo)); p += lo) {
        if (p == t->s || (p[-1] != '\'' && p[-1] != '"')) continue;
        char q = p[-1];
        const char *a = p + lo, *b = a;
        while (b < end && *b != q) b += *b == '\\' && b + 1 < end ? 2 : 1;
        if (b >= end || (size_t)(b - a) <= lc || memcmp(b - lc, close, lc)) continue;
        *dflt = a;
        *n = (size_t)(b - lc - a);
        return;
    }
}

static int resolve(const char *tmpl, size_t len, const chat_format **out, duet_error *err) {
    *out = NULL;
    if (!tmpl || len == 0)
        return duet_fail(err, DUET_ERR_ARG, "chat template: none given (empty)");
    const chat_format *f = format_by_name(tmpl, len);
    if (f) { *out = f; return DUET_OK; }
    tmpl_text t = {tmpl, len};
    char head[96];
    duet_printable(head, sizeof head, tmpl, DUET_MIN(len, (size_t)60));
    const refusal *r = refused(&t);
    if (r)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "chat template \"%s\" (%zu bytes) is a %s "
                         "template: %s; name a plain format instead (e.g. %s)", head, len,
                         r->what, r->why, r->use);
    const char *llama_only;
    if ((f = detect(&t, &llama_only))) { *out = f; return DUET_OK; }
    if (llama_only)
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "chat template \"%s\" (%zu bytes) is the "
                         "'%s' format, which duet does not render; name a format instead",
                         head, len, llama_only);
    char names[300] = "";
    size_t o = 0;
    for (size_t i = 0; i < N_FORMATS && o + 40 < sizeof names; i++)
        o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", i ? ", " : "",
                              k_formats[i].name);
    return duet_fail(err, DUET_ERR_UNSUPPORTED, "chat template \"%s\" (%zu bytes) is not one "
                     "duet recognises; name a format instead (%s%s)", head, len, names,
                     o + 40 >= sizeof names ? ", ..." : "");
}

int duet_chat_template_detect(const char *tmpl, size_t len, const char **name,
                              duet_error *err) {
    const chat_format *f;
    int rc = resolve(tmpl, len, &f, err);
    if (name) *name = rc ? NULL : f->name;
    return rc;
}

const char *duet_chat_template_eot(const char *name) {
    const chat_format *f = name ? format_by_name(name, strlen(name)) : NULL;
    return f ? f->eot : NULL;
}

/* ---- the model's template ---------------------------------------------------------------- */
int duet_model_chat_template(const duet_model *m, const char **tmpl, size_t *len,
                             duet_error *err) {
    *tmpl = NULL;
    *len = 0;
    gguf_str s = {0, NULL};
    int rc = gguf_get_str_opt(m->gguf, "tokenizer.chat_template", &s, err);
    if (rc) return rc;
    *tmpl = s.ptr;
    *len = (size_t)s.len;
    return DUET_OK;
}

int duet_model_chat_format(const duet_model *m, const char *override, const char **name,
                           duet_error *err) {
    if (override) return duet_chat_template_detect(override, strlen(override), name, err);
    const char *t;
    size_t n;
    int rc = duet_model_chat_template(m, &t, &n, err);
    if (rc) return rc;
    if (!t) {
        *name = NULL;
        return duet_fail(err, DUET_ERR_UNSUPPORTED, "%s: no tokenizer.chat_template in the "
                         "model; name a chat format (e.g. chatml, llama3)", m->path);
    }
    rc = duet_chat_template_detect(t, n, name, err);
    if (rc) { /* say where the template came from */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
        duet_fail(err, rc, "%s: tokenizer.chat_template: %s", m->path, msg);
    }
    return rc;
}

/* ---- rendering ----------------------------------------------------------------------------- */
/* Output that counts every byte and writes what fits (cap includes the NUL). */
typedef struct out_buf {
    char *buf;
    size_t cap, len;
    int over;       /* the text passed CHAT_MAX_BYTES */
    duet_buf *msg;  /* when set: [start, end) byte ranges (size_t pairs) of message text */
    int oom;
} out_buf;

static void put(out_buf *o, const char *s, size_t n) {
    if (o->over || !n) return;
    if (n > CHAT_MAX_BYTES - o->len) { o->over = 1; return; }
    if (o->len < o->cap) memcpy(o->buf + o->len, s, DUET_MIN(n, o->cap - o->len));
    o->len += n;
}
static void puts_(out_buf *o, const char *s) { if (s) put(o, s, strlen(s)); }

/* Message text (the user's, never the template's): its byte range is recorded, so that the
 * tokenizer can keep control-token spellings in it plain. */
static void put_msg(out_buf *o, const char *s, size_t n) {
    size_t r[2] = {o->len, 0};
    put(o, s, n);
    r[1] = o->len;
    if (o->msg && r[1] > r[0] && duet_buf_add(o->msg, r, sizeof r)) o->oom = 1;
}

/* Text of a Jinja string literal: \n, \t and \X (X itself) unescaped. */
static void put_literal(out_buf *o, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            c = s[++i];
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
        }
        put(o, &c, 1);
    }
}

/* Content as the format sees it: trimmed (ASCII whitespace, as Jinja's trim on these texts),
 * and for F_THINK_SPLIT assistant turns, only what follows the last </think>. */
typedef struct span { const char *s; size_t n; } span;

static span trimmed(span c) {
    while (c.n && isspace((unsigned char)c.s[0])) { c.s++; c.n--; }
    while (c.n && isspace((unsigned char)c.s[c.n - 1])) c.n--;
    return c;
}

static span after_think(span c) {
    static const char tag[] = "</think>";
    for (size_t i = c.n; i >= sizeof tag - 1; i--)
        if (!memcmp(c.s + i - (sizeof tag - 1), tag, sizeof tag - 1))
            return (span){c.s + i, c.n - i};
    return c;
}

static void render_turns(const chat_format *f, const duet_chat_message *m, const int *role,
                         const size_t *len, int n, span dflt, out_buf *o) {
    puts_(o, f->head);
    if (f->flags & F_SYS_HOIST) {
        for (int i = n - 1; i >= 0; i--)
            if (role[i] == ROLE_SYSTEM) { put_msg(o, m[i].content, len[i]); break; }
    }
    if (((f->flags & F_ALWAYS_SYSTEM) || dflt.s) && (n == 0 || role[0] != ROLE_SYSTEM)) {
        puts_(o, f->first_sys_pre ? f->first_sys_pre : f->pre[ROLE_SYSTEM]);
        if (dflt.s) put_literal(o, dflt.s, dflt.n);
        else puts_(o, f->default_system);
        puts_(o, f->suf[ROLE_SYSTEM]);
    }
    span pending = {NULL, 0}; /* F_SYS_MERGE: system text waiting for a user turn */
    for (int i = 0; i < n; i++) {
        int r = role[i];
        span c = {m[i].content, len[i]};
        if (f->flags & F_TRIM) c = trimmed(c);
        if (r == ROLE_SYSTEM) {
            if (f->flags & F_SYS_HOIST) continue;
            if (f->flags & F_SYS_MERGE) { pending = trimmed(c); continue; }
            if ((f->flags & F_SKIP_EMPTY_SYSTEM) && c.n == 0) continue;
        }
        if (r == ROLE_ASSISTANT && (f->flags & F_THINK_SPLIT)) c = after_think(c);
        puts_(o, i == 0 && r == ROLE_SYSTEM && f->first_sys_pre ? f->first_sys_pre : f->pre[r]);
        if (pending.s && r == ROLE_USER) {
            if (pending.n) { put_msg(o, pending.s, pending.n); puts_(o, "\n\n"); }
            pending.s = NULL;
        }
        put_msg(o, c.s, c.n);
        puts_(o, f->suf[r]);
    }
}

/* Llama 2: one [INST] ... [/INST] turn per exchange; without L2_SYS the system text is
 * simply the first line of the user turn. */
static void render_llama2(const chat_format *f, const duet_chat_message *m, const int *role,
                          const size_t *len, int n, out_buf *o) {
    int open = 1; /* the first [INST] is printed up front (the BOS before it is the tokenizer's) */
    puts_(o, "[INST] ");
    for (int i = 0; i < n; i++) {
        span c = {m[i].content, len[i]};
        if (f->flags & L2_STRIP) c = trimmed(c);
        if (!open) { puts_(o, f->flags & L2_BOS ? "<s>[INST] " : "[INST] "); open = 1; }
        if (role[i] == ROLE_SYSTEM) {
            if (f->flags & L2_SYS) { puts_(o, "<<SYS>>\n"); put_msg(o, c.s, c.n); puts_(o, "\n<</SYS>>\n\n"); }
            else { put_msg(o, c.s, c.n); puts_(o, "\n"); }
        } else if (role[i] == ROLE_USER) {
            put_msg(o, c.s, c.n);
            puts_(o, " [/INST]");
        } else {
            put_msg(o, c.s, c.n);
            puts_(o, "</s>");
            open = 0;
        }
    }
}

/* Mistral v1 / v3 / v3-tekken (llama.cpp's reading of Mistral's tokenisation guide): the
 * system text starts the open [INST] turn. */
static void render_mistral(const chat_format *f, const duet_chat_message *m, const int *role,
                           const size_t *len, int n, out_buf *o) {
    const char *lead = f->flags & MI_V1 ? " " : "", *trail = f->flags & MI_TEKKEN ? "" : " ";
    int open = 0;
    for (int i = 0; i < n; i++) {
        span c = {m[i].content, len[i]};
        if (!open) { puts_(o, lead); puts_(o, "[INST]"); puts_(o, trail); open = 1; }
        if (role[i] == ROLE_SYSTEM) {
            put_msg(o, c.s, c.n);
            puts_(o, "\n\n");
        } else if (role[i] == ROLE_USER) {
            put_msg(o, c.s, c.n);
            puts_(o, lead);
            puts_(o, "[/INST]");
        } else {
            if (f->flags & MI_TRIM_ASSISTANT) c = trimmed(c);
            puts_(o, trail);
            put_msg(o, c.s, c.n);
            puts_(o, "</s>");
            open = 0;
        }
    }
}

/* Mistral-Nemo-Instruct-2407: [INST]user[/INST]assistant</s>; an initial system message is
 * prepended ("system\n\n") to the user message that ends the conversation only. A later
 * system message is an error in the template, and here. */
static int render_nemo(const duet_chat_message *m, const int *role, const size_t *len, int n,
                       out_buf *o, duet_error *err) {
    int first = n > 0 && role[0] == ROLE_SYSTEM ? 1 : 0;
    for (int i = first; i < n; i++) {
        if (role[i] == ROLE_SYSTEM)
            return duet_fail(err, DUET_ERR_ARG, "chat (mistral-nemo): message %d is a system "
                             "message; only the first message may be one", i);
        if (role[i] == ROLE_USER) {
            puts_(o, "[INST]");
            if (first && i == n - 1) { put_msg(o, m[0].content, len[0]); puts_(o, "\n\n"); }
            put_msg(o, m[i].content, len[i]);
            puts_(o, "[/INST]");
        } else {
            put_msg(o, m[i].content, len[i]);
            puts_(o, "</s>");
        }
    }
    return DUET_OK;
}

/* Render into buf[cap] (the length is returned; see duet_chat_render); msg, when set, gets the
 * byte ranges of message text (put_msg). */
static int render(const char *tmpl, size_t tmpl_len, const duet_chat_message *msgs, int n,
                  int add_generation_prompt, char *buf, size_t cap, duet_buf *msg, duet_error *err) {
    if (n < 0 || (n > 0 && !msgs) || (cap > 0 && !buf))
        return duet_fail(err, DUET_ERR_ARG, "chat: bad argument (%d messages, messages %s, "
                         "buffer %s)", n, msgs ? "set" : "NULL", buf ? "set" : "NULL");
    if (n > DUET_CHAT_MAX_MESSAGES)
        return duet_fail(err, DUET_ERR_RANGE, "chat: %d messages (at most %d)", n,
                         DUET_CHAT_MAX_MESSAGES);
    const chat_format *f;
    int rc = resolve(tmpl, tmpl_len, &f, err);
    if (rc) return rc;
    span dflt = {NULL, 0};
    if (f == named("chatml")) {
        tmpl_text t = {tmpl, tmpl_len};
        find_default_system(&t, &dflt.s, &dflt.n);
    }
    int *role = malloc((size_t)(n ? n : 1) * sizeof *role);
    size_t *len = malloc((size_t)(n ? n : 1) * sizeof *len);
    if (!role || !len) {
        free(role);
        free(len);
        return duet_fail(err, DUET_ERR_NOMEM, "chat: out of memory");
    }
    static const char *const k_roles[3] = {"system", "user", "assistant"};
    for (int i = 0; i < n && !rc; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            rc = duet_fail(err, DUET_ERR_ARG, "chat: message %d has no %s (NULL)", i,
                           msgs[i].role ? "content" : "role");
            break;
        }
        role[i] = -1;
        for (int r = 0; r < 3; r++)
            if (!strcmp(msgs[i].role, k_roles[r])) role[i] = r;
        if (role[i] < 0) {
            char shown[64];
            duet_printable(shown, sizeof shown, msgs[i].role, strlen(msgs[i].role));
            rc = duet_fail(err, DUET_ERR_ARG, "chat: message %d has role \"%s\"; expected "
                           "system, user or assistant", i, shown);
            break;
        }
        /* bounded scan: a content larger than the limit is refused without reading it all */
        len[i] = strnlen(msgs[i].content, CHAT_MAX_BYTES + 1);
        if (len[i] > CHAT_MAX_BYTES) {
            rc = duet_fail(err, DUET_ERR_RANGE, "chat: message %d (%s) is longer than %zu "
                           "bytes", i, msgs[i].role, CHAT_MAX_BYTES);
            break;
        }
    }
    if (!rc) {
        out_buf o = {.buf = buf, .cap = cap, .msg = msg};
        switch (f->kind) {
        case K_TURNS: render_turns(f, msgs, role, len, n, dflt, &o); break;
        case K_LLAMA2: render_llama2(f, msgs, role, len, n, &o); break;
        case K_MISTRAL: render_mistral(f, msgs, role, len, n, &o); break;
        case K_NEMO: rc = render_nemo(msgs, role, len, n, &o, err); break;
        }
        if (!rc && add_generation_prompt) puts_(&o, f->gen);
        if (!rc && o.oom) rc = duet_fail(err, DUET_ERR_NOMEM, "chat: out of memory");
        if (!rc && o.over)
            rc = duet_fail(err, DUET_ERR_RANGE, "chat: the rendered conversation (%s format) "
                           "would exceed %zu bytes", f->name, CHAT_MAX_BYTES);
        if (!rc) {
            if (cap > 0) buf[DUET_MIN(o.len, cap - 1)] = 0;
            rc = (int)o.len;
        }
    }
    free(role);
    free(len);
    return rc;
}

int duet_chat_render(const char *tmpl, const duet_chat_message *msgs, int n,
                     int add_generation_prompt, char *buf, size_t cap, duet_error *err) {
    return render(tmpl, tmpl ? strlen(tmpl) : 0, msgs, n, add_generation_prompt, buf, cap, NULL, err);
}

static int model_render(const duet_model *m, const char *override, const duet_chat_message *msgs,
                        int n, int add_generation_prompt, char *buf, size_t cap, duet_buf *msg,
                        duet_error *err) {
    const char *name, *t = override;
    int rc = duet_model_chat_format(m, override, &name, err); /* errors name the model */
    size_t tn = override ? strlen(override) : 0;
    if (!rc && !override) rc = duet_model_chat_template(m, &t, &tn, err);
    return rc ? rc : render(t, tn, msgs, n, add_generation_prompt, buf, cap, msg, err);
}

int duet_model_chat_render(const duet_model *m, const char *override,
                           const duet_chat_message *msgs, int n, int add_generation_prompt,
                           char *buf, size_t cap, duet_error *err) {
    return model_render(m, override, msgs, n, add_generation_prompt, buf, cap, NULL, err);
}

int duet_model_chat_prompt(const duet_model *m, const char *override, const duet_chat_message *msgs,
                           int n, int add_generation_prompt, char **text, unsigned char **plain,
                           size_t *len, duet_error *err) {
    *text = NULL;
    *plain = NULL;
    *len = 0;
    int k = model_render(m, override, msgs, n, add_generation_prompt, NULL, 0, NULL, err);
    if (k < 0) return k;
    duet_buf ranges = {0};
    char *t = malloc((size_t)k + 1);
    unsigned char *mask = calloc((size_t)k + 1, 1);
    int rc = t && mask ? model_render(m, override, msgs, n, add_generation_prompt, t, (size_t)k + 1,
                                      &ranges, err)
                       : duet_fail(err, DUET_ERR_NOMEM, "chat: out of memory");
    if (rc >= 0) {
        const size_t *r = (const size_t *)ranges.p;
        for (size_t i = 0; i + 1 < ranges.n / sizeof *r; i += 2)
            memset(mask + r[i], 1, r[i + 1] - r[i]);
        *text = t;
        *plain = mask;
        *len = (size_t)k;
        rc = DUET_OK;
    } else {
        free(t);
        free(mask);
    }
    free(ranges.p);
    return rc;
}
