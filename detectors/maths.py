"""The maths every layer shares: the attention distribution, Jensen-Shannon divergence, rankings and rank
correlation. Pure torch functions over batches (one row per sample), so that an attack, a defense and a
metric that speak of "the attention" or "the ranking" compute the same thing.

``attention_distribution_of(attentions, token_map)``
    The attention distribution ``a(x)``: the CLS row of the LAST layer's attention, mean over heads, CLS
    column dropped, renormalised: one probability per non-CLS token. For mean-pooled models
    (``cls_index is None``) the mean over all query rows of the last layer, over all tokens. The audit
    measures it (attention attacks, stability metrics) and the attention-consistency defense trains on it:
    the last layer is the one the prediction reads, and what the audit measures is what the defense protects.
``jensen_shannon(p, q)``
    Per-row JSD in nats, bounded by ln 2.
``descending_order(scores)`` / ``descending_ranks(scores)``
    Entries from the largest to the smallest, ties broken by the lower index; the rank of each entry in that
    order (0 = largest).
``average_ranks(x)`` / ``spearman(a, b)``
    Ranks 1..n with ties sharing the mean of their ranks (scipy's ``rankdata`` "average"), and Spearman's
    rank correlation of each row pair on them: NaN where either row is constant (no ranking to correlate);
    callers decide what such a row means.

Per-sample random streams live in :mod:`detectors.seeding`.
"""

from __future__ import annotations

import torch

from detectors.base import TokenMap

__all__ = ["attention_distribution_of", "average_ranks", "descending_order", "descending_ranks", "jensen_shannon",
           "spearman", "token_positions_from"]


def token_positions_from(token_map: TokenMap) -> torch.Tensor:
    """Token index of each distribution entry, from the TokenMap alone (CLS left out when there is one)."""
    tokens = torch.arange(token_map.n_tokens)
    return tokens if token_map.cls_index is None else tokens[tokens != token_map.cls_index]


def attention_distribution_of(attentions: list[torch.Tensor], token_map: TokenMap) -> torch.Tensor:
    """The last layer's attention as one distribution per sample over the non-CLS tokens (see the module)."""
    if not attentions:
        raise ValueError("expected at least one attention map from forward_with_attention, got none")
    last = attentions[-1]
    n = token_map.n_tokens
    if last.ndim != 4 or last.shape[-2:] != (n, n):
        raise ValueError(f"expected the last attention of shape (batch, heads, {n}, {n}), got {tuple(last.shape)}")
    heads_mean = last.mean(dim=1)
    if token_map.cls_index is None:
        rows = heads_mean.mean(dim=1)
    else:
        rows = heads_mean[:, token_map.cls_index]
        keep = token_positions_from(token_map).to(rows.device)
        rows = rows[:, keep]
    return rows / rows.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row JSD in nats (bounded by ln 2)."""
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(-1)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Entries of each row from the largest score to the smallest, ties broken by the lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def descending_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry in :func:`descending_order` (0 = largest)."""
    order = descending_order(scores)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n per row, tied entries sharing the mean of their ranks (float64): with ``left`` entries below
    a value and ``right`` at or below it, its rank is (left + right + 1) / 2."""
    ordered = torch.sort(x, dim=1).values.contiguous()
    values = x.contiguous()
    left = torch.searchsorted(ordered, values, side="left")
    right = torch.searchsorted(ordered, values, side="right")
    return (left + right + 1).double() / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(batch,) float64 Spearman correlation of each row of ``a`` with the same row of ``b`` (both (batch, n)),
    on average ranks; NaN where either row is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    scale = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    rho = (ra * rb).sum(1) / scale
    return torch.where(scale > 0, rho.clamp(-1.0, 1.0), torch.full_like(rho, torch.nan))
