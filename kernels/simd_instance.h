/* One level's table: the including file defines EMBER_ISA_LEVEL (and EMBER_SIMD_NAME, and for
 * the test-only instance EMBER_ISA_TARGET_LEVEL); everything below is compiled for that level.
 * A template (*_kernel.h) defines its functions `static` and ends with its family's table
 * `ember_<family>_here`, so the same names compile once per translation unit. */
#include "isa_target.h"

#if EMBER_ISA_TARGET_LEVEL != EMBER_ISA_GENERIC && !defined(EMBER_X86)
/* not an x86 build: only the generic table exists */
#include "simd.h"
const ember_simd EMBER_SIMD_NAME = {.name = "unavailable", .isa = -1, .needs = EMBER_ISA_TARGET_LEVEL};
#else

#include "simd.h"
#include "activation_kernel.h"
#include "elementwise_kernel.h"
#include "sgemm_kernel.h"
#include "winograd_kernel.h"
#include "pool_kernel.h"
#include "sums_kernel.h"
#include "depthwise_kernel.h"
#include "conv_direct_kernel.h"

#if EMBER_ISA_LEVEL != EMBER_ISA_TARGET_LEVEL
#define EMBER_SIMD_LABEL "avx512-on-avx2"
#elif EMBER_ISA_LEVEL == EMBER_ISA_AVX512
#define EMBER_SIMD_LABEL "avx512"
#elif EMBER_ISA_LEVEL == EMBER_ISA_AVX2
#define EMBER_SIMD_LABEL "avx2"
#else
#define EMBER_SIMD_LABEL "generic"
#endif

const ember_simd EMBER_SIMD_NAME = {
    .name = EMBER_SIMD_LABEL,
    .isa = EMBER_ISA_LEVEL,
    .needs = EMBER_ISA_TARGET_LEVEL,
    .sgemm = &ember_sgemm_here,
    .activation = &ember_activation_here,
    .winograd = &ember_winograd_here,
    .pool = &ember_pool_here,
    .sums = &ember_sums_here,
    .elementwise = &ember_elementwise_here,
    .depthwise = &ember_depthwise_here,
    .conv_direct = &ember_conv_direct_here,
    .threads = &ember_thread_pool_instance,
};

EMBER_TARGET_POP
#endif
