"""The standard attacks: torchattacks where it fits, through the 4-D adapter.

``fgsm``
    Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples".
    L-inf, one signed-gradient step of size eps: torchattacks' FGSM.
``pgd``
    Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks". L-inf projected gradient ascent on the cross-entropy: ``steps``
    (default 20) signed steps of ``step_size`` x eps (default 1/4, never
    torchattacks' 2/255 meant for 8-bit images), a uniform random start in the
    eps-ball (default on), ``restarts`` (default 1) keeping per sample the first
    restart that misclassifies. The update is torchattacks' PGD step for step
    (tests check they agree without the random start); the random start is
    drawn from per-sample streams rather than the global RNG, and every step is
    projected onto the Domain, so frozen features never move.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack, ImageView
from attacks.domain import Domain
from detectors.seeding import per_sample_uniform


class FGSM(Attack):
    name = "fgsm"
    norm = "linf"
    reference = "Goodfellow et al. 2015"

    def perturb(self, model, x, y, *, eps, domain, seed, index):
        view = ImageView(model, tuple(x.shape[1:]), domain)
        attack = torchattacks.FGSM(view, eps=eps)
        return view.from_4d(attack(view.to_4d(x), y))


class PGD(Attack):
    name = "pgd"
    norm = "linf"
    reference = "Madry et al. 2018"

    def __init__(self, *, steps: int = 20, step_size: float = 0.25, restarts: int = 1, random_start: bool = True):
        if steps < 1 or restarts < 1 or step_size <= 0:
            raise ValueError("pgd needs steps >= 1, restarts >= 1 and step_size > 0")
        self.steps, self.step_size, self.restarts, self.random_start = steps, step_size, restarts, random_start

    def params(self) -> dict:
        return {"steps": self.steps, "step_size": f"{self.step_size:g}*eps", "restarts": self.restarts,
                "random_start": self.random_start}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain: Domain,
                seed: int, index: torch.Tensor) -> torch.Tensor:
        alpha = self.step_size * eps
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            x_adv = x.clone()
            if self.random_start:
                noise = per_sample_uniform(x.shape[1:], index, seed=seed, purpose=f"pgd/start/{restart}/{eps:g}",
                                           device=x.device)
                x_adv = domain.project(x + (2 * noise - 1) * eps, x, eps=eps)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = F.cross_entropy(model(x_adv), y, reduction="sum")
                grad, = torch.autograd.grad(loss, x_adv)
                x_adv = domain.project(x_adv.detach() + alpha * grad.sign(), x, eps=eps)
            with torch.no_grad():
                now_fooled = model(x_adv).argmax(1) != y
            take = now_fooled & ~fooled if restart else torch.ones_like(fooled)
            best[take] = x_adv[take]
            fooled |= now_fooled
        return best
