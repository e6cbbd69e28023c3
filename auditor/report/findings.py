"""An audit's findings as plain values: the metrics table and the report's data (:class:`AuditFindings`,
:class:`SampleView`, :class:`AttentionExample`), results.json's ``report`` section written from them and read
back. The audit pass builds them from its row tables (:mod:`auditor.run.findings`); the report reads only this."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from auditor.metrics import MetricValue


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
class AttentionExample:
    """One of the samples an attention attack moved most (largest JSD) at the largest eps, as plain lists
    for the report: the clean and attacked attention spread over the input's shape.

    Text only: ``x_adv`` holds the attacked message's token ids, and ``tokens`` and ``adv_tokens`` the clean and
    attacked messages' tokens after [CLS], up to the padding (spelled by the tokeniser after the audit,
    :func:`auditor.run.pipeline.spell_tokens`), so the report shows both messages with the substituted tokens marked.
    """

    attack: str
    eps: float
    index: int
    jsd: float
    clean_pred: int
    adv_pred: int
    x: list
    clean: list
    attacked: list
    x_adv: list = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    adv_tokens: list[str] = field(default_factory=list)


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
