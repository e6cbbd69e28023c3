"""Sanity checks of explanations: does the explanation depend on the model, does the decision depend
on the attention?

``sanity.mprt.EXPLAINER`` — Adebayo et al. 2018, cascading model-parameter randomisation. On a deep
copy of the detector the layers are re-initialised top-down, cumulatively: the head (with the final
norm), then the last block, ..., the first block, then the embeddings. After each step the explainer
runs on the randomised model (same inputs, same target class: the trained model's prediction) and
each sample's ABSOLUTE Spearman rank correlation with the trained model's attribution (over input
positions, on text over the message's own tokens only: the tied zeros of [CLS], [SEP] and padding
would lift it; signed attributions, average ranks for ties) is taken, as Adebayo et al. report it (an
explanation that merely flips sign has not become independent of the model). The metric is the value
after the last step, per sample, in [0, 1]; HIGH means the explanation survives the destruction of
the model, i.e. it ignores the model: a failed sanity check, so lower is better. One pass rule,
:func:`auditor.verdict.mprt_verdict`: the check passes when the upper end of the 95% interval lies below
``MPRT_PASS_BELOW`` (0.5), fails when the lower end lies at or above it, and is undecided otherwise.
The whole curve (mean over samples, top layer first) goes to the report. Re-initialisation calls
each module's ``reset_parameters`` and redraws any other parameter from N(0, σ²) with σ its own
standard deviation (0.02 when that is 0), under a forked RNG seeded from the run seed: the caller's
RNG is untouched. Stochastic explainers keep the draws of the trained model's explanation at every
step (the same seed and sample index), so their sampling noise cannot lower the value: an explainer
that ignores the model (``random``, or the input itself) scores 1. To bound the cost (one
explanation per explainer and layer) MPRT runs on ``MPRT_SAMPLES`` samples spread evenly over the
audited rows (global indices floor(j * N / MPRT_SAMPLES), so a sharded audit shares the work); the
rest are NaN.

``sanity.flip_rate.attention`` — Serrano & Smith 2019: in the last layer, the CLS row's single
highest weight (the token with the highest weight averaged over heads, CLS itself excluded) is set to
zero in every head and each head's row is renormalised, inside the forward; the share of samples whose
predicted class then changes. ``sanity.flip_rate.random`` — the same with a token drawn uniformly from
the non-CLS tokens, from each sample's own stream. On text both tokens are the message's own (never
padding, [SEP] or </s>). Attention that explains the decision should flip it
far more often when its top weight is removed than when a random one is.
With sparse attention (sparsemax, entmax15) a head whose whole mass sat on the zeroed token is left with
an all-zero row, and the random token is often one whose weight was 0 already (zeroing it changes
nothing), so the random rate is lower than under softmax by construction.

``sanity.uniform_attention.prediction_kept`` / ``.accuracy`` — Wiegreffe & Pinter 2019 ("Attention is not
not explanation"), the uniform-weights baseline: every attention layer's weights are replaced, inside the
forward and all layers at once, by uniform weights over the keys each query may attend (every token for the
built-in blocks; the keys no mask blocks for ``nn.MultiheadAttention``). Per sample, 1.0 when the predicted
class is unchanged (``prediction_kept``) and 1.0 when it is the true class (``accuracy``). At or above
``UNUSED_ATTENTION_KEPT`` (0.95) of predictions kept, attention does not drive the model and heat maps of it
explain little.

Both interventions need attention that can be edited inside the forward: the built-in blocks
(``detectors.blocks.edited_attention``) or, for a ``python:`` model whose attention is captured from
``nn.MultiheadAttention`` modules, those modules with their output recomputed from their own value and output
projections (``detectors.foreign_editing.edited_multihead_attention``); for an ``hf:`` model the modules that
compute its eager attention, through an attention function registered with transformers
(``detectors.huggingface.edited_attention``). Other models are skipped with the reason.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from auditor.stages.explainers import Explainer, evaluating
from auditor.catalogue.specs import SANITY_SPECS as SPECS, FLIP_RATE_METRICS, UNIFORM_METRICS, UNUSED_ATTENTION_KEPT
from auditor.metrics import MPRT_PASS_BELOW
from auditor.stages.base import Block, Stage
from detectors.blocks import AttentionEdit, SelfAttention, edited_attention
from detectors.foreign import ForeignDetector, captured_attention_modules
from detectors.foreign_editing import edited_multihead_attention, multihead_edit_unsupported
from detectors.huggingface import HuggingFaceDetector
from detectors.huggingface_editing import edited_attention as edited_pretrained_attention
from detectors.maths import spearman
from detectors.seeding import per_sample_uniform, stream_seed

MPRT_SAMPLES = 256


def spearman_rows(a: torch.Tensor, b: torch.Tensor, explained: torch.Tensor | None = None) -> np.ndarray:
    """Spearman's ρ of each sample's flattened ``a`` with its ``b`` (:func:`detectors.maths.spearman`, average
    ranks); NaN where one is constant. ``explained`` (of ``a``'s shape): the positions that count, each
    sample's own (text: the message's tokens, whose padding's tied zeros would otherwise lift ρ); None: all."""
    a, b = a.flatten(1).double().cpu(), b.flatten(1).double().cpu()
    if explained is None:
        return spearman(a, b).numpy()
    explained = explained.flatten(1).cpu()
    counts = explained.sum(1)
    out = np.full(len(a), np.nan)
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero().flatten()
        if count > 1:  # rows with as many message tokens stack into one batch
            keep = explained[rows]
            out[rows.numpy()] = spearman(a[rows][keep].view(len(rows), count),
                                         b[rows][keep].view(len(rows), count)).numpy()
    return out


def cascade_layers(detector: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The layers to re-initialise, top (output) first.

    Built-in detectors: head (with the encoder's final norm), block L, ..., block 1, embeddings (every
    parameter left). Other models: their direct children holding parameters, last registered first.
    """
    encoder = getattr(detector, "encoder", None)
    head = getattr(detector, "head", None)
    if head is not None and encoder is not None and hasattr(encoder, "blocks"):
        steps = [("head", [head, encoder.norm])]
        steps += [(f"block {i + 1}", [block]) for i, block in reversed(list(enumerate(encoder.blocks)))]
        steps.append(("embedding", [detector]))
        return steps
    root = getattr(detector, "model", detector)
    children = [(name, child) for name, child in root.named_children() if any(True for _ in child.parameters())]
    return [(name, [child]) for name, child in reversed(children)] or [("model", [root])]


@torch.no_grad()
def _reinitialise(modules: list[nn.Module], done: set[int]) -> None:
    """Reset every not yet reset parameter under ``modules``; ``done`` holds the ids already reset."""
    for module in modules:
        for sub in module.modules():
            own = [p for p in sub.parameters(recurse=False) if id(p) not in done]
            if not own:
                continue
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            else:
                for parameter in own:
                    spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
                    parameter.normal_(0.0, spread if spread > 0 else 0.02)
            done.update(id(p) for p in sub.parameters(recurse=False))


@dataclass
class SanityOutcome:
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    # explainer -> (cascade layer labels, top first; per-sample Spearman after each step, (n, steps), NaN rows
    # for the samples MPRT did not run on)
    curves: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def mprt_rows(index: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Which of the global indices ``index`` MPRT runs on, out of ``n_rows`` audited rows: all of them up to
    ``MPRT_SAMPLES`` rows, else the rows floor(j * n_rows / MPRT_SAMPLES), j = 0 .. MPRT_SAMPLES - 1."""
    if n_rows <= MPRT_SAMPLES:
        return torch.ones(len(index), dtype=torch.bool)
    index = index.cpu().long()
    j = (index * MPRT_SAMPLES + n_rows - 1) // n_rows  # the smallest j whose row is at or after index
    return (j < MPRT_SAMPLES) & (j * n_rows // MPRT_SAMPLES == index)


def mprt(detector: nn.Module, explainer: Explainer, x: torch.Tensor, target: torch.Tensor,
         attribution: torch.Tensor, *, baseline: torch.Tensor, seed: int,
         index: torch.Tensor, explained: torch.Tensor | None = None) -> tuple[list[str], np.ndarray]:
    """The cascade's layer labels (top first) and each sample's absolute Spearman after each step, (n, steps),
    over the ``explained`` positions (None: all); the metric is the last column. ``attribution`` must come from
    ``explainer`` with the same ``seed``."""
    randomised = copy.deepcopy(detector)
    done: set[int] = set()
    labels, columns = [], []
    for step, (label, modules) in enumerate(cascade_layers(randomised)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(seed, f"sanity/mprt/{label}", step))
            _reinitialise(modules, done)
        changed = explainer.explain(randomised, x, target, baseline=baseline, seed=seed, index=index)
        labels.append(label)
        columns.append(np.abs(spearman_rows(attribution, changed, explained)))
    return labels, np.stack(columns, axis=1)


def mean_sanity_curves(outcome: "SanityOutcome") -> dict[str, list[dict]]:
    """The report's view (AuditFindings.sanity_curves): per explainer, the mean Spearman over the samples that
    counted after each cascade step, top layer first. From per-sample rows, so gathered shards give the same."""
    view = {}
    for name, (labels, values) in outcome.curves.items():
        means = [float(np.nanmean(column)) if np.isfinite(column).any() else float("nan") for column in values.T]
        view[name] = [{"layer": label, "spearman": mean} for label, mean in zip(labels, means)]
    return view


def attention_layers(detector: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], str | None]:
    """The attention layers whose weights can be replaced inside the forward, in call order (the last one
    computes the attention the ``attention`` explainer reads), or no layers and the reason.

    Built-in blocks: every ``SelfAttention``. An ``hf:`` model: its self-attention modules (eager attention).
    A ``python:`` model: the modules whose attention the wrapper captures (one capture on ``x[:1]``), each of
    which must be an editable ``nn.MultiheadAttention``.
    """
    built_in = [module for module in detector.modules() if isinstance(module, SelfAttention)]
    if built_in:
        return built_in, None
    if isinstance(detector, HuggingFaceDetector):
        return [module for _, module in detector.attention_modules()], None
    if not isinstance(detector, ForeignDetector):
        return [], ("the attention cannot be edited inside this model's forward (only the built-in attention "
                    "blocks and captured nn.MultiheadAttention modules support it)")
    calls = captured_attention_modules(detector, x[:1])
    if not calls:
        return [], ("the model reports its own attention (forward_with_attention), so which of its modules "
                    "compute it is unknown and none can be edited")
    named = dict(detector.model.named_modules())
    order = list(dict.fromkeys(reversed(calls)))[::-1]  # each module once, ordered by its last call
    for name in order:
        reason = multihead_edit_unsupported(named[name])
        if reason is not None:
            return [], f"the attention of {name!r} cannot be edited inside the forward: {reason}"
    return [named[name] for name in order], None


@contextmanager
def edited_layers(layers: list[nn.Module], edit: AttentionEdit):
    """Run with ``edit`` applied inside every one of ``layers`` (built-in blocks, Hugging Face self-attention
    modules or nn.MultiheadAttention)."""
    with ExitStack() as stack:
        for layer in layers:
            if isinstance(layer, SelfAttention):
                stack.enter_context(edited_attention(layer, edit))
        multihead = [layer for layer in layers if isinstance(layer, nn.MultiheadAttention)]
        if multihead:
            stack.enter_context(edited_multihead_attention(multihead, edit))
        pretrained = [layer for layer in layers if not isinstance(layer, (SelfAttention, nn.MultiheadAttention))]
        if pretrained:
            stack.enter_context(edited_pretrained_attention(pretrained, edit))
        yield


def uniform_weights(weights: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Uniform weights over each query's allowed keys (a row with none stays 0), of ``weights``' shape."""
    allowed = allowed.expand_as(weights).to(weights.dtype)
    return allowed / allowed.sum(dim=-1, keepdim=True).clamp_min(1.0)


def uniform_attention(detector: nn.Module, x: torch.Tensor, predicted: torch.Tensor,
                      labels: torch.Tensor | None, layers: list[nn.Module], *,
                      max_batch: int = 4096) -> dict[str, np.ndarray]:
    """Per sample, 1.0 when the prediction with every one of ``layers`` made uniform equals ``predicted``
    (and, with ``labels``, when it equals the label); ``max_batch`` rows per forward pass."""
    parts = []
    with torch.no_grad(), edited_layers(layers, uniform_weights):
        for start in range(0, len(x), max_batch):
            parts.append(detector(x[start:start + max_batch]).argmax(1))
    uniform = torch.cat(parts) if parts else predicted.new_empty(0)
    out = {"sanity.uniform_attention.prediction_kept": (uniform == predicted).double().cpu().numpy()}
    if labels is not None:
        out["sanity.uniform_attention.accuracy"] = (uniform == labels).double().cpu().numpy()
    return out


def zero_and_renormalise(weights: torch.Tensor, cls_index: int, token: torch.Tensor) -> torch.Tensor:
    """(b, h, t, t) with each sample's CLS-row weight on ``token`` (b,) set to 0 in every head, row renormalised."""
    batch = torch.arange(len(weights), device=weights.device)
    row = weights[:, :, cls_index, :].clone()
    row[batch, :, token] = 0.0
    row = row / row.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(row.dtype).tiny)
    edited = weights.clone()
    edited[:, :, cls_index, :] = row
    return edited


def flip_rates(detector: nn.Module, x: torch.Tensor, *, seed: int, index: torch.Tensor,
               max_batch: int = 4096, layer: nn.Module | None = None,
               explained: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Per sample, 1.0 when zeroing the top (or a random) CLS weight of the last layer changes the decision;
    ``max_batch`` rows per forward pass. ``layer``: the last attention layer (default: from
    :func:`attention_layers`). ``explained`` (text, (n, T)): the message's tokens, the only ones either token
    is drawn from (a padding token's weight is 0 already: zeroing it would lower the chance level)."""
    if layer is None:
        layers, reason = attention_layers(detector, x)
        if reason is not None:
            raise ValueError(reason)
        layer = layers[-1]
    parts = [_flip_rates(detector, x[start:start + max_batch], layer, seed=seed,
                         index=index[start:start + max_batch],
                         explained=None if explained is None else explained[start:start + max_batch])
             for start in range(0, len(x), max_batch)]
    return {name: np.concatenate([part[name] for part in parts]) for name in FLIP_RATE_METRICS} if parts else \
        {name: np.empty(0) for name in FLIP_RATE_METRICS}


@torch.no_grad()
def _flip_rates(detector: nn.Module, x: torch.Tensor, layer: nn.Module, *, seed: int,
                index: torch.Tensor, explained: torch.Tensor | None) -> dict[str, np.ndarray]:
    cls_index = detector.token_map.cls_index
    logits, attentions = detector.forward_with_attention(x)
    pred = logits.argmax(1)
    row = attentions[-1].mean(dim=1)[:, cls_index, :].clone()
    candidates = torch.ones_like(row, dtype=torch.bool) if explained is None else explained.to(row.device).clone()
    candidates[:, cls_index] = False
    row[~candidates] = -torch.inf
    top = row.argmax(1)
    draw = per_sample_uniform((), index, seed=seed, purpose="sanity/flip_rate/random", device=x.device)
    counts = candidates.sum(1)
    # the k-th candidate of each row, k drawn uniformly below the row's count of candidates
    k = (draw * counts).long().clamp_max(counts - 1).clamp_min(0)
    random_token = (candidates.cumsum(1) <= k[:, None]).sum(1).clamp_max(row.shape[1] - 1)
    out = {}
    for name, token in (("sanity.flip_rate.attention", top), ("sanity.flip_rate.random", random_token)):
        with edited_layers([layer], lambda w, allowed, token=token: zero_and_renormalise(w, cls_index, token)):
            flipped = detector(x).argmax(1) != pred
        out[name] = flipped.double().cpu().numpy()
    return out


def sanity_stage(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: dict[str, torch.Tensor],
                 *, baseline: torch.Tensor, seed: int, index: torch.Tensor,
                 explainers: dict[str, Explainer], n_rows: int | None = None,
                 max_batch: int = 4096, y: torch.Tensor | None = None,
                 explained: torch.Tensor | None = None) -> SanityOutcome:
    """MPRT of every explainer given (``random`` is left out: it ignores the model by design), the two
    flip rates and the uniform-attention test (its accuracy needs the true classes ``y``); ``target`` is the
    model's prediction. ``index`` holds global indices out of ``n_rows`` audited rows (default: these rows are all of
    them); MPRT runs on :func:`mprt_rows` of them, over the ``explained`` positions (None: all). The explainers
    bound their own passes (``Explainer.max_inputs``); the flip rates take ``max_batch`` rows per pass."""
    outcome = SanityOutcome()
    chosen = mprt_rows(index, len(x) if n_rows is None else n_rows)
    for name, explainer in explainers.items():
        if name == "random" or name not in attributions:
            continue
        labels = [label for label, _ in cascade_layers(model)]
        values = np.full((len(x), len(labels)), np.nan)
        if chosen.any():
            rows = chosen.nonzero().flatten()
            on_device = rows.to(x.device)
            rows_baseline = baseline[on_device] if baseline.shape == x.shape else baseline  # per-sample (blur)
            labels, part = mprt(model, explainer, x[on_device], target[on_device], attributions[name][on_device],
                                baseline=rows_baseline, seed=seed, index=index[rows],
                                explained=None if explained is None else explained[on_device])
            values[rows.numpy()] = part
        outcome.curves[name] = (labels, values)
        outcome.per_sample[f"sanity.mprt.{name}"] = values[:, -1].copy()
    with evaluating(model):
        layers, reason = attention_layers(model, x)
        flip_reason = reason or ("the model has no CLS token whose attention row could be edited"
                                 if model.token_map.cls_index is None else None)
        if flip_reason is None:
            outcome.per_sample.update(flip_rates(model, x, seed=seed, index=index, max_batch=max_batch,
                                                 layer=layers[-1], explained=explained))
        if reason is None:
            outcome.per_sample.update(uniform_attention(model, x, target, y, layers, max_batch=max_batch))
    outcome.skipped.update({name: flip_reason for name in FLIP_RATE_METRICS if flip_reason is not None})
    outcome.skipped.update({name: reason for name in UNIFORM_METRICS if reason is not None})
    return outcome


class SanityStage(Stage):
    """MPRT (``sanity_curves``/``sanity_labels`` row-table groups hold its cascades), flip rates and uniform
    attention; a model whose attention cannot be edited gets its reason for each name it skips."""

    name = "sanity"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return [f"sanity.mprt.{explainer}" for explainer in config.explainers if explainer != "random"] \
            + list(FLIP_RATE_METRICS) + list(UNIFORM_METRICS)

    def run(self, block: Block) -> None:
        sane = sanity_stage(block.detector, block.x, block.pred, block.attributions, baseline=block.baseline,
                            seed=block.config.seed, index=block.index, explainers=block.explainers,
                            n_rows=block.n_rows, max_batch=block.plan.forward_batch, y=block.y,
                            explained=block.explained)
        block.per_sample.update(sane.per_sample)
        block.notes.update(sane.skipped)
        block.table["sanity_curves"] = {name: values for name, (_, values) in sane.curves.items()}
        block.table["sanity_labels"] = {name: np.asarray(labels, dtype=str)[None, :]
                                        for name, (labels, _) in sane.curves.items()}
