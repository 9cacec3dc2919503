/*
 * svg.c: a plain SVG line plot written by hand (see svg.h). The axes span "nice" tick
 * ranges (steps of 1, 2 or 5 times a power of ten) around all finite points.
 */
#include "base/svg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *k_colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

static void xml_text(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A tick step of 1, 2 or 5 x 10^k near range/5, and the axis [lo, hi] it spans. */
static double nice_axis(double mn, double mx, double *lo, double *hi) {
    if (!(mx > mn)) { /* one value: open a window around it */
        double pad = mn != 0 ? fabs(mn) * 0.1 : 1;
        mn -= pad;
        mx += pad;
    }
    double raw = (mx - mn) / 5, mag = pow(10, floor(log10(raw))), r = raw / mag;
    double step = (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
    *lo = floor(mn / step + 1e-9) * step;
    *hi = ceil(mx / step - 1e-9) * step;
    if (*hi <= *lo) *hi = *lo + step;
    return step;
}

static int decimals(double step) {
    int d = 0;
    while (d < 8 && fabs(step * pow(10, d) - round(step * pow(10, d))) > 1e-6) d++;
    return d;
}

typedef struct ord { double x; int i; } ord;
static int ord_cmp(const void *a, const void *b) {
    const ord *p = a, *q = b;
    return (p->x > q->x) - (p->x < q->x);
}

int svg_line_plot(const svg_plot *plot, const svg_series *series, int n_series, char **out,
                  size_t *len) {
    *out = NULL;
    *len = 0;
    int W = plot->width > 0 ? plot->width : 640, H = plot->height > 0 ? plot->height : 420;
    double L = 78, R = 24, T = 44, B = 58, pw = W - L - R, ph = H - T - B;
    double xmn = INFINITY, xmx = -INFINITY, ymn = INFINITY, ymx = -INFINITY;
    for (int s = 0; s < n_series; s++)
        for (int i = 0; i < series[s].n; i++) {
            double x = series[s].x[i], y = series[s].y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            xmn = fmin(xmn, x), xmx = fmax(xmx, x), ymn = fmin(ymn, y), ymx = fmax(ymx, y);
        }
    if (!(xmn <= xmx)) xmn = 0, xmx = 1, ymn = 0, ymx = 1; /* nothing to draw: empty axes */
    if (plot->fixed_x && plot->x_hi > plot->x_lo) xmn = plot->x_lo, xmx = plot->x_hi;
    if (plot->fixed_y && plot->y_hi > plot->y_lo) ymn = plot->y_lo, ymx = plot->y_hi;
    double x0, x1, y0, y1, xs = nice_axis(xmn, xmx, &x0, &x1), ys = nice_axis(ymn, ymx, &y0, &y1);
    FILE *f = open_memstream(out, len);
    if (!f) return -1;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * pw)
#define PY(v) (T + ph - ((v) - y0) / (y1 - y0) * ph)
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H, W, H);
    fprintf(f, "<text x=\"%.1f\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">", W / 2.0);
    xml_text(f, plot->title);
    fputs("</text>\n<g stroke=\"#e0e0e0\" stroke-width=\"1\">\n", f);
    int xd = decimals(xs), yd = decimals(ys);
    for (double v = x0; v <= x1 + xs * 1e-6; v += xs)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", PX(v), T, PX(v), T + ph);
    for (double v = y0; v <= y1 + ys * 1e-6; v += ys)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", L, PY(v), L + pw, PY(v));
    fprintf(f, "</g>\n<g stroke=\"black\" stroke-width=\"1.2\">\n"
               "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
               "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n</g>\n",
            L, T + ph, L + pw, T + ph, L, T, L, T + ph);
    fputs("<g text-anchor=\"middle\">\n", f);
    for (double v = x0; v <= x1 + xs * 1e-6; v += xs)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%.*f</text>\n", PX(v), T + ph + 18, xd, fabs(v) < xs * 1e-9 ? 0.0 : v);
    fputs("</g>\n<g text-anchor=\"end\">\n", f);
    for (double v = y0; v <= y1 + ys * 1e-6; v += ys)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%.*f</text>\n", L - 6, PY(v) + 4, yd, fabs(v) < ys * 1e-9 ? 0.0 : v);
    fprintf(f, "</g>\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", L + pw / 2, (double)H - 14);
    xml_text(f, plot->xlabel);
    fprintf(f, "</text>\n<text x=\"18\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 18 %.1f)\">",
            T + ph / 2, T + ph / 2);
    xml_text(f, plot->ylabel);
    fputs("</text>\n", f);
    int n_legend = 0;
    for (int s = 0; s < n_series; s++) {
        const svg_series *se = &series[s];
        const char *col = k_colors[s % (int)(sizeof k_colors / sizeof k_colors[0])];
        ord *o = malloc((size_t)(se->n > 0 ? se->n : 1) * sizeof *o);
        if (!o) { fclose(f); free(*out); *out = NULL; return -1; }
        int m = 0;
        for (int i = 0; i < se->n; i++)
            if (isfinite(se->x[i]) && isfinite(se->y[i])) o[m++] = (ord){se->x[i], i};
        qsort(o, (size_t)m, sizeof *o, ord_cmp);
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (int k = 0; k < m; k++)
            fprintf(f, "%s%.1f,%.1f", k ? " " : "", PX(o[k].x), PY(se->y[o[k].i]));
        fprintf(f, "\"/>\n<g fill=\"%s\">\n", col);
        for (int k = 0; k < m; k++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\"/>\n", PX(o[k].x), PY(se->y[o[k].i]));
        fputs("</g>\n", f);
        int h = se->highlight;
        if (h >= 0 && h < se->n && isfinite(se->x[h]) && isfinite(se->y[h])) {
            double hx = PX(se->x[h]), hy = PY(se->y[h]);
            int left = hx > L + pw - 60; /* keep the label inside the plot */
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"8\" fill=\"none\" stroke=\"#d62728\" "
                       "stroke-width=\"2\"/>\n<text x=\"%.1f\" y=\"%.1f\" fill=\"#d62728\" "
                       "text-anchor=\"%s\">chosen</text>\n",
                    hx, hy, left ? hx - 10 : hx + 10, hy < T + 20 ? hy + 22 : hy - 10, left ? "end" : "start");
        }
        if (se->name) {
            double ly = T + 14 + 16 * n_legend++;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>"
                       "<text x=\"%.1f\" y=\"%.1f\">", L + pw - 150, ly, L + pw - 130, ly, col, L + pw - 124, ly + 4);
            xml_text(f, se->name);
            fputs("</text>\n", f);
        }
        free(o);
    }
#undef PX
#undef PY
    fputs("</svg>\n", f);
    if (fclose(f) != 0) { free(*out); *out = NULL; return -1; }
    return 0;
}
