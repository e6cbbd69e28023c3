"""The foundation's promises on the trained breast-cancer detector, checked end to end."""

import json

from click.testing import CliRunner

from auditor.cli import cli
from exits import gate_exit_code


def test_breast_cancer_detector_is_accurate_and_robust_accuracy_falls_with_eps(trained_checkpoint, tmp_path):
    path, summary = trained_checkpoint
    assert summary["test_accuracy"] >= 0.93
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--out", str(out), "--attacks", "fgsm,pgd", "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    metrics = {k: v["value"] for k, v in json.loads((out / "results.json").read_text())["metrics"].items()}
    assert metrics["clean.accuracy"] >= 0.93
    eps = ["0.01", "0.03", "0.1"]
    for attack in ("fgsm", "pgd"):
        curve = [metrics["clean.accuracy"]] + [metrics[f"robust.accuracy.{attack}@{e}"] for e in eps]
        assert all(a >= b for a, b in zip(curve, curve[1:])), (attack, curve)
        assert curve[-1] < curve[0]
    for e in eps:
        assert metrics[f"robust.accuracy.fgsm@{e}"] >= metrics[f"robust.accuracy.pgd@{e}"]
    # integrated gradients is a faithful reference: it must beat random on deletion and insertion
    assert metrics["faithfulness.deletion_auc.integrated-gradients"] < metrics["faithfulness.deletion_auc.random"]
    assert metrics["faithfulness.insertion_auc.integrated-gradients"] > metrics["faithfulness.insertion_auc.random"]
