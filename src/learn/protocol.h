/*
 * protocol.h: the official Co-LLM evaluation protocol (internal): its prompts and its
 * validation/test splits, shared by `duet eval`, `duet tune` and `duet data split`.
 *  - GSM8K (0-shot): "Please solve the following math problem with detailed steps.\n\n"
 *    "Question: " + question.strip() + "\nAnswer:". Splits: random.seed(42); test =
 *    random.sample(all, 200); validation = random.sample(all but the test problems, 50)
 *    (a file of at most 200 problems: test = all, validation = random.sample(all, 10)).
 *  - MATH (0-shot): the instruction that asks for "The final answer is $(final-answer)$.",
 *    then "Problem: " + problem.strip() + "\n\nSolution:". Splits: per (level, type)
 *    group, in sorted key order, 27 problems drawn with one numpy RandomState(42)
 *    (choice without replacement, as pandas' groupby().sample does); the first 25 of each
 *    group's draw are the test split, the last 2 the validation split.
 */
#ifndef DUET_LEARN_PROTOCOL_H
#define DUET_LEARN_PROTOCOL_H

#include <jansson.h>
#include <stddef.h>

#include "duet.h"

#define PROTOCOL_GSM8K_PREFIX "Please solve the following math problem with detailed steps.\n\n"
#define PROTOCOL_MATH_PREFIX                                                                         \
    "Given a mathematics problem, determine the answer. Simplify your answer as much as possible. " \
    "You can use latex to format your answer and you should state your final answer as \"The "     \
    "final answer is $(final-answer)$.\"\n\n"

/* One line of a JSONL file: the parsed object, its line number and its text (no newline). */
typedef struct jsonl_rec {
    json_t *o;
    long line;
    char *text;
    size_t len;
} jsonl_rec;

/* Every non-blank line of a JSONL file (each must be an object; errors name file:line). */
int protocol_read_jsonl(const char *path, jsonl_rec **out, int *n, duet_error *err);
void protocol_free_jsonl(jsonl_rec *r, int n);

/* The prompt of a question (malloc'd; NULL when out of memory). */
char *protocol_prompt(int task, int protocol, const char *question);

/* The records a split keeps, in the split's order, into idx[*n_idx] (idx has room for n).
 * DUET_EVAL_SPLIT_ALL keeps every record in file order. */
int protocol_split(int task, int split, const jsonl_rec *r, int n, const char *path, int *idx, int *n_idx,
                   duet_error *err);

/* Names of the resolved values, for reports ("duet", "paper"; "all", "test", "validation") */
const char *protocol_scoring_name(int scoring);
const char *protocol_split_name(int split);

#endif
