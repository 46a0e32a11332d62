/* Test-only: the AVX-512 kernels' source (16-float vectors, 32-column GEMM panels, 16-channel
 * blocks) compiled for AVX2, where GCC splits each 512-bit vector into two 256-bit halves. It
 * lets a machine without AVX-512 run the AVX-512 path's logic against the numpy twins
 * (EMBER_ISA=avx512-on-avx2); only the compiler's AVX-512 code generation stays unexercised. */
#define EMBER_ISA_LEVEL EMBER_ISA_AVX512
#define EMBER_ISA_TARGET_LEVEL EMBER_ISA_AVX2
#define EMBER_SIMD_NAME ember_simd_avx512_on_avx2
#include "simd_instance.h"
