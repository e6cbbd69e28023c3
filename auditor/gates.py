"""Policy files, gates and the exit code.

A policy is a TOML file with two optional tables: ``[gates]`` maps metric
names to a condition, an operator and a number; ``[regression]`` maps metric
names to how much worse than a baseline run (``audit run --baseline``) a value
may become, in the metric's own direction::

    [gates]
    "clean.accuracy" = ">= 0.90"
    "robust.accuracy.pgd@0.03" = ">= 0.50"

    "faithfulness.deletion_auc_diff.attention~random" = "lower95 > 0"
    "trust.verdict" = ["used", "hides-nothing"]

    [regression]
    "robust.accuracy.pgd@0.03" = 0.02

A condition tests the metric's value, or with ``lower95`` / ``upper95`` before the operator the
lower / upper end of its 95% bootstrap interval (a metric without an interval then fails the gate, and so
does one resting on fewer than :data:`MIN_INTERVAL_ROWS` samples: a bootstrap of a handful of rows gives an
interval as narrow as the rows are alike, ``[1, 1]`` for one correct row).

A file with no table at all, or an empty ``[gates]`` table, is bad input: it would pass every model. A
file with a ``[regression]`` table and no ``[gates]`` keeps the default gates beside its own regression
gates (:func:`auditor.run.runner.bind`).

``"trust.verdict"`` names, instead of a condition, the necessary conditions of the trust verdict it gates
(:func:`auditor.verdict.trust_verdict`; the default policy gates all four).

Without a policy, :func:`default_policy` builds one from what ran. Names are
checked before the audit starts: a name no part of the tool can produce, or one
this run's options do not compute, is bad input (exit 2) naming the fix.
"""

from __future__ import annotations

import math
import operator
import json
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from attacks import ATTACKS, TEXT_ATTACKS
from attacks.text import TOKEN_NORM
from auditor.catalogue import EXPLAINER_NAMES as EXPLAINERS
from auditor.metrics import MIN_INTERVAL_ROWS, MetricValue, format_eps
from auditor.catalogue import CATALOGUE, spec_for
from auditor.verdict import CONDITIONS, trust_verdict
from detectors.errors import BadInputError

EXIT_PASSED, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CONDITION = re.compile(r"\s*(?:(lower95|upper95)\s*)?(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\Z")
INTERVAL_ENDS = {"lower95": 0, "upper95": 1}
DEFAULT_MIN_ACCURACY = 0.90
DEFAULT_MIN_ROBUST_ACCURACY = 0.50
DEFAULT_REGRESSION_TOLERANCE = 0.02
VERDICT_GATE = "trust.verdict"


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float
    kind: str = "threshold"
    end: str = "value"  # or "lower95" / "upper95": which end of the metric's 95% interval is tested
    conditions: tuple[str, ...] = ()  # kind "verdict": the trust verdict's necessary conditions it gates

    @property
    def name(self) -> str:
        if self.kind == "verdict":
            return f"{self.metric}: {', '.join(self.conditions)}"
        tested = "" if self.end == "value" else f" {self.end}"
        return f"{self.metric}{tested} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Policy:
    gates: tuple[Gate, ...]
    source: str  # a path, or "default"
    regression: dict[str, float] | None = None  # metric -> tolerance; None: no [regression] table


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
    group: str = ""
    baseline: float | None = None
    baseline_ci95: list[float] | None = None
    tolerance: float | None = None
    significance: str | None = None  # regression gates: "significant", "within the intervals", "no interval"
    conditions: list[str] | None = None  # the trust verdict's gate: the conditions it judged

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
    if not document:
        raise BadInputError(f"policy file {path} holds no table; write a [gates] table (\"metric\" = \">= number\" "
                            "entries) and/or a [regression] table, or leave --policy out for the default gates")
    unknown_tables = sorted(set(document) - {"gates", "regression"})
    if unknown_tables:
        raise BadInputError(f"policy file {path}: unknown table(s) {unknown_tables}; expected [gates] and/or "
                            "[regression]")
    table = document.get("gates", {})
    if not isinstance(table, dict):
        raise BadInputError(f"policy file {path}: [gates] must be a table of \"metric\" = \">= number\" entries")
    if "gates" in document and not table:
        raise BadInputError(f"policy file {path}: [gates] is empty, so every model would pass; add a gate such as "
                            "\"clean.accuracy\" = \">= 0.90\", or remove the table to keep the default gates")
    gates = []
    for metric, condition in table.items():
        if metric == VERDICT_GATE:
            gates.append(verdict_gate(_verdict_conditions(condition, path)))
            continue
        if not isinstance(condition, str) or not (match := _CONDITION.match(condition)):
            raise BadInputError(
                f"policy file {path}: gate {metric!r} = {condition!r} is not a condition; "
                "write an operator (>=, <=, >, <) and a number, e.g. \">= 0.90\", optionally after lower95 or "
                "upper95 to test that end of the 95% interval, e.g. \"lower95 > 0\""
            )
        threshold = float(match.group(3))
        if not math.isfinite(threshold):
            raise BadInputError(f"policy file {path}: gate {metric!r} has a non-finite threshold")
        gates.append(Gate(metric=canonical_name(metric), op=match.group(2), threshold=threshold,
                          end=match.group(1) or "value"))
    return Policy(gates=tuple(gates), source=str(path), regression=_regression_table(document, path))


def _verdict_conditions(named, path: Path) -> tuple[str, ...]:
    if not isinstance(named, list) or not named or any(name not in CONDITIONS for name in named) \
            or len(set(named)) < len(named):
        raise BadInputError(f"policy file {path}: gate {VERDICT_GATE!r} = {named!r} is not a list of the trust "
                            f"verdict's conditions; write some of {list(CONDITIONS)}, each once, e.g. "
                            f"{VERDICT_GATE!r} = [\"used\", \"hides-nothing\"]")
    return tuple(named)


def verdict_gate(conditions: tuple[str, ...] = CONDITIONS) -> Gate:
    """The gate that passes only where :func:`auditor.verdict.trust_verdict` over ``conditions`` answers yes."""
    return Gate(VERDICT_GATE, ">=", 1.0, kind="verdict", conditions=conditions)


def _regression_table(document: dict, path: Path) -> dict[str, float] | None:
    if "regression" not in document:
        return None
    table = document["regression"]
    if not isinstance(table, dict):
        raise BadInputError(f"policy file {path}: [regression] must be a table of \"metric\" = tolerance entries")
    tolerances = {}
    for metric, tolerance in table.items():
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
                or not math.isfinite(tolerance) or tolerance < 0:
            raise BadInputError(f"policy file {path}: regression tolerance {metric!r} = {tolerance!r} is not a "
                                "number >= 0; write how much worse than the baseline the value may get, e.g. 0.02")
        tolerances[canonical_name(metric)] = float(tolerance)
    return tolerances


def validate_policy(policy: Policy, planned: list[str], *, eps_grid: tuple[float, ...],
                    attacks: tuple[str, ...], eps_l2: tuple[float, ...] = (),
                    token_budget: tuple[int, ...] = ()) -> None:
    """Refuse gates on names the tool never produces, or that this run will not compute."""
    planned_set = set(planned)
    for metric in policy_metrics(policy):
        spec = known_spec(metric, policy.source)
        if metric not in planned_set:
            raise BadInputError(f"policy {policy.source}: {metric!r} is not computed by this run; "
                                + _how_to_compute(metric, spec.pattern, eps_grid, attacks, eps_l2, token_budget))


def policy_metrics(policy: Policy) -> list[str]:
    """Every metric a policy names, in its [gates] and its [regression] table, once each."""
    names = [gate.metric for gate in policy.gates if gate.kind != "verdict"] + list(policy.regression or {})
    return list(dict.fromkeys(names))


def known_spec(metric: str, source: str):
    """The catalogue entry of ``metric``; bad input naming the valid patterns when there is none."""
    attack_names, explainer_names = sorted({**ATTACKS, **TEXT_ATTACKS}), sorted(EXPLAINERS)
    spec = spec_for(metric, attack_names, explainer_names)
    if spec is None:
        patterns = ", ".join(s.pattern for s in CATALOGUE)
        raise BadInputError(
            f"policy {source}: unknown metric {metric!r}; valid names follow these patterns: "
            f"{patterns} (attack: {'|'.join(attack_names)}; explainer: {'|'.join(explainer_names)})"
        )
    return spec


def _how_to_compute(metric: str, pattern: str, eps_grid: tuple[float, ...], attacks: tuple[str, ...],
                    eps_l2: tuple[float, ...] = (), token_budget: tuple[int, ...] = ()) -> str:
    match = CATALOGUE[[s.pattern for s in CATALOGUE].index(pattern)].regex(sorted({**ATTACKS, **TEXT_ATTACKS}), sorted(EXPLAINERS)).match(metric)
    hints = []
    groups = match.groupdict() if match else {}
    if groups.get("attack") and groups["attack"] not in attacks:
        hints.append(f"add {groups['attack']} to --attacks")
    if groups.get("eps"):
        attack = groups.get("attack") or next((w for w in ("worst-l2", "worst-tokens") if w in metric), "")
        l2 = attack == "worst-l2" or (attack in ATTACKS and ATTACKS[attack].norm == "l2")
        tokens = attack == "worst-tokens" or (attack in TEXT_ATTACKS and TEXT_ATTACKS[attack].norm == TOKEN_NORM)
        if float(groups["eps"]) not in (eps_l2 if l2 else token_budget if tokens else eps_grid):
            from auditor.catalogue.attacks import NORM_LABELS

            norm = "l2" if l2 else TOKEN_NORM if tokens else "linf"
            hints.append(f"add {groups['eps']} to {NORM_LABELS[norm].option}")
    return " and ".join(hints) if hints else "check the options that select attacks and explainers"


def default_policy(planned: list[str], *, eps_grid: tuple[float, ...], attacks: tuple[str, ...],
                   eps_l2: tuple[float, ...] = (), token_budget: tuple[int, ...] = ()) -> Policy:
    """The built-in policy, from what the run computes:

    - ``clean.accuracy >= 0.90``;
    - ``robust.accuracy.worst@<largest eps> >= 0.50``: the per-sample worst case over every L-inf evasion attack
      at the largest L-inf eps (``worst-l2`` at the largest ``--eps-l2`` when only L2 attacks run; on text
      ``worst-tokens`` at the largest ``--token-budget``);
    - ``robust.masking_suspected <= 0`` and ``robust.not_converged <= 0`` whenever the checks compute them;
    - the trust verdict over all its conditions (:func:`verdict_gate`), whatever ran: a condition that did not
      run leaves the verdict "not established", and the gate then fails naming what to run.
    """
    gates = [Gate("clean.accuracy", ">=", DEFAULT_MIN_ACCURACY)]
    headline = [f"robust.accuracy.worst@{format_eps(max(eps_grid))}"]
    if eps_l2:
        headline.append(f"robust.accuracy.worst-l2@{format_eps(max(eps_l2))}")
    if token_budget:
        headline.insert(0, f"robust.accuracy.worst-tokens@{format_eps(max(token_budget))}")
    chosen = next((name for name in headline if name in planned), None)
    if chosen is not None:
        gates.append(Gate(chosen, ">=", DEFAULT_MIN_ROBUST_ACCURACY))
    for check in ("robust.masking_suspected", "robust.not_converged"):
        if check in planned:
            gates.append(Gate(check, "<=", 0.0))
    gates.append(verdict_gate())
    return Policy(gates=tuple(gates), source="default")


def evaluate(policy: Policy, metrics: dict[str, MetricValue], skipped: dict[str, str], *,
             n_rows: int | None = None) -> list[GateResult]:
    """Each gate's result. An interval gate also fails when its metric counted fewer than
    :data:`MIN_INTERVAL_ROWS` samples: the metric's own ``n``, else ``n_rows`` (the audited rows)."""
    results = []
    for gate in policy.gates:
        if gate.kind == "verdict":
            results.append(_verdict_result(gate, metrics, skipped))
            continue
        measured = metrics.get(gate.metric)
        if measured is None:
            reason = skipped.get(gate.metric, "not computed")
            results.append(GateResult(gate.name, gate.kind, gate.metric, gate.op, gate.threshold, None, None, False,
                                      f"no value: {reason}"))
            continue
        ci95 = list(measured.ci95) if measured.ci95 else None
        if gate.end != "value" and ci95 is None:
            results.append(GateResult(gate.name, gate.kind, gate.metric, gate.op, gate.threshold, measured.value,
                                      None, False, f"no 95% interval to test its {gate.end} end",
                                      group=gate_group(gate)))
            continue
        counted = measured.n if measured.n is not None else n_rows
        if gate.end != "value" and counted is not None and counted < MIN_INTERVAL_ROWS:
            results.append(GateResult(gate.name, gate.kind, gate.metric, gate.op, gate.threshold, measured.value,
                                      ci95, False, f"too few samples (n={counted}) for its 95% interval; an interval "
                                      f"gate needs at least {MIN_INTERVAL_ROWS}", group=gate_group(gate)))
            continue
        tested = measured.value if gate.end == "value" else ci95[INTERVAL_ENDS[gate.end]]
        passed = bool(OPERATORS[gate.op](tested, gate.threshold))
        relation = gate.op if passed else _negate(gate.op)
        results.append(GateResult(
            gate.name, gate.kind, gate.metric, gate.op, gate.threshold, measured.value, ci95, passed,
            f"{gate.end} {tested:.4g} {relation} threshold {gate.threshold:g}", group=gate_group(gate),
        ))
    return results


def _verdict_result(gate: Gate, metrics: dict[str, MetricValue], skipped: dict[str, str]) -> GateResult:
    verdict = trust_verdict(metrics, skipped, gate.conditions)
    value = {"yes": 1.0, "no": 0.0}.get(verdict.answer)
    return GateResult(gate.name, gate.kind, gate.metric, gate.op, gate.threshold, value, None,
                      verdict.answer == "yes", verdict.finding, group=gate_group(gate),
                      conditions=list(gate.conditions))


def gate_group(gate: Gate | GateResult) -> str:
    """The junit test suite of a gate: the metric's group (clean, robust, ...), or ``regression``."""
    return "regression" if gate.kind == "regression" else gate.metric.split(".", 1)[0]


# ----------------------------------------------------------------------------- regression against a baseline

@dataclass(frozen=True)
class Baseline:
    source: str
    metrics: dict[str, MetricValue]


def load_baseline(path: str | Path) -> Baseline:
    """An earlier run's results.json: the metrics a regression gate compares against."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"baseline file {str(path)!r} does not exist; pass the results.json of an earlier "
                            "audit run") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"baseline file {str(path)!r} cannot be read ({error})") from None
    except json.JSONDecodeError as error:
        raise BadInputError(f"baseline file {str(path)!r} is not JSON ({error}); pass the results.json of an "
                            "earlier audit run") from None
    table = document.get("metrics") if isinstance(document, dict) else None
    if not isinstance(table, dict):
        raise BadInputError(f"baseline file {str(path)!r} has no \"metrics\" table; pass the results.json of an "
                            "earlier audit run")
    try:
        metrics = {name: MetricValue(float(entry["value"]), tuple(entry["ci95"]) if entry.get("ci95") else None)
                   for name, entry in table.items()}
    except (TypeError, KeyError, ValueError):
        raise BadInputError(f"baseline file {str(path)!r}: every metric needs a numeric \"value\"") from None
    return Baseline(source=str(path), metrics=metrics)


def regression_tolerances(policy: Policy, fallback: Policy) -> dict[str, float]:
    """The policy's [regression] table; without one, every gated metric (the policy's [gates], else the
    fallback's) at the default tolerance."""
    if policy.regression is not None:
        informational = [m for m in policy.regression if known_spec(m, policy.source).higher_is_better is None]
        if informational:
            raise BadInputError(f"policy {policy.source}: [regression] {informational[0]!r} is informational (neither "
                                "direction is better), so it cannot regress; gate it with a threshold instead")
        return dict(policy.regression)
    gated = policy.gates or fallback.gates
    return {gate.metric: DEFAULT_REGRESSION_TOLERANCE for gate in gated
            if gate.kind == "threshold" and known_spec(gate.metric, policy.source).higher_is_better is not None}


def check_baseline(baseline: Baseline, tolerances: dict[str, float]) -> None:
    for metric in tolerances:
        if metric not in baseline.metrics:
            raise BadInputError(f"baseline {baseline.source} has no value for {metric!r}; audit the baseline with "
                                "the same options, or drop the metric from [regression]")


def evaluate_regression(tolerances: dict[str, float], baseline: Baseline,
                        metrics: dict[str, MetricValue], skipped: dict[str, str]) -> list[GateResult]:
    """Fail a metric that got more than its tolerance worse than the baseline's value, in its own direction."""
    results = []
    for metric, tolerance in tolerances.items():
        spec = known_spec(metric, "regression")
        before = baseline.metrics[metric]
        if spec.higher_is_better:
            op, threshold = ">=", before.value - tolerance
        else:
            op, threshold = "<=", before.value + tolerance
        name = f"{metric} regression (baseline {before.value:.4g}, tolerance {tolerance:g})"
        common = dict(name=name, kind="regression", metric=metric, op=op, threshold=threshold, group="regression",
                      baseline=before.value, baseline_ci95=list(before.ci95) if before.ci95 else None,
                      tolerance=tolerance)
        measured = metrics.get(metric)
        if measured is None:
            results.append(GateResult(value=None, ci95=None, passed=False,
                                      message=f"no value: {skipped.get(metric, 'not computed')}", **common))
            continue
        passed = bool(OPERATORS[op](measured.value, threshold))
        significance = change_significance(measured, before)
        relation = op if passed else _negate(op)
        results.append(GateResult(
            value=measured.value, ci95=list(measured.ci95) if measured.ci95 else None, passed=passed,
            message=(f"value {measured.value:.4g} {relation} threshold {threshold:.4g} (baseline "
                     f"{before.value:.4g} {'-' if spec.higher_is_better else '+'} tolerance {tolerance:g}); "
                     f"change {measured.value - before.value:+.4g}: {significance}"),
            significance=significance, **common,
        ))
    return results


def change_significance(new: MetricValue, old: MetricValue) -> str:
    """Whether a change is larger than the two 95% intervals explain: disjoint intervals are "significant".

    This is a conservative test, said so in the report and the README: two independent 95% intervals that
    do not overlap imply a difference at a level well below 5% (about 0.6% for normal estimates of equal
    spread), while overlapping intervals do NOT show that nothing changed. A paired test (an interval of
    the per-sample difference, as the deletion_auc_diff metrics within one run use) is impossible here:
    results.json keeps each metric's mean and interval, not its per-sample values, and the two runs may
    audit different rows."""
    if new.value == old.value:
        return "unchanged"
    if new.ci95 is None or old.ci95 is None:
        return "no interval"
    if new.ci95[0] > old.ci95[1] or new.ci95[1] < old.ci95[0]:
        return "significant"
    return "within the intervals"


def exit_code(results: list[GateResult]) -> int:
    return EXIT_PASSED if all(r.passed for r in results) else EXIT_GATE_FAILED


def _negate(op: str) -> str:
    return {">=": "<", "<=": ">", ">": "<=", "<": ">="}[op]
