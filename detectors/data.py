"""Data sets: the built-in ones (no network) and user CSV files.

Every data set is split with a seed (stratified) and scaled per feature to
[0, 1] by a :class:`Scaler` fitted on the training split; the scaler travels in
the checkpoint, so an attack budget ``eps`` is a fraction of each feature's
range.

Built-in sets:

``breast-cancer``
    scikit-learn's bundled Wisconsin diagnostic set: 569 rows, 30 features; the
    positive class (the one a detector exists to catch) is ``malignant``.
``flows`` / ``flows:N``
    a synthetic network-flow intrusion set generated from a seed (20,000 rows by
    default): 23 named flow features, about 30 % attacks. The label depends only
    on :data:`FLOW_RELEVANT_FEATURES` (recorded as ground truth): a flow is an
    attack when the mean of those four features, each in [0, 1], exceeds
    :data:`FLOW_THRESHOLD`. About 97 % of rows lie more than
    :data:`FLOW_MARGIN` from that boundary, so an L-inf perturbation of 0.05 on
    the scaled features cannot cross it; the rest sit close to it on purpose.
``digits``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as
    (N, 1, 8, 8) images, scaled by one range for all pixels.
``sequences`` / ``sequences:N``
    synthetic event sequences (4,000 by default) of 16 steps with 4 features
    each. Half carry a trigger: two consecutive steps whose first two features
    are both above 0.88; no other step has both above 0.85. The trigger's steps
    are recorded per sample as ground truth for localisation.

User files: ``.csv`` (tabular) and ``.npz`` with ``x`` of shape (N, C, H, W) or
(N, T, F) and ``y``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from detectors.errors import BadInputError

BUILTIN = ("breast-cancer", "flows", "digits", "sequences")
SIZED = {"flows": 20_000, "sequences": 4_000}
FLOWS_DEFAULT_ROWS = SIZED["flows"]
SEQUENCE_STEPS, SEQUENCE_FEATURES, TRIGGER_LENGTH = 16, 4, 2
FLOW_RELEVANT_FEATURES = ("syn_ratio", "rst_ratio", "dst_port_entropy", "payload_entropy")
FLOW_THRESHOLD = 0.575
FLOW_MARGIN = 0.06
FLOW_ATTACK_SHARE = 0.30
_FLOW_HARD_SHARE = 0.03
_FLOW_CLOSENESS = 0.04  # beyond the margin, distance to the boundary falls off like exp(-d / 0.04)
TEST_SHARE = 0.25
VALIDATION_SHARE = 0.15


@dataclass(frozen=True)
class Scaler:
    """Min-max scaling to [0, 1], clipped; constant positions map to 0.

    ``lo`` and ``hi`` have the shape of one sample. ``mode`` says how they were
    fitted: ``feature`` (each position its own range: tabular columns),
    ``global`` (one range for every position: image pixels), ``channel`` (one
    range per last-axis feature, shared over time steps: sequences).
    """

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, mode: str = "feature") -> "Scaler":
        x = x.astype(np.float64)
        if mode == "feature":
            lo, hi = x.min(axis=0), x.max(axis=0)
        elif mode == "global":
            lo, hi = np.full(x.shape[1:], x.min()), np.full(x.shape[1:], x.max())
        elif mode == "channel":
            axes = tuple(range(x.ndim - 1))
            lo = np.broadcast_to(x.min(axis=axes), x.shape[1:]).copy()
            hi = np.broadcast_to(x.max(axis=axes), x.shape[1:]).copy()
        else:
            raise ValueError(f"unknown scaling mode {mode!r}")
        return cls(lo=lo, hi=hi)

    @property
    def span(self) -> np.ndarray:
        width = self.hi - self.lo
        return np.where(width > 0, width, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.lo) / self.span, 0.0, 1.0).astype(np.float32)

    def outside(self, x: np.ndarray) -> np.ndarray:
        """Where raw ``x`` lies outside the fitted range, i.e. what :meth:`transform` clips (boolean, x's shape)."""
        x = x.astype(np.float64)
        return (x < self.lo) | (x > self.hi)

    def to_dict(self) -> dict:
        return {"lo": self.lo.ravel().tolist(), "hi": self.hi.ravel().tolist(), "shape": list(self.lo.shape)}

    @classmethod
    def from_dict(cls, payload: dict) -> "Scaler":
        shape = tuple(payload.get("shape") or (len(payload["lo"]),))
        return cls(lo=np.asarray(payload["lo"], dtype=np.float64).reshape(shape),
                   hi=np.asarray(payload["hi"], dtype=np.float64).reshape(shape))


@dataclass
class Table:
    """Raw (unscaled) rows with labels and everything known about them."""

    name: str
    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str]
    positive_class: int | None
    relevant_features: list[str] | None = None
    scale_mode: str = "feature"
    relevant_mask: np.ndarray | None = None  # (N, *sample shape): per-sample ground truth

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass
class Dataset:
    """Scaled rows ready for a detector: ``x`` in [0, 1], ``y`` class indices."""

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str]
    positive_class: int | None
    relevant_features: list[str] | None = None
    row_index: np.ndarray = field(default=None)  # rows of the split, for traceability
    relevant_mask: np.ndarray | None = None
    # (N, *sample shape), True where the raw value lay outside the scaler's training range and was clipped
    clipped: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.row_index is None:
            self.row_index = np.arange(len(self.y))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, rows: np.ndarray) -> "Dataset":
        mask = self.relevant_mask[rows] if self.relevant_mask is not None else None
        clipped = self.clipped[rows] if self.clipped is not None else None
        return replace(self, x=self.x[rows], y=self.y[rows], row_index=self.row_index[rows], relevant_mask=mask,
                       clipped=clipped)

    def out_of_range(self) -> dict:
        """What scaling clipped to [0, 1] among these rows: ``{"rows": rows with any value outside the
        training range, "values": such values, "features": {name: rows, for each feature with any}}``."""
        if self.clipped is None or not self.clipped.any():
            return {"rows": 0, "values": 0, "features": {}}
        flat = self.clipped.reshape(len(self.clipped), -1)
        per_feature = flat.sum(axis=0)
        return {"rows": int(flat.any(axis=1).sum()), "values": int(flat.sum()),
                "features": {self.feature_names[i]: int(per_feature[i]) for i in np.flatnonzero(per_feature)}}


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    scaler: Scaler
    seed: int


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
               seed: int = 0) -> Table:
    """Read a built-in set by name or a CSV file by path (unscaled)."""
    name, rows = parse_spec(spec)
    if name == "breast-cancer":
        table = _breast_cancer()
    elif name == "flows":
        table = make_flows(rows or FLOWS_DEFAULT_ROWS, seed=seed)
    elif name == "digits":
        table = _digits()
    elif name == "sequences":
        table = make_sequences(rows or SIZED["sequences"], seed=seed)
    elif name.lower().endswith(".csv"):
        table = read_csv(Path(name), label_column=label_column)
    elif name.lower().endswith(".npz"):
        table = read_npz(Path(name))
    else:
        raise BadInputError(
            f"unknown data {spec!r}: expected one of {', '.join(BUILTIN)}, flows:N, sequences:N, "
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
    scaler = Scaler.fit(table.x[train], table.scale_mode)

    def part(split: str, index: np.ndarray) -> Dataset:
        index = np.sort(index)
        return Dataset(
            name=table.name, split=split, x=scaler.transform(table.x[index]), y=table.y[index].astype(np.int64),
            feature_names=list(table.feature_names), class_names=list(table.class_names),
            positive_class=table.positive_class, relevant_features=table.relevant_features, row_index=index,
            relevant_mask=table.relevant_mask[index] if table.relevant_mask is not None else None,
            clipped=scaler.outside(table.x[index]),
        )

    return Splits(train=part("train", train), val=part("val", val), test=part("test", test), scaler=scaler, seed=seed)


def stratified_subset(data: Dataset, max_samples: int, *, seed: int) -> Dataset:
    """A seeded, stratified subset of ``max_samples`` rows, in their original order."""
    if max_samples <= 0 or len(data) <= max_samples:
        return data
    counts = np.bincount(data.y)
    stratify = data.y if counts[counts > 0].min() >= 2 else None
    chosen, _ = train_test_split(np.arange(len(data)), train_size=max_samples, random_state=seed, stratify=stratify)
    return data.subset(np.sort(chosen))


def align_table(table: Table, *, feature_names: list[str], class_names: list[str], scaler: Scaler) -> Dataset:
    """Scale a table read for auditing with a checkpoint's scaler, matching columns by name (tabular) or
    requiring the checkpoint's sample shape (images, sequences)."""
    if table.x.ndim > 2 or scaler.lo.ndim > 1:
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
    x = table.x if table.x.ndim > 2 else table.x[:, order]
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
    )


def _breast_cancer() -> Table:
    bunch = load_breast_cancer()
    return Table(
        name="breast-cancer", x=bunch.data.astype(np.float64), y=bunch.target.astype(np.int64),
        feature_names=[str(n) for n in bunch.feature_names], class_names=[str(n) for n in bunch.target_names],
        positive_class=list(bunch.target_names).index("malignant"),
    )


def make_flows(rows: int = FLOWS_DEFAULT_ROWS, *, seed: int = 0) -> Table:
    """Synthetic network flows whose label depends only on FLOW_RELEVANT_FEATURES."""
    rng = np.random.default_rng(seed)
    n_attack = int(round(FLOW_ATTACK_SHARE * rows))
    unit = _flow_relevant_unit(rng, rows, n_attack)
    y = (unit.mean(axis=1) > FLOW_THRESHOLD).astype(np.int64)
    n = rows
    duration = np.minimum(rng.lognormal(0.0, 1.5, n), 3600.0)
    src_packets = 1 + rng.poisson(rng.lognormal(2.0, 1.0, n))
    dst_packets = rng.poisson(rng.lognormal(1.8, 1.0, n))
    packets = src_packets + dst_packets
    src_bytes = src_packets * rng.uniform(40, 1500, n)
    dst_bytes = dst_packets * rng.uniform(40, 1500, n)
    iat_mean = duration / packets
    columns = {
        "duration": duration,
        "src_bytes": np.round(src_bytes),
        "dst_bytes": np.round(dst_bytes),
        "src_packets": src_packets.astype(np.float64),
        "dst_packets": dst_packets.astype(np.float64),
        "mean_packet_size": (src_bytes + dst_bytes) / packets,
        "flow_iat_mean": iat_mean,
        "flow_iat_std": iat_mean * rng.uniform(0.0, 2.0, n),
        "bytes_per_second": np.minimum((src_bytes + dst_bytes) / np.maximum(duration, 1e-3), 1e7),
        "packets_per_second": np.minimum(packets / np.maximum(duration, 1e-3), 1e4),
        "syn_ratio": unit[:, 0],
        "rst_ratio": unit[:, 1],
        "ack_count": rng.binomial(packets, 0.8).astype(np.float64),
        "fin_count": rng.binomial(2, 0.5, n).astype(np.float64),
        "psh_count": rng.binomial(packets, 0.3).astype(np.float64),
        "urg_count": rng.poisson(0.05, n).astype(np.float64),
        "ttl": rng.choice([32.0, 64.0, 128.0, 255.0], n, p=[0.1, 0.5, 0.3, 0.1]) - rng.integers(0, 20, n),
        "window_size": rng.integers(0, 65536, n).astype(np.float64),
        "src_port_bucket": rng.choice([0.0, 1.0, 2.0], n, p=[0.05, 0.25, 0.70]),
        "dst_port_bucket": rng.choice([0.0, 1.0, 2.0], n, p=[0.60, 0.30, 0.10]),
        "protocol": rng.choice([0.0, 1.0, 2.0], n, p=[0.80, 0.15, 0.05]),
        "dst_port_entropy": 10.0 * unit[:, 2],
        "payload_entropy": 8.0 * unit[:, 3],
    }
    return Table(
        name="flows" if rows == FLOWS_DEFAULT_ROWS else f"flows:{rows}",
        x=np.column_stack(list(columns.values())), y=y, feature_names=list(columns),
        class_names=["benign", "attack"], positive_class=1, relevant_features=list(FLOW_RELEVANT_FEATURES),
    )


def _flow_relevant_unit(rng: np.random.Generator, rows: int, n_attack: int) -> np.ndarray:
    """Relevant features in [0, 1]^4: ``n_attack`` rows above the threshold, most outside the margin."""
    picked = {0: [], 1: []}
    wanted = {0: rows - n_attack, 1: n_attack}
    while any(sum(len(p) for p in picked[c]) < wanted[c] for c in (0, 1)):
        candidates = rng.random((4 * rows + 64, len(FLOW_RELEVANT_FEATURES)))
        score = candidates.mean(axis=1)
        distance = np.abs(score - FLOW_THRESHOLD)
        close_call = rng.random(len(score)) < np.exp(-(distance - FLOW_MARGIN) / _FLOW_CLOSENESS)
        keep = ((distance > FLOW_MARGIN) & close_call) | (rng.random(len(score)) < _FLOW_HARD_SHARE * 0.3)
        for label in (0, 1):
            picked[label].append(candidates[keep & ((score > FLOW_THRESHOLD) == bool(label))])
    unit = np.concatenate(
        [np.concatenate(picked[0])[: wanted[0]], np.concatenate(picked[1])[: wanted[1]]]
    )
    return unit[rng.permutation(rows)]


def _digits() -> Table:
    bunch = load_digits()
    images = bunch.images.astype(np.float64)[:, None, :, :]
    return Table(
        name="digits", x=images, y=bunch.target.astype(np.int64), feature_names=_pixel_names(images.shape[1:]),
        class_names=[str(c) for c in bunch.target_names], positive_class=None, scale_mode="global",
    )


def _pixel_names(shape: tuple[int, ...]) -> list[str]:
    channels, height, width = shape
    return [f"c{c}_y{y}_x{x}" if channels > 1 else f"y{y}_x{x}"
            for c in range(channels) for y in range(height) for x in range(width)]


def _step_names(steps: int, features: int) -> list[str]:
    return [f"t{t}.f{f}" for t in range(steps) for f in range(features)]


def make_sequences(rows: int = 4_000, *, seed: int = 0) -> Table:
    """Event sequences; label 1 when a two-step trigger is present (positions recorded per sample)."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, SEQUENCE_STEPS, SEQUENCE_FEATURES))
    both_high = (x[:, :, 0] > 0.85) & (x[:, :, 1] > 0.85)
    while both_high.any():  # background steps never look like a trigger step
        x[both_high, 1] = rng.random(int(both_high.sum())) * 0.85
        both_high = (x[:, :, 0] > 0.85) & (x[:, :, 1] > 0.85)
    y = (rng.random(rows) < 0.5).astype(np.int64)
    mask = np.zeros((rows, SEQUENCE_STEPS, SEQUENCE_FEATURES), dtype=bool)
    starts = rng.integers(0, SEQUENCE_STEPS - TRIGGER_LENGTH + 1, rows)
    for row in np.flatnonzero(y):
        steps = slice(starts[row], starts[row] + TRIGGER_LENGTH)
        x[row, steps, :2] = rng.uniform(0.88, 1.0, (TRIGGER_LENGTH, 2))
        mask[row, steps, :] = True
    return Table(
        name="sequences" if rows == SIZED["sequences"] else f"sequences:{rows}", x=x, y=y,
        feature_names=_step_names(SEQUENCE_STEPS, SEQUENCE_FEATURES), class_names=["normal", "trigger"],
        positive_class=1, scale_mode="channel", relevant_mask=mask,
    )


def read_npz(path: Path) -> Table:
    """``x`` (N, C, H, W) images or (N, T, F) sequences, ``y`` labels; optional ``class_names``."""
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
    if x.ndim not in (3, 4):
        raise BadInputError(f"{path}: expected x of shape (N, C, H, W) or (N, T, F), got {x.shape}")
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
    image = x.ndim == 4
    return Table(
        name=str(path), x=x.astype(np.float64), y=np.array([index[v] for v in labels], dtype=np.int64),
        feature_names=_pixel_names(x.shape[1:]) if image else _step_names(*x.shape[1:]), class_names=class_names,
        positive_class=(class_names.index("1") if "1" in index else len(class_names) - 1) if len(class_names) == 2 else None,
        scale_mode="global" if image else "channel",
    )


def read_csv(path: Path, *, label_column: str = "label") -> Table:
    """Read numeric features and a label column from a UTF-8 CSV file with a header."""
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
            features, labels = [], []
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
                features.append([_parse_number(fields[i], header[i], line, path) for i in feature_at])
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise BadInputError(f"{path}: not a readable CSV file ({error})") from None
    if not labels:
        raise BadInputError(f"{path}: a header but no data rows")
    class_names = sorted(set(labels), key=_label_order)
    index = {name: i for i, name in enumerate(class_names)}
    positive = class_names.index("1") if "1" in index else len(class_names) - 1
    return Table(
        name=str(path), x=np.asarray(features, dtype=np.float64), y=np.array([index[v] for v in labels]),
        feature_names=[header[i] for i in feature_at], class_names=class_names, positive_class=positive,
    )


def _parse_number(text: str, column: str, line: int, path: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(
            f"{path}, line {line}, column {column!r}: {text!r} is not a number; feature columns must be numeric"
        ) from None
    if not math.isfinite(value):
        raise BadInputError(
            f"{path}, line {line}, column {column!r}: {text.strip() or 'empty'} is not a finite number; "
            "remove or impute missing values first"
        )
    return value


def _label_order(label: str) -> tuple:
    """Numeric labels sort numerically (2 before 10), others alphabetically after them."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
