"""Feature-token transformer for tabular and network-flow data.

Each of the F features becomes a token (its value times a learned per-feature
embedding plus a per-feature bias); a CLS token is prepended, L pre-norm
blocks of multi-head self-attention follow, and a linear head reads CLS.
Token 0 is CLS; token i + 1 covers feature i. ``attention`` picks the attention
function (softmax, sparsemax, entmax15, additive; see :mod:`detectors.blocks`).
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.base import Detector, TokenMap
from detectors.blocks import Encoder, check_attention


class FeatureTokenTransformer(Detector):
    kind = "tabular"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 64,
        dropout: float = 0.1,
        attention: str = "softmax",
    ) -> None:
        super().__init__()
        self._hparams = dict(
            n_features=n_features, n_classes=n_classes, dim=dim, depth=depth,
            heads=heads, mlp_dim=mlp_dim, dropout=dropout, attention=check_attention(attention),
        )
        self.input_shape = (n_features,)
        self.n_classes = n_classes
        self.feature_weight = nn.Parameter(torch.randn(n_features, dim) * 0.5)
        self.feature_bias = nn.Parameter(torch.randn(n_features, dim) * 0.1)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder(dim, depth, heads, mlp_dim, dropout, attention)
        self.head = nn.Linear(dim, n_classes)
        self.token_map = TokenMap(
            token_of_input=torch.arange(1, n_features + 1), n_tokens=n_features + 1, cls_index=0
        )

    def hparams(self) -> dict:
        return dict(self._hparams)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens = x.unsqueeze(-1) * self.feature_weight + self.feature_bias
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        encoded, attentions = self.encoder(tokens)
        return self.head(encoded[:, 0]), attentions
