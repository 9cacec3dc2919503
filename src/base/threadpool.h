/*
 * threadpool.h: a persistent pthread pool. tp_run(pool, fn, ctx) calls fn(ctx, ith, nth)
 * once on each of nth threads (the caller is thread 0) and returns when all are done.
 * Workers spin briefly after each job (decode issues many small jobs back to back), then
 * sleep on a condition variable, so an idle pool costs no CPU.
 */
#ifndef DUET_THREADPOOL_H
#define DUET_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*tp_fn)(void *ctx, int ith, int nth);

/* n_threads <= 0: number of online CPUs. NULL on failure. Pools are shared per thread
 * count and refcounted: tp_new may return a pool another caller holds, so two holders of one
 * pool must not call tp_run at the same time. */
threadpool *tp_new(int n_threads);
void tp_free(threadpool *tp);
int tp_n_threads(const threadpool *tp);
/* Run fn on all threads; tp may be NULL (runs fn(ctx, 0, 1) on the caller). Not reentrant. */
void tp_run(threadpool *tp, tp_fn fn, void *ctx);

/* Split [0, n) into nth near-equal contiguous parts; part ith is [*lo, *hi). */
static inline void tp_split(long n, int ith, int nth, long *lo, long *hi) {
    long per = n / nth, rem = n % nth;
    *lo = ith * per + (ith < rem ? ith : rem);
    *hi = *lo + per + (ith < rem ? 1 : 0);
}

#endif
