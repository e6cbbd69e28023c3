"""Clean stage: does it detect? Point values from scikit-learn, intervals by bootstrap."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from auditor.metrics import Bootstrap, MetricValue

ECE_BINS = 10


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
    if binary:
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", pos_label=pos, zero_division=0)
        stats = {"precision": _binary_precision, "recall": _binary_recall, "f1": _binary_f1}
        for key, value in (("precision", p), ("recall", r), ("f1", f)):
            metrics[f"clean.{key}"] = MetricValue(
                float(value), bootstrap.interval(lambda yy, pp, s=stats[key]: s(yy == pos, pp == pos), y, pred))
    else:
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", labels=range(n_classes), zero_division=0)
        for key, value in (("precision", p), ("recall", r), ("f1", f)):
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
