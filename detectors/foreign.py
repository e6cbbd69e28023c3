"""Adapt models this tool did not train, so the auditor can use them as a :class:`Detector`.

A foreign model is named by a spec ``python:PATH_OR_MODULE:FACTORY``: the user's
own Python file (or an importable dotted module) and a zero-argument factory
that returns the ``nn.Module``. Weights, if given, are loaded without ever
running code from the weights file: ``.safetensors`` directly, anything else
through ``torch.load(weights_only=True)``, which refuses pickles that would
call arbitrary functions.

:class:`ForeignDetector` wraps the module in the Detector contract. Most
third-party transformers use ``nn.MultiheadAttention`` (directly or inside
``nn.TransformerEncoderLayer``), which only returns its weights when asked and
is skipped entirely by the fused fast path in eval mode. The wrapper therefore
asks for the weights through hooks and switches the fast path off for the
duration of one call, and it restores everything afterwards so that the
model behaves exactly as before outside the capture.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detectors.base import Detector, TokenMap
from detectors.errors import BadInputError

SPEC_PREFIX = "python:"
INPUT_KINDS = ("tabular", "sequence", "image")
CLS_TOKENS = ("first", "none")
WRAPPED_STATE_KEYS = ("state_dict", "model_state_dict")
_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _first_line(error: BaseException) -> str:
    """One readable line from an exception: the CLI prints one line per bad input."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _listing(names: list[str], limit: int = 8) -> str:
    """A short, comma-separated listing, so error messages stay on one line."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "") if names else "(none)"


# --------------------------------------------------------------------------------------------------------------
# Building the user's model
# --------------------------------------------------------------------------------------------------------------


def parse_model_spec(spec: str) -> tuple[str, str]:
    """'python:PATH_OR_MODULE:FACTORY' -> (path_or_module, factory). BadInputError if malformed.

    The factory is split off at the *last* colon so that paths containing a
    colon (a Windows drive letter) still parse.
    """
    usage = "expected 'python:PATH_OR_MODULE:FACTORY', e.g. 'python:models/my_net.py:make' or 'python:mypkg.nets:make'"
    if not isinstance(spec, str) or not spec.startswith(SPEC_PREFIX):
        raise BadInputError(f"model spec {spec!r} does not start with {SPEC_PREFIX!r}; {usage}")
    rest = spec[len(SPEC_PREFIX):]
    if ":" not in rest:
        raise BadInputError(f"model spec {spec!r} names no factory; {usage}")
    location, factory = rest.rsplit(":", 1)
    location, factory = location.strip(), factory.strip()
    if not location:
        raise BadInputError(f"model spec {spec!r} names no file or module; {usage}")
    if not factory or not _IDENTIFIER_PATH.match(factory):
        raise BadInputError(f"model spec {spec!r} has factory {factory!r}, which is not a Python name; {usage}")
    return location, factory


def _looks_like_path(location: str) -> bool:
    """A file path rather than a dotted module: ends in .py, has a separator, or exists as a file."""
    return location.endswith(".py") or "/" in location or "\\" in location or Path(location).is_file()


def _import_user_module(location: str) -> Any:
    """Import the user's file or dotted module; any failure becomes one BadInputError line."""
    if _looks_like_path(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise BadInputError(
                f"model file {location!r} does not exist (looked at {path.resolve()}); give the path to the .py file "
                "that defines the factory, or an importable dotted module name"
            )
        path = path.resolve()
        # A unique name per file, so two user files both called model.py do not replace each other.
        module_name = f"_attention_audit_foreign_{path.stem}_{abs(hash(str(path))):x}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise BadInputError(f"cannot import {str(path)!r} as Python; expected a .py file")
        module = importlib.util.module_from_spec(spec)
        # Registered before executing: dataclasses and pickling look the module up by name.
        sys.modules[module_name] = module
        # The file's own directory is importable while it runs, so it can import its sibling files.
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:
            sys.modules.pop(module_name, None)
            raise BadInputError(f"importing model file {str(path)!r} failed: {_first_line(error)}") from error
        finally:
            try:
                sys.path.remove(str(path.parent))
            except ValueError:
                pass
        return module
    if not _IDENTIFIER_PATH.match(location):
        raise BadInputError(f"{location!r} is neither an existing .py file nor a dotted module name")
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as error:
        raise BadInputError(
            f"module {location!r} cannot be imported ({_first_line(error)}); install it or give the path to a .py file"
        ) from error
    except (Exception, SystemExit) as error:
        raise BadInputError(f"importing module {location!r} failed: {_first_line(error)}") from error


def _resolve_factory(module: Any, location: str, factory: str) -> Any:
    """Look up a (possibly dotted) factory name in the imported module."""
    target: Any = module
    for part in factory.split("."):
        if not hasattr(target, part):
            available = sorted(name for name, value in vars(module).items()
                               if callable(value) and not name.startswith("_")
                               and getattr(value, "__module__", None) == module.__name__)
            raise BadInputError(
                f"{location!r} defines no factory {factory!r}; callables defined there: {_listing(available)}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise BadInputError(f"{factory!r} in {location!r} is a {type(target).__name__}, not a callable factory")
    return target


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """Read a state dict without running code from the file.

    ``.safetensors`` holds tensors only. Everything else goes through
    ``torch.load(weights_only=True)``, whose restricted unpickler raises
    UnpicklingError *before* calling any function a malicious pickle names.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise BadInputError(f"cannot read safetensors weights {str(path)!r}: {_first_line(error)}") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BadInputError(
            f"refused to load weights {str(path)!r}: it is a pickle that would run code or build objects other than "
            "tensors; save plain weights with torch.save(model.state_dict(), path) or as .safetensors"
        ) from error
    except (Exception, SystemExit) as error:
        raise BadInputError(
            f"cannot read weights {str(path)!r} ({_first_line(error)}); expected a file written by "
            "torch.save(model.state_dict(), path) or a .safetensors file"
        ) from error
    if isinstance(loaded, Mapping):
        for key in WRAPPED_STATE_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping):
        raise BadInputError(
            f"weights {str(path)!r} hold a {type(loaded).__name__}, expected a state dict (name -> tensor); "
            "save with torch.save(model.state_dict(), path)"
        )
    not_tensors = [str(key) for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise BadInputError(
            f"weights {str(path)!r} are not a state dict: entries {_listing(not_tensors, 5)} are not tensors; "
            f"expected name -> tensor, optionally wrapped under {' or '.join(map(repr, WRAPPED_STATE_KEYS))}"
        )
    return loaded


def _load_weights(model: nn.Module, weights: str) -> None:
    """Load strictly: a silently half-loaded model would make every audit number meaningless."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BadInputError(f"weights file {weights!r} does not exist (looked at {path.resolve()})")
    state = _read_state_dict(path)
    expected = set(model.state_dict())
    given = set(state)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected key {unexpected[0]!r}"
                         + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        raise BadInputError(
            f"weights {weights!r} do not fit the model built by the factory: {'; '.join(parts)}; "
            "check that the factory builds the same architecture the weights were saved from"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), _first_line(error))
        raise BadInputError(f"weights {weights!r} do not fit the model: {detail}") from error


def build_foreign_model(spec: str, *, weights: str | None = None) -> torch.nn.Module:
    """Import the user's factory, call it with no arguments, load weights if given; model in eval().

    The factory is the user's own code, run because they asked for it; the
    weights file is data and never gets to run code.
    """
    location, factory_name = parse_model_spec(spec)
    module = _import_user_module(location)
    factory = _resolve_factory(module, location, factory_name)
    try:
        model = factory()
    except (Exception, SystemExit) as error:
        raise BadInputError(f"factory {factory_name}() from {location!r} raised {_first_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise BadInputError(
            f"factory {factory_name}() from {location!r} returned a {type(model).__name__}, "
            "expected a torch.nn.Module; make the factory return the model instance"
        )
    if weights is not None:
        _load_weights(model, weights)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# The token map
# --------------------------------------------------------------------------------------------------------------


def _build_token_map(input_kind: str, input_shape: tuple[int, ...], cls_token: str,
                     patch_size: int | None) -> TokenMap:
    """Which token covers each input position, from how the model tokenises its input."""
    if input_kind not in INPUT_KINDS:
        raise BadInputError(f"input kind {input_kind!r} is unknown; expected one of {', '.join(INPUT_KINDS)}")
    if cls_token not in CLS_TOKENS:
        raise BadInputError(f"cls token {cls_token!r} is unknown; expected one of {', '.join(CLS_TOKENS)}")
    if any(int(size) < 1 for size in input_shape):
        raise BadInputError(f"input shape {input_shape} has an empty axis; every size must be at least 1")
    offset = 1 if cls_token == "first" else 0
    cls_index = 0 if cls_token == "first" else None
    if input_kind != "image" and patch_size is not None:
        raise BadInputError(f"--patch-size applies to image inputs only, got it with input kind {input_kind!r}")
    if input_kind == "tabular":
        if len(input_shape) != 1:
            raise BadInputError(f"tabular input needs shape (features,), got {input_shape}")
        (features,) = input_shape
        return TokenMap(torch.arange(features) + offset, features + offset, cls_index)
    if input_kind == "sequence":
        if len(input_shape) != 2:
            raise BadInputError(f"sequence input needs shape (time steps, features), got {input_shape}")
        steps, features = input_shape
        token_of_input = (torch.arange(steps) + offset).unsqueeze(1).expand(steps, features).contiguous()
        return TokenMap(token_of_input, steps + offset, cls_index)
    if len(input_shape) != 3:
        raise BadInputError(f"image input needs shape (channels, height, width), got {input_shape}")
    channels, height, width = input_shape
    if patch_size is None:
        raise BadInputError("image input needs --patch-size: the side of the square patch each token covers")
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise BadInputError(
            f"patch size {patch_size} does not tile a {height}x{width} image; height and width must both be "
            "divisible by it"
        )
    rows = torch.arange(height) // patch_size
    cols = torch.arange(width) // patch_size
    patches = rows.unsqueeze(1) * (width // patch_size) + cols.unsqueeze(0) + offset
    token_of_input = patches.unsqueeze(0).expand(channels, height, width).contiguous()
    return TokenMap(token_of_input, (height // patch_size) * (width // patch_size) + offset, cls_index)


# --------------------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------------------


def is_self_attention(query: Any, key: Any, value: Any) -> bool:
    """Whether one call of an attention module attends a sequence over itself: query, key and value are
    the same tensor (``nn.TransformerEncoderLayer`` calls ``self_attn(x, x, x)``). A learned query attending
    over tokens (attention pooling) or a decoder attending over memory (cross-attention) is not an encoder
    layer: its weights are not (tokens x tokens) over the input's tokens."""
    return isinstance(query, torch.Tensor) and query is key and key is value


class _MultiheadAttentionCapture:
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
        self.cls_token = cls_token
        self.patch_size = None if patch_size is None else int(patch_size)
        self.attention_modules = list(attention_modules)
        self.logits_key = None if logits_key is None else str(logits_key)
        self.token_map = _build_token_map(input_kind, self.input_shape, cls_token, self.patch_size)

        named = dict(model.named_modules())
        unknown = [name for name in self.attention_modules if name not in named]
        if unknown:
            valid = [name for name in named if name]
            likely = [name for name in valid if "att" in name.lower()]
            suggestions = likely + [name for name in valid if name not in likely]
            raise BadInputError(
                f"--attention-module {unknown[0]!r} is not a submodule of the model; valid names include: "
                f"{_listing(suggestions)}"
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
                    f"the model returns a dict with keys {_listing(keys)}; pass --logits-key naming the logits"
                )
            if self.logits_key not in output:
                raise BadInputError(
                    f"--logits-key {self.logits_key!r} is not among the model's output keys: {_listing(keys)}"
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
                    capture = _MultiheadAttentionCapture(captured, name, module,
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
                f"no attention found: the model's nn.MultiheadAttention modules {_listing(ignored)} do not attend "
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
        got = f"{shape[-2]}x{shape[-1]}"
        cls = " + 1 CLS" if self.cls_token == "first" else ""
        if self.input_kind == "image":
            _, height, width = self.input_shape
            grid = f"({height}/{self.patch_size})*({width}/{self.patch_size}) patches{cls}"
            hint = "check --patch-size and --cls-token (first if the model prepends a CLS token, none if it pools)"
        elif self.input_kind == "sequence":
            grid = f"{self.input_shape[0]} time steps{cls}"
            hint = "use --cls-token first if the model prepends a CLS token, none if it mean-pools"
        else:
            grid = f"{self.input_shape[0]} features{cls}"
            hint = "use --cls-token first if the model prepends a CLS token, none if it mean-pools"
        return (f"attention from {name!r} covers {got} tokens, expected {self.token_map.n_tokens} "
                f"({grid}); {hint}")


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


# --------------------------------------------------------------------------------------------------------------
# Editing the attention weights inside nn.MultiheadAttention (the sanity checks' interventions)
# --------------------------------------------------------------------------------------------------------------


def multihead_edit_unsupported(module: nn.Module) -> str | None:
    """Why :func:`edited_multihead_attention` cannot recompute this module's output, or None when it can."""
    if not isinstance(module, nn.MultiheadAttention):
        return f"a {type(module).__name__} is not an nn.MultiheadAttention"
    if module.bias_k is not None or module.add_zero_attn:
        return "it appends bias or zero keys (add_bias_kv / add_zero_attn) that are not tokens"
    return None


def multihead_allowed_keys(weights: torch.Tensor, key_padding_mask: torch.Tensor | None,
                           attn_mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, heads, queries, keys) booleans: True where a query may attend a key.

    Boolean masks block where True; float masks are added to the scores, and a key counts as allowed
    where the softmax of the masks alone leaves it a non-zero weight (so -inf and -1e9 both block).
    """
    batch, heads, queries, keys = weights.shape
    scores = torch.zeros(batch, heads, queries, keys, dtype=torch.float32, device=weights.device)
    if attn_mask is not None:  # (L, S), or (batch * heads, L, S)
        additive = _additive_mask(attn_mask, weights.device)
        scores = scores + (additive if additive.ndim == 2 else additive.reshape(-1, heads, queries, keys))
    if key_padding_mask is not None:  # (batch, S)
        scores = scores + _additive_mask(key_padding_mask, weights.device).reshape(batch, 1, 1, keys)
    return torch.softmax(scores, dim=-1) > 0


def _additive_mask(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=device).masked_fill(mask.to(device), -torch.inf)
    return mask.to(device, torch.float32)


class _MultiheadAttentionEdit(_MultiheadAttentionCapture):
    """Hooks that replace one ``nn.MultiheadAttention``'s output by the one its edited weights give.

    The pre-hook (the capture's) asks the module for its per-head weights; the forward hook applies
    ``edit(weights, allowed)`` and recomputes the output from the module's own value and output
    projections, ``out_proj(edited @ (value W_v + b_v))`` per head, without dropout (the sanity checks run
    the model in eval mode), and hands the caller the weights it asked for, edited.
    """

    def __init__(self, module: nn.MultiheadAttention, edit) -> None:
        # the modules to edit were chosen as layers already: edit every call, self-attention or not
        super().__init__([], "", module, always=True)
        self.edit = edit

    def edit_hook(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
        requested = self.requested.pop() if self.requested else None
        if not requested:
            return None  # a call the pre-hook could not bind: the module reports it itself
        arguments = self.signature.bind(*args, **kwargs).arguments
        weights, value = output[1], arguments["value"]
        key_padding_mask = arguments.get("key_padding_mask")
        attn_mask = arguments.get("attn_mask")
        batched = weights.ndim == 4
        if not batched:  # unbatched call: (heads, L, S) weights, (S, E) value
            weights, value = weights.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not module.batch_first:
            value = value.transpose(0, 1)
        batch, heads, queries, keys = weights.shape
        edited = self.edit(weights, multihead_allowed_keys(weights, key_padding_mask, attn_mask))
        dim = module.embed_dim
        if module._qkv_same_embed_dim:
            value_weight = module.in_proj_weight[2 * dim:]
        else:
            value_weight = module.v_proj_weight
        value_bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * dim:]
        values = torch.nn.functional.linear(value, value_weight, value_bias)
        values = values.reshape(batch, keys, heads, dim // heads).transpose(1, 2)
        mixed = (edited.to(values.dtype) @ values).transpose(1, 2).reshape(batch, queries, dim)
        out = module.out_proj(mixed)
        if not batched:
            out, edited = out[0], edited[0]
        elif not module.batch_first:
            out = out.transpose(0, 1)
        need, average = requested
        if not need:
            return out, None
        return out, edited.mean(dim=-3) if average else edited


@contextmanager
def edited_multihead_attention(modules: list[nn.MultiheadAttention], edit) -> Iterator[None]:
    """Run with ``edit(weights, allowed) -> weights`` applied inside every one of ``modules``.

    The fused fast path is off for the block (it would skip the hooks); hooks and the fast-path flag are
    restored in ``finally``, also when the model raises.
    """
    for module in modules:
        reason = multihead_edit_unsupported(module)
        if reason is not None:
            raise ValueError(f"cannot edit this module's attention: {reason}")
    handles = []
    previous_fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for module in modules:
            editor = _MultiheadAttentionEdit(module, edit)
            handles.append(module.register_forward_pre_hook(editor.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(editor.edit_hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(previous_fastpath)


def captured_attention_modules(detector: ForeignDetector, x: torch.Tensor) -> list[str]:
    """The names of the modules whose attention ``forward_with_attention`` reports, in call order (one entry
    per call), from one capture on ``x``; empty when the model reports its own attention."""
    if callable(getattr(detector.model, "forward_with_attention", None)):
        return []
    with torch.no_grad():
        _, captured = detector._capture(detector._to_raw(x))
    return [name for name, _ in captured]
