"""``pgd`` / ``pgd-l2``: this tool's projected gradient descent, L-inf and L2.

Madry et al. 2018, projected gradient ascent on the cross-entropy, L-inf
(signed steps) or L2 (normalised steps), a random start in the eps-ball
drawn from each sample's own stream (``random_start``, on), ``restarts``
keeping per sample the first restart that misclassifies. ``schedule``:
``"constant"`` (default): Madry's PGD, ``steps`` 20 of ``step_size`` 0.25 x
eps, ``restarts`` 10 (a later restart only on the rows not yet fooled), each
restart's last iterate; with ``restarts=1`` it is plain Madry PGD, the update
torchattacks' PGD / PGDL2 step for step (tests check they agree
without the random start). ``"apgd"``: the step-size schedule of APGD (Croce &
Hein 2020), ``steps`` 30, ``restarts`` 10, first step ``step_size`` 2.0 x eps,
momentum 0.75, at checkpoints (22% of the steps, then windows 3% shorter, at
least 6%) a row whose loss rose in <= 75% of the window's steps, or whose best
loss stalled without a halving at the previous checkpoint, halves its step and
resumes from its best point; a row stops at its first misclassified iterate,
else returns its highest-loss one. Its step-size decisions compare losses, so
its result can move with the batch size by float rounding: it is an option,
not the default (see ``PGD.DEFAULTS`` for the measurements behind the choice).
The iterate stays continuous inside the budget and box; the model is evaluated (loss, gradient, success) at its whole
point (integer features rounded, :meth:`Domain.whole`).

Every budget is in [0, 1]-scaled units of each input position's range; every iterate ends with the Domain's
projection (budget, bounds, frozen and integer features).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack
from attacks.domain import Domain
from detectors.seeding import per_sample_uniform

SCHEDULES = ("apgd", "constant")
APGD_MOMENTUM, APGD_RHO = 0.75, 0.75  # Croce & Hein 2020, section 3


def _gain(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Whether a loss rose, by more than float32 noise (1e-5 relative): a batch of another size computes the
    same row's loss a few ulps apart, and APGD's decisions must not follow that noise."""
    return new > old + 1e-5 * (1 + old.abs())


def apgd_checkpoints(steps: int) -> set[int]:
    """The iterations after which APGD checks its progress (Croce & Hein 2020): the first after 22% of the
    steps, each later window 3% of the steps shorter than the one before, never under 6%."""
    window, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, at = set(), 0
    while at + window <= steps:
        at += window
        points.add(at)
        window = max(window - shrink, least)
    return points


class PGD(Attack):
    name = "pgd"
    norm = "linf"
    reference = "Madry et al. 2018; step-size schedule of APGD, Croce & Hein 2020"
    targetable = True
    #: per schedule: (steps, step_size, restarts) when not given. On the breast-cancer detector (seed 0, all 143
    #: test rows) restarts decide, not steps or the schedule: at eps 0.1 constant 20 steps x 1 restart 0.413,
    #: x 5 0.336, x 10 0.322 (2.3 s), and 100 steps x 25 restarts 0.308 moves it by 0.014, within
    #: the convergence check's tolerance; apgd 30 x 10 0.336 (2.7 s) and its 5x effort (150 x 50) 0.294, outside
    #: it. At eps 0.03 every setting gives 0.804. So the default is Madry's constant step with 10 restarts (a
    #: later restart only on rows not yet fooled); ``restarts=1`` is plain Madry PGD, as torchattacks.PGD.
    DEFAULTS: ClassVar[dict[str, tuple[int, float, int]]] = {"apgd": (30, 2.0, 10), "constant": (20, 0.25, 10)}

    def __init__(self, *, steps: int | None = None, step_size: float | None = None, restarts: int | None = None,
                 random_start: bool = True, schedule: str = "constant", target_class: int | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"{self.name}: expected schedule as one of {', '.join(SCHEDULES)}, got {schedule!r}")
        default_steps, default_step, default_restarts = self.DEFAULTS[schedule]
        steps = default_steps if steps is None else steps
        step_size = default_step if step_size is None else step_size
        restarts = default_restarts if restarts is None else restarts
        if int(steps) != steps or steps < 1 or int(restarts) != restarts or restarts < 1 or not step_size > 0:
            raise ValueError(f"{self.name} needs integer steps >= 1, integer restarts >= 1 and step_size > 0; "
                             f"got steps={steps}, restarts={restarts}, step_size={step_size}")
        self.schedule, self.steps, self.step_size = schedule, int(steps), float(step_size)
        self.restarts, self.random_start = int(restarts), bool(random_start)
        self._set_target(target_class)

    def params(self) -> dict:
        step = "step_size" if self.schedule == "constant" else "initial_step_size"
        return {"schedule": self.schedule, "steps": self.steps, step: f"{self.step_size:g}*eps",
                "restarts": self.restarts, "random_start": self.random_start, **self._target_params()}

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
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        # targeted: descend the cross-entropy of the target class (torchattacks' targeted PGD), success = target
        sign, aim = (1.0, y) if self.target_class is None else (-1.0, torch.full_like(y, self.target_class))
        full_mask = self.restrict(model, x)
        index = torch.as_tensor(index, device=x.device)
        ascend = self._constant if self.schedule == "constant" else self._apgd
        for restart in range(self.restarts):
            # a later restart only attacks the rows no earlier one fooled (the others keep their first success);
            # each row's steps depend on that row alone, so this changes no result
            rows = torch.arange(len(x), device=x.device) if restart == 0 else (~fooled).nonzero().squeeze(1)
            if not len(rows):
                break
            xr, mask = (x, full_mask) if restart == 0 else (x[rows], None if full_mask is None else full_mask[rows])
            keep = (lambda t: t) if mask is None else (lambda t, mask=mask: t * mask)
            start = xr.clone()
            if self.random_start:
                start = domain.project(xr + keep(self._start(xr, eps, seed, index[rows], restart) - xr), xr,
                                       eps=eps, norm=self.norm, integral=False)
            x_adv, now_fooled = ascend(model, xr, aim[rows], sign, start, keep, eps, domain)
            if self.restarts == 1:
                return x_adv
            take = rows if restart == 0 else rows[now_fooled]
            best[take] = x_adv if restart == 0 else x_adv[now_fooled]
            fooled[rows] |= now_fooled
        return best

    def _evaluate(self, model: nn.Module, x_cont: torch.Tensor, x: torch.Tensor, aim: torch.Tensor, sign: float,
                  eps: float, domain: Domain) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """At the whole point of the continuous iterate: (that point, per-row loss, gradient, success)."""
        point = domain.whole(x_cont, x, eps=eps, norm=self.norm).requires_grad_(True)
        logits = model(point)
        loss = sign * F.cross_entropy(logits, aim, reduction="none")
        grad, = torch.autograd.grad(loss.sum(), point)
        predicted = logits.detach().argmax(1)
        success = predicted != aim if self.target_class is None else predicted == aim
        return point.detach(), loss.detach(), grad, success

    def _constant(self, model, x, aim, sign, x_adv, keep, eps, domain):
        """Madry et al.'s PGD: ``steps`` signed (L2: normalised) steps of step_size x eps; the last iterate."""
        alpha = self.step_size * eps
        for _ in range(self.steps):
            _, _, grad, _ = self._evaluate(model, x_adv, x, aim, sign, eps, domain)
            x_adv = domain.project(x_adv + alpha * keep(self._step(grad)), x, eps=eps, norm=self.norm, integral=False)
        point = domain.whole(x_adv, x, eps=eps, norm=self.norm)
        if self.restarts == 1:  # nothing to choose between: no extra forward pass to find who is fooled
            return point, None
        with torch.no_grad():
            predicted = model(point).argmax(1)
        return point, predicted != aim if self.target_class is None else predicted == aim

    def _apgd(self, model, x, aim, sign, x_adv, keep, eps, domain):
        """APGD's schedule (Croce & Hein 2020) on the cross-entropy, per row: first step step_size x eps, then
        momentum 0.75 between the projected step and the last move; at each checkpoint a row whose loss rose
        in fewer than 75% of the window's steps, or whose best loss did not improve since the previous checkpoint
        without a halving there, halves its step and resumes from its best point. Returns per row the first
        iterate that succeeds (a row stops there), else the one with the highest loss; every loss and success is
        judged at the whole point (integer features rounded)."""
        n, shape = len(x), (-1, *[1] * (x.ndim - 1))
        eta = torch.full((n,), self.step_size * eps, device=x.device, dtype=x.dtype)
        point, loss, grad, done = self._evaluate(model, x_adv, x, aim, sign, eps, domain)
        out, x_best, grad_best, loss_best = point.clone(), x_adv.clone(), grad.clone(), loss.clone()
        x_prev, loss_prev = x_adv.clone(), loss.clone()
        checkpoints, last_checkpoint = apgd_checkpoints(self.steps), 0
        rises = torch.zeros(n, device=x.device)
        halved_before = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_at_checkpoint = loss_best.clone()
        for k in range(1, self.steps + 1):
            live = (~done).nonzero().squeeze(1)
            if not len(live):
                break
            z = domain.project(x_adv + eta.view(shape) * keep(self._step(grad)), x, eps=eps, norm=self.norm,
                               integral=False)
            if k > 1:
                z = domain.project(x_adv + APGD_MOMENTUM * (z - x_adv) + (1 - APGD_MOMENTUM) * (x_adv - x_prev), x,
                                   eps=eps, norm=self.norm, integral=False)
            x_prev, x_adv = x_adv, z
            point_l, loss_l, grad_l, success_l = self._evaluate(model, x_adv[live], x[live], aim[live], sign, eps,
                                                                domain)
            loss, grad = loss.clone(), grad.clone()
            loss[live], grad[live] = loss_l, grad_l
            rises[live] += _gain(loss_l, loss_prev[live]).to(rises.dtype)
            loss_prev = loss
            improved = torch.zeros(n, dtype=torch.bool, device=x.device)
            improved[live] = _gain(loss_l, loss_best[live])
            loss_best = torch.where(improved, loss, loss_best)
            x_best = torch.where(improved.view(shape), x_adv, x_best)
            grad_best = torch.where(improved.view(shape), grad, grad_best)
            newly = torch.zeros(n, dtype=torch.bool, device=x.device)
            newly[live] = success_l
            improved_out = torch.zeros(n, dtype=torch.bool, device=x.device)
            improved_out[live] = success_l | improved[live]
            out[live[improved_out[live]]] = point_l[improved_out[live]]
            done |= newly
            if k in checkpoints:
                oscillating = rises <= APGD_RHO * (k - last_checkpoint)
                stalled = ~halved_before & (loss_best <= best_at_checkpoint)
                halve = oscillating | stalled
                eta = torch.where(halve, eta / 2, eta)
                x_adv = torch.where(halve.view(shape), x_best, x_adv)
                grad = torch.where(halve.view(shape), grad_best, grad)
                halved_before, best_at_checkpoint = halve, loss_best.clone()
                rises.zero_()
                last_checkpoint = k
        return out, done


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
