"""How stable an attention explanation is under perturbation: metrics on two distributions.

Every function compares a clean attention distribution ``p`` with a perturbed
one ``q`` (both (batch, n), e.g. from :func:`attacks.attention.attention_distribution`)
and returns one value per sample, shape (batch,), so callers can aggregate,
bootstrap or gate as they like. All are pure and batched.

``topk_intersection(p, q, k=5)``
    Share of p's top-k entries still in q's top-k; k is capped at n, ties go to
    the lower index. Range [0, 1]; higher = more stable (1: same top-k set).
``spearman(p, q)``
    Spearman rank correlation of the two rows (average ranks for ties). Range
    [-1, 1]; higher = more stable (1: same ranking, -1: reversed). A row where
    either side is constant has no ranking to correlate; it gets 0.0 (never NaN)
    so that means over a batch stay defined.
``jsd(p, q)``
    Jensen-Shannon divergence in nats (:func:`detectors.maths.jensen_shannon`).
    Range [0, ln 2]; lower = more stable (0: identical distributions).
``prediction_kept(clean_pred, adv_pred)``
    1.0 where the predicted class is unchanged, else 0.0. Range {0, 1}; higher
    = the prediction is kept (what an explanation-only attacker wants).
"""

from __future__ import annotations

import math

import torch

from detectors.maths import descending_order, jensen_shannon, spearman as spearman_or_nan

__all__ = ["jsd", "prediction_kept", "spearman", "topk_intersection"]


def _pair(p: torch.Tensor, q: torch.Tensor) -> None:
    if p.ndim != 2 or p.shape != q.shape or p.shape[1] < 1:
        raise ValueError(f"expected two distributions of the same shape (batch, n >= 1), got {tuple(p.shape)} "
                         f"and {tuple(q.shape)}")


def topk_intersection(p: torch.Tensor, q: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(batch,) share of p's top-k entries that are among q's top-k (k capped at n)."""
    _pair(p, q)
    if int(k) != k or k < 1:
        raise ValueError(f"expected an integer k >= 1, got {k}")
    k = min(int(k), p.shape[1])
    top_p, top_q = descending_order(p)[:, :k], descending_order(q)[:, :k]
    in_q = torch.zeros(q.shape, dtype=torch.bool, device=q.device).scatter_(1, top_q, True)
    return in_q.gather(1, top_p).to(p.dtype if p.is_floating_point() else torch.float32).mean(dim=1)


def spearman(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(batch,) Spearman correlation per row (:func:`detectors.maths.spearman`); 0.0 for rows where either side
    is constant."""
    _pair(p, q)
    rho = spearman_or_nan(p, q).nan_to_num(0.0)
    return rho.to(p.dtype if p.is_floating_point() else torch.float32)


def jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(batch,) Jensen-Shannon divergence in nats, clamped to [0, ln 2] against rounding."""
    _pair(p, q)
    return jensen_shannon(p, q).clamp(0.0, math.log(2.0))


def prediction_kept(clean_pred: torch.Tensor, adv_pred: torch.Tensor) -> torch.Tensor:
    """(batch,) 1.0 where the adversarial prediction equals the clean one, else 0.0."""
    if clean_pred.ndim != 1 or clean_pred.shape != adv_pred.shape:
        raise ValueError(f"expected two predicted-class vectors of the same shape (batch,), got "
                         f"{tuple(clean_pred.shape)} and {tuple(adv_pred.shape)}")
    return (clean_pred == adv_pred).float()
