"""Detector families by name, so a checkpoint can name its kind."""

from __future__ import annotations

from detectors.base import Detector
from detectors.blocks import ATTENTION_VARIANTS
from detectors.errors import BadInputError
from detectors.inputs import INPUT_KINDS
from detectors.sequence import SequenceTransformer
from detectors.tabular import FeatureTokenTransformer
from detectors.text import TextTransformer
from detectors.vision import VisionTransformer

DETECTORS: dict[str, type[Detector]] = {
    cls.kind: cls for cls in (FeatureTokenTransformer, VisionTransformer, SequenceTransformer, TextTransformer)
}


def build_detector(kind: str, hparams: dict) -> Detector:
    try:
        family = DETECTORS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known: {', '.join(sorted(DETECTORS))}") from None
    return family(**hparams)


def detector_for_data(kind: str, input_shape: tuple[int, ...], n_classes: int, data_name: str, *,
                      attention: str = "softmax") -> Detector:
    """A freshly initialised detector of ``kind`` sized for data of ``input_shape`` (one sample), with the
    attention function ``attention`` (:data:`detectors.blocks.ATTENTION_VARIANTS`), built by the input kind
    it is trained for (:mod:`detectors.inputs`)."""
    if attention not in ATTENTION_VARIANTS:
        raise BadInputError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_VARIANTS)}")
    if kind not in DETECTORS:
        raise BadInputError(f"unknown detector {kind!r}; known: {', '.join(sorted(DETECTORS))}")
    if kind == "text":
        raise BadInputError(f"detector text needs messages (phishing, a .csv with a text column or a .jsonl file), "
                            f"but {data_name} holds samples of shape {tuple(input_shape)}")
    trained_for = next(input_kind for input_kind in INPUT_KINDS.values() if input_kind.detector == kind)
    if len(input_shape) != trained_for.rank:
        fitting = [other.detector for other in INPUT_KINDS.values() if other.rank == len(input_shape)]
        advice = f"use --detector {fitting[0]}" if fitting else f"no detector takes samples of rank {len(input_shape)}"
        raise BadInputError(f"detector {kind} needs {trained_for.description}, but {data_name} holds samples of "
                            f"shape {tuple(input_shape)}; {advice}")
    return trained_for.build_detector(tuple(input_shape), n_classes, attention=attention)
