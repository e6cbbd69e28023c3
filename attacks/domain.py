"""The input space an attacker moves in.

Inputs are scaled to [0, 1] per feature, so a budget ``eps`` is a fraction of
each feature's range. The Domain holds the bounds and which input positions an
attacker may change; :meth:`Domain.project` enforces the budget, the frozen
positions and the bounds, and every attack ends with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class Domain:
    lower: torch.Tensor
    upper: torch.Tensor
    mutable: torch.Tensor

    @classmethod
    def unit(cls, input_shape: tuple[int, ...], *, frozen: torch.Tensor | None = None) -> "Domain":
        """The [0, 1] box; ``frozen`` marks positions the attacker may not change."""
        mutable = torch.ones(input_shape, dtype=torch.bool) if frozen is None else ~frozen.bool()
        return cls(lower=torch.zeros(input_shape), upper=torch.ones(input_shape), mutable=mutable)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, *, eps: float, norm: str = "linf") -> torch.Tensor:
        """Nearest point (per sample) within ``eps`` of ``x`` in ``norm``, frozen positions kept, in bounds."""
        delta = (x_adv - x) * self.mutable.to(x.device)
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        elif norm == "l2":
            flat = delta.flatten(1)
            scale = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            delta = (flat * scale[:, None]).view_as(delta)
        else:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        return torch.maximum(torch.minimum(x + delta, self.upper.to(x.device)), self.lower.to(x.device)).detach()

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, *, eps: float, norm: str = "linf",
                 tol: float = 1e-6) -> bool:
        """Whether ``x_adv`` respects bounds, frozen positions and the budget."""
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
        frozen = (~self.mutable.to(x.device)).flatten()
        in_bounds = bool(((x_adv >= self.lower.to(x.device) - tol) & (x_adv <= self.upper.to(x.device) + tol)).all())
        return bool((size <= eps + tol).all()) and in_bounds and bool((delta[:, frozen] == 0).all())
