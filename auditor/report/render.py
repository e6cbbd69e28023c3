"""The rendering helpers every page shares (report.html, compare.html, summary.md): number formatting,
Markdown escaping, matplotlib figures as inline SVG or PNG, the plots both pages draw, the metric tables, and
the jinja2 environment that loads the templates (package data, autoescape on)."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from importlib import resources

import jinja2
import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from auditor.metrics import MetricValue
from auditor.catalogue import spec_for

TOOL_NAME = "attention-audit"

GROUP_TITLES = {"clean": "Detection", "robust": "Robustness", "stability": "Attention under attack",
                "faithfulness": "Faithfulness", "trust": "Trust", "attention": "Attention sparsity"}


SHORT_NAMES = {"integrated-gradients": "int. grad."}


def md(text: str) -> str:
    return re.sub(r"([|\\`*_<>\[\]])", r"\\\1", text)


def fmt(value: float | str) -> str:
    """A number to 3 significant digits; a string (a substituted token) as it is."""
    return value if isinstance(value, str) else f"{value:.3g}"


def svg(figure: Figure) -> Markup:
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
    other units, so they get their own axes, each labelled by its norm's axis); the worst case drawn first, thick
    and black."""
    from auditor.catalogue.attacks import NORM_LABELS

    norms = norms or {name: "linf" for name in curves}
    panels = [norm for norm in NORM_LABELS if any(norms.get(name) == norm for name in curves)]
    figure = Figure(figsize=(5.2 * len(panels), 3.0))
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    for axes, norm in zip(axes_list, panels):
        for attack, points in curves.items():
            if norms.get(attack) != norm:
                continue
            eps = [0.0] + [p[0] for p in points]
            acc = [clean_accuracy] + [p[1] for p in points]
            worst = attack.startswith("worst")
            axes.plot(eps, acc, marker="o", label=attack, **({"color": "black", "linewidth": 2.4, "zorder": 3}
                                                             if worst else {}))
        axes.set_xlabel(NORM_LABELS[norm].axis)
        axes.set_ylabel("accuracy")
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(frameon=False, fontsize=7)
    return svg(figure)


def removal_plot(curves: dict[str, dict[str, list[float]]], *, subject: str = "", random_dashed: bool = True,
                 xlabel: str = "fraction of features changed") -> Markup:
    """Deletion and insertion curves side by side, one line per key of ``curves`` (explainers in a report,
    checkpoints in a comparison, where ``subject`` names the explainer they share); ``xlabel`` the input kind's
    (:attr:`detectors.inputs.InputKind.removal_axis`)."""
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
        axes.set_xlabel(xlabel)
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("predicted-class probability")
    panels[-1].legend(frameon=False, fontsize=8)
    return svg(figure)


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


def metric_groups(metrics: dict[str, MetricValue], attacks: list[str], explainers: list[str]) -> list[MetricGroup]:
    groups: dict[str, MetricGroup] = {key: MetricGroup(key, title) for key, title in GROUP_TITLES.items()}
    for name in metrics:
        spec = spec_for(name, attacks, explainers)
        group = name.split(".", 1)[0]
        value = metrics[name]
        interval = ""
        if value.ci95 is not None:
            interval = f"± {fmt((value.ci95[1] - value.ci95[0]) / 2)}  [{fmt(value.ci95[0])}, {fmt(value.ci95[1])}]"
        groups.setdefault(group, MetricGroup(group, GROUP_TITLES.get(group, group))).rows.append(MetricRow(
            name=name, value=fmt(value.value), interval=interval, arrow=spec.arrow if spec else "",
            definition=spec.definition if spec else "",
        ))
    for group in groups.values():
        group.matrices = metric_matrices({row.name: metrics[row.name] for row in group.rows}, attacks, explainers)
    return [group for group in groups.values() if group.rows]


_PER_ATTACK = re.compile(r"^(?P<family>[a-z_]+\.[a-z_]+)\.(?P<attack>[a-z0-9-]+)@(?P<eps>[0-9.e-]+)$")


def metric_matrices(metrics: dict[str, MetricValue], attacks: list[str], explainers: list[str]) -> list[MetricMatrix]:
    """Metrics named FAMILY.ATTACK@EPS, arranged as one attack x eps table per family and norm (L-inf and L2
    budgets are other units): the worst case first, then each attack, then the targeted runs."""
    from auditor.catalogue.attacks import NORM_LABELS, curve_names, curve_norm

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
        title = family if norm == "linf" else f"{family} ({NORM_LABELS[norm].title})"
        matrices.append(MetricMatrix(title, spec.arrow if spec else "", spec.definition if spec else "", eps, rows))
    return matrices


def _cell(value: MetricValue | None) -> str:
    if value is None:
        return "—"
    if value.ci95 is None:
        return fmt(value.value)
    return f"{fmt(value.value)} ± {fmt((value.ci95[1] - value.ci95[0]) / 2)}"


def budget(eps: float | str, attack: str) -> str:
    """An attack's budget as the report words it: "eps 0.03", or "2 tokens" for a substitution attack on text."""
    from attacks.text import TOKEN_NORM
    from auditor.catalogue.attacks import curve_norm

    if curve_norm(attack) == TOKEN_NORM:
        count = int(float(eps))
        return f"{count} token{'' if count == 1 else 's'}"
    return f"eps {eps if isinstance(eps, str) else fmt(eps)}"


def environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters["fmt"] = fmt
    environment.filters["budget"] = budget
    return environment


def _template_source(name: str) -> str:
    return resources.files("reports").joinpath("templates", name).read_text(encoding="utf-8")


def png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
