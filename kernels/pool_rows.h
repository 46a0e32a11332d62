/* Row primitives for max pooling, in C so that `restrict` tells the compiler the output row
 * and the input row never overlap: the NaN-propagating max then vectorises as a blend. */
#ifndef EMBER_POOL_ROWS_H
#define EMBER_POOL_ROWS_H

/* y[i] = max(y[i], r[i*stride]) for i < n; a NaN in either wins. */
static inline void ember_max_row(float *restrict y, const float *restrict r, int n, int stride)
{
    if (stride == 1) {
        for (int i = 0; i < n; ++i) {
            float v = r[i], m = y[i];
            y[i] = (v > m) | (v != v) ? v : m;
        }
    } else if (stride == 2) {
        for (int i = 0; i < n; ++i) {
            float v = r[2 * i], m = y[i];
            y[i] = (v > m) | (v != v) ? v : m;
        }
    } else {
        for (int i = 0; i < n; ++i) {
            float v = r[(long)i * stride], m = y[i];
            y[i] = (v > m) | (v != v) ? v : m;
        }
    }
}
#endif
