"""report.html: an audit's seven sections as plain views, then one template.

Verdict, Detection, Robustness, Attention under attack, Faithfulness, Samples,
Method. Every function here turns results (metrics, per-sample probabilities,
plain lists kept by the stages) into dataclasses, strings and inline images;
the jinja2 template only lays them out and never touches a tensor. Plots are
matplotlib SVG with text kept as text (small, selectable), heat maps of images
and time series small PNG data URIs, tabular heat maps HTML/CSS bars.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import re
from dataclasses import dataclass, field

import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_fscore_support, roc_curve

from attacks import ATTACKS
from auditor.clean import ECE_BINS, calibration_bins
from auditor.gates import Policy
from auditor.metrics import CATALOGUE, MPRT_PASS_BELOW, MetricValue, format_eps, spec_for
from auditor.report import SHORT_NAMES, _environment, _fmt, _svg, metric_groups, removal_plot, robustness_plot
from auditor.sanity import UNIFORM_METRICS, UNUSED_ATTENTION_KEPT
from auditor.robustness import TARGETED_SUFFIX, WORST, curve_norm
from auditor.session import AuditResult, SampleView
from auditor.verdict import TITLE as TRUST_TITLE, TrustLine, mprt_verdict, trust_panel

BAR_FEATURES = 10

# a one-line definition per attack; the reference comes from the attack's class
ATTACK_DEFINITIONS = {
    "fgsm": "one signed-gradient step of size eps on the cross-entropy (L-inf)",
    "pgd": "projected gradient ascent on the cross-entropy from a random start in the eps-ball (L-inf)",
    "pgd-l2": "projected gradient ascent on the cross-entropy with normalised steps (L2)",
    "cw": "minimum-norm L2 attack; a sample counts as broken at eps when its perturbation's norm is <= eps",
    "deepfool": "minimum-norm L2 attack stepping to the nearest linearised decision boundary",
    "square": "black-box, score-based random search over square patches (L-inf)",
    "autoattack": "the standard protocol: APGD-CE, APGD-T, FAB-T and Square (5,000 queries) in sequence, worst "
                  "case per sample (L-inf)",
    "autoattack-fast": "AutoAttack with Square at 1,000 queries instead of 5,000: faster and possibly weaker, not "
                       "the standard protocol (L-inf)",
    "attention-shift": "moves the attention as far as possible while keeping the prediction (a forged explanation)",
    "attention-hijack": "moves attention mass onto tokens the attacker chooses while keeping the prediction",
    "attention-guided": "gradient ascent on the cross-entropy restricted to the most-attended tokens' inputs",
    "stealth": "flips the prediction while keeping the attention close to the clean one",
}

# where each metric family comes from, by name prefix (the definition is the catalogue's)
METRIC_REFERENCES = (
    ("clean.ece", "Guo et al. 2017, On Calibration of Modern Neural Networks"),
    ("clean.", "scikit-learn metrics on the clean samples"),
    ("robust.masking_suspected", "Athalye et al. 2018; Carlini et al. 2019, On Evaluating Adversarial Robustness"),
    ("robust.not_converged", "Carlini et al. 2019, On Evaluating Adversarial Robustness; Croce & Hein 2020"),
    ("robust.accuracy.worst", "Croce & Hein 2020 (AutoAttack); Croce et al. 2021 (RobustBench): worst case per "
                              "sample"),
    ("robust.", "Madry et al. 2018; Carlini et al. 2019, On Evaluating Adversarial Robustness"),
    ("stability.max_sensitivity", "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations"),
    ("stability.", "Ghorbani et al. 2019, Interpretation of Neural Networks is Fragile"),
    ("faithfulness.deletion_auc_diff", "Petsiuk et al. 2018 (RISE) deletion, as a paired per-sample difference with "
                                       "a paired bootstrap interval (Efron & Tibshirani 1993)"),
    ("faithfulness.deletion_auc", "Petsiuk et al. 2018 (RISE), deletion metric"),
    ("faithfulness.insertion_auc", "Petsiuk et al. 2018 (RISE), insertion metric"),
    ("faithfulness.deletion_gain", "Petsiuk et al. 2018, relative to the random explainer"),
    ("faithfulness.comprehensiveness", "DeYoung et al. 2020 (ERASER)"),
    ("faithfulness.sufficiency", "DeYoung et al. 2020 (ERASER)"),
    ("faithfulness.correlation", "Bhatt et al. 2020, Evaluating and Aggregating Feature-based Explanations"),
    ("faithfulness.infidelity", "Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations"),
    ("agreement.kendall_tau.integrated-gradients~feature-ablation",
     "Neely et al. 2022, A Song of (Dis)agreement: Evaluating the Evaluation of Explainable AI"),
    ("agreement.kendall_tau_vs_floor", "Neely et al. 2022, A Song of (Dis)agreement; Jain & Wallace 2019"),
    ("agreement.", "Krishna et al. 2022, The Disagreement Problem in Explainable ML"),
    ("sanity.mprt", "Adebayo et al. 2018, Sanity Checks for Saliency Maps"),
    ("sanity.flip_rate", "Serrano & Smith 2019, Is Attention Interpretable?"),
    ("sanity.uniform_attention", "Wiegreffe & Pinter 2019, Attention is not not Explanation"),
    ("trust.hidden_importance", "Pruthi et al. 2020, Learning to Deceive with Attention-Based Explanations"),
    ("localisation.", "Arras et al. 2022, CLEVR-XAI (relevance rank accuracy)"),
)

EXPLAINER_FAMILIES = ("faithfulness", "stability.max_sensitivity", "sanity.mprt", "localisation.precision_at_k",
                      "trust.hidden_importance")
_AGREEMENT = re.compile(r"^agreement\.(?P<kind>[a-z_]+)\.(?P<explainer>[a-z0-9-]+)~(?P<reference>[a-z0-9-]+)$")
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
    text = _fmt(value.value)
    if value.ci95 is not None:
        text += f" ± {_fmt((value.ci95[1] - value.ci95[0]) / 2)}"
    n = getattr(value, "n", None)
    title = f"95% interval [{_fmt(value.ci95[0])}, {_fmt(value.ci95[1])}]" if value.ci95 is not None else ""
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


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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


def detection_view(result: AuditResult, metrics: dict[str, MetricValue], class_names: list[str],
                   positive: int | None) -> DetectionView:
    y = np.asarray(result.labels, dtype=int)
    n_classes = len(class_names)
    proba = np.asarray(result.probabilities, dtype=np.float64).reshape(len(y), n_classes)
    confusion = result.confusion or [[0] * n_classes for _ in range(n_classes)]
    rows = []
    if len(y):
        precision, recall, f1, support = precision_recall_fscore_support(
            y, proba.argmax(1), labels=range(n_classes), zero_division=0)
        rows = [(name, [Cell(_fmt(precision[k]), float(precision[k])), Cell(_fmt(recall[k]), float(recall[k])),
                        Cell(_fmt(f1[k]), float(f1[k])), Cell(str(int(support[k])), float(support[k]))])
                for k, name in enumerate(class_names)]
    per_class = Table("class", ["precision", "recall", "F1", "samples"], ["↑", "↑", "↑", ""], rows)
    roc_svg, caption = None, ""
    if len(np.unique(y)) >= 2:
        roc_svg, caption = roc_plot(y, proba, class_names, positive)
    return DetectionView(
        confusion=confusion, confusion_peak=max(1, max((max(r) for r in confusion), default=1)), per_class=per_class,
        roc_svg=roc_svg, roc_caption=caption,
        calibration_svg=reliability_plot(y, proba) if len(y) else None, ece=cell(metrics.get("clean.ece")),
    )


def roc_plot(y: np.ndarray, proba: np.ndarray, class_names: list[str], positive: int | None) -> tuple[Markup, str]:
    figure = Figure(figsize=(3.6, 3.2))
    axes = figure.subplots()
    if proba.shape[1] == 2:
        pos = 1 if positive is None else positive
        fpr, tpr, _ = roc_curve(y == pos, proba[:, pos])
        axes.plot(fpr, tpr, label=f"{class_names[pos]} (positive)")
        caption = f"ROC curve of the positive class {class_names[pos]!r} scored by its predicted probability."
    else:
        for k, name in enumerate(class_names):
            if 0 < (y == k).sum() < len(y):
                fpr, tpr, _ = roc_curve(y == k, proba[:, k])
                axes.plot(fpr, tpr, linewidth=1, label=name)
        caption = "One-vs-rest ROC curve per class."
    axes.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    axes.set_xlabel("false-positive rate")
    axes.set_ylabel("true-positive rate")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.grid(alpha=0.3)
    axes.legend(frameon=False, fontsize=7, loc="lower right", ncol=2 if proba.shape[1] > 5 else 1)
    return _svg(figure), caption + " Good: the curve hugs the top-left corner; the dotted diagonal is chance."


def reliability_plot(y: np.ndarray, proba: np.ndarray) -> Markup:
    confidence = proba.max(axis=1)
    correct = proba.argmax(1) == y
    which = calibration_bins(confidence)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    figure = Figure(figsize=(3.6, 3.2))
    axes = figure.subplots()
    for b in range(ECE_BINS):
        members = which == b
        if members.any():
            axes.bar(edges[b], correct[members].mean(), width=1 / ECE_BINS, align="edge", color="#3b6fd4",
                     edgecolor="white", alpha=0.35 + 0.65 * members.mean())
    axes.plot([0, 1], [0, 1], color="0.3", linestyle=":", linewidth=1)
    axes.set_xlabel("confidence (predicted-class probability)")
    axes.set_ylabel("accuracy in the bin")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    return _svg(figure)


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
        axes.set_xlabel("eps (fraction of each feature's range)" if len(panels) == 1 else "eps")
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(frameon=False, fontsize=7)
    return _svg(figure)


def worst_rows(metrics: dict[str, MetricValue]) -> list[tuple[str, str, str, str]]:
    """The robustness headline, shown first: (norm, eps, value, half interval) of each worst case."""
    rows = []
    for norm, worst in WORST.items():
        found = sorted((float(name.split("@", 1)[1]), value) for name, value in metrics.items()
                       if name.startswith(f"robust.accuracy.{worst}@"))
        rows += [("L-inf" if norm == "linf" else "L2", format_eps(eps), _fmt(value.value),
                  _fmt((value.ci95[1] - value.ci95[0]) / 2) if value.ci95 else "") for eps, value in found]
    return rows


# ----------------------------------------------------------------------------- 3. attention under attack

@dataclass
class AttentionPair:
    """Clean against attacked attention for one sample: feature bars (tabular) or one image (vit, sequence)."""

    attack: str
    eps: str
    row: int
    jsd: str
    clean_pred: str
    adv_pred: str
    bars: list[tuple[str, float, float, str, str]] = field(default_factory=list)
    image: str = ""


def attention_pairs(result: AuditResult, kind: str, feature_names: list[str], class_names: list[str],
                    row_index: list[int]) -> list[AttentionPair]:
    pairs = []
    for example in result.attention_examples:
        clean, attacked = np.asarray(example.clean), np.asarray(example.attacked)
        pair = AttentionPair(example.attack, format_eps(example.eps), int(row_index[example.index]),
                             _fmt(example.jsd), class_names[example.clean_pred], class_names[example.adv_pred])
        if kind == "tabular":
            c, a = clean.flatten(), attacked.flatten()
            peak = max(c.max(), a.max()) or 1.0
            top = np.argsort(-np.maximum(c, a), kind="stable")[:BAR_FEATURES]
            pair.bars = [(feature_names[i], 100 * c[i] / peak, 100 * a[i] / peak, _fmt(c[i]), _fmt(a[i]))
                         for i in top]
        else:
            pair.image = _attention_image(np.asarray(example.x), clean, attacked, kind)
        pairs.append(pair)
    return pairs


def _as_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) -> what imshow reads: (H, W) for one channel, (H, W, C) for three."""
    return x[0] if x.shape[0] == 1 else np.clip(np.moveaxis(x[:3], 0, -1), 0, 1)


def _attention_image(x: np.ndarray, clean: np.ndarray, attacked: np.ndarray, kind: str) -> str:
    if kind == "image":
        figure = Figure(figsize=(4.2, 1.6))
        panels = figure.subplots(1, 3)
        peak = max(clean.max(), attacked.max()) or 1.0
        panels[0].imshow(_as_image(x), cmap="gray", vmin=0, vmax=1)
        panels[0].set_title("input", fontsize=8)
        for axes, values, title in ((panels[1], clean, "clean attention"), (panels[2], attacked, "attacked")):
            axes.imshow(_as_image(x), cmap="gray", vmin=0, vmax=1)
            axes.imshow(values[0], cmap="magma", alpha=0.65, vmin=0, vmax=peak)
            axes.set_title(title, fontsize=8)
        for axes in panels:
            axes.set_axis_off()
        return _png(figure)
    strip = np.stack([clean.mean(axis=-1), attacked.mean(axis=-1)])  # one value per time step
    figure = Figure(figsize=(4.6, 1.1))
    axes = figure.subplots()
    axes.imshow(strip, cmap="magma", aspect="auto", vmin=0, vmax=strip.max() or 1.0)
    axes.set_yticks([0, 1], ["clean", "attacked"], fontsize=8)
    axes.set_xlabel("time step", fontsize=8)
    axes.tick_params(labelsize=7)
    return _png(figure)


# ----------------------------------------------------------------------------- 4. faithfulness

@dataclass
class FaithfulnessView:
    table: Table | None
    agreement: list[tuple[str, Table]]
    sanity: list[tuple[str, Cell, str, str]]
    mprt_svg: Markup | None
    trust: list[TrustLine]
    sanity_notes: list[str] = field(default_factory=list)
    hidden: "HiddenImportanceView | None" = None


def explainer_table(metrics: dict[str, MetricValue], attacks: list[str], explainers: list[str]) -> Table | None:
    """Rows explainer, columns metric, from names FAMILY.METRIC.EXPLAINER; the best of each column marked."""
    columns: dict[str, str] = {}
    cells: dict[tuple[str, str], MetricValue] = {}
    for name, value in metrics.items():
        family = next((f for f in EXPLAINER_FAMILIES if name.startswith(f + ".")), None)
        if family is None or "~" in name:
            continue
        stem, _, explainer = name.rpartition(".")
        if explainer not in explainers:
            continue
        spec = spec_for(name, attacks, explainers)
        columns.setdefault(stem, spec.arrow if spec else "")
        cells[(explainer, stem)] = value
    if not columns:
        return None
    order = sorted(columns, key=lambda s: (EXPLAINER_FAMILIES.index(next(f for f in EXPLAINER_FAMILIES
                                                                          if s.startswith(f))), s))
    rows = [(e, [cell(cells.get((e, s))) for s in order]) for e in explainers if any((e, s) in cells for s in order)]
    for k, stem in enumerate(order):
        values = [row[1][k].value for row in rows if row[1][k].value is not None and row[0] != "random"]
        if columns[stem] and len(values) > 1:
            best = max(values) if columns[stem] == "↑" else min(values)
            for row in rows:
                row[1][k].best = row[1][k].value == best and row[0] != "random"
    short = [s.split(".", 1)[1] if s.startswith("faithfulness.") else s for s in order]
    return Table("explainer", short, [columns[s] for s in order], rows)


def agreement_tables(metrics: dict[str, MetricValue]) -> list[tuple[str, Table]]:
    """One matrix per agreement measure: rows explainer, columns reference explainer."""
    found: dict[str, dict[tuple[str, str], MetricValue]] = {}
    for name, value in metrics.items():
        match = _AGREEMENT.match(name)
        if match:
            found.setdefault(match["kind"], {})[(match["explainer"], match["reference"])] = value
    tables = []
    for kind, pairs in sorted(found.items()):
        rows_names = sorted({a for a, _ in pairs})
        columns = sorted({b for _, b in pairs})
        rows = [(a, [cell(pairs.get((a, b))) for b in columns]) for a in rows_names]
        tables.append((kind, Table("explainer \\ reference", columns, [""] * len(columns), rows)))
    return tables


SANITY_MEANING = {
    "sanity.mprt.": "absolute Spearman correlation between the explanation and the one after the model's weights "
                    f"are randomised layer by layer; passes when the upper end of its 95% interval is below "
                    f"{MPRT_PASS_BELOW:g} (the explanation depends on what the model learnt), fails when the lower "
                    "end is at or above it",
    "sanity.flip_rate.attention": "share of samples whose prediction flips when the top CLS attention weight is "
                                  "zeroed; compare with the random weight",
    "sanity.flip_rate.random": "the same with a random CLS attention weight zeroed: the bar attention must clear",
    "sanity.uniform_attention.prediction_kept": "share of samples whose prediction survives when every attention "
                                                "layer is made uniform; low: the decisions rest on attention, at "
                                                f"or above {UNUSED_ATTENTION_KEPT:g} attention does not drive the "
                                                "model",
    "sanity.uniform_attention.accuracy": "accuracy with every attention layer made uniform; compare with the "
                                         "clean accuracy",
}


def sanity_notes(metrics: dict[str, MetricValue]) -> list[str]:
    """What the uniform-attention test means for the heat maps, from its point value."""
    kept = metrics.get(UNIFORM_METRICS[0])
    if kept is None:
        return []
    if kept.value >= UNUSED_ATTENTION_KEPT:
        return [f"With every attention layer made uniform, {_fmt(kept.value)} of predictions are unchanged "
                f"({UNIFORM_METRICS[0]}, at or above {UNUSED_ATTENTION_KEPT:g}): attention does not drive this "
                "model, so heat maps of it explain little."]
    return [f"With every attention layer made uniform, only {_fmt(kept.value)} of predictions are unchanged "
            f"({UNIFORM_METRICS[0]}): the decisions rest on attention, the precondition for its heat maps to "
            "explain them."]


@dataclass
class HiddenImportanceView:
    """trust.hidden_importance of the lead attention explainer and the samples whose most erasure-important
    token it gave the least (plain dicts from AuditResult.hidden_importance)."""

    explainer: str
    value: Cell
    samples: list[dict]


def hidden_importance_view(result: AuditResult, metrics: dict[str, MetricValue]) -> HiddenImportanceView | None:
    if not result.hidden_importance:
        return None
    explainer = result.hidden_importance[0]["explainer"]
    return HiddenImportanceView(explainer, cell(metrics.get(f"trust.hidden_importance.{explainer}")),
                                [{**sample, "drop": _fmt(sample["drop"]), "share": _fmt(sample["share"]),
                                  "uniform": _fmt(sample["uniform"])} for sample in result.hidden_importance])


def sanity_rows(metrics: dict[str, MetricValue]) -> list[tuple[str, Cell, str, str]]:
    """(name, value, result, meaning) per sanity metric; the result is MPRT's one rule (auditor.verdict), "" for
    the flip rates, which are read against each other."""
    rows = []
    for name in sorted(metrics):
        if name.startswith("sanity."):
            meaning = next((text for prefix, text in SANITY_MEANING.items() if name.startswith(prefix)), "")
            result = mprt_verdict(metrics[name]) if name.startswith("sanity.mprt.") else ""
            rows.append((name, cell(metrics[name]), result, meaning))
    return rows


def mprt_plot(curves: dict[str, list[dict]]) -> Markup | None:
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return None
    figure = Figure(figsize=(5.2, 3.0))
    axes = figure.subplots()
    for name, points in curves.items():
        style = dict(color="0.5", linestyle="--") if name == "random" else {}
        axes.plot(range(len(points)), [p["spearman"] for p in points], marker="o", label=name, **style)
    layers = [p["layer"] for p in next(iter(curves.values()))]
    axes.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=7)
    axes.set_xlabel("randomised down to layer (top layer first)")
    axes.set_ylabel("|Spearman| with the original")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(frameon=False, fontsize=7)
    return _svg(figure)


def faithfulness_view(result: AuditResult, metrics: dict[str, MetricValue], attacks: list[str],
                      explainers: list[str], skipped: dict[str, str] | None = None) -> FaithfulnessView:
    return FaithfulnessView(
        table=explainer_table(metrics, attacks, explainers), agreement=agreement_tables(metrics),
        sanity=sanity_rows(metrics), mprt_svg=mprt_plot(result.sanity_curves), trust=trust_panel(metrics, skipped),
        sanity_notes=sanity_notes(metrics), hidden=hidden_importance_view(result, metrics),
    )


# ----------------------------------------------------------------------------- 5. samples

@dataclass
class GalleryItem:
    sample: SampleView
    kind: str
    image: str = ""


def gallery_items(samples: list[SampleView], kind: str, explainers: list[str]) -> list[GalleryItem]:
    return [GalleryItem(s, kind, "" if kind == "tabular" else _attribution_image(s, kind, explainers))
            for s in samples]


def _attribution_image(sample: SampleView, kind: str, explainers: list[str]) -> str:
    x = np.asarray(sample.x, dtype=np.float64)
    names = [n for n in explainers if n in sample.maps]
    if kind == "image":
        figure = Figure(figsize=(1.15 * (1 + len(names)), 1.45))
        panels = np.atleast_1d(figure.subplots(1, 1 + len(names)))
        panels[0].imshow(_as_image(x), cmap="gray", vmin=0, vmax=1)
        panels[0].set_title("input", fontsize=7)
        for axes, name in zip(panels[1:], names):
            values = np.asarray(sample.maps[name]).sum(axis=0)
            peak = np.abs(values).max() or 1.0
            axes.imshow(_as_image(x), cmap="gray", vmin=0, vmax=1)
            axes.imshow(values, cmap="RdBu_r", alpha=0.7, vmin=-peak, vmax=peak)
            axes.set_title(SHORT_NAMES.get(name, name), fontsize=7)
        for axes in panels:
            axes.set_axis_off()
        return _png(figure)
    rows = [("input", x.T, "gray", 0.0, 1.0)]
    for name in names:
        values = np.asarray(sample.maps[name]).T
        peak = np.abs(values).max() or 1.0
        rows.append((SHORT_NAMES.get(name, name), values, "RdBu_r", -peak, peak))
    figure = Figure(figsize=(4.6, 0.55 * len(rows) + 0.4))
    panels = np.atleast_1d(figure.subplots(len(rows), 1, sharex=True))
    for axes, (title, values, cmap, lo, hi) in zip(panels, rows):
        axes.imshow(values, cmap=cmap, aspect="auto", vmin=lo, vmax=hi)
        axes.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
        axes.set_yticks([])
        axes.tick_params(labelsize=6)
    panels[-1].set_xlabel("time step (rows within a strip: features)", fontsize=7)
    return _png(figure)


# ----------------------------------------------------------------------------- 6. method

@dataclass
class MethodRow:
    name: str
    parameters: str
    definition: str
    reference: str


def attack_rows(config: dict) -> list[MethodRow]:
    rows = []
    for name, params in config.get("attack_params", {}).items():
        family = ATTACKS.get(name.removesuffix(TARGETED_SUFFIX))
        text = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items())
        norm = getattr(family, "norm", "")
        rows.append(MethodRow(name, (f"norm {norm}; " if norm else "") + (text or "single step of size eps"),
                              ATTACK_DEFINITIONS.get(name, "aimed at the --target-class: " + ATTACK_DEFINITIONS.get(
                                  name.removesuffix(TARGETED_SUFFIX), "")), getattr(family, "reference", "")))
    return rows


def metric_rows(metrics: dict[str, MetricValue], attacks: list[str], explainers: list[str]) -> list[MethodRow]:
    """Each catalogue family that produced at least one number, with its definition and reference."""
    used = {}
    for name in sorted(metrics):
        spec = spec_for(name, attacks, explainers)
        if spec is not None and spec.pattern not in used:
            reference = next((ref for prefix, ref in METRIC_REFERENCES if name.startswith(prefix)), "")
            better = "informational" if spec.higher_is_better is None else f"{spec.arrow} {spec.direction} is better"
            used[spec.pattern] = MethodRow(spec.pattern, f"{better}, range {spec.value_range}", spec.definition,
                                           reference)
    order = [spec.pattern for spec in CATALOGUE]
    return sorted(used.values(), key=lambda row: order.index(row.name))


# ----------------------------------------------------------------------------- the page

def input_kind(result: AuditResult) -> str:
    """tabular (one value per feature), image (channels x height x width) or sequence (time x feature)."""
    sample = next((s.x for s in [*result.gallery, *result.adversarial_gallery] if s.x), None)
    if sample is None and result.attention_examples:
        sample = result.attention_examples[0].x
    rank = np.asarray(sample).ndim if sample is not None else 1
    return {1: "tabular", 2: "sequence", 3: "image"}.get(rank, "tabular")


def render_report(document: dict, *, policy: Policy, metrics: dict[str, MetricValue], result: AuditResult,
                  attacks: list[str], explainers: list[str], class_names: list[str], feature_names: list[str],
                  positive_class: int | None, row_index: list[int], skipped: dict[str, str]) -> bytes:
    clean_accuracy = metrics["clean.accuracy"].value if "clean.accuracy" in metrics else float("nan")
    kind = input_kind(result)
    attention_attacks = [a for a in attacks if any(n.startswith(f"stability.topk_intersection.{a}@") for n in metrics)]
    context = dict(
        doc=document,
        gates=sorted(document["gates"], key=lambda g: g["passed"]),
        policy=policy,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        groups={group.key: group for group in metric_groups(metrics, attacks, explainers)},
        detection=detection_view(result, metrics, class_names, positive_class),
        robustness_svg=robustness_plot(result.robustness_curves, clean_accuracy,
                                       {name: curve_norm(name) for name in result.robustness_curves})
        if result.robustness_curves else None,
        check_metrics=document.get("check_metrics", {}),
        evasion_svg=eps_plot(metrics, [("robust.evasion_rate", "evasion rate (lower is better)")],
                             [a for a in attacks if ATTACKS[a].norm == "linf"]),
        headline=worst_rows(metrics),
        attention_svg=eps_plot(metrics, [("stability.topk_intersection", "top-5 intersection (higher: stable)"),
                                         ("stability.prediction_kept", "prediction kept")], attention_attacks,
                               figsize=(4.2, 2.8)),
        attention_pairs=attention_pairs(result, kind, feature_names, class_names, row_index),
        removal_svg=removal_plot(result.removal_curves) if result.removal_curves else None,
        faithfulness=faithfulness_view(result, metrics, attacks, explainers, skipped),
        trust_title=TRUST_TITLE,
        gallery=gallery_items(result.gallery, kind, explainers),
        adversarial=gallery_items(result.adversarial_gallery, kind, explainers),
        kind=kind,
        class_names=class_names,
        explainers=explainers,
        short_names={name: SHORT_NAMES.get(name, name) for name in explainers},
        method_attacks=attack_rows(document["config"]),
        method_metrics=metric_rows(metrics, attacks, explainers),
        skipped=skipped,
        bar=lambda v: f"{min(abs(float(v)), 1.0) * 100:.1f}",
        shade=lambda count, peak: f"{0.08 + 0.6 * count / peak:.2f}" if count else "0",
    )
    html = _environment().get_template("report.html.j2").render(**context)
    return html.encode("utf-8")
