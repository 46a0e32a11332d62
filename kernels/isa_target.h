/* Compiles the rest of a translation unit for one instruction set (EMBER_ISA_LEVEL, and
 * EMBER_ISA_TARGET_LEVEL when the code of one level is to run on a lower machine: the test-only
 * "avx512-on-avx2" instance runs the AVX-512 kernels' source on an AVX2 machine).
 *
 * Why a pragma: setuptools gives an extension one set of compiler flags, so -mavx2 or
 * -mavx512f cannot be given to one source file; `#pragma GCC target` (clang: `#pragma clang
 * attribute`) gives every function defined after it that target, and the intrinsics headers
 * are included first, as GCC wants. Defines for the templates:
 *   EMBER_VW   floats in one vector register of the level (4, 8 or 16)
 * Code written with GCC vector extensions of EMBER_VW floats is the same source on every level;
 * only the AVX2 micro-kernel keeps its hand-written intrinsics. */
#ifndef EMBER_ISA_TARGET_H
#define EMBER_ISA_TARGET_H

#include "isa.h"

#ifndef EMBER_ISA_LEVEL
#error "define EMBER_ISA_LEVEL before including isa_target.h"
#endif
#ifndef EMBER_ISA_TARGET_LEVEL
#define EMBER_ISA_TARGET_LEVEL EMBER_ISA_LEVEL
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(EMBER_X86)
#include <immintrin.h>
#if EMBER_ISA_TARGET_LEVEL == EMBER_ISA_AVX2
#define EMBER_TARGET_STRING "avx,avx2,fma,f16c,bmi,bmi2,popcnt"
#elif EMBER_ISA_TARGET_LEVEL == EMBER_ISA_AVX512
#define EMBER_TARGET_STRING \
    "avx,avx2,fma,f16c,bmi,bmi2,popcnt,avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512"
#endif
#endif

#ifdef EMBER_TARGET_STRING
#if defined(__clang__)
#define EMBER_PRAGMA(x) _Pragma(#x)
#define EMBER_CLANG_TARGET(s) EMBER_PRAGMA(clang attribute push(__attribute__((target(s))), \
                                                                  apply_to = function))
EMBER_CLANG_TARGET(EMBER_TARGET_STRING)
#define EMBER_TARGET_POP _Pragma("clang attribute pop")
#else
#pragma GCC push_options
#define EMBER_PRAGMA(x) _Pragma(#x)
#define EMBER_GCC_TARGET(s) EMBER_PRAGMA(GCC target(s))
EMBER_GCC_TARGET(EMBER_TARGET_STRING)
#define EMBER_TARGET_POP _Pragma("GCC pop_options")
#endif
#else
#define EMBER_TARGET_POP
#endif

#if EMBER_ISA_LEVEL == EMBER_ISA_AVX512
#define EMBER_VW 16
#elif EMBER_ISA_LEVEL == EMBER_ISA_AVX2
#define EMBER_VW 8
#else
#define EMBER_VW 4
#endif

/* A vector of EMBER_VW floats, loads and stores at any float alignment. */
typedef float ember_vf __attribute__((vector_size(EMBER_VW * 4), aligned(4)));

static inline ember_vf ember_vload(const float *p) { return *(const ember_vf *)p; }
static inline void ember_vstore(float *p, ember_vf v) { *(ember_vf *)p = v; }
static inline ember_vf ember_vsplat(float s) { return (ember_vf){0} + s; }

#endif
