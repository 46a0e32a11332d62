"""Loading and running a model never imports ``onnx``, at any opset ember reads.

The parent writes models with ``onnx.helper``, from opset 6 to the newest: every old form whose
upgrade needs a dtype or a rank the file does not state (Softmax/LogSoftmax < 13, Clip < 11 on
float16, Pad < 11 on float64, legacy broadcast at opset 6 with a computed operand on either
side), Upsample at 7 and 9, Resize/Slice/Dropout at 10, the attribute-to-input forms at 11, and
13 and the newest opset's forms. A child process in which ``import onnx`` fails loads each file
from its path and from its bytes and runs it; the parent compares the outputs with onnxruntime's
on the same file, or with numpy for the opset-6 legacy broadcast, which onnxruntime does not run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ember.importers.onnx import NEWEST_OPSET

sys.path.insert(0, os.path.dirname(__file__))
import models  # noqa: E402

NEWEST = min(NEWEST_OPSET, onnx.defs.onnx_opset_version())
RNG = np.random.default_rng(16)
X = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, opset, inputs, inits=(), outputs=("y",)):
    g = helper.make_graph(nodes, f"opset{opset}", inputs,
                          [helper.make_empty_tensor_value_info(o) for o in outputs],
                          initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(g, opset_imports=opsets,
                             ir_version=helper.find_min_ir_version_for(opsets))


def _x(dtype=TensorProto.FLOAT, name="x", shape=X.shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _opset6_legacy_broadcast():
    """Add and Mul with ``broadcast=1, axis``: A computed by a Relu, B a constant placed at
    axis 1 (reshaped by the upgrade) or a computed value placed at the last axes."""
    b = RNG.standard_normal(3).astype(np.float32)
    c = RNG.standard_normal((4, 5)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Add", ["r", "b"], ["s"], broadcast=1, axis=1),
             helper.make_node("Identity", ["c"], ["cc"]),
             helper.make_node("Mul", ["s", "cc"], ["y"], broadcast=1, axis=-2)]
    m = _model(nodes, 6, [_x()], [_const("b", b), _const("c", c)])
    expected = [(np.maximum(X, 0) + b[None, :, None, None]) * c]
    return m, {"x": X}, expected


def _opset6_clip_float16():
    """Clip-6's bounds become constants of the input's dtype: float16, known only by
    inferring the Identity before it."""
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Clip", ["i"], ["y"], min=-0.5, max=0.7)]
    return _model(nodes, 6, [_x(TensorProto.FLOAT16)]), {"x": X.astype(np.float16)}, None


def _opset7_upsample():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Upsample", ["r"], ["y"], mode="nearest",
                              scales=[1.0, 1.0, 2.0, 3.0])]
    return _model(nodes, 7, [_x()]), {"x": X}, None


def _opset9_upsample_softmax():
    """Softmax-9 after a Gemm (rank 2: axis 1 is the last) and LogSoftmax-9 at axis 1 of a
    rank-4 value (the 2-D coercion), both ranks inferred through Upsample and Flatten."""
    w = RNG.standard_normal((7, 240)).astype(np.float32)
    nodes = [helper.make_node("Upsample", ["x", "s"], ["u"]),
             helper.make_node("Flatten", ["u"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "c"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=1),
             helper.make_node("LogSoftmax", ["u"], ["z"], axis=1)]
    inits = [_const("s", np.array([1, 1, 2, 2], np.float32)), _const("w", w),
             _const("c", RNG.standard_normal(7).astype(np.float32))]
    return _model(nodes, 9, [_x()], inits, outputs=("y", "z")), {"x": X}, None


def _opset10_forms():
    """Resize-10, Slice-10, Dropout-10's ratio, and Pad-2 with a fill value on a float64 value
    computed by a Relu (the fill constant takes its dtype)."""
    nodes = [helper.make_node("Resize", ["x", "s"], ["r"]),
             helper.make_node("Slice", ["r", "st", "en", "ax"], ["sl"]),
             helper.make_node("Dropout", ["sl"], ["y"], ratio=0.3),
             helper.make_node("Relu", ["d"], ["dr"]),
             helper.make_node("Pad", ["dr"], ["z"], pads=[0, 0, 1, 2, 0, 1, 0, 1], value=1.5)]
    inits = [_const("s", np.array([1, 1, 1.5, 0.5], np.float32)),
             _const("st", np.array([1, -4], np.int64)), _const("en", np.array([3, 100], np.int64)),
             _const("ax", np.array([1, 2], np.int64))]
    inputs = [_x(), _x(TensorProto.DOUBLE, "d")]
    feeds = {"x": X, "d": X.astype(np.float64) - 0.25}
    return _model(nodes, 10, inputs, inits, outputs=("y", "z")), feeds, None


def _opset11_forms():
    """Softmax-11 at the last axis of a Reshape whose shape a Constant node gives (its rank is
    known only by folding the Constant), and the attributes that became inputs later."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [2, 3, 20])
    nodes = [helper.make_node("Constant", [], ["shp"], value=shape),
             helper.make_node("Reshape", ["x", "shp"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=2),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 3], keepdims=1),
             helper.make_node("Split", ["m"], ["a", "b"], axis=2, split=[1, 3]),
             helper.make_node("Squeeze", ["b"], ["sq"], axes=[1, 3]),
             helper.make_node("Unsqueeze", ["sq"], ["z"], axes=[0]),
             helper.make_node("Clip", ["a", "lo", "hi"], ["w"])]
    inits = [_const("lo", np.float32(-0.2)), _const("hi", np.float32(0.3))]
    return _model(nodes, 11, [_x()], inits, outputs=("y", "z", "w")), {"x": X}, None


def _opset13_forms():
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1),
             helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
             helper.make_node("Squeeze", ["s", "axes"], ["z"])]
    return (_model(nodes, 13, [_x()], [_const("axes", np.array([1, 3], np.int64))],
                   outputs=("y", "z")), {"x": X}, None)


def _newest_forms():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=0),
             helper.make_node("Softmax", ["m"], ["y"], axis=-1)]
    inits = [_const("w", w), _const("axes", np.array([2], np.int64))]
    return _model(nodes, NEWEST, [_x()], inits), {"x": X}, None


def _lenet5():
    m = models.lenet5(batch=1, seed=0)
    return m, models.random_input(m), None


CASES = {"opset6_legacy_broadcast": _opset6_legacy_broadcast,
         "opset6_clip_float16": _opset6_clip_float16, "opset7_upsample": _opset7_upsample,
         "opset9_upsample_softmax": _opset9_upsample_softmax, "opset10_forms": _opset10_forms,
         "opset11_forms": _opset11_forms, "opset13_forms": _opset13_forms,
         f"opset{NEWEST}_forms": _newest_forms, "lenet5_opset17": _lenet5}

CHILD = textwrap.dedent("""
    import json
    import sys


    class BlockOnnx:
        def find_spec(self, name, path=None, target=None):
            if name == "onnx" or name.startswith("onnx."):
                raise ImportError(f"{name} is blocked: loading must not need it")


    sys.meta_path.insert(0, BlockOnnx())
    try:
        import onnx  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the onnx blocker does not work")

    import numpy as np

    import ember

    for name, case in json.load(open("cases.json")).items():
        with np.load(case["feeds"]) as f:
            feeds = dict(f)
        outputs = {}
        for how, src in (("path", case["model"]), ("bytes", open(case["model"], "rb").read())):
            for k, y in enumerate(ember.load(src, threads=1).run(None, feeds)):
                outputs[f"{how}{k}"] = y
        np.savez(case["outputs"], **outputs)
    bad = [m for m in sys.modules if m == "onnx" or m.startswith(("onnx.", "google.protobuf"))]
    print("IMPORTED", bad)
""")


def _oracle(path, feeds):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_loading_old_and_new_opsets_never_imports_onnx(tmp_path):
    plan, expected = {}, {}
    for name, build in CASES.items():
        model, feeds, want = build()
        paths = {k: str(tmp_path / f"{name}.{k}") for k in ("onnx", "feeds.npz", "outputs.npz")}
        onnx.save(model, paths["onnx"])
        np.savez(paths["feeds.npz"], **feeds)
        plan[name] = {"model": paths["onnx"], "feeds": paths["feeds.npz"],
                      "outputs": paths["outputs.npz"]}
        expected[name] = want if want is not None else _oracle(paths["onnx"], feeds)
    (tmp_path / "cases.json").write_text(json.dumps(plan))
    # cwd outside the checkout: its ember/ folder would shadow the installed package
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout
    for name, want in expected.items():
        with np.load(plan[name]["outputs"]) as got:
            for how in ("path", "bytes"):
                assert len([k for k in got if k.startswith(how)]) == len(want), name
                for k, e in enumerate(want):
                    g = got[f"{how}{k}"]
                    assert g.dtype == e.dtype and g.shape == e.shape, (name, how, k)
                    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6,
                                               err_msg=f"{name} ({how}) output {k}")
    with np.load(plan["lenet5_opset17"]["outputs"]) as got:
        assert got["path0"].shape == got["bytes0"].shape == (1, 10)
