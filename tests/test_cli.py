"""The command line, run in-process through ``ember.cli.main`` (capsys).

Oracles: figures computed by hand in this file, onnxruntime on the same model, and the bundled
sample's own labels.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ember import cli
from ember.cli import main


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """x[N,3,8,8] → Conv(3→4, 3×3, stride 1, no pad) → Relu → Flatten → Gemm(144→5) → y."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32),
             "wg": rng.standard_normal((5, 144)).astype(np.float32),
             "bg": rng.standard_normal(5).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1)],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("cli") / "small.onnx"
    onnx.save(model, str(path))
    return str(path)


# hand-computed: params = 4·3·3·3 + 4 + 5·144 + 5 = 837
# MACs at batch N: Conv N·4·6·6·3·3·3 = 3,888·N ; Gemm N·5·144 = 720·N
def test_info_counts_params_and_macs(small_model, capsys):
    assert main(["info", small_model, "--shape", "x=2x3x8x8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\bx\s+float32\s+N×3×8×8\s+2×3×8×8\n", out)  # declared, compiled
    assert re.search(r"\by\s+float32\s+N×5\s+2×5\n", out)
    assert "params  837 " in out
    assert f"MACs    {2 * (3888 + 720):,} " in out
    assert re.search(r"Conv\s+1\s+1", out)
    assert re.search(r"Gemm\s+1\s+1", out)
    m = re.search(r"arena ([\d,]+) B\s+naive ([\d,]+) B\s+lower bound ([\d,]+) B", out)
    arena, naive, lower = (int(g.replace(",", "")) for g in m.groups())
    assert lower <= arena <= naive
    # the largest value (conv output, 2·4·6·6 floats) must fit in the arena
    assert arena >= 2 * 4 * 6 * 6 * 4
    m = re.search(r"steps   (\d+) of (\d+) run from C", out)
    assert m and m.group(1) == m.group(2)           # a conv net: every step native


def test_info_course_lenet_figures(tmp_path, capsys):
    """REFERENCE.md: the course LeNet (32×32×3 → conv5×5 ×8 → pool2 → conv5×5 ×16 → pool2 →
    FC120 → FC84 → 10) has 62,958 parameters. MACs by hand: 8·28·28·75 + 16·10·10·200 +
    400·120 + 120·84 + 84·10 = 849,320. The int64 Reshape target is not a parameter."""
    rng = np.random.default_rng(0)

    def t(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.1
    inits = {"w1": t(8, 3, 5, 5), "b1": t(8), "w2": t(16, 8, 5, 5), "b2": t(16),
             "f1": t(120, 400), "c1": t(120), "f2": t(120, 84), "c2": t(84),
             "f3": t(10, 84), "c3": t(10), "shape": np.array([-1, 400], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a1"], kernel_shape=[5, 5]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["a2"], kernel_shape=[5, 5]),
             helper.make_node("Relu", ["a2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p2", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "f1", "c1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["s1"]),
             helper.make_node("MatMul", ["s1", "f2"], ["m2"]),
             helper.make_node("Add", ["m2", "c2"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["s2"]),
             helper.make_node("Gemm", ["s2", "f3", "c3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "lenet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    path = tmp_path / "lenet.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "params  62,958 " in out
    assert "MACs    849,320 " in out


def test_info_default_batch_and_plan_table(small_model, capsys):
    assert main(["info", small_model, "--plan"]) == 0
    out = capsys.readouterr().out
    assert f"MACs    {3888 + 720:,} " in out  # symbolic N defaults to 1
    assert "offset" in out and "life" in out
    assert re.search(r"^y\s+\d", out, re.M)  # the output value has a row


def test_run_with_input_file_matches_onnxruntime(small_model, tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "out.npz"
    assert main(["run", small_model, "-i", f"x={tmp_path / 'x.npy'}", "-o", str(out_path),
                 "--repeat", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\by\s+float32\s+3×5\s+min", out)
    assert "latency" in out and "median of 3 runs" in out
    (ref,) = ort.InferenceSession(small_model, providers=["CPUExecutionProvider"]) \
        .run(None, {"x": x})
    # rtol/atol 1e-4: 144- and 27-term float32 sums in a different order than onnxruntime
    np.testing.assert_allclose(np.load(out_path)["y"], ref, rtol=1e-4, atol=1e-4)


def test_run_single_input_without_name(small_model, tmp_path, capsys):
    x = np.ones((1, 3, 8, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", small_model, "-i", str(tmp_path / "x.npy"), "--repeat", "1"]) == 0
    (ref,) = ort.InferenceSession(small_model, providers=["CPUExecutionProvider"]) \
        .run(None, {"x": x})
    line = next(ln for ln in capsys.readouterr().out.splitlines() if " min " in ln)
    assert f"argmax {int(ref.argmax())}" in line


def test_run_random_inputs_is_seeded(small_model, capsys):
    assert main(["run", small_model, "--repeat", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["run", small_model, "--repeat", "1"]) == 0
    second = capsys.readouterr().out
    summary = [line for line in first.splitlines() if " min " in line]
    assert summary and summary == [line for line in second.splitlines() if " min " in line]
    assert "argmax" in summary[0]  # y is 1×5: a vector


def test_demo_trains_exports_and_serves(capsys, tmp_path):
    """The main job: train on the bundled digits, export ONNX, reload, classify. The exported
    file is checked with onnxruntime (an oracle ember did not write) on the same test split."""
    from ember.datasets import load_digits, train_test_split
    assert main(["demo", "--out", str(tmp_path), "--quiet", "--epochs", "8"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "digits_cnn.onnx"
    x, y = load_digits()
    _, x_test, _, y_test = train_test_split(x, y, 0.2, seed=0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x_test})
    pred = logits.argmax(1)
    correct = int((pred == y_test).sum())
    assert f"accuracy     {correct}/{len(y_test)} " in out
    assert correct / len(y_test) >= 0.95  # a really trained model
    assert f"predicted {pred[0]}" in out
    assert "latency" in out and "exported" in out


def test_bundled_files_are_small():
    import os
    assert os.path.getsize(cli.DEMO_MODEL) < 200_000
    assert os.path.getsize(cli.DEMO_SAMPLE) < 200_000
    assert os.path.getsize(os.path.join(cli.DATA_DIR, "digits.npz")) < 100_000


def test_ops_markdown_lists_registry(capsys):
    from ember.graph.ops import supported_ops
    assert main(["ops", "--markdown"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].startswith("| op |")
    assert len(lines) == 2 + len(supported_ops())
    for op in ("Conv", "Relu", "Gemm", "MaxPool", "Softmax", "Flatten"):
        assert any(line.startswith(f"| {op} |") for line in lines), op


# ---- errors: one line on stderr, exit status 2, no traceback -----------------------------------
def error_of(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ember: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_missing_model_file(capsys, tmp_path):
    assert "no such model file" in error_of(["info", str(tmp_path / "nope.onnx")], capsys)


def test_not_an_onnx_file(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    error_of(["info", str(bad)], capsys)


def test_unsupported_ops_all_listed_on_one_line(capsys, tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"], name="e1"),
         helper.make_node("Unique", ["y"], ["z"], name="nz")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("z", TensorProto.INT64, None)])
    path = tmp_path / "unsupported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    err = error_of(["info", str(path)], capsys)
    assert "Det" in err and "'e1'" in err and "Unique" in err and "'nz'" in err


def test_wrong_dtype_input_file(small_model, capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float64))
    err = error_of(["run", small_model, "-i", f"x={tmp_path / 'x.npy'}"], capsys)
    assert "'x'" in err and "float32" in err


def test_unknown_input_name_and_bad_shape_flag(small_model, capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    assert "unknown input 'q'" in error_of(["run", small_model, "-i",
                                            f"q={tmp_path / 'x.npy'}"], capsys)
    assert "--shape" in error_of(["info", small_model, "--shape", "x=1xax8"], capsys)


def test_bad_threads_flag_is_a_usage_error(small_model, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", small_model, "--threads", "0"])
    assert exc.value.code == 2


def test_python_dash_m_entry_point(tmp_path):
    # cwd away from the repo root: there, ``python -m`` would import the source folder ember/
    # instead of the installed package (whose subpackages setup.py maps from graph/, runtime/…)
    r = subprocess.run([sys.executable, "-m", "ember", "ops"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and "Conv" in r.stdout


def test_bench_compare_and_profile(capsys):
    """`ember bench` times ember beside onnxruntime and profiles every node; the profile's rows
    are the compiled nodes, each on its Cython kernel (the demo model has no numpy fallbacks)."""
    assert main(["bench", cli.DEMO_MODEL, "--batch", "4", "--runs", "3", "--threads", "1",
                 "--compare", "onnxruntime", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "image:4×1×8×8" in out
    assert re.search(r"ratio ember/onnxruntime \d+\.\d\d", out)
    rows = [ln for ln in out.splitlines() if ln.rstrip().endswith(("kernel", "numpy"))]
    assert rows and all(ln.rstrip().endswith("kernel") for ln in rows)
    assert {ln.split()[1] for ln in rows} >= {"Conv", "MaxPool", "Gemm"}


def test_bench_fixed_batch_conflict(capsys, tmp_path):
    """--batch on a model whose batch dim is fixed to another size is a user error."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["bench", str(path), "--batch", "3"]) == 2
    assert "fixed batch of 2" in capsys.readouterr().err


def test_session_profile_rows_sum_to_one():
    import ember
    sess = ember.load(cli.DEMO_MODEL, threads=1)
    prof = sess.profile(runs=2)
    nodes = sess.compile().graph.nodes
    # view ops (the Flatten) share their input's bytes and run nothing, so they are not timed
    assert [r.name for r in sorted(prof, key=lambda r: [n.name for n in nodes].index(r.name))] \
        == [n.name for n in nodes if n.op_type != "Flatten"]
    assert abs(sum(r.share for r in prof) - 1.0) < 1e-9
    conv = [r for r in prof if r.op_type == "Conv"]
    assert conv and all(r.gflops > 0 for r in conv)
    assert "total (sum of nodes)" in str(prof)
