"""Adapt models this tool did not train, so the auditor can use them as a :class:`Detector`.

A foreign model is named by a spec ``python:PATH_OR_MODULE:FACTORY`` and built by
:mod:`detectors.foreign_loading`; the sanity checks' edits of its attention live in
:mod:`detectors.foreign_editing`.

:class:`ForeignDetector` wraps the module in the Detector contract. Most
third-party transformers use ``nn.MultiheadAttention`` (directly or inside
``nn.TransformerEncoderLayer``), which only returns its weights when asked and
is skipped entirely by the fused fast path in eval mode. The wrapper therefore
asks for the weights through hooks and switches the fast path off for the
duration of one call, and it restores everything afterwards so that the
model behaves exactly as before outside the capture.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from detectors.base import Detector
from detectors.errors import BadInputError, short_listing
from detectors.inputs import kind_named


def is_self_attention(query: Any, key: Any, value: Any) -> bool:
    """Whether one call of an attention module attends a sequence over itself: query, key and value are
    the same tensor (``nn.TransformerEncoderLayer`` calls ``self_attn(x, x, x)``). A learned query attending
    over tokens (attention pooling) or a decoder attending over memory (cross-attention) is not an encoder
    layer: its weights are not (tokens x tokens) over the input's tokens."""
    return isinstance(query, torch.Tensor) and query is key and key is value


class MultiheadAttentionCapture:
    """Hooks that make one ``nn.MultiheadAttention`` hand back per-head weights.

    The pre-hook rewrites ``need_weights``/``average_attn_weights`` wherever
    the caller put them (keyword or positional); the forward hook records the
    per-head weights and then gives the caller what it asked for originally
    (``None`` or the head-averaged weights), so capture cannot change logits.
    Only self-attention calls (:func:`is_self_attention`) are captured, unless
    ``always`` (the module was named with ``--attention-module``); the others
    pass untouched and their module's name goes to ``ignored``.
    """

    def __init__(self, sink: list[tuple[str, torch.Tensor]], name: str, module: nn.Module, *,
                 always: bool = False, ignored: list[str] | None = None) -> None:
        self.sink = sink
        self.name = name
        self.signature = inspect.signature(module.forward)
        self.requested: list[tuple[bool, bool] | None] = []
        self.always = always
        self.ignored = ignored if ignored is not None else []

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        parameters = self.signature.parameters
        if "need_weights" not in parameters or "average_attn_weights" not in parameters:
            self.requested.append(None)
            return None
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            self.requested.append(None)  # the module itself will report the bad call
            return None
        arguments = bound.arguments
        if not self.always and not is_self_attention(arguments.get("query"), arguments.get("key"),
                                                     arguments.get("value")):
            if self.name not in self.ignored:
                self.ignored.append(self.name)
            self.requested.append(False)
            return None
        need = bool(bound.arguments.get("need_weights", parameters["need_weights"].default))
        average = bool(bound.arguments.get("average_attn_weights", parameters["average_attn_weights"].default))
        self.requested.append((need, average))
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = False
        return tuple(bound.args), dict(bound.kwargs)

    def hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        requested = self.requested.pop() if self.requested else None
        if requested is False:  # not self-attention: not a layer, left as it was
            return None
        if not isinstance(output, (tuple, list)) or len(output) < 2 or not isinstance(output[1], torch.Tensor):
            return None
        weights = output[1]
        # Unbatched calls give (heads, L, S); batch_first or not, batched calls give (batch, heads, L, S).
        self.sink.append((self.name, weights.unsqueeze(0) if weights.ndim == 3 and requested else weights))
        if requested is None:
            return None
        need, average = requested
        if not need:
            return (output[0], None)
        if average:
            return (output[0], weights.mean(dim=-3))
        return None


class ForeignDetector(Detector):
    """A user's model behind the Detector contract.

    Inputs arrive scaled to [0, 1] per position (what the attacks' epsilon
    budgets assume); the model sees its own raw units ``lo + x * (hi - lo)``.
    """

    kind = "foreign"

    def __init__(self, model: nn.Module, *, input_shape: tuple[int, ...], n_classes: int, input_kind: str,
                 cls_token: str = "first", patch_size: int | None = None, attention_modules: list[str] = (),
                 logits_key: str | None = None, lo: torch.Tensor | None = None,
                 hi: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise BadInputError(f"expected a torch.nn.Module to wrap, got a {type(model).__name__}")
        self.model = model
        self.input_shape = tuple(int(size) for size in input_shape)
        self.n_classes = int(n_classes)
        if self.n_classes < 1:
            raise BadInputError(f"n_classes must be at least 1, got {n_classes}")
        self.input_kind = input_kind
        kind = kind_named(input_kind)
        self.cls_token = cls_token
        self.patch_size = None if patch_size is None else int(patch_size)
        self.attention_modules = list(attention_modules)
        self.logits_key = None if logits_key is None else str(logits_key)
        self.token_map = kind.token_map(self.input_shape, cls_token=cls_token, patch_size=self.patch_size)

        named = dict(model.named_modules())
        unknown = [name for name in self.attention_modules if name not in named]
        if unknown:
            valid = [name for name in named if name]
            likely = [name for name in valid if "att" in name.lower()]
            suggestions = likely + [name for name in valid if name not in likely]
            raise BadInputError(
                f"--attention-module {unknown[0]!r} is not a submodule of the model; valid names include: "
                f"{short_listing(suggestions)}"
            )

        lo_tensor = self._bound(lo, 0.0, "lo")
        hi_tensor = self._bound(hi, 1.0, "hi")
        # Not persistent: they come from the audit data, not from the model's weights.
        self.register_buffer("lo", lo_tensor, persistent=False)
        self.register_buffer("span", hi_tensor - lo_tensor, persistent=False)

    def _bound(self, value: torch.Tensor | None, default: float, name: str) -> torch.Tensor:
        """A float tensor of input_shape, from a tensor broadcastable to it (or the default)."""
        if value is None:
            return torch.full(self.input_shape, default, dtype=torch.float32)
        value = torch.as_tensor(value).detach().to(dtype=torch.float32, device="cpu")
        try:
            return value.expand(self.input_shape).clone()
        except RuntimeError as error:
            raise BadInputError(
                f"{name} has shape {tuple(value.shape)}, expected the input shape {self.input_shape} "
                "(or a shape that broadcasts to it)"
            ) from error

    def hparams(self) -> dict:
        """The wrapper's settings. The model itself comes from the spec and weights, not from these."""
        return dict(
            input_kind=self.input_kind, input_shape=list(self.input_shape), n_classes=self.n_classes,
            cls_token=self.cls_token, patch_size=self.patch_size, attention_modules=list(self.attention_modules),
            logits_key=self.logits_key,
        )

    # -- inputs and outputs -------------------------------------------------------------------------------------

    def _to_raw(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise BadInputError(
                f"input of shape {tuple(x.shape)} does not fit: expected (batch, {', '.join(map(str, self.input_shape))})"
            )
        return self.lo + x * self.span

    def _select_logits(self, output: Any) -> torch.Tensor:
        """The logits tensor out of whatever the model returns (tensor, tuple/list or dict)."""
        if isinstance(output, Mapping):
            keys = [str(key) for key in output]
            if self.logits_key is None:
                raise BadInputError(
                    f"the model returns a dict with keys {short_listing(keys)}; pass --logits-key naming the logits"
                )
            if self.logits_key not in output:
                raise BadInputError(
                    f"--logits-key {self.logits_key!r} is not among the model's output keys: {short_listing(keys)}"
                )
            logits = output[self.logits_key]
        elif isinstance(output, (tuple, list)):
            if not output:
                raise BadInputError("the model returned an empty tuple; expected logits")
            if self.logits_key is None:
                logits = output[0]
            elif not self.logits_key.isdigit() or int(self.logits_key) >= len(output):
                raise BadInputError(
                    f"the model returns a {type(output).__name__} of {len(output)} items; --logits-key must be an "
                    f"index 0..{len(output) - 1}, got {self.logits_key!r}"
                )
            else:
                logits = output[int(self.logits_key)]
        else:
            logits = output
        if not isinstance(logits, torch.Tensor):
            raise BadInputError(f"the model's logits are a {type(logits).__name__}, expected a tensor")
        if logits.ndim != 2 or logits.shape[1] != self.n_classes:
            raise BadInputError(
                f"the model's logits have shape {tuple(logits.shape)}, expected (batch, {self.n_classes}); "
                "check the number of classes or --logits-key"
            )
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits only, no hooks: what attacks and captum call, at the model's own speed."""
        return self._select_logits(self.model(self._to_raw(x)))

    # -- attention ------------------------------------------------------------------------------------------------

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raw = self._to_raw(x)
        own = getattr(self.model, "forward_with_attention", None)
        if callable(own):
            result = own(raw)
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise BadInputError(
                    "the model's own forward_with_attention must return (logits, [attention per layer]), "
                    f"got a {type(result).__name__}"
                )
            output, attentions = result
            logits = self._select_logits(output)
            captured = [(f"forward_with_attention[{i}]", a) for i, a in enumerate(attentions)]
        else:
            output, captured = self._capture(raw)
            logits = self._select_logits(output)
        return logits, self._check_attention(captured, x.shape[0])

    def attention_layers(self, x: torch.Tensor) -> tuple[list[str], list[str]]:
        """The modules whose weights are the attention layers on ``x``, and the ``nn.MultiheadAttention``
        modules left out because they did not attend a sequence over itself (results.json lists both)."""
        raw = self._to_raw(x)
        own = getattr(self.model, "forward_with_attention", None)
        if callable(own):
            return [f"forward_with_attention[{i}]" for i in range(len(own(raw)[1]))], []
        ignored: list[str] = []
        _, captured = self._capture(raw, ignored=ignored)
        return list(dict.fromkeys(name for name, _ in captured)), ignored

    def _capture(self, raw: torch.Tensor, *,
                 ignored: list[str] | None = None) -> tuple[Any, list[tuple[str, torch.Tensor]]]:
        """Run the model once with hooks that collect attention weights, and always clean up."""
        captured: list[tuple[str, torch.Tensor]] = []
        ignored = [] if ignored is None else ignored
        handles = []
        named = dict(self.model.named_modules())
        previous_fastpath = torch.backends.mha.get_fastpath_enabled()
        try:
            # The fused fast path of nn.TransformerEncoderLayer never calls self_attn's Python forward.
            torch.backends.mha.set_fastpath_enabled(False)
            for name, module in named.items():
                if isinstance(module, nn.MultiheadAttention):
                    capture = MultiheadAttentionCapture(captured, name, module,
                                                         always=name in self.attention_modules, ignored=ignored)
                    handles.append(module.register_forward_pre_hook(capture.pre_hook, with_kwargs=True))
                    handles.append(module.register_forward_hook(capture.hook))
            for name in self.attention_modules:
                if isinstance(named[name], nn.MultiheadAttention):
                    continue  # already captured above, with its weights requested
                handles.append(named[name].register_forward_hook(self._module_hook(captured, name)))
            output = self.model(raw)
        finally:
            for handle in handles:
                handle.remove()
            torch.backends.mha.set_fastpath_enabled(previous_fastpath)
        if not captured and ignored:
            raise BadInputError(
                f"no attention found: the model's nn.MultiheadAttention modules {short_listing(ignored)} do not attend "
                "the tokens over themselves (query, key and value differ: cross-attention or attention pooling), "
                "so they are not encoder layers; name the module(s) to use with --attention-module"
            )
        if not captured:
            raise BadInputError(
                "no attention found: the model has no nn.MultiheadAttention and no --attention-module captured "
                "anything; name the module that outputs the attention weights with --attention-module "
                "(its output, or output[1], must be (batch, heads, tokens, tokens))"
            )
        return output, captured

    @staticmethod
    def _module_hook(captured: list[tuple[str, torch.Tensor]], name: str):
        """A forward hook that records a named module's attention output (validated after the call)."""

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else output
            if not isinstance(weights, torch.Tensor):
                raise BadInputError(
                    f"--attention-module {name!r} produced a {type(weights).__name__}, expected a tensor "
                    "(batch, heads, tokens, tokens) as its output or output[1]"
                )
            captured.append((name, weights))

        return hook

    def _check_attention(self, captured: list[tuple[str, torch.Tensor]], batch: int) -> list[torch.Tensor]:
        """Shape every layer as (batch, heads, tokens, tokens) and check the token count fits the token map."""
        if not captured:
            raise BadInputError("no attention found: the model's forward_with_attention returned no layers")
        expected = self.token_map.n_tokens
        layers = []
        for name, weights in captured:
            if not isinstance(weights, torch.Tensor):
                raise BadInputError(f"attention from {name!r} is a {type(weights).__name__}, expected a tensor")
            if weights.ndim == 3:
                weights = weights.unsqueeze(1)
            if weights.ndim != 4 or weights.shape[0] != batch:
                raise BadInputError(
                    f"attention from {name!r} has shape {tuple(weights.shape)}, expected "
                    f"(batch={batch}, heads, tokens, tokens)"
                )
            if weights.shape[-1] != expected or weights.shape[-2] != expected:
                raise BadInputError(self._token_mismatch(name, tuple(weights.shape)))
            layers.append(weights)
        return layers

    def _token_mismatch(self, name: str, shape: tuple[int, ...]) -> str:
        kind = kind_named(self.input_kind)
        grid = kind.token_grid(self.input_shape, self.patch_size) + (" + 1 CLS" if self.cls_token == "first" else "")
        return (f"attention from {name!r} covers {shape[-2]}x{shape[-1]} tokens, expected {self.token_map.n_tokens} "
                f"({grid}); {kind.token_hint}")


PATH_TOLERANCE = 1e-4


@torch.no_grad()
def logit_path_difference(detector: ForeignDetector, x: torch.Tensor, *, batch_size: int = 256) -> float:
    """The largest absolute logit difference between ``detector(x)`` (no hooks: what the clean metrics and
    most attacks call) and ``detector.forward_with_attention(x)`` (hooks, fast path off: what the attention
    attacks' "prediction kept" and the explainers read), over every row of ``x``. Both passes of a batch
    start from the same random state, so a model's own randomness (dropout) cancels out; the torch random
    state is restored afterwards."""
    devices = [x.device] if x.device.type == "cuda" else []
    largest = 0.0
    with torch.random.fork_rng(devices=devices):
        for start in range(0, len(x), batch_size):
            rows = x[start:start + batch_size]
            state = torch.random.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
            plain = detector(rows).double()
            torch.random.set_rng_state(state[0])
            for device, saved in zip(devices, state[1]):
                torch.cuda.set_rng_state(saved, device)
            hooked = detector.forward_with_attention(rows)[0].double()
            largest = max(largest, float((plain - hooked).abs().max()) if plain.numel() else 0.0)
    return largest


def check_input_fits(detector: ForeignDetector, x: torch.Tensor) -> None:
    """Fail early, with one line, when the audit data cannot go through the model at all."""
    if tuple(x.shape[1:]) != detector.input_shape:
        raise BadInputError(
            f"the data's shape {tuple(x.shape)} does not fit the model's input shape "
            f"(N, {', '.join(map(str, detector.input_shape))}); check --input-shape"
        )
    try:
        with torch.no_grad():
            detector(x[:2])
    except BadInputError:
        raise
    except (RuntimeError, ValueError, IndexError, AssertionError) as error:
        text = str(error).strip()
        line = text.splitlines()[0] if text else type(error).__name__
        raise BadInputError(f"the data's shape {tuple(x.shape)} does not fit the model: {line}") from error


def captured_attention_modules(detector: ForeignDetector, x: torch.Tensor) -> list[str]:
    """The names of the modules whose attention ``forward_with_attention`` reports, in call order (one entry
    per call), from one capture on ``x``; empty when the model reports its own attention."""
    if callable(getattr(detector.model, "forward_with_attention", None)):
        return []
    with torch.no_grad():
        _, captured = detector._capture(detector._to_raw(x))
    return [name for name, _ in captured]
