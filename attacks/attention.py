"""Attacks whose objective is the detector's attention, not only its prediction.

An attention-based detector is audited twice over: by its predictions and by
the attention an analyst reads as the explanation. These attacks measure how
far an attacker with an L-inf budget ``eps`` (inputs scaled to [0, 1]) can
decouple the two. Each is projected signed-gradient ascent with restarts, in
plain torch, on top of ``forward_with_attention`` and the detector's
:class:`~detectors.base.TokenMap`.

What the attacker wants, as a 2x2 (rows: attention; columns: prediction)::

                        prediction kept              prediction flipped
    attention changed   attention-shift,             pgd and the standard attacks;
                        attention-hijack             attention-guided (uses the attention
                        (the explanation lies)       as a map of where to strike)
    attention kept      the clean input              stealth (evades while the
                        (nothing happened)           explanation looks unchanged)

The attention distribution ``a(x)`` (:func:`attention_distribution`, defined once
in :func:`detectors.maths.attention_distribution_of`) is the CLS row of the last
layer's attention, mean over heads, CLS column dropped, renormalised: one
probability per non-CLS token. For mean-pooled detectors (``cls_index is None``)
it is the mean over all query rows of the last layer, over all tokens.
:func:`token_positions` gives each entry's token index.

``attention-shift`` (:class:`AttentionShift`)
    Ghorbani et al. 2019 ("Interpretation of neural networks is fragile");
    Dombrowski et al. 2019 ("Explanations can be manipulated and geometry is to
    blame"). Maximises JSD(a(x + δ), a(x)) - c * relu(kappa - margin), margin =
    logit[clean prediction] - max other logit, and rejects every step that
    flips the clean prediction for the rows it flips: they keep their previous
    iterate and halve their step size (so they approach the decision boundary
    instead of retrying the rejected step). Random starts that flip the
    prediction are shrunk by halves (up to 3 times), else the row starts at x.
    Keeps per sample the iterate, over all steps and restarts, with the
    largest JSD; every kept iterate has the clean prediction. Arguments:
    ``steps`` (60), ``step_size`` (0.1, a fraction of eps), ``restarts`` (5),
    ``random_start`` (True), ``c`` (1.0), ``kappa`` (0.1, logits). The JSD's
    gradient vanishes at δ = 0, so with ``random_start=False`` the attack only
    moves once the margin term is active: keep the random start on.
``attention-hijack`` (:class:`AttentionHijack`)
    The targeted form (Dombrowski et al. 2019's targeted manipulation): moves
    attention mass onto target tokens, the ``k`` (5, capped at the number of
    distribution entries - 1) least-attended tokens of the clean input, or the
    tokens covering ``target_positions`` (None; flat indices into one input).
    Maximises log(mass on the targets) - c * relu(kappa - margin) with the same
    rejection scheme and the same arguments as ``attention-shift`` (``steps``
    30, ``step_size`` 0.1, ``restarts`` 1, ``random_start`` True, ``c`` 1.0,
    ``kappa`` 0.1). A sample succeeds when every target token is in the top-|T|
    of a(x + δ) (:func:`hijack_success`); kept per sample: a successful iterate
    first, then the one with the most target mass.
``attention-guided`` (:class:`AttentionGuided`)
    In the spirit of Patch-Fool (Fu et al. 2022): untargeted cross-entropy
    ascent on the true label, as ``pgd``, but only on the inputs covered by the
    ``k`` (5, capped at the number of entries) most-attended tokens of the
    clean input; every other input keeps its clean value. ``steps`` (20),
    ``step_size`` (0.25 x eps), ``restarts`` (1, the first restart that
    misclassifies is kept, else the last), ``random_start`` (True).
``stealth`` (:class:`Stealth`)
    After Zhang et al. 2020 ("Interpretable deep learning under fire", ADV^2):
    flips the prediction while keeping the attention close, maximising
    CE(f(x + δ), y) - lam * JSD(a(x + δ), a(x)). ``lam`` (1.0), ``steps`` (30),
    ``step_size`` (0.1 x eps), ``restarts`` (1), ``random_start`` (True).
    Keeps per sample the iterate (any restart, any step, the start included)
    that is misclassified with the lowest JSD, or the last iterate when none is.

``attention-shift`` and ``attention-hijack`` ignore ``y`` (it is only checked
for shape): the prediction they keep is the model's clean prediction.

Every random start comes from :func:`detectors.seeding.per_sample_uniform`
keyed by the sample's global index (purpose ``"<name>/start/<restart>/<eps>"``),
every loss is summed over the batch (a row's gradient never depends on its
neighbours) and every choice is made per row, so results do not depend on the
batch size. Every iterate is projected by ``domain.project``, so frozen inputs
never move and the bounds hold; the iterate stays continuous and integer
features are made whole (``domain.whole``: nearest whole raw unit within the
budget) wherever the model is evaluated, so every "prediction kept" or
"misclassified" test and every kept example is judged at the point returned. Inputs may have any rank: (N, F), (N, C, H, W),
(N, T, F).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack, positive_count
from attacks.pgd import PGD
from attacks.domain import Domain
from detectors.base import TokenMap
from detectors.maths import (attention_distribution_of, descending_order, descending_ranks, jensen_shannon,
                             token_positions_from)
from detectors.seeding import per_sample_uniform

__all__ = ["ATTENTION_ATTACKS", "AttentionGuided", "AttentionHijack", "AttentionShift", "Stealth",
           "attention_distribution", "hijack_success", "hijacked", "token_positions"]

START_SHRINKS = 3  # how many times a prediction-flipping random start is halved before falling back to x


# --------------------------------------------------------------------------- the attention distribution

def _token_map(model: nn.Module) -> TokenMap:
    """The model's TokenMap; the attention attacks need it and ``forward_with_attention``."""
    token_map = getattr(model, "token_map", None)
    if not isinstance(token_map, TokenMap) or not callable(getattr(model, "forward_with_attention", None)):
        raise ValueError(f"expected a Detector with forward_with_attention and a TokenMap, got {type(model).__name__}")
    return token_map


def token_positions(detector: nn.Module) -> torch.Tensor:
    """Token index of each entry of :func:`attention_distribution`, to map it back through the TokenMap."""
    return token_positions_from(_token_map(detector))


def _forward(model: nn.Module, x: torch.Tensor, token_map: TokenMap) -> tuple[torch.Tensor, torch.Tensor]:
    logits, attentions = model.forward_with_attention(x)
    return logits, attention_distribution_of(attentions, token_map)


def attention_distribution(detector: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """a(x): (batch, n_tokens - 1) rows summing to 1 ((batch, n_tokens) for mean-pooled models).

    Differentiable, so it can be an attack's objective; wrap in ``torch.no_grad()`` to only read it.
    """
    token_map = _token_map(detector)
    _, dist = _forward(detector, x, token_map)
    return dist


# --------------------------------------------------------------------------- helpers

def _rows(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-row tensor shaped to broadcast over an input batch of rank ``ndim``."""
    return mask.view(-1, *[1] * (ndim - 1))


def _margin(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """logit[cls] - max other logit: positive while ``cls`` is the prediction."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"expected logits of shape (batch, classes >= 2), got {tuple(logits.shape)}")
    own = logits.gather(1, cls[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), -math.inf)
    return own - others.amax(dim=1)


def _input_mask(token_map: TokenMap, tokens: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """(batch, *input_shape): True where the input is covered by one of the row's ``tokens`` (batch, k)."""
    covering = token_map.token_of_input.to(tokens.device).reshape(1, -1, 1)
    return (covering == tokens[:, None, :]).any(dim=-1).reshape(len(tokens), *input_shape)


def _entries_of_positions(token_map: TokenMap, positions: list[int]) -> torch.Tensor:
    """Distribution entries of the tokens covering flat input ``positions`` (sorted, unique)."""
    flat = token_map.token_of_input.reshape(-1)
    bad = [p for p in positions if not 0 <= int(p) < flat.numel()]
    if not positions or bad:
        raise ValueError(f"expected target_positions as flat input indices in [0, {flat.numel()}), got {positions}")
    tokens = torch.unique(flat[torch.as_tensor([int(p) for p in positions])])
    if token_map.cls_index is not None and bool((tokens == token_map.cls_index).any()):
        raise ValueError(f"target_positions {positions} include inputs covered by the CLS token")
    entry_of_token = torch.full((token_map.n_tokens,), -1, dtype=torch.long)
    entries = token_positions_from(token_map)
    entry_of_token[entries] = torch.arange(len(entries))
    return entry_of_token[tokens]


def _hijack_targets(token_map: TokenMap, clean: torch.Tensor, k: int,
                    target_positions: list[int] | None) -> torch.Tensor:
    """(batch, |T|) distribution entries to pull attention onto."""
    n = clean.shape[1]
    if target_positions is not None:
        entries = _entries_of_positions(token_map, list(target_positions))
        if len(entries) >= n:
            raise ValueError(f"target_positions cover all {n} attended tokens; nothing is left to take mass from")
        return entries.to(clean.device).expand(len(clean), -1)
    if n < 2:
        raise ValueError(f"attention-hijack needs at least 2 attended tokens, the detector has {n}")
    k = min(k, n - 1)
    return descending_order(clean)[:, n - k:]  # the k least attended (the lower index wins ties for the top)


def hijack_success(detector: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, *, k: int = 5,
                   target_positions: list[int] | None = None) -> torch.Tensor:
    """(batch,) bool: every target token (recomputed from ``x`` as the attack does) is in a(x_adv)'s top-|T|.

    Pass the ``k`` / ``target_positions`` the attack ran with.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"expected x and x_adv of the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    token_map = _token_map(detector)
    with torch.no_grad():
        clean = attention_distribution(detector, x)
        adv = attention_distribution(detector, x_adv)
    return hijacked(token_map, clean, adv, k=k, target_positions=target_positions)


def hijacked(token_map: TokenMap, clean: torch.Tensor, adv: torch.Tensor, *, k: int = 5,
             target_positions: list[int] | None = None) -> torch.Tensor:
    """:func:`hijack_success` from the attention distributions a(x) (``clean``) and a(x_adv) (``adv``)."""
    targets = _hijack_targets(token_map, clean, k, target_positions)
    return (descending_ranks(adv).gather(1, targets) < targets.shape[1]).all(dim=1)


# --------------------------------------------------------------------------- the attacks

def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, index: torch.Tensor) -> TokenMap:
    """Refuse inputs that do not fit the detector's TokenMap, before any gradient is taken."""
    token_map = _token_map(model)
    if tuple(x.shape[1:]) != tuple(token_map.token_of_input.shape):
        raise ValueError(f"expected inputs of shape (batch, {tuple(token_map.token_of_input.shape)}), "
                         f"got {tuple(x.shape)}")
    if y.shape != (len(x),) or len(index) != len(x):
        raise ValueError(f"expected y and index of shape ({len(x)},), got {tuple(y.shape)} and {len(index)}")
    if not 0 <= eps < math.inf:
        raise ValueError(f"expected a finite budget eps >= 0 (these are L-inf budget attacks), got {eps}")
    return token_map


class _AttentionAttack(Attack):
    """Signed-gradient ascent settings, argument checks and the seeded random start."""

    norm: ClassVar[str] = "linf"

    def __init__(self, *, steps: int, step_size: float, restarts: int, random_start: bool) -> None:
        if int(steps) != steps or steps < 1 or int(restarts) != restarts or restarts < 1 or not step_size > 0:
            raise ValueError(f"{self.name} needs integer steps >= 1, integer restarts >= 1 and step_size > 0; "
                             f"got steps={steps}, restarts={restarts}, step_size={step_size}")
        self.steps, self.step_size = int(steps), float(step_size)
        self.restarts, self.random_start = int(restarts), bool(random_start)

    def params(self) -> dict:
        return {"steps": self.steps, "step_size": f"{self.step_size:g}*eps", "restarts": self.restarts,
                "random_start": self.random_start}

    def _check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               index: torch.Tensor) -> TokenMap:
        return _check_inputs(model, x, y, eps, index)

    def _noise(self, x: torch.Tensor, eps: float, seed: int, index: torch.Tensor, restart: int) -> torch.Tensor:
        """A uniform draw in the eps-box, from each sample's own stream."""
        u = per_sample_uniform(x.shape[1:], index, seed=seed, purpose=f"{self.name}/start/{restart}/{eps:g}",
                               device=x.device)
        return (2 * u - 1) * eps


class _PredictionKeeping(_AttentionAttack):
    """Ascent on an attention objective that rejects, per row, every step that flips the clean prediction."""

    def __init__(self, *, steps: int = 30, step_size: float = 0.1, restarts: int = 1, random_start: bool = True,
                 c: float = 1.0, kappa: float = 0.1) -> None:
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start)
        if not c >= 0 or not kappa >= 0:
            raise ValueError(f"{self.name} needs c >= 0 and kappa >= 0, got c={c}, kappa={kappa}")
        self.c, self.kappa = float(c), float(kappa)

    def params(self) -> dict:
        return {**super().params(), "c": self.c, "kappa": self.kappa}

    def _setup(self, token_map: TokenMap, clean: torch.Tensor) -> torch.Tensor:
        """What the objective needs from the clean distribution (the distribution itself, the targets)."""
        raise NotImplementedError

    def _objective(self, dist: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Per-row attention objective to maximise (differentiable)."""
        raise NotImplementedError

    def _score(self, dist: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Per-row score that picks the iterate to keep (higher is better)."""
        return self._objective(dist, context)

    def _evaluate(self, model: nn.Module, x_adv: torch.Tensor, token_map: TokenMap, pred: torch.Tensor,
                  context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kept prediction, score, gradient of the penalised objective) at ``x_adv``."""
        x_adv = x_adv.detach().requires_grad_(True)
        logits, dist = _forward(model, x_adv, token_map)
        penalty = self.c * F.relu(self.kappa - _margin(logits, pred))
        objective = self._objective(dist, context) - penalty
        grad, = torch.autograd.grad(objective.sum(), x_adv)
        with torch.no_grad():
            return logits.argmax(1) == pred, self._score(dist.detach(), context), grad

    def _start(self, model: nn.Module, x: torch.Tensor, pred: torch.Tensor, token_map: TokenMap, eps: float,
               domain: Domain, seed: int, index: torch.Tensor, restart: int) -> torch.Tensor:
        """The random start (continuous), halved for rows whose start flips the prediction (judged at its whole
        point); x where every try flips it."""
        start = x.clone()
        if not self.random_start:
            return start
        noise = self._noise(x, eps, seed, index, restart)
        open_rows = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for shrink in range(START_SHRINKS + 1):
            candidate = domain.project(x + noise / 2 ** shrink, x, eps=eps, norm=self.norm, integral=False)
            with torch.no_grad():
                kept = model(domain.whole(candidate, x, eps=eps, norm=self.norm)).argmax(1) == pred
            take = open_rows & kept
            start[take] = candidate[take]
            open_rows &= ~kept
            if not open_rows.any():
                break
        return start

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain: Domain,
                seed: int, index: torch.Tensor) -> torch.Tensor:
        token_map = self._check(model, x, y, eps, index)
        if len(x) == 0:
            return x.clone()
        with torch.no_grad():
            logits, clean = _forward(model, x, token_map)
        pred = logits.argmax(1)
        context = self._setup(token_map, clean)
        best, best_score = x.clone(), self._score(clean, context)

        def whole(point: torch.Tensor) -> torch.Tensor:
            return domain.whole(point, x, eps=eps, norm=self.norm)

        for restart in range(self.restarts):
            # ``current`` is the continuous iterate; ``point`` its whole point, where everything is judged
            current = self._start(model, x, pred, token_map, eps, domain, seed, index, restart)
            point = whole(current)
            kept, score, grad = self._evaluate(model, point, token_map, pred, context)
            alpha = torch.full((len(x),), self.step_size * eps, device=x.device, dtype=x.dtype)
            for step in range(self.steps + 1):
                better = kept & (score > best_score)
                best[better], best_score[better] = point[better], score[better]
                if step == self.steps:
                    break
                candidate = domain.project(current + _rows(alpha, x.ndim) * grad.sign(), x, eps=eps, norm=self.norm,
                                           integral=False)
                candidate_point = whole(candidate)
                kept, score_c, grad_c = self._evaluate(model, candidate_point, token_map, pred, context)
                accept = _rows(kept, x.ndim)
                current = torch.where(accept, candidate, current)
                point = torch.where(accept, candidate_point, point)
                grad = torch.where(accept, grad_c, grad)
                score = torch.where(kept, score_c, score)
                alpha = torch.where(kept, alpha, alpha / 2)
                kept = torch.ones_like(kept)  # the current iterate of every row now keeps the prediction
        return best


class AttentionShift(_PredictionKeeping):
    """Move the attention as far as possible (JSD) from the clean one, prediction kept."""

    name = "attention-shift"
    reference = ("Ghorbani et al. 2019 (Interpretation of neural networks is fragile); Dombrowski et al. 2019 "
                 "(Explanations can be manipulated and geometry is to blame)")

    def __init__(self, *, steps: int = 60, step_size: float = 0.1, restarts: int = 5, random_start: bool = True,
                 c: float = 1.0, kappa: float = 0.1) -> None:
        # More steps and restarts than the other attention attacks: JSD ascent from a random start finds
        # different local maxima per restart (digits ViT, eps 0.3: top-5 kept 0.61 with 30 steps and one
        # restart, 0.45 with 60 steps and 5), and each restart costs one forward and backward per step.
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start, c=c,
                         kappa=kappa)

    def _setup(self, token_map, clean):
        return clean

    def _objective(self, dist, context):
        return jensen_shannon(dist, context)


class AttentionHijack(_PredictionKeeping):
    """Pull the attention onto chosen tokens (the least attended, or those covering given inputs), prediction kept."""

    name = "attention-hijack"
    reference = "Dombrowski et al. 2019 (targeted explanation manipulation); Ghorbani et al. 2019"

    def __init__(self, *, steps: int = 30, step_size: float = 0.1, restarts: int = 1, random_start: bool = True,
                 c: float = 1.0, kappa: float = 0.1, k: int = 5, target_positions: list[int] | None = None) -> None:
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start, c=c,
                         kappa=kappa)
        self.k = positive_count(self.name, k)
        if target_positions is not None and (isinstance(target_positions, (str, bytes)) or not len(target_positions)):
            raise ValueError(f"expected target_positions as a non-empty list of flat input indices, got "
                             f"{target_positions!r}")
        self.target_positions = None if target_positions is None else [int(p) for p in target_positions]

    def params(self) -> dict:
        return {**super().params(), "k": self.k, "target_positions": self.target_positions}

    def _setup(self, token_map, clean):
        return _hijack_targets(token_map, clean, self.k, self.target_positions)

    def _objective(self, dist, context):
        return dist.gather(1, context).sum(1).clamp_min(1e-12).log()

    def _score(self, dist, context):
        # success dominates (a mass is at most 1), then more mass on the targets
        success = (descending_ranks(dist).gather(1, context) < context.shape[1]).all(dim=1)
        return 2.0 * success.to(dist.dtype) + dist.gather(1, context).sum(1)


class AttentionGuided(PGD):
    """PGD on the cross-entropy restricted to the inputs under the k most attended tokens of the clean input."""

    name = "attention-guided"
    reference = "Fu et al. 2022 (Patch-Fool: Are Vision Transformers Always Robust Against Adversarial Perturbations?)"

    def __init__(self, *, steps: int = 20, step_size: float = 0.25, restarts: int = 1, random_start: bool = True,
                 k: int = 5, schedule: str = "constant", target_class: int | None = None) -> None:
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start,
                         schedule=schedule, target_class=target_class)
        self.k = positive_count(self.name, k)

    def params(self) -> dict:
        return {**super().params(), "k": self.k}

    def input_mask(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(batch, *input_shape) bool: the inputs this attack may change for each row of ``x``."""
        token_map = _token_map(model)
        with torch.no_grad():
            clean = attention_distribution(model, x)
        top = descending_order(clean)[:, :min(self.k, clean.shape[1])]
        tokens = token_positions_from(token_map).to(x.device)[top]
        return _input_mask(token_map, tokens, tuple(x.shape[1:]))

    def restrict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.input_mask(model, x)

    def perturb(self, model, x, y, *, eps, domain, seed, index):
        _check_inputs(model, x, y, eps, index)
        return super().perturb(model, x, y, eps=eps, domain=domain, seed=seed, index=index)


class Stealth(_AttentionAttack):
    """Flip the prediction while the attention stays close to the clean one (CE - lam * JSD)."""

    name = "stealth"
    reference = "Zhang et al. 2020 (Interpretable Deep Learning under Fire, ADV^2)"

    def __init__(self, *, steps: int = 30, step_size: float = 0.1, restarts: int = 1, random_start: bool = True,
                 lam: float = 1.0) -> None:
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start)
        if not lam >= 0:
            raise ValueError(f"{self.name} needs lam >= 0, got {lam}")
        self.lam = float(lam)

    def params(self) -> dict:
        return {**super().params(), "lam": self.lam}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain: Domain,
                seed: int, index: torch.Tensor) -> torch.Tensor:
        token_map = self._check(model, x, y, eps, index)
        if len(x) == 0:
            return x.clone()
        with torch.no_grad():
            _, clean = _forward(model, x, token_map)
        alpha = self.step_size * eps
        best = x.clone()
        best_jsd = torch.full((len(x),), math.inf, device=x.device)
        last = x
        for restart in range(self.restarts):
            x_adv = x.clone()  # the continuous iterate; the model sees its whole point
            if self.random_start:
                x_adv = domain.project(x + self._noise(x, eps, seed, index, restart), x, eps=eps, norm=self.norm,
                                       integral=False)
            for step in range(self.steps + 1):
                point = domain.whole(x_adv, x, eps=eps, norm=self.norm).requires_grad_(step < self.steps)
                logits, dist = _forward(model, point, token_map)
                divergence = jensen_shannon(dist, clean)
                with torch.no_grad():
                    better = (logits.argmax(1) != y) & (divergence < best_jsd)
                    best[better], best_jsd[better] = point.detach()[better], divergence[better]
                if step == self.steps:
                    break
                objective = F.cross_entropy(logits, y, reduction="sum") - self.lam * divergence.sum()
                grad, = torch.autograd.grad(objective, point)
                x_adv = domain.project(x_adv + alpha * grad.sign(), x, eps=eps, norm=self.norm, integral=False)
            last = point.detach()
        never = torch.isinf(best_jsd)
        best[never] = last[never]
        return best


ATTENTION_ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (AttentionShift, AttentionHijack,
                                                                          AttentionGuided, Stealth)}
