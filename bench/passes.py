"""The model passes an audit needs, timed bare: the floor the end-to-end audit is compared with.

An in-process ``audit_to_folder`` runs with its detector instrumented: every outermost
call records (rows, whether autograd is on, attention asked). Each distinct call shape
is then timed bare (a forward, plus a backward when autograd was on) and multiplied by
how often it occurred. The ratio audit time / that sum is what loading, attacks'
bookkeeping, the bootstrap and rendering cost on top of the model itself.

A text detector is also entered through ``forward_embeddings`` (the substitution attacks' estimates and
verifications, embedding-space pgd); every text call is timed bare as a forward from the token embeddings
of random non-special ids of the width the call ran on (its batch's longest message: the detector drops
trailing padding), with a backward to the embeddings when autograd was on
(what captum's layer attributions and the first-order estimates take).
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


ENTRIES = ("forward", "forward_with_attention", "forward_embeddings")


def _instrument(detector, calls: collections.Counter) -> dict:
    """Count the outermost model calls of every instance of the detector's class (copies too: the model
    randomisation check audits copies) by wrapping the class's entry points; returns what to restore."""
    cls, depth, originals = type(detector), [0], {}

    def wrap(method, attention):
        def timed(self, x, *args, **kwargs):
            if depth[0] == 0:
                calls[(len(x), torch.is_grad_enabled() and not torch.is_inference_mode_enabled(),
                       attention if isinstance(attention, bool) else bool(kwargs.get("with_attention")),
                       _width(self, x, args, kwargs))] += 1
            depth[0] += 1
            try:
                return method(self, x, *args, **kwargs)
            finally:
                depth[0] -= 1
        return timed

    for name, attention in zip(ENTRIES, (False, True, None)):
        if hasattr(cls, name):
            originals[name] = cls.__dict__.get(name)  # None: inherited, removed again afterwards
            setattr(cls, name, wrap(getattr(cls, name), attention))
    return originals


def _width(detector, x, args, kwargs) -> int | None:
    """The columns a text call runs on (its batch's longest message, detectors.inputs.text.message_width);
    None for other kinds."""
    if not hasattr(detector, "attention_mask"):  # the token models' surface (detectors.inputs.text.TokenModel)
        return None
    from detectors.inputs.text import message_width

    mask = args[0] if args else kwargs.get("attention_mask")
    if mask is None:
        mask = detector.attention_mask(x)
    return message_width(mask)


def _text_once(detector, rows: int, grad: bool, attention: bool, device: str, length: int):
    vocab = detector.embedding.num_embeddings
    ids = torch.randint(4, vocab, (rows, length), device=device)  # the tokeniser numbers its 4 specials first
    y = torch.zeros(rows, dtype=torch.long, device=device)
    mask = detector.attention_mask(ids)

    def once():
        with torch.inference_mode(not grad):
            embeddings = detector.embed(ids)
            if grad:
                embeddings = embeddings.detach().requires_grad_(True)
            out = detector.forward_embeddings(embeddings, mask, with_attention=attention)
            if grad:
                logits = out[0] if attention else out
                torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), embeddings)
    return once


def _bare_seconds(detector, shape, calls: collections.Counter, device: str) -> float:
    total = 0.0
    for (rows, grad, attention, width), count in calls.items():
        if width is not None:
            total += _median_of_three(_text_once(detector, rows, grad, attention, device, width)) * count
            continue
        x = torch.rand(rows, *shape, device=device)
        y = torch.zeros(rows, dtype=torch.long, device=device)

        def once():
            if grad:
                xg = x.clone().requires_grad_(True)
                logits = detector.forward_with_attention(xg)[0] if attention else detector(xg)
                torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
            else:
                with torch.inference_mode():
                    detector.forward_with_attention(x) if attention else detector(x)

        total += _median_of_three(once) * count
    return total


def _median_of_three(once) -> float:
    once()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return sorted(times)[1]


def model_pass_seconds(model_path: str, data: str | None, max_samples: int, device: str) -> tuple[float, float]:
    """(seconds of the whole in-process audit, seconds of its model passes timed bare)."""
    import auditor.run.runner as runner

    calls: collections.Counter = collections.Counter()
    seen = {}
    original = runner.load_subject

    def load_and_instrument(*args, **kwargs):
        subject = original(*args, **kwargs)
        seen["restore"] = type(subject.detector), _instrument(subject.detector, calls)
        seen["subject"] = subject
        return subject

    runner.load_subject = load_and_instrument
    try:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            runner.audit_to_folder(model_path=model_path, data_spec=data, label_column="label", policy_path=None,
                                   out_dir=Path(folder), eps=(0.01, 0.03, 0.1), attacks=(), max_samples=max_samples,
                                   seed=0, device=device, batch_size=256, save_adversarial=False,
                                   save_explanations=False, quiet=True, profile="quick")
            audit = time.perf_counter() - started
    finally:
        runner.load_subject = original
        cls, originals = seen.get("restore", (None, {}))
        for name, method in originals.items():
            if method is None:
                delattr(cls, name)
            else:
                setattr(cls, name, method)
    detector = seen["subject"].detector
    return audit, _bare_seconds(detector, tuple(detector.input_shape), calls, device)
