"""The pattern passes (graph/patterns.py) on what torch.onnx writes for hand-written hard-swish,
GELU, SiLU, x**2 and layer norm: the optimized graph holds the fused op (counted), ember's
outputs match onnxruntime on the unoptimized file, the export of the optimized graph loads in
onnxruntime and matches too; negative cases (a wrong constant, an intermediate with another
reader or that is a graph output) are left as they are.

Tolerance: rtol = atol = 2e-5 against onnxruntime. Inputs and outputs are O(1–10); a fused op
computes the same formula in one kernel, which reorders a handful of float32 roundings (≤ a few
ulp, ~1e-6 at these magnitudes: the HardSigmoid form multiplies by 1/6 where the file divides
by 6; the vector erf is ≤ 4 ulp; layer norm sums 48 terms in another order). A wrong rewrite (a
missed ε or scale, the other GELU form) moves outputs by ≥ 1e-4, well outside.
"""
from __future__ import annotations

import collections
import io
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.graph import passes
from ember.graph.infer import infer_shapes
from ember.graph.ops.activation import FUSED_DOMAIN
from ember.importers.onnx import load_onnx
from ember.importers.onnx_export import to_onnx

TOL = dict(rtol=2e-5, atol=2e-5)
SHAPE = (2, 3, 8, 16)
_QUIET = ort.SessionOptions()
_QUIET.log_severity_level = 4


class Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class LayerNormByHand(torch.nn.Module):
    """Layer norm over the last axis as model code often spells it."""

    def __init__(self, width, affine=True, square="pow"):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.affine, self.square = affine, square
        self.weight = torch.nn.Parameter(1 + 0.3 * torch.randn(width, generator=g))
        self.bias = torch.nn.Parameter(0.3 * torch.randn(width, generator=g))

    def forward(self, x):
        d = x - x.mean(-1, keepdim=True)
        sq = d ** 2 if self.square == "pow" else d * d
        y = d / torch.sqrt(sq.mean(-1, keepdim=True) + 1e-5)
        return y * self.weight + self.bias if self.affine else y


SQRT2, K = math.sqrt(2), math.sqrt(2 / math.pi)

# name -> (module, the op types the optimized graph must hold, exactly, as a Counter)
CASES = {
    "hardswish_div": (lambda x: x * F.relu6(x + 3) / 6, {"Abs": 1, "HardSwish": 1}),
    "hardswish_gate_first": (lambda x: x * (torch.clamp(x + 3, 0, 6) / 6),
                             {"Abs": 1, "HardSwish": 1}),
    "hardswish_mul_sixth": (lambda x: (3 + x).clamp(0, 6) * x * (1 / 6),
                            {"Abs": 1, "HardSwish": 1}),
    "hardswish_of_hardsigmoid": (lambda x: x * F.hardsigmoid(x), {"Abs": 1, "HardSwish": 1}),
    "hardsigmoid": (lambda x: F.relu6(x + 3) / 6, {"Abs": 1, "HardSigmoid": 1}),
    "silu": (lambda x: x * torch.sigmoid(x), {"Abs": 1, "SiLU": 1}),
    "silu_sigmoid_first": (lambda x: torch.sigmoid(x) * x, {"Abs": 1, "SiLU": 1}),
    "gelu_erf": (lambda x: 0.5 * x * (1 + torch.erf(x / SQRT2)), {"Abs": 1, "Gelu": 1}),
    "gelu_erf_mul": (lambda x: x * 0.5 * (1.0 + torch.erf(x * (1 / SQRT2))),
                     {"Abs": 1, "Gelu": 1}),
    "gelu_erf_halved": (lambda x: x * (torch.erf(x / SQRT2) + 1) / 2, {"Abs": 1, "Gelu": 1}),
    "gelu_tanh_pow": (lambda x: 0.5 * x * (1 + torch.tanh(K * (x + 0.044715 * torch.pow(x, 3)))),
                      {"Abs": 1, "Gelu": 1}),
    "gelu_tanh_cube": (lambda x: x * 0.5 * (1 + torch.tanh((x + 0.044715 * (x * x * x)) * K)),
                       {"Abs": 1, "Gelu": 1}),
    "square": (lambda x: x ** 2, {"Abs": 1, "Mul": 1}),
    "sqrt": (lambda x: x.abs() ** 0.5, {"Abs": 2, "Sqrt": 1}),
    "layer_norm": (LayerNormByHand(SHAPE[-1]), {"Abs": 1, "LayerNormalization": 1}),
    "layer_norm_plain": (LayerNormByHand(SHAPE[-1], affine=False),
                         {"Abs": 1, "LayerNormalization": 1}),
    "layer_norm_mul_square": (LayerNormByHand(SHAPE[-1], square="mul"),
                              {"Abs": 1, "LayerNormalization": 1}),
}


def torch_export(module, shape=SHAPE, opset=17) -> onnx.ModelProto:
    if not isinstance(module, torch.nn.Module):
        module = Lambda(module)
    # in front of each pattern, |x| - 2: Abs and Sub are no Conv/Gemm/MatMul/Add, so the fused
    # op stays a node of its own (what "after any producer" means)
    wrapped = torch.nn.Sequential(Lambda(lambda x: x.abs() - 2.0), module)
    buf = io.BytesIO()
    torch.onnx.export(wrapped, (torch.zeros(shape),), buf, opset_version=opset, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


def torch_export_plain(module, n_inputs=1, shape=SHAPE) -> onnx.ModelProto:
    buf = io.BytesIO()
    args = tuple(torch.zeros(shape) for _ in range(n_inputs))
    torch.onnx.export(module, args, buf, opset_version=17, dynamo=False,
                      input_names=[f"x{i}" for i in range(n_inputs)], output_names=["y"])
    return onnx.load_from_string(buf.getvalue())


def optimized(model):
    g = load_onnx(model)
    return passes.optimize(passes.fold_constants(g, infer_shapes(g)))


def op_counts(graph) -> collections.Counter:
    """Op types by name, fused activations of a producer written ``Producer+Activation``."""
    return collections.Counter(
        n.op_type + (f"+{n.attrs['activation']}" if n.attrs.get("activation") else "")
        for n in graph.nodes)


def ort_run(model, feeds):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, _QUIET, providers=["CPUExecutionProvider"]).run(None, feeds)


def feeds_for(model, seed=3):
    rng = np.random.default_rng(seed)
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out[i.name] = (rng.standard_normal(shape) * 3).astype(np.float32)
    return out


def check_against_ort(model, graph):
    """ember (optimized Session) and onnxruntime on the export of the optimized graph both
    match onnxruntime on the original file."""
    feeds = feeds_for(model)
    expected = ort_run(model, feeds)
    got = ember.load(model.SerializeToString()).run(None, feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **TOL)
    exported = to_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in exported.graph.node)
    for g, e in zip(ort_run(exported, feeds), expected):
        np.testing.assert_allclose(g, e, **TOL)


# ---- each rewrite on a torch export ----------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_torch_export_is_rewritten(name):
    module, expected = CASES[name]
    model = torch_export(module)
    graph = optimized(model)
    # the "- 2.0" after Abs is an Add/Sub ember keeps; count only the rest
    counts = op_counts(graph)
    counts.pop("Sub", None)
    counts.pop("Add", None)
    assert counts == collections.Counter(expected), op_counts(graph)
    check_against_ort(model, graph)


def test_silu_is_a_fused_domain_node():
    graph = optimized(torch_export(CASES["silu"][0]))
    assert [n.domain for n in graph.nodes if n.op_type == "SiLU"] == [FUSED_DOMAIN]


@pytest.mark.parametrize("opset", [17, 20])
def test_gelu_exports_at_any_opset(opset):
    """Gelu written as Gelu from opset 20, as its formula with Erf/Tanh below it."""
    for name in ("gelu_erf", "gelu_tanh_pow"):
        model = torch_export(CASES[name][0])
        graph = optimized(model)
        exported = to_onnx(graph, opset=opset)
        types = {n.op_type for n in exported.graph.node}
        assert ("Gelu" in types) == (opset >= 20), types
        feeds = feeds_for(model)
        for g, e in zip(ort_run(exported, feeds), ort_run(model, feeds)):
            np.testing.assert_allclose(g, e, **TOL)


# ---- activations folded into producers afterwards ------------------------------------------
def test_residual_add_relu_becomes_one_step():
    model = torch_export_plain(Lambda2(lambda a, b: F.relu(a + b)), n_inputs=2)
    graph = optimized(model)
    assert op_counts(graph) == collections.Counter({"Add+Relu": 1})
    assert graph.nodes[0].domain == FUSED_DOMAIN
    check_against_ort(model, graph)


# ---- a Linear on inputs of rank 3: MatMul + bias in one GEMM ------------------------------------
class LinearGelu(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.act = torch.nn.Linear(16, 24), act

    def forward(self, x):
        return self.act(self.fc(x))


@pytest.mark.parametrize("act,expected", [
    (lambda y: y, {"MatMul": 1}),
    (torch.relu, {"MatMul+Relu": 1}),
    (lambda y: F.gelu(y), {"MatMul+Gelu": 1}),
])
def test_linear_on_rank_3_is_one_gemm_with_bias(act, expected):
    """torch.onnx writes Linear on a (2, 5, 16) input as MatMul(x, Wᵀ) + b: one fused-domain
    MatMul holding the bias (and the activation after it); export writes MatMul + Add back."""
    model = torch_export_plain(LinearGelu(act), shape=(2, 5, 16))
    graph = optimized(model)
    assert op_counts(graph) == collections.Counter(expected), op_counts(graph)
    assert [n.domain for n in graph.nodes if n.op_type == "MatMul"] == [FUSED_DOMAIN]
    check_against_ort(model, graph)


@pytest.mark.parametrize("bias_shape,reader", [((5, 24), False), ((24,), True)])
def test_matmul_bias_kept_apart(bias_shape, reader):
    """A bias that is no vector (a full matrix), or a product another node reads too: MatMul and
    Add stay two nodes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 24)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"],
                                                                              ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 5, 24))]
    if reader:
        nodes.append(helper.make_node("Neg", ["p"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, (2, 5, 24)))
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 5, 16))], outputs,
        [w, b]), opset_imports=[helper.make_opsetid("", 17)])
    graph = optimized(model)
    assert op_counts(graph)["MatMul"] == 1 and op_counts(graph)["Add"] == 1
    assert all(n.domain == "" for n in graph.nodes if n.op_type == "MatMul")
    check_against_ort(model, graph)


def test_broadcast_add_with_fused_gelu():
    """An Add with a broadcast operand (a bias) and a GELU after it: one fused Add."""
    bias = torch.linspace(-1, 1, SHAPE[-1])
    model = torch_export_plain(Lambda(
        lambda x: 0.5 * (x + bias) * (1 + torch.erf((x + bias) / SQRT2))))
    graph = optimized(model)
    assert op_counts(graph) == collections.Counter({"Add+Gelu": 1})
    check_against_ort(model, graph)


class HardSwishSqueezeExcite(torch.nn.Module):
    """Conv + hand-written hard-swish, then a squeeze-excite gate with a hand-written
    hard-sigmoid: the block of PP-LCNet-like classifiers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.reduce, self.expand = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(4, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        y = y * F.relu6(y + 3) / 6
        s = F.relu(self.reduce(y.mean((2, 3), keepdim=True)))
        return y * (F.relu6(self.expand(s) + 3) / 6)


def test_conv_hardswish_and_squeeze_excite_fuse_into_convs():
    model = torch_export_plain(HardSwishSqueezeExcite())
    graph = optimized(model)
    counts = op_counts(graph)
    assert counts["Conv+HardSwish"] == 1 and counts["Conv+HardSigmoid"] == 1, counts
    assert counts["Conv+Relu"] == 1 and not {"Clip", "Div"} & set(counts), counts
    check_against_ort(model, graph)


class Lambda2(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, a, b):
        return self.fn(a, b)


# ---- negative cases: hand-built graphs ------------------------------------------------------
def _model(nodes, consts, outputs=("y",)):
    """A float32 model over x of SHAPE reading ``consts`` (name -> value) and writing
    ``outputs`` (all of SHAPE)."""
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    graph = helper.make_graph(
        [helper.make_node(*n[:3], name=f"n{k}", **(n[3] if len(n) > 3 else {}))
         for k, n in enumerate(nodes)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPE) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _hardswish(three=3.0, six=6.0, extra=(), outputs=("y",)):
    nodes = [("Abs", ["x"], ["a"]), ("Add", ["a", "three"], ["p"]),
             ("Clip", ["p", "zero", "six"], ["c"]), ("Mul", ["a", "c"], ["m"]),
             ("Div", ["m", "six_d"], ["y"]), *extra]
    return _model(nodes, {"three": three, "zero": 0.0, "six": 6.0, "six_d": six}, outputs)


def _gelu(inv_sqrt2=1 / SQRT2, extra=(), outputs=("y",)):
    nodes = [("Abs", ["x"], ["a"]), ("Mul", ["a", "k"], ["u"]), ("Erf", ["u"], ["e"]),
             ("Add", ["e", "one"], ["g"]), ("Mul", ["a", "half"], ["h"]),
             ("Mul", ["h", "g"], ["y"]), *extra]
    return _model(nodes, {"k": inv_sqrt2, "one": 1.0, "half": 0.5}, outputs)


def _layer_norm(eps=1e-5, axes=(-1,), extra=(), outputs=("y",)):
    nodes = [("ReduceMean", ["x"], ["m"], {"axes": list(axes)}), ("Sub", ["x", "m"], ["d"]),
             ("Pow", ["d", "two"], ["sq"]), ("ReduceMean", ["sq"], ["v"], {"axes": list(axes)}),
             ("Add", ["v", "eps"], ["ve"]), ("Sqrt", ["ve"], ["s"]), ("Div", ["d", "s"], ["y"]),
             *extra]
    return _model(nodes, {"two": 2.0, "eps": eps}, outputs)


NEGATIVE = {
    "hardswish_wrong_offset": (_hardswish(three=2.5), "HardSwish"),
    "hardswish_wrong_divisor": (_hardswish(six=5.0), "HardSwish"),
    "hardswish_clip_also_read": (_hardswish(extra=[("Neg", ["c"], ["z"])], outputs=("y", "z")),
                                 "HardSwish"),
    "hardswish_product_is_output": (_hardswish(outputs=("y", "m")), "HardSwish"),
    "gelu_wrong_scale": (_gelu(inv_sqrt2=0.7), "Gelu"),
    "gelu_erf_also_read": (_gelu(extra=[("Neg", ["e"], ["z"])], outputs=("y", "z")), "Gelu"),
    "gelu_gate_is_output": (_gelu(outputs=("y", "g")), "Gelu"),
    "layer_norm_other_axis": (_layer_norm(axes=(2,)), "LayerNormalization"),
    "layer_norm_variance_is_output": (_layer_norm(outputs=("y", "v")), "LayerNormalization"),
    "layer_norm_centred_also_read": (_layer_norm(extra=[("Neg", ["d"], ["z"])],
                                                 outputs=("y", "z")), "LayerNormalization"),
}


@pytest.mark.parametrize("name", list(NEGATIVE))
def test_not_rewritten(name):
    model, fused = NEGATIVE[name]
    graph = optimized(model)
    assert fused not in op_counts(graph), op_counts(graph)
    check_against_ort(model, graph)


def test_silu_with_shared_sigmoid_is_kept():
    """Sigmoid(x) read by the Mul and by another node: no SiLU (it would compute σ twice)."""
    model = _model([("Abs", ["x"], ["a"]), ("Sigmoid", ["a"], ["s"]), ("Mul", ["a", "s"], ["y"]),
                    ("Neg", ["s"], ["z"])], {}, outputs=("y", "z"))
    graph = optimized(model)
    assert "SiLU" not in op_counts(graph)
    check_against_ort(model, graph)


def test_pow_by_broadcast_exponent_is_kept():
    """An exponent of shape (1, 1, 1, 1, 1) would raise the rank: not a plain square."""
    model = _model([("Pow", ["x", "two"], ["y"])], {}, outputs=())
    model.graph.initializer.append(numpy_helper.from_array(np.full((1,) * 5, 2, np.float32),
                                                           "two"))
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                            (1,) + SHAPE))
    graph = optimized(model)
    assert op_counts(graph) == collections.Counter({"Pow": 1})


def test_fused_domain_is_ember_internal():
    """The fused domain holds SiLU, the Add with an activation and the MatMul with a bias, and a
    file naming it is refused like any op ember does not read."""
    from ember.graph.ops import REGISTRY
    assert sorted(t for d, t in REGISTRY if d == FUSED_DOMAIN) == ["Add", "MatMul", "SiLU"]
    graph = helper.make_graph(
        [helper.make_node("SiLU", ["x"], ["y"], name="silu", domain=FUSED_DOMAIN)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(FUSED_DOMAIN, 1)])
    with pytest.raises(ember.UnsupportedOpError, match="SiLU"):
        ember.load(model.SerializeToString())
