"""Image inputs: a sample is C x H x W pixels in [0, 1], one token per square patch; pixels are named
``y{row}_x{col}`` (``c{channel}_`` first when C > 1) and scaled by one range for every pixel. Besides the
mean and zero, a removed pixel may take the value of a Gaussian blur of its image (``blur``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from detectors.base import Detector
from detectors.errors import BadInputError
from detectors.inputs.base import InputKind
from detectors.vision import VisionTransformer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BLUR_SIGMA = 1.0


def gaussian_blur(images: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """(n, C, H, W) blurred per channel with a separable Gaussian of ``sigma`` pixels (radius ceil(3 sigma)
    taps each side, edges replicated)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-taps.square() / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def as_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> what imshow reads: (H, W) for one channel, (H, W, C) for three."""
    return x[0] if x.shape[0] == 1 else np.clip(np.moveaxis(x[:3], 0, -1), 0, 1)


class Image(InputKind):
    name = "image"
    rank = 3
    sample_shape = "(C, H, W)"
    axes = "(channels, height, width)"
    description = "(N, C, H, W) images"
    detector = VisionTransformer.kind
    builtin_data = "digits"
    data_file = ".npz"
    scale_mode = "global"
    removal_baselines = ("mean", "zero", "blur")
    token_hint = "check --patch-size and --cls-token (first if the model prepends a CLS token, none if it pools)"
    samples_caption = "Each sample's image and each explainer's attribution over it (red positive, blue negative)."

    def _check_patch_size(self, patch_size: int | None) -> None:
        """Any patch size: whether it tiles the image is checked with the image's shape."""

    def _tokens(self, shape: tuple[int, ...], patch_size: int | None) -> tuple[torch.Tensor, int]:
        channels, height, width = shape
        if patch_size is None:
            raise BadInputError("image input needs --patch-size: the side of the square patch each token covers")
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise BadInputError(f"patch size {patch_size} does not tile a {height}x{width} image; height and width "
                                "must both be divisible by it")
        rows = torch.arange(height) // patch_size
        cols = torch.arange(width) // patch_size
        patches = rows.unsqueeze(1) * (width // patch_size) + cols.unsqueeze(0)
        return patches.unsqueeze(0).expand(channels, height, width).contiguous(), \
            (height // patch_size) * (width // patch_size)

    def token_grid(self, input_shape: tuple[int, ...], patch_size: int | None) -> str:
        _, height, width = input_shape
        return f"({height}/{patch_size})*({width}/{patch_size}) patches"

    def build_detector(self, input_shape: tuple[int, ...], n_classes: int, *, attention: str) -> Detector:
        """A ViT with 2x2 patches where they tile the image, else one token per pixel."""
        channels, height, width = input_shape
        patch = 2 if height % 2 == 0 and width % 2 == 0 else 1
        return VisionTransformer(channels, height, width, n_classes, patch=patch, attention=attention)

    def feature_names(self, input_shape: tuple[int, ...]) -> list[str]:
        """``y{row}_x{col}``, with ``c{channel}_`` first when C > 1."""
        channels, height, width = input_shape
        return [f"c{c}_y{y}_x{x}" if channels > 1 else f"y{y}_x{x}"
                for c in range(channels) for y in range(height) for x in range(width)]

    def removal_baseline(self, name: str, x: torch.Tensor, train_mean: torch.Tensor) -> torch.Tensor:
        """``blur``: each image blurred per channel (:func:`gaussian_blur`, sigma :data:`BLUR_SIGMA` = 1 pixel,
        7 taps), (n, C, H, W); ``mean`` and ``zero`` as for every kind."""
        if name == "blur":
            return gaussian_blur(x, sigma=BLUR_SIGMA)
        return super().removal_baseline(name, x, train_mean)

    def attention_view(self, x: np.ndarray, clean: np.ndarray, attacked: np.ndarray) -> Figure:
        """The image, then the clean and the attacked attention over it on one colour scale."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4.2, 1.6))
        panels = figure.subplots(1, 3)
        peak = max(clean.max(), attacked.max()) or 1.0
        panels[0].imshow(as_image(x), cmap="gray", vmin=0, vmax=1)
        panels[0].set_title("input", fontsize=8)
        for axes, values, title in ((panels[1], clean, "clean attention"), (panels[2], attacked, "attacked")):
            axes.imshow(as_image(x), cmap="gray", vmin=0, vmax=1)
            axes.imshow(values[0], cmap="magma", alpha=0.65, vmin=0, vmax=peak)
            axes.set_title(title, fontsize=8)
        for axes in panels:
            axes.set_axis_off()
        return figure

    def attribution_figure(self, x: np.ndarray, maps: dict[str, np.ndarray]) -> Figure:
        """The image, then each explainer's attribution (summed over channels) over it."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(1.15 * (1 + len(maps)), 1.45))
        panels = np.atleast_1d(figure.subplots(1, 1 + len(maps)))
        panels[0].imshow(as_image(x), cmap="gray", vmin=0, vmax=1)
        panels[0].set_title("input", fontsize=7)
        for axes, (title, values) in zip(panels[1:], maps.items()):
            values = values.sum(axis=0)
            peak = np.abs(values).max() or 1.0
            axes.imshow(as_image(x), cmap="gray", vmin=0, vmax=1)
            axes.imshow(values, cmap="RdBu_r", alpha=0.7, vmin=-peak, vmax=peak)
            axes.set_title(title, fontsize=7)
        for axes in panels:
            axes.set_axis_off()
        return figure


IMAGE = Image()
