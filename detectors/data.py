"""Data sets by name: the built-in ones (:mod:`detectors.builtin_sets`, no network) and user files.

Every data set is split with a seed (stratified) and scaled per feature to
[0, 1] by a :class:`~detectors.table.Scaler` fitted on the training split; the
scaler travels in the checkpoint, so an attack budget ``eps`` is a fraction of
each feature's range.

User files: ``.csv`` (tabular) and ``.npz`` with ``x`` of shape (N, C, H, W) or
(N, T, F) and ``y``; the input kind of the samples (:mod:`detectors.inputs`) names
and scales their positions.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from detectors.categorical import align_categories, raw_bounds, type_columns
from detectors.builtin_sets import (BUILTIN, FLOWS_DEFAULT_ROWS, SIZED, breast_cancer, digits, make_flows,
                                    make_mixed_flows, make_sequences)
from detectors.errors import BadInputError
from detectors.inputs import INPUT_KINDS, kind_of_rank
from detectors.table import Dataset, Scaler, Splits, Table

TEST_SHARE = 0.25
VALIDATION_SHARE = 0.15


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``flows:5000`` -> ("flows", 5000); ``breast-cancer`` -> ("breast-cancer", None)."""
    name, _, size = spec.partition(":")
    if name not in BUILTIN or not size:
        return spec, None
    if name not in SIZED:
        raise BadInputError(f"data set {name!r} has a fixed size; drop ':{size}'")
    try:
        rows = int(size)
    except ValueError:
        raise BadInputError(f"expected a row count after '{name}:', got {size!r} (e.g. {name}:5000)") from None
    if rows < 100:
        raise BadInputError(f"{name} needs at least 100 rows to split, got {rows}")
    return name, rows


def is_builtin(spec: str) -> bool:
    return parse_spec(spec)[0] in BUILTIN


def load_table(spec: str, *, label_column: str = "label", positive_class: str | None = None,
               seed: int = 0, categorical_columns: tuple[str, ...] = ()) -> Table:
    """Read a built-in set by name or a CSV file by path (unscaled); ``categorical_columns``: a CSV's columns
    read as categories even where they hold numbers (:mod:`detectors.categorical`)."""
    name, rows = parse_spec(spec)
    if name == "breast-cancer":
        table = breast_cancer()
    elif name == "flows":
        table = make_flows(rows or FLOWS_DEFAULT_ROWS, seed=seed)
    elif name == "flows-mixed":
        table = make_mixed_flows(rows or SIZED["flows-mixed"], seed=seed)
    elif name == "digits":
        table = digits()
    elif name == "sequences":
        table = make_sequences(rows or SIZED["sequences"], seed=seed)
    elif name.lower().endswith(".csv"):
        table = read_csv(Path(name), label_column=label_column, categorical_columns=categorical_columns)
    elif name.lower().endswith(".npz"):
        table = read_npz(Path(name))
    else:
        raise BadInputError(
            f"unknown data {spec!r}: expected one of {', '.join(BUILTIN)}, flows:N, flows-mixed:N, sequences:N, "
            "or a path ending in .csv or .npz"
        )
    if positive_class is not None:
        if positive_class not in table.class_names:
            raise BadInputError(
                f"--positive-class {positive_class!r} is not a class of {table.name}; "
                f"classes are {', '.join(map(repr, table.class_names))}"
            )
        table.positive_class = table.class_names.index(positive_class)
    return table


def split_table(table: Table, *, seed: int) -> Splits:
    """Stratified train / validation / test split; the scaler is fitted on train alone."""
    counts = np.bincount(table.y, minlength=len(table.class_names))
    if (counts > 0).sum() < 2:
        raise BadInputError(f"{table.name}: training needs at least two classes, found {int((counts > 0).sum())}")
    rows = np.arange(len(table.y))
    stratify = table.y if counts[counts > 0].min() >= 4 else None
    rest, test = train_test_split(rows, test_size=TEST_SHARE, random_state=seed, stratify=stratify)
    train, val = train_test_split(
        rest, test_size=VALIDATION_SHARE, random_state=seed,
        stratify=table.y[rest] if stratify is not None else None,
    )
    scaler = _with_category_bounds(Scaler.fit(table.x[train], table.scale_mode), table)

    def part(split: str, index: np.ndarray) -> Dataset:
        index = np.sort(index)
        return Dataset(
            name=table.name, split=split, x=scaler.transform(table.x[index]), y=table.y[index].astype(np.int64),
            feature_names=list(table.feature_names), class_names=list(table.class_names),
            positive_class=table.positive_class, relevant_features=table.relevant_features, row_index=index,
            relevant_mask=table.relevant_mask[index] if table.relevant_mask is not None else None,
            clipped=scaler.outside(table.x[index]), categories=dict(table.categories),
        )

    return Splits(train=part("train", train), val=part("val", val), test=part("test", test), scaler=scaler, seed=seed)


def _with_category_bounds(scaler: Scaler, table: Table) -> Scaler:
    """The scaler with each categorical column's bounds set so that it scales category indices to their codes."""
    if not table.categories:
        return scaler
    lo, hi = scaler.lo.copy(), scaler.hi.copy()
    for name, categories in table.categories.items():
        column = table.feature_names.index(name)
        lo[column], hi[column] = raw_bounds(len(categories))
    return Scaler(lo=lo, hi=hi)


def stratified_subset(data: Dataset, max_samples: int, *, seed: int) -> Dataset:
    """A seeded, stratified subset of ``max_samples`` rows, in their original order. Fewer rows than the data
    has classes cannot hold every class: refused (BadInputError) rather than an audit missing some classes."""
    if max_samples <= 0 or len(data) <= max_samples:
        return data
    counts = np.bincount(data.y)
    present = int((counts > 0).sum())
    if max_samples < present:
        raise BadInputError(f"--max-samples {max_samples} is below the {present} classes of the data; pass at least "
                            f"{present} (or 0 for every row) so that every class is audited")
    stratify = data.y if counts[counts > 0].min() >= 2 else None
    chosen, _ = train_test_split(np.arange(len(data)), train_size=max_samples, random_state=seed, stratify=stratify)
    return data.subset(np.sort(chosen))


def align_table(table: Table, *, feature_names: list[str], class_names: list[str], scaler: Scaler,
                categories: dict[str, list[str]] | None = None, on_unseen_category: str = "map") -> Dataset:
    """Scale a table read for auditing with a checkpoint's scaler, matching columns by name (tabular) or
    requiring the checkpoint's sample shape (images, sequences: inputs without named columns). Categorical
    columns are re-indexed into the checkpoint's ``categories``, a category it never saw mapped to the unknown
    one or refused (``on_unseen_category``, :func:`detectors.categorical.align_categories`)."""
    by_name = kind_of_rank(len(table.input_shape)).named_columns and scaler.lo.ndim == 1
    if not by_name:
        if table.input_shape != scaler.lo.shape:
            raise BadInputError(
                f"expected samples of shape (N, {', '.join(map(str, scaler.lo.shape))}) to match the checkpoint, "
                f"got {tuple(table.x.shape)}; pass --data with the same kind of data the model was trained on"
            )
        table = replace(table, feature_names=list(feature_names))
    missing = [name for name in feature_names if name not in table.feature_names]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise BadInputError(
            f"expected x of shape (N, {len(feature_names)}) to match the checkpoint's {len(feature_names)} features, "
            f"got (N, {len(table.feature_names)}) and {len(missing)} missing: {shown}; "
            "pass --data with the same columns the model was trained on"
        )
    order = [table.feature_names.index(name) for name in feature_names]
    x = table.x[:, order] if by_name else table.x
    unseen = None
    if by_name and (categories or table.categories):
        x, unseen = align_categories(x, feature_names, table.categories, categories or {}, source=table.name,
                                     policy=on_unseen_category)
    unknown = sorted(set(table.class_names[i] for i in np.unique(table.y)) - set(class_names))
    if unknown:
        raise BadInputError(
            f"labels {', '.join(map(repr, unknown))} in {table.name} are not classes of the checkpoint "
            f"({', '.join(map(repr, class_names))})"
        )
    remap = np.array([class_names.index(name) if name in class_names else -1 for name in table.class_names])
    return Dataset(
        name=table.name, split="all", x=scaler.transform(x), y=remap[table.y].astype(np.int64),
        feature_names=list(feature_names), class_names=list(class_names), positive_class=None,
        relevant_features=table.relevant_features, relevant_mask=table.relevant_mask, clipped=scaler.outside(x),
        categories=dict(categories or {}), unseen=unseen,
    )


def read_npz(path: Path) -> Table:
    """``x`` (N, C, H, W) images or (N, T, F) sequences (the input kinds read from .npz files), ``y`` labels;
    optional ``class_names``."""
    if not path.is_file():
        raise BadInputError(f"data file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise BadInputError(f"{path}: expected arrays 'x' and 'y', found {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
            names = [str(n) for n in archive["class_names"]] if "class_names" in archive else None
    except (OSError, ValueError) as error:
        raise BadInputError(f"{path}: not a readable .npz file ({error})") from None
    kinds = {kind.rank: kind for kind in INPUT_KINDS.values() if kind.data_file == ".npz"}
    if x.ndim - 1 not in kinds:
        raise BadInputError(f"{path}: expected x of shape {' or '.join(k.description for k in kinds.values())}, "
                            f"got {x.shape}")
    if len(x) != len(y) or y.ndim != 1:
        raise BadInputError(f"{path}: expected y of shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0] if np.issubdtype(x.dtype, np.number) else None
        where = f" (first at index {tuple(int(i) for i in bad)})" if bad is not None else ""
        raise BadInputError(f"{path}: x must be finite numbers{where}; remove or impute missing values first")
    labels = [str(v) for v in y.tolist()]
    class_names = names or sorted(set(labels), key=_label_order)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise BadInputError(f"{path}: labels {unknown[:3]} are not among class_names")
    kind = kinds[x.ndim - 1]
    return Table(
        name=str(path), x=x.astype(np.float64), y=np.array([index[v] for v in labels], dtype=np.int64),
        feature_names=kind.feature_names(x.shape[1:]), class_names=class_names,
        positive_class=(class_names.index("1") if "1" in index else len(class_names) - 1) if len(class_names) == 2 else None,
        scale_mode=kind.scale_mode,
    )


def read_csv(path: Path, *, label_column: str = "label", categorical_columns: tuple[str, ...] = ()) -> Table:
    """Read feature columns and a label column from a UTF-8 CSV file with a header: numeric, boolean and
    categorical columns (:func:`detectors.categorical.type_columns`)."""
    if not path.is_file():
        raise BadInputError(f"data file {str(path)!r} does not exist")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise BadInputError(f"{path}: empty file; expected a header row and data rows")
            header = [name.strip() for name in header]
            if label_column not in header:
                raise BadInputError(
                    f"{path}: no label column {label_column!r}; columns are "
                    f"{', '.join(map(repr, header[:10]))}{' ...' if len(header) > 10 else ''}; "
                    "name it with --label-column"
                )
            label_at = header.index(label_column)
            feature_at = [i for i in range(len(header)) if i != label_at]
            if not feature_at:
                raise BadInputError(f"{path}: no feature columns besides {label_column!r}")
            cells, labels, lines = [], [], []
            for fields in reader:
                if not fields or all(not f.strip() for f in fields):
                    continue
                line = reader.line_num
                if len(fields) != len(header):
                    raise BadInputError(
                        f"{path}, line {line}: {len(fields)} fields where the header has {len(header)}"
                    )
                label = fields[label_at].strip()
                if not label:
                    raise BadInputError(f"{path}, line {line}: empty label in column {label_column!r}")
                labels.append(label)
                lines.append(line)
                cells.append([fields[i] for i in feature_at])
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise BadInputError(f"{path}: not a readable CSV file ({error})") from None
    if not labels:
        raise BadInputError(f"{path}: a header but no data rows")
    feature_names = [header[i] for i in feature_at]
    x, categories = type_columns(path, feature_names, cells, lines, categorical_columns=tuple(categorical_columns))
    class_names = sorted(set(labels), key=_label_order)
    index = {name: i for i, name in enumerate(class_names)}
    positive = class_names.index("1") if "1" in index else len(class_names) - 1
    return Table(
        name=str(path), x=x, y=np.array([index[v] for v in labels]),
        feature_names=feature_names, class_names=class_names, positive_class=positive, categories=categories,
    )


def _label_order(label: str) -> tuple:
    """Numeric labels sort numerically (2 before 10), others alphabetically after them."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
