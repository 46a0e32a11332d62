"""Tables derived from the op registry stay derived: the README's ops table is what
``python -m ember ops --markdown`` prints, and MAC counts come from each op.

Oracles: the generated table itself (the README must not drift from it) and hand-computed
MACs.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ember.cli import main
from ember.graph.cost import node_macs
from ember.graph.ir import Node, TensorType

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- ops table: begin", "<!-- ops table: end -->"


def readme_ops_block() -> list:
    """The lines between the README's ops-table markers."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(BEGIN))
    stop = next(k for k, line in enumerate(lines) if line.startswith(END))
    return lines[start + 1:stop]


def test_readme_ops_table_is_generated(capsys):
    """Regenerate the block with ``python -m ember ops --markdown`` when this fails."""
    assert main(["ops", "--markdown"]) == 0
    generated = capsys.readouterr().out.strip().splitlines()
    block = readme_ops_block()
    stale = sorted(set(block) ^ set(generated))
    assert block == generated, f"README ops table differs from the generated one: {stale[:6]}"


def _types(**shapes):
    return {name: TensorType(np.dtype(np.float32), shape) for name, shape in shapes.items()}


def test_macs_come_from_each_op():
    """Conv, ConvTranspose, Gemm and MatMul count their own MACs; the rest count none."""
    conv = Node("Conv", ["x", "w"], ["y"], name="c")
    assert node_macs(conv, _types(x=(2, 3, 8, 8), w=(4, 3, 3, 3), y=(2, 4, 6, 6))) \
        == 2 * 4 * 6 * 6 * 3 * 3 * 3
    convt = Node("ConvTranspose", ["x", "w"], ["y"], name="t")
    assert node_macs(convt, _types(x=(1, 4, 5, 5), w=(4, 2, 3, 3), y=(1, 2, 7, 7))) \
        == 4 * 5 * 5 * 2 * 3 * 3
    gemm = Node("Gemm", ["a", "b"], ["y"], name="g", attrs={"transA": 1})
    assert node_macs(gemm, _types(a=(7, 3), b=(7, 5), y=(3, 5))) == 3 * 5 * 7
    matmul = Node("MatMul", ["a", "b"], ["y"], name="m")
    assert node_macs(matmul, _types(a=(2, 3, 4), b=(4, 6), y=(2, 3, 6))) == 2 * 3 * 6 * 4
    relu = Node("Relu", ["x"], ["y"], name="r")
    assert node_macs(relu, _types(x=(2, 3), y=(2, 3))) == 0
    assert node_macs(conv, {}) == 0   # untyped output: nothing to count

