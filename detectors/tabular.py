"""Feature-token transformer for tabular and network-flow data.

Each of the F features becomes a token (its value times a learned per-feature
embedding plus a per-feature bias); a CLS token is prepended, L pre-norm
blocks of multi-head self-attention follow, and a linear head reads CLS.
Token 0 is CLS; token i + 1 covers feature i. ``attention`` picks the attention
function (softmax, sparsemax, entmax15, additive; see :mod:`detectors.blocks`).

``categories`` (per feature, its number of categories; 0 for a numeric one) makes
a feature categorical (FT-Transformer, Gorishniy et al. 2021): its token is a
learned embedding of its category (one row per category plus one for the
unknown category) plus the feature's own bias. The category is the slot its
scaled code lies in (:mod:`detectors.categorical`), so the forward value is
exactly the embedding; the gradient with respect to the code is the central
difference of the neighbouring categories' embeddings (a straight-through
estimate), which gradient explainers read and no attack follows: the Domain
freezes categorical columns for every continuous attack.
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
        categories: list[int] | None = None,
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
        self.categorical = None
        if categories is not None and any(categories):
            if len(categories) != n_features or min(categories) < 0:
                raise ValueError(f"expected {n_features} category counts >= 0, got {categories}")
            # recorded only for a categorical model, so a numeric one's hparams and weights stay as they were
            self._hparams["categories"] = [int(count) for count in categories]
            columns = [i for i, count in enumerate(categories) if count]
            slots = torch.tensor([categories[i] + 1 for i in columns])
            self.register_buffer("category_columns", torch.tensor(columns), persistent=False)
            self.register_buffer("category_slots", slots, persistent=False)
            self.register_buffer("category_offsets", torch.cumsum(slots, 0) - slots, persistent=False)
            # counted in Python, not read from `slots`: the checkpoint check builds this on the meta device
            self.category_embedding = nn.Embedding(sum(categories[i] + 1 for i in columns), dim)
            self.categorical = True

    def hparams(self) -> dict:
        return dict(self._hparams)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens = x.unsqueeze(-1) * self.feature_weight + self.feature_bias
        if self.categorical:
            tokens = self._with_category_tokens(x, tokens)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        encoded, attentions = self.encoder(tokens)
        return self.head(encoded[:, 0]), attentions

    def category_slots_of(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) slot of each categorical column (0: unknown, i + 1: category i), columns in feature order."""
        slots = self.category_slots
        return torch.minimum((x[:, self.category_columns].detach() * slots).floor().clamp_min(0), slots - 1).long()

    def category_vectors(self) -> list[torch.Tensor]:
        """Per categorical column, its (slots, dim) embedding rows, the unknown category's first."""
        return [self.category_embedding.weight[offset:offset + slots]
                for offset, slots in zip(self.category_offsets.tolist(), self.category_slots.tolist())]

    def _with_category_tokens(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        position = x[:, self.category_columns] * self.category_slots
        slot = self.category_slots_of(x)
        top = self.category_slots - 1
        embed = self.category_embedding
        # the category's own row is looked up first: pgd-categorical's hook reads the token's gradient from it
        looked_up = embed(self.category_offsets + slot)
        below = embed(self.category_offsets + (slot - 1).clamp(min=0))
        above = embed(self.category_offsets + torch.minimum(slot + 1, top))
        straight_through = (position - position.detach()).unsqueeze(-1) * (above - below) / 2
        categorical = looked_up + straight_through + self.feature_bias[self.category_columns]
        tokens = tokens.clone()
        tokens[:, self.category_columns] = categorical.to(tokens.dtype)
        return tokens
