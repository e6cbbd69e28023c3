"""Sequence inputs: a sample is T time steps of F features, one token per time step; positions are named
``t{step}.{feature}`` and scaled per feature, with one range shared by every time step."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import torch

from detectors.base import Detector
from detectors.inputs.base import InputKind
from detectors.sequence import SequenceTransformer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_TIME_STEP = re.compile(r"t\d+\.")


class Sequence(InputKind):
    name = "sequence"
    rank = 2
    sample_shape = "(T, F)"
    axes = "(time steps, features)"
    description = "(N, T, F) sequences"
    detector = SequenceTransformer.kind
    builtin_data = "sequences"
    data_file = ".npz"
    scale_mode = "channel"
    samples_caption = ("Each sample's time x feature strip and each explainer's attribution on it (red positive, "
                       "blue negative).")

    def _tokens(self, shape: tuple[int, ...], patch_size: int | None) -> tuple[torch.Tensor, int]:
        steps, features = shape
        return torch.arange(steps).unsqueeze(1).expand(steps, features).contiguous(), steps

    def token_grid(self, input_shape: tuple[int, ...], patch_size: int | None) -> str:
        return f"{input_shape[0]} time steps"

    def build_detector(self, input_shape: tuple[int, ...], n_classes: int, *, attention: str) -> Detector:
        return SequenceTransformer(input_shape[0], input_shape[1], n_classes, attention=attention)

    def feature_names(self, input_shape: tuple[int, ...]) -> list[str]:
        """``t{step}.f{feature}``."""
        steps, features = input_shape
        return [f"t{t}.f{f}" for t in range(steps) for f in range(features)]

    def feature_part(self, position: str) -> str | None:
        """``t3.bytes`` -> ``bytes``."""
        return _TIME_STEP.sub("", position, count=1) if _TIME_STEP.match(position) else None

    def attention_view(self, x: np.ndarray, clean: np.ndarray, attacked: np.ndarray) -> Figure:
        """Two strips, clean over attacked, of the attention per time step (its mean over the features)."""
        from matplotlib.figure import Figure

        strip = np.stack([clean.mean(axis=-1), attacked.mean(axis=-1)])
        figure = Figure(figsize=(4.6, 1.1))
        axes = figure.subplots()
        axes.imshow(strip, cmap="magma", aspect="auto", vmin=0, vmax=strip.max() or 1.0)
        axes.set_yticks([0, 1], ["clean", "attacked"], fontsize=8)
        axes.set_xlabel("time step", fontsize=8)
        axes.tick_params(labelsize=7)
        return figure

    def attribution_figure(self, x: np.ndarray, maps: dict[str, np.ndarray]) -> Figure:
        """The sample's time x feature strip over one strip per explainer."""
        from matplotlib.figure import Figure

        rows = [("input", x.T, "gray", 0.0, 1.0)]
        for title, values in maps.items():
            values = values.T
            peak = np.abs(values).max() or 1.0
            rows.append((title, values, "RdBu_r", -peak, peak))
        figure = Figure(figsize=(4.6, 0.55 * len(rows) + 0.4))
        panels = np.atleast_1d(figure.subplots(len(rows), 1, sharex=True))
        for axes, (title, values, cmap, lo, hi) in zip(panels, rows):
            axes.imshow(values, cmap=cmap, aspect="auto", vmin=lo, vmax=hi)
            axes.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
            axes.set_yticks([])
            axes.tick_params(labelsize=6)
        panels[-1].set_xlabel("time step (rows within a strip: features)", fontsize=7)
        return figure


SEQUENCE = Sequence()
