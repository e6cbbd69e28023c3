"""Robustness stage: robust accuracy and attack success under each attack and budget."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks import Attack, Domain
from auditor.metrics import Bootstrap, MetricValue, format_eps


@dataclass
class RobustnessOutcome:
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)


def run_attacks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor,
                attacks: dict[str, Attack], eps_grid: list[float], *, domain: Domain, seed: int,
                batch_size: int, bootstrap: Bootstrap, keep_examples: bool, progress: bool | None) -> RobustnessOutcome:
    outcome = RobustnessOutcome()
    clean_correct = (clean_pred == y).cpu().numpy()
    index = torch.arange(len(x))
    total = len(attacks) * len(eps_grid) * ((len(x) + batch_size - 1) // batch_size)
    bar = tqdm(total=total, desc="attacks", unit="batch", disable=None if progress else True,
               leave=False)
    try:
        for name, attack in attacks.items():
            curve = []
            for eps in eps_grid:
                parts, adv_pred = [], []
                for start in range(0, len(x), batch_size):
                    rows = slice(start, start + batch_size)
                    x_adv = attack(model, x[rows], y[rows], eps=eps, domain=domain, seed=seed, index=index[rows])
                    with torch.inference_mode():
                        adv_pred.append(model(x_adv).argmax(1))
                    if keep_examples:
                        parts.append(x_adv.cpu())
                    bar.update()
                correct = (torch.cat(adv_pred) == y).cpu().numpy()
                tag = f"{name}@{format_eps(eps)}"
                accuracy = bootstrap.mean(correct.astype(np.float64))
                outcome.metrics[f"robust.accuracy.{tag}"] = accuracy
                success = bootstrap.mean((~correct).astype(np.float64), mask=clean_correct)
                if success is not None:
                    outcome.metrics[f"robust.attack_success_rate.{tag}"] = success
                curve.append((eps, accuracy.value))
                if keep_examples:
                    outcome.adversarial[f"adv/{tag}"] = torch.cat(parts)
            outcome.curves[name] = curve
    finally:
        bar.close()
    return outcome
