/*
 * bioasq.h: BioASQ task B answers read and scored as the official Co-LLM evaluation does
 * (internal; the task itself is task_bioasq.c, ROUGE is rouge.h).
 *  - An answer is split at every "The final answer is:"; with none there is no exact
 *    answer (the ideal answer is the whole text, stripped); else the ideal answer is the
 *    text before the first (stripped) and the exact answer the text between the first and
 *    the second.
 *  - factoid and list exact answers: a leading ':' dropped; text not starting with white
 *    space is one item (stripped); else, stripped, lines "- item" (a '-' then one white-
 *    space character), or lines "1) item" when it starts with "1)", or the whole text.
 *  - yes/no: "yes" if the lower-cased text contains "yes", else "no" if it contains "no"
 *    (so "not" and "know" read as no), else none.
 *  - factoid: gold synonyms pooled; an item matches when it is a substring of a synonym;
 *    strict = the first item matches, lenient = one of the first 5 does, MRR = 1/rank of the
 *    LAST matching item among the first 5 (the official loop overwrites, it does not stop).
 *  - list: each item, when it has "word (ACRONYM)", also counts as the text without the
 *    parenthesis and as the acronym plus what follows; tp = gold entities with a synonym
 *    equal to an item, fp = distinct items - tp; P = tp / distinct items, R = tp / entities.
 *  - yes/no accuracy: the read answer's first line equals the gold exactly.
 * No exact answer scores 0 on every exact metric.
 */
#ifndef DUET_LEARN_BIOASQ_H
#define DUET_LEARN_BIOASQ_H

#include <stddef.h>

/* In sorted name order, the order in which the official split visits them. */
enum { BIOASQ_FACTOID = 0, BIOASQ_LIST, BIOASQ_SUMMARY, BIOASQ_YESNO, BIOASQ_TYPES };

int bioasq_type_from_name(const char *name);
const char *bioasq_type_name(int type);

/* One gold entity: its synonyms. */
typedef struct bioasq_entity { char **syn; int n; } bioasq_entity;

/* What the scorer reads from an answer (malloc'd; bioasq_parsed_free). */
typedef struct bioasq_parsed {
    int has_exact;  /* "The final answer is:" was there */
    char **items;   /* factoid, list: the exact items */
    int n_items;
    char *yesno;    /* "yes", "no" or NULL */
    char *ideal;
} bioasq_parsed;

/* 0, or -1 when out of memory. */
int bioasq_parse(const char *generation, int type, bioasq_parsed *out);
void bioasq_parsed_free(bioasq_parsed *p);

/* Scores of parsed items (items NULL / n 0 when there is no exact answer: all 0). */
void bioasq_factoid(const bioasq_entity *gold, int n_gold, char *const *items, int n_items, double *strict,
                    double *lenient, double *mrr);
/* -1 when out of memory */
int bioasq_list(const bioasq_entity *gold, int n_gold, char *const *items, int n_items, double *precision,
                double *recall, double *f1);
double bioasq_yesno(const char *gold, const char *read);

#endif
