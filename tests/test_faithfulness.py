import numpy as np
import pytest
import torch
from torch import nn

from auditor.stages.faithfulness_metrics import feature_ranks, removal_counts, removal_curves


class WeightedShare(nn.Module):
    """p(class 1) = w . x with w >= 0 summing to 1, so for x = 1 and baseline 0 the deletion curve
    after removing a set S of features is 1 - sum(w[S]): the answer is known on paper."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        p = (x * self.w).sum(1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)


W = torch.tensor([0.4, 0.3, 0.2, 0.1])


def test_deletion_and_insertion_match_the_hand_computed_areas():
    model = WeightedShare(W)
    x = torch.ones(1, 4)
    curves = removal_curves(model, x, W[None].clone(), torch.tensor([1]), torch.zeros(4))
    assert np.allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(curves.deletion[0], [1.0, 0.6, 0.3, 0.1, 0.0], atol=1e-5)
    assert np.allclose(curves.insertion[0], [0.0, 0.4, 0.7, 0.9, 1.0], atol=1e-5)
    # trapezoid: 0.25 * (1/2 + 0.6 + 0.3 + 0.1 + 0/2) = 0.375
    assert np.isclose(curves.deletion_auc[0], 0.375, atol=1e-5)
    assert np.isclose(curves.insertion_auc[0], 0.625, atol=1e-5)


def test_the_true_ranking_beats_every_other_ranking():
    model = WeightedShare(W)
    x = torch.ones(1, 4)
    best = removal_curves(model, x, W[None].clone(), torch.tensor([1]), torch.zeros(4))
    import itertools
    for perm in itertools.permutations(range(4)):
        attr = torch.tensor(perm, dtype=torch.float32)[None]
        other = removal_curves(model, x, attr, torch.tensor([1]), torch.zeros(4))
        assert other.deletion_auc[0] >= best.deletion_auc[0] - 1e-6
        assert other.insertion_auc[0] <= best.insertion_auc[0] + 1e-6


def test_ties_are_broken_by_feature_index():
    ranks = feature_ranks(torch.tensor([[0.5, 0.5, 0.9, 0.5]]))
    assert ranks.tolist() == [[1, 2, 0, 3]]


def test_wide_inputs_use_32_equal_steps():
    counts = removal_counts(100)
    assert len(counts) == 33 and counts[0] == 0 and counts[-1] == 100
    assert list(removal_counts(64)) == list(range(65))


def test_batching_does_not_change_curves(tiny_detector):
    x = torch.rand(40, 6)
    attr = torch.rand(40, 6)
    target = tiny_detector(x).argmax(1)
    baseline = torch.full((6,), 0.5)
    whole = removal_curves(tiny_detector, x, attr, target, baseline, max_batch=100000)
    small = removal_curves(tiny_detector, x, attr, target, baseline, max_batch=30)
    assert np.allclose(whole.deletion, small.deletion, atol=1e-6)
    assert np.allclose(whole.insertion, small.insertion, atol=1e-6)
    assert np.allclose(whole.deletion[:, 0], torch.softmax(tiny_detector(x), 1).max(1).values.detach().numpy(),
                       atol=1e-6)


def test_one_curve_alone_equals_its_half_of_both(tiny_detector):
    x, attr = torch.rand(9, 6), torch.rand(9, 6)
    target, baseline = tiny_detector(x).argmax(1), torch.full((6,), 0.5)
    both = removal_curves(tiny_detector, x, attr, target, baseline)
    deletion = removal_curves(tiny_detector, x, attr, target, baseline, kinds=("deletion",))
    insertion = removal_curves(tiny_detector, x, attr, target, baseline, kinds=("insertion",))
    assert deletion.insertion is None and insertion.deletion is None
    assert np.allclose(deletion.deletion, both.deletion, atol=1e-6)
    assert np.allclose(insertion.insertion_auc, both.insertion_auc, atol=1e-6)
    with pytest.raises(ValueError, match="insertion curve was not computed"):
        deletion.insertion_auc
    with pytest.raises(ValueError, match="expected kinds"):
        removal_curves(tiny_detector, x, attr, target, baseline, kinds=("removal",))


# --- the metrics beyond deletion and insertion: answers worked out on paper ---------------------------------


from auditor.stages.explainers import make_explainer  # noqa: E402
from auditor.stages.faithfulness import faithfulness_stage, planned_names  # noqa: E402
from auditor.stages.faithfulness_metrics import (FAITHFULNESS_METRICS, aopc, aopc_counts, deletion_gain,  # noqa: E402
                                                 faithfulness_correlation, infidelity_per_sample, max_sensitivity,
                                                 random_deletion_auc)
from detectors.errors import BadInputError  # noqa: E402
from detectors.inputs import removal_baseline  # noqa: E402
from detectors.inputs.image import gaussian_blur  # noqa: E402
from detectors.seeding import per_sample_uniform  # noqa: E402
from exits import gate_exit_code  # noqa: E402

W6 = torch.tensor([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])


def test_aopc_counts_round_up_and_keep_at_least_one_feature():
    assert aopc_counts(4).tolist() == [1, 1, 1, 1, 2]
    assert aopc_counts(100).tolist() == [1, 5, 10, 20, 50]
    assert aopc_counts(1).tolist() == [1, 1, 1, 1, 1]


def test_comprehensiveness_and_sufficiency_match_the_hand_computed_values():
    """F = 4, so k = 1, 1, 1, 1, 2. p(x) = 1; without the top 1: 0.6, without the top 2: 0.3;
    only the top 1: 0.4, only the top 2: 0.7. comp = (4 * 0.4 + 0.7) / 5 = 0.46, suff = (4 * 0.6 + 0.3) / 5 = 0.54."""
    comp, suff = aopc(WeightedShare(W), torch.ones(1, 4), W[None].clone(), torch.tensor([1]), torch.zeros(4))
    assert np.isclose(comp[0], 0.46, atol=1e-5) and np.isclose(suff[0], 0.54, atol=1e-5)
    worst_comp, worst_suff = aopc(WeightedShare(W), torch.ones(1, 4), -W[None], torch.tensor([1]), torch.zeros(4))
    assert worst_comp[0] < comp[0] and worst_suff[0] > suff[0]


def test_faithfulness_correlation_is_one_for_the_true_attribution_of_an_additive_model():
    """p_y(x) - p_y(x with S at 0) = sum_{i in S} w_i x_i, which is exactly the sum of a = w * x over S."""
    x = torch.rand(30, 6)
    target = torch.ones(30, dtype=torch.long)
    model = WeightedShare(W6)
    rho = faithfulness_correlation(model, x, W6 * x, target, torch.zeros(6), seed=0, index=torch.arange(30))
    assert np.allclose(rho, 1.0, atol=1e-4)
    flipped = faithfulness_correlation(model, x, -W6 * x, target, torch.zeros(6), seed=0, index=torch.arange(30))
    assert np.allclose(flipped, -1.0, atol=1e-4)
    constant = faithfulness_correlation(model, x, torch.ones(30, 6), target, torch.zeros(6), seed=0,
                                        index=torch.arange(30))
    assert np.isnan(constant).all()  # no spread in the attribution sums: the samples do not count


def test_infidelity_is_zero_for_the_exact_attribution_of_a_linear_model():
    x = torch.rand(20, 6)
    baseline = torch.full((6,), 0.3)
    target = torch.ones(20, dtype=torch.long)
    model = WeightedShare(W6)
    exact = infidelity_per_sample(model, x, W6 * (x - baseline), target, baseline, seed=0, index=torch.arange(20))
    assert np.abs(exact).max() < 1e-9
    scaled = infidelity_per_sample(model, x, 7 * W6 * (x - baseline), target, baseline, seed=0,
                                   index=torch.arange(20))
    assert np.abs(scaled).max() < 1e-9  # normalised: the scale of an attribution does not count
    wrong = infidelity_per_sample(model, x, torch.rand(20, 6), target, baseline, seed=0, index=torch.arange(20))
    assert (wrong > 1e-6).all()


def test_infidelity_sees_the_sign_the_negated_exact_attribution_scores_far_worse():
    """captum's normalize=True fits any scale, -1 included, so -w*(x-b) scored 0 like the exact one."""
    x = torch.rand(20, 6)
    baseline = torch.full((6,), 0.3)
    target = torch.ones(20, dtype=torch.long)
    model, index = WeightedShare(W6), torch.arange(20)
    exact = infidelity_per_sample(model, x, W6 * (x - baseline), target, baseline, seed=0, index=index)
    negated = infidelity_per_sample(model, x, -W6 * (x - baseline), target, baseline, seed=0, index=index)
    nothing = infidelity_per_sample(model, x, torch.zeros(20, 6), target, baseline, seed=0, index=index)
    assert exact.mean() < 1e-9 and negated.mean() > 1e4 * max(exact.mean(), 1e-12)
    assert np.allclose(negated, nothing)  # the wrong direction explains nothing: beta = 0


def test_random_explainer_deletion_gain_is_near_zero_and_the_true_ranking_gains():
    n = 300
    x = torch.rand(n, 6)
    target = torch.ones(n, dtype=torch.long)
    model, base, index = WeightedShare(W6), torch.zeros(6), torch.arange(n)
    random_auc = random_deletion_auc(model, x, target, base, seed=0, index=index)
    noise = per_sample_uniform((6,), index, seed=0, purpose="explainer/random")
    noise_gain = deletion_gain(removal_curves(model, x, noise, target, base).deletion_auc, random_auc)
    assert abs(noise_gain.mean()) < 0.05 and np.abs(noise_gain).max() > 0
    true_gain = deletion_gain(removal_curves(model, x, W6 * x, target, base).deletion_auc, random_auc)
    assert (true_gain >= -1e-6).all() and true_gain.mean() > 0.1  # the true ranking beats every ranking


def test_max_sensitivity_is_zero_for_an_input_independent_explainer(tiny_detector):
    x = torch.rand(6, 6)
    target = tiny_detector(x).argmax(1)
    kwargs = dict(seed=0, index=torch.arange(6))
    assert np.all(max_sensitivity(tiny_detector, make_explainer("random"), x, target, torch.zeros(6), **kwargs) == 0)
    moving = max_sensitivity(tiny_detector, make_explainer("attention"), x, target, torch.zeros(6), **kwargs)
    assert (moving > 0).all() and np.isfinite(moving).all()


def _stage(model, x, target, baseline, index, max_batch):
    names = ("attention", "integrated-gradients", "random")
    explainers = {name: make_explainer(name) for name in names}
    attributions = {name: explainers[name].explain(model, x, target, baseline=baseline, seed=0, index=index)
                    for name in names}
    return faithfulness_stage(model, x, target, attributions, baseline=baseline, seed=0, index=index,
                              metrics=FAITHFULNESS_METRICS, explainers=explainers, max_batch=max_batch).per_sample


def test_every_metric_is_independent_of_batch_size_and_sharding(tiny_detector):
    x = torch.rand(20, 6)
    target = tiny_detector(x).argmax(1)
    baseline = torch.full((6,), 0.5)
    small = _stage(tiny_detector, x, target, baseline, torch.arange(20), max_batch=7)
    large = _stage(tiny_detector, x, target, baseline, torch.arange(20), max_batch=64)
    shard = _stage(tiny_detector, x[12:], target[12:], baseline, torch.arange(12, 20), max_batch=64)
    assert set(large) == set(planned_names(FAITHFULNESS_METRICS, ("attention", "integrated-gradients", "random")))
    assert "faithfulness.deletion_auc_diff.attention~random" in large and len(large) == 3 * 8 - 1 + 2
    for name, values in large.items():
        assert np.allclose(small[name], values, atol=1e-6, equal_nan=True), name
        assert np.allclose(shard[name], values[12:], atol=1e-6, equal_nan=True), name
        assert not np.isnan(values).all(), name


def test_a_per_sample_baseline_equals_the_shared_one_it_repeats(tiny_detector):
    x = torch.rand(8, 6)
    target = tiny_detector(x).argmax(1)
    shared = torch.rand(6)
    attributions = {"random": per_sample_uniform((6,), torch.arange(8), seed=0, purpose="explainer/random")}
    kwargs = dict(seed=0, index=torch.arange(8), metrics=tuple(m for m in FAITHFULNESS_METRICS
                                                               if m != "max_sensitivity"))
    one = faithfulness_stage(tiny_detector, x, target, attributions, baseline=shared, **kwargs).per_sample
    many = faithfulness_stage(tiny_detector, x, target, attributions, baseline=shared.expand(8, 6).clone(),
                              **kwargs).per_sample
    for name in one:
        assert np.allclose(one[name], many[name], atol=1e-9, equal_nan=True), name


def test_removal_baselines():
    x = torch.rand(3, 4)
    mean = torch.rand(4)
    assert torch.equal(removal_baseline("mean", x, mean), mean)
    assert torch.equal(removal_baseline("zero", x, mean), torch.zeros(4))
    with pytest.raises(BadInputError, match="image inputs"):
        removal_baseline("blur", x, mean)
    images = torch.rand(2, 3, 8, 8)
    blurred = removal_baseline("blur", images, torch.zeros(3, 8, 8))
    assert blurred.shape == images.shape
    assert torch.allclose(gaussian_blur(torch.full((1, 2, 5, 5), 0.7), sigma=1.0), torch.full((1, 2, 5, 5), 0.7))
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    spread = gaussian_blur(spike, sigma=1.0)[0, 0]
    assert np.isclose(spread.sum().item(), 1.0, atol=1e-6)  # mass kept away from the edges
    g = np.exp(-0.5)  # one pixel away: exp(-1/2) of the centre, along either axis
    assert np.isclose((spread[4, 5] / spread[4, 4]).item(), g, atol=1e-5)
    assert blurred.var() < images.var()


def test_blur_on_tabular_data_is_refused_with_exit_2(trained_checkpoint, tmp_path):
    from click.testing import CliRunner

    from auditor.cli import cli

    path, _ = trained_checkpoint
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--out", str(tmp_path / "out"),
                                      "--removal-baseline", "blur", "--max-samples", "20", "--quiet"])
    assert result.exit_code == 2 and "image inputs" in result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--out", str(tmp_path / "out"),
                                      "--faithfulness-metrics", "deletion,faithful", "--quiet"])
    assert result.exit_code == 2 and "unknown faithfulness metric 'faithful'" in result.output


def test_an_audit_of_deletion_alone_computes_and_plots_only_the_deletion_curve(trained_checkpoint, tmp_path):
    import json

    from click.testing import CliRunner

    from auditor.cli import cli

    path, _ = trained_checkpoint
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--out", str(out), "--max-samples", "24",
                                      "--attacks", "fgsm", "--explainers", "attention",
                                      "--faithfulness-metrics", "deletion", "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    removal = document["curves"]["removal"]["attention"]
    assert set(removal) == {"fractions", "deletion"} and len(removal["deletion"]) == len(removal["fractions"])
    assert "faithfulness.insertion_auc.attention" not in document["metrics"]
    html = (out / "report.html").read_text()
    assert "deletion (lower is more faithful)" in html and "insertion (higher is more faithful)" not in html


def test_profiles_choose_the_faithfulness_metrics_and_the_config_records_them():
    from auditor.run.config import AuditConfig
    from auditor.stages.order import planned_metrics

    quick = AuditConfig.from_profile("quick")
    assert quick.faithfulness_metrics == ("deletion", "insertion", "deletion_gain")  # the trust verdict reads the gain
    assert AuditConfig.from_profile("standard").faithfulness_metrics == FAITHFULNESS_METRICS
    chosen = AuditConfig.from_profile("quick", faithfulness_metrics=("correlation", "max_sensitivity"),
                                      removal_baseline="zero")
    names = planned_metrics(chosen)
    assert "faithfulness.correlation.attention" in names and "stability.max_sensitivity.attention" in names
    assert "stability.max_sensitivity.random" not in names  # 0 by construction: skipped with the reason
    assert "faithfulness.deletion_auc.attention" not in names
    doc = chosen.to_dict()
    assert doc["removal_baseline"] == "zero" and doc["faithfulness_metrics"] == ["correlation", "max_sensitivity"]
    with pytest.raises(BadInputError, match="removal baseline"):
        AuditConfig(removal_baseline="median")
