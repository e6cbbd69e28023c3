"""The ``audit`` command line.

Loading it, and every ``--help``, imports no torch: each command imports what it runs inside its body.

Exit codes, decided by its group (:class:`auditor.cli_exits.AuditGroup`) and nowhere else: 0 every gate passed,
1 a gate failed, 2 bad usage or bad input (one line, no traceback), 3 an internal error, 130 / 143 stopped by
SIGINT / SIGTERM (no outputs written).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from auditor.cli_exits import EXIT_INTERNAL, AuditGroup, Stopped
from auditor.cli_options import audit_options, bounds_pair, frozen_list, mlflow_options, mlflow_uri_option, name_list
from auditor.training.config import DEFENSES, DefenseConfig, TrainConfig
from detectors.errors import BadInputError
from detectors.kinds import ATTENTION_VARIANTS, DETECTOR_KINDS, INPUT_KIND_NAMES

TRAIN_DEFAULTS = TrainConfig()
DEFENSE_DEFAULTS = DefenseConfig()

@click.group(cls=AuditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attention-audit", prog_name="audit")
def cli() -> None:
    """Audit attention-based detectors: accuracy, adversarial robustness, attention faithfulness."""


@cli.command(context_settings={"show_default": True})
@click.option("--detector", type=click.Choice(sorted(DETECTOR_KINDS)), default="tabular",
              help="tabular (rows), vit (images), sequence (event sequences), text (messages)")
@click.option("--data", "data_spec", required=True,
              help="breast-cancer, flows[:N], digits, sequences[:N], phishing[:N], a .csv, .npz or .jsonl file")
@click.option("--label-column", default="label", help="label column (CSV) or key (JSON Lines) of the data file")
@click.option("--text-column", default="text", help="--detector text: the column (CSV) or key (JSON Lines) holding "
              "the messages")
@click.option("--positive-class", default=None, help="the class the detector exists to catch")
@click.option("--attention", type=click.Choice(ATTENTION_VARIANTS), default="softmax",
              help="attention function: scaled dot-product with softmax, sparsemax or 1.5-entmax, or additive "
                   "(Bahdanau) scores with softmax")
@click.option("--defense", type=click.Choice(DEFENSES), default="none")
@click.option("--eps", "defense_eps", type=click.FloatRange(0, 1, min_open=True), default=None,
              help=f"defense budget (pgd-at, trades, attention-consistency) [default: {DEFENSE_DEFAULTS.eps}]")
@click.option("--steps", "defense_steps", type=click.IntRange(min=1), default=None,
              help=f"attack steps per training batch [default: {DEFENSE_DEFAULTS.steps}]")
@click.option("--step-size", "defense_step_size", type=click.FloatRange(0, min_open=True), default=None,
              help=f"attack step as a fraction of eps [default: {DEFENSE_DEFAULTS.step_size}]")
@click.option("--beta", type=click.FloatRange(min=0), default=None,
              help=f"TRADES weight of the robustness term [default: {DEFENSE_DEFAULTS.beta}]")
@click.option("--lambda-attention", type=click.FloatRange(min=0), default=None,
              help=f"weight of the attention JSD penalty [default: {DEFENSE_DEFAULTS.lambda_attention}]")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="[default: 60, or 20 from 4,000 training rows; text 20]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="global batch size, split across processes [default: 64, or 256 from 4,000 training rows]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=TRAIN_DEFAULTS.lr)
@click.option("--patience", type=click.IntRange(min=1), default=TRAIN_DEFAULTS.patience,
              help="stop after this many epochs without a better validation loss")
@click.option("--seed", type=int, default=0)
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the training forward")
@click.option("--resume", is_flag=True, help="continue from OUT.resume.pt, written beside --out every epoch")
@click.option("--nproc", type=click.IntRange(min=1), default=1,
              help="data-parallel processes, launched with torchrun (gloo on CPU, NCCL on GPU)")
@click.option("--frozen-features", callback=name_list, default="",
              help="features an attacker may not change, comma-separated: recorded in the checkpoint (audit run "
                   "freezes them unless told otherwise) and left untouched by the defenses' attacks")
@click.option("--categorical-columns", callback=name_list, default="",
              help="CSV columns read as categories although they hold numbers (integer codes), comma-separated; a "
                   "column that is not all numbers is categorical anyway")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="no progress bar")
@mlflow_options
@click.pass_context
def train(ctx, detector, data_spec, label_column, text_column, positive_class, attention, defense, defense_eps,
          defense_steps, defense_step_size, beta, lambda_attention, epochs, batch_size, lr, patience, seed, device,
          use_compile, resume, nproc, frozen_features, categorical_columns, out_path, quiet, mlflow_uri,
          mlflow_experiment) -> None:
    """Train a detector and write a .safetensors checkpoint."""
    from auditor.training.job import train_and_save

    defense_config = DefenseConfig.from_options(defense, eps=defense_eps, steps=defense_steps,
                                                step_size=defense_step_size, beta=beta,
                                                lambda_attention=lambda_attention)
    main = int(os.environ.get("RANK", "0")) == 0
    tracking = _tracking(mlflow_uri, mlflow_experiment, str(out_path)) if main else None
    if nproc > 1:
        sys.exit(_launch_torchrun(ctx, nproc, command=("train",)))
    summary = train_and_save(
        detector=detector, data_spec=data_spec, label_column=label_column, positive_class=positive_class,
        defense=defense_config, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
        device=device, out_path=out_path, compile=use_compile, resume=resume, progress=not quiet,
        frozen_features=frozen_features, attention=attention, text_column=text_column,
        categorical_columns=categorical_columns,
    )
    if main:
        click.echo(f"wrote {out_path}: test accuracy {summary['test_accuracy']:.4f} "
                   f"(validation {summary['val_accuracy']:.4f}, {summary['epochs_run']} epochs, "
                   f"{summary['seconds']:.1f} s, defense {defense}, attention {attention})")
    if tracking is not None:
        from auditor.export.mlflow_runs import log_training

        click.echo(f"mlflow: run {log_training(tracking, out_path)} at {tracking.uri}")


def _launch_torchrun(ctx: click.Context, nproc: int, *, command: tuple[str, ...]) -> int:
    """Re-run this command under ``torchrun --standalone`` with the same options (all but --nproc); the exit
    code is rank 0's (torchrun itself answers 1 for any failed process), passed back through a file (see
    :func:`main`); without the file (a rank died before rank 0 could write it) it is torchrun's."""
    import subprocess
    import tempfile

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BadInputError("--nproc launches torchrun itself; under torchrun leave it out")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "auditor", *command, *_command_line(ctx, skip=("nproc",))]
    with tempfile.TemporaryDirectory() as folder:
        code_file = Path(folder) / "exit-code"
        code = subprocess.call(command, env={**os.environ, EXIT_CODE_FILE: str(code_file)})
        return int(code_file.read_text()) if code_file.is_file() else code


EXIT_CODE_FILE = "AUDIT_EXIT_CODE_FILE"


def _command_line(ctx: click.Context, *, skip: tuple[str, ...]) -> list[str]:
    """The options of ``ctx`` as a command line again (values after their callbacks, written back)."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in skip or value is None or not isinstance(param, click.Option):
            continue
        flag = param.opts[0]
        if param.is_flag:
            if param.secondary_opts:
                args.append(flag if value else param.secondary_opts[0])
            elif value:
                args.append(flag)
        elif param.multiple:
            for item in value:
                args += [flag, f"{item[0]}.{item[1]}={item[2]}" if isinstance(item, tuple) else str(item)]
        elif isinstance(value, tuple):
            if value:
                args += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
            elif param.callback is frozen_list:  # given as `none`, which is not the default
                args += [flag, "none"]
        else:
            args += [flag, str(value)]
    return args


@cli.command()
@click.option("--model", "model_path", required=True,
              help="a .safetensors checkpoint written by audit train, python:PATH_OR_MODULE:FACTORY, or hf:DIR "
                   "(a Hugging Face classifier saved with save_pretrained)")
@click.option("--data", "data_spec", default=None, help="rows to audit (default: the checkpoint's test split)")
@click.option("--label-column", default="label", show_default=True)
@click.option("--text-column", default="text", show_default=True,
              help="text models: the column (CSV) or key (JSON Lines) holding each message")
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="TOML policy file with a [gates] table (default: the built-in policy)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--weights", default=None, help="python: models: a state dict (.safetensors, or torch.save'd tensors)")
@click.option("--input-kind", type=click.Choice(INPUT_KIND_NAMES), default=None,
              help="python: models: how tokens map to inputs (features, patches, time steps)")
@click.option("--patch-size", type=click.IntRange(min=1), default=None, help="python: image models: patch side")
@click.option("--cls-token", type=click.Choice(["first", "none"]), default="first", show_default=True,
              help="python: models: token 0 is CLS, or none (mean-pooled)")
@click.option("--attention-module", "attention_modules", multiple=True,
              help="python: models: a submodule whose output holds attention weights (repeatable)")
@click.option("--logits-key", default=None, help="python: models returning a dict or tuple: where the logits are")
@click.option("--bounds", callback=bounds_pair, default=None,
              help="python: models: LO,HI of every input (default: each feature's min and max over the data)")
@click.option("--bounds-file", default=None, help="python: models: JSON {\"lo\": [...], \"hi\": [...]}")
@click.option("--positive-class", default=None, help="python: and hf: models: the class to catch")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="shard the audit over this many processes, launched with torchrun (gloo on CPU, NCCL on GPU)")
@click.option("--baseline", "baseline_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="results.json of an earlier run: add regression gates (the policy's [regression] table, "
                   "else 0.02 on every gated metric)")
@click.option("--json", "as_json", is_flag=True, help="print results.json to stdout and nothing else")
@click.option("--relevant-features", callback=name_list, default="",
              help="the truly relevant features (columns of a CSV; for sequences a feature at every time step), "
                   "so localisation.precision_at_k runs on your data")
@audit_options
@mlflow_options
@click.pass_context
def run(ctx, model_path, data_spec, label_column, text_column, policy_path, out_dir, weights, input_kind, patch_size, cls_token,
        attention_modules, logits_key, bounds, bounds_file, positive_class, nproc, baseline_path, as_json,
        relevant_features, mlflow_uri, mlflow_experiment, **options) -> None:
    """Audit a checkpoint or your own model; exit 0 when every gate passes, 1 when one fails.

    Under torchrun (or with --nproc) each process audits its shard of the rows and rank 0 writes the
    outputs; every process exits with rank 0's code."""
    from auditor.run.runner import audit_to_folder
    from auditor.run.foreign_subject import ForeignOptions
    from auditor.run.shard import Shard

    shard = Shard.from_environment()
    # opened before the audit, so a missing extra or a bad URI costs no audit; under torchrun by rank 0 afterwards
    tracking = _tracking(mlflow_uri, mlflow_experiment, model_path) if not shard.distributed else None
    if nproc > 1:
        sys.exit(_launch_torchrun(ctx, nproc, command=("run",)))
    foreign = ForeignOptions(weights=weights, input_kind=input_kind, patch_size=patch_size, cls_token=cls_token,
                             attention_modules=tuple(attention_modules), logits_key=logits_key, bounds=bounds,
                             bounds_file=bounds_file, positive_class=positive_class)

    def report(outcome) -> None:
        if as_json:
            from auditor.report.document import render_json

            click.echo(render_json(outcome.document).decode(), nl=False)
            _print_outcome(outcome, quiet=True, err=True)
        else:
            _print_outcome(outcome, quiet=options["quiet"])
        if mlflow_uri is not None:
            from auditor.export.mlflow_runs import log_audit

            target = tracking or _tracking(mlflow_uri, mlflow_experiment, model_path)
            try:
                run_id = log_audit(target, outcome.files, exit_code=outcome.exit_code)
            except Exception as error:  # the verdict is written and stands: a store that fails now does not change it
                why = (str(error).strip().splitlines() or [type(error).__name__])[0]
                click.echo(f"warning: the audit's outputs are written, but logging it to MLflow at {target.uri} "
                           f"failed: {why}", err=True)
            else:
                if not options["quiet"]:
                    click.echo(f"mlflow: run {run_id} at {target.uri}", err=as_json)

    if not shard.distributed:
        outcome = audit_to_folder(model_path=model_path, data_spec=data_spec, label_column=label_column,
                                  policy_path=policy_path, out_dir=out_dir, foreign=foreign, shard=shard,
                                  baseline_path=baseline_path, relevant_features=relevant_features,
                                  text_column=text_column, **options)
        report(outcome)
        sys.exit(outcome.exit_code)
    code, problem = EXIT_INTERNAL, None
    try:
        outcome = audit_to_folder(model_path=model_path, data_spec=data_spec, label_column=label_column,
                                  policy_path=policy_path, out_dir=out_dir, foreign=foreign, shard=shard,
                                  baseline_path=baseline_path, relevant_features=relevant_features,
                                  text_column=text_column, **options)
        if outcome is not None:
            report(outcome)
            code = outcome.exit_code
    except BadInputError as error:
        code, problem = 2, error
    except Exception as error:  # reported below by AuditGroup, after every rank knows the code
        problem = error
    try:
        code = shard.broadcast_code(code)
    finally:
        shard.close()
    if problem is not None and shard.is_main:
        raise problem
    sys.exit(code)


@cli.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", type=click.IntRange(min=1), default=TRAIN_DEFAULTS.epochs, show_default=True)
@audit_options
def demo(out_dir, epochs, **options) -> None:
    """Train the tabular detector on breast-cancer, audit it, write the report (exit 0 once written)."""
    from auditor.run.runner import audit_to_folder
    from auditor.training.job import train_and_save

    model_path = out_dir / "model.safetensors"
    started = time.perf_counter()
    summary = train_and_save(detector="tabular", data_spec="breast-cancer", label_column="label",
                             positive_class=None, epochs=epochs,
                             lr=TRAIN_DEFAULTS.lr,
                             patience=TRAIN_DEFAULTS.patience, seed=options["seed"], device=options["device"], out_path=model_path,
                             progress=not options["quiet"])
    if not options["quiet"]:
        click.echo(f"trained {model_path} in {summary['seconds']:.1f} s: test accuracy {summary['test_accuracy']:.4f}")
    outcome = audit_to_folder(model_path=str(model_path), data_spec=None, label_column="label", policy_path=None,
                              out_dir=out_dir, **options)
    _print_outcome(outcome, quiet=options["quiet"])
    if not options["quiet"]:
        click.echo(f"demo finished in {time.perf_counter() - started:.1f} s")


@cli.command(context_settings={"show_default": True})
@click.argument("folders", nargs=-1)
@click.option("--model", "models", multiple=True,
              help="a checkpoint to audit first (repeatable), each into OUT/runs/NAME with one shared configuration")
@click.option("--data", "data_spec", default=None, help="--model: rows to audit (default: each checkpoint's test split)")
@click.option("--label-column", default="label")
@click.option("--text-column", default="text", help="--model text checkpoints: the column or key holding each message")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--policy", "policy_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="evaluate this policy on every checkpoint [default: each audit's own gates]")
@click.option("--allow-mismatch", is_flag=True,
              help="compare audits whose data, eps grid, attacks, explainers or seed differ (listed in the outputs)")
@click.option("--robust-metric", default=None,
              help="the y axis of the clean-versus-robust scatter [default: pgd at the largest common eps]")
@click.option("--explainer", default="attention", help="whose deletion and insertion curves are overlaid")
@mlflow_uri_option("where mlflow:RUN_ID audits are read from: a tracking URI [default: MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db]")
@audit_options
def compare(folders, models, data_spec, label_column, text_column, out_dir, policy_path, allow_mismatch, robust_metric,
            explainer, mlflow_uri, **options) -> None:
    """Compare audits side by side: audit output folders, MLflow runs logged by audit run --mlflow
    (mlflow:RUN_ID), or checkpoints audited first with --model.

    Writes compare.html, compare.json and compare.md; exits 0 once they are written, whatever the verdicts,
    and 2 when the audits were configured differently (unless --allow-mismatch).
    """
    from auditor.report.compare import compare_audits, compare_files, load_audit, unique_names
    from auditor.export.mlflow_runs import RUN_PREFIX, download_results
    from auditor.gates import load_policy
    from auditor.report.outputs import append_step_summary, check_out_folder, write_atomically
    from auditor.run.runner import audit_to_folder

    if mlflow_uri and mlflow_uri.startswith(RUN_PREFIX):
        raise click.UsageError(f"--mlflow takes a tracking URI, got {mlflow_uri!r}: give the URI, or put --mlflow "
                               "after the runs")
    if len(folders) + len(models) < 2:
        raise click.UsageError("give at least two audit folders, or two --model checkpoints")
    check_out_folder(out_dir)
    folders = [download_results(f, mlflow_uri, out_dir / "runs") if f.startswith(RUN_PREFIX) else Path(f)
               for f in folders]
    policy = load_policy(policy_path) if policy_path is not None else None
    for path in folders:
        if not (path / "results.json").is_file() and not path.is_file():
            raise BadInputError(f"{str(path)!r} holds no results.json; pass audit output folders written by audit run")
    run_names = unique_names([Path(m) for m in models])
    sources = list(folders)
    for name, model in zip(run_names, models):
        run_dir = out_dir / "runs" / name
        outcome = audit_to_folder(model_path=model, data_spec=data_spec, label_column=label_column,
                                  policy_path=policy_path, out_dir=run_dir, text_column=text_column, **options)
        if not options["quiet"]:
            click.echo(f"audited {model} into {run_dir}: {'PASSED' if outcome.exit_code == 0 else 'FAILED'}",
                       err=True)
        sources.append(run_dir)
    names = unique_names([Path(p) for p in folders]) + run_names
    if len(set(names)) < len(names):
        names = [f"{i + 1}-{name}" for i, name in enumerate(names)]
    audits = [load_audit(Path(path), name) for path, name in zip(sources, names)]
    comparison = compare_audits(audits, allow_mismatch=allow_mismatch, policy=policy, robust_metric=robust_metric,
                                explainer=explainer)
    files = compare_files(comparison, allow_mismatch=allow_mismatch)
    write_atomically(out_dir, files)
    append_step_summary(files["compare.md"])
    passing = [v.name for v in comparison.verdicts if v.passed]
    click.echo(f"compared {len(audits)} audits into {out_dir / 'compare.html'}; passing the policy: "
               f"{', '.join(passing) or 'none'}")


@cli.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
def report_command(folder: Path) -> None:
    """Draw FOLDER/report.html again from FOLDER/results.json (an `audit run --out` folder), without the model."""
    from auditor.report.html import rerender

    click.echo(f"report: {rerender(folder)}")


@cli.command("card")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--into", "into", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="merge into this model card (a README.md, say an hf: folder's), keeping its metadata and text")
def card_command(folder: Path, into: Path | None) -> None:
    """Print a Hugging Face model-card section for an audit folder: model-index YAML front matter (task, data
    set, metrics with their attack and eps), then a Markdown summary (robustness, trust verdict, report link)."""
    from auditor.export.card import render_card

    text = render_card(folder, into=into)
    click.echo(f"card: merged into {into}" if into is not None else text, nl=into is not None)


@cli.command("attacks")
def list_attacks() -> None:
    """List the registered attacks with their norm, parameters and reference, and the profiles."""
    from attacks import ATTACKS, TEXT_ATTACKS, make_attack
    from auditor.run.config import PROFILES, TEXT_PROFILES

    def show(name, attack) -> None:
        params = ", ".join(f"{k}={v}" for k, v in attack.params().items()) or "single step of size eps"
        targeted = "; targeted mode (--target-class)" if attack.targetable else ""
        click.echo(f"{name:<18} {attack.norm:<5} {attack.reference}\n{'':<24}{params}{targeted}")

    def settings(chosen: dict) -> str:
        return ", ".join(f"{n}({', '.join(f'{k}={v}' for k, v in p.items())})" if p else n for n, p in chosen.items())

    for name in sorted(ATTACKS):
        show(name, make_attack(name))
    click.echo("\ntext (token ids; budgets: --token-budget tokens changed, embedding-pgd on --eps):")
    for name in sorted(TEXT_ATTACKS):
        show(name, make_attack(name))
    click.echo("")
    for profile, (chosen, checks) in PROFILES.items():
        click.echo(f"profile {profile}: {settings(chosen)}; masking checks {'on' if checks else 'off'}; "
                   f"on text: {settings(TEXT_PROFILES[profile])}")


def _tracking(mlflow_uri: str | None, experiment: str | None, model: str):
    """The MLflow store and experiment a run goes to (``--mlflow``), or None when not asked."""
    if mlflow_uri is None:
        return None
    from auditor.export.mlflow_runs import Tracking, experiment_name

    return Tracking(mlflow_uri, experiment or experiment_name(model))


def _print_outcome(outcome, *, quiet: bool, err: bool = False) -> None:
    """The verdict line; unless quiet, first a short table of the gates. On GitHub Actions, an annotation
    for each failed gate."""
    from auditor.export.annotations import gate_annotations, on_github_actions

    verdict = "PASSED" if outcome.exit_code == 0 else "FAILED"
    failed = [g for g in outcome.gates if not g.passed]
    if not quiet:
        width = max((len(g.name) for g in outcome.gates), default=10)
        for gate in outcome.gates:
            value = "—" if gate.value is None else f"{gate.value:.3g}"
            click.echo(f"  {'pass' if gate.passed else 'FAIL'}  {gate.name:<{width}}  value {value}", err=err)
        click.echo(f"report: {outcome.report_path}", err=err)
    click.echo(f"audit {verdict}: {len(outcome.gates) - len(failed)}/{len(outcome.gates)} gates passed", err=err)
    if on_github_actions():
        for command in gate_annotations(failed, outcome.document["policy"]["source"]):
            click.echo(command, err=err)


def _stop(signum: int, frame) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _stop)
    code_file = os.environ.get(EXIT_CODE_FILE)
    if not code_file or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        cli.main(args=argv, prog_name="audit")
        return
    # A rank started by --nproc: rank 0's exit code goes back to the launcher through the file, and every rank
    # itself ends with 0, so that torchrun neither stops the other ranks half-way (it does once one ends
    # non-zero: rank 0 could be killed before writing the code) nor prints its own failure report over ours.
    try:
        cli.main(args=argv, prog_name="audit")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(code_file).write_text(str(code))
    sys.exit(0)


if __name__ == "__main__":
    main()
