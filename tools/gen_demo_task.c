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
 *  - expert: pre-trained on plain text of multiplication facts ("7 * 8 = 56") among random
 *    words, every pair, never a question or an answer: it knows the facts, not the format.
 * Held-out problems draw pairs from all 121, and no held-out question appears in training.
 *
 * usage: gen_demo_task OUTDIR [SEED]   writes base_train.jsonl, heldout.jsonl, expert_train.txt
 * Same seed, same bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define LO 2
#define HI 12
#define NP ((HI - LO + 1) * (HI - LO + 1))
#define N_TRAIN 1500
#define N_HELDOUT 600
#define N_EXPERT 3000
#define SEEN_FRAC 0.4

static const char *k_names[] = {"Ann", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy",
                                "Jo", "Kim", "Leo", "Max", "Ned", "Pam", "Ray", "Sam", "Tom",
                                "Uma", "Val", "Wes", "Zoe"};
static const char *k_objs[] = {"apples", "pens", "books", "cards", "eggs", "shells", "coins",
                               "stamps", "beads", "cups"};
#define N_NAMES (int)(sizeof k_names / sizeof k_names[0])
#define N_OBJS (int)(sizeof k_objs / sizeof k_objs[0])

static uint64_t g_rng;
static int rnd(int n) { return (int)(duet_splitmix64(&g_rng) % (uint64_t)n); }

/* One problem: question and answer text (GSM8K style: the answer ends "#### p"). */
static void problem(int a, int b, char *q, size_t qn, char *ans, size_t an) {
    const char *nm = k_names[rnd(N_NAMES)], *ob = k_objs[rnd(N_OBJS)];
    int p = a * b;
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
static int set_add(uint64_t h) { /* 1 if newly added */
    for (size_t i = h % SET_CAP;; i = (i + 1) % SET_CAP) {
        if (g_set[i] == h) return 0;
        if (!g_set[i]) { g_set[i] = h; return 1; }
    }
}

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

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: gen_demo_task OUTDIR [SEED]\n");
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
        problem(LO + pr / (HI - LO + 1), LO + pr % (HI - LO + 1), q, sizeof q, a, sizeof a);
        set_add(hash_str(q));
        json_line(tr, q, a, 1);
    }
    for (int i = 0; i < N_HELDOUT;) {
        int pr = rnd(NP);
        problem(LO + pr / (HI - LO + 1), LO + pr % (HI - LO + 1), q, sizeof q, a, sizeof a);
        if (!set_add(hash_str(q))) continue; /* seen in training (or already held out) */
        json_line(ho, q, a, 0);
        i++;
    }
    /* expert: paragraphs of 1-3 lines, each a few random words then a fact */
    for (int i = 0; i < N_EXPERT; i++) {
        int lines = 1 + rnd(3);
        for (int l = 0; l < lines; l++) {
            int words = rnd(4);
            for (int w = 0; w < words; w++)
                fprintf(ex, "%s ", rnd(2) ? k_names[rnd(N_NAMES)] : k_objs[rnd(N_OBJS)]);
            int x = LO + rnd(HI - LO + 1), y = LO + rnd(HI - LO + 1);
            fprintf(ex, "%d * %d = %d.\n", x, y, x * y);
        }
        fputc('\n', ex);
    }
    int bad = ferror(tr) | ferror(ho) | ferror(ex);
    bad |= fclose(tr) | fclose(ho) | fclose(ex);
    if (bad) {
        fprintf(stderr, "gen_demo_task: write error in %s\n", argv[1]);
        return 1;
    }
    fprintf(stderr, "gen_demo_task: %d training problems over %d of %d number pairs, %d held-out "
                    "problems over all pairs, %d expert paragraphs in %s\n", N_TRAIN, n_seen, NP,
            N_HELDOUT, N_EXPERT, argv[1]);
    return 0;
}
