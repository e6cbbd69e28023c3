"""One audit: load the model and data once, run the stages, collect the metrics table.

Every stage reads the same detector and data and writes named numbers into one
flat table; gates, JSON, report and comparisons all read that table.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks import ATTACKS, Domain, make_attack
from auditor.clean import clean_metrics, predict_proba
from auditor.explain import EXPLAINERS, make_explainer
from auditor.faithfulness import removal_curves
from auditor.metrics import Bootstrap, MetricValue, format_eps
from auditor.robustness import run_attacks
from detectors.base import Detector
from detectors.checkpoint import load_checkpoint
from detectors.data import Dataset, align_table, is_builtin, load_table, split_table, stratified_subset
from detectors.devices import resolve_device
from detectors.errors import BadInputError

DEFAULT_EPS = (0.01, 0.03, 0.1)
DEFAULT_ATTACKS = ("fgsm", "pgd")
DEFAULT_EXPLAINERS = ("attention", "rollout", "integrated-gradients", "random")
GALLERY_SIZE = 3
GALLERY_FEATURES = 10


@dataclass(frozen=True)
class AuditConfig:
    eps: tuple[float, ...] = DEFAULT_EPS
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    explainers: tuple[str, ...] = DEFAULT_EXPLAINERS
    max_samples: int = 1000
    seed: int = 0
    device: str = "auto"
    batch_size: int = 256
    save_adversarial: bool = False
    save_explanations: bool = False

    def __post_init__(self) -> None:
        bad = [e for e in self.eps if not (0 < e <= 1)]
        if not self.eps or bad:
            raise BadInputError(f"--eps values must lie in (0, 1] (fractions of each feature's range), got {bad or 'none'}")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise BadInputError(f"unknown attack {unknown[0] if unknown else '(none)'}; registered: {', '.join(sorted(ATTACKS))}")
        unknown = [e for e in self.explainers if e not in EXPLAINERS]
        if unknown:
            raise BadInputError(f"unknown explainer {unknown[0]}; registered: {', '.join(sorted(EXPLAINERS))}")
        if self.max_samples < 0 or self.batch_size < 1:
            raise BadInputError("--max-samples must be >= 0 (0 = all rows) and the batch size >= 1")

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["eps"] = [float(e) for e in self.eps]
        payload["attack_params"] = {name: make_attack(name).params() for name in self.attacks}
        payload["removal_baseline"] = "training-split mean"
        return payload


@dataclass
class Subject:
    """What is audited: a detector, its data, its removal baseline and who it is."""

    detector: Detector
    data: Dataset
    baseline: torch.Tensor
    model_info: dict
    device: torch.device


@dataclass
class SampleView:
    """One sample for the gallery: plain numbers, ready for the template."""

    row: int
    label: str
    predicted: str
    confidence: float
    correct: bool
    features: list[str]
    values: list[float]
    attributions: dict[str, list[float]]


@dataclass
class AuditResult:
    metrics: dict[str, MetricValue]
    skipped: dict[str, str]
    timing: dict[str, float]
    n_samples: int
    robustness_curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    removal_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    gallery: list[SampleView] = field(default_factory=list)
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)
    explanations: dict[str, torch.Tensor] = field(default_factory=dict)


def planned_metrics(config: AuditConfig) -> list[str]:
    """Every metric name this configuration sets out to compute."""
    names = ["clean.accuracy", "clean.precision", "clean.recall", "clean.f1", "clean.roc_auc"]
    for attack in config.attacks:
        for eps in config.eps:
            tag = f"{attack}@{format_eps(eps)}"
            names += [f"robust.accuracy.{tag}", f"robust.attack_success_rate.{tag}"]
    for explainer in config.explainers:
        names += [f"faithfulness.deletion_auc.{explainer}", f"faithfulness.insertion_auc.{explainer}"]
    return names


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_subject(model_path: str, *, data_spec: str | None, label_column: str, max_samples: int, seed: int,
                 device_name: str) -> Subject:
    """The checkpoint's detector with the data to audit, validated against each other."""
    device = resolve_device(device_name)
    checkpoint = load_checkpoint(model_path, device=device)
    meta = checkpoint.metadata
    trained_on = meta["data"]
    if data_spec is None or _same_data(data_spec, trained_on["name"]):
        spec = trained_on["name"]
        if not is_builtin(spec) and not Path(spec).is_file():
            raise BadInputError(
                f"the checkpoint's training data {spec!r} is not readable here; pass --data with the rows to audit"
            )
        table = load_table(spec, label_column=trained_on.get("label_column", label_column),
                           seed=trained_on.get("generator_seed", 0))
        data = split_table(table, seed=trained_on["split_seed"]).test
    else:
        spec = data_spec
        table = load_table(spec, label_column=label_column)
        data = align_table(table, feature_names=checkpoint.feature_names, class_names=checkpoint.class_names,
                           scaler=checkpoint.scaler)
    if data.feature_names != checkpoint.feature_names:
        raise BadInputError(
            f"expected the checkpoint's {len(checkpoint.feature_names)} features, the data has "
            f"{len(data.feature_names)}; pass --data with the same columns the model was trained on"
        )
    data.positive_class = meta.get("positive_class")
    data = stratified_subset(data, max_samples, seed=seed)
    if len(data) == 0:
        raise BadInputError(f"no rows to audit in {spec}")
    if checkpoint.train_mean is not None:
        baseline = checkpoint.train_mean.float()
    else:
        baseline = torch.as_tensor(data.x.mean(axis=0))
    path = Path(model_path)
    model_info = {
        "path": str(path), "sha256": sha256_of(path), "detector": meta["detector"]["kind"],
        "defense": meta["defense"].get("name", "none"), "data set": trained_on["name"],
        "hparams": meta["detector"]["hparams"], "training": meta.get("training", {}),
    }
    return Subject(detector=checkpoint.detector, data=data, baseline=baseline.to(device), model_info=model_info,
                   device=device)


def _same_data(spec: str, trained_on: str) -> bool:
    """Whether ``spec`` names the data the checkpoint was trained on (then its test split is audited)."""
    if spec == trained_on:
        return True
    if is_builtin(spec) or is_builtin(trained_on):
        return False
    return Path(spec).resolve() == Path(trained_on).resolve()


def run_audit(subject: Subject, config: AuditConfig, *, progress: bool = True) -> AuditResult:
    detector, data, device = subject.detector, subject.data, subject.device
    detector.eval()
    x = torch.as_tensor(data.x, device=device)
    y = torch.as_tensor(data.y, device=device)
    if x.shape[1:] != torch.Size(detector.input_shape):
        raise BadInputError(
            f"expected x of shape (N, {', '.join(map(str, detector.input_shape))}), got {tuple(x.shape)}"
        )
    bootstrap = Bootstrap(len(x), seed=config.seed)
    timing: dict[str, float] = {}
    skipped: dict[str, str] = {}

    started = time.perf_counter()
    proba = predict_proba(detector, x, batch_size=config.batch_size)
    pred = proba.argmax(1)
    y_np, proba_np, pred_np = data.y, proba.cpu().numpy().astype(np.float64), pred.cpu().numpy()
    metrics, clean_skipped = clean_metrics(y_np, proba_np, positive=data.positive_class,
                                           n_classes=detector.n_classes, bootstrap=bootstrap)
    skipped.update(clean_skipped)
    confusion = np.zeros((detector.n_classes, detector.n_classes), dtype=int)
    np.add.at(confusion, (y_np, pred_np), 1)
    timing["clean"] = time.perf_counter() - started

    started = time.perf_counter()
    domain = Domain.unit(detector.input_shape)
    attacks = {name: make_attack(name) for name in config.attacks}
    robust = run_attacks(detector, x, y, pred, attacks, list(config.eps), domain=domain, seed=config.seed,
                         batch_size=config.batch_size, bootstrap=bootstrap, keep_examples=config.save_adversarial,
                         progress=progress)
    metrics.update(robust.metrics)
    for name in planned_metrics(config):
        if name.startswith("robust.attack_success_rate.") and name not in metrics:
            skipped[name] = "no audited sample was classified correctly when clean"
    timing["robustness"] = time.perf_counter() - started

    started = time.perf_counter()
    attributions = explain_all(detector, x, pred, config, baseline=subject.baseline, progress=progress)
    timing["explain"] = time.perf_counter() - started

    started = time.perf_counter()
    curves_view = {}
    for name, attribution in attributions.items():
        curves = removal_curves(detector, x, attribution, pred, subject.baseline)
        metrics[f"faithfulness.deletion_auc.{name}"] = bootstrap.mean(curves.deletion_auc)
        metrics[f"faithfulness.insertion_auc.{name}"] = bootstrap.mean(curves.insertion_auc)
        curves_view[name] = {
            "fractions": curves.fractions.tolist(),
            "deletion": curves.deletion.mean(0).tolist(),
            "insertion": curves.insertion.mean(0).tolist(),
        }
    timing["faithfulness"] = time.perf_counter() - started

    result = AuditResult(
        metrics=metrics, skipped=skipped, timing={k: round(v, 3) for k, v in timing.items()}, n_samples=len(x),
        robustness_curves=robust.curves, removal_curves=curves_view, confusion=confusion.tolist(),
        gallery=_gallery(data, proba_np, attributions),
    )
    if config.save_adversarial:
        result.adversarial = {"x": x.cpu(), "y": y.cpu(), **robust.adversarial}
    if config.save_explanations:
        result.explanations = {"x": x.cpu(), "y": y.cpu(), "pred": pred.cpu().long(),
                               **{f"attr/{k}": v.cpu() for k, v in attributions.items()}}
    return result


def explain_all(detector: Detector, x: torch.Tensor, target: torch.Tensor, config: AuditConfig, *,
                baseline: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    index = torch.arange(len(x))
    out: dict[str, torch.Tensor] = {}
    batches = range(0, len(x), config.batch_size)
    bar = tqdm(total=len(config.explainers) * len(batches), desc="explain", unit="batch",
               disable=None if progress else True, leave=False)
    try:
        for name in config.explainers:
            explainer = make_explainer(name)
            parts = []
            for start in batches:
                rows = slice(start, start + config.batch_size)
                parts.append(explainer.explain(detector, x[rows], target[rows], baseline=baseline,
                                               seed=config.seed, index=index[rows]).detach())
                bar.update()
            out[name] = torch.cat(parts)
    finally:
        bar.close()
    return out


def _gallery(data: Dataset, proba: np.ndarray, attributions: dict[str, torch.Tensor]) -> list[SampleView]:
    """The first few correct and the first few misclassified samples, with their top features by attention."""
    pred = proba.argmax(1)
    correct_rows = np.flatnonzero(pred == data.y)[:GALLERY_SIZE]
    wrong_rows = np.flatnonzero(pred != data.y)[:GALLERY_SIZE]
    lead = "attention" if "attention" in attributions else next(iter(attributions))
    views = []
    for row in [*correct_rows, *wrong_rows]:
        lead_attr = attributions[lead][row].flatten().cpu().numpy()
        top = np.argsort(-lead_attr, kind="stable")[:GALLERY_FEATURES]
        scaled = {}
        for name, attribution in attributions.items():
            values = attribution[row].flatten().cpu().numpy()[top].astype(np.float64)
            peak = attribution[row].abs().max().item() or 1.0
            scaled[name] = (values / peak).tolist()
        views.append(SampleView(
            row=int(data.row_index[row]), label=data.class_names[int(data.y[row])],
            predicted=data.class_names[int(pred[row])], confidence=float(proba[row].max()),
            correct=bool(pred[row] == data.y[row]), features=[data.feature_names[i] for i in top],
            values=[float(data.x[row].flatten()[i]) for i in top], attributions=scaled,
        ))
    return views
