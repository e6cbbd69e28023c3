"""Transformer blocks that hand back their attention weights.

Written out rather than taken from ``nn.MultiheadAttention`` so that the
weights are part of the ordinary forward: no hooks, no fast path to switch off,
and gradients flow through them for the attention attacks.

The attention function is chosen at construction (``attention=``, one of
:data:`ATTENTION_VARIANTS`, default ``softmax``):

``softmax``
    scaled dot-product scores q·k / sqrt(d) normalised by softmax (Vaswani et al. 2017).
``sparsemax``
    the same scores normalised by sparsemax (Martins & Astudillo 2016, the ``entmax`` package).
``entmax15``
    the same scores normalised by 1.5-entmax (Peters et al. 2019, the ``entmax`` package).
``additive``
    additive scores v_h^T tanh(q_i + k_j) per head, normalised by softmax (Bahdanau et al. 2015): q and
    k are the block's own query and key projections (with their biases), so they are the W_q q and
    W_k k of the paper, and v_h is a learned vector per head. It holds a (batch, heads, tokens, tokens,
    head_dim) tensor: memory grows with the square of the tokens times the head width.

Sparsemax and 1.5-entmax give tokens outside their support a weight of exactly 0, and the gradient of
every weight with respect to such a token's score is exactly 0 as well. Consequences elsewhere: an
explainer that multiplies attention by its gradient (grad-attention) gives those weights 0; an attack that
follows the gradient of the attention gets no signal through them; and a vanishing gradient there is a
property of the attention function, not evidence of robustness (``auditor.stages.masking``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import entmax
import torch
from torch import nn

from detectors.kinds import ATTENTION_VARIANTS

# An edit of attention weights inside a forward: (weights, allowed) -> weights, with weights
# (batch, heads, queries, keys) and ``allowed`` a boolean tensor broadcastable to them that is True
# where a query may attend a key (masked keys are False).
AttentionEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EVERY_KEY = torch.ones((), dtype=torch.bool)  # no key mask given: every key may be attended
SPARSE_ATTENTION = ("sparsemax", "entmax15")
# The score of a masked key: far enough below any real score that softmax underflows to 0 and sparsemax /
# 1.5-entmax leave it outside their support, yet finite, so that 1.5-entmax's squared scores cannot overflow
# (the dtype's lowest value would make them inf - inf = nan).
MASKED_SCORE = -1e4


def check_attention(attention: str) -> str:
    """``attention`` if it names a variant of :data:`ATTENTION_VARIANTS`, else a ValueError naming them."""
    if attention not in ATTENTION_VARIANTS:
        raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_VARIANTS)}")
    return attention


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attention: str = "softmax") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model width {dim} is not divisible by {heads} heads")
        self.attention = check_attention(attention)
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if attention == "additive":  # created only here, so the other variants draw the same initial weights
            self.additive_v = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        # An intervention on the weights inside the forward (sanity checks zero one weight and renormalise, or
        # make them uniform): edit(weights, allowed) -> weights of the same (batch, heads, tokens, tokens)
        # shape, ``allowed`` saying which keys a query may attend (every key here). Set only through
        # edited_attention.
        self.attention_edit: AttentionEdit | None = None

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                score_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``key_mask`` (batch, tokens), True where a token may be attended (text: not padding); masked keys
        receive a weight of exactly 0 from every query and no gradient through their scores. ``score_bias``
        (heads, tokens, tokens) is added to the scores before normalisation (the text detector's relative
        position bias)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        allowed = EVERY_KEY.to(x.device) if key_mask is None else key_mask.bool()[:, None, None, :]
        weights = self._weights(q, k, None if key_mask is None else allowed, score_bias)
        if self.attention_edit is not None:
            weights = self.attention_edit(weights, allowed)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out), weights

    def _weights(self, q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor | None = None,
                 score_bias: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, heads, tokens, head_dim) queries and keys -> (batch, heads, tokens, tokens) weights; keys
        where ``allowed`` is False get the score :data:`MASKED_SCORE`, and their weight is set to exactly 0 after."""
        if self.attention == "additive":
            hidden = torch.tanh(q.unsqueeze(-2) + k.unsqueeze(-3))  # (batch, heads, query, key, head_dim)
            scores = torch.einsum("bhqkd,hd->bhqk", hidden, self.additive_v.to(hidden.dtype))
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if score_bias is not None:
            scores = scores + score_bias.to(scores.dtype)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, MASKED_SCORE)
        if self.attention in ("softmax", "additive"):
            weights = torch.softmax(scores, dim=-1)
        else:
            # float32 even under bf16 autocast: the support's threshold is found by sorting and cumulative sums
            sparse = entmax.sparsemax if self.attention == "sparsemax" else entmax.entmax15
            weights = sparse(scores.float(), dim=-1).to(scores.dtype)
        return weights if allowed is None else weights.masked_fill(~allowed, 0.0)


@contextmanager
def edited_attention(module: SelfAttention, edit: AttentionEdit) -> Iterator[None]:
    """Run ``module`` with ``edit`` applied to its attention weights inside the forward; always removed."""
    if module.attention_edit is not None:
        raise RuntimeError("this attention module is already being edited")
    module.attention_edit = edit
    try:
        yield
    finally:
        module.attention_edit = None


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, attention: str = "softmax") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                score_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attn(self.norm1(x), key_mask, score_bias)
        x = x + self.drop(attended)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, weights


class Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float,
                 attention: str = "softmax") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, dropout, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                score_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``score_bias``: None, or (depth, heads, tokens, tokens), one bias per block (:meth:`SelfAttention.forward`)."""
        attentions = []
        for index, block in enumerate(self.blocks):
            x, weights = block(x, key_mask, None if score_bias is None else score_bias[index])
            attentions.append(weights)
        return self.norm(x), attentions
