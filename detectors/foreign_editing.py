"""Editing the attention weights inside ``nn.MultiheadAttention`` (the sanity checks' interventions on
models this tool did not train): the module's output is recomputed from the edited weights through its own
value and output projections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from detectors.foreign import MultiheadAttentionCapture


def multihead_edit_unsupported(module: nn.Module) -> str | None:
    """Why :func:`edited_multihead_attention` cannot recompute this module's output, or None when it can."""
    if not isinstance(module, nn.MultiheadAttention):
        return f"a {type(module).__name__} is not an nn.MultiheadAttention"
    if module.bias_k is not None or module.add_zero_attn:
        return "it appends bias or zero keys (add_bias_kv / add_zero_attn) that are not tokens"
    return None


def multihead_allowed_keys(weights: torch.Tensor, key_padding_mask: torch.Tensor | None,
                           attn_mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, heads, queries, keys) booleans: True where a query may attend a key.

    Boolean masks block where True; float masks are added to the scores, and a key counts as allowed
    where the softmax of the masks alone leaves it a non-zero weight (so -inf and -1e9 both block).
    """
    batch, heads, queries, keys = weights.shape
    scores = torch.zeros(batch, heads, queries, keys, dtype=torch.float32, device=weights.device)
    if attn_mask is not None:  # (L, S), or (batch * heads, L, S)
        additive = _additive_mask(attn_mask, weights.device)
        scores = scores + (additive if additive.ndim == 2 else additive.reshape(-1, heads, queries, keys))
    if key_padding_mask is not None:  # (batch, S)
        scores = scores + _additive_mask(key_padding_mask, weights.device).reshape(batch, 1, 1, keys)
    return torch.softmax(scores, dim=-1) > 0


def _additive_mask(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=device).masked_fill(mask.to(device), -torch.inf)
    return mask.to(device, torch.float32)


class _MultiheadAttentionEdit(MultiheadAttentionCapture):
    """Hooks that replace one ``nn.MultiheadAttention``'s output by the one its edited weights give.

    The pre-hook (the capture's) asks the module for its per-head weights; the forward hook applies
    ``edit(weights, allowed)`` and recomputes the output from the module's own value and output
    projections, ``out_proj(edited @ (value W_v + b_v))`` per head, without dropout (the sanity checks run
    the model in eval mode), and hands the caller the weights it asked for, edited.
    """

    def __init__(self, module: nn.MultiheadAttention, edit) -> None:
        # the modules to edit were chosen as layers already: edit every call, self-attention or not
        super().__init__([], "", module, always=True)
        self.edit = edit

    def edit_hook(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
        requested = self.requested.pop() if self.requested else None
        if not requested:
            return None  # a call the pre-hook could not bind: the module reports it itself
        arguments = self.signature.bind(*args, **kwargs).arguments
        weights, value = output[1], arguments["value"]
        key_padding_mask = arguments.get("key_padding_mask")
        attn_mask = arguments.get("attn_mask")
        batched = weights.ndim == 4
        if not batched:  # unbatched call: (heads, L, S) weights, (S, E) value
            weights, value = weights.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not module.batch_first:
            value = value.transpose(0, 1)
        batch, heads, queries, keys = weights.shape
        edited = self.edit(weights, multihead_allowed_keys(weights, key_padding_mask, attn_mask))
        dim = module.embed_dim
        if module._qkv_same_embed_dim:
            value_weight = module.in_proj_weight[2 * dim:]
        else:
            value_weight = module.v_proj_weight
        value_bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * dim:]
        values = torch.nn.functional.linear(value, value_weight, value_bias)
        values = values.reshape(batch, keys, heads, dim // heads).transpose(1, 2)
        mixed = (edited.to(values.dtype) @ values).transpose(1, 2).reshape(batch, queries, dim)
        out = module.out_proj(mixed)
        if not batched:
            out, edited = out[0], edited[0]
        elif not module.batch_first:
            out = out.transpose(0, 1)
        need, average = requested
        if not need:
            return out, None
        return out, edited.mean(dim=-3) if average else edited


@contextmanager
def edited_multihead_attention(modules: list[nn.MultiheadAttention], edit) -> Iterator[None]:
    """Run with ``edit(weights, allowed) -> weights`` applied inside every one of ``modules``.

    The fused fast path is off for the block (it would skip the hooks); hooks and the fast-path flag are
    restored in ``finally``, also when the model raises.
    """
    for module in modules:
        reason = multihead_edit_unsupported(module)
        if reason is not None:
            raise ValueError(f"cannot edit this module's attention: {reason}")
    handles = []
    previous_fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for module in modules:
            editor = _MultiheadAttentionEdit(module, edit)
            handles.append(module.register_forward_pre_hook(editor.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(editor.edit_hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(previous_fastpath)
