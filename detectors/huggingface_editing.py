"""Editing a Hugging Face model's attention inside its forward (the sanity checks of :mod:`auditor.stages.sanity`):
an attention function registered with transformers replaces eager attention for the duration of an edit and
recomputes each edited module's output from its edited weights."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


# -- editing the attention inside the forward (the sanity checks) -------------------------------------------------

# The attention function registered with transformers (AttentionInterface, and eager's mask under the same name)
# that the self-attention modules call while an edit is active; and the attribute holding a module's edit.
EDIT_IMPLEMENTATION = "attention-audit-edit"
EDIT_ATTRIBUTE = "_attention_audit_edit"


def _eager_with_edit(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's own eager attention; where the module carries an edit, its weights edited and its output
    recomputed from them, ``edited @ value`` per head (what eager computes after its dropout, none in eval)."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, weights = eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    edit = getattr(module, EDIT_ATTRIBUTE, None)
    if edit is None:
        return output, weights
    edited = edit(weights, _allowed_keys(attention_mask, weights))
    return torch.matmul(edited.to(value.dtype), value).transpose(1, 2).contiguous(), edited


def _allowed_keys(attention_mask: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    """(batch or 1, 1, queries or 1, keys) booleans, True where a query may attend a key: the additive mask's
    entries that leave a key a weight (a boolean mask's True ones); every key without a mask."""
    if attention_mask is None:
        return torch.ones(1, 1, 1, weights.shape[-1], dtype=torch.bool, device=weights.device)
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return torch.softmax(attention_mask.float(), dim=-1) > 0


def _register_edit_implementation() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(EDIT_IMPLEMENTATION, _eager_with_edit)
    AttentionMaskInterface.register(EDIT_IMPLEMENTATION, eager_mask)


@contextmanager
def edited_attention(modules: list[nn.Module],
                     edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Run with ``edit(weights, allowed) -> weights`` applied inside each of ``modules`` (the self-attention
    modules :meth:`HuggingFaceDetector.attention_modules` names): their models call :func:`_eager_with_edit`
    instead of eager attention for the duration, and eager is back in ``finally``, also when the model raises."""
    with module_edits({module: edit for module in modules}):
        yield


@contextmanager
def module_edits(edits: dict[nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    _register_edit_implementation()
    configs = list({id(module.config): module.config for module in edits}.values())
    previous = [config._attn_implementation for config in configs]
    try:
        for module, edit in edits.items():
            setattr(module, EDIT_ATTRIBUTE, edit)
        for config in configs:
            config._attn_implementation = EDIT_IMPLEMENTATION
        yield
    finally:
        for config, implementation in zip(configs, previous):
            config._attn_implementation = implementation
        for module in edits:
            if hasattr(module, EDIT_ATTRIBUTE):
                delattr(module, EDIT_ATTRIBUTE)
