"""Agreement between attention explainers and reference attributions (Jain & Wallace 2019).

``agreement.kendall_tau.ATTN~REF`` and ``agreement.topk_overlap.ATTN~REF`` for
ATTN in (attention, rollout, grad-attention) and REF in (integrated-gradients,
feature-ablation), each pair that ran.

Both compare rankings of TOKENS, not of inputs: each attribution is first
summed over the inputs a token covers, in absolute value (|a| because a
reference's sign says which way a feature pushes, attention's weight only how
much it is looked at; a sum because an attention explainer is constant over a
token's inputs, so its token score is that constant times the token's size and
its ranking is unchanged whenever tokens are equally large, as they are for
every built-in detector). The CLS token covers no input and is left out.

Kendall's τ-b per sample, τ_b = Σ_{i<j} s_a(i,j)·s_b(i,j) / sqrt(Σ s_a² · Σ s_b²) with
s(i,j) = sign(score_i − score_j), NaN (not counted) when either side ranks every
token equal; top-k overlap = |top_k(a) ∩ top_k(b)| / k with k = min(5, tokens),
ties broken by token index. Batched over samples: no per-sample loop.

The noise floor (Neely et al. 2022, "A Song of (Dis)agreement"): two reference explainers disagree with
each other too, so attention's agreement is read against theirs on the same samples.
``agreement.kendall_tau.integrated-gradients~feature-ablation`` is the references' τ-b with each other;
``agreement.kendall_tau_vs_floor.ATTN`` is, per sample, the mean of τ_b(ATTN, REF) over both references
minus that floor (NaN where any of the three τ is), so its paired bootstrap interval says whether
attention agrees with the references clearly less (upper end below 0) than they agree with each other.
Both need both references to have run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.catalogue.specs import AGREEMENT_SPECS as SPECS
from auditor.metrics import AGREEMENT_REFERENCES
from auditor.stages.base import Block, Stage
from detectors.base import TokenMap

ATTENTION_EXPLAINERS = ("attention", "rollout", "grad-attention")
REFERENCE_EXPLAINERS = AGREEMENT_REFERENCES
NOISE_FLOOR = f"agreement.kendall_tau.{REFERENCE_EXPLAINERS[0]}~{REFERENCE_EXPLAINERS[1]}"
TOP_K = 5


def token_scores(attribution: torch.Tensor, token_map: TokenMap) -> np.ndarray:
    """(n, tokens that cover inputs): Σ |attribution| over each token's inputs, as float64."""
    flat = attribution.detach().flatten(1).abs().double().cpu()
    owner = token_map.token_of_input.reshape(-1).long().cpu()
    scores = torch.zeros(len(flat), token_map.n_tokens, dtype=torch.float64).index_add_(1, owner, flat)
    covered = torch.bincount(owner, minlength=token_map.n_tokens) > 0
    return scores[:, covered].numpy()


def kendall_tau_b(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Kendall's τ-b of each row of ``a`` (n, t) with the same row of ``b``; NaN where a row is constant.
    ``keep`` (n, t): only pairs of kept tokens count (text: the message's tokens, not [CLS] or padding)."""
    upper = np.triu_indices(a.shape[1], k=1)
    sign_a = np.sign(a[:, :, None] - a[:, None, :])[:, upper[0], upper[1]]
    sign_b = np.sign(b[:, :, None] - b[:, None, :])[:, upper[0], upper[1]]
    if keep is not None:
        pairs = (keep[:, :, None] & keep[:, None, :])[:, upper[0], upper[1]]
        sign_a, sign_b = sign_a * pairs, sign_b * pairs
    denominator = np.sqrt((sign_a ** 2).sum(1) * (sign_b ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (sign_a * sign_b).sum(1) / denominator, np.nan)


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean (n, t): each row's k highest scores, ties broken by the lower index."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Share of ``a``'s top-k tokens that are also in ``b``'s top-k, per row; with ``keep`` (n, t) among the kept
    tokens only, k = min(k, kept tokens) per row (NaN where none is kept)."""
    if keep is None:
        return (top_k_mask(a, k) & top_k_mask(b, k)).sum(1).astype(np.float64) / k
    ks = np.minimum(k, keep.sum(1))
    a, b = np.where(keep, a, -np.inf), np.where(keep, b, -np.inf)
    ranks_a = np.argsort(np.argsort(-a, axis=1, kind="stable"), axis=1, kind="stable")
    ranks_b = np.argsort(np.argsort(-b, axis=1, kind="stable"), axis=1, kind="stable")
    shared = ((ranks_a < ks[:, None]) & (ranks_b < ks[:, None])).sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ks > 0, shared / np.maximum(ks, 1), np.nan)


@dataclass
class AgreementOutcome:
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)


def agreement_stage(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                    attributions: dict[str, torch.Tensor], *, baseline: torch.Tensor, seed: int,
                    index: torch.Tensor, explained: torch.Tensor | None = None) -> AgreementOutcome:
    """Kendall τ-b and top-k overlap of every attention explainer with every reference that ran.
    Deterministic and per sample (``baseline``, ``seed`` and ``index`` are not needed by it). ``explained``
    (text: each message's tokens, one token per position) restricts both to those tokens."""
    outcome = AgreementOutcome()
    token_map = model.token_map
    keep = None if explained is None else explained.flatten(1).cpu().numpy()
    scores = {name: token_scores(attributions[name], token_map)
              for name in (*ATTENTION_EXPLAINERS, *REFERENCE_EXPLAINERS) if name in attributions}
    for attention in ATTENTION_EXPLAINERS:
        for reference in REFERENCE_EXPLAINERS:
            if attention not in scores or reference not in scores:
                continue
            a, b = scores[attention], scores[reference]
            k = min(TOP_K, a.shape[1])
            outcome.per_sample[f"agreement.kendall_tau.{attention}~{reference}"] = kendall_tau_b(a, b, keep)
            outcome.per_sample[f"agreement.topk_overlap.{attention}~{reference}"] = topk_overlap(a, b, k, keep)
    if all(reference in scores for reference in REFERENCE_EXPLAINERS):
        floor = kendall_tau_b(*(scores[reference] for reference in REFERENCE_EXPLAINERS), keep)
        outcome.per_sample[NOISE_FLOOR] = floor
        for attention in ATTENTION_EXPLAINERS:
            if attention in scores:
                taus = [outcome.per_sample[f"agreement.kendall_tau.{attention}~{reference}"]
                        for reference in REFERENCE_EXPLAINERS]
                outcome.per_sample[f"agreement.kendall_tau_vs_floor.{attention}"] = np.mean(taus, axis=0) - floor
    return outcome


def planned_agreement(explainers: tuple[str, ...] | list[str]) -> list[str]:
    """The agreement metric names a run with these explainers computes."""
    names = [f"agreement.{metric}.{attention}~{reference}"
             for attention in ATTENTION_EXPLAINERS if attention in explainers
             for reference in REFERENCE_EXPLAINERS if reference in explainers
             for metric in ("kendall_tau", "topk_overlap")]
    if all(reference in explainers for reference in REFERENCE_EXPLAINERS):
        names.append(NOISE_FLOOR)
        names += [f"agreement.kendall_tau_vs_floor.{attention}" for attention in ATTENTION_EXPLAINERS
                  if attention in explainers]
    return names


class AgreementStage(Stage):
    name = "agreement"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return planned_agreement(config.explainers)

    def run(self, block: Block) -> None:
        agreed = agreement_stage(block.detector, block.x, block.pred, block.attributions, baseline=block.baseline,
                                 seed=block.config.seed, index=block.index, explained=block.explained)
        block.per_sample.update(agreed.per_sample)
