"""Localisation against ground truth: do the top-attributed features hit the truly relevant ones?

``localisation.precision_at_k.EXPLAINER``: for each sample with k > 0 known relevant input positions,
the share of its k top-attributed positions (signed attribution, descending, ties by position, as for
deletion) that are relevant. Ground truth comes from the data: ``relevant_features`` names the same
features for every sample (the ``flows`` set declares 4), ``relevant_mask`` marks them per sample (the
``sequences`` set marks the trigger's steps; samples without a trigger have k = 0 and do not count).
Data without either is skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.faithfulness import feature_ranks

NO_GROUND_TRUTH = "the data declares no relevant features (ground truth), so localisation cannot be measured"


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
