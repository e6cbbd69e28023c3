"""A CLS transformer over token embeddings for text (N, T) of token ids.

Token ids are embedded (a learned table of ``vocab_size`` rows, initialised N(0, 1)), position embeddings
are added (learned, initialised to the sinusoids of Vaswani et al. 2017, entries of the tokens' scale) and
the pre-norm encoder of :mod:`detectors.blocks` follows, each layer's attention scores plus a learned
relative position bias per head for the offset from query to key (a scalar per offset as in Raffel et al.
2020, offsets clipped to +-:data:`RELATIVE_REACH` as in Shaw et al. 2018; none on the [CLS] row and column).
A message's label may hang on which words stand next to which (``never verify your pin`` against ``please
verify your pin``): the bias lets a head attend to "the word two to the left" wherever the phrase stands,
which absolute positions learned from a few thousand messages do not. A linear head reads position 0, which
holds the ``[CLS]`` token the tokeniser prepends (:mod:`detectors.text_data`). Padding (``pad_id``) is masked
out of every attention: it receives a weight of exactly 0 from every query, so it cannot move the logits,
and a batch runs on its columns up to its longest message only (:func:`detectors.inputs.text.message_width`).
``attention`` picks the attention function (softmax, sparsemax, entmax15, additive).

Entry points (what the attacks and explainers call):

``forward(ids)`` / ``forward_with_attention(ids)``
    the Detector contract; the attention mask is ``ids != pad_id``.
``embed(ids)``
    the token embeddings (N, T, dim) before positions are added: the space embedding-space attacks and
    gradient explainers work in, and the rows a substitution attack's first-order estimate compares.
``forward_embeddings(embeddings, attention_mask, *, with_attention=False)``
    logits (and the attention list) from given token embeddings, so gradients reach them.
``embedding``
    the ``nn.Embedding`` layer itself (captum's LayerIntegratedGradients hooks it).

Each position is its own token: the :class:`TokenMap` maps position p to token p, CLS is token 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detectors.base import Detector, TokenMap
from detectors.blocks import Encoder, check_attention
from detectors.inputs.text import message_width, padded_attentions


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sinusoidal position encodings (Vaswani et al. 2017): sin on even, cos on odd dimensions,
    wavelengths from 2 pi to 10000 * 2 pi."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


RELATIVE_REACH = 8  # tokens: offsets beyond share one bias


class TextTransformer(Detector):
    kind = "text"
    # its word-level tokeniser wraps a message in [CLS] (position 0) and padding (the attention mask) alone
    frame_ids: tuple[int, ...] = ()

    def __init__(self, vocab_size: int, max_length: int, n_classes: int, *, pad_id: int = 0, dim: int = 32,
                 depth: int = 2, heads: int = 4, mlp_dim: int = 64, dropout: float = 0.1,
                 attention: str = "softmax") -> None:
        super().__init__()
        self._hparams = dict(vocab_size=vocab_size, max_length=max_length, n_classes=n_classes, pad_id=pad_id,
                             dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                             attention=check_attention(attention))
        self.input_shape = (max_length,)
        self.n_classes = n_classes
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, std=1.0)
        self.position = nn.Parameter(sinusoids(max_length, dim).unsqueeze(0))
        # relative position bias per layer and head, by the offset key - query clipped to +-RELATIVE_REACH
        self.relative = nn.Parameter(torch.zeros(depth, heads, 2 * RELATIVE_REACH + 1))
        self.encoder = Encoder(dim, depth, heads, mlp_dim, dropout, attention)
        self.head = nn.Linear(dim, n_classes)
        self.token_map = TokenMap(token_of_input=torch.arange(max_length), n_tokens=max_length, cls_index=0)

    def hparams(self) -> dict:
        return dict(self._hparams)

    def score_bias(self, tokens: int) -> torch.Tensor:
        """(depth, heads, tokens, tokens): the learned bias of each layer and head for the offset from query i
        to key j, j - i clipped to [-RELATIVE_REACH, RELATIVE_REACH]; 0 on the [CLS] row and column (CLS has no
        place in the message)."""
        position = torch.arange(tokens, device=self.relative.device)
        offset = (position[None, :] - position[:, None]).clamp(-RELATIVE_REACH, RELATIVE_REACH) + RELATIVE_REACH
        inside = ((position[:, None] > 0) & (position[None, :] > 0)).to(self.relative.dtype)
        return self.relative[:, :, offset] * inside

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True on every real token, False on padding: (N, T) bool."""
        return ids != self.pad_id

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids)
        return self.embedding(ids)

    def forward_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor, *,
                           with_attention: bool = False):
        """Logits from token embeddings (N, T, dim) and the mask (N, T); with ``with_attention`` also the list
        of attention weights (N, heads, T, T) per layer."""
        tokens, width = embeddings.shape[1], message_width(attention_mask)
        encoded, attentions = self.encoder(embeddings[:, :width] + self.position[:, :width],
                                           attention_mask[:, :width], self.score_bias(width))
        logits = self.head(encoded[:, 0])
        return (logits, padded_attentions(attentions, tokens)) if with_attention else logits

    def forward_with_attention(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        mask = self.attention_mask(ids) if attention_mask is None else attention_mask
        return self.forward_embeddings(self.embed(ids), mask, with_attention=True)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_attention(ids, attention_mask)[0]

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dtype not in (torch.int64, torch.int32) or ids.ndim != 2 or ids.shape[1] > self.input_shape[0]:
            raise ValueError(f"expected token ids of shape (N, <= {self.input_shape[0]}) and an integer dtype, "
                             f"got {tuple(ids.shape)} {ids.dtype}")
