/* progress.c: the progress line's text (see duet.h, progress text). */
#include "base/common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

/* Appends formatted text at s->len without ever writing past cap; len keeps counting what
 * did not fit, so the caller learns the whole length. */
typedef struct sink { char *buf; size_t cap, len; } sink;

__attribute__((format(printf, 2, 3))) static void put(sink *s, const char *fmt, ...) {
    size_t room = s->len < s->cap ? s->cap - s->len : 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(room ? s->buf + s->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) s->len += (size_t)n;
}

size_t duet_format_eta(char *buf, size_t cap, double seconds) {
    sink s = {buf, cap, 0};
    if (cap) buf[0] = 0;
    /* 1e9 s is three decades: past it the estimate says nothing, and the bound keeps the
     * conversion to an integer defined. */
    if (!(seconds >= 0 && seconds < 1e9)) {
        put(&s, "ETA ?");
        return s.len;
    }
    long long t = (long long)floor(seconds + 0.5);
    long long h = t / 3600, m = t / 60 % 60, sec = t % 60;
    if (h) put(&s, "ETA %lld:%02lld:%02lld", h, m, sec);
    else put(&s, "ETA %lld:%02lld", m, sec);
    return s.len;
}

size_t duet_format_progress(char *buf, size_t cap, const duet_progress_line *l) {
    sink s = {buf, cap, 0};
    if (cap) buf[0] = 0;
    const char *unit = l->unit ? l->unit : "", *sp = *unit ? " " : "";
    if (l->label && *l->label) put(&s, "%s: ", l->label);
    put(&s, "%lld/%lld%s%s, ", l->done, l->total, sp, unit);
    double work = (double)(l->done - l->done0);
    double rate = l->elapsed > 0 && work > 0 ? work / l->elapsed : NAN;
    if (isnan(rate)) put(&s, "?");
    else put(&s, rate < 10 ? "%.2f" : rate < 100 ? "%.1f" : "%.0f", rate);
    put(&s, "%s%s/s, ", sp, unit);
    /* A finished run needs no rate to know that nothing is left. */
    double left = (double)(l->total - l->done);
    char eta[32];
    duet_format_eta(eta, sizeof eta, left <= 0 ? 0 : isnan(rate) ? NAN : left / rate);
    put(&s, "%s", eta);
    if (l->extra && *l->extra) put(&s, ", %s", l->extra);
    return s.len;
}
