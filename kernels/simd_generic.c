/* Every dispatched kernel compiled for the baseline instruction set (any x86-64 or aarch64). */
#define EMBER_ISA_LEVEL EMBER_ISA_GENERIC
#define EMBER_SIMD_NAME ember_simd_generic
#include "simd_instance.h"
