"""What a text attacker may change: :class:`TokenDomain`, the ``--substitutions`` table and the protected words.

A substitution's budget is a number of token positions; a word edit's (:mod:`attacks.text_edits`) a number of
words; both are ``--token-budget`` and share the norm :data:`TOKEN_NORM`. Special tokens are never changed or
written (``[PAD] [UNK] [CLS] [MASK]``, ``[SEP]``, ``<s>``...). Protected positions are never changed by an
attack that keeps the meaning: the data's rationale tokens (the phishing corpus records the frame that decides
each label) and the words of ``--protect FILE``; only ``hotflip-any``, an upper bound under its own name, ignores
them.

The substitution table is held sparsely: the sorted codes ``from * vocab + to`` of its allowed pairs, not a
(vocab x vocab) table (0.9 GB for a 30k WordPiece vocabulary).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from detectors.errors import BadInputError

__all__ = ["TOKEN_NORM", "TokenDomain", "check_budget", "check_text_model", "load_protected_words",
           "load_substitutions", "token_domain"]

TOKEN_NORM = "tokens"  # a text attack's budget: token positions substituted, or words edited


@dataclass(frozen=True, eq=False)
class TokenDomain:
    """Which token positions an attacker may change and into what.

    ``special_ids``: tokens never replaced and never written (padding, [CLS], [UNK], [MASK]).
    ``pairs``: optional sorted int64 codes ``a * vocab_size + b``, one per substitution of token a by token b the
    table allows (:meth:`from_substitutions`); without it every non-special token may become any other
    non-special token.
    ``codec``: the tokeniser seen as words (:class:`attacks.text_edits.WordCodec`), which the word edits need.
    ``protected``: optional (rows, T) bool over the audited rows (indexed by a row's global index), True on the
    data's rationale tokens; ``protected_words``: lower-cased words never changed (``--protect``).
    """

    vocab_size: int
    special_ids: tuple[int, ...]
    pairs: torch.Tensor | None = None
    codec: object | None = None
    protected: torch.Tensor | None = None
    protected_words: frozenset[str] = frozenset()

    @classmethod
    def from_substitutions(cls, vocab: Mapping[str, int], special_ids: Sequence[int],
                           table: Mapping[str, Sequence[str]], *, source: str = "substitutions") -> "TokenDomain":
        """A domain restricted to ``table`` (token -> allowed replacements, the JSON of ``--substitutions``).
        A token outside the vocabulary, a special token or a malformed entry is refused (BadInputError)."""
        if not isinstance(table, Mapping):
            raise BadInputError(f"{source}: expected a JSON object mapping a token to a list of replacements, "
                                f"got {type(table).__name__}")
        special = {int(i) for i in special_ids}
        codes = set()
        for token, replacements in table.items():
            if not isinstance(replacements, list) or not all(isinstance(r, str) for r in replacements):
                raise BadInputError(f"{source}: {token!r} must map to a list of tokens (strings), got "
                                    f"{json.dumps(replacements)[:60]}")
            for word in (token, *replacements):
                if word not in vocab:
                    raise BadInputError(f"{source}: {word!r} is not in the model's vocabulary ({len(vocab)} tokens, "
                                        "lower-cased by the tokeniser); list only tokens the model knows")
                if vocab[word] in special:
                    raise BadInputError(f"{source}: {word!r} is a special token; special tokens are never "
                                        "substituted")
            codes.update(vocab[token] * len(vocab) + vocab[r] for r in replacements if vocab[r] != vocab[token])
        return cls(vocab_size=len(vocab), special_ids=tuple(sorted(special)),
                   pairs=torch.tensor(sorted(codes), dtype=torch.int64))

    def with_protection(self, *, codec=None, protected: torch.Tensor | None = None,
                        words: Sequence[str] = ()) -> "TokenDomain":
        """This domain with the tokeniser's ``codec``, the rationale rows ``protected`` and the ``words``."""
        return replace(self, codec=codec, protected=protected,
                       protected_words=frozenset(w.lower() for w in words))

    def protected_positions(self, ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(n, T) bool: the positions of rows ``ids`` (global indices ``index``) no meaning-keeping attack
        changes: their rationale tokens and every token of a protected word."""
        out = torch.zeros(ids.shape, dtype=torch.bool)
        if self.protected is not None and self.protected.shape[1] == ids.shape[1]:
            out |= self.protected[index.cpu()]
        if self.protected_words and self.codec is not None:
            for r, row in enumerate(ids.tolist()):
                head, units, _ = self.codec.split(row)
                at = len(head)
                for unit in units:
                    if unit.text.lower() in self.protected_words:
                        out[r, at:at + len(unit.pieces)] = True
                    at += len(unit.pieces)
        return out.to(ids.device)

    def _sources(self, device) -> torch.Tensor:
        return torch.unique(self.pairs.to(device) // self.vocab_size)

    def mutable(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, T) bool: positions an attacker may change (not special, and with a replacement left)."""
        free = ~torch.isin(ids, torch.as_tensor(self.special_ids, device=ids.device))
        if self.pairs is not None:
            free &= torch.isin(ids, self._sources(ids.device))
        return free

    def targets(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, T, vocab) bool: the tokens each position may become (none on frozen positions)."""
        allowed = torch.zeros(*ids.shape, self.vocab_size, dtype=torch.bool, device=ids.device)
        if self.pairs is None:
            allowed[...] = True
            allowed[..., list(self.special_ids)] = False
            allowed.scatter_(-1, ids.unsqueeze(-1), False)
        else:
            pairs = self.pairs.to(ids.device)
            flat = ids.reshape(-1)
            low = torch.searchsorted(pairs, flat * self.vocab_size)
            high = torch.searchsorted(pairs, (flat + 1) * self.vocab_size)
            counts = high - low
            where = torch.repeat_interleave(torch.arange(len(flat), device=ids.device), counts)
            start = torch.repeat_interleave(low - (torch.cumsum(counts, 0) - counts), counts)
            codes = pairs[torch.arange(len(where), device=ids.device) + start]
            allowed.view(-1, self.vocab_size)[where, codes % self.vocab_size] = True
        return allowed & self.mutable(ids).unsqueeze(-1)

    def allows(self, ids: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """(N, T) bool: whether each position of ``ids`` may become the token of ``new`` there (``targets``
        read at ``new`` alone, without its (N, T, vocab) table); ``new`` must be in the vocabulary."""
        if self.pairs is not None:
            legal = torch.isin(ids * self.vocab_size + new, self.pairs.to(ids.device))
        else:
            legal = ~torch.isin(new, torch.as_tensor(self.special_ids, device=ids.device)) & (new != ids)
        return legal & self.mutable(ids)

    def project(self, ids_adv: torch.Tensor, ids: torch.Tensor, *, eps: float, norm: str = TOKEN_NORM
                ) -> torch.Tensor:
        """``ids_adv`` with every change this domain forbids undone, then at most ``eps`` changed positions
        kept (the first in position order)."""
        if norm != TOKEN_NORM:
            raise ValueError(f"a token domain measures budgets in {TOKEN_NORM!r}, got norm {norm!r}")
        inside = (ids_adv >= 0) & (ids_adv < self.vocab_size)
        legal = self.allows(ids, ids_adv.clamp(0, self.vocab_size - 1))
        keep = (ids_adv != ids) & legal & inside
        keep &= torch.cumsum(keep.long(), dim=1) <= int(eps)
        return torch.where(keep, ids_adv, ids).detach()

    def contains(self, ids_adv: torch.Tensor, ids: torch.Tensor, *, eps: float, norm: str = TOKEN_NORM) -> bool:
        """Whether ``ids_adv`` changes at most ``eps`` positions of ``ids``, each as this domain allows."""
        return bool(torch.equal(self.project(ids_adv, ids, eps=eps, norm=norm), ids_adv))


def _read(path: Path, option: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadInputError(f"{option} {str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{option} {str(path)!r} is a folder; name a file") from None
    except UnicodeDecodeError as error:
        raise BadInputError(f"{option} {str(path)!r}: not UTF-8 (byte {error.start})") from None


def load_substitutions(path: str | Path, vocab: Mapping[str, int], special_ids: Sequence[int]) -> TokenDomain:
    """The :class:`TokenDomain` of a ``--substitutions`` JSON file (``{"password": ["passcode", "pin"]}``):
    an unreadable file, invalid JSON or UTF-8, or an entry :meth:`TokenDomain.from_substitutions` refuses is a
    BadInputError naming the file."""
    path = Path(path)
    content = _read(path, "--substitutions")
    try:
        table = json.loads(content)
    except json.JSONDecodeError as error:
        raise BadInputError(f"--substitutions {str(path)!r}: invalid JSON at line {error.lineno} column "
                            f"{error.colno} ({error.msg})") from None
    return TokenDomain.from_substitutions(vocab, special_ids, table, source=f"--substitutions {str(path)!r}")


def load_protected_words(path: str | Path) -> tuple[str, ...]:
    """The words of a ``--protect`` file: one word a line, UTF-8, blank lines and ``#`` comments skipped;
    a line holding more than one word is refused (protect each word on its own line)."""
    path = Path(path)
    words = []
    for number, line in enumerate(_read(path, "--protect").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) > 1:
            raise BadInputError(f"--protect {str(path)!r}, line {number}: {line!r} holds more than one word; "
                                "write one word a line")
        words.append(line)
    return tuple(words)


def token_domain(name: str, domain) -> TokenDomain:
    if not isinstance(domain, TokenDomain):
        raise ValueError(f"{name} attacks text detectors (token ids) and needs a TokenDomain, got "
                         f"{type(domain).__name__}")
    return domain


def check_text_model(name: str, model: nn.Module) -> None:
    missing = [m for m in ("embed", "forward_embeddings", "attention_mask") if not callable(getattr(model, m, None))]
    if missing or not isinstance(getattr(model, "embedding", None), nn.Embedding):
        raise ValueError(f"{name} needs a text detector (embedding, embed, forward_embeddings, attention_mask); "
                         f"{type(model).__name__} lacks {', '.join(missing) or 'embedding'}")


def check_budget(name: str, eps: float) -> int:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0 and int(eps) == eps):
        raise ValueError(f"{name}: the budget is a whole number of tokens >= 0, got {eps!r}")
    return int(eps)
