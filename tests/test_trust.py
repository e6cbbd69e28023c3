"""Can attention be trusted? Uniform attention (Wiegreffe & Pinter 2019) and hidden importance (Pruthi et al.
2020): known answers on hand-set models, a deceptive/honest pair of trained twins, and the audit's wiring."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from auditor.metrics import Bootstrap, MetricValue
from auditor.catalogue import spec_for
from auditor.run.persample import aggregate
from detectors.base import Detector, TokenMap
from detectors.blocks import SelfAttention
from detectors.foreign import ForeignDetector
from detectors.foreign_editing import edited_multihead_attention

KEPT = "sanity.uniform_attention.prediction_kept"


def _no_hooks(module: nn.Module) -> bool:
    return all(not sub._forward_hooks and not sub._forward_pre_hooks and not sub._forward_hooks_with_kwargs
               and not sub._forward_pre_hooks_with_kwargs for sub in module.modules())


def _uniform(weights, allowed):
    from auditor.stages.sanity import uniform_weights

    return uniform_weights(weights, allowed)


# -- uniform attention inside nn.MultiheadAttention ------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
def test_uniform_multihead_output_is_the_mean_of_the_values_through_out_proj(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=batch_first).eval()
    tokens = torch.randn(2, 3, 4)  # (batch, tokens, dim)
    padding = torch.tensor([[False, False, True], [False, False, False]])  # sample 0's last key is padding
    inputs = tokens if batch_first else tokens.transpose(0, 1)
    w_v, b_v = attention.in_proj_weight[8:], attention.in_proj_bias[8:]
    values = tokens @ w_v.T + b_v  # (batch, tokens, dim)
    expected = torch.stack([values[0, :2].mean(0), values[1].mean(0)])  # the allowed keys' mean, per sample
    expected = attention.out_proj(expected)[:, None, :].expand(2, 3, 4)
    with torch.no_grad(), edited_multihead_attention([attention], _uniform):
        out, weights = attention(inputs, inputs, inputs, key_padding_mask=padding, average_attn_weights=False)
        _, averaged = attention(inputs, inputs, inputs, key_padding_mask=padding)
        unbatched, _ = attention(tokens[1], tokens[1], tokens[1], need_weights=False)
    out = out if batch_first else out.transpose(0, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(unbatched, expected[1], atol=1e-6)
    assert torch.allclose(weights[0, :, :, :2], torch.full((2, 3, 2), 0.5)) and (weights[0, :, :, 2] == 0).all()
    assert torch.allclose(averaged[1], torch.full((3, 3), 1 / 3))  # the caller's averaged weights, edited
    assert _no_hooks(attention)
    with torch.no_grad():  # outside the block the module is itself again
        assert not torch.allclose(attention(inputs, inputs, inputs)[0], out if batch_first else out.transpose(0, 1))


def test_multihead_edit_removes_its_hooks_and_restores_the_fast_path_when_the_model_raises():
    layer = nn.TransformerEncoderLayer(4, 2, 8, batch_first=True, dropout=0.0).eval()

    def explode(module, args, output):
        raise RuntimeError("boom inside the layer")

    layer.linear1.register_forward_hook(explode)
    before = torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), edited_multihead_attention([layer.self_attn], _uniform):
            assert torch.backends.mha.get_fastpath_enabled() is False
            layer(torch.randn(2, 3, 4))
    assert torch.backends.mha.get_fastpath_enabled() == before
    layer.linear1._forward_hooks.clear()  # the test's own hook
    assert _no_hooks(layer)


# -- hand-set models: attention decides, or it does not -----------------------------------------------------------


class BuiltInHardWired(Detector):
    """A built-in SelfAttention whose CLS query attends (almost) only to feature 0; logit = CLS output − 0.5,
    or, with ``ignore_attention``, x[:, 0] − 0.5 (the attention still runs but decides nothing)."""

    kind = "test"

    def __init__(self, n_features: int = 3, ignore_attention: bool = False) -> None:
        super().__init__()
        dim = n_features + 2
        self.input_shape, self.n_classes, self.dim, self.ignore = (n_features,), 2, dim, ignore_attention
        self.token_map = TokenMap(torch.arange(1, n_features + 1), n_features + 1, 0)
        self.attn = SelfAttention(dim, 1)
        with torch.no_grad():
            weight = torch.zeros(3 * dim, dim)
            weight[1, 0] = 30.0 * math.sqrt(dim)  # CLS's query looks for position 1 (feature 0)
            weight[dim:dim + n_features + 1, :n_features + 1] = torch.eye(n_features + 1)  # keys: positions
            weight[2 * dim + dim - 1, dim - 1] = 1.0  # value: the value channel
            self.attn.qkv.weight.copy_(weight)
            self.attn.qkv.bias.zero_()
            self.attn.proj.weight.copy_(torch.eye(dim))
            self.attn.proj.bias.zero_()

    def forward_with_attention(self, x):
        n, f = x.shape
        tokens = torch.zeros(n, f + 1, self.dim)
        tokens[:, :, :f + 1] = torch.eye(f + 1)
        tokens[:, 1:, -1] = x
        out, weights = self.attn(tokens)
        score = x[:, 0] - 0.5 if self.ignore else out[:, 0, -1] - 0.5
        return torch.stack([-score, score], 1), [weights]


class MultiheadHardWired(nn.Module):
    """The same decision through nn.MultiheadAttention (one head, hand-set): a user's model for python:."""

    def __init__(self, n_features: int = 3, ignore_attention: bool = False) -> None:
        super().__init__()
        dim = n_features + 2
        self.dim, self.ignore = dim, ignore_attention
        self.attn = nn.MultiheadAttention(dim, 1, batch_first=True)
        with torch.no_grad():
            weight = torch.zeros(3 * dim, dim)
            weight[1, 0] = 30.0 * math.sqrt(dim)
            weight[dim:dim + n_features + 1, :n_features + 1] = torch.eye(n_features + 1)
            weight[2 * dim + dim - 1, dim - 1] = 1.0
            self.attn.in_proj_weight.copy_(weight)
            self.attn.in_proj_bias.zero_()
            self.attn.out_proj.weight.copy_(torch.eye(dim))
            self.attn.out_proj.bias.zero_()

    def forward(self, x):
        n, f = x.shape
        tokens = torch.zeros(n, f + 1, self.dim)
        tokens[:, :, :f + 1] = torch.eye(f + 1)
        tokens[:, 1:, -1] = x
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        score = x[:, 0] - 0.5 if self.ignore else out[:, 0, -1] - 0.5
        return torch.stack([-score, score], 1)


def _hard_wired(kind: str, ignore: bool) -> Detector:
    if kind == "built-in":
        return BuiltInHardWired(ignore_attention=ignore).eval()
    return ForeignDetector(MultiheadHardWired(ignore_attention=ignore), input_shape=(3,), n_classes=2,
                           input_kind="tabular").eval()


def _sanity(model: Detector, x: torch.Tensor, y: torch.Tensor):
    from auditor.stages.sanity import sanity_stage

    pred = model(x).argmax(1)
    return sanity_stage(model, x, pred, {}, baseline=torch.zeros(x.shape[1:]), seed=0,
                        index=torch.arange(len(x)), explainers={}, y=y)


@pytest.mark.parametrize("kind", ["built-in", "multihead"])
def test_uniform_attention_and_flip_rate_know_a_model_that_hinges_on_attention_from_one_that_ignores_it(kind):
    x = torch.full((8, 3), 0.05)
    x[:4, 0] = 0.9  # attended feature decides "positive"; under uniform attention CLS reads (0.9 + 0.1) / 4
    y = (x[:, 0] > 0.5).long()
    hinging = _hard_wired(kind, ignore=False)
    assert (hinging(x).argmax(1) == y).all()
    outcome = _sanity(hinging, x, y)
    kept = outcome.per_sample[KEPT]
    assert kept.tolist() == [0.0] * 4 + [1.0] * 4  # every positive decision rested on attention
    assert outcome.per_sample["sanity.uniform_attention.accuracy"].mean() == 0.5
    assert outcome.per_sample["sanity.flip_rate.attention"][:4].tolist() == [1.0] * 4
    random_flips = outcome.per_sample["sanity.flip_rate.random"]  # only where the draw hits feature 0 itself
    assert random_flips[4:].sum() == 0 and random_flips.sum() < 4
    ignoring = _hard_wired(kind, ignore=True)
    outcome = _sanity(ignoring, x, y)
    assert outcome.per_sample[KEPT].mean() == 1.0 and outcome.per_sample["sanity.flip_rate.attention"].sum() == 0
    assert not outcome.skipped and _no_hooks(ignoring)
    assert torch.backends.mha.get_fastpath_enabled() is True


def test_uniform_attention_is_skipped_with_the_reason_where_the_attention_cannot_be_edited():
    from detectors.foreign import ForeignDetector

    class OwnAttention(nn.Module):  # reports its weights itself: which module computes them is unknown
        def __init__(self):
            super().__init__()
            self.inner = MultiheadHardWired()

        def forward(self, x):
            return self.inner(x)

        def forward_with_attention(self, x):
            weights = torch.full((len(x), 1, 4, 4), 0.25)
            return self.inner(x), [weights]

    class Custom(nn.Module):  # a hand-written attention module named with --attention-module
        def forward(self, tokens):
            weights = torch.softmax(tokens @ tokens.transpose(1, 2), dim=-1)
            return weights @ tokens, weights[:, None]

    class WithCustom(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = Custom()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            tokens = torch.cat([torch.zeros(len(x), 1), x], 1)[:, :, None].expand(-1, -1, 4)
            return self.head(self.mix(tokens)[0][:, 0])

    x, y = torch.rand(4, 3), torch.zeros(4, dtype=torch.long)
    cases = {"forward_with_attention": ForeignDetector(OwnAttention(), input_shape=(3,), n_classes=2,
                                                       input_kind="tabular"),
             "not an nn.MultiheadAttention": ForeignDetector(WithCustom(), input_shape=(3,), n_classes=2,
                                                             input_kind="tabular", attention_modules=["mix"])}
    for reason, model in cases.items():
        outcome = _sanity(model.eval(), x, y)
        assert not outcome.per_sample
        for name in (KEPT, "sanity.uniform_attention.accuracy", "sanity.flip_rate.attention"):
            assert reason in outcome.skipped[name], (reason, outcome.skipped)


# -- hidden importance: known answers --------------------------------------------------------------------------------


class KeyFeature(Detector):
    """logit of class 1 = 10 (x[key] − 0.5), class 0 = 0: the decision hinges on one feature; tokens as the
    tabular detector's (CLS 0, feature i on token i + 1)."""

    kind = "test"

    def __init__(self, n_features: int = 4, key: int = 2) -> None:
        super().__init__()
        self.input_shape, self.n_classes, self.key = (n_features,), 2, key
        self.token_map = TokenMap(torch.arange(1, n_features + 1), n_features + 1, 0)

    def forward(self, x):
        score = 10.0 * (x[:, self.key] - 0.5)
        return torch.stack([torch.zeros_like(score), score], 1)


def test_erasure_drops_and_hidden_importance_by_hand():
    from auditor.stages.trust import erasure_drops, hidden_importance, most_important, trust_stage

    model = KeyFeature()
    x = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.8, 0.7, 0.1, 0.6], [0.4, 0.4, 0.5, 0.4]])
    pred = model(x).argmax(1)
    baseline = torch.full((4,), 0.5)
    drops = erasure_drops(model, x, pred, baseline, model.token_map)
    # erasing the key feature sets the logit to 0 (p = 1/2); erasing any other feature changes nothing
    expected = math.log(torch.sigmoid(torch.tensor(4.0)).item()) - math.log(0.5)
    assert drops[0, 2] == pytest.approx(expected, abs=1e-5) and drops[1, 2] == pytest.approx(expected, abs=1e-5)
    assert np.all(np.delete(drops, 2, axis=1) == 0) and np.all(drops[2] == 0)
    assert most_important(drops).tolist() == [2, 2, -1]  # the third sample sits at the baseline: no top token
    honest = torch.zeros(3, 4)
    honest[:, 2] = 1.0
    deceptive = torch.ones(3, 4)
    deceptive[:, 2] = 0.01  # 0.01 / 3.01 of the mass, below the uniform 1/4
    signed = -honest  # absolute values: a negative attribution on the key is still the key's mass
    outcome = trust_stage(model, x, pred, {"honest": honest, "deceptive": deceptive, "signed": signed},
                          baseline=baseline)
    values = {name: outcome.per_sample[f"trust.hidden_importance.{name}"] for name in ("honest", "deceptive",
                                                                                       "signed")}
    assert values["honest"][:2].tolist() == [0.0, 0.0] and values["deceptive"][:2].tolist() == [1.0, 1.0]
    assert values["signed"][:2].tolist() == [0.0, 0.0]
    assert all(np.isnan(v[2]) for v in values.values())
    assert outcome.rows["token"].tolist() == [3, 3, -1]  # token indices: feature 2 is token 3
    assert outcome.rows["share/deceptive"][0] == pytest.approx(0.01 / 3.01)
    # exactly at the uniform share is not "less than uniform"; an all-zero attribution does not count
    assert hidden_importance(np.array([0, 0]), np.array([[0.25] * 4, [np.nan] * 4])).tolist()[0] == 0.0
    assert np.isnan(hidden_importance(np.array([0]), np.array([[np.nan] * 4]))[0])


def test_trust_stage_is_per_sample_so_shards_gather_to_the_whole(tiny_detector):
    from auditor.stages.explainers import make_explainer
    from auditor.stages.trust import trust_stage

    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(1))
    pred = tiny_detector(x).argmax(1)
    baseline = torch.rand(10, 6, generator=torch.Generator().manual_seed(2))  # a per-sample baseline
    attributions = {"attention": make_explainer("attention").explain(tiny_detector, x, pred, baseline=baseline,
                                                                     seed=0, index=torch.arange(10))}
    whole = trust_stage(tiny_detector, x, pred, attributions, baseline=baseline)
    halves = [trust_stage(tiny_detector, x[rows], pred[rows], {k: v[rows] for k, v in attributions.items()},
                          baseline=baseline[rows], max_batch=7) for rows in (slice(0, 4), slice(4, 10))]
    for name, values in {**whole.per_sample, **whole.rows}.items():
        group = "per_sample" if name in whole.per_sample else "rows"
        gathered = np.concatenate([getattr(half, group)[name] for half in halves])
        # the flags and tokens exactly; drops and shares up to float32 rounding of other batch sizes
        assert np.allclose(gathered, values, rtol=1e-5, atol=1e-7, equal_nan=True), name
        if name in whole.per_sample or name == "token":
            assert np.array_equal(gathered, values, equal_nan=True), name


def test_catalogue_knows_the_new_metrics():
    for name in (KEPT, "sanity.uniform_attention.accuracy", "trust.hidden_importance.attention"):
        spec = spec_for(name, [], ["attention"])
        assert spec is not None and spec.direction == "lower" and spec.value_range == "[0, 1]", name


# -- the deceptive and the honest twin --------------------------------------------------------------------------------


def test_deceptive_twin_is_flagged_and_its_honest_twin_is_not(deceptive_twins):
    from auditor.stages.explainers import make_explainer
    from auditor.stages.trust import trust_stage

    twins = deceptive_twins
    x, y, n = twins.x, twins.y, len(twins.x)
    baseline = torch.full((x.shape[1],), 0.5)
    found = {}
    for name, model in (("honest", twins.honest), ("deceptive", twins.deceptive)):
        with torch.no_grad():
            pred = model(x).argmax(1)
        assert (pred == y).double().mean() > 0.95, name  # measured 1.000 and 0.990
        attributions = {explainer: make_explainer(explainer).explain(model, x, pred, baseline=baseline, seed=0,
                                                                     index=torch.arange(n))
                        for explainer in ("attention", "integrated-gradients")}
        outcome = trust_stage(model, x, pred, attributions, baseline=baseline)
        assert (outcome.rows["token"] == twins.key + 1).mean() > 0.9, name  # erasure finds the key feature
        found[name], _ = aggregate(outcome.per_sample, Bootstrap(n, seed=0))
    honest, deceptive = found["honest"], found["deceptive"]
    attention = "trust.hidden_importance.attention"
    assert deceptive[attention].value > 0.8 and honest[attention].value < 0.1  # measured 0.990 and 0.000
    assert deceptive[attention].ci95[0] > honest[attention].ci95[1]
    # integrated gradients reads the deceptive model's reliance on the key: it is not fooled
    assert deceptive["trust.hidden_importance.integrated-gradients"].value < 0.1


def test_audit_reports_both_checks_and_the_worst_samples(deceptive_twins, tmp_path):
    from auditor.cli import cli
    from twins import write_twin, write_twin_csv

    data = write_twin_csv(tmp_path / "twins.csv", deceptive_twins.x[:80], deceptive_twins.y[:80])
    model = write_twin(tmp_path / "deceptive.safetensors", deceptive_twins.deceptive, data)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--model", str(model), "--data", str(data), "--out", str(out),
                                      "--attacks", "fgsm", "--eps", "0.1", "--explainers", "attention,random",
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the trust gate: this attention is no better than chance
    document = json.loads((out / "results.json").read_text())
    metrics = document["metrics"]
    assert metrics["trust.hidden_importance.attention"]["value"] > 0.8
    assert metrics["trust.hidden_importance.attention"]["ci95"] is not None
    for name in (KEPT, "sanity.uniform_attention.accuracy", "trust.hidden_importance.random"):
        assert name in metrics and metrics[name]["ci95"] is not None, name
    assert "trust" in document["timing"]
    html = (out / "report.html").read_text()
    assert "Does attention hide what matters?" in html and "<code>f2</code>" in html
    assert "Pruthi et al. 2020" in html and "Wiegreffe &amp; Pinter 2019" in html


def test_the_report_says_when_attention_does_not_drive_the_model():
    from auditor.metrics import MetricValue
    from auditor.report.html import sanity_notes

    unused = "attention does not drive this model, so heat maps of it explain little"
    assert unused in sanity_notes({KEPT: MetricValue(0.95, (0.9, 0.99))})[0]
    assert unused not in sanity_notes({KEPT: MetricValue(0.6, (0.5, 0.7))})[0]
    assert sanity_notes({}) == []


# the exit code each twin must get under the default policy, and the necessary conditions that fail it
TWINS = {"honest": (0, set()), "deceptive": (1, {"beats-chance", "hides-nothing"}), "used": (0, set()),
         "unused": (1, {"used"})}


def _audit_twin(twin: str, request, tmp_path) -> tuple[int, Path]:
    from safetensors.torch import save_file

    from auditor.cli import cli
    from twins import twin_data, write_twin, write_twin_csv

    out = tmp_path / "out"
    common = ["--out", str(out), "--attacks", "fgsm", "--eps", "0.1", "--quiet"]
    if twin in ("honest", "deceptive"):  # the tool's own checkpoints, attention and random explaining
        twins = request.getfixturevalue("deceptive_twins")
        data = write_twin_csv(tmp_path / "twins.csv", twins.x[:120], twins.y[:120])
        model = write_twin(tmp_path / f"{twin}.safetensors", getattr(twins, twin), data)
        arguments = ["--model", str(model), "--data", str(data), "--explainers", "attention,random"]
    else:  # a user's nn.MultiheadAttention model through python:, with the quick profile's explainers
        x, y = twin_data(120, seed=2)
        data = write_twin_csv(tmp_path / "twins.csv", x, y)
        weights = tmp_path / f"{twin}.safetensors"
        save_file(request.getfixturevalue("multihead_twins")[twin].state_dict(), str(weights))
        arguments = ["--model", f"python:{Path(__file__).parent / 'twins.py'}:make_{twin}", "--weights",
                     str(weights), "--input-kind", "tabular", "--data", str(data)]
    result = CliRunner().invoke(cli, ["run", *arguments, *common], catch_exceptions=False)
    return result.exit_code, out


@pytest.mark.parametrize("twin", TWINS)
def test_the_exit_code_follows_the_trust_panel_line_by_line(request, tmp_path, twin):
    """Issue 25: under the default policy the exit code is the trust verdict's. The detector whose attention
    points at the key feature but decides nothing (``unused``: uniform attention keeps every prediction) fails,
    though its attention beats chance, survives randomisation and hides nothing; its twin whose decision flows
    through that attention passes; issue 15's deceptive twin still fails (it hides the key) and its honest twin
    still passes. Every line of the panel in summary.md and report.html agrees with the gates."""
    from auditor.verdict import panel_verdict

    code, failing = TWINS[twin]
    exit_code, out = _audit_twin(twin, request, tmp_path)
    assert exit_code == code
    document = json.loads((out / "results.json").read_text())
    metrics = {name: MetricValue(entry["value"], tuple(entry["ci95"]) if entry["ci95"] else None)
               for name, entry in document["metrics"].items()}
    verdict = panel_verdict(metrics, document["skipped"], document["gates"])
    gates = {gate["metric"]: gate for gate in document["gates"]}
    assert all(gate["passed"] for name, gate in gates.items() if name != "trust.verdict")  # only trust decides
    assert gates["trust.verdict"]["passed"] is (code == 0) is (verdict.answer == "yes")
    assert gates["trust.verdict"]["message"] == verdict.finding
    necessary = {line.condition: line.status for line in verdict.lines if line.condition}
    assert necessary == {condition: "fail" if condition in failing else "pass" for condition in necessary}, \
        verdict.finding
    summary = (out / "summary.md").read_text()
    panel = summary.split("### Can attention be trusted", 1)[1].split("| --- | --- | --- | --- |\n", 1)[1]
    rows = [row.split(" | ") for row in panel.splitlines() if row.startswith("| ")]
    words = {"pass": "yes", "fail": "**NO**"}
    assert [(question.lstrip("| "), answer) for question, _, answer, *_ in rows] == [
        (line.question, words.get(line.status, line.status)) for line in verdict.lines]
    assert f"**Verdict: {verdict.answer}**" in summary
    html = (out / "report.html").read_text()
    shown = re.search(r'<p id="trust-verdict"><strong>Verdict: <span class="\w+">(\w+)</span>', html).group(1)
    assert shown == ("yes" if code == 0 else "NO")
