"""The "light" model-zoo networks shipped inside the onnx package (AlexNet, DenseNet-121,
Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512), run end to end with
``ember.load`` and compared with the expected output onnx ships beside each model.

The weights of these models are ConstantOfShape nodes (hence "light"), and only the expected
*output* is shipped. The input is generated the way onnx's backend test runner does it
(``onnx.backend.test.runner.Runner.generate_dummy_data`` with ``random=False``): every float
input becomes ``arange(n).reshape(shape) / n`` in float32, symbolic dims taken as 1.

Tolerance: the ``rtol``/``atol`` onnx's own model-test table gives each model
(``onnx.backend.test.case.model.collect_testcases``: rtol 1e-3, 2e-3 for DenseNet-121; atol 1e-7),
i.e. what any conforming backend is held to: the networks are deep float32 chains whose summation
order differs between implementations.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ember

ONNX_ROOT = os.path.dirname(os.path.dirname(onnx.__file__))  # the url is relative to this


def _light_cases():
    from onnx.backend.test.case.model import collect_testcases
    return [c for c in collect_testcases()
            if c.url and c.url.startswith("onnx/backend/test/data/light/")]


CASES = _light_cases()


def dummy_input(value_info) -> np.ndarray:
    """onnx's runner's deterministic input: arange(n) / n, float32, unknown dims → 1."""
    tt = value_info.type.tensor_type
    assert tt.elem_type == onnx.TensorProto.FLOAT, "the runner only generates float inputs"
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def test_all_light_models_found():
    assert len(CASES) == 9, [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_light_model(case):
    path = os.path.join(ONNX_ROOT, case.url)
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    feeds = {x.name: dummy_input(x) for x in model.graph.input if x.name not in inits}
    prefix = os.path.splitext(path)[0]
    expected = [numpy_helper.to_array(onnx.load_tensor(f"{prefix}_output_{i}.pb"))
                for i in range(len(model.graph.output))]

    sess = ember.load(path)
    got = sess.run(None, feeds)

    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)
