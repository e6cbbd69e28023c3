"""The per-sample table every stage writes and the one place it becomes metrics.

Each stage returns, per metric name, a (n,) float64 array over the audited
samples in their global order, NaN where a sample does not count for that metric
(attack success counts only samples correct when clean; evasion only detected
positives; a faithfulness correlation only samples where both sides vary).
The metric is the mean over the finite entries, with the run's paired bootstrap
interval. Keeping per-sample values, not aggregates, until the end is what lets
a sharded audit gather the rows of every process and aggregate once, so the
numbers do not depend on how the samples were split.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from auditor.metrics import Bootstrap, MetricValue


WHY_EMPTY = {
    "robust.attack_success_rate.": "no audited sample was classified correctly when clean",
    "robust.evasion_rate.": "no audited positive-class sample was detected when clean",
    "robust.targeted_success_rate.": "no audited sample outside the target class was classified correctly when clean",
}


def only_where(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``values`` as float64 where ``counts`` holds, NaN elsewhere."""
    return np.where(np.asarray(counts, dtype=bool), np.asarray(values, dtype=np.float64), np.nan)


def aggregate(per_sample: dict[str, np.ndarray], bootstrap: Bootstrap) -> tuple[dict[str, MetricValue],
                                                                                 dict[str, str]]:
    """Means with intervals over the finite entries, each with ``n`` (how many counted); names with no finite
    entry go to ``skipped``."""
    metrics: dict[str, MetricValue] = {}
    skipped: dict[str, str] = {}
    table = {}
    for name, values in per_sample.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"expected per-sample values of shape (n,) for {name}, got {values.shape}")
        table[name] = (values, np.isfinite(values))
    for name, value in bootstrap.means(table).items():  # one pass over the resampled rows for all metrics
        if value is None:
            skipped[name] = next((why for prefix, why in WHY_EMPTY.items() if name.startswith(prefix)),
                                 "no audited sample qualified for this metric")
        else:
            metrics[name] = replace(value, n=int(table[name][1].sum()))
    return metrics, skipped
