"""Write a mixed-type flow CSV of the shape intrusion benchmarks have (NSL-KDD: 41 feature columns, three of
them strings, a ``label`` column): the built-in ``flows-mixed`` records plus 15 numeric count columns that
carry no signal. ``python examples/mixed_flows_csv.py flows.csv 6000`` (rows default to 6,000)."""

from __future__ import annotations

import csv
import sys

import numpy as np

from detectors.builtin_sets import make_mixed_flows


def write(path: str, rows: int = 6000, seed: int = 0) -> None:
    table = make_mixed_flows(rows, seed=seed)
    rng = np.random.default_rng([seed, 2])
    extra = {f"count_{i}": rng.poisson(rng.uniform(0.5, 20.0), rows) for i in range(41 - len(table.feature_names))}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*table.feature_names, *extra, "label"])
        for row in range(rows):
            values = [table.categories[name][int(value)] if name in table.categories else f"{value:.6g}"
                      for name, value in zip(table.feature_names, table.x[row])]
            writer.writerow([*values, *(int(column[row]) for column in extra.values()), table.class_names[table.y[row]]])


if __name__ == "__main__":
    write(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 6000)
