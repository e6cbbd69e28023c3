"""A transformer encoder over event sequences (N, T, F): one token per time step.

Each step's F features are embedded linearly, learned position embeddings are
added, a CLS token is prepended and a linear head reads it. Token 0 is CLS;
token t + 1 covers every feature of step t. ``attention`` picks the attention
function (softmax, sparsemax, entmax15, additive; see :mod:`detectors.blocks`).
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.base import Detector, TokenMap
from detectors.blocks import Encoder, check_attention


class SequenceTransformer(Detector):
    kind = "sequence"

    def __init__(self, steps: int, n_features: int, n_classes: int, *, dim: int = 32, depth: int = 2,
                 heads: int = 4, mlp_dim: int = 64, dropout: float = 0.1,
                 attention: str = "softmax") -> None:
        super().__init__()
        self._hparams = dict(steps=steps, n_features=n_features, n_classes=n_classes, dim=dim, depth=depth,
                             heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                             attention=check_attention(attention))
        self.input_shape = (steps, n_features)
        self.n_classes = n_classes
        self.embed = nn.Linear(n_features, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, steps + 1, dim) * 0.02)
        self.encoder = Encoder(dim, depth, heads, mlp_dim, dropout, attention)
        self.head = nn.Linear(dim, n_classes)
        per_position = (torch.arange(steps)[:, None] + 1).expand(steps, n_features).clone()
        self.token_map = TokenMap(token_of_input=per_position, n_tokens=steps + 1, cls_index=0)

    def hparams(self) -> dict:
        return dict(self._hparams)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], dim=1) + self.position
        encoded, attentions = self.encoder(tokens)
        return self.head(encoded[:, 0]), attentions
