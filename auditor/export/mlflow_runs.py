"""Audits and trainings as MLflow runs, and audits read back from them (``audit run --mlflow``, ``audit train
--mlflow``, ``audit compare mlflow:RUN_ID``).

An audit is one run: its parameters (what was configured and on which model and data), every metric of
results.json with the ends of its 95% interval as metrics of their own (``NAME.lower95``, ``NAME.upper95``),
tags (verdict, exit code, tool version) and the audit's files as artifacts. MLflow refuses ``@`` and ``~`` in
a metric name, and this tool's names use both (``robust.accuracy.worst@0.1``,
``faithfulness.deletion_auc_diff.attention~random``): :func:`mlflow_key` writes ``@`` as ``:`` and ``~`` as
``/`` and any other character MLflow refuses (or ``:``, ``/`` and space themselves) as its hexadecimal code
between spaces, and :func:`metric_name` reads every key back to the name it came from.

MLflow is imported inside the functions: the ``mlflow`` extra is optional, and ``audit --help`` and
``import auditor`` load none of it. Nothing is sent anywhere but the tracking URI the user gave (or
``MLFLOW_TRACKING_URI``); without either, a SQLite file in the working directory, MLflow's own default.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path

from detectors.errors import BadInputError

DEFAULT_URI = "sqlite:///mlflow.db"
EXTRA = "mlflow"
BOUND_SUFFIXES = (".lower95", ".upper95")
RUN_PREFIX = "mlflow:"
RUN_FILES = ("results.json", "report.html", "junit.xml", "summary.md")
TRAINING_OUTCOMES = ("test_accuracy", "val_accuracy", "train_accuracy", "best_val_loss", "epochs_run", "best_epoch",
                     "seconds")

_SAFE = frozenset(string.ascii_letters + string.digits + "_-.")
_STAND_INS = {"@": ":", "~": "/"}
_READ_BACK = str.maketrans({v: k for k, v in _STAND_INS.items()})


def mlflow_key(name: str) -> str:
    """``name`` as a metric key MLflow accepts, read back by :func:`metric_name`."""
    return "".join(ch if ch in _SAFE else _STAND_INS.get(ch) or f" {ord(ch):x} " for ch in name)


def metric_name(key: str) -> str:
    """The metric name :func:`mlflow_key` wrote as ``key``: between two spaces stands a character's code."""
    parts = key.split(" ")
    if len(parts) % 2 == 0:
        raise ValueError(f"{key!r} is not a key written by mlflow_key (an unpaired space)")
    return "".join(chr(int(part, 16)) if i % 2 else part.translate(_READ_BACK) for i, part in enumerate(parts))


def read_metric_key(key: str) -> tuple[str, str]:
    """A logged key as (metric name, ``value``, ``lower95`` or ``upper95``)."""
    for suffix in BOUND_SUFFIXES:
        if key.endswith(suffix):
            return metric_name(key[: -len(suffix)]), suffix[1:]
    return metric_name(key), "value"


def tracking_uri(option: str | None) -> str:
    """``--mlflow URI``, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the working directory."""
    return option or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def audit_metrics(document: dict) -> dict[str, float]:
    """Every metric of results.json and the ends of its interval, under keys MLflow accepts."""
    metrics = {}
    for name, entry in document["metrics"].items():
        key = mlflow_key(name)
        metrics[key] = float(entry["value"])
        if entry.get("ci95"):
            for suffix, end in zip(BOUND_SUFFIXES, entry["ci95"]):
                metrics[key + suffix] = float(end)
    return metrics


def audit_params(document: dict) -> dict[str, str]:
    """What the audit was configured to do, on which model and data (the parameters of the run)."""
    config, model, data = document["config"], document["model"], document["data"]
    params = {
        "profile": config.get("profile"),
        "eps": _joined(config.get("eps")),
        "eps_l2": _joined(config.get("eps_l2")),
        "token_budget": _joined(config.get("token_budget")) if data.get("input_kind") == "text" else None,
        "attacks": _joined(config.get("attacks")),
        "attack_params": json.dumps(config.get("attack_params") or {}, sort_keys=True),
        "explainers": _joined(config.get("explainers")),
        "faithfulness_metrics": _joined(config.get("faithfulness_metrics")),
        "removal_baseline": config.get("removal_baseline"),
        "max_samples": config.get("max_samples"),
        "seed": config.get("seed"),
        "frozen_features": _joined(config.get("frozen_features")),
        "target_class": config.get("target_class"),
        "model.path": model.get("path"),
        "model.sha256": model.get("sha256"),
        "model.detector": model.get("detector"),
        "model.attention": model.get("attention"),
        "model.defense": model.get("defense"),
        "data": data.get("name"),
        "data.split": data.get("split"),
        "data.n_samples": data.get("n_samples"),
        "data.input_kind": data.get("input_kind"),
        "policy": document.get("policy", {}).get("source"),
    }
    return {key: str(value) for key, value in params.items() if value not in (None, "")}


def audit_tags(document: dict, exit_code: int) -> dict[str, str]:
    tool = document.get("tool", {})
    return {"verdict": "PASSED" if document["passed"] else "FAILED", "exit_code": str(exit_code),
            "tool.name": tool.get("name", "attention-audit"), "tool.version": str(tool.get("version", "unknown")),
            "kind": "audit"}


def experiment_name(model: str) -> str:
    """The experiment an audit or a training of ``model`` goes to unless told: the model's name (a
    checkpoint's file name without its suffix, an ``hf:`` folder's name, a ``python:`` factory's name)."""
    if model.startswith("python:"):
        return model.rsplit(":", 1)[-1] or model
    path = Path(model.removeprefix("hf:").rstrip("/"))
    return (path.stem if path.suffix == ".safetensors" else path.name) or model


class Tracking:
    """An opened tracking store and the experiment runs go to. Opened before an audit or a training starts,
    so a missing extra or a tracking URI MLflow cannot open is refused before any work is done."""

    def __init__(self, uri_option: str | None, experiment: str):
        self.uri = tracking_uri(uri_option)
        self.client, self._errors = _client(self.uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                self.experiment_id = self.client.create_experiment(experiment,
                                                                   artifact_location=_artifact_root(self.uri))
            elif found.lifecycle_stage != "active":
                raise BadInputError(f"MLflow experiment {experiment!r} at {self.uri} is deleted; restore it or "
                                    "name another with --mlflow-experiment")
            else:
                self.experiment_id = found.experiment_id
        except self._errors as error:
            raise BadInputError(f"cannot open MLflow tracking URI {self.uri!r}: {_message(error)}") from None

    def log(self, *, run_name: str, params: dict[str, str], metrics: dict[str, float], tags: dict[str, str],
            artifacts: dict[str, bytes] | None = None, artifact_files: tuple[Path, ...] = ()) -> str:
        """One finished run; its id. A failure on the way leaves the run marked FAILED."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
        try:
            now = get_current_time_millis()
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                                  params=[Param(k, v) for k, v in params.items()],
                                  tags=[RunTag(k, v) for k, v in tags.items()])
            with tempfile.TemporaryDirectory() as folder:
                for name, payload in (artifacts or {}).items():
                    (Path(folder) / name).write_bytes(payload)
                if artifacts:
                    self.client.log_artifacts(run_id, folder)
            for path in artifact_files:
                self.client.log_artifact(run_id, str(path))
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def log_audit(tracking: Tracking, files: dict[str, bytes], *, exit_code: int) -> str:
    """An audit's files (what ``audit run`` writes) as one run; its id."""
    document = json.loads(files["results.json"])
    return tracking.log(run_name=experiment_name(str(document["model"]["path"])), params=audit_params(document),
                        metrics=audit_metrics(document), tags=audit_tags(document, exit_code),
                        artifacts={name: files[name] for name in RUN_FILES if name in files})


def log_training(tracking: Tracking, checkpoint: Path) -> str:
    """A checkpoint ``audit train`` wrote as one run: the training's settings as parameters, its outcome
    (accuracies, epochs, seconds) as metrics, the checkpoint as the artifact."""
    from detectors.checkpoint import read_metadata

    metadata = read_metadata(checkpoint)
    training = dict(metadata.get("training", {}))
    settings = training.pop("config", {})
    outcome = {key: training.pop(key) for key in TRAINING_OUTCOMES if isinstance(training.get(key), (int, float))}
    detector = metadata.get("detector", {})
    params = {"detector": detector.get("kind"), "data": metadata.get("data", {}).get("name"),
              "frozen_features": _joined(metadata.get("frozen_features")),
              **{f"hparams.{k}": v for k, v in detector.get("hparams", {}).items()},
              **{f"defense.{k}": v for k, v in metadata.get("defense", {}).items()},
              **{f"training.{k}": v for k, v in {**training, **settings}.items() if not isinstance(v, (dict, list))}}
    tool = metadata.get("tool", {})
    tags = {"kind": "train", "tool.name": tool.get("name", "attention-audit"),
            "tool.version": str(tool.get("version", "unknown"))}
    return tracking.log(run_name=checkpoint.stem, params={k: str(v) for k, v in params.items() if v not in (None, "")},
                        metrics={k: float(v) for k, v in outcome.items()}, tags=tags, artifact_files=(checkpoint,))


def download_results(spec: str, uri_option: str | None, into: Path) -> Path:
    """``mlflow:RUN_ID``'s results.json, downloaded into ``into``/RUN_ID/ (that folder returned): ``audit compare``
    keeps it in OUT/runs/ beside the audits of ``--model``."""
    run_id = spec[len(RUN_PREFIX):]
    uri = tracking_uri(uri_option)
    client, errors = _client(uri)
    folder = into / run_id
    folder.mkdir(parents=True, exist_ok=True)
    try:
        client.get_run(run_id)
        from mlflow.artifacts import download_artifacts

        download_artifacts(run_id=run_id, artifact_path="results.json", dst_path=str(folder), tracking_uri=uri)
    except errors as error:
        raise BadInputError(f"{spec}: no audit run with results.json at MLflow tracking URI {uri!r} "
                            f"({_message(error)}); pass --mlflow URI or set MLFLOW_TRACKING_URI") from None
    return folder


def _client(uri: str):
    """MLflow's client for ``uri`` and the exceptions that mean the store or run cannot be read."""
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise BadInputError(f"--mlflow needs the {EXTRA} extra: pip install 'attention-audit[{EXTRA}]'") from None
    try:
        return MlflowClient(tracking_uri=uri), (MlflowException, OSError)
    except MlflowException as error:
        raise BadInputError(f"cannot open MLflow tracking URI {uri!r}: {_message(error)}") from None


def _artifact_root(uri: str) -> str | None:
    """Beside a SQLite store's file, so the store and its artifacts stay together (MLflow's default is a
    folder in the working directory); MLflow's own choice for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return None
    return (Path(uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


def _message(error: Exception) -> str:
    return str(getattr(error, "message", None) or error).strip().splitlines()[0]


def _joined(values) -> str | None:
    if values is None:
        return None
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
