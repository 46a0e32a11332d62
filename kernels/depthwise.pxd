# The depthwise plane kernels: geometry and buffer sizes (depthwise.h), and the kernels, compiled
# per instruction set and reached through the dispatch table (simd.h; a module calling them
# runs simd.use_simd() at import). Shared by conv (forward) and conv_grad (gradients).
from kernels.conv_common cimport ConvShape


cdef extern from "depthwise.h" nogil:
    ctypedef struct ember_dw_geom:
        int H, W, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl, ih_step, iw_step, Hq, Wq
        const long *tap
    float *ember_dw_alloc(long n)
    void ember_dw_init(ember_dw_geom *g)
    void ember_dw_set_taps(ember_dw_geom *g, long *tap)
    long ember_dw_buffer_floats(const ember_dw_geom *g)
    ember_dw_geom ember_dw_input_grad_geom(const ember_dw_geom *fwd)


cdef extern from "simd.h" nogil:
    # the channel-group kernels (ember_dw8_*) interleave ember_dw_group() channels, one
    # vector of the instruction set in use: 4 (baseline), 8 (AVX2) or 16 (AVX-512)
    int ember_dw_group()
    int ember_dw_forward_plane(const ember_dw_geom *g, const float *x, const float *w, float bv,
                               float *y, float *buf, int act, float a, float b)
    void ember_dw_input_grad_plane(const ember_dw_geom *g, const float *dy, const float *w,
                                   float *dx, float *buf)
    void ember_dw_weight_grad_plane(const ember_dw_geom *g, const float *x, const float *dy,
                                    double *acc, float *buf)
    long ember_dw8_buffer_floats(const ember_dw_geom *g)
    int ember_dw8_forward(const ember_dw_geom *g, const float *x, long plane_in, const float *w,
                          const float *bias, float *y, long plane_out, int nch, float *buf,
                          int act, float a, float b)
    long ember_dw8_grad_buffer_floats(const ember_dw_geom *g)
    void ember_dw8_weight_grad(const ember_dw_geom *g, const float *x, long plane_in,
                               const float *dy, long plane_out, int nch, float *buf,
                               double *acc)
    void ember_dw8_input_grad_scatter(const ember_dw_geom *g, const float *dy, long plane_out,
                                      const float *w, float *dx, long plane_in, int nch,
                                      float *buf)


cdef inline ember_dw_geom dw_geom(ConvShape *s) noexcept nogil:
    """The forward geometry of one plane of the depthwise conv s."""
    cdef ember_dw_geom g
    g.H = s.H; g.W = s.W; g.OH = s.OH; g.OW = s.OW; g.KH = s.KH; g.KW = s.KW
    g.sh = s.sh; g.sw = s.sw; g.dh = s.dh; g.dw = s.dw; g.pt = s.pt; g.pl = s.pl
    g.ih_step = 1; g.iw_step = 1; g.tap = NULL
    ember_dw_init(&g)
    return g


cdef enum:
    # Depthwise planes run a channel group at a time, channel-interleaved (the ember_dw8_*
    # kernels), when the channels fill whole groups or the planes have at most DW8_MAX_PIXELS
    # output pixels: measured (1 thread, MobileNetV2 shapes, 3x3/5x5/7x7, groups of 8)
    # 1.0-2x faster than the per-plane path, except on large planes with a partial group
    # (13 channels of 112x112: 1.6x slower).
    DW8_MAX_PIXELS = 1024
    # Past this plane size the per-plane path (a quarter of the buffer or less) is taken anyway:
    # the 8-channel buffer of a 256x256 plane is already ~4 MB per thread (16 channels: ~8 MB).
    DW8_MAX_GROUPED_PIXELS = 65536
    # The channel-group kernels keep one offset per tap on the stack.
    DW8_MAX_TAPS = 64


cdef inline bint dw8_grouped(ConvShape *s, long plane, long max_pixels) noexcept nogil:
    """Whether the depthwise conv s (forward or gradient) over planes of `plane` pixels takes the
    channel-group path; max_pixels is DW8_MAX_PIXELS except under a test's override (0: never)."""
    return max_pixels > 0 and s.KH * s.KW <= DW8_MAX_TAPS and (
        plane <= max_pixels or (s.C % ember_dw_group() == 0 and plane <= DW8_MAX_GROUPED_PIXELS))


cdef inline int dw8_groups(int C) noexcept nogil:
    """Channel groups covering C (the last one may be partial)."""
    cdef int group = ember_dw_group()
    return (C + group - 1) // group


cdef inline int dw8_channels(int C, int c0) noexcept nogil:
    """Channels in the group starting at channel c0."""
    cdef int group = ember_dw_group()
    return C - c0 if C - c0 < group else group
