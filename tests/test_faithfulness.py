import numpy as np
import torch
from torch import nn

from auditor.faithfulness import feature_ranks, removal_counts, removal_curves


class WeightedShare(nn.Module):
    """p(class 1) = w . x with w >= 0 summing to 1, so for x = 1 and baseline 0 the deletion curve
    after removing a set S of features is 1 - sum(w[S]): the answer is known on paper."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        p = (x * self.w).sum(1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)


W = torch.tensor([0.4, 0.3, 0.2, 0.1])


def test_deletion_and_insertion_match_the_hand_computed_areas():
    model = WeightedShare(W)
    x = torch.ones(1, 4)
    curves = removal_curves(model, x, W[None].clone(), torch.tensor([1]), torch.zeros(4))
    assert np.allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(curves.deletion[0], [1.0, 0.6, 0.3, 0.1, 0.0], atol=1e-5)
    assert np.allclose(curves.insertion[0], [0.0, 0.4, 0.7, 0.9, 1.0], atol=1e-5)
    # trapezoid: 0.25 * (1/2 + 0.6 + 0.3 + 0.1 + 0/2) = 0.375
    assert np.isclose(curves.deletion_auc[0], 0.375, atol=1e-5)
    assert np.isclose(curves.insertion_auc[0], 0.625, atol=1e-5)


def test_the_true_ranking_beats_every_other_ranking():
    model = WeightedShare(W)
    x = torch.ones(1, 4)
    best = removal_curves(model, x, W[None].clone(), torch.tensor([1]), torch.zeros(4))
    import itertools
    for perm in itertools.permutations(range(4)):
        attr = torch.tensor(perm, dtype=torch.float32)[None]
        other = removal_curves(model, x, attr, torch.tensor([1]), torch.zeros(4))
        assert other.deletion_auc[0] >= best.deletion_auc[0] - 1e-6
        assert other.insertion_auc[0] <= best.insertion_auc[0] + 1e-6


def test_ties_are_broken_by_feature_index():
    ranks = feature_ranks(torch.tensor([[0.5, 0.5, 0.9, 0.5]]))
    assert ranks.tolist() == [[1, 2, 0, 3]]


def test_wide_inputs_use_32_equal_steps():
    counts = removal_counts(100)
    assert len(counts) == 33 and counts[0] == 0 and counts[-1] == 100
    assert list(removal_counts(64)) == list(range(65))


def test_batching_does_not_change_curves(tiny_detector):
    x = torch.rand(40, 6)
    attr = torch.rand(40, 6)
    target = tiny_detector(x).argmax(1)
    baseline = torch.full((6,), 0.5)
    whole = removal_curves(tiny_detector, x, attr, target, baseline, max_batch=100000)
    small = removal_curves(tiny_detector, x, attr, target, baseline, max_batch=30)
    assert np.allclose(whole.deletion, small.deletion, atol=1e-6)
    assert np.allclose(whole.insertion, small.insertion, atol=1e-6)
    assert np.allclose(whole.deletion[:, 0], torch.softmax(tiny_detector(x), 1).max(1).values.detach().numpy(),
                       atol=1e-6)
