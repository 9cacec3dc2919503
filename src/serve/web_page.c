/* web_page.c: embeds web/index.html (the page at /) with the assembler's .incbin, so the
 * page stays an ordinary HTML file in the source tree. The Makefile makes this object depend
 * on the HTML file; the path is relative to the repository root, where make runs. */
#include "serve/web_page.h"

__asm__(".section .rodata\n"
        ".global k_web_page\n"
        ".type k_web_page, @object\n"
        "k_web_page:\n"
        ".incbin \"web/index.html\"\n"
        ".byte 0\n"
        ".global k_web_page_end\n"
        "k_web_page_end:\n"
        ".previous\n");
