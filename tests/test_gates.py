import pytest

from auditor.gates import (Policy, Gate, canonical_name, default_policy, evaluate, exit_code, load_policy,
                           validate_policy)
from auditor.metrics import MetricValue
from auditor.run.config import AuditConfig
from auditor.stages.order import planned_metrics
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
    config = AuditConfig.from_profile("standard").with_l2_grid(30)
    policy = _policy(tmp_path, '[gates]\n"agreement.kendall_tau.rollout~integrated-gradients" = ">= 0.2"\n'
                               '"agreement.topk_overlap.grad-attention~feature-ablation" = ">= 0.2"\n'
                               '"sanity.mprt.attention" = "<= 0.5"\n"sanity.flip_rate.attention" = ">= 0.1"\n'
                               '"localisation.precision_at_k.integrated-gradients" = ">= 0.5"\n')
    validate_policy(policy, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)
    bad = _policy(tmp_path, '[gates]\n"agreement.kendall_tau.rollout~saliency" = ">= 0.2"\n')
    with pytest.raises(BadInputError, match="unknown metric"):
        validate_policy(bad, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)
    quick = _policy(tmp_path, '[gates]\n"agreement.kendall_tau.grad-attention~feature-ablation" = ">= 0.2"\n')
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
    # text: a token budget is looked up in --token-budget, not in --eps
    text = AuditConfig(token_budget=(1, 2, 4)).for_kind("text")
    for name, hint in (("robust.accuracy.hotflip@3", "add 3 to --token-budget"),
                       ("robust.accuracy.worst-tokens@8", "add 8 to --token-budget"),
                       ("robust.accuracy.stealth-sub@4", "add stealth-sub to --attacks$")):
        policy = _policy(tmp_path, f'[gates]\n"{name}" = ">= 0.5"\n')
        with pytest.raises(BadInputError, match=hint):
            validate_policy(policy, planned_metrics(text), eps_grid=text.eps, attacks=text.attacks,
                            token_budget=text.token_budget)


def test_default_policy_names_only_what_ran():
    policy = default_policy(PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)
    assert [g.metric for g in policy.gates] == ["clean.accuracy", "robust.accuracy.worst@0.1", "trust.verdict"]
    config = AuditConfig(attacks=("fgsm",), eps=(0.02,), explainers=("integrated-gradients",))
    policy = default_policy(planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)
    # the trust verdict is gated whatever ran: without attention among the explainers it is not established
    assert [g.metric for g in policy.gates] == ["clean.accuracy", "robust.accuracy.worst@0.02", "trust.verdict"]
    validate_policy(policy, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)


def test_default_policy_gates_the_worst_case_and_both_checks():
    """The whole default policy (docs/policy.md, "Policy file and gates"): the worst case at the largest eps,
    and the masking and convergence verdicts at 0 whenever the checks compute them."""
    config = AuditConfig.from_profile("standard").with_l2_grid(30)
    policy = default_policy(planned_metrics(config), eps_grid=config.eps, attacks=config.attacks,
                            eps_l2=config.grid("l2"))
    assert [(g.metric, g.op, g.threshold) for g in policy.gates] == [
        ("clean.accuracy", ">=", 0.9), ("robust.accuracy.worst@0.1", ">=", 0.5),
        ("robust.masking_suspected", "<=", 0.0), ("robust.not_converged", "<=", 0.0),
        ("trust.verdict", ">=", 1.0)]
    assert policy.gates[-1].kind == "verdict" and policy.gates[-1].conditions == (
        "used", "beats-chance", "survives-randomisation", "hides-nothing")
    only_l2 = AuditConfig(attacks=("cw",), eps_l2=(0.5, 2.0), masking_checks=True)
    policy = default_policy(planned_metrics(only_l2), eps_grid=only_l2.eps, attacks=only_l2.attacks,
                            eps_l2=only_l2.grid("l2"))
    assert [g.metric for g in policy.gates] == ["clean.accuracy", "robust.accuracy.worst-l2@2",
                                                "robust.masking_suspected", "robust.not_converged",
                                                "trust.verdict"]
    one_eps = AuditConfig(attacks=("fgsm",), eps=(0.1,), masking_checks=True)  # no pgd, one eps: nothing to
    assert "robust.not_converged" not in planned_metrics(one_eps)                # judge convergence by


def test_l2_names_and_hints_use_the_l2_grid(tmp_path):
    config = AuditConfig(attacks=("pgd", "cw"), eps=(0.1,), eps_l2=(0.5,))
    planned = planned_metrics(config)
    assert "robust.accuracy.cw@0.5" in planned and "robust.accuracy.cw@0.1" not in planned
    assert "robust.accuracy.worst@0.1" in planned and "robust.accuracy.worst-l2@0.5" in planned
    policy = _policy(tmp_path, '[gates]\n"robust.accuracy.cw@0.1" = ">= 0.5"\n')
    with pytest.raises(BadInputError, match=r"add 0.1 to --eps-l2"):
        validate_policy(policy, planned, eps_grid=config.eps, attacks=config.attacks, eps_l2=config.grid("l2"))


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


def test_regression_table_parses_and_refuses_bad_tolerances(tmp_path):
    policy = _policy(tmp_path, '[regression]\n"robust.accuracy.pgd@0.030" = 0.02\n"clean.accuracy" = 0\n')
    assert policy.gates == () and policy.regression == {"robust.accuracy.pgd@0.03": 0.02, "clean.accuracy": 0.0}
    validate_policy(policy, PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)
    assert _policy(tmp_path, '[gates]\n"clean.accuracy" = ">= 0.9"\n').regression is None
    for bad in ('"clean.accuracy" = "0.02"', '"clean.accuracy" = -0.1', '"clean.accuracy" = true'):
        with pytest.raises(BadInputError, match="not a number >= 0"):
            _policy(tmp_path, f"[regression]\n{bad}\n")
    policy = _policy(tmp_path, '[regression]\n"robust.accuracy.pgd@0.05" = 0.02\n')
    with pytest.raises(BadInputError, match="add 0.05 to --eps"):
        validate_policy(policy, PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)


def test_regression_gates_follow_each_metrics_direction():
    from auditor.gates import Baseline, evaluate_regression

    baseline = Baseline("b.json", {"clean.accuracy": MetricValue(0.90, (0.88, 0.92)),
                                   "robust.evasion_rate.pgd@0.1": MetricValue(0.20, (0.18, 0.22))})
    tolerances = {"clean.accuracy": 0.02, "robust.evasion_rate.pgd@0.1": 0.02}
    # accuracy 0.885 is 0.015 worse (within 0.02); evasion 0.25 is 0.05 worse (higher is worse here)
    results = evaluate_regression(tolerances, baseline, {"clean.accuracy": MetricValue(0.885, (0.87, 0.90)),
                                                         "robust.evasion_rate.pgd@0.1": MetricValue(0.25, (0.23, 0.27))},
                                  {})
    accuracy, evasion = results
    assert accuracy.passed and accuracy.op == ">=" and accuracy.threshold == pytest.approx(0.88)
    assert accuracy.significance == "within the intervals" and accuracy.group == "regression"
    assert not evasion.passed and evasion.op == "<=" and evasion.threshold == pytest.approx(0.22)
    assert evasion.significance == "significant" and evasion.baseline == 0.20
    assert evasion.message.startswith("value 0.25 > threshold 0.22")
    # a lower evasion rate is an improvement, whatever its size
    improved = evaluate_regression({"robust.evasion_rate.pgd@0.1": 0.0}, baseline,
                                   {"robust.evasion_rate.pgd@0.1": MetricValue(0.01)}, {})
    assert improved[0].passed and improved[0].significance == "no interval"
    missing = evaluate_regression({"clean.accuracy": 0.02}, baseline, {}, {"clean.accuracy": "single class"})
    assert not missing[0].passed and missing[0].message == "no value: single class"


def test_without_a_regression_table_every_gated_metric_gets_the_default_tolerance(tmp_path):
    from auditor.gates import regression_tolerances

    fallback = default_policy(PLANNED, eps_grid=CONFIG.eps, attacks=CONFIG.attacks)
    assert regression_tolerances(Policy((), "x"), fallback) == {g.metric: 0.02 for g in fallback.gates
                                                                if g.kind == "threshold"}  # a verdict, no metric
    own = _policy(tmp_path, '[gates]\n"faithfulness.insertion_auc.attention" = ">= 0.1"\n')
    assert regression_tolerances(own, fallback) == {"faithfulness.insertion_auc.attention": 0.02}
    table = _policy(tmp_path, '[gates]\n"clean.accuracy" = ">= 0.9"\n[regression]\n"clean.f1" = 0.05\n')
    assert regression_tolerances(table, fallback) == {"clean.f1": 0.05}
