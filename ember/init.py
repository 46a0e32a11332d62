"""Weight initializers with torch.nn.init's formulas, returning new numpy arrays.

    w = ember.init.kaiming_uniform((64, 3, 3, 3), a=5 ** 0.5, seed=0)   # torch's Conv2d default

Each takes a ``seed`` or a numpy ``rng`` (Generator); the math lives in ``ember.graph.builder``
so the Builder (which may not import ``ember``) and ``ember.nn`` draw identically.
"""
from __future__ import annotations

import numpy as np

from .graph.builder import calculate_gain, fans, initialize

__all__ = ["calculate_gain", "fans", "kaiming_uniform", "kaiming_normal", "xavier_uniform",
           "xavier_normal", "uniform", "normal", "zeros", "ones", "constant"]


def _rng(seed, rng):
    return rng if rng is not None else np.random.default_rng(seed)


def kaiming_uniform(shape, a=0.0, mode="fan_in", nonlinearity="leaky_relu", seed=None,
                    rng=None, dtype="float32"):
    """U(−b, b), b = gain·√(3/fan) (He et al. 2015; torch.nn.init.kaiming_uniform_)."""
    return initialize("kaiming_uniform", shape, _rng(seed, rng), dtype, a=a, mode=mode,
                      nonlinearity=nonlinearity)


def kaiming_normal(shape, a=0.0, mode="fan_in", nonlinearity="leaky_relu", seed=None,
                   rng=None, dtype="float32"):
    """N(0, std²), std = gain/√fan."""
    return initialize("kaiming_normal", shape, _rng(seed, rng), dtype, a=a, mode=mode,
                      nonlinearity=nonlinearity)


def xavier_uniform(shape, gain=1.0, seed=None, rng=None, dtype="float32"):
    """U(−b, b), b = gain·√(6/(fan_in + fan_out)) (Glorot & Bengio 2010)."""
    return initialize("xavier_uniform", shape, _rng(seed, rng), dtype, gain=gain)


def xavier_normal(shape, gain=1.0, seed=None, rng=None, dtype="float32"):
    """N(0, std²), std = gain·√(2/(fan_in + fan_out))."""
    return initialize("xavier_normal", shape, _rng(seed, rng), dtype, gain=gain)


def uniform(shape, low=0.0, high=1.0, seed=None, rng=None, dtype="float32"):
    return initialize("uniform", shape, _rng(seed, rng), dtype, low=low, high=high)


def normal(shape, mean=0.0, std=1.0, seed=None, rng=None, dtype="float32"):
    return initialize("normal", shape, _rng(seed, rng), dtype, mean=mean, std=std)


def zeros(shape, dtype="float32"):
    return np.zeros(tuple(shape), dtype)


def ones(shape, dtype="float32"):
    return np.ones(tuple(shape), dtype)


def constant(shape, value, dtype="float32"):
    return np.full(tuple(shape), value, dtype)
