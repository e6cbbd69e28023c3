"""Foreign models: built from a user's file and factory, wrapped as Detectors, attention captured by hooks."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from detectors.errors import BadInputError
from detectors.foreign import ForeignDetector, check_input_fits
from detectors.foreign_loading import build_foreign_model, parse_model_spec

USER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Classifier(nn.Module):
        def __init__(self, n_features=6, dim=16, n_classes=2):
            super().__init__()
            self.embed = nn.Parameter(torch.randn(n_features, dim))
            self.bias = nn.Parameter(torch.randn(n_features, dim) * 0.1)
            self.cls = nn.Parameter(torch.randn(1, 1, dim))
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(dim, 2, 32, batch_first=True, dropout=0.0), 2
            )
            self.head = nn.Linear(dim, n_classes)

        def forward(self, x):
            tokens = x.unsqueeze(-1) * self.embed + self.bias
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
            return self.head(self.encoder(tokens)[:, 0])


    def make():
        torch.manual_seed(0)
        return Classifier()


    def broken():
        raise ValueError("no GPU configured")


    def not_a_module():
        return {"weights": 1}
    """
)


def _all_hooks_gone(module: nn.Module) -> bool:
    return all(
        not sub._forward_hooks and not sub._forward_pre_hooks
        and not sub._forward_hooks_with_kwargs and not sub._forward_pre_hooks_with_kwargs
        for sub in module.modules()
    )


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "user_model.py"
    path.write_text(USER_MODEL)
    return path


@pytest.fixture()
def user_weights(user_file: Path, tmp_path: Path) -> tuple[Path, nn.Module]:
    """Weights from a model trained elsewhere: a differently seeded instance, so loading visibly matters."""
    model = build_foreign_model(f"python:{user_file}:make")
    torch.manual_seed(123)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.3)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _wrap(model: nn.Module, **overrides) -> ForeignDetector:
    settings = dict(input_shape=(6,), n_classes=2, input_kind="tabular", cls_token="first")
    settings.update(overrides)
    return ForeignDetector(model, **settings)


def _inputs(n: int = 5, shape: tuple[int, ...] = (6,)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(7))


# -- 1. an ordinary model -------------------------------------------------------------------------------------------


def test_ordinary_transformer_is_wrapped_and_attention_captured(user_file, user_weights):
    weights_path, reference = user_weights
    model = build_foreign_model(f"python:{user_file}:make", weights=str(weights_path))
    assert not model.training
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name

    detector = _wrap(model).eval()
    x = _inputs()
    fastpath_before = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        expected = reference(x)
        logits = detector(x)
        captured_logits, attentions = detector.forward_with_attention(x)

    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(captured_logits, expected, atol=1e-6, rtol=0)  # capture leaves logits alone
    assert len(attentions) == 2
    for layer in attentions:
        assert layer.shape == (5, 2, 7, 7)
        torch.testing.assert_close(layer.sum(dim=-1), torch.ones(5, 2, 7))
        assert not torch.allclose(layer[0], layer[1])  # real attention: depends on the input
    assert not torch.allclose(attentions[0], attentions[1])
    assert _all_hooks_gone(detector)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath_before
    assert detector.token_map.n_tokens == 7 and detector.token_map.cls_index == 0
    assert detector.token_map.token_of_input.tolist() == [1, 2, 3, 4, 5, 6]


def test_fastpath_flag_restored_when_it_was_off(user_file):
    detector = _wrap(build_foreign_model(f"python:{user_file}:make")).eval()
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            detector.forward_with_attention(_inputs())
        assert torch.backends.mha.get_fastpath_enabled() is False
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def test_capture_keeps_the_weights_a_model_asks_for():
    """A model that uses nn.MultiheadAttention's averaged weights itself computes the same logits under capture."""

    class UsesWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.embed = nn.Linear(1, 8)
            self.attn = nn.MultiheadAttention(8, 2)  # batch_first=False: (tokens, batch, dim)
            self.head = nn.Linear(8 + 6, 2)

        def forward(self, x):
            tokens = self.embed(x.unsqueeze(-1)).transpose(0, 1)
            out, averaged = self.attn(tokens, tokens, tokens)
            return self.head(torch.cat([out.mean(dim=0), averaged.sum(dim=1)], dim=-1))

    model = UsesWeights().eval()
    detector = _wrap(model, cls_token="none")
    x = _inputs(3)
    with torch.no_grad():
        logits, attentions = detector.forward_with_attention(x)
        torch.testing.assert_close(logits, model(x), atol=1e-6, rtol=0)
    assert attentions[0].shape == (3, 2, 6, 6)  # per-head, batch first, although the module is not batch_first


def test_fastpath_is_off_during_capture_only(user_file):
    """Older torch runs nn.TransformerEncoderLayer fused even with hooks attached; capture must switch it off."""
    seen: list[bool] = []
    model = build_foreign_model(f"python:{user_file}:make")
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.mha.get_fastpath_enabled()))
    detector = _wrap(model).eval()
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(True)
    try:
        with torch.no_grad():
            detector(_inputs())
            detector.forward_with_attention(_inputs())
        assert seen == [True, False]
        assert torch.backends.mha.get_fastpath_enabled() is True
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


# -- 2. cleanup when the model raises ------------------------------------------------------------------------------


def test_hooks_removed_and_fastpath_restored_when_model_raises(user_file):
    model = build_foreign_model(f"python:{user_file}:make")

    def explode(module, args, output):
        raise RuntimeError("boom after the first layer")

    model.encoder.layers[0].register_forward_hook(explode)
    detector = _wrap(model).eval()
    before = torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        detector.forward_with_attention(_inputs())
    assert torch.backends.mha.get_fastpath_enabled() == before
    model.encoder.layers[0]._forward_hooks.clear()  # the test's own hook
    assert _all_hooks_gone(detector)


# -- 3. weights that would run code -------------------------------------------------------------------------------


class _WritesMarker:
    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_pickle_that_runs_code_is_refused_and_never_runs(user_file, tmp_path, writer):
    marker = tmp_path / "marker.txt"
    payload = _WritesMarker()
    payload.marker = str(marker)
    evil = tmp_path / "evil.pt"
    if writer == "pickle":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"state_dict": payload}, evil)
    with pytest.raises(BadInputError, match="refused to load weights") as caught:
        build_foreign_model(f"python:{user_file}:make", weights=str(evil))
    assert "\n" not in str(caught.value)
    assert not marker.exists()


# -- 4. safetensors, wrapped checkpoints, wrong keys ------------------------------------------------------------------


def test_safetensors_weights_load(user_file, user_weights, tmp_path):
    _, reference = user_weights
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = build_foreign_model(f"python:{user_file}:make", weights=str(path))
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict"])
def test_checkpoint_dict_wrapping_the_state_dict(user_file, user_weights, tmp_path, wrapper):
    _, reference = user_weights
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: reference.state_dict(), "epoch": 3}, path)
    model = build_foreign_model(f"python:{user_file}:make", weights=str(path))
    assert torch.equal(model.head.weight, reference.head.weight)


def test_wrong_keys_are_refused(user_file, user_weights, tmp_path):
    _, reference = user_weights
    state = dict(reference.state_dict())
    state["head.extra"] = state.pop("head.weight")
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(BadInputError, match=r"missing key 'head.weight'.*unexpected key 'head.extra'"):
        build_foreign_model(f"python:{user_file}:make", weights=str(path))


def test_wrong_shapes_are_refused(user_file, user_weights, tmp_path):
    _, reference = user_weights
    state = dict(reference.state_dict())
    state["head.weight"] = torch.zeros(3, 16)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(BadInputError, match="head.weight"):
        build_foreign_model(f"python:{user_file}:make", weights=str(path))


# -- 5. bad specs -----------------------------------------------------------------------------------------------------


def test_parse_model_spec():
    assert parse_model_spec("python:models/net.py:make") == ("models/net.py", "make")
    assert parse_model_spec("python:C:\\models\\net.py:make") == ("C:\\models\\net.py", "make")
    assert parse_model_spec("python:pkg.nets:Net.create") == ("pkg.nets", "Net.create")


@pytest.mark.parametrize("spec, message", [
    ("python:nofile.py:make", "does not exist"),
    ("python:{user}:missing_factory", "defines no factory 'missing_factory'.*make"),
    ("python:{user}:broken", r"broken\(\) .* raised ValueError: no GPU configured"),
    ("python:{user}:not_a_module", "returned a dict, expected a torch.nn.Module"),
    ("{user}:make", "does not start with 'python:'"),
    ("python:{user}", "names no factory|not a Python name"),
    ("python:no_such_module_xyz.nets:make", "cannot be imported"),
])
def test_bad_specs(user_file, spec, message):
    with pytest.raises(BadInputError, match=message) as caught:
        build_foreign_model(spec.format(user=user_file))
    assert "\n" not in str(caught.value)


def test_user_file_that_fails_to_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import torch\nraise ImportError('needs timm')\n")
    with pytest.raises(BadInputError, match="importing model file .* failed: ImportError: needs timm"):
        build_foreign_model(f"python:{path}:make")


def test_missing_weights_file(user_file, tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        build_foreign_model(f"python:{user_file}:make", weights=str(tmp_path / "nope.pt"))


# -- 6. a model with its own forward_with_attention -------------------------------------------------------------------


def test_model_with_own_forward_with_attention_is_used(tiny_detector):
    detector = _wrap(tiny_detector)
    x = _inputs(4)
    with torch.no_grad():
        logits, attentions = detector.forward_with_attention(x)
        expected_logits, expected = tiny_detector.forward_with_attention(x)
    torch.testing.assert_close(logits, expected_logits)
    assert len(attentions) == len(expected)
    for got, want in zip(attentions, expected):
        assert torch.equal(got, want)


# -- 7. dict outputs ----------------------------------------------------------------------------------------------------


class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Linear(1, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        tokens = self.embed(x.unsqueeze(-1))
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return {"logits": self.head(out.mean(dim=1)), "aux": out}


def test_dict_output_with_logits_key():
    model = _DictOutput().eval()
    detector = _wrap(model, cls_token="none", logits_key="logits")
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(detector(x), model(x)["logits"])
        logits, attentions = detector.forward_with_attention(x)
    torch.testing.assert_close(logits, model(x)["logits"], atol=1e-6, rtol=0)
    assert attentions[0].shape == (5, 2, 6, 6)


def test_dict_output_without_logits_key_lists_keys():
    detector = _wrap(_DictOutput().eval(), cls_token="none")
    with pytest.raises(BadInputError, match="keys logits, aux"):
        detector(_inputs())


def test_tuple_output_takes_element_or_index():
    class TupleOutput(_DictOutput):
        def forward(self, x):
            result = super().forward(x)
            return result["aux"], result["logits"]

    model = TupleOutput().eval()
    x = _inputs()
    detector = _wrap(model, cls_token="none", logits_key="1")
    torch.testing.assert_close(detector(x), model(x)[1])
    with pytest.raises(BadInputError, match="index 0..1"):
        _wrap(model, cls_token="none", logits_key="7")(x)


# -- 8. named attention modules -----------------------------------------------------------------------------------------


class _HandAttention(nn.Module):
    """Written-out attention that returns (out, weights), as many research codebases do."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d)), weights


class _HandModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Linear(1, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.ModuleList([_HandAttention(8, 2), _HandAttention(8, 2)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x.unsqueeze(-1))], dim=1)
        for block in self.blocks:
            tokens = tokens + block(tokens)[0]
        return self.head(tokens[:, 0])


def test_named_attention_modules_are_captured():
    model = _HandModel().eval()
    detector = _wrap(model, attention_modules=["blocks.0", "blocks.1"])
    x = _inputs()
    with torch.no_grad():
        logits, attentions = detector.forward_with_attention(x)
        torch.testing.assert_close(logits, model(x))
    assert [a.shape for a in attentions] == [(5, 2, 7, 7)] * 2
    assert _all_hooks_gone(detector)


def test_unknown_attention_module_lists_valid_names():
    with pytest.raises(BadInputError, match="'blocks.9' is not a submodule.*blocks.0"):
        _wrap(_HandModel(), attention_modules=["blocks.9"])


def test_no_attention_found():
    model = nn.Sequential(nn.Linear(6, 2))
    detector = _wrap(model)
    with pytest.raises(BadInputError, match="no attention found"):
        detector.forward_with_attention(_inputs())
    assert _all_hooks_gone(detector)


# -- 9. token maps --------------------------------------------------------------------------------------------------------


class _PatchModel(nn.Module):
    """A tiny ViT: 2x2 patches of a 1x4x4 image, CLS first."""

    def __init__(self, cls: bool = True) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.use_cls = cls
        self.patch = nn.Conv2d(1, 8, kernel_size=2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        if self.use_cls:
            tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        out, _ = self.attn(tokens, tokens, tokens)
        return self.head(out[:, 0])


def test_image_token_map_with_patches():
    detector = ForeignDetector(_PatchModel().eval(), input_shape=(1, 4, 4), n_classes=2, input_kind="image",
                               patch_size=2)
    assert detector.token_map.n_tokens == 5 and detector.token_map.cls_index == 0
    assert detector.token_map.token_of_input[0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    with torch.no_grad():
        _, attentions = detector.forward_with_attention(_inputs(2, (1, 4, 4)))
    assert attentions[0].shape == (2, 2, 5, 5)


def test_image_needs_a_fitting_patch_size():
    with pytest.raises(BadInputError, match="needs --patch-size"):
        ForeignDetector(_PatchModel(), input_shape=(1, 4, 4), n_classes=2, input_kind="image")
    with pytest.raises(BadInputError, match="divisible"):
        ForeignDetector(_PatchModel(), input_shape=(1, 4, 4), n_classes=2, input_kind="image", patch_size=3)


def test_sequence_token_map():
    model = nn.Sequential()  # the token map does not depend on the model
    detector = ForeignDetector(model, input_shape=(3, 2), n_classes=2, input_kind="sequence", cls_token="first")
    assert detector.token_map.n_tokens == 4
    assert detector.token_map.token_of_input.tolist() == [[1, 1], [2, 2], [3, 3]]
    none = ForeignDetector(model, input_shape=(3, 2), n_classes=2, input_kind="sequence", cls_token="none")
    assert none.token_map.n_tokens == 3 and none.token_map.cls_index is None


def test_token_count_mismatch_suggests_the_flags():
    detector = ForeignDetector(_PatchModel(cls=False).eval(), input_shape=(1, 4, 4), n_classes=2,
                               input_kind="image", patch_size=2, cls_token="first")
    with pytest.raises(BadInputError, match=r"covers 4x4 tokens, expected 5 .*--cls-token"):
        detector.forward_with_attention(_inputs(2, (1, 4, 4)))
    assert _all_hooks_gone(detector)


# -- 10. scaling to raw units -----------------------------------------------------------------------------------------------


def test_inputs_are_mapped_back_to_raw_units():
    seen: list[torch.Tensor] = []

    class Records(_HandModel):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    lo = torch.tensor([-1.0, 0.0, 10.0, 2.0, -5.0, 0.5])
    hi = torch.tensor([1.0, 100.0, 20.0, 2.5, 5.0, 0.75])
    detector = _wrap(Records().eval(), attention_modules=["blocks.1"], lo=lo, hi=hi)
    x = _inputs()
    detector(x)
    detector.forward_with_attention(x)
    torch.testing.assert_close(seen[0], lo + x * (hi - lo))
    torch.testing.assert_close(seen[1], seen[0])
    assert "lo" not in detector.state_dict() and "span" not in detector.state_dict()
    identity = _wrap(Records().eval())
    identity(x)
    assert torch.equal(seen[-1], x)


# -- 11. mean-pooled models ---------------------------------------------------------------------------------------------


def test_mean_pooled_model_without_cls():
    model = _DictOutput().eval()
    detector = _wrap(model, cls_token="none", logits_key="logits")
    assert detector.token_map.cls_index is None
    assert detector.token_map.n_tokens == 6
    assert detector.token_map.token_of_input.tolist() == list(range(6))
    with torch.no_grad():
        _, attentions = detector.forward_with_attention(_inputs())
    assert attentions[-1].shape[-1] == 6


# -- settings and input checks --------------------------------------------------------------------------------------------


def test_hparams_are_json(user_file):
    import json

    detector = _wrap(build_foreign_model(f"python:{user_file}:make"), attention_modules=["encoder.layers.0"],
                     logits_key=None)
    settings = json.loads(json.dumps(detector.hparams()))
    assert settings == dict(input_kind="tabular", input_shape=[6], n_classes=2, cls_token="first", patch_size=None,
                            attention_modules=["encoder.layers.0"], logits_key=None)


def test_check_input_fits(user_file):
    detector = _wrap(build_foreign_model(f"python:{user_file}:make"))
    check_input_fits(detector, _inputs())
    with pytest.raises(BadInputError, match=r"the data's shape \(5, 4\) does not fit"):
        check_input_fits(detector, _inputs(5, (4,)))
    # The declared shape is right but the model disagrees: the model's own error, one line.
    wrong = _wrap(build_foreign_model(f"python:{user_file}:make"), input_shape=(4,))
    with pytest.raises(BadInputError, match=r"the data's shape \(5, 4\) does not fit the model: ") as caught:
        check_input_fits(wrong, _inputs(5, (4,)))
    assert "\n" not in str(caught.value)


def test_grad_attention_and_sanity_run_on_a_hooked_transformer_and_detached_weights_are_refused(user_file):
    from auditor.stages.explainers import make_explainer
    from auditor.stages.sanity import cascade_layers, sanity_stage

    detector = _wrap(build_foreign_model(f"python:{user_file}:make")).eval()
    x = _inputs(8)
    target = detector(x).argmax(1)
    kwargs = dict(baseline=torch.full((6,), 0.5), seed=0, index=torch.arange(8))
    attribution = make_explainer("grad-attention").explain(detector, x, target, **kwargs)
    assert attribution.shape == x.shape and torch.isfinite(attribution).all() and attribution.abs().sum() > 0
    assert _all_hooks_gone(detector)
    assert [label for label, _ in cascade_layers(detector)] == ["head", "encoder"]
    outcome = sanity_stage(detector, x, target, {"grad-attention": attribution},
                           explainers={"grad-attention": make_explainer("grad-attention")}, **kwargs)
    assert np.isfinite(outcome.per_sample["sanity.mprt.grad-attention"]).all()
    # the flip test and uniform attention edit the hooked nn.MultiheadAttention modules, and leave no hook
    for name in ("sanity.flip_rate.attention", "sanity.flip_rate.random", "sanity.uniform_attention.prediction_kept"):
        assert set(np.unique(outcome.per_sample[name])) <= {0.0, 1.0} and len(outcome.per_sample[name]) == 8, name
    assert not outcome.skipped and _all_hooks_gone(detector)

    class Detached(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward_with_attention(self, raw):
            logits, attentions = detector.forward_with_attention(raw)
            return logits, [a.detach() for a in attentions]

        def forward(self, raw):
            return self.inner(raw)

    frozen = _wrap(Detached(detector.model))
    with pytest.raises(BadInputError, match="grad-attention needs attention weights"):
        make_explainer("grad-attention").explain(frozen, x, target, **kwargs)
