"""CI-native outputs: --json, --quiet, $GITHUB_STEP_SUMMARY, junit.xml's structure, regression gates against a
baseline results.json, and the example CI files."""

import json
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.gates import load_policy, validate_policy
from auditor.run.config import AuditConfig
from auditor.stages.order import planned_metrics

FAST = ["--eps", "0.03,0.1", "--max-samples", "60", "--attacks", "fgsm,pgd"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ci"


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output


@pytest.fixture(scope="module")
def audited(trained_checkpoint, tmp_path_factory):
    """One audit run with --json and a step summary file that an earlier step already wrote to."""
    folder = tmp_path_factory.mktemp("ci")
    summary = folder / "step_summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    policy = folder / "policy.toml"
    policy.write_text('[gates]\n"clean.accuracy" = ">= 0.5"\n"robust.accuracy.pgd@0.1" = ">= 0.999"\n')
    out = folder / "out"
    result = invoke("run", "--model", trained_checkpoint[0], "--policy", policy, "--out", out, "--json", *FAST,
                    env={"GITHUB_STEP_SUMMARY": str(summary)})
    return result, out, summary


def test_json_prints_results_json_and_nothing_else_on_stdout(audited):
    result, out, _ = audited
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout) == json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert "audit FAILED: 1/2 gates passed" in result.stderr


def test_results_json_carries_curves_and_training_facts(audited):
    document = json.loads((audited[1] / "results.json").read_text(encoding="utf-8"))
    assert document["schema_version"] == 1
    assert document["model"]["defense_settings"] == {"name": "none"}
    assert document["model"]["training"]["epochs"] == 60 and document["model"]["training"]["epochs_run"] >= 1
    pgd = document["curves"]["robustness"]["pgd"]
    assert [eps for eps, _ in pgd] == [0.03, 0.1]
    assert pgd[1][1] == document["metrics"]["robust.accuracy.pgd@0.1"]["value"]
    removal = document["curves"]["removal"]["attention"]
    assert len(removal["fractions"]) == len(removal["deletion"]) == len(removal["insertion"])


def test_step_summary_is_appended_not_overwritten(audited):
    text = audited[2].read_text(encoding="utf-8")
    assert text.startswith("earlier step\n")
    assert "## attention-audit: FAILED" in text and "| `clean.accuracy >= 0.5` |" in text


def test_junit_has_one_suite_per_gate_group_in_the_shape_viewers_read(audited):
    root = ET.parse(audited[1] / "junit.xml").getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert set(suites) == {"clean", "robust"}
    for suite in suites.values():
        cases = suite.findall("testcase")
        assert suite.get("tests") == str(len(cases))
        assert suite.get("failures") == str(len(suite.findall("testcase/failure")))
        assert all(case.get("classname") and case.get("name") for case in cases)
    failure = suites["robust"].find("testcase/failure")
    assert re.fullmatch(r"value \S+ < threshold 0\.999", failure.get("message"))


def _baseline_from(out: Path, tmp_path: Path, edit=None) -> Path:
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    if edit:
        edit(document["metrics"])
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_a_checkpoint_worse_than_its_baseline_fails(audited, trained_checkpoint, tmp_path):
    def better_baseline(metrics):
        measured = metrics["robust.accuracy.pgd@0.1"]["value"]
        metrics["robust.accuracy.pgd@0.1"] = {"value": measured + 0.3, "ci95": [measured + 0.29, measured + 0.31]}

    baseline = _baseline_from(audited[1], tmp_path, better_baseline)
    policy = tmp_path / "policy.toml"
    policy.write_text('[gates]\n"clean.accuracy" = ">= 0.5"\n[regression]\n"robust.accuracy.pgd@0.1" = 0.02\n')
    out = tmp_path / "out"
    result = invoke("run", "--model", trained_checkpoint[0], "--policy", policy, "--baseline", baseline,
                    "--out", out, "--quiet", *FAST)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "audit FAILED: 1/2 gates passed"
    gate = json.loads((out / "results.json").read_text(encoding="utf-8"))["gates"][1]
    measured = gate["value"]
    assert gate["kind"] == "regression" and not gate["passed"]
    assert gate["baseline"] == pytest.approx(measured + 0.3) and gate["tolerance"] == 0.02
    assert gate["baseline_ci95"] == pytest.approx([measured + 0.29, measured + 0.31])
    assert gate["threshold"] == pytest.approx(measured + 0.28) and gate["op"] == ">="
    assert gate["significance"] == "significant" and "significant" in gate["message"]
    suites = {s.get("name"): s for s in ET.parse(out / "junit.xml").getroot().findall("testsuite")}
    assert suites["regression"].get("failures") == "1"
    assert "Regression against the baseline" in (out / "summary.md").read_text(encoding="utf-8")


def test_a_checkpoint_as_good_as_its_baseline_passes_with_default_tolerances(audited, trained_checkpoint, tmp_path):
    baseline = _baseline_from(audited[1], tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text('[gates]\n"clean.accuracy" = ">= 0.5"\n')  # no [regression]: 0.02 on every gated metric
    out = tmp_path / "out"
    result = invoke("run", "--model", trained_checkpoint[0], "--policy", policy, "--baseline", baseline,
                    "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == "audit PASSED: 2/2 gates passed"
    assert any("pass  clean.accuracy regression (baseline" in line for line in lines)
    gates = json.loads((out / "results.json").read_text(encoding="utf-8"))["gates"]
    assert [(g["kind"], g["metric"], g["tolerance"]) for g in gates] == [
        ("threshold", "clean.accuracy", None), ("regression", "clean.accuracy", 0.02)]
    assert gates[1]["significance"] == "unchanged"


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"metrics": {"clean.accuracy": {"value": 0.9, "ci95": null}}}', "no value for 'robust.accuracy.pgd@0.1'"),
    ('[1, 2]', 'has no "metrics" table'),
])
def test_a_bad_baseline_is_one_line_and_exit_2(trained_checkpoint, tmp_path, content, fragment):
    baseline = tmp_path / "baseline.json"
    if content is not None:
        baseline.write_text(content, encoding="utf-8")
    policy = tmp_path / "policy.toml"
    policy.write_text('[regression]\n"robust.accuracy.pgd@0.1" = 0.02\n')
    out = tmp_path / "out"
    result = invoke("run", "--model", trained_checkpoint[0], "--policy", policy, "--baseline", baseline,
                    "--out", out, *FAST)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_the_example_policy_parses_and_validates_against_a_default_run():
    policy = load_policy(EXAMPLES / "audit.toml")
    assert policy.gates and policy.regression
    config = AuditConfig.from_profile("quick")
    validate_policy(policy, planned_metrics(config), eps_grid=config.eps, attacks=config.attacks)


def _yaml_keys(text: str) -> list[tuple[int, str]]:
    """A light check for YAML without PyYAML: no tabs, even indentation, and the (indent, key) of every mapping
    line, so a test can ask what a job holds."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert "\t" not in line, f"tab on line {number}"
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"odd indentation on line {number}"
        if match := re.match(r"\s*(?:- )?([A-Za-z_][\w-]*):(?:\s|$)", line):
            keys.append((indent, match.group(1)))
    return keys


def test_the_github_workflow_gates_and_uploads_the_report_always():
    text = (EXAMPLES / "github-actions.yml").read_text(encoding="utf-8")
    keys = {key for _, key in _yaml_keys(text)}
    assert {"on", "jobs", "steps", "uses", "run", "if", "with", "path"} <= keys
    for needed in ("actions/checkout@", "actions/setup-python@", "pip install .", "actions/upload-artifact@",
                   "if: always()", "report.html"):
        assert needed in text
    assert re.search(r"audit run .*--policy examples/ci/audit\.toml", text)


def test_the_gitlab_job_keeps_the_report_and_the_junit_report():
    text = (EXAMPLES / "gitlab-ci.yml").read_text(encoding="utf-8")
    keys = [key for _, key in _yaml_keys(text)]
    assert {"script", "artifacts", "paths", "reports", "junit", "when"} <= set(keys)
    assert "audit-out/junit.xml" in text and "audit-out/report.html" in text and "when: always" in text
    assert re.search(r"audit run .*--policy examples/ci/audit\.toml", text)
    assert tomllib.loads((EXAMPLES / "audit.toml").read_text(encoding="utf-8"))["regression"]
