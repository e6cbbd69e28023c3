"""Tabular inputs: a sample is a row of F named features (a CSV file's columns), one token per feature."""

from __future__ import annotations

import numpy as np
import torch

from detectors.base import Detector
from detectors.inputs.base import Bars, InputKind
from detectors.tabular import FeatureTokenTransformer

BAR_FEATURES = 10  # the report draws the ten positions with the most attention


class Tabular(InputKind):
    name = "tabular"
    rank = 1
    sample_shape = "(F,)"
    axes = "(features,)"
    description = "(N, F) rows"
    detector = FeatureTokenTransformer.kind
    builtin_data = "breast-cancer"
    data_file = ".csv"
    scale_mode = "feature"
    named_columns = True
    samples_caption = ("For each sample the ten features with the most attention and each explainer's attribution, "
                       "scaled to the sample's largest magnitude (orange: negative).")

    def _tokens(self, shape: tuple[int, ...], patch_size: int | None) -> tuple[torch.Tensor, int]:
        (features,) = shape
        return torch.arange(features), features

    def token_grid(self, input_shape: tuple[int, ...], patch_size: int | None) -> str:
        return f"{input_shape[0]} features"

    def build_detector(self, input_shape: tuple[int, ...], n_classes: int, *, attention: str) -> Detector:
        return FeatureTokenTransformer(input_shape[0], n_classes, attention=attention)

    def feature_names(self, input_shape: tuple[int, ...]) -> list[str]:
        return [f"f{i}" for i in range(input_shape[0])]

    def attention_view(self, x: np.ndarray, clean: np.ndarray, attacked: np.ndarray) -> Bars:
        """The ten features with the most attention, clean or attacked, as bars scaled to the larger peak."""
        c, a = clean.flatten(), attacked.flatten()
        peak = max(c.max(), a.max()) or 1.0
        return Bars(np.argsort(-np.maximum(c, a), kind="stable")[:BAR_FEATURES], c, a, peak)

    def attribution_figure(self, x: np.ndarray, maps: dict[str, np.ndarray]) -> None:
        """None: the report draws the sample's top features as bars."""
        return None


TABULAR = Tabular()
