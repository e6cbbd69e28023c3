"""Attention variants (detectors/blocks.py): softmax, sparsemax, entmax15, additive.

Known answers for each attention function and for the sparsity metrics, the default reproducing the
logits of the code before the variants existed, the checkpoint round trip (an old checkpoint loads as
softmax), one contract over variants x (attention explainers, attention attacks, flip check, the
attention-consistency loss) on a tiny tabular detector, and one train-and-audit per detector kind with
a non-default variant, compared with ``audit compare``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attacks import ATTENTION_ATTACKS, Domain, make_attack
from auditor.cli import cli
from auditor.stages.explainers import EXPLAINERS, make_explainer
from auditor.stages.masking import sparse_attention_note
from auditor.catalogue import spec_for
from auditor.stages.sanity import flip_rates
from auditor.stages.sparsity import row_sparsity, sparsity_stage
from detectors.blocks import ATTENTION_VARIANTS, SelfAttention, edited_attention
from detectors.checkpoint import load_checkpoint, save_checkpoint
from detectors.errors import BadInputError
from detectors.registry import detector_for_data
from detectors.sequence import SequenceTransformer
from detectors.tabular import FeatureTokenTransformer
from auditor.training.config import DefenseConfig
from auditor.training.defenses import DefenseLoss
from detectors.vision import VisionTransformer
from exits import gate_exit_code

ATTENTION_EXPLAINERS = sorted(name for name, cls in EXPLAINERS.items() if cls.family == "attention")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the default is today's model

# logits of the code before the variants existed (main at 4da7cbd), same seeds and inputs, recorded on one CPU
BEFORE = {
    "tabular": [[0.6100908517837524, 0.8314549922943115], [0.5831838846206665, 0.5995551347732544]],
    "vit": [[0.1751537322998047, 0.7598707675933838, -0.4682130813598633],
            [0.15885823965072632, 0.7980177998542786, -0.4686492681503296]],
    "sequence": [[0.34338974952697754, -0.07160799205303192], [0.21435163915157318, 0.2940504550933838]],
}
# Other x86-64 CPUs' float32 kernels give these logits up to 2.1e-7 apart (tabular 1.8e-7, vit 6e-8, sequence
# 2.1e-7); 1e-6 is five times that and still a thousand times below what any change of the model moves them
# (the other attention functions: more than 1e-3).
ACROSS_MACHINES = 1e-6


def _reference_models(**kwargs):
    torch.manual_seed(0)
    tabular = FeatureTokenTransformer(5, 2, dim=8, depth=2, heads=2, mlp_dim=16, **kwargs).eval()
    torch.manual_seed(0)
    vit = VisionTransformer(1, 4, 4, 3, patch=2, dim=8, depth=1, heads=2, mlp_dim=16, **kwargs).eval()
    torch.manual_seed(0)
    sequence = SequenceTransformer(3, 2, 2, dim=8, depth=1, heads=2, mlp_dim=16, **kwargs).eval()
    return {"tabular": (tabular, torch.linspace(0, 1, 10).reshape(2, 5)),
            "vit": (vit, torch.linspace(0, 1, 32).reshape(2, 1, 4, 4)),
            "sequence": (sequence, torch.linspace(0, 1, 12).reshape(2, 3, 2))}


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "softmax"])
def test_default_attention_gives_the_logits_of_before(explicit):
    with torch.no_grad():
        for kind, (model, x) in _reference_models(**({"attention": "softmax"} if explicit else {})).items():
            logits = model(x)
            for elsewhere in (logits, logits + 2.1e-7, logits - 2.1e-7):  # as another CPU computes them
                torch.testing.assert_close(elsewhere, torch.tensor(BEFORE[kind]), rtol=0, atol=ACROSS_MACHINES,
                                           msg=kind)
            assert model.hparams()["attention"] == "softmax"


@pytest.mark.parametrize("attention", ["sparsemax", "entmax15", "additive"])
def test_the_tolerance_still_tells_another_model_from_before(attention):
    with torch.no_grad():
        for kind, (model, x) in _reference_models(attention=attention).items():
            assert (model(x) - torch.tensor(BEFORE[kind])).abs().max() > 1000 * ACROSS_MACHINES, kind


def test_an_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="unknown attention 'linear'; choose one of softmax, sparsemax"):
        FeatureTokenTransformer(3, 2, attention="linear")
    with pytest.raises(BadInputError, match="unknown attention"):
        detector_for_data("tabular", (3,), 2, "x.csv", attention="linear")
    result = CliRunner().invoke(cli, ["train", "--data", "breast-cancer", "--attention", "linear", "--out", "m"])
    assert result.exit_code == 2 and "'linear' is not one of" in result.output


# --------------------------------------------------------------------------- the attention functions

def _module(attention: str) -> SelfAttention:
    torch.manual_seed(0)
    return SelfAttention(4, 2, attention).eval()


def _far_key():
    """Queries of positive entries and keys whose token 3 points the other way: its score is the lowest in every
    row, by far."""
    q = torch.full((1, 2, 4, 2), 1.0)
    k = torch.tensor([[1.0, 1.0], [0.5, 1.0], [1.0, 0.2], [-5.0, -5.0]]).expand(1, 2, 4, 2).clone()
    return q, k.requires_grad_(True)


@pytest.mark.parametrize("attention", ["sparsemax", "entmax15"])
def test_sparse_attention_gives_exactly_zero_weight_and_gradient_outside_its_support(attention):
    q, k = _far_key()
    weights = _module(attention)._weights(q, k)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2, 4))
    assert torch.equal(weights[..., 3], torch.zeros(1, 2, 4)) and (weights[..., :3] > 0).any()
    (weights * torch.arange(1.0, 5.0)).sum().backward()
    assert torch.equal(k.grad[:, :, 3], torch.zeros(1, 2, 2))  # exactly: no signal through the token
    assert k.grad[:, :, :3].abs().sum() > 0


@pytest.mark.parametrize("attention", ["softmax", "additive"])
def test_dense_attention_keeps_every_token_and_its_gradient(attention):
    q, k = _far_key()
    weights = _module(attention)._weights(q, k)
    assert (weights > 0).all() and torch.allclose(weights.sum(-1), torch.ones(1, 2, 4))
    (weights * torch.arange(1.0, 5.0)).sum().backward()
    assert (k.grad[:, :, 3].abs() > 0).any()


def test_sparsemax_is_the_euclidean_projection_by_hand():
    # scores (after / sqrt(2)) of one row: sparsemax of [1, 0.5, -2] is [0.75, 0.25, 0] (tau = 0.25)
    module = _module("sparsemax")
    q = torch.tensor([[1.0, 1.0]]).expand(1, 2, 1, 2)
    k = torch.tensor([[0.5, 0.5], [0.25, 0.25], [-1.0, -1.0]]).mul(math.sqrt(2)).expand(1, 2, 3, 2)
    weights = module._weights(q, k)
    assert torch.allclose(weights[0, 0, 0], torch.tensor([0.75, 0.25, 0.0]), atol=1e-6)


def test_additive_attention_is_bahdanaus_score_with_softmax():
    module = _module("additive")
    q = torch.randn(1, 2, 3, 2, generator=torch.Generator().manual_seed(1))
    k = torch.randn(1, 2, 3, 2, generator=torch.Generator().manual_seed(2))
    v = module.additive_v.detach()
    expected = torch.empty(1, 2, 3, 3)
    for h in range(2):
        for i in range(3):
            scores = torch.stack([v[h] @ torch.tanh(q[0, h, i] + k[0, h, j]) for j in range(3)])
            expected[0, h, i] = torch.softmax(scores, dim=0)
    assert torch.allclose(module._weights(q, k), expected, atol=1e-6)
    assert "attn.additive_v" not in dict(_reference_models()["tabular"][0].encoder.blocks[0].named_parameters())


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_the_attention_edit_applies_after_normalisation(attention):
    module = _module(attention)
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    seen = []

    def uniform(weights, allowed):
        seen.append(weights.sum(-1))
        return torch.full_like(weights, 1 / weights.shape[-1])

    with edited_attention(module, uniform):
        out, weights = module(x)
    assert torch.allclose(seen[0], torch.ones(2, 2, 5))  # the edit received normalised rows
    assert torch.equal(weights, torch.full((2, 2, 5, 5), 0.2)) and module.attention_edit is None


# --------------------------------------------------------------------------- sparsity metrics

def test_row_sparsity_known_answers():
    rows = torch.zeros(2, 2, 4, 4)
    rows[0, :, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # sample 0, CLS row: half zeros, entropy ln 2
    rows[1, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # sample 1: head 0 one-hot, head 1 uniform
    rows[1, 1, 0] = 0.25
    zero_share, entropy = row_sparsity(rows, cls_index=0)
    assert torch.allclose(zero_share, torch.tensor([0.5, 0.375], dtype=torch.float64))
    assert torch.allclose(entropy, torch.tensor([math.log(2), math.log(4) / 2], dtype=torch.float64))
    assert spec_for("attention.zero_share", [], []).direction == "none (informational)"
    assert spec_for("attention.entropy", [], []).higher_is_better is None


def test_softmax_has_no_zeros_and_sparsemax_has_some_on_sharp_scores():
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(0))
    shares = {}
    for attention in ("softmax", "sparsemax"):
        model = _tiny(attention)
        with torch.no_grad():  # sharpen the scores so the sparse map leaves tokens out
            model.encoder.blocks[-1].attn.qkv.weight.mul_(8)
        per_sample = sparsity_stage(model, x, max_batch=5).per_sample
        assert per_sample["attention.zero_share"].shape == (16,)
        shares[attention] = per_sample["attention.zero_share"].mean()
        assert np.all(per_sample["attention.entropy"] <= math.log(7) + 1e-9)
    assert shares["softmax"] == 0.0 and shares["sparsemax"] > 0.2


def test_the_masking_note_appears_for_sparse_attention_only():
    assert sparse_attention_note("softmax") is None and sparse_attention_note(None) is None
    assert "vanishing" in sparse_attention_note("sparsemax") and "entmax15" in sparse_attention_note("entmax15")


# --------------------------------------------------------------------------- checkpoints

def _tiny(attention: str) -> FeatureTokenTransformer:
    torch.manual_seed(0)
    return FeatureTokenTransformer(6, 2, dim=8, depth=2, heads=2, mlp_dim=16, dropout=0.0, attention=attention).eval()


def _metadata():
    return {"features": [f"f{i}" for i in range(6)], "classes": ["a", "b"],
            "scaler": {"lo": [0.0] * 6, "hi": [1.0] * 6}, "data": {"name": "x"}, "defense": {"name": "none"}}


def test_the_checkpoint_records_the_variant_and_an_old_one_loads_as_softmax(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    for attention in ("additive", "entmax15"):
        model = _tiny(attention)
        save_checkpoint(tmp_path / f"{attention}.safetensors", model, metadata=_metadata())
        loaded = load_checkpoint(tmp_path / f"{attention}.safetensors")
        assert loaded.metadata["detector"]["hparams"]["attention"] == attention
        assert torch.equal(loaded.detector(x), model(x))
    save_checkpoint(tmp_path / "new.safetensors", _tiny("softmax"), metadata=_metadata())
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        header = json.loads(handle.metadata()["attention_audit"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    del header["detector"]["hparams"]["attention"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"attention_audit": json.dumps(header)})
    old = load_checkpoint(tmp_path / "old.safetensors")
    assert old.detector.hparams()["attention"] == "softmax" and torch.equal(old.detector(x), _tiny("softmax")(x))


# --------------------------------------------------------------------------- contract over the variants

VARIANT_MODELS = {attention: _tiny(attention) for attention in ATTENTION_VARIANTS}
X = torch.rand(12, 6, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", ATTENTION_EXPLAINERS)
@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_contract_attention_explainers(attention, name):
    model = VARIANT_MODELS[attention]
    with torch.no_grad():
        target = model(X).argmax(1)

    def explain(rows):
        return make_explainer(name).explain(model, X[rows], target[rows], baseline=torch.full((6,), 0.5), seed=0,
                                            index=torch.arange(12)[rows])

    whole = explain(slice(0, 12))
    assert whole.shape == X.shape and torch.isfinite(whole).all() and not model.training
    assert torch.allclose(whole, torch.cat([explain(slice(0, 5)), explain(slice(5, 12))]), atol=1e-5)


@pytest.mark.parametrize("name", sorted(ATTENTION_ATTACKS))
@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_contract_attention_attacks(attention, name):
    model = VARIANT_MODELS[attention]
    with torch.no_grad():
        y = model(X).argmax(1)
    attack = make_attack(name, steps=3, restarts=1)
    domain = Domain.unit((6,))

    def run(rows):
        return attack(model, X[rows], y[rows], eps=0.1, domain=domain, seed=1, index=torch.arange(12)[rows])

    adv = run(slice(0, 12))
    assert adv.shape == X.shape and torch.isfinite(adv).all() and not model.training
    assert (adv - X).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, torch.cat([run(slice(0, 7)), run(slice(7, 12))]))


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_contract_flip_check_and_attention_consistency_loss(attention):
    model = VARIANT_MODELS[attention]
    rates = flip_rates(model, X, seed=0, index=torch.arange(12), max_batch=5)
    for values in rates.values():
        assert values.shape == (12,) and set(np.unique(values)) <= {0.0, 1.0}
    assert model.attention_edit is None if hasattr(model, "attention_edit") else True
    assert all(block.attn.attention_edit is None for block in model.encoder.blocks)

    trained = _tiny(attention).train()
    loss = DefenseLoss(DefenseConfig("attention-consistency", steps=2), (6,), seed=0)
    value = loss(lambda x: trained.forward_with_attention(x), trained, X, torch.zeros(12, dtype=torch.long),
                 torch.arange(12), 1, lambda: torch.autocast("cpu", enabled=False))
    value.backward()
    assert torch.isfinite(value) and trained.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- end to end, one per kind

END_TO_END = (("tabular", "breast-cancer", "sparsemax", 2), ("vit", "digits", "entmax15", 1),
              ("sequence", "sequences:200", "additive", 1))
SAMPLES = {"tabular": 8, "vit": 10, "sequence": 8}  # digits: stratified, at least one sample per class
QUICK_SMALL = ("--attack-param", "pgd.steps=3", "--attack-param", "attention-shift.steps=3",
               "--attack-param", "attention-shift.restarts=1", "--eps", "0.05")


@pytest.fixture(scope="module")
def variant_audits(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    runner = CliRunner()
    folders = {}
    for kind, data, attention, epochs in END_TO_END:
        model = root / f"{kind}.safetensors"
        trained = runner.invoke(cli, ["train", "--detector", kind, "--data", data, "--attention", attention,
                                      "--epochs", str(epochs), "--out", str(model), "--quiet"],
                                catch_exceptions=False)
        assert trained.exit_code == 0 and f"attention {attention}" in trained.output
        folders[kind] = root / f"audit-{kind}"
        audited = runner.invoke(cli, ["run", "--model", str(model), "--profile", "quick", "--max-samples",
                                      str(SAMPLES[kind]),
                                      *QUICK_SMALL, "--out", str(folders[kind]), "--quiet"], catch_exceptions=False)
        assert audited.exit_code == gate_exit_code(folders[kind]), audited.output
    return root, folders


@pytest.mark.parametrize("kind, data, attention, epochs", END_TO_END, ids=[e[0] for e in END_TO_END])
def test_train_and_audit_with_a_variant(variant_audits, kind, data, attention, epochs):
    _, folders = variant_audits
    document = json.loads((folders[kind] / "results.json").read_text())
    assert document["model"]["attention"] == attention
    metrics = document["metrics"]
    for name in ("attention.zero_share", "attention.entropy", "sanity.flip_rate.attention",
                 "stability.topk_intersection.attention-shift@0.05", "faithfulness.deletion_auc.attention"):
        assert name in metrics, name
    assert 0 <= metrics["attention.zero_share"]["value"] < 1
    if attention == "additive":
        assert metrics["attention.zero_share"]["value"] == 0.0
    assert (document.get("masking_note") is not None) == (attention in ("sparsemax", "entmax15"))
    html = (folders[kind] / "report.html").read_text()
    assert "Attention sparsity" in html and f"<dd>{attention}</dd>" in html


def test_compare_lists_the_attention_among_training_differences(variant_audits):
    root, folders = variant_audits
    out = root / "compare"
    result = CliRunner().invoke(cli, ["compare", *map(str, folders.values()), "--allow-mismatch", "--out",
                                      str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    compared = json.loads((out / "compare.json").read_text())
    assert compared["training"]["attention"]["differs"] is True
    assert sorted(compared["training"]["attention"]["values"].values()) == ["additive", "entmax15", "sparsemax"]


# --------------------------------------------------------------------------- the study's table

def test_study_table_uses_t_intervals_and_the_worst_case_when_present(tmp_path):
    from bench.study_variants import ROBUST, Run, markdown, summarise, t_interval

    mean, half = t_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.302653
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert t_interval([0.5]) == (0.5, None)
    runs = [Run("flows:4000", "sparsemax", seed) for seed in (0, 1)]
    for run, metrics in zip(runs, ({ROBUST[0]: 0.2, ROBUST[1]: 0.9, "clean.accuracy": 0.9},
                                   {ROBUST[1]: 0.6, "clean.accuracy": 0.7})):
        folder = tmp_path / "runs" / run.name / "audit"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"metrics": {k: {"value": v} for k, v in metrics.items()}}))
    table = summarise(runs, tmp_path)
    robust = table["flows:4000"]["sparsemax"]["robust accuracy (worst, eps 0.05)"]
    assert robust["values"] == [0.2, 0.6] and robust["metric"] == ", ".join(sorted(ROBUST))
    assert "| sparsemax | 0.800 ± 1.271 | 0.400 ± 2.541 |" in markdown(table)


def test_study_differences_are_paired_by_seed():
    """A variant that is softmax plus 0.1 at every seed differs by exactly +0.1 with a zero-width interval, though
    the seeds spread each variant's own mean widely (unpaired intervals would overlap)."""
    from bench.study_variants import markdown, paired_differences

    cell = lambda values: {"values": values}  # noqa: E731
    table = {"flows:4000": {"softmax": {"clean accuracy": cell([0.2, 0.5, 0.9])},
                            "sparsemax": {"clean accuracy": cell([0.3, 0.6, 1.0])}}}
    difference = paired_differences(table)["flows:4000"]["sparsemax"]["clean accuracy"]
    assert difference["mean"] == pytest.approx(0.1) and difference["half_width"] == pytest.approx(0.0, abs=1e-12)
    table["flows:4000"] = {v: {t: {**c, "mean": 0.0, "half_width": 0.0} for t, c in cells.items()}
                           for v, cells in table["flows:4000"].items()}
    assert "| sparsemax − softmax | +0.100 [+0.100, +0.100] |" in markdown(table, paired_differences(table))
