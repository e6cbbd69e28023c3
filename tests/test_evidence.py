"""A gate needs evidence: no policy passes by having no gate, an interval on a handful of rows is no
interval, and a metric that is 0/0 is skipped with its reason, never reported as 0.0."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.stages.clean import clean_metrics
from auditor.gates import MIN_INTERVAL_ROWS, Gate, Policy, evaluate, load_policy
from auditor.metrics import Bootstrap, MetricValue
from detectors.errors import BadInputError

# the cheapest audit the CLI runs: one attack, one budget, attention and random only
CHEAP = ["--eps", "0.1", "--attacks", "fgsm", "--explainers", "attention,random", "--no-masking-checks", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def model(trained_checkpoint):
    return trained_checkpoint[0]


@pytest.mark.parametrize("text,match", [
    ("", "holds no table"),
    ("# only a comment\n", "holds no table"),
    ("[gates]\n", "[gates] is empty"),
    ('[gates]\n[regression]\n"clean.accuracy" = 0.02\n', "[gates] is empty"),
])
def test_a_policy_without_any_gate_is_bad_input(tmp_path, text, match):
    path = tmp_path / "audit.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BadInputError, match=match.replace("[", r"\[").replace("]", r"\]")):
        load_policy(path)


def test_an_empty_policy_file_is_exit_2_before_any_work(model, tmp_path):
    policy = tmp_path / "audit.toml"
    policy.write_text("", encoding="utf-8")
    result = invoke("run", "--model", model, "--policy", policy, "--out", tmp_path / "out", *CHEAP)
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ") and "holds no table" in result.output
    assert not (tmp_path / "out").exists()


def test_a_regression_only_policy_keeps_the_default_gates(model, tmp_path):
    baseline, out = tmp_path / "baseline.json", tmp_path / "out"
    baseline.write_text(json.dumps({"metrics": {"clean.accuracy": {"value": 0.9, "ci95": None}}}), encoding="utf-8")
    policy = tmp_path / "audit.toml"
    policy.write_text('[regression]\n"clean.accuracy" = 0.5\n', encoding="utf-8")
    result = invoke("run", "--model", model, "--policy", policy, "--baseline", baseline, "--out", out,
                    "--max-samples", "2", *CHEAP)
    assert result.exit_code == 1, result.output  # two rows: the default trust gate's interval is no evidence
    document = json.loads((out / "results.json").read_text())
    gated = [g["metric"] for g in document["gates"] if g["kind"] != "regression"]
    assert gated[0] == "clean.accuracy" and "robust.accuracy.worst@0.1" in gated
    assert [g["metric"] for g in document["gates"] if g["kind"] == "regression"] == ["clean.accuracy"]
    assert "with the default gates" in document["policy"]["source"]
    assert "Too few samples (n=2)" in (out / "summary.md").read_text()


@pytest.mark.parametrize("n,passes", [(1, False), (MIN_INTERVAL_ROWS - 1, False), (MIN_INTERVAL_ROWS, True)])
def test_an_interval_gate_on_too_few_samples_fails(n, passes):
    policy = Policy((Gate("clean.accuracy", ">", 0.5, end="lower95"), Gate("clean.accuracy", ">", 0.5)), "t")
    metrics = {"clean.accuracy": MetricValue(1.0, (1.0, 1.0))}
    interval, value = evaluate(policy, metrics, {}, n_rows=n)
    assert interval.passed is passes and value.passed  # a plain threshold reads the value it is given
    if not passes:
        assert f"too few samples (n={n})" in interval.message
    # a per-sample metric's own count wins over the rows audited
    counted = evaluate(policy, {"clean.accuracy": MetricValue(1.0, (1.0, 1.0), n=n)}, {}, n_rows=1000)[0]
    assert counted.passed is passes


@pytest.mark.parametrize("label", [0, 1])
def test_recall_and_f1_on_one_class_are_skipped_not_zero(label):
    y = np.full(8, label)
    proba = np.tile([0.8, 0.2], (8, 1))
    metrics, skipped = clean_metrics(y, proba, positive=1, n_classes=2, bootstrap=Bootstrap(8, seed=0))
    if label == 0:  # no positive sample: recall is 0/0, and so F1
        assert {"clean.recall", "clean.f1", "clean.roc_auc"} <= set(skipped) and "0/0" in skipped["clean.recall"]
        assert "clean.recall" not in metrics and "clean.f1" not in metrics
    else:  # every sample positive and none flagged: recall is a true 0 of 8
        assert metrics["clean.recall"].value == 0.0 and "clean.recall" not in skipped
    three = clean_metrics(np.array([0, 0, 1, 1]), np.tile([0.5, 0.3, 0.2], (4, 1)), positive=None, n_classes=3,
                          bootstrap=Bootstrap(4, seed=0))
    assert {"clean.recall", "clean.f1"} <= set(three[1]) and "class 2" in three[1]["clean.recall"]
