"""A model this tool did not train, with its data: a ``python:`` model (bounds, class probing and label
mapping, the checks that its attention can be captured) or an ``hf:`` directory (a Hugging Face classifier
saved with ``save_pretrained``, :mod:`detectors.huggingface`), and the :class:`~auditor.run.subject.Subject` it
becomes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from auditor.run.subject import Subject, build_domain, check_long_text, sha256_of
from detectors.categorical import most_frequent_codes, raw_bounds
from detectors.data import load_table, stratified_subset
from detectors.table import Dataset
from detectors.devices import resolve_device
from detectors.errors import BadInputError
from detectors.huggingface import is_huggingface
from detectors.inputs import INPUT_KINDS, kind_named

@dataclass(frozen=True)
class ForeignOptions:
    """How to read a model this tool did not train (``--model python:PATH:FACTORY``)."""

    weights: str | None = None
    input_kind: str | None = None
    patch_size: int | None = None
    cls_token: str = "first"
    attention_modules: tuple[str, ...] = ()
    logits_key: str | None = None
    bounds: tuple[float, float] | None = None
    bounds_file: str | None = None
    positive_class: str | None = None


def is_foreign(model: str) -> bool:
    return model.startswith("python:") or is_huggingface(model)


def load_foreign_subject(model_spec: str, options: ForeignOptions, *, data_spec: str | None, label_column: str,
                         max_samples: int, seed: int, device_name: str,
                         frozen_features: tuple[str, ...] | None = None, text_column: str = "text",
                         on_long_text: str = "truncate") -> Subject:
    """A user's own model with its data: the data reaches the model exactly as read, never rescaled.

    The attacks and explainers work in [0, 1] units of each input position's range (the data's minimum
    and maximum unless ``--bounds``/``--bounds-file`` say otherwise); the wrapper maps those units back to
    the model's own before every call, so eps means the same fraction of a range as for checkpoints.
    """
    from detectors.foreign import PATH_TOLERANCE, ForeignDetector, check_input_fits, logit_path_difference
    from detectors.foreign_loading import build_foreign_model

    if is_huggingface(model_spec):
        return load_huggingface_subject(model_spec, options, data_spec=data_spec, label_column=label_column,
                                        max_samples=max_samples, seed=seed, device_name=device_name,
                                        frozen_features=frozen_features, text_column=text_column,
                                        on_long_text=on_long_text)
    if data_spec is None:
        raise BadInputError("a python: model brings no data of its own; pass --data with the rows to audit")
    if options.input_kind is None:
        raise BadInputError(f"a python: model needs --input-kind {'|'.join(INPUT_KINDS)} to map tokens to inputs")
    if options.input_kind == "text":
        raise BadInputError("--input-kind text: a python: model's tokeniser cannot be read from it; audit text "
                            "models trained by audit train --detector text, or Hugging Face ones as hf:DIR")
    device = resolve_device(device_name)
    table = load_table(data_spec, label_column=label_column, positive_class=options.positive_class)
    kind = kind_named(options.input_kind)
    if len(table.input_shape) != kind.rank:
        raise BadInputError(f"--input-kind {kind.name} expects samples of rank {kind.rank}, "
                            f"but {table.name} holds samples of shape {table.input_shape}")
    raw = table.x
    lo, hi = with_category_bounds(*_foreign_bounds(raw, options, table.input_shape), table)
    if (raw < lo - 1e-9).any() or (raw > hi + 1e-9).any():
        raise BadInputError("the data lies outside --bounds; widen the bounds or leave them out "
                            "(each feature's minimum and maximum over the data)")
    model = build_foreign_model(model_spec, weights=options.weights)
    n_classes = _probe_classes(model, raw[:2], options.logits_key)
    class_names, y = _foreign_labels(table, n_classes)
    detector = ForeignDetector(
        model, input_shape=table.input_shape, n_classes=n_classes, input_kind=options.input_kind,
        cls_token=options.cls_token, patch_size=options.patch_size,
        attention_modules=list(options.attention_modules), logits_key=options.logits_key,
        lo=torch.as_tensor(lo, dtype=torch.float32), hi=torch.as_tensor(hi, dtype=torch.float32),
    ).to(device).eval()
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scaled = ((raw - lo) / span).astype(np.float32)
    data = Dataset(name=table.name, split="all", x=scaled, y=y, feature_names=list(table.feature_names),
                   class_names=class_names, positive_class=table.positive_class if n_classes == 2 else None,
                   relevant_features=table.relevant_features, relevant_mask=table.relevant_mask,
                   categories=dict(table.categories))
    sample = torch.as_tensor(data.x[:2], device=device)
    check_input_fits(detector, sample)
    with torch.no_grad():
        detector.forward_with_attention(sample)  # no attention, or tokens that do not fit: say so before auditing
    data = stratified_subset(data, max_samples, seed=seed)
    check_long_text(data, on_long_text)
    audited = torch.as_tensor(data.x, device=device)
    difference = logit_path_difference(detector, audited)
    if difference > PATH_TOLERANCE:
        raise BadInputError(
            f"the model's logits with attention capture differ from its plain logits by up to {difference:.3g} "
            f"(tolerance {PATH_TOLERANCE:g}) on the audited rows, so the clean metrics and the attention attacks "
            "would judge two different models; make the model's forward the same with and without "
            "need_weights=True (or give it forward_with_attention)")
    with torch.no_grad():
        layers, ignored = detector.attention_layers(audited[:2])
    identity = Path(options.weights) if options.weights else Path(parse_location(model_spec))
    model_info = {
        "path": model_spec + (f" (weights {options.weights})" if options.weights else ""),
        "sha256": sha256_of(identity) if identity.is_file() else "n/a", "detector": "foreign",
        "defense": "unknown", "data set": table.name, "hparams": detector.hparams(), "training": {},
        "attention_modules": layers, "ignored_attention_modules": ignored,
        "attention_path_max_abs_logit_diff": difference,
    }
    baseline = torch.as_tensor(most_frequent_codes(data.x, data.feature_names, data.categories), device=device)
    frozen = tuple(frozen_features or ())
    domain = build_domain(table.input_shape, list(table.feature_names), frozen=frozen, categories=table.categories)
    return Subject(detector=detector, data=data, baseline=baseline, model_info=model_info, device=device,
                   domain=domain, frozen_features=frozen)


def with_category_bounds(lo: np.ndarray, hi: np.ndarray, table) -> tuple[np.ndarray, np.ndarray]:
    """The bounds with each categorical column's set so that its scaled value is its category's code
    (:mod:`detectors.categorical`): the model still receives the category's index, and every attack keeps the
    column frozen (a python: model has no category embeddings for ``pgd-categorical`` to rank)."""
    if not table.categories:
        return lo, hi
    lo, hi = lo.copy(), hi.copy()
    for name, found in table.categories.items():
        lo[table.feature_names.index(name)], hi[table.feature_names.index(name)] = raw_bounds(len(found))
    return lo, hi


def parse_location(model_spec: str) -> str:
    from detectors.foreign_loading import parse_model_spec

    return parse_model_spec(model_spec)[0]


def _foreign_bounds(raw: np.ndarray, options: ForeignOptions, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    if options.bounds is not None and options.bounds_file is not None:
        raise BadInputError("give --bounds or --bounds-file, not both")
    if options.bounds is not None:
        lo, hi = options.bounds
        return np.full(shape, lo, dtype=np.float64), np.full(shape, hi, dtype=np.float64)
    if options.bounds_file is not None:
        try:
            payload = json.loads(Path(options.bounds_file).read_text(encoding="utf-8"))
            lo = np.broadcast_to(np.asarray(payload["lo"], dtype=np.float64).reshape(-1), (int(np.prod(shape)),))
            hi = np.broadcast_to(np.asarray(payload["hi"], dtype=np.float64).reshape(-1), (int(np.prod(shape)),))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BadInputError(f"--bounds-file {options.bounds_file}: expected JSON {{\"lo\": [...], \"hi\": [...]}} "
                                f"with one value or one per input position ({error})") from None
        lo, hi = lo.reshape(shape).copy(), hi.reshape(shape).copy()
        if (hi < lo).any():
            raise BadInputError(f"--bounds-file {options.bounds_file}: some hi values are below their lo")
        return lo, hi
    return raw.min(axis=0).astype(np.float64), raw.max(axis=0).astype(np.float64)


def _probe_classes(model: torch.nn.Module, raw: np.ndarray, logits_key: str | None) -> int:
    """The number of classes, read off the width of the model's logits on two samples."""
    with torch.no_grad():
        try:
            output = model(torch.as_tensor(raw, dtype=torch.float32))
        except Exception as error:  # the user's model: any failure here means the data does not fit it
            raise BadInputError(f"the data's shape {tuple(raw.shape[1:])} does not fit the model: "
                                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if isinstance(output, dict):
        output = output.get(logits_key) if logits_key is not None else None
    elif isinstance(output, (tuple, list)) and output:
        output = output[int(logits_key)] if logits_key and logits_key.isdigit() and int(logits_key) < len(output) \
            else output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise BadInputError("cannot find (batch, classes) logits in the model's output; name them with --logits-key")
    return int(output.shape[1])


def _foreign_labels(table, n_classes: int) -> tuple[list[str], np.ndarray]:
    """Integer labels index the model's logits directly; other labels map to classes in sorted order."""
    names = list(table.class_names)
    try:
        as_int = [int(float(name)) for name in names]
        integral = all(float(name) == int(float(name)) for name in names)
    except ValueError:
        integral = False
    if integral:
        if min(as_int) < 0 or max(as_int) >= n_classes:
            raise BadInputError(f"labels {sorted(as_int)} do not index the model's {n_classes} logits")
        return [str(i) for i in range(n_classes)], np.array([as_int[i] for i in table.y], dtype=np.int64)
    if len(names) > n_classes:
        raise BadInputError(f"the data has {len(names)} classes but the model outputs {n_classes} logits")
    return names + [f"class {i}" for i in range(len(names), n_classes)], table.y.astype(np.int64)


# the options of python: models that an hf: directory answers itself (its config, processor and tokenizer)
PYTHON_ONLY = {"weights": "--weights", "input_kind": "--input-kind", "patch_size": "--patch-size",
               "attention_modules": "--attention-module", "logits_key": "--logits-key", "bounds": "--bounds",
               "bounds_file": "--bounds-file"}


def load_huggingface_subject(model_spec: str, options: ForeignOptions, *, data_spec: str | None, label_column: str,
                             max_samples: int, seed: int, device_name: str,
                             frozen_features: tuple[str, ...] | None = None, text_column: str = "text",
                             on_long_text: str = "truncate") -> Subject:
    """A Hugging Face classifier (``hf:DIR``) with its data: messages for a text model (encoded with the
    directory's tokenizer; longer ones than it takes truncated and counted, or refused: ``on_long_text``), images for an image model (pixels in [0, 1], or stored 0-255 and brought there by
    the processor's ``rescale_factor``). Labels go through :func:`huggingface_labels`."""
    from detectors.foreign import PATH_TOLERANCE, logit_path_difference
    from detectors.huggingface import (HuggingFaceImageDetector, HuggingFaceTextDetector, load_preprocess,
                                       load_pretrained, load_tokenizer)

    given = [flag for name, flag in PYTHON_ONLY.items() if getattr(options, name) not in (None, ())]
    if options.cls_token != "first":
        given.append("--cls-token")
    if given:
        raise BadInputError(f"{', '.join(given)} apply to python: models only; an hf: model's folder says how its "
                            "tokens map to inputs")
    if data_spec is None:
        raise BadInputError("an hf: model brings no data of its own; pass --data with the rows to audit")
    device = resolve_device(device_name)
    model, family, path = load_pretrained(model_spec)
    if family.input == "text":
        from detectors.inputs.text import TokenIds
        from detectors.text_data import load_text_table, text_dataset

        table = load_text_table(data_spec, text_column=text_column, label_column=label_column,
                                positive_class=options.positive_class)
        class_names, y, positive = huggingface_labels(table.class_names, table.y, table.positive_class, model.config)
        detector = HuggingFaceTextDetector(model, family, load_tokenizer(path, model, table.texts))
        data = text_dataset(table, np.arange(len(table)), detector.tokenizer, "all")
        data.y, data.class_names, data.positive_class = y, class_names, positive
        baseline = TokenIds.of(detector.tokenizer).as_baseline().to(device)
        domain = None
        if frozen_features:
            raise BadInputError("--frozen-features names tabular features; text has none")
    else:
        table = load_table(data_spec, label_column=label_column, positive_class=options.positive_class)
        if len(table.input_shape) != 3:
            raise BadInputError(f"an hf: image model audits (N, C, H, W) images (.npz or digits); {table.name} holds "
                                f"samples of shape {table.input_shape}")
        preprocess, factor = load_preprocess(path, model.config, table.input_shape)
        pixels = _unit_pixels(table.x, factor, table.name)
        class_names, y, positive = huggingface_labels(table.class_names, table.y, table.positive_class, model.config)
        detector = HuggingFaceImageDetector(model, family, preprocess, table.input_shape)
        data = Dataset(name=table.name, split="all", x=pixels, y=y, feature_names=list(table.feature_names),
                       class_names=class_names, positive_class=positive,
                       relevant_features=table.relevant_features, relevant_mask=table.relevant_mask)
        baseline = torch.as_tensor(pixels.mean(axis=0), device=device)
        frozen = tuple(frozen_features or ())
        domain = build_domain(table.input_shape, list(table.feature_names), frozen=frozen)
    detector = detector.to(device).eval()
    data = stratified_subset(data, max_samples, seed=seed)
    check_long_text(data, on_long_text)
    audited = torch.as_tensor(data.x, device=device)
    difference = logit_path_difference(detector, audited)
    if difference > PATH_TOLERANCE:
        raise BadInputError(f"the model's logits with output_attentions differ from its plain logits by up to "
                            f"{difference:.3g} (tolerance {PATH_TOLERANCE:g}); the attention read is not the one "
                            "that decides")
    weights = path / "model.safetensors"
    model_info = {
        "path": model_spec, "sha256": sha256_of(weights) if weights.is_file() else "n/a", "detector": "huggingface",
        "defense": "unknown", "data set": table.name, "hparams": detector.hparams(), "training": {},
        "attention_modules": [name for name, _ in detector.attention_modules()], "ignored_attention_modules": [],
        "attention_path_max_abs_logit_diff": difference,
    }
    text = family.input == "text"
    return Subject(detector=detector, data=data, baseline=baseline, model_info=model_info, device=device,
                   domain=domain, frozen_features=() if text else tuple(frozen_features or ()),
                   input_kind="text" if text else None, tokenizer=detector.tokenizer if text else None)


def _unit_pixels(raw: np.ndarray, factor: float | None, name: str) -> np.ndarray:
    """Pixels in [0, 1]: as stored, or stored in the processor's units (0-255) and multiplied by its
    ``rescale_factor``; anything else refused."""
    if raw.size and raw.min() < 0:
        raise BadInputError(f"{name} holds negative pixels; an hf: image model audits pixels in [0, 1] (or 0-255)")
    if raw.size and raw.max() > 1:
        if factor is None or raw.max() * factor > 1 + 1e-6:
            raise BadInputError(f"{name} holds pixels up to {raw.max():g}; an hf: image model audits pixels in [0, 1], "
                                "or 0-255 with a processor that rescales them (do_rescale)")
        raw = raw * factor
    return np.clip(raw, 0.0, 1.0).astype(np.float32)


def huggingface_labels(names: list[str], y: np.ndarray, positive: int | None, config
                       ) -> tuple[list[str], np.ndarray, int | None]:
    """(class names, labels, positive class) in the model's logit order: integer labels index the logits, any
    other label must be one of ``config.id2label``'s names; a label that is neither is refused, named."""
    n_classes = int(config.num_labels)
    model_names = [str(config.id2label.get(i, i)) for i in range(n_classes)]
    try:
        integral = all(float(name) == int(float(name)) for name in names)
    except ValueError:
        integral = False
    if integral:
        index = [int(float(name)) for name in names]
        outside = [name for name, i in zip(names, index) if not 0 <= i < n_classes]
        if outside:
            raise BadInputError(f"label {outside[0]!r} does not index the model's {n_classes} logits")
    else:
        unknown = [name for name in names if name not in model_names]
        if unknown:
            raise BadInputError(f"label {unknown[0]!r} is none of the model's labels (config.id2label: "
                                f"{', '.join(map(repr, model_names))}); relabel the data with those names or their "
                                "indices")
        index = [model_names.index(name) for name in names]
    remap = np.asarray(index, dtype=np.int64)
    kept = remap[positive] if positive is not None and n_classes == 2 else None
    return model_names, remap[np.asarray(y, dtype=np.int64)], None if kept is None else int(kept)
