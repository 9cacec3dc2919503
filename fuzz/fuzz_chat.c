/* fuzz_chat.c: libFuzzer harness for chat-template recognition and rendering (docs/bad-inputs.md,
 * item 13: a template is data, never code). The input is used three ways: as a template source to
 * recognise and render with, as the contents of a conversation (split at '\n', roles from the
 * first byte of each piece, some of them invalid) rendered by every built-in format, and as
 * streamed output scanned for stop texts. ASan/UBSan see any access outside the buffers.
 * Run: build-fuzz/fuzz_chat -max_total_time=600 CORPUS_DIR */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "duet.h"

#define MAX_MSGS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    duet_error err;
    const char *name;
    (void)duet_chat_template_detect(text, size, &name, &err);

    /* the conversation: pieces of the input (the copy is cut at '\n' in place) */
    char *conv = malloc(size + 1);
    if (!conv) { free(text); return 0; }
    memcpy(conv, text, size + 1);
    duet_chat_message m[MAX_MSGS];
    static const char *roles[5] = {"system", "user", "assistant", "tool", ""};
    int n = 0;
    for (char *p = conv; n < MAX_MSGS && p;) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        m[n].role = roles[(unsigned char)p[0] % 5];
        m[n].content = p;
        n++;
        p = nl ? nl + 1 : NULL;
    }
    char out[4096];
    (void)duet_chat_render(text, m, n, size & 1, out, sizeof out, &err);
    const char *names[64];
    int k = duet_chat_template_names(names, 64);
    for (int i = 0; i < k && i < 64; i++) {
        (void)duet_chat_render(names[i], m, n, 1, out, sizeof out, &err);
        (void)duet_chat_render(names[i], m, n, 0, NULL, 0, &err);
    }

    /* stop texts over the input as if streamed in two parts */
    const char *stops[3] = {"<|im_end|>", "\n\n", size > 3 ? conv + size - 3 : ""};
    size_t shown = 0;
    (void)duet_stop_scan(text, size / 2, stops, 3, &shown);
    (void)duet_stop_scan(text, size, stops, 3, &shown);
    free(conv);
    free(text);
    return 0;
}
