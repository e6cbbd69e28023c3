"""report.html for each kind of detector: the seven sections, the plots and heat maps that fit the input."""

from __future__ import annotations

import re

import pytest

from auditor.gates import default_policy, evaluate
from auditor.metrics import MetricValue
from auditor.report.document import finite_metrics, results_document
from auditor.report.html import agreement_tables, explainer_table, render_report
from auditor.run.pipeline import run_audit
from auditor.run.config import AuditConfig
from auditor.stages.order import planned_metrics
from auditor.run.subject import load_subject

SECTIONS = ("Verdict", "Detection", "Robustness", "Attention under attack", "Faithfulness", "Samples", "Method")
KINDS = {"tabular": "breast-cancer", "vit": "digits", "sequence": "sequences:400"}


def tiny_report(tmp_path, detector: str, data: str) -> str:
    from auditor.training.job import train_and_save

    path = tmp_path / f"{detector}.safetensors"
    train_and_save(detector=detector, data_spec=data, epochs=1, seed=0, device="cpu", out_path=path, progress=False)
    config = AuditConfig.from_profile("quick", attacks=("fgsm", "attention-shift"), max_samples=12, eps=(0.1,),
                                      explainers=("attention", "integrated-gradients", "random"), device="cpu")
    subject = load_subject(str(path), data_spec=None, label_column="label", max_samples=12, seed=0,
                           device_name="cpu")
    result = run_audit(subject, config, progress=False)
    skipped = dict(result.skipped)
    metrics = finite_metrics(result.metrics, skipped)
    policy = default_policy(planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)
    gates = evaluate(policy, metrics, skipped)
    model = {k: subject.model_info[k] for k in ("path", "sha256", "detector", "defense", "data set")}
    document = results_document(model=model, data={"name": subject.data.name, "split": subject.data.split,
                                                   "n_samples": result.n_samples},
                                config={**config.to_dict(), "device": "cpu"}, metrics=metrics, skipped=skipped,
                                gates=gates, policy=policy, timing=result.timing, masking=result.masking)
    html = render_report(document, policy=policy, metrics=metrics, result=result, attacks=list(config.attacks),
                         explainers=list(config.explainers), class_names=subject.data.class_names,
                         feature_names=subject.data.feature_names, row_index=[int(i) for i in subject.data.row_index], skipped=skipped)
    return html.decode("utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("detector", list(KINDS))
def test_every_kind_of_detector_gets_all_seven_sections(tmp_path, detector):
    html = tiny_report(tmp_path, detector, KINDS[detector])
    headings = re.findall(r"<h2>([^<]+)</h2>", html)
    assert headings == list(SECTIONS)
    for anchor in ("detection", "robustness", "attention", "faithfulness", "samples", "method"):
        assert f'<section id="{anchor}">' in html
    # ROC, reliability, robust accuracy, attention vs eps, removal curves; evasion only for binary detectors
    assert html.count("<svg") >= 5
    assert "expected calibration error" in html and "Metric by explainer" in html
    assert "Can attention be trusted as an explanation of this detector?" in html  # the verdict panel
    gain = "faithfulness.deletion_gain.attention"  # what the verdict's beats-chance line reads
    assert f'href="#metric-{gain}"' in html and f'id="metric-{gain}"' in html  # each line links to its metric
    assert '<p id="trust-verdict"><strong>Verdict:' in html
    assert "The most affected samples" in html
    if detector == "tabular":
        assert 'class="track wide"' in html  # feature bars for clean against attacked attention
        assert "data:image/png" not in html
    else:
        assert html.count("data:image/png;base64,") >= 4  # overlays / strips, inline
    assert len(html.encode()) < 2_000_000


def _value(v: float, half: float = 0.01) -> MetricValue:
    return MetricValue(v, (v - half, v + half))


def test_explainer_table_is_built_from_metric_names_and_marks_the_best():
    metrics = {
        "faithfulness.deletion_auc.attention": _value(0.30),
        "faithfulness.deletion_auc.integrated-gradients": _value(0.20),
        "faithfulness.deletion_auc.random": _value(0.10),  # random never counts as the best
        "faithfulness.insertion_auc.attention": _value(0.70),
        "faithfulness.insertion_auc.integrated-gradients": _value(0.60),
        "clean.accuracy": _value(0.9),
    }
    table = explainer_table(metrics, [], ["attention", "integrated-gradients", "random"])
    assert table.columns == ["deletion_auc", "insertion_auc"] and table.arrows == ["↓", "↑"]
    rows = dict(table.rows)
    assert [c.text for c in rows["attention"]] == ["0.3 ± 0.01", "0.7 ± 0.01"]
    assert [c.best for c in rows["attention"]] == [False, True]
    assert [c.best for c in rows["integrated-gradients"]] == [True, False]
    assert rows["random"][1].text == "—" and not rows["random"][0].best


def test_agreement_matrix_comes_from_agreement_names():
    metrics = {"agreement.kendall_tau.attention~integrated-gradients": _value(0.25),
               "agreement.kendall_tau.rollout~integrated-gradients": _value(0.5),
               "agreement.kendall_tau.attention~saliency": _value(0.125)}
    [(kind, table)] = agreement_tables(metrics)
    assert kind == "kendall_tau" and table.columns == ["integrated-gradients", "saliency"]
    assert [(name, [c.text for c in cells]) for name, cells in table.rows] == [
        ("attention", ["0.25 ± 0.01", "0.125 ± 0.01"]), ("rollout", ["0.5 ± 0.01", "—"])]




def test_each_norm_is_worded_once_in_the_catalogue():
    """Every registered attack's norm has its words in auditor.catalogue.attacks.NORM_LABELS; the headline, the metric
    tables, the plots' axes, summary.md and the gates' hints read them there."""
    from attacks import ATTACKS, TEXT_ATTACKS
    from auditor.catalogue.attacks import NORM_LABELS
    from auditor.gates import Gate, Policy, validate_policy
    from detectors.errors import BadInputError
    from auditor.report.document import render_summary
    from auditor.report.render import metric_matrices
    from auditor.report.views import worst_rows

    assert {family.norm for family in {**ATTACKS, **TEXT_ATTACKS}.values()} == set(NORM_LABELS)
    worst = {"robust.accuracy.worst@0.1": _value(0.4), "robust.accuracy.worst-l2@0.5": _value(0.2),
             "robust.accuracy.worst-tokens@2": _value(0.3)}
    assert [row[0] for row in worst_rows(worst)] == ["L-inf eps 0.1", "L2 eps 0.5", "2 tokens changed"]
    per_attack = {"robust.accuracy.pgd@0.1": _value(0.5), "robust.accuracy.cw@0.5": _value(0.4),
                  "robust.accuracy.hotflip@2": _value(0.3), "robust.accuracy.embedding-pgd@0.1": _value(0.2)}
    assert [m.family for m in metric_matrices(per_attack, list(ATTACKS) + list(TEXT_ATTACKS), [])] == [
        "robust.accuracy", "robust.accuracy (L2 budgets)", "robust.accuracy (tokens changed)",
        "robust.accuracy (embedding space, L-inf)"]
    document = {"passed": True, "model": {"path": "m", "detector": "tabular", "defense": "none"},
                "data": {"n_samples": 10, "name": "d"}, "policy": {"source": "default"}, "gates": [],
                "metrics": {name: {"value": v.value, "ci95": None} for name, v in worst.items()}, "skipped": {}}
    text = render_summary(document).decode()
    assert "every L-inf evasion attack: eps 0.1" in text and "every L2 evasion attack: eps 0.5" in text
    for metric, option in (("hotflip@3", "--token-budget"), ("cw@0.7", "--eps-l2"), ("pgd@0.2", "--eps")):
        with pytest.raises(BadInputError, match=f"add {metric.split('@')[1]} to {option}$"):
            validate_policy(Policy(gates=(Gate(f"robust.accuracy.{metric}", ">=", 0.5),), source="p.toml"), [],
                            eps_grid=(0.1,), attacks=("hotflip", "cw", "pgd"), eps_l2=(0.5,), token_budget=(2,))
