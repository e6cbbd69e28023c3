"""An audit's result: the metrics table and the report's data as plain values (:class:`AuditFindings`,
:class:`SampleView`), and how the gathered row tables become those views."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from attacks import attack_class
from auditor.run.config import AuditConfig
from auditor.metrics import MetricValue, format_eps
from auditor.stages.robustness import KEPT_EXAMPLES, AttentionExample
from auditor.stages.trust import LEAD_EXPLAINERS, input_tokens, token_names, worst_samples
from detectors.base import Detector
from detectors.categorical import category_name
from detectors.table import Dataset

GALLERY_SIZE = 3
GALLERY_FEATURES = 10


@dataclass
class SampleView:
    """One sample for the gallery: plain numbers, ready for the report.

    ``features``, ``values`` and ``attributions`` hold the top features by the lead explainer (tabular bars);
    ``x`` and ``maps`` hold the whole input and each explainer's attribution in the input's shape (image
    overlays and time x feature strips). An adversarial sample names its ``attack`` and the prediction before
    it (``clean_predicted``); ``changes`` lists the features the attack moved most as (name, clean, adversarial) (text: the tokens).
    ``tokens``: for text, the message's tokens at positions 1, 2, ... ([CLS] and padding left out), so token i is
    shaded by ``maps[name][i + 1]``. An adversarial text sample also keeps its clean message: ``clean_x`` its ids
    and ``clean_tokens`` its tokens, position for position with ``tokens`` (a substitution keeps the length), so
    the report marks the tokens the attack substituted.
    """

    row: int
    label: str
    predicted: str
    confidence: float
    correct: bool
    features: list[str]
    values: list[float]
    attributions: dict[str, list[float]]
    x: list = field(default_factory=list)
    maps: dict[str, list] = field(default_factory=dict)
    attack: str | None = None
    eps: float | None = None
    clean_predicted: str | None = None
    changes: list[tuple[str, float | str, float | str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    clean_x: list = field(default_factory=list)
    clean_tokens: list[str] = field(default_factory=list)


@dataclass
class AuditFindings:
    """What the stages found, aggregated over every audited row: the metrics table and everything the report
    shows (curves, confusion matrix, detection data, galleries with their attributions, examples). All of it
    is carried in results.json (:func:`report_section`), so the report can be drawn again from the folder."""

    metrics: dict[str, MetricValue]
    skipped: dict[str, str]
    timing: dict[str, float]
    n_samples: int
    robustness_curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    removal_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    gallery: list[SampleView] = field(default_factory=list)
    masking: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    # the Detection section's per-class scores, ROC points and calibration bins (auditor.stages.clean.detection_data)
    detection: dict = field(default_factory=dict)
    attention_examples: list = field(default_factory=list)
    adversarial_gallery: list[SampleView] = field(default_factory=list)
    sanity_curves: dict[str, list[dict]] = field(default_factory=dict)
    # trust.hidden_importance's worst samples for the lead attention explainer: plain dicts (auditor.stages.trust)
    hidden_importance: list[dict] = field(default_factory=list)


def hidden_importance_view(rows: dict[str, np.ndarray], index: np.ndarray, data: Dataset, detector: Detector,
                            proba: np.ndarray) -> list[dict]:
    """The samples whose most erasure-important token got the least of the lead attention explainer's mass,
    ready for the report: data row, true and predicted class, the token's name, its drop and its share."""
    lead = next((name for name in LEAD_EXPLAINERS if f"share/{name}" in rows), None)
    if lead is None:
        return []
    token_map = detector.token_map
    names = token_names(token_map, list(data.feature_names))
    view = []
    for sample in worst_samples(rows, index, explainer=lead, n_tokens=len(input_tokens(token_map))):
        i = sample["index"]
        view.append({**sample, "explainer": lead, "row": int(data.row_index[i]), "token": names[sample["token"]],
                     "label": data.class_names[int(data.y[i])],
                     "predicted": data.class_names[int(proba[i].argmax())]})
    return view


def pick_attention_examples(candidates, attacks: list[str]) -> list:
    """Per attention attack (in run order) the KEPT_EXAMPLES gathered candidates with the largest JSD (NaN
    last, ties by global index): what one pass over all rows picks."""
    picked = []
    for name in attacks:
        mine = [e for e in candidates if e.attack == name]
        mine.sort(key=lambda e: (-(e.jsd if np.isfinite(e.jsd) else -1.0), e.index))
        picked += mine[:KEPT_EXAMPLES]
    return picked


def pick_flipped(candidates, attacks: list[str]) -> dict:
    """Per attack the first KEPT_EXAMPLES flipped samples by global index."""
    flipped = {}
    for name in attacks:
        mine = sorted((e for e in candidates if e.attack == name), key=lambda e: e.index)
        if mine:
            flipped[name] = mine[:KEPT_EXAMPLES]
    return flipped


def gallery(data: Dataset, proba: np.ndarray, candidates: dict[str, np.ndarray]) -> list[SampleView]:
    """The first few correct and the first few misclassified samples, with their top features by attention.
    ``candidates``: global ``index`` of rows that may be shown and their attributions per explainer."""
    pred = proba.argmax(1)
    correct_rows = np.flatnonzero(pred == data.y)[:GALLERY_SIZE]
    wrong_rows = np.flatnonzero(pred != data.y)[:GALLERY_SIZE]
    where = {int(row): i for i, row in enumerate(candidates["index"])}
    attributions = {name: values for name, values in candidates.items() if name != "index"}
    if not attributions:
        return []
    return [sample_view(data, int(row), data.x[row], proba[row],
                         {name: torch.from_numpy(np.asarray(values[where[int(row)]]))
                          for name, values in attributions.items()})
            for row in [*correct_rows, *wrong_rows]]


def sample_view(data: Dataset, row: int, x: np.ndarray, proba: np.ndarray,
                 attributions: dict[str, torch.Tensor]) -> SampleView:
    """One sample's view: the top features by the lead explainer, each attribution scaled to its largest magnitude."""
    lead = "attention" if "attention" in attributions else next(iter(attributions))
    top = np.argsort(-attributions[lead].flatten().cpu().numpy(), kind="stable")[:GALLERY_FEATURES]
    scaled, maps = {}, {}
    for name, attribution in attributions.items():
        values = attribution.detach().cpu().double().numpy()
        peak = float(np.abs(values).max()) or 1.0
        scaled[name] = (values.flatten()[top] / peak).tolist()
        maps[name] = (values / peak).tolist()
    predicted = int(proba.argmax())
    return SampleView(
        row=int(data.row_index[row]), label=data.class_names[int(data.y[row])],
        predicted=data.class_names[predicted], confidence=float(proba.max()),
        correct=bool(predicted == data.y[row]), features=[data.feature_names[i] for i in top],
        values=[float(x.flatten()[i]) for i in top], attributions=scaled,
        x=np.asarray(x, dtype=np.float64).tolist(), maps=maps,
    )


def adversarial_gallery(data: Dataset, proba: np.ndarray, flipped: dict, metrics: dict[str, MetricValue],
                        config: AuditConfig) -> list[SampleView]:
    """A few samples the strongest L-inf attack (lowest robust accuracy at the largest L-inf eps; L2 budgets are
    other units; on text the strongest label-preserving attack at the largest token budget) flips, with each
    explainer's attribution of the adversarial input for its new prediction (as the explain stage computed them,
    ``FlippedExample.attributions``)."""
    norm = "tokens" if config.text else "linf"
    largest = format_eps(max(config.grid(norm)))
    # an upper bound that may change the meaning (hotflip-any) is shown only where no label-preserving attack flipped
    ranked = sorted((bool(getattr(attack_class(name), "any_token", False)),
                     metrics[f"robust.accuracy.{name}@{largest}"].value, name) for name, examples in flipped.items()
                    if examples and attack_class(name).norm == norm and f"robust.accuracy.{name}@{largest}" in metrics)
    if not ranked:
        return []
    views = []
    for example in flipped[ranked[0][-1]]:
        clean_x = np.asarray(data.x[example.index], dtype=np.float64)
        adv_x = example.x_adv.cpu().double().numpy()
        view = sample_view(data, example.index, adv_x, example.adv_proba, example.attributions)
        moved = np.argsort(-np.abs(adv_x - clean_x).flatten(), kind="stable")[:GALLERY_FEATURES]
        view.attack, view.eps = example.attack, example.eps
        view.clean_predicted = data.class_names[int(proba[example.index].argmax())]
        view.changes = [(data.feature_names[i], *_shown(data, i, clean_x.flatten()[i], adv_x.flatten()[i]))
                        for i in moved if adv_x.flatten()[i] != clean_x.flatten()[i]]
        if config.text:
            view.clean_x = clean_x.tolist()
        views.append(view)
    return views


def _shown(data, feature: int, clean: float, adversarial: float) -> tuple[float | str, float | str]:
    """A changed feature's clean and adversarial values as the gallery shows them: a categorical column by its
    categories' names, a numeric one by its scaled value."""
    found = data.categories.get(data.feature_names[feature]) if data.categories else None
    if found is None:
        return float(clean), float(adversarial)
    return category_name(clean, found), category_name(adversarial, found)


# what results.json's "report" section holds beyond the metrics, skipped names, curves and checks it has anyway
REPORT_FIELDS = ("confusion", "detection", "gallery", "adversarial_gallery", "attention_examples", "sanity_curves",
                 "hidden_importance")


def report_section(findings: AuditFindings, *, metric_order: list[str], attacks: list[str], explainers: list[str],
                   class_names: list[str], feature_names: list[str], row_index: list[int]) -> dict:
    """results.json's ``report`` section: the findings only the report shows, and the names it labels them
    with, as JSON (a value that is not finite is written as null)."""
    section = {"metric_order": list(metric_order), "attacks": list(attacks), "explainers": list(explainers),
               "class_names": list(class_names), "feature_names": list(feature_names), "row_index": list(row_index)}
    for name in REPORT_FIELDS:
        value = getattr(findings, name)
        section[name] = [asdict(item) for item in value] if name in ("gallery", "adversarial_gallery",
                                                                      "attention_examples") else value
    return _finite(section)


def findings_from_document(document: dict) -> AuditFindings:
    """The findings a results.json document holds (the inverse of :func:`report_section` with the document's
    metrics, skipped names, curves and checks), in the order the audit produced its metrics."""
    section = document["report"]
    metrics = {name: MetricValue.from_dict(document["metrics"][name]) for name in section["metric_order"]}
    return AuditFindings(
        metrics=metrics, skipped=dict(document["skipped"]), timing=dict(document["timing"]),
        n_samples=int(document["data"]["n_samples"]),
        robustness_curves={name: [tuple(point) for point in points]
                           for name, points in document["curves"]["robustness"].items()},
        removal_curves=document["curves"]["removal"], confusion=section["confusion"],
        gallery=[SampleView(**_nan(item)) for item in section["gallery"]],
        masking=list(document["masking_checks"]), memory=dict(document["config"].get("memory", {})),
        detection=section["detection"],
        attention_examples=[AttentionExample(**_nan(item)) for item in section["attention_examples"]],
        adversarial_gallery=[SampleView(**_nan(item)) for item in section["adversarial_gallery"]],
        sanity_curves={name: [{**step, "spearman": math.nan if step["spearman"] is None else step["spearman"]}
                              for step in steps] for name, steps in section["sanity_curves"].items()},
        hidden_importance=section["hidden_importance"],
    )


def _finite(value):
    """``value`` with every float that is not finite replaced by None (results.json never holds NaN)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# the fields of a gallery sample or an attention example that hold numbers (null in JSON where not finite)
_NUMERIC = ("values", "attributions", "x", "maps", "jsd", "clean", "attacked")


def _nan(item: dict) -> dict:
    """A gallery sample or attention example read back: null numbers become NaN again."""
    def back(value):
        if isinstance(value, dict):
            return {key: back(entry) for key, entry in value.items()}
        if isinstance(value, list):
            return [back(entry) for entry in value]
        return math.nan if value is None else value

    return {key: back(value) if key in _NUMERIC else value for key, value in item.items()}
