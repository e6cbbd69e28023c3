"""Issue 15: paired differences, the noise floor, interval-end gates, --relevant-features and the trust panel."""

import numpy as np
import pytest
import torch
from torch import nn

from auditor.agreement import agreement_stage
from auditor.faithfulness import faithfulness_stage
from auditor.gates import Gate, Policy, evaluate, load_policy
from auditor.metrics import Bootstrap, MetricValue
from auditor.persample import aggregate
from auditor.verdict import TITLE, panel_markdown, trust_panel
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
    from auditor.explain import make_explainer

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
    from auditor.localisation import declare_relevant, relevant_mask_of
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


GOOD = {
    "sanity.uniform_attention.prediction_kept": _m(0.6, 0.5, 0.7),
    "faithfulness.deletion_auc_diff.attention~random": _m(0.1, 0.05, 0.15),
    "faithfulness.deletion_auc_diff.attention~integrated-gradients": _m(-0.01, -0.03, 0.01),
    "faithfulness.deletion_auc_diff.attention~feature-ablation": _m(0.02, 0.01, 0.03),
    "agreement.kendall_tau_vs_floor.attention": _m(-0.05, -0.12, 0.02),
    "sanity.mprt.attention": _m(0.2, 0.1, 0.3),
    "trust.hidden_importance.attention": _m(0.1, 0.05, 0.15),
}
BAD = {
    "sanity.uniform_attention.prediction_kept": _m(0.97, 0.94, 0.99),
    "faithfulness.deletion_auc_diff.attention~random": _m(-0.1, -0.15, -0.05),
    "faithfulness.deletion_auc_diff.attention~integrated-gradients": _m(-0.2, -0.25, -0.15),
    "agreement.kendall_tau_vs_floor.attention": _m(-0.3, -0.4, -0.2),
    "sanity.mprt.attention": _m(0.8, 0.7, 0.9),
    "trust.hidden_importance.attention": _m(0.9, 0.8, 0.95),
}
UNCLEAR = {
    "sanity.uniform_attention.prediction_kept": _m(0.93, 0.9, 0.96),
    "faithfulness.deletion_auc_diff.attention~random": _m(0.01, -0.02, 0.04),
    "faithfulness.deletion_auc_diff.attention~integrated-gradients": _m(0.01, -0.02, 0.04),
    "agreement.kendall_tau_vs_floor.attention": _m(0.1, 0.05, 0.2),
    "sanity.mprt.attention": _m(0.45, 0.4, 0.55),
    "trust.hidden_importance.attention": _m(0.5, 0.4, 0.6),
}


def test_trust_panel_answers_each_question_by_its_rule():
    assert [line.status for line in trust_panel(GOOD)] == ["pass"] * 6
    assert [line.status for line in trust_panel(BAD)] == ["fail"] * 6
    assert [line.status for line in trust_panel(UNCLEAR)] == ["unclear", "unclear", "pass", "pass", "unclear",
                                                                "unclear"]
    good = trust_panel(GOOD)
    assert good[2].metric == "faithfulness.deletion_auc_diff.attention~integrated-gradients"  # the best reference
    assert "no clear difference" in good[2].finding and "within the noise floor" in good[3].finding
    assert "No clear difference from a random ranking" in trust_panel(UNCLEAR)[1].finding
    assert "attention does not drive this model" in trust_panel(BAD)[0].finding
    assert "[0.05, 0.15]" in good[1].finding


def test_trust_panel_says_which_metrics_did_not_run():
    lines = trust_panel({}, {"sanity.uniform_attention.prediction_kept": "no attention module to make uniform"})
    assert [line.status for line in lines] == ["not run"] * 6
    assert lines[0].finding == "Did not run: no attention module to make uniform."
    assert lines[5].metric == "trust.hidden_importance.attention" and lines[5].finding == "Did not run in this audit."
    markdown = "\n".join(panel_markdown(trust_panel(BAD)))
    assert markdown.startswith(f"### {TITLE}") and markdown.count("**NO**") == 6
