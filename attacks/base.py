"""What every attack shares: the call signature, mode handling, the 4-D view."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from attacks.domain import Domain

if TYPE_CHECKING:
    import torchattacks


class Attack:
    """``attack(model, x, y, eps=..., domain=..., seed=..., index=...) -> x_adv``.

    ``index`` holds each row's global sample index; every random draw for a row
    comes from a stream keyed by it, so the result does not depend on batching.
    The model is put in eval mode for the attack and left in the mode it was
    found in, also when the attack raises.
    """

    name: ClassVar[str]
    norm: ClassVar[str] = "linf"
    reference: ClassVar[str] = ""
    #: whether the attack can aim at one class (``target_class``) instead of away from the true one
    targetable: ClassVar[bool] = False
    #: a search whose first k steps do not depend on its budget (greedy or beam search over one change a step,
    #: without randomness): one run to the largest budget, snapshotted after each budget's steps, gives every
    #: budget's example as separate runs do (:meth:`at_budgets`)
    nested_budgets: ClassVar[bool] = False
    target_class: int | None = None

    def params(self) -> dict:
        return {}

    def _set_target(self, target_class: int | None) -> None:
        if target_class is not None and (int(target_class) != target_class or target_class < 0):
            raise ValueError(f"{self.name}: expected a class index >= 0 as target_class, got {target_class!r}")
        self.target_class = None if target_class is None else int(target_class)

    def _target_params(self) -> dict:
        return {} if self.target_class is None else {"target_class": self.target_class}

    def _aim(self, attack: "torchattacks.Attack") -> "torchattacks.Attack":
        """A torchattacks attack in targeted mode toward ``target_class`` when one is set."""
        if self.target_class is not None:
            target = self.target_class
            attack.set_mode_targeted_by_function(lambda images, labels: torch.full_like(labels, target), quiet=True)
        return attack

    @staticmethod
    @contextmanager
    def _attacking(model: nn.Module) -> Iterator[None]:
        """The model in eval mode with gradients on, left in the mode it was found in, also when the attack
        raises."""
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                yield
        finally:
            model.train(was_training)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain: Domain,
                 seed: int, index: torch.Tensor) -> torch.Tensor:
        with self._attacking(model):
            x_adv = self.perturb(model, x.detach(), y, eps=eps, domain=domain, seed=seed, index=index)
        return domain.project(x_adv, x, eps=eps, norm=self.norm)

    def at_budgets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, budgets: Sequence[float],
                   domain: Domain, seed: int, index: torch.Tensor) -> list[torch.Tensor]:
        """The adversarial examples at each of ``budgets``, each as a call at that budget gives it; an attack
        with :attr:`nested_budgets` answers from one search to the largest budget."""
        return [self(model, x, y, eps=eps, domain=domain, seed=seed, index=index) for eps in budgets]

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, domain: Domain,
                seed: int, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ImageView(nn.Module):
    """Presents any input as the 4-D image batch torchattacks assumes.

    torchattacks' APGD (and so AutoAttack) unsqueezes anything that is not 4-D;
    inputs of another rank travel as (N, 1, 1, numel) and are reshaped back
    here, inside the wrapped model. Positions the Domain freezes are detached,
    so the attack's gradient on them is zero (torchattacks evaluates sub-batches,
    so no per-row state may live here); the Domain's final projection resets them.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], domain: Domain) -> None:
        super().__init__()
        self.model = model
        self.input_shape = tuple(input_shape)
        self.register_buffer("mutable", domain.mutable.clone(), persistent=False)
        # A new module starts in training mode; torchattacks records the mode it finds and calls .train()
        # afterwards when that was training, which would switch the wrapped detector's dropout on.
        self.train(model.training)

    @staticmethod
    def to_4d(x: torch.Tensor) -> torch.Tensor:
        return x if x.ndim == 4 else x.reshape(x.shape[0], 1, 1, -1)

    def from_4d(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.from_4d(x)
        x = torch.where(self.mutable.to(x.device), x, x.detach())
        return self.model(x)


def positive_count(attack: str, k) -> int:
    """``k`` as an int, for the attacks that aim at k positions; a ValueError naming ``attack`` unless an integer
    >= 1."""
    if int(k) != k or k < 1:
        raise ValueError(f"{attack} needs an integer k >= 1, got {k}")
    return int(k)
