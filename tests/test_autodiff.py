"""graph.autodiff: every gradient rule checked against central finite differences in float64.

The oracle is a small reference interpreter written here (each node's numpy ``compute`` in
topological order) evaluating the *forward* graph at perturbed points; the analytic gradient is
the graph ``backward`` built, evaluated by the same interpreter. Agreement is measured the way
the courses' gradient check does: ‖a − b‖/(‖a‖ + ‖b‖) < 1e-7.
"""
from __future__ import annotations

import numpy as np
import pytest

from ember.graph.autodiff import backward, to_training
from ember.graph.builder import Builder
from ember.graph.errors import ModelError
from ember.graph.infer import infer_shapes
from ember.graph.ops import get_op

F64 = "float64"
EPS = 1e-6
TOL = 1e-7


# ---- the reference interpreter and the gradient check ------------------------------------------
def run(graph, feeds=None, replace=None):
    """Every value of ``graph`` given ``feeds``; ``replace`` overrides initializers/feeds."""
    env = dict(graph.initializers)
    env.update(feeds or {})
    env.update(replace or {})
    for node in graph.nodes:
        outs = get_op(node.op_type, node.domain).compute(
            node, [env[i] if i else None for i in node.inputs])
        for name, v in zip(node.outputs, outs):
            if name:
                env[name] = np.asarray(v)
    return env


def rel_error(a, b):
    a, b = np.ravel(a), np.ravel(b)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else np.linalg.norm(a - b) / denom


def numeric_grad(graph, loss, name, feeds):
    """Central differences of the scalar ``loss`` with respect to value ``name``."""
    base = dict(graph.initializers)
    base.update(feeds)
    x = np.array(base[name], dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + EPS
        plus = float(run(graph, feeds, {name: x.copy()})[loss].reshape(()))
        x[i] = old - EPS
        minus = float(run(graph, feeds, {name: x.copy()})[loss].reshape(()))
        x[i] = old
        grad[i] = (plus - minus) / (2 * EPS)
    return grad


def gradcheck(graph, loss, wrt, feeds=None):
    """Check every gradient ``backward`` gives against finite differences; return the new
    graph and its gradient names."""
    feeds = feeds or {}
    new, grads = backward(graph, loss, wrt)
    env = run(new, feeds)
    moved = False
    for name in wrt:
        analytic = env[grads[name]]
        t = graph.types[name]
        assert analytic.shape == tuple(t.shape) and analytic.dtype == t.dtype, name
        numeric = numeric_grad(graph, loss, name, feeds)
        err = rel_error(analytic, numeric)
        # a gradient that is exactly zero (e.g. a conv bias before batch norm) shows up as
        # rounding noise on both sides: judged absolutely
        exact_zero = np.abs(numeric).max() < 1e-9 and np.abs(analytic).max() < 1e-12
        assert err < TOL or exact_zero, (f"{name}: relative error {err:.3g}\n"
                                         f"analytic {analytic}\nnumeric {numeric}")
        moved |= np.abs(numeric).max() > 1e-6
    assert moved, "the loss does not depend on any checked value: the check proves nothing"
    return new, grads


class Case:
    """A Builder in float64 with seeded random parameters, finished with a scalar loss that
    weighs every output element by a fixed random tensor."""

    def __init__(self, seed=0):
        self.b = Builder("case", seed=seed)
        self.rng = np.random.default_rng(seed + 1)
        self.wrt = []

    def param(self, name, shape=None, value=None, low=-1.0, high=1.0, wrt=True):
        if value is None:
            value = self.rng.uniform(low, high, shape)
        v = self.b.parameter(name, np.shape(value), init=np.asarray(value, np.float64),
                             dtype=F64)
        if wrt:
            self.wrt.append(name)
        return v

    def distinct(self, name, shape):
        """Distinct values spaced ≥ 0.02 apart (no ties or kinks for max-pooling)."""
        n = int(np.prod(shape))
        return self.param(name, value=(self.rng.permutation(n) * 0.05 - n * 0.025)
                          .reshape(shape) + 0.01)

    def finish(self, y, weigh=True):
        b = self.b
        if weigh:
            r = b.constant(self.rng.uniform(0.5, 1.5, y.shape), dtype=F64)
            y = b.op("ReduceSum", [y * r], keepdims=0)
        b.output(y, "loss")
        return b.build()

    def check(self, y, weigh=True, feeds=None):
        return gradcheck(self.finish(y, weigh), "loss", self.wrt, feeds)


# ---- conv family --------------------------------------------------------------------------------
CONV_CASES = [  # strides, pads, dilations, group, channels (C, M), bias
    ((1, 1), (0, 0, 0, 0), (1, 1), 1, (2, 3), True),
    ((2, 2), (1, 0, 2, 1), (1, 1), 1, (2, 3), True),
    ((1, 2), (1, 1, 1, 1), (2, 2), 1, (2, 2), False),
    ((1, 1), (1, 1, 0, 0), (1, 1), 2, (4, 2), True),
    ((2, 2), (1, 1, 1, 1), (1, 1), 4, (4, 4), False),   # depthwise
]


@pytest.mark.parametrize("strides,pads,dil,group,chans,bias", CONV_CASES)
def test_conv(strides, pads, dil, group, chans, bias):
    c, m = chans
    t = Case()
    x = t.param("x", (2, c, 6, 5))
    w = t.param("w", (m, c // group, 3, 3))
    bb = t.param("b", (m,)) if bias else None
    t.check(t.b.conv(x, w, bb, strides=strides, pads=pads, dilations=dil, group=group))


@pytest.mark.parametrize("strides,opad,pads,group", [
    ((2, 2), (1, 1), (0, 0, 0, 0), 1),
    ((2, 1), (1, 0), (1, 0, 0, 1), 2),
    ((1, 1), (0, 0), (1, 1, 1, 1), 1),
])
def test_conv_transpose(strides, opad, pads, group):
    t = Case()
    x = t.param("x", (2, 2, 3, 3))
    w = t.param("w", (2, 3 if group == 1 else 2, 3, 3))
    bb = t.param("b", (w.shape[1] * group,))
    t.check(t.b.op("ConvTranspose", [x, w, bb], strides=list(strides),
                   output_padding=list(opad), pads=list(pads), group=group))


def test_conv_input_gradient_only_where_needed():
    t = Case()
    x = t.b.input("x", (1, 2, 5, 5), F64)
    w = t.param("w", (3, 2, 3, 3))
    g = t.finish(t.b.conv(x, w).relu())
    new, grads = backward(g, "loss", ["w"])
    ops = [n.op_type for n in new.nodes]
    assert "ConvGradWeight" in ops and "ConvGradInput" not in ops
    feeds = {"x": np.random.default_rng(3).normal(size=(1, 2, 5, 5))}
    env = run(new, feeds)
    assert rel_error(env[grads["w"]], numeric_grad(g, "loss", "w", feeds)) < TOL


# ---- pooling --------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,strides,pads,ceil,dil", [
    ((2, 2), (2, 2), (0, 0, 0, 0), 0, (1, 1)),
    ((3, 3), (1, 1), (1, 1, 1, 1), 0, (1, 1)),
    ((3, 3), (2, 2), (1, 0, 1, 0), 1, (1, 1)),
    ((2, 2), (2, 2), (0, 0, 0, 0), 1, (1, 1)),
    ((2, 3), (1, 2), (0, 1, 1, 0), 0, (2, 1)),
])
def test_max_pool(kernel, strides, pads, ceil, dil):
    t = Case()
    x = t.distinct("x", (2, 2, 7, 6))
    t.check(t.b.max_pool(x, kernel, strides, pads, ceil_mode=ceil, dilations=list(dil)))


def test_max_pool_tie_goes_to_first_maximum():
    t = Case()
    x = t.param("x", value=np.ones((1, 1, 2, 2)))
    g = t.finish(t.b.max_pool(x, (2, 2)), weigh=False)
    new, grads = backward(g, "loss", ["x"])
    np.testing.assert_array_equal(run(new)[grads["x"]], [[[[1, 0], [0, 0]]]])


@pytest.mark.parametrize("kernel,strides,pads,ceil,include", [
    ((2, 2), (2, 2), (0, 0, 0, 0), 0, 0),
    ((3, 3), (2, 2), (1, 1, 1, 1), 0, 0),
    ((3, 3), (2, 2), (1, 1, 1, 1), 0, 1),
    ((3, 2), (2, 2), (1, 0, 0, 1), 1, 0),
    ((3, 2), (2, 2), (1, 0, 0, 1), 1, 1),
])
def test_average_pool(kernel, strides, pads, ceil, include):
    t = Case()
    x = t.param("x", (2, 2, 6, 7))
    t.check(t.b.avg_pool(x, kernel, strides, pads, ceil_mode=ceil, count_include_pad=include))


def test_global_average_pool():
    t = Case()
    t.check(t.b.global_avg_pool(t.param("x", (2, 3, 4, 5))))


# ---- Gemm and MatMul -------------------------------------------------------------------------
@pytest.mark.parametrize("ta", [0, 1])
@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("alpha,beta,c_shape", [
    (1.0, 1.0, (5,)), (0.5, 2.0, (3, 5)), (1.5, 0.5, (1, 5)), (1.0, -1.0, (3, 1)),
    (1.0, 3.0, ()), (2.0, 1.0, None),
])
def test_gemm(ta, tb, alpha, beta, c_shape):
    t = Case()
    a = t.param("a", (4, 3) if ta else (3, 4))
    b = t.param("b", (5, 4) if tb else (4, 5))
    c = t.param("c", c_shape) if c_shape is not None else None
    t.check(t.b.gemm(a, b, c, alpha=alpha, beta=beta, transA=ta, transB=tb))


@pytest.mark.parametrize("sa,sb", [
    ((3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
    ((4,), (4,)), ((1, 3, 4), (2, 4, 5)),
])
def test_matmul(sa, sb):
    t = Case()
    y = t.param("a", sa) @ t.param("b", sb)
    t.check(y if y.shape else y * 1.0)


# ---- activations, softmax ---------------------------------------------------------------------
def _away_from(x, kinks, gap=0.05):
    for k in kinks:
        near = np.abs(x - k) < gap
        x = np.where(near, k + np.where(x >= k, gap, -gap) * 2, x)
    return x


ACTIVATIONS = [  # op, attrs, kinks
    ("Relu", {}, [0]), ("LeakyRelu", {"alpha": 0.1}, [0]), ("Elu", {"alpha": 0.7}, [0]),
    ("Sigmoid", {}, []), ("Tanh", {}, []), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4},
                                            [-0.4 / 0.3, 0.6 / 0.3]),
    ("HardSwish", {}, [-3, 3]), ("Softplus", {}, []), ("Exp", {}, []), ("Erf", {}, []),
    ("Gelu", {}, []), ("Gelu", {"approximate": "tanh"}, []),
]


@pytest.mark.parametrize("op,attrs,kinks", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation(op, attrs, kinks):
    t = Case()
    x = t.param("x", value=_away_from(np.random.default_rng(5).uniform(-4, 4, (3, 16)), kinks))
    t.check(t.b.op(op, [x], **attrs))


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (0.0, 6.0), (None, 0.3), (-0.2, None)])
def test_clip(lo, hi):
    t = Case()
    kinks = [k for k in (lo, hi) if k is not None]
    x = t.param("x", value=_away_from(np.random.default_rng(6).uniform(-1, 1, (4, 8)), kinks))
    t.check(t.b.clip(x, lo, hi))


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_positive_domain_unary(op):
    t = Case()
    t.check(t.b.op(op, [t.param("x", (3, 4), low=0.5, high=2.0)]))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax(op, axis):
    t = Case()
    t.check(t.b.op(op, [t.param("x", (2, 3, 4), low=-2, high=2)], axis=axis))


# ---- batch normalization, dropout ----------------------------------------------------------------
@pytest.mark.parametrize("training", [1, 0])
def test_batch_norm(training):
    t = Case()
    x = t.param("x", (3, 2, 2, 3), low=-2, high=2)
    scale, bias = t.param("scale", (2,), low=0.5, high=1.5), t.param("bias", (2,))
    mean = t.param("mean", (2,), wrt=not training)
    var = t.param("var", (2,), low=0.5, high=1.5, wrt=not training)
    y = t.b.op("BatchNormalization", [x, scale, bias, mean, var], num_outputs=3 if training
               else 1, training_mode=training, epsilon=1e-3)
    t.check(y[0] if training else y)


LAYER_NORM_CASES = [  # X's shape, axis, Scale/B's shape, with B
    ((3, 5), -1, (5,), True), ((2, 3, 4), 1, (3, 4), True), ((2, 3, 4), 0, (2, 3, 4), False),
    ((2, 3, 4), -1, (1, 1, 4), True), ((2, 3, 4), 1, (3, 1), True), ((4, 1), -1, (1,), True),
]


@pytest.mark.parametrize("shape,axis,param_shape,with_bias", LAYER_NORM_CASES)
def test_layer_norm(shape, axis, param_shape, with_bias):
    t = Case()
    ins = [t.param("x", shape, low=-2, high=2), t.param("scale", param_shape, low=0.5, high=1.5)]
    if with_bias:
        ins.append(t.param("bias", param_shape))
    t.check(t.b.op("LayerNormalization", ins, axis=axis, epsilon=1e-3))


def test_layer_norm_scale_over_the_outer_axes_is_not_differentiated():
    """ONNX lets Scale broadcast over every axis of X; a Scale varying over the axes before
    ``axis`` has no gradient rule and says so."""
    t = Case()
    x, scale = t.param("x", (2, 3, 4)), t.param("scale", (2, 1, 4))
    g = t.finish(t.b.op("LayerNormalization", [x, scale], axis=2))
    with pytest.raises(ModelError, match=r"varies over the axes before axis 2"):
        backward(g, "loss", ["x", "scale"])


def test_dropout_reuses_the_forward_mask():
    t = Case()
    x = t.param("x", (4, 50))
    y = t.b.dropout(x, ratio=0.3)        # inference form: to_training switches it on
    g = to_training(t.finish(y), seed=7)
    drop = next(n for n in g.nodes if n.op_type == "Dropout")
    assert drop.attrs["seed"] == 7 + g.nodes.index(drop) and len(drop.outputs) == 2
    new, grads = backward(g, "loss", ["x"])
    env = run(new, {"dropout_step": np.array(3)})
    mask = env[drop.outputs[1]]
    assert 0 < mask.mean() < 1
    dy = env[next(n for n in new.nodes if n.op_type == "DropoutGrad").inputs[0]]
    np.testing.assert_allclose(env[grads["x"]], dy * mask / 0.7, rtol=1e-12)
    np.testing.assert_allclose(env[drop.outputs[0]], env["x"] * mask / 0.7, rtol=1e-12)


def test_to_training_gives_every_dropout_one_step_input():
    """One int64 scalar graph input, shared by every training Dropout as its 4th input: the
    masks are a function of (seed, step), so they change with the step and only with it."""
    t = Case()
    x = t.param("x", (3, 40))
    y = t.b.dropout(t.b.dropout(x, ratio=0.5).tanh(), ratio=0.25, training=True)
    g = to_training(t.finish(y), seed=2)
    step = g.metadata["dropout_step"]
    assert step == "dropout_step" and g.inputs[-1] == step
    assert g.types[step].dtype == np.int64 and g.types[step].shape == ()
    drops = [n for n in g.nodes if n.op_type == "Dropout"]
    assert len(drops) == 2 and all(n.inputs[3] == step for n in drops)
    assert len({n.attrs["seed"] for n in drops}) == 2
    infer_shapes(g, fold=False)
    masks = {k: [run(g, {step: np.array(k)})[n.outputs[1]] for n in drops] for k in (0, 1)}
    again = [run(g, {step: np.array(0)})[n.outputs[1]] for n in drops]
    for a, b in zip(masks[0], again):
        np.testing.assert_array_equal(a, b)                  # same step: same masks
    for a, b in zip(masks[0], masks[1]):
        assert (a != b).mean() > 0.2                          # next step: new masks
    assert (masks[0][0] != masks[0][1]).mean() > 0.2           # two nodes: two streams
    assert to_training(g, seed=2).inputs.count(step) == 1     # idempotent


def test_to_training_sets_torchs_unbiased_running_variance():
    g, _ = _small_cnn(train_bn=True)
    bn = next(n for n in g.nodes if n.op_type == "BatchNormalization")
    assert bn.attrs["running_var_unbiased"] == 1
    frozen, _ = _small_cnn(train_bn=False)
    bn = next(n for n in frozen.nodes if n.op_type == "BatchNormalization")
    assert bn.attrs.get("running_var_unbiased", 0) == 0


def test_dropout_without_mask_output_gets_one():
    t = Case()
    x = t.param("x", (3, 4))
    y = t.b.op("Dropout", [x, np.array(0.25), np.array(True)])
    g = t.finish(y)
    assert len(g.nodes[0].outputs) == 1
    new, grads = backward(g, "loss", ["x"])
    assert len(g.nodes[0].outputs) == 1, "backward mutated its argument"
    drop = next(n for n in new.nodes if n.op_type == "Dropout")
    grad_node = next(n for n in new.nodes if n.op_type == "DropoutGrad")
    assert grad_node.inputs[1] == drop.outputs[1] and new.types[drop.outputs[1]].dtype == bool


def test_eval_dropout_is_identity():
    t = Case()
    t.check(t.b.dropout(t.param("x", (3, 4)), ratio=0.5))


# ---- LRN, Slice ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size,shape,alpha,beta,bias", [
    (5, (2, 7, 3, 3), 0.3, 0.75, 1.5),
    (3, (2, 6, 5), 0.5, 0.5, 1.0),           # rank 3 (N, C, L)
    (4, (2, 7, 2, 2), 0.4, 0.75, 2.0),       # even size: the window is lopsided
    (2, (2, 6, 5), 0.6, 0.6, 1.5),
    (1, (1, 3, 4), 0.8, 1.2, 1.0),
    (7, (1, 3, 2, 2), 0.5, 0.75, 1.0),        # window wider than the channels
    (3, (1, 4, 2, 1, 2), 0.5, 0.3, 1.2),      # rank 5
])
def test_lrn(size, shape, alpha, beta, bias):
    t = Case()
    y = t.b.op("LRN", [t.param("x", shape, low=-2, high=2)], size=size, alpha=alpha, beta=beta,
               bias=bias)
    new, _ = t.check(y)
    assert [n.op_type for n in new.nodes].count("LRNGrad") == 1


M = np.iinfo(np.int64).max
SLICES = [  # starts, ends, axes, steps (None: absent)
    ([1], [3], None, None),
    ([-3, 0], [M, -1], [2, 0], None),                 # negative start, "to the end"
    ([-100, 1], [100, -1], [1, 2], None),             # clamped at both ends
    ([5, -100], [0, 100], [1, 2], [-2, 3]),           # negative step from past the end
    ([0], [-1], [-1], [2]),                           # negative axis, step 2
    ([-1], [-M], [1], [-1]),                          # the whole axis reversed
    ([4, 3], [-M, 0], [-1, 0], [-2, -1]),
    ([0, 1, 1], [3, 4, 5], [0, 1, 2], [2, 2, 3]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice(starts, ends, axes, steps):
    t = Case()
    ins = [t.param("x", (3, 4, 5)), np.array(starts, np.int64), np.array(ends, np.int64)]
    if axes is not None or steps is not None:
        ins.append(None if axes is None else np.array(axes, np.int64))
    if steps is not None:
        ins.append(np.array(steps, np.int64))
    y = t.b.op("Slice", ins)
    assert np.prod(y.shape) > 0
    new, _ = t.check(y)
    assert "SliceGrad" in [n.op_type for n in new.nodes]


def test_empty_slice_gives_zero_gradient():
    t = Case()
    x = t.param("x", (3, 4))
    y = t.b.op("Slice", [x, np.array([2]), np.array([1]), np.array([1])])
    z = t.b.op("ReduceSum", [y], keepdims=0) + t.b.op("ReduceSum", [x * x], keepdims=0)
    new, grads = t.check(z, weigh=False)
    np.testing.assert_allclose(run(new)[grads["x"]], 2 * run(new)["x"])


# ---- elementwise and variadic ------------------------------------------------------------------
BROADCASTS = [((2, 3, 4, 5), (3, 1, 1)), ((1,), (2, 3)), ((2, 3), (2, 3)), ((4, 1), (1, 5)),
              ((), (2, 2))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", BROADCASTS)
def test_binary_broadcast(op, sa, sb):
    t = Case()
    a = t.param("a", sa)
    b = t.param("b", value=np.random.default_rng(9).uniform(0.5, 1.5, sb)
                * np.random.default_rng(10).choice([-1, 1], sb))
    t.check(t.b.op(op, [a, b]))


def test_same_value_used_twice_sums_gradients():
    t = Case()
    x = t.param("x", (3, 4))
    new, _ = t.check(x * x + x.relu())
    assert any(n.op_type == "Sum" for n in new.nodes)


def test_neg_and_variadic_sum():
    t = Case()
    y = t.b.op("Sum", [t.param("a", (2, 3)), t.param("b", (3,)), t.param("c", (2, 1))])
    t.check(-y)


# ---- shape ops ------------------------------------------------------------------------------
def test_concat():
    t = Case()
    t.check(t.b.concat([t.param("a", (2, 1, 3)), t.param("b", (2, 3, 3)),
                        t.param("c", (2, 2, 3))], axis=1))


@pytest.mark.parametrize("kind", ["reshape", "flatten", "transpose", "squeeze", "unsqueeze",
                                  "identity"])
def test_views_and_transpose(kind):
    t = Case()
    x = t.param("x", (2, 1, 3, 4))
    y = {"reshape": lambda: t.b.reshape(x, (4, -1)),
         "flatten": lambda: t.b.flatten(x, 2),
         "transpose": lambda: t.b.transpose(x, (2, 0, 3, 1)),
         "squeeze": lambda: t.b.op("Squeeze", [x, np.array([1])]),
         "unsqueeze": lambda: t.b.op("Unsqueeze", [x, np.array([0, 3])]),
         "identity": lambda: t.b.identity(x)}[kind]()
    t.check(y.relu() if kind == "identity" else y)


@pytest.mark.parametrize("pads,axes", [([1, 0, 2, 1, 0, 3], None), ([1, -1, 0, 2], [0, 2]),
                                       ([0, -1, 1, 0, 0, -2], None)])
def test_pad(pads, axes):
    t = Case()
    ins = [t.param("x", (2, 3, 4)), np.array(pads, np.int64), np.array(0.5),
           None if axes is None else np.array(axes, np.int64)]
    t.check(t.b.op("Pad", ins, mode="constant"))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("axes,keep", [([1], 1), ([0, 2], 0), (None, 1), ([-1], 0)])
def test_reduce(op, axes, keep):
    t = Case()
    ins = [t.param("x", (2, 3, 4))] + ([np.array(axes, np.int64)] if axes else [])
    t.check(t.b.op(op, ins, keepdims=keep))


@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(axis, exclusive, reverse):
    t = Case()
    t.check(t.b.op("CumSum", [t.param("x", (3, 4)), np.array(axis, np.int64)],
                   exclusive=exclusive, reverse=reverse))


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 2])
def test_trilu(upper, k):
    t = Case()
    ins = [t.param("x", (2, 3, 4))] + ([] if k is None else [np.array(k, np.int64)])
    t.check(t.b.op("Trilu", ins, upper=upper))


@pytest.mark.parametrize("shape,target", [((3, 1), (2, 3, 4)), ((1, 4), (3, 4)), ((2, 3), (2, 3))])
def test_expand(shape, target):
    t = Case()
    t.check(t.b.op("Expand", [t.param("x", shape), np.array(target, np.int64)]))


@pytest.mark.parametrize("shape,repeats", [((2, 3), (2, 1)), ((2, 1, 3), (1, 4, 2)), ((3,), (3,))])
def test_tile(shape, repeats):
    t = Case()
    t.check(t.b.op("Tile", [t.param("x", shape), np.array(repeats, np.int64)]))


@pytest.mark.parametrize("equation,shapes", [
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),    # attention scores
    ("bhqk,bhkd->bhqd", [(2, 2, 3, 5), (2, 2, 5, 4)]),    # attention-weighted values
    ("ij,jk", [(3, 4), (4, 2)]),                           # implicit output
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 2)]),           # broadcast '...'
    ("ij,k->ik", [(3, 4), (2,)]),                          # j only in the first operand
    ("ij->", [(3, 4)]),
    ("i,i,i->", [(4,), (4,), (4,)]),
])
def test_einsum(equation, shapes):
    t = Case()
    ins = [t.param(f"x{k}", s) for k, s in enumerate(shapes)]
    t.check(t.b.op("Einsum", ins, equation=equation))


# ---- whole networks ------------------------------------------------------------------------------
def _small_cnn(train_bn=True):
    t = Case(seed=3)
    b = t.b
    x = t.param("x", (4, 1, 6, 6))
    y = b.conv(x, t.param("conv.w", (3, 1, 3, 3)), t.param("conv.b", (3,)), pads=(1, 1, 1, 1))
    mean = b.buffer("bn.mean", (3,), init=np.zeros(3), dtype=F64)
    var = b.buffer("bn.var", (3,), init=np.ones(3), dtype=F64)
    y = b.batch_norm(y, t.param("bn.scale", (3,), low=0.5, high=1.5), t.param("bn.bias", (3,)),
                     mean, var)
    y = b.max_pool(y.relu(), (2, 2)).flatten()
    z = b.gemm(y, t.param("fc.w", (5, 27)), t.param("fc.b", (5,)), transB=1)
    labels = b.constant(np.array([0, 3, 4, 1]), dtype=np.int64)
    b.output(b.op("SoftmaxCrossEntropyLoss", [z, labels]), "loss")
    g = b.build()
    return (to_training(g) if train_bn else g), t.wrt


@pytest.mark.parametrize("train_bn", [True, False])
def test_small_cnn(train_bn):
    g, wrt = _small_cnn(train_bn)
    bn = next(n for n in g.nodes if n.op_type == "BatchNormalization")
    assert bn.attrs["training_mode"] == train_bn
    if train_bn:
        assert g.metadata["buffer_updates"] == {"bn.mean": bn.outputs[1],
                                                "bn.var": bn.outputs[2]}
    infer_shapes(g, fold=False)
    new, grads = gradcheck(g, "loss", wrt)
    assert new.outputs == list(g.outputs) + [grads[w] for w in wrt]
    assert all(grads[w] == f"grad/{w}" for w in wrt)


def test_to_training_leaves_bn_without_buffers_frozen():
    t = Case()
    x = t.param("x", (2, 2, 3, 3))
    y = t.b.batch_norm(x, t.param("s", (2,)), t.param("b", (2,)), t.param("m", (2,)),
                       t.param("v", (2,), low=0.5))
    g = to_training(t.finish(y))
    assert g.nodes[0].attrs.get("training_mode", 0) == 0
    assert g.metadata["buffer_updates"] == {}


def test_unreached_value_gets_zeros_and_loss_gets_ones():
    t = Case()
    x = t.param("x", (2, 3))
    t.param("unused", (4,))
    g = t.finish(x.tanh())
    new, grads = backward(g, "loss", ["unused", "loss", "x"])
    env = run(new)
    np.testing.assert_array_equal(env[grads["unused"]], np.zeros(4))
    assert env[grads["loss"]].shape == () and env[grads["loss"]] == 1.0
    assert len(set(new.outputs)) == len(new.outputs)


def test_float32_gradients_have_float32_dtype():
    b = Builder("f32", seed=0)
    x = b.input("x", (2, 3, 5, 5))
    w = b.parameter("w", (4, 3, 3, 3))
    y = b.global_avg_pool(b.conv(x, w).relu()).flatten()
    lab = b.input("lab", (2,), "int64")
    b.output(b.op("SoftmaxCrossEntropyLoss", [y, lab]), "loss")
    new, grads = backward(b.build(), "loss", ["w", "x"])
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32),
             "lab": np.array([1, 2])}
    env = run(new, feeds)
    assert env[grads["w"]].dtype == np.float32 and env[grads["x"]].dtype == np.float32
    assert np.isfinite(env[grads["w"]]).all()


def test_backward_does_not_mutate_its_argument():
    g, wrt = _small_cnn()
    before = (g.summary(), list(g.outputs), dict(g.initializers).keys(), dict(g.types))
    backward(g, "loss", wrt)
    assert (g.summary(), list(g.outputs), dict(g.initializers).keys(), dict(g.types)) == before


# ---- errors -----------------------------------------------------------------------------------
def test_symbolic_shapes_are_refused():
    b = Builder("sym")
    x = b.input("x", ("N", 3))
    w = b.parameter("w", (2, 3))
    b.output(b.op("ReduceSum", [b.gemm(x, w, transB=1)], keepdims=0), "loss")
    with pytest.raises(ModelError, match="static shapes"):
        backward(b.build(), "loss", ["w"])


def test_op_without_rule_is_named():
    t = Case()
    y = t.b.op("GlobalMaxPool", [t.param("x", (1, 2, 3, 3))], name="the_pool")
    with pytest.raises(ModelError, match="the_pool.*GlobalMaxPool"):
        backward(t.finish(y), "loss", t.wrt)


def test_non_scalar_loss_is_refused():
    t = Case()
    x = t.param("x", (2, 3))
    t.b.output(x.relu(), "y")
    with pytest.raises(ModelError, match="one element"):
        backward(t.b.build(), "y", ["x"])


def test_no_rule_needed_off_the_path():
    t = Case()
    x = t.param("x", (1, 2, 3, 3))
    frozen = t.b.op("GlobalMaxPool", [t.param("c", (1, 2, 3, 3), wrt=False)])
    t.check(x * frozen)


@pytest.mark.parametrize("producer,activation,alpha", [("Conv", "Relu", 0.0),
                                                        ("Gemm", "Tanh", 0.0),
                                                        ("MatMul", "Sigmoid", 0.0),
                                                        ("Conv", "LeakyRelu", 0.2)])
def test_fused_activation(producer, activation, alpha):
    """A graph already through fuse_activation still differentiates (derivative read off Y)."""
    t = Case()
    fused = dict(activation=activation, activation_alpha=alpha)
    if producer == "Conv":
        y = t.b.op("Conv", [t.param("x", (1, 2, 5, 5)), t.param("w", (3, 2, 3, 3))], **fused)
    elif producer == "Gemm":
        y = t.b.op("Gemm", [t.param("a", (3, 4)), t.param("b", (4, 2)), t.param("c", (2,))],
                   **fused)
    else:
        y = t.b.op("MatMul", [t.param("a", (2, 3, 4)), t.param("b", (4, 2))], **fused)
    t.check(y)


def test_constant_node_bounds_are_known():
    """Clip bounds computed by Constant nodes (as imported ONNX models have them)."""
    t = Case()
    lo = t.b.op("Constant", [], value=np.array(-0.3))
    hi = t.b.op("Constant", [], value=np.array(0.4))
    x = t.param("x", value=_away_from(np.random.default_rng(2).uniform(-1, 1, (3, 5)),
                                      [-0.3, 0.4]))
    t.check(t.b.op("Clip", [x, lo, hi]))


def test_float32_gradient_ops_agree_with_float64():
    """The same small CNN in float32: every gradient op keeps float32 and agrees with the
    float64 gradients to float32 accuracy (the references accumulate in float64)."""
    g64, wrt = _small_cnn()
    g32 = g64.copy()
    g32.initializers = {k: v.astype(np.float32) if v.dtype == np.float64 else v
                        for k, v in g32.initializers.items()}
    g32.types = {}
    infer_shapes(g32, fold=False)
    infer_shapes(g64, fold=False)
    new64, grads64 = backward(g64, "loss", wrt)
    new32, grads32 = backward(g32, "loss", wrt)
    env64, env32 = run(new64), run(new32)
    for n in new32.nodes:
        for o in n.outputs:
            if o and env64[o].dtype == np.float64:
                assert env32[o].dtype == np.float32, f"{n} output {o}"
    for w in wrt:
        a, b = env32[grads32[w]], env64[grads64[w]]
        assert a.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), w
