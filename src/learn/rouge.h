/*
 * rouge.h: ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures, computed as Google's
 * rouge_score package computes them with its defaults (no stemmer, its default tokenizer),
 * which is what the Hugging Face "rouge" metric calls:
 *  - tokens: the text lower-cased (ASCII), every run of characters other than [a-z0-9]
 *    a separator; the tokens are the runs of [a-z0-9] (so any non-ASCII character
 *    separates, as Python's regex [^a-z0-9]+ does after str.lower(); the two code points
 *    Python lowers to ASCII, U+0130 and U+212A, are not special here);
 *  - ROUGE-N: n-gram multisets; overlap = sum of min counts; P = overlap / max(#pred, 1),
 *    R = overlap / max(#ref, 1); F = 2PR / (P + R), 0 when P + R = 0;
 *  - ROUGE-L: LCS of the token lists; P = LCS / #pred, R = LCS / #ref (all 0 if either is
 *    empty);
 *  - ROUGE-Lsum: sentences are the non-empty '\n'-separated lines; for each reference
 *    sentence the union of its LCS positions with every predicted sentence (each LCS taken
 *    by the usual backtrack that prefers to move in the prediction on ties), hits counted
 *    against per-token budgets of both texts; P = hits / #pred tokens, R = hits / #ref.
 *  - several references: each ROUGE type takes the reference with the highest F (the
 *    first on ties).
 */
#ifndef DUET_LEARN_ROUGE_H
#define DUET_LEARN_ROUGE_H

#include "duet.h"

enum { ROUGE_1 = 0, ROUGE_2, ROUGE_L, ROUGE_LSUM, ROUGE_COUNT };

typedef struct rouge_score { double p, r, f; } rouge_score;

/* Names as the Hugging Face metric reports them: "rouge1", "rouge2", "rougeL", "rougeLsum". */
const char *rouge_name(int type);

/* Every type's score of pred against ref. DUET_OK, or DUET_ERR_NOMEM. */
int rouge_pair(const char *pred, const char *ref, rouge_score out[ROUGE_COUNT], duet_error *err);

/* The best over refs[0..n_refs) per type (by F). n_refs 0 gives zeros. */
int rouge_multi(const char *pred, const char *const *refs, int n_refs, rouge_score out[ROUGE_COUNT],
                duet_error *err);

#endif
