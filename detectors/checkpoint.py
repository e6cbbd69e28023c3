"""Checkpoints: one ``.safetensors`` file, weights plus JSON metadata in its header.

Tensors: the detector's state dict under ``model.<name>`` and the training
split's per-feature mean under ``audit.train_mean`` (the removal baseline of
the faithfulness metrics). Metadata: one header entry, ``attention_audit``,
holding a JSON object (see :func:`save_checkpoint` and the README). Loading
validates the metadata and never unpickles anything.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from detectors.base import Detector
from detectors.table import Scaler
from detectors.errors import BadInputError
from detectors.registry import DETECTORS, build_detector

if TYPE_CHECKING:
    from detectors.text_data import TextTokenizer

FORMAT_NAME = "attention-audit"
FORMAT_VERSION = 1
METADATA_KEY = "attention_audit"
MODEL_PREFIX = "model."
TRAIN_MEAN_KEY = "audit.train_mean"
_BLOCK_KEY = re.compile(r"encoder\.blocks\.(\d+)\.")  # detectors.blocks.Encoder's blocks in a state dict
REQUIRED = ("format", "format_version", "detector", "features", "classes", "scaler", "data", "defense")


@dataclass
class Checkpoint:
    detector: Detector
    metadata: dict
    train_mean: torch.Tensor | None

    @property
    def scaler(self) -> Scaler:
        return Scaler.from_dict(self.metadata["scaler"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["features"])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def categories(self) -> dict[str, list[str]]:
        """Categorical columns and their categories in training order; {} for a numeric model (and every
        checkpoint written before categorical columns existed)."""
        return {name: list(found) for name, found in (self.metadata.get("categorical") or {}).items()}

    @property
    def tokenizer(self) -> "TextTokenizer":
        """A text checkpoint's tokeniser, rebuilt from its JSON (parsed, no code runs)."""
        from detectors.text_data import TextTokenizer

        if "text" not in self.metadata:
            raise BadInputError(f"a {self.metadata['detector']['kind']} checkpoint has no tokeniser")
        text = self.metadata["text"]
        tokenizer = TextTokenizer.from_json(text["tokenizer"], text["max_length"])
        if tokenizer.vocab_size != self.detector.hparams()["vocab_size"]:
            raise BadInputError(f"the stored tokeniser has {tokenizer.vocab_size} tokens, the detector "
                                f"{self.detector.hparams()['vocab_size']}")
        return tokenizer


def save_checkpoint(path: str | os.PathLike, detector: Detector, *, metadata: dict,
                    train_mean: np.ndarray | None = None) -> None:
    """Write weights and metadata atomically (temporary file, then rename)."""
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
              "detector": {"kind": detector.kind, "hparams": detector.hparams()}, **metadata}
    missing = [key for key in REQUIRED if key not in header]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    tensors = {MODEL_PREFIX + name: value.detach().cpu().contiguous() for name, value in detector.state_dict().items()}
    if train_mean is not None:
        tensors[TRAIN_MEAN_KEY] = torch.as_tensor(np.asarray(train_mean, dtype=np.float32))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={METADATA_KEY: json.dumps(header)})
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def read_metadata(path: str | os.PathLike) -> dict:
    """The validated metadata of a checkpoint, without building the model."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"checkpoint {str(path)!r} is a directory; give the .safetensors file audit train wrote, "
                            "or hf:DIR for a folder written by Hugging Face's save_pretrained")
    if not path.is_file():
        raise BadInputError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata()
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(f"{path}: not a safetensors checkpoint ({_first_line(error)})") from None
    return _validate(path, header)


def load_checkpoint(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the detector from a checkpoint; weights must match its architecture exactly."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key[len(MODEL_PREFIX):]: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()
                      if key.startswith(MODEL_PREFIX)}
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(f"{path}: weights cannot be read ({_first_line(error)})") from None
    _check_against_weights(path, metadata["detector"], shapes)
    detector = build_detector(metadata["detector"]["kind"], metadata["detector"]["hparams"])
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            state = {key[len(MODEL_PREFIX):]: handle.get_tensor(key) for key in keys if key.startswith(MODEL_PREFIX)}
            train_mean = handle.get_tensor(TRAIN_MEAN_KEY) if TRAIN_MEAN_KEY in keys else None
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(f"{path}: weights cannot be read ({_first_line(error)})") from None
    detector.load_state_dict(state)
    detector.to(device).eval()
    n_features = len(metadata["features"])
    if train_mean is not None and train_mean.numel() != n_features:
        raise BadInputError(f"{path}: stored training mean has {train_mean.numel()} values for {n_features} features")
    return Checkpoint(detector=detector, metadata=metadata, train_mean=train_mean)


def _check_against_weights(path: Path, described: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse metadata that does not describe the weights in the file, before anything is allocated: a
    detector the metadata sizes absurdly (dim 1e9, depth 1e4) would otherwise be built first, and take
    gigabytes and minutes to fail. The blocks are counted in the file (a build on the meta device costs time
    per block); the rest is compared with a build on the meta device, which allocates nothing."""
    kind, hparams = described["kind"], described.get("hparams")
    blocks = {int(match.group(1)) for key in shapes if (match := _BLOCK_KEY.match(key))}
    if not isinstance(hparams, dict) or hparams.get("depth") != len(blocks):
        depth = hparams.get("depth") if isinstance(hparams, dict) else None
        raise BadInputError(f"{path}: the metadata's {kind} detector has depth {depth!r}, the weights hold "
                            f"{len(blocks)} blocks; the file is not a checkpoint audit train wrote, or was edited")
    try:
        with torch.device("meta"):
            expected = {name: tuple(value.shape) for name, value in build_detector(kind, hparams).state_dict().items()}
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise BadInputError(f"{path}: metadata describes a detector that cannot be built ({_first_line(error)})") \
            from None
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise BadInputError(f"{path}: weights do not match a {kind} detector (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]})")
    wrong = next((name for name in expected if expected[name] != shapes[name]), None)
    if wrong is not None:
        raise BadInputError(f"{path}: weight {wrong!r} has shape {shapes[wrong]}, the metadata's detector expects "
                            f"{expected[wrong]}")


def _validate(path: Path, header: dict | None) -> dict:
    if not header or METADATA_KEY not in header:
        raise BadInputError(f"{path}: a safetensors file but not an attention-audit checkpoint (no metadata)")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise BadInputError(f"{path}: checkpoint metadata is not valid JSON (the file is corrupted)") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise BadInputError(f"{path}: metadata is not of the {FORMAT_NAME} format")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BadInputError(f"{path}: checkpoint has no valid format_version")
    if version > FORMAT_VERSION:
        raise BadInputError(
            f"{path}: checkpoint format {version} is newer than this tool reads ({FORMAT_VERSION}); "
            "upgrade attention-audit"
        )
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise BadInputError(f"{path}: checkpoint metadata lacks {', '.join(missing)}")
    kind = metadata["detector"].get("kind") if isinstance(metadata["detector"], dict) else None
    if kind not in DETECTORS:
        raise BadInputError(f"{path}: unknown detector kind {kind!r}; known: {', '.join(sorted(DETECTORS))}")
    n_features = len(metadata["features"])
    if kind == "text":
        _validate_text(path, metadata)
        return metadata
    scaler = metadata["scaler"]
    if not (isinstance(scaler, dict) and len(scaler.get("lo", ())) == n_features == len(scaler.get("hi", ()))):
        raise BadInputError(f"{path}: scaler does not cover the checkpoint's {n_features} features")
    _validate_categories(path, metadata)
    return metadata


def _validate_categories(path: Path, metadata: dict) -> None:
    """``categorical`` maps feature names to lists of distinct category names, as many as the detector embeds."""
    categorical = metadata.get("categorical") or {}
    counts = (metadata["detector"].get("hparams") or {}).get("categories")
    features = list(metadata["features"])
    if not isinstance(categorical, dict) or any(
            name not in features or not isinstance(found, list) or not found
            or len(set(map(str, found))) != len(found) for name, found in categorical.items()):
        raise BadInputError(f"{path}: metadata 'categorical' must map feature names to lists of distinct categories")
    expected = [len(categorical.get(name, ())) for name in features]
    if (counts or any(expected)) and counts != expected:
        raise BadInputError(f"{path}: metadata 'categorical' ({expected}) does not match the detector's category "
                            f"counts ({counts})")


def _validate_text(path: Path, metadata: dict) -> None:
    """A text checkpoint holds its tokeniser (JSON) and a max_length matching the detector's."""
    text = metadata.get("text")
    hparams = metadata["detector"].get("hparams") or {}
    if not isinstance(text, dict) or not isinstance(text.get("tokenizer"), str):
        raise BadInputError(f"{path}: a text checkpoint without its tokeniser (metadata 'text.tokenizer')")
    if text.get("max_length") != hparams.get("max_length") or len(metadata["features"]) != text.get("max_length"):
        raise BadInputError(f"{path}: the tokeniser's max_length {text.get('max_length')} does not match the "
                            f"detector's {hparams.get('max_length')}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
