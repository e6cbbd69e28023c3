"""Explainers by name: ``explain(detector, x, target, ...) -> attribution`` of x's shape.

Attention explainers and captum's gradient explainers share one interface, so
every faithfulness metric runs on all of them and attention is always judged
against gradient methods and against ``random``.

``attention``
    CLS row of the last layer's attention, mean over heads, mapped to inputs
    through the TokenMap (mean over query rows for models without CLS).
``rollout``
    Abnar & Zuidema 2020: per layer Ã = rownorm(mean_h A + I), R = Ã_L ... Ã_1,
    CLS row. Rows are normalised (``keepdim=True``): a known bug in a popular ViT
    implementation normalises columns instead.
``integrated-gradients``
    captum's IntegratedGradients from the removal baseline (the training mean),
    32 steps, Gauss-Legendre, in bounded internal batches.
``random``
    uniform draws from each sample's own stream: the floor every explainer must beat.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from captum.attr import IntegratedGradients

from detectors.base import Detector
from detectors.seeding import per_sample_uniform


class Explainer:
    name: ClassVar[str]
    family: ClassVar[str]
    reference: ClassVar[str] = ""

    def explain(self, detector: Detector, x: torch.Tensor, target: torch.Tensor, *, baseline: torch.Tensor,
                seed: int, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _token_scores_from_row(attention: torch.Tensor, cls_index: int | None) -> torch.Tensor:
    """(batch, tokens, tokens) -> the CLS query row, or the mean over query rows without CLS."""
    return attention[:, cls_index, :] if cls_index is not None else attention.mean(dim=1)


class RawAttention(Explainer):
    name = "attention"
    family = "attention"
    reference = "CLS attention of the last layer, mean over heads"

    @torch.no_grad()
    def explain(self, detector, x, target, *, baseline, seed, index):
        _, attentions = detector.forward_with_attention(x)
        mean_heads = attentions[-1].mean(dim=1)
        return detector.token_map.to_input(_token_scores_from_row(mean_heads, detector.token_map.cls_index))


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema 2020 attention rollout: (batch, tokens, tokens) from per-layer (b, h, t, t)."""
    result = None
    for layer in attentions:
        mixed = layer.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device, dtype=mixed.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    return result


class Rollout(Explainer):
    name = "rollout"
    family = "attention"
    reference = "Abnar & Zuidema 2020"

    @torch.no_grad()
    def explain(self, detector, x, target, *, baseline, seed, index):
        _, attentions = detector.forward_with_attention(x)
        return detector.token_map.to_input(_token_scores_from_row(rollout(attentions), detector.token_map.cls_index))


class IntegratedGradientsExplainer(Explainer):
    name = "integrated-gradients"
    family = "gradient"
    reference = "Sundararajan et al. 2017 (captum)"
    steps = 32

    def explain(self, detector, x, target, *, baseline, seed, index):
        method = IntegratedGradients(detector)
        with torch.enable_grad():
            attribution = method.attribute(
                x, baselines=baseline.expand_as(x), target=target, n_steps=self.steps,
                internal_batch_size=min(max(len(x), 1) * self.steps, 8192),
            )
        return attribution.detach()


class RandomExplainer(Explainer):
    name = "random"
    family = "baseline"
    reference = "uniform noise from per-sample streams"

    def explain(self, detector, x, target, *, baseline, seed, index):
        return per_sample_uniform(x.shape[1:], index, seed=seed, purpose="explainer/random", device=x.device)


EXPLAINERS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (RawAttention, Rollout, IntegratedGradientsExplainer, RandomExplainer)
}


def make_explainer(name: str) -> Explainer:
    try:
        return EXPLAINERS[name]()
    except KeyError:
        raise ValueError(f"unknown explainer {name!r}; registered: {', '.join(sorted(EXPLAINERS))}") from None
