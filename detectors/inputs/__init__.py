"""One module per kind of input, behind one interface (:class:`~detectors.inputs.base.InputKind`).

What differs between tabular rows, sequences and images (the sample's rank, the detector family trained
for it, the token map and its bad-input checks, position names and scaling of file data, the removal
baselines, the report's drawings) lives in the kind's module: ``tabular.py``, ``sequence.py``, ``image.py``, ``text.py``.
A new kind is one new module defining one instance, plus its entry in :data:`INPUT_KINDS` and its name in
:data:`detectors.kinds.INPUT_KIND_NAMES` (the command line's choices, read without torch; a test keeps the
two equal). Text shares its rank with tabular rows: it is found by name (a checkpoint's detector, results.json's
``data.input_kind``) or, for a batch, by its integer dtype (:func:`kind_of_samples`), never by rank.
"""

from __future__ import annotations

import torch

from detectors.errors import BadInputError
from detectors.inputs.base import CLS_TOKENS, Bars, InputKind
from detectors.inputs.image import IMAGE
from detectors.inputs.sequence import SEQUENCE
from detectors.inputs.tabular import TABULAR
from detectors.inputs.text import TEXT

__all__ = ["CLS_TOKENS", "INPUT_KINDS", "REMOVAL_BASELINES", "Bars", "InputKind", "kind_named", "kind_of_rank",
           "kind_of_samples", "removal_baseline"]

INPUT_KINDS: dict[str, InputKind] = {kind.name: kind for kind in (TABULAR, SEQUENCE, IMAGE, TEXT)}
# float samples by rank; text (integer ids) is found by name or dtype
_BY_RANK: dict[int, InputKind] = {kind.rank: kind for kind in INPUT_KINDS.values() if kind is not TEXT}
REMOVAL_BASELINES = tuple(dict.fromkeys(name for kind in INPUT_KINDS.values() for name in kind.removal_baselines))


def kind_named(name: str) -> InputKind:
    """The input kind called ``name`` (``--input-kind``)."""
    try:
        return INPUT_KINDS[name]
    except KeyError:
        raise BadInputError(f"input kind {name!r} is unknown; expected one of {', '.join(INPUT_KINDS)}") from None


def kind_of_rank(rank: int) -> InputKind:
    """The input kind whose samples have ``rank`` axes (the batch axis left out)."""
    try:
        return _BY_RANK[rank]
    except KeyError:
        raise BadInputError(f"no input kind has samples of rank {rank}; expected "
                            f"{' or '.join(kind.description for kind in _BY_RANK.values())}") from None


def kind_of_samples(x: torch.Tensor) -> InputKind:
    """The input kind of a batch ``x``: text for integer token ids, else the kind of its samples' rank."""
    return TEXT if not x.is_floating_point() else kind_of_rank(x.ndim - 1)


def removal_baseline(name: str, x: torch.Tensor, train_mean: torch.Tensor) -> torch.Tensor:
    """The values a removed position of the batch ``x`` takes under the removal baseline ``name``, from the
    kind of ``x``'s samples (:meth:`InputKind.removal_baseline`): (*shape), or (n, *shape) where it depends on
    the sample (an image's ``blur``)."""
    if name not in REMOVAL_BASELINES:
        raise BadInputError(f"unknown removal baseline {name!r}; choose one of {', '.join(REMOVAL_BASELINES)}")
    kind = kind_of_samples(x)
    if name not in kind.removal_baselines:
        owners = [other for other in INPUT_KINDS.values() if name in other.removal_baselines]
        raise BadInputError(
            f"--removal-baseline {name} applies to {' and '.join(f'{k.name} inputs {k.sample_shape}' for k in owners)} "
            f"only; these inputs have shape {tuple(x.shape[1:])}: use {' or '.join(kind.removal_baselines)}")
    return kind.removal_baseline(name, x, train_mean)
