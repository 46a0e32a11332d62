"""Kernel choice by measurement (runtime/tuning.py): measured once per case and remembered,
on disk when asked, never with EMBER_TUNE=0; whatever wins, the answer is the conv's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ember.runtime import tuning
from ember.runtime.binders import conv as conv_binder

BIG = (1, 64, 64, 28, 28)      # N, C, M, OH, OW: every candidate allowed


@pytest.fixture
def tuned(monkeypatch):
    monkeypatch.setenv("EMBER_TUNE", "1")
    monkeypatch.delenv("EMBER_TUNE_CACHE", raising=False)
    tuning.forget()
    yield
    tuning.forget()


def _count_measures(monkeypatch):
    calls = []
    real = tuning.measure

    def counting(candidates):
        calls.append(sorted(candidates))
        return real(candidates)
    monkeypatch.setattr(tuning, "measure", counting)
    return calls


def test_static_rule_when_tuning_is_off(monkeypatch):
    monkeypatch.setenv("EMBER_TUNE", "0")
    calls = _count_measures(monkeypatch)
    assert conv_binder.winograd_tile(*BIG) == 4
    assert conv_binder.winograd_tile(1, 16, 16, 28, 28) == 0      # few channels: GEMM
    assert conv_binder.winograd_tile(1, 64, 64, 6, 6) == 2
    assert calls == []


def test_measured_once_per_case_and_threads(tuned, monkeypatch):
    calls = _count_measures(monkeypatch)
    first = conv_binder.winograd_tile(*BIG, threads=1)
    assert first in (0, 2, 4)
    assert conv_binder.winograd_tile(*BIG, threads=1) == first
    assert calls == [["gemm", "winograd2", "winograd4"]]
    conv_binder.winograd_tile(*BIG, threads=2)
    assert len(calls) == 2


def test_one_candidate_is_not_timed(tuned, monkeypatch):
    calls = _count_measures(monkeypatch)
    assert conv_binder.winograd_tile(1, 8, 8, 28, 28) == 0
    assert calls == []


def test_choices_persist_on_disk(tuned, monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    monkeypatch.setenv("EMBER_TUNE_CACHE", str(path))
    first = conv_binder.winograd_tile(*BIG)
    saved = json.loads(path.read_text())
    assert list(saved.values()) == ["gemm" if first == 0 else f"winograd{first}"]
    tuning.forget()

    def no_timing(candidates):
        raise AssertionError("the disk cache should have answered")
    monkeypatch.setattr(tuning, "measure", no_timing)
    assert conv_binder.winograd_tile(*BIG) == first


def test_unreadable_cache_is_ignored(tuned, monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    path.write_text("{not json")
    monkeypatch.setenv("EMBER_TUNE_CACHE", str(path))
    assert conv_binder.winograd_tile(*BIG) in (0, 2, 4)
    assert json.loads(path.read_text())    # rewritten whole


def test_a_failing_candidate_is_dropped():
    def boom():
        raise ValueError("no")
    times = tuning.measure({"ok": lambda: None, "bad": boom})
    assert list(times) == ["ok"]


def test_tuned_session_answers_like_the_reference(tuned):
    import ember
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    sess = ember.load(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), threads=1)
    x = rng.standard_normal((1, 64, 28, 28)).astype(np.float32)
    ref = ember.load(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), threads=1,
        optimize=False)
    import onnxruntime as ort
    peer = ort.InferenceSession(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        providers=["CPUExecutionProvider"])
    want = peer.run(None, {"x": x})[0]
    # F(4×4) rounding: within 23·ε·Σ|x||w| (kernels/CONTRACT.md) — ~1e-5 of max|y| here
    for s in (sess, ref):
        got = s.run(None, {"x": x})[0]
        assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
