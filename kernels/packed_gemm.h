/* Part of the sgemm template (included by sgemm_kernel.h, once per instruction set). */

/* The α² products of a block, one per call: Mx (Mp × ncols, row stride ldc) = U · V, with U
 * pre-packed as ember_sgemm packs A (MR-row micro-panels: element (m, c) at (m/MR)·C·MR + c·MR
 * + m%MR, Mp a multiple of MR, zero rows past M) and V written by the input transform as it
 * packs B (element (c, t) at (t/NR)·C·NR + c·NR + t%NR, ncols a multiple of NR): so no packing
 * at all, just the micro-kernel over L2-sized A blocks and L1-sized B micro-panels. */
static void ember_packed_gemm_here(const float *U, const float *V, float *Mx, int Mp, int C,
                                   int ncols, long ldc)
{
    for (int k0 = 0; k0 < C; k0 += EMBER_KC) {
        int kc = C - k0 < EMBER_KC ? C - k0 : EMBER_KC;
        for (int i0 = 0; i0 < Mp; i0 += EMBER_MC) {
            int i1 = i0 + EMBER_MC < Mp ? i0 + EMBER_MC : Mp;
            for (int jp = 0; jp < ncols; jp += EMBER_NR) {
                const float *b = V + (long)jp * C + (long)k0 * EMBER_NR;
                for (int ir = i0; ir < i1; ir += EMBER_MR)
                    ember_ukr(kc, U + (long)ir * C + (long)k0 * EMBER_MR, b,
                              Mx + (long)ir * ldc + jp, ldc, 1.0f, k0 > 0);
            }
        }
    }
}
