"""Is the model the same function from call to call? And if not, what the audit attacks instead.

A model whose output changes between calls (dropout left on at inference, input noise, a randomised
defense) makes any one robust-accuracy number partly luck, and a gradient attack that follows one draw's
gradient understates its own strength (Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False
Sense of Security", section 4.2: Expectation over Transformation, EOT).

:func:`check_determinism` runs at the start of every audit: the clean logits of the first
:data:`CHECK_ROWS` audited rows, computed twice; the model is deterministic when no logit differs by more
than :data:`RELATIVE_TOLERANCE` times the largest logit magnitude (at least 1). It draws nothing from any
random stream it does not restore, so for a deterministic model it changes no number.

A model that fails the check is audited through :class:`ExpectedDetector`: every forward pass runs the
model :data:`EOT_DRAWS` times and returns the log of the mean softmax over the draws, so every gradient
attack follows the gradient of the expected probability (EOT) and every prediction, clean or adversarial,
is the argmax of the expected probability over the draws (a soft majority vote of the draws). That vote
is an ensemble the deployed model is not: ``clean.accuracy`` is then the mean over the draws of each draw's
own correctness (what one call of the model gets right), and the ensemble's accuracy is reported beside it as
``clean.accuracy_ensemble`` (:mod:`auditor.stages.clean`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from detectors.base import Detector

CHECK_ROWS = 64
RELATIVE_TOLERANCE = 1e-6
EOT_DRAWS = 8


@dataclass(frozen=True)
class Determinism:
    """The outcome of :func:`check_determinism`: the verdict, the largest logit difference, the rows used."""

    deterministic: bool
    max_abs_diff: float
    rows: int
    draws: int = 1  # forward passes averaged per prediction by the audit (EOT_DRAWS when not deterministic)

    def to_dict(self) -> dict:
        return {"deterministic": self.deterministic, "max_abs_logit_diff": self.max_abs_diff, "rows": self.rows,
                "relative_tolerance": RELATIVE_TOLERANCE, "draws": self.draws}


@torch.no_grad()
def check_determinism(detector: torch.nn.Module, x: torch.Tensor, *, rows: int = CHECK_ROWS) -> Determinism:
    """Clean logits of ``x[:rows]`` computed twice (in eval mode, as the audit calls the model); the torch
    random state is restored afterwards, so the check consumes no randomness the audit would see."""
    sample = x[:rows]
    devices = [sample.device] if sample.device.type == "cuda" else []
    was_training = detector.training
    detector.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            first = detector(sample).double()
            second = detector(sample).double()
    finally:
        detector.train(was_training)
    difference = float((first - second).abs().max()) if first.numel() else 0.0
    scale = max(1.0, float(first.abs().max())) if first.numel() else 1.0
    return Determinism(deterministic=difference <= RELATIVE_TOLERANCE * scale, max_abs_diff=difference,
                       rows=len(sample))


class ExpectedDetector(Detector):
    """``detector`` seen through the expectation over its own randomness (EOT, Athalye et al. 2018).

    ``forward(x)`` runs the model ``draws`` times (default :data:`EOT_DRAWS`; one pass over the rows
    repeated ``draws`` times) and returns ``log(mean_k softmax(logits_k))``: logits whose softmax is the
    expected probability, whose gradient is the mean of the draws' gradients of it.
    ``forward_with_attention`` returns the same logits with each layer's attention averaged over the draws.
    """

    def __init__(self, detector: Detector, *, draws: int = EOT_DRAWS) -> None:
        super().__init__()
        if draws < 1:
            raise ValueError(f"expected draws >= 1, got {draws}")
        self.model, self.draws = detector, int(draws)
        self.kind = detector.kind
        self.input_shape = tuple(detector.input_shape)
        self.n_classes = detector.n_classes
        self.token_map = detector.token_map

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.draws, *[1] * (x.ndim - 1))

    def _expected(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        log_p = torch.log_softmax(logits.float().view(self.draws, n, -1), dim=-1)
        return torch.logsumexp(log_p, dim=0) - math.log(self.draws)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._expected(self.model(self._repeat(x)), len(x))

    def draw_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Each draw's own logits, (draws, n, classes): what one call of the deployed model returns."""
        return self.model(self._repeat(x)).view(self.draws, len(x), -1)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, attentions = self.model.forward_with_attention(self._repeat(x))
        return (self._expected(logits, len(x)),
                [a.view(self.draws, len(x), *a.shape[1:]).mean(0) for a in attentions])

    def hparams(self) -> dict:
        return {**self.model.hparams(), "eot_draws": self.draws}
