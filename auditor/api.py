"""The Python API: one audit from a script, a notebook or a user's own pytest.

    from auditor.api import AuditConfig, audit

    result = audit("model.safetensors", config=AuditConfig(max_samples=200, eps=(0.03, 0.1)))
    assert result.metrics["clean.accuracy"] >= 0.9
    result.save("audit-out")      # report.html, results.json, junit.xml, summary.md
    result.log_to_mlflow()        # one MLflow run (the mlflow extra; sqlite:///mlflow.db unless told)

It takes the path of ``audit run``: the subject is loaded (a checkpoint, as ``audit run --model`` loads it, or
a detector already in memory with its data), then bound to the configuration and the policy, audited stage
by stage and rendered by the same functions (:func:`auditor.run.runner.bind`, :func:`auditor.run.pipeline.run_audit`,
:func:`auditor.run.runner.outputs`), so the numbers and the files are the ones the command line gives.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from auditor.run.pipeline import run_audit
from auditor.run.config import AuditConfig
from auditor.gates import GateResult, load_policy
from auditor.report.outputs import write_atomically
from auditor.run.runner import bind, outputs
from auditor.run.subject import Subject, build_domain, load_subject
from detectors.base import Detector
from detectors.categorical import most_frequent_codes
from detectors.data import stratified_subset
from detectors.table import Dataset
from detectors.devices import resolve_device
from detectors.errors import BadInputError

__all__ = ["AuditConfig", "AuditResult", "audit"]


@dataclass
class AuditResult:
    """One audit: ``metrics`` (name -> value, as results.json's ``metrics`` holds them), their 95% ``intervals``
    (None where a metric is not a mean over samples), ``skipped`` (name -> why it was not computed), the
    policy's ``gates`` and whether all ``passed``; ``document`` is results.json as a dict."""

    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float] | None]
    skipped: dict[str, str]
    gates: list[GateResult]
    passed: bool
    exit_code: int
    document: dict
    files: dict[str, bytes]

    def save(self, folder: str | Path) -> Path:
        """Write what ``audit run`` writes (report.html, results.json, junit.xml, summary.md) into ``folder``;
        returns the report's path."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise BadInputError(f"{str(folder)!r} exists and is not a folder")
        write_atomically(folder, self.files)
        return folder / "report.html"

    def log_to_mlflow(self, uri: str | None = None, *, experiment: str | None = None) -> str:
        """Log this audit as one MLflow run, as ``audit run --mlflow [URI]`` does (``uri`` None: the
        ``MLFLOW_TRACKING_URI`` environment variable, else sqlite:///mlflow.db; ``experiment`` None: the model's
        name); returns the run's id. Needs the ``mlflow`` extra."""
        from auditor.export.mlflow_runs import Tracking, experiment_name, log_audit

        tracking = Tracking(uri, experiment or experiment_name(str(self.document["model"]["path"])))
        return log_audit(tracking, self.files, exit_code=self.exit_code)

    def _repr_html_(self) -> str:
        """A notebook's view: the verdict, the gates and the metrics with their intervals (the full report is
        :meth:`save`'s report.html)."""
        verdict = "PASSED" if self.passed else "FAILED"
        gates = "".join(f"<tr><td><code>{html.escape(g.name)}</code></td><td>{_number(g.value)}</td>"
                        f"<td>{'pass' if g.passed else '<b>FAIL</b>'}</td></tr>" for g in self.gates)
        metrics = "".join(f"<tr><td><code>{html.escape(name)}</code></td><td>{_number(value)}</td>"
                          f"<td>{_interval(self.intervals.get(name))}</td></tr>"
                          for name, value in self.metrics.items())
        return (f"<div><b>attention-audit: {verdict}</b> ({sum(g.passed for g in self.gates)}/{len(self.gates)} "
                f"gates passed)<table><tr><th>gate</th><th>value</th><th>result</th></tr>{gates}</table>"
                f"<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>{metrics}</table></div>")


def audit(model: str | Path | Detector, data: str | Path | Dataset | None = None, *,
          config: AuditConfig | None = None, policy: str | Path | None = None, label_column: str = "label",
          progress: bool = False) -> AuditResult:
    """Audit ``model`` on ``data`` under ``config`` (default: the quick profile) and judge it by ``policy``
    (a policy file; default: the gates ``audit run`` applies without ``--policy``).

    ``model``: a checkpoint written by ``audit train`` (``data``: None for its own test split, or a data set
    name or CSV/NPZ path with the same columns), or a :class:`~detectors.base.Detector` in memory with its
    ``data`` as a :class:`~detectors.data.Dataset` already scaled to [0, 1]. Saving adversarial examples or
    explanations is ``audit run``'s (``--save-adversarial``, ``--save-explanations``): they are written
    while auditing, block by block.
    """
    config = config or AuditConfig()
    if config.save_adversarial or config.save_explanations:
        raise BadInputError("save_adversarial and save_explanations write tensors while auditing; use "
                            "`audit run --save-adversarial/--save-explanations` for them")
    loaded_policy = load_policy(Path(policy)) if policy is not None else None
    if isinstance(model, torch.nn.Module):
        subject = _in_memory_subject(model, data, config)
    elif isinstance(model, (str, Path)):
        if isinstance(data, Dataset):
            raise BadInputError("a checkpoint reads its data itself: pass a data set name or a CSV/NPZ path "
                                "(or None for its own test split), not a Dataset")
        subject = load_subject(str(model), data_spec=None if data is None else str(data), label_column=label_column,
                               max_samples=config.max_samples, seed=config.seed, device_name=config.device,
                               frozen_features=config.frozen_features)
    else:
        raise BadInputError(f"expected a checkpoint path or a Detector, got {type(model).__name__}")
    config, judged_by, _, subject, baseline, tolerances = bind(subject, config, loaded_policy)
    findings = run_audit(subject, config, progress=progress)
    outcome = outputs(findings, subject, config, judged_by, baseline=baseline, tolerances=tolerances)
    return AuditResult(metrics={name: value.value for name, value in outcome.metrics.items()},
                       intervals={name: value.ci95 for name, value in outcome.metrics.items()},
                       skipped=outcome.document["skipped"], gates=outcome.gates,
                       passed=outcome.document["passed"], exit_code=outcome.exit_code, document=outcome.document,
                       files=outcome.files)


def _in_memory_subject(detector: torch.nn.Module, data, config: AuditConfig) -> Subject:
    """A detector in memory with its scaled rows: the removal baseline is the rows' mean (a categorical column's
    most frequent category), no feature frozen unless the configuration names some (categorical columns are)."""
    if not isinstance(detector, Detector):
        raise BadInputError(f"{type(detector).__name__} is not a detectors.base.Detector (forward_with_attention "
                            "and a token map); audit other models with `audit run --model python:FILE:FACTORY`")
    if not isinstance(data, Dataset):
        raise BadInputError("a detector in memory needs its data as a detectors.data.Dataset scaled to [0, 1]")
    if not np.issubdtype(np.asarray(data.x).dtype, np.floating):
        raise BadInputError("token ids need their tokeniser, which a detector in memory does not bring: audit a text "
                            "model from its checkpoint (audit(\"text.safetensors\") or audit run --model)")
    if tuple(data.input_shape) != tuple(detector.input_shape):
        raise BadInputError(f"expected rows of shape {tuple(detector.input_shape)} for this detector, got "
                            f"{tuple(data.input_shape)}")
    device = resolve_device(config.device)
    data = stratified_subset(data, config.max_samples, seed=config.seed)
    if len(data) == 0:
        raise BadInputError(f"no rows to audit in {data.name}")
    hparams = detector.hparams()
    frozen = tuple(config.frozen_features or ())
    model_info = {"path": f"(in memory) {type(detector).__name__}", "sha256": "n/a",
                  "detector": detector.kind or type(detector).__name__, "defense": "unknown", "data set": data.name,
                  "hparams": hparams, "training": {}, "attention": hparams.get("attention", "softmax")}
    # categorical columns keep their categories here too: frozen for every continuous attack, removed to the most
    # frequent category rather than to an average of codes
    categories = dict(data.categories)
    baseline = most_frequent_codes(data.x, list(data.feature_names), categories)
    return Subject(detector=detector.to(device).eval(), data=data,
                   baseline=torch.as_tensor(baseline, device=device), model_info=model_info,
                   device=device, domain=build_domain(tuple(detector.input_shape), list(data.feature_names),
                                                      frozen=frozen, categories=categories),
                   frozen_features=frozen)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _interval(ci95) -> str:
    return "—" if not ci95 else f"[{ci95[0]:.3g}, {ci95[1]:.3g}]"
