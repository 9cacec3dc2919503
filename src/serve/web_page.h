/* web_page.h: the web page duet serve answers at / (web/index.html, embedded into the binary
 * by src/serve/web_page.c at build time: no network, no generator). */
#ifndef DUET_WEB_PAGE_H
#define DUET_WEB_PAGE_H

#include <stddef.h>

extern const char k_web_page[];     /* the bytes of web/index.html, NUL-terminated */
extern const char k_web_page_end[]; /* one past the NUL */

static inline size_t web_page_size(void) { return (size_t)(k_web_page_end - k_web_page) - 1; }

#endif
