"""Turning an audit into files: results.json, report.html, junit.xml, summary.md.

Data and presentation apart: results become plain dicts and dataclasses here;
the jinja2 template only renders them and never touches a tensor.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace

import numpy as np

from auditor.gates import MIN_INTERVAL_ROWS, GateResult, Policy, gate_group
from auditor.metrics import MetricValue
from auditor.report.render import TOOL_NAME, md
from auditor.verdict import panel_markdown, panel_verdict

SCHEMA_VERSION = 1


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


def _interval(ci95) -> str:
    return "—" if not ci95 else f"[{ci95[0]:.3g}, {ci95[1]:.3g}]"


def _worst_lines(metrics: dict) -> list[str]:
    """The headline first: robust accuracy as the per-sample worst case over the attacks, per norm and eps."""
    from auditor.catalogue.attacks import NORM_LABELS, WORST

    lines = []
    for worst, title in ((WORST[norm], NORM_LABELS[norm].name) for norm in ("linf", "l2")):
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
        f"Model `{md(model['path'])}` ({md(model['detector'])}, attention {md(model.get('attention') or 'unknown')}, "
        f"defense {md(model['defense'])}), "
        f"{document['data']['n_samples']} samples of {md(document['data']['name'])}; "
        f"policy: {md(document['policy']['source'])}.",
        "",
        *_worst_lines(document["metrics"]),
    ]
    n_samples = document["data"]["n_samples"]
    if n_samples < MIN_INTERVAL_ROWS:
        lines += [f"**Too few samples (n={n_samples})**: a 95% interval needs at least {MIN_INTERVAL_ROWS} rows, so "
                  "every interval gate fails and the intervals shown are not evidence.", ""]
    determinism = model.get("determinism", {})
    if model.get("deterministic") is False:
        lines += [f"**The model is not deterministic**: logits of the same rows differed by up to "
                  f"{determinism.get('max_abs_logit_diff', float('nan')):.3g} between two calls; clean accuracy is "
                  f"the mean over {determinism.get('draws', '?')} draws of each draw's correctness (the ensemble's: "
                  "`clean.accuracy_ensemble`), other predictions the mean probability over the draws, and the "
                  "attacks used EOT.", ""]
    outside = document["data"].get("out_of_range") or {}
    if outside.get("rows"):
        features = ", ".join(f"`{md(name)}` {rows}" for name, rows in list(outside["features"].items())[:8])
        more = f" and {len(outside['features']) - 8} more features" if len(outside["features"]) > 8 else ""
        lines += [f"**{outside['rows']} audited rows lay outside the training range** ({outside['values']} values, "
                  f"clipped to it): {features}{more}.", ""]
    truncated = document["data"].get("truncated") or {}
    if truncated.get("rows"):
        lines += [f"**{truncated['rows']} audited messages were longer than the model's {truncated['max_length']} "
                  f"tokens** and were cut there: {truncated['tokens_lost_share']:.1%} of the audited messages' "
                  "tokens were never seen by the model.", ""]
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
            f"Regression against the baseline `{md(document.get('baseline', {}).get('source', '?'))}`:",
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
    metrics = {name: MetricValue.from_dict(entry) for name, entry in document["metrics"].items()}
    lines += ["", *panel_markdown(panel_verdict(metrics, document.get("skipped", {}), document["gates"]))]
    return ("\n".join(lines) + "\n").encode()


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
