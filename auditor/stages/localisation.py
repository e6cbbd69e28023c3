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

On text the ground truth is each message's rationale (the phishing corpus records the phrase that decides
its label, :mod:`detectors.text_data`), ranks run over the message's own tokens ([CLS] and padding rank last
and are never relevant), and ``localisation.plausibility.EXPLAINER`` is plausibility as ferret-xai defines
it (Attanasio et al. 2023, after DeYoung et al. 2020's token-level AUPRC): per message,
``sklearn.metrics.average_precision_score`` of the signed token attributions against the rationale tokens,
over the message's tokens; a message whose tokens are all or none rationale does not count (NaN). It is
measured on text only (elsewhere skipped with :data:`PLAUSIBILITY_ON_TEXT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from auditor.stages.faithfulness_metrics import feature_ranks
from auditor.catalogue.specs import LOCALISATION_SPECS as SPECS
from auditor.stages.base import Block, Stage
from detectors.errors import BadInputError
from detectors.inputs import kind_of_rank
from sklearn.metrics import average_precision_score

NO_GROUND_TRUTH = "the data declares no relevant features (ground truth), so localisation cannot be measured"
PLAUSIBILITY_ON_TEXT = ("plausibility (AUPRC of token scores against human-style rationales, ferret-xai) is measured "
                        "on text, whose corpus records a rationale per message")


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


def precision_at_k(attribution: torch.Tensor, relevant: np.ndarray,
                   explained: torch.Tensor | None = None) -> np.ndarray:
    """Per sample, the share of the k top-ranked positions that are relevant (k = its relevant count); NaN at k = 0.
    ``explained``: (n, positions) the positions that are ranked (text: the message's tokens), the rest last."""
    ranks = feature_ranks(attribution, explained).numpy()
    k = relevant.sum(1)
    hits = ((ranks < k[:, None]) & relevant).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, hits / np.maximum(k, 1), np.nan)


def plausibility(attribution: torch.Tensor, relevant: np.ndarray, explained: torch.Tensor) -> np.ndarray:
    """(n,) ferret-xai's AUPRC plausibility: average precision of the explained positions' signed attributions
    against ``relevant``; NaN where those positions are all relevant or none is."""
    scores = attribution.flatten(1).double().cpu().numpy()
    keep = explained.flatten(1).cpu().numpy()
    out = np.full(len(scores), np.nan)
    for i in range(len(scores)):
        truth = relevant[i][keep[i]]
        if 0 < truth.sum() < len(truth):
            out[i] = average_precision_score(truth, scores[i][keep[i]])
    return out


@dataclass
class LocalisationOutcome:
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def localisation_stage(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                       attributions: dict[str, torch.Tensor], *, baseline: torch.Tensor, seed: int,
                       index: torch.Tensor, relevant: np.ndarray | None,
                       explained: torch.Tensor | None = None) -> LocalisationOutcome:
    """precision@k of every explainer where ``relevant`` (n, positions) is known, and on text (``explained``
    given) its plausibility; skipped otherwise, with the reason."""
    outcome = LocalisationOutcome()
    for name, attribution in attributions.items():
        metric, plausible = f"localisation.precision_at_k.{name}", f"localisation.plausibility.{name}"
        if relevant is None:
            outcome.skipped[metric] = outcome.skipped[plausible] = NO_GROUND_TRUTH
            continue
        outcome.per_sample[metric] = precision_at_k(attribution, relevant, explained)
        if explained is None:
            outcome.skipped[plausible] = PLAUSIBILITY_ON_TEXT
        else:
            outcome.per_sample[plausible] = plausibility(attribution, relevant, explained)
    return outcome


class LocalisationStage(Stage):
    """precision@k where the data declares relevant features, and plausibility on text, else each name skipped
    with :data:`NO_GROUND_TRUTH` (or :data:`PLAUSIBILITY_ON_TEXT`)."""

    name = "localisation"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return [f"localisation.{metric}.{explainer}" for explainer in config.explainers
                for metric in ("precision_at_k", "plausibility")]

    def run(self, block: Block) -> None:
        located = localisation_stage(block.detector, block.x, block.pred, block.attributions,
                                     baseline=block.baseline, seed=block.config.seed, index=block.index,
                                     relevant=block.relevant, explained=block.explained)
        block.per_sample.update(located.per_sample)
        block.notes.update(located.skipped)
