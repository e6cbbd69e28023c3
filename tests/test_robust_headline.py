"""The robustness headline and its names (issue 13 §0, §3, §5): the per-sample worst case over the evasion
attacks, L2 attacks on their own grid, targeted runs under their own names, masking and convergence told
apart, typed --attack-param values, and a known answer for the minimum-norm eps selection."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from attacks import Domain, make_attack
from auditor.cli import cli
from auditor.stages.masking import evaluate_checks, masking_attack_rows, masking_checks, verdict
from auditor.metrics import Bootstrap, MetricValue
from auditor.run.persample import aggregate
from auditor.report.document import render_summary
from auditor.stages.robustness import run_attacks, within_budget
from auditor.run.config import AuditConfig, default_l2_grid
from detectors.base import Detector, TokenMap
from detectors.errors import BadInputError


class Linear(Detector):
    """score = w . x + b on 4 inputs in [0, 1]: the nearest boundary point is known in closed form, and a uniform
    attention keeps the attention attacks runnable."""

    kind = "test"

    def __init__(self, w, b=0.0) -> None:
        super().__init__()
        self.input_shape, self.n_classes = (4,), 2
        self.token_map = TokenMap(torch.arange(1, 5), 5, 0)
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward_with_attention(self, x):
        score = x @ self.w + self.b
        return torch.stack([-score, score], 1), [torch.full((len(x), 1, 5, 5), 0.2)]


def _data(model, n=64, seed=1):
    x = torch.rand(n, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct when clean
    return x, y


def _metrics(outcome, n):
    return aggregate(outcome.per_sample, Bootstrap(n, seed=0))[0]


def test_worst_case_is_the_per_sample_minimum_over_evasion_attacks_per_norm():
    model = Linear([4.0, 4.0, -4.0, -4.0]).eval()
    x, y = _data(model)
    attacks = {name: make_attack(name, **({"steps": 2, "restarts": 1} if name == "attention-shift" else {}))
               for name in ("fgsm", "pgd", "attention-shift", "pgd-l2", "deepfool")}
    eps, eps_l2 = [0.05, 0.1], [0.1, 0.3]
    outcome = run_attacks(model, x, y, y, attacks, eps, domain=Domain.unit((4,)), seed=0, batch_size=64,
                          keep_examples=False, progress=False, positive=1, n_classes=2, eps_l2=eps_l2)
    rows, metrics = outcome.per_sample, _metrics(outcome, len(x))
    assert list(rows)[:4] == ["robust.accuracy.worst@0.05", "robust.accuracy.worst@0.1",
                              "robust.accuracy.worst-l2@0.1", "robust.accuracy.worst-l2@0.3"]  # the headline first
    for e in eps:  # attention-shift keeps the prediction: no robust accuracy, not in the worst case
        tag = f"@{e:g}"
        assert f"robust.accuracy.attention-shift{tag}" not in rows
        expected = np.minimum(rows[f"robust.accuracy.fgsm{tag}"], rows[f"robust.accuracy.pgd{tag}"])
        assert np.array_equal(rows[f"robust.accuracy.worst{tag}"], expected)
        assert all(metrics[f"robust.accuracy.worst{tag}"].value <= metrics[f"robust.accuracy.{a}{tag}"].value
                   for a in ("fgsm", "pgd"))
        assert metrics[f"robust.accuracy.worst{tag}"].ci95 is not None
    for e in eps_l2:  # the L2 attacks run on their own grid only
        tag = f"@{e:g}"
        expected = np.minimum(rows[f"robust.accuracy.pgd-l2{tag}"], rows[f"robust.accuracy.deepfool{tag}"])
        assert np.array_equal(rows[f"robust.accuracy.worst-l2{tag}"], expected)
    assert "robust.accuracy.deepfool@0.05" not in rows and "robust.accuracy.fgsm@0.3" not in rows


def test_minimum_norm_selection_known_answer():
    """A sample counts as broken at eps exactly when the minimum-norm example lies within eps in L2 (ties
    included); on w = (1, 0, 0, 0), b = -0.5 deepfool's distance is |x0 - 0.5| (x 1.02, its overshoot)."""
    x = torch.zeros(3, 4)
    unbounded = torch.tensor([[0.3, 0, 0, 0], [0.3, 0.4, 0, 0], [1.0, 0, 0, 0]])  # L2 norms 0.3, 0.5, 1.0
    assert torch.equal(within_budget(unbounded, x, 0.5), torch.cat([unbounded[:2], x[2:]]))
    assert torch.equal(within_budget(unbounded, x, 0.29), x)

    model = Linear([1.0, 0.0, 0.0, 0.0], b=-0.5).eval()
    x = torch.tensor([[0.1, 0.5, 0.5, 0.5], [0.3, 0.2, 0.2, 0.2], [0.45, 0.9, 0.1, 0.3],
                      [0.6, 0.4, 0.4, 0.4], [0.8, 0.1, 0.9, 0.1], [0.95, 0.5, 0.5, 0.5]])  # distances .4 .2 .05 .1 .3 .45
    y = model(x).argmax(1)
    outcome = run_attacks(model, x, y, y, {"deepfool": make_attack("deepfool")}, [0.1], domain=Domain.unit((4,)),
                          seed=0, batch_size=64, keep_examples=False, progress=False, positive=1, n_classes=2,
                          eps_l2=[0.15, 0.35, 0.5])
    broken = {e: 1 - outcome.per_sample[f"robust.accuracy.deepfool@{e:g}"] for e in (0.15, 0.35, 0.5)}
    assert broken[0.15].tolist() == [0, 0, 1, 1, 0, 0]
    assert broken[0.35].tolist() == [0, 1, 1, 1, 1, 0]
    assert broken[0.5].tolist() == [1, 1, 1, 1, 1, 1]


def test_targeted_runs_have_their_own_names_and_the_checks_stay_untargeted():
    """--target-class adds ATTACK-targeted runs; robust.accuracy.pgd@EPS is the untargeted value either way,
    and a plain model passes every masking check (main reported masking_suspected = 1: its unbounded pgd was
    the targeted one, which leaves the target class "correct")."""
    model = Linear([4.0, 4.0, -4.0, -4.0]).eval()
    x, y = _data(model)
    eps = [0.05, 0.2]
    common = dict(attacks=("fgsm", "pgd"), eps=tuple(eps), masking_checks=True,
                  attack_params=(("pgd", "steps", "10"),))
    runs = {}
    for target in (None, "1"):
        config = AuditConfig(target_class=target, **common).bind(list("abcd"), ["0", "1"])
        attacks, targeted = config.build_attacks(), config.build_targeted_attacks()
        assert all(a.target_class is None for a in attacks.values())
        outcome = run_attacks(model, x, y, y, attacks, eps, domain=Domain.unit((4,)), seed=0, batch_size=64,
                              keep_examples=False, progress=False, positive=1, n_classes=2,
                              target=config.target_index, eps_l2=list(config.grid("l2")), targeted=targeted)
        runs[target] = metrics = _metrics(outcome, len(x))
        checks = masking_checks(model, x, y, metrics, attacks, eps, domain=Domain.unit((4,)), seed=0, batch_size=64)
        ran = [c for c in checks if c.status != "not run"]  # all but black-box-not-stronger (square is slow)
        assert len(ran) == 4 and all(c.status == "passed" for c in ran), [(c.name, c.status, c.detail) for c in ran]
        assert verdict(checks, "masking") == 0.0 and verdict(checks, "convergence") == 0.0
    for e in eps:
        for attack in ("fgsm", "pgd"):
            assert runs["1"][f"robust.accuracy.{attack}@{e:g}"] == runs[None][f"robust.accuracy.{attack}@{e:g}"]
            assert f"robust.accuracy.{attack}-targeted@{e:g}" in runs["1"]
            assert f"robust.targeted_success_rate.{attack}@{e:g}" in runs["1"]
        assert runs["1"][f"robust.accuracy.worst@{e:g}"].value <= runs["1"][f"robust.accuracy.pgd-targeted@{e:g}"].value
    assert not any(name.endswith(f"-targeted@{eps[0]:g}") for name in runs[None])


def test_unbounded_check_respects_frozen_features():
    """A label decided by a frozen feature: pgd held to the threat model cannot flip it, which is no sign of
    masking (inconclusive, with the free run as evidence); a model whose gradient leads nowhere still fails."""
    model = Linear([20.0, 0.5, 0.5, 0.5], b=-11.0).eval()  # feature 0 decides; the others cannot outweigh it
    x, y = _data(model)
    frozen = Domain.unit((4,), frozen=torch.tensor([True, False, False, False]))
    checks = {c.name: c for c in masking_checks(model, x, y, {}, {}, [0.1], domain=frozen, seed=0, batch_size=64)}
    check = checks["unbounded-succeeds"]
    assert check.status == "inconclusive" and "frozen" in check.detail, check.detail
    assert verdict(list(checks.values()), "masking") == 0.0

    class Flat(Linear):  # a zero gradient everywhere: no attack can move it, with or without frozen features
        def forward_with_attention(self, x):
            logits, attention = super().forward_with_attention(torch.round(x * 4) / 4)
            return logits, attention

    flat = Flat([20.0, 0.5, 0.5, 0.5], b=-11.0).eval()
    checks = masking_checks(flat, x, flat(x).argmax(1), {}, {}, [0.1], domain=frozen, seed=0, batch_size=64)
    assert next(c for c in checks if c.name == "unbounded-succeeds").status == "failed"


def test_more_effort_counts_toward_not_converged_only():
    metrics = {"robust.accuracy.pgd@0.1": MetricValue(0.5)}
    rows = {"unbounded": np.zeros(100), "stronger@0.1": np.r_[np.ones(30), np.zeros(70)]}  # 0.5 -> 0.3
    checks = evaluate_checks(metrics, rows, {"pgd": make_attack("pgd")}, {"linf": [0.1], "l2": []}, n=100)
    failed = {c.name: c.metric for c in checks if c.status == "failed"}
    assert failed == {"more-effort-same-answer": "robust.not_converged"}
    assert verdict(checks, "convergence") == 1.0 and verdict(checks, "masking") == 0.0


def test_more_effort_pgd_keeps_the_audited_schedule(monkeypatch):
    import auditor.stages.masking as masking

    made = []
    real = masking.make_attack
    monkeypatch.setattr(masking, "make_attack", lambda name, **kw: made.append(kw) or real(name, **kw))
    model = Linear([4.0, 4.0, -4.0, -4.0]).eval()
    x, y = _data(model, n=8)
    audited = make_attack("pgd", schedule="apgd", steps=2, restarts=1)  # not the default schedule
    masking_attack_rows(model, x, y, {"pgd": audited}, [0.1], domain=Domain.unit((4,)), seed=0, batch_size=64)
    # the unbounded check's pgd is its own (from the clean sample, fine steps); "more effort" is the audited one's
    assert made == [masking.UNBOUNDED,
                    dict(steps=10, step_size=audited.step_size, restarts=2, random_start=True, schedule="apgd")]


def test_attack_params_take_typed_values_and_refuse_bad_ones():
    config = AuditConfig(attack_params=(("pgd", "schedule", "constant"), ("pgd", "steps", "7"),
                                        ("pgd", "random_start", "false"), ("pgd", "step_size", "0.5")))
    pgd = config.build_attacks()["pgd"]
    assert (pgd.schedule, pgd.steps, pgd.random_start, pgd.step_size) == ("constant", 7, False, 0.5)
    for bad, message in [(("pgd", "steps", "1.5"), "steps"), (("pgd", "random_start", "maybe"), "true or false"),
                         (("pgd", "schedule", "fastest"), "schedule"), (("pgd", "nope", "1"), "no parameter 'nope'")]:
        with pytest.raises(BadInputError, match=message):
            AuditConfig(attack_params=(bad,))
    result = CliRunner().invoke(cli, ["run", "--model", "absent.safetensors", "--out", "o",
                                      "--attack-param", "pgd.steps=many"])
    assert result.exit_code == 2 and "pgd.steps=many: expected a whole number" in result.output, result.output


def test_default_l2_grid_scales_with_the_mutable_inputs():
    assert default_l2_grid((0.01, 0.03, 0.1), 30) == (0.055, 0.16, 0.55)
    assert default_l2_grid((0.1,), 4) == (0.2,)


def test_summary_shows_the_worst_case_first():
    document = {"passed": False, "model": {"path": "m", "detector": "tabular", "defense": "none"},
                "data": {"n_samples": 10, "name": "d"}, "policy": {"source": "default"}, "gates": [],
                "metrics": {"robust.accuracy.pgd@0.1": {"value": 0.6, "ci95": [0.5, 0.7]},
                            "robust.accuracy.worst@0.1": {"value": 0.4, "ci95": [0.3, 0.5]},
                            "robust.accuracy.worst-l2@0.5": {"value": 0.2, "ci95": None}}}
    text = render_summary(document).decode()
    first = text.index("worst case over every L-inf evasion attack: eps 0.1: **0.4** [0.3, 0.5]")
    assert first < text.index("| Gate |") and "worst case over every L2 evasion attack: eps 0.5: **0.2**" in text


def test_method_section_names_autoattack_fast_apart_from_the_protocol():
    from auditor.report.html import attack_rows
    from auditor.run.config import PROFILES

    assert "autoattack-fast" in PROFILES["standard"][0] and "autoattack" not in PROFILES["standard"][0]
    assert "autoattack" in PROFILES["full"][0]
    rows = {row.name: row for row in attack_rows({"attack_params": {"autoattack-fast": {}, "autoattack": {},
                                                                    "pgd-targeted": {}}})}
    assert "not the standard protocol" in rows["autoattack-fast"].definition
    assert "the standard protocol" in rows["autoattack"].definition
    assert rows["pgd-targeted"].definition.startswith("aimed at the --target-class")


class CornerBasin(Linear):
    """Class 1's score minus class 0's is s = 5|x0 - 0.5| - 1 (class 0 inside the band 0.3 < x0 < 0.7, the
    gradient pointing out of it), except beyond x1 = 0.85, where s = -0.5 + 0.2 (x1 - 0.85): a class-0 basin
    at the box's corner whose gradient climbs to x1 = 1 without leaving it. Not masked: from every clean sample
    (x1 < 0.6) signed steps along x0 cross the band's edge and stay across."""

    def forward_with_attention(self, x):
        band = 5 * (x[:, 0] - 0.5).abs() - 1
        s = torch.where(x[:, 1] > 0.85, -0.5 + 0.2 * (x[:, 1] - 0.85), band)
        return torch.stack([torch.zeros_like(s), s], 1), [torch.full((len(x), 1, 5, 5), 0.2)]


def test_unbounded_check_starts_from_the_sample_not_from_a_random_corner():
    """At eps 1 a random start is a uniform guess of the box: about a third of the starts land beyond x1 = 0.85
    and climb into the corner basin, so the check failed a model whose gradient leads straight across the
    boundary (as the flows detector's did: 0.070 left from random starts, 0.010 from the samples)."""
    model = CornerBasin([0.0] * 4).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g)
    x[:, 0] = 0.4 + 0.2 * torch.rand(64, generator=g)
    x[:, 0] = torch.where((x[:, 0] - 0.5).abs() < 0.01, x[:, 0] + 0.02, x[:, 0])  # |x0 - 0.5| > 0: a gradient
    x[:, 1] = 0.6 * x[:, 1]
    y = torch.zeros(64, dtype=torch.long)
    assert (model(x).argmax(1) == y).all()
    rows = masking_attack_rows(model, x, y, {}, [0.1], domain=Domain.unit((4,)), seed=0, batch_size=64)
    assert rows["unbounded"].mean() == 0.0
    checks = evaluate_checks({}, rows, {}, {"linf": [0.1], "l2": []}, n=64)
    assert next(c for c in checks if c.name == "unbounded-succeeds").status == "passed"
