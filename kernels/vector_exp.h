/* Fragment of the templates (activation_kernel.h includes it, once per instruction set):
 * selects, expf, σ, tanhf and erff on vectors of the level (ember_vf, isa_target.h). Forced
 * inline: GCC otherwise kept ember_vexp out of line (one call per vector, its constants
 * reloaded each time, and σ's two exps of the same argument computed twice), ~3× the cost. */

typedef int32_t ember_vi32 __attribute__((vector_size(EMBER_VW * 4)));

/* lanes of a where mask is set (all ones), else of b */
static inline ember_vf ember_vblend(ember_vi32 mask, ember_vf a, ember_vf b)
{
    return (ember_vf)(((ember_vi32)a & mask) | ((ember_vi32)b & ~mask));
}

/* expf on a vector, within 1 ulp of exp (Cephes' expf: exp(x) = 2ⁿ·exp(r), r = x − n·ln 2 in
 * [−ln2/2, ln2/2], a degree-7 polynomial for exp(r)): overflow gives inf, underflow rounds
 * through the subnormals to 0, NaN passes through (checked against exp in double on 4M values
 * spanning [−100, 100], ±inf, NaN and random bit patterns). 2ⁿ is built as two factors, so
 * that n down to −150 (the subnormals) and up to 128 (overflow) need no special case. */
static inline __attribute__((always_inline)) ember_vf ember_vexp(ember_vf x)
{
    const ember_vf lo = ember_vsplat(-104.0f), hi = ember_vsplat(89.0f);
    ember_vf xc = ember_vblend(x < lo, lo, x);
    xc = ember_vblend(xc > hi, hi, xc);
    /* n = round(x·log2 e): adding 1.5·2²³ rounds to an integer in the low mantissa bits */
    const ember_vf magic = ember_vsplat(12582912.0f);
    const ember_vf n = (xc * 1.44269504088896341f + magic) - magic;
    const ember_vf r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    ember_vf p = ember_vsplat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const ember_vi32 ni = __builtin_convertvector(n, ember_vi32);
    const ember_vi32 n1 = ni >> 1, n2 = ni - n1;
    const ember_vf s1 = (ember_vf)((n1 + 127) << 23), s2 = (ember_vf)((n2 + 127) << 23);
    const ember_vf e = p * s1 * s2;
    return ember_vblend(x != x, x, e);
}

/* the logistic σ(x) on a vector, stable on both sides from one exp: e = exp(−|x|), σ = 1/(1 + e)
 * for x ≥ 0, e/(1 + e) below */
static inline __attribute__((always_inline)) ember_vf ember_vsigmoid(ember_vf v)
{
    const ember_vf one = ember_vsplat(1.0f);
    const ember_vi32 nonneg = v >= ember_vsplat(0.0f);
    const ember_vf e = ember_vexp(ember_vblend(nonneg, -v, v));
    return ember_vblend(nonneg, one, e) / (one + e);
}

/* tanhf on a vector (Cephes' tanhf), on |x| with x's sign put back: an odd polynomial below
 * |x| = 0.625, where 1 − 2/(e²ˣ + 1) would cancel, that formula above (1 once e²ˣ overflows);
 * NaN and −0 pass through. */
static inline __attribute__((always_inline)) ember_vf ember_vtanh(ember_vf x)
{
    const ember_vi32 sign = (ember_vi32){0} + INT32_MIN;
    const ember_vf ax = (ember_vf)((ember_vi32)x & ~sign);
    const ember_vf z = ax * ax;
    ember_vf p = ember_vsplat(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const ember_vf small = p * z * ax + ax;
    const ember_vf big = 1.0f - 2.0f / (ember_vexp(ax + ax) + 1.0f);
    const ember_vf t = ember_vblend(ax >= 0.625f, big, small);
    return (ember_vf)((ember_vi32)t | ((ember_vi32)x & sign));
}

/* erff on a vector, faithfully rounded (the approximation onnxruntime's MLAS uses, from N.
 * Juffa's erff): below |x| = 0.921875, x + x·P(x²); above it, 1 − exp(−(|x| + |x|·Q(|x|))) with
 * x's sign put back (Q of degree 6; erf reaches 1 in float32 past 3.92 by itself, and ±inf
 * gives ±1); NaN passes through. Its error against erf in double is measured in
 * tests/test_kernels.py over a dense sweep. */
static inline __attribute__((always_inline)) ember_vf ember_verf(ember_vf x)
{
    const ember_vi32 sign = (ember_vi32){0} + INT32_MIN;
    const ember_vf t = (ember_vf)((ember_vi32)x & ~sign);
    const ember_vf s = x * x;
    ember_vf r = ember_vsplat(-5.99104969e-4f);
    r = r * s + 4.99339588e-3f;
    r = r * s - 2.67667342e-2f;
    r = r * s + 1.12818025e-1f;
    r = r * s - 3.76124859e-1f;
    r = r * s + 1.28379151e-1f;
    const ember_vf small = r * x + x;
    ember_vf q = ember_vsplat(1.72948930e-5f);
    q = q * t - 3.83208680e-4f;
    q = q * t + 3.88393435e-3f;
    q = q * t - 2.42545605e-2f;
    q = q * t + 1.06777847e-1f;
    q = q * t + 6.34846687e-1f;
    q = q * t + 1.28717512e-1f;
    q = q * t + t;
    const ember_vf big = 1.0f - ember_vexp(-q);
    const ember_vf signed_big = (ember_vf)((ember_vi32)big | ((ember_vi32)x & sign));
    const ember_vf e = ember_vblend(t >= 0.921875f, signed_big, small);
    return ember_vblend(x != x, x, e);
}
