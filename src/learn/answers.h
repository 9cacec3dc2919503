/*
 * answers.h: final-answer extraction and comparison for math benchmarks (internal).
 *  - GSM8K: the answer is the last number of the output (thousands commas removed, sign and
 *    decimals kept), compared numerically with the number after "####" in the reference.
 *  - MATH: the answer is the content of the last \boxed{...} (balanced braces), else the
 *    text after "The final answer is"; both sides are normalised Minerva/Hendrycks-style
 *    (spaces, \left \right, \! \, thin spaces, dollar signs, units in \text{...}, degrees,
 *    percent, trailing period, \dfrac \tfrac -> \frac, \frac12 -> \frac{1}{2}, "x = 5" -> 5,
 *    1,000 -> 1000) and compared as strings, then numerically when both sides are simple
 *    numbers (integers, decimals, a/b, \frac{a}{b}, with sign).
 * Pure functions over NUL-terminated strings; no allocation visible to the caller.
 */
#ifndef DUET_TRAIN_ANSWERS_H
#define DUET_TRAIN_ANSWERS_H

#include <stddef.h>

#define ANSWERS_CAP 1024 /* longest answer kept (longer ones are cut and rarely match) */

/* The last number in text[0..len): 1 and *value when there is one, else 0.
 * "1,000" is 1000; "-3" is negative unless the '-' follows a letter or digit ("16-3" is 3);
 * a trailing period ("18.") is punctuation. */
int answers_last_number(const char *text, size_t len, double *value);
/* The GSM8K reference number: the first number after the last "####" (the whole text's
 * last number when there is no "####"). 1 when found. */
int answers_gsm8k_reference(const char *answer, double *value);
/* 1 when the output's last number equals the reference's (relative tolerance 1e-9). */
int answers_gsm8k_correct(const char *output, const char *reference_answer);

/* The MATH final answer of a text: the last \boxed{...} or \fbox{...} (balanced braces;
 * "\boxed 5" too), else the text after the last "The final answer is" up to the end of the
 * line or "I hope". Written NUL-terminated to out[cap]; 1 when found, else 0 (out = ""). */
int answers_math_extract(const char *text, char *out, size_t cap);
/* The normalised form of an answer string (see above) into out[cap]. */
void answers_math_normalize(const char *in, char *out, size_t cap);
/* The value of a normalised simple number ("-3", "0.25", "3/4", "\frac{3}{4}",
 * "-\frac{1}{2}"): 1 and *v when it is one. */
int answers_math_value(const char *norm, double *v);
/* 1 when two answers are equivalent: equal after normalisation, or both simple numbers
 * with equal values (relative tolerance 1e-6). */
int answers_math_equiv(const char *a, const char *b);
/* 1 when the output's final answer is equivalent to the reference answer. */
int answers_math_correct(const char *output, const char *reference);

/* ---- the official Co-LLM scorers (answers_paper.c) -------------------------------------
 * GSM8K: commas between digits go (re.sub(r"(\d),(\d)", r"\1\2")); the prediction is the last
 * match of [-+]?\d*\.\d+|\d+ (the whole output when there is none); the reference is the text
 * after the first "####" (to a second one), stripped, commas dropped the same way; the two
 * are equal after lower-casing and deleting every ASCII punctuation character.
 * MATH: the text after the last "the final answer is" (lower case, as the reference looks
 * for it), narrowed to its first one-line $...$, cut at ".\n", stripped, a final '.' and
 * every '$' dropped, then \boxed{...}, \text{...} and "..." unwrapped; the gold answer is
 * the last \boxed of the solution, unwrapped the same way; equal after the Hendrycks
 * strip_string normalisation (or, where that raises, equal as they are). */
/* Python's str.strip(): s[*start .. *start + *len) without leading/trailing whitespace */
void answers_py_strip(const char *s, size_t n, size_t *start, size_t *len);
/* The GSM8K prediction of an output (see above) into pred[cap]. */
void answers_gsm8k_paper_pred(const char *output, char *pred, size_t cap);
/* The GSM8K reference of an answer text ("... #### 1,000" -> "1000"); 0 when it has no
 * "####" (out = ""). */
int answers_gsm8k_paper_reference(const char *answer, char *out, size_t cap);
/* exact_match(ignore_case, ignore_punctuation) of two strings */
int answers_exact_match_paper(const char *pred, const char *reference);
/* 1 when the output is right against a reference from answers_gsm8k_paper_reference;
 * pred (may be NULL) gets the prediction. */
int answers_gsm8k_paper_correct(const char *output, const char *reference, char *pred, size_t cap);
/* The last \boxed{...} (else \fbox{...}) of s with its command, into out[cap]; 0 when none. */
int answers_math_paper_last_boxed(const char *s, char *out, size_t cap);
/* The gold answer of a MATH solution (its last box, unwrapped); 0 when it has none. */
int answers_math_paper_gold(const char *solution, char *out, size_t cap);
/* The predicted answer of an output; 0 when "the final answer is" is absent (out = ""). */
int answers_math_paper_extract(const char *output, char *out, size_t cap);
/* is_equiv: equal after strip_string, or equal as they are where strip_string raises. */
int answers_math_paper_equiv(const char *a, const char *b);
/* 1 when the output's predicted answer is equivalent to the gold answer; pred (may be NULL)
 * gets the prediction. */
int answers_math_paper_correct(const char *output, const char *gold, char *pred, size_t cap);

#endif
