"""Attacks by name. A new attack is one class and one entry in ATTACKS (TEXT_ATTACKS for token ids); the contract
suites cover them."""

from __future__ import annotations

from attacks.attention import ATTENTION_ATTACKS
from attacks.base import Attack, ImageView
from attacks.categorical import CategoryRule
from attacks.category_pgd import CategoryPGD
from attacks.domain import Domain
from attacks.standard import CHUNK, STANDARD_ATTACKS
from attacks.text import SUBSTITUTION_ATTACKS, SUBSTITUTION_ATTENTION_ATTACKS, TokenDomain
from attacks.text_edits import EDIT_ATTACKS, EDIT_ATTENTION_ATTACKS
from attacks.text_embedding import EMBEDDING_ATTACKS

ATTACKS: dict[str, type[Attack]] = {**{cls.name: cls for cls in STANDARD_ATTACKS}, **ATTENTION_ATTACKS,
                                    CategoryPGD.name: CategoryPGD}
# on token ids: label-preserving word edits first, then substitutions, then the embedding-space relaxation
TEXT_ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (*EDIT_ATTACKS, *SUBSTITUTION_ATTACKS,
                                                                     *EMBEDDING_ATTACKS)}
TEXT_ATTENTION_ATTACKS = (*EDIT_ATTENTION_ATTACKS, *SUBSTITUTION_ATTENTION_ATTACKS)

__all__ = ["ATTACKS", "ATTENTION_ATTACKS", "CHUNK", "TEXT_ATTACKS", "TEXT_ATTENTION_ATTACKS", "Attack", "CategoryRule",
           "Domain",
           "ImageView", "TokenDomain",
           "attack_class", "is_minimum_norm", "make_attack"]


def make_attack(name: str, **params) -> Attack:
    """An attack of either registry by name (:func:`attack_class`): :data:`ATTACKS` on continuous inputs,
    :data:`TEXT_ATTACKS` on token ids (word edits and substitutions within a token budget, embedding-space pgd)."""
    try:
        family = attack_class(name)
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; registered: {', '.join(sorted({**ATTACKS, **TEXT_ATTACKS}))}"
                         ) from None
    return family(**params)


def attack_class(name: str) -> type[Attack]:
    """The class of a registered attack of either registry (their names never collide)."""
    return ATTACKS[name] if name in ATTACKS else TEXT_ATTACKS[name]


def is_minimum_norm(attack: Attack) -> bool:
    return bool(getattr(attack, "minimum_norm", False))
