"""Policy files, gates and the exit code.

A policy is a TOML file with a ``[gates]`` table mapping metric names to a
condition, an operator and a number::

    [gates]
    "clean.accuracy" = ">= 0.90"
    "robust.accuracy.pgd@0.03" = ">= 0.50"

Without a policy, :func:`default_policy` builds one from what ran. Names are
checked before the audit starts: a name no part of the tool can produce, or one
this run's options do not compute, is bad input (exit 2) naming the fix.
"""

from __future__ import annotations

import math
import operator
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from attacks import ATTACKS
from auditor.explain import EXPLAINERS
from auditor.metrics import CATALOGUE, MetricValue, format_eps, spec_for
from detectors.errors import BadInputError

EXIT_PASSED, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(r"\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\Z")
DEFAULT_MIN_ACCURACY = 0.90
DEFAULT_MIN_ROBUST_ACCURACY = 0.50


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float
    kind: str = "threshold"

    @property
    def name(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Policy:
    gates: tuple[Gate, ...]
    source: str  # a path, or "default"


@dataclass
class GateResult:
    name: str
    kind: str
    metric: str
    op: str
    threshold: float
    value: float | None
    ci95: list[float] | None
    passed: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def canonical_name(name: str) -> str:
    """Write the ``@eps`` suffix as Python's ``:g`` does, so ``@0.030`` names ``@0.03``."""
    head, at, eps = name.partition("@")
    if not at:
        return name
    try:
        return f"{head}@{format_eps(float(eps))}"
    except ValueError:
        return name


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"policy file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"policy file {str(path)!r} cannot be read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise BadInputError(f"policy file {path}: invalid TOML ({error})") from None
    unknown_tables = sorted(set(document) - {"gates"})
    if unknown_tables:
        raise BadInputError(f"policy file {path}: unknown table(s) {unknown_tables}; expected [gates]")
    table = document.get("gates", {})
    if not isinstance(table, dict):
        raise BadInputError(f"policy file {path}: [gates] must be a table of \"metric\" = \">= number\" entries")
    gates = []
    for metric, condition in table.items():
        if not isinstance(condition, str) or not (match := _CONDITION.match(condition)):
            raise BadInputError(
                f"policy file {path}: gate {metric!r} = {condition!r} is not a condition; "
                "write an operator (>=, <=, >, <) and a number, e.g. \">= 0.90\""
            )
        threshold = float(match.group(2))
        if not math.isfinite(threshold):
            raise BadInputError(f"policy file {path}: gate {metric!r} has a non-finite threshold")
        gates.append(Gate(metric=canonical_name(metric), op=match.group(1), threshold=threshold))
    return Policy(gates=tuple(gates), source=str(path))


def validate_policy(policy: Policy, planned: list[str], *, eps_grid: tuple[float, ...],
                    attacks: tuple[str, ...]) -> None:
    """Refuse gates on names the tool never produces, or that this run will not compute."""
    attack_names, explainer_names = sorted(ATTACKS), sorted(EXPLAINERS)
    planned_set = set(planned)
    for gate in policy.gates:
        spec = spec_for(gate.metric, attack_names, explainer_names)
        if spec is None:
            patterns = ", ".join(s.pattern for s in CATALOGUE)
            raise BadInputError(
                f"policy {policy.source}: unknown metric {gate.metric!r}; valid names follow these patterns: "
                f"{patterns} (attack: {'|'.join(attack_names)}; explainer: {'|'.join(explainer_names)})"
            )
        if gate.metric not in planned_set:
            raise BadInputError(f"policy {policy.source}: {gate.metric!r} is not computed by this run; "
                                + _how_to_compute(gate.metric, spec.pattern, eps_grid, attacks))


def _how_to_compute(metric: str, pattern: str, eps_grid: tuple[float, ...], attacks: tuple[str, ...]) -> str:
    match = CATALOGUE[[s.pattern for s in CATALOGUE].index(pattern)].regex(sorted(ATTACKS), sorted(EXPLAINERS)).match(metric)
    hints = []
    groups = match.groupdict() if match else {}
    if groups.get("attack") and groups["attack"] not in attacks:
        hints.append(f"add {groups['attack']} to --attacks")
    if groups.get("eps") and float(groups["eps"]) not in eps_grid:
        hints.append(f"add {groups['eps']} to --eps")
    return " and ".join(hints) if hints else "check the options that select attacks and explainers"


def default_policy(planned: list[str], *, eps_grid: tuple[float, ...], attacks: tuple[str, ...]) -> Policy:
    """clean accuracy, pgd's (else the last such attack's) robust accuracy at the largest eps audited, and no
    suspected gradient masking when the masking checks ran."""
    gates = [Gate("clean.accuracy", ">=", DEFAULT_MIN_ACCURACY)]
    largest = format_eps(max(eps_grid))
    candidates = [a for a in attacks if f"robust.accuracy.{a}@{largest}" in planned]
    if candidates:
        attack = "pgd" if "pgd" in candidates else candidates[-1]
        gates.append(Gate(f"robust.accuracy.{attack}@{largest}", ">=", DEFAULT_MIN_ROBUST_ACCURACY))
    if "robust.masking_suspected" in planned:
        gates.append(Gate("robust.masking_suspected", "<=", 0.0))
    return Policy(gates=tuple(gates), source="default")


def evaluate(policy: Policy, metrics: dict[str, MetricValue], skipped: dict[str, str]) -> list[GateResult]:
    results = []
    for gate in policy.gates:
        measured = metrics.get(gate.metric)
        if measured is None:
            reason = skipped.get(gate.metric, "not computed")
            results.append(GateResult(gate.name, gate.kind, gate.metric, gate.op, gate.threshold, None, None, False,
                                      f"no value: {reason}"))
            continue
        passed = bool(OPERATORS[gate.op](measured.value, gate.threshold))
        relation = gate.op if passed else _negate(gate.op)
        results.append(GateResult(
            gate.name, gate.kind, gate.metric, gate.op, gate.threshold, measured.value,
            list(measured.ci95) if measured.ci95 else None, passed,
            f"value {measured.value:.4g} {relation} threshold {gate.threshold:g}",
        ))
    return results


def exit_code(results: list[GateResult]) -> int:
    return EXIT_PASSED if all(r.passed for r in results) else EXIT_GATE_FAILED


def _negate(op: str) -> str:
    return {">=": "<", "<=": ">", ">": "<=", "<": ">="}[op]
