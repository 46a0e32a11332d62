/* Dropout's counter-based draw (graph/ops/tensor.py's ``dropout_keep`` is the same in numpy):
 * 32-bit integer hashes, since AVX2 has 32-bit multiplies but not 64-bit ones, so the mask loop
 * (elementwise_kernel.h) vectorises. */
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

/* The draw u ∈ [0, 2²⁴) of element i (its low 32 bits; salt = k2 ^ its high 32 bits): the top
 * 24 bits of lowbias32(lowbias32(i ^ k1) + salt). */
static inline uint32_t ember_dropout_draw(uint32_t i_low, uint32_t k1, uint32_t salt)
{
    return ember_lowbias32(ember_lowbias32(i_low ^ k1) + salt) >> 8;
}
#endif
