"""How the gathered row tables become the report's views (:mod:`auditor.report.findings`): the galleries, the
attention attacks' examples and the hidden-importance samples, picked in one pass over all rows."""

from __future__ import annotations

import numpy as np
import torch

from attacks import attack_class
from auditor.metrics import MetricValue, format_eps
from auditor.report.findings import SampleView
from auditor.run.config import AuditConfig
from auditor.stages.robustness import KEPT_EXAMPLES
from auditor.stages.trust import LEAD_EXPLAINERS, input_tokens, token_names, worst_samples
from detectors.base import Detector
from detectors.categorical import category_name
from detectors.table import Dataset

GALLERY_SIZE = 3
GALLERY_FEATURES = 10


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
