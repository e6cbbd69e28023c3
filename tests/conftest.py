"""Shared fixtures: tiny detectors trained in seconds, fixed seeds."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from workers import built_once

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A small tabular detector trained on breast-cancer (a few seconds), written as a checkpoint; trained
    once per run and read by every xdist worker."""
    from auditor.training.job import train_and_save
    from detectors.checkpoint import read_metadata

    with built_once(tmp_path_factory, "model") as folder:
        path = folder / "bc.safetensors"
        if not path.is_file():
            train_and_save(detector="tabular", data_spec="breast-cancer", label_column="label", positive_class=None,
                           defense="none", epochs=60, batch_size=64, lr=2e-3, patience=15, seed=0, device="cpu",
                           out_path=path, progress=False)
    return path, read_metadata(path)["training"]  # the summary train_and_save returned, kept in the checkpoint


@pytest.fixture()
def tiny_detector():
    from detectors.tabular import FeatureTokenTransformer

    torch.manual_seed(0)
    return FeatureTokenTransformer(6, 2, dim=8, depth=2, heads=2, mlp_dim=16, dropout=0.0).eval()


@pytest.fixture()
def pass_sizes():
    """``with pass_sizes(module) as sizes:`` records the batch size of every forward pass of ``module``."""

    @contextlib.contextmanager
    def record(module):
        sizes: list[int] = []
        hook = module.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
        try:
            yield sizes
        finally:
            hook.remove()

    return record


@pytest.fixture(scope="session")
def deceptive_twins():
    """Two one-block tabular detectors on data whose label is ``x[2] > 0.5``, trained alike except that the
    deceptive twin is penalised for last-layer CLS attention on feature 2 (Pruthi et al. 2020); see
    tests/twins.py. A ``twins.Twins`` with ``honest``, ``deceptive``, held-out ``x``/``y`` and ``key``."""
    from twins import make_twins

    return make_twins()


@pytest.fixture(scope="session")
def multihead_twins():
    """A user's CLS transformer over feature tokens (one nn.MultiheadAttention, audited as a ``python:`` model)
    whose attention points at the key feature of the twins' data: ``unused`` reads its prediction past the
    attention (output projection zero and frozen), ``used`` through it; see tests/twins.py."""
    from twins import train_multihead_twin

    return {"unused": train_multihead_twin(used=False), "used": train_multihead_twin(used=True)}


# Under xdist the slowest modules are collected first. The load scheduler hands each worker a block of
# consecutive tests and then keeps two queued per worker, so a minutes-long test collected near the end runs
# on one worker while the other has nothing left to take; run first, the other worker takes the rest meanwhile.
SLOWEST_FIRST = ("test_sharding.py", "test_training.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.path.name not in SLOWEST_FIRST)  # stable: the order within is kept
