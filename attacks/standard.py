"""The standard attacks: torchattacks through the 4-D adapter, and this tool's PGD (:mod:`attacks.pgd`).

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
    Madry et al. 2018 with an optional APGD step-size schedule: :mod:`attacks.pgd`.
``cw``
    Carlini & Wagner 2017, L2, minimum-norm, with the paper's binary search
    over c per sample (9 rounds of 100 Adam steps, lr 0.01, c bisected
    geometrically in [1e-2, 1e2] from 1; the smallest successful L2 kept).
    No budget of its own: a sample counts as broken at eps only when its
    perturbation's L2 norm is <= eps.
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
    attack run only on the points still robust, worst case per point. Every
    component's candidates are projected onto the Domain (budget, box, frozen
    and integer features) before they are judged. torchattacks' own AutoAttack
    wrapper uses fewer APGD iterations. DLR losses are undefined below 3
    classes (targeted DLR below 4), so binary detectors run APGD-CE and
    Square, and 3-class ones add FAB-T. ``version="rand"`` (for randomised
    models, the paper's rand version): APGD-CE and APGD-DLR (>= 3 classes),
    each with EOT over 20 draws.
``autoattack-fast``
    The same with Square at 1000 queries: not the standard protocol, so it
    carries its own name.

Targeted mode (``target_class``): ``fgsm``, ``pgd``, ``pgd-l2``, ``cw`` and
``square`` can aim at one class instead of away from the true one
(torchattacks' targeted mode for its attacks; for ``pgd`` descent on the
target class's cross-entropy, a restart counting as successful when it reaches
the target). ``deepfool`` and ``autoattack`` have no targeted mode here:
torchattacks' DeepFool supports none, and AutoAttack's protocol is untargeted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack, ImageView
from attacks.domain import Domain
from attacks.pgd import PGD, PGDL2
from detectors.seeding import stream_seed

if TYPE_CHECKING:  # torchattacks (and the scipy.stats it loads) is imported by the attacks that run it
    import torchattacks

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
        import torchattacks

        view = ImageView(model, tuple(x.shape[1:]), domain)
        return view.from_4d(self._aim(torchattacks.FGSM(view, eps=eps))(view.to_4d(x), y))


class _Chunked(Attack):
    """A torchattacks attack that draws from the global RNG: run per index-aligned chunk, seeded per chunk."""

    stochastic: ClassVar[bool] = True

    def build(self, view: nn.Module, eps: float, n_classes: int, chunk_seed: int) -> torchattacks.Attack:
        raise NotImplementedError

    def run(self, view: ImageView, x: torch.Tensor, y: torch.Tensor, eps: float, n_classes: int,
            chunk_seed: int, domain: Domain) -> torch.Tensor:
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
                out[rows] = self.run(view, x[rows], y[rows], eps, n_classes, chunk_seed, domain)
        return out


class MinimumNorm(_Chunked):
    """Attacks with no budget of their own; the auditor counts a sample broken at eps when ‖δ‖₂ ≤ eps.

    They run over the chunk grid as well: torchattacks' DeepFool works on the batch as a whole.
    """

    minimum_norm: ClassVar[bool] = True
    norm = "l2"


ADAM_BETAS = (0.9, 0.999)


class CW(MinimumNorm):
    """Carlini & Wagner 2017, L2: minimise ||δ||₂² + c · max(z_y - max_{j≠y} z_j, -kappa) in tanh space with Adam,
    with the paper's binary search over c per sample: ``search_steps`` (9) rounds, each ``steps`` (100) Adam steps
    of ``lr`` (0.01) from the clean input, c bisected geometrically within [``c_min``, ``c_max``] = [1e-2, 1e2]
    starting at their geometric mean (1): a round that succeeds lowers the sample's upper end, one that fails
    raises its lower end. Kept per sample: the successful example with the smallest L2 over every step of every
    round (the clean input when none succeeds). Targeted: the target's logit against the largest other. The Adam
    update (Kingma & Ba 2015, betas 0.9 and 0.999, epsilon 1e-8) is written out: it is elementwise, so per sample,
    and torch.optim's first use costs seconds of imports.

    Written here rather than run through torchattacks' CW, which has one c for the batch, stops on the batch's
    summed cost, and reads its margin as max((1 - onehot) · z), 0 instead of the largest other logit when every
    other logit is negative. Every loss is per sample and Adam is elementwise, so batching changes nothing; the
    model is evaluated at the Domain's projection of each iterate (frozen positions reset, integer features
    whole; gradient passed straight through), so success and distance are those of the example returned.
    """

    name = "cw"
    reference = "Carlini & Wagner 2017"
    targetable = True

    def __init__(self, *, steps: int = 100, search_steps: int = 9, c_min: float = 1e-2, c_max: float = 1e2,
                 kappa: float = 0.0, lr: float = 0.01, target_class: int | None = None):
        if int(steps) != steps or steps < 1 or int(search_steps) != search_steps or search_steps < 1:
            raise ValueError(f"cw needs integer steps >= 1 and search_steps >= 1, got {steps} and {search_steps}")
        if not 0 < c_min <= c_max or not lr > 0 or not kappa >= 0:
            raise ValueError(f"cw needs 0 < c_min <= c_max, lr > 0 and kappa >= 0; got c_min={c_min}, "
                             f"c_max={c_max}, lr={lr}, kappa={kappa}")
        self.steps, self.search_steps, self.c_min, self.c_max = int(steps), int(search_steps), c_min, c_max
        self.kappa, self.lr = kappa, lr
        self._set_target(target_class)

    def params(self) -> dict:
        return {"steps": self.steps, "search_steps": self.search_steps, "c_range": [self.c_min, self.c_max],
                "kappa": self.kappa, "lr": self.lr, "minimum_norm": True, **self._target_params()}

    def run(self, view, x, y, eps, n_classes, chunk_seed, domain):
        n, shape = len(x), (-1, *[1] * (x.ndim - 1))
        aim = y if self.target_class is None else torch.full_like(y, self.target_class)
        lower = torch.full((n,), float(self.c_min), device=x.device)
        upper = torch.full((n,), float(self.c_max), device=x.device)
        best, best_l2 = x.clone(), torch.full((n,), math.inf, device=x.device)
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        for _ in range(self.search_steps):
            c = torch.sqrt(lower * upper)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            w, first, second = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
            for step in range(1, self.steps + 1):
                w.requires_grad_(True)
                adv = (torch.tanh(w) + 1) / 2
                projected = domain.project(adv, x, eps=math.inf, norm="l2")
                point = adv + (projected - adv).detach()  # the model sees the projection, the gradient passes
                logits = view(view.to_4d(point))
                l2 = (point - x).flatten(1).pow(2).sum(1)
                own = logits.gather(1, aim[:, None]).squeeze(1)
                other = logits.masked_fill(F.one_hot(aim, logits.shape[1]).bool(), -math.inf).amax(1)
                margin = (own - other) if self.target_class is None else (other - own)
                grad, = torch.autograd.grad((l2 + c * margin.clamp(min=-self.kappa)).sum(), w)
                with torch.no_grad():
                    first.mul_(ADAM_BETAS[0]).add_(grad, alpha=1 - ADAM_BETAS[0])
                    second.mul_(ADAM_BETAS[1]).addcmul_(grad, grad, value=1 - ADAM_BETAS[1])
                    w = w.detach() - self.lr * (first / (1 - ADAM_BETAS[0] ** step)) / (
                        (second / (1 - ADAM_BETAS[1] ** step)).sqrt() + 1e-8)
                    predicted = logits.argmax(1)
                    success = predicted != y if self.target_class is None else predicted == aim
                    better = success & (l2 < best_l2)
                    best[better], best_l2[better] = projected[better], l2[better].detach()
                    succeeded |= success
            upper = torch.where(succeeded, c, upper)
            lower = torch.where(succeeded, lower, c)
        return best


class DeepFool(MinimumNorm):
    name = "deepfool"
    reference = "Moosavi-Dezfooli et al. 2016"

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02):
        self.steps, self.overshoot = steps, overshoot

    def params(self) -> dict:
        return {"steps": self.steps, "overshoot": self.overshoot, "minimum_norm": True}

    def build(self, view, eps, n_classes, chunk_seed):
        import torchattacks

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
        import torchattacks

        return self._aim(torchattacks.Square(view, norm="Linf", eps=eps, n_queries=self.n_queries, n_restarts=1,
                                             p_init=self.p_init, loss="margin", seed=chunk_seed))


AUTOATTACK_VERSIONS = ("standard", "rand")
EOT_ITER = 20  # AutoAttack's "rand" version: gradients averaged over 20 draws of a randomised model


class AutoAttack(_Chunked):
    """Croce & Hein 2020. ``version="standard"``: APGD-CE, APGD-T, FAB-T, Square (5000 queries); ``"rand"`` (for
    randomised models, as the paper's rand version): APGD-CE and APGD-DLR (>= 3 classes), each with EOT over 20
    draws, no FAB or Square. Each component's candidates are projected onto the Domain (budget, box, frozen and
    integer features) before they are judged, and every later component runs on each point still classified
    correctly after that projection."""

    name = "autoattack"
    norm = "linf"
    reference = "Croce & Hein 2020 (standard protocol)"

    def __init__(self, *, apgd_steps: int = 100, n_targets: int = 9, square_queries: int = 5000,
                 version: str = "standard"):
        if version not in AUTOATTACK_VERSIONS:
            raise ValueError(f"{self.name}: expected version as one of {', '.join(AUTOATTACK_VERSIONS)}, "
                             f"got {version!r}")
        self.apgd_steps, self.n_targets, self.square_queries = apgd_steps, n_targets, square_queries
        self.version = version

    def params(self) -> dict:
        if self.version == "rand":
            return {"version": "rand", "apgd_steps": self.apgd_steps, "eot_iter": EOT_ITER,
                    "components": "apgd-ce, apgd-dlr (>= 3 classes), each with EOT"}
        return {"version": "standard", "apgd_steps": self.apgd_steps, "targets": self.n_targets,
                "square_queries": self.square_queries,
                "components": "apgd-ce, apgd-t (>= 4 classes), fab-t (>= 3 classes), square"}

    def components(self, view: nn.Module, eps: float, n_classes: int, chunk_seed: int) -> list[torchattacks.Attack]:
        import torchattacks

        if self.version == "rand":
            parts = [torchattacks.APGD(view, norm="Linf", eps=eps, steps=self.apgd_steps, n_restarts=1, loss="ce",
                                       eot_iter=EOT_ITER, seed=chunk_seed)]
            if n_classes >= 3:
                parts.append(torchattacks.APGD(view, norm="Linf", eps=eps, steps=self.apgd_steps, n_restarts=1,
                                               loss="dlr", eot_iter=EOT_ITER, seed=chunk_seed))
            return parts
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

    def run(self, view, x, y, eps, n_classes, chunk_seed, domain):
        best = x.clone()
        with torch.no_grad():
            robust = view(view.to_4d(x)).argmax(1) == y
        for attack in self.components(view, eps, n_classes, chunk_seed):
            if not robust.any():
                break
            rows = robust.nonzero().squeeze(1)
            candidate = view.from_4d(attack(view.to_4d(x[rows]), y[rows]))
            candidate = domain.project(candidate, x[rows], eps=eps, norm=self.norm)  # judged as it will be returned
            with torch.no_grad():
                broken = view(view.to_4d(candidate)).argmax(1) != y[rows]
            best[rows[broken]] = candidate[broken]
            robust[rows[broken]] = False
        return best


class AutoAttackFast(AutoAttack):
    """AutoAttack with Square at 1,000 queries instead of the protocol's 5,000: NOT the standard protocol of
    Croce & Hein 2020 (a faster, possibly weaker variant, reported under its own name)."""

    name = "autoattack-fast"
    reference = "Croce & Hein 2020, with Square at 1,000 queries (not the standard protocol)"

    def __init__(self, *, apgd_steps: int = 100, n_targets: int = 9, square_queries: int = 1000,
                 version: str = "standard"):
        super().__init__(apgd_steps=apgd_steps, n_targets=n_targets, square_queries=square_queries, version=version)


STANDARD_ATTACKS = (FGSM, PGD, PGDL2, CW, DeepFool, Square, AutoAttack, AutoAttackFast)
