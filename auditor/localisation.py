"""Localisation against ground truth: do the top-attributed features hit the truly relevant ones?

``localisation.precision_at_k.EXPLAINER``: for each sample with k > 0 known relevant input positions,
the share of its k top-attributed positions (signed attribution, descending, ties by position, as for
deletion) that are relevant. Ground truth comes from the data: ``relevant_features`` names the same
features for every sample (the ``flows`` set declares 4), ``relevant_mask`` marks them per sample (the
``sequences`` set marks the trigger's steps; samples without a trigger have k = 0 and do not count).
Data without either is skipped with the reason. On data this tool did not generate, ``audit run
--relevant-features a,b`` declares them (:func:`declare_relevant`): columns of a tabular CSV by name, and
for sequences a feature name at every time step (``f1`` names ``t0.f1``, ``t1.f1``, ...); the declaration
replaces whatever ground truth the data carried.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from auditor.faithfulness import feature_ranks
from auditor.metrics import MetricSpec
from auditor.stage import Block, Stage
from detectors.errors import BadInputError
from detectors.inputs import kind_of_rank

NO_GROUND_TRUTH = "the data declares no relevant features (ground truth), so localisation cannot be measured"


def declare_relevant(data, names: tuple[str, ...]):
    """``data`` with ``names`` as its relevant features; a name matches a feature name, or the feature a
    position's name stands for where one feature has many positions (a sequence's ``tT.NAME``, named by its
    input kind: :meth:`detectors.inputs.base.InputKind.feature_part`). Unknown names are bad input."""
    kind = kind_of_rank(data.x.ndim - 1)
    chosen = [feature for feature in data.feature_names if feature in names or kind.feature_part(feature) in names]
    matched = {feature if feature in names else kind.feature_part(feature) for feature in chosen}
    unknown = [name for name in names if name not in matched]
    if unknown:
        shown = ", ".join(map(repr, data.feature_names[:6])) + (" ..." if len(data.feature_names) > 6 else "")
        raise BadInputError(f"--relevant-features: {', '.join(map(repr, unknown))} not among the data's features "
                            f"({shown})")
    return replace(data, relevant_features=chosen, relevant_mask=None)


def relevant_mask_of(data, n_samples: int) -> np.ndarray | None:
    """(n, positions) boolean ground truth from a Dataset, or None when it declares none."""
    if data.relevant_mask is not None:
        return np.asarray(data.relevant_mask, dtype=bool).reshape(n_samples, -1)
    if data.relevant_features:
        row = np.array([name in data.relevant_features for name in data.feature_names], dtype=bool)
        return np.broadcast_to(row, (n_samples, len(row)))
    return None


def precision_at_k(attribution: torch.Tensor, relevant: np.ndarray) -> np.ndarray:
    """Per sample, the share of the k top-ranked positions that are relevant (k = its relevant count); NaN at k = 0."""
    ranks = feature_ranks(attribution).numpy()
    k = relevant.sum(1)
    hits = ((ranks < k[:, None]) & relevant).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, hits / np.maximum(k, 1), np.nan)


@dataclass
class LocalisationOutcome:
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def localisation_stage(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                       attributions: dict[str, torch.Tensor], *, baseline: torch.Tensor, seed: int,
                       index: torch.Tensor, relevant: np.ndarray | None) -> LocalisationOutcome:
    """precision@k of every explainer where ``relevant`` (n, positions) is known; skipped otherwise."""
    outcome = LocalisationOutcome()
    for name, attribution in attributions.items():
        metric = f"localisation.precision_at_k.{name}"
        if relevant is None:
            outcome.skipped[metric] = NO_GROUND_TRUTH
        else:
            outcome.per_sample[metric] = precision_at_k(attribution, relevant)
    return outcome


SPECS = (
    MetricSpec("localisation.precision_at_k.{explainer}", True, "[0, 1]",
               "on data with known relevant features: share of the k top-attributed features that are truly "
               "relevant (k = number of relevant features of the sample)",
               reference="Arras et al. 2022, CLEVR-XAI (relevance rank accuracy)"),
)


class LocalisationStage(Stage):
    """precision@k where the data declares relevant features, else each name skipped with
    :data:`NO_GROUND_TRUTH`."""

    name = "localisation"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return [f"localisation.precision_at_k.{explainer}" for explainer in config.explainers]

    def run(self, block: Block) -> None:
        located = localisation_stage(block.detector, block.x, block.pred, block.attributions,
                                     baseline=block.baseline, seed=block.config.seed, index=block.index,
                                     relevant=block.relevant)
        block.per_sample.update(located.per_sample)
        block.notes.update(located.skipped)
