"""The interface every input kind implements: :class:`InputKind`.

An input kind is what a sample is (a row of features, a sequence of time steps, an image) and everything that
follows from it: the shape of one sample, the detector family trained for it, how tokens cover its positions,
how its positions are named and scaled when read from a file, what a removed position becomes, and how the
report draws it. The kinds are registered in :data:`detectors.inputs.INPUT_KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from detectors.base import Detector, TokenMap
from detectors.errors import BadInputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CLS_TOKENS = ("first", "none")


@dataclass(frozen=True)
class Bars:
    """Clean against attacked attention as bars, one per input position (the report's HTML bars): ``positions``
    are the positions to draw, most attended first; ``clean`` and ``attacked`` hold every position's value
    (flattened) and ``peak`` is the value a full bar stands for."""

    positions: np.ndarray
    clean: np.ndarray
    attacked: np.ndarray
    peak: float


class InputKind:
    """What differs between kinds of input, for one kind. A subclass sets the class attributes and implements
    :meth:`_tokens`, :meth:`build_detector`, :meth:`feature_names`, :meth:`attention_view` and
    :meth:`attribution_figure`; one instance of it is registered in :data:`detectors.inputs.INPUT_KINDS`.

    ``rank``: the number of axes of one sample (the batch axis left out); ``sample_shape`` and ``axes`` spell
    them ("(C, H, W)", "(channels, height, width)") and ``description`` the batch ("(N, C, H, W) images").
    ``detector``: the detector family ``audit train`` builds for it (:data:`detectors.registry.DETECTORS`).
    ``builtin_data``: a built-in data set of this kind. ``data_file``: the file suffix it is read from.
    ``scale_mode``: how the :class:`~detectors.table.Scaler` fits its ranges. ``named_columns``: its positions
    are a file's named columns, so audited data is matched to a checkpoint's columns by name and whole-number
    columns are integer features that the attacks round. ``removal_baselines``: the values a removed position
    may take (:meth:`removal_baseline`). ``token_hint``: what to check when a model's attention covers
    another number of tokens than the token map. ``samples_caption``: the report's caption of its gallery.
    ``removal_axis``: the x-axis of the report's deletion and insertion curves.
    """

    name: str
    rank: int
    sample_shape: str
    axes: str
    description: str
    detector: str
    builtin_data: str
    data_file: str
    scale_mode: str
    named_columns: bool = False
    removal_baselines: tuple[str, ...] = ("mean", "zero")
    token_hint: str = "use --cls-token first if the model prepends a CLS token, none if it mean-pools"
    samples_caption: str
    removal_axis: str = "fraction of features changed"

    def __repr__(self) -> str:
        return f"<input kind {self.name}>"

    # -- tokens -------------------------------------------------------------------------------------------------

    def token_map(self, input_shape: tuple[int, ...], *, cls_token: str = "first",
                  patch_size: int | None = None) -> TokenMap:
        """Which token covers each position of a sample of ``input_shape``, for a model that prepends a CLS
        token (``cls_token="first"``) or pools without one (``"none"``); ``patch_size`` for kinds cut into
        patches. Bad settings are :class:`BadInputError` naming the option."""
        if cls_token not in CLS_TOKENS:
            raise BadInputError(f"cls token {cls_token!r} is unknown; expected one of {', '.join(CLS_TOKENS)}")
        shape = tuple(int(size) for size in input_shape)
        if any(size < 1 for size in shape):
            raise BadInputError(f"input shape {shape} has an empty axis; every size must be at least 1")
        self._check_patch_size(patch_size)
        if len(shape) != self.rank:
            raise BadInputError(f"{self.name} input needs shape {self.axes}, got {shape}")
        token_of_input, n_tokens = self._tokens(shape, patch_size)
        offset = 1 if cls_token == "first" else 0
        return TokenMap(token_of_input + offset, n_tokens + offset, 0 if cls_token == "first" else None)

    def _check_patch_size(self, patch_size: int | None) -> None:
        if patch_size is not None:
            raise BadInputError(f"--patch-size applies to inputs cut into square patches only, got it with input "
                                f"kind {self.name!r}")

    def _tokens(self, shape: tuple[int, ...], patch_size: int | None) -> tuple[torch.Tensor, int]:
        """(the token of every position counted without CLS, of the sample's shape; the number of such tokens)."""
        raise NotImplementedError

    def token_grid(self, input_shape: tuple[int, ...], patch_size: int | None) -> str:
        """How the tokens are counted, for an error message: "6 features", "(8/2)*(8/2) patches"."""
        raise NotImplementedError

    # -- detectors and data ----------------------------------------------------------------------------------------

    def build_detector(self, input_shape: tuple[int, ...], n_classes: int, *, attention: str) -> Detector:
        """A freshly initialised detector of this kind's family for samples of ``input_shape``."""
        raise NotImplementedError

    def feature_names(self, input_shape: tuple[int, ...]) -> list[str]:
        """The names of a sample's positions, in flattened order, for data read without names."""
        raise NotImplementedError

    def feature_part(self, position: str) -> str | None:
        """The feature a position's name stands for where one feature has many positions (a sequence's
        ``t3.bytes`` is ``bytes``), else None: ``--relevant-features bytes`` names all of them."""
        return None

    # -- removal ----------------------------------------------------------------------------------------------------

    def removal_baseline(self, name: str, x: torch.Tensor, train_mean: torch.Tensor) -> torch.Tensor:
        """The values a removed position takes, for a batch ``x``: (*shape) for ``mean`` (``train_mean``) and
        ``zero``; a kind's own baselines (an image's ``blur``) may be per sample, (n, *shape). Call it through
        :func:`detectors.inputs.removal_baseline`, which checks the name."""
        if name == "mean":
            return train_mean.to(x.device, x.dtype).reshape(x.shape[1:])
        if name == "zero":
            return torch.zeros(x.shape[1:], device=x.device, dtype=x.dtype)
        raise BadInputError(f"--removal-baseline {name} does not apply to {self.name} inputs; use "
                            f"{' or '.join(self.removal_baselines)}")

    # -- the report's drawings -------------------------------------------------------------------------------------

    def attention_view(self, x: np.ndarray, clean: np.ndarray, attacked: np.ndarray) -> Figure | Bars:
        """One sample's clean against attacked attention over its positions (both of ``x``'s shape): a
        matplotlib Figure, or :class:`Bars` for the report to draw as HTML."""
        raise NotImplementedError

    def attribution_figure(self, x: np.ndarray, maps: dict[str, np.ndarray]) -> Figure | None:
        """One sample and each explainer's attribution of it (``maps``: panel title -> attribution of ``x``'s
        shape, scaled to [-1, 1]) as a matplotlib Figure; None where the report draws bars of the sample's
        top features instead."""
        raise NotImplementedError
