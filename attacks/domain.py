"""The input space an attacker moves in.

Inputs are scaled to [0, 1] per feature, so a budget ``eps`` is a fraction of
each feature's range. The Domain holds the bounds and which input positions an
attacker may change; :meth:`Domain.project` enforces the budget, the frozen
positions and the bounds, and every attack ends with it.

Integer features (a packet count, a port bucket) take whole raw values only.
An iterative attack keeps a *continuous* iterate (``project(..., integral=False)``:
budget, box and frozen positions, no rounding), so steps smaller than one raw
unit accumulate; it makes the integer features whole (:meth:`Domain.whole`)
wherever it evaluates the model (its gradient, its loss, its "fooled" and
"prediction kept" tests) and at the end. The rounding: each integer feature
goes to the whole raw unit *nearest* the continuous iterate (so the objective
the iterate climbed is served); where that unit breaks the budget (L-inf: that
feature's |delta| > eps; L2: the row's norm > eps) or the box, it goes to the
other neighbour, the whole unit between the clean value and the iterate, which
is always within both. Budgets are checked with a tolerance of 1e-6 scaled
units (float32 rounding of raw units).

Categorical columns (``categories``, :class:`attacks.categorical.CategoryRule`) are outside ``mutable`` and
outside every budget: :meth:`Domain.project` keeps them clean unless the rule lets a discrete search change
them to other known categories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.categorical import CategoryRule

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class Domain:
    """Bounds, mutable positions and integer features of the scaled input space.

    ``integer`` marks positions whose raw value is an integer (a packet count, a
    port bucket); ``raw_lo``/``raw_span`` map scaled values back to raw units
    (raw = raw_lo + x * raw_span) so that they can be rounded there.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    mutable: torch.Tensor
    integer: torch.Tensor | None = None
    raw_lo: torch.Tensor | None = None
    raw_span: torch.Tensor | None = None
    categories: CategoryRule | None = None

    @classmethod
    def unit(cls, input_shape: tuple[int, ...], *, frozen: torch.Tensor | None = None,
             integer: torch.Tensor | None = None, raw_lo=None, raw_span=None,
             categories: CategoryRule | None = None) -> "Domain":
        """The [0, 1] box; ``frozen`` marks positions the attacker may not change; categorical columns
        (``categories``) are never moved by a continuous step."""
        mutable = torch.ones(input_shape, dtype=torch.bool) if frozen is None else ~frozen.bool()
        if categories is not None:
            mutable = mutable.clone()
            mutable.view(-1)[list(categories.columns)] = False
        if integer is not None and not integer.any():
            integer = None
        if integer is not None:
            raw_lo = torch.as_tensor(raw_lo, dtype=torch.float64).reshape(input_shape)
            raw_span = torch.as_tensor(raw_span, dtype=torch.float64).reshape(input_shape)
        return cls(lower=torch.zeros(input_shape), upper=torch.ones(input_shape), mutable=mutable,
                   integer=integer.bool() if integer is not None else None, raw_lo=raw_lo, raw_span=raw_span,
                   categories=categories)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, *, eps: float, norm: str = "linf",
                integral: bool = True) -> torch.Tensor:
        """Nearest point (per sample) within ``eps`` of ``x`` in ``norm``, frozen positions kept, in bounds;
        integer features made whole (:meth:`whole`) unless ``integral`` is False (an attack's continuous
        iterate)."""
        delta = (x_adv - x) * self.mutable.to(x.device)
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        elif norm == "l2":
            flat = delta.flatten(1)
            scale = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            delta = (flat * scale[:, None]).view_as(delta)
        else:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        projected = torch.maximum(torch.minimum(x + delta, self.upper.to(x.device)), self.lower.to(x.device))
        if integral:
            projected = self.whole(projected, x, eps=eps, norm=norm)
        if self.categories is not None:
            projected = self.categories.project(projected, x_adv.detach(), x)
        return projected.detach()

    def whole(self, x_adv: torch.Tensor, x: torch.Tensor, *, eps: float, norm: str = "linf") -> torch.Tensor:
        """``x_adv`` (within the budget and box) with its integer features at whole raw units: the nearest
        unit, or where that breaks the budget or the box, the unit between the clean value and ``x_adv``."""
        if self.integer is None:
            return x_adv.detach()
        device, tol = x.device, 1e-6
        integer, lo, span = self.integer.to(device), self.raw_lo.to(device), self.raw_span.to(device)
        raw, clean_raw = lo + x_adv.detach().double() * span, torch.round(lo + x.double() * span)
        nearest = ((torch.round(raw) - lo) / span).to(x.dtype)
        toward = ((clean_raw + torch.trunc(raw - clean_raw) - lo) / span).to(x.dtype)
        candidate = torch.where(integer, nearest, x_adv.detach())
        bad = (candidate < self.lower.to(device) - tol) | (candidate > self.upper.to(device) + tol)
        if norm == "linf":
            bad |= (candidate - x).abs() > eps + tol
        candidate = torch.where(integer & bad, toward, candidate)
        if norm == "l2":
            over = (candidate - x).flatten(1).norm(dim=1) > eps + tol
            candidate = torch.where(integer & over.view(-1, *[1] * (x.ndim - 1)), toward, candidate)
        return candidate

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, *, eps: float, norm: str = "linf",
                 tol: float = 1e-6) -> bool:
        """Whether ``x_adv`` respects bounds, frozen positions, the budget and the categorical rule."""
        if self.categories is not None:
            if not self.categories.holds(x_adv, x):
                return False
            x_adv = x_adv.flatten(1).clone()
            x_adv[:, list(self.categories.columns)] = x.flatten(1)[:, list(self.categories.columns)]
            x_adv = x_adv.view_as(x)
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
        frozen = (~self.mutable.to(x.device)).flatten()
        in_bounds = bool(((x_adv >= self.lower.to(x.device) - tol) & (x_adv <= self.upper.to(x.device) + tol)).all())
        return bool((size <= eps + tol).all()) and in_bounds and bool((delta[:, frozen] == 0).all())
