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

/* The same product with V row-major (C × ncols, row stride ldv; ncols any: the last panel's
 * ragged columns through the narrow kernels), read in place by the strided micro-kernel: Winograd's V, whose rows its input transform writes a run of tiles at a time
 * (ldv chosen by the caller so that the rows do not pile into a few L1 sets). */
static void ember_packed_gemm_strided_here(const float *U, const float *V, long ldv, float *Mx,
                                           int Mp, int C, int ncols, long ldc)
{
    for (int k0 = 0; k0 < C; k0 += EMBER_KC) {
        int kc = C - k0 < EMBER_KC ? C - k0 : EMBER_KC;
        for (int i0 = 0; i0 < Mp; i0 += EMBER_MC) {
            int i1 = i0 + EMBER_MC < Mp ? i0 + EMBER_MC : Mp;
            for (int jp = 0; jp < ncols; jp += EMBER_NR) {
                const float *b = V + (long)k0 * ldv + jp;
                const int nr = ncols - jp < EMBER_NR ? ncols - jp : EMBER_NR;
                for (int ir = i0; ir < i1; ir += EMBER_MR) {
                    const float *a = U + (long)ir * C + (long)k0 * EMBER_MR;
                    float *c = Mx + (long)ir * ldc + jp;
                    if (nr == EMBER_NR)
                        ember_ukr_strided(kc, a, b, ldv, c, ldc, 1.0f, k0 > 0);
                    else   /* the ragged last panel as narrow as it allows (16 tiles: half) */
                        ember_ukr_edge(kc, a, b, ldv, c, ldc, EMBER_MR, nr, 1.0f, k0 > 0);
                }
            }
        }
    }
}

/* The same product with V pre-packed in K slices (the packed convolution's weights): slice s
 * holds rows [s·KC, s·KC + kc) of all ldv columns as NR-column micro-panels of kc·NR floats one
 * after the other, so a whole call reads the weights front to back, and every micro-panel a
 * task needs in one slice is next to the one before. Mx (rows × ncols, row stride ldc) = U ·
 * columns [j0, j0 + ncols) of V (j0, ncols multiples of NR), U as in ember_packed_gemm_here. */
static void ember_packed_gemm_sliced_here(const float *U, const float *V, long ldv, int j0,
                                          float *Mx, int rows, int K, int ncols, long ldc)
{
    for (int k0 = 0; k0 < K; k0 += EMBER_KC) {
        int kc = K - k0 < EMBER_KC ? K - k0 : EMBER_KC;
        const float *slice = V + (long)k0 * ldv;
        for (int i0 = 0; i0 < rows; i0 += EMBER_MC) {
            int i1 = i0 + EMBER_MC < rows ? i0 + EMBER_MC : rows;
            for (int jp = 0; jp < ncols; jp += EMBER_NR) {
                const float *b = slice + (long)(j0 + jp) * kc;
                /* the next micro-panel (the next in memory) is fetched into L2 a share per
                 * micro-kernel call, so the weights stream while the FMAs run */
                const char *next = (const char *)(b + (long)kc * EMBER_NR);
                const long lines = (long)kc * EMBER_NR * 4 / 64;
                const long calls = (i1 - i0 + EMBER_MR - 1) / EMBER_MR;
                const long share = (lines + calls - 1) / calls;
                long line = 0;
                for (int ir = i0; ir < i1; ir += EMBER_MR) {
                    for (long l = 0; l < share && line < lines; ++l, ++line)
                        __builtin_prefetch(next + line * 64, 0, 2);
                    ember_ukr(kc, U + (long)ir * K + (long)k0 * EMBER_MR, b,
                              Mx + (long)ir * ldc + jp, ldc, 1.0f, k0 > 0);
                }
            }
        }
    }
}
