"""``audit run`` from options to files: validate everything first, audit, then write."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from attacks.category_pgd import CategoryPGD
from auditor.run.pipeline import SAVED_FILES, run_audit, saved_layouts
from auditor.run.config import DEFAULT_TOKEN_BUDGET, AuditConfig
from auditor.run.foreign_subject import ForeignOptions, is_foreign, load_foreign_subject
from auditor.gates import (GateResult, Policy, check_baseline, default_policy, evaluate, evaluate_regression,
                           exit_code, load_baseline, load_policy, regression_tolerances, validate_policy)
from auditor.stages.localisation import declare_relevant
from auditor.stages.masking import sparse_attention_note
from auditor.metrics import MetricValue
from auditor.report.outputs import PendingFiles, append_step_summary, check_out_folder, signals_held, write_atomically
from auditor.report.document import finite_metrics, render_json, render_junit, render_summary, results_document
from auditor.report.html import render_document
from auditor.report.findings import AuditFindings, report_section
from auditor.run.shard import Shard
from auditor.stages.order import planned_metrics
from auditor.run.subject import Subject, load_subject, settle
from auditor.run.tensorfile import create
from detectors.categorical import categorical_facts
from detectors.devices import resolve_device
from detectors.errors import BadInputError


# what results.json's model section says about a python: model's attention capture (auditor.run.foreign_subject)
FOREIGN_FACTS = ("attention_modules", "ignored_attention_modules", "attention_path_max_abs_logit_diff")


@dataclass
class Outcome:
    """An audit's verdict and its files (name -> bytes), written or not yet; ``report_path`` once written."""

    exit_code: int
    gates: list[GateResult]
    document: dict
    files: dict[str, bytes]
    metrics: dict[str, MetricValue]
    report_path: Path | None = None


def audit_to_folder(*, model_path: str, data_spec: str | None, label_column: str, policy_path: Path | None,
                    out_dir: Path, eps: tuple[float, ...], attacks: tuple[str, ...], max_samples: int, seed: int,
                    eps_l2: tuple[float, ...] | None = None,
                    device: str, batch_size: int, save_adversarial: bool, save_explanations: bool,
                    quiet: bool, foreign: ForeignOptions | None = None, profile: str = "quick",
                    masking_checks: bool | None = None, frozen_features: tuple[str, ...] | None = None,
                    on_out_of_range: str = "clip", on_unseen_category: str = "map", on_long_text: str = "truncate",
                    mutable_categorical: tuple[str, ...] = (), category_budget: int = 1,
                    max_memory_gb: float | None = None, attack_params: tuple = (),
                    target_class: str | None = None, hijack_features: tuple[str, ...] = (),
                    explainers: tuple[str, ...] = (), faithfulness_metrics: tuple[str, ...] = (),
                    removal_baseline: str | None = None, baseline_path: Path | None = None,
                    relevant_features: tuple[str, ...] = (), shard: Shard | None = None,
                    text_column: str = "text", token_budget: tuple[int, ...] = DEFAULT_TOKEN_BUDGET,
                    substitutions: str | None = None, protect: str | None = None) -> Outcome | None:
    """Validate, audit, write. Under torchrun (``shard``, default from the environment) every rank audits
    its rows; rank 0 writes the outputs and returns the outcome, the other ranks return None. A failure
    on any rank before the audit is raised on every rank, so none waits for the others."""
    shard = shard or Shard.from_environment()
    if shard.distributed:
        target = resolve_device(device)
        if target.type == "cuda":
            target = torch.device("cuda", shard.local_rank)
            torch.cuda.set_device(target)
            device = str(target)
        shard.start(target)
    problem = None
    try:
        if shard.is_main:  # the one process that writes there
            check_out_folder(out_dir)
        config, policy, planned, subject, baseline, tolerances = _prepare(
            model_path=model_path, data_spec=data_spec, label_column=label_column, policy_path=policy_path,
            eps=eps, eps_l2=eps_l2, attacks=attacks, max_samples=max_samples, seed=seed, device=device,
            batch_size=batch_size, save_adversarial=save_adversarial, save_explanations=save_explanations,
            foreign=foreign, profile=profile, masking_checks=masking_checks, frozen_features=frozen_features,
            on_out_of_range=on_out_of_range, on_unseen_category=on_unseen_category, on_long_text=on_long_text,
            mutable_categorical=tuple(mutable_categorical), category_budget=category_budget,
            max_memory_gb=max_memory_gb, attack_params=attack_params, target_class=target_class,
            hijack_features=hijack_features, explainers=explainers, faithfulness_metrics=faithfulness_metrics,
            removal_baseline=removal_baseline, baseline_path=baseline_path, relevant_features=relevant_features,
            text_column=text_column, token_budget=token_budget, substitutions=substitutions, protect=protect)
    except Exception as error:  # raised again on this rank by agree(), and as a failure on the others
        problem = error
    shard.agree(problem)
    with PendingFiles(out_dir) as saved:  # rank 0's: renamed into place with the other outputs, else removed
        save_to = _lay_out_saved(saved, subject, config, shard)
        result = run_audit(subject, config, progress=not quiet and shard.is_main, shard=shard, save_to=save_to)
        if result is None:
            return None
        return _write(result, subject, config, policy, out_dir=out_dir, saved=saved, baseline=baseline,
                      tolerances=tolerances)


def _lay_out_saved(saved: PendingFiles, subject: Subject, config: AuditConfig, shard: Shard) -> dict[str, Path]:
    """Before the audit, rank 0 creates the files --save-adversarial/--save-explanations fill (header, full
    size) under temporary names; every rank gets their paths and writes its own rows into them."""
    layouts = saved_layouts(config, subject.data)
    if not layouts:
        return {}
    problem, paths = None, {}
    if shard.is_main:
        try:
            for group, layout in layouts.items():
                paths[group] = saved.reserve(SAVED_FILES[group])
                create(paths[group], layout)
        except Exception as error:  # raised on every rank by agree(), so none starts auditing
            problem = error
    shard.agree(problem)
    return shard.share(paths)


def _prepare(*, model_path, data_spec, label_column, policy_path, eps, eps_l2, attacks, max_samples, seed, device,
             batch_size, save_adversarial, save_explanations, foreign, profile, masking_checks, frozen_features,
             on_out_of_range, on_long_text,
             max_memory_gb, attack_params, target_class, hijack_features, explainers, faithfulness_metrics,
             removal_baseline, baseline_path, relevant_features=(), text_column="text",
             token_budget=DEFAULT_TOKEN_BUDGET, substitutions=None, protect=None, on_unseen_category="map",
             mutable_categorical=(), category_budget=1):
    config = AuditConfig.from_profile(profile, attacks=attacks or None, explainers=explainers or None,
                                      masking_checks=masking_checks,
                                      max_samples=max_samples, eps=eps, eps_l2=eps_l2, seed=seed, device=device,
                                      batch_size=batch_size, save_adversarial=save_adversarial,
                                      save_explanations=save_explanations,
                                      frozen_features=None if frozen_features is None else tuple(frozen_features),
                                      max_memory_gb=max_memory_gb, attack_params=tuple(attack_params),
                                      target_class=target_class, hijack_features=tuple(hijack_features),
                                      faithfulness_metrics=tuple(faithfulness_metrics) or None,
                                      removal_baseline=removal_baseline, token_budget=tuple(token_budget),
                                      substitutions=None if substitutions is None else str(substitutions),
                                      protect=None if protect is None else str(protect))
    loaded_policy = load_policy(policy_path) if policy_path is not None else None
    if is_foreign(model_path):
        if mutable_categorical:
            raise BadInputError("--mutable-categorical applies to checkpoints written by audit train: a python: or "
                                "hf: model has no category embeddings to search, so its categorical columns stay "
                                "frozen")
        subject = load_foreign_subject(model_path, foreign or ForeignOptions(), data_spec=data_spec,
                                       label_column=label_column, max_samples=config.max_samples, seed=seed,
                                       device_name=device, frozen_features=config.frozen_features,
                                       text_column=text_column, on_long_text=on_long_text)
    else:
        if foreign is not None and foreign != ForeignOptions():
            raise BadInputError("--weights, --input-kind, --patch-size, --cls-token, --attention-module, "
                                "--logits-key, --bounds and --bounds-file apply to python: models only")
        subject = load_subject(model_path, data_spec=data_spec, label_column=label_column,
                               max_samples=config.max_samples, seed=seed, device_name=device,
                               frozen_features=config.frozen_features, on_out_of_range=on_out_of_range,
                               text_column=text_column, on_unseen_category=on_unseen_category,
                               on_long_text=on_long_text, mutable_categorical=tuple(mutable_categorical), category_budget=category_budget)
        config = with_category_search(config, subject)
    return bind(subject, config, loaded_policy, baseline_path=baseline_path, relevant_features=relevant_features)


def bind(subject: Subject, config: AuditConfig, loaded_policy: Policy | None, *, baseline_path: Path | None = None,
         relevant_features: tuple[str, ...] = ()):
    """The configuration bound to the loaded subject (frozen features, target class, L2 grid, determinism), the
    names it plans, the policy that judges them (``loaded_policy`` or the default one, validated against the
    plan) and the baseline to regress against: what ``audit run`` and :func:`auditor.api.audit` both do."""
    config = config.for_kind(subject.kind.name)
    if subject.kind.name == "text":
        subject.token_domain = token_domain_of(subject.tokenizer, config.substitutions, protect=config.protect,
                                               rationale=subject.data.relevant_mask)
    config = replace(config, frozen_features=subject.frozen_features,
                     removal_baseline=config.removal_baseline or subject.kind.removal_baselines[0])
    if relevant_features:
        subject.data = declare_relevant(subject.data, tuple(relevant_features))
    # bound to the model first: the default L2 grid scales with the number of inputs the attacker may change
    config = config.bind(subject.data.feature_names, subject.data.class_names,
                         n_mutable=int(subject.domain.mutable.sum()) if subject.domain is not None else None)
    subject, config = settle(subject, config)
    planned = planned_metrics(config, binary=True)
    fallback = default_policy(planned, eps_grid=config.eps, attacks=config.attacks, eps_l2=config.grid("l2"),
                              token_budget=config.token_budget if config.text else ())
    policy = loaded_policy or fallback
    if not policy.gates:  # a regression-only file: its [regression] beside the default gates, never no gate
        policy = replace(fallback, source=f"{policy.source} with the default gates", regression=policy.regression)
    validate_policy(policy, planned, eps_grid=config.eps, attacks=config.attacks, eps_l2=config.grid("l2"),
                    token_budget=config.grid("tokens"))
    baseline = tolerances = None
    if baseline_path is not None:
        baseline = load_baseline(baseline_path)
        tolerances = regression_tolerances(policy, fallback)
        check_baseline(baseline, tolerances)
    return config, policy, planned, subject, baseline, tolerances


def with_category_search(config: AuditConfig, subject: Subject) -> AuditConfig:
    """Where the attacker controls categorical columns (``--mutable-categorical``), ``pgd-categorical`` runs
    beside the profile's attacks with pgd's settings, so its worst case covers pgd's numeric-only one."""
    rule = subject.domain.categories if subject.domain is not None else None
    if rule is None or not rule.any_mutable or CategoryPGD.name in config.attacks:
        return config
    inherited = tuple((CategoryPGD.name, key, value) for key, value in config.attack_settings("pgd").items()
                      if key != "target_class")
    return replace(config, attacks=(*config.attacks, CategoryPGD.name),
                   attack_params=(*inherited, *config.attack_params))


def token_domain_of(tokenizer, substitutions: str | None, *, protect: str | None = None, rationale=None):
    """A text model's :class:`attacks.TokenDomain`: its special tokens frozen, restricted to the ``--substitutions``
    table where one is given, the tokeniser's words for the word edits, and the protected positions: the data's
    ``rationale`` tokens ((N, T) bool, or None) and the words of ``--protect`` (a bad file is a BadInputError
    naming it)."""
    from attacks import TokenDomain
    from attacks.text_domain import load_protected_words, load_substitutions
    from attacks.text_edits import WordCodec

    if substitutions is not None:
        domain = load_substitutions(substitutions, tokenizer.vocab(), tokenizer.special_ids)
    else:
        domain = TokenDomain(vocab_size=tokenizer.vocab_size, special_ids=tuple(sorted(tokenizer.special_ids)))
    words = load_protected_words(protect) if protect is not None else ()
    return domain.with_protection(codec=WordCodec(tokenizer), words=words,
                                  protected=None if rationale is None else torch.as_tensor(rationale, dtype=torch.bool))


def _write(result, subject, config: AuditConfig, policy, *, out_dir: Path,
           saved: PendingFiles, baseline=None, tolerances=None) -> Outcome:
    outcome = outputs(result, subject, config, policy, baseline=baseline, tolerances=tolerances)
    with signals_held():  # every output of the run or none of them
        write_atomically(out_dir, outcome.files)
        saved.commit()
    append_step_summary(outcome.files["summary.md"])
    outcome.report_path = out_dir / "report.html"
    return outcome


def outputs(result: AuditFindings, subject: Subject, config: AuditConfig, policy: Policy, *, baseline=None,
            tolerances=None) -> Outcome:
    """The gates' verdict and every file ``audit run`` writes, rendered from the audit's findings."""
    skipped = dict(result.skipped)
    metrics = finite_metrics(result.metrics, skipped)
    gates = evaluate(policy, metrics, skipped, n_rows=int(result.n_samples))
    if baseline is not None:
        gates += evaluate_regression(tolerances, baseline, metrics, skipped)
    config_doc = config.to_dict()
    config_doc["device"] = str(subject.device)
    config_doc["memory"] = result.memory
    model_doc = {k: subject.model_info[k] for k in ("path", "sha256", "detector", "defense", "data set")}
    model_doc["attention"] = subject.model_info.get("attention")  # None: a python: model's own attention
    model_doc["defense_settings"] = subject.model_info.get("defense_settings", {})
    model_doc["training"] = training_facts(subject.model_info.get("training", {}))
    model_doc["deterministic"] = bool(subject.deterministic)
    model_doc["determinism"] = subject.determinism.to_dict()
    model_doc.update({key: subject.model_info[key] for key in FOREIGN_FACTS if key in subject.model_info})
    document = results_document(
        model=model_doc,
        data={"name": subject.data.name, "split": subject.data.split, "n_samples": int(result.n_samples),
              "out_of_range": subject.data.out_of_range(), "input_kind": subject.kind.name,
              **categorical_facts(subject.data),
              **({"truncated": subject.data.truncated()} if subject.data.lengths is not None else {})},
        config=config_doc, metrics=metrics, skipped=skipped, gates=gates, policy=policy, timing=result.timing,
        masking=result.masking, check_metrics=check_metrics(metrics),
        curves={"robustness": {attack: [list(point) for point in points]
                               for attack, points in result.robustness_curves.items()},
                "removal": result.removal_curves},
        baseline={"source": baseline.source, "tolerances": tolerances} if baseline is not None else None,
    )
    document["report"] = report_section(result, metric_order=list(metrics), attacks=list(config.attacks),
                                        explainers=list(config.explainers), class_names=subject.data.class_names,
                                        feature_names=subject.data.feature_names,
                                        row_index=[int(i) for i in subject.data.row_index])
    note = sparse_attention_note(model_doc["attention"])
    if note is not None:
        document["masking_note"] = note
    files = {
        "results.json": render_json(document),
        "report.html": render_document(document),
        "junit.xml": render_junit(gates),
        "summary.md": render_summary(document),
    }
    return Outcome(exit_code=exit_code(gates), gates=gates, document=document, files=files, metrics=metrics)


def check_metrics(metrics: dict) -> dict:
    """The masking and convergence verdicts that were computed, each with what a 1 means."""
    from auditor.stages.masking import METRIC_MEANING

    return {name: {"value": metrics[name].value, "meaning": meaning} for name, meaning in METRIC_MEANING.items()
            if name in metrics}


def training_facts(training: dict) -> dict:
    """What a comparison of checkpoints needs from the checkpoint's training record (no per-epoch history)."""
    config = training.get("config", {})
    facts = {key: training[key] for key in ("epochs_run", "best_epoch", "val_accuracy", "test_accuracy", "seconds",
                                            "device", "processes") if key in training}
    facts.update({key: config[key] for key in ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed")
                  if key in config})
    return facts
