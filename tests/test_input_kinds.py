"""The input kinds' contract (issue 14, item 4), in the spirit of scikit-learn's estimator checks: every
check runs over every registered kind, on the sample shape of the kind's own built-in data, and a module in
detectors/inputs/ whose kind is not registered fails. Text (token ids, issue 16) is the one kind of integer
samples: it shares tabular's rank and is found by name or dtype, and its [CLS] is an input position."""

from __future__ import annotations

import importlib
import io
import math
import pkgutil

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import detectors.inputs as inputs
from detectors.data import load_table
from detectors.errors import BadInputError
from detectors.inputs import (CLS_TOKENS, INPUT_KINDS, REMOVAL_BASELINES, Bars, InputKind, kind_named, kind_of_rank,
                              kind_of_samples, removal_baseline)
from detectors.inputs.text import TEXT, TokenIds
from detectors.registry import DETECTORS, detector_for_data

PATCH_SIZES = (None, 1, 2)  # tried on every kind; each kind accepts some and refuses the rest as bad input


def _builtin(kind: InputKind):
    """(sample shape, scale mode, position names) of the kind's built-in data (100 messages for text)."""
    if kind is TEXT:
        from detectors.text_data import load_text_table, split_text_table

        splits = split_text_table(load_text_table(f"{kind.builtin_data}:100"), seed=0)
        return splits.train.input_shape, "none", splits.train.feature_names
    table = load_table(kind.builtin_data)
    return table.input_shape, table.scale_mode, table.feature_names


def _sample_shape(kind: InputKind) -> tuple[int, ...]:
    return _builtin(kind)[0]


def _samples(kind: InputKind, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """n samples of the kind: [0, 1] floats, or token ids ([CLS] = 2 first, padding 0 at the end) for text."""
    generator = torch.Generator().manual_seed(0)
    if kind is TEXT:
        ids = torch.randint(4, 20, (n, *shape), generator=generator)
        ids[:, 0], ids[:, -2:] = 2, 0
        return ids
    return torch.rand(n, *shape, generator=generator)


def _token_maps(kind: InputKind, shape: tuple[int, ...]) -> dict[tuple[str, int | None], object]:
    accepted = {}
    for cls_token in CLS_TOKENS:
        for patch_size in PATCH_SIZES:
            try:
                accepted[(cls_token, patch_size)] = kind.token_map(shape, cls_token=cls_token, patch_size=patch_size)
            except BadInputError:
                continue
    return accepted


def check_rank_matches_its_builtin_data(kind: InputKind) -> None:
    shape, scale_mode, feature_names = _builtin(kind)
    assert len(shape) == kind.rank
    assert kind_named(kind.name) is kind and kind_of_samples(_samples(kind, 2, shape)) is kind
    assert (kind_of_rank(kind.rank) is kind) == (kind is not TEXT)  # text is never guessed from its rank
    assert scale_mode == kind.scale_mode
    positions = math.prod(shape)
    names = kind.feature_names(shape)
    assert len(feature_names) == positions and len(names) == len(set(names)) == positions


def check_token_map_covers_every_position(kind: InputKind) -> None:
    shape = _sample_shape(kind)
    maps = _token_maps(kind, shape)
    assert {cls_token for cls_token, _ in maps} == set(CLS_TOKENS)  # each CLS setting with some patch setting
    for (cls_token, _), token_map in maps.items():
        tokens = token_map.token_of_input
        assert tuple(tokens.shape) == shape
        first_token = 1 if cls_token == "first" and kind is not TEXT else 0  # text's [CLS] is position 0
        assert int(tokens.min()) >= first_token and int(tokens.max()) < token_map.n_tokens
        covered = set(tokens.flatten().tolist()) | ({token_map.cls_index} if token_map.cls_index is not None else set())
        assert covered == set(range(token_map.n_tokens))  # and no token covers nothing
    with pytest.raises(BadInputError, match=f"{kind.name} input needs shape"):
        kind.token_map((*shape, 1), cls_token="first", patch_size=next(iter(maps))[1])


def check_token_map_is_the_one_of_its_detector_family(kind: InputKind) -> None:
    shape = _sample_shape(kind)
    if kind is TEXT:  # sized by its tokeniser, not by the data's shape
        with pytest.raises(BadInputError, match="sized by its tokeniser"):
            kind.build_detector(shape, 2, attention="softmax")
        detector = DETECTORS[kind.detector](20, shape[0], 2)
    else:
        detector = detector_for_data(kind.detector, shape, 2, kind.builtin_data)
    assert isinstance(detector, DETECTORS[kind.detector]) and detector.input_shape == shape
    family = detector.token_map
    assert any(torch.equal(m.token_of_input, family.token_of_input) and m.n_tokens == family.n_tokens
               for (cls_token, _), m in _token_maps(kind, shape).items() if cls_token == "first")
    with torch.no_grad():
        assert detector(_samples(kind, 2, shape)).shape == (2, 2)


def check_removal_baselines_have_the_input_shape(kind: InputKind) -> None:
    shape = _sample_shape(kind)
    x = _samples(kind, 3, shape)
    # what the kind's Subject stores as its baseline: the training mean, or text's (pad id, [MASK] id)
    mean = TokenIds(0, 3, "[MASK]").as_baseline() if kind is TEXT else x.mean(0)
    assert set(kind.removal_baselines) <= set(REMOVAL_BASELINES)
    assert {"mean", "zero"} <= set(kind.removal_baselines) or kind.removal_baselines == ("mask",)
    for name in kind.removal_baselines:
        baseline = removal_baseline(name, x, mean)
        assert tuple(baseline.shape) in (shape, tuple(x.shape)), name
        assert baseline.dtype == x.dtype, name
        if kind is TEXT:  # every token masked, [CLS] and padding kept
            assert torch.equal(baseline[:, 0], x[:, 0]) and torch.equal(baseline[:, -2:], x[:, -2:])
            assert bool((baseline[:, 1:-2] == 3).all())
        else:
            assert bool(((baseline >= 0) & (baseline <= 1)).all()), name
    for name in set(REMOVAL_BASELINES) - set(kind.removal_baselines):
        with pytest.raises(BadInputError, match=f"--removal-baseline {name} applies to"):
            removal_baseline(name, x, mean)


def check_drawings_return_on_a_tiny_sample(kind: InputKind) -> None:
    shape = _sample_shape(kind)
    rng = np.random.default_rng(0)
    x, clean, attacked = rng.random(shape), rng.random(shape), rng.random(shape)
    view = kind.attention_view(x, clean, attacked)
    assert isinstance(view, (Figure, Bars))
    if isinstance(view, Bars):
        assert len(view.positions) and all(0 <= i < math.prod(shape) for i in view.positions) and view.peak > 0
    else:
        view.savefig(io.BytesIO(), format="png")
    figure = kind.attribution_figure(x, {"attention": rng.random(shape) * 2 - 1, "random": rng.random(shape)})
    assert figure is None or isinstance(figure, Figure)
    if figure is not None:
        figure.savefig(io.BytesIO(), format="png")
    assert kind.samples_caption.endswith(".")


CHECKS = (check_rank_matches_its_builtin_data, check_token_map_covers_every_position,
          check_token_map_is_the_one_of_its_detector_family, check_removal_baselines_have_the_input_shape,
          check_drawings_return_on_a_tiny_sample)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("name", list(INPUT_KINDS))
def test_contract(name, check):
    check(INPUT_KINDS[name])


def test_every_kind_module_is_registered_once_with_a_rank_of_its_own():
    defined = []
    for module in pkgutil.iter_modules(inputs.__path__):
        if module.name != "base":
            found = importlib.import_module(f"detectors.inputs.{module.name}")
            defined += [value for value in vars(found).values() if isinstance(value, InputKind)]
    assert sorted(kind.name for kind in defined) == sorted(INPUT_KINDS)
    assert all(INPUT_KINDS[kind.name] is kind for kind in defined)
    by_rank = [kind for kind in defined if kind is not TEXT]  # text shares tabular's rank, found by dtype
    assert len({kind.rank for kind in by_rank}) == len(by_rank)


def test_unknown_kinds_and_ranks_are_one_line_of_bad_input():
    with pytest.raises(BadInputError, match="input kind 'audio' is unknown; expected one of tabular, sequence, image, "
                                            "text"):
        kind_named("audio")
    with pytest.raises(BadInputError, match="no input kind has samples of rank 4"):
        kind_of_rank(4)
    with pytest.raises(BadInputError, match="unknown removal baseline 'median'"):
        removal_baseline("median", torch.zeros(2, 3), torch.zeros(3))
