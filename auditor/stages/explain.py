"""The explain stage: every configured explainer's attribution of each audited row (the explainers themselves
are in ``auditor.stages.explainers``), and of each adversarial example an attack flipped, for the report."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from auditor.stages.explainers import AttentionExplainer, evaluating, make_explainer
from auditor.stages.base import Block, Stage
from detectors.base import Detector


def explain_all(detector: Detector, x: torch.Tensor, target: torch.Tensor, config, *,
                baseline: torch.Tensor, progress: bool, index: torch.Tensor | None = None,
                batch_size: int | None = None, gradient_inputs: int | None = None) -> dict[str, torch.Tensor]:
    """Every configured explainer over batches of at most ``batch_size`` rows; the explainers that only read
    attention weights share one ``forward_with_attention`` per batch. Explainers that evaluate the model on
    several inputs per sample (``steps``: integrated gradients) take at most ``gradient_inputs`` model inputs
    at a time. ``index``: the rows' global indices (random draws are keyed by them)."""
    index = torch.arange(len(x)) if index is None else index
    batch_size = batch_size or config.batch_size
    explainers = {name: make_explainer(name, **({} if gradient_inputs is None else {"max_inputs": gradient_inputs}))
                  for name in config.explainers}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in explainers}
    readers = [name for name, explainer in explainers.items() if isinstance(explainer, AttentionExplainer)]
    batches = range(0, len(x), batch_size)
    bar = tqdm(total=len(explainers) * len(batches), desc="explain", unit="batch",
               disable=None if progress else True, leave=False)
    try:
        for start in batches:
            rows = slice(start, start + batch_size)
            x_rows, target_rows, index_rows = x[rows], target[rows], index[rows]
            per_sample_baseline = baseline.shape == x.shape
            rows_baseline = baseline[rows] if per_sample_baseline else baseline
            attentions = None
            if readers:
                with torch.no_grad():
                    _, attentions = detector.forward_with_attention(x_rows)
            for name, explainer in explainers.items():
                step = len(x_rows)
                if gradient_inputs is not None and name not in readers:
                    step = max(1, min(step, gradient_inputs // max(1, int(getattr(explainer, "steps", 1)))))
                for sub in range(0, len(x_rows), step):
                    part = slice(sub, sub + step)
                    parts[name].append(explainer.explain(
                        detector, x_rows[part], target_rows[part],
                        baseline=rows_baseline[part] if per_sample_baseline else rows_baseline,
                        seed=config.seed, index=index_rows[part],
                        attentions=attentions if name in readers else None).detach())
                bar.update()
    finally:
        bar.close()
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


class ExplainStage(Stage):
    """Every configured explainer's attribution of each row for its clean prediction (``Block.attributions``),
    and the explainers themselves bounded by the memory plan (``Block.explainers``) for the stages that
    re-run them. It computes no metric of its own."""

    name = "explain"

    def run(self, block: Block) -> None:
        block.attributions = explain_all(block.detector, block.x, block.pred, block.config, baseline=block.baseline,
                                         progress=block.progress, index=block.index,
                                         batch_size=block.plan.attack_batch,
                                         gradient_inputs=block.plan.gradient_inputs)
        block.explainers = {name: make_explainer(name, max_inputs=block.plan.gradient_inputs)
                            for name in block.attributions}
        flipped = block.table.get("flipped", {}).get("example", [])
        if len(flipped):
            explain_flipped(block, list(flipped))


def explain_flipped(block: Block, examples: list) -> None:
    """Each example an attack flipped (``auditor.stages.robustness.FlippedExample``, global ``index``): its adversarial
    input's class probabilities and every explainer's attribution of it for its new prediction."""
    x_adv = torch.stack([example.x_adv for example in examples]).to(block.x.device)
    index = torch.tensor([example.index for example in examples])
    with torch.no_grad(), evaluating(block.detector):
        proba = torch.softmax(block.detector(x_adv), dim=1).cpu().double()
    target = proba.argmax(1).to(block.x.device)
    baseline = block.baseline
    if baseline.shape == block.x.shape:  # a per-sample removal baseline (blur): the rows of these samples
        position = {int(row): i for i, row in enumerate(block.index_np)}
        baseline = baseline[torch.tensor([position[int(row)] for row in index], device=baseline.device)]
    attributions = {name: explainer.explain(block.detector, x_adv, target, baseline=baseline, seed=block.config.seed,
                                            index=index).detach().cpu()
                    for name, explainer in block.explainers.items()}
    for k, example in enumerate(examples):
        example.adv_proba = proba[k].numpy()
        example.attributions = {name: attribution[k] for name, attribution in attributions.items()}
