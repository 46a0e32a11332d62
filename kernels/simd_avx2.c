/* Every dispatched kernel compiled for AVX2 + FMA. */
#define EMBER_ISA_LEVEL EMBER_ISA_AVX2
#define EMBER_SIMD_NAME ember_simd_avx2
#include "simd_instance.h"
