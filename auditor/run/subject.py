"""What is audited: a checkpoint's detector with the rows to audit, validated against each other, and the
attacker's domain (:class:`Subject`). A model this tool did not train is loaded by ``auditor.run.foreign_subject``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from attacks import CategoryRule, Domain
from auditor.run.determinism import CHECK_ROWS, EOT_DRAWS, Determinism, ExpectedDetector, check_determinism
from detectors.base import Detector
from detectors.checkpoint import load_checkpoint
from detectors.data import align_table, is_builtin, load_table, split_table, stratified_subset
from detectors.table import Dataset
from detectors.devices import resolve_device
from detectors.errors import BadInputError
from detectors.inputs import InputKind, kind_named, kind_of_rank

if TYPE_CHECKING:
    from auditor.run.config import AuditConfig


@dataclass
class Subject:
    """What is audited: a detector, its data, its removal baseline and who it is.

    ``input_kind``: the kind's name where the rank does not say it (``text``; None: the kind of the data's
    rank). A text subject also holds its ``tokenizer`` (:class:`detectors.text_data.TextTokenizer`, which
    turns ids back into tokens for the report, and whose special ids a token attack must not touch:
    :class:`detectors.inputs.text.TokenIds`), its ``data.x`` the (N, T) int64 ids, its ``baseline``
    :meth:`TokenIds.as_baseline`, and its detector the :class:`detectors.inputs.text.TokenModel` surface
    (``attention_mask(ids)``, ``embed``, ``forward_embeddings``, ``embedding``)."""

    detector: Detector
    data: Dataset
    baseline: torch.Tensor
    model_info: dict
    device: torch.device
    domain: Domain | None = None
    frozen_features: tuple[str, ...] = ()
    # None until auditor.run.subject.settle checks it (a caller that knows may set it), then its findings
    deterministic: bool | None = None
    determinism: Determinism | None = None
    input_kind: str | None = None
    tokenizer: object | None = None
    token_domain: object | None = None  # text: the attacks.TokenDomain (special tokens, --substitutions), set by binding

    @property
    def kind(self) -> InputKind:
        return kind_named(self.input_kind) if self.input_kind else kind_of_rank(self.data.x.ndim - 1)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_domain(input_shape: tuple[int, ...], feature_names: list[str], *, frozen: tuple[str, ...] = (),
                 integer: list[str] | None = None, lo=None, hi=None, categories: dict[str, list[str]] | None = None,
                 mutable_categorical: tuple[str, ...] = (), category_budget: int = 1) -> Domain:
    """The attacker's space: [0, 1] box, frozen features by name, integer features rounded in raw units,
    categorical columns (``categories``) changed only by a discrete search, in ``mutable_categorical`` alone,
    at most ``category_budget`` per row."""
    categories = categories or {}
    wrong = [name for name in mutable_categorical if name not in categories]
    if wrong:
        raise BadInputError(f"--mutable-categorical: {', '.join(map(repr, wrong[:3]))} not among the model's "
                            f"categorical columns ({', '.join(map(repr, categories)) or 'none'})")
    rule = None
    if categories:
        names = [name for name in feature_names if name in categories]
        rule = CategoryRule(columns=tuple(feature_names.index(name) for name in names),
                            counts=tuple(len(categories[name]) for name in names),
                            mutable=tuple(name in mutable_categorical for name in names), budget=category_budget)
    unknown = [name for name in frozen if name not in feature_names]
    if unknown:
        raise BadInputError(f"--frozen-features: {', '.join(map(repr, unknown[:3]))} not among the model's features "
                            f"({', '.join(map(repr, feature_names[:6]))}{' ...' if len(feature_names) > 6 else ''})")
    frozen_mask = torch.tensor([name in frozen for name in feature_names]).reshape(input_shape)
    integer_mask = torch.tensor([name in (integer or ()) for name in feature_names]).reshape(input_shape)
    span = None if hi is None else np.where(np.asarray(hi) - np.asarray(lo) > 0, np.asarray(hi) - np.asarray(lo), 1.0)
    return Domain.unit(input_shape, frozen=frozen_mask, integer=integer_mask if integer else None, raw_lo=lo,
                       raw_span=span, categories=rule)


ON_OUT_OF_RANGE = ("clip", "refuse")


def check_out_of_range(data: Dataset, policy: str) -> None:
    """``refuse``: one line naming the first feature (in the model's order) with audited values outside the
    training range, instead of auditing them clipped to it (``clip``, counted in ``data.out_of_range``)."""
    if policy not in ON_OUT_OF_RANGE:
        raise BadInputError(f"--on-out-of-range {policy!r}: choose one of {', '.join(ON_OUT_OF_RANGE)}")
    found = data.out_of_range()
    if policy == "refuse" and found["rows"]:
        name, rows = next(iter(found["features"].items()))
        raise BadInputError(
            f"{found['rows']} of {len(data)} audited rows lie outside the checkpoint's training range, first in "
            f"feature {name!r} ({rows} rows); audit rows from that range, or pass --on-out-of-range clip to audit "
            "them clipped to it (counted in results.json data.out_of_range)")


ON_LONG_TEXT = ("truncate", "refuse")


def check_long_text(data: Dataset, policy: str) -> None:
    """``refuse``: one line naming the first audited message longer than the tokeniser's length, instead of
    auditing it truncated there (``truncate``, counted in ``data.truncated``): what is cut is never seen."""
    if policy not in ON_LONG_TEXT:
        raise BadInputError(f"--on-long-text {policy!r}: choose one of {', '.join(ON_LONG_TEXT)}")
    found = data.truncated()
    if policy == "refuse" and found and found["rows"]:
        first = int(np.flatnonzero(data.lengths > found["max_length"])[0])
        raise BadInputError(
            f"{found['rows']} of {len(data)} audited messages are longer than the model's {found['max_length']} "
            f"tokens, first message {int(data.row_index[first]) + 1} of {data.name} ({int(data.lengths[first])} tokens); "
            "shorten or split them, or pass --on-long-text truncate to audit them cut there (counted in "
            "results.json data.truncated)")


def load_subject(model_path: str, *, data_spec: str | None, label_column: str, max_samples: int, seed: int,
                 device_name: str, frozen_features: tuple[str, ...] | None = None,
                 on_out_of_range: str = "clip", text_column: str = "text", on_unseen_category: str = "map",
                 mutable_categorical: tuple[str, ...] = (), category_budget: int = 1,
                 on_long_text: str = "truncate") -> Subject:
    """The checkpoint's detector with the data to audit, validated against each other. ``frozen_features``:
    None for the checkpoint's own (recorded by ``audit train --frozen-features``), else these (``()``: none).
    Audited values outside the training range are clipped to it and counted, or refused (``on_out_of_range``).
    A category the checkpoint never saw is mapped to the unknown one and counted, or refused
    (``on_unseen_category``); ``mutable_categorical`` and ``category_budget`` say which categorical columns a
    discrete search may change, how many per row. A text checkpoint reads messages instead
    (:func:`load_text_subject`; longer ones than its length are
    truncated and counted, or refused: ``on_long_text``)."""
    device = resolve_device(device_name)
    checkpoint = load_checkpoint(model_path, device=device)
    meta = checkpoint.metadata
    if meta["detector"]["kind"] == "text":
        return load_text_subject(model_path, checkpoint, data_spec=data_spec, label_column=label_column,
                                 text_column=text_column, max_samples=max_samples, seed=seed, device=device,
                                 frozen_features=frozen_features, on_long_text=on_long_text)
    trained_on = meta["data"]
    if data_spec is None or _same_data(data_spec, trained_on["name"]):
        spec = trained_on["name"]
        if not is_builtin(spec) and not Path(spec).is_file():
            raise BadInputError(
                f"the checkpoint's training data {spec!r} is not readable here; pass --data with the rows to audit"
            )
        table = load_table(spec, label_column=trained_on.get("label_column", label_column),
                           seed=trained_on.get("generator_seed", 0), categorical_columns=tuple(checkpoint.categories))
        data = split_table(table, seed=trained_on["split_seed"]).test
        if table.categories != checkpoint.categories:
            raise BadInputError(f"the categories of {spec!r} are no longer those the checkpoint was trained on; "
                                "pass --data with the rows to audit")
    else:
        spec = data_spec
        table = load_table(spec, label_column=label_column, categorical_columns=tuple(checkpoint.categories))
        data = align_table(table, feature_names=checkpoint.feature_names, class_names=checkpoint.class_names,
                           scaler=checkpoint.scaler, categories=checkpoint.categories,
                           on_unseen_category=on_unseen_category)
    if data.feature_names != checkpoint.feature_names:
        raise BadInputError(
            f"expected the checkpoint's {len(checkpoint.feature_names)} features, the data has "
            f"{len(data.feature_names)}; pass --data with the same columns the model was trained on"
        )
    data.positive_class = meta.get("positive_class")
    data = stratified_subset(data, max_samples, seed=seed)
    if len(data) == 0:
        raise BadInputError(f"no rows to audit in {spec}")
    check_out_of_range(data, on_out_of_range)
    if checkpoint.train_mean is not None:
        baseline = checkpoint.train_mean.float()
    else:
        baseline = torch.as_tensor(data.x.mean(axis=0))
    model_info = _model_info(model_path, meta)
    scaler = checkpoint.scaler
    frozen = tuple(meta.get("frozen_features") or ()) if frozen_features is None else tuple(frozen_features)
    domain = build_domain(tuple(checkpoint.detector.input_shape), checkpoint.feature_names, frozen=frozen,
                          integer=meta.get("integer_features"), lo=scaler.lo, hi=scaler.hi,
                          categories=checkpoint.categories, mutable_categorical=tuple(mutable_categorical),
                          category_budget=category_budget)
    return Subject(detector=checkpoint.detector, data=data, baseline=baseline.to(device), model_info=model_info,
                   device=device, domain=domain, frozen_features=frozen)


def _model_info(model_path: str, meta: dict) -> dict:
    path = Path(model_path)
    return {
        "path": str(path), "sha256": sha256_of(path), "detector": meta["detector"]["kind"],
        "defense": meta["defense"].get("name", "none"), "data set": meta["data"]["name"],
        "hparams": meta["detector"]["hparams"], "training": meta.get("training", {}),
        "defense_settings": dict(meta["defense"]),
        # checkpoints written before the variants existed all used softmax
        "attention": meta["detector"]["hparams"].get("attention", "softmax"),
    }


def load_text_subject(model_path: str, checkpoint, *, data_spec: str | None, label_column: str, text_column: str,
                      max_samples: int, seed: int, device: torch.device,
                      frozen_features: tuple[str, ...] | None = None, on_long_text: str = "truncate") -> Subject:
    """A text checkpoint with the messages to audit: the test split of the corpus it was trained on
    (``data_spec`` None or the same), else ``phishing[:N]``, a ``.csv`` (text in ``text_column``) or a
    ``.jsonl`` file, encoded by the checkpoint's own tokeniser and labelled with its classes (a label it does
    not know, or a bad row, is bad input naming it)."""
    from detectors.inputs.text import TokenIds
    from detectors.text_data import align_text_table, load_text_table, split_text_table, text_dataset

    if frozen_features:
        raise BadInputError("--frozen-features names tabular features; a text model has none")
    meta = checkpoint.metadata
    trained_on = meta["data"]
    tokenizer = checkpoint.tokenizer
    if data_spec is None or _same_data(data_spec, trained_on["name"]):
        spec = trained_on["name"]
        if not is_builtin_text(spec) and not Path(spec).is_file():
            raise BadInputError(
                f"the checkpoint's training data {spec!r} is not readable here; pass --data with the messages to audit")
        table = load_text_table(spec, text_column=trained_on.get("text_column", text_column),
                                label_column=trained_on.get("label_column", label_column),
                                seed=trained_on.get("generator_seed", 0))
        rows = split_text_table(table, seed=trained_on["split_seed"]).test.row_index
        data = text_dataset(table, rows, tokenizer, "test")
        data.class_names = checkpoint.class_names
    else:
        spec = data_spec
        if Path(spec).suffix.lower() not in (".csv", ".jsonl") and not is_builtin_text(spec):
            raise BadInputError(f"a text model audits messages: pass --data phishing[:N], a .csv with a "
                                f"--text-column, or a .jsonl file, got {spec!r}")
        table = load_text_table(spec, text_column=text_column, label_column=label_column)
        data = align_text_table(table, tokenizer=tokenizer, class_names=checkpoint.class_names)
    data.positive_class = meta.get("positive_class")
    data = stratified_subset(data, max_samples, seed=seed)
    if len(data) == 0:
        raise BadInputError(f"no messages to audit in {spec}")
    check_long_text(data, on_long_text)
    return Subject(detector=checkpoint.detector, data=data, baseline=TokenIds.of(tokenizer).as_baseline().to(device),
                   model_info=_model_info(model_path, meta), device=device, domain=None, frozen_features=(),
                   input_kind="text", tokenizer=tokenizer)


def is_builtin_text(spec: str) -> bool:
    from detectors.text_data import TEXT_BUILTIN

    return spec.partition(":")[0] in TEXT_BUILTIN


def _same_data(spec: str, trained_on: str) -> bool:
    """Whether ``spec`` names the data the checkpoint was trained on (then its test split is audited)."""
    if spec == trained_on:
        return True
    if is_builtin(spec) or is_builtin(trained_on):
        return False
    return Path(spec).resolve() == Path(trained_on).resolve()


def settle(subject: Subject, config: AuditConfig) -> tuple[Subject, AuditConfig]:
    """Check ``subject``'s model (unless ``subject.deterministic`` is already known) and return the subject
    and configuration the audit runs: unchanged for a deterministic model; for one that is not, the detector
    behind :class:`ExpectedDetector` and the configuration marked ``randomised_model`` (AutoAttack's
    ``rand`` version)."""
    if subject.deterministic is None:
        x = torch.as_tensor(subject.data.x[:CHECK_ROWS], device=subject.device)
        found = check_determinism(subject.detector, x)
    else:
        found = Determinism(deterministic=subject.deterministic, max_abs_diff=0.0, rows=0)
    if found.deterministic:
        return replace(subject, deterministic=True, determinism=found), config
    found = replace(found, draws=EOT_DRAWS)
    return (replace(subject, detector=ExpectedDetector(subject.detector), deterministic=False, determinism=found),
            replace(config, randomised_model=True))
