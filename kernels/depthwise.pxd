# The depthwise plane kernels (depthwise.h), shared by conv (forward) and conv_grad (gradients).
from kernels.conv_common cimport ConvShape


cdef extern from "depthwise.h" nogil:
    ctypedef struct ember_dw_geom:
        int H, W, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl, ih_step, iw_step, Hq, Wq
        const long *tap
    float *ember_dw_alloc(long n)
    void ember_dw_init(ember_dw_geom *g)
    void ember_dw_set_taps(ember_dw_geom *g, long *tap)
    long ember_dw_buffer_floats(const ember_dw_geom *g)
    int ember_dw_forward_plane(const ember_dw_geom *g, const float *x, const float *w, float bv,
                               float *y, float *buf, int act, float a, float b)
    ember_dw_geom ember_dw_input_grad_geom(const ember_dw_geom *fwd)
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
    long ember_dw8_scatter_buffer_floats(const ember_dw_geom *g)
    void ember_dw8_input_grad_scatter(const ember_dw_geom *g, const float *dy, long plane_out,
                                      const float *w, float *dx, long plane_in, int nch,
                                      float *buf)
    int ember_act_row_vec(float *y, long n, int code, float a, float b)
    int ember_bias_act_row(float *y, long n, float bv, int code, float a, float b)


cdef inline ember_dw_geom dw_geom(ConvShape *s) noexcept nogil:
    """The forward geometry of one plane of the depthwise conv s."""
    cdef ember_dw_geom g
    g.H = s.H; g.W = s.W; g.OH = s.OH; g.OW = s.OW; g.KH = s.KH; g.KW = s.KW
    g.sh = s.sh; g.sw = s.sw; g.dh = s.dh; g.dw = s.dw; g.pt = s.pt; g.pl = s.pl
    g.ih_step = 1; g.iw_step = 1; g.tap = NULL
    ember_dw_init(&g)
    return g
