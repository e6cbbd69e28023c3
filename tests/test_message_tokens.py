"""Per-token metrics count the message alone (issue 26, item 5): [CLS], [SEP], </s>, <s> and padding are no part
of a message, so no explainer attributes them, no removal touches them and no rank correlation counts their tied
zeros."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from auditor.stages.explainers import EXPLAINERS, make_explainer
from auditor.stages.sanity import spearman_rows
from detectors.inputs import removal_baseline
from detectors.inputs.text import TokenIds, explained_positions, explained_positions_of
from detectors.text import TextTransformer

PAD, CLS = 0, 2


def _padded_messages(n: int, length: int, shortest: int, longest: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ids = torch.full((n, length), PAD)
    for row in range(n):
        words = int(rng.integers(shortest, longest + 1))
        ids[row, 0] = CLS
        ids[row, 1:words + 1] = torch.as_tensor(rng.integers(4, 50, size=words))
    return ids


def test_two_independent_random_explanations_correlate_near_zero_over_the_message_alone():
    ids = _padded_messages(400, 128, 15, 25)
    model = TextTransformer(50, 128, 2, pad_id=PAD, dim=4, depth=1, heads=1, mlp_dim=4, dropout=0.0).eval()
    explained = explained_positions_of(model, ids)
    first, second = (make_explainer("random").explain(model, ids, torch.zeros(len(ids), dtype=torch.int64),
                                                      baseline=ids, seed=seed, index=torch.arange(len(ids)))
                     for seed in (0, 1))
    over_message = spearman_rows(first, second, explained)
    # independent rankings of k tokens: mean rho 0, mean |rho| sqrt(2 / (pi (k - 1))) (about 0.18 at k = 20)
    assert abs(over_message.mean()) < 0.03
    expected = np.mean([math.sqrt(2 / (math.pi * (k - 1))) for k in explained.sum(1).tolist()])
    assert abs(np.abs(over_message).mean() - expected) < 0.03
    # the failing case: over every position the tied zeros of [CLS] and padding lift it past the pass rule
    assert np.abs(spearman_rows(first, second)).mean() > 0.5


def test_the_same_explanation_correlates_one_over_the_message():
    ids = _padded_messages(8, 16, 3, 10)
    explained = explained_positions(ids, PAD)
    a = torch.where(explained, torch.rand(ids.shape), 0.0)
    assert np.allclose(spearman_rows(a, a, explained), 1.0)
    assert np.allclose(np.abs(spearman_rows(a, -a, explained)), 1.0)


@pytest.fixture(scope="module")
def tiny_pretrained():
    pytest.importorskip("transformers")
    from test_huggingface import TEXT_FAMILIES, _fast_tokenizer, _messages, _text_model

    from detectors.huggingface import FAMILIES, HuggingFaceTextDetector, PretrainedTokenizer

    texts, _ = _messages(6, seed=3)
    built = {}
    for model_type in ("bert", "roberta"):
        tokenizer = _fast_tokenizer(TEXT_FAMILIES[model_type])
        torch.manual_seed(0)
        model = _text_model(model_type, len(tokenizer), tokenizer.pad_token_id).eval()
        detector = HuggingFaceTextDetector(model, FAMILIES[model_type], PretrainedTokenizer(tokenizer, 14))
        ids = torch.as_tensor(detector.tokenizer.encode(texts)[0])
        built[model_type] = (detector, ids, tokenizer)
    return built, texts


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_sep_is_never_a_message_token_of_a_pretrained_tokeniser(tiny_pretrained, model_type):
    built, texts = tiny_pretrained
    detector, ids, tokenizer = built[model_type]
    explained = explained_positions_of(detector, ids)
    assert bool((ids == tokenizer.sep_token_id).any(1).all())  # every message ends in [SEP] / </s>
    assert not bool(explained[ids == tokenizer.sep_token_id].any())
    assert not bool(explained[ids == tokenizer.pad_token_id].any()) and not bool(explained[:, 0].any())
    assert explained.sum(1).tolist() == [len(text.split()) for text in texts]
    baseline = removal_baseline("mask", ids, TokenIds.of(detector.tokenizer).as_baseline())
    assert torch.equal(baseline[~explained], ids[~explained])  # the frame stays, the words become [MASK]
    assert bool((baseline[explained] == tokenizer.mask_token_id).all())


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_every_explainer_gives_every_special_position_of_a_tiny_bert_exactly_zero(tiny_pretrained, name):
    built, _ = tiny_pretrained
    detector, ids, tokenizer = built["bert"]
    baseline = removal_baseline("mask", ids, TokenIds.of(detector.tokenizer).as_baseline())
    attribution = make_explainer(name).explain(detector, ids, torch.tensor([0, 1] * 3), baseline=baseline, seed=0,
                                               index=torch.arange(len(ids)))
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert bool((attribution[special] == 0).all())
    assert bool((attribution[~special] != 0).any())
