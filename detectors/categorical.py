"""Categorical and boolean columns of tabular data: how they are read, encoded and checked against a checkpoint.

A CSV column whose values are not all numbers is categorical (``--categorical-columns`` names others, such
as integer codes); a column of only ``true``/``false`` (or ``yes``/``no``, any case) is boolean and read as
the integers 0 and 1. A categorical column's categories are kept in the order they first appear in the
training file; its raw value is the category's index in that list, and :data:`UNKNOWN` (-1) stands for a
category the checkpoint never saw.

The scaled value of a categorical column (what a detector, an attack and an explainer see) is a *code* in
(0, 1): the column's K categories and the unknown one share the unit interval in K + 1 equal slots, the
unknown category in the lowest (so a removal to 0 removes the category), category i in slot i + 1, each
coded by its slot's centre. This is exactly the min-max scaling of the raw index with the bounds
:func:`raw_bounds` gives, so the scaler, the checkpoint's ``scaler`` entry and ``--data`` alignment need no
special case. The slot a value lies in is its category (:func:`slot_of`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detectors.errors import BadInputError

UNKNOWN = -1
UNKNOWN_NAME = "(unknown)"
ON_UNSEEN_CATEGORY = ("map", "refuse")
BOOLEAN_WORDS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}
# spellings of a missing value that must not become a category of their own
MISSING_WORDS = {"nan", "na", "n/a", "null", "none", "inf", "-inf", "+inf", "infinity", "-infinity"}


def raw_bounds(count: int) -> tuple[float, float]:
    """The scaler's (lo, hi) for a categorical column of ``count`` categories: raw index i scales to the centre
    of slot i + 1 of count + 1, the unknown index -1 to the centre of slot 0."""
    return UNKNOWN - 0.5, count - 0.5


def code_of(index: np.ndarray | int, count: int) -> np.ndarray:
    """The scaled code of raw category ``index`` (-1: unknown) in a column of ``count`` categories."""
    return ((np.asarray(index, dtype=np.float64) + 1.5) / (count + 1)).astype(np.float32)


def slot_of(code: np.ndarray, count: int) -> np.ndarray:
    """The slot (0: unknown, i + 1: category i) that a scaled value lies in; values outside [0, 1] take the
    nearest slot (the tabular detector reads its codes the same way)."""
    return np.clip(np.floor(np.asarray(code, dtype=np.float64) * (count + 1)), 0, count)


def type_columns(path: Path, names: list[str], cells: list[list[str]], lines: list[int], *,
                 categorical_columns: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, list[str]]]:
    """(N, F) raw values and ``{column: categories}`` from a CSV's feature cells (``cells[row][column]``,
    ``lines[row]`` its line in the file). An empty cell or a missing-value word (``nan``, ``NA``, ``inf``)
    is bad input in every kind of column. Names in ``categorical_columns`` that the file lacks are left to
    the caller, which knows whether a missing column is an error."""
    x = np.empty((len(cells), len(names)), dtype=np.float64)
    categories: dict[str, list[str]] = {}
    for column, name in enumerate(names):
        values = [row[column].strip() for row in cells]
        for row, value in enumerate(values):
            if not value or value.lower() in MISSING_WORDS:
                raise BadInputError(f"{path}, line {lines[row]}, column {name!r}: {value or 'empty'} is not a finite "
                                    "number or a category; remove or impute missing values first")
        numbers = None if name in categorical_columns else _numbers(values)
        if numbers is not None and not np.isfinite(numbers).all():
            row = int(np.flatnonzero(~np.isfinite(numbers))[0])
            raise BadInputError(f"{path}, line {lines[row]}, column {name!r}: {values[row]} is not a finite number; "
                                "remove or impute missing values first")
        if numbers is not None:
            x[:, column] = numbers
        elif name not in categorical_columns and all(value.lower() in BOOLEAN_WORDS for value in values):
            x[:, column] = [BOOLEAN_WORDS[value.lower()] for value in values]
        else:
            found = list(dict.fromkeys(values))
            index = {category: i for i, category in enumerate(found)}
            x[:, column] = [index[value] for value in values]
            categories[name] = found
    return x, categories


def _numbers(values: list[str]) -> np.ndarray | None:
    """The values as floats (an overflow such as ``1e999`` is inf), or None when any is not a number: the column
    is then categorical."""
    numbers = []
    for value in values:
        try:
            numbers.append(float(value))
        except ValueError:
            return None
    return np.asarray(numbers, dtype=np.float64)


def align_categories(x: np.ndarray, feature_names: list[str], categories: dict[str, list[str]],
                     known: dict[str, list[str]], *, source: str, policy: str = "map",
                     rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (raw, columns ``feature_names``, categorical ones indexing ``categories``) re-indexed into the
    checkpoint's ``known`` categories, with an (N, F) mask of the cells whose category the checkpoint never
    saw: mapped to :data:`UNKNOWN` (``policy`` ``map``), or refused naming the first such row and column
    (``refuse``; ``rows`` numbers the rows for that message, from 1)."""
    if policy not in ON_UNSEEN_CATEGORY:
        raise BadInputError(f"--on-unseen-category {policy!r}: choose one of {', '.join(ON_UNSEEN_CATEGORY)}")
    numeric_in_file = [name for name in known if name in feature_names and name not in categories]
    if numeric_in_file:
        raise BadInputError(f"{source}: column {numeric_in_file[0]!r} holds only numbers, but the checkpoint reads it "
                            f"as categorical; pass --data with the columns the model was trained on")
    extra = [name for name in categories if name not in known and name in feature_names]
    if extra:
        sample = categories[extra[0]][0]
        raise BadInputError(f"{source}, column {extra[0]!r}: {sample!r} is not a number, and the checkpoint reads "
                            "this column as numeric; feature columns must hold what the model was trained on")
    x = x.copy()
    unseen = np.zeros(x.shape, dtype=bool)
    for name, wanted in known.items():
        if name not in feature_names:
            continue
        column = feature_names.index(name)
        position = {category: i for i, category in enumerate(wanted)}
        remap = np.array([position.get(category, UNKNOWN) for category in categories[name]], dtype=np.float64)
        new = remap[x[:, column].astype(np.int64)]
        unseen[:, column] = new == UNKNOWN
        if policy == "refuse" and unseen[:, column].any():
            first = int(np.flatnonzero(unseen[:, column])[0])
            value = categories[name][int(x[first, column])]
            row = int(rows[first]) if rows is not None else first + 1
            raise BadInputError(
                f"{source}, row {row}, column {name!r}: category {value!r} was never seen in training (the checkpoint "
                f"knows {', '.join(map(repr, wanted[:6]))}{' ...' if len(wanted) > 6 else ''}); pass "
                "--on-unseen-category map to audit it as the unknown category (counted in data.unseen_categories)")
        x[:, column] = new
    return x, unseen


def most_frequent_codes(x_scaled: np.ndarray, feature_names: list[str],
                        categories: dict[str, list[str]]) -> np.ndarray:
    """The per-column mean of scaled training rows with each categorical column's mean replaced by the code of
    its most frequent category (the first listed on a tie): the ``mean`` removal baseline, which must be a
    category that exists rather than an average of codes."""
    baseline = x_scaled.mean(axis=0).astype(np.float32)
    for name, found in categories.items():
        column = feature_names.index(name)
        slots = slot_of(x_scaled[:, column].astype(np.float64), len(found)).astype(np.int64)
        counts = np.bincount(slots, minlength=len(found) + 1)[1:]
        baseline[column] = code_of(int(np.argmax(counts)), len(found))
    return baseline


def category_counts(feature_names: list[str], categories: dict[str, list[str]]) -> list[int]:
    """Per feature, its number of categories (0: a numeric column): the tabular detector's ``categories``."""
    return [len(categories.get(name, ())) for name in feature_names]


def unseen_by_column(unseen: np.ndarray | None, feature_names: list[str],
                     categories: dict[str, list[str]]) -> dict[str, int]:
    """``{column: audited cells mapped to the unknown category}`` for every categorical column (0 included)."""
    return {name: int(unseen[:, feature_names.index(name)].sum()) if unseen is not None else 0
            for name in categories}


def category_name(code: float, found: list[str]) -> str:
    """The category a scaled value of a column with categories ``found`` reads as (the report shows names, not
    codes); the unknown slot reads as ``(unknown)``."""
    slot = int(slot_of(code, len(found)))
    return found[slot - 1] if slot else UNKNOWN_NAME


def indices_of(x_scaled: np.ndarray, feature_names: list[str], categories: dict[str, list[str]]) -> np.ndarray:
    """Scaled rows with each categorical column turned back into its category's index in the checkpoint's list
    (-1: unknown), as ``adversarial.safetensors`` stores them; numeric columns stay scaled."""
    out = np.array(x_scaled, dtype=np.float32, copy=True)
    for name, found in categories.items():
        column = feature_names.index(name)
        out[:, column] = slot_of(out[:, column].astype(np.float64), len(found)) - 1
    return out


def saved_rows(rows: dict[str, np.ndarray], feature_names: list[str],
               categories: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """A block of ``--save-adversarial``/``--save-explanations`` rows with the records (``x`` and each ``adv/``
    entry, not the attributions) holding category indices in their categorical columns (:func:`indices_of`)."""
    if not categories:
        return rows
    return {key: indices_of(value, feature_names, categories) if key == "x" or key.startswith("adv/") else value
            for key, value in rows.items()}


def categorical_facts(data) -> dict:
    """results.json's ``data`` entries for a dataset with categorical columns: ``categorical`` (column ->
    categories, the list ``adversarial.safetensors``' indices refer to) and ``unseen_categories`` (column ->
    audited cells mapped to the unknown category); nothing for numeric data."""
    if not data.categories:
        return {}
    return {"categorical": {name: list(found) for name, found in data.categories.items()},
            "unseen_categories": unseen_by_column(data.unseen, data.feature_names, data.categories)}
