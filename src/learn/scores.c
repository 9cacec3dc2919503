/*
 * scores.c: the scoring pass (teacher-forced, one batched prefill per sequence) and the
 * score file reader; the format is documented in scores.h.
 * Invariants: a block reaches the file only complete and flushed; the plan (sequences and
 * their token ids) is a pure function of the dataset, the tokenizer and n_ctx, so a resumed
 * run continues with exactly the sequences the interrupted one had not written.
 */
#include "learn/scores.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/atomic_file.h"
#include "base/common.h"
#include "base/hash.h"
#include "format/quant.h"
#include "collab/vocab_bridge.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "score files are little-endian; this host is not"
#endif

_Static_assert(sizeof(duet_scores_header) == DUET_SCORES_HEADER_SIZE, "duet_scores_header must be 512 bytes");
_Static_assert(sizeof(duet_scores_block) == 32, "duet_scores_block must be 32 bytes");
_Static_assert(sizeof(duet_scores_tok) == 16, "duet_scores_tok must be 16 bytes");
_Static_assert(sizeof(duet_scores_seq) == 40, "duet_scores_seq must be 40 bytes");
_Static_assert(offsetof(duet_scores_header, n_seq) == 56 && offsetof(duet_scores_header, model_name) == 120 &&
               offsetof(duet_scores_header, reserved) == 376, "duet_scores_header offsets as documented");

static uint64_t block_bytes(uint64_t n_tok, uint64_t hd) {
    uint64_t b = sizeof(duet_scores_block) + n_tok * sizeof(duet_scores_tok) + n_tok * hd * 2;
    return (b + 63) & ~(uint64_t)63;
}

/* Block check: a fast word hash (the data can be megabytes per sequence). */
uint32_t duet_scores_block_check(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    for (; i < n; i++) h = (h ^ s[i]) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return (uint32_t)(h ^ (h >> 32));
}

/* ---- the plan: sequences of ids --------------------------------------------------------- */
typedef duet_scores_plan_seq pseq;
typedef duet_scores_plan plan;

void duet_scores_plan_free(duet_scores_plan *p) {
    free(p->ids);
    free(p->seq);
    memset(p, 0, sizeof *p); /* a failed build frees its plan, and the caller frees it again */
}

static int plan_reserve(plan *p, int64_t more, duet_error *err) {
    if (p->n_ids + more <= p->cap_ids) return DUET_OK;
    int64_t nc = p->cap_ids ? p->cap_ids : 4096;
    while (nc < p->n_ids + more) nc *= 2;
    int32_t *n = realloc(p->ids, (size_t)nc * sizeof *n);
    if (!n) return duet_fail(err, DUET_ERR_NOMEM, "out of memory planning %lld tokens", (long long)nc);
    p->ids = n;
    p->cap_ids = nc;
    return DUET_OK;
}

/* Appends the tokens of text (already reserved? no: this reserves) at p->ids + n_ids; returns
 * the count or a negative status. */
static int tokenize_into(plan *p, const duet_model *m, const char *text, size_t len, int add_bos,
                         const char *where, duet_error *err) {
    int n = duet_tokenize(m, text, len, add_bos, 0, NULL, 0, err);
    if (n < 0) return n;
    if (n > (1 << 28)) return duet_fail(err, DUET_ERR_RANGE, "%s: %d tokens is too long", where, n);
    int rc = plan_reserve(p, n + 1, err);
    if (rc) return rc;
    return duet_tokenize(m, text, len, add_bos, 0, p->ids + p->n_ids, n, err);
}

static int plan_add(plan *p, int64_t off, int n, int n_prompt, int example, int flags,
                    duet_error *err) {
    if (p->n_seq == p->cap_seq) {
        int nc = p->cap_seq ? 2 * p->cap_seq : 256;
        pseq *ns = realloc(p->seq, (size_t)nc * sizeof *ns);
        if (!ns) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        p->seq = ns;
        p->cap_seq = nc;
    }
    p->seq[p->n_seq++] = (pseq){off, n, n_prompt, example, flags};
    p->tok_total += n;
    p->n_tok += n - n_prompt;
    return DUET_OK;
}

int duet_scores_plan_build(const duet_model *idm, const duet_dataset *d, int n_ctx, duet_scores_plan *p,
                           duet_error *err) {
    memset(p, 0, sizeof *p);
    int32_t bos = duet_token_bos(idm), eos = duet_token_eos(idm);
    char *buf = NULL;
    size_t cap = 0;
    int rc = DUET_OK;
    for (int e = 0; e < d->n && !rc; e++) {
        const duet_dataset_example *x = &d->ex[e];
        char where[600];
        snprintf(where, sizeof where, "%s:%d", d->path, x->line);
        if (!x->prompt) { /* plain text: windows of BOS + up to per tokens, all scored */
            int64_t off = p->n_ids;
            int n = tokenize_into(p, idm, x->response, x->response_len, 0, where, err);
            if (n < 0) { rc = n; break; }
            int lead = bos >= 0 ? 1 : 0, per = n_ctx - lead;
            if (per < 1 + !lead) {
                rc = duet_fail(err, DUET_ERR_ARG, "context of %d tokens is too small to score", n_ctx);
                break;
            }
            if (bos >= 0) { /* windows are rebuilt below with a BOS each */
                int nw = (n + per - 1) / per;
                int32_t *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
                if (!tmp) { rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
                memcpy(tmp, p->ids + off, (size_t)n * sizeof *tmp);
                p->n_ids = off;
                if ((rc = plan_reserve(p, (int64_t)n + nw, err))) { free(tmp); break; }
                for (int w = 0; w < nw && !rc; w++) {
                    int k = DUET_MIN(per, n - w * per);
                    int64_t o = p->n_ids;
                    p->ids[p->n_ids++] = bos;
                    memcpy(p->ids + p->n_ids, tmp + (size_t)w * per, (size_t)k * sizeof *tmp);
                    p->n_ids += k;
                    rc = plan_add(p, o, k + 1, 1, e, nw > 1 ? DUET_SCORES_SEQ_WINDOW : 0, err);
                }
                free(tmp);
            } else { /* no BOS: each window's first token is context only */
                p->n_ids += n;
                for (int s = 0; s + 1 < n && !rc; s += per - 1) {
                    int k = DUET_MIN(per, n - s);
                    rc = plan_add(p, off + s, k, 1, e, n > per ? DUET_SCORES_SEQ_WINDOW : 0, err);
                }
            }
            continue;
        }
        /* completion format: BOS + prompt + "\n" + response + EOS, response tokens scored */
        size_t need = x->prompt_len + 1 + x->response_len + 1;
        if (need > cap) {
            char *nb = realloc(buf, need);
            if (!nb) { rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
            buf = nb;
            cap = need;
        }
        memcpy(buf, x->prompt, x->prompt_len);
        buf[x->prompt_len] = '\n';
        int64_t off = p->n_ids;
        int np = tokenize_into(p, idm, buf, x->prompt_len + 1, 1, where, err);
        if (np < 0) { rc = np; break; }
        int32_t *pre = malloc((size_t)(np ? np : 1) * sizeof *pre);
        if (!pre) { rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory"); break; }
        memcpy(pre, p->ids + off, (size_t)np * sizeof *pre);
        memcpy(buf + x->prompt_len + 1, x->response, x->response_len);
        int n = tokenize_into(p, idm, buf, x->prompt_len + 1 + x->response_len, 1, where, err);
        if (n < 0) { free(pre); rc = n; break; }
        int lcp = 0; /* the prompt ends where the two encodings part */
        while (lcp < np && lcp < n && pre[lcp] == p->ids[off + lcp]) lcp++;
        free(pre);
        if (lcp == 0) lcp = 1; /* no BOS: the first token is context only */
        if (eos >= 0 && !duet_token_is_eog(idm, p->ids[off + n - 1])) p->ids[off + n++] = eos;
        int flags = 0;
        if (lcp >= n || lcp >= n_ctx) { /* nothing to score inside the context */
            p->n_skipped++;
            continue;
        }
        if (n > n_ctx) {
            flags = DUET_SCORES_SEQ_TRUNCATED;
            p->n_truncated++;
            p->n_dropped += n - n_ctx;
            n = n_ctx;
        }
        p->n_ids = off + n;
        rc = plan_add(p, off, n, lcp, e, flags, err);
    }
    free(buf);
    if (!rc && p->n_tok == 0)
        rc = duet_fail(err, DUET_ERR_FORMAT, "%s: zero usable tokens to score (%d examples, %d "
                       "with no response token inside the context of %d)", d->path, d->n,
                       p->n_skipped, n_ctx);
    if (rc) duet_scores_plan_free(p);
    return rc;
}

/* ---- scoring ---------------------------------------------------------------------------- */
static void tok_stats(const float *g, int n, int gold, duet_scores_tok *out) {
    double mx, z, ez;
    duet_softmax_stats(g, n, &mx, &z, &ez);
    double lz = log(z);
    out->gold = gold;
    out->lp = (float)((double)g[gold] - mx - lz);
    out->maxlp = (float)-lz;
    out->entropy = (float)(lz - ez / z);
}

static int write_all(FILE *f, const void *p, size_t n, const char *path, duet_error *err) {
    if (n && fwrite(p, 1, n, f) != n)
        return duet_fail(err, DUET_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return DUET_OK;
}

/* Walk the blocks of a partial file; returns how many complete blocks match the plan and
 * sets *end to the offset after them. */
static int64_t resume_scan(FILE *f, const plan *pl, uint32_t hd, uint64_t size, uint64_t *end) {
    uint64_t off = DUET_SCORES_HEADER_SIZE;
    int64_t n = 0;
    void *buf = NULL;
    size_t cap = 0;
    while (n < pl->n_seq) {
        const pseq *q = &pl->seq[n];
        uint64_t nt = (uint64_t)(q->n - q->n_prompt), bb = block_bytes(nt, hd);
        if (off + bb > size) break;
        if (bb > cap) {
            void *nb = realloc(buf, bb);
            if (!nb) break;
            buf = nb;
            cap = bb;
        }
        if (fseeko(f, (off_t)off, SEEK_SET) || fread(buf, 1, bb, f) != bb) break;
        duet_scores_block b;
        memcpy(&b, buf, sizeof b);
        size_t data = (size_t)(nt * sizeof(duet_scores_tok) + nt * hd * 2);
        if (memcmp(b.magic, "SEQB", 4) || b.seq != (uint32_t)n || b.n_tok != nt ||
            b.n_prompt != (uint32_t)q->n_prompt || b.example != (uint32_t)q->example ||
            b.check != duet_scores_block_check((char *)buf + sizeof b, data))
            break;
        off += bb;
        n++;
    }
    free(buf);
    *end = off;
    return n;
}

/* One sequence through a remote server: its prompt scores of every position (the server
 * keeps the shared prefix in its cache), the response's into recs. work holds 3 x n floats. */
static int remote_seq(duet_expert_remote *r, const int32_t *mt, const pseq *q, const int32_t *ids,
                      duet_scores_tok *recs, float *work, duet_error *err) {
    float *lp = work, *mx = work + q->n, *ent = work + 2 * q->n;
    int rc = duet_expert_remote_prompt_scores(r, mt, q->n, lp, mx, ent, err);
    for (int t = 0; !rc && t < q->n - q->n_prompt; t++) { /* position p is entry p - 1 */
        int i = q->n_prompt + t - 1;
        recs[t] = (duet_scores_tok){ids[q->n_prompt + t], lp[i], mx[i], ent[i]};
    }
    return rc;
}

/* The context to score in: the asked one, else the scored model's training context (capped at
 * 4096), no longer than the ids model's or a remote server's. */
static int score_n_ctx(const duet_scores_params *P, const duet_hparams *hp, const duet_hparams *ihp) {
    int n_ctx = P->n_ctx;
    if (n_ctx <= 0) {
        n_ctx = DUET_MIN(hp->n_ctx_train, 4096);
        if (P->ids_model && ihp->n_ctx_train > 0) n_ctx = DUET_MIN(n_ctx, ihp->n_ctx_train);
        int rctx = P->remote ? duet_expert_remote_backend(P->remote)->n_ctx : 0;
        if (rctx > 0) n_ctx = DUET_MIN(n_ctx > 0 ? n_ctx : 4096, rctx); /* the server's context */
    }
    return n_ctx;
}

/* The header of an incomplete file: identity and options, with the hash a resume must match. */
static void score_header(duet_scores_header *H, const duet_scores_params *P, const duet_model *model,
                         const duet_model *idm, const duet_dataset *data, uint32_t hd, int n_ctx) {
    const duet_hparams *hp = duet_model_hparams(model), *ihp = duet_model_hparams(idm);
    memset(H, 0, sizeof *H);
    memcpy(H->magic, DUET_SCORES_MAGIC, 8);
    H->version = DUET_SCORES_VERSION;
    H->header_size = DUET_SCORES_HEADER_SIZE;
    H->hidden_dim = hd;
    H->n_embd = P->remote ? 0 : (uint32_t)hp->n_embd; /* a remote model's size is not known */
    H->n_vocab = (uint32_t)hp->n_vocab;
    H->vocab_hash = duet_model_vocab_hash(model);
    H->ids_vocab_hash = duet_model_vocab_hash(idm);
    H->ids_n_vocab = (uint32_t)ihp->n_vocab;
    H->n_ctx = (uint32_t)n_ctx;
    snprintf(H->model_name, sizeof H->model_name, "%s", P->remote ? duet_expert_remote_name(P->remote) : hp->name);
    snprintf(H->ids_name, sizeof H->ids_name, "%s", ihp->name);
    uint64_t ch = duet_fnv1a(DUET_FNV_SEED_SHORT, &data->hash, 8);
    ch = duet_fnv1a(ch, H, offsetof(duet_scores_header, n_seq)); /* identity + options */
    ch = duet_fnv1a(ch, H->model_name, sizeof H->model_name);
    /* adapters change every score but not the name; none leaves the hash as it was */
    uint64_t lh = P->remote ? 0 : duet_model_lora_hash(model);
    if (lh) ch = duet_fnv1a(ch, &lh, sizeof lh);
    H->config_hash = duet_fnv1a(ch, H->ids_name, sizeof H->ids_name);
}

/* Opens the partial file: resumes one written for the same header (keeping its complete blocks
 * that match the plan, *seq_done of them) or starts a new one with the header. *f is set even
 * on failure when the file was opened, for the caller to close. */
static int open_partial(const char *partial, const duet_scores_header *H, const plan *pl, uint32_t hd,
                        FILE **fp, int64_t *seq_done, duet_scores_stats *st, duet_error *err) {
    int rc;
    FILE *f = *fp = fopen(partial, "r+b");
    uint64_t off = DUET_SCORES_HEADER_SIZE;
    if (f) { /* resume */
        duet_scores_header old;
        struct stat sb;
        if (fread(&old, 1, sizeof old, f) != sizeof old || memcmp(old.magic, DUET_SCORES_MAGIC, 8) ||
            old.version != DUET_SCORES_VERSION || old.complete)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: not a partial score file (remove it to "
                             "start over)", partial);
        if (old.config_hash != H->config_hash)
            return duet_fail(err, DUET_ERR_ARG, "%s was written for other data, models or options "
                             "(model '%s', ids '%s', n_ctx %u, hidden %u); remove it to start over",
                             partial, old.model_name, old.ids_name, old.n_ctx, old.hidden_dim);
        if (fstat(fileno(f), &sb))
            return duet_fail(err, DUET_ERR_IO, "%s: %s", partial, strerror(errno));
        *seq_done = resume_scan(f, pl, hd, (uint64_t)sb.st_size, &off);
        if (fflush(f) || ftruncate(fileno(f), (off_t)off) || fseeko(f, (off_t)off, SEEK_SET))
            return duet_fail(err, DUET_ERR_IO, "%s: cannot truncate: %s", partial, strerror(errno));
        st->n_resumed_seq = *seq_done;
        return DUET_OK;
    }
    if (!(f = *fp = fopen(partial, "w+b")))
        return duet_fail(err, DUET_ERR_IO, "%s: %s", partial, strerror(errno));
    if ((rc = write_all(f, H, sizeof *H, partial, err)) || (rc = fflush(f) ? duet_fail(err,
        DUET_ERR_IO, "%s: write failed", partial) : 0))
        return rc;
    return DUET_OK;
}

/* Totals of the whole file: where each block will lie, its token and text-byte counts. */
typedef struct {
    uint64_t index_offset, n_tok, n_bytes;
    int64_t tok_done; /* tokens of the sequences already in the file */
} score_totals;

/* Index entries of every sequence, resumed or not, with the file's totals. */
static score_totals build_index(const duet_model *idm, const plan *pl, uint32_t hd, int64_t seq_done,
                                duet_scores_seq *index) {
    score_totals T = {DUET_SCORES_HEADER_SIZE, 0, 0, 0};
    for (int64_t i = 0; i < pl->n_seq; i++) {
        const pseq *q = &pl->seq[i];
        uint32_t nt = (uint32_t)(q->n - q->n_prompt), nb = 0;
        for (int t = 0; t < (int)nt; t++) {
            int pos = q->n_prompt + t;
            int l = duet_token_to_piece(idm, pl->ids[q->off + pos - 1], pl->ids[q->off + pos], NULL, 0);
            nb += l > 0 ? (uint32_t)l : 0;
        }
        index[i] = (duet_scores_seq){T.index_offset, T.n_tok, nt, (uint32_t)q->n_prompt, (uint32_t)q->example, nb,
                             (uint32_t)q->flags, 0};
        T.index_offset += block_bytes(nt, hd);
        T.n_tok += nt;
        T.n_bytes += nb;
        if (i < seq_done) T.tok_done += q->n;
    }
    return T;
}

/* One sequence on its way through a session of its own. */
typedef struct score_slot {
    duet_session *s;  /* NULL with a remote */
    int32_t *mt;      /* the sequence in the scored model's vocabulary */
    uint8_t *blk;     /* its block as written: duet_scores_block, records, hidden, padding */
    int keep, done;   /* tokens that came from the KV cache; tokens evaluated so far */
    size_t bb;        /* the block's bytes */
} score_slot;

/* What scoring needs: the slots, the vocabulary map, the shared buffers. */
typedef struct {
    const duet_scores_params *P;
    score_slot *sl;
    int n_slots;      /* sequences scored together */
    int chunk;        /* tokens of one sequence per forward pass: n_batch shared by the slots,
                         so that their logits rows together stay within n_batch */
    int V, bridged;
    uint32_t hd;
    const int32_t *map;
    float *g;         /* a bridged logits row, or remote scores */
} scorer;

static duet_scores_tok *block_recs(uint8_t *blk) { return (duet_scores_tok *)(blk + sizeof(duet_scores_block)); }

/* Sequence i onto slot x: its ids in the scored model's vocabulary, and the KV cache of a
 * shared prefix (e.g. one prompt for many examples) kept up to the last context token, whose
 * logits row is needed. */
static void seq_begin(scorer *S, score_slot *x, const plan *pl, int64_t i) {
    const pseq *q = &pl->seq[i];
    const int32_t *ids = pl->ids + q->off;
    for (int j = 0; j < q->n; j++) x->mt[j] = S->map[ids[j]];
    int have = x->s ? duet_session_n_past(x->s) : 0;
    const int32_t *cur = x->s ? duet_session_tokens(x->s) : NULL;
    x->keep = 0;
    while (x->keep < have && x->keep < q->n_prompt - 1 && cur[x->keep] == x->mt[x->keep]) x->keep++;
    if (x->s) duet_session_truncate(x->s, x->keep);
    x->done = x->keep;
    x->bb = (size_t)block_bytes((uint64_t)(q->n - q->n_prompt), S->hd);
}

/* The records and hidden states of the c tokens the slot's session has just evaluated from
 * position start on (row r predicts the token at start + r + 1). */
static void seq_rows(scorer *S, score_slot *x, const plan *pl, int64_t i, int start, int c) {
    const pseq *q = &pl->seq[i];
    const int32_t *ids = pl->ids + q->off;
    uint32_t hd = S->hd;
    int V = S->V, nt = q->n - q->n_prompt;
    duet_scores_tok *recs = block_recs(x->blk);
    uint16_t *hid = (uint16_t *)(x->blk + sizeof(duet_scores_block) + (size_t)nt * sizeof(duet_scores_tok));
    for (int r = 0; r < c; r++) {
        int t = start + r + 1 - q->n_prompt;
        if (t < 0 || t >= nt) continue;
        const float *l = duet_session_logits(x->s, r);
        if (S->bridged) {
            for (int b = 0; b < V; b++) S->g[b] = l[S->map[b]];
            l = S->g;
        }
        tok_stats(l, V, ids[q->n_prompt + t], &recs[t]);
        if (hd) {
            const float *h = duet_session_hidden(x->s, r);
            for (uint32_t k = 0; k < hd; k++) { /* saturate: F16 ends at 65504 */
                float v = h[k] > 65504.0f ? 65504.0f : h[k] < -65504.0f ? -65504.0f : h[k];
                hid[(size_t)t * hd + k] = fp32_to_fp16(v);
            }
        }
    }
}

/* The block's padding and header, once its records and hidden states are in. */
static void seq_end(scorer *S, score_slot *x, const plan *pl, int64_t i, uint32_t n_bytes) {
    const pseq *q = &pl->seq[i];
    int nt = q->n - q->n_prompt;
    size_t rb = (size_t)nt * sizeof(duet_scores_tok), hb = (size_t)nt * S->hd * 2;
    uint8_t *blk = x->blk;
    memset(blk + sizeof(duet_scores_block) + rb + hb, 0, x->bb - sizeof(duet_scores_block) - rb - hb);
    duet_scores_block b = {{'S', 'E', 'Q', 'B'}, (uint32_t)i, (uint32_t)nt, (uint32_t)q->n_prompt,
                   (uint32_t)q->example, n_bytes, (uint32_t)q->flags,
                   duet_scores_block_check(blk + sizeof(duet_scores_block), rb + hb)};
    memcpy(blk, &b, sizeof b);
}

/* Scores sequences i0 .. i0 + k - 1 of the plan, sequence i0 + j into slot j's block. Each
 * forward pass takes the next chunk of every unfinished sequence (one sequence alone is
 * evaluated as duet_session_eval does; several in one batched pass). */
static int score_group(scorer *S, const plan *pl, int64_t i0, int k, const duet_scores_seq *index,
                       duet_batch_seq *bs, duet_error *err) {
    int rc = DUET_OK;
    for (int j = 0; j < k; j++) seq_begin(S, &S->sl[j], pl, i0 + j);
    if (S->P->remote) {
        for (int j = 0; j < k && !rc; j++) {
            const pseq *q = &pl->seq[i0 + j];
            rc = remote_seq(S->P->remote, S->sl[j].mt, q, pl->ids + q->off, block_recs(S->sl[j].blk), S->g, err);
        }
    }
    while (!rc && !S->P->remote) {
        int m = 0;
        for (int j = 0; j < k; j++) {
            score_slot *x = &S->sl[j];
            int n = pl->seq[i0 + j].n;
            if (x->done < n)
                bs[m++] = (duet_batch_seq){x->s, x->mt + x->done, DUET_MIN(S->chunk, n - x->done), 1};
        }
        if (!m) break;
        rc = m == 1 ? duet_session_eval(bs[0].session, bs[0].tokens, bs[0].n, 1, err)
                    : duet_session_eval_batch(bs, m, err);
        for (int j = 0, b = 0; j < k && !rc; j++) {
            score_slot *x = &S->sl[j];
            if (b < m && bs[b].session == x->s) {
                seq_rows(S, x, pl, i0 + j, x->done, bs[b].n);
                x->done += bs[b++].n;
            }
        }
    }
    for (int j = 0; j < k && !rc; j++) seq_end(S, &S->sl[j], pl, i0 + j, index[i0 + j].n_bytes);
    return rc;
}

/* The slots (a session, ids and a block buffer each) and the shared buffers: up to
 * P->parallel sequences at a time (one with a remote, which scores a sequence per request). */
static int scorer_init(scorer *S, duet_model *model, const plan *pl, int n_ctx, int64_t seq_done,
                       duet_error *err) {
    const duet_scores_params *P = S->P;
    int max_n = 0;
    for (int i = 0; i < pl->n_seq; i++) max_n = DUET_MAX(max_n, pl->seq[i].n);
    duet_session_params sp = {.n_ctx = n_ctx, .n_batch = DUET_MIN(n_ctx, P->n_batch > 0 ? P->n_batch : 512)};
    int64_t left = DUET_MAX(pl->n_seq - seq_done, 1);
    S->n_slots = P->remote ? 1 : (int)DUET_MIN(DUET_MIN((int64_t)(P->parallel > 0 ? P->parallel : 8), left),
                                               (int64_t)sp.n_batch);
    S->chunk = sp.n_batch / S->n_slots;
    S->g = malloc((size_t)DUET_MAX(S->V, 3 * max_n) * sizeof *S->g); /* logits row, or remote scores */
    S->sl = calloc((size_t)S->n_slots, sizeof *S->sl);
    if (!S->g || !S->sl) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    for (int j = 0; j < S->n_slots; j++) {
        score_slot *x = &S->sl[j];
        int rc = P->remote ? DUET_OK : duet_session_new(model, &sp, &x->s, err);
        if (rc) return rc;
        x->blk = malloc((size_t)block_bytes((uint64_t)max_n, S->hd));
        x->mt = malloc((size_t)max_n * sizeof *x->mt);
        if (!x->blk || !x->mt) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    }
    return DUET_OK;
}

static void scorer_free(scorer *S) {
    for (int j = 0; S->sl && j < S->n_slots; j++) {
        duet_session_free(S->sl[j].s);
        free(S->sl[j].blk);
        free(S->sl[j].mt);
    }
    free(S->sl);
    free(S->g);
}

/* Completes the file: the index, then the completed header, then the rename to out_path.
 * Closes *fp (and sets it NULL) once everything is written. */
static int finish_file(FILE **fp, duet_scores_header *H, const duet_scores_seq *index, const plan *pl,
                       const duet_dataset *data, const score_totals *T, const char *partial,
                       const char *out_path, duet_error *err) {
    FILE *f = *fp;
    int rc = DUET_OK;
    H->complete = 1;
    H->n_seq = (uint64_t)pl->n_seq;
    H->n_tok = T->n_tok;
    H->n_bytes = T->n_bytes;
    H->index_offset = T->index_offset;
    H->n_examples = (uint32_t)data->n;
    H->n_truncated = (uint32_t)pl->n_truncated;
    H->n_skipped = (uint32_t)pl->n_skipped;
    H->n_dropped_tok = (uint64_t)pl->n_dropped;
    if (fseeko(f, (off_t)T->index_offset, SEEK_SET))
        return duet_fail(err, DUET_ERR_IO, "%s: seek failed", partial);
    if ((rc = write_all(f, index, (size_t)pl->n_seq * sizeof *index, partial, err))) return rc;
    if (fflush(f) || fseeko(f, 0, SEEK_SET) || (rc = write_all(f, H, sizeof *H, partial, err)))
        return rc ? rc : duet_fail(err, DUET_ERR_IO, "%s: write failed: %s", partial, strerror(errno));
    /* The partial file stays on failure: a later run resumes from it. */
    const char *step;
    int bad = duet_file_finish(f, partial, out_path, &step);
    *fp = NULL;
    if (bad)
        return duet_fail(err, DUET_ERR_IO, "%s: cannot complete %s (%s: %s)", partial, out_path, step,
                         strerror(errno));
    return DUET_OK;
}

int duet_scores_compute(duet_model *model, const duet_dataset *data, const duet_scores_params *params,
                        const char *out_path, duet_scores_stats *st, duet_error *err) {
    duet_scores_params P = {0};
    if (params) P = *params;
    duet_scores_stats dummy;
    if (!st) st = &dummy;
    memset(st, 0, sizeof *st);
    double t0 = duet_time_s();
    const duet_model *idm = P.ids_model ? P.ids_model : model;
    const duet_hparams *hp = duet_model_hparams(model), *ihp = duet_model_hparams(idm);
    int n_ctx = score_n_ctx(&P, hp, ihp);
    if (n_ctx < 2) return duet_fail(err, DUET_ERR_ARG, "context of %d tokens is too small to score", n_ctx);
    uint32_t hd = P.no_hidden || P.remote ? 0 : (uint32_t)hp->n_embd;
    int32_t *map = NULL;
    int bridged = 0, rc;
    if ((rc = vocab_bridge_build(idm, model, "scored", &map, &bridged, err))) return rc;
    plan pl;
    if ((rc = duet_scores_plan_build(idm, data, n_ctx, &pl, err))) { free(map); return rc; }
    st->n_examples = data->n;
    st->n_seq = pl.n_seq;
    st->n_tok = pl.n_tok;
    st->n_truncated = pl.n_truncated;
    st->n_skipped = pl.n_skipped;
    st->n_dropped_tok = pl.n_dropped;
    st->n_ctx = n_ctx;

    duet_scores_header H;
    score_header(&H, &P, model, idm, data, hd, n_ctx);
    char partial[1024];
    snprintf(partial, sizeof partial, "%s.partial", out_path);
    scorer S = {.P = &P, .V = ihp->n_vocab, .bridged = bridged, .hd = hd, .map = map};
    duet_scores_seq *index = NULL;
    duet_batch_seq *bs = NULL;
    FILE *f = NULL;
    int64_t seq_done = 0;
    if ((rc = open_partial(partial, &H, &pl, hd, &f, &seq_done, st, err)) ||
        (rc = scorer_init(&S, model, &pl, n_ctx, seq_done, err)))
        goto done;
    index = calloc((size_t)pl.n_seq, sizeof *index);
    bs = malloc((size_t)S.n_slots * sizeof *bs);
    if (!index || !bs) {
        rc = duet_fail(err, DUET_ERR_NOMEM, "out of memory");
        goto done;
    }

    score_totals T = build_index(idm, &pl, hd, seq_done, index);
    duet_scores_progress pr = {seq_done, pl.n_seq, T.tok_done, pl.tok_total, 0, 0};
    st->n_seq_done = seq_done;
    for (int64_t i = seq_done; i < pl.n_seq;) {
        int k = (int)DUET_MIN((int64_t)S.n_slots, pl.n_seq - i);
        if ((rc = score_group(&S, &pl, i, k, index, bs, err))) goto done;
        for (int j = 0; j < k; j++, i++) { /* blocks go to the file in plan order */
            const pseq *q = &pl.seq[i];
            rc = write_all(f, S.sl[j].blk, S.sl[j].bb, partial, err);
            if (!rc && fflush(f)) rc = duet_fail(err, DUET_ERR_IO, "%s: write failed: %s", partial, strerror(errno));
            if (rc) goto done;
            pr.seq_done = st->n_seq_done = i + 1;
            pr.tok_done += q->n;
            pr.tok_run += q->n - S.sl[j].keep;
            pr.seconds = duet_time_s() - t0;
            if (P.progress && i + 1 < pl.n_seq && P.progress(P.ud, &pr)) {
                rc = DUET_SCORES_STOPPED;
                goto done;
            }
        }
    }
    if (P.progress) P.progress(P.ud, &pr);
    rc = finish_file(&f, &H, index, &pl, data, &T, partial, out_path, err);
done:
    if (f) fclose(f);
    st->seconds = duet_time_s() - t0;
    scorer_free(&S);
    free(bs);
    free(index);
    free(map);
    duet_scores_plan_free(&pl);
    return rc;
}

/* ---- reading ---------------------------------------------------------------------------- */
struct duet_scores {
    char path[512];
    const uint8_t *base;
    size_t size;
    const duet_scores_header *h;
    const duet_scores_seq *seqs;
    uint64_t window, read_since;   /* duet_scores_done: bytes between drops, bytes since one */
};

/* 4 MiB: head training on a 37 MB and a 148 MB score file peaked at 19.4 / 22.3 MB (32 MiB:
 * 45.7 / 73.5 MB) in the same time (0.32 / 1.31 s against 0.39 / 1.36 s), the same head */
#define SCORES_WINDOW_DEFAULT (4ull << 20)

/* The mapping is read-only and private, so a dropped page reads back from the file as it
 * was: dropping every page at once is always safe, whatever pointers the caller holds. */
void duet_scores_done(const duet_scores *cf, uint64_t i) {
    duet_scores *f = (duet_scores *)cf; /* the counter only; the mapped data stays const */
    f->read_since += block_bytes(f->seqs[i].n_tok, f->h->hidden_dim);
    if (f->read_since < f->window) return;
    madvise((void *)f->base, f->size, MADV_DONTNEED);
    f->read_since = 0;
}

const char *duet_scores_path(const duet_scores *f) { return f->path; }
const duet_scores_header *duet_scores_get_header(const duet_scores *f) { return f->h; }
const duet_scores_seq *duet_scores_seqs(const duet_scores *f) { return f->seqs; }

const duet_scores_tok *duet_scores_seq_toks(const duet_scores *f, uint64_t i) {
    return (const duet_scores_tok *)(f->base + f->seqs[i].offset + sizeof(duet_scores_block));
}

const uint16_t *duet_scores_seq_hidden(const duet_scores *f, uint64_t i) {
    if (!f->h->hidden_dim) return NULL;
    return (const uint16_t *)(f->base + f->seqs[i].offset + sizeof(duet_scores_block) +
                              (uint64_t)f->seqs[i].n_tok * sizeof(duet_scores_tok));
}

void duet_scores_close(duet_scores *f) {
    if (!f) return;
    if (f->base) munmap((void *)f->base, f->size);
    free(f);
}

static int validate(duet_scores *f, duet_error *err) {
    const char *p = f->path;
    if (f->size < DUET_SCORES_HEADER_SIZE)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: %zu bytes is too short for a score file", p, f->size);
    const duet_scores_header *h = f->h;
    if (memcmp(h->magic, DUET_SCORES_MAGIC, 8))
        return duet_fail(err, DUET_ERR_FORMAT, "%s: not a duet score file (bad magic)", p);
    if (h->version != DUET_SCORES_VERSION || h->header_size != DUET_SCORES_HEADER_SIZE)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: score file version %u (header %u bytes) is "
                         "not supported (want %d)", p, h->version, h->header_size, DUET_SCORES_VERSION);
    if (!h->complete)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: incomplete score file (an interrupted run: "
                         "re-run duet score to finish it)", p);
    if (h->hidden_dim > (1u << 20) || h->ids_n_vocab == 0 || h->ids_n_vocab > (1u << 30))
        return duet_fail(err, DUET_ERR_FORMAT, "%s: hidden_dim %u / ids_n_vocab %u out of range", p,
                         h->hidden_dim, h->ids_n_vocab);
    if (h->model_name[sizeof h->model_name - 1] || h->ids_name[sizeof h->ids_name - 1])
        return duet_fail(err, DUET_ERR_FORMAT, "%s: model name is not terminated", p);
    uint64_t isz;
    if (h->index_offset < DUET_SCORES_HEADER_SIZE || h->index_offset % 8 || h->index_offset > f->size ||
        !duet_mul_ok(h->n_seq, sizeof(duet_scores_seq), &isz) || isz > f->size - h->index_offset)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: index (offset %llu, %llu sequences) lies "
                         "outside the file of %zu bytes", p, (unsigned long long)h->index_offset,
                         (unsigned long long)h->n_seq, f->size);
    f->seqs = (const duet_scores_seq *)(f->base + h->index_offset);
    uint64_t end = DUET_SCORES_HEADER_SIZE, ts = 0, nbytes = 0;
    for (uint64_t i = 0; i < h->n_seq; i++) {
        const duet_scores_seq *q = &f->seqs[i];
        uint64_t bb = block_bytes(q->n_tok, h->hidden_dim);
        if (q->offset % 64 || q->offset < end || q->n_tok > h->n_ctx ||
            q->n_prompt > h->n_ctx - q->n_tok || q->n_tok == 0 || bb > h->index_offset - q->offset ||
            q->offset > h->index_offset || q->tok_start != ts)
            return duet_fail(err, DUET_ERR_FORMAT, "%s: sequence %llu (offset %llu, %u tokens, "
                             "%u context, start %llu) is inconsistent with the file", p,
                             (unsigned long long)i, (unsigned long long)q->offset, q->n_tok,
                             q->n_prompt, (unsigned long long)q->tok_start);
        duet_scores_block b;
        memcpy(&b, f->base + q->offset, sizeof b);
        size_t data = (size_t)(q->n_tok * sizeof(duet_scores_tok) + (uint64_t)q->n_tok * h->hidden_dim * 2);
        if (memcmp(b.magic, "SEQB", 4) || b.seq != (uint32_t)i || b.n_tok != q->n_tok ||
            b.n_prompt != q->n_prompt || b.example != q->example ||
            b.check != duet_scores_block_check(f->base + q->offset + sizeof b, data))
            return duet_fail(err, DUET_ERR_FORMAT, "%s: sequence %llu: block header or check "
                             "does not match (corrupt file)", p, (unsigned long long)i);
        const duet_scores_tok *t = duet_scores_seq_toks(f, i);
        for (uint32_t k = 0; k < q->n_tok; k++)
            if (t[k].gold < 0 || (uint32_t)t[k].gold >= h->ids_n_vocab || !isfinite(t[k].lp) ||
                !isfinite(t[k].maxlp) || !isfinite(t[k].entropy))
                return duet_fail(err, DUET_ERR_FORMAT, "%s: sequence %llu token %u: gold id %d "
                                 "(vocabulary %u), lp %g, maxlp %g, entropy %g", p,
                                 (unsigned long long)i, k, t[k].gold, h->ids_n_vocab, t[k].lp,
                                 t[k].maxlp, t[k].entropy);
        end = q->offset + bb;
        ts += q->n_tok;
        nbytes += q->n_bytes;
        duet_scores_done(f, i);
    }
    if (ts != h->n_tok)
        return duet_fail(err, DUET_ERR_FORMAT, "%s: header says %llu tokens, sequences hold %llu",
                         p, (unsigned long long)h->n_tok, (unsigned long long)ts);
    return DUET_OK;
}

int duet_scores_open(const char *path, duet_scores **out, duet_error *err) {
    *out = NULL;
    duet_scores *f = calloc(1, sizeof *f);
    if (!f) return duet_fail(err, DUET_ERR_NOMEM, "out of memory");
    snprintf(f->path, sizeof f->path, "%s", path);
    const char *w = getenv("DUET_SCORES_WINDOW");
    unsigned long long wv = w ? strtoull(w, NULL, 10) : 0;
    f->window = wv ? (uint64_t)wv : SCORES_WINDOW_DEFAULT;
    int fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb)) {
        int e = errno;
        if (fd >= 0) close(fd);
        free(f);
        return duet_fail(err, DUET_ERR_IO, "%s: %s", path, strerror(e));
    }
    f->size = (size_t)sb.st_size;
    if (f->size >= DUET_SCORES_HEADER_SIZE) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(f);
            return duet_fail(err, DUET_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
        f->base = m;
        f->h = m;
    }
    close(fd);
    int rc = validate(f, err);
    if (rc) {
        duet_scores_close(f);
        return rc;
    }
    *out = f;
    return DUET_OK;
}
