"""Our batched metrics against Quantus 0.6 on identical inputs, attributions and baselines.

Optional (``pip install -e '.[bench]'``, or ``make install-bench``) and not part of the default run:
``pytest -m bench tests/test_quantus_agreement.py``. Quantus wants tabular input as (N, 1, F).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from auditor.stages.faithfulness_metrics import correlation_subsets, faithfulness_correlation, removal_curves

quantus = pytest.importorskip("quantus")

pytestmark = pytest.mark.bench

N, F = 24, 10


class ChannelView(nn.Module):
    """Quantus feeds (N, 1, F); the detector reads (N, F)."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, x):
        return self.detector(x.reshape(len(x), -1))


@pytest.fixture(scope="module")
def setting():
    from detectors.tabular import FeatureTokenTransformer

    torch.manual_seed(0)
    detector = FeatureTokenTransformer(F, 2, dim=8, depth=2, heads=2, mlp_dim=16, dropout=0.0).eval()
    x = torch.rand(N, F)
    target = detector(x).argmax(1)
    attribution = torch.randn(N, F)  # continuous: no ties, so every sort gives the same ranking
    return detector, x, target, attribution


def test_deletion_matches_quantus_pixel_flipping(setting):
    detector, x, target, attribution = setting
    ours = removal_curves(detector, x, attribution, target, torch.zeros(F))
    metric = quantus.PixelFlipping(features_in_step=1, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
    theirs = np.asarray(metric(model=ChannelView(detector).eval(), x_batch=x[:, None].numpy(), y_batch=target.numpy(),
                               a_batch=attribution[:, None].numpy(), softmax=True, device="cpu", batch_size=N))
    # Quantus's curve starts after the first removal; ours adds the unchanged input at step 0
    difference = np.abs(ours.deletion[:, 1:] - theirs).max()
    assert difference < 1e-5, difference
    # the areas differ only in the x-axis: Quantus integrates steps 1..F with dx = 1
    their_auc = np.trapezoid(theirs, dx=1.0, axis=1)
    ours_rescaled = ours.deletion_auc * F - (ours.deletion[:, 0] + ours.deletion[:, 1]) / 2
    assert np.abs(ours_rescaled - their_auc).max() < 1e-4


def test_faithfulness_correlation_matches_quantus_with_the_same_subsets(setting, monkeypatch):
    detector, x, target, attribution = setting
    index = torch.arange(N)
    subsets = correlation_subsets(F, index, seed=0)  # (N, 64, F)
    size, runs = int(subsets[0, 0].sum()), subsets.shape[1]
    ours = faithfulness_correlation(detector, x, attribution, target, torch.zeros(F), seed=0, index=index)
    # Quantus draws np.random.choice(F, size) once per run and sample, run-major: hand it our subsets in order
    draws = iter([np.flatnonzero(subsets[b, r].numpy()) for r in range(runs) for b in range(N)])
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(draws))
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.0, normalise=False,
                                             abs=False, return_aggregate=False, disable_warnings=True,
                                             display_progressbar=False)
    theirs = np.asarray(metric(model=ChannelView(detector).eval(), x_batch=x[:, None].numpy(), y_batch=target.numpy(),
                               a_batch=attribution[:, None].numpy(), softmax=True, device="cpu", batch_size=N))
    assert np.isfinite(ours).all()
    difference = np.abs(ours - theirs).max()
    assert difference < 1e-5, difference
