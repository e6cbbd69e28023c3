"""Attention detectors, their data, training and checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attention-audit")
except PackageNotFoundError:
    __version__ = "0+unknown"
