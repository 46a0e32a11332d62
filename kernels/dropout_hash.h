/* Dropout's counter-based mask, in C so the loop vectorises: 32-bit integer hashes (AVX2 has
 * 32-bit multiplies, not 64-bit ones), no branch, restrict-qualified rows. */
#ifndef EMBER_DROPOUT_HASH_H
#define EMBER_DROPOUT_HASH_H

#include <stdint.h>

/* A 32-bit integer hash with low bias (C. Wellons' "lowbias32" constants). */
static inline uint32_t ember_lowbias32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352DU;
    x ^= x >> 15;
    x *= 0x846CA68BU;
    return x ^ (x >> 16);
}

/* Elements [first, first + n) (n ≤ 2³², not straddling a multiple of 2³²): u = top 24 bits of
 * lowbias32(lowbias32(i ^ k1) + (k2 ^ i_high)); keep (mask 1, y = x·scale) when u ≥ threshold,
 * else mask 0 and y = 0. */
static void ember_dropout_span(const float *restrict x, float *restrict y,
                               uint8_t *restrict mask, long first, long n, uint32_t k1,
                               uint32_t k2, uint32_t threshold, float scale)
{
    const uint32_t lo = (uint32_t)first, salt = k2 ^ (uint32_t)(first >> 32);
    for (long j = 0; j < n; ++j) {
        const uint32_t h = ember_lowbias32(ember_lowbias32((lo + (uint32_t)j) ^ k1) + salt);
        const uint32_t keep = (h >> 8) >= threshold;
        mask[j] = (uint8_t)keep;
        y[j] = x[j] * (keep ? scale : 0.0f);
    }
}
#endif
