"""The command line, driven through click's CliRunner: exact exit codes and one-line errors."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from auditor.cli import cli
from exits import gate_exit_code

FAST = ["--eps", "0.03,0.1", "--max-samples", "60", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def model(trained_checkpoint):
    return trained_checkpoint[0]


def test_passing_policy_exits_0_and_writes_every_output(model, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[gates]\n"clean.accuracy" = ">= 0.5"\n"faithfulness.insertion_auc.attention" = "> 0"\n')
    out = tmp_path / "out"
    result = invoke("run", "--model", model, "--policy", policy, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "audit PASSED: 2/2 gates passed"
    document = json.loads((out / "results.json").read_text())
    assert document["passed"] is True and document["schema_version"] == 1
    assert isinstance(document["data"]["n_samples"], int) and document["data"]["n_samples"] == 60
    assert [g["kind"] for g in document["gates"]] == ["threshold", "threshold"]
    assert set(document["timing"]) == {"clean", "robustness", "explain", "faithfulness", "agreement", "sanity",
                                       "trust", "localisation", "sparsity"}
    for value in document["metrics"].values():
        assert value["value"] == value["value"]  # never NaN
    suite = ET.parse(out / "junit.xml").getroot()
    assert len(suite.findall(".//testcase")) == 2 and not suite.findall(".//failure")
    assert "| `clean.accuracy >= 0.5` |" in (out / "summary.md").read_text()
    assert (out / "report.html").stat().st_size > 10_000
    assert not list(out.glob(".*"))


def test_explainers_option_runs_agreement_sanity_and_skips_localisation_without_ground_truth(model, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[gates]\n"agreement.kendall_tau.grad-attention~feature-ablation" = ">= -1"\n'
                      '"sanity.flip_rate.attention" = ">= 0"\n')
    out = tmp_path / "out"
    result = invoke("run", "--model", model, "--policy", policy, "--out", out, "--attacks", "fgsm",
                    "--explainers", "attention,grad-attention,feature-ablation,random", "--eps", "0.1",
                    "--max-samples", "40", "--quiet")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["explainers"] == ["attention", "grad-attention", "feature-ablation", "random"]
    metrics = document["metrics"]
    for name in ("agreement.kendall_tau.attention~feature-ablation", "agreement.topk_overlap.attention~feature-ablation",
                 "sanity.mprt.attention", "sanity.mprt.feature-ablation", "sanity.flip_rate.random"):
        assert name in metrics and metrics[name]["ci95"] is not None
    assert "sanity.mprt.random" not in metrics and "agreement.kendall_tau.rollout~feature-ablation" not in metrics
    assert "ground truth" in document["skipped"]["localisation.precision_at_k.attention"]
    unknown = invoke("run", "--model", model, "--out", tmp_path / "o2", "--explainers", "lime", *FAST)
    assert_one_line_error(unknown, "unknown explainer lime")


def test_failing_gate_exits_1_with_the_failure_in_junit(model, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[gates]\n"robust.accuracy.pgd@0.1" = ">= 0.999"\n')
    out = tmp_path / "out"
    result = invoke("run", "--model", model, "--policy", policy, "--out", out, *FAST)
    assert result.exit_code == 1, result.output
    failure = ET.parse(out / "junit.xml").getroot().find(".//failure")
    assert failure is not None and "< threshold 0.999" in failure.get("message")
    assert json.loads((out / "results.json").read_text())["passed"] is False


def test_saved_adversarial_examples_respect_bounds_and_budget(model, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "--model", model, "--out", out, "--save-adversarial", "--save-explanations", *FAST)
    assert result.exit_code == gate_exit_code(out), result.output
    saved = load_file(out / "adversarial.safetensors")
    x = saved["x"]
    assert saved["y"].shape == (len(x),)
    keys = sorted(k for k in saved if k.startswith("adv/"))
    assert keys == ["adv/attention-shift@0.03", "adv/attention-shift@0.1", "adv/fgsm@0.03", "adv/fgsm@0.1",
                    "adv/pgd@0.03", "adv/pgd@0.1"]
    for key in keys:
        eps = float(key.split("@")[1])
        adv = saved[key]
        assert adv.shape == x.shape
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= eps + 1e-6
    explained = load_file(out / "explanations.safetensors")
    assert explained["pred"].dtype == torch.int64
    assert {k for k in explained if k.startswith("attr/")} == {
        "attr/attention", "attr/rollout", "attr/integrated-gradients", "attr/feature-ablation",
        "attr/random"}


def test_missing_model_is_exit_2(tmp_path):
    out = tmp_path / "out"
    result = invoke("run", "--model", tmp_path / "nope.safetensors", "--out", out, *FAST)
    assert_one_line_error(result, "does not exist")
    assert not out.exists()


def test_corrupted_checkpoint_is_exit_2(model, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(model.read_bytes()[:200])
    result = invoke("run", "--model", broken, "--out", tmp_path / "out", *FAST)
    assert_one_line_error(result, "broken.safetensors")


def test_text_file_as_model_is_exit_2(tmp_path):
    bogus = tmp_path / "model.safetensors"
    bogus.write_text("not a model")
    result = invoke("run", "--model", bogus, "--out", tmp_path / "out", *FAST)
    assert_one_line_error(result, "not a safetensors checkpoint")


def test_bad_toml_is_exit_2_and_leaves_existing_outputs_alone(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("previous")
    policy = tmp_path / "p.toml"
    policy.write_text("[gates\n")
    result = invoke("run", "--model", model, "--policy", policy, "--out", out, *FAST)
    assert_one_line_error(result, "invalid TOML")
    assert (out / "results.json").read_text() == "previous"


def test_unknown_metric_in_policy_is_exit_2(model, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[gates]\n"clean.acuracy" = ">= 0.9"\n')
    result = invoke("run", "--model", model, "--policy", policy, "--out", tmp_path / "out", *FAST)
    assert_one_line_error(result, "unknown metric 'clean.acuracy'")


def test_metric_not_computed_is_exit_2_with_the_option(model, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[gates]\n"robust.accuracy.pgd@0.05" = ">= 0.5"\n')
    result = invoke("run", "--model", model, "--policy", policy, "--out", tmp_path / "out", *FAST)
    assert_one_line_error(result, "add 0.05 to --eps")


def test_data_with_the_wrong_columns_is_exit_2(model, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n1,2,malignant\n", encoding="utf-8")
    result = invoke("run", "--model", model, "--data", csv, "--out", tmp_path / "out", *FAST)
    assert_one_line_error(result, "expected x of shape (N, 30)")


def test_nan_in_data_is_exit_2(model, tmp_path):
    from detectors.data import load_table
    table = load_table("breast-cancer")
    csv = tmp_path / "d.csv"
    rows = [",".join(table.feature_names + ["label"])]
    for i in range(5):
        values = [str(v) for v in table.x[i]]
        if i == 3:
            values[4] = "NaN"
        rows.append(",".join(values + [table.class_names[table.y[i]]]))
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = invoke("run", "--model", model, "--data", csv, "--out", tmp_path / "out", *FAST)
    assert_one_line_error(result, "line 5")


def test_bad_eps_is_usage_error_exit_2(model, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--model", str(model), "--out", str(tmp_path / "o"), "--eps", "0,2"])
    assert result.exit_code == 2 and "eps" in result.output


def test_profiles_attacks_and_frozen_features(model, tmp_path):
    from detectors.checkpoint import read_metadata
    feature = read_metadata(model)["features"][0]
    out = tmp_path / "out"
    result = invoke("run", "--model", model, "--out", out, "--attacks", "pgd,square,stealth", "--masking-checks",
                    "--frozen-features", feature, "--save-adversarial", "--eps", "0.05,0.1", "--max-samples", "32",
                    "--attack-param", "pgd.restarts=2", "--attack-param", "square.n_queries=100", "--quiet")
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["attacks"] == ["pgd", "square", "stealth"]
    assert document["config"]["frozen_features"] == [feature]
    assert {c["name"] for c in document["masking_checks"]} == {
        "iterative-beats-single-step", "unbounded-succeeds", "black-box-not-stronger", "more-effort-same-answer",
        "monotone-in-eps"}
    assert {c["metric"] for c in document["masking_checks"]} == {"robust.masking_suspected", "robust.not_converged"}
    for name in ("robust.masking_suspected", "robust.not_converged"):
        assert name in document["metrics"] and document["check_metrics"][name]["meaning"]
        assert any(g["metric"] == name for g in document["gates"])
    assert any(g["metric"] == "robust.accuracy.worst@0.1" for g in document["gates"])
    for name in ("robust.accuracy.stealth@0.1", "stability.jsd.stealth@0.1", "robust.evasion_rate.pgd@0.1"):
        assert name in document["metrics"], name
    saved = load_file(out / "adversarial.safetensors")
    for key in (k for k in saved if k.startswith("adv/")):
        assert torch.equal(saved[key][:, 0], saved["x"][:, 0]), f"{key} moved a frozen feature"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Gradient-masking and convergence checks" in html and "Attention under attack" in html


def test_attacks_command_lists_the_registry():
    result = invoke("attacks")
    assert result.exit_code == 0
    for name in ("fgsm", "pgd", "pgd-l2", "cw", "deepfool", "square", "autoattack", "attention-shift",
                 "attention-hijack", "attention-guided", "stealth", "profile standard", "hotflip", "attention-shift-sub",
                 "embedding-pgd", "typo", "homoglyph", "hotflip-any", "on text: typo"):
        assert name in result.output


def test_unknown_frozen_feature_is_exit_2(model, tmp_path):
    result = invoke("run", "--model", model, "--out", tmp_path / "o", "--frozen-features", "nope", "--quiet")
    assert_one_line_error(result, "--frozen-features: 'nope' not among the model's features")


def test_unknown_attack_is_exit_2(model, tmp_path):
    result = invoke("run", "--model", model, "--out", tmp_path / "o", "--attacks", "pgd,zoo", "--quiet")
    assert_one_line_error(result, "unknown attack zoo")


def test_missing_cuda_is_exit_2(model, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = invoke("run", "--model", model, "--out", tmp_path / "o", "--device", "cuda", "--quiet")
    assert_one_line_error(result, "no CUDA device")


def test_internal_error_is_exit_3(model, tmp_path, monkeypatch):
    import auditor.run.pipeline
    monkeypatch.setattr(auditor.run.pipeline, "run_audit", lambda *a, **k: 1 / 0)
    import auditor.run.runner
    monkeypatch.setattr(auditor.run.runner, "run_audit", lambda *a, **k: 1 / 0)
    result = CliRunner().invoke(cli, ["run", "--model", str(model), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 3
    assert "internal error: ZeroDivisionError" in result.output and "Traceback" not in result.output


def test_train_writes_a_checkpoint_that_audits(tmp_path):
    out = tmp_path / "m.safetensors"
    result = invoke("train", "--data", "flows:600", "--epochs", "3", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    from detectors.checkpoint import read_metadata
    meta = read_metadata(out)
    assert meta["data"]["name"] == "flows:600" and meta["relevant_features"][0] == "syn_ratio"
    assert meta["defense"] == {"name": "none"}
    audit = invoke("run", "--model", out, "--out", tmp_path / "o", "--attacks", "fgsm", *FAST)
    assert audit.exit_code == gate_exit_code(tmp_path / "o"), audit.output


def test_train_and_demo_create_missing_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--data", "flows:300", "--epochs", "1", "--out", "deep/er/m.safetensors", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "deep/er/m.safetensors").is_file()
    assert not list((tmp_path / "deep/er").glob("*.resume.pt"))
    result = invoke("train", "--data", "flows:300", "--epochs", "1", "--out", "deep", "--quiet")
    assert result.exit_code == 2 and "'deep' is a directory" in result.output  # click's own usage error
    demo = invoke("demo", "--out", "out/demo", "--epochs", "2", "--max-samples", "40", "--eps", "0.1", "--quiet")
    assert demo.exit_code == 0, demo.output
    assert (tmp_path / "out/demo/report.html").is_file() and (tmp_path / "out/demo/results.json").is_file()


def test_train_on_a_csv_with_a_custom_label_column(tmp_path):
    csv = tmp_path / "d.csv"
    lines = ["x1,x2,verdict"] + [f"{i % 7},{(i * 3) % 5},{'bad' if i % 7 > 3 else 'good'}" for i in range(80)]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "m.safetensors"
    result = invoke("train", "--data", csv, "--label-column", "verdict", "--positive-class", "bad",
                    "--epochs", "2", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    audit = invoke("run", "--model", out, "--data", csv, "--label-column", "verdict", "--out", tmp_path / "o",
                   "--attacks", "fgsm", *FAST)
    assert audit.exit_code == gate_exit_code(tmp_path / "o"), audit.output
    document = json.loads((tmp_path / "o" / "results.json").read_text())
    assert document["data"]["split"] == "test" and document["data"]["n_samples"] == 20  # the held-out quarter
    other = tmp_path / "fresh.csv"
    other.write_text(csv.read_text(encoding="utf-8"), encoding="utf-8")
    audit = invoke("run", "--model", out, "--data", other, "--label-column", "verdict", "--out", tmp_path / "p",
                   "--attacks", "fgsm", *FAST)
    assert audit.exit_code == gate_exit_code(tmp_path / "p"), audit.output
    document = json.loads((tmp_path / "p" / "results.json").read_text())
    assert document["data"]["split"] == "all" and document["data"]["n_samples"] == 60


def test_target_class_adds_the_targeted_success_rate(model, tmp_path):
    from detectors.checkpoint import read_metadata
    benign = read_metadata(model)["classes"][1]
    out = tmp_path / "out"
    result = invoke("run", "--model", model, "--out", out, "--attacks", "fgsm,pgd,deepfool", "--target-class", benign,
                    *FAST)
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    params = document["config"]["attack_params"]
    assert params["pgd-targeted"]["target_class"] == 1 and "target_class" not in params["pgd"]
    assert "deepfool-targeted" not in params and "target_class" not in params["deepfool"]  # no targeted mode
    for eps in ("0.03", "0.1"):
        assert f"robust.targeted_success_rate.pgd@{eps}" in document["metrics"]
        assert f"robust.accuracy.pgd-targeted@{eps}" in document["metrics"]
        assert f"robust.accuracy.pgd@{eps}" in document["metrics"]  # always the untargeted value
    assert not any(name.startswith("robust.targeted_success_rate.deepfool") for name in document["metrics"])


def test_unknown_target_class_and_hijack_feature_are_exit_2(model, tmp_path):
    result = invoke("run", "--model", model, "--out", tmp_path / "o", "--target-class", "nope", *FAST)
    assert_one_line_error(result, "--target-class 'nope' is not a class of the model")
    result = invoke("run", "--model", model, "--out", tmp_path / "o", "--attacks", "attention-hijack",
                    "--hijack-features", "nope", *FAST)
    assert_one_line_error(result, "--hijack-features: 'nope' not among the model's features")
    result = invoke("run", "--model", model, "--out", tmp_path / "o", "--hijack-features", "nope", *FAST)
    assert_one_line_error(result, "--hijack-features applies to attention-hijack")
    assert not (tmp_path / "o").exists()


def test_hijack_features_become_the_hijack_targets(model, tmp_path):
    from detectors.checkpoint import read_metadata
    features = read_metadata(model)["features"]
    out = tmp_path / "out"
    result = invoke("run", "--model", model, "--out", out, "--attacks", "attention-hijack", "--hijack-features",
                    f"{features[3]},{features[7]}", "--eps", "0.1", "--max-samples", "40", "--quiet")
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["attack_params"]["attention-hijack"]["target_positions"] == [3, 7]
    assert "stability.hijack_success.attention-hijack@0.1" in document["metrics"]
