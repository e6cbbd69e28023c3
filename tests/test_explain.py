import pytest
import torch
from torch import nn

from auditor.explain import EXPLAINERS, make_explainer, rollout
from detectors.base import Detector, TokenMap


class HardWiredAttention(Detector):
    """One layer whose CLS row is a fixed distribution; logits read the attended feature."""

    kind = "test"

    def __init__(self, cls_row: torch.Tensor) -> None:
        super().__init__()
        n = len(cls_row) - 1
        self.input_shape, self.n_classes = (n,), 2
        self.token_map = TokenMap(torch.arange(1, n + 1), n + 1, 0)
        self.register_buffer("cls_row", cls_row)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward_with_attention(self, x):
        n = x.shape[0]
        attention = torch.eye(len(self.cls_row)).repeat(n, 2, 1, 1)
        attention[:, :, 0, :] = self.cls_row
        score = (x * self.cls_row[1:]).sum(1) * self.scale
        return torch.stack([-score, score], 1), [attention]


def test_rollout_of_one_layer_is_row_normalised_attention_plus_identity():
    a = torch.softmax(torch.randn(3, 2, 5, 5), dim=-1)
    expected = (a.mean(1) + torch.eye(5)) / 2  # each row of mean_h A sums to 1, plus 1 on the diagonal
    assert torch.allclose(rollout([a]), expected, atol=1e-6)


def test_rollout_normalises_rows_not_columns():
    a = torch.softmax(torch.randn(2, 1, 4, 4) * 3, dim=-1)
    r = rollout([a, a])
    assert torch.allclose(r.sum(-1), torch.ones(2, 4), atol=1e-6)


def test_rollout_multiplies_later_layers_on_the_left():
    a1 = torch.softmax(torch.randn(1, 1, 3, 3), -1)
    a2 = torch.softmax(torch.randn(1, 1, 3, 3), -1)
    n1 = (a1[:, 0] + torch.eye(3)) / 2
    n2 = (a2[:, 0] + torch.eye(3)) / 2
    assert torch.allclose(rollout([a1, a2]), n2 @ n1, atol=1e-6)


def test_attention_explainer_reads_the_cls_row_through_the_token_map():
    row = torch.tensor([0.1, 0.6, 0.1, 0.2])
    model = HardWiredAttention(row)
    x = torch.rand(4, 3)
    attr = make_explainer("attention").explain(model, x, torch.ones(4, dtype=torch.long), baseline=torch.zeros(3),
                                               seed=0, index=torch.arange(4))
    assert torch.allclose(attr, row[1:].expand(4, 3))


def test_integrated_gradients_is_exact_on_a_linear_model():
    """For f(x) = w.x the attribution is w * (x - baseline), exactly."""
    row = torch.tensor([0.0, 0.5, 0.3, 0.2])
    model = HardWiredAttention(row)
    x, baseline = torch.rand(5, 3), torch.full((3,), 0.25)
    target = torch.ones(5, dtype=torch.long)
    attr = make_explainer("integrated-gradients").explain(model, x, target, baseline=baseline, seed=0,
                                                          index=torch.arange(5))
    assert torch.allclose(attr, row[1:] * (x - baseline), atol=1e-5)


def test_random_explainer_is_per_sample_and_batch_independent(tiny_detector):
    explainer = make_explainer("random")
    x = torch.rand(10, 6)
    target = torch.zeros(10, dtype=torch.long)
    whole = explainer.explain(tiny_detector, x, target, baseline=torch.zeros(6), seed=1, index=torch.arange(10))
    part = explainer.explain(tiny_detector, x[4:], target[4:], baseline=torch.zeros(6), seed=1,
                             index=torch.arange(4, 10))
    assert torch.equal(whole[4:], part)
    other = explainer.explain(tiny_detector, x, target, baseline=torch.zeros(6), seed=2, index=torch.arange(10))
    assert not torch.equal(whole, other)


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_every_explainer_returns_the_input_shape(name, tiny_detector):
    x = torch.rand(7, 6)
    target = tiny_detector(x).argmax(1)
    attr = make_explainer(name).explain(tiny_detector, x, target, baseline=torch.full((6,), 0.5), seed=0,
                                        index=torch.arange(7))
    assert attr.shape == x.shape and torch.isfinite(attr).all()
