"""The model passes an audit needs, timed bare: the floor the end-to-end audit is compared with.

An in-process ``audit_to_folder`` runs with its detector instrumented: every outermost
call records (rows, whether autograd is on, attention asked). Each distinct call shape
is then timed bare (a forward, plus a backward when autograd was on) and multiplied by
how often it occurred. The ratio audit time / that sum is what loading, attacks'
bookkeeping, the bootstrap and rendering cost on top of the model itself.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _instrument(detector, calls: collections.Counter) -> None:
    depth = [0]

    def wrap(method, attention: bool):
        def timed(x, *args, **kwargs):
            if depth[0] == 0:
                calls[(len(x), torch.is_grad_enabled() and not torch.is_inference_mode_enabled(), attention)] += 1
            depth[0] += 1
            try:
                return method(x, *args, **kwargs)
            finally:
                depth[0] -= 1
        return timed

    detector.forward = wrap(detector.forward, False)
    detector.forward_with_attention = wrap(detector.forward_with_attention, True)


def _bare_seconds(detector, shape, calls: collections.Counter, device: str) -> float:
    total = 0.0
    for (rows, grad, attention), count in calls.items():
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

        once()
        times = []
        for _ in range(3):
            started = time.perf_counter()
            once()
            times.append(time.perf_counter() - started)
        total += sorted(times)[1] * count
    return total


def model_pass_seconds(model_path: str, data: str, max_samples: int, device: str) -> tuple[float, float]:
    """(seconds of the whole in-process audit, seconds of its model passes timed bare)."""
    import auditor.runner as runner

    calls: collections.Counter = collections.Counter()
    seen = {}
    original = runner.load_subject

    def load_and_instrument(*args, **kwargs):
        subject = original(*args, **kwargs)
        _instrument(subject.detector, calls)
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
    detector = seen["subject"].detector
    for name in ("forward", "forward_with_attention"):
        del detector.__dict__[name]
    return audit, _bare_seconds(detector, tuple(detector.input_shape), calls, device)
