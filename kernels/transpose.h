/* A float block transposed, dst[c·ldd + r] = src[r·lds + c]: 4 × 4 tiles through vector shuffles
 * (GCC vector extensions, so any target; SSE2 on the x86-64 baseline), the ragged edges one by
 * one. The packed convolution turns its pixel-major C' back into NCHW planes with it. Plain C
 * (no per-ISA template): it moves data, and 4-wide shuffles already keep up with the stores. */
#ifndef EMBER_TRANSPOSE_H
#define EMBER_TRANSPOSE_H

typedef float ember_v4 __attribute__((vector_size(16), aligned(4), may_alias));

static inline void ember_transpose4x4(const float *s, long lds, float *d, long ldd)
{
    const ember_v4 a = *(const ember_v4 *)s, b = *(const ember_v4 *)(s + lds),
                   c = *(const ember_v4 *)(s + 2 * lds), e = *(const ember_v4 *)(s + 3 * lds);
    const ember_v4 ab01 = __builtin_shufflevector(a, b, 0, 4, 1, 5);
    const ember_v4 ab23 = __builtin_shufflevector(a, b, 2, 6, 3, 7);
    const ember_v4 ce01 = __builtin_shufflevector(c, e, 0, 4, 1, 5);
    const ember_v4 ce23 = __builtin_shufflevector(c, e, 2, 6, 3, 7);
    *(ember_v4 *)d = __builtin_shufflevector(ab01, ce01, 0, 1, 4, 5);
    *(ember_v4 *)(d + ldd) = __builtin_shufflevector(ab01, ce01, 2, 3, 6, 7);
    *(ember_v4 *)(d + 2 * ldd) = __builtin_shufflevector(ab23, ce23, 0, 1, 4, 5);
    *(ember_v4 *)(d + 3 * ldd) = __builtin_shufflevector(ab23, ce23, 2, 3, 6, 7);
}

/* dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols */
static inline void ember_transpose(const float *src, long lds, float *dst, long ldd, long rows,
                                   long cols)
{
    long r = 0, c;
    for (; r + 4 <= rows; r += 4) {
        for (c = 0; c + 4 <= cols; c += 4)
            ember_transpose4x4(src + r * lds + c, lds, dst + c * ldd + r, ldd);
        for (; c < cols; ++c)
            for (long i = r; i < r + 4; ++i) dst[c * ldd + i] = src[i * lds + c];
    }
    for (; r < rows; ++r)
        for (c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

#endif
