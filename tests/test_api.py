"""The Python API: the example in docs/api.md runs as written, and an audit of a detector in memory reports
the accuracy it has by construction."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor.api import AuditConfig, audit
from detectors.table import Dataset
from detectors.errors import BadInputError

ROOT = Path(__file__).resolve().parents[1]


def documented_example() -> str:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_shows_the_documented_example():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert documented_example() in readme


def test_the_documented_example_runs_and_saves_what_audit_run_writes(trained_checkpoint, tmp_path, monkeypatch):
    shutil.copy(trained_checkpoint[0], tmp_path / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(documented_example(), "docs/api.md", "exec"), namespace)
    result = namespace["result"]
    out = tmp_path / "audit-out"
    assert sorted(path.name for path in out.iterdir()) == ["junit.xml", "report.html", "results.json", "summary.md"]
    saved = json.loads((out / "results.json").read_text())
    assert {name: entry["value"] for name, entry in saved["metrics"].items()} == result.metrics
    assert saved["passed"] is result.passed and [gate["name"] for gate in saved["gates"]] == [g.name for g in
                                                                                              result.gates]
    assert "<table>" in result._repr_html_()


def test_a_detector_in_memory_reports_its_own_accuracy(tiny_detector):
    rng = np.random.default_rng(0)
    x = rng.random((40, 6), dtype=np.float32)
    with torch.no_grad():
        pred = tiny_detector(torch.as_tensor(x)).argmax(1).numpy()
    y = np.where(np.arange(40) < 30, pred, 1 - pred)  # the detector is right on 30 of 40 rows by construction
    data = Dataset(name="by hand", split="all", x=x, y=y, feature_names=[f"f{i}" for i in range(6)],
                   class_names=["benign", "malicious"], positive_class=1)
    result = audit(tiny_detector, data, config=AuditConfig(max_samples=0, eps=(0.1,), attacks=("fgsm",),
                                                           explainers=("attention", "random")))
    assert result.metrics["clean.accuracy"] == pytest.approx(0.75)
    assert result.document["model"]["path"] == "(in memory) FeatureTokenTransformer"
    with pytest.raises(BadInputError, match="not a detectors.base.Detector"):
        audit(torch.nn.Linear(6, 2), data)
