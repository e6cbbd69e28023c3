"""The benchmark suite: ``make bench`` (``python -m bench.run``); not part of ``make test``.

Every figure is a ratio of two timings measured side by side in one run (interleaved
repeats, median of each), so a noisy shared machine moves both sides alike. Prints a
table and writes bench/results.json (``--only`` runs write out/bench/results-<sections>.json instead,
so a partial run never replaces the full record). With ``--device cuda`` the same suite also
records absolute samples per second.

Sections: (1) attack overhead, (2) attention attacks, (3) faithfulness, (4) our pgd
against Adversarial Robustness Toolbox, (5) end to end, (6) scaling, (7) memory on
large data, (8) training overhead, (9) text attacks, (10) a Hugging Face BERT through ``hf:`` against the
tool's own text detector of the same size, (11) text training overhead. Add a faithfulness metric by adding
one entry to ``FAITHFULNESS``. ``--standard`` adds the standard profile's wall time to section 5 (minutes: not
part of ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.processes import PY, ROOT, timed_process, train_checkpoint
from bench.training import fresh_process_seconds

ROWS: list[dict] = []


def record(section: str, name: str, value: float | None, *, target: str = "", unit: str = "ratio",
           note: str = "") -> None:
    ROWS.append({"section": section, "name": name, "value": None if value is None else round(float(value), 4),
                 "unit": unit, "target": target, "note": note})


def side_by_side(a: Callable[[], object], b: Callable[[], object], *, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately after one warm-up each."""
    ta, tb = interleaved(a, b, repeats=repeats)
    return ta, tb


def interleaved(*fns: Callable[[], object], repeats: int = 5) -> list[float]:
    """Median seconds of each of ``fns``, run in turn ``repeats`` times after one warm-up each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    return [statistics.median(out) for out in times]


def tabular_model(device):
    from detectors.tabular import FeatureTokenTransformer

    torch.manual_seed(0)
    model = FeatureTokenTransformer(20, 2).to(device).eval()
    x = torch.rand(256, 20, device=device)
    return model, x, model(x).argmax(1).detach()


def vit_model(device):
    from detectors.vision import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(1, 8, 8, 10).to(device).eval()
    x = torch.rand(256, 1, 8, 8, device=device)
    return model, x, model(x).argmax(1).detach()


def forward_backward(model, x, y, *, attention: bool = False) -> None:
    x = x.clone().requires_grad_(True)
    logits = model.forward_with_attention(x)[0] if attention else model(x)
    grad, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)


def attack_overhead(device, steps: int = 10) -> None:
    import torchattacks

    from attacks import Domain, make_attack

    for kind, build in (("tabular", tabular_model), ("vit", vit_model)):
        model, x, y = build(device)
        domain = Domain.unit(tuple(x.shape[1:]))
        ours = make_attack("pgd", steps=steps, restarts=1, schedule="constant")
        index = torch.arange(len(x))
        theirs = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=steps, random_start=True)
        run_ours = lambda: ours(model, x, y, eps=0.1, domain=domain, seed=0, index=index)  # noqa: E731
        a, b = side_by_side(run_ours, lambda: theirs(x, y), repeats=9)
        record("1 attack overhead", f"{kind}: our pgd / torchattacks.PGD ({steps} steps, batch 256)", a / b,
               target="<= 1.1")
        a, c = side_by_side(run_ours, lambda: [forward_backward(model, x, y) for _ in range(steps)], repeats=9)
        record("1 attack overhead", f"{kind}: our pgd / ({steps} x forward+backward)", a / c, target="~1.0 floor")
        if device.type == "cuda":
            record("1 attack overhead", f"{kind}: pgd samples/s", len(x) / a, unit="samples/s")


def attention_attacks(device, steps: int = 10) -> None:
    """Per step: the marginal cost of a step ((time of 3k steps - time of k) / 2k), so the per-attack fixed cost
    (the clean pass, the seeded random start, the final evaluation) is reported on its own, not spread over k."""
    from attacks import ATTENTION_ATTACKS, Domain, make_attack

    for kind, build in (("tabular", tabular_model), ("vit", vit_model)):
        model, x, y = build(device)
        domain = Domain.unit(tuple(x.shape[1:]))
        index = torch.arange(len(x))
        for name in sorted(ATTENTION_ATTACKS):
            short, long = (make_attack(name, steps=k, restarts=1) for k in (steps, 3 * steps))
            t_short, t_long, t_pass = interleaved(
                lambda: short(model, x, y, eps=0.1, domain=domain, seed=0, index=index),
                lambda: long(model, x, y, eps=0.1, domain=domain, seed=0, index=index),
                lambda: forward_backward(model, x, y, attention=True), repeats=5)
            per_step = (t_long - t_short) / (2 * steps)
            record("2 attention attacks", f"{kind}: {name} per step / forward_with_attention+backward",
                   per_step / t_pass, target="<= 1.5",
                   note=f"fixed cost per attack {(t_short - steps * per_step) / t_pass:.1f} passes")


def text_attacks(folder: Path, device, steps: int = 2, candidates: int = 16) -> None:
    """HotFlip's marginal cost per step ((time at budget 3k - time at budget k) / 2k) against its floor, the model
    passes a step needs: one forward and backward through the embeddings of the batch (the first-order
    estimate) and one forward of the batch's ``candidates`` proposals per row (the verification). The model is
    a phishing-sized TextTransformer (300 tokens, T = 48, dim 32, 2 layers) whose head always answers class 0,
    so no row stops early and every step does the same work."""
    from attacks import TokenDomain, make_attack
    from detectors.text import TextTransformer

    torch.manual_seed(0)
    model = TextTransformer(300, 48, 2, dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.0).to(device).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([5.0, -5.0]))
    x = torch.randint(4, 300, (256, 48), device=device)
    x[:, 0] = 2
    x[:, 40:] = 0
    y = torch.zeros(len(x), dtype=torch.long, device=device)
    domain, index = TokenDomain(300, (0, 1, 2, 3)), torch.arange(len(x))
    hotflip = make_attack("hotflip-any", candidates=candidates)  # no table here: the any-token search
    proposals = x.repeat_interleave(candidates, 0)

    def floor() -> None:
        embeddings = model.embed(x).detach().requires_grad_(True)
        loss = F.cross_entropy(model.forward_embeddings(embeddings, model.attention_mask(x)), y, reduction="sum")
        torch.autograd.grad(loss, embeddings)
        with torch.no_grad():
            for i in range(0, len(proposals), hotflip.batch_size):
                model(proposals[i:i + hotflip.batch_size])

    t_short, t_long, t_floor = interleaved(
        lambda: hotflip(model, x, y, eps=steps, domain=domain, seed=0, index=index),
        lambda: hotflip(model, x, y, eps=3 * steps, domain=domain, seed=0, index=index), floor, repeats=5)
    per_step = (t_long - t_short) / (2 * steps)
    record("9 text attacks", f"hotflip per step / (forward+backward + {candidates} candidate forwards), batch 256",
           per_step / t_floor, target="<= 1.5", note=f"fixed cost per attack {(t_short - steps * per_step) / t_floor:.1f} floors")
    text_end_to_end(folder, device)


def text_end_to_end(folder: Path, device) -> None:
    """``audit run --profile quick`` (hotflip and attention-shift-sub at 1, 2 and 4 tokens) on 1,000 phishing
    messages at the checkpoint length of real corpora, 128 tokens (the phishing corpus with one message of 160
    words added to its training file, so the tokeniser pads every message to its cap: about 30 tokens of 128
    are a message, as in real mail), in process, against its model passes timed bare (bench/passes.py)."""
    from bench.passes import model_pass_seconds
    from detectors.text_data import MAX_LENGTH_CAP, load_text_table

    table = load_text_table("phishing")
    rows = [{"text": text, "label": table.class_names[label]} for text, label in zip(table.texts, table.y)]
    corpus, model = folder / "phishing-128.jsonl", folder / "phishing-128.safetensors"
    long_message = {"text": " ".join(["thanks for your order"] * 40), "label": table.class_names[0]}
    corpus.write_text("\n".join(json.dumps(row) for row in rows + [long_message]) + "\n", encoding="utf-8")
    train_checkpoint(model, str(corpus), epochs=8, detector="text", device=device.type)
    audited = folder / "phishing-audited.jsonl"
    audited.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    audit_seconds, model_seconds = model_pass_seconds(str(model), str(audited), 1000, device.type)
    record("9 text attacks", f"audit --profile quick, 1,000 phishing messages padded to {MAX_LENGTH_CAP} tokens "
           "(in process): wall time", audit_seconds, unit="s")
    record("9 text attacks", "that audit / its model passes (same batches, bare)", audit_seconds / model_seconds,
           target="<= 1.5")


class FlatView(torch.nn.Module):
    """Quantus feeds (N, 1, F) arrays; the detector reads its own input shape."""

    def __init__(self, model: torch.nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.shape = model, shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(len(x), *self.shape))


@dataclass(frozen=True)
class FaithfulnessEntry:
    """One batched faithfulness metric as the auditor runs it (``run(model, x, attribution, y, baseline,
    max_batch)``), the model inputs it needs (``inputs(x, attribution, baseline)``, timed as one batch), and
    where Quantus has the same definition, ``quantus(view, x, attribution, y)`` returning Quantus's values
    and ``ours(result)`` the comparable values of ours."""
    name: str
    run: Callable
    inputs: Callable
    quantus: Callable | None = None
    ours: Callable | None = None


def _removal_masks(x, attribution, kinds):
    from auditor.stages.faithfulness_metrics import removal_counts

    counts = torch.as_tensor(removal_counts(x[0].numel()))
    changed = attribution.flatten(1).argsort(dim=1, descending=True, stable=True).argsort(dim=1)[:, None, :] \
        < counts[None, :, None]
    return torch.cat([changed if kind == "deletion" else ~changed for kind in kinds], dim=1)


def _masked_inputs(x, masks, baseline):
    flat, base = x.flatten(1)[:, None, :], baseline.reshape(1, 1, -1)
    return torch.where(masks, base, flat).reshape(-1, *x.shape[1:])


def _removal(kinds):
    from auditor.stages.faithfulness_metrics import removal_curves

    return (lambda model, x, a, y, baseline, max_batch:
            removal_curves(model, x, a, y, baseline, max_batch=max_batch, kinds=kinds))


def _pixel_flipping(view, x, a, y):
    import quantus

    metric = quantus.PixelFlipping(features_in_step=1, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
    return np.asarray(metric(model=view, x_batch=x, y_batch=y, a_batch=a, softmax=True, device="cpu",
                             batch_size=len(x)))


def _subsets(x):
    from auditor.stages.faithfulness_metrics import correlation_subsets

    return correlation_subsets(x[0].numel(), torch.arange(len(x)), seed=0)


def _correlation(model, x, a, y, baseline, max_batch):
    from auditor.stages.faithfulness_metrics import faithfulness_correlation

    return faithfulness_correlation(model, x, a, y, baseline, seed=0, index=torch.arange(len(x)), max_batch=max_batch)


def _quantus_correlation(view, x, a, y):
    from unittest import mock

    import quantus

    subsets = _subsets(torch.as_tensor(x))
    runs, size = subsets.shape[1], int(subsets[0, 0].sum())
    # Quantus draws np.random.choice(F, size) once per run and sample, run-major: hand it our subsets in order
    draws = iter([np.flatnonzero(subsets[b, r].numpy()) for r in range(runs) for b in range(len(x))])
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.0, normalise=False,
                                             abs=False, return_aggregate=False, disable_warnings=True,
                                             display_progressbar=False)
    with mock.patch.object(np.random, "choice", lambda *args, **kwargs: next(draws)):
        return np.asarray(metric(model=view, x_batch=x, y_batch=y, a_batch=a, softmax=True, device="cpu",
                                 batch_size=len(x)))


FAITHFULNESS = [
    FaithfulnessEntry("deletion+insertion", _removal(("deletion", "insertion")),
                      lambda x, a, base: _masked_inputs(x, _removal_masks(x, a, ("deletion", "insertion")), base)),
    # Quantus's PixelFlipping is deletion: its curve starts after the first removal, ours at the clean input
    FaithfulnessEntry("deletion", _removal(("deletion",)),
                      lambda x, a, base: _masked_inputs(x, _removal_masks(x, a, ("deletion",)), base),
                      quantus=_pixel_flipping, ours=lambda result: result.deletion[:, 1:]),
    FaithfulnessEntry("correlation", _correlation,
                      lambda x, a, base: _masked_inputs(
                          x, torch.cat([torch.zeros_like(_subsets(x)[:, :1]), _subsets(x)], dim=1), base),
                      quantus=_quantus_correlation, ours=lambda result: result),
]


def faithfulness(device) -> None:
    from auditor.run.memory import plan_memory

    try:
        import quantus  # noqa: F401
    except ImportError:
        quantus = None
        record("3 faithfulness", "Quantus comparison", None, note="quantus not importable: pip install .[bench]")
    for kind, build in (("tabular", tabular_model), ("vit", vit_model)):
        model, x, y = build(device)
        x, y = x[:64], y[:64]
        baseline = torch.zeros(x.shape[1:], device=device)
        # continuous attributions: no ties, so every sort (ours is stable, Quantus's is not) gives one ranking
        attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
        # the auditor's own batch: its memory plan caps a CPU pass at CPU_PASS_BYTES of activations
        max_batch = plan_memory(model, x[:1], budget_gb=None, batch_size=256).forward_batch
        for entry in FAITHFULNESS:
            batch = entry.inputs(x, attribution, baseline)

            def passes():
                with torch.inference_mode():
                    model(batch)

            run = lambda: entry.run(model, x, attribution, y, baseline, max_batch)  # noqa: E731
            a, b = side_by_side(run, passes, repeats=3)
            record("3 faithfulness", f"{kind}: {entry.name} / its {len(batch)} forward passes as one batch",
                   a / b, target="<= 1.3", note=f"{max_batch} inputs per pass, as the auditor plans them")
            if entry.quantus is None or quantus is None or device.type != "cpu":
                continue
            view = FlatView(model, tuple(x.shape[1:])).eval()
            arrays = (x.flatten(1)[:, None].numpy(), attribution.flatten(1)[:, None].numpy(), y.numpy())
            results = {}

            def ours():
                results["ours"] = entry.ours(run())

            def theirs():
                results["theirs"] = entry.quantus(view, arrays[0], arrays[1], arrays[2])

            a, b = side_by_side(ours, theirs, repeats=3)
            difference = np.nanmax(np.abs(np.asarray(results["ours"], dtype=np.float64) - results["theirs"]))
            same_nan = bool((np.isnan(results["ours"]) == np.isnan(results["theirs"])).all())
            record("3 faithfulness", f"{kind}: {entry.name} / Quantus (same definition, inputs, attributions)",
                   a / b, target="<= 1.0",
                   note=f"values: max |ours - Quantus| = {difference:.1e}" + ("" if same_nan else ", NaN differ"))


def versus_art(device, steps: int = 10, eps: float = 0.05) -> None:
    """Our pgd and ART's ProjectedGradientDescent on one flows detector and its 1,250 test rows: without a random
    start both are deterministic and must agree; with one random start each draws its own noise."""
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        record("4 vs ART", "ART comparison", None, note="adversarial-robustness-toolbox not importable")
        return
    from attacks import Domain, make_attack
    from detectors.data import load_table, split_table
    from detectors.tabular import FeatureTokenTransformer

    splits = split_table(load_table("flows:5000"), seed=0)
    torch.manual_seed(0)
    model = FeatureTokenTransformer(splits.train.x.shape[1], 2).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.as_tensor(splits.train.x, device=device), torch.as_tensor(splits.train.y, device=device)
    for _ in range(5):
        for i in range(0, len(xt), 64):
            optimiser.zero_grad()
            F.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
            optimiser.step()
    model.eval()
    x, y = torch.as_tensor(splits.test.x, device=device), torch.as_tensor(splits.test.y, device=device)
    domain = Domain.unit(tuple(x.shape[1:]))
    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=2, clip_values=(0.0, 1.0),
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    for random_start in (False, True):
        ours = make_attack("pgd", steps=steps, step_size=0.25, restarts=1, random_start=random_start,
                           schedule="constant")
        art_pgd = ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=0.25 * eps, max_iter=steps,
                                           num_random_init=int(random_start), batch_size=len(x), verbose=False)
        results = {}

        def run_ours():
            results["ours"] = ours(model, x, y, eps=eps, domain=domain, seed=0, index=torch.arange(len(x)))

        def run_art():
            np.random.seed(0)  # ART draws its random start from numpy's global generator
            results["art"] = art_pgd.generate(x_np, y=np.eye(2)[y_np])

        a, b = side_by_side(run_ours, run_art, repeats=3)
        with torch.no_grad():
            acc_ours = (model(results["ours"]).argmax(1) == y).float().mean().item()
            acc_art = (model(torch.as_tensor(results["art"], device=device)).argmax(1) == y).float().mean().item()
        start = "one random start" if random_start else "no random start"
        record("4 vs ART", f"robust accuracy, {start}: ours {acc_ours:.3f}, ART {acc_art:.3f} "
               f"({len(x)} flows, eps {eps}, {steps} steps)", 100 * abs(acc_ours - acc_art), unit="points",
               target="<= 1", note="" if random_start else "deterministic: the same steps from the clean input")
        record("4 vs ART", f"time, {start}: our pgd / ART ProjectedGradientDescent", a / b)


def _train(folder: Path, data: str) -> Path:
    path = folder / "flows.safetensors"
    if not path.is_file():
        train_checkpoint(path, data, epochs=5)
    return path


def end_to_end(folder: Path, device, *, standard: bool = False) -> None:
    from bench.passes import model_pass_seconds

    model = _train(folder, "flows:4000")
    audit = [PY, "-m", "auditor", "run", "--model", str(model), "--data", "flows:5000", "--profile", "quick",
             "--max-samples", "1000", "--device", device.type, "--quiet"]
    wall, peak, rc = timed_process([*audit, "--out", str(folder / "quick")])
    record("5 end to end", "audit run --profile quick, 1,000 flows: wall time", wall, unit="s", target="< 120",
           note=f"exit {rc}")
    record("5 end to end", "audit run --profile quick: peak RSS", peak, unit="MiB")
    audit_seconds, model_seconds = model_pass_seconds(str(model), "flows:5000", 1000, device.type)
    record("5 end to end", "audit (in process) / its model passes (same batches, bare)",
           audit_seconds / model_seconds, target="<= 1.5")
    if standard:
        profile = [arg if arg != "quick" else "standard" for arg in audit]
        wall, peak, rc = timed_process([*profile, "--out", str(folder / "standard")])
        record("5 end to end", "audit run --profile standard, 1,000 flows: wall time", wall, unit="s",
               target="< 1800", note=f"exit {rc}; peak RSS {peak:.0f} MiB")


def scaling(folder: Path, device) -> None:
    model = _train(folder, "flows:4000")
    audit = [PY, "-m", "auditor", "run", "--model", str(model), "--data", "flows:4000", "--attacks", "fgsm,pgd",
             "--max-samples", "1024", "--device", device.type, "--quiet"]
    one, _, _ = timed_process([*audit, "--out", str(folder / "one")])
    two, _, _ = timed_process([*audit, "--nproc", "2", "--out", str(folder / "two")])
    record("6 scaling", "1 process: samples/s (incl. start-up)", 1024 / one, unit="samples/s")
    record("6 scaling", "2 processes: samples/s (incl. start-up)", 1024 / two, unit="samples/s")
    record("6 scaling", "speed-up of 2 processes (each takes cores / 2 threads)", one / two,
           target="~1 on 2 cores", note="1 process already uses every core through its threads")
    record("6 scaling", "efficiency: speed-up / 2", one / two / 2, target="~1 with a machine or GPU per process")


def memory(folder: Path, device) -> None:
    model = _train(folder, "flows:4000")
    peaks = {}
    for rows in (20_000, 200_000):
        wall, peak, rc = timed_process([PY, "-m", "auditor", "run", "--model", str(model), "--data", f"flows:{rows}",
                                "--attacks", "fgsm", "--max-samples", "0", "--device", device.type, "--quiet",
                                # one explainer and one removal curve: memory, not the cost of every stage, is
                                # measured here, and the 200k-row audit must fit the 10 minutes of make bench
                                "--explainers", "attention", "--faithfulness-metrics", "deletion",
                                "--out", str(folder / f"mem{rows}")])
        peaks[rows] = peak
        record("7 memory", f"flows:{rows}, fgsm, all rows: peak RSS ({wall:.0f} s, exit {rc})", peak, unit="MiB")
    record("7 memory", "peak RSS flows:200000 / flows:20000", peaks[200_000] / peaks[20_000], target="<= 1.5")


def training_overhead(folder: Path, device) -> None:
    """``audit train --data flows --epochs 2`` against :func:`bench.training.bare_training`
    (:func:`bench.training.fresh_process_seconds`: fresh processes, best of 3 after a warm-up)."""
    train = [PY, "-m", "auditor", "train", "--data", "flows", "--epochs", "2", "--device", device.type, "--quiet",
             "--out", str(folder / "overhead.safetensors")]
    bare = [PY, "-c", f"from bench.training import bare_training; bare_training({device.type!r})"]
    ours, theirs = fresh_process_seconds(train, bare)
    record("8 training", f"audit train / bare AdamW loop, flows, 2 epochs, fresh processes "
           f"({ours:.1f} s vs {theirs:.1f} s)", ours / theirs, target="<= 1.15")


def text_training_overhead(folder: Path, device, data: str = "phishing:2000", epochs: int = 3) -> None:
    """``audit train --detector text`` (width 32, 2 layers: its defaults) against
    :func:`bench.training.bare_text_training`, timed as section 8."""
    train = [PY, "-m", "auditor", "train", "--detector", "text", "--data", data, "--epochs", str(epochs),
             "--device", device.type, "--quiet", "--out", str(folder / "text-overhead.safetensors")]
    bare = [PY, "-c", f"from bench.training import bare_text_training; "
                      f"bare_text_training({data!r}, {epochs}, {device.type!r})"]
    ours, theirs = fresh_process_seconds(train, bare)
    record("11 text training", f"audit train --detector text / bare AdamW loop, {data}, {epochs} epochs, fresh "
           f"processes ({ours:.1f} s vs {theirs:.1f} s)", ours / theirs, target="<= 1.15")


def print_table() -> str:
    lines = ["| Section | Figure | Value | Target | Note |", "| --- | --- | --- | --- | --- |"]
    for row in ROWS:
        value = "—" if row["value"] is None else (f"{row['value']:.3g}" + ("" if row["unit"] == "ratio"
                                                                           else f" {row['unit']}"))
        lines.append(f"| {row['section']} | {row['name']} | {value} | {row['target']} | {row['note']} |")
    return "\n".join(lines)


def huggingface_text(folder: Path, device) -> None:
    """The cost of auditing a Hugging Face model through ``hf:`` against the tool's own text detector of the same
    size: ``audit train --detector text`` on phishing:1000 (width 32, 2 layers, 4 heads, MLP 64), then a BERT of
    the same width, depth, heads and MLP with the same tokeniser (its JSON from the checkpoint), trained on the same
    training split for as many epochs and saved with ``save_pretrained``; both audited with the same options."""
    import transformers
    from tokenizers import Tokenizer

    from detectors.checkpoint import load_checkpoint
    from detectors.text_data import CLS, MASK, PAD, UNK, load_text_table, split_text_table

    own = train_checkpoint(folder / "text.safetensors", "phishing:1000", epochs=8, detector="text",
                           device=device.type)
    checkpoint = load_checkpoint(str(own))
    backend = Tokenizer.from_str(checkpoint.metadata["text"]["tokenizer"])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK,
                                                     cls_token=CLS, mask_token=MASK)
    splits = split_text_table(load_text_table("phishing:1000"), seed=0)
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, num_labels=len(splits.train.class_names), pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(splits.train.class_names)), attn_implementation="eager"))
    x, y = torch.as_tensor(splits.train.x), torch.as_tensor(splits.train.y)
    optimiser = torch.optim.AdamW(bert.parameters(), lr=2e-3)
    for _ in range(8):
        for rows in torch.randperm(len(x)).split(64):
            optimiser.zero_grad()
            F.cross_entropy(bert(input_ids=x[rows], attention_mask=(x[rows] != tokenizer.pad_token_id).long()).logits,
                            y[rows]).backward()
            optimiser.step()
    bert.eval().save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    audit = ["--data", "phishing:1000", "--profile", "quick", "--max-samples", "50", "--device", device.type,
             "--quiet"]
    walls, audited = {}, True
    for name, model in (("own", str(own)), ("hf", f"hf:{folder / 'bert'}")):
        walls[name], peak, rc = timed_process([PY, "-m", "auditor", "run", "--model", model, *audit,
                                       "--out", str(folder / f"audit-{name}")])
        audited = audited and rc in (0, 1)  # 1: a gate failed; 2 or 3: no audit to time
        record("10 hugging face", f"audit run --profile quick, 50 phishing messages, {name}: wall time", walls[name],
               unit="s", note=f"exit {rc}; peak RSS {peak:.0f} MiB")
    record("10 hugging face", "tiny BERT through hf: / the text detector of the same size (audit wall time)",
           walls["hf"] / walls["own"] if audited else None, target="<= 2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="", help="comma-separated section numbers, e.g. 1,3")
    parser.add_argument("--standard", action="store_true",
                        help="section 5 also times --profile standard on 1,000 flows (about half an hour on 2 cores "
                             "since pgd's 10 restarts and the 10x more-effort check, so not part of make bench)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    device = torch.device(args.device)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        sections = [("1", lambda: attack_overhead(device)), ("2", lambda: attention_attacks(device)),
                    ("3", lambda: faithfulness(device)), ("4", lambda: versus_art(device)),
                    ("5", lambda: end_to_end(folder, device, standard=args.standard)), ("6", lambda: scaling(folder, device)),
                    ("7", lambda: memory(folder, device)), ("8", lambda: training_overhead(folder, device)),
                    ("9", lambda: text_attacks(folder, device)), ("10", lambda: huggingface_text(folder, device)),
                    ("11", lambda: text_training_overhead(folder, device))]
        for number, section in sections:
            if not only or number in only:
                section()
                print(f"section {number} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    table = print_table()
    print(table)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch": torch.__version__, "device": str(device),
               "load_average": os.getloadavg(), "seconds": round(time.perf_counter() - started, 1)}
    # bench/results.json is the last full run (docs/performance.md's table); a partial run never replaces it
    target = (ROOT / "out" / "bench" / f"results-{'-'.join(sorted(only))}.json" if only
              else ROOT / "bench" / "results.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"machine": machine, "rows": ROWS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
