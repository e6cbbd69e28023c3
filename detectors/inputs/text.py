"""Text inputs: a sample is T token ids (int64), ``[CLS]`` at position 0 and ``[PAD]`` after the message, one
token per position (:class:`detectors.text.TextTransformer`, tokenised by :mod:`detectors.text_data`).

Text is the one kind whose samples are integers: token ids have rank 1 like a tabular row, so the kind is
never guessed from the rank. A checkpoint names it (its detector is ``text``), results.json records it
(``data.input_kind``) and a batch of integer ids is text (:func:`is_token_ids`).

What is explained, removed and attacked is a message's *words*: the explained positions
(:func:`explained_positions`) are the message's own tokens; the tokens a tokeniser wraps a message in
(``[CLS]``, ``[SEP]``, ``<s>``, ``</s>``, padding: :attr:`TokenIds.frame_ids`, and position 0) are never
explained (every explainer's attribution there is exactly 0), never removed and never ranked or correlated
by a per-token metric. ``[UNK]`` and ``[MASK]`` are special ids too but stand for a word of the message (an
unknown word, a removed one), so they count as message tokens. Removing a token (the ``mask`` removal baseline,
the only one text has: a token id has no mean) replaces it by the tokeniser's ``[MASK]`` id, or by ``[UNK]``
where a tokeniser has no ``[MASK]`` (the checkpoints of ``audit train --detector text`` always have both, ids
3 and 1): the position stays, as ERASER's "masked" erasure (DeYoung et al. 2020), not removed from the message.

A model this tool did not train enters through the same surface, which :class:`TokenModel` names: the
embedding layer, ``embed`` / ``forward_embeddings`` for gradients through embeddings, and ``attention_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from detectors.base import Detector, TokenMap
from detectors.errors import BadInputError
from detectors.inputs.base import CLS_TOKENS, Bars, InputKind
from detectors.inputs.tabular import BAR_FEATURES


class TokenModel(Protocol):
    """What the audit needs of a text detector besides the Detector contract."""

    embedding: nn.Embedding

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...  # (N, T) -> (N, T, dim)

    def forward_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor, *,
                           with_attention: bool = False): ...

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor: ...  # (N, T) bool, False on padding

    frame_ids: tuple[int, ...]  # the special ids its tokeniser wraps a message in (TokenIds.frame_ids)


@dataclass(frozen=True)
class TokenIds:
    """The special ids the audit needs of a tokeniser: ``pad_id``, ``replacement_id`` (what a removed token
    becomes: ``[MASK]``, else ``[UNK]``), its name ``replacement``, ``special_ids`` (every special token:
    never a substitution's replacement) with the ``vocab_size``, and ``frame_ids``: the special ids that are
    no part of a message (every one but ``[UNK]`` and ``[MASK]``)."""

    pad_id: int
    replacement_id: int
    replacement: str
    special_ids: tuple[int, ...] = ()
    vocab_size: int = 0
    frame_ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, tokenizer) -> "TokenIds":
        """From a :class:`detectors.text_data.TextTokenizer` (or anything with ``pad_id`` and ``token_id``)."""
        words = {tokenizer.token_id(name) for name in ("[MASK]", "[UNK]")} - {None}
        special = tuple(int(i) for i in tokenizer.special_ids)
        frame = tuple(sorted({i for i in special if i not in words} | {int(tokenizer.pad_id)}))
        for name in ("[MASK]", "[UNK]"):
            found = tokenizer.token_id(name)
            if found is not None:
                return cls(int(tokenizer.pad_id), int(found), name, special, int(tokenizer.vocab_size), frame)
        raise BadInputError("the tokeniser has neither a [MASK] nor an [UNK] token to replace a removed token by")

    def as_baseline(self) -> torch.Tensor:
        """What a text Subject stores as its removal baseline: the int64 ids (pad id, replacement id, frame
        ids...)."""
        return torch.tensor([self.pad_id, self.replacement_id, *self.frame_ids], dtype=torch.int64)


def position_names(max_length: int) -> list[str]:
    """One name per token position: ``[CLS]`` then ``t1`` ... (a text checkpoint's ``features``)."""
    return ["[CLS]"] + [f"t{i}" for i in range(1, max_length)]


def is_token_ids(x: torch.Tensor) -> bool:
    """Whether a batch is token ids: text is the only kind with integer samples."""
    return not x.is_floating_point()


def explained_positions(x: torch.Tensor, pad_id: int, frame_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """(N, T) bool: the positions an explainer explains and a removal may remove: the message's own tokens,
    neither padding nor a frame id, after position 0 ([CLS] or ``<s>``)."""
    keep = ~torch.isin(x, torch.tensor([pad_id, *frame_ids], dtype=x.dtype, device=x.device))
    keep[:, 0] = False
    return keep


def explained_positions_of(detector, x: torch.Tensor) -> torch.Tensor:
    """:func:`explained_positions` for a token model, whose ``attention_mask`` says which positions are real
    and whose ``frame_ids`` which ids its tokeniser wraps a message in (none besides [CLS] and padding where
    it has no such attribute)."""
    frame = torch.tensor(getattr(detector, "frame_ids", ()), dtype=x.dtype, device=x.device)
    keep = detector.attention_mask(x) & ~torch.isin(x, frame)
    keep[:, 0] = False
    return keep


def message_width(attention_mask: torch.Tensor) -> int:
    """The columns a batch needs: up to its last real token. Trailing padding is masked out of every attention
    (a weight of exactly 0 from every query), so a model run on these columns alone gives the same logits,
    the same CLS attention row and a gradient of exactly 0 at the padding, at the cost of the batch's longest
    message rather than the checkpoint's length."""
    real = attention_mask.any(0).nonzero()
    return int(real.max()) + 1 if len(real) else int(attention_mask.shape[1])


def padded_attentions(attentions: list[torch.Tensor], tokens: int) -> list[torch.Tensor]:
    """Attention computed on a batch's :func:`message_width` columns, (n, h, w, w) per layer, back to (n, h,
    tokens, tokens): the trailing padding's columns and rows are 0 (no query attends padding). A batch
    without trailing padding gets the very tensors its forward used (grad-attention differentiates them)."""
    if all(a.shape[-1] == tokens for a in attentions):
        return attentions
    return [torch.nn.functional.pad(a, (0, tokens - a.shape[-1], 0, tokens - a.shape[-2])) for a in attentions]


class Text(InputKind):
    name = "text"
    rank = 1
    sample_shape = "(T,)"
    axes = "(token positions,)"
    description = "(N, T) token ids"
    detector = "text"
    builtin_data = "phishing"
    data_file = ".jsonl"
    scale_mode = "none"
    removal_baselines = ("mask",)
    token_hint = "a text model's attention covers its T token positions, [CLS] first"
    samples_caption = ("Each sample's message as tokens, shaded by each explainer's attribution scaled to the "
                       "message's largest magnitude (red positive, blue negative); [CLS] and padding are not "
                       "explained.")
    removal_axis = "fraction of the message's tokens masked"

    def token_map(self, input_shape: tuple[int, ...], *, cls_token: str = "first",
                  patch_size: int | None = None) -> TokenMap:
        """Position p is token p: [CLS] is the input's own position 0 (``first``), not an extra token."""
        if cls_token not in CLS_TOKENS:
            raise BadInputError(f"cls token {cls_token!r} is unknown; expected one of {', '.join(CLS_TOKENS)}")
        self._check_patch_size(patch_size)
        shape = tuple(int(size) for size in input_shape)
        if len(shape) != self.rank or shape[0] < 1:
            raise BadInputError(f"{self.name} input needs shape {self.axes}, got {shape}")
        return TokenMap(torch.arange(shape[0]), shape[0], 0 if cls_token == "first" else None)

    def token_grid(self, input_shape: tuple[int, ...], patch_size: int | None) -> str:
        return f"{input_shape[0]} token positions"

    def build_detector(self, input_shape: tuple[int, ...], n_classes: int, *, attention: str) -> Detector:
        raise BadInputError("a text detector is sized by its tokeniser: train it with audit train --detector text")

    def feature_names(self, input_shape: tuple[int, ...]) -> list[str]:
        return position_names(input_shape[0])

    def removal_baseline(self, name: str, x: torch.Tensor, train_mean: torch.Tensor) -> torch.Tensor:
        """``mask``: (n, T) ids, every explained position replaced by the replacement id, the frame ([CLS],
        [SEP], padding) kept. ``train_mean`` is what a text Subject stores in its place,
        :meth:`TokenIds.as_baseline`."""
        if name != "mask":
            raise BadInputError(f"--removal-baseline {name} does not apply to text inputs; use mask")
        pad_id, replacement_id, *frame_ids = (int(v) for v in train_mean.reshape(-1))
        return torch.where(explained_positions(x, pad_id, tuple(frame_ids)), torch.full_like(x, replacement_id), x)

    def attention_view(self, x: np.ndarray, clean: np.ndarray, attacked: np.ndarray) -> Bars:
        """The ten positions with the most attention, clean or attacked, as bars scaled to the larger peak;
        positions with none in either ([CLS], padding) are left out."""
        c, a = clean.flatten(), attacked.flatten()
        peak = max(c.max(), a.max()) or 1.0
        most = np.maximum(c, a)
        order = np.argsort(-most, kind="stable")[:BAR_FEATURES]
        return Bars(order[most[order] > 0], c, a, peak)

    def attribution_figure(self, x: np.ndarray, maps: dict[str, np.ndarray]) -> None:
        """None: the report writes the message's tokens shaded by attribution (HTML, escaped)."""
        return None


TEXT = Text()
