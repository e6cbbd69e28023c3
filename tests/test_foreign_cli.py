"""A model written the ordinary way, audited through the command line with no change to its code."""

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from auditor.cli import cli
from detectors.data import load_table
from exits import gate_exit_code

USER_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class FlowClassifier(nn.Module):
        """Standardises its own inputs, one token per feature, a CLS token, nn.TransformerEncoder."""

        def __init__(self, n_features=30, width=16):
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("std", torch.ones(n_features))
            self.value = nn.Parameter(torch.randn(n_features, width) * 0.5)
            self.bias = nn.Parameter(torch.zeros(n_features, width))
            self.cls = nn.Parameter(torch.zeros(1, 1, width))
            layer = nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2)
            self.head = nn.Linear(width, 2)

        def forward(self, x):
            z = (x - self.mean) / self.std
            tokens = z.unsqueeze(-1) * self.value + self.bias
            tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
            return self.head(self.encoder(tokens)[:, 0])


    def make():
        return FlowClassifier()
''')


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_model.py").write_text(USER_MODEL, encoding="utf-8")
    table = load_table("breast-cancer")
    namespace = {}
    exec(compile(USER_MODEL, "user_model", "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["make"]()
    x = torch.as_tensor(table.x, dtype=torch.float32)
    y = torch.as_tensor(table.y)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    torch.save(model.state_dict(), folder / "weights.pt")
    rows = [",".join(table.feature_names + ["label"])]
    rows += [",".join([repr(float(v)) for v in table.x[i]] + [str(int(table.y[i]))]) for i in range(len(table.y))]
    (folder / "cancer.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_ordinary_transformer_encoder_is_audited_with_real_attention(user_model, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", "--model", f"python:{user_model / 'user_model.py'}:make", "--weights", str(user_model / "weights.pt"),
        "--data", str(user_model / "cancer.csv"), "--input-kind", "tabular", "--positive-class", "0",
        "--max-samples", "120", "--eps", "0.05", "--save-explanations", "--save-adversarial", "--out", str(out),
        "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    assert document["model"]["detector"] == "foreign"
    assert document["metrics"]["clean.accuracy"]["value"] > 0.9
    for explainer in ("attention", "rollout"):
        assert f"faithfulness.deletion_auc.{explainer}" in document["metrics"]
    explained = load_file(out / "explanations.safetensors")
    attention = explained["attr/attention"]
    # real attention: it varies across samples, sums over features to below 1 (CLS keeps some), never uniform
    assert attention.std(0).max() > 1e-3
    assert torch.all(attention.sum(1) <= 1 + 1e-5) and torch.all(attention >= 0)
    assert not torch.allclose(attention, explained["attr/random"])
    # the data reached the model as read: eps is a fraction of each feature's range in raw units
    adversarial = load_file(out / "adversarial.safetensors")
    assert (adversarial["adv/pgd@0.05"] - adversarial["x"]).abs().max() <= 0.05 + 1e-6


def test_foreign_model_without_data_or_kind_is_exit_2(user_model, tmp_path):
    spec = f"python:{user_model / 'user_model.py'}:make"
    result = CliRunner().invoke(cli, ["run", "--model", spec, "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2 and "pass --data" in result.output
    result = CliRunner().invoke(cli, ["run", "--model", spec, "--data", str(user_model / "cancer.csv"),
                                      "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2 and "--input-kind" in result.output


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_weights_that_would_run_code_are_refused(user_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"payload": _Payload()}, evil)
    result = CliRunner().invoke(cli, [
        "run", "--model", f"python:{user_model / 'user_model.py'}:make", "--weights", str(evil),
        "--data", str(user_model / "cancer.csv"), "--input-kind", "tabular", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()


def test_shape_that_does_not_fit_is_exit_2(user_model, tmp_path):
    csv = tmp_path / "narrow.csv"
    csv.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n", encoding="utf-8")
    result = CliRunner().invoke(cli, [
        "run", "--model", f"python:{user_model / 'user_model.py'}:make", "--data", str(csv),
        "--input-kind", "tabular", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "does not fit the model" in result.output


def test_foreign_options_on_a_checkpoint_are_exit_2(trained_checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--model", str(trained_checkpoint[0]), "--input-kind", "tabular",
                                      "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2 and "python: models only" in result.output
