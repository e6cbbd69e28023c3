"""audit compare: side by side, best per row, Pareto front, training differences, refusal of mismatched
configurations, self-contained HTML."""

import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.report.compare import Audited, _choose_robust_metric, metric_rows, pareto_front
from auditor.metrics import MetricValue
from exits import gate_exit_code

FAST = ["--eps", "0.03,0.1", "--max-samples", "60", "--attacks", "fgsm,pgd", "--quiet"]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for key, value in attrs if key in ("src", "href", "xlink:href", "action") and value]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_pareto_front_keeps_what_no_other_point_beats_on_both_axes():
    points = {"none": (0.99, 0.30), "pgd-at": (0.97, 0.80), "trades": (0.96, 0.70), "worse": (0.95, 0.20),
              "same": (0.99, 0.30)}
    assert sorted(pareto_front(points)) == ["none", "pgd-at", "same"]
    # a robust metric where lower is better (evasion rate): the smallest is best
    assert sorted(pareto_front({"a": (0.9, 0.1), "b": (0.8, 0.05), "c": (0.8, 0.2)}, robust_higher=False)) == ["a", "b"]


def test_best_per_row_follows_the_metrics_direction():
    rows = metric_rows([
        {"clean.accuracy": MetricValue(0.9), "robust.evasion_rate.pgd@0.1": MetricValue(0.3)},
        {"clean.accuracy": MetricValue(0.8), "robust.evasion_rate.pgd@0.1": MetricValue(0.1),
         "faithfulness.insertion_auc.attention": MetricValue(0.5)},
    ])
    by_name = {row.name: row for row in rows}
    assert by_name["clean.accuracy"].best == [True, False] and by_name["clean.accuracy"].arrow == "↑"
    assert by_name["robust.evasion_rate.pgd@0.1"].best == [False, True]
    assert by_name["faithfulness.insertion_auc.attention"].best == [False, False]  # one value: nothing to beat
    assert [row.name.split(".")[0] for row in rows] == ["clean", "robust", "faithfulness"]


@pytest.fixture(scope="module")
def audits(trained_checkpoint, tmp_path_factory):
    """One real audit (its pgd@0.1 set to 0.4) and two fabricated from it: a 'hardened' checkpoint (0.8,
    less accurate, trained with pgd-at) and a 'dominated' one (worse on both)."""
    root = tmp_path_factory.mktemp("compare")
    real = root / "undefended"
    result = invoke("run", "--model", trained_checkpoint[0], "--out", real, *FAST)
    assert result.exit_code == gate_exit_code(real), result.output
    document = json.loads((real / "results.json").read_text(encoding="utf-8"))

    def fabricate(name, clean_delta, robust_value, defense):
        changed = copy.deepcopy(document)
        metrics = changed["metrics"]
        metrics["clean.accuracy"]["value"] += clean_delta
        metrics["clean.accuracy"]["ci95"] = None
        for attack in ("pgd", "worst"):  # fgsm is weaker on these made-up checkpoints: pgd's value is the worst
            metrics[f"robust.accuracy.{attack}@0.1"] = {"value": robust_value,
                                                        "ci95": [robust_value - 0.05, robust_value + 0.05]}
        changed["model"]["defense"] = defense
        changed["model"]["defense_settings"] = {"name": defense, "eps": 0.05, "steps": 5} if defense != "none" \
            else {"name": "none"}
        changed["model"]["training"]["epochs"] = 8
        folder = root / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(changed), encoding="utf-8")
        return folder

    hardened = fabricate("hardened", -0.05, 0.8, "pgd-at")
    dominated = fabricate("dominated", -0.1, 0.3, "none")
    for attack in ("pgd", "worst"):
        document["metrics"][f"robust.accuracy.{attack}@0.1"] = {"value": 0.4, "ci95": [0.35, 0.45]}
    (real / "results.json").write_text(json.dumps(document), encoding="utf-8")
    return root, real, hardened, dominated


def test_compare_writes_the_three_outputs_with_the_pareto_front_and_differences(audits):
    root, real, hardened, dominated = audits
    out = root / "cmp"
    result = invoke("compare", real, hardened, dominated, "--out", out)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert [a["name"] for a in document["audits"]] == ["undefended", "hardened", "dominated"]
    assert document["differences"] == [] and document["pareto"]["y"] == "robust.accuracy.worst@0.1"
    assert sorted(document["pareto"]["front"]) == ["hardened", "undefended"]
    assert document["metrics"]["robust.accuracy.pgd@0.1"]["best"] == ["hardened"]
    assert document["metrics"]["clean.accuracy"]["best"] == ["undefended"]
    assert document["training"]["defense"] == {"values": {"undefended": "none", "hardened": "pgd-at",
                                                          "dominated": "none"}, "differs": True}
    assert document["training"]["training epochs"]["differs"] is True
    assert set(document["verdicts"]) == {"undefended", "hardened", "dominated"}

    html = (out / "compare.html").read_text(encoding="utf-8")
    parser = Tags()
    parser.feed(html)
    assert [link for link in parser.links if not link.startswith("#")] == []
    assert "script" not in parser.tags and "link" not in parser.tags and "style" in parser.tags
    assert parser.tags.count("svg") >= 3  # Pareto scatter, robustness curves, faithfulness curves
    assert "Pareto front" in html and "Training differences" in html and 'class="differs"' in html
    assert 'num best' in html
    markdown = (out / "compare.md").read_text(encoding="utf-8")
    assert "| defense (differs) | none | pgd-at | none |" in markdown


def test_one_policy_re_evaluated_on_every_checkpoint(audits, tmp_path):
    root, real, hardened, dominated = audits
    policy = tmp_path / "p.toml"
    policy.write_text('[gates]\n"robust.accuracy.pgd@0.1" = ">= 0.7"\n')
    result = invoke("compare", real, hardened, dominated, "--out", tmp_path / "cmp", "--policy", policy)
    assert result.exit_code == 0, result.output
    verdicts = json.loads((tmp_path / "cmp" / "compare.json").read_text())["verdicts"]
    assert {name: v["passed"] for name, v in verdicts.items()} == {"undefended": False, "hardened": True,
                                                                 "dominated": False}
    assert "passing the policy: hardened" in result.output


def test_mismatched_configurations_are_refused_naming_the_difference(audits, tmp_path):
    root, real, hardened, _ = audits
    other = tmp_path / "other-eps"
    other.mkdir()
    document = json.loads((hardened / "results.json").read_text())
    document["config"]["eps"] = [0.03, 0.2]
    (other / "results.json").write_text(json.dumps(document))
    out = tmp_path / "cmp"
    result = invoke("compare", real, other, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to compare") and "eps grid differs" in lines[0]
    assert "--allow-mismatch" in lines[0] and not out.exists()

    result = invoke("compare", real, other, "--out", out, "--allow-mismatch")
    assert result.exit_code == 0, result.output
    differences = json.loads((out / "compare.json").read_text())["differences"]
    assert len(differences) == 1 and differences[0].startswith("eps grid differs: undefended [0.03, 0.1]")
    assert "Configurations differ" in (out / "compare.html").read_text(encoding="utf-8")


def test_bad_compare_inputs_are_exit_2(audits, tmp_path):
    root, real, hardened, _ = audits
    result = invoke("compare", real, "--out", tmp_path / "cmp")
    assert result.exit_code == 2 and "at least two" in result.output
    result = invoke("compare", real, tmp_path, "--out", tmp_path / "cmp")
    assert result.exit_code == 2 and "holds no results.json" in result.output
    result = invoke("compare", real, hardened, "--out", tmp_path / "cmp", "--robust-metric", "robust.accuracy.pgd@0.5")
    assert result.exit_code == 2 and "--robust-metric" in result.output


def test_compare_models_audits_each_with_one_configuration(trained_checkpoint, tmp_path):
    model = trained_checkpoint[0]
    out = tmp_path / "cmp"
    result = invoke("compare", "--model", model, "--model", model, "--out", out, "--eps", "0.1",
                    "--max-samples", "30", "--attacks", "fgsm", "--quiet")
    assert result.exit_code == 0, result.output
    stem = Path(model).stem
    for name in (f"{stem}-1", f"{stem}-2"):
        assert (out / "runs" / name / "results.json").is_file()
    document = json.loads((out / "compare.json").read_text())
    assert document["pareto"]["y"] == "robust.accuracy.worst@0.1"  # the headline: the worst case
    # the same checkpoint audited twice with one seed: identical numbers, so no row has a best
    assert all(not row["best"] for row in document["metrics"].values())


def test_audited_metrics_read_back_with_intervals():
    audit = Audited("a", "x", {"metrics": {"clean.accuracy": {"value": 0.9, "ci95": [0.8, 1.0]}}})
    assert audit.metrics["clean.accuracy"] == MetricValue(0.9, (0.8, 1.0))


def test_the_pareto_axis_is_the_headline_worst_case_then_pgd_at_the_largest_common_eps():
    def metrics(*names):
        return {name: MetricValue(0.5) for name in names}

    both = metrics("robust.accuracy.worst@0.1", "robust.accuracy.pgd@0.1", "robust.accuracy.fgsm@0.1",
                   "robust.accuracy.worst-l2@0.5", "robust.accuracy.worst@0.03")
    assert _choose_robust_metric([both, both], None) == "robust.accuracy.worst@0.1"
    older = metrics("robust.accuracy.pgd@0.1", "robust.accuracy.fgsm@0.1", "robust.accuracy.pgd@0.03")
    assert _choose_robust_metric([both, older], None) == "robust.accuracy.pgd@0.1"  # only what every audit holds
    l2_only = metrics("robust.accuracy.worst-l2@0.5", "robust.accuracy.pgd-l2@0.5")
    assert _choose_robust_metric([l2_only], None) is None  # L2 radii are other units than the L-inf eps
