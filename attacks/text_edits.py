"""Text attacks that keep the meaning: character edits a reader still reads as the same word.

The threat model (Gao et al. 2018, DeepWordBug; Morris et al. 2020 on constraints): the attacker edits at most
``eps`` *words* of the message (``--token-budget``, counted in words), each by exactly one character operation
(Damerau-Levenshtein distance 1), and the edited text goes through the model's own tokeniser again. On the
tool's word-level detector an edited word becomes ``[UNK]`` or another word of the vocabulary; on a Hugging Face
WordPiece/BPE model it becomes other pieces (and a leetspeak sign such as ``@`` splits a word), so the number of
tokens may change: the message is re-assembled and padded again; an edit that would push other tokens past
``max_length`` is never proposed (it would remove words from what the model reads).
Only words of at least :data:`MIN_LETTERS` ASCII letters are edited, never special tokens, punctuation,
numbers or the domain's protected words (the data's rationale tokens, ``--protect``); an edit that the tokeniser
reads as another whole word of its vocabulary (``now`` -> ``no``) is never proposed: it would write another
message.

``typo`` (:class:`Typo`)
    swap two neighbouring letters, drop one, insert a key next to one on a QWERTY keyboard after it, or replace
    one by a neighbouring key.
``homoglyph`` (:class:`Homoglyph`)
    replace one letter by a look-alike: a Unicode confusable (Cyrillic or Greek letters drawn like Latin ones,
    after the Unicode confusables list) or its leetspeak digit or sign (``a`` -> ``4``, ``@``).
``exhaustive-typo`` / ``exhaustive-homoglyph``
    every word and every variant verified per step: exact at a budget of 1 word (a message is broken if and
    only if some single edit breaks it), the known answer the greedy searches are checked against.
``attention-shift-edit``, ``attention-hijack-edit``, ``attention-guided-edit``, ``stealth-edit``
    the attention attacks of :mod:`attacks.text` (their objectives, goals and positions) searched by these word
    edits, typos and look-alikes both, instead of substitutions; an edited word keeps its number of tokens so
    the attention is compared position for position.

The search is greedy (Gao et al. 2018's scoring then editing): the words are ranked once by a cheap importance
estimate, the first-order change of the objective (the cross-entropy, as hotflip's) when the word's tokens become
the tokeniser's ``[UNK]`` (``(E[unk] - E[x_t]) . dJ/de_t`` summed over the word's tokens, one forward and backward
pass); each step verifies, with real forward passes, every variant of the ``words`` (4) best-ranked words not
edited yet and keeps the best; a row stops at the first step that misclassifies it. Every choice is made per
row, without randomness, so nothing depends on the batch; no step reads the budget, so one search gives every
budget's message (:meth:`WordEditSearch.at_budgets`).

TextAttack's DeepWordBug transformations were read for the choice of edits; nothing is taken from it (its
recipes download resources on first use).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from attacks.text import (HotFlip, TokenAttentionGuided, TokenAttentionHijack, TokenAttentionShift, TokenSearch,
                          TokenStealth)
from attacks.base import positive_count
from attacks.text_domain import check_budget, check_text_model, token_domain

__all__ = ["EDIT_ATTACKS", "EDIT_ATTENTION_ATTACKS", "HOMOGLYPHS", "MIN_LETTERS", "AttentionGuidedEdit",
           "AttentionHijackEdit", "AttentionShiftEdit", "ExhaustiveHomoglyph", "ExhaustiveTypo", "Homoglyph",
           "StealthEdit", "Typo", "WordCodec", "WordEditSearch", "edit_variants", "homoglyph_variants",
           "typo_variants"]

MIN_LETTERS = 3
KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# letter -> look-alikes: Unicode confusables (Cyrillic, Greek) first, then leetspeak
HOMOGLYPHS = {
    "a": "аα4@", "b": "Ь8", "c": "сϲ", "d": "ԁ", "e": "еε3", "g": "ɡ9", "h": "һ", "i": "іι1!", "j": "ј",
    "k": "κ", "l": "ӏ1|", "m": "м", "n": "п", "o": "оο0", "p": "рρ", "q": "ԛ", "s": "ѕ5$", "t": "т7", "u": "υ",
    "v": "ν", "w": "ԝ", "x": "хχ", "y": "уγ", "z": "ᴢ2",
}


def keyboard_neighbours(letter: str) -> str:
    """The keys around ``letter`` on a QWERTY keyboard: left and right on its row, and the two nearest keys on
    the rows above and below."""
    for row, keys in enumerate(KEYBOARD):
        at = keys.find(letter)
        if at < 0:
            continue
        near = [keys[j] for j in (at - 1, at + 1) if 0 <= j < len(keys)]
        for other in (row - 1, row + 1):
            if 0 <= other < len(KEYBOARD):
                near += [KEYBOARD[other][j] for j in (at - 1, at, at + 1) if 0 <= j < len(KEYBOARD[other])]
        return "".join(dict.fromkeys(near))
    return ""


def typo_variants(word: str) -> list[str]:
    """Every word one typing slip away from ``word``: neighbouring letters swapped, one dropped, a neighbouring
    key inserted after a letter, one replaced by a neighbouring key (in that order, duplicates dropped)."""
    out = [word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1) if word[i] != word[i + 1]]
    out += [word[:i] + word[i + 1:] for i in range(len(word))]
    out += [word[:i + 1] + key + word[i + 1:] for i in range(len(word)) for key in keyboard_neighbours(word[i])]
    out += [word[:i] + key + word[i + 1:] for i in range(len(word)) for key in keyboard_neighbours(word[i])]
    return [variant for variant in dict.fromkeys(out) if variant != word]


def homoglyph_variants(word: str) -> list[str]:
    """Every word with one letter of ``word`` replaced by a look-alike (:data:`HOMOGLYPHS`)."""
    out = [word[:i] + glyph + word[i + 1:] for i, letter in enumerate(word) for glyph in HOMOGLYPHS.get(letter, "")]
    return list(dict.fromkeys(out))


@dataclass
class Unit:
    """A run of a row's tokens spelled ``text``: an editable word (``surface``: what a reader sees, ``prefix``:
    what the tokeniser needs before it to give ``pieces`` again) or anything else (``surface`` None)."""

    pieces: tuple[int, ...]
    text: str
    surface: str | None = None
    prefix: str = ""


class WordCodec:
    """A tokeniser seen as words: a row of ids split into words (its tokens grouped the way the tokeniser
    marks them: ``##`` continues a WordPiece word, ``Ġ`` / ``▁`` starts a BPE / SentencePiece one, every token
    is a word of a word-level vocabulary) and an edited word encoded again by the tokeniser itself.

    ``tokenizer``: :class:`detectors.text_data.TextTokenizer` or :class:`detectors.huggingface.PretrainedTokenizer`
    (``encode``, ``tokens``, ``vocab``, ``special_ids``, ``pad_id``, ``token_id``). A word whose surface does not
    encode back to its own pieces (an ``[UNK]``, a piece the decoder cannot spell) is never edited.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_id)
        unk = tokenizer.token_id("[UNK]")
        self.unk_id = None if unk is None else int(unk)
        # the tokens that frame a message ([CLS], [SEP], <s>, </s>): an [UNK] is part of the message
        self.frame_ids = frozenset(int(i) for i in tokenizer.special_ids) - {self.unk_id, self.pad_id}
        vocab = tokenizer.vocab()
        self.style = next((style for style, marker in (("wordpiece", "##"), ("bpe", "Ġ"), ("sentencepiece", "▁"))
                           if any(token.startswith(marker) for token in vocab)), "word")
        self._pieces: dict[str, tuple[int, ...]] = {}

    def _starts_word(self, token: str, first: bool) -> bool:
        if self.style == "wordpiece":
            return not token.startswith("##")
        if self.style in ("bpe", "sentencepiece"):
            return first or token.startswith("Ġ" if self.style == "bpe" else "▁")
        return True

    def _spell(self, tokens: list[str]) -> str:
        if self.style == "wordpiece":
            return tokens[0] + "".join(t.removeprefix("##") for t in tokens[1:])
        return "".join(tokens).removeprefix("Ġ").removeprefix("▁")

    def pieces(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Each text's tokens as the tokeniser writes them inside a message (its frame and padding removed)."""
        missing = [text for text in dict.fromkeys(texts) if text not in self._pieces]
        if missing:
            ids, _, _ = self._tokenizer.encode(list(missing))
            for text, row in zip(missing, ids.tolist()):
                row = [i for i in row if i != self.pad_id]
                while row and row[0] in self.frame_ids:
                    row.pop(0)
                while row and row[-1] in self.frame_ids:
                    row.pop()
                self._pieces[text] = tuple(row)
        return [self._pieces[text] for text in texts]

    def is_word(self, pieces: Sequence[int]) -> bool:
        """Whether ``pieces`` are one whole word of the vocabulary (not ``[UNK]``): an edit that writes one
        reads as another word, so no edit may."""
        return len(pieces) == 1 and pieces[0] != self.unk_id

    def split(self, row: Sequence[int]) -> tuple[list[int], list[Unit], list[int]]:
        """``(head, units, tail)``: the frame before and after the message and the message's units."""
        row = [int(i) for i in row if int(i) != self.pad_id]
        head, tail = [], []
        while row and row[0] in self.frame_ids:
            head.append(row.pop(0))
        while row and row[-1] in self.frame_ids:
            tail.insert(0, row.pop())
        tokens = self._tokenizer.tokens(row)
        groups: list[list[int]] = []
        for at, (token_id, token) in enumerate(zip(row, tokens)):
            starts = token_id in self.frame_ids or token_id == self.unk_id or not groups \
                or self._starts_word(token, at == 0) or groups[-1][-1] in self.frame_ids \
                or groups[-1][-1] == self.unk_id
            if starts:
                groups.append([])
            groups[-1].append(at)
        units = []
        for group in groups:
            pieces = tuple(row[at] for at in group)
            surface = self._spell([tokens[at] for at in group])
            if any(p in self.frame_ids or p == self.unk_id for p in pieces) or not (
                    surface.isascii() and surface.isalpha() and len(surface) >= MIN_LETTERS):
                units.append(Unit(pieces, surface))
                continue
            prefix = next((p for p, got in zip(("", " "), self.pieces([surface, " " + surface])) if got == pieces),
                          None)
            units.append(Unit(pieces, surface) if prefix is None else Unit(pieces, surface, surface, prefix))
        return head, units, tail

    def join(self, head: list[int], units: Sequence[Unit], tail: list[int], length: int) -> list[int] | None:
        """The row of ``length`` ids: the frame around the units' tokens, then padding; None when they do not
        fit (an edit that pushes other words past ``max_length`` removes them from what the model reads, which
        no look-alike edit may do)."""
        row = head + [p for unit in units for p in unit.pieces] + tail
        return None if len(row) > length else row + [self.pad_id] * (length - len(row))


def edit_variants(word: str) -> list[str]:
    """Both kinds of edit: every typo of ``word``, then every look-alike."""
    return list(dict.fromkeys(typo_variants(word) + homoglyph_variants(word)))


class WordEditSearch(TokenSearch):
    """Greedy word edits ranked by a first-order importance estimate and verified by forward passes (see the
    module). A subclass names its ``variants`` (word -> edited words); the objective, its verification and its
    goal come from the attack it is combined with (``_context``, ``_estimate``, ``_judge``: hotflip's)."""

    variants: ClassVar[Callable[[str], list[str]]]
    needs_table: ClassVar[bool] = False
    #: only edits that keep each word's number of tokens, so attention is compared token for token
    same_length: ClassVar[bool] = False

    def __init__(self, *, words: int | None = 4, batch_size: int = 1024, target_class: int | None = None) -> None:
        if (words is not None and (int(words) != words or words < 1)) or int(batch_size) != batch_size \
                or batch_size < 1:
            raise ValueError(f"{self.name} needs integer words >= 1 and batch_size >= 1; got words={words}, "
                             f"batch_size={batch_size}")
        self.words = None if words is None else int(words)
        self.batch_size = int(batch_size)
        self.candidates, self.beam = None, 1
        self._set_target(target_class)

    def params(self) -> dict:
        return {"words": self.words, **self._target_params()}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain,
                 seed: int, index: torch.Tensor) -> torch.Tensor:
        """Edited messages (N, T): an edit moves the tokens after it, so no position-wise projection applies;
        the search itself keeps the budget and the protected words."""
        with self._attacking(model):
            return self.perturb(model, x.detach(), y, eps=eps, domain=domain, seed=seed, index=index)

    def at_budgets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, budgets, domain, seed: int,
                   index: torch.Tensor) -> list[torch.Tensor]:
        """One search to the largest budget, the best message taken after each budget's steps."""
        with self._attacking(model):
            return self._search(model, x.detach(), y, budgets=budgets, domain=domain, index=index)

    def _importance(self, model, x: torch.Tensor, ctx: dict, unk_id: int) -> torch.Tensor:
        """(n, T) the first-order change of the objective when each token becomes [UNK]."""
        embeddings = model.embed(x).detach().requires_grad_(True)
        logits, dist = self._forward(model, x, embeddings)
        gradient, = torch.autograd.grad(self._estimate(logits, dist, ctx).sum(), embeddings)
        unk = model.embedding.weight.detach()[unk_id]
        change = ((unk - embeddings.detach()) * gradient).sum(-1)
        return change.abs() if self.absolute_estimate else change

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain, seed: int,
                index: torch.Tensor) -> torch.Tensor:
        return self._search(model, x, y, budgets=[eps], domain=domain, index=index)[0]

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, budgets, domain,
                index: torch.Tensor) -> list[torch.Tensor]:
        """The best message after each of ``budgets`` steps (the search never reads its budget)."""
        domain = token_domain(self.name, domain)
        check_text_model(self.name, model)
        steps = [check_budget(self.name, eps) for eps in budgets]
        if domain.codec is None:
            raise ValueError(f"{self.name} edits words and needs the tokeniser: a TokenDomain with a codec "
                             "(TokenDomain.with_protection(codec=WordCodec(tokenizer)))")
        if x.ndim != 2 or x.dtype not in (torch.int64, torch.int32) or y.shape != (len(x),):
            raise ValueError(f"{self.name}: expected token ids (N, T) and labels (N,), got {tuple(x.shape)} "
                             f"{x.dtype} and {tuple(y.shape)}")
        codec = domain.codec
        n, length = x.shape
        x = x.long()
        if n == 0 or max(steps, default=0) == 0:
            return [x.clone() for _ in steps]
        protected = domain.protected_positions(x, index).cpu()
        with torch.no_grad():
            logits, dist = self._forward(model, x)
        ctx = self._context(model, x, y, logits, dist)
        where = self._positions(model, x, dist)
        if where is not None:
            protected |= ~where.cpu()
        clean = self._judge(logits, dist, ctx)
        done = clean.success.clone()  # already where the attack wants it: nothing to do
        importance = self._importance(model, x, ctx, codec.unk_id if codec.unk_id is not None
                                      else domain.special_ids[0]).detach().cpu()
        rows = []  # per row: head, units, tail, the editable units in rank order
        for r, row in enumerate(x.tolist()):
            head, units, tail = codec.split(row)
            starts, at = [], len(head)
            for unit in units:
                starts.append(at)
                at += len(unit.pieces)
            editable = [i for i, unit in enumerate(units) if unit.surface is not None
                        and unit.surface.lower() not in domain.protected_words
                        and not protected[r, starts[i]:starts[i] + len(unit.pieces)].any()]
            score = {i: float(importance[r, starts[i]:starts[i] + len(units[i].pieces)].sum()) for i in editable}
            rows.append((head, units, tail, sorted(editable, key=lambda i: (-score[i], i))))
        best = x.clone()
        best_keep = torch.where(clean.feasible, clean.keep.float(), -math.inf)
        current = [list(units) for _, units, _, _ in rows]
        edited: list[set[int]] = [set() for _ in range(n)]
        found = {0: best.clone()} if 0 in steps else {}
        for step in range(1, max(steps) + 1):
            proposals, owner, picks = [], [], []
            for r, (head, _, tail, order) in enumerate(rows):
                if done[r]:
                    continue
                open_words = [i for i in order if i not in edited[r]]
                seen = {tuple(codec.join(head, current[r], tail, length) or ())}  # an edit that changes nothing
                for i in open_words[:self.words]:
                    unit = current[r][i]
                    spelled = [unit.prefix + v for v in self.variants(unit.surface)]
                    for variant, pieces in zip(spelled, codec.pieces(spelled)):
                        if codec.is_word(pieces) or (self.same_length and len(pieces) != len(unit.pieces)):
                            continue  # "now" -> "no": another word, another message
                        units = list(current[r])
                        edit = variant.removeprefix(unit.prefix)
                        units[i] = Unit(pieces, edit, edit, unit.prefix)
                        ids = codec.join(head, units, tail, length)
                        if ids is None or tuple(ids) in seen:
                            continue
                        seen.add(tuple(ids))
                        proposals.append(ids)
                        owner.append(r)
                        picks.append((i, units[i]))
            if not proposals:
                break
            candidates = torch.tensor(proposals, dtype=torch.long, device=x.device)
            whose = torch.tensor(owner, device=x.device)
            judged = self._verify(model, candidates, {k: v[whose] for k, v in ctx.items()})
            keep = torch.where(judged.success | judged.feasible, judged.keep.float(), -math.inf)
            for r in sorted(set(owner)):
                mine = (whose == r).nonzero().squeeze(1)
                hit = bool(judged.success[mine].any())
                value = torch.where(judged.success[mine], keep[mine], -math.inf) if hit else keep[mine]
                pick = int(mine[int(torch.argmax(value))])  # ties: the first proposed, the best-ranked word
                if not math.isfinite(float(keep[pick])):
                    continue
                unit_index, unit = picks[pick]
                current[r][unit_index] = unit
                edited[r].add(unit_index)
                if hit or float(keep[pick]) > float(best_keep[r]):
                    best[r] = candidates[pick]
                    best_keep[r] = keep[pick]
                done[r] |= hit
            if step in steps:
                found[step] = best.clone()
            if bool(done.all()):
                break
        return [found[k] if k in found else best.clone() for k in steps]  # a search that stopped holds its best


class Typo(WordEditSearch, HotFlip):
    """Typing slips, one character per word, within a budget of words (see the module)."""

    name = "typo"
    reference = "Gao et al. 2018 (DeepWordBug); Morris et al. 2020 (Reevaluating Adversarial Examples in NLP)"
    variants = staticmethod(typo_variants)


class Homoglyph(WordEditSearch, HotFlip):
    """Look-alike characters, one per word, within a budget of words (see the module)."""

    name = "homoglyph"
    reference = "Gao et al. 2018 (DeepWordBug); Eger et al. 2019 (Text Processing Like Humans Do: visual attacks)"
    variants = staticmethod(homoglyph_variants)


class ExhaustiveTypo(Typo):
    """Every word and every typo verified per step: exact at a budget of 1 word."""

    name = "exhaustive-typo"
    reference = "exhaustive search over single-word typos (optimal at a budget of 1 word)"

    def __init__(self, *, batch_size: int = 1024, target_class: int | None = None) -> None:
        super().__init__(words=None, batch_size=batch_size, target_class=target_class)

    def params(self) -> dict:
        return self._target_params()


class ExhaustiveHomoglyph(Homoglyph):
    """Every word and every look-alike verified per step: exact at a budget of 1 word."""

    name = "exhaustive-homoglyph"
    reference = "exhaustive search over single-word look-alikes (optimal at a budget of 1 word)"

    def __init__(self, *, batch_size: int = 1024, target_class: int | None = None) -> None:
        super().__init__(words=None, batch_size=batch_size, target_class=target_class)

    def params(self) -> dict:
        return self._target_params()


class _AttentionEdits(WordEditSearch):
    """An attention attack by the same word edits (typos and look-alikes), each edited word keeping its number
    of tokens so the attention is compared position for position."""

    variants = staticmethod(edit_variants)
    same_length = True

    def __init__(self, *, words: int | None = 4, batch_size: int = 1024) -> None:
        super().__init__(words=words, batch_size=batch_size)


class AttentionShiftEdit(_AttentionEdits, TokenAttentionShift):
    """The attention moved as far as possible (JSD) from the clean one by word edits, prediction kept."""

    name = "attention-shift-edit"
    reference = "Ghorbani et al. 2019 (Interpretation of neural networks is fragile), by word edits " \
                "(Gao et al. 2018)"


class AttentionHijackEdit(_AttentionEdits, TokenAttentionHijack):
    """The attention pulled onto the clean input's least-attended words by editing other words, prediction kept."""

    name = "attention-hijack-edit"
    reference = "Dombrowski et al. 2019 (targeted explanation manipulation), by word edits (Gao et al. 2018)"

    def __init__(self, *, k: int = 2, words: int | None = 4, batch_size: int = 1024) -> None:
        super().__init__(words=words, batch_size=batch_size)
        self.k = positive_count(self.name, k)

    def params(self) -> dict:
        return {**super().params(), "k": self.k}


class AttentionGuidedEdit(_AttentionEdits, TokenAttentionGuided):
    """Word edits on the k most-attended positions of the clean input only."""

    name = "attention-guided-edit"
    reference = "Fu et al. 2022 (Patch-Fool), by word edits (Gao et al. 2018)"
    targetable = False

    def __init__(self, *, k: int = 5, words: int | None = 4, batch_size: int = 1024) -> None:
        super().__init__(words=words, batch_size=batch_size)
        self.k = positive_count(self.name, k)

    def params(self) -> dict:
        return {**super().params(), "k": self.k}


class StealthEdit(_AttentionEdits, TokenStealth):
    """A misclassification by word edits whose attention stays closest to the clean one."""

    name = "stealth-edit"
    reference = "Zhang et al. 2020 (Interpretable Deep Learning under Fire, ADV^2), by word edits"

    def __init__(self, *, lam: float = 1.0, words: int | None = 4, batch_size: int = 1024) -> None:
        super().__init__(words=words, batch_size=batch_size)
        if not lam >= 0:
            raise ValueError(f"{self.name} needs lam >= 0, got {lam}")
        self.lam = float(lam)

    def params(self) -> dict:
        return {**super().params(), "lam": self.lam}


EDIT_ATTENTION_ATTACKS = ("attention-shift-edit", "attention-hijack-edit", "attention-guided-edit", "stealth-edit")
EDIT_ATTACKS = (Typo, Homoglyph, ExhaustiveTypo, ExhaustiveHomoglyph, AttentionShiftEdit, AttentionHijackEdit,
                AttentionGuidedEdit, StealthEdit)
