"""Embedding-space attacks on text detectors: a continuous relaxation of token substitution.

``embedding-pgd`` / ``embedding-pgd-l2`` (:class:`EmbeddingPGD`, :class:`EmbeddingPGDL2`)
    Projected gradient ascent on the cross-entropy in the space of token embeddings (Madry et al. 2018's PGD;
    Miyato et al. 2017 train against this perturbation): a continuous relaxation that every non-special token
    moves at once, to points no token sequence occupies, reported under its own name. It is an upper bound on
    the harm of substitutions only where eps r reaches the distance between embedding rows; at small eps it
    measures the smoothness of the model around real text. Units: ``eps`` is a fraction of r, the mean L2 norm
    of the vocabulary's non-special embedding rows: L2, each token's perturbation has ``||delta_t||_2 <= eps r``;
    L-inf, each coordinate ``|delta| <= eps r / sqrt(dim)`` (the per-coordinate size of a delta_t of norm
    eps r spread evenly). ``steps`` (20), ``step_size`` (0.25 x the radius), a random start in the ball drawn
    from each sample's own stream (:func:`detectors.seeding.per_sample_uniform`, purpose
    ``"<name>/start/<eps>"``), the first misclassifying iterate kept, else the last. It returns perturbed
    embeddings (N, T, dim), not token ids: evaluate them with :func:`embedding_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack
from attacks.text_domain import TokenDomain, check_text_model, token_domain
from detectors.seeding import per_sample_uniform

__all__ = ["EMBEDDING_ATTACKS", "EMBEDDING_NORMS", "EmbeddingPGD", "EmbeddingPGDL2", "embedding_logits",
           "embedding_scale"]

EMBEDDING_NORMS = ("embedding-linf", "embedding-l2")


def embedding_scale(model: nn.Module, special_ids: Sequence[int]) -> float:
    """r: the mean L2 norm of the embedding rows of the non-special tokens (the unit of embedding-space eps)."""
    table = model.embedding.weight.detach()
    keep = torch.ones(len(table), dtype=torch.bool, device=table.device)
    keep[list(special_ids)] = False
    return float(table[keep].norm(dim=1).mean())


@torch.no_grad()
def embedding_logits(model: nn.Module, ids: torch.Tensor, embeddings: torch.Tensor, batch_size: int = 1024
                     ) -> torch.Tensor:
    """Logits of perturbed embeddings (an embedding-space attack's output) under ``ids``' attention mask."""
    return torch.cat([model.forward_embeddings(embeddings[i:i + batch_size],
                                               model.attention_mask(ids[i:i + batch_size]))
                      for i in range(0, max(len(ids), 1), batch_size)])


class EmbeddingPGD(Attack):
    """PGD on the cross-entropy in the space of token embeddings (L-inf per coordinate, in units of r)."""

    name = "embedding-pgd"
    norm: ClassVar[str] = "embedding-linf"
    reference = "Madry et al. 2018 (PGD); Miyato et al. 2017 (adversarial training in embedding space)"
    step_norm: ClassVar[str] = "linf"

    def __init__(self, *, steps: int = 20, step_size: float = 0.25, random_start: bool = True) -> None:
        if int(steps) != steps or steps < 1 or not step_size > 0:
            raise ValueError(f"{self.name} needs integer steps >= 1 and step_size > 0, got steps={steps}, "
                             f"step_size={step_size}")
        self.steps, self.step_size, self.random_start = int(steps), float(step_size), bool(random_start)

    def params(self) -> dict:
        return {"steps": self.steps, "step_size": f"{self.step_size:g}*radius", "random_start": self.random_start}

    def radius(self, model: nn.Module, domain: TokenDomain, eps: float) -> float:
        """The projection radius: eps r (L2, per token) or eps r / sqrt(dim) (L-inf, per coordinate)."""
        scale = embedding_scale(model, domain.special_ids) * eps
        return scale / math.sqrt(model.embedding.embedding_dim) if self.step_norm == "linf" else scale

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain, seed: int,
                 index: torch.Tensor) -> torch.Tensor:
        """Adversarial token embeddings (N, T, dim) for token ids ``x``; the model's mode is restored."""
        domain = token_domain(self.name, domain)
        check_text_model(self.name, model)
        if not 0 <= eps < math.inf:
            raise ValueError(f"{self.name}: expected a finite eps >= 0 (a fraction of r), got {eps}")
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                return self._perturb(model, x, y, eps=eps, domain=domain, seed=seed, index=index)
        finally:
            model.train(was_training)

    def _project(self, delta: torch.Tensor, radius: float, movable: torch.Tensor) -> torch.Tensor:
        if self.step_norm == "linf":
            delta = delta.clamp(-radius, radius)
        else:
            delta = delta * (radius / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return delta * movable

    def _perturb(self, model, x, y, *, eps, domain, seed, index) -> torch.Tensor:
        radius = self.radius(model, domain, eps)
        mask = model.attention_mask(x)
        movable = (domain.mutable(x) & ~domain.protected_positions(x, index)).unsqueeze(-1).to(
            model.embedding.weight.dtype)
        clean = model.embed(x).detach()
        if self.random_start:
            draws = per_sample_uniform(clean.shape[1:], index, seed=seed, purpose=f"{self.name}/start/{eps:g}",
                                       device=x.device)
            delta = self._project((2 * draws - 1) * radius, radius, movable)
        else:
            delta = torch.zeros_like(clean)
        best = delta.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for step in range(self.steps + 1):
            delta.requires_grad_(step < self.steps)
            logits = model.forward_embeddings(clean + delta, mask)
            with torch.no_grad():
                newly = (logits.argmax(1) != y) & ~done
                best[newly] = delta.detach()[newly]
                done |= newly
            if step == self.steps:
                break
            gradient, = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), delta)
            with torch.no_grad():
                if self.step_norm == "linf":
                    move = gradient.sign()
                else:
                    move = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = self._project(delta.detach() + self.step_size * radius * move, radius, movable)
        best[~done] = delta.detach()[~done]
        return (clean + best).detach()


class EmbeddingPGDL2(EmbeddingPGD):
    """PGD in embedding space with per-token L2 balls of radius eps r."""

    name = "embedding-pgd-l2"
    norm: ClassVar[str] = "embedding-l2"
    step_norm: ClassVar[str] = "l2"


EMBEDDING_ATTACKS = (EmbeddingPGD, EmbeddingPGDL2)
