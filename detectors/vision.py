"""A small Vision Transformer for images in [0, 1].

Patch embedding (a strided convolution), a CLS token, learned position
embeddings, pre-norm blocks, a linear head on CLS. Token 0 is CLS; token
1 + k covers patch k in row-major order. ``attention`` picks the attention
function (softmax, sparsemax, entmax15, additive; see :mod:`detectors.blocks`).
"""

from __future__ import annotations

import torch
from torch import nn

from detectors.base import Detector, TokenMap
from detectors.blocks import Encoder, check_attention


def patch_token_map(channels: int, height: int, width: int, patch: int) -> TokenMap:
    rows = torch.arange(height)[:, None] // patch
    cols = torch.arange(width)[None, :] // patch
    per_pixel = rows * (width // patch) + cols + 1
    n_patches = (height // patch) * (width // patch)
    return TokenMap(token_of_input=per_pixel.expand(channels, height, width).clone(), n_tokens=n_patches + 1,
                    cls_index=0)


class VisionTransformer(Detector):
    kind = "vit"

    def __init__(self, channels: int, height: int, width: int, n_classes: int, *, patch: int = 2, dim: int = 32,
                 depth: int = 2, heads: int = 4, mlp_dim: int = 64, dropout: float = 0.1,
                 attention: str = "softmax") -> None:
        super().__init__()
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {patch}")
        self._hparams = dict(channels=channels, height=height, width=width, n_classes=n_classes, patch=patch,
                             dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                             attention=check_attention(attention))
        self.input_shape = (channels, height, width)
        self.n_classes = n_classes
        n_patches = (height // patch) * (width // patch)
        self.embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.encoder = Encoder(dim, depth, heads, mlp_dim, dropout, attention)
        self.head = nn.Linear(dim, n_classes)
        self.token_map = patch_token_map(channels, height, width, patch)

    def hparams(self) -> dict:
        return dict(self._hparams)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        patches = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], dim=1) + self.position
        encoded, attentions = self.encoder(tokens)
        return self.head(encoded[:, 0]), attentions
