"""Turning an audit into files: results.json, report.html, junit.xml, summary.md.

Data and presentation apart: results become plain dicts and dataclasses here;
the jinja2 template only renders them and never touches a tensor.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from importlib import resources

import jinja2
import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from auditor.gates import GateResult, Policy, gate_group
from auditor.metrics import CATALOGUE, MetricValue, spec_for
from auditor.verdict import panel_markdown, trust_panel

SCHEMA_VERSION = 1
TOOL_NAME = "attention-audit"
GROUP_TITLES = {"clean": "Detection", "robust": "Robustness", "stability": "Attention under attack",
                "faithfulness": "Faithfulness", "trust": "Trust", "attention": "Attention sparsity"}
SHORT_NAMES = {"integrated-gradients": "int. grad."}


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(TOOL_NAME)
    except PackageNotFoundError:
        return "0+unknown"


def results_document(*, model: dict, data: dict, config: dict, metrics: dict[str, MetricValue],
                     skipped: dict[str, str], gates: list[GateResult], policy: Policy, timing: dict,
                     masking: list[dict] | None = None, curves: dict | None = None,
                     baseline: dict | None = None, check_metrics: dict | None = None) -> dict:
    """``check_metrics``: the masking and convergence verdicts with what a 1 means (when the checks ran)."""
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": tool_version()},
        "model": model,
        "data": data,
        "config": config,
        "metrics": {name: metrics[name].to_dict() for name in sorted(metrics)},
        "skipped": dict(sorted(skipped.items())),
        "policy": {"source": policy.source},
        "masking_checks": masking or [],
        "check_metrics": check_metrics or {},
        "gates": [g.to_dict() for g in gates],
        "passed": all(g.passed for g in gates),
        "timing": timing,
        "curves": curves or {"robustness": {}, "removal": {}},
    }
    if baseline is not None:
        document["baseline"] = baseline
    return document


def render_json(document: dict) -> bytes:
    return (json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode()


def render_junit(gates: list[GateResult]) -> bytes:
    """One <testsuite> per gate group (clean, robust, stability, faithfulness, regression, ...), one <testcase>
    per gate, a <failure message="value 0.41 < threshold 0.5"> on each failed gate: the shape CI test
    viewers (GitHub, GitLab, Jenkins) read."""
    suites = ET.Element("testsuites", name=TOOL_NAME, tests=str(len(gates)),
                        failures=str(sum(not g.passed for g in gates)), errors="0")
    groups: dict[str, list[GateResult]] = {}
    for gate in gates:
        groups.setdefault(gate.group or gate_group(gate), []).append(gate)
    for group, members in groups.items():
        suite = ET.SubElement(suites, "testsuite", name=group, tests=str(len(members)),
                              failures=str(sum(not g.passed for g in members)), errors="0", skipped="0", time="0")
        for gate in members:
            case = ET.SubElement(suite, "testcase", classname=f"{TOOL_NAME}.{group}", name=gate.name, time="0")
            if not gate.passed:
                failure = ET.SubElement(case, "failure", message=gate.message, type="GateFailed")
                failure.text = f"{gate.metric}: {gate.message}"
    ET.indent(suites)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="utf-8") + b"\n"


def _md(text: str) -> str:
    return re.sub(r"([|\\`*_<>\[\]])", r"\\\1", text)


def _interval(ci95) -> str:
    return "—" if not ci95 else f"[{ci95[0]:.3g}, {ci95[1]:.3g}]"


def _worst_lines(metrics: dict) -> list[str]:
    """The headline first: robust accuracy as the per-sample worst case over the attacks, per norm and eps."""
    lines = []
    for worst, title in (("worst", "L-inf"), ("worst-l2", "L2")):
        found = sorted(((float(name.split("@", 1)[1]), entry) for name, entry in metrics.items()
                        if name.startswith(f"robust.accuracy.{worst}@")), key=lambda item: item[0])
        if found:
            cells = "; ".join(f"eps {eps:g}: **{entry['value']:.3g}** {_interval(entry['ci95'])}"
                              for eps, entry in found)
            lines.append(f"Robust accuracy, worst case over every {title} evasion attack: {cells}.")
    return [*lines, ""] if lines else []


def render_summary(document: dict) -> bytes:
    verdict = "PASSED" if document["passed"] else "FAILED"
    model = document["model"]
    lines = [
        f"## attention-audit: {verdict}",
        "",
        f"Model `{_md(model['path'])}` ({_md(model['detector'])}, attention {_md(model.get('attention') or 'unknown')}, "
        f"defense {_md(model['defense'])}), "
        f"{document['data']['n_samples']} samples of {_md(document['data']['name'])}; "
        f"policy: {_md(document['policy']['source'])}.",
        "",
        *_worst_lines(document["metrics"]),
    ]
    determinism = model.get("determinism", {})
    if model.get("deterministic") is False:
        lines += [f"**The model is not deterministic**: logits of the same rows differed by up to "
                  f"{determinism.get('max_abs_logit_diff', float('nan')):.3g} between two calls; predictions are "
                  f"the mean probability over {determinism.get('draws', '?')} draws and the attacks used EOT.", ""]
    outside = document["data"].get("out_of_range") or {}
    if outside.get("rows"):
        features = ", ".join(f"`{_md(name)}` {rows}" for name, rows in list(outside["features"].items())[:8])
        more = f" and {len(outside['features']) - 8} more features" if len(outside["features"]) > 8 else ""
        lines += [f"**{outside['rows']} audited rows lay outside the training range** ({outside['values']} values, "
                  f"clipped to it): {features}{more}.", ""]
    lines += [
        "| Gate | Value | 95% interval | Result |",
        "| --- | --- | --- | --- |",
    ]
    regressions = [g for g in document["gates"] if g["kind"] == "regression"]
    for gate in document["gates"]:
        if gate["kind"] == "regression":
            continue
        value = "—" if gate["value"] is None else f"{gate['value']:.3g}"
        lines.append(f"| `{gate['name']}` | {value} | {_interval(gate['ci95'])} | "
                     f"{'pass' if gate['passed'] else '**FAIL**'} |")
    if regressions:
        lines += [
            "",
            f"Regression against the baseline `{_md(document.get('baseline', {}).get('source', '?'))}`:",
            "",
            "| Metric | Baseline | New | Change | Tolerance | Change vs intervals | Result |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for gate in regressions:
            new = "—" if gate["value"] is None else f"{gate['value']:.3g} {_interval(gate['ci95'])}"
            change = "—" if gate["value"] is None else f"{gate['value'] - gate['baseline']:+.3g}"
            lines.append(f"| `{gate['metric']}` | {gate['baseline']:.3g} {_interval(gate['baseline_ci95'])} | "
                         f"{new} | {change} | {gate['tolerance']:g} | {gate['significance'] or '—'} | "
                         f"{'pass' if gate['passed'] else '**FAIL**'} |")
        lines += ["", "\"significant\": the two runs' 95% intervals do not overlap, a conservative test (no paired "
                  "test is possible across runs: results.json keeps no per-sample values)."]
    metrics = {name: MetricValue(entry["value"], tuple(entry["ci95"]) if entry.get("ci95") else None)
               for name, entry in document["metrics"].items()}
    lines += ["", *panel_markdown(trust_panel(metrics, document.get("skipped", {})))]
    return ("\n".join(lines) + "\n").encode()


# ----------------------------------------------------------------------------- plots

def _svg(figure: Figure) -> Markup:
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": TOOL_NAME, "font.size": 9}):
        figure.savefig(buffer, format="svg", bbox_inches="tight",
                       metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return Markup(text)


def robustness_plot(curves: dict[str, list[tuple[float, float]]], clean_accuracy: float,
                    norms: dict[str, str] | None = None) -> Markup:
    """Robust accuracy against eps, one panel per norm (``norms``: curve name -> "linf" or "l2"; L2 budgets are
    other units, so they get their own axes); the worst case drawn first, thick and black."""
    norms = norms or {name: "linf" for name in curves}
    panels = [norm for norm in ("linf", "l2") if any(norms.get(name) == norm for name in curves)]
    figure = Figure(figsize=(5.2 * len(panels), 3.0))
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    labels = {"linf": "eps (fraction of each feature's range, L-inf)", "l2": "eps (L2 norm, [0, 1] units)"}
    for axes, norm in zip(axes_list, panels):
        for attack, points in curves.items():
            if norms.get(attack) != norm:
                continue
            eps = [0.0] + [p[0] for p in points]
            acc = [clean_accuracy] + [p[1] for p in points]
            worst = attack.startswith("worst")
            axes.plot(eps, acc, marker="o", label=attack, **({"color": "black", "linewidth": 2.4, "zorder": 3}
                                                             if worst else {}))
        axes.set_xlabel(labels[norm])
        axes.set_ylabel("accuracy")
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(frameon=False, fontsize=7)
    return _svg(figure)


def removal_plot(curves: dict[str, dict[str, list[float]]], *, subject: str = "",
                 random_dashed: bool = True) -> Markup:
    """Deletion and insertion curves side by side, one line per key of ``curves`` (explainers in a report,
    checkpoints in a comparison, where ``subject`` names the explainer they share)."""
    # a panel per curve the audit computed (an audit asking only for deletion has no insertion curve)
    kinds = [kind for kind in ("deletion", "insertion") if any(kind in curve for curve in curves.values())]
    figure = Figure(figsize=(4.0 * len(kinds), 3.0))
    panels = figure.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    prefix = f", {subject}" if subject else ""
    for axes, kind in zip(panels, kinds):
        for name, curve in curves.items():
            if kind in curve:
                style = dict(color="0.5", linestyle="--") if random_dashed and name == "random" else {}
                axes.plot(curve["fractions"], curve[kind], label=name, **style)
        direction = "lower" if kind == "deletion" else "higher"
        axes.set_title(f"{kind}{prefix} ({direction} is more faithful)")
        axes.set_xlabel("fraction of features changed")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("predicted-class probability")
    panels[-1].legend(frameon=False, fontsize=8)
    return _svg(figure)


# ----------------------------------------------------------------------------- HTML

@dataclass
class MetricRow:
    name: str
    value: str
    interval: str
    arrow: str
    definition: str


@dataclass
class MetricMatrix:
    """One metric family as attack x eps: what a reviewer compares at a glance."""

    family: str
    arrow: str
    definition: str
    eps: list[str]
    rows: list[tuple[str, list[str]]]


@dataclass
class MetricGroup:
    key: str
    title: str
    rows: list[MetricRow] = field(default_factory=list)
    matrices: list[MetricMatrix] = field(default_factory=list)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def metric_groups(metrics: dict[str, MetricValue], attacks: list[str], explainers: list[str]) -> list[MetricGroup]:
    groups: dict[str, MetricGroup] = {key: MetricGroup(key, title) for key, title in GROUP_TITLES.items()}
    for name in metrics:
        spec = spec_for(name, attacks, explainers)
        group = name.split(".", 1)[0]
        value = metrics[name]
        interval = ""
        if value.ci95 is not None:
            interval = f"± {_fmt((value.ci95[1] - value.ci95[0]) / 2)}  [{_fmt(value.ci95[0])}, {_fmt(value.ci95[1])}]"
        groups.setdefault(group, MetricGroup(group, GROUP_TITLES.get(group, group))).rows.append(MetricRow(
            name=name, value=_fmt(value.value), interval=interval, arrow=spec.arrow if spec else "",
            definition=spec.definition if spec else "",
        ))
    for group in groups.values():
        group.matrices = metric_matrices({row.name: metrics[row.name] for row in group.rows}, attacks, explainers)
    return [group for group in groups.values() if group.rows]


_PER_ATTACK = re.compile(r"^(?P<family>[a-z_]+\.[a-z_]+)\.(?P<attack>[a-z0-9-]+)@(?P<eps>[0-9.e-]+)$")


def metric_matrices(metrics: dict[str, MetricValue], attacks: list[str], explainers: list[str]) -> list[MetricMatrix]:
    """Metrics named FAMILY.ATTACK@EPS, arranged as one attack x eps table per family and norm (L-inf and L2
    budgets are other units): the worst case first, then each attack, then the targeted runs."""
    from auditor.robustness import curve_names, curve_norm

    order = curve_names(attacks, attacks)
    cells: dict[tuple[str, str], dict[str, dict[str, MetricValue]]] = {}
    for name, value in metrics.items():
        match = _PER_ATTACK.match(name)
        if match and match["attack"] in order:
            key = (match["family"], curve_norm(match["attack"]))
            cells.setdefault(key, {}).setdefault(match["attack"], {})[match["eps"]] = value
    matrices = []
    for (family, norm), by_attack in cells.items():
        eps = sorted({e for row in by_attack.values() for e in row}, key=float)
        typical = next((a for a in by_attack if not a.startswith("worst") and not a.endswith("-targeted")),
                       next(iter(by_attack)))  # the family's definition, not the worst case's
        spec = spec_for(f"{family}.{typical}@{eps[0]}", attacks, explainers)
        rows = [(attack, [_cell(by_attack[attack].get(e)) for e in eps]) for attack in order if attack in by_attack]
        title = family if norm == "linf" else f"{family} (L2 budgets)"
        matrices.append(MetricMatrix(title, spec.arrow if spec else "", spec.definition if spec else "", eps, rows))
    return matrices


def _cell(value: MetricValue | None) -> str:
    if value is None:
        return "—"
    if value.ci95 is None:
        return _fmt(value.value)
    return f"{_fmt(value.value)} ± {_fmt((value.ci95[1] - value.ci95[0]) / 2)}"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters["fmt"] = _fmt
    return environment


def _template_source(name: str) -> str:
    return resources.files("reports").joinpath("templates", name).read_text(encoding="utf-8")


def finite_metrics(metrics: dict[str, MetricValue], skipped: dict[str, str]) -> dict[str, MetricValue]:
    """Drop any metric that came out NaN or infinite into ``skipped`` (results.json never holds NaN)."""
    kept = {}
    for name, value in metrics.items():
        if value is None or not np.isfinite(value.value):
            skipped.setdefault(name, "the value is undefined on these samples")
            continue
        if value.ci95 is not None and not all(np.isfinite(value.ci95)):
            value = replace(value, ci95=None)
        kept[name] = value
    return kept
