"""The Detector contract every stage of the audit relies on.

A detector is an ``nn.Module`` whose ``forward(x)`` returns logits (what
torchattacks and captum call) and whose ``forward_with_attention(x)`` returns
``(logits, [A_1, ..., A_L])`` with each ``A_l`` of shape
``(batch, heads, tokens, tokens)``. Its :class:`TokenMap` says which input
positions each token covers, which turns attention over tokens into an
attribution over inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenMap:
    """Which token covers each input position.

    ``token_of_input`` has the shape of one input (without the batch axis);
    entry ``p`` is the index of the token that covers input position ``p``.
    ``cls_index`` is the CLS token's index, or ``None`` for mean-pooled models.
    """

    token_of_input: torch.Tensor
    n_tokens: int
    cls_index: int | None

    def to_input(self, token_scores: torch.Tensor) -> torch.Tensor:
        """Spread per-token scores ``(batch, n_tokens)`` over the input's shape.

        Every input position receives the score of the token that covers it, so
        a ranking of inputs follows the ranking of tokens.
        """
        if token_scores.ndim != 2 or token_scores.shape[1] != self.n_tokens:
            raise ValueError(
                f"expected token scores of shape (batch, {self.n_tokens}), got {tuple(token_scores.shape)}"
            )
        index = self.token_of_input.to(token_scores.device).reshape(-1)
        spread = token_scores[:, index]
        return spread.reshape(token_scores.shape[0], *self.token_of_input.shape)


class Detector(nn.Module):
    """Base class: subclasses implement ``forward_with_attention`` and ``hparams``."""

    kind: str = ""
    input_shape: tuple[int, ...]
    n_classes: int
    token_map: TokenMap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.forward_with_attention(x)
        return logits

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def hparams(self) -> dict:
        """Constructor arguments, JSON-serialisable, enough to rebuild the module."""
        raise NotImplementedError
