"""``audit compare``: several checkpoints' audits side by side.

Reads each audit's results.json (nothing else), refuses results that were not
measured the same way unless told otherwise, and turns them into one plain
comparison: every metric per checkpoint with the best marked in the metric's
direction, robustness and faithfulness curves overlaid, clean versus robust
accuracy with its Pareto front, what differs in training, and which checkpoint
passes the policy. compare.json, compare.md and compare.html all render that
one comparison.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from markupsafe import Markup

from attacks import ATTACKS, TEXT_ATTACKS
from auditor.catalogue import EXPLAINER_NAMES as EXPLAINERS
from auditor.gates import Policy, evaluate, known_spec
from auditor.metrics import MetricValue
from auditor.report.render import GROUP_TITLES, TOOL_NAME, environment, md, removal_plot, svg
from auditor.report.document import render_json, tool_version
from auditor.catalogue import spec_for
from detectors.errors import BadInputError

COMPARE_SCHEMA_VERSION = 1
CLEAN_METRIC = "clean.accuracy"
_ROBUST_ACCURACY = re.compile(r"^robust\.accuracy\.(?P<attack>[a-z0-9-]+)@(?P<eps>[0-9.e-]+)$")


@dataclass
class Audited:
    """One checkpoint's audit: a short name for columns and legends, where it came from, its results."""

    name: str
    source: str
    document: dict

    @property
    def metrics(self) -> dict[str, MetricValue]:
        return {name: MetricValue.from_dict(entry) for name, entry in self.document["metrics"].items()}


@dataclass
class MetricRow:
    name: str
    arrow: str
    cells: list[MetricValue | None]
    best: list[bool]


@dataclass
class TrainingRow:
    field: str
    values: list[str]
    differs: bool


@dataclass
class Verdict:
    name: str
    passed: bool
    failed: list[str]
    total: int


@dataclass
class Comparison:
    audits: list[Audited]
    differences: list[str]
    rows: list[MetricRow]
    training: list[TrainingRow]
    robust_metric: str | None
    pareto_points: dict[str, tuple[float, float]]
    pareto_front: list[str]
    verdicts: list[Verdict]
    policy_source: str
    explainer: str
    robustness_curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    removal_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.audits]


# ----------------------------------------------------------------------------- reading and checking

def load_audit(path: Path, name: str) -> Audited:
    """An audit output folder (or its results.json)."""
    file = path / "results.json" if path.is_dir() else path
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{str(path)!r} holds no results.json; pass audit output folders written by "
                            "audit run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{str(file)!r} is not a readable results.json ({error})") from None
    if not isinstance(document, dict) or not all(key in document for key in ("metrics", "config", "data", "model")):
        raise BadInputError(f"{str(file)!r} is not an audit's results.json (it lacks metrics, config, data or "
                            "model)")
    return Audited(name=name, source=str(path), document=document)


def unique_names(paths: list[Path]) -> list[str]:
    """Column names: each folder's (or checkpoint file's) name, numbered where two coincide."""
    stems = [(p.parent.name if p.name == "results.json" else p.stem) or str(p) for p in paths]
    names, seen = [], {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if stems.count(stem) == 1 else f"{stem}-{seen[stem]}")
    return names


def _compared_aspects(document: dict) -> dict[str, object]:
    config, data = document["config"], document["data"]
    return {
        "data": {key: data.get(key) for key in ("name", "split", "n_samples")},
        "eps grid": config.get("eps"),
        "attacks": config.get("attacks"),
        "attack parameters": config.get("attack_params"),
        "explainers": config.get("explainers"),
        "faithfulness metrics": config.get("faithfulness_metrics"),
        "removal baseline": config.get("removal_baseline"),
        "seed": config.get("seed"),
    }


def config_differences(audits: list[Audited]) -> list[str]:
    """One line per aspect of the configuration in which the audits differ."""
    aspects = [_compared_aspects(a.document) for a in audits]
    lines = []
    for aspect in aspects[0]:
        values = [json.dumps(a[aspect], sort_keys=True, ensure_ascii=False) for a in aspects]
        if len(set(values)) > 1:
            lines.append(f"{aspect} differs: " + "; ".join(f"{a.name} {v}" for a, v in zip(audits, values)))
    return lines


# ----------------------------------------------------------------------------- the comparison

def compare_audits(audits: list[Audited], *, allow_mismatch: bool = False, policy: Policy | None = None,
                   robust_metric: str | None = None, explainer: str = "attention") -> Comparison:
    if len(audits) < 2:
        raise BadInputError(f"audit compare needs at least two audits, got {len(audits)}")
    differences = config_differences(audits)
    if differences and not allow_mismatch:
        raise BadInputError(f"refusing to compare audits configured differently: {differences[0]}"
                            f"{f' (and {len(differences) - 1} more)' if len(differences) > 1 else ''}; "
                            "audit them with the same options, or pass --allow-mismatch")
    metrics = [a.metrics for a in audits]
    robust_metric = _choose_robust_metric(metrics, robust_metric)
    points = {a.name: (m[CLEAN_METRIC].value, m[robust_metric].value) for a, m in zip(audits, metrics)
              if robust_metric and CLEAN_METRIC in m and robust_metric in m}
    higher = _higher_is_better(robust_metric) if robust_metric else True
    return Comparison(
        audits=audits, differences=differences, rows=metric_rows(metrics), training=training_rows(audits),
        robust_metric=robust_metric, pareto_points=points, pareto_front=pareto_front(points, robust_higher=higher),
        verdicts=verdicts(audits, policy), policy_source=policy.source if policy else "each audit's own policy",
        explainer=explainer,
        robustness_curves={a.name: curves_from_clean_accuracy(m) for a, m in zip(audits, metrics)},
        removal_curves={a.name: a.document.get("curves", {}).get("removal", {}).get(explainer)
                        for a in audits if a.document.get("curves", {}).get("removal", {}).get(explainer)},
    )


def _higher_is_better(metric: str) -> bool | None:
    spec = spec_for(metric, sorted({**ATTACKS, **TEXT_ATTACKS}), sorted(EXPLAINERS))
    return None if spec is None else spec.higher_is_better


def _group_rank(name: str) -> tuple[int, str]:
    groups = list(GROUP_TITLES)
    group = name.split(".", 1)[0]
    return (groups.index(group) if group in groups else len(groups), name)


def metric_rows(metrics: list[dict[str, MetricValue]]) -> list[MetricRow]:
    """Every metric any audit has, one row each, the best value(s) marked in the metric's direction (no mark
    when every audit measured the same value)."""
    names = sorted({name for m in metrics for name in m}, key=_group_rank)
    rows = []
    for name in names:
        cells = [m.get(name) for m in metrics]
        higher = _higher_is_better(name)
        present = [c.value for c in cells if c is not None]
        best_value = None
        if higher is not None and len(set(present)) > 1:
            best_value = max(present) if higher else min(present)
        rows.append(MetricRow(name=name, arrow="" if higher is None else ("↑" if higher else "↓"), cells=cells,
                              best=[c is not None and c.value == best_value for c in cells]))
    return rows


def _choose_robust_metric(metrics: list[dict[str, MetricValue]], requested: str | None) -> str | None:
    """The headline robust accuracy (``worst``: per sample over every L-inf evasion attack) at the largest eps every
    audit measured, else pgd's, else another L-inf attack's; unless named. An older results.json without the
    worst case falls back to pgd."""
    if requested is not None:
        known_spec(requested, "--robust-metric")
        if not any(requested in m for m in metrics):
            raise BadInputError(f"--robust-metric {requested!r} is in none of the audits; choose a metric their "
                                "results.json files hold, e.g. robust.accuracy.pgd@0.1")
        return requested
    from auditor.catalogue.attacks import curve_norm

    common = set.intersection(*(set(m) for m in metrics))
    preference = {"worst": 2, "pgd": 1}
    candidates = [(float(match["eps"]), preference.get(match["attack"], 0), name) for name in common  # L-inf only:
                  if (match := _ROBUST_ACCURACY.match(name)) and _is_linf(match["attack"], curve_norm)]  # L2 is other units
    return max(candidates)[2] if candidates else None


def _is_linf(curve: str, curve_norm) -> bool:
    try:
        return curve_norm(curve) == "linf"
    except KeyError:  # an attack this version does not register (an older results.json): judged by its name
        return not curve.endswith("-l2")


def pareto_front(points: dict[str, tuple[float, float]], *, robust_higher: bool = True) -> list[str]:
    """The audits no other audit beats on both clean accuracy (higher) and the robust metric at once."""
    sign = 1.0 if robust_higher else -1.0
    scored = {name: (x, sign * y) for name, (x, y) in points.items()}
    front = []
    for name, (x, y) in scored.items():
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for other, (ox, oy) in scored.items()
                        if other != name)
        if not dominated:
            front.append(name)
    return front


def curves_from_clean_accuracy(metrics: dict[str, MetricValue]) -> dict[str, list[tuple[float, float]]]:
    """Robust accuracy against eps of every ``robust.accuracy.NAME@EPS`` an audit recorded, per name, each curve
    starting from the clean accuracy at eps 0 (the overlay of ``audit compare``; an audit's own report plots
    :func:`auditor.catalogue.attacks.robustness_curves`, on its eps grids, without the clean point)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, value in metrics.items():
        if match := _ROBUST_ACCURACY.match(name):
            curves.setdefault(match["attack"], []).append((float(match["eps"]), value.value))
    start = [(0.0, metrics[CLEAN_METRIC].value)] if CLEAN_METRIC in metrics else []
    return {attack: start + sorted(points) for attack, points in sorted(curves.items())}


def _setting(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def training_rows(audits: list[Audited]) -> list[TrainingRow]:
    """What differs in how the checkpoints were made: detector, attention function, defense and its settings,
    training run."""
    models = [a.document["model"] for a in audits]
    fields: dict[str, list] = {
        "detector": [m.get("detector") for m in models],
        "attention": [m.get("attention") for m in models],
        "trained on": [m.get("data set") for m in models],
        "defense": [m.get("defense") for m in models],
    }
    settings = [m.get("defense_settings") or {} for m in models]
    for key in dict.fromkeys(k for s in settings for k in s if k != "name"):
        fields[f"defense {key}"] = [s.get(key) for s in settings]
    training = [m.get("training") or {} for m in models]
    for key in dict.fromkeys(k for t in training for k in t):
        fields[f"training {key}"] = [t.get(key) for t in training]
    fields["sha256"] = [(m.get("sha256") or "")[:12] or None for m in models]
    rows = []
    for name, values in fields.items():
        shown = [_setting(v) for v in values]
        rows.append(TrainingRow(field=name, values=shown, differs=len(set(shown)) > 1))
    return rows


def verdicts(audits: list[Audited], policy: Policy | None) -> list[Verdict]:
    """Each audit's own gates, or one policy evaluated again on every audit's metrics."""
    results = []
    for audit in audits:
        if policy is None or not policy.gates:  # a regression-only policy: each audit's own (default) gates
            gates = audit.document.get("gates", [])
            failed = [g["name"] for g in gates if not g["passed"]]
            results.append(Verdict(audit.name, not failed, failed, len(gates)))
            continue
        for gate in policy.gates:
            if gate.kind != "verdict":  # the trust verdict's gate names conditions, not a metric
                known_spec(gate.metric, policy.source)
        evaluated = evaluate(policy, audit.metrics, dict(audit.document.get("skipped", {})),
                             n_rows=audit.document.get("data", {}).get("n_samples"))
        failed = [g.name for g in evaluated if not g.passed]
        results.append(Verdict(audit.name, not failed, failed, len(evaluated)))
    return results


# ----------------------------------------------------------------------------- outputs

def _cell_text(value: MetricValue | None) -> str:
    if value is None:
        return "—"
    if value.ci95 is None:
        return f"{value.value:.3g}"
    return f"{value.value:.3g} ± {(value.ci95[1] - value.ci95[0]) / 2:.2g}"


def compare_document(comparison: Comparison, *, allow_mismatch: bool) -> dict:
    names = comparison.names
    return {
        "schema_version": COMPARE_SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": tool_version()},
        "audits": [{"name": a.name, "source": a.source, "model": a.document["model"]} for a in comparison.audits],
        "differences": comparison.differences,
        "mismatch_allowed": allow_mismatch,
        "metrics": {
            row.name: {"better": {"↑": "higher", "↓": "lower"}.get(row.arrow),
                       "values": {n: (c.to_dict() if c is not None else None) for n, c in zip(names, row.cells)},
                       "best": [n for n, best in zip(names, row.best) if best]}
            for row in comparison.rows
        },
        "training": {row.field: {"values": dict(zip(names, row.values)), "differs": row.differs}
                     for row in comparison.training},
        "pareto": {"x": CLEAN_METRIC, "y": comparison.robust_metric,
                   "points": {n: list(p) for n, p in comparison.pareto_points.items()},
                   "front": comparison.pareto_front},
        "policy": comparison.policy_source,
        "verdicts": {v.name: {"passed": v.passed, "failed": v.failed, "gates": v.total} for v in comparison.verdicts},
    }


def render_markdown(comparison: Comparison) -> bytes:
    names = comparison.names
    header = "| | " + " | ".join(f"`{md(n)}`" for n in names) + " |"
    rule = "| --- |" + " --- |" * len(names)
    lines = [f"## attention-audit: comparison of {len(names)} checkpoints", ""]
    if comparison.differences:
        lines += ["**Configurations differ** (compared with --allow-mismatch):", ""]
        lines += [f"- {md(d)}" for d in comparison.differences] + [""]
    lines += [f"Policy: {md(comparison.policy_source)}.", "", header, rule,
              "| verdict | " + " | ".join("pass" if v.passed else f"**FAIL** ({len(v.failed)}/{v.total})"
                                         for v in comparison.verdicts) + " |", ""]
    if comparison.robust_metric:
        lines += [f"Pareto front of `{CLEAN_METRIC}` against `{comparison.robust_metric}`: "
                  + ", ".join(f"`{md(n)}`" for n in comparison.pareto_front) + ".", ""]
    lines += ["### Training", "", header, rule]
    for row in comparison.training:
        mark = " (differs)" if row.differs else ""
        lines.append(f"| {md(row.field)}{mark} | " + " | ".join(md(v) for v in row.values) + " |")
    lines += ["", "### Metrics (best per row in bold; ± is half the 95% interval)", "", header, rule]
    for row in comparison.rows:
        cells = [f"**{_cell_text(c)}**" if best else _cell_text(c) for c, best in zip(row.cells, row.best)]
        lines.append(f"| `{row.name}` {row.arrow} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n").encode()


def robustness_overlay(curves: dict[str, dict[str, list[tuple[float, float]]]]) -> Markup | None:
    attacks = sorted({attack for per_audit in curves.values() for attack in per_audit})
    if not attacks:
        return None
    figure = Figure(figsize=(min(3.2 * len(attacks), 10.0), 2.9))
    axes_list = figure.subplots(1, len(attacks), sharey=True, squeeze=False)[0]
    for axes, attack in zip(axes_list, attacks):
        for name, per_audit in curves.items():
            if attack in per_audit:
                eps, accuracy = zip(*per_audit[attack])
                axes.plot(eps, accuracy, marker="o", label=name)
        axes.set_title(attack)
        axes.set_xlabel("eps")
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
    axes_list[0].set_ylabel("accuracy")
    axes_list[-1].legend(frameon=False, fontsize=8)
    return svg(figure)


def removal_overlay(curves: dict[str, dict[str, list[float]]], explainer: str) -> Markup | None:
    if not curves:
        return None
    return removal_plot(curves, subject=explainer, random_dashed=False)


def pareto_plot(points: dict[str, tuple[float, float]], front: list[str], robust_metric: str,
                robust_higher: bool) -> Markup | None:
    if not points:
        return None
    figure = Figure(figsize=(5.2, 3.6))
    axes = figure.subplots()
    for name, (x, y) in points.items():
        on_front = name in front
        axes.scatter([x], [y], s=46, marker="o" if on_front else "x", color="C0" if on_front else "0.45", zorder=3)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ordered = sorted((points[n] for n in front), key=lambda p: p[0])
    if len(ordered) > 1:
        xs, ys = zip(*ordered)
        axes.plot(xs, ys, color="C0", linewidth=1.2, label="Pareto front")
        axes.legend(frameon=False, fontsize=8)
    axes.set_xlabel(f"{CLEAN_METRIC} (higher is better)")
    axes.set_ylabel(f"{robust_metric} ({'higher' if robust_higher else 'lower'} is better)")
    axes.grid(alpha=0.3)
    axes.margins(0.15)
    return svg(figure)


def render_html(comparison: Comparison, document: dict) -> bytes:
    higher = _higher_is_better(comparison.robust_metric) if comparison.robust_metric else True
    context = dict(
        cmp=comparison,
        doc=document,
        names=comparison.names,
        cell=_cell_text,
        robustness_svg=robustness_overlay(comparison.robustness_curves),
        removal_svg=removal_overlay(comparison.removal_curves, comparison.explainer),
        pareto_svg=pareto_plot(comparison.pareto_points, comparison.pareto_front, comparison.robust_metric or "",
                               higher is not False),
        group_titles=GROUP_TITLES,
    )
    return environment().get_template("compare.html.j2").render(**context).encode("utf-8")


def compare_files(comparison: Comparison, *, allow_mismatch: bool) -> dict[str, bytes]:
    document = compare_document(comparison, allow_mismatch=allow_mismatch)
    return {
        "compare.json": render_json(document),
        "compare.md": render_markdown(comparison),
        "compare.html": render_html(comparison, document),
    }

