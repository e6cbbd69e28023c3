"""report.html: an audit's seven sections as plain views, then one template.

Verdict, Detection, Robustness, Attention under attack (their views in ``auditor.report.views``),
Faithfulness, Samples, Method (here). Every function turns results (metrics and the plain lists and
curves the stages kept) into dataclasses, strings and inline images; the jinja2 template only lays them
out and never touches a tensor. Plots are matplotlib SVG with text kept as text (small, selectable), heat
maps of images and time series small PNG data URIs, tabular heat maps HTML/CSS bars.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from attacks import attack_class
from auditor.gates import Policy
from auditor.metrics import MPRT_PASS_BELOW, MetricValue
from auditor.report.render import SHORT_NAMES, environment, fmt, metric_groups, png, removal_plot, robustness_plot, svg
from auditor.report.views import Cell, Table, attention_pairs, cell, detection_view, eps_plot, worst_rows
from auditor.report.outputs import write_atomically
from auditor.report.findings import AuditFindings, SampleView, findings_from_document
from auditor.catalogue.attacks import ATTACK_DEFINITIONS, TARGETED_SUFFIX, curve_norm
from auditor.catalogue.specs import UNIFORM_METRICS, UNUSED_ATTENTION_KEPT
from auditor.catalogue import CATALOGUE, spec_for
from auditor.verdict import TITLE as TRUST_TITLE, TrustVerdict, mprt_verdict, panel_verdict
from detectors.errors import BadInputError
from detectors.inputs import InputKind, kind_named, kind_of_rank

EXPLAINER_FAMILIES = ("faithfulness", "stability.max_sensitivity", "sanity.mprt", "localisation.precision_at_k",
                      "localisation.plausibility", "trust.hidden_importance")
_AGREEMENT = re.compile(r"^agreement\.(?P<kind>[a-z_]+)\.(?P<explainer>[a-z0-9-]+)~(?P<reference>[a-z0-9-]+)$")


# ----------------------------------------------------------------------------- 4. faithfulness

@dataclass
class FaithfulnessView:
    table: Table | None
    agreement: list[tuple[str, Table]]
    sanity: list[tuple[str, Cell, str, str]]
    mprt_svg: Markup | None
    trust: TrustVerdict
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
        return [f"With every attention layer made uniform, {fmt(kept.value)} of predictions are unchanged "
                f"({UNIFORM_METRICS[0]}, at or above {UNUSED_ATTENTION_KEPT:g}): attention does not drive this "
                "model, so heat maps of it explain little."]
    return [f"With every attention layer made uniform, only {fmt(kept.value)} of predictions are unchanged "
            f"({UNIFORM_METRICS[0]}): the decisions rest on attention, the precondition for its heat maps to "
            "explain them."]


@dataclass
class HiddenImportanceView:
    """trust.hidden_importance of the lead attention explainer and the samples whose most erasure-important
    token it gave the least (plain dicts from AuditFindings.hidden_importance)."""

    explainer: str
    value: Cell
    samples: list[dict]


def hidden_importance_view(result: AuditFindings, metrics: dict[str, MetricValue]) -> HiddenImportanceView | None:
    if not result.hidden_importance:
        return None
    explainer = result.hidden_importance[0]["explainer"]
    return HiddenImportanceView(explainer, cell(metrics.get(f"trust.hidden_importance.{explainer}")),
                                [{**sample, "drop": fmt(sample["drop"]), "share": fmt(sample["share"]),
                                  "uniform": fmt(sample["uniform"])} for sample in result.hidden_importance])


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
    return svg(figure)


def faithfulness_view(result: AuditFindings, metrics: dict[str, MetricValue], attacks: list[str],
                      explainers: list[str], skipped: dict[str, str], *, gates: list[dict]) -> FaithfulnessView:
    """``gates``: results.json's, whose trust gate (if any) says which conditions the panel's verdict judges."""
    return FaithfulnessView(
        table=explainer_table(metrics, attacks, explainers), agreement=agreement_tables(metrics),
        sanity=sanity_rows(metrics), mprt_svg=mprt_plot(result.sanity_curves),
        trust=panel_verdict(metrics, skipped, gates),
        sanity_notes=sanity_notes(metrics), hidden=hidden_importance_view(result, metrics),
    )


# ----------------------------------------------------------------------------- 5. samples

@dataclass
class GalleryItem:
    """One sample card: ``image`` is the picture its input kind draws of the sample and each explainer's
    attribution, or "" where the card shows bars of the sample's top features."""

    sample: SampleView
    image: str = ""


def gallery_items(samples: list[SampleView], kind: InputKind, explainers: list[str]) -> list[GalleryItem]:
    return [GalleryItem(s, _attribution_image(s, kind, explainers)) for s in samples]


def _attribution_image(sample: SampleView, kind: InputKind, explainers: list[str]) -> str:
    maps = {SHORT_NAMES.get(name, name): np.asarray(sample.maps[name]) for name in explainers if name in sample.maps}
    figure = kind.attribution_figure(np.asarray(sample.x, dtype=np.float64), maps)
    return "" if figure is None else png(figure)


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
        try:
            family = attack_class(name.removesuffix(TARGETED_SUFFIX))
        except KeyError:
            family = None
        text = ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in params.items())
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
            better = "informational" if spec.higher_is_better is None else f"{spec.arrow} {spec.direction} is better"
            used[spec.pattern] = MethodRow(spec.pattern, f"{better}, range {spec.value_range}", spec.definition,
                                           spec.reference)
    order = [spec.pattern for spec in CATALOGUE]
    return sorted(used.values(), key=lambda row: order.index(row.name))


# ----------------------------------------------------------------------------- the page

def input_kind(result: AuditFindings, document: dict | None = None) -> InputKind:
    """The input kind of the audited samples: the one results.json names (``data.input_kind``), else (written
    before it did) from the rank of a stored sample (rows when none is stored)."""
    named = (document or {}).get("data", {}).get("input_kind")
    if named:
        return kind_named(named)
    sample = next((s.x for s in [*result.gallery, *result.adversarial_gallery] if s.x), None)
    if sample is None and result.attention_examples:
        sample = result.attention_examples[0].x
    return kind_of_rank(np.asarray(sample).ndim if sample is not None else 1)


def token_shade(value) -> str:
    """A text token's background: red for a positive attribution, blue for a negative one, its opacity the
    magnitude (the sample's attributions are scaled to [-1, 1])."""
    value = 0.0 if value is None else float(value)
    red, green, blue = (214, 39, 40) if value >= 0 else (31, 119, 180)
    return f"rgba({red}, {green}, {blue}, {min(abs(value), 1.0) * 0.85:.2f})"


def counterparts(tokens: list[str], others: list[str]) -> list[str]:
    """For each of a message's ``tokens``, what stands in its place in the message on the other side of the
    attack (``others``): itself where the two agree, else the tokens that replaced it (joined by spaces; empty
    where it was deleted). Aligned by difflib, so a word edit that changes the number of tokens marks the edited
    word, not every token after it."""
    out = list(tokens)
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, tokens, others, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            out[i1:i2] = [" ".join(others[j1:j2])] * (i2 - i1)
    return out


def render_document(document: dict) -> bytes:
    """report.html from a results.json document alone: every number and picture comes from what the audit
    wrote there (its ``report`` section, :func:`auditor.report.findings.report_section`), so ``audit run`` and
    ``audit report`` draw the same page and neither touches the model."""
    section = document["report"]
    result = findings_from_document(document)
    return render_report(document, policy=Policy(gates=(), source=document["policy"]["source"]),
                         metrics=result.metrics, result=result, attacks=section["attacks"],
                         explainers=section["explainers"], class_names=section["class_names"],
                         feature_names=section["feature_names"], row_index=section["row_index"],
                         skipped=result.skipped)


def rerender(folder: Path) -> Path:
    """``audit report DIR``: DIR/report.html drawn again from DIR/results.json, without loading the model."""
    source = folder / "results.json"
    if not source.is_file():
        raise BadInputError(f"{str(folder)!r} holds no results.json; pass the --out folder of an `audit run`")
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadInputError(f"{source} is not readable JSON ({error})") from None
    if not isinstance(document, dict) or "report" not in document:
        raise BadInputError(f"{source} has no report section (written by an older version); run `audit run` again")
    write_atomically(folder, {"report.html": render_document(document)})
    return folder / "report.html"


def render_report(document: dict, *, policy: Policy, metrics: dict[str, MetricValue], result: AuditFindings,
                  attacks: list[str], explainers: list[str], class_names: list[str], feature_names: list[str],
                  row_index: list[int], skipped: dict[str, str]) -> bytes:
    clean_accuracy = metrics["clean.accuracy"].value if "clean.accuracy" in metrics else float("nan")
    kind = input_kind(result, document)
    attention_attacks = [a for a in attacks if any(n.startswith(f"stability.topk_intersection.{a}@") for n in metrics)]
    context = dict(
        doc=document,
        gates=sorted(document["gates"], key=lambda g: g["passed"]),
        policy=policy,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        groups={group.key: group for group in metric_groups(metrics, attacks, explainers)},
        detection=detection_view(result, metrics, class_names),
        robustness_svg=robustness_plot(result.robustness_curves, clean_accuracy,
                                       {name: curve_norm(name) for name in result.robustness_curves})
        if result.robustness_curves else None,
        check_metrics=document.get("check_metrics", {}),
        evasion_svg=eps_plot(metrics, [("robust.evasion_rate", "evasion rate (lower is better)")],
                             [a for a in attacks if attack_class(a).norm == "linf"]),
        headline=worst_rows(metrics),
        attention_svg=eps_plot(metrics, [("stability.topk_intersection", "top-5 intersection (higher: stable)"),
                                         ("stability.prediction_kept", "prediction kept")], attention_attacks,
                               figsize=(4.2, 2.8)),
        attention_pairs=attention_pairs(result, kind, feature_names, class_names, row_index),
        removal_svg=removal_plot(result.removal_curves, xlabel=kind.removal_axis) if result.removal_curves else None,
        faithfulness=faithfulness_view(result, metrics, attacks, explainers, skipped, gates=document["gates"]),
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
        token_shade=token_shade,
        counterparts=counterparts,
        shade=lambda count, peak: f"{0.08 + 0.6 * count / peak:.2f}" if count else "0",
    )
    html = environment().get_template("report.html.j2").render(**context)
    return html.encode("utf-8")
