"""The standard attacks: torchattacks through the 4-D adapter, and this tool's PGD.

Every budget is in [0, 1]-scaled units of each input position's range; every
attack ends with the Domain's projection (budget, bounds, frozen and integer
features). Stochastic torchattacks attacks draw from the global RNG and seed
it themselves, so they run over a fixed grid of index-aligned chunks of
:data:`CHUNK` samples, each under ``torch.random.fork_rng`` seeded from
(run seed, attack, eps, chunk index): results then do not depend on the batch
size used for speed, and the caller's RNG state is left alone.

``fgsm``
    Goodfellow et al. 2015. L-inf, one signed-gradient step of size eps
    (torchattacks' FGSM).
``pgd`` / ``pgd-l2``
    Madry et al. 2018. Projected gradient ascent on the cross-entropy, L-inf
    (signed steps) or L2 (normalised steps): ``steps`` (20) steps of
    ``step_size`` (0.25) x eps, a random start in the eps-ball drawn from each
    sample's own stream (``random_start``, on), ``restarts`` (1) keeping per
    sample the first restart that misclassifies. The update is torchattacks'
    PGD / PGDL2 step for step (tests check they agree without the random
    start); every step is projected onto the Domain.
``cw``
    Carlini & Wagner 2017, L2, minimum-norm (torchattacks' CW: c=1, kappa=0,
    ``steps`` 100, lr 0.01). No budget of its own: a sample counts as broken at
    eps only when its perturbation's L2 norm is <= eps.
``deepfool``
    Moosavi-Dezfooli et al. 2016, L2, minimum-norm (torchattacks' DeepFool,
    ``steps`` 50, overshoot 0.02); counted like ``cw``.
``square``
    Andriushchenko et al. 2020, black-box score-based, L-inf (torchattacks'
    Square, margin loss, ``n_queries`` 1000, p_init 0.8).
``autoattack``
    Croce & Hein 2020, the original "standard" protocol composed from
    torchattacks' parts: APGD-CE (100 iterations), APGD-T (100 iterations,
    9 target classes), FAB-T (9 targets), Square (5000 queries), each later
    attack run only on the points still robust, worst case per point.
    torchattacks' own AutoAttack wrapper uses fewer APGD iterations. DLR losses
    are undefined below 3 classes (targeted DLR below 4), so binary detectors
    run APGD-CE and Square, and 3-class ones add FAB-T.

Targeted mode (``target_class``): ``fgsm``, ``pgd``, ``pgd-l2``, ``cw`` and
``square`` can aim at one class instead of away from the true one
(torchattacks' targeted mode for its attacks; for ``pgd`` descent on the
target class's cross-entropy, a restart counting as successful when it reaches
the target). ``deepfool`` and ``autoattack`` have no targeted mode here:
torchattacks' DeepFool supports none, and AutoAttack's protocol is untargeted.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torchattacks
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack, ImageView
from attacks.domain import Domain
from detectors.seeding import per_sample_uniform, stream_seed

CHUNK = 64


class FGSM(Attack):
    name = "fgsm"
    norm = "linf"
    reference = "Goodfellow et al. 2015"
    targetable = True

    def __init__(self, *, target_class: int | None = None):
        self._set_target(target_class)

    def params(self) -> dict:
        return self._target_params()

    def perturb(self, model, x, y, *, eps, domain, seed, index):
        view = ImageView(model, tuple(x.shape[1:]), domain)
        return view.from_4d(self._aim(torchattacks.FGSM(view, eps=eps))(view.to_4d(x), y))


class PGD(Attack):
    name = "pgd"
    norm = "linf"
    reference = "Madry et al. 2018"
    targetable = True

    def __init__(self, *, steps: int = 20, step_size: float = 0.25, restarts: int = 1, random_start: bool = True,
                 target_class: int | None = None):
        if steps < 1 or restarts < 1 or step_size <= 0:
            raise ValueError(f"{self.name} needs steps >= 1, restarts >= 1 and step_size > 0")
        self.steps, self.step_size, self.restarts, self.random_start = steps, step_size, restarts, random_start
        self._set_target(target_class)

    def params(self) -> dict:
        return {"steps": self.steps, "step_size": f"{self.step_size:g}*eps", "restarts": self.restarts,
                "random_start": self.random_start, **self._target_params()}

    def _start(self, x: torch.Tensor, eps: float, seed: int, index: torch.Tensor, restart: int) -> torch.Tensor:
        noise = per_sample_uniform(x.shape[1:], index, seed=seed, purpose=f"{self.name}/start/{restart}/{eps:g}",
                                   device=x.device)
        return x + (2 * noise - 1) * eps

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def restrict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Per-sample inputs the attack may change, (batch, *input_shape) bool; None: all of them."""
        return None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain: Domain,
                seed: int, index: torch.Tensor) -> torch.Tensor:
        alpha = self.step_size * eps
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        # targeted: descend the cross-entropy of the target class (torchattacks' targeted PGD), success = target
        sign, aim = (1.0, y) if self.target_class is None else (-1.0, torch.full_like(y, self.target_class))
        full_mask = self.restrict(model, x)
        index = torch.as_tensor(index, device=x.device)
        for restart in range(self.restarts):
            # a later restart only attacks the rows no earlier one fooled (the others keep their first success);
            # each row's steps depend on that row alone, so this changes no result
            rows = torch.arange(len(x), device=x.device) if restart == 0 else (~fooled).nonzero().squeeze(1)
            if not len(rows):
                break
            xr, aim_r, mask = (x, aim, full_mask) if restart == 0 else (
                x[rows], aim[rows], None if full_mask is None else full_mask[rows])
            keep = (lambda t: t) if mask is None else (lambda t, mask=mask: t * mask)
            x_adv = xr.clone()
            if self.random_start:
                start = xr + keep(self._start(xr, eps, seed, index[rows], restart) - xr)
                x_adv = domain.project(start, xr, eps=eps, norm=self.norm)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = sign * F.cross_entropy(model(x_adv), aim_r, reduction="sum")
                grad, = torch.autograd.grad(loss, x_adv)
                x_adv = domain.project(x_adv.detach() + alpha * keep(self._step(grad)), xr, eps=eps, norm=self.norm)
            if self.restarts == 1:  # nothing to choose between: no extra forward pass to find who is fooled
                return x_adv
            with torch.no_grad():
                predicted = model(x_adv).argmax(1)
                now_fooled = predicted != y[rows] if self.target_class is None else predicted == aim_r
            take = rows if restart == 0 else rows[now_fooled]
            best[take] = x_adv if restart == 0 else x_adv[now_fooled]
            fooled[rows] |= now_fooled
        return best


class PGDL2(PGD):
    name = "pgd-l2"
    norm = "l2"

    def _start(self, x, eps, seed, index, restart):
        # a uniform draw in the L2 ball: a direction from per-sample normals, a radius eps * u^(1/d)
        u = per_sample_uniform((2, *x.shape[1:]), index, seed=seed, purpose=f"{self.name}/start/{restart}/{eps:g}",
                               device=x.device)
        normal = torch.sqrt(-2 * torch.log(u[:, 0].clamp_min(1e-12))) * torch.cos(2 * torch.pi * u[:, 1])
        direction = normal / normal.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
        radius = u[:, 0].flatten(1)[:, 0] ** (1.0 / x[0].numel())
        return x + direction * (eps * radius).view(-1, *[1] * (x.ndim - 1))

    def _step(self, grad):
        return grad / (grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.ndim - 1)) + 1e-10)


class _Chunked(Attack):
    """A torchattacks attack that draws from the global RNG: run per index-aligned chunk, seeded per chunk."""

    stochastic: ClassVar[bool] = True

    def build(self, view: nn.Module, eps: float, n_classes: int, chunk_seed: int) -> torchattacks.Attack:
        raise NotImplementedError

    def run(self, view: ImageView, x: torch.Tensor, y: torch.Tensor, eps: float, n_classes: int,
            chunk_seed: int) -> torch.Tensor:
        return view.from_4d(self.build(view, eps, n_classes, chunk_seed)(view.to_4d(x), y))

    def perturb(self, model, x, y, *, eps, domain, seed, index):
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        out = x.clone()
        chunks = torch.div(index, CHUNK, rounding_mode="floor").to(x.device)
        devices = [x.device] if x.device.type == "cuda" else []
        for chunk in torch.unique(chunks).tolist():
            rows = chunks == chunk
            chunk_seed = stream_seed(seed, f"{self.name}/chunk/{eps:g}", chunk) % (2 ** 31)
            view = ImageView(model, tuple(x.shape[1:]), domain)  # nothing may carry over from one chunk
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(chunk_seed)
                out[rows] = self.run(view, x[rows], y[rows], eps, n_classes, chunk_seed)
        return out


class MinimumNorm(_Chunked):
    """Attacks with no budget of their own; the auditor counts a sample broken at eps when ‖δ‖₂ ≤ eps.

    They run over the chunk grid as well: torchattacks' CW stops early on the whole batch's summed cost,
    which would make one sample's result depend on its batch mates.
    """

    minimum_norm: ClassVar[bool] = True
    norm = "l2"


class CW(MinimumNorm):
    name = "cw"
    reference = "Carlini & Wagner 2017"
    targetable = True

    def __init__(self, *, steps: int = 100, c: float = 1.0, kappa: float = 0.0, lr: float = 0.01,
                 target_class: int | None = None):
        self.steps, self.c, self.kappa, self.lr = steps, c, kappa, lr
        self._set_target(target_class)

    def params(self) -> dict:
        return {"steps": self.steps, "c": self.c, "kappa": self.kappa, "lr": self.lr, "minimum_norm": True,
                **self._target_params()}

    def build(self, view, eps, n_classes, chunk_seed):
        return self._aim(torchattacks.CW(view, c=self.c, kappa=self.kappa, steps=self.steps, lr=self.lr))


class DeepFool(MinimumNorm):
    name = "deepfool"
    reference = "Moosavi-Dezfooli et al. 2016"

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02):
        self.steps, self.overshoot = steps, overshoot

    def params(self) -> dict:
        return {"steps": self.steps, "overshoot": self.overshoot, "minimum_norm": True}

    def build(self, view, eps, n_classes, chunk_seed):
        return torchattacks.DeepFool(view, steps=self.steps, overshoot=self.overshoot)


class Square(_Chunked):
    name = "square"
    norm = "linf"
    reference = "Andriushchenko et al. 2020"
    targetable = True

    def __init__(self, *, n_queries: int = 1000, p_init: float = 0.8, target_class: int | None = None):
        self.n_queries, self.p_init = n_queries, p_init
        self._set_target(target_class)

    def params(self) -> dict:
        return {"n_queries": self.n_queries, "p_init": self.p_init, "loss": "margin", **self._target_params()}

    def build(self, view, eps, n_classes, chunk_seed):
        return self._aim(torchattacks.Square(view, norm="Linf", eps=eps, n_queries=self.n_queries, n_restarts=1,
                                             p_init=self.p_init, loss="margin", seed=chunk_seed))


class AutoAttack(_Chunked):
    name = "autoattack"
    norm = "linf"
    reference = "Croce & Hein 2020 (standard protocol)"

    def __init__(self, *, apgd_steps: int = 100, n_targets: int = 9, square_queries: int = 5000):
        self.apgd_steps, self.n_targets, self.square_queries = apgd_steps, n_targets, square_queries

    def params(self) -> dict:
        return {"apgd_steps": self.apgd_steps, "targets": self.n_targets, "square_queries": self.square_queries,
                "components": "apgd-ce, apgd-t (>= 4 classes), fab-t (>= 3 classes), square"}

    def components(self, view: nn.Module, eps: float, n_classes: int, chunk_seed: int) -> list[torchattacks.Attack]:
        targets = min(self.n_targets, n_classes - 1)
        parts = [torchattacks.APGD(view, norm="Linf", eps=eps, steps=self.apgd_steps, n_restarts=1, loss="ce",
                                   seed=chunk_seed)]
        if n_classes >= 4:
            apgd_t = torchattacks.APGDT(view, norm="Linf", eps=eps, steps=self.apgd_steps, n_restarts=1,
                                        n_classes=n_classes, seed=chunk_seed)
            apgd_t.n_target_classes = targets
            parts.append(apgd_t)
        if n_classes >= 3:
            fab = torchattacks.FAB(view, norm="Linf", eps=eps, steps=self.apgd_steps, n_restarts=1,
                                   multi_targeted=True, n_classes=n_classes, seed=chunk_seed)
            fab.n_target_classes = targets
            parts.append(fab)
        parts.append(torchattacks.Square(view, norm="Linf", eps=eps, n_queries=self.square_queries, n_restarts=1,
                                         p_init=0.8, loss="margin", seed=chunk_seed))
        return parts

    def run(self, view, x, y, eps, n_classes, chunk_seed):
        x4, best = view.to_4d(x), view.to_4d(x).clone()
        with torch.no_grad():
            robust = view(x4).argmax(1) == y
        for attack in self.components(view, eps, n_classes, chunk_seed):
            if not robust.any():
                break
            rows = robust.nonzero().squeeze(1)
            candidate = attack(x4[rows], y[rows])
            candidate = torch.minimum(torch.maximum(candidate, x4[rows] - eps), x4[rows] + eps).clamp(0, 1)
            with torch.no_grad():
                broken = view(candidate).argmax(1) != y[rows]
            best[rows[broken]] = candidate[broken]
            robust[rows[broken]] = False
        return view.from_4d(best)


STANDARD_ATTACKS = (FGSM, PGD, PGDL2, CW, DeepFool, Square, AutoAttack)
