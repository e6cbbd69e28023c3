"""Where results go (auditor.export): an audit logged to a temporary SQLite MLflow store and read back with
MLflow's own client, audit compare over logged runs, the model card's model-index, GitHub annotations."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from auditor.cli import cli
from auditor.export.annotations import gate_annotations
from auditor.api import AuditResult
from auditor.export.mlflow_runs import metric_name, mlflow_key, read_metric_key
from auditor.gates import GateResult
from exits import gate_exit_code
from workers import built_once

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ["--eps", "0.03,0.1", "--max-samples", "30", "--attacks", "fgsm,pgd", "--explainers", "attention,random"]


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def logged(trained_checkpoint, tmp_path_factory):
    """One real audit logged by `audit run --mlflow` (on GitHub Actions, so with annotations), and a second
    audit fabricated from it (more robust) logged through the Python API: their folders and run ids. Made once
    per run, whichever xdist worker comes first."""
    with built_once(tmp_path_factory, "mlflow") as root:
        uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
        real, other, record = root / "real", root / "other", root / "logged.json"
        if not record.is_file():
            (root / "store").mkdir()
            result = invoke("run", "--model", trained_checkpoint[0], "--out", real, *CHEAP, "--mlflow", uri,
                            "--mlflow-experiment", "exp", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": None})
            assert result.exit_code == gate_exit_code(real), result.output
            run_id = result.output.split("mlflow: run ", 1)[1].split()[0]

            changed = json.loads((real / "results.json").read_text(encoding="utf-8"))
            changed["metrics"]["robust.accuracy.worst@0.1"] = {"value": 0.8, "ci95": [0.75, 0.85]}
            changed["model"]["defense"] = "pgd-at"
            files = {"results.json": json.dumps(changed).encode()}
            other.mkdir()
            (other / "results.json").write_bytes(files["results.json"])
            other_id = AuditResult(metrics={}, intervals={}, skipped={}, gates=[], passed=True, exit_code=0,
                                   document=changed, files=files).log_to_mlflow(uri, experiment="exp")
            record.write_text(json.dumps({"output": result.output, "ids": [run_id, other_id]}), encoding="utf-8")
    return {"uri": uri, "root": root, "real": real, "other": other,
            "document": json.loads((real / "results.json").read_text(encoding="utf-8")),
            **json.loads(record.read_text(encoding="utf-8"))}


def test_metric_names_map_to_valid_mlflow_keys_and_back():
    from mlflow.utils.validation import _validate_metric_name

    for name in ["robust.accuracy.worst@0.1", "faithfulness.deletion_auc_diff.attention~random",
                 "agreement.kendall_tau.integrated-gradients~feature-ablation", "odd: name/with @ and é"]:
        key = mlflow_key(name)
        _validate_metric_name(key)
        assert metric_name(key) == name
        assert read_metric_key(key + ".lower95") == (name, "lower95")
    assert mlflow_key("robust.accuracy.worst@0.1") == "robust.accuracy.worst:0.1"
    assert len({mlflow_key(n) for n in ["a@b", "a:b", "a~b", "a/b", "a b"]}) == 5


def test_an_audit_reads_back_from_mlflow_with_params_bounds_tags_and_artifacts(logged, tmp_path):
    from mlflow import MlflowClient

    run_id = logged["ids"][0]
    client = MlflowClient(tracking_uri=logged["uri"])
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    document = logged["document"]
    params = run.data.params
    assert params["eps"] == "0.03,0.1" and params["attacks"] == "fgsm,pgd" and params["seed"] == "0"
    assert params["profile"] == "quick" and params["explainers"] == "attention,random"
    assert params["model.sha256"] == document["model"]["sha256"] and params["data"] == "breast-cancer"
    read = {}
    for key, value in run.data.metrics.items():
        name, part = read_metric_key(key)
        read.setdefault(name, {})[part] = value
    assert set(read) == set(document["metrics"])
    for name, entry in document["metrics"].items():
        assert read[name]["value"] == pytest.approx(entry["value"])
        if entry.get("ci95"):
            assert [read[name]["lower95"], read[name]["upper95"]] == pytest.approx(entry["ci95"])
    assert "robust.accuracy.worst:0.1.lower95" in run.data.metrics
    tags = run.data.tags
    assert tags["verdict"] == ("PASSED" if document["passed"] else "FAILED")
    assert tags["exit_code"] == str(gate_exit_code(logged["real"])) and tags["tool.version"]
    assert run.info.status == "FINISHED"
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["junit.xml", "report.html", "results.json",
                                                                      "summary.md"]
    local = client.download_artifacts(run_id, "results.json", str(tmp_path))
    assert Path(local).read_bytes() == (logged["real"] / "results.json").read_bytes()
    # the store's artifacts sit beside its file, not in the working directory
    assert (logged["root"] / "store" / "mlartifacts").is_dir()


def test_compare_of_logged_runs_matches_the_compare_of_their_folders(logged, tmp_path):
    root = tmp_path
    real_id, other_id = logged["ids"]
    by_folder = invoke("compare", logged["real"], logged["other"], "--out", root / "cmp-folders")
    by_run = invoke("compare", f"mlflow:{real_id}", f"mlflow:{other_id}", "--mlflow", logged["uri"],
                    "--out", root / "cmp-runs")
    assert by_folder.exit_code == 0 and by_run.exit_code == 0, by_run.output
    folders = json.loads((root / "cmp-folders" / "compare.json").read_text(encoding="utf-8"))
    runs = json.loads((root / "cmp-runs" / "compare.json").read_text(encoding="utf-8"))
    renamed = json.loads(json.dumps(runs).replace(real_id, "real").replace(other_id, "other"))
    for section in ("metrics", "verdicts", "pareto", "training", "differences"):
        assert renamed[section] == folders[section], section
    assert [a["source"] for a in runs["audits"]] == [str(root / "cmp-runs" / "runs" / i) for i in (real_id, other_id)]


def test_a_run_that_is_not_there_is_exit_2(logged, tmp_path):
    result = invoke("compare", "mlflow:0123abc", logged["real"], "--mlflow", logged["uri"], "--out", tmp_path / "c")
    assert result.exit_code == 2 and result.output.startswith("error: mlflow:0123abc")


def test_failed_gates_are_github_annotations_pointing_at_the_policy(logged, tmp_path):
    failed = [line for line in logged["output"].splitlines() if line.startswith("::error ")]
    document = logged["document"]
    assert len(failed) == sum(not g["passed"] for g in document["gates"])
    policy = tmp_path / "audit.toml"
    policy.write_text('[gates]\n"clean.accuracy" = ">= 0.9"\n"robust.accuracy.pgd@0.1" = ">= 0.5"\n')
    gate = GateResult(name="robust.accuracy.pgd@0.1 >= 0.5", kind="threshold", metric="robust.accuracy.pgd@0.1",
                      op=">=", threshold=0.5, value=0.4, ci95=None, passed=False, message="value 0.4 < 0.5\n50%")
    passed = GateResult(name="clean.accuracy >= 0.9", kind="threshold", metric="clean.accuracy", op=">=",
                        threshold=0.9, value=0.95, ci95=None, passed=True, message="ok")
    assert gate_annotations([passed, gate], str(policy)) == [
        f"::error file={policy},line=3,title=audit gate failed%3A robust.accuracy.pgd@0.1 >= 0.5::"
        "value 0.4 < 0.5%0A50%25"]


def test_the_card_is_model_index_yaml_and_merges_into_a_model_card(logged, tmp_path):
    from huggingface_hub.repocard_data import model_index_to_eval_results

    result = invoke("card", logged["real"])
    assert result.exit_code == 0
    _, front, markdown = result.output.split("---\n", 2)
    metadata = yaml.safe_load(front)
    name, results = model_index_to_eval_results(metadata["model-index"])  # raises on a missing required field
    assert name == "bc"
    metrics = logged["document"]["metrics"]
    by_name = {r.metric_name: r for r in results}
    worst = by_name["robust.accuracy.worst@0.1"]
    assert worst.metric_value == pytest.approx(metrics["robust.accuracy.worst@0.1"]["value"])
    assert worst.metric_args == {"attack": "worst", "eps": 0.1} and worst.task_type == "tabular-classification"
    assert worst.dataset_type == "breast-cancer" and by_name["clean.accuracy"].metric_type == "accuracy"
    assert "Robust accuracy, worst case" in markdown and "Can attention be trusted" in markdown
    assert "](" in markdown and "report.html)" in markdown

    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: mit\ntags:\n- security\n---\n# My detector\n\nIt detects things.\n")
    for _ in range(2):  # merging again replaces this tool's section and results, nothing else
        assert invoke("card", logged["real"], "--into", readme).exit_code == 0
    merged = readme.read_text(encoding="utf-8")
    _, front, body = merged.split("---\n", 2)
    metadata = yaml.safe_load(front)
    assert metadata["license"] == "mit" and metadata["tags"] == ["security"]
    assert len(model_index_to_eval_results(metadata["model-index"])[1]) == len(results)
    assert body.startswith("# My detector\n\nIt detects things.\n") and body.count("attention-audit:start") == 1


def test_train_logs_its_run_and_mlflow_without_the_extra_is_exit_2(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "m.safetensors"
    result = invoke("train", "--data", "breast-cancer", "--epochs", "1", "--out", out, "--quiet", "--mlflow", uri)
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.output.split("mlflow: run ", 1)[1].split()[0])
    assert client.get_experiment(run.info.experiment_id).name == "m"
    assert run.data.params["detector"] == "tabular" and run.data.params["training.epochs"] == "1"
    assert 0 <= run.data.metrics["test_accuracy"] <= 1 and run.data.metrics["epochs_run"] == 1
    assert run.data.tags["kind"] == "train" and run.data.params["defense.name"] == "none"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["m.safetensors"]

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    result = invoke("run", "--model", out, "--out", tmp_path / "a", "--mlflow")
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: --mlflow needs the mlflow extra: pip install 'attention-audit[mlflow]'"]
    assert not (tmp_path / "a").exists()  # refused before the audit


def test_the_command_line_loads_neither_mlflow_nor_huggingface_hub():
    code = ("import sys; from auditor.cli import main\n"
            "for command in (['run'], ['train'], ['compare'], ['card']):\n"
            "    try: main([*command, '--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted({'mlflow', 'huggingface_hub', 'torch'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "[]", done.stderr[-2000:]
