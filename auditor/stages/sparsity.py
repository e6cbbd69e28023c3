"""How sparse a detector's attention is: the share of exact zeros and the entropy of its CLS rows.

``attention.zero_share`` — per sample, over every head of the LAST layer, the share of the CLS query
row's weights (over every key token, CLS included: the whole normalised distribution) that are exactly
0.0, averaged over heads. Softmax and additive attention give 0 (a softmax weight is exactly 0 only on
float underflow); sparsemax and 1.5-entmax (Martins & Astudillo 2016, Peters et al. 2019) give the
share of tokens outside their support. Outside the support the gradient is exactly 0 too: attributions
that multiply attention by its gradient are 0 there, and attention attacks get no gradient through
those tokens.

``attention.entropy`` — per sample, the Shannon entropy -sum p ln p (nats, 0 ln 0 = 0) of the same
rows, averaged over heads: 0 when a head puts all its weight on one token, ln(tokens) when uniform.

A model without a CLS token (``token_map.cls_index`` None) uses every query row of the last layer
instead of the CLS row. Both are informational: neither is better in itself (Meister et al. 2021:
sparsity does not make attention more faithful); the report shows them beside faithfulness.

On text the keys are the message's real tokens: padding, masked out of every attention (a weight of 0 by
construction, not by sparsity), is left out of the zero share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.stages.explainers import evaluating
from auditor.catalogue.specs import SPARSITY_SPECS as SPECS, SPARSITY_METRICS
from auditor.stages.base import Block, Stage
from detectors.base import Detector
from detectors.inputs.text import is_token_ids


@dataclass
class SparsityOutcome:
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)


def row_sparsity(weights: torch.Tensor, cls_index: int | None,
                 keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, heads, tokens, tokens) attention of one layer -> per sample (zero share, entropy in nats);
    ``keys`` (batch, tokens): the key tokens the zero share counts (text: not the padding), default all."""
    rows = weights[:, :, cls_index, :] if cls_index is not None else weights
    rows = rows.double().reshape(len(weights), -1, weights.shape[-1])  # (batch, rows, tokens)
    if keys is None:
        zero_share = (rows == 0).double().mean(dim=-1).mean(dim=-1)
    else:
        kept = keys[:, None, :].to(rows.device)
        zero_share = ((rows == 0) & kept).double().sum(dim=-1).mean(dim=-1) / kept.sum(dim=-1)[:, 0].double()
    plogp = torch.where(rows > 0, rows * rows.clamp_min(torch.finfo(torch.float64).tiny).log(), 0.0)
    entropy = (-plogp.sum(dim=-1)).mean(dim=-1)
    return zero_share, entropy


@torch.no_grad()
def sparsity_stage(detector: Detector, x: torch.Tensor, *, max_batch: int = 4096) -> SparsityOutcome:
    """Per-sample ``attention.zero_share`` and ``attention.entropy`` of the last layer (see the module)."""
    zero_parts, entropy_parts = [], []
    with evaluating(detector):
        for start in range(0, len(x), max_batch):
            rows = x[start:start + max_batch]
            _, attentions = detector.forward_with_attention(rows)
            keys = detector.attention_mask(rows) if is_token_ids(rows) else None
            zero_share, entropy = row_sparsity(attentions[-1], detector.token_map.cls_index, keys)
            zero_parts.append(zero_share.cpu().numpy())
            entropy_parts.append(entropy.cpu().numpy())
    if not zero_parts:
        return SparsityOutcome({name: np.empty(0) for name in SPARSITY_METRICS})
    return SparsityOutcome({"attention.zero_share": np.concatenate(zero_parts),
                            "attention.entropy": np.concatenate(entropy_parts)})


class SparsityStage(Stage):
    name = "sparsity"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return list(SPARSITY_METRICS)

    def run(self, block: Block) -> None:
        block.per_sample.update(sparsity_stage(block.detector, block.x, max_batch=block.plan.forward_batch).per_sample)
