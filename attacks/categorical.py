"""What an attacker may do to categorical columns (:class:`CategoryRule`), held by the Domain.

A categorical column's scaled value is a code: the centre of its category's slot among K + 1 equal slots of
[0, 1], the unknown category in slot 0 (:mod:`detectors.categorical`). Continuous attacks never move one:
the Domain marks every categorical column immutable, so their gradients are detached and the projection
resets them. Only a discrete search (``pgd-categorical``) changes a category, and only in the columns the user
names (``--mutable-categorical``), at most ``budget`` columns per row (``--category-budget``), each to a
category the checkpoint knows (never the unknown one). :meth:`CategoryRule.project` enforces exactly that on
every attack's result, so a value that is not exactly a known category's code (a random start's noise) is
reset to the clean one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOLERANCE = 1e-6  # float32 rounding of a code


@dataclass(frozen=True)
class CategoryRule:
    """``columns``: the categorical columns' positions; ``counts``: each one's number of known categories;
    ``mutable``: whether the attacker may change it; ``budget``: how many columns a row may change."""

    columns: tuple[int, ...]
    counts: tuple[int, ...]
    mutable: tuple[bool, ...]
    budget: int = 1

    def __post_init__(self) -> None:
        if not len(self.columns) == len(self.counts) == len(self.mutable):
            raise ValueError("a CategoryRule needs one count and one mutability per column")
        if int(self.budget) != self.budget or self.budget < 0:
            raise ValueError(f"expected a category budget >= 0, got {self.budget}")

    @property
    def any_mutable(self) -> bool:
        return self.budget > 0 and any(self.mutable)

    def codes(self, column: int, device: torch.device | None = None) -> torch.Tensor:
        """The codes of the column's known categories (slots 1..K), in category order."""
        slots = self.counts[column] + 1
        return (torch.arange(1, slots, device=device, dtype=torch.float64) + 0.5).div(slots).float()

    def _known_code(self, values: torch.Tensor, column: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each value is exactly a known category's code, and that code."""
        slots = self.counts[column] + 1
        slot = (values.double() * slots).floor().clamp(0, slots - 1)
        centre = ((slot + 0.5) / slots).to(values.dtype)
        return ((values - centre).abs() <= TOLERANCE) & (slot >= 1), centre

    def changed(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N, C) whether each categorical column differs from the clean row."""
        flat_adv, flat = x_adv.flatten(1), x.flatten(1)
        return torch.stack([(flat_adv[:, p] - flat[:, p]).abs() > TOLERANCE for p in self.columns], dim=1)

    def project(self, projected: torch.Tensor, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``projected`` with each categorical column set to ``x_adv``'s category where that is a known category
        of a mutable column, within the budget (columns in order), else to the clean value."""
        out, proposed, clean = projected.flatten(1).clone(), x_adv.flatten(1), x.flatten(1)
        spent = torch.zeros(len(out), dtype=torch.long, device=out.device)
        for column, position in enumerate(self.columns):
            value = clean[:, position]
            if self.mutable[column] and self.budget > 0:
                known, centre = self._known_code(proposed[:, position], column)
                moved = known & ((centre - value).abs() > TOLERANCE) & (spent < self.budget)
                value = torch.where(moved, centre, value)
                spent += moved.long()
            out[:, position] = value
        return out.view_as(projected)

    def holds(self, x_adv: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether every changed categorical column is mutable, holds a known category, and no row changes more
        than the budget."""
        changed = self.changed(x_adv, x)
        if not changed.any():
            return True
        flat = x_adv.flatten(1)
        for column, position in enumerate(self.columns):
            if not changed[:, column].any():
                continue
            known, _ = self._known_code(flat[changed[:, column], position], column)
            if not self.mutable[column] or not bool(known.all()):
                return False
        return bool((changed.sum(dim=1) <= self.budget).all())
