/* Template (compiled once per instruction set, see simd_instance.h): ember's single-precision
 * GEMM core, packed, cache-blocked, register-blocked. Reached through the sgemm table of
 * simd.h (ember_sgemm, ember_sgemm_im2col, ember_packed_gemm).
 *
 * The micro-kernel per level: AVX2, hand-written FMA intrinsics (6 x 16: 12 ymm accumulators);
 * AVX-512 and generic, one 6-row x 2-vector kernel in GCC vector extensions (6 x 32 in zmm; 6 x 16
 * as two 6 x 8 passes in xmm), which is also what lets the test-only avx512-on-avx2 instance run
 * the AVX-512 kernel's logic.
 *
 * Blocking (BLIS order): C is cut into tasks of MC rows x up-to-NC columns, handed out to the
 * thread pool; a task walks K in KC slices, packs its A block (MC x KC, stays in L2) and its B
 * block (KC x nc, streamed one NR-wide micro-panel at a time through L1) into per-thread
 * buffers allocated once per thread (thread-local, 64-byte aligned) and reused by every call.
 * A row-major B is not packed at all: its full NR-column panels are read in place, row after
 * row (a pointwise conv's image, whose rows are long: packing them cost a copy of the image per
 * call and won nothing back); only the ragged last panel is packed, zero-padded.
 * The optional epilogue (bias + activation, activation_kernel.h): on a full tile, when it is
 * a compare or two (ReLU, Clip, LeakyRelu, bias only), in the micro-kernel's registers before
 * the store; otherwise on each MR x NR tile right after its last K slice was stored, while the
 * tile is still in L1, or for the exp family on a whole block's rows.
 */
#define EMBER_MR 6
#if EMBER_ISA_LEVEL == EMBER_ISA_AVX512
#define EMBER_NR 32
#else
#define EMBER_NR 16
#endif
#if EMBER_ISA_LEVEL == EMBER_ISA_AVX2 && EMBER_ISA_TARGET_LEVEL == EMBER_ISA_AVX2
#define EMBER_GEMM_AVX2 1
#endif
#ifndef EMBER_MC
#define EMBER_MC 144 /* multiple of MR: A block 144 x 256 floats = 144 KiB (L2) */
#endif
#ifndef EMBER_KC
#define EMBER_KC 256 /* B micro-panel 256 x NR floats = 16 or 32 KiB (L1) */
#endif
#ifndef EMBER_NC
#define EMBER_NC 512 /* widest task, multiple of NR: B block 512 KiB (L2) */
#endif

/* Packs rows [p0, p0+kc) x columns [j0, j0+nc) of a B that is never materialised (implicit
 * im2col), in ember_pack_b's layout: NR-column micro-panels, k-major, zero-padded columns. */
typedef void (*ember_pack_b_fn)(int kc, int nc, int p0, int j0, float *pb, const void *ctx);

static __thread float *ember_tls_pack_a = NULL;
static __thread float *ember_tls_pack_b = NULL;

/* The calling thread's packing buffers, allocated on its first GEMM; NULL when out of memory. */
static int ember_pack_buffers(float **pa, float **pb)
{
    if (!ember_tls_pack_a) {
        void *p = NULL;
        if (posix_memalign(&p, 64, sizeof(float) * EMBER_MC * EMBER_KC) != 0) return 0;
        ember_tls_pack_a = (float *)p;
    }
    if (!ember_tls_pack_b) {
        void *p = NULL;
        if (posix_memalign(&p, 64, sizeof(float) * EMBER_KC * EMBER_NC) != 0) return 0;
        ember_tls_pack_b = (float *)p;
    }
    *pa = ember_tls_pack_a;
    *pb = ember_tls_pack_b;
    return 1;
}

/* op(A)[i][k] = a[i*rs + k*cs]; packed as MR-row micro-panels, k-major, zero-padded rows. */
static void ember_pack_a(int mc, int kc, const float *a, long rs, long cs, float *pa)
{
    for (int i = 0; i < mc; i += EMBER_MR) {
        int mr = mc - i < EMBER_MR ? mc - i : EMBER_MR;
        const float *src = a + (long)i * rs;
        if (mr == EMBER_MR && cs == 1) {
            const float *r0 = src, *r1 = src + rs, *r2 = src + 2 * rs, *r3 = src + 3 * rs,
                        *r4 = src + 4 * rs, *r5 = src + 5 * rs;
            for (int k = 0; k < kc; ++k) {
                pa[0] = r0[k]; pa[1] = r1[k]; pa[2] = r2[k];
                pa[3] = r3[k]; pa[4] = r4[k]; pa[5] = r5[k];
                pa += EMBER_MR;
            }
        } else {
            for (int k = 0; k < kc; ++k) {
                for (int r = 0; r < mr; ++r) pa[r] = src[r * rs + k * cs];
                for (int r = mr; r < EMBER_MR; ++r) pa[r] = 0.0f;
                pa += EMBER_MR;
            }
        }
    }
}

/* op(B)[k][j] = b[k*rs + j*cs]; packed as NR-column micro-panels, k-major, zero-padded cols. */
static void ember_pack_b(int kc, int nc, const float *b, long rs, long cs, float *pb)
{
    for (int j = 0; j < nc; j += EMBER_NR) {
        int nr = nc - j < EMBER_NR ? nc - j : EMBER_NR;
        const float *src = b + (long)j * cs;
        if (cs == 1) {
            for (int k = 0; k < kc; ++k) {
                const float *row = src + (long)k * rs;
                if (nr == EMBER_NR) {
                    memcpy(pb, row, sizeof(float) * EMBER_NR);
                } else {
                    for (int c = 0; c < nr; ++c) pb[c] = row[c];
                    for (int c = nr; c < EMBER_NR; ++c) pb[c] = 0.0f;
                }
                pb += EMBER_NR;
            }
        } else { /* transposed B: read each source row contiguously, write with stride NR */
            for (int c = 0; c < EMBER_NR; ++c) {
                float *dst = pb + c;
                if (c < nr) {
                    const float *col = src + (long)c * cs;
                    for (int k = 0; k < kc; ++k) dst[k * EMBER_NR] = col[k * rs];
                } else {
                    for (int k = 0; k < kc; ++k) dst[k * EMBER_NR] = 0.0f;
                }
            }
            pb += (long)kc * EMBER_NR;
        }
    }
}

/* What a full MR × NR tile's store applies in registers after its last K slice, for the
 * epilogues that are a compare or two: + bias (one per row or one per column), then identity,
 * ReLU, Clip or LeakyRelu — the formulas of ember_bias_act_row, so the bits are the same as
 * storing the tile and running ember_bias_act_tile on it. Saves reloading and storing every
 * tile again, which on a pointwise conv of few input channels costs a fifth of the product. */
typedef struct {
    const float *row_bias; /* MR biases of this tile's rows, or NULL */
    const float *col_bias; /* NR biases of its columns, or NULL */
    int act;
    float a, b;
} ember_tile_epi;

static inline int ember_epi_in_registers(const ember_bias_act *e)
{
    return e && (e->act == EMBER_ACT_IDENTITY || e->act == EMBER_ACT_RELU ||
                 e->act == EMBER_ACT_CLIP || e->act == EMBER_ACT_LEAKY_RELU);
}

/* V (a vector of type VT, its int twin VI) = act(V + bias) by te; COL: its first column. NaN
 * passes ReLU and Clip as in the scalar formulas (its comparisons are false). */
#define EMBER_TILE_FINISH(V, VT, VI, te, ROW, COL)                                            \
    {                                                                                         \
        if ((te)->row_bias) V += (te)->row_bias[ROW];                                         \
        if ((te)->col_bias) V += *(const VT *)((te)->col_bias + (COL));                       \
        if ((te)->act == EMBER_ACT_RELU) {                                                    \
            V = (VT)((VI)V & ~(VI)(V < 0.0f));                                                \
        } else if ((te)->act == EMBER_ACT_CLIP) {                                             \
            VT lo_ = {0}, hi_ = {0};                                                          \
            lo_ += (te)->a;                                                                   \
            hi_ += (te)->b;                                                                   \
            VI m_ = (VI)(V < lo_);                                                            \
            V = (VT)(((VI)lo_ & m_) | ((VI)V & ~m_));                                         \
            m_ = (VI)(V > hi_);                                                               \
            V = (VT)(((VI)hi_ & m_) | ((VI)V & ~m_));                                         \
        } else if ((te)->act == EMBER_ACT_LEAKY_RELU) {                                       \
            VI m_ = (VI)(V >= 0.0f);                                                          \
            VT s_ = (te)->a * V;                                                              \
            V = (VT)(((VI)V & m_) | ((VI)s_ & ~m_));                                          \
        }                                                                                     \
    }

/* c[0:MR, 0:NR] (row stride ldc) = (accumulate ? c : 0) + alpha * pa-panel . pb-panel, then
 * te's epilogue when te is not NULL */
#ifdef EMBER_GEMM_AVX2
typedef float ember_ukr_vf __attribute__((vector_size(32), aligned(4)));
typedef int ember_ukr_vi __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) void ember_ukr_ldb(
    int kc, const float *restrict a, const float *restrict b, long ldb, float *restrict c,
    long ldc, float alpha, int accumulate, const ember_tile_epi *te)
{
    for (int r = 0; r < EMBER_MR; ++r) { /* C comes from far away: start fetching it now */
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + 15), _MM_HINT_T0);
    }
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#define EMBER_UKR_STEP(A, B)                                                   \
    {                                                                          \
        __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps((B) + 8), av;     \
        av = _mm256_broadcast_ss((A) + 0);                                     \
        c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01); \
        av = _mm256_broadcast_ss((A) + 1);                                     \
        c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11); \
        av = _mm256_broadcast_ss((A) + 2);                                     \
        c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21); \
        av = _mm256_broadcast_ss((A) + 3);                                     \
        c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31); \
        av = _mm256_broadcast_ss((A) + 4);                                     \
        c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41); \
        av = _mm256_broadcast_ss((A) + 5);                                     \
        c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51); \
    }
    int k = 0;
    if (ldb == EMBER_NR) {   /* packed B: four steps an iteration, one prefetch */
        for (; k + 4 <= kc; k += 4) {
            _mm_prefetch((const char *)(b + 16 * 8), _MM_HINT_T0);
            EMBER_UKR_STEP(a, b);
            EMBER_UKR_STEP(a + 6, b + 16);
            EMBER_UKR_STEP(a + 12, b + 32);
            EMBER_UKR_STEP(a + 18, b + 48);
            a += 24;
            b += 64;
        }
    }
    /* B in place (rows ldb apart): one step an iteration — unrolled, GCC hoisted the next
     * steps' loads and spilled accumulators to the stack to make room */
#pragma GCC unroll 1
    for (; k < kc; ++k) {
        _mm_prefetch((const char *)(b + 8 * ldb), _MM_HINT_T0);
        EMBER_UKR_STEP(a, b);
        a += 6;
        b += ldb;
    }
#undef EMBER_UKR_STEP
    __m256 va = _mm256_set1_ps(alpha);
#define EMBER_UKR_STORE(ROW, X0, X1)                                                  \
    {                                                                                 \
        float *p = c + (ROW) * ldc;                                                   \
        ember_ukr_vf v0, v1;                                                          \
        if (accumulate) {                                                             \
            v0 = (ember_ukr_vf)_mm256_fmadd_ps(va, X0, _mm256_loadu_ps(p));           \
            v1 = (ember_ukr_vf)_mm256_fmadd_ps(va, X1, _mm256_loadu_ps(p + 8));       \
        } else {                                                                      \
            v0 = (ember_ukr_vf)_mm256_mul_ps(va, X0);                                 \
            v1 = (ember_ukr_vf)_mm256_mul_ps(va, X1);                                 \
        }                                                                             \
        if (te) {                                                                     \
            EMBER_TILE_FINISH(v0, ember_ukr_vf, ember_ukr_vi, te, ROW, 0)             \
            EMBER_TILE_FINISH(v1, ember_ukr_vf, ember_ukr_vi, te, ROW, 8)             \
        }                                                                             \
        _mm256_storeu_ps(p, (__m256)v0);                                              \
        _mm256_storeu_ps(p + 8, (__m256)v1);                                          \
    }
    EMBER_UKR_STORE(0, c00, c01);
    EMBER_UKR_STORE(1, c10, c11);
    EMBER_UKR_STORE(2, c20, c21);
    EMBER_UKR_STORE(3, c30, c31);
    EMBER_UKR_STORE(4, c40, c41);
    EMBER_UKR_STORE(5, c50, c51);
#undef EMBER_UKR_STORE
}
#else
/* AVX-512 and the baseline (SSE2, NEON): 6 rows x 2 vectors of GCC vector extensions, the same
 * source for both. AVX-512 covers the 6 x 32 tile in one pass (12 zmm accumulators, the
 * broadcasts folded into the FMAs); the baseline covers the 6 x 16 tile in two 6 x 8 passes, so
 * that 12 accumulators, two B vectors and the broadcast fit the 16 registers SSE2 has. */
#if EMBER_ISA_LEVEL == EMBER_ISA_AVX512
#define EMBER_UKR_VW 16
#else
#define EMBER_UKR_VW 4
#endif
typedef float ember_uv __attribute__((vector_size(EMBER_UKR_VW * 4), aligned(4)));

/* c[0:6, 0:2·VW] (accumulate ? += : =) alpha · a-panel · columns [0, 2·VW) of the B panel b,
 * whose rows are NR floats apart */
typedef int ember_uvi __attribute__((vector_size(EMBER_UKR_VW * 4)));

static inline __attribute__((always_inline)) void ember_ukr_6x2v(
    int kc, const float *restrict a, const float *restrict b, long ldb, float *restrict c,
    long ldc, float alpha, int accumulate, const ember_tile_epi *te, int col)
{
    ember_uv c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    ember_uv c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
#pragma GCC unroll 4
    for (int k = 0; k < kc; ++k) {
        __builtin_prefetch(b + 8 * ldb);
        const ember_uv b0 = *(const ember_uv *)b, b1 = *(const ember_uv *)(b + EMBER_UKR_VW);
        c00 += a[0] * b0; c01 += a[0] * b1;
        c10 += a[1] * b0; c11 += a[1] * b1;
        c20 += a[2] * b0; c21 += a[2] * b1;
        c30 += a[3] * b0; c31 += a[3] * b1;
        c40 += a[4] * b0; c41 += a[4] * b1;
        c50 += a[5] * b0; c51 += a[5] * b1;
        a += EMBER_MR;
        b += ldb;
    }
#define EMBER_UKR_STORE(ROW, X0, X1)                                                  \
    {                                                                                 \
        ember_uv *p0 = (ember_uv *)(c + (ROW) * ldc);                                 \
        ember_uv *p1 = (ember_uv *)(c + (ROW) * ldc + EMBER_UKR_VW);                  \
        ember_uv v0 = alpha * (X0), v1 = alpha * (X1);                                \
        if (accumulate) {                                                             \
            v0 = *p0 + v0;                                                            \
            v1 = *p1 + v1;                                                            \
        }                                                                             \
        if (te) {                                                                     \
            EMBER_TILE_FINISH(v0, ember_uv, ember_uvi, te, ROW, col)                  \
            EMBER_TILE_FINISH(v1, ember_uv, ember_uvi, te, ROW, col + EMBER_UKR_VW) \
                                                                                      \
        }                                                                             \
        *p0 = v0;                                                                     \
        *p1 = v1;                                                                     \
    }
    EMBER_UKR_STORE(0, c00, c01);
    EMBER_UKR_STORE(1, c10, c11);
    EMBER_UKR_STORE(2, c20, c21);
    EMBER_UKR_STORE(3, c30, c31);
    EMBER_UKR_STORE(4, c40, c41);
    EMBER_UKR_STORE(5, c50, c51);
#undef EMBER_UKR_STORE
}

static inline __attribute__((always_inline)) void ember_ukr_ldb(
    int kc, const float *restrict a, const float *restrict b, long ldb, float *restrict c,
    long ldc, float alpha, int accumulate, const ember_tile_epi *te)
{
    for (int r = 0; r < EMBER_MR; ++r) /* C comes from far away: start fetching it now */
        __builtin_prefetch(c + r * ldc);
    for (int j = 0; j < EMBER_NR; j += 2 * EMBER_UKR_VW)
        ember_ukr_6x2v(kc, a, b + j, ldb, c + j, ldc, alpha, accumulate, te, j);
}
#endif

/* The micro-kernel's entry points are kept out of line: inlined into the blocking loops, GCC
 * ran out of registers for the 12 accumulators and spilled two of them to the stack inside the
 * K loop (a store-to-load round trip on each of their FMA chains), a third of the speed. */

/* c[0:MR, 0:NR] (row stride ldc) = (accumulate ? c : 0) + alpha * pa-panel . pb-panel */
static __attribute__((noinline)) void ember_ukr(int kc, const float *restrict a,
                                                const float *restrict b, float *restrict c,
                                                long ldc, float alpha, int accumulate)
{
    ember_ukr_ldb(kc, a, b, EMBER_NR, c, ldc, alpha, accumulate, NULL);
}

/* The same over a B whose rows lie ldb floats apart */
static __attribute__((noinline)) void ember_ukr_strided(int kc, const float *restrict a,
                                                        const float *restrict b, long ldb,
                                                        float *restrict c, long ldc,
                                                        float alpha, int accumulate)
{
    ember_ukr_ldb(kc, a, b, ldb, c, ldc, alpha, accumulate, NULL);
}

/* The same, then te's epilogue */
static __attribute__((noinline)) void ember_ukr_epi(int kc, const float *restrict a,
                                                    const float *restrict b, long ldb,
                                                    float *restrict c, long ldc, float alpha,
                                                    int accumulate, const ember_tile_epi *te)
{
    ember_ukr_ldb(kc, a, b, ldb, c, ldc, alpha, accumulate, te);
}

/* Narrow micro-kernels for the ragged last panel: tile[0:MR, 0:W] (row stride NR) = alpha ·
 * a-panel · columns [0, W) of b, W = NR/2 or NR/4 floats. A 7×7 plane has 49 columns: three
 * full panels and one column, which the full kernel would compute 16 (AVX-512: 32) wide. */
#define EMBER_UKR_NARROW(NAME, W)                                                              \
    static void NAME(int kc, const float *restrict a, const float *restrict b, long ldb,       \
                     float *restrict tile, float alpha)                                        \
    {                                                                                          \
        typedef float vec __attribute__((vector_size((W) * 4), aligned(4)));                  \
        vec c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};                        \
        for (int k = 0; k < kc; ++k) {                                                         \
            const vec bv = *(const vec *)b;                                                    \
            c0 += a[0] * bv; c1 += a[1] * bv; c2 += a[2] * bv;                                 \
            c3 += a[3] * bv; c4 += a[4] * bv; c5 += a[5] * bv;                                 \
            a += EMBER_MR;                                                                     \
            b += ldb;                                                                          \
        }                                                                                      \
        *(vec *)(tile + 0 * EMBER_NR) = alpha * c0; *(vec *)(tile + 1 * EMBER_NR) = alpha * c1; \
        *(vec *)(tile + 2 * EMBER_NR) = alpha * c2; *(vec *)(tile + 3 * EMBER_NR) = alpha * c3; \
        *(vec *)(tile + 4 * EMBER_NR) = alpha * c4; *(vec *)(tile + 5 * EMBER_NR) = alpha * c5; \
    }
EMBER_UKR_NARROW(ember_ukr_half, EMBER_NR / 2)
EMBER_UKR_NARROW(ember_ukr_quarter, EMBER_NR / 4)
#undef EMBER_UKR_NARROW

/* Edge tile: a micro-kernel as narrow as nr allows into a local tile, then copy the valid
 * mr x nr part. */
static void ember_ukr_edge(int kc, const float *a, const float *b, long ldb, float *c, long ldc,
                           int mr, int nr, float alpha, int accumulate)
{
    float tile[EMBER_MR * EMBER_NR] __attribute__((aligned(64)));
    if (nr <= EMBER_NR / 4)
        ember_ukr_quarter(kc, a, b, ldb, tile, alpha);
    else if (nr <= EMBER_NR / 2)
        ember_ukr_half(kc, a, b, ldb, tile, alpha);
    else
        ember_ukr_strided(kc, a, b, ldb, tile, EMBER_NR, alpha, 0);
    for (int i = 0; i < mr; ++i) {
        float *p = c + i * ldc;
        const float *t = tile + i * EMBER_NR;
        if (accumulate)
            for (int j = 0; j < nr; ++j) p[j] += t[j];
        else
            for (int j = 0; j < nr; ++j) p[j] = t[j];
    }
}

typedef struct {
    int M, N, K;
    float alpha;
    const float *A, *B;
    long rs_a, cs_a, rs_b, cs_b;
    float *C;
    long ldc;
    int accumulate_first; /* C already holds beta*C and must be added to */
    const ember_bias_act *epi; /* NULL: nothing after the product */
    ember_pack_b_fn pack_b; /* NULL: pack from B */
    int direct_b; /* B's full panels are read in place (ember_direct_b_pays) */
    const void *pack_ctx;
    const float *packed_a; /* A packed once (ember_sgemm_packed_a), or NULL: packed per block */
} ember_gemm_args;

/* Whether the micro-kernel may read a row-major B (row stride rs floats) in place: only when a
 * KC-row micro-panel's cache lines spread over enough L1 sets that it stays in L1 while every
 * row panel of A passes over it. A row stride of 384 floats (1.5 KiB: 8 sets for 256 rows)
 * makes each load a conflict miss — 20 % slower than packing (Zen 3, 196×1536×384); where the
 * rows spread (a pointwise conv's image, a 784-float plane) reading in place is up to 15 %
 * faster. L1: 64 sets of 8 ways (32 KiB), as on the x86 cores ember targets. */
static int ember_direct_b_pays(long rs, int K)
{
    enum { SETS = 64, WAYS = 8, LINE = 64 };   /* a row of B may fill every way of its set */
    int rows = K < EMBER_KC ? K : EMBER_KC;
    unsigned char used[SETS] = {0};
    const long bytes = rs * 4;
    const int panel_lines = EMBER_NR * 4 / LINE + (bytes % LINE != 0);   /* lines a row reads */
    for (int k = 0; k < rows; ++k) {
        long first = (k * bytes) / LINE;
        for (int l = 0; l < panel_lines; ++l)
            if (++used[(first + l) % SETS] > WAYS) return 0;
    }
    return 1;
}

/* One task: columns [j0, j0+nc) of C for rows [i_begin, i_end) (cut into MC-row blocks), all of
 * K. The B block is packed once per K slice and reused by every row block. Returns 0 when out
 * of memory. */
static int ember_gemm_task(const ember_gemm_args *g, int i_begin, int i_end, int j0, int nc)
{
    float *pa, *pb;
    if (!ember_pack_buffers(&pa, &pb)) return 0;
    /* an activation of the exp family runs on a whole block's rows after its last tile: on a
     * 6 × NR tile its polynomials cannot overlap from one vector to the next */
    const int deferred = g->epi && ember_act_is_costly(g->epi->act);
    /* B row-major: full NR-column panels are read in place (row stride rs_b) */
    const int direct_b = g->direct_b;
    /* simple epilogues ride in the micro-kernel's registers (full tiles) */
    const int in_registers = ember_epi_in_registers(g->epi);
    ember_tile_epi te = {NULL, NULL, g->epi ? g->epi->act : 0, g->epi ? g->epi->act_a : 0.0f,
                         g->epi ? g->epi->act_b : 0.0f};
    const float *row_bias = g->epi && g->epi->bias && g->epi->bias_axis == 0 ? g->epi->bias : NULL;
    const float *col_bias = g->epi && g->epi->bias && g->epi->bias_axis != 0 ? g->epi->bias : NULL;
    for (int p0 = 0; p0 < g->K; p0 += EMBER_KC) {
        int kc = g->K - p0 < EMBER_KC ? g->K - p0 : EMBER_KC;
        int accumulate = p0 > 0 || g->accumulate_first;
        int last = p0 + kc >= g->K;
        const float *bsrc = g->B + (long)p0 * g->rs_b + (long)j0 * g->cs_b;
        const int nfull = direct_b ? nc / EMBER_NR * EMBER_NR : 0;
        if (g->pack_b)
            g->pack_b(kc, nc, p0, j0, pb, g->pack_ctx);
        else if (direct_b) {   /* only the ragged last panel is packed */
            if (nfull < nc)
                ember_pack_b(kc, nc - nfull, bsrc + nfull, g->rs_b, 1, pb + (long)nfull * kc);
        } else
            ember_pack_b(kc, nc, bsrc, g->rs_b, g->cs_b, pb);
        for (int i0 = i_begin; i0 < i_end; i0 += EMBER_MC) {
            int mc = i_end - i0 < EMBER_MC ? i_end - i0 : EMBER_MC;
            if (!g->packed_a)
                ember_pack_a(mc, kc, g->A + (long)i0 * g->rs_a + (long)p0 * g->cs_a, g->rs_a,
                             g->cs_a, pa);
            for (int jr = 0; jr < nc; jr += EMBER_NR) {
                int nr = nc - jr < EMBER_NR ? nc - jr : EMBER_NR;
                const int direct = jr < nfull;
                const float *bp = direct ? bsrc + jr : pb + (long)jr * kc;
                for (int ir = 0; ir < mc; ir += EMBER_MR) {
                    int mr = mc - ir < EMBER_MR ? mc - ir : EMBER_MR;
                    float *c = g->C + (long)(i0 + ir) * g->ldc + j0 + jr;
                    /* a pre-packed A: the panel of rows i0 + ir, its K slice from p0 */
                    const float *ap = g->packed_a
                                          ? g->packed_a + (long)(i0 + ir) * g->K + (long)p0 * EMBER_MR
                                          : pa + (long)ir * kc;
                    const int full = mr == EMBER_MR && nr == EMBER_NR;
                    if (full && last && in_registers) {
                        te.row_bias = row_bias ? row_bias + i0 + ir : NULL;
                        te.col_bias = col_bias ? col_bias + j0 + jr : NULL;
                        ember_ukr_epi(kc, ap, bp, direct ? g->rs_b : EMBER_NR, c, g->ldc,
                                      g->alpha, accumulate, &te);
                        continue;
                    }
                    if (direct && mr == EMBER_MR)
                        ember_ukr_strided(kc, ap, bp, g->rs_b, c, g->ldc, g->alpha,
                                          accumulate);
                    else if (full)
                        ember_ukr(kc, ap, bp, c, g->ldc, g->alpha, accumulate);
                    else
                        ember_ukr_edge(kc, ap, bp, direct ? g->rs_b : EMBER_NR, c, g->ldc, mr,
                                       nr, g->alpha, accumulate);
                    if (last && g->epi && !deferred)
                        ember_bias_act_tile(c, g->ldc, mr, nr, i0 + ir, j0 + jr, g->epi);
                }
            }
            if (last && g->epi && deferred)   /* the block's rows, whole, while in L2 */
                ember_bias_act_tile(g->C + (long)i0 * g->ldc + j0, g->ldc, mc, nc, i0, j0,
                                    g->epi);
        }
    }
    return 1;
}

/* Rows [j0, j1) of one output row i for tiny M (gemv-like: FC layers at batch 1), where packing
 * B would cost more than the product. B(k, j) = b[k*rs + j*cs]. Returns nothing; C holds the
 * finished alpha*AB + beta*C for those columns afterwards. */
static void ember_small_m_cols(const ember_gemm_args *g, int i, int j0, int j1, float beta)
{
    const float *a = g->A + (long)i * g->rs_a;
    float *c = g->C + (long)i * g->ldc;
    const int K = g->K;
    if (g->cs_b != 1) { /* B^T stored N x K: one contiguous dot product per column */
        for (int j = j0; j < j1; ++j) {
            const float *bj = g->B + (long)j * g->cs_b;
            int k = 0;
            float acc = 0.0f;
            if (g->cs_a == 1 && g->rs_b == 1) {
                ember_vf s0 = {0}, s1 = {0};
                for (; k + 2 * EMBER_VW <= K; k += 2 * EMBER_VW) {
                    s0 += ember_vload(a + k) * ember_vload(bj + k);
                    s1 += ember_vload(a + k + EMBER_VW) * ember_vload(bj + k + EMBER_VW);
                }
                s0 += s1;
                for (int l = 0; l < EMBER_VW; ++l) acc += s0[l];
            }
            for (; k < K; ++k) acc += a[(long)k * g->cs_a] * bj[(long)k * g->rs_b];
            c[j] = g->alpha * acc + (beta == 0.0f ? 0.0f : beta * c[j]);
        }
    } else { /* B stored K x N: accumulate rows of B into a local strip (axpy) */
        float strip[256];
        for (int jb = j0; jb < j1; jb += 256) {
            int n = j1 - jb < 256 ? j1 - jb : 256;
            for (int j = 0; j < n; ++j) strip[j] = 0.0f;
            for (int k = 0; k < K; ++k) {
                float av = a[(long)k * g->cs_a];
                const float *bk = g->B + (long)k * g->rs_b + jb;
                for (int j = 0; j < n; ++j) strip[j] += av * bk[j];
            }
            for (int j = 0; j < n; ++j)
                c[jb + j] = g->alpha * strip[j] + (beta == 0.0f ? 0.0f : beta * c[jb + j]);
        }
    }
    if (g->epi) ember_bias_act_tile(c + j0, g->ldc, 1, j1 - j0, i, j0, g->epi);
}

/* The pool's tasks (thread_pool.h) for ember_sgemm_ex's two parallel loops. */
typedef struct {
    const ember_gemm_args *g;
    int chunk, nchunks, N;
    float beta;
    int ok;
} ember_small_m_job;

static void ember_small_m_task(void *ctx, long t, int worker)
{
    const ember_small_m_job *job = (const ember_small_m_job *)ctx;
    int i = (int)(t / job->nchunks), j0 = (int)(t % job->nchunks) * job->chunk;
    (void)worker;
    ember_small_m_cols(job->g, i, j0, j0 + job->chunk < job->N ? j0 + job->chunk : job->N,
                       job->beta);
}

typedef struct {
    const ember_gemm_args *g;
    int mchunks, rows_per, nc;
    _Atomic int ok;
} ember_gemm_job;

static void ember_gemm_job_task(void *ctx, long t, int worker)
{
    ember_gemm_job *job = (ember_gemm_job *)ctx;
    const ember_gemm_args *g = job->g;
    int jb = (int)(t / job->mchunks), mcnk = (int)(t % job->mchunks);
    int i0 = mcnk * job->rows_per, i1 = i0 + job->rows_per < g->M ? i0 + job->rows_per : g->M;
    int j0 = jb * job->nc;
    (void)worker;
    if (!ember_gemm_task(g, i0, i1, j0, g->N - j0 < job->nc ? g->N - j0 : job->nc))
        job->ok = 0;
}

/* C = epi(alpha * op(A) op(B) + beta * C). op(A) is M x K, op(B) K x N, C row-major (ldc).
 * A is stored M x K (lda) or, when trans_a, K x M (lda); B likewise. When beta == 0, C is not
 * read. Uses at most nthreads threads of the pool. Returns 0 on allocation failure, 1 otherwise. */
static int ember_sgemm_ex(int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const float *A, long lda, const float *B, long ldb, float beta,
                          float *C, long ldc, const ember_bias_act *epi, int nthreads,
                          ember_pack_b_fn pack_b, const void *pack_ctx, const float *packed_a)
{
    if (M <= 0 || N <= 0) return 1;
    if (nthreads < 1) nthreads = 1;
    if ((double)M * N * (K > 0 ? K : 1) < 48.0 * 48.0 * 48.0) nthreads = 1; /* not worth a team */
    int overwrite_first = beta == 0.0f && K > 0 && alpha != 0.0f;
    if (beta != 1.0f && !overwrite_first) { /* C <- beta*C once; every K slice accumulates */
        for (int i = 0; i < M; ++i) {
            float *row = C + (long)i * ldc;
            if (beta == 0.0f)
                memset(row, 0, sizeof(float) * N);
            else
                for (int j = 0; j < N; ++j) row[j] *= beta;
        }
    }
    if (K <= 0 || alpha == 0.0f) {
        if (epi)
            for (int i = 0; i < M; i += EMBER_MR)
                for (int j = 0; j < N; j += EMBER_NR)
                    ember_bias_act_tile(C + (long)i * ldc + j, ldc,
                                        M - i < EMBER_MR ? M - i : EMBER_MR,
                                        N - j < EMBER_NR ? N - j : EMBER_NR, i, j, epi);
        return 1;
    }
    ember_gemm_args g;
    g.M = M; g.N = N; g.K = K; g.alpha = alpha; g.A = A; g.B = B;
    g.rs_a = trans_a ? 1 : lda; g.cs_a = trans_a ? lda : 1;
    g.rs_b = trans_b ? 1 : ldb; g.cs_b = trans_b ? ldb : 1;
    g.C = C; g.ldc = ldc; g.accumulate_first = !overwrite_first; /* else C holds beta*C */
    g.epi = epi;
    g.pack_b = pack_b; g.pack_ctx = pack_ctx;
    g.direct_b = 0;
    g.packed_a = packed_a;

    if (M <= 4 && !pack_b && !packed_a) { /* gemv-like: no packing, split the columns over the team */
        float eff_beta = overwrite_first ? 0.0f : 1.0f; /* else C already holds beta*C */
        int chunk = 256;
        int nchunks = (N + chunk - 1) / chunk;
        if (nthreads == 1 || nchunks == 1) {
            for (int i = 0; i < M; ++i) ember_small_m_cols(&g, i, 0, N, eff_beta);
            return 1;
        }
        ember_small_m_job job = {&g, chunk, nchunks, N, eff_beta, 1};
        ember_pool_run(nthreads, (long)nchunks * M, ember_small_m_task, &job);
        return 1;
    }

    g.direct_b = !pack_b && g.cs_b == 1 && ember_direct_b_pays(g.rs_b, K);

    /* Tasks: column blocks (B packed once per task and K slice), split further into row chunks
     * only when there are too few column blocks to feed the team. Row chunks are cut at MR
     * granularity, not MC: with a small N (a 7x7 or 14x14 plane) and M = 160, whole MC blocks
     * would give one thread 144 rows and the other 16. */
    int want = nthreads > 1 ? 2 * nthreads : 1;
    int nc = EMBER_NC;
    int nb = (N + nc - 1) / nc;
    while (nb < want && nc > 8 * EMBER_NR) {
        nc = ((nc / 2 + EMBER_NR - 1) / EMBER_NR) * EMBER_NR;
        nb = (N + nc - 1) / nc;
    }
    if (nthreads == 1 && nb == 1 && N < EMBER_NC) nc = N;
    int mpanels = (M + EMBER_MR - 1) / EMBER_MR;
    int mchunks = nb >= want ? 1 : (want + nb - 1) / nb;
    if (mchunks > mpanels) mchunks = mpanels;
    int rows_per = ((mpanels + mchunks - 1) / mchunks) * EMBER_MR;
    mchunks = (M + rows_per - 1) / rows_per;
    long ntasks = (long)nb * mchunks;
    int ok = 1;
    if (nthreads == 1 || ntasks == 1) {
        for (long t = 0; t < ntasks && ok; ++t) {
            int jb = (int)(t / mchunks), mcnk = (int)(t % mchunks);
            int i0 = mcnk * rows_per, i1 = i0 + rows_per < M ? i0 + rows_per : M;
            int j0 = jb * nc;
            ok = ember_gemm_task(&g, i0, i1, j0, N - j0 < nc ? N - j0 : nc);
        }
        return ok;
    }
    ember_gemm_job job = {&g, mchunks, rows_per, nc, 1};
    ember_pool_run(nthreads, ntasks, ember_gemm_job_task, &job);
    return job.ok;
}

/* The table's GEMM: B is a real matrix. */
static int ember_sgemm_here_fn(int trans_a, int trans_b, int M, int N, int K, float alpha,
                            const float *A, long lda, const float *B, long ldb, float beta,
                            float *C, long ldc, const ember_bias_act *epi, int nthreads)
{
    return ember_sgemm_ex(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, epi,
                          nthreads, NULL, NULL, NULL);
}

/* C (M × N, ldc) = epi(Ap · B): A packed once in MR-row micro-panels over the whole K (element
 * (m, k) at (m/MR)·K·MR + k·MR + m%MR, zero rows up to a multiple of MR — Winograd's U layout),
 * B row-major (ldb). A pointwise conv's weights: packing them on every call cost a sixth of a
 * 7×7-plane layer's time. */
static int ember_sgemm_packed_a_here(int M, int N, int K, const float *Ap, const float *B,
                                     long ldb, float *C, long ldc, const ember_bias_act *epi,
                                     int nthreads)
{
    return ember_sgemm_ex(0, 0, M, N, K, 1.0f, NULL, K, B, ldb, 0.0f, C, ldc, epi, nthreads,
                          NULL, NULL, Ap);
}

#include "conv_pack.h"
#include "packed_gemm.h"

/* The conv GEMM: B = im2col(src), packed panel by panel straight from the image. */
static int ember_sgemm_im2col_here(int M, int N, int K, const float *A, long lda, float beta,
                                   float *C, long ldc, const ember_bias_act *epi, int nthreads,
                                   const ember_im2col_src *src)
{
    return ember_sgemm_ex(0, 0, M, N, K, 1.0f, A, lda, NULL, N, beta, C, ldc, epi, nthreads,
                          ember_pack_b_im2col, src, NULL);
}

static const struct ember_sgemm_kernels ember_sgemm_here = {
    .mr = EMBER_MR, .nr = EMBER_NR, .mc = EMBER_MC, .kc = EMBER_KC, .nc = EMBER_NC,
    .sgemm = ember_sgemm_here_fn,
    .sgemm_im2col = ember_sgemm_im2col_here,
    .sgemm_packed_a = ember_sgemm_packed_a_here,
    .packed_gemm = ember_packed_gemm_here,
    .packed_gemm_sliced = ember_packed_gemm_sliced_here,
    .packed_gemm_strided = ember_packed_gemm_strided_here,
};
