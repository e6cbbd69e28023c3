"""The metric catalogue and the numbers every stage writes into.

Each metric family declares its facts here, next to nothing else: its name
pattern, whether higher is better, its range and a one-line definition. Gates
validate names against it, the report prints it, and a test checks the README
lists every entry, so the three cannot drift apart.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class MetricSpec:
    pattern: str
    higher_is_better: bool
    value_range: str
    definition: str

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def regex(self, attacks: list[str], explainers: list[str]) -> re.Pattern:
        text = re.escape(self.pattern)
        text = text.replace(re.escape("{attack}"), "(?P<attack>" + "|".join(map(re.escape, attacks)) + ")")
        text = text.replace(re.escape("{explainer}"), "(?P<explainer>" + "|".join(map(re.escape, explainers)) + ")")
        text = text.replace(re.escape("{eps}"), r"(?P<eps>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)")
        return re.compile(text + r"\Z")


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("clean.accuracy", True, "[0, 1]", "share of samples whose predicted class is the true class"),
    MetricSpec("clean.precision", True, "[0, 1]",
               "of the samples flagged as the positive class, the share that are (macro average over classes "
               "when there are more than two)"),
    MetricSpec("clean.recall", True, "[0, 1]",
               "of the positive-class samples, the share flagged (macro average when more than two classes)"),
    MetricSpec("clean.f1", True, "[0, 1]", "harmonic mean of precision and recall"),
    MetricSpec("clean.roc_auc", True, "[0, 1]",
               "area under the ROC curve of the positive class's probability (one-vs-rest macro average "
               "when more than two classes)"),
    MetricSpec("robust.accuracy.{attack}@{eps}", True, "[0, 1]",
               "accuracy on the attack's adversarial examples at budget eps (all audited samples)"),
    MetricSpec("robust.attack_success_rate.{attack}@{eps}", False, "[0, 1]",
               "among samples classified correctly when clean, the share the attack makes misclassified"),
    MetricSpec("robust.evasion_rate.{attack}@{eps}", False, "[0, 1]",
               "binary detectors: among positive-class samples detected when clean, the share the attack turns "
               "into the negative class (the malicious sample passing as benign)"),
    MetricSpec("robust.masking_suspected", False, "{0, 1}",
               "1 when any gradient-masking check failed, 0 when every check that ran passed"),
    MetricSpec("stability.topk_intersection.{attack}@{eps}", True, "[0, 1]",
               "share of the clean top-k attended tokens (k = 5) still in the top-k under the attention attack"),
    MetricSpec("stability.spearman.{attack}@{eps}", True, "[-1, 1]",
               "Spearman rank correlation between clean and attacked attention over tokens"),
    MetricSpec("stability.jsd.{attack}@{eps}", False, "[0, ln 2]",
               "Jensen-Shannon divergence between clean and attacked attention, in nats"),
    MetricSpec("stability.prediction_kept.{attack}@{eps}", True, "[0, 1]",
               "share of samples whose predicted class the attention attack left unchanged"),
    MetricSpec("stability.hijack_success.{attack}@{eps}", False, "[0, 1]",
               "attention-hijack: share of samples whose target tokens all entered the attacked top-k"),
    MetricSpec("faithfulness.deletion_auc.{explainer}", False, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are replaced by "
               "the baseline, one by one (x-axis: fraction of features removed)"),
    MetricSpec("faithfulness.insertion_auc.{explainer}", True, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are restored into "
               "the baseline, one by one"),
)


@dataclass(frozen=True)
class MetricValue:
    value: float
    ci95: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": list(self.ci95) if self.ci95 is not None else None}


def format_eps(eps: float) -> str:
    return f"{eps:g}"


def spec_for(name: str, attacks: list[str], explainers: list[str]) -> MetricSpec | None:
    for spec in CATALOGUE:
        if spec.regex(attacks, explainers).match(name):
            return spec
    return None


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


def catalogue_markdown() -> str:
    """The README's metric table, generated from CATALOGUE (``python -m auditor.metrics``)."""
    lines = ["| Metric | Better | Range | Definition |", "| --- | --- | --- | --- |"]
    for spec in CATALOGUE:
        lines.append(f"| `{spec.pattern}` | {spec.arrow} {spec.direction} | {spec.value_range} | {spec.definition} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(catalogue_markdown())
