import pytest

from auditor.gates import (Policy, Gate, canonical_name, default_policy, evaluate, exit_code, load_policy,
                           validate_policy)
from auditor.metrics import MetricValue
from auditor.session import AuditConfig, planned_metrics
from detectors.errors import BadInputError

CONFIG = AuditConfig()
PLANNED = planned_metrics(CONFIG)


def _policy(tmp_path, text):
    path = tmp_path / "audit.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def test_policy_parses_operators_and_canonical_eps(tmp_path):
    policy = _policy(tmp_path, '[gates]\n"clean.accuracy" = ">= 0.90"\n"robust.accuracy.pgd@0.030" = "> 0.5"\n'
                               '"faithfulness.deletion_auc.attention" = "<=0.6"\n')
    assert [(g.metric, g.op, g.threshold) for g in policy.gates] == [
        ("clean.accuracy", ">=", 0.9), ("robust.accuracy.pgd@0.03", ">", 0.5),
        ("faithfulness.deletion_auc.attention", "<=", 0.6)]
    validate_policy(policy, PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)


def test_policy_accepts_agreement_sanity_and_localisation_names(tmp_path):
    config = AuditConfig.from_profile("standard")
    policy = _policy(tmp_path, '[gates]\n"agreement.kendall_tau.rollout~integrated-gradients" = ">= 0.2"\n'
                               '"agreement.topk_overlap.grad-attention~feature-ablation" = ">= 0.2"\n'
                               '"sanity.mprt.attention" = "<= 0.5"\n"sanity.flip_rate.attention" = ">= 0.1"\n'
                               '"localisation.precision_at_k.integrated-gradients" = ">= 0.5"\n')
    validate_policy(policy, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)
    bad = _policy(tmp_path, '[gates]\n"agreement.kendall_tau.rollout~saliency" = ">= 0.2"\n')
    with pytest.raises(BadInputError, match="unknown metric"):
        validate_policy(bad, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)
    quick = _policy(tmp_path, '[gates]\n"agreement.kendall_tau.rollout~feature-ablation" = ">= 0.2"\n')
    with pytest.raises(BadInputError, match="not computed by this run"):
        validate_policy(quick, PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)


@pytest.mark.parametrize("text,match", [
    ("[gates\n", "invalid TOML"),
    ('[gates]\n"clean.accuracy" = 0.9\n', "not a condition"),
    ('[gates]\n"clean.accuracy" = "== 0.9"\n', "not a condition"),
    ('[thresholds]\n"clean.accuracy" = ">= 0.9"\n', "unknown table"),
])
def test_bad_policy_files(tmp_path, text, match):
    with pytest.raises(BadInputError, match=match):
        _policy(tmp_path, text)


def test_missing_policy_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")


def test_unknown_metric_lists_the_valid_patterns(tmp_path):
    policy = _policy(tmp_path, '[gates]\n"clean.acuracy" = ">= 0.9"\n')
    with pytest.raises(BadInputError, match=r"unknown metric 'clean.acuracy'.*robust\.accuracy\.\{attack\}@\{eps\}"):
        validate_policy(policy, PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)


def test_valid_but_not_computed_names_the_option(tmp_path):
    policy = _policy(tmp_path, '[gates]\n"robust.accuracy.pgd@0.05" = ">= 0.5"\n')
    with pytest.raises(BadInputError, match=r"not computed by this run; add 0.05 to --eps"):
        validate_policy(policy, PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)
    config = AuditConfig(attacks=("fgsm",))
    policy = _policy(tmp_path, '[gates]\n"robust.accuracy.pgd@0.1" = ">= 0.5"\n')
    with pytest.raises(BadInputError, match=r"add pgd to --attacks"):
        validate_policy(policy, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)


def test_default_policy_names_only_what_ran():
    policy = default_policy(PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)
    assert [g.metric for g in policy.gates] == ["clean.accuracy", "robust.accuracy.pgd@0.1"]
    config = AuditConfig(attacks=("fgsm",), eps=(0.02,))
    policy = default_policy(planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)
    assert [g.metric for g in policy.gates] == ["clean.accuracy", "robust.accuracy.fgsm@0.02"]
    validate_policy(policy, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)


def test_evaluate_and_exit_code():
    policy = Policy((Gate("clean.accuracy", ">=", 0.9), Gate("faithfulness.deletion_auc.attention", "<", 0.5)),
                    "test")
    results = evaluate(policy, {"clean.accuracy": MetricValue(0.95, (0.9, 0.99)),
                                "faithfulness.deletion_auc.attention": MetricValue(0.41)}, {})
    assert [r.passed for r in results] == [True, True] and exit_code(results) == 0
    results = evaluate(policy, {"clean.accuracy": MetricValue(0.41)}, {"faithfulness.deletion_auc.attention": "why"})
    assert [r.passed for r in results] == [False, False] and exit_code(results) == 1
    assert results[0].message == "value 0.41 < threshold 0.9"
    assert "why" in results[1].message


def test_canonical_name():
    assert canonical_name("robust.accuracy.pgd@0.10") == "robust.accuracy.pgd@0.1"
    assert canonical_name("clean.accuracy") == "clean.accuracy"
