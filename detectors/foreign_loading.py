"""Building the user's model from a spec ``python:PATH_OR_MODULE:FACTORY``: the user's own Python file (or an
importable dotted module) and a zero-argument factory that returns the ``nn.Module``. Weights, if given, are
loaded without ever running code from the weights file: ``.safetensors`` directly, anything else through
``torch.load(weights_only=True)``, which refuses pickles that would call arbitrary functions.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detectors.errors import BadInputError, short_listing

SPEC_PREFIX = "python:"
WRAPPED_STATE_KEYS = ("state_dict", "model_state_dict")
_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _first_line(error: BaseException) -> str:
    """One readable line from an exception: the CLI prints one line per bad input."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


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
                f"{location!r} defines no factory {factory!r}; callables defined there: {short_listing(available)}"
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
        # torch warns about a pickle protocol it was not written with before refusing the file: the refusal
        # below is the one line the user gets
        with warnings.catch_warnings(action="ignore"):
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
            f"weights {str(path)!r} are not a state dict: entries {short_listing(not_tensors, 5)} are not tensors; "
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
