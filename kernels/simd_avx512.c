/* Every dispatched kernel compiled for AVX-512 (F, VL, BW, DQ). */
#define EMBER_ISA_LEVEL EMBER_ISA_AVX512
#define EMBER_SIMD_NAME ember_simd_avx512
#include "simd_instance.h"
