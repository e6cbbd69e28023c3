import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from auditor.stages.clean import _binary_auc, _binary_f1, _binary_precision, _binary_recall, clean_metrics
from auditor.metrics import Bootstrap
from auditor.catalogue import CATALOGUE, spec_for


def test_vectorised_statistics_equal_scikit_learn_on_the_full_sample():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(bool)
    score = np.round(rng.random(300) * 0.5 + y * 0.3, 2)  # ties on purpose
    flagged = score > 0.4
    assert np.isclose(_binary_auc(y[None], score[None])[0], roc_auc_score(y, score))
    assert np.isclose(_binary_precision(y[None], flagged[None])[0], precision_score(y, flagged))
    assert np.isclose(_binary_recall(y[None], flagged[None])[0], recall_score(y, flagged))
    assert np.isclose(_binary_f1(y[None], flagged[None])[0], f1_score(y, flagged))


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(1).random(500)
    a = Bootstrap(500, seed=3).mean(values)
    b = Bootstrap(500, seed=3).mean(values)
    assert a == b
    assert a.ci95[0] < a.value < a.ci95[1]
    # the standard error of a uniform mean over 500 samples is about 0.0129: the interval is about +-1.96 of that
    assert 0.04 < a.ci95[1] - a.ci95[0] < 0.062


def test_bootstrap_of_a_constant_is_a_point():
    result = Bootstrap(50, seed=0).mean(np.ones(50))
    assert result.value == 1.0 and result.ci95 == (1.0, 1.0)


def test_masked_mean_uses_only_masked_rows():
    values = np.array([1.0, 0.0, 1.0, 0.0])
    result = Bootstrap(4, seed=0).mean(values, mask=np.array([True, False, True, False]))
    assert result.value == 1.0
    assert Bootstrap(4, seed=0).mean(values, mask=np.zeros(4, bool)) is None


def test_clean_metrics_use_the_positive_class():
    y = np.array([0, 0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4]])
    metrics, skipped = clean_metrics(y, proba, positive=0, n_classes=2, bootstrap=Bootstrap(5, seed=0))
    pred = proba.argmax(1)
    assert metrics["clean.accuracy"].value == pytest.approx(0.6)
    assert metrics["clean.precision"].value == pytest.approx(precision_score(y, pred, pos_label=0))
    assert metrics["clean.recall"].value == pytest.approx(recall_score(y, pred, pos_label=0))
    assert metrics["clean.roc_auc"].value == pytest.approx(roc_auc_score(y == 0, proba[:, 0]))
    assert not skipped


def test_single_class_skips_roc_auc_instead_of_nan():
    metrics, skipped = clean_metrics(np.zeros(4, int), np.full((4, 2), 0.5), positive=1, n_classes=2,
                                     bootstrap=Bootstrap(4, seed=0))
    assert "clean.roc_auc" in skipped and "clean.roc_auc" not in metrics


@pytest.mark.parametrize("name,direction", [
    ("clean.accuracy", "higher"), ("robust.accuracy.pgd@0.03", "higher"),
    ("robust.attack_success_rate.fgsm@0.1", "lower"), ("faithfulness.deletion_auc.rollout", "lower"),
    ("faithfulness.insertion_auc.integrated-gradients", "higher"),
])
def test_catalogue_resolves_names_with_direction(name, direction):
    spec = spec_for(name, ["fgsm", "pgd"], ["attention", "rollout", "integrated-gradients", "random"])
    assert spec is not None and spec.direction == direction


def test_catalogue_rejects_unknown_names():
    assert spec_for("robust.accuracy.nope@0.1", ["pgd"], ["attention"]) is None
    assert spec_for("clean.accuracyy", ["pgd"], ["attention"]) is None
    assert len({s.pattern for s in CATALOGUE}) == len(CATALOGUE)


def test_expected_calibration_error_by_hand():
    # bin (0.9, 1]: two samples at confidence 0.95, one right -> |0.5 - 0.95| * 2/4 = 0.225
    # bin (0.6, 0.7]: two samples at confidence 0.65, both right -> |1 - 0.65| * 2/4 = 0.175
    y = np.array([1, 0, 1, 0])
    proba = np.array([[0.05, 0.95], [0.05, 0.95], [0.35, 0.65], [0.65, 0.35]])
    metrics, _ = clean_metrics(y, proba, positive=1, n_classes=2, bootstrap=Bootstrap(4, seed=0))
    assert metrics["clean.ece"].value == pytest.approx(0.4)
    assert spec_for("clean.ece", [], []).higher_is_better is False


def test_a_calibrated_detector_has_an_ece_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20000)
    correct = rng.random(20000) < confidence  # right exactly as often as it claims
    y = np.where(correct, 1, 0)
    proba = np.stack([1 - confidence, confidence], axis=1)
    metrics, _ = clean_metrics(y, proba, positive=1, n_classes=2, bootstrap=Bootstrap(20000, seed=0, resamples=50))
    assert metrics["clean.ece"].value < 0.02
    assert metrics["clean.ece"].ci95[0] <= metrics["clean.ece"].value <= metrics["clean.ece"].ci95[1]


def test_a_planned_metric_neither_produced_nor_skipped_is_an_error_naming_its_stage():
    from auditor.run.config import AuditConfig
    from auditor.metrics import MetricValue
    from auditor.stages.order import check_produced, planned_metrics

    config = AuditConfig(eps=(0.1,), attacks=("fgsm",), explainers=("attention", "random"))
    planned = planned_metrics(config, binary=True)
    metrics = {name: MetricValue(0.5) for name in planned if name != "sanity.flip_rate.random"}
    with pytest.raises(RuntimeError, match="the sanity stage planned sanity.flip_rate.random"):
        check_produced(config, binary=True, metrics=metrics, skipped={})
    check_produced(config, binary=True, metrics=metrics, skipped={"sanity.flip_rate.random": "no CLS token"})


def test_every_name_a_stage_plans_is_declared_by_a_stage():
    from auditor.run.config import AuditConfig
    from auditor.stages.order import STAGES, planned_metrics

    config = AuditConfig.from_profile("full", target_class="1", eps=(0.03, 0.1)).with_l2_grid(30)
    declared = {spec.pattern for stage in STAGES for spec in stage.specs}
    assert len(declared) == len(CATALOGUE)
    for name in planned_metrics(config, binary=True):
        spec = spec_for(name, list(config.attacks), list(config.explainers))
        assert spec is not None, name
