"""The faithfulness stage: the chosen metrics of every explainer over a block (:func:`faithfulness_stage`). The
metrics' declarations are in ``auditor.catalogue.specs``, the metrics themselves in
``auditor.stages.faithfulness_metrics``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.catalogue.specs import FAITHFULNESS_SPECS as SPECS
from auditor.stages.base import Block, Stage
from auditor.stages.faithfulness_metrics import (DIFF_LEAD, METRIC_NAMES, NOT_FOR_RANDOM, NOT_ON_TOKENS, REMOVAL_KINDS,
                                                 aopc, check_metric_names, deletion_gain, faithfulness_correlation,
                                                 infidelity_per_sample, max_sensitivity, random_deletion_auc,
                                                 removal_curves)


@dataclass
class FaithfulnessOutcome:
    """Per-sample metrics (name -> (n,), NaN where a sample does not count) and per-sample curves
    (name -> (n, points)) whose mean over samples the report plots, with their x-axis in ``fractions``."""
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    fractions: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def planned_names(metrics, explainers) -> list[str]:
    """The metric names ``faithfulness_stage`` writes for these metric keys and explainers."""
    names = [f"{METRIC_NAMES[metric]}.{explainer}" for explainer in explainers for metric in metrics
             if not (metric == "max_sensitivity" and explainer == "random")]
    if {"deletion", "deletion_gain"} & set(metrics) and DIFF_LEAD in explainers:
        names += [diff_name(other) for other in explainers if other != DIFF_LEAD]
    return names


def diff_name(other: str) -> str:
    return f"faithfulness.deletion_auc_diff.{DIFF_LEAD}~{other}"


def faithfulness_stage(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                       attributions: dict[str, torch.Tensor], *, baseline: torch.Tensor, seed: int,
                       index: torch.Tensor, metrics: tuple[str, ...] = ("deletion", "insertion"),
                       explainers: dict | None = None, max_batch: int = 16384,
                       explained: torch.Tensor | None = None) -> FaithfulnessOutcome:
    """The chosen faithfulness metrics of every explainer, per sample. ``index`` holds the samples'
    global indices: every random draw is keyed by them, so a shard computes exactly its rows of the whole.
    ``baseline`` is (*shape) or per sample (n, *shape). ``max_sensitivity`` re-runs the explainers, so
    it needs ``explainers`` (name -> explainer object, as from auditor.stages.explainers.make_explainer). ``explained``:
    (n, *shape) the positions that count (text: each message's tokens; the module docstring says how), where
    infidelity and max_sensitivity are skipped."""
    metrics = check_metric_names(metrics)
    outcome = FaithfulnessOutcome()
    deletion_aucs = {}
    random_auc = (random_deletion_auc(model, x, target, baseline, seed=seed, index=index, max_batch=max_batch,
                                      explained=explained)
                  if "deletion_gain" in metrics else None)
    for name, attribution in attributions.items():
        if {"deletion", "insertion", "deletion_gain"} & set(metrics):
            kinds = tuple(kind for kind in REMOVAL_KINDS
                          if kind in metrics or (kind == "deletion" and "deletion_gain" in metrics))
            curves = removal_curves(model, x, attribution, target, baseline, max_batch=max_batch, kinds=kinds,
                                    explained=explained)
            deletion_aucs[name] = curves.deletion_auc
            if "deletion" in metrics:
                outcome.per_sample[f"faithfulness.deletion_auc.{name}"] = curves.deletion_auc
            if "insertion" in metrics:
                outcome.per_sample[f"faithfulness.insertion_auc.{name}"] = curves.insertion_auc
            if random_auc is not None:
                outcome.per_sample[f"faithfulness.deletion_gain.{name}"] = deletion_gain(curves.deletion_auc,
                                                                                        random_auc)
            for kind in kinds:
                outcome.curves[f"{kind}.{name}"] = getattr(curves, kind)
                outcome.fractions[f"{kind}.{name}"] = curves.fractions.tolist()
        if {"comprehensiveness", "sufficiency"} & set(metrics):
            comprehensiveness, sufficiency = aopc(model, x, attribution, target, baseline, max_batch=max_batch,
                                                  explained=explained)
            if "comprehensiveness" in metrics:
                outcome.per_sample[f"faithfulness.comprehensiveness.{name}"] = comprehensiveness
            if "sufficiency" in metrics:
                outcome.per_sample[f"faithfulness.sufficiency.{name}"] = sufficiency
        if "correlation" in metrics:
            outcome.per_sample[f"faithfulness.correlation.{name}"] = faithfulness_correlation(
                model, x, attribution, target, baseline, seed=seed, index=index, max_batch=max_batch,
                explained=explained)
        if "infidelity" in metrics and explained is not None:
            outcome.skipped[f"faithfulness.infidelity.{name}"] = NOT_ON_TOKENS.format(metric="infidelity")
        elif "infidelity" in metrics:
            outcome.per_sample[f"faithfulness.infidelity.{name}"] = infidelity_per_sample(
                model, x, attribution, target, baseline, seed=seed, index=index, max_batch=max_batch)
        if "max_sensitivity" in metrics and explained is not None and name != "random":
            outcome.skipped[f"stability.max_sensitivity.{name}"] = NOT_ON_TOKENS.format(metric="max_sensitivity")
        elif "max_sensitivity" in metrics and name == "random":
            outcome.skipped["stability.max_sensitivity.random"] = NOT_FOR_RANDOM
        elif "max_sensitivity" in metrics:
            if explainers is None or name not in explainers:
                raise ValueError(f"max_sensitivity re-runs the explainer: pass explainers[{name!r}]")
            outcome.per_sample[f"stability.max_sensitivity.{name}"] = max_sensitivity(
                model, explainers[name], x, target, baseline, seed=seed, index=index, max_batch=max_batch)
    if DIFF_LEAD in deletion_aucs:
        for other, auc in deletion_aucs.items():
            if other != DIFF_LEAD:
                outcome.per_sample[diff_name(other)] = auc - deletion_aucs[DIFF_LEAD]
    return outcome


class FaithfulnessStage(Stage):
    """The configured faithfulness metrics of every explainer; the removal curves the report draws go into
    the ``curves`` (rows x points) and ``fractions`` (their x-axis, one row per block) row-table groups."""

    name = "faithfulness"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return planned_names(config.faithfulness_metrics, config.explainers)

    def run(self, block: Block) -> None:
        faithful = faithfulness_stage(block.detector, block.x, block.pred, block.attributions,
                                      baseline=block.baseline, seed=block.config.seed, index=block.index,
                                      metrics=block.config.faithfulness_metrics, explainers=block.explainers,
                                      max_batch=block.plan.forward_batch, explained=block.explained)
        block.per_sample.update(faithful.per_sample)
        block.notes.update(faithful.skipped)
        block.table["curves"] = {name: curve.astype(np.float32) for name, curve in faithful.curves.items()}
        block.table["fractions"] = {name: np.asarray(values)[None, :] for name, values in faithful.fractions.items()}
