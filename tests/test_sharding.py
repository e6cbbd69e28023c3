"""A sharded audit equals the single-process one: 2 torchrun processes (gloo) vs 1, every metric."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from auditor.cli import cli
from auditor.metrics import Bootstrap
from auditor.run.shard import Shard, concatenate
from exits import gate_exit_code

ROOT = Path(__file__).resolve().parents[1]
# every kind of attack the sharding must keep aligned: single step, iterative with per-sample random starts,
# torchattacks' stochastic Square (chunk-seeded), an attention attack; masking checks run their own attacks
LIGHT = ["--max-samples", "100", "--attacks", "fgsm,pgd,square,attention-shift", "--eps", "0.05,0.1",
         "--attack-param", "pgd.steps=3", "--attack-param", "pgd.restarts=2", "--attack-param", "square.n_queries=10",
         "--attack-param", "attention-shift.steps=3", "--attack-param", "attention-shift.restarts=1",
         "--masking-checks", "--seed", "3", "--quiet"]


def test_shards_are_whole_chunks_covering_every_row_once():
    for n in (1, 63, 64, 100, 1000):
        for world in (1, 2, 3, 5):
            parts = [Shard(rank=r, world=world).rows(n) for r in range(world)]
            assert np.array_equal(np.concatenate(parts), np.arange(n))
            assert all(len(p) == 0 or p[0] % 64 == 0 for p in parts)


def test_row_tables_concatenate_group_by_group():
    a = {"per_sample": {"m": np.array([1.0, 2.0])}, "gallery": {"index": np.array([0])}}
    b = {"per_sample": {"m": np.array([3.0])}}
    merged = concatenate([a, {}, b])
    assert merged["per_sample"]["m"].tolist() == [1.0, 2.0, 3.0] and merged["gallery"]["index"].tolist() == [0]


def test_bootstrap_in_blocks_equals_bootstrap_at_once(monkeypatch):
    values = np.random.default_rng(0).random(300)
    mask = values > 0.2
    whole = Bootstrap(300, seed=4).mean(values, mask=mask)
    monkeypatch.setattr(Bootstrap, "KEEP_ENTRIES", 0)
    monkeypatch.setattr(Bootstrap, "BLOCK_ENTRIES", 300 * 7)  # 7 resamples per block, redrawn in turn
    assert Bootstrap(300, seed=4).mean(values, mask=mask) == whole


def test_two_processes_give_the_metrics_of_one(trained_checkpoint, tmp_path):
    model = trained_checkpoint[0]
    one = tmp_path / "one"
    saving = ["--save-adversarial", "--save-explanations"]
    # one process, streamed in blocks of 64 rows with batches of 64 (a tiny memory budget)
    result = CliRunner().invoke(cli, ["run", "--model", str(model), "--out", str(one), "--max-memory-gb", "0.0005",
                                      *LIGHT, *saving], catch_exceptions=False)
    assert result.exit_code == gate_exit_code(one), result.output
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "auditor", "run", "--nproc", "2", "--model", str(model),
                          "--out", str(two), *LIGHT, *saving], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == result.exit_code, run.stderr[-2000:]  # rank 0's code, passed back by --nproc
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert a["config"]["memory"]["stream_rows"] == 64 and b["config"]["memory"]["stream_rows"] > 100
    assert set(a["metrics"]) == set(b["metrics"]) and len(a["metrics"]) > 30
    for name, value in a["metrics"].items():
        other = b["metrics"][name]
        # Metrics read from feature-ablation, whose attributions are differences of float32 probabilities: the
        # two runs' passes differ in batch shape and thread count, so those attributions differ by float
        # rounding (measured: up to 1.4e-6) and two features tied within it can swap ranks, moving a rank
        # statistic of one sample (Kendall's tau, MPRT's Spearman, the deletion order) by about one over its pairs
        # (measured on the mean: 8e-5 and 4e-6). Every other metric agrees to 1e-6.
        reads_ablation = "feature-ablation" in name or "kendall_tau_vs_floor" in name  # the floor reads it too
        tolerance = 1e-3 if reads_ablation else 1e-6
        assert other["value"] == pytest.approx(value["value"], abs=tolerance), name
        if value["ci95"] is None:
            assert other["ci95"] is None, name
        else:
            assert other["ci95"] == pytest.approx(value["ci95"], abs=tolerance), name
    assert a["masking_checks"] == b["masking_checks"] and a["skipped"] == b["skipped"]
    assert a["check_metrics"] == b["check_metrics"] and "robust.accuracy.worst@0.1" in a["metrics"]
    # the quick profile's explainers and the per-sample stages after faithfulness ran and agree too
    for prefix in ("faithfulness.deletion_auc.integrated-gradients", "agreement.", "sanity.mprt.rollout"):
        assert any(name.startswith(prefix) for name in a["metrics"]), prefix
    for name, curve in a["curves"]["removal"].items():
        for key in ("deletion", "insertion"):
            assert b["curves"]["removal"][name][key] == pytest.approx(curve[key], abs=1e-9), name
    assert sorted(p.name for p in two.iterdir()) == ["adversarial.safetensors", "explanations.safetensors",
                                                      "junit.xml", "report.html", "results.json", "summary.md"]
    # the saved tensors: written by each rank into the one file (two blocks of 64 and 36 rows in the single
    # process), they hold every row in the same order
    for name in ("adversarial.safetensors", "explanations.safetensors"):
        alone, sharded = load_file(one / name), load_file(two / name)
        assert set(alone) == set(sharded) and len(alone["x"]) == 100, name
        for key, values in alone.items():
            assert sharded[key].dtype == values.dtype, key
            # feature-ablation's attributions are differences of float32 probabilities computed in passes of
            # other shapes and thread counts: measured up to 1.4e-6 apart (about 12 ulps of 1.0)
            atol = 5e-6 if key == "attr/feature-ablation" else 1e-6
            assert torch.allclose(sharded[key], values, rtol=0, atol=atol), key


def test_bad_input_under_torchrun_ends_every_rank_with_exit_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "auditor", "run", "--model", str(tmp_path / "missing.safetensors"),
                          "--out", str(tmp_path / "out"), "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    # every rank ends (none is left waiting: the timeout would fire): a rank exits 2 on its own, or is
    # stopped by torchrun (SIGTERM, -15) once the first one has exited 2 — which of the two is a race
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", run.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, run.stderr[-2000:]
    assert "error: checkpoint" in run.stderr
    assert not (tmp_path / "out").exists()
    launched = subprocess.run([sys.executable, "-m", "auditor", "run", "--nproc", "2", "--model",
                               str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "out"), "--quiet"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 2, launched.stderr[-2000:]  # audit run --nproc passes rank 0's code back
    # one clear line from rank 0; no torchrun failure report or traceback over it
    assert "error: checkpoint" in launched.stderr and "Traceback" not in launched.stderr, launched.stderr[-2000:]
    assert not (tmp_path / "out").exists()
