"""One contract suite over every registered explainer (in the spirit of scikit-learn's estimator checks).

Each check is a plain function ``check_x(name, kind, model, x)``; the test ids read
``test_contract[deeplift-image-check_batch_size]``. Tiny untrained detectors of each input kind
suffice: the contract is about shapes, determinism, batching and clean-up, not about quality.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import auditor.stages.explainers as explain_module
from auditor.stages.explainers import EXPLAINERS, Explainer, make_explainer

EXPECTED_REGISTRY = {"attention", "attention-max", "rollout", "grad-attention", "integrated-gradients", "saliency",
                     "input-x-gradient", "deeplift", "gradient-shap", "feature-ablation", "random"}


def _models():
    from detectors.sequence import SequenceTransformer
    from detectors.tabular import FeatureTokenTransformer
    from detectors.vision import VisionTransformer

    torch.manual_seed(0)
    small = dict(dim=8, depth=2, heads=2, mlp_dim=16, dropout=0.1)
    return {"tabular": FeatureTokenTransformer(5, 2, **small).eval(),
            "image": VisionTransformer(1, 4, 4, 3, patch=2, **small).eval(),
            "sequence": SequenceTransformer(4, 3, 2, **small).eval()}


MODELS = _models()


def _explain(name, model, x, *, seed=0, index=None):
    index = torch.arange(len(x)) if index is None else index
    with torch.no_grad():
        target = model(x).argmax(1)
    baseline = torch.full(x.shape[1:], 0.5)
    return make_explainer(name).explain(model, x, target, baseline=baseline, seed=seed, index=index)


def _inputs(model, n=64):
    return torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(3))


def check_shape_and_finite(name, kind, model, x):
    attribution = _explain(name, model, x[:7])
    assert attribution.shape == x[:7].shape and torch.isfinite(attribution).all()


def check_seeded(name, kind, model, x):
    assert torch.equal(_explain(name, model, x[:9], seed=4), _explain(name, model, x[:9], seed=4))


def check_batch_size(name, kind, model, x):
    whole = _explain(name, model, x)
    parts = torch.cat([_explain(name, model, x[i:i + 7], index=torch.arange(i, min(i + 7, len(x))))
                       for i in range(0, len(x), 7)])
    assert torch.allclose(whole, parts, atol=1e-5, rtol=1e-4)


def check_mode_restored(name, kind, model, x):
    model.train()
    try:
        _explain(name, model, x[:4])
        assert model.training
    finally:
        model.eval()
    _explain(name, model, x[:4])
    assert not model.training


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def check_no_hooks_left(name, kind, model, x):
    before = _hooks(model)
    _explain(name, model, x[:4])
    assert _hooks(model) == before
    explainer, target = make_explainer(name), torch.zeros(4, dtype=torch.long)
    head = model.head
    original = head.forward
    calls = {"n": 0}

    def failing(value):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")
        return original(value)

    head.forward = failing
    try:
        try:
            explainer.explain(model, x[:4], target, baseline=torch.full(x.shape[1:], 0.5), seed=0,
                              index=torch.arange(4))
        except RuntimeError as error:
            assert "boom" in str(error)
    finally:
        del head.forward
    assert _hooks(model) == before and not model.training


CHECKS = [check_shape_and_finite, check_seeded, check_batch_size, check_mode_restored, check_no_hooks_left]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_contract(name, kind, check):
    model = MODELS[kind]
    check(name, kind, model, _inputs(model))


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_declares_family_and_reference(name):
    cls = EXPLAINERS[name]
    assert cls.family in explain_module.FAMILIES and cls.reference


def test_every_explainer_class_is_registered():
    defined = {cls.name for _, cls in inspect.getmembers(explain_module, inspect.isclass)
               if issubclass(cls, Explainer) and "name" in vars(cls)}
    assert defined == set(EXPLAINERS) == EXPECTED_REGISTRY
