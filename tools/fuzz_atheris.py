"""Coverage-guided fuzzing of ember with atheris (libFuzzer), for campaigns longer than CI's.

    pip install atheris            # or: pip install -e .[fuzz]; not a runtime dependency
    python tools/fuzz_atheris.py model /tmp/ember-fuzz/model -max_total_time=600 \\
        -rss_limit_mb=3072 -timeout=30

Targets (the first argument; the rest goes to libFuzzer, the first folder is the corpus):

- ``model``: the input is an ONNX file. The corpus starts as one ONNX conformance model per op
  ember supports (written into an empty corpus folder); libFuzzer mutates their bytes, guided by
  the coverage of ember's Python code.
- ``attributes``: the input drives the structure-aware attribute mutator of tests/test_fuzz.py
  (extreme integers, wrong types, geometry near 2^31) over the same seeds.
- ``checkpoint``: the input drives the forged-checkpoint mutator of tests/test_fuzz.py over a
  small real checkpoint, re-signed, then ``Trainer.restore``, a training step and ``predict``.

The property is test_fuzz.py's: the input runs (and agrees with onnxruntime when onnxruntime
runs it too) or is refused with an ``ember.EmberError``. A foreign exception, a wrong answer, a
crash, a run past ``-timeout`` or memory past ``-rss_limit_mb`` makes libFuzzer write the input
as ``crash-*`` / ``timeout-*`` / ``oom-*`` and stop; such inputs go to tests/fuzz_regressions/
(``.onnx`` or ``.ember``) once fixed, where test_fuzz.py replays them. libFuzzer prints the
number of executions (``#N``) as it goes and at the end.
"""
from __future__ import annotations

import os
import sys
import tempfile

import atheris

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
sys.path.insert(0, TESTS)

with atheris.instrument_imports(include=["ember"]):
    import ember  # noqa: F401  (instrumented for coverage; test_fuzz imports it too)
import test_fuzz  # noqa: E402


def _picker(fdp):
    return lambda seq: seq[fdp.ConsumeIntInRange(0, len(seq) - 1)]


def _check(outcome: str) -> None:
    if outcome not in ("ok", "refused"):
        raise AssertionError(outcome)


def model_target(corpus: str):
    seeds = test_fuzz.conformance_seeds()
    if corpus and os.path.isdir(corpus) and not os.listdir(corpus):
        for name, model, _ in seeds.values():
            with open(os.path.join(corpus, f"{name}.onnx"), "wb") as f:
                f.write(model.SerializeToString())
    return lambda data: _check(test_fuzz.run_model(bytes(data)))


def attributes_target(corpus: str):
    seeds = test_fuzz.conformance_seeds()
    ops = sorted(seeds)

    def one(data):
        fdp = atheris.FuzzedDataProvider(data)
        pick = _picker(fdp)
        _, model, feeds = seeds[pick(ops)]
        _check(test_fuzz.run_model(test_fuzz.mutate_attributes(model, pick), feeds))
    return one


def checkpoint_target(corpus: str):
    header, payload = test_fuzz.seed_checkpoint(tempfile.mkdtemp(prefix="ember-fuzz-"))

    def one(data):
        pick = _picker(atheris.FuzzedDataProvider(data))
        _check(test_fuzz.run_checkpoint(test_fuzz.mutate_checkpoint(header, payload, pick)))
    return one


TARGETS = {"model": model_target, "attributes": attributes_target,
           "checkpoint": checkpoint_target}


def main(argv):
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [corpus folder] [libFuzzer flags]")
    rest = argv[2:]
    corpus = next((a for a in rest if not a.startswith("-")), "")
    if corpus:
        os.makedirs(corpus, exist_ok=True)
    one = TARGETS[argv[1]](corpus)
    atheris.Setup([argv[0]] + rest, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
