"""GridSample and AffineGrid (graph/ops/sampling.py, kernels/sampling.pyx), forward and gradient.

Oracles: torch.nn.functional.grid_sample / affine_grid and their autograd, in float64, for every
mode × padding × align_corners (2-D; 3-D for linear and nearest: torch has no 3-D bicubic),
onnxruntime for ONNX files ember exports, central finite differences through ``graph.autodiff``
for the cubic 3-D case torch lacks, and the numpy reference for the kernel on awkward shapes.

Tolerances. Positions are computed in float32 by ember (as torch does in float32) and compared
with torch in float64, so a weight is off by about one float32 ulp of the unnormalised position
(~1e-6 for positions of a few pixels): forward atol 1e-5 (a sum of ≤ 16 such terms on values
~1); dX 1e-5; dGrid is a sum over channels and taps of slopes × values scaled by size / 2, so
atol 1e-4 relative to its largest magnitude. Nearest mode picks pixels, compared exactly (the
kernel, the reference and torch in float32 round halves to even alike). Finite differences:
central, step 1e-6 in float64, relative error < 1e-6 (the sampled points stay away from pixel
boundaries, where the interpolant is not differentiable).
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ember
from ember import nn
from ember.graph.autodiff import backward
from ember.graph.builder import Builder
from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops import get_op
from ember.graph.ops.base import TRAINING_DOMAIN

torch = pytest.importorskip("torch")
TF = torch.nn.functional

MODES = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}
PADDINGS = ("zeros", "border", "reflection")
CASES_2D = list(itertools.product(MODES, PADDINGS, (0, 1)))
CASES_3D = [c for c in CASES_2D if c[0] != "cubic"]


def data(shape, out, seed, spread=1.3):
    """X of ``shape`` and a grid reaching ``spread`` past [-1, 1] (outside points exercise the
    padding), with a dY for the output."""
    rng = np.random.default_rng(seed)
    r = len(shape) - 2
    x = rng.standard_normal(shape).astype(np.float32)
    grid = rng.uniform(-spread, spread, (shape[0],) + out + (r,)).astype(np.float32)
    dy = rng.standard_normal(shape[:2] + out).astype(np.float32)
    return x, grid, dy


def one_node(op_type, feeds, attrs, outputs=("y",), domain=""):
    node = Node(op_type, list(feeds), list(outputs), dict(attrs), "sampler", domain)
    types = {k: TensorType(v.dtype, v.shape) for k, v in feeds.items()}
    return Graph(nodes=[node], inputs=list(feeds), outputs=[o for o in outputs if o],
                 types=types)


def run_one(op_type, feeds, attrs, outputs=("y",), domain="", threads=2):
    sess = ember.Session(one_node(op_type, feeds, attrs, outputs, domain), threads=threads,
                         optimize=False)
    return sess.run(None, feeds)


def torch_oracle(x, grid, dy, mode, padding, align):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor(grid, dtype=torch.float64, requires_grad=True)
    y = TF.grid_sample(xt, gt, mode=MODES[mode], padding_mode=padding, align_corners=bool(align))
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), gt.grad.numpy()


def close(got, want, atol_rel):
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol_rel * scale)


@pytest.mark.parametrize("shape,out,cases", [((2, 3, 5, 7), (4, 6), CASES_2D),
                                             ((2, 2, 4, 3, 5), (3, 2, 4), CASES_3D)],
                         ids=["2d", "3d"])
def test_kernel_and_reference_match_torch_forward_and_backward(shape, out, cases):
    """Every mode × padding × align_corners: the float32 kernels and the float64 reference
    path against torch's forward and autograd."""
    x, grid, dy = data(shape, out, seed=len(shape))
    for mode, padding, align in cases:
        attrs = dict(mode=mode, padding_mode=padding, align_corners=align)
        y_t, dx_t, dg_t = torch_oracle(x, grid, dy, mode, padding, align)
        (y,) = run_one("GridSample", {"x": x, "grid": grid}, attrs)
        dx, dg = run_one("GridSampleGrad", {"dy": dy, "x": x, "grid": grid}, attrs,
                         outputs=("dx", "dgrid"), domain=TRAINING_DOMAIN)
        (y64,) = run_one("GridSample", {"x": x.astype(np.float64), "grid": grid}, attrs)
        case = f"{mode}/{padding}/align={align}"
        if mode == "nearest":
            want = TF.grid_sample(torch.tensor(x), torch.tensor(grid), mode="nearest",
                                  padding_mode=padding, align_corners=bool(align)).numpy()
            np.testing.assert_array_equal(y, want, err_msg=case)
            np.testing.assert_array_equal(dg, 0, err_msg=case)
        close(y, y_t, 1e-5)
        close(y64, y_t, 1e-5)
        close(dx, dx_t, 1e-5)
        close(dg, dg_t, 1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", list(MODES))
def test_kernels_match_the_reference_on_awkward_shapes(mode, threads):
    """13 channels (a partial block of the dX scatter), odd sizes, a batch of 3, points far
    outside and on the borders; 2-D and 3-D (cubic too: 64 taps per point)."""
    for shape, out in (((3, 13, 7, 11), (9, 5)), ((3, 13, 3, 5, 4), (2, 7, 3))):
        x, grid, dy = data(shape, out, seed=7, spread=2.5)
        grid.reshape(-1)[::11] = 1.0
        grid.reshape(-1)[::13] = -1.0
        for padding, align in itertools.product(PADDINGS, (0, 1)):
            attrs = dict(mode=mode, padding_mode=padding, align_corners=align)
            op = get_op("GridSampleGrad", TRAINING_DOMAIN)
            node = Node("GridSampleGrad", ["dy", "x", "grid"], ["dx", "dgrid"], dict(attrs))
            want_dx, want_dg = op.compute(node, [dy, x, grid])
            (want_y,) = get_op("GridSample").compute(Node("GridSample", [], [], dict(attrs)),
                                                     [x, grid])
            (y,) = run_one("GridSample", {"x": x, "grid": grid}, attrs, threads=threads)
            dx, dg = run_one("GridSampleGrad", {"dy": dy, "x": x, "grid": grid}, attrs,
                             outputs=("dx", "dgrid"), domain=TRAINING_DOMAIN, threads=threads)
            close(y, want_y, 1e-5)
            close(dx, want_dx, 1e-5)
            close(dg, want_dg, 1e-4)


def test_either_gradient_output_may_be_absent():
    x, grid, dy = data((2, 3, 5, 6), (4, 4), seed=3)
    attrs = dict(mode="linear", padding_mode="border", align_corners=0)
    feeds = {"dy": dy, "x": x, "grid": grid}
    dx, dg = run_one("GridSampleGrad", feeds, attrs, ("dx", "dgrid"), TRAINING_DOMAIN)
    (dx_only,) = run_one("GridSampleGrad", feeds, attrs, ("dx",), TRAINING_DOMAIN)
    (dg_only,) = run_one("GridSampleGrad", feeds, attrs, ("", "dgrid"), TRAINING_DOMAIN)
    np.testing.assert_array_equal(dx_only, dx)
    np.testing.assert_array_equal(dg_only, dg)


def test_non_finite_and_huge_positions_are_safe_and_agree():
    """NaN, ±inf and ±1e30 positions in every mode and padding: kernel and reference agree,
    never an out-of-range index; NaN reads zero, and a far position reads zero, or the border
    pixel on its side under border padding."""
    x = np.arange(1, 13, dtype=np.float32).reshape(1, 1, 3, 4)
    specials = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30], np.float32)
    grid = np.stack(np.meshgrid(specials, specials), -1)[None].astype(np.float32)
    for mode, padding, align in CASES_2D:
        attrs = dict(mode=mode, padding_mode=padding, align_corners=align)
        (y,) = run_one("GridSample", {"x": x, "grid": grid}, attrs)
        (ref,) = get_op("GridSample").compute(Node("GridSample", [], [], dict(attrs)),
                                              [x, grid])
        np.testing.assert_array_equal(y, ref)
        assert np.isfinite(y).all()
        dy = np.ones_like(y)
        grads = run_one("GridSampleGrad", {"dy": dy, "x": x, "grid": grid}, attrs,
                        outputs=("dx", "dgrid"), domain=TRAINING_DOMAIN)
        node = Node("GridSampleGrad", [], [], dict(attrs))
        for got, want in zip(grads, get_op("GridSampleGrad", TRAINING_DOMAIN).compute(
                node, [dy, x, grid])):
            np.testing.assert_allclose(got, want, rtol=1e-6)
            assert np.isfinite(got).all()
        assert (y[0, 0, 0] == 0).all() and (y[0, 0, :, 0] == 0).all()    # a NaN coordinate
        if padding == "zeros":
            np.testing.assert_array_equal(y, 0)
        elif padding == "border":
            # x = +inf / +1e30 (columns 1, 3) with y = -inf / -1e30 (rows 2, 4): top right
            assert (y[0, 0, 2:5:2, 1:4:2] == x[0, 0, 0, -1]).all()


# ---- autodiff ------------------------------------------------------------------------------------
def _loss_graph(x, grid, attrs, theta=None):
    """loss = Σ w · GridSample(x, grid) (grid from AffineGrid(theta) when theta is given)."""
    b = Builder("g")
    xv = b.input("x", x.shape, str(x.dtype))
    if theta is None:
        gv = b.input("grid", grid.shape, str(grid.dtype))
    else:
        tv = b.input("theta", theta.shape, str(theta.dtype))
        gv = b.op("AffineGrid", [tv, np.array(x.shape, np.int64)],
                  align_corners=attrs["align_corners"])
    y = b.op("GridSample", [xv, gv], **attrs)
    w = np.random.default_rng(5).standard_normal(tuple(y.shape)).astype(x.dtype)
    b.output(b.op("ReduceSum", [y * b.constant(w, dtype=x.dtype), np.array([], np.int64)],
                  keepdims=0, noop_with_empty_axes=0), "loss")
    return b.build()


def _eval(graph, feeds):
    env = dict(graph.initializers, **feeds)
    for node in graph.nodes:
        outs = get_op(node.op_type, node.domain).compute(node, [env[i] if i else None
                                                                for i in node.inputs])
        env.update((o, np.asarray(v)) for o, v in zip(node.outputs, outs) if o)
    return env


@pytest.mark.parametrize("mode,padding,align", [("linear", "reflection", 0),
                                                ("cubic", "border", 1), ("cubic", "zeros", 0)])
def test_gradients_match_finite_differences_3d(mode, padding, align):
    """3-D (cubic included, which torch lacks): the gradient graph of X and grid against
    central differences of the float64 reference."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 3, 4, 3))
    # points away from pixel boundaries (integer unnormalised positions): fractions in 0.2–0.8
    pos = rng.integers(-1, 4, (1, 2, 2, 2, 3)) + rng.uniform(0.2, 0.8, (1, 2, 2, 2, 3))
    size = np.array([3, 4, 3], float)
    g = 2 * pos / (size - 1) - 1 if align else (2 * pos + 1) / size - 1
    grid = np.ascontiguousarray(g)
    attrs = dict(mode=mode, padding_mode=padding, align_corners=align)
    graph = _loss_graph(x, grid, attrs)
    gg, grads = backward(graph, "loss", ["x", "grid"])
    env = _eval(gg, {"x": x, "grid": grid})
    for name, value in (("x", x), ("grid", grid)):
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[i] += 1e-6
            minus[i] -= 1e-6
            feeds = {"x": x, "grid": grid}
            numeric[i] = (_eval(graph, {**feeds, name: plus})["loss"]
                          - _eval(graph, {**feeds, name: minus})["loss"]) / 2e-6
        analytic = env[grads[name]]
        err = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic)
                                                    + np.linalg.norm(numeric))
        assert err < 1e-6, (name, err)


# ---- AffineGrid ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Since version 1.3.0:UserWarning")  # torch on unit grids
@pytest.mark.parametrize("size", [(2, 3, 5, 7), (2, 1, 3, 4, 6), (1, 1, 1, 1)])
@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid_and_its_gradient_match_torch(size, align):
    r = len(size) - 2
    rng = np.random.default_rng(2)
    theta = rng.standard_normal((size[0], r, r + 1)).astype(np.float32)
    feeds = {"theta": theta, "size": np.array(size, np.int64)}
    (grid,) = run_one("AffineGrid", feeds, dict(align_corners=align))
    tt = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    want = TF.affine_grid(tt, list(size), align_corners=bool(align))
    close(grid, want.detach().numpy(), 1e-6)
    # the gradient through GridSample and AffineGrid, in float32 kernels, against torch
    x = rng.standard_normal(size).astype(np.float32)
    attrs = dict(mode="linear", padding_mode="zeros", align_corners=align)
    graph = _loss_graph(x, None, attrs, theta=theta)
    gg, grads = backward(graph, "loss", ["theta", "x"])
    got = ember.Session(gg, threads=2).run([grads["theta"]], {"x": x, "theta": theta})[0]
    w = np.random.default_rng(5).standard_normal((size[0], size[1]) + tuple(size[2:]))
    xt = torch.tensor(x, dtype=torch.float64)
    y = TF.grid_sample(xt, TF.affine_grid(tt, list(size), align_corners=bool(align)),
                       align_corners=bool(align))
    (y * torch.tensor(w.astype(np.float32), dtype=torch.float64)).sum().backward()
    close(got, tt.grad.numpy(), 1e-4)


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape,grid_shape,expected", [
    ((1, 1, 4, 4), (1, 3, 3), r"\(N, D1_out, D2_out, 2\) .* got \(1, 3, 3\)"),  # rank
    ((1, 1, 4, 4), (1, 3, 3, 3), r"\(N, D1_out, D2_out, 2\)"),   # last dim ≠ 2
    ((1, 1, 2, 4, 4), (1, 2, 3, 3, 2), r"\(N, D1_out, D2_out, D3_out, 3\)"),
    ((2, 1, 4, 4), (3, 3, 3, 2), "batch 3 == X batch 2"),
    ((4, 4), (1, 3, 3, 2), "rank ≥ 3"),
])
def test_grid_shape_mismatch_is_a_shape_error_at_load(x_shape, grid_shape, expected):
    """An ONNX model whose grid does not fit X fails while loading, naming the node, the grid
    input and the shape expected."""
    node = helper.make_node("GridSample", ["X", "G"], ["Y"], name="stn_sampler")
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape),
                      helper.make_tensor_value_info("G", TensorProto.FLOAT, grid_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(ember.ShapeError, match=expected) as info:
        ember.load(model.SerializeToString())
    assert "stn_sampler" in str(info.value)


def test_grid_shape_mismatch_with_symbolic_dims_is_refused_at_run_time():
    """Dims known only when fed: the mismatch is caught when the shapes arrive (an InputError:
    the feeds do not fit the model, naming the node and the grid), and the Session still
    serves good inputs afterwards."""
    node = helper.make_node("GridSample", ["X", "G"], ["Y"], name="stn_sampler")
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 1, "h", "w"]),
                      helper.make_tensor_value_info("G", TensorProto.FLOAT, ["m", 3, 3, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 20)])
    sess = ember.load(model.SerializeToString())
    x, grid, _ = data((2, 1, 4, 4), (3, 3), seed=1)
    with pytest.raises(ember.InputError, match="stn_sampler.*grid .* batch 1 == X batch 2"):
        sess.run(None, {"X": x, "G": grid[:1]})
    assert sess.run(None, {"X": x, "G": grid})[0].shape == (2, 1, 3, 3)


@pytest.mark.parametrize("attrs,expected", [
    (dict(mode="area"), "'mode' 'area'"), (dict(padding_mode="wrap"), "'padding_mode' 'wrap'"),
    (dict(align_corners=2), "'align_corners' must be 0 or 1")])
def test_bad_attributes_are_model_errors_naming_them(attrs, expected):
    x, grid, _ = data((1, 1, 4, 4), (2, 2), seed=0)
    with pytest.raises(ember.ShapeError, match=expected):
        run_one("GridSample", {"x": x, "grid": grid}, attrs)


def test_affine_grid_refuses_a_theta_that_does_not_fit_size():
    """``size`` fed at run time: refused when it arrives (InputError naming theta)."""
    theta = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ember.InputError, match=r"theta .* of shape \(N, 2, 3\)"):
        run_one("AffineGrid", {"theta": theta, "size": np.array([2, 1, 4, 4], np.int64)}, {})


# ---- ONNX: opset 16, export, onnxruntime ---------------------------------------------------------
def test_opset16_names_load_and_export_round_trips_through_onnxruntime(tmp_path):
    """GridSample-16 spells bilinear / bicubic: ember loads them, and writes them back at
    opset 16; onnxruntime runs both files with ember's outputs."""
    ort = pytest.importorskip("onnxruntime")
    x, grid, _ = data((2, 3, 5, 6), (4, 3), seed=4)
    for mode in ("bilinear", "bicubic", "nearest"):
        node = helper.make_node("GridSample", ["X", "G"], ["Y"], mode=mode,
                                padding_mode="border", align_corners=1)
        model = helper.make_model(helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape),
                          helper.make_tensor_value_info("G", TensorProto.FLOAT, grid.shape)],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]),
            opset_imports=[helper.make_opsetid("", 16)])
        got = ember.load(model.SerializeToString()).run(None, {"X": x, "G": grid})[0]
        want = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x, "G": grid})[0]
        np.testing.assert_allclose(got, want, atol=1e-5)
        from ember.importers.onnx import load_onnx
        from ember.importers.onnx_export import to_onnx
        back = to_onnx(load_onnx(model.SerializeToString()), opset=16)
        written = {a.name: helper.get_attribute_value(a) for a in back.graph.node[0].attribute}
        assert written.get("mode", b"bilinear").decode() == mode   # bilinear: the default
        assert back.opset_import[0].version == 16
        again = ort.InferenceSession(back.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, {"X": x, "G": grid})[0]
        np.testing.assert_allclose(again, want, atol=1e-5)


class Warp(nn.Module):
    """A learned 2×3 θ per sample (from a linear layer) warping the input: the spatial
    transformer's two functional calls."""

    def __init__(self, bicubic=False):
        super().__init__()
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.mode = "bicubic" if bicubic else "bilinear"

    def forward(self, x):
        theta = nn.functional.reshape(self.fc(nn.functional.flatten(x)), [-1, 2, 3])
        grid = nn.functional.affine_grid(theta, x.shape, align_corners=False)
        return nn.functional.grid_sample(x, grid, mode=self.mode, padding_mode="reflection")


@pytest.mark.parametrize("bicubic", [False, True])
def test_functional_matches_torch_and_exports_to_onnxruntime(bicubic, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = Warp(bicubic)
    x = np.random.default_rng(6).standard_normal((3, 4, 5, 5)).astype(np.float32)
    graph = model.eval().to_graph(("N", 4, 5, 5), seed=0)
    got = ember.Session(graph).run(None, {"input": x})[0]
    state = model.state_dict()
    theta = (x.reshape(3, -1) @ state["fc.weight"].T + state["fc.bias"]).reshape(3, 2, 3)
    want = TF.grid_sample(torch.tensor(x), TF.affine_grid(torch.tensor(theta), [3, 4, 5, 5],
                                                          align_corners=False),
                          mode=model.mode, padding_mode="reflection", align_corners=False)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    path = tmp_path / "warp.onnx"
    ember.export_onnx(graph, str(path))
    onnx.checker.check_model(str(path))
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    np.testing.assert_allclose(out, got, atol=1e-5)


def test_functional_bad_mode_and_bicubic_3d_are_refused():
    b = Builder("g")
    x = b.input("x", (1, 1, 2, 3, 3))
    grid = b.input("grid", (1, 2, 2, 2, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        nn.functional.grid_sample(x, grid, mode="area")
    with pytest.raises(ember.ShapeError, match="bicubic' needs a 4-D input"):
        nn.functional.grid_sample(x, grid, mode="bicubic")
