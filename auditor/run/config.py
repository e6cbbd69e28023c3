"""What an audit runs: profiles (attacks and their settings, explainers, faithfulness metrics, masking
checks) and the :class:`AuditConfig` that binds them to a model's features and classes."""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, replace

from attacks import ATTACKS, TEXT_ATTACKS, attack_class, make_attack
from auditor.stages.explainers import EXPLAINERS
from auditor.stages.faithfulness_metrics import FAITHFULNESS_METRICS, check_metric_names
from detectors.errors import BadInputError
from detectors.inputs import REMOVAL_BASELINES

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
# faithfulness metrics per profile (names as in auditor.stages.faithfulness_metrics.FAITHFULNESS_METRICS); every profile has
# deletion_gain, which the trust verdict reads (attention beating chance, a reference counting as one)
PROFILE_FAITHFULNESS = {"quick": ("deletion", "insertion", "deletion_gain"), "standard": FAITHFULNESS_METRICS,
                        "full": FAITHFULNESS_METRICS}
# text (token ids): the label-preserving word edits (typo, homoglyph, the attention attacks by the same edits) on
# --token-budget words, hotflip from a --substitutions table (skipped without one) on as many tokens,
# embedding-pgd on the --eps grid in embedding units (attacks.text_embedding); hotflip-any, which may change the
# meaning, runs only when named
TEXT_PROFILES = {
    "quick": {"typo": {}, "homoglyph": {}},
    "standard": {"typo": {}, "homoglyph": {}, "hotflip": {}, "attention-shift-edit": {}, "attention-hijack-edit": {},
                 "attention-guided-edit": {}, "stealth-edit": {}, "embedding-pgd": {}},
    "full": {"typo": {"words": 8}, "homoglyph": {"words": 8}, "hotflip": {"beam": 4},
             "attention-shift-edit": {"words": 8}, "attention-hijack-edit": {}, "attention-guided-edit": {},
             "stealth-edit": {}, "embedding-pgd": {}, "embedding-pgd-l2": {}},
}
DEFAULT_TOKEN_BUDGET = (1, 2, 4)
PROFILE_MAX_SAMPLES = {"quick": 1000, "standard": 1000, "full": 5000}
DEFAULT_ATTACKS = tuple(PROFILES["quick"][0])
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
    signature = inspect.signature(attack_class(attack).__init__).parameters
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
    # the model is not deterministic (auditor.run.determinism): AutoAttack runs its "rand" version (EOT)
    randomised_model: bool = False
    max_memory_gb: float | None = None
    attack_params: tuple[tuple[str, str, object], ...] = ()  # (attack, parameter, value): overrides the profile
    target_class: str | None = None  # a class name: targetable attacks aim at it (``--target-class``)
    hijack_features: tuple[str, ...] = ()  # attention-hijack pulls attention onto these (``--hijack-features``)
    # resolved against the audited data by :meth:`bind`
    target_index: int | None = None
    hijack_positions: tuple[int, ...] = ()

    faithfulness_metrics: tuple[str, ...] = PROFILE_FAITHFULNESS["quick"]
    # what a removed position becomes (``--removal-baseline``); None until bound: the input kind's first
    # (mean, or mask for text: a token id has no mean)
    removal_baseline: str | None = None
    # text only: the token budgets of the substitution attacks (``--token-budget``) and the substitution table
    # (``--substitutions``, a JSON file: token -> allowed replacements); ``input_kind`` is set by binding to the
    # model ("text" picks the text attacks, TEXT_PROFILES)
    token_budget: tuple[int, ...] = DEFAULT_TOKEN_BUDGET
    substitutions: str | None = None
    protect: str | None = None  # text only: a file of words no meaning-keeping attack changes (``--protect``)
    input_kind: str | None = None

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
        settings = dict(self.profile_attacks().get(name, {}))
        settings.update({key: value for attack, key, value in self.attack_params if attack == name})
        if name == "attention-hijack" and self.hijack_positions:
            settings["target_positions"] = list(self.hijack_positions)
        if self.randomised_model and name == "autoattack" and \
                "version" in inspect.signature(attack_class(name)).parameters:
            settings.setdefault("version", "rand")
        return settings

    @property
    def text(self) -> bool:
        return self.input_kind == "text"

    def runs(self, attack: str) -> bool:
        """Whether a planned attack runs: a text substitution attack that draws from a table (hotflip, the -sub
        attacks) needs ``--substitutions``; without one its names are skipped with that reason."""
        return self.substitutions is not None or not getattr(attack_class(attack), "needs_table", False)

    def profile_attacks(self) -> dict:
        """The profile's attacks and settings for this input kind (TEXT_PROFILES for text)."""
        return (TEXT_PROFILES if self.text else {name: chosen for name, (chosen, _) in PROFILES.items()})[self.profile]

    def for_kind(self, input_kind: str) -> "AuditConfig":
        """Bound to the model's input kind: on text the profile's text attacks unless ``--attacks`` named others,
        and attack names checked against the kind's registry."""
        attacks = self.attacks
        if input_kind == "text" and attacks == tuple(PROFILES[self.profile][0]):
            attacks = tuple(TEXT_PROFILES[self.profile])
        elif input_kind != "text" and (self.substitutions is not None or self.protect is not None
                                       or self.token_budget != DEFAULT_TOKEN_BUDGET):
            raise BadInputError("--token-budget, --substitutions and --protect apply to text models; this model's "
                                "inputs are "
                                f"{input_kind}")
        return replace(self, input_kind=input_kind, attacks=attacks)

    def grids(self) -> dict[str, list]:
        """Every norm's budgets (:meth:`grid`), for the curves and checks that look a norm up."""
        return {norm: list(self.grid(norm)) for norm in ("linf", "l2", "tokens", "embedding-linf", "embedding-l2")}

    def grid(self, norm: str) -> tuple[float, ...]:
        """The budgets of a norm: ``eps`` for L-inf and the embedding norms, ``eps_l2`` for L2 (resolved by
        :meth:`bind`), ``token_budget`` for token substitutions."""
        if norm in ("linf", "embedding-linf", "embedding-l2"):
            return self.eps
        if norm == "tokens":
            return self.token_budget
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
                for name in self.attacks if attack_class(name).targetable}

    def __post_init__(self) -> None:
        bad = [e for e in self.eps if not (0 < e <= 1)]
        if not self.eps or bad:
            raise BadInputError(f"--eps values must lie in (0, 1] (fractions of each feature's range), got {bad or 'none'}")
        if self.eps_l2 is not None:
            bad = [e for e in self.eps_l2 if not (0 < e < math.inf)]
            if not self.eps_l2 or bad:
                raise BadInputError(f"--eps-l2 values must be positive and finite (L2 norms in [0, 1] units), "
                                    f"got {bad or 'none'}")
        registry = TEXT_ATTACKS if self.text else ATTACKS if self.input_kind else {**ATTACKS, **TEXT_ATTACKS}
        unknown = [a for a in self.attacks if a not in registry]
        if unknown or not self.attacks:
            kind = "text" if self.text else "this model's inputs" if self.input_kind else "any model"
            raise BadInputError(f"unknown attack {unknown[0] if unknown else '(none)'} for {kind}; registered: "
                                f"{', '.join(sorted(registry))}")
        if not self.token_budget or any(int(b) != b or b < 1 for b in self.token_budget):
            raise BadInputError(f"--token-budget values must be whole numbers of tokens >= 1, got "
                                f"{list(self.token_budget)}")
        object.__setattr__(self, "token_budget", tuple(sorted({int(b) for b in self.token_budget})))
        unknown = [e for e in self.explainers if e not in EXPLAINERS]
        if unknown:
            raise BadInputError(f"unknown explainer {unknown[0]}; registered: {', '.join(sorted(EXPLAINERS))}")
        coerced = []
        runs = self.attacks
        if self.input_kind is None and self.attacks == tuple(PROFILES[self.profile][0]):
            runs += tuple(TEXT_PROFILES[self.profile])  # the kind is not known yet: a text model runs these
        for attack, key, value in self.attack_params:
            if attack not in runs:
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
        if self.removal_baseline is not None and self.removal_baseline not in REMOVAL_BASELINES:
            raise BadInputError(f"unknown removal baseline {self.removal_baseline!r}; "
                                f"choose one of {', '.join(REMOVAL_BASELINES)}")
        if self.max_samples < 0 or self.batch_size < 1:
            raise BadInputError("--max-samples must be >= 0 (0 = all rows) and the batch size >= 1")
        if self.hijack_features and "attention-hijack" not in self.attacks:
            raise BadInputError("--hijack-features applies to attention-hijack; add it to --attacks "
                                "(or use --profile standard)")
        if self.target_class is not None and not any(attack_class(a).targetable for a in self.attacks):
            raise BadInputError("--target-class applies to the targetable attacks (fgsm, pgd, pgd-l2, cw, square, "
                                "attention-guided); add one to --attacks")

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["eps"] = [float(e) for e in self.eps]
        payload["eps_l2"] = None if self.eps_l2 is None else [float(e) for e in self.eps_l2]
        payload["attack_params"] = {name: attack.params() for name, attack in self.build_attacks().items()}
        if self.target_index is not None:  # the targeted runs, under the names their metrics carry
            from auditor.catalogue.attacks import TARGETED_SUFFIX

            payload["attack_params"].update({f"{name}{TARGETED_SUFFIX}": attack.params()
                                             for name, attack in self.build_targeted_attacks().items()})
        payload["faithfulness_metrics"] = list(self.faithfulness_metrics)
        return payload
