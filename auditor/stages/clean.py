"""Clean stage: does it detect? Point values from scikit-learn, intervals by bootstrap."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score, roc_curve

from auditor.run.determinism import ExpectedDetector
from auditor.catalogue.specs import CLEAN_SPECS as SPECS, ECE_BINS, ENSEMBLE_ACCURACY
from auditor.metrics import Bootstrap, MetricValue
from auditor.stages.base import Block, Stage


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([torch.softmax(model(x[i:i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])


def clean_metrics(y: np.ndarray, proba: np.ndarray, *, positive: int | None, n_classes: int,
                  bootstrap: Bootstrap) -> tuple[dict[str, MetricValue], dict[str, str]]:
    """``clean.*`` metrics; binary detectors score their positive class, others the macro average."""
    pred = proba.argmax(1)
    metrics: dict[str, MetricValue] = {}
    skipped: dict[str, str] = {}
    correct = (pred == y).astype(np.float64)
    metrics["clean.accuracy"] = MetricValue(float(accuracy_score(y, pred)), bootstrap.interval(_mean, correct))
    binary = n_classes == 2
    pos = positive if positive is not None else 1
    # recall (and F1, which rests on it) divides by a class's samples: without them it is 0/0, which
    # scikit-learn's zero_division would report as 0.0
    absent = sorted(set([pos] if binary else range(n_classes)) - set(np.unique(y).tolist()))
    undefined = (f"no audited sample is of class {absent[0]}, so recall is 0/0" if binary else
                 f"the macro average needs every class among the audited samples; class {absent[0]} has none") \
        if absent else None
    if binary:
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", pos_label=pos, zero_division=0)
        stats = {"precision": _binary_precision, "recall": _binary_recall, "f1": _binary_f1}
    else:
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", labels=range(n_classes), zero_division=0)
    for key, value in (("precision", p), ("recall", r), ("f1", f)):
        if undefined and key != "precision":
            skipped[f"clean.{key}"] = undefined
        elif binary:
            metrics[f"clean.{key}"] = MetricValue(
                float(value), bootstrap.interval(lambda yy, pp, s=stats[key]: s(yy == pos, pp == pos), y, pred))
        else:
            metrics[f"clean.{key}"] = MetricValue(float(value), None)
    confidence = proba.max(axis=1)
    metrics["clean.ece"] = MetricValue(float(expected_calibration_error(correct[None], confidence[None])[0]),
                                       bootstrap.interval(expected_calibration_error, correct, confidence))
    present = np.unique(y)
    if len(present) < 2:
        skipped["clean.roc_auc"] = "the audited samples hold a single class"
    elif binary:
        score = proba[:, pos]
        auc = roc_auc_score(y == pos, score)
        metrics["clean.roc_auc"] = MetricValue(float(auc), bootstrap.interval(_binary_auc, (y == pos), score))
    elif len(present) == n_classes:
        metrics["clean.roc_auc"] = MetricValue(float(roc_auc_score(y, proba, multi_class="ovr", average="macro")))
    else:
        skipped["clean.roc_auc"] = "one-vs-rest ROC AUC needs every class among the audited samples"
    return metrics, skipped


def detection_data(y: np.ndarray, proba: np.ndarray, *, positive: int | None, class_names: list[str]) -> dict:
    """What the report's Detection section draws, from every audited row: ``per_class`` precision, recall, F1
    and support (scikit-learn), the ``roc`` curves (the positive class of a binary detector, else one-vs-rest per
    class present with others; ``fpr``/``tpr`` points as scikit-learn's ``roc_curve`` returns them) and the
    ``calibration`` bins (:func:`calibration_bins`: left edge, accuracy in the bin, share of rows)."""
    y = np.asarray(y, dtype=int)
    n_classes = len(class_names)
    pred = proba.argmax(1)
    per_class, roc, calibration = [], [], []
    if len(y):
        precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(n_classes),
                                                                         zero_division=0)
        per_class = [{"class": name, "precision": float(precision[k]), "recall": float(recall[k]),
                      "f1": float(f1[k]), "support": int(support[k])} for k, name in enumerate(class_names)]
        confidence, correct = proba.max(axis=1), pred == y
        which = calibration_bins(confidence)
        calibration = [{"left": b / ECE_BINS, "accuracy": float(correct[which == b].mean()),
                        "share": float((which == b).mean())} for b in range(ECE_BINS) if (which == b).any()]
    if len(np.unique(y)) >= 2:
        if n_classes == 2:
            pos = 1 if positive is None else positive
            curves = [(pos, f"{class_names[pos]} (positive)")]
        else:
            curves = [(k, name) for k, name in enumerate(class_names) if 0 < (y == k).sum() < len(y)]
        for k, label in curves:
            fpr, tpr, _ = roc_curve(y == k, proba[:, k])
            roc.append({"class": int(k), "label": label, "fpr": fpr.tolist(), "tpr": tpr.tolist()})
    return {"per_class": per_class, "roc": roc, "calibration": calibration}


def calibration_bins(confidence: np.ndarray, *, bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence among ``bins`` equal-width bins ((0, 0.1], (0.1, 0.2], ... for 10)."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, *, bins: int = ECE_BINS) -> np.ndarray:
    """ECE (Guo et al. 2017) per row of (rows, n) arrays: sum over bins of |B|/n * |accuracy(B) - confidence(B)|,
    which is the mean over samples of the per-bin gap, |sum over B of (correct - confidence)| / n."""
    which = calibration_bins(confidence, bins=bins)
    gap = np.asarray(correct, dtype=np.float64) - confidence
    return sum(np.abs((gap * (which == b)).sum(axis=1)) for b in range(bins)) / gap.shape[1]


def _mean(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=1)


def _binary_precision(truth: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    return (truth & flagged).sum(1) / flagged.sum(1)


def _binary_recall(truth: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    return (truth & flagged).sum(1) / truth.sum(1)


def _binary_f1(truth: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    tp = (truth & flagged).sum(1)
    return 2 * tp / (truth.sum(1) + flagged.sum(1))


def _binary_auc(truth: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann-Whitney form of ROC AUC per row (ties count one half), vectorised over resamples."""
    ranks = rankdata(score, axis=1)
    n_pos = truth.sum(1)
    n_neg = truth.shape[1] - n_pos
    rank_sum = (ranks * truth).sum(1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class CleanStage(Stage):
    """The clean probabilities of every row; ``clean.*`` are computed from all rows at once
    (:func:`clean_metrics`), where a metric that cannot be computed is skipped with its reason."""

    name = "clean"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return [spec.pattern for spec in SPECS if spec.pattern != ENSEMBLE_ACCURACY or config.randomised_model]

    def run(self, block: Block) -> None:
        proba = predict_proba(block.detector, block.x, batch_size=block.plan.forward_batch)
        block.pred = proba.argmax(1)
        block.table["rows"]["proba"] = proba.cpu().numpy().astype(np.float64)
        if isinstance(block.detector, ExpectedDetector):  # summarise keeps the ensemble's under its own name
            block.per_sample["clean.accuracy"] = per_draw_correctness(block.detector, block.x, block.y,
                                                                      batch_size=block.plan.forward_batch)


@torch.inference_mode()
def per_draw_correctness(detector: ExpectedDetector, x: torch.Tensor, y: torch.Tensor, *,
                         batch_size: int) -> np.ndarray:
    """Per sample, the share of the model's draws that classify it correctly."""
    detector.eval()
    correct = [(detector.draw_logits(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).double().mean(0)
               for i in range(0, len(x), batch_size)]
    return torch.cat(correct).cpu().numpy()
