/*
 * threadpool.c: persistent pthread pool (see threadpool.h).
 * A job is published by bumping `generation`; workers spin on it for a short while (decode
 * issues hundreds of small jobs per token, and a condvar wake-up costs tens of
 * microseconds), then sleep on the condvar. `pending` counts workers still running the job.
 */
#include "base/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ITERS 200000 /* ~ a few hundred microseconds of pause instructions */

struct threadpool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint generation;
    atomic_int pending;
    atomic_int stop;
    tp_fn fn;
    void *ctx;
};

typedef struct { threadpool *tp; int ith; } worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    threadpool *tp = a->tp;
    int ith = a->ith;
    free(a);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&tp->generation, memory_order_acquire)) == seen &&
               !atomic_load(&tp->stop)) {
            if (++spins < SPIN_ITERS) {
                if (spins % 1024) CPU_RELAX();
                else sched_yield(); /* let a descheduled caller run on an oversubscribed CPU */
                continue;
            }
            pthread_mutex_lock(&tp->mu);
            while (atomic_load(&tp->generation) == seen && !atomic_load(&tp->stop))
                pthread_cond_wait(&tp->cv, &tp->mu);
            pthread_mutex_unlock(&tp->mu);
        }
        if (atomic_load(&tp->stop)) return NULL;
        seen = g;
        tp->fn(tp->ctx, ith, tp->n);
        atomic_fetch_sub_explicit(&tp->pending, 1, memory_order_release);
    }
}

/* Pools are shared per thread count (refcounted): a base and an expert loaded with the same
 * n_threads use one set of workers. With a pool each, the idle model's workers spun on the
 * same cores while the other model computed (measured 1.1-1.5x slower interleaved decode). */
static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static threadpool *g_reg[8];
static int g_reg_refs[8];

static threadpool *tp_create(int n_threads);

threadpool *tp_new(int n_threads) {
    if (n_threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = c > 0 ? (int)c : 1;
    }
    if (n_threads > 256) n_threads = 256;
    pthread_mutex_lock(&g_reg_mu);
    threadpool *tp = NULL;
    int free_slot = -1;
    for (int i = 0; i < 8 && !tp; i++) {
        if (g_reg[i] && g_reg[i]->n == n_threads) { tp = g_reg[i]; g_reg_refs[i]++; }
        else if (!g_reg[i] && free_slot < 0) free_slot = i;
    }
    if (!tp && (tp = tp_create(n_threads)) && free_slot >= 0) {
        g_reg[free_slot] = tp;
        g_reg_refs[free_slot] = 1;
    }
    pthread_mutex_unlock(&g_reg_mu);
    return tp;
}

static void tp_destroy(threadpool *tp);

void tp_free(threadpool *tp) {
    if (!tp) return;
    pthread_mutex_lock(&g_reg_mu);
    int last = 1;
    for (int i = 0; i < 8; i++)
        if (g_reg[i] == tp) {
            last = --g_reg_refs[i] == 0;
            if (last) g_reg[i] = NULL;
        }
    pthread_mutex_unlock(&g_reg_mu);
    if (last) tp_destroy(tp);
}

static threadpool *tp_create(int n_threads) {
    threadpool *tp = calloc(1, sizeof *tp);
    if (!tp) return NULL;
    tp->n = n_threads;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->cv, NULL);
    tp->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!tp->threads) { free(tp); return NULL; }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a) { tp->n = i; tp_destroy(tp); return NULL; }
        a->tp = tp;
        a->ith = i;
        if (pthread_create(&tp->threads[i], NULL, worker, a) != 0) {
            free(a);
            tp->n = i;
            tp_destroy(tp);
            return NULL;
        }
    }
    return tp;
}

static void tp_destroy(threadpool *tp) {
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->stop, 1);
    pthread_cond_broadcast(&tp->cv);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 1; i < tp->n; i++) pthread_join(tp->threads[i], NULL);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->cv);
    free(tp->threads);
    free(tp);
}

int tp_n_threads(const threadpool *tp) { return tp ? tp->n : 1; }

void tp_run(threadpool *tp, tp_fn fn, void *ctx) {
    if (!tp || tp->n == 1) { fn(ctx, 0, 1); return; }
    tp->fn = fn;
    tp->ctx = ctx;
    atomic_store(&tp->pending, tp->n - 1);
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add_explicit(&tp->generation, 1, memory_order_release);
    pthread_cond_broadcast(&tp->cv);
    pthread_mutex_unlock(&tp->mu);
    fn(ctx, 0, tp->n);
    /* A worker that was descheduled (more runnable threads than cores) would make a pure
     * spin burn the whole time slice it needs: yield once the wait is no longer short. */
    for (int spins = 0; atomic_load_explicit(&tp->pending, memory_order_acquire) > 0;)
        if (++spins < 2048) CPU_RELAX();
        else sched_yield();
}
