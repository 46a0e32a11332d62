/* Which instruction set the dispatched kernels run: the best one the CPU *and* the OS support,
 * or a lower one asked for with EMBER_ISA=generic|avx2|avx512.
 *
 * Why both CPUID and XGETBV: a CPU may have AVX-512 units while the OS does not save the zmm
 * and mask registers on a context switch (an old kernel, some hypervisors); executing an
 * AVX-512 instruction there faults. So a level counts only when CPUID reports the instructions
 * and XCR0 reports the register state enabled (AVX: bits 1-2; AVX-512: bits 5-7 as well).
 *
 * The choice is made once, when ember.kernels.simd is imported (kernels/simd.pyx): the best
 * level ember_cpu_isa() reports, or the lower one EMBER_ISA asks for (a higher one is an
 * error there, never clamped silently). */
#ifndef EMBER_ISA_H
#define EMBER_ISA_H

#include <stdlib.h>
#include <string.h>

/* the levels (macros, not an enum: the templates compare them in #if) */
#define EMBER_ISA_GENERIC 0 /* baseline x86-64 (SSE2) or any other architecture: plain C */
#define EMBER_ISA_AVX2 1    /* AVX2 + FMA (Haswell, Zen and later) */
#define EMBER_ISA_AVX512 2  /* AVX-512 F, VL, BW, DQ (Skylake-SP, Ice Lake, Zen 4 and later) */

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define EMBER_X86 1
#include <cpuid.h>

static inline unsigned long long ember_xgetbv0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

/* The best level this CPU and OS can run. */
static inline int ember_cpu_isa(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return EMBER_ISA_GENERIC;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx || !fma) return EMBER_ISA_GENERIC;
    const unsigned long long xcr0 = ember_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return EMBER_ISA_GENERIC; /* xmm + ymm state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return EMBER_ISA_GENERIC;
    const int avx2 = (b >> 5) & 1;
    if (!avx2) return EMBER_ISA_GENERIC;
    const int avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1,
              avx512vl = (b >> 31) & 1;
    if (avx512f && avx512dq && avx512bw && avx512vl && (xcr0 & 0xe6) == 0xe6)
        return EMBER_ISA_AVX512; /* + opmask, upper zmm0-15, zmm16-31 state */
    return EMBER_ISA_AVX2;
}
#else
static inline int ember_cpu_isa(void) { return EMBER_ISA_GENERIC; }
#endif

#endif
