"""Detector families by name, so a checkpoint can name its kind."""

from __future__ import annotations

from detectors.base import Detector
from detectors.blocks import ATTENTION_VARIANTS
from detectors.errors import BadInputError
from detectors.sequence import SequenceTransformer
from detectors.tabular import FeatureTokenTransformer
from detectors.text import TextTransformer
from detectors.vision import VisionTransformer

DETECTORS: dict[str, type[Detector]] = {
    cls.kind: cls for cls in (FeatureTokenTransformer, VisionTransformer, SequenceTransformer, TextTransformer)
}
INPUT_RANK = {"tabular": 1, "sequence": 2, "vit": 3}
INPUT_DESCRIPTION = {"tabular": "(N, F) rows", "sequence": "(N, T, F) sequences", "vit": "(N, C, H, W) images"}


def build_detector(kind: str, hparams: dict) -> Detector:
    try:
        family = DETECTORS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known: {', '.join(sorted(DETECTORS))}") from None
    return family(**hparams)


def detector_for_data(kind: str, input_shape: tuple[int, ...], n_classes: int, data_name: str, *,
                      attention: str = "softmax") -> Detector:
    """A freshly initialised detector of ``kind`` sized for data of ``input_shape`` (one sample), with the
    attention function ``attention`` (:data:`detectors.blocks.ATTENTION_VARIANTS`)."""
    if attention not in ATTENTION_VARIANTS:
        raise BadInputError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_VARIANTS)}")
    if kind not in DETECTORS:
        raise BadInputError(f"unknown detector {kind!r}; known: {', '.join(sorted(DETECTORS))}")
    if kind == "text":
        raise BadInputError(f"detector text needs messages (phishing, a .csv with a text column or a .jsonl file), "
                            f"but {data_name} holds samples of shape {tuple(input_shape)}")
    if len(input_shape) != INPUT_RANK[kind]:
        fitting = [k for k, rank in INPUT_RANK.items() if rank == len(input_shape)]
        raise BadInputError(
            f"detector {kind} needs {INPUT_DESCRIPTION[kind]}, but {data_name} holds samples of shape "
            f"{tuple(input_shape)}; use --detector {fitting[0] if fitting else 'tabular'}"
        )
    if kind == "tabular":
        return FeatureTokenTransformer(input_shape[0], n_classes, attention=attention)
    if kind == "sequence":
        return SequenceTransformer(input_shape[0], input_shape[1], n_classes, attention=attention)
    channels, height, width = input_shape
    patch = 2 if height % 2 == 0 and width % 2 == 0 else 1
    return VisionTransformer(channels, height, width, n_classes, patch=patch, attention=attention)
