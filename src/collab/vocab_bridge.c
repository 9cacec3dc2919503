/* vocab_bridge.c: id maps between vocabularies by token text (see vocab_bridge.h).
 * One open-addressing table over `to`'s texts, then one lookup per `from` token. */
#include "collab/vocab_bridge.h"

#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/hash.h"

int vocab_bridge_build(const duet_model *from, const duet_model *to, const char *role,
                       int32_t **out, int *bridged, duet_error *err) {
    *out = NULL;
    int nf = duet_model_hparams(from)->n_vocab, nt = duet_model_hparams(to)->n_vocab;
    int32_t *map = malloc((size_t)nf * sizeof *map);
    if (!map) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    if (duet_model_vocab_hash(from) == duet_model_vocab_hash(to) && nf == nt) {
        for (int i = 0; i < nf; i++) map[i] = i;
        *bridged = 0;
        *out = map;
        return DUET_OK;
    }
    *bridged = 1;
    size_t cap = 1;
    while (cap < 2 * (size_t)nt) cap <<= 1;
    int32_t *tab = malloc(cap * sizeof *tab);
    if (!tab) {
        free(map);
        return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    memset(tab, 0xff, cap * sizeof *tab);
    for (int i = 0; i < nt; i++) {
        const char *t = duet_token_text(to, i);
        size_t k = duet_fnv1a_str(DUET_FNV_SEED_SHORT, t) & (cap - 1);
        while (tab[k] >= 0) {
            if (!strcmp(duet_token_text(to, tab[k]), t)) break; /* keep the first id of a text */
            k = (k + 1) & (cap - 1);
        }
        if (tab[k] < 0) tab[k] = i;
    }
    int rc = DUET_OK;
    for (int b = 0; b < nf && !rc; b++) {
        const char *t = duet_token_text(from, b);
        size_t k = duet_fnv1a_str(DUET_FNV_SEED_SHORT, t) & (cap - 1);
        map[b] = -1;
        for (; tab[k] >= 0; k = (k + 1) & (cap - 1))
            if (!strcmp(duet_token_text(to, tab[k]), t)) { map[b] = tab[k]; break; }
        if (map[b] < 0) {
            char pt[96];
            duet_printable(pt, sizeof pt, t, strlen(t));
            rc = duet_fail(err, DUET_ERR_UNSUPPORTED,
                           "incompatible vocabularies: base token %d '%s' has no match in the %s "
                           "model's vocabulary (%d tokens)", b, pt, role, nt);
        }
    }
    free(tab);
    if (rc) free(map);
    else *out = map;
    return rc;
}
