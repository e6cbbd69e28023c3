"""Faithfulness metrics of attributions, computed batched: does removing what an explainer points at
change the decision?

Conventions shared by every metric (so anyone can recompute them): attributions target the
predicted class y; p_y is the softmax probability of y; features are ranked by signed attribution,
descending, ties by feature index; "removing" a feature sets it to the removal baseline (the
training-split mean by default, all zeros, or a per-sample Gaussian blur for images, see
:func:`detectors.inputs.removal_baseline`). Every masked input of every sample is stacked into a few large forward
passes of at most ``max_batch`` inputs under ``torch.inference_mode``; every random draw comes from
the sample's own stream (:mod:`detectors.seeding`), so no value depends on batch size or sharding.

``deletion`` / ``insertion``
    Deletion replaces the top-ranked features with the baseline, one feature per step from 0 to all
    F (for F > 64, in 32 equal steps); insertion starts from the baseline and restores features in
    the same order. The curve is p_y, the x-axis the fraction of features changed in [0, 1], the
    area the trapezoid rule.
``deletion_gain``
    1 - deletion_auc / (mean deletion_auc of 8 random rankings of the same sample). The rankings are
    drawn from a stream of their own (not the ``random`` explainer's) and their curves are computed
    once per run, shared by every explainer. Above 0: better than chance.
``comprehensiveness`` / ``sufficiency``
    ERASER's AOPC (DeYoung et al. 2020) over k = ceil(q F), at least 1, for q in 1, 5, 10, 20, 50%:
    comprehensiveness = mean_q [p_y(x) - p_y(x with its top k removed)] (higher is better),
    sufficiency = mean_q [p_y(x) - p_y(x with only its top k kept)] (lower is better).
``correlation``
    Bhatt et al. 2020: the Pearson correlation, over 64 random subsets S of max(1, round(0.2 F))
    features, between sum_{i in S} a_i and p_y(x) - p_y(x with S removed). NaN (the sample does not
    count) where either side is constant (an attribution side with no spread, or probability
    changes that all lie within ``CONSTANT_PROBABILITY`` of each other, float32 rounding).
``infidelity``
    Infidelity (Yeh et al. 2019) of p_y, with 16 perturbations per sample that move each feature a
    random fraction eps_i ~ N(0, 0.1^2) of the way to the baseline: x' = x - eps * (x - baseline),
    measured as mean_k (beta * sum_i a_i eps_ki - (p_y(x) - p_y(x'_k)))^2. The perturbation paired with
    the attribution is eps itself (captum's ``multiply_by_inputs`` convention): an attribution a_i that
    is feature i's contribution relative to the baseline (integrated gradients, for instance) explains
    p_y(x) - p_y(x') = sum_i a_i eps_i exactly when p_y is linear, and then the infidelity is 0. beta is
    each sample's least-squares scale, so an explainer is not punished for the arbitrary scale of its
    scores (attention weights sum to 1), but constrained to beta >= 0: captum's ``normalize=True`` fits
    an unconstrained beta, under which the negated exact attribution scores 0 too. With beta >= 0 an
    attribution pointing the wrong way scores mean_k (p_y(x) - p_y(x'_k))^2, as badly as no attribution.
    Written here because captum has no sign-constrained scale; the perturbations and the formula are
    captum's. Lower is better.
``max_sensitivity``
    captum.metrics.sensitivity_max (Yeh et al. 2019): max over 8 perturbations drawn uniformly from
    the L-infinity ball of radius 0.02 in [0, 1] units (clipped to the [0, 1] box) of
    ||e(x) - e(x')|| / ||e(x)||, where e re-runs the explainer. Lower is better. Not for ``random``:
    its draws depend on the sample's index only, so it would score a perfect 0 by construction (listed
    as skipped with that reason).
``deletion_auc_diff.attention~OTHER``
    Per sample, OTHER's deletion AUC minus attention's, for every other explainer whose deletion curve
    ran (random and integrated-gradients among them): above 0, attention's top features hurt the
    prediction sooner. Its mean's interval is the run's paired bootstrap over the same resamples as
    every metric, so "attention is more faithful than OTHER" is said only when the interval lies above 0.

On text (``explained``: the positions each sample's attribution explains, its real tokens after [CLS]) a
"feature" is a token of the message: rankings, counts and subsets run over each message's own L tokens,
[CLS] and padding are never removed, and a removed token is *masked* (replaced by [MASK], the position
kept), not deleted from the message, in ERASER's terms (DeYoung et al. 2020). Deletion and insertion step
through the fractions 0, 1/S, ..., 1 of the message (S = min(32, T)), removing round(fraction * L) tokens;
comprehensiveness and sufficiency take k = ceil(q L) tokens; correlation's subsets hold max(1, round(0.2 L))
of the message's tokens. infidelity and max_sensitivity perturb inputs continuously, which token ids cannot
be: on text they are skipped with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from captum.metrics import sensitivity_max

from detectors.errors import BadInputError
from detectors.maths import descending_ranks
from detectors.seeding import per_sample_normal, per_sample_uniform

MAX_UNIT_STEPS = 64
COARSE_STEPS = 32
RANDOM_RANKINGS = 8
AOPC_SHARES = (0.01, 0.05, 0.10, 0.20, 0.50)
CORRELATION_SUBSETS = 64
CORRELATION_SUBSET_SHARE = 0.2
CONSTANT_PROBABILITY = 1e-6
INFIDELITY_STD = 0.1
INFIDELITY_PERTURBATIONS = 16
SENSITIVITY_RADIUS = 0.02
SENSITIVITY_PERTURBATIONS = 8

FAITHFULNESS_METRICS = ("deletion", "insertion", "deletion_gain", "comprehensiveness", "sufficiency",
                        "correlation", "infidelity", "max_sensitivity")
NOT_FOR_RANDOM = ("random's draws depend on the sample's index only, not on the input, so its max-sensitivity is 0 "
                  "by construction: a perfect score that says nothing")
NOT_ON_TOKENS = ("{metric} moves inputs continuously (a fraction of the way to the baseline, or within an L-inf "
                 "ball), which token ids cannot be moved: not defined on text")
DIFF_LEAD = "attention"  # the explainer every deletion_auc_diff compares with the others
METRIC_NAMES = {"deletion": "faithfulness.deletion_auc", "insertion": "faithfulness.insertion_auc",
                "deletion_gain": "faithfulness.deletion_gain",
                "comprehensiveness": "faithfulness.comprehensiveness", "sufficiency": "faithfulness.sufficiency",
                "correlation": "faithfulness.correlation", "infidelity": "faithfulness.infidelity",
                "max_sensitivity": "stability.max_sensitivity"}


def _flat_baseline(baseline: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n, F): one baseline row per sample, from a shared (*shape) or a per-sample (n, *shape) baseline."""
    baseline = baseline.to(x.device, x.dtype)
    if baseline.shape == x.shape[1:]:
        return baseline.reshape(1, -1).expand(len(x), -1)
    if baseline.shape == x.shape:
        return baseline.reshape(len(x), -1)
    raise ValueError(f"expected a baseline of shape {tuple(x.shape[1:])} or {tuple(x.shape)}, "
                     f"got {tuple(baseline.shape)}")


def _baseline_rows(baseline: torch.Tensor, x: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    return baseline[rows] if baseline.shape == x.shape else baseline


@torch.inference_mode()
def masked_probabilities(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor,
                         masks: Callable[[slice], torch.Tensor], n_masks: int, *,
                         max_batch: int = 16384, log: bool = False) -> torch.Tensor:
    """(n, n_masks) float64 p_y (``log``: log p_y, from log_softmax) of every masked copy of every sample.

    ``masks(rows)`` returns (m, n_masks, F) booleans for the samples ``rows``, True where a feature is
    replaced by the baseline; ``max_batch // n_masks`` samples go into one forward pass (at least one).
    """
    model.eval()
    n, shape = len(x), x.shape[1:]
    flat_x, flat_base = x.flatten(1), _flat_baseline(baseline, x)
    chunk = max(1, max_batch // n_masks)
    out = torch.empty(n, n_masks, dtype=torch.float64)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        removed = masks(rows)
        m = removed.shape[0]
        batch = torch.where(removed, flat_base[rows, None, :], flat_x[rows, None, :]).reshape(-1, *shape)
        proba = (torch.log_softmax if log else torch.softmax)(model(batch), dim=1).reshape(m, n_masks, -1)
        out[rows] = proba.gather(2, target[rows].view(m, 1, 1).expand(m, n_masks, 1))[..., 0].double().cpu()
    return out


REMOVAL_KINDS = ("deletion", "insertion")


@dataclass
class RemovalCurves:
    fractions: np.ndarray  # (steps,)
    deletion: np.ndarray | None  # (samples, steps); None when not asked for
    insertion: np.ndarray | None  # (samples, steps); None when not asked for

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.trapezoid(self._curve("deletion"), self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.trapezoid(self._curve("insertion"), self.fractions, axis=1)

    def _curve(self, kind: str) -> np.ndarray:
        curve = getattr(self, kind)
        if curve is None:
            raise ValueError(f"the {kind} curve was not computed; pass kinds including {kind!r}")
        return curve


def removal_counts(n_features: int) -> np.ndarray:
    """How many features are changed at each step: 0..F, or 33 equal steps for F > 64."""
    if n_features <= MAX_UNIT_STEPS:
        return np.arange(n_features + 1)
    return np.round(np.linspace(0, n_features, COARSE_STEPS + 1)).astype(np.int64)


def aopc_counts(n_features: int) -> np.ndarray:
    """k for each AOPC share: ceil(share * F), at least 1 and at most F."""
    return np.array([min(n_features, max(1, math.ceil(share * n_features - 1e-9))) for share in AOPC_SHARES])


def feature_ranks(attribution: torch.Tensor, explained: torch.Tensor | None = None) -> torch.Tensor:
    """rank[i, f] = position of feature f when sample i's attributions are sorted descending, ties by index
    (:func:`detectors.maths.descending_ranks` of the flattened float64 attributions, on the CPU); with
    ``explained`` (n, F) booleans, the positions it leaves out rank after every explained one."""
    scores = attribution.flatten(1).double().cpu()
    if explained is not None:
        scores = scores.masked_fill(~explained.flatten(1).cpu(), -math.inf)
    return descending_ranks(scores)


def _lengths(x: torch.Tensor, explained: torch.Tensor | None) -> torch.Tensor:
    """(n,) how many positions of each sample are explained (every position without ``explained``)."""
    if explained is None:
        return torch.full((len(x),), x[0].numel(), dtype=torch.int64, device=x.device)
    return explained.flatten(1).sum(1).to(x.device)


def step_counts(x: torch.Tensor, explained: torch.Tensor | None) -> tuple[np.ndarray, torch.Tensor]:
    """(fractions (steps,), counts (n, steps)): how many positions each deletion/insertion step changes.
    Without ``explained``: :func:`removal_counts` of F for every sample; with it: round(fraction * L) of each
    sample's L explained positions, fractions 0, 1/S, ..., 1 with S = min(COARSE_STEPS, F)."""
    n_features = x[0].numel()
    if explained is None:
        counts = torch.as_tensor(removal_counts(n_features), device=x.device)
        return counts.cpu().numpy() / n_features, counts[None, :].expand(len(x), -1)
    fractions = np.linspace(0.0, 1.0, min(COARSE_STEPS, n_features) + 1)
    lengths = _lengths(x, explained).double()
    counts = torch.round(lengths[:, None] * torch.as_tensor(fractions, device=x.device)[None, :]).long()
    return fractions, counts


def removal_curves(model: torch.nn.Module, x: torch.Tensor, attribution: torch.Tensor, target: torch.Tensor,
                   baseline: torch.Tensor, *, max_batch: int = 16384,
                   kinds: tuple[str, ...] = REMOVAL_KINDS, explained: torch.Tensor | None = None) -> RemovalCurves:
    """Deletion and insertion curves of every sample, ``max_batch`` model inputs per forward pass.
    ``kinds``: the curves to compute (the others are None); one curve costs half the passes of both.
    ``explained``: (n, F) the positions that count (text: each message's tokens), else every position."""
    unknown = [kind for kind in kinds if kind not in REMOVAL_KINDS]
    if unknown or not kinds:
        raise ValueError(f"expected kinds from {REMOVAL_KINDS}, got {kinds!r}")
    wanted = [kind for kind in REMOVAL_KINDS if kind in kinds]
    fractions, counts = step_counts(x, explained)
    ranks = feature_ranks(attribution, explained).to(x.device)
    steps = counts.shape[1]

    def masks(rows):
        changed = ranks[rows, None, :] < counts[rows, :, None]
        # deletion replaces the top-ranked features by the baseline; insertion keeps only them
        return torch.cat([changed if kind == "deletion" else ~changed for kind in wanted], dim=1)

    proba = masked_probabilities(model, x, target, baseline, masks, len(wanted) * steps,
                                 max_batch=max_batch).numpy()
    curves = {kind: proba[:, i * steps:(i + 1) * steps] for i, kind in enumerate(wanted)}
    return RemovalCurves(fractions=fractions, deletion=curves.get("deletion"),
                         insertion=curves.get("insertion"))


def random_ranking_scores(shape: tuple[int, ...], index: torch.Tensor, *, seed: int) -> torch.Tensor:
    """(n, RANDOM_RANKINGS, F) uniform scores whose order is each ranking, from the samples' own streams."""
    n_features = int(np.prod(shape))
    return per_sample_uniform((RANDOM_RANKINGS, n_features), index, seed=seed,
                              purpose="faithfulness/deletion_gain/rankings")


def random_deletion_auc(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor, *,
                        seed: int, index: torch.Tensor, max_batch: int = 16384,
                        explained: torch.Tensor | None = None) -> np.ndarray:
    """(n,) mean deletion AUC of RANDOM_RANKINGS random rankings per sample; one pass shared by every explainer."""
    n_features = x[0].numel()
    fractions, counts = step_counts(x, explained)
    steps = counts.shape[1]
    every = None if explained is None else explained.flatten(1).repeat_interleave(RANDOM_RANKINGS, dim=0)
    ranks = feature_ranks(random_ranking_scores(x.shape[1:], index, seed=seed).reshape(-1, n_features), every)
    ranks = ranks.reshape(len(x), RANDOM_RANKINGS, n_features).to(x.device)

    def masks(rows):
        return (ranks[rows, :, None, :] < counts[rows, None, :, None]).flatten(1, 2)

    proba = masked_probabilities(model, x, target, baseline, masks, RANDOM_RANKINGS * steps, max_batch=max_batch)
    curves = proba.numpy().reshape(len(x), RANDOM_RANKINGS, steps)
    return np.trapezoid(curves, fractions, axis=2).mean(axis=1)


def deletion_gain(deletion_auc: np.ndarray, random_auc: np.ndarray) -> np.ndarray:
    """1 - deletion_auc / random_auc per sample; NaN where the random rankings' area is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(random_auc > 0, 1.0 - deletion_auc / random_auc, np.nan)


def aopc(model: torch.nn.Module, x: torch.Tensor, attribution: torch.Tensor, target: torch.Tensor,
         baseline: torch.Tensor, *, max_batch: int = 16384,
         explained: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(comprehensiveness, sufficiency), each (n,): ERASER's AOPC over the AOPC_SHARES of features (with
    ``explained``: of each sample's explained positions, the others never removed)."""
    lengths = _lengths(x, explained).cpu().numpy()
    counts = torch.as_tensor(np.stack([aopc_counts(int(length)) if length else np.zeros(len(AOPC_SHARES), np.int64)
                                       for length in np.unique(lengths)]), device=x.device)
    counts = counts[torch.as_tensor(np.searchsorted(np.unique(lengths), lengths), device=x.device)]
    ranks = feature_ranks(attribution, explained).to(x.device)
    outside = None if explained is None else ~explained.flatten(1).to(x.device)
    k = counts.shape[1]

    def masks(rows):
        top = ranks[rows, None, :] < counts[rows, :, None]
        nothing = torch.zeros_like(top[:, :1])
        rest = ~top if outside is None else ~top & ~outside[rows, None, :]
        return torch.cat([nothing, top, rest], dim=1)

    proba = masked_probabilities(model, x, target, baseline, masks, 1 + 2 * k, max_batch=max_batch).numpy()
    full = proba[:, :1]
    return (full - proba[:, 1:1 + k]).mean(axis=1), (full - proba[:, 1 + k:]).mean(axis=1)


def correlation_subsets(n_features: int, index: torch.Tensor, *, seed: int,
                        explained: torch.Tensor | None = None) -> torch.Tensor:
    """(n, CORRELATION_SUBSETS, F) booleans: each sample's random subsets of max(1, round(0.2 F)) features
    (with ``explained`` (n, F): max(1, round(0.2 L)) of its L explained positions)."""
    size = max(1, round(CORRELATION_SUBSET_SHARE * n_features))
    scores = per_sample_uniform((CORRELATION_SUBSETS, n_features), index, seed=seed,
                                purpose="faithfulness/correlation/subsets")
    if explained is None:
        order = torch.argsort(scores, dim=2, stable=True)
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(2, order[..., :size], True)
    explained = explained.flatten(1).cpu()
    sizes = (explained.sum(1).double() * CORRELATION_SUBSET_SHARE).round().long().clamp_min(1)
    scores = scores.masked_fill(~explained[:, None, :], math.inf)
    ranks = torch.argsort(torch.argsort(scores, dim=2, stable=True), dim=2)
    return (ranks < sizes[:, None, None]) & explained[:, None, :]


def faithfulness_correlation(model: torch.nn.Module, x: torch.Tensor, attribution: torch.Tensor,
                             target: torch.Tensor, baseline: torch.Tensor, *, seed: int, index: torch.Tensor,
                             subsets: torch.Tensor | None = None, max_batch: int = 16384,
                             explained: torch.Tensor | None = None) -> np.ndarray:
    """(n,) Pearson correlation between attribution sums and probability drops over random subsets.

    ``subsets`` (n, S, F) booleans replace the seeded draw (a comparison with another implementation
    feeds the same subsets to both)."""
    n_features = x[0].numel()
    if subsets is None:
        subsets = correlation_subsets(n_features, index, seed=seed, explained=explained)
    subsets = subsets.to(x.device)
    n_subsets = subsets.shape[1]

    def masks(rows):
        return torch.cat([torch.zeros_like(subsets[rows, :1]), subsets[rows]], dim=1)

    proba = masked_probabilities(model, x, target, baseline, masks, 1 + n_subsets, max_batch=max_batch).numpy()
    drop = proba[:, :1] - proba[:, 1:]
    flat = attribution.flatten(1).double().cpu().numpy()
    sums = np.einsum("nsf,nf->ns", subsets.cpu().numpy().astype(np.float64), flat)
    return _pearson_rows(sums, drop, constant_y=CONSTANT_PROBABILITY)


def _pearson_rows(a: np.ndarray, b: np.ndarray, *, constant_y: float) -> np.ndarray:
    """Row-wise Pearson correlation; NaN where ``a`` has no spread or ``b`` spans at most ``constant_y``."""
    a = a - a.mean(axis=1, keepdims=True)
    b_centered = b - b.mean(axis=1, keepdims=True)
    scale = np.sqrt((a ** 2).sum(1) * (b_centered ** 2).sum(1))
    spread_a = np.ptp(a, axis=1) > 1e-12 * np.maximum(np.abs(a).max(axis=1), 1e-300)
    varies = spread_a & (np.ptp(b, axis=1) > constant_y) & (scale > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (a * b_centered).sum(1) / scale
    return np.where(varies, np.clip(rho, -1.0, 1.0), np.nan)


def infidelity_per_sample(model: torch.nn.Module, x: torch.Tensor, attribution: torch.Tensor, target: torch.Tensor,
                          baseline: torch.Tensor, *, seed: int, index: torch.Tensor,
                          max_batch: int = 16384) -> np.ndarray:
    """(n,) infidelity of p_y with the non-negative least-squares scale described in the module."""
    model.eval()
    k = INFIDELITY_PERTURBATIONS
    chunk = max(1, max_batch // (k + 1))
    out = np.empty(len(x))
    with torch.inference_mode():
        for start in range(0, len(x), chunk):
            rows = slice(start, min(start + chunk, len(x)))
            xs = x[rows]
            eps = INFIDELITY_STD * per_sample_normal((k, *x.shape[1:]), index[rows], seed=seed,
                                                     purpose="faithfulness/infidelity").to(x.device, x.dtype)
            toward = (xs - _baseline_rows(baseline, x, rows).to(x.dtype))[:, None]
            perturbed = (xs[:, None] - eps * toward).reshape(-1, *x.shape[1:])
            proba = torch.softmax(model(torch.cat([xs, perturbed])), dim=1).double()
            y = target[rows].to(x.device)
            p_clean = proba[:len(xs)].gather(1, y[:, None])
            p_perturbed = proba[len(xs):].reshape(len(xs), k, -1).gather(2, y[:, None, None].expand(-1, k, 1))[..., 0]
            drop = p_clean - p_perturbed  # (m, k)
            explained = (eps.double() * attribution[rows].to(x.device).double()[:, None]).flatten(2).sum(2)
            energy = (explained ** 2).sum(1)
            beta = torch.where(energy > 0, (explained * drop).sum(1) / energy.clamp_min(1e-300), 0.0).clamp_min(0.0)
            out[rows] = ((beta[:, None] * explained - drop) ** 2).mean(1).cpu().numpy()
    return out


def max_sensitivity(model: torch.nn.Module, explainer, x: torch.Tensor, target: torch.Tensor,
                    baseline: torch.Tensor, *, seed: int, index: torch.Tensor, max_batch: int = 16384) -> np.ndarray:
    """(n,) captum sensitivity_max of ``explainer``, re-run on ``max_batch`` perturbed inputs at a time."""
    k = SENSITIVITY_PERTURBATIONS
    chunk = max(1, min(max_batch, getattr(explainer, "max_inputs", max_batch)) // k)
    out = np.empty(len(x))
    for start in range(0, len(x), chunk):
        rows = slice(start, min(start + chunk, len(x)))
        xs, m = x[rows], len(x[rows])
        noise = per_sample_uniform((k, *x.shape[1:]), index[rows], seed=seed, purpose="stability/max_sensitivity")
        noise = (2 * noise - 1).to(x.device, x.dtype).reshape(-1, *x.shape[1:]) * SENSITIVITY_RADIUS
        base = _baseline_rows(baseline, x, rows)

        def perturb(inputs):
            if inputs.shape != noise.shape:
                raise ValueError(f"captum asked for perturbations of {tuple(inputs.shape)}, prepared "
                                 f"{tuple(noise.shape)}: call sensitivity_max with max_examples_per_batch=None")
            return (inputs + noise).clamp(0.0, 1.0)

        def explain(inputs):
            inputs = inputs[0] if isinstance(inputs, tuple) else inputs
            repeat = len(inputs) // m
            rows_base = base.repeat_interleave(repeat, dim=0) if base.shape == xs.shape else base
            with torch.enable_grad():  # captum calls this under no_grad; gradient explainers need autograd
                attribution = explainer.explain(model, inputs, target[rows].repeat_interleave(repeat),
                                                baseline=rows_base, seed=seed,
                                                index=index[rows].repeat_interleave(repeat)).detach()
            return (attribution,)  # captum iterates over the first call's result as a tuple of inputs

        values = sensitivity_max(explain, xs, perturb_func=perturb, n_perturb_samples=k,
                                 max_examples_per_batch=None)
        out[rows] = values.double().cpu().numpy()
    return out


def check_metric_names(names) -> tuple[str, ...]:
    unknown = [name for name in names if name not in FAITHFULNESS_METRICS]
    if unknown:
        raise BadInputError(f"unknown faithfulness metric {unknown[0]!r}; choose from {', '.join(FAITHFULNESS_METRICS)}")
    return tuple(names)
