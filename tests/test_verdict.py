"""Issue 15: paired differences, the noise floor, interval-end gates, --relevant-features and the trust panel."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from auditor.stages.agreement import agreement_stage
from auditor.stages.faithfulness import faithfulness_stage
from auditor.gates import Gate, Policy, evaluate, load_policy
from auditor.metrics import Bootstrap, MetricValue
from auditor.run.persample import aggregate
from auditor.verdict import TITLE, panel_markdown, trust_panel, trust_verdict
from detectors.errors import BadInputError

W6 = torch.tensor([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])


class WeightedShare(nn.Module):
    """p(class 1) = w . x, so the ranking by w * x is the most faithful one, its reverse the least."""

    def forward(self, x):
        p = (x * W6).sum(1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)


def _diffs(attributions, n=40):
    x = torch.rand(n, 6, generator=torch.Generator().manual_seed(0))
    target = torch.ones(n, dtype=torch.long)
    outcome = faithfulness_stage(WeightedShare(), x, target, {k: v(x) for k, v in attributions.items()},
                                 baseline=torch.zeros(6), seed=0, index=torch.arange(n), metrics=("deletion",))
    metrics, _ = aggregate(outcome.per_sample, Bootstrap(n, seed=0))
    return outcome.per_sample, metrics


def test_deletion_auc_diff_is_zero_for_identical_explainers_and_positive_for_a_known_better_one():
    per_sample, metrics = _diffs({"attention": lambda x: W6 * x, "integrated-gradients": lambda x: W6 * x,
                                  "random": lambda x: -W6 * x})
    same = metrics["faithfulness.deletion_auc_diff.attention~integrated-gradients"]
    assert np.all(per_sample["faithfulness.deletion_auc_diff.attention~integrated-gradients"] == 0)
    assert same.value == 0 and same.ci95[0] <= 0 <= same.ci95[1]
    better = metrics["faithfulness.deletion_auc_diff.attention~random"]
    assert better.ci95[0] > 0  # the true ranking against its reverse
    _, swapped = _diffs({"attention": lambda x: -W6 * x, "random": lambda x: W6 * x})
    assert swapped["faithfulness.deletion_auc_diff.attention~random"].ci95[1] < 0


def test_random_is_left_out_of_max_sensitivity_with_the_reason(tiny_detector):
    from auditor.stages.explainers import make_explainer

    x = torch.rand(4, 6)
    target = tiny_detector(x).argmax(1)
    explainers = {name: make_explainer(name) for name in ("attention", "random")}
    attributions = {name: e.explain(tiny_detector, x, target, baseline=torch.zeros(6), seed=0, index=torch.arange(4))
                    for name, e in explainers.items()}
    outcome = faithfulness_stage(tiny_detector, x, target, attributions, baseline=torch.zeros(6), seed=0,
                                 index=torch.arange(4), metrics=("max_sensitivity",), explainers=explainers)
    assert set(outcome.per_sample) == {"stability.max_sensitivity.attention"}
    assert "by construction" in outcome.skipped["stability.max_sensitivity.random"]


def test_noise_floor_is_the_references_agreement_and_attention_is_read_against_it(tiny_detector):
    x = torch.rand(5, 6)
    ranking = torch.arange(6.0).expand(5, 6)
    attributions = {"attention": ranking.flip(1), "integrated-gradients": ranking, "feature-ablation": ranking}
    outcome = agreement_stage(tiny_detector, x, None, attributions, baseline=None, seed=0, index=None)
    assert np.allclose(outcome.per_sample["agreement.kendall_tau.integrated-gradients~feature-ablation"], 1.0)
    assert np.allclose(outcome.per_sample["agreement.kendall_tau_vs_floor.attention"], -2.0)
    alone = agreement_stage(tiny_detector, x, None, {k: attributions[k] for k in ("attention", "integrated-gradients")},
                            baseline=None, seed=0, index=None)
    assert not any("floor" in name or "~feature-ablation" in name for name in alone.per_sample)


def test_a_gate_can_test_either_end_of_the_interval(tmp_path):
    path = tmp_path / "audit.toml"
    path.write_text('[gates]\n"faithfulness.deletion_auc_diff.attention~random" = "lower95 > 0"\n'
                    '"clean.ece" = "upper95 <= 0.1"\n"clean.accuracy" = ">= 0.5"\n')
    gates = load_policy(path).gates
    assert [(g.end, g.op, g.threshold) for g in gates] == [("lower95", ">", 0.0), ("upper95", "<=", 0.1),
                                                           ("value", ">=", 0.5)]
    metrics = {"faithfulness.deletion_auc_diff.attention~random": MetricValue(0.05, (-0.01, 0.11)),
               "clean.ece": MetricValue(0.05, (0.02, 0.08)), "clean.accuracy": MetricValue(0.9)}
    results = evaluate(Policy(gates, "t"), metrics, {})
    assert [r.passed for r in results] == [False, True, True]  # the value 0.05 > 0, but its lower end is not
    assert results[0].message == "lower95 -0.01 <= threshold 0" and results[0].name.endswith("lower95 > 0")
    no_interval = evaluate(Policy((Gate("clean.accuracy", ">", 0.0, end="lower95"),), "t"), metrics, {})
    assert not no_interval[0].passed and "no 95% interval" in no_interval[0].message


@pytest.mark.parametrize("condition", ["lower > 0", "lower95 0", "upper95 >> 1", "mean95 > 0"])
def test_bad_interval_syntax_is_bad_input(tmp_path, condition):
    path = tmp_path / "audit.toml"
    path.write_text(f'[gates]\n"clean.accuracy" = "{condition}"\n')
    with pytest.raises(BadInputError, match="lower95 > 0"):
        load_policy(path)


def test_relevant_features_name_csv_columns_or_a_feature_at_every_time_step():
    from auditor.stages.localisation import declare_relevant, relevant_mask_of
    from detectors.table import Dataset

    table = Dataset("t", "all", np.zeros((3, 4), np.float32), np.zeros(3, np.int64), ["a", "b", "c", "d"], ["0"],
                    None)
    mask = relevant_mask_of(declare_relevant(table, ("b", "d")), 3)
    assert mask.tolist() == [[False, True, False, True]] * 3
    sequence = Dataset("s", "all", np.zeros((2, 3, 2), np.float32), np.zeros(2, np.int64),
                       [f"t{t}.f{f}" for t in range(3) for f in range(2)], ["0"], None)
    assert relevant_mask_of(declare_relevant(sequence, ("f1",)), 2)[0].tolist() == [False, True] * 3
    with pytest.raises(BadInputError, match="'e', 'f2' not among the data's features"):
        declare_relevant(table, ("a", "e", "f2"))


def test_unknown_relevant_features_exit_2_naming_them(trained_checkpoint, tmp_path):
    from click.testing import CliRunner

    from auditor.cli import cli

    result = CliRunner().invoke(cli, ["run", "--model", str(trained_checkpoint[0]), "--out", str(tmp_path / "o"),
                                      "--relevant-features", "mean radius,no such column", "--quiet"])
    assert result.exit_code == 2 and "'no such column' not among the data's features" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _m(value, low, high):
    return MetricValue(value, (low, high))


GAIN = "faithfulness.deletion_gain.{}"
GOOD = {
    "sanity.uniform_attention.prediction_kept": _m(0.6, 0.5, 0.7),
    GAIN.format("attention"): _m(0.3, 0.2, 0.4),
    GAIN.format("integrated-gradients"): _m(0.5, 0.4, 0.6),
    GAIN.format("feature-ablation"): _m(0.4, 0.3, 0.5),
    "faithfulness.deletion_auc_diff.attention~integrated-gradients": _m(-0.01, -0.03, 0.01),
    "faithfulness.deletion_auc_diff.attention~feature-ablation": _m(0.02, 0.01, 0.03),
    "agreement.kendall_tau_vs_floor.attention": _m(-0.05, -0.12, 0.02),
    "sanity.mprt.attention": _m(0.2, 0.1, 0.3),
    "trust.hidden_importance.attention": _m(0.1, 0.05, 0.15),
}
BAD = {
    "sanity.uniform_attention.prediction_kept": _m(0.97, 0.94, 0.99),
    GAIN.format("attention"): _m(0.02, -0.01, 0.05),
    GAIN.format("integrated-gradients"): _m(0.5, 0.4, 0.6),
    "faithfulness.deletion_auc_diff.attention~integrated-gradients": _m(-0.2, -0.25, -0.15),
    GAIN.format("feature-ablation"): _m(0.4, 0.3, 0.5),
    "agreement.kendall_tau_vs_floor.attention": _m(-0.3, -0.4, -0.2),
    "sanity.mprt.attention": _m(0.8, 0.7, 0.9),
    "trust.hidden_importance.attention": _m(0.9, 0.8, 0.95),
}
UNCLEAR = {
    "sanity.uniform_attention.prediction_kept": _m(0.93, 0.9, 0.96),
    GAIN.format("attention"): _m(0.12, 0.05, 0.2),  # above 0, but not clearly by the minimum effect
    GAIN.format("integrated-gradients"): _m(0.5, 0.4, 0.6),
    GAIN.format("feature-ablation"): _m(0.4, 0.3, 0.5),
    "faithfulness.deletion_auc_diff.attention~integrated-gradients": _m(0.01, -0.02, 0.04),
    "agreement.kendall_tau_vs_floor.attention": _m(0.1, 0.05, 0.2),
    "sanity.mprt.attention": _m(0.45, 0.4, 0.55),
    "trust.hidden_importance.attention": _m(0.5, 0.4, 0.6),
}
ORDER = ["used", "beats-chance", "survives-randomisation", "hides-nothing", None, None]


def test_trust_panel_answers_each_question_by_its_rule():
    assert [line.condition for line in trust_panel(GOOD)] == ORDER  # the necessary conditions first
    assert [line.status for line in trust_panel(GOOD)] == ["pass"] * 6
    assert [line.status for line in trust_panel(BAD)] == ["fail"] * 6
    assert [line.status for line in trust_panel(UNCLEAR)] == ["unclear"] * 4 + ["pass", "pass"]
    good = trust_panel(GOOD)
    assert good[4].metric == "faithfulness.deletion_auc_diff.attention~integrated-gradients"  # the best reference
    assert "no clear difference" in good[4].finding and "within the noise floor" in good[5].finding
    assert "contains 0.1" in trust_panel(UNCLEAR)[1].finding
    assert "attention does not drive this model" in trust_panel(BAD)[0].finding
    assert "[0.2, 0.4]" in good[1].finding


def test_trust_panel_says_which_metrics_did_not_run():
    lines = trust_panel({}, {"sanity.uniform_attention.prediction_kept": "no attention module to make uniform"})
    assert [line.status for line in lines] == ["not run"] * 6
    assert lines[0].finding == "Did not run: no attention module to make uniform."
    assert lines[3].metric == "trust.hidden_importance.attention" and lines[3].finding == "Did not run in this audit."
    markdown = "\n".join(panel_markdown(trust_verdict(BAD)))
    assert markdown.startswith(f"### {TITLE}") and markdown.count("**NO**") == 6
    assert "**Verdict: no**" in markdown


def test_the_verdict_is_the_conjunction_of_the_necessary_conditions():
    assert trust_verdict(GOOD).answer == "yes"
    for condition, metric, failing in [("used", "sanity.uniform_attention.prediction_kept", _m(1.0, 1.0, 1.0)),
                                       ("beats-chance", GAIN.format("attention"), _m(0.05, 0.03, 0.07)),
                                       ("survives-randomisation", "sanity.mprt.attention", _m(0.8, 0.7, 0.9)),
                                       ("hides-nothing", "trust.hidden_importance.attention", _m(0.9, 0.8, 1.0))]:
        verdict = trust_verdict({**GOOD, metric: failing})
        assert verdict.answer == "no" and condition in verdict.finding, condition
        # a policy that leaves this condition out is not failed by it
        assert trust_verdict({**GOOD, metric: failing}, conditions=tuple(c for c in ORDER[:4] if c != condition)
                             ).answer == "yes"
    # further evidence answering NO leaves the verdict alone: references disagree with each other too
    assert [line.status for line in trust_verdict(BAD | {k: v for k, v in GOOD.items() if "agreement" not in k
                                                          and "~" not in k}).lines][4:] == ["fail", "fail"]
    assert trust_verdict({**GOOD, "agreement.kendall_tau_vs_floor.attention": _m(-0.3, -0.4, -0.2)}).answer == "yes"


def test_beating_chance_needs_the_minimum_effect_not_just_an_interval_above_zero():
    # a difference of 0.009 whose interval lies above 0 passed the old gate; the floor asks for a gain of 0.1
    for gain, status in [(_m(0.009, 0.002, 0.016), "fail"), (_m(0.15, 0.05, 0.25), "unclear"),
                         (_m(0.15, 0.1, 0.2), "pass"), (_m(-0.1, -0.2, 0.0), "fail")]:
        verdict = trust_verdict({**GOOD, GAIN.format("attention"): gain})
        assert verdict.lines[1].status == status, gain
        assert verdict.answer == ("yes" if status == "pass" else "no" if status == "fail" else "not established")


def test_a_verdict_resting_on_too_few_samples_is_not_established():
    # the interval gates' rule: a bootstrap of a handful of rows is as narrow as the rows are alike
    few = {name: MetricValue(value.value, value.ci95, n=5) for name, value in GOOD.items()}
    verdict = trust_verdict(few)
    assert verdict.answer == "not established" and "too few samples" in verdict.finding
    assert [line.status for line in verdict.lines[:4]] == ["unclear"] * 4
    assert "n=5" in verdict.lines[0].finding
    enough = {name: MetricValue(value.value, value.ci95, n=30) for name, value in GOOD.items()}
    assert trust_verdict(enough).answer == "yes"


def test_a_condition_cannot_pass_on_a_point_without_an_interval_and_results_json_keeps_n():
    pointed = {**GOOD, "sanity.mprt.attention": MetricValue(0.1, None)}
    verdict = trust_verdict(pointed)
    assert verdict.lines[2].status == "unclear" and verdict.answer == "not established"
    assert "is missing" in verdict.finding
    # summary.md, the model card and compare read results.json back: n must survive, or the rule above is lost
    value = MetricValue(0.2, (0.1, 0.3), n=12)
    assert MetricValue.from_dict(value.to_dict()) == value
    assert MetricValue.from_dict({"value": 0.5, "ci95": None}) == MetricValue(0.5)


def test_a_condition_that_did_not_run_leaves_the_verdict_not_established_with_what_to_run():
    verdict = trust_verdict({k: v for k, v in GOOD.items() if k != GAIN.format("attention")})
    assert verdict.answer == "not established"
    assert "beats-chance did not run" in verdict.finding and "deletion_gain to --faithfulness-metrics" in verdict.finding
    reason = "the model reports its own attention: which module computes it is unknown"
    verdict = trust_verdict({k: v for k, v in GOOD.items() if "uniform" not in k},
                            {"sanity.uniform_attention.prediction_kept": reason})
    assert verdict.answer == "not established" and reason in verdict.finding
    assert trust_verdict({**GOOD, "sanity.mprt.attention": _m(0.45, 0.4, 0.55)}).answer == "not established"
    assert trust_verdict({**BAD, GAIN.format("attention"): GOOD[GAIN.format("attention")]}).answer == "no"


def test_a_reference_that_does_not_beat_chance_is_no_yardstick():
    chance = _m(0.02, -0.03, 0.07)
    ig_only = {**GOOD, GAIN.format("feature-ablation"): chance}
    lines = trust_panel(ig_only)
    assert lines[4].metric.endswith("~integrated-gradients")  # feature-ablation is left out of "best reference"
    assert lines[5].status == "not established" and "feature-ablation" in lines[5].finding  # the floor needs both
    # attention clearly more faithful than a reference that is itself no better than chance: never a yes
    neither = {**GOOD, GAIN.format("feature-ablation"): chance, GAIN.format("integrated-gradients"): chance,
               "faithfulness.deletion_auc_diff.attention~integrated-gradients": _m(0.2, 0.1, 0.3)}
    assert [line.status for line in trust_panel(neither)[4:]] == ["not established"] * 2
    assert "beats chance itself" in trust_panel(neither)[4].finding
    missing = {k: v for k, v in GOOD.items() if k != GAIN.format("integrated-gradients")}
    assert trust_panel(missing)[5].status == "not established"
    assert trust_verdict(neither).answer == "yes"  # not part of the verdict: its four conditions hold


PANELS = {"good": GOOD, "bad": BAD, "unclear": UNCLEAR, "empty": {},
          "one failing": {**GOOD, "trust.hidden_importance.attention": _m(0.9, 0.8, 1.0)},
          "one missing": {k: v for k, v in GOOD.items() if k != "sanity.mprt.attention"},
          "no references": {k: v for k, v in GOOD.items() if "integrated" not in k and "ablation" not in k}}


@pytest.mark.parametrize("panel", PANELS)
def test_the_default_trust_gate_and_every_panel_line_agree(panel):
    from auditor.gates import default_policy

    metrics = PANELS[panel]
    policy = default_policy([], eps_grid=(0.1,), attacks=("fgsm",))
    gate = next(result for result in evaluate(policy, metrics, {}) if result.kind == "verdict")
    verdict = trust_verdict(metrics)
    assert gate.passed is (verdict.answer == "yes") and gate.message == verdict.finding
    open_ = {line.condition for line in verdict.lines if line.condition and line.status != "pass"}
    assert gate.passed is (not open_)
    if not gate.passed:  # the gate's message names exactly the necessary conditions that are not a yes
        assert {c for c in ORDER[:4] if re.search(rf"(: |; ){c} ", gate.message)} == open_, (panel, gate.message)

def test_a_policy_gates_the_verdict_over_the_conditions_it_names(tmp_path):
    path = tmp_path / "audit.toml"
    path.write_text('[gates]\n"trust.verdict" = ["used", "hides-nothing"]\n"clean.accuracy" = ">= 0.5"\n')
    policy = load_policy(path)
    assert policy.gates[0].conditions == ("used", "hides-nothing") and policy.gates[0].kind == "verdict"
    failing_elsewhere = {**GOOD, "sanity.mprt.attention": _m(0.8, 0.7, 0.9), "clean.accuracy": MetricValue(0.9)}
    results = evaluate(policy, failing_elsewhere, {})
    assert [r.passed for r in results] == [True, True] and results[0].conditions == ["used", "hides-nothing"]
    for bad in ('[]', '["used", "used"]', '["attention"]', '"yes"', '">= 1"'):
        path.write_text(f'[gates]\n"trust.verdict" = {bad}\n')
        with pytest.raises(BadInputError, match="hides-nothing"):
            load_policy(path)
