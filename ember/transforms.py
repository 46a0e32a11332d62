"""Data augmentation for NCHW float32 batches, with torchvision's names and semantics.

    from ember import transforms as T
    augment = T.Compose([T.RandomAffine(degrees=15, translate=(0.1, 0.1)),
                         T.Normalize(mean=[0.5], std=[0.25])])
    trainer.fit(X, y, epochs=10, transform=augment)     # each mini-batch, on the fly

A transform maps an array ``x`` of shape (N, C, H, W) — or one image (C, H, W), as torchvision
accepts a tensor without its batch dim — of any float dtype to a **new** float32 array (``x`` is
never modified). The pixel arithmetic is torchvision's tensor path (``torchvision.transforms.
functional`` on a float tensor): same parameters, same pixels, to float32 rounding.

Two differences from torchvision, both for batches:

- **Per-sample draws.** torchvision draws one set of random parameters per call, and a call on a
  batched tensor applies it to every image. Here a call is a batch, and every sample draws its
  own (flip or not, angle, crop box, jitter factors, order): what augmentation needs.
- **Explicit randomness.** ``transform(x, rng=None)`` takes a ``numpy.random.Generator``;
  ``None`` draws from ``default_generator``, one module-level generator seeded 0 at import (so
  a script is reproducible run to run). ``Trainer.fit`` passes its own ``augment_rng``.

Geometric warps (rotation, affine) build one 2×3 matrix per sample with torchvision's
conventions and sample all of them at once (``_warp``: ``torch.nn.functional.grid_sample``'s
``align_corners=False`` with torchvision's fill mask). ``RandomRotation(expand=True)`` is
refused: each sample would get its own output size.

Each random transform is ``get_params(n, height, width, rng)`` (a dict of per-sample arrays,
drawn as torchvision's ``get_params`` draws them) followed by ``apply(x, params)``, both public:
the same parameters can be replayed, or given by hand.
"""
from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from .graph.errors import InputError

__all__ = ["Compose", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomCrop",
           "RandomResizedCrop", "RandomRotation", "RandomAffine", "ColorJitter", "Normalize",
           "default_generator"]

default_generator = np.random.default_rng(0)

INTERPOLATIONS = ("nearest", "bilinear")
CHUNK_ELEMENTS = 1 << 18        # image elements transformed at once (see Transform._apply)
PADDING_MODES = ("constant", "edge", "reflect", "symmetric")


# ---- argument checks ---------------------------------------------------------------------------
def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _pair_range(value, name: str, symmetric_about: float | None = 0.0, low=-math.inf,
                high=math.inf) -> tuple:
    """A (lo, hi) range from a number v (→ (c - v, c + v), v >= 0, when ``symmetric_about`` is
    c) or from a pair lo <= hi; both ends within [low, high]."""
    if symmetric_about is not None and _number(value):
        if value < 0:
            raise InputError(f"{name} must be non-negative when a single number, got {value!r}")
        lo, hi = symmetric_about - value, symmetric_about + value
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_number, value)):
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise InputError(f"{name} must be (min, max) with min <= max, got {tuple(value)}")
    else:
        one = "a non-negative number or " if symmetric_about is not None else ""
        raise InputError(f"{name} must be {one}a pair (min, max) of finite numbers, got "
                         f"{value!r}")
    if lo < low or hi > high:
        raise InputError(f"{name} must lie within [{low}, {high}], got ({lo}, {hi})")
    return float(lo), float(hi)


def _size(size, name: str = "size") -> tuple:
    """(h, w) from an int or a sequence of one or two positive ints, as torchvision takes it."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 1:
        size = (size[0], size[0])
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
            for s in size)):
        raise InputError(f"{name} must be a positive int or a pair (height, width) of them, "
                         f"got {size!r}")
    return int(size[0]), int(size[1])


def _probability(p) -> float:
    if not (_number(p) and 0.0 <= p <= 1.0):
        raise InputError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


def _interpolation(mode) -> str:
    """'nearest' or 'bilinear', also from torchvision's InterpolationMode (its ``value``)."""
    value = getattr(mode, "value", mode)
    if value not in INTERPOLATIONS:
        raise InputError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
    return value


def _fill(fill, name: str = "fill") -> tuple:
    if _number(fill):
        return (float(fill),)
    if isinstance(fill, (tuple, list)) and len(fill) >= 1 and all(map(_number, fill)):
        return tuple(float(f) for f in fill)
    raise InputError(f"{name} must be a number or a sequence of one per channel, got {fill!r}")


def _per_channel(values: tuple, channels: int, name: str) -> np.ndarray:
    """``values`` as a float32 (C, 1, 1) column: one value, or exactly one per channel."""
    if len(values) not in (1, channels):
        raise InputError(f"{name} has {len(values)} values; the images have {channels} "
                         f"channel(s): give one value or one per channel")
    return np.broadcast_to(np.asarray(values, np.float32), (channels,)).reshape(channels, 1, 1)


def _center(center) -> tuple | None:
    if center is None:
        return None
    if isinstance(center, (tuple, list)) and len(center) == 2 and all(map(_number, center)):
        return float(center[0]), float(center[1])
    raise InputError(f"center must be None or a pair (x, y) of pixel coordinates, got "
                     f"{center!r}")


# ---- the base class ------------------------------------------------------------------------------
class Transform:
    """Base of every transform: checks ``x`` and ``rng``, then ``_apply``s to an (N, C, H, W)
    float32 batch and returns a new array of the input's rank."""

    def __call__(self, x, rng=None) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise InputError(f"x must be a numpy array of images (N, C, H, W) or (C, H, W), got "
                             f"{type(x).__name__}")
        if x.dtype.kind != "f":
            raise InputError(f"x must hold floats (e.g. x.astype(np.float32) / 255), got dtype "
                             f"{x.dtype}")
        if x.ndim not in (3, 4):
            raise InputError(f"x must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
        if min(x.shape[-3:]) < 1:
            raise InputError(f"x has an empty channel or spatial dim: shape {x.shape}")
        if rng is None:
            rng = default_generator
        elif not isinstance(rng, np.random.Generator):
            raise InputError(f"rng must be a numpy.random.Generator or None, got "
                             f"{type(rng).__name__}")
        batch = x.astype(np.float32, copy=False).reshape((-1,) + x.shape[-3:])
        out = self._apply(batch, rng) if len(batch) else batch.copy()
        return out[0] if x.ndim == 3 else out

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw every sample's parameters (``get_params``), then ``apply`` them, a chunk of
        samples at a time: the warps' and resizes' temporaries are tens of times the images,
        so memory stays bounded whatever the batch (the draws do not depend on the chunks)."""
        params = self.get_params(len(x), x.shape[2], x.shape[3], rng)
        step = max(1, CHUNK_ELEMENTS // x[0].size)
        if step >= len(x):
            return self.apply(x, params)
        return np.concatenate([
            self.apply(x[s:s + step], {k: None if v is None else v[s:s + step]
                                       for k, v in params.items()})
            for s in range(0, len(x), step)])

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, each drawing from the same ``rng``."""

    def __init__(self, transforms):
        transforms = list(transforms) if isinstance(transforms, (tuple, list)) else transforms
        if not isinstance(transforms, list) or not all(callable(t) for t in transforms):
            raise InputError(f"transforms must be a list of callables, got {transforms!r:.80}")
        self.transforms = transforms

    def _apply(self, x, rng):
        for t in self.transforms:
            x = t(x, rng=rng)
        return x if self.transforms else x.copy()


# ---- flips ------------------------------------------------------------------------------------
class _RandomFlip(Transform):
    axis: int

    def __init__(self, p: float = 0.5):
        self.p = _probability(p)

    def get_params(self, n, height, width, rng) -> dict:
        return {"flip": rng.random(n) < self.p}

    def apply(self, x, params):
        out = x.copy()
        out[params["flip"]] = np.flip(x[params["flip"]], axis=self.axis)
        return out


class RandomHorizontalFlip(_RandomFlip):
    """Mirror each sample left–right with probability ``p`` (torchvision's ``hflip``)."""
    axis = 3


class RandomVerticalFlip(_RandomFlip):
    """Mirror each sample top–bottom with probability ``p`` (torchvision's ``vflip``)."""
    axis = 2


# ---- crops ------------------------------------------------------------------------------------
class RandomCrop(Transform):
    """A random ``size`` window of each sample (torchvision's ``RandomCrop``). ``padding``
    (int, (left/right, top/bottom) or (left, top, right, bottom)) is added first, with
    ``padding_mode`` 'constant' (``fill``), 'edge', 'reflect' or 'symmetric';
    ``pad_if_needed`` pads a side shorter than ``size`` by the shortfall on both ends, as
    torchvision does. A window larger than the (padded) image is an InputError."""

    def __init__(self, size, padding=None, pad_if_needed: bool = False, fill=0,
                 padding_mode: str = "constant"):
        self.size = _size(size)
        self.padding = None if padding is None else _padding(padding)
        if self.padding is not None and max(self.padding) > max(self.size):
            # (a wider margin only adds windows of pure fill, and a padded copy without bound)
            raise InputError(f"padding {padding!r} is wider than the crop {self.size}: at most "
                             f"{max(self.size)} a side")
        self.pad_if_needed = bool(pad_if_needed)
        self.fill = _fill(fill)
        if padding_mode not in PADDING_MODES:
            raise InputError(f"padding_mode must be one of {PADDING_MODES}, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode

    def paddings(self, height: int, width: int) -> list:
        """The paddings (left, top, right, bottom) applied in turn to (height, width) images —
        ``padding``, then ``pad_if_needed``'s for the width, then the height, as torchvision
        pads — each checked against its padding mode; InputError when the window does not fit
        the padded image."""
        h, w = self.size
        steps = [] if self.padding is None else [self.padding]
        if self.pad_if_needed:
            padded_w = width + sum(p[0] + p[2] for p in steps)
            if padded_w < w:
                steps.append((w - padded_w, 0, w - padded_w, 0))
            padded_h = height + sum(p[1] + p[3] for p in steps)
            if padded_h < h:
                steps.append((0, h - padded_h, 0, h - padded_h))
        limit = {"reflect": 1, "symmetric": 0}.get(self.padding_mode)
        for left, top, right, bottom in steps:
            if limit is not None and (max(top, bottom) > height - limit
                                      or max(left, right) > width - limit):
                raise InputError(f"padding {(left, top, right, bottom)} is too large for "
                                 f"{self.padding_mode!r} padding of {(height, width)} images "
                                 f"(at most {height - limit} rows and {width - limit} columns)")
            height, width = height + top + bottom, width + left + right
        if h > height or w > width:
            raise InputError(f"size {self.size} is larger than the (padded) images, "
                             f"{(height, width)}: give padding= or pad_if_needed=True")
        return steps

    def get_params(self, n, height, width, rng) -> dict:
        """Window corners in the padded image."""
        for left, top, right, bottom in self.paddings(height, width):
            height, width = height + top + bottom, width + left + right
        return {"top": rng.integers(0, height - self.size[0] + 1, n),
                "left": rng.integers(0, width - self.size[1] + 1, n)}

    def apply(self, x, params):
        for padding in self.paddings(*x.shape[2:]):
            x = self._pad(x, padding)
        windows = np.lib.stride_tricks.sliding_window_view(x, self.size, axis=(2, 3))
        return np.ascontiguousarray(windows[np.arange(len(x)), :, params["top"],
                                            params["left"]])

    def _pad(self, x, padding):
        left, top, right, bottom = padding
        widths = ((0, 0), (0, 0), (top, bottom), (left, right))
        if self.padding_mode != "constant":
            return np.pad(x, widths, mode=self.padding_mode)
        n, channels, height, width = x.shape
        out = np.empty((n, channels, height + top + bottom, width + left + right), np.float32)
        out[...] = _per_channel(self.fill, channels, "fill")
        out[:, :, top:top + height, left:left + width] = x
        return out


def _padding(padding) -> tuple:
    """(left, top, right, bottom) from torchvision's 1-, 2- or 4-number forms."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (padding,)
    if not (isinstance(padding, (tuple, list)) and len(padding) in (1, 2, 4) and all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 0
            for p in padding)):
        raise InputError(f"padding must be a non-negative int or a sequence of 2 or 4 of them, "
                         f"got {padding!r}")
    if len(padding) == 1:
        padding = padding * 4
    elif len(padding) == 2:
        padding = tuple(padding) * 2
    return tuple(int(p) for p in padding)


class RandomResizedCrop(Transform):
    """A random crop of each sample — area a fraction in ``scale`` of the image's, aspect ratio
    (w/h) in ``ratio`` (drawn log-uniformly), torchvision's ten tries then its central fallback
    — resized to ``size``. Resizing is ``torch.nn.functional.interpolate``'s
    (``align_corners=False``; bilinear with ``antialias``, torchvision's default, which widens
    the filter when shrinking; nearest: torch's ``floor(i·in/out)``)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                 interpolation="bilinear", antialias: bool = True):
        self.size = _size(size)
        self.scale = _pair_range(scale, "scale", symmetric_about=None, low=0.0)
        if self.scale[1] <= 0:
            raise InputError(f"scale must be a pair of area fractions, max > 0, got {scale!r}")
        self.ratio = _pair_range(ratio, "ratio", symmetric_about=None)
        if self.ratio[0] <= 0:
            raise InputError(f"ratio must be a pair of positive aspect ratios, got {ratio!r}")
        self.interpolation = _interpolation(interpolation)
        self.antialias = bool(antialias)

    def get_params(self, n: int, height: int, width: int, rng) -> dict:
        """Crop boxes (top, left, height, width), drawn as torchvision's ``get_params``."""
        tries = 10
        area = height * width
        target = area * rng.uniform(self.scale[0], self.scale[1], (n, tries))
        aspect = np.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                    (n, tries)))
        w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
        h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = np.argmax(ok, axis=1)
        found = ok[np.arange(n), first]
        h, w = h[np.arange(n), first], w[np.arange(n), first]
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw, fh = int(round(height * self.ratio[1])), height
        else:
            fw, fh = width, height
        h, w = np.where(found, h, fh), np.where(found, w, fw)
        top = np.where(found, rng.integers(0, height - h + 1), (height - fh) // 2)
        left = np.where(found, rng.integers(0, width - w + 1), (width - fw) // 2)
        return {"top": top, "left": left, "height": h, "width": w}

    def apply(self, x, params):
        height, width = x.shape[2:]
        rows = _resize_weights(params["top"], params["height"], height, self.size[0],
                               self.interpolation, self.antialias)
        cols = _resize_weights(params["left"], params["width"], width, self.size[1],
                               self.interpolation, self.antialias)
        return resize_boxes(x, rows, cols)


def resize_boxes(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """out[n, c] = rows[n] @ x[n, c] @ cols[n]ᵀ: a separable resampling, one weight matrix per
    sample and axis ((N, out_h, H) and (N, out_w, W))."""
    return np.matmul(np.matmul(rows[:, None], x), cols.transpose(0, 2, 1)[:, None])


def _resize_weights(start, length, full: int, out: int, interpolation: str,
                    antialias: bool) -> np.ndarray:
    """(N, out, full) float32 weights resizing the span [start, start + length) of an axis of
    ``full`` pixels to ``out`` pixels, as torch's ``interpolate(align_corners=False)`` does.
    Bilinear: a triangle filter around centre ``scale·(i + ½)`` (scale = length / out), widened
    by ``scale`` when shrinking with ``antialias``, cut to the span and normalised (PIL's and
    torch's anti-aliased resampling; without widening it is plain bilinear with the span's
    edge pixels repeated). Nearest: pixel ``floor(i·scale)`` in float32, torch's rule."""
    start = start.astype(np.float64)[:, None, None]
    length = length.astype(np.float64)[:, None, None]
    i = np.arange(out, dtype=np.float64)[None, :, None]
    k = np.arange(full, dtype=np.float64)[None, None, :] - start     # pixel index in the span
    inside = (k >= 0) & (k < length)
    if interpolation == "nearest":
        scale = (length.astype(np.float32) / np.float32(out)).astype(np.float32)
        src = np.minimum(np.floor(i.astype(np.float32) * scale), length - 1)
        return (inside & (k == src)).astype(np.float32)
    scale = length / out
    stretch = np.maximum(scale, 1.0) if antialias else np.ones_like(scale)
    weights = np.maximum(0.0, 1.0 - np.abs((k - scale * (i + 0.5) + 0.5) / stretch)) * inside
    return (weights / weights.sum(axis=2, keepdims=True)).astype(np.float32)


# ---- affine warps -------------------------------------------------------------------------------
def inverse_affine_matrices(angle, translate, scale, shear, center) -> np.ndarray:
    """(N, 2, 3) float64 matrices mapping output pixels to input pixels (torchvision's
    ``_get_inverse_affine_matrix``): coordinates with the origin at the image centre, the
    forward map being T(translate) · C · R(angle) · S(scale) · Shy · Shx · C⁻¹ about ``center``;
    angles in degrees, ``translate``/``center``/``shear`` as (N, 2) arrays (x, y)."""
    rot = np.radians(angle)
    sx, sy = np.radians(shear[:, 0]), np.radians(shear[:, 1])
    tan_sx, cos_sy = np.tan(sx), np.cos(sy)
    a = np.cos(rot - sy) / cos_sy            # R·SHy·SHx = [[a, b], [c, d]], determinant 1
    b = -a * tan_sx - np.sin(rot)
    c = np.sin(rot - sy) / cos_sy
    d = -c * tan_sx + np.cos(rot)
    m = np.empty((len(rot), 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = d, -b, -c, a
    m[:, :, :2] /= scale[:, None, None]
    m[:, :, 2] = np.einsum("nij,nj->ni", m[:, :, :2], -(center + translate)) + center
    return m


def normalized_theta(matrices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel matrices (centre origin) as the normalised θ ``torch.nn.functional.affine_grid``
    takes (x, y in [-1, 1] over the image)."""
    theta = matrices.copy()
    theta[:, 0, 1] *= height / width
    theta[:, 1, 0] *= width / height
    theta[:, 0, 2] *= 2.0 / width
    theta[:, 1, 2] *= 2.0 / height
    return theta


class _Workspace(threading.local):
    """Arrays reused by every ``_warp`` of one geometry, per thread. Fresh numpy temporaries
    of a batch's size are mapped from the OS and freed back to it on every call, and their page
    faults cost more than the arithmetic (measured: 500–750 faults and 70% of a LeNet-batch
    warp); a few geometries are kept (``CHUNK_ELEMENTS`` bounds each)."""

    def __init__(self):
        self.by_geometry = {}

    def get(self, n, channels, height, width) -> dict:
        key = (n, channels, height, width)
        ws = self.by_geometry.get(key)
        if ws is None:
            if len(self.by_geometry) >= 4:
                self.by_geometry.clear()
            plane, grid = (n, channels, height * width), (n, height, width)
            ws = {"planes": np.zeros((n, channels, height + 4, width + 4), np.float32),
                  "index": np.empty(plane, np.intp),
                  **{f"g{k}": np.empty(plane, np.float32) for k in range(4)},
                  **{f"s{k}": np.empty(grid, np.float32) for k in range(6)}}
            self.by_geometry[key] = ws
        return ws


_workspace = _Workspace()


def _warp(x: np.ndarray, theta: np.ndarray, interpolation: str, fill: np.ndarray) -> np.ndarray:
    """Resample every sample of ``x`` (N, C, H, W) float32 through its own affine θ (N, 2, 3)
    float64 in normalised coordinates — ``affine_grid(θ, x.shape, align_corners=False)`` then
    ``grid_sample(x, grid, interpolation, padding_mode="zeros", align_corners=False)`` — and
    blend toward ``fill`` (C, 1, 1) by the sampled in-image mask, as torchvision's tensor
    ``rotate``/``affine`` do (bilinear: x̂·m + (1 − m)·fill, m the in-image weight; nearest:
    fill where the nearest pixel is outside). Returns a new float32 array.

    Vectorised over the batch: the source coordinate of output pixel (i, j) is affine in i and
    j, so it is a row term plus a column term; the image is padded by two zero pixels a side,
    so clipping every coordinate into the padding makes all outside reads zero without a
    test, and each corner is one flat gather over every sample and channel. Every temporary
    lives in the thread's ``_Workspace``; only the result is allocated."""
    n, channels, height, width = x.shape
    ws = _workspace.get(n, channels, height, width)
    padded_w = width + 4
    planes = ws["planes"]
    planes[:, :, 2:-2, 2:-2] = x          # the two-pixel border stays zero
    planes = planes.reshape(-1)
    ix, iy, a, b, c, d = (ws[f"s{k}"] for k in range(6))
    # grid_sample's source pixel: ((θ·g) + 1)·size/2 − ½ with g = (2k + 1)/size − 1, as
    # coefficients of the output row i and column j
    t = theta.astype(np.float64)
    for row, size, out in ((0, width, ix), (1, height, iy)):
        per_col = t[:, row, 0] * size / width
        per_row = t[:, row, 1] * size / height
        const = (t[:, row, 2] + 1 - t[:, row, 0] * (1 - 1 / width)
                 - t[:, row, 1] * (1 - 1 / height)) * size / 2 - 0.5
        np.add((per_row[:, None] * np.arange(height) + const[:, None]).astype(np.float32)
               [:, :, None],
               (per_col[:, None] * np.arange(width)).astype(np.float32)[:, None, :], out=out)
    # flat index of padded pixel (0, 0) of each sample and channel: image pixel (-2, -2)
    first = (np.arange(n) * (channels * (height + 4) * padded_w) + 2 * padded_w + 2)
    first = first.reshape(n, 1, 1) + \
        (np.arange(channels) * ((height + 4) * padded_w)).reshape(1, channels, 1)
    index = ws["index"]

    def corner_index(cx, cy):
        """``index`` ← flat index of pixel (cx, cy) of every channel, coordinates clipped into
        the zero padding (exact in float32: an image has far fewer than 2^24 pixels)."""
        np.clip(cy, -2, height, out=c)
        np.multiply(c, padded_w, out=c)
        np.clip(cx, -2, width, out=d)
        np.add(c, d, out=c)
        np.copyto(index, c.reshape(n, 1, -1), casting="unsafe")
        np.add(index, first, out=index)

    fill = np.asarray(fill, np.float32).reshape(1, -1, 1)
    g0, g1, g2, g3 = (ws[f"g{k}"] for k in range(4))
    if interpolation == "nearest":
        np.rint(ix, out=ix)
        np.rint(iy, out=iy)
        corner_index(ix, iy)
        out = np.take(planes, index, mode="wrap")
        if fill.any():
            outside = (ix < 0) | (ix > width - 1) | (iy < 0) | (iy > height - 1)
            out = np.where(outside.reshape(n, 1, -1), fill, out)
        return out.reshape(n, channels, height, width)
    # the in-image weight of the four corners, separable: along x it is 1 inside [0, W − 1],
    # falling linearly to 0 over the pixel beyond each edge
    mask = a
    np.add(ix, 1, out=mask)
    np.subtract(width, ix, out=b)
    np.minimum(mask, b, out=mask)
    np.clip(mask, 0, 1, out=mask)
    np.add(iy, 1, out=b)
    np.subtract(height, iy, out=c)
    np.minimum(b, c, out=b)
    np.clip(b, 0, 1, out=b)
    mask *= b
    np.floor(ix, out=b)
    np.floor(iy, out=c)
    ix -= b                                # ix, iy: the fractions
    iy -= c
    corner_index(b, c)
    fx, fy = ix.reshape(n, 1, -1), iy.reshape(n, 1, -1)
    # every index is in range by construction: mode="wrap" only spares numpy's bounds checks
    # (and the output buffering that mode="raise" adds)
    np.take(planes, index, mode="wrap", out=g0)
    index += 1
    np.take(planes, index, mode="wrap", out=g1)
    index += padded_w
    np.take(planes, index, mode="wrap", out=g3)
    index -= 1
    np.take(planes, index, mode="wrap", out=g2)
    g1 -= g0
    g1 *= fx
    g0 += g1                               # the upper row, interpolated along x
    g3 -= g2
    g3 *= fx
    g3 += g2                               # the lower row
    g3 -= g0
    g3 *= fy
    g0 += g3
    mask = mask.reshape(n, 1, -1)
    out = g0 * mask
    if fill.any():
        out += (1 - mask) * fill
    return out.reshape(n, channels, height, width)


class _RandomWarp(Transform):
    def apply(self, x, params):
        """Warp with per-sample ``params``: angle (N,) in degrees as torchvision's ``affine``
        takes it, translate (N, 2) pixels, scale (N,), shear (N, 2) degrees."""
        n, channels, height, width = x.shape
        center = np.zeros((n, 2)) if self.center is None else np.broadcast_to(
            [self.center[0] - width * 0.5, self.center[1] - height * 0.5], (n, 2))
        matrices = inverse_affine_matrices(params["angle"], params["translate"],
                                           params["scale"], params["shear"], center)
        return _warp(x, normalized_theta(matrices, height, width), self.interpolation,
                     _per_channel(self.fill, channels, "fill"))


class RandomRotation(_RandomWarp):
    """Rotate each sample by an angle drawn uniformly from ``degrees`` (a number d: (−d, d);
    or (min, max)), counter-clockwise, about ``center`` (x, y) in pixels (default: the image
    centre); outside pixels take ``fill`` (torchvision's ``rotate``). ``expand=True`` would
    give every sample its own size and is refused."""

    def __init__(self, degrees, interpolation="nearest", expand: bool = False, center=None,
                 fill=0):
        self.degrees = _pair_range(degrees, "degrees")
        self.interpolation = _interpolation(interpolation)
        if expand:
            raise InputError("expand=True gives every sample of a batch its own output size; "
                             "use expand=False (the output keeps the input's size)")
        self.expand = False
        self.center = _center(center)
        self.fill = _fill(fill)

    def get_params(self, n, height, width, rng) -> dict:
        """``rotation``: the counter-clockwise angle drawn; ``angle``: −rotation, the angle
        torchvision's ``affine`` takes for it (its ``rotate`` negates the same way)."""
        rotation = rng.uniform(self.degrees[0], self.degrees[1], n)
        return {"rotation": rotation, "angle": -rotation, "translate": np.zeros((n, 2)),
                "scale": np.ones(n), "shear": np.zeros((n, 2))}


class RandomAffine(_RandomWarp):
    """Rotate (an angle drawn from ``degrees`` as RandomRotation's, but clockwise, as
    torchvision's ``affine`` turns), translate (``translate`` = (a, b): |dx| <
    a·W, |dy| < b·H, rounded to whole pixels), scale (a factor drawn from ``scale`` = (min,
    max)) and shear (``shear``: a number s → x-shear in (−s, s); (min, max) → x-shear; four
    numbers → x- and y-shear ranges, degrees) each sample about ``center``, with torchvision's
    ``RandomAffine.get_params`` and ``affine`` conventions; outside pixels take ``fill``."""

    def __init__(self, degrees, translate=None, scale=None, shear=None,
                 interpolation="nearest", fill=0, center=None):
        self.degrees = _pair_range(degrees, "degrees")
        if translate is not None and not (
                isinstance(translate, (tuple, list)) and len(translate) == 2
                and all(_number(t) and 0.0 <= t <= 1.0 for t in translate)):
            raise InputError(f"translate must be None or a pair (a, b) of fractions in [0, 1], "
                             f"got {translate!r}")
        self.translate = None if translate is None else tuple(float(t) for t in translate)
        if scale is not None:
            lo, hi = _pair_range(scale, "scale", symmetric_about=None)
            if lo <= 0:
                raise InputError(f"scale must be a pair (min, max) of positive factors, got "
                                 f"{scale!r}")
            scale = (lo, hi)
        self.scale = scale
        self.shear = None if shear is None else _shear(shear)
        self.interpolation = _interpolation(interpolation)
        self.fill = _fill(fill)
        self.center = _center(center)

    def get_params(self, n, height, width, rng) -> dict:
        angle = rng.uniform(self.degrees[0], self.degrees[1], n)
        translate = np.zeros((n, 2))
        if self.translate is not None:
            max_dx, max_dy = self.translate[0] * width, self.translate[1] * height
            translate[:, 0] = np.rint(rng.uniform(-max_dx, max_dx, n))
            translate[:, 1] = np.rint(rng.uniform(-max_dy, max_dy, n))
        scale = np.ones(n) if self.scale is None else rng.uniform(self.scale[0], self.scale[1], n)
        shear = np.zeros((n, 2))
        if self.shear is not None:
            shear[:, 0] = rng.uniform(self.shear[0], self.shear[1], n)
            if len(self.shear) == 4:
                shear[:, 1] = rng.uniform(self.shear[2], self.shear[3], n)
        return {"angle": angle, "translate": translate, "scale": scale, "shear": shear}


def _shear(shear) -> tuple:
    """Shear ranges in degrees, inside (−90, 90): at ±90° the map is degenerate."""
    if isinstance(shear, (tuple, list)) and len(shear) == 4:
        ranges = _pair_range(shear[:2], "shear") + _pair_range(shear[2:], "shear")
    else:
        ranges = _pair_range(shear, "shear")
    if max(abs(v) for v in ranges) >= 90:
        raise InputError(f"shear angles must lie strictly between -90 and 90 degrees, got "
                         f"{shear!r}")
    return ranges


# ---- colour and normalisation -------------------------------------------------------------------
def _grayscale(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) luma with torchvision's weights (ITU-R 601-2) for RGB; C=1 is itself."""
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).astype(np.float32)


def _blend(x, other, factor):
    """torchvision's ``_blend`` for float images: factor·x + (1 − factor)·other, in [0, 1]."""
    f = factor.astype(np.float32).reshape(-1, 1, 1, 1)
    return np.clip(f * x + (1 - f) * other, 0.0, 1.0)


def _brightness(x, f):
    return _blend(x, np.float32(0), f)


def _contrast(x, f):
    return _blend(x, _grayscale(x).mean(axis=(1, 2, 3), keepdims=True), f)


def _saturation(x, f):
    return x if x.shape[1] == 1 else _blend(x, _grayscale(x), f)


def _hue(x, shift):
    """Rotate the hue (HSV, hue in turns) by ``shift``; one channel has no hue."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(axis=1)
    chroma = v - x.min(axis=1)
    grey = chroma == 0
    s = chroma / np.where(grey, 1, v)
    span = np.where(grey, 1, chroma)
    rc, gc, bc = (v - r) / span, (v - g) / span, (v - b) / span
    h = np.where(v == r, bc - gc, np.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc)) * ~grey
    h = np.fmod(h / 6.0 + 1.0, 1.0)
    h = np.fmod(h + shift.reshape(-1, 1, 1).astype(np.float32) + 1.0, 1.0)
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    p = np.clip(v * (1 - s), 0, 1)
    q = np.clip(v * (1 - s * f), 0, 1)
    t = np.clip(v * (1 - s * (1 - f)), 0, 1)
    sector = sector.astype(np.int64) % 6
    table = np.stack([np.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p),
                                            (p, p, t, v, v, q))])        # (3, 6, N, H, W)
    out = np.take_along_axis(table, sector[None, None], axis=1)[:, 0]   # (3, N, H, W)
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3), dtype=np.float32)


_JITTERED = ("brightness", "contrast", "saturation", "hue")


class ColorJitter(Transform):
    """Randomly change each sample's brightness, contrast, saturation and hue, in a random
    order per sample (torchvision's ``ColorJitter`` on float images in [0, 1]: results are
    clipped to [0, 1]). ``brightness``, ``contrast``, ``saturation``: a number v → a factor in
    [max(0, 1 − v), 1 + v], or (min, max); ``hue``: h → a shift in [−h, h] turns, h <= 0.5.
    Contrast, saturation and hue need 1 or 3 channels (saturation and hue leave 1 channel
    as it is)."""

    def __init__(self, brightness=0, contrast=0, saturation=0, hue=0):
        self.brightness = _jitter(brightness, "brightness")
        self.contrast = _jitter(contrast, "contrast")
        self.saturation = _jitter(saturation, "saturation")
        self.hue = _jitter(hue, "hue", center=0.0, low=-0.5, high=0.5)

    def _apply(self, x, rng):
        channels = x.shape[1]
        if channels not in (1, 3) and any(getattr(self, k) is not None for k in _JITTERED[1:]):
            raise InputError(f"ColorJitter's contrast, saturation and hue need 1 or 3 channels "
                             f"(grey or RGB); the images have {channels}")
        return super()._apply(x, rng)

    def get_params(self, n, height, width, rng) -> dict:
        """``order`` (n, 4): each sample's order of (brightness, contrast, saturation, hue);
        each factor (n,), or None when that property is left alone."""
        params = {"order": rng.permuted(np.tile(np.arange(4), (n, 1)), axis=1)}
        for name in _JITTERED:
            r = getattr(self, name)
            params[name] = None if r is None else rng.uniform(r[0], r[1], n)
        return params

    def apply(self, x, params):
        out = x.copy()
        for position in range(4):
            for k, (name, fn) in enumerate(zip(_JITTERED, (_brightness, _contrast,
                                                           _saturation, _hue))):
                chosen = np.flatnonzero(params["order"][:, position] == k)
                if params[name] is not None and len(chosen):
                    out[chosen] = fn(out[chosen], params[name][chosen])
        return out


def _jitter(value, name, center=1.0, low=0.0, high=math.inf):
    """torchvision's ``ColorJitter._check_input``: None when the range is the identity."""
    if _number(value) and value < 0:
        raise InputError(f"{name} must be non-negative when a single number, got {value!r}")
    if _number(value) and center == 1.0:
        lo, hi = max(center - value, 0.0), center + value
    else:
        lo, hi = _pair_range(value, name, symmetric_about=center, low=low, high=high)
    if lo < low or hi > high:
        raise InputError(f"{name} must lie within [{low}, {high}], got ({lo}, {hi})")
    return None if lo == hi == center else (lo, hi)


class Normalize(Transform):
    """(x − mean) / std per channel (torchvision's ``Normalize``); one value or one per
    channel each, every std non-zero."""

    def __init__(self, mean, std):
        self.mean = _fill(mean, "mean")
        self.std = _fill(std, "std")
        if any(s == 0 for s in self.std):
            raise InputError(f"std must be non-zero for every channel, got {self.std}")

    def _apply(self, x, rng):
        channels = x.shape[1]
        return (x - _per_channel(self.mean, channels, "mean")) / \
            _per_channel(self.std, channels, "std")
