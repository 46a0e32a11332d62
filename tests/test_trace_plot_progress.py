"""Chrome traces of a profile, History.plot, and progress bars on the command line.

Oracles: the Trace Event Format's documented fields (name, cat, ph, ts, dur, pid, tid, args;
"X" complete events in µs, "M" metadata) checked on the parsed JSON; onnx's own shape inference
for the shapes a trace reports; the History's numbers for the plotted curves; tqdm's output on a
stderr that says it is a terminal (a StringIO whose ``isatty`` is True: deterministic).
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest

import ember
from ember import cli
from ember.cli import DEMO_MODEL, main
from ember.runtime.history import History

from models import random_input, small_vgg

RUNS = 3


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    model = small_vgg(batch=2, seed=0)
    sess = ember.load(model.SerializeToString())
    prof = sess.profile(random_input(model, batch=2), runs=RUNS, warmup=1)
    path = tmp_path_factory.mktemp("trace") / "trace.json"
    prof.to_chrome_trace(path)
    with open(path) as f:
        return model, prof, json.load(f)


# ---- Chrome trace -------------------------------------------------------------------------------
def test_trace_has_the_documented_event_fields(traced):
    _, prof, trace = traced
    assert set(trace) >= {"traceEvents", "displayTimeUnit"}
    events = trace["traceEvents"]
    for e in events:
        assert isinstance(e["name"], str) and e["ph"] in ("X", "M")
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e.get("args", {}), dict)
        if e["ph"] == "X":
            assert isinstance(e["cat"], str)
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
    meta = {e["name"] for e in events if e["ph"] == "M"}
    assert meta == {"process_name", "thread_name"}
    nodes = [e for e in events if e["ph"] == "X" and e["cat"] != "pass"]
    assert len(nodes) == RUNS * len(prof)
    assert {e["args"]["path"] for e in nodes} <= {"kernel", "numpy"}


def test_trace_nodes_nest_in_their_pass_in_plan_order(traced):
    _, prof, trace = traced
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    passes = [e for e in xs if e["cat"] == "pass"]
    assert [p["args"]["pass"] for p in passes] == list(range(RUNS))
    slack = 0.002    # µs rounding of ts and dur to 3 decimals
    for p in passes:
        inside = [e for e in xs if e["cat"] != "pass" and e["args"]["pass"] == p["args"]["pass"]]
        assert [e["args"]["index"] for e in inside] == sorted(r.index for r in prof)
        for a, b in zip(inside, inside[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + slack          # one thread: no overlap
        assert inside[0]["ts"] >= p["ts"] - slack
        assert inside[-1]["ts"] + inside[-1]["dur"] <= p["ts"] + p["dur"] + slack
    # the profile's table is the median of exactly these events
    for row in prof:
        durs = [e["dur"] for e in xs if e["cat"] != "pass" and e["args"]["index"] == row.index]
        assert statistics.median(durs) == pytest.approx(row.ms * 1e3, abs=slack)
        assert all(e["name"] == row.name and e["cat"] == row.op_type for e in xs
                   if e["cat"] != "pass" and e["args"]["index"] == row.index)


def test_trace_shapes_agree_with_onnx_shape_inference(traced):
    model, _, trace = traced
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
             for vi in [*inferred.value_info, *inferred.input, *inferred.output]}
    known.update({t.name: list(t.dims) for t in inferred.initializer})
    checked = 0
    for e in trace["traceEvents"]:
        for name, shape in e.get("args", {}).get("shapes", {}).items():
            if name in known:
                assert shape == known[name], name
                checked += 1
    assert checked >= RUNS * 4


def test_bench_writes_a_trace(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", DEMO_MODEL, "--runs", "3", "--trace", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    events = json.loads(out.read_text())["traceEvents"]
    assert {e["cat"] for e in events if e["ph"] == "X"} >= {"Conv", "pass"}


def test_bench_trace_to_an_unwritable_path_is_an_ember_error(tmp_path, capsys):
    bad = tmp_path / "no" / "such" / "folder" / "t.json"
    assert main(["bench", DEMO_MODEL, "--runs", "1", "--trace", str(bad)]) == 2
    assert "ember: error: cannot write the trace" in capsys.readouterr().err


# ---- History.plot ------------------------------------------------------------------------------
HISTORY = {"loss": [1.2, 0.7, 0.5], "val_loss": [1.3, 0.9, 0.8],
           "accuracy": [0.5, 0.75, 0.8], "val_accuracy": [0.45, 0.7, 0.72]}


def test_history_plot_draws_every_curve(tmp_path):
    import matplotlib.image
    path = tmp_path / "curves.png"
    fig = History(HISTORY, [0, 1, 2]).plot(path)
    drawn = {(ax.get_title(), line.get_label()): list(line.get_ydata())
             for ax in fig.axes for line in ax.get_lines()}
    assert drawn == {("loss", "training"): HISTORY["loss"],
                     ("loss", "validation"): HISTORY["val_loss"],
                     ("accuracy", "training"): HISTORY["accuracy"],
                     ("accuracy", "validation"): HISTORY["val_accuracy"]}
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2, 3]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (400, 1100) and pixels[..., :3].std() > 0.05


@pytest.mark.parametrize("history,match", [
    (History(), "nothing to draw"),
    (History({"lr": [0.1]}, [0]), "nothing to draw"),
])
def test_history_plot_refuses_an_empty_history(history, match, tmp_path):
    with pytest.raises(ember.EmberError, match=match):
        history.plot(tmp_path / "x.png")


def test_history_plot_without_matplotlib_says_so(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ember.EmberError, match=r"needs matplotlib.*pip install matplotlib"):
        History(HISTORY, [0, 1, 2]).plot(tmp_path / "x.png")


def test_history_plot_to_an_unwritable_path(tmp_path):
    with pytest.raises(ember.EmberError, match="cannot write"):
        History(HISTORY, [0, 1, 2]).plot(tmp_path / "missing" / "x.png")


def test_demo_out_saves_the_curves(tmp_path, capsys):
    assert main(["demo", "--epochs", "2", "--quiet", "--out", str(tmp_path)]) == 0
    assert "curves" in capsys.readouterr().out
    assert (tmp_path / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "digits_cnn.onnx").exists()


# ---- progress bars -----------------------------------------------------------------------------
@pytest.fixture
def batch_input(tmp_path):
    x = np.random.default_rng(0).standard_normal((300, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return str(tmp_path / "x.npy")


def run_batch_stderr(monkeypatch, tmp_path, batch_input, stream, *extra):
    monkeypatch.setattr(sys, "stderr", stream)
    assert main(["run-batch", DEMO_MODEL, "--input", batch_input, "--output",
                 str(tmp_path / "y.npy"), "--batch", "32", "--mpi", "off", *extra]) == 0
    return stream.getvalue()


@pytest.mark.parametrize("stream,env,extra,shown", [
    (FakeTerminal, None, (), True),
    (FakeTerminal, None, ("--quiet",), False),
    (io.StringIO, None, (), False),                # not a terminal: off
    (io.StringIO, "1", (), True),                  # forced on (e.g. under mpirun)
    (FakeTerminal, "0", (), False),
])
def test_run_batch_progress_bar(monkeypatch, tmp_path, batch_input, stream, env, extra, shown):
    if env is None:
        monkeypatch.delenv("EMBER_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("EMBER_PROGRESS", env)
    err = run_batch_stderr(monkeypatch, tmp_path, batch_input, stream(), *extra)
    assert ("run-batch" in err) == shown, err
    if shown:
        assert "300/300" in err and "rows/s" in err and "<" in err      # rate, time left
    assert np.load(tmp_path / "y.npy").shape == (300, 10)


def test_bad_progress_variable_is_an_ember_error(monkeypatch, tmp_path, batch_input, capsys):
    monkeypatch.setenv("EMBER_PROGRESS", "maybe")
    assert main(["run-batch", DEMO_MODEL, "--input", batch_input, "--output",
                 str(tmp_path / "y.npy"), "--mpi", "off"]) == 2
    assert "EMBER_PROGRESS='maybe'" in capsys.readouterr().err


@pytest.mark.parametrize("quiet", [False, True])
def test_long_bench_shows_a_bar(monkeypatch, quiet):
    monkeypatch.delenv("EMBER_PROGRESS", raising=False)
    monkeypatch.setattr(cli, "LONG_BENCH_S", 0.0)      # every bench counts as long
    err = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["bench", DEMO_MODEL, "--runs", "4", "--batch", "8"]
                + (["--quiet"] if quiet else [])) == 0
    text = err.getvalue()
    assert ("bench" in text) != quiet
    if not quiet:
        assert "32/32" in text and "rows/s" in text


def test_short_bench_shows_no_bar(monkeypatch):
    monkeypatch.delenv("EMBER_PROGRESS", raising=False)
    err = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["bench", DEMO_MODEL, "--runs", "3"]) == 0
    assert "bench" not in err.getvalue()


MPIRUN = shutil.which("mpirun")


@pytest.mark.skipif(MPIRUN is None or importlib.util.find_spec("mpi4py") is None,
                    reason="needs Open MPI's mpirun and mpi4py ('ember[mpi]')")
def test_run_batch_bar_counts_every_ranks_rows(tmp_path, batch_input):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", EMBER_PROGRESS="1")
    r = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-m", "ember", "run-batch",
                        DEMO_MODEL, "--input", batch_input, "--output",
                        str(tmp_path / "y.npy"), "--batch", "16"],
                       capture_output=True, text=True, timeout=120, env=env,
                       cwd=tempfile.gettempdir())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 rank(s)" in r.stdout
    # rank 0's bar reached every row: rank 1's 150 came over MPI (alone it would end at 150)
    assert "run-batch: 100%" in r.stderr and "300/300" in r.stderr, r.stderr[-2000:]
