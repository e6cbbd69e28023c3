"""Transformer blocks that hand back their attention weights.

Written out rather than taken from ``nn.MultiheadAttention`` so that the
weights are part of the ordinary forward: no hooks, no fast path to switch off,
and gradients flow through them for the attention attacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

# An edit of attention weights inside a forward: (weights, allowed) -> weights, with weights
# (batch, heads, queries, keys) and ``allowed`` a boolean tensor broadcastable to them that is True
# where a query may attend a key (masked keys are False).
AttentionEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EVERY_KEY = torch.ones((), dtype=torch.bool)  # the built-in blocks mask nothing


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # An intervention on the weights inside the forward (sanity checks zero one weight and renormalise, or
        # make them uniform): edit(weights, allowed) -> weights of the same (batch, heads, tokens, tokens)
        # shape, ``allowed`` saying which keys a query may attend (every key here). Set only through
        # edited_attention.
        self.attention_edit: AttentionEdit | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        if self.attention_edit is not None:
            weights = self.attention_edit(weights, EVERY_KEY.to(weights.device))
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out), weights


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

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attn(self.norm1(x))
        x = x + self.drop(attended)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, weights


class Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        attentions = []
        for block in self.blocks:
            x, weights = block(x)
            attentions.append(weights)
        return self.norm(x), attentions
