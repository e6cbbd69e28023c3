"""Deletion and insertion curves, computed batched.

Definition (so anyone can recompute it): attributions target the predicted
class; features are ranked by signed attribution, descending, ties by feature
index. Deletion replaces the top-ranked features with the baseline, one feature
per step from 0 to all F (for F > 64, in 32 equal steps); insertion starts from
the baseline and restores features in the same order. The curve is the
predicted-class probability, the x-axis the fraction of features changed in
[0, 1], the area the trapezoid rule. Every step of every sample is stacked into
a few large forward passes under ``torch.inference_mode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

MAX_UNIT_STEPS = 64
COARSE_STEPS = 32


@dataclass
class RemovalCurves:
    fractions: np.ndarray  # (steps,)
    deletion: np.ndarray  # (samples, steps)
    insertion: np.ndarray  # (samples, steps)

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.trapezoid(self.insertion, self.fractions, axis=1)


def removal_counts(n_features: int) -> np.ndarray:
    """How many features are changed at each step: 0..F, or 33 equal steps for F > 64."""
    if n_features <= MAX_UNIT_STEPS:
        return np.arange(n_features + 1)
    return np.round(np.linspace(0, n_features, COARSE_STEPS + 1)).astype(np.int64)


def feature_ranks(attribution: torch.Tensor) -> torch.Tensor:
    """rank[i, f] = position of feature f when sample i's attributions are sorted descending, ties by index."""
    flat = attribution.flatten(1).double().cpu().numpy()
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :].repeat(len(flat), 0), axis=1)
    return torch.from_numpy(ranks)


@torch.inference_mode()
def removal_curves(model: torch.nn.Module, x: torch.Tensor, attribution: torch.Tensor, target: torch.Tensor,
                   baseline: torch.Tensor, *, max_batch: int = 16384) -> RemovalCurves:
    """Deletion and insertion curves of every sample, ``max_batch`` model inputs per forward pass."""
    model.eval()
    n, shape = len(x), x.shape[1:]
    flat_x = x.flatten(1)
    flat_base = baseline.reshape(1, -1).to(x.device, x.dtype).expand_as(flat_x)
    counts = torch.as_tensor(removal_counts(flat_x.shape[1]), device=x.device)
    ranks = feature_ranks(attribution).to(x.device)
    steps = len(counts)
    chunk = max(1, max_batch // (2 * steps))
    deletion = torch.empty(n, steps)
    insertion = torch.empty(n, steps)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        changed = ranks[rows, None, :] < counts[None, :, None]  # (chunk, steps, F)
        xs, bs = flat_x[rows, None, :], flat_base[rows, None, :]
        deleted = torch.where(changed, bs, xs)
        inserted = torch.where(changed, xs, bs)
        batch = torch.cat([deleted, inserted]).reshape(-1, *shape)
        proba = torch.softmax(model(batch), dim=1)
        m = changed.shape[0]
        picked = proba.reshape(2, m, steps, -1).gather(3, target[rows].view(1, m, 1, 1).expand(2, m, steps, 1))
        deletion[rows] = picked[0, ..., 0].float().cpu()
        insertion[rows] = picked[1, ..., 0].float().cpu()
    fractions = counts.cpu().numpy() / flat_x.shape[1]
    return RemovalCurves(fractions=fractions, deletion=deletion.numpy().astype(np.float64),
                         insertion=insertion.numpy().astype(np.float64))


@dataclass
class FaithfulnessOutcome:
    """Per-sample metrics (name -> (n,), NaN where a sample does not count) and per-sample curves
    (name -> (n, points)) whose mean over samples the report plots, with their x-axis in ``fractions``."""
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    fractions: dict[str, list[float]] = field(default_factory=dict)


def faithfulness_stage(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                       attributions: dict[str, torch.Tensor], *, baseline: torch.Tensor, seed: int,
                       index: torch.Tensor, max_batch: int = 16384) -> FaithfulnessOutcome:
    """Every faithfulness metric of every explainer, per sample. ``index`` holds the samples' global
    indices: every random draw is keyed by them, so a shard computes exactly its rows of the whole.
    ``max_batch``: model inputs per stacked forward pass (from the memory budget)."""
    outcome = FaithfulnessOutcome()
    for name, attribution in attributions.items():
        curves = removal_curves(model, x, attribution, target, baseline, max_batch=max_batch)
        outcome.per_sample[f"faithfulness.deletion_auc.{name}"] = curves.deletion_auc
        outcome.per_sample[f"faithfulness.insertion_auc.{name}"] = curves.insertion_auc
        outcome.curves[f"deletion.{name}"] = curves.deletion
        outcome.curves[f"insertion.{name}"] = curves.insertion
        outcome.fractions[f"deletion.{name}"] = outcome.fractions[f"insertion.{name}"] = curves.fractions.tolist()
    return outcome


def mean_curves(outcome: FaithfulnessOutcome, explainers: list[str]) -> dict[str, dict[str, list[float]]]:
    """The report's view: per explainer the x-axis and the mean deletion and insertion curves."""
    view = {}
    for name in explainers:
        if f"deletion.{name}" in outcome.curves:
            view[name] = {"fractions": outcome.fractions[f"deletion.{name}"],
                          "deletion": outcome.curves[f"deletion.{name}"].mean(0).tolist(),
                          "insertion": outcome.curves[f"insertion.{name}"].mean(0).tolist()}
    return view
