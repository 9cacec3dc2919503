/*
 * svg.h: a plain hand-written SVG line plot (internal): axes with "nice" ticks, labels, one
 * polyline with markers per series, an optional highlighted point, a legend. No libraries.
 */
#ifndef DUET_SVG_H
#define DUET_SVG_H

#include <stddef.h>

typedef struct svg_series {
    const char *name;      /* legend entry (NULL: no legend for this series) */
    const double *x, *y;   /* [n] points, drawn in order of x; non-finite points are skipped */
    int n;
    int highlight;         /* index of a point to mark (e.g. the chosen one), -1 for none */
} svg_series;

typedef struct svg_plot {
    const char *title, *xlabel, *ylabel;
    int width, height;     /* pixels (0: 640 x 420) */
    int fixed_x, fixed_y;  /* 1: that axis spans [lo, hi] (e.g. 0..1 for fractions) */
    double x_lo, x_hi, y_lo, y_hi;
} svg_plot;

/* The SVG document as a NUL-terminated malloc'd string (*out, length *len); 0 on success,
 * -1 when out of memory. Text is XML-escaped. */
int svg_line_plot(const svg_plot *plot, const svg_series *series, int n_series, char **out,
                  size_t *len);

#endif
