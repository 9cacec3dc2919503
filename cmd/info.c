/* info.c: `duet info FILE`: validate a GGUF file and print its metadata and tensor table.
 * The reader validates the whole file, so a zero exit also means the file is well formed. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "duet.h"

static void usage(FILE *o) {
    fprintf(o, "usage: duet info FILE.gguf\n"
               "  Print the GGUF version, every metadata key and the tensor table.\n");
}

int cmd_info(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    duet_error err = {0};
    if (duet_gguf_print(argv[1], stdout, &err) != DUET_OK) {
        fprintf(stderr, "duet info: %s\n", err.msg);
        return 1;
    }
    /* a full disk or closed pipe must not look like success */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "duet info: error writing output\n");
        return 1;
    }
    return 0;
}
