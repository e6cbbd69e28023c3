"""The data containers: a :class:`Table` as read (unscaled), the :class:`Scaler` fitted on a training split,
a scaled :class:`Dataset` and the train / validation / test :class:`Splits`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


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
    # categorical columns -> their categories (detectors.categorical); x holds each one's category index
    categories: dict[str, list[str]] = field(default_factory=dict)

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
    # categorical columns -> the checkpoint's categories; x holds their codes (detectors.categorical)
    categories: dict[str, list[str]] = field(default_factory=dict)
    # (N, F), True where a category the checkpoint never saw was mapped to the unknown one
    unseen: np.ndarray | None = None
    # text: (N,) each message's token count before truncation to the tokeniser's length, special tokens included
    lengths: np.ndarray | None = None

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
        unseen = self.unseen[rows] if self.unseen is not None else None
        return replace(self, x=self.x[rows], y=self.y[rows], row_index=self.row_index[rows], relevant_mask=mask,
                       clipped=clipped, unseen=unseen,
                       lengths=self.lengths[rows] if self.lengths is not None else None)

    def truncated(self) -> dict | None:
        """Text: what truncation to the tokeniser's length cut from these messages, which the model never sees:
        ``{"rows": messages longer than it, "tokens_lost_share": their lost tokens / every message's tokens,
        "max_length": the length}``; None for other data."""
        if self.lengths is None:
            return None
        limit = int(self.x.shape[1])
        lost = np.clip(self.lengths - limit, 0, None)
        total = int(self.lengths.sum())
        return {"rows": int((lost > 0).sum()), "tokens_lost_share": float(lost.sum() / total) if total else 0.0,
                "max_length": limit}

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

