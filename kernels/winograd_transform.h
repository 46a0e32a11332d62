/* Winograd F(m×m, 3×3) tile transforms (m = 2: 4×4 tiles, m = 4: 6×6 tiles), Lavin & Gray's
 * matrices. The input and output transforms run on a *strip*: nt consecutive tiles of one tile
 * row of one channel plane, vectorised over the tiles, so they cost a few vector passes instead
 * of scalar work per tile; they are the template winograd_kernel.h (one instance per instruction
 * set). Here: the strip size and the weight transform, which runs once per weight.
 *
 *   input:   V[ξ = p·α + q][l] = (Bᵀ · d_l · B)[p][q]   d_l = the α×α patch of tile l (zero-padded)
 *   output:  Y_l = Aᵀ · M_l · A (+ bias), written into the m output rows of y
 *   weights: U[ξ] = (G · g · Gᵀ)[p][q], computed in double, stored float
 */
#ifndef EMBER_WINOGRAD_TRANSFORM_H
#define EMBER_WINOGRAD_TRANSFORM_H

#define EMBER_WINO_NT 64 /* tiles per strip (stack buffers are sized for this) */

static const double ember_wino_g2[4][3] = {
    {1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};

static const double ember_wino_g4[6][3] = {
    {1.0 / 4, 0, 0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0, 0, 1}};

/* U[ξ·us] = (G · g · Gᵀ)[ξ] of one 3×3 filter g (row-major, or flipped 180° when flip). */
static void ember_wino_weight(int m, const float *g, int flip, float *U, long us)
{
    const int alpha = m + 2;
    const double *G = m == 2 ? &ember_wino_g2[0][0] : &ember_wino_g4[0][0];
    double f[3][3], tmp[6][3];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) f[i][j] = flip ? g[(2 - i) * 3 + (2 - j)] : g[i * 3 + j];
    for (int p = 0; p < alpha; ++p)
        for (int j = 0; j < 3; ++j)
            tmp[p][j] = G[p * 3] * f[0][j] + G[p * 3 + 1] * f[1][j] + G[p * 3 + 2] * f[2][j];
    for (int p = 0; p < alpha; ++p)
        for (int q = 0; q < alpha; ++q)
            U[(long)(p * alpha + q) * us] = (float)(tmp[p][0] * G[q * 3] + tmp[p][1] * G[q * 3 + 1] +
                                                    tmp[p][2] * G[q * 3 + 2]);
}

#endif
