"""Progress bars for long work on the command line (``ember run-batch``, ``ember bench``):
tqdm's, on stderr, with the rate and the time left — and only where someone is watching.

A bar shows when stderr is a terminal and ``--quiet`` was not given. ``EMBER_PROGRESS=1``
forces it on (e.g. under ``mpirun``, whose ranks write to pipes), ``EMBER_PROGRESS=0`` off.
"""
from __future__ import annotations

import os
import sys

from ..graph.errors import EmberError

ENV_VAR = "EMBER_PROGRESS"


def wanted(quiet: bool = False, stream=None, environ=None) -> bool:
    """Whether to draw a bar: not ``quiet``, then ``EMBER_PROGRESS`` if set, else whether
    ``stream`` (default stderr) is a terminal."""
    if quiet:
        return False
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower()
    if value in ("1", "on", "yes", "true"):
        return True
    if value in ("0", "off", "no", "false"):
        return False
    if value:
        raise EmberError(f"{ENV_VAR}={value!r}: expected 1 (bars on) or 0 (off); unset it to "
                         f"draw bars only on a terminal")
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):    # no isatty, or a closed stream
        return False


def bar(total: int, desc: str, unit: str = "rows", enabled: bool = True):
    """A tqdm bar on stderr counting ``unit`` up to ``total`` (rate and time left shown), or
    None when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                leave=True, mininterval=0.2)
