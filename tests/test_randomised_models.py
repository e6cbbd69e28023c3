"""Models that are not the same function from call to call (issue 13 section 6), and which attention modules
of a python: model count as its layers (section 4): a user's detector with dropout left on at inference and
an attention-pooling head, audited as a new user would."""

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attacks import Domain, make_attack
from auditor.cli import cli
from auditor.run.determinism import ExpectedDetector, check_determinism
from detectors.errors import BadInputError
from detectors.foreign import ForeignDetector
from detectors.foreign_loading import build_foreign_model
from exits import gate_exit_code

N_FEATURES = 6
RANDOM_MODEL = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.nn import functional as F


    class Noisy(nn.Module):
        """Input dropout left on at inference, one self-attention encoder layer over feature tokens, then
        attention pooling: a learned query attends over the tokens (not an encoder layer)."""

        def __init__(self, n_features=6, width=16, p=0.3):
            super().__init__()
            self.p = p
            self.value = nn.Parameter(torch.randn(n_features, width) * 0.5)
            self.bias = nn.Parameter(torch.zeros(n_features, width))
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True), 1)
            self.query = nn.Parameter(torch.randn(1, 1, width))
            self.pool = nn.MultiheadAttention(width, 2, batch_first=True)
            self.head = nn.Linear(width, 2)

        def forward(self, x):
            x = F.dropout(x, self.p, training=True)
            tokens = self.encoder(x.unsqueeze(-1) * self.value + self.bias)
            pooled, _ = self.pool(self.query.expand(len(x), -1, -1), tokens, tokens)
            return self.head(pooled[:, 0])


    class Exact(Noisy):
        def __init__(self):
            super().__init__(p=0.0)


    class TwoPaths(Exact):
        """Its logits depend on whether attention weights are asked for: the fused fast path is off then."""

        def forward(self, x):
            return super().forward(x) + 1e-3 * float(torch.backends.mha.get_fastpath_enabled())


    def make():
        return Noisy()


    def exact():
        return Exact()


    def two_paths():
        return TwoPaths()
''')


def _data(n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """The label is whether the first feature exceeds 0.5."""
    x = np.random.default_rng(0).random((n, N_FEATURES))
    return x, (x[:, 0] > 0.5).astype(np.int64)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noisy")
    (folder / "noisy.py").write_text(RANDOM_MODEL, encoding="utf-8")
    model = build_foreign_model(f"python:{folder / 'noisy.py'}:make")
    x, y = _data()
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-2)
    features, labels = torch.as_tensor(x[:120], dtype=torch.float32), torch.as_tensor(y[:120])
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimiser.step()
    torch.save(model.state_dict(), folder / "noisy.pt")
    rows = [",".join([f"f{i}" for i in range(N_FEATURES)] + ["label"])]
    rows += [",".join([repr(float(v)) for v in x[i]] + [str(int(y[i]))]) for i in range(len(y))]
    (folder / "rows.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _wrap(model, **overrides) -> ForeignDetector:
    settings = dict(input_shape=(N_FEATURES,), n_classes=2, input_kind="tabular", cls_token="none")
    settings.update(overrides)
    return ForeignDetector(model, **settings).eval()


def test_dropout_at_inference_is_detected_and_reported(noisy, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", "--model", f"python:{noisy / 'noisy.py'}:make", "--weights", str(noisy / "noisy.pt"),
        "--data", str(noisy / "rows.csv"), "--input-kind", "tabular", "--cls-token", "none",
        "--max-samples", "48", "--eps", "0.1", "--attacks", "pgd", "--explainers", "attention,random",
        "--faithfulness-metrics", "deletion", "--out", str(out), "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    assert document["model"]["deterministic"] is False
    assert document["model"]["determinism"]["draws"] == 8 and document["model"]["determinism"]["rows"] == 48
    assert document["model"]["determinism"]["max_abs_logit_diff"] > 1e-3
    assert document["config"]["randomised_model"] is True
    # clean accuracy is one call's (the mean over draws of each draw's correctness), the vote of 8 draws apart
    assert document["metrics"]["clean.accuracy"]["n"] == 48 and "clean.accuracy_ensemble" in document["metrics"]
    # only the encoder's self-attention is a layer; the pooling query over the tokens is listed as left out
    assert document["model"]["attention_modules"] == ["encoder.layers.0.self_attn"]
    assert document["model"]["ignored_attention_modules"] == ["pool"]
    # with the same random state both logit paths agree, dropout and all
    assert document["model"]["attention_path_max_abs_logit_diff"] <= 1e-4
    report = (out / "report.html").read_text()
    assert 'id="not-deterministic"' in report and "encoder.layers.0.self_attn" in report
    assert "not deterministic" in (out / "summary.md").read_text()


def test_determinism_check_tells_a_noisy_model_from_an_exact_one(noisy):
    x = torch.as_tensor(_data(64)[0], dtype=torch.float32)
    exact = _wrap(build_foreign_model(f"python:{noisy / 'noisy.py'}:exact"))
    found = check_determinism(exact, x)
    assert found.deterministic and found.max_abs_diff == 0.0 and found.rows == 64
    noisy_detector = _wrap(build_foreign_model(f"python:{noisy / 'noisy.py'}:make"))
    before = torch.random.get_rng_state()
    found = check_determinism(noisy_detector, x)
    assert not found.deterministic and found.max_abs_diff > 1e-3
    assert torch.equal(torch.random.get_rng_state(), before)  # the check draws nothing the audit would see


def test_eot_pgd_is_at_least_as_strong_as_plain_pgd_on_a_noisy_model(noisy):
    model = build_foreign_model(f"python:{noisy / 'noisy.py'}:make", weights=str(noisy / "noisy.pt"))
    detector = _wrap(model)
    x_np, y_np = _data()
    x, y = torch.as_tensor(x_np[:64], dtype=torch.float32), torch.as_tensor(y_np[:64])
    domain, index = Domain.unit((N_FEATURES,)), torch.arange(len(x))
    pgd = make_attack("pgd", steps=5)  # few steps: one draw's gradient is noisy, the expectation's is not
    torch.manual_seed(1)
    plain = pgd(detector, x, y, eps=0.1, domain=domain, seed=0, index=index)
    torch.manual_seed(1)
    expected = pgd(ExpectedDetector(detector), x, y, eps=0.1, domain=domain, seed=0, index=index)
    judge = ExpectedDetector(detector, draws=64)  # the same draws judge both (measured: 0.97 clean, 0.84, 0.80)

    def accuracy(rows: torch.Tensor) -> float:
        torch.manual_seed(2)
        with torch.no_grad():
            return float((judge(rows).argmax(1) == y).float().mean())

    clean, against_plain, against_eot = accuracy(x), accuracy(plain), accuracy(expected)
    assert clean > 0.8
    assert against_eot <= against_plain < clean


def test_expected_detector_averages_probabilities_and_attention(noisy):
    detector = _wrap(build_foreign_model(f"python:{noisy / 'noisy.py'}:make", weights=str(noisy / "noisy.pt")))
    x = torch.as_tensor(_data(5)[0], dtype=torch.float32)
    torch.manual_seed(3)
    logits, attentions = ExpectedDetector(detector, draws=4).forward_with_attention(x)
    torch.manual_seed(3)
    repeated_logits, repeated_attention = detector.forward_with_attention(x.repeat(4, 1))
    expected = torch.softmax(repeated_logits.view(4, 5, 2), -1).mean(0)
    torch.testing.assert_close(logits.exp(), expected)
    torch.testing.assert_close(attentions[0], repeated_attention[0].view(4, 5, *repeated_attention[0].shape[1:]).mean(0))
    assert attentions[0].shape == (5, 2, N_FEATURES, N_FEATURES)


def test_attention_module_names_a_pooling_module_as_a_layer(noisy):
    x = torch.as_tensor(_data(3)[0], dtype=torch.float32)
    default = _wrap(build_foreign_model(f"python:{noisy / 'noisy.py'}:exact"))
    assert default.attention_layers(x) == (["encoder.layers.0.self_attn"], ["pool"])
    with torch.no_grad():
        assert len(default.forward_with_attention(x)[1]) == 1
    named = _wrap(build_foreign_model(f"python:{noisy / 'noisy.py'}:exact"), attention_modules=["pool"])
    assert named.attention_layers(x) == (["encoder.layers.0.self_attn", "pool"], [])


def test_logits_that_differ_between_the_two_paths_are_exit_2(noisy, tmp_path):
    result = CliRunner().invoke(cli, [
        "run", "--model", f"python:{noisy / 'noisy.py'}:two_paths", "--data", str(noisy / "rows.csv"),
        "--input-kind", "tabular", "--cls-token", "none", "--max-samples", "16", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "differ from its plain logits by up to 0.001" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_deterministic_models_numbers_do_not_change_with_the_check(tiny_detector):
    from auditor.run.subject import settle
    from auditor.run.pipeline import run_audit
    from auditor.run.config import AuditConfig
    from auditor.run.subject import Subject
    from detectors.table import Dataset

    x = np.random.default_rng(1).random((40, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    data = Dataset(name="rows", split="all", x=x, y=y, feature_names=[f"f{i}" for i in range(N_FEATURES)],
                   class_names=["0", "1"], positive_class=1)
    subject = Subject(detector=tiny_detector, data=data, baseline=torch.full((N_FEATURES,), 0.5), model_info={},
                      device=torch.device("cpu"), domain=Domain.unit((N_FEATURES,)))
    config = AuditConfig(eps=(0.1,), attacks=("fgsm", "pgd"), explainers=("attention", "random"),
                         faithfulness_metrics=("deletion",))
    checked, checked_config = settle(subject, config)
    assert checked.deterministic is True and checked.detector is tiny_detector and checked_config == config
    without = run_audit(subject, config, progress=False).metrics
    with_check = run_audit(checked, checked_config, progress=False).metrics
    assert without.keys() == with_check.keys()
    for name, value in without.items():
        assert (value.value, value.ci95) == (with_check[name].value, with_check[name].ci95), name


def test_autoattack_runs_its_rand_version_on_a_randomised_model_when_it_has_one(monkeypatch):
    from attacks import ATTACKS
    from auditor.run.config import AuditConfig

    config = AuditConfig(eps=(0.1,), attacks=("autoattack",), randomised_model=True)
    assert "version" not in AuditConfig(eps=(0.1,), attacks=("autoattack",)).attack_settings("autoattack")

    class WithVersions(ATTACKS["autoattack"]):
        def __init__(self, *, version: str = "standard", **settings):
            super().__init__(**settings)
            self.version = version

    monkeypatch.setitem(ATTACKS, "autoattack", WithVersions)
    assert config.attack_settings("autoattack")["version"] == "rand"
    assert config.build_attacks()["autoattack"].version == "rand"


class RightSevenTimesInTen(torch.nn.Module):
    """Each call answers the true class (``x[0] > 0.5``) with probability 0.7, the other class otherwise: one
    call is right 70% of the time, while the majority of 8 draws is right about 87% of the time."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.kind, self.input_shape, self.n_classes, self.token_map = \
            inner.kind, inner.input_shape, inner.n_classes, inner.token_map

    def forward(self, x):
        return self.forward_with_attention(x)[0]

    def forward_with_attention(self, x):
        logits, attentions = self.inner.forward_with_attention(x)
        answer = (x[:, 0] > 0.5) ^ (torch.rand(len(x), device=x.device) < 0.3)
        return 0 * logits + 10 * torch.nn.functional.one_hot(answer.long(), 2), attentions

    def hparams(self):
        return {}


def test_clean_accuracy_of_a_randomised_model_is_one_call_s_not_the_ensemble_s(tiny_detector):
    from auditor.stages.clean import ENSEMBLE_ACCURACY, CleanStage, per_draw_correctness, predict_proba
    from auditor.run.config import AuditConfig

    x = torch.as_tensor(np.random.default_rng(1).random((400, N_FEATURES)), dtype=torch.float32)
    y = (x[:, 0] > 0.5).long()
    detector = ExpectedDetector(RightSevenTimesInTen(tiny_detector))
    torch.manual_seed(0)
    correct = per_draw_correctness(detector, x, y, batch_size=64)
    # 400 rows x 8 draws of a coin right with probability 0.7: one call's accuracy within 4 sd of 0.7
    assert correct.shape == (400,) and abs(correct.mean() - 0.7) < 4 * (0.7 * 0.3 / 3200) ** 0.5
    ensemble = float((predict_proba(detector, x, batch_size=64).argmax(1) == y).double().mean())
    assert ensemble > 0.8  # the soft vote of 8 draws: about 0.87
    planned = CleanStage().planned
    assert ENSEMBLE_ACCURACY in planned(AuditConfig(randomised_model=True), binary=True)
    assert ENSEMBLE_ACCURACY not in planned(AuditConfig(), binary=True)
