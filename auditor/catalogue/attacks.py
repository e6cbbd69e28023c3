"""What the report and the gates need to know of the attacks by name, without running any: which attacks
flip the prediction and which count toward a norm's worst case, the one-line definition of each, the words for
each norm's budgets, and the robust-accuracy curves (their names, their norm, their points in a metrics table).
The robustness stage reads the same facts, so the report renders from results.json and this catalogue alone."""

from __future__ import annotations

from dataclasses import dataclass

from attacks import TEXT_ATTENTION_ATTACKS, attack_class
from auditor.metrics import MetricValue, format_eps

FLIPPING_ATTENTION_ATTACKS = ("attention-guided", "stealth", "attention-guided-sub", "stealth-sub",
                              "attention-guided-edit", "stealth-edit")
HIJACK_ATTACKS = ("attention-hijack", "attention-hijack-sub", "attention-hijack-edit")
# the per-sample worst case over each norm's evasion attacks; text's over the label-preserving attacks at each
# budget (embedding-pgd, a relaxation no real text reaches, and hotflip-any, which may change the meaning, in none)
WORST = {"linf": "worst", "l2": "worst-l2", "tokens": "worst-tokens"}
TARGETED_SUFFIX = "-targeted"


@dataclass(frozen=True)
class NormLabels:
    """How the outputs word one norm's budgets (the report, summary.md, the model card, the gates' hints)."""

    name: str  # in a sentence: "worst case over every L-inf evasion attack"
    axis: str  # a robustness plot's budget axis
    unit: str  # a budget axis shared with no other norm's label: the plots of one metric against its budget
    title: str  # beside a metric table's family; none for L-inf, the budget's default units
    budget: str  # one budget of the headline, "{}" its value
    option: str  # the command-line option that sets the grid


# in the order the robustness plot draws its panels
NORM_LABELS = {
    "linf": NormLabels("L-inf", "eps (fraction of each feature's range, L-inf)",
                       "eps (fraction of each feature's range)", "", "L-inf eps {}", "--eps"),
    "l2": NormLabels("L2", "eps (L2 norm, [0, 1] units)", "eps (L2 norm, [0, 1] units)", "L2 budgets", "L2 eps {}",
                     "--eps-l2"),
    "tokens": NormLabels("token", "tokens changed (--token-budget)", "tokens changed", "tokens changed",
                         "{} tokens changed", "--token-budget"),
    "embedding-linf": NormLabels("embedding L-inf", "eps (x mean embedding norm / sqrt(dim), L-inf)",
                                 "eps (x mean embedding norm / sqrt(dim))", "embedding space, L-inf",
                                 "embedding L-inf eps {}", "--eps"),
    "embedding-l2": NormLabels("embedding L2", "eps (x mean embedding norm per token, L2)",
                               "eps (x mean embedding norm per token)", "embedding space, L2", "embedding L2 eps {}",
                               "--eps"),
}

# a one-line definition per attack this stage runs (the report's Method section); the reference comes
# from the attack's class
ATTACK_DEFINITIONS = {
    "fgsm": "one signed-gradient step of size eps on the cross-entropy (L-inf)",
    "pgd": "projected gradient ascent on the cross-entropy from a random start in the eps-ball (L-inf)",
    "pgd-l2": "projected gradient ascent on the cross-entropy with normalised steps (L2)",
    "cw": "minimum-norm L2 attack; a sample counts as broken at eps when its perturbation's norm is <= eps",
    "deepfool": "minimum-norm L2 attack stepping to the nearest linearised decision boundary",
    "square": "black-box, score-based random search over square patches (L-inf)",
    "autoattack": "the standard protocol: APGD-CE, APGD-T, FAB-T and Square (5,000 queries) in sequence, worst "
                  "case per sample (L-inf)",
    "autoattack-fast": "AutoAttack with Square at 1,000 queries instead of 5,000: faster and possibly weaker, not "
                       "the standard protocol (L-inf)",
    "attention-shift": "moves the attention as far as possible while keeping the prediction (a forged explanation)",
    "attention-hijack": "moves attention mass onto tokens the attacker chooses while keeping the prediction",
    "attention-guided": "gradient ascent on the cross-entropy restricted to the most-attended tokens' inputs",
    "stealth": "flips the prediction while keeping the attention close to the clean one",
    "typo": "text: one typing slip per word (swap, drop, insert or replace by a neighbouring key), re-tokenised by "
            "the model's tokeniser; greedy over the words ranked by importance, verified by forward passes, within "
            "the budget in words",
    "homoglyph": "text: one look-alike character per word (Unicode confusable or leetspeak), re-tokenised by the "
                 "model's tokeniser; greedy as typo, within the budget in words",
    "exhaustive-typo": "text: every single-word typo verified per step (exact at one word)",
    "exhaustive-homoglyph": "text: every single-word look-alike verified per step (exact at one word)",
    "hotflip": "text: greedy substitution from the --substitutions table of one more token per step, ranked by the "
               "first-order estimate of the loss and verified by forward passes, within the token budget",
    "hotflip-any": "text: hotflip over any token, protected words included: an upper bound that may change what the "
                   "message says, outside worst-tokens",
    "exhaustive-substitution": "text: every single substitution the table allows verified per step (exact at one "
                               "token)",
    "attention-shift-sub": "text: token substitutions that move the attention most (JSD), prediction kept",
    "attention-hijack-sub": "text: substitutions that pull the attention onto each message's least-attended words, "
                            "prediction kept",
    "attention-guided-sub": "text: hotflip on the most-attended positions only",
    "stealth-sub": "text: token substitutions that flip the prediction with the attention closest to the clean one",
    "attention-shift-edit": "text: word edits (typos, look-alikes) that move the attention most (JSD), prediction "
                            "kept",
    "attention-hijack-edit": "text: word edits that pull the attention onto each message's least-attended words, "
                             "prediction kept",
    "attention-guided-edit": "text: word edits on the most-attended positions only",
    "stealth-edit": "text: word edits that flip the prediction with the attention closest to the clean one",
    "embedding-pgd": "text: pgd on the token embeddings, L-inf per coordinate (eps x r / sqrt(dim)); a continuous "
                     "relaxation no real text reaches",
    "embedding-pgd-l2": "text: pgd on the token embeddings, L2 per token (eps x r); a continuous relaxation no real "
                        "text reaches",
}


def is_attention_attack(name: str) -> bool:
    from attacks import ATTENTION_ATTACKS
    return name in ATTENTION_ATTACKS or name in TEXT_ATTENTION_ATTACKS


def is_evasion_attack(name: str) -> bool:
    """Whether the attack tries to flip the prediction (every standard attack, attention-guided, stealth);
    attention-shift and attention-hijack keep it."""
    return not is_attention_attack(name) or name in FLIPPING_ATTENTION_ATTACKS


def is_any_token(name: str) -> bool:
    """Whether the attack is an upper bound that may change what a message says (hotflip-any): outside every
    worst case and the default gate."""
    return bool(getattr(attack_class(name.removesuffix(TARGETED_SUFFIX)), "any_token", False))


def in_worst_case(name: str) -> bool:
    """Whether the attack counts toward its norm's worst case: an evasion attack that keeps the meaning."""
    return is_evasion_attack(name) and not is_any_token(name)


def robustness_curves(metrics: dict[str, MetricValue], names: list[str],
                      grids: dict[str, list[float]]) -> dict[str, list[tuple[float, float]]]:
    """Robust accuracy against eps per curve name (an attack, ``worst``, ``worst-l2``, ``ATTACK-targeted``), on
    the grid of the name's norm (``grids``: norm -> eps values), from the aggregated metrics (for the report's
    plots)."""
    curves = {}
    for name in names:
        for eps in grids[curve_norm(name)]:
            key = f"robust.accuracy.{name}@{format_eps(eps)}"
            if key in metrics:
                curves.setdefault(name, []).append((eps, metrics[key].value))
    return curves


def curve_names(attacks: list[str], targeted: dict | list) -> list[str]:
    """The robust-accuracy curves in report order: the worst cases, each attack, each targeted run."""
    return [*WORST.values(), *attacks, *(f"{name}{TARGETED_SUFFIX}" for name in targeted)]


def curve_norm(name: str) -> str:
    """The norm of a robust-accuracy curve's name: the attack's, ``worst-l2`` L2, ``worst`` L-inf."""
    if name in WORST.values():
        return next(norm for norm, worst in WORST.items() if worst == name)
    return attack_class(name.removesuffix(TARGETED_SUFFIX)).norm
