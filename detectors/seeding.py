"""Per-sample random streams.

Every random draw that concerns one sample (an attack's random start, the
``random`` explainer, gradient-shap's and infidelity's noise) comes from a
generator seeded by (run seed, purpose, the sample's global index), so results do not depend on batch size, on the
order samples are processed in, or on how they are sharded.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch


def stream_seed(seed: int, purpose: str, index: int) -> int:
    """A 63-bit seed for one (run seed, purpose, sample index)."""
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(purpose.encode()), int(index)])
    low, high = (int(w) for w in words.generate_state(2, dtype=np.uint32))
    return ((high << 32) | low) >> 1


def per_sample_uniform(shape: Sequence[int], indices: Sequence[int] | torch.Tensor, *, seed: int, purpose: str,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` for each sample, stacked: (len(indices), *shape)."""
    rows = []
    for index in (indices.tolist() if isinstance(indices, torch.Tensor) else indices):
        generator = torch.Generator().manual_seed(stream_seed(seed, purpose, int(index)))
        rows.append(torch.rand(tuple(shape), generator=generator))
    if not rows:
        return torch.empty((0, *shape), device=device)
    return torch.stack(rows).to(device)


def per_sample_normal(shape: Sequence[int], indices: Sequence[int] | torch.Tensor, *, seed: int, purpose: str,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal draws of ``shape`` for each sample, stacked: the inverse normal CDF of the sample's own
    :func:`per_sample_uniform` draws (float64 while transformed), so one generator serves both."""
    uniform = per_sample_uniform(shape, indices, seed=seed, purpose=purpose, device=device).double()
    tiny = torch.finfo(torch.float64).tiny
    return torch.special.ndtri(uniform.clamp(tiny, 1 - 1e-16)).float()
