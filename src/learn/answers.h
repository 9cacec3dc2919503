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

#endif
