"""Checks that tell a masked gradient from real robustness, and an attack that has not converged.

An audit that a masked gradient fools is worse than none (Athalye et al. 2018;
Carlini et al. 2019, "On Evaluating Adversarial Robustness"). With n audited
samples and tolerance t = max(0.02, 3/n), two kinds of check:

Signs of gradient masking (``robust.masking_suspected`` = 1 when one fails):

1. ``iterative-beats-single-step``: pgd's robust accuracy <= fgsm's + t at every eps;
2. ``unbounded-succeeds``: pgd at eps = 1.0 (the whole [0, 1] box) leaves robust
   accuracy <= 0.05 (run by the check itself). Its pgd is fixed (:data:`UNBOUNDED`):
   50 signed steps of 0.1 from the clean sample itself, one run. The question is
   whether the gradient at and from the sample leads across the decision boundary:
   a random start would be a uniform guess of the whole box (restarts a random
   search that a masked model passes), and the audited pgd's step of 0.25 x eps
   overshoots at eps 1. Measured at seed 0 on the flows detector (300 test rows):
   from a random start 20 x 0.25 leaves 0.070, 100 x 0.05 0.077 (random starts
   land in basins of the box that hold a correct class); from the clean sample
   20 x 0.25, 50 x 0.1 and 100 x 0.05 all leave 0.010. On breast-cancer (143
   rows) from the clean sample 20 x 0.25 leaves 0.063 (oscillation), 50 x 0.1
   0.007. With frozen features the attacker
   may not move, the model may truly rest on them: pgd then also runs with every
   input free, and when that succeeds the held run's failure is "inconclusive"
   (the gradient leads somewhere; the frozen features decide the rest), not a
   sign of masking;
3. ``black-box-not-stronger``: square's robust accuracy >= pgd's - max(0.05, 3/n)
   at the same eps.

Signs that the attacks have not converged (``robust.not_converged`` = 1 when one fails):

4. ``more-effort-same-answer``: pgd with 5x the steps and 2x the restarts (the
   same step schedule as the audited pgd; 100 steps x 20 restarts for the default) lowers robust accuracy by at most t (run by the
   check itself, at every eps);
5. ``monotone-in-eps``: each attack's robust accuracy does not increase with eps
   by more than t (on its own norm's grid): the larger budget's search found less.

On text (token ids) the checks are those that make sense for a discrete search:

6. ``wider-search-finds-no-less`` (a sign of masking): hotflip with 4x the candidates and twice the beam
   (:data:`WIDER`) leaves robust accuracy <= the audited hotflip's + t at every token budget: more search
   finding less means the first-order estimate misleads the search;
7. ``wider-search-same-answer`` (convergence): that wider search lowers robust accuracy by at most t;
8. ``monotone-in-eps`` as above, over the token budgets: a larger budget never helps less.

Every check uses the untargeted attacks. A check whose attacks did not run is
reported as not run, never as passed; neither metric counts a check that did not
run or was inconclusive.

Sparse attention (sparsemax, entmax15: ``detectors.blocks``) gives exactly zero gradient through every
token outside the attention's support, by construction of the attention function. That vanishing gradient
is not robustness: :func:`sparse_attention_note` says so beside the checks of such a detector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from attacks import Attack, Domain, attack_class, make_attack
from auditor.catalogue.specs import MASKING_SPECS as SPECS
from auditor.metrics import format_eps
from auditor.catalogue.attacks import is_evasion_attack
from auditor.stages.robustness import aligned_batch, craft, craft_each, predict
from auditor.stages.base import Block, Stage
from detectors.inputs.text import is_token_ids
from detectors.blocks import SPARSE_ATTENTION

MEANING = {
    "iterative-beats-single-step": "an iterative attack weaker than a single step means its gradient steps go "
                                   "nowhere: typical of masked or shattered gradients",
    "unbounded-succeeds": "with the whole input box allowed, any working attack must break almost every sample; "
                          "if not, the gradient does not lead anywhere",
    "black-box-not-stronger": "a black-box attack beating the white-box one means gradients are misleading",
    "more-effort-same-answer": "if more steps and restarts keep lowering robust accuracy, the attacks have not "
                               "converged and the reported numbers overstate robustness",
    "monotone-in-eps": "a larger budget contains every smaller one; accuracy rising with eps means the attack "
                       "fails to optimise",
    "wider-search-finds-no-less": "a search over more substitutions that breaks fewer messages means the "
                                  "gradient's first-order estimate misleads the search",
    "wider-search-same-answer": "if a wider search keeps breaking more messages, the substitution search has not "
                                "converged and the reported numbers overstate robustness",
}
# which metric each check counts toward
KIND = {"iterative-beats-single-step": "masking", "unbounded-succeeds": "masking", "black-box-not-stronger": "masking",
        "more-effort-same-answer": "convergence", "monotone-in-eps": "convergence",
        "wider-search-finds-no-less": "masking", "wider-search-same-answer": "convergence"}
CHECK_METRICS = {"masking": "robust.masking_suspected", "convergence": "robust.not_converged"}
METRIC_MEANING = {
    "robust.masking_suspected": "1: a sign of gradient masking (an iterative attack weaker than one step, the "
                                "unbounded attack failing, or a black-box attack beating the white-box one); "
                                "the robust accuracies may come from a gradient that misleads the attacks",
    "robust.not_converged": "1: more effort keeps lowering robust accuracy (5x the steps and 2x the restarts, or a larger eps "
                            "finding less): the attacks stopped early and the numbers overstate robustness",
}


#: the unbounded check's own pgd (module docstring, check 2): from the clean sample, steps fine enough to settle
UNBOUNDED = {"schedule": "constant", "steps": 50, "step_size": 0.1, "restarts": 1, "random_start": False}


#: the text checks' wider hotflip: this many times the audited hotflip's candidates and beam
WIDER = {"candidates": 4, "beam": 2}


#: the attack each family of checks searches harder with (pgd with more effort; hotflip searching wider on text)
SEARCHED = {False: "pgd", True: "hotflip"}


def planned_check_metrics(evasion_grids: dict[str, tuple[float, ...]], *, text: bool = False) -> list[str]:
    """The check metrics an audit computes, from its evasion attacks' grids (attack -> grid): masking always (the
    unbounded check), on text only with hotflip (the wider search); convergence with the searched attack (pgd,
    hotflip on text) or an evasion attack with two budgets."""
    searched = SEARCHED[text] in evasion_grids
    names = [CHECK_METRICS["masking"]] if searched or not text else []
    if searched or any(len(grid) > 1 for grid in evasion_grids.values()):
        names.append(CHECK_METRICS["convergence"])
    return names


def text_masking_rows(model, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], budgets: list[int], *,
                      domain, seed: int, batch_size: int, index: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The text checks' own attack, per sample (1.0 where still correct): ``wider@BUDGET``, hotflip with
    :data:`WIDER` times the audited hotflip's candidates and beam, at each token budget (one search to the
    largest, :func:`auditor.stages.robustness.craft_each`)."""
    if "hotflip" not in attacks or getattr(domain, "pairs", None) is None:  # hotflip runs only with a table
        return {}
    base = attacks["hotflip"]
    candidates = None if base.candidates is None else WIDER["candidates"] * base.candidates
    wider = make_attack("hotflip", candidates=candidates, beam=WIDER["beam"] * base.beam, batch_size=base.batch_size)
    return _still_correct(model, wider, x, y, budgets, "wider", domain=domain, seed=seed, batch_size=batch_size,
                          index=index)


def evaluate_text_checks(metrics: dict, rows: dict[str, np.ndarray], attacks: dict[str, Attack],
                         grids: dict[str, list[float]], *, n: int) -> list[Check]:
    """The text checks (module docstring, 6-8) from the aggregate robust accuracies and the wider search's rows."""
    checks = _Checks(n)
    if "hotflip" in attacks and all(f"wider@{format_eps(b)}" in rows for b in grids["tokens"]):
        pairs = _against(metrics, rows, "hotflip", "wider", grids["tokens"])
        wider = f"hotflip with {WIDER['candidates']}x the candidates and {WIDER['beam']}x the beam: "
        show = "{:g} tokens: {:.3f} -> {:.3f}".format
        checks.compare("wider-search-finds-no-less", pairs, lambda r, w: w > r + checks.tolerance, show,
                       lead=wider, tail=f" (tolerance {checks.tolerance:.3f})")
        checks.compare("wider-search-same-answer", pairs, lambda r, w: r - w > checks.tolerance, show,
                       lead=wider, tail=f" (tolerance {checks.tolerance:.3f})")
    else:
        checks.add("wider-search-finds-no-less", "not run", "needs hotflip in --attacks and a --substitutions table")
        checks.add("wider-search-same-answer", "not run", "needs hotflip in --attacks and a --substitutions table")
    _monotone(checks.add, metrics, attacks, grids, checks.tolerance)
    return checks.done


@dataclass
class Check:
    name: str
    status: str  # "passed", "failed", "inconclusive" or "not run"
    detail: str
    meaning: str
    metric: str = ""  # the check metric it counts toward (CHECK_METRICS)

    def to_dict(self) -> dict:
        return asdict(self)


def _robust(metrics: dict, attack: str, eps: float) -> float | None:
    value = metrics.get(f"robust.accuracy.{attack}@{format_eps(eps)}")
    return value.value if value is not None else None


class _Checks:
    """The checks as they are judged (``done``), with the tolerance t = max(0.02, 3/n) every comparison of two
    robust accuracies allows (a hair more, so a difference of exactly 3/n does not fail by rounding)."""

    def __init__(self, n: int) -> None:
        self.done: list[Check] = []
        self.tolerance = max(0.02, 3 / n) + 1e-6

    def add(self, name: str, status: str, detail: str) -> None:
        self.done.append(Check(name, status, detail, MEANING[name], CHECK_METRICS[KIND[name]]))

    def compare(self, name: str, pairs: list[tuple], fails, show, *, lead: str = "", tail: str = "") -> None:
        """A check over ``pairs`` (budget, a, b): failed where ``fails(a, b)`` for a budget, its detail those
        budgets (else every budget) each as ``show(budget, a, b)``."""
        bad = [(eps, a, b) for eps, a, b in pairs if fails(a, b)]
        self.add(name, "failed" if bad else "passed", lead + "; ".join(show(*pair) for pair in (bad or pairs)) + tail)


def _against(metrics: dict, rows: dict[str, np.ndarray], attack: str, search: str, grid: list[float]) -> list[tuple]:
    """(budget, the audited attack's robust accuracy, the checks' own ``search`` row's mean) at each budget."""
    return [(eps, _robust(metrics, attack, eps), float(np.mean(rows[f"{search}@{format_eps(eps)}"]))) for eps in grid]


def _correct(model, adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    return (predict(model, adv, batch_size) == y).cpu().numpy().astype(np.float64)


def _still_correct(model, attack: Attack, x: torch.Tensor, y: torch.Tensor, budgets: list[float], search: str, *,
                   domain, seed: int, batch_size: int, index: torch.Tensor | None) -> dict[str, np.ndarray]:
    """``SEARCH@BUDGET``: per sample 1.0 where ``attack`` at that budget leaves it classified correctly."""
    examples = craft_each(model, attack, x, y, budgets=budgets, domain=domain, seed=seed, batch_size=batch_size,
                          index=index)
    return {f"{search}@{format_eps(eps)}": _correct(model, adv, y, batch_size) for eps, adv in zip(budgets, examples)}


def masking_attack_rows(model, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], eps_grid: list[float],
                        *, domain: Domain, seed: int, batch_size: int,
                        index: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """The checks' own attacks, per sample (1.0 where the sample is still classified correctly): ``unbounded``
    (untargeted pgd at eps 1.0), with frozen features also ``unbounded-free`` (every input free), and
    ``stronger@EPS`` (pgd with 5x the steps and 2x the restarts, the audited pgd's schedule). ``index``: global row
    indices, so a shard computes its rows of the whole."""
    batch = aligned_batch(batch_size)
    rows = {}
    audited = attacks.get("pgd") or make_attack("pgd")
    if audited.target_class is not None:
        raise ValueError("the masking checks need the untargeted pgd; AuditConfig.build_attacks gives it")
    pgd = make_attack("pgd", **UNBOUNDED)
    unbounded = craft(model, pgd, x, y, eps=1.0, domain=domain, seed=seed, batch_size=batch, index=index)
    rows["unbounded"] = _correct(model, unbounded, y, batch)
    if not bool(domain.mutable.all()):
        free = replace(domain, mutable=torch.ones_like(domain.mutable))
        unbounded = craft(model, pgd, x, y, eps=1.0, domain=free, seed=seed, batch_size=batch, index=index)
        rows["unbounded-free"] = _correct(model, unbounded, y, batch)
    if "pgd" in attacks:
        base = attacks["pgd"]
        schedule = getattr(base, "schedule", None)
        stronger = make_attack("pgd", steps=5 * base.steps, step_size=base.step_size, restarts=2 * base.restarts,
                               random_start=True, **({} if schedule is None else {"schedule": schedule}))
        rows.update(_still_correct(model, stronger, x, y, eps_grid, "stronger", domain=domain, seed=seed + 1,
                                   batch_size=batch, index=index))
    return rows


def masking_checks(model, x: torch.Tensor, y: torch.Tensor, metrics: dict, attacks: dict[str, Attack],
                   eps_grid: list[float], *, domain: Domain, seed: int, batch_size: int,
                   eps_l2: list[float] | None = None) -> list[Check]:
    """Run the checks' own attacks on every row and evaluate every check (one process)."""
    rows = masking_attack_rows(model, x, y, attacks, eps_grid, domain=domain, seed=seed, batch_size=batch_size)
    grids = {"linf": list(eps_grid), "l2": list(eps_grid if eps_l2 is None else eps_l2)}
    return evaluate_checks(metrics, rows, attacks, grids, n=len(x))


def evaluate_checks(metrics: dict, rows: dict[str, np.ndarray], attacks: dict[str, Attack],
                    grids: dict[str, list[float]], *, n: int) -> list[Check]:
    """The checks from the aggregate robust accuracies and the per-sample rows of the checks' own attacks
    (:func:`masking_attack_rows`, gathered over all samples; ``unbounded-free`` among them when the audit
    holds features fixed). ``grids``: norm -> eps values (``linf``, ``l2``)."""
    checks = _Checks(n)
    add, tolerance = checks.add, checks.tolerance
    eps_grid = list(grids["linf"])

    if "pgd" in attacks and "fgsm" in attacks:
        gaps = [(eps, _robust(metrics, "pgd", eps), _robust(metrics, "fgsm", eps)) for eps in eps_grid]
        checks.compare("iterative-beats-single-step", gaps, lambda p, f: p > f + tolerance,
                       "eps {:g}: pgd {:.3f} vs fgsm {:.3f}".format, tail=f" (tolerance {tolerance:.3f})")
    else:
        add("iterative-beats-single-step", "not run", "needs both fgsm and pgd in --attacks")

    accuracy = float(np.mean(rows["unbounded"]))
    held = f"pgd at eps 1.0 leaves robust accuracy {accuracy:.3f} (must be <= 0.05)"
    frozen = "unbounded-free" in rows
    if accuracy <= 0.05 + 1e-6:
        add("unbounded-succeeds", "passed", held + (" with the frozen features held" if frozen else ""))
    elif frozen:
        free = float(np.mean(rows["unbounded-free"]))
        if free <= 0.05 + 1e-6:
            add("unbounded-succeeds", "inconclusive",
                f"{held} with the frozen features held, {free:.3f} with every input free: the gradient leads "
                "across the boundary, and the samples left correct rest on frozen features the threat model "
                "keeps fixed (no sign of masking; it cannot tell whether pgd is optimal on the mutable ones)")
        else:
            add("unbounded-succeeds", "failed", f"{held} with the frozen features held, {free:.3f} even with "
                                                "every input free")
    else:
        add("unbounded-succeeds", "failed", held)

    if "square" in attacks and "pgd" in attacks:
        margin = max(0.05, 3 / n) + 1e-6
        pairs = [(eps, _robust(metrics, "square", eps), _robust(metrics, "pgd", eps)) for eps in eps_grid]
        checks.compare("black-box-not-stronger", pairs, lambda s, p: s < p - margin,
                       "eps {:g}: square {:.3f} vs pgd {:.3f}".format, tail=f" (margin {margin:.3f})")
    else:
        add("black-box-not-stronger", "not run", "needs both square and pgd in --attacks")

    if "pgd" in attacks:
        checks.compare("more-effort-same-answer", _against(metrics, rows, "pgd", "stronger", eps_grid),
                       lambda r, s: r - s > tolerance, "eps {:g}: {:.3f} -> {:.3f}".format,
                       lead="pgd with 5x the steps and 2x the restarts: ", tail=f" (tolerance {tolerance:.3f})")
    else:
        add("more-effort-same-answer", "not run", "needs pgd in --attacks")

    _monotone(add, metrics, attacks, grids, tolerance)
    return checks.done


def _monotone(add, metrics: dict, attacks: dict[str, Attack], grids: dict[str, list[float]], tolerance: float) -> None:
    """Check 5 (and 8 on text): each attack's robust accuracy non-increasing in its budget, within tolerance."""
    curves = {name: [_robust(metrics, name, eps) for eps in sorted(grids[attack.norm])]
              for name, attack in attacks.items() if len(grids[attack.norm]) > 1}
    curves = {name: values for name, values in curves.items() if all(v is not None for v in values)}
    if curves:
        bad = [(name, values) for name, values in curves.items()
               if any(b > a + tolerance for a, b in zip(values, values[1:]))]
        detail = "; ".join(f"{name}: " + " → ".join(f"{v:.3f}" for v in values) for name, values in (bad or []))
        add("monotone-in-eps", "failed" if bad else "passed",
            detail or f"{len(curves)} attack(s) non-increasing within {tolerance:.3f}")
    else:
        add("monotone-in-eps", "not run", "needs at least two eps values")


def sparse_attention_note(attention: str | None) -> str | None:
    """The caveat shown with the masking checks of a detector with sparse attention, None for the others."""
    if attention not in SPARSE_ATTENTION:
        return None
    return (f"This detector's attention is {attention}: a weight outside the attention's support is exactly 0 "
            "and so is its gradient, by construction of the attention function. Gradient-based attacks (fgsm, "
            "pgd, the attention attacks) get no signal through those weights, only through the supported tokens "
            "and the other layers; a robust accuracy that holds only against them may come from that vanishing "
            "gradient rather than from robustness. Weigh it against a black-box attack (square) and the checks "
            "here.")


def verdict(checks: list[Check], kind: str) -> float | None:
    """``kind`` "masking" or "convergence": 1.0 when one of its checks failed, 0.0 when every one that ran
    passed or was inconclusive, None when none ran."""
    ran = [c for c in checks if KIND[c.name] == kind and c.status != "not run"]
    if not ran:
        return None
    return 1.0 if any(c.status == "failed" for c in ran) else 0.0


class MaskingStage(Stage):
    """With ``masking_checks``: the checks' own attacks on every row (``masking`` row-table group); the
    verdicts (:func:`evaluate_checks`) need every row's robust accuracy, so they are computed once all rows
    are in. Timed with the robustness stage, whose attacks they check."""

    name = "masking"
    timed_as = "robustness"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        if not config.masking_checks:
            return []
        grids = {a: config.grid(attack_class(a).norm) for a in config.attacks
                 if is_evasion_attack(a) and config.runs(a)}
        return planned_check_metrics(grids, text=config.text)

    def run(self, block: Block) -> None:
        """The checks' own attacks on the grid of the searched attack's norm (pgd's L-inf eps, hotflip's token
        budgets)."""
        config = block.config
        if not config.masking_checks:
            return
        text = is_token_ids(block.x)
        rows = text_masking_rows if text else masking_attack_rows
        block.table["masking"] = rows(block.detector, block.x, block.y, block.attacks,
                                      list(config.grid(attack_class(SEARCHED[text]).norm)), domain=block.domain,
                                      seed=config.seed, batch_size=block.plan.attack_batch, index=block.index)
