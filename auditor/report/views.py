"""report.html's first three sections as plain views: Detection, Robustness, Attention under attack, and
the small views (cells, tables) every section uses. The page itself is assembled in ``auditor.report.html``."""


from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from auditor.catalogue.specs import ECE_BINS
from auditor.metrics import MetricValue, format_eps
from auditor.report.render import fmt, png, svg
from auditor.catalogue.attacks import NORM_LABELS, WORST, curve_norm
from auditor.report.findings import AuditFindings
from detectors.inputs import Bars, InputKind

_PER_ATTACK = re.compile(r"^(?P<family>[a-z_]+\.[a-z_]+)\.(?P<attack>[a-z0-9-]+)@(?P<eps>[0-9.e-]+)$")


# ----------------------------------------------------------------------------- small views

@dataclass
class Cell:
    """One number as a reader sees it: 3 significant digits, ± half the 95% interval, samples counted."""

    text: str
    value: float | None = None
    best: bool = False
    title: str = ""


def cell(value: MetricValue | None) -> Cell:
    if value is None:
        return Cell("—")
    text = fmt(value.value)
    if value.ci95 is not None:
        text += f" ± {fmt((value.ci95[1] - value.ci95[0]) / 2)}"
    n = getattr(value, "n", None)
    title = f"95% interval [{fmt(value.ci95[0])}, {fmt(value.ci95[1])}]" if value.ci95 is not None else ""
    if n is not None:
        title += f"{'; ' if title else ''}{n} samples counted"
    return Cell(text, value.value, title=title)


@dataclass
class Table:
    """A table with a header row, a header column and cells; ``arrows`` says per column which way is better."""

    corner: str
    columns: list[str]
    arrows: list[str]
    rows: list[tuple[str, list[Cell]]]


# ----------------------------------------------------------------------------- 1. detection

@dataclass
class DetectionView:
    confusion: list[list[int]]
    confusion_peak: int
    per_class: Table
    roc_svg: Markup | None
    roc_caption: str
    calibration_svg: Markup | None
    ece: Cell


def detection_view(result: AuditFindings, metrics: dict[str, MetricValue], class_names: list[str]) -> DetectionView:
    """The Detection section from what the clean stage computed over every row (``AuditFindings.detection``,
    :func:`auditor.stages.clean.detection_data`): nothing is recomputed here."""
    n_classes = len(class_names)
    confusion = result.confusion or [[0] * n_classes for _ in range(n_classes)]
    detection = result.detection
    rows = [(row["class"], [Cell(fmt(row["precision"]), row["precision"]), Cell(fmt(row["recall"]), row["recall"]),
                            Cell(fmt(row["f1"]), row["f1"]), Cell(str(row["support"]), float(row["support"]))])
            for row in detection.get("per_class", [])]
    per_class = Table("class", ["precision", "recall", "F1", "samples"], ["↑", "↑", "↑", ""], rows)
    roc_svg, caption = None, ""
    if detection.get("roc"):
        roc_svg, caption = roc_plot(detection["roc"], class_names)
    return DetectionView(
        confusion=confusion, confusion_peak=max(1, max((max(r) for r in confusion), default=1)), per_class=per_class,
        roc_svg=roc_svg, roc_caption=caption,
        calibration_svg=reliability_plot(detection["calibration"]) if detection.get("calibration") else None,
        ece=cell(metrics.get("clean.ece")),
    )


def roc_plot(curves: list[dict], class_names: list[str]) -> tuple[Markup, str]:
    figure = Figure(figsize=(3.6, 3.2))
    axes = figure.subplots()
    binary = len(class_names) == 2
    for curve in curves:
        axes.plot(curve["fpr"], curve["tpr"], label=curve["label"], **({} if binary else {"linewidth": 1}))
    if binary:
        positive = class_names[curves[0]["class"]]
        caption = f"ROC curve of the positive class {positive!r} scored by its predicted probability."
    else:
        caption = "One-vs-rest ROC curve per class."
    axes.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    axes.set_xlabel("false-positive rate")
    axes.set_ylabel("true-positive rate")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.grid(alpha=0.3)
    axes.legend(frameon=False, fontsize=7, loc="lower right", ncol=2 if len(class_names) > 5 else 1)
    return svg(figure), caption + " Good: the curve hugs the top-left corner; the dotted diagonal is chance."


def reliability_plot(bins: list[dict]) -> Markup:
    """Accuracy per confidence bin (``auditor.stages.clean.detection_data``), each bar as opaque as its share of rows."""
    figure = Figure(figsize=(3.6, 3.2))
    axes = figure.subplots()
    for b in bins:
        axes.bar(b["left"], b["accuracy"], width=1 / ECE_BINS, align="edge", color="#3b6fd4", edgecolor="white",
                 alpha=0.35 + 0.65 * b["share"])
    axes.plot([0, 1], [0, 1], color="0.3", linestyle=":", linewidth=1)
    axes.set_xlabel("confidence (predicted-class probability)")
    axes.set_ylabel("accuracy in the bin")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    return svg(figure)


# ----------------------------------------------------------------------------- 2. robustness

def eps_plot(metrics: dict[str, MetricValue], families: list[tuple[str, str]], attacks: list[str],
             *, figsize=(5.2, 3.0)) -> Markup | None:
    """One panel per (metric family, title): the metric against eps, one line per attack."""
    panels = []
    for family, title in families:
        lines = {}
        for name, value in metrics.items():
            match = _PER_ATTACK.match(name)
            if match and match["family"] == family and match["attack"] in attacks:
                lines.setdefault(match["attack"], []).append((float(match["eps"]), value.value))
        if lines:
            panels.append((title, lines))
    if not panels:
        return None
    figure = Figure(figsize=(figsize[0] * len(panels), figsize[1]))
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), sharey=True))
    for axes, (title, lines) in zip(axes_list, panels):
        for attack in [a for a in attacks if a in lines]:
            points = sorted(lines[attack])
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=attack)
        axes.set_title(title, fontsize=9)
        if {curve_norm(attack) for attack in lines} == {"tokens"}:
            axes.set_xlabel(NORM_LABELS["tokens"].unit)
        else:
            axes.set_xlabel(NORM_LABELS["linf"].unit if len(panels) == 1 else "eps")
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(frameon=False, fontsize=7)
    return svg(figure)


def worst_rows(metrics: dict[str, MetricValue]) -> list[tuple[str, str, str]]:
    """The robustness headline, shown first: (budget, value, half interval) of each worst case, its budget worded
    as its norm's."""
    rows = []
    for norm, worst in WORST.items():
        found = sorted((float(name.split("@", 1)[1]), value) for name, value in metrics.items()
                       if name.startswith(f"robust.accuracy.{worst}@"))
        rows += [(NORM_LABELS[norm].budget.format(format_eps(eps)), fmt(value.value),
                  fmt((value.ci95[1] - value.ci95[0]) / 2) if value.ci95 else "") for eps, value in found]
    return rows


# ----------------------------------------------------------------------------- 3. attention under attack

@dataclass
class AttentionPair:
    """Clean against attacked attention for one sample: bars of its most attended positions or one picture,
    as its input kind draws it. Bars are (label, title, clean %, attacked %, clean value, attacked value); on
    text a bar's label is its word ("clean → attacked" where the attack substituted it) and its title the
    position's name.

    Text also shows both messages (``tokens``, ``adv_tokens``: the words after [CLS], padding left out), each
    shaded by its own attention scaled to the pair's peak (``clean_shade``, ``attacked_shade``: one value per
    position, [CLS] first, as a gallery sample's maps)."""

    attack: str
    eps: str
    row: int
    jsd: str
    clean_pred: str
    adv_pred: str
    bars: list[tuple[str, str, float, float, str, str]] = field(default_factory=list)
    image: str = ""
    tokens: list[str] = field(default_factory=list)
    adv_tokens: list[str] = field(default_factory=list)
    clean_shade: list[float] = field(default_factory=list)
    attacked_shade: list[float] = field(default_factory=list)


def attention_pairs(result: AuditFindings, kind: InputKind, feature_names: list[str], class_names: list[str],
                    row_index: list[int]) -> list[AttentionPair]:
    """Each attention example as its input kind draws it (:meth:`InputKind.attention_view`): bars of the
    positions with the most attention, or a picture."""
    pairs = []
    for example in result.attention_examples:
        clean, attacked = np.asarray(example.clean), np.asarray(example.attacked)
        pair = AttentionPair(example.attack, format_eps(example.eps), int(row_index[example.index]),
                             fmt(example.jsd), class_names[example.clean_pred], class_names[example.adv_pred])
        view = kind.attention_view(np.asarray(example.x), clean, attacked)
        if isinstance(view, Bars):
            c, a, peak = view.clean, view.attacked, view.peak
            adv_tokens = example.adv_tokens or example.tokens
            pair.bars = [(_position_label(int(i), feature_names, example.tokens, adv_tokens),
                          feature_names[i], 100 * c[i] / peak, 100 * a[i] / peak, fmt(c[i]), fmt(a[i]))
                         for i in view.positions]
            if example.tokens:
                pair.tokens, pair.adv_tokens = example.tokens, adv_tokens
                pair.clean_shade, pair.attacked_shade = (c / peak).tolist(), (a / peak).tolist()
        else:
            pair.image = png(view)
        pairs.append(pair)
    return pairs


def _position_label(position: int, feature_names: list[str], tokens: list[str], adv_tokens: list[str]) -> str:
    """A bar's label: the position's word on text (position p holds token p - 1 after [CLS]), "clean → attacked"
    where the attack substituted it (``adv_tokens`` as long as ``tokens``); elsewhere the position's name."""
    if not 1 <= position <= len(tokens):
        return feature_names[position]
    word, new = tokens[position - 1], adv_tokens[position - 1]
    return word if new == word else f"{word} → {new}"
