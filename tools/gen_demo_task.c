/*
 * gen_demo_task.c: the corpus of duet's embedded demo, a task that needs two skills.
 *
 * Word problems whose answer is a product of two numbers in 2..12: the answer needs the task's
 * format (read the two numbers out of the question, write "a * b = p.", restate p) and the
 * multiplication fact itself. The two models each get one skill:
 *  - base: fine-tuned on problems whose number pairs come only from a seeded 40% of the 121
 *    pairs: it learns the format but not the facts it never saw. Training lines are
 *    prompt/response JSONL laid out so that the completion format (prompt + "\n" + response)
 *    gives exactly the text `duet eval --task gsm8k` prompts with (the paper's prompt ending
 *    "\nAnswer:") followed by the answer: the response starts with "Answer:\n";
 *  - expert: pre-trained on plain text of multiplication facts ("7 * 8 = 56"), every pair,
 *    after zero to three random words, with task questions between them ("Question: ..."): it
 *    knows the facts and the questions' language, never an answer. Facts also start lines
 *    because the task's answer line starts with its first factor, and "\n9" is not " 9" to
 *    the tokenizer: an expert that only saw facts after a word answered "9 * 9 = 108" at the
 *    start of a line while it knew "Ann 9 * 9 = 81";
 *  - the base's own pre-training (base_pretrain.jsonl): problems over all pairs in the task's
 *    layout but with a random number for every product, so that the base reads, copies and
 *    lays out answers without knowing a single fact before fine-tuning.
 * Held-out problems draw pairs from all 121; no held-out question appears in the fine-tuning
 * problems or the expert's text (its questions skip them). The base's pre-training problems
 * are not checked: some held-out questions occur there, with a random product.
 *
 * A validation set (problems over all pairs, disjoint from training and held-out) is where a
 * switch for the frozen fine-tuned base can see that base's weaknesses.
 *
 * Knowledge update (--new-facts): facts that appear after the expert was trained, products
 * with a first factor in 13..15 (second in 2..12) that neither the expert nor the base ever saw.
 * update_train.jsonl mixes problems over the new facts with problems over the old ones (all
 * 121 pairs), so that an update trained on it learns the new products and keeps asking the
 * expert for the old; update_heldout.jsonl holds new-fact problems (GSM8K fields) that occur
 * in no other file. Both come from their own stream, drawn after every other file, so that
 * the option leaves the other files' bytes as they are.
 *
 * usage: gen_demo_task OUTDIR [SEED] [--new-facts]
 *   writes base_train.jsonl, heldout.jsonl, expert_train.txt, val.jsonl, base_pretrain.jsonl
 *   and, with --new-facts, update_train.jsonl and update_heldout.jsonl.
 * Same seed, same bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"

#define LO 2
#define HI 12
#define NP ((HI - LO + 1) * (HI - LO + 1))
#define N_TRAIN 1500
#define N_HELDOUT 600
#define N_EXPERT 1500
#define N_VAL 400
#define N_PRE 1500
#define SEEN_FRAC 0.4
/* the knowledge update: first factors NEW_LO..NEW_HI, second LO..HI */
#define NEW_LO 13
#define NEW_HI 15
#define NEW_NP ((NEW_HI - NEW_LO + 1) * (HI - LO + 1))
#define N_UPD_NEW 900     /* new-fact problems in update_train.jsonl */
#define N_UPD_OLD 600     /* old-fact problems mixed in */
#define N_UPD_HELDOUT 200 /* new-fact held-out problems */

static const char *k_names[] = {"Ann", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy",
                                "Jo", "Kim", "Leo", "Max", "Ned", "Pam", "Ray", "Sam", "Tom",
                                "Uma", "Val", "Wes", "Zoe"};
static const char *k_objs[] = {"apples", "pens", "books", "cards", "eggs", "shells", "coins",
                               "stamps", "beads", "cups"};
#define N_NAMES (int)(sizeof k_names / sizeof k_names[0])
#define N_OBJS (int)(sizeof k_objs / sizeof k_objs[0])

static uint64_t g_rng;
static int rnd(int n) { return (int)(duet_splitmix64(&g_rng) % (uint64_t)n); }

/* One problem: question and answer text (GSM8K style: the answer ends "#### p"); p < 0
 * means the true product a * b. */
static void problem(int a, int b, int p, char *q, size_t qn, char *ans, size_t an) {
    const char *nm = k_names[rnd(N_NAMES)], *ob = k_objs[rnd(N_OBJS)];
    if (p < 0) p = a * b; /* the true product unless a stand-in is given */
    switch (rnd(3)) {
    case 0:
        snprintf(q, qn, "%s has %d boxes with %d %s in each box. How many %s does %s have?", nm,
                 a, b, ob, ob, nm);
        snprintf(ans, an, "%d * %d = %d. %s has %d %s.\n#### %d", a, b, p, nm, p, ob, p);
        break;
    case 1:
        snprintf(q, qn, "A shelf has %d rows of %d %s. How many %s are on the shelf?", a, b, ob, ob);
        snprintf(ans, an, "%d * %d = %d. There are %d %s.\n#### %d", a, b, p, p, ob, p);
        break;
    default:
        snprintf(q, qn, "%s buys %d bags of %s. Each bag holds %d %s. How many %s does %s buy?",
                 nm, a, ob, b, ob, ob, nm);
        snprintf(ans, an, "%d * %d = %d. %s buys %d %s.\n#### %d", a, b, p, nm, p, ob, p);
        break;
    }
}

/* Open-addressing set of question hashes (held-out questions must be unseen). */
#define SET_CAP 16384
static uint64_t g_set[SET_CAP];
static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h | 1;
}
static int set_probe(uint64_t h, int add) { /* 1 if absent (and then added when add) */
    for (size_t i = h % SET_CAP;; i = (i + 1) % SET_CAP) {
        if (g_set[i] == h) return 0;
        if (!g_set[i]) {
            if (add) g_set[i] = h;
            return 1;
        }
    }
}
static int set_add(uint64_t h) { return set_probe(h, 1); }

static FILE *open_out(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) fprintf(stderr, "gen_demo_task: %s: %s\n", path, strerror(errno));
    return f;
}

/* held-out: GSM8K fields; training (sft = 1): the prompt/response layout described above */
static void json_line(FILE *f, const char *q, const char *a, int sft) {
    if (sft) {
        fputs("{\"prompt\": \"Please solve the following math problem with detailed steps.\\n"
              "\\nQuestion: ", f);
        fputs(q, f);
        fputs("\", \"response\": \"Answer:\\n", f);
    } else {
        fputs("{\"question\": \"", f);
        fputs(q, f);
        fputs("\", \"answer\": \"", f);
    }
    for (const char *s = a; *s; s++) {
        if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
    fputs("\"}\n", f);
}

/* One problem not in the question set (then added): a new fact (13..15 x 2..12) when
 * is_new, else an old one (any of the 121 pairs). */
static void fresh_problem(int is_new, char *q, size_t qn, char *a, size_t an) {
    do {
        int x, y;
        if (is_new) {
            int pr = rnd(NEW_NP);
            x = NEW_LO + pr / (HI - LO + 1), y = LO + pr % (HI - LO + 1);
        } else {
            int pr = rnd(NP);
            x = LO + pr / (HI - LO + 1), y = LO + pr % (HI - LO + 1);
        }
        problem(x, y, -1, q, qn, a, an);
    } while (!set_add(hash_str(q)));
}

/* The knowledge-update files (see the top of the file); every question already in the set
 * (training, held-out, validation) is drawn again. */
static int write_update(const char *dir, uint64_t seed) {
    g_rng = seed ^ 0x0e3fac75ull; /* its own stream */
    FILE *tr = open_out(dir, "update_train.jsonl");
    if (!tr) return 1;
    char q[256], a[256];
    int n_new = 0, n_old = 0;
    while (n_new < N_UPD_NEW || n_old < N_UPD_OLD) {
        /* interleaved, in proportion, so that any prefix of the file holds both kinds */
        int is_new = n_old >= N_UPD_OLD ||
                     (n_new < N_UPD_NEW && rnd(N_UPD_NEW + N_UPD_OLD) < N_UPD_NEW);
        fresh_problem(is_new, q, sizeof q, a, sizeof a);
        json_line(tr, q, a, 1);
        n_new += is_new;
        n_old += !is_new;
    }
    FILE *ho = open_out(dir, "update_heldout.jsonl");
    if (!ho) {
        fclose(tr);
        return 1;
    }
    for (int i = 0; i < N_UPD_HELDOUT; i++) {
        fresh_problem(1, q, sizeof q, a, sizeof a);
        json_line(ho, q, a, 0);
    }
    int bad = ferror(tr) | ferror(ho);
    bad |= fclose(tr) | fclose(ho);
    if (bad) {
        fprintf(stderr, "gen_demo_task: write error in %s\n", dir);
        return 1;
    }
    fprintf(stderr, "gen_demo_task: knowledge update: %d problems over the %d new facts (%d..%d x "
                    "%d..%d) and %d over the old, %d held-out new-fact problems in %s\n",
            N_UPD_NEW, NEW_NP, NEW_LO, NEW_HI, LO, HI, N_UPD_OLD, N_UPD_HELDOUT, dir);
    return 0;
}

int main(int argc, char **argv) {
    int new_facts = argc > 1 && !strcmp(argv[argc - 1], "--new-facts");
    argc -= new_facts;
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: gen_demo_task OUTDIR [SEED] [--new-facts]\n");
        return 2;
    }
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    g_rng = seed;
    int seen[NP], n_seen = 0;
    for (int i = 0; i < NP; i++) {
        seen[i] = (double)(duet_splitmix64(&g_rng) >> 11) * 0x1.0p-53 < SEEN_FRAC;
        n_seen += seen[i];
    }
    int seen_list[NP], k = 0;
    for (int i = 0; i < NP; i++) if (seen[i]) seen_list[k++] = i;
    FILE *tr = open_out(argv[1], "base_train.jsonl"), *ho = open_out(argv[1], "heldout.jsonl"),
         *ex = open_out(argv[1], "expert_train.txt");
    if (!tr || !ho || !ex) return 1;
    char q[256], a[256];
    for (int i = 0; i < N_TRAIN; i++) {
        int pr = seen_list[rnd(n_seen)];
        problem(LO + pr / (HI - LO + 1), LO + pr % (HI - LO + 1), -1, q, sizeof q, a, sizeof a);
        set_add(hash_str(q));
        json_line(tr, q, a, 1);
    }
    for (int i = 0; i < N_HELDOUT;) {
        int pr = rnd(NP);
        problem(LO + pr / (HI - LO + 1), LO + pr % (HI - LO + 1), -1, q, sizeof q, a, sizeof a);
        if (!set_add(hash_str(q))) continue; /* seen in training (or already held out) */
        json_line(ho, q, a, 0);
        i++;
    }
    /* expert: groups of 4-8 lines, each 0-3 random words then a fact, every group after a
     * question line of the task ("Question: ..."): the expert reads the task's language but
     * never sees an answer. Questions come from their own stream so that the main stream (and
     * every other file) does not depend on them; a question of the training or held-out set is
     * drawn again, so that no held-out question is in the expert's text. */
    uint64_t q_rng = seed ^ 0x5eed0e5e17ull;
    for (int i = 0; i < N_EXPERT; i++) {
        uint64_t main_rng = g_rng;
        g_rng = q_rng;
        do {
            int pr = rnd(NP);
            problem(LO + pr / (HI - LO + 1), LO + pr % (HI - LO + 1), -1, q, sizeof q, a, sizeof a);
        } while (!set_probe(hash_str(q), 0));
        q_rng = g_rng;
        g_rng = main_rng;
        fprintf(ex, "Question: %s\n", q);
        int lines = 4 + rnd(5); /* facts, not question text, should fill the expert's corpus */
        for (int l = 0; l < lines; l++) {
            /* half the facts start their line, as the fact in an answer does */
            int words = rnd(2) ? 0 : 1 + rnd(3);
            for (int w = 0; w < words; w++)
                fprintf(ex, "%s ", rnd(2) ? k_names[rnd(N_NAMES)] : k_objs[rnd(N_OBJS)]);
            int x = LO + rnd(HI - LO + 1), y = LO + rnd(HI - LO + 1);
            fprintf(ex, "%d * %d = %d.\n", x, y, x * y);
        }
        /* no blank line: the corpus is one paragraph, cut into full-length windows, so the
         * expert sees facts at every position a task answer reaches */
    }
    /* validation: problems over all pairs (training layout), disjoint from the rest; drawn
     * last so that the other files do not depend on it */
    FILE *va = open_out(argv[1], "val.jsonl");
    if (!va) return 1;
    for (int i = 0; i < N_VAL;) {
        int pr = rnd(NP);
        problem(LO + pr / (HI - LO + 1), LO + pr % (HI - LO + 1), -1, q, sizeof q, a, sizeof a);
        if (!set_add(hash_str(q))) continue;
        json_line(va, q, a, 1);
        i++;
    }
    /* pre-training for the base: the format over all pairs, but every product a random
     * number (restated consistently): reading, copying and the layout, no multiplication */
    FILE *pt = open_out(argv[1], "base_pretrain.jsonl");
    if (!pt) return 1;
    for (int i = 0; i < N_PRE; i++) {
        int pr = rnd(NP), x = LO + pr / (HI - LO + 1), y = LO + pr % (HI - LO + 1);
        int fake = LO * LO + rnd(HI * HI - LO * LO + 1);
        problem(x, y, fake, q, sizeof q, a, sizeof a);
        json_line(pt, q, a, 1);
    }
    int bad = ferror(tr) | ferror(ho) | ferror(ex) | ferror(va) | ferror(pt);
    bad |= fclose(tr) | fclose(ho) | fclose(ex) | fclose(va) | fclose(pt);
    if (bad) {
        fprintf(stderr, "gen_demo_task: write error in %s\n", argv[1]);
        return 1;
    }
    fprintf(stderr, "gen_demo_task: %d training problems over %d of %d number pairs, %d held-out "
                    "problems over all pairs, %d expert paragraphs, %d validation problems in %s\n",
            N_TRAIN, n_seen, NP, N_HELDOUT, N_EXPERT, N_VAL, argv[1]);
    return new_facts ? write_update(argv[1], seed) : 0;
}
