"""The gradient-masking checks flag a model masked on purpose and leave a plain one alone."""

import torch
from torch import nn

from attacks import Domain, make_attack
from auditor.stages.masking import masking_checks, verdict
from auditor.metrics import Bootstrap
from auditor.run.persample import aggregate
from auditor.stages.robustness import run_attacks
from detectors.base import Detector, TokenMap

EPS = [0.05, 0.1, 0.2]


class Quantised(Detector):
    """A smooth linear detector behind an input-quantising front end: its gradient is zero almost
    everywhere (shattered), so gradient attacks find nothing while the decision stays easy to flip."""

    kind = "test"

    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.masked = masked
        self.input_shape, self.n_classes = (4,), 2
        self.token_map = TokenMap(torch.arange(1, 5), 5, 0)
        self.w = nn.Parameter(torch.tensor([4.0, 4.0, -4.0, -4.0]))

    def forward_with_attention(self, x):
        if self.masked:
            x = torch.round(x * 4) / 4  # straight-through nothing: zero gradient
        score = x @ self.w
        attention = torch.full((len(x), 1, 5, 5), 0.2)
        return torch.stack([-score, score], 1), [attention]


def _audit(masked: bool):
    torch.manual_seed(0)
    model = Quantised(masked).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(192, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct when clean
    # pgd with one restart: its default 10 random restarts are a random search that beats this model's
    # quantisation now and then, which would hide what black-box-not-stronger is meant to see
    settings = {"square": {"n_queries": 300}, "pgd": {"restarts": 1}}
    attacks = {name: make_attack(name, **settings.get(name, {})) for name in ("fgsm", "pgd", "square")}
    domain = Domain.unit((4,))
    outcome = run_attacks(model, x, y, y, attacks, EPS, domain=domain, seed=0, batch_size=64,
                          keep_examples=False, progress=False, positive=1, n_classes=2)
    metrics, _ = aggregate(outcome.per_sample, Bootstrap(len(x), seed=0))
    checks = masking_checks(model, x, y, metrics, attacks, EPS, domain=domain, seed=0, batch_size=64)
    return {c.name: c for c in checks}, verdict(checks, "masking")


def test_deliberately_masked_model_is_flagged():
    checks, suspected = _audit(masked=True)
    assert suspected == 1.0
    assert checks["unbounded-succeeds"].status == "failed"
    assert checks["black-box-not-stronger"].status == "failed"


def test_plain_model_is_not_flagged():
    checks, suspected = _audit(masked=False)
    assert suspected == 0.0, {n: (c.status, c.detail) for n, c in checks.items()}
    assert all(c.status == "passed" for c in checks.values())


def test_checks_whose_attacks_did_not_run_are_not_run():
    model = Quantised(False).eval()
    x = torch.rand(64, 4)
    y = model(x).argmax(1)
    checks = masking_checks(model, x, y, {}, {}, [0.1], domain=Domain.unit((4,)), seed=0, batch_size=64)
    status = {c.name: c.status for c in checks}
    assert status["iterative-beats-single-step"] == "not run"
    assert status["black-box-not-stronger"] == "not run"
    assert status["more-effort-same-answer"] == "not run"
    assert status["monotone-in-eps"] == "not run"
    assert status["unbounded-succeeds"] == "passed"
