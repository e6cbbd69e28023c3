"""Attacks by name. A new attack is one module and one line in ATTACKS."""

from __future__ import annotations

from attacks.base import Attack, ImageView
from attacks.domain import Domain
from attacks.standard import FGSM, PGD

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, PGD)}

__all__ = ["ATTACKS", "Attack", "Domain", "ImageView", "make_attack"]


def make_attack(name: str, **params) -> Attack:
    try:
        return ATTACKS[name](**params)
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; registered: {', '.join(sorted(ATTACKS))}") from None
