"""One audit: load the model and data once, run the stages, collect the metrics table.

Every stage reads the same detector and data and writes named numbers into one
flat table; gates, JSON, report and comparisons all read that table.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks import ATTACKS, Domain, make_attack
from auditor.clean import clean_metrics, predict_proba
from auditor.determinism import Determinism
from auditor.agreement import agreement_stage, planned_agreement
from auditor.explain import EXPLAINERS, AttentionExplainer, make_explainer
from auditor.faithfulness import (FAITHFULNESS_METRICS, REMOVAL_BASELINES, REMOVAL_KINDS, check_metric_names,
                                   faithfulness_stage, planned_names, removal_baseline)
from auditor.localisation import localisation_stage, relevant_mask_of
from auditor.metrics import Bootstrap, MetricValue, format_eps
from auditor.memory import MemoryPlan, plan_memory
from auditor.persample import aggregate
from auditor.robustness import KEPT_EXAMPLES, curve_names, robustness_curves, run_attacks
from auditor.sanity import FLIP_RATE_METRICS, UNIFORM_METRICS, SanityOutcome, mean_sanity_curves, sanity_stage
from auditor.shard import RowTable, Shard, concatenate
from auditor.trust import LEAD_EXPLAINERS, input_tokens, planned_trust, token_names, trust_stage, worst_samples
from auditor.sparsity import SPARSITY_METRICS, sparsity_stage
from auditor.tensorfile import Layout, RowWriter
from detectors.base import Detector
from detectors.checkpoint import load_checkpoint
from detectors.data import align_table, is_builtin, load_table, split_table, stratified_subset
from detectors.table import Dataset
from detectors.devices import resolve_device
from detectors.errors import BadInputError

DEFAULT_EPS = (0.01, 0.03, 0.1)
# explainers per profile; `--explainers a,b` overrides. quick keeps to the cheap ones a CI gate needs,
# with both references (integrated-gradients, feature-ablation) so the trust verdict has its yardsticks
# (best reference, agreement noise floor) in every profile; standard and full run every registered explainer. Measured on 1000 flows samples, one CPU thread:
# all eleven explain in about 11 s of CPU (integrated-gradients 7 s, gradient-shap with 16 draws 2 s,
# feature-ablation 1.5 s, the rest well under 1 s) and their MPRT on 256 samples takes about as long.
PROFILE_EXPLAINERS = {
    "quick": ("attention", "rollout", "integrated-gradients", "feature-ablation", "random"),
    "standard": ("attention", "attention-max", "rollout", "grad-attention", "integrated-gradients", "saliency",
                 "input-x-gradient", "deeplift", "gradient-shap", "feature-ablation", "random"),
}
PROFILE_EXPLAINERS["full"] = PROFILE_EXPLAINERS["standard"]
DEFAULT_EXPLAINERS = PROFILE_EXPLAINERS["quick"]
PROFILES = {
    # attacks and their settings; masking checks on or off
    # quick is for CI gates (seconds on a CPU): attention-shift with fewer steps and restarts than its
    # defaults, which standard uses and full raises further
    "quick": ({"fgsm": {}, "pgd": {}, "attention-shift": {"steps": 20, "restarts": 2}}, False),
    # standard runs autoattack-fast (Square at 1,000 queries, as its own square), not the protocol's 5,000,
    # under its own name; full runs autoattack, the standard protocol (Croce & Hein 2020): on 1,000 flows on
    # 2 CPU cores the profile took 13.6 minutes with 5,000 queries, 8.9 with 1,000
    "standard": ({"fgsm": {}, "pgd": {}, "attention-shift": {}, "autoattack-fast": {},
                  "square": {"n_queries": 1000},
                  "cw": {}, "attention-guided": {}, "stealth": {}, "attention-hijack": {}}, True),
    "full": ({"fgsm": {}, "pgd": {"restarts": 20}, "attention-shift": {"restarts": 10}, "autoattack": {},
              "square": {"n_queries": 5000}, "cw": {}, "deepfool": {}, "pgd-l2": {"restarts": 20},
              "attention-guided": {}, "stealth": {}, "attention-hijack": {}}, True),
}
# faithfulness metrics per profile (names as in auditor.faithfulness.FAITHFULNESS_METRICS)
PROFILE_FAITHFULNESS = {"quick": ("deletion", "insertion"), "standard": FAITHFULNESS_METRICS,
                        "full": FAITHFULNESS_METRICS}
PROFILE_MAX_SAMPLES = {"quick": 1000, "standard": 1000, "full": 5000}
DEFAULT_ATTACKS = tuple(PROFILES["quick"][0])
GALLERY_SIZE = 3
GALLERY_FEATURES = 10
L2_SIGNIFICANT_DIGITS = 2


def default_l2_grid(eps: tuple[float, ...], n_mutable: int) -> tuple[float, ...]:
    """The L2 grid when ``--eps-l2`` is not given: each L-inf eps times sqrt(number of inputs the attacker may
    change), to two significant digits. That is the radius of the smallest L2 ball holding the L-inf ball of
    the same eps, so a perfect L2 attacker breaks at least what a perfect L-inf one does there."""
    scale = math.sqrt(max(1, n_mutable))
    return tuple(sorted({float(f"{e * scale:.{L2_SIGNIFICANT_DIGITS}g}") for e in eps}))


def coerce_attack_param(attack: str, key: str, value) -> object:
    """``--attack-param ATTACK.KEY=VALUE`` as the type of the constructor's default: bool (true/false), int,
    float or a string (e.g. ``pgd.schedule=constant``); bad input names what was expected."""
    from attacks import ATTACKS

    signature = inspect.signature(ATTACKS[attack].__init__).parameters
    settable = [name for name, p in signature.items() if p.kind == p.KEYWORD_ONLY and name != "target_class"]
    if key not in settable:
        raise BadInputError(f"--attack-param {attack}.{key}: {attack} has no parameter {key!r}; "
                            f"it has {', '.join(settable) or 'none'}")
    default = signature[key].default
    if default is None:  # an optional setting (e.g. steps: int | None): its annotation says the type
        annotation = str(signature[key].annotation)
        default = next((kind() for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str))
                        if name in annotation.split(" | ")), None)
    text = str(value).strip()
    if isinstance(default, bool):
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if text.lower() not in words:
            raise BadInputError(f"--attack-param {attack}.{key}={value}: expected true or false")
        return words[text.lower()]
    if isinstance(default, str):
        return text
    number = _number(text)
    if isinstance(default, int):
        if number is None or not float(number).is_integer():
            raise BadInputError(f"--attack-param {attack}.{key}={value}: expected a whole number")
        return int(number)
    if isinstance(default, float):
        if number is None:
            raise BadInputError(f"--attack-param {attack}.{key}={value}: expected a number")
        return float(number)
    return text if number is None else number  # no type known: a number when it reads as one


def _number(text: str) -> int | float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else number


@dataclass(frozen=True)
class AuditConfig:
    eps: tuple[float, ...] = DEFAULT_EPS
    # the L2 attacks' grid (--eps-l2); None until bound to the model: default_l2_grid of the L-inf grid
    eps_l2: tuple[float, ...] | None = None
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    explainers: tuple[str, ...] = DEFAULT_EXPLAINERS
    max_samples: int = 1000
    seed: int = 0
    device: str = "auto"
    batch_size: int = 256
    save_adversarial: bool = False
    save_explanations: bool = False
    profile: str = "quick"
    masking_checks: bool = False
    # features an attacker may not change; None: the checkpoint's own (``audit train --frozen-features``), none
    # for a python: model. After loading, the names actually frozen.
    frozen_features: tuple[str, ...] | None = None
    # the model is not deterministic (auditor.determinism): AutoAttack runs its "rand" version (EOT)
    randomised_model: bool = False
    max_memory_gb: float | None = None
    attack_params: tuple[tuple[str, str, object], ...] = ()  # (attack, parameter, value): overrides the profile
    target_class: str | None = None  # a class name: targetable attacks aim at it (``--target-class``)
    hijack_features: tuple[str, ...] = ()  # attention-hijack pulls attention onto these (``--hijack-features``)
    # resolved against the audited data by :meth:`bind`
    target_index: int | None = None
    hijack_positions: tuple[int, ...] = ()

    faithfulness_metrics: tuple[str, ...] = PROFILE_FAITHFULNESS["quick"]
    removal_baseline: str = "mean"

    @classmethod
    def from_profile(cls, profile: str, *, attacks: tuple[str, ...] | None = None,
                     explainers: tuple[str, ...] | None = None, masking_checks: bool | None = None,
                     max_samples: int | None = None, faithfulness_metrics: tuple[str, ...] | None = None,
                     **options) -> "AuditConfig":
        """The profile picks attacks, their settings, the explainers, the masking checks and the faithfulness
        metrics; explicit options win."""
        if profile not in PROFILES:
            raise BadInputError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        chosen, checks = PROFILES[profile]
        return cls(attacks=tuple(attacks) if attacks else tuple(chosen), profile=profile,
                   explainers=tuple(explainers) if explainers else PROFILE_EXPLAINERS[profile],
                   masking_checks=checks if masking_checks is None else masking_checks,
                   max_samples=PROFILE_MAX_SAMPLES[profile] if max_samples is None else max_samples,
                   faithfulness_metrics=tuple(faithfulness_metrics) if faithfulness_metrics
                   else PROFILE_FAITHFULNESS[profile], **options)

    def attack_settings(self, name: str) -> dict:
        """The untargeted attack's settings: the profile's, then ``--attack-param``."""
        settings = dict(PROFILES[self.profile][0].get(name, {}))
        settings.update({key: value for attack, key, value in self.attack_params if attack == name})
        if name == "attention-hijack" and self.hijack_positions:
            settings["target_positions"] = list(self.hijack_positions)
        if self.randomised_model and name == "autoattack" and "version" in inspect.signature(ATTACKS[name]).parameters:
            settings.setdefault("version", "rand")
        return settings

    def grid(self, norm: str) -> tuple[float, ...]:
        """The eps grid of a norm: ``eps`` for L-inf, ``eps_l2`` for L2 (resolved by :meth:`bind`)."""
        if norm == "linf":
            return self.eps
        if self.eps_l2 is None:
            raise ValueError("the L2 grid is not resolved yet: bind the configuration to the model "
                             "(AuditConfig.bind or with_l2_grid) or pass eps_l2")
        return self.eps_l2

    def with_l2_grid(self, n_mutable: int) -> "AuditConfig":
        """The L2 grid resolved: ``eps_l2`` as given, else :func:`default_l2_grid` for ``n_mutable`` inputs."""
        return self if self.eps_l2 is not None else replace(self, eps_l2=default_l2_grid(self.eps, n_mutable))

    def bind(self, feature_names: list[str], class_names: list[str], *, n_mutable: int | None = None) -> "AuditConfig":
        """Resolve ``target_class`` and ``hijack_features`` names against the audited data, and the default L2
        grid for ``n_mutable`` inputs the attacker may change (default: every feature)."""
        target_index = None
        if self.target_class is not None:
            if self.target_class in class_names:
                target_index = class_names.index(self.target_class)
            elif self.target_class.isdigit() and int(self.target_class) < len(class_names):
                target_index = int(self.target_class)
            else:
                raise BadInputError(f"--target-class {self.target_class!r} is not a class of the model; classes: "
                                    f"{', '.join(map(repr, class_names))}")
        unknown = [name for name in self.hijack_features if name not in feature_names]
        if unknown:
            raise BadInputError(f"--hijack-features: {', '.join(map(repr, unknown[:3]))} not among the model's "
                                f"features ({', '.join(map(repr, feature_names[:6]))}"
                                f"{' ...' if len(feature_names) > 6 else ''})")
        positions = tuple(feature_names.index(name) for name in self.hijack_features)
        bound = replace(self, target_index=target_index, hijack_positions=positions)
        return bound.with_l2_grid(len(feature_names) if n_mutable is None else n_mutable)

    def build_attacks(self) -> dict:
        """Every attack, untargeted: ``robust.accuracy.ATTACK@EPS`` means the same with or without --target-class."""
        return {name: make_attack(name, **self.attack_settings(name)) for name in self.attacks}

    def build_targeted_attacks(self) -> dict:
        """With --target-class, the targetable attacks aiming at it (reported as ``ATTACK-targeted``)."""
        if self.target_index is None:
            return {}
        return {name: make_attack(name, **self.attack_settings(name), target_class=self.target_index)
                for name in self.attacks if ATTACKS[name].targetable}

    def __post_init__(self) -> None:
        bad = [e for e in self.eps if not (0 < e <= 1)]
        if not self.eps or bad:
            raise BadInputError(f"--eps values must lie in (0, 1] (fractions of each feature's range), got {bad or 'none'}")
        if self.eps_l2 is not None:
            bad = [e for e in self.eps_l2 if not (0 < e < math.inf)]
            if not self.eps_l2 or bad:
                raise BadInputError(f"--eps-l2 values must be positive and finite (L2 norms in [0, 1] units), "
                                    f"got {bad or 'none'}")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise BadInputError(f"unknown attack {unknown[0] if unknown else '(none)'}; registered: {', '.join(sorted(ATTACKS))}")
        unknown = [e for e in self.explainers if e not in EXPLAINERS]
        if unknown:
            raise BadInputError(f"unknown explainer {unknown[0]}; registered: {', '.join(sorted(EXPLAINERS))}")
        coerced = []
        for attack, key, value in self.attack_params:
            if attack not in self.attacks:
                raise BadInputError(f"--attack-param {attack}.{key}: {attack} is not among the attacks run "
                                    f"({', '.join(self.attacks)})")
            coerced.append((attack, key, coerce_attack_param(attack, key, value)))
        object.__setattr__(self, "attack_params", tuple(coerced))  # frozen: the typed values, set once here
        for attack in {attack for attack, _, _ in self.attack_params}:
            try:
                make_attack(attack, **self.attack_settings(attack))
            except (ValueError, TypeError) as error:
                raise BadInputError(f"--attack-param {attack}: {error}") from None
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise BadInputError(f"--max-memory-gb must be positive, got {self.max_memory_gb}")
        check_metric_names(self.faithfulness_metrics)
        if self.removal_baseline not in REMOVAL_BASELINES:
            raise BadInputError(f"unknown removal baseline {self.removal_baseline!r}; "
                                f"choose one of {', '.join(REMOVAL_BASELINES)}")
        if self.max_samples < 0 or self.batch_size < 1:
            raise BadInputError("--max-samples must be >= 0 (0 = all rows) and the batch size >= 1")
        if self.hijack_features and "attention-hijack" not in self.attacks:
            raise BadInputError("--hijack-features applies to attention-hijack; add it to --attacks "
                                "(or use --profile standard)")
        if self.target_class is not None and not any(ATTACKS[a].targetable for a in self.attacks):
            raise BadInputError("--target-class applies to the targetable attacks (fgsm, pgd, pgd-l2, cw, square, "
                                "attention-guided); add one to --attacks")

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["eps"] = [float(e) for e in self.eps]
        payload["eps_l2"] = None if self.eps_l2 is None else [float(e) for e in self.eps_l2]
        payload["attack_params"] = {name: attack.params() for name, attack in self.build_attacks().items()}
        if self.target_index is not None:  # the targeted runs, under the names their metrics carry
            from auditor.robustness import TARGETED_SUFFIX

            payload["attack_params"].update({f"{name}{TARGETED_SUFFIX}": attack.params()
                                             for name, attack in self.build_targeted_attacks().items()})
        payload["faithfulness_metrics"] = list(self.faithfulness_metrics)
        return payload


@dataclass
class Subject:
    """What is audited: a detector, its data, its removal baseline and who it is."""

    detector: Detector
    data: Dataset
    baseline: torch.Tensor
    model_info: dict
    device: torch.device
    domain: Domain | None = None
    frozen_features: tuple[str, ...] = ()
    # None until auditor.determinism.settle checks it (a caller that knows may set it), then its findings
    deterministic: bool | None = None
    determinism: Determinism | None = None


@dataclass
class SampleView:
    """One sample for the gallery: plain numbers, ready for the report.

    ``features``, ``values`` and ``attributions`` hold the top features by the lead explainer (tabular bars);
    ``x`` and ``maps`` hold the whole input and each explainer's attribution in the input's shape (image
    overlays and time x feature strips). An adversarial sample names its ``attack`` and the prediction before
    it (``clean_predicted``); ``changes`` lists the features the attack moved most as (name, clean, adversarial).
    """

    row: int
    label: str
    predicted: str
    confidence: float
    correct: bool
    features: list[str]
    values: list[float]
    attributions: dict[str, list[float]]
    x: list = field(default_factory=list)
    maps: dict[str, list] = field(default_factory=dict)
    attack: str | None = None
    eps: float | None = None
    clean_predicted: str | None = None
    changes: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass
class AuditResult:
    metrics: dict[str, MetricValue]
    skipped: dict[str, str]
    timing: dict[str, float]
    n_samples: int
    robustness_curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    removal_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    gallery: list[SampleView] = field(default_factory=list)
    masking: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    probabilities: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    attention_examples: list = field(default_factory=list)
    adversarial_gallery: list[SampleView] = field(default_factory=list)
    sanity_curves: dict[str, list[dict]] = field(default_factory=dict)
    # trust.hidden_importance's worst samples for the lead attention explainer: plain dicts (auditor.trust)
    hidden_importance: list[dict] = field(default_factory=list)


def planned_metrics(config: AuditConfig, *, binary: bool = True) -> list[str]:
    """Every metric name this configuration sets out to compute (its L2 grid resolved when L2 attacks run)."""
    from auditor.masking import planned_check_metrics
    from auditor.robustness import FLIPPING_ATTENTION_ATTACKS, TARGETED_SUFFIX, WORST, is_attention_attack, \
        is_evasion_attack

    names = ["clean.accuracy", "clean.precision", "clean.recall", "clean.f1", "clean.roc_auc", "clean.ece"]
    for norm, worst in WORST.items():
        if any(ATTACKS[a].norm == norm and is_evasion_attack(a) for a in config.attacks):
            names += [f"robust.accuracy.{worst}@{format_eps(eps)}" for eps in config.grid(norm)]
    for attack in config.attacks:
        for eps in config.grid(ATTACKS[attack].norm):
            tag = f"{attack}@{format_eps(eps)}"
            if is_attention_attack(attack):
                names += [f"stability.{key}.{tag}" for key in
                          ("topk_intersection", "spearman", "jsd", "prediction_kept")]
                if attack == "attention-hijack":
                    names.append(f"stability.hijack_success.{tag}")
                if attack not in FLIPPING_ATTENTION_ATTACKS:
                    continue
            names += [f"robust.accuracy.{tag}", f"robust.attack_success_rate.{tag}"]
            if binary:
                names.append(f"robust.evasion_rate.{tag}")
            if config.target_class is not None and ATTACKS[attack].targetable:
                names += [f"robust.accuracy.{attack}{TARGETED_SUFFIX}@{format_eps(eps)}",
                          f"robust.targeted_success_rate.{tag}"]
    if config.masking_checks:
        names += planned_check_metrics({a: config.grid(ATTACKS[a].norm) for a in config.attacks
                                        if is_evasion_attack(a)})
    names += planned_names(config.faithfulness_metrics, config.explainers)
    names += planned_agreement(config.explainers)
    names += [f"sanity.mprt.{explainer}" for explainer in config.explainers if explainer != "random"]
    names += list(FLIP_RATE_METRICS)
    names += list(UNIFORM_METRICS)
    names += planned_trust(config.explainers)
    names += [f"localisation.precision_at_k.{explainer}" for explainer in config.explainers]
    names += list(SPARSITY_METRICS)
    return names


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_domain(input_shape: tuple[int, ...], feature_names: list[str], *, frozen: tuple[str, ...] = (),
                 integer: list[str] | None = None, lo=None, hi=None) -> Domain:
    """The attacker's space: [0, 1] box, frozen features by name, integer features rounded in raw units."""
    unknown = [name for name in frozen if name not in feature_names]
    if unknown:
        raise BadInputError(f"--frozen-features: {', '.join(map(repr, unknown[:3]))} not among the model's features "
                            f"({', '.join(map(repr, feature_names[:6]))}{' ...' if len(feature_names) > 6 else ''})")
    frozen_mask = torch.tensor([name in frozen for name in feature_names]).reshape(input_shape)
    integer_mask = torch.tensor([name in (integer or ()) for name in feature_names]).reshape(input_shape)
    span = None if hi is None else np.where(np.asarray(hi) - np.asarray(lo) > 0, np.asarray(hi) - np.asarray(lo), 1.0)
    return Domain.unit(input_shape, frozen=frozen_mask, integer=integer_mask if integer else None, raw_lo=lo,
                       raw_span=span)


ON_OUT_OF_RANGE = ("clip", "refuse")


def check_out_of_range(data: Dataset, policy: str) -> None:
    """``refuse``: one line naming the first feature (in the model's order) with audited values outside the
    training range, instead of auditing them clipped to it (``clip``, counted in ``data.out_of_range``)."""
    if policy not in ON_OUT_OF_RANGE:
        raise BadInputError(f"--on-out-of-range {policy!r}: choose one of {', '.join(ON_OUT_OF_RANGE)}")
    found = data.out_of_range()
    if policy == "refuse" and found["rows"]:
        name, rows = next(iter(found["features"].items()))
        raise BadInputError(
            f"{found['rows']} of {len(data)} audited rows lie outside the checkpoint's training range, first in "
            f"feature {name!r} ({rows} rows); audit rows from that range, or pass --on-out-of-range clip to audit "
            "them clipped to it (counted in results.json data.out_of_range)")


def load_subject(model_path: str, *, data_spec: str | None, label_column: str, max_samples: int, seed: int,
                 device_name: str, frozen_features: tuple[str, ...] | None = None,
                 on_out_of_range: str = "clip") -> Subject:
    """The checkpoint's detector with the data to audit, validated against each other. ``frozen_features``:
    None for the checkpoint's own (recorded by ``audit train --frozen-features``), else these (``()``: none).
    Audited values outside the training range are clipped to it and counted, or refused (``on_out_of_range``)."""
    device = resolve_device(device_name)
    checkpoint = load_checkpoint(model_path, device=device)
    meta = checkpoint.metadata
    trained_on = meta["data"]
    if data_spec is None or _same_data(data_spec, trained_on["name"]):
        spec = trained_on["name"]
        if not is_builtin(spec) and not Path(spec).is_file():
            raise BadInputError(
                f"the checkpoint's training data {spec!r} is not readable here; pass --data with the rows to audit"
            )
        table = load_table(spec, label_column=trained_on.get("label_column", label_column),
                           seed=trained_on.get("generator_seed", 0))
        data = split_table(table, seed=trained_on["split_seed"]).test
    else:
        spec = data_spec
        table = load_table(spec, label_column=label_column)
        data = align_table(table, feature_names=checkpoint.feature_names, class_names=checkpoint.class_names,
                           scaler=checkpoint.scaler)
    if data.feature_names != checkpoint.feature_names:
        raise BadInputError(
            f"expected the checkpoint's {len(checkpoint.feature_names)} features, the data has "
            f"{len(data.feature_names)}; pass --data with the same columns the model was trained on"
        )
    data.positive_class = meta.get("positive_class")
    data = stratified_subset(data, max_samples, seed=seed)
    if len(data) == 0:
        raise BadInputError(f"no rows to audit in {spec}")
    check_out_of_range(data, on_out_of_range)
    if checkpoint.train_mean is not None:
        baseline = checkpoint.train_mean.float()
    else:
        baseline = torch.as_tensor(data.x.mean(axis=0))
    path = Path(model_path)
    model_info = {
        "path": str(path), "sha256": sha256_of(path), "detector": meta["detector"]["kind"],
        "defense": meta["defense"].get("name", "none"), "data set": trained_on["name"],
        "hparams": meta["detector"]["hparams"], "training": meta.get("training", {}),
        "defense_settings": dict(meta["defense"]),
        # checkpoints written before the variants existed all used softmax
        "attention": meta["detector"]["hparams"].get("attention", "softmax"),
    }
    scaler = checkpoint.scaler
    frozen = tuple(meta.get("frozen_features") or ()) if frozen_features is None else tuple(frozen_features)
    domain = build_domain(tuple(checkpoint.detector.input_shape), checkpoint.feature_names, frozen=frozen,
                          integer=meta.get("integer_features"), lo=scaler.lo, hi=scaler.hi)
    return Subject(detector=checkpoint.detector, data=data, baseline=baseline.to(device), model_info=model_info,
                   device=device, domain=domain, frozen_features=frozen)


@dataclass(frozen=True)
class ForeignOptions:
    """How to read a model this tool did not train (``--model python:PATH:FACTORY``)."""

    weights: str | None = None
    input_kind: str | None = None
    patch_size: int | None = None
    cls_token: str = "first"
    attention_modules: tuple[str, ...] = ()
    logits_key: str | None = None
    bounds: tuple[float, float] | None = None
    bounds_file: str | None = None
    positive_class: str | None = None


def is_foreign(model: str) -> bool:
    return model.startswith("python:")


def load_foreign_subject(model_spec: str, options: ForeignOptions, *, data_spec: str | None, label_column: str,
                         max_samples: int, seed: int, device_name: str,
                         frozen_features: tuple[str, ...] | None = None) -> Subject:
    """A user's own model with its data: the data reaches the model exactly as read, never rescaled.

    The attacks and explainers work in [0, 1] units of each input position's range (the data's minimum
    and maximum unless ``--bounds``/``--bounds-file`` say otherwise); the wrapper maps those units back to
    the model's own before every call, so eps means the same fraction of a range as for checkpoints.
    """
    from detectors.foreign import PATH_TOLERANCE, ForeignDetector, check_input_fits, logit_path_difference
    from detectors.foreign_loading import build_foreign_model

    if data_spec is None:
        raise BadInputError("a python: model brings no data of its own; pass --data with the rows to audit")
    if options.input_kind is None:
        raise BadInputError("a python: model needs --input-kind tabular|image|sequence to map tokens to inputs")
    device = resolve_device(device_name)
    table = load_table(data_spec, label_column=label_column, positive_class=options.positive_class)
    rank = {"tabular": 1, "sequence": 2, "image": 3}[options.input_kind]
    if len(table.input_shape) != rank:
        raise BadInputError(f"--input-kind {options.input_kind} expects samples of rank {rank}, "
                            f"but {table.name} holds samples of shape {table.input_shape}")
    raw = table.x
    lo, hi = _foreign_bounds(raw, options, table.input_shape)
    if (raw < lo - 1e-9).any() or (raw > hi + 1e-9).any():
        raise BadInputError("the data lies outside --bounds; widen the bounds or leave them out "
                            "(each feature's minimum and maximum over the data)")
    model = build_foreign_model(model_spec, weights=options.weights)
    n_classes = _probe_classes(model, raw[:2], options.logits_key)
    class_names, y = _foreign_labels(table, n_classes)
    detector = ForeignDetector(
        model, input_shape=table.input_shape, n_classes=n_classes, input_kind=options.input_kind,
        cls_token=options.cls_token, patch_size=options.patch_size,
        attention_modules=list(options.attention_modules), logits_key=options.logits_key,
        lo=torch.as_tensor(lo, dtype=torch.float32), hi=torch.as_tensor(hi, dtype=torch.float32),
    ).to(device).eval()
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scaled = ((raw - lo) / span).astype(np.float32)
    data = Dataset(name=table.name, split="all", x=scaled, y=y, feature_names=list(table.feature_names),
                   class_names=class_names, positive_class=table.positive_class if n_classes == 2 else None,
                   relevant_features=table.relevant_features, relevant_mask=table.relevant_mask)
    sample = torch.as_tensor(data.x[:2], device=device)
    check_input_fits(detector, sample)
    with torch.no_grad():
        detector.forward_with_attention(sample)  # no attention, or tokens that do not fit: say so before auditing
    data = stratified_subset(data, max_samples, seed=seed)
    audited = torch.as_tensor(data.x, device=device)
    difference = logit_path_difference(detector, audited)
    if difference > PATH_TOLERANCE:
        raise BadInputError(
            f"the model's logits with attention capture differ from its plain logits by up to {difference:.3g} "
            f"(tolerance {PATH_TOLERANCE:g}) on the audited rows, so the clean metrics and the attention attacks "
            "would judge two different models; make the model's forward the same with and without "
            "need_weights=True (or give it forward_with_attention)")
    with torch.no_grad():
        layers, ignored = detector.attention_layers(audited[:2])
    identity = Path(options.weights) if options.weights else Path(parse_location(model_spec))
    model_info = {
        "path": model_spec + (f" (weights {options.weights})" if options.weights else ""),
        "sha256": sha256_of(identity) if identity.is_file() else "n/a", "detector": "foreign",
        "defense": "unknown", "data set": table.name, "hparams": detector.hparams(), "training": {},
        "attention_modules": layers, "ignored_attention_modules": ignored,
        "attention_path_max_abs_logit_diff": difference,
    }
    baseline = torch.as_tensor(data.x.mean(axis=0), device=device)
    frozen = tuple(frozen_features or ())
    domain = build_domain(table.input_shape, list(table.feature_names), frozen=frozen)
    return Subject(detector=detector, data=data, baseline=baseline, model_info=model_info, device=device,
                   domain=domain, frozen_features=frozen)


def parse_location(model_spec: str) -> str:
    from detectors.foreign_loading import parse_model_spec

    return parse_model_spec(model_spec)[0]


def _foreign_bounds(raw: np.ndarray, options: ForeignOptions, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    if options.bounds is not None and options.bounds_file is not None:
        raise BadInputError("give --bounds or --bounds-file, not both")
    if options.bounds is not None:
        lo, hi = options.bounds
        return np.full(shape, lo, dtype=np.float64), np.full(shape, hi, dtype=np.float64)
    if options.bounds_file is not None:
        import json
        try:
            payload = json.loads(Path(options.bounds_file).read_text(encoding="utf-8"))
            lo = np.broadcast_to(np.asarray(payload["lo"], dtype=np.float64).reshape(-1), (int(np.prod(shape)),))
            hi = np.broadcast_to(np.asarray(payload["hi"], dtype=np.float64).reshape(-1), (int(np.prod(shape)),))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BadInputError(f"--bounds-file {options.bounds_file}: expected JSON {{\"lo\": [...], \"hi\": [...]}} "
                                f"with one value or one per input position ({error})") from None
        lo, hi = lo.reshape(shape).copy(), hi.reshape(shape).copy()
        if (hi < lo).any():
            raise BadInputError(f"--bounds-file {options.bounds_file}: some hi values are below their lo")
        return lo, hi
    return raw.min(axis=0).astype(np.float64), raw.max(axis=0).astype(np.float64)


def _probe_classes(model: torch.nn.Module, raw: np.ndarray, logits_key: str | None) -> int:
    """The number of classes, read off the width of the model's logits on two samples."""
    with torch.no_grad():
        try:
            output = model(torch.as_tensor(raw, dtype=torch.float32))
        except Exception as error:  # the user's model: any failure here means the data does not fit it
            raise BadInputError(f"the data's shape {tuple(raw.shape[1:])} does not fit the model: "
                                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    if isinstance(output, dict):
        output = output.get(logits_key) if logits_key is not None else None
    elif isinstance(output, (tuple, list)) and output:
        output = output[int(logits_key)] if logits_key and logits_key.isdigit() and int(logits_key) < len(output) \
            else output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise BadInputError("cannot find (batch, classes) logits in the model's output; name them with --logits-key")
    return int(output.shape[1])


def _foreign_labels(table, n_classes: int) -> tuple[list[str], np.ndarray]:
    """Integer labels index the model's logits directly; other labels map to classes in sorted order."""
    names = list(table.class_names)
    try:
        as_int = [int(float(name)) for name in names]
        integral = all(float(name) == int(float(name)) for name in names)
    except ValueError:
        integral = False
    if integral:
        if min(as_int) < 0 or max(as_int) >= n_classes:
            raise BadInputError(f"labels {sorted(as_int)} do not index the model's {n_classes} logits")
        return [str(i) for i in range(n_classes)], np.array([as_int[i] for i in table.y], dtype=np.int64)
    if len(names) > n_classes:
        raise BadInputError(f"the data has {len(names)} classes but the model outputs {n_classes} logits")
    return names + [f"class {i}" for i in range(len(names), n_classes)], table.y.astype(np.int64)


def _same_data(spec: str, trained_on: str) -> bool:
    """Whether ``spec`` names the data the checkpoint was trained on (then its test split is audited)."""
    if spec == trained_on:
        return True
    if is_builtin(spec) or is_builtin(trained_on):
        return False
    return Path(spec).resolve() == Path(trained_on).resolve()


def run_audit(subject: Subject, config: AuditConfig, *, progress: bool = True, shard: Shard | None = None,
              save_to: dict[str, Path] | None = None) -> AuditResult | None:
    """Audit ``subject``: this process's shard of the rows is streamed through the stages in chunks of
    whole attack chunks; the per-sample tables of every shard are gathered to rank 0, which aggregates
    them once over all rows (and returns the result; other ranks return None). ``save_to``: for the
    row-table groups that ``--save-adversarial``/``--save-explanations`` keep, the file laid out by
    :func:`saved_layouts` (``auditor.tensorfile.create``) that this rank writes its rows into, block by
    block, instead of gathering them."""
    shard = shard or Shard()
    detector, data, device = subject.detector, subject.data, subject.device
    detector.eval()
    if subject.deterministic is False:  # the model's own draws come from torch's global stream: seeded
        torch.manual_seed(config.seed)
    x = torch.as_tensor(data.x, device=device)
    y = torch.as_tensor(data.y, device=device)
    if x.shape[1:] != torch.Size(detector.input_shape):
        raise BadInputError(
            f"expected x of shape (N, {', '.join(map(str, detector.input_shape))}), got {tuple(x.shape)}"
        )
    baseline = removal_baseline(config.removal_baseline, x, subject.baseline)
    relevant = relevant_mask_of(data, len(x))
    domain = subject.domain if subject.domain is not None else Domain.unit(detector.input_shape)
    config = config.with_l2_grid(int(domain.mutable.sum()))
    attacks = config.build_attacks()
    plan = plan_memory(detector, x[:2], budget_gb=config.max_memory_gb, batch_size=config.batch_size,
                       per_row_bytes=_row_bytes(x, config))
    if set(save_to or {}) != set(saved_layouts(config, data)):
        raise ValueError(f"the configuration saves {sorted(saved_layouts(config, data))}, but files were given for "
                         f"{sorted(save_to or {})}")
    timing: dict[str, float] = {}
    writers: dict[str, RowWriter] = {}
    try:
        writers.update({group: _open_saved(path, shard) for group, path in (save_to or {}).items()})
        parts = []
        rows = torch.as_tensor(shard.rows(len(x)), device=device)
        for start in range(0, len(rows), plan.stream_rows):
            index = rows[start:start + plan.stream_rows]
            # a per-sample removal baseline (blur) is sliced to the block's rows
            block_baseline = baseline[index] if baseline.shape == x.shape else baseline
            block_relevant = relevant[index.cpu().numpy()] if relevant is not None else None
            table = audit_rows(detector, x[index], y[index], index, config, attacks, domain=domain,
                               baseline=block_baseline, relevant=block_relevant, positive=data.positive_class,
                               plan=plan, timing=timing, progress=progress, n_rows=len(x))
            for group, writer in writers.items():  # a block's rows are consecutive: written at the first one's place
                writer.write(int(index[0]), table.pop(group))
            parts.append(table)
        local: RowTable | Exception = concatenate(parts)
    except Exception as error:  # sent to rank 0 instead of the rows, so no rank waits forever
        local = error
    finally:  # closed before the gather: rank 0 renames the files once every rank is past it
        for writer in writers.values():
            writer.close()
    tables = shard.gather(local)
    if tables is None:
        return None
    return summarise(tables, subject, config, attacks, timing=timing, plan=plan, x=x, baseline=baseline)


# the files --save-adversarial / --save-explanations write, by the row-table group they hold
SAVED_FILES = {"adversarial": "adversarial.safetensors", "explanations": "explanations.safetensors"}


def saved_layouts(config: AuditConfig, data: Dataset) -> dict[str, Layout]:
    """For each group of :data:`SAVED_FILES` the configuration asks for, every tensor its file holds, with
    dtype and full shape (one row per audited sample, in the data's row order): known before the audit, so
    the file is laid out first and filled block by block."""
    n, shape = len(data), tuple(data.x.shape[1:])
    x, y = (data.x.dtype, (n, *shape)), (data.y.dtype, (n,))
    layouts = {}
    if config.save_adversarial:
        from auditor.robustness import TARGETED_SUFFIX

        targeted = [attack for attack in config.attacks if config.target_class is not None and ATTACKS[attack].targetable]
        layouts["adversarial"] = {"x": x, "y": y, **{f"adv/{attack}@{format_eps(eps)}": x for attack in config.attacks
                                                     for eps in config.grid(ATTACKS[attack].norm)},
                                  **{f"adv/{attack}{TARGETED_SUFFIX}@{format_eps(eps)}": x for attack in targeted
                                     for eps in config.grid(ATTACKS[attack].norm)}}
    if config.save_explanations:
        layouts["explanations"] = {"x": x, "y": y, "pred": (np.dtype(np.int64), (n,)),
                                   **{f"attr/{name}": x for name in config.explainers}}
    return layouts


def _open_saved(path: Path, shard: Shard) -> RowWriter:
    try:
        return RowWriter(path)
    except FileNotFoundError:
        raise BadInputError(f"rank {shard.rank} cannot open {path}, which rank 0 created: with "
                            "--save-adversarial/--save-explanations a run across machines needs --out on a "
                            "filesystem every machine shares") from None


def _row_bytes(x: torch.Tensor, config: AuditConfig) -> int:
    """What the stages hold per streamed row: attributions per explainer, adversarial rows (written to their
    file block by block when saved, so one block's worth), curves."""
    one = x[0].numel() * 4
    runs = len(config.attacks) * (2 if config.target_class is not None else 1)
    kept = runs * max(len(config.eps), len(config.eps_l2 or ())) if config.save_adversarial else 1
    return one * (len(config.explainers) + kept + 2) + len(config.explainers) * 2 * 8 * 66


# groups of a row table that are not one entry per row: per block, re-picked or merged on rank 0
PER_BLOCK_GROUPS = ("gallery", "fractions", "sanity_labels", "notes", "attention_examples", "flipped")


def _objects(items: list) -> np.ndarray:
    """A 1-D object array of ``items`` (row tables are arrays; these are small picked examples)."""
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


def audit_rows(detector: Detector, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, config: AuditConfig,
               attacks: dict, *, domain: Domain, baseline: torch.Tensor, relevant: np.ndarray | None,
               positive: int | None, plan: MemoryPlan, timing: dict[str, float], progress: bool,
               n_rows: int | None = None) -> RowTable:
    """Every per-sample stage on a block of rows with global indices ``index`` (a multiple of the attack
    chunk from its start). ``baseline`` is the removal baseline, (*shape) or the block's rows (n, *shape);
    ``relevant`` the block's rows of the localisation ground truth; ``n_rows`` how many rows the whole audit
    has (default: this block is all of them). Returns the block's row table:
    ``index``, ``proba`` (clean probabilities), ``per_sample`` (metric name -> values, aggregated later),
    ``curves`` (name -> (rows, points)), ``sanity_curves`` (explainer -> (rows, cascade steps)), ``masking``
    (the masking checks' own attacks) and, when asked, ``adversarial`` / ``explanations`` tensors. The groups
    in :data:`PER_BLOCK_GROUPS` are not one entry per row: ``gallery`` holds the block's first correct and
    misclassified rows (global ``index`` and attributions), ``attention_examples`` and ``flipped`` the
    block's candidates for the report (global indices; re-picked on rank 0), ``fractions`` and
    ``sanity_labels`` one row per block (the curves' x-axes, the same in every block), ``notes`` the
    stages' reasons for skipped metrics."""

    def timed(stage: str, started: float) -> None:
        timing[stage] = timing.get(stage, 0.0) + time.perf_counter() - started

    index_np = index.cpu().numpy()
    table: RowTable = {"rows": {"index": index_np}}
    started = time.perf_counter()
    proba = predict_proba(detector, x, batch_size=plan.forward_batch)
    pred = proba.argmax(1)
    table["rows"]["proba"] = proba.cpu().numpy().astype(np.float64)
    timed("clean", started)

    started = time.perf_counter()
    robust = run_attacks(detector, x, y, pred, attacks, list(config.eps), domain=domain, seed=config.seed,
                         batch_size=plan.attack_batch, keep_examples=config.save_adversarial,
                         progress=progress, positive=positive, n_classes=detector.n_classes,
                         target=config.target_index, index=index, eps_l2=list(config.grid("l2")),
                         targeted=config.build_targeted_attacks())
    per_sample = dict(robust.per_sample)
    table["attention_examples"] = {"example": _objects(
        [replace(e, index=int(index_np[e.index])) for e in robust.attention_examples])}
    table["flipped"] = {"example": _objects(
        [replace(e, index=int(index_np[e.index])) for examples in robust.flipped.values() for e in examples])}
    if config.masking_checks:
        from auditor.masking import masking_attack_rows

        table["masking"] = masking_attack_rows(detector, x, y, attacks, list(config.eps), domain=domain,
                                               seed=config.seed, batch_size=plan.attack_batch, index=index)
    if config.save_adversarial:
        table["adversarial"] = {"x": x.cpu().numpy(), "y": y.cpu().numpy(),
                                **{k: v.numpy() for k, v in robust.adversarial.items()}}
    del robust
    timed("robustness", started)

    started = time.perf_counter()
    attributions = explain_all(detector, x, pred, config, baseline=baseline, progress=progress, index=index,
                               batch_size=plan.attack_batch, gradient_inputs=plan.gradient_inputs)
    explainers = {name: make_explainer(name, max_inputs=plan.gradient_inputs) for name in attributions}
    timed("explain", started)

    started = time.perf_counter()
    faithful = faithfulness_stage(detector, x, pred, attributions, baseline=baseline, seed=config.seed,
                                  index=index, metrics=config.faithfulness_metrics, explainers=explainers,
                                  max_batch=plan.forward_batch)
    per_sample.update(faithful.per_sample)
    notes: dict[str, str] = dict(faithful.skipped)
    table["curves"] = {name: curve.astype(np.float32) for name, curve in faithful.curves.items()}
    table["fractions"] = {name: np.asarray(values)[None, :] for name, values in faithful.fractions.items()}
    timed("faithfulness", started)

    started = time.perf_counter()
    agreed = agreement_stage(detector, x, pred, attributions, baseline=baseline, seed=config.seed, index=index)
    per_sample.update(agreed.per_sample)
    timed("agreement", started)
    started = time.perf_counter()
    sane = sanity_stage(detector, x, pred, attributions, baseline=baseline, seed=config.seed, index=index,
                        explainers=explainers, n_rows=n_rows, max_batch=plan.forward_batch, y=y)
    per_sample.update(sane.per_sample)
    notes.update(sane.skipped)
    table["sanity_curves"] = {name: values for name, (_, values) in sane.curves.items()}
    table["sanity_labels"] = {name: np.asarray(labels, dtype=str)[None, :]
                              for name, (labels, _) in sane.curves.items()}
    timed("sanity", started)
    started = time.perf_counter()
    trusted = trust_stage(detector, x, pred, attributions, baseline=baseline, max_batch=plan.forward_batch)
    per_sample.update(trusted.per_sample)
    if trusted.rows:
        table["trust"] = trusted.rows
    timed("trust", started)
    started = time.perf_counter()
    located = localisation_stage(detector, x, pred, attributions, baseline=baseline, seed=config.seed,
                                 index=index, relevant=relevant)
    per_sample.update(located.per_sample)
    notes.update(located.skipped)
    timed("localisation", started)
    started = time.perf_counter()
    per_sample.update(sparsity_stage(detector, x, max_batch=plan.forward_batch).per_sample)
    timed("sparsity", started)
    table["notes"] = {name: np.asarray([why], dtype=object) for name, why in notes.items()}

    table["per_sample"] = per_sample
    correct = (pred == y).cpu().numpy()
    chosen = np.concatenate([np.flatnonzero(correct)[:GALLERY_SIZE], np.flatnonzero(~correct)[:GALLERY_SIZE]])
    table["gallery"] = {"index": index_np[chosen],
                        **{name: a[chosen].cpu().numpy() for name, a in attributions.items()}}
    if config.save_explanations:
        table["explanations"] = {"x": x.cpu().numpy(), "y": y.cpu().numpy(), "pred": pred.cpu().numpy(),
                                 **{f"attr/{k}": v.cpu().numpy() for k, v in attributions.items()}}
    return table


def summarise(tables: RowTable, subject: Subject, config: AuditConfig, attacks: dict, *,
              timing: dict[str, float], plan: MemoryPlan, x: torch.Tensor, baseline: torch.Tensor) -> AuditResult:
    """Rank 0: the gathered rows of every shard become metrics, intervals, checks and report data."""
    data = subject.data
    detector = subject.detector
    n_classes = detector.n_classes
    order = np.argsort(tables["rows"]["index"], kind="stable")
    if not np.array_equal(tables["rows"]["index"][order], np.arange(len(data))):
        raise RuntimeError("the gathered shards do not cover every audited row exactly once")
    rows = {group: {name: values[order] for name, values in table.items()}
            for group, table in tables.items() if group not in PER_BLOCK_GROUPS}
    bootstrap = Bootstrap(len(data), seed=config.seed)
    proba_np = rows["rows"]["proba"]
    metrics, skipped = clean_metrics(data.y, proba_np, positive=data.positive_class, n_classes=n_classes,
                                     bootstrap=bootstrap)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(confusion, (data.y, proba_np.argmax(1)), 1)
    sample_metrics, sample_skipped = aggregate(rows.get("per_sample", {}), bootstrap)
    metrics.update(sample_metrics)
    skipped.update(sample_skipped)
    skipped.update({name: str(values[0]) for name, values in tables.get("notes", {}).items()})
    checks = []
    if config.masking_checks:
        from auditor.masking import CHECK_METRICS, evaluate_checks, verdict

        checks = evaluate_checks(metrics, rows["masking"], attacks, {"linf": list(config.eps),
                                                                     "l2": list(config.grid("l2"))},
                                 n=len(data))
        for kind, name in CHECK_METRICS.items():
            value = verdict(checks, kind)
            if value is not None:
                metrics[name] = MetricValue(value)
    fractions = {name: values[0].tolist() for name, values in tables.get("fractions", {}).items()}
    removal = {}
    for name in config.explainers:
        kinds = [kind for kind in REMOVAL_KINDS if f"{kind}.{name}" in rows.get("curves", {})]
        if kinds:  # only the curves the chosen metrics need were computed
            removal[name] = {"fractions": fractions[f"{kinds[0]}.{name}"],
                             **{kind: rows["curves"][f"{kind}.{name}"].mean(0, dtype=np.float64).tolist()
                                for kind in kinds}}
    sanity_labels = tables.get("sanity_labels", {})
    sanity_curves = mean_sanity_curves(SanityOutcome(curves={
        name: ([str(label) for label in sanity_labels[name][0]], values)
        for name, values in rows.get("sanity_curves", {}).items()}))
    flipped = _pick_flipped(tables.get("flipped", {}).get("example", []), list(attacks))
    hidden = _hidden_importance_view(rows.get("trust", {}), rows["rows"]["index"], data, detector, proba_np)
    result = AuditResult(
        metrics=metrics, skipped=skipped, timing={k: round(v, 3) for k, v in timing.items()}, n_samples=len(data),
        robustness_curves=robustness_curves(
            metrics, curve_names(list(attacks), config.build_targeted_attacks()),
            {"linf": list(config.eps), "l2": list(config.grid("l2"))}), removal_curves=removal,
        confusion=confusion.tolist(), gallery=_gallery(data, proba_np, tables["gallery"]),
        masking=[c.to_dict() for c in checks],
        sanity_curves=sanity_curves, hidden_importance=hidden,
        probabilities=proba_np.tolist(), labels=[int(v) for v in data.y],
        attention_examples=_pick_attention_examples(tables.get("attention_examples", {}).get("example", []),
                                                    list(attacks)),
        adversarial_gallery=_adversarial_gallery(detector, data, x, proba_np, flipped, metrics, config,
                                                 baseline=baseline),
    )
    result.memory = plan.to_dict()
    return result


def _hidden_importance_view(rows: dict[str, np.ndarray], index: np.ndarray, data: Dataset, detector: Detector,
                            proba: np.ndarray) -> list[dict]:
    """The samples whose most erasure-important token got the least of the lead attention explainer's mass,
    ready for the report: data row, true and predicted class, the token's name, its drop and its share."""
    lead = next((name for name in LEAD_EXPLAINERS if f"share/{name}" in rows), None)
    if lead is None:
        return []
    token_map = detector.token_map
    names = token_names(token_map, list(data.feature_names))
    view = []
    for sample in worst_samples(rows, index, explainer=lead, n_tokens=len(input_tokens(token_map))):
        i = sample["index"]
        view.append({**sample, "explainer": lead, "row": int(data.row_index[i]), "token": names[sample["token"]],
                     "label": data.class_names[int(data.y[i])],
                     "predicted": data.class_names[int(proba[i].argmax())]})
    return view


def _pick_attention_examples(candidates, attacks: list[str]) -> list:
    """Per attention attack (in run order) the KEPT_EXAMPLES gathered candidates with the largest JSD (NaN
    last, ties by global index): what one pass over all rows picks."""
    picked = []
    for name in attacks:
        mine = [e for e in candidates if e.attack == name]
        mine.sort(key=lambda e: (-(e.jsd if np.isfinite(e.jsd) else -1.0), e.index))
        picked += mine[:KEPT_EXAMPLES]
    return picked


def _pick_flipped(candidates, attacks: list[str]) -> dict:
    """Per attack the first KEPT_EXAMPLES flipped samples by global index."""
    flipped = {}
    for name in attacks:
        mine = sorted((e for e in candidates if e.attack == name), key=lambda e: e.index)
        if mine:
            flipped[name] = mine[:KEPT_EXAMPLES]
    return flipped


def explain_all(detector: Detector, x: torch.Tensor, target: torch.Tensor, config: AuditConfig, *,
                baseline: torch.Tensor, progress: bool, index: torch.Tensor | None = None,
                batch_size: int | None = None, gradient_inputs: int | None = None) -> dict[str, torch.Tensor]:
    """Every configured explainer over batches of at most ``batch_size`` rows; the explainers that only read
    attention weights share one ``forward_with_attention`` per batch. Explainers that evaluate the model on
    several inputs per sample (``steps``: integrated gradients) take at most ``gradient_inputs`` model inputs
    at a time. ``index``: the rows' global indices (random draws are keyed by them)."""
    index = torch.arange(len(x)) if index is None else index
    batch_size = batch_size or config.batch_size
    explainers = {name: make_explainer(name, **({} if gradient_inputs is None else {"max_inputs": gradient_inputs}))
                  for name in config.explainers}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in explainers}
    readers = [name for name, explainer in explainers.items() if isinstance(explainer, AttentionExplainer)]
    batches = range(0, len(x), batch_size)
    bar = tqdm(total=len(explainers) * len(batches), desc="explain", unit="batch",
               disable=None if progress else True, leave=False)
    try:
        for start in batches:
            rows = slice(start, start + batch_size)
            x_rows, target_rows, index_rows = x[rows], target[rows], index[rows]
            per_sample_baseline = baseline.shape == x.shape
            rows_baseline = baseline[rows] if per_sample_baseline else baseline
            attentions = None
            if readers:
                with torch.no_grad():
                    _, attentions = detector.forward_with_attention(x_rows)
            for name, explainer in explainers.items():
                step = len(x_rows)
                if gradient_inputs is not None and name not in readers:
                    step = max(1, min(step, gradient_inputs // max(1, int(getattr(explainer, "steps", 1)))))
                for sub in range(0, len(x_rows), step):
                    part = slice(sub, sub + step)
                    parts[name].append(explainer.explain(
                        detector, x_rows[part], target_rows[part],
                        baseline=rows_baseline[part] if per_sample_baseline else rows_baseline,
                        seed=config.seed, index=index_rows[part],
                        attentions=attentions if name in readers else None).detach())
                bar.update()
    finally:
        bar.close()
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def _gallery(data: Dataset, proba: np.ndarray, candidates: dict[str, np.ndarray]) -> list[SampleView]:
    """The first few correct and the first few misclassified samples, with their top features by attention.
    ``candidates``: global ``index`` of rows that may be shown and their attributions per explainer."""
    pred = proba.argmax(1)
    correct_rows = np.flatnonzero(pred == data.y)[:GALLERY_SIZE]
    wrong_rows = np.flatnonzero(pred != data.y)[:GALLERY_SIZE]
    where = {int(row): i for i, row in enumerate(candidates["index"])}
    attributions = {name: values for name, values in candidates.items() if name != "index"}
    if not attributions:
        return []
    return [_sample_view(data, int(row), data.x[row], proba[row],
                         {name: torch.from_numpy(np.asarray(values[where[int(row)]]))
                          for name, values in attributions.items()})
            for row in [*correct_rows, *wrong_rows]]


def _sample_view(data: Dataset, row: int, x: np.ndarray, proba: np.ndarray,
                 attributions: dict[str, torch.Tensor]) -> SampleView:
    """One sample's view: the top features by the lead explainer, each attribution scaled to its largest magnitude."""
    lead = "attention" if "attention" in attributions else next(iter(attributions))
    top = np.argsort(-attributions[lead].flatten().cpu().numpy(), kind="stable")[:GALLERY_FEATURES]
    scaled, maps = {}, {}
    for name, attribution in attributions.items():
        values = attribution.detach().cpu().double().numpy()
        peak = float(np.abs(values).max()) or 1.0
        scaled[name] = (values.flatten()[top] / peak).tolist()
        maps[name] = (values / peak).tolist()
    predicted = int(proba.argmax())
    return SampleView(
        row=int(data.row_index[row]), label=data.class_names[int(data.y[row])],
        predicted=data.class_names[predicted], confidence=float(proba.max()),
        correct=bool(predicted == data.y[row]), features=[data.feature_names[i] for i in top],
        values=[float(x.flatten()[i]) for i in top], attributions=scaled,
        x=np.asarray(x, dtype=np.float64).tolist(), maps=maps,
    )


def _adversarial_gallery(detector: Detector, data: Dataset, x: torch.Tensor, proba: np.ndarray, flipped: dict,
                         metrics: dict[str, MetricValue], config: AuditConfig, *,
                         baseline: torch.Tensor) -> list[SampleView]:
    """A few samples the strongest L-inf attack (lowest robust accuracy at the largest L-inf eps; L2 budgets are
    other units) flips, with each explainer's attribution of the adversarial input for its new prediction."""
    largest = format_eps(max(config.eps))
    ranked = sorted((metrics[f"robust.accuracy.{name}@{largest}"].value, name) for name, examples in flipped.items()
                    if examples and ATTACKS[name].norm == "linf" and f"robust.accuracy.{name}@{largest}" in metrics)
    if not ranked:
        return []
    examples = flipped[ranked[0][1]]
    x_adv = torch.stack([e.x_adv for e in examples]).to(x.device)
    index = torch.tensor([e.index for e in examples])
    with torch.no_grad():
        adv_proba = torch.softmax(detector(x_adv), dim=1).cpu().double().numpy()
    target = torch.as_tensor(adv_proba.argmax(1), device=x.device)
    if baseline.shape == x.shape:  # a per-sample removal baseline (blur): the rows of these samples
        baseline = baseline[index.to(baseline.device)]
    attributions = {name: make_explainer(name).explain(detector, x_adv, target, baseline=baseline, seed=config.seed,
                                                       index=index).detach()
                    for name in config.explainers}
    views = []
    for k, example in enumerate(examples):
        clean_x = x[example.index].cpu().double().numpy()
        adv_x = x_adv[k].cpu().double().numpy()
        view = _sample_view(data, example.index, adv_x, adv_proba[k], {n: a[k] for n, a in attributions.items()})
        moved = np.argsort(-np.abs(adv_x - clean_x).flatten(), kind="stable")[:GALLERY_FEATURES]
        view.attack, view.eps = example.attack, example.eps
        view.clean_predicted = data.class_names[int(proba[example.index].argmax())]
        view.changes = [(data.feature_names[i], float(clean_x.flatten()[i]), float(adv_x.flatten()[i]))
                        for i in moved if adv_x.flatten()[i] != clean_x.flatten()[i]]
        views.append(view)
    return views
