"""Detector families by name, so a checkpoint can name its kind."""

from __future__ import annotations

from detectors.base import Detector
from detectors.tabular import FeatureTokenTransformer

DETECTORS: dict[str, type[Detector]] = {
    FeatureTokenTransformer.kind: FeatureTokenTransformer,
}


def build_detector(kind: str, hparams: dict) -> Detector:
    try:
        family = DETECTORS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known: {', '.join(sorted(DETECTORS))}") from None
    return family(**hparams)
