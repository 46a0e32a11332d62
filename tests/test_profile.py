"""``Session.profile`` and ``ember bench --profile``: every pass sees the real inputs, and the
per-node comparison with onnxruntime's own profiler pairs the same nodes."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import cli
from ember.cli import main
from ember.runtime.peer_profile import PeerNodeTime, comparison_table, match_nodes
from ember.runtime.profile import NodeTime, Profile


def _fed_index_model() -> bytes:
    """A Gather on a fed index whose bytes the plan hands to a later value: a pass that does
    not start from the feeds reads floats as indices."""
    table = np.arange(2000, dtype=np.float32).reshape(1000, 2)
    g = helper.make_graph([
        helper.make_node("Gather", ["table", "idx"], ["g"], axis=0),
        helper.make_node("Mul", ["g", "two"], ["m"]),
        helper.make_node("Add", ["m", "one"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"])], "fed_index",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 2])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.float32(2), "two"),
         numpy_helper.from_array(np.float32(1), "one")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_every_profiled_pass_starts_from_the_feeds():
    sess = ember.load(_fed_index_model(), threads=1)
    compiled = sess.compile()
    offsets = compiled.plan.offsets
    # the premise: the index's bytes are reused by a later value
    assert any(offsets[v] == offsets["idx"] for v in ("m", "a", "y", "g"))
    feeds = {"idx": np.arange(900, 932, dtype=np.int64)}
    prof = sess.profile(feeds, runs=3, warmup=2)
    assert {r.op_type for r in prof} == {"Gather", "Mul", "Add"}   # the Relu fuses into the Add
    assert prof.run_ms > 0 and "whole run (median)" in str(prof)
    # and the session still answers right afterwards
    expect = np.maximum(np.arange(1800, 1864, dtype=np.float32).reshape(32, 2) * 2 + 1, 0)
    np.testing.assert_array_equal(sess.run(None, feeds)[0], expect)


@pytest.mark.parametrize("runs,warmup", [(0, 1), (2, -1), (1.5, 0)])
def test_profile_rejects_bad_counts(runs, warmup):
    sess = ember.load(cli.DEMO_MODEL, threads=1)
    with pytest.raises(ember.InputError, match="runs|warmup"):
        sess.profile(runs=runs, warmup=warmup)


def _row(name, op, ms, outputs):
    return NodeTime(name, op, ms, 0.0, 0.0, True, outputs)


def test_match_nodes_by_name_output_and_nchwc_suffix():
    prof = Profile([_row("conv1", "Conv", 2.0, ["relu1"]), _row("pool", "MaxPool", 1.0, ["p"]),
                    _row("fc", "Gemm", 0.5, ["logits"])])
    peers = [PeerNodeTime("relu1_nchwc", "Conv", 1.0),     # fused + blocked: output + suffix
             PeerNodeTime("p_nchwc", "MaxPool", 0.5),
             PeerNodeTime("fc", "Gemm", 0.25),              # same name
             PeerNodeTime("ReorderOutput", "ReorderOutput", 0.1)]
    pairs, unmatched = match_nodes(prof, peers)
    assert [(r.name, [p.name for p in ps]) for r, ps in pairs] == \
        [("conv1", ["relu1_nchwc"]), ("pool", ["p_nchwc"]), ("fc", ["fc"])]
    assert [p.name for p in unmatched] == ["ReorderOutput"]
    table = comparison_table(prof, peers)
    assert "(onnxruntime only)" in table and "2.00" in table   # conv1: 2.0 / 1.0


def test_bench_compare_profile_pairs_every_timed_node(capsys):
    assert main(["bench", cli.DEMO_MODEL, "--batch", "2", "--runs", "2", "--threads", "1",
                 "--compare", "onnxruntime", "--profile"]) == 0
    out = capsys.readouterr().out
    table = out.split("onnxruntime's own profiler")[1].splitlines()[2:]
    rows = [ln for ln in table if ln.split()[0] in {"conv1", "conv2", "pool1", "pool2"}]
    # every conv and pool has an onnxruntime time beside it (a number, not a dash)
    assert len(rows) == 4 and all(float(ln.split()[3]) > 0 for ln in rows)


def test_bench_asks_for_symbolic_spatial_dims(tmp_path, capsys):
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "spatial",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    path = tmp_path / "spatial.onnx"
    path.write_bytes(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert main(["bench", str(path), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--shape x=?,3,?,?" in err and "symbolic" in err
    assert main(["bench", str(path), "--runs", "1", "--shape", "x=1,3,8,8"]) == 0
