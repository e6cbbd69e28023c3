"""Attacks by name. A new attack is one class and one entry in ATTACKS; the contract suite covers it."""

from __future__ import annotations

from attacks.attention import ATTENTION_ATTACKS
from attacks.base import Attack, ImageView
from attacks.domain import Domain
from attacks.standard import CHUNK, STANDARD_ATTACKS

ATTACKS: dict[str, type[Attack]] = {**{cls.name: cls for cls in STANDARD_ATTACKS}, **ATTENTION_ATTACKS}

__all__ = ["ATTACKS", "ATTENTION_ATTACKS", "CHUNK", "Attack", "Domain", "ImageView", "is_minimum_norm", "make_attack"]


def make_attack(name: str, **params) -> Attack:
    try:
        family = ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; registered: {', '.join(sorted(ATTACKS))}") from None
    return family(**params)


def is_minimum_norm(attack: Attack) -> bool:
    return bool(getattr(attack, "minimum_norm", False))
