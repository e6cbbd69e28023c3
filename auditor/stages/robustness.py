"""Robustness stage: robust accuracy, attack success and evasion under each attack and budget,
the stability of attention under the attention attacks, and the gradient-masking checks.

L-inf attacks run on the ``--eps`` grid, L2 attacks (pgd-l2, cw, deepfool) on their own ``--eps-l2`` grid:
the two budgets are different units. The headline is ``robust.accuracy.worst@EPS``, the per-sample worst
case over every L-inf evasion attack that ran at that eps (and ``worst-l2`` over the L2 grid), as AutoAttack
and RobustBench report robust accuracy (Croce & Hein 2020; Croce et al. 2021): a sample counts as robust
only if no attack broke it. attention-shift and attention-hijack keep the prediction and do not count.

With ``--target-class`` the attacks always run untargeted under their own names (``robust.accuracy.pgd@EPS``
means the same with and without it); the targetable ones run once more aiming at the class, reported as
``robust.accuracy.ATTACK-targeted@EPS`` and ``robust.targeted_success_rate.ATTACK@EPS``."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from attacks import CHUNK, Attack, Domain, attack_class, is_minimum_norm
from attacks.text_domain import TOKEN_NORM
from auditor.catalogue.attacks import (FLIPPING_ATTENTION_ATTACKS, HIJACK_ATTACKS, TARGETED_SUFFIX, WORST, in_worst_case,
                                      is_attention_attack, is_evasion_attack)
from auditor.catalogue.specs import ROBUSTNESS_SPECS as SPECS, STABILITY_SPECS
from auditor.metrics import format_eps
from auditor.report.findings import AttentionExample
from auditor.run.persample import only_where
from auditor.stages.base import Block, Stage
from detectors.inputs.text import is_token_ids

TOPK = 5
KEPT_EXAMPLES = 3  # per attack at the largest eps: the report's heat maps and adversarial gallery
@dataclass
class FlippedExample:
    """A sample classified correctly when clean that the attack misclassifies at the largest eps."""

    attack: str
    eps: float
    index: int
    adv_pred: int
    x_adv: torch.Tensor
    # the adversarial input's class probabilities and each explainer's attribution of it for its new prediction:
    # filled by the explain stage, so the report's adversarial gallery needs no pass after the audit
    adv_proba: np.ndarray | None = None
    attributions: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RobustnessOutcome:
    """Per-sample results: metric name -> (n,) float64, NaN where the sample does not count for that metric
    (``auditor.run.persample``); the aggregate metrics are their means, computed once all samples are in."""
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)
    attention_examples: list[AttentionExample] = field(default_factory=list)
    flipped: dict[str, list[FlippedExample]] = field(default_factory=dict)


def rationale_edits(x: np.ndarray, x_adv: np.ndarray, rationale: np.ndarray, pad_id: int) -> np.ndarray:
    """(n,) bool: whether the edit from each row of ``x`` to ``x_adv`` (token ids) touched a rationale token:
    a token ``rationale`` marks is replaced or deleted in the smallest difference between the two sequences
    (difflib's, so an edit that changes the number of tokens is aligned, not read position by position), or
    something is inserted inside a rationale span."""
    out = np.zeros(len(x), dtype=bool)
    for row, (before, after, marked) in enumerate(zip(x.tolist(), x_adv.tolist(), rationale)):
        if before == after or not marked.any():
            continue
        before = [t for t in before if t != pad_id]
        after = [t for t in after if t != pad_id]
        for op, i1, i2, _, _ in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
            if op in ("replace", "delete") and marked[i1:i2].any() or \
                    op == "insert" and 0 < i1 < len(before) and marked[i1 - 1] and marked[i1]:
                out[row] = True
                break
    return out


def within_budget(unbounded: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """A minimum-norm attack's example at budget eps: its unbounded example where that lies within eps of x
    in L2, else x itself (the attack found nothing smaller, so the sample counts as unbroken at eps)."""
    within = (unbounded - x).flatten(1).norm(dim=1) <= eps + 1e-6
    return torch.where(within.view(-1, *[1] * (x.ndim - 1)), unbounded, x)


def aligned_batch(batch_size: int) -> int:
    """Batches start on multiples of the chunk grid, so stochastic attacks see whole chunks."""
    return max(CHUNK, (batch_size + CHUNK - 1) // CHUNK * CHUNK)


def craft(model, attack: Attack, x, y, *, eps: float, domain: Domain, seed: int, batch_size: int,
          bar=None, index: torch.Tensor | None = None) -> torch.Tensor:
    """Adversarial examples in batches; ``index``: the rows' global indices (default 0..n-1), the keys of
    every random draw, so a shard's rows come out as in the whole."""
    index = torch.arange(len(x)) if index is None else index
    parts = []
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        parts.append(attack(model, x[rows], y[rows], eps=eps, domain=domain, seed=seed, index=index[rows]))
        if bar is not None:
            bar.update()
    return torch.cat(parts)


def craft_each(model, attack: Attack, x, y, *, budgets: list[float], domain: Domain, seed: int, batch_size: int,
               bar=None, index: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """The adversarial examples at each of ``budgets`` in turn, equal to :func:`craft` at each: where the attack's
    budgets nest (:attr:`attacks.Attack.nested_budgets`, the text searches) one search per batch to the largest
    budget, snapshotted after each budget's steps (budgets 1, 2, 4 cost 4 steps, not 7); otherwise one
    :func:`craft` per budget, made when it is asked for (so the model sees its calls in the same order)."""
    if not attack.nested_budgets:
        for eps in budgets:
            yield craft(model, attack, x, y, eps=eps, domain=domain, seed=seed, batch_size=batch_size, bar=bar,
                        index=index)
        return
    index = torch.arange(len(x)) if index is None else index
    parts = []
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        parts.append(attack.at_budgets(model, x[rows], y[rows], budgets=budgets, domain=domain, seed=seed,
                                       index=index[rows]))
        if bar is not None:
            bar.update(len(budgets))
    yield from (torch.cat([part[i] for part in parts]) for i in range(len(budgets)))


@torch.inference_mode()
def predict(model, x, batch_size: int, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted classes; ``x`` may be the embeddings (N, T, dim) an embedding-space attack returns for ``ids``."""
    if ids is not None and x.is_floating_point() and not ids.is_floating_point():
        from attacks.text import embedding_logits

        return embedding_logits(model, ids, x, batch_size).argmax(1)
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def run_attacks(model, x: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor, attacks: dict[str, Attack],
                eps_grid: list[float], *, domain: Domain, seed: int, batch_size: int, keep_examples: bool,
                progress: bool | None, positive: int | None, n_classes: int, target: int | None = None,
                topk: int = TOPK, index: torch.Tensor | None = None, eps_l2: list[float] | None = None,
                targeted: dict[str, Attack] | None = None, grids: dict[str, list] | None = None,
                rationale: np.ndarray | None = None, pad_id: int = 0) -> RobustnessOutcome:
    """Every attack (untargeted) on its norm's grid (``eps_grid`` L-inf, ``eps_l2`` L2; default: the same),
    then each of ``targeted`` (the targetable attacks aiming at class ``target``) under ``NAME-targeted``,
    then the per-sample worst case per norm and eps. ``grids`` (norm -> budgets, every norm's: the stage passes
    :meth:`auditor.run.config.AuditConfig.grids`) replaces both grids where given; an attack returning embeddings for
    token ids (embedding-pgd) is judged by :func:`attacks.text.embedding_logits`. ``rationale`` (text, (n, T)
    bool): the rows' rationale tokens, for ``robust.rationale_edits`` (:func:`rationale_edits`, padding
    ``pad_id``). Every attack's examples come from :func:`craft_each` (a text search's budgets from one run)."""
    outcome = RobustnessOutcome()
    eps_l2 = list(eps_grid) if eps_l2 is None else list(eps_l2)
    grids = {"linf": list(eps_grid), "l2": eps_l2} if grids is None else grids
    runs = [(name, attack, False) for name, attack in attacks.items()]
    runs += [(name, attack, True) for name, attack in (targeted or {}).items()]
    broken_by_any: dict[tuple[str, float], np.ndarray] = {}
    batch_size = aligned_batch(batch_size)
    clean_correct = (clean_pred == y).cpu().numpy()
    y_np = y.cpu().numpy()
    batches = (len(x) + batch_size - 1) // batch_size
    total = sum(batches * (1 if is_minimum_norm(a) else len(grids[a.norm])) for _, a, _ in runs)
    bar = tqdm(total=total, desc="attacks", unit="batch", disable=None if progress else True, leave=False)
    detection = n_classes == 2
    pos = positive if positive is not None else 1
    clean_attention = None
    try:
        for name, attack, aimed in runs:
            grid = grids[attack.norm]
            if is_minimum_norm(attack):
                unbounded = craft(model, attack, x, y, eps=math.inf, domain=domain, seed=seed,
                                  batch_size=batch_size, bar=bar, index=index)
                examples = (within_budget(unbounded, x, eps) for eps in grid)
            else:
                examples = craft_each(model, attack, x, y, budgets=grid, domain=domain, seed=seed,
                                      batch_size=batch_size, bar=bar, index=index)
            for eps, x_adv in zip(grid, examples):
                tag = f"{name}@{format_eps(eps)}"
                adv_pred = predict(model, x_adv, batch_size, ids=x)
                correct = (adv_pred == y).cpu().numpy()
                largest = eps == max(grid)
                if aimed:
                    outcome.per_sample[f"robust.accuracy.{name}{TARGETED_SUFFIX}@{format_eps(eps)}"] = \
                        correct.astype(np.float64)
                    outcome.per_sample[f"robust.targeted_success_rate.{tag}"] = only_where(
                        adv_pred.cpu().numpy() == target, clean_correct & (y_np != target))
                    if in_worst_case(name):
                        _record_broken(broken_by_any, attack.norm, eps, correct)
                    if keep_examples and x_adv.shape == x.shape:
                        outcome.adversarial[f"adv/{name}{TARGETED_SUFFIX}@{format_eps(eps)}"] = x_adv.detach().cpu()
                    continue
                if is_attention_attack(name):
                    if clean_attention is None:  # the same for every attention attack and eps
                        clean_attention = _attention(model, x, batch_size)
                    attacked_attention = _attention(model, x_adv, batch_size)
                    outcome.per_sample.update(_stability(model, attack, tag, x, clean_attention, attacked_attention,
                                                         clean_pred, adv_pred, topk))
                    if largest:
                        outcome.attention_examples += _most_moved(
                            model, name, eps, x, x_adv, clean_attention, attacked_attention,
                            outcome.per_sample[f"stability.jsd.{tag}"], clean_pred, adv_pred)
                if is_evasion_attack(name):
                    if attack.norm in WORST and in_worst_case(name):
                        _record_broken(broken_by_any, attack.norm, eps, correct)
                    if rationale is not None and x_adv.shape == x.shape and is_token_ids(x_adv):
                        touched = rationale_edits(x.cpu().numpy(), x_adv.cpu().numpy(), rationale, pad_id)
                        outcome.per_sample[f"robust.rationale_edits.{tag}"] = only_where(touched,
                                                                                          clean_correct & ~correct)
                    if largest and x_adv.shape == x.shape:  # not an embedding-space attack's embeddings
                        flipped = np.flatnonzero(clean_correct & ~correct)[:KEPT_EXAMPLES]
                        outcome.flipped[name] = [FlippedExample(name, eps, int(i), int(adv_pred[i]),
                                                                x_adv[i].detach().cpu().clone()) for i in flipped]
                    outcome.per_sample[f"robust.accuracy.{tag}"] = correct.astype(np.float64)
                    outcome.per_sample[f"robust.attack_success_rate.{tag}"] = only_where(~correct, clean_correct)
                    if detection:
                        caught = clean_correct & (y_np == pos)
                        outcome.per_sample[f"robust.evasion_rate.{tag}"] = only_where(
                            adv_pred.cpu().numpy() != pos, caught)
                if keep_examples and x_adv.shape == x.shape:  # embedding-space points are no input: not kept
                    outcome.adversarial[f"adv/{tag}"] = x_adv.detach().cpu()
    finally:
        bar.close()
    order = sorted(broken_by_any, key=lambda key: (key[0] != "linf", key[1]))
    worst = {f"robust.accuracy.{WORST[norm]}@{format_eps(eps)}": broken_by_any[norm, eps].astype(np.float64)
             for norm, eps in order}
    outcome.per_sample = {**worst, **outcome.per_sample}  # the headline first in the report's metric lists
    return outcome


def _record_broken(worst: dict, norm: str, eps: float, correct: np.ndarray) -> None:
    """Keep, per norm and eps, whether each sample is still correct under every evasion attack so far."""
    key = (norm, eps)
    worst[key] = correct.copy() if key not in worst else worst[key] & correct


@torch.no_grad()
def _attention(model, x, batch_size: int) -> torch.Tensor:
    from attacks.attention import attention_distribution

    return torch.cat([attention_distribution(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _most_moved(model, name: str, eps: float, x, x_adv, p, q, jsd: np.ndarray, clean_pred,
                adv_pred) -> list[AttentionExample]:
    """The samples whose attention the attack moved most, with both distributions spread over the input (and,
    on text, the attacked message's ids)."""
    from attacks.attention import token_positions

    order = np.argsort(-np.nan_to_num(jsd, nan=-1.0), kind="stable")[:KEPT_EXAMPLES]
    positions = token_positions(model)
    token_map = model.token_map

    def spread(dist: torch.Tensor) -> list:
        tokens = torch.zeros(1, token_map.n_tokens, dtype=dist.dtype, device=dist.device)
        tokens[0, positions.to(dist.device)] = dist
        return token_map.to_input(tokens)[0].cpu().double().tolist()

    words = is_token_ids(x) and is_token_ids(x_adv)
    return [AttentionExample(name, float(eps), int(i), float(jsd[i]), int(clean_pred[i]), int(adv_pred[i]),
                             x[i].detach().cpu().double().tolist(), spread(p[i]), spread(q[i]),
                             x_adv[i].detach().cpu().double().tolist() if words else []) for i in order]


def _stability(model, attack: Attack, tag: str, x, p, q, clean_pred, adv_pred, topk: int) -> dict[str, np.ndarray]:
    from attacks.attention import hijacked
    from auditor.stages import stability

    values = {
        "topk_intersection": stability.topk_intersection(p, q, k=topk),
        "spearman": stability.spearman(p, q),
        "jsd": stability.jsd(p, q),
        "prediction_kept": stability.prediction_kept(clean_pred, adv_pred),
    }
    # from the clean and attacked attention already at hand, the targets the attack aimed at: its k least attended
    # (the chosen inputs with --hijack-features); on text each message's least-attended words
    if attack.name == "attention-hijack":
        values["hijack_success"] = hijacked(model.token_map, p, q, k=attack.k,
                                            target_positions=attack.target_positions).float()
    elif attack.name in HIJACK_ATTACKS:  # on text: its targets recomputed from the clean attention
        values["hijack_success"] = attack.hijacked(q, attack.targets(model, x, p)).float()
    return {f"stability.{key}.{tag}": v.detach().cpu().numpy().astype(np.float64) for key, v in values.items()}


# the attention attacks' stability metrics (functions in auditor.stages.stability), computed by this stage


class RobustnessStage(Stage):
    """Every attack at every budget (:func:`run_attacks`): per-sample robust and stability values, the
    report's candidate examples (``attention_examples``, ``flipped``) and, with ``--save-adversarial``, the
    adversarial rows (``adversarial``)."""

    name = "robustness"
    specs = SPECS + STABILITY_SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        names = []
        for norm, worst in WORST.items():
            if any(attack_class(a).norm == norm and in_worst_case(a) for a in config.attacks):
                names += [f"robust.accuracy.{worst}@{format_eps(eps)}" for eps in config.grid(norm)]
        for attack in config.attacks:
            names += self.attack_names(config, attack, binary=binary)
        return names

    @staticmethod
    def attack_names(config, attack: str, *, binary: bool) -> list[str]:
        """The names one attack plans."""
        names = []
        for eps in config.grid(attack_class(attack).norm):
            tag = f"{attack}@{format_eps(eps)}"
            if is_attention_attack(attack):
                names += [f"stability.{key}.{tag}" for key in
                          ("topk_intersection", "spearman", "jsd", "prediction_kept")]
                if attack in HIJACK_ATTACKS:
                    names.append(f"stability.hijack_success.{tag}")
                if attack not in FLIPPING_ATTENTION_ATTACKS:
                    continue
            names += [f"robust.accuracy.{tag}", f"robust.attack_success_rate.{tag}"]
            if config.text and attack_class(attack).norm == TOKEN_NORM:
                names.append(f"robust.rationale_edits.{tag}")
            if binary:
                names.append(f"robust.evasion_rate.{tag}")
            if config.target_class is not None and attack_class(attack).targetable:
                names += [f"robust.accuracy.{attack}{TARGETED_SUFFIX}@{format_eps(eps)}",
                          f"robust.targeted_success_rate.{tag}"]
        return names

    def run(self, block: Block) -> None:
        config, index_np = block.config, block.index_np
        attacks, targeted = block.attacks, config.build_targeted_attacks()
        rationale = pad_id = None
        if is_token_ids(block.x):  # text: the word edits and substitutions on --token-budget, embedding-pgd on --eps
            attacks, targeted = self._without_table(block, attacks, targeted)
            pad_id = block.tokens.pad_id if block.tokens is not None else 0
            if block.relevant is not None and block.relevant.shape == tuple(block.x.shape):
                rationale = np.asarray(block.relevant, dtype=bool)
            else:
                block.notes.update({name: NO_RATIONALES for attack in attacks
                                    for name in self.attack_names(config, attack, binary=True)
                                    if name.startswith("robust.rationale_edits.")})
        robust = run_attacks(block.detector, block.x, block.y, block.pred, attacks, list(config.eps),
                             domain=block.domain, seed=config.seed, batch_size=block.plan.attack_batch,
                             keep_examples=config.save_adversarial, progress=block.progress, positive=block.positive,
                             n_classes=block.detector.n_classes, target=config.target_index, index=block.index,
                             targeted=targeted, grids=config.grids(), rationale=rationale, pad_id=pad_id or 0)
        block.per_sample.update(robust.per_sample)
        block.table["attention_examples"] = {"example": objects(
            [replace(e, index=int(index_np[e.index])) for e in robust.attention_examples])}
        block.table["flipped"] = {"example": objects(
            [replace(e, index=int(index_np[e.index])) for examples in robust.flipped.values() for e in examples])}
        if config.save_adversarial:
            block.table["adversarial"] = {"x": block.x.cpu().numpy(), "y": block.y.cpu().numpy(),
                                          **{k: v.numpy() for k, v in robust.adversarial.items()}}


    def _without_table(self, block: Block, attacks: dict, targeted: dict) -> tuple[dict, dict]:
        """Without a substitution table, the attacks that draw from one do not run: their names (and a worst
        case no other attack reaches) get the reason."""
        config = block.config
        idle = [name for name in attacks if not config.runs(name)]
        if not idle:
            return attacks, targeted
        for name in idle:
            block.notes.update({metric: NO_TABLE.format(attack=name)
                                for metric in self.attack_names(config, name, binary=True)})
        left = {name: attack for name, attack in attacks.items() if name not in idle}
        if not any(attack.norm == TOKEN_NORM and in_worst_case(name) for name, attack in left.items()):
            block.notes.update({f"robust.accuracy.{WORST[TOKEN_NORM]}@{format_eps(eps)}":
                                "no label-preserving evasion attack ran (typo, homoglyph, or a substitution "
                                "attack with --substitutions)" for eps in config.grid(TOKEN_NORM)})
        return left, {name: attack for name, attack in targeted.items() if name not in idle}


NO_TABLE = ("{attack} substitutes only from a substitution table and none was given (--substitutions FILE); "
            "hotflip-any is the any-token upper bound, run only when named")
NO_RATIONALES = "the data records no rationale tokens (the phishing corpus does)"


def objects(items: list) -> np.ndarray:
    """A 1-D object array of ``items`` (row tables are arrays; these are small picked examples)."""
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array
