"""What a metric is and the numbers every stage writes into.

A :class:`MetricSpec` holds one metric family's facts: its name pattern, whether higher is better, its range,
a one-line definition and its reference. Every stage's specs are declared in :mod:`auditor.catalogue.specs`;
the catalogue is their union in run order (``auditor.catalogue.CATALOGUE``), which gates validate names against,
the report prints and the README's table is generated from.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
# the reference explainers attention is compared with (auditor.stages.agreement; kept here so the catalogue
# needs no import of the stages)
AGREEMENT_REFERENCES = ("integrated-gradients", "feature-ablation")
# sanity.mprt passes when the upper end of its 95% interval is below this (auditor.stages.sanity.mprt_verdict)
MPRT_PASS_BELOW = 0.5


@dataclass(frozen=True)
class MetricSpec:
    """``higher_is_better`` None: an informational metric, neither direction is better (no gate regression,
    no best value marked in comparisons)."""

    pattern: str
    higher_is_better: bool | None
    value_range: str
    definition: str
    reference: str = ""  # where the metric comes from (paper or library), shown in the report's Method section

    @property
    def direction(self) -> str:
        if self.higher_is_better is None:
            return "none (informational)"
        return "higher" if self.higher_is_better else "lower"

    @property
    def arrow(self) -> str:
        if self.higher_is_better is None:
            return "·"
        return "↑" if self.higher_is_better else "↓"

    def regex(self, attacks: list[str], explainers: list[str]) -> re.Pattern:
        text = re.escape(self.pattern)
        text = text.replace(re.escape("{attack}"), "(?P<attack>" + "|".join(map(re.escape, attacks)) + ")")
        text = text.replace(re.escape("{explainer}"), "(?P<explainer>" + "|".join(map(re.escape, explainers)) + ")")
        text = text.replace(re.escape("{reference}"),
                            "(?P<reference>" + "|".join(map(re.escape, AGREEMENT_REFERENCES)) + ")")
        text = text.replace(re.escape("{eps}"), r"(?P<eps>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)")
        return re.compile(text + r"\Z")


@dataclass(frozen=True)
class MetricValue:
    value: float
    ci95: tuple[float, float] | None = None
    n: int | None = None  # samples that counted, for means over per-sample values

    @classmethod
    def from_dict(cls, entry: dict) -> "MetricValue":
        """The inverse of :meth:`to_dict` (results.json's form), ``n`` included: the verdict and the gates read it."""
        return cls(entry["value"], tuple(entry["ci95"]) if entry.get("ci95") is not None else None, entry.get("n"))

    def to_dict(self) -> dict:
        payload = {"value": self.value, "ci95": list(self.ci95) if self.ci95 is not None else None}
        if self.n is not None:
            payload["n"] = self.n
        return payload


# Fewer samples than this and a percentile bootstrap's 95% interval is not one: it cannot reach past the few
# values seen (one row gives [v, v]); 30 is the usual rule of thumb for a normal approximation of a mean.
MIN_INTERVAL_ROWS = 30


def format_eps(eps: float) -> str:
    return f"{eps:g}"


class Bootstrap:
    """Percentile bootstrap over one fixed set of resampled rows.

    All metrics of a run resample the same rows (a paired bootstrap), drawn
    from the run's seed, so two metrics' intervals are comparable. The rows
    (resamples x n indices) are kept when small; for large n they are redrawn
    from the same stream in blocks of resamples whenever needed, so memory
    stays bounded (``BLOCK_ENTRIES`` indices at a time) and the numbers are
    the same either way.
    """

    KEEP_ENTRIES = 1 << 24
    BLOCK_ENTRIES = 1 << 22

    def __init__(self, n_samples: int, *, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> None:
        self.n_samples, self.seed, self.resamples = n_samples, seed, resamples
        self._rows = None
        if n_samples and resamples * n_samples <= self.KEEP_ENTRIES:
            self._rows = next(self._draw(resamples))

    def _draw(self, block: int):
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, zlib.crc32(b"bootstrap")]))
        for start in range(0, self.resamples, block):
            yield rng.integers(0, self.n_samples, size=(min(block, self.resamples - start), self.n_samples))

    def blocks(self):
        """The resampled rows, (resamples, n) in consecutive blocks of resamples."""
        if self._rows is not None:
            yield self._rows
        elif self.n_samples:
            yield from self._draw(max(1, self.BLOCK_ENTRIES // self.n_samples))

    def interval(self, statistic, *arrays: np.ndarray) -> tuple[float, float] | None:
        """``statistic(*resampled)`` takes arrays of shape (resamples, n) and returns (resamples,)."""
        if not self.n_samples:
            return None
        return self.intervals({"_": (statistic, arrays)})["_"]

    def intervals(self, statistics: dict) -> dict:
        """Several intervals over one pass of the resampled rows: name -> (statistic, arrays)."""
        parts: dict = {name: [] for name in statistics}
        for rows in self.blocks():
            for name, (statistic, arrays) in statistics.items():
                with np.errstate(invalid="ignore", divide="ignore"):
                    parts[name].append(np.asarray(statistic(*(a[rows] for a in arrays)), dtype=np.float64))
        out = {}
        for name, chunks in parts.items():
            values = np.concatenate(chunks) if chunks else np.empty(0)
            values = values[np.isfinite(values)]
            if not chunks or len(values) < 0.5 * self.resamples:
                out[name] = None
            else:
                lo, hi = np.percentile(values, [2.5, 97.5])
                out[name] = (float(lo), float(hi))
        return out

    def mean(self, per_sample: np.ndarray, *, mask: np.ndarray | None = None) -> MetricValue | None:
        """The mean of ``per_sample`` (over rows where ``mask`` holds) with its interval."""
        return self.means({"_": (per_sample, mask)})["_"]

    def means(self, table: dict) -> dict:
        """Means with intervals of several per-sample arrays over one pass of the rows:
        name -> (values, mask or None); a name whose mask holds nowhere maps to None."""
        values, statistics = {}, {}
        for name, (per_sample, mask) in table.items():
            per_sample = np.asarray(per_sample, dtype=np.float64)
            if mask is None:
                mask = np.ones(len(per_sample), dtype=bool)
            if not mask.any():
                continue
            values[name] = float(per_sample[mask].mean())
            statistics[name] = (_weighted_mean, (np.where(mask, per_sample, 0.0), mask.astype(np.float64)))
        intervals = self.intervals(statistics) if self.n_samples else {}
        return {name: (MetricValue(values[name], intervals.get(name)) if name in values else None) for name in table}


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (values * weights).sum(1) / weights.sum(1)
