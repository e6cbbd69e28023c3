import numpy as np
import pytest
import torch
from torch import nn

from auditor.stages.explainers import EXPLAINERS, make_explainer, rollout
from detectors.base import Detector, TokenMap


class HardWiredAttention(Detector):
    """One layer whose CLS row is a fixed distribution; logits read the attended feature."""

    kind = "test"

    def __init__(self, cls_row: torch.Tensor) -> None:
        super().__init__()
        n = len(cls_row) - 1
        self.input_shape, self.n_classes = (n,), 2
        self.token_map = TokenMap(torch.arange(1, n + 1), n + 1, 0)
        self.register_buffer("cls_row", cls_row)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward_with_attention(self, x):
        n = x.shape[0]
        attention = torch.eye(len(self.cls_row)).repeat(n, 2, 1, 1)
        attention[:, :, 0, :] = self.cls_row
        score = (x * self.cls_row[1:]).sum(1) * self.scale
        return torch.stack([-score, score], 1), [attention]


def test_rollout_of_one_layer_is_row_normalised_attention_plus_identity():
    a = torch.softmax(torch.randn(3, 2, 5, 5), dim=-1)
    expected = (a.mean(1) + torch.eye(5)) / 2  # each row of mean_h A sums to 1, plus 1 on the diagonal
    assert torch.allclose(rollout([a]), expected, atol=1e-6)


def test_rollout_normalises_rows_not_columns():
    a = torch.softmax(torch.randn(2, 1, 4, 4) * 3, dim=-1)
    r = rollout([a, a])
    assert torch.allclose(r.sum(-1), torch.ones(2, 4), atol=1e-6)


def test_rollout_multiplies_later_layers_on_the_left():
    a1 = torch.softmax(torch.randn(1, 1, 3, 3), -1)
    a2 = torch.softmax(torch.randn(1, 1, 3, 3), -1)
    n1 = (a1[:, 0] + torch.eye(3)) / 2
    n2 = (a2[:, 0] + torch.eye(3)) / 2
    assert torch.allclose(rollout([a1, a2]), n2 @ n1, atol=1e-6)


def test_attention_explainer_reads_the_cls_row_through_the_token_map():
    row = torch.tensor([0.1, 0.6, 0.1, 0.2])
    model = HardWiredAttention(row)
    x = torch.rand(4, 3)
    attr = make_explainer("attention").explain(model, x, torch.ones(4, dtype=torch.long), baseline=torch.zeros(3),
                                               seed=0, index=torch.arange(4))
    assert torch.allclose(attr, row[1:].expand(4, 3))


def test_integrated_gradients_is_exact_on_a_linear_model():
    """For f(x) = w.x the attribution is w * (x - baseline), exactly."""
    row = torch.tensor([0.0, 0.5, 0.3, 0.2])
    model = HardWiredAttention(row)
    x, baseline = torch.rand(5, 3), torch.full((3,), 0.25)
    target = torch.ones(5, dtype=torch.long)
    attr = make_explainer("integrated-gradients").explain(model, x, target, baseline=baseline, seed=0,
                                                          index=torch.arange(5))
    assert torch.allclose(attr, row[1:] * (x - baseline), atol=1e-5)


@pytest.mark.parametrize("name", ["integrated-gradients", "gradient-shap", "feature-ablation"])
def test_explainers_with_many_inputs_per_sample_keep_every_pass_within_max_inputs(name, tiny_detector, pass_sizes):
    x = torch.rand(10, 6)
    target = tiny_detector(x).argmax(1)
    with pass_sizes(tiny_detector) as sizes:
        bounded = make_explainer(name, max_inputs=8).explain(tiny_detector, x, target, baseline=torch.zeros(6),
                                                              seed=0, index=torch.arange(10))
    whole = make_explainer(name).explain(tiny_detector, x, target, baseline=torch.zeros(6), seed=0,
                                         index=torch.arange(10))
    assert sizes and max(sizes) <= 8, sizes  # fewer than the 10 rows: rows are split too
    assert torch.allclose(bounded, whole, atol=1e-5)


def test_random_explainer_is_per_sample_and_batch_independent(tiny_detector):
    explainer = make_explainer("random")
    x = torch.rand(10, 6)
    target = torch.zeros(10, dtype=torch.long)
    whole = explainer.explain(tiny_detector, x, target, baseline=torch.zeros(6), seed=1, index=torch.arange(10))
    part = explainer.explain(tiny_detector, x[4:], target[4:], baseline=torch.zeros(6), seed=1,
                             index=torch.arange(4, 10))
    assert torch.equal(whole[4:], part)
    other = explainer.explain(tiny_detector, x, target, baseline=torch.zeros(6), seed=2, index=torch.arange(10))
    assert not torch.equal(whole, other)


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_every_explainer_returns_the_input_shape(name, tiny_detector):
    x = torch.rand(7, 6)
    target = tiny_detector(x).argmax(1)
    attr = make_explainer(name).explain(tiny_detector, x, target, baseline=torch.full((6,), 0.5), seed=0,
                                        index=torch.arange(7))
    assert attr.shape == x.shape and torch.isfinite(attr).all()


def test_attention_max_takes_the_largest_head():
    a = torch.softmax(torch.randn(2, 3, 4, 4), dim=-1)
    scores = make_explainer("attention-max").scores([a], 0)
    assert torch.allclose(scores, a[:, :, 0, :].amax(1))


class OneLayerLinear(Detector):
    """logit_1 = Σ_j A[0, j] · v_j with A = softmax(q) the CLS row over (CLS, x_1, x_2), v = (0, x_1, x_2);
    logit_0 = 0. The gradient w.r.t. A's CLS row is v, so grad-attention's CLS row is worked out on paper."""

    kind = "test"

    def __init__(self, logits_of_row: torch.Tensor) -> None:
        super().__init__()
        self.input_shape, self.n_classes = (2,), 2
        self.token_map = TokenMap(torch.arange(1, 3), 3, 0)
        self.q = nn.Parameter(logits_of_row.clone())

    def forward_with_attention(self, x):
        n = x.shape[0]
        row = torch.softmax(self.q, 0).expand(n, 3)
        attention = torch.cat([row[:, None, None, :], torch.eye(3)[1:].expand(n, 1, 2, 3)], dim=2)
        values = torch.cat([torch.zeros(n, 1), x], 1)
        score = (attention[:, 0, 0, :] * values).sum(1)
        return torch.stack([torch.zeros_like(score), score], 1), [attention]


def test_grad_attention_of_one_layer_matches_the_paper_computation():
    model = OneLayerLinear(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.tensor([[0.8, -0.5], [0.2, 0.4]])
    attr = make_explainer("grad-attention").explain(model, x, torch.ones(2, dtype=torch.long),
                                                    baseline=torch.zeros(2), seed=0, index=torch.arange(2))
    a = torch.softmax(torch.tensor([0.0, 1.0, -1.0]), 0)
    # R = I + (∇A ⊙ A)⁺ I; the CLS row's entry for token j is (v_j a_j)⁺ (off the diagonal), and
    # other rows of A are identity rows whose gradient is 0.
    expected = (x * a[1:]).clamp(min=0)
    assert torch.allclose(attr, expected, atol=1e-6)


def test_gradient_shap_equals_captums_where_both_are_deterministic():
    """One baseline, no noise, a linear model: both are w ⊙ (x − b) whatever α is drawn."""
    from captum.attr import GradientShap

    import auditor.stages.explainers as module
    from auditor.stages.explainers import GradientShapExplainer

    model = HardWiredAttention(torch.tensor([0.0, 0.5, 0.3, 0.2]))
    x, target = torch.rand(4, 3), torch.ones(4, dtype=torch.long)
    base = torch.full((3,), 0.25)
    theirs = GradientShap(model).attribute(x, baselines=base[None], target=target, n_samples=8, stdevs=0.0)
    explainer = GradientShapExplainer()
    explainer.stdev = 0.0

    original = module.per_sample_uniform

    def fixed_baselines(shape, index, *, seed, purpose, device="cpu"):
        if purpose.endswith("/baseline"):
            return base.expand(len(index), *shape).clone()
        return original(shape, index, seed=seed, purpose=purpose, device=device)

    module.per_sample_uniform = fixed_baselines
    try:
        mine = explainer.explain(model, x, target, baseline=base, seed=0, index=torch.arange(4))
    finally:
        module.per_sample_uniform = original
    assert torch.allclose(mine, theirs.float(), atol=1e-5)
    assert torch.allclose(mine, model.cls_row[1:] * (x - base), atol=1e-5)


def test_agreement_of_hard_wired_attention_with_feature_ablation_is_exact():
    from auditor.stages.agreement import agreement_stage

    model = HardWiredAttention(torch.tensor([0.0, 0.4, 0.1, 0.3, 0.05, 0.15]))
    # the logit is Σ w_i x_i with w the CLS row: ablating feature i to a zero baseline drops w_i x_i, which
    # ranks the features as w does when every x_i is equal
    x = torch.full((6, 5), 0.7)
    target = torch.ones(6, dtype=torch.long)
    kwargs = dict(baseline=torch.zeros(5), seed=0, index=torch.arange(6))
    attributions = {name: make_explainer(name).explain(model, x, target, **kwargs)
                    for name in ("attention", "feature-ablation")}
    out = agreement_stage(model, x, target, attributions, **kwargs).per_sample
    assert np.allclose(out["agreement.kendall_tau.attention~feature-ablation"], 1.0)
    assert np.allclose(out["agreement.topk_overlap.attention~feature-ablation"], 1.0)


def test_kendall_tau_b_matches_scipy_with_ties():
    from scipy.stats import kendalltau

    from auditor.stages.agreement import kendall_tau_b, topk_overlap

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (5, 7)).astype(float), rng.normal(size=(5, 7))
    ours = kendall_tau_b(a, b)
    assert np.allclose(ours, [kendalltau(a[i], b[i]).statistic for i in range(5)])
    assert np.isnan(kendall_tau_b(np.ones((1, 4)), b[:1, :4])).all()
    assert topk_overlap(np.array([[4.0, 3, 2, 1]]), np.array([[1.0, 2, 3, 4]]), 2)[0] == 0.0


class AttendsToOneFeature(Detector):
    """A built-in SelfAttention whose CLS query hard-wires its attention to feature 1; logit = CLS output − 0.5.
    With ``ignore_attention`` the logits read x directly and no attention edit can change them."""

    kind = "test"

    def __init__(self, n_features: int, *, ignore_attention: bool = False) -> None:
        from detectors.blocks import SelfAttention

        super().__init__()
        dim = n_features + 2  # one-hot position (CLS = 0, feature i = i) and a value channel
        self.input_shape, self.n_classes, self.ignore = (n_features,), 2, ignore_attention
        self.token_map = TokenMap(torch.arange(1, n_features + 1), n_features + 1, 0)
        self.attn = SelfAttention(dim, 1)
        with torch.no_grad():
            weight = torch.zeros(3 * dim, dim)
            weight[1, 0] = 200.0  # CLS's query points at position 1
            weight[dim:dim + n_features + 1, :n_features + 1] = torch.eye(n_features + 1)  # keys: positions
            weight[2 * dim + dim - 1, dim - 1] = 1.0  # value: the value channel
            self.attn.qkv.weight.copy_(weight)
            self.attn.qkv.bias.zero_()
            self.attn.proj.weight.copy_(torch.eye(dim))
            self.attn.proj.bias.zero_()
        self.dim = dim

    def forward_with_attention(self, x):
        n, f = x.shape
        tokens = torch.zeros(n, f + 1, self.dim)
        tokens[:, :, : f + 1] = torch.eye(f + 1)
        tokens[:, 1:, -1] = x
        out, weights = self.attn(tokens)
        score = x[:, 0] - 0.5 if self.ignore else out[:, 0, -1] - 0.5
        return torch.stack([-score, score], 1), [weights]


def test_flip_rate_is_one_when_the_decision_rides_on_the_top_weight_and_zero_when_it_ignores_attention():
    from auditor.stages.sanity import flip_rates

    x = torch.full((8, 3), 0.05)
    x[:, 0] = 0.9  # attended feature decides "positive"; without it the CLS output is ~0.05
    hard_wired = AttendsToOneFeature(3).eval()
    assert (hard_wired(x).argmax(1) == 1).all()
    assert flip_rates(hard_wired, x, seed=0, index=torch.arange(8))["sanity.flip_rate.attention"].mean() == 1.0
    ignoring = AttendsToOneFeature(3, ignore_attention=True).eval()
    rates = flip_rates(ignoring, x, seed=0, index=torch.arange(8))
    assert rates["sanity.flip_rate.attention"].mean() == 0.0 and rates["sanity.flip_rate.random"].mean() == 0.0
    assert hard_wired.attn.attention_edit is None


def test_mprt_of_explainers_that_ignore_the_model_is_one(tiny_detector):
    from auditor.stages.explainers import Explainer
    from auditor.stages.sanity import mprt

    class InputCopy(Explainer):
        name, family = "input-copy", "baseline"

        def _attribute(self, detector, x, target, *, baseline, seed, index, attentions):
            return x.clone()

    x = torch.rand(64, 6)
    target = tiny_detector(x).argmax(1)
    kwargs = dict(baseline=torch.zeros(6), seed=0, index=torch.arange(64))
    state = {k: v.clone() for k, v in tiny_detector.state_dict().items()}
    rng = torch.get_rng_state()
    for name, expected, tolerance in (("random", 1.0, 1e-9), ("input-copy", 1.0, 1e-9)):
        explainer = InputCopy() if name == "input-copy" else make_explainer(name)
        trained = explainer.explain(tiny_detector, x, target, **kwargs)
        labels, values = mprt(tiny_detector, explainer, x, target, trained, **kwargs)
        assert abs(values[:, -1].mean() - expected) <= tolerance
        assert labels == ["head", "block 2", "block 1", "embedding"]
    assert all(torch.equal(v, state[k]) for k, v in tiny_detector.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


class UnusedLayer(torch.nn.Module):
    """p = softmax(x @ W) with W a fixed buffer; the one parameter (a layer the output never reads) is all the
    cascade can re-initialise, so randomisation changes nothing and every explanation must survive it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.tensor([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.3], [0.7, 0.1]]))
        self.unused = torch.nn.Linear(4, 2)

    def forward(self, x):
        return x @ self.weight + 0.0 * self.unused.weight.sum()


def test_mprt_keeps_a_stochastic_explainers_draws_so_sampling_noise_does_not_lower_it():
    from auditor.stages.sanity import mprt

    model = UnusedLayer()
    x = torch.rand(16, 4)
    target = model(x).argmax(1)
    kwargs = dict(baseline=torch.zeros(4), seed=3, index=torch.arange(16))
    for name in ("gradient-shap", "integrated-gradients"):  # stochastic, deterministic
        explainer = make_explainer(name)
        _, values = mprt(model, explainer, x, target, explainer.explain(model, x, target, **kwargs), **kwargs)
        assert np.allclose(values, 1.0), name


def test_mprt_is_the_absolute_rank_correlation_with_one_pass_rule():
    from auditor.metrics import MetricValue
    from auditor.stages.sanity import spearman_rows
    from auditor.verdict import mprt_verdict

    a = torch.arange(6.0)[None]
    assert abs(np.abs(spearman_rows(a, -a))[0] - 1.0) < 1e-12  # a sign flip does not pass the check
    assert mprt_verdict(MetricValue(0.2, (0.1, 0.3))) == "pass"
    assert mprt_verdict(MetricValue(0.4, (0.3, 0.55))) == "unclear"  # docs/metrics.md's flows attention: not a pass
    assert mprt_verdict(MetricValue(0.6, (0.5, 0.7))) == "fail"


def test_mprt_of_attention_drops_once_the_model_is_randomised(tiny_detector):
    from auditor.stages.sanity import mprt

    x = torch.rand(32, 6)
    target = tiny_detector(x).argmax(1)
    kwargs = dict(baseline=torch.zeros(6), seed=0, index=torch.arange(32))
    explainer = make_explainer("attention")
    _, values = mprt(tiny_detector, explainer, x, target, explainer.explain(tiny_detector, x, target, **kwargs),
                     **kwargs)
    assert values[:, -1].mean() < 0.9


def test_precision_at_k_of_the_true_ranking_is_one_and_skips_samples_without_ground_truth():
    from auditor.stages.localisation import precision_at_k

    relevant = np.array([[True, False, True, False], [False, False, False, False], [False, True, False, False]])
    truth = torch.tensor(relevant, dtype=torch.float32) + 0.01 * torch.arange(4)
    assert np.array_equal(precision_at_k(truth, relevant)[[0, 2]], [1.0, 1.0])
    assert np.isnan(precision_at_k(truth, relevant)[1])
    reversed_ranking = -truth
    assert np.array_equal(precision_at_k(reversed_ranking, relevant)[[0, 2]], [0.0, 0.0])


def test_mprt_rows_are_256_spread_evenly_and_shards_split_them():
    from auditor.stages.sanity import MPRT_SAMPLES, mprt_rows

    assert mprt_rows(torch.arange(100), 100).all()
    chosen = torch.arange(1000)[mprt_rows(torch.arange(1000), 1000)]
    assert len(chosen) == MPRT_SAMPLES and chosen[0] == 0 and chosen[1] == 3 and chosen[-1] == 996  # floor(255*1000/256)
    assert torch.equal(chosen, (torch.arange(MPRT_SAMPLES) * 1000) // MPRT_SAMPLES)
    halves = [torch.arange(1000)[rows][mprt_rows(torch.arange(1000)[rows], 1000)] for rows in (slice(0, 512),
                                                                                          slice(512, 1000))]
    assert torch.equal(torch.cat(halves), chosen) and abs(len(halves[0]) - MPRT_SAMPLES * 512 / 1000) <= 1


def test_sanity_stage_is_per_sample_so_shards_gather_to_the_whole(tiny_detector):
    from auditor.stages.sanity import mean_sanity_curves, sanity_stage

    x = torch.rand(12, 6)
    target = tiny_detector(x).argmax(1)
    explainers = {name: make_explainer(name) for name in ("attention", "random")}
    kwargs = dict(baseline=torch.zeros(6), seed=0)
    attributions = {name: e.explain(tiny_detector, x, target, index=torch.arange(12), **kwargs)
                    for name, e in explainers.items()}
    y = torch.arange(12) % 2
    whole = sanity_stage(tiny_detector, x, target, attributions, index=torch.arange(12), explainers=explainers,
                         y=y, **kwargs)
    halves = [sanity_stage(tiny_detector, x[rows], target[rows], {k: v[rows] for k, v in attributions.items()},
                           index=torch.arange(12)[rows], explainers=explainers, y=y[rows], **kwargs)
              for rows in (slice(0, 5), slice(5, 12))]
    assert set(whole.per_sample) == {"sanity.mprt.attention", "sanity.flip_rate.attention", "sanity.flip_rate.random",
                                     "sanity.uniform_attention.prediction_kept", "sanity.uniform_attention.accuracy"}
    for name, values in whole.per_sample.items():
        assert np.allclose(np.concatenate([h.per_sample[name] for h in halves]), values, equal_nan=True)
    gathered = np.concatenate([h.curves["attention"][1] for h in halves])
    assert np.allclose(gathered, whole.curves["attention"][1], equal_nan=True)
    assert [p["layer"] for p in mean_sanity_curves(whole)["attention"]] == ["head", "block 2", "block 1", "embedding"]


def test_flip_rate_is_skipped_with_the_reason_on_models_without_editable_attention():
    from auditor.stages.sanity import sanity_stage

    model = HardWiredAttention(torch.tensor([0.1, 0.6, 0.1, 0.2]))
    x = torch.rand(4, 3)
    outcome = sanity_stage(model, x, torch.ones(4, dtype=torch.long), {}, baseline=torch.zeros(3), seed=0,
                           index=torch.arange(4), explainers={})
    assert "cannot be edited" in outcome.skipped["sanity.flip_rate.attention"] and not outcome.per_sample
    assert "cannot be edited" in outcome.skipped["sanity.uniform_attention.prediction_kept"]


def test_a_metric_counted_on_some_samples_keeps_its_interval():
    from auditor.metrics import Bootstrap
    from auditor.run.persample import aggregate

    values = np.where(np.arange(200) < 60, np.linspace(0, 1, 200), np.nan)
    metrics, _ = aggregate({"sanity.mprt.attention": values}, Bootstrap(200, seed=0))
    value = metrics["sanity.mprt.attention"]
    assert value.ci95 is not None and value.ci95[0] <= value.value <= value.ci95[1]
