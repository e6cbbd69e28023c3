"""The ``audit`` command line's shared options: parsing callbacks and the options of ``audit run`` and
``audit demo`` (and ``audit compare``), as reusable decorators."""

from __future__ import annotations

import click

from detectors.kinds import REMOVAL_BASELINES


def eps_list(ctx, param, value: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, e.g. 0.01,0.03,0.1; got {value!r}") from None
    if not values or any(not (0 < v <= 1) for v in values):
        raise click.BadParameter(f"each eps must lie in (0, 1] (a fraction of each feature's range); got {value!r}")
    return tuple(sorted(set(values)))


def eps_l2_list(ctx, param, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, e.g. 0.5,1,2; got {value!r}") from None
    if not values or any(not (0 < v < float("inf")) for v in values):
        raise click.BadParameter(f"each L2 eps must be positive and finite (an L2 norm in [0, 1] units); got {value!r}")
    return tuple(sorted(set(values)))


def token_budget_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected whole numbers of tokens separated by commas, e.g. 1,2,4; "
                                 f"got {value!r}") from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"each token budget must be a whole number >= 1; got {value!r}")
    return tuple(sorted(set(values)))


def attack_params_list(ctx, param, values: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """ATTACK.PARAMETER=VALUE, the value as written: the audit's configuration reads it as the type of the
    attack's default (a number, true/false, or a word such as pgd.schedule=constant)."""
    parsed = []
    for value in values:
        name, equals, text = value.partition("=")
        attack, _, key = name.rpartition(".")
        if not attack or not key or not equals or not text.strip():
            raise click.BadParameter(f"expected ATTACK.PARAMETER=VALUE, e.g. pgd.steps=50 or pgd.schedule=constant; "
                                     f"got {value!r}")
        parsed.append((attack, key, text.strip()))
    return tuple(parsed)


def name_list(ctx, param, value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def frozen_list(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """None when not given (a checkpoint's own frozen features apply), () for ``none``, else the names."""
    if value is None:
        return None
    return () if value.strip().lower() == "none" else name_list(ctx, param, value)


def audit_options(function):
    """Options shared by ``audit run`` and ``audit demo``."""
    options = [
        click.option("--eps", callback=eps_list, default="0.01,0.03,0.1", show_default=True,
                     help="L-inf attack budgets, fractions of each feature's range"),
        click.option("--eps-l2", callback=eps_l2_list, default=None,
                     help="L2 budgets of the L2 attacks (pgd-l2, cw, deepfool), L2 norms in [0, 1] units "
                          "[default: each --eps times sqrt(number of inputs the attacker may change), "
                          "two significant digits]"),
        click.option("--token-budget", callback=token_budget_list, default="1,2,4", show_default=True,
                     help="text only: how many words typo and homoglyph may edit, and how many tokens the "
                          "substitution attacks (hotflip, ...-sub) may change; --eps then applies to embedding-pgd "
                          "only (fractions of the mean embedding norm)"),
        click.option("--substitutions", type=click.Path(dir_okay=False), default=None,
                     help="text only: a JSON file {token: [allowed replacements]}; the substitution attacks "
                          "(hotflip, ...-sub) change a token only into one listed for it, and without it they do "
                          "not run (hotflip-any, named in --attacks, is the any-token upper bound)"),
        click.option("--protect", type=click.Path(dir_okay=False), default=None,
                     help="text only: a file of words (one a line) no attack but hotflip-any may change, e.g. "
                          "negations and credential words; the data's rationale tokens are always protected"),
        click.option("--profile", type=click.Choice(["quick", "standard", "full"]), default="quick",
                     show_default=True, help="which attacks, settings and checks run (see `audit attacks`)"),
        click.option("--attacks", callback=name_list, default="",
                     help="override the profile's attacks: registered names, comma-separated"),
        click.option("--attack-param", "attack_params", multiple=True, callback=attack_params_list,
                     help="override one attack setting of the profile, e.g. pgd.steps=50 or "
                          "pgd.schedule=constant (repeatable; "
                          "`audit attacks` lists the parameters)"),
        click.option("--explainers", callback=name_list, default="",
                     help="override the profile's explainers: registered names, comma-separated "
                          "(quick: attention, rollout, integrated-gradients, random; standard and full: all)"),
        click.option("--masking-checks/--no-masking-checks", default=None,
                     help="gradient-masking checks [default: on for standard and full]"),
        click.option("--frozen-features", callback=frozen_list, default=None,
                     help="features an attacker may not change, comma-separated; `none` for none "
                          "[default: the checkpoint's, recorded by audit train --frozen-features]"),
        click.option("--on-out-of-range", type=click.Choice(["clip", "refuse"]), default="clip", show_default=True,
                     help="audited values outside the checkpoint's training range: clip them to it (counted in "
                          "results.json data.out_of_range and the report), or refuse with exit 2"),
        click.option("--on-unseen-category", type=click.Choice(["map", "refuse"]), default="map", show_default=True,
                     help="a category the checkpoint never saw: audit it as the unknown category (counted in "
                          "results.json data.unseen_categories), or refuse with exit 2 naming the row and column"),
        click.option("--mutable-categorical", callback=name_list, default="",
                     help="categorical columns the attacker controls, comma-separated: pgd-categorical may change "
                          "them to other known categories [default: none, every categorical column frozen]"),
        click.option("--category-budget", type=click.IntRange(min=1), default=1, show_default=True,
                     help="how many --mutable-categorical columns pgd-categorical may change per row"),
        click.option("--on-long-text", type=click.Choice(["truncate", "refuse"]), default="truncate",
                     show_default=True,
                     help="text: messages longer than the model's length: truncate them there (counted in "
                          "results.json data.truncated and the report), or refuse with exit 2 naming the first"),
        click.option("--target-class", default=None,
                     help="targetable attacks (fgsm, pgd, pgd-l2, cw, square, attention-guided) aim at this class "
                          "(a class name, e.g. the benign class of a detector)"),
        click.option("--hijack-features", callback=name_list, default="",
                     help="attention-hijack pulls the attention onto these features, comma-separated "
                          "[default: the 5 least-attended tokens of each sample]"),
        click.option("--faithfulness-metrics", callback=name_list, default="",
                     help="override the profile's faithfulness metrics, comma-separated: deletion, insertion, "
                          "deletion_gain, comprehensiveness, sufficiency, correlation, infidelity, max_sensitivity "
                          "[default: quick: deletion,insertion,deletion_gain; standard and full: all]"),
        click.option("--removal-baseline", type=click.Choice(REMOVAL_BASELINES), default=None,
                     help="what a removed feature becomes: the training-split mean, zero, (images only) a "
                          "Gaussian blur of the input, sigma 1 pixel, or (text only) the [MASK] token "
                          "[default: mean; text: mask]"),
        click.option("--max-samples", type=click.IntRange(min=0), default=None,
                     help="audit a seeded, stratified subset of this many rows, 0 = all "
                          "[default: 1000; full profile 5000]"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N"),
        click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
                     help="largest attack and explainer batch (smaller when --max-memory-gb asks)"),
        click.option("--max-memory-gb", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="memory budget per process, from which batch sizes are chosen "
                          "[default: half the available RAM, or of free GPU memory on CUDA]"),
        click.option("--save-adversarial", is_flag=True, help="write adversarial.safetensors"),
        click.option("--save-explanations", is_flag=True, help="write explanations.safetensors"),
        click.option("--quiet", is_flag=True, help="print only the verdict line"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def bounds_pair(ctx, param, value):
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI, e.g. 0,255; got {value!r}") from None
    if not hi > lo:
        raise click.BadParameter(f"expected LO < HI, got {value!r}")
    return (lo, hi)


def mlflow_options(function):
    """``--mlflow [URI]`` and ``--mlflow-experiment``, shared by ``audit run`` and ``audit train``."""
    function = click.option("--mlflow-experiment", default=None,
                            help="the MLflow experiment of the run [default: the model's name]")(function)
    return mlflow_uri_option("log this run to MLflow: the tracking URI, or with no value MLFLOW_TRACKING_URI, "
                             "else sqlite:///mlflow.db in the working directory (needs the mlflow extra)")(function)


def mlflow_uri_option(help_text: str):
    # an optional value: `--mlflow` alone is the empty string, which auditor.export.mlflow_runs.tracking_uri
    # reads as "the default URI"
    return click.option("--mlflow", "mlflow_uri", is_flag=False, flag_value="", default=None, metavar="[URI]",
                        help=help_text)
