"""ember is a typed package: ``py.typed`` ships, every public function and method of ``ember``,
``ember.nn``, ``ember.optim`` (with its schedules) and ``ember.Trainer`` is annotated, and mypy
— with the project's configuration in pyproject.toml — passes on the public modules and on a
typed user's script, and catches the misuse in a script that is wrong (so the check can fail).

mypy runs on a folder of symbolic links laid out as the installed package (``setup.py`` maps
graph/, runtime/, kernels/ and importers/ into ``ember``), so an editable and a regular install
are checked alike.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ember
from ember import nn, optim
from ember.optim import lr_scheduler
from ember.runtime.history import History
from ember.runtime.profile import Profile

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ["ember", "ember.nn", "ember.optim", "ember.trainer", "ember.export",
                  "ember.runtime.session", "ember.runtime.history", "ember.runtime.profile",
                  "ember.runtime.pickling", "ember.runtime.progress", "ember.onnx_source"]


def public_callables():
    """(qualified name, function) for every public function and method of the public face."""
    objs = [ember.load, ember.export_onnx, ember.Session, ember.Trainer, History, Profile]
    objs += [getattr(nn, n) for n in nn.__all__ if n != "functional"]
    objs += [nn.load_onnx, nn.OnnxModule, nn.CrossEntropyLoss, nn.MSELoss, nn.L1Loss,
             nn.HuberLoss, nn.BCEWithLogitsLoss]
    objs += [getattr(optim, n) for n in optim.__all__ if n not in ("lr_scheduler",)]
    objs += [o for o in vars(lr_scheduler).values()
             if inspect.isclass(o) and o.__module__ == lr_scheduler.__name__]
    seen = set()
    for obj in objs:
        classes = [k for k in getattr(obj, "__mro__", ()) if k.__module__.startswith("ember")]
        if not classes:
            yield obj.__qualname__, obj
            continue
        for klass in classes:
            for name, member in vars(klass).items():
                if name.startswith("_") and name not in ("__init__", "__call__"):
                    continue
                fn = getattr(member, "__func__", None) or getattr(member, "fget", None) or member
                if inspect.isfunction(fn) and fn not in seen:
                    seen.add(fn)
                    yield f"{klass.__qualname__}.{name}", fn


def test_the_public_api_is_annotated():
    missing = []
    for qual, fn in public_callables():
        sig = inspect.signature(fn)
        missing += [f"{qual}({p.name})" for p in sig.parameters.values()
                    if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
        if sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{qual} -> ?")
    assert not missing, f"{len(missing)} unannotated: {missing[:20]}"


def test_py_typed_ships():
    assert (Path(ember.__file__).parent / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "setup.py").read_text()


USAGE = """
    from __future__ import annotations

    import numpy as np

    import ember
    from ember import nn, optim


    def serve(path: str, x: np.ndarray) -> np.ndarray:
        sess: ember.Session = ember.load(path, threads=1, shapes={"image": (4, 1, 8, 8)})
        name: str = sess.get_inputs()[0].name
        out: list[np.ndarray] = sess.run(None, {name: x})
        sess.profile(runs=2).to_chrome_trace("trace.json")
        return out[0]


    def train(x: np.ndarray, y: np.ndarray) -> float:
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        n: int = model.num_parameters()
        opt = optim.SGD(lr=0.1, momentum=0.9)
        sched = optim.lr_scheduler.StepLR(step_size=2, gamma=0.5)
        trainer = ember.Trainer(model, input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(),
                                optimizer=opt, scheduler=sched, batch_size=16, seed=n)
        history = trainer.fit(x, y, epochs=2, validation_data=(x, y), verbose=False)
        history.plot("curves.png")
        predictions: np.ndarray = trainer.predict(x)
        trainer.save("model.ckpt")
        again: ember.Trainer = ember.Trainer.restore("model.ckpt")
        ember.export_onnx(again, "model.onnx")
        return float(history.history["loss"][-1]) + float(predictions.sum())
"""

MISUSE = """
    import ember
    from ember import nn, optim

    ember.load("model.onnx", threads="2")
    nn.Linear(4, "3")
    optim.Adam(lr=1e-3, betas=0.9)
    outputs: int = ember.load("model.onnx").run(None, {})
    ember.Trainer(nn.Linear(4, 2), batch_size=None)
"""
MISUSE_LINES = [4, 5, 6, 7, 8]


def package_view(folder: Path) -> None:
    """``folder/ember``: the package as installed, made of symbolic links."""
    top = Path(ember.__file__).resolve().parent
    view = folder / "ember"
    view.mkdir()
    for entry in top.iterdir():
        (view / entry.name).symlink_to(entry)
    for sub in ("graph", "runtime", "kernels", "importers"):
        if not (view / sub).exists():
            where = importlib.util.find_spec(f"ember.{sub}").submodule_search_locations[0]
            (view / sub).symlink_to(where)


def test_mypy_passes_on_the_public_face_and_catches_misuse(tmp_path):
    pytest.importorskip("mypy", reason="mypy is installed by the test extra")
    package_view(tmp_path)
    (tmp_path / "usage.py").write_text(textwrap.dedent(USAGE))
    (tmp_path / "misuse.py").write_text(textwrap.dedent(MISUSE).lstrip("\n"))
    args = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / ".mypy_cache"), "--no-error-summary",
            "--show-error-codes"]
    args += [m.replace(".", "/") + ("/__init__.py" if m == "ember" else ".py")
             for m in PUBLIC_MODULES]
    r = subprocess.run(args + ["usage.py", "misuse.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, MYPY_FORCE_COLOR="0"))
    errors = [ln for ln in r.stdout.splitlines() if ": error:" in ln]
    outside = [ln for ln in errors if not ln.startswith("misuse.py:")]
    assert not outside, "\n".join(outside) + r.stderr
    flagged = sorted({int(re.match(r"misuse\.py:(\d+):", ln).group(1)) for ln in errors})
    assert flagged == MISUSE_LINES, r.stdout + r.stderr
