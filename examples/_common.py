"""Helpers the examples share: running a traced model, the courses' size and count formulas, a
PNG writer that needs no matplotlib.

Kept apart so each example file reads as the model it builds and the figures it checks.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

import ember


def run(graph, x, threads=None):
    """The traced graph's single output for input ``x``, through a compiled ember Session."""
    return ember.Session(graph, threads=threads).run(None, {"input": np.asarray(x, np.float32)})[0]


def count_conv(c_in: int, c_out: int, k, bias: bool = True) -> int:
    """Parameters of a k×k convolution, the courses' formula: (k·k·c_in + 1)·c_out."""
    kh, kw = (k, k) if isinstance(k, int) else k
    return (kh * kw * c_in + (1 if bias else 0)) * c_out


def count_fc(n_in: int, n_out: int) -> int:
    """Parameters of a dense layer: (n_in + 1)·n_out."""
    return (n_in + 1) * n_out


def out_size(n: int, f: int, p: int = 0, s: int = 1) -> int:
    """Output size of a conv or pool: ⌊(n + 2p − f)/s⌋ + 1."""
    return (n + 2 * p - f) // s + 1


def write_png(path, image):
    """A grayscale PNG of ``image`` (2-D, values in [0, 1]) with zlib only."""
    pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                + chunk(b"IEND", b""))
