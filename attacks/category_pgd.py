"""``pgd-categorical``: a discrete search over the categorical columns an attacker controls, combined with pgd
on the numeric columns.

For each row, up to the Domain's category budget (``--category-budget``, default 1) rounds, greedily: the
candidate changes (a mutable column to another known category; never the unknown one) are ranked to first
order by the gradient of the loss with respect to the column's token, ``g . (e_new - e_now)`` over the
detector's category embeddings (HotFlip, Ebrahimi et al. 2018, as the ``hotflip`` attack does for tokens),
the best ``candidates`` are verified by real forward passes, and the one with the highest loss is kept. pgd
(:class:`attacks.pgd.PGD`, L-inf, the same settings and random streams as ``pgd``) then runs on the numeric
columns from that record. The result per row is the worse of this and pgd from the clean record (numeric
only): the first that is misclassified, else the one with the higher loss, so it is never weaker than
``pgd`` with the same settings. Without mutable categorical columns (or on a detector without categorical
columns) it is exactly ``pgd``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from attacks.domain import Domain
from attacks.pgd import PGD


class CategoryPGD(PGD):
    name = "pgd-categorical"
    norm = "linf"
    reference = "Ebrahimi et al. 2018 (first-order category ranking) with Madry et al. 2018 (pgd)"
    targetable = False

    def __init__(self, *, candidates: int = 4, steps: int | None = None, step_size: float | None = None,
                 restarts: int | None = None, random_start: bool = True, schedule: str = "constant"):
        if int(candidates) != candidates or candidates < 1:
            raise ValueError(f"{self.name} needs an integer candidates >= 1, got {candidates}")
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start,
                         schedule=schedule)
        self.candidates = int(candidates)

    def params(self) -> dict:
        return {"candidates": self.candidates, **super().params()}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain: Domain,
                seed: int, index: torch.Tensor) -> torch.Tensor:
        numeric_only = super().perturb(model, x, y, eps=eps, domain=domain, seed=seed, index=index)
        rule = domain.categories
        if rule is None or not rule.any_mutable or not getattr(model, "categorical", None):
            return numeric_only
        switched = x.clone()
        for _ in range(rule.budget):
            switched = self._switch_one(model, switched, x, y, domain)
        # pgd must not undo the switch: from the switched record the categories are part of the clean point
        fixed = replace(domain, categories=replace(rule, budget=0))
        combined = super().perturb(model, switched, y, eps=eps, domain=fixed, seed=seed, index=index)
        combined = domain.project(combined, x, eps=eps, norm=self.norm)
        numeric_only = domain.project(numeric_only, x, eps=eps, norm=self.norm)
        with torch.no_grad():
            loss_numeric, fooled_numeric = _loss_and_fooled(model, numeric_only, y)
            loss_combined, fooled_combined = _loss_and_fooled(model, combined, y)
        take = ~fooled_numeric & (fooled_combined | (loss_combined > loss_numeric))
        return torch.where(take.view(-1, *[1] * (x.ndim - 1)), combined, numeric_only)

    def _switch_one(self, model: nn.Module, current: torch.Tensor, clean: torch.Tensor, y: torch.Tensor,
                    domain: Domain) -> torch.Tensor:
        """``current`` with one more categorical column per row changed to the verified best of the first-order
        top ``candidates``, where that raises the loss and the rule allows it."""
        rule = domain.categories
        grads = _token_gradients(model, current, y)  # (N, C, dim), columns as the detector orders them
        vectors = [rows.detach() for rows in model.category_vectors()]
        slots_now = model.category_slots_of(current)
        spent = rule.changed(current, clean).sum(dim=1)
        proposals = []  # (score (N,), column position, code)
        for column, position in enumerate(rule.columns):
            if not rule.mutable[column]:
                continue
            table = vectors[column]  # (slots, dim), slot 0 unknown
            now = table[slots_now[:, column]]
            for category, code in enumerate(rule.codes(column, current.device).tolist()):
                score = (grads[:, column] * (table[category + 1] - now)).sum(dim=1)
                score = torch.where(slots_now[:, column] == category + 1, torch.full_like(score, -torch.inf), score)
                proposals.append((score, position, code))
        if not proposals:
            return current
        scores = torch.stack([score for score, _, _ in proposals], dim=1)
        top = scores.topk(min(self.candidates, scores.shape[1]), dim=1).indices
        with torch.no_grad():
            best_loss, _ = _loss_and_fooled(model, current, y)
            best = current.clone()
            for rank in range(top.shape[1]):
                trial = current.clone()
                for row, choice in enumerate(top[:, rank].tolist()):
                    _, position, code = proposals[choice]
                    if torch.isfinite(scores[row, choice]):
                        trial[row, position] = code
                trial = domain.categories.project(trial, trial, clean)
                loss, _ = _loss_and_fooled(model, trial, y)
                better = (loss > best_loss) & (rule.changed(trial, clean).sum(dim=1) > spent)
                best = torch.where(better.view(-1, *[1] * (current.ndim - 1)), trial, best)
                best_loss = torch.where(better, loss, best_loss)
        return best


def _loss_and_fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y


def _token_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d loss / d (categorical column's token), (N, C, dim): the detector's category lookup is hooked, not
    re-implemented, so the gradient is the one its forward has; the hook is removed in ``finally``."""
    looked_up = []
    handle = model.category_embedding.register_forward_hook(lambda module, inputs, output: looked_up.append(output))
    try:
        loss = F.cross_entropy(model(x.detach()), y, reduction="sum")
    finally:
        handle.remove()
    grad, = torch.autograd.grad(loss, looked_up[0])
    return grad
