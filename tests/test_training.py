"""Detector families, defenses, resume and data-parallel training on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from detectors.checkpoint import load_checkpoint, read_metadata
from auditor.training.config import DefenseConfig
from detectors.maths import jensen_shannon
from detectors.errors import BadInputError
from exits import gate_exit_code

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = [("tabular", "flows:400"), ("vit", "digits"), ("sequence", "sequences:400")]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("detector,data", FAMILIES)
@pytest.mark.parametrize("defense", ["none", "pgd-at", "trades", "attention-consistency"])
def test_every_family_trains_with_every_defense_and_audits(detector, data, defense, tmp_path):
    out = tmp_path / "m.safetensors"
    extra = ["--steps", "1"] if defense != "none" else []
    result = invoke("train", "--detector", detector, "--data", data, "--defense", defense, *extra,
                    "--epochs", "1", "--batch-size", "128", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["detector"]["kind"] == detector and meta["defense"]["name"] == defense
    if defense != "none":
        assert meta["defense"]["eps"] == 0.05 and meta["defense"]["steps"] == 1
    audit = invoke("run", "--model", out, "--out", tmp_path / "audit", "--max-samples", "24", "--eps", "0.1",
                   "--quiet")
    assert audit.exit_code == gate_exit_code(tmp_path / "audit"), audit.output
    metrics = json.loads((tmp_path / "audit" / "results.json").read_text())["metrics"]
    assert "robust.accuracy.pgd@0.1" in metrics and "faithfulness.deletion_auc.rollout" in metrics


@pytest.mark.parametrize("option,value,defense,users", [
    ("--eps", "0.1", "none", "pgd-at, trades, attention-consistency"),
    ("--beta", "3", "pgd-at", "trades"),
    ("--lambda-attention", "2", "trades", "attention-consistency"),
])
def test_an_option_the_defense_does_not_use_is_exit_2(option, value, defense, users, tmp_path):
    result = invoke("train", "--data", "flows:200", "--defense", defense, option, value, "--out",
                    tmp_path / "m.safetensors", "--quiet")
    assert result.exit_code == 2
    assert f"is not used by --defense {defense}; it applies to {users}" in result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_defense_settings_are_recorded():
    config = DefenseConfig.from_options("trades", eps=0.1, beta=3.0, steps=None, step_size=None,
                                        lambda_attention=None)
    assert config.to_dict() == {"name": "trades", "eps": 0.1, "steps": 5, "step_size": 0.5, "beta": 3.0}
    with pytest.raises(BadInputError):
        DefenseConfig(name="magic")


def test_jensen_shannon_is_bounded_by_ln2():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    jsd = jensen_shannon(p, q)
    assert torch.isclose(jsd[0], torch.log(torch.tensor(2.0)), atol=1e-6) and jsd[1].abs() < 1e-7


def test_resume_continues_from_the_epoch_checkpoint(tmp_path):
    out = tmp_path / "m.safetensors"
    resume_file = tmp_path / "m.safetensors.resume.pt"
    first = invoke("train", "--data", "flows:300", "--epochs", "2", "--patience", "50", "--out", out, "--quiet")
    assert first.exit_code == 0 and not resume_file.exists()  # removed once the checkpoint is written
    # simulate an interrupted 4-epoch run: leave the state after epoch 2 behind
    from auditor.training.job import train_and_save
    import auditor.training.loop as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    saved = {}
    original = training._save_resume

    def keep(path, model, optimiser, state, config):
        original(path, model, optimiser, state, config)
        saved["epoch"] = state["epoch"]
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    training._save_resume = keep
    try:
        with pytest.raises(KeyboardInterrupt):
            train_and_save(detector="tabular", data_spec="flows:300", epochs=4, patience=50, out_path=out,
                           progress=False)
    finally:
        training._save_resume = original
    assert resume_file.exists() and saved["epoch"] == 2
    state = torch.load(resume_file, weights_only=True)
    assert state["epoch"] == 2
    summary = train_and_save(detector="tabular", data_spec="flows:300", epochs=4, patience=50, out_path=out,
                             resume=True, progress=False)
    assert summary["epochs_run"] == 4 and not resume_file.exists()
    straight = train_and_save(detector="tabular", data_spec="flows:300", epochs=4, patience=50,
                              out_path=tmp_path / "straight.safetensors", progress=False)
    resumed = load_checkpoint(out).detector
    direct = load_checkpoint(tmp_path / "straight.safetensors").detector
    x = torch.rand(8, 23)
    assert torch.allclose(resumed(x), direct(x), atol=1e-5), "a resumed run must equal an uninterrupted one"
    assert straight["epochs_run"] == 4


def test_two_gloo_processes_train_like_one(tmp_path):
    """torchrun with 2 CPU processes (gloo on loopback) reaches the accuracy of a 1-process run."""
    single = tmp_path / "one.safetensors"
    double = tmp_path / "two.safetensors"
    common = ["--data", "flows:1500", "--epochs", "4", "--batch-size", "64", "--quiet"]
    assert invoke("train", *common, "--out", single).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
         "auditor", "train", *common, "--out", str(double)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    one, two = read_metadata(single)["training"], read_metadata(double)["training"]
    assert two["processes"] == 2 and one["processes"] == 1
    assert abs(one["test_accuracy"] - two["test_accuracy"]) < 0.05
    assert two["test_accuracy"] > 0.8


def test_adversarial_training_beats_no_defense_under_pgd_on_flows(tmp_path):
    """The ordering the full-size run shows (docs/detectors.md, "Defenses"), on a small run: pgd-at is more
    robust at eps 0.05."""
    robust = {}
    for defense in ("none", "pgd-at"):
        model = tmp_path / f"{defense}.safetensors"
        trained = invoke("train", "--data", "flows:2000", "--defense", defense, "--epochs", "8", "--out", model,
                         "--quiet")
        assert trained.exit_code == 0, trained.output
        out = tmp_path / f"audit-{defense}"
        # robustness is what is compared: one explainer and one removal curve keep the rest of the audit short
        audited = invoke("run", "--model", model, "--out", out, "--attacks", "pgd", "--eps", "0.05",
                         "--max-samples", "400", "--explainers", "attention", "--faithfulness-metrics", "deletion",
                         "--quiet")
        assert audited.exit_code == gate_exit_code(out), audited.output
        document = json.loads((out / "results.json").read_text())
        robust[defense] = document["metrics"]["robust.accuracy.pgd@0.05"]["value"]
        assert document["metrics"]["clean.accuracy"]["value"] > 0.9
    assert robust["pgd-at"] > robust["none"], robust


def test_the_reported_validation_figures_are_the_kept_weights_measured_again(tmp_path):
    """The summary reuses the kept epoch's validation loss and accuracy (measured on those very weights during
    training): a fresh measurement of the written checkpoint on the same validation split gives them back."""
    from auditor.training.loop import VALIDATION_BATCH, evaluate
    from detectors.data import load_table, split_table

    out = tmp_path / "m.safetensors"
    assert invoke("train", "--data", "flows:300", "--epochs", "6", "--patience", "2", "--out", out,
                  "--quiet").exit_code == 0
    loaded = load_checkpoint(out)
    summary = read_metadata(out)["training"]
    splits = split_table(load_table("flows:300", seed=0), seed=0)
    loss, accuracy = evaluate(loaded.detector, torch.as_tensor(splits.val.x), torch.as_tensor(splits.val.y),
                              VALIDATION_BATCH)
    assert summary["best_val_loss"] == pytest.approx(loss, abs=1e-5)
    assert summary["val_accuracy"] == pytest.approx(accuracy, abs=1e-6)  # both rounded to 6 decimals
