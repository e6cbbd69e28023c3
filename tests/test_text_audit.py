"""Text, the audit half (issue 16): every explainer over tokens ([CLS] and padding exactly 0), and a model
whose decision hinges on one token, which the explainers and the faithfulness metrics must find and random
must not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from auditor.stages.explainers import EXPLAINERS, make_explainer
from auditor.stages.faithfulness_metrics import aopc, removal_curves
from auditor.stages.localisation import plausibility, precision_at_k
from detectors.base import Detector, TokenMap
from detectors.inputs import removal_baseline
from detectors.inputs.text import TokenIds, explained_positions_of
from detectors.text import TextTransformer

PAD, UNK, CLS, MASK, KEY = 0, 1, 2, 3, 4  # KEY: the token the hand-set model's decision hinges on
VOCAB, LENGTH = 12, 8


class OneTokenModel(Detector):
    """Attention pooling over token embeddings, weights set by hand: the embedding of KEY is (4, 0), every other
    token's (0, 0.1 * id) and [MASK]'s 0, the CLS query scores a key by its first coordinate, and the logit of
    class 1 is the pooled first coordinate. So class 1 wins exactly when KEY is in the message, and KEY also
    takes the most attention: the one token every explainer must rank first."""

    kind = "one-token"

    def __init__(self) -> None:
        super().__init__()
        self.input_shape, self.n_classes, self.pad_id = (LENGTH,), 2, PAD
        self.embedding = nn.Embedding(VOCAB, 2)
        with torch.no_grad():
            self.embedding.weight.zero_()
            self.embedding.weight[4:, 1] = 0.1 * torch.arange(4, VOCAB)
            self.embedding.weight[KEY] = torch.tensor([4.0, 0.0])
        self.token_map = TokenMap(torch.arange(LENGTH), LENGTH, 0)

    def attention_mask(self, ids):
        return ids != PAD

    def embed(self, ids):
        return self.embedding(ids)

    def forward_embeddings(self, embeddings, attention_mask, *, with_attention=False):
        keys = attention_mask.clone()
        keys[:, 0] = False  # the CLS query pools the message's tokens
        scores = (2.0 * embeddings[..., 0]).masked_fill(~keys, -torch.inf)
        # one head, (n, 1, T, T), every query row the same; the logits read the CLS row of this very tensor
        attention = torch.softmax(scores, dim=1)[:, None, None, :].repeat(1, 1, embeddings.shape[1], 1)
        pooled = (attention[:, 0, 0].unsqueeze(-1) * embeddings).sum(1)
        logits = torch.stack([torch.full_like(pooled[:, 0], 1.0), pooled[:, 0]], dim=1)
        return (logits, [attention]) if with_attention else logits

    def forward_with_attention(self, ids, attention_mask=None):
        mask = self.attention_mask(ids) if attention_mask is None else attention_mask
        return self.forward_embeddings(self.embed(ids), mask, with_attention=True)

    def forward(self, ids, attention_mask=None):
        return self.forward_with_attention(ids, attention_mask)[0]

    def hparams(self):
        return {}


def _messages(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, position of KEY): messages of 3 to 7 tokens after [CLS], padded, KEY at a random place in each."""
    rng = np.random.default_rng(seed)
    ids = torch.full((n, LENGTH), PAD)
    where = torch.empty(n, dtype=torch.int64)
    for row in range(n):
        length = int(rng.integers(3, LENGTH))
        ids[row, 0] = CLS
        ids[row, 1:length + 1] = torch.as_tensor(rng.integers(5, VOCAB, size=length))
        where[row] = int(rng.integers(1, length + 1))
        ids[row, where[row]] = KEY
    return ids, where


def _baseline(ids: torch.Tensor) -> torch.Tensor:
    return removal_baseline("mask", ids, TokenIds(PAD, MASK, "[MASK]").as_baseline())


def _explain(model, name: str, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return make_explainer(name).explain(model, ids, target, baseline=_baseline(ids), seed=0,
                                        index=torch.arange(len(ids)))


@pytest.fixture(scope="module")
def tiny_text_model():
    torch.manual_seed(0)
    return TextTransformer(VOCAB, LENGTH, 2, pad_id=PAD, dim=8, depth=2, heads=2, mlp_dim=8, dropout=0.0).eval()


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_every_explainer_gives_cls_and_padding_exactly_zero(name, tiny_text_model):
    ids, _ = _messages(6)
    attribution = _explain(tiny_text_model, name, ids, torch.tensor([0, 1] * 3))
    explained = explained_positions_of(tiny_text_model, ids)
    assert attribution.shape == ids.shape and attribution.dtype == torch.float32
    assert bool((attribution[~explained] == 0).all())  # exactly 0, not merely small
    assert bool(torch.isfinite(attribution).all()) and bool((attribution[explained] != 0).any())


def test_the_mask_baseline_masks_every_token_and_keeps_cls_and_padding():
    ids, _ = _messages(4)
    baseline = _baseline(ids)
    assert torch.equal(baseline[ids == PAD], ids[ids == PAD]) and bool((baseline[:, 0] == CLS).all())
    assert bool((baseline[(ids != PAD) & (torch.arange(LENGTH) > 0)] == MASK).all())


@pytest.mark.parametrize("name", sorted(set(EXPLAINERS) - {"random"}))
def test_explainers_rank_the_deciding_token_first(name):
    model = OneTokenModel().eval()
    ids, where = _messages()
    with torch.no_grad():
        assert bool((model(ids).argmax(1) == 1).all()) and bool((model(_baseline(ids)).argmax(1) == 0).all())
    attribution = _explain(model, name, ids, torch.ones(len(ids), dtype=torch.int64))
    assert torch.equal(attribution.argmax(1), where), name


def test_faithfulness_and_plausibility_find_the_deciding_token_and_random_does_not():
    model = OneTokenModel().eval()
    ids, where = _messages()
    target = torch.ones(len(ids), dtype=torch.int64)
    explained = explained_positions_of(model, ids)
    rationale = np.zeros(ids.shape, dtype=bool)
    rationale[np.arange(len(ids)), where.numpy()] = True
    scores = {}
    for name in ("integrated-gradients", "attention", "random"):
        attribution = _explain(model, name, ids, target)
        curves = removal_curves(model, ids, attribution, target, _baseline(ids), explained=explained)
        comprehensiveness, sufficiency = aopc(model, ids, attribution, target, _baseline(ids), explained=explained)
        scores[name] = dict(deletion=curves.deletion_auc.mean(), comprehensiveness=comprehensiveness.mean(),
                            sufficiency=sufficiency.mean(),
                            precision=precision_at_k(attribution, rationale, explained).mean(),
                            plausibility=plausibility(attribution, rationale, explained).mean())
        # every message's own tokens: its last step has masked all of them, [CLS] and padding kept
        with torch.no_grad():
            fully_masked = torch.softmax(model(_baseline(ids)), 1)[:, 1].double().numpy()
        assert np.allclose(curves.deletion[:, -1], fully_masked) and curves.fractions[-1] == 1.0
    for name in ("integrated-gradients", "attention"):
        found = scores[name]
        assert found["precision"] == 1.0 and found["plausibility"] == 1.0
        # its first token removed (k = 1 of at most 7 tokens) is the one the decision hinges on
        assert found["deletion"] < scores["random"]["deletion"] - 0.05
        assert found["comprehensiveness"] > scores["random"]["comprehensiveness"] + 0.05
        assert found["sufficiency"] < scores["random"]["sufficiency"] - 0.05
    assert scores["random"]["precision"] < 0.6 and scores["random"]["plausibility"] < 0.8


def test_plausibility_is_sklearn_average_precision_over_the_message_tokens():
    from sklearn.metrics import average_precision_score

    attribution = torch.tensor([[0.0, 0.3, -0.2, 0.9, 0.1, 0.0]])
    explained = torch.tensor([[False, True, True, True, True, False]])
    relevant = np.array([[False, True, False, False, True, False]])
    expected = average_precision_score([1, 0, 0, 1], [0.3, -0.2, 0.9, 0.1])
    assert plausibility(attribution, relevant, explained)[0] == pytest.approx(expected)
    everything = np.array([[False, True, True, True, True, False]])
    assert np.isnan(plausibility(attribution, everything, explained)[0])  # no negatives: undefined


def test_padding_is_not_counted_as_sparse_attention(tiny_text_model):
    from auditor.stages.sparsity import sparsity_stage

    ids, _ = _messages(4)
    assert bool((ids == PAD).any())
    # softmax gives no exact zeros: the padding's zero weights are the mask's, not sparsity
    assert (sparsity_stage(tiny_text_model, ids).per_sample["attention.zero_share"] == 0).all()
