"""Test-wide settings: kernel choice by the static rules, not by timing (runtime/tuning.py), so
every run picks the same kernels — set before any Session compiles, inherited by the
subprocesses tests start."""
import os

os.environ["EMBER_TUNE"] = "0"
