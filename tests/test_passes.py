"""Graph passes: each keeps the model's outputs (checked against onnxruntime, an oracle ember did
not write) and each actually fires on the models it is meant for.

Tolerance: rtol = atol = 1e-4. Outputs are O(1) (the builders scale weights for that), float32
has eps ≈ 6e-8, and folding BN into weights or fusing an activation only reorders float32
rounding: over ≤ 60 layers of sums of ≤ 4608 terms that moves results by ~1e-5 at most (measured
≤ 1.2e-5 on mobilenetv2). A wrong fold (a missed ε, a transposed scale, a lost bias) moves them
by O(0.1), so 1e-4 separates the two cleanly.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.graph import passes
from ember.graph.infer import infer_shapes
from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops import get_op
from ember.importers.onnx import load_onnx

import models

TOL = dict(rtol=1e-4, atol=1e-4)
ALL = {**models.ALL_MODELS, **{k: (lambda k=k: models.pattern_model(k)) for k in models.PATTERNS}}
FAST = [n for n in ALL if n not in ("resnet18", "mobilenetv2")]


# ---- helpers -----------------------------------------------------------------------------------
_cache: dict = {}


def model_and_reference(name):
    """The model, a seeded feed and onnxruntime's outputs (cached: resnet18 is slow to build)."""
    if name not in _cache:
        m = ALL[name]()
        feeds = models.random_input(m)
        ref = ort_run(m, feeds)
        _cache[name] = (m, feeds, ref)
    return _cache[name]


def ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def typed_ir(model):
    """The IR as the Session sees it before ``optimize``: typed and constant-folded."""
    g = load_onnx(model)
    return passes.fold_constants(g, infer_shapes(g))


def run_ir(g: Graph, feeds: dict) -> list:
    """Interpret the IR with the ops' numpy references, in node order (no planner, no kernels)."""
    env = dict(g.initializers)
    env.update(feeds)
    for n in g.nodes:
        outs = get_op(n.op_type, n.domain).compute(n, [env[i] if i else None for i in n.inputs])
        env.update((o, v) for o, v in zip(n.outputs, outs) if o)
    return [env[o] for o in g.outputs]


def assert_types_right(g: Graph):
    """Every value a pass left behind has the type fresh inference gives it."""
    fresh = g.copy()
    infer_shapes(fresh, fold=False)
    for n in g.nodes:
        for v in list(n.inputs) + list(n.outputs):
            if v:
                assert g.types[v] == fresh.types[v], f"{v}: pass says {g.types[v]}, " \
                                                     f"inference says {fresh.types[v]}"


def op_types(g):
    return [n.op_type for n in g.nodes]


def optimized_graph(model):
    return ember.load(model, optimize=True).compile().graph


# ---- the whole pipeline on every model ---------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL))
def test_optimize_keeps_outputs(name):
    m, feeds, ref = model_and_reference(name)
    got = ember.load(m, optimize=True).run(None, feeds)
    plain = ember.load(m, optimize=False).run(None, feeds)
    for g_, p_, r_ in zip(got, plain, ref):
        np.testing.assert_allclose(g_, r_, **TOL)
        np.testing.assert_allclose(p_, r_, **TOL)
        np.testing.assert_allclose(g_, p_, **TOL)


PASSES = {"eliminate_identity": passes.eliminate_identity,
          "fold_batchnorm": passes.fold_batchnorm,
          "fuse_activation": passes.fuse_activation,
          "optimize": passes.optimize}


@pytest.mark.parametrize("pass_name", list(PASSES))
@pytest.mark.parametrize("name", list(ALL))
def test_each_pass_alone_keeps_outputs_and_types(pass_name, name):
    m, feeds, ref = model_and_reference(name)
    g = PASSES[pass_name](typed_ir(m))
    assert g.outputs == [o.name for o in m.graph.output]
    assert g.inputs == [i.name for i in m.graph.input]
    assert_types_right(g)
    for got, want in zip(run_ir(g, feeds), ref):
        np.testing.assert_allclose(got, want, **TOL)


# ---- each pass fires where it should -----------------------------------------------------------
def test_resnet18_batchnorm_folded_and_relu_fused():
    m, _, _ = model_and_reference("resnet18")
    g = optimized_graph(m)
    ops = op_types(g)
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == 20
    # each block's second ReLU follows the residual Add and is fused into it; the others into
    # their Conv
    assert ops.count("Relu") == 0
    assert sum(n.attrs.get("activation") == "Relu" for n in g.nodes if n.op_type == "Conv") == 9
    assert sum(n.attrs.get("activation") == "Relu" for n in g.nodes if n.op_type == "Add") == 8


def test_mobilenetv2_clip_and_batchnorm_gone():
    m, _, _ = model_and_reference("mobilenetv2")
    g = optimized_graph(m)
    ops = op_types(g)
    assert "Clip" not in ops and "BatchNormalization" not in ops
    fused = [(n.attrs["activation"], n.attrs["activation_alpha"], n.attrs["activation_beta"])
             for n in g.nodes if n.op_type == "Conv" and n.attrs.get("activation")]
    assert len(fused) == 35 and set(fused) == {("Clip", 0.0, 6.0)}
    assert ops.count("Conv") == 52 and ops.count("Add") == 10


def test_small_vgg_and_lenet_fully_fused():
    for name in ("small_vgg", "lenet5"):
        ops = op_types(optimized_graph(model_and_reference(name)[0]))
        assert "BatchNormalization" not in ops and "Relu" not in ops, (name, ops)


@pytest.mark.parametrize("optimize", [True, False])
def test_pytorch_reshape_chain_folds_to_a_constant_target(optimize):
    m, _, _ = model_and_reference("pytorch_reshape")
    g = ember.load(m, optimize=optimize).compile().graph
    ops = op_types(g)
    for gone in ("Shape", "Gather", "Unsqueeze", "Concat"):
        assert gone not in ops
    (reshape,) = [n for n in g.nodes if n.op_type == "Reshape"]
    np.testing.assert_array_equal(g.initializers[reshape.inputs[1]], [1, -1])


def test_identity_and_dropout_removed_output_name_kept():
    m, _, _ = model_and_reference("identity_dropout")
    g = optimized_graph(m)
    ops = op_types(g)
    assert "Identity" not in ops and "Dropout" not in ops
    assert g.outputs == [m.graph.output[0].name]
    assert g.nodes[-1].outputs[0] == m.graph.output[0].name


def test_fusion_patterns_all_fire():
    m, _, _ = model_and_reference("fusion_patterns")
    g = optimized_graph(m)
    assert op_types(g) == ["Conv"] * 7 + ["Flatten", "Gemm", "Gemm"]
    acts = [(n.op_type, n.attrs["activation"]) for n in g.nodes if n.op_type != "Flatten"]
    assert acts == [("Conv", "Relu"), ("Conv", "Clip"), ("Conv", "LeakyRelu"),
                    ("Conv", "Sigmoid"), ("Conv", "SiLU"), ("Conv", "Tanh"),
                    ("Conv", "HardSwish"), ("Gemm", ""), ("Gemm", "Relu")]
    leaky = g.nodes[2]
    assert leaky.attrs["activation_alpha"] == pytest.approx(0.1)


def test_unfusable_patterns_left_alone():
    """Everything stays but the last Relu, which the residual Add before it takes."""
    m, _, _ = model_and_reference("unfusable_patterns")
    g = optimized_graph(m)
    original = [n.op_type for n in m.graph.node]
    original.remove("Relu")
    assert sorted(op_types(g)) == sorted(original)
    assert [(n.op_type, n.attrs["activation"]) for n in g.nodes if n.attrs.get("activation")] \
        == [("Add", "Relu")] and g.nodes[-1].op_type == "Add"


@pytest.mark.parametrize("kind", models.PATTERNS)
def test_single_patterns(kind):
    m, _, _ = model_and_reference(kind)
    g = optimized_graph(m)
    expected = {"conv_bn_relu": "Relu", "gemm_bn": "", "conv_clip": "Clip",
                "conv_leakyrelu": "LeakyRelu", "conv_sigmoid": "Sigmoid", "conv_silu": "SiLU",
                "conv_tanh": "Tanh", "conv_hardswish": "HardSwish", "matmul_relu": "Relu"}[kind]
    compute = [n for n in g.nodes if n.op_type not in ("Flatten",)]
    assert len(compute) == 1, op_types(g)
    assert compute[0].attrs.get("activation", "") == expected


def test_symbolic_batch():
    m = models.lenet5(batch="N")
    feeds = models.random_input(m, batch=3)
    got = ember.load(m).run(None, feeds)[0]
    np.testing.assert_allclose(got, ort_run(m, feeds)[0], **TOL)
    assert "Relu" not in op_types(ember.load(m).compile({"input": (3, 1, 32, 32)}).graph)


# ---- corner cases, on small hand-made models ---------------------------------------------------
def small_model(nodes, inits, in_shape, out_names, out_shape=None):
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape or in_shape)
         for o in out_names],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def check_against_ort(m, pass_fn=passes.optimize):
    feeds = {"x": np.random.default_rng(3).standard_normal(
        [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)}
    ref = ort_run(m, feeds)
    g = pass_fn(typed_ir(m))
    assert_types_right(g)
    for got, want in zip(run_ir(g, feeds), ref):
        np.testing.assert_allclose(got, want, **TOL)
    for got, want in zip(ember.load(m).run(None, feeds), ref):
        np.testing.assert_allclose(got, want, **TOL)
    return g


def test_identity_from_input_to_output_is_kept():
    m = small_model([helper.make_node("Identity", ["x"], ["y"])], {}, [2, 3], ["y"])
    g = check_against_ort(m)
    assert op_types(g) == ["Identity"] and g.outputs == ["y"]


def test_identity_to_output_whose_input_is_also_read_elsewhere():
    # r = Relu(x); y = Identity(r) is an output; z = Sigmoid(r) reads r too
    m = small_model([helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("Identity", ["r"], ["y"]),
                     helper.make_node("Sigmoid", ["r"], ["z"])], {}, [2, 3], ["y", "z"])
    g = check_against_ort(m)
    assert op_types(g) == ["Relu", "Sigmoid"] and g.outputs == ["y", "z"]


def test_identity_between_two_outputs_is_kept():
    m = small_model([helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("Identity", ["r"], ["y"])], {}, [2, 3], ["r", "y"])
    g = check_against_ort(m)
    assert op_types(g) == ["Relu", "Identity"]


def test_chained_identities_to_output():
    m = small_model([helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("Identity", ["r"], ["a"]),
                     helper.make_node("Dropout", ["a"], ["b"]),
                     helper.make_node("Identity", ["b"], ["y"])], {}, [2, 3], ["y"])
    g = check_against_ort(m)
    assert op_types(g) == ["Relu"] and g.nodes[0].outputs == ["y"]


def test_dropout_in_training_mode_or_with_read_mask_stays():
    g = Graph(inputs=["x"], outputs=["y", "mask2"],
              initializers={"t": np.array(True), "r": np.array(0.5, np.float32)})
    g.types["x"] = TensorType(np.float32, (2, 3))
    g.add_node("Dropout", ["x", "r", "t"], ["d"])
    g.add_node("Relu", ["d"], ["d2"])
    g.add_node("Dropout", ["d2"], ["y", "mask2"])
    infer_shapes(g, fold=False)
    assert op_types(passes.eliminate_identity(g)) == ["Dropout", "Relu", "Dropout"]


def test_gemm_without_c_and_untransposed_b_folds_batchnorm():
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((6, 4)).astype(np.float32),
             "s": rng.uniform(0.5, 1.5, 4).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32),
             "mu": rng.standard_normal(4).astype(np.float32),
             "var": rng.uniform(0.5, 2, 4).astype(np.float32)}
    m = small_model([helper.make_node("Gemm", ["x", "W"], ["g"], alpha=0.5),
                     helper.make_node("BatchNormalization", ["g", "s", "b", "mu", "var"], ["y"],
                                      epsilon=1e-3)], inits, [3, 6], ["y"], [3, 4])
    g = check_against_ort(m, passes.fold_batchnorm)
    assert op_types(g) == ["Gemm"] and g.nodes[0].outputs == ["y"]


def test_batchnorm_after_fused_conv_is_not_folded():
    rng = np.random.default_rng(1)
    inits = {"W": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
             "s": np.array([1.5, 0.5], np.float32), "b": np.array([0.1, -0.2], np.float32),
             "mu": np.array([0.3, 0.0], np.float32), "var": np.array([2.0, 0.5], np.float32)}
    m = small_model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                     helper.make_node("Relu", ["c"], ["r"]),
                     helper.make_node("BatchNormalization", ["r", "s", "b", "mu", "var"],
                                      ["y"])], inits, [1, 1, 5, 5], ["y"], [1, 2, 5, 5])
    g = check_against_ort(m, lambda g: passes.fold_batchnorm(passes.fuse_activation(g)))
    assert op_types(g) == ["Conv", "BatchNormalization"]
    assert g.nodes[0].attrs["activation"] == "Relu"


def test_clip_with_min_only_and_no_double_fusion():
    inits = {"W": np.random.default_rng(2).standard_normal((3, 3)).astype(np.float32),
             "lo": np.array(-0.25, np.float32)}
    m = small_model([helper.make_node("MatMul", ["x", "W"], ["p"]),
                     helper.make_node("Clip", ["p", "lo"], ["c"]),
                     helper.make_node("Tanh", ["c"], ["y"])], inits, [4, 3], ["y"])
    g = check_against_ort(m)
    assert op_types(g) == ["MatMul", "Tanh"]
    mm = g.nodes[0]
    assert (mm.attrs["activation"], mm.attrs["activation_alpha"]) == ("Clip", -0.25)
    assert mm.attrs["activation_beta"] == np.inf


def test_activation_on_a_graph_output_producer_is_not_fused():
    inits = {"W": np.random.default_rng(4).standard_normal((3, 3)).astype(np.float32)}
    m = small_model([helper.make_node("MatMul", ["x", "W"], ["p"]),
                     helper.make_node("Relu", ["p"], ["y"])], inits, [4, 3], ["p", "y"])
    g = check_against_ort(m)
    assert op_types(g) == ["MatMul", "Relu"]
