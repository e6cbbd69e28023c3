"""Explainers by name: ``explain(detector, x, target, ...) -> attribution`` of x's shape.

Attention explainers and captum's gradient and perturbation explainers share one
interface, so every faithfulness metric runs on all of them and attention is
always judged against gradient methods and against ``random``. Every explainer
runs with the model in eval mode and gives the caller's mode back (in
``finally``); every random draw comes from the sample's own stream, so a
sample's attribution does not depend on the batch it was computed in.

``attention``
    CLS row of the last layer's attention, mean over heads, mapped to inputs
    through the TokenMap (mean over query rows for models without CLS).
``attention-max``
    the same row, max over heads.
``rollout``
    Abnar & Zuidema 2020: per layer Ã = rownorm(mean_h A + I), R = Ã_L ... Ã_1,
    CLS row. Rows are normalised (``keepdim=True``): a known bug in a popular ViT
    implementation normalises columns instead.
``grad-attention``
    Chefer, Gur & Wolf 2021, the batch form: R = I; per layer
    R += mean_h((∇A ⊙ A)⁺) R, with ∇A the gradient of the target logit with
    respect to that layer's attention weights; CLS row. Needs attention weights
    that are part of the autograd graph (the built-in blocks return them so;
    ``nn.MultiheadAttention`` hands back a reshaped view of the weights it used,
    so the gradient is taken with respect to the view's base); a model whose
    logits do not depend on the tensors it returns is refused with the reason.
``integrated-gradients``
    captum's IntegratedGradients from the removal baseline (the training mean),
    32 steps, Gauss-Legendre, in bounded internal batches.
``saliency``, ``input-x-gradient``
    captum's Saliency (|∂logit/∂x|) and InputXGradient (x ⊙ ∂logit/∂x).
``deeplift``
    captum's DeepLift (rescale rule) from the removal baseline. On these
    transformers it runs but is only partly DeepLift: captum applies the
    rescale rule to ``nn`` activation modules of its list (ReLU, Sigmoid,
    Softmax, ...), while GELU, LayerNorm and the functional softmax of the
    attention pass plain gradients, so the attributions do not sum to
    f(x) − f(baseline) exactly. captum warns about this on every call (and that
    the input did not require gradients); both warnings are expected here and
    silenced, nothing else is.
``gradient-shap``
    Lundberg & Lee 2017, the expected-gradients estimator captum's GradientShap
    computes: mean over 16 draws of (x + ε − b) ⊙ ∇f(b + α(x + ε − b)), baselines
    b uniform in the [0, 1] input box, α ~ U(0, 1), ε ~ N(0, 0.05²). captum's class
    draws b, α and ε from the global torch and numpy RNGs for the whole batch, so
    its result would depend on the batch; the same estimator is written here with
    every draw from the sample's own stream (a test checks it equals captum's
    where both are deterministic).
``feature-ablation``
    captum's FeatureAblation: each input position alone replaced by the removal
    baseline (leave-one-out), attribution = target logit drop.
``random``
    uniform draws from each sample's own stream: the floor every explainer must beat.

On text (token ids, :mod:`detectors.inputs.text`) every explainer attributes tokens, and [CLS] and padding
get exactly 0 (the attribution is zeroed outside :func:`detectors.inputs.text.explained_positions_of`).
The removal baseline is the message with every explained token replaced by [MASK] ([UNK] without one).
The attention explainers read the CLS row as above. The gradient explainers work through the embedding
layer and reduce each token's embedding dimensions to one number:
integrated-gradients is captum's LayerIntegratedGradients on ``model.embedding`` from the [MASK] embedding
(the baseline message's embeddings), summed over the embedding dimension (so the token scores sum to
f(x) - f(baseline) up to the integral's error); saliency is the L2 norm over the embedding dimension of the
gradient with respect to the token's embedding; input-x-gradient the sum over it of gradient x embedding
(captum's LayerGradientXActivation); deeplift captum's LayerDeepLift on the embedding layer from the [MASK]
embeddings, summed; gradient-shap the estimator above in embedding space, its baseline the [MASK]
embeddings (one baseline, not a distribution: embeddings have no box to draw from) with noise
N(0, 0.05^2) on each explained token's embedding, the products summed over the embedding dimension;
feature-ablation replaces one of the message's own tokens at a time by [MASK] (captum's FeatureAblation on
the ids with a per-sample feature mask: a message of L tokens costs L perturbations, whatever the padding).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import ClassVar

import torch
from captum.attr import (DeepLift, FeatureAblation, InputXGradient, IntegratedGradients, LayerDeepLift,
                         LayerGradientXActivation, LayerIntegratedGradients, Saliency)

from detectors.base import Detector
from detectors.errors import BadInputError
from detectors.inputs.text import explained_positions_of, is_token_ids, message_width
from detectors.seeding import per_sample_normal, per_sample_uniform

FAMILIES = ("attention", "gradient", "perturbation", "baseline")
MAX_INTERNAL_BATCH = 8192


@contextmanager
def evaluating(model: torch.nn.Module):
    """The model in eval mode for the block, its own mode restored afterwards, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Explainer:
    """Subclasses declare ``name``, ``family`` and ``reference`` and implement ``_attribute``."""

    name: ClassVar[str]
    family: ClassVar[str]
    reference: ClassVar[str] = ""

    def __init__(self, *, max_inputs: int = MAX_INTERNAL_BATCH) -> None:
        # the most model inputs one forward+backward of this explainer takes (its internal batch); the audit
        # sets it from the memory plan (auditor.run.memory), wherever the explainer runs (explain, MPRT, stability)
        self.max_inputs = max(1, int(max_inputs))

    def explain(self, detector: Detector, x: torch.Tensor, target: torch.Tensor, *, baseline: torch.Tensor,
                seed: int, index: torch.Tensor, attentions: list[torch.Tensor] | None = None) -> torch.Tensor:
        """An attribution of ``x``'s shape for each sample's ``target`` class.

        ``attentions`` may hand in the detector's attention on ``x`` (from one shared
        ``forward_with_attention``); explainers that read attention then skip their own forward.
        """
        if len(x) != len(target) or len(x) != len(index):
            raise ValueError(f"expected x, target and index of one length, got {len(x)}, {len(target)}, {len(index)}")
        with evaluating(detector):
            if is_token_ids(x):
                attribution = self._attribute_tokens(detector, x, target, baseline=baseline, seed=seed, index=index,
                                                     attentions=attentions).detach()
                attribution = torch.where(explained_positions_of(detector, x), attribution.float(), 0.0)
            else:
                attribution = self._attribute(detector, x, target, baseline=baseline, seed=seed, index=index,
                                              attentions=attentions)
        attribution = attribution.detach()
        if attribution.shape != x.shape:
            raise RuntimeError(f"{self.name} returned shape {tuple(attribution.shape)} for x of {tuple(x.shape)}")
        return attribution

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        raise NotImplementedError

    def _attribute_tokens(self, detector, x, target, *, baseline, seed, index, attentions):
        """Token ids (N, T) -> (N, T): by default what :meth:`_attribute` gives (explainers that never
        differentiate with respect to the input); the module docstring says what each gradient explainer does."""
        return self._attribute(detector, x, target, baseline=baseline, seed=seed, index=index, attentions=attentions)


def _token_baseline(baseline: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The baseline ids of each row of ``x`` (text's removal baseline is per sample, (n, T))."""
    return baseline.expand_as(x).contiguous()


def _embedding_gradient(detector, embeddings: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d logit_target / d embeddings, (n, T, dim)."""
    with torch.enable_grad():
        point = embeddings.detach().requires_grad_(True)
        picked = detector.forward_embeddings(point, mask).gather(1, target.view(-1, 1)).sum()
        return torch.autograd.grad(picked, point)[0]


def _token_scores_from_row(attention: torch.Tensor, cls_index: int | None) -> torch.Tensor:
    """(batch, tokens, tokens) -> the CLS query row, or the mean over query rows without CLS."""
    return attention[:, cls_index, :] if cls_index is not None else attention.mean(dim=1)


class AttentionExplainer(Explainer):
    """Reads the attention weights only: ``scores`` turns per-layer (b, h, t, t) into (b, t)."""

    family = "attention"

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        if attentions is None:
            with torch.no_grad():
                _, attentions = detector.forward_with_attention(x)
        scores = self.scores([a.detach() for a in attentions], detector.token_map.cls_index)
        return detector.token_map.to_input(scores)

    def scores(self, attentions: list[torch.Tensor], cls_index: int | None) -> torch.Tensor:
        raise NotImplementedError


class RawAttention(AttentionExplainer):
    name = "attention"
    reference = "CLS attention of the last layer, mean over heads"

    def scores(self, attentions, cls_index):
        return _token_scores_from_row(attentions[-1].mean(dim=1), cls_index)


class MaxAttention(AttentionExplainer):
    name = "attention-max"
    reference = "CLS attention of the last layer, max over heads"

    def scores(self, attentions, cls_index):
        return _token_scores_from_row(attentions[-1].amax(dim=1), cls_index)


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema 2020 attention rollout: (batch, tokens, tokens) from per-layer (b, h, t, t)."""
    result = None
    for layer in attentions:
        mixed = layer.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device, dtype=mixed.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    return result


class Rollout(AttentionExplainer):
    name = "rollout"
    reference = "Abnar & Zuidema 2020"

    def scores(self, attentions, cls_index):
        return _token_scores_from_row(rollout(attentions), cls_index)


def gradient_weighted_rollout(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer, Gur & Wolf 2021 (batch form): R = I; per layer R += mean_h((∇A ⊙ A)⁺) R. (b, t, t)."""
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens, dtype=attentions[0].dtype, device=attentions[0].device).expand(
        attentions[0].shape[0], tokens, tokens)
    for attention, gradient in zip(attentions, gradients):
        cam = (gradient * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + cam @ relevance
    return relevance


def _graph_node(weights: torch.Tensor) -> torch.Tensor:
    """The tensor the forward computed with: ``nn.MultiheadAttention`` returns a reshaped view of its weights
    that nothing downstream uses, so the gradient must be taken with respect to the view's base."""
    base = weights._base
    return base if base is not None and base.numel() == weights.numel() else weights


class GradientAttention(Explainer):
    """Attention weighted by its gradient, rolled out over the layers. With sparse attention (sparsemax,
    entmax15) a weight outside the support is exactly 0, so its gradient-weighted term is 0 in that layer:
    a token gets relevance only through the weights where it is supported."""

    name = "grad-attention"
    family = "attention"
    reference = "Chefer, Gur & Wolf 2021 (gradient-weighted attention, batch form)"

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        with torch.enable_grad():
            # x (token ids: their embeddings) joins the graph so the attention weights do even when every
            # parameter is frozen
            if is_token_ids(x):  # on the message's columns, so the weights are those the forward used
                mask = detector.attention_mask(x)
                width = message_width(mask)
                embeddings = detector.embed(x[:, :width]).detach().requires_grad_(True)
                logits, attentions = detector.forward_embeddings(embeddings, mask[:, :width], with_attention=True)
            else:
                inputs = x.detach().clone().requires_grad_(True)
                logits, attentions = detector.forward_with_attention(inputs)
            if not all(a.requires_grad for a in attentions):
                raise BadInputError(
                    "grad-attention needs attention weights that are part of the autograd graph, but the model "
                    "returns detached ones; leave grad-attention out of --explainers or return the weights "
                    "without .detach()")
            picked = logits.gather(1, target.view(-1, 1)).sum()
            gradients = torch.autograd.grad(picked, [_graph_node(a) for a in attentions], allow_unused=True)
        if all(g is None for g in gradients):
            raise BadInputError(
                "grad-attention: the model's logits do not depend on the attention tensors it hands back (a copy, "
                "not the weights its forward used); leave grad-attention out of --explainers")
        gradients = [torch.zeros_like(a) if g is None else g.reshape(a.shape) for a, g in zip(attentions, gradients)]
        relevance = gradient_weighted_rollout([a.detach() for a in attentions], gradients)
        scores = _token_scores_from_row(relevance, detector.token_map.cls_index)
        if is_token_ids(x):  # the message's columns, back to every position
            scores = torch.nn.functional.pad(scores, (0, x.shape[1] - scores.shape[1]))
        return detector.token_map.to_input(scores)


def _internal_batch(n: int, steps: int, most: int) -> int:
    return min(max(n, 1) * steps, most)


def _by_rows(x: torch.Tensor, rows: int, attribute) -> torch.Tensor:
    """``attribute(part)`` over slices of at most ``rows`` rows of ``x``, concatenated. captum runs at least all
    of a call's rows in one pass (it ignores an internal batch below them), so a pass bound needs this."""
    if not len(x):
        return torch.zeros_like(x)
    return torch.cat([attribute(slice(start, start + rows)) for start in range(0, len(x), rows)])


class IntegratedGradientsExplainer(Explainer):
    name = "integrated-gradients"
    family = "gradient"
    reference = "Sundararajan et al. 2017 (captum)"
    steps = 32

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        rows = max(1, self.max_inputs // self.steps)  # each pass: rows x steps inputs, at most max_inputs
        baselines, integrated = baseline.expand_as(x), IntegratedGradients(detector)
        with torch.enable_grad():
            return _by_rows(x, rows, lambda part: integrated.attribute(
                x[part], baselines=baselines[part], target=target[part], n_steps=self.steps,
                internal_batch_size=_internal_batch(len(x[part]), self.steps, self.max_inputs)))

    def _attribute_tokens(self, detector, x, target, *, baseline, seed, index, attentions):
        rows = max(1, self.max_inputs // self.steps)
        baselines, integrated = _token_baseline(baseline, x), LayerIntegratedGradients(detector, detector.embedding)
        with torch.enable_grad():
            return _by_rows(x, rows, lambda part: integrated.attribute(
                x[part], baselines=baselines[part], target=target[part], n_steps=self.steps,
                internal_batch_size=_internal_batch(len(x[part]), self.steps, self.max_inputs)).sum(-1))


class SaliencyExplainer(Explainer):
    name = "saliency"
    family = "gradient"
    reference = "Simonyan et al. 2014 (captum Saliency, absolute gradient)"

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        with torch.enable_grad():
            return Saliency(detector).attribute(x.detach().clone().requires_grad_(True), target=target,
                                                abs=True)

    def _attribute_tokens(self, detector, x, target, *, baseline, seed, index, attentions):
        return _embedding_gradient(detector, detector.embed(x), detector.attention_mask(x), target).norm(dim=-1)


class InputXGradientExplainer(Explainer):
    name = "input-x-gradient"
    family = "gradient"
    reference = "Shrikumar et al. 2016 (captum InputXGradient)"

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        with torch.enable_grad():
            return InputXGradient(detector).attribute(x.detach().clone().requires_grad_(True), target=target)

    def _attribute_tokens(self, detector, x, target, *, baseline, seed, index, attentions):
        with torch.enable_grad():
            return LayerGradientXActivation(detector, detector.embedding).attribute(x, target=target).sum(-1)


class DeepLiftExplainer(Explainer):
    name = "deeplift"
    family = "gradient"
    reference = "Shrikumar et al. 2017 (captum DeepLift, rescale rule, from the removal baseline)"

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks and attributes on non-linear")
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            return DeepLift(detector).attribute(x.detach().clone(), baselines=baseline.expand_as(x).contiguous(),
                                                target=target)

    def _attribute_tokens(self, detector, x, target, *, baseline, seed, index, attentions):
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks and attributes on non-linear")
            return LayerDeepLift(detector, detector.embedding).attribute(
                x, baselines=_token_baseline(baseline, x), target=target).sum(-1)


class GradientShapExplainer(Explainer):
    name = "gradient-shap"
    family = "gradient"
    reference = "Lundberg & Lee 2017 (captum GradientShap's estimator, per-sample draws)"
    n_samples = 16
    stdev = 0.05

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        draws, shape = self.n_samples, x.shape[1:]
        per_draw = (draws, *shape)
        baselines = per_sample_uniform(per_draw, index, seed=seed, purpose="explainer/gradient-shap/baseline",
                                       device=x.device)
        noise = self.stdev * per_sample_normal(per_draw, index, seed=seed, purpose="explainer/gradient-shap/noise",
                                               device=x.device)
        alpha = per_sample_uniform((draws,), index, seed=seed, purpose="explainer/gradient-shap/alpha",
                                   device=x.device)
        noisy = (x[:, None] + noise).flatten(0, 1)
        baselines = baselines.flatten(0, 1)
        alpha = alpha.reshape(-1, *([1] * len(shape)))
        targets = target.repeat_interleave(draws)
        gradients = torch.empty_like(noisy)
        chunk = self.max_inputs
        with torch.enable_grad():
            for start in range(0, len(noisy), chunk):
                rows = slice(start, start + chunk)
                point = (baselines[rows] + alpha[rows] * (noisy[rows] - baselines[rows])).requires_grad_(True)
                picked = detector(point).gather(1, targets[rows].view(-1, 1)).sum()
                gradients[rows] = torch.autograd.grad(picked, point)[0]
        return ((noisy - baselines) * gradients).reshape(len(x), draws, *shape).mean(dim=1)

    def _attribute_tokens(self, detector, x, target, *, baseline, seed, index, attentions):
        draws, (n, tokens) = self.n_samples, x.shape
        with torch.no_grad():
            embeddings, references = detector.embed(x), detector.embed(_token_baseline(baseline, x))
        dim = embeddings.shape[-1]
        keep = explained_positions_of(detector, x)[:, None, :, None]
        noise = self.stdev * per_sample_normal((draws, tokens, dim), index, seed=seed,
                                               purpose="explainer/gradient-shap/noise", device=x.device) * keep
        alpha = per_sample_uniform((draws,), index, seed=seed, purpose="explainer/gradient-shap/alpha",
                                   device=x.device).reshape(n, draws, 1, 1)
        noisy = embeddings[:, None] + noise
        reference = references[:, None].expand_as(noisy)
        points = (reference + alpha * (noisy - reference)).flatten(0, 1)
        mask = detector.attention_mask(x).repeat_interleave(draws, dim=0)
        targets = target.repeat_interleave(draws)
        gradients = torch.empty_like(points)
        for start in range(0, len(points), self.max_inputs):
            rows = slice(start, start + self.max_inputs)
            gradients[rows] = _embedding_gradient(detector, points[rows], mask[rows], targets[rows])
        return ((noisy - reference) * gradients.reshape(noisy.shape)).sum(-1).mean(dim=1)


class FeatureAblationExplainer(Explainer):
    name = "feature-ablation"
    family = "perturbation"
    reference = "leave-one-out against the removal baseline (captum FeatureAblation)"

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        # each pass: rows x perturbations_per_eval inputs, at most max_inputs
        rows = max(1, min(len(x), self.max_inputs))
        per_eval = max(1, min(x[0].numel() if len(x) else 1, self.max_inputs // rows))
        baselines, ablation = baseline.expand_as(x).contiguous(), FeatureAblation(detector)
        with torch.no_grad():
            return _by_rows(x, rows, lambda part: ablation.attribute(
                x[part], baselines=baselines[part], target=target[part], perturbations_per_eval=per_eval))

    def _attribute_tokens(self, detector, x, target, *, baseline, seed, index, attentions):
        """Each of a message's own tokens alone (captum's per-sample ``feature_mask``): the frame ([CLS], [SEP],
        padding) joins the group of its nearest message token, which changes nothing as the baseline keeps the
        frame, so a message of L tokens costs L perturbations, not one per position."""
        explained = explained_positions_of(detector, x)
        groups = (explained.cumsum(1) - 1).clamp_min(0)
        tokens = max(1, int(explained.sum(1).max()) if len(x) else 1)
        rows = max(1, min(len(x), self.max_inputs))
        per_eval = max(1, min(tokens, self.max_inputs // rows))
        baselines, ablation = _token_baseline(baseline, x), FeatureAblation(detector)
        with torch.no_grad():
            return _by_rows(x, rows, lambda part: ablation.attribute(
                x[part], baselines=baselines[part], target=target[part], feature_mask=groups[part],
                perturbations_per_eval=per_eval))


class RandomExplainer(Explainer):
    name = "random"
    family = "baseline"
    reference = "uniform noise from per-sample streams"

    def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
        return per_sample_uniform(x.shape[1:], index, seed=seed, purpose="explainer/random", device=x.device)


EXPLAINERS: dict[str, type[Explainer]] = {
    cls.name: cls for cls in (RawAttention, MaxAttention, Rollout, GradientAttention, IntegratedGradientsExplainer,
                              SaliencyExplainer, InputXGradientExplainer, DeepLiftExplainer, GradientShapExplainer,
                              FeatureAblationExplainer, RandomExplainer)
}


def make_explainer(name: str, *, max_inputs: int = MAX_INTERNAL_BATCH) -> Explainer:
    """A registered explainer; ``max_inputs`` bounds the model inputs of one of its passes."""
    try:
        return EXPLAINERS[name](max_inputs=max_inputs)
    except KeyError:
        raise ValueError(f"unknown explainer {name!r}; registered: {', '.join(sorted(EXPLAINERS))}") from None
