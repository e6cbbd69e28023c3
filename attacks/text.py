"""Attacks on text detectors by token substitution within a token budget (the word edits are in
:mod:`attacks.text_edits`, embedding-space PGD in :mod:`attacks.text_embedding`, the domain in
:mod:`attacks.text_domain`).

A text detector (:class:`detectors.text.TextTransformer`, or any module with its ``embedding``, ``embed``,
``attention_mask``, ``forward_embeddings`` and ``forward_with_attention`` entry points) reads token ids (N, T).
A substitution attack's budget ``eps`` is the number of token positions it may change (``--token-budget``, a
whole number). The :class:`TokenDomain` says which positions may change (never a special token: ``[PAD] [UNK]
[CLS] [MASK]``, so padding is never attacked) and into what (never a special token; with a substitution table
only the replacements it lists), and its :meth:`TokenDomain.project` enforces it at the end of every attack.
A substitution may change what a message says (``pin`` -> ``meeting``), so every substitution attack but
``hotflip-any`` draws only from a table the user gives (``--substitutions``; without one it refuses to run)
and never changes the domain's protected positions (the data's rationale tokens, ``--protect``).

The substitution attacks share one search (:class:`TokenSearch`): each step proposes, for every beam, the
``candidates`` single substitutions (a position not changed yet, a token the domain allows there) with the
best first-order estimate of the attack's objective, Ebrahimi et al. 2018's estimate
``(E[v] - E[x_t]) . dJ/de_t`` from one forward and backward pass, verifies every proposal with a real forward
pass, and keeps the ``beam`` best verified sequences (``beam`` 1: greedy). A row stops at the first step where
a proposal reaches the attack's goal (so it uses the fewest substitutions the search found); every choice is
made per row, so nothing depends on the batch. No randomness is involved, and no step reads the budget: the
examples of budgets 1, 2 and 4 are one search's best after steps 1, 2 and 4 (:meth:`TokenSearch.at_budgets`).

``hotflip`` (:class:`HotFlip`)
    Ebrahimi et al. 2018, "HotFlip: white-box adversarial examples for text classification", at the word
    level: the objective is the cross-entropy on the true label (or, with ``target_class``, minus the
    cross-entropy on the target), the goal a misclassification (the target class). ``candidates`` (16) per
    beam and step, ``beam`` (1).
``hotflip-any`` (:class:`HotFlipAny`)
    The same search over any non-special token, protected words included, with or without a table: an upper
    bound that may write a different message (``please`` -> ``never``), under its own name, outside
    ``worst-tokens`` and the default gate.
``exhaustive-substitution`` (:class:`ExhaustiveSubstitution`)
    The same search verifying every allowed substitution instead of the estimate's best few: at a budget of 1
    it is exact (a sample is broken if and only if some single substitution breaks it); at k > 1 it repeats
    that per step with ``beam`` (1) sequences, exhaustive per step, not over all k-subsets. It costs T x V
    forward passes per sample and step: for small vocabularies and for checking HotFlip.
``attention-shift-sub`` (:class:`TokenAttentionShift`)
    Ghorbani et al. 2019 by substitution: maximises JSD(a(x'), a(x)) (the attention distribution of
    :mod:`attacks.attention`) over sequences whose prediction is the clean one; every step's beams and the
    sequence returned keep it (the clean input when nothing else does). The JSD's gradient vanishes at x' = x,
    so proposals are ranked by the absolute first-order change of the cross-entropy of a(x') against a(x)
    (a linear function of a(x') whose gradient does not vanish there), then verified by the JSD itself.
    ``candidates`` (32), ``beam`` (1).
``attention-hijack-sub`` (:class:`TokenAttentionHijack`)
    Attention hijacking (after Dombrowski et al. 2019's targeted manipulation) by substitution: pulls the
    attention onto each message's ``k`` (2; at most its words - 1) least-attended words of the clean input by
    substituting other words (the targets themselves are never changed), prediction kept at every step.
    Proposals are ranked by the first-order change of the log attention mass on the targets and verified by it;
    a row succeeds when its targets are exactly its top-|targets| attention entries. ``candidates`` (32),
    ``beam`` (1).
``attention-guided-sub`` (:class:`TokenAttentionGuided`)
    HotFlip restricted to the ``k`` (5) most-attended positions of the clean input (after Patch-Fool, Fu et
    al. 2022).
``stealth-sub`` (:class:`TokenStealth`)
    After Zhang et al. 2020 (ADV^2): ranks by CE(f(x'), y) - ``lam`` (1.0) x JSD(a(x'), a(x)); among the
    proposals of the first step that misclassify, keeps the one with the lowest JSD.
TextAttack (Morris et al. 2020) was considered: its recipes import ``transformers`` (model wrappers, and
constraints that download GloVe / counter-fitted vectors and the Universal Sentence Encoder on first use), which
cannot be imported beside the CPU torch wheel here and needs the network; the search is implemented on this
tool's own model contract instead.

The attention attacks by substitution carry their own names (``-sub``): their threat model (a number of
tokens changed) is not that of their continuous forms (an L-inf ball in [0, 1]), so their numbers never share
a name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack, positive_count
from attacks.text_domain import (TOKEN_NORM, TokenDomain, check_budget, check_text_model, load_substitutions,
                                 token_domain)
from attacks.text_embedding import EMBEDDING_NORMS, embedding_logits, embedding_scale
from detectors.maths import (attention_distribution_of, descending_order, descending_ranks, jensen_shannon,
                             token_positions_from)

__all__ = ["EMBEDDING_NORMS", "SUBSTITUTION_ATTACKS", "SUBSTITUTION_ATTENTION_ATTACKS", "TOKEN_NORM",
           "ExhaustiveSubstitution", "HotFlip", "HotFlipAny", "Judged", "TokenAttentionGuided", "TokenAttentionHijack",
           "TokenAttentionShift", "TokenDomain", "TokenSearch", "TokenStealth", "embedding_logits", "embedding_scale",
           "load_substitutions"]

SCORE_CELLS = 1 << 22  # (beams x positions x vocabulary) first-order scores held at once


# --------------------------------------------------------------------------- the substitution search

@dataclass
class Judged:
    """What the search needs about a batch of sequences (all (n,)): ``rank`` orders the beams (higher first),
    ``feasible`` may become a beam or be returned, ``success`` ends the row's search, ``keep`` picks the
    sequence returned among successes (else among feasible sequences)."""

    rank: torch.Tensor
    feasible: torch.Tensor
    success: torch.Tensor
    keep: torch.Tensor


class TokenSearch(Attack):
    """Beam search over single-token substitutions guided by a first-order estimate (see the module).

    A subclass says what it wants: :meth:`_context` (per-row facts about the clean input), :meth:`_estimate`
    (the differentiable value whose first-order change ranks proposals), :meth:`_judge` (verification) and,
    optionally, :meth:`_positions` (where it may substitute).
    """

    norm: ClassVar[str] = TOKEN_NORM
    nested_budgets: ClassVar[bool] = True  # the search never reads its budget, and draws nothing at random
    needs_attention: ClassVar[bool] = False
    #: rank proposals by the absolute first-order change (objectives whose gradient vanishes at the clean input)
    absolute_estimate: ClassVar[bool] = False
    #: an upper bound that may change the meaning: any token the domain allows, protected words included;
    #: every other substitution attack draws only from a substitution table and never touches protected words
    any_token: ClassVar[bool] = False
    #: draws its replacements from a substitution table, so it does not run without one
    needs_table: ClassVar[bool] = True

    def __init__(self, *, candidates: int | None = 16, beam: int = 1, batch_size: int = 1024) -> None:
        if (candidates is not None and (int(candidates) != candidates or candidates < 1)) or int(beam) != beam \
                or beam < 1 or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"{self.name} needs integer candidates >= 1, beam >= 1 and batch_size >= 1; got "
                             f"candidates={candidates}, beam={beam}, batch_size={batch_size}")
        self.candidates = None if candidates is None else int(candidates)
        self.beam, self.batch_size = int(beam), int(batch_size)

    def params(self) -> dict:
        return {"candidates": self.candidates, "beam": self.beam}

    # ---- what a subclass says
    def _context(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 dist: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {"y": y}

    def _estimate(self, logits: torch.Tensor, dist: torch.Tensor | None, ctx: dict) -> torch.Tensor:
        raise NotImplementedError

    def _judge(self, logits: torch.Tensor, dist: torch.Tensor | None, ctx: dict) -> Judged:
        raise NotImplementedError

    def _positions(self, model: nn.Module, x: torch.Tensor, dist: torch.Tensor | None) -> torch.Tensor | None:
        """(N, T) bool where substitutions may happen, or None for every mutable position."""
        return None

    # ---- the search
    def _forward(self, model, ids: torch.Tensor, embeddings: torch.Tensor | None = None):
        if embeddings is None:
            embeddings = model.embed(ids)
        if self.needs_attention:
            logits, attentions = model.forward_embeddings(embeddings, model.attention_mask(ids), with_attention=True)
            return logits, attention_distribution_of(attentions, model.token_map)
        return model.forward_embeddings(embeddings, model.attention_mask(ids)), None

    @torch.no_grad()
    def _verify(self, model, ids: torch.Tensor, ctx: dict) -> Judged:
        """Judge sequences (n, T) with real forward passes, in batches of ``batch_size``."""
        parts = []
        for start in range(0, len(ids), self.batch_size):
            rows = slice(start, start + self.batch_size)
            logits, dist = self._forward(model, ids[rows])
            parts.append(self._judge(logits, dist, {k: v[rows] for k, v in ctx.items()}))
        return Judged(*(torch.cat([getattr(p, f) for p in parts]) if parts else torch.empty(0)
                        for f in ("rank", "feasible", "success", "keep")))

    def _scores(self, model, ids: torch.Tensor, ctx: dict) -> torch.Tensor:
        """(n, T, V) first-order estimate of the objective's change for every (position, token)."""
        embeddings = model.embed(ids).detach().requires_grad_(True)
        logits, dist = self._forward(model, ids, embeddings)
        gradient, = torch.autograd.grad(self._estimate(logits, dist, ctx).sum(), embeddings)
        table = model.embedding.weight.detach()
        scores = gradient @ table.T - (gradient * embeddings.detach()).sum(-1, keepdim=True)
        return scores.abs() if self.absolute_estimate else scores

    def _propose(self, model, beams: torch.Tensor, original: torch.Tensor, open_beams: torch.Tensor, ctx: dict,
                 domain: TokenDomain, where: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C, T) proposals and (n, C) validity: per beam the C best allowed single substitutions at positions
        not yet changed (ties: the lower position, then the lower token id)."""
        n, length = beams.shape
        vocab = domain.vocab_size
        take = length * vocab if self.candidates is None else min(self.candidates, length * vocab)
        values, picks = [], []
        chunk = max(1, SCORE_CELLS // (length * vocab))
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            allowed = domain.targets(beams[rows]) & (beams[rows] == original[rows]).unsqueeze(-1) \
                & open_beams[rows, None, None]
            if where is not None:
                allowed &= where[rows].unsqueeze(-1)
            if self.candidates is None:
                scores = torch.zeros(allowed.shape, device=beams.device)
            else:
                scores = self._scores(model, beams[rows], {k: v[rows] for k, v in ctx.items()})
            flat = scores.masked_fill(~allowed, -math.inf).flatten(1)
            top = torch.sort(flat, dim=1, descending=True, stable=True)
            values.append(top.values[:, :take])
            picks.append(top.indices[:, :take])
        values, picks = torch.cat(values), torch.cat(picks)
        proposals = beams.unsqueeze(1).repeat(1, take, 1)
        proposals.scatter_(2, (picks // vocab).unsqueeze(-1), (picks % vocab).unsqueeze(-1))
        return proposals, torch.isfinite(values)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain, seed: int,
                index: torch.Tensor) -> torch.Tensor:
        return self._search(model, x, y, budgets=[eps], domain=domain, index=index)[0]

    def at_budgets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, budgets, domain, seed: int,
                   index: torch.Tensor) -> list[torch.Tensor]:
        """One search to the largest budget, the best sequence taken after each budget's steps, each projected
        as a call at that budget projects it."""
        with self._attacking(model):
            found = self._search(model, x.detach(), y, budgets=budgets, domain=domain, index=index)
        return [domain.project(x_adv, x, eps=eps, norm=self.norm) for x_adv, eps in zip(found, budgets)]

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, budgets, domain,
                index: torch.Tensor) -> list[torch.Tensor]:
        """The best sequence after each of ``budgets`` steps (the search never reads its budget: a step's state
        is the same whatever budget follows)."""
        domain = token_domain(self.name, domain)
        check_text_model(self.name, model)
        steps = [check_budget(self.name, eps) for eps in budgets]
        if x.ndim != 2 or x.dtype not in (torch.int64, torch.int32) or y.shape != (len(x),):
            raise ValueError(f"{self.name}: expected token ids (N, T) and labels (N,), got {tuple(x.shape)} "
                             f"{x.dtype} and {tuple(y.shape)}")
        if self.needs_table and domain.pairs is None:
            raise ValueError(f"{self.name} substitutes only the replacements a substitution table lists "
                             "(--substitutions); without one it does not run (hotflip-any is the any-token upper "
                             "bound)")
        n, length = x.shape
        if n == 0:
            return [x.clone() for _ in steps]
        x = x.long()
        with torch.no_grad():
            logits, dist = self._forward(model, x)
        ctx = self._context(model, x, y, logits, dist)
        where = self._positions(model, x, dist)
        if not self.any_token:
            free = ~domain.protected_positions(x, index)
            where = free if where is None else where & free
        clean = self._judge(logits, dist, ctx)
        best, best_keep = x.clone(), torch.where(clean.feasible, clean.keep, -math.inf)
        done = clean.success.clone()  # already where the attack wants it: nothing to do
        beams = x.unsqueeze(1)  # (n, B, T)
        open_beams = ~done.unsqueeze(1)
        found = {0: best.clone()} if 0 in steps else {}
        for step in range(1, max(steps, default=0) + 1):
            if not open_beams.any():
                break
            width = beams.shape[1]
            rows_ctx = {k: v.repeat_interleave(width, 0) for k, v in ctx.items()}
            flat, valid = self._propose(model, beams.reshape(n * width, length), x.repeat_interleave(width, 0),
                                        open_beams.reshape(-1), rows_ctx, domain,
                                        None if where is None else where.repeat_interleave(width, 0))
            take = flat.shape[1]
            proposals = flat.reshape(n, width * take, length)
            valid = valid.reshape(n, width * take)
            judged = self._judge_valid(model, proposals, valid, ctx)
            success = judged.success & valid
            feasible = judged.feasible & valid
            keep = torch.where(success | feasible, judged.keep, -math.inf)
            hit = success.any(1)
            choice = torch.where(success, keep, -math.inf)
            pick = torch.argmax(torch.where(hit.unsqueeze(1), choice, keep), dim=1)
            better = hit | (keep.gather(1, pick[:, None]).squeeze(1) > best_keep)
            better &= ~done
            best[better] = proposals[better, pick[better]]
            best_keep[better] = keep[better, pick[better]]
            done |= hit
            rank = torch.where(feasible, judged.rank, -math.inf)
            order = torch.sort(rank, dim=1, descending=True, stable=True).indices[:, :self.beam]
            beams = proposals.gather(1, order.unsqueeze(-1).expand(-1, -1, length))
            open_beams = torch.isfinite(rank.gather(1, order)) & ~done.unsqueeze(1)
            if step in steps:
                found[step] = best.clone()
        return [found[k] if k in found else best.clone() for k in steps]  # a search that stopped holds its best

    def _judge_valid(self, model, proposals: torch.Tensor, valid: torch.Tensor, ctx: dict) -> Judged:
        """Verify only the valid proposals; the rest are judged infeasible."""
        n, width, length = proposals.shape
        rows, cols = valid.nonzero(as_tuple=True)
        judged = self._verify(model, proposals[rows, cols], {k: v[rows] for k, v in ctx.items()})
        full = Judged(rank=torch.full((n, width), -math.inf, device=proposals.device),
                      feasible=torch.zeros(n, width, dtype=torch.bool, device=proposals.device),
                      success=torch.zeros(n, width, dtype=torch.bool, device=proposals.device),
                      keep=torch.full((n, width), -math.inf, device=proposals.device))
        if len(rows):
            full.rank[rows, cols] = judged.rank.float()
            full.feasible[rows, cols] = judged.feasible
            full.success[rows, cols] = judged.success
            full.keep[rows, cols] = judged.keep.float()
        return full


class HotFlip(TokenSearch):
    """Gradient-guided word substitution: the first-order estimate of the cross-entropy's rise, verified."""

    name = "hotflip"
    reference = "Ebrahimi et al. 2018 (HotFlip: White-Box Adversarial Examples for Text Classification)"
    targetable = True

    def __init__(self, *, candidates: int | None = 16, beam: int = 1, batch_size: int = 1024,
                 target_class: int | None = None) -> None:
        super().__init__(candidates=candidates, beam=beam, batch_size=batch_size)
        self._set_target(target_class)

    def params(self) -> dict:
        return {**super().params(), **self._target_params()}

    def _context(self, model, x, y, logits, dist):
        if self.target_class is not None:
            return {"y": y, "aim": torch.full_like(y, self.target_class)}
        return {"y": y}

    def _estimate(self, logits, dist, ctx):
        if "aim" in ctx:
            return -F.cross_entropy(logits.float(), ctx["aim"], reduction="none")
        return F.cross_entropy(logits.float(), ctx["y"], reduction="none")

    def _judge(self, logits, dist, ctx):
        value = self._estimate(logits, dist, ctx)
        pred = logits.argmax(1)
        success = pred == ctx["aim"] if "aim" in ctx else pred != ctx["y"]
        return Judged(rank=value, feasible=torch.ones_like(success), success=success, keep=value)


class HotFlipAny(HotFlip):
    """HotFlip over any token the domain allows, protected words included: an upper bound on what a
    substitution attacker achieves, which may change what the message says (reported under its own name,
    never in the headline)."""

    name = "hotflip-any"
    reference = "Ebrahimi et al. 2018 (HotFlip), any-token substitution: an upper bound that may change the meaning"
    any_token = True
    needs_table = False


class ExhaustiveSubstitution(HotFlip):
    """Every allowed single substitution verified per step: exact at a budget of 1."""

    name = "exhaustive-substitution"
    reference = "exhaustive search over single substitutions (optimal at a budget of 1 token)"

    def __init__(self, *, beam: int = 1, batch_size: int = 1024, target_class: int | None = None) -> None:
        super().__init__(candidates=None, beam=beam, batch_size=batch_size, target_class=target_class)

    def params(self) -> dict:
        return {"beam": self.beam, **self._target_params()}


class TokenAttentionGuided(HotFlip):
    """HotFlip on the k most-attended positions of the clean input only."""

    name = "attention-guided-sub"
    reference = "Fu et al. 2022 (Patch-Fool), by token substitution; Ebrahimi et al. 2018"
    needs_attention = True

    def __init__(self, *, k: int = 5, candidates: int | None = 16, beam: int = 1, batch_size: int = 1024,
                 target_class: int | None = None) -> None:
        super().__init__(candidates=candidates, beam=beam, batch_size=batch_size, target_class=target_class)
        self.k = positive_count(self.name, k)

    def params(self) -> dict:
        return {**super().params(), "k": self.k}

    def _positions(self, model, x, dist):
        top = descending_order(dist)[:, :min(self.k, dist.shape[1])]
        positions = token_positions_from(model.token_map).to(x.device)[top]
        return torch.zeros_like(x, dtype=torch.bool).scatter_(1, positions, True)


class _PredictionKept(TokenSearch):
    """Attention objectives searched among sequences that keep the clean prediction."""

    needs_attention = True

    def __init__(self, *, candidates: int | None = 32, beam: int = 1, batch_size: int = 1024) -> None:
        super().__init__(candidates=candidates, beam=beam, batch_size=batch_size)

    def _context(self, model, x, y, logits, dist):
        return {"pred": logits.argmax(1), "clean": dist}


class TokenAttentionShift(_PredictionKept):
    """The attention moved as far as possible (JSD) from the clean one by substitution, prediction kept."""

    name = "attention-shift-sub"
    reference = "Ghorbani et al. 2019 (Interpretation of neural networks is fragile), by token substitution"
    absolute_estimate = True

    def _estimate(self, logits, dist, ctx):
        return -(dist * ctx["clean"].clamp_min(1e-12).log()).sum(1)

    def _judge(self, logits, dist, ctx):
        divergence = jensen_shannon(dist, ctx["clean"])
        kept = logits.argmax(1) == ctx["pred"]
        return Judged(rank=divergence, feasible=kept, success=torch.zeros_like(kept), keep=divergence)


class TokenAttentionHijack(_PredictionKept):
    """The attention pulled onto the clean input's least-attended words by substituting other words, prediction
    kept."""

    name = "attention-hijack-sub"
    reference = "Dombrowski et al. 2019 (targeted explanation manipulation); Ghorbani et al. 2019, by token " \
                "substitution"

    def __init__(self, *, k: int = 2, candidates: int | None = 32, beam: int = 1, batch_size: int = 1024) -> None:
        super().__init__(candidates=candidates, beam=beam, batch_size=batch_size)
        self.k = positive_count(self.name, k)

    def params(self) -> dict:
        return {**super().params(), "k": self.k}

    def targets(self, model: nn.Module, x: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """(N, entries) bool: per message its min(k, words - 1) least-attended real tokens under the clean
        attention ``dist`` (padding never; ties: the later position counts as less attended)."""
        positions = token_positions_from(model.token_map).to(x.device)
        attended = model.attention_mask(x)[:, positions].bool()
        k = (attended.sum(1) - 1).clamp(0, self.k)
        ranks = descending_ranks(dist.masked_fill(~attended, math.inf))
        return attended & (ranks >= dist.shape[1] - k.unsqueeze(1))

    @staticmethod
    def hijacked(dist: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the row has targets and they are exactly its top-|targets| attention entries."""
        k = targets.sum(1)
        inside = descending_ranks(dist) < k.unsqueeze(1)
        return (inside | ~targets).all(1) & (k > 0)

    @torch.no_grad()
    def hijack_success(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the targets the attack aimed at (recomputed from ``x``) all entered a(x_adv)'s top-|targets|."""
        clean, adv = (self._forward(model, ids.long())[1] for ids in (x, x_adv))
        return self.hijacked(adv, self.targets(model, x.long(), clean))

    def _context(self, model, x, y, logits, dist):
        return {**super()._context(model, x, y, logits, dist), "targets": self.targets(model, x, dist)}

    def _positions(self, model, x, dist):
        where = torch.ones_like(x, dtype=torch.bool)
        positions = token_positions_from(model.token_map).to(x.device)
        where[:, positions] = ~self.targets(model, x, dist)  # the target words themselves stay as they are
        return where

    def _estimate(self, logits, dist, ctx):
        return (dist * ctx["targets"]).sum(1).clamp_min(1e-12).log()

    def _judge(self, logits, dist, ctx):
        mass = (dist * ctx["targets"]).sum(1)
        kept = logits.argmax(1) == ctx["pred"]
        return Judged(rank=mass, feasible=kept, success=kept & self.hijacked(dist, ctx["targets"]), keep=mass)


class TokenStealth(TokenSearch):
    """A misclassification by substitution whose attention stays closest to the clean one."""

    name = "stealth-sub"
    reference = "Zhang et al. 2020 (Interpretable Deep Learning under Fire, ADV^2), by token substitution"
    needs_attention = True

    def __init__(self, *, lam: float = 1.0, candidates: int | None = 16, beam: int = 1,
                 batch_size: int = 1024) -> None:
        super().__init__(candidates=candidates, beam=beam, batch_size=batch_size)
        if not lam >= 0:
            raise ValueError(f"{self.name} needs lam >= 0, got {lam}")
        self.lam = float(lam)

    def params(self) -> dict:
        return {**super().params(), "lam": self.lam}

    def _context(self, model, x, y, logits, dist):
        return {"y": y, "clean": dist}

    def _estimate(self, logits, dist, ctx):
        return F.cross_entropy(logits.float(), ctx["y"], reduction="none") - self.lam * jensen_shannon(
            dist, ctx["clean"])

    def _judge(self, logits, dist, ctx):
        divergence = jensen_shannon(dist, ctx["clean"])
        value = F.cross_entropy(logits.float(), ctx["y"], reduction="none") - self.lam * divergence
        success = logits.argmax(1) != ctx["y"]
        return Judged(rank=value, feasible=torch.ones_like(success), success=success,
                      keep=torch.where(success, -divergence, value))


SUBSTITUTION_ATTENTION_ATTACKS = ("attention-shift-sub", "attention-hijack-sub", "attention-guided-sub", "stealth-sub")
SUBSTITUTION_ATTACKS = (HotFlip, HotFlipAny, ExhaustiveSubstitution, TokenAttentionShift, TokenAttentionHijack,
                        TokenAttentionGuided, TokenStealth)
